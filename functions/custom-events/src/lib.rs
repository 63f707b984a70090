//! Non-standard TRIFFT events to Klaviyo through a declarative mapping (DESIGN §5).
//!
//! A TRIFFT custom webhook (API Gateway HTTP API, payload v2) is authenticated, mapped by
//! [`loyalty_bridge::mapping::custom::Mapping`] and sent to Klaviyo: one event with
//! `POST /api/events`, several as one bulk job. Profiles are only identified, never updated.
//!
//! | answer | when |
//! |---|---|
//! | 202 `{"status":"sent","events":[{"metric","unique_id"}],...}` | Klaviyo accepted the events |
//! | 200 `{"status":"ignored","reason"}` | caused by the bridge itself, or an ignored type: nothing sent |
//! | 400 | not JSON, or not an event object / array / `{"events": [...]}` |
//! | 401 | no or wrong secret header / Basic credentials |
//! | 405 | not a POST |
//! | 413 | body over `CUSTOM_EVENTS_MAX_BODY_BYTES` |
//! | 422 | unmapped type or invalid values (the reason names the field), or Klaviyo refused the event |
//! | 503 + Retry-After | Klaviyo throttling, failing or unreachable, or our Klaviyo key refused: the sender may retry |
//!
//! Errors are `{"error": {"code", "message", "field"}}` (422 adds `"events": [...]`).

pub mod auth;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lambda_http::http::{HeaderName, Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use loyalty_bridge::config::{self, Vars};
use loyalty_bridge::klaviyo::KlaviyoApi;
use loyalty_bridge::klaviyo::bulk::{EventBulkBuilder, EventBulkRequest, validate_event};
use loyalty_bridge::mapping::custom::{EventOrigin, MappedEvent, MappedRequest, Mapping, Refusal};
use loyalty_bridge::secrets::SecretSource;
use loyalty_bridge::{Deadline, Error};
use serde_json::{Value, json};

use crate::auth::AuthFailure;

/// The mapping used when `CUSTOM_EVENTS_MAPPING` is not set.
pub const EXAMPLE_MAPPING: &str = include_str!("../mappings/example.json");
pub const MAPPING_VAR: &str = "CUSTOM_EVENTS_MAPPING";
pub const AUTH_HEADER_VAR: &str = "CUSTOM_EVENTS_AUTH_HEADER";
pub const MAX_BODY_VAR: &str = "CUSTOM_EVENTS_MAX_BODY_BYTES";
pub const RETRY_AFTER_VAR: &str = "CUSTOM_EVENTS_RETRY_AFTER_SECONDS";
pub const DEFAULT_AUTH_HEADER: &str = "x-trifft-secret";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Answer before Lambda's own deadline, so a slow Klaviyo gives the sender a 503, not a timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// The budget when the request carries no Lambda deadline (tests).
const FALLBACK_BUDGET: Duration = Duration::from_secs(25);

/// Settings read from the environment at start.
#[derive(Debug, Clone)]
pub struct CustomEventsSettings {
    /// `CUSTOM_EVENTS_AUTH_HEADER`: the header TRIFFT's Header Authentication sends.
    pub auth_header: HeaderName,
    /// `CUSTOM_EVENTS_MAX_BODY_BYTES`: larger bodies get 413.
    pub max_body_bytes: usize,
    /// `CUSTOM_EVENTS_RETRY_AFTER_SECONDS`: the Retry-After of a 503 when Klaviyo named none.
    pub retry_after: Duration,
}

impl Default for CustomEventsSettings {
    fn default() -> Self {
        CustomEventsSettings {
            auth_header: HeaderName::from_static(DEFAULT_AUTH_HEADER),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }
}

impl CustomEventsSettings {
    pub fn from_env(vars: &(impl Vars + ?Sized)) -> loyalty_bridge::Result<Self> {
        let name = config::optional(vars, AUTH_HEADER_VAR)
            .unwrap_or_else(|| DEFAULT_AUTH_HEADER.to_string());
        let auth_header =
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                Error::config(
                    AUTH_HEADER_VAR,
                    format!("{name:?} is not an HTTP header name"),
                )
            })?;
        let max_body_bytes = config::parsed_or(vars, MAX_BODY_VAR, DEFAULT_MAX_BODY_BYTES)?;
        if max_body_bytes == 0 {
            return Err(Error::config(MAX_BODY_VAR, "must be at least 1"));
        }
        let retry_after = config::seconds_or(vars, RETRY_AFTER_VAR, DEFAULT_RETRY_AFTER)?;
        Ok(CustomEventsSettings {
            auth_header,
            max_body_bytes,
            retry_after,
        })
    }
}

