//! One link's decisions, sans-IO: when to probe, when to sample QoS, when the peer is suspect or
//! dead, when the link counts as up, when to restart ICE, when the file session starts and ends,
//! and how the link ends. The driver feeds it the connection's events and the time
//! (`handle_input`, `handle_timeout`), asks when to wake next (`poll_timeout`), and carries out
//! what it says (`poll_output`), str0m-style; nothing here touches a socket, a task or the clock.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use mesh_types::{Health, LinkQos, UnixMillis};

use crate::clock::Now;
use crate::liveness::{Detector, DetectorConfig, Transition};
use crate::qos::{Probe, ProbeKind, QosMeter};
use crate::transport::{Channel, ConnEvent, ConnState, PathStats};

/// How often a link probes and samples, and when its peer is suspect or dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTimings {
    pub qos_interval: Duration,
    pub probe_interval: Duration,
    pub dial_timeout: Duration,
    pub liveness: DetectorConfig,
}

/// Why a link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// This side hung up (an operator, a shutdown, a newer connection to the same peer).
    HungUp,
    /// A dial's answer did not come within the dial time-out.
    NoAnswer,
    /// ICE or DTLS failed, or the connection's events stopped.
    Failed,
    /// The peer closed the link on purpose (its goodbye, or its mesh channel closed).
    PeerClosed,
    /// The failure detector heard nothing for its dead bound.
    PeerSilent,
}

/// An input from the connection or the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An event of the connection.
    Conn(ConnEvent),
    /// The connection's events stopped: its library side is gone.
    Gone,
    /// This side hangs up.
    Stop,
    /// The dial deadline passed; whether the registry still waits for the answer.
    DialExpired { awaiting_answer: bool },
    /// The path statistics asked for by [`Output::Sample`].
    Sampled(PathStats),
}

/// What the driver does, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this on the probe channel (unreliable: a lost probe is what the channel measures).
    Probe(Probe),
    /// The link is usable (connected, mesh channel open): mark it connected, then write `up`.
    Up,
    /// Write the link's document with this health and QoS (it counts as up since `established`).
    Write {
        health: Health,
        qos: LinkQos,
        established: UnixMillis,
    },
    /// Read the path's statistics and hand them back as [`Input::Sampled`].
    Sample,
    /// The path's local candidate type, for the view.
    Candidate(Option<String>),
    /// Whether the gossip channel is open, for the view.
    GossipChannel(bool),
    /// The dial deadline passed: ask the registry whether the answer came ([`Input::DialExpired`]).
    CheckAnswered,
    /// The link is up with its gossip channel open: exchange gossip state (once per connection).
    GossipReady,
    /// The link is up with its file channel open: start the file session (`true`), or end it.
    FileSession(bool),
    /// A message on the mesh or gossip channel.
    Frame {
        channel: Channel,
        data: Bytes,
        text: bool,
    },
    /// The path broke under a live link: restart ICE on it.
    RestartIce,
    /// The peer became suspect, or was heard again.
    Suspected {
        silent: Duration,
    },
    Cleared,
    /// The peer is dead after this much silence; the link's end follows.
    Died {
        silent: Duration,
    },
    /// The link is ending, for this reason: what follows (a goodbye, a `down` write, the close)
    /// is its end.
    Ending(End),
    /// Close the connection.
    Close,
    /// The link is over; nothing follows. `established` says whether it had come up.
    Ended {
        end: End,
        established: bool,
    },
}

/// Gives a goodbye this many sends: the probe channel is lossy.
const BYE_SENDS: usize = 3;

/// Late by more than this, a tick counts as missed, and the next is one period from when it ran
/// (tokio's `MissedTickBehavior::Delay`, which the driver used before this state machine).
const TICK_SLACK_US: u64 = 5_000;

