//! Klaviyo request bodies checked the way Klaviyo documents them (OpenAPI spec 2026-07-15),
//! written independently of the bridge's own types. Declared objects refuse undeclared keys
//! (Klaviyo's spec has no `additionalProperties: false`, but a misplaced key is always a
//! client bug); free-form objects (`properties`, patch maps) stay free.

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde_json::{Map, Value};

pub(crate) const MAX_BULK_BODY: usize = 5 * 1024 * 1024;
pub(crate) const MAX_PROFILE_BYTES: usize = 100 * 1024;
pub(crate) const MAX_STRING_BYTES: usize = 100 * 1024;
pub(crate) const MAX_BULK_EVENTS: usize = 1_000;
pub(crate) const MAX_BULK_PROFILES: usize = 10_000;
pub(crate) const MAX_EVENT_PROPERTIES: usize = 400;
pub(crate) const METRIC_NAME_LIMIT: usize = 128;

/// One JSON:API error, before it gets its id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub pointer: Option<String>,
    pub parameter: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn invalid(pointer: &str, detail: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            code: "invalid",
            title: "Invalid input.",
            detail: detail.into(),
            pointer: Some(if pointer.is_empty() {
                "/".into()
            } else {
                pointer.into()
            }),
            parameter: None,
        }
    }

    pub(crate) fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            title,
            detail: detail.into(),
            pointer: None,
            parameter: None,
        }
    }
}

type Checked<T> = Result<T, ApiError>;

/// RFC 6901 pointer of a child.
fn child(pointer: &str, key: &str) -> String {
    format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"))
}

fn object<'a>(
    value: &'a Value,
    pointer: &str,
    allowed: &[&str],
    required: &[&str],
) -> Checked<&'a Map<String, Value>> {
    let Some(map) = value.as_object() else {
        return Err(ApiError::invalid(
            pointer,
            format!("{} must be an object.", describe(pointer)),
        ));
    };
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            &child(pointer, key),
            format!(
                "'{key}' is not a valid field here (allowed: {}).",
                allowed.join(", ")
            ),
        ));
    }
    if let Some(key) = required
        .iter()
        .find(|k| map.get(**k).is_none_or(Value::is_null))
    {
        return Err(ApiError::invalid(
            &child(pointer, key),
            format!("'{key}' is a required field."),
        ));
    }
    Ok(map)
}

fn describe(pointer: &str) -> String {
    if pointer.is_empty() {
        "The request body".into()
    } else {
        format!("'{pointer}'")
    }
}

fn type_enum(map: &Map<String, Value>, pointer: &str, expected: &str) -> Checked<()> {
    match map.get("type") {
        Some(Value::String(t)) if t == expected => Ok(()),
        other => Err(ApiError::invalid(
            &child(pointer, "type"),
            format!(
                "'type' must be \"{expected}\", got {}.",
                other.map_or("nothing".into(), Value::to_string)
            ),
        )),
    }
}

/// A string or null field; `Ok(None)` when absent or null.
fn opt_string<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    pointer: &str,
) -> Checked<Option<&'a str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(
            &child(pointer, key),
            format!("'{key}' must be a string or null."),
        )),
    }
}

fn opt_object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    pointer: &str,
) -> Checked<Option<&'a Map<String, Value>>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(ApiError::invalid(
            &child(pointer, key),
            format!("'{key}' must be an object."),
        )),
    }
}

fn opt_bool(map: &Map<String, Value>, key: &str, pointer: &str) -> Checked<Option<bool>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            &child(pointer, key),
            format!("'{key}' must be a boolean."),
        )),
    }
}

fn array<'a>(map: &'a Map<String, Value>, key: &str, pointer: &str) -> Checked<&'a Vec<Value>> {
    match map.get(key) {
        Some(Value::Array(a)) => Ok(a),
        _ => Err(ApiError::invalid(
            &child(pointer, key),
            format!("'{key}' must be an array."),
        )),
    }
}

