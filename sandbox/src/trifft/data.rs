//! Seeded, deterministic TRIFFT data: venues, coupons, segments, members and activity.
//! Generated event payloads are rebuilt from a per-event seed when served, so 500k events
//! cost a few dozen bytes each.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use serde_json::{Map, Value, json};

use crate::ids;

pub(crate) const EVENT_TYPES: [&str; 15] = [
    "member_verified",
    "coupon_assigned",
    "coupon_activated",
    "coupon_redeemed",
    "transaction_created",
    "wallet_credited",
    "wallet_debited",
    "profile_updated",
    "app_opened",
    "favorite_venue_changed",
    "added_to_segment",
    "removed_from_segment",
    "language_changed",
    "referral_code_provided",
    "referral_invited",
];

/// Relative frequency of each event type, in the order of [`EVENT_TYPES`].
const EVENT_WEIGHTS: [u32; 15] = [3, 6, 5, 4, 30, 14, 6, 5, 12, 2, 4, 2, 2, 3, 2];

pub(crate) fn kind_index(kind: &str) -> Option<u8> {
    EVENT_TYPES.iter().position(|k| *k == kind).map(|i| i as u8)
}

const FIRST_NAMES: &[&str] = &[
    "Sarah", "Lucas", "Emma", "Noah", "Lea", "Paul", "Mia", "Hugo", "Chloe", "Louis", "Anna",
    "Felix", "Sofia", "Jonas", "Olivia", "Liam", "Zoe", "Max", "Ines", "Tom",
];
const LAST_NAMES: &[&str] = &[
    "Mason", "Martin", "Bernard", "Dubois", "Muller", "Schmidt", "Smith", "Jones", "Garcia",
    "Rossi", "Dupont", "Weber", "Fischer", "Taylor", "Brown", "Moreau", "Laurent", "Becker",
    "Wilson", "Lopez",
];
pub(crate) const LOCALES: &[&str] = &[
    "fr-FR", "en-GB", "de-DE", "en-US", "es-ES", "nl-NL", "it-IT",
];
const TIERS: &[&str] = &["Bronze", "Silver", "Gold", "Platinum"];

/// (country prefix, digits after it) for E.164 numbers.
const PHONE_PLANS: &[(&str, &str, usize)] = &[
    ("+33", "6", 8),
    ("+49", "15", 9),
    ("+44", "7", 9),
    ("+1", "415", 7),
    ("+34", "6", 8),
    ("+31", "6", 8),
];

const MENU: &[(&str, f64, &str)] = &[
    ("PINT - PARADISE IPA", 5.5, "1002722495"),
    ("HALF - FROG LAGER", 3.2, "1002722410"),
    ("FISH & CHIPS", 14.9, "2000100001"),
    ("BURGER ROSBIF", 13.5, "2000100002"),
    ("NACHOS", 8.0, "2000100003"),
    ("COLA", 3.0, "3000000001"),
    ("SUNDAY ROAST", 16.5, "2000100004"),
];

