//! What a run did: returned, logged, and printed as CloudWatch Embedded Metric Format.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::trigger::Mode;

/// The EMF namespace the template's alarms read.
pub const METRICS_NAMESPACE: &str = "TrifftKlaviyoBridge";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncSummary {
    pub mode: Mode,
    pub execution_id: Option<String>,
    /// Members read from the members feed.
    pub members: u64,
    /// Profiles in bulk import jobs Klaviyo accepted.
    pub profiles_sent: u64,
    /// Profiles Klaviyo reported as failed (import errors), plus profiles the mapping
    /// refused (over 100 KB); each is logged with its reason.
    pub profiles_failed: u64,
    /// Profiles in jobs that had not finished when the run had to stop (not verified).
    pub profiles_unverified: u64,
    /// Members with no id, no email and no valid phone: reported, not sent.
    pub members_without_identifier: u64,
    /// Activity events read from the activity feed.
    pub events_read: u64,
    /// Events in bulk event jobs Klaviyo accepted (202).
    pub events_sent: u64,
    /// Events not sent: an unknown type or an event Klaviyo would refuse (logged).
    pub events_skipped: u64,
    /// Repeats of one (profile, metric, unique_id) dropped before they reached a request.
    pub duplicates_dropped: u64,
    /// Bulk event jobs and bulk profile import jobs accepted.
    pub event_jobs: u64,
    pub profile_jobs: u64,
    /// HTTP requests, retries included, during this run.
    pub klaviyo_requests: u64,
    pub trifft_requests: u64,
    pub retries: u64,
    pub throttles: u64,
    pub duration_ms: u64,
    /// The checkpoint as saved at the end of the run (or as loaded if it did not move).
    pub checkpoint: Option<Value>,
    /// Both feeds were read to their end; false when the run stopped early (deadline or error).
    pub completed: bool,
    /// Why the run stopped before the end of the feeds, if it did.
    pub stopped_because: Option<String>,
}

/// One EMF line: the `_aws` block names the metrics, the same object carries their values.
pub fn emf_line(summary: &SyncSummary, function_name: &str, timestamp_ms: i64) -> String {
    let metrics: [(&str, u64, &str); 14] = [
        ("Members", summary.members, "Count"),
        ("ProfilesSent", summary.profiles_sent, "Count"),
        ("ProfilesFailed", summary.profiles_failed, "Count"),
        ("ProfilesUnverified", summary.profiles_unverified, "Count"),
        (
            "MembersWithoutIdentifier",
            summary.members_without_identifier,
            "Count",
        ),
        ("EventsRead", summary.events_read, "Count"),
        ("EventsSent", summary.events_sent, "Count"),
        ("EventsSkipped", summary.events_skipped, "Count"),
        ("KlaviyoRequests", summary.klaviyo_requests, "Count"),
        ("TrifftRequests", summary.trifft_requests, "Count"),
        ("Retries", summary.retries, "Count"),
        ("Throttles", summary.throttles, "Count"),
        ("SyncIncomplete", u64::from(!summary.completed), "Count"),
        ("DurationMs", summary.duration_ms, "Milliseconds"),
    ];
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": METRICS_NAMESPACE,
                "Dimensions": [["Function"]],
                "Metrics": metrics.iter().map(|(name, _, unit)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
            }]
        }),
    );
    line.insert("Function".into(), Value::String(function_name.to_string()));
    line.insert(
        "Mode".into(),
        Value::String(summary.mode.as_str().to_string()),
    );
    for (name, value, _) in metrics {
        line.insert(name.into(), Value::from(value));
    }
    Value::Object(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_names_every_metric_it_carries() {
        let summary = SyncSummary {
            profiles_failed: 3,
            events_sent: 42,
            throttles: 1,
            ..Default::default()
        };
        let line = emf_line(&summary, "standard-sync", 1_764_583_200_000);
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        let spec = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(spec["Namespace"], METRICS_NAMESPACE);
        assert_eq!(spec["Dimensions"], json!([["Function"]]));
        assert_eq!(v["Function"], "standard-sync");
        assert_eq!(v["_aws"]["Timestamp"], 1_764_583_200_000i64);
        for metric in spec["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(v[name].is_u64(), "{name} has no value");
        }
        assert_eq!(v["ProfilesFailed"], 3);
        assert_eq!(v["EventsSent"], 42);
        assert_eq!(v["Throttles"], 1);
        assert_eq!(v["SyncIncomplete"], 1);
    }
}
