//! The sync loop over small in-test fakes of the TRIFFT feeds and Klaviyo's bulk endpoints
//! (the real clients and emulators are exercised in tests/tests/standard_sync*.rs).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

use loyalty_bridge::klaviyo::{
    BulkImportJob, ClientStats, Event, EventBulkRequest, ImportError, KlaviyoApi, Profile,
    ProfileBulkRequest, ProfileIdentity,
};
use loyalty_bridge::state::{Claim, MemoryStateStore, StateStore, StoredCheckpoint};
use loyalty_bridge::trifft::{ActivityEvent, BatchItem, FeedPosition, Member, Page, TrifftApi};
use loyalty_bridge::{Deadline, Error, ErrorClass, Result, Service};
use standard_sync::{Deps, Mode, SyncSettings, Trigger, handler, run_sync};

// ---------- fakes ----------

#[derive(Default)]
struct FakeTrifft {
    members: Mutex<Vec<Member>>,
    events: Mutex<Vec<ActivityEvent>>,
    requests: AtomicU64,
    /// Positions asked for, in order.
    positions: Mutex<Vec<(String, FeedPosition)>>,
    /// Each feed request takes this long (tokio time, paused in tests).
    latency: Duration,
    /// Answer this request number (1-based) with a 503.
    fail_request: Option<u64>,
}

fn page<T: Clone>(
    items: &[T],
    start: usize,
    limit: u32,
    time: impl Fn(&T) -> DateTime<Utc>,
    from: &FeedPosition,
) -> Page<T> {
    let start = match from {
        FeedPosition::Beginning => 0,
        FeedPosition::Since(t) => items
            .iter()
            .position(|i| time(i) >= *t)
            .unwrap_or(items.len()),
        FeedPosition::Cursor(_) => start,
    };
    let end = (start + limit as usize).min(items.len());
    Page {
        data: items[start..end].to_vec(),
        next_cursor: end.to_string(),
        has_more: end < items.len(),
    }
}

impl FakeTrifft {
    async fn request(&self, feed: &str, from: &FeedPosition) -> Result<usize> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        self.positions
            .lock()
            .unwrap()
            .push((feed.to_string(), from.clone()));
        tokio::time::sleep(self.latency).await;
        if self.fail_request == Some(n) {
            return Err(Error::Upstream {
                service: Service::Trifft,
                status: 503,
                detail: "down".into(),
            });
        }
        Ok(match from {
            FeedPosition::Cursor(c) => {
                c.parse().map_err(|_| Error::invalid("cursor", c.clone()))?
            }
            _ => 0,
        })
    }
}

#[async_trait]
impl TrifftApi for FakeTrifft {
    async fn submit_batch(&self, _: &[BatchItem], _: Deadline) -> Result<()> {
        unreachable!("the sync never writes to TRIFFT")
    }
    async fn members_changed(
        &self,
        from: &FeedPosition,
        limit: u32,
        _: Deadline,
    ) -> Result<Page<Member>> {
        let start = self.request("members", from).await?;
        Ok(page(
            &self.members.lock().unwrap(),
            start,
            limit,
            |m| m.updated_at,
            from,
        ))
    }
    async fn activity_events(
        &self,
        from: &FeedPosition,
        limit: u32,
        _: Deadline,
    ) -> Result<Page<ActivityEvent>> {
        let start = self.request("events", from).await?;
        Ok(page(
            &self.events.lock().unwrap(),
            start,
            limit,
            |e| e.occurred_at,
            from,
        ))
    }
    fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.requests.load(Ordering::SeqCst),
            ..Default::default()
        }
    }
}

#[derive(Default)]
struct FakeKlaviyo {
    /// Every accepted bulk event job's body.
    event_jobs: Mutex<Vec<Value>>,
    /// Every accepted bulk profile job's body.
    profile_jobs: Mutex<Vec<Value>>,
    requests: AtomicU64,
    /// Refuse bulk event job number n (1-based, counting attempts) with this error.
    fail_event_job: Mutex<Option<(u64, Error)>>,
    /// Answer bulk event job number n (1-based) only after this long.
    slow_event_job: Option<(u64, Duration)>,
    event_attempts: AtomicU64,
    /// Import errors reported for every job.
    import_errors: Vec<ImportError>,
}