/// Every string in the body is at most 100 KB.
pub(crate) fn check_string_sizes(value: &Value, pointer: &str) -> Checked<()> {
    match value {
        Value::String(s) if s.len() > MAX_STRING_BYTES => Err(ApiError::invalid(
            pointer,
            format!(
                "String of {} bytes is larger than the 100 KB limit.",
                s.len()
            ),
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_string_sizes(v, &child(pointer, &i.to_string()))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.len() > MAX_STRING_BYTES {
                return Err(ApiError::invalid(
                    pointer,
                    "A property name is larger than the 100 KB limit.",
                ));
            }
            check_string_sizes(v, &child(pointer, k))
        }),
        _ => Ok(()),
    }
}

pub(crate) fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

pub(crate) fn is_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@')
        && domain.contains('.')
        && domain
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
}

/// A profile as a request describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ProfileInput {
    pub id: Option<String>,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub anonymous_id: Option<String>,
    pub kx: Option<String>,
    /// Other standard fields present in the request; `null` clears one.
    pub fields: Map<String, Value>,
    pub properties: Option<Map<String, Value>>,
    pub patch_append: Map<String, Value>,
    pub patch_unappend: Map<String, Value>,
    pub patch_unset: Vec<String>,
}

impl ProfileInput {
    /// A key naming the profile inside one request (for repeated-unique_id checks).
    pub(crate) fn identity_key(&self) -> String {
        [
            ("id", &self.id),
            ("external_id", &self.external_id),
            ("email", &self.email),
            ("phone_number", &self.phone_number),
            ("anonymous_id", &self.anonymous_id),
            ("_kx", &self.kx),
        ]
        .iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name}={v}")))
        .collect::<Vec<_>>()
        .join("&")
    }

    /// Klaviyo needs at least one identifier and well-formed email and phone.
    pub(crate) fn check_identity(&self, pointer: &str) -> Checked<()> {
        let attrs = child(pointer, "attributes");
        if let Some(email) = &self.email
            && !is_email(email)
        {
            return Err(ApiError::invalid(
                &child(&attrs, "email"),
                format!("Invalid email address: '{email}'."),
            ));
        }
        if let Some(phone) = &self.phone_number
            && !is_e164(phone)
        {
            return Err(ApiError::invalid(
                &child(&attrs, "phone_number"),
                format!(
                    "Invalid phone number format (Example of a valid format: +12345678901): '{phone}'."
                ),
            ));
        }
        let has_identifier = [
            &self.id,
            &self.external_id,
            &self.email,
            &self.phone_number,
            &self.anonymous_id,
            &self.kx,
        ]
        .iter()
        .any(|v| v.is_some());
        if !has_identifier {
            return Err(ApiError::invalid(
                &attrs,
                "A profile identifier is required: one of id, email, phone_number, external_id, anonymous_id or _kx.",
            ));
        }
        Ok(())
    }
}

const LOCATION_KEYS: &[&str] = &[
    "address1",
    "address2",
    "city",
    "country",
    "ip",
    "latitude",
    "longitude",
    "region",
    "timezone",
    "zip",
];

fn check_location(value: &Value, pointer: &str) -> Checked<()> {
    if value.is_null() {
        return Ok(());
    }
    let map = object(value, pointer, LOCATION_KEYS, &[])?;
    for (key, v) in map {
        let ok = match key.as_str() {
            "latitude" | "longitude" => v.is_string() || v.is_number(),
            _ => v.is_string() || v.is_null(),
        };
        if !ok {
            return Err(ApiError::invalid(
                &child(pointer, key),
                format!("'{key}' has the wrong type."),
            ));
        }
    }
    Ok(())
}

