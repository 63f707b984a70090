//! Klaviyo's request and response shapes (JSON:API), built from plain domain structs.
//!
//! The domain side ([`ProfileIdentity`], [`Profile`], [`Event`]) is what mapping code
//! produces; the `*_body` functions turn it into the exact JSON the endpoints take
//! (`EventCreateQueryV2`, `EventsBulkCreateJob`, `ProfileUpsertQuery`,
//! `ProfileImportJobCreateQuery`), with no keys the spec does not declare.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The identifiers Klaviyo matches a profile on. At least one must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProfileIdentity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// E.164 only; mapping drops anything else.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
}

impl ProfileIdentity {
    pub fn is_empty(&self) -> bool {
        self.external_id.is_none() && self.email.is_none() && self.phone_number.is_none()
    }

    fn attributes(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(v) = &self.email {
            m.insert("email".into(), Value::String(v.clone()));
        }
        if let Some(v) = &self.phone_number {
            m.insert("phone_number".into(), Value::String(v.clone()));
        }
        if let Some(v) = &self.external_id {
            m.insert("external_id".into(), Value::String(v.clone()));
        }
        m
    }
}

/// A profile to upsert: identity, Klaviyo's own fields, and custom properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub identity: ProfileIdentity,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub locale: Option<String>,
    pub properties: Map<String, Value>,
}

/// One event for one profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub metric_name: String,
    pub properties: Map<String, Value>,
    pub time: DateTime<Utc>,
    pub value: Option<f64>,
    pub value_currency: Option<String>,
    /// Klaviyo drops a repeat of the same unique_id for the same profile and metric.
    pub unique_id: String,
    /// History import: recorded, but does not trigger flows.
    pub backfill: bool,
}

pub(crate) fn time_string(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn metric(name: &str) -> Value {
    json!({ "data": { "type": "metric", "attributes": { "name": name } } })
}

/// The `attributes` of an event, without the profile (the bulk entry shape).
pub(crate) fn event_attributes(event: &Event) -> Map<String, Value> {
    let mut a = Map::new();
    a.insert("properties".into(), Value::Object(event.properties.clone()));
    a.insert("time".into(), Value::String(time_string(&event.time)));
    if let Some(v) = event.value {
        a.insert("value".into(), json!(v));
    }
    if let Some(c) = &event.value_currency {
        a.insert("value_currency".into(), Value::String(c.clone()));
    }
    a.insert("unique_id".into(), Value::String(event.unique_id.clone()));
    if event.backfill {
        a.insert("backfill".into(), Value::Bool(true));
    }
    a.insert("metric".into(), metric(&event.metric_name));
    a
}

/// `POST /api/events` body (`EventCreateQueryV2`).
pub fn event_create_body(identity: &ProfileIdentity, event: &Event) -> Value {
    let mut attributes = event_attributes(event);
    attributes.insert(
        "profile".into(),
        json!({ "data": { "type": "profile", "attributes": identity.attributes() } }),
    );
    json!({ "data": { "type": "event", "attributes": attributes } })
}

/// One event of a bulk event job's entry (the entry names the profile).
pub(crate) fn event_resource(event: &Event) -> Value {
    json!({ "type": "event", "attributes": event_attributes(event) })
}

/// One entry of a bulk event job: a profile and its events (`EventsBulkCreateQueryResourceObject`).
pub fn event_bulk_entry(identity: &ProfileIdentity, events: &[&Event]) -> Value {
    event_bulk_entry_of(identity, events.iter().map(|e| event_resource(e)).collect())
}

/// [`event_bulk_entry`] around event resources given as values.
pub(crate) fn event_bulk_entry_of(identity: &ProfileIdentity, events: Vec<Value>) -> Value {
    json!({
        "type": "event-bulk-create",
        "attributes": {
            "profile": { "data": { "type": "profile", "attributes": identity.attributes() } },
            "events": { "data": events }
        }
    })
}

/// One profile of a bulk import or the `data` of a profile import
/// (`ProfileUpsertQueryResourceObject`).
pub fn profile_resource(profile: &Profile) -> Value {
    let mut a = profile.identity.attributes();
    if let Some(v) = &profile.first_name {
        a.insert("first_name".into(), Value::String(v.clone()));
    }
    if let Some(v) = &profile.last_name {
        a.insert("last_name".into(), Value::String(v.clone()));
    }
    if let Some(v) = &profile.locale {
        a.insert("locale".into(), Value::String(v.clone()));
    }
    if !profile.properties.is_empty() {
        a.insert(
            "properties".into(),
            Value::Object(profile.properties.clone()),
        );
    }
    json!({ "type": "profile", "attributes": a })
}

/// `POST /api/profile-import` body (`ProfileUpsertQuery`).
pub fn profile_import_body(profile: &Profile) -> Value {
    json!({ "data": profile_resource(profile) })
}

/// Status of a bulk profile import job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkImportJob {
    pub id: String,
    /// `queued`, `processing`, `complete` or `cancelled`.
    pub status: String,
    pub total_count: u64,
    pub completed_count: u64,
    pub failed_count: u64,
}

impl BulkImportJob {
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "complete" | "cancelled")
    }
}

/// One failed profile of a bulk import job (`ImportErrorResponseObjectResource`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportError {
    pub code: String,
    pub title: String,
    pub detail: String,
    pub pointer: Option<String>,
    pub original_payload: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            metric_name: "Wallet credited".into(),
            properties: Map::from_iter([("points".to_string(), json!(50))]),
            time: DateTime::parse_from_rfc3339("2026-07-20T10:15:00.250Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap(),
            value: None,
            value_currency: None,
            unique_id: "evt-1".into(),
            backfill: false,
        }
    }

    #[test]
    fn create_event_body_has_the_spec_shape() {
        let id = ProfileIdentity {
            external_id: Some("m-1".into()),
            ..Default::default()
        };
        let body = event_create_body(&id, &event());
        assert_eq!(body["data"]["type"], "event");
        assert_eq!(body["data"]["attributes"]["time"], "2026-07-20T10:15:00Z");
        assert_eq!(
            body["data"]["attributes"]["metric"]["data"]["attributes"]["name"],
            "Wallet credited"
        );
        assert_eq!(
            body["data"]["attributes"]["profile"]["data"]["attributes"]["external_id"],
            "m-1"
        );
        assert!(body["data"]["attributes"].get("backfill").is_none());
        assert!(body["data"]["attributes"].get("value").is_none());
    }
}
