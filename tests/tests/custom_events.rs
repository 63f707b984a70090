//! custom-events' handler with the real Klaviyo client against the sandbox's Klaviyo
//! emulator: the samples in events/custom-events give their documented results, a
//! re-delivered webhook creates no second event, and Klaviyo faults become answers the
//! sender can act on.
//!
//! Set CUSTOM_EVENTS_RECORD_DIR to keep what the emulator received (klaviyo-writes.jsonl)
//! for `klaviyo-contract-check --strict`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use custom_events::{CustomEventsSettings, Deps, handler, load_mapping};
use e2e_tests::lambda_watch::workspace_root;
use loyalty_bridge::klaviyo::{KlaviyoClient, KlaviyoSettings};
use loyalty_bridge::retry::RetryPolicy;
use loyalty_bridge::secrets::{BridgeSecrets, EnvSecretSource, RotatingSecret, SecretString};
use sandbox::{FaultTarget, Faults, Sandbox, SandboxConfig};
use serde_json::{Value, json};

const KEY: &str = "pk_sandbox_0123456789abcdef";
const SAMPLES: &str = "events/custom-events";

fn samples() -> (BTreeMap<String, Value>, BTreeMap<String, u16>) {
    let dir = workspace_root().join(SAMPLES);
    let expected: BTreeMap<String, u16> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut events = BTreeMap::new();
    for name in expected.keys() {
        let text =
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        events.insert(
            name.clone(),
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}")),
        );
    }
    let on_disk = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some())
        .count();
    assert_eq!(
        on_disk,
        expected.len() + 1,
        "every sample has an expected status in expected.json"
    );
    (events, expected)
}

fn secrets(klaviyo_key: &str) -> Arc<EnvSecretSource> {
    Arc::new(EnvSecretSource::from_secrets(BridgeSecrets {
        klaviyo_private_key: Some(SecretString::new(klaviyo_key)),
        custom_events: Some(RotatingSecret {
            current: SecretString::new("sandbox-custom-secret"),
            // What basic-auth.json sends (user:password), as the rotated-out value.
            previous: Some(SecretString::new("trifft:sandbox-basic-secret")),
        }),
        ..Default::default()
    }))
}

fn deps(sandbox: &Sandbox, klaviyo_key: &str) -> Deps {
    let secrets = secrets(klaviyo_key);
    let settings = KlaviyoSettings {
        base_url: sandbox.klaviyo_url(),
        // Few, short retries: the faults below are permanent, and the test should not wait.
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            ..RetryPolicy::default()
        },
        ..KlaviyoSettings::default()
    };
    Deps {
        klaviyo: Arc::new(KlaviyoClient::new(settings, secrets.clone()).unwrap()),
        secrets,
        mapping: Arc::new(load_mapping(&[("UNSET", "")]).unwrap()),
        settings: CustomEventsSettings::default(),
    }
}

async fn invoke(deps: &Deps, sample: &Value) -> (u16, Value, lambda_http::http::HeaderMap) {
    let request =
        lambda_http::request::from_str(&sample.to_string()).expect("an API Gateway v2 event");
    let response = handler(deps, request)
        .await
        .expect("the handler never fails on input");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        serde_json::from_slice(response.body().as_ref()).unwrap(),
        headers,
    )
}

fn record_dir() -> (PathBuf, bool) {
    match std::env::var("CUSTOM_EVENTS_RECORD_DIR") {
        Ok(dir) if !dir.is_empty() => (PathBuf::from(dir), true),
        _ => (
            std::env::temp_dir().join(format!("custom-events-record-{}", std::process::id())),
            false,
        ),
    }
}

