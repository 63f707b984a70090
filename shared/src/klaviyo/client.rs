//! The Klaviyo HTTP client: private-key auth, the pinned `revision`, JSON:API content
//! type, pacing to each endpoint's rate tier, and retries (see [`crate::http`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::Value;

use super::limits::{
    BULK_EVENTS_TIER, BULK_PROFILES_TIER, CREATE_EVENT_TIER, EVENT_BODY_MAX_BYTES,
    PROFILE_IMPORT_TIER, PROFILE_MAX_BYTES, RateTier,
};
use super::model::{
    BulkImportJob, Event, ImportError, Profile, ProfileIdentity, event_create_body,
    profile_import_body,
};
use super::{ClientStats, EventBulkRequest, KlaviyoApi, ProfileBulkRequest, bulk};
use crate::config::{Vars, base_url_or, optional, parsed_or, seconds_or};
use crate::error::ApiErrorDetail;
use crate::http::{Counters, Engine, Replay, Request, Vendor, credential_header, text_detail};
use crate::pacing::RateLimiter;
use crate::retry::{RetryPolicy, parse_retry_after};
use crate::secrets::{BridgeSecrets, SecretSource};
use crate::trifft::paths::is_safe_path_segment;
use crate::{Deadline, Error, Result, Service};

const JSON_API: &str = "application/vnd.api+json";
pub const DEFAULT_BASE_URL: &str = "https://a.klaviyo.com";
pub const DEFAULT_REVISION: &str = "2026-07-15";

/// The rate tier of each endpoint the client calls. A tier of `RateTier::new(0, 0)`
/// means no client-side pacing (tests against an emulator without limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KlaviyoTiers {
    pub create_event: RateTier,
    pub bulk_create_events: RateTier,
    pub profile_import: RateTier,
    pub bulk_import_profiles: RateTier,
    /// `GET /api/profile-bulk-import-jobs/{id}`.
    pub bulk_import_job: RateTier,
    /// `GET /api/profile-bulk-import-jobs/{id}/import-errors`.
    pub bulk_import_errors: RateTier,
}

impl Default for KlaviyoTiers {
    /// The tiers the OpenAPI spec documents (`x-klaviyo-ratelimit`).
    fn default() -> Self {
        KlaviyoTiers {
            create_event: CREATE_EVENT_TIER,
            bulk_create_events: BULK_EVENTS_TIER,
            profile_import: PROFILE_IMPORT_TIER,
            bulk_import_profiles: BULK_PROFILES_TIER,
            bulk_import_job: BULK_PROFILES_TIER,
            bulk_import_errors: BULK_PROFILES_TIER,
        }
    }
}

impl KlaviyoTiers {
    /// No client-side pacing at all.
    pub fn unlimited() -> Self {
        let none = RateTier::new(0, 0);
        KlaviyoTiers {
            create_event: none,
            bulk_create_events: none,
            profile_import: none,
            bulk_import_profiles: none,
            bulk_import_job: none,
            bulk_import_errors: none,
        }
    }
}

/// Settings of the Klaviyo client, from `config`.
#[derive(Debug, Clone)]
pub struct KlaviyoSettings {
    /// `KLAVIYO_BASE_URL`, default `https://a.klaviyo.com`.
    pub base_url: String,
    /// `KLAVIYO_REVISION`, default `2026-07-15`.
    pub revision: String,
    /// `KLAVIYO_TIMEOUT_SECONDS`, default 10: one attempt, connect to last byte.
    pub request_timeout: Duration,
    /// `KLAVIYO_MAX_ATTEMPTS` (default 5) sets `retry.max_attempts`.
    pub retry: RetryPolicy,
    pub tiers: KlaviyoTiers,
}

impl Default for KlaviyoSettings {
    fn default() -> Self {
        KlaviyoSettings {
            base_url: DEFAULT_BASE_URL.into(),
            revision: DEFAULT_REVISION.into(),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            tiers: KlaviyoTiers::default(),
        }
    }
}

