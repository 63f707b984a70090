//! CPU cost of the pure parts of a sync and of a custom-events delivery, without I/O:
//! TRIFFT -> Klaviyo standard mapping (events and members per second), the custom-event
//! mapping, and building bulk request bodies (events per second, bytes per second).
//!
//! Inputs are the valid fixtures of tests/fixtures/ (the mapping's own table tests),
//! repeated with distinct ids, so every metric kind and attribute is exercised.
//! Run: `scripts/bench handlers` or `cargo bench -p loyalty-bridge --bench mapping`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use loyalty_bridge::klaviyo::bulk::{EventBulkBuilder, ProfileBulkBuilder};
use loyalty_bridge::klaviyo::{Event, Profile, ProfileIdentity};
use loyalty_bridge::mapping::custom::Mapping;
use loyalty_bridge::mapping::standard::{Options, event_to_klaviyo, member_to_profile};
use loyalty_bridge::trifft::{ActivityEvent, Member};
use serde_json::{Value, json};

/// Items per benchmark iteration: one TRIFFT feed page is at most 1,000 items.
const PAGE: usize = 1_000;

/// The `input` of every fixture in `dir` that maps (has `expected`, not `expected_issue`).
fn valid_inputs(dir: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/standard")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            let fixture: Value = serde_json::from_str(&text).ok()?;
            let prefixed = fixture["options"]["metric_prefix"].is_string();
            (fixture.get("expected").is_some() && !prefixed).then(|| fixture["input"].clone())
        })
        .collect()
}

/// `n` activity events cycling through the valid metric fixtures, each with its own id
/// and member (so bulk building sees many profiles, as a real feed page does).
fn activity_events(n: usize) -> Vec<ActivityEvent> {
    let inputs = valid_inputs("metrics");
    assert!(!inputs.is_empty(), "no valid metric fixtures");
    (0..n)
        .map(|i| {
            let mut v = inputs[i % inputs.len()].clone();
            v["id"] = json!(format!("evt-{i:08}"));
            v["member_id"] = json!(format!("5f0c7e2a-4b1d-4c3e-9a8b-{:012}", i % 400));
            serde_json::from_value(v).expect("a metric fixture is an ActivityEvent")
        })
        .collect()
}

/// `n` members cycling through the valid attribute fixtures, each with its own id.
fn members(n: usize) -> Vec<Member> {
    let inputs = valid_inputs("attributes");
    assert!(!inputs.is_empty(), "no valid attribute fixtures");
    (0..n)
        .map(|i| {
            let mut v = inputs[i % inputs.len()].clone();
            v["id"] = json!(format!("5f0c7e2a-4b1d-4c3e-9a8b-{i:012}"));
            serde_json::from_value(v).expect("an attribute fixture is a Member")
        })
        .collect()
}

fn mapped_events(events: &[ActivityEvent]) -> Vec<(ProfileIdentity, Event)> {
    let options = Options::default();
    events
        .iter()
        .filter_map(|e| event_to_klaviyo(e, &options).ok())
        .collect()
}

fn standard_mapping(c: &mut Criterion) {
    let events = activity_events(PAGE);
    let members = members(PAGE);
    let options = Options {
        latest_time: Some(Utc::now() + chrono::Duration::days(364)),
        ..Options::default()
    };
    assert_eq!(
        mapped_events(&events).len(),
        PAGE,
        "every benchmark event maps"
    );

    let mut group = c.benchmark_group("standard_mapping");
    group.throughput(Throughput::Elements(PAGE as u64));
    group.bench_function("events_1000", |b| {
        b.iter(|| {
            for event in black_box(&events) {
                let _ = black_box(event_to_klaviyo(event, &options));
            }
        })
    });
    group.bench_function("members_1000", |b| {
        b.iter(|| {
            for member in black_box(&members) {
                let _ = black_box(member_to_profile(member));
            }
        })
    });
    group.finish();
}

