//! JSON patch (RFC 6902) and JSON pointers (RFC 6901).
//!
//! Entry points: [`parse`] turns a request body into [`Operation`]s (400 on a malformed patch),
//! [`apply`] runs them against a document and returns the new one (422 when an operation cannot
//! be applied or a `test` fails). [`apply_bytes`] does both. Operations apply in order to a copy;
//! the input document is never partly modified.

use serde_json::Value;

use super::PatchError;

/// Default cap on the number of JSON nodes `copy` operations may duplicate in one patch, so a
/// few kilobytes of repeated `copy` cannot build gigabytes (upstream caps the copied bytes too).
pub const DEFAULT_MAX_COPIED_NODES: usize = 1_000_000;

/// One RFC 6902 operation. Paths are already-parsed JSON pointers.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// `add`: insert into an array (index or `-`) or set an object member.
    Add {
        /// Target location.
        path: Pointer,
        /// Value to add.
        value: Value,
    },
    /// `remove`: the target must exist.
    Remove {
        /// Target location.
        path: Pointer,
    },
    /// `replace`: the target must exist.
    Replace {
        /// Target location.
        path: Pointer,
        /// New value.
        value: Value,
    },
    /// `move`: remove `from`, add at `path`; `path` may not be inside `from`.
    Move {
        /// Source location.
        from: Pointer,
        /// Target location.
        path: Pointer,
    },
    /// `copy`: add a copy of the value at `from` at `path`.
    Copy {
        /// Source location.
        from: Pointer,
        /// Target location.
        path: Pointer,
    },
    /// `test`: the value at `path` must equal `value`.
    Test {
        /// Tested location.
        path: Pointer,
        /// Expected value.
        value: Value,
    },
}

/// A parsed JSON pointer: the unescaped reference tokens (`~1` → `/`, `~0` → `~`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    tokens: Vec<String>,
    raw: String,
}

impl Pointer {
    /// Parses an RFC 6901 pointer (`""` is the whole document).
    pub fn parse(raw: &str) -> Result<Pointer, PatchError> {
        if raw.is_empty() {
            return Ok(Pointer {
                tokens: Vec::new(),
                raw: String::new(),
            });
        }
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(PatchError::Invalid(format!(
                "JSON pointer {raw:?} must be empty or start with '/'"
            )));
        };
        let mut tokens = Vec::new();
        for part in rest.split('/') {
            tokens.push(unescape(part).ok_or_else(|| {
                PatchError::Invalid(format!("JSON pointer {raw:?} has an invalid '~' escape"))
            })?);
        }
        Ok(Pointer {
            tokens,
            raw: raw.to_string(),
        })
    }

    /// The unescaped reference tokens.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The pointer as it was written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether `self` is a proper prefix of `other`.
    fn is_proper_prefix_of(&self, other: &Pointer) -> bool {
        self.tokens.len() < other.tokens.len() && other.tokens.starts_with(&self.tokens)
    }
}

fn unescape(token: &str) -> Option<String> {
    if !token.contains('~') {
        return Some(token.to_string());
    }
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Escapes one reference token for use in a pointer (`~` → `~0`, `/` → `~1`).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Parses a JSON patch document (a JSON array of operation objects).
pub fn parse(patch: &Value) -> Result<Vec<Operation>, PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::Invalid(
            "a JSON patch must be a JSON array of operations".into(),
        ));
    };
    ops.iter()
        .enumerate()
        .map(|(i, op)| parse_op(i, op))
        .collect()
}

fn parse_op(index: usize, op: &Value) -> Result<Operation, PatchError> {
    let Value::Object(map) = op else {
        return Err(PatchError::Invalid(format!(
            "operation {index} is not a JSON object"
        )));
    };
    let name = match map.get("op") {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(PatchError::Invalid(format!(
                "operation {index} has no string \"op\" member"
            )));
        }
    };
    let pointer = |member: &str| -> Result<Pointer, PatchError> {
        match map.get(member) {
            Some(Value::String(s)) => Pointer::parse(s),
            _ => Err(PatchError::Invalid(format!(
                "operation {index} ({name}) has no string {member:?} member"
            ))),
        }
    };
    let value = || -> Result<Value, PatchError> {
        map.get("value").cloned().ok_or_else(|| {
            PatchError::Invalid(format!(
                "operation {index} ({name}) has no \"value\" member"
            ))
        })
    };
    Ok(match name {
        "add" => Operation::Add {
            path: pointer("path")?,
            value: value()?,
        },
        "remove" => Operation::Remove {
            path: pointer("path")?,
        },
        "replace" => Operation::Replace {
            path: pointer("path")?,
            value: value()?,
        },
        "move" => Operation::Move {
            from: pointer("from")?,
            path: pointer("path")?,
        },
        "copy" => Operation::Copy {
            from: pointer("from")?,
            path: pointer("path")?,
        },
        "test" => Operation::Test {
            path: pointer("path")?,
            value: value()?,
        },
        other => {
            return Err(PatchError::Invalid(format!(
                "operation {index} has unknown op {other:?}"
            )));
        }
    })
}

