//! File transfers between peers over each link's `file` channel (proto/FILES.md): the driver
//! around the sans-IO [`proto`] state and the blocking [`disk`] helpers.
//!
//! Sending: `POST /transfers` resolves the path inside the send root, a task hashes the file into
//! a signed manifest, waits for a link to the receiver (asking the rejoin loop for one), offers
//! the manifest and streams the chunks the receiver lacks, at most `window` chunks
//! unacknowledged, each piece waiting on the channel's send buffer (the back-pressure). A dropped
//! link pauses it; the next link resumes it from the receiver's list of verified chunks.
//!
//! Receiving: one file session per link reads the `file` channel's queue. An offer is checked
//! (manifest, sender, signature, size, free space) before anything touches the disk; a refusal
//! leaves nothing behind. Chunks are checked against their digests, written into
//! `.partial/<id>.part`, checkpointed, then acknowledged; the whole file is checked before it is
//! moved to `received/<from>/<name>`.
//!
//! Both sides keep their state on disk, so either may restart and the transfer resumes.

pub mod disk;
pub mod proto;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mesh_store::SharedStore;
use mesh_types::signing::{Signed, verify_signature};
use mesh_types::transfer::{
    Control, Manifest, PIECE_HEADER, RefuseCode, TransferId, TransferRecord, TransferState,
    chunk_size_for,
};
use mesh_types::{Identity, PeerId, UnixMillis};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::links::Links;
use crate::rejoin::Rejoin;
use crate::spool::Spool;
use crate::transport::{Channel, Connection};
use crate::{blocking, bulk, lock, spawn_bulk};
use disk::{Checkpoint, Layout, SendPathError, WholeCheck};
use proto::{Incoming, Outgoing, PieceAction, RateMeter, SenderEvent};

/// Free space a receiver keeps beyond the file it accepts.
const DISK_RESERVE: u64 = 64 << 20;
/// An offer with no answer is sent again after this (the receiver could not check it yet).
const OFFER_RETRY: Duration = Duration::from_secs(10);
/// Why a send the operator cancelled ended, on both sides.
const CANCELLED: &str = "cancelled by the sender's operator";
/// Progress reaches the store and the views at most this often.
const PROGRESS_EVERY_MS: u64 = 1000;

/// How transfers behave.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Where received files, partial files and transfer state live.
    pub dir: PathBuf,
    /// Sends may read files inside this directory only.
    pub send_root: PathBuf,
    /// Largest file this worker accepts.
    pub max_bytes: u64,
    /// Peers this worker takes files from; `None`: any registered peer.
    pub accept_from: Option<HashSet<PeerId>>,
    /// Chunks a sender may have unacknowledged.
    pub window: usize,
    /// How long a partial file is kept without progress, and the records of ended transfers
    /// (a received file's answers a sender that missed `done`) without change; then they go.
    pub keep: Duration,
    /// Messages held per peer for delivery (`queue`); beyond it the oldest are dropped, counted.
    pub queue_capacity: usize,
    /// Testing aid: flip one byte of this chunk the first time it is sent, to exercise the
    /// receiver's check and the repair (`MESH_FAULT_FLIP_CHUNK`).
    pub flip_chunk: Option<u32>,
}

impl FilesConfig {
    pub fn new(dir: PathBuf) -> Self {
        FilesConfig {
            send_root: dir.join("outbox"),
            dir,
            max_bytes: 4 << 30,
            accept_from: None,
            window: 8,
            keep: Duration::from_secs(7 * 24 * 3600),
            queue_capacity: 1000,
            flip_chunk: None,
        }
    }
}

/// Why a send request was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Path { path: String, source: SendPathError },
    #[error("{0} bytes is more than a transfer can carry")]
    TooLarge(u64),
    #[error("a peer cannot send a file to itself")]
    ToSelf,
    #[error("peer {0} is not registered")]
    UnknownPeer(PeerId),
    #[error("no transfer {0}")]
    NotFound(TransferId),
    #[error("transfer {0} has ended")]
    Ended(TransferId),
    #[error("{0}")]
    Io(String),
}

/// Which way a transfer goes, from this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Out,
    In,
}

/// A transfer as `GET /transfers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferView {
    pub direction: Direction,
    #[serde(flatten)]
    pub record: TransferRecord,
    /// Received: where the file is once complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The sender's state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutgoingFile {
    path: PathBuf,
    /// `None` while the file is being hashed.
    manifest: Option<Manifest>,
    record: TransferRecord,
}

/// The link a transfer can use now.
#[derive(Clone)]
struct Session {
    generation: u64,
    conn: Arc<Connection>,
    /// Changes (or errors) when the link ends.
    closed: watch::Receiver<()>,
}

/// What a sending task listens to.
struct OutSlot {
    to: PeerId,
    ctrl: mpsc::Sender<Control>,
    cancel: watch::Sender<bool>,
}

/// A transfer being received.
struct InEntry {
    machine: Incoming,
    manifest: Arc<Manifest>,
    started_at: UnixMillis,
    /// The last sign of life: the offer, a verified chunk, a resume; or the file in place.
    /// Measured against `FilesConfig::keep`.
    touched: UnixMillis,
    done_path: Option<PathBuf>,
    resumes: u64,
    repaired: u64,
    rate: RateMeter,
    /// Pieces on their way to the transfer's writer, which writes and hashes them, checks each
    /// chunk at its end and acknowledges it while the next ones arrive; `None` once the file is
    /// in place.
    writer: Option<mpsc::Sender<WriteJob>>,
}

/// A piece on its way to the writer (`PieceAction::Write`).
struct WriteJob {
    chunk: u32,
    offset: u32,
    data: Bytes,
    last: bool,
}

/// Pieces waiting for the writer (4 MiB): enough to keep it busy while the link carries the
/// next, whatever the chunk size.
const WRITER_QUEUE: usize = 64;

/// How long the writer's thread waits for the next piece before it ends.
const WRITER_IDLE: Duration = Duration::from_secs(2);

/// Bytes written to a part file between background flushes.
const FLUSH_EVERY: u64 = 16 << 20;

