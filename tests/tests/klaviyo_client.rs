//! The Klaviyo client and bulk builders against the sandbox's Klaviyo emulator.
//!
//! Times are judged where the requests arrive: a small forwarding proxy in front of the
//! emulator stamps each request, so the assertions say what the server saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use e2e_tests::client_support::{Credential, TestSecrets, start_proxy};
use loyalty_bridge::klaviyo::bulk::{EventBulkBuilder, ProfileBulkBuilder};
use loyalty_bridge::klaviyo::{
    Event, KlaviyoApi, KlaviyoClient, KlaviyoSettings, Profile, ProfileIdentity,
};
use loyalty_bridge::retry::RetryPolicy;
use loyalty_bridge::{Deadline, Error, Service};
use sandbox::{FaultTarget, Faults, KlaviyoRates, Sandbox, SandboxConfig};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

const KEY: &str = "pk_sandbox_0123456789abcdef";

/// Where to record what the client sends, one folder per sandbox, when
/// `KLAVIYO_CLIENT_RECORD_DIR` is set (for the contract check run by hand).
fn record_dir() -> Option<std::path::PathBuf> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let root = std::env::var_os("KLAVIYO_CLIENT_RECORD_DIR")?;
    Some(
        std::path::PathBuf::from(root)
            .join(format!("sandbox-{}", NEXT.fetch_add(1, Ordering::SeqCst))),
    )
}

