//! State the functions keep between invocations, in one DynamoDB table (pay-per-request,
//! TTL on `expires_at`): idempotency records for the webhooks and the sync checkpoint.
//!
//! Both use conditional writes, so concurrent deliveries of one webhook claim it once,
//! and two sync runs can never both move the checkpoint.
//!
//! Implementations: DynamoDB (aws-sdk-dynamodb) and in-memory (sandbox and unit tests),
//! with the same semantics (the shared [`conformance`] cases run against both).
//!
//! Table layout: partition key `pk` (String) only, TTL attribute `expires_at` (epoch
//! seconds; DynamoDB deletes lazily, so expiry is also checked on read and in conditions).
//! - `idem#<key>`: `status` (IN_PROGRESS | COMPLETED), `in_progress_until` (epoch ms),
//!   `claim_id` (which claim owns it), `outcome` (once completed), `expires_at`.
//! - `checkpoint#<name>`: `version` (N), `body` (S, JSON), `updated_at` (S, RFC 3339).
//!
//! Keys come from webhook input: one longer than 128 bytes or with a character outside
//! `[A-Za-z0-9._:/@+=-]` is stored as `h#<sha256 hex>` (a raw key never contains `#`, so
//! the two forms cannot collide).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::{self, Vars};
use crate::{Error, Result};

/// Variable naming the DynamoDB table; unset means in-memory state (sandbox).
pub const STATE_TABLE_VAR: &str = "STATE_TABLE_NAME";
/// Variable setting how long a completed idempotency record is kept, in hours.
pub const IDEMPOTENCY_TTL_VAR: &str = "IDEMPOTENCY_TTL_HOURS";
/// Longer than any sender's retries (Klaviyo retries webhooks for hours, not days).
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(48 * 3600);

const STATUS_IN_PROGRESS: &str = "IN_PROGRESS";
const STATUS_COMPLETED: &str = "COMPLETED";
const MAX_RAW_KEY_BYTES: usize = 128;
/// A claim whose record changes between the write and the read-back is tried again.
const CLAIM_ATTEMPTS: usize = 3;

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
    /// (48 h by default), longer than any sender's retries. `Error::Conflict` when the key
    /// is not (or no longer) held by a claim made through this store instance (a claim
    /// that lapsed and was taken over by another delivery is no longer ours).
    async fn complete(&self, key: &str, outcome: &str) -> Result<()>;

    /// Give up a claim after a failure nothing was sent for, so a retry can do the work.
    /// A key that is not ours to release (never claimed here, completed, or claimed by
    /// another delivery since) is left alone.
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

/// The state store the settings ask for: DynamoDB when `STATE_TABLE_NAME` is set (AWS
/// config from the environment), else in memory (sandbox).
pub async fn from_env(vars: &(impl Vars + ?Sized)) -> Result<Arc<dyn StateStore>> {
    let ttl = idempotency_ttl(vars)?;
    match config::optional(vars, STATE_TABLE_VAR) {
        Some(table) => {
            let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let client = aws_sdk_dynamodb::Client::new(&sdk_config);
            Ok(Arc::new(
                DynamoDbStateStore::new(client, table).with_idempotency_ttl(ttl),
            ))
        }
        None => Ok(Arc::new(MemoryStateStore::new().with_idempotency_ttl(ttl))),
    }
}

/// Like [`from_env`] with an AWS config the caller already loaded.
pub fn from_sdk_config(
    vars: &(impl Vars + ?Sized),
    sdk_config: &aws_config::SdkConfig,
) -> Result<Arc<dyn StateStore>> {
    let ttl = idempotency_ttl(vars)?;
    match config::optional(vars, STATE_TABLE_VAR) {
        Some(table) => Ok(Arc::new(
            DynamoDbStateStore::new(aws_sdk_dynamodb::Client::new(sdk_config), table)
                .with_idempotency_ttl(ttl),
        )),
        None => Ok(Arc::new(MemoryStateStore::new().with_idempotency_ttl(ttl))),
    }
}

