//! Klaviyo's per-endpoint rate limits: a burst (1 s) and a steady (60 s) fixed window.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// What a non-429 answer reports about the steady window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Headroom {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    burst: u32,
    steady: u32,
    second: u64,
    in_second: u32,
    minute: u64,
    in_minute: u32,
}

#[derive(Debug)]
pub(crate) struct Limiter {
    started: Instant,
    buckets: HashMap<&'static str, Bucket>,
}

/// The documented tier of each endpoint (burst per second, steady per minute).
pub(crate) fn tier(endpoint: &str) -> Option<(u32, u32)> {
    match endpoint {
        "POST /api/events" => Some((350, 3_500)),
        "POST /api/event-bulk-create-jobs" => Some((10, 150)),
        "POST /api/profile-import" => Some((75, 750)),
        "POST /api/profile-bulk-import-jobs"
        | "GET /api/profile-bulk-import-jobs/{id}"
        | "GET /api/profile-bulk-import-jobs/{id}/import-errors" => Some((10, 150)),
        _ => None,
    }
}

impl Limiter {
    pub(crate) fn new() -> Self {
        Limiter {
            started: Instant::now(),
            buckets: HashMap::new(),
        }
    }

    /// Count one request to `endpoint`, or refuse it with the seconds until it may be sent.
    pub(crate) fn admit(
        &mut self,
        endpoint: &'static str,
        now: Instant,
    ) -> Result<Option<Headroom>, u64> {
        let Some((burst, steady)) = tier(endpoint) else {
            return Ok(None);
        };
        let elapsed = now.saturating_duration_since(self.started);
        let second = elapsed.as_secs();
        let minute = second / 60;
        let bucket = self.buckets.entry(endpoint).or_insert(Bucket {
            burst,
            steady,
            second,
            in_second: 0,
            minute,
            in_minute: 0,
        });
        if bucket.second != second {
            bucket.second = second;
            bucket.in_second = 0;
        }
        if bucket.minute != minute {
            bucket.minute = minute;
            bucket.in_minute = 0;
        }
        let to_next_second = Duration::from_secs(second + 1).saturating_sub(elapsed);
        let to_next_minute = Duration::from_secs((minute + 1) * 60).saturating_sub(elapsed);
        if bucket.in_minute >= bucket.steady {
            return Err(ceil_secs(to_next_minute));
        }
        if bucket.in_second >= bucket.burst {
            return Err(ceil_secs(to_next_second));
        }
        bucket.in_second += 1;
        bucket.in_minute += 1;
        Ok(Some(Headroom {
            limit: bucket.steady,
            remaining: bucket.steady - bucket.in_minute,
            reset_secs: ceil_secs(to_next_minute),
        }))
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_with_seconds_to_wait() {
        let mut limiter = Limiter::new();
        let now = limiter.started;
        for _ in 0..10 {
            assert!(
                limiter
                    .admit("POST /api/event-bulk-create-jobs", now)
                    .is_ok()
            );
        }
        assert_eq!(
            limiter.admit("POST /api/event-bulk-create-jobs", now),
            Err(1)
        );
        // Other endpoints count separately.
        assert!(limiter.admit("POST /api/profile-import", now).is_ok());
        // The next second opens the burst window again.
        let later = now + Duration::from_millis(1001);
        assert!(
            limiter
                .admit("POST /api/event-bulk-create-jobs", later)
                .is_ok()
        );
    }

    #[test]
    fn steady_window_reports_headroom_and_refuses_until_the_minute_ends() {
        let mut limiter = Limiter::new();
        let start = limiter.started;
        let mut last = None;
        for i in 0..150u64 {
            last = limiter
                .admit(
                    "POST /api/profile-bulk-import-jobs",
                    start + Duration::from_millis(i * 200),
                )
                .unwrap();
        }
        assert_eq!(last.map(|h| (h.limit, h.remaining)), Some((150, 0)));
        let at = start + Duration::from_secs(30);
        assert_eq!(
            limiter.admit("POST /api/profile-bulk-import-jobs", at),
            Err(30)
        );
    }
}
