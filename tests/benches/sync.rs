//! Sync efficiency against the vendors' limits: the standard-sync release binary, run as
//! Lambda runs it (Runtime API emulator in benches/support), does one backfill of the
//! sandbox's whole data set with Klaviyo's real per-endpoint rate tiers and TRIFFT's real
//! 50 requests per 10 s.
//!
//! Per size it reports:
//! - Klaviyo requests sent (the sandbox's own count per route) vs the minimum the count
//!   and size limits allow, computed from the data Klaviyo received: per kind
//!   max(ceil(items / items-per-request), ceil(body bytes / 5 MiB)).
//! - Wall time vs the rate-limit floor: for every rate-limited resource, n requests (the
//!   minimum n) under a limit of L per period T cannot span less than floor((n-1)/L) x T;
//!   the floor is the largest of these (TRIFFT feed pages, each Klaviyo endpoint's burst
//!   and steady tier).
//! - TRIFFT requests vs the pages the data needs, and the 429s/lockouts it answered.
//! - Peak memory of the sync process itself (VmHWM of the release binary), not of the
//!   sandbox, which runs in this benchmark's process.
//!
//! Run: `scripts/bench sync`, or `cargo build --release -p standard-sync &&
//! cargo bench -p e2e-tests --bench sync`. `SYNC_SIZES=10000x50000,100000x500000` sets
//! the sizes (members x events); `SYNC_TRIFFT_SHARE` the sync's share of TRIFFT's 50
//! requests per 10 s (`TRIFFT_RATE_LIMIT_PER_10S`; default 50: nothing else calls TRIFFT
//! here; the client's own default is 45 and the template gives the sync 35). Not a test: it reports, it asserts nothing about time.

mod support;

/// The sandbox runs in this process, on the same cores as the sync it serves, and builds
/// and drops JSON trees for every request; glibc's malloc made that a third of its time.
/// A faster allocator keeps the emulators' own cost from passing for Klaviyo's and
/// TRIFFT's latency. The sync binary keeps the system allocator, as deployed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use serde_json::Value;
use support::{RuntimeApi, cpu_seconds, peak_rss_kib, release_binary, release_dir, spawn_function};

/// Klaviyo's documented limits (reference: klaviyo.md §3-§5; OpenAPI `x-klaviyo-ratelimit`).
const EVENTS_PER_REQUEST: usize = 1_000;
const PROFILES_PER_REQUEST: usize = 10_000;
const BODY_MAX_BYTES: usize = 5 * 1024 * 1024;
/// (burst per 1 s, steady per 60 s) of the bulk event and bulk profile job endpoints.
const BULK_TIER: (u32, u32) = (10, 150);
/// TRIFFT: 50 requests per 10 s; feed pages of at most 1,000 items.
const TRIFFT_LIMIT: (u32, Duration) = (50, Duration::from_secs(10));
const PAGE_SIZE: usize = 1_000;
/// Lambda's longest timeout.
const LAMBDA_TIMEOUT: Duration = Duration::from_secs(900);

