//! The operators' dashboard: its page and assets (embedded in the binary, served at `/`), the
//! overview it shows (`GET /api/mesh-rtc/summary`, `/gossip`) and the live feed that keeps it
//! current (`GET /api/mesh-rtc/events`, server-sent events).
//!
//! Workers write links to the store from other processes (or other machines, on Firestore), so
//! the proxy learns of changes by reading the store. One poller per proxy does that, only while
//! someone is watching, and every open feed shares its result: a hundred open dashboards cost
//! the store what one does.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use mesh_auth::{Caller, Role};
use mesh_service::ApiError;
use mesh_store::{LinkQuery, MAX_LIST_LIMIT};
use mesh_types::{AuditRecord, Health, Link, Peer, UnixMillis};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::Proxy;
use crate::query::{page_limit, query_of};

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../dashboard/dashboard.css");

/// The page may load only its own assets and call only its own origin: nothing is fetched from
/// a CDN, and an injected script could not `fetch` data to another site.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Links the overview carries (newest first); the counts on the cards use up to the store's
/// largest page.
const OVERVIEW_LINKS: usize = 500;
/// Audit records in the overview's recent-gossip table.
const OVERVIEW_GOSSIP: usize = 50;
/// File transfers in the overview (most recently active first).
const OVERVIEW_TRANSFERS: usize = 20;
const GOSSIP_DEFAULT_LIMIT: usize = 50;
const HOUR_MS: u64 = 3_600_000;

/// The page and its assets: public, like the health checks (the data behind them is not).
pub fn pages() -> Router {
    Router::new()
        .route("/", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/dashboard.js",
            get(|| asset(DASHBOARD_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/dashboard.css",
            get(|| asset(DASHBOARD_CSS, "text/css; charset=utf-8")),
        )
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // The assets change with the binary; a restarted proxy must not serve a stale page.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The data routes, behind the API's authentication (role `read`).
pub fn routes(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/api/mesh-rtc/summary", get(summary))
        .route("/api/mesh-rtc/gossip", get(gossip))
        .route("/api/mesh-rtc/events", get(events))
        .with_state(proxy)
}

/// Link counts by health.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkCounts {
    pub up: usize,
    pub degraded: usize,
    pub down: usize,
    /// The store's largest page was full: more links may exist than were counted.
    pub capped: bool,
}

/// Gossip pushes over the last hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GossipHour {
    /// Envelopes pushed (one per origin per run).
    pub envelopes: usize,
    /// Envelopes that reached a target.
    pub deliveries: u64,
    /// Deliveries that failed.
    pub failures: u64,
    /// Refusal and drop records (one per receiver that refused or dropped an envelope).
    pub refused: usize,
    /// The hour held more records than were read; the figures are lower bounds.
    pub capped: bool,
}

/// The newest gossip run: the push records it wrote (one per origin, all with the run's time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    pub ts: UnixMillis,
    pub origins: usize,
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub peers: usize,
    pub links: LinkCounts,
    pub gossip_last_hour: GossipHour,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
}

/// The cards' figures from what the store returned. `audit` is newest first, as the store
/// lists it; `audit_capped` says the store had more than it returned.
pub fn summarise(
    peers: &[Peer],
    links: &[Link],
    links_capped: bool,
    audit: &[AuditRecord],
    audit_capped: bool,
    now: UnixMillis,
) -> Summary {
    let mut counts = LinkCounts {
        capped: links_capped,
        ..LinkCounts::default()
    };
    for link in links {
        match link.health {
            Health::Up => counts.up += 1,
            Health::Degraded => counts.degraded += 1,
            Health::Down => counts.down += 1,
        }
    }
    let since = now.saturating_sub(HOUR_MS);
    let mut hour = GossipHour::default();
    let mut reached_older = false;
    for r in audit {
        if r.ts < since {
            reached_older = true;
            continue;
        }
        match r.kind.as_str() {
            "push" => {
                hour.envelopes += usize::from(r.envelope_id.is_some());
                hour.deliveries += u64::from(r.succeeded);
                hour.failures += u64::from(r.failed);
            }
            _ => hour.refused += 1,
        }
    }
    hour.capped = audit_capped && !reached_older;
    let last_run = audit.iter().find(|r| r.kind == "push").map(|newest| {
        let run: Vec<&AuditRecord> = audit
            .iter()
            .filter(|r| r.kind == "push" && r.ts == newest.ts)
            .collect();
        LastRun {
            ts: newest.ts,
            origins: run.len(),
            succeeded: run.iter().map(|r| u64::from(r.succeeded)).sum(),
            failed: run.iter().map(|r| u64::from(r.failed)).sum(),
        }
    });
    Summary {
        peers: peers.len(),
        links: counts,
        gossip_last_hour: hour,
        last_run,
    }
}

