//! Klaviyo's side of the world: profiles, events, bulk import jobs, counters.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::validate::{ApiError, EventInput, ProfileInput};
use crate::ids;

/// A profile as Klaviyo holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KlaviyoProfile {
    /// Klaviyo's own profile id.
    pub id: String,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    /// Standard fields other than the identifiers (first_name, last_name, locale, ...).
    pub attributes: Map<String, Value>,
    /// Custom properties.
    pub properties: Map<String, Value>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// An event Klaviyo recorded (duplicates dropped by unique_id are not here).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KlaviyoEvent {
    pub metric: String,
    /// Klaviyo profile id, and the profile's identifiers at snapshot time.
    pub profile_id: String,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub unique_id: Option<String>,
    pub time: DateTime<Utc>,
    pub properties: Value,
    pub value: Option<f64>,
    pub value_currency: Option<String>,
    pub backfill: bool,
    /// `"/api/events"` or `"/api/event-bulk-create-jobs"`.
    pub endpoint: String,
}

/// A bulk profile import job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KlaviyoBulkJob {
    pub id: String,
    pub status: String,
    pub total_count: usize,
    pub completed_count: usize,
    pub failed_count: usize,
    pub list_ids: Vec<String>,
    /// `{code, title, detail, source: {pointer}, original_payload}` per failed profile.
    pub import_errors: Vec<Value>,
}

/// A 4xx answer (other than 429) and its JSON:API error body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub body: Value,
}

/// A cloned view of the Klaviyo emulator's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KlaviyoSnapshot {
    pub events: Vec<KlaviyoEvent>,
    pub profiles: Vec<KlaviyoProfile>,
    pub bulk_jobs: Vec<KlaviyoBulkJob>,
    /// Requests received per `"METHOD /route"` (e.g. `"POST /api/events"`), faults included.
    pub request_counts: BTreeMap<String, u64>,
    /// 429 answers sent (rate limits, throttle faults and storms).
    pub throttled: u64,
    /// 5xx answers sent by fault injection.
    pub server_errors: u64,
    /// Connections closed unanswered by fault injection.
    pub dropped: u64,
    /// Events dropped because their (profile, metric, unique_id) was already recorded.
    pub duplicates_dropped: u64,
    pub rejections: Vec<Rejection>,
}

impl KlaviyoSnapshot {
    pub fn profile_by_external_id(&self, external_id: &str) -> Option<&KlaviyoProfile> {
        self.profiles
            .iter()
            .find(|p| p.external_id.as_deref() == Some(external_id))
    }

    pub fn profile_by_email(&self, email: &str) -> Option<&KlaviyoProfile> {
        self.profiles
            .iter()
            .find(|p| p.email.as_deref() == Some(email))
    }

    pub fn profile_by_phone(&self, phone: &str) -> Option<&KlaviyoProfile> {
        self.profiles
            .iter()
            .find(|p| p.phone_number.as_deref() == Some(phone))
    }

    /// Events of one metric.
    pub fn events_named(&self, metric: &str) -> Vec<&KlaviyoEvent> {
        self.events.iter().filter(|e| e.metric == metric).collect()
    }

