//! The fixtures' one reading of the clock: a deadline for waiting on real processes and
//! servers, which keep real time, so a wait for them cannot run on a clock of our own.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    /// `within` from now.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn after(within: Duration) -> Self {
        Deadline(Instant::now() + within)
    }

    #[allow(clippy::disallowed_methods)]
    pub(crate) fn passed(self) -> bool {
        Instant::now() >= self.0
    }
}
