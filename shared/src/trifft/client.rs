//! The TRIFFT HTTP client: Bearer auth, pacing below the account-wide 50 requests per
//! 10 s, the one-minute lockout after a 429, and retries (see [`crate::http`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::SecondsFormat;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::model::{ActivityEvent, BatchItem, FeedPosition, Member, Page};
use super::paths::TrifftPaths;
use super::{BATCH_MAX_ITEMS, LOCKOUT, RATE_LIMIT, TrifftApi};
use crate::config::{Vars, base_url_or, optional, parsed_or, seconds_or};
use crate::error::ApiErrorDetail;
use crate::http::{Counters, Engine, Replay, Request, Vendor, credential_header, text_detail};
use crate::klaviyo::ClientStats;
use crate::pacing::RateLimiter;
use crate::retry::RetryPolicy;
use crate::secrets::{BridgeSecrets, SecretSource};
use crate::{Deadline, Error, Result, Service};

pub const DEFAULT_BASE_URL: &str = "https://api.trifft.io/v1";
/// Below the documented 50 per 10 s, so another caller on the account does not tip us over.
pub const DEFAULT_RATE_PER_10S: u32 = 45;
/// Feed page sizes the (assumed) feeds accept.
pub const FEED_LIMIT_MAX: u32 = 1_000;

/// Settings of the TRIFFT client, from `config`.
#[derive(Debug, Clone)]
pub struct TrifftSettings {
    /// `TRIFFT_BASE_URL`, default `https://api.trifft.io/v1`.
    pub base_url: String,
    /// Each path from its variable (see [`TrifftPaths`]).
    pub paths: TrifftPaths,
    /// `TRIFFT_TIMEOUT_SECONDS`, default 10: one attempt, connect to last byte.
    pub request_timeout: Duration,
    /// `TRIFFT_MAX_ATTEMPTS` (default 4) sets `retry.max_attempts`.
    pub retry: RetryPolicy,
    /// At most this many requests in any period this long (`TRIFFT_RATE_LIMIT_PER_10S`, default 45 per 10 s).
    pub rate: (u32, Duration),
    /// How long TRIFFT blocks every request after a 429 (documented: one minute).
    pub lockout: Duration,
}

impl Default for TrifftSettings {
    fn default() -> Self {
        TrifftSettings {
            base_url: DEFAULT_BASE_URL.into(),
            paths: TrifftPaths::default(),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                max_attempts: 4,
                ..RetryPolicy::default()
            },
            rate: (DEFAULT_RATE_PER_10S, RATE_LIMIT.1),
            lockout: LOCKOUT,
        }
    }
}

impl TrifftSettings {
    pub fn from_env(vars: &impl Vars) -> Result<Self> {
        let base_url = base_url_or(vars, "TRIFFT_BASE_URL", DEFAULT_BASE_URL)?;
        let defaults = TrifftPaths::default();
        let path = |name: &str, default: &str| -> Result<String> {
            let value = optional(vars, name).unwrap_or_else(|| default.to_string());
            if !value.starts_with('/') {
                return Err(Error::config(name, format!("{value:?} must start with /")));
            }
            if value.contains(['?', '#']) || value.chars().any(char::is_whitespace) {
                return Err(Error::config(
                    name,
                    format!("{value:?} must be a plain path"),
                ));
            }
            Ok(value)
        };
        let paths = TrifftPaths {
            batch: path("TRIFFT_BATCH_PATH", &defaults.batch)?,
            credit_points: path("TRIFFT_URI_CREDIT_POINTS", &defaults.credit_points)?,
            debit_points: path("TRIFFT_URI_DEBIT_POINTS", &defaults.debit_points)?,
            assign_coupon: path("TRIFFT_URI_ASSIGN_COUPON", &defaults.assign_coupon)?,
            segment_member: path("TRIFFT_URI_SEGMENT_MEMBER", &defaults.segment_member)?,
            members_feed: path("TRIFFT_MEMBERS_PATH", &defaults.members_feed)?,
            activity_feed: path("TRIFFT_ACTIVITY_PATH", &defaults.activity_feed)?,
        };
        let request_timeout = seconds_or(vars, "TRIFFT_TIMEOUT_SECONDS", Duration::from_secs(10))?;
        if request_timeout.is_zero() {
            return Err(Error::config(
                "TRIFFT_TIMEOUT_SECONDS",
                "must be at least 1",
            ));
        }
        let max_attempts: u32 = parsed_or(vars, "TRIFFT_MAX_ATTEMPTS", 4)?;
        if max_attempts == 0 {
            return Err(Error::config("TRIFFT_MAX_ATTEMPTS", "must be at least 1"));
        }
        let per_10s: u32 = parsed_or(vars, "TRIFFT_RATE_LIMIT_PER_10S", DEFAULT_RATE_PER_10S)?;
        if !(1..=RATE_LIMIT.0).contains(&per_10s) {
            return Err(Error::config(
                "TRIFFT_RATE_LIMIT_PER_10S",
                format!(
                    "{per_10s} is outside 1..={} (TRIFFT's documented limit)",
                    RATE_LIMIT.0
                ),
            ));
        }
        Ok(TrifftSettings {
            base_url,
            paths,
            request_timeout,
            retry: RetryPolicy {
                max_attempts,
                ..RetryPolicy::default()
            },
            rate: (per_10s, RATE_LIMIT.1),
            lockout: LOCKOUT,
        })
    }
}

