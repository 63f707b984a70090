//! The Klaviyo emulator: `/api/events`, `/api/event-bulk-create-jobs`, `/api/profile-import`,
//! `/api/profile-bulk-import-jobs` (+ job status and import errors), with Klaviyo's headers,
//! JSON:API errors and per-endpoint rate limits.

mod rate;
mod store;
pub(crate) mod validate;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{NaiveDate, Utc};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use store::{Job, Store};
pub use store::{KlaviyoBulkJob, KlaviyoEvent, KlaviyoProfile, KlaviyoSnapshot, Rejection};
use validate::ApiError;

use crate::config::{Faults, KlaviyoRates};
use crate::faults::{Gates, Outcome};
use crate::record::{Recorder, request_line};
use crate::server::ConnKill;

const JSON_API: &str = "application/vnd.api+json";
const IMPORT_ERRORS_PAGE: usize = 100;

pub(crate) struct KlaviyoApp {
    pub api_key: String,
    pub rates: KlaviyoRates,
    pub processing: Duration,
    pub record_in_memory: bool,
    pub base_url: String,
    pub store: Mutex<Store>,
    limiter: Mutex<rate::Limiter>,
    pub gates: Arc<Gates>,
    pub writes: Recorder,
    reads: Recorder,
}

impl KlaviyoApp {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        seed: u64,
        api_key: String,
        rates: KlaviyoRates,
        processing: Duration,
        gates: Arc<Gates>,
        writes: Recorder,
        reads: Recorder,
        record_in_memory: bool,
        base_url: String,
    ) -> Self {
        KlaviyoApp {
            api_key,
            rates,
            processing,
            record_in_memory,
            base_url,
            store: Mutex::new(Store::new(seed)),
            limiter: Mutex::new(rate::Limiter::new()),
            gates,
            writes,
            reads,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.settle_jobs(self.processing, Utc::now());
        store
    }

    pub(crate) fn snapshot(&self) -> KlaviyoSnapshot {
        self.lock().snapshot(self.processing)
    }
}

type AppState = Arc<KlaviyoApp>;

pub(crate) fn router(app: AppState) -> Router {
    let api = Router::new()
        .route("/api/events", post(create_event))
        .route("/api/event-bulk-create-jobs", post(bulk_create_events))
        .route("/api/profile-import", post(profile_import))
        .route("/api/profile-bulk-import-jobs", post(bulk_import_profiles))
        .route("/api/profile-bulk-import-jobs/{id}", get(get_job))
        .route(
            "/api/profile-bulk-import-jobs/{id}/import-errors",
            get(get_import_errors),
        )
        // Klaviyo's own links end in a slash.
        .route("/api/profile-bulk-import-jobs/{id}/", get(get_job))
        .route(
            "/api/profile-bulk-import-jobs/{id}/import-errors/",
            get(get_import_errors),
        )
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

/// A JSON:API error answer.
pub(crate) fn error_response(rng: &mut fastrand::Rng, error: &ApiError) -> Response {
    let mut source = serde_json::Map::new();
    if let Some(p) = &error.pointer {
        source.insert("pointer".into(), json!(p));
    }
    if let Some(p) = error.parameter {
        source.insert("parameter".into(), json!(p));
    }
    let body = json!({"errors": [{
        "id": crate::ids::uuid(rng),
        "status": error.status,
        "code": error.code,
        "title": error.title,
        "detail": error.detail,
        "source": source,
        "links": {},
        "meta": {},
    }]});
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, [(header::CONTENT_TYPE, JSON_API)], body.to_string()).into_response()
}

fn fail(app: &KlaviyoApp, error: ApiError) -> Response {
    error_response(&mut app.lock().rng, &error)
}

fn throttled(app: &KlaviyoApp, retry_after: u64) -> Response {
    let unit = if retry_after == 1 {
        "second"
    } else {
        "seconds"
    };
    let mut store = app.lock();
    store.throttled += 1;
    let body = json!({"errors": [{
        "id": crate::ids::uuid(&mut store.rng),
        "status": 429,
        "code": "throttled",
        "title": "Request was throttled.",
        "detail": format!("Request was throttled. Expected available in {retry_after} {unit}."),
        "source": {"pointer": "/data"},
        "links": {"type": "https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling#rate-limits"},
        "meta": {},
    }]});
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::CONTENT_TYPE, JSON_API.to_string()),
            (header::RETRY_AFTER, retry_after.to_string()),
        ],
        body.to_string(),
    )
        .into_response()
}

