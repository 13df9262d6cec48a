//! One gossip run: recompute trust from the link graph, pick each origin's targets by
//! trust-weighted roulette (mesh-gossip's `select`), have each origin's worker sign and deliver
//! the envelope (`POST /gossip/push`; the worker holds the key and the DataChannels), and write
//! one audit record per origin. The decisions are sans-IO; this is their driver.

use std::collections::HashMap;

use futures_util::StreamExt as _;
use mesh_gossip::select::{Candidate, SelectionConfig, select};
use mesh_gossip::trust::{self, GraphLink, TrustConfig};
use mesh_store::{LinkQuery, MAX_LIST_LIMIT, SharedStore, StoreError};
use mesh_types::{AuditRecord, AuditTarget, Health, Link, Peer, PeerId, Transport, UnixMillis};
use rand::{Rng, RngExt as _};
use serde::{Deserialize, Serialize};

use crate::config::JobConfig;

/// Origins pushed at once.
const CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What one origin's push did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OriginReport {
    pub from: PeerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_id: Option<String>,
    pub eligible: usize,
    pub targets: Vec<AuditTarget>,
    /// Why the origin's worker could not be asked, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub ts: UnixMillis,
    /// Peers whose trust was recomputed (0 without seeds).
    pub trust_updated: usize,
    pub origins: Vec<OriginReport>,
    pub succeeded: usize,
    pub failed: usize,
}

impl RunReport {
    /// Every chosen target got the envelope and every origin could be asked.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.origins.iter().all(|o| o.error.is_none())
    }
}

/// What the job needs besides its configuration: the store, an HTTP client and the clock.
#[derive(Debug, Clone)]
pub struct Job {
    pub store: SharedStore,
    pub http: reqwest::Client,
    pub seeds: Vec<PeerId>,
    pub from: Vec<PeerId>,
    pub selection: SelectionConfig,
}

impl Job {
    pub fn new(config: &JobConfig, store: SharedStore) -> Result<Self, reqwest::Error> {
        Ok(Job {
            store,
            http: reqwest::Client::builder()
                .timeout(config.worker_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            seeds: config.seeds.clone(),
            from: config.from.clone(),
            selection: SelectionConfig {
                fanout: config.fanout,
                ..SelectionConfig::default()
            },
        })
    }

    /// Recomputes trust from the links that are not `down` and stores it; returns the peers
    /// updated. Seeds that are not registered are ignored (and said so).
    async fn update_trust(&self, peers: &[Peer], links: &[Link]) -> Result<usize, JobError> {
        if self.seeds.is_empty() {
            return Ok(0);
        }
        let known: HashMap<&PeerId, &Peer> = peers.iter().map(|p| (&p.id, p)).collect();
        let seeds: Vec<PeerId> = self
            .seeds
            .iter()
            .filter(|s| {
                let ok = known.contains_key(s);
                if !ok {
                    tracing::warn!(seed = %s, "trust seed is not a registered peer; ignored");
                }
                ok
            })
            .cloned()
            .collect();
        let graph: Vec<GraphLink> = links
            .iter()
            .map(|l| GraphLink {
                a: l.a.clone(),
                b: l.b.clone(),
                health: l.health,
                loss_pct: l.qos.loss_pct,
            })
            .collect();
        let scores = match trust::compute(&graph, &seeds, &TrustConfig::default()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("trust not recomputed: {e}");
                return Ok(0);
            }
        };
        let updates: Vec<(PeerId, f64)> = scores
            .scores
            .into_iter()
            .filter(|(p, _)| known.contains_key(p))
            .collect();
        self.store.set_trust(&updates).await?;
        tracing::info!(
            peers = updates.len(),
            iterations = scores.iterations,
            "trust recomputed"
        );
        Ok(updates.len())
    }