fn parse_meta(value: &Value, pointer: &str, profile: &mut ProfileInput) -> Checked<()> {
    if value.is_null() {
        return Ok(());
    }
    let meta = object(
        value,
        pointer,
        &["patch_identifiers", "patch_properties"],
        &[],
    )?;
    if let Some(ids) = meta.get("patch_identifiers").filter(|v| !v.is_null()) {
        let ptr = child(pointer, "patch_identifiers");
        let ids = object(ids, &ptr, &["append", "unappend"], &[])?;
        for key in ["append", "unappend"] {
            if let Some(v) = ids.get(key)
                && !v.is_object()
            {
                return Err(ApiError::invalid(
                    &child(&ptr, key),
                    format!("'{key}' must be an object."),
                ));
            }
        }
    }
    if let Some(patch) = meta.get("patch_properties").filter(|v| !v.is_null()) {
        let ptr = child(pointer, "patch_properties");
        let patch = object(patch, &ptr, &["append", "unappend", "unset"], &[])?;
        if let Some(append) = opt_object(patch, "append", &ptr)? {
            profile.patch_append = append.clone();
        }
        if let Some(unappend) = opt_object(patch, "unappend", &ptr)? {
            profile.patch_unappend = unappend.clone();
        }
        match patch.get("unset") {
            None => {}
            Some(Value::String(s)) => profile.patch_unset = vec![s.clone()],
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                profile.patch_unset = items
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    &child(&ptr, "unset"),
                    "'unset' must be a string or an array of strings.",
                ));
            }
        }
    }
    Ok(())
}

/// Where a profile object sits and which keys its schema declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProfileShape {
    /// `EventProfileCreateQueryResourceObject`: `meta` inside `attributes`.
    CreateEvent,
    /// `OnsiteProfileCreateQueryResourceObject`: `meta` beside `attributes`.
    BulkEvent,
    /// `ProfileUpsertQueryResourceObject`: `meta` beside, no `anonymous_id`.
    Upsert,
}

/// Parse a profile resource object (`{"type":"profile", "id", "attributes", "meta"}`).
/// Checks the shape only; [`ProfileInput::check_identity`] checks the identifiers.
pub(crate) fn parse_profile(
    value: &Value,
    pointer: &str,
    shape: ProfileShape,
) -> Checked<ProfileInput> {
    let top_keys: &[&str] = match shape {
        ProfileShape::CreateEvent => &["type", "id", "attributes"],
        ProfileShape::BulkEvent | ProfileShape::Upsert => &["type", "id", "attributes", "meta"],
    };
    let map = object(value, pointer, top_keys, &["type", "attributes"])?;
    type_enum(map, pointer, "profile")?;
    let mut profile = ProfileInput {
        id: opt_string(map, "id", pointer)?.map(String::from),
        ..Default::default()
    };
    let attr_ptr = child(pointer, "attributes");
    let mut attr_keys = vec![
        "_kx",
        "email",
        "external_id",
        "first_name",
        "image",
        "last_name",
        "locale",
        "location",
        "organization",
        "phone_number",
        "properties",
        "title",
    ];
    if shape != ProfileShape::Upsert {
        attr_keys.push("anonymous_id");
    }
    if shape == ProfileShape::CreateEvent {
        attr_keys.push("meta");
    }
    let attrs = object(&map["attributes"], &attr_ptr, &attr_keys, &[])?;
    for (key, v) in attrs {
        let ptr = child(&attr_ptr, key);
        match key.as_str() {
            "location" => {
                check_location(v, &ptr)?;
                profile.fields.insert(key.clone(), v.clone());
            }
            "meta" => parse_meta(v, &ptr, &mut profile)?,
            "properties" => profile.properties = opt_object(attrs, key, &attr_ptr)?.cloned(),
            _ => {
                let text = opt_string(attrs, key, &attr_ptr)?.map(String::from);
                // Klaviyo treats an empty identifier as no identifier.
                let text = text.filter(|t| !t.is_empty());
                match key.as_str() {
                    "email" => profile.email = text,
                    "phone_number" => profile.phone_number = text,
                    "external_id" => profile.external_id = text,
                    "anonymous_id" => profile.anonymous_id = text,
                    "_kx" => profile.kx = text,
                    _ => {
                        profile.fields.insert(key.clone(), v.clone());
                    }
                }
            }
        }
    }
    if shape != ProfileShape::CreateEvent
        && let Some(meta) = map.get("meta")
    {
        parse_meta(meta, &child(pointer, "meta"), &mut profile)?;
    }
    Ok(profile)
}