/// Flushes a part file to disk in the background while it is written, so that the sync before
/// the rename finds little left to write. (The kernel writes dirty pages back only after 30 s by
/// default, so that sync had the whole file to write when it came last: ~0.1 s per 256 MiB
/// here, added to the end of every transfer.)
struct Flusher {
    file: Arc<File>,
    unflushed: u64,
    running: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Flusher {
    fn new(file: Arc<File>) -> Self {
        Flusher {
            file,
            unflushed: 0,
            running: None,
        }
    }

    /// Counts `bytes` written and starts a flush once enough are and none is running. A flush
    /// that failed is reported here: its pages may never reach the disk, whatever a later sync
    /// says.
    async fn wrote(&mut self, bytes: u64) -> std::io::Result<()> {
        self.unflushed += bytes;
        if self.running.as_ref().is_some_and(|h| h.is_finished()) {
            self.wait().await?;
        }
        if self.running.is_none() && self.unflushed >= FLUSH_EVERY {
            self.unflushed = 0;
            let file = self.file.clone();
            self.running = Some(spawn_bulk(move || file.sync_data()));
        }
        Ok(())
    }

    /// Waits for the running flush, if any.
    async fn wait(&mut self) -> std::io::Result<()> {
        match self.running.take() {
            Some(h) => h.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

/// A batch of a chunk's pieces being read ahead: chunk, offset, the read.
type ReadAhead = (
    u32,
    u32,
    tokio::task::JoinHandle<std::io::Result<Option<Vec<BytesMut>>>>,
);

/// Why a chunk was not sent whole.
enum ChunkEnd {
    LinkLost,
    /// The file cannot be read, or no longer holds what the manifest promised.
    Unreadable(String),
}

/// The files component: the worker's transfers, sending and receiving, and the links' file
/// sessions; it reaches links, the store and the rejoin loop through the handles it was given.
pub struct Files {
    config: FilesConfig,
    links: Arc<Links>,
    rejoin: Arc<Rejoin>,
    store: SharedStore,
    /// Transfer records on their way to the store.
    spool: Arc<Spool>,
    /// What manifests are signed with.
    identity: Arc<Identity>,
    clock: Clock,
    layout: Layout,
    outgoing: Mutex<HashMap<TransferId, OutSlot>>,
    incoming: Mutex<HashMap<TransferId, Arc<tokio::sync::Mutex<InEntry>>>>,
    views: Mutex<HashMap<TransferId, TransferView>>,
    sessions: Mutex<HashMap<PeerId, Session>>,
    sessions_changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("dir", &self.config.dir)
            .finish_non_exhaustive()
    }
}

/// What the files component is built from: its settings and the handles it acts through.
#[derive(Debug)]
pub struct FilesParts {
    pub config: FilesConfig,
    pub links: Arc<Links>,
    pub rejoin: Arc<Rejoin>,
    pub store: SharedStore,
    pub spool: Arc<Spool>,
    pub identity: Arc<Identity>,
    pub clock: Clock,
}

impl Files {
    pub fn new(parts: FilesParts) -> Arc<Self> {
        let FilesParts {
            config,
            links,
            rejoin,
            store,
            spool,
            identity,
            clock,
        } = parts;
        Arc::new(Files {
            layout: Layout {
                root: config.dir.clone(),
            },
            config,
            links,
            rejoin,
            store,
            spool,
            identity,
            clock,
            outgoing: Mutex::default(),
            incoming: Mutex::default(),
            views: Mutex::default(),
            sessions: Mutex::default(),
            sessions_changed: watch::Sender::new(0),
        })
    }

    pub fn config(&self) -> &FilesConfig {
        &self.config
    }

    fn view(&self, id: TransferId, update: impl FnOnce(&mut TransferView)) {
        if let Some(v) = lock(&self.views).get_mut(&id) {
            update(v);
        }
    }
}

impl Files {
    /// Creates the directories and picks up the transfers a previous run left: partial files are
    /// offered again by their senders; unfinished sends start again.
    pub async fn restore_transfers(self: &Arc<Self>) -> std::io::Result<()> {
        let layout = self.layout.clone();
        let (checkpoints, outgoing) = blocking(move || {
            layout.create()?;
            let mut cps = Vec::new();
            let partial = disk::json_files(&layout.partial_dir())?;
            for p in partial
                .into_iter()
                .chain(disk::json_files(&layout.done_dir())?)
            {
                match disk::read_json::<Checkpoint>(&p) {
                    Ok(mut cp) => {
                        let have = layout.have(cp.manifest.id);
                        cp.have.extend(disk::read_have(&have)?);
                        // The bitmap is rewritten with every verified chunk.
                        let touched = [p.as_path(), have.as_path()]
                            .into_iter()
                            .filter_map(disk::modified_ms)
                            .max()
                            .unwrap_or(cp.started_at);
                        cps.push((cp, touched));
                    }
                    Err(e) => tracing::warn!(path = %p.display(), "checkpoint not read: {e}"),
                }
            }
            let mut outs = Vec::new();
            for p in disk::json_files(&layout.outgoing_dir())? {
                match disk::read_json::<OutgoingFile>(&p) {
                    Ok(o) => outs.push(o),
                    Err(e) => tracing::warn!(path = %p.display(), "transfer state not read: {e}"),
                }
            }
            Ok((cps, outs))
        })
        .await?;
        for (cp, touched) in checkpoints {
            let id = cp.manifest.id;
            let file = if cp.done_path.is_none() {
                let part = self.layout.part(id);
                match blocking(move || File::options().write(true).open(part)).await {
                    Ok(f) => Some(Arc::new(f)),
                    Err(e) => {
                        tracing::warn!(%id, "partial file gone ({e}); starting it over");
                        disk::remove_partial(&self.layout, id);
                        continue;
                    }
                }
            } else {
                None
            };
            let entry = self
                .new_incoming(cp.manifest, &cp.have, cp.started_at, cp.done_path, file)
                .await;
            entry.lock().await.touched = touched;
        }
        for out in outgoing {
            if out.record.state.is_final() {
                lock(&self.views).insert(
                    out.record.id,
                    TransferView {
                        direction: Direction::Out,
                        record: out.record,
                        path: None,
                    },
                );
                continue;
            }
            tracing::info!(id = %out.record.id, to = %out.record.to, "resuming a send after a restart");
            self.spawn_send(out.path, out.manifest, out.record);
        }
        Ok(())
    }

    /// `POST /transfers`: starts sending `path` (inside the send root) to `to`.
    pub async fn start_transfer(
        self: &Arc<Self>,
        to: PeerId,
        path: &Path,
    ) -> Result<TransferView, FileError> {
        if &to == self.links.id() {
            return Err(FileError::ToSelf);
        }
        match self.store.get_peer(&to).await {
            Ok(_) => {}
            Err(e) if e.kind() == mesh_store::ErrorKind::NotFound => {
                return Err(FileError::UnknownPeer(to));
            }
            Err(e) => return Err(FileError::Io(format!("the peer registry: {e}"))),
        }
        let root = self.config.send_root.clone();
        let asked = path.to_path_buf();
        let resolved = blocking(move || {
            Ok(disk::resolve_send_path(&root, &asked).and_then(|p| {
                let len = std::fs::metadata(&p)
                    .map_err(|e| SendPathError::Unreadable(e.to_string()))?
                    .len();
                Ok((p, len))
            }))
        })
        .await
        .map_err(|e| FileError::Io(e.to_string()))?;
        let (real, size) = resolved.map_err(|source| FileError::Path {
            path: path.display().to_string(),
            source,
        })?;
        if chunk_size_for(size).is_none() {
            return Err(FileError::TooLarge(size));
        }
        let name = disk::file_name(&real).ok_or_else(|| FileError::Path {
            path: path.display().to_string(),
            source: SendPathError::Unreadable("the file name is not UTF-8".into()),
        })?;
        mesh_types::transfer::check_name(&name).map_err(|e| FileError::Path {
            path: path.display().to_string(),
            source: SendPathError::Unreadable(e.to_string()),
        })?;
        let now = self.clock.now_ms();
        // A driver: ids come from the OS's randomness.
        #[allow(clippy::disallowed_methods)]
        let id = TransferId::random(&mut rand::rng());
        let record = TransferRecord {
            id,
            from: self.links.id().clone(),
            to,
            name,
            size,
            state: TransferState::Preparing,
            bytes: 0,
            rate_bps: 0,
            eta_ms: None,
            sent_bytes: 0,
            repaired_chunks: 0,
            resumes: 0,
            error_code: None,
            error: None,
            started_at: now,
            updated_at: now,
            version: 1,
        };
        let view = TransferView {
            direction: Direction::Out,
            record: record.clone(),
            path: None,
        };
        self.spawn_send(real, None, record);
        Ok(view)
    }

    /// `GET /transfers`: newest first.
    pub fn transfers(&self) -> Vec<TransferView> {
        let mut all: Vec<TransferView> = lock(&self.views).values().cloned().collect();
        all.sort_by_key(|v| std::cmp::Reverse(v.record.started_at));
        all
    }

    pub fn transfer(&self, id: TransferId) -> Option<TransferView> {
        lock(&self.views).get(&id).cloned()
    }

    /// `DELETE /transfers/{id}`: a send stops and tells the receiver; a receive tells the sender
    /// and removes its partial file.
    pub async fn cancel_transfer(self: &Arc<Self>, id: TransferId) -> Result<(), FileError> {
        if let Some(slot) = lock(&self.outgoing).get(&id) {
            slot.cancel.send_replace(true);
            return Ok(());
        }
        let entry = lock(&self.incoming).get(&id).cloned();
        let Some(entry) = entry else {
            return match self.transfer(id) {
                Some(_) => Err(FileError::Ended(id)),
                None => Err(FileError::NotFound(id)),
            };
        };
        let e = entry.lock().await;
        if e.done_path.is_some() {
            return Err(FileError::Ended(id));
        }
        let from = e.manifest.from.clone();
        if let Some(s) = self.session(&from) {
            let msg = Control::Cancel {
                id,
                code: RefuseCode::Cancelled,
                message: "cancelled by the receiver's operator".into(),
            };
            let _ = s.conn.send(Channel::File, &msg.encode(), false).await;
        }
        self.drop_incoming(
            id,
            TransferState::Cancelled,
            RefuseCode::Cancelled,
            "cancelled here",
        );
        Ok(())
    }

    fn session(&self, peer: &PeerId) -> Option<Session> {
        lock(&self.sessions).get(peer).cloned()
    }

    fn spawn_send(
        self: &Arc<Self>,
        path: PathBuf,
        manifest: Option<Manifest>,
        record: TransferRecord,
    ) {
        let (ctrl_tx, ctrl_rx) = mpsc::channel(1024);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let id = record.id;
        lock(&self.outgoing).insert(
            id,
            OutSlot {
                to: record.to.clone(),
                ctrl: ctrl_tx,
                cancel: cancel_tx,
            },
        );
        lock(&self.views).insert(
            id,
            TransferView {
                direction: Direction::Out,
                record: record.clone(),
                path: None,
            },
        );
        let files = self.clone();
        tokio::spawn(async move {
            let mut sender = Sender {
                files: files.clone(),
                path,
                record,
                ctrl: ctrl_rx,
                cancel: cancel_rx,
                rate: RateMeter::new(5_000),
                last_progress: 0,
                flipped: false,
                recheck: HashSet::new(),
            };
            sender.run(manifest).await;
            lock(&files.outgoing).remove(&id);
        });
    }

    // ---- receiving ----

    /// A link's file session began (`file_channel`): transfers to its peer may use `conn` until
    /// `closed` changes.
    pub(crate) fn session_started(
        &self,
        peer: &PeerId,
        generation: u64,
        conn: Arc<Connection>,
        closed: watch::Receiver<()>,
    ) {
        lock(&self.sessions).insert(
            peer.clone(),
            Session {
                generation,
                conn,
                closed,
            },
        );
        self.sessions_changed.send_modify(|n| *n += 1);
    }

    /// That session ended (a newer one of the same peer is left alone).
    pub(crate) fn session_ended(&self, peer: &PeerId, generation: u64) {
        {
            let mut sessions = lock(&self.sessions);
            if sessions
                .get(peer)
                .is_some_and(|s| s.generation == generation)
            {
                sessions.remove(peer);
            }
        }
        self.sessions_changed.send_modify(|n| *n += 1);
    }

    /// A transfer's control message from `peer` (anything but the queue's).
    pub(crate) async fn on_control(self: &Arc<Self>, peer: &PeerId, conn: &Connection, c: Control) {
        let id = match &c {
            Control::Offer { .. } => {
                if let Control::Offer { manifest } = c {
                    self.on_offer(peer, conn, *manifest).await;
                }
                return;
            }
            Control::Accept { id, .. }
            | Control::Refuse { id, .. }
            | Control::Ack { id, .. }
            | Control::Nack { id, .. }
            | Control::Done { id }
            | Control::Cancel { id, .. } => *id,
            Control::MsgState { .. } | Control::MsgAck { .. } | Control::MsgSkip { .. } => return,
        };
        let to_sender = lock(&self.outgoing)
            .get(&id)
            .filter(|s| &s.to == peer)
            .map(|s| s.ctrl.clone());
        if let Some(tx) = to_sender {
            // Bounded by the window: a sender has few messages due at once.
            let _ = tx.send(c).await;
        } else if let Control::Cancel { message, .. } = &c {
            let ours = lock(&self.incoming).get(&id).cloned();
            if let Some(entry) = ours {
                // Decided and done under the transfer's lock, as the writer records under it: a
                // file already in place stays.
                let e = entry.lock().await;
                if e.manifest.from == *peer && e.done_path.is_none() {
                    tracing::info!(%id, %peer, "the sender cancelled: {message}");
                    self.drop_incoming(
                        id,
                        TransferState::Cancelled,
                        RefuseCode::Cancelled,
                        message,
                    );
                }
            }
        } else {
            tracing::debug!(%id, %peer, "file control message for no transfer of ours");
        }
    }

    async fn reply(&self, conn: &Connection, msg: &Control) {
        if let Err(e) = conn.send(Channel::File, &msg.encode(), false).await {
            tracing::debug!("file channel reply not sent: {e}");
        }
    }

    async fn on_offer(self: &Arc<Self>, peer: &PeerId, conn: &Connection, manifest: Manifest) {
        let id = manifest.id;
        let refuse = |code: RefuseCode, message: String| {
            tracing::info!(%id, %peer, code = code.as_str(), "file refused: {message}");
            Control::Refuse { id, code, message }
        };
        if let Err(e) = manifest.validate() {
            return self
                .reply(conn, &refuse(RefuseCode::InvalidManifest, e.to_string()))
                .await;
        }
        if &manifest.to != self.links.id() || &manifest.from != peer {
            let msg = format!(
                "a manifest from {} to {} arrived from {peer} at {}",
                manifest.from,
                manifest.to,
                self.links.id()
            );
            return self
                .reply(conn, &refuse(RefuseCode::InvalidManifest, msg))
                .await;
        }
        let existing = lock(&self.incoming).get(&id).cloned();
        if let Some(entry) = existing {
            let mut e = entry.lock().await;
            if *e.manifest != manifest {
                return self
                    .reply(
                        conn,
                        &refuse(RefuseCode::Conflict, "another manifest has this id".into()),
                    )
                    .await;
            }
            if e.done_path.is_some() {
                // The sender still asks: keep the record that answers it a while longer.
                e.touched = self.clock.now_ms();
                return self.reply(conn, &Control::Done { id }).await;
            }
            e.machine.restart();
            e.resumes += 1;
            e.touched = self.clock.now_ms();
            let have = e.machine.have();
            tracing::info!(%id, %peer, verified = have.len(), "resuming a file transfer");
            let view = self.in_view(&e);
            self.view(id, |v| *v = view);
            self.reply(conn, &Control::Accept { id, have }).await;
            if e.machine.complete() {
                // Every chunk was verified before a restart cut the finish short: finish now,
                // nothing more will arrive.
                self.finish(&mut e, None).await;
            }
            return;
        }
        if let Some(allowed) = &self.config.accept_from
            && !allowed.contains(peer)
        {
            let msg = format!("{peer} is not among the peers this worker takes files from");
            return self
                .reply(conn, &refuse(RefuseCode::UnknownSender, msg))
                .await;
        }
        let key = match self.store.get_peer(peer).await {
            Ok(p) => p.pub_key,
            Err(e) if e.kind() == mesh_store::ErrorKind::NotFound => {
                let msg = format!("{peer} is not registered");
                return self
                    .reply(conn, &refuse(RefuseCode::UnknownSender, msg))
                    .await;
            }
            Err(e) => {
                // Not refused: the store may be back when the sender offers again.
                tracing::warn!(%id, %peer, "file offer not checked (peer registry: {e}); waiting for the next offer");
                return;
            }
        };
        if let Err(e) = verify_signature(&manifest, &key) {
            return self
                .reply(conn, &refuse(RefuseCode::BadSignature, e.to_string()))
                .await;
        }
        if manifest.size > self.config.max_bytes {
            let msg = format!(
                "{} bytes; this worker takes files of up to {}",
                manifest.size, self.config.max_bytes
            );
            return self.reply(conn, &refuse(RefuseCode::TooLarge, msg)).await;
        }
        let layout = self.layout.clone();
        let size = manifest.size;
        let cp = Checkpoint {
            manifest: manifest.clone(),
            have: Vec::new(),
            done_path: None,
            started_at: self.clock.now_ms(),
        };
        let created = blocking(move || {
            layout.create()?;
            let free = disk::free_space(&layout.partial_dir())?;
            if free < size.saturating_add(DISK_RESERVE) {
                return Ok(Err(free));
            }
            let f = File::options()
                .write(true)
                .create_new(true)
                .open(layout.part(cp.manifest.id))?;
            let made = f
                .set_len(size)
                .and_then(|()| disk::write_json(&layout.checkpoint(cp.manifest.id), &cp));
            if let Err(e) = made {
                disk::remove_partial(&layout, cp.manifest.id);
                return Err(e);
            }
            Ok(Ok(f))
        })
        .await;
        let file = match created {
            Ok(Ok(f)) => f,
            Ok(Err(free)) => {
                let msg = format!("{size} bytes do not fit: {free} bytes free");
                return self.reply(conn, &refuse(RefuseCode::NoSpace, msg)).await;
            }
            Err(e) => {
                return self
                    .reply(conn, &refuse(RefuseCode::StorageError, e.to_string()))
                    .await;
            }
        };
        tracing::info!(%id, %peer, name = %manifest.name, size, "receiving a file");
        let complete = manifest.chunk_count() == 0;
        let entry = self
            .new_incoming(
                manifest,
                &[],
                self.clock.now_ms(),
                None,
                Some(Arc::new(file)),
            )
            .await;
        self.reply(
            conn,
            &Control::Accept {
                id,
                have: Vec::new(),
            },
        )
        .await;
        if complete {
            // An empty file: nothing will arrive; finish at once.
            let mut e = entry.lock().await;
            self.finish(&mut e, None).await;
        }
    }

    /// Registers a transfer being received (new, or from a checkpoint) and starts its writer.
    async fn new_incoming(
        self: &Arc<Self>,
        manifest: Manifest,
        have: &[u32],
        started_at: UnixMillis,
        done_path: Option<PathBuf>,
        file: Option<Arc<File>>,
    ) -> Arc<tokio::sync::Mutex<InEntry>> {
        let id = manifest.id;
        let manifest = Arc::new(manifest);
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let entry = InEntry {
            machine: Incoming::new((*manifest).clone(), have),
            manifest: manifest.clone(),
            started_at,
            touched: started_at,
            done_path,
            resumes: 0,
            repaired: 0,
            rate: RateMeter::new(5_000),
            writer: file.is_some().then_some(tx),
        };
        lock(&self.views).insert(id, self.in_view(&entry));
        let entry = Arc::new(tokio::sync::Mutex::new(entry));
        lock(&self.incoming).insert(id, entry.clone());
        if let Some(file) = file {
            // Weak: the writer ends when the entry is dropped (its queue's sender with it).
            tokio::spawn(
                self.clone()
                    .write_chunks(Arc::downgrade(&entry), file, manifest, rx),
            );
        }
        entry
    }

    /// The writer of one transfer being received: writes and hashes its pieces as they come
    /// (on a bulk thread while they flow), and for each chunk checked there, checkpoints and
    /// acknowledges it; after the last, finishes the file.
    async fn write_chunks(
        self: Arc<Self>,
        entry: std::sync::Weak<tokio::sync::Mutex<InEntry>>,
        file: Arc<File>,
        manifest: Arc<Manifest>,
        mut jobs: mpsc::Receiver<WriteJob>,
    ) {
        let id = manifest.id;
        let mut writer = disk::ChunkWriter::new(file.clone(), manifest.clone());
        // The checks' results are recorded by a task of their own, so pieces keep being
        // written while a chunk is checkpointed and acknowledged.
        let (results, mut checked_rx) = mpsc::channel::<disk::Checked>(WRITER_QUEUE);
        let recorder = {
            let (files, entry, manifest) = (self.clone(), entry.clone(), manifest.clone());
            tokio::spawn(async move {
                let mut flusher = Flusher::new(file);
                while let Some(c) = checked_rx.recv().await {
                    if !files
                        .chunk_checked(&entry, &manifest, &mut flusher, c)
                        .await
                    {
                        return;
                    }
                }
            })
        };
        // While pieces flow, a bulk thread takes them as they come; after a pause of
        // `WRITER_IDLE` it ends, and the next piece starts another: a paused transfer holds no
        // thread. Ends when the entry, with the queue's sender, is dropped.
        while let Some(first) = jobs.recv().await {
            let (to_thread, mut pieces) = mpsc::channel::<WriteJob>(WRITER_QUEUE);
            let results = results.clone();
            let mut w = writer;
            let thread = spawn_bulk(move || {
                while let Some(j) = pieces.blocking_recv() {
                    if let Some(c) = w.piece(j.chunk, j.offset, &j.data, j.last)?
                        && results.blocking_send(c).is_err()
                    {
                        break;
                    }
                }
                Ok(w)
            });
            let mut next = Some(first);
            while let Some(j) = next.take() {
                if to_thread.send(j).await.is_err() {
                    break;
                }
                next = tokio::time::timeout(WRITER_IDLE, jobs.recv())
                    .await
                    .ok()
                    .flatten();
            }
            drop(to_thread);
            writer = match thread.await.map_err(std::io::Error::other).and_then(|r| r) {
                Ok(w) => w,
                Err(err) => {
                    recorder.abort();
                    // Only if the transfer is still this writer's (not ended and offered
                    // again meanwhile).
                    let Some(entry) = entry.upgrade() else { return };
                    let e = entry.lock().await;
                    if self.is_current(id, &entry) {
                        drop(e);
                        self.storage_failed(&manifest.from, id, &err).await;
                    }
                    return;
                }
            };
        }
    }

    /// Whether `entry` is still the transfer `id` being received (not ended, nor ended and
    /// offered again); callers hold the entry's lock.
    fn is_current(&self, id: TransferId, entry: &Arc<tokio::sync::Mutex<InEntry>>) -> bool {
        lock(&self.incoming)
            .get(&id)
            .is_some_and(|ours| Arc::ptr_eq(ours, entry))
    }

    /// Records what the writer found of one chunk: checkpoint and `ack`, or `nack`; after the
    /// last, finishes the file. False when the transfer is over for this writer.
    async fn chunk_checked(
        self: &Arc<Self>,
        entry: &std::sync::Weak<tokio::sync::Mutex<InEntry>>,
        manifest: &Manifest,
        flusher: &mut Flusher,
        checked: disk::Checked,
    ) -> bool {
        let id = manifest.id;
        let written = if checked.good {
            flusher
                .wrote(u64::from(manifest.chunk_len(checked.chunk)))
                .await
                .map(|()| checked)
        } else {
            Ok(checked)
        };
        let Some(entry) = entry.upgrade() else {
            return false;
        };
        let mut e = entry.lock().await;
        // Ended meanwhile (cancelled, expired, failed) or already in place: nothing to record.
        if !self.is_current(id, &entry) || e.done_path.is_some() {
            return false;
        }
        let disk::Checked { chunk, good, whole } = match written {
            Ok(c) => c,
            Err(err) => {
                drop(e);
                self.storage_failed(&manifest.from, id, &err).await;
                return false;
            }
        };
        if !good {
            tracing::warn!(%id, chunk, "chunk failed its digest; asking for it again");
            e.repaired += 1;
        }
        let msg = e.machine.checked(chunk, good);
        if good && let Err(err) = self.checkpoint(&e).await {
            drop(e);
            self.storage_failed(&manifest.from, id, &err).await;
            return false;
        }
        let (now, bytes) = (self.clock.now_ms(), e.machine.bytes_verified());
        e.rate.record(now, bytes);
        e.touched = now;
        let view = self.in_view(&e);
        self.view(id, |v| *v = view);
        // Lost with the link if it dropped meanwhile: the next offer's `have` says it.
        self.tell(&manifest.from, &msg).await;
        if e.machine.complete() {
            if let Err(err) = flusher.wait().await {
                drop(e);
                self.storage_failed(&manifest.from, id, &err).await;
                return false;
            }
            self.finish(&mut e, whole).await;
        }
        true
    }

    /// Sends `msg` over the current link to `peer`, if there is one.
    async fn tell(&self, peer: &PeerId, msg: &Control) {
        match self.session(peer) {
            Some(s) => self.reply(&s.conn, msg).await,
            None => tracing::debug!(%peer, "no link; file message not sent"),
        }
    }

    pub(crate) async fn on_piece(
        self: &Arc<Self>,
        peer: &PeerId,
        conn: &Connection,
        id: TransferId,
        chunk: u32,
        offset: u32,
        data: Bytes,
    ) {
        let Some(entry) = lock(&self.incoming).get(&id).cloned() else {
            tracing::debug!(%id, %peer, "a piece of no transfer of ours");
            return;
        };
        let job = {
            let mut e = entry.lock().await;
            if e.manifest.from != *peer || e.done_path.is_some() {
                return;
            }
            match e.machine.on_piece(chunk, offset, data.len()) {
                PieceAction::Duplicate => None,
                PieceAction::Resend(c) => {
                    tracing::warn!(%id, chunk = c, "piece out of order; asking for the chunk again");
                    e.repaired += 1;
                    drop(e);
                    self.reply(conn, &Control::Nack { id, chunk: c }).await;
                    None
                }
                PieceAction::Write { last } => {
                    e.touched = self.clock.now_ms();
                    e.writer.clone().map(|w| {
                        let job = WriteJob {
                            chunk,
                            offset,
                            data,
                            last,
                        };
                        (w, job)
                    })
                }
            }
        };
        // Outside the entry's lock, which the writer takes: a full queue waits for it.
        if let Some((writer, job)) = job {
            let _ = writer.send(job).await;
        }
    }

    async fn checkpoint(&self, e: &InEntry) -> std::io::Result<()> {
        let cp = Checkpoint {
            manifest: (*e.manifest).clone(),
            have: e.machine.have(),
            done_path: e.done_path.clone(),
            started_at: e.started_at,
        };
        let layout = self.layout.clone();
        blocking(move || match &cp.done_path {
            // The manifest is in the checkpoint since the transfer began; only `have` changes.
            None => disk::write_have(&layout.have(cp.manifest.id), &cp.have),
            Some(_) => {
                disk::write_json(&layout.done(cp.manifest.id), &cp)?;
                std::fs::remove_file(layout.checkpoint(cp.manifest.id))?;
                disk::remove_if_there(&layout.have(cp.manifest.id))
            }
        })
        .await
    }

    async fn storage_failed(self: &Arc<Self>, from: &PeerId, id: TransferId, err: &std::io::Error) {
        tracing::error!(%id, "receiving a file failed: {err}");
        let msg = Control::Cancel {
            id,
            code: RefuseCode::StorageError,
            message: format!("the receiver could not write the file: {err}"),
        };
        self.tell(from, &msg).await;
        self.drop_incoming(
            id,
            TransferState::Failed,
            RefuseCode::StorageError,
            &err.to_string(),
        );
    }

    /// Every chunk is verified: the whole-file check (no need to read the file again when
    /// `whole`, computed on the way, matches), then into place.
    async fn finish(
        self: &Arc<Self>,
        e: &mut InEntry,
        whole: Option<mesh_types::transfer::Digest>,
    ) {
        let id = e.manifest.id;
        let from = e.manifest.from.clone();
        let manifest = e.manifest.clone();
        let layout = self.layout.clone();
        let checked = bulk(move || {
            let check = if whole == Some(manifest.sha256) {
                WholeCheck::Good
            } else {
                disk::check_whole(&layout.part(manifest.id), &manifest)?
            };
            if check != WholeCheck::Good {
                return Ok((check, None));
            }
            let path = disk::move_into_place(&layout, &manifest)?;
            Ok((check, Some(path)))
        })
        .await;
        match checked {
            Ok((WholeCheck::Good, Some(path))) => {
                tracing::info!(%id, path = %path.display(), "file received and verified");
                e.done_path = Some(path);
                e.touched = self.clock.now_ms();
                e.writer = None;
                if let Err(err) = self.checkpoint(e).await {
                    // The file is in place; only the record of it is missing.
                    tracing::warn!(%id, "checkpoint of a finished file not written: {err}");
                }
                let view = self.in_view(e);
                self.view(id, |v| *v = view);
                self.tell(&from, &Control::Done { id }).await;
            }
            Ok((WholeCheck::BadChunks(bad), _)) => {
                tracing::warn!(%id, chunks = ?bad, "whole-file check failed; asking for those chunks again");
                e.repaired += bad.len() as u64;
                for msg in e.machine.unverify(&bad) {
                    self.tell(&from, &msg).await;
                }
                if let Err(err) = self.checkpoint(e).await {
                    tracing::warn!(%id, "checkpoint not written: {err}");
                }
            }
            Ok((WholeCheck::Inconsistent, _)) | Ok((WholeCheck::Good, None)) => {
                let msg = Control::Cancel {
                    id,
                    code: RefuseCode::InvalidManifest,
                    message: "every chunk matches but the whole file does not".into(),
                };
                self.tell(&from, &msg).await;
                self.drop_incoming(
                    id,
                    TransferState::Failed,
                    RefuseCode::InvalidManifest,
                    "inconsistent manifest",
                );
            }
            Err(err) => self.storage_failed(&from, id, &err).await,
        }
    }

    /// Removes what has outlived `MESH_FILES_KEEP_SECS` (`FilesConfig::keep`): partial files
    /// that made no progress for that long (the sender gave up or is gone; offered again, the
    /// transfer starts over), the records of received files (after which a sender that never
    /// heard `done` would send the file again) and of sends that ended. Returns how many
    /// transfers it removed.
    pub async fn expire_transfers(&self) -> usize {
        let now = self.clock.now_ms();
        let keep = u64::try_from(self.config.keep.as_millis()).unwrap_or(u64::MAX);
        let stale = |t: UnixMillis| now.saturating_sub(t) > keep;
        let incoming: Vec<_> = lock(&self.incoming)
            .iter()
            .map(|(id, e)| (*id, e.clone()))
            .collect();
        let mut removed = 0;
        for (id, entry) in incoming {
            // Decided and done under the transfer's lock: a piece or an offer arriving
            // meanwhile either counts first or finds the transfer gone.
            let e = entry.lock().await;
            if !stale(e.touched) {
                continue;
            }
            removed += 1;
            if e.done_path.is_some() {
                lock(&self.incoming).remove(&id);
                lock(&self.views).remove(&id);
                drop(e);
                let path = self.layout.done(id);
                if let Err(e) = blocking(move || disk::remove_if_there(&path)).await {
                    tracing::warn!(%id, "record of a received file not removed: {e}");
                }
                continue;
            }
            let why = format!(
                "no progress for {} s; the partial file was removed",
                keep / 1000
            );
            tracing::info!(%id, "{why}");
            self.drop_incoming(id, TransferState::Failed, RefuseCode::Expired, &why);
        }
        // Transfers that ended otherwise: refused, failed, cancelled, and every send. Found and
        // removed in one step, so a transfer offered again meanwhile keeps its view.
        let ended: Vec<(TransferId, Direction)> = {
            let incoming = lock(&self.incoming);
            let mut views = lock(&self.views);
            let ended: Vec<_> = views
                .iter()
                .filter(|(id, v)| {
                    v.record.state.is_final()
                        && stale(v.record.updated_at)
                        && !incoming.contains_key(id)
                })
                .map(|(id, v)| (*id, v.direction))
                .collect();
            for (id, _) in &ended {
                views.remove(id);
            }
            ended
        };
        for (id, direction) in ended {
            removed += 1;
            if direction == Direction::Out {
                let path = self.layout.outgoing(id);
                if let Err(e) = blocking(move || disk::remove_if_there(&path)).await {
                    tracing::warn!(%id, "record of an ended send not removed: {e}");
                }
            }
        }
        removed
    }

    /// Forgets a transfer being received and removes its files.
    fn drop_incoming(&self, id: TransferId, state: TransferState, code: RefuseCode, why: &str) {
        lock(&self.incoming).remove(&id);
        disk::remove_partial(&self.layout, id);
        let now = self.clock.now_ms();
        self.view(id, |v| {
            v.record.state = state;
            v.record.error_code = Some(code.as_str().into());
            v.record.error = Some(why.into());
            v.record.updated_at = now;
            v.record.rate_bps = 0;
            v.record.eta_ms = None;
        });
    }

    fn in_view(&self, e: &InEntry) -> TransferView {
        let m = &e.manifest;
        let bytes = e.machine.bytes_verified();
        let state = if e.done_path.is_some() {
            TransferState::Complete
        } else if bytes == 0 && e.resumes == 0 {
            TransferState::Offered
        } else {
            TransferState::Sending
        };
        TransferView {
            direction: Direction::In,
            record: TransferRecord {
                id: m.id,
                from: m.from.clone(),
                to: m.to.clone(),
                name: m.name.clone(),
                size: m.size,
                state,
                bytes,
                rate_bps: if state.is_final() {
                    0
                } else {
                    e.rate.rate_bps()
                },
                eta_ms: if state.is_final() {
                    None
                } else {
                    e.rate.eta_ms(m.size - bytes)
                },
                sent_bytes: 0,
                repaired_chunks: e.repaired,
                resumes: e.resumes,
                error_code: None,
                error: None,
                started_at: e.started_at,
                updated_at: self.clock.now_ms(),
                version: 0,
            },
            path: e.done_path.as_ref().map(|p| p.display().to_string()),
        }
    }
}

/// One send, from hashing the file to the receiver's `done`.
struct Sender {
    files: Arc<Files>,
    path: PathBuf,
    record: TransferRecord,
    ctrl: mpsc::Receiver<Control>,
    cancel: watch::Receiver<bool>,
    rate: RateMeter,
    last_progress: UnixMillis,
    flipped: bool,
    /// Chunks the receiver found bad: checked against the manifest when read again.
    recheck: HashSet<u32>,
}

/// How a session with the receiver ended.
enum SessionEnd {
    LinkLost,
    Final,
}

impl Sender {
    async fn run(&mut self, manifest: Option<Manifest>) {
        let window = self.files.config.window;
        let mut machine = match manifest {
            // A previous run of this worker offered it already.
            Some(m) => {
                self.record.sent_bytes = 0;
                Outgoing::new(m, window).restored(self.record.resumes, self.record.repaired_chunks)
            }
            None => match self.prepare().await {
                Some(m) => Outgoing::new(m, window),
                None => return,
            },
        };
        let file = {
            let path = self.path.clone();
            match blocking(move || File::open(path)).await {
                Ok(f) => Arc::new(f),
                Err(e) => {
                    return self
                        .fail(
                            &mut machine,
                            RefuseCode::SourceChanged,
                            &format!("the file cannot be opened: {e}"),
                        )
                        .await;
                }
            }
        };
        self.save(&machine, true).await;
        loop {
            let Some(session) = self.wait_session().await else {
                self.end(
                    &mut machine,
                    TransferState::Cancelled,
                    RefuseCode::Cancelled,
                    CANCELLED,
                );
                self.save(&machine, true).await;
                return;
            };
            match self.over(&session, &mut machine, &file).await {
                SessionEnd::Final => {
                    self.save(&machine, true).await;
                    return;
                }
                SessionEnd::LinkLost => {
                    machine.link_lost();
                    tracing::info!(id = %self.record.id, to = %self.record.to, "link lost; the transfer waits for it");
                    self.save(&machine, true).await;
                }
            }
        }
    }

    /// Hashes the file and signs the manifest.
    async fn prepare(&mut self) -> Option<Manifest> {
        let size = self.record.size;
        let Some(chunk_size) = chunk_size_for(size) else {
            let mut m = Outgoing::new(self.placeholder(), 1);
            self.fail(&mut m, RefuseCode::TooLarge, "too large to send")
                .await;
            return None;
        };
        let path = self.path.clone();
        let hashed = bulk(move || disk::hash_file(&path, chunk_size)).await;
        let (size, sha256, chunks) = match hashed {
            Ok(h) => h,
            Err(e) => {
                let mut m = Outgoing::new(self.placeholder(), 1);
                self.fail(
                    &mut m,
                    RefuseCode::SourceChanged,
                    &format!("reading the file: {e}"),
                )
                .await;
                return None;
            }
        };
        self.record.size = size;
        let mut manifest = Manifest {
            id: self.record.id,
            from: self.record.from.clone(),
            to: self.record.to.clone(),
            name: self.record.name.clone(),
            size,
            chunk_size,
            sha256,
            chunks,
            ts: self.files.clock.now_ms(),
            sig: String::new(),
            kid: None,
        };
        if let Err(e) = manifest.sign(&self.files.identity) {
            let mut m = Outgoing::new(self.placeholder(), 1);
            self.fail(
                &mut m,
                RefuseCode::InvalidManifest,
                &format!("signing: {e}"),
            )
            .await;
            return None;
        }
        Some(manifest)
    }

    /// A manifest-less stand-in for recording a failure before the manifest exists.
    fn placeholder(&self) -> Manifest {
        Manifest {
            id: self.record.id,
            from: self.record.from.clone(),
            to: self.record.to.clone(),
            name: self.record.name.clone(),
            size: 0,
            chunk_size: mesh_types::transfer::MIN_CHUNK_SIZE,
            sha256: mesh_types::transfer::Digest([0; 32]),
            chunks: Vec::new(),
            ts: 0,
            sig: String::new(),
            kid: None,
        }
    }

    async fn fail(&mut self, machine: &mut Outgoing, code: RefuseCode, why: &str) {
        tracing::warn!(id = %self.record.id, code = code.as_str(), "file transfer failed: {why}");
        self.end(machine, TransferState::Failed, code, why);
        self.save(machine, true).await;
    }

    /// Ends the transfer from this side in `state`, recording why.
    fn end(&mut self, machine: &mut Outgoing, state: TransferState, code: RefuseCode, why: &str) {
        machine.end(state);
        self.record.error_code = Some(code.as_str().into());
        self.record.error = Some(why.into());
    }

    /// Waits for a link to the receiver, asking for one; `None` when cancelled.
    async fn wait_session(&mut self) -> Option<Session> {
        let files = &self.files;
        let mut changed = files.sessions_changed.subscribe();
        loop {
            if *self.cancel.borrow() {
                return None;
            }
            if let Some(s) = self.files.session(&self.record.to) {
                return Some(s);
            }
            if !self.files.links.has_link(&self.record.to) {
                self.files
                    .rejoin
                    .start(self.record.to.clone(), "file transfer");
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = self.cancel.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    /// Carries the transfer over one link until it ends or the link does.
    async fn over(&mut self, s: &Session, machine: &mut Outgoing, file: &Arc<File>) -> SessionEnd {
        let mut closed = s.closed.clone();
        let manifest = Arc::new(machine.manifest().clone());
        let mut ahead = None;
        let Some(offer) = machine.link_up() else {
            return SessionEnd::Final;
        };
        let offer = offer.encode();
        if s.conn.send(Channel::File, &offer, false).await.is_err() {
            return SessionEnd::LinkLost;
        }
        self.save(machine, true).await;
        let mut retry = tokio::time::interval(OFFER_RETRY);
        retry.tick().await;
        loop {
            while let Ok(c) = self.ctrl.try_recv() {
                self.on_control(machine, &c).await;
            }
            if machine.state().is_final() {
                return SessionEnd::Final;
            }
            if *self.cancel.borrow() {
                self.cancel_on(s, RefuseCode::Cancelled, CANCELLED).await;
                self.end(
                    machine,
                    TransferState::Cancelled,
                    RefuseCode::Cancelled,
                    CANCELLED,
                );
                return SessionEnd::Final;
            }
            if let Some(chunk) = machine.next_chunk() {
                let sent = self
                    .send_chunk(
                        s,
                        &mut closed,
                        machine,
                        (file, &manifest),
                        chunk,
                        &mut ahead,
                    )
                    .await;
                match sent {
                    Ok(()) => continue,
                    Err(ChunkEnd::LinkLost) => return SessionEnd::LinkLost,
                    Err(ChunkEnd::Unreadable(why)) => {
                        self.cancel_on(s, RefuseCode::SourceChanged, &why).await;
                        self.fail(machine, RefuseCode::SourceChanged, &why).await;
                        return SessionEnd::Final;
                    }
                }
            }
            tokio::select! {
                c = self.ctrl.recv() => match c {
                    Some(c) => self.on_control(machine, &c).await,
                    None => return SessionEnd::Final,
                },
                r = closed.changed() => if r.is_err() { return SessionEnd::LinkLost },
                _ = self.cancel.changed() => {}
                _ = retry.tick(), if machine.state() == TransferState::Offered => {
                    if s.conn.send(Channel::File, &offer, false).await.is_err() {
                        return SessionEnd::LinkLost;
                    }
                }
            }
        }
    }

    async fn cancel_on(&self, s: &Session, code: RefuseCode, why: &str) {
        let msg = Control::Cancel {
            id: self.record.id,
            code,
            message: why.into(),
        };
        let _ = s.conn.send(Channel::File, &msg.encode(), false).await;
    }

    /// Sends `chunk` in batches of pieces, each read while the one before is on its way (and,
    /// at its last, the next chunk's first). A chunk the receiver found bad is first checked
    /// against its digest: a changed file ends the transfer, a fault on the way is repaired by
    /// sending it again.
    async fn send_chunk(
        &mut self,
        s: &Session,
        closed: &mut watch::Receiver<()>,
        machine: &Outgoing,
        (file, manifest): (&Arc<File>, &Arc<Manifest>),
        chunk: u32,
        ahead: &mut Option<ReadAhead>,
    ) -> Result<(), ChunkEnd> {
        const CHANGED: &str = "the file changed while it was being sent";
        let unreadable = |e: std::io::Error| ChunkEnd::Unreadable(format!("reading the file: {e}"));
        let read = |chunk: u32, offset: u32| {
            let (f, m) = (file.clone(), manifest.clone());
            let read = spawn_bulk(move || disk::read_pieces(&f, &m, chunk, offset));
            (chunk, offset, read)
        };
        if self.recheck.remove(&chunk) {
            let (f, m) = (file.clone(), manifest.clone());
            if !bulk(move || disk::chunk_matches(&f, &m, chunk))
                .await
                .map_err(unreadable)?
            {
                return Err(ChunkEnd::Unreadable(CHANGED.into()));
            }
        }
        let len = manifest.chunk_len(chunk);
        let mut offset = 0;
        while offset < len {
            let pending = match ahead.take() {
                Some((c, o, read)) if (c, o) == (chunk, offset) => read,
                _ => read(chunk, offset).2,
            };
            let end = len.min(offset.saturating_add(disk::READ_BATCH as u32));
            *ahead = if end < len {
                Some(read(chunk, end))
            } else {
                machine.peek_next().map(|next| read(next, 0))
            };
            let mut pieces = pending
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(unreadable)?
                .ok_or_else(|| ChunkEnd::Unreadable(CHANGED.into()))?;
            if offset == 0
                && self.files.config.flip_chunk == Some(chunk)
                && !self.flipped
                && let Some(first) = pieces.first_mut().filter(|p| p.len() > PIECE_HEADER)
            {
                self.flipped = true;
                first[PIECE_HEADER] ^= 0xff;
                tracing::warn!(id = %self.record.id, chunk, "fault injection: one byte of this chunk flipped");
            }
            for buf in pieces {
                let n = (buf.len() - PIECE_HEADER) as u64;
                tokio::select! {
                    r = s.conn.send_owned(Channel::File, buf) => if r.is_err() {
                        return Err(ChunkEnd::LinkLost);
                    },
                    r = closed.changed() => if r.is_err() { return Err(ChunkEnd::LinkLost) },
                }
                self.record.sent_bytes += n;
            }
            offset = end;
        }
        Ok(())
    }

    async fn on_control(&mut self, machine: &mut Outgoing, c: &Control) {
        let event = machine.on_control(c);
        match (&event, c) {
            (SenderEvent::Ended, Control::Refuse { code, message, .. })
            | (SenderEvent::Ended, Control::Cancel { code, message, .. }) => {
                tracing::info!(id = %self.record.id, code = code.as_str(), "the receiver ended the transfer: {message}");
                self.record.error_code = Some(code.as_str().into());
                self.record.error = Some(message.clone());
            }
            (SenderEvent::Accepted { missing }, _) => {
                tracing::info!(id = %self.record.id, to = %self.record.to, missing, "transfer accepted");
            }
            (SenderEvent::Repair(chunk), _) => {
                tracing::warn!(id = %self.record.id, chunk, "the receiver asks for a chunk again");
                self.recheck.insert(*chunk);
            }
            (SenderEvent::Complete, _) => {
                tracing::info!(id = %self.record.id, to = %self.record.to, "transfer complete");
            }
            _ => {}
        }
        let significant = !matches!(event, SenderEvent::Progress | SenderEvent::Ignored);
        self.save(machine, significant).await;
    }

    /// Updates the record; writes it to the store (and, on a state change, the state file).
    async fn save(&mut self, machine: &Outgoing, significant: bool) {
        let now = self.files.clock.now_ms();
        let state = machine.state();
        let changed = state != self.record.state;
        let bytes = machine.bytes_verified();
        self.rate.record(now, bytes);
        if !(significant || changed || now.saturating_sub(self.last_progress) >= PROGRESS_EVERY_MS)
        {
            return;
        }
        self.last_progress = now;
        self.record.state = state;
        self.record.bytes = bytes;
        self.record.size = machine.manifest().size.max(self.record.size);
        self.record.repaired_chunks = machine.repaired;
        self.record.resumes = machine.resumes;
        let live = state == TransferState::Sending;
        self.record.rate_bps = if live { self.rate.rate_bps() } else { 0 };
        self.record.eta_ms = if live {
            self.rate.eta_ms(self.record.size.saturating_sub(bytes))
        } else {
            None
        };
        self.record.updated_at = now;
        self.record.version += 1;
        let id = self.record.id;
        let record = self.record.clone();
        self.files.view(id, |v| v.record = record.clone());
        self.files
            .spool
            .push(crate::spool::Write::Transfer(Box::new(record.clone())));
        if changed || significant {
            let state_file = OutgoingFile {
                path: self.path.clone(),
                // A real manifest is signed; the stand-in of a send that failed before it had
                // one is not, and is not kept.
                manifest: Some(machine.manifest().clone()).filter(|m| !m.sig.is_empty()),
                record,
            };
            let path = self.files.layout.outgoing(id);
            if let Err(e) = blocking(move || disk::write_json(&path, &state_file)).await {
                tracing::warn!(%id, "transfer state not saved: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flush_starts_once_enough_is_written_and_its_end_is_awaited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Arc::new(File::create(dir.path().join("part")).expect("create"));
        let mut flusher = Flusher::new(file);
        flusher.wrote(FLUSH_EVERY - 1).await.expect("counted");
        assert!(flusher.running.is_none(), "not yet enough to flush");
        flusher.wrote(1).await.expect("counted");
        assert!(flusher.running.is_some(), "a flush runs in the background");
        assert_eq!(flusher.unflushed, 0);
        flusher.wait().await.expect("the flush succeeds");
        assert!(flusher.running.is_none());
    }
}
