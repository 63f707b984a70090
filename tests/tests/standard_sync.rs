//! standard-sync end to end: the real TRIFFT and Klaviyo clients against the sandbox
//! emulators with 10,000 members and 50,000 events, Klaviyo's real rate tiers.
//!
//! Each test checks what the emulators hold afterwards: every valid event exactly once by
//! unique_id, every profile at its member's latest values, and the accepted bulk requests
//! within 2 % of the minimum the limits allow for this data (by count and by bytes).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::reliability::is_standard_kind;
use loyalty_bridge::klaviyo::limits::{BULK_BODY_MAX_BYTES, BULK_EVENTS_MAX, BULK_PROFILES_MAX};
use loyalty_bridge::klaviyo::model::{event_bulk_entry, profile_resource};
use loyalty_bridge::klaviyo::{KlaviyoClient, KlaviyoSettings};
use loyalty_bridge::mapping::standard::{Options, event_to_klaviyo, is_e164, member_to_profile};
use loyalty_bridge::secrets::EnvSecretSource;
use loyalty_bridge::state::MemoryStateStore;
use loyalty_bridge::trifft::{ActivityEvent, Member, TrifftClient, TrifftSettings};
use loyalty_bridge::{Deadline, Error};
use sandbox::{FaultTarget, Faults, KlaviyoRates, Sandbox, SandboxConfig};
use serde_json::Value;
use standard_sync::{Deps, Mode, SyncSettings, SyncSummary, Trigger, run_sync};

const MEMBERS: usize = 10_000;
const EVENTS: usize = 50_000;
struct Setup {
    sandbox: Sandbox,
    deps: Deps,
}

/// `trifft_per_10s`: the emulator's limit, and the client's (a little below it).
async fn start(seed: u64, trifft_per_10s: u32, faults: Faults) -> Setup {
    let sandbox = Sandbox::start(SandboxConfig {
        seed,
        members: MEMBERS,
        events: EVENTS,
        klaviyo_rates: KlaviyoRates::Real,
        trifft_rate: (trifft_per_10s, Duration::from_secs(10)),
        trifft_lockout: Duration::from_secs(2),
        faults,
        ..Default::default()
    })
    .await
    .expect("sandbox starts");
    let secrets = Arc::new(
        EnvSecretSource::new(
            r#"{"klaviyo_private_key": "pk_sandbox_0123456789abcdef", "trifft_api_token": "trifft_sandbox_token"}"#,
        )
        .unwrap(),
    );
    let trifft = TrifftClient::new(
        TrifftSettings {
            base_url: sandbox.trifft_url(),
            rate: (trifft_per_10s * 9 / 10, Duration::from_secs(10)),
            lockout: Duration::from_secs(2),
            ..Default::default()
        },
        secrets.clone(),
    )
    .unwrap();
    let klaviyo = KlaviyoClient::new(
        KlaviyoSettings {
            base_url: sandbox.klaviyo_url(),
            ..Default::default()
        },
        secrets,
    )
    .unwrap();
    let deps = Deps {
        trifft: Arc::new(trifft),
        klaviyo: Arc::new(klaviyo),
        state: Arc::new(MemoryStateStore::new()),
        settings: SyncSettings {
            import_poll_interval: Duration::from_millis(200),
            ..Default::default()
        },
    };
    Setup { sandbox, deps }
}

/// Run until the feeds are done: runs that stop early (deadline) or with a retryable error
/// (faults outlasting the retries) are followed by another, as the schedule would.
async fn sync_to_the_end(
    deps: &Deps,
    mode: Mode,
    budget: Duration,
    max_runs: usize,
) -> Vec<SyncSummary> {
    let mut summaries = Vec::new();
    for _ in 0..max_runs {
        match run_sync(deps, Trigger::direct(mode), Deadline::after(budget)).await {
            Ok(summary) => {
                let done = summary.completed;
                summaries.push(summary);
                if done {
                    return summaries;
                }
            }
            Err(e) => assert!(
                e.is_retryable() && !matches!(e, Error::Conflict(_)),
                "run failed: {e}"
            ),
        }
    }
    panic!("not complete after {max_runs} runs: {summaries:#?}");
}

