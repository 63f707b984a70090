//! The handler over in-memory fakes: every answer the function gives, and that refused
//! requests never reach Klaviyo.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use custom_events::{CustomEventsSettings, Deps, EXAMPLE_MAPPING, handler, load_mapping};
use lambda_http::{Body, Request};
use loyalty_bridge::error::ApiErrorDetail;
use loyalty_bridge::klaviyo::{
    BulkImportJob, ClientStats, Event, EventBulkRequest, ImportError, KlaviyoApi, Profile,
    ProfileIdentity,
};
use loyalty_bridge::mapping::custom::Mapping;
use loyalty_bridge::secrets::{BridgeSecrets, RotatingSecret, SecretSource, SecretString};
use loyalty_bridge::{Deadline, Error, Service};
use serde_json::{Value, json};

#[derive(Default)]
struct FakeKlaviyo {
    single: Mutex<Vec<(ProfileIdentity, Event)>>,
    bulk: Mutex<Vec<Value>>,
    fail_with: Mutex<Option<fn() -> Error>>,
}

impl FakeKlaviyo {
    fn calls(&self) -> usize {
        self.single.lock().unwrap().len() + self.bulk.lock().unwrap().len()
    }
    fn failure(&self) -> loyalty_bridge::Result<()> {
        match *self.fail_with.lock().unwrap() {
            Some(f) => Err(f()),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl KlaviyoApi for FakeKlaviyo {
    async fn create_event(
        &self,
        identity: &ProfileIdentity,
        event: &Event,
        _: Deadline,
    ) -> loyalty_bridge::Result<()> {
        self.single
            .lock()
            .unwrap()
            .push((identity.clone(), event.clone()));
        self.failure()
    }
    async fn bulk_create_events(
        &self,
        request: &EventBulkRequest,
        _: Deadline,
    ) -> loyalty_bridge::Result<()> {
        self.bulk
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&request.body).unwrap());
        self.failure()
    }
    async fn import_profile(&self, _: &Profile, _: Deadline) -> loyalty_bridge::Result<String> {
        panic!("custom-events must not update profiles")
    }
    async fn bulk_import_profiles(
        &self,
        _: &loyalty_bridge::klaviyo::ProfileBulkRequest,
        _: Deadline,
    ) -> loyalty_bridge::Result<BulkImportJob> {
        panic!("custom-events must not update profiles")
    }
    async fn bulk_import_job(&self, _: &str, _: Deadline) -> loyalty_bridge::Result<BulkImportJob> {
        unreachable!()
    }
    async fn bulk_import_errors(
        &self,
        _: &str,
        _: Deadline,
    ) -> loyalty_bridge::Result<Vec<ImportError>> {
        unreachable!()
    }
    fn stats(&self) -> ClientStats {
        ClientStats::default()
    }
}

struct FakeSecrets(Arc<BridgeSecrets>);

#[async_trait]
impl SecretSource for FakeSecrets {
    async fn get(&self) -> loyalty_bridge::Result<Arc<BridgeSecrets>> {
        Ok(self.0.clone())
    }
    async fn refresh(&self) -> loyalty_bridge::Result<Arc<BridgeSecrets>> {
        Ok(self.0.clone())
    }
}

fn deps_with(
    secret: Option<RotatingSecret>,
    settings: CustomEventsSettings,
) -> (Deps, Arc<FakeKlaviyo>) {
    let klaviyo = Arc::new(FakeKlaviyo::default());
    let secrets = BridgeSecrets {
        custom_events: secret,
        ..Default::default()
    };
    let deps = Deps {
        klaviyo: klaviyo.clone(),
        secrets: Arc::new(FakeSecrets(Arc::new(secrets))),
        mapping: Arc::new(Mapping::from_json(EXAMPLE_MAPPING, "example").unwrap()),
        settings,
    };
    (deps, klaviyo)
}

fn deps() -> (Deps, Arc<FakeKlaviyo>) {
    deps_with(
        Some(RotatingSecret {
            current: SecretString::new("s3cret-now"),
            previous: Some(SecretString::new("trifft:s3cret-before")),
        }),
        CustomEventsSettings::default(),
    )
}

fn post(headers: &[(&str, &str)], body: impl Into<Body>) -> Request {
    let mut b = lambda_http::http::Request::builder()
        .method("POST")
        .uri("/trifft/custom-events");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).unwrap()
}

