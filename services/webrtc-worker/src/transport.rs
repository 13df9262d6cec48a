//! The seam over the `webrtc` crate: with `prompt_runtime`, the only modules that name its types. It builds peer
//! connections with meshrtc's settings, opens the two DataChannels every link has, and
//! turns the library's callbacks into one stream of [`ConnEvent`]s per connection, so that a
//! version change of the library stays in this file.
//!
//! Every link has a `mesh` channel (reliable, ordered) for application messages, a `gossip`
//! channel (reliable, ordered) for gossip envelopes and their acks, kept apart so that no
//! application payload can ever be read as an envelope, a `file` channel (reliable, ordered) for
//! file transfers (proto/FILES.md), and a `probe` channel (unordered, no retransmits) for QoS
//! probes. The `file` channel's messages go to their own queue ([`Connection::take_file_queue`]),
//! not the link's event stream, so a transfer's bulk never queues in front of probes and
//! signalling. The offerer opens all four in band
//! (DCEP); the answerer accepts them by label. They are not negotiated out of band: webrtc 0.21.1
//! drops a message that arrives on a negotiated stream before its own side has registered that
//! stream ("data channel not existed"), which loses the first message a fast peer sends. In band,
//! the OPEN precedes data on the same ordered stream, so the channel always exists first.
//!
//! Upstream issue 906: a handle to the connection or a channel kept inside the connection's own
//! event handler forms a reference cycle that leaks the connection. The handler here shares only
//! the [`Channels`] slots with the connection, and [`Connection::close`] (also run on drop) empties
//! them, which breaks the cycle; connections live in the worker's registry.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::ice::mdns::MulticastDnsMode;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::lock;
use crate::prompt_runtime::{Activity, PromptRuntime};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionState, RTCSessionDescription, RTCStatsReportEntry, SettingEngineBuilder,
    StatsSelector, crypto,
};

/// An ICE server as operators configure it in `ICE_SERVERS` (the W3C `RTCIceServer` shape).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

/// How connections are built.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub ice_servers: Vec<IceServer>,
    /// Relay-only ICE policy: every path goes through TURN (what Cloud Run, with no inbound UDP,
    /// needs).
    pub relay_only: bool,
    /// Local UDP addresses each connection binds (port 0: any free port).
    pub udp_addrs: Vec<SocketAddr>,
    /// Gathering stops waiting after this; the description carries what was found by then.
    pub gather_timeout: Duration,
    /// Drive connections with [`PromptRuntime`] (the default); off, the library's own runtime
    /// (for benchmarks that compare the two).
    pub prompt_driver: bool,
    /// Bytes a channel may hold unsent before `send` waits: bounds memory per link and carries
    /// back-pressure to senders (the library's default is unbounded).
    pub send_buffer_limit: usize,
    /// The SCTP receive window (a_rwnd) each connection advertises: how much a peer may have
    /// in flight towards us. See [`DEFAULT_RECEIVE_WINDOW`].
    pub receive_window: u32,
}

/// 256 KiB, not the library's 1 MiB. webrtc 0.21.1 pauses taking messages out of SCTP while
/// the application is behind, so a large window lets a fast sender fill it; once it closes,
/// the receiver sends no window update when it drains (the sender learns only from its
/// zero-window probe, after a retransmission time-out). Measured on loopback with 1 KiB
/// messages: 1 MiB windows stall for 0.2 to 1 s at a time (≈ 2 to 40 MB/s), 256 KiB runs a
/// steady ≈ 130 MB/s. It caps one link at 256 KiB per round trip (≈ 13 MB/s at 20 ms).
pub const DEFAULT_RECEIVE_WINDOW: u32 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The remote description was refused: malformed SDP or one we cannot answer.
    #[error("invalid session description: {0}")]
    BadSdp(String),
    #[error("webrtc: {0}")]
    Library(String),
    #[error("the connection is closed")]
    Closed,
    #[error("the channel is not open yet")]
    NotOpen,
    /// A trickled candidate was refused (malformed, or a name we cannot resolve).
    #[error("invalid ICE candidate: {0}")]
    BadCandidate(String),
}