/// The events the sync must deliver: a standard type and a member to attribute it to.
fn deliverable_event_ids(sandbox: &Sandbox) -> (HashSet<String>, usize) {
    let trifft = sandbox.trifft();
    let ids: HashSet<String> = trifft
        .events
        .iter()
        .filter(|e| is_standard_kind(&e.kind) && !e.member_id.trim().is_empty())
        .map(|e| e.id.clone())
        .collect();
    (ids, trifft.events.len())
}

fn assert_every_event_exactly_once(sandbox: &Sandbox, expect_backfill: bool) {
    let (expected, total) = deliverable_event_ids(sandbox);
    assert!(
        total >= EVENTS && expected.len() > total * 9 / 10,
        "{} of {total} deliverable",
        expected.len()
    );
    let klaviyo = sandbox.klaviyo();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for event in &klaviyo.events {
        *seen
            .entry(
                event
                    .unique_id
                    .as_deref()
                    .expect("every event has a unique_id"),
            )
            .or_default() += 1;
        assert_eq!(event.backfill, expect_backfill, "{:?}", event.unique_id);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let stored: HashSet<String> = seen.keys().map(|k| k.to_string()).collect();
    let missing: Vec<_> = expected.difference(&stored).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} events missing, e.g. {missing:?}",
        expected.len() - stored.len().min(expected.len())
    );
    let extra: Vec<_> = stored.difference(&expected).take(5).collect();
    assert!(
        extra.is_empty(),
        "events that should not be there: {extra:?}"
    );
}

fn assert_every_profile_at_its_latest_values(sandbox: &Sandbox) {
    let (trifft, klaviyo) = (sandbox.trifft(), sandbox.klaviyo());
    let by_external_id: HashMap<&str, &sandbox::KlaviyoProfile> = klaviyo
        .profiles
        .iter()
        .filter_map(|p| p.external_id.as_deref().map(|id| (id, p)))
        .collect();
    // Members sharing an email or phone with another member (a family phone) are one
    // identity as Klaviyo matches profiles, so their profile values are ambiguous.
    let mut owners: HashMap<String, usize> = HashMap::new();
    for m in &trifft.members {
        for key in [m.email.clone(), m.phone.clone().filter(|p| is_e164(p))]
            .into_iter()
            .flatten()
        {
            *owners.entry(key).or_default() += 1;
        }
    }
    let shared = |m: &sandbox::TrifftMember| {
        [m.email.clone(), m.phone.clone()]
            .into_iter()
            .flatten()
            .any(|k| owners.get(&k).is_some_and(|n| *n > 1))
    };
    let mut checked = 0;
    for member in trifft
        .members
        .iter()
        .filter(|m| !m.id.is_empty() && !shared(m))
    {
        let profile = by_external_id
            .get(member.id.as_str())
            .unwrap_or_else(|| panic!("no profile for {}", member.id));
        let p = &profile.properties;
        assert_eq!(
            p.get("trifft_id"),
            Some(&Value::String(member.id.clone())),
            "profile {profile:?} member {member:?}"
        );
        assert_eq!(p["trifft_points"], member.points, "{}", member.id);
        assert_eq!(p["trifft_tier"], member.tier.as_str(), "{}", member.id);
        assert_eq!(
            p["trifft_available_coupons"], member.available_coupons,
            "{}",
            member.id
        );
        assert_eq!(
            p["trifft_segments"],
            serde_json::json!(member.segments),
            "{}",
            member.id
        );
        assert_eq!(
            p["trifft_coupons"],
            Value::Array(member.coupons.clone()),
            "{}",
            member.id
        );
        if let Some(email) = &member.email {
            assert_eq!(
                profile.email.as_deref(),
                Some(email.as_str()),
                "{}",
                member.id
            );
        }
        checked += 1;
    }
    assert!(checked >= MEMBERS * 99 / 100, "{checked} profiles checked");
}

/// The fewest bulk requests the limits allow for this data set: by count and by bytes
/// (a lower bound of the bytes: each profile's / event's own serialized size, without
/// any envelope), for every member and event the mapping accepts.
struct Minimum {
    events: usize,
    profiles: usize,
}

