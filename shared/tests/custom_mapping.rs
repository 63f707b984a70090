//! Table tests of the custom-event mapping, from the JSON fixtures in fixtures/custom/:
//! mapping.json (a mapping using every path kind), cases.json (bodies and what they map
//! to, or why they are refused) and bad_mappings.json (files refused at start).
//!
//! In expected events, "$now" stands for the receive time passed in and "$hash" for the
//! SHA-256 of the canonical event object (computed here independently of the crate).

use chrono::{DateTime, TimeZone, Utc};
use loyalty_bridge::Error;
use loyalty_bridge::mapping::custom::{Mapping, Refusal};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MAPPING: &str = include_str!("fixtures/custom/mapping.json");
const CASES: &str = include_str!("fixtures/custom/cases.json");
const BAD_MAPPINGS: &str = include_str!("fixtures/custom/bad_mappings.json");

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 7, 21, 9, 0, 0).unwrap()
}

/// Sorted-key compact JSON, written out here so the test does not trust the crate's own.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().cloned().collect();
            keys.sort();
            // serde_json's default map is ordered by key already; rebuild to be explicit.
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[&k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn sha256_hex(v: &Value) -> String {
    Sha256::digest(serde_json::to_string(&sorted(v)).unwrap().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn items(body: &Value) -> Vec<Value> {
    match body {
        Value::Array(a) => a.clone(),
        Value::Object(o) if o.contains_key("events") => {
            o["events"].as_array().cloned().unwrap_or_default()
        }
        other => vec![other.clone()],
    }
}

fn field_of(e: &Error) -> (String, String) {
    match e {
        Error::InvalidInput { field, message } => (field.clone(), message.clone()),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn every_case_maps_as_the_table_says() {
    let mapping = Mapping::from_json(MAPPING, "fixtures/custom/mapping.json")
        .expect("the fixture mapping is valid");
    let cases: Vec<Value> = serde_json::from_str(CASES).unwrap();
    assert!(cases.len() >= 25, "the table lost cases: {}", cases.len());
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let body = &case["body"];
        let result = mapping.map_request(body, now());
        if let Some(expect) = case.get("expect") {
            let mapped = match result {
                Ok(m) => m,
                Err(e) => panic!("{name}: refused: {e:?}"),
            };
            let want = expect["events"].as_array().unwrap();
            assert_eq!(mapped.events.len(), want.len(), "{name}: event count");
            let originals = items(body);
            for (got, want) in mapped.events.iter().zip(want) {
                let unique_id = match want["unique_id"].as_str().unwrap() {
                    "$hash" => sha256_hex(&originals[got.index]),
                    id => id.to_string(),
                };
                let time = match want["time"].as_str().unwrap() {
                    "$now" => now(),
                    t => DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc),
                };
                assert_eq!(
                    got.event.metric_name,
                    want["metric"].as_str().unwrap(),
                    "{name}: metric"
                );
                assert_eq!(got.event.unique_id, unique_id, "{name}: unique_id");
                assert_eq!(
                    serde_json::to_value(&got.identity).unwrap(),
                    want["identity"],
                    "{name}: identity"
                );
                assert_eq!(got.event.time, time, "{name}: time");
                assert_eq!(got.event.value, want["value"].as_f64(), "{name}: value");
                assert_eq!(
                    got.event.value_currency.as_deref(),
                    want["value_currency"].as_str(),
                    "{name}: currency"
                );
                assert_eq!(
                    Value::Object(got.event.properties.clone()),
                    want["properties"],
                    "{name}: properties"
                );
                assert!(!got.event.backfill, "{name}: custom events trigger flows");
            }
            let want_skipped = expect
                .get("skipped")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                mapped.skipped.len(),
                want_skipped.len(),
                "{name}: skipped {:?}",
                mapped.skipped
            );
            for (got, want) in mapped.skipped.iter().zip(&want_skipped) {
                assert_eq!(
                    got.index as u64,
                    want["index"].as_u64().unwrap(),
                    "{name}: skipped index"
                );
                let needle = want["reason_contains"].as_str().unwrap();
                assert!(
                    got.reason.contains(needle),
                    "{name}: skipped reason {:?} lacks {needle:?}",
                    got.reason
                );
            }
            for needle in expect
                .get("warnings_contain")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let needle = needle.as_str().unwrap();
                assert!(
                    mapped.warnings.iter().any(|w| w.contains(needle)),
                    "{name}: no warning has {needle:?}: {:?}",
                    mapped.warnings
                );
            }
        } else if let Some(want) = case.get("invalid") {
            let Err(Refusal::Invalid(got)) = result else {
                panic!("{name}: expected 422, got {result:?}")
            };
            let want = want.as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{name}: {got:?}");
            for (g, w) in got.iter().zip(want) {
                let (field, message) = field_of(&g.error);
                assert_eq!(
                    g.index as u64,
                    w["index"].as_u64().unwrap(),
                    "{name}: index"
                );
                assert_eq!(
                    field,
                    w["field"].as_str().unwrap(),
                    "{name}: field ({message})"
                );
                let needle = w["message_contains"].as_str().unwrap();
                assert!(
                    message.contains(needle),
                    "{name}: message {message:?} lacks {needle:?}"
                );
            }
        } else if let Some(want) = case.get("malformed") {
            let Err(Refusal::Malformed(e)) = result else {
                panic!("{name}: expected 400, got {result:?}")
            };
            assert_eq!(field_of(&e).0, want["field"].as_str().unwrap(), "{name}");
        } else {
            panic!("{name}: a case needs expect, invalid or malformed");
        }
    }
}

#[test]
fn bad_mapping_files_are_refused_naming_rule_and_field() {
    let cases: Vec<Value> = serde_json::from_str(BAD_MAPPINGS).unwrap();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let text = match &case["mapping"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let err = Mapping::from_json(&text, "CUSTOM_EVENTS_MAPPING").expect_err(name);
        let message = err.to_string();
        assert!(
            message.starts_with("configuration: CUSTOM_EVENTS_MAPPING: "),
            "{name}: {message}"
        );
        let needle = case["error_contains"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{name}: {message:?} lacks {needle:?}"
        );
    }
}

#[test]
fn the_same_event_hashes_the_same_whatever_the_key_order() {
    let mapping = Mapping::from_json(MAPPING, "m").unwrap();
    let a: Value = serde_json::from_str(
        r#"{"meta":{"event type":"order"},"items":[{"member id":"m-1"}],"x":1}"#,
    )
    .unwrap();
    let b: Value = serde_json::from_str(
        r#"{"x":1,"items":[{"member id":"m-1"}],"meta":{"event type":"order"}}"#,
    )
    .unwrap();
    let ua = mapping.map_request(&a, now()).unwrap().events[0]
        .event
        .unique_id
        .clone();
    let ub = mapping.map_request(&b, now()).unwrap().events[0]
        .event
        .unique_id
        .clone();
    assert_eq!(ua, ub);
    assert_eq!(ua.len(), 64);
    let c = json!({"meta":{"event type":"order"},"items":[{"member id":"m-1"}],"x":2});
    assert_ne!(
        mapping.map_request(&c, now()).unwrap().events[0]
            .event
            .unique_id,
        ua,
        "different content, different id"
    );
}

#[test]
fn unknown_types_are_refused_or_ignored_as_configured() {
    let rules =
        r#""rules": {"streak": {"metric": "Streak reached", "identity": {"email": "$.email"}}}"#;
    let reject = Mapping::from_json(&format!(r#"{{"version": 1, {rules}}}"#), "m").unwrap();
    let body = json!({"event": "contest_won", "email": "a@example.com"});
    let Err(Refusal::Invalid(e)) = reject.map_request(&body, now()) else {
        panic!("expected 422")
    };
    let (field, message) = field_of(&e[0].error);
    assert_eq!(field, "$.event");
    assert!(
        message.contains("\"contest_won\" has no rule") && message.contains("mapped types: streak"),
        "{message}"
    );

    let ignore = Mapping::from_json(
        &format!(r#"{{"version": 1, {rules}, "unknown_type": "ignore"}}"#),
        "m",
    )
    .unwrap();
    let mapped = ignore.map_request(&body, now()).unwrap();
    assert!(mapped.events.is_empty());
    assert!(
        mapped.skipped[0].reason.contains("ignored"),
        "{:?}",
        mapped.skipped
    );

    let missing_type = json!({"email": "a@example.com"});
    let Err(Refusal::Invalid(e)) = reject.map_request(&missing_type, now()) else {
        panic!("expected 422")
    };
    assert!(field_of(&e[0].error).1.contains("no event type at $.event"));
}

#[test]
fn a_marker_renamed_into_the_properties_still_stops_the_loop() {
    let m = Mapping::from_json(
        r#"{"version": 1, "rules": {"x": {"metric": "X", "identity": {"email": "$.email"},
            "properties": {"include": ["$.meta"], "rename": {"meta.origin": "source"}, "drop": ["meta"]}}}}"#,
        "m",
    )
    .unwrap();
    let body = json!({"event": "x", "email": "a@example.com", "meta": {"origin": "trifft-klaviyo-bridge"}});
    let mapped = m.map_request(&body, now()).unwrap();
    assert!(mapped.events.is_empty());
    assert!(mapped.skipped[0].reason.contains("caused by the bridge"));
}

#[test]
fn too_many_events_are_refused() {
    let m = Mapping::from_json(MAPPING, "m").unwrap();
    let body = Value::Array(vec![json!({"email": "a@example.com"}); 1001]);
    let Err(Refusal::Invalid(e)) = m.map_request(&body, now()) else {
        panic!("expected 422")
    };
    assert!(
        field_of(&e[0].error)
            .1
            .contains("1001 events; at most 1000")
    );
}
