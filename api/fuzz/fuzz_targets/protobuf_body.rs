//! Any byte string: `decode_body` returns a value or a typed error, never panics or hangs.
//! Inputs are tried both as given and behind the `k8s\0` magic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = api::protobuf::decode_body(data);
    let mut body = api::protobuf::MAGIC.to_vec();
    body.extend_from_slice(data);
    if let Ok(v) = api::protobuf::decode_body(&body) {
        // What decodes is a JSON object with apiVersion and kind.
        assert!(v.get("apiVersion").is_some() && v.get("kind").is_some());
    }
});
