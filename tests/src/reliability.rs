//! Helpers for the reliability suite (tests/tests/reliability_*.rs): the three functions
//! wired to the sandbox with short retry waits, API Gateway events with raw bodies, and
//! the exactly-once checks over what the emulators hold.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use lambda_http::Request;
use loyalty_bridge::klaviyo::{KlaviyoClient, KlaviyoSettings};
use loyalty_bridge::mapping::standard::is_e164;
use loyalty_bridge::retry::RetryPolicy;
use loyalty_bridge::secrets::{BridgeSecrets, EnvSecretSource, RotatingSecret, SecretString};
use loyalty_bridge::state::StateStore;
use loyalty_bridge::trifft::{TrifftClient, TrifftPaths, TrifftSettings};
use loyalty_bridge::{Deadline, Error};
use sandbox::{Faults, KlaviyoRates, Sandbox, SandboxConfig};
use serde_json::{Value, json};

/// The sandbox's credentials (its defaults) and the webhook secrets the samples carry.
pub const KLAVIYO_KEY: &str = "pk_sandbox_0123456789abcdef";
pub const TRIFFT_TOKEN: &str = "trifft_sandbox_token";
pub const HOOK_SECRET: &str = "sandbox-hook-secret";
pub const CUSTOM_SECRET: &str = "sandbox-custom-secret";
/// Every secret value the bridge holds in these tests: none may ever be logged.
pub const ALL_SECRETS: [&str; 4] = [KLAVIYO_KEY, TRIFFT_TOKEN, HOOK_SECRET, CUSTOM_SECRET];

/// One of the 15 TRIFFT activity types the sync maps (DESIGN §4), as the shared crate lists them.
pub fn is_standard_kind(kind: &str) -> bool {
    loyalty_bridge::mapping::standard::STANDARD_METRICS
        .iter()
        .any(|(k, _)| *k == kind)
}

/// Klaviyo retries these answers of a flow webhook (DESIGN §1); anything else is final.
pub const KLAVIYO_RETRIES: [u16; 4] = [429, 500, 502, 503];

pub fn bridge_secrets() -> BridgeSecrets {
    BridgeSecrets {
        klaviyo_private_key: Some(SecretString::new(KLAVIYO_KEY)),
        trifft_api_token: Some(SecretString::new(TRIFFT_TOKEN)),
        klaviyo_webhook: Some(RotatingSecret {
            current: SecretString::new(HOOK_SECRET),
            previous: None,
        }),
        klaviyo_system_webhook: None,
        custom_events: Some(RotatingSecret {
            current: SecretString::new(CUSTOM_SECRET),
            previous: None,
        }),
    }
}

/// A small sandbox: TRIFFT's limit raised (the clients match it) and a 1 s lockout, so
/// seeded faults cost seconds, not minutes.
pub async fn small_sandbox(seed: u64, members: usize, events: usize, faults: Faults) -> Sandbox {
    Sandbox::start(SandboxConfig {
        seed,
        members,
        events,
        klaviyo_rates: KlaviyoRates::Real,
        trifft_rate: (500, Duration::from_secs(10)),
        trifft_lockout: Duration::from_secs(1),
        faults,
        import_job_processing: Duration::from_millis(50),
        ..Default::default()
    })
    .await
    .expect("sandbox starts")
}

/// Short waits, enough attempts to outlast the soak's fault rates most of the time (when
/// they do not, the function answers retryably and the caller tries again).
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(20),
        factor: 1.5,
        max_delay: Duration::from_millis(300),
        jitter: 0.5,
    }
}

pub fn secret_source() -> Arc<EnvSecretSource> {
    Arc::new(EnvSecretSource::from_secrets(bridge_secrets()))
}

pub fn trifft_client(sb: &Sandbox, secrets: Arc<EnvSecretSource>) -> TrifftClient {
    TrifftClient::new(
        TrifftSettings {
            base_url: sb.trifft_url(),
            paths: TrifftPaths::default(),
            request_timeout: Duration::from_secs(5),
            retry: quick_retry(),
            rate: (450, Duration::from_secs(10)),
            lockout: Duration::from_secs(1),
        },
        secrets,
    )
    .expect("TRIFFT client")
}

pub fn klaviyo_client(sb: &Sandbox, secrets: Arc<EnvSecretSource>) -> KlaviyoClient {
    KlaviyoClient::new(
        KlaviyoSettings {
            base_url: sb.klaviyo_url(),
            request_timeout: Duration::from_secs(5),
            retry: quick_retry(),
            ..Default::default()
        },
        secrets,
    )
    .expect("Klaviyo client")
}

pub fn webhook_deps(sb: &Sandbox, state: Arc<dyn StateStore>) -> klaviyo_webhook::Deps {
    let secrets = secret_source();
    klaviyo_webhook::Deps {
        trifft: Arc::new(trifft_client(sb, secrets.clone())),
        state,
        secrets,
        settings: klaviyo_webhook::WebhookSettings {
            retry_after: Duration::from_secs(1),
            ..Default::default()
        },
    }
}