impl FakeKlaviyo {
    /// Bulk event job number `n` fails as when Klaviyo's retries are spent.
    fn failing_event_job(n: u64) -> Self {
        FakeKlaviyo {
            fail_event_job: Mutex::new(Some((
                n,
                Error::Upstream {
                    service: Service::Klaviyo,
                    status: 503,
                    detail: "retries spent".into(),
                },
            ))),
            ..Default::default()
        }
    }

    fn stored_unique_ids(&self) -> Vec<String> {
        let jobs = self.event_jobs.lock().unwrap();
        jobs.iter()
            .flat_map(|job| {
                job["data"]["attributes"]["events-bulk-create"]["data"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .flat_map(|entry| {
                entry["attributes"]["events"]["data"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .map(|e| e["attributes"]["unique_id"].as_str().unwrap().to_string())
            .collect()
    }
    fn stored_profiles(&self) -> Vec<Value> {
        let jobs = self.profile_jobs.lock().unwrap();
        jobs.iter()
            .flat_map(|job| {
                job["data"]["attributes"]["profiles"]["data"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .collect()
    }
}

#[async_trait]
impl KlaviyoApi for FakeKlaviyo {
    async fn create_event(&self, _: &ProfileIdentity, _: &Event, _: Deadline) -> Result<()> {
        unreachable!("the sync uses bulk event jobs")
    }
    async fn bulk_create_events(&self, request: &EventBulkRequest, _: Deadline) -> Result<()> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let attempt = self.event_attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((_, delay)) = self.slow_event_job.filter(|(n, _)| *n == attempt) {
            tokio::time::sleep(delay).await;
        }
        let mut fail = self.fail_event_job.lock().unwrap();
        if fail.as_ref().is_some_and(|(n, _)| *n == attempt) {
            return Err(fail.take().unwrap().1);
        }
        self.event_jobs
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&request.body).unwrap());
        Ok(())
    }
    async fn import_profile(&self, _: &Profile, _: Deadline) -> Result<String> {
        unreachable!("the sync uses bulk import jobs")
    }
    async fn bulk_import_profiles(
        &self,
        request: &ProfileBulkRequest,
        _: Deadline,
    ) -> Result<BulkImportJob> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut jobs = self.profile_jobs.lock().unwrap();
        jobs.push(serde_json::from_slice(&request.body).unwrap());
        Ok(BulkImportJob {
            id: format!("job-{}", jobs.len()),
            status: "queued".into(),
            total_count: request.profiles as u64,
            completed_count: 0,
            failed_count: 0,
        })
    }
    async fn bulk_import_job(&self, job_id: &str, _: Deadline) -> Result<BulkImportJob> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let failed = self.import_errors.len() as u64;
        Ok(BulkImportJob {
            id: job_id.into(),
            status: "complete".into(),
            total_count: 0,
            completed_count: 0,
            failed_count: failed,
        })
    }
    async fn bulk_import_errors(&self, _: &str, _: Deadline) -> Result<Vec<ImportError>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        Ok(self.import_errors.clone())
    }
    fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.requests.load(Ordering::SeqCst),
            ..Default::default()
        }
    }
}

/// A state store whose checkpoint another run moves first.
struct RacingStore(MemoryStateStore);

#[async_trait]
impl StateStore for RacingStore {
    async fn claim(&self, key: &str, until: DateTime<Utc>) -> Result<Claim> {
        self.0.claim(key, until).await
    }
    async fn complete(&self, key: &str, outcome: &str) -> Result<()> {
        self.0.complete(key, outcome).await
    }
    async fn release(&self, key: &str) -> Result<()> {
        self.0.release(key).await
    }
    async fn load_checkpoint(&self, name: &str) -> Result<Option<StoredCheckpoint>> {
        let loaded = self.0.load_checkpoint(name).await;
        // The other run saves right after we read.
        self.0
            .save_checkpoint(name, &json!({"events_cursor": "0"}), None)
            .await?;
        loaded
    }
    async fn save_checkpoint(
        &self,
        name: &str,
        body: &Value,
        expected: Option<u64>,
    ) -> Result<u64> {
        self.0.save_checkpoint(name, body, expected).await
    }
}

// ---------- data ----------

const KINDS: [&str; 15] = [
    "member_verified",
    "coupon_assigned",
    "coupon_activated",
    "coupon_redeemed",
    "transaction_created",
    "wallet_credited",
    "wallet_debited",
    "profile_updated",
    "app_opened",
    "favorite_venue_changed",
    "added_to_segment",
    "removed_from_segment",
    "language_changed",
    "referral_code_provided",
    "referral_invited",
];

fn member(i: usize, points: u64) -> Member {
    serde_json::from_value(json!({
        "id": format!("m-{i:05}"), "email": format!("member{i}@example.com"), "points": points,
        "tier": "Gold", "segments": ["vip"], "updated_at": Utc::now().to_rfc3339()
    }))
    .unwrap()
}

fn event(i: usize, members: usize) -> ActivityEvent {
    let kind = KINDS[i % KINDS.len()];
    let payload = if kind == "transaction_created" {
        json!({"items": [{"price": 2.5, "qty": 2}], "venue": {"currency": "EUR"}})
    } else {
        json!({"n": i})
    };
    serde_json::from_value(json!({
        "id": format!("e-{i:06}"), "type": kind, "member_id": format!("m-{:05}", i % members),
        "occurred_at": Utc::now().to_rfc3339(), "payload": payload
    }))
    .unwrap()
}

struct World {
    trifft: Arc<FakeTrifft>,
    klaviyo: Arc<FakeKlaviyo>,
    state: Arc<dyn StateStore>,
}

impl World {
    fn new(members: usize, events: usize, trifft: FakeTrifft, klaviyo: FakeKlaviyo) -> Self {
        *trifft.members.lock().unwrap() = (0..members).map(|i| member(i, i as u64)).collect();
        *trifft.events.lock().unwrap() = (0..events).map(|i| event(i, members.max(1))).collect();
        World {
            trifft: Arc::new(trifft),
            klaviyo: Arc::new(klaviyo),
            state: Arc::new(MemoryStateStore::new()),
        }
    }
    fn deps(&self, settings: SyncSettings) -> Deps {
        Deps {
            trifft: self.trifft.clone(),
            klaviyo: self.klaviyo.clone(),
            state: self.state.clone(),
            settings,
        }
    }
}

fn settings(page_size: u32) -> SyncSettings {
    SyncSettings {
        page_size,
        import_poll_interval: Duration::from_millis(10),
        ..Default::default()
    }
}

fn far() -> Deadline {
    Deadline::after(Duration::from_secs(600))
}

fn all_event_ids(n: usize) -> HashSet<String> {
    (0..n).map(|i| format!("e-{i:06}")).collect()
}

/// The checkpoint a run left, which must exist.
async fn stored_checkpoint(world: &World, name: &str) -> StoredCheckpoint {
    world.state.load_checkpoint(name).await.unwrap().unwrap()
}

fn assert_trifft_failed(error: &Error) {
    assert!(
        matches!(
            error,
            Error::Upstream {
                service: Service::Trifft,
                ..
            }
        ),
        "{error}"
    );
}

// ---------- tests ----------

#[tokio::test]
async fn one_run_sends_every_event_once_in_the_fewest_requests() {
    let world = World::new(30, 2_500, FakeTrifft::default(), FakeKlaviyo::default());
    let deps = world.deps(settings(100));
    let summary = run_sync(&deps, Trigger::direct(Mode::Incremental), far())
        .await
        .unwrap();

    let ids = world.klaviyo.stored_unique_ids();
    assert_eq!(ids.len(), 2_500);
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        all_event_ids(2_500)
    );
    // 2,500 events at 1,000 a request: 3 requests, not one per feed page (25 pages).
    assert_eq!(world.klaviyo.event_jobs.lock().unwrap().len(), 3);
    assert_eq!(world.klaviyo.profile_jobs.lock().unwrap().len(), 1);
    assert_eq!(world.klaviyo.stored_profiles().len(), 30);
    assert!(summary.completed);
    assert_eq!(
        (
            summary.members,
            summary.profiles_sent,
            summary.events_read,
            summary.events_sent
        ),
        (30, 30, 2_500, 2_500)
    );
    assert_eq!(
        (
            summary.event_jobs,
            summary.profile_jobs,
            summary.events_skipped
        ),
        (3, 1, 0)
    );
    // 1 members page + 25 event pages.
    assert_eq!(summary.trifft_requests, 26);
    let checkpoint = stored_checkpoint(&world, "standard-sync").await;
    assert_eq!(checkpoint.body["events_cursor"], "2500");
    assert_eq!(checkpoint.body["members_cursor"], "30");
    assert_eq!(summary.checkpoint.as_ref(), Some(&checkpoint.body));

