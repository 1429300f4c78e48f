//! Strategic merge patch (`application/strategic-merge-patch+json`), upstream's algorithm.
//!
//! Entry points: [`apply`] (patch a document with the metadata of its kind) and
//! [`apply_bytes`]; the metadata comes from [`builtin_schema`] or any [`PatchSchema`].
//!
//! Semantics, as in `k8s.io/apimachinery/pkg/util/strategicpatch`:
//! - objects merge member by member; `null` deletes a member;
//! - lists whose member has `patchStrategy: merge` merge: lists of objects by their
//!   `patchMergeKey` (a patch element with an unknown key is appended, a known one merges into
//!   the live element), lists of scalars as sets (live order, new values appended); all other
//!   lists are replaced;
//! - `$patch: replace` (in an object: the object replaces the live one; as a list element: the
//!   list's other elements replace the live list), `$patch: delete` (in an object: it becomes
//!   `{}`; as a list element: the live element with that key is removed), `$patch: merge`;
//! - `$retainKeys: [..]`: live members not listed are dropped before merging;
//! - `$deleteFromPrimitiveList/<list>: [..]`: those values leave the scalar list;
//! - `$setElementOrder/<list>: [..]`: the merged list follows that order, elements only the
//!   server has keep their place relative to the live list.

use serde_json::{Map, Value};

use super::PatchError;
pub use super::schema::{FieldMeta, NoSchema, PatchSchema, builtin_schema};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE: &str = "$deleteFromPrimitiveList/";
/// Nesting bound: deeper patches are rejected instead of recursing without limit.
const MAX_DEPTH: usize = 100;

/// Parses `body` as JSON and applies it to `original` (see [`apply`]).
pub fn apply_bytes(
    original: &Value,
    body: &[u8],
    schema: &dyn PatchSchema,
) -> Result<Value, PatchError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| PatchError::Invalid(format!("the patch is not valid JSON: {e}")))?;
    apply(original, &patch, schema)
}