/// One event as a request describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventInput {
    pub metric: String,
    pub properties: Map<String, Value>,
    pub time: Option<DateTime<Utc>>,
    pub value: Option<f64>,
    pub value_currency: Option<String>,
    pub unique_id: Option<String>,
    pub backfill: Option<bool>,
}

fn parse_metric(value: &Value, pointer: &str) -> Checked<String> {
    let metric = object(value, pointer, &["data"], &["data"])?;
    let ptr = child(pointer, "data");
    let data = object(
        &metric["data"],
        &ptr,
        &["type", "attributes"],
        &["type", "attributes"],
    )?;
    type_enum(data, &ptr, "metric")?;
    let attr_ptr = child(&ptr, "attributes");
    let attrs = object(
        &data["attributes"],
        &attr_ptr,
        &["name", "service"],
        &["name"],
    )?;
    opt_string(attrs, "service", &attr_ptr)?;
    let name_ptr = child(&attr_ptr, "name");
    let Some(name) = attrs.get("name").and_then(Value::as_str) else {
        return Err(ApiError::invalid(&name_ptr, "'name' must be a string."));
    };
    if name.trim().is_empty() {
        return Err(ApiError::invalid(
            &name_ptr,
            "The metric name must not be empty.",
        ));
    }
    if name.chars().count() >= METRIC_NAME_LIMIT {
        return Err(ApiError::invalid(
            &name_ptr,
            "The metric name must be fewer than 128 characters.",
        ));
    }
    Ok(name.to_string())
}

fn parse_time(value: &str, pointer: &str, now: DateTime<Utc>) -> Checked<DateTime<Utc>> {
    let Ok(time) = DateTime::parse_from_rfc3339(value) else {
        return Err(ApiError::invalid(
            pointer,
            format!("'{value}' is not a valid ISO 8601 date-time."),
        ));
    };
    let time = time.with_timezone(&Utc);
    let earliest = Utc
        .with_ymd_and_hms(1990, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if time <= earliest {
        return Err(ApiError::invalid(
            pointer,
            "The event time must be after 1990.",
        ));
    }
    if time > now + ChronoDuration::days(365) {
        return Err(ApiError::invalid(
            pointer,
            "The event time must be at most 1 year in the future.",
        ));
    }
    Ok(time)
}

/// The event attributes common to both endpoints (`profile` is handled by the caller).
fn parse_event_attributes(
    attrs: &Map<String, Value>,
    pointer: &str,
    now: DateTime<Utc>,
) -> Checked<EventInput> {
    let metric = parse_metric(&attrs["metric"], &child(pointer, "metric"))?;
    let props_ptr = child(pointer, "properties");
    let Some(properties) = attrs.get("properties").and_then(Value::as_object) else {
        return Err(ApiError::invalid(
            &props_ptr,
            "'properties' must be an object.",
        ));
    };
    if properties.len() > MAX_EVENT_PROPERTIES {
        return Err(ApiError::invalid(
            &props_ptr,
            format!(
                "An event may have at most 400 properties, this one has {}.",
                properties.len()
            ),
        ));
    }
    let time = opt_string(attrs, "time", pointer)?
        .map(|t| parse_time(t, &child(pointer, "time"), now))
        .transpose()?;
    let value = match attrs.get("value") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(_) => {
            return Err(ApiError::invalid(
                &child(pointer, "value"),
                "'value' must be a number.",
            ));
        }
    };
    Ok(EventInput {
        metric,
        properties: properties.clone(),
        time,
        value,
        value_currency: opt_string(attrs, "value_currency", pointer)?.map(String::from),
        unique_id: opt_string(attrs, "unique_id", pointer)?.map(String::from),
        backfill: opt_bool(attrs, "backfill", pointer)?,
    })
}

