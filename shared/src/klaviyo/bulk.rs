//! Builders that split any number of events and profiles into bulk requests at the
//! documented count and byte limits. Pure: no I/O.
//!
//! Packing is greedy in the order given: a request is closed only when the next item does
//! not fit, which for a fixed order is the fewest requests the limits allow (removing
//! items from a request never makes it larger, so a maximal prefix is always right).
//! Sizes are accounted exactly: a compact JSON array is `[` + items joined by `,` + `]`,
//! so each request's size is the sum of its parts' serialized sizes plus the commas, and
//! the body emitted is exactly that long.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::limits::{
    BULK_BODY_MAX_BYTES, BULK_EVENTS_MAX, BULK_PROFILES_MAX, EVENT_PROPERTIES_MAX,
    METRIC_NAME_MAX_CHARS, PROFILE_MAX_BYTES, STRING_MAX_BYTES,
};
use super::model::{
    Event, Profile, ProfileIdentity, event_bulk_entry_of, event_resource, profile_resource,
};
use crate::{Error, Result};

/// One `POST /api/event-bulk-create-jobs` body, serialised, with what it holds.
#[derive(Debug, Clone)]
pub struct EventBulkRequest {
    pub body: Bytes,
    pub events: usize,
    pub profiles: usize,
    /// The `unique_id` of every event in the body, in the order pushed (for reporting).
    pub unique_ids: Vec<String>,
}

/// One `POST /api/profile-bulk-import-jobs` body, serialised, with what it holds.
#[derive(Debug, Clone)]
pub struct ProfileBulkRequest {
    pub body: Bytes,
    pub profiles: usize,
}

fn to_bytes(value: &Value, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::invalid(what, e.to_string()))
}

fn event_job(entries: Vec<Value>) -> Value {
    json!({
        "data": {
            "type": "event-bulk-create-job",
            "attributes": { "events-bulk-create": { "data": entries } }
        }
    })
}

fn profile_job(profiles: Vec<Value>) -> Value {
    json!({
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": { "profiles": { "data": profiles } }
        }
    })
}

/// Stands for the items of the one array in a document given to [`OpenArray::around`].
/// serde_json writes the NUL as `\u0000`, and `["` cannot come from data (inside a string
/// the quote is escaped), so `["\u0000…"]` in the output is always this placeholder.
const PLACEHOLDER: &str = "\u{0}bulk-items";