/// Parses `body` as JSON and applies it to `doc` (see [`apply`]).
pub fn apply_bytes(doc: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| PatchError::Invalid(format!("the patch is not valid JSON: {e}")))?;
    apply(doc, &parse(&patch)?, DEFAULT_MAX_COPIED_NODES)
}

/// Applies `ops` in order to a copy of `doc`. `max_copied_nodes` bounds the total size of the
/// values duplicated by `copy` operations.
pub fn apply(doc: &Value, ops: &[Operation], max_copied_nodes: usize) -> Result<Value, PatchError> {
    let mut doc = doc.clone();
    let mut copied = 0usize;
    for op in ops {
        match op {
            Operation::Add { path, value } => add(&mut doc, path, value.clone())?,
            Operation::Remove { path } => {
                remove(&mut doc, path)?;
            }
            Operation::Replace { path, value } => {
                let target = get_mut(&mut doc, path).ok_or_else(|| missing("replace", path))?;
                *target = value.clone();
            }
            Operation::Move { from, path } => {
                if from.is_proper_prefix_of(path) {
                    return Err(PatchError::Unprocessable(format!(
                        "move: path {:?} is inside from {:?}",
                        path.as_str(),
                        from.as_str()
                    )));
                }
                if from != path {
                    let value = remove(&mut doc, from)?;
                    add(&mut doc, path, value)?;
                } else if get(&doc, from).is_none() {
                    return Err(missing("move", from));
                }
            }
            Operation::Copy { from, path } => {
                let value = get(&doc, from)
                    .ok_or_else(|| missing("copy", from))?
                    .clone();
                copied = copied.saturating_add(count_nodes(&value));
                if copied > max_copied_nodes {
                    return Err(PatchError::TooLarge(format!(
                        "copy operations duplicate more than {max_copied_nodes} JSON values"
                    )));
                }
                add(&mut doc, path, value)?;
            }
            Operation::Test { path, value } => {
                let found = get(&doc, path);
                if !found.is_some_and(|v| json_equal(v, value)) {
                    return Err(PatchError::TestFailed {
                        path: path.as_str().to_string(),
                    });
                }
            }
        }
    }
    Ok(doc)
}

fn missing(op: &str, path: &Pointer) -> PatchError {
    PatchError::Unprocessable(format!(
        "{op} operation does not apply: doc is missing path: {:?}",
        path.as_str()
    ))
}

/// Counts the JSON values in `v` (itself included); iterative so deep documents cannot
/// overflow the stack.
pub(crate) fn count_nodes(v: &Value) -> usize {
    let mut n = 0usize;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        n += 1;
        match v {
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    n
}

/// JSON equality as RFC 6902 `test` defines it: numbers compare by value (`1` equals `1.0`),
/// objects regardless of member order, arrays element-wise.
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => x.as_f64().zip(y.as_f64()).is_some_and(|(p, q)| p == q),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Parses an array index token: decimal digits, no leading zero (RFC 6901).
fn array_index(token: &str) -> Option<usize> {
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return None;
    }
    token.parse().ok()
}