fn lib(e: impl std::fmt::Display) -> TransportError {
    TransportError::Library(e.to_string())
}

/// Which of a link's two channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Mesh,
    Gossip,
    Probe,
    File,
}

/// The connection's state, as the worker cares about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    State(ConnState),
    Open(Channel),
    Message {
        channel: Channel,
        data: Bytes,
        text: bool,
    },
    Closed(Channel),
}

/// What the connection's statistics say about its path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathStats {
    /// The selected candidate pair's current RTT (ms), once STUN checks have measured it.
    pub ice_rtt_ms: Option<f64>,
    /// Bytes sent plus received on the transport.
    pub bytes: Option<u64>,
    /// The local candidate type of the selected pair: `host`, `srflx`, `prflx` or `relay`.
    pub local_candidate: Option<String>,
}

/// The link's two channels, once open (offerer) or announced (answerer).
#[derive(Default)]
struct Channels {
    mesh: Option<Arc<dyn DataChannel>>,
    gossip: Option<Arc<dyn DataChannel>>,
    probe: Option<Arc<dyn DataChannel>>,
    file: Option<Arc<dyn DataChannel>>,
}

impl Channels {
    fn slot(&mut self, channel: Channel) -> &mut Option<Arc<dyn DataChannel>> {
        match channel {
            Channel::Mesh => &mut self.mesh,
            Channel::Gossip => &mut self.gossip,
            Channel::Probe => &mut self.probe,
            Channel::File => &mut self.file,
        }
    }
}

const MESH_LABEL: &str = "mesh";
const GOSSIP_LABEL: &str = "gossip";
const PROBE_LABEL: &str = "probe";
const FILE_LABEL: &str = "file";

/// Forwards the library's callbacks; holds no handle to the connection (upstream issue 906).
struct Events {
    tx: mpsc::Sender<ConnEvent>,
    file_tx: mpsc::Sender<Bytes>,
    activity: Activity,
    /// Counts completed gatherings: an ICE restart gathers again, and its description must
    /// wait for that round, not the first.
    gathered: watch::Sender<u64>,
    channels: Arc<Mutex<Channels>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_modify(|n| *n += 1);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let state = match state {
            RTCPeerConnectionState::Connected => ConnState::Connected,
            RTCPeerConnectionState::Disconnected => ConnState::Disconnected,
            RTCPeerConnectionState::Failed => ConnState::Failed,
            RTCPeerConnectionState::Closed => ConnState::Closed,
            _ => ConnState::Connecting,
        };
        if state != ConnState::Connected {
            self.activity.set_established(false);
        }
        // Awaiting here is back-pressure, not loss: the receiver is the link's driver.
        let _ = self.tx.send(ConnEvent::State(state)).await;
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let label = dc.label().await.unwrap_or_default();
        let channel = match label.as_str() {
            MESH_LABEL => Channel::Mesh,
            GOSSIP_LABEL => Channel::Gossip,
            PROBE_LABEL => Channel::Probe,
            FILE_LABEL => Channel::File,
            other => {
                tracing::warn!(
                    label = other,
                    "refusing a data channel meshrtc does not use"
                );
                let _ = dc.close().await;
                return;
            }
        };
        adopt(
            &self.channels,
            channel,
            dc,
            self.tx.clone(),
            self.file_tx.clone(),
            self.activity.clone(),
        );
    }
}

/// Keeps `dc` as the link's `channel` and starts pumping its events.
fn adopt(
    channels: &Mutex<Channels>,
    channel: Channel,
    dc: Arc<dyn DataChannel>,
    tx: mpsc::Sender<ConnEvent>,
    file_tx: mpsc::Sender<Bytes>,
    activity: Activity,
) {
    {
        let mut slots = lock(channels);
        let slot = slots.slot(channel);
        if slot.is_some() {
            tracing::warn!(
                ?channel,
                "a second channel with this label; keeping the first"
            );
            return;
        }
        *slot = Some(dc.clone());
    }
    spawn_channel_pump(channel, dc, tx, file_tx, activity);
}