/// The mapping from `CUSTOM_EVENTS_MAPPING` (JSON text), else the shipped example;
/// validated now, so a bad file stops the function at start with the rule and field named.
pub fn load_mapping(vars: &(impl Vars + ?Sized)) -> loyalty_bridge::Result<Mapping> {
    match config::optional(vars, MAPPING_VAR) {
        Some(text) => Mapping::from_json(&text, MAPPING_VAR),
        None => Mapping::from_json(EXAMPLE_MAPPING, "mappings/example.json (built in)"),
    }
}

/// What the handler needs; tests pass fakes or the sandbox-backed clients.
pub struct Deps {
    pub klaviyo: Arc<dyn KlaviyoApi>,
    pub secrets: Arc<dyn SecretSource>,
    pub mapping: Arc<Mapping>,
    pub settings: CustomEventsSettings,
}

/// One API Gateway request. Input never makes this return `Err`: every outcome is an answer.
pub async fn handler(deps: &Deps, request: Request) -> Result<Response<Body>, lambda_http::Error> {
    let deadline =
        invocation_deadline(request.lambda_context_ref().map(|c| c.deadline)).less(DEADLINE_MARGIN);
    Ok(respond(deps, &request, deadline).await.into_response()?)
}

/// Epoch milliseconds below this (September 2001) are not a Lambda deadline.
const EPOCH_MS_FLOOR: u64 = 1_000_000_000_000;

/// Lambda sends the deadline as Unix epoch milliseconds. The `cargo lambda watch`
/// emulator sends the function timeout in milliseconds instead (e.g. 600000), which read
/// as an epoch would leave no time at all; such a value is taken as the time left.
fn invocation_deadline(deadline_ms: Option<u64>) -> Deadline {
    match deadline_ms {
        Some(ms) if ms >= EPOCH_MS_FLOOR => Deadline::from_epoch_millis(ms),
        Some(ms) if ms > 0 => Deadline::after(Duration::from_millis(ms)),
        _ => Deadline::after(FALLBACK_BUDGET),
    }
}

/// An answer before it becomes an HTTP response.
struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<Duration>,
    extra_header: Option<(HeaderName, &'static str)>,
}

impl Answer {
    fn new(status: StatusCode, body: Value) -> Self {
        Answer {
            status,
            body,
            retry_after: None,
            extra_header: None,
        }
    }

    fn error(
        status: StatusCode,
        code: &str,
        message: impl Into<String>,
        field: Option<&str>,
    ) -> Self {
        let mut error = json!({ "code": code, "message": message.into() });
        if let Some(f) = field {
            error["field"] = json!(f);
        }
        Answer::new(status, json!({ "error": error }))
    }

    fn unavailable(code: &str, message: impl Into<String>, retry_after: Duration) -> Self {
        let mut a = Answer::error(StatusCode::SERVICE_UNAVAILABLE, code, message, None);
        a.retry_after = Some(retry_after);
        a
    }

    fn into_response(self) -> Result<Response<Body>, lambda_http::http::Error> {
        let mut b = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up, at least 1: what senders parse.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            b = b.header(header::RETRY_AFTER, secs.max(1).to_string());
        }
        if let Some((name, value)) = self.extra_header {
            b = b.header(name, value);
        }
        b.body(Body::from(self.body.to_string()))
    }
}

