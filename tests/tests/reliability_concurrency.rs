//! 50 concurrent deliveries of one Klaviyo webhook -> exactly one TRIFFT batch, with the
//! idempotency claim going through the real AWS SDK to moto's DynamoDB (MOTO_ENDPOINT,
//! exported by scripts/test).

use std::sync::Arc;
use std::time::Duration;

use e2e_tests::moto;
use e2e_tests::reliability::{call_webhook, small_sandbox, webhook_deps, webhook_request};
use loyalty_bridge::state::{DynamoDbStateStore, StateStore};
use sandbox::Faults;
use serde_json::json;

const DELIVERIES: usize = 50;

async fn dynamodb_state() -> Arc<dyn StateStore> {
    let table = moto::unique_name("reliability-state");
    moto::create_table(&table).await;
    Arc::new(DynamoDbStateStore::new(moto::dynamodb().await, table))
}

async fn fifty_deliveries_of(body: serde_json::Value, member: &str, sb: &sandbox::Sandbox) {
    let deps = Arc::new(webhook_deps(sb, dynamodb_state().await));
    let points_before = sb.trifft().member(member).unwrap().points;
    let batches_before = sb.trifft().batches.len();

    let barrier = Arc::new(tokio::sync::Barrier::new(DELIVERIES));
    let deliveries: Vec<_> = (0..DELIVERIES)
        .map(|_| {
            let (deps, body, barrier) = (deps.clone(), body.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                call_webhook(&deps, webhook_request(&body)).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for d in deliveries {
        let answer = d.await.unwrap();
        if answer.status == 503 {
            assert!(
                answer.retry_after.is_some(),
                "a 503 tells Klaviyo when to retry: {}",
                answer.body
            );
        }
        statuses.push(answer.status);
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 202).count(),
        1,
        "exactly one delivery sends: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 202, 503].contains(s)),
        "{statuses:?}"
    );
    // Klaviyo retries the 503s later: duplicates now, nothing sent.
    let retries = statuses.iter().filter(|&&s| s == 503).count();
    for _ in 0..retries {
        let answer = call_webhook(&deps, webhook_request(&body)).await;
        assert_eq!(
            (answer.status, answer.body["status"].as_str()),
            (200, Some("duplicate")),
            "{}",
            answer.body
        );
    }
    let after = sb.trifft();
    assert_eq!(
        after.batches.len(),
        batches_before + 1,
        "exactly one TRIFFT batch"
    );
    assert_eq!(after.member(member).unwrap().points, points_before + 40);
    eprintln!(
        "concurrency: {DELIVERIES} deliveries -> statuses {statuses:?}, {retries} retried, 1 batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_send_one_batch() {
    let sb = small_sandbox(21, 10, 10, Faults::none()).await;
    let members: Vec<String> = sb.trifft().members.iter().map(|m| m.id.clone()).collect();
    // Keyed by the canonical body hash, then by an explicit idempotency_key.
    let hashed = json!({"action": "credit_points", "member": {"trifft_id": members[0]}, "points": 40, "reason": "concurrent"});
    fifty_deliveries_of(hashed, &members[0], &sb).await;
    // A slow TRIFFT keeps the first delivery in flight while the others arrive (503s).
    sb.set_faults(Faults {
        target: sandbox::FaultTarget::Trifft,
        latency: Some((Duration::from_millis(300), Duration::from_millis(400))),
        ..Faults::none()
    });
    let keyed = json!({"idempotency_key": format!("concurrent-{}", members[1]), "actions": [
        {"action": "credit_points", "member": {"trifft_id": members[1]}, "points": 40, "reason": "concurrent keyed"}
    ]});
    fifty_deliveries_of(keyed, &members[1], &sb).await;
    assert_eq!(sb.trifft().requests("POST /v1/batch"), 2);
    sb.stop().await;
}
