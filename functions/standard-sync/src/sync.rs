//! One sync run: page the TRIFFT members and activity feeds from the checkpoint, send
//! profiles through bulk import jobs and events through bulk event jobs, and move the
//! checkpoint only past what Klaviyo accepted.
//!
//! Batching: one open bulk request per kind stays open across feed pages and is sent only
//! when full (or at the end), so the number of requests is the minimum the limits allow.
//! The checkpoint of a feed may move to the cursor after page N only when no item of a page
//! <= N is still waiting in an open or unanswered request, so a crash or a timeout re-sends
//! at most those requests' pages, and Klaviyo's unique_id drops the repeats.
//!
//! Order: an incremental run sends members before events (a flow an event starts may show
//! the member's attributes); a backfill reads both feeds at once, a page of each in turn,
//! since backfilled events start no flows.
//!
//! Pipelining: the next feed page is read while the current one is mapped, and full
//! requests are sent in the background (a few at a time), so reading TRIFFT and writing
//! Klaviyo overlap instead of adding up. Requests are accepted in the order they were
//! sent, which keeps the checkpoint rule above.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use loyalty_bridge::klaviyo::bulk::{EventBulkBuilder, ProfileBulkBuilder};
use loyalty_bridge::klaviyo::{
    BulkImportJob, ClientStats, EventBulkRequest, ImportError, ProfileBulkRequest,
};
use loyalty_bridge::mapping::standard::{
    MappingIssue, Options, event_to_klaviyo, member_to_profile,
};
use loyalty_bridge::trifft::{ActivityEvent, FeedPosition, Member, Page};
use loyalty_bridge::{Deadline, Error, Result, Service};

use crate::Deps;
use crate::summary::{SyncSummary, emf_line};
use crate::trigger::{Mode, Trigger};

/// Do not start reading another page with less than this left before the stop time.
const MIN_TIME_FOR_A_PAGE: Duration = Duration::from_millis(500);
/// The longest wait between two reads of a bulk import job's status.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// The checkpoint body as stored in the `StateStore`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Members feed: everything before this cursor is in an accepted bulk import job.
    #[serde(default)]
    pub members_cursor: Option<String>,
    /// Activity feed: everything before this cursor is in an accepted bulk event job.
    #[serde(default)]
    pub events_cursor: Option<String>,
    /// Where the first incremental run started (now - INITIAL_LOOKBACK_HOURS), so a feed
    /// without a cursor yet starts there on every later run too.
    #[serde(default)]
    pub origin: Option<DateTime<Utc>>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub execution_id: Option<String>,
}

/// The checkpoint name a mode uses: backfill keeps its own position.
pub fn checkpoint_name(base: &str, mode: Mode) -> String {
    match mode {
        Mode::Incremental => base.to_string(),
        Mode::Backfill => format!("{base}-backfill"),
    }
}

/// Time kept for closing a run after its last request, on top of the safety margin.
const CLOSE_RESERVE: std::time::Duration = std::time::Duration::from_millis(250);

