//! The bridge's credentials: one JSON secret in AWS Secrets Manager holding the Klaviyo
//! private key, the TRIFFT API token and the webhook secrets (current and previous, so a
//! rotation never locks a sender out).
//!
//! Values are wrapped in [`SecretString`], whose `Debug` and `Display` print a redaction,
//! so a secret cannot reach a log line by accident.
//!
//! Sources:
//! - [`SecretsManagerSource`]: reads the secret through the AWS SDK, lazily (the first
//!   `get()` fetches, not the cold start), caches it for a TTL (`SECRETS_CACHE_SECONDS`,
//!   default 5 min), and lets concurrent callers share one fetch (single-flight).
//! - [`EnvSecretSource`]: the same JSON from `SANDBOX_SECRETS_JSON` (sandbox only).
//!
//! Failure policy of the cache: a failed fetch never drops a cached value and is never
//! cached itself. `get()` serves the cached value until its TTL ends and fetches after
//! that; if that fetch fails, `get()` returns the error (a value past its TTL may have
//! been rotated away). `refresh()` always fetches and returns the error when it fails.
//! Callers queued behind a fetch that failed get that same error instead of starting
//! a fetch each, so a throttled Secrets Manager is not hammered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{self, Vars};
use crate::{Error, Result, Service};

/// Variable naming the bridge secret (ARN or name) in Secrets Manager.
pub const SECRET_ARN_VAR: &str = "BRIDGE_SECRET_ARN";
/// Variable holding the secret JSON itself (sandbox only).
pub const SANDBOX_SECRETS_VAR: &str = "SANDBOX_SECRETS_JSON";
/// Variable setting the cache TTL in whole seconds.
pub const CACHE_SECONDS_VAR: &str = "SECRETS_CACHE_SECONDS";
/// How long a fetched secret is served from memory by default.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);

/// A secret value. Never printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The value itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A secret that can be rotated: senders using either value are accepted until the
/// operator drops the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatingSecret {
    pub current: SecretString,
    pub previous: Option<SecretString>,
}

impl RotatingSecret {
    /// The values a presented credential may match, current first.
    pub fn accepted(&self) -> impl Iterator<Item = &SecretString> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }
}

/// Everything the bridge secret holds. The JSON keys in Secrets Manager are:
///
/// | key | used by |
/// |---|---|
/// | `klaviyo_private_key` | standard-sync, custom-events |
/// | `trifft_api_token` | klaviyo-webhook, standard-sync |
/// | `klaviyo_webhook_secret`, `klaviyo_webhook_secret_previous` | klaviyo-webhook (header) |
/// | `klaviyo_system_webhook_secret`, `klaviyo_system_webhook_secret_previous` | klaviyo-webhook (signed system webhooks, optional) |
/// | `custom_events_secret`, `custom_events_secret_previous` | custom-events (header value, or `user:password` for Basic) |
///
/// A function checks at use that the keys it needs are present and not empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BridgeSecrets {
    pub klaviyo_private_key: Option<SecretString>,
    pub trifft_api_token: Option<SecretString>,
    pub klaviyo_webhook: Option<RotatingSecret>,
    pub klaviyo_system_webhook: Option<RotatingSecret>,
    pub custom_events: Option<RotatingSecret>,
}

impl BridgeSecrets {
    /// Decode the secret JSON: an object of string values with the keys in the table
    /// above. Unknown keys are ignored, empty (or blank) strings count as absent, and a
    /// `_previous` without its current value is ignored with a warning. Errors name the
    /// key or the JSON position, never a value.
    pub fn from_json(json: &str) -> Result<Self> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(json).map_err(|e| {
                // serde_json's message can quote the input, so only its position is kept.
                Error::Secret(format!(
                    "the secret value is not a JSON object of strings ({:?} error at line {}, column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            })?;
        let value = |key: &str| -> Result<Option<SecretString>> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(SecretString::new(s.clone()))),
                Some(_) => Err(Error::Secret(format!(
                    "the secret key {key} must hold a string"
                ))),
            }
        };
        let rotating = |key: &str| -> Result<Option<RotatingSecret>> {
            let previous_key = format!("{key}_previous");
            let previous = value(&previous_key)?;
            match value(key)? {
                Some(current) => Ok(Some(RotatingSecret { current, previous })),
                None => {
                    if previous.is_some() {
                        tracing::warn!(
                            key,
                            "the secret has {previous_key} but no {key}; both are treated as absent"
                        );
                    }
                    Ok(None)
                }
            }
        };
        Ok(BridgeSecrets {
            klaviyo_private_key: value("klaviyo_private_key")?,
            trifft_api_token: value("trifft_api_token")?,
            klaviyo_webhook: rotating("klaviyo_webhook_secret")?,
            klaviyo_system_webhook: rotating("klaviyo_system_webhook_secret")?,
            custom_events: rotating("custom_events_secret")?,
        })
    }
}

