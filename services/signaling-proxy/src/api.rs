//! The proxy's HTTP API: the peer registry (`/api/mesh/peers`) and brokering between workers
//! (`/api/mesh-rtc/...`). Handlers check the caller's role, validate, and call the store or a
//! worker; every failure is a JSON error naming what failed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use mesh_service::{ApiError, ApiJson};
use mesh_store::{ErrorKind, LinkQuery, PeerUpsert};
use mesh_types::signing::Signed as _;
use mesh_types::{Answer, Health, Link, LinkId, Offer, Peer, PeerId, PeerRegistration};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Proxy;
use crate::peers;
use crate::query::{page_limit, query_of};
use crate::upstream::Step;
use mesh_auth::{Caller, Role};

type ApiResult<T> = Result<T, ApiError>;

/// Default and largest page of `GET /api/mesh-rtc/links`.
const LINKS_DEFAULT_LIMIT: usize = 100;
const LINKS_MAX_LIMIT: usize = 1000;

pub fn routes(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/api/mesh/peers", get(list_peers).post(register))
        .route("/api/mesh/peers/key", post(replace_key))
        .route("/api/mesh-rtc/dial", post(dial))
        .route("/api/mesh-rtc/offer", post(offer))
        .route("/api/mesh-rtc/answer", post(answer))
        .route("/api/mesh-rtc/connect", post(connect))
        .route("/api/mesh-rtc/links", get(links))
        .route(
            "/api/mesh-rtc/transfers",
            get(list_transfers).post(start_transfer),
        )
        .with_state(proxy)
}

/// `POST /api/mesh/peers`: a registration signed by the key it registers.
async fn register(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    ApiJson(reg): ApiJson<PeerRegistration>,
) -> ApiResult<(StatusCode, axum::Json<Peer>)> {
    caller.require(Role::Peer)?;
    peers::check_not_reserved(&reg.id)?;
    peers::check_allowed(&proxy.allowlist, &reg.id, &reg.pub_key)?;
    check_endpoint(reg.endpoints.https.as_deref())?;
    // Self-signed: proves the registrant holds the key; the window and replay cache stop an old
    // registration being sent again to roll endpoints back.
    proxy.verify(&reg, &reg.pub_key)?;
    // A failed read refuses nothing: the upsert below meets the same store and reports its
    // failure, or a key bound meanwhile, itself.
    let existing = peers::find(&proxy.store, &reg.id).await;
    let created = matches!(existing, Ok(None));
    if let Ok(Some(p)) = &existing
        && p.pub_key != reg.pub_key
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "key_mismatch",
            format!(
                "peer {} is bound to key {}; this registration is signed by {} (an operator can \
                 replace the key: POST /api/mesh/peers/key)",
                reg.id,
                p.pub_key.key_id(),
                reg.pub_key.key_id()
            ),
        ));
    }
    let peer = proxy
        .store
        .upsert_peer(&PeerUpsert {
            id: reg.id.clone(),
            pub_key: reg.pub_key,
            region: reg.region.clone(),
            endpoints: reg.endpoints.clone(),
            seen_at: crate::now_ms(),
            initial_trust: mesh_types::peer::INITIAL_TRUST,
        })
        .await
        .map_err(|e| match e.kind() {
            // Lost a race with a registration of another key.
            ErrorKind::Conflict => {
                ApiError::new(StatusCode::CONFLICT, "key_mismatch", e.to_string())
            }
            _ => e.into(),
        })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(peer)))
}

