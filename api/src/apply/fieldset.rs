//! Field paths and field sets in the `FieldsV1` format of `metadata.managedFields`.
//!
//! A path is a list of elements: `f:<member>`, `k:<JSON object of key members>` for an element
//! of an associative list, `v:<JSON value>` for an element of a set. A [`FieldSet`] is a set of
//! such paths; in `FieldsV1` each path is a chain of nested objects ending in `{}`, and a path
//! that is both owned and has owned children carries a `".": {}` member.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::patch::schema::{FieldMeta, NoSchema, PatchSchema};

/// One path of a field set.
pub type Path = Vec<String>;

/// A set of field paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Path>);

/// `FieldsV1` that is not an object of objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid FieldsV1: {0}")]
pub struct FieldsV1Error(pub String);

impl FieldSet {
    /// Parses a `fieldsV1` object.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, FieldsV1Error> {
        let mut out = BTreeSet::new();
        let Value::Object(m) = v else {
            return Err(FieldsV1Error("fieldsV1 must be an object".into()));
        };
        let mut stack: Vec<(Path, &Map<String, Value>)> = vec![(Vec::new(), m)];
        while let Some((path, node)) = stack.pop() {
            if path.len() > 64 {
                return Err(FieldsV1Error("fieldsV1 nested too deeply".into()));
            }
            for (k, child) in node {
                if k == "." {
                    out.insert(path.clone());
                    continue;
                }
                if !(k.starts_with("f:")
                    || k.starts_with("k:")
                    || k.starts_with("v:")
                    || k.starts_with("i:"))
                {
                    return Err(FieldsV1Error(format!("unknown path element {k:?}")));
                }
                let Value::Object(cm) = child else {
                    return Err(FieldsV1Error(format!("{k:?} must map to an object")));
                };
                let mut p = path.clone();
                p.push(k.clone());
                if cm.is_empty() {
                    out.insert(p);
                } else {
                    stack.push((p, cm));
                }
            }
        }
        Ok(FieldSet(out))
    }

    /// The `fieldsV1` object of this set.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for (i, el) in path.iter().enumerate() {
                // A member path that also has children carries an explicit "." marker.
                if i > 0 && self.0.contains(&path[..i]) {
                    node.insert(".".into(), Value::Object(Map::new()));
                }
                let next = node
                    .entry(el.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                let Some(m) = next.as_object_mut() else {
                    break;
                };
                node = m;
            }
        }
        Value::Object(root)
    }

    /// Whether `path` or one of its descendants is in the set.
    pub fn owns_or_has_descendant(&self, path: &Path) -> bool {
        self.0
            .range(path.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    /// Members of `self` not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Upstream's human form of a path: `.spec.containers[name="c"].image`, `.metadata.finalizers[="x"]`.
pub fn path_string(path: &Path) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let keys: Vec<String> = match serde_json::from_str::<Value>(k) {
                Ok(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                _ => vec![k.to_string()],
            };
            out.push_str(&format!("[{}]", keys.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        } else if let Some(i) = el.strip_prefix("i:") {
            out.push_str(&format!("[{i}]"));
        }
    }
    out
}

/// How a list is treated, from its member's metadata.
pub(crate) enum ListKind<'a> {
    /// Elements identified by these key members.
    Map(Vec<&'a str>),
    /// Scalars identified by value.
    Set,
    /// The whole list is one value.
    Atomic,
}

pub(crate) fn list_kind<'a>(meta: Option<&FieldMeta<'a>>, list: &[Value]) -> ListKind<'a> {
    match meta {
        Some(m) if m.keys().is_some() && list.iter().all(Value::is_object) => {
            ListKind::Map(m.keys().unwrap_or_default())
        }
        Some(m) if m.merge && m.merge_key.is_none() && !list.iter().any(is_composite) => {
            ListKind::Set
        }
        _ => ListKind::Atomic,
    }
}

fn is_composite(v: &Value) -> bool {
    v.is_object() || v.is_array()
}

/// The key object of an associative-list element (only the key members it has), or `None`.
pub(crate) fn item_key(item: &Value, keys: &[&str]) -> Option<Map<String, Value>> {
    let mut k = Map::new();
    for name in keys {
        if let Some(v) = item.get(*name) {
            k.insert((*name).to_string(), v.clone());
        }
    }
    (!k.is_empty()).then_some(k)
}

/// `k:` element for a key object (members in name order, compact JSON).
pub(crate) fn key_element(key: &Map<String, Value>) -> String {
    let sorted: std::collections::BTreeMap<&String, &Value> = key.iter().collect();
    format!(
        "k:{}",
        serde_json::to_string(&sorted).unwrap_or_else(|_| "{}".into())
    )
}

/// `v:` element for a set value.
pub(crate) fn value_element(v: &Value) -> String {
    format!("v:{}", serde_json::to_string(v).unwrap_or_default())
}

/// Root members that are never tracked (identity and system-maintained metadata).
fn ignored_root(path: &[String]) -> bool {
    match path {
        [one] => matches!(one.as_str(), "f:apiVersion" | "f:kind" | "f:status"),
        [m, f] if m == "f:metadata" => matches!(
            f.as_str(),
            "f:name"
                | "f:namespace"
                | "f:uid"
                | "f:resourceVersion"
                | "f:generation"
                | "f:creationTimestamp"
                | "f:deletionTimestamp"
                | "f:deletionGracePeriodSeconds"
                | "f:managedFields"
                | "f:selfLink"
        ),
        _ => false,
    }
}