/// One peer connection with its two channels.
pub struct Connection {
    pc: Arc<dyn PeerConnection>,
    activity: Activity,
    channels: Arc<Mutex<Channels>>,
    /// For the channels this side opens (as offerer).
    tx: mpsc::Sender<ConnEvent>,
    file_tx: mpsc::Sender<Bytes>,
    /// The `file` channel's messages, until the link's file session takes them.
    file_rx: Mutex<Option<mpsc::Receiver<Bytes>>>,
    gathered: watch::Receiver<u64>,
    gather_timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// Builds connections.
#[derive(Debug, Clone)]
pub struct Transport {
    config: TransportConfig,
}

/// Capacity of a connection's event queue; a full queue slows the library down, it never drops.
const EVENT_QUEUE: usize = 1024;
/// Capacity of the `file` channel's queue (messages of up to 64 KiB): 4 MiB waiting for the
/// file session; beyond it the library holds back, and SCTP's window tells the sender to wait.
const FILE_QUEUE: usize = 64;

impl Transport {
    pub fn new(config: TransportConfig) -> Self {
        Transport { config }
    }

    /// A new connection with its channels, and the stream of its events.
    pub async fn connect(&self) -> Result<(Connection, mpsc::Receiver<ConnEvent>), TransportError> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (file_tx, file_rx) = mpsc::channel(FILE_QUEUE);
        let (gathered_tx, gathered) = watch::channel(0);
        let ice_servers = self
            .config
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let policy = if self.config.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        };
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .with_ice_transport_policy(policy)
            .build();
        let loopback = self.config.udp_addrs.iter().any(|a| a.ip().is_loopback());
        let mut settings = SettingEngineBuilder::new()
            .with_crypto_provider(Arc::new(crypto::providers::AwsLcRsProvider::new()))
            // mDNS would open a multicast socket per connection and hide our addresses behind
            // names no peer of ours resolves; candidates come from configured addresses only.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            // A worker bound to loopback (tests, one-machine meshes) must offer loopback candidates.
            .with_include_loopback_candidate(loopback);
        settings = settings.with_sctp_max_receive_buffer_size(self.config.receive_window);
        if self.config.relay_only {
            // The acceptance wait lets a better (host, srflx) pair win; relay-only has none.
            settings = settings.with_relay_acceptance_min_wait(Some(Duration::ZERO));
        }
        let settings = settings.build();
        let activity = Activity::default();
        let channels = Arc::new(Mutex::new(Channels::default()));
        let mut builder = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Events {
                tx: tx.clone(),
                file_tx: file_tx.clone(),
                gathered: gathered_tx,
                channels: channels.clone(),
                activity: activity.clone(),
            }))
            .with_udp_addrs(self.config.udp_addrs.clone())
            .with_data_channel_send_buffer_limit(self.config.send_buffer_limit);
        if self.config.prompt_driver {
            builder = builder.with_runtime(Arc::new(PromptRuntime::new(activity.clone())));
        }
        let pc = builder.build().await.map_err(lib)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let conn = Connection {
            pc,
            activity,
            channels,
            tx,
            file_tx,
            file_rx: Mutex::new(Some(file_rx)),
            gathered,
            gather_timeout: self.config.gather_timeout,
        };
        Ok((conn, rx))
    }
}

/// The value of a description's first `a=fingerprint:` line (`sha-256 AB:CD:…`).
pub fn fingerprint_of(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=fingerprint:"))
}

