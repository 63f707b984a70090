//! What the benchmarks share: a minimal Lambda Runtime API emulator, starting a release
//! binary under it the way Lambda does, and reading a process's peak RSS.
//!
//! The emulator serves the four Runtime API routes the runtime client uses
//! (`invocation/next`, `.../response`, `.../error`, `init/error`); one invocation is
//! handed out per `next`, with the request id, deadline, function ARN and trace headers.

#![allow(dead_code)] // each bench binary uses a part

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::sync::{Mutex, mpsc, oneshot};

/// One queued invocation: request id, event, time the function may run.
struct Queued {
    id: String,
    event: Bytes,
    timeout: Duration,
}

/// How an invocation ended.
#[derive(Debug)]
pub struct Answer {
    /// `response` (true) or `error` (false) was posted.
    pub ok: bool,
    pub body: Bytes,
    /// When the invocation was queued and when its answer arrived.
    pub sent: Instant,
    pub answered: Instant,
}

impl Answer {
    pub fn millis(&self) -> f64 {
        self.answered.duration_since(self.sent).as_secs_f64() * 1e3
    }

    /// The API Gateway `statusCode` of an HTTP function's answer, if it has one.
    pub fn http_status(&self) -> Option<u64> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("statusCode")?
            .as_u64()
    }
}

/// Where an invocation's answer goes: (response posted, body, when).
type AnswerSender = oneshot::Sender<(bool, Bytes, Instant)>;

struct Shared {
    queue: Mutex<mpsc::UnboundedReceiver<Queued>>,
    waiting: Mutex<HashMap<String, AnswerSender>>,
    first_next_at: Mutex<Option<Instant>>,
    init_error: Mutex<Option<String>>,
}

/// A Runtime API for one function process.
pub struct RuntimeApi {
    shared: Arc<Shared>,
    queue: mpsc::UnboundedSender<Queued>,
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

async fn next(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared
        .first_next_at
        .lock()
        .await
        .get_or_insert_with(Instant::now);
    // One `next` at a time takes the receiver; the runtime client polls sequentially.
    let queued = shared.queue.lock().await.recv().await;
    let Some(q) = queued else {
        return (StatusCode::GONE, HeaderMap::new(), Bytes::new());
    };
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + q.timeout;
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("lambda-runtime-aws-request-id", q.id),
        (
            "lambda-runtime-deadline-ms",
            deadline.as_millis().to_string(),
        ),
        (
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:000000000000:function:bench".into(),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-00000000-000000000000000000000000".into(),
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    (StatusCode::OK, headers, q.event)
}

async fn finish(shared: &Shared, id: &str, ok: bool, body: Bytes) -> StatusCode {
    let at = Instant::now();
    match shared.waiting.lock().await.remove(id) {
        Some(tx) => {
            let _ = tx.send((ok, body, at));
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn respond(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    finish(&shared, &id, true, body).await
}

async fn fail(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    finish(&shared, &id, false, body).await
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    *shared.init_error.lock().await = Some(String::from_utf8_lossy(&body).into_owned());
    StatusCode::ACCEPTED
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(rx),
            waiting: Mutex::new(HashMap::new()),
            first_next_at: Mutex::new(None),
            init_error: Mutex::new(None),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the runtime api");
        let addr = listener.local_addr().expect("runtime api address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RuntimeApi {
            shared,
            queue: tx,
            addr,
            server,
        }
    }

    /// When the function first asked for work (the end of its init).
    pub async fn first_next_at(&self) -> Option<Instant> {
        *self.shared.first_next_at.lock().await
    }

    /// Wait until the function asks for work; `None` if it exits or reports an init error first.
    pub async fn wait_for_init(&self, child: &mut tokio::process::Child) -> Option<Instant> {
        loop {
            if let Some(at) = self.first_next_at().await {
                return Some(at);
            }
            if let Some(e) = self.shared.init_error.lock().await.clone() {
                eprintln!("init error: {e}");
                return None;
            }
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("the function exited during init: {status}");
                return None;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// Hand out one invocation with `timeout` to run and wait for its answer. Panics when
    /// none comes within the timeout and a minute (a hung function is a broken benchmark).
    pub async fn invoke(&self, id: &str, event: &Bytes, timeout: Duration) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.shared.waiting.lock().await.insert(id.to_string(), tx);
        let sent = Instant::now();
        let queued = Queued {
            id: id.to_string(),
            event: event.clone(),
            timeout,
        };
        if self.queue.send(queued).is_err() {
            panic!("the runtime api is gone");
        }
        match tokio::time::timeout(timeout + Duration::from_secs(60), rx).await {
            Ok(Ok((ok, body, answered))) => Answer {
                ok,
                body,
                sent,
                answered,
            },
            _ => panic!("invocation {id} got no answer"),
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Start `bin` as Lambda starts a function: a clean environment with the `AWS_LAMBDA_*`
/// variables and `AWS_LAMBDA_RUNTIME_API`, plus `env`. Output goes to `log` (or nowhere).
pub fn spawn_function(
    bin: &Path,
    api: &RuntimeApi,
    name: &str,
    memory_mb: u32,
    env: &[(String, String)],
    log: Option<&Path>,
) -> tokio::process::Child {
    let (stdout, stderr) = match log.and_then(|p| std::fs::File::create(p).ok()) {
        Some(file) => match file.try_clone() {
            Ok(copy) => (Stdio::from(file), Stdio::from(copy)),
            Err(_) => (Stdio::null(), Stdio::null()),
        },
        None => (Stdio::null(), Stdio::null()),
    };
    tokio::process::Command::new(bin)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string())
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .envs(env.iter().cloned())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()))
}

/// Peak resident set size of a live process in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) a live process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The workspace root and the release directory the binaries were built into.
pub fn release_dir() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    (root, target.join("release"))
}

/// The release binary `name`, or a panic saying how to build it.
pub fn release_binary(name: &str) -> PathBuf {
    let bin = release_dir().1.join(name);
    if !bin.exists() {
        panic!(
            "{} is not built: cargo build --release -p klaviyo-webhook -p standard-sync -p custom-events",
            bin.display()
        );
    }
    bin
}

/// Median, min and max of `values`, as text.
pub fn stats(values: &[f64]) -> String {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => "-".into(),
        n => format!(
            "median {:.2} (min {:.2}, max {:.2}, n {n})",
            median_sorted(&v),
            v[0],
            v[n - 1]
        ),
    }
}

fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        f64::NAN
    } else {
        median_sorted(&v)
    }
}