async fn sandbox(rates: KlaviyoRates) -> Sandbox {
    Sandbox::start(SandboxConfig {
        members: 5,
        events: 5,
        klaviyo_rates: rates,
        record_dir: record_dir(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn settings(base_url: String) -> KlaviyoSettings {
    KlaviyoSettings {
        base_url,
        request_timeout: Duration::from_secs(5),
        // Short backoff so fault tests are quick; Retry-After still sets the floor.
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(20),
            ..RetryPolicy::default()
        },
        ..KlaviyoSettings::default()
    }
}

fn client(base_url: String) -> KlaviyoClient {
    KlaviyoClient::new(
        settings(base_url),
        TestSecrets::new(Credential::KlaviyoPrivateKey, KEY, None),
    )
    .unwrap()
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(60))
}

fn member(n: usize) -> ProfileIdentity {
    ProfileIdentity {
        external_id: Some(format!("bf428af0-1c2d-4e5f-91b5-{n:012}")),
        email: Some(format!("member{n}@example.com")),
        ..Default::default()
    }
}

fn event(unique_id: &str, pad: usize) -> Event {
    Event {
        metric_name: "Wallet credited".into(),
        properties: Map::from_iter([
            ("points".to_string(), json!(50)),
            ("note".to_string(), json!("n".repeat(pad))),
        ]),
        time: Utc::now() - chrono::Duration::hours(1),
        value: None,
        value_currency: None,
        unique_id: unique_id.into(),
        backfill: true,
    }
}

fn requests_of(
    events: impl IntoIterator<Item = (ProfileIdentity, Event)>,
) -> Vec<loyalty_bridge::klaviyo::EventBulkRequest> {
    let mut builder = EventBulkBuilder::new();
    let mut out = Vec::new();
    for (identity, event) in events {
        out.extend(builder.push(&identity, event).unwrap());
    }
    out.extend(builder.finish());
    out
}

#[tokio::test]
async fn every_endpoint_answers_with_the_documented_headers() {
    let sb = sandbox(KlaviyoRates::Real).await;
    let c = client(sb.klaviyo_url());
    c.create_event(&member(1), &event("single-1", 0), deadline())
        .await
        .unwrap();
    let profile = Profile {
        identity: member(2),
        first_name: Some("Sarah".into()),
        properties: Map::from_iter([("trifft_points".to_string(), json!(1540))]),
        ..Default::default()
    };
    let id = c.import_profile(&profile, deadline()).await.unwrap();
    assert!(!id.is_empty());
    for request in requests_of((0..3).map(|i| (member(i), event(&format!("bulk-{i}"), 0)))) {
        c.bulk_create_events(&request, deadline()).await.unwrap();
    }
    let mut profiles = ProfileBulkBuilder::new();
    for i in 10..13 {
        assert!(
            profiles
                .push(&Profile {
                    identity: member(i),
                    ..Default::default()
                })
                .unwrap()
                .is_none()
        );
    }
    let job = c
        .bulk_import_profiles(&profiles.finish().unwrap(), deadline())
        .await
        .unwrap();
    assert_eq!(job.total_count, 3);
    let mut status = c.bulk_import_job(&job.id, deadline()).await.unwrap();
    while !status.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = c.bulk_import_job(&job.id, deadline()).await.unwrap();
    }
    assert_eq!(
        (status.status.as_str(), status.completed_count),
        ("complete", 3)
    );
    assert!(
        c.bulk_import_errors(&job.id, deadline())
            .await
            .unwrap()
            .is_empty()
    );

    let snapshot = sb.klaviyo();
    assert_eq!(snapshot.events.len(), 4);
    assert!(
        snapshot
            .profile_by_external_id(member(2).external_id.as_deref().unwrap())
            .is_some()
    );
    assert_eq!(snapshot.throttled, 0);
    assert!(snapshot.rejections.is_empty(), "{:?}", snapshot.rejections);
    let writes = sb.recorded_klaviyo_writes();
    assert_eq!(writes.len(), 4);
    for w in &writes {
        let h = &w["headers"];
        assert_eq!(h["revision"], "2026-07-15");
        assert_eq!(h["content-type"], "application/vnd.api+json");
        assert_eq!(h["accept"], "application/vnd.api+json");
        assert!(
            h["authorization"]
                .as_str()
                .unwrap()
                .starts_with("Klaviyo-API-Key pk_s"),
            "{h}"
        );
        assert!(
            h["user-agent"]
                .as_str()
                .unwrap()
                .starts_with("trifft-klaviyo-bridge/"),
            "{h}"
        );
    }
    assert_eq!(
        c.stats().requests,
        snapshot.request_counts.values().sum::<u64>()
    );
    sb.stop().await;
}

#[tokio::test]
async fn bulk_requests_split_at_1000_events_and_5_mb_are_accepted() {
    let sb = sandbox(KlaviyoRates::Real).await;
    let c = client(sb.klaviyo_url());
    let thousand = requests_of((0..1_000).map(|i| (member(i % 50), event(&format!("k{i}"), 0))));
    assert_eq!(thousand.len(), 1);
    let thousand_and_one =
        requests_of((0..1_001).map(|i| (member(i % 50), event(&format!("m{i}"), 0))));
    assert_eq!(
        thousand_and_one
            .iter()
            .map(|r| r.events)
            .collect::<Vec<_>>(),
        [1_000, 1]
    );
    // About 5.5 MB of events: two bodies, each within 5 MB.
    let big = requests_of((0..60).map(|i| (member(i), event(&format!("big{i}"), 90_000))));
    assert_eq!(big.len(), 2);
    for r in thousand.iter().chain(&thousand_and_one).chain(&big) {
        assert!(r.body.len() <= 5 * 1024 * 1024);
        c.bulk_create_events(r, deadline()).await.unwrap();
    }
    let snapshot = sb.klaviyo();
    assert!(snapshot.rejections.is_empty(), "{:?}", snapshot.rejections);
    assert_eq!(snapshot.events.len(), 1_000 + 1_001 + 60);
    sb.stop().await;
}

/// What the real Klaviyo refuses, sent around the client, is refused by the emulator too.
#[tokio::test]
async fn the_emulator_refuses_what_klaviyo_would() {
    // Not recorded: these requests are wrong on purpose.
    let config = SandboxConfig {
        members: 5,
        events: 5,
        klaviyo_rates: KlaviyoRates::Unlimited,
        ..Default::default()
    };
    let sb = Sandbox::start(config).await.unwrap();
    let raw = reqwest::Client::new();
    let url = format!("{}/api/event-bulk-create-jobs", sb.klaviyo_url());
    let send = |body: Vec<u8>, revision: bool| {
        let mut r = raw
            .post(&url)
            .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
            .header("Content-Type", "application/vnd.api+json")
            .header("Accept", "application/vnd.api+json");
        if revision {
            r = r.header("revision", "2026-07-15");
        }
        r.body(body).send()
    };
    // A valid body first, so the refusals below are about one thing each.
    let ok = requests_of((0..2).map(|i| (member(i), event(&format!("raw{i}"), 0)))).remove(0);
    assert_eq!(send(ok.body.to_vec(), true).await.unwrap().status(), 202);
    assert_eq!(
        send(ok.body.to_vec(), false).await.unwrap().status(),
        400,
        "no revision header"
    );

    // 1,001 events in one body: built with a builder whose limit is lifted.
    let mut loose = EventBulkBuilder::with_limits(2_000, usize::MAX);
    for i in 0..1_001 {
        assert!(
            loose
                .push(&member(i % 10), event(&format!("over{i}"), 0))
                .unwrap()
                .is_none()
        );
    }
    let over = loose.finish().unwrap();
    assert_eq!(over.events, 1_001);
    let status = send(over.body.to_vec(), true).await.unwrap().status();
    assert!(status == 400 || status == 413, "1,001 events: {status}");

    // The same unique_id twice for one profile and metric fails the whole request.
    let mut body: Value = serde_json::from_slice(&ok.body).unwrap();
    let entry = &mut body["data"]["attributes"]["events-bulk-create"]["data"][0]["attributes"]["events"]
        ["data"];
    let first = entry[0].clone();
    entry.as_array_mut().unwrap().push(first);
    let status = send(serde_json::to_vec(&body).unwrap(), true)
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400, "repeated unique_id");
    let snapshot = sb.klaviyo();
    assert_eq!(
        snapshot.events.len(),
        2,
        "only the valid request was applied"
    );
    sb.stop().await;
}