/// Everything the dashboard shows, as one document: the first thing a feed sends, and what it
/// sends again whenever any of it changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub summary: Summary,
    pub peers: Vec<Peer>,
    /// Newest first, at most [`OVERVIEW_LINKS`].
    pub links: Vec<Link>,
    /// Newest first, at most [`OVERVIEW_GOSSIP`].
    pub gossip: Vec<AuditRecord>,
    /// Most recently active first, at most [`OVERVIEW_TRANSFERS`]: the senders' records with
    /// bytes, rate and ETA.
    pub transfers: Vec<mesh_types::transfer::TransferRecord>,
    /// The last read of the store failed; the rest is what the previous read found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Proxy {
    /// Reads the overview from the store at `now`. With `hour`, the last hour's gossip figures
    /// are taken as given and only the newest audit records are read: the live feed re-reads
    /// the whole hour only now and then, since on Firestore every document read is billed.
    pub async fn overview(
        &self,
        now: UnixMillis,
        hour: Option<GossipHour>,
    ) -> Result<Overview, ApiError> {
        let peers = self.store.list_peers().await?;
        let all_links = self
            .store
            .list_links(&LinkQuery {
                limit: MAX_LIST_LIMIT,
                ..LinkQuery::default()
            })
            .await?;
        let audit_limit = if hour.is_some() {
            OVERVIEW_GOSSIP
        } else {
            MAX_LIST_LIMIT
        };
        let audit = self.store.list_audit(audit_limit).await?;
        let transfers = self.store.list_transfers(OVERVIEW_TRANSFERS).await?;
        let mut summary = summarise(
            &peers,
            &all_links,
            all_links.len() == MAX_LIST_LIMIT,
            &audit,
            audit.len() == MAX_LIST_LIMIT,
            now,
        );
        if let Some(hour) = hour {
            summary.gossip_last_hour = hour;
        }
        Ok(Overview {
            summary,
            peers,
            links: all_links.into_iter().take(OVERVIEW_LINKS).collect(),
            gossip: audit.into_iter().take(OVERVIEW_GOSSIP).collect(),
            transfers,
            error: None,
        })
    }
}

/// The shared live feed: the newest overview, re-read every `interval` while anyone listens.
#[derive(Debug)]
pub struct Live {
    interval: Duration,
    current: watch::Sender<Option<Arc<Overview>>>,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set on shutdown: open feeds end so that the server's graceful stop need not wait them out.
    closed: watch::Sender<bool>,
}

impl Live {
    pub fn new(interval: Duration) -> Self {
        Live {
            interval,
            current: watch::channel(None).0,
            poller: Mutex::new(None),
            closed: watch::channel(false).0,
        }
    }

    /// Ends every open feed (the proxy is stopping).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// A receiver of overviews; starts the poller if nobody was listening. The poller decides
    /// to stop under the same lock, so a feed never subscribes to a poller that is leaving.
    fn subscribe(proxy: &Arc<Proxy>) -> watch::Receiver<Option<Arc<Overview>>> {
        let live = &proxy.live;
        let mut poller = mesh_service::lock(&live.poller);
        let rx = live.current.subscribe();
        // A finished poller (it panicked: the store driver, say) is replaced, not waited on.
        if poller.as_ref().is_none_or(|p| p.is_finished()) {
            *poller = Some(tokio::spawn(poll(proxy.clone())));
        }
        rx
    }
}

/// How often (in polls) the live feed re-reads the whole last hour of audit records.
const HOUR_EVERY: u32 = 30;

/// Re-reads the overview until nobody listens; sends only what changed.
async fn poll(proxy: Arc<Proxy>) {
    let live = &proxy.live;
    let mut polls: u32 = 0;
    loop {
        let now = crate::now_ms();
        let hour = if polls.is_multiple_of(HOUR_EVERY) {
            None
        } else {
            live.current
                .borrow()
                .as_deref()
                .filter(|o| o.error.is_none())
                .map(|o| o.summary.gossip_last_hour.clone())
        };
        polls = polls.wrapping_add(1);
        let next = match proxy.overview(now, hour).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("dashboard overview not read: {}", e.message);
                let error = Some(format!("reading the store: {}", e.message));
                match live.current.borrow().as_deref() {
                    Some(previous) => Overview {
                        error,
                        ..previous.clone()
                    },
                    None => Overview {
                        summary: summarise(&[], &[], false, &[], false, now),
                        peers: Vec::new(),
                        links: Vec::new(),
                        gossip: Vec::new(),
                        transfers: Vec::new(),
                        error,
                    },
                }
            }
        };
        live.current.send_if_modified(|current| {
            if current.as_deref() == Some(&next) {
                false
            } else {
                *current = Some(Arc::new(next));
                true
            }
        });
        tokio::time::sleep(live.interval).await;
        let mut poller = mesh_service::lock(&live.poller);
        if live.current.receiver_count() == 0 || *live.closed.borrow() {
            // The next feed starts from a fresh read, not from what was true when this one left.
            live.current.send_replace(None);
            *poller = None;
            return;
        }
    }
}

