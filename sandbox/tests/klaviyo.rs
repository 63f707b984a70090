//! The Klaviyo emulator over plain HTTP: every documented rule it enforces.

mod common;

use std::time::Duration;

use common::*;
use sandbox::{KlaviyoRates, SandboxConfig};
use serde_json::{Value, json};

fn unlimited() -> SandboxConfig {
    SandboxConfig {
        klaviyo_rates: KlaviyoRates::Unlimited,
        ..small()
    }
}

#[tokio::test]
async fn refuses_missing_or_wrong_key_with_not_authenticated() {
    let sandbox = start(small()).await;
    let url = format!("{}/api/events", sandbox.klaviyo_url());
    let body = event("Wallet credited", "u1", "m-1").to_string();
    for auth in [
        None,
        Some("Klaviyo-API-Key pk_wrong"),
        Some(&format!("Bearer {KEY}") as &str),
    ] {
        let mut request = client()
            .post(&url)
            .header("revision", "2026-07-15")
            .header("Content-Type", JSON_API);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.body(body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        let error = error_of(response).await;
        assert_eq!(error["code"], "not_authenticated");
        for key in [
            "id", "status", "code", "title", "detail", "source", "links", "meta",
        ] {
            assert!(error.get(key).is_some(), "error lacks {key}: {error}");
        }
    }
    assert!(sandbox.klaviyo().events.is_empty());
    assert_eq!(sandbox.klaviyo().rejections.len(), 3);
}

#[tokio::test]
async fn revision_header_must_be_a_well_formed_date() {
    let sandbox = start(small()).await;
    let url = format!("{}/api/events", sandbox.klaviyo_url());
    let send = |revision: Option<&'static str>, uid: &'static str| {
        let mut request = client()
            .post(&url)
            .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
            .header("Content-Type", JSON_API);
        if let Some(r) = revision {
            request = request.header("revision", r);
        }
        request
            .body(event("App opened", uid, "m-1").to_string())
            .send()
    };
    assert_eq!(send(None, "a").await.unwrap().status(), 400);
    for bad in [
        "2026-13-01",
        "2026-7-15",
        "latest",
        "2026-07-15.beta",
        "2026-02-30",
    ] {
        let response = send(Some(bad), "b").await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        assert!(
            error_of(response).await["detail"]
                .as_str()
                .unwrap()
                .contains("revision")
        );
    }
    for good in ["2026-07-15", "2026-10-15", "2026-07-15.pre"] {
        assert_eq!(
            send(Some(good), good).await.unwrap().status(),
            202,
            "{good}"
        );
    }
    assert_eq!(sandbox.klaviyo().events.len(), 3);
}

#[tokio::test]
async fn posts_need_the_json_api_content_type() {
    let sandbox = start(small()).await;
    let response = client()
        .post(format!("{}/api/events", sandbox.klaviyo_url()))
        .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
        .header("revision", "2026-07-15")
        .header("Content-Type", "application/json")
        .body(event("App opened", "u", "m-1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(error_of(response).await["code"], "unsupported_media_type");
    assert!(sandbox.klaviyo().events.is_empty());
}

#[tokio::test]
async fn create_event_stores_the_event_and_the_profile() {
    let sandbox = start(small()).await;
    let mut body = event("Transaction created", "tx-1", "m-1");
    body["data"]["attributes"]["value"] = json!(12.5);
    body["data"]["attributes"]["value_currency"] = json!("EUR");
    body["data"]["attributes"]["profile"]["data"]["attributes"]["properties"] =
        json!({"trifft_tier": "Gold"});
    let response = klaviyo_post(&sandbox, "/api/events", &body).await;
    assert_eq!(response.status(), 202);
    assert!(response.bytes().await.unwrap().is_empty());
    let state = sandbox.klaviyo();
    let event = &state.events[0];
    assert_eq!(event.metric, "Transaction created");
    assert_eq!(event.unique_id.as_deref(), Some("tx-1"));
    assert_eq!(event.value, Some(12.5));
    assert_eq!(event.value_currency.as_deref(), Some("EUR"));
    assert_eq!(event.external_id.as_deref(), Some("m-1"));
    assert!(!event.backfill);
    let profile = state.profile_by_external_id("m-1").unwrap();
    assert_eq!(profile.email.as_deref(), Some("m-1@example.com"));
    assert_eq!(profile.properties["trifft_tier"], "Gold");
}

#[tokio::test]
async fn refuses_undeclared_keys_but_not_custom_properties() {
    let sandbox = start(small()).await;
    let cases = [
        (
            "/data/attributes/profile/data/meta",
            "/data/attributes/profile/data/meta",
        ),
        (
            "/data/attributes/metric/data/attributes/title",
            "/data/attributes/metric/data/attributes/title",
        ),
        (
            "/data/attributes/profile/data/attributes/trifft_points",
            "/data/attributes/profile/data/attributes/trifft_points",
        ),
        ("/data/relationships", "/data/relationships"),
    ];
    for (place, pointer) in cases {
        let mut body = event("App opened", "u", "m-1");
        let (parent, key) = place.rsplit_once('/').unwrap();
        body.pointer_mut(parent).unwrap()[key] = json!({});
        let response = klaviyo_post(&sandbox, "/api/events", &body).await;
        assert_eq!(response.status(), 400, "{place}");
        let error = error_of(response).await;
        assert_eq!(error["code"], "invalid");
        assert_eq!(error["source"]["pointer"], pointer);
    }
    let mut body = event("App opened", "u", "m-1");
    body["data"]["attributes"]["properties"]["$extra"] = json!({"html": "<b>x</b>"});
    assert_eq!(
        klaviyo_post(&sandbox, "/api/events", &body).await.status(),
        202
    );
    assert_eq!(sandbox.klaviyo().rejections.len(), 4);
}

#[tokio::test]
async fn refuses_wrong_types_times_names_and_identities() {
    let sandbox = start(small()).await;
    let edits: Vec<(&str, Value)> = vec![
        ("/data/type", json!("events")),
        ("/data/attributes/metric/data/type", json!("metrics")),
        ("/data/attributes/time", json!("1989-06-01T00:00:00Z")),
        ("/data/attributes/time", json!("2099-01-01T00:00:00Z")),
        (
            "/data/attributes/metric/data/attributes/name",
            json!("m".repeat(128)),
        ),
        (
            "/data/attributes/profile/data/attributes",
            json!({"phone_number": "06 12 34 56 78"}),
        ),
        (
            "/data/attributes/profile/data/attributes",
            json!({"email": "not-an-email"}),
        ),
        (
            "/data/attributes/profile/data/attributes",
            json!({"first_name": "Nobody"}),
        ),
        ("/data/attributes/properties", json!("flat")),
        ("/data/attributes/value", json!("12")),
    ];
    for (pointer, value) in edits {
        let mut body = event("App opened", "u", "m-1");
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        body.pointer_mut(parent).unwrap()[key] = value.clone();
        let response = klaviyo_post(&sandbox, "/api/events", &body).await;
        assert_eq!(response.status(), 400, "{pointer} = {value}");
    }
    let mut body = event("App opened", "u", "m-1");
    let props: serde_json::Map<String, Value> =
        (0..401).map(|i| (format!("p{i}"), json!(i))).collect();
    body["data"]["attributes"]["properties"] = Value::Object(props);
    assert_eq!(
        klaviyo_post(&sandbox, "/api/events", &body).await.status(),
        400
    );
    body["data"]["attributes"]["properties"] = json!({"big": "x".repeat(100 * 1024 + 1)});
    assert_eq!(
        klaviyo_post(&sandbox, "/api/events", &body).await.status(),
        400
    );
    assert!(sandbox.klaviyo().events.is_empty());
}

#[tokio::test]
async fn same_unique_id_for_a_profile_and_metric_is_kept_once() {
    let sandbox = start(small()).await;
    for _ in 0..3 {
        assert_eq!(
            klaviyo_post(
                &sandbox,
                "/api/events",
                &event("Wallet credited", "evt-1", "m-1")
            )
            .await
            .status(),
            202
        );
    }
    // Another metric or another profile with the same unique_id is a different event.
    klaviyo_post(
        &sandbox,
        "/api/events",
        &event("Wallet debited", "evt-1", "m-1"),
    )
    .await;
    klaviyo_post(
        &sandbox,
        "/api/events",
        &event("Wallet credited", "evt-1", "m-2"),
    )
    .await;
    // And the bulk endpoint de-duplicates against earlier requests too.
    let job = bulk_job(vec![bulk_entry(
        "m-1",
        &[
            ("Wallet credited", "evt-1".into()),
            ("Wallet credited", "evt-2".into()),
        ],
    )]);
    assert_eq!(
        klaviyo_post(&sandbox, "/api/event-bulk-create-jobs", &job)
            .await
            .status(),
        202
    );
    let state = sandbox.klaviyo();
    assert_eq!(state.events.len(), 4);
    assert_eq!(state.duplicates_dropped, 3);
    assert_eq!(state.events_named("Wallet credited").len(), 3);
}

#[tokio::test]
async fn bulk_events_take_1000_but_not_1001() {
    let sandbox = start(unlimited()).await;
    let entries = |n: usize, offset: usize| -> Vec<Value> {
        (0..n / 10)
            .map(|p| {
                bulk_entry(
                    &format!("m-{p}"),
                    &(0..10)
                        .map(|e| ("Wallet credited", format!("u-{}", offset + p * 10 + e)))
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    };
    let mut too_many = entries(1000, 0);
    too_many.push(bulk_entry("m-x", &[("Wallet credited", "one-more".into())]));
    let response = klaviyo_post(&sandbox, "/api/event-bulk-create-jobs", &bulk_job(too_many)).await;
    assert_eq!(response.status(), 400);
    assert!(
        error_of(response).await["detail"]
            .as_str()
            .unwrap()
            .contains("1001")
    );
    assert!(sandbox.klaviyo().events.is_empty());
    let response = klaviyo_post(
        &sandbox,
        "/api/event-bulk-create-jobs",
        &bulk_job(entries(1000, 0)),
    )
    .await;
    assert_eq!(response.status(), 202);
    let state = sandbox.klaviyo();
    assert_eq!(state.events.len(), 1000);
    assert_eq!(state.profiles.len(), 100);
    assert!(
        state
            .events
            .iter()
            .all(|e| e.endpoint == "/api/event-bulk-create-jobs")
    );
}

#[tokio::test]
async fn bulk_bodies_over_5_mb_are_refused() {
    let sandbox = start(unlimited()).await;
    // 60 events of ~90 KB: 5.4 MB, every string under the 100 KB limit.
    let filler = "x".repeat(90 * 1024);
    let mut entries = vec![];
    for p in 0..60 {
        let mut entry = bulk_entry(&format!("m-{p}"), &[("App opened", format!("u-{p}"))]);
        entry["attributes"]["events"]["data"][0]["attributes"]["properties"] =
            json!({"blob": filler});
        entries.push(entry);
    }
    let body = bulk_job(entries.clone());
    assert!(body.to_string().len() > 5 * 1024 * 1024);
    let response = klaviyo_post(&sandbox, "/api/event-bulk-create-jobs", &body).await;
    assert_eq!(response.status(), 413);
    assert!(sandbox.klaviyo().events.is_empty());
    entries.truncate(50);
    let body = bulk_job(entries);
    assert!(body.to_string().len() < 5 * 1024 * 1024);
    assert_eq!(
        klaviyo_post(&sandbox, "/api/event-bulk-create-jobs", &body)
            .await
            .status(),
        202
    );
    assert_eq!(sandbox.klaviyo().events.len(), 50);
}

#[tokio::test]
async fn a_repeated_unique_id_inside_one_bulk_job_fails_the_whole_request() {
    let sandbox = start(small()).await;
    let job = bulk_job(vec![
        bulk_entry("m-1", &[("Coupon assigned", "c-1".into())]),
        bulk_entry("m-2", &[("Coupon assigned", "c-1".into())]),
        bulk_entry(
            "m-1",
            &[
                ("Coupon assigned", "c-2".into()),
                ("Coupon assigned", "c-1".into()),
            ],
        ),
    ]);
    let response = klaviyo_post(&sandbox, "/api/event-bulk-create-jobs", &job).await;
    assert_eq!(response.status(), 400);
    let error = error_of(response).await;
    assert_eq!(
        error["source"]["pointer"],
        "/data/attributes/events-bulk-create/data/2/attributes/events/data/1/attributes/unique_id"
    );
    let state = sandbox.klaviyo();
    assert!(state.events.is_empty(), "nothing is stored");
    assert!(state.profiles.is_empty());
}

#[tokio::test]
async fn bulk_events_refuse_a_profile_inside_an_event_and_meta_inside_attributes() {
    let sandbox = start(small()).await;
    let mut entry = bulk_entry("m-1", &[("App opened", "u".into())]);
    entry["attributes"]["events"]["data"][0]["attributes"]["profile"] = json!({"data": {}});
    assert_eq!(
        klaviyo_post(
            &sandbox,
            "/api/event-bulk-create-jobs",
            &bulk_job(vec![entry])
        )
        .await
        .status(),
        400
    );
    let mut entry = bulk_entry("m-1", &[("App opened", "u".into())]);
    entry["attributes"]["profile"]["data"]["attributes"]["meta"] = json!({});
    assert_eq!(
        klaviyo_post(
            &sandbox,
            "/api/event-bulk-create-jobs",
            &bulk_job(vec![entry])
        )
        .await
        .status(),
        400
    );
    let mut entry = bulk_entry("m-1", &[("App opened", "u".into())]);
    entry["attributes"]["profile"]["data"]["meta"] =
        json!({"patch_properties": {"unset": ["old"]}});
    entry["attributes"]["backfill"] = json!(true);
    assert_eq!(
        klaviyo_post(
            &sandbox,
            "/api/event-bulk-create-jobs",
            &bulk_job(vec![entry])
        )
        .await
        .status(),
        202
    );
    assert!(sandbox.klaviyo().events[0].backfill);
}

#[tokio::test]
async fn profile_import_creates_then_updates_and_merges_properties() {
    let sandbox = start(small()).await;
    let mut body = profile("m-7");
    body["data"]["attributes"]["email"] = json!("ann@example.com");
    body["data"]["attributes"]["first_name"] = json!("Ann");
    body["data"]["attributes"]["properties"] =
        json!({"trifft_points": 10, "trifft_tier": "Bronze"});
    let response = klaviyo_post(&sandbox, "/api/profile-import", &body).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["data"]["type"], "profile");
    // Matched by email this time; later values win, others stay.
    let update = json!({"data": {"type": "profile", "attributes": {"email": "ann@example.com", "phone_number": "+33612345678", "properties": {"trifft_points": 25}}}});
    let response = klaviyo_post(&sandbox, "/api/profile-import", &update).await;
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["data"]["id"], id.as_str());
    let state = sandbox.klaviyo();
    assert_eq!(state.profiles.len(), 1);
    let p = state.profile_by_phone("+33612345678").unwrap();
    assert_eq!(p.external_id.as_deref(), Some("m-7"));
    assert_eq!(p.properties["trifft_points"], 25);
    assert_eq!(p.properties["trifft_tier"], "Bronze");
    assert_eq!(p.attributes["first_name"], "Ann");
    // anonymous_id is not part of ProfileUpsertQuery; 100 KB is the body limit.
    let mut bad = profile("m-8");
    bad["data"]["attributes"]["anonymous_id"] = json!("a");
    assert_eq!(
        klaviyo_post(&sandbox, "/api/profile-import", &bad)
            .await
            .status(),
        400
    );
    let mut big = profile("m-9");
    big["data"]["attributes"]["properties"] = json!({"blob": "x".repeat(100 * 1024)});
    assert_eq!(
        klaviyo_post(&sandbox, "/api/profile-import", &big)
            .await
            .status(),
        413
    );
}

fn profile_job(profiles: Vec<Value>) -> Value {
    json!({"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": profiles}}}})
}

#[tokio::test]
async fn bulk_profile_job_goes_queued_processing_complete_with_import_errors() {
    let config = SandboxConfig {
        import_job_processing: Duration::from_millis(400),
        ..small()
    };
    let sandbox = start(config).await;
    let mut profiles: Vec<Value> = (0..260)
        .map(|i| profile(&format!("m-{i}"))["data"].clone())
        .collect();
    // 130 individually invalid profiles: bad email, non-E.164 phone, no identifier.
    for i in 0..130 {
        profiles[i * 2]["attributes"] = match i % 3 {
            0 => json!({"email": format!("broken{i}.example.com")}),
            1 => {
                json!({"phone_number": format!("06{i:08}"), "external_id": format!("m-{}", i * 2)})
            }
            _ => json!({"first_name": "Nobody"}),
        };
    }
    let response = klaviyo_post(
        &sandbox,
        "/api/profile-bulk-import-jobs",
        &profile_job(profiles),
    )
    .await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let id = job["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(job["data"]["type"], "profile-bulk-import-job");
    assert_eq!(job["data"]["attributes"]["status"], "queued");
    assert_eq!(job["data"]["attributes"]["total_count"], 260);
    assert!(
        sandbox.klaviyo().profiles.is_empty(),
        "nothing applied while queued"
    );

    let mut statuses = vec![];
    let final_job = loop {
        let response = klaviyo_get(&sandbox, &format!("/api/profile-bulk-import-jobs/{id}")).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("ratelimit-remaining"));
        let job: Value = response.json().await.unwrap();
        let status = job["data"]["attributes"]["status"]
            .as_str()
            .unwrap()
            .to_string();
        if statuses.last() != Some(&status) {
            statuses.push(status.clone());
        }
        if status == "complete" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(statuses, ["queued", "processing", "complete"]);
    assert_eq!(final_job["data"]["attributes"]["completed_count"], 130);
    assert_eq!(final_job["data"]["attributes"]["failed_count"], 130);
    assert_eq!(sandbox.klaviyo().profiles.len(), 130);

    // Import errors, 100 a page, following links.next.
    let mut url = format!("/api/profile-bulk-import-jobs/{id}/import-errors");
    let mut errors = vec![];
    let mut pages = 0;
    loop {
        let page: Value = klaviyo_get(&sandbox, &url).await.json().await.unwrap();
        pages += 1;
        errors.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["links"]["next"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!((pages, errors.len()), (2, 130));
    let first = &errors[0]["attributes"];
    assert_eq!(first["code"], "invalid");
    assert_eq!(
        first["source"]["pointer"],
        "/data/attributes/profiles/data/0/attributes/email"
    );
    assert_eq!(
        first["original_payload"]["attributes"]["email"],
        "broken0.example.com"
    );
    for e in &errors {
        for key in ["code", "title", "detail", "source", "original_payload"] {
            assert!(e["attributes"].get(key).is_some(), "{key} in {e}");
        }
    }
    let missing = klaviyo_get(&sandbox, "/api/profile-bulk-import-jobs/NOPE").await;
    assert_eq!(missing.status(), 404);
    let bad_cursor = klaviyo_get(
        &sandbox,
        &format!("/api/profile-bulk-import-jobs/{id}/import-errors?page[cursor]=zzz"),
    )
    .await;
    assert_eq!(bad_cursor.status(), 400);
}

#[tokio::test]
async fn bulk_profile_job_refuses_more_than_10000_profiles() {
    let sandbox = start(small()).await;
    let profiles: Vec<Value> = (0..10_001)
        .map(|i| profile(&format!("m-{i}"))["data"].clone())
        .collect();
    let response = klaviyo_post(
        &sandbox,
        "/api/profile-bulk-import-jobs",
        &profile_job(profiles),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(sandbox.klaviyo().bulk_jobs.is_empty());
}

#[tokio::test]
async fn real_tiers_answer_429_with_retry_after_and_ratelimit_headers() {
    let sandbox = start(small()).await;
    let url = format!("{}/api/event-bulk-create-jobs", sandbox.klaviyo_url());
    // 25 at once: at most 20 fit in the burst windows they can span (10 per second).
    let tasks: Vec<_> = (0..25)
        .map(|n| {
            let body = bulk_job(vec![bulk_entry(
                &format!("m-{n}"),
                &[("App opened", format!("u-{n}"))],
            )]);
            tokio::spawn(post_to(url.clone(), body))
        })
        .collect();
    let mut accepted = 0;
    let mut throttles = vec![];
    for task in tasks {
        let response = task.await.unwrap();
        match response.status().as_u16() {
            202 => {
                accepted += 1;
                assert_eq!(response.headers()["ratelimit-limit"], "150");
                assert!(response.headers().contains_key("ratelimit-remaining"));
                assert!(response.headers().contains_key("ratelimit-reset"));
            }
            429 => {
                assert!(!response.headers().contains_key("ratelimit-limit"));
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                throttles.push((retry_after, error_of(response).await));
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted + throttles.len(), 25);
    assert!(throttles.len() >= 5, "{accepted} accepted");
    for (retry_after, error) in &throttles {
        assert_eq!(*retry_after, 1);
        assert_eq!(error["code"], "throttled");
        assert_eq!(
            error["detail"],
            "Request was throttled. Expected available in 1 second."
        );
    }
    let state = sandbox.klaviyo();
    assert_eq!(state.throttled, throttles.len() as u64);
    assert_eq!(state.events.len(), accepted);
    // After Retry-After the endpoint answers again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = bulk_job(vec![bulk_entry("m-late", &[("App opened", "late".into())])]);
    assert_eq!(post_to(url, body).await.status(), 202);
}

async fn post_to(url: String, body: Value) -> reqwest::Response {
    client()
        .post(url)
        .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
        .header("revision", "2026-07-15")
        .header("Content-Type", JSON_API)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_in_json_api() {
    let sandbox = start(small()).await;
    let response = klaviyo_post(&sandbox, "/api/nope", &json!({})).await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await["code"], "not_found");
    let response = klaviyo_get(&sandbox, "/api/events").await;
    assert_eq!(response.status(), 405);
    assert_eq!(error_of(response).await["status"], 405);
}

#[tokio::test]
async fn records_writes_with_lowercase_headers_and_redacted_key() {
    let dir = std::env::temp_dir().join(format!("sandbox-record-{}", std::process::id()));
    let sandbox = start(SandboxConfig {
        record_dir: Some(dir.clone()),
        ..small()
    })
    .await;
    klaviyo_post(&sandbox, "/api/events", &event("App opened", "u-1", "m-1")).await;
    klaviyo_get(&sandbox, "/api/profile-bulk-import-jobs/X").await;
    let writes = sandbox.recorded_klaviyo_writes();
    assert_eq!(writes.len(), 1);
    let w = &writes[0];
    assert_eq!(w["method"], "POST");
    assert_eq!(w["path"], "/api/events");
    assert_eq!(w["headers"]["revision"], "2026-07-15");
    assert_eq!(w["headers"]["content-type"], JSON_API);
    let auth = w["headers"]["authorization"].as_str().unwrap();
    assert!(
        auth.starts_with("Klaviyo-API-Key ") && !auth.contains(KEY),
        "{auth}"
    );
    assert_eq!(w["body"], event("App opened", "u-1", "m-1"));
    let file = std::fs::read_to_string(dir.join("klaviyo-writes.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(file.lines().next().unwrap()).unwrap(),
        *w
    );
    let reads = std::fs::read_to_string(dir.join("klaviyo-reads.jsonl")).unwrap();
    assert_eq!(reads.lines().count(), 1);
    sandbox.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