/// Run one sync until both feeds end or the deadline (less the safety margin) is near.
/// The summary is logged and printed as EMF in every case; an error is returned only
/// when something other than the deadline stopped the run (the checkpoint then holds
/// everything Klaviyo accepted before the error).
pub async fn run_sync(deps: &Deps, trigger: Trigger, deadline: Deadline) -> Result<SyncSummary> {
    let started = Instant::now();
    let stats_before = (deps.klaviyo.stats(), deps.trifft.stats());
    let mut run = Run::new(
        deps,
        &trigger,
        // Requests may run right up to `stop_at`; closing the run (summary, metrics) comes
        // after it, so a little more is held back to keep the whole margin free.
        deadline.less(deps.settings.effective_margin() + CLOSE_RESERVE),
    );
    let outcome = run.execute().await;

    let summary = &mut run.summary;
    let (klaviyo, trifft) = (
        delta(deps.klaviyo.stats(), stats_before.0),
        delta(deps.trifft.stats(), stats_before.1),
    );
    summary.klaviyo_requests = klaviyo.requests;
    summary.trifft_requests = trifft.requests;
    summary.retries = klaviyo.retries + trifft.retries;
    summary.throttles = klaviyo.throttles + trifft.throttles;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.checkpoint = serde_json::to_value(&run.checkpoint).ok();
    if let Err(e) = &outcome {
        summary.completed = false;
        summary.stopped_because = Some(e.to_string());
    }
    let summary_json = serde_json::to_string(&summary).unwrap_or_default();
    match &outcome {
        Ok(()) => info!(summary = %summary_json, "standard sync finished"),
        Err(e) => {
            warn!(summary = %summary_json, error = %e, error_type = e.class().as_str(), "standard sync stopped by an error")
        }
    }
    println!(
        "{}",
        emf_line(
            summary,
            &deps.settings.function_name,
            Utc::now().timestamp_millis()
        )
    );
    outcome.map(|()| run.summary)
}

fn delta(now: ClientStats, before: ClientStats) -> ClientStats {
    ClientStats {
        requests: now.requests.saturating_sub(before.requests),
        retries: now.retries.saturating_sub(before.retries),
        throttles: now.throttles.saturating_sub(before.throttles),
    }
}

/// Errors that mean "out of time": the run ends normally and the next one continues.
fn is_out_of_time(error: &Error) -> bool {
    matches!(
        error,
        Error::DeadlineExceeded { .. } | Error::RateLimited { .. }
    )
}

/// Where one feed stands in this run.
#[derive(Debug, Default)]
struct FeedProgress {
    /// Cursor after each page read whose items are not all accepted yet, oldest first.
    pending: VecDeque<(u64, String)>,
    next_page: u64,
    /// Cursor the checkpoint may hold.
    accepted: Option<String>,
}

impl FeedProgress {
    fn new(accepted: Option<String>) -> Self {
        FeedProgress {
            accepted,
            ..Default::default()
        }
    }

    fn page_read(&mut self, cursor_after: String) -> u64 {
        let page = self.next_page;
        self.pending.push_back((page, cursor_after));
        self.next_page += 1;
        page
    }

    /// Everything of the pages before `oldest_open` (every page read, when `None`) is accepted.
    fn accept_before(&mut self, oldest_open: Option<u64>) -> bool {
        let limit = oldest_open.unwrap_or(self.next_page);
        let mut moved = false;
        while self.pending.front().is_some_and(|(page, _)| *page < limit) {
            if let Some((_, cursor)) = self.pending.pop_front() {
                self.accepted = Some(cursor);
                moved = true;
            }
        }
        moved
    }
}

/// How a phase ended.
enum Stop {
    EndOfFeed,
    OutOfTime,
}

/// Bulk event jobs sent and not yet answered, at most: one is sent while the next page is
/// read and mapped, another may wait on Klaviyo's rate limit. Each holds up to 5 MB.
const EVENT_SENDS_IN_FLIGHT: usize = 2;
/// Bulk profile jobs go one at a time, in the order the members feed gave them: a member
/// changed twice may be in two jobs, and the later job must not overtake the earlier.
const PROFILE_SENDS_IN_FLIGHT: usize = 1;

/// A request running in its own task, cancelled when dropped: a run that stops leaves
/// nothing running behind it.
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    fn spawn(future: impl Future<Output = T> + Send + 'static) -> Self {
        Task(tokio::spawn(future))
    }
}