fn server_error(status: u16) -> ApiError {
    let (code, title) = match status {
        502 => ("bad_gateway", "Bad gateway."),
        503 => ("service_unavailable", "Service unavailable."),
        504 => ("gateway_timeout", "Gateway timeout."),
        _ => ("error", "A server error occurred."),
    };
    ApiError::new(
        status,
        code,
        title,
        "The server could not handle the request. Please try again later.",
    )
}

/// The buffered request body, put in the extensions by [`gate`].
#[derive(Debug, Clone)]
struct RawBody(Bytes);

/// The endpoint key (`"POST /api/events"`) of a request, as counted and rate-limited.
fn endpoint_key(method: &Method, matched: Option<&MatchedPath>) -> &'static str {
    let route = matched
        .map(MatchedPath::as_str)
        .unwrap_or("")
        .trim_end_matches('/');
    [
        "POST /api/events",
        "POST /api/event-bulk-create-jobs",
        "POST /api/profile-import",
        "POST /api/profile-bulk-import-jobs",
        "GET /api/profile-bulk-import-jobs/{id}",
        "GET /api/profile-bulk-import-jobs/{id}/import-errors",
    ]
    .into_iter()
    .find(|key| {
        key.split_once(' ')
            .is_some_and(|(m, r)| m == method.as_str() && r == route)
    })
    .unwrap_or("other")
}

fn revision_ok(value: &str) -> bool {
    let date = value.strip_suffix(".pre").unwrap_or(value);
    date.len() == 10
        && date.as_bytes()[4] == b'-'
        && date.as_bytes()[7] == b'-'
        && NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok()
}

/// Everything every request goes through: recording, faults, auth, revision, rate
/// limits, content type and body size; then RateLimit-* headers and rejection records.
async fn gate(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let limit = validate::MAX_BULK_BODY;
    let (bytes, too_large) = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => (bytes, false),
        Err(_) => (Bytes::new(), true),
    };
    let method = parts.method.clone();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    let line = request_line(method.as_str(), &path, &parts.headers, &bytes);
    if method == Method::POST {
        app.writes.write(&line);
        if app.record_in_memory {
            app.lock().writes.push(line);
        }
    } else {
        app.reads.write(&line);
    }
    let endpoint = endpoint_key(&method, parts.extensions.get::<MatchedPath>());
    let counted = if endpoint == "other" {
        format!("{method} {}", parts.uri.path())
    } else {
        endpoint.to_string()
    };
    *app.lock().request_counts.entry(counted).or_insert(0) += 1;

    let (outcome, latency) = app.gates.klaviyo.decide();
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    let response = match outcome {
        Outcome::Drop => {
            app.lock().dropped += 1;
            match parts.extensions.get::<ConnKill>() {
                Some(kill) => {
                    kill.kill();
                    std::future::pending::<()>().await;
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                None => fail(&app, server_error(502)),
            }
        }
        Outcome::ServerError(status) => {
            app.lock().server_errors += 1;
            fail(&app, server_error(status))
        }
        Outcome::Throttle | Outcome::Storm => throttled(&app, 1),
        Outcome::Pass => {
            parts.extensions.insert(RawBody(bytes));
            checked(
                &app,
                endpoint,
                too_large,
                Request::from_parts(parts, Body::empty()),
                next,
            )
            .await
        }
    };
    remember_rejection(&app, method.as_str(), &path, response).await
}