    // The next run starts at the checkpoint and sends nothing again.
    let again = run_sync(&deps, Trigger::direct(Mode::Incremental), far())
        .await
        .unwrap();
    assert_eq!((again.events_sent, again.profiles_sent), (0, 0));
    assert_eq!(world.klaviyo.stored_unique_ids().len(), 2_500);
}

#[tokio::test]
async fn first_incremental_run_starts_at_the_lookback_and_backfill_at_the_beginning() {
    let world = World::new(3, 10, FakeTrifft::default(), FakeKlaviyo::default());
    let deps = world.deps(settings(1000));
    run_sync(&deps, Trigger::direct(Mode::Incremental), far())
        .await
        .unwrap();
    let first = world.trifft.positions.lock().unwrap()[0].clone();
    let FeedPosition::Since(since) = first.1 else {
        panic!("{first:?}")
    };
    let age = Utc::now() - since;
    assert!(
        age >= chrono::Duration::hours(24) && age < chrono::Duration::hours(25),
        "{age}"
    );

    world.trifft.positions.lock().unwrap().clear();
    let summary = run_sync(&deps, Trigger::direct(Mode::Backfill), far())
        .await
        .unwrap();
    assert_eq!(
        world.trifft.positions.lock().unwrap()[0].1,
        FeedPosition::Beginning
    );
    assert_eq!(summary.events_sent, 10);
    // Backfill keeps its own checkpoint and marks every event.
    assert!(
        world
            .state
            .load_checkpoint("standard-sync-backfill")
            .await
            .unwrap()
            .is_some()
    );
    let jobs = world.klaviyo.event_jobs.lock().unwrap();
    let last = jobs.last().unwrap();
    let events =
        last["data"]["attributes"]["events-bulk-create"]["data"][0]["attributes"]["events"]["data"]
            .as_array()
            .unwrap();
    assert!(events.iter().all(|e| e["attributes"]["backfill"] == true));
}