/// The field set of an object: every leaf value, every associative-list element and every set
/// element, minus identity and system metadata and `status`.
pub fn fields_of(obj: &Value, schema: &dyn PatchSchema) -> FieldSet {
    let mut out = BTreeSet::new();
    if let Value::Object(m) = obj {
        walk_map(m, schema, &mut Vec::new(), &mut out, 0);
    }
    FieldSet(out)
}

const MAX_DEPTH: usize = 64;

fn walk_map(
    m: &Map<String, Value>,
    schema: &dyn PatchSchema,
    path: &mut Path,
    out: &mut BTreeSet<Path>,
    depth: usize,
) {
    for (k, v) in m {
        path.push(format!("f:{k}"));
        if !ignored_root(path) {
            let meta = schema.field(k);
            walk_value(v, meta.as_ref(), path, out, depth + 1);
        }
        path.pop();
    }
}

fn walk_value(
    v: &Value,
    meta: Option<&FieldMeta<'_>>,
    path: &mut Path,
    out: &mut BTreeSet<Path>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        out.insert(path.clone());
        return;
    }
    let child: &dyn PatchSchema = meta.and_then(|m| m.schema).unwrap_or(&NoSchema);
    match v {
        Value::Object(m) if !m.is_empty() => walk_map(m, child, path, out, depth),
        Value::Array(a) if !a.is_empty() => match list_kind(meta, a) {
            ListKind::Map(keys) => {
                for item in a {
                    let Some(key) = item_key(item, &keys) else {
                        out.insert(path.clone());
                        continue;
                    };
                    path.push(key_element(&key));
                    out.insert(path.clone());
                    if let Value::Object(im) = item {
                        walk_map(im, child, path, out, depth + 1);
                    }
                    path.pop();
                }
            }
            ListKind::Set => {
                for item in a {
                    path.push(value_element(item));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListKind::Atomic => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path` in `obj`, if present.
pub fn value_at<'a>(obj: &'a Value, path: &Path) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        cur = step(cur, el)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    if let Some(f) = el.strip_prefix("f:") {
        return cur.get(f);
    }
    let list = cur.as_array()?;
    if let Some(k) = el.strip_prefix("k:") {
        let Ok(Value::Object(key)) = serde_json::from_str::<Value>(k) else {
            return None;
        };
        return list
            .iter()
            .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
    }
    if let Some(v) = el.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        return list.iter().find(|item| **item == want);
    }
    if let Some(i) = el.strip_prefix("i:") {
        return list.get(i.parse::<usize>().ok()?);
    }
    None
}

/// Removes the value at `path` from `obj` (a member, a list element); absent paths are a no-op.
pub fn remove_at(obj: &mut Value, path: &Path) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for el in parents {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            let found = value_at(cur, &vec![el.clone()]).cloned();
            match (cur.as_array_mut(), found) {
                (Some(list), Some(found)) => list.iter_mut().find(|i| **i == found),
                _ => None,
            }
        };
        let Some(next) = next else {
            return;
        };
        cur = next;
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Value::Object(m) = cur {
            m.remove(f);
        }
        return;
    }
    let found = value_at(cur, &vec![last.clone()]).cloned();
    if let (Some(list), Some(found)) = (cur.as_array_mut(), found)
        && let Some(i) = list.iter().position(|x| *x == found)
    {
        list.remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::schema::builtin_schema;
    use serde_json::json;

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({"f:metadata":{"f:labels":{"f:app":{}}},
            "f:spec":{"f:containers":{"k:{\"name\":\"c\"}":{".":{},"f:image":{},"f:name":{}}}}});
        let set = FieldSet::from_fields_v1(&v).unwrap();
        assert_eq!(set.0.len(), 4, "{set:?}");
        assert_eq!(set.to_fields_v1(), v);
        assert!(FieldSet::from_fields_v1(&json!({"x:bad":{}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"f:a":1})).is_err());
    }

    #[test]
    fn object_fields() {
        let d = json!({"apiVersion":"apps/v1","kind":"Deployment",
            "metadata":{"name":"web","labels":{"app":"web"},"finalizers":["x"]},
            "spec":{"replicas":2,"template":{"spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80}]}],
                "tolerations":[{"key":"k"}]}}},
            "status":{"replicas":2}});
        let set = fields_of(&d, builtin_schema("apps/v1", "Deployment").unwrap());
        let got = set.to_fields_v1();
        assert_eq!(
            got,
            json!({"f:metadata":{"f:finalizers":{"v:\"x\"":{}},"f:labels":{"f:app":{}}},
                "f:spec":{"f:replicas":{},"f:template":{"f:spec":{
                    "f:containers":{"k:{\"name\":\"c\"}":{".":{},"f:image":{},"f:name":{},
                        "f:ports":{"k:{\"containerPort\":80}":{".":{},"f:containerPort":{}}}}},
                    "f:tolerations":{}}}}})
        );
        let p: Path = vec![
            "f:spec".into(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(value_at(&d, &p), Some(&json!("i")));
        assert_eq!(
            path_string(&p),
            ".spec.template.spec.containers[name=\"c\"].image"
        );
        let mut d2 = d.clone();
        remove_at(&mut d2, &p[..5].to_vec());
        assert_eq!(d2["spec"]["template"]["spec"]["containers"], json!([]));
        remove_at(
            &mut d2,
            &vec!["f:metadata".into(), "f:finalizers".into(), "v:\"x\"".into()],
        );
        assert_eq!(d2["metadata"]["finalizers"], json!([]));
    }
}
