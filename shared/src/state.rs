//! State the functions keep between invocations, in one DynamoDB table (pay-per-request,
//! TTL on `expires_at`): idempotency records for the webhooks and the sync checkpoint.
//!
//! Both use conditional writes, so concurrent deliveries of one webhook claim it once,
//! and two sync runs can never both move the checkpoint.
//!
//! Implementations: DynamoDB (aws-sdk-dynamodb) and in-memory (sandbox and unit tests).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::Result;

/// What a delivery found when it tried to claim an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This delivery owns the key and must do the work, then `complete` or `release` it.
    Acquired,
    /// Another delivery finished the work; `outcome` is what it recorded.
    Completed { outcome: String },
    /// Another delivery is doing the work now (its claim expires at its own deadline).
    InProgress,
}

/// A checkpoint as stored: the sync's own JSON, and a version for conditional writes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    pub version: u64,
    pub body: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

#[async_trait]
pub trait StateStore: Send + Sync {
    /// Claim `key` for this delivery. The claim is IN_PROGRESS until `in_progress_until`
    /// (the invocation deadline): after that a redelivery may claim it again, so a crashed
    /// delivery does not block the key forever.
    async fn claim(&self, key: &str, in_progress_until: DateTime<Utc>) -> Result<Claim>;

    /// Mark `key` COMPLETED with `outcome`; the record expires after the idempotency TTL
    /// (48 h by default), longer than any sender's retries.
    async fn complete(&self, key: &str, outcome: &str) -> Result<()>;

    /// Give up a claim after a failure nothing was sent for, so a retry can do the work.
    async fn release(&self, key: &str) -> Result<()>;

    /// The checkpoint named `name`, if one was saved.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<StoredCheckpoint>>;

    /// Save the checkpoint if the stored version is still `expected_version` (`None`: no
    /// checkpoint yet). Returns the new version; `Error::Conflict` when another run moved it.
    async fn save_checkpoint(
        &self,
        name: &str,
        body: &serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<u64>;
}
