//! The DynamoDB state store through the real AWS SDK against moto, running the same
//! cases as the in-memory store's unit tests (`loyalty_bridge::state::conformance`).

use std::sync::Arc;
use std::time::Duration;

use e2e_tests::moto;
use loyalty_bridge::Error;
use loyalty_bridge::state::{self, Claim, DynamoDbStateStore, StateStore, conformance};

async fn store() -> Arc<dyn StateStore> {
    let table = moto::unique_name("bridge-state");
    moto::create_table(&table).await;
    Arc::new(DynamoDbStateStore::new(moto::dynamodb().await, table))
}

#[tokio::test]
async fn claim_then_duplicate_is_in_progress() {
    conformance::claim_then_duplicate_is_in_progress(store().await.as_ref(), "t").await;
}

#[tokio::test]
async fn completed_key_reports_its_outcome() {
    conformance::completed_key_reports_its_outcome(store().await.as_ref(), "t").await;
}

#[tokio::test]
async fn expired_in_progress_claim_is_reclaimed() {
    conformance::expired_in_progress_claim_is_reclaimed(store().await.as_ref(), "t").await;
}

#[tokio::test]
async fn release_lets_a_retry_claim() {
    conformance::release_lets_a_retry_claim(store().await.as_ref(), "t").await;
}

#[tokio::test]
async fn complete_without_claim_is_a_conflict() {
    conformance::complete_without_claim_is_a_conflict(store().await.as_ref(), "t").await;
}

#[tokio::test]
async fn long_and_odd_keys_are_distinct() {
    conformance::long_and_odd_keys_are_distinct(store().await.as_ref(), "t").await;
}

#[tokio::test]
async fn checkpoint_moves_only_from_the_expected_version() {
    conformance::checkpoint_moves_only_from_the_expected_version(store().await.as_ref(), "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_acquire_once() {
    conformance::concurrent_claims_acquire_once(store().await, "t").await;
}

#[tokio::test]
async fn records_past_their_ttl_are_reclaimed() {
    let table = moto::unique_name("bridge-state");
    moto::create_table(&table).await;
    let store =
        DynamoDbStateStore::new(moto::dynamodb().await, table).with_idempotency_ttl(Duration::ZERO);
    conformance::records_past_their_ttl_are_reclaimed(&store, "t").await;
}

#[tokio::test]
async fn two_stores_on_one_table_claim_once_and_keep_their_claims_apart() {
    let table = moto::unique_name("bridge-state");
    moto::create_table(&table).await;
    let first = DynamoDbStateStore::new(moto::dynamodb().await, table.clone());
    let second = DynamoDbStateStore::new(moto::dynamodb().await, table);
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let soon = chrono::Utc::now() + chrono::Duration::minutes(5);
    // The first delivery's claim lapses; a redelivery (another container) takes it over.
    assert_eq!(first.claim("k", past).await.unwrap(), Claim::Acquired);
    assert_eq!(second.claim("k", soon).await.unwrap(), Claim::Acquired);
    // The late first delivery can neither complete nor release the second one's claim.
    assert!(matches!(
        first.complete("k", "late").await,
        Err(Error::Conflict(_))
    ));
    first.release("k").await.unwrap();
    assert_eq!(first.claim("k", soon).await.unwrap(), Claim::InProgress);
    second.complete("k", "done").await.unwrap();
    assert_eq!(
        first.claim("k", soon).await.unwrap(),
        Claim::Completed {
            outcome: "done".into()
        }
    );
}

#[tokio::test]
async fn from_sdk_config_uses_the_table_and_a_missing_table_names_the_variable() {
    let table = moto::unique_name("bridge-state");
    moto::create_table(&table).await;
    let config = moto::sdk_config().await;
    let store = state::from_sdk_config(&[("STATE_TABLE_NAME", table.as_str())], &config).unwrap();
    assert_eq!(
        store
            .save_checkpoint("sync", &serde_json::json!({"a": 1}), None)
            .await
            .unwrap(),
        1
    );

    let missing =
        state::from_sdk_config(&[("STATE_TABLE_NAME", "no-such-table")], &config).unwrap();
    let e = missing.load_checkpoint("sync").await.unwrap_err();
    assert!(
        e.to_string().contains("STATE_TABLE_NAME") && e.to_string().contains("no-such-table"),
        "{e}"
    );
}