/// `GET /api/mesh-rtc/summary`: the cards' figures.
async fn summary(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
) -> Result<axum::Json<Summary>, ApiError> {
    caller.require(Role::Read)?;
    Ok(axum::Json(
        proxy.overview(crate::now_ms(), None).await?.summary,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GossipQuery {
    limit: Option<usize>,
}

/// `GET /api/mesh-rtc/gossip?limit=`: the newest audit records (pushes, refusals, drops).
async fn gossip(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    query: Result<Query<GossipQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    caller.require(Role::Read)?;
    let q = query_of(query)?;
    let limit = page_limit(q.limit, GOSSIP_DEFAULT_LIMIT, MAX_LIST_LIMIT)?;
    let records = proxy.store.list_audit(limit).await?;
    Ok(axum::Json(
        serde_json::json!({ "count": records.len(), "records": records }),
    ))
}

/// `GET /api/mesh-rtc/events`: server-sent events. `overview` carries an [`Overview`] at once
/// and again on every change; comments keep idle connections open through proxies.
async fn events(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(Role::Read)?;
    if *proxy.live.closed.borrow() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the proxy is stopping",
        ));
    }
    let rx = Live::subscribe(&proxy);
    let closed = proxy.live.closed.subscribe();
    let stream = futures_util::stream::unfold(
        (rx, closed, true),
        |(mut rx, mut closed, first)| async move {
            loop {
                if !first || rx.borrow().is_none() {
                    tokio::select! {
                        changed = rx.changed() => changed.ok()?,
                        _ = closed.wait_for(|c| *c) => return None,
                    }
                }
                let overview = rx.borrow_and_update().clone();
                if let Some(overview) = overview {
                    let event = Event::default()
                        .event("overview")
                        .json_data(&*overview)
                        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
                    return Some((Ok(event), (rx, closed, false)));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_types::{LinkQos, PeerId};

    fn id(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    fn link(x: &str, y: &str, health: Health) -> Link {
        Link::new(&id(x), &id(y), health, LinkQos::default(), 1).unwrap()
    }

    fn record(ts: UnixMillis, kind: &str, from: &str, ok: u32, failed: u32) -> AuditRecord {
        AuditRecord {
            id: format!("{ts}-{kind}-{from}"),
            ts,
            kind: kind.into(),
            from: id(from),
            recorded_by: None,
            fanout: ok + failed,
            succeeded: ok,
            failed,
            envelope_id: (kind == "push").then(|| format!("env-{ts}-{from}")),
            targets: Vec::new(),
            reason: None,
        }
    }

    #[test]
    fn counts_links_by_health_and_gossip_within_the_hour() {
        let links = [
            link("a", "b", Health::Up),
            link("a", "c", Health::Up),
            link("b", "c", Health::Degraded),
            link("c", "d", Health::Down),
        ];
        let now = 10 * HOUR_MS;
        // Newest first, as the store lists them: the newest run had two origins.
        let audit = [
            record(now - 1_000, "push", "a", 2, 1),
            record(now - 1_000, "push", "b", 3, 0),
            record(now - 5_000, "reject", "c", 0, 0),
            record(now - HOUR_MS + 1, "push", "c", 1, 0),
            record(now - HOUR_MS - 1, "push", "a", 3, 0),
        ];
        let s = summarise(&[], &links, false, &audit, false, now);
        assert_eq!(
            s.links,
            LinkCounts {
                up: 2,
                degraded: 1,
                down: 1,
                capped: false
            }
        );
        assert_eq!(
            s.gossip_last_hour,
            GossipHour {
                envelopes: 3,
                deliveries: 6,
                failures: 1,
                refused: 1,
                capped: false
            }
        );
        assert_eq!(
            s.last_run,
            Some(LastRun {
                ts: now - 1_000,
                origins: 2,
                succeeded: 5,
                failed: 1
            })
        );
    }

    #[test]
    fn a_full_page_inside_the_hour_is_marked_as_a_lower_bound() {
        let now = 10 * HOUR_MS;
        let audit = [
            record(now - 10, "push", "a", 1, 0),
            record(now - 20, "push", "b", 1, 0),
        ];
        let s = summarise(&[], &[], true, &audit, true, now);
        assert!(s.gossip_last_hour.capped);
        assert!(s.links.capped);
        // A full page that reaches past the hour holds the whole hour.
        let older = [
            record(now - 10, "push", "a", 1, 0),
            record(now - 2 * HOUR_MS, "push", "b", 1, 0),
        ];
        assert!(
            !summarise(&[], &[], false, &older, true, now)
                .gossip_last_hour
                .capped
        );
    }

    #[test]
    fn no_runs_no_last_run() {
        let audit = [record(5, "reject", "a", 0, 0)];
        let s = summarise(&[], &[], false, &audit, false, 10);
        assert_eq!(s.last_run, None);
        assert_eq!(s.gossip_last_hour.refused, 1);
    }
}