pub fn custom_deps(sb: &Sandbox) -> custom_events::Deps {
    let secrets = secret_source();
    custom_events::Deps {
        klaviyo: Arc::new(klaviyo_client(sb, secrets.clone())),
        secrets,
        mapping: Arc::new(
            custom_events::load_mapping(&[("UNSET", "")]).expect("the built-in mapping"),
        ),
        settings: custom_events::CustomEventsSettings::default(),
    }
}

pub fn sync_deps(sb: &Sandbox, state: Arc<dyn StateStore>) -> standard_sync::Deps {
    let secrets = secret_source();
    standard_sync::Deps {
        trifft: Arc::new(trifft_client(sb, secrets.clone())),
        klaviyo: Arc::new(klaviyo_client(sb, secrets)),
        state,
        settings: standard_sync::SyncSettings {
            import_poll_interval: Duration::from_millis(100),
            safety_margin: Duration::from_secs(2),
            ..Default::default()
        },
    }
}

/// The HTTP body of an API Gateway v2 event: text, or raw bytes sent base64-encoded (as
/// API Gateway does for binary bodies), or a base64 flag over text that is not base64.
#[derive(Debug, Clone)]
pub enum Body {
    Text(String),
    Bytes(Vec<u8>),
    BadBase64(String),
}

/// An API Gateway HTTP API (payload v2) event, as Lambda hands it to `lambda_http`.
pub fn api_event(path: &str, method: &str, headers: &[(&str, &str)], body: &Body) -> Value {
    let mut h = serde_json::Map::new();
    h.insert("content-type".into(), json!("application/json"));
    for (k, v) in headers {
        h.insert(k.to_ascii_lowercase(), json!(v));
    }
    let (text, base64) = match body {
        Body::Text(t) => (t.clone(), false),
        Body::Bytes(b) => (base64::engine::general_purpose::STANDARD.encode(b), true),
        Body::BadBase64(t) => (t.clone(), true),
    };
    json!({
        "version": "2.0",
        "routeKey": format!("{method} {path}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": h,
        "requestContext": {
            "accountId": "123456789012", "apiId": "local", "domainName": "local.execute-api.localhost",
            "requestId": "reliability", "routeKey": format!("{method} {path}"), "stage": "$default",
            "timeEpoch": 0,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"}
        },
        "body": text,
        "isBase64Encoded": base64
    })
}

/// What lambda_http makes of an event (`Err` when it cannot decode it: Lambda's runtime
/// then fails the invocation before any handler code runs).
pub fn to_request(event: &Value) -> Result<Request, String> {
    lambda_http::request::from_str(&event.to_string()).map_err(|e| e.to_string())
}

/// One HTTP answer of a function.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Answer {
    /// The error message (and its field) of a 4xx body, lower-cased, for assertions.
    pub fn error_text(&self) -> String {
        let e = &self.body["error"];
        format!(
            "{} {} {} {}",
            e["code"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default(),
            e["field"].as_str().unwrap_or_default(),
            self.body["errors"]
        )
        .to_lowercase()
    }
}

fn answer(response: lambda_http::Response<lambda_http::Body>) -> Answer {
    Answer {
        status: response.status().as_u16(),
        retry_after: response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: serde_json::from_slice(response.body().as_ref()).unwrap_or_else(
            |_| json!({"not_json": String::from_utf8_lossy(response.body().as_ref())}),
        ),
    }
}

pub async fn call_webhook(deps: &klaviyo_webhook::Deps, request: Request) -> Answer {
    answer(
        klaviyo_webhook::handler(deps, request)
            .await
            .expect("klaviyo-webhook never returns Err"),
    )
}

pub async fn call_custom(deps: &custom_events::Deps, request: Request) -> Answer {
    answer(
        custom_events::handler(deps, request)
            .await
            .expect("custom-events never returns Err"),
    )
}

pub fn webhook_request(body: &Value) -> Request {
    to_request(&api_event(
        "/klaviyo/webhook",
        "POST",
        &[("x-bridge-secret", HOOK_SECRET)],
        &Body::Text(body.to_string()),
    ))
    .expect("a valid event")
}

pub fn custom_request(body: &Value) -> Request {
    to_request(&api_event(
        "/trifft/custom-events",
        "POST",
        &[("x-trifft-secret", CUSTOM_SECRET)],
        &Body::Text(body.to_string()),
    ))
    .expect("a valid event")
}

/// Deliver like Klaviyo (or TRIFFT) does: again after each retryable answer, up to
/// `attempts` times. Returns every answer, the last one final.
pub async fn deliver_until_final<F, Fut>(attempts: usize, mut send: F) -> Vec<Answer>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let mut answers = Vec::new();
    for _ in 0..attempts {
        let a = send().await;
        let retry = KLAVIYO_RETRIES.contains(&a.status);
        answers.push(a);
        if !retry {
            break;
        }
        // Honour Retry-After, capped: the sandbox's lockout is 1 s.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    answers
}

/// Sync until the feeds are done, as the schedule would: a run stopped by its deadline
/// or failing retryably is followed by another.
pub async fn sync_to_the_end(
    deps: &standard_sync::Deps,
    budget: Duration,
    max_runs: usize,
) -> Vec<standard_sync::SyncSummary> {
    let mut summaries = Vec::new();
    for _ in 0..max_runs {
        let trigger = standard_sync::Trigger::direct(standard_sync::Mode::Backfill);
        match standard_sync::run_sync(deps, trigger, Deadline::after(budget)).await {
            Ok(summary) => {
                let done = summary.completed;
                summaries.push(summary);
                if done {
                    return summaries;
                }
            }
            Err(e) => assert!(
                e.is_retryable() && !matches!(e, Error::Conflict(_)),
                "a run failed for good: {e}"
            ),
        }
    }
    panic!("not complete after {max_runs} runs: {summaries:#?}");
}

/// What the Klaviyo emulator stored, checked against TRIFFT's feed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Delivery {
    pub expected: usize,
    pub stored: usize,
    pub lost: usize,
    pub doubled: usize,
    pub duplicates_dropped: u64,
}

