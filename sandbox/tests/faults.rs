//! Injected faults: 5xx, 429 storms, throttles, latency and dropped connections, seeded.

mod common;

use std::time::Duration;

use common::*;
use sandbox::{FaultTarget, Faults, SandboxConfig};
use serde_json::{Value, json};

async fn statuses(sandbox: &sandbox::Sandbox, n: usize) -> Vec<Option<u16>> {
    let mut out = vec![];
    for i in 0..n {
        let result = client()
            .post(format!("{}/api/events", sandbox.klaviyo_url()))
            .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
            .header("revision", "2026-07-15")
            .header("Content-Type", JSON_API)
            .body(event("App opened", &format!("u-{i}"), "m-1").to_string())
            .send()
            .await;
        out.push(result.ok().map(|r| r.status().as_u16()));
    }
    out
}

#[tokio::test]
async fn server_errors_are_seeded_json_api_and_not_applied() {
    let faults = Faults {
        seed: 3,
        target: FaultTarget::Klaviyo,
        error_rate: 0.5,
        ..Faults::default()
    };
    let sandbox = start(SandboxConfig {
        faults: faults.clone(),
        ..small()
    })
    .await;
    let first = statuses(&sandbox, 40).await;
    let errors = first
        .iter()
        .filter(|s| matches!(s, Some(500 | 502 | 503 | 504)))
        .count();
    let accepted = first.iter().filter(|s| **s == Some(202)).count();
    assert_eq!(errors + accepted, 40);
    assert!((8..=32).contains(&errors), "{first:?}");
    assert_eq!(
        sandbox.klaviyo().events.len(),
        accepted,
        "5xx requests are not applied"
    );
    assert_eq!(sandbox.klaviyo().server_errors, errors as u64);
    // Setting the same faults again replays the same sequence.
    sandbox.set_faults(faults);
    let again = statuses(&sandbox, 40).await;
    assert_eq!(first, again);
    // TRIFFT is not targeted.
    assert_eq!(
        trifft_get(&sandbox, "/activity/events?limit=1")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_storm_answers_429_with_retry_after_for_its_request_numbers() {
    let faults = Faults {
        storm: Some((2, 5)),
        target: FaultTarget::Klaviyo,
        ..Faults::default()
    };
    let sandbox = start(SandboxConfig { faults, ..small() }).await;
    let seen = statuses(&sandbox, 6).await;
    assert_eq!(
        seen,
        [
            Some(202),
            Some(429),
            Some(429),
            Some(429),
            Some(202),
            Some(202)
        ]
    );
    let response = client()
        .post(format!("{}/api/events", sandbox.klaviyo_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "storm is over");
    sandbox.set_faults(Faults {
        storm: Some((1, 2)),
        ..Faults::default()
    });
    let response = client()
        .post(format!("{}/api/events", sandbox.klaviyo_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(error_of(response).await["code"], "throttled");
}

#[tokio::test]
async fn dropped_connections_get_no_answer_and_change_nothing() {
    let faults = Faults {
        drop_rate: 1.0,
        target: FaultTarget::Both,
        ..Faults::default()
    };
    let sandbox = start(SandboxConfig { faults, ..small() }).await;
    let seen = statuses(&sandbox, 3).await;
    assert_eq!(seen, [None, None, None]);
    let err = trifft_get_result(&sandbox).await.unwrap_err();
    assert!(!err.is_timeout(), "closed, not hung: {err}");
    assert!(err.status().is_none());
    let state = sandbox.klaviyo();
    assert!(state.events.is_empty());
    assert_eq!(state.dropped, 3);
    assert_eq!(sandbox.trifft().dropped, 1);
    sandbox.set_faults(Faults::none());
    assert_eq!(statuses(&sandbox, 1).await, [Some(202)]);
}

async fn trifft_get_result(
    sandbox: &sandbox::Sandbox,
) -> Result<reqwest::Response, reqwest::Error> {
    client()
        .get(format!("{}/members/changes", sandbox.trifft_url()))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
}

#[tokio::test]
async fn trifft_faults_have_trifft_bodies_and_a_throttle_starts_the_lockout() {
    let config = SandboxConfig {
        trifft_lockout: Duration::from_millis(500),
        ..small()
    };
    let sandbox = start(config).await;
    sandbox.set_faults(Faults {
        error_rate: 1.0,
        target: FaultTarget::Trifft,
        ..Faults::default()
    });
    let response = trifft_batch(&sandbox, &json!([{"uri": "/v1/x", "method": "POST"}])).await;
    assert!([500, 502, 503].contains(&response.status().as_u16()));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert!(
        body["error"]["exception"]
            .as_str()
            .unwrap()
            .ends_with("Exception")
    );
    assert!(sandbox.trifft().batches.is_empty(), "not applied");
    // Klaviyo is not targeted.
    assert_eq!(statuses(&sandbox, 1).await, [Some(202)]);

    sandbox.set_faults(Faults {
        throttle_rate: 1.0,
        storm: None,
        target: FaultTarget::Trifft,
        ..Faults::default()
    });
    assert_eq!(trifft_get(&sandbox, "/members/changes").await.status(), 429);
    sandbox.set_faults(Faults::none());
    // Still locked out although the fault is gone.
    assert_eq!(trifft_get(&sandbox, "/members/changes").await.status(), 429);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(trifft_get(&sandbox, "/members/changes").await.status(), 200);
    assert_eq!(sandbox.trifft().lockouts, 1);
}

#[tokio::test]
async fn latency_delays_answers_and_faults_can_be_set_over_http() {
    let sandbox = start(small()).await;
    let url = format!("{}/_sandbox/faults", sandbox.klaviyo_url());
    let set = client()
        .post(&url)
        .body(r#"{"seed": 1, "target": "klaviyo", "latency_ms": [150, 150]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let started = std::time::Instant::now();
    assert_eq!(statuses(&sandbox, 1).await, [Some(202)]);
    // Latency is a floor, not a timing assertion on speed.
    assert!(started.elapsed() >= Duration::from_millis(150));
    let bad = client()
        .post(&url)
        .body(r#"{"error_rate": 2.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad = client()
        .post(&url)
        .body(r#"{"eror_rate": 0.1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Set on one server, the faults apply to both (per their target).
    let both = client()
        .post(format!("{}/_sandbox/faults", sandbox.klaviyo_url()))
        .body(r#"{"target": "trifft", "error_rate": 1.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 200);
    assert!(
        trifft_get(&sandbox, "/members/changes")
            .await
            .status()
            .is_server_error()
    );
    let state: Value = client()
        .get(format!(
            "{}/_sandbox/state",
            sandbox.trifft_url().trim_end_matches("/v1")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["members"], 50);
    assert_eq!(state["server_errors"], 1);
    assert_eq!(state["faults"]["error_rate"], 1.0);
    let state: Value = client()
        .get(format!("{}/_sandbox/state", sandbox.klaviyo_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["events"], 1);
}
