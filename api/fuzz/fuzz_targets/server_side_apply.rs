//! Input: a live object (JSON), a 0 byte, an apply body (JSON or YAML). Apply twice with two
//! managers, then record an update: errors are typed, nothing panics, and re-applying the same
//! configuration by the same manager is stable.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let (Some(live), Some(body)) = (parts.next(), parts.next()) else {
        return;
    };
    let live: Option<Value> = serde_json::from_slice(live).ok();
    let Ok(applied) = api::apply::parse_apply_body(body) else {
        return;
    };
    let schema = api::patch::strategic::builtin_schema("apps/v1", "Deployment").expect("known");
    let opts = |manager| api::apply::ApplyOptions {
        manager,
        force: false,
        api_version: "apps/v1",
        now: "2026-01-01T00:00:00Z",
        schema,
        subresource: None,
    };
    let Ok(once) = api::apply::apply(live.as_ref(), &applied, &opts("a")) else {
        return;
    };
    if let Ok(twice) = api::apply::apply(Some(&once), &applied, &opts("a")) {
        assert_eq!(once, twice, "re-applying is a no-op");
    }
    let _ = api::apply::apply(Some(&once), &applied, &opts("b"));
    let _ = api::apply::record_update(
        live.as_ref(),
        &once,
        &api::apply::UpdateOptions {
            manager: "u",
            api_version: "apps/v1",
            now: "2026-01-01T00:00:00Z",
            schema,
            subresource: None,
        },
    );
});
