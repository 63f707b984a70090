mod common;
use common::*;
use serde_json::Value;

#[tokio::test]
async fn basics_answer_over_http() {
    let sandbox = start(small()).await;
    let r = klaviyo_post(
        &sandbox,
        "/api/events",
        &event("Wallet credited", "u1", "m-1"),
    )
    .await;
    assert_eq!(r.status(), 202);
    let r = trifft_get(&sandbox, "/members/changes?limit=5").await;
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 5);
    assert_eq!(sandbox.klaviyo().events.len(), 1);
    sandbox.stop().await;
}
