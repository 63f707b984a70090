//! The bad input corpus: well over 100 malformed requests to the two HTTP functions
//! (klaviyo-webhook, custom-events), each a 4xx whose message names the problem or field,
//! never a 5xx, and never a request to TRIFFT or Klaviyo (the emulators count 0).

use std::sync::Arc;

use base64::Engine;
use e2e_tests::reliability::{
    Answer, Body, CUSTOM_SECRET, HOOK_SECRET, api_event, call_custom, call_webhook, custom_deps,
    small_sandbox, to_request, upstream_requests, webhook_deps,
};
use loyalty_bridge::state::MemoryStateStore;
use sandbox::Faults;
use serde_json::{Value, json};

const MEMBER: &str = "5f0c7e2a-4b1d-4c3e-9a8b-000000000001";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Webhook,
    Custom,
}

struct Case {
    name: String,
    target: Target,
    method: &'static str,
    headers: Vec<(String, String)>,
    body: Body,
    /// The message (code, message, field) must contain one of these.
    names: Vec<&'static str>,
}

fn auth(target: Target) -> Vec<(String, String)> {
    match target {
        Target::Webhook => vec![("x-bridge-secret".into(), HOOK_SECRET.into())],
        Target::Custom => vec![("x-trifft-secret".into(), CUSTOM_SECRET.into())],
    }
}

