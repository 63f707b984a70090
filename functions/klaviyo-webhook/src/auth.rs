//! Who may call the webhook, decided before the body is parsed.
//!
//! Two accepted forms:
//! - Flow webhooks (not signed by Klaviyo): a shared secret in a header the operator sets in
//!   the flow action, matched against the current and the previous secret (rotation).
//! - Signed Klaviyo system webhooks: `Klaviyo-Signature` = lowercase hex
//!   HMAC-SHA256(key = system webhook secret, message = raw body bytes followed by the
//!   `Klaviyo-Timestamp` header value), with the timestamp inside a freshness window.
//!   Klaviyo's page names HMAC-SHA256 but the exact recipe comes from 3rd-party sources
//!   (Hookdeck and public code samples): verify it against a real delivery.
//!
//! Every comparison is constant time so response timing does not reveal how much of a
//! guess was right.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hmac::{KeyInit, Mac};
use lambda_http::http::HeaderMap;
use loyalty_bridge::secrets::{BridgeSecrets, RotatingSecret};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

pub const SIGNATURE_HEADER: &str = "klaviyo-signature";
pub const TIMESTAMP_HEADER: &str = "klaviyo-timestamp";

/// How a request proved who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Caller {
    /// The shared-secret header (Klaviyo flow webhook).
    SharedSecret,
    /// A valid `Klaviyo-Signature` (Klaviyo system webhook).
    SignedSystemWebhook,
}

/// Why a request was refused; the message is safe to send back (it reveals no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No accepted credential: 401.
    Refused(String),
    /// The bridge secret holds no webhook secret at all: an operator must fix it (503, so
    /// the sender keeps retrying meanwhile).
    NotConfigured,
}

/// Checks the request's credential. `now` is passed in so the freshness window can be tested.
pub fn authenticate(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &BridgeSecrets,
    secret_header: &str,
    max_age: Duration,
    now: DateTime<Utc>,
) -> Result<Caller, AuthFailure> {
    let header_secrets = usable(secrets.klaviyo_webhook.as_ref());
    let system_secrets = usable(secrets.klaviyo_system_webhook.as_ref());
    if header_secrets.is_empty() && system_secrets.is_empty() {
        return Err(AuthFailure::NotConfigured);
    }

    if let Some(presented) = headers.get(secret_header) {
        if matches_any(presented.as_bytes(), &header_secrets) {
            return Ok(Caller::SharedSecret);
        }
        return Err(AuthFailure::Refused(format!(
            "the {secret_header} header does not hold the webhook secret"
        )));
    }

    if let Some(signature) = headers.get(SIGNATURE_HEADER) {
        if system_secrets.is_empty() {
            return Err(AuthFailure::Refused(
                "signed system webhooks are not enabled".into(),
            ));
        }
        let Some(timestamp) = headers.get(TIMESTAMP_HEADER) else {
            return Err(AuthFailure::Refused(
                "Klaviyo-Signature without a Klaviyo-Timestamp header".into(),
            ));
        };
        let Some(sent_at) = timestamp.to_str().ok().and_then(parse_timestamp) else {
            return Err(AuthFailure::Refused(
                "Klaviyo-Timestamp is not a time".into(),
            ));
        };
        // Checked before the signature only because it is cheaper; both must pass.
        let age = (now - sent_at).abs().to_std().unwrap_or(Duration::MAX);
        if age > max_age {
            return Err(AuthFailure::Refused(format!(
                "Klaviyo-Timestamp is outside the {} s freshness window",
                max_age.as_secs()
            )));
        }
        if signature_matches(
            signature.as_bytes(),
            body,
            timestamp.as_bytes(),
            &system_secrets,
        ) {
            return Ok(Caller::SignedSystemWebhook);
        }
        return Err(AuthFailure::Refused(
            "Klaviyo-Signature does not match the body".into(),
        ));
    }

    Err(AuthFailure::Refused(format!(
        "missing {secret_header} header"
    )))
}