impl KlaviyoSettings {
    pub fn from_env(vars: &impl Vars) -> Result<Self> {
        let base_url = base_url_or(vars, "KLAVIYO_BASE_URL", DEFAULT_BASE_URL)?;
        let revision =
            optional(vars, "KLAVIYO_REVISION").unwrap_or_else(|| DEFAULT_REVISION.into());
        if !is_revision(&revision) {
            return Err(Error::config(
                "KLAVIYO_REVISION",
                format!("{revision:?} is not a revision like 2026-07-15"),
            ));
        }
        let request_timeout = seconds_or(vars, "KLAVIYO_TIMEOUT_SECONDS", Duration::from_secs(10))?;
        if request_timeout.is_zero() {
            return Err(Error::config(
                "KLAVIYO_TIMEOUT_SECONDS",
                "must be at least 1",
            ));
        }
        let max_attempts: u32 = parsed_or(vars, "KLAVIYO_MAX_ATTEMPTS", 5)?;
        if max_attempts == 0 {
            return Err(Error::config("KLAVIYO_MAX_ATTEMPTS", "must be at least 1"));
        }
        Ok(KlaviyoSettings {
            base_url,
            revision,
            request_timeout,
            retry: RetryPolicy {
                max_attempts,
                ..RetryPolicy::default()
            },
            tiers: KlaviyoTiers::default(),
        })
    }
}

/// `YYYY-MM-DD`, a real date, optionally with a suffix such as `.pre`.
fn is_revision(value: &str) -> bool {
    let (date, suffix) = match value.split_once('.') {
        Some((d, s)) => (d, Some(s)),
        None => (value, None),
    };
    date.len() == 10
        && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok()
        && suffix.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

struct Limiters {
    create_event: RateLimiter,
    bulk_create_events: RateLimiter,
    profile_import: RateLimiter,
    bulk_import_profiles: RateLimiter,
    bulk_import_job: RateLimiter,
    bulk_import_errors: RateLimiter,
}

impl Limiters {
    fn new(t: &KlaviyoTiers) -> Self {
        let l = |tier: RateTier| RateLimiter::new(&tier.windows());
        Limiters {
            create_event: l(t.create_event),
            bulk_create_events: l(t.bulk_create_events),
            profile_import: l(t.profile_import),
            bulk_import_profiles: l(t.bulk_import_profiles),
            bulk_import_job: l(t.bulk_import_job),
            bulk_import_errors: l(t.bulk_import_errors),
        }
    }
}

/// The Klaviyo client. Build it once per process; it is cheap to share behind an `Arc`.
pub struct KlaviyoClient {
    pub settings: KlaviyoSettings,
    base: Url,
    engine: Engine,
    limiters: Limiters,
}

impl std::fmt::Debug for KlaviyoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KlaviyoClient")
            .field("settings", &self.settings)
            .field("engine", &self.engine)
            .finish()
    }
}

struct Klaviyo;

impl Vendor for Klaviyo {
    fn service(&self) -> Service {
        Service::Klaviyo
    }

    fn authorization(&self, secrets: &BridgeSecrets) -> Result<HeaderValue> {
        let key = secrets
            .klaviyo_private_key
            .as_ref()
            .map(|k| k.expose())
            .unwrap_or_default();
        credential_header("Klaviyo-API-Key", key, "klaviyo_private_key")
    }

    fn error_details(&self, body: &[u8]) -> Vec<ApiErrorDetail> {
        klaviyo_error_details(body)
    }

    fn throttle_wait(&self, headers: &HeaderMap, details: &[ApiErrorDetail]) -> Option<Duration> {
        headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
            .or_else(|| {
                details
                    .iter()
                    .find_map(|d| expected_available_in(&d.detail))
            })
    }

    fn is_transient(&self, status: u16) -> bool {
        // Klaviyo's SDKs retry 429/503/504/524 and not 500/502. We retry 500 and 502 too,
        // because every write this client sends is idempotent: events carry a unique_id
        // Klaviyo de-duplicates on, and profile writes are upserts of the latest state.
        matches!(status, 500 | 502 | 503 | 504 | 524)
    }
}

/// `errors[]` of a JSON:API error body; missing fields are empty. A body that is not
/// JSON:API becomes one detail holding its text.
pub fn klaviyo_error_details(body: &[u8]) -> Vec<ApiErrorDetail> {
    #[derive(Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Item {
        code: Option<Value>,
        title: Option<String>,
        detail: Option<String>,
        source: Option<Source>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Source {
        pointer: Option<String>,
        parameter: Option<String>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(parsed) => parsed
            .errors
            .into_iter()
            .map(|e| ApiErrorDetail {
                code: match e.code {
                    Some(Value::String(s)) => s,
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                },
                title: e.title.unwrap_or_default(),
                detail: e.detail.unwrap_or_default(),
                pointer: e.source.and_then(|s| s.pointer.or(s.parameter)),
            })
            .collect(),
        Err(_) => text_detail("unparsed", body),
    }
}

