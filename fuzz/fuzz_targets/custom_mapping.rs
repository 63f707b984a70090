//! custom-events' declarative mapping (loyalty_bridge::mapping::custom::Mapping::map_request,
//! with the shipped example mapping) over any JSON: mapped, skipped or refused, never a panic.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use loyalty_bridge::mapping::custom::Mapping;
use std::sync::OnceLock;

fn mapping() -> &'static Mapping {
    static MAPPING: OnceLock<Mapping> = OnceLock::new();
    MAPPING.get_or_init(|| {
        Mapping::from_json(custom_events::EXAMPLE_MAPPING, "example").expect("the example mapping")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let now = Utc
        .timestamp_opt(1_784_542_500, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let _ = mapping().map_request(&body, now);
});
