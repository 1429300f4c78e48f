use super::*;
use crate::patch::schema::builtin_schema;
use serde_json::json;

const T1: &str = "2026-01-01T00:00:00Z";
const T2: &str = "2026-01-01T00:01:00Z";

fn cm_schema() -> &'static dyn PatchSchema {
    builtin_schema("v1", "ConfigMap").unwrap()
}

fn opts<'a>(manager: &'a str, force: bool, schema: &'a dyn PatchSchema) -> ApplyOptions<'a> {
    ApplyOptions {
        manager,
        force,
        api_version: "v1",
        now: T1,
        schema,
        subresource: None,
    }
}

fn upd<'a>(manager: &'a str, schema: &'a dyn PatchSchema) -> UpdateOptions<'a> {
    UpdateOptions {
        manager,
        api_version: "v1",
        now: T2,
        schema,
        subresource: None,
    }
}

fn cm(data: Value) -> Value {
    json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"default"},"data":data})
}

fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
}

#[test]
fn apply_creates_with_managed_fields() {
    let out = apply(
        None,
        &cm(json!({"a":"1"})),
        &opts("kubectl", false, cm_schema()),
    )
    .unwrap();
    assert_eq!(out["data"], json!({"a":"1"}));
    assert_eq!(
        out["metadata"]["managedFields"],
        json!([{"manager":"kubectl","operation":"Apply","apiVersion":"v1","time":T1,
                "fieldsType":"FieldsV1","fieldsV1":{"f:data":{"f:a":{}}}}])
    );
}

#[test]
fn conflict_with_other_manager() {
    let created = record_update(
        None,
        &cm(json!({"a":"1"})),
        &upd("kubectl-create", cm_schema()),
    )
    .unwrap();
    assert_eq!(
        entry(&created, "kubectl-create").unwrap()["fieldsV1"],
        json!({"f:data":{"f:a":{}}})
    );
    let err = apply(
        Some(&created),
        &cm(json!({"a":"2"})),
        &opts("kubectl", false, cm_schema()),
    )
    .unwrap_err();
    assert_eq!(err.http_status(), 409);
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-create\" using v1: .data.a"
    );
}

#[test]
fn same_value_is_shared_and_force_takes_ownership() {
    let created = record_update(
        None,
        &cm(json!({"a":"1","b":"x"})),
        &upd("kubectl-create", cm_schema()),
    )
    .unwrap();
    // Same value: no conflict, both own .data.a.
    let shared = apply(
        Some(&created),
        &cm(json!({"a":"1"})),
        &opts("kubectl", false, cm_schema()),
    )
    .unwrap();
    assert_eq!(
        entry(&shared, "kubectl-create").unwrap()["fieldsV1"],
        json!({"f:data":{"f:a":{},"f:b":{}}})
    );
    assert_eq!(
        entry(&shared, "kubectl").unwrap()["fieldsV1"],
        json!({"f:data":{"f:a":{}}})
    );
    // Two different values: two conflicts, grouped by manager.
    let err = apply(
        Some(&shared),
        &cm(json!({"a":"2","b":"y"})),
        &opts("other", false, cm_schema()),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 3 conflicts: conflicts with \"kubectl-create\" using v1:\n- .data.a\n- .data.b\nconflict with \"kubectl\" using v1: .data.a"
    );
    // Force: the applier takes .data.a and .data.b from everyone.
    let forced = apply(
        Some(&shared),
        &cm(json!({"a":"2","b":"y"})),
        &opts("other", true, cm_schema()),
    )
    .unwrap();
    assert_eq!(forced["data"], json!({"a":"2","b":"y"}));
    assert!(entry(&forced, "kubectl-create").is_none(), "{forced}");
    assert!(entry(&forced, "kubectl").is_none());
    assert_eq!(
        entry(&forced, "other").unwrap()["fieldsV1"],
        json!({"f:data":{"f:a":{},"f:b":{}}})
    );
}

#[test]
fn omitted_fields_are_removed_unless_owned_elsewhere() {
    let s = cm_schema();
    let one = apply(
        None,
        &cm(json!({"a":"1","b":"2","c":"3"})),
        &opts("x", false, s),
    )
    .unwrap();
    // y applies c with the same value: shared ownership.
    let two = apply(Some(&one), &cm(json!({"c":"3"})), &opts("y", false, s)).unwrap();
    // x drops b and c: b goes, c stays because y owns it.
    let three = apply(Some(&two), &cm(json!({"a":"1"})), &opts("x", false, s)).unwrap();
    assert_eq!(three["data"], json!({"a":"1","c":"3"}));
    assert_eq!(
        entry(&three, "x").unwrap()["fieldsV1"],
        json!({"f:data":{"f:a":{}}})
    );
    // Fields nobody applied (set by an update) are left alone.
    let labelled = record_update(
        Some(&three),
        &{
            let mut v = three.clone();
            v["metadata"]["labels"] = json!({"k":"v"});
            v
        },
        &upd("kubectl-label", s),
    )
    .unwrap();
    let four = apply(Some(&labelled), &cm(json!({"a":"1"})), &opts("x", false, s)).unwrap();
    assert_eq!(four["metadata"]["labels"], json!({"k":"v"}));
}

