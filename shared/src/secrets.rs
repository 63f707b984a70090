//! The bridge's credentials: one JSON secret in AWS Secrets Manager holding the Klaviyo
//! private key, the TRIFFT API token and the webhook secrets (current and previous, so a
//! rotation never locks a sender out).
//!
//! Values are wrapped in [`SecretString`], whose `Debug` and `Display` print a redaction,
//! so a secret cannot reach a log line by accident.
//!
//! The Secrets Manager source, the cache with its TTL and forced refresh, and the
//! environment-variable source (sandbox only) are implemented in this module.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::Result;

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

/// Where the bridge secrets come from.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The secrets, from a cache when it is fresh.
    async fn get(&self) -> Result<Arc<BridgeSecrets>>;

    /// Read the secrets again now, e.g. after an upstream refused a credential with 401
    /// (the secret may have been rotated since it was cached).
    async fn refresh(&self) -> Result<Arc<BridgeSecrets>>;
}

#[cfg(test)]
mod tests {
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
}
