//! File transfers between peers over each link's `file` channel (proto/FILES.md): the files
//! component (`Files`), its configuration, views and restore; by job, `send`, `receive`,
//! `session` (a link's file session, as files sees it) and `expiry`, around the sans-IO
//! [`proto`] state and the blocking [`disk`] helpers.
//!
//! Both sides keep their state on disk, so either may restart and the transfer resumes.

pub mod disk;
mod expiry;
pub mod proto;
mod receive;
mod send;
mod session;

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
use crate::links::LinkHandle;
use crate::rejoin::Rejoin;
use crate::spool::Spool;
use crate::transport::{Channel, Connection};
use crate::{blocking, bulk, lock, spawn_bulk};
use disk::{Checkpoint, Layout, SendPathError, WholeCheck};
use proto::{Incoming, Outgoing, PieceAction, RateMeter, SenderEvent};
use receive::InEntry;

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

/// The files component: the worker's transfers, sending and receiving, and the links' file
/// sessions; it reaches links, the store and the rejoin loop through the handles it was given.
pub struct Files {
    config: FilesConfig,
    links: Arc<dyn LinkHandle>,
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
    pub links: Arc<dyn LinkHandle>,
    pub rejoin: Arc<Rejoin>,
    pub store: SharedStore,
    pub spool: Arc<Spool>,
    pub identity: Arc<Identity>,
    pub clock: Clock,
}

impl Files {
    pub fn new(parts: FilesParts) -> Arc<Self> {
        Arc::new(Files {
            layout: Layout {
                root: parts.config.dir.clone(),
            },
            config: parts.config,
            links: parts.links,
            rejoin: parts.rejoin,
            store: parts.store,
            spool: parts.spool,
            identity: parts.identity,
            clock: parts.clock,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{World, peer};

    const WITHIN: Duration = Duration::from_secs(60);

    fn files(w: &World) -> Arc<Files> {
        Files::new(FilesParts {
            config: FilesConfig::new(w.dir.path().join("files")),
            links: w.links.clone(),
            rejoin: w.rejoin.clone(),
            store: w.store.clone(),
            spool: Arc::new(Spool::new(100)),
            identity: Arc::new(crate::fixtures::identity("a")),
            clock: w.clock,
        })
    }

    /// Waits, in paused time, for `check` on the transfer's view.
    async fn until_view(
        f: &Files,
        id: TransferId,
        what: &str,
        check: impl Fn(&TransferView) -> bool,
    ) {
        tokio::time::timeout(WITHIN, async {
            while !f.transfer(id).is_some_and(|v| check(&v)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", f.transfer(id)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_is_refused_before_anything_starts_when_it_cannot_go() {
        let w = World::new(&[("b", 0)], &[]).await;
        let f = files(&w);
        f.restore_transfers().await.expect("directories made");
        let to_self = f.start_transfer(peer("a"), Path::new("x")).await;
        assert!(matches!(to_self, Err(FileError::ToSelf)));
        let unknown = f.start_transfer(peer("zed"), Path::new("x")).await;
        assert!(matches!(unknown, Err(FileError::UnknownPeer(_))));
        for outside in ["../store", "/etc/hostname", "missing.txt"] {
            let refused = f.start_transfer(peer("b"), Path::new(outside)).await;
            assert!(matches!(refused, Err(FileError::Path { .. })), "{outside}");
        }
        assert!(f.transfers().is_empty(), "nothing was started");
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_waits_for_a_link_it_asks_for_and_a_cancel_ends_it() {
        let w = World::new(&[("b", 0)], &[]).await;
        let f = files(&w);
        f.restore_transfers().await.expect("directories made");
        let root = &f.config().send_root;
        std::fs::create_dir_all(root).expect("send root made");
        std::fs::write(root.join("hello.txt"), b"hello, b").expect("written");
        let view = f
            .start_transfer(peer("b"), Path::new("hello.txt"))
            .await
            .expect("started");
        assert_eq!(view.record.state, TransferState::Preparing);
        assert_eq!(view.record.size, 8);
        let id = view.record.id;
        // Hashed and signed, it waits for a link to b and asks the rejoin loop for one.
        until_view(&f, id, "waiting", |v| {
            v.record.state == TransferState::Waiting
        })
        .await;
        assert_eq!(w.rejoin.peers(), [peer("b")]);
        f.cancel_transfer(id).await.expect("cancelled");
        until_view(&f, id, "cancelled", |v| {
            v.record.state == TransferState::Cancelled
        })
        .await;
        assert!(matches!(
            f.cancel_transfer(id).await,
            Err(FileError::Ended(_))
        ));
    }
}
