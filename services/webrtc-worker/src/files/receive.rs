//! Receiving a file: an offer is checked (manifest, sender, signature, size, free space) before
//! anything touches the disk; each transfer's writer writes and hashes pieces as they come, checks
//! each chunk at its end, checkpoints and acknowledges it; the whole file is checked before it is
//! moved to `received/<from>/<name>`.

use super::*;

/// A transfer being received.
pub(super) struct InEntry {
    pub(super) machine: Incoming,
    pub(super) manifest: Arc<Manifest>,
    pub(super) started_at: UnixMillis,
    /// The last sign of life: the offer, a verified chunk, a resume; or the file in place.
    /// Measured against `FilesConfig::keep`.
    pub(super) touched: UnixMillis,
    pub(super) done_path: Option<PathBuf>,
    pub(super) resumes: u64,
    pub(super) repaired: u64,
    pub(super) rate: RateMeter,
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

impl Files {
    pub(super) async fn on_offer(
        self: &Arc<Self>,
        peer: &PeerId,
        conn: &Connection,
        manifest: Manifest,
    ) {
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
    pub(super) async fn new_incoming(
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

    /// Forgets a transfer being received and removes its files.
    pub(super) fn drop_incoming(
        &self,
        id: TransferId,
        state: TransferState,
        code: RefuseCode,
        why: &str,
    ) {
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
