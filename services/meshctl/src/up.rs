//! `meshctl up`: a whole mesh on this machine in one process. It keeps an identity per peer in
//! the data directory, runs the signaling proxy, one webrtc-worker per peer and the gossip
//! schedule against the embedded store there (the same code the services run, through their
//! `run` functions), connects every pair through the proxy's `connect` as an operator would,
//! then shows the links live until Ctrl-C.
//!
//! Stopping is ordered so the data directory is left consistent: the gossip run under way
//! finishes (its audit records are written), the workers hang up and write their links `down`,
//! then the proxy stops and the store is closed. A second `up` on the directory resumes the
//! same peers with the same keys; a lock keeps two from sharing it at once.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use gossip_push::{Job, JobConfig, RunReport, Runner};
use mesh_store::{LinkQuery, SharedStore, StoreConfig};
use mesh_types::{Health, Link, PeerId};
use serde_json::json;
use signaling_proxy::ProxyConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use webrtc_worker::WorkerConfig;

use crate::client::{Client, Remote, STATE_FILE, TOKEN_FILE, UpPeer, UpState};
use crate::commands::links_table;
use crate::keys;

/// `meshctl up`'s options (see `--help`).
#[derive(Debug, Clone)]
pub struct Options {
    pub peers: u16,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub gossip_every: Duration,
    pub qos_every: Duration,
    pub region: String,
}

