//! The worker's clock: the one place it reads wall and monotonic time (a driver may), handed to
//! the sans-IO parts as plain numbers.

use std::time::Instant;

use mesh_types::UnixMillis;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    #[allow(clippy::disallowed_methods)]
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// Wall time, for timestamps others read.
    pub fn now_ms(&self) -> UnixMillis {
        mesh_service::now_ms()
    }

    /// Monotonic microseconds since the worker started, for intervals (RTT, jitter, bitrate).
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.instant().duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    #[allow(clippy::disallowed_methods)]
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// The same monotonic clock, as tokio's timers take it.
    #[allow(clippy::disallowed_methods)]
    pub fn deadline_in(&self, after: std::time::Duration) -> tokio::time::Instant {
        tokio::time::Instant::now() + after
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
