//! TRIFFT members and activity events to Klaviyo profiles and the 15 standard metrics (DESIGN §4).
//!
//! Pure functions: one [`ActivityEvent`] becomes one Klaviyo [`Event`] for the member's
//! `external_id`, one [`Member`] becomes one [`Profile`] with the 13 standard attributes.
//! Whatever Klaviyo would refuse is reported as a [`MappingIssue`] here, before anything is
//! sent: one bad event inside a bulk job would make Klaviyo refuse the whole job.

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::klaviyo::limits::{
    EVENT_PROPERTIES_MAX, METRIC_NAME_MAX_CHARS, PROFILE_MAX_BYTES, STRING_MAX_BYTES,
};
use crate::klaviyo::model::profile_resource;
use crate::klaviyo::{Event, Profile, ProfileIdentity};
use crate::trifft::{ActivityEvent, Member};

/// The 15 standard metrics: TRIFFT's snake_case activity type and the display name TRIFFT's
/// own integration gives the Klaviyo metric.
pub const STANDARD_METRICS: [(&str, &str); 15] = [
    ("member_verified", "Member verified"),
    ("coupon_assigned", "Coupon assigned"),
    ("coupon_activated", "Coupon activated"),
    ("coupon_redeemed", "Coupon redeemed"),
    ("transaction_created", "Transaction created"),
    ("wallet_credited", "Wallet credited"),
    ("wallet_debited", "Wallet debited"),
    ("profile_updated", "Profile updated"),
    ("app_opened", "App opened"),
    ("favorite_venue_changed", "Favorite venue changed"),
    ("added_to_segment", "Added to segment"),
    ("removed_from_segment", "Removed from segment"),
    ("language_changed", "Language changed"),
    ("referral_code_provided", "Referral code provided"),
    ("referral_invited", "Referral invited"),
];

/// The activity type whose events carry a monetary value.
pub const TRANSACTION_CREATED: &str = "transaction_created";

/// The Klaviyo metric name of a TRIFFT activity type, with the optional `METRIC_PREFIX`
/// (e.g. `"TRIFFT "`); `None` for a type that is not one of the 15.
pub fn metric_name(kind: &str, prefix: Option<&str>) -> Option<String> {
    let (_, name) = STANDARD_METRICS.iter().find(|(k, _)| *k == kind)?;
    Some(format!("{}{name}", prefix.unwrap_or("")))
}

/// How events are mapped in this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `METRIC_PREFIX`: put before every metric name.
    pub metric_prefix: Option<String>,
    /// Backfill mode: Klaviyo records the event but does not trigger flows.
    pub backfill: bool,
    /// Klaviyo refuses event times more than a year ahead; the sync sets this to now + 1 year.
    /// `None` skips that check (fixtures).
    pub latest_time: Option<DateTime<Utc>>,
}

/// Why an event or a member is not sent. Reported (counted and logged), never sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "issue", rename_all = "snake_case")]
pub enum MappingIssue {
    /// The activity type is not one of the 15 standard metrics.
    UnknownKind { event_id: String, kind: String },
    /// The event would be refused by Klaviyo; `field` names what is wrong.
    InvalidEvent {
        event_id: String,
        field: String,
        reason: String,
    },
    /// A member with no id, no email and no valid E.164 phone: Klaviyo cannot match it.
    NoIdentifier {
        updated_at: String,
        support_id: Option<String>,
    },
    /// The member's profile would be refused by Klaviyo; `field` names what is wrong.
    InvalidMember {
        member_id: String,
        field: String,
        reason: String,
    },
}

impl MappingIssue {
    /// A short label for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MappingIssue::UnknownKind { .. } => "unknown_kind",
            MappingIssue::InvalidEvent { .. } => "invalid_event",
            MappingIssue::NoIdentifier { .. } => "no_identifier",
            MappingIssue::InvalidMember { .. } => "invalid_member",
        }
    }
}

impl std::fmt::Display for MappingIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MappingIssue::UnknownKind { event_id, kind } => {
                write!(
                    f,
                    "event {event_id}: type {kind:?} is not one of the 15 standard metrics"
                )
            }
            MappingIssue::InvalidEvent {
                event_id,
                field,
                reason,
            } => write!(f, "event {event_id}: {field}: {reason}"),
            MappingIssue::NoIdentifier { updated_at, .. } => {
                write!(
                    f,
                    "member changed at {updated_at} has no id, no email and no valid E.164 phone"
                )
            }
            MappingIssue::InvalidMember {
                member_id,
                field,
                reason,
            } => write!(f, "member {member_id}: {field}: {reason}"),
        }
    }
}