/// How long the services get to come up, and a gossip run to finish when stopping.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const GOSSIP_FINISH_TIMEOUT: Duration = Duration::from_secs(25);
/// Pairs connected at once while the mesh forms.
const CONNECT_CONCURRENCY: usize = 4;
const LOG_FILE: &str = "up.log";
/// Links the live table shows on a terminal.
const LIVE_ROWS: usize = 20;
const LOCK_FILE: &str = "up.lock";

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut out = Out::new();
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let _lock = lock_dir(&opts.data_dir)?;
    let log_path = opts.data_dir.join(LOG_FILE);
    init_logging(&log_path)?;
    let token = operator_token(&opts.data_dir)?;
    let store_spec = format!("embedded:{}", opts.data_dir.join("store").display());

    out.line(&format!(
        "meshrtc: a local mesh of {} peers in {} (logs: {})",
        opts.peers,
        opts.data_dir.display(),
        log_path.display()
    ));
    let mut identities = Vec::new();
    for n in 1..=opts.peers {
        let id = PeerId::new(format!("peer-{n}"))?;
        let path = opts.data_dir.join("keys").join(format!("{id}.seed"));
        let (identity, created) = keys::load_or_create(&id, &path)?;
        out.line(&format!(
            "  key   {id:<10} {}  {}",
            identity.public_key().key_id(),
            if created { "new" } else { "resumed" }
        ));
        identities.push((id, path));
    }

    // Everything below runs until told to stop; the signal is watched from here on so that
    // Ctrl-C while the mesh forms stops it as cleanly as Ctrl-C later.
    let mut signal = pin!(webrtc_worker::shutdown_signal());
    let (stop_workers, _) = watch::channel(false);
    let (stop_proxy, _) = watch::channel(false);
    let mut workers = JoinSet::new();
    let mut proxy_task = JoinSet::new();

    let listener = TcpListener::bind(opts.listen).await.with_context(|| {
        format!(
            "listening on {} (another `meshctl up`? --listen 127.0.0.1:0 picks a free port)",
            opts.listen
        )
    })?;
    let proxy_url = format!("http://{}", listener.local_addr()?);
    let tokens = crate::token::entry("meshctl-up", "operator", &token);
    let proxy_config = ProxyConfig::from_source(&HashMap::from([
        ("MESH_STORE", store_spec.as_str()),
        ("MESH_API_TOKENS", tokens.as_str()),
    ]))
    .context("proxy configuration")?;
    proxy_task.spawn(named(
        "signaling-proxy".into(),
        signaling_proxy::run(proxy_config, listener, stopped(&stop_proxy)),
    ));

    let qos = opts.qos_every.as_secs().to_string();
    // `meshctl send` reads files from where `up` was started: the operator's own directory.
    let send_root = std::env::current_dir()
        .context("the working directory")?
        .display()
        .to_string();
    let mut peers = Vec::new();
    for (id, key_path) in &identities {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let key_path = key_path.display().to_string();
        let files_dir = opts.data_dir.join("files").join(id.as_str());
        let files_dir = files_dir.display().to_string();
        let config = WorkerConfig::from_source(&HashMap::from([
            ("MESH_FILES_DIR", files_dir.as_str()),
            ("MESH_SEND_ROOT", send_root.as_str()),
            ("PEER_ID", id.as_str()),
            ("MESH_SIGNING_KEY_FILE", key_path.as_str()),
            ("MESH_STORE", store_spec.as_str()),
            // Loopback only: the mesh is on this machine and announces nothing else.
            ("MESH_UDP_ADDRS", "127.0.0.1:0"),
            ("QOS_INTERVAL_SECS", qos.as_str()),
            ("MESH_REGION", opts.region.as_str()),
            ("MESH_PUBLIC_URL", url.as_str()),
        ]))
        .with_context(|| format!("configuration of {id}'s worker"))?;
        workers.spawn(named(
            format!("worker {id}"),
            webrtc_worker::run(config, listener, stopped(&stop_workers)),
        ));
        peers.push(UpPeer {
            id: id.to_string(),
            url,
        });
    }

    let dashboard = format!("{proxy_url}/#token={token}");
    let state = UpState {
        pid: std::process::id(),
        proxy: proxy_url.clone(),
        dashboard: dashboard.clone(),
        peers: peers.clone(),
    };
    let client = Client::new(&Remote {
        proxy: Some(proxy_url.clone()),
        token: Some(token.clone()),
        data_dir: opts.data_dir.clone(),
    })?;

    // Form the mesh; a service that dies meanwhile, or Ctrl-C, cuts it short.
    let forming = async {
        wait_ready(&client, &peers, &mut out).await?;
        write_state(&opts.data_dir, &state)?;
        connect_all(&client, &identities, &mut out).await;
        anyhow::Ok(())
    };
    let formed = tokio::select! {
        r = forming => Some(r),
        () = &mut signal => None,
        Some(ended) = workers.join_next() => Some(Err(ended_early(ended))),
        Some(ended) = proxy_task.join_next() => Some(Err(ended_early(ended))),
    };
    let formed_ok = matches!(formed, Some(Ok(())));
    let mut forced = None;
    if !formed_ok {
        forced = Some(force_on_next_signal());
    }
    let mut failure = match formed {
        Some(Ok(())) => None,
        Some(Err(e)) => Some(e),
        None => {
            out.line("Interrupted while the mesh was forming.");
            None
        }
    };

    if formed_ok {
        out.line("");
        out.line(&format!("Dashboard: {dashboard}"));
        out.line(&format!(
            "In another terminal: cargo run -p meshctl -- links (or peers, gossip, connect A B) \
             finds this mesh through {}",
            opts.data_dir.join(STATE_FILE).display()
        ));
        out.line(&format!(
            "Gossip runs every {} s. Ctrl-C stops the mesh.",
            opts.gossip_every.as_secs()
        ));
        out.line("");
        let store = mesh_store::open(&StoreConfig::Embedded {
            dir: opts.data_dir.join("store"),
        })
        .await?;
        let seeds = identities
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let job_config = JobConfig::from_source(&HashMap::from([
            ("MESH_STORE", store_spec.as_str()),
            ("MESH_TRUST_SEEDS", seeds.as_str()),
        ]))
        .context("gossip job configuration")?;
        let runner = Arc::new(Runner::new(Job::new(&job_config, store.clone())?));
        let mut view = LiveView::new(out, proxy_url.clone(), opts.peers);
        let mut gossip_every = tokio::time::interval(opts.gossip_every);
        let mut redraw = tokio::time::interval(Duration::from_secs(1));
        let mut gossip: Option<tokio::task::JoinHandle<Result<RunReport, mesh_service::ApiError>>> =
            None;
        loop {
            tokio::select! {
                () = &mut signal => break,
                Some(ended) = workers.join_next() => { failure = Some(ended_early(ended)); break }
                Some(ended) = proxy_task.join_next() => { failure = Some(ended_early(ended)); break }
                _ = gossip_every.tick() => {
                    if gossip.as_ref().is_none_or(|g| g.is_finished()) {
                        if let Some(done) = gossip.take() {
                            view.gossip_done(done.await);
                        }
                        let runner = runner.clone();
                        gossip = Some(tokio::spawn(async move { runner.run().await }));
                    }
                }
                _ = redraw.tick() => {
                    if gossip.as_ref().is_some_and(|g| g.is_finished())
                        && let Some(done) = gossip.take()
                    {
                        view.gossip_done(done.await);
                    }
                    view.refresh(&store).await;
                }
            }
        }
        forced = Some(force_on_next_signal());
        out = view.finish();
        if let Some(mut run) = gossip.take()
            && !run.is_finished()
        {
            out.line("Stopping: letting the gossip run under way finish (Ctrl-C again to force)…");
            if tokio::time::timeout(GOSSIP_FINISH_TIMEOUT, &mut run)
                .await
                .is_err()
            {
                // Dropping a handle would leave the run going while the workers stop.
                run.abort();
                let _ = run.await;
                out.line("  the gossip run did not finish in time; it was cut short");
            }
        }
    }

    // Stop in order: workers hang up (writing their links down), then the proxy.
    out.line("Stopping: hanging up links and stopping the workers (Ctrl-C again to force)…");
    stop_workers.send_replace(true);
    while let Some(ended) = workers.join_next().await {
        if let Err(e) = flatten(ended) {
            out.line(&format!("  {e:#}"));
        }
    }
    stop_proxy.send_replace(true);
    while let Some(ended) = proxy_task.join_next().await {
        if let Err(e) = flatten(ended) {
            out.line(&format!("  {e:#}"));
        }
    }
    if let Some(forced) = forced {
        forced.abort();
    }
    let _ = std::fs::remove_file(opts.data_dir.join(STATE_FILE));
    match failure {
        Some(e) => Err(e),
        None => {
            out.line(&format!(
                "Stopped. `meshctl up` on {} resumes the same peers.",
                opts.data_dir.display()
            ));
            Ok(())
        }
    }
}

