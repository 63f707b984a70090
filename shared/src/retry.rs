//! When and how long to wait before trying a request again.
//!
//! Jittered exponential backoff (as Klaviyo's own SDKs: 0.5 s x 1.5^n, +-50 %), never
//! shorter than what the server asked for in Retry-After, bounded in attempts and by the
//! caller's deadline.

use std::time::Duration;

use crate::Deadline;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub factor: f64,
    pub max_delay: Duration,
    /// Fraction of the delay added or taken away at random (0.5 = +-50 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            factor: 1.5,
            max_delay: Duration::from_secs(60),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 = the first retry): the jittered backoff,
    /// or the server's Retry-After when that is longer.
    pub fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let exp = self.base_delay.as_secs_f64() * self.factor.powi(retry.min(64) as i32);
        let capped = exp.min(self.max_delay.as_secs_f64());
        let spread = capped * self.jitter;
        let jittered = (capped - spread + rng.f64() * 2.0 * spread).max(0.0);
        let backoff = Duration::from_secs_f64(jittered);
        match retry_after {
            Some(server) => server.max(backoff.min(server + Duration::from_secs(1))),
            None => backoff,
        }
    }

    /// Whether another attempt may start after `attempts_made`, waiting `wait` first,
    /// and still leave `reserve` (e.g. a request timeout) before the deadline.
    pub fn may_retry(
        &self,
        attempts_made: u32,
        wait: Duration,
        reserve: Duration,
        deadline: Deadline,
    ) -> bool {
        attempts_made < self.max_attempts && deadline.allows(wait + reserve)
    }
}

/// A Retry-After header: delay-seconds (what Klaviyo sends) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_within_jitter() {
        let p = RetryPolicy::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 0..6 {
            let nominal = 0.5 * 1.5f64.powi(retry as i32);
            for _ in 0..100 {
                let d = p.delay(retry, None, &mut rng).as_secs_f64();
                assert!(
                    d >= nominal * 0.5 - 1e-9 && d <= nominal * 1.5 + 1e-9,
                    "{d} vs {nominal}"
                );
            }
        }
        assert!(p.delay(40, None, &mut rng) <= Duration::from_secs(90));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            let d = p.delay(0, Some(Duration::from_secs(3)), &mut rng);
            assert!(
                d >= Duration::from_secs(3) && d <= Duration::from_secs(4),
                "{d:?}"
            );
        }
    }

    #[test]
    fn parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 60 "), Some(Duration::from_secs(60)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn attempts_and_deadline_bound_retries() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        let far = Deadline::after(Duration::from_secs(100));
        assert!(p.may_retry(2, Duration::from_secs(1), Duration::from_secs(1), far));
        assert!(!p.may_retry(3, Duration::from_secs(1), Duration::from_secs(1), far));
        let near = Deadline::after(Duration::from_secs(1));
        assert!(!p.may_retry(1, Duration::from_secs(2), Duration::ZERO, near));
    }
}