/// One TRIFFT activity event as a Klaviyo event for the member's `external_id`.
pub fn event_to_klaviyo(
    event: &ActivityEvent,
    options: &Options,
) -> Result<(ProfileIdentity, Event), MappingIssue> {
    let invalid = |field: &str, reason: String| MappingIssue::InvalidEvent {
        event_id: event.id.clone(),
        field: field.to_string(),
        reason,
    };
    let metric = metric_name(&event.kind, options.metric_prefix.as_deref()).ok_or_else(|| {
        MappingIssue::UnknownKind {
            event_id: event.id.clone(),
            kind: event.kind.clone(),
        }
    })?;
    if metric.chars().count() >= METRIC_NAME_MAX_CHARS {
        return Err(invalid(
            "metric",
            format!("name must be shorter than {METRIC_NAME_MAX_CHARS} characters"),
        ));
    }
    let unique_id = event.id.trim();
    if unique_id.is_empty() {
        return Err(invalid(
            "id",
            "an event id is needed as Klaviyo unique_id".into(),
        ));
    }
    if unique_id.len() > STRING_MAX_BYTES {
        return Err(invalid("id", "longer than 100 KB".into()));
    }
    let member_id = event.member_id.trim();
    if member_id.is_empty() {
        return Err(invalid("member_id", "the event names no member".into()));
    }
    // Klaviyo takes times "after 1990"; read strictly, so no reading of it refuses ours.
    if event.occurred_at.year() <= 1990 {
        return Err(invalid(
            "occurred_at",
            "Klaviyo takes only event times after 1990".into(),
        ));
    }
    if let Some(latest) = options.latest_time
        && event.occurred_at > latest
    {
        return Err(invalid(
            "occurred_at",
            "Klaviyo takes event times at most one year ahead".into(),
        ));
    }
    if event.payload.len() > EVENT_PROPERTIES_MAX {
        return Err(invalid(
            "payload",
            format!(
                "{} properties, Klaviyo takes at most {EVENT_PROPERTIES_MAX}",
                event.payload.len()
            ),
        ));
    }
    if let Some(path) = oversized_string(&Value::Object(event.payload.clone()), "payload") {
        return Err(invalid(&path, "a string longer than 100 KB".into()));
    }
    let (value, value_currency) = if event.kind == TRANSACTION_CREATED {
        (
            transaction_value(&event.payload).map_err(|(field, reason)| invalid(&field, reason))?,
            venue_currency(&event.payload).map_err(|(field, reason)| invalid(&field, reason))?,
        )
    } else {
        (None, None)
    };
    let identity = ProfileIdentity {
        external_id: Some(member_id.to_string()),
        ..Default::default()
    };
    let mapped = Event {
        metric_name: metric,
        properties: event.payload.clone(),
        time: event.occurred_at,
        value,
        value_currency,
        unique_id: unique_id.to_string(),
        backfill: options.backfill,
    };
    Ok((identity, mapped))
}

/// The JSON path of the first string over Klaviyo's 100 KB limit, if any.
fn oversized_string(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) if s.len() > STRING_MAX_BYTES => Some(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| oversized_string(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.len() > STRING_MAX_BYTES {
                return Some(format!("{path}.<key>"));
            }
            oversized_string(v, &format!("{path}.{k}"))
        }),
        _ => None,
    }
}

type FieldError = (String, String);

/// `value` of a Transaction created: the sum of price x qty over `payload.items`, computed
/// in decimal (not binary floating point) and rounded half away from zero to cents.
/// No `items` array: no value.
fn transaction_value(payload: &Map<String, Value>) -> Result<Option<f64>, FieldError> {
    let Some(items) = payload.get("items") else {
        return Ok(None);
    };
    let Value::Array(items) = items else {
        return Err(("payload.items".into(), "must be an array of items".into()));
    };
    let mut total = Decimal::ZERO;
    for (i, item) in items.iter().enumerate() {
        let number = |name: &str| -> Result<Decimal, FieldError> {
            let field = format!("payload.items[{i}].{name}");
            match item.get(name) {
                Some(Value::Number(n)) => {
                    Decimal::parse(&n.to_string()).ok_or((field, "not a usable number".into()))
                }
                Some(_) => Err((field, "must be a number".into())),
                None => Err((field, "is missing".into())),
            }
        };
        let line = number("price")?
            .mul(number("qty")?)
            .ok_or((format!("payload.items[{i}]"), "amount out of range".into()))?;
        total = total
            .add(line)
            .ok_or(("payload.items".into(), "total out of range".into()))?;
    }
    let cents = total
        .round_to_cents()
        .ok_or(("payload.items".into(), "total out of range".into()))?;
    Ok(Some(cents as f64 / 100.0))
}

