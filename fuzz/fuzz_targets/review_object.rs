//! Arbitrary bytes as the object and oldObject of otherwise well-formed reviews of each kind and operation: the
//! decoder of the objects and the rules behind it. Always an answer with the uid, never a panic.
#![no_main]

use default_deny_guard::admission::{self, Webhook};
use default_deny_guard::rules::Settings;
use libfuzzer_sys::fuzz_target;

const KINDS: [(&str, &str, &str, Webhook); 3] = [
    ("networking.k8s.io", "NetworkPolicy", "networkpolicies", Webhook::Validate),
    ("", "Namespace", "namespaces", Webhook::Validate),
    ("", "Namespace", "namespaces", Webhook::Mutate),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // The object must be JSON for the envelope to be; anything else is the envelope's problem (target `review`).
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if serde_json::from_str::<serde_json::Value>(text).is_err() {
        return;
    }
    let (group, kind, resource, webhook) = KINDS[usize::from(selector) % KINDS.len()];
    let operation = ["CREATE", "UPDATE", "DELETE"][usize::from(selector / 3) % 3];
    let body = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u-1",
        "kind":{{"group":"{group}","version":"v1","kind":"{kind}"}},
        "resource":{{"group":"{group}","version":"v1","resource":"{resource}"}},
        "namespace":"production","operation":"{operation}","userInfo":{{"username":"admin"}},
        "object":{text},"oldObject":{text}}}}}"#
    );
    let reviewed = admission::review(&Settings::default(), &(), webhook, body.as_bytes(), jiff::Timestamp::UNIX_EPOCH)
        .expect("a well-formed review is always answered");
    assert_eq!(reviewed.uid, "u-1");
    let answer: serde_json::Value = serde_json::from_slice(&reviewed.body).unwrap();
    assert_eq!(answer["response"]["uid"], "u-1");
});
