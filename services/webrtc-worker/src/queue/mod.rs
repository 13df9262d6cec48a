//! Queued application messages between workers (proto/FILES.md, "Queued messages"): what
//! `POST /links/{peer}/messages` sends to a worker peer goes through a per-peer outbox on disk,
//! numbered, over the link's `file` channel, and is acknowledged by the receiver, which delivers
//! each number once and in order. A peer that is offline gets its messages when its link is
//! back (the worker asks the rejoin loop for one); the outbox is bounded and what the bound
//! pushes out is counted on both sides, never silent. Browser peers (no `file` channel) keep the
//! plain mesh channel.
//!
//! Files under `<files dir>/queue/`: `<peer>.out`, the outbox as an append-only log (put, ack,
//! drop records; compacted when mostly dead), and `<peer>.in`, what this worker has delivered
//! from that peer (16 bytes rewritten in place). Neither is synced per message: they survive the
//! process being killed; a power loss may take back the last few.

pub mod proto;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use mesh_types::PeerId;
use mesh_types::transfer::{Control, MessageKind, QueuedMessage};
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::links::LinkHandle;
use crate::rejoin::Rejoin;
use crate::transport::{Channel, Connection};
use crate::{blocking, lock};
use proto::{Arrival, Inlet, Outbox, OutboxSend, OutboxStats, Queued};

const PUT: u8 = b'P';
const ACK: u8 = b'A';
const DROP: u8 = b'D';
/// The next number to use (written by a compaction, which keeps no acknowledged puts).
const NEXT: u8 = b'N';

/// One peer's outbox and its log.
struct OutSlot {
    outbox: Mutex<Outbox>,
    log: Mutex<OutLog>,
    /// Woken when a message is queued or a link comes up.
    wake: Notify,
    /// Counts the links that carried this outbox; the courier of an older one leaves the
    /// outbox alone when it stops. 0: none since start-up.
    link: std::sync::atomic::AtomicU64,
}

struct OutLog {
    path: PathBuf,
    file: File,
    /// Bytes in the file; compared with the live messages' to decide a compaction.
    len: u64,
}

/// The worker's queues.
pub struct Queues {
    dir: PathBuf,
    capacity: usize,
    outboxes: Mutex<HashMap<PeerId, Arc<OutSlot>>>,
    inlets: Mutex<HashMap<PeerId, Inlet>>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// `GET /status`'s view of one peer's queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    pub peer: PeerId,
    /// Messages to that peer.
    pub out: OutboxStats,
    /// Messages from that peer.
    #[serde(rename = "in")]
    pub inlet: Inlet,
}

/// What `send` did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Straight on the mesh channel (a browser peer).
    Direct,
    /// In the peer's outbox with this number; `linked`: a link will carry it now.
    Queued { seq: u64, linked: bool },
}

impl Queues {
    pub fn new(dir: PathBuf, capacity: usize) -> Self {
        Queues {
            dir,
            capacity,
            outboxes: Mutex::default(),
            inlets: Mutex::default(),
        }
    }

    fn out_path(&self, peer: &PeerId) -> PathBuf {
        self.dir.join(format!("{peer}.out"))
    }

    fn in_path(&self, peer: &PeerId) -> PathBuf {
        self.dir.join(format!("{peer}.in"))
    }

    /// The peer's outbox, opened (and rebuilt from its log) on first use. Blocking.
    fn outbox(&self, peer: &PeerId) -> std::io::Result<Arc<OutSlot>> {
        // Held while opening: two first uses at once would both compact the log, and one
        // would keep appending to the file the other's rename replaced.
        let mut outboxes = lock(&self.outboxes);
        if let Some(slot) = outboxes.get(peer) {
            return Ok(slot.clone());
        }
        std::fs::create_dir_all(&self.dir)?;
        let path = self.out_path(peer);
        let (next_seq, queue, skip_due) = read_log(&path)?;
        let outbox = Outbox::restore(self.capacity, next_seq, queue, skip_due);
        let log = compact(&path, &outbox)?;
        let slot = Arc::new(OutSlot {
            outbox: Mutex::new(outbox),
            log: Mutex::new(log),
            wake: Notify::new(),
            link: Default::default(),
        });
        outboxes.insert(peer.clone(), slot.clone());
        Ok(slot)
    }

