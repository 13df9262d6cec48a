//! Rejoining lost peers. When a link dies (its peer went silent or ICE failed) this worker dials
//! the peer again, with exponential backoff and jitter, until the link is back, the peer is gone
//! from the registry, or an operator hangs up. A worker that starts redials the peers it had live
//! links with in the last ten minutes (the other side may be waiting for it).
//!
//! The offer goes through the proxy's signaling (`POST /api/mesh-rtc/offer` with a peer token)
//! when `MESH_PROXY_URL` is set, else straight to the peer's registered worker URL. Two sides
//! redialling each other at once is glare, which `answer_offer` settles (the lower id's offer
//! wins); the jitter keeps retries from meeting again.
//!
//! [`Backoff`] is sans-IO (an `Rng` comes in); the loop is the driver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_store::{LinkQuery, SharedStore};
use mesh_types::{Answer, Offer, PeerId};
use rand::rngs::StdRng;
use rand::{Rng, RngExt as _, SeedableRng as _};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::error::WorkerError;
use crate::links::LinkHandle;
use crate::lock;

/// Redial delays: the `n`th wait is drawn from `[d/2, d]` with `d = min(cap, base · 2ⁿ)` ("equal
/// jitter": never a tight loop, never all peers in step).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next(&mut self, rng: &mut impl Rng) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        self.attempt = self.attempt.saturating_add(1);
        let d = self.base.saturating_mul(factor).min(self.cap);
        let half = d / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rng.random_range(0..=spread))
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// How a worker rejoins.
#[derive(Clone, PartialEq, Eq)]
pub struct RejoinSettings {
    pub enabled: bool,
    pub base: Duration,
    /// The longest wait between attempts: with the default (4 s) a peer that is reachable again
    /// is rejoined within one wait and one handshake.
    pub cap: Duration,
    /// The proxy's base URL and a `peer` token for its `/api/mesh-rtc/offer`; `None`: offers go
    /// straight to the peer's registered worker URL.
    pub proxy: Option<(String, String)>,
}

// By hand: the proxy token is a secret and stays out of debug output.
impl std::fmt::Debug for RejoinSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RejoinSettings")
            .field("enabled", &self.enabled)
            .field("base", &self.base)
            .field("cap", &self.cap)
            .field("proxy", &self.proxy.as_ref().map(|(url, _)| url))
            .finish()
    }
}

impl Default for RejoinSettings {
    fn default() -> Self {
        RejoinSettings {
            enabled: true,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(4),
            proxy: None,
        }
    }
}

/// Links older than this at start-up are not redialled: the peer has had time to go elsewhere.
const RECENT_MS: u64 = 10 * 60 * 1000;
/// A peer not seen (registered or refreshed) for this long is not redialled any more; gossip
/// treats it as stale after the same time.
const STALE_MS: u64 = 10 * 60 * 1000;
/// Delivering an offer: the answerer gathers candidates (5 s by default) before it answers, and
/// the proxy adds its own hop.
const OFFER_TIMEOUT: Duration = Duration::from_secs(20);

/// The rejoin component: owns which peers are being rejoined and the loops doing it; acts on
/// links only through the link core's handle.
pub struct Rejoin {
    links: Arc<dyn LinkHandle>,
    store: SharedStore,
    courier: Arc<dyn OfferCourier>,
    clock: Clock,
    settings: RejoinSettings,
    /// Each loop's jitter is drawn from a generator seeded from this one.
    rng: Mutex<StdRng>,
    /// Peers being rejoined, each with what cancels its loop.
    rejoining: Mutex<HashMap<PeerId, Arc<Notify>>>,
    /// Set when the worker starts to stop: no new rejoining from then on.
    stopping: AtomicBool,
}

