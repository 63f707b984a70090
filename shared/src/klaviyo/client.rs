//! The Klaviyo HTTP client. (Implemented in the foundation issue's Klaviyo part.)

/// Settings of the Klaviyo client, from `config`.
#[derive(Debug, Clone)]
pub struct KlaviyoSettings {
    /// `KLAVIYO_BASE_URL`, default `https://a.klaviyo.com`.
    pub base_url: String,
    /// `KLAVIYO_REVISION`, default `2026-07-15`.
    pub revision: String,
}

/// The Klaviyo client.
#[derive(Debug)]
pub struct KlaviyoClient {
    pub settings: KlaviyoSettings,
}