#[tokio::test]
async fn a_failed_job_keeps_the_checkpoint_before_it_and_the_next_run_resends() {
    let klaviyo = FakeKlaviyo::failing_event_job(2);
    let world = World::new(10, 3_500, FakeTrifft::default(), klaviyo);
    let deps = world.deps(settings(250));
    let error = run_sync(&deps, Trigger::direct(Mode::Incremental), far())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Upstream { status: 503, .. }),
        "{error}"
    );
    // Only the first job (events 0..1000) was accepted: the checkpoint is at the page
    // boundary before the failed job's first event.
    let checkpoint = stored_checkpoint(&world, "standard-sync").await;
    assert_eq!(checkpoint.body["events_cursor"], "1000");
    assert_eq!(world.klaviyo.stored_unique_ids().len(), 1_000);

    let summary = run_sync(&deps, Trigger::direct(Mode::Incremental), far())
        .await
        .unwrap();
    assert!(summary.completed);
    let ids = world.klaviyo.stored_unique_ids();
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        all_event_ids(3_500)
    );
    // Nothing accepted was sent twice: the resume started exactly at the checkpoint.
    assert_eq!(ids.len(), 3_500);
}

#[tokio::test]
async fn a_job_that_fails_behind_a_later_accepted_one_still_holds_the_checkpoint() {
    // Job 1 is slow and then fails; job 2, sent while it is in flight, is accepted first.
    let klaviyo = FakeKlaviyo {
        slow_event_job: Some((1, Duration::from_millis(200))),
        ..FakeKlaviyo::failing_event_job(1)
    };
    let world = World::new(10, 3_500, FakeTrifft::default(), klaviyo);
    let deps = world.deps(settings(250));
    let error = run_sync(&deps, Trigger::direct(Mode::Incremental), far())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Upstream { status: 503, .. }),
        "{error}"
    );
    // Job 2 reached Klaviyo, but its acceptance cannot move the checkpoint past job 1's
    // events, which are lost from memory.
    assert_eq!(world.klaviyo.stored_unique_ids().len(), 1_000);
    let checkpoint = stored_checkpoint(&world, "standard-sync").await;
    assert_eq!(checkpoint.body["events_cursor"], Value::Null);

    let summary = run_sync(&deps, Trigger::direct(Mode::Incremental), far())
        .await
        .unwrap();
    assert!(summary.completed);
    assert_eq!(summary.events_sent, 3_500);
    let ids = world.klaviyo.stored_unique_ids();
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        all_event_ids(3_500)
    );
}

