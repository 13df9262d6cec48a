//! One connection's driver, from creation to removal: the only place a link does IO. It feeds
//! the connection's events and its timers to the link's `LinkState` and carries out what that
//! says: probes sent, statistics read, the link document written, events published.

use std::sync::Arc;

use mesh_types::{Health, Link, LinkQos, PeerId, UnixMillis};
use tokio::sync::{Notify, mpsc, watch};

use super::state::{Input, LinkState, Output};
use super::{LinkEvent, LinkView, Links, Phase};
use crate::transport::{Channel, ConnEvent, Connection};

pub(super) struct LinkDriver {
    pub(super) links: Arc<Links>,
    pub(super) peer: PeerId,
    pub(super) generation: u64,
    pub(super) conn: Arc<Connection>,
    pub(super) view: watch::Sender<LinkView>,
    pub(super) stop: Arc<Notify>,
    /// This side dialled: the link waits for its answer until the dial time-out.
    pub(super) dialled: bool,
}

impl LinkDriver {
    pub(super) async fn run(self, mut events: mpsc::Receiver<ConnEvent>) {
        let clock = self.links.clock;
        let mut state = LinkState::new(self.links.timings, clock.now(), self.dialled);
        // Dropped when the session ends (its channel closed, or the link ended).
        let mut file_session: Option<watch::Sender<()>> = None;
        let wake = tokio::time::sleep_until(clock.deadline_in(std::time::Duration::ZERO));
        tokio::pin!(wake);
        let mut woken_at = None;
        loop {
            while let Some(output) = state.poll_output() {
                self.carry_out(output, &mut state, &mut file_session).await;
            }
            let Some(due) = state.poll_timeout() else {
                break;
            };
            if woken_at != Some(due) {
                woken_at = Some(due);
                wake.as_mut().reset(clock.instant_at(due));
            }
            let input = tokio::select! {
                () = self.stop.notified() => Some(Input::Stop),
                () = &mut wake => {
                    // Reset on the next turn even if the state's deadline is the same.
                    woken_at = None;
                    None
                }
                event = events.recv() => Some(match event {
                    Some(event) => {
                        if !matches!(event, ConnEvent::Message { .. }) {
                            tracing::debug!(peer = %self.peer, ?event, "connection event");
                        }
                        Input::Conn(event)
                    }
                    None => Input::Gone,
                }),
            };
            match input {
                Some(input) => state.handle_input(clock.now(), input),
                None => state.handle_timeout(clock.now()),
            }
        }
        self.links.forget(&self.peer, self.generation);
    }

    async fn carry_out(
        &self,
        output: Output,
        state: &mut LinkState,
        file_session: &mut Option<watch::Sender<()>>,
    ) {
        let clock = self.links.clock;
        match output {
            // A lost probe is what the probe channel measures; no retry.
            Output::Probe(probe) => {
                let _ = self.conn.send(Channel::Probe, &probe.encode(), false).await;
            }
            Output::Up => {
                self.links
                    .set_phase(&self.peer, self.generation, Phase::Connected);
            }
            Output::Write {
                health,
                qos,
                established,
            } => self.write(health, qos, established),
            Output::Sample => {
                let stats = self.conn.stats(clock.std_instant()).await;
                state.handle_input(clock.now(), Input::Sampled(stats));
            }
            Output::Candidate(candidate) => self.view.send_modify(|v| v.candidate = candidate),
            Output::GossipChannel(open) => self.view.send_modify(|v| v.gossip = open),
            Output::CheckAnswered => {
                let awaiting_answer =
                    self.links.phase(&self.peer, self.generation) == Some(Phase::AwaitingAnswer);
                state.handle_input(clock.now(), Input::DialExpired { awaiting_answer });
            }
            Output::GossipReady => self.links.publish(LinkEvent::GossipReady {
                peer: self.peer.clone(),
            }),
            Output::FileSession(true) => {
                let (tx, ended) = watch::channel(());
                *file_session = Some(tx);
                self.links.publish(LinkEvent::FileSession {
                    peer: self.peer.clone(),
                    generation: self.generation,
                    conn: self.conn.clone(),
                    ended,
                });
            }
            Output::FileSession(false) => *file_session = None,
            Output::Frame {
                channel,
                data,
                text,
            } => {
                if channel == Channel::Mesh {
                    tracing::debug!(peer = %self.peer, bytes = data.len(), text, "mesh message");
                }
                self.links.publish(LinkEvent::Frame {
                    peer: self.peer.clone(),
                    channel,
                    data,
                    text,
                });
            }
            Output::RestartIce => self.links.publish(LinkEvent::PathBroken {
                peer: self.peer.clone(),
                generation: self.generation,
            }),
            Output::Suspected { silent } => {
                tracing::warn!(peer = %self.peer, silent_ms = silent.as_millis() as u64, "peer suspect: no probe heard");
            }
            Output::Died { silent } => {
                tracing::warn!(peer = %self.peer, silent_ms = silent.as_millis() as u64, "peer dead: no probe heard; link down");
            }
            Output::Cleared => {
                tracing::info!(peer = %self.peer, "peer heard again; no longer suspect");
            }
            Output::Ending(end) => tracing::info!(peer = %self.peer, reason = ?end, "link ended"),
            Output::Close => self.conn.close().await,
            Output::Ended { end, established } => {
                self.links.publish(LinkEvent::Ended {
                    peer: self.peer.clone(),
                    end,
                    established,
                });
            }
        }
    }

    /// Updates the view and spools the link document. A document that cannot be built is logged:
    /// the next sample writes again.
    fn write(&self, health: Health, qos: LinkQos, established: UnixMillis) {
        let state = self
            .links
            .phase(&self.peer, self.generation)
            .map_or("closed", Phase::as_str);
        if let Some(rtt) = qos.rtt_ms.filter(|r| r.is_finite()) {
            crate::metrics::METRICS.rtt.record(rtt, &[]);
        }
        let link = Link::new(
            self.links.id(),
            &self.peer,
            health,
            qos.clone(),
            established,
        );
        self.view.send_modify(|v| {
            v.state = if health == Health::Down && state == "connected" {
                "disconnected"
            } else {
                state
            };
            v.health = Some(health);
            v.qos = Some(qos);
            v.established_at = Some(established);
        });
        match link {
            Ok(link) => self.links.write(link),
            Err(e) => tracing::error!(peer = %self.peer, "cannot build the link document: {e}"),
        }
    }
}