/// Output for people: lines, and (on a terminal) a block redrawn in place.
#[derive(Debug)]
struct Out {
    tty: bool,
}

impl Out {
    fn new() -> Self {
        Out {
            tty: std::io::stdout().is_terminal(),
        }
    }

    fn line(&mut self, text: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{text}");
        let _ = o.flush();
    }
}

/// The live part of the terminal: the links table, redrawn in place on a terminal; otherwise
/// (a pipe, a log) one line per change, so the output stays readable.
#[derive(Debug)]
struct LiveView {
    out: Out,
    proxy: String,
    peers: u16,
    drawn_lines: usize,
    last_health: BTreeMap<String, Health>,
    last_run: Option<String>,
}

impl LiveView {
    fn new(out: Out, proxy: String, peers: u16) -> Self {
        LiveView {
            out,
            proxy,
            peers,
            drawn_lines: 0,
            last_health: BTreeMap::new(),
            last_run: None,
        }
    }

    fn gossip_done(
        &mut self,
        done: Result<Result<RunReport, mesh_service::ApiError>, tokio::task::JoinError>,
    ) {
        let text = match done {
            Ok(Ok(r)) => format!(
                "gossip run: {} origins, {} delivered, {} failed, trust updated for {}",
                r.origins.len(),
                r.succeeded,
                r.failed,
                r.trust_updated
            ),
            Ok(Err(e)) => format!("gossip run failed: {} ({})", e.message, e.code),
            Err(e) => format!("gossip run failed: {e}"),
        };
        if !self.out.tty {
            self.out.line(&text);
        }
        self.last_run = Some(text);
    }

