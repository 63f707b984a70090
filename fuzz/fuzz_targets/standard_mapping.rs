//! The TRIFFT payload mapping (loyalty_bridge::mapping::standard): any activity event
//! and any member that deserialize map to Klaviyo or to a MappingIssue, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loyalty_bridge::mapping::standard::{Options, event_to_klaviyo, member_to_profile};
use loyalty_bridge::trifft::{ActivityEvent, Member};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = serde_json::from_slice::<ActivityEvent>(data) {
        let _ = event_to_klaviyo(&event, &Options::default());
        let _ = event_to_klaviyo(
            &event,
            &Options {
                backfill: true,
                ..Default::default()
            },
        );
    }
    if let Ok(member) = serde_json::from_slice::<Member>(data) {
        let _ = member_to_profile(&member);
    }
});
