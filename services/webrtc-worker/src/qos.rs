//! Link quality, sans-IO: the probe wire format, RTT from ping/pong, RFC 3550 jitter over probe
//! transit times, loss from probe sequence gaps (the peer's pings) or from unanswered pings (our
//! own), bitrate from transport byte counters, and the health rule.
//!
//! One side of a link pings every probe interval (the dialler; see `links::state`), the other
//! answers and pings only now and then: each side measures from what it has most of. The
//! pinger's loss is its unanswered pings (either direction lost one), its jitter the RFC 3550
//! estimator over successive RTTs; the answerer's loss is gaps in the pinger's sequence, its
//! jitter the estimator over the pings' transit times.
//!
//! Time comes in as microseconds on the caller's monotonic clock; nothing here reads a clock or
//! touches a socket.
//!
//! Health thresholds (documented in docs/ARCHITECTURE.md):
//! - `down`: the connection is not connected, or at least [`DOWN_LOSS_PCT`] of probes were lost;
//! - `degraded`: loss above [`DEGRADED_LOSS_PCT`], RTT above [`DEGRADED_RTT_MS`] or jitter above
//!   [`DEGRADED_JITTER_MS`];
//! - `up` otherwise.

use std::collections::VecDeque;

use mesh_types::{Health, LinkQos, UnixMillis};

pub const DOWN_LOSS_PCT: f64 = 50.0;
pub const DEGRADED_LOSS_PCT: f64 = 5.0;
pub const DEGRADED_RTT_MS: f64 = 300.0;
pub const DEGRADED_JITTER_MS: f64 = 50.0;

/// A pong later than this counts its ping lost (an RTT that long is `degraded` anyway).
const PONG_GRACE_US: u64 = 1_000_000;
/// Our pings awaiting their pong, at most (older ones are settled as lost).
const OUTSTANDING_MAX: usize = 128;

/// A probe on the unordered, no-retransmit probe channel: 1 byte kind, 4 bytes sequence number,
/// 8 bytes the pinger's send time (µs on its own clock), all big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: ProbeKind,
    pub seq: u32,
    pub sent_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Ping = 1,
    Pong = 2,
    /// "Hanging up on purpose": the peer should not take the silence that follows for a
    /// failure and redial.
    Bye = 3,
}

pub const PROBE_LEN: usize = 13;

impl Probe {
    pub fn encode(&self) -> [u8; PROBE_LEN] {
        let mut out = [0u8; PROBE_LEN];
        out[0] = self.kind as u8;
        out[1..5].copy_from_slice(&self.seq.to_be_bytes());
        out[5..].copy_from_slice(&self.sent_us.to_be_bytes());
        out
    }

    /// `None` for anything that is not a probe; a peer cannot make us panic with a short frame.
    pub fn decode(bytes: &[u8]) -> Option<Probe> {
        let bytes: &[u8; PROBE_LEN] = bytes.try_into().ok()?;
        let kind = match bytes[0] {
            1 => ProbeKind::Ping,
            2 => ProbeKind::Pong,
            3 => ProbeKind::Bye,
            _ => return None,
        };
        let seq = u32::from_be_bytes(bytes[1..5].try_into().ok()?);
        let sent_us = u64::from_be_bytes(bytes[5..].try_into().ok()?);
        Some(Probe { kind, seq, sent_us })
    }
}

/// What a sample found.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub qos: LinkQos,
    pub health: Health,
}

/// One link's measurements between two samples.
#[derive(Debug, Default)]
pub struct QosMeter {
    next_seq: u32,
    /// Round-trip times of this window's pongs, µs.
    rtts_us: Vec<u64>,
    /// RFC 3550 interarrival jitter, µs, carried across windows as the RFC does.
    jitter_us: f64,
    /// (remote send time, local receive time) of the previous ping, for the jitter difference.
    last_ping: Option<(u64, u64)>,
    /// Highest ping sequence number counted by the previous sample.
    counted_up_to: Option<u32>,
    /// This window's lowest new and highest ping sequence numbers, and how many arrived.
    first_seq: Option<u32>,
    highest_seq: Option<u32>,
    received_in_window: u32,
    /// Transport bytes (sent + received) and when, at the previous sample.
    last_bytes: Option<(u64, u64)>,
    /// Our pings not yet settled: sequence number, send time, whether the pong came.
    outstanding: VecDeque<(u32, u64, bool)>,
    /// Our pings settled in this window, and how many of them were answered.
    settled: u32,
    answered: u32,
    /// The previous pong's RTT, for the jitter difference.
    last_rtt_us: Option<u64>,
    /// When the peer's latest ping arrived.
    last_peer_ping_us: Option<u64>,
}

