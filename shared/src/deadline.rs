//! The time a piece of work must be done by: the Lambda invocation deadline, or a budget
//! a test chooses. Every upstream call takes one, so retries and rate-limit waits never
//! run past the point where Lambda would kill the function mid-request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

// tokio's clock, so tests with paused time see deadlines move with it.
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    pub fn after(budget: Duration) -> Self {
        Deadline(Instant::now() + budget)
    }

    /// From Lambda's `Context::deadline` (milliseconds since the Unix epoch).
    ///
    /// `cargo lambda watch` sends the function timeout as a relative number of milliseconds
    /// instead (e.g. 600000). No real epoch deadline is below 10^12 ms (2001), so such a
    /// value is taken as the time left, and tests under the emulator see the same budget.
    pub fn from_epoch_millis(deadline_ms: u64) -> Self {
        const EPOCH_2001_MS: u64 = 1_000_000_000_000;
        if deadline_ms < EPOCH_2001_MS {
            return Deadline::after(Duration::from_millis(deadline_ms));
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Deadline::after(Duration::from_millis(deadline_ms.saturating_sub(now_ms)))
    }

    pub fn instant(self) -> Instant {
        self.0
    }

    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// True when at least `needed` is left before the deadline.
    pub fn allows(self, needed: Duration) -> bool {
        self.remaining() >= needed
    }

    /// The same deadline moved earlier by `margin`, e.g. to stop a sync with time to spare.
    pub fn less(self, margin: Duration) -> Self {
        Deadline(self.0.checked_sub(margin).unwrap_or_else(Instant::now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_and_margin() {
        let d = Deadline::after(Duration::from_secs(10));
        assert!(d.allows(Duration::from_secs(9)));
        assert!(!d.allows(Duration::from_secs(11)));
        assert!(
            !d.less(Duration::from_secs(9))
                .allows(Duration::from_secs(2))
        );
    }

    #[test]
    fn epoch_deadline_in_the_past_has_nothing_left() {
        assert_eq!(
            Deadline::from_epoch_millis(1_600_000_000_000).remaining(),
            Duration::ZERO
        );
    }

    #[test]
    fn a_relative_deadline_from_the_local_emulator_is_time_left() {
        let d = Deadline::from_epoch_millis(600_000);
        assert!(
            d.remaining() > Duration::from_secs(599) && d.remaining() <= Duration::from_secs(600)
        );
    }
}