#[tokio::test]
async fn samples_give_their_documented_results_and_redelivery_adds_nothing() {
    let (dir, keep) = record_dir();
    let sandbox = Sandbox::start(SandboxConfig {
        record_dir: Some(dir.clone()),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let deps = deps(&sandbox, KEY);
    let (samples, expected) = samples();

    let mut sent = Vec::new();
    for (name, sample) in &samples {
        let (status, body, _) = invoke(&deps, sample).await;
        assert_eq!(status, expected[name], "{name}: {body}");
        if status == 202 {
            for e in body["events"].as_array().unwrap() {
                sent.push((
                    e["metric"].as_str().unwrap().to_string(),
                    e["unique_id"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    // challenge, streak, contest, basic-auth (streak), klaviyo-body, and the batch of three.
    assert_eq!(sent.len(), 8, "{sent:?}");
    let snapshot = sandbox.klaviyo();
    assert_eq!(snapshot.events.len(), 8, "{:#?}", snapshot.events);
    assert!(snapshot.rejections.is_empty(), "{:?}", snapshot.rejections);
    for (metric, unique_id) in &sent {
        assert!(
            snapshot
                .events
                .iter()
                .any(|e| &e.metric == metric && e.unique_id.as_deref() == Some(unique_id)),
            "{metric} {unique_id} not stored"
        );
    }
    assert_eq!(
        snapshot
            .request_counts
            .get("POST /api/event-bulk-create-jobs"),
        Some(&1),
        "the batch is one bulk job"
    );
    assert_eq!(snapshot.request_counts.get("POST /api/events"), Some(&5));

    // What the mapping made of the challenge sample, as Klaviyo stored it.
    let challenge = snapshot
        .events
        .iter()
        .find(|e| e.unique_id.as_deref() == Some("evt-ch-20260720-0001"))
        .unwrap();
    assert_eq!(challenge.metric, "Challenge completed");
    assert_eq!(
        challenge.external_id.as_deref(),
        Some("5f0c7e2a-4b1d-4c3e-9a8b-000000000001")
    );
    assert_eq!(challenge.email.as_deref(), Some("member1@example.com"));
    assert_eq!(challenge.value, Some(5.0));
    assert_eq!(challenge.value_currency.as_deref(), Some("EUR"));
    assert_eq!(challenge.time.to_rfc3339(), "2026-07-20T10:15:00+00:00");
    assert_eq!(
        challenge.properties["challenge_name"],
        "Five visits in July"
    );
    assert_eq!(challenge.properties["points_awarded"], 50);
    assert!(!challenge.backfill);

    // Profiles are identified, not updated: the forwarded Klaviyo body's first_name and
    // custom properties never reached Klaviyo.
    let forwarded = snapshot
        .profile_by_email("member6@example.com")
        .expect("the forwarded body's profile");
    assert_eq!(
        forwarded.external_id.as_deref(),
        Some("5f0c7e2a-4b1d-4c3e-9a8b-000000000006")
    );
    let writes = sandbox.recorded_klaviyo_writes();
    let raw = serde_json::to_string(&writes).unwrap();
    assert!(
        !raw.contains("Mia") && !raw.contains("trifft_tier"),
        "profile attributes were forwarded"
    );
    assert!(writes.iter().all(
        |w| w["path"] != "/api/profile-import" && w["path"] != "/api/profile-bulk-import-jobs"
    ));

    // TRIFFT re-delivers every sent sample: Klaviyo keeps one of each (same unique_id).
    for (name, sample) in &samples {
        if expected[name] == 202 {
            let (status, body, _) = invoke(&deps, sample).await;
            assert_eq!(status, 202, "{name} again: {body}");
        }
    }
    let again = sandbox.klaviyo();
    assert_eq!(
        again.events.len(),
        8,
        "a re-delivered webhook created a second event"
    );
    assert_eq!(again.duplicates_dropped, 8);

    sandbox.stop().await;
    let recorded = std::fs::read_to_string(dir.join("klaviyo-writes.jsonl")).unwrap();
    assert_eq!(recorded.lines().count(), 12, "6 requests, each sent twice");
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn the_body_hash_keeps_a_redelivery_without_an_id_from_counting_twice() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let deps = deps(&sandbox, KEY);
    let (samples, _) = samples();
    // The streak sample without its id: the unique_id is the SHA-256 of the event.
    let mut sample = samples["streak-reached.json"].clone();
    let mut body: Value = serde_json::from_str(sample["body"].as_str().unwrap()).unwrap();
    body.as_object_mut().unwrap().remove("id");
    sample["body"] = json!(body.to_string());
    let (status, first, _) = invoke(&deps, &sample).await;
    assert_eq!(status, 202, "{first}");
    let unique_id = first["events"][0]["unique_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(unique_id.len(), 64);
    // Re-delivered with its keys in another order: the same canonical body, the same id.
    let reordered: serde_json::Map<String, Value> = body
        .as_object()
        .unwrap()
        .clone()
        .into_iter()
        .rev()
        .collect();
    sample["body"] = json!(Value::Object(reordered).to_string());
    let (status, second, _) = invoke(&deps, &sample).await;
    assert_eq!(status, 202);
    assert_eq!(second["events"][0]["unique_id"], unique_id.as_str());
    let snapshot = sandbox.klaviyo();
    assert_eq!(snapshot.events.len(), 1);
    assert_eq!(snapshot.duplicates_dropped, 1);
    sandbox.stop().await;
}

#[tokio::test]
async fn klaviyo_faults_answer_503_with_retry_after_and_store_nothing() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let deps = deps(&sandbox, KEY);
    let (samples, _) = samples();
    let faults = [
        Faults {
            target: FaultTarget::Klaviyo,
            error_rate: 1.0,
            ..Faults::none()
        },
        Faults {
            target: FaultTarget::Klaviyo,
            throttle_rate: 1.0,
            ..Faults::none()
        },
        Faults {
            target: FaultTarget::Klaviyo,
            drop_rate: 1.0,
            ..Faults::none()
        },
    ];
    for fault in faults {
        sandbox.set_faults(fault.clone());
        for name in ["challenge-completed.json", "batch.json"] {
            let (status, body, headers) = invoke(&deps, &samples[name]).await;
            assert_eq!(status, 503, "{name} under {fault:?}: {body}");
            let wait: u64 = headers
                .get("retry-after")
                .expect("Retry-After")
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(wait >= 1, "{wait}");
            assert_eq!(body["error"]["code"], "upstream_unavailable");
        }
    }
    assert!(sandbox.klaviyo().events.is_empty());

    // Once Klaviyo is back, TRIFFT's retry goes through.
    sandbox.set_faults(Faults::none());
    let (status, _, _) = invoke(&deps, &samples["batch.json"]).await;
    assert_eq!(status, 202);
    assert_eq!(sandbox.klaviyo().events.len(), 3);
    sandbox.stop().await;
}

#[tokio::test]
async fn a_refused_klaviyo_key_is_503_not_the_senders_fault() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let deps = deps(&sandbox, "pk_wrong_0000000000000000");
    let (samples, _) = samples();
    let (status, body, headers) = invoke(&deps, &samples["contest-won.json"]).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        !body.to_string().contains("pk_wrong"),
        "the key must not appear in answers"
    );
    assert!(sandbox.klaviyo().events.is_empty());
    sandbox.stop().await;
}
