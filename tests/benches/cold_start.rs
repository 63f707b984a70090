//! Cold start and memory of the three release binaries, each run as Lambda runs it: a
//! process started with `AWS_LAMBDA_RUNTIME_API` pointing at a minimal Runtime API
//! emulator (benches/support), talking to the sandbox's emulated TRIFFT and Klaviyo.
//!
//! Per run it measures init (process start to the first `GET .../invocation/next`), the
//! first invocation (queued -> response), warm invocations, and peak RSS (VmHWM) after
//! them. Repeated runs give the median and the spread.
//!
//! Two set-ups per function:
//! - `sandbox`: secrets from `SANDBOX_SECRETS_JSON`, state in memory; full invocations.
//! - `aws`: `BRIDGE_SECRET_ARN` (and `STATE_TABLE_NAME`) set, as deployed, so init loads the
//!   AWS config and builds the SDK clients; nothing is contacted at init (secrets are
//!   fetched lazily), so only init time and RSS at init are measured there.
//!
//! Run: `scripts/bench cold-start` (builds the release binaries first), or
//! `cargo build --release -p klaviyo-webhook -p custom-events -p standard-sync &&
//!  cargo bench -p e2e-tests --bench cold_start`. `COLD_START_RUNS` sets the runs (10).
//! A benchmark, not a test: it reports numbers and asserts nothing about time.

mod support;

use std::time::Duration;

use axum::body::Bytes;
use serde_json::Value;
use support::{
    RuntimeApi, median, peak_rss_kib, release_binary, release_dir, spawn_function, stats,
};

const WARM_INVOCATIONS: usize = 20;
const TIMEOUT: Duration = Duration::from_secs(30);

struct Function {
    binary: &'static str,
    event: &'static str,
    /// A text in the request body made unique per invocation (idempotency key, event id),
    /// so warm invocations do real work instead of answering "already done".
    unique: Option<&'static str>,
    /// Variables of the deployed (`aws`) set-up besides the secret ARN.
    aws_env: &'static [(&'static str, &'static str)],
}

const FUNCTIONS: [Function; 3] = [
    Function {
        binary: "klaviyo-webhook",
        event: "events/klaviyo-webhook/credit_points.json",
        unique: Some("birthday-2026-"),
        aws_env: &[("STATE_TABLE_NAME", "bench-state")],
    },
    Function {
        binary: "custom-events",
        event: "events/custom-events/challenge-completed.json",
        unique: Some("evt-ch-20260720-0001"),
        aws_env: &[],
    },
    Function {
        binary: "standard-sync",
        event: "events/standard-sync/scheduler-incremental.json",
        unique: None,
        aws_env: &[("STATE_TABLE_NAME", "bench-state")],
    },
];

/// The event with `unique` in its HTTP body replaced by `unique` + `tag`.
fn event_for(template: &Value, unique: Option<&str>, tag: &str) -> Bytes {
    let mut event = template.clone();
    if let (Some(needle), Some(body)) = (unique, template.get("body").and_then(Value::as_str)) {
        event["body"] = Value::String(body.replace(needle, &format!("{needle}{tag}-")));
    }
    Bytes::from(event.to_string())
}

#[derive(Default)]
struct Samples {
    init_ms: Vec<f64>,
    first_ms: Vec<f64>,
    warm_ms: Vec<f64>,
    rss_mib: Vec<f64>,
    init_rss_mib: Vec<f64>,
    /// Outcome of every invocation: "ok 200", "ok 202", "error", ...
    outcomes: std::collections::BTreeMap<String, usize>,
}

fn outcome(answer: &support::Answer) -> String {
    match (answer.ok, answer.http_status()) {
        (true, Some(status)) => format!("http {status}"),
        (true, None) => "ok".into(),
        (false, _) => format!(
            "error {}",
            String::from_utf8_lossy(&answer.body)
                .chars()
                .take(160)
                .collect::<String>()
        ),
    }
}

async fn run_sandbox(
    f: &Function,
    template: &Value,
    env: &[(String, String)],
    run: usize,
    s: &mut Samples,
) {
    let api = RuntimeApi::start().await;
    let started = std::time::Instant::now();
    let mut child = spawn_function(&release_binary(f.binary), &api, f.binary, 128, env, None);
    let pid = child.id().unwrap_or(0);
    let Some(init_at) = api.wait_for_init(&mut child).await else {
        panic!("{} did not finish its init", f.binary);
    };
    s.init_ms
        .push(init_at.duration_since(started).as_secs_f64() * 1e3);
    s.init_rss_mib
        .push(peak_rss_kib(pid).unwrap_or(f64::NAN) / 1024.0);

    let first = api
        .invoke(
            "first",
            &event_for(template, f.unique, &format!("r{run}-first")),
            TIMEOUT,
        )
        .await;
    s.first_ms.push(first.millis());
    *s.outcomes.entry(outcome(&first)).or_default() += 1;
    for i in 0..WARM_INVOCATIONS {
        let event = event_for(template, f.unique, &format!("r{run}-w{i}"));
        let answer = api.invoke(&format!("warm-{i}"), &event, TIMEOUT).await;
        s.warm_ms.push(answer.millis());
        *s.outcomes.entry(outcome(&answer)).or_default() += 1;
    }
    s.rss_mib
        .push(peak_rss_kib(pid).unwrap_or(f64::NAN) / 1024.0);
    let _ = child.kill().await;
}