    async fn refresh(&mut self, store: &SharedStore) {
        let links = match store
            .list_links(&LinkQuery {
                limit: mesh_store::MAX_LIST_LIMIT,
                ..LinkQuery::default()
            })
            .await
        {
            Ok(mut links) => {
                links.sort_by(|x, y| x.id.as_str().cmp(y.id.as_str()));
                links
            }
            Err(e) => {
                self.out.line(&format!("reading links: {e}"));
                return;
            }
        };
        let now = mesh_service::now_ms();
        if self.out.tty {
            self.draw(&links, now);
        } else {
            for l in &links {
                if self.last_health.get(l.id.as_str()) != Some(&l.health) {
                    self.out
                        .line(&format!("link {} ↔ {}: {}", l.a, l.b, l.health.as_str()));
                }
            }
        }
        self.last_health = links.iter().map(|l| (l.id.to_string(), l.health)).collect();
    }

    fn draw(&mut self, links: &[Link], now: u64) {
        let up = links.iter().filter(|l| l.health == Health::Up).count();
        let mut block = format!(
            "{} peers · {} of {} links up · proxy {}\n\n",
            self.peers,
            up,
            links.len(),
            self.proxy
        );
        // Redrawing in place works only while the block fits the screen: show the links that
        // need attention first, and at most a screenful.
        let mut shown: Vec<Link> = links.to_vec();
        shown.sort_by_key(|l| (l.health == Health::Up, l.id.to_string()));
        let hidden = shown.len().saturating_sub(LIVE_ROWS);
        shown.truncate(LIVE_ROWS);
        block.push_str(&links_table(&shown, now));
        if hidden > 0 {
            block.push_str(&format!(
                "… and {hidden} more up (meshctl links lists them all)\n"
            ));
        }
        block.push('\n');
        block.push_str(
            self.last_run
                .as_deref()
                .unwrap_or("gossip: first run pending"),
        );
        block.push('\n');
        let mut o = std::io::stdout().lock();
        if self.drawn_lines > 0 {
            // Back to the top of the previous block and clear to the end of the screen.
            let _ = write!(o, "\x1b[{}F\x1b[J", self.drawn_lines);
        }
        let _ = o.write_all(block.as_bytes());
        let _ = o.flush();
        self.drawn_lines = block.lines().count();
    }

    fn finish(self) -> Out {
        self.out
    }
}

