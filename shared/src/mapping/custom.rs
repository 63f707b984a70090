//! TRIFFT custom webhooks to Klaviyo events through a declarative mapping (DESIGN §5).
//!
//! A mapping file (JSON) names, per TRIFFT event type, the Klaviyo metric and where in the
//! webhook body the identity, time, value, unique_id and properties are:
//!
//! ```json
//! {
//!   "version": 1,
//!   "type_path": "$.event",
//!   "rules": {
//!     "challenge_completed": {
//!       "metric": "Challenge completed",
//!       "identity": { "external_id": "$.member.id", "email": "$.member.email", "phone_number": "$.member.phone" },
//!       "time": "$.occurred_at",
//!       "value": "$.reward.value",
//!       "value_currency": "$.reward.currency",
//!       "unique_id": "$.id",
//!       "properties": { "include": ["$.challenge", "$.reward"], "rename": { "challenge.name": "challenge_name" }, "drop": ["reward.currency"] }
//!     }
//!   },
//!   "default": null,
//!   "unknown_type": "reject"
//! }
//! ```
//!
//! Paths ([`JsonPath`]) are a small JSONPath subset: `$` is the event object, `.key` a
//! member, `[0]` an array element, `["key with . or space"]` (or single quotes) any key.
//! Property paths in `rename` and `drop` are the same without the leading `$`, relative to
//! the properties being built (`challenge.name`, `items[0]`, `["a.b"]`).
//!
//! A body that already is a Klaviyo Create Event request (`{"data": {"type": "event", ...}}`)
//! is checked and forwarded instead. Profiles are only identified, never updated: profile
//! attributes other than `email`, `phone_number`, `external_id` are dropped with a warning,
//! as TRIFFT documents that custom webhooks do not update the profile.
//!
//! Everything here is pure: the handler passes the parsed body and the receive time.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::klaviyo::limits::{
    BULK_EVENTS_MAX, EVENT_PROPERTIES_MAX, METRIC_NAME_MAX_CHARS, STRING_MAX_BYTES,
};
use crate::klaviyo::{Event, ProfileIdentity};
use crate::{Error, ORIGIN_FIELD, ORIGIN_MARKER, Result};

/// The mapping shipped as the default when `CUSTOM_EVENTS_MAPPING` is not set lives in the
/// function crate; this is where the event type is looked for when a file does not say.
pub const DEFAULT_TYPE_PATH: &str = "$.event";
/// Events in one request: what one Klaviyo bulk job takes.
pub const MAX_EVENTS_PER_REQUEST: usize = BULK_EVENTS_MAX;
/// The only mapping file version so far.
pub const MAPPING_VERSION: u64 = 1;

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A parsed path into a JSON value (see the module docs for the syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segments: Vec<Segment>,
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    /// An absolute path into the event: `$`, `$.member.id`, `$.items[0].sku`, `$["a b"]`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| format!("{text:?} must start with '$' (e.g. \"$.member.id\")"))?;
        let segments = parse_segments(rest, false).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(JsonPath {
            text: text.to_string(),
            segments,
        })
    }

    /// A path relative to the properties: `challenge.name`, `items[0]`, `["a.b"].c`.
    pub fn parse_relative(text: &str) -> std::result::Result<Self, String> {
        if text.starts_with('$') {
            return Err(format!(
                "{text:?}: a property path has no leading '$' (e.g. \"challenge.name\")"
            ));
        }
        let segments = parse_segments(text, true).map_err(|e| format!("{text:?}: {e}"))?;
        if segments.is_empty() {
            return Err("a property path may not be empty".to_string());
        }
        Ok(JsonPath {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path, if every step exists.
    pub fn resolve<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.segments.iter().try_fold(root, |v, s| match s {
            Segment::Key(k) => v.as_object()?.get(k),
            Segment::Index(i) => v.as_array()?.get(*i),
        })
    }

    /// Take the value at this path out of `root`.
    fn remove(&self, root: &mut Value) -> Option<Value> {
        let (last, parents) = self.segments.split_last()?;
        let mut v = root;
        for s in parents {
            v = match s {
                Segment::Key(k) => v.as_object_mut()?.get_mut(k)?,
                Segment::Index(i) => v.as_array_mut()?.get_mut(*i)?,
            };
        }
        match last {
            Segment::Key(k) => v.as_object_mut()?.remove(k),
            Segment::Index(i) => {
                let a = v.as_array_mut()?;
                (*i < a.len()).then(|| a.remove(*i))
            }
        }
    }

    fn last_key(&self) -> Option<&str> {
        match self.segments.last() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }
}

fn is_plain_key_char(c: char) -> bool {
    !matches!(c, '.' | '[' | ']' | '\'' | '"' | '$') && !c.is_whitespace()
}

fn parse_segments(input: &str, relative: bool) -> std::result::Result<Vec<Segment>, String> {
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    let mut segments = Vec::new();
    // A relative path starts with a bare key (or a bracket).
    let mut expect_bare_key = relative;
    while i < chars.len() {
        let c = chars[i];
        if expect_bare_key && c != '[' {
            let start = i;
            while i < chars.len() && is_plain_key_char(chars[i]) {
                i += 1;
            }
            if i == start {
                return Err(format!(
                    "unexpected {:?} at position {}",
                    chars[start], start
                ));
            }
            segments.push(Segment::Key(chars[start..i].iter().collect()));
            expect_bare_key = false;
            continue;
        }
        expect_bare_key = false;
        match c {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && is_plain_key_char(chars[i]) {
                    i += 1;
                }
                if i == start {
                    return Err(format!(
                        "empty key after '.' at position {start} (quote keys with dots or spaces: [\"a.b\"])"
                    ));
                }
                segments.push(Segment::Key(chars[start..i].iter().collect()));
            }
            '[' => {
                i += 1;
                match chars.get(i) {
                    Some(&q) if q == '"' || q == '\'' => {
                        i += 1;
                        let mut key = String::new();
                        loop {
                            match chars.get(i) {
                                None => return Err("unterminated quoted key".to_string()),
                                Some('\\') => {
                                    match chars.get(i + 1) {
                                        Some(&e) if e == q || e == '\\' => key.push(e),
                                        _ => {
                                            return Err(format!(
                                                "bad escape at position {i} (only \\{q} and \\\\)"
                                            ));
                                        }
                                    }
                                    i += 2;
                                }
                                Some(&ch) if ch == q => {
                                    i += 1;
                                    break;
                                }
                                Some(&ch) => {
                                    key.push(ch);
                                    i += 1;
                                }
                            }
                        }
                        if chars.get(i) != Some(&']') {
                            return Err(format!(
                                "expected ']' after the quoted key at position {i}"
                            ));
                        }
                        i += 1;
                        segments.push(Segment::Key(key));
                    }
                    _ => {
                        let start = i;
                        while i < chars.len() && chars[i].is_ascii_digit() {
                            i += 1;
                        }
                        if i == start || chars.get(i) != Some(&']') {
                            return Err(format!(
                                "expected an array index like [0] or a quoted key like [\"a b\"] at position {}",
                                start - 1
                            ));
                        }
                        let digits: String = chars[start..i].iter().collect();
                        let index = digits
                            .parse()
                            .map_err(|_| format!("index {digits} is too large"))?;
                        i += 1;
                        segments.push(Segment::Index(index));
                    }
                }
            }
            other => {
                return Err(format!(
                    "unexpected {other:?} at position {i} (expected '.' or '[')"
                ));
            }
        }
    }
    Ok(segments)
}

