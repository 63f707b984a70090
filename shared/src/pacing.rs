//! Client-side pacing: never send more than an endpoint's documented limit.
//!
//! A sliding-window log per limit ("at most N in any period"), which is stricter than
//! the fixed windows the vendors count in, so no fixed window can ever be exceeded
//! whatever its alignment. Each period is stretched by 1 % plus [`ARRIVAL_JITTER`]: the
//! vendor counts a request when it arrives, which is later than when we let it go by the
//! time its body takes to upload, and that differs from one request to the next.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

use crate::Deadline;

/// How much later one request may arrive than another sent at the same time (a 5 MB
/// bulk body behind a small one). 10 ms was not enough with two bulk requests in flight
/// on a busy machine: the emulator counted 11 in one second.
pub const ARRIVAL_JITTER: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Window {
    limit: usize,
    period: Duration,
    sent: VecDeque<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    windows: Vec<Window>,
    /// Nobody sends before this instant (a vendor lockout after a 429).
    paused_until: Option<Instant>,
}

/// A rate limiter shared by every request to one endpoint (or one API).
#[derive(Debug, Default)]
pub struct RateLimiter {
    inner: Mutex<Inner>,
}

impl RateLimiter {
    /// `windows`: pairs of (at most this many requests, in any period this long).
    pub fn new(windows: &[(u32, Duration)]) -> Self {
        let windows = windows
            .iter()
            .filter(|(limit, _)| *limit > 0)
            .map(|&(limit, period)| Window {
                limit: limit as usize,
                period: period + period / 100 + ARRIVAL_JITTER,
                sent: VecDeque::with_capacity(limit as usize),
            })
            .collect();
        RateLimiter {
            inner: Mutex::new(Inner {
                windows,
                paused_until: None,
            }),
        }
    }

    /// A limiter that never waits (except for a lockout set by [`RateLimiter::pause_until`]).
    pub fn unlimited() -> Self {
        RateLimiter::default()
    }

    /// Wait until a request may be sent and count it as sent. If the wait would pass
    /// `deadline`, nothing is counted and the wait that would have been needed is returned.
    pub async fn acquire(&self, deadline: Deadline) -> Result<(), Duration> {
        loop {
            let wake_at = {
                let mut inner = self.inner.lock().await;
                let now = Instant::now();
                let earliest = inner.earliest_send(now);
                if earliest <= now {
                    for w in &mut inner.windows {
                        w.sent.push_back(now);
                    }
                    return Ok(());
                }
                if earliest > deadline.instant() {
                    return Err(earliest - now);
                }
                earliest
            };
            tokio::time::sleep_until(wake_at).await;
        }
    }

    /// Hold every request until `until` (e.g. TRIFFT blocks all requests for a minute
    /// after a 429; Klaviyo's Retry-After).
    pub async fn pause_until(&self, until: Instant) {
        let mut inner = self.inner.lock().await;
        inner.paused_until = Some(inner.paused_until.map_or(until, |p| p.max(until)));
    }
}

impl Inner {
    fn earliest_send(&mut self, now: Instant) -> Instant {
        let mut earliest = now;
        if let Some(p) = self.paused_until {
            earliest = earliest.max(p);
        }
        for w in &mut self.windows {
            while w
                .sent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= w.period)
            {
                w.sent.pop_front();
            }
            if w.sent.len() >= w.limit {
                // The slot frees when the oldest of the last `limit` sends leaves the window.
                let oldest = w.sent[w.sent.len() - w.limit];
                earliest = earliest.max(oldest + w.period);
            }
        }
        earliest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_limit_in_any_window() {
        let limiter =
            RateLimiter::new(&[(10, Duration::from_secs(1)), (30, Duration::from_secs(60))]);
        let deadline = Deadline::after(Duration::from_secs(600));
        let mut sent = Vec::new();
        for _ in 0..45 {
            limiter.acquire(deadline).await.unwrap();
            sent.push(Instant::now());
        }
        for (i, t) in sent.iter().enumerate() {
            let in_second = sent[i..]
                .iter()
                .filter(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count();
            let in_minute = sent[i..]
                .iter()
                .filter(|u| u.duration_since(*t) < Duration::from_secs(60))
                .count();
            assert!(in_second <= 10, "{in_second} in one second");
            assert!(in_minute <= 30, "{in_minute} in one minute");
        }
        // 45 requests at 30/min need a bit more than one minute, not much more.
        let span = sent[44].duration_since(sent[0]);
        assert!(
            span >= Duration::from_secs(60) && span < Duration::from_secs(62),
            "{span:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_a_wait_past_the_deadline() {
        let limiter = RateLimiter::new(&[(1, Duration::from_secs(10))]);
        let deadline = Deadline::after(Duration::from_secs(5));
        limiter.acquire(deadline).await.unwrap();
        let wait = limiter.acquire(deadline).await.unwrap_err();
        assert!(wait > Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request() {
        let limiter = RateLimiter::unlimited();
        let start = Instant::now();
        limiter.pause_until(start + Duration::from_secs(60)).await;
        limiter
            .acquire(Deadline::after(Duration::from_secs(120)))
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_secs(60));
    }
}
