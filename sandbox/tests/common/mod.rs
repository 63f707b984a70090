//! Helpers shared by the sandbox's HTTP tests.
#![allow(dead_code)]

use std::time::Duration;

use sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

pub const KEY: &str = "pk_sandbox_0123456789abcdef";
pub const TOKEN: &str = "trifft_sandbox_token";
pub const JSON_API: &str = "application/vnd.api+json";

pub async fn start(config: SandboxConfig) -> Sandbox {
    Sandbox::start(config).await.expect("sandbox starts")
}

pub fn small() -> SandboxConfig {
    SandboxConfig {
        members: 50,
        events: 200,
        ..SandboxConfig::default()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A Klaviyo POST with the right headers.
pub async fn klaviyo_post(sandbox: &Sandbox, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", sandbox.klaviyo_url()))
        .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
        .header("revision", "2026-07-15")
        .header("Content-Type", JSON_API)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

pub async fn klaviyo_get(sandbox: &Sandbox, url: &str) -> reqwest::Response {
    let url = if url.starts_with("http") {
        url.to_string()
    } else {
        format!("{}{url}", sandbox.klaviyo_url())
    };
    client()
        .get(url)
        .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
        .header("revision", "2026-07-15")
        .send()
        .await
        .unwrap()
}

pub async fn error_of(response: reqwest::Response) -> Value {
    let body: Value = response.json().await.unwrap();
    body["errors"][0].clone()
}

pub fn profile(external_id: &str) -> Value {
    json!({"data": {"type": "profile", "attributes": {"external_id": external_id}}})
}

pub fn event(metric: &str, unique_id: &str, external_id: &str) -> Value {
    json!({"data": {"type": "event", "attributes": {
        "properties": {"points": 5},
        "time": "2026-01-20T10:15:00Z",
        "unique_id": unique_id,
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "profile": {"data": {"type": "profile", "attributes": {"external_id": external_id, "email": format!("{external_id}@example.com")}}}
    }}})
}

/// One bulk-event entry: a profile and its events `(metric, unique_id)`.
pub fn bulk_entry(external_id: &str, events: &[(&str, String)]) -> Value {
    let events: Vec<Value> = events
        .iter()
        .map(|(metric, uid)| {
            json!({"type": "event", "attributes": {
                "properties": {"n": uid},
                "time": "2026-01-20T10:15:00Z",
                "unique_id": uid,
                "metric": {"data": {"type": "metric", "attributes": {"name": metric}}}
            }})
        })
        .collect();
    json!({"type": "event-bulk-create", "attributes": {
        "profile": {"data": {"type": "profile", "attributes": {"external_id": external_id}}},
        "events": {"data": events}
    }})
}

pub fn bulk_job(entries: Vec<Value>) -> Value {
    json!({"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": entries}}}})
}

pub async fn trifft_get(sandbox: &Sandbox, path_and_query: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path_and_query}", sandbox.trifft_url()))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap()
}

pub async fn trifft_batch(sandbox: &Sandbox, items: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/batch", sandbox.trifft_url()))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(items.to_string())
        .send()
        .await
        .unwrap()
}