/// "Request was throttled. Expected available in 3 seconds." -> 3 s.
fn expected_available_in(detail: &str) -> Option<Duration> {
    let lower = detail.to_ascii_lowercase();
    let rest = &lower[lower.find("expected available in ")? + "expected available in ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let secs: u64 = digits.parse().ok()?;
    rest[digits.len()..]
        .trim_start()
        .starts_with("second")
        .then(|| Duration::from_secs(secs))
}

impl KlaviyoClient {
    /// One HTTP client with the fixed headers. The private key is read from `secrets` at
    /// each call (nothing is fetched here), so a rotated key is picked up.
    pub fn new(settings: KlaviyoSettings, secrets: Arc<dyn SecretSource>) -> Result<Self> {
        let base =
            Url::parse(&format!("{}/", settings.base_url.trim_end_matches('/'))).map_err(|e| {
                Error::config("KLAVIYO_BASE_URL", format!("{:?}: {e}", settings.base_url))
            })?;
        if !is_revision(&settings.revision) {
            return Err(Error::config(
                "KLAVIYO_REVISION",
                format!("{:?} is not a revision like 2026-07-15", settings.revision),
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(JSON_API));
        headers.insert(
            HeaderName::from_static("revision"),
            HeaderValue::from_str(&settings.revision)
                .map_err(|_| Error::config("KLAVIYO_REVISION", "not a valid header value"))?,
        );
        let engine = Engine {
            http: Engine::http_client(headers, Service::Klaviyo)?,
            secrets,
            retry: settings.retry,
            request_timeout: settings.request_timeout,
            counters: Counters::default(),
        };
        Ok(KlaviyoClient {
            limiters: Limiters::new(&settings.tiers),
            base,
            engine,
            settings,
        })
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| Error::invalid("path", format!("{path:?}: {e}")))
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        limiter: &RateLimiter,
        deadline: Deadline,
    ) -> Result<crate::http::Response> {
        let request = Request {
            method,
            url,
            body,
            content_type: Some(JSON_API),
            limiter,
            // Every Klaviyo write we send is idempotent (see `is_transient`).
            replay: Replay::Safe,
        };
        self.engine.send(&Klaviyo, request, deadline).await
    }

    fn job_path(job_id: &str, rest: &str) -> Result<String> {
        if !is_safe_path_segment(job_id) {
            return Err(Error::invalid(
                "job_id",
                format!("{job_id:?} is not a Klaviyo job id"),
            ));
        }
        Ok(format!("api/profile-bulk-import-jobs/{job_id}{rest}"))
    }
}

fn decode_error(detail: impl std::fmt::Display) -> Error {
    Error::Decode {
        service: Service::Klaviyo,
        detail: detail.to_string(),
    }
}

fn to_body(value: &Value) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::invalid("body", e.to_string()))
}

/// A bulk import job from a `{"data": {"id", "attributes": {...}}}` answer.
fn job_from(body: &[u8]) -> Result<BulkImportJob> {
    #[derive(Deserialize)]
    struct Doc {
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        id: String,
        attributes: Attributes,
    }
    #[derive(Deserialize)]
    struct Attributes {
        status: String,
        #[serde(default)]
        total_count: Option<u64>,
        #[serde(default)]
        completed_count: Option<u64>,
        #[serde(default)]
        failed_count: Option<u64>,
    }
    let doc: Doc =
        serde_json::from_slice(body).map_err(|e| decode_error(format!("bulk import job: {e}")))?;
    Ok(BulkImportJob {
        id: doc.data.id,
        status: doc.data.attributes.status,
        total_count: doc.data.attributes.total_count.unwrap_or(0),
        completed_count: doc.data.attributes.completed_count.unwrap_or(0),
        failed_count: doc.data.attributes.failed_count.unwrap_or(0),
    })
}

