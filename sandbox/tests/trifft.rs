//! The TRIFFT emulator over plain HTTP: auth, rate limit and lockout, Batch API, feeds.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use sandbox::SandboxConfig;
use serde_json::{Value, json};

async fn page(sandbox: &sandbox::Sandbox, path: &str) -> Value {
    let response = trifft_get(sandbox, path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn needs_the_bearer_token_and_answers_trifft_error_bodies() {
    let sandbox = start(small()).await;
    for auth in [None, Some("Bearer wrong"), Some("trifft_sandbox_token")] {
        let mut request = client().get(format!("{}/members/changes", sandbox.trifft_url()));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["status"], 401);
        for key in ["code", "message", "exception", "event_id"] {
            assert!(body["error"].get(key).is_some(), "{key}");
        }
    }
    let response = trifft_get(&sandbox, "/nowhere").await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn over_the_limit_every_request_is_locked_out_without_retry_after() {
    let config = SandboxConfig {
        trifft_rate: (5, Duration::from_secs(10)),
        trifft_lockout: Duration::from_millis(800),
        ..small()
    };
    let sandbox = start(config).await;
    for _ in 0..5 {
        assert_eq!(
            trifft_get(&sandbox, "/members/changes?limit=1")
                .await
                .status(),
            200
        );
    }
    let response = trifft_get(&sandbox, "/members/changes?limit=1").await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["exception"], "RateLimitExceededException");
    assert_eq!(body["error"]["code"], 429);
    // Every endpoint, even with a bad token, is blocked during the lockout.
    assert_eq!(trifft_batch(&sandbox, &json!([])).await.status(), 429);
    let bad = client()
        .get(format!("{}/activity/events", sandbox.trifft_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 429);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        trifft_get(&sandbox, "/activity/events?limit=1")
            .await
            .status(),
        200
    );
    let state = sandbox.trifft();
    assert_eq!(state.lockouts, 1);
    assert_eq!(state.throttled, 3);
}

#[tokio::test]
async fn batch_validation_names_the_item_and_applies_nothing() {
    let sandbox = start(small()).await;
    let member = sandbox
        .trifft()
        .members
        .iter()
        .find(|m| !m.id.is_empty())
        .unwrap()
        .id
        .clone();
    let good = json!({"uri": format!("/v1/member/{member}/wallet/credit"), "method": "POST", "payload": {"points": 5}});
    let too_many: Vec<Value> = (0..501).map(|_| good.clone()).collect();
    let cases = vec![
        (json!({"uri": "/v1/x"}), "array"),
        (json!([]), "at least one"),
        (Value::Array(too_many), "500"),
        (json!([good, {"uri": "/v1/x", "method": "PUT"}]), "Item 1"),
        (json!([good, good, {"method": "POST"}]), "Item 2"),
        (
            json!([{"uri": "/v1/x", "method": "POST", "body": {}}]),
            "Item 0",
        ),
        (json!([{"uri": "v1/x", "method": "POST"}]), "Item 0"),
        (
            json!([{"uri": "/v1/x", "method": "POST", "payload": "points=5"}]),
            "Item 0",
        ),
    ];
    for (body, expected) in cases {
        let response = trifft_batch(&sandbox, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{message} should name {expected}"
        );
        assert_eq!(error["error"]["exception"], "ValidationException");
    }
    let state = sandbox.trifft();
    assert!(state.batches.is_empty() && state.outcomes.is_empty());
    assert_eq!(
        state.member(&member).unwrap().points,
        sandbox.trifft().member(&member).unwrap().points
    );
}

#[tokio::test]
async fn batch_items_are_applied_or_fail_with_a_reason() {
    let sandbox = start(small()).await;
    let before = sandbox.trifft();
    let member = before
        .members
        .iter()
        .find(|m| !m.id.is_empty() && !m.segments.contains(&"vip".to_string()))
        .unwrap()
        .clone();
    let coupon = before
        .events
        .iter()
        .find(|e| e.kind == "coupon_assigned")
        .map(|e| e.payload["coupon"]["id"].as_str().unwrap().to_string())
        .unwrap();
    let id = member.id.clone();
    let items = json!([
        {"uri": format!("/v1/member/{id}/wallet/credit"), "method": "POST", "payload": {"points": 50, "reason": "Flow bonus"}},
        {"uri": format!("/v1/member/{id}/wallet/debit"), "method": "POST", "payload": {"points": 20, "reason": "Reward"}},
        {"uri": format!("/v1/member/{id}/wallet/debit"), "method": "POST", "payload": {"points": member.points + 1000}},
        {"uri": format!("/v1/member/{id}/coupon/{coupon}"), "method": "POST", "payload": {"reason": "Winback"}},
        {"uri": format!("/v1/segment/vip/member/{id}"), "method": "POST"},
        {"uri": format!("/v1/segment/vip/member/{id}"), "method": "DELETE"},
        {"uri": "/v1/member/00000000-0000-4000-8000-000000000000/wallet/credit", "method": "POST", "payload": {"points": 5}},
        {"uri": format!("/v1/member/{id}/teleport"), "method": "POST"},
        {"uri": format!("/v1/member/{id}/wallet/credit"), "method": "POST", "payload": {"points": -5}},
        {"uri": format!("/v1/segment/no-such-segment/member/{id}"), "method": "POST"},
    ]);
    let response = trifft_batch(&sandbox, &items).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);

    let after = sandbox.trifft();
    assert_eq!(after.batches.len(), 1);
    assert_eq!(after.batches[0].len(), 10);
    let applied: Vec<bool> = after.outcomes.iter().map(|o| o.applied).collect();
    assert_eq!(
        applied,
        [
            true, true, false, true, true, true, false, false, false, false
        ]
    );
    let reasons: Vec<&str> = after
        .failed()
        .iter()
        .map(|o| o.reason.as_deref().unwrap())
        .collect();
    assert!(reasons[0].contains("insufficient points"), "{reasons:?}");
    assert!(reasons[1].contains("unknown member"));
    assert!(reasons[2].contains("unknown uri"));
    assert!(reasons[3].contains("positive integer"));
    assert!(reasons[4].contains("unknown segment"));

    let changed = after.member(&id).unwrap();
    assert_eq!(changed.points, member.points + 30);
    assert_eq!(changed.coupons.len(), member.coupons.len() + 1);
    assert!(!changed.segments.contains(&"vip".to_string()));
    assert!(changed.updated_at >= member.updated_at);
    // The member moved to the end of the change feed, and five events were appended.
    assert_eq!(after.members.last().unwrap().id, id);
    let new_events: Vec<&str> = after.events[before.events.len()..]
        .iter()
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        new_events,
        [
            "wallet_credited",
            "wallet_debited",
            "coupon_assigned",
            "added_to_segment",
            "removed_from_segment"
        ]
    );
    assert!(
        after.events[before.events.len()..]
            .iter()
            .all(|e| e.member_id == id)
    );
    assert_eq!(after.events[before.events.len()].payload["change"], 50);
}