fn case(target: Target, name: impl Into<String>, body: Body, names: &[&'static str]) -> Case {
    Case {
        name: name.into(),
        target,
        method: "POST",
        headers: auth(target),
        body,
        names: names.to_vec(),
    }
}

fn text(t: impl Into<String>) -> Body {
    Body::Text(t.into())
}

fn json_body(v: Value) -> Body {
    Body::Text(v.to_string())
}

fn credit(extra: Value) -> Value {
    let mut base =
        json!({"action": "credit_points", "member": {"trifft_id": MEMBER}, "points": 50});
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn challenge(extra: Value) -> Value {
    let mut base = json!({
        "event": "challenge_completed", "id": "evt-bad-1", "occurred_at": "2026-07-20T10:15:00Z",
        "member": {"id": MEMBER, "email": "member1@example.com"},
        "challenge": {"id": "chl-1", "name": "Five visits"},
        "reward": {"points": 50, "value": "5.00", "currency": "EUR"}
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Shared by both functions: JSON that is not JSON, in many ways.
fn broken_json(target: Target) -> Vec<Case> {
    let bodies = [
        "{",
        "{\"action\": \"credit_points\",",
        "not json at all",
        "{'action': 'credit_points'}",
        "{\"action\": \"credit_points\",}",
        "[",
        "{\"a\": 1}}",
        "{\"points\": NaN}",
        "{\"points\": 01}",
        "{\"action\" \"credit_points\"}",
        "\"unterminated",
        "{\"points\": 1e999999}",
    ];
    let mut cases: Vec<Case> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| case(target, format!("broken json {i}: {b}"), text(*b), &["json"]))
        .collect();
    cases.push(case(
        target,
        "empty body",
        text(""),
        &["json", "empty", "body"],
    ));
    cases.push(case(
        target,
        "deep nesting 10000",
        text(format!("{{\"a\": {}}}", nested(10_000))),
        &["json", "nest", "deep", "recursion"],
    ));
    cases.push(case(
        target,
        "deep nesting 200 inside a field",
        text(format!(
            "{{\"action\": \"credit_points\", \"member\": {{\"trifft_id\": {}}}}}",
            nested(200)
        )),
        &["json", "nest", "deep", "recursion", "trifft_id"],
    ));
    // Bad encodings, base64-encoded by API Gateway as it does for binary bodies.
    let encodings: [(&str, Vec<u8>); 5] = [
        (
            "invalid utf-8",
            b"{\"action\": \"credit_points\", \"reason\": \"\xff\xfe\"}".to_vec(),
        ),
        ("overlong utf-8", b"{\"a\": \"\xc0\xaf\"}".to_vec()),
        (
            "utf-16",
            "{\"a\": 1}"
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes())
                .collect(),
        ),
        ("gzip magic", vec![0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00]),
        ("nul bytes", vec![0, 0, 0, 0]),
    ];
    for (name, bytes) in encodings {
        cases.push(case(
            target,
            format!("encoding: {name}"),
            Body::Bytes(bytes),
            &["json", "utf-8", "utf8", "encoding"],
        ));
    }
    // A body base64-encoded twice: the function sees base64 text, not JSON.
    let twice = base64::engine::general_purpose::STANDARD.encode(credit(json!({})).to_string());
    cases.push(case(
        target,
        "encoding: base64 text instead of JSON",
        Body::Bytes(twice.into_bytes()),
        &["json"],
    ));
    // Larger than the function accepts (klaviyo-webhook 256 KiB, custom-events 1 MiB).
    cases.push(case(
        target,
        "oversized body 2 MiB",
        text(format!(
            "{{\"action\": \"credit_points\", \"reason\": \"{}\"}}",
            "x".repeat(2 * 1024 * 1024)
        )),
        &["large", "bytes", "size"],
    ));
    cases
}

fn auth_cases(target: Target) -> Vec<Case> {
    let (header, secret) = match target {
        Target::Webhook => ("x-bridge-secret", HOOK_SECRET),
        Target::Custom => ("x-trifft-secret", CUSTOM_SECRET),
    };
    let body = match target {
        Target::Webhook => json_body(credit(json!({}))),
        Target::Custom => json_body(challenge(json!({}))),
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let variants: Vec<(&str, Vec<(String, String)>)> = vec![
        ("no credential", vec![]),
        ("wrong secret", vec![(header.into(), "wrong-secret".into())]),
        ("empty secret", vec![(header.into(), String::new())]),
        (
            "secret prefix",
            vec![(header.into(), secret[..secret.len() - 1].into())],
        ),
        (
            "secret plus a byte",
            vec![(header.into(), format!("{secret}x"))],
        ),
        (
            "secret upper-cased",
            vec![(header.into(), secret.to_uppercase())],
        ),
        (
            "secret in another header",
            vec![("x-api-key".into(), secret.into())],
        ),
        (
            "secret as bearer",
            vec![("authorization".into(), format!("Bearer {secret}"))],
        ),
        (
            "basic with bad base64",
            vec![("authorization".into(), "Basic !!!not-base64!!!".into())],
        ),
        (
            "basic with wrong password",
            vec![(
                "authorization".into(),
                format!("Basic {}", b64("trifft:wrong")),
            )],
        ),
        (
            "klaviyo signature, not enabled / wrong",
            vec![
                ("klaviyo-signature".into(), "bm90IGEgc2lnbmF0dXJl".into()),
                ("klaviyo-timestamp".into(), "1784542500".into()),
            ],
        ),
        (
            "klaviyo signature, bad base64, no timestamp",
            vec![("klaviyo-signature".into(), "%%%".into())],
        ),
    ];
    variants
        .into_iter()
        .map(|(name, headers)| Case {
            name: format!("auth: {name}"),
            target,
            method: "POST",
            headers,
            body: body.clone(),
            names: vec!["secret", "credential", "auth", "signature", "header"],
        })
        .collect()
}

fn webhook_cases() -> Vec<Case> {
    use Target::Webhook as W;
    let mut cases = broken_json(W);
    cases.extend(auth_cases(W));
    let v = |name: &str, body: Value, names: &[&'static str]| {
        case(W, name.to_string(), json_body(body), names)
    };
    let long = "x".repeat(10_000);
    cases.extend([
        // Wrong types and shapes.
        v("top-level array", json!([credit(json!({}))]), &["shape", "object"]),
        v("top-level string", json!("credit_points"), &["shape", "object"]),
        v("top-level number", json!(5), &["shape", "object"]),
        v("top-level null", json!(null), &["shape", "object"]),
        v("empty object", json!({}), &["action"]),
        v("action a number", credit(json!({"action": 5})), &["action"]),
        v("action null", credit(json!({"action": null})), &["action"]),
        v("action a list", credit(json!({"action": ["credit_points"]})), &["action"]),
        v("action unknown", credit(json!({"action": "transfer_points"})), &["action"]),
        v("action blank", credit(json!({"action": "  "})), &["action"]),
        v("member a string", credit(json!({"member": MEMBER})), &["member"]),
        v("member a number", credit(json!({"member": 5})), &["member"]),
        v("member empty", credit(json!({"member": {}})), &["member", "trifft_id"]),
        v("trifft_id a number", credit(json!({"member": {"trifft_id": 5}})), &["trifft_id"]),
        v("trifft_id an object", credit(json!({"member": {"trifft_id": {}}})), &["trifft_id"]),
        v("trifft_id empty", credit(json!({"member": {"trifft_id": ""}})), &["trifft_id"]),
        v("points a bool", credit(json!({"points": true})), &["points"]),
        v("points a list", credit(json!({"points": [50]})), &["points"]),
        v("points an object", credit(json!({"points": {"n": 50}})), &["points"]),
        v("points text", credit(json!({"points": "fifty"})), &["points"]),
        v("points letter O", credit(json!({"points": "5O"})), &["points"]),
        v("points missing", json!({"action": "credit_points", "member": {"trifft_id": MEMBER}}), &["points"]),
        v("points empty string", credit(json!({"points": ""})), &["points"]),
        v("reason a number", credit(json!({"reason": 5})), &["reason"]),
        v("coupon_id a number", json!({"action": "assign_coupon", "member": {"trifft_id": MEMBER}, "coupon_id": 5}), &["coupon_id"]),
        v("coupon_id missing", json!({"action": "assign_coupon", "member": {"trifft_id": MEMBER}}), &["coupon_id"]),
        v("segment a number", json!({"action": "add_to_segment", "member": {"trifft_id": MEMBER}, "segment": 5}), &["segment"]),
        v("segment missing", json!({"action": "remove_from_segment", "member": {"trifft_id": MEMBER}}), &["segment"]),
        v("idempotency_key a number", credit(json!({"idempotency_key": 5})), &["idempotency_key"]),
        v("actions a string", json!({"actions": "credit_points"}), &["actions"]),
        v("actions an object", json!({"actions": {}}), &["actions"]),
        v("actions empty", json!({"actions": []}), &["actions"]),
        v("actions of numbers", json!({"actions": [5]}), &["actions"]),
        v("actions with one bad item", json!({"actions": [credit(json!({})), credit(json!({"points": -1}))]}), &["points"]),
        // Huge and negative numbers.
        v("points negative", credit(json!({"points": -50})), &["points"]),
        v("points -1 text", credit(json!({"points": "-1"})), &["points"]),
        v("points zero", credit(json!({"points": 0})), &["points"]),
        v("points decimal", credit(json!({"points": 1.5})), &["points"]),
        v("points decimal text", credit(json!({"points": "1.5"})), &["points"]),
        v("points over the cap", credit(json!({"points": 10_001})), &["points"]),
        v("points u64 max", credit(json!({"points": u64::MAX})), &["points"]),
        v("points i64 min", credit(json!({"points": i64::MIN})), &["points"]),
        v("points 1e300", credit(json!({"points": 1e300})), &["points"]),
        v("points 30 digits text", credit(json!({"points": "999999999999999999999999999999"})), &["points"]),
        v("debit negative", json!({"action": "debit_points", "member": {"trifft_id": MEMBER}, "points": -5}), &["points"]),
        v("request total over the cap", json!({"actions": (0..11).map(|_| credit(json!({"points": 10_000}))).collect::<Vec<_>>()}), &["points"]),
        // Templates Klaviyo did not render.
        v("template trifft_id", credit(json!({"member": {"trifft_id": "{{ person.trifft_id }}"}})), &["template"]),
        v("template points", credit(json!({"points": "{{ event.points }}"})), &["template"]),
        v("template coupon", json!({"action": "assign_coupon", "member": {"trifft_id": MEMBER}, "coupon_id": "{{ event.coupon }}"}), &["template"]),
        v("template segment", json!({"action": "add_to_segment", "member": {"trifft_id": MEMBER}, "segment": "{{ person|lookup:'seg' }}"}), &["template"]),
        v("template action", credit(json!({"action": "{{ event.action }}"})), &["template", "action"]),
        v("template block tag", credit(json!({"member": {"trifft_id": "{% if person %}x{% endif %}"}})), &["template", "trifft_id"]),
        v("template idempotency_key", credit(json!({"idempotency_key": "{{ event.id }}"})), &["template"]),
        // Injection attempts in ids (they go into TRIFFT item URIs).
        v("id path traversal", credit(json!({"member": {"trifft_id": "a/../../b"}})), &["trifft_id"]),
        v("id dot-dot", credit(json!({"member": {"trifft_id": ".."}})), &["trifft_id"]),
        v("id query", credit(json!({"member": {"trifft_id": "m?delete=1"}})), &["trifft_id"]),
        v("id fragment", credit(json!({"member": {"trifft_id": "m#x"}})), &["trifft_id"]),
        v("id percent-encoded slash", credit(json!({"member": {"trifft_id": "m%2F..%2Fadmin"}})), &["trifft_id"]),
        v("id with space", credit(json!({"member": {"trifft_id": "m x"}})), &["trifft_id"]),
        v("id with newline", credit(json!({"member": {"trifft_id": "m\nHost: evil"}})), &["trifft_id"]),
        v("id with nul", credit(json!({"member": {"trifft_id": "m\u{0}"}})), &["trifft_id"]),
        v("id sql", credit(json!({"member": {"trifft_id": "'; DROP TABLE members;--"}})), &["trifft_id"]),
        v("id html", credit(json!({"member": {"trifft_id": "<script>alert(1)</script>"}})), &["trifft_id"]),
        v("id right-to-left override", credit(json!({"member": {"trifft_id": "m\u{202e}x"}})), &["trifft_id"]),
        v("id absolute url", credit(json!({"member": {"trifft_id": "https://evil.example/x"}})), &["trifft_id"]),
        v("id 10000 chars", credit(json!({"member": {"trifft_id": long}})), &["trifft_id"]),
        v("coupon traversal", json!({"action": "assign_coupon", "member": {"trifft_id": MEMBER}, "coupon_id": "../../admin"}), &["coupon_id"]),
        v("segment with slash", json!({"action": "add_to_segment", "member": {"trifft_id": MEMBER}, "segment": "vip/../all"}), &["segment"]),
        v("segment query", json!({"action": "remove_from_segment", "member": {"trifft_id": MEMBER}, "segment": "vip?x=1"}), &["segment"]),
        // Too much of something.
        v("501 actions", json!({"actions": (0..501).map(|_| credit(json!({"points": 1}))).collect::<Vec<_>>()}), &["500", "actions"]),
        v("reason 256 chars", credit(json!({"reason": "r".repeat(256)})), &["reason"]),
        v("idempotency_key 256 chars", credit(json!({"idempotency_key": "k".repeat(256)})), &["idempotency_key"]),
    ]);
    cases.push(case(
        W,
        "points past u64",
        text(format!("{{\"action\": \"credit_points\", \"member\": {{\"trifft_id\": \"{MEMBER}\"}}, \"points\": 18446744073709551616}}")),
        &["points"],
    ));
    cases.push(Case {
        method: "GET",
        names: vec!["method", "post"],
        ..case(W, "GET instead of POST", json_body(credit(json!({}))), &[])
    });
    cases
}

fn custom_cases() -> Vec<Case> {
    use Target::Custom as C;
    let mut cases = broken_json(C);
    cases.extend(auth_cases(C));
    let v = |name: &str, body: Value, names: &[&'static str]| {
        case(C, name.to_string(), json_body(body), names)
    };
    cases.extend([
        v("top-level string", json!("challenge_completed"), &["object", "event"]),
        v("top-level number", json!(5), &["object", "event"]),
        v("top-level null", json!(null), &["object", "event"]),
        v("empty object", json!({}), &["event", "type"]),
        v("events a string", json!({"events": "x"}), &["events"]),
        v("events empty", json!({"events": []}), &["events", "empty"]),
        v("event type a number", challenge(json!({"event": 5})), &["event", "type"]),
        v("event type unknown", challenge(json!({"event": "points_stolen"})), &["points_stolen", "type"]),
        v("event type template", challenge(json!({"event": "{{ event.type }}"})), &["event", "type", "template"]),
        v("member id a bool, no other identity", challenge(json!({"member": {"id": true}})), &["member", "external_id", "identity", "profile"]),
        v("no identity at all", challenge(json!({"member": {}})), &["identity", "external_id", "email", "member"]),
        v("time not a time", challenge(json!({"occurred_at": "yesterday"})), &["time", "occurred_at"]),
        v("time an object", challenge(json!({"occurred_at": {}})), &["time", "occurred_at"]),
        v("time year 275760", challenge(json!({"occurred_at": 8_640_000_000_000_000i64})), &["time", "occurred_at"]),
        v("time two years ahead", challenge(json!({"occurred_at": "2099-01-01T00:00:00Z"})), &["time", "occurred_at", "future"]),
        v("value not a number", challenge(json!({"reward": {"value": "five", "currency": "EUR"}})), &["value"]),
        v("value 1e400 text", challenge(json!({"reward": {"value": "1e400", "currency": "EUR"}})), &["value"]),
        v("value a list", challenge(json!({"reward": {"value": [5], "currency": "EUR"}})), &["value"]),
        v("unique_id a list", challenge(json!({"id": ["a"]})), &["unique_id", "id"]),
        v("email not an email", challenge(json!({"member": {"id": MEMBER, "email": "not-an-email"}})), &["email"]),
        v("phone not a phone, no other identity", challenge(json!({"member": {"phone": "call me"}})), &["phone"]),
        v("batch with one unmapped item", json!([challenge(json!({})), challenge(json!({"event": "nope", "id": "evt-bad-2"}))]), &["nope", "type"]),
        v("klaviyo body with wrong type", json!({"data": {"type": "profile", "attributes": {}}}), &["data", "type", "event"]),
        v("klaviyo body without metric", json!({"data": {"type": "event", "attributes": {"profile": {"data": {"type": "profile", "attributes": {"email": "a@example.com"}}}, "properties": {}}}}), &["metric"]),
    ]);
    cases.push(Case {
        method: "GET",
        names: vec!["method", "post"],
        ..case(
            C,
            "GET instead of POST",
            json_body(challenge(json!({}))),
            &[],
        )
    });
    cases
}

fn event_for(case: &Case) -> Value {
    let path = match case.target {
        Target::Webhook => "/klaviyo/webhook",
        Target::Custom => "/trifft/custom-events",
    };
    let headers: Vec<(&str, &str)> = case
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    api_event(path, case.method, &headers, &case.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_is_a_specific_4xx_and_reaches_no_upstream() {
    let sb = small_sandbox(11, 5, 5, Faults::none()).await;
    let webhook = webhook_deps(&sb, Arc::new(MemoryStateStore::new()));
    let custom = custom_deps(&sb);
    let cases: Vec<Case> = webhook_cases().into_iter().chain(custom_cases()).collect();

    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for case in &cases {
        let request = to_request(&event_for(case))
            .unwrap_or_else(|e| panic!("{}: not an API Gateway event: {e}", case.name));
        let answer: Answer = match case.target {
            Target::Webhook => call_webhook(&webhook, request).await,
            Target::Custom => call_custom(&custom, request).await,
        };
        *statuses.entry(answer.status).or_default() += 1;
        let message = answer.error_text();
        if !(400..500).contains(&answer.status) {
            failures.push(format!(
                "{:?} {}: status {} {}",
                case.target, case.name, answer.status, answer.body
            ));
        } else if !case.names.iter().any(|n| message.contains(n)) {
            failures.push(format!(
                "{:?} {}: {} message does not name {:?}: {}",
                case.target, case.name, answer.status, case.names, answer.body
            ));
        }
    }
    let upstream = upstream_requests(&sb);
    let webhook_count = cases.iter().filter(|c| c.target == Target::Webhook).count();
    eprintln!(
        "bad input corpus: {} requests ({webhook_count} klaviyo-webhook, {} custom-events), statuses {statuses:?}, upstream requests {upstream}",
        cases.len(),
        cases.len() - webhook_count
    );
    assert!(cases.len() >= 100, "corpus of {} requests", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests were not a specific 4xx:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(upstream, 0, "malformed requests reached TRIFFT or Klaviyo");
    sb.stop().await;
}
