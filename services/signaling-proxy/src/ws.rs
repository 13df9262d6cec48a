//! WebSocket signaling on `/ws` (proto/SIGNALING.md): peers prove their key by signing the
//! server's nonce, learn who else is here, and relay offers, answers and trickled candidates to
//! each other with `from` stamped by the server. Every refused message gets an error reply.
//!
//! One task per connection owns its socket; the [`Hub`] maps registered ids to the bounded
//! queues of those tasks. A full queue is never dropped into silently: a relay to it is refused
//! to the sender (`peer_busy`), and a client too slow to take broadcasts is disconnected with a
//! reason (`too_slow`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use mesh_service::{ApiError, lock};
use mesh_types::PeerId;
use mesh_types::signaling::{ClientMessage, RegisterProof, ServerMessage, WsLimits};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Proxy;
use crate::config::WsConfig;
use crate::peers::{self, ANONYMOUS_PREFIX};
use mesh_types::rate::{Bucket, Quota};

/// Messages queued for one client before it counts as too slow.
const QUEUE: usize = 256;

/// How long a connection we closed waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Bytes read from a connection's socket at a time.
const READ_BUFFER: usize = 8 * 1024;
/// Bytes of queued messages collected before they are written without waiting for a flush.
const WRITE_BUFFER: usize = 16 * 1024;

/// Close codes (4000–4999 are the application's, RFC 6455 §7.4.2).
pub const CLOSE_REPLACED: u16 = 4001;
pub const CLOSE_TOO_SLOW: u16 = 4002;
pub const CLOSE_IDLE: u16 = 4003;

/// Why the server is closing a connection: told to the client as an error, then a close frame.
#[derive(Debug)]
struct Closing {
    code: u16,
    reason: &'static str,
    error: ServerMessage,
}

/// Asks a connection's task to close, out of band: the queue may be the very thing that is full.
#[derive(Debug, Default)]
struct Closer {
    closing: Mutex<Option<Closing>>,
    notify: tokio::sync::Notify,
}

impl Closer {
    /// The first reason given wins; the task is woken (now, or when it next waits).
    fn close(&self, code: u16, reason: &'static str, message: String) {
        let mut closing = lock(&self.closing);
        if closing.is_none() {
            *closing = Some(Closing {
                code,
                reason,
                error: error(reason, message, None),
            });
            self.notify.notify_one();
        }
    }

    fn take(&self) -> Option<Closing> {
        lock(&self.closing).take()
    }
}

#[derive(Debug)]
struct Session {
    conn: u64,
    tx: mpsc::Sender<ServerMessage>,
    closer: Arc<Closer>,
}

impl Session {
    /// Queues `msg`; a client whose queue is full is too slow and is closed.
    fn push(&self, msg: ServerMessage) {
        if self.tx.try_send(msg).is_err() {
            self.closer.close(
                CLOSE_TOO_SLOW,
                "too_slow",
                format!("more than {QUEUE} messages waited for this client; it is disconnected"),
            );
        }
    }
}

/// Who is registered on this server, and how to reach them.
#[derive(Debug)]
pub struct Hub {
    config: WsConfig,
    sessions: Mutex<HashMap<PeerId, Session>>,
    connections: AtomicUsize,
    next_conn: AtomicU64,
}