async fn checked(
    app: &KlaviyoApp,
    endpoint: &'static str,
    too_large: bool,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let expected = format!("Klaviyo-API-Key {}", app.api_key);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(expected.as_str()) {
        let detail = if auth.is_none() {
            "Authentication credentials were not provided."
        } else {
            "Incorrect authentication credentials."
        };
        return fail(
            app,
            ApiError::new(
                401,
                "not_authenticated",
                "Authentication credentials were not provided.",
                detail,
            ),
        );
    }
    match headers.get("revision").map(|v| v.to_str().unwrap_or("")) {
        None => {
            let mut e = ApiError::new(
                400,
                "invalid",
                "Invalid input.",
                "The 'revision' header is required.",
            );
            e.parameter = Some("revision");
            return fail(app, e);
        }
        Some(value) if !revision_ok(value) => {
            let mut e = ApiError::new(
                400,
                "invalid",
                "Invalid input.",
                format!(
                    "The 'revision' header '{value}' is not a date in the form YYYY-MM-DD (or YYYY-MM-DD.pre)."
                ),
            );
            e.parameter = Some("revision");
            return fail(app, e);
        }
        Some(_) => {}
    }
    let headroom = if app.rates == KlaviyoRates::Real {
        let admitted = app
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(endpoint, tokio::time::Instant::now());
        match admitted {
            Ok(h) => h,
            Err(retry_after) => return throttled(app, retry_after),
        }
    } else {
        None
    };
    if request.method() == Method::POST {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case(JSON_API) {
            return fail(
                app,
                ApiError::new(
                    415,
                    "unsupported_media_type",
                    "Unsupported media type.",
                    format!(
                        "Unsupported media type \"{content_type}\" in request; use {JSON_API}."
                    ),
                ),
            );
        }
        if too_large {
            return fail(
                app,
                ApiError::new(
                    413,
                    "too_large",
                    "Request too large.",
                    "The request body is larger than 5 MB.",
                ),
            );
        }
    }
    let mut response = next.run(request).await;
    if let Some(h) = headroom {
        let headers = response.headers_mut();
        for (name, value) in [
            ("ratelimit-limit", h.limit as u64),
            ("ratelimit-remaining", h.remaining as u64),
            ("ratelimit-reset", h.reset_secs),
        ] {
            headers.insert(name, HeaderValue::from(value));
        }
    }
    response
}

async fn remember_rejection(
    app: &KlaviyoApp,
    method: &str,
    path: &str,
    response: Response,
) -> Response {
    let status = response.status();
    if !status.is_client_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    let body_json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    app.lock().rejections.push(Rejection {
        method: method.to_string(),
        path: path.to_string(),
        status: status.as_u16(),
        body: body_json,
    });
    Response::from_parts(parts, Body::from(bytes))
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("/", format!("The request body is not valid JSON: {e}.")))
}