// ---------------------------------------------------------------------------------------
// The mapping file
// ---------------------------------------------------------------------------------------

/// Where to find each profile identifier. At least one is set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IdentityPaths {
    pub external_id: Option<JsonPath>,
    pub email: Option<JsonPath>,
    pub phone_number: Option<JsonPath>,
}

/// Which properties the event carries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PropertyRules {
    /// `None`: every top-level field of the event passes through. `Some`: only these,
    /// each under the last key of its path.
    pub include: Option<Vec<JsonPath>>,
    /// Property path -> new top-level name, applied after `include`.
    pub rename: Vec<(JsonPath, String)>,
    /// Property paths removed last.
    pub drop: Vec<JsonPath>,
}

/// How one event type becomes a Klaviyo event.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The event type (rules key), or `default`.
    pub name: String,
    pub metric: String,
    pub identity: IdentityPaths,
    /// `None`: the time the request was received.
    pub time: Option<JsonPath>,
    pub value: Option<JsonPath>,
    pub value_currency: Option<JsonPath>,
    /// `None`, or nothing at the path: SHA-256 of the canonical event object.
    pub unique_id: Option<JsonPath>,
    pub properties: PropertyRules,
}

/// What to do with an event whose type no rule names, when there is no default rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownType {
    /// 422: the sender learns its event is not mapped.
    Reject,
    /// 200 ignored: nothing is sent.
    Ignore,
}

/// A validated mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub type_path: JsonPath,
    pub rules: BTreeMap<String, Rule>,
    pub default: Option<Rule>,
    pub unknown_type: UnknownType,
}

struct Keys<'a> {
    obj: &'a Map<String, Value>,
    at: String,
}

impl<'a> Keys<'a> {
    fn new(value: &'a Value, at: &str) -> std::result::Result<Self, String> {
        let obj = value
            .as_object()
            .ok_or_else(|| format!("{at}: must be an object"))?;
        Ok(Keys {
            obj,
            at: at.to_string(),
        })
    }

    fn only(&self, allowed: &[&str]) -> std::result::Result<(), String> {
        for k in self.obj.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(format!(
                    "{}: unknown key {k:?} (expected one of: {})",
                    self.field(k),
                    allowed.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn field(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.at)
        }
    }

    /// A present, non-null value.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> std::result::Result<Option<&'a str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{}: must be a string", self.field(key))),
        }
    }

    fn path(&self, key: &str) -> std::result::Result<Option<JsonPath>, String> {
        self.string(key)?
            .map(|p| JsonPath::parse(p).map_err(|e| format!("{}: bad path {e}", self.field(key))))
            .transpose()
    }
}