impl std::fmt::Debug for Rejoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejoin")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Rejoin {
    pub fn new(
        links: Arc<dyn LinkHandle>,
        store: SharedStore,
        courier: Arc<dyn OfferCourier>,
        clock: Clock,
        settings: RejoinSettings,
        rng: StdRng,
    ) -> Arc<Self> {
        Arc::new(Rejoin {
            links,
            store,
            courier,
            clock,
            settings,
            rng: Mutex::new(rng),
            rejoining: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        })
    }

    /// The peers being rejoined, by id.
    pub fn peers(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = lock(&self.rejoining).keys().cloned().collect();
        peers.sort();
        peers
    }

    /// No new rejoining from now on, and every loop under way stops (the worker is stopping).
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::Release);
        for (_, cancel) in lock(&self.rejoining).drain() {
            cancel.notify_one();
        }
    }

    /// Starts rejoining `peer` unless already under way or switched off.
    pub fn start(self: &Arc<Self>, peer: PeerId, why: &'static str) {
        if !self.settings.enabled || self.stopping.load(Ordering::Acquire) {
            return;
        }
        let cancel = Arc::new(Notify::new());
        {
            let mut rejoining = lock(&self.rejoining);
            if rejoining.contains_key(&peer) {
                return;
            }
            rejoining.insert(peer.clone(), cancel.clone());
        }
        tracing::info!(%peer, why, "rejoining");
        tokio::spawn(self.clone().rejoin_loop(peer, cancel));
    }

    /// Stops rejoining `peer` (an operator hung up, or the peer closed the link on purpose).
    pub fn cancel(&self, peer: &PeerId) {
        if let Some(cancel) = lock(&self.rejoining).remove(peer) {
            cancel.notify_one();
        }
    }

    /// At start-up: redials the peers this worker had links with recently.
    pub async fn recent(self: &Arc<Self>) -> Result<usize, WorkerError> {
        let now = self.clock.now_ms();
        let me = self.links.id();
        let links = self
            .store
            .list_links(&LinkQuery {
                peer: Some(me.clone()),
                limit: mesh_store::MAX_LIST_LIMIT,
                ..LinkQuery::default()
            })
            .await?;
        let mut n = 0;
        for link in links {
            if now.saturating_sub(link.qos.last_ts) > RECENT_MS {
                continue;
            }
            let other = if &link.a == me { link.b } else { link.a };
            self.start(other, "restarted");
            n += 1;
        }
        Ok(n)
    }

    async fn rejoin_loop(self: Arc<Self>, peer: PeerId, cancel: Arc<Notify>) {
        let mut backoff = Backoff::new(self.settings.base, self.settings.cap);
        let mut rng = StdRng::from_rng(&mut *lock(&self.rng));
        let started = self.clock.since_start();
        // The connection the attempt under way made, so a cancel can end exactly that one.
        let attempt: Arc<Mutex<Option<u64>>> = Arc::default();
        let outcome = loop {
            let wait = backoff.next(&mut rng);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.notified() => break "cancelled",
            }
            if self.links.is_up(&peer) {
                break "rejoined by the peer";
            }
            let result = tokio::select! {
                r = self.redial(&peer, &attempt) => r,
                () = cancel.notified() => {
                    if let Some(generation) = lock(&attempt).take() {
                        self.links.stop_generation(&peer, generation);
                    }
                    break "cancelled";
                }
            };
            lock(&attempt).take();
            match result {
                Ok(()) => break "rejoined",
                Err(RedialError::Gone(why)) => {
                    tracing::info!(%peer, "not rejoining: {why}");
                    break "peer gone";
                }
                Err(RedialError::Retry(why)) => {
                    tracing::debug!(%peer, attempt = backoff.attempts(), "rejoin attempt failed: {why}");
                }
            }
        };
        // Only our own entry: a newer loop may have started after a cancel.
        {
            let mut rejoining = lock(&self.rejoining);
            if rejoining
                .get(&peer)
                .is_some_and(|c| Arc::ptr_eq(c, &cancel))
            {
                rejoining.remove(&peer);
            }
        }
        if outcome != "cancelled" {
            tracing::info!(
                %peer,
                outcome,
                attempts = backoff.attempts(),
                elapsed_ms = self.clock.since_start().saturating_sub(started).as_millis() as u64,
                "rejoin finished"
            );
        }
    }

    /// One attempt: dial, deliver the offer, take the answer, wait for the link to come up. Every
    /// clean-up names this attempt's connection (its generation): the peer's own offer may have
    /// replaced it meanwhile, and that newer link must be left alone.
    async fn redial(
        self: &Arc<Self>,
        peer: &PeerId,
        attempt: &Mutex<Option<u64>>,
    ) -> Result<(), RedialError> {
        let now = self.clock.now_ms();
        match self.store.get_peer(peer).await {
            Ok(p) if now.saturating_sub(p.last_seen_at) > STALE_MS => {
                return Err(RedialError::Gone(format!(
                    "not seen for {} min",
                    now.saturating_sub(p.last_seen_at) / 60_000
                )));
            }
            Err(e) if e.kind() == mesh_store::ErrorKind::NotFound => {
                return Err(RedialError::Gone("no longer registered".into()));
            }
            _ => {}
        }
        let (offer, generation) = match self.links.dial(peer.clone()).await {
            Ok(dialled) => dialled,
            Err(WorkerError::UnknownPeer(_)) => {
                return Err(RedialError::Gone("no longer registered".into()));
            }
            // A connection to the peer exists (it dialled us meanwhile): the next round looks
            // at whether it came up.
            Err(e) => return Err(RedialError::Retry(e.to_string())),
        };
        *lock(attempt) = Some(generation);
        let still_ours = |links: &dyn LinkHandle| links.generation_of(peer) == Some(generation);
        let answer = match self.courier.deliver(&offer).await {
            Ok(answer) if still_ours(&*self.links) => answer,
            Ok(_) => {
                return Err(RedialError::Retry(
                    "replaced by the peer's own offer".into(),
                ));
            }
            Err(why) => {
                // Our half-made connection would otherwise wait out the dial time-out.
                self.links.stop_generation(peer, generation);
                return Err(RedialError::Retry(why));
            }
        };
        if let Err(e) = self.links.accept_answer(answer).await {
            self.links.stop_generation(peer, generation);
            return Err(RedialError::Retry(e.to_string()));
        }
        let up = async {
            while still_ours(&*self.links) {
                if self.links.is_up(peer) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        };
        match tokio::time::timeout(self.links.dial_timeout(), up).await {
            Ok(true) => Ok(()),
            _ => {
                self.links.stop_generation(peer, generation);
                Err(RedialError::Retry("the link did not come up".into()))
            }
        }
    }

    /// The path of a live link broke (ICE disconnected): the dialler restarts ICE on the same
    /// connection, through the same signalling as a rejoin. If that fails, the link's fate is
    /// the detector's and ICE's as before (and a lost link is rejoined with a new connection).
    pub async fn restart_ice(self: Arc<Self>, peer: PeerId, generation: u64) {
        let Some(offer) = self.links.begin_ice_restart(&peer, generation).await else {
            return;
        };
        let outcome = async {
            let offer = offer.map_err(|e| e.to_string())?;
            let answer = self.courier.deliver(&offer).await?;
            self.links
                .accept_answer(answer)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(why) = outcome {
            tracing::warn!(%peer, "ICE restart failed: {why}");
            // The link went meanwhile (or the peer answered as a new connection): a new one.
            if !self.links.ice_restart_failed(&peer, generation) {
                self.start(peer, "an ICE restart could not finish");
            }
        }
    }
}

/// Carries a signed offer to its peer and brings back the answer: the signalling a rejoin and an
/// ICE restart go through.
#[async_trait::async_trait]
pub trait OfferCourier: Send + Sync + std::fmt::Debug {
    async fn deliver(&self, offer: &Offer) -> Result<Answer, String>;
}

/// Offers over HTTPS: through the proxy (`POST /api/mesh-rtc/offer` with a peer token) when one
/// is configured, else to the peer's registered worker URL.
pub struct HttpCourier {
    pub http: reqwest::Client,
    pub store: SharedStore,
    /// The proxy's base URL and a `peer` token; `None`: straight to the peer's worker.
    pub proxy: Option<(String, String)>,
}

// By hand: the proxy token is a secret and stays out of debug output.
impl std::fmt::Debug for HttpCourier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCourier")
            .field("proxy", &self.proxy.as_ref().map(|(url, _)| url))
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl OfferCourier for HttpCourier {
    async fn deliver(&self, offer: &Offer) -> Result<Answer, String> {
        let http = &self.http;
        let request = match &self.proxy {
            Some((url, token)) => http
                .post(format!("{url}/api/mesh-rtc/offer"))
                .bearer_auth(token),
            None => {
                let peer = self
                    .store
                    .get_peer(&offer.peer_to)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(base) = peer.endpoints.https else {
                    return Err(format!("{} has no worker URL", offer.peer_to));
                };
                http.post(format!("{}/offer", base.trim_end_matches('/')))
            }
        };
        let response = request
            .json(offer)
            // The answerer gathers its candidates before it answers (up to its gather time-out).
            .timeout(OFFER_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("offer not delivered: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!("offer refused ({status}): {body}"));
        }
        response
            .json::<Answer>()
            .await
            .map_err(|e| format!("unreadable answer: {e}"))
    }
}

enum RedialError {
    /// Worth another attempt after the next wait.
    Retry(String),
    /// Stop rejoining.
    Gone(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn waits_grow_by_doubling_within_equal_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(4));
        let mut r = rng();
        let bounds = [250u64, 500, 1000, 2000, 4000, 4000, 4000];
        for (i, d) in bounds.iter().enumerate() {
            let wait = b.next(&mut r).as_millis() as u64;
            assert!(
                (d / 2..=*d).contains(&wait),
                "attempt {i}: {wait} ms not in [{}, {d}]",
                d / 2
            );
        }
        assert_eq!(b.attempts(), 7);
    }

    #[test]
    fn jitter_spreads_peers_that_lost_a_link_at_the_same_moment() {
        let mut r = rng();
        let waits: std::collections::HashSet<u128> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(4));
                b.next(&mut r);
                b.next(&mut r).as_micros()
            })
            .collect();
        assert!(waits.len() > 15, "{waits:?}");
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut r = rng();
        for _ in 0..100 {
            assert!(b.next(&mut r) <= Duration::from_secs(30));
        }
    }

    // ---- the component, against a fake link core, with paused time and a seeded generator ----

    use mesh_types::{Health, Link, LinkQos};

    use crate::fixtures::{Deliver, World, peer};

    const WITHIN: Duration = Duration::from_secs(60);

    fn dial_times(w: &World) -> Vec<u64> {
        w.links.calls(|c| {
            let first = c.dials.first().map(|d| d.1);
            c.dials
                .iter()
                .map(|(_, at)| {
                    first.map_or(0, |f| at.saturating_duration_since(f).as_millis() as u64)
                })
                .collect()
        })
    }

    /// Waits, in paused time, until no loop runs any more.
    async fn loops_end(rejoin: &Rejoin) {
        tokio::time::timeout(WITHIN, async {
            while !rejoin.peers().is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the rejoin loops end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_peer_is_redialled_with_growing_waits_until_its_link_is_up() {
        let w = World::new(
            &[("b", 0)],
            &[Deliver::Fail, Deliver::Fail, Deliver::Answer],
        )
        .await;
        let began = crate::fixtures::now();
        w.rejoin.start(peer("b"), "test");
        assert_eq!(w.rejoin.peers(), [peer("b")]);
        w.links
            .until(WITHIN, "b's link up", |l| l.is_up(&peer("b")))
            .await;
        let first = w
            .links
            .calls(|c| c.dials[0].1.saturating_duration_since(began).as_millis() as u64);
        assert!(
            (125..=250).contains(&first),
            "first attempt after {first} ms"
        );
        // Equal jitter: each wait in [d/2, d], d doubling from 250 ms; attempts take no time.
        let times = dial_times(&w);
        assert_eq!(times.len(), 3);
        let gaps: Vec<u64> = times.windows(2).map(|t| t[1] - t[0]).collect();
        assert!(
            (250..=500).contains(&gaps[0]) && (500..=1000).contains(&gaps[1]),
            "{gaps:?}"
        );
        // Each failed attempt's half-made connection was stopped, not left to time out.
        assert_eq!(w.links.calls(|c| c.stopped.len()), 2);
        // Rejoined: the loop ends and forgets the peer.
        loops_end(&w.rejoin).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_seed_gives_the_same_schedule() {
        let mut schedules = Vec::new();
        for _ in 0..2 {
            let w = World::new(
                &[("b", 0)],
                &[Deliver::Fail, Deliver::Fail, Deliver::Answer],
            )
            .await;
            w.rejoin.start(peer("b"), "test");
            w.links
                .until(WITHIN, "b's link up", |l| l.is_up(&peer("b")))
                .await;
            schedules.push(dial_times(&w));
        }
        assert_eq!(schedules[0], schedules[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_stops_the_loop_and_the_attempt_under_way() {
        // No answer ever comes: the attempt waits on the courier.
        let w = World::new(&[("b", 0)], &[]).await;
        w.rejoin.start(peer("b"), "test");
        w.links
            .until(WITHIN, "a dial", |l| l.calls(|c| c.dials.len()) == 1)
            .await;
        w.rejoin.cancel(&peer("b"));
        w.links
            .until(WITHIN, "the attempt stopped", |l| {
                l.calls(|c| c.stopped.len()) == 1
            })
            .await;
        assert!(w.rejoin.peers().is_empty());
        // Nothing more is dialled, however long we look.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(w.links.calls(|c| c.dials.len()), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_gone_from_the_registry_or_long_unseen_is_not_redialled() {
        let w = World::new(&[("stale", 11 * 60 * 1000)], &[Deliver::Answer]).await;
        for id in ["stale", "unregistered"] {
            w.rejoin.start(peer(id), "test");
        }
        loops_end(&w.rejoin).await;
        assert_eq!(w.links.calls(|c| c.dials.len()), 0);
        assert_eq!(w.courier.delivered(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn once_stopped_nothing_is_rejoined() {
        let w = World::new(&[("b", 0), ("c", 0)], &[]).await;
        w.rejoin.start(peer("b"), "test");
        w.rejoin.stop_all();
        w.rejoin.start(peer("c"), "test");
        assert!(w.rejoin.peers().is_empty());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(w.links.calls(|c| c.dials.len()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn at_start_up_the_peers_of_recent_links_are_rejoined() {
        let w = World::new(&[("b", 0), ("c", 0)], &[]).await;
        let now = w.clock.now_ms();
        for (other, ago) in [("b", 60_000), ("c", 20 * 60_000)] {
            let qos = LinkQos {
                last_ts: now - ago,
                ..Default::default()
            };
            let link =
                Link::new(&peer("a"), &peer(other), Health::Up, qos, now - ago).expect("a link");
            w.store.upsert_link(&link).await.expect("link stored");
        }
        assert_eq!(w.rejoin.recent().await.expect("links read"), 1);
        assert_eq!(w.rejoin.peers(), [peer("b")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_that_came_up_meanwhile_ends_the_loop_without_a_dial() {
        let w = World::new(&[("b", 0)], &[]).await;
        w.rejoin.start(peer("b"), "test");
        // The peer dialled us before our first wait was over.
        w.links.link_up(&peer("b"));
        loops_end(&w.rejoin).await;
        assert_eq!(w.links.calls(|c| c.dials.len()), 0);
    }
}