/// Every deliverable TRIFFT event (a standard type with a member) stored exactly once in
/// Klaviyo by unique_id. A re-send Klaviyo drops by unique_id is fine; a second stored
/// copy is not.
pub fn event_delivery(sb: &Sandbox) -> Delivery {
    let (trifft, klaviyo) = (sb.trifft(), sb.klaviyo());
    let expected: HashSet<&str> = trifft
        .events
        .iter()
        .filter(|e| is_standard_kind(&e.kind) && !e.member_id.trim().is_empty())
        .map(|e| e.id.as_str())
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for e in &klaviyo.events {
        *seen
            .entry(e.unique_id.as_deref().unwrap_or(""))
            .or_default() += 1;
    }
    Delivery {
        expected: expected.len(),
        stored: klaviyo.events.len(),
        lost: expected.iter().filter(|id| !seen.contains_key(*id)).count(),
        doubled: seen.values().filter(|n| **n > 1).count(),
        duplicates_dropped: klaviyo.duplicates_dropped,
    }
}

/// Members whose Klaviyo profile differs from TRIFFT's latest values (members sharing an
/// email or phone are one Klaviyo identity, so they are left out), and how many were checked.
pub fn stale_profiles(sb: &Sandbox) -> (Vec<String>, usize) {
    let (trifft, klaviyo) = (sb.trifft(), sb.klaviyo());
    let by_external_id: HashMap<&str, &sandbox::KlaviyoProfile> = klaviyo
        .profiles
        .iter()
        .filter_map(|p| p.external_id.as_deref().map(|id| (id, p)))
        .collect();
    let mut owners: HashMap<String, usize> = HashMap::new();
    for m in &trifft.members {
        for key in [m.email.clone(), m.phone.clone().filter(|p| is_e164(p))]
            .into_iter()
            .flatten()
        {
            *owners.entry(key).or_default() += 1;
        }
    }
    let mut stale = Vec::new();
    let mut checked = 0;
    for m in &trifft.members {
        let shared = [m.email.clone(), m.phone.clone()]
            .into_iter()
            .flatten()
            .any(|k| owners.get(&k).is_some_and(|n| *n > 1));
        if m.id.is_empty() || shared {
            continue;
        }
        checked += 1;
        let Some(profile) = by_external_id.get(m.id.as_str()) else {
            stale.push(format!("{}: no profile", m.id));
            continue;
        };
        let p = &profile.properties;
        let want = [
            ("trifft_points", json!(m.points)),
            ("trifft_tier", json!(m.tier)),
            ("trifft_available_coupons", json!(m.available_coupons)),
            ("trifft_segments", json!(m.segments)),
            ("trifft_coupons", Value::Array(m.coupons.clone())),
        ];
        for (key, value) in want {
            if p.get(key) != Some(&value) {
                stale.push(format!("{}: {key} {:?} != {value}", m.id, p.get(key)));
            }
        }
    }
    (stale, checked)
}

/// How often each webhook request (by its `reason` marker) was applied by TRIFFT, from
/// the emulator's batch items and their outcomes.
pub fn applied_by_reason(sb: &Sandbox) -> HashMap<String, usize> {
    let t = sb.trifft();
    let mut applied = HashMap::new();
    for o in t.outcomes.iter().filter(|o| o.applied) {
        let reason = t
            .batches
            .get(o.batch)
            .and_then(|b| b.get(o.index))
            .and_then(|item| item["payload"]["reason"].as_str())
            .unwrap_or("")
            .to_string();
        *applied.entry(reason).or_insert(0) += 1;
    }
    applied
}

/// Requests the emulators received in all (faulted ones included).
pub fn upstream_requests(sb: &Sandbox) -> u64 {
    sb.trifft().request_counts.values().sum::<u64>()
        + sb.klaviyo().request_counts.values().sum::<u64>()
}