#[tokio::test]
async fn pacing_stays_within_the_real_tier() {
    let sb = sandbox(KlaviyoRates::Real).await;
    let (url, arrivals) = start_proxy(sb.klaviyo_url()).await;
    let c = Arc::new(client(url));
    // 24 one-event requests from 4 concurrent callers at the M tier (10/s).
    let singles: Vec<_> = (0..24)
        .map(|i| requests_of([(member(i), event(&format!("p{i}"), 0))]).remove(0))
        .collect();
    let singles = Arc::new(singles);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (c, singles) = (c.clone(), singles.clone());
        tasks.push(tokio::spawn(async move {
            for r in singles.iter().skip(t).step_by(4) {
                c.bulk_create_events(r, deadline()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let snapshot = sb.klaviyo();
    assert_eq!(snapshot.throttled, 0);
    assert_eq!(snapshot.requests("POST /api/event-bulk-create-jobs"), 24);
    let times: Vec<Instant> = arrivals.lock().unwrap().iter().map(|a| a.0).collect();
    assert_eq!(times.len(), 24);
    for (i, t) in times.iter().enumerate() {
        let in_second = times[i..]
            .iter()
            .filter(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(
            in_second <= 10,
            "{in_second} requests arrived within one second"
        );
    }
    assert_eq!(c.stats().throttles, 0);
    sb.stop().await;
}

#[tokio::test]
async fn a_429_storm_is_waited_out_by_retry_after() {
    let sb = sandbox(KlaviyoRates::Unlimited).await;
    let (url, arrivals) = start_proxy(sb.klaviyo_url()).await;
    let c = client(url);
    // Requests 1..=3 answered 429 with Retry-After: 1.
    sb.set_faults(Faults {
        target: FaultTarget::Klaviyo,
        storm: Some((1, 4)),
        ..Faults::none()
    });
    c.create_event(&member(1), &event("storm-1", 0), deadline())
        .await
        .unwrap();
    let seen = arrivals.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|a| a.2).collect::<Vec<_>>(),
        [429, 429, 429, 202]
    );
    for pair in seen.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0);
        assert!(
            gap >= Duration::from_secs(1),
            "retried {gap:?} after a 429 with Retry-After: 1"
        );
    }
    let stats = c.stats();
    assert_eq!((stats.requests, stats.retries, stats.throttles), (4, 3, 3));
    assert_eq!(sb.klaviyo().throttled, 3);
    sb.stop().await;
}

#[tokio::test]
async fn throttling_past_the_deadline_is_rate_limited_at_once() {
    let sb = sandbox(KlaviyoRates::Unlimited).await;
    let c = client(sb.klaviyo_url());
    sb.set_faults(Faults {
        target: FaultTarget::Klaviyo,
        storm: Some((1, 100)),
        ..Faults::none()
    });
    let e = c
        .create_event(
            &member(1),
            &event("late", 0),
            Deadline::after(Duration::from_millis(800)),
        )
        .await
        .unwrap_err();
    match e {
        Error::RateLimited {
            service: Service::Klaviyo,
            retry_after,
        } => assert_eq!(retry_after, Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(sb.klaviyo().requests("POST /api/events"), 1);
    // The limiter is paused for that second, so a second caller with a short deadline does
    // not even send.
    let e = c
        .create_event(
            &member(1),
            &event("late2", 0),
            Deadline::after(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RateLimited { .. }), "{e:?}");
    assert_eq!(sb.klaviyo().requests("POST /api/events"), 1);
    sb.stop().await;
}

#[tokio::test]
async fn server_errors_are_retried_then_typed() {
    let sb = sandbox(KlaviyoRates::Unlimited).await;
    let c = client(sb.klaviyo_url());
    sb.set_faults(Faults {
        target: FaultTarget::Klaviyo,
        error_rate: 1.0,
        ..Faults::none()
    });
    let e = c
        .create_event(&member(1), &event("down", 0), deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Upstream {
                service: Service::Klaviyo,
                status: 500..=504,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_eq!(sb.klaviyo().requests("POST /api/events"), 4, "max_attempts");
    assert_eq!(sb.klaviyo().server_errors, 4);

    sb.set_faults(Faults {
        target: FaultTarget::Klaviyo,
        drop_rate: 1.0,
        ..Faults::none()
    });
    let e = c
        .create_event(&member(1), &event("dropped", 0), deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Transport {
                service: Service::Klaviyo,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(sb.klaviyo().requests("POST /api/events"), 8);

    // Half the requests fail: the retries get every event through, none twice.
    sb.set_faults(Faults {
        seed: 3,
        target: FaultTarget::Klaviyo,
        error_rate: 0.5,
        ..Faults::none()
    });
    for i in 0..10 {
        c.create_event(&member(i), &event(&format!("flaky{i}"), 0), deadline())
            .await
            .unwrap();
    }
    let snapshot = sb.klaviyo();
    assert_eq!(snapshot.events.len(), 10);
    assert!(snapshot.server_errors > 4, "faults were injected");
    sb.stop().await;
}

#[tokio::test]
async fn a_401_refreshes_the_key_once() {
    let sb = sandbox(KlaviyoRates::Unlimited).await;
    let rotated = TestSecrets::new(
        Credential::KlaviyoPrivateKey,
        "pk_old_key_that_was_rotated",
        Some(KEY),
    );
    let c = KlaviyoClient::new(settings(sb.klaviyo_url()), rotated.clone()).unwrap();
    c.create_event(&member(1), &event("after-rotation", 0), deadline())
        .await
        .unwrap();
    assert_eq!(rotated.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(sb.klaviyo().requests("POST /api/events"), 2);

    let wrong = TestSecrets::new(
        Credential::KlaviyoPrivateKey,
        "pk_wrong",
        Some("pk_still_wrong"),
    );
    let c = KlaviyoClient::new(settings(sb.klaviyo_url()), wrong.clone()).unwrap();
    let e = c
        .create_event(&member(1), &event("never", 0), deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unauthorized {
                service: Service::Klaviyo,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.to_string().contains("pk_still_wrong"), "{e}");
    assert_eq!(wrong.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(sb.klaviyo().requests("POST /api/events"), 4);
    sb.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_before_any_call_and_4xx_is_decoded() {
    let sb = sandbox(KlaviyoRates::Unlimited).await;
    let c = client(sb.klaviyo_url());
    let e = c
        .create_event(&ProfileIdentity::default(), &event("nobody", 0), deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { field, .. } if field == "profile"),
        "{e:?}"
    );
    assert!(
        c.bulk_import_job("../../api/events", deadline())
            .await
            .is_err()
    );
    assert_eq!(c.stats().requests, 0);

    // The emulator refuses an event far in the future, with a JSON:API error.
    let mut future = event("future", 0);
    future.time = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    match c
        .create_event(&member(1), &future, deadline())
        .await
        .unwrap_err()
    {
        Error::Rejected {
            service: Service::Klaviyo,
            status: 400,
            errors,
        } => {
            assert!(!errors.is_empty());
            assert!(
                errors
                    .iter()
                    .any(|d| d.pointer.as_deref().is_some_and(|p| p.contains("time"))),
                "{errors:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.stats().requests, 1, "a 400 is not retried");
    sb.stop().await;
}

#[tokio::test]
async fn import_errors_are_read_across_pages() {
    let sb = Sandbox::start(SandboxConfig {
        members: 5,
        events: 5,
        klaviyo_rates: KlaviyoRates::Unlimited,
        import_job_processing: Duration::from_millis(50),
        record_dir: record_dir(),
        ..Default::default()
    })
    .await
    .unwrap();
    let c = client(sb.klaviyo_url());
    // 250 profiles naming a Klaviyo id that does not exist: each fails inside the job
    // (the builders never send ids, so this body is written by hand).
    let profiles: Vec<Value> = (0..250)
        .map(|i| json!({"type": "profile", "id": format!("01NOSUCHPROFILE{i:05}"), "attributes": {"external_id": format!("ghost-{i}")}}))
        .collect();
    let body = json!({"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": profiles}}}});
    let request = loyalty_bridge::klaviyo::ProfileBulkRequest {
        body: serde_json::to_vec(&body).unwrap().into(),
        profiles: 250,
    };
    let job = c.bulk_import_profiles(&request, deadline()).await.unwrap();
    let mut status = c.bulk_import_job(&job.id, deadline()).await.unwrap();
    while !status.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = c.bulk_import_job(&job.id, deadline()).await.unwrap();
    }
    assert_eq!(status.failed_count, 250);
    let errors = c.bulk_import_errors(&job.id, deadline()).await.unwrap();
    assert_eq!(errors.len(), 250);
    assert!(
        errors
            .iter()
            .all(|e| e.code == "not_found" && e.original_payload.is_some()),
        "{:?}",
        errors[0]
    );
    assert_eq!(
        errors[249].pointer.as_deref(),
        Some("/data/attributes/profiles/data/249")
    );
    assert!(
        sb.klaviyo()
            .requests("GET /api/profile-bulk-import-jobs/{id}/import-errors")
            >= 3
    );
    sb.stop().await;
}

#[tokio::test]
async fn the_profile_import_limit_is_checked_before_sending() {
    let sb = sandbox(KlaviyoRates::Unlimited).await;
    let c = client(sb.klaviyo_url());
    let mut big = Profile {
        identity: member(1),
        ..Default::default()
    };
    for i in 0..3 {
        big.properties
            .insert(format!("p{i}"), json!("x".repeat(40_000)));
    }
    let e = c.import_profile(&big, deadline()).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    assert_eq!(sb.klaviyo().requests("POST /api/profile-import"), 0);
    sb.stop().await;
}
