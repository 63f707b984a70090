//! TRIFFT: the Batch API client and the read endpoints the sync pages through.
//!
//! Documented by TRIFFT: base `https://api.trifft.io/v1`, `Authorization: Bearer`, 50
//! requests per 10 s with a one-minute lockout on 429, the Batch API (a JSON array of at
//! most 500 `{uri, method, payload}` items, answered 200 when queued), and the error body
//! (`event_id`, `code`, `message`, `exception`).
//!
//! **Assumed** (TRIFFT does not document them; every one is configurable in
//! [`paths::TrifftPaths`] and listed in docs/TRIFFT-ASSUMPTIONS.md): the batch path, the
//! item URIs for points, coupons and segments, and the member/activity feeds with cursor
//! pagination whose shapes are in [`model`].

pub mod client;
pub mod model;
pub mod paths;

use async_trait::async_trait;

pub use client::{TrifftClient, TrifftSettings};
pub use model::{ActivityEvent, BatchItem, BatchMethod, FeedPosition, Member, Page};
pub use paths::TrifftPaths;

use crate::klaviyo::ClientStats;
use crate::{Deadline, Result};

/// The Batch API takes at most this many items in one call.
pub const BATCH_MAX_ITEMS: usize = 500;
/// TRIFFT's documented limit: 50 requests in any 10 seconds.
pub const RATE_LIMIT: (u32, std::time::Duration) = (50, std::time::Duration::from_secs(10));
/// Going over the limit blocks every request for this long.
pub const LOCKOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[async_trait]
pub trait TrifftApi: Send + Sync {
    /// Submit one batch (1..=500 items). TRIFFT queues it and answers 200; nothing says
    /// whether the operations later succeed.
    async fn submit_batch(&self, items: &[BatchItem], deadline: Deadline) -> Result<()>;

    /// Members changed at or after the position, oldest change first (assumed feed).
    async fn members_changed(
        &self,
        from: &FeedPosition,
        limit: u32,
        deadline: Deadline,
    ) -> Result<Page<Member>>;

    /// Activity events at or after the position, in feed order (assumed feed).
    async fn activity_events(
        &self,
        from: &FeedPosition,
        limit: u32,
        deadline: Deadline,
    ) -> Result<Page<ActivityEvent>>;

    /// Requests, retries and throttles so far.
    fn stats(&self) -> ClientStats;
}
