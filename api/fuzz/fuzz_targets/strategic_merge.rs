//! Input: a JSON object (a Deployment-shaped live object), a 0 byte, a strategic merge patch.
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
    for (v, k) in [("apps/v1", "Deployment"), ("v1", "Pod"), ("v1", "Service")] {
        if let Some(schema) = api::patch::strategic::builtin_schema(v, k) {
            let _ = api::patch::strategic::apply_bytes(&doc, patch, schema);
        }
    }
    let _ = api::patch::strategic::apply_bytes(&doc, patch, &api::patch::strategic::NoSchema);
});