async fn respond(deps: &Deps, request: &Request, deadline: Deadline) -> Answer {
    if request.method() != Method::POST {
        let mut a = Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "send a POST",
            None,
        );
        a.extra_header = Some((header::ALLOW, "POST"));
        return a;
    }

    // Auth comes first: nothing about the body is looked at for an unknown caller.
    let secrets = match deps.secrets.get().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, alarm = "bridge_secret", "cannot read the bridge secret");
            return Answer::unavailable(
                "unavailable",
                "the service cannot check credentials now",
                deps.settings.retry_after,
            );
        }
    };
    let Some(secret) = secrets
        .custom_events
        .as_ref()
        .filter(|s| !s.current.is_empty())
    else {
        tracing::error!(
            alarm = "custom_events_secret",
            "the bridge secret has no custom_events_secret"
        );
        return Answer::unavailable(
            "not_configured",
            "the service has no credentials configured",
            deps.settings.retry_after,
        );
    };
    if let Err(failure) = auth::authenticate(
        request.headers(),
        deps.settings.auth_header.as_str(),
        secret,
    ) {
        let message = match failure {
            AuthFailure::Missing => format!(
                "send the secret in the {} header or as Basic credentials",
                deps.settings.auth_header
            ),
            AuthFailure::Wrong => format!(
                "the {} header or Basic credentials do not match",
                deps.settings.auth_header
            ),
        };
        tracing::warn!(reason = ?failure, "refused a request without valid credentials");
        let mut a = Answer::error(StatusCode::UNAUTHORIZED, "unauthorized", message, None);
        a.extra_header = Some((header::WWW_AUTHENTICATE, "Basic realm=\"custom-events\""));
        return a;
    }

    let raw = request.body().as_ref();
    if raw.len() > deps.settings.max_body_bytes {
        return Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the body has {} bytes; at most {} are accepted",
                raw.len(),
                deps.settings.max_body_bytes
            ),
            Some("body"),
        );
    }
    let body: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => {
            let message = if raw.iter().all(u8::is_ascii_whitespace) {
                "the body is empty; send a JSON event".to_string()
            } else {
                format!("the body is not JSON: {e}")
            };
            return Answer::error(StatusCode::BAD_REQUEST, "malformed", message, Some("body"));
        }
    };

    let mapped = match deps.mapping.map_request(&body, Utc::now()) {
        Ok(m) => m,
        Err(Refusal::Malformed(e)) => return input_error(StatusCode::BAD_REQUEST, "malformed", e),
        Err(Refusal::Invalid(invalid)) => {
            let events: Vec<Value> = invalid
                .iter()
                .map(|i| {
                    let (field, message) = field_and_message(&i.error);
                    json!({ "index": i.index, "field": field, "message": message })
                })
                .collect();
            tracing::info!(
                invalid = events.len(),
                "refused events that cannot be mapped"
            );
            let mut a = match invalid.into_iter().next() {
                Some(first) => {
                    input_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid", first.error)
                }
                None => Answer::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "invalid events",
                    None,
                ),
            };
            a.body["error"]["events"] = Value::Array(events);
            return a;
        }
    };
    for w in &mapped.warnings {
        tracing::warn!(warning = %w, "custom event");
    }
    if mapped.events.is_empty() {
        let reason = mapped
            .skipped
            .first()
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| "nothing to send".into());
        tracing::info!(skipped = mapped.skipped.len(), %reason, "ignored");
        return Answer::new(
            StatusCode::OK,
            json!({ "status": "ignored", "reason": reason, "skipped": skipped(&mapped) }),
        );
    }
    // Klaviyo's own limits, checked before any call so a bad event is a 422, not a refusal mid-way.
    for m in &mapped.events {
        if let Err(e) = validate_event(&m.identity, &m.event) {
            return input_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e);
        }
    }

    match send(deps.klaviyo.as_ref(), &mapped.events, deadline).await {
        Ok(()) => {
            let events: Vec<Value> = mapped
                .events
                .iter()
                .map(|m| {
                    let mut e = json!({ "index": m.index, "metric": m.event.metric_name, "unique_id": m.event.unique_id });
                    if m.origin == EventOrigin::Klaviyo {
                        e["forwarded"] = json!(true);
                    }
                    e
                })
                .collect();
            tracing::info!(
                events = events.len(),
                skipped = mapped.skipped.len(),
                metrics = ?mapped.events.iter().map(|m| m.event.metric_name.as_str()).collect::<Vec<_>>(),
                "sent to Klaviyo"
            );
            Answer::new(
                StatusCode::ACCEPTED,
                json!({ "status": "sent", "events": events, "skipped": skipped(&mapped), "warnings": mapped.warnings }),
            )
        }
        Err(e) => klaviyo_failure(e, deps.settings.retry_after),
    }
}