fn custom_mapping(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/custom");
    let text = std::fs::read_to_string(dir.join("mapping.json")).expect("custom mapping fixture");
    let mapping =
        Mapping::from_json(&text, "tests/fixtures/custom/mapping.json").expect("valid mapping");
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("cases.json")).expect("custom cases fixture"),
    )
    .expect("cases.json is JSON");
    // The first case that maps to exactly one event, as one delivery and as a batch.
    let single = cases
        .iter()
        .filter(|case| {
            case["expect"]["events"]
                .as_array()
                .is_some_and(|e| e.len() == 1)
        })
        .map(|case| case["body"].clone())
        .find(|body| body.is_object() && body.get("events").is_none())
        .expect("a single-event case");
    let now = Utc
        .with_ymd_and_hms(2026, 7, 21, 9, 0, 0)
        .single()
        .expect("a valid time");
    let batch_of = |n: usize| {
        let events: Vec<Value> = (0..n)
            .map(|i| {
                let mut e = single.clone();
                e["id"] = json!(format!("ch-{i:06}"));
                e
            })
            .collect();
        json!({ "events": events })
    };

    let mut group = c.benchmark_group("custom_mapping");
    for n in [1usize, 100] {
        let body = if n == 1 { single.clone() } else { batch_of(n) };
        let mapped = mapping
            .map_request(&body, now)
            .map_err(|e| format!("{e:?}"))
            .expect("the body maps");
        assert_eq!(
            mapped.events.len(),
            n,
            "every event of the benchmark body maps"
        );
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("events", n), &body, |b, body| {
            b.iter(|| black_box(mapping.map_request(black_box(body), now).is_ok()))
        });
    }
    group.finish();
}

/// Every request the builder emits for `items`, and their total body size.
fn build_events(items: &[(ProfileIdentity, Event)]) -> (usize, usize) {
    let mut builder = EventBulkBuilder::new();
    let (mut requests, mut bytes) = (0, 0);
    for (identity, event) in items {
        if let Ok(Some(full)) = builder.push(identity, event.clone()) {
            requests += 1;
            bytes += full.body.len();
        }
    }
    if let Some(last) = builder.finish() {
        requests += 1;
        bytes += last.body.len();
    }
    (requests, bytes)
}

fn build_profiles(profiles: &[Profile]) -> (usize, usize) {
    let mut builder = ProfileBulkBuilder::new();
    let (mut requests, mut bytes) = (0, 0);
    for profile in profiles {
        if let Ok(Some(full)) = builder.push(profile) {
            requests += 1;
            bytes += full.body.len();
        }
    }
    if let Some(last) = builder.finish() {
        requests += 1;
        bytes += last.body.len();
    }
    (requests, bytes)
}

fn bulk_building(c: &mut Criterion) {
    // 5,000 events: five full requests of 1,000 (the count limit) per iteration.
    let events = mapped_events(&activity_events(5 * PAGE));
    let (requests, event_bytes) = build_events(&events);
    println!(
        "bulk events: {} events -> {requests} requests, {event_bytes} bytes",
        events.len()
    );
    let profiles: Vec<Profile> = members(10 * PAGE)
        .iter()
        .filter_map(|m| member_to_profile(m).ok())
        .collect();
    let (requests, profile_bytes) = build_profiles(&profiles);
    println!(
        "bulk profiles: {} profiles -> {requests} requests, {profile_bytes} bytes",
        profiles.len()
    );

    let mut group = c.benchmark_group("bulk_building");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("events_5000_elements", |b| {
        b.iter(|| black_box(build_events(black_box(&events))))
    });
    group.throughput(Throughput::Bytes(event_bytes as u64));
    group.bench_function("events_5000_bytes", |b| {
        b.iter(|| black_box(build_events(black_box(&events))))
    });
    group.throughput(Throughput::Elements(profiles.len() as u64));
    group.bench_function("profiles_10000_elements", |b| {
        b.iter(|| black_box(build_profiles(black_box(&profiles))))
    });
    group.throughput(Throughput::Bytes(profile_bytes as u64));
    group.bench_function("profiles_10000_bytes", |b| {
        b.iter(|| black_box(build_profiles(black_box(&profiles))))
    });
    group.finish();
}

fn modest() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = modest();
    targets = standard_mapping, custom_mapping, bulk_building
}
criterion_main!(benches);
