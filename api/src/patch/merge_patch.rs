//! JSON merge patch (RFC 7386).
//!
//! Entry points: [`apply`] (the `application/merge-patch+json` PATCH), [`apply_bytes`] (parse
//! then apply) and [`diff`] (the merge patch that turns one document into another, so
//! `apply(a, diff(a, b)) == b` whenever `b` contains no `null` members).

use serde_json::{Map, Value};

use super::PatchError;

/// Applies the merge patch `patch` to `target`: objects merge member by member, `null` deletes a
/// member, anything else (arrays included) replaces.
pub fn apply(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    merge_into(&mut out, patch);
    out
}

/// Parses `body` as JSON and applies it (a non-JSON body is 400).
pub fn apply_bytes(target: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| PatchError::Invalid(format!("the patch is not valid JSON: {e}")))?;
    Ok(apply(target, &patch))
}

/// Merges `patch` into `target` in place.
pub fn merge_into(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                target_map.remove(k);
            } else {
                merge_into(target_map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The merge patch that turns `from` into `to` (members of `from` missing in `to` become
/// `null`). Returns `{}` when they are equal objects.
pub fn diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = Map::new();
            for (k, va) in a {
                match b.get(k) {
                    None => {
                        out.insert(k.clone(), Value::Null);
                    }
                    Some(vb) if vb != va => {
                        let d = if va.is_object() && vb.is_object() {
                            diff(va, vb)
                        } else {
                            vb.clone()
                        };
                        out.insert(k.clone(), d);
                    }
                    Some(_) => {}
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.insert(k.clone(), vb.clone());
                }
            }
            Value::Object(out)
        }
        _ => to.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    // RFC 7386 appendix A, one case per row (written out again here).
    #[test]
    fn rfc7386_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, want) in cases {
            assert_eq!(apply(&target, &patch), want, "{target} + {patch}");
        }
    }

    #[test]
    fn kubectl_label_and_unlabel() {
        let pod = json!({"metadata":{"name":"p","labels":{"a":"1"}}});
        let labelled = apply_bytes(&pod, br#"{"metadata":{"labels":{"k":"v"}}}"#).unwrap();
        assert_eq!(labelled["metadata"]["labels"], json!({"a":"1","k":"v"}));
        let unlabelled = apply_bytes(&labelled, br#"{"metadata":{"labels":{"a":null}}}"#).unwrap();
        assert_eq!(unlabelled["metadata"]["labels"], json!({"k":"v"}));
        assert_eq!(apply_bytes(&pod, b"{nope").unwrap_err().http_status(), 400);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-c]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn diff_then_apply_reproduces_target(a in arb_json(), b in arb_json()) {
            prop_assert_eq!(apply(&a, &diff(&a, &b)), b);
        }

        #[test]
        fn apply_is_idempotent(a in arb_json(), p in arb_json()) {
            let once = apply(&a, &p);
            prop_assert_eq!(apply(&once, &p), once);
        }
    }
}
