//! Helpers of the client tests: a secret source that can change on refresh, and a proxy
//! that stamps when each request reaches the emulator (times are judged where they arrive).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use loyalty_bridge::Result;
use loyalty_bridge::secrets::{BridgeSecrets, SecretSource, SecretString};
use tokio::time::Instant;

/// Which credential of the bridge secret a [`TestSecrets`] serves.
#[derive(Clone, Copy)]
pub enum Credential {
    KlaviyoPrivateKey,
    TrifftApiToken,
}

/// Serves `get` from `current`; `refresh` switches to `after_refresh` when set.
pub struct TestSecrets {
    credential: Credential,
    current: Mutex<String>,
    after_refresh: Option<String>,
    pub refreshes: AtomicUsize,
}

impl TestSecrets {
    pub fn new(credential: Credential, value: &str, after_refresh: Option<&str>) -> Arc<Self> {
        Arc::new(TestSecrets {
            credential,
            current: Mutex::new(value.into()),
            after_refresh: after_refresh.map(str::to_string),
            refreshes: AtomicUsize::new(0),
        })
    }

    fn secrets(&self) -> Arc<BridgeSecrets> {
        let value = Some(SecretString::new(self.current.lock().unwrap().clone()));
        let mut secrets = BridgeSecrets::default();
        match self.credential {
            Credential::KlaviyoPrivateKey => secrets.klaviyo_private_key = value,
            Credential::TrifftApiToken => secrets.trifft_api_token = value,
        }
        Arc::new(secrets)
    }
}

#[async_trait]
impl SecretSource for TestSecrets {
    async fn get(&self) -> Result<Arc<BridgeSecrets>> {
        Ok(self.secrets())
    }
    async fn refresh(&self) -> Result<Arc<BridgeSecrets>> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        if let Some(next) = &self.after_refresh {
            *self.current.lock().unwrap() = next.clone();
        }
        Ok(self.secrets())
    }
}

/// Each request's arrival time, route and the status it got.
pub type Arrivals = Arc<Mutex<Vec<(Instant, String, u16)>>>;

/// Forwards every request to `target` and stamps its arrival.
#[derive(Clone)]
struct Proxy {
    target: String,
    client: reqwest::Client,
    arrivals: Arrivals,
}

async fn forward(
    axum::extract::State(proxy): axum::extract::State<Proxy>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut upstream = proxy
        .client
        .request(parts.method.clone(), format!("{}{}", proxy.target, path))
        .body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.unwrap();
    let status = answer.status();
    proxy.arrivals.lock().unwrap().push((
        arrived,
        format!("{} {}", parts.method, parts.uri.path()),
        status.as_u16(),
    ));
    let mut response = axum::response::Response::builder().status(status);
    for (name, value) in answer.headers() {
        response = response.header(name, value);
    }
    response
        .body(axum::body::Body::from(answer.bytes().await.unwrap()))
        .unwrap()
}

/// Start a proxy in front of `target`; returns its URL and the arrivals it stamps.
pub async fn start_proxy(target: String) -> (String, Arrivals) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let proxy = Proxy {
        target,
        client: reqwest::Client::new(),
        arrivals: arrivals.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, arrivals)
}