#[tokio::test]
async fn activity_feed_pages_with_cursors_and_since() {
    let sandbox = start(small()).await;
    let all = sandbox.trifft().events;
    assert_eq!(all.len(), 200);
    let mut seen = vec![];
    let mut url = "/activity/events?limit=64".to_string();
    let mut last_cursor;
    loop {
        let p = page(&sandbox, &url).await;
        seen.extend(
            p["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        last_cursor = p["next_cursor"].as_str().unwrap().to_string();
        if p["has_more"] == false {
            break;
        }
        url = format!("/activity/events?limit=64&cursor={last_cursor}");
    }
    let ids: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    assert_eq!(seen, ids);
    // The final cursor stays valid: new events show up behind it.
    sandbox.append_events(3, 9);
    let p = page(&sandbox, &format!("/activity/events?cursor={last_cursor}")).await;
    assert_eq!(p["data"].as_array().unwrap().len(), 3);
    assert_eq!(p["has_more"], false);
    // since: events at or after the time.
    let middle = &all[100];
    let since = middle
        .occurred_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let p = page(
        &sandbox,
        &format!("/activity/events?limit=1000&since={since}"),
    )
    .await;
    let expected = all
        .iter()
        .filter(|e| e.occurred_at >= middle.occurred_at)
        .count()
        + 3;
    assert_eq!(p["data"].as_array().unwrap().len(), expected);
    let event = &p["data"][0];
    for key in ["id", "type", "member_id", "occurred_at", "payload"] {
        assert!(event.get(key).is_some(), "{key}");
    }
}

#[tokio::test]
async fn members_feed_lists_each_changed_member_once_at_its_latest_change() {
    let sandbox = start(small()).await;
    let mut ids = vec![];
    let mut url = "/members/changes?limit=20".to_string();
    let cursor = loop {
        let p = page(&sandbox, &url).await;
        ids.extend(
            p["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string()),
        );
        let cursor = p["next_cursor"].as_str().unwrap().to_string();
        if p["has_more"] == false {
            break cursor;
        }
        url = format!("/members/changes?limit=20&cursor={cursor}");
    };
    assert_eq!(ids.len(), 50);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 50);
    let member = page(&sandbox, "/members/changes?limit=1").await["data"][0].clone();
    for key in [
        "id",
        "email",
        "phone",
        "locale",
        "points",
        "tier",
        "available_coupons",
        "coupons",
        "fav_location",
        "primary_card_id",
        "segments",
        "support_id",
        "params",
        "updated_at",
    ] {
        assert!(member.get(key).is_some(), "{key}");
    }
    for key in ["first_name", "last_name", "birth_date"] {
        assert!(member["params"].get(key).is_some(), "{key}");
    }
    // Change 7 members (twice for some): each appears once after the checkpoint.
    sandbox.change_members(7, 1);
    sandbox.change_members(7, 1);
    let p = page(
        &sandbox,
        &format!("/members/changes?limit=1000&cursor={cursor}"),
    )
    .await;
    let changed: Vec<&str> = p["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(changed.len(), 7);
    assert_eq!(changed.iter().collect::<HashSet<_>>().len(), 7);
    let events_after = sandbox.trifft().events.len();
    assert_eq!(events_after, 200 + 14);
}

#[tokio::test]
async fn feed_parameters_are_checked() {
    let sandbox = start(small()).await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "since=yesterday",
        "cursor=bogus",
        "cursor=m1&since=2026-01-01T00:00:00Z",
        "page=2",
    ] {
        for feed in ["/members/changes", "/activity/events"] {
            let response = trifft_get(&sandbox, &format!("{feed}?{query}")).await;
            assert_eq!(response.status(), 400, "{feed}?{query}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["success"], false);
        }
    }
    // An activity cursor is not a members cursor.
    let cursor = page(&sandbox, "/activity/events?limit=1").await["next_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        trifft_get(&sandbox, &format!("/members/changes?cursor={cursor}"))
            .await
            .status(),
        400
    );
    let p = page(&sandbox, "/members/changes").await;
    assert_eq!(p["data"].as_array().unwrap().len(), 50);
    let p = page(&sandbox, "/activity/events").await;
    assert_eq!(p["data"].as_array().unwrap().len(), 100);
    assert_eq!(p["has_more"], true);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_data() {
    let config = || SandboxConfig {
        seed: 42,
        members: 300,
        events: 900,
        ..SandboxConfig::default()
    };
    let a = start(config()).await;
    let b = start(config()).await;
    let c = start(SandboxConfig {
        seed: 43,
        ..config()
    })
    .await;
    assert_eq!(a.trifft().members, b.trifft().members);
    assert_eq!(a.trifft().events, b.trifft().events);
    assert_ne!(a.trifft().events, c.trifft().events);
    a.change_members(10, 5);
    b.change_members(10, 5);
    let ids = |s: &sandbox::Sandbox| {
        s.trifft()
            .members
            .iter()
            .rev()
            .take(10)
            .map(|m| (m.id.clone(), m.points, m.segments.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    let state = a.trifft();
    let types: HashSet<&str> = state.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(types.len(), 15, "{types:?}");
    let now = chrono::Utc::now();
    assert!(
        state
            .events
            .iter()
            .all(|e| e.occurred_at <= now && e.occurred_at > now - chrono::Duration::days(91))
    );
    assert!(
        state
            .members
            .iter()
            .any(|m| m.id.is_empty() && m.email.is_none() && m.phone.is_none()),
        "one member with no identifier"
    );
    assert!(
        state
            .members
            .iter()
            .any(|m| m.phone.as_deref().is_some_and(|p| !p.starts_with('+')))
    );
    assert!(
        state
            .members
            .iter()
            .all(|m| ["Bronze", "Silver", "Gold", "Platinum"].contains(&m.tier.as_str()))
    );
    let tx = state
        .events
        .iter()
        .find(|e| e.kind == "transaction_created")
        .unwrap();
    assert!(tx.payload["venue"]["currency"].is_string());
    assert!(
        tx.payload["items"][0]["price"].is_number() && tx.payload["items"][0]["qty"].is_number()
    );
}
