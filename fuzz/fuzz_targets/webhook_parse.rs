//! klaviyo_webhook::parse_request over any bytes: an answer (Ok or a list of field
//! errors with a 4xx status), never a panic.
#![no_main]

use klaviyo_webhook::{WebhookSettings, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let settings = WebhookSettings::default();
    if let Err(invalid) = parse_request(data, &settings) {
        assert!(
            !invalid.errors.is_empty(),
            "a refusal names at least one error"
        );
        assert!((400..500).contains(&invalid.status()));
    }
});