#[tokio::test]
async fn a_backfill_reads_both_feeds_at_once() {
    let world = World::new(1_500, 3_000, FakeTrifft::default(), FakeKlaviyo::default());
    let deps = world.deps(settings(500));
    let summary = run_sync(&deps, Trigger::direct(Mode::Backfill), far())
        .await
        .unwrap();
    assert!(summary.completed);
    let feeds: Vec<String> = world
        .trifft
        .positions
        .lock()
        .unwrap()
        .iter()
        .map(|(feed, _)| feed.clone())
        .collect();
    let first_events = feeds.iter().position(|f| f == "events").unwrap();
    let last_members = feeds.iter().rposition(|f| f == "members").unwrap();
    assert!(first_events < last_members, "not interleaved: {feeds:?}");
    assert_eq!(world.klaviyo.stored_unique_ids().len(), 3_000);
    assert_eq!(world.klaviyo.stored_profiles().len(), 1_500);
    let checkpoint = stored_checkpoint(&world, "standard-sync-backfill").await;
    assert_eq!(
        (
            &checkpoint.body["members_cursor"],
            &checkpoint.body["events_cursor"]
        ),
        (&json!("1500"), &json!("3000"))
    );
}

#[tokio::test]
async fn a_failure_in_one_backfill_feed_still_sends_what_both_read() {
    // An events page fails while the members feed is still being read.
    let trifft = FakeTrifft {
        fail_request: Some(6),
        ..Default::default()
    };
    let world = World::new(2_000, 3_000, trifft, FakeKlaviyo::default());
    let deps = world.deps(settings(250));
    let error = run_sync(&deps, Trigger::direct(Mode::Backfill), far())
        .await
        .unwrap_err();
    assert_trifft_failed(&error);
    let (events_before, profiles_before) = (
        world.klaviyo.stored_unique_ids().len(),
        world.klaviyo.stored_profiles().len(),
    );
    assert!(
        events_before > 0 && profiles_before > 0,
        "{events_before} {profiles_before}"
    );
    // The next run continues exactly where each feed's accepted requests ended.
    let summary = run_sync(&deps, Trigger::direct(Mode::Backfill), far())
        .await
        .unwrap();
    assert!(summary.completed);
    let ids = world.klaviyo.stored_unique_ids();
    assert_eq!(ids.len(), 3_000, "nothing accepted is sent again");
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        all_event_ids(3_000)
    );
    assert_eq!(world.klaviyo.stored_profiles().len(), 2_000);
}