impl<T> Task<Result<T>> {
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    async fn join(&mut self, service: Service) -> Result<T> {
        (&mut self.0).await.unwrap_or_else(|e| {
            Err(Error::Transport {
                service,
                detail: format!("the request's task ended: {e}"),
            })
        })
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One bulk request sent: how many items it holds, and the oldest page with items not in
/// it or an earlier request, fixed when it was sent (pages read later are not in it).
struct Sent<T> {
    task: Task<Result<T>>,
    items: usize,
    still_open: u64,
}

/// The open bulk request of one kind and its unanswered predecessors, oldest first.
struct Outbox<B, T> {
    builder: B,
    /// The oldest page with items in the open request.
    first_page: Option<u64>,
    sent: VecDeque<Sent<T>>,
    max_in_flight: usize,
}

impl<B, T> Outbox<B, T> {
    fn new(builder: B, max_in_flight: usize) -> Self {
        Outbox {
            builder,
            first_page: None,
            sent: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Nothing of the pages read is waiting: neither in the open request nor unanswered.
    fn is_idle(&self) -> bool {
        self.first_page.is_none() && self.sent.is_empty()
    }
}

type EventOutbox = Outbox<EventBulkBuilder, ()>;
type ProfileOutbox = Outbox<ProfileBulkBuilder, BulkImportJob>;

/// One feed being read: the next page in flight (`None`: no time for another) and the
/// requests its pages fill.
struct Feed<T, B, R> {
    reading: Option<Task<Result<Page<T>>>>,
    outbox: Outbox<B, R>,
}

type MembersFeed = Feed<Member, ProfileBulkBuilder, BulkImportJob>;
type EventsFeed = Feed<ActivityEvent, EventBulkBuilder, ()>;

/// After a page: the feed ended, there is no time for the next page, or it goes on.
fn feed_stop<T, U>(page: &Page<T>, next: &Option<U>) -> Option<Stop> {
    if !page.has_more {
        Some(Stop::EndOfFeed)
    } else if next.is_none() {
        Some(Stop::OutOfTime)
    } else {
        None
    }
}

/// What an answered request of a kind changes in the run.
trait Accept<T> {
    fn accept(&mut self, answer: T, items: usize, still_open: u64);
}

impl Accept<()> for Run<'_> {
    fn accept(&mut self, (): (), events: usize, still_open: u64) {
        self.summary.event_jobs += 1;
        self.summary.events_sent += events as u64;
        self.events.accept_before(Some(still_open));
    }
}

impl Accept<BulkImportJob> for Run<'_> {
    fn accept(&mut self, job: BulkImportJob, profiles: usize, still_open: u64) {
        self.summary.profile_jobs += 1;
        self.summary.profiles_sent += profiles as u64;
        self.import_jobs.push((job.id, profiles as u64));
        self.members.accept_before(Some(still_open));
    }
}

struct Run<'a> {
    deps: &'a Deps,
    trigger: Trigger,
    stop_at: Deadline,
    summary: SyncSummary,
    checkpoint_name: String,
    checkpoint: Checkpoint,
    version: Option<u64>,
    members: FeedProgress,
    events: FeedProgress,
    /// Accepted bulk import jobs: (job id, profiles in it), read back at the end.
    import_jobs: Vec<(String, u64)>,
    /// A send or a checkpoint save failed: nothing more is sent or accepted in this run.
    halted: bool,
}

impl<'a> Run<'a> {
    fn new(deps: &'a Deps, trigger: &Trigger, stop_at: Deadline) -> Self {
        Run {
            deps,
            trigger: trigger.clone(),
            stop_at,
            summary: SyncSummary {
                mode: trigger.mode,
                execution_id: trigger.execution_id.clone(),
                ..Default::default()
            },
            checkpoint_name: checkpoint_name(&deps.settings.checkpoint_name, trigger.mode),
            checkpoint: Checkpoint::default(),
            version: None,
            members: FeedProgress::default(),
            events: FeedProgress::default(),
            import_jobs: Vec::new(),
            halted: false,
        }
    }

