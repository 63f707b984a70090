//! Builders that split any number of events and profiles into bulk requests at the
//! documented count and byte limits. (Implemented in the foundation issue's Klaviyo part.)

use bytes::Bytes;

/// One `POST /api/event-bulk-create-jobs` body, serialised, with what it holds.
#[derive(Debug, Clone)]
pub struct EventBulkRequest {
    pub body: Bytes,
    pub events: usize,
    pub profiles: usize,
}

/// One `POST /api/profile-bulk-import-jobs` body, serialised, with what it holds.
#[derive(Debug, Clone)]
pub struct ProfileBulkRequest {
    pub body: Bytes,
    pub profiles: usize,
}