/// The TRIFFT client. Build it once per process: its rate limiter must be the one every
/// call shares.
pub struct TrifftClient {
    pub settings: TrifftSettings,
    engine: Engine,
    limiter: RateLimiter,
    vendor: Trifft,
}

impl std::fmt::Debug for TrifftClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrifftClient")
            .field("settings", &self.settings)
            .field("engine", &self.engine)
            .finish()
    }
}

struct Trifft {
    lockout: Duration,
}

impl Vendor for Trifft {
    fn service(&self) -> Service {
        Service::Trifft
    }

    fn authorization(&self, secrets: &BridgeSecrets) -> Result<HeaderValue> {
        let token = secrets
            .trifft_api_token
            .as_ref()
            .map(|t| t.expose())
            .unwrap_or_default();
        credential_header("Bearer", token, "trifft_api_token")
    }

    fn error_details(&self, body: &[u8]) -> Vec<ApiErrorDetail> {
        trifft_error_details(body)
    }

    fn throttle_wait(&self, _headers: &HeaderMap, _details: &[ApiErrorDetail]) -> Option<Duration> {
        // TRIFFT documents no Retry-After; a 429 blocks every request for the lockout.
        Some(self.lockout)
    }

    fn is_transient(&self, status: u16) -> bool {
        matches!(status, 500 | 502 | 503 | 504)
    }
}

/// TRIFFT's error body `{"status", "success", "error": {"code", "message", "exception",
/// "event_id"}}`, decoded leniently: `code` is the detail's code, `exception` its title,
/// `message` (with the `event_id` TRIFFT support asks for) its detail.
pub fn trifft_error_details(body: &[u8]) -> Vec<ApiErrorDetail> {
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Inner {
        code: Option<Value>,
        message: Option<String>,
        exception: Option<String>,
        event_id: Option<Value>,
    }
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { error }) => {
            let event_id = text(error.event_id);
            let mut detail = error.message.unwrap_or_default();
            if !event_id.is_empty() {
                detail = format!("{detail} (event_id {event_id})")
                    .trim_start()
                    .to_string();
            }
            vec![ApiErrorDetail {
                code: text(error.code),
                title: error.exception.unwrap_or_default(),
                detail,
                pointer: None,
            }]
        }
        Err(_) => text_detail("unparsed", body),
    }
}

