//! The webhook's settings, read once at start; a bad value fails the cold start with a
//! message naming the variable.

use std::collections::BTreeSet;
use std::time::Duration;

use loyalty_bridge::config::{self, Vars};
use loyalty_bridge::trifft::TrifftPaths;
use loyalty_bridge::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `WEBHOOK_SECRET_HEADER` (lowercase), default `x-bridge-secret`.
    pub secret_header: String,
    /// `MAX_POINTS_PER_ACTION`, default 10,000.
    pub max_points_per_action: u64,
    /// `MAX_POINTS_PER_REQUEST` (sum over all credit and debit actions), default 100,000.
    pub max_points_per_request: u64,
    /// `ALLOWED_COUPON_IDS`: comma list; empty = every coupon id allowed.
    pub allowed_coupon_ids: BTreeSet<String>,
    /// `ALLOWED_SEGMENTS`: comma list of slugs; empty = every segment allowed.
    pub allowed_segments: BTreeSet<String>,
    /// `MAX_BODY_BYTES`, default 262,144.
    pub max_body_bytes: usize,
    /// `SYSTEM_WEBHOOK_MAX_AGE_SECONDS`: freshness window of a signed system webhook, default 300.
    pub system_webhook_max_age: Duration,
    /// `RETRY_AFTER_SECONDS`: Retry-After on a 503 when TRIFFT named no wait, default 30.
    pub retry_after: Duration,
    /// The TRIFFT item URI templates (the `TRIFFT_URI_*` variables of `TrifftSettings`).
    pub paths: TrifftPaths,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            secret_header: "x-bridge-secret".into(),
            max_points_per_action: 10_000,
            max_points_per_request: 100_000,
            allowed_coupon_ids: BTreeSet::new(),
            allowed_segments: BTreeSet::new(),
            max_body_bytes: 262_144,
            system_webhook_max_age: Duration::from_secs(300),
            retry_after: Duration::from_secs(30),
            paths: TrifftPaths::default(),
        }
    }
}

impl WebhookSettings {
    /// Reads everything but the TRIFFT paths, which come with `TrifftSettings` (set them
    /// with [`WebhookSettings::with_paths`]); they default to the assumed ones.
    pub fn from_env(vars: &(impl Vars + ?Sized)) -> Result<Self> {
        let defaults = WebhookSettings::default();
        let secret_header = config::optional(vars, "WEBHOOK_SECRET_HEADER")
            .unwrap_or(defaults.secret_header)
            .to_ascii_lowercase();
        if lambda_http::http::HeaderName::from_bytes(secret_header.as_bytes()).is_err() {
            return Err(Error::config(
                "WEBHOOK_SECRET_HEADER",
                format!("{secret_header:?} is not a valid header name"),
            ));
        }
        let max_points_per_action = positive(
            vars,
            "MAX_POINTS_PER_ACTION",
            defaults.max_points_per_action,
        )?;
        let max_points_per_request = positive(
            vars,
            "MAX_POINTS_PER_REQUEST",
            defaults.max_points_per_request,
        )?;
        let max_body_bytes = config::parsed_or(vars, "MAX_BODY_BYTES", defaults.max_body_bytes)?;
        if max_body_bytes == 0 {
            return Err(Error::config("MAX_BODY_BYTES", "must be at least 1"));
        }
        let allowed_segments: BTreeSet<String> =
            config::list(vars, "ALLOWED_SEGMENTS").into_iter().collect();
        let allowed_coupon_ids: BTreeSet<String> = config::list(vars, "ALLOWED_COUPON_IDS")
            .into_iter()
            .collect();
        Ok(WebhookSettings {
            secret_header,
            max_points_per_action,
            max_points_per_request,
            allowed_coupon_ids,
            allowed_segments,
            max_body_bytes,
            system_webhook_max_age: config::seconds_or(
                vars,
                "SYSTEM_WEBHOOK_MAX_AGE_SECONDS",
                defaults.system_webhook_max_age,
            )?,
            retry_after: config::seconds_or(vars, "RETRY_AFTER_SECONDS", defaults.retry_after)?,
            paths: defaults.paths,
        })
    }

    pub fn with_paths(mut self, paths: TrifftPaths) -> Self {
        self.paths = paths;
        self
    }
}

fn positive(vars: &(impl Vars + ?Sized), name: &str, default: u64) -> Result<u64> {
    match config::parsed_or(vars, name, default)? {
        0 => Err(Error::config(name, "must be at least 1")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_unset() {
        let s = WebhookSettings::from_env(&[("UNRELATED", "x")]).unwrap();
        assert_eq!(s, WebhookSettings::default());
    }

    #[test]
    fn reads_every_variable() {
        let s = WebhookSettings::from_env(&[
            ("WEBHOOK_SECRET_HEADER", "X-Hook-Key"),
            ("MAX_POINTS_PER_ACTION", "500"),
            ("MAX_POINTS_PER_REQUEST", "2000"),
            ("ALLOWED_COUPON_IDS", "c-1, c-2"),
            ("ALLOWED_SEGMENTS", "vip"),
            ("MAX_BODY_BYTES", "1024"),
            ("SYSTEM_WEBHOOK_MAX_AGE_SECONDS", "60"),
            ("RETRY_AFTER_SECONDS", "5"),
        ])
        .unwrap();
        assert_eq!(s.secret_header, "x-hook-key");
        assert_eq!(
            (s.max_points_per_action, s.max_points_per_request),
            (500, 2000)
        );
        assert_eq!(
            s.allowed_coupon_ids.iter().collect::<Vec<_>>(),
            ["c-1", "c-2"]
        );
        assert!(s.allowed_segments.contains("vip"));
        assert_eq!(s.max_body_bytes, 1024);
        assert_eq!(s.system_webhook_max_age, Duration::from_secs(60));
        assert_eq!(s.retry_after, Duration::from_secs(5));
    }

    #[test]
    fn names_the_bad_variable() {
        for (name, value) in [
            ("MAX_POINTS_PER_ACTION", "0"),
            ("MAX_POINTS_PER_REQUEST", "-5"),
            ("MAX_BODY_BYTES", "big"),
            ("WEBHOOK_SECRET_HEADER", "bad header"),
            ("SYSTEM_WEBHOOK_MAX_AGE_SECONDS", "1.5"),
        ] {
            let e = WebhookSettings::from_env(&[(name, value)]).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}
