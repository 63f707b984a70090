//! klaviyo-webhook idempotency through the real AWS SDK against moto's DynamoDB, with the
//! TRIFFT emulator behind: duplicates and concurrent deliveries never reach TRIFFT twice.
//! Run by scripts/test (it starts moto and exports MOTO_ENDPOINT).

#[path = "klaviyo_webhook_support.rs"]
mod support;

use std::sync::Arc;

use e2e_tests::moto;
use loyalty_bridge::state::{DynamoDbStateStore, StateStore};
use sandbox::{FaultTarget, Faults, Sandbox, SandboxConfig};
use serde_json::json;

use support::{TRIFFT_TOKEN, call, deps, request};

async fn dynamodb_state() -> Arc<dyn StateStore> {
    let table = moto::unique_name("webhook-state");
    moto::create_table(&table).await;
    Arc::new(DynamoDbStateStore::new(moto::dynamodb().await, table))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_deliveries_send_one_batch() {
    let sb = Sandbox::start(SandboxConfig {
        seed: 3,
        members: 10,
        events: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let deps = Arc::new(deps(
        &sb.trifft_url(),
        TRIFFT_TOKEN,
        dynamodb_state().await,
        &[],
    ));
    let member = sb.trifft().members[0].id.clone();
    let points_before = sb.trifft().member(&member).unwrap().points;
    // No idempotency_key: the canonical body hash is the key.
    let body = json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 40, "reason": "Concurrent"});

    let deliveries: Vec<_> = (0..20)
        .map(|_| {
            let deps = deps.clone();
            let body = body.clone();
            tokio::spawn(async move { call(&deps, request(&body)).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for d in deliveries {
        let answer = d.await.unwrap();
        if answer.status == 503 {
            assert!(
                answer.retry_after.is_some(),
                "an in-flight duplicate tells Klaviyo when to retry"
            );
        }
        statuses.push(answer.status);
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 202, 503].contains(s)),
        "{statuses:?}"
    );

    // Klaviyo retries the 503s later: all duplicates now.
    for _ in 0..3 {
        let answer = call(&deps, request(&body)).await;
        assert_eq!(
            (answer.status, answer.body["status"].as_str()),
            (200, Some("duplicate"))
        );
    }
    let after = sb.trifft();
    assert_eq!(after.batches.len(), 1, "exactly one TRIFFT batch");
    assert_eq!(after.requests("POST /v1/batch"), 1);
    assert_eq!(after.member(&member).unwrap().points, points_before + 40);
    sb.stop().await;
}

#[tokio::test]
async fn a_failed_send_is_released_in_dynamodb_and_the_retry_succeeds_once() {
    let sb = Sandbox::start(SandboxConfig {
        seed: 4,
        members: 10,
        events: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let deps = deps(&sb.trifft_url(), TRIFFT_TOKEN, dynamodb_state().await, &[]);
    let member = sb.trifft().members[0].id.clone();
    let body = json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 5, "idempotency_key": format!("moto-{member}")});

    sb.set_faults(Faults {
        target: FaultTarget::Trifft,
        error_rate: 1.0,
        ..Faults::none()
    });
    assert_eq!(call(&deps, request(&body)).await.status, 503);
    sb.set_faults(Faults::none());
    let answer = call(&deps, request(&body)).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["idempotency_key"], format!("moto-{member}"));
    let answer = call(&deps, request(&body)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body["items"], 1,
        "the outcome recorded in DynamoDB is read back"
    );

    // The same key for a different request is refused, not silently dropped.
    let changed = json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 6, "idempotency_key": format!("moto-{member}")});
    let answer = call(&deps, request(&changed)).await;
    assert_eq!(
        (answer.status, answer.body["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(sb.trifft().batches.len(), 1);
    sb.stop().await;
}
