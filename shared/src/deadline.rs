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
    pub fn from_epoch_millis(deadline_ms: u64) -> Self {
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
        assert!(!d.less(Duration::from_secs(9)).allows(Duration::from_secs(2)));
    }

    #[test]
    fn epoch_deadline_in_the_past_has_nothing_left() {
        assert_eq!(Deadline::from_epoch_millis(1).remaining(), Duration::ZERO);
    }
}