/// The sync's share of TRIFFT's limit (requests per 10 s).
fn trifft_share() -> u32 {
    std::env::var("SYNC_TRIFFT_SHARE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=TRIFFT_LIMIT.0).contains(n))
        .unwrap_or(TRIFFT_LIMIT.0)
}

/// The shortest time `n` requests can span under "at most `limit` in any `period`".
fn span_floor(n: u64, limit: u32, period: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    period * ((n - 1) / u64::from(limit)) as u32
}

fn tier_floor(n: u64, tier: (u32, u32)) -> Duration {
    tier_floor_stretched(n, tier, |period| period)
}

fn tier_floor_stretched(
    n: u64,
    (burst, steady): (u32, u32),
    stretch: impl Fn(Duration) -> Duration,
) -> Duration {
    span_floor(n, burst, stretch(Duration::from_secs(1))).max(span_floor(
        n,
        steady,
        stretch(Duration::from_secs(60)),
    ))
}

/// What Klaviyo received, from the sandbox's recording, each distinct body once (a
/// retried request repeats its body; it is counted in the requests, not in the data).
#[derive(Debug, Default)]
struct Received {
    event_bodies: u64,
    events: u64,
    event_bytes: u64,
    profile_bodies: u64,
    profiles: u64,
    profile_bytes: u64,
}

fn received(writes: &Path) -> Received {
    let mut r = Received::default();
    let mut seen = HashSet::new();
    let file = std::fs::File::open(writes).unwrap_or_else(|e| panic!("{}: {e}", writes.display()));
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        let Ok(request) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let path = request["path"].as_str().unwrap_or_default().to_string();
        let body = serde_json::to_vec(&request["body"]).unwrap_or_default();
        let mut hasher = DefaultHasher::new();
        (&path, &body).hash(&mut hasher);
        if !seen.insert(hasher.finish()) {
            continue;
        }
        let data = &request["body"]["data"]["attributes"];
        if path.starts_with("/api/event-bulk-create-jobs") {
            r.event_bodies += 1;
            r.event_bytes += body.len() as u64;
            for entry in data["events-bulk-create"]["data"]
                .as_array()
                .into_iter()
                .flatten()
            {
                r.events += entry["attributes"]["events"]["data"]
                    .as_array()
                    .map_or(0, Vec::len) as u64;
            }
        } else if path.starts_with("/api/profile-bulk-import-jobs") {
            r.profile_bodies += 1;
            r.profile_bytes += body.len() as u64;
            r.profiles += data["profiles"]["data"].as_array().map_or(0, Vec::len) as u64;
        }
    }
    r
}

fn min_requests(items: u64, per_request: usize, bytes: u64) -> u64 {
    if items == 0 {
        return 0;
    }
    items
        .div_ceil(per_request as u64)
        .max(bytes.div_ceil(BODY_MAX_BYTES as u64))
}

fn count(counts: &std::collections::BTreeMap<String, u64>, prefix: &str) -> u64 {
    counts
        .iter()
        .filter(|(route, _)| route.starts_with(prefix))
        .map(|(_, n)| n)
        .sum()
}

struct Figures {
    members: usize,
    events: usize,
    wall_s: f64,
    floor_s: f64,
    klaviyo_requests: u64,
    klaviyo_min: u64,
    rss_mib: f64,
}