impl Hub {
    /// Open WebSocket connections (registered or not).
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub fn new(config: WsConfig) -> Self {
        Hub {
            config,
            sessions: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Registers `session` as `id`, replacing (and closing) an earlier connection. The newcomer
    /// gets the full list; everyone else hears of a new id.
    fn register(&self, id: &PeerId, session: Session) {
        let mut sessions = lock(&self.sessions);
        let mut peers: Vec<PeerId> = sessions.keys().cloned().collect();
        if !peers.contains(id) {
            peers.push(id.clone());
        }
        peers.sort();
        session.push(ServerMessage::Peers { peers });
        match sessions.insert(id.clone(), session) {
            Some(old) => old.closer.close(
                CLOSE_REPLACED,
                "replaced",
                format!("{id} registered again on another connection; this one is closed"),
            ),
            None => {
                for (other, s) in sessions.iter() {
                    if other != id {
                        s.push(ServerMessage::PeerJoined { id: id.clone() });
                    }
                }
            }
        }
    }

    /// Removes `id` if `conn` still holds it (a replaced connection leaves its successor alone).
    fn unregister(&self, id: &PeerId, conn: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(id).is_some_and(|s| s.conn == conn) {
            sessions.remove(id);
            for s in sessions.values() {
                s.push(ServerMessage::PeerLeft { id: id.clone() });
            }
        }
    }

    /// Closes `id`'s connection, if it has one (e.g. its key was replaced).
    pub fn disconnect(&self, id: &PeerId, why: String) {
        if let Some(s) = lock(&self.sessions).get(id) {
            s.closer.close(CLOSE_REPLACED, "replaced", why);
        }
    }

    /// Queues `msg` for `to`; `Err` carries the error code for the sender.
    fn relay(&self, to: &PeerId, msg: ServerMessage) -> Result<(), (&'static str, String)> {
        let sessions = lock(&self.sessions);
        let Some(target) = sessions.get(to) else {
            return Err((
                "unknown_peer",
                format!("{to} is not connected to this server"),
            ));
        };
        // A relay to a full queue is refused to its sender (who can retry); the addressee is
        // not punished for one burst.
        target.tx.try_send(msg).map_err(|_| {
            (
                "peer_busy",
                format!("{to} is not taking messages fast enough; this one was not delivered"),
            )
        })
    }
}

fn error(code: &str, message: impl Into<String>, reference: Option<&str>) -> ServerMessage {
    ServerMessage::Error {
        code: code.into(),
        message: message.into(),
        reference: reference.map(str::to_string),
    }
}

/// `GET /ws`: upgrades, unless the server is full.
pub async fn upgrade(State(proxy): State<Arc<Proxy>>, ws: WebSocketUpgrade) -> Response {
    let hub = proxy.hub.clone();
    let config = hub.config;
    // Counted before the upgrade so a flood of handshakes cannot overshoot the cap.
    if hub.connections.fetch_add(1, Ordering::AcqRel) >= config.max_connections {
        hub.connections.fetch_sub(1, Ordering::AcqRel);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!(
                "this server holds its maximum of {} connections",
                config.max_connections
            ),
        )
        .into_response();
    }
    let guard = ConnectionSlot(hub.clone());
    // Frames up to four times the message limit are read and refused with an error reply;
    // beyond that the protocol layer closes the connection (1009, message too big).
    ws.max_message_size(config.max_message_bytes * 4)
        .max_frame_size(config.max_message_bytes * 4)
        // The library's defaults reserve 128 KiB per connection for reading; signaling messages
        // are small and the buffer grows for a large one, so thousands of idle clients cost
        // kilobytes each, not megabytes. Writes collect up to WRITE_BUFFER until a flush.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let _slot = guard;
            serve(proxy, socket).await;
        })
}

