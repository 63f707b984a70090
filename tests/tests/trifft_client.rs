//! The TRIFFT client against the sandbox's TRIFFT emulator: pacing, the lockout after a
//! 429, retries, credential refresh, feeds and the Batch API.
//!
//! Times are judged where the requests arrive: a small forwarding proxy in front of the
//! emulator stamps each request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e_tests::client_support::{Credential, TestSecrets, start_proxy};
use loyalty_bridge::retry::RetryPolicy;
use loyalty_bridge::trifft::{
    BatchItem, BatchMethod, FeedPosition, TrifftApi, TrifftClient, TrifftPaths, TrifftSettings,
};
use loyalty_bridge::{Deadline, Error, Service};
use sandbox::{FaultTarget, Faults, Sandbox, SandboxConfig};
use serde_json::json;
use tokio::time::Instant;

const TOKEN: &str = "trifft_sandbox_token";

const LOCKOUT: Duration = Duration::from_secs(1);

async fn sandbox(rate: (u32, Duration)) -> Sandbox {
    Sandbox::start(SandboxConfig {
        members: 120,
        events: 250,
        trifft_rate: rate,
        trifft_lockout: LOCKOUT,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn settings(base_url: String) -> TrifftSettings {
    TrifftSettings {
        base_url,
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(20),
            ..RetryPolicy::default()
        },
        lockout: LOCKOUT,
        ..TrifftSettings::default()
    }
}

fn client(base_url: String) -> TrifftClient {
    TrifftClient::new(
        settings(base_url),
        TestSecrets::new(Credential::TrifftApiToken, TOKEN, None),
    )
    .unwrap()
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(60))
}

fn credit(member_id: &str, points: u64) -> BatchItem {
    BatchItem {
        uri: loyalty_bridge::trifft::paths::fill(
            &TrifftPaths::default().credit_points,
            &[("member_id", member_id)],
        ),
        method: BatchMethod::Post,
        payload: Some(
            json!({"points": points, "reason": "test", "source": loyalty_bridge::ORIGIN_MARKER}),
        ),
    }
}

fn batches(sb: &Sandbox) -> usize {
    sb.trifft().batches.len()
}

#[tokio::test]
async fn a_batch_is_sent_with_bearer_auth_and_applied() {
    let sb = sandbox((50, Duration::from_secs(10))).await;
    let c = client(sb.trifft_url());
    let member = sb.trifft().members[0].id.clone();
    c.submit_batch(&[credit(&member, 50), credit(&member, 25)], deadline())
        .await
        .unwrap();
    let snapshot = sb.trifft();
    assert_eq!(snapshot.batches.len(), 1);
    assert_eq!(snapshot.batches[0].len(), 2);
    assert!(
        snapshot.outcomes.iter().all(|o| o.applied),
        "{:?}",
        snapshot.outcomes
    );
    assert_eq!(c.stats().requests, 1);
    sb.stop().await;
}

#[tokio::test]
async fn batch_size_is_checked_before_any_call() {
    let sb = sandbox((50, Duration::from_secs(10))).await;
    let c = client(sb.trifft_url());
    let member = sb.trifft().members[0].id.clone();
    for n in [0, 501] {
        let items: Vec<_> = (0..n).map(|_| credit(&member, 1)).collect();
        let e = c.submit_batch(&items, deadline()).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput { field, .. } if field == "items"),
            "{e:?}"
        );
    }
    let full: Vec<_> = (0..500).map(|_| credit(&member, 1)).collect();
    c.submit_batch(&full, deadline()).await.unwrap();
    assert_eq!(sb.trifft().request_counts.values().sum::<u64>(), 1);
    assert_eq!(sb.trifft().batches[0].len(), 500);
    sb.stop().await;
}