#[derive(Debug)]
pub struct LinkState {
    timings: LinkTimings,
    /// This side dialled: it keeps the link's heartbeat (see [`LinkState::wants_ping`]).
    dialled: bool,
    /// When the answering side next pings to measure the RTT itself.
    next_rtt_ping_us: u64,
    meter: QosMeter,
    connected: bool,
    probe_open: bool,
    mesh_open: bool,
    gossip_open: bool,
    file_open: bool,
    file_session: bool,
    /// Gossip state is exchanged once per connection.
    synced: bool,
    /// When the link first came up (wall ms).
    established: Option<UnixMillis>,
    /// Watching starts when the link is up and its probe channel open: heartbeats need both.
    liveness: Option<Detector>,
    next_probe_us: u64,
    next_sample_us: u64,
    /// A dial's answer deadline, while one is awaited.
    dial_deadline_us: Option<u64>,
    /// A sample was asked for and not yet handed back.
    sampling: bool,
    ended: bool,
    out: VecDeque<Output>,
}

impl LinkState {
    /// A new connection at `now`; a dialled one waits for its answer until the dial time-out.
    pub fn new(timings: LinkTimings, now: Now, dialled: bool) -> Self {
        LinkState {
            timings,
            dialled,
            next_rtt_ping_us: now.mono_us,
            meter: QosMeter::new(),
            connected: false,
            probe_open: false,
            mesh_open: false,
            gossip_open: false,
            file_open: false,
            file_session: false,
            synced: false,
            established: None,
            liveness: None,
            // The first probe goes as soon as probing starts.
            next_probe_us: now.mono_us,
            next_sample_us: now.mono_us + micros(timings.qos_interval),
            dial_deadline_us: dialled.then(|| now.mono_us + micros(timings.dial_timeout)),
            sampling: false,
            ended: false,
            out: VecDeque::new(),
        }
    }