#[derive(Debug, Clone)]
pub(crate) struct Venue {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub currency: &'static str,
    pub street: &'static str,
    pub city: &'static str,
    pub postal_code: &'static str,
    pub country: &'static str,
    pub address_id: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Coupon {
    pub id: String,
    pub name: String,
    pub description: &'static str,
    pub kind: &'static str,
    pub points: Option<u32>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Everything members and events refer to.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    pub venues: Vec<Venue>,
    pub coupons: Vec<Coupon>,
    /// Segment slugs: general ones, then one `venue-<slug>` per venue.
    pub segments: Vec<String>,
}

impl Catalog {
    fn generate(rng: &mut fastrand::Rng, anchor: DateTime<Utc>) -> Self {
        let places: [(&str, &str, &str, &str, &str, &str); 8] = [
            (
                "The Frog & Rosbif, Toulouse",
                "the-frog-toulouse",
                "EUR",
                "14 Rue de la Pomme",
                "Toulouse",
                "France",
            ),
            (
                "The Frog & Rosbif, Paris",
                "the-frog-paris",
                "EUR",
                "116 Rue Saint-Denis",
                "Paris",
                "France",
            ),
            (
                "The Frog, Bordeaux",
                "the-frog-bordeaux",
                "EUR",
                "23 Rue Piliers de Tutelle",
                "Bordeaux",
                "France",
            ),
            (
                "The Frog & Princess, London",
                "the-frog-london",
                "GBP",
                "2 Camden High St",
                "London",
                "United Kingdom",
            ),
            (
                "The Frog, Berlin",
                "the-frog-berlin",
                "EUR",
                "Oranienstrasse 5",
                "Berlin",
                "Germany",
            ),
            (
                "The Frog, Zurich",
                "the-frog-zurich",
                "CHF",
                "Langstrasse 11",
                "Zurich",
                "Switzerland",
            ),
            (
                "The Frog, Madrid",
                "the-frog-madrid",
                "EUR",
                "Calle Mayor 9",
                "Madrid",
                "Spain",
            ),
            (
                "The Frog, New York",
                "the-frog-new-york",
                "USD",
                "71 Bowery",
                "New York",
                "United States",
            ),
        ];
        let postal = [
            "31000", "75002", "33000", "NW1 7JE", "10999", "8004", "28013", "10002",
        ];
        let venues = places
            .iter()
            .zip(postal)
            .map(
                |(&(name, slug, currency, street, city, country), postal_code)| Venue {
                    id: ids::uuid(rng),
                    name: name.into(),
                    slug: slug.into(),
                    currency,
                    street,
                    city,
                    postal_code,
                    country,
                    address_id: ids::uuid(rng),
                },
            )
            .collect::<Vec<_>>();
        let offers: [(&str, &str, &str, Option<u32>); 12] = [
            (
                "Welcome to Club Frog!",
                "Bienvenue au Club.",
                "GENERAL",
                None,
            ),
            ("Free Pint", "One pint on the house.", "GENERAL", Some(150)),
            (
                "Birthday Burger",
                "Happy birthday from the Frog.",
                "GENERAL",
                None,
            ),
            (
                "10% off food",
                "Ten percent off your food bill.",
                "GENERAL",
                Some(80),
            ),
            (
                "Happy Hour Extended",
                "Happy hour prices until 9pm.",
                "GENERAL",
                None,
            ),
            (
                "Free Nachos",
                "A sharing plate of nachos.",
                "GENERAL",
                Some(120),
            ),
            (
                "Gold Member Round",
                "A round for Gold members.",
                "GENERAL",
                Some(400),
            ),
            (
                "Quiz Night Entry",
                "Free entry to quiz night.",
                "GENERAL",
                None,
            ),
            (
                "Sunday Roast Deal",
                "Two roasts for the price of one.",
                "GENERAL",
                Some(250),
            ),
            (
                "Referral Thanks",
                "Thanks for bringing a friend.",
                "GENERAL",
                None,
            ),
            (
                "Comeback Coffee",
                "We missed you: a coffee on us.",
                "GENERAL",
                None,
            ),
            (
                "Platinum Tasting",
                "A beer tasting for Platinum members.",
                "GENERAL",
                Some(800),
            ),
        ];
        let coupons = offers
            .iter()
            .enumerate()
            .map(|(index, &(name, description, kind, points))| {
                let created_at = (anchor - ChronoDuration::days(400 + rng.i64(0..300))).timestamp();
                // The first coupon has the id the samples in events/ assign; the rng is
                // drawn all the same so the rest of the data set does not move.
                let generated_id = ids::uuid(rng);
                Coupon {
                    id: match index {
                        0 => SAMPLE_COUPON_ID.to_string(),
                        _ => generated_id,
                    },
                    name: name.into(),
                    description,
                    kind,
                    points,
                    created_at,
                    updated_at: created_at + rng.i64(0..20_000_000),
                }
            })
            .collect();
        let mut segments: Vec<String> = [
            "vip",
            "newsletter",
            "high-spenders",
            "app-users",
            "birthday-club",
            "lapsed",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        segments.extend(venues.iter().map(|v| format!("venue-{}", v.slug)));
        Catalog {
            venues,
            coupons,
            segments,
        }
    }

    pub(crate) fn coupon_json(&self, index: usize) -> Value {
        let c = &self.coupons[index];
        json!({
            "id": c.id,
            "name": c.name,
            "description": c.description,
            "image_logo": format!("https://cdn.trifft.io/files/coupon-{index}-logo.png"),
            "image_card": format!("https://cdn.trifft.io/files/coupon-{index}-card.png"),
            "type": c.kind,
            "points": c.points,
            "is_enabled": true,
            "is_pinned": index.is_multiple_of(3),
            "created_at": c.created_at,
            "updated_at": c.updated_at,
        })
    }

    pub(crate) fn venue_json(&self, index: usize) -> Value {
        let v = &self.venues[index];
        json!({
            "id": v.id,
            "name": v.name,
            "logo": format!("https://cdn.trifft.io/files/venue-{}.png", v.slug),
            "currency": v.currency,
            "verify_code": null,
            "address": {
                "id": v.address_id,
                "street": v.street,
                "city": v.city,
                "postal_code": v.postal_code,
                "country": v.country,
            },
        })
    }

    pub(crate) fn segment_index(&self, slug: &str) -> Option<u16> {
        self.segments
            .iter()
            .position(|s| s == slug)
            .map(|i| i as u16)
    }

    pub(crate) fn coupon_index(&self, id: &str) -> Option<u16> {
        self.coupons
            .iter()
            .position(|c| c.id == id)
            .map(|i| i as u16)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CouponStatus {
    Active,
    Activated,
    Redeemed,
}

impl CouponStatus {
    fn as_str(self) -> &'static str {
        match self {
            CouponStatus::Active => "ACTIVE",
            CouponStatus::Activated => "ACTIVATED",
            CouponStatus::Redeemed => "REDEEMED",
        }
    }
}

/// A member, kept compact: catalog entries by index.
#[derive(Debug, Clone)]
pub(crate) struct MemberRecord {
    pub id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: u8,
    pub points: i64,
    pub tier: u8,
    pub coupons: Vec<(u16, CouponStatus)>,
    pub fav_venue: Option<u16>,
    pub card: u32,
    pub segments: Vec<u16>,
    pub support_id: String,
    pub first_name: u8,
    pub last_name: u8,
    pub birth_date: NaiveDate,
    pub updated_at: DateTime<Utc>,
    /// Position in the members change feed (its latest change).
    pub seq: u64,
}

impl MemberRecord {
    pub(crate) fn to_json(&self, catalog: &Catalog) -> Value {
        let coupons: Vec<Value> = self
            .coupons
            .iter()
            .map(|&(i, status)| {
                let c = &catalog.coupons[i as usize];
                json!({"id": c.id, "name": c.name, "status": status.as_str()})
            })
            .collect();
        let available = self
            .coupons
            .iter()
            .filter(|(_, s)| *s == CouponStatus::Active)
            .count();
        let fav = self.fav_venue.map(|i| {
            let v = &catalog.venues[i as usize];
            json!({"id": v.id, "name": v.name})
        });
        json!({
            "id": self.id,
            "email": self.email,
            "phone": self.phone,
            "locale": LOCALES[self.locale as usize],
            "points": self.points,
            "tier": TIERS[self.tier as usize],
            "available_coupons": available,
            "coupons": coupons,
            "fav_location": fav,
            "primary_card_id": format!("CARD-{:06}", self.card),
            "segments": self.segments.iter().map(|&i| catalog.segments[i as usize].clone()).collect::<Vec<_>>(),
            "support_id": self.support_id,
            "params": {
                "first_name": FIRST_NAMES[self.first_name as usize],
                "last_name": LAST_NAMES[self.last_name as usize],
                "birth_date": self.birth_date.format("%Y-%m-%d").to_string(),
            },
            "updated_at": self.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }

    pub(crate) fn has_identifier(&self) -> bool {
        !self.id.is_empty()
    }
}

/// How an event's payload is produced when served.
#[derive(Debug, Clone)]
pub(crate) enum EventPayload {
    /// Rebuilt from this seed.
    Generated(u64),
    /// Given by the change that produced it.
    Given(Box<Map<String, Value>>),
}

#[derive(Debug, Clone)]
pub(crate) struct EventRecord {
    pub id: u128,
    pub kind: u8,
    pub member: u32,
    pub occurred_at: DateTime<Utc>,
    pub payload: EventPayload,
}

impl EventRecord {
    pub(crate) fn to_json(&self, members: &[MemberRecord], catalog: &Catalog) -> Value {
        let member = &members[self.member as usize];
        let payload = match &self.payload {
            EventPayload::Given(map) => Value::Object((**map).clone()),
            EventPayload::Generated(seed) => {
                generated_payload(*seed, self.kind, member, self.occurred_at, catalog)
            }
        };
        json!({
            "id": ids::format_uuid(self.id),
            "type": EVENT_TYPES[self.kind as usize],
            "member_id": member.id,
            "occurred_at": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "payload": payload,
        })
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A payload shaped like TRIFFT's documented samples (coupon object, transaction items
/// and venue with currency); undocumented types get plausible fields.
fn generated_payload(
    seed: u64,
    kind: u8,
    member: &MemberRecord,
    at: DateTime<Utc>,
    catalog: &Catalog,
) -> Value {
    let mut rng = fastrand::Rng::with_seed(seed);
    let coupon = rng.usize(..catalog.coupons.len());
    let venue = rng.usize(..catalog.venues.len());
    let segment = rng.usize(..catalog.segments.len());
    match EVENT_TYPES[kind as usize] {
        "member_verified" => json!({"id": member.id}),
        "coupon_assigned" | "coupon_activated" => json!({
            "id": catalog.coupons[coupon].id,
            "name": catalog.coupons[coupon].name,
            "coupon": catalog.coupon_json(coupon),
        }),
        "coupon_redeemed" => json!({
            "event": "onUserRedeemedCoupon",
            "timestamp": timestamp(at),
            "coupon": {"id": catalog.coupons[coupon].id, "name": catalog.coupons[coupon].name},
            "venue": {"id": catalog.venues[venue].id, "name": catalog.venues[venue].name},
        }),
        "transaction_created" => {
            let items: Vec<Value> = (0..rng.usize(1..=4))
                .map(|_| {
                    let (name, price, sku) = MENU[rng.usize(..MENU.len())];
                    json!({"name": name, "type": "S", "price": price, "qty": rng.u32(1..=3), "sku": sku, "points": null, "note": null})
                })
                .collect();
            json!({
                "id": ids::uuid(&mut rng),
                "transaction_id": format!("T-{}", rng.u64(1_000_000_000..10_000_000_000)),
                "type": "standard",
                "note": null,
                "items": items,
                "venue": catalog.venue_json(venue),
            })
        }
        kind @ ("wallet_credited" | "wallet_debited") => {
            let reason = [
                "Purchase at The Frog",
                "Birthday bonus",
                "Reward redeemed",
                "Manual adjustment",
            ][rng.usize(..4)];
            json!({
            "event": kind,
            "timestamp": timestamp(at),
            "member_id": member.id,
            "wallet_id": "LOYALTY_POINTS",
            "change": rng.i64(5..=200),
            "reason": reason,
            })
        }
        "profile_updated" => {
            let fields: &[&str] = [
                &["first_name"][..],
                &["email"],
                &["birth_date"],
                &["phone", "email"],
            ][rng.usize(..4)];
            json!({"fields": fields, "source": "app"})
        }
        "app_opened" => {
            let platform = ["ios", "android"][rng.usize(..2)];
            json!({"platform": platform, "app_version": format!("4.{}.{}", rng.u8(0..9), rng.u8(0..9))})
        }
        "favorite_venue_changed" => json!({
            "venue": {"id": catalog.venues[venue].id, "name": catalog.venues[venue].name},
            "previous_venue": member.fav_venue.map(|i| json!({"id": catalog.venues[i as usize].id, "name": catalog.venues[i as usize].name})),
        }),
        "added_to_segment" | "removed_from_segment" => json!({
            "segment": {"slug": catalog.segments[segment], "name": catalog.segments[segment].replace('-', " ")},
        }),
        "language_changed" => {
            let previous = LOCALES[rng.usize(..LOCALES.len())];
            json!({"locale": LOCALES[member.locale as usize], "previous_locale": previous})
        }
        "referral_code_provided" => json!({"referral_code": member.support_id}),
        _ => json!({
            "referral_code": member.support_id,
            "invitee_email": format!("friend{}@example.org", rng.u32(1..100_000)),
        }),
    }
}

fn tier_for(points: i64) -> u8 {
    match points {
        ..500 => 0,
        500..1500 => 1,
        1500..3000 => 2,
        _ => 3,
    }
}

fn phone_for(rng: &mut fastrand::Rng) -> Option<String> {
    let roll = rng.u32(0..100);
    let (prefix, lead, rest) = PHONE_PLANS[rng.usize(..PHONE_PLANS.len())];
    let digits: String = (0..rest)
        .map(|_| char::from(b'0' + rng.u8(0..10)))
        .collect();
    match roll {
        0..8 => None,
        // National formats that are not E.164: the bridge must not send them as phone_number.
        8..11 => Some(format!("0{lead}{digits}")),
        11..12 => Some(format!("{prefix} {lead}{} {}", &digits[..2], &digits[2..])),
        _ => Some(format!("{prefix}{lead}{digits}")),
    }
}

pub(crate) struct DataSet {
    pub catalog: Catalog,
    pub members: Vec<MemberRecord>,
    pub events: Vec<EventRecord>,
}

/// Members the samples in events/ name (`trifft_id`), so `sandbox demo` and `cargo lambda
/// invoke` against `sandbox serve` act on real members: the first members of every data set.
pub const SAMPLE_MEMBER_IDS: [&str; 2] = [
    "bf428af0-1c2d-4e5f-91b5-bda6e211aa00",
    "0c7d5e2a-9b41-4f3e-8a6d-2f1e0b9c4d77",
];
/// Indexes of general segments in the catalog (the order of its slug list).
const SEGMENT_VIP: u16 = 0;
const SEGMENT_NEWSLETTER: u16 = 1;
const SEGMENT_LAPSED: u16 = 5;
/// The coupon the samples assign: the first coupon of every data set.
pub const SAMPLE_COUPON_ID: &str = "fa89ef32-5d1c-4b7a-9e2f-3c4d5e6f7a8b";

/// Generate `members` members and `events` events, all before `anchor` and after
/// `anchor - 90 days`, sorted by time; members' feed positions follow their updated_at.
pub(crate) fn generate(seed: u64, members: usize, events: usize, anchor: DateTime<Utc>) -> DataSet {
    let mut rng = fastrand::Rng::with_seed(seed);
    let catalog = Catalog::generate(&mut rng, anchor);
    let window = 90 * 24 * 3600;
    let mut people: Vec<MemberRecord> = (0..members)
        .map(|i| {
            let first_name = rng.u8(..FIRST_NAMES.len() as u8);
            let last_name = rng.u8(..LAST_NAMES.len() as u8);
            let points = rng.i64(0..5000);
            let coupons = (0..rng.usize(0..=3))
                .map(|_| {
                    let status = [
                        CouponStatus::Active,
                        CouponStatus::Active,
                        CouponStatus::Activated,
                        CouponStatus::Redeemed,
                    ][rng.usize(..4)];
                    (rng.u16(..catalog.coupons.len() as u16), status)
                })
                .collect();
            let fav_venue = (rng.u8(0..10) != 0).then(|| rng.u16(..catalog.venues.len() as u16));
            let mut segments: Vec<u16> = (0..6u16).filter(|_| rng.u8(0..4) == 0).collect();
            // The sample members start as the samples expect: lapsed, not yet VIP (the samples
            // add them to `vip` and remove them from `lapsed`).
            if i < SAMPLE_MEMBER_IDS.len() {
                segments.retain(|&s| {
                    s != SEGMENT_VIP && s != SEGMENT_NEWSLETTER && s != SEGMENT_LAPSED
                });
                segments.push(SEGMENT_LAPSED);
            }
            if let Some(v) = fav_venue {
                segments.push(6 + v);
            }
            let email = (rng.u8(0..20) != 0).then(|| {
                format!(
                    "{}.{}{}@example.com",
                    FIRST_NAMES[first_name as usize].to_lowercase(),
                    LAST_NAMES[last_name as usize].to_lowercase(),
                    i
                )
            });
            let phone = phone_for(&mut rng);
            let alphabet = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
            let support: String = (0..4)
                .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                .collect();
            let birth_date =
                NaiveDate::from_ymd_opt(1950 + rng.i32(0..55), rng.u32(1..=12), rng.u32(1..=28))
                    .unwrap_or(NaiveDate::MIN);
            let generated_id = ids::uuid(&mut rng);
            let id = SAMPLE_MEMBER_IDS
                .get(i)
                .map_or(generated_id, |id| id.to_string());
            let updated_at = anchor - ChronoDuration::seconds(rng.i64(1..=window));
            let mut member = MemberRecord {
                id,
                email,
                phone,
                locale: rng.u8(..LOCALES.len() as u8),
                points,
                tier: tier_for(points),
                coupons,
                fav_venue,
                card: i as u32 + 1,
                segments,
                support_id: format!("FROG-{support}"),
                first_name,
                last_name,
                birth_date,
                updated_at,
                seq: 0,
            };
            // About 1 in 2,000 members can be reached by no identifier at all.
            if i % 2000 == 137 {
                member.id.clear();
                member.email = None;
                member.phone = None;
            }
            member
        })
        .collect();
    let reachable: Vec<u32> = (0..people.len() as u32)
        .filter(|&i| people[i as usize].has_identifier())
        .collect();
    let total_weight: u32 = EVENT_WEIGHTS.iter().sum();
    let mut activity: Vec<EventRecord> = if reachable.is_empty() {
        Vec::new()
    } else {
        (0..events)
            .map(|_| {
                let mut roll = rng.u32(..total_weight);
                let kind = EVENT_WEIGHTS
                    .iter()
                    .position(|&w| {
                        if roll < w {
                            true
                        } else {
                            roll -= w;
                            false
                        }
                    })
                    .unwrap_or(0) as u8;
                EventRecord {
                    id: rng.u128(..),
                    kind,
                    member: reachable[rng.usize(..reachable.len())],
                    occurred_at: anchor - ChronoDuration::seconds(rng.i64(1..=window)),
                    payload: EventPayload::Generated(rng.u64(..)),
                }
            })
            .collect()
    };
    activity.sort_by_key(|e| e.occurred_at);
    // A member's last change is at least its latest event.
    for event in &activity {
        let member = &mut people[event.member as usize];
        member.updated_at = member.updated_at.max(event.occurred_at);
    }
    let mut order: Vec<usize> = (0..people.len()).collect();
    order.sort_by_key(|&i| (people[i].updated_at, i));
    for (position, &i) in order.iter().enumerate() {
        people[i].seq = position as u64 + 1;
    }
    DataSet {
        catalog,
        members: people,
        events: activity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn anchor() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().unwrap()
    }

    #[test]
    fn same_seed_same_data() {
        let a = generate(5, 50, 200, anchor());
        let b = generate(5, 50, 200, anchor());
        let json = |d: &DataSet| -> Vec<Value> {
            d.events
                .iter()
                .map(|e| e.to_json(&d.members, &d.catalog))
                .collect()
        };
        assert_eq!(json(&a), json(&b));
        assert_ne!(json(&a), json(&generate(6, 50, 200, anchor())));
    }

    #[test]
    fn covers_every_type_and_attribute_within_90_days() {
        let data = generate(3, 2000, 3000, anchor());
        for kind in 0..15u8 {
            assert!(
                data.events.iter().any(|e| e.kind == kind),
                "{}",
                EVENT_TYPES[kind as usize]
            );
        }
        assert!(
            data.events
                .windows(2)
                .all(|w| w[0].occurred_at <= w[1].occurred_at)
        );
        assert!(data.events.iter().all(
            |e| e.occurred_at < anchor() && e.occurred_at > anchor() - ChronoDuration::days(90)
        ));
        assert_eq!(
            data.members.iter().filter(|m| !m.has_identifier()).count(),
            1
        );
        assert!(
            data.members
                .iter()
                .any(|m| m.phone.as_deref().is_some_and(|p| !p.starts_with('+')))
        );
        assert!(data.members.iter().any(|m| m.phone.is_none()));
        assert!(data.members.iter().any(|m| m.email.is_none()));
        let member = data.members[0].to_json(&data.catalog);
        for key in [
            "id",
            "email",
            "phone",
            "locale",
            "points",
            "tier",
            "available_coupons",
            "coupons",
            "fav_location",
            "primary_card_id",
            "segments",
            "support_id",
            "params",
            "updated_at",
        ] {
            assert!(member.get(key).is_some(), "{key}");
        }
    }
}