impl QosMeter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next ping to send.
    pub fn ping(&mut self, now_us: u64) -> Probe {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if self.outstanding.len() >= OUTSTANDING_MAX {
            self.settle_one();
        }
        self.outstanding.push_back((seq, now_us, false));
        Probe {
            kind: ProbeKind::Ping,
            seq,
            sent_us: now_us,
        }
    }

    /// Handles a probe from the peer; returns the pong to send back for a ping.
    pub fn on_probe(&mut self, probe: Probe, now_us: u64) -> Option<Probe> {
        match probe.kind {
            ProbeKind::Pong => {
                // A pong echoes our own send time, so the difference is on one clock.
                if let Some(rtt) = now_us.checked_sub(probe.sent_us) {
                    self.rtts_us.push(rtt);
                    if let Some(prev) = self.last_rtt_us {
                        self.jitter(rtt.abs_diff(prev) as f64);
                    }
                    self.last_rtt_us = Some(rtt);
                }
                if let Some(ping) = self.outstanding.iter_mut().rev().find(|(seq, sent, _)| {
                    *seq == probe.seq
                        && *sent == probe.sent_us
                        && now_us.saturating_sub(*sent) <= PONG_GRACE_US
                }) {
                    ping.2 = true;
                }
                None
            }
            ProbeKind::Ping => {
                self.on_ping(probe, now_us);
                Some(Probe {
                    kind: ProbeKind::Pong,
                    ..probe
                })
            }
            // The driver acts on a goodbye; it is no measurement.
            ProbeKind::Bye => None,
        }
    }

    /// Whether the peer's pings are arriving: one came within `within_us` of `now_us`.
    pub fn hears_pings(&self, now_us: u64, within_us: u64) -> bool {
        self.last_peer_ping_us
            .is_some_and(|at| now_us.saturating_sub(at) <= within_us)
    }

    /// RFC 3550 §6.4.1's estimator: J += (|D| - J) / 16.
    fn jitter(&mut self, d_us: f64) {
        self.jitter_us += (d_us - self.jitter_us) / 16.0;
    }

    /// Settles our oldest outstanding ping.
    fn settle_one(&mut self) {
        if let Some((_, _, answered)) = self.outstanding.pop_front() {
            self.settled += 1;
            self.answered += u32::from(answered);
        }
    }

    fn on_ping(&mut self, probe: Probe, now_us: u64) {
        self.last_peer_ping_us = Some(now_us);
        // RFC 3550 §6.4.1: D = (Rj - Ri) - (Sj - Si); the clocks' offset cancels out.
        if let Some((prev_sent, prev_recv)) = self.last_ping {
            let d =
                (now_us as i128 - prev_recv as i128) - (probe.sent_us as i128 - prev_sent as i128);
            self.jitter(d.unsigned_abs() as f64);
        }
        self.last_ping = Some((probe.sent_us, now_us));
        // Loss counts only pings newer than what earlier windows counted; a late or repeated
        // ping is not a second arrival.
        if self.counted_up_to.is_some_and(|c| probe.seq <= c) {
            return;
        }
        if self.highest_seq.is_some_and(|h| probe.seq <= h)
            && self.first_seq.is_some_and(|f| probe.seq >= f)
        {
            // Reordered inside this window: count it once (approximately; duplicates are rare on
            // an SCTP channel, which never duplicates, so only reordering reaches here).
            self.received_in_window += 1;
            return;
        }
        self.first_seq.get_or_insert(probe.seq);
        self.highest_seq = Some(self.highest_seq.map_or(probe.seq, |h| h.max(probe.seq)));
        self.received_in_window += 1;
    }

    /// Closes the window: the QoS figures since the previous sample, and the link's health.
    /// `ice_rtt_ms` is the selected candidate pair's current RTT, `transport_bytes` the
    /// connection's bytes sent plus received, `connected` whether ICE and DTLS are up.
    pub fn sample(
        &mut self,
        now_us: u64,
        now_ms: UnixMillis,
        ice_rtt_ms: Option<f64>,
        transport_bytes: Option<u64>,
        connected: bool,
    ) -> Sample {
        let probe_rtt_ms = (!self.rtts_us.is_empty())
            .then(|| self.rtts_us.iter().sum::<u64>() as f64 / self.rtts_us.len() as f64 / 1000.0);
        // Our pings whose pong had its time to come.
        while self
            .outstanding
            .front()
            .is_some_and(|(_, sent, answered)| *answered || sent + PONG_GRACE_US <= now_us)
        {
            self.settle_one();
        }
        let mut expected_pings = 0;
        let ping_loss = self.highest_seq.map(|high| {
            let from = match self.counted_up_to {
                Some(c) => c.wrapping_add(1),
                None => self.first_seq.unwrap_or(high),
            };
            let expected = u64::from(high.wrapping_sub(from)) + 1;
            expected_pings = expected;
            let received = u64::from(self.received_in_window).min(expected);
            (expected - received) as f64 * 100.0 / expected as f64
        });
        let pong_loss = (self.settled > 0)
            .then(|| f64::from(self.settled - self.answered) * 100.0 / f64::from(self.settled));
        // From whichever this side has more of: its own pings, or the peer's.
        let loss_pct = if u64::from(self.settled) >= expected_pings {
            pong_loss.or(ping_loss)
        } else {
            ping_loss
        };
        self.settled = 0;
        self.answered = 0;
        let jitter_ms = (self.last_ping.is_some() || self.last_rtt_us.is_some())
            .then(|| self.jitter_us / 1000.0);
        let bitrate_kbps = match (self.last_bytes, transport_bytes) {
            (Some((bytes0, at0)), Some(bytes)) if now_us > at0 && bytes >= bytes0 => {
                Some((bytes - bytes0) as f64 * 8.0 / ((now_us - at0) as f64 / 1_000_000.0) / 1000.0)
            }
            _ => None,
        };
        if let Some(bytes) = transport_bytes {
            self.last_bytes = Some((bytes, now_us));
        }
        if let Some(high) = self.highest_seq.take() {
            self.counted_up_to = Some(high);
        }
        self.first_seq = None;
        self.received_in_window = 0;
        self.rtts_us.clear();

        let qos = LinkQos {
            rtt_ms: ice_rtt_ms.filter(|r| *r > 0.0).or(probe_rtt_ms),
            probe_rtt_ms,
            jitter_ms,
            loss_pct,
            bitrate_kbps,
            last_ts: now_ms,
        };
        let health = health(connected, &qos);
        Sample { qos, health }
    }
}