/// The value `path` points at, if any.
pub fn get<'a>(doc: &'a Value, path: &Pointer) -> Option<&'a Value> {
    let mut cur = doc;
    for t in path.tokens() {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(array_index(t)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn get_mut<'a>(doc: &'a mut Value, path: &Pointer) -> Option<&'a mut Value> {
    let mut cur = doc;
    for t in path.tokens() {
        cur = match cur {
            Value::Object(m) => m.get_mut(t)?,
            Value::Array(a) => a.get_mut(array_index(t)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn parent_mut<'a, 'p>(
    doc: &'a mut Value,
    op: &str,
    path: &'p Pointer,
) -> Result<(&'a mut Value, &'p str), PatchError> {
    let (last, parents) = path
        .tokens()
        .split_last()
        .ok_or_else(|| PatchError::Unprocessable(format!("{op}: the root has no parent")))?;
    let mut cur = doc;
    for t in parents {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => array_index(t).and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| missing(op, path))?;
    }
    Ok((cur, last.as_str()))
}

fn add(doc: &mut Value, path: &Pointer, value: Value) -> Result<(), PatchError> {
    if path.tokens().is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = parent_mut(doc, "add", path)?;
    match parent {
        Value::Object(m) => {
            m.insert(last.to_string(), value);
            Ok(())
        }
        Value::Array(a) => {
            let index = if last == "-" {
                a.len()
            } else {
                array_index(last).ok_or_else(|| {
                    PatchError::Unprocessable(format!(
                        "add: invalid array index {last:?} in {:?}",
                        path.as_str()
                    ))
                })?
            };
            if index > a.len() {
                return Err(PatchError::Unprocessable(format!(
                    "add operation does not apply: index {index} out of bounds in {:?}",
                    path.as_str()
                )));
            }
            a.insert(index, value);
            Ok(())
        }
        _ => Err(missing("add", path)),
    }
}

fn remove(doc: &mut Value, path: &Pointer) -> Result<Value, PatchError> {
    if path.tokens().is_empty() {
        return Ok(std::mem::replace(doc, Value::Null));
    }
    let (parent, last) = parent_mut(doc, "remove", path)?;
    match parent {
        Value::Object(m) => m.remove(last).ok_or_else(|| missing("remove", path)),
        Value::Array(a) => match array_index(last) {
            Some(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing("remove", path)),
        },
        _ => Err(missing("remove", path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(doc: Value, patch: Value) -> Result<Value, PatchError> {
        apply(&doc, &parse(&patch)?, DEFAULT_MAX_COPIED_NODES)
    }

    // The cases below follow the examples of RFC 6902 appendix A (rewritten).
    #[test]
    fn add_object_member() {
        let out = run(
            json!({"a":"x"}),
            json!([{"op":"add","path":"/b","value":"y"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a":"x","b":"y"}));
    }

    #[test]
    fn add_array_element_and_append() {
        let out = run(
            json!({"l":["a","c"]}),
            json!([{"op":"add","path":"/l/1","value":"b"},{"op":"add","path":"/l/-","value":"d"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"l":["a","b","c","d"]}));
    }

    #[test]
    fn remove_member_and_element() {
        let out = run(
            json!({"a":1,"b":2,"l":[1,2,3]}),
            json!([{"op":"remove","path":"/b"},{"op":"remove","path":"/l/1"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a":1,"l":[1,3]}));
    }

    #[test]
    fn replace_requires_existing_target() {
        let out = run(
            json!({"a":1}),
            json!([{"op":"replace","path":"/a","value":2}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a":2}));
        let err = run(
            json!({"a":1}),
            json!([{"op":"replace","path":"/b","value":2}]),
        )
        .unwrap_err();
        assert_eq!(err.http_status(), 422);
    }

    #[test]
    fn move_member_and_array_element() {
        let out = run(
            json!({"foo":{"bar":"baz","waldo":"fred"},"qux":{"corge":"grault"}}),
            json!([{"op":"move","from":"/foo/waldo","path":"/qux/thud"}]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"foo":{"bar":"baz"},"qux":{"corge":"grault","thud":"fred"}})
        );
        let out = run(
            json!({"l":["all","grass","cows","eat"]}),
            json!([{"op":"move","from":"/l/1","path":"/l/3"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"l":["all","cows","eat","grass"]}));
    }

    #[test]
    fn move_into_own_child_is_rejected() {
        let err = run(
            json!({"a":{"b":1}}),
            json!([{"op":"move","from":"/a","path":"/a/c"}]),
        )
        .unwrap_err();
        assert_eq!(err.http_status(), 422);
    }

    #[test]
    fn copy_member() {
        let out = run(
            json!({"a":{"x":1}}),
            json!([{"op":"copy","from":"/a","path":"/b"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a":{"x":1},"b":{"x":1}}));
    }

    #[test]
    fn copy_bomb_is_bounded() {
        let ops: Vec<Value> = (0..40)
            .map(|_| json!({"op":"copy","from":"/a","path":"/a/-"}))
            .collect();
        let err = run(json!({"a":[1]}), Value::Array(ops)).unwrap_err();
        assert!(matches!(err, PatchError::TooLarge(_)), "{err:?}");
    }

    #[test]
    fn test_success_and_failure() {
        let doc = json!({"baz":"qux","foo":["a",2,"c"],"n":1});
        let out = run(
            doc.clone(),
            json!([{"op":"test","path":"/baz","value":"qux"},{"op":"test","path":"/foo/1","value":2},{"op":"test","path":"/n","value":1.0}]),
        )
        .unwrap();
        assert_eq!(out, doc);
        let err = run(doc, json!([{"op":"test","path":"/baz","value":"bar"}])).unwrap_err();
        assert_eq!(
            err,
            PatchError::TestFailed {
                path: "/baz".into()
            }
        );
        assert_eq!(err.http_status(), 422);
    }

    #[test]
    fn failed_test_leaves_no_partial_result() {
        let doc = json!({"a":1});
        let err = run(
            doc.clone(),
            json!([{"op":"add","path":"/b","value":2},{"op":"test","path":"/a","value":5}]),
        );
        assert!(err.is_err());
        assert_eq!(doc, json!({"a":1}));
    }

    #[test]
    fn add_to_missing_parent_fails() {
        let err = run(
            json!({"q":{"bar":2}}),
            json!([{"op":"add","path":"/a/b","value":1}]),
        )
        .unwrap_err();
        assert_eq!(err.http_status(), 422);
    }

    #[test]
    fn pointer_escaping() {
        let doc = json!({"metadata":{"annotations":{"a/b":"1","m~n":"2"}}});
        let out = run(
            doc,
            json!([
                {"op":"test","path":"/metadata/annotations/a~1b","value":"1"},
                {"op":"replace","path":"/metadata/annotations/m~0n","value":"3"},
                {"op":"add","path":"/metadata/annotations/kubernetes.io~1x","value":"4"}
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata":{"annotations":{"a/b":"1","m~n":"3","kubernetes.io/x":"4"}}})
        );
        assert_eq!(escape_token("a/b~c"), "a~1b~0c");
        assert_eq!(
            Pointer::parse("/a~2").unwrap_err().http_status(),
            400,
            "bad escape"
        );
    }

    #[test]
    fn array_indices_are_strict() {
        for path in ["/l/01", "/l/-1", "/l/x", "/l/5"] {
            let r = run(
                json!({"l":[1,2]}),
                json!([{"op":"replace","path":path,"value":0}]),
            );
            assert!(r.is_err(), "{path} accepted");
        }
    }

    #[test]
    fn root_add_replaces_document() {
        let out = run(json!({"a":1}), json!([{"op":"add","path":"","value":[1]}])).unwrap();
        assert_eq!(out, json!([1]));
    }

    #[test]
    fn malformed_patches_are_400() {
        for p in [
            json!({"op":"add"}),
            json!([{"path":"/a"}]),
            json!([{"op":"frob","path":"/a"}]),
            json!([{"op":"add","path":"a","value":1}]),
            json!([{"op":"add","path":"/a"}]),
            json!([{"op":"move","path":"/a"}]),
        ] {
            let err = parse(&p).unwrap_err();
            assert_eq!(err.http_status(), 400, "{p}");
        }
        assert_eq!(
            apply_bytes(&json!({}), b"[{").unwrap_err().http_status(),
            400
        );
    }

    #[test]
    fn kubectl_csaupgrade_patch() {
        // What kubectl sends after a server-side apply over a client-side-applied object.
        let doc = json!({"metadata":{"name":"x","resourceVersion":"1054","managedFields":[{"manager":"old"}]}});
        let out = apply_bytes(
            &doc,
            br#"[{"op":"replace","path":"/metadata/managedFields","value":[{"manager":"kubectl","operation":"Apply"}]},{"op":"replace","path":"/metadata/resourceVersion","value":"1054"}]"#,
        )
        .unwrap();
        assert_eq!(
            out["metadata"]["managedFields"],
            json!([{"manager":"kubectl","operation":"Apply"}])
        );
    }
}
