//! The answers the webhook gives, each with the status Klaviyo acts on (DESIGN §1).

use std::time::Duration;

use chrono::{DateTime, Utc};
use lambda_http::http::{HeaderValue, StatusCode, header};
use lambda_http::{Body, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::parse::{Invalid, Warning};

pub(crate) struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<Duration>,
}

impl Answer {
    fn new(status: StatusCode, body: Value) -> Self {
        Answer {
            status,
            body,
            retry_after: None,
        }
    }

    fn error(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Self {
        Answer::new(
            status,
            json!({"error": {"code": code, "message": message, "field": field}}),
        )
    }

    pub(crate) fn accepted(key: &str, items: usize, warnings: &[Warning]) -> Self {
        Answer::new(
            StatusCode::ACCEPTED,
            json!({"status": "accepted", "idempotency_key": key, "items": items, "warnings": warnings}),
        )
    }

    pub(crate) fn duplicate(key: &str, items: Option<usize>, warnings: &[Warning]) -> Self {
        Answer::new(
            StatusCode::OK,
            json!({"status": "duplicate", "idempotency_key": key, "items": items, "warnings": warnings}),
        )
    }

    pub(crate) fn invalid(invalid: &Invalid) -> Self {
        let status = StatusCode::from_u16(invalid.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let first = &invalid.errors[0];
        let mut message = first.message.clone();
        if invalid.errors.len() > 1 {
            message.push_str(&format!(" (and {} more errors)", invalid.errors.len() - 1));
        }
        Answer::new(
            status,
            json!({
                "error": {"code": first.code, "message": message, "field": first.field},
                "errors": invalid.errors,
                "warnings": invalid.warnings,
            }),
        )
    }

    pub(crate) fn invalid_field(field: &str, message: &str) -> Self {
        Answer::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            message,
            Some(field),
        )
    }

    pub(crate) fn unauthorized(reason: &str) -> Self {
        Answer::error(StatusCode::UNAUTHORIZED, "unauthorized", reason, None)
    }

    pub(crate) fn too_large(bytes: usize, limit: usize) -> Self {
        let message = format!("the body is {bytes} bytes; at most {limit} (MAX_BODY_BYTES)");
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &message,
            None,
        )
    }

    pub(crate) fn method_not_allowed() -> Self {
        Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only POST is accepted",
            None,
        )
    }

    pub(crate) fn key_reused(key: &str) -> Self {
        let message = format!(
            "idempotency_key {key:?} was already used for a different request; use a new key"
        );
        Answer::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            &message,
            Some("idempotency_key"),
        )
    }

    pub(crate) fn trifft_rejected(message: &str) -> Self {
        Answer::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "trifft_rejected",
            message,
            None,
        )
    }

    /// 503 with Retry-After: Klaviyo retries it (unlike 409 or 504-less 4xx answers).
    pub(crate) fn unavailable(message: &str, retry_after: Duration) -> Self {
        let mut answer = Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            message,
            None,
        );
        answer.retry_after = Some(retry_after);
        answer
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::Text(self.body.to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up, at least 1 (Retry-After has no fractions).
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// What a completed delivery stores as its outcome, read back by later duplicates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RecordedOutcome {
    pub request_hash: String,
    pub items: usize,
    pub caller: Caller,
    pub at: DateTime<Utc>,
}

impl RecordedOutcome {
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `None` for an outcome this version did not write (treated as a plain duplicate).
    pub(crate) fn decode(outcome: &str) -> Option<Self> {
        serde_json::from_str(outcome).ok()
    }
}
