//! Deadlines: a sync given little time stops with at least 2 s to spare, and the next run
//! continues from the checkpoint with no gap and no duplicate, even when TRIFFT changes
//! between the runs. Slow upstream answers (injected latency) make each run too short.

use std::sync::Arc;
use std::time::Duration;

use e2e_tests::reliability::{event_delivery, small_sandbox, stale_profiles, sync_deps};
use loyalty_bridge::Deadline;
use loyalty_bridge::state::MemoryStateStore;
use sandbox::{FaultTarget, Faults};
use standard_sync::{Mode, Trigger, run_sync};

const SPARE: Duration = Duration::from_secs(2);
const BUDGET: Duration = Duration::from_secs(4);

fn slow() -> Faults {
    Faults {
        target: FaultTarget::Both,
        latency: Some((Duration::from_millis(120), Duration::from_millis(200))),
        ..Faults::none()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_runs_stop_in_time_and_together_deliver_everything_once() {
    let sb = small_sandbox(31, 200, 600, slow()).await;
    let mut deps = sync_deps(&sb, Arc::new(MemoryStateStore::new()));
    deps.settings.page_size = 25;

    let mut runs = Vec::new();
    for run in 0..40 {
        if run == 2 {
            // TRIFFT moves on between runs: the next runs must pick this up too.
            sb.change_members(20, 5);
            sb.append_events(50, 6);
        }
        let deadline = Deadline::after(BUDGET);
        let summary = run_sync(&deps, Trigger::direct(Mode::Backfill), deadline)
            .await
            .unwrap_or_else(|e| panic!("run {run} failed: {e}"));
        let spare = deadline.remaining();
        assert!(
            spare >= SPARE,
            "run {run} returned with {spare:?} left (< {SPARE:?}): {summary:?}"
        );
        let done = summary.completed && run >= 2;
        runs.push(summary);
        if done {
            break;
        }
    }
    let first = &runs[0];
    assert!(
        !first.completed && first.stopped_because.is_some(),
        "the budget was meant to cut the first run off: {first:?}"
    );
    assert!(runs.last().unwrap().completed, "{runs:#?}");

    let d = event_delivery(&sb);
    eprintln!(
        "deadlines: {} runs of {BUDGET:?} (stopped early: {}), events expected {} stored {} lost {} doubled {} re-sends dropped by Klaviyo {}",
        runs.len(),
        runs.iter().filter(|r| r.stopped_because.is_some()).count(),
        d.expected,
        d.stored,
        d.lost,
        d.doubled,
        d.duplicates_dropped
    );
    assert_eq!((d.lost, d.doubled), (0, 0), "{d:?}");
    assert!(d.expected >= 600, "{d:?}");
    let (stale, checked) = stale_profiles(&sb);
    assert!(stale.is_empty() && checked > 100, "{stale:?} of {checked}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_inside_the_margin_sends_nothing_and_moves_no_checkpoint() {
    let sb = small_sandbox(32, 20, 40, Faults::none()).await;
    let deps = sync_deps(&sb, Arc::new(MemoryStateStore::new()));
    let deadline = Deadline::after(Duration::from_millis(1500));
    let summary = run_sync(&deps, Trigger::direct(Mode::Backfill), deadline).await;
    assert!(
        !deadline.remaining().is_zero(),
        "returned after its deadline"
    );
    if let Ok(summary) = &summary {
        assert!(!summary.completed, "{summary:?}");
    }
    assert!(sb.klaviyo().events.is_empty(), "nothing sent");
    // The next run with time does it all, once.
    let summary = run_sync(
        &deps,
        Trigger::direct(Mode::Backfill),
        Deadline::after(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert!(summary.completed, "{summary:?}");
    let d = event_delivery(&sb);
    assert_eq!((d.lost, d.doubled), (0, 0), "{d:?}");
    sb.stop().await;
}