impl Mapping {
    /// Parse and validate a mapping file. `source` names where it came from (the
    /// environment variable, or the built-in file) and is the `name` of the config error;
    /// the reason names the rule and field, e.g. `rules.streak_reached.identity.email`.
    pub fn from_json(text: &str, source: &str) -> Result<Mapping> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(source, format!("not JSON: {e}")))?;
        Self::from_value(&value).map_err(|reason| Error::config(source, reason))
    }

    fn from_value(value: &Value) -> std::result::Result<Mapping, String> {
        let top = Keys::new(value, "")?;
        top.only(&[
            "version",
            "description",
            "type_path",
            "rules",
            "default",
            "unknown_type",
        ])?;
        match top.get("version") {
            Some(v) if v.as_u64() == Some(MAPPING_VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "version: {v} is not supported (expected {MAPPING_VERSION})"
                ));
            }
            None => return Err(format!("version: is missing (expected {MAPPING_VERSION})")),
        }
        top.string("description")?;
        let type_path = top.path("type_path")?.unwrap_or(JsonPath {
            text: DEFAULT_TYPE_PATH.into(),
            segments: vec![Segment::Key("event".into())],
        });
        let mut rules = BTreeMap::new();
        if let Some(r) = top.get("rules") {
            let obj = r
                .as_object()
                .ok_or("rules: must be an object of event type -> rule")?;
            for (name, rule) in obj {
                if name.trim().is_empty() {
                    return Err("rules: an event type may not be blank".into());
                }
                rules.insert(
                    name.clone(),
                    Rule::from_value(name, rule, &format!("rules.{name}"))?,
                );
            }
        }
        let default = top
            .get("default")
            .map(|d| Rule::from_value("default", d, "default"))
            .transpose()?;
        let unknown_type = match top.string("unknown_type")? {
            None => UnknownType::Reject,
            Some(_) if default.is_some() => {
                return Err(
                    "unknown_type: has no effect when a default rule is given; remove one".into(),
                );
            }
            Some("reject") => UnknownType::Reject,
            Some("ignore") => UnknownType::Ignore,
            Some(other) => {
                return Err(format!(
                    "unknown_type: {other:?} is not \"reject\" or \"ignore\""
                ));
            }
        };
        if rules.is_empty() && default.is_none() {
            return Err("rules: the mapping has no rules and no default rule".into());
        }
        Ok(Mapping {
            type_path,
            rules,
            default,
            unknown_type,
        })
    }

    /// The rule for an event type: its own, else the default.
    pub fn rule_for(&self, event_type: &str) -> Option<&Rule> {
        self.rules.get(event_type).or(self.default.as_ref())
    }
}

impl Rule {
    fn from_value(name: &str, value: &Value, at: &str) -> std::result::Result<Rule, String> {
        let keys = Keys::new(value, at)?;
        keys.only(&[
            "description",
            "metric",
            "identity",
            "time",
            "value",
            "value_currency",
            "unique_id",
            "properties",
        ])?;
        keys.string("description")?;
        let metric = keys
            .string("metric")?
            .ok_or_else(|| format!("{}: is missing", keys.field("metric")))?;
        check_metric_name(metric).map_err(|e| format!("{}: {e}", keys.field("metric")))?;

        let id_at = keys.field("identity");
        let identity_value = keys.get("identity").ok_or_else(|| {
            format!("{id_at}: is missing (give at least one of external_id, email, phone_number as a path)")
        })?;
        let id_keys = Keys::new(identity_value, &id_at)?;
        id_keys.only(&["external_id", "email", "phone_number"])?;
        let identity = IdentityPaths {
            external_id: id_keys.path("external_id")?,
            email: id_keys.path("email")?,
            phone_number: id_keys.path("phone_number")?,
        };
        if identity.external_id.is_none()
            && identity.email.is_none()
            && identity.phone_number.is_none()
        {
            return Err(format!(
                "{id_at}: give at least one of external_id, email, phone_number as a path"
            ));
        }

        let properties = match keys.get("properties") {
            None => PropertyRules::default(),
            Some(p) => PropertyRules::from_value(p, &keys.field("properties"))?,
        };
        Ok(Rule {
            name: name.to_string(),
            metric: metric.to_string(),
            identity,
            time: keys.path("time")?,
            value: keys.path("value")?,
            value_currency: keys.path("value_currency")?,
            unique_id: keys.path("unique_id")?,
            properties,
        })
    }
}

impl PropertyRules {
    fn from_value(value: &Value, at: &str) -> std::result::Result<PropertyRules, String> {
        let keys = Keys::new(value, at)?;
        keys.only(&["include", "rename", "drop"])?;
        let list = |key: &str| -> std::result::Result<Option<Vec<&str>>, String> {
            match keys.get(key) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_str()
                            .ok_or_else(|| format!("{}[{i}]: must be a string", keys.field(key)))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(format!("{}: must be an array of paths", keys.field(key))),
            }
        };
        let include = list("include")?
            .map(|paths| {
                paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let field = format!("{}[{i}]", keys.field("include"));
                        let path = JsonPath::parse(p).map_err(|e| format!("{field}: bad path {e}"))?;
                        if path.last_key().is_none() {
                            return Err(format!(
                                "{field}: {p:?} must end in a key (it names the property); include its parent and rename"
                            ));
                        }
                        Ok(path)
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .transpose()?;
        let mut rename = Vec::new();
        if let Some(r) = keys.get("rename") {
            let obj = r
                .as_object()
                .ok_or_else(|| format!("{}: must be an object", keys.field("rename")))?;
            for (from, to) in obj {
                let field = format!("{}.{from}", keys.field("rename"));
                let path = JsonPath::parse_relative(from)
                    .map_err(|e| format!("{field}: bad property path {e}"))?;
                let to = to
                    .as_str()
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| {
                        format!("{field}: must be the new property name (a non-empty string)")
                    })?;
                rename.push((path, to.to_string()));
            }
        }
        let drop = list("drop")?
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                JsonPath::parse_relative(p)
                    .map_err(|e| format!("{}[{i}]: bad property path {e}", keys.field("drop")))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(PropertyRules {
            include,
            rename,
            drop,
        })
    }
}