    /// Queues a message for `peer`. Blocking (it appends to the log).
    fn push(&self, peer: &PeerId, kind: MessageKind, data: Bytes) -> std::io::Result<u64> {
        let slot = self.outbox(peer)?;
        let mut outbox = lock(&slot.outbox);
        let mut log = lock(&slot.log);
        let (seq, dropped) = outbox.push(kind, data.clone());
        let mut rec = Vec::with_capacity(14 + data.len());
        rec.push(PUT);
        rec.extend_from_slice(&seq.to_be_bytes());
        rec.push(kind.as_u8());
        rec.extend_from_slice(&(data.len() as u32).to_be_bytes());
        rec.extend_from_slice(&data);
        if let Some(d) = &dropped {
            rec.push(DROP);
            rec.extend_from_slice(&d.seq.to_be_bytes());
            tracing::warn!(%peer, seq = d.seq, dropped_total = outbox.stats().dropped, "outbox full: dropped the oldest message");
        }
        log.append(&rec)?;
        drop((outbox, log));
        slot.wake.notify_one();
        Ok(seq)
    }

    /// The receiver has everything up to `up_to`. Blocking.
    fn ack(&self, peer: &PeerId, up_to: u64) -> std::io::Result<()> {
        let slot = self.outbox(peer)?;
        let mut outbox = lock(&slot.outbox);
        let mut log = lock(&slot.log);
        outbox.ack(up_to);
        let mut rec = vec![ACK];
        rec.extend_from_slice(&up_to.to_be_bytes());
        log.append(&rec)?;
        let live: u64 = outbox.queued().map(|m| m.data.len() as u64 + 14).sum();
        if log.len > 2 * live + (1 << 20) {
            *log = compact(&log.path, &outbox)?;
        }
        Ok(())
    }

    /// What this worker has delivered from `peer`. Blocking on first use.
    fn inlet(&self, peer: &PeerId) -> std::io::Result<Inlet> {
        let mut inlets = lock(&self.inlets);
        self.inlet_in(&mut inlets, peer)
    }

    fn inlet_in(
        &self,
        inlets: &mut HashMap<PeerId, Inlet>,
        peer: &PeerId,
    ) -> std::io::Result<Inlet> {
        if let Some(i) = inlets.get(peer) {
            return Ok(*i);
        }
        let inlet = match std::fs::read(self.in_path(peer)) {
            Ok(b) if b.len() >= 16 => Inlet {
                delivered: u64::from_be_bytes(b[..8].try_into().unwrap_or_default()),
                lost: u64::from_be_bytes(b[8..16].try_into().unwrap_or_default()),
            },
            Ok(_) => Inlet::default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Inlet::default(),
            Err(e) => return Err(e),
        };
        inlets.insert(peer.clone(), inlet);
        Ok(inlet)
    }

    /// Applies `change` to `peer`'s inlet and persists it. Blocking.
    fn update_inlet<T>(
        &self,
        peer: &PeerId,
        change: impl FnOnce(&mut Inlet) -> T,
    ) -> std::io::Result<(T, Inlet)> {
        // Held throughout: two links of one peer (an old one ending, a new one starting) must
        // not interleave their read-modify-writes.
        let mut inlets = lock(&self.inlets);
        let mut inlet = self.inlet_in(&mut inlets, peer)?;
        let out = change(&mut inlet);
        std::fs::create_dir_all(&self.dir)?;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&inlet.delivered.to_be_bytes());
        bytes[8..].copy_from_slice(&inlet.lost.to_be_bytes());
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.in_path(peer))?
            .write_all_at(&bytes, 0)?;
        inlets.insert(peer.clone(), inlet);
        Ok((out, inlet))
    }

    /// Opens every outbox and inlet on disk; returns the peers with messages waiting. Blocking.
    fn restore(&self) -> std::io::Result<Vec<PeerId>> {
        std::fs::create_dir_all(&self.dir)?;
        let mut waiting = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|e| e.to_str()),
            ) else {
                continue;
            };
            let Ok(peer) = PeerId::new(stem) else {
                continue;
            };
            match ext {
                "out" => {
                    let slot = self.outbox(&peer)?;
                    if lock(&slot.outbox).stats().pending > 0 {
                        waiting.push(peer);
                    }
                }
                "in" => {
                    self.inlet(&peer)?;
                }
                _ => {}
            }
        }
        Ok(waiting)
    }

    pub fn views(&self) -> Vec<QueueView> {
        let mut peers: Vec<PeerId> = lock(&self.outboxes).keys().cloned().collect();
        peers.extend(lock(&self.inlets).keys().cloned());
        peers.sort();
        peers.dedup();
        peers
            .into_iter()
            .map(|peer| QueueView {
                out: lock(&self.outboxes)
                    .get(&peer)
                    .map(|s| lock(&s.outbox).stats())
                    .unwrap_or_default(),
                inlet: lock(&self.inlets).get(&peer).copied().unwrap_or_default(),
                peer,
            })
            .collect()
    }
}

