//! Talking to a signaling proxy: where it is and which token to present (flags, then the
//! environment, then what a running `meshctl up` left in the data directory), and its JSON
//! errors turned into messages that say what failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The proxy `meshctl up` listens on unless told otherwise.
pub const DEFAULT_PROXY: &str = "http://127.0.0.1:8480";
/// What `meshctl up` writes while it runs, so that the other commands find it.
pub const STATE_FILE: &str = "up.json";
/// The operator token `meshctl up` gives its proxy (readable by its owner only).
pub const TOKEN_FILE: &str = "operator.token";

/// Options shared by every command that speaks to a proxy.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// The signaling proxy's base URL [default: the proxy of the `meshctl up` running on
    /// --data-dir, else http://127.0.0.1:8480].
    #[arg(long, env = "MESH_PROXY_URL")]
    pub proxy: Option<String>,
    /// An API token of the proxy [default: for the proxy of the `meshctl up` running on
    /// --data-dir, its operator token].
    #[arg(long, env = "MESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The local mesh's data directory (where `meshctl up` keeps its state).
    #[arg(long, env = "MESH_DATA_DIR", default_value = ".meshrtc")]
    pub data_dir: PathBuf,
}

/// What `meshctl up` records about the mesh it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpState {
    pub pid: u32,
    pub proxy: String,
    pub dashboard: String,
    pub peers: Vec<UpPeer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpPeer {
    pub id: String,
    pub url: String,
}

pub fn read_state(data_dir: &Path) -> Option<UpState> {
    let text = std::fs::read_to_string(data_dir.join(STATE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Times a request over the proxy's rate limit is asked again, each after its `Retry-After`.
const RATE_LIMIT_RETRIES: u32 = 5;
/// The longest `Retry-After` waited for.
const RETRY_AFTER_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// A `Retry-After` in seconds (the only form the proxy sends), capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<std::time::Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs(secs.max(1)).min(RETRY_AFTER_MAX))
}

/// A proxy's refusal, as its JSON error says it.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}{}", step_note(.details))]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Option<Value>,
}

fn step_note(details: &Option<Value>) -> String {
    match details.as_ref().and_then(|d| d["step"].as_str()) {
        Some(step) => format!(" (failed at step {step})"),
        None => String::new(),
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(remote: &Remote) -> anyhow::Result<Self> {
        let state = read_state(&remote.data_dir);
        let local = state
            .as_ref()
            .map(|s| s.proxy.trim_end_matches('/').to_string());
        let base = remote
            .proxy
            .clone()
            .or_else(|| local.clone())
            .unwrap_or_else(|| DEFAULT_PROXY.to_string());
        let base = base.trim_end_matches('/').to_string();
        // The local mesh's operator token goes only to the local mesh's proxy: never to a proxy
        // named on the command line that happens to be another one.
        let token = match &remote.token {
            Some(t) => Some(t.clone()),
            None if local.as_deref() == Some(base.as_str()) => {
                std::fs::read_to_string(remote.data_dir.join(TOKEN_FILE))
                    .ok()
                    .map(|t| t.trim().to_string())
            }
            None => None,
        };
        Ok(Client {
            base,
            token,
            http: reqwest::Client::builder()
                // `connect` waits up to the proxy's own time-out for a link to come up.
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.get_with(path, &[]).await
    }

    /// `GET path?query`, the query's values encoded as URLs need.
    pub async fn get_with(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .with_context(|| format!("{}{path} is not a URL", self.base))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.send(self.http.get(url)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut attempt = 0;
        let response = loop {
            let this = request
                .try_clone()
                .context("a request that cannot be retried")?;
            let response = this.send().await.map_err(|e| {
                if e.is_connect() {
                    anyhow::anyhow!(
                        "cannot reach the proxy at {} (is `meshctl up` running? --proxy names \
                         another): {e}",
                        self.base
                    )
                } else {
                    anyhow::anyhow!("calling the proxy at {}: {e}", self.base)
                }
            })?;
            // Over the proxy's rate limit: wait as long as it says and ask again (a 20-peer
            // `up` connects 190 pairs through one credential).
            let wait = (response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS)
                .then(|| retry_after(response.headers()))
                .flatten();
            match wait {
                Some(wait) if attempt < RATE_LIMIT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                _ => break response,
            }
        };
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("reading the proxy's answer ({status})"))?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let error = &value["error"];
        let mut failure = ApiFailure {
            status: status.as_u16(),
            code: error["code"].as_str().unwrap_or("http_error").to_string(),
            message: error["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
            details: error.get("details").cloned(),
        };
        if failure.status == 401 && self.token.is_none() {
            failure.message.push_str(
                " (no token: pass --token or MESH_TOKEN; the token of a running `meshctl up` is \
                 used only for its own proxy)",
            );
        }
        Err(failure.into())
    }
}
