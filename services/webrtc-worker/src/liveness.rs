//! Failure detection for one link, sans-IO: a heartbeat detector with a suspicion period.
//!
//! The probe channel carries pings and pongs every `MESH_PROBE_INTERVAL_MS`; anything heard on
//! it is a heartbeat. Silence for `suspect_after` makes the peer *suspect* (reported, not yet
//! acted on: one late burst of probes, a GC pause or a brief path change should not tear a link
//! down); silence for `dead_after` makes it *dead*, and the driver writes the link `down` at once
//! and closes it. A heartbeat during the suspicion period clears it.
//!
//! Silence is only held against the peer while this side was listening: if the driver itself was
//! stalled (its ticks, due every probe interval, came late: a paused process, a starved CPU),
//! the stall is not counted, since the peer's probes may be sitting unread in our own queue.
//! Time comes in as `now` (microseconds on the worker's monotonic clock), so every rule here is
//! tested without waiting.

use std::time::Duration;

/// What the detector thinks of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from within `suspect_after`.
    Alive,
    /// Silent for `suspect_after` or more, less than `dead_after`.
    Suspect,
    /// Silent for `dead_after` or more: the link is gone.
    Dead,
}

/// A change the driver acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Alive → Suspect, after this much silence.
    Suspected { silent: Duration },
    /// Suspect → Alive: a heartbeat arrived in time.
    Cleared,
    /// → Dead, after this much silence.
    Died { silent: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    pub suspect_after: Duration,
    pub dead_after: Duration,
    /// How often the driver ticks (its probe interval): a gap between ticks of more than twice
    /// this is a local stall.
    pub tick: Duration,
}

