//! Fault soak: 20 seeded runs of the sync and both webhook functions against the sandbox
//! with injected faults (12 % 5xx, 3 % 429 plus a 429 storm with Retry-After / TRIFFT's
//! lockout, 5 % dropped connections, 0-40 ms extra latency on every request).
//!
//! After each run: every deliverable TRIFFT event stored in Klaviyo exactly once by
//! unique_id (a re-send Klaviyo drops is fine, a second stored copy is not), every profile
//! at its member's latest values; every webhook delivery answered either finally (202, or
//! 200 for a duplicate) or retryably (429/500/502/503), retried as Klaviyo / TRIFFT would,
//! and applied exactly once in the end.

use std::sync::Arc;
use std::time::Duration;

use e2e_tests::reliability::{
    Answer, KLAVIYO_RETRIES, applied_by_reason, call_custom, call_webhook, custom_deps,
    custom_request, deliver_until_final, event_delivery, small_sandbox, stale_profiles, sync_deps,
    sync_to_the_end, webhook_deps, webhook_request,
};
use loyalty_bridge::state::MemoryStateStore;
use sandbox::{FaultTarget, Faults};
use serde_json::json;

const RUNS: u64 = 20;
const MEMBERS: usize = 30;
const EVENTS: usize = 120;
const WEBHOOKS_PER_RUN: usize = 4;
const CUSTOM_PER_RUN: usize = 3;
/// Deliveries of one request before giving up (Klaviyo tries up to 17 times).
const MAX_DELIVERIES: usize = 12;

fn faults(seed: u64) -> Faults {
    Faults {
        seed,
        target: FaultTarget::Both,
        error_rate: 0.12,
        throttle_rate: 0.03,
        storm: Some((3, 6)),
        latency: Some((Duration::ZERO, Duration::from_millis(40))),
        drop_rate: 0.05,
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    requests: u64,
    server_errors: u64,
    throttled: u64,
    dropped: u64,
    events_expected: usize,
    events_stored: usize,
    lost: usize,
    doubled: usize,
    duplicates_dropped: u64,
    profiles_checked: usize,
    stale_profiles: usize,
    sync_runs: usize,
    sync_retries: u64,
    deliveries: usize,
    retryable_answers: usize,
    requests_applied_once: usize,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.server_errors += o.server_errors;
        self.throttled += o.throttled;
        self.dropped += o.dropped;
        self.events_expected += o.events_expected;
        self.events_stored += o.events_stored;
        self.lost += o.lost;
        self.doubled += o.doubled;
        self.duplicates_dropped += o.duplicates_dropped;
        self.profiles_checked += o.profiles_checked;
        self.stale_profiles += o.stale_profiles;
        self.sync_runs += o.sync_runs;
        self.sync_retries += o.sync_retries;
        self.deliveries += o.deliveries;
        self.retryable_answers += o.retryable_answers;
        self.requests_applied_once += o.requests_applied_once;
    }
}

/// Every answer is final-and-good or retryable, and the last one is final-and-good.
fn check_answers(what: &str, answers: &[Answer], totals: &mut Totals) -> Result<(), String> {
    totals.deliveries += answers.len();
    for a in answers {
        if KLAVIYO_RETRIES.contains(&a.status) {
            totals.retryable_answers += 1;
        } else if ![200, 202].contains(&a.status) {
            return Err(format!("{what}: answered {} {}", a.status, a.body));
        }
    }
    match answers.last() {
        Some(a) if [200, 202].contains(&a.status) => Ok(()),
        last => Err(format!(
            "{what}: not done after {} deliveries: {last:?}",
            answers.len()
        )),
    }
}