/// The non-empty values of a rotating secret, current first.
fn usable(secret: Option<&RotatingSecret>) -> Vec<&[u8]> {
    secret
        .map(|s| {
            s.accepted()
                .map(|v| v.expose().as_bytes())
                .filter(|v| !v.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Compares SHA-256 digests, so neither the content nor the length of the secret leaks
/// through timing; every accepted value is checked, without stopping at the first match.
fn matches_any(presented: &[u8], accepted: &[&[u8]]) -> bool {
    let presented = Sha256::digest(presented);
    let mut any = Choice::from(0);
    for secret in accepted {
        any |= Sha256::digest(secret).ct_eq(&presented);
    }
    any.into()
}

fn signature_matches(
    signature_hex: &[u8],
    body: &[u8],
    timestamp: &[u8],
    secrets: &[&[u8]],
) -> bool {
    let Ok(signature) = hex::decode(signature_hex.trim_ascii()) else {
        return false;
    };
    let mut any = Choice::from(0);
    for secret in secrets {
        let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(secret) else {
            continue;
        };
        mac.update(body);
        mac.update(timestamp);
        let expected = mac.finalize().into_bytes();
        // Length is public (32 bytes); ct_eq of unequal lengths is simply false.
        any |= expected.as_slice().ct_eq(signature.as_slice());
    }
    any.into()
}

/// `Klaviyo-Timestamp`: Klaviyo's page calls it the send time without fixing a format, so
/// Unix seconds, Unix milliseconds and RFC 3339 are all accepted.
pub fn parse_timestamp(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(number) = value.parse::<i64>() {
        // Milliseconds since 1970 pass 10^11 in 1973; seconds will not before year 5138.
        return if number.abs() >= 100_000_000_000 {
            Utc.timestamp_millis_opt(number).single()
        } else {
            Utc.timestamp_opt(number, 0).single()
        };
    }
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The signature a sender computes; used by tests and the sample generator.
pub fn sign(secret: &[u8], body: &[u8], timestamp: &str) -> String {
    let mut mac =
        hmac::Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.update(timestamp.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::http::HeaderValue;
    use loyalty_bridge::secrets::SecretString;

    fn secrets(current: &str, previous: Option<&str>, system: Option<&str>) -> BridgeSecrets {
        BridgeSecrets {
            klaviyo_webhook: Some(RotatingSecret {
                current: SecretString::new(current),
                previous: previous.map(SecretString::new),
            }),
            klaviyo_system_webhook: system.map(|s| RotatingSecret {
                current: SecretString::new(s),
                previous: None,
            }),
            ..Default::default()
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const MAX_AGE: Duration = Duration::from_secs(300);

    #[test]
    fn current_and_previous_secret_are_accepted() {
        let s = secrets("now-secret", Some("old-secret"), None);
        for value in ["now-secret", "old-secret"] {
            let h = headers(&[("x-bridge-secret", value)]);
            assert_eq!(
                authenticate(&h, b"{}", &s, "x-bridge-secret", MAX_AGE, Utc::now()),
                Ok(Caller::SharedSecret)
            );
        }
    }

    #[test]
    fn wrong_prefix_empty_and_missing_are_refused() {
        let s = secrets("now-secret", None, None);
        for value in ["now-secre", "now-secret ", "", "NOW-SECRET"] {
            let h = headers(&[("x-bridge-secret", value)]);
            assert!(matches!(
                authenticate(&h, b"{}", &s, "x-bridge-secret", MAX_AGE, Utc::now()),
                Err(AuthFailure::Refused(_))
            ));
        }
        let missing = authenticate(
            &HeaderMap::new(),
            b"{}",
            &s,
            "x-bridge-secret",
            MAX_AGE,
            Utc::now(),
        );
        assert_eq!(
            missing,
            Err(AuthFailure::Refused(
                "missing x-bridge-secret header".into()
            ))
        );
    }

    #[test]
    fn an_empty_configured_secret_never_matches_an_empty_header() {
        let s = secrets("", None, None);
        let h = headers(&[("x-bridge-secret", "")]);
        assert_eq!(
            authenticate(&h, b"{}", &s, "x-bridge-secret", MAX_AGE, Utc::now()),
            Err(AuthFailure::NotConfigured)
        );
    }

    #[test]
    fn signed_system_webhook_within_the_window() {
        let s = secrets("hook", None, Some("system-secret-0123456789"));
        let body = br#"{"data":[],"meta":{}}"#;
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        let sig = sign(b"system-secret-0123456789", body, &ts);
        let h = headers(&[("klaviyo-signature", &sig), ("klaviyo-timestamp", &ts)]);
        assert_eq!(
            authenticate(&h, body, &s, "x-bridge-secret", MAX_AGE, now),
            Ok(Caller::SignedSystemWebhook)
        );

        // One changed byte of the body, an old timestamp, or a wrong key: refused.
        let tampered = br#"{"data":[],"meta":{ }}"#;
        assert!(authenticate(&h, tampered, &s, "x-bridge-secret", MAX_AGE, now).is_err());
        let later = now + chrono::Duration::seconds(301);
        assert!(authenticate(&h, body, &s, "x-bridge-secret", MAX_AGE, later).is_err());
        let wrong = sign(b"another-secret", body, &ts);
        let h = headers(&[("klaviyo-signature", &wrong), ("klaviyo-timestamp", &ts)]);
        assert!(authenticate(&h, body, &s, "x-bridge-secret", MAX_AGE, now).is_err());
    }

    #[test]
    fn timestamp_is_part_of_the_signed_message() {
        let s = secrets("hook", None, Some("system-secret"));
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        let other_ts = (now.timestamp() - 1).to_string();
        let sig = sign(b"system-secret", b"{}", &other_ts);
        let h = headers(&[("klaviyo-signature", &sig), ("klaviyo-timestamp", &ts)]);
        assert!(authenticate(&h, b"{}", &s, "x-bridge-secret", MAX_AGE, now).is_err());
    }

    #[test]
    fn timestamps_in_seconds_millis_and_rfc3339() {
        let t = Utc.timestamp_opt(1_780_000_000, 0).unwrap();
        assert_eq!(parse_timestamp("1780000000"), Some(t));
        assert_eq!(parse_timestamp("1780000000000"), Some(t));
        assert_eq!(parse_timestamp(&t.to_rfc3339()), Some(t));
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
