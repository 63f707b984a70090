//! klaviyo-webhook's handler in-process against the TRIFFT emulator (the real
//! `TrifftClient` over HTTP): every action, every error class, every sample in
//! events/klaviyo-webhook.

#[path = "klaviyo_webhook_support.rs"]
mod support;

use std::sync::Arc;

use chrono::Utc;
use loyalty_bridge::state::{Claim, MemoryStateStore, StateStore};
use sandbox::{FaultTarget, Faults, Sandbox, SandboxConfig, TrifftSnapshot};
use serde_json::{Value, json};

use support::{HOOK_SECRET, TRIFFT_TOKEN, call, deps, request, request_with};

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig {
        seed: 7,
        members: 30,
        events: 60,
        ..Default::default()
    })
    .await
    .expect("sandbox starts")
}

/// A member with enough points to debit, one of its segments, a segment it is not in, and a coupon id.
fn pick(snapshot: &TrifftSnapshot) -> (String, String, String, String) {
    let member = snapshot
        .members
        .iter()
        .find(|m| m.points >= 100 && !m.segments.is_empty())
        .expect("a member with points and a segment");
    let all_segments: Vec<&String> = snapshot.members.iter().flat_map(|m| &m.segments).collect();
    let other = all_segments
        .iter()
        .find(|s| !member.segments.contains(s))
        .expect("a segment the member is not in");
    let coupon = snapshot
        .members
        .iter()
        .flat_map(|m| &m.coupons)
        .find_map(|c| c.get("id").and_then(Value::as_str))
        .expect("some coupon id");
    (
        member.id.clone(),
        member.segments[0].clone(),
        other.to_string(),
        coupon.to_string(),
    )
}

#[tokio::test]
async fn every_action_is_applied_by_trifft_once() {
    let sb = sandbox().await;
    let deps = deps(
        &sb.trifft_url(),
        TRIFFT_TOKEN,
        Arc::new(MemoryStateStore::new()),
        &[],
    );
    let before = sb.trifft();
    let (member, in_segment, new_segment, coupon) = pick(&before);
    let start = before.member(&member).unwrap().clone();

    let bodies = [
        json!({"action": "credit_points", "member": {"trifft_id": member}, "points": "50", "reason": "Birthday"}),
        json!({"action": "debit_points", "member": {"trifft_id": member}, "points": 20}),
        json!({"action": "assign_coupon", "member": {"trifft_id": member}, "coupon_id": coupon}),
        json!({"action": "add_to_segment", "member": {"trifft_id": member}, "segment": new_segment}),
        json!({"action": "remove_from_segment", "member": {"trifft_id": member}, "segment": in_segment}),
    ];
    for body in &bodies {
        let answer = call(&deps, request(body)).await;
        assert_eq!(answer.status, 202, "{body}: {}", answer.body);
        assert_eq!(answer.body["items"], 1);
    }
    // Each delivered again: a duplicate, nothing sent.
    for body in &bodies {
        let answer = call(&deps, request(body)).await;
        assert_eq!(
            (answer.status, answer.body["status"].as_str()),
            (200, Some("duplicate")),
            "{body}"
        );
    }

    let after = sb.trifft();
    let sent = &after.batches[before.batches.len()..];
    assert_eq!(
        sent.len(),
        5,
        "one batch per request, none for the duplicates"
    );
    for batch in sent {
        assert_eq!(batch.len(), 1);
        assert_eq!(
            batch[0]["payload"]["source"], "trifft-klaviyo-bridge",
            "origin marker on every item"
        );
    }
    let new_outcomes: Vec<_> = after
        .outcomes
        .iter()
        .filter(|o| o.batch >= before.batches.len())
        .collect();
    assert_eq!(new_outcomes.len(), 5);
    assert!(new_outcomes.iter().all(|o| o.applied), "{new_outcomes:?}");

    let end = after.member(&member).unwrap();
    assert_eq!(end.points, start.points + 50 - 20);
    assert!(end.segments.contains(&new_segment));
    assert!(!end.segments.contains(&in_segment));
    assert_eq!(end.coupons.len(), start.coupons.len() + 1);
    sb.stop().await;
}