async fn run(members: usize, events: usize) -> Figures {
    let dir = std::env::temp_dir().join(format!(
        "bridge-bench-sync-{}-{members}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let generating = std::time::Instant::now();
    let sandbox = sandbox::Sandbox::start(sandbox::SandboxConfig {
        members,
        events,
        klaviyo_rates: sandbox::KlaviyoRates::Real,
        trifft_rate: TRIFFT_LIMIT,
        record_dir: Some(dir.clone()),
        record_in_memory: false,
        ..Default::default()
    })
    .await
    .expect("start the sandbox");
    println!(
        "\n== {members} members / {events} events (sandbox data generated in {:.1} s)",
        generating.elapsed().as_secs_f64()
    );

    let secrets = serde_json::json!({
        "klaviyo_private_key": "pk_sandbox_0123456789abcdef",
        "trifft_api_token": "trifft_sandbox_token",
    })
    .to_string();
    let env = vec![
        ("SANDBOX_SECRETS_JSON".to_string(), secrets),
        ("KLAVIYO_BASE_URL".to_string(), sandbox.klaviyo_url()),
        ("TRIFFT_BASE_URL".to_string(), sandbox.trifft_url()),
        ("TRIFFT_PAGE_SIZE".to_string(), PAGE_SIZE.to_string()),
        (
            "TRIFFT_RATE_LIMIT_PER_10S".to_string(),
            trifft_share().to_string(),
        ),
        // As deployed (template.yaml); JSON lines carry their time.
        ("AWS_LAMBDA_LOG_FORMAT".to_string(), "json".to_string()),
        // SYNC_BENCH_LOG=debug logs every request with its time (in the run's directory).
        (
            "RUST_LOG".to_string(),
            std::env::var("SYNC_BENCH_LOG").unwrap_or_else(|_| "warn".to_string()),
        ),
    ];
    let api = RuntimeApi::start().await;
    let log = dir.join("standard-sync.log");
    let mut child = spawn_function(
        &release_binary("standard-sync"),
        &api,
        "standard-sync",
        1024,
        &env,
        Some(&log),
    );
    let pid = child.id().unwrap_or(0);
    if api.wait_for_init(&mut child).await.is_none() {
        panic!("standard-sync did not start; see {}", log.display());
    }
    let (root, _) = release_dir();
    let event = std::fs::read(root.join("events/standard-sync/scheduler-backfill.json"))
        .expect("the backfill event");
    let answer = api
        .invoke("sync", &Bytes::from(event), LAMBDA_TIMEOUT)
        .await;
    let rss_mib = peak_rss_kib(pid).unwrap_or(f64::NAN) / 1024.0;
    let sync_cpu_s = cpu_seconds(pid).unwrap_or(f64::NAN);
    let _ = child.kill().await;
    let summary: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if !answer.ok {
        println!("the sync failed: {}", String::from_utf8_lossy(&answer.body));
    }

    let klaviyo = sandbox.klaviyo();
    let trifft = sandbox.trifft();
    let k = &klaviyo.request_counts;
    let event_posts = count(k, "POST /api/event-bulk-create-jobs");
    let profile_posts = count(k, "POST /api/profile-bulk-import-jobs");
    let job_reads = count(k, "GET /api/profile-bulk-import-jobs");
    let klaviyo_total: u64 = k.values().sum();
    let got = received(&dir.join("klaviyo-writes.jsonl"));
    let min_event_jobs = min_requests(got.events, EVENTS_PER_REQUEST, got.event_bytes);
    let min_profile_jobs = min_requests(got.profiles, PROFILES_PER_REQUEST, got.profile_bytes);
    // Each accepted import job is read back at least once to learn its failures.
    let klaviyo_min = min_event_jobs + 2 * min_profile_jobs;

    let member_pages = (members.max(1)).div_ceil(PAGE_SIZE) as u64;
    let event_pages = (events.max(1)).div_ceil(PAGE_SIZE) as u64;
    let trifft_min = member_pages + event_pages;
    let trifft_total: u64 = trifft.request_counts.values().sum();

    let trifft_floor = span_floor(trifft_min, TRIFFT_LIMIT.0, TRIFFT_LIMIT.1);
    let events_floor = tier_floor(min_event_jobs, BULK_TIER);
    let profiles_floor = tier_floor(min_profile_jobs, BULK_TIER);
    let floor = trifft_floor.max(events_floor).max(profiles_floor);
    // What the client's own pacing allows: its TRIFFT share, every window stretched by
    // 1 % + 100 ms (shared/src/pacing.rs).
    let stretch = |period: Duration| period + period / 100 + Duration::from_millis(100);
    let client_floor = span_floor(trifft_min, trifft_share(), stretch(TRIFFT_LIMIT.1))
        .max(tier_floor_stretched(min_event_jobs, BULK_TIER, stretch))
        .max(tier_floor_stretched(min_profile_jobs, BULK_TIER, stretch));
    let wall = answer.answered.duration_since(answer.sent);

    println!(
        "sync answer: {} in {:.2} s; completed={} duration_ms={}",
        if answer.ok { "ok" } else { "ERROR" },
        wall.as_secs_f64(),
        summary["completed"],
        summary["duration_ms"]
    );
    println!(
        "  summary: members={} profiles_sent={} profiles_failed={} events_read={} events_sent={} events_skipped={} duplicates_dropped={} profile_jobs={} event_jobs={} klaviyo_requests={} trifft_requests={} retries={} throttles={}",
        summary["members"],
        summary["profiles_sent"],
        summary["profiles_failed"],
        summary["events_read"],
        summary["events_sent"],
        summary["events_skipped"],
        summary["duplicates_dropped"],
        summary["profile_jobs"],
        summary["event_jobs"],
        summary["klaviyo_requests"],
        summary["trifft_requests"],
        summary["retries"],
        summary["throttles"]
    );
    println!(
        "  Klaviyo stored: {} events, {} profiles; 429s sent {}",
        klaviyo.events.len(),
        klaviyo.profiles.len(),
        klaviyo.throttled
    );
    println!(
        "  Klaviyo received: {} events in {} distinct bodies ({:.1} MiB, {:.0} B/event), {} profiles in {} bodies ({:.1} MiB, {:.0} B/profile)",
        got.events,
        got.event_bodies,
        got.event_bytes as f64 / 1048576.0,
        got.event_bytes as f64 / got.events.max(1) as f64,
        got.profiles,
        got.profile_bodies,
        got.profile_bytes as f64 / 1048576.0,
        got.profile_bytes as f64 / got.profiles.max(1) as f64
    );
    println!("  Klaviyo requests by route: {k:?}");
    println!(
        "  Klaviyo requests: event jobs {event_posts} (min {min_event_jobs}), profile jobs {profile_posts} (min {min_profile_jobs}), job reads {job_reads} (min {min_profile_jobs}); total {klaviyo_total} vs min {klaviyo_min} = {:.3}x (target <= 1.02x); writes {} vs min {} = {:.3}x",
        klaviyo_total as f64 / klaviyo_min.max(1) as f64,
        event_posts + profile_posts,
        min_event_jobs + min_profile_jobs,
        (event_posts + profile_posts) as f64 / (min_event_jobs + min_profile_jobs).max(1) as f64
    );
    println!(
        "  TRIFFT requests: {trifft_total} vs {trifft_min} pages needed ({member_pages} members + {event_pages} events) = {:.3}x; 429s {}, lockouts {} (limit {} per {} s)",
        trifft_total as f64 / trifft_min.max(1) as f64,
        trifft.throttled,
        trifft.lockouts,
        TRIFFT_LIMIT.0,
        TRIFFT_LIMIT.1.as_secs()
    );
    println!(
        "  floor: TRIFFT {:.1} s, Klaviyo bulk events {:.1} s, bulk profiles {:.1} s -> {:.1} s; wall {:.2} s = {:.3}x the floor (target <= 1.1x); the client's pacing (TRIFFT share {} per 10 s, windows +1 % +100 ms) alone allows {:.2} s",
        trifft_floor.as_secs_f64(),
        events_floor.as_secs_f64(),
        profiles_floor.as_secs_f64(),
        floor.as_secs_f64(),
        wall.as_secs_f64(),
        wall.as_secs_f64() / floor.as_secs_f64().max(f64::MIN_POSITIVE),
        trifft_share(),
        client_floor.as_secs_f64()
    );
    println!(
        "  peak RSS of the sync process: {rss_mib:.2} MiB (VmHWM of the release binary; target <= 32 MiB for 10k)"
    );
    println!(
        "  CPU: sync process {sync_cpu_s:.2} s; the sandbox shares the machine's {} cores with it",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    sandbox.stop().await;
    if std::env::var_os("SYNC_BENCH_LOG").is_some() {
        println!(
            "  the sync's log and the recorded requests: {}",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Figures {
        members,
        events,
        wall_s: wall.as_secs_f64(),
        floor_s: floor.as_secs_f64(),
        klaviyo_requests: klaviyo_total,
        klaviyo_min,
        rss_mib,
    }
}

fn sizes() -> Vec<(usize, usize)> {
    let text = std::env::var("SYNC_SIZES").unwrap_or_else(|_| "10000x50000,100000x500000".into());
    text.split(',')
        .filter_map(|s| {
            let (m, e) = s.trim().split_once('x')?;
            Some((m.parse().ok()?, e.parse().ok()?))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    println!(
        "standard-sync backfill against the sandbox with real rate limits; {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut all = Vec::new();
    for (members, events) in sizes() {
        all.push(run(members, events).await);
    }
    println!("\nhow cost grows with size:");
    println!(
        "members  events   wall s  floor s  wall/floor  Klaviyo req  min  ratio  peak RSS MiB"
    );
    for f in &all {
        println!(
            "{:>7} {:>7} {:>8.2} {:>8.1} {:>10.3} {:>12} {:>4} {:>6.3} {:>12.2}",
            f.members,
            f.events,
            f.wall_s,
            f.floor_s,
            f.wall_s / f.floor_s.max(f64::MIN_POSITIVE),
            f.klaviyo_requests,
            f.klaviyo_min,
            f.klaviyo_requests as f64 / f.klaviyo_min.max(1) as f64,
            f.rss_mib
        );
    }
}
