//! The TRIFFT emulator under `/v1`: Bearer auth, 50 requests / 10 s with a one-minute
//! lockout, the Batch API and the two assumed feeds (docs/TRIFFT-ASSUMPTIONS.md).

pub(crate) mod data;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::faults::{Gates, Outcome};
use crate::ids;
use crate::record::{Recorder, request_line};
use crate::server::ConnKill;
use data::{Catalog, CouponStatus, EventPayload, EventRecord, MemberRecord};

const MAX_BATCH_ITEMS: usize = 500;
const MAX_BODY: usize = 10 * 1024 * 1024;

/// A member as the members feed shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrifftMember {
    pub id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: String,
    pub points: i64,
    pub tier: String,
    pub available_coupons: u64,
    pub coupons: Vec<Value>,
    pub fav_location: Option<Value>,
    pub primary_card_id: String,
    pub segments: Vec<String>,
    pub support_id: String,
    pub params: Map<String, Value>,
    pub updated_at: DateTime<Utc>,
}

/// An activity event as the activity feed shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrifftEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub member_id: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: Value,
}

/// What became of one batch item (TRIFFT runs them asynchronously; here at once).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemOutcome {
    /// Index of the batch in [`TrifftSnapshot::batches`].
    pub batch: usize,
    /// Index of the item in its batch.
    pub index: usize,
    pub method: String,
    pub uri: String,
    pub applied: bool,
    /// Why it failed, or what an applied no-op was.
    pub reason: Option<String>,
}

/// A cloned view of the TRIFFT emulator's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrifftSnapshot {
    /// In members-feed order (oldest change first).
    pub members: Vec<TrifftMember>,
    /// In activity-feed order.
    pub events: Vec<TrifftEvent>,
    /// The items of every accepted batch.
    pub batches: Vec<Vec<Value>>,
    pub outcomes: Vec<ItemOutcome>,
    /// Requests received per `"METHOD /path"` (e.g. `"POST /v1/batch"`), faults included.
    pub request_counts: BTreeMap<String, u64>,
    /// 429 answers sent.
    pub throttled: u64,
    /// Lockouts started (by the rate limit or a throttle fault).
    pub lockouts: u64,
    pub server_errors: u64,
    pub dropped: u64,
}

impl TrifftSnapshot {
    pub fn member(&self, id: &str) -> Option<&TrifftMember> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn requests(&self, key: &str) -> u64 {
        self.request_counts.get(key).copied().unwrap_or(0)
    }

    pub fn applied(&self) -> Vec<&ItemOutcome> {
        self.outcomes.iter().filter(|o| o.applied).collect()
    }

    pub fn failed(&self) -> Vec<&ItemOutcome> {
        self.outcomes.iter().filter(|o| !o.applied).collect()
    }
}

pub(crate) struct Store {
    rng: fastrand::Rng,
    catalog: Catalog,
    members: Vec<MemberRecord>,
    by_id: HashMap<String, u32>,
    events: Vec<EventRecord>,
    /// Feed position -> member; each member sits at its latest change.
    changes: BTreeMap<u64, u32>,
    next_seq: u64,
    batches: Vec<Vec<Value>>,
    outcomes: Vec<ItemOutcome>,
    request_counts: BTreeMap<String, u64>,
    throttled: u64,
    lockouts: u64,
    server_errors: u64,
    dropped: u64,
    window: VecDeque<Instant>,
    lockout_until: Option<Instant>,
}

