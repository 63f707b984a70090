//! Klaviyo's documented limits (OpenAPI spec, revision 2026-07-15) and rate tiers.

use std::time::Duration;

/// Events in one `POST /api/event-bulk-create-jobs`.
pub const BULK_EVENTS_MAX: usize = 1_000;
/// Profiles in one `POST /api/profile-bulk-import-jobs`.
pub const BULK_PROFILES_MAX: usize = 10_000;
/// Bytes of one bulk request body (events or profiles).
pub const BULK_BODY_MAX_BYTES: usize = 5 * 1024 * 1024;
/// Bytes of one profile inside a bulk import, and of one `POST /api/profile-import` body.
pub const PROFILE_MAX_BYTES: usize = 100 * 1024;
/// Bytes of any one string value in an event or profile.
pub const STRING_MAX_BYTES: usize = 100 * 1024;
/// Bytes of one `POST /api/events` body.
pub const EVENT_BODY_MAX_BYTES: usize = 5 * 1024 * 1024;
/// A metric name must be shorter than this.
pub const METRIC_NAME_MAX_CHARS: usize = 128;
/// Properties of one event.
pub const EVENT_PROPERTIES_MAX: usize = 400;

/// A rate tier: at most `burst` requests in any second and `steady` in any minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateTier {
    pub burst: u32,
    pub steady: u32,
}

impl RateTier {
    pub const fn new(burst: u32, steady: u32) -> Self {
        RateTier { burst, steady }
    }

    /// The windows the tier is counted in, for a [`crate::pacing::RateLimiter`].
    pub fn windows(self) -> [(u32, Duration); 2] {
        [
            (self.burst, Duration::from_secs(1)),
            (self.steady, Duration::from_secs(60)),
        ]
    }
}

/// `POST /api/events`: XL.
pub const CREATE_EVENT_TIER: RateTier = RateTier::new(350, 3_500);
/// `POST /api/event-bulk-create-jobs`: M.
pub const BULK_EVENTS_TIER: RateTier = RateTier::new(10, 150);
/// `POST /api/profile-import`: L (the spec says 750/m).
pub const PROFILE_IMPORT_TIER: RateTier = RateTier::new(75, 750);
/// `POST /api/profile-bulk-import-jobs` and its GETs: M.
pub const BULK_PROFILES_TIER: RateTier = RateTier::new(10, 150);