impl Default for DetectorConfig {
    /// The worker's defaults (`MESH_SUSPECT_AFTER_MS`, `MESH_DEAD_AFTER_MS`, the probe interval).
    fn default() -> Self {
        DetectorConfig {
            suspect_after: Duration::from_millis(1500),
            dead_after: Duration::from_secs(4),
            tick: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectorConfig,
    /// The last heartbeat (or when watching began), µs, moved on by any local stall.
    last_heard_us: u64,
    last_tick_us: u64,
    state: Liveness,
}

impl Detector {
    /// Starts watching at `now_us`: the peer counts as just heard (a new link is alive until its
    /// silence says otherwise).
    pub fn new(config: DetectorConfig, now_us: u64) -> Self {
        Detector {
            config,
            last_heard_us: now_us,
            last_tick_us: now_us,
            state: Liveness::Alive,
        }
    }

    pub fn state(&self) -> Liveness {
        self.state
    }

    /// A heartbeat at `now_us`. A dead peer stays dead: the link has been closed, and a new
    /// connection starts a new detector.
    pub fn heard(&mut self, now_us: u64) -> Option<Transition> {
        // Events can be handled out of order against `tick`'s clock reads; never go backwards.
        self.last_heard_us = self.last_heard_us.max(now_us);
        match self.state {
            Liveness::Suspect => {
                self.state = Liveness::Alive;
                Some(Transition::Cleared)
            }
            Liveness::Alive | Liveness::Dead => None,
        }
    }

    /// Re-evaluates at `now_us` (the driver calls it on its probe tick).
    pub fn tick(&mut self, now_us: u64) -> Option<Transition> {
        let gap = now_us.saturating_sub(self.last_tick_us);
        let tick = self.config.tick.as_micros() as u64;
        if gap > 2 * tick {
            // A tick more than one late: we were not listening for all but one tick of the
            // gap; give the peer that time back.
            self.last_heard_us = self.last_heard_us.saturating_add(gap - tick).min(now_us);
        }
        self.last_tick_us = self.last_tick_us.max(now_us);
        let silent = Duration::from_micros(now_us.saturating_sub(self.last_heard_us));
        match self.state {
            Liveness::Dead => None,
            _ if silent >= self.config.dead_after => {
                self.state = Liveness::Dead;
                Some(Transition::Died { silent })
            }
            Liveness::Alive if silent >= self.config.suspect_after => {
                self.state = Liveness::Suspect;
                Some(Transition::Suspected { silent })
            }
            Liveness::Alive | Liveness::Suspect => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;
    const TICK: u64 = 500 * MS;

    /// Round numbers for the arithmetic below: suspect after 2 s, dead after 5 s, ticks of 0.5 s.
    fn detector() -> Detector {
        Detector::new(
            DetectorConfig {
                suspect_after: Duration::from_secs(2),
                dead_after: Duration::from_secs(5),
                tick: Duration::from_millis(500),
            },
            0,
        )
    }

    /// Ticks on time (every 500 ms) from after `from` through `to`; the transitions and when.
    fn ticks(d: &mut Detector, from: u64, to: u64) -> Vec<(u64, Transition)> {
        let mut seen = Vec::new();
        let mut t = from;
        while t < to {
            t += TICK;
            if let Some(tr) = d.tick(t) {
                seen.push((t, tr));
            }
        }
        seen
    }

    #[test]
    fn steady_heartbeats_keep_the_peer_alive() {
        let mut d = detector();
        for t in (0..60_000 * MS).step_by(TICK as usize) {
            assert_eq!(d.heard(t), None);
            assert_eq!(d.tick(t + 250 * MS), None);
        }
        assert_eq!(d.state(), Liveness::Alive);
    }

    #[test]
    fn silence_makes_the_peer_suspect_then_dead_at_the_configured_bounds() {
        let mut d = detector();
        d.heard(1_000 * MS);
        let seen = ticks(&mut d, 0, 10_000 * MS);
        assert_eq!(
            seen,
            [
                (
                    3_000 * MS,
                    Transition::Suspected {
                        silent: Duration::from_secs(2)
                    }
                ),
                (
                    6_000 * MS,
                    Transition::Died {
                        silent: Duration::from_secs(5)
                    }
                ),
            ]
        );
        assert_eq!(d.state(), Liveness::Dead);
    }

    #[test]
    fn a_heartbeat_during_suspicion_clears_it_and_restarts_the_clock() {
        let mut d = detector();
        let seen = ticks(&mut d, 0, 2_500 * MS);
        assert!(matches!(seen[..], [(_, Transition::Suspected { .. })]));
        assert_eq!(d.heard(2_700 * MS), Some(Transition::Cleared));
        assert_eq!(d.state(), Liveness::Alive);
        // Dead is measured from the last heartbeat, not from the first silence.
        let seen = ticks(&mut d, 2_500 * MS, 9_000 * MS);
        assert_eq!(
            seen.iter().map(|(t, _)| *t / MS).collect::<Vec<_>>(),
            [5_000, 8_000]
        );
    }

    #[test]
    fn a_local_stall_is_not_held_against_the_peer() {
        // Our driver was starved for 7 s (a tick at 0.5 s, the next at 7.5 s): the peer's probes
        // may be queued unread, so no verdict from that gap.
        let mut d = detector();
        assert_eq!(d.tick(500 * MS), None);
        assert_eq!(d.tick(7_500 * MS), None);
        assert_eq!(d.state(), Liveness::Alive);
        // Silence after the stall, with ticks on time again, counts as usual: the 7 s gap minus
        // one tick (0.5 s) is given back, so the peer counts as heard at 6.5 s.
        let seen = ticks(&mut d, 7_500 * MS, 15_000 * MS);
        assert_eq!(
            seen.iter().map(|(t, _)| *t / MS).collect::<Vec<_>>(),
            [8_500, 11_500]
        );
        assert!(matches!(seen[1].1, Transition::Died { .. }));
    }

    #[test]
    fn the_dead_stay_dead_and_late_events_do_not_move_the_clock_back() {
        let mut d = detector();
        d.heard(3_000 * MS);
        d.heard(1_000 * MS); // handled late
        let seen = ticks(&mut d, 0, 10_000 * MS);
        assert_eq!(
            seen.iter().map(|(t, _)| *t / MS).collect::<Vec<_>>(),
            [5_000, 8_000]
        );
        assert_eq!(d.heard(8_100 * MS), None);
        assert_eq!(d.tick(8_500 * MS), None);
        assert_eq!(d.state(), Liveness::Dead);
    }

    #[test]
    fn with_the_shipped_defaults_a_stall_alone_raises_no_suspicion() {
        // Suspect after three ticks: the tightest setting the worker accepts.
        let mut d = Detector::new(DetectorConfig::default(), 0);
        assert_eq!(
            DetectorConfig::default().suspect_after,
            3 * DetectorConfig::default().tick
        );
        d.heard(400 * MS);
        assert_eq!(d.tick(500 * MS), None);
        // Stalled 5 s, then the queued heartbeats are handled after this late tick.
        assert_eq!(d.tick(5_500 * MS), None);
        assert_eq!(d.heard(5_510 * MS), None);
        assert_eq!(d.state(), Liveness::Alive);
    }
}