fn idempotency_ttl(vars: &(impl Vars + ?Sized)) -> Result<Duration> {
    let hours: u64 = config::parsed_or(
        vars,
        IDEMPOTENCY_TTL_VAR,
        DEFAULT_IDEMPOTENCY_TTL.as_secs() / 3600,
    )?;
    if hours == 0 {
        return Err(Error::config(
            IDEMPOTENCY_TTL_VAR,
            "must be at least 1 hour",
        ));
    }
    Ok(Duration::from_secs(hours * 3600))
}

/// The key as stored after the kind prefix: raw when short and plain, else hashed.
fn stored_key(key: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._:/@+=-".contains(c);
    if !key.is_empty() && key.len() <= MAX_RAW_KEY_BYTES && key.chars().all(plain) {
        key.to_string()
    } else {
        format!("h#{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}

/// The partition key of an idempotency record.
pub fn idempotency_pk(key: &str) -> String {
    format!("idem#{}", stored_key(key))
}

/// The partition key of a checkpoint.
pub fn checkpoint_pk(name: &str) -> String {
    format!("checkpoint#{}", stored_key(name))
}

fn new_claim_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn expires_at_s(now: DateTime<Utc>, ttl: Duration) -> i64 {
    now.timestamp()
        .saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

/// Claim ids this process holds, so `complete` and `release` act only on our own claim.
#[derive(Debug, Default)]
struct ClaimIds(Mutex<HashMap<String, String>>);

impl ClaimIds {
    fn insert(&self, pk: &str, id: String) {
        self.lock().insert(pk.to_string(), id);
    }
    fn get(&self, pk: &str) -> Option<String> {
        self.lock().get(pk).cloned()
    }
    fn remove(&self, pk: &str) {
        self.lock().remove(pk);
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A panic elsewhere while holding the map cannot leave it inconsistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

// ---------------------------------------------------------------------------------------
// DynamoDB

/// State in a DynamoDB table with the layout in the module docs.
#[derive(Debug)]
pub struct DynamoDbStateStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    ttl: Duration,
    claims: ClaimIds,
}

impl DynamoDbStateStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table_name: impl Into<String>) -> Self {
        DynamoDbStateStore {
            client,
            table: table_name.into(),
            ttl: DEFAULT_IDEMPOTENCY_TTL,
            claims: ClaimIds::default(),
        }
    }

    /// How long completed idempotency records are kept (`IDEMPOTENCY_TTL_HOURS`).
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    async fn read(&self, pk: &str) -> Result<Option<HashMap<String, AttributeValue>>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", e))?;
        Ok(output.item)
    }

    /// Throttling, 5xx and transport failures are `State` (retryable); a missing table
    /// is a configuration error naming `STATE_TABLE_NAME`.
    fn error<E>(&self, operation: &str, error: SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if let SdkError::ServiceError(context) = &error
            && context.err().code() == Some("ResourceNotFoundException")
        {
            return Error::config(
                STATE_TABLE_VAR,
                format!("table {} does not exist", self.table),
            );
        }
        Error::State(format!(
            "DynamoDB {operation} on {}: {}",
            self.table,
            DisplayErrorContext(&error)
        ))
    }
}

fn is_condition_failed<E: ProvideErrorMetadata>(error: &SdkError<E>) -> bool {
    matches!(error, SdkError::ServiceError(c) if c.err().code() == Some("ConditionalCheckFailedException"))
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

#[async_trait]
impl StateStore for DynamoDbStateStore {
    async fn claim(&self, key: &str, in_progress_until: DateTime<Utc>) -> Result<Claim> {
        let pk = idempotency_pk(key);
        for _ in 0..CLAIM_ATTEMPTS {
            let now = Utc::now();
            let claim_id = new_claim_id();
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("status", s(STATUS_IN_PROGRESS))
                .item("in_progress_until", n(in_progress_until.timestamp_millis()))
                .item("claim_id", s(&claim_id))
                .item("expires_at", n(expires_at_s(now, self.ttl)))
                .condition_expression(
                    "attribute_not_exists(pk) OR (#status = :in_progress AND #until < :now_ms) OR #expires < :now_s",
                )
                .expression_attribute_names("#status", "status")
                .expression_attribute_names("#until", "in_progress_until")
                .expression_attribute_names("#expires", "expires_at")
                .expression_attribute_values(":in_progress", s(STATUS_IN_PROGRESS))
                .expression_attribute_values(":now_ms", n(now.timestamp_millis()))
                .expression_attribute_values(":now_s", n(now.timestamp()))
                .send()
                .await;
            match put {
                Ok(_) => {
                    self.claims.insert(&pk, claim_id);
                    return Ok(Claim::Acquired);
                }
                Err(e) if is_condition_failed(&e) => {}
                Err(e) => return Err(self.error("PutItem", e)),
            }
            // Someone holds the key: say who, from a consistent read.
            let Some(item) = self.read(&pk).await? else {
                continue;
            };
            let now = Utc::now();
            if get_n(&item, "expires_at").is_some_and(|at| at < now.timestamp()) {
                continue;
            }
            match get_s(&item, "status") {
                Some(STATUS_COMPLETED) => {
                    let outcome = get_s(&item, "outcome").unwrap_or_default().to_string();
                    return Ok(Claim::Completed { outcome });
                }
                Some(STATUS_IN_PROGRESS)
                    if get_n(&item, "in_progress_until")
                        .is_some_and(|until| until >= now.timestamp_millis()) =>
                {
                    return Ok(Claim::InProgress);
                }
                Some(STATUS_IN_PROGRESS) => continue,
                other => {
                    return Err(Error::State(format!(
                        "idempotency record {pk} has an unknown status {other:?}"
                    )));
                }
            }
        }
        Err(Error::Conflict(format!(
            "the claim on idempotency record {pk} kept changing; try again"
        )))
    }

    async fn complete(&self, key: &str, outcome: &str) -> Result<()> {
        let pk = idempotency_pk(key);
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression(
                "SET #status = :completed, #outcome = :outcome, #expires = :expires REMOVE #until",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#outcome", "outcome")
            .expression_attribute_names("#expires", "expires_at")
            .expression_attribute_names("#until", "in_progress_until")
            .expression_attribute_values(":completed", s(STATUS_COMPLETED))
            .expression_attribute_values(":in_progress", s(STATUS_IN_PROGRESS))
            .expression_attribute_values(":outcome", s(outcome))
            .expression_attribute_values(":expires", n(expires_at_s(Utc::now(), self.ttl)));
        let Some(claim_id) = self.claims.get(&pk) else {
            return Err(not_ours(&pk));
        };
        update = update
            .condition_expression("#status = :in_progress AND claim_id = :claim_id")
            .expression_attribute_values(":claim_id", s(claim_id));
        match update.send().await {
            Ok(_) => {
                self.claims.remove(&pk);
                Ok(())
            }
            Err(e) if is_condition_failed(&e) => {
                self.claims.remove(&pk);
                Err(not_ours(&pk))
            }
            Err(e) => Err(self.error("UpdateItem", e)),
        }
    }

    async fn release(&self, key: &str) -> Result<()> {
        let pk = idempotency_pk(key);
        // Without a claim of ours there is nothing to give up.
        let Some(claim_id) = self.claims.get(&pk) else {
            return Ok(());
        };
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .condition_expression("#status = :in_progress AND claim_id = :claim_id")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s(STATUS_IN_PROGRESS))
            .expression_attribute_values(":claim_id", s(claim_id))
            .send()
            .await;
        self.claims.remove(&pk);
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(self.error("DeleteItem", e)),
        }
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<StoredCheckpoint>> {
        let pk = checkpoint_pk(name);
        let Some(item) = self.read(&pk).await? else {
            return Ok(None);
        };
        let malformed = |what: &str| Error::State(format!("checkpoint {pk} has {what}"));
        let version = get_n(&item, "version")
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| malformed("no valid version"))?;
        let body = get_s(&item, "body")
            .and_then(|b| serde_json::from_str(b).ok())
            .ok_or_else(|| malformed("a body that is not JSON"))?;
        let updated_at = get_s(&item, "updated_at")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| malformed("no valid updated_at"))?;
        Ok(Some(StoredCheckpoint {
            version,
            body,
            updated_at,
        }))
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        body: &serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        let pk = checkpoint_pk(name);
        let version = next_version(&pk, expected_version)?;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&pk))
            .item("version", n(version))
            .item("body", s(body.to_string()))
            .item(
                "updated_at",
                s(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
        put = match expected_version {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(expected) => put
                .condition_expression("#version = :expected")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":expected", n(expected)),
        };
        match put.send().await {
            Ok(_) => Ok(version),
            Err(e) if is_condition_failed(&e) => Err(checkpoint_conflict(&pk, expected_version)),
            Err(e) => Err(self.error("PutItem", e)),
        }
    }
}

