//! Expiry: what outlives `MESH_FILES_KEEP_SECS` (partial files without progress, records of
//! ended transfers) is removed.

use super::*;

impl Files {
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
}