fn authed(body: &Value) -> Request {
    post(
        &[
            ("x-trifft-secret", "s3cret-now"),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
}

async fn call(deps: &Deps, request: Request) -> (u16, Value, lambda_http::http::HeaderMap) {
    let response = handler(deps, request)
        .await
        .expect("the handler never fails on input");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body: Value = serde_json::from_slice(response.body().as_ref()).expect("answers are JSON");
    (status, body, headers)
}

fn challenge(id: &str) -> Value {
    json!({
        "event": "challenge_completed",
        "id": id,
        "occurred_at": "1784542500",
        "member": { "id": "m-1", "email": "ana@example.com", "phone": "+4915112345678" },
        "challenge": { "id": "chl-1", "name": "Five visits", "category": "visits" },
        "reward": { "points": 50, "value": "5.00", "currency": "EUR" }
    })
}

#[tokio::test]
async fn one_event_goes_to_create_event_and_is_listed() {
    let (deps, klaviyo) = deps();
    let (status, body, _) = call(&deps, authed(&challenge("evt-1"))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "sent");
    assert_eq!(
        body["events"],
        json!([{ "index": 0, "metric": "Challenge completed", "unique_id": "evt-1" }])
    );
    let single = klaviyo.single.lock().unwrap();
    let (identity, event) = &single[0];
    assert_eq!(identity.external_id.as_deref(), Some("m-1"));
    assert_eq!(identity.phone_number.as_deref(), Some("+4915112345678"));
    assert_eq!(event.value, Some(5.0));
    assert_eq!(event.value_currency.as_deref(), Some("EUR"));
    assert_eq!(
        Value::Object(event.properties.clone()),
        json!({ "challenge": { "category": "visits" }, "challenge_id": "chl-1", "challenge_name": "Five visits", "points_awarded": 50 })
    );
    assert!(klaviyo.bulk.lock().unwrap().is_empty());
}

#[tokio::test]
async fn several_events_go_out_as_one_bulk_job() {
    let (deps, klaviyo) = deps();
    let mut other = challenge("evt-3");
    other["member"] = json!({ "id": "m-2" });
    let batch = json!({ "events": [challenge("evt-1"), challenge("evt-2"), other] });
    let (status, body, _) = call(&deps, authed(&batch)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    let bulk = klaviyo.bulk.lock().unwrap();
    assert_eq!(bulk.len(), 1);
    let entries = bulk[0]["data"]["attributes"]["events-bulk-create"]["data"]
        .as_array()
        .unwrap();
    assert_eq!(entries.len(), 2, "one entry per profile");
    assert!(klaviyo.single.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_repeat_inside_a_batch_is_sent_once() {
    let (deps, klaviyo) = deps();
    let (status, body, _) = call(
        &deps,
        authed(&json!([challenge("evt-1"), challenge("evt-1")])),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert!(
        body["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("repeats unique_id")
    );
    assert_eq!(
        klaviyo.single.lock().unwrap().len(),
        1,
        "one event left: the single endpoint"
    );
}

#[tokio::test]
async fn credentials_are_checked_before_anything_else() {
    let (deps, klaviyo) = deps();
    let cases = [
        post(&[], challenge("a").to_string()),
        post(
            &[("x-trifft-secret", "s3cret-wrong")],
            challenge("a").to_string(),
        ),
        post(&[("x-trifft-secret", "s3cret-wrong")], "not json"),
        post(
            &[("authorization", "Basic dHJpZmZ0Om5vcGU=")],
            challenge("a").to_string(),
        ),
    ];
    for request in cases {
        let (status, body, headers) = call(&deps, request).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(headers.contains_key("www-authenticate"));
    }
    assert_eq!(klaviyo.calls(), 0);
}

#[tokio::test]
async fn the_previous_secret_and_basic_credentials_pass() {
    let (deps, klaviyo) = deps();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("trifft:s3cret-before")
    );
    let (status, body, _) = call(
        &deps,
        post(&[("authorization", &basic)], challenge("b1").to_string()),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, _, _) = call(
        &deps,
        post(
            &[("x-trifft-secret", "trifft:s3cret-before")],
            challenge("b2").to_string(),
        ),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(klaviyo.calls(), 2);
}

#[tokio::test]
async fn a_configured_header_name_is_used() {
    let settings =
        CustomEventsSettings::from_env(&[("CUSTOM_EVENTS_AUTH_HEADER", "X-Bridge-Key")]).unwrap();
    let (deps, _) = deps_with(
        Some(RotatingSecret {
            current: SecretString::new("k"),
            previous: None,
        }),
        settings,
    );
    let (status, _, _) = call(
        &deps,
        post(&[("x-bridge-key", "k")], challenge("c").to_string()),
    )
    .await;
    assert_eq!(status, 202);
    let (status, body, _) = call(
        &deps,
        post(&[("x-trifft-secret", "k")], challenge("c").to_string()),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-bridge-key")
    );
}

#[tokio::test]
async fn bad_input_gets_400_413_or_422_and_no_upstream_call() {
    let settings =
        CustomEventsSettings::from_env(&[("CUSTOM_EVENTS_MAX_BODY_BYTES", "2000")]).unwrap();
    let (deps, klaviyo) = deps_with(
        Some(RotatingSecret {
            current: SecretString::new("s3cret-now"),
            previous: None,
        }),
        settings,
    );
    let h = [("x-trifft-secret", "s3cret-now")];

    let (status, body, _) = call(&deps, post(&h, "{\"event\": ")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON")
    );
    let (status, body, _) = call(&deps, post(&h, "")).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("empty"));
    let (status, body, _) = call(&deps, post(&h, "42")).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("body"))
    );

    let big = json!({ "event": "challenge_completed", "pad": "x".repeat(2100) });
    let (status, body, _) = call(&deps, post(&h, big.to_string())).await;
    assert_eq!(status, 413, "{body}");

    let mut unknown = challenge("u");
    unknown["event"] = json!("badge_unlocked");
    let (status, body, _) = call(&deps, post(&h, unknown.to_string())).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "$.event");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"badge_unlocked\" has no rule"),
        "{body}"
    );

    let mut bad = challenge("v");
    bad["reward"]["value"] = json!("five");
    let (status, body, _) = call(&deps, post(&h, bad.to_string())).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("$.reward.value")),
        "{body}"
    );

    let mut bad_time = challenge("w");
    bad_time["occurred_at"] = json!("{{ event.created_at | date('U') }}");
    let (status, body, _) = call(
        &deps,
        post(&h, json!([challenge("ok"), bad_time]).to_string()),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["events"][0]["index"], 1);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not render"),
        "{body}"
    );

    assert_eq!(klaviyo.calls(), 0);
}