async fn soak_run(seed: u64) -> (Totals, Vec<String>) {
    let mut problems = Vec::new();
    let mut totals = Totals::default();
    let totals = &mut totals;
    let sb = small_sandbox(1000 + seed, MEMBERS, EVENTS, faults(seed)).await;

    // standard-sync, re-run as the schedule would until its feeds are done.
    let sync = sync_deps(&sb, Arc::new(MemoryStateStore::new()));
    let summaries = sync_to_the_end(&sync, Duration::from_secs(120), 10).await;
    totals.sync_runs += summaries.len();
    totals.sync_retries += summaries.iter().map(|s| s.retries).sum::<u64>();
    let d = event_delivery(&sb);
    totals.events_expected += d.expected;
    totals.events_stored += d.stored;
    totals.lost += d.lost;
    totals.doubled += d.doubled;
    totals.duplicates_dropped += d.duplicates_dropped;
    if d.lost > 0 || d.doubled > 0 || d.expected == 0 {
        problems.push(format!("seed {seed}: sync delivery {d:?}"));
    }
    let (stale, checked) = stale_profiles(&sb);
    totals.profiles_checked += checked;
    totals.stale_profiles += stale.len();
    if !stale.is_empty() || checked < MEMBERS / 2 {
        problems.push(format!(
            "seed {seed}: {} stale of {checked} profiles, e.g. {:?}",
            stale.len(),
            stale.first()
        ));
    }

    // klaviyo-webhook: each request retried like Klaviyo until final, applied once.
    let webhook = webhook_deps(&sb, Arc::new(MemoryStateStore::new()));
    let members: Vec<String> = sb
        .trifft()
        .members
        .iter()
        .take(WEBHOOKS_PER_RUN)
        .map(|m| m.id.clone())
        .collect();
    for (i, member) in members.iter().enumerate() {
        let reason = format!("soak-{seed}-{i}");
        let body = json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 10 + i, "reason": reason});
        let answers = deliver_until_final(MAX_DELIVERIES, || {
            call_webhook(&webhook, webhook_request(&body))
        })
        .await;
        if let Err(e) = check_answers(&format!("seed {seed} webhook {i}"), &answers, totals) {
            problems.push(e);
        }
    }
    let applied = applied_by_reason(&sb);
    for i in 0..members.len() {
        let n = applied
            .get(&format!("soak-{seed}-{i}"))
            .copied()
            .unwrap_or(0);
        if n == 1 {
            totals.requests_applied_once += 1;
        } else {
            problems.push(format!("seed {seed} webhook {i}: applied {n} times"));
        }
    }

    // custom-events: each retried like TRIFFT's webhook until final, stored once.
    let custom = custom_deps(&sb);
    for i in 0..CUSTOM_PER_RUN {
        let unique_id = format!("soak-ce-{seed}-{i}");
        let body = json!({
            "event": "streak_reached", "id": unique_id, "occurred_at": chrono::Utc::now().to_rfc3339(),
            "member": {"id": format!("custom-soak-member-{seed}")},
            "streak": {"days": 7 + i, "kind": "visits"}
        });
        let answers = deliver_until_final(MAX_DELIVERIES, || {
            call_custom(&custom, custom_request(&body))
        })
        .await;
        if let Err(e) = check_answers(&format!("seed {seed} custom {i}"), &answers, totals) {
            problems.push(e);
        }
        let stored = sb
            .klaviyo()
            .events
            .iter()
            .filter(|e| e.unique_id.as_deref() == Some(unique_id.as_str()))
            .count();
        if stored == 1 {
            totals.requests_applied_once += 1;
        } else {
            problems.push(format!("seed {seed} custom {i}: stored {stored} times"));
        }
    }

    let (k, t) = (sb.klaviyo(), sb.trifft());
    totals.requests +=
        k.request_counts.values().sum::<u64>() + t.request_counts.values().sum::<u64>();
    totals.server_errors += k.server_errors + t.server_errors;
    totals.throttled += k.throttled + t.throttled;
    totals.dropped += k.dropped + t.dropped;
    sb.stop().await;
    (*totals, problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_seeded_fault_runs_lose_nothing_and_double_nothing() {
    // The runs wait on retries far more than they compute: five at a time.
    let gate = Arc::new(tokio::sync::Semaphore::new(5));
    let runs: Vec<_> = (0..RUNS)
        .map(|seed| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                soak_run(seed).await
            })
        })
        .collect();
    let mut totals = Totals::default();
    let mut problems = Vec::new();
    for run in runs {
        let (t, p) = run.await.expect("a soak run panicked");
        totals.add(&t);
        problems.extend(p);
    }
    let figures = json!({
        "runs": RUNS,
        "upstream_requests": totals.requests,
        "faults_injected": {"5xx": totals.server_errors, "429": totals.throttled, "dropped": totals.dropped},
        "events_expected": totals.events_expected,
        "events_stored": totals.events_stored,
        "lost": totals.lost,
        "doubled": totals.doubled,
        "klaviyo_duplicates_dropped": totals.duplicates_dropped,
        "profiles_checked": totals.profiles_checked,
        "stale_profiles": totals.stale_profiles,
        "sync_runs": totals.sync_runs,
        "sync_retries": totals.sync_retries,
        "webhook_deliveries": totals.deliveries,
        "retryable_answers": totals.retryable_answers,
        "requests_applied_exactly_once": totals.requests_applied_once,
    });
    eprintln!("fault soak figures: {figures}");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-faults.json");
    let _ = std::fs::write(&out, figures.to_string());

    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!((totals.lost, totals.doubled), (0, 0));
    assert_eq!(
        totals.requests_applied_once,
        RUNS as usize * (WEBHOOKS_PER_RUN + CUSTOM_PER_RUN)
    );
    // The faults were really there, at the rates asked for.
    assert!(
        totals.server_errors as f64 >= 0.08 * totals.requests as f64,
        "{} 5xx of {} requests",
        totals.server_errors,
        totals.requests
    );
    assert!(totals.throttled > 0 && totals.dropped > 0, "{totals:?}");
    assert!(totals.retryable_answers > 0 || totals.sync_retries > 0);
}