fn check_metric_name(name: &str) -> std::result::Result<(), String> {
    if name.trim().is_empty() {
        return Err("the metric name may not be blank".into());
    }
    let chars = name.chars().count();
    if chars >= METRIC_NAME_MAX_CHARS {
        return Err(format!(
            "the metric name has {chars} characters; Klaviyo takes fewer than {METRIC_NAME_MAX_CHARS}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOrigin {
    /// Mapped by the rule for this event type (`default` for the default rule).
    Rule(String),
    /// The body already was a Klaviyo Create Event request.
    Klaviyo,
}

/// One event ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedEvent {
    /// Position in the request (0 for a single event).
    pub index: usize,
    pub origin: EventOrigin,
    pub identity: ProfileIdentity,
    pub event: Event,
}

/// An event of the request that is not sent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub index: usize,
    pub reason: String,
}

/// What a request turns into.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MappedRequest {
    pub events: Vec<MappedEvent>,
    /// Bridge-caused events, ignored types and repeats within the request.
    pub skipped: Vec<Skipped>,
    /// Things dropped on the way (profile attributes, an unusable phone number).
    pub warnings: Vec<String>,
}

/// One refused event: its position and the field at fault.
#[derive(Debug)]
pub struct InvalidEvent {
    pub index: usize,
    pub error: Error,
}

/// Why a request is refused. Nothing of a refused request is sent.
#[derive(Debug)]
pub enum Refusal {
    /// Not a JSON object, an array, or `{"events": [...]}` of objects (400).
    Malformed(Error),
    /// Well-formed, but events cannot be mapped or hold invalid values (422).
    Invalid(Vec<InvalidEvent>),
}

/// True when `value` (an object) carries the bridge's own origin marker.
pub fn caused_by_bridge(value: &Value) -> bool {
    value.get(ORIGIN_FIELD).and_then(Value::as_str) == Some(ORIGIN_MARKER)
}

/// The events of a body: an array, `{"events": [...]}`, or one event object.
/// Returns the items and whether the body was a batch.
pub fn split_events(body: &Value) -> Result<(Vec<&Value>, bool)> {
    let (items, batch): (Vec<&Value>, bool) = match body {
        Value::Array(items) => (items.iter().collect(), true),
        Value::Object(obj) => match obj.get("events") {
            Some(Value::Array(items)) => (items.iter().collect(), true),
            Some(_) => {
                return Err(Error::invalid(
                    "events",
                    "must be an array of event objects",
                ));
            }
            None => (vec![body], false),
        },
        _ => {
            return Err(Error::invalid(
                "body",
                "must be a JSON object, an array, or {\"events\": [...]}",
            ));
        }
    };
    if let Some(i) = items.iter().position(|v| !v.is_object()) {
        return Err(Error::invalid(
            format!("events[{i}]"),
            "must be a JSON object",
        ));
    }
    Ok((items, batch))
}

impl Mapping {
    /// Map a parsed request body. `now` is the receive time (the event time when a rule
    /// names no time path, and the reference for Klaviyo's "at most a year ahead").
    pub fn map_request(
        &self,
        body: &Value,
        now: DateTime<Utc>,
    ) -> std::result::Result<MappedRequest, Refusal> {
        let (items, batch) = split_events(body).map_err(Refusal::Malformed)?;
        let mut out = MappedRequest::default();
        if batch && caused_by_bridge(body) {
            out.skipped = (0..items.len())
                .map(|index| Skipped {
                    index,
                    reason: bridge_reason(),
                })
                .collect();
            return Ok(out);
        }
        if items.is_empty() {
            return Err(Refusal::Invalid(vec![InvalidEvent {
                index: 0,
                error: Error::invalid("events", "the request holds no events"),
            }]));
        }
        if items.len() > MAX_EVENTS_PER_REQUEST {
            return Err(Refusal::Invalid(vec![InvalidEvent {
                index: MAX_EVENTS_PER_REQUEST,
                error: Error::invalid(
                    "events",
                    format!(
                        "{} events; at most {MAX_EVENTS_PER_REQUEST} per request",
                        items.len()
                    ),
                ),
            }]));
        }
        let mut invalid = Vec::new();
        // (identifier, metric, unique_id) -> first index: Klaviyo fails a whole bulk job on a
        // repeat. Keyed by each identifier, as the bulk builder does.
        let mut seen: HashMap<(u8, String, String, String), usize> = HashMap::new();
        for (index, item) in items.into_iter().enumerate() {
            let label = if batch {
                format!("events[{index}]")
            } else {
                "event".to_string()
            };
            match self.map_item(item, index, now, &label, &mut out.warnings) {
                Ok(ItemOutcome::Send(mapped)) => {
                    let keys = repeat_keys(&mapped);
                    if let Some(first) = keys.iter().find_map(|k| seen.get(k)) {
                        out.skipped.push(Skipped {
                            index,
                            reason: format!(
                                "repeats unique_id {:?} of events[{first}] for the same profile and metric",
                                mapped.event.unique_id
                            ),
                        });
                    } else {
                        for k in keys {
                            seen.insert(k, index);
                        }
                        out.events.push(*mapped);
                    }
                }
                Ok(ItemOutcome::Skip(reason)) => out.skipped.push(Skipped { index, reason }),
                Err(error) => invalid.push(InvalidEvent { index, error }),
            }
        }
        if invalid.is_empty() {
            Ok(out)
        } else {
            Err(Refusal::Invalid(invalid))
        }
    }