/// The health rule; see the module docs for the thresholds.
pub fn health(connected: bool, qos: &LinkQos) -> Health {
    let over = |v: Option<f64>, limit: f64| v.is_some_and(|v| v > limit);
    if !connected || qos.loss_pct.is_some_and(|l| l >= DOWN_LOSS_PCT) {
        Health::Down
    } else if over(qos.loss_pct, DEGRADED_LOSS_PCT)
        || over(qos.rtt_ms, DEGRADED_RTT_MS)
        || over(qos.jitter_ms, DEGRADED_JITTER_MS)
    {
        Health::Degraded
    } else {
        Health::Up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_garbage_is_refused() {
        let p = Probe {
            kind: ProbeKind::Pong,
            seq: 7,
            sent_us: 123_456,
        };
        assert_eq!(Probe::decode(&p.encode()), Some(p));
        assert_eq!(Probe::decode(&[1, 2, 3]), None);
        assert_eq!(Probe::decode(&[9; PROBE_LEN]), None);
    }

    /// Two meters talking over a path with `delay_us` each way, dropping pings whose sequence
    /// number `drop` selects.
    fn exchange(n: u32, delay_us: impl Fn(u32) -> u64, drop: impl Fn(u32) -> bool) -> Sample {
        let (mut a, mut b) = (QosMeter::new(), QosMeter::new());
        for i in 0..n {
            let t = u64::from(i) * 500_000;
            let ping = a.ping(t);
            if drop(ping.seq) {
                continue;
            }
            let there = t + delay_us(i);
            let pong = b.on_probe(ping, there).unwrap();
            assert_eq!(a.on_probe(pong, there + delay_us(i)), None);
        }
        // b measured the a→b direction (jitter, loss); a measured RTT.
        let mut sb = b.sample(u64::from(n) * 500_000, 1, None, None, true);
        let sa = a.sample(u64::from(n) * 500_000, 1, None, None, true);
        sb.qos.probe_rtt_ms = sa.qos.probe_rtt_ms;
        sb.qos.rtt_ms = sa.qos.rtt_ms;
        sb.health = health(true, &sb.qos);
        sb
    }

    #[test]
    fn a_goodbye_round_trips_and_is_no_measurement() {
        let bye = Probe {
            kind: ProbeKind::Bye,
            seq: 0,
            sent_us: 42,
        };
        assert_eq!(Probe::decode(&bye.encode()), Some(bye));
        let mut m = QosMeter::new();
        assert_eq!(m.on_probe(bye, 100), None);
        assert_eq!(Probe::decode(&[9; PROBE_LEN]), None);
    }

    #[test]
    fn a_steady_path_has_its_rtt_no_jitter_and_no_loss() {
        let s = exchange(30, |_| 10_000, |_| false);
        assert_eq!(s.qos.probe_rtt_ms, Some(20.0));
        assert_eq!(s.qos.jitter_ms, Some(0.0));
        assert_eq!(s.qos.loss_pct, Some(0.0));
        assert_eq!(s.health, Health::Up);
    }

    #[test]
    fn alternating_delay_gives_rfc3550_jitter() {
        // Transit alternates 10 ms / 30 ms: |D| = 20 ms each time; J converges to 20 ms.
        let s = exchange(400, |i| if i % 2 == 0 { 10_000 } else { 30_000 }, |_| false);
        let j = s.qos.jitter_ms.unwrap();
        assert!((j - 20.0).abs() < 0.01, "{j}");
        assert_eq!(s.health, Health::Up);
    }

    #[test]
    fn sequence_gaps_are_loss() {
        let s = exchange(100, |_| 1_000, |seq| seq % 10 == 3);
        assert_eq!(s.qos.loss_pct, Some(10.0));
        assert_eq!(s.health, Health::Degraded);
        // Two of every three lost. (Losses after the last arrival cannot be seen yet: a gap is
        // known only once a later ping arrives.)
        let s = exchange(100, |_| 1_000, |seq| seq % 3 != 0);
        assert_eq!(s.qos.loss_pct, Some(66.0)); // 34 of seq 0..=99 arrive
        assert_eq!(s.health, Health::Down);
    }

    #[test]
    fn loss_counts_gaps_across_windows_but_not_late_arrivals() {
        let mut b = QosMeter::new();
        let ping = |seq| Probe {
            kind: ProbeKind::Ping,
            seq,
            sent_us: u64::from(seq) * 1000,
        };
        for seq in 0..10 {
            b.on_probe(ping(seq), u64::from(seq) * 1000 + 5);
        }
        assert_eq!(
            b.sample(20_000, 1, None, None, true).qos.loss_pct,
            Some(0.0)
        );
        // Next window: 10..20 with 12 and 13 lost, plus a late duplicate of 5.
        b.on_probe(ping(5), 20_001);
        for seq in (10..20).filter(|s| *s != 12 && *s != 13) {
            b.on_probe(ping(seq), u64::from(seq) * 1000 + 5);
        }
        assert_eq!(
            b.sample(40_000, 2, None, None, true).qos.loss_pct,
            Some(20.0)
        );
        // A window with no pings reports loss as unknown, not as zero or as the last figure.
        assert_eq!(b.sample(60_000, 3, None, None, true).qos.loss_pct, None);
        // And counting resumes after the gap: 20..=21 missing, 22..24 arrive.
        for seq in 22..25 {
            b.on_probe(ping(seq), 70_000);
        }
        assert_eq!(
            b.sample(80_000, 4, None, None, true).qos.loss_pct,
            Some(40.0)
        );
    }

    #[test]
    fn the_pinger_counts_its_unanswered_pings_and_rtt_variation() {
        // a pings every 500 ms; every 4th pong is lost on the way back, and the pong of the 6th
        // ping comes after the grace; b pings once in the window.
        let (mut a, mut b) = (QosMeter::new(), QosMeter::new());
        for i in 0..10u64 {
            let t = i * 500_000;
            let ping = a.ping(t);
            let delay = if i % 2 == 0 { 1_000 } else { 3_000 };
            let pong = b.on_probe(ping, t + delay).unwrap();
            let back = if i == 5 { 1_200_000 } else { delay };
            if i % 4 != 3 {
                a.on_probe(pong, t + delay + back);
            }
        }
        let sparse = b.ping(4_000_000);
        assert!(a.on_probe(sparse, 4_001_000).is_some(), "answered");
        let s = a.sample(4_700_000, 1, None, None, true);
        // All ten settled (answered, or past the grace); answered: 0, 1, 2, 4, 6, 8, 9 (the
        // 6th came back after the grace). One ping of b's is too few to judge loss by.
        assert_eq!(s.qos.loss_pct, Some(30.0));
        // RTTs alternate 2 ms and 6 ms, and one took 1.2 s: all of it is delay variation.
        assert!(
            s.qos.jitter_ms.is_some_and(|j| j > 4.0),
            "{:?}",
            s.qos.jitter_ms
        );
        let steady = exchange(10, |_| 1_000, |_| false);
        assert_eq!(steady.qos.jitter_ms, Some(0.0));
        assert!(a.hears_pings(4_500_000, 1_000_000));
        assert!(!a.hears_pings(6_000_000, 1_000_000));
    }

    #[test]
    fn unknown_figures_stay_unknown() {
        let mut m = QosMeter::new();
        let s = m.sample(1_000_000, 9, None, None, true);
        assert_eq!(
            s.qos,
            LinkQos {
                last_ts: 9,
                ..Default::default()
            }
        );
        assert_eq!(s.health, Health::Up);
        assert_eq!(
            m.sample(2_000_000, 10, None, None, false).health,
            Health::Down
        );
    }

    #[test]
    fn bitrate_is_the_byte_delta_over_the_window() {
        let mut m = QosMeter::new();
        assert_eq!(
            m.sample(0, 0, None, Some(1_000), true).qos.bitrate_kbps,
            None
        );
        // 125 000 bytes in 1 s = 1 000 kbit/s.
        assert_eq!(
            m.sample(1_000_000, 1, None, Some(126_000), true)
                .qos
                .bitrate_kbps,
            Some(1000.0)
        );
    }

    #[test]
    fn ice_rtt_is_preferred_and_thresholds_apply() {
        let mut m = QosMeter::new();
        let pong = Probe {
            kind: ProbeKind::Pong,
            seq: 0,
            sent_us: 0,
        };
        m.on_probe(pong, 4_000);
        let s = m.sample(10_000, 1, Some(3.5), None, true);
        assert_eq!((s.qos.rtt_ms, s.qos.probe_rtt_ms), (Some(3.5), Some(4.0)));
        let check = |rtt, jitter, loss, want| {
            let q = LinkQos {
                rtt_ms: rtt,
                jitter_ms: jitter,
                loss_pct: loss,
                ..Default::default()
            };
            assert_eq!(health(true, &q), want, "{q:?}");
        };
        check(Some(300.0), None, None, Health::Up);
        check(Some(300.1), None, None, Health::Degraded);
        check(None, Some(50.1), None, Health::Degraded);
        check(None, None, Some(5.0), Health::Up);
        check(None, None, Some(49.9), Health::Degraded);
        check(None, None, Some(50.0), Health::Down);
    }
}
