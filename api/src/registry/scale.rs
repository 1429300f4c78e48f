//! The `scale` subresource: an object as `autoscaling/v1 Scale`, and a Scale's replicas
//! written back, for built-in workloads and CRDs with `subresources.scale`.

use serde_json::{Map, Value, json};

use super::ResourceDef;
use crate::table::printers::{format_labels, selector_string};

/// Why a scale request cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScaleError {
    /// The resource has no scale subresource (404).
    #[error("the server could not find the requested resource")]
    NoScale,
    /// The replicas value is missing or negative (422).
    #[error("spec.replicas: Invalid value: {0}: must be greater than or equal to 0")]
    BadReplicas(i64),
}

fn simple_path(p: &str) -> Vec<&str> {
    p.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .collect()
}

fn get_path<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(*k))
}

/// A dotted path split into keys.
type Path = Vec<String>;

/// `(spec replicas path, status replicas path, selector path)` for a resource.
fn paths(def: &ResourceDef) -> Option<(Path, Path, Option<Path>)> {
    let own = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
    if let Some(crd) = def.crd() {
        let s = crd.scale.as_ref()?;
        return Some((
            own(simple_path(&s.spec_replicas_path)),
            own(simple_path(&s.status_replicas_path)),
            s.label_selector_path
                .as_deref()
                .map(|p| own(simple_path(p))),
        ));
    }
    def.subresource("scale")?;
    Some((
        own(vec!["spec", "replicas"]),
        own(vec!["status", "replicas"]),
        None,
    ))
}

/// The object as an `autoscaling/v1 Scale`.
pub fn scale_of(def: &ResourceDef, obj: &Value) -> Result<Value, ScaleError> {
    let (spec_p, status_p, sel_p) = paths(def).ok_or(ScaleError::NoScale)?;
    let spec_p: Vec<&str> = spec_p.iter().map(String::as_str).collect();
    let status_p: Vec<&str> = status_p.iter().map(String::as_str).collect();
    let is_crd = def.crd().is_some();
    let spec_replicas = get_path(obj, &spec_p)
        .and_then(Value::as_i64)
        .unwrap_or(if is_crd { 0 } else { 1 });
    let status_replicas = get_path(obj, &status_p)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = match sel_p {
        Some(p) => {
            let p: Vec<&str> = p.iter().map(String::as_str).collect();
            get_path(obj, &p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        }
        None if def.group.is_empty() => {
            let s = format_labels(obj.pointer("/spec/selector"));
            if s == "<none>" { String::new() } else { s }
        }
        None => selector_string(obj.pointer("/spec/selector")),
    };
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut m = Map::new();
    for k in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(k) {
            m.insert(k.to_owned(), v.clone());
        }
    }
    let mut status = json!({"replicas": status_replicas});
    if !selector.is_empty() {
        status["selector"] = json!(selector);
    }
    Ok(
        json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": m,
              "spec": {"replicas": spec_replicas}, "status": status}),
    )
}

/// Writes a Scale's `spec.replicas` into the object (the caller then stores it like an
/// update; `metadata.resourceVersion` of the Scale is the object's precondition).
pub fn apply_scale(def: &ResourceDef, obj: &mut Value, scale: &Value) -> Result<(), ScaleError> {
    let (spec_p, _, _) = paths(def).ok_or(ScaleError::NoScale)?;
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas < 0 {
        return Err(ScaleError::BadReplicas(replicas));
    }
    let mut cur = obj;
    let Some((last, parents)) = spec_p.split_last() else {
        return Err(ScaleError::NoScale);
    };
    for k in parents {
        if !cur.get(k.as_str()).is_some_and(Value::is_object)
            && let Some(m) = cur.as_object_mut()
        {
            m.insert(k.clone(), json!({}));
        }
        let Some(next) = cur.get_mut(k.as_str()) else {
            return Err(ScaleError::NoScale);
        };
        cur = next;
    }
    if let Some(m) = cur.as_object_mut() {
        m.insert(last.clone(), json!(replicas));
    }
    Ok(())
}