    /// Requests received on `"METHOD /route"`, 0 when none.
    pub fn requests(&self, key: &str) -> u64 {
        self.request_counts.get(key).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
struct EventRecord {
    metric: String,
    profile: usize,
    unique_id: Option<String>,
    time: DateTime<Utc>,
    /// Compact JSON text: far smaller than a `Value` tree for large runs.
    properties: Box<str>,
    value: Option<f64>,
    value_currency: Option<String>,
    backfill: bool,
    endpoint: &'static str,
}

#[derive(Debug)]
pub(crate) struct Job {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub created: Instant,
    pub total: usize,
    /// Valid profiles (index in the request, original payload) waiting to be applied when
    /// the job completes.
    pub pending: Vec<(usize, Value, ProfileInput)>,
    pub applied: usize,
    pub errors: Vec<Value>,
    pub list_ids: Vec<String>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub(crate) struct Store {
    pub rng: fastrand::Rng,
    profiles: Vec<KlaviyoProfile>,
    by_id: HashMap<String, usize>,
    by_external_id: HashMap<String, usize>,
    by_email: HashMap<String, usize>,
    by_phone: HashMap<String, usize>,
    events: Vec<EventRecord>,
    seen: HashSet<(usize, String, String)>,
    pub duplicates_dropped: u64,
    pub jobs: Vec<Job>,
    pub job_index: HashMap<String, usize>,
    pub request_counts: BTreeMap<String, u64>,
    pub throttled: u64,
    pub server_errors: u64,
    pub dropped: u64,
    pub rejections: Vec<Rejection>,
    pub writes: Vec<Value>,
}

impl Store {
    pub(crate) fn new(seed: u64) -> Self {
        Store {
            rng: fastrand::Rng::with_seed(seed ^ 0x6b6c_6176_6979_6f00),
            profiles: Vec::new(),
            by_id: HashMap::new(),
            by_external_id: HashMap::new(),
            by_email: HashMap::new(),
            by_phone: HashMap::new(),
            events: Vec::new(),
            seen: HashSet::new(),
            duplicates_dropped: 0,
            jobs: Vec::new(),
            job_index: HashMap::new(),
            request_counts: BTreeMap::new(),
            throttled: 0,
            server_errors: 0,
            dropped: 0,
            rejections: Vec::new(),
            writes: Vec::new(),
        }
    }

    fn find(&self, input: &ProfileInput) -> Result<Option<usize>, ApiError> {
        if let Some(id) = &input.id {
            return match self.by_id.get(id) {
                Some(&i) => Ok(Some(i)),
                None => Err(ApiError::new(
                    404,
                    "not_found",
                    "Not found.",
                    format!("A profile with id {id} does not exist."),
                )),
            };
        }
        // Klaviyo matches on external_id, then email, then phone number.
        Ok(input
            .external_id
            .as_ref()
            .and_then(|v| self.by_external_id.get(v))
            .or_else(|| input.email.as_ref().and_then(|v| self.by_email.get(v)))
            .or_else(|| {
                input
                    .phone_number
                    .as_ref()
                    .and_then(|v| self.by_phone.get(v))
            })
            .copied())
    }

    /// Create or update a profile; returns its index and whether it was created.
    pub(crate) fn upsert(
        &mut self,
        input: &ProfileInput,
        now: DateTime<Utc>,
    ) -> Result<(usize, bool), ApiError> {
        let (index, created) = match self.find(input)? {
            Some(i) => (i, false),
            None => {
                let id = ids::klaviyo_id(&mut self.rng);
                self.by_id.insert(id.clone(), self.profiles.len());
                self.profiles.push(KlaviyoProfile {
                    id,
                    external_id: None,
                    email: None,
                    phone_number: None,
                    attributes: Map::new(),
                    properties: Map::new(),
                    created: now,
                    updated: now,
                });
                (self.profiles.len() - 1, true)
            }
        };
        let identifiers = [
            (input.external_id.clone(), Identifier::External),
            (input.email.clone(), Identifier::Email),
            (input.phone_number.clone(), Identifier::Phone),
        ];
        for (value, which) in identifiers {
            if let Some(value) = value {
                self.set_identifier(index, which, value);
            }
        }
        let profile = &mut self.profiles[index];
        for (key, value) in &input.fields {
            if value.is_null() {
                profile.attributes.remove(key);
            } else {
                profile.attributes.insert(key.clone(), value.clone());
            }
        }
        if let Some(props) = &input.properties {
            for (key, value) in props {
                profile.properties.insert(key.clone(), value.clone());
            }
        }
        for key in &input.patch_unset {
            profile.properties.remove(key);
        }
        for (key, value) in &input.patch_append {
            let entry = profile
                .properties
                .entry(key.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if !entry.is_array() {
                *entry = Value::Array(vec![entry.take()]);
            }
            if let Value::Array(items) = entry {
                match value {
                    Value::Array(values) => items.extend(values.iter().cloned()),
                    other => items.push(other.clone()),
                }
            }
        }
        for (key, value) in &input.patch_unappend {
            if let Some(Value::Array(items)) = profile.properties.get_mut(key) {
                let remove: Vec<&Value> = match value {
                    Value::Array(values) => values.iter().collect(),
                    other => vec![other],
                };
                items.retain(|item| !remove.contains(&item));
            }
        }
        profile.updated = now;
        Ok((index, created))
    }

    fn set_identifier(&mut self, index: usize, which: Identifier, value: String) {
        let profile = &mut self.profiles[index];
        let (slot, map) = match which {
            Identifier::External => (&mut profile.external_id, &mut self.by_external_id),
            Identifier::Email => (&mut profile.email, &mut self.by_email),
            Identifier::Phone => (&mut profile.phone_number, &mut self.by_phone),
        };
        if let Some(old) = slot.as_ref()
            && old != &value
            && map.get(old) == Some(&index)
        {
            map.remove(old);
        }
        // The latest profile to claim an identifier owns it.
        map.insert(value.clone(), index);
        *slot = Some(value);
    }

    pub(crate) fn profile(&self, index: usize) -> &KlaviyoProfile {
        &self.profiles[index]
    }

    /// Record an event unless its (profile, metric, unique_id) was seen; without a
    /// unique_id Klaviyo uses the time to the second. Returns whether it was recorded.
    pub(crate) fn add_event(
        &mut self,
        profile: usize,
        event: EventInput,
        now: DateTime<Utc>,
        endpoint: &'static str,
    ) -> bool {
        let time = event.time.unwrap_or(now);
        let key = event
            .unique_id
            .clone()
            .unwrap_or_else(|| format!("time:{}", time.timestamp()));
        if !self.seen.insert((profile, event.metric.clone(), key)) {
            self.duplicates_dropped += 1;
            return false;
        }
        let properties = Value::Object(event.properties).to_string().into_boxed_str();
        self.events.push(EventRecord {
            metric: event.metric,
            profile,
            unique_id: event.unique_id,
            time,
            properties,
            value: event.value,
            value_currency: event.value_currency,
            backfill: event.backfill.unwrap_or(false),
            endpoint,
        });
        true
    }

    pub(crate) fn snapshot(&self, processing: std::time::Duration) -> KlaviyoSnapshot {
        let events = self
            .events
            .iter()
            .map(|e| {
                let p = &self.profiles[e.profile];
                KlaviyoEvent {
                    metric: e.metric.clone(),
                    profile_id: p.id.clone(),
                    external_id: p.external_id.clone(),
                    email: p.email.clone(),
                    phone_number: p.phone_number.clone(),
                    unique_id: e.unique_id.clone(),
                    time: e.time,
                    properties: serde_json::from_str(&e.properties).unwrap_or(Value::Null),
                    value: e.value,
                    value_currency: e.value_currency.clone(),
                    backfill: e.backfill,
                    endpoint: e.endpoint.to_string(),
                }
            })
            .collect();
        KlaviyoSnapshot {
            events,
            profiles: self.profiles.clone(),
            bulk_jobs: self.jobs.iter().map(|j| j.snapshot(processing)).collect(),
            request_counts: self.request_counts.clone(),
            throttled: self.throttled,
            server_errors: self.server_errors,
            dropped: self.dropped,
            duplicates_dropped: self.duplicates_dropped,
            rejections: self.rejections.clone(),
        }
    }

    pub(crate) fn summary(&self) -> Value {
        serde_json::json!({
            "profiles": self.profiles.len(),
            "events": self.events.len(),
            "bulk_jobs": self.jobs.len(),
            "duplicates_dropped": self.duplicates_dropped,
            "throttled": self.throttled,
            "server_errors": self.server_errors,
            "dropped": self.dropped,
            "rejections": self.rejections.len(),
            "request_counts": self.request_counts,
        })
    }

    /// Apply every job whose processing time is over.
    pub(crate) fn settle_jobs(&mut self, processing: std::time::Duration, now: DateTime<Utc>) {
        let due: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| {
                self.jobs[i].completed_at.is_none() && self.jobs[i].created.elapsed() >= processing
            })
            .collect();
        for i in due {
            let pending = std::mem::take(&mut self.jobs[i].pending);
            let mut applied = 0;
            let mut errors = Vec::new();
            for (n, original, profile) in &pending {
                match self.upsert(profile, now) {
                    Ok(_) => applied += 1,
                    Err(e) => errors.push(serde_json::json!({
                        "code": e.code, "title": e.title, "detail": e.detail,
                        "source": {"pointer": format!("/data/attributes/profiles/data/{n}")},
                        "original_payload": original
                    })),
                }
            }
            let job = &mut self.jobs[i];
            job.applied = applied;
            job.errors.extend(errors);
            job.completed_at = Some(now);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Identifier {
    External,
    Email,
    Phone,
}

impl Job {
    pub(crate) fn status(&self, processing: std::time::Duration) -> &'static str {
        if self.completed_at.is_some() {
            "complete"
        } else if self.created.elapsed() < processing / 2 {
            "queued"
        } else {
            "processing"
        }
    }

    fn snapshot(&self, processing: std::time::Duration) -> KlaviyoBulkJob {
        let complete = self.completed_at.is_some();
        KlaviyoBulkJob {
            id: self.id.clone(),
            status: self.status(processing).into(),
            total_count: self.total,
            completed_count: if complete { self.applied } else { 0 },
            failed_count: if complete { self.errors.len() } else { 0 },
            list_ids: self.list_ids.clone(),
            import_errors: if complete {
                self.errors.clone()
            } else {
                Vec::new()
            },
        }
    }
}