fn top_data(body: &Value) -> Checked<&Value> {
    let top = object(body, "", &["data"], &["data"])?;
    Ok(&top["data"])
}

/// `POST /api/events` (`EventCreateQueryV2`).
pub(crate) fn create_event(
    body: &Value,
    now: DateTime<Utc>,
) -> Checked<(ProfileInput, EventInput)> {
    check_string_sizes(body, "")?;
    let data = object(
        top_data(body)?,
        "/data",
        &["type", "attributes"],
        &["type", "attributes"],
    )?;
    type_enum(data, "/data", "event")?;
    let ptr = "/data/attributes";
    let keys = [
        "backfill",
        "metric",
        "profile",
        "properties",
        "time",
        "unique_id",
        "value",
        "value_currency",
    ];
    let attrs = object(
        &data["attributes"],
        ptr,
        &keys,
        &["properties", "metric", "profile"],
    )?;
    let event = parse_event_attributes(attrs, ptr, now)?;
    let profile_ptr = child(ptr, "profile");
    let profile = object(&attrs["profile"], &profile_ptr, &["data"], &["data"])?;
    let data_ptr = child(&profile_ptr, "data");
    let profile = parse_profile(&profile["data"], &data_ptr, ProfileShape::CreateEvent)?;
    profile.check_identity(&data_ptr)?;
    Ok((profile, event))
}