fn skipped(mapped: &MappedRequest) -> Value {
    Value::Array(
        mapped
            .skipped
            .iter()
            .map(|s| json!({ "index": s.index, "reason": s.reason }))
            .collect(),
    )
}

fn field_and_message(e: &Error) -> (Option<String>, String) {
    match e {
        Error::InvalidInput { field, message } => (Some(field.clone()), message.clone()),
        other => (None, other.to_string()),
    }
}

fn input_error(status: StatusCode, code: &str, e: Error) -> Answer {
    let (field, message) = field_and_message(&e);
    let message = match &field {
        Some(f) => format!("{f}: {message}"),
        None => message,
    };
    Answer::error(status, code, message, field.as_deref())
}

/// One event: `POST /api/events`. Several: bulk jobs (one, within this function's body
/// limit). Every event has a deterministic unique_id, so a retry after a partial failure
/// (or a re-delivered webhook) is dropped by Klaviyo instead of counted twice.
async fn send(
    klaviyo: &dyn KlaviyoApi,
    events: &[MappedEvent],
    deadline: Deadline,
) -> loyalty_bridge::Result<()> {
    if let [only] = events {
        return klaviyo
            .create_event(&only.identity, &only.event, deadline)
            .await;
    }
    let mut builder = EventBulkBuilder::new();
    let mut requests: Vec<EventBulkRequest> = Vec::new();
    for m in events {
        if let Some(full) = builder.push(&m.identity, m.event.clone())? {
            requests.push(full);
        }
    }
    requests.extend(builder.finish());
    for r in &requests {
        klaviyo.bulk_create_events(r, deadline).await?;
    }
    Ok(())
}

fn klaviyo_failure(e: Error, default_wait: Duration) -> Answer {
    match &e {
        Error::Rejected { errors, .. } => {
            tracing::warn!(error = %e, "Klaviyo refused the events");
            let mut a = Answer::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "klaviyo_rejected",
                format!("Klaviyo refused the events: {e}"),
                errors.first().and_then(|d| d.pointer.as_deref()),
            );
            a.body["error"]["klaviyo_errors"] = json!(
                errors
                    .iter()
                    .map(|d| json!({ "code": d.code, "detail": d.detail, "pointer": d.pointer }))
                    .collect::<Vec<_>>()
            );
            a
        }
        Error::InvalidInput { .. } => input_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e),
        Error::Unauthorized { .. }
        | Error::Forbidden { .. }
        | Error::Config { .. }
        | Error::Secret(_) => {
            // Our own Klaviyo key: the sender cannot fix it, so it should retry while we do.
            tracing::error!(error = %e, alarm = "klaviyo_auth", "Klaviyo refused the bridge's private key");
            Answer::unavailable(
                "upstream_unavailable",
                "Klaviyo is not accepting events from the bridge now",
                default_wait,
            )
        }
        _ => {
            let wait = e.retry_after().unwrap_or(default_wait);
            tracing::warn!(error = %e, retry_after_s = wait.as_secs(), "Klaviyo unavailable; the sender may retry");
            Answer::unavailable(
                "upstream_unavailable",
                format!("Klaviyo is unavailable: {e}"),
                wait,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_from_lambda_and_from_the_emulator() {
        let now_ms = chrono::Utc::now().timestamp_millis() as u64;
        let real = invocation_deadline(Some(now_ms + 3_000)).remaining();
        assert!(
            real > Duration::from_secs(2) && real <= Duration::from_secs(3),
            "{real:?}"
        );
        let relative = invocation_deadline(Some(600_000)).remaining();
        assert!(
            relative > Duration::from_secs(599) && relative <= Duration::from_secs(600),
            "{relative:?}"
        );
        assert!(
            invocation_deadline(Some(now_ms - 1_000))
                .remaining()
                .is_zero(),
            "a past deadline stays past"
        );
        assert!(invocation_deadline(None).remaining() > Duration::from_secs(20));
    }
}