fn minimum_for(sandbox: &Sandbox, mode: Mode) -> Minimum {
    let trifft = sandbox.trifft();
    let (mut profiles, mut profile_bytes) = (0usize, 0usize);
    for member in &trifft.members {
        let member: Member = serde_json::from_value(serde_json::to_value(member).unwrap()).unwrap();
        if let Ok(profile) = member_to_profile(&member) {
            profiles += 1;
            profile_bytes += serde_json::to_vec(&profile_resource(&profile))
                .unwrap()
                .len()
                + 1;
        }
    }
    let options = Options {
        backfill: mode == Mode::Backfill,
        ..Default::default()
    };
    let (mut events, mut event_bytes) = (0usize, 0usize);
    for event in &trifft.events {
        let event: ActivityEvent =
            serde_json::from_value(serde_json::to_value(event).unwrap()).unwrap();
        if let Ok((identity, mapped)) = event_to_klaviyo(&event, &options) {
            events += 1;
            let with = serde_json::to_vec(&event_bulk_entry(&identity, &[&mapped]))
                .unwrap()
                .len();
            let without = serde_json::to_vec(&event_bulk_entry(&identity, &[]))
                .unwrap()
                .len();
            event_bytes += with - without;
        }
    }
    let by = |items: usize, per: usize, bytes: usize| {
        items.div_ceil(per).max(bytes.div_ceil(BULK_BODY_MAX_BYTES))
    };
    Minimum {
        events: by(events, BULK_EVENTS_MAX, event_bytes),
        profiles: by(profiles, BULK_PROFILES_MAX, profile_bytes),
    }
}

/// Accepted bulk requests (summed over the runs) within 2 % of the minimum.
fn assert_requests_near_the_minimum(
    summaries: &[SyncSummary],
    minimum: &Minimum,
) -> (usize, usize) {
    let event_jobs: u64 = summaries.iter().map(|s| s.event_jobs).sum();
    let profile_jobs: u64 = summaries.iter().map(|s| s.profile_jobs).sum();
    let sent = (event_jobs + profile_jobs) as usize;
    let minimum_total = minimum.events + minimum.profiles;
    assert!(sent >= minimum_total, "{sent} < minimum {minimum_total}?");
    assert!(
        sent as f64 <= minimum_total as f64 * 1.02 + 1e-9,
        "{sent} bulk requests ({event_jobs} event, {profile_jobs} profile), minimum {minimum_total} \
         ({} event, {} profile): more than 2 % above",
        minimum.events,
        minimum.profiles
    );
    (sent, minimum_total)
}

