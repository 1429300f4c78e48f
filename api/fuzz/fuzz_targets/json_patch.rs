//! Input: a JSON document, a 0 byte, a JSON patch (RFC 6902) or merge patch (RFC 7386).
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let (Some(doc), Some(patch)) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(doc) = serde_json::from_slice::<Value>(doc) else {
        return;
    };
    let before = doc.clone();
    let _ = api::patch::json_patch::apply_bytes(&doc, patch);
    if let Ok(merged) = api::patch::merge_patch::apply_bytes(&doc, patch) {
        // Merge patches are idempotent.
        let again = api::patch::merge_patch::apply_bytes(&merged, patch).expect("parsed once");
        assert_eq!(merged, again);
    }
    assert_eq!(doc, before, "inputs are never modified");
});