/// Where the bridge secrets come from.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The secrets, from a cache when it is fresh.
    async fn get(&self) -> Result<Arc<BridgeSecrets>>;

    /// Read the secrets again now, e.g. after an upstream refused a credential with 401
    /// (the secret may have been rotated since it was cached).
    async fn refresh(&self) -> Result<Arc<BridgeSecrets>>;
}

/// The secret source the settings ask for: Secrets Manager when `BRIDGE_SECRET_ARN` is
/// set (AWS config from the environment, which honours `AWS_ENDPOINT_URL`), else the
/// sandbox's `SANDBOX_SECRETS_JSON`. Nothing is fetched here; the first `get()` does.
pub async fn from_env(vars: &(impl Vars + ?Sized)) -> Result<Arc<dyn SecretSource>> {
    if config::optional(vars, SECRET_ARN_VAR).is_some() {
        let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        return from_sdk_config(vars, &sdk_config);
    }
    from_sdk_config_or_sandbox(vars, None)
}

/// Like [`from_env`] with an AWS config the caller already loaded (shared with the
/// state store, or pointed at moto in tests).
pub fn from_sdk_config(
    vars: &(impl Vars + ?Sized),
    sdk_config: &aws_config::SdkConfig,
) -> Result<Arc<dyn SecretSource>> {
    from_sdk_config_or_sandbox(vars, Some(sdk_config))
}

fn from_sdk_config_or_sandbox(
    vars: &(impl Vars + ?Sized),
    sdk_config: Option<&aws_config::SdkConfig>,
) -> Result<Arc<dyn SecretSource>> {
    if let Some(secret_id) = config::optional(vars, SECRET_ARN_VAR) {
        let ttl = config::seconds_or(vars, CACHE_SECONDS_VAR, DEFAULT_CACHE_TTL)?;
        let client = match sdk_config {
            Some(c) => aws_sdk_secretsmanager::Client::new(c),
            None => {
                return Err(Error::config(
                    SECRET_ARN_VAR,
                    "is set but no AWS config was loaded",
                ));
            }
        };
        return Ok(Arc::new(SecretsManagerSource::new(client, secret_id, ttl)));
    }
    if let Some(json) = config::optional(vars, SANDBOX_SECRETS_VAR) {
        let source = EnvSecretSource::new(&json)
            .map_err(|e| Error::config(SANDBOX_SECRETS_VAR, e.to_string()))?;
        return Ok(Arc::new(source));
    }
    Err(Error::config(
        SECRET_ARN_VAR,
        format!(
            "is not set (name the bridge secret in Secrets Manager; {SANDBOX_SECRETS_VAR} serves the sandbox only)"
        ),
    ))
}

/// Reads the bridge secret from AWS Secrets Manager, cached for a TTL.
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    cache: SecretCache,
}

impl SecretsManagerSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String, ttl: Duration) -> Self {
        SecretsManagerSource {
            client,
            secret_id,
            cache: SecretCache::new(ttl),
        }
    }

    async fn fetch(&self) -> Result<BridgeSecrets> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| secrets_manager_error(&self.secret_id, e))?;
        let json = output.secret_string().ok_or_else(|| {
            Error::Secret(format!(
                "secret {} has no SecretString (a binary secret is not supported)",
                self.secret_id
            ))
        })?;
        BridgeSecrets::from_json(json)
            .map_err(|e| Error::Secret(format!("secret {}: {}", self.secret_id, strip_prefix(&e))))
    }
}

impl std::fmt::Debug for SecretsManagerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsManagerSource")
            .field("secret_id", &self.secret_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    async fn get(&self) -> Result<Arc<BridgeSecrets>> {
        self.cache.get(|| self.fetch()).await
    }

    async fn refresh(&self) -> Result<Arc<BridgeSecrets>> {
        self.cache.refresh(|| self.fetch()).await
    }
}

fn strip_prefix(e: &Error) -> String {
    match e {
        Error::Secret(message) => message.clone(),
        other => other.to_string(),
    }
}

/// AWS error codes that mean "slow down": retrying later helps.
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
];