/// Waits until the proxy and every worker answer `/readyz` (a worker answers once it has
/// registered itself).
async fn wait_ready(client: &Client, peers: &[UpPeer], out: &mut Out) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut urls = vec![("signaling-proxy".to_string(), client.base.clone())];
    urls.extend(
        peers
            .iter()
            .map(|p| (format!("worker {}", p.id), p.url.clone())),
    );
    let checks = urls.into_iter().map(|(name, url)| {
        let http = http.clone();
        async move {
            let ready = async {
                loop {
                    if let Ok(r) = http.get(format!("{url}/readyz")).send().await
                        && r.status().is_success()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::time::timeout(READY_TIMEOUT, ready)
                .await
                .map(|()| (name.clone(), url.clone()))
                .map_err(|_| {
                    anyhow::anyhow!("{name} at {url} was not ready within {READY_TIMEOUT:?}")
                })
        }
    });
    for ready in futures_util::future::join_all(checks).await {
        let (name, url) = ready?;
        out.line(&format!("  up    {name:<18} {url}"));
    }
    Ok(())
}

/// Connects every pair through the proxy, a few at a time, reporting each as it finishes. A
/// pair that fails is reported and left: the table shows it, and `meshctl connect` retries it.
// A driver: it reads the clock to say how long each connect took.
#[allow(clippy::disallowed_methods)]
async fn connect_all(client: &Client, identities: &[(PeerId, PathBuf)], out: &mut Out) {
    let mut pairs = Vec::new();
    for (i, (a, _)) in identities.iter().enumerate() {
        for (b, _) in &identities[i + 1..] {
            pairs.push((a.clone(), b.clone()));
        }
    }
    if pairs.is_empty() {
        return;
    }
    out.line(&format!(
        "Connecting {} pairs through the proxy (real DataChannels)…",
        pairs.len()
    ));
    let total = pairs.len();
    let mut done = 0;
    let mut attempts = futures_util::stream::iter(pairs)
        .map(|(a, b)| async move {
            let started = tokio::time::Instant::now();
            let result = client
                .post("/api/mesh-rtc/connect", &json!({ "a": a, "b": b }))
                .await;
            (a, b, result, started.elapsed())
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    while let Some((a, b, result, took)) = attempts.next().await {
        done += 1;
        let what = match result {
            Ok(link) => format!(
                "{} in {:.1} s",
                link["health"].as_str().unwrap_or("?"),
                took.as_secs_f64()
            ),
            // A resumed peer redials its recent links by itself and may have got there first.
            Err(e)
                if e.downcast_ref::<crate::client::ApiFailure>()
                    .is_some_and(|f| f.code == "link_exists") =>
            {
                "already linked (the peers rejoined by themselves)".to_string()
            }
            Err(e) => format!("failed: {e:#}"),
        };
        out.line(&format!("  [{done}/{total}] {a} ↔ {b}  {what}"));
    }
}

/// The operator token of this data directory's proxy: made once, kept readable by its owner.
fn operator_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = crate::token::generate();
    write_private(&path, &token)?;
    Ok(token)
}

/// Writes `text` to `path` readable by its owner only, replacing it atomically.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn write_state(dir: &Path, state: &UpState) -> anyhow::Result<()> {
    write_private(&dir.join(STATE_FILE), &serde_json::to_string_pretty(state)?)
}

/// One `up` per data directory: the lock is the OS's, so it goes with the process however it
/// ends.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `meshctl up` is running on {} (stop it with Ctrl-C, or use --data-dir)",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The services log to a file: the terminal belongs to the live view.
fn init_logging(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init()
        .map_err(|e| anyhow::anyhow!("starting the log: {e}"))
}

/// Once stopping has begun, another Ctrl-C (or SIGTERM) exits at once. Spawned as soon as the
/// first signal is taken: a signal sent before a listener exists is not seen by it.
fn force_on_next_signal() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        webrtc_worker::shutdown_signal().await;
        let _ = writeln!(std::io::stderr(), "meshctl: stopped forcibly");
        std::process::exit(130);
    })
}

/// A future that resolves once `stop` says so.
fn stopped(stop: &watch::Sender<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Tags a service's result with its name.
async fn named(
    name: String,
    service: impl Future<Output = anyhow::Result<()>>,
) -> (String, anyhow::Result<()>) {
    (name, service.await)
}

type Ended = Result<(String, anyhow::Result<()>), tokio::task::JoinError>;

fn flatten(ended: Ended) -> anyhow::Result<()> {
    match ended {
        Ok((name, result)) => result.with_context(|| format!("{name} failed")),
        Err(e) => Err(anyhow::anyhow!("a service task failed: {e}")),
    }
}

/// A service that returned before it was told to stop.
fn ended_early(ended: Ended) -> anyhow::Error {
    match ended {
        Ok((name, Ok(()))) => anyhow::anyhow!("{name} stopped unexpectedly"),
        other => flatten(other)
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("a service stopped")),
    }
}
