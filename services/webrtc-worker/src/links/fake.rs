//! A fake link core for the features' unit tests: links that exist, come up and end as the test
//! says, every call recorded, and a change counter to wait on instead of sleeping.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use mesh_types::{Answer, Offer, PeerId};
use tokio::sync::watch;

use super::{LinkHandle, LinkView};
use crate::error::WorkerError;
use crate::lock;
use crate::transport::Channel;

#[derive(Debug, Default)]
pub struct Calls {
    /// Each dial: the peer and when (tokio's clock).
    pub dials: Vec<(PeerId, tokio::time::Instant)>,
    /// Each connection stopped: the peer and its generation.
    pub stopped: Vec<(PeerId, u64)>,
    /// What was sent: the peer, the channel and the bytes.
    pub sent: Vec<(PeerId, Channel, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct State {
    calls: Calls,
    next_generation: u64,
    /// The connection to each peer, by generation.
    links: HashMap<PeerId, u64>,
    /// Peers whose link is up.
    up: HashSet<PeerId>,
}

#[derive(Debug)]
pub struct FakeLinks {
    id: PeerId,
    state: Mutex<State>,
    /// Bumped on every change, for tests to wait on.
    changed: watch::Sender<u64>,
}

impl FakeLinks {
    pub fn new(id: &str) -> Self {
        FakeLinks {
            id: PeerId::new(id).expect("a valid peer id"),
            state: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }

    fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut lock(&self.state));
        self.changed.send_modify(|n| *n += 1);
        out
    }

    /// A connected, up link to `peer`.
    pub fn link_up(&self, peer: &PeerId) {
        self.change(|s| {
            s.next_generation += 1;
            let generation = s.next_generation;
            s.links.insert(peer.clone(), generation);
            s.up.insert(peer.clone());
        });
    }

    pub fn calls<T>(&self, f: impl FnOnce(&Calls) -> T) -> T {
        f(&lock(&self.state).calls)
    }

    /// Waits (on the change counter, at most `within`) until `check` holds.
    pub async fn until(&self, within: Duration, what: &str, check: impl Fn(&Self) -> bool) {
        let mut changed = self.changed.subscribe();
        let wait = async {
            while !check(self) {
                changed.changed().await.expect("the fake lives");
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }
}

#[async_trait]
impl LinkHandle for FakeLinks {
    fn id(&self) -> &PeerId {
        &self.id
    }

    fn has_link(&self, peer: &PeerId) -> bool {
        lock(&self.state).links.contains_key(peer)
    }

    fn is_up(&self, peer: &PeerId) -> bool {
        lock(&self.state).up.contains(peer)
    }

    fn views(&self) -> Vec<LinkView> {
        Vec::new()
    }

    fn generation_of(&self, peer: &PeerId) -> Option<u64> {
        lock(&self.state).links.get(peer).copied()
    }

    fn stop_generation(&self, peer: &PeerId, generation: u64) {
        self.change(|s| {
            if s.links.get(peer) == Some(&generation) {
                s.links.remove(peer);
                s.up.remove(peer);
                s.calls.stopped.push((peer.clone(), generation));
            }
        });
    }

    fn dial_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn dial(&self, peer: PeerId) -> Result<(Offer, u64), WorkerError> {
        let generation = self.change(|s| {
            if s.links.contains_key(&peer) {
                return Err(WorkerError::LinkExists(peer.clone()));
            }
            s.next_generation += 1;
            s.links.insert(peer.clone(), s.next_generation);
            s.calls.dials.push((peer.clone(), now()));
            Ok(s.next_generation)
        })?;
        let offer = Offer::new(self.id.clone(), peer, "v=0 fake".into(), 0);
        Ok((offer, generation))
    }

    /// An answer brings the link up.
    async fn accept_answer(&self, answer: Answer) -> Result<(), WorkerError> {
        self.change(|s| {
            if !s.links.contains_key(&answer.peer_from) {
                return Err(WorkerError::NothingPending(answer.peer_from.clone()));
            }
            s.up.insert(answer.peer_from.clone());
            Ok(())
        })
    }

    async fn begin_ice_restart(
        &self,
        _peer: &PeerId,
        _generation: u64,
    ) -> Option<Result<Offer, WorkerError>> {
        None
    }

    fn ice_restart_failed(&self, peer: &PeerId, generation: u64) -> bool {
        self.generation_of(peer) == Some(generation)
    }

    async fn send_on(
        &self,
        peer: &PeerId,
        channel: Channel,
        data: &[u8],
    ) -> Result<(), WorkerError> {
        self.change(|s| {
            if !s.up.contains(peer) {
                return Err(WorkerError::NotConnected(peer.clone()));
            }
            s.calls.sent.push((peer.clone(), channel, data.to_vec()));
            Ok(())
        })
    }
}

// A test's record of when, on tokio's (paused) clock.
#[allow(clippy::disallowed_methods)]
pub fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}