impl Store {
    pub(crate) fn new(seed: u64, members: usize, events: usize, anchor: DateTime<Utc>) -> Self {
        let data = data::generate(seed, members, events, anchor);
        let by_id = data
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.has_identifier())
            .map(|(i, m)| (m.id.clone(), i as u32))
            .collect();
        let changes: BTreeMap<u64, u32> = data
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.seq, i as u32))
            .collect();
        let next_seq = changes.keys().next_back().map_or(1, |s| s + 1);
        Store {
            rng: fastrand::Rng::with_seed(seed ^ 0x7472_6966_6674),
            catalog: data.catalog,
            members: data.members,
            by_id,
            events: data.events,
            changes,
            next_seq,
            batches: Vec::new(),
            outcomes: Vec::new(),
            request_counts: BTreeMap::new(),
            throttled: 0,
            lockouts: 0,
            server_errors: 0,
            dropped: 0,
            window: VecDeque::new(),
            lockout_until: None,
        }
    }

    fn now_after_everything(&self) -> DateTime<Utc> {
        // Feeds are ordered by time: a change is never earlier than the last one.
        let now = Utc::now();
        let last_event = self.events.last().map(|e| e.occurred_at);
        let last_change = self
            .changes
            .values()
            .next_back()
            .map(|&m| self.members[m as usize].updated_at);
        [Some(now), last_event, last_change]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now)
    }

    fn touch(&mut self, member: u32, at: DateTime<Utc>) {
        let record = &mut self.members[member as usize];
        self.changes.remove(&record.seq);
        record.seq = self.next_seq;
        record.updated_at = at;
        self.changes.insert(self.next_seq, member);
        self.next_seq += 1;
    }

    fn append_event(&mut self, kind: &str, member: u32, at: DateTime<Utc>, payload: Value) {
        let kind = data::kind_index(kind).unwrap_or(0);
        let payload = match payload {
            Value::Object(map) => EventPayload::Given(Box::new(map)),
            _ => EventPayload::Generated(self.rng.u64(..)),
        };
        let id = self.rng.u128(..);
        self.events.push(EventRecord {
            id,
            kind,
            member,
            occurred_at: at,
            payload,
        });
    }

    fn member_json(&self, index: u32) -> Value {
        self.members[index as usize].to_json(&self.catalog)
    }

    fn event_json(&self, index: usize) -> Value {
        self.events[index].to_json(&self.members, &self.catalog)
    }

    pub(crate) fn snapshot(&self) -> TrifftSnapshot {
        let members = self
            .changes
            .values()
            .filter_map(|&i| serde_json::from_value(self.member_json(i)).ok())
            .collect();
        let events = (0..self.events.len())
            .filter_map(|i| serde_json::from_value(self.event_json(i)).ok())
            .collect();
        TrifftSnapshot {
            members,
            events,
            batches: self.batches.clone(),
            outcomes: self.outcomes.clone(),
            request_counts: self.request_counts.clone(),
            throttled: self.throttled,
            lockouts: self.lockouts,
            server_errors: self.server_errors,
            dropped: self.dropped,
        }
    }

    fn summary(&self) -> Value {
        json!({
            "members": self.members.len(),
            "events": self.events.len(),
            "batches": self.batches.len(),
            "items_applied": self.outcomes.iter().filter(|o| o.applied).count(),
            "items_failed": self.outcomes.iter().filter(|o| !o.applied).count(),
            "throttled": self.throttled,
            "lockouts": self.lockouts,
            "server_errors": self.server_errors,
            "dropped": self.dropped,
            "request_counts": self.request_counts,
        })
    }

    /// Change `count` members (points, tier, segments, locale, coupons) with matching events.
    pub(crate) fn change_members(&mut self, count: usize, seed: u64) {
        let reachable: Vec<u32> = (0..self.members.len() as u32)
            .filter(|&i| self.members[i as usize].has_identifier())
            .collect();
        if reachable.is_empty() {
            return;
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut chosen = reachable.clone();
        rng.shuffle(&mut chosen);
        chosen.truncate(count.min(reachable.len()));
        for member in chosen {
            let at = self.now_after_everything();
            let id = self.members[member as usize].id.clone();
            match rng.u8(0..5) {
                0 | 1 => {
                    let change = rng.i64(10..=300);
                    let record = &mut self.members[member as usize];
                    let credit = rng.bool() || record.points < change;
                    record.points += if credit { change } else { -change };
                    record.tier = match record.points {
                        ..500 => 0,
                        500..1500 => 1,
                        1500..3000 => 2,
                        _ => 3,
                    };
                    let kind = if credit {
                        "wallet_credited"
                    } else {
                        "wallet_debited"
                    };
                    let payload = json!({"event": kind, "timestamp": rfc3339(at), "member_id": id, "wallet_id": "LOYALTY_POINTS", "change": change, "reason": "Activity between sync runs", "balance": record.points});
                    self.append_event(kind, member, at, payload);
                }
                2 => {
                    let segment = rng.u16(..self.catalog.segments.len() as u16);
                    let record = &mut self.members[member as usize];
                    let kind = if let Some(pos) = record.segments.iter().position(|&s| s == segment)
                    {
                        record.segments.remove(pos);
                        "removed_from_segment"
                    } else {
                        record.segments.push(segment);
                        "added_to_segment"
                    };
                    let slug = self.catalog.segments[segment as usize].clone();
                    self.append_event(
                        kind,
                        member,
                        at,
                        json!({"segment": {"slug": slug, "name": slug.replace('-', " ")}}),
                    );
                }
                3 => {
                    let record = &mut self.members[member as usize];
                    let previous = data::LOCALES[record.locale as usize];
                    record.locale =
                        (record.locale + 1 + rng.u8(0..(data::LOCALES.len() as u8 - 1)))
                            % data::LOCALES.len() as u8;
                    let payload = json!({"locale": data::LOCALES[record.locale as usize], "previous_locale": previous});
                    self.append_event("language_changed", member, at, payload);
                }
                _ => {
                    let coupon = rng.u16(..self.catalog.coupons.len() as u16);
                    self.members[member as usize]
                        .coupons
                        .push((coupon, CouponStatus::Active));
                    let c = &self.catalog.coupons[coupon as usize];
                    let payload = json!({"id": c.id, "name": c.name, "coupon": self.catalog.coupon_json(coupon as usize)});
                    self.append_event("coupon_assigned", member, at, payload);
                }
            }
            self.touch(member, at);
        }
    }

    /// Append `count` events of random types for random members, happening now.
    pub(crate) fn append_events(&mut self, count: usize, seed: u64) {
        let reachable: Vec<u32> = (0..self.members.len() as u32)
            .filter(|&i| self.members[i as usize].has_identifier())
            .collect();
        if reachable.is_empty() {
            return;
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..count {
            let at = self.now_after_everything();
            let id = rng.u128(..);
            self.events.push(EventRecord {
                id,
                kind: rng.u8(..15),
                member: reachable[rng.usize(..reachable.len())],
                occurred_at: at,
                payload: EventPayload::Generated(rng.u64(..)),
            });
        }
    }

    /// Apply one batch item; `Err` is the reason it failed.
    fn apply(
        &mut self,
        method: &str,
        uri: &str,
        payload: Option<&Value>,
    ) -> Result<Option<String>, String> {
        let Some(path) = uri.strip_prefix("/v1/") else {
            return Err(format!("unknown uri {uri}"));
        };
        let segments: Vec<&str> = path.split('/').collect();
        let member_of = |store: &Store, id: &str| {
            store
                .by_id
                .get(id)
                .copied()
                .ok_or_else(|| format!("unknown member {id}"))
        };
        match (method, segments.as_slice()) {
            ("POST", ["member", id, "wallet", direction @ ("credit" | "debit")]) => {
                let member = member_of(self, id)?;
                let points = payload
                    .and_then(|p| p.get("points"))
                    .and_then(Value::as_u64)
                    .filter(|&p| p > 0 && p <= i64::MAX as u64)
                    .ok_or("payload.points must be a positive integer")?
                    as i64;
                let reason = payload
                    .and_then(|p| p.get("reason"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let record = &mut self.members[member as usize];
                let credit = *direction == "credit";
                if !credit && record.points < points {
                    return Err(format!(
                        "insufficient points: balance {} is below {points}",
                        record.points
                    ));
                }
                record.points += if credit { points } else { -points };
                let balance = record.points;
                let at = self.now_after_everything();
                let kind = if credit {
                    "wallet_credited"
                } else {
                    "wallet_debited"
                };
                let payload = json!({"event": kind, "timestamp": rfc3339(at), "member_id": id, "wallet_id": "LOYALTY_POINTS", "change": points, "reason": reason, "balance": balance});
                self.append_event(kind, member, at, payload);
                self.touch(member, at);
                Ok(None)
            }
            ("POST", ["member", id, "coupon", coupon_id]) => {
                let member = member_of(self, id)?;
                let coupon = self
                    .catalog
                    .coupon_index(coupon_id)
                    .ok_or_else(|| format!("unknown coupon {coupon_id}"))?;
                self.members[member as usize]
                    .coupons
                    .push((coupon, CouponStatus::Active));
                let at = self.now_after_everything();
                let c = &self.catalog.coupons[coupon as usize];
                let payload = json!({"id": c.id, "name": c.name, "coupon": self.catalog.coupon_json(coupon as usize)});
                self.append_event("coupon_assigned", member, at, payload);
                self.touch(member, at);
                Ok(None)
            }
            (method @ ("POST" | "DELETE"), ["segment", slug, "member", id]) => {
                let member = member_of(self, id)?;
                let segment = self
                    .catalog
                    .segment_index(slug)
                    .ok_or_else(|| format!("unknown segment {slug}"))?;
                let record = &mut self.members[member as usize];
                let position = record.segments.iter().position(|&s| s == segment);
                let kind = match (method, position) {
                    ("POST", None) => {
                        record.segments.push(segment);
                        "added_to_segment"
                    }
                    ("DELETE", Some(pos)) => {
                        record.segments.remove(pos);
                        "removed_from_segment"
                    }
                    ("POST", Some(_)) => return Ok(Some("already a member of the segment".into())),
                    _ => return Ok(Some("not a member of the segment".into())),
                };
                let at = self.now_after_everything();
                self.append_event(
                    kind,
                    member,
                    at,
                    json!({"segment": {"slug": slug, "name": slug.replace('-', " ")}}),
                );
                self.touch(member, at);
                Ok(None)
            }
            _ => Err(format!("unknown uri {method} {uri}")),
        }
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) struct TrifftApp {
    pub token: String,
    pub rate: (u32, Duration),
    pub lockout: Duration,
    pub store: Mutex<Store>,
    pub gates: Arc<Gates>,
    pub recorder: Recorder,
}

impl TrifftApp {
    pub(crate) fn new(
        config: &crate::SandboxConfig,
        gates: Arc<Gates>,
        recorder: Recorder,
        anchor: DateTime<Utc>,
    ) -> Self {
        TrifftApp {
            token: config.trifft_token.clone(),
            rate: config.trifft_rate,
            lockout: config.trifft_lockout,
            store: Mutex::new(Store::new(
                config.seed,
                config.members,
                config.events,
                anchor,
            )),
            gates,
            recorder,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type AppState = Arc<TrifftApp>;

pub(crate) fn router(app: AppState) -> Router {
    let api = Router::new()
        .route("/v1/batch", post(batch))
        .route("/v1/members/changes", get(members_feed))
        .route("/v1/activity/events", get(activity_feed))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), gate))
        .with_state(app.clone());
    let control = Router::new()
        .route("/_sandbox/state", get(sandbox_state))
        .route(
            "/_sandbox/faults",
            post(sandbox_faults).get(sandbox_get_faults),
        )
        .with_state(app);
    control.merge(api)
}

fn trifft_error(
    rng: &mut fastrand::Rng,
    status: u16,
    exception: &str,
    message: impl Into<String>,
) -> Response {
    let body = json!({
        "status": status,
        "success": false,
        "error": {"code": status, "message": message.into(), "exception": exception, "event_id": ids::uuid(rng)},
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

fn fail(app: &TrifftApp, status: u16, exception: &str, message: impl Into<String>) -> Response {
    trifft_error(&mut app.lock().rng, status, exception, message)
}

fn rate_limited(store: &mut Store) -> Response {
    store.throttled += 1;
    trifft_error(
        &mut store.rng,
        429,
        "RateLimitExceededException",
        "Too many requests: the rate limit of the API was exceeded and requests are blocked for a while.",
    )
}

#[derive(Debug, Clone)]
struct RawBody(Bytes);

async fn gate(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return fail(
            &app,
            400,
            "ValidationException",
            "The request body is too large or could not be read.",
        );
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    app.recorder.write(&request_line(
        parts.method.as_str(),
        &path,
        &parts.headers,
        &bytes,
    ));
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or(parts.uri.path(), MatchedPath::as_str);
    *app.lock()
        .request_counts
        .entry(format!("{} {route}", parts.method))
        .or_insert(0) += 1;

    let (outcome, latency) = app.gates.trifft.decide();
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    match outcome {
        Outcome::Drop => {
            app.lock().dropped += 1;
            if let Some(kill) = parts.extensions.get::<ConnKill>() {
                kill.kill();
                std::future::pending::<()>().await;
            }
            return fail(&app, 502, "BadGatewayException", "Bad gateway.");
        }
        Outcome::ServerError(status) => {
            app.lock().server_errors += 1;
            let exception = match status {
                502 => "BadGatewayException",
                503 => "ServiceUnavailableException",
                _ => "InternalServerErrorException",
            };
            return fail(
                &app,
                status,
                exception,
                "The server could not handle the request. Please try again later.",
            );
        }
        Outcome::Throttle => {
            // A throttle fault behaves like passing the limit: the lockout starts.
            let mut store = app.lock();
            store.lockout_until = Some(Instant::now() + app.lockout);
            store.lockouts += 1;
            return rate_limited(&mut store);
        }
        // TRIFFT documents no Retry-After, so a storm is plain 429s.
        Outcome::Storm => return rate_limited(&mut app.lock()),
        Outcome::Pass => {}
    }
    {
        let mut store = app.lock();
        let now = Instant::now();
        match store.lockout_until {
            Some(until) if now < until => return rate_limited(&mut store),
            Some(_) => store.lockout_until = None,
            None => {}
        }
        let expected = format!("Bearer {}", app.token);
        if parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(expected.as_str())
        {
            return trifft_error(
                &mut store.rng,
                401,
                "UnauthorizedException",
                "Missing or invalid Bearer token.",
            );
        }
        let (limit, period) = app.rate;
        while store
            .window
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= period)
        {
            store.window.pop_front();
        }
        if store.window.len() >= limit as usize {
            store.lockout_until = Some(now + app.lockout);
            store.lockouts += 1;
            store.window.clear();
            return rate_limited(&mut store);
        }
        store.window.push_back(now);
    }
    parts.extensions.insert(RawBody(bytes));
    next.run(Request::from_parts(parts, Body::empty())).await
}

/// Check the envelope of every item; the first malformed one fails the whole batch.
fn validate_batch(body: &[u8]) -> Result<Vec<Value>, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("The request body is not valid JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err("The request body must be a JSON array of {uri, method, payload} items".into());
    };
    if items.is_empty() {
        return Err("The batch must contain at least one item".into());
    }
    if items.len() > MAX_BATCH_ITEMS {
        return Err(format!(
            "The batch contains {} items; at most {MAX_BATCH_ITEMS} are allowed",
            items.len()
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let Some(map) = item.as_object() else {
            return Err(format!(
                "Item {i}: must be an object with uri, method and payload"
            ));
        };
        if let Some(key) = map
            .keys()
            .find(|k| !["uri", "method", "payload"].contains(&k.as_str()))
        {
            return Err(format!(
                "Item {i}: unknown field '{key}' (allowed: uri, method, payload)"
            ));
        }
        match map.get("uri") {
            Some(Value::String(uri))
                if uri.starts_with('/') && !uri.contains(char::is_whitespace) => {}
            Some(Value::String(uri)) => {
                return Err(format!(
                    "Item {i}: uri '{uri}' must be a path starting with '/'"
                ));
            }
            _ => return Err(format!("Item {i}: uri is required and must be a string")),
        }
        match map.get("method").and_then(Value::as_str) {
            Some("GET" | "POST" | "DELETE") => {}
            Some(other) => {
                return Err(format!(
                    "Item {i}: method '{other}' is not one of GET, POST, DELETE"
                ));
            }
            None => return Err(format!("Item {i}: method is required and must be a string")),
        }
        if let Some(payload) = map.get("payload")
            && !(payload.is_object() || payload.is_null())
        {
            return Err(format!("Item {i}: payload must be a JSON object"));
        }
    }
    Ok(items)
}

async fn batch(State(app): State<AppState>, request: Request) -> Response {
    let bytes = request
        .extensions()
        .get::<RawBody>()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let items = match validate_batch(&bytes) {
        Ok(items) => items,
        Err(message) => return fail(&app, 400, "ValidationException", message),
    };
    let mut store = app.lock();
    let batch = store.batches.len();
    for (index, item) in items.iter().enumerate() {
        let method = item["method"].as_str().unwrap_or_default();
        let uri = item["uri"].as_str().unwrap_or_default();
        let result = store.apply(method, uri, item.get("payload"));
        let (applied, reason) = match result {
            Ok(note) => (true, note),
            Err(reason) => (false, Some(reason)),
        };
        store.outcomes.push(ItemOutcome {
            batch,
            index,
            method: method.into(),
            uri: uri.into(),
            applied,
            reason,
        });
    }
    let batch_id = ids::uuid(&mut store.rng);
    let count = items.len();
    store.batches.push(items);
    let body = json!({"status": 200, "success": true, "message": "The batch was received and queued.", "data": {"batch_id": batch_id, "items": count}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Query parameters of a feed request.
struct FeedQuery {
    limit: usize,
    since: Option<DateTime<Utc>>,
    cursor: Option<String>,
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3).ok_or("bad percent-encoding")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent-encoding")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "parameter is not UTF-8".into())
}

fn parse_feed_query(query: Option<&str>) -> Result<FeedQuery, String> {
    let mut q = FeedQuery {
        limit: 100,
        since: None,
        cursor: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).map_err(|e| format!("Parameter '{key}': {e}"))?;
        match key {
            "limit" => {
                q.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| {
                        format!(
                            "Parameter 'limit' must be an integer from 1 to 1000, got '{value}'"
                        )
                    })?;
            }
            "since" => {
                let since = DateTime::parse_from_rfc3339(&value).map_err(|_| {
                    format!("Parameter 'since' must be an RFC 3339 date-time, got '{value}'")
                })?;
                q.since = Some(since.with_timezone(&Utc));
            }
            "cursor" if !value.is_empty() => q.cursor = Some(value),
            "cursor" => return Err("Parameter 'cursor' must not be empty".into()),
            other => {
                return Err(format!(
                    "Unknown parameter '{other}' (allowed: limit, since, cursor)"
                ));
            }
        }
    }
    if q.since.is_some() && q.cursor.is_some() {
        return Err("Give either 'since' or 'cursor', not both".into());
    }
    Ok(q)
}

fn decode_cursor(cursor: &str, prefix: char) -> Result<u64, String> {
    cursor
        .strip_prefix(prefix)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| format!("Parameter 'cursor' is not a cursor of this feed: '{cursor}'"))
}

fn page(data: Vec<Value>, next_cursor: String, has_more: bool) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"data": data, "next_cursor": next_cursor, "has_more": has_more})),
    )
        .into_response()
}

async fn members_feed(State(app): State<AppState>, request: Request) -> Response {
    let query = match parse_feed_query(request.uri().query()) {
        Ok(q) => q,
        Err(message) => return fail(&app, 400, "ValidationException", message),
    };
    let store = app.lock();
    // Positions are feed sequence numbers; a page continues after `after`.
    let after = match (&query.cursor, query.since) {
        (Some(cursor), _) => match decode_cursor(cursor, 'm') {
            Ok(seq) => seq,
            Err(message) => {
                drop(store);
                return fail(&app, 400, "ValidationException", message);
            }
        },
        (None, Some(since)) => store
            .changes
            .iter()
            .take_while(|&(_, &m)| store.members[m as usize].updated_at < since)
            .last()
            .map_or(0, |(&seq, _)| seq),
        (None, None) => 0,
    };
    let mut rest = store.changes.range(after + 1..);
    let chosen: Vec<(u64, u32)> = rest
        .by_ref()
        .take(query.limit)
        .map(|(&s, &m)| (s, m))
        .collect();
    let has_more = rest.next().is_some();
    let last = chosen.last().map_or(after, |&(seq, _)| seq);
    let data = chosen.iter().map(|&(_, m)| store.member_json(m)).collect();
    page(data, format!("m{last:x}"), has_more)
}

async fn activity_feed(State(app): State<AppState>, request: Request) -> Response {
    let query = match parse_feed_query(request.uri().query()) {
        Ok(q) => q,
        Err(message) => return fail(&app, 400, "ValidationException", message),
    };
    let store = app.lock();
    let start = match (&query.cursor, query.since) {
        (Some(cursor), _) => match decode_cursor(cursor, 'a') {
            Ok(position) if position as usize <= store.events.len() => position as usize,
            Ok(_) => {
                drop(store);
                return fail(
                    &app,
                    400,
                    "ValidationException",
                    "Parameter 'cursor' points past the end of the feed",
                );
            }
            Err(message) => {
                drop(store);
                return fail(&app, 400, "ValidationException", message);
            }
        },
        (None, Some(since)) => store.events.partition_point(|e| e.occurred_at < since),
        (None, None) => 0,
    };
    let end = (start + query.limit).min(store.events.len());
    let data = (start..end).map(|i| store.event_json(i)).collect();
    page(data, format!("a{end:x}"), end < store.events.len())
}

async fn not_found(State(app): State<AppState>, request: Request) -> Response {
    fail(
        &app,
        404,
        "NotFoundException",
        format!("No route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(State(app): State<AppState>, request: Request) -> Response {
    let message = format!(
        "Method {} is not allowed on {}",
        request.method(),
        request.uri().path()
    );
    fail(&app, 405, "MethodNotAllowedException", message)
}

async fn sandbox_state(State(app): State<AppState>) -> Response {
    let mut summary = app.lock().summary();
    summary["faults"] = serde_json::to_value(app.gates.trifft.faults()).unwrap_or(Value::Null);
    axum::Json(summary).into_response()
}

async fn sandbox_get_faults(State(app): State<AppState>) -> Response {
    axum::Json(app.gates.trifft.faults()).into_response()
}

async fn sandbox_faults(State(app): State<AppState>, body: Bytes) -> Response {
    match crate::klaviyo::parse_faults(&body) {
        Ok(faults) => {
            app.gates.set(faults.clone());
            axum::Json(faults).into_response()
        }
        Err(message) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": message})),
        )
            .into_response(),
    }
}