    async fn execute(&mut self) -> Result<()> {
        let state = &self.deps.state;
        if let Some(stored) = state.load_checkpoint(&self.checkpoint_name).await? {
            self.checkpoint = serde_json::from_value(stored.body.clone()).map_err(|e| {
                Error::State(format!(
                    "checkpoint {:?} does not have the sync's shape: {e}",
                    self.checkpoint_name
                ))
            })?;
            self.version = Some(stored.version);
        }
        if self.trigger.mode == Mode::Incremental && self.checkpoint.origin.is_none() {
            let lookback = chrono::Duration::from_std(self.deps.settings.initial_lookback)
                .unwrap_or(chrono::Duration::hours(24));
            self.checkpoint.origin = Some(Utc::now() - lookback);
        }
        self.members = FeedProgress::new(self.checkpoint.members_cursor.clone());
        self.events = FeedProgress::new(self.checkpoint.events_cursor.clone());
        // Save at once: a concurrent run that loaded the same version now conflicts before
        // it sends anything, and a first run keeps its origin even if it stops early.
        self.write_checkpoint().await?;

        let members_at = self.start_position(self.checkpoint.members_cursor.clone());
        let events_at = self.start_position(self.checkpoint.events_cursor.clone());
        let outcome = match self.trigger.mode {
            Mode::Incremental => self.sync_in_turn(members_at, events_at).await,
            Mode::Backfill => self.sync_together(members_at, events_at).await,
        };
        // Accepted jobs are read back even when the run stops by an error.
        self.read_back_import_jobs().await;
        let completed = matches!(outcome?, Stop::EndOfFeed);
        self.summary.completed = completed;
        if !completed {
            self.summary.stopped_because = Some("the invocation deadline (less the safety margin) is near; the next run continues from the checkpoint".into());
        }
        Ok(())
    }

    fn start_position(&self, cursor: Option<String>) -> FeedPosition {
        match (cursor, self.checkpoint.origin) {
            (Some(cursor), _) => FeedPosition::Cursor(cursor),
            (None, Some(origin)) if self.trigger.mode == Mode::Incremental => {
                FeedPosition::Since(origin)
            }
            _ => FeedPosition::Beginning,
        }
    }

    /// Save the checkpoint if a feed position moved. A `Conflict` (another run moved it)
    /// ends this run.
    async fn save_checkpoint(&mut self) -> Result<()> {
        let (members, events) = (self.members.accepted.clone(), self.events.accepted.clone());
        if members == self.checkpoint.members_cursor && events == self.checkpoint.events_cursor {
            return Ok(());
        }
        self.write_checkpoint().await
    }

    async fn write_checkpoint(&mut self) -> Result<()> {
        let mut next = self.checkpoint.clone();
        next.members_cursor = self.members.accepted.clone();
        next.events_cursor = self.events.accepted.clone();
        next.mode = Some(self.trigger.mode);
        next.updated_at = Some(Utc::now());
        next.execution_id = self.trigger.execution_id.clone();
        let body = serde_json::to_value(&next).map_err(|e| Error::State(e.to_string()))?;
        let saved = self
            .deps
            .state
            .save_checkpoint(&self.checkpoint_name, &body, self.version)
            .await;
        // A conflict (another run moved it) or a failed write ends this run.
        self.halted |= saved.is_err();
        let version = saved?;
        self.version = Some(version);
        self.checkpoint = next;
        Ok(())
    }

    fn time_for_a_page(&self) -> bool {
        self.stop_at.allows(MIN_TIME_FOR_A_PAGE)
    }

    /// Accept answered requests in the order they were sent, waiting for the oldest while
    /// more than `keep` are unanswered; then save the checkpoint if it moved. A failed
    /// request halts the run: what it held is gone from memory, so nothing after it may
    /// be accepted (the requests behind it are cancelled).
    async fn settle<B, T>(&mut self, outbox: &mut Outbox<B, T>, keep: usize) -> Result<()>
    where
        Self: Accept<T>,
    {
        let mut accepted = false;
        loop {
            let unanswered = outbox.sent.len();
            let Some(oldest) = outbox.sent.front_mut() else {
                break;
            };
            if unanswered <= keep && !oldest.task.is_finished() {
                break;
            }
            let answer = oldest.task.join(Service::Klaviyo).await;
            let Some(sent) = outbox.sent.pop_front() else {
                break;
            };
            match answer {
                Ok(answer) => {
                    self.accept(answer, sent.items, sent.still_open);
                    accepted = true;
                }
                Err(e) => {
                    self.halted = true;
                    outbox.sent.clear();
                    return Err(e);
                }
            }
        }
        if accepted {
            self.save_checkpoint().await?;
        }
        Ok(())
    }