#[tokio::test]
async fn bridge_caused_events_are_ignored_with_200() {
    let (deps, klaviyo) = deps();
    let mut looped = challenge("l");
    looped["source"] = json!(loyalty_bridge::ORIGIN_MARKER);
    let (status, body, _) = call(&deps, authed(&looped)).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ignored");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("caused by the bridge")
    );
    assert_eq!(klaviyo.calls(), 0);
}

#[tokio::test]
async fn a_klaviyo_body_is_forwarded_with_identifiers_only() {
    let (deps, klaviyo) = deps();
    let body = json!({ "data": { "type": "event", "attributes": {
        "properties": { "k": 1 },
        "metric": { "data": { "type": "metric", "attributes": { "name": "Contest won" } } },
        "profile": { "data": { "type": "profile", "attributes": { "email": "z@example.com", "first_name": "Z", "properties": { "tier": "Gold" } } } }
    } } });
    let (status, answer, _) = call(&deps, authed(&body)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["events"][0]["forwarded"], true);
    assert!(
        answer["warnings"][0]
            .as_str()
            .unwrap()
            .contains("dropped profile attributes: first_name, properties")
    );
    let single = klaviyo.single.lock().unwrap();
    assert_eq!(
        single[0].0,
        ProfileIdentity {
            email: Some("z@example.com".into()),
            ..Default::default()
        }
    );
    assert_eq!(
        single[0].1.unique_id.len(),
        64,
        "a stable hash when the body has no unique_id"
    );
    assert_eq!(
        answer["events"][0]["unique_id"],
        single[0].1.unique_id.as_str()
    );
}