    /// Whether the link has come up (and since when).
    pub fn established(&self) -> Option<UnixMillis> {
        self.established
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` is next due (monotonic µs); `None` once the link has ended.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.ended {
            return None;
        }
        let probe = self.probing().then_some(self.next_probe_us);
        [Some(self.next_sample_us), probe, self.dial_deadline_us]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_input(&mut self, now: Now, input: Input) {
        if self.ended {
            return;
        }
        match input {
            Input::Conn(event) => self.on_event(now, event),
            Input::Gone => self.end(now, End::Failed),
            Input::Stop => self.end(now, End::HungUp),
            Input::DialExpired { awaiting_answer } => {
                if awaiting_answer {
                    self.end(now, End::NoAnswer);
                }
            }
            Input::Sampled(stats) => self.sampled(now, stats),
        }
        self.check_file_session();
    }

    /// Runs whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.ended {
            return;
        }
        if let Some(deadline) = self.dial_deadline_us
            && now.mono_us >= deadline
        {
            self.dial_deadline_us = None;
            self.out.push_back(Output::CheckAnswered);
        }
        if self.probing() && now.mono_us >= self.next_probe_us {
            self.next_probe_us =
                next_tick(self.next_probe_us, now.mono_us, self.timings.probe_interval);
            self.probe_tick(now);
        }
        if !self.ended && now.mono_us >= self.next_sample_us {
            self.next_sample_us =
                next_tick(self.next_sample_us, now.mono_us, self.timings.qos_interval);
            // One sample at a time: the statistics are read while the link carries on.
            if !self.sampling {
                self.sampling = true;
                self.out.push_back(Output::Sample);
            }
        }
    }

    /// Probe ticks run while the probe channel is open or the detector watches.
    fn probing(&self) -> bool {
        self.probe_open || self.liveness.is_some()
    }

    fn on_event(&mut self, now: Now, event: ConnEvent) {
        match event {
            ConnEvent::State(ConnState::Connected) => {
                self.connected = true;
                if self.mesh_open {
                    self.up(now);
                }
            }
            ConnEvent::State(ConnState::Disconnected) => {
                self.connected = false;
                if let Some(established) = self.established {
                    // The path broke under a live link: restart ICE on it, and say it is down
                    // meanwhile.
                    self.out.push_back(Output::RestartIce);
                    self.out.push_back(Output::Write {
                        health: Health::Down,
                        qos: bare_qos(now),
                        established,
                    });
                }
            }
            ConnEvent::State(ConnState::Failed | ConnState::Closed) => self.end(now, End::Failed),
            ConnEvent::State(ConnState::Connecting) => {}
            ConnEvent::Open(Channel::Probe) => {
                self.probe_open = true;
                if self.established.is_some() {
                    self.watch(now);
                }
            }
            ConnEvent::Open(Channel::Mesh) => {
                self.mesh_open = true;
                if self.connected {
                    self.up(now);
                }
            }
            ConnEvent::Open(Channel::Gossip) => {
                self.out.push_back(Output::GossipChannel(true));
                self.gossip_open = true;
                if self.established.is_some() {
                    self.sync_gossip();
                }
            }
            ConnEvent::Open(Channel::File) => self.file_open = true,
            ConnEvent::Closed(Channel::Probe) => {
                // No heartbeats without the channel: ICE's own checks remain.
                self.probe_open = false;
                self.liveness = None;
            }
            ConnEvent::Closed(Channel::Mesh) => self.end(now, End::PeerClosed),
            ConnEvent::Closed(Channel::Gossip) => self.out.push_back(Output::GossipChannel(false)),
            ConnEvent::Closed(Channel::File) => {
                self.file_open = false;
                self.end_file_session();
            }
            ConnEvent::Message {
                channel: Channel::Probe,
                data,
                ..
            } => self.on_probe(now, &data),
            ConnEvent::Message {
                channel: channel @ (Channel::Mesh | Channel::Gossip),
                data,
                text,
            } => self.out.push_back(Output::Frame {
                channel,
                data,
                text,
            }),
            // The transport queues file messages apart, for the file session.
            ConnEvent::Message {
                channel: Channel::File,
                ..
            } => {}
        }
    }

    fn on_probe(&mut self, now: Now, data: &[u8]) {
        if let Some(d) = self.liveness.as_mut()
            && d.heard(now.mono_us) == Some(Transition::Cleared)
        {
            self.out.push_back(Output::Cleared);
        }
        let Some(probe) = Probe::decode(data) else {
            return;
        };
        if probe.kind == ProbeKind::Bye {
            self.end(now, End::PeerClosed);
        } else if let Some(pong) = self.meter.on_probe(probe, now.mono_us) {
            self.out.push_back(Output::Probe(pong));
        }
    }

    fn probe_tick(&mut self, now: Now) {
        match self.liveness.as_mut().and_then(|d| d.tick(now.mono_us)) {
            Some(Transition::Suspected { silent }) => {
                self.out.push_back(Output::Suspected { silent });
            }
            Some(Transition::Died { silent }) => {
                self.out.push_back(Output::Died { silent });
                self.end(now, End::PeerSilent);
                return;
            }
            Some(Transition::Cleared) | None => {}
        }
        if self.probe_open && self.wants_ping(now) {
            let ping = self.meter.ping(now.mono_us);
            self.out.push_back(Output::Probe(ping));
        }
    }

    /// Whether this tick sends a ping. One ping and its pong an interval are a heartbeat for
    /// both sides, so the side that dialled pings every tick and the other answers, pinging
    /// itself only twice a sample window (to measure the RTT from its side) while the
    /// dialler's pings keep coming. When they stop coming (a peer that does not ping, such as a
    /// browser, or a dialler that went quiet) it pings every tick, as both sides once did:
    /// its detector then hears the pongs. Half the packets of every side pinging, for the same
    /// detection bounds.
    fn wants_ping(&mut self, now: Now) -> bool {
        let interval = micros(self.timings.probe_interval);
        let wanted = self.dialled
            || !self.meter.hears_pings(now.mono_us, interval + interval / 2)
            || now.mono_us >= self.next_rtt_ping_us;
        if wanted {
            self.next_rtt_ping_us = now.mono_us + micros(self.timings.qos_interval) / 2;
        }
        wanted
    }

    fn sampled(&mut self, now: Now, stats: PathStats) {
        self.sampling = false;
        let sample = self.meter.sample(
            now.mono_us,
            now.wall_ms,
            stats.ice_rtt_ms,
            stats.bytes,
            self.connected,
        );
        self.out.push_back(Output::Candidate(stats.local_candidate));
        if let Some(established) = self.established {
            self.out.push_back(Output::Write {
                health: sample.health,
                qos: sample.qos,
                established,
            });
        }
    }

    /// Connected with the mesh channel open: the link is up (again).
    fn up(&mut self, now: Now) {
        let established = *self.established.get_or_insert(now.wall_ms);
        self.out.push_back(Output::Up);
        self.out.push_back(Output::Write {
            health: Health::Up,
            qos: bare_qos(now),
            established,
        });
        if self.gossip_open {
            self.sync_gossip();
        }
        if self.probe_open {
            self.watch(now);
        }
    }

    fn watch(&mut self, now: Now) {
        let config = self.timings.liveness;
        self.liveness
            .get_or_insert_with(|| Detector::new(config, now.mono_us));
    }

    fn sync_gossip(&mut self) {
        if !self.synced {
            self.synced = true;
            self.out.push_back(Output::GossipReady);
        }
    }

    fn check_file_session(&mut self) {
        if !self.ended && self.file_open && self.established.is_some() && !self.file_session {
            self.file_session = true;
            self.out.push_back(Output::FileSession(true));
        }
    }

    fn end_file_session(&mut self) {
        if self.file_session {
            self.file_session = false;
            self.out.push_back(Output::FileSession(false));
        }
    }

    fn end(&mut self, now: Now, end: End) {
        self.ended = true;
        self.out.push_back(Output::Ending(end));
        self.end_file_session();
        if end == End::HungUp {
            // Tell the peer first, before anything slow: otherwise it hears silence, takes it for
            // a failure and redials.
            let bye = Probe {
                kind: ProbeKind::Bye,
                seq: 0,
                sent_us: now.mono_us,
            };
            self.out
                .extend(std::iter::repeat_n(Output::Probe(bye), BYE_SENDS));
        }
        // Then `down` in the store: closing a connection to a peer that is gone can take a
        // while, and the store should say so at once.
        if let Some(established) = self.established {
            self.out.push_back(Output::Write {
                health: Health::Down,
                qos: bare_qos(now),
                established,
            });
        }
        self.out.push_back(Output::Close);
        self.out.push_back(Output::Ended {
            end,
            established: self.established.is_some(),
        });
    }
}

/// A QoS record with only its time: written on a change of health, before any measurement.
fn bare_qos(now: Now) -> LinkQos {
    LinkQos {
        last_ts: now.wall_ms,
        ..Default::default()
    }
}

fn next_tick(due: u64, now: u64, period: Duration) -> u64 {
    let period = micros(period);
    if now > due + TICK_SLACK_US {
        now + period
    } else {
        due + period
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;
    const WALL0: UnixMillis = 1_700_000_000_000;

    fn timings() -> LinkTimings {
        LinkTimings {
            qos_interval: Duration::from_secs(15),
            probe_interval: Duration::from_millis(500),
            dial_timeout: Duration::from_secs(30),
            liveness: DetectorConfig {
                suspect_after: Duration::from_millis(1500),
                dead_after: Duration::from_secs(4),
                tick: Duration::from_millis(500),
            },
        }
    }

    fn at(ms: u64) -> Now {
        Now {
            mono_us: ms * MS,
            wall_ms: WALL0 + ms,
        }
    }

    /// A compact name for each output, for table-style expectations.
    fn name(o: &Output) -> String {
        match o {
            Output::Probe(p) => format!("probe:{:?}", p.kind).to_lowercase(),
            Output::Up => "up".into(),
            Output::Write { health, .. } => format!("write:{health:?}").to_lowercase(),
            Output::Sample => "sample".into(),
            Output::Candidate(c) => format!("candidate:{}", c.as_deref().unwrap_or("-")),
            Output::GossipChannel(open) => format!("gossip-channel:{open}"),
            Output::CheckAnswered => "check-answered".into(),
            Output::GossipReady => "gossip-ready".into(),
            Output::FileSession(on) => format!("file-session:{on}"),
            Output::Frame { channel, .. } => format!("frame:{channel:?}").to_lowercase(),
            Output::RestartIce => "restart-ice".into(),
            Output::Suspected { .. } => "suspected".into(),
            Output::Cleared => "cleared".into(),
            Output::Died { .. } => "died".into(),
            Output::Ending(_) => "ending".into(),
            Output::Close => "close".into(),
            Output::Ended { end, established } => {
                format!("ended:{end:?}:{established}").to_lowercase()
            }
        }
    }

    fn drain(s: &mut LinkState) -> Vec<String> {
        std::iter::from_fn(|| s.poll_output())
            .map(|o| name(&o))
            .collect()
    }

    fn ev(s: &mut LinkState, ms: u64, e: ConnEvent) -> Vec<String> {
        s.handle_input(at(ms), Input::Conn(e));
        drain(s)
    }

    fn open(c: Channel) -> ConnEvent {
        ConnEvent::Open(c)
    }

    fn state(c: ConnState) -> ConnEvent {
        ConnEvent::State(c)
    }

    fn probe_msg(kind: ProbeKind, seq: u32, sent_us: u64) -> ConnEvent {
        ConnEvent::Message {
            channel: Channel::Probe,
            data: Bytes::copy_from_slice(&Probe { kind, seq, sent_us }.encode()),
            text: false,
        }
    }

    /// Runs the timeouts from `from` to `to` ms as the driver would: waking at each due time, or
    /// at once for one already past; the outputs with the time each came at.
    fn run_from(s: &mut LinkState, from: u64, to: u64) -> Vec<(u64, String)> {
        let mut seen = Vec::new();
        while let Some(due) = s.poll_timeout() {
            let woken = (due / MS).max(from);
            if woken > to {
                break;
            }
            s.handle_timeout(at(woken));
            for o in drain(s) {
                seen.push((woken, o));
            }
        }
        seen
    }

    fn run(s: &mut LinkState, to: u64) -> Vec<(u64, String)> {
        run_from(s, 0, to)
    }

    /// A link that came up at 0 ms with all four channels open.
    fn up_link() -> LinkState {
        let mut s = LinkState::new(timings(), at(0), false);
        for c in [
            Channel::Probe,
            Channel::Gossip,
            Channel::File,
            Channel::Mesh,
        ] {
            ev(&mut s, 0, open(c));
        }
        ev(&mut s, 0, state(ConnState::Connected));
        s
    }

    #[test]
    fn the_link_comes_up_when_connected_with_its_mesh_channel_open_in_either_order() {
        // check(events, outputs of the last event)
        let cases: [(&[ConnEvent], &[&str]); 4] = [
            (
                &[open(Channel::Mesh), state(ConnState::Connected)],
                &["up", "write:up"],
            ),
            (
                &[state(ConnState::Connected), open(Channel::Mesh)],
                &["up", "write:up"],
            ),
            (&[state(ConnState::Connected)], &[]),
            (
                &[
                    open(Channel::Gossip),
                    open(Channel::File),
                    state(ConnState::Connected),
                    open(Channel::Mesh),
                ],
                &["up", "write:up", "gossip-ready", "file-session:true"],
            ),
        ];
        for (events, expect) in cases {
            let mut s = LinkState::new(timings(), at(0), false);
            let mut last = Vec::new();
            for e in events {
                last = ev(&mut s, 10, e.clone());
            }
            assert_eq!(last, expect, "after {events:?}");
        }
    }

    #[test]
    fn the_dialler_keeps_the_heartbeat_and_the_answerer_pings_only_to_measure() {
        // (dialled, the peer pings every interval) → the ticks at which this side pings, 0–16 s.
        let every: Vec<u64> = (0..=32).map(|i| i * 500).collect();
        let cases: [(bool, bool, Vec<u64>); 3] = [
            (true, true, every.clone()),
            // Hearing the dialler: at once, then twice a 15 s sample window.
            (false, true, vec![0, 7_500, 15_000]),
            // A peer that does not ping (a browser): every tick, or nobody would.
            (false, false, every),
        ];
        for (dialled, peer_pings, expect) in cases {
            let mut s = LinkState::new(timings(), at(0), dialled);
            ev(&mut s, 0, open(Channel::Probe));
            let mut pinged = Vec::new();
            for t in (0..=16_000).step_by(250) {
                if peer_pings && t % 500 == 250 {
                    ev(
                        &mut s,
                        t,
                        probe_msg(ProbeKind::Ping, (t / 500) as u32, t * MS),
                    );
                }
                if s.poll_timeout().is_some_and(|due| due <= t * MS) {
                    s.handle_timeout(at(t));
                    if drain(&mut s).iter().any(|o| o == "probe:ping") {
                        pinged.push(t);
                    }
                }
            }
            assert_eq!(pinged, expect, "dialled {dialled}, peer pings {peer_pings}");
        }
    }

    #[test]
    fn probes_go_every_interval_from_when_the_channel_opens_and_samples_every_qos_interval() {
        let mut s = LinkState::new(timings(), at(0), false);
        assert_eq!(
            s.poll_timeout(),
            Some(15_000 * MS),
            "no probing before the channel opens"
        );
        ev(&mut s, 200, open(Channel::Probe));
        let seen = run_from(&mut s, 200, 1_600);
        // The first probe goes at once (its schedule started with the link), the next a period
        // later.
        assert_eq!(
            seen,
            [
                (200, "probe:ping"),
                (700, "probe:ping"),
                (1_200, "probe:ping")
            ]
            .map(|(t, o)| (t, o.to_string()))
        );
        let seen = run_from(&mut s, 1_600, 15_000);
        assert_eq!(
            seen.last().map(|(t, o)| (*t, o.as_str())),
            Some((15_000, "sample"))
        );
        // A sample under way is not asked for again; handed back, it writes the link (once up).
        s.handle_input(at(15_001), Input::Sampled(PathStats::default()));
        assert_eq!(drain(&mut s), ["candidate:-"], "not up: nothing to write");
    }

    #[test]
    fn a_late_tick_puts_the_next_one_a_period_after_it_ran() {
        let mut s = LinkState::new(timings(), at(0), false);
        ev(&mut s, 0, open(Channel::Probe));
        s.handle_timeout(at(0));
        assert_eq!(s.poll_timeout(), Some(500 * MS));
        // Woken 2 s late (a starved driver): one probe, and the next a period later.
        s.handle_timeout(at(2_500));
        assert_eq!(drain(&mut s), ["probe:ping", "probe:ping"]);
        assert_eq!(s.poll_timeout(), Some(3_000 * MS));
    }

    #[test]
    fn silence_makes_the_peer_suspect_then_dead_and_the_link_ends_written_down() {
        let mut s = up_link();
        let seen = run(&mut s, 10_000);
        let events: Vec<(u64, &str)> = seen
            .iter()
            .filter(|(_, o)| o != "probe:ping")
            .map(|(t, o)| (*t, o.as_str()))
            .collect();
        assert_eq!(
            events,
            [
                (1_500, "suspected"),
                (4_000, "died"),
                (4_000, "ending"),
                (4_000, "file-session:false"),
                (4_000, "write:down"),
                (4_000, "close"),
                (4_000, "ended:peersilent:true"),
            ]
        );
        assert!(s.is_ended());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_heartbeat_clears_suspicion_and_pings_are_answered() {
        let mut s = up_link();
        run(&mut s, 1_600);
        assert_eq!(
            ev(&mut s, 1_700, probe_msg(ProbeKind::Ping, 7, 1)),
            ["cleared", "probe:pong"]
        );
        assert_eq!(
            ev(&mut s, 1_800, probe_msg(ProbeKind::Pong, 0, 0)),
            Vec::<String>::new()
        );
        // Heard at 1.7 s: dead no earlier than 5.7 s.
        assert!(
            run_from(&mut s, 1_800, 5_500)
                .iter()
                .all(|(_, o)| !o.starts_with("ended"))
        );
    }

    #[test]
    fn how_a_link_ends_decides_what_is_said_and_written() {
        let bye = |s: &mut LinkState| ev(s, 100, probe_msg(ProbeKind::Bye, 0, 0));
        let stop = |s: &mut LinkState| {
            s.handle_input(at(100), Input::Stop);
            drain(s)
        };
        let failed = |s: &mut LinkState| ev(s, 100, state(ConnState::Failed));
        let mesh_closed = |s: &mut LinkState| ev(s, 100, ConnEvent::Closed(Channel::Mesh));
        type Case = (fn(&mut LinkState) -> Vec<String>, &'static [&'static str]);
        let cases: [Case; 4] = [
            (
                stop,
                &[
                    "ending",
                    "file-session:false",
                    "probe:bye",
                    "probe:bye",
                    "probe:bye",
                    "write:down",
                    "close",
                    "ended:hungup:true",
                ],
            ),
            (
                bye,
                &[
                    "ending",
                    "file-session:false",
                    "write:down",
                    "close",
                    "ended:peerclosed:true",
                ],
            ),
            (
                failed,
                &[
                    "ending",
                    "file-session:false",
                    "write:down",
                    "close",
                    "ended:failed:true",
                ],
            ),
            (
                mesh_closed,
                &[
                    "ending",
                    "file-session:false",
                    "write:down",
                    "close",
                    "ended:peerclosed:true",
                ],
            ),
        ];
        for (end, expect) in cases {
            let mut s = up_link();
            drain(&mut s);
            assert_eq!(end(&mut s), expect);
            // Nothing after the end.
            assert_eq!(
                ev(&mut s, 200, state(ConnState::Connected)),
                Vec::<String>::new()
            );
        }
        // A link that never came up ends without a write.
        let mut s = LinkState::new(timings(), at(0), false);
        assert_eq!(failed(&mut s), ["ending", "close", "ended:failed:false"]);
    }

    #[test]
    fn a_dial_without_an_answer_ends_at_the_dial_timeout_unless_answered() {
        for (awaiting, expect) in [
            (true, &["ending", "close", "ended:noanswer:false"][..]),
            (false, &[][..]),
        ] {
            let mut s = LinkState::new(timings(), at(0), true);
            assert_eq!(
                s.poll_timeout(),
                Some(15_000 * MS),
                "the sample comes first"
            );
            let seen = run(&mut s, 30_000);
            assert!(
                seen.contains(&(30_000, "check-answered".into())),
                "{seen:?}"
            );
            s.handle_input(
                at(30_000),
                Input::DialExpired {
                    awaiting_answer: awaiting,
                },
            );
            assert_eq!(drain(&mut s), expect);
            assert_eq!(s.is_ended(), awaiting);
        }
    }

    #[test]
    fn a_broken_path_under_a_live_link_restarts_ice_and_is_written_down_until_it_heals() {
        let mut s = up_link();
        drain(&mut s);
        assert_eq!(
            ev(&mut s, 100, state(ConnState::Disconnected)),
            ["restart-ice", "write:down"]
        );
        // Healed: up again, with the same establishment time; gossip is not synced twice.
        s.handle_input(at(300), Input::Conn(state(ConnState::Connected)));
        let outs: Vec<Output> = std::iter::from_fn(|| s.poll_output()).collect();
        assert_eq!(
            outs.iter().map(name).collect::<Vec<_>>(),
            ["up", "write:up"]
        );
        assert!(matches!(
            outs[1],
            Output::Write {
                established: WALL0,
                ..
            }
        ));
        // Before the link was ever up, a disconnection is ICE's business alone.
        let mut s = LinkState::new(timings(), at(0), false);
        assert_eq!(
            ev(&mut s, 100, state(ConnState::Disconnected)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn frames_pass_through_and_the_file_session_follows_its_channel() {
        let mut s = up_link();
        drain(&mut s);
        let frame = |channel| ConnEvent::Message {
            channel,
            data: Bytes::from_static(b"x"),
            text: true,
        };
        assert_eq!(ev(&mut s, 1, frame(Channel::Mesh)), ["frame:mesh"]);
        assert_eq!(ev(&mut s, 1, frame(Channel::Gossip)), ["frame:gossip"]);
        assert_eq!(ev(&mut s, 1, frame(Channel::File)), Vec::<String>::new());
        assert_eq!(
            ev(&mut s, 1, ConnEvent::Closed(Channel::File)),
            ["file-session:false"]
        );
        assert_eq!(ev(&mut s, 2, open(Channel::File)), ["file-session:true"]);
        assert_eq!(
            ev(&mut s, 3, ConnEvent::Closed(Channel::Gossip)),
            ["gossip-channel:false"]
        );
    }

    #[test]
    fn a_closed_probe_channel_stops_probing_and_watching() {
        let mut s = up_link();
        drain(&mut s);
        ev(&mut s, 100, ConnEvent::Closed(Channel::Probe));
        assert_eq!(s.poll_timeout(), Some(15_000 * MS));
        // Silence is no longer held against the peer.
        assert!(run_from(&mut s, 100, 14_000).is_empty());
    }
}
