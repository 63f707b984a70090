//! One sync run: page the TRIFFT members and activity feeds from the checkpoint, send
//! profiles through bulk import jobs and events through bulk event jobs, and move the
//! checkpoint only past what Klaviyo accepted.
//!
//! Batching: one open bulk request per kind stays open across feed pages and is sent only
//! when full (or at the end), so the number of requests is the minimum the limits allow.
//! The checkpoint of a feed may move to the cursor after page N only when no item of a page
//! <= N is still waiting in an open request, so a crash or a timeout re-sends at most the
//! open request's pages, and Klaviyo's unique_id drops the repeats.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use loyalty_bridge::klaviyo::bulk::{EventBulkBuilder, ProfileBulkBuilder, validate_profile};
use loyalty_bridge::klaviyo::limits::{BULK_BODY_MAX_BYTES, BULK_PROFILES_MAX};
use loyalty_bridge::klaviyo::{
    ClientStats, EventBulkRequest, ImportError, Profile, ProfileBulkRequest,
};
use loyalty_bridge::mapping::standard::{
    MappingIssue, Options, event_to_klaviyo, member_to_profile,
};
use loyalty_bridge::trifft::FeedPosition;
use loyalty_bridge::{Deadline, Error, Result};

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

/// The open bulk profile import: one entry per member (a later state of the same member
/// replaces the earlier one), kept serialized to stay small, with its exact request size.
#[derive(Debug)]
struct ProfileBatch {
    entries: Vec<(Vec<u8>, usize)>,
    by_member: HashMap<String, usize>,
    size: usize,
    envelope: usize,
    max_profiles: usize,
    max_bytes: usize,
    first_page: Option<u64>,
}

impl ProfileBatch {
    fn new(max_profiles: usize, max_bytes: usize) -> Self {
        // The same envelope the builder emits around its profiles.
        let envelope = serde_json::json!({
            "data": { "type": "profile-bulk-import-job", "attributes": { "profiles": { "data": [] } } }
        })
        .to_string()
        .len();
        ProfileBatch {
            entries: Vec::new(),
            by_member: HashMap::new(),
            size: envelope,
            envelope,
            max_profiles,
            max_bytes,
            first_page: None,
        }
    }

    fn key(profile: &Profile) -> Option<String> {
        let id = &profile.identity;
        id.external_id
            .as_ref()
            .map(|v| format!("id:{v}"))
            .or_else(|| id.email.as_ref().map(|v| format!("email:{v}")))
            .or_else(|| id.phone_number.as_ref().map(|v| format!("phone:{v}")))
    }

    /// Whether `size` more bytes (a new profile) fit.
    fn fits(&self, size: usize) -> bool {
        self.entries.len() < self.max_profiles
            && self.size + usize::from(!self.entries.is_empty()) + size <= self.max_bytes
    }

    /// Add or replace; returns false (nothing changed) when a new profile does not fit.
    fn add(&mut self, profile: &Profile, size: usize, page: u64) -> Result<bool> {
        let bytes =
            serde_json::to_vec(profile).map_err(|e| Error::invalid("profile", e.to_string()))?;
        let key = Self::key(profile);
        if let Some(&i) = key.as_ref().and_then(|k| self.by_member.get(k)) {
            let old = self.entries[i].1;
            if self.size - old + size <= self.max_bytes {
                self.size = self.size - old + size;
                self.entries[i] = (bytes, size);
                return Ok(true);
            }
            return Ok(false);
        }
        if !self.fits(size) {
            return Ok(false);
        }
        self.size += usize::from(!self.entries.is_empty()) + size;
        if let Some(k) = key {
            self.by_member.insert(k, self.entries.len());
        }
        self.entries.push((bytes, size));
        self.first_page.get_or_insert(page);
        Ok(true)
    }