/// Applies the strategic merge patch `patch` to `original`, both JSON objects, with the patch
/// metadata `schema` of the object's kind. The input is never modified.
pub fn apply(
    original: &Value,
    patch: &Value,
    schema: &dyn PatchSchema,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Invalid(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let original = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    Ok(Value::Object(merge_map(original, patch, schema, 0)?))
}

fn depth_check(depth: usize) -> Result<(), PatchError> {
    if depth > MAX_DEPTH {
        return Err(PatchError::Invalid(format!(
            "patch nested deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    schema: &dyn PatchSchema,
    depth: usize,
) -> Result<Map<String, Value>, PatchError> {
    depth_check(depth)?;
    if let Some(d) = patch.get(DIRECTIVE) {
        match d.as_str() {
            Some("replace") => {
                let mut rest = patch.clone();
                rest.remove(DIRECTIVE);
                return merge_map(Map::new(), &rest, schema, depth + 1);
            }
            Some("delete") => return Ok(Map::new()),
            Some("merge") => {}
            _ => {
                return Err(PatchError::Invalid(format!(
                    "unknown patch type {d} in {DIRECTIVE}"
                )));
            }
        }
    }
    if let Some(keys) = patch.get(RETAIN_KEYS) {
        let Value::Array(keys) = keys else {
            return Err(PatchError::Invalid(format!("{RETAIN_KEYS} must be a list")));
        };
        let mut keep = Vec::with_capacity(keys.len());
        for k in keys {
            keep.push(k.as_str().ok_or_else(|| {
                PatchError::Invalid(format!("{RETAIN_KEYS} must be a list of strings"))
            })?);
        }
        for k in patch.keys() {
            if !k.starts_with('$') && !patch[k].is_null() && !keep.contains(&k.as_str()) {
                return Err(PatchError::Unprocessable(format!(
                    "field {k:?} is not listed in {RETAIN_KEYS}"
                )));
            }
        }
        original.retain(|k, _| keep.contains(&k.as_str()));
    }

    for (k, v) in patch {
        if k == DIRECTIVE || k == RETAIN_KEYS || k.starts_with(SET_ORDER) {
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE) {
            let Value::Array(gone) = v else {
                return Err(PatchError::Invalid(format!("{k} must be a list")));
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(PatchError::Invalid(format!(
                "unknown patch directive {k:?}"
            )));
        }
        if v.is_null() {
            original.remove(k);
            continue;
        }
        let meta = schema.field(k);
        let order = patch.get(&format!("{SET_ORDER}{k}"));
        let merged = match (original.remove(k), v) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                Value::Object(merge_map(o, p, child(&meta), depth + 1)?)
            }
            (Some(Value::Array(o)), Value::Array(p)) => {
                Value::Array(merge_list(o, p, meta.as_ref(), order, depth + 1)?)
            }
            // Absent or of another type: the patch value with its own directives and nulls
            // resolved against nothing.
            (_, Value::Object(p)) => {
                Value::Object(merge_map(Map::new(), p, child(&meta), depth + 1)?)
            }
            (_, Value::Array(p)) => {
                Value::Array(merge_list(Vec::new(), p, meta.as_ref(), order, depth + 1)?)
            }
            (_, v) => v.clone(),
        };
        original.insert(k.clone(), merged);
    }

    // Order-only directives for lists the patch did not otherwise touch.
    for (k, order) in patch {
        let Some(field) = k.strip_prefix(SET_ORDER) else {
            continue;
        };
        if patch.contains_key(field) {
            continue;
        }
        let meta = schema.field(field);
        if let Some(Value::Array(list)) = original.get_mut(field) {
            let Value::Array(order) = order else {
                return Err(PatchError::Invalid(format!("{k} must be a list")));
            };
            let server = list.clone();
            let key = meta.as_ref().and_then(|m| m.merge_key);
            *list = reorder(std::mem::take(list), order, key, &server);
        }
    }
    Ok(original)
}

fn child<'a>(meta: &Option<FieldMeta<'a>>) -> &'a dyn PatchSchema {
    meta.as_ref().and_then(|m| m.schema).unwrap_or(&NoSchema)
}

fn is_directive_element(v: &Value, which: &str) -> bool {
    v.as_object()
        .is_some_and(|m| m.get(DIRECTIVE).and_then(Value::as_str) == Some(which) && m.len() == 1)
}

fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    meta: Option<&FieldMeta<'_>>,
    order: Option<&Value>,
    depth: usize,
) -> Result<Vec<Value>, PatchError> {
    depth_check(depth)?;
    let Some(meta) = meta.filter(|m| m.merge) else {
        // Atomic list: the patch's list replaces the live one.
        return Ok(patch.to_vec());
    };
    let schema = meta.schema.unwrap_or(&NoSchema);
    if patch.iter().any(|v| is_directive_element(v, "replace")) {
        let mut out = Vec::new();
        for v in patch.iter().filter(|v| !is_directive_element(v, "replace")) {
            out.push(clean(v, schema, depth)?);
        }
        return Ok(out);
    }
    let server = original.clone();
    let mut merged = original;
    match meta.merge_key {
        None => {
            for p in patch {
                if p.is_object() || p.is_array() {
                    return Err(PatchError::Unprocessable(
                        "a merging list without a merge key must hold scalars".into(),
                    ));
                }
                if !merged.contains(p) {
                    merged.push(p.clone());
                }
            }
        }
        Some(key) => {
            for p in patch {
                let Value::Object(pm) = p else {
                    return Err(PatchError::Unprocessable(format!(
                        "list elements merged by {key:?} must be objects"
                    )));
                };
                let Some(kv) = pm.get(key) else {
                    return Err(PatchError::Unprocessable(format!(
                        "map: {p} does not contain declared merge key: {key}"
                    )));
                };
                let at = merged.iter().position(|o| o.get(key) == Some(kv));
                let mut body = pm.clone();
                let directive = body.remove(DIRECTIVE);
                match directive.as_ref().map(|d| d.as_str()) {
                    Some(Some("delete")) => merged.retain(|o| o.get(key) != Some(kv)),
                    Some(Some("replace")) => {
                        let item = Value::Object(merge_map(Map::new(), &body, schema, depth + 1)?);
                        match at {
                            Some(i) => merged[i] = item,
                            None => merged.push(item),
                        }
                    }
                    None | Some(Some("merge")) => match at {
                        Some(i) => {
                            let live = match std::mem::take(&mut merged[i]) {
                                Value::Object(m) => m,
                                _ => Map::new(),
                            };
                            merged[i] = Value::Object(merge_map(live, &body, schema, depth + 1)?);
                        }
                        None => merged.push(Value::Object(merge_map(
                            Map::new(),
                            &body,
                            schema,
                            depth + 1,
                        )?)),
                    },
                    Some(_) => {
                        return Err(PatchError::Invalid(format!(
                            "unknown patch type in list element {p}"
                        )));
                    }
                }
            }
        }
    }
    if let Some(order) = order {
        let Value::Array(order) = order else {
            return Err(PatchError::Invalid(format!("{SET_ORDER}* must be a list")));
        };
        merged = reorder(merged, order, meta.merge_key, &server);
    }
    Ok(merged)
}

/// A patch value with its directives resolved against nothing (for keys the live object lacks).
fn clean(v: &Value, schema: &dyn PatchSchema, depth: usize) -> Result<Value, PatchError> {
    Ok(match v {
        Value::Object(m) => Value::Object(merge_map(Map::new(), m, schema, depth + 1)?),
        other => other.clone(),
    })
}

/// The identity of a list element: its merge key's value, or itself for scalars.
fn ident<'a>(v: &'a Value, key: Option<&str>) -> Option<&'a Value> {
    match key {
        Some(k) => v.get(k),
        None => Some(v),
    }
}

