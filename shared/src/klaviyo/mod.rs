//! Klaviyo: the request types, the bulk builders that split any number of events and
//! profiles at the documented limits, and the HTTP client (auth, pinned revision,
//! JSON:API content type, pacing to each endpoint's rate tier, retries).

pub mod bulk;
pub mod client;
pub mod limits;
pub mod model;

use async_trait::async_trait;

pub use bulk::{EventBulkRequest, ProfileBulkRequest};
pub use client::{KlaviyoClient, KlaviyoSettings};
pub use model::{BulkImportJob, Event, ImportError, Profile, ProfileIdentity};

use crate::{Deadline, Result};

/// Counters a client keeps, for the sync summary and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests that were a retry of an earlier attempt.
    pub retries: u64,
    /// 429 answers received.
    pub throttles: u64,
}

/// The Klaviyo endpoints the bridge calls. `KlaviyoClient` is the real one; tests may
/// pass a fake.
#[async_trait]
pub trait KlaviyoApi: Send + Sync {
    /// `POST /api/events`: one event for one profile (202).
    async fn create_event(
        &self,
        identity: &ProfileIdentity,
        event: &Event,
        deadline: Deadline,
    ) -> Result<()>;

    /// `POST /api/event-bulk-create-jobs`: a request built by [`bulk::EventBulkBuilder`] (202).
    async fn bulk_create_events(
        &self,
        request: &EventBulkRequest,
        deadline: Deadline,
    ) -> Result<()>;

    /// `POST /api/profile-import`: upsert one profile; returns the Klaviyo profile id.
    async fn import_profile(&self, profile: &Profile, deadline: Deadline) -> Result<String>;

    /// `POST /api/profile-bulk-import-jobs`: a request built by [`bulk::ProfileBulkBuilder`].
    async fn bulk_import_profiles(
        &self,
        request: &ProfileBulkRequest,
        deadline: Deadline,
    ) -> Result<BulkImportJob>;

    /// `GET /api/profile-bulk-import-jobs/{id}`: the job's status and counts.
    async fn bulk_import_job(&self, job_id: &str, deadline: Deadline) -> Result<BulkImportJob>;

    /// `GET /api/profile-bulk-import-jobs/{id}/import-errors`, every page.
    async fn bulk_import_errors(
        &self,
        job_id: &str,
        deadline: Deadline,
    ) -> Result<Vec<ImportError>>;

    /// Requests, retries and throttles so far.
    fn stats(&self) -> ClientStats;
}
