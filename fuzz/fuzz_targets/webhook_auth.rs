//! klaviyo_webhook::auth::authenticate over any header values and body: the shared
//! secret header and the signed system-webhook form, never a panic, and never accepted
//! without the secret.
#![no_main]

use chrono::{TimeZone, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use klaviyo_webhook::auth::{SIGNATURE_HEADER, TIMESTAMP_HEADER, authenticate};
use libfuzzer_sys::fuzz_target;
use loyalty_bridge::secrets::{BridgeSecrets, RotatingSecret, SecretString};

const SECRET: &str = "fuzz-hook-secret";

fuzz_target!(|data: &[u8]| {
    // Input: up to three header values and the body, separated by 0xFF bytes.
    let mut parts = data.split(|b| *b == 0xff);
    let names = ["x-bridge-secret", SIGNATURE_HEADER, TIMESTAMP_HEADER];
    let mut headers = HeaderMap::new();
    for name in names {
        if let Some(value) = parts.next()
            && !value.is_empty()
            && let Ok(value) = HeaderValue::from_bytes(value)
        {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let body = parts.next().unwrap_or_default();
    let secrets = BridgeSecrets {
        klaviyo_webhook: Some(RotatingSecret {
            current: SecretString::new(SECRET),
            previous: Some(SecretString::new("fuzz-previous")),
        }),
        klaviyo_system_webhook: Some(RotatingSecret {
            current: SecretString::new("fuzz-system-secret"),
            previous: None,
        }),
        ..Default::default()
    };
    let now = Utc
        .timestamp_opt(1_784_542_500, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let result = authenticate(
        &headers,
        body,
        &secrets,
        "x-bridge-secret",
        std::time::Duration::from_secs(300),
        now,
    );
    if result.is_ok() {
        // Only the real secrets open the door (a forged HMAC is out of a fuzzer's reach).
        let presented = headers.get("x-bridge-secret").map(|v| v.as_bytes());
        assert!(
            presented.is_none_or(|p| p == SECRET.as_bytes() || p == b"fuzz-previous"),
            "accepted {presented:?}"
        );
    }
});