async fn run_aws_init(f: &Function, s: &mut Samples) {
    let api = RuntimeApi::start().await;
    let mut env: Vec<(String, String)> = [
        (
            "BRIDGE_SECRET_ARN",
            "arn:aws:secretsmanager:us-east-1:000000000000:secret:bench",
        ),
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_SESSION_TOKEN", "bench"),
        // Nothing may be contacted at init; a request would fail here, not hang.
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ]
    .iter()
    .chain(f.aws_env)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push(("SECRETS_CACHE_SECONDS".into(), "300".into()));
    let started = std::time::Instant::now();
    let mut child = spawn_function(&release_binary(f.binary), &api, f.binary, 128, &env, None);
    let pid = child.id().unwrap_or(0);
    let Some(init_at) = api.wait_for_init(&mut child).await else {
        panic!("{} did not finish its init with the AWS set-up", f.binary);
    };
    s.init_ms
        .push(init_at.duration_since(started).as_secs_f64() * 1e3);
    s.init_rss_mib
        .push(peak_rss_kib(pid).unwrap_or(f64::NAN) / 1024.0);
    let _ = child.kill().await;
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("COLD_START_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (root, _) = release_dir();
    let sandbox = sandbox::Sandbox::start(sandbox::SandboxConfig {
        members: 50,
        events: 200,
        klaviyo_rates: sandbox::KlaviyoRates::Unlimited,
        // Generous: 21 invocations a run must not hit TRIFFT's lockout.
        trifft_rate: (100_000, Duration::from_secs(10)),
        // A bulk import job completes at once, so the sync's read-back does not wait.
        import_job_processing: Duration::ZERO,
        record_in_memory: false,
        ..Default::default()
    })
    .await
    .expect("start the sandbox");
    let secrets = serde_json::json!({
        "klaviyo_private_key": "pk_sandbox_0123456789abcdef",
        "trifft_api_token": "trifft_sandbox_token",
        "klaviyo_webhook_secret": "sandbox-hook-secret",
        "custom_events_secret": "sandbox-custom-secret",
    })
    .to_string();
    let env = vec![
        ("SANDBOX_SECRETS_JSON".to_string(), secrets),
        ("KLAVIYO_BASE_URL".to_string(), sandbox.klaviyo_url()),
        ("TRIFFT_BASE_URL".to_string(), sandbox.trifft_url()),
        ("IMPORT_JOB_POLL_SECONDS".to_string(), "1".to_string()),
    ];

    println!(
        "cold start and memory: {runs} runs per function and set-up, {WARM_INVOCATIONS} warm invocations a run"
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    for f in &FUNCTIONS {
        let text = std::fs::read_to_string(root.join(f.event))
            .unwrap_or_else(|e| panic!("{}: {e}", f.event));
        let template: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.event));
        let mut sandboxed = Samples::default();
        let mut aws = Samples::default();
        for run in 0..runs {
            run_sandbox(f, &template, &env, run, &mut sandboxed).await;
            run_aws_init(f, &mut aws).await;
        }
        let size = std::fs::metadata(release_binary(f.binary))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "{} (binary {:.2} MiB, event {})",
            f.binary,
            size as f64 / 1048576.0,
            f.event
        );
        println!("  sandbox init ms        {}", stats(&sandboxed.init_ms));
        println!(
            "  sandbox RSS at init MiB {}",
            stats(&sandboxed.init_rss_mib)
        );
        println!("  first invoke ms        {}", stats(&sandboxed.first_ms));
        println!("  warm invoke ms         {}", stats(&sandboxed.warm_ms));
        println!("  peak RSS MiB           {}", stats(&sandboxed.rss_mib));
        println!("  answers                {:?}", sandboxed.outcomes);
        println!("  aws init ms            {}", stats(&aws.init_ms));
        println!("  aws RSS at init MiB    {}", stats(&aws.init_rss_mib));
        println!(
            "  summary {} init_ms={:.2} aws_init_ms={:.2} first_ms={:.2} warm_ms={:.2} peak_rss_mib={:.2}",
            f.binary,
            median(&sandboxed.init_ms),
            median(&aws.init_ms),
            median(&sandboxed.first_ms),
            median(&sandboxed.warm_ms),
            median(&sandboxed.rss_mib)
        );
    }
    sandbox.stop().await;
}