#[tokio::test]
async fn feeds_page_to_the_end_by_cursor() {
    let sb = sandbox((50, Duration::from_secs(10))).await;
    let c = client(sb.trifft_url());
    let mut members = Vec::new();
    let mut position = FeedPosition::Beginning;
    loop {
        let page = c.members_changed(&position, 50, deadline()).await.unwrap();
        members.extend(page.data);
        position = FeedPosition::Cursor(page.next_cursor);
        if !page.has_more {
            break;
        }
    }
    let snapshot = sb.trifft();
    assert_eq!(members.len(), snapshot.members.len());
    let mut events = 0;
    let mut position =
        FeedPosition::Since(snapshot.events.iter().map(|e| e.occurred_at).min().unwrap());
    loop {
        let page = c.activity_events(&position, 100, deadline()).await.unwrap();
        events += page.data.len();
        position = FeedPosition::Cursor(page.next_cursor);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(events, snapshot.events.len());
    assert_eq!(snapshot.throttled, 0);
    sb.stop().await;
}

#[tokio::test]
async fn a_body_of_the_wrong_shape_is_a_decode_error() {
    let sb = sandbox((50, Duration::from_secs(10))).await;
    // Members read from the activity feed: the items lack a member's fields.
    let mut s = settings(sb.trifft_url());
    s.paths.members_feed = s.paths.activity_feed.clone();
    let c =
        TrifftClient::new(s, TestSecrets::new(Credential::TrifftApiToken, TOKEN, None)).unwrap();
    let e = c
        .members_changed(&FeedPosition::Beginning, 10, deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Decode {
                service: Service::Trifft,
                ..
            }
        ),
        "{e:?}"
    );
    sb.stop().await;
}

#[tokio::test]
async fn pacing_at_the_limit_never_trips_the_lockout() {
    // The emulator allows 5 per second; the client is set to exactly that.
    let rate = (5, Duration::from_secs(1));
    let sb = sandbox(rate).await;
    let (url, arrivals) = start_proxy(sb.trifft_url().trim_end_matches("/v1").to_string()).await;
    let c = Arc::new(
        TrifftClient::new(
            TrifftSettings {
                rate,
                ..settings(format!("{url}/v1"))
            },
            TestSecrets::new(Credential::TrifftApiToken, TOKEN, None),
        )
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                c.activity_events(&FeedPosition::Beginning, 10, deadline())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let snapshot = sb.trifft();
    assert_eq!((snapshot.throttled, snapshot.lockouts), (0, 0));
    let times: Vec<Instant> = arrivals.lock().unwrap().iter().map(|a| a.0).collect();
    assert_eq!(times.len(), 15);
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .filter(|u| u.duration_since(*t) < rate.1)
            .count();
        assert!(in_window <= 5, "{in_window} requests within {:?}", rate.1);
    }
    sb.stop().await;
}

#[tokio::test]
async fn the_lockout_is_waited_out_when_the_deadline_allows() {
    // The emulator allows 3 per 10 s; a client set too generously passes it once.
    let sb = sandbox((3, Duration::from_secs(10))).await;
    let (url, arrivals) = start_proxy(sb.trifft_url().trim_end_matches("/v1").to_string()).await;
    let s = TrifftSettings {
        rate: (10, Duration::from_secs(10)),
        ..settings(format!("{url}/v1"))
    };
    let c =
        TrifftClient::new(s, TestSecrets::new(Credential::TrifftApiToken, TOKEN, None)).unwrap();
    for _ in 0..4 {
        c.activity_events(&FeedPosition::Beginning, 10, deadline())
            .await
            .unwrap();
    }
    let snapshot = sb.trifft();
    // One lockout, one 429: nothing was sent while it lasted.
    assert_eq!((snapshot.lockouts, snapshot.throttled), (1, 1));
    let seen = arrivals.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|a| a.2).collect::<Vec<_>>(),
        [200, 200, 200, 429, 200]
    );
    let gap = seen[4].0.duration_since(seen[3].0);
    assert!(
        gap >= LOCKOUT,
        "retried {gap:?} after the 429, lockout {LOCKOUT:?}"
    );
    assert_eq!(c.stats().throttles, 1);
    sb.stop().await;
}