/// Throttling, 5xx and transport failures are retryable (`Upstream`/`Transport`); a
/// missing secret, a refused permission or a bad request is `Secret` (fix the setup).
fn secrets_manager_error<E>(secret_id: &str, error: SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let service = Service::SecretsManager;
    match &error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let code = context.err().code().unwrap_or("unknown error").to_string();
            let message = context.err().message().unwrap_or("").to_string();
            let detail = format!("{code}: {message}");
            if status >= 500 || status == 429 || THROTTLING_CODES.contains(&code.as_str()) {
                Error::Upstream {
                    service,
                    status,
                    detail,
                }
            } else if code == "ResourceNotFoundException" {
                Error::Secret(format!("secret {secret_id} does not exist ({detail})"))
            } else {
                Error::Secret(format!(
                    "reading secret {secret_id} failed with HTTP {status}: {detail}"
                ))
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Error::Transport {
            service,
            detail: DisplayErrorContext(&error).to_string(),
        },
        SdkError::ResponseError(context) => Error::Upstream {
            service,
            status: context.raw().status().as_u16(),
            detail: DisplayErrorContext(&error).to_string(),
        },
        SdkError::ConstructionFailure(_) => Error::Secret(format!(
            "cannot build the request for secret {secret_id}: {}",
            DisplayErrorContext(&error)
        )),
        _ => Error::Transport {
            service,
            detail: DisplayErrorContext(&error).to_string(),
        },
    }
}

/// The sandbox's secrets, from JSON in an environment variable. Never used in AWS.
#[derive(Debug)]
pub struct EnvSecretSource {
    secrets: Arc<BridgeSecrets>,
}

impl EnvSecretSource {
    /// Parse the secret JSON now, so a sandbox with a broken variable fails at start.
    pub fn new(json: &str) -> Result<Self> {
        Ok(EnvSecretSource {
            secrets: Arc::new(BridgeSecrets::from_json(json)?),
        })
    }

    pub fn from_secrets(secrets: BridgeSecrets) -> Self {
        EnvSecretSource {
            secrets: Arc::new(secrets),
        }
    }
}

#[async_trait]
impl SecretSource for EnvSecretSource {
    async fn get(&self) -> Result<Arc<BridgeSecrets>> {
        Ok(self.secrets.clone())
    }

    async fn refresh(&self) -> Result<Arc<BridgeSecrets>> {
        Ok(self.secrets.clone())
    }
}

/// The in-process cache with single-flight fetches (see the module docs for the policy).
///
/// Every fetch runs while holding `slot`, so at most one is in flight. `started` and
/// `finished` count fetches; a caller notes one before queueing on the lock. Once it holds
/// the lock, `get` shares the result of any fetch that finished meanwhile, and `refresh`
/// only of one that started after it asked (an older one may predate a rotation).
struct SecretCache {
    ttl: Duration,
    started: AtomicU64,
    finished: AtomicU64,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    cached: Option<(Arc<BridgeSecrets>, Instant)>,
    /// The start number of the last finished fetch, and its error when it failed.
    last_started: u64,
    last_error: Option<Error>,
}

impl SecretCache {
    fn new(ttl: Duration) -> Self {
        SecretCache {
            ttl,
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            slot: Mutex::new(Slot::default()),
        }
    }

    async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<BridgeSecrets>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BridgeSecrets>>,
    {
        let seen = self.finished.load(Ordering::SeqCst);
        let mut slot = self.slot.lock().await;
        if let Some((secrets, fetched_at)) = &slot.cached
            && fetched_at.elapsed() < self.ttl
        {
            return Ok(secrets.clone());
        }
        if self.finished.load(Ordering::SeqCst) > seen
            && let Some(error) = &slot.last_error
        {
            return Err(replay(error));
        }
        self.fetch_locked(&mut slot, fetch).await
    }

    async fn refresh<F, Fut>(&self, fetch: F) -> Result<Arc<BridgeSecrets>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BridgeSecrets>>,
    {
        let seen = self.started.load(Ordering::SeqCst);
        let mut slot = self.slot.lock().await;
        if slot.last_started > seen {
            // A fetch began after this caller asked: its answer is as fresh as ours would be.
            return match (&slot.last_error, &slot.cached) {
                (Some(error), _) => Err(replay(error)),
                (None, Some((secrets, _))) => Ok(secrets.clone()),
                (None, None) => self.fetch_locked(&mut slot, fetch).await,
            };
        }
        self.fetch_locked(&mut slot, fetch).await
    }

    async fn fetch_locked<F, Fut>(&self, slot: &mut Slot, fetch: F) -> Result<Arc<BridgeSecrets>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BridgeSecrets>>,
    {
        let attempt = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let started = Instant::now();
        let result = fetch().await;
        slot.last_started = attempt;
        self.finished.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok(secrets) => {
                let secrets = Arc::new(secrets);
                // The TTL counts from when the fetch began: the value is at least that old.
                slot.cached = Some((secrets.clone(), started));
                slot.last_error = None;
                Ok(secrets)
            }
            Err(error) => {
                let shared = replay(&error);
                slot.last_error = Some(shared);
                Err(error)
            }
        }
    }
}