impl TrifftClient {
    /// One HTTP client with the fixed headers. The token is read from `secrets` at each
    /// call (nothing is fetched here).
    pub fn new(settings: TrifftSettings, secrets: Arc<dyn SecretSource>) -> Result<Self> {
        Url::parse(&settings.base_url).map_err(|e| {
            Error::config("TRIFFT_BASE_URL", format!("{:?}: {e}", settings.base_url))
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let engine = Engine {
            http: Engine::http_client(headers, Service::Trifft)?,
            secrets,
            retry: settings.retry,
            request_timeout: settings.request_timeout,
            counters: Counters::default(),
        };
        Ok(TrifftClient {
            limiter: RateLimiter::new(&[settings.rate]),
            vendor: Trifft {
                lockout: settings.lockout,
            },
            engine,
            settings,
        })
    }

    /// `{base}{path}`: the paths are relative to the base URL, which has its own path (`/v1`).
    fn url(&self, path: &str) -> Result<Url> {
        let joined = format!("{}{}", self.settings.base_url.trim_end_matches('/'), path);
        Url::parse(&joined)
            .map_err(|e| Error::config("TRIFFT_BASE_URL", format!("{joined:?}: {e}")))
    }

    fn feed_url(&self, path: &str, from: &FeedPosition, limit: u32) -> Result<Url> {
        if !(1..=FEED_LIMIT_MAX).contains(&limit) {
            return Err(Error::invalid(
                "limit",
                format!("{limit} is outside 1..={FEED_LIMIT_MAX}"),
            ));
        }
        let mut url = self.url(path)?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", &limit.to_string());
            match from {
                FeedPosition::Beginning => {}
                // Whole seconds, rounded down: "at or after" then never misses a change.
                FeedPosition::Since(t) => {
                    query.append_pair("since", &t.to_rfc3339_opts(SecondsFormat::Secs, true));
                }
                FeedPosition::Cursor(c) if c.is_empty() => {
                    return Err(Error::invalid("cursor", "an empty feed cursor"));
                }
                FeedPosition::Cursor(c) => {
                    query.append_pair("cursor", c);
                }
            }
        }
        Ok(url)
    }

    async fn feed<T: DeserializeOwned>(
        &self,
        path: &str,
        from: &FeedPosition,
        limit: u32,
        deadline: Deadline,
    ) -> Result<Page<T>> {
        let url = self.feed_url(path, from, limit)?;
        let request = Request {
            method: Method::GET,
            url,
            body: None,
            content_type: None,
            limiter: &self.limiter,
            replay: Replay::Safe,
        };
        let answer = self.engine.send(&self.vendor, request, deadline).await?;
        serde_json::from_slice(&answer.body).map_err(|e| Error::Decode {
            service: Service::Trifft,
            detail: format!("{path}: {e}"),
        })
    }
}

#[async_trait]
impl TrifftApi for TrifftClient {
    async fn submit_batch(&self, items: &[BatchItem], deadline: Deadline) -> Result<()> {
        if items.is_empty() || items.len() > BATCH_MAX_ITEMS {
            return Err(Error::invalid(
                "items",
                format!(
                    "a batch holds 1..={BATCH_MAX_ITEMS} items, not {}",
                    items.len()
                ),
            ));
        }
        let body = serde_json::to_vec(items).map_err(|e| Error::invalid("items", e.to_string()))?;
        let request = Request {
            method: Method::POST,
            url: self.url(&self.settings.paths.batch)?,
            body: Some(Bytes::from(body)),
            content_type: Some("application/json"),
            limiter: &self.limiter,
            // A batch can credit points: never send it again unless TRIFFT surely did not
            // take it (refused connection, 429, 503). A timeout or 500 may mean it was
            // queued, so it surfaces to the caller, whose idempotency record decides.
            replay: Replay::OnlyIfNotReceived,
        };
        self.engine.send(&self.vendor, request, deadline).await?;
        Ok(())
    }

    async fn members_changed(
        &self,
        from: &FeedPosition,
        limit: u32,
        deadline: Deadline,
    ) -> Result<Page<Member>> {
        self.feed(&self.settings.paths.members_feed, from, limit, deadline)
            .await
    }

    async fn activity_events(
        &self,
        from: &FeedPosition,
        limit: u32,
        deadline: Deadline,
    ) -> Result<Page<ActivityEvent>> {
        self.feed(&self.settings.paths.activity_feed, from, limit, deadline)
            .await
    }