fn not_ours(pk: &str) -> Error {
    Error::Conflict(format!(
        "idempotency record {pk} is not claimed by this delivery (any more)"
    ))
}

fn next_version(pk: &str, expected_version: Option<u64>) -> Result<u64> {
    match expected_version {
        None => Ok(1),
        Some(v) => v
            .checked_add(1)
            .ok_or_else(|| Error::State(format!("checkpoint {pk} version overflows"))),
    }
}

fn checkpoint_conflict(pk: &str, expected_version: Option<u64>) -> Error {
    match expected_version {
        None => Error::Conflict(format!(
            "checkpoint {pk} already exists; another run saved it first"
        )),
        Some(v) => Error::Conflict(format!(
            "checkpoint {pk} is no longer at version {v}; another run moved it"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// In memory

#[derive(Debug, Clone)]
struct IdempotencyRecord {
    completed_outcome: Option<String>,
    in_progress_until_ms: i64,
    claim_id: String,
    expires_at_s: i64,
}

#[derive(Debug, Default)]
struct Tables {
    idempotency: HashMap<String, IdempotencyRecord>,
    checkpoints: HashMap<String, StoredCheckpoint>,
}

/// State in process memory, for the sandbox and tests. Same semantics as DynamoDB,
/// including expiry.
#[derive(Debug)]
pub struct MemoryStateStore {
    ttl: Duration,
    tables: Mutex<Tables>,
    claims: ClaimIds,
}

impl Default for MemoryStateStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStateStore {
    pub fn new() -> Self {
        MemoryStateStore {
            ttl: DEFAULT_IDEMPOTENCY_TTL,
            tables: Mutex::default(),
            claims: ClaimIds::default(),
        }
    }

    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn claim(&self, key: &str, in_progress_until: DateTime<Utc>) -> Result<Claim> {
        let pk = idempotency_pk(key);
        let now = Utc::now();
        let mut tables = self.tables();
        if let Some(record) = tables.idempotency.get(&pk) {
            let expired = record.expires_at_s < now.timestamp();
            let stale_claim = record.completed_outcome.is_none()
                && record.in_progress_until_ms < now.timestamp_millis();
            if !expired && !stale_claim {
                return Ok(match &record.completed_outcome {
                    Some(outcome) => Claim::Completed {
                        outcome: outcome.clone(),
                    },
                    None => Claim::InProgress,
                });
            }
        }
        let claim_id = new_claim_id();
        tables.idempotency.insert(
            pk.clone(),
            IdempotencyRecord {
                completed_outcome: None,
                in_progress_until_ms: in_progress_until.timestamp_millis(),
                claim_id: claim_id.clone(),
                expires_at_s: expires_at_s(now, self.ttl),
            },
        );
        self.claims.insert(&pk, claim_id);
        Ok(Claim::Acquired)
    }

    async fn complete(&self, key: &str, outcome: &str) -> Result<()> {
        let pk = idempotency_pk(key);
        let ours = self.claims.get(&pk);
        self.claims.remove(&pk);
        let mut tables = self.tables();
        match tables.idempotency.get_mut(&pk) {
            Some(record)
                if record.completed_outcome.is_none()
                    && ours.as_ref() == Some(&record.claim_id) =>
            {
                record.completed_outcome = Some(outcome.to_string());
                record.expires_at_s = expires_at_s(Utc::now(), self.ttl);
                Ok(())
            }
            _ => Err(not_ours(&pk)),
        }
    }

    async fn release(&self, key: &str) -> Result<()> {
        let pk = idempotency_pk(key);
        let ours = self.claims.get(&pk);
        self.claims.remove(&pk);
        let mut tables = self.tables();
        let releasable = tables.idempotency.get(&pk).is_some_and(|record| {
            record.completed_outcome.is_none() && ours.as_ref() == Some(&record.claim_id)
        });
        if releasable {
            tables.idempotency.remove(&pk);
        }
        Ok(())
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<StoredCheckpoint>> {
        Ok(self.tables().checkpoints.get(&checkpoint_pk(name)).cloned())
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        body: &serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        let pk = checkpoint_pk(name);
        let version = next_version(&pk, expected_version)?;
        let mut tables = self.tables();
        let stored_version = tables.checkpoints.get(&pk).map(|c| c.version);
        if stored_version != expected_version {
            return Err(checkpoint_conflict(&pk, expected_version));
        }
        tables.checkpoints.insert(
            pk,
            StoredCheckpoint {
                version,
                body: body.clone(),
                updated_at: Utc::now(),
            },
        );
        Ok(version)
    }
}

/// Behaviour every [`StateStore`] must show; run against the memory store by the unit
/// tests and against DynamoDB (moto) by the e2e tests. Each case takes a `prefix` so
/// cases can share one table.
#[cfg(any(test, feature = "test-support"))]
pub mod conformance {
    use super::*;

    fn soon() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::minutes(5)
    }

    pub async fn claim_then_duplicate_is_in_progress(store: &dyn StateStore, prefix: &str) {
        let key = format!("{prefix}-dup");
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::Acquired);
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::InProgress);
        assert_eq!(
            store.claim(&format!("{key}-other"), soon()).await.unwrap(),
            Claim::Acquired
        );
    }

    pub async fn completed_key_reports_its_outcome(store: &dyn StateStore, prefix: &str) {
        let key = format!("{prefix}-done");
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::Acquired);
        store.complete(&key, r#"{"queued":3}"#).await.unwrap();
        let expected = Claim::Completed {
            outcome: r#"{"queued":3}"#.to_string(),
        };
        assert_eq!(store.claim(&key, soon()).await.unwrap(), expected);
        // Completing again is not ours to do: the work was recorded once.
        assert!(matches!(
            store.complete(&key, "again").await,
            Err(Error::Conflict(_))
        ));
        assert_eq!(store.claim(&key, soon()).await.unwrap(), expected);
        // Nor can it be released.
        store.release(&key).await.unwrap();
        assert_eq!(store.claim(&key, soon()).await.unwrap(), expected);
    }

    pub async fn expired_in_progress_claim_is_reclaimed(store: &dyn StateStore, prefix: &str) {
        let key = format!("{prefix}-crashed");
        let past = Utc::now() - chrono::Duration::seconds(1);
        // A delivery whose deadline has passed (it crashed or timed out).
        assert_eq!(store.claim(&key, past).await.unwrap(), Claim::Acquired);
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::Acquired);
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::InProgress);
        store.complete(&key, "ok").await.unwrap();
        assert_eq!(
            store.claim(&key, soon()).await.unwrap(),
            Claim::Completed {
                outcome: "ok".into()
            }
        );
    }

    pub async fn release_lets_a_retry_claim(store: &dyn StateStore, prefix: &str) {
        let key = format!("{prefix}-released");
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::Acquired);
        store.release(&key).await.unwrap();
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::Acquired);
        // Releasing a key never claimed is harmless.
        store.release(&format!("{prefix}-never")).await.unwrap();
    }

    pub async fn complete_without_claim_is_a_conflict(store: &dyn StateStore, prefix: &str) {
        let key = format!("{prefix}-unclaimed");
        let e = store.complete(&key, "ok").await.unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert!(e.is_retryable());
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::Acquired);
    }

    pub async fn long_and_odd_keys_are_distinct(store: &dyn StateStore, prefix: &str) {
        let long = format!("{prefix}-{}", "x".repeat(5000));
        let keys = [
            long.clone(),
            format!("{long}y"),
            format!("{prefix} with spaces"),
            format!("{prefix}#with#hashes"),
            format!("{prefix}-ünïcødé-✓"),
            format!("{prefix}\n\"quoted\""),
        ];
        for key in &keys {
            assert_eq!(
                store.claim(key, soon()).await.unwrap(),
                Claim::Acquired,
                "{key:.40}"
            );
        }
        for key in &keys {
            store.complete(key, &key.len().to_string()).await.unwrap();
        }
        for key in &keys {
            let outcome = key.len().to_string();
            assert_eq!(
                store.claim(key, soon()).await.unwrap(),
                Claim::Completed { outcome }
            );
        }
    }

    pub async fn checkpoint_moves_only_from_the_expected_version(
        store: &dyn StateStore,
        prefix: &str,
    ) {
        let name = format!("{prefix}-sync");
        assert_eq!(store.load_checkpoint(&name).await.unwrap(), None);
        let first = serde_json::json!({"members_since": "2026-01-01T00:00:00Z", "cursor": null});
        assert_eq!(store.save_checkpoint(&name, &first, None).await.unwrap(), 1);
        let e = store
            .save_checkpoint(&name, &first, None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");

        let second =
            serde_json::json!({"members_since": "2026-01-02T00:00:00Z", "cursor": "abc", "n": 1.5});
        assert_eq!(
            store
                .save_checkpoint(&name, &second, Some(1))
                .await
                .unwrap(),
            2
        );
        // A second run that read version 1 loses.
        let e = store
            .save_checkpoint(&name, &first, Some(1))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        let e = store
            .save_checkpoint(&name, &first, Some(7))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");

        let stored = store.load_checkpoint(&name).await.unwrap().unwrap();
        assert_eq!(stored.version, 2);
        assert_eq!(stored.body, second);
        assert!(
            (Utc::now() - stored.updated_at).num_seconds().abs() < 600,
            "{}",
            stored.updated_at
        );
        // Checkpoints and idempotency keys of the same name do not collide.
        assert_eq!(store.claim(&name, soon()).await.unwrap(), Claim::Acquired);
        assert_eq!(
            store.load_checkpoint(&name).await.unwrap().unwrap().version,
            2
        );
    }

    pub async fn concurrent_claims_acquire_once(store: Arc<dyn StateStore>, prefix: &str) {
        let key = format!("{prefix}-race");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { store.claim(&key, soon()).await })
            })
            .collect();
        let mut claims = Vec::new();
        for task in tasks {
            claims.push(task.await.unwrap().unwrap());
        }
        let acquired = claims.iter().filter(|c| **c == Claim::Acquired).count();
        let in_progress = claims.iter().filter(|c| **c == Claim::InProgress).count();
        assert_eq!((acquired, in_progress), (1, 19), "{claims:?}");
    }

    /// For a store built with a zero idempotency TTL: a completed record past its TTL
    /// (not yet deleted by DynamoDB) no longer blocks the key.
    pub async fn records_past_their_ttl_are_reclaimed(store: &dyn StateStore, prefix: &str) {
        let key = format!("{prefix}-ttl");
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::Acquired);
        store.complete(&key, "old").await.unwrap();
        // expires_at is in whole seconds; wait until it is in the past.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(store.claim(&key, soon()).await.unwrap(), Claim::Acquired);
    }

    /// Every case but the TTL one, against `store`.
    pub async fn run_all(store: Arc<dyn StateStore>, prefix: &str) {
        claim_then_duplicate_is_in_progress(store.as_ref(), prefix).await;
        completed_key_reports_its_outcome(store.as_ref(), prefix).await;
        expired_in_progress_claim_is_reclaimed(store.as_ref(), prefix).await;
        release_lets_a_retry_claim(store.as_ref(), prefix).await;
        complete_without_claim_is_a_conflict(store.as_ref(), prefix).await;
        long_and_odd_keys_are_distinct(store.as_ref(), prefix).await;
        checkpoint_moves_only_from_the_expected_version(store.as_ref(), prefix).await;
        concurrent_claims_acquire_once(store, prefix).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Arc<dyn StateStore> {
        Arc::new(MemoryStateStore::new())
    }

    #[tokio::test]
    async fn memory_claim_then_duplicate_is_in_progress() {
        conformance::claim_then_duplicate_is_in_progress(memory().as_ref(), "t").await;
    }

    #[tokio::test]
    async fn memory_completed_key_reports_its_outcome() {
        conformance::completed_key_reports_its_outcome(memory().as_ref(), "t").await;
    }

    #[tokio::test]
    async fn memory_expired_in_progress_claim_is_reclaimed() {
        conformance::expired_in_progress_claim_is_reclaimed(memory().as_ref(), "t").await;
    }

    #[tokio::test]
    async fn memory_release_lets_a_retry_claim() {
        conformance::release_lets_a_retry_claim(memory().as_ref(), "t").await;
    }

    #[tokio::test]
    async fn memory_complete_without_claim_is_a_conflict() {
        conformance::complete_without_claim_is_a_conflict(memory().as_ref(), "t").await;
    }

    #[tokio::test]
    async fn memory_long_and_odd_keys_are_distinct() {
        conformance::long_and_odd_keys_are_distinct(memory().as_ref(), "t").await;
    }

    #[tokio::test]
    async fn memory_checkpoint_moves_only_from_the_expected_version() {
        conformance::checkpoint_moves_only_from_the_expected_version(memory().as_ref(), "t").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_concurrent_claims_acquire_once() {
        conformance::concurrent_claims_acquire_once(memory(), "t").await;
    }

    #[tokio::test]
    async fn memory_records_past_their_ttl_are_reclaimed() {
        let store = MemoryStateStore::new().with_idempotency_ttl(Duration::ZERO);
        conformance::records_past_their_ttl_are_reclaimed(&store, "t").await;
    }

    #[test]
    fn plain_keys_stay_readable_and_others_are_hashed() {
        assert_eq!(
            idempotency_pk("flow-123:profile/abc@x.io"),
            "idem#flow-123:profile/abc@x.io"
        );
        assert_eq!(checkpoint_pk("standard-sync"), "checkpoint#standard-sync");
        let odd = idempotency_pk("has#hash");
        assert!(
            odd.starts_with("idem#h#") && odd.len() == "idem#h#".len() + 64,
            "{odd}"
        );
        assert_ne!(
            idempotency_pk(&"a".repeat(129)),
            idempotency_pk(&"a".repeat(130))
        );
        assert!(idempotency_pk(&"a".repeat(128)).ends_with(&"a".repeat(128)));
        assert!(idempotency_pk("").starts_with("idem#h#"));
    }

    #[tokio::test]
    async fn from_env_picks_memory_without_a_table_and_checks_the_ttl() {
        let none: [(&str, &str); 0] = [];
        let store = from_env(&none).await.unwrap();
        assert_eq!(
            store
                .claim("k", Utc::now() + chrono::Duration::minutes(1))
                .await
                .unwrap(),
            Claim::Acquired
        );
        for bad in ["0", "two days"] {
            let e = from_env(&[(IDEMPOTENCY_TTL_VAR, bad)]).await.err().unwrap();
            assert!(e.to_string().contains(IDEMPOTENCY_TTL_VAR), "{e}");
        }
    }
}