    /// The open batch as bulk requests (one, unless the builder counts differently), and
    /// an empty batch in its place.
    fn take(&mut self) -> Result<Vec<ProfileBulkRequest>> {
        let entries = std::mem::take(&mut self.entries);
        self.by_member.clear();
        self.size = self.envelope;
        self.first_page = None;
        let mut builder = ProfileBulkBuilder::with_limits(self.max_profiles, self.max_bytes);
        let mut requests = Vec::new();
        for (bytes, _) in entries {
            let profile: Profile = serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid("profile", e.to_string()))?;
            requests.extend(builder.push(&profile)?);
        }
        requests.extend(builder.finish());
        Ok(requests)
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

        let members_start = self.start_position(self.checkpoint.members_cursor.clone());
        let mut outcome = self.sync_members(members_start).await;
        if matches!(outcome, Ok(Stop::EndOfFeed)) {
            let events_start = self.start_position(self.checkpoint.events_cursor.clone());
            outcome = self.sync_events(events_start).await;
        }
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

    async fn sync_members(&mut self, mut position: FeedPosition) -> Result<Stop> {
        let mut batch = ProfileBatch::new(BULK_PROFILES_MAX, BULK_BODY_MAX_BYTES);
        let read = self.read_members(&mut position, &mut batch).await;
        if self.halted {
            return read;
        }
        // Reading ended (end of feed, time, or a TRIFFT error that lost nothing): every page
        // read is fully in the batch, so sending it lets the checkpoint pass them all.
        let flushed = self.send_profiles(&mut batch, None).await;
        finish_phase(read, flushed)
    }

    async fn read_members(
        &mut self,
        position: &mut FeedPosition,
        batch: &mut ProfileBatch,
    ) -> Result<Stop> {
        let page_size = self.deps.settings.page_size;
        loop {
            if !self.time_for_a_page() {
                return Ok(Stop::OutOfTime);
            }
            let page = self
                .deps
                .trifft
                .members_changed(position, page_size, self.stop_at)
                .await?;
            let page_index = self.members.page_read(page.next_cursor.clone());
            self.summary.members += page.data.len() as u64;
            for member in &page.data {
                let profile = match member_to_profile(member) {
                    Ok(profile) => profile,
                    Err(issue) => {
                        self.report_member_issue(&issue);
                        continue;
                    }
                };
                let size = match validate_profile(&profile) {
                    Ok(size) => size,
                    Err(e) => {
                        self.summary.profiles_failed += 1;
                        warn!(member_id = %member.id, reason = %e, "profile not sent: Klaviyo would refuse it");
                        continue;
                    }
                };
                if !batch.add(&profile, size, page_index)? {
                    // The rest of this page is not in the batch yet: its page stays open.
                    self.send_profiles(batch, Some(page_index)).await?;
                    batch.add(&profile, size, page_index)?;
                }
            }
            if batch.first_page.is_none() && self.members.accept_before(None) {
                self.save_checkpoint().await?;
            }
            if !page.has_more {
                return Ok(Stop::EndOfFeed);
            }
            *position = FeedPosition::Cursor(page.next_cursor);
        }
    }

    fn report_member_issue(&mut self, issue: &MappingIssue) {
        match issue {
            MappingIssue::NoIdentifier { .. } => self.summary.members_without_identifier += 1,
            _ => self.summary.profiles_failed += 1,
        }
        warn!(issue = issue.kind(), reason = %issue, "member not sent");
    }

    /// Send the open profile batch; `still_open`: the oldest page with members not in it.
    /// On success the members checkpoint may move up to that page.
    async fn send_profiles(
        &mut self,
        batch: &mut ProfileBatch,
        still_open: Option<u64>,
    ) -> Result<()> {
        if !batch.entries.is_empty() {
            let requests = batch.take();
            let sent = self.send_profile_requests(requests).await;
            if sent.is_err() {
                // What the batch held is gone from memory: nothing after it may be accepted.
                self.halted = true;
            }
            sent?;
        }
        self.members.accept_before(still_open);
        self.save_checkpoint().await
    }