#[tokio::test]
async fn a_trifft_failure_sends_what_was_read_then_reports_the_error() {
    // Request 1 = members, 2..=4 = event pages, 5 fails.
    let trifft = FakeTrifft {
        fail_request: Some(5),
        ..Default::default()
    };
    let world = World::new(5, 1_000, trifft, FakeKlaviyo::default());
    let deps = world.deps(settings(200));
    let error = run_sync(&deps, Trigger::direct(Mode::Incremental), far())
        .await
        .unwrap_err();
    assert_trifft_failed(&error);
    assert_eq!(world.klaviyo.stored_unique_ids().len(), 600);
    let checkpoint = stored_checkpoint(&world, "standard-sync").await;
    assert_eq!(checkpoint.body["events_cursor"], "600");
}

#[tokio::test(start_paused = true)]
async fn a_run_cut_off_by_the_deadline_stops_cleanly_and_the_next_continues() {
    let trifft = FakeTrifft {
        latency: Duration::from_secs(1),
        ..Default::default()
    };
    let world = World::new(10, 3_000, trifft, FakeKlaviyo::default());
    let deps = world.deps(SyncSettings {
        safety_margin: Duration::from_secs(3),
        ..settings(100)
    });
    let deadline = Deadline::after(Duration::from_secs(15));
    let first = run_sync(&deps, Trigger::direct(Mode::Incremental), deadline)
        .await
        .unwrap();
    assert!(!first.completed);
    assert!(first.stopped_because.is_some());
    assert!(
        tokio::time::Instant::now() <= deadline.instant() - Duration::from_secs(2),
        "stopped with the margin"
    );
    assert!(
        first.events_read > 0 && first.events_read < 3_000,
        "{}",
        first.events_read
    );
    // What was read got sent in one partial request when the run stopped.
    assert_eq!(first.events_sent, first.events_read);

    let mut runs = 1;
    while !run_sync(
        &deps,
        Trigger::direct(Mode::Incremental),
        Deadline::after(Duration::from_secs(15)),
    )
    .await
    .unwrap()
    .completed
    {
        runs += 1;
        assert!(runs < 10);
    }
    let ids = world.klaviyo.stored_unique_ids();
    assert_eq!(ids.len(), 3_000, "every event once");
    assert_eq!(
        ids.into_iter().collect::<HashSet<_>>(),
        all_event_ids(3_000)
    );
}

#[tokio::test]
async fn profiles_are_coalesced_to_the_latest_state_and_issues_counted() {
    let world = World::new(4, 0, FakeTrifft::default(), FakeKlaviyo::default());
    {
        let mut members = world.trifft.members.lock().unwrap();
        members.push(member(1, 999)); // m-00001 changed again: the later state wins.
        let mut anonymous = member(9, 1);
        anonymous.id = String::new();
        anonymous.email = None;
        anonymous.phone = Some("0612345678".into());
        members.push(anonymous);
    }
    world.trifft.events.lock().unwrap().extend([
        serde_json::from_value(json!({"id": "x-1", "type": "challenge_completed", "member_id": "m-00001",
            "occurred_at": "2026-01-01T00:00:00Z"}))
        .unwrap(),
        serde_json::from_value(json!({"id": "x-2", "type": "transaction_created", "member_id": "m-00001",
            "occurred_at": "2026-01-01T00:00:00Z", "payload": {"items": [{"price": "free", "qty": 1}]}}))
        .unwrap(),
        serde_json::from_value(json!({"id": "x-3", "type": "app_opened", "member_id": "m-00001",
            "occurred_at": "2026-01-01T00:00:00Z"}))
        .unwrap(),
        // The same event twice in the feed: sent once.
        serde_json::from_value(json!({"id": "x-3", "type": "app_opened", "member_id": "m-00001",
            "occurred_at": "2026-01-01T00:00:00Z"}))
        .unwrap(),
    ]);
    let deps = world.deps(settings(2));
    let summary = run_sync(&deps, Trigger::direct(Mode::Backfill), far())
        .await
        .unwrap();
    let profiles = world.klaviyo.stored_profiles();
    assert_eq!(profiles.len(), 4, "one upsert per member");
    let m1: Vec<&Value> = profiles
        .iter()
        .filter(|p| p["attributes"]["external_id"] == "m-00001")
        .collect();
    assert_eq!(m1.len(), 1);
    assert_eq!(m1[0]["attributes"]["properties"]["trifft_points"], 999);
    assert_eq!(summary.members, 6);
    assert_eq!(summary.members_without_identifier, 1);
    assert_eq!(
        (
            summary.events_read,
            summary.events_sent,
            summary.events_skipped,
            summary.duplicates_dropped
        ),
        (4, 1, 2, 1)
    );
}