    fn map_item(
        &self,
        item: &Value,
        index: usize,
        now: DateTime<Utc>,
        label: &str,
        warnings: &mut Vec<String>,
    ) -> Result<ItemOutcome> {
        if caused_by_bridge(item) {
            return Ok(ItemOutcome::Skip(bridge_reason()));
        }
        if is_klaviyo_event_body(item) {
            return klaviyo_body(item, index, now, label, warnings);
        }
        let event_type = match self.type_path.resolve(item) {
            Some(Value::String(t)) if !t.trim().is_empty() => Some(t.as_str()),
            None | Some(Value::Null) => None,
            Some(Value::String(_)) => None,
            Some(_) => {
                return Err(Error::invalid(
                    self.type_path.as_str(),
                    "the event type must be a string",
                ));
            }
        };
        let rule = match event_type {
            Some(t) => self.rule_for(t),
            None => self.default.as_ref(),
        };
        let Some(rule) = rule else {
            let what = match event_type {
                Some(t) => format!("event type {t:?} has no rule in the mapping"),
                None => format!(
                    "no event type at {} and the mapping has no default rule",
                    self.type_path
                ),
            };
            return match self.unknown_type {
                UnknownType::Ignore => Ok(ItemOutcome::Skip(format!(
                    "{what}; unknown types are ignored"
                ))),
                UnknownType::Reject => {
                    let known: Vec<&str> = self.rules.keys().map(String::as_str).collect();
                    Err(Error::invalid(
                        self.type_path.as_str(),
                        format!("{what} (mapped types: {})", known.join(", ")),
                    ))
                }
            };
        };
        let mapped = rule.apply(item, index, now, label, warnings)?;
        // The marker may sit deeper in the body and reach the properties through a rename.
        if caused_by_bridge(&Value::Object(mapped.event.properties.clone())) {
            return Ok(ItemOutcome::Skip(bridge_reason()));
        }
        Ok(ItemOutcome::Send(Box::new(mapped)))
    }
}

fn repeat_keys(m: &MappedEvent) -> Vec<(u8, String, String, String)> {
    [
        (0u8, &m.identity.external_id),
        (1, &m.identity.email),
        (2, &m.identity.phone_number),
    ]
    .into_iter()
    .filter_map(|(kind, v)| {
        v.as_ref().map(|v| {
            (
                kind,
                v.clone(),
                m.event.metric_name.clone(),
                m.event.unique_id.clone(),
            )
        })
    })
    .collect()
}

enum ItemOutcome {
    Send(Box<MappedEvent>),
    Skip(String),
}

fn bridge_reason() -> String {
    format!("caused by the bridge itself ({ORIGIN_FIELD} = {ORIGIN_MARKER:?}); not sent back")
}