#[tokio::test]
async fn a_list_of_actions_is_one_batch() {
    let sb = sandbox().await;
    let deps = deps(
        &sb.trifft_url(),
        TRIFFT_TOKEN,
        Arc::new(MemoryStateStore::new()),
        &[],
    );
    let before = sb.trifft();
    let (member, in_segment, new_segment, coupon) = pick(&before);
    let body = json!({"idempotency_key": "vip-upgrade-1", "actions": [
        {"action": "credit_points", "member": {"trifft_id": member}, "points": 500, "reason": "VIP"},
        {"action": "assign_coupon", "member": {"trifft_id": member}, "coupon_id": coupon},
        {"action": "add_to_segment", "member": {"trifft_id": member}, "segment": new_segment},
        {"action": "remove_from_segment", "member": {"trifft_id": member}, "segment": in_segment},
    ]});
    let answer = call(&deps, request(&body)).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        (
            answer.body["items"].as_u64(),
            answer.body["idempotency_key"].as_str()
        ),
        (Some(4), Some("vip-upgrade-1"))
    );
    let after = sb.trifft();
    assert_eq!(after.batches.len(), before.batches.len() + 1);
    let batch = after.batches.last().unwrap();
    let methods: Vec<&str> = batch
        .iter()
        .map(|i| i["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["POST", "POST", "POST", "DELETE"]);
    assert_eq!(
        batch[3]["uri"],
        format!("/v1/segment/{in_segment}/member/{member}")
    );
    sb.stop().await;
}

#[tokio::test]
async fn bad_input_and_bad_secret_never_reach_trifft() {
    let sb = sandbox().await;
    let deps = deps(
        &sb.trifft_url(),
        TRIFFT_TOKEN,
        Arc::new(MemoryStateStore::new()),
        &[("MAX_POINTS_PER_ACTION", "100")],
    );
    let member = sb.trifft().members[0].id.clone();
    let cases = [
        (
            json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 101}),
            422,
            "limit_exceeded",
        ),
        (
            json!({"action": "credit_points", "member": {"trifft_id": "a/../../b"}, "points": 1}),
            422,
            "invalid_value",
        ),
        (
            json!({"action": "credit_points", "member": {"trifft_id": "{{ person.trifft_id }}"}, "points": 1}),
            422,
            "unrendered_template",
        ),
        (
            json!({"action": "credit_points", "points": 1}),
            422,
            "missing_field",
        ),
        (
            json!({"action": "nope", "trifft_id": member}),
            422,
            "unknown_action",
        ),
        (json!([{"action": "credit_points"}]), 400, "invalid_shape"),
    ];
    for (body, status, code) in cases {
        let answer = call(&deps, request(&body)).await;
        assert_eq!(
            (answer.status, answer.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {}",
            answer.body
        );
    }
    let good = json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 1});
    let answer = call(&deps, request_with(&good, &[("x-bridge-secret", "guess")])).await;
    assert_eq!(answer.status, 401);
    let answer = call(&deps, request_with(&good, &[])).await;
    assert_eq!(answer.status, 401);
    assert_eq!(sb.trifft().requests("POST /v1/batch"), 0);
    sb.stop().await;
}

#[tokio::test]
async fn trifft_throttling_answers_503_with_its_lockout_and_releases_the_claim() {
    let sb = sandbox().await;
    let state = Arc::new(MemoryStateStore::new());
    let deps = deps(&sb.trifft_url(), TRIFFT_TOKEN, state.clone(), &[]);
    let member = sb.trifft().members[0].id.clone();
    sb.set_faults(Faults {
        target: FaultTarget::Trifft,
        throttle_rate: 1.0,
        ..Faults::none()
    });
    let body = json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 5, "idempotency_key": "throttled-1"});
    let answer = call(&deps, request(&body)).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    // The 60 s lockout does not fit the 30 s budget: Klaviyo is told to come back after it.
    let wait = answer.retry_after.expect("Retry-After");
    assert!((31..=60).contains(&wait), "Retry-After {wait}");
    assert!(sb.trifft().batches.is_empty());
    let key = "klaviyo-webhook:key:throttled-1";
    assert_eq!(
        state
            .claim(key, Utc::now() + chrono::Duration::seconds(5))
            .await
            .unwrap(),
        Claim::Acquired,
        "released"
    );
    sb.stop().await;
}