/// `POST /api/event-bulk-create-jobs` (`EventsBulkCreateJob`): each profile with its events.
pub(crate) fn bulk_create_events(
    body: &Value,
    now: DateTime<Utc>,
) -> Checked<Vec<(ProfileInput, Vec<EventInput>)>> {
    check_string_sizes(body, "")?;
    let data = object(
        top_data(body)?,
        "/data",
        &["type", "attributes"],
        &["type", "attributes"],
    )?;
    type_enum(data, "/data", "event-bulk-create-job")?;
    let attrs = object(
        &data["attributes"],
        "/data/attributes",
        &["events-bulk-create"],
        &["events-bulk-create"],
    )?;
    let list_ptr = "/data/attributes/events-bulk-create";
    let list = object(&attrs["events-bulk-create"], list_ptr, &["data"], &["data"])?;
    let entries = array(list, "data", list_ptr)?;
    let total: usize = entries
        .iter()
        .map(|e| {
            e.pointer("/attributes/events/data")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        })
        .sum();
    if total > MAX_BULK_EVENTS {
        return Err(ApiError::invalid(
            &child(list_ptr, "data"),
            format!("A bulk create job may hold at most 1000 events, this one holds {total}."),
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let ptr = format!("{list_ptr}/data/{i}");
        let entry = object(
            entry,
            &ptr,
            &["type", "attributes"],
            &["type", "attributes"],
        )?;
        type_enum(entry, &ptr, "event-bulk-create")?;
        let attr_ptr = child(&ptr, "attributes");
        let attrs = object(
            &entry["attributes"],
            &attr_ptr,
            &["backfill", "events", "profile"],
            &["profile", "events"],
        )?;
        let entry_backfill = opt_bool(attrs, "backfill", &attr_ptr)?;
        let profile_ptr = child(&attr_ptr, "profile");
        let profile = object(&attrs["profile"], &profile_ptr, &["data"], &["data"])?;
        let data_ptr = child(&profile_ptr, "data");
        let profile = parse_profile(&profile["data"], &data_ptr, ProfileShape::BulkEvent)?;
        profile.check_identity(&data_ptr)?;
        let events_ptr = child(&attr_ptr, "events");
        let events = object(&attrs["events"], &events_ptr, &["data"], &["data"])?;
        let mut parsed = Vec::new();
        for (j, event) in array(events, "data", &events_ptr)?.iter().enumerate() {
            let ev_ptr = format!("{events_ptr}/data/{j}");
            let event = object(
                event,
                &ev_ptr,
                &["type", "attributes"],
                &["type", "attributes"],
            )?;
            type_enum(event, &ev_ptr, "event")?;
            let ev_attr_ptr = child(&ev_ptr, "attributes");
            let keys = [
                "backfill",
                "metric",
                "properties",
                "time",
                "unique_id",
                "value",
                "value_currency",
            ];
            let ev_attrs = object(
                &event["attributes"],
                &ev_attr_ptr,
                &keys,
                &["properties", "metric"],
            )?;
            let mut ev = parse_event_attributes(ev_attrs, &ev_attr_ptr, now)?;
            if let Some(uid) = &ev.unique_id
                && !seen.insert((profile.identity_key(), ev.metric.clone(), uid.clone()))
            {
                return Err(ApiError::invalid(
                    &child(&ev_attr_ptr, "unique_id"),
                    format!(
                        "unique_id '{uid}' appears more than once for the same profile and metric '{}'; no events were processed.",
                        ev.metric
                    ),
                ));
            }
            ev.backfill = ev.backfill.or(entry_backfill);
            parsed.push(ev);
        }
        out.push((profile, parsed));
    }
    Ok(out)
}

/// `POST /api/profile-import` (`ProfileUpsertQuery`).
pub(crate) fn profile_import(body: &Value) -> Checked<ProfileInput> {
    let profile = parse_profile(top_data(body)?, "/data", ProfileShape::Upsert)?;
    profile.check_identity("/data")?;
    Ok(profile)
}

/// The body of a bulk profile import after the request-level checks: each profile with
/// its own verdict (an invalid one becomes an import error, not a failed request).
pub(crate) struct BulkProfiles {
    pub profiles: Vec<(Value, Result<ProfileInput, ApiError>)>,
    pub list_ids: Vec<String>,
}

/// `POST /api/profile-bulk-import-jobs` (`ProfileImportJobCreateQuery`).
pub(crate) fn bulk_import_profiles(body: &Value) -> Checked<BulkProfiles> {
    let data = object(
        top_data(body)?,
        "/data",
        &["type", "attributes", "relationships"],
        &["type", "attributes"],
    )?;
    type_enum(data, "/data", "profile-bulk-import-job")?;
    let attrs = object(
        &data["attributes"],
        "/data/attributes",
        &["profiles"],
        &["profiles"],
    )?;
    let list_ptr = "/data/attributes/profiles";
    let list = object(&attrs["profiles"], list_ptr, &["data"], &["data"])?;
    let items = array(list, "data", list_ptr)?;
    if items.is_empty() {
        return Err(ApiError::invalid(
            &child(list_ptr, "data"),
            "At least one profile is required.",
        ));
    }
    if items.len() > MAX_BULK_PROFILES {
        return Err(ApiError::invalid(
            &child(list_ptr, "data"),
            format!(
                "A bulk import job may hold at most 10000 profiles, this one holds {}.",
                items.len()
            ),
        ));
    }
    let mut list_ids = Vec::new();
    if let Some(rel) = data.get("relationships") {
        let rel = object(rel, "/data/relationships", &["lists"], &[])?;
        if let Some(lists) = rel.get("lists") {
            let lists = object(lists, "/data/relationships/lists", &["data"], &[])?;
            for (i, item) in lists
                .get("data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let ptr = format!("/data/relationships/lists/data/{i}");
                let item = object(item, &ptr, &["type", "id"], &["type", "id"])?;
                type_enum(item, &ptr, "list")?;
                match item.get("id").and_then(Value::as_str) {
                    Some(id) => list_ids.push(id.to_string()),
                    None => {
                        return Err(ApiError::invalid(
                            &child(&ptr, "id"),
                            "'id' must be a string.",
                        ));
                    }
                }
            }
        }
    }
    let mut profiles = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ptr = format!("{list_ptr}/data/{i}");
        let size = serde_json::to_vec(item).map_or(0, |v| v.len());
        if size > MAX_PROFILE_BYTES {
            return Err(ApiError::invalid(
                &ptr,
                format!("Profile {i} is {size} bytes, over the 100 KB limit."),
            ));
        }
        // The shape is the request's contract; identifiers are each profile's own problem.
        let profile = parse_profile(item, &ptr, ProfileShape::Upsert)?;
        let verdict = profile.check_identity(&ptr).map(|()| profile);
        profiles.push((item.clone(), verdict));
    }
    Ok(BulkProfiles { profiles, list_ids })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event_body() -> Value {
        json!({"data": {"type": "event", "attributes": {
            "properties": {"points": 5},
            "time": "2026-07-20T10:15:00+00:00",
            "unique_id": "u-1",
            "metric": {"data": {"type": "metric", "attributes": {"name": "Wallet credited"}}},
            "profile": {"data": {"type": "profile", "attributes": {"external_id": "m-1", "email": "a@example.com"}}}
        }}})
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 8, 1, 0, 0, 0).single().unwrap()
    }

    #[test]
    fn accepts_the_documented_example() {
        let (profile, event) = create_event(&event_body(), now()).unwrap();
        assert_eq!(profile.external_id.as_deref(), Some("m-1"));
        assert_eq!(event.metric, "Wallet credited");
    }

    #[test]
    fn refuses_undeclared_and_misplaced_keys() {
        let mut body = event_body();
        body["data"]["attributes"]["profile"]["data"]["meta"] = json!({});
        let err = create_event(&body, now()).unwrap_err();
        assert_eq!(
            err.pointer.as_deref(),
            Some("/data/attributes/profile/data/meta")
        );
        let mut body = event_body();
        body["data"]["attributes"]["metric"]["data"]["attributes"]["nmae"] = json!("x");
        assert!(create_event(&body, now()).is_err());
        // Custom properties stay free.
        let mut body = event_body();
        body["data"]["attributes"]["properties"]["anything_at_all"] = json!({"nested": [1]});
        assert!(create_event(&body, now()).is_ok());
    }

    #[test]
    fn checks_time_metric_and_identity() {
        let cases = [
            ("/data/attributes/time", json!("1989-12-31T00:00:00Z")),
            ("/data/attributes/time", json!("2027-09-01T00:00:00Z")),
            ("/data/attributes/time", json!("yesterday")),
        ];
        for (pointer, time) in cases {
            let mut body = event_body();
            body["data"]["attributes"]["time"] = time;
            assert_eq!(
                create_event(&body, now()).unwrap_err().pointer.as_deref(),
                Some(pointer)
            );
        }
        let mut body = event_body();
        body["data"]["attributes"]["metric"]["data"]["attributes"]["name"] = json!("x".repeat(128));
        assert!(create_event(&body, now()).is_err());
        body["data"]["attributes"]["metric"]["data"]["attributes"]["name"] = json!("x".repeat(127));
        assert!(create_event(&body, now()).is_ok());
        let mut body = event_body();
        body["data"]["attributes"]["profile"]["data"]["attributes"] =
            json!({"phone_number": "0612345678"});
        assert!(
            create_event(&body, now())
                .unwrap_err()
                .detail
                .contains("phone")
        );
        body["data"]["attributes"]["profile"]["data"]["attributes"] = json!({"first_name": "Ann"});
        assert!(
            create_event(&body, now())
                .unwrap_err()
                .detail
                .contains("identifier")
        );
    }

    #[test]
    fn checks_phone_and_email_shapes() {
        assert!(is_e164("+33612345678"));
        assert!(!is_e164("33612345678"));
        assert!(!is_e164("+0612345678"));
        assert!(!is_e164("+33 6 12"));
        assert!(is_email("sarah.mason@example.com"));
        for bad in ["", "a", "a@b", "@b.com", "a@@b.com", "a b@c.com", "a@.com"] {
            assert!(!is_email(bad), "{bad}");
        }
    }
}