/// A serialised JSON document with one array left open: `head` ends with the array's `[`,
/// `tail` starts with its `]`. Items serialised one by one are written in between, so a
/// request is built from bytes, never from a tree of `Value`s (which takes several times
/// the memory of the JSON it stands for).
#[derive(Debug, Clone, Default)]
struct OpenArray {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl OpenArray {
    /// `document` holds `[PLACEHOLDER]` exactly once.
    fn around(document: &Value) -> Self {
        let bytes = serde_json::to_vec(document).unwrap_or_default();
        let marker = serde_json::to_vec(&json!([PLACEHOLDER])).unwrap_or_default();
        match bytes
            .windows(marker.len())
            .position(|w| w == marker.as_slice())
        {
            Some(at) => OpenArray {
                head: bytes[..=at].to_vec(),
                tail: bytes[at + marker.len() - 1..].to_vec(),
            },
            None => {
                debug_assert!(false, "the document holds the placeholder");
                OpenArray {
                    head: bytes,
                    tail: Vec::new(),
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

/// The first string in `value` longer than `max` bytes, as a JSON-pointer-like path.
fn oversized_string(value: &Value, path: &str, max: usize) -> Option<String> {
    match value {
        Value::String(s) if s.len() > max => Some(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| oversized_string(v, &format!("{path}/{i}"), max)),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = format!("{path}/{k}");
            if k.len() > max {
                Some(here)
            } else {
                oversized_string(v, &here, max)
            }
        }),
        _ => None,
    }
}

fn oversized_string_in(map: &Map<String, Value>, path: &str, max: usize) -> Option<String> {
    map.iter().find_map(|(k, v)| {
        let here = format!("{path}/{k}");
        if k.len() > max {
            Some(here)
        } else {
            oversized_string(v, &here, max)
        }
    })
}

fn check_identity(identity: &ProfileIdentity, what: &str) -> Result<()> {
    let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
    if identity.is_empty()
        || (blank(&identity.external_id) && blank(&identity.email) && blank(&identity.phone_number))
    {
        return Err(Error::invalid(
            "profile",
            format!("{what} has no external_id, email or phone_number"),
        ));
    }
    for (name, value) in [
        ("external_id", &identity.external_id),
        ("email", &identity.email),
        ("phone_number", &identity.phone_number),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > STRING_MAX_BYTES) {
            return Err(Error::invalid(
                format!("profile.{name}"),
                format!("{what}: longer than {STRING_MAX_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

/// Check one event against Klaviyo's per-event limits (for `POST /api/events` too).
/// The error names the field and the event's unique_id.
pub fn validate_event(identity: &ProfileIdentity, event: &Event) -> Result<()> {
    let which = format!("event {:?}", event.unique_id);
    check_identity(identity, &which)?;
    if event.unique_id.trim().is_empty() {
        // Without it a re-send is not harmless, and a bulk request could repeat an event.
        return Err(Error::invalid("unique_id", "an event needs a unique_id"));
    }
    if event.unique_id.len() > STRING_MAX_BYTES {
        return Err(Error::invalid(
            "unique_id",
            format!("{which}: longer than {STRING_MAX_BYTES} bytes"),
        ));
    }
    if event.metric_name.trim().is_empty() {
        return Err(Error::invalid(
            "metric.name",
            format!("{which}: the metric name is empty"),
        ));
    }
    if event.metric_name.chars().count() >= METRIC_NAME_MAX_CHARS {
        return Err(Error::invalid(
            "metric.name",
            format!(
                "{which}: the metric name must be shorter than {METRIC_NAME_MAX_CHARS} characters"
            ),
        ));
    }
    if event.properties.len() > EVENT_PROPERTIES_MAX {
        return Err(Error::invalid(
            "properties",
            format!(
                "{which}: {} properties, at most {EVENT_PROPERTIES_MAX} allowed",
                event.properties.len()
            ),
        ));
    }
    if let Some(path) = oversized_string_in(&event.properties, "properties", STRING_MAX_BYTES) {
        return Err(Error::invalid(
            path,
            format!("{which}: a string longer than {STRING_MAX_BYTES} bytes"),
        ));
    }
    if event
        .value_currency
        .as_ref()
        .is_some_and(|c| c.len() > STRING_MAX_BYTES)
    {
        return Err(Error::invalid(
            "value_currency",
            format!("{which}: longer than {STRING_MAX_BYTES} bytes"),
        ));
    }
    if event.value.is_some_and(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "value",
            format!("{which}: not a finite number"),
        ));
    }
    Ok(())
}

/// Check one profile against Klaviyo's per-profile limits; returns its serialized size.
pub fn validate_profile(profile: &Profile) -> Result<usize> {
    profile_bytes(profile).map(|bytes| bytes.len())
}

/// The profile as one item of a bulk import (or the `data` of a profile import),
/// serialised, once it passes Klaviyo's per-profile limits.
fn profile_bytes(profile: &Profile) -> Result<Vec<u8>> {
    let which = match &profile.identity.external_id {
        Some(id) => format!("profile {id:?}"),
        None => "profile".to_string(),
    };
    check_identity(&profile.identity, &which)?;
    let resource = profile_resource(profile);
    if let Some(path) = oversized_string(&resource["attributes"], "attributes", STRING_MAX_BYTES) {
        return Err(Error::invalid(
            path,
            format!("{which}: a string longer than {STRING_MAX_BYTES} bytes"),
        ));
    }
    let bytes = to_bytes(&resource, "profile")?;
    if bytes.len() > PROFILE_MAX_BYTES {
        return Err(Error::invalid(
            "profile",
            format!(
                "{which}: {} bytes serialized, at most {PROFILE_MAX_BYTES} allowed",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// One profile's entry in the open event request, serialised: the entry around its
/// events, and the events themselves, comma-separated.
#[derive(Debug)]
struct Entry {
    frame: OpenArray,
    events: Vec<u8>,
}

impl Entry {
    fn len(&self) -> usize {
        self.frame.len() + self.events.len()
    }
}

/// Packs events into `POST /api/event-bulk-create-jobs` requests.
#[derive(Debug)]
pub struct EventBulkBuilder {
    max_events: usize,
    max_bytes: usize,
    job: OpenArray,
    entries: Vec<Entry>,
    by_identity: HashMap<ProfileIdentity, usize>,
    /// (identifier kind, identifier, metric, unique_id) of every event in the open request:
    /// Klaviyo fails a whole bulk request that repeats one, so a repeat is dropped. Keyed
    /// by each identifier, so two identities sharing an email are also caught.
    seen: HashSet<(u8, String, String, String)>,
    events: usize,
    /// Size of the open request's body, were it taken now.
    size: usize,
    unique_ids: Vec<String>,
    duplicates_dropped: usize,
}

impl Default for EventBulkBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBulkBuilder {
    /// With Klaviyo's limits: 1,000 events and 5 MB a request.
    pub fn new() -> Self {
        Self::with_limits(BULK_EVENTS_MAX, BULK_BODY_MAX_BYTES)
    }

    pub fn with_limits(max_events: usize, max_bytes: usize) -> Self {
        let job = OpenArray::around(&event_job(vec![json!(PLACEHOLDER)]));
        EventBulkBuilder {
            max_events: max_events.max(1),
            max_bytes,
            size: job.len(),
            job,
            entries: Vec::new(),
            by_identity: HashMap::new(),
            seen: HashSet::new(),
            events: 0,
            unique_ids: Vec::new(),
            duplicates_dropped: 0,
        }
    }

    /// Repeats dropped so far (same profile identifier, metric and unique_id in one request).
    pub fn duplicates_dropped(&self) -> usize {
        self.duplicates_dropped
    }

    /// Events in the open request.
    pub fn pending_events(&self) -> usize {
        self.events
    }

    /// Add one event. Returns the full request when this event did not fit into it (the
    /// event then opens the next one). An event that cannot fit even alone is refused with
    /// `Error::InvalidInput` and nothing is added.
    pub fn push(
        &mut self,
        identity: &ProfileIdentity,
        event: Event,
    ) -> Result<Option<EventBulkRequest>> {
        validate_event(identity, &event)?;
        let event_bytes = to_bytes(&event_resource(&event), "event")?;
        let frame = OpenArray::around(&event_bulk_entry_of(identity, vec![json!(PLACEHOLDER)]));
        let alone = self.job.len() + frame.len() + event_bytes.len();
        if alone > self.max_bytes {
            return Err(Error::invalid(
                "event",
                format!(
                    "event {:?}: {alone} bytes as a bulk request alone, at most {} allowed",
                    event.unique_id, self.max_bytes
                ),
            ));
        }
        let keys = dedup_keys(identity, &event);
        if keys.iter().any(|k| self.seen.contains(k)) {
            self.duplicates_dropped += 1;
            return Ok(None);
        }

        let fits = |b: &Self| {
            let grown = match b.by_identity.get(identity) {
                // A comma and the event inside the profile's existing events array.
                Some(_) => b.size + 1 + event_bytes.len(),
                None => {
                    b.size + usize::from(!b.entries.is_empty()) + frame.len() + event_bytes.len()
                }
            };
            b.events < b.max_events && grown <= b.max_bytes
        };
        let full = if fits(self) { None } else { self.take() };
        // Not a repeat in a fresh request either: `take` cleared what was seen.
        self.unique_ids.push(event.unique_id);
        self.seen.extend(keys);
        self.events += 1;
        match self.by_identity.get(identity) {
            Some(&i) => {
                let entry = &mut self.entries[i];
                entry.events.push(b',');
                entry.events.extend_from_slice(&event_bytes);
                self.size += 1 + event_bytes.len();
            }
            None => {
                let entry = Entry {
                    frame,
                    events: event_bytes,
                };
                self.size += usize::from(!self.entries.is_empty()) + entry.len();
                self.by_identity
                    .insert(identity.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
        Ok(full)
    }

    /// The open request if it holds as many events as a request may: nothing more can
    /// join it, so it need not wait for the next event to be sent.
    pub fn take_if_full(&mut self) -> Option<EventBulkRequest> {
        if self.events >= self.max_events {
            self.take()
        } else {
            None
        }
    }

    /// The last, partly filled request, if any event is left in it.
    pub fn finish(mut self) -> Option<EventBulkRequest> {
        self.take()
    }

    fn take(&mut self) -> Option<EventBulkRequest> {
        if self.entries.is_empty() {
            return None;
        }
        let entries = std::mem::take(&mut self.entries);
        let profiles = entries.len();
        let mut body = Vec::with_capacity(self.size);
        body.extend_from_slice(&self.job.head);
        for (i, entry) in entries.into_iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&entry.frame.head);
            body.extend_from_slice(&entry.events);
            body.extend_from_slice(&entry.frame.tail);
        }
        body.extend_from_slice(&self.job.tail);
        debug_assert_eq!(body.len(), self.size, "size accounting must match the body");
        let request = EventBulkRequest {
            body: Bytes::from(body),
            events: self.events,
            profiles,
            unique_ids: std::mem::take(&mut self.unique_ids),
        };
        self.by_identity.clear();
        self.seen.clear();
        self.events = 0;
        self.size = self.job.len();
        Some(request)
    }
}

fn dedup_keys(identity: &ProfileIdentity, event: &Event) -> Vec<(u8, String, String, String)> {
    [
        (0u8, &identity.external_id),
        (1, &identity.email),
        (2, &identity.phone_number),
    ]
    .into_iter()
    .filter_map(|(kind, v)| {
        v.as_ref().map(|v| {
            (
                kind,
                v.clone(),
                event.metric_name.clone(),
                event.unique_id.clone(),
            )
        })
    })
    .collect()
}

/// Split events into as few bulk requests as the limits allow. Events refused by
/// [`EventBulkBuilder::push`] come back as errors; the rest are in the requests.
pub fn split_events(
    events: impl IntoIterator<Item = (ProfileIdentity, Event)>,
) -> (Vec<EventBulkRequest>, Vec<Error>) {
    let mut builder = EventBulkBuilder::new();
    let mut requests = Vec::new();
    let mut errors = Vec::new();
    for (identity, event) in events {
        match builder.push(&identity, event) {
            Ok(Some(full)) => requests.push(full),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    requests.extend(builder.finish());
    (requests, errors)
}

/// Where one profile is in the open request's buffer.
#[derive(Debug)]
struct Slot {
    /// What identifies the member (see [`member_key`]), if anything.
    key: Option<String>,
    start: usize,
    /// Without the comma that follows it in the buffer.
    len: usize,
    live: bool,
}

/// The identifier a bulk import matches a profile on first: external_id, else email,
/// else phone number.
fn member_key(identity: &ProfileIdentity) -> Option<String> {
    identity
        .external_id
        .as_ref()
        .map(|v| format!("id:{v}"))
        .or_else(|| identity.email.as_ref().map(|v| format!("email:{v}")))
        .or_else(|| identity.phone_number.as_ref().map(|v| format!("phone:{v}")))
}

/// Packs profiles into `POST /api/profile-bulk-import-jobs` requests.
///
/// A job holds each member once: a profile whose identifier is already in the open
/// request replaces the earlier one (a job's items have no order Klaviyo promises).
/// The open request is kept as the body it will be: one buffer, grown in place.
#[derive(Debug)]
pub struct ProfileBulkBuilder {
    max_profiles: usize,
    max_bytes: usize,
    job: OpenArray,
    /// The job's head, then every profile followed by a comma. A replaced profile leaves
    /// a gap, closed when the request is taken or when gaps grow large.
    buffer: Vec<u8>,
    slots: Vec<Slot>,
    by_member: HashMap<String, usize>,
    /// Live profiles and their bytes (without commas).
    count: usize,
    live_bytes: usize,
    gap_bytes: usize,
}

impl Default for ProfileBulkBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProfileBulkBuilder {
    /// With Klaviyo's limits: 10,000 profiles and 5 MB a request.
    pub fn new() -> Self {
        Self::with_limits(BULK_PROFILES_MAX, BULK_BODY_MAX_BYTES)
    }

    pub fn with_limits(max_profiles: usize, max_bytes: usize) -> Self {
        let job = OpenArray::around(&profile_job(vec![json!(PLACEHOLDER)]));
        let mut builder = ProfileBulkBuilder {
            max_profiles: max_profiles.max(1),
            max_bytes,
            job,
            buffer: Vec::new(),
            slots: Vec::new(),
            by_member: HashMap::new(),
            count: 0,
            live_bytes: 0,
            gap_bytes: 0,
        };
        builder.buffer = builder.fresh_buffer();
        builder
    }

    /// Profiles in the open request.
    pub fn pending_profiles(&self) -> usize {
        self.count
    }

    /// Size of the open request's body, were it taken now.
    fn size(&self) -> usize {
        self.job.len() + self.live_bytes + self.count.saturating_sub(1)
    }

    /// Add one profile (replacing the same member's earlier one in the open request).
    /// Returns the full request when this profile did not fit into it. A profile over
    /// 100 KB, with a string over 100 KB or without an identifier is refused with
    /// `Error::InvalidInput` and nothing is added or replaced.
    pub fn push(&mut self, profile: &Profile) -> Result<Option<ProfileBulkRequest>> {
        let bytes = profile_bytes(profile)?;
        if self.job.len() + bytes.len() > self.max_bytes {
            return Err(Error::invalid(
                "profile",
                format!(
                    "{} bytes as a bulk request alone, at most {} allowed",
                    self.job.len() + bytes.len(),
                    self.max_bytes
                ),
            ));
        }
        let key = member_key(&profile.identity);
        if let Some(i) = key.as_ref().and_then(|k| self.by_member.remove(k)) {
            self.remove(i);
        }
        let grown = self.size() + usize::from(self.count > 0) + bytes.len();
        let full = if self.count < self.max_profiles && grown <= self.max_bytes {
            None
        } else {
            self.take()
        };
        if let Some(k) = &key {
            self.by_member.insert(k.clone(), self.slots.len());
        }
        self.slots.push(Slot {
            key,
            start: self.buffer.len(),
            len: bytes.len(),
            live: true,
        });
        self.buffer.extend_from_slice(&bytes);
        self.buffer.push(b',');
        self.count += 1;
        self.live_bytes += bytes.len();
        // Bound what replaced profiles leave behind (a feed repeating one member).
        if self.gap_bytes > self.live_bytes.max(PROFILE_MAX_BYTES) {
            self.compact();
        }
        Ok(full)
    }

    /// The open request if it holds as many profiles as a request may (a later state of
    /// one of its members then goes into the next request).
    pub fn take_if_full(&mut self) -> Option<ProfileBulkRequest> {
        if self.count >= self.max_profiles {
            self.take()
        } else {
            None
        }
    }

    /// The last, partly filled request, if any profile is left in it.
    pub fn finish(mut self) -> Option<ProfileBulkRequest> {
        self.take()
    }

    fn remove(&mut self, slot: usize) {
        let slot = &mut self.slots[slot];
        slot.live = false;
        self.count -= 1;
        self.live_bytes -= slot.len;
        self.gap_bytes += slot.len + 1;
    }

    /// Move every live profile down over the gaps, in order.
    fn compact(&mut self) {
        let mut write = self.job.head.len();
        let slots = std::mem::take(&mut self.slots);
        self.by_member.clear();
        for mut slot in slots.into_iter().filter(|slot| slot.live) {
            let with_comma = slot.len + 1;
            self.buffer
                .copy_within(slot.start..slot.start + with_comma, write);
            slot.start = write;
            write += with_comma;
            if let Some(k) = &slot.key {
                self.by_member.insert(k.clone(), self.slots.len());
            }
            self.slots.push(slot);
        }
        self.buffer.truncate(write);
        self.gap_bytes = 0;
    }

    /// An empty request's buffer, with room for a full one (untouched room costs no memory).
    fn fresh_buffer(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(self.max_bytes.min(BULK_BODY_MAX_BYTES) + 1);
        buffer.extend_from_slice(&self.job.head);
        buffer
    }

    fn take(&mut self) -> Option<ProfileBulkRequest> {
        if self.count == 0 {
            return None;
        }
        self.compact();
        let size = self.size();
        let fresh = self.fresh_buffer();
        let mut body = std::mem::replace(&mut self.buffer, fresh);
        body.pop(); // the comma after the last profile
        body.extend_from_slice(&self.job.tail);
        debug_assert_eq!(body.len(), size, "size accounting must match the body");
        let profiles = std::mem::take(&mut self.count);
        self.slots.clear();
        self.by_member.clear();
        self.live_bytes = 0;
        Some(ProfileBulkRequest {
            body: Bytes::from(body),
            profiles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::Map;

    fn identity(n: usize) -> ProfileIdentity {
        ProfileIdentity {
            external_id: Some(format!("member-{n}")),
            ..Default::default()
        }
    }

    fn event(id: &str, pad: usize) -> Event {
        Event {
            metric_name: "Wallet credited".into(),
            properties: Map::from_iter([
                ("points".to_string(), json!(50)),
                ("note".to_string(), json!("x".repeat(pad))),
            ]),
            time: Utc.with_ymd_and_hms(2026, 7, 20, 10, 15, 0).unwrap(),
            value: None,
            value_currency: None,
            unique_id: id.into(),
            backfill: false,
        }
    }

    #[test]
    fn profile_body_spliced_from_bytes_is_the_job_serde_would_write() {
        let profiles: Vec<Profile> = (0..3)
            .map(|n| Profile {
                identity: identity(n),
                first_name: Some(format!("Name {n}")),
                properties: Map::from_iter([("trifft_points".to_string(), json!(n * 10))]),
                ..Default::default()
            })
            .collect();
        let mut builder = ProfileBulkBuilder::new();
        for p in &profiles {
            assert!(builder.push(p).unwrap().is_none());
        }
        let request = builder.finish().unwrap();
        let expected = profile_job(profiles.iter().map(profile_resource).collect());
        assert_eq!(request.body, serde_json::to_vec(&expected).unwrap());
        assert_eq!(request.profiles, 3);
    }

    /// Strings that could confuse splicing: quotes, brackets, a NUL, the placeholder's text.
    fn awkward(n: usize) -> String {
        format!("[\"{PLACEHOLDER}\"] \\u0000 [] \"ü{n}")
    }

    #[test]
    fn event_body_spliced_from_bytes_is_the_job_serde_would_write() {
        let who = |n: usize| ProfileIdentity {
            external_id: Some(awkward(n)),
            email: Some(format!("m{n}@example.com")),
            ..Default::default()
        };
        let mut tricky = event("t", 0);
        tricky
            .properties
            .insert(awkward(9), json!([awkward(1), {"k": []}]));
        tricky.value = Some(12.5);
        tricky.value_currency = Some("EUR".into());
        tricky.backfill = true;
        let items = vec![
            (who(1), event("a", 3)),
            (who(2), tricky.clone()),
            (who(1), event("c", 0)),
        ];
        let reqs = finish_all(EventBulkBuilder::new(), items);
        let first = event("a", 3);
        let third = event("c", 0);
        let expected = event_job(vec![
            super::super::model::event_bulk_entry(&who(1), &[&first, &third]),
            super::super::model::event_bulk_entry(&who(2), &[&tricky]),
        ]);
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            String::from_utf8(reqs[0].body.to_vec()).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }

    #[test]
    fn a_member_is_in_a_profile_job_once_at_its_latest_state() {
        let state = |points: u64, pad: usize| {
            let mut p = profile(1, pad);
            p.identity.external_id = Some(awkward(1));
            p.properties.insert("trifft_points".into(), json!(points));
            p
        };
        let mut b = ProfileBulkBuilder::new();
        b.push(&profile(0, 0)).unwrap();
        b.push(&state(10, 0)).unwrap();
        b.push(&profile(2, 0)).unwrap();
        assert!(b.push(&state(20, 5)).unwrap().is_none());
        assert_eq!(b.pending_profiles(), 3);
        let body = b.finish().unwrap().body;
        let expected = profile_job(
            [profile(0, 0), profile(2, 0), state(20, 5)]
                .iter()
                .map(profile_resource)
                .collect(),
        );
        assert_eq!(body, serde_json::to_vec(&expected).unwrap());

        // A later state that no longer fits leaves the old one out of the full request.
        let two = {
            let mut b = ProfileBulkBuilder::with_limits(100, usize::MAX);
            b.push(&profile(0, 0)).unwrap();
            b.push(&state(10, 0)).unwrap();
            b.finish().unwrap().body.len()
        };
        let mut b = ProfileBulkBuilder::with_limits(100, two);
        b.push(&profile(0, 0)).unwrap();
        b.push(&state(10, 0)).unwrap();
        let full = b.push(&state(30, 50)).unwrap().unwrap();
        assert_eq!(
            full.body,
            serde_json::to_vec(&profile_job(vec![profile_resource(&profile(0, 0))])).unwrap()
        );
        let last = b.finish().unwrap();
        assert_eq!(
            last.body,
            serde_json::to_vec(&profile_job(vec![profile_resource(&state(30, 50))])).unwrap()
        );
    }

    #[test]
    fn a_member_repeated_many_times_does_not_grow_the_buffer() {
        let mut b = ProfileBulkBuilder::new();
        b.push(&profile(0, 0)).unwrap();
        for i in 0..2_000 {
            let mut p = profile(1, 1_000);
            p.properties.insert("trifft_points".into(), json!(i));
            assert!(b.push(&p).unwrap().is_none());
            assert!(b.buffer.len() < 4 * PROFILE_MAX_BYTES, "{}", b.buffer.len());
        }
        let request = b.finish().unwrap();
        assert_eq!(request.profiles, 2);
        let body = parse(&request.body);
        let profiles = body["data"]["attributes"]["profiles"]["data"]
            .as_array()
            .unwrap();
        assert_eq!(
            profiles[1]["attributes"]["properties"]["trifft_points"],
            1_999
        );
    }

    fn all(
        builder: &mut EventBulkBuilder,
        items: Vec<(ProfileIdentity, Event)>,
    ) -> Vec<EventBulkRequest> {
        let mut out = Vec::new();
        for (i, e) in items {
            out.extend(builder.push(&i, e).unwrap());
        }
        out
    }

    fn finish_all(
        mut builder: EventBulkBuilder,
        items: Vec<(ProfileIdentity, Event)>,
    ) -> Vec<EventBulkRequest> {
        let mut out = all(&mut builder, items);
        out.extend(builder.finish());
        out
    }

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn a_thousand_events_make_one_request_and_one_more_makes_two() {
        let items = |n: usize| {
            (0..n)
                .map(|i| (identity(i % 37), event(&format!("e{i}"), 10)))
                .collect::<Vec<_>>()
        };
        let one = finish_all(EventBulkBuilder::new(), items(1_000));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].events, 1_000);
        assert_eq!(one[0].profiles, 37);
        let two = finish_all(EventBulkBuilder::new(), items(1_001));
        assert_eq!(two.iter().map(|r| r.events).collect::<Vec<_>>(), [1_000, 1]);
    }

    #[test]
    fn events_of_one_profile_share_one_entry_in_push_order() {
        let items = vec![
            (identity(1), event("a", 0)),
            (identity(2), event("b", 0)),
            (identity(1), event("c", 0)),
        ];
        let reqs = finish_all(EventBulkBuilder::new(), items);
        let body = parse(&reqs[0].body);
        let entries = body["data"]["attributes"]["events-bulk-create"]["data"]
            .as_array()
            .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0]["attributes"]["profile"]["data"]["attributes"]["external_id"],
            "member-1"
        );
        let ids: Vec<_> = entries[0]["attributes"]["events"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["attributes"]["unique_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(reqs[0].unique_ids, ["a", "b", "c"]);
    }

    #[test]
    fn splits_exactly_at_the_byte_limit() {
        // Find the size of two events for two profiles, then allow exactly that.
        let items = || {
            vec![
                (identity(1), event("a", 100)),
                (identity(2), event("b", 100)),
                (identity(3), event("c", 100)),
            ]
        };
        let unlimited = finish_all(
            EventBulkBuilder::with_limits(1_000, usize::MAX),
            items()[..2].to_vec(),
        );
        let two_size = unlimited[0].body.len();
        let exact = finish_all(EventBulkBuilder::with_limits(1_000, two_size), items());
        assert_eq!(exact.iter().map(|r| r.events).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(exact[0].body.len(), two_size, "fills to exactly the limit");
        let one_less = finish_all(EventBulkBuilder::with_limits(1_000, two_size - 1), items());
        assert_eq!(
            one_less.iter().map(|r| r.events).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        for r in exact.iter().chain(&one_less) {
            assert!(r.body.len() <= two_size);
        }
    }

    #[test]
    fn the_byte_limit_holds_when_a_profile_grows_an_existing_entry() {
        let items = || {
            vec![
                (identity(1), event("a", 50)),
                (identity(1), event("b", 50)),
                (identity(1), event("c", 50)),
            ]
        };
        let size_two = finish_all(
            EventBulkBuilder::with_limits(1_000, usize::MAX),
            items()[..2].to_vec(),
        )[0]
        .body
        .len();
        let reqs = finish_all(EventBulkBuilder::with_limits(1_000, size_two), items());
        assert_eq!(reqs.iter().map(|r| r.events).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(reqs[0].body.len(), size_two);
    }

    #[test]
    fn five_megabytes_split_with_every_body_within_the_limit() {
        // 60 events of ~90 KB: about 5.4 MB, so two requests.
        let items: Vec<_> = (0..60)
            .map(|i| (identity(i), event(&format!("big{i}"), 90_000)))
            .collect();
        let reqs = finish_all(EventBulkBuilder::new(), items);
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs.iter().map(|r| r.events).sum::<usize>(), 60);
        for r in &reqs {
            assert!(r.body.len() <= BULK_BODY_MAX_BYTES);
        }
        // The first was full: the next event would not have fitted.
        let event_len = reqs[0].body.len() / reqs[0].events;
        assert!(reqs[0].body.len() + event_len > BULK_BODY_MAX_BYTES);
    }

    #[test]
    fn a_request_at_its_count_limit_is_taken_without_waiting_for_the_next_item() {
        let mut events = EventBulkBuilder::with_limits(2, usize::MAX);
        events.push(&identity(1), event("a", 0)).unwrap();
        assert!(events.take_if_full().is_none());
        events.push(&identity(2), event("b", 0)).unwrap();
        assert_eq!(events.take_if_full().unwrap().unique_ids, ["a", "b"]);
        assert_eq!(events.pending_events(), 0);
        assert!(events.finish().is_none());

        let mut profiles = ProfileBulkBuilder::with_limits(2, usize::MAX);
        profiles.push(&profile(1, 0)).unwrap();
        assert!(profiles.take_if_full().is_none());
        profiles.push(&profile(2, 0)).unwrap();
        assert_eq!(profiles.take_if_full().unwrap().profiles, 2);
        assert!(profiles.finish().is_none());
    }

    #[test]
    fn a_repeated_event_is_dropped_and_counted() {
        let mut b = EventBulkBuilder::new();
        b.push(&identity(1), event("same", 0)).unwrap();
        b.push(&identity(1), event("same", 0)).unwrap();
        // Same email on a differently built identity is the same Klaviyo profile.
        let with_email = |ext: &str| ProfileIdentity {
            external_id: Some(ext.into()),
            email: Some("a@example.com".into()),
            ..Default::default()
        };
        b.push(&with_email("x"), event("mail", 0)).unwrap();
        b.push(&with_email("y"), event("mail", 0)).unwrap();
        // Another metric with the same id is another event.
        let mut other = event("same", 0);
        other.metric_name = "Wallet debited".into();
        b.push(&identity(1), other).unwrap();
        assert_eq!(b.duplicates_dropped(), 2);
        let req = b.finish().unwrap();
        assert_eq!(req.events, 3);
    }

    #[test]
    fn a_repeat_in_a_later_request_is_kept() {
        let mut b = EventBulkBuilder::with_limits(2, usize::MAX);
        assert!(b.push(&identity(1), event("same", 0)).unwrap().is_none());
        assert!(b.push(&identity(1), event("other", 0)).unwrap().is_none());
        let first = b.push(&identity(2), event("third", 0)).unwrap().unwrap();
        assert_eq!(first.unique_ids, ["same", "other"]);
        // "same" is not in the open request any more, so it is sent again, not dropped.
        assert!(b.push(&identity(1), event("same", 0)).unwrap().is_none());
        assert_eq!(b.duplicates_dropped(), 0);
        assert_eq!(b.finish().unwrap().unique_ids, ["third", "same"]);
    }

    #[test]
    fn events_that_cannot_fit_are_refused_naming_field_and_id() {
        let mut b = EventBulkBuilder::new();
        let cases: Vec<(ProfileIdentity, Event, &str)> = vec![
            (
                identity(1),
                event("long-string", STRING_MAX_BYTES + 1),
                "properties/note",
            ),
            (
                identity(1),
                {
                    let mut e = event("many", 0);
                    for i in 0..EVENT_PROPERTIES_MAX {
                        e.properties.insert(format!("p{i}"), json!(i));
                    }
                    e
                },
                "properties",
            ),
            (
                identity(1),
                {
                    let mut e = event("metric", 0);
                    e.metric_name = "m".repeat(METRIC_NAME_MAX_CHARS);
                    e
                },
                "metric.name",
            ),
            (ProfileIdentity::default(), event("nobody", 0), "profile"),
            (
                ProfileIdentity {
                    email: Some(" ".into()),
                    ..Default::default()
                },
                event("blank", 0),
                "profile",
            ),
        ];
        for (id, e, field) in cases {
            let uid = e.unique_id.clone();
            match b.push(&id, e) {
                Err(Error::InvalidInput { field: f, message }) => {
                    assert_eq!(f, field);
                    assert!(message.contains(&uid), "{message}");
                }
                other => panic!("{uid}: {other:?}"),
            }
        }
        // 127 characters is fine.
        let mut ok = event("metric-ok", 0);
        ok.metric_name = "m".repeat(METRIC_NAME_MAX_CHARS - 1);
        b.push(&identity(1), ok).unwrap();
        assert_eq!(b.pending_events(), 1);
        let mut small = EventBulkBuilder::with_limits(10, 200);
        let e = small.push(&identity(1), event("too-big", 500)).unwrap_err();
        assert!(
            matches!(e, Error::InvalidInput { ref field, .. } if field == "event"),
            "{e}"
        );
        assert!(small.finish().is_none());
    }

    #[test]
    fn split_events_returns_requests_and_refusals() {
        let mut items: Vec<_> = (0..1_500)
            .map(|i| (identity(i), event(&format!("e{i}"), 0)))
            .collect();
        items.push((ProfileIdentity::default(), event("orphan", 0)));
        let (reqs, errors) = split_events(items);
        assert_eq!(
            reqs.iter().map(|r| r.events).collect::<Vec<_>>(),
            [1_000, 500]
        );
        assert_eq!(errors.len(), 1);
    }

    fn profile(n: usize, pad: usize) -> Profile {
        Profile {
            identity: identity(n),
            first_name: Some("Sarah".into()),
            properties: Map::from_iter([("trifft_note".to_string(), json!("y".repeat(pad)))]),
            ..Default::default()
        }
    }

    #[test]
    fn profiles_split_at_count_and_bytes() {
        let mut b = ProfileBulkBuilder::new();
        let mut reqs = Vec::new();
        for i in 0..10_001 {
            reqs.extend(b.push(&profile(i, 0)).unwrap());
        }
        reqs.extend(b.finish());
        assert_eq!(
            reqs.iter().map(|r| r.profiles).collect::<Vec<_>>(),
            [10_000, 1]
        );
        let body = parse(&reqs[1].body);
        assert_eq!(body["data"]["type"], "profile-bulk-import-job");
        assert_eq!(
            body["data"]["attributes"]["profiles"]["data"][0]["attributes"]["external_id"],
            "member-10000"
        );

        let two = {
            let mut b = ProfileBulkBuilder::with_limits(100, usize::MAX);
            b.push(&profile(1, 100)).unwrap();
            b.push(&profile(2, 100)).unwrap();
            b.finish().unwrap().body.len()
        };
        let mut b = ProfileBulkBuilder::with_limits(100, two);
        assert!(b.push(&profile(1, 100)).unwrap().is_none());
        assert!(b.push(&profile(2, 100)).unwrap().is_none());
        let full = b.push(&profile(3, 100)).unwrap().unwrap();
        assert_eq!((full.profiles, full.body.len()), (2, two));
    }

    #[test]
    fn profiles_that_cannot_fit_are_refused() {
        let mut b = ProfileBulkBuilder::new();
        assert!(matches!(
            b.push(&Profile::default()),
            Err(Error::InvalidInput { .. })
        ));
        let e = b.push(&profile(1, STRING_MAX_BYTES + 1)).unwrap_err();
        assert!(
            e.to_string().contains("attributes/properties/trifft_note"),
            "{e}"
        );
        // Many strings, each under 100 KB, over 100 KB together.
        let mut big = profile(2, 0);
        for i in 0..3 {
            big.properties
                .insert(format!("k{i}"), json!("z".repeat(40_000)));
        }
        let e = b.push(&big).unwrap_err();
        assert!(e.to_string().contains("member-2"), "{e}");
        assert_eq!(b.pending_profiles(), 0);
    }
}