    /// Accept what has been answered without waiting; with the outbox idle, every page
    /// read so far is accepted too.
    async fn settle_page<B, T>(&mut self, outbox: &mut Outbox<B, T>, members: bool) -> Result<()>
    where
        Self: Accept<T>,
    {
        self.settle(outbox, usize::MAX).await?;
        let feed = if members {
            &mut self.members
        } else {
            &mut self.events
        };
        if outbox.is_idle() && feed.accept_before(None) {
            self.save_checkpoint().await?;
        }
        Ok(())
    }

    /// Start reading a members page in the background.
    fn read_members_page(&self, position: FeedPosition) -> Task<Result<Page<Member>>> {
        let (trifft, limit, stop_at) = (
            self.deps.trifft.clone(),
            self.deps.settings.page_size,
            self.stop_at,
        );
        Task::spawn(async move { trifft.members_changed(&position, limit, stop_at).await })
    }

    /// Start reading an activity page in the background.
    fn read_events_page(&self, position: FeedPosition) -> Task<Result<Page<ActivityEvent>>> {
        let (trifft, limit, stop_at) = (
            self.deps.trifft.clone(),
            self.deps.settings.page_size,
            self.stop_at,
        );
        Task::spawn(async move { trifft.activity_events(&position, limit, stop_at).await })
    }

    fn members_feed(&self, position: FeedPosition) -> MembersFeed {
        Feed {
            reading: self
                .time_for_a_page()
                .then(|| self.read_members_page(position)),
            outbox: Outbox::new(ProfileBulkBuilder::new(), PROFILE_SENDS_IN_FLIGHT),
        }
    }

    fn events_feed(&self, position: FeedPosition) -> EventsFeed {
        Feed {
            reading: self
                .time_for_a_page()
                .then(|| self.read_events_page(position)),
            outbox: Outbox::new(EventBulkBuilder::new(), EVENT_SENDS_IN_FLIGHT),
        }
    }

    /// Incremental: members first, then events. A flow an event starts may show the
    /// member's attributes (a points balance), so the profile goes to Klaviyo first.
    async fn sync_in_turn(
        &mut self,
        members_at: FeedPosition,
        events_at: FeedPosition,
    ) -> Result<Stop> {
        let mut members = self.members_feed(members_at);
        let read = loop {
            if let Some(read) = self.members_page(&mut members).await.transpose() {
                break read;
            }
        };
        if !matches!(
            self.end_members(read, &mut members.outbox).await?,
            Stop::EndOfFeed
        ) {
            return Ok(Stop::OutOfTime);
        }
        let mut events = self.events_feed(events_at);
        let read = loop {
            if let Some(read) = self.events_page(&mut events).await.transpose() {
                break read;
            }
        };
        self.end_events(read, &mut events.outbox).await
    }