#[tokio::test]
async fn import_errors_are_read_back_and_counted() {
    let klaviyo = FakeKlaviyo {
        import_errors: vec![ImportError {
            code: "invalid".into(),
            title: "Invalid email".into(),
            detail: "email is not valid".into(),
            pointer: Some("/data/attributes/email".into()),
            original_payload: Some(
                json!({"attributes": {"external_id": "m-00002", "email": "nope"}}),
            ),
        }],
        ..Default::default()
    };
    let world = World::new(5, 0, FakeTrifft::default(), klaviyo);
    let summary = run_sync(
        &world.deps(settings(100)),
        Trigger::direct(Mode::Incremental),
        far(),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            summary.profiles_sent,
            summary.profiles_failed,
            summary.profiles_unverified
        ),
        (5, 1, 0)
    );
}

#[tokio::test]
async fn a_checkpoint_conflict_ends_the_run() {
    let mut world = World::new(3, 10, FakeTrifft::default(), FakeKlaviyo::default());
    world.state = Arc::new(RacingStore(MemoryStateStore::new()));
    let error = run_sync(
        &world.deps(settings(100)),
        Trigger::direct(Mode::Incremental),
        far(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Conflict(_)), "{error}");
    // It stopped at its first save, before reading or sending anything.
    assert_eq!(world.trifft.requests.load(Ordering::SeqCst), 0);
    assert_eq!(world.klaviyo.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_handler_refuses_a_payload_that_is_no_schedule_before_any_call() {
    let world = World::new(3, 10, FakeTrifft::default(), FakeKlaviyo::default());
    let deps = world.deps(settings(100));
    let mut context = Context::default();
    context.deadline = (Utc::now().timestamp_millis() + 60_000) as u64;
    let error = handler(
        &deps,
        LambdaEvent::new(json!({"mode": "everything"}), context.clone()),
    )
    .await
    .unwrap_err();
    assert_eq!(error.class(), ErrorClass::NonRetryable);
    assert_eq!(world.trifft.requests.load(Ordering::SeqCst), 0);
    assert_eq!(world.klaviyo.requests.load(Ordering::SeqCst), 0);

    let summary = handler(
        &deps,
        LambdaEvent::new(
            json!({"scheduled_time": "2026-12-01T10:00:00Z",
        "execution_id": "x", "mode": "incremental"}),
            context,
        ),
    )
    .await
    .unwrap();
    assert!(summary.completed);
    assert_eq!(summary.execution_id.as_deref(), Some("x"));
    let _: HashMap<String, Value> =
        serde_json::from_value(serde_json::to_value(&summary).unwrap()).unwrap();
}

#[test]
fn sample_events_do_what_expected_json_says() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/standard-sync");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected.as_object().unwrap();
    assert!(cases.len() >= 4);
    for (file, want) in cases {
        let event: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        match standard_sync::parse_trigger(&event) {
            Ok(trigger) => {
                assert_eq!(want["outcome"], "runs", "{file}");
                assert_eq!(want["mode"], trigger.mode.as_str(), "{file}");
                assert_eq!(
                    want["execution_id"].as_str(),
                    trigger.execution_id.as_deref(),
                    "{file}"
                );
                assert_eq!(
                    want["checkpoint"],
                    standard_sync::checkpoint_name("standard-sync", trigger.mode),
                    "{file}"
                );
            }
            Err(e) => {
                assert_eq!(want["outcome"], "error", "{file}: {e}");
                assert_eq!(want["error_type"], e.class().as_str(), "{file}");
                assert!(
                    matches!(&e, Error::InvalidInput { field, .. } if want["field"] == field.as_str()),
                    "{file}: {e}"
                );
            }
        }
    }
}
