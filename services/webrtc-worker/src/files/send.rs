//! Sending a file: `POST /transfers` resolves the path inside the send root and starts one task
//! per transfer, which hashes the file into a signed manifest, waits for a file session to the
//! receiver (asking `Rejoin` for a link), offers the manifest and streams the chunks the receiver
//! lacks, at most `window` unacknowledged, each piece waiting on the channel's send buffer. A
//! dropped link pauses it; the next session resumes it from the receiver's list.

use super::*;

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

impl Files {
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

    pub(super) fn spawn_send(
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