/// `value_currency` of a Transaction created: the venue's ISO 4217 currency code.
fn venue_currency(payload: &Map<String, Value>) -> Result<Option<String>, FieldError> {
    match payload.get("venue").and_then(|v| v.get("currency")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(code)) => {
            let code = code.trim();
            if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
                Ok(Some(code.to_ascii_uppercase()))
            } else {
                Err((
                    "payload.venue.currency".into(),
                    format!("{code:?} is not an ISO 4217 code"),
                ))
            }
        }
        Some(_) => Err(("payload.venue.currency".into(), "must be a string".into())),
    }
}

/// A decimal number `mantissa x 10^-scale`, exact for every JSON number TRIFFT sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    mantissa: i128,
    scale: u32,
}

impl Decimal {
    const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };
    const MAX_SCALE: u32 = 30;

    /// `12`, `-5.5`, `1e21`, `2.5E-7` (what serde_json prints).
    fn parse(text: &str) -> Option<Decimal> {
        let (number, exponent) = match text.find(['e', 'E']) {
            Some(at) => (&text[..at], text[at + 1..].parse::<i32>().ok()?),
            None => (text, 0),
        };
        let (negative, digits) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number),
        };
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        if int_part.is_empty()
            || !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut mantissa: i128 = 0;
        for b in int_part.bytes().chain(frac_part.bytes()) {
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(i128::from(b - b'0'))?;
        }
        let mut scale = frac_part.len() as i64 - i64::from(exponent);
        while scale < 0 {
            mantissa = mantissa.checked_mul(10)?;
            scale += 1;
        }
        if scale > i64::from(Self::MAX_SCALE) {
            return None;
        }
        Some(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale: scale as u32,
        })
    }

    fn rescale(self, scale: u32) -> Option<Decimal> {
        let factor = 10i128.checked_pow(scale.checked_sub(self.scale)?)?;
        Some(Decimal {
            mantissa: self.mantissa.checked_mul(factor)?,
            scale,
        })
    }

    fn add(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        let (a, b) = (self.rescale(scale)?, other.rescale(scale)?);
        Some(Decimal {
            mantissa: a.mantissa.checked_add(b.mantissa)?,
            scale,
        })
    }

    fn mul(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale + other.scale;
        if scale > 2 * Self::MAX_SCALE {
            return None;
        }
        Some(Decimal {
            mantissa: self.mantissa.checked_mul(other.mantissa)?,
            scale,
        })
    }

    /// Whole cents, rounded half away from zero.
    fn round_to_cents(self) -> Option<i64> {
        let cents = if self.scale <= 2 {
            self.rescale(2)?.mantissa
        } else {
            let divisor = 10i128.checked_pow(self.scale - 2)?;
            let (quotient, remainder) = (self.mantissa / divisor, self.mantissa % divisor);
            if remainder.abs() * 2 >= divisor {
                quotient + self.mantissa.signum()
            } else {
                quotient
            }
        };
        i64::try_from(cents).ok()
    }
}

/// True for an E.164 phone number: `+`, a first digit 1-9, then 6 to 14 more digits.
pub fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