    /// One run at `now_ms`.
    pub async fn run_once(
        &self,
        now_ms: UnixMillis,
        rng: &mut impl Rng,
    ) -> Result<RunReport, JobError> {
        let run_id: u32 = rng.random();
        let peers = self.store.list_peers().await?;
        let links = self
            .store
            .list_links(&LinkQuery {
                limit: MAX_LIST_LIMIT,
                ..LinkQuery::default()
            })
            .await?;
        let trust_updated = self.update_trust(&peers, &links).await?;
        // Trust as just stored.
        let peers = if trust_updated > 0 {
            self.store.list_peers().await?
        } else {
            peers
        };
        // A peer is `down` when every link it has is down: nothing anywhere reaches it. A peer
        // whose link to this origin is down but which is up elsewhere is still chosen, and gets
        // the envelope over HTTPS.
        let mut health: HashMap<&PeerId, Health> = HashMap::new();
        for l in &links {
            for end in [&l.a, &l.b] {
                let best = health.entry(end).or_insert(Health::Down);
                if rank(l.health) > rank(*best) {
                    *best = l.health;
                }
            }
        }
        let stale_after = self.selection.stale_after_ms;
        let origins: Vec<&Peer> = peers
            .iter()
            .filter(|p| self.from.is_empty() || self.from.contains(&p.id))
            .filter(|p| p.endpoints.https.is_some())
            .filter(|p| now_ms.saturating_sub(p.last_seen_at) <= stale_after)
            .collect();
        let mut plans = Vec::new();
        for origin in origins {
            let candidates: Vec<Candidate> = peers
                .iter()
                .map(|p| Candidate {
                    id: p.id.clone(),
                    trust: p.trust,
                    last_seen_ms: p.last_seen_at,
                    link: health.get(&p.id).copied(),
                })
                .collect();
            let selection = select(&candidates, &origin.id, now_ms, &self.selection, rng);
            plans.push((origin.clone(), selection));
        }
        // Each origin's record is written as soon as its push is done: a run cut short keeps
        // the records of what it did.
        let mut pushes = futures_util::stream::iter(plans)
            .map(|(origin, selection)| async move {
                self.push(&origin, selection.chosen, selection.eligible)
                    .await
            })
            .buffer_unordered(CONCURRENCY);
        let mut reports = Vec::new();
        while let Some(r) = pushes.next().await {
            let record = AuditRecord {
                id: format!("{now_ms}-push-{}-{run_id:08x}", r.from),
                ts: now_ms,
                kind: "push".into(),
                from: r.from.clone(),
                recorded_by: None,
                fanout: r.targets.len() as u32,
                succeeded: r.targets.iter().filter(|t| t.ok).count() as u32,
                failed: r.targets.iter().filter(|t| !t.ok).count() as u32,
                envelope_id: r.envelope_id.clone(),
                targets: r.targets.clone(),
                reason: r.error.clone().or_else(|| {
                    (r.targets.is_empty()).then(|| format!("{} eligible peers", r.eligible))
                }),
            };
            if let Err(e) = self.store.append_audit(&record).await {
                // The run happened; a missing audit record is an error the caller must see.
                tracing::error!(from = %r.from, "gossip run not audited: {e}");
                return Err(e.into());
            }
            reports.push(r);
        }
        reports.sort_by(|a, b| a.from.cmp(&b.from));
        let succeeded = reports
            .iter()
            .flat_map(|r| &r.targets)
            .filter(|t| t.ok)
            .count();
        let failed = reports
            .iter()
            .flat_map(|r| &r.targets)
            .filter(|t| !t.ok)
            .count();
        Ok(RunReport {
            ts: now_ms,
            trust_updated,
            origins: reports,
            succeeded,
            failed,
        })
    }

    /// Asks `origin`'s worker to push to `targets`.
    async fn push(&self, origin: &Peer, targets: Vec<PeerId>, eligible: usize) -> OriginReport {
        let mut report = OriginReport {
            from: origin.id.clone(),
            envelope_id: None,
            eligible,
            targets: Vec::new(),
            error: None,
        };
        if targets.is_empty() {
            return report;
        }
        let failed = |targets: &[PeerId], why: String| {
            targets
                .iter()
                .map(|t| AuditTarget {
                    peer: t.clone(),
                    transport: Transport::None,
                    ok: false,
                    error: Some(why.clone()),
                    fallback: None,
                })
                .collect::<Vec<_>>()
        };
        let base = origin.endpoints.https.as_deref().unwrap_or_default();
        let url = format!("{}/gossip/push", base.trim_end_matches('/'));
        let answer = async {
            let res = self
                .http
                .post(&url)
                .json(&serde_json::json!({"targets": targets}))
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e}"))?;
            let status = res.status();
            let body: serde_json::Value = res
                .json()
                .await
                .map_err(|e| format!("POST {url}: reading the answer: {e}"))?;
            if !status.is_success() {
                return Err(format!(
                    "POST {url}: {} {} (HTTP {status})",
                    body["error"]["code"].as_str().unwrap_or("error"),
                    body["error"]["message"].as_str().unwrap_or("")
                ));
            }
            serde_json::from_value::<PushAnswer>(body)
                .map_err(|e| format!("POST {url}: unexpected answer: {e}"))
        }
        .await;
        match answer {
            Ok(a) => {
                report.envelope_id = Some(a.envelope_id);
                report.targets = a.targets;
            }
            Err(why) => {
                tracing::warn!(from = %origin.id, "{why}");
                report.targets = failed(&targets, why.clone());
                report.error = Some(why);
            }
        }
        report
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushAnswer {
    envelope_id: String,
    targets: Vec<AuditTarget>,
}

fn rank(h: Health) -> u8 {
    match h {
        Health::Down => 0,
        Health::Degraded => 1,
        Health::Up => 2,
    }
}

pub use mesh_service::now_ms;