fn report(name: &str, summaries: &[SyncSummary], sent_vs_min: (usize, usize), sandbox: &Sandbox) {
    let k = sandbox.klaviyo();
    let wall: u64 = summaries.iter().map(|s| s.duration_ms).sum();
    let total_requests: u64 = summaries.iter().map(|s| s.klaviyo_requests).sum();
    eprintln!(
        "{name}: runs={} bulk_requests={} minimum={} klaviyo_requests_all={} retries={} throttles={} \
         emulator_429={} emulator_5xx={} emulator_dropped={} emulator_duplicates_dropped={} sync_ms={wall}",
        summaries.len(),
        sent_vs_min.0,
        sent_vs_min.1,
        total_requests,
        summaries.iter().map(|s| s.retries).sum::<u64>(),
        summaries.iter().map(|s| s.throttles).sum::<u64>(),
        k.throttled,
        k.server_errors,
        k.dropped,
        k.duplicates_dropped,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_members_and_fifty_thousand_events_arrive_exactly_once() {
    // TRIFFT at its documented limit (50 / 10 s), the client at its default 45.
    let Setup { sandbox, deps } = start(41, 50, Faults::none()).await;
    let summaries = sync_to_the_end(&deps, Mode::Backfill, Duration::from_secs(900), 1).await;
    let summary = &summaries[0];
    assert!(summary.completed);
    assert_every_event_exactly_once(&sandbox, true);
    assert_every_profile_at_its_latest_values(&sandbox);
    let sent_vs_min =
        assert_requests_near_the_minimum(&summaries, &minimum_for(&sandbox, Mode::Backfill));
    let k = sandbox.klaviyo();
    // Without faults, what the emulator received is exactly what the sync counted.
    assert_eq!(
        k.requests("POST /api/event-bulk-create-jobs"),
        summary.event_jobs
    );
    assert_eq!(
        k.requests("POST /api/profile-bulk-import-jobs"),
        summary.profile_jobs
    );
    assert!(k.rejections.is_empty(), "{:?}", k.rejections.first());
    assert_eq!(summary.events_sent as usize, k.events.len());
    assert_eq!(summary.members as usize, sandbox.trifft().members.len());
    assert_eq!(
        summary.throttles, 0,
        "pacing kept every request under the real tiers"
    );
    assert_eq!(sandbox.klaviyo().throttled, 0);
    assert_eq!(sandbox.trifft().throttled, 0);
    assert_eq!(summary.profiles_unverified, 0);
    // The feeds are read in full pages: 10 member pages + 50 event pages (+ an empty last
    // page when a feed ends exactly at a page boundary).
    assert!(summary.trifft_requests <= 62, "{}", summary.trifft_requests);
    report("no faults", &summaries, sent_vs_min, &sandbox);

    // TRIFFT changes between runs: the next incremental run brings the latest values.
    sandbox.change_members(500, 7);
    sandbox.append_events(1_000, 8);
    let checkpoint = deps
        .state
        .load_checkpoint("standard-sync-backfill")
        .await
        .unwrap()
        .unwrap();
    deps.state
        .save_checkpoint("standard-sync", &checkpoint.body, None)
        .await
        .unwrap();
    let next = sync_to_the_end(&deps, Mode::Incremental, Duration::from_secs(300), 1).await;
    assert!(
        next[0].members >= 500 && next[0].members < 1_000,
        "{}",
        next[0].members
    );
    assert_every_profile_at_its_latest_values(&sandbox);
    let klaviyo = sandbox.klaviyo();
    let stored: HashSet<&str> = klaviyo
        .events
        .iter()
        .filter_map(|e| e.unique_id.as_deref())
        .collect();
    let (expected, _) = deliverable_event_ids(&sandbox);
    assert_eq!(stored.len(), klaviyo.events.len(), "no unique_id twice");
    assert!(expected.iter().all(|id| stored.contains(id.as_str())));
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_lose_nothing_and_double_nothing() {
    let faults = Faults {
        seed: 5,
        target: FaultTarget::Both,
        error_rate: 0.05,
        throttle_rate: 0.02,
        // Three 429s in a row (Retry-After honoured), within the client's attempts.
        storm: Some((8, 11)),
        drop_rate: 0.04,
        ..Default::default()
    };
    // A faster TRIFFT limit (with matching client settings) keeps the run short.
    let Setup { sandbox, deps } = start(42, 500, faults).await;
    let summaries = sync_to_the_end(&deps, Mode::Backfill, Duration::from_secs(600), 8).await;
    assert_every_event_exactly_once(&sandbox, true);
    assert_every_profile_at_its_latest_values(&sandbox);
    let sent_vs_min =
        assert_requests_near_the_minimum(&summaries, &minimum_for(&sandbox, Mode::Backfill));
    let (k, t) = (sandbox.klaviyo(), sandbox.trifft());
    let injected = (
        k.server_errors + t.server_errors,
        k.throttled + t.throttled,
        k.dropped + t.dropped,
    );
    assert!(
        injected.0 > 0 && injected.1 > 0 && injected.2 > 0,
        "faults (5xx, 429, drops) injected: {injected:?}"
    );
    assert!(summaries.iter().map(|s| s.retries).sum::<u64>() > 0);
    report("faults", &summaries, sent_vs_min, &sandbox);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_off_mid_way_resumes_from_its_checkpoint() {
    let Setup { sandbox, mut deps } = start(43, 500, Faults::none()).await;
    // A 6 s budget with the minimum 2 s margin: each run ends early; the next continues.
    deps.settings.safety_margin = Duration::from_secs(2);
    let summaries = sync_to_the_end(&deps, Mode::Backfill, Duration::from_secs(6), 30).await;
    assert!(
        summaries.len() >= 2,
        "the budget was meant to cut the first run off"
    );
    assert!(!summaries[0].completed && summaries[0].stopped_because.is_some());
    assert!(
        summaries[0].duration_ms <= 4_500,
        "stopped with the margin: {} ms",
        summaries[0].duration_ms
    );
    assert_every_event_exactly_once(&sandbox, true);
    assert_every_profile_at_its_latest_values(&sandbox);
    // Every cut-off flushes a partly filled request: at most one extra per run.
    let event_jobs: u64 = summaries.iter().map(|s| s.event_jobs).sum();
    let minimum = minimum_for(&sandbox, Mode::Backfill).events;
    assert!(
        event_jobs as usize <= minimum + summaries.len(),
        "{event_jobs} vs {minimum} + {} runs",
        summaries.len()
    );
    report(
        "cut off",
        &summaries,
        (event_jobs as usize, minimum),
        &sandbox,
    );
    sandbox.stop().await;
}
