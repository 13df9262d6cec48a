//! What the features' unit tests share: [`World`], worker `a`'s surroundings (a store with its
//! peers in a temporary directory, the fake link core, a `Rejoin` over it with a scripted
//! courier, a clock that follows paused time, a seeded generator), and deterministic identities.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mesh_store::embedded::EmbeddedStore;
use mesh_store::{PeerUpsert, SharedStore};
use mesh_types::{Answer, Endpoints, Identity, Offer, PeerId};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

use crate::clock::Clock;
use crate::links::fake::FakeLinks;
use crate::lock;
use crate::rejoin::{OfferCourier, Rejoin, RejoinSettings};

pub use crate::links::fake::now;

/// Wall time at the start of every test world.
pub const T0: u64 = 1_700_000_000_000;

pub fn peer(id: &str) -> PeerId {
    PeerId::new(id).expect("a valid peer id")
}

/// Peer `id`'s identity, the same in every run.
pub fn identity(id: &str) -> Identity {
    let seed = id
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    Identity::generate(peer(id), &mut StdRng::seed_from_u64(seed))
}

/// What the courier does with each offer, in turn; once the script is out, offers hang.
#[derive(Debug, Clone)]
pub enum Deliver {
    Answer,
    Fail,
}

#[derive(Debug, Default)]
pub struct FakeCourier {
    script: Mutex<VecDeque<Deliver>>,
    delivered: Mutex<usize>,
}

impl FakeCourier {
    pub fn delivered(&self) -> usize {
        *lock(&self.delivered)
    }
}

#[async_trait]
impl OfferCourier for FakeCourier {
    async fn deliver(&self, offer: &Offer) -> Result<Answer, String> {
        *lock(&self.delivered) += 1;
        let next = lock(&self.script).pop_front();
        match next {
            Some(Deliver::Answer) => Ok(Answer::new(
                offer.peer_to.clone(),
                offer.peer_from.clone(),
                "v=0 fake".into(),
                0,
            )),
            Some(Deliver::Fail) => Err("unreachable".into()),
            None => std::future::pending().await,
        }
    }
}

/// Worker `a`'s surroundings for a feature's unit test.
pub struct World {
    pub links: Arc<FakeLinks>,
    pub courier: Arc<FakeCourier>,
    pub store: SharedStore,
    pub rejoin: Arc<Rejoin>,
    pub clock: Clock,
    pub dir: tempfile::TempDir,
}

impl World {
    /// `peers` registered (with [`identity`]'s keys), each last seen the given ms before now;
    /// offers delivered as `script` says.
    pub async fn new(peers: &[(&str, u64)], script: &[Deliver]) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: SharedStore = Arc::new(
            EmbeddedStore::open(dir.path().join("store"))
                .await
                .expect("store opens"),
        );
        for id in std::iter::once("a").chain(peers.iter().map(|p| p.0)) {
            let ago = peers.iter().find(|p| p.0 == id).map_or(0, |p| p.1);
            store
                .upsert_peer(&PeerUpsert {
                    id: peer(id),
                    pub_key: identity(id).public_key(),
                    region: None,
                    endpoints: Endpoints::default(),
                    seen_at: T0 - ago,
                    initial_trust: 0.1,
                })
                .await
                .expect("peer registered");
        }
        let clock = Clock::following_tokio(T0);
        let links = Arc::new(FakeLinks::new("a"));
        let courier = Arc::new(FakeCourier::default());
        lock(&courier.script).extend(script.iter().cloned());
        let rejoin = Rejoin::new(
            links.clone(),
            store.clone(),
            courier.clone(),
            clock,
            RejoinSettings::default(),
            StdRng::seed_from_u64(7),
        );
        World {
            links,
            courier,
            store,
            rejoin,
            clock,
            dir,
        }
    }
}