fn deploy(containers: Value, replicas: i64) -> Value {
    json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
        "spec":{"replicas":replicas,"selector":{"matchLabels":{"app":"web"}},
            "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":containers}}}})
}

#[test]
fn keyed_lists_merge_and_drop_elements() {
    let s = builtin_schema("apps/v1", "Deployment").unwrap();
    let o = |m| ApplyOptions {
        manager: m,
        force: false,
        api_version: "apps/v1",
        now: T1,
        schema: s,
        subresource: None,
    };
    let two = json!([{"name":"a","image":"a:1"},{"name":"b","image":"b:1"}]);
    let first = apply(None, &deploy(two, 1), &o("kubectl")).unwrap();
    let f = &entry(&first, "kubectl").unwrap()["fieldsV1"];
    assert_eq!(
        f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"a\"}"],
        json!({".":{},"f:image":{},"f:name":{}})
    );
    // Another manager sets b's image with an update (kubectl set image).
    let mut changed = first.clone();
    changed["spec"]["template"]["spec"]["containers"][1]["image"] = json!("b:2");
    let set = record_update(
        Some(&first),
        &changed,
        &UpdateOptions {
            manager: "kubectl-set",
            api_version: "apps/v1",
            now: T2,
            schema: s,
            subresource: None,
        },
    )
    .unwrap();
    // Re-applying b:1 now conflicts with kubectl-set.
    let err = apply(
        Some(&set),
        &deploy(
            json!([{"name":"a","image":"a:1"},{"name":"b","image":"b:1"}]),
            1,
        ),
        &o("kubectl"),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-set\" using apps/v1: .spec.template.spec.containers[name=\"b\"].image"
    );
    // Dropping b from the config: b stays because kubectl-set owns b's image...
    let next = apply(
        Some(&set),
        &deploy(json!([{"name":"a","image":"a:2"}]), 3),
        &o("kubectl"),
    )
    .unwrap();
    let cs = next["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 2, "{next}");
    assert_eq!(cs[0]["image"], "a:2");
    assert_eq!(cs[1], json!({"name":"b","image":"b:2"}));
    assert_eq!(next["spec"]["replicas"], 3);
    // ...while an element nobody else touches is removed.
    let only_a = apply(
        Some(&first),
        &deploy(json!([{"name":"a","image":"a:1"}]), 1),
        &o("kubectl"),
    )
    .unwrap();
    assert_eq!(
        only_a["spec"]["template"]["spec"]["containers"],
        json!([{"name":"a","image":"a:1"}])
    );
}

#[test]
fn sets_use_value_elements() {
    let s = cm_schema();
    let mut obj = cm(json!({}));
    obj["metadata"]["finalizers"] = json!(["x/y"]);
    let out = apply(None, &obj, &opts("m", false, s)).unwrap();
    assert_eq!(
        entry(&out, "m").unwrap()["fieldsV1"],
        json!({"f:metadata":{"f:finalizers":{"v:\"x/y\"":{}}},"f:data":{}})
    );
    let mut other = cm(json!({}));
    other["metadata"]["finalizers"] = json!(["z"]);
    let out = apply(Some(&out), &other, &opts("n", false, s)).unwrap();
    assert_eq!(out["metadata"]["finalizers"], json!(["x/y", "z"]));
}

#[test]
fn update_tracking() {
    let s = cm_schema();
    let created = record_update(None, &cm(json!({"a":"1"})), &upd("kubectl-create", s)).unwrap();
    // No-op update: managedFields byte-identical.
    let same = record_update(Some(&created), &created, &upd("kubectl-edit", s)).unwrap();
    assert_eq!(same, created);
    // A PUT without managedFields keeps them.
    let mut put = cm(json!({"a":"1"}));
    put["metadata"]["labels"] = json!({"x":"y"});
    let after = record_update(Some(&created), &put, &upd("kubectl-replace", s)).unwrap();
    assert_eq!(
        entry(&after, "kubectl-create").unwrap()["fieldsV1"],
        json!({"f:data":{"f:a":{}}})
    );
    assert_eq!(
        entry(&after, "kubectl-replace").unwrap()["fieldsV1"],
        json!({"f:metadata":{"f:labels":{"f:x":{}}}})
    );
    assert_eq!(entry(&after, "kubectl-replace").unwrap()["time"], T2);
    // Changing a field moves it to the writer; removing one drops it from its owner.
    let moved = record_update(
        Some(&after),
        &cm(json!({"a":"2"})),
        &upd("kubectl-patch", s),
    )
    .unwrap();
    assert!(entry(&moved, "kubectl-create").is_none(), "{moved}");
    assert!(entry(&moved, "kubectl-replace").is_none(), "label removed");
    assert_eq!(
        entry(&moved, "kubectl-patch").unwrap()["fieldsV1"],
        json!({"f:data":{"f:a":{}}})
    );
}

