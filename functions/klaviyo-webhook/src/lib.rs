//! Klaviyo Flow webhooks to TRIFFT's Batch API: authenticated, validated, idempotent.
//!
//! One request (one action, or `{"actions": [...]}` with up to 500) becomes one TRIFFT
//! batch. The steps are separate so each can be tested alone: [`auth::authenticate`]
//! (before anything is parsed), [`parse::parse_request`] (pure), [`batch::to_batch_items`]
//! (pure), then the idempotent send in [`handler`].
//!
//! Klaviyo retries 429/500/502/503 for up to 24 h and skips the profile on any other
//! non-2xx answer, so: bad input is a 4xx with a message for the flow log, anything that a
//! later try can fix is a 503 with Retry-After, and never a 500.

pub mod auth;
pub mod batch;
pub mod parse;
mod respond;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::json;
use tracing::{Instrument, error, info, warn};

use loyalty_bridge::secrets::SecretSource;
use loyalty_bridge::state::{Claim, StateStore};
use loyalty_bridge::trifft::TrifftApi;
use loyalty_bridge::{Deadline, Error};

pub use auth::{AuthFailure, Caller};
pub use batch::{IdempotencyKey, idempotency_key, to_batch_items};
pub use parse::{
    Action, ActionKind, ErrorCode, FieldError, Invalid, WebhookRequest, parse_request,
};
pub use settings::WebhookSettings;

use respond::{Answer, RecordedOutcome};

/// What the handler needs; traits, so tests pass the emulator or fakes.
pub struct Deps {
    pub trifft: Arc<dyn TrifftApi>,
    pub state: Arc<dyn StateStore>,
    pub secrets: Arc<dyn SecretSource>,
    pub settings: WebhookSettings,
}

/// The invocation budget when the request carries no Lambda context (tests, local runs).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(30);
/// 2001-09-09 in epoch milliseconds: anything smaller is not an invocation deadline.
const PLAUSIBLE_EPOCH_MS: u64 = 1_000_000_000_000;
/// Kept free before the deadline to record the outcome after TRIFFT answered.
const STATE_MARGIN: Duration = Duration::from_secs(1);
/// Retry-After while another delivery of the same request is in flight.
const IN_PROGRESS_RETRY_AFTER: Duration = Duration::from_secs(10);

/// The HTTP API handler. Never returns `Err` (that would be a 500 and Klaviyo would drop
/// the profile from the flow); every outcome is an answer with its own status.
pub async fn handler(deps: &Deps, request: Request) -> Result<Response<Body>, lambda_http::Error> {
    let request_id = request_id(&request);
    let span = tracing::info_span!("klaviyo_webhook", %request_id, idempotency_key = tracing::field::Empty);
    Ok(handle(deps, request).instrument(span).await.into_response())
}

async fn handle(deps: &Deps, request: Request) -> Answer {
    let settings = &deps.settings;
    let (deadline, claim_until) = invocation_deadline(&request);
    tracing::debug!(
        budget_ms = deadline.remaining().as_millis() as u64,
        "invocation budget"
    );
    let body: &[u8] = request.body().as_ref();

    if body.len() > settings.max_body_bytes {
        warn!(
            bytes = body.len(),
            limit = settings.max_body_bytes,
            "body too large"
        );
        return Answer::too_large(body.len(), settings.max_body_bytes);
    }

    let secrets = match deps.secrets.get().await {
        Ok(secrets) => secrets,
        Err(e) => {
            error!(alarm = "bridge_secret", error = %e, "cannot read the bridge secret");
            return Answer::unavailable(
                "the bridge cannot read its secret; try again later",
                settings.retry_after,
            );
        }
    };
    let caller = match auth::authenticate(
        request.headers(),
        body,
        &secrets,
        &settings.secret_header,
        settings.system_webhook_max_age,
        Utc::now(),
    ) {
        Ok(caller) => caller,
        Err(AuthFailure::Refused(reason)) => {
            warn!(%reason, "unauthorized");
            return Answer::unauthorized(&reason);
        }
        Err(AuthFailure::NotConfigured) => {
            error!(
                alarm = "bridge_secret",
                "the bridge secret holds no klaviyo_webhook_secret"
            );
            return Answer::unavailable(
                "the webhook is not configured yet; try again later",
                settings.retry_after,
            );
        }
    };
    drop(secrets);

    if request.method() != lambda_http::http::Method::POST {
        return Answer::method_not_allowed();
    }

    let parsed = match parse::parse_request(body, settings) {
        Ok(parsed) => parsed,
        Err(invalid) => {
            let first = &invalid.errors[0];
            warn!(status = invalid.status(), code = ?first.code, field = first.field.as_deref(), errors = invalid.errors.len(), "refused input");
            return Answer::invalid(&invalid);
        }
    };
    let key = batch::idempotency_key(&parsed);
    tracing::Span::current().record("idempotency_key", loggable_key(&key.public).as_str());
    let items = batch::to_batch_items(&parsed.actions, &settings.paths);

    match deps.state.claim(&key.scoped, claim_until).await {
        Ok(Claim::Acquired) => {}
        Ok(Claim::Completed { outcome }) => {
            let recorded = RecordedOutcome::decode(&outcome);
            if recorded
                .as_ref()
                .is_some_and(|r| r.request_hash != key.request_hash)
            {
                warn!("idempotency_key reused with a different request");
                return Answer::key_reused(&key.public);
            }
            info!("duplicate delivery, nothing sent");
            return Answer::duplicate(&key.public, recorded.map(|r| r.items), &parsed.warnings);
        }
        Ok(Claim::InProgress) => {
            info!("the same request is being handled by another delivery");
            return Answer::unavailable(
                "the same request is being processed; try again shortly",
                IN_PROGRESS_RETRY_AFTER,
            );
        }
        Err(e) => {
            error!(alarm = "state_store", error = %e, "cannot claim the idempotency key");
            return Answer::unavailable(
                "the bridge cannot record the request; try again later",
                settings.retry_after,
            );
        }
    }

    let sent = deps
        .trifft
        .submit_batch(&items, deadline.less(STATE_MARGIN))
        .await;
    if let Err(e) = sent {
        // Nothing was queued (as far as TRIFFT told us): give the key back so a retry can do the work.
        if let Err(release) = deps.state.release(&key.scoped).await {
            warn!(error = %release, "cannot release the claim; it expires at the invocation deadline");
        }
        return trifft_failure(&e, settings.retry_after);
    }

    let outcome = RecordedOutcome {
        request_hash: key.request_hash.clone(),
        items: items.len(),
        caller,
        at: Utc::now(),
    };
    if let Err(e) = deps.state.complete(&key.scoped, &outcome.encode()).await {
        // The batch is queued: answer success so Klaviyo stops, and flag the gap.
        error!(alarm = "state_store", error = %e, "batch sent but the idempotency record was not completed");
    }
    info!(items = items.len(), actions = ?action_counts(&parsed.actions), "batch queued in TRIFFT");
    Answer::accepted(&key.public, items.len(), &parsed.warnings)
}