/// A copy of a fetch error for the callers that shared the fetch (`Error` is not `Clone`).
fn replay(error: &Error) -> Error {
    match error {
        Error::Upstream {
            service,
            status,
            detail,
        } => Error::Upstream {
            service: *service,
            status: *status,
            detail: detail.clone(),
        },
        Error::Transport { service, detail } => Error::Transport {
            service: *service,
            detail: detail.clone(),
        },
        Error::RateLimited {
            service,
            retry_after,
        } => Error::RateLimited {
            service: *service,
            retry_after: *retry_after,
        },
        Error::Config { name, reason } => Error::Config {
            name: name.clone(),
            reason: reason.clone(),
        },
        Error::Secret(message) => Error::Secret(message.clone()),
        other => Error::Secret(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = BridgeSecrets {
            klaviyo_private_key: Some(SecretString::new("pk_live_123")),
            klaviyo_webhook: Some(RotatingSecret {
                current: SecretString::new("hook-now"),
                previous: Some(SecretString::new("hook-before")),
            }),
            ..Default::default()
        };
        let printed = format!("{s:?} {}", SecretString::new("x1"));
        assert!(!printed.contains("pk_live_123"));
        assert!(!printed.contains("hook-now"));
        assert!(!printed.contains("hook-before"));
        assert!(!printed.contains("x1"));
    }

    #[test]
    fn decodes_every_documented_key() {
        let s = BridgeSecrets::from_json(
            r#"{"klaviyo_private_key":"pk_1","trifft_api_token":"tt_1",
                "klaviyo_webhook_secret":"wh_now","klaviyo_webhook_secret_previous":"wh_old",
                "klaviyo_system_webhook_secret":"sys_now",
                "custom_events_secret":"ce_now","custom_events_secret_previous":"",
                "something_else": 42}"#,
        )
        .unwrap();
        assert_eq!(s.klaviyo_private_key.unwrap().expose(), "pk_1");
        assert_eq!(s.trifft_api_token.unwrap().expose(), "tt_1");
        let hook = s.klaviyo_webhook.unwrap();
        assert_eq!(
            hook.accepted().map(|v| v.expose()).collect::<Vec<_>>(),
            ["wh_now", "wh_old"]
        );
        assert_eq!(s.klaviyo_system_webhook.unwrap().previous, None);
        // An empty previous value is absent, not a secret that matches an empty header.
        assert_eq!(s.custom_events.unwrap().previous, None);
    }

    #[test]
    fn empty_values_and_orphan_previous_are_absent() {
        let s = BridgeSecrets::from_json(
            r#"{"klaviyo_private_key":"","trifft_api_token":"  ","klaviyo_webhook_secret_previous":"old"}"#,
        )
        .unwrap();
        assert_eq!(s, BridgeSecrets::default());
    }

    #[test]
    fn errors_never_echo_the_value() {
        for bad in [
            r#"not json pk_live_SECRET"#,
            r#""pk_live_SECRET""#,
            r#"{"klaviyo_private_key": pk_live_SECRET}"#,
        ] {
            let e = BridgeSecrets::from_json(bad).unwrap_err();
            assert!(matches!(e, Error::Secret(_)), "{e}");
            assert!(e.to_string().contains("not a JSON object"), "{e}");
            assert!(!e.to_string().contains("pk_live_SECRET"), "{e}");
        }
        let e = BridgeSecrets::from_json(r#"{"trifft_api_token": 12345678}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("trifft_api_token must hold a string"),
            "{e}"
        );
        assert!(!e.to_string().contains("12345678"), "{e}");
    }

    #[tokio::test]
    async fn from_env_picks_the_source_and_names_the_variable() {
        let none: [(&str, &str); 0] = [];
        let e = from_env(&none).await.err().unwrap();
        assert!(
            matches!(e, Error::Config { ref name, .. } if name == SECRET_ARN_VAR),
            "{e}"
        );

        let sandbox = [(SANDBOX_SECRETS_VAR, r#"{"trifft_api_token":"tt"}"#)];
        let s = from_env(&sandbox).await.unwrap().get().await.unwrap();
        assert_eq!(s.trifft_api_token.as_ref().unwrap().expose(), "tt");

        let broken = [(SANDBOX_SECRETS_VAR, "tt-not-json")];
        let e = from_env(&broken).await.err().unwrap();
        assert!(
            e.to_string().contains(SANDBOX_SECRETS_VAR) && !e.to_string().contains("tt-not-json"),
            "{e}"
        );

        let bad_ttl = [(SECRET_ARN_VAR, "arn:x"), (CACHE_SECONDS_VAR, "soon")];
        let config = aws_config::SdkConfig::builder().build();
        let e = from_sdk_config(&bad_ttl, &config).err().unwrap();
        assert!(e.to_string().contains(CACHE_SECONDS_VAR), "{e}");
    }

    /// A fetch that counts its calls and answers from a script of results.
    struct Script {
        calls: AtomicUsize,
        token: std::sync::Mutex<Result<String, u16>>,
    }

    impl Script {
        fn new(token: &str) -> Self {
            Script {
                calls: AtomicUsize::new(0),
                token: std::sync::Mutex::new(Ok(token.to_string())),
            }
        }
        fn set(&self, answer: Result<&str, u16>) {
            *self.token.lock().unwrap() = answer.map(str::to_string);
        }
        async fn fetch(&self) -> Result<BridgeSecrets> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let answer = self.token.lock().unwrap().clone();
            match answer {
                Ok(token) => Ok(BridgeSecrets {
                    trifft_api_token: Some(SecretString::new(token)),
                    ..Default::default()
                }),
                Err(status) => Err(Error::Upstream {
                    service: Service::SecretsManager,
                    status,
                    detail: "ThrottlingException".into(),
                }),
            }
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn token(s: &BridgeSecrets) -> &str {
        s.trifft_api_token.as_ref().unwrap().expose()
    }

    #[tokio::test(start_paused = true)]
    async fn caches_for_the_ttl_and_refresh_forces_a_fetch() {
        let script = Script::new("one");
        let cache = SecretCache::new(Duration::from_secs(300));
        assert_eq!(token(&cache.get(|| script.fetch()).await.unwrap()), "one");
        script.set(Ok("two"));
        tokio::time::advance(Duration::from_secs(200)).await;
        assert_eq!(token(&cache.get(|| script.fetch()).await.unwrap()), "one");
        assert_eq!(script.calls(), 1);
        assert_eq!(
            token(&cache.refresh(|| script.fetch()).await.unwrap()),
            "two"
        );
        assert_eq!(script.calls(), 2);
        script.set(Ok("three"));
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(token(&cache.get(|| script.fetch()).await.unwrap()), "three");
        assert_eq!(script.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_gets_share_one_fetch() {
        let script = Arc::new(Script::new("one"));
        let cache = Arc::new(SecretCache::new(Duration::from_secs(300)));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (script, cache) = (script.clone(), cache.clone());
                tokio::spawn(async move { cache.get(|| script.fetch()).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(token(&task.await.unwrap().unwrap()), "one");
        }
        assert_eq!(script.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_gets_and_refreshes_share_fetches() {
        let script = Arc::new(Script::new("one"));
        let cache = Arc::new(SecretCache::new(Duration::from_secs(300)));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (script, cache) = (script.clone(), cache.clone());
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    cache.get(|| script.fetch()).await
                } else {
                    cache.refresh(|| script.fetch()).await
                }
            }));
        }
        for task in tasks {
            assert_eq!(token(&task.await.unwrap().unwrap()), "one");
        }
        assert!(script.calls() >= 1);
        // Refresh callers that queued behind the first fetch may start one more (theirs
        // began before it); never one per caller.
        assert!(script.calls() <= 2, "{} fetches", script.calls());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_keeps_the_cache_and_is_shared_not_cached() {
        let script = Arc::new(Script::new("one"));
        let cache = Arc::new(SecretCache::new(Duration::from_secs(60)));
        cache.get(|| script.fetch()).await.unwrap();
        script.set(Err(503));
        // refresh reports the failure; get still serves the value within its TTL.
        let e = cache.refresh(|| script.fetch()).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert_eq!(token(&cache.get(|| script.fetch()).await.unwrap()), "one");
        // Past the TTL, concurrent gets share the one failing fetch.
        tokio::time::advance(Duration::from_secs(61)).await;
        let before = script.calls();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (script, cache) = (script.clone(), cache.clone());
                tokio::spawn(async move { cache.get(|| script.fetch()).await })
            })
            .collect();
        for task in tasks {
            assert!(matches!(
                task.await.unwrap(),
                Err(Error::Upstream { status: 503, .. })
            ));
        }
        assert_eq!(script.calls() - before, 1);
        // The failure is not cached: the next call fetches again and recovers.
        script.set(Ok("two"));
        assert_eq!(token(&cache.get(|| script.fetch()).await.unwrap()), "two");
    }
}
