//! TRIFFT data as the bridge reads and writes it.
//!
//! The Batch item shape is documented. The member and activity-event shapes are
//! **assumed**: TRIFFT documents the 13 profile attributes and 15 metrics it sends to
//! Klaviyo but no read API, so these structs carry exactly what those attributes and
//! metrics need, with the payload of each event passed through as TRIFFT gives it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// HTTP methods the Batch API allows per item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BatchMethod {
    Get,
    Post,
    Delete,
}

/// One request inside a Batch API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    pub uri: String,
    pub method: BatchMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// Where to start reading a feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedPosition {
    /// Everything TRIFFT still has (backfill).
    Beginning,
    /// Changes at or after this time (a first incremental run).
    Since(DateTime<Utc>),
    /// An opaque cursor a previous page returned.
    Cursor(String),
}

/// One page of a feed. `next_cursor` is always the position after the last item, so a
/// checkpoint can store it even at the end of the feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: String,
    pub has_more: bool,
}

/// A venue as referenced from a member (favourite venue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VenueRef {
    pub id: String,
    pub name: String,
}

/// A loyalty member with the data behind Klaviyo's 13 standard attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// TRIFFT member UUID (Klaviyo `external_id` and `trifft_id`).
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
    /// Point balance, kept as TRIFFT sends it (integer or decimal).
    #[serde(default)]
    pub points: Option<serde_json::Number>,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub available_coupons: Option<u64>,
    /// Assigned coupons; TRIFFT does not document the element shape, so it passes through.
    #[serde(default)]
    pub coupons: Vec<Value>,
    #[serde(default)]
    pub fav_location: Option<VenueRef>,
    #[serde(default)]
    pub primary_card_id: Option<String>,
    /// Segment slugs.
    #[serde(default)]
    pub segments: Vec<String>,
    #[serde(default)]
    pub support_id: Option<String>,
    /// The member's custom parameters (`member.param.*` in TRIFFT templates).
    #[serde(default)]
    pub params: Map<String, Value>,
    pub updated_at: DateTime<Utc>,
}

/// One activity event: what TRIFFT's standard integration sends as a Klaviyo metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityEvent {
    /// TRIFFT event id: Klaviyo `unique_id`.
    pub id: String,
    /// snake_case event type, e.g. `transaction_created` (see `mapping::standard`).
    #[serde(rename = "type")]
    pub kind: String,
    pub member_id: String,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    pub payload: Map<String, Value>,
}