impl Rule {
    /// Map one event object by this rule.
    pub fn apply(
        &self,
        item: &Value,
        index: usize,
        now: DateTime<Utc>,
        label: &str,
        warnings: &mut Vec<String>,
    ) -> Result<MappedEvent> {
        let text_at = |path: &Option<JsonPath>, allow_number: bool| -> Result<Option<String>> {
            let Some(path) = path else { return Ok(None) };
            identifier_text(path.resolve(item), allow_number)
                .map_err(|m| Error::invalid(path.as_str(), m))
        };
        let external_id = text_at(&self.identity.external_id, true)?;
        let email = text_at(&self.identity.email, false)?;
        if let (Some(e), Some(path)) = (&email, &self.identity.email)
            && !looks_like_email(e)
        {
            return Err(Error::invalid(
                path.as_str(),
                format!("{e:?} is not an email address"),
            ));
        }
        let mut phone_number = text_at(&self.identity.phone_number, true)?;
        if let (Some(raw), Some(path)) = (phone_number.clone(), &self.identity.phone_number) {
            phone_number = e164(&raw);
            if phone_number.is_none() {
                warnings.push(format!(
                    "{label}: phone number at {path} is not E.164 (+ and 8 to 15 digits); not sent"
                ));
                if external_id.is_none() && email.is_none() {
                    return Err(Error::invalid(
                        path.as_str(),
                        "is not an E.164 phone number (e.g. +4915112345678) and no other identifier has a value",
                    ));
                }
            }
        }
        let identity = ProfileIdentity {
            external_id,
            email,
            phone_number,
        };
        if identity.is_empty() {
            let paths: Vec<String> = [
                ("external_id", &self.identity.external_id),
                ("email", &self.identity.email),
                ("phone_number", &self.identity.phone_number),
            ]
            .iter()
            .filter_map(|(n, p)| p.as_ref().map(|p| format!("{n} ({p})")))
            .collect();
            return Err(Error::invalid(
                "identity",
                format!("no identifier has a value: {}", paths.join(", ")),
            ));
        }

        let time = match &self.time {
            None => now,
            Some(path) => match path.resolve(item) {
                None | Some(Value::Null) => {
                    return Err(Error::invalid(path.as_str(), "is missing (the event time)"));
                }
                Some(v) => parse_time(v, now).map_err(|m| Error::invalid(path.as_str(), m))?,
            },
        };
        let value = match &self.value {
            None => None,
            Some(path) => {
                parse_number(path.resolve(item)).map_err(|m| Error::invalid(path.as_str(), m))?
            }
        };
        let value_currency = match &self.value_currency {
            None => None,
            Some(path) => {
                parse_currency(path.resolve(item)).map_err(|m| Error::invalid(path.as_str(), m))?
            }
        };
        let unique_id = match &self.unique_id {
            None => None,
            Some(path) => identifier_text(path.resolve(item), true)
                .map_err(|m| Error::invalid(path.as_str(), m))?,
        }
        .unwrap_or_else(|| body_hash(item));

        let properties = self.properties.build(item);
        check_properties(&properties)?;
        Ok(MappedEvent {
            index,
            origin: EventOrigin::Rule(self.name.clone()),
            identity,
            event: Event {
                metric_name: self.metric.clone(),
                properties,
                time,
                value,
                value_currency,
                unique_id,
                backfill: false,
            },
        })
    }
}

impl PropertyRules {
    /// The event properties of `item`: included (or all) fields, renamed, dropped.
    pub fn build(&self, item: &Value) -> Map<String, Value> {
        let mut props = Value::Object(match &self.include {
            None => item.as_object().cloned().unwrap_or_default(),
            Some(paths) => paths
                .iter()
                .filter_map(|p| Some((p.last_key()?.to_string(), p.resolve(item)?.clone())))
                .collect(),
        });
        for (from, to) in &self.rename {
            if let Some(v) = from.remove(&mut props)
                && let Some(obj) = props.as_object_mut()
            {
                obj.insert(to.clone(), v);
            }
        }
        for path in &self.drop {
            path.remove(&mut props);
        }
        match props {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A body that already is a Klaviyo Create Event request
// ---------------------------------------------------------------------------------------

/// `{"data": {"type": "event", ...}}`, or a `data` object holding a metric.
pub fn is_klaviyo_event_body(value: &Value) -> bool {
    let Some(data) = value.get("data").and_then(Value::as_object) else {
        return false;
    };
    data.get("type").and_then(Value::as_str) == Some("event")
        || data
            .get("attributes")
            .and_then(|a| a.get("metric"))
            .is_some()
}

fn klaviyo_body(
    item: &Value,
    index: usize,
    now: DateTime<Utc>,
    label: &str,
    warnings: &mut Vec<String>,
) -> Result<ItemOutcome> {
    let data = &item["data"];
    if data.get("type").and_then(Value::as_str) != Some("event") {
        return Err(Error::invalid(
            "data.type",
            "must be \"event\" (a Klaviyo Create Event request)",
        ));
    }
    let attributes = data
        .get("attributes")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::invalid("data.attributes", "must be an object"))?;
    const KNOWN: [&str; 8] = [
        "properties",
        "time",
        "value",
        "value_currency",
        "unique_id",
        "metric",
        "profile",
        "backfill",
    ];
    let unknown: Vec<&str> = attributes
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN.contains(k))
        .collect();
    if !unknown.is_empty() {
        warnings.push(format!(
            "{label}: data.attributes keys not forwarded: {}",
            unknown.join(", ")
        ));
    }

    let metric = attributes
        .get("metric")
        .and_then(|m| m.get("data"))
        .ok_or_else(|| {
            Error::invalid(
                "data.attributes.metric",
                "is missing (metric.data.attributes.name)",
            )
        })?;
    if metric.get("type").and_then(Value::as_str) != Some("metric") {
        return Err(Error::invalid(
            "data.attributes.metric.data.type",
            "must be \"metric\"",
        ));
    }
    let metric_name = metric
        .get("attributes")
        .and_then(|a| a.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::invalid("data.attributes.metric.data.attributes.name", "is missing")
        })?;
    check_metric_name(metric_name)
        .map_err(|m| Error::invalid("data.attributes.metric.data.attributes.name", m))?;
    unrendered(metric_name)
        .map_err(|m| Error::invalid("data.attributes.metric.data.attributes.name", m))?;

