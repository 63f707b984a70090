//! Shared by the klaviyo_webhook* tests (included with `#[path]`; as its own test target
//! it holds no tests).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use klaviyo_webhook::{Deps, WebhookSettings, handler};
use lambda_http::Request;
use loyalty_bridge::secrets::{BridgeSecrets, EnvSecretSource, RotatingSecret, SecretString};
use loyalty_bridge::state::StateStore;
use loyalty_bridge::trifft::{TrifftClient, TrifftSettings};
use serde_json::{Value, json};

/// The webhook secret the samples in events/klaviyo-webhook carry (the sandbox's).
pub const HOOK_SECRET: &str = "sandbox-hook-secret";
pub const TRIFFT_TOKEN: &str = "trifft_sandbox_token";

pub fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events/klaviyo-webhook")
}

/// Every sample with its documented status, in file-name order (the duplicate pair is
/// named so its first delivery sorts first).
pub fn samples() -> Vec<(String, Value, u16)> {
    let dir = events_dir();
    let expected: BTreeMap<String, u16> =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).expect("expected.json"))
            .expect("expected.json is JSON");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json") && n != "expected.json")
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        expected.keys().cloned().collect::<Vec<_>>(),
        "every sample has an expected status and vice versa"
    );
    expected
        .into_iter()
        .map(|(name, status)| {
            let event: Value =
                serde_json::from_slice(&std::fs::read(dir.join(&name)).unwrap()).unwrap();
            (name, event, status)
        })
        .collect()
}

pub fn secrets(trifft_token: &str) -> BridgeSecrets {
    BridgeSecrets {
        trifft_api_token: Some(SecretString::new(trifft_token)),
        klaviyo_webhook: Some(RotatingSecret {
            current: SecretString::new(HOOK_SECRET),
            previous: None,
        }),
        ..Default::default()
    }
}

/// Deps for the handler against the TRIFFT emulator at `trifft_url`.
pub fn deps(
    trifft_url: &str,
    trifft_token: &str,
    state: Arc<dyn StateStore>,
    vars: &[(&str, &str)],
) -> Deps {
    let mut env: HashMap<String, String> =
        HashMap::from([("TRIFFT_BASE_URL".into(), trifft_url.into())]);
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let trifft_settings = TrifftSettings::from_env(&env).expect("TRIFFT settings");
    let settings = WebhookSettings::from_env(&env)
        .expect("webhook settings")
        .with_paths(trifft_settings.paths.clone());
    let secrets = Arc::new(EnvSecretSource::from_secrets(secrets(trifft_token)));
    let trifft =
        Arc::new(TrifftClient::new(trifft_settings, secrets.clone()).expect("TRIFFT client"));
    Deps {
        trifft,
        state,
        secrets,
        settings,
    }
}

/// An API Gateway HTTP API (payload v2) event with the webhook secret, decoded as Lambda does.
pub fn request(body: &Value) -> Request {
    request_with(body, &[("x-bridge-secret", HOOK_SECRET)])
}

pub fn request_with(body: &Value, headers: &[(&str, &str)]) -> Request {
    lambda_http::request::from_str(&event_json(body, headers).to_string())
        .expect("a valid API Gateway v2 event")
}

pub fn event_json(body: &Value, headers: &[(&str, &str)]) -> Value {
    let mut h = serde_json::Map::new();
    h.insert("content-type".into(), json!("application/json"));
    for (k, v) in headers {
        h.insert(k.to_string(), json!(v));
    }
    json!({
        "version": "2.0",
        "routeKey": "POST /klaviyo/webhook",
        "rawPath": "/klaviyo/webhook",
        "rawQueryString": "",
        "headers": h,
        "requestContext": {
            "accountId": "123456789012", "apiId": "local", "domainName": "local.execute-api.localhost",
            "requestId": "test-request", "routeKey": "POST /klaviyo/webhook", "stage": "$default", "timeEpoch": 0,
            "http": {"method": "POST", "path": "/klaviyo/webhook", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"}
        },
        "body": body.to_string(),
        "isBase64Encoded": false
    })
}

pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Value,
}

pub async fn call(deps: &Deps, request: Request) -> Answer {
    let response = handler(deps, request)
        .await
        .expect("the handler never returns Err");
    Answer {
        status: response.status().as_u16(),
        retry_after: response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap()),
        body: serde_json::from_slice(response.body().as_ref()).expect("every answer is JSON"),
    }
}

/// Log lines written while the guard lives (JSON, as in Lambda).
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_current_span(true)
            .with_writer(move || sink.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // Another test thread may have hit the handler's span callsite while no subscriber
        // existed and cached "never" for it; ask every callsite again now that ours exists.
        tracing::callsite::rebuild_interest_cache();
        guard
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
