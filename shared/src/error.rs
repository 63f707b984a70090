//! The one error type of the shared crate. Every variant knows whether trying again can
//! help, which is what each function turns into its answer: an HTTP status (503 with
//! Retry-After, or a 4xx) or a Lambda `error_type` that the retry policy can act on.

use std::time::Duration;

/// The upstream API an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Klaviyo,
    Trifft,
    SecretsManager,
    DynamoDb,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Klaviyo => "Klaviyo",
            Service::Trifft => "TRIFFT",
            Service::SecretsManager => "Secrets Manager",
            Service::DynamoDb => "DynamoDB",
        })
    }
}

/// How a caller should treat an error: the `error_type` reported to Lambda.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Trying again later can succeed (5xx, timeouts, a conflict on state).
    Retryable,
    /// The upstream asked us to slow down; try again after `retry_after`.
    RateLimited,
    /// The same request will fail again: fix the input or the configuration.
    NonRetryable,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "Retryable",
            ErrorClass::RateLimited => "RateLimited",
            ErrorClass::NonRetryable => "NonRetryable",
        }
    }
}

/// One error decoded from a vendor's error body (Klaviyo JSON:API `errors[]`, or TRIFFT's
/// `error` object), kept for logs and for answers to our own callers.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ApiErrorDetail {
    pub code: String,
    pub title: String,
    pub detail: String,
    /// JSON pointer (Klaviyo `source.pointer`) or parameter the error is about.
    pub pointer: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or malformed; the message names the environment variable.
    #[error("configuration: {name}: {reason}")]
    Config { name: String, reason: String },

    /// The bridge secret could not be read or does not hold what it must.
    #[error("secret: {0}")]
    Secret(String),

    /// The upstream refused our credential (401) even after a fresh read of the secret.
    #[error("{service} refused the credential (401): {detail}")]
    Unauthorized { service: Service, detail: String },

    /// The credential lacks a permission (403), e.g. a Klaviyo key without `events:write`.
    #[error("{service} forbade the request (403): {detail}")]
    Forbidden { service: Service, detail: String },

    /// Throttled (429) and the deadline does not allow waiting it out.
    #[error("{service} is rate limiting; retry after {retry_after:?}")]
    RateLimited {
        service: Service,
        retry_after: Duration,
    },

    /// The upstream failed (5xx) or kept failing after the retries we may spend.
    #[error("{service} failed with HTTP {status}: {detail}")]
    Upstream {
        service: Service,
        status: u16,
        detail: String,
    },

    /// The upstream refused the request as invalid (4xx other than 401/403/429).
    #[error("{service} rejected the request with HTTP {status}: {}", summary(.errors))]
    Rejected {
        service: Service,
        status: u16,
        errors: Vec<ApiErrorDetail>,
    },

    /// Connection refused or reset, or a timeout, after the retries we may spend.
    #[error("{service} could not be reached: {detail}")]
    Transport { service: Service, detail: String },

    /// The caller's deadline leaves no time for the call (or for another attempt).
    #[error("deadline reached before {service} answered")]
    DeadlineExceeded { service: Service },

    /// A conditional write on the state table lost a race; the other writer wins.
    #[error("state conflict: {0}")]
    Conflict(String),

    /// The state table could not be read or written.
    #[error("state store: {0}")]
    State(String),

    /// Input we refuse before any upstream call; `field` names the offending field.
    #[error("invalid {field}: {message}")]
    InvalidInput { field: String, message: String },

    /// A response body that does not have the shape the vendor documents.
    #[error("{service} answered with an unexpected body: {detail}")]
    Decode { service: Service, detail: String },
}

fn summary(errors: &[ApiErrorDetail]) -> String {
    if errors.is_empty() {
        return "no error detail".to_string();
    }
    errors
        .iter()
        .map(|e| match &e.pointer {
            Some(p) => format!("{} at {}: {}", e.code, p, e.detail),
            None => format!("{}: {}", e.code, e.detail),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::RateLimited { .. } => ErrorClass::RateLimited,
            Error::Upstream { .. }
            | Error::Transport { .. }
            | Error::DeadlineExceeded { .. }
            | Error::Conflict(_)
            | Error::State(_) => ErrorClass::Retryable,
            // A refused credential stays refused until an operator fixes the secret; the
            // callers decide whether their sender should keep retrying meanwhile.
            Error::Unauthorized { .. }
            | Error::Forbidden { .. }
            | Error::Config { .. }
            | Error::Secret(_)
            | Error::Rejected { .. }
            | Error::InvalidInput { .. }
            | Error::Decode { .. } => ErrorClass::NonRetryable,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() != ErrorClass::NonRetryable
    }

    /// How long a caller should wait before trying again, when the upstream said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn config(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            name: name.into(),
            reason: reason.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Lambda reports `error_type` so a retry policy or an alarm can tell the classes apart.
impl From<Error> for lambda_runtime::Diagnostic {
    fn from(error: Error) -> Self {
        lambda_runtime::Diagnostic {
            error_type: error.class().as_str().to_string(),
            error_message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_what_a_retry_can_change() {
        let throttled = Error::RateLimited {
            service: Service::Trifft,
            retry_after: Duration::from_secs(60),
        };
        assert_eq!(throttled.class(), ErrorClass::RateLimited);
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(60)));
        let failed = Error::Upstream {
            service: Service::Klaviyo,
            status: 503,
            detail: "x".into(),
        };
        assert!(failed.is_retryable());
        let rejected = Error::Rejected {
            service: Service::Klaviyo,
            status: 400,
            errors: vec![],
        };
        assert!(!rejected.is_retryable());
        assert!(!Error::invalid("points", "must be positive").is_retryable());
    }

    #[test]
    fn rejected_message_lists_each_vendor_error() {
        let e = Error::Rejected {
            service: Service::Klaviyo,
            status: 400,
            errors: vec![ApiErrorDetail {
                code: "invalid".into(),
                title: "Invalid input.".into(),
                detail: "metric is required".into(),
                pointer: Some("/data/attributes/metric".into()),
            }],
        };
        assert_eq!(
            e.to_string(),
            "Klaviyo rejected the request with HTTP 400: invalid at /data/attributes/metric: metric is required"
        );
    }

    #[test]
    fn diagnostic_carries_the_class() {
        let d: lambda_runtime::Diagnostic = Error::config("KLAVIYO_REVISION", "missing").into();
        assert_eq!(d.error_type, "NonRetryable");
        assert!(d.error_message.contains("KLAVIYO_REVISION"));
    }
}