    fn stats(&self) -> ClientStats {
        self.engine.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    struct NoSecrets;

    #[async_trait]
    impl SecretSource for NoSecrets {
        async fn get(&self) -> Result<Arc<BridgeSecrets>> {
            Ok(Arc::new(BridgeSecrets::default()))
        }
        async fn refresh(&self) -> Result<Arc<BridgeSecrets>> {
            self.get().await
        }
    }

    #[test]
    fn settings_default_and_name_the_bad_variable() {
        let s = TrifftSettings::from_env(&[("UNSET", "")]).unwrap();
        assert_eq!(s.base_url, "https://api.trifft.io/v1");
        assert_eq!(s.paths, TrifftPaths::default());
        assert_eq!(s.retry.max_attempts, 4);
        assert_eq!(s.rate, (45, Duration::from_secs(10)));
        assert_eq!(s.lockout, Duration::from_secs(60));
        for (name, value) in [
            ("TRIFFT_BATCH_PATH", "batch"),
            (
                "TRIFFT_URI_CREDIT_POINTS",
                "v1/member/{member_id}/wallet/credit",
            ),
            ("TRIFFT_MEMBERS_PATH", "/members?x=1"),
            ("TRIFFT_ACTIVITY_PATH", "nope"),
            ("TRIFFT_RATE_LIMIT_PER_10S", "51"),
            ("TRIFFT_RATE_LIMIT_PER_10S", "0"),
            ("TRIFFT_MAX_ATTEMPTS", "0"),
            ("TRIFFT_TIMEOUT_SECONDS", "0"),
        ] {
            let e = TrifftSettings::from_env(&[(name, value)]).unwrap_err();
            assert!(e.to_string().contains(name), "{name}={value}: {e}");
        }
        let s = TrifftSettings::from_env(&[
            ("TRIFFT_BATCH_PATH", "/v2/batch"),
            ("TRIFFT_RATE_LIMIT_PER_10S", "50"),
        ])
        .unwrap();
        assert_eq!((s.paths.batch.as_str(), s.rate.0), ("/v2/batch", 50));
    }

    #[test]
    fn decodes_trifft_errors_leniently() {
        let d = trifft_error_details(br#"{"status":402,"success":false,"error":{"code":1042,"message":"Insufficient points","exception":"TransactionFailedException","event_id":"ev-9"}}"#);
        assert_eq!(d[0].code, "1042");
        assert_eq!(d[0].title, "TransactionFailedException");
        assert_eq!(d[0].detail, "Insufficient points (event_id ev-9)");
        assert_eq!(
            trifft_error_details(br#"{"error":{}}"#)[0],
            ApiErrorDetail::default()
        );
        assert_eq!(
            trifft_error_details(b"Bad Gateway")[0].detail,
            "Bad Gateway"
        );
    }

    #[test]
    fn feed_urls_carry_position_and_limit() {
        let settings = TrifftSettings {
            base_url: "http://127.0.0.1:1/v1".into(),
            ..Default::default()
        };
        let c = TrifftClient::new(settings, Arc::new(NoSecrets)).unwrap();
        assert_eq!(
            c.feed_url("/members/changes", &FeedPosition::Beginning, 10)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:1/v1/members/changes?limit=10"
        );
        let since = FeedPosition::Since(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
        assert_eq!(
            c.feed_url("/a", &since, 1000).unwrap().query(),
            Some("limit=1000&since=2026-12-01T00%3A00%3A00Z")
        );
        let cursor = FeedPosition::Cursor("a b&c=d".into());
        assert_eq!(
            c.feed_url("/a", &cursor, 5).unwrap().query(),
            Some("limit=5&cursor=a+b%26c%3Dd")
        );
        for bad in [0, 1001] {
            assert!(matches!(
                c.feed_url("/a", &FeedPosition::Beginning, bad),
                Err(Error::InvalidInput { .. })
            ));
        }
    }

    #[tokio::test]
    async fn a_missing_token_fails_before_any_call() {
        let settings = TrifftSettings {
            base_url: "http://127.0.0.1:1/v1".into(),
            ..Default::default()
        };
        let c = TrifftClient::new(settings, Arc::new(NoSecrets)).unwrap();
        let item = BatchItem {
            uri: "/v1/x".into(),
            method: super::super::BatchMethod::Post,
            payload: None,
        };
        let e = c
            .submit_batch(&[item], Deadline::after(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Secret(m) if m.contains("trifft_api_token")),
            "{e}"
        );
        let e = c
            .submit_batch(&[], Deadline::after(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput { field, .. } if field == "items"),
            "{e}"
        );
        assert_eq!(c.stats().requests, 0);
    }
}