    /// Backfill: both feeds at once, a page of each in turn, so event jobs (bound by
    /// Klaviyo's 150 a minute) start at once instead of after the whole members feed.
    /// Backfilled events start no flows, so no event needs its profile in Klaviyo first.
    async fn sync_together(
        &mut self,
        members_at: FeedPosition,
        events_at: FeedPosition,
    ) -> Result<Stop> {
        let mut members = self.members_feed(members_at);
        let mut events = self.events_feed(events_at);
        let (mut members_done, mut events_done) = (None, None);
        while !self.halted && (members_done.is_none() || events_done.is_none()) {
            if members_done.is_none()
                && let Some(read) = self.members_page(&mut members).await.transpose()
            {
                members_done = Some(self.end_members(read, &mut members.outbox).await);
            }
            if events_done.is_none()
                && let Some(read) = self.events_page(&mut events).await.transpose()
            {
                events_done = Some(self.end_events(read, &mut events.outbox).await);
            }
            if matches!(members_done, Some(Err(_))) || matches!(events_done, Some(Err(_))) {
                break;
            }
        }
        // One feed failed: the other stops too, and what it read is still sent.
        let members_done = match members_done {
            Some(done) => done,
            None => {
                self.end_members(Ok(Stop::OutOfTime), &mut members.outbox)
                    .await
            }
        };
        let events_done = match events_done {
            Some(done) => done,
            None => {
                self.end_events(Ok(Stop::OutOfTime), &mut events.outbox)
                    .await
            }
        };
        match (members_done?, events_done?) {
            (Stop::EndOfFeed, Stop::EndOfFeed) => Ok(Stop::EndOfFeed),
            _ => Ok(Stop::OutOfTime),
        }
    }

    /// Map and send one members page (the next is read meanwhile). `Some` once the feed
    /// ended, time is up or the read failed.
    async fn members_page(&mut self, feed: &mut MembersFeed) -> Result<Option<Stop>> {
        let Some(mut reading) = feed.reading.take() else {
            return Ok(Some(Stop::OutOfTime));
        };
        let page = reading.join(Service::Trifft).await?;
        let page_index = self.members.page_read(page.next_cursor.clone());
        self.summary.members += page.data.len() as u64;
        if page.has_more && self.time_for_a_page() {
            feed.reading =
                Some(self.read_members_page(FeedPosition::Cursor(page.next_cursor.clone())));
        }
        let outbox = &mut feed.outbox;
        for member in &page.data {
            let profile = match member_to_profile(member) {
                Ok(profile) => profile,
                Err(issue) => {
                    self.report_member_issue(&issue);
                    continue;
                }
            };
            match outbox.builder.push(&profile) {
                Ok(None) => {
                    outbox.first_page.get_or_insert(page_index);
                }
                Ok(Some(full)) => {
                    // This profile opened the next request, so its page is still open.
                    self.send_profiles(outbox, full, Some(page_index)).await?;
                    outbox.first_page = Some(page_index);
                }
                Err(e) => {
                    self.summary.profiles_failed += 1;
                    warn!(member_id = %member.id, reason = %e, "profile not sent: Klaviyo would refuse it");
                }
            }
        }
        // A request the page filled is sent now, not when the next page's first item
        // finds no room in it: that page may be a rate-limit window away. Every page
        // read is then in a sent request.
        if let Some(full) = outbox.builder.take_if_full() {
            self.send_profiles(outbox, full, None).await?;
        }
        self.settle_page(outbox, true).await?;
        Ok(feed_stop(&page, &feed.reading))
    }

    /// Reading ended (end of feed, time, or a TRIFFT error that lost nothing): every page
    /// read is fully in the outbox, so sending it lets the checkpoint pass them all.
    async fn end_members(
        &mut self,
        read: Result<Stop>,
        outbox: &mut ProfileOutbox,
    ) -> Result<Stop> {
        if self.halted {
            return read;
        }
        let flushed = self.flush_profiles(outbox).await;
        finish_phase(read, flushed)
    }

    fn report_member_issue(&mut self, issue: &MappingIssue) {
        match issue {
            MappingIssue::NoIdentifier { .. } => self.summary.members_without_identifier += 1,
            _ => self.summary.profiles_failed += 1,
        }
        warn!(issue = issue.kind(), reason = %issue, "member not sent");
    }

