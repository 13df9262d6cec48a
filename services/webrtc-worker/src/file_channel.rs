//! One link's `file` channel session. The channel carries two features' frames, file transfers
//! and queued messages, so its session is a small module of its own that both use: it reads the
//! channel's queue, decodes each frame and hands it to its owner, and neither feature knows the
//! other.

use std::sync::Arc;

use bytes::Bytes;
use mesh_types::PeerId;
use mesh_types::transfer::{Control, Frame, PIECE_HEADER};
use tokio::sync::watch;

use crate::files::Files;
use crate::queue::Queue;
use crate::transport::Connection;

/// Runs the file session of the link to `peer` on `conn` until `closed` changes (its sender is
/// dropped when the channel closes or the link ends).
pub fn start(
    peer: PeerId,
    generation: u64,
    conn: Arc<Connection>,
    mut closed: watch::Receiver<()>,
    files: Arc<Files>,
    queue: Arc<Queue>,
) {
    let Some(mut incoming) = conn.take_file_queue() else {
        return;
    };
    files.session_started(&peer, generation, conn.clone(), closed.clone());
    tokio::spawn(async move {
        queue.session_started(&peer, &conn).await;
        loop {
            tokio::select! {
                biased;
                m = incoming.recv() => match m {
                    Some(m) => dispatch(&peer, &conn, &closed, &files, &queue, m).await,
                    None => break,
                },
                r = closed.changed() => if r.is_err() { break },
            }
        }
        files.session_ended(&peer, generation);
    });
}

async fn dispatch(
    peer: &PeerId,
    conn: &Arc<Connection>,
    closed: &watch::Receiver<()>,
    files: &Arc<Files>,
    queue: &Queue,
    m: Bytes,
) {
    let frame = match Frame::decode(&m) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(%peer, "file channel: {e}; message ignored");
            return;
        }
    };
    match frame {
        Frame::Piece(p) => {
            let (id, chunk, offset) = (p.id, p.chunk, p.offset);
            files
                .on_piece(peer, conn, id, chunk, offset, m.slice(PIECE_HEADER..))
                .await;
        }
        Frame::Message(q) => queue.on_message(peer, conn, q.seq, q.kind, q.data).await,
        Frame::Control(
            c @ (Control::MsgState { .. } | Control::MsgAck { .. } | Control::MsgSkip { .. }),
        ) => queue.on_control(peer, conn, closed, &c).await,
        Frame::Control(c) => files.on_control(peer, conn, c).await,
    }
}