/// One page of import errors and the next page's URL.
fn import_errors_page(body: &[u8]) -> Result<(Vec<ImportError>, Option<String>)> {
    #[derive(Deserialize)]
    struct Doc {
        data: Vec<Item>,
        #[serde(default)]
        links: Option<Links>,
    }
    #[derive(Deserialize)]
    struct Links {
        #[serde(default)]
        next: Option<String>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        attributes: Attributes,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Attributes {
        code: Option<String>,
        title: Option<String>,
        detail: Option<String>,
        source: Option<Source>,
        original_payload: Option<Value>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Source {
        pointer: Option<String>,
    }
    let doc: Doc =
        serde_json::from_slice(body).map_err(|e| decode_error(format!("import errors: {e}")))?;
    let errors = doc
        .data
        .into_iter()
        .map(|i| ImportError {
            code: i.attributes.code.unwrap_or_default(),
            title: i.attributes.title.unwrap_or_default(),
            detail: i.attributes.detail.unwrap_or_default(),
            pointer: i.attributes.source.and_then(|s| s.pointer),
            original_payload: i.attributes.original_payload,
        })
        .collect();
    Ok((
        errors,
        doc.links.and_then(|l| l.next).filter(|n| !n.is_empty()),
    ))
}

/// Upper bound on import-error pages, so a server that keeps answering `next` cannot
/// keep us paging forever.
const MAX_IMPORT_ERROR_PAGES: usize = 1_000;

#[async_trait]
impl KlaviyoApi for KlaviyoClient {
    async fn create_event(
        &self,
        identity: &ProfileIdentity,
        event: &Event,
        deadline: Deadline,
    ) -> Result<()> {
        bulk::validate_event(identity, event)?;
        let body = to_body(&event_create_body(identity, event))?;
        if body.len() > EVENT_BODY_MAX_BYTES {
            return Err(Error::invalid(
                "event",
                format!(
                    "event {:?}: {} bytes, at most {EVENT_BODY_MAX_BYTES} allowed",
                    event.unique_id,
                    body.len()
                ),
            ));
        }
        let url = self.url("api/events")?;
        self.send(
            Method::POST,
            url,
            Some(body),
            &self.limiters.create_event,
            deadline,
        )
        .await?;
        Ok(())
    }

    async fn bulk_create_events(
        &self,
        request: &EventBulkRequest,
        deadline: Deadline,
    ) -> Result<()> {
        if request.events == 0 {
            return Err(Error::invalid(
                "events",
                "a bulk request needs at least one event",
            ));
        }
        let url = self.url("api/event-bulk-create-jobs")?;
        self.send(
            Method::POST,
            url,
            Some(request.body.clone()),
            &self.limiters.bulk_create_events,
            deadline,
        )
        .await?;
        Ok(())
    }

    async fn import_profile(&self, profile: &Profile, deadline: Deadline) -> Result<String> {
        bulk::validate_profile(profile)?;
        let body = to_body(&profile_import_body(profile))?;
        if body.len() > PROFILE_MAX_BYTES {
            return Err(Error::invalid(
                "profile",
                format!("{} bytes, at most {PROFILE_MAX_BYTES} allowed", body.len()),
            ));
        }
        let url = self.url("api/profile-import")?;
        let answer = self
            .send(
                Method::POST,
                url,
                Some(body),
                &self.limiters.profile_import,
                deadline,
            )
            .await?;
        let doc: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| decode_error(format!("profile import: {e}")))?;
        doc["data"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| decode_error("profile import answer has no data.id"))
    }

    async fn bulk_import_profiles(
        &self,
        request: &ProfileBulkRequest,
        deadline: Deadline,
    ) -> Result<BulkImportJob> {
        if request.profiles == 0 {
            return Err(Error::invalid(
                "profiles",
                "a bulk import needs at least one profile",
            ));
        }
        let url = self.url("api/profile-bulk-import-jobs")?;
        let answer = self
            .send(
                Method::POST,
                url,
                Some(request.body.clone()),
                &self.limiters.bulk_import_profiles,
                deadline,
            )
            .await?;
        job_from(&answer.body)
    }

    async fn bulk_import_job(&self, job_id: &str, deadline: Deadline) -> Result<BulkImportJob> {
        let url = self.url(&Self::job_path(job_id, "")?)?;
        let answer = self
            .send(
                Method::GET,
                url,
                None,
                &self.limiters.bulk_import_job,
                deadline,
            )
            .await?;
        job_from(&answer.body)
    }

    async fn bulk_import_errors(
        &self,
        job_id: &str,
        deadline: Deadline,
    ) -> Result<Vec<ImportError>> {
        let mut url = self.url(&Self::job_path(job_id, "/import-errors")?)?;
        let mut all = Vec::new();
        for _ in 0..MAX_IMPORT_ERROR_PAGES {
            let answer = self
                .send(
                    Method::GET,
                    url,
                    None,
                    &self.limiters.bulk_import_errors,
                    deadline,
                )
                .await?;
            let (errors, next) = import_errors_page(&answer.body)?;
            all.extend(errors);
            let Some(next) = next else { return Ok(all) };
            let next =
                Url::parse(&next).map_err(|e| decode_error(format!("links.next {next:?}: {e}")))?;
            // Follow only links to our own base URL: the key must never go to another host.
            if next.origin() != self.base.origin() || !next.path().starts_with(self.base.path()) {
                return Err(decode_error(format!(
                    "links.next points outside {}",
                    self.base
                )));
            }
            url = next;
        }
        Err(decode_error(format!(
            "import errors did not end within {MAX_IMPORT_ERROR_PAGES} pages"
        )))
    }

    fn stats(&self) -> ClientStats {
        self.engine.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_name_the_bad_variable() {
        let s = KlaviyoSettings::from_env(&[("UNSET", "")]).unwrap();
        assert_eq!(s.base_url, "https://a.klaviyo.com");
        assert_eq!(s.revision, "2026-07-15");
        assert_eq!(s.request_timeout, Duration::from_secs(10));
        assert_eq!(s.retry.max_attempts, 5);
        assert_eq!(s.tiers, KlaviyoTiers::default());
        for (name, value) in [
            ("KLAVIYO_REVISION", "2026-13-01"),
            ("KLAVIYO_REVISION", "latest"),
            ("KLAVIYO_REVISION", "2026-07-15."),
            ("KLAVIYO_TIMEOUT_SECONDS", "0"),
            ("KLAVIYO_TIMEOUT_SECONDS", "ten"),
            ("KLAVIYO_MAX_ATTEMPTS", "0"),
            ("KLAVIYO_BASE_URL", "a.klaviyo.com"),
        ] {
            let e = KlaviyoSettings::from_env(&[(name, value)]).unwrap_err();
            assert!(e.to_string().contains(name), "{name}={value}: {e}");
        }
        let s = KlaviyoSettings::from_env(&[
            ("KLAVIYO_BASE_URL", "http://127.0.0.1:9/"),
            ("KLAVIYO_REVISION", "2026-10-15.pre"),
            ("KLAVIYO_MAX_ATTEMPTS", "2"),
        ])
        .unwrap();
        assert_eq!(
            (
                s.base_url.as_str(),
                s.revision.as_str(),
                s.retry.max_attempts
            ),
            ("http://127.0.0.1:9", "2026-10-15.pre", 2)
        );
    }

    #[test]
    fn decodes_json_api_errors_leniently() {
        let body = br#"{"errors":[{"id":"x","status":429,"code":"throttled","title":"Request was throttled.","detail":"Request was throttled. Expected available in 7 seconds.","source":{"pointer":"/data"}},{"code":"invalid"}]}"#;
        let d = klaviyo_error_details(body);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].code, "throttled");
        assert_eq!(d[0].pointer.as_deref(), Some("/data"));
        assert_eq!(d[1].detail, "");
        assert_eq!(
            Klaviyo.throttle_wait(&HeaderMap::new(), &d),
            Some(Duration::from_secs(7))
        );
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(Klaviyo.throttle_wait(&h, &d), Some(Duration::from_secs(2)));
        let html = klaviyo_error_details(b"<html>502 Bad Gateway</html>");
        assert_eq!(html[0].detail, "<html>502 Bad Gateway</html>");
    }

    #[test]
    fn reads_expected_available_in() {
        assert_eq!(
            expected_available_in("Expected available in 1 second."),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            expected_available_in("expected available in 30 seconds"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(expected_available_in("Expected available in soon"), None);
        assert_eq!(expected_available_in("Request was throttled."), None);
    }

    #[test]
    fn decodes_jobs_and_error_pages() {
        let job = job_from(br#"{"data":{"type":"profile-bulk-import-job","id":"J1","attributes":{"status":"queued","total_count":3,"completed_count":null}}}"#).unwrap();
        assert_eq!(
            (
                job.id.as_str(),
                job.status.as_str(),
                job.total_count,
                job.completed_count
            ),
            ("J1", "queued", 3, 0)
        );
        assert!(matches!(job_from(b"{}"), Err(Error::Decode { .. })));
        let (errors, next) = import_errors_page(br#"{"data":[{"type":"import-error","id":"e","attributes":{"code":"invalid","title":"T","detail":"bad email","source":{"pointer":"/data/attributes/email"},"original_payload":{"email":"x"}}}],"links":{"self":"s","next":"http://h/api/x?page%5Bcursor%5D=2"}}"#).unwrap();
        assert_eq!(errors[0].pointer.as_deref(), Some("/data/attributes/email"));
        assert_eq!(next.as_deref(), Some("http://h/api/x?page%5Bcursor%5D=2"));
    }

    #[test]
    fn job_ids_cannot_change_the_path() {
        assert!(KlaviyoClient::job_path("../events", "").is_err());
        assert_eq!(
            KlaviyoClient::job_path("J1", "/import-errors").unwrap(),
            "api/profile-bulk-import-jobs/J1/import-errors"
        );
    }
}