impl OutLog {
    fn append(&mut self, rec: &[u8]) -> std::io::Result<()> {
        self.file.write_all(rec)?;
        self.len += rec.len() as u64;
        Ok(())
    }
}

/// Replays a log: the next number, the messages still queued, the last drop not acknowledged.
fn read_log(path: &Path) -> std::io::Result<(u64, Vec<Queued>, Option<u64>)> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((1, Vec::new(), None)),
        Err(e) => return Err(e),
    }
    let mut queue: std::collections::BTreeMap<u64, Queued> = Default::default();
    let (mut next_seq, mut acked, mut skip_due) = (1u64, 0u64, None);
    let mut at = 0;
    let u64_at = |b: &[u8], i: usize| {
        b.get(i..i + 8)
            .map(|s| u64::from_be_bytes(s.try_into().unwrap_or_default()))
    };
    // A record cut short by a crash ends the log; what came before it stands.
    while at < bytes.len() {
        match bytes[at] {
            PUT => {
                let (Some(seq), Some(kind), Some(len)) = (
                    u64_at(&bytes, at + 1),
                    bytes.get(at + 9).and_then(|k| MessageKind::from_u8(*k)),
                    bytes
                        .get(at + 10..at + 14)
                        .map(|s| u32::from_be_bytes(s.try_into().unwrap_or_default()) as usize),
                ) else {
                    break;
                };
                let Some(data) = bytes.get(at + 14..at + 14 + len) else {
                    break;
                };
                next_seq = next_seq.max(seq + 1);
                if seq > acked {
                    queue.insert(
                        seq,
                        Queued {
                            seq,
                            kind,
                            data: Bytes::copy_from_slice(data),
                        },
                    );
                }
                at += 14 + len;
            }
            NEXT => {
                let Some(next) = u64_at(&bytes, at + 1) else {
                    break;
                };
                next_seq = next_seq.max(next);
                at += 9;
            }
            ACK => {
                let Some(up_to) = u64_at(&bytes, at + 1) else {
                    break;
                };
                acked = acked.max(up_to);
                next_seq = next_seq.max(up_to + 1);
                queue.retain(|&s, _| s > up_to);
                if skip_due.is_some_and(|s| s <= up_to) {
                    skip_due = None;
                }
                at += 9;
            }
            DROP => {
                let Some(seq) = u64_at(&bytes, at + 1) else {
                    break;
                };
                queue.remove(&seq);
                next_seq = next_seq.max(seq + 1);
                if seq > acked {
                    skip_due = Some(skip_due.map_or(seq, |s: u64| s.max(seq)));
                }
                at += 9;
            }
            other => {
                tracing::warn!(path = %path.display(), record = other, "outbox log damaged; reading stops here");
                break;
            }
        }
    }
    Ok((next_seq, queue.into_values().collect(), skip_due))
}

/// Rewrites the log with only what is live, atomically, and opens it for appending.
fn compact(path: &Path, outbox: &Outbox) -> std::io::Result<OutLog> {
    let tmp = path.with_extension("out.tmp");
    let mut buf = Vec::new();
    buf.push(NEXT);
    buf.extend_from_slice(&outbox.next_seq().to_be_bytes());
    if let Some(skip) = outbox.skip_due() {
        buf.push(DROP);
        buf.extend_from_slice(&skip.to_be_bytes());
    }
    for m in outbox.queued() {
        buf.push(PUT);
        buf.extend_from_slice(&m.seq.to_be_bytes());
        buf.push(m.kind.as_u8());
        buf.extend_from_slice(&(m.data.len() as u32).to_be_bytes());
        buf.extend_from_slice(&m.data);
    }
    std::fs::write(&tmp, &buf)?;
    std::fs::rename(&tmp, path)?;
    let file = File::options().append(true).open(path)?;
    Ok(OutLog {
        path: path.to_path_buf(),
        file,
        len: buf.len() as u64,
    })
}

/// A message that arrived through the queue, for the wiring to deliver (the inbox, gossip).
#[derive(Debug)]
pub struct Arrived {
    pub from: PeerId,
    pub kind: MessageKind,
    pub data: Bytes,
}

/// Where arrivals go.
type Deliver = Box<dyn Fn(Arrived) + Send + Sync>;