fn non_blank(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A member as a Klaviyo profile with the 13 standard attributes: locale, external_id (the
/// member UUID), the `trifft_*` properties and the custom parameters (`first_name` and
/// `last_name` to Klaviyo's own fields, the rest as properties). Email and phone (only a
/// valid E.164 number) are identifiers too.
pub fn member_to_profile(member: &Member) -> Result<Profile, MappingIssue> {
    let member_id = non_blank(Some(&member.id));
    let identity = ProfileIdentity {
        external_id: member_id.clone(),
        email: non_blank(member.email.as_deref()),
        phone_number: non_blank(member.phone.as_deref()).filter(|p| is_e164(p)),
    };
    if identity.is_empty() {
        return Err(MappingIssue::NoIdentifier {
            updated_at: crate::klaviyo::model::time_string(&member.updated_at),
            support_id: non_blank(member.support_id.as_deref()),
        });
    }

    let mut profile = Profile {
        identity,
        locale: non_blank(member.locale.as_deref()),
        ..Default::default()
    };
    let mut properties = Map::new();
    // Custom parameters first, so a parameter can never overwrite a standard attribute.
    for (name, value) in &member.params {
        if name.trim().is_empty() || value.is_null() {
            continue;
        }
        let own_field = match name.as_str() {
            "first_name" => Some(&mut profile.first_name),
            "last_name" => Some(&mut profile.last_name),
            _ => None,
        };
        match (own_field, value) {
            (Some(field), Value::String(text)) => *field = non_blank(Some(text)),
            (Some(field), Value::Number(n)) => *field = Some(n.to_string()),
            _ => {
                properties.insert(name.clone(), value.clone());
            }
        }
    }
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            properties.insert(key.to_string(), v);
        }
    };
    put("trifft_id", member_id.clone().map(Value::String));
    put("trifft_points", member.points.clone().map(Value::Number));
    put(
        "trifft_tier",
        non_blank(member.tier.as_deref()).map(Value::String),
    );
    put(
        "trifft_available_coupons",
        member.available_coupons.map(Value::from),
    );
    // Lists are always sent, empty included, so a member who lost every coupon or segment
    // does not keep the old ones in Klaviyo.
    put("trifft_coupons", Some(Value::Array(member.coupons.clone())));
    put(
        "trifft_fav_location_id",
        member
            .fav_location
            .as_ref()
            .and_then(|v| non_blank(Some(&v.id)))
            .map(Value::String),
    );
    put(
        "trifft_fav_location_name",
        member
            .fav_location
            .as_ref()
            .and_then(|v| non_blank(Some(&v.name)))
            .map(Value::String),
    );
    put(
        "trifft_primary_card_id",
        non_blank(member.primary_card_id.as_deref()).map(Value::String),
    );
    put(
        "trifft_segments",
        Some(Value::Array(
            member
                .segments
                .iter()
                .map(|s| Value::String(s.clone()))
                .collect(),
        )),
    );
    put(
        "trifft_support_id",
        non_blank(member.support_id.as_deref()).map(Value::String),
    );
    profile.properties = properties;

    let member_label = || member_id.clone().unwrap_or_else(|| "(no id)".to_string());
    if let Some(path) = oversized_string(&Value::Object(profile.properties.clone()), "properties") {
        return Err(MappingIssue::InvalidMember {
            member_id: member_label(),
            field: path,
            reason: "a string longer than 100 KB".into(),
        });
    }
    let size = serde_json::to_vec(&profile_resource(&profile))
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > PROFILE_MAX_BYTES {
        return Err(MappingIssue::InvalidMember {
            member_id: member_label(),
            field: "profile".into(),
            reason: format!("{size} bytes, Klaviyo takes at most {PROFILE_MAX_BYTES} per profile"),
        });
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cents(text: &str) -> Option<i64> {
        Decimal::parse(text)?.round_to_cents()
    }

    #[test]
    fn decimals_parse_exactly_and_round_half_away_from_zero() {
        assert_eq!(cents("5.5"), Some(550));
        assert_eq!(cents("0.005"), Some(1));
        assert_eq!(cents("0.00499"), Some(0));
        assert_eq!(cents("-0.005"), Some(-1));
        assert_eq!(cents("1e2"), Some(10_000));
        assert_eq!(cents("2.5E-3"), Some(0));
        assert_eq!(cents("12"), Some(1200));
        assert_eq!(Decimal::parse("abc"), None);
        assert_eq!(Decimal::parse("1e-40"), None);
        let third = Decimal::parse("0.1").and_then(|d| d.mul(Decimal::parse("3").unwrap()));
        assert_eq!(third.and_then(Decimal::round_to_cents), Some(30));
    }

    #[test]
    fn e164_is_plus_then_7_to_15_digits_not_starting_with_0() {
        for good in ["+33612345678", "+1234567", "+123456789012345"] {
            assert!(is_e164(good), "{good}");
        }
        for bad in [
            "33612345678",
            "+0612345678",
            "+123456",
            "+1234567890123456",
            "+33 6 12 34 56 78",
            "+33-612345678",
            "",
            "+",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn every_standard_kind_has_a_name_and_others_none() {
        for (kind, name) in STANDARD_METRICS {
            assert_eq!(metric_name(kind, None).as_deref(), Some(name));
            assert_eq!(
                metric_name(kind, Some("TRIFFT ")),
                Some(format!("TRIFFT {name}"))
            );
        }
        assert_eq!(metric_name("challenge_completed", None), None);
        assert_eq!(metric_name("Member verified", None), None);
    }
}