fn trifft_failure(e: &Error, default_retry_after: Duration) -> Answer {
    match e {
        Error::RateLimited { retry_after, .. } => {
            warn!(error = %e, "TRIFFT is rate limiting");
            Answer::unavailable(
                "TRIFFT is rate limiting; try again later",
                (*retry_after).max(Duration::from_secs(1)),
            )
        }
        Error::Unauthorized { .. } | Error::Forbidden { .. } => {
            // 503, not 4xx: Klaviyo keeps retrying for 24 h while an operator fixes the token.
            error!(alarm = "trifft_auth", error = %e, "TRIFFT refused the bridge token");
            Answer::unavailable(
                "TRIFFT refused the bridge's credential; an operator has been alerted",
                default_retry_after,
            )
        }
        Error::Rejected { errors, .. } => {
            warn!(error = %e, "TRIFFT rejected the batch");
            let message = errors
                .iter()
                .map(|d| {
                    if d.detail.is_empty() {
                        d.title.as_str()
                    } else {
                        d.detail.as_str()
                    }
                })
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            Answer::trifft_rejected(if message.is_empty() {
                "TRIFFT rejected the batch"
            } else {
                &message
            })
        }
        Error::InvalidInput { field, message } => {
            warn!(error = %e, "batch refused before sending");
            Answer::invalid_field(field, message)
        }
        Error::Secret(_) | Error::Config { .. } => {
            error!(alarm = "bridge_secret", error = %e, "cannot call TRIFFT: configuration");
            Answer::unavailable(
                "the bridge is not configured to call TRIFFT; try again later",
                default_retry_after,
            )
        }
        _ => {
            warn!(error = %e, "TRIFFT failed");
            Answer::unavailable(
                "TRIFFT is unavailable; try again later",
                default_retry_after,
            )
        }
    }
}

/// The deadline for upstream calls, and the instant the claim stops blocking redeliveries.
fn invocation_deadline(request: &Request) -> (Deadline, DateTime<Utc>) {
    // Lambda sends epoch milliseconds; some emulators (cargo lambda watch) send the
    // timeout itself (e.g. 600000), which is no point in time: use the default then.
    match request
        .lambda_context_ref()
        .filter(|c| c.deadline >= PLAUSIBLE_EPOCH_MS)
    {
        Some(ctx) => {
            let at = DateTime::<Utc>::from_timestamp_millis(ctx.deadline as i64)
                .unwrap_or_else(|| Utc::now() + DEFAULT_BUDGET);
            (Deadline::from_epoch_millis(ctx.deadline), at)
        }
        None => (Deadline::after(DEFAULT_BUDGET), Utc::now() + DEFAULT_BUDGET),
    }
}

fn request_id(request: &Request) -> String {
    if let Some(ctx) = request
        .lambda_context_ref()
        .filter(|c| !c.request_id.is_empty())
    {
        return ctx.request_id.clone();
    }
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.request_id.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Sender keys may be built from profile data; one holding an email is logged as a hash.
fn loggable_key(key: &str) -> String {
    if key.contains('@') {
        use sha2::Digest;
        format!(
            "redacted-sha256:{}",
            &hex::encode(sha2::Sha256::digest(key.as_bytes()))[..16]
        )
    } else {
        key.to_string()
    }
}

fn action_counts(actions: &[Action]) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for a in actions {
        let n = counts.entry(a.action.as_str()).or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or(0) + 1);
    }
    serde_json::Value::Object(counts)
}

#[cfg(test)]
mod tests;
