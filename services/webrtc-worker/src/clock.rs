//! The worker's clock: the one place it reads time. The wiring makes one and passes it to every
//! part; the sans-IO parts get plain numbers from it (`Now`).
//!
//! Monotonic time is tokio's, so a test that pauses tokio's clock drives the links' timers, the
//! failure detector and the QoS windows alike. Wall time (timestamps others read: signed offers,
//! link documents) is the system's in production; a test clock derives it from tokio's, so paused
//! time moves it too.

use std::time::Duration;

use mesh_types::UnixMillis;
use tokio::time::Instant;

/// One reading of the clock, as the sans-IO parts take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic microseconds since the clock was made: for intervals (RTT, jitter, silence).
    pub mono_us: u64,
    /// Wall time: for timestamps others read.
    pub wall_ms: UnixMillis,
}

#[derive(Debug, Clone, Copy)]
enum Wall {
    /// The system's clock.
    System,
    /// `at_start` plus tokio's time since the start: follows a paused clock.
    Tokio { at_start: UnixMillis },
}

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    wall: Wall,
}

impl Clock {
    /// The production clock: tokio's monotonic time, the system's wall time.
    pub fn system() -> Self {
        Clock {
            start: tokio_now(),
            wall: Wall::System,
        }
    }

    /// A clock whose wall time starts at `at_start` and moves only with tokio's clock, so a test
    /// with paused time sees both stand still and advance together.
    pub fn following_tokio(at_start: UnixMillis) -> Self {
        Clock {
            start: tokio_now(),
            wall: Wall::Tokio { at_start },
        }
    }

    pub fn now(&self) -> Now {
        let since = self.since_start();
        Now {
            mono_us: micros(since),
            wall_ms: self.wall_after(since),
        }
    }

    /// Wall time, for timestamps others read.
    pub fn now_ms(&self) -> UnixMillis {
        self.wall_after(self.since_start())
    }

    /// Monotonic time since the clock was made.
    pub fn since_start(&self) -> Duration {
        tokio_now().saturating_duration_since(self.start)
    }

    /// The monotonic instant `mono_us` stands for, as tokio's timers take it.
    pub fn instant_at(&self, mono_us: u64) -> Instant {
        self.start + Duration::from_micros(mono_us)
    }

    /// `after` from now, as tokio's timers take it.
    pub fn deadline_in(&self, after: Duration) -> Instant {
        tokio_now() + after
    }

    /// The current instant in std's type, for the transport's statistics.
    pub fn std_instant(&self) -> std::time::Instant {
        tokio_now().into_std()
    }

    fn wall_after(&self, since_start: Duration) -> UnixMillis {
        match self.wall {
            Wall::System => mesh_service::now_ms(),
            Wall::Tokio { at_start } => at_start.saturating_add(millis(since_start)),
        }
    }
}

// The clock is the one reader of tokio's time in the worker's library code.
#[allow(clippy::disallowed_methods)]
fn tokio_now() -> Instant {
    Instant::now()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_test_clock_moves_monotonic_and_wall_time_together_with_paused_time() {
        let clock = Clock::following_tokio(1_000_000);
        assert_eq!(
            clock.now(),
            Now {
                mono_us: 0,
                wall_ms: 1_000_000
            }
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(
            clock.now(),
            Now {
                mono_us: 1_500_000,
                wall_ms: 1_001_500
            }
        );
        assert_eq!(
            clock.instant_at(1_500_000),
            clock.deadline_in(Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_reads_wall_time_from_the_system() {
        let clock = Clock::system();
        let before = mesh_service::now_ms();
        let read = clock.now_ms();
        assert!(read >= before && read <= mesh_service::now_ms());
    }
}