    /// Send a full profile request in the background, once there is room for it;
    /// `still_open`: the oldest page with members not in it (`None`: every page read).
    async fn send_profiles(
        &mut self,
        outbox: &mut ProfileOutbox,
        request: ProfileBulkRequest,
        still_open: Option<u64>,
    ) -> Result<()> {
        let (klaviyo, stop_at) = (self.deps.klaviyo.clone(), self.stop_at);
        let items = request.profiles;
        let still_open = still_open.unwrap_or(self.members.next_page);
        let send = async move { klaviyo.bulk_import_profiles(&request, stop_at).await };
        self.enqueue(outbox, items, still_open, send).await
    }

    /// Start a request in its own task once fewer than the outbox's limit are unanswered.
    async fn enqueue<B, T: Send + 'static>(
        &mut self,
        outbox: &mut Outbox<B, T>,
        items: usize,
        still_open: u64,
        send: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<()>
    where
        Self: Accept<T>,
    {
        self.settle(outbox, outbox.max_in_flight - 1).await?;
        outbox.sent.push_back(Sent {
            task: Task::spawn(send),
            items,
            still_open,
        });
        outbox.first_page = None;
        Ok(())
    }

    /// Send what is open, wait for every answer, and let the checkpoint pass every page read.
    async fn flush_profiles(&mut self, outbox: &mut ProfileOutbox) -> Result<()> {
        let builder = std::mem::take(&mut outbox.builder);
        if let Some(last) = builder.finish() {
            self.send_profiles(outbox, last, None).await?;
        }
        self.settle(outbox, 0).await?;
        self.members.accept_before(None);
        self.save_checkpoint().await
    }

    /// Map and send one activity page (the next is read meanwhile). `Some` once the feed
    /// ended, time is up or the read failed.
    async fn events_page(&mut self, feed: &mut EventsFeed) -> Result<Option<Stop>> {
        let Some(mut reading) = feed.reading.take() else {
            return Ok(Some(Stop::OutOfTime));
        };
        let page = reading.join(Service::Trifft).await?;
        let page_index = self.events.page_read(page.next_cursor.clone());
        self.summary.events_read += page.data.len() as u64;
        if page.has_more && self.time_for_a_page() {
            feed.reading =
                Some(self.read_events_page(FeedPosition::Cursor(page.next_cursor.clone())));
        }
        let options = Options {
            metric_prefix: self.deps.settings.metric_prefix.clone(),
            backfill: self.trigger.mode == Mode::Backfill,
            // Klaviyo takes times up to a year ahead; a day less leaves room for clock skew.
            latest_time: Some(Utc::now() + chrono::Duration::days(364)),
        };
        let outbox = &mut feed.outbox;
        for activity in &page.data {
            let (identity, event) = match event_to_klaviyo(activity, &options) {
                Ok(mapped) => mapped,
                Err(issue) => {
                    self.summary.events_skipped += 1;
                    warn!(issue = issue.kind(), reason = %issue, "event not sent");
                    continue;
                }
            };
            match outbox.builder.push(&identity, event) {
                Ok(None) => {
                    if outbox.builder.pending_events() > 0 {
                        outbox.first_page.get_or_insert(page_index);
                    }
                }
                Ok(Some(full)) => {
                    // This event opened the next request, so its page is still open.
                    self.send_events(outbox, full, Some(page_index)).await?;
                    outbox.first_page = Some(page_index);
                }
                Err(e) => {
                    self.summary.events_skipped += 1;
                    warn!(event_id = %activity.id, reason = %e, "event not sent: Klaviyo would refuse it");
                }
            }
        }
        if let Some(full) = outbox.builder.take_if_full() {
            self.send_events(outbox, full, None).await?;
        }
        self.settle_page(outbox, false).await?;
        Ok(feed_stop(&page, &feed.reading))
    }

    async fn end_events(&mut self, read: Result<Stop>, outbox: &mut EventOutbox) -> Result<Stop> {
        self.summary.duplicates_dropped = outbox.builder.duplicates_dropped() as u64;
        if self.halted {
            return read;
        }
        let flushed = self.flush_events(outbox).await;
        finish_phase(read, flushed)
    }

