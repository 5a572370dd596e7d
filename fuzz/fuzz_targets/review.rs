//! Arbitrary bytes as a request body, to both endpoints: an answer or a clear error, never a panic.
#![no_main]

use default_deny_guard::admission::{self, Webhook};
use default_deny_guard::rules::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let settings = Settings::default();
    let now = jiff::Timestamp::UNIX_EPOCH;
    for webhook in [Webhook::Validate, Webhook::Mutate] {
        if let Ok(reviewed) = admission::review(&settings, &(), webhook, body, now) {
            // Whatever came in, the answer is JSON that echoes the uid.
            let answer: serde_json::Value = serde_json::from_slice(&reviewed.body).unwrap();
            assert_eq!(answer["response"]["uid"], reviewed.uid.as_str());
        }
    }
});