/// Gives back a connection slot however the connection ends.
struct ConnectionSlot(Arc<Hub>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the connection task knows about its client.
struct Conn {
    id: u64,
    nonce: String,
    me: Option<PeerId>,
    /// Messages a second from this client (bursts of twice that).
    quota: Quota,
    bucket: Bucket,
    tx: mpsc::Sender<ServerMessage>,
    closer: Arc<Closer>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // The OS RNG: this is the driver, so it may.
    #[allow(clippy::disallowed_methods)]
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A connection task's clock. The task drives the connection, so it may read the time; the
/// rules it applies (rate limit, idle time-out) take the time since the connection opened.
struct Clock(Instant);

impl Clock {
    #[allow(clippy::disallowed_methods)]
    fn start() -> Self {
        Clock(Instant::now())
    }

    /// Time since the connection opened.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.0)
    }
}

/// Why a connection is closed as idle at `now`, if it is: nothing heard from it for `timeout`,
/// or still not registered after it. Times are since the connection opened.
fn idle(
    now: Duration,
    last_heard: Duration,
    registered: bool,
    timeout: Duration,
) -> Option<String> {
    if now.saturating_sub(last_heard) >= timeout {
        Some(format!("nothing heard for {} s", timeout.as_secs()))
    } else if !registered && now >= timeout {
        Some(format!("not registered within {} s", timeout.as_secs()))
    } else {
        None
    }
}

async fn serve(proxy: Arc<Proxy>, socket: WebSocket) {
    let hub = proxy.hub.clone();
    let config = hub.config;
    let (tx, mut rx) = mpsc::channel::<ServerMessage>(QUEUE);
    let closer = Arc::new(Closer::default());
    let quota = Quota::per_second(config.messages_per_second);
    let clock = Clock::start();
    let mut conn = Conn {
        id: hub.next_conn.fetch_add(1, Ordering::Relaxed),
        nonce: random_token(),
        me: None,
        quota,
        bucket: quota.bucket(Duration::ZERO),
        tx,
        closer: closer.clone(),
    };
    let (sink, mut stream) = socket.split();
    // A client that stops reading must not hold this task (and its slot) forever: every write
    // gets the idle time-out to complete.
    let mut out = Writer {
        sink,
        limit: config.idle_timeout,
    };
    let hello = ServerMessage::Hello {
        nonce: conn.nonce.clone(),
        server_time: crate::now_ms(),
        limits: WsLimits {
            max_message_bytes: config.max_message_bytes,
            messages_per_second: config.messages_per_second,
            idle_timeout_secs: config.idle_timeout.as_secs(),
        },
    };
    if out.send(&hello).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(config.idle_timeout / 3);
    ping.tick().await;
    let mut last_heard = clock.now();
    // Set when this side sent a close frame.
    let mut closing = None;
    loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { break };
                let now = clock.now();
                last_heard = now;
                let reply = match frame {
                    Message::Text(text) => on_text(&proxy, &mut conn, text.as_str(), now).await,
                    Message::Binary(_) => Some(error("bad_frame", "messages are JSON text frames", None)),
                    Message::Ping(_) | Message::Pong(_) => None,
                    Message::Close(_) => break,
                };
                if let Some(reply) = reply
                    && out.send(&reply).await.is_err()
                {
                    break;
                }
            }
            msg = rx.recv() => {
                // `conn` holds a sender, so the queue never closes while this loop runs.
                let Some(mut msg) = msg else { break };
                // Everything already queued goes out in one write: under load that is one
                // syscall for many messages instead of one each.
                let mut written = Ok(());
                loop {
                    written = written.and(out.feed(&msg).await);
                    match rx.try_recv() {
                        Ok(next) if written.is_ok() => msg = next,
                        _ => break,
                    }
                }
                if written.and(out.flush().await).is_err() {
                    break;
                }
            }
            () = closer.notify.notified() => {
                if let Some(why) = closer.take() {
                    closing = Some(why);
                    break;
                }
            }
            _ = ping.tick() => {
                if let Some(message) = idle(clock.now(), last_heard, conn.me.is_some(), config.idle_timeout) {
                    closing = Some(Closing { code: CLOSE_IDLE, reason: "idle", error: error("idle_timeout", message, None) });
                    break;
                }
                if out.frame(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(me) = &conn.me {
        hub.unregister(me, conn.id);
    }
    if let Some(why) = closing {
        let _ = out.send(&why.error).await;
        let frame = CloseFrame {
            code: why.code,
            reason: Utf8Bytes::from_static(why.reason),
        };
        if out.frame(Message::Close(Some(frame))).await.is_ok() {
            // RFC 6455 §7.1.1: wait (bounded) for the client's close before dropping the TCP
            // connection, so a client still reading gets our last messages and the close frame
            // rather than a reset.
            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                while let Some(Ok(frame)) = stream.next().await {
                    if matches!(frame, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// The writing half of a connection, every write bounded by `limit`.
struct Writer<S> {
    sink: S,
    limit: Duration,
}

impl<S: futures_util::Sink<Message> + Unpin> Writer<S> {
    async fn frame(&mut self, frame: Message) -> Result<(), ()> {
        match tokio::time::timeout(self.limit, self.sink.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Queues `msg` in the socket's write buffer without flushing.
    async fn feed(&mut self, msg: &ServerMessage) -> Result<(), ()> {
        let text = serde_json::to_string(msg).map_err(|_| ())?;
        match tokio::time::timeout(self.limit, self.sink.feed(Message::Text(text.into()))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    async fn flush(&mut self) -> Result<(), ()> {
        match tokio::time::timeout(self.limit, self.sink.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    async fn send(&mut self, msg: &ServerMessage) -> Result<(), ()> {
        self.feed(msg).await?;
        self.flush().await
    }
}

/// Handles one text frame; returns the reply for this client, if any.
/// `now` is the time since the connection opened (for its rate limit).
async fn on_text(
    proxy: &Proxy,
    conn: &mut Conn,
    text: &str,
    now: Duration,
) -> Option<ServerMessage> {
    let config = proxy.hub.config;
    if text.len() > config.max_message_bytes {
        return Some(error(
            "message_too_large",
            format!(
                "{} bytes; the limit is {}",
                text.len(),
                config.max_message_bytes
            ),
            None,
        ));
    }
    if conn.quota.take(&mut conn.bucket, now).is_err() {
        return Some(error(
            "rate_limited",
            format!(
                "more than {} messages per second; this one was dropped",
                config.messages_per_second
            ),
            None,
        ));
    }
    let msg: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return Some(error("bad_message", e.to_string(), None)),
    };
    let reference = msg.reference().map(str::to_string);
    let refuse = |code: &str, message: String| Some(error(code, message, reference.as_deref()));
    match msg {
        ClientMessage::Ping { reference } => Some(ServerMessage::Pong { reference }),
        ClientMessage::Register { proof, .. } => {
            if let Some(me) = &conn.me {
                return refuse("already_registered", format!("this connection is {me}"));
            }
            let (id, anonymous) = match proof {
                Some(proof) => match check_proof(proxy, conn, &proof).await {
                    Ok(()) => (proof.id, false),
                    Err(e) => return refuse(&e.code, e.message),
                },
                None if config.anonymous => {
                    match PeerId::new(format!(
                        "{ANONYMOUS_PREFIX}{}",
                        &random_token()[..12]
                            .to_ascii_lowercase()
                            .replace(['-', '_'], "x")
                    )) {
                        Ok(id) => (id, true),
                        Err(e) => return refuse("internal", e.to_string()),
                    }
                }
                None => {
                    return refuse(
                        "anonymous_not_allowed",
                        "register with a proof: this server does not assign anonymous ids".into(),
                    );
                }
            };
            conn.me = Some(id.clone());
            proxy.hub.register(
                &id,
                Session {
                    conn: conn.id,
                    tx: conn.tx.clone(),
                    closer: conn.closer.clone(),
                },
            );
            // Written at once, ahead of the list of peers just queued.
            Some(ServerMessage::Registered { id, anonymous })
        }
        ClientMessage::Offer { to, sdp, from, .. } => {
            relay(proxy, conn, to, from, reference.as_deref(), |from| {
                ServerMessage::Offer { from, sdp }
            })
        }
        ClientMessage::Answer { to, sdp, from, .. } => {
            relay(proxy, conn, to, from, reference.as_deref(), |from| {
                ServerMessage::Answer { from, sdp }
            })
        }
        ClientMessage::Candidate {
            to,
            candidate,
            from,
            ..
        } => relay(proxy, conn, to, from, reference.as_deref(), |from| {
            ServerMessage::Candidate { from, candidate }
        }),
    }
}

fn relay(
    proxy: &Proxy,
    conn: &Conn,
    to: PeerId,
    claimed: Option<PeerId>,
    reference: Option<&str>,
    build: impl FnOnce(PeerId) -> ServerMessage,
) -> Option<ServerMessage> {
    let Some(me) = &conn.me else {
        return Some(error(
            "not_registered",
            "register before signaling",
            reference,
        ));
    };
    if let Some(claimed) = claimed
        && &claimed != me
    {
        return Some(error(
            "spoofed_from",
            format!("this connection is {me}, not {claimed}; the server sets `from`"),
            reference,
        ));
    }
    match proxy.hub.relay(&to, build(me.clone())) {
        Ok(()) => None,
        Err((code, message)) => Some(error(code, message, reference)),
    }
}

/// Checks a registration proof: this connection's nonce, a registered (and allowed) peer, its
/// key's signature, a fresh timestamp.
async fn check_proof(proxy: &Proxy, conn: &Conn, proof: &RegisterProof) -> Result<(), ApiError> {
    peers::check_not_reserved(&proof.id)?;
    if proof.nonce != conn.nonce {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_nonce",
            "the proof must sign this connection's nonce (from hello)",
        ));
    }
    let peer = peers::lookup(&proxy.store, &proof.id).await?;
    peers::check_allowed(&proxy.allowlist, &peer.id, &peer.pub_key)?;
    proxy.verify(proof, &peer.pub_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_or_unregistered_connections_are_idle() {
        const S: Duration = Duration::from_secs(1);
        #[track_caller]
        fn check(now: Duration, last_heard: Duration, registered: bool, expect: Option<&str>) {
            assert_eq!(idle(now, last_heard, registered, 30 * S).as_deref(), expect);
        }
        check(29 * S, Duration::ZERO, true, None);
        check(30 * S, Duration::ZERO, true, Some("nothing heard for 30 s"));
        check(50 * S, 25 * S, true, None);
        check(55 * S, 25 * S, true, Some("nothing heard for 30 s"));
        check(29 * S, 20 * S, false, None);
        check(30 * S, 20 * S, false, Some("not registered within 30 s"));
        // Silence is the reason given when both hold.
        check(
            30 * S,
            Duration::ZERO,
            false,
            Some("nothing heard for 30 s"),
        );
    }
}