    /// Send a full bulk event job in the background, once there is room for it;
    /// `still_open`: the oldest page with events not in it (`None`: every page read).
    async fn send_events(
        &mut self,
        outbox: &mut EventOutbox,
        request: EventBulkRequest,
        still_open: Option<u64>,
    ) -> Result<()> {
        let (klaviyo, stop_at) = (self.deps.klaviyo.clone(), self.stop_at);
        let items = request.events;
        let still_open = still_open.unwrap_or(self.events.next_page);
        let send = async move { klaviyo.bulk_create_events(&request, stop_at).await };
        self.enqueue(outbox, items, still_open, send).await
    }

    /// Send what is open, wait for every answer, and let the checkpoint pass every page read.
    async fn flush_events(&mut self, outbox: &mut EventOutbox) -> Result<()> {
        let builder = std::mem::take(&mut outbox.builder);
        if let Some(last) = builder.finish() {
            self.send_events(outbox, last, None).await?;
        }
        self.settle(outbox, 0).await?;
        self.events.accept_before(None);
        self.save_checkpoint().await
    }

    /// Read each accepted import job until it finishes (or the stop time), then its
    /// import errors: every failed profile is counted and logged with its reason.
    async fn read_back_import_jobs(&mut self) {
        let jobs = std::mem::take(&mut self.import_jobs);
        for (job_id, profiles) in jobs {
            let mut wait = self.deps.settings.import_poll_interval;
            let finished = loop {
                match self
                    .deps
                    .klaviyo
                    .bulk_import_job(&job_id, self.stop_at)
                    .await
                {
                    Ok(job) if job.is_finished() => break Some(job),
                    Ok(_) if self.stop_at.allows(wait + MIN_TIME_FOR_A_PAGE) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait + wait / 2).min(MAX_POLL_INTERVAL);
                    }
                    Ok(_) => break None,
                    Err(e) => {
                        warn!(job_id = %job_id, error = %e, "could not read the bulk import job's status");
                        break None;
                    }
                }
            };
            let Some(job) = finished else {
                self.summary.profiles_unverified += profiles;
                warn!(job_id = %job_id, profiles, "bulk import job not finished before the run had to stop; check it in Klaviyo");
                continue;
            };
            if job.failed_count == 0 {
                continue;
            }
            match self
                .deps
                .klaviyo
                .bulk_import_errors(&job_id, self.stop_at)
                .await
            {
                Ok(errors) => {
                    for error in &errors {
                        log_import_error(&job_id, error);
                    }
                    self.summary.profiles_failed += job.failed_count.max(errors.len() as u64);
                }
                Err(e) => {
                    self.summary.profiles_failed += job.failed_count;
                    warn!(job_id = %job_id, failed = job.failed_count, error = %e, "could not read the import errors");
                }
            }
        }
    }
}

/// Combine how reading ended with the final send (and save): out of time is a normal end;
/// any other error is returned (the checkpoint holds what was accepted before it).
fn finish_phase(read: Result<Stop>, flushed: Result<()>) -> Result<Stop> {
    let read = match read {
        Err(e) if is_out_of_time(&e) => Stop::OutOfTime,
        other => other?,
    };
    match flushed {
        Err(e) if is_out_of_time(&e) => Ok(Stop::OutOfTime),
        Err(e) => Err(e),
        Ok(()) => Ok(read),
    }
}

/// One failed profile, with the member's id (never its email or phone: logs are not the
/// place for personal data).
fn log_import_error(job_id: &str, error: &ImportError) {
    let external_id = error.original_payload.as_ref().and_then(|p| {
        p.pointer("/attributes/external_id")
            .or_else(|| p.pointer("/external_id"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    });
    warn!(
        job_id,
        external_id = external_id.as_deref().unwrap_or("(none)"),
        code = %error.code,
        reason = %error.detail,
        pointer = error.pointer.as_deref().unwrap_or(""),
        "profile failed in Klaviyo's bulk import"
    );
}