    async fn send_profile_requests(
        &mut self,
        requests: Result<Vec<ProfileBulkRequest>>,
    ) -> Result<()> {
        for request in requests? {
            let job = self
                .deps
                .klaviyo
                .bulk_import_profiles(&request, self.stop_at)
                .await?;
            self.summary.profile_jobs += 1;
            self.summary.profiles_sent += request.profiles as u64;
            self.import_jobs.push((job.id, request.profiles as u64));
        }
        Ok(())
    }

    async fn sync_events(&mut self, mut position: FeedPosition) -> Result<Stop> {
        let mut open = EventBatch {
            builder: EventBulkBuilder::new(),
            first_page: None,
        };
        let read = self.read_events(&mut position, &mut open).await;
        self.summary.duplicates_dropped = open.builder.duplicates_dropped() as u64;
        if self.halted {
            return read;
        }
        let flushed = match std::mem::take(&mut open.builder).finish() {
            Some(last) => self.send_events(&last, None).await,
            None => {
                self.events.accept_before(None);
                self.save_checkpoint().await
            }
        };
        finish_phase(read, flushed)
    }

    async fn read_events(
        &mut self,
        position: &mut FeedPosition,
        open: &mut EventBatch,
    ) -> Result<Stop> {
        let options = Options {
            metric_prefix: self.deps.settings.metric_prefix.clone(),
            backfill: self.trigger.mode == Mode::Backfill,
            // Klaviyo takes times up to a year ahead; a day less leaves room for clock skew.
            latest_time: Some(Utc::now() + chrono::Duration::days(364)),
        };
        let page_size = self.deps.settings.page_size;
        loop {
            if !self.time_for_a_page() {
                return Ok(Stop::OutOfTime);
            }
            let page = self
                .deps
                .trifft
                .activity_events(position, page_size, self.stop_at)
                .await?;
            let page_index = self.events.page_read(page.next_cursor.clone());
            self.summary.events_read += page.data.len() as u64;
            for activity in &page.data {
                let (identity, event) = match event_to_klaviyo(activity, &options) {
                    Ok(mapped) => mapped,
                    Err(issue) => {
                        self.summary.events_skipped += 1;
                        warn!(issue = issue.kind(), reason = %issue, "event not sent");
                        continue;
                    }
                };
                match open.builder.push(&identity, event) {
                    Ok(None) => {
                        if open.builder.pending_events() > 0 {
                            open.first_page.get_or_insert(page_index);
                        }
                    }
                    Ok(Some(full)) => {
                        // This event opened the next request, so its page is still open.
                        self.send_events(&full, Some(page_index)).await?;
                        open.first_page = Some(page_index);
                    }
                    Err(e) => {
                        self.summary.events_skipped += 1;
                        warn!(event_id = %activity.id, reason = %e, "event not sent: Klaviyo would refuse it");
                    }
                }
            }
            if open.first_page.is_none() && self.events.accept_before(None) {
                self.save_checkpoint().await?;
            }
            if !page.has_more {
                return Ok(Stop::EndOfFeed);
            }
            *position = FeedPosition::Cursor(page.next_cursor);
        }
    }

    /// Send one bulk event job; `still_open`: the oldest page with events not in it.
    async fn send_events(
        &mut self,
        request: &EventBulkRequest,
        still_open: Option<u64>,
    ) -> Result<()> {
        if let Err(e) = self
            .deps
            .klaviyo
            .bulk_create_events(request, self.stop_at)
            .await
        {
            // The request's events are gone from memory: nothing after them may be accepted.
            self.halted = true;
            return Err(e);
        }
        self.summary.event_jobs += 1;
        self.summary.events_sent += request.events as u64;
        self.events.accept_before(still_open);
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

/// The open bulk event job.
struct EventBatch {
    builder: EventBulkBuilder,
    first_page: Option<u64>,
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