fn body_of(request: &Request) -> Bytes {
    request
        .extensions()
        .get::<RawBody>()
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

async fn create_event(State(app): State<AppState>, request: Request) -> Response {
    let bytes = body_of(&request);
    let body = match parse_json(&bytes) {
        Ok(b) => b,
        Err(e) => return fail(&app, e),
    };
    let now = Utc::now();
    let (profile, event) = match validate::create_event(&body, now) {
        Ok(parsed) => parsed,
        Err(e) => return fail(&app, e),
    };
    let mut store = app.lock();
    match store.upsert(&profile, now) {
        Ok((index, _)) => {
            store.add_event(index, event, now, "/api/events");
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => error_response(&mut store.rng, &e),
    }
}

async fn bulk_create_events(State(app): State<AppState>, request: Request) -> Response {
    let bytes = body_of(&request);
    let body = match parse_json(&bytes) {
        Ok(b) => b,
        Err(e) => return fail(&app, e),
    };
    let now = Utc::now();
    let entries = match validate::bulk_create_events(&body, now) {
        Ok(entries) => entries,
        Err(e) => return fail(&app, e),
    };
    let mut store = app.lock();
    for (profile, events) in entries {
        // A profile id that does not exist fails that profile's events only; Klaviyo
        // processes bulk jobs asynchronously and reports nothing back.
        if let Ok((index, _)) = store.upsert(&profile, now) {
            for event in events {
                store.add_event(index, event, now, "/api/event-bulk-create-jobs");
            }
        }
    }
    StatusCode::ACCEPTED.into_response()
}

fn profile_resource(app: &KlaviyoApp, profile: &KlaviyoProfile) -> Value {
    let mut attributes = serde_json::Map::new();
    for key in ["email", "phone_number", "external_id"] {
        let value = match key {
            "email" => &profile.email,
            "phone_number" => &profile.phone_number,
            _ => &profile.external_id,
        };
        attributes.insert(key.into(), json!(value));
    }
    for key in [
        "first_name",
        "last_name",
        "organization",
        "locale",
        "title",
        "image",
    ] {
        attributes.insert(
            key.into(),
            profile.attributes.get(key).cloned().unwrap_or(Value::Null),
        );
    }
    attributes.insert("created".into(), json!(profile.created.to_rfc3339()));
    attributes.insert("updated".into(), json!(profile.updated.to_rfc3339()));
    attributes.insert(
        "location".into(),
        profile
            .attributes
            .get("location")
            .cloned()
            .unwrap_or(json!({})),
    );
    attributes.insert(
        "properties".into(),
        Value::Object(profile.properties.clone()),
    );
    json!({"data": {
        "type": "profile",
        "id": profile.id,
        "attributes": attributes,
        "links": {"self": format!("{}/api/profiles/{}/", app.base_url, profile.id)},
    }})
}

async fn profile_import(State(app): State<AppState>, request: Request) -> Response {
    let bytes = body_of(&request);
    if bytes.len() > validate::MAX_PROFILE_BYTES {
        return fail(
            &app,
            ApiError::new(
                413,
                "too_large",
                "Request too large.",
                format!(
                    "The request body is {} bytes, over the 100 KB limit.",
                    bytes.len()
                ),
            ),
        );
    }
    let body = match parse_json(&bytes) {
        Ok(b) => b,
        Err(e) => return fail(&app, e),
    };
    let profile = match validate::profile_import(&body) {
        Ok(p) => p,
        Err(e) => return fail(&app, e),
    };
    let mut store = app.lock();
    match store.upsert(&profile, Utc::now()) {
        Ok((index, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = profile_resource(&app, store.profile(index));
            (status, [(header::CONTENT_TYPE, JSON_API)], body.to_string()).into_response()
        }
        Err(e) => error_response(&mut store.rng, &e),
    }
}

fn job_resource(app: &KlaviyoApp, job: &Job) -> Value {
    let status = job.status(app.processing);
    let complete = job.completed_at.is_some();
    let started = (status != "queued").then(|| job.created_at.to_rfc3339());
    json!({"data": {
        "type": "profile-bulk-import-job",
        "id": job.id,
        "attributes": {
            "status": status,
            "created_at": job.created_at.to_rfc3339(),
            "total_count": job.total,
            "completed_count": if complete { job.applied } else { 0 },
            "failed_count": if complete { job.errors.len() } else { 0 },
            "completed_at": job.completed_at.map(|t| t.to_rfc3339()),
            "expires_at": (job.created_at + chrono::Duration::days(7)).to_rfc3339(),
            "started_at": started,
        },
        "relationships": {
            "lists": {"data": job.list_ids.iter().map(|id| json!({"type": "list", "id": id})).collect::<Vec<_>>()},
            "import-errors": {"links": {"related": format!("{}/api/profile-bulk-import-jobs/{}/import-errors/", app.base_url, job.id)}},
        },
        "links": {"self": format!("{}/api/profile-bulk-import-jobs/{}/", app.base_url, job.id)},
    }})
}

async fn bulk_import_profiles(State(app): State<AppState>, request: Request) -> Response {
    let bytes = body_of(&request);
    let body = match parse_json(&bytes) {
        Ok(b) => b,
        Err(e) => return fail(&app, e),
    };
    let parsed = match validate::bulk_import_profiles(&body) {
        Ok(p) => p,
        Err(e) => return fail(&app, e),
    };
    let total = parsed.profiles.len();
    let mut pending = Vec::new();
    let mut errors = Vec::new();
    for (index, (original, verdict)) in parsed.profiles.into_iter().enumerate() {
        match verdict {
            Ok(profile) => pending.push((index, original, profile)),
            Err(e) => errors.push(json!({
                "type": "import-error",
                "code": e.code,
                "title": e.title,
                "detail": e.detail,
                "source": {"pointer": e.pointer},
                "original_payload": original,
            })),
        }
    }
    let mut store = app.lock();
    let id = crate::ids::klaviyo_id(&mut store.rng);
    let job = Job {
        id: id.clone(),
        created_at: Utc::now(),
        created: tokio::time::Instant::now(),
        total,
        pending,
        applied: 0,
        errors,
        list_ids: parsed.list_ids,
        completed_at: None,
    };
    let body = job_resource(&app, &job);
    let position = store.jobs.len();
    store.job_index.insert(id, position);
    store.jobs.push(job);
    drop(store);
    // Complete the job on time even when nobody polls it.
    let waker = app.clone();
    tokio::spawn(async move {
        tokio::time::sleep(waker.processing).await;
        drop(waker.lock());
    });
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, JSON_API)],
        body.to_string(),
    )
        .into_response()
}