/// A worker URL the proxy will call: `http` or `https`, a host, no credentials, query or
/// fragment (the proxy appends its own paths).
fn check_endpoint(url: Option<&str>) -> ApiResult<()> {
    let Some(url) = url else { return Ok(()) };
    let bad = |why: &str| {
        Err(ApiError::bad_request(
            "invalid_input",
            format!("endpoints.https {url:?}: {why}"),
        ))
    };
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return bad("not a URL");
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return bad("must be http:// or https://");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return bad("needs a host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return bad("must not carry credentials");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return bad("must not have a query or fragment");
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyReplacement {
    id: PeerId,
    pub_key: mesh_types::PublicKey,
}

/// `POST /api/mesh/peers/key`: an operator binds a peer to a new key (lost or rotated key).
async fn replace_key(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    ApiJson(body): ApiJson<KeyReplacement>,
) -> ApiResult<axum::Json<Peer>> {
    let who = caller.require(Role::Operator)?;
    peers::lookup(&proxy.store, &body.id).await?;
    let updated = proxy
        .store
        .replace_peer_key(&body.id, &body.pub_key)
        .await?;
    tracing::info!(peer = %body.id, kid = %body.pub_key.key_id(), by = %who.name, "peer key replaced");
    Ok(axum::Json(updated))
}

async fn list_peers(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
) -> ApiResult<axum::Json<Value>> {
    caller.require(Role::Read)?;
    let peers = proxy.store.list_peers().await?;
    Ok(axum::Json(json!({ "count": peers.len(), "peers": peers })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DialRequest {
    from: PeerId,
    peer_to: PeerId,
}

/// `POST /api/mesh-rtc/dial`: asks `from`'s worker for a signed offer to `peerTo`. Operators
/// only: a dial speaks for `from`, and a `peer` credential is not tied to one peer.
async fn dial(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    ApiJson(req): ApiJson<DialRequest>,
) -> ApiResult<axum::Json<Offer>> {
    caller.require(Role::Operator)?;
    Ok(axum::Json(proxy.dial(&req.from, &req.peer_to).await?))
}

/// `POST /api/mesh-rtc/offer`: forwards a signed offer to its addressee's worker.
async fn offer(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    ApiJson(offer): ApiJson<Offer>,
) -> ApiResult<axum::Json<Answer>> {
    caller.require(Role::Peer)?;
    let answer = proxy.forward_offer(&offer).await?;
    // Offers are rare (a new or rejoined link) and worth seeing in the log.
    tracing::info!(from = %offer.peer_from, to = %offer.peer_to, "offer relayed");
    Ok(axum::Json(answer))
}

/// `POST /api/mesh-rtc/answer`: forwards a signed answer to the worker that dialled.
async fn answer(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    ApiJson(answer): ApiJson<Answer>,
) -> ApiResult<axum::Json<Value>> {
    caller.require(Role::Peer)?;
    proxy.forward_answer(&answer).await?;
    Ok(axum::Json(json!({ "ok": true })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectRequest {
    a: PeerId,
    b: PeerId,
}

/// `POST /api/mesh-rtc/connect`: the whole handshake, then a bounded wait until the link is up.
async fn connect(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    ApiJson(req): ApiJson<ConnectRequest>,
) -> ApiResult<axum::Json<Link>> {
    caller.require(Role::Operator)?;
    if req.a == req.b {
        return Err(ApiError::bad_request(
            "invalid_input",
            "a peer cannot connect to itself",
        ));
    }
    let step = Mutex::new(Step::Dial);
    let deadline = proxy.connect_timeout;
    let outcome = tokio::time::timeout(deadline, proxy.connect(&req.a, &req.b, &step)).await;
    let reached = *mesh_service::lock(&step);
    let result = match outcome {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "connect_timeout",
            match reached {
                Step::WaitUp => format!(
                    "the handshake finished but the link between {} and {} was not up within {} s",
                    req.a,
                    req.b,
                    deadline.as_secs()
                ),
                step => format!(
                    "connecting {} and {}: the {} step had not finished after {} s",
                    req.a,
                    req.b,
                    step.as_str(),
                    deadline.as_secs()
                ),
            },
        )
        .with_details(json!({ "step": reached.as_str() }))),
    };
    if result.is_err() && reached != Step::Dial {
        // `a` holds a dialled connection that will not complete: hang it up now rather than
        // leave it to the dial time-out (a retry would meet `link_exists` meanwhile).
        let proxy = proxy.clone();
        tokio::spawn(async move {
            if let Ok(a) = peers::lookup(&proxy.store, &req.a).await {
                proxy.upstream.hang_up(&a, &req.b).await;
            }
        });
    }
    crate::metrics::connect_outcome(match &result {
        Ok(_) => "ok",
        Err(e) => &e.code,
    });
    result.map(axum::Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksQuery {
    peer: Option<PeerId>,
    health: Option<Health>,
    limit: Option<usize>,
}

/// `GET /api/mesh-rtc/links?peer=&health=&limit=`: newest first.
async fn links(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    query: Result<Query<LinksQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<Value>> {
    caller.require(Role::Read)?;
    let q = query_of(query)?;
    let limit = page_limit(q.limit, LINKS_DEFAULT_LIMIT, LINKS_MAX_LIMIT)?;
    let links = proxy
        .store
        .list_links(&LinkQuery {
            peer: q.peer,
            health: q.health,
            limit,
        })
        .await?;
    Ok(axum::Json(json!({ "count": links.len(), "links": links })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    from: PeerId,
    to: PeerId,
    /// On `from`'s machine, inside its worker's send root.
    path: String,
}

/// `POST /api/mesh-rtc/transfers`: asks `from`'s worker to send a file to `to`; 202 with the
/// transfer. Operators only: it reads a file on `from`'s machine.
async fn start_transfer(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    ApiJson(req): ApiJson<TransferRequest>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    caller.require(Role::Operator)?;
    let from = peers::lookup(&proxy.store, &req.from).await?;
    peers::lookup(&proxy.store, &req.to).await?;
    let started: Value = proxy
        .upstream
        .post(
            &from,
            Step::Transfer,
            &json!({ "to": req.to, "path": req.path }),
        )
        .await?;
    tracing::info!(from = %req.from, to = %req.to, id = %started["id"], "file transfer started");
    Ok((StatusCode::ACCEPTED, axum::Json(started)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransfersQuery {
    limit: Option<usize>,
}

/// `GET /api/mesh-rtc/transfers?limit=`: the senders' records, most recently updated first.
async fn list_transfers(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    query: Result<Query<TransfersQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<Value>> {
    caller.require(Role::Read)?;
    let limit = page_limit(query_of(query)?.limit, 50, 500)?;
    let transfers = proxy.store.list_transfers(limit).await?;
    Ok(axum::Json(
        json!({ "count": transfers.len(), "transfers": transfers }),
    ))
}

impl Proxy {
    pub async fn dial(&self, from: &PeerId, to: &PeerId) -> ApiResult<Offer> {
        let dialler = peers::lookup(&self.store, from).await?;
        peers::lookup(&self.store, to).await?;
        self.upstream
            .post(&dialler, Step::Dial, &json!({ "peerTo": to }))
            .await
    }

    pub async fn forward_offer(&self, offer: &Offer) -> ApiResult<Answer> {
        // The addressee's worker verifies the signature itself; checking here too refuses a
        // forgery before it costs a worker anything.
        let signer = peers::lookup(&self.store, offer.signer()).await?;
        mesh_types::signing::verify_signature(offer, &signer.pub_key)?;
        let to = peers::lookup(&self.store, &offer.peer_to).await?;
        self.upstream.post(&to, Step::Offer, offer).await
    }

    pub async fn forward_answer(&self, answer: &Answer) -> ApiResult<Value> {
        let signer = peers::lookup(&self.store, answer.signer()).await?;
        mesh_types::signing::verify_signature(answer, &signer.pub_key)?;
        let to = peers::lookup(&self.store, &answer.peer_to).await?;
        self.upstream.post(&to, Step::Answer, answer).await
    }

    async fn connect(&self, a: &PeerId, b: &PeerId, step: &Mutex<Step>) -> ApiResult<Link> {
        let at = |s: Step| *mesh_service::lock(step) = s;
        let offer = self.dial(a, b).await?;
        at(Step::Offer);
        let answer = self.forward_offer(&offer).await?;
        at(Step::Answer);
        self.forward_answer(&answer).await?;
        at(Step::WaitUp);
        // Ask the dialler's worker, not the store: its live view says whether *this* connection
        // is up, with no clocks of two machines to compare. Then return the stored link, which
        // the worker writes the moment the state changes.
        let dialler = peers::lookup(&self.store, a).await?;
        let id = LinkId::between(a, b)
            .map_err(|e| ApiError::bad_request("invalid_input", e.to_string()))?;
        let mut pause = Duration::from_millis(20);
        loop {
            let view = self.upstream.links(&dialler).await?;
            let up = view["links"].as_array().is_some_and(|links| {
                links.iter().any(|l| {
                    l["peer"] == b.as_str() && l["state"] == "connected" && l["health"] == "up"
                })
            });
            if up {
                match self.store.get_link(&id).await {
                    Ok(link) if link.health == Health::Up => return Ok(link),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}