/// The queue component: owns the outboxes and inlets ([`Queues`]) and their couriers; links
/// through the link core's handle, and asks `Rejoin` for a link when a message waits.
pub struct Queue {
    queues: Arc<Queues>,
    links: Arc<dyn LinkHandle>,
    rejoin: Arc<Rejoin>,
    deliver: OnceLock<Deliver>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl Queue {
    pub fn new(queues: Queues, links: Arc<dyn LinkHandle>, rejoin: Arc<Rejoin>) -> Arc<Self> {
        Arc::new(Queue {
            queues: Arc::new(queues),
            links,
            rejoin,
            deliver: OnceLock::new(),
        })
    }

    /// Sets where arrived messages go; once, before the first link.
    pub fn deliver_to(&self, deliver: impl Fn(Arrived) + Send + Sync + 'static) {
        if self.deliver.set(Box::new(deliver)).is_err() {
            tracing::error!("the queue has a delivery already");
        }
    }

    pub fn views(&self) -> Vec<QueueView> {
        self.queues.views()
    }

    /// Puts a message in `peer`'s outbox and, if `ask_for_link` and no link to it exists or is
    /// being made, asks for one. (A caller that saw the link connected passes `false`: if that
    /// link ended meanwhile, its end decided whether to rejoin, a goodbye included.) Returns its
    /// number.
    pub async fn enqueue(
        &self,
        peer: &PeerId,
        kind: MessageKind,
        data: Bytes,
        ask_for_link: bool,
    ) -> std::io::Result<u64> {
        let queues = self.queues.clone();
        let to = peer.clone();
        let seq = blocking(move || queues.push(&to, kind, data)).await?;
        if ask_for_link && !self.links.has_link(peer) {
            let why = match kind {
                MessageKind::Gossip => "queued gossip",
                MessageKind::Text | MessageKind::Binary => "queued messages",
            };
            self.rejoin.start(peer.clone(), why);
        }
        Ok(seq)
    }

    /// At start-up: opens the queues on disk and asks for links to the peers with messages
    /// waiting.
    pub async fn restore(&self) -> std::io::Result<()> {
        let queues = self.queues.clone();
        let waiting = blocking(move || queues.restore()).await?;
        for peer in waiting {
            self.rejoin.start(peer, "queued messages");
        }
        Ok(())
    }

    /// At the start of a file session: say what we have from the peer, and carry our outbox to
    /// it once it has said the same.
    pub async fn session_started(&self, peer: &PeerId, conn: &Connection) {
        let queues = self.queues.clone();
        let from = peer.clone();
        match blocking(move || queues.inlet(&from)).await {
            Ok(inlet) => {
                let msg = Control::MsgState {
                    delivered: inlet.delivered,
                };
                let _ = conn.send(Channel::File, &msg.encode(), false).await;
            }
            Err(e) => tracing::warn!(%peer, "queue state not read: {e}"),
        }
    }

    /// Handles the queue's control messages on the `file` channel.
    pub async fn on_control(
        &self,
        peer: &PeerId,
        conn: &Arc<Connection>,
        closed: &watch::Receiver<()>,
        c: &Control,
    ) {
        match *c {
            Control::MsgState { delivered } => {
                let queues = self.queues.clone();
                let to = peer.clone();
                let slot = match blocking(move || queues.outbox(&to)).await {
                    Ok(slot) => slot,
                    Err(e) => {
                        tracing::warn!(%peer, "outbox not opened: {e}");
                        return;
                    }
                };
                // Under the outbox's lock, as the old courier's check is: it sees this link.
                let link = {
                    let mut outbox = lock(&slot.outbox);
                    outbox.link_up(delivered);
                    slot.link.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1
                };
                tokio::spawn(courier(
                    slot,
                    link,
                    conn.clone(),
                    closed.clone(),
                    peer.clone(),
                ));
            }
            Control::MsgAck { up_to } => {
                let queues = self.queues.clone();
                let to = peer.clone();
                if let Err(e) = blocking(move || queues.ack(&to, up_to)).await {
                    tracing::warn!(%peer, "outbox acknowledgement not recorded: {e}");
                }
            }
            Control::MsgSkip { up_to } => {
                let queues = self.queues.clone();
                let from = peer.clone();
                match blocking(move || queues.update_inlet(&from, |i| i.skip(up_to))).await {
                    Ok((lost, inlet)) => {
                        if lost > 0 {
                            tracing::warn!(%peer, lost, lost_total = inlet.lost, "messages lost: the sender's outbox was full");
                        }
                        let ack = Control::MsgAck {
                            up_to: inlet.delivered,
                        };
                        let _ = conn.send(Channel::File, &ack.encode(), false).await;
                    }
                    Err(e) => tracing::warn!(%peer, "queue state not recorded: {e}"),
                }
            }
            _ => {}
        }
    }

    /// A numbered message from `peer`: delivered once, in order, then acknowledged.
    pub async fn on_message(
        &self,
        peer: &PeerId,
        conn: &Connection,
        seq: u64,
        kind: MessageKind,
        data: &[u8],
    ) {
        let Some(deliver) = self.deliver.get() else {
            // Not recorded, so not acknowledged: the sender sends it again.
            tracing::error!(%peer, seq, "a queued message arrived before the queue had a delivery");
            return;
        };
        let queues = self.queues.clone();
        let from = peer.clone();
        let arrival = blocking(move || queues.update_inlet(&from, |i| i.arrive(seq))).await;
        let inlet = match arrival {
            Ok((Arrival::Duplicate, inlet)) => inlet,
            Ok((arrival, inlet)) => {
                if let Arrival::AfterGap { lost } = arrival {
                    tracing::warn!(%peer, seq, lost, "messages missing before this one; counted lost");
                }
                deliver(Arrived {
                    from: peer.clone(),
                    kind,
                    data: Bytes::copy_from_slice(data),
                });
                inlet
            }
            Err(e) => {
                // Not delivered and not acknowledged: the sender sends it again.
                tracing::warn!(%peer, seq, "queued message not recorded: {e}");
                return;
            }
        };
        let ack = Control::MsgAck {
            up_to: inlet.delivered,
        };
        let _ = conn.send(Channel::File, &ack.encode(), false).await;
    }
}

/// Carries `slot`'s messages over one link until it ends.
async fn courier(
    slot: Arc<OutSlot>,
    link: u64,
    conn: Arc<Connection>,
    mut closed: watch::Receiver<()>,
    peer: PeerId,
) {
    let current = |slot: &OutSlot| slot.link.load(std::sync::atomic::Ordering::Acquire) == link;
    loop {
        if !current(&slot) {
            // A newer link carries the outbox now.
            return;
        }
        let next = lock(&slot.outbox).next_send();
        let frame = match next {
            Some(OutboxSend::Skip(up_to)) => {
                let mut b = BytesMut::new();
                b.extend_from_slice(&Control::MsgSkip { up_to }.encode());
                b
            }
            Some(OutboxSend::Message(m)) => {
                let mut b =
                    BytesMut::with_capacity(mesh_types::transfer::MESSAGE_HEADER + m.data.len());
                b.extend_from_slice(&QueuedMessage::header(m.seq, m.kind));
                b.extend_from_slice(&m.data);
                b
            }
            None => {
                tokio::select! {
                    () = slot.wake.notified() => continue,
                    r = closed.changed() => if r.is_err() { break } else { continue },
                }
            }
        };
        let sent = tokio::select! {
            r = conn.send_owned(Channel::File, frame) => r.is_ok(),
            r = closed.changed() => r.is_ok(),
        };
        if !sent {
            break;
        }
    }
    // Only if no newer link took over meanwhile: it has set where sending starts. (Checked
    // under the outbox's lock, which a new link's `link_up` takes too.)
    let mut outbox = lock(&slot.outbox);
    if current(&slot) {
        outbox.link_lost();
    }
    drop(outbox);
    tracing::debug!(%peer, "queue courier stopped with its link");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_survives_a_restart_and_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer = PeerId::new("b").expect("id");
        let q = Queues::new(dir.path().to_path_buf(), 3);
        for n in 1..=5u8 {
            let kind = if n % 2 == 0 {
                MessageKind::Text
            } else {
                MessageKind::Binary
            };
            q.push(&peer, kind, Bytes::from(vec![n; 10])).expect("push");
        }
        q.ack(&peer, 3).expect("ack");
        // 1 and 2 were dropped by the bound (3), 3 acknowledged: 4 and 5 wait, nothing to skip.
        let q2 = Queues::new(dir.path().to_path_buf(), 3);
        assert_eq!(q2.restore().expect("restore"), vec![peer.clone()]);
        let slot = q2.outbox(&peer).expect("outbox");
        let mut o = lock(&slot.outbox);
        assert_eq!(o.queued().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(o.next_seq(), 6);
        assert_eq!(o.skip_due(), None);
        o.link_up(3);
        assert!(
            matches!(o.next_send(), Some(OutboxSend::Message(m)) if m.seq == 4 && m.kind == MessageKind::Text)
        );
        drop(o);
        // A torn record at the end (a crash mid-append) is ignored.
        let path = q2.out_path(&peer);
        let mut f = File::options().append(true).open(&path).expect("open");
        f.write_all(&[PUT, 0, 0]).expect("write");
        let (next, queue, _) = read_log(&path).expect("read");
        assert_eq!((next, queue.len()), (6, 2));
    }

    #[test]
    fn an_unannounced_drop_is_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer = PeerId::new("b").expect("id");
        let q = Queues::new(dir.path().to_path_buf(), 2);
        for n in 1..=4u8 {
            q.push(&peer, MessageKind::Text, Bytes::from(vec![n]))
                .expect("push");
        }
        let q2 = Queues::new(dir.path().to_path_buf(), 2);
        q2.restore().expect("restore");
        let slot = q2.outbox(&peer).expect("outbox");
        let mut o = lock(&slot.outbox);
        o.link_up(0);
        assert_eq!(o.next_send(), Some(OutboxSend::Skip(2)));
    }