#[tokio::test]
async fn trifft_server_errors_and_dropped_connections_answer_503() {
    let sb = sandbox().await;
    let state = Arc::new(MemoryStateStore::new());
    let deps = deps(
        &sb.trifft_url(),
        TRIFFT_TOKEN,
        state.clone(),
        &[("RETRY_AFTER_SECONDS", "45")],
    );
    let member = sb.trifft().members[0].id.clone();
    let body = json!({"action": "add_to_segment", "member": {"trifft_id": member}, "segment": "vip", "idempotency_key": "faulty-1"});
    for faults in [
        Faults {
            target: FaultTarget::Trifft,
            error_rate: 1.0,
            ..Faults::none()
        },
        Faults {
            target: FaultTarget::Trifft,
            drop_rate: 1.0,
            ..Faults::none()
        },
    ] {
        sb.set_faults(faults.clone());
        let answer = call(&deps, request(&body)).await;
        assert_eq!(
            (answer.status, answer.retry_after),
            (503, Some(45)),
            "{faults:?}: {}",
            answer.body
        );
    }
    assert!(sb.trifft().batches.is_empty());
    // Faults gone: the retry Klaviyo sends does the work (the claims were released).
    sb.set_faults(Faults::none());
    let answer = call(&deps, request(&body)).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(sb.trifft().batches.len(), 1);
    sb.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn refused_trifft_token_answers_503_and_logs_an_alarm() {
    let sb = sandbox().await;
    let deps = deps(
        &sb.trifft_url(),
        "revoked-token-value",
        Arc::new(MemoryStateStore::new()),
        &[],
    );
    let member = sb.trifft().members[0].id.clone();
    let logs = support::CapturedLogs::default();
    let guard = logs.install();
    let answer = call(
        &deps,
        request(&json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 5})),
    )
    .await;
    drop(guard);
    assert_eq!(
        answer.status, 503,
        "Klaviyo keeps retrying while an operator fixes the token: {}",
        answer.body
    );
    assert!(answer.retry_after.is_some());
    let text = logs.text();
    let alarm = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["alarm"] == "trifft_auth")
        .unwrap_or_else(|| panic!("no trifft_auth alarm in:\n{text}"));
    assert_eq!(alarm["level"], "ERROR");
    assert_eq!(
        alarm["fields"]["message"],
        "TRIFFT refused the bridge token"
    );
    assert_eq!(alarm["span"]["request_id"], "test-request");
    assert!(
        !text.contains("revoked-token-value") && !text.contains(HOOK_SECRET),
        "no secret in logs"
    );
    sb.stop().await;
}

#[tokio::test]
async fn trifft_validation_errors_answer_422_with_trifft_message() {
    let sb = sandbox().await;
    // A batch path TRIFFT does not know: a 4xx from TRIFFT itself.
    let deps = deps(
        &sb.trifft_url(),
        TRIFFT_TOKEN,
        Arc::new(MemoryStateStore::new()),
        &[("TRIFFT_BATCH_PATH", "/batches")],
    );
    let member = sb.trifft().members[0].id.clone();
    let answer = call(
        &deps,
        request(&json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 5})),
    )
    .await;
    assert_eq!(
        (answer.status, answer.body["error"]["code"].as_str()),
        (422, Some("trifft_rejected")),
        "{}",
        answer.body
    );
    assert!(!answer.body["error"]["message"].as_str().unwrap().is_empty());
    sb.stop().await;
}

#[tokio::test]
async fn every_sample_gets_its_documented_status_in_process() {
    let sb = sandbox().await;
    let deps = deps(
        &sb.trifft_url(),
        TRIFFT_TOKEN,
        Arc::new(MemoryStateStore::new()),
        &[],
    );
    let samples = support::samples();
    assert!(samples.len() >= 20);
    let mut accepted = 0;
    for (name, event, expected) in samples {
        let request = lambda_http::request::from_str(&event.to_string())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let answer = call(&deps, request).await;
        assert_eq!(answer.status, expected, "{name}: {}", answer.body);
        if expected == 202 {
            accepted += 1;
        }
    }
    // One batch per accepted sample; the duplicate and the refused ones sent nothing.
    assert_eq!(sb.trifft().batches.len(), accepted);
    sb.stop().await;
}
