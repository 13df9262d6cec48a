//! The files side of a link's file session (the session itself is `file_channel`): which link a
//! transfer may use now, and the transfers' control messages routed to their sender or receiver.

use super::*;

impl Files {
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

    pub(super) async fn reply(&self, conn: &Connection, msg: &Control) {
        if let Err(e) = conn.send(Channel::File, &msg.encode(), false).await {
            tracing::debug!("file channel reply not sent: {e}");
        }
    }
}