fn job_not_found(app: &KlaviyoApp, id: &str) -> Response {
    fail(
        app,
        ApiError::new(
            404,
            "not_found",
            "Not found.",
            format!("A profile bulk import job with id {id} does not exist."),
        ),
    )
}

async fn get_job(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let store = app.lock();
    let Some(&index) = store.job_index.get(&id) else {
        drop(store);
        return job_not_found(&app, &id);
    };
    let body = job_resource(&app, &store.jobs[index]);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON_API)],
        body.to_string(),
    )
        .into_response()
}

/// `page[cursor]` from a query string, raw or percent-encoded.
fn page_cursor(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let key = key
            .replace("%5B", "[")
            .replace("%5b", "[")
            .replace("%5D", "]")
            .replace("%5d", "]");
        (key == "page[cursor]").then(|| value.to_string())
    })
}

async fn get_import_errors(
    State(app): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let cursor = page_cursor(request.uri().query());
    let offset = match cursor.as_deref() {
        None => 0,
        Some(c) => match c
            .strip_prefix("ie")
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
        {
            Some(offset) => offset,
            None => {
                return fail(
                    &app,
                    ApiError::new(400, "invalid", "Invalid input.", "Invalid cursor provided."),
                );
            }
        },
    };
    let store = app.lock();
    let Some(&index) = store.job_index.get(&id) else {
        drop(store);
        return job_not_found(&app, &id);
    };
    let job = &store.jobs[index];
    // Errors are known once the job is complete, as with Klaviyo's asynchronous import.
    let errors: &[Value] = if job.completed_at.is_some() {
        &job.errors
    } else {
        &[]
    };
    let page: Vec<Value> = errors
        .iter()
        .enumerate()
        .skip(offset)
        .take(IMPORT_ERRORS_PAGE)
        .map(|(n, e)| {
            let mut attributes = e.clone();
            if let Some(obj) = attributes.as_object_mut() {
                obj.remove("type");
            }
            json!({"type": "import-error", "id": format!("{}-{n}", job.id), "attributes": attributes})
        })
        .collect();
    let base = format!(
        "{}/api/profile-bulk-import-jobs/{}/import-errors/",
        app.base_url, job.id
    );
    let next_offset = offset + IMPORT_ERRORS_PAGE;
    let next =
        (next_offset < errors.len()).then(|| format!("{base}?page%5Bcursor%5D=ie{next_offset:x}"));
    let prev = (offset > 0).then(|| {
        format!(
            "{base}?page%5Bcursor%5D=ie{:x}",
            offset.saturating_sub(IMPORT_ERRORS_PAGE)
        )
    });
    let self_link = match &cursor {
        Some(c) => format!("{base}?page%5Bcursor%5D={c}"),
        None => base.clone(),
    };
    let body = json!({"data": page, "links": {"self": self_link, "first": base, "next": next, "prev": prev}});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON_API)],
        body.to_string(),
    )
        .into_response()
}

async fn not_found(State(app): State<AppState>, request: Request) -> Response {
    let detail = format!(
        "There is no endpoint {} {}.",
        request.method(),
        request.uri().path()
    );
    fail(&app, ApiError::new(404, "not_found", "Not found.", detail))
}

async fn method_not_allowed(State(app): State<AppState>, request: Request) -> Response {
    let detail = format!(
        "Method \"{}\" not allowed on {}.",
        request.method(),
        request.uri().path()
    );
    fail(
        &app,
        ApiError::new(405, "method_not_allowed", "Method not allowed.", detail),
    )
}

async fn sandbox_state(State(app): State<AppState>) -> Response {
    let mut summary = app.lock().summary();
    summary["faults"] = serde_json::to_value(app.gates.klaviyo.faults()).unwrap_or(Value::Null);
    axum::Json(summary).into_response()
}

async fn sandbox_get_faults(State(app): State<AppState>) -> Response {
    axum::Json(app.gates.klaviyo.faults()).into_response()
}

async fn sandbox_faults(State(app): State<AppState>, body: Bytes) -> Response {
    match parse_faults(&body) {
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

/// Faults from a `POST /_sandbox/faults` body.
pub(crate) fn parse_faults(body: &[u8]) -> Result<Faults, String> {
    let faults: Faults =
        serde_json::from_slice(body).map_err(|e| format!("invalid faults: {e}"))?;
    faults.check()?;
    Ok(faults)
}