    let profile = attributes
        .get("profile")
        .and_then(|p| p.get("data"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Error::invalid(
                "data.attributes.profile",
                "is missing (profile.data.attributes)",
            )
        })?;
    if profile.get("type").and_then(Value::as_str) != Some("profile") {
        return Err(Error::invalid(
            "data.attributes.profile.data.type",
            "must be \"profile\"",
        ));
    }
    let empty = Map::new();
    let profile_attrs = match profile.get("attributes") {
        None => &empty,
        Some(Value::Object(a)) => a,
        Some(_) => {
            return Err(Error::invalid(
                "data.attributes.profile.data.attributes",
                "must be an object",
            ));
        }
    };
    let ident = |key: &str, allow_number: bool| {
        identifier_text(profile_attrs.get(key), allow_number).map_err(|m| {
            Error::invalid(format!("data.attributes.profile.data.attributes.{key}"), m)
        })
    };
    let email = ident("email", false)?;
    if let Some(e) = &email
        && !looks_like_email(e)
    {
        return Err(Error::invalid(
            "data.attributes.profile.data.attributes.email",
            format!("{e:?} is not an email address"),
        ));
    }
    let external_id = ident("external_id", true)?;
    let phone_number = match ident("phone_number", true)? {
        None => None,
        Some(raw) => match e164(&raw) {
            Some(p) => Some(p),
            None => {
                warnings.push(format!(
                    "{label}: profile phone_number is not E.164; not sent"
                ));
                None
            }
        },
    };
    let identity = ProfileIdentity {
        external_id,
        email,
        phone_number,
    };
    if identity.is_empty() {
        return Err(Error::invalid(
            "data.attributes.profile.data.attributes",
            "needs email, phone_number (E.164) or external_id to identify the profile",
        ));
    }
    let mut dropped: Vec<String> = profile_attrs
        .keys()
        .filter(|k| !matches!(k.as_str(), "email" | "phone_number" | "external_id"))
        .cloned()
        .collect();
    for k in ["id", "meta", "relationships"] {
        if profile.contains_key(k) {
            dropped.push(format!("data.{k}"));
        }
    }
    if !dropped.is_empty() {
        warnings.push(format!(
            "{label}: profiles are only identified, not updated; dropped profile attributes: {}",
            dropped.join(", ")
        ));
    }

    let properties = match attributes.get("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => {
            return Err(Error::invalid(
                "data.attributes.properties",
                "must be an object",
            ));
        }
    };
    if caused_by_bridge(&Value::Object(properties.clone())) {
        return Ok(ItemOutcome::Skip(bridge_reason()));
    }
    check_properties(&properties)?;
    let time = match attributes.get("time") {
        None | Some(Value::Null) => now,
        Some(v) => parse_time(v, now).map_err(|m| Error::invalid("data.attributes.time", m))?,
    };
    let value = parse_number(attributes.get("value"))
        .map_err(|m| Error::invalid("data.attributes.value", m))?;
    let value_currency = parse_currency(attributes.get("value_currency"))
        .map_err(|m| Error::invalid("data.attributes.value_currency", m))?;
    let unique_id = identifier_text(attributes.get("unique_id"), true)
        .map_err(|m| Error::invalid("data.attributes.unique_id", m))?
        .unwrap_or_else(|| body_hash(item));
    let backfill = match attributes.get("backfill") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Error::invalid(
                "data.attributes.backfill",
                "must be true or false",
            ));
        }
    };
    Ok(ItemOutcome::Send(Box::new(MappedEvent {
        index,
        origin: EventOrigin::Klaviyo,
        identity,
        event: Event {
            metric_name: metric_name.to_string(),
            properties,
            time,
            value,
            value_currency,
            unique_id,
            backfill,
        },
    })))
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

/// A template variable TRIFFT did not fill in stays as `{{ ... }}` in the body.
fn unrendered(s: &str) -> std::result::Result<(), String> {
    if s.contains("{{") || s.contains("{%") {
        return Err(format!(
            "{s:?} still holds a template placeholder: the TRIFFT template variable did not render"
        ));
    }
    Ok(())
}

/// An identifier or id: a non-empty string (or an integer when `allow_number`).
/// Missing, null and empty all mean "no value".
fn identifier_text(
    value: Option<&Value>,
    allow_number: bool,
) -> std::result::Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            unrendered(s)?;
            if s.len() > STRING_MAX_BYTES {
                return Err(format!("is longer than {STRING_MAX_BYTES} bytes"));
            }
            Ok(Some(s.to_string()))
        }
        Some(Value::Number(n)) if allow_number && (n.is_u64() || n.is_i64()) => {
            Ok(Some(n.to_string()))
        }
        Some(other) => Err(format!(
            "must be a string{}, not {}",
            if allow_number { " or an integer" } else { "" },
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(char::is_whitespace)
                && !domain.contains('@')
        }
        None => false,
    }
}