/// Moves one channel's events into the connection's queue until the channel closes.
fn spawn_channel_pump(
    channel: Channel,
    dc: Arc<dyn DataChannel>,
    tx: mpsc::Sender<ConnEvent>,
    file_tx: mpsc::Sender<Bytes>,
    activity: Activity,
) {
    tokio::spawn(async move {
        while let Some(event) = dc.poll().await {
            let event = match event {
                DataChannelEvent::OnOpen => {
                    activity.channel_open(channel == Channel::Mesh, true);
                    ConnEvent::Open(channel)
                }
                DataChannelEvent::OnMessage(msg) if channel == Channel::File => {
                    // Awaiting a full queue is back-pressure on the peer, never a drop.
                    if file_tx.send(msg.data.freeze()).await.is_err() {
                        // No file session (a peer without one): the message has no taker.
                        tracing::debug!("file message with no file session; dropped");
                    }
                    continue;
                }
                DataChannelEvent::OnMessage(msg) => ConnEvent::Message {
                    channel,
                    data: msg.data.freeze(),
                    text: msg.is_string,
                },
                DataChannelEvent::OnClose => {
                    activity.channel_open(channel == Channel::Mesh, false);
                    let _ = tx.send(ConnEvent::Closed(channel)).await;
                    break;
                }
                _ => continue,
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
}

impl Connection {
    /// Creates an offer and returns its SDP once candidates are gathered (or the gather time-out
    /// passes): the whole offer travels in one signed HTTP message.
    pub async fn offer(&self) -> Result<String, TransportError> {
        let reliable = RTCDataChannelInit {
            ordered: true,
            ..Default::default()
        };
        let file = reliable.clone();
        let lossy = RTCDataChannelInit {
            ordered: false,
            max_retransmits: Some(0),
            ..Default::default()
        };
        for (channel, label, init) in [
            (Channel::Mesh, MESH_LABEL, reliable.clone()),
            (Channel::Gossip, GOSSIP_LABEL, reliable),
            (Channel::File, FILE_LABEL, file),
            (Channel::Probe, PROBE_LABEL, lossy),
        ] {
            let dc = self
                .pc
                .create_data_channel(label, Some(init))
                .await
                .map_err(lib)?;
            adopt(
                &self.channels,
                channel,
                dc,
                self.tx.clone(),
                self.file_tx.clone(),
                self.activity.clone(),
            );
        }
        let offer = self.pc.create_offer(None).await.map_err(lib)?;
        self.pc.set_local_description(offer).await.map_err(lib)?;
        self.local_sdp(0).await
    }

    /// An offer that restarts ICE on this connection (new credentials, candidates gathered
    /// again), keeping DTLS, SCTP and the channels: for a path that changed under a live link.
    pub async fn restart_offer(&self) -> Result<String, TransportError> {
        let round = *self.gathered.borrow();
        self.pc.restart_ice().await.map_err(lib)?;
        let offer = self.pc.create_offer(None).await.map_err(lib)?;
        self.pc.set_local_description(offer).await.map_err(lib)?;
        self.local_sdp(round).await
    }

    /// The DTLS fingerprint the peer's description announced: the same on a re-offer from the
    /// same connection, different on a new one.
    pub async fn remote_fingerprint(&self) -> Option<String> {
        let sdp = self.pc.remote_description().await?.sdp;
        fingerprint_of(&sdp).map(str::to_string)
    }

    /// Applies a remote offer and returns the answer's SDP: a new connection's first, or an ICE
    /// restart's on a live one (whose description then waits for the new gathering round).
    pub async fn answer(&self, offer_sdp: &str) -> Result<String, TransportError> {
        let round = *self.gathered.borrow();
        let offer = RTCSessionDescription::offer(offer_sdp.to_string())
            .map_err(|e| TransportError::BadSdp(e.to_string()))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| TransportError::BadSdp(e.to_string()))?;
        let answer = self.pc.create_answer(None).await.map_err(lib)?;
        self.pc.set_local_description(answer).await.map_err(lib)?;
        self.local_sdp(round).await
    }

    /// Applies the remote answer to our offer.
    pub async fn accept_answer(&self, answer_sdp: &str) -> Result<(), TransportError> {
        let answer = RTCSessionDescription::answer(answer_sdp.to_string())
            .map_err(|e| TransportError::BadSdp(e.to_string()))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(|e| TransportError::BadSdp(e.to_string()))
    }

    /// The local description once gathering round `after` + 1 completed (or the gather
    /// time-out passed).
    async fn local_sdp(&self, after: u64) -> Result<String, TransportError> {
        let mut gathered = self.gathered.clone();
        // Not gathered in time: send what we have; more candidates would not reach the peer anyway.
        let _ = tokio::time::timeout(self.gather_timeout, gathered.wait_for(|n| *n > after)).await;
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or(TransportError::Closed)
    }

    pub async fn send(
        &self,
        channel: Channel,
        data: &[u8],
        text: bool,
    ) -> Result<(), TransportError> {
        if !text {
            return self.send_owned(channel, BytesMut::from(data)).await;
        }
        let dc = lock(&self.channels)
            .slot(channel)
            .clone()
            .ok_or(TransportError::NotOpen)?;
        // Our write is queued in the core; make sure the driver sends it now (see prompt_runtime).
        self.activity.mark();
        dc.send_text(std::str::from_utf8(data).map_err(lib)?)
            .await
            .map_err(lib)
    }

    /// Sends a message the caller built in an owned buffer (no copy); waits while the channel's
    /// send buffer is full.
    pub async fn send_owned(&self, channel: Channel, data: BytesMut) -> Result<(), TransportError> {
        let dc = lock(&self.channels)
            .slot(channel)
            .clone()
            .ok_or(TransportError::NotOpen)?;
        self.activity.mark();
        dc.send(data).await.map_err(lib)
    }

    /// The `file` channel's incoming messages; `None` once taken.
    pub fn take_file_queue(&self) -> Option<mpsc::Receiver<Bytes>> {
        lock(&self.file_rx).take()
    }

    /// Adds a candidate the remote peer trickled (over WebSocket signaling).
    pub async fn add_remote_candidate(
        &self,
        candidate: &mesh_types::signaling::IceCandidate,
    ) -> Result<(), TransportError> {
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate.clone(),
            sdp_mid: candidate.sdp_mid.clone(),
            sdp_mline_index: candidate.sdp_m_line_index,
            username_fragment: candidate.username_fragment.clone(),
            ..Default::default()
        };
        self.pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| TransportError::BadCandidate(e.to_string()))?;
        // Adding a candidate does not wake the library's driver; its next pass starts checks.
        self.activity.mark();
        Ok(())
    }

    /// The selected path's RTT, byte counters and candidate type.
    pub async fn stats(&self, now: Instant) -> PathStats {
        let report = self.pc.get_stats(now, StatsSelector::None).await;
        let Some(transport) = report.transport() else {
            return PathStats::default();
        };
        let mut stats = PathStats {
            bytes: Some(transport.bytes_sent + transport.bytes_received),
            ..Default::default()
        };
        if let Some(RTCStatsReportEntry::IceCandidatePair(pair)) =
            report.get(&transport.selected_candidate_pair_id)
        {
            stats.ice_rtt_ms = Some(pair.current_round_trip_time * 1000.0).filter(|r| *r > 0.0);
            // webrtc 0.21.1 reports the pair's `local_candidate_id` as `candidate:X` but keys the
            // candidate's own entry `RTCLocalIceCandidate_candidate:X`; accept either.
            let prefixed = format!("RTCLocalIceCandidate_{}", pair.local_candidate_id);
            let local = report
                .get(&pair.local_candidate_id)
                .or_else(|| report.get(&prefixed));
            if let Some(RTCStatsReportEntry::LocalCandidate(local)) = local {
                stats.local_candidate = Some(local.candidate_type.to_string());
            }
        }
        stats
    }

    pub async fn close(&self) {
        self.release_channels();
        if let Err(e) = self.pc.close().await {
            tracing::debug!("closing a peer connection: {e}");
        }
    }

    /// Empties the channel slots the event handler shares, breaking the handler → channel →
    /// connection cycle (upstream issue 906).
    fn release_channels(&self) {
        *lock(&self.channels) = Channels::default();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.release_channels();
    }
}
