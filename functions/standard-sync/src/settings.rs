//! The sync's own settings, from environment variables (each named in its error).

use std::time::Duration;

use loyalty_bridge::config::{Vars, optional, parsed_or, seconds_or};
use loyalty_bridge::klaviyo::limits::METRIC_NAME_MAX_CHARS;
use loyalty_bridge::{Error, Result};

/// Never stop closer to the deadline than this, whatever the margin setting says.
pub const MIN_SAFETY_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq)]
pub struct SyncSettings {
    /// `TRIFFT_PAGE_SIZE`: items per feed page, 1..=1000 (default 1000).
    pub page_size: u32,
    /// `INITIAL_LOOKBACK_HOURS`: how far back the first incremental run (no checkpoint)
    /// starts (default 24).
    pub initial_lookback: Duration,
    /// `SYNC_SAFETY_MARGIN_SECONDS`: stop this long before the invocation deadline
    /// (default 10, never less than 2).
    pub safety_margin: Duration,
    /// `METRIC_PREFIX`: put before every metric name, e.g. `"TRIFFT "` (default none).
    pub metric_prefix: Option<String>,
    /// `SYNC_CHECKPOINT_NAME`: the checkpoint of incremental runs (default `standard-sync`);
    /// backfill runs use `<name>-backfill`.
    pub checkpoint_name: String,
    /// `IMPORT_JOB_POLL_SECONDS`: first wait between reads of a bulk import job's status
    /// (default 2; the wait grows by half each time, up to 10 s).
    pub import_poll_interval: Duration,
    /// `AWS_LAMBDA_FUNCTION_NAME` (set by Lambda): the `Function` dimension of the metrics.
    pub function_name: String,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            page_size: 1000,
            initial_lookback: Duration::from_secs(24 * 3600),
            safety_margin: Duration::from_secs(10),
            metric_prefix: None,
            checkpoint_name: "standard-sync".into(),
            import_poll_interval: Duration::from_secs(2),
            function_name: "standard-sync".into(),
        }
    }
}

impl SyncSettings {
    pub fn from_env(vars: &(impl Vars + ?Sized)) -> Result<Self> {
        let defaults = SyncSettings::default();
        let page_size: u32 = parsed_or(vars, "TRIFFT_PAGE_SIZE", defaults.page_size)?;
        if !(1..=1000).contains(&page_size) {
            return Err(Error::config(
                "TRIFFT_PAGE_SIZE",
                format!("{page_size} is not in 1..=1000"),
            ));
        }
        let lookback_hours: u64 = parsed_or(vars, "INITIAL_LOOKBACK_HOURS", 24)?;
        if lookback_hours == 0 {
            return Err(Error::config(
                "INITIAL_LOOKBACK_HOURS",
                "must be at least 1",
            ));
        }
        // Not trimmed: a prefix usually ends in a space ("TRIFFT ").
        let metric_prefix = vars.var("METRIC_PREFIX").filter(|p| !p.is_empty());
        if let Some(prefix) = &metric_prefix {
            let longest = loyalty_bridge::mapping::standard::STANDARD_METRICS
                .iter()
                .map(|(_, name)| name.chars().count())
                .max()
                .unwrap_or(0);
            if prefix.chars().count() + longest >= METRIC_NAME_MAX_CHARS {
                return Err(Error::config(
                    "METRIC_PREFIX",
                    format!(
                        "too long: metric names must stay under {METRIC_NAME_MAX_CHARS} characters"
                    ),
                ));
            }
        }
        let checkpoint_name =
            optional(vars, "SYNC_CHECKPOINT_NAME").unwrap_or(defaults.checkpoint_name);
        let import_poll_interval = seconds_or(
            vars,
            "IMPORT_JOB_POLL_SECONDS",
            defaults.import_poll_interval,
        )?;
        if import_poll_interval.is_zero() {
            return Err(Error::config(
                "IMPORT_JOB_POLL_SECONDS",
                "must be at least 1",
            ));
        }
        Ok(SyncSettings {
            page_size,
            initial_lookback: Duration::from_secs(lookback_hours * 3600),
            safety_margin: seconds_or(vars, "SYNC_SAFETY_MARGIN_SECONDS", defaults.safety_margin)?,
            metric_prefix,
            checkpoint_name,
            import_poll_interval,
            function_name: optional(vars, "AWS_LAMBDA_FUNCTION_NAME")
                .unwrap_or(defaults.function_name),
        })
    }

    /// The margin actually kept before the deadline.
    pub fn effective_margin(&self) -> Duration {
        self.safety_margin.max(MIN_SAFETY_MARGIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let empty: [(&str, &str); 0] = [];
        assert_eq!(
            SyncSettings::from_env(&empty).unwrap(),
            SyncSettings::default()
        );
        let vars = [
            ("TRIFFT_PAGE_SIZE", "250"),
            ("INITIAL_LOOKBACK_HOURS", "48"),
            ("SYNC_SAFETY_MARGIN_SECONDS", "0"),
            ("METRIC_PREFIX", "TRIFFT "),
            ("SYNC_CHECKPOINT_NAME", "brand-a"),
        ];
        let s = SyncSettings::from_env(&vars).unwrap();
        assert_eq!(s.page_size, 250);
        assert_eq!(s.initial_lookback, Duration::from_secs(48 * 3600));
        assert_eq!(s.metric_prefix.as_deref(), Some("TRIFFT "));
        assert_eq!(s.checkpoint_name, "brand-a");
        assert_eq!(s.effective_margin(), MIN_SAFETY_MARGIN);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let long = "x".repeat(120);
        for (name, value) in [
            ("TRIFFT_PAGE_SIZE", "0"),
            ("TRIFFT_PAGE_SIZE", "1001"),
            ("TRIFFT_PAGE_SIZE", "lots"),
            ("INITIAL_LOOKBACK_HOURS", "0"),
            ("SYNC_SAFETY_MARGIN_SECONDS", "-1"),
            ("METRIC_PREFIX", long.as_str()),
            ("IMPORT_JOB_POLL_SECONDS", "0"),
        ] {
            let e = SyncSettings::from_env(&[(name, value)]).unwrap_err();
            assert!(e.to_string().contains(name), "{name}={value}: {e}");
        }
    }
}