#[test]
fn managed_fields_written_by_the_request_are_the_baseline() {
    let s = cm_schema();
    let created = record_update(
        None,
        &cm(json!({"a":"1"})),
        &upd("kubectl-client-side-apply", s),
    )
    .unwrap();
    // kubectl's csaupgrade: a JSON patch replacing managedFields.
    let mut migrated = created.clone();
    migrated["metadata"]["managedFields"] = json!([{"manager":"kubectl","operation":"Apply",
        "apiVersion":"v1","time":T1,"fieldsType":"FieldsV1","fieldsV1":{"f:data":{"f:a":{}}}}]);
    let out = record_update(Some(&created), &migrated, &upd("kubectl", s)).unwrap();
    assert_eq!(
        out["metadata"]["managedFields"],
        migrated["metadata"]["managedFields"]
    );
    // An empty list clears them.
    let mut cleared = created.clone();
    cleared["metadata"]["managedFields"] = json!([]);
    let out = record_update(Some(&created), &cleared, &upd("x", s)).unwrap();
    assert!(out["metadata"].get("managedFields").is_none());
    // Garbage is a 400.
    let mut bad = created.clone();
    bad["metadata"]["managedFields"] = json!([{"operation":"Apply","fieldsV1":{"nope":{}}}]);
    assert_eq!(
        record_update(Some(&created), &bad, &upd("x", s))
            .unwrap_err()
            .http_status(),
        400
    );
}

#[test]
fn status_subresource_tracks_status_only() {
    let s = builtin_schema("apps/v1", "Deployment").unwrap();
    let old = deploy(json!([{"name":"a","image":"a"}]), 1);
    let mut new = old.clone();
    new["status"] = json!({"replicas":1,"conditions":[{"type":"Available","status":"True"}]});
    let out = record_update(
        Some(&old),
        &new,
        &UpdateOptions {
            manager: "deployment-controller",
            api_version: "apps/v1",
            now: T2,
            schema: s,
            subresource: Some("status"),
        },
    )
    .unwrap();
    let e = entry(&out, "deployment-controller").unwrap();
    assert_eq!(e["subresource"], "status");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:status":{"f:conditions":{"k:{\"type\":\"Available\"}":{".":{},"f:status":{},"f:type":{}}},"f:replicas":{}}})
    );
}

#[test]
fn bodies_and_invalid_configs() {
    let v = parse_apply_body(
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"1\"\n",
    )
    .unwrap();
    assert_eq!(v["data"]["a"], "1");
    let v = parse_apply_body(br#"{"apiVersion":"v1","kind":"ConfigMap"}"#).unwrap();
    assert_eq!(v["kind"], "ConfigMap");
    assert_eq!(
        parse_apply_body(b"- 1\n- 2\n").unwrap_err().http_status(),
        400
    );
    assert_eq!(parse_apply_body(b"{: [").unwrap_err().http_status(), 400);
    let s = builtin_schema("apps/v1", "Deployment").unwrap();
    let dup = deploy(json!([{"name":"a"},{"name":"a"}]), 1);
    let o = ApplyOptions {
        manager: "m",
        force: false,
        api_version: "apps/v1",
        now: T1,
        schema: s,
        subresource: None,
    };
    assert_eq!(apply(None, &dup, &o).unwrap_err().http_status(), 422);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        /// Re-applying the same configuration by the same manager changes nothing, and the
        /// manager owns exactly the keys it applied.
        #[test]
        fn reapply_is_stable(data in prop::collection::btree_map("[a-e]", "[a-c]{0,2}", 0..5),
                             other in prop::collection::btree_map("[a-e]", "[a-c]{0,2}", 0..5)) {
            let s = cm_schema();
            let base = apply(None, &cm(json!(other)), &opts("other", false, s)).unwrap();
            let cfg = cm(json!(data));
            let Ok(once) = apply(Some(&base), &cfg, &opts("me", true, s)) else {
                return Err(TestCaseError::fail("force never conflicts"));
            };
            let twice = apply(Some(&once), &cfg, &opts("me", false, s)).unwrap();
            prop_assert_eq!(&once, &twice);
            for (k, v) in &data {
                prop_assert_eq!(&once["data"][k], &json!(v));
            }
        }
    }
}