/// E.164: `+`, then 8 to 15 digits, the first not 0. Spaces, dashes, dots and brackets
/// that people type are removed first.
fn e164(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = cleaned.strip_prefix('+')?;
    let ok = (8..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0');
    ok.then_some(cleaned)
}

/// RFC 3339, or Unix seconds (a number or a numeric string, as TRIFFT's `| date('U')`
/// renders it). Klaviyo takes times after 1990 and at most a year ahead.
pub fn parse_time(value: &Value, now: DateTime<Utc>) -> std::result::Result<DateTime<Utc>, String> {
    let from_seconds = |secs: f64| -> std::result::Result<DateTime<Utc>, String> {
        if !secs.is_finite() {
            return Err("is not a time".into());
        }
        Utc.timestamp_opt(secs.trunc() as i64, 0)
            .single()
            .ok_or_else(|| format!("{secs} is out of range for Unix seconds"))
    };
    let time = match value {
        Value::Number(n) => from_seconds(n.as_f64().unwrap_or(f64::NAN))?,
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Err(
                    "is empty (expected RFC 3339, e.g. 2026-07-20T10:15:00Z, or Unix seconds)"
                        .into(),
                );
            }
            unrendered(s)?;
            if s.chars().all(|c| c.is_ascii_digit() || c == '.') {
                from_seconds(
                    s.parse::<f64>()
                        .map_err(|_| format!("{s:?} is not a number of Unix seconds"))?,
                )?
            } else {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        format!(
                            "{s:?} is not RFC 3339 (e.g. 2026-07-20T10:15:00Z) or Unix seconds: {e}"
                        )
                    })?
            }
        }
        other => {
            return Err(format!(
                "must be an RFC 3339 string or Unix seconds, not {}",
                kind(other)
            ));
        }
    };
    let earliest = Utc
        .with_ymd_and_hms(1990, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH);
    if time <= earliest {
        return Err(format!(
            "{} is not after 1990; Klaviyo refuses it",
            time.to_rfc3339()
        ));
    }
    if time > now + ChronoDuration::days(365) {
        return Err(format!(
            "{} is more than a year ahead; Klaviyo refuses it (Unix milliseconds? send seconds, e.g. | date('U'))",
            time.to_rfc3339()
        ));
    }
    Ok(time)
}

/// A number, or a numeric string (templates render numbers as text). Missing, null and
/// empty mean no value.
pub fn parse_number(value: Option<&Value>) -> std::result::Result<Option<f64>, String> {
    let n = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64().ok_or("is not a finite number")?,
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            unrendered(s)?;
            s.parse::<f64>()
                .map_err(|_| format!("{s:?} is not a number"))?
        }
        Some(other) => return Err(format!("must be a number, not {}", kind(other))),
    };
    if !n.is_finite() {
        return Err("is not a finite number".into());
    }
    Ok(Some(n))
}

/// An ISO 4217 code: three capital letters.
fn parse_currency(value: Option<&Value>) -> std::result::Result<Option<String>, String> {
    match identifier_text(value, false)? {
        None => Ok(None),
        Some(c) if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()) => Ok(Some(c)),
        Some(c) => Err(format!(
            "{c:?} is not an ISO 4217 currency code (three capital letters, e.g. EUR)"
        )),
    }
}

fn check_properties(properties: &Map<String, Value>) -> Result<()> {
    if properties.len() > EVENT_PROPERTIES_MAX {
        return Err(Error::invalid(
            "properties",
            format!(
                "{} properties; Klaviyo takes at most {EVENT_PROPERTIES_MAX}",
                properties.len()
            ),
        ));
    }
    fn long_string(v: &Value) -> bool {
        match v {
            Value::String(s) => s.len() > STRING_MAX_BYTES,
            Value::Array(a) => a.iter().any(long_string),
            Value::Object(o) => o.values().any(long_string),
            _ => false,
        }
    }
    if let Some((k, _)) = properties.iter().find(|(_, v)| long_string(v)) {
        return Err(Error::invalid(
            format!("properties.{k}"),
            format!("holds a string over {STRING_MAX_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Canonical JSON: object keys sorted, no whitespace, so the same content always hashes
/// the same whatever order the sender wrote it in.
pub fn canonical_json(value: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// The unique_id of an event that names none: hex SHA-256 of its canonical JSON, so a
/// re-delivered webhook gets the same id and Klaviyo drops the repeat.
pub fn body_hash(value: &Value) -> String {
    let digest = Sha256::digest(canonical_json(value).as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_parse_every_kind() {
        let body = json!({"a": {"b.c": [10, {"d e": "x"}]}, "k-1": true});
        let p = JsonPath::parse("$.a[\"b.c\"][1]['d e']").unwrap();
        assert_eq!(p.resolve(&body), Some(&json!("x")));
        assert_eq!(
            JsonPath::parse("$['k-1']").unwrap().resolve(&body),
            Some(&json!(true))
        );
        assert_eq!(
            JsonPath::parse("$.k-1").unwrap().resolve(&body),
            Some(&json!(true))
        );
        assert_eq!(JsonPath::parse("$").unwrap().resolve(&body), Some(&body));
        assert!(JsonPath::parse("a.b").is_err());
        assert!(JsonPath::parse("$.a.").is_err());
        assert!(JsonPath::parse("$.a[x]").is_err());
        assert!(JsonPath::parse("$.a[\"b").is_err());
        assert_eq!(
            JsonPath::parse_relative("a[\"b.c\"][0]")
                .unwrap()
                .resolve(&body),
            Some(&json!(10))
        );
    }

    #[test]
    fn canonical_json_sorts_keys() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": [true, {"z": null, "y": "é"}]})),
            r#"{"a":[true,{"y":"é","z":null}],"b":1}"#
        );
        assert_eq!(
            body_hash(&json!({"a": 1, "b": 2})),
            body_hash(&json!({"b": 2, "a": 1}))
        );
    }
}
