//! The envelope decoder (the trust boundary for bytes read from disk) on arbitrary input: it
//! must never panic or read out of bounds, and whatever it accepts must re-decode to the same
//! key-value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = store::envelope::Envelope::decode(bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    let kv = env.key_value();
    let _ = (env.label("app"), env.field("spec.nodeName"), env.fields().count());
    let again = store::envelope::Envelope::decode(env.as_bytes().clone())
        .expect("an accepted envelope decodes again");
    assert_eq!(again.key_value(), kv);
});