    #[test]
    fn the_inlet_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer = PeerId::new("a").expect("id");
        let q = Queues::new(dir.path().to_path_buf(), 2);
        q.update_inlet(&peer, |i| i.arrive(1)).expect("arrive");
        q.update_inlet(&peer, |i| i.skip(4)).expect("skip");
        let q2 = Queues::new(dir.path().to_path_buf(), 2);
        q2.restore().expect("restore");
        assert_eq!(
            q2.inlet(&peer).expect("inlet"),
            Inlet {
                delivered: 4,
                lost: 3
            }
        );
    }

    // ---- the component, against a fake link core, with paused time ----

    use crate::fixtures::{World, peer};

    fn queue(w: &World, capacity: usize) -> Arc<Queue> {
        Queue::new(
            Queues::new(w.dir.path().join("queue"), capacity),
            w.links.clone(),
            w.rejoin.clone(),
        )
    }

    fn out_of(q: &Queue, to: &str) -> OutboxStats {
        q.views()
            .into_iter()
            .find(|v| v.peer == peer(to))
            .map(|v| v.out)
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_waits_in_its_peers_outbox_and_a_link_is_asked_for_only_when_there_is_none() {
        let w = World::new(&[("b", 0), ("c", 0)], &[]).await;
        let q = queue(&w, 3);
        w.links.link_up(&peer("c"));
        let text = Bytes::from_static(b"hello");
        assert_eq!(
            q.enqueue(&peer("b"), MessageKind::Text, text.clone(), true)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            q.enqueue(&peer("b"), MessageKind::Gossip, text.clone(), true)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            q.enqueue(&peer("c"), MessageKind::Binary, text.clone(), true)
                .await
                .unwrap(),
            1
        );
        // b has no link: one is asked for; c's link will carry its message. A caller that saw
        // the link connected asks for none.
        q.enqueue(&peer("d"), MessageKind::Text, text.clone(), false)
            .await
            .unwrap();
        assert_eq!(w.rejoin.peers(), [peer("b")]);
        assert_eq!(
            out_of(&q, "b"),
            OutboxStats {
                pending: 2,
                delivered: 0,
                dropped: 0
            }
        );
        // The bound pushes the oldest out, counted.
        for _ in 0..3 {
            q.enqueue(&peer("b"), MessageKind::Text, text.clone(), true)
                .await
                .unwrap();
        }
        assert_eq!(
            out_of(&q, "b"),
            OutboxStats {
                pending: 3,
                delivered: 0,
                dropped: 2
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_worker_finds_its_outboxes_and_asks_for_their_links() {
        let w = World::new(&[("b", 0)], &[]).await;
        let q = queue(&w, 10);
        q.enqueue(
            &peer("b"),
            MessageKind::Text,
            Bytes::from_static(b"one"),
            true,
        )
        .await
        .unwrap();
        q.enqueue(
            &peer("b"),
            MessageKind::Text,
            Bytes::from_static(b"two"),
            true,
        )
        .await
        .unwrap();
        w.rejoin.cancel(&peer("b"));
        assert!(w.rejoin.peers().is_empty());
        // The same directory, as after a restart.
        let restarted = queue(&w, 10);
        restarted.restore().await.unwrap();
        assert_eq!(out_of(&restarted, "b"), out_of(&q, "b"));
        assert_eq!(w.rejoin.peers(), [peer("b")]);
    }
}