#[tokio::test]
async fn klaviyo_failures_become_retryable_or_clear_answers() {
    fn throttled() -> Error {
        Error::RateLimited {
            service: Service::Klaviyo,
            retry_after: Duration::from_millis(6500),
        }
    }
    fn down() -> Error {
        Error::Upstream {
            service: Service::Klaviyo,
            status: 503,
            detail: "unavailable".into(),
        }
    }
    fn unreachable_() -> Error {
        Error::Transport {
            service: Service::Klaviyo,
            detail: "connection refused".into(),
        }
    }
    fn key_refused() -> Error {
        Error::Unauthorized {
            service: Service::Klaviyo,
            detail: "bad key".into(),
        }
    }
    fn rejected() -> Error {
        Error::Rejected {
            service: Service::Klaviyo,
            status: 400,
            errors: vec![ApiErrorDetail {
                code: "invalid".into(),
                title: "Invalid input.".into(),
                detail: "The event time must be at most 1 year in the future.".into(),
                pointer: Some("/data/attributes/time".into()),
            }],
        }
    }
    type Case = (fn() -> Error, u16, Option<&'static str>);
    let cases: [Case; 5] = [
        (throttled, 503, Some("7")),
        (down, 503, Some("30")),
        (unreachable_, 503, Some("30")),
        (key_refused, 503, Some("30")),
        (rejected, 422, None),
    ];
    for (fault, want_status, want_retry_after) in cases {
        let (deps, klaviyo) = deps();
        *klaviyo.fail_with.lock().unwrap() = Some(fault);
        let (status, body, headers) = call(&deps, authed(&challenge("f"))).await;
        assert_eq!(status, want_status, "{body}");
        assert_eq!(
            headers.get("retry-after").map(|v| v.to_str().unwrap()),
            want_retry_after,
            "{body}"
        );
        if status == 422 {
            assert_eq!(body["error"]["code"], "klaviyo_rejected");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("at most 1 year in the future")
            );
            assert_eq!(body["error"]["field"], "/data/attributes/time");
        }
    }
}

#[tokio::test]
async fn no_configured_secret_is_503_not_401() {
    let (deps, klaviyo) = deps_with(None, CustomEventsSettings::default());
    let (status, body, headers) = call(&deps, authed(&challenge("n"))).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(klaviyo.calls(), 0);
}

#[tokio::test]
async fn only_post_is_accepted() {
    let (deps, _) = deps();
    let request = lambda_http::http::Request::builder()
        .method("GET")
        .uri("/trifft/custom-events")
        .header("x-trifft-secret", "s3cret-now")
        .body(Body::Empty)
        .unwrap();
    let (status, _, headers) = call(&deps, request).await;
    assert_eq!(status, 405);
    assert_eq!(headers.get("allow").unwrap(), "POST");
}

#[test]
fn settings_and_mapping_fail_fast_naming_the_variable() {
    let e =
        CustomEventsSettings::from_env(&[("CUSTOM_EVENTS_AUTH_HEADER", "bad header")]).unwrap_err();
    assert!(e.to_string().contains("CUSTOM_EVENTS_AUTH_HEADER"), "{e}");
    let e =
        CustomEventsSettings::from_env(&[("CUSTOM_EVENTS_MAX_BODY_BYTES", "lots")]).unwrap_err();
    assert!(
        e.to_string().contains("CUSTOM_EVENTS_MAX_BODY_BYTES"),
        "{e}"
    );
    let s = CustomEventsSettings::from_env(&[("CUSTOM_EVENTS_RETRY_AFTER_SECONDS", "5")]).unwrap();
    assert_eq!(
        (s.retry_after, s.max_body_bytes, s.auth_header.as_str()),
        (Duration::from_secs(5), 1 << 20, "x-trifft-secret")
    );

    let bad = r#"{"version": 1, "rules": {"streak_reached": {"metric": "Streak reached", "identity": {"email": "member.email"}}}}"#;
    let e = load_mapping(&[("CUSTOM_EVENTS_MAPPING", bad)]).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("CUSTOM_EVENTS_MAPPING")
            && message.contains("rules.streak_reached.identity.email"),
        "{message}"
    );

    let shipped = load_mapping(&[("UNRELATED", "x")]).unwrap();
    let types: Vec<&str> = shipped.rules.keys().map(String::as_str).collect();
    assert_eq!(
        types,
        ["challenge_completed", "contest_won", "streak_reached"]
    );
    let from_env = load_mapping(&[("CUSTOM_EVENTS_MAPPING", EXAMPLE_MAPPING)]).unwrap();
    assert_eq!(from_env, shipped);
}