#[tokio::test]
async fn a_lockout_past_the_deadline_is_rate_limited_at_once() {
    let sb = sandbox((50, Duration::from_secs(10))).await;
    let c = client(sb.trifft_url());
    let member = sb.trifft().members[0].id.clone();
    sb.set_faults(Faults {
        target: FaultTarget::Trifft,
        storm: Some((1, 100)),
        ..Faults::none()
    });
    let short = Deadline::after(Duration::from_millis(500));
    match c
        .submit_batch(&[credit(&member, 5)], short)
        .await
        .unwrap_err()
    {
        Error::RateLimited {
            service: Service::Trifft,
            retry_after,
        } => assert_eq!(retry_after, LOCKOUT),
        other => panic!("{other:?}"),
    }
    assert_eq!(sb.trifft().request_counts.values().sum::<u64>(), 1);
    // Every caller now holds off until the lockout is over, without sending.
    let e = c
        .activity_events(
            &FeedPosition::Beginning,
            10,
            Deadline::after(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::RateLimited {
                service: Service::Trifft,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(sb.trifft().request_counts.values().sum::<u64>(), 1);
    assert_eq!(batches(&sb), 0);
    sb.stop().await;
}

#[tokio::test]
async fn server_errors_are_retried_on_reads_and_typed() {
    let sb = sandbox((50, Duration::from_secs(10))).await;
    let c = client(sb.trifft_url());
    sb.set_faults(Faults {
        target: FaultTarget::Trifft,
        error_rate: 1.0,
        ..Faults::none()
    });
    let e = c
        .members_changed(&FeedPosition::Beginning, 10, deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Upstream {
                service: Service::Trifft,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(sb.trifft().server_errors, 4, "max_attempts");

    sb.set_faults(Faults {
        target: FaultTarget::Trifft,
        drop_rate: 1.0,
        ..Faults::none()
    });
    let e = c
        .members_changed(&FeedPosition::Beginning, 10, deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Transport {
                service: Service::Trifft,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(sb.trifft().dropped, 4);

    sb.set_faults(Faults {
        seed: 5,
        target: FaultTarget::Trifft,
        error_rate: 0.5,
        ..Faults::none()
    });
    for _ in 0..6 {
        c.members_changed(&FeedPosition::Beginning, 10, deadline())
            .await
            .unwrap();
    }
    sb.stop().await;
}

#[tokio::test]
async fn a_batch_is_never_sent_twice_when_it_may_have_been_applied() {
    let sb = sandbox((50, Duration::from_secs(10))).await;
    let (url, arrivals) = start_proxy(sb.trifft_url().trim_end_matches("/v1").to_string()).await;
    let c = client(format!("{url}/v1"));
    let member = sb.trifft().members[0].id.clone();
    sb.set_faults(Faults {
        seed: 11,
        target: FaultTarget::Trifft,
        error_rate: 1.0,
        ..Faults::none()
    });
    let mut retried_after_503 = 0;
    for _ in 0..10 {
        let before = arrivals.lock().unwrap().len();
        let e = c
            .submit_batch(&[credit(&member, 1)], deadline())
            .await
            .unwrap_err();
        let Error::Upstream { status, .. } = e else {
            panic!("{e:?}")
        };
        let statuses: Vec<u16> = arrivals.lock().unwrap()[before..]
            .iter()
            .map(|a| a.2)
            .collect();
        // Only a 503 (TRIFFT did not take it) is followed by another attempt; a 500 or 502
        // may have been queued, so it ends the call.
        let (last, earlier) = statuses.split_last().unwrap();
        assert!(earlier.iter().all(|s| *s == 503), "{statuses:?}");
        assert_eq!(*last, status);
        assert!(*last != 503 || statuses.len() == 4, "{statuses:?}");
        retried_after_503 += earlier.len();
    }
    assert!(retried_after_503 > 0, "the seeded faults include a 503");
    assert_eq!(batches(&sb), 0);
    sb.stop().await;
}

#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    let sb = sandbox((50, Duration::from_secs(10))).await;
    let rotated = TestSecrets::new(Credential::TrifftApiToken, "old_token", Some(TOKEN));
    let c = TrifftClient::new(settings(sb.trifft_url()), rotated.clone()).unwrap();
    c.members_changed(&FeedPosition::Beginning, 5, deadline())
        .await
        .unwrap();
    assert_eq!(rotated.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(c.stats().requests, 2);

    let wrong = TestSecrets::new(Credential::TrifftApiToken, "wrong", Some("still_wrong"));
    let c = TrifftClient::new(settings(sb.trifft_url()), wrong.clone()).unwrap();
    let e = c
        .members_changed(&FeedPosition::Beginning, 5, deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unauthorized {
                service: Service::Trifft,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.to_string().contains("still_wrong"));
    assert_eq!(
        (wrong.refreshes.load(Ordering::SeqCst), c.stats().requests),
        (1, 2)
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_malformed_batch_is_rejected_with_the_trifft_error() {
    let sb = sandbox((50, Duration::from_secs(10))).await;
    let c = client(sb.trifft_url());
    // A payload that is not an object is a validation error for the whole batch.
    let item = BatchItem {
        uri: "/v1/member/x/wallet/credit".into(),
        method: BatchMethod::Post,
        payload: Some(json!([1])),
    };
    match c.submit_batch(&[item], deadline()).await.unwrap_err() {
        Error::Rejected {
            service: Service::Trifft,
            status: 400,
            errors,
        } => {
            assert_eq!(errors[0].title, "ValidationException");
            assert!(errors[0].detail.contains("payload"), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.stats().requests, 1);
    sb.stop().await;
}
