//! How a sandbox is set up: data size, accepted credentials, rate limits, faults, recording.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything a [`crate::Sandbox`] is started with. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Same seed -> same data set and same fault sequence.
    pub seed: u64,
    /// Generated TRIFFT members.
    pub members: usize,
    /// Generated TRIFFT activity events.
    pub events: usize,
    /// The one Klaviyo private key accepted.
    pub klaviyo_api_key: String,
    /// The one TRIFFT Bearer token accepted.
    pub trifft_token: String,
    pub klaviyo_rates: KlaviyoRates,
    /// TRIFFT: at most this many requests in any window this long.
    pub trifft_rate: (u32, Duration),
    /// TRIFFT: how long every request is refused after the limit was passed.
    pub trifft_lockout: Duration,
    pub faults: Faults,
    /// Write klaviyo-writes.jsonl, klaviyo-reads.jsonl and trifft.jsonl here.
    pub record_dir: Option<PathBuf>,
    /// Keep every Klaviyo write in memory for [`crate::Sandbox::recorded_klaviyo_writes`]
    /// (turn off for very large runs that record to `record_dir`, which is then read back).
    pub record_in_memory: bool,
    /// 0 = a free port.
    pub klaviyo_port: u16,
    /// 0 = a free port.
    pub trifft_port: u16,
    /// How long a bulk profile import job stays queued/processing before it completes.
    pub import_job_processing: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            seed: 1,
            members: 200,
            events: 1000,
            klaviyo_api_key: "pk_sandbox_0123456789abcdef".into(),
            trifft_token: "trifft_sandbox_token".into(),
            klaviyo_rates: KlaviyoRates::Real,
            trifft_rate: (50, Duration::from_secs(10)),
            trifft_lockout: Duration::from_secs(60),
            faults: Faults::default(),
            record_dir: None,
            record_in_memory: true,
            klaviyo_port: 0,
            trifft_port: 0,
            import_job_processing: Duration::from_millis(200),
        }
    }
}

/// Klaviyo rate limits: the documented per-endpoint tiers, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlaviyoRates {
    #[default]
    Real,
    Unlimited,
}

/// Which emulator the faults apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    Klaviyo,
    Trifft,
    #[default]
    Both,
}

/// Injected faults, drawn from a generator seeded with `seed` (the sequence restarts each
/// time faults are set). Rates are fractions of requests in 0.0..=1.0. Over HTTP
/// (`POST /_sandbox/faults`) durations are milliseconds: `"latency_ms": [min, max]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub seed: u64,
    pub target: FaultTarget,
    /// Answered 5xx; the request is not applied.
    pub error_rate: f64,
    /// Answered 429 (Klaviyo: Retry-After; TRIFFT: starts the lockout).
    pub throttle_rate: f64,
    /// Requests number `a..b` (1-based, `a` included, `b` not, counted per API since the
    /// faults were set) are all answered 429.
    pub storm: Option<(usize, usize)>,
    /// Random extra latency per request in `[min, max]`.
    #[serde(rename = "latency_ms", with = "latency_ms")]
    pub latency: Option<(Duration, Duration)>,
    /// Connections closed without an answer; the request is not applied.
    pub drop_rate: f64,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Faults::default()
    }

    pub(crate) fn applies_to(&self, target: FaultTarget) -> bool {
        self.target == FaultTarget::Both || self.target == target
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0.0 and 1.0, got {rate}"));
            }
        }
        if self.error_rate + self.throttle_rate + self.drop_rate > 1.0 + f64::EPSILON {
            return Err("error_rate + throttle_rate + drop_rate must not exceed 1.0".into());
        }
        if let Some((a, b)) = self.storm
            && a > b
        {
            return Err(format!("storm start {a} is after its end {b}"));
        }
        if let Some((min, max)) = self.latency
            && min > max
        {
            return Err("latency min is above max".into());
        }
        Ok(())
    }
}

mod latency_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        v: &Option<(Duration, Duration)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.map(|(a, b)| (a.as_millis() as u64, b.as_millis() as u64))
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(Duration, Duration)>, D::Error> {
        let v: Option<(u64, u64)> = Option::deserialize(d)?;
        Ok(v.map(|(a, b)| (Duration::from_millis(a), Duration::from_millis(b))))
    }
}
