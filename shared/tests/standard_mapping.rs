//! Table tests of the standard mapping from the JSON fixtures in fixtures/standard/:
//! `metrics/*.json` (a TRIFFT activity event -> the Klaviyo `POST /api/events` body) and
//! `attributes/*.json` (a TRIFFT member -> the Klaviyo `POST /api/profile-import` body).
//! A fixture holds `input` and either `expected` (the Klaviyo JSON) or `expected_issue`.

use std::path::{Path, PathBuf};

use loyalty_bridge::klaviyo::model::{event_create_body, profile_import_body};
use loyalty_bridge::mapping::standard::{
    Options, STANDARD_METRICS, event_to_klaviyo, member_to_profile,
};
use loyalty_bridge::trifft::{ActivityEvent, Member};
use serde_json::Value;

fn fixtures(kind: &str) -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/standard")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, json)
        })
        .collect()
}

fn name(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

fn options(fixture: &Value) -> Options {
    let o = &fixture["options"];
    Options {
        metric_prefix: o["metric_prefix"].as_str().map(str::to_string),
        backfill: o["backfill"].as_bool().unwrap_or(false),
        latest_time: None,
    }
}

/// Compares and, on a mismatch, shows both sides in full.
fn assert_json(case: &str, actual: &Value, expected: &Value) {
    assert!(
        actual == expected,
        "{case}:\n actual:   {}\n expected: {}",
        serde_json::to_string_pretty(actual).unwrap(),
        serde_json::to_string_pretty(expected).unwrap()
    );
}

#[test]
fn every_metric_fixture_maps_to_its_klaviyo_body() {
    let cases = fixtures("metrics");
    assert!(cases.len() >= 15, "{} metric fixtures", cases.len());
    for (path, fixture) in &cases {
        let case = name(path);
        let event: ActivityEvent = serde_json::from_value(fixture["input"].clone())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        match (
            event_to_klaviyo(&event, &options(fixture)),
            fixture.get("expected_issue"),
        ) {
            (Ok((identity, mapped)), None) => assert_json(
                &case,
                &event_create_body(&identity, &mapped),
                &fixture["expected"],
            ),
            (Err(issue), Some(expected)) => {
                assert_json(&case, &serde_json::to_value(&issue).unwrap(), expected)
            }
            (Ok(_), Some(expected)) => panic!("{case}: mapped, but the fixture expects {expected}"),
            (Err(issue), None) => panic!("{case}: unexpected issue {issue}"),
        }
    }
}

#[test]
fn each_of_the_15_metrics_has_its_own_fixture() {
    let cases = fixtures("metrics");
    for (kind, display) in STANDARD_METRICS {
        let (_, fixture) = cases
            .iter()
            .find(|(p, _)| name(p) == kind)
            .unwrap_or_else(|| panic!("no fixture metrics/{kind}.json"));
        assert_eq!(fixture["input"]["type"], kind);
        assert_eq!(
            fixture["expected"]["data"]["attributes"]["metric"]["data"]["attributes"]["name"],
            display
        );
    }
}

#[test]
fn every_attribute_fixture_maps_to_its_klaviyo_body() {
    let cases = fixtures("attributes");
    for (path, fixture) in &cases {
        let case = name(path);
        let member: Member = serde_json::from_value(fixture["input"].clone())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        match (member_to_profile(&member), fixture.get("expected_issue")) {
            (Ok(profile), None) => {
                assert_json(&case, &profile_import_body(&profile), &fixture["expected"])
            }
            (Err(issue), Some(expected)) => {
                assert_json(&case, &serde_json::to_value(&issue).unwrap(), expected)
            }
            (Ok(_), Some(expected)) => panic!("{case}: mapped, but the fixture expects {expected}"),
            (Err(issue), None) => panic!("{case}: unexpected issue {issue}"),
        }
    }
}

#[test]
fn each_of_the_13_attributes_has_its_own_fixture() {
    let cases = fixtures("attributes");
    let names: Vec<String> = cases.iter().map(|(p, _)| name(p)).collect();
    let attributes = [
        "locale",
        "external_id",
        "trifft_id",
        "trifft_points",
        "trifft_tier",
        "trifft_available_coupons",
        "trifft_coupons",
        "trifft_fav_location_id",
        "trifft_fav_location_name",
        "trifft_primary_card_id",
        "trifft_segments",
        "trifft_support_id",
        "custom_params",
    ];
    for attribute in attributes {
        assert!(
            names.iter().any(|n| n == attribute),
            "no fixture attributes/{attribute}.json"
        );
    }
}

#[test]
fn latest_time_refuses_events_more_than_a_year_ahead() {
    let event: ActivityEvent = serde_json::from_value(serde_json::json!({
        "id": "e-future", "type": "app_opened", "member_id": "m-1",
        "occurred_at": "2030-01-01T00:00:00Z", "payload": {}
    }))
    .unwrap();
    let latest = chrono::DateTime::parse_from_rfc3339("2027-12-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let options = Options {
        latest_time: Some(latest),
        ..Default::default()
    };
    let issue = event_to_klaviyo(&event, &options).unwrap_err();
    assert_eq!(issue.kind(), "invalid_event");
    assert!(issue.to_string().contains("occurred_at"), "{issue}");
    assert!(event_to_klaviyo(&event, &Options::default()).is_ok());
}

#[test]
fn oversized_payloads_are_reported_not_sent() {
    let mut payload = serde_json::Map::new();
    payload.insert("note".into(), Value::String("x".repeat(100 * 1024 + 1)));
    let event = ActivityEvent {
        id: "e-big".into(),
        kind: "app_opened".into(),
        member_id: "m-1".into(),
        occurred_at: chrono::Utc::now(),
        payload,
    };
    let issue = event_to_klaviyo(&event, &Options::default()).unwrap_err();
    assert!(issue.to_string().contains("payload.note"), "{issue}");

    let many = (0..401)
        .map(|i| (format!("p{i}"), Value::from(i)))
        .collect();
    let event = ActivityEvent {
        payload: many,
        ..event
    };
    assert!(
        event_to_klaviyo(&event, &Options::default())
            .unwrap_err()
            .to_string()
            .contains("401 properties")
    );
}