/// Orders `merged` by `order` (upstream `normalizeElementOrder`/`mergeSortedSlice`): elements
/// named in `order` come in that order; the others keep their place relative to `server`.
fn reorder(merged: Vec<Value>, order: &[Value], key: Option<&str>, server: &[Value]) -> Vec<Value> {
    let order_ids: Vec<Option<&Value>> = order.iter().map(|o| ident(o, key)).collect();
    let pos_in_order = |v: &Value| {
        let id = ident(v, key);
        order_ids.iter().position(|o| id.is_some() && *o == id)
    };
    let pos_in_server = |v: &Value| {
        let id = ident(v, key);
        server
            .iter()
            .position(|s| id.is_some() && ident(s, key) == id)
    };
    let (mut listed, server_only): (Vec<Value>, Vec<Value>) =
        merged.into_iter().partition(|v| pos_in_order(v).is_some());
    listed.sort_by_key(|v| pos_in_order(v));
    let mut out = Vec::with_capacity(listed.len() + server_only.len());
    let (mut i, mut j) = (0, 0);
    while i < listed.len() && j < server_only.len() {
        let take_server = match (pos_in_server(&listed[i]), pos_in_server(&server_only[j])) {
            (Some(l), Some(r)) => r < l,
            _ => false,
        };
        if take_server {
            out.push(server_only[j].clone());
            j += 1;
        } else {
            out.push(listed[i].clone());
            i += 1;
        }
    }
    out.extend_from_slice(&listed[i..]);
    out.extend_from_slice(&server_only[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy() -> &'static dyn PatchSchema {
        builtin_schema("apps/v1", "Deployment").expect("known")
    }

    fn web() -> Value {
        json!({
            "apiVersion":"apps/v1","kind":"Deployment",
            "metadata":{"name":"web","namespace":"default","finalizers":["a"],
                "annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}"}},
            "spec":{"replicas":1,"selector":{"matchLabels":{"app":"web"}},
                "strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":"25%","maxUnavailable":"25%"}},
                "template":{"metadata":{"labels":{"app":"web"}},
                    "spec":{"containers":[
                        {"name":"nginx","image":"nginx:1.27","ports":[{"containerPort":80,"protocol":"TCP"}],
                         "env":[{"name":"A","value":"1"},{"name":"B","value":"2"}]},
                        {"name":"sidecar","image":"busybox","args":["sleep","1d"]}],
                    "tolerations":[{"key":"k","operator":"Exists"}],
                    "volumes":[{"name":"data","emptyDir":{}}]}}}
        })
    }

    #[test]
    fn kubectl_apply_second_time() {
        let patch = json!({"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"x\":1}"}},
            "spec":{"replicas":2,"template":{"spec":{"$setElementOrder/containers":[{"name":"nginx"},{"name":"sidecar"}],
                "containers":[{"image":"nginx:1.28","name":"nginx"}]}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert_eq!(out["spec"]["replicas"], 2);
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().map(Vec::len), Some(2), "sibling kept: {cs}");
        assert_eq!(cs[0]["image"], "nginx:1.28");
        assert_eq!(
            cs[0]["ports"][0]["containerPort"], 80,
            "unpatched members kept"
        );
        assert_eq!(cs[1]["name"], "sidecar");
        assert_eq!(
            out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "{\"x\":1}"
        );
    }

    #[test]
    fn rollout_restart_annotation() {
        let patch = br#"{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2026-01-01T00:00:00Z"}}}}}"#;
        let out = apply_bytes(&web(), patch, deploy()).unwrap();
        let tm = &out["spec"]["template"]["metadata"];
        assert_eq!(
            tm["annotations"]["kubectl.kubernetes.io/restartedAt"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(tm["labels"]["app"], "web");
        let mut expect = web();
        expect["spec"]["template"]["metadata"]["annotations"] =
            json!({"kubectl.kubernetes.io/restartedAt":"2026-01-01T00:00:00Z"});
        assert_eq!(out, expect);
    }

    #[test]
    fn set_image_touches_one_container() {
        let patch = json!({"spec":{"template":{"spec":{"containers":[{"image":"busybox:1.37","name":"sidecar"}]}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "nginx:1.27");
        assert_eq!(cs[1]["image"], "busybox:1.37");
        assert_eq!(cs[1]["args"], json!(["sleep", "1d"]));
    }

    #[test]
    fn new_container_is_appended_and_tolerations_replaced() {
        // Upstream's "update API objects with kubectl patch" walkthrough, rewritten.
        let patch = json!({"spec":{"template":{"spec":{
            "containers":[{"name":"patch-demo-ctr-2","image":"redis"}],
            "tolerations":[{"effect":"NoSchedule","key":"disktype","value":"ssd"}]}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        let spec = &out["spec"]["template"]["spec"];
        let names: Vec<&str> = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["nginx", "sidecar", "patch-demo-ctr-2"]);
        assert_eq!(
            spec["tolerations"],
            json!([{"effect":"NoSchedule","key":"disktype","value":"ssd"}])
        );
    }

    #[test]
    fn env_and_ports_merge_by_key() {
        let patch = json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx",
            "env":[{"name":"B","value":"two"},{"name":"C","value":"3"}],
            "ports":[{"containerPort":443}]}]}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["env"],
            json!([{"name":"A","value":"1"},{"name":"B","value":"two"},{"name":"C","value":"3"}])
        );
        assert_eq!(
            c["ports"],
            json!([{"containerPort":80,"protocol":"TCP"},{"containerPort":443}])
        );
    }

    #[test]
    fn patch_delete_and_replace_directives() {
        let patch = json!({"spec":{"template":{"spec":{"containers":[{"name":"sidecar","$patch":"delete"}]}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );

        let patch = json!({"spec":{"template":{"spec":{"containers":[{"name":"only","image":"x"},{"$patch":"replace"}]}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name":"only","image":"x"}])
        );

        let patch = json!({"spec":{"selector":{"$patch":"replace","matchLabels":{"tier":"x"}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert_eq!(out["spec"]["selector"], json!({"matchLabels":{"tier":"x"}}));

        let patch = json!({"spec":{"template":{"metadata":{"$patch":"delete"}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert_eq!(out["spec"]["template"]["metadata"], json!({}));

        let bad = json!({"spec":{"$patch":"frob"}});
        assert_eq!(
            apply(&web(), &bad, deploy()).unwrap_err().http_status(),
            400
        );
    }

    #[test]
    fn retain_keys_switches_strategy() {
        let patch = json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate"}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type":"Recreate"}));
        // A volume switching source (volumes have patchStrategy merge,retainKeys).
        let patch = json!({"spec":{"template":{"spec":{"volumes":[
            {"name":"data","$retainKeys":["name","hostPath"],"hostPath":{"path":"/d"}}]}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"],
            json!([{"name":"data","hostPath":{"path":"/d"}}])
        );
        let bad = json!({"spec":{"strategy":{"$retainKeys":["type"],"rollingUpdate":{}}}});
        assert_eq!(
            apply(&web(), &bad, deploy()).unwrap_err().http_status(),
            422
        );
    }

    #[test]
    fn primitive_lists_merge_and_delete() {
        let patch = json!({"metadata":{"finalizers":["b","a"]}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        let patch = json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}});
        let out = apply(&out, &patch, deploy()).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        // Args have no strategy: replaced.
        let patch =
            json!({"spec":{"template":{"spec":{"containers":[{"name":"sidecar","args":["x"]}]}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][1]["args"],
            json!(["x"])
        );
    }

    #[test]
    fn null_deletes_members() {
        let patch = json!({"spec":{"strategy":null,"template":{"spec":{"containers":[{"name":"nginx","env":null}]}}}});
        let out = apply(&web(), &patch, deploy()).unwrap();
        assert!(out["spec"].get("strategy").is_none());
        assert!(
            out["spec"]["template"]["spec"]["containers"][0]
                .get("env")
                .is_none()
        );
    }

    #[test]
    fn set_element_order_keeps_server_only_elements_in_place() {
        let pod = builtin_schema("v1", "Pod").unwrap();
        let names = |live: Value| -> Vec<String> {
            let patch = json!({"spec":{"$setElementOrder/containers":[{"name":"b"},{"name":"a"}],
                "containers":[{"name":"b","image":"i"}]}});
            let out = apply(&live, &patch, pod).unwrap();
            out["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        };
        // "s" is only on the server; it stays ahead of the patch elements that followed it.
        let live = json!({"spec":{"containers":[{"name":"a"},{"name":"b"},{"name":"s"}]}});
        assert_eq!(names(live), ["b", "a", "s"]);
        let live = json!({"spec":{"containers":[{"name":"s"},{"name":"a"},{"name":"b"}]}});
        assert_eq!(names(live), ["s", "b", "a"]);
        // Order-only patch of a scalar set.
        let live = json!({"metadata":{"finalizers":["x","y","z"]}});
        let patch = json!({"metadata":{"$setElementOrder/finalizers":["z","x","y"]}});
        let out = apply(&live, &patch, pod).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["z", "x", "y"]));
    }

    #[test]
    fn missing_merge_key_is_rejected() {
        let patch = json!({"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}});
        assert_eq!(
            apply(&web(), &patch, deploy()).unwrap_err().http_status(),
            422
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let svc = json!({"spec":{"ports":[{"port":80,"targetPort":8080},{"port":443}]}});
        let schema = builtin_schema("v1", "Service").unwrap();
        let patch = json!({"spec":{"ports":[{"port":80,"targetPort":9090}]}});
        let out = apply(&svc, &patch, schema).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port":80,"targetPort":9090},{"port":443}])
        );
    }

    #[test]
    fn without_metadata_lists_are_replaced() {
        // A custom resource patched with no schema behaves as a JSON merge patch.
        let cr = json!({"spec":{"items":[{"name":"a"},{"name":"b"}],"x":1}});
        let patch = json!({"spec":{"items":[{"name":"c"}],"x":null}});
        let out = apply(&cr, &patch, &NoSchema).unwrap();
        assert_eq!(out, super::super::merge_patch::apply(&cr, &patch));
    }

    #[test]
    fn directives_in_new_members_are_resolved() {
        let live = json!({"metadata":{"name":"p"}});
        let pod = builtin_schema("v1", "Pod").unwrap();
        let patch = json!({"spec":{"containers":[{"name":"a","env":[{"name":"X","value":"1"}]}],
            "$setElementOrder/containers":[{"name":"a"}]}});
        let out = apply(&live, &patch, pod).unwrap();
        assert_eq!(
            out["spec"],
            json!({"containers":[{"name":"a","env":[{"name":"X","value":"1"}]}]})
        );
    }

    #[test]
    fn malformed_inputs() {
        assert_eq!(
            apply_bytes(&web(), b"[1]", deploy())
                .unwrap_err()
                .http_status(),
            400
        );
        assert_eq!(
            apply_bytes(&web(), b"{", deploy())
                .unwrap_err()
                .http_status(),
            400
        );
        let mut deep = json!({});
        for _ in 0..200 {
            deep = json!({ "a": deep });
        }
        assert!(apply(&web(), &deep, deploy()).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i16>().prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
            Just(Value::Null),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-d]", arb_json(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Without patch metadata and directives, a strategic merge patch is a JSON merge patch.
        #[test]
        fn without_schema_it_is_a_merge_patch(doc in arb_object(), patch in arb_object()) {
            let got = apply(&doc, &patch, &NoSchema).unwrap();
            prop_assert_eq!(got, crate::patch::merge_patch::apply(&doc, &patch));
        }

        /// Merging containers by name never loses a live container the patch does not name.
        #[test]
        fn containers_are_never_dropped(names in prop::collection::btree_set("[a-e]", 0..5),
                                        patch_names in prop::collection::btree_set("[a-g]", 0..4)) {
            let live = json!({"spec":{"containers": names.iter().map(|n| json!({"name": n, "image": "x"})).collect::<Vec<_>>()}});
            let patch = json!({"spec":{"containers": patch_names.iter().map(|n| json!({"name": n, "image": "y"})).collect::<Vec<_>>()}});
            let out = apply(&live, &patch, builtin_schema("v1", "Pod").unwrap()).unwrap();
            let got: std::collections::BTreeSet<String> = out["spec"]["containers"].as_array().unwrap()
                .iter().filter_map(|c| c["name"].as_str().map(String::from)).collect();
            let want: std::collections::BTreeSet<String> = names.union(&patch_names).cloned().collect();
            prop_assert_eq!(got, want);
        }
    }
}
