//! Priority admission (upstream's `Priority` admission plugin) and the built-in
//! PriorityClasses.
//!
//! - A pod created without `spec.priorityClassName` takes the global default class (the
//!   one with `globalDefault: true`; with several, the lowest value, as upstream picks), or
//!   priority 0 when there is none. A pod naming a class gets that class's value and
//!   preemption policy; an unknown class is a 403. A pod that sets `spec.priority` or
//!   `spec.preemptionPolicy` to anything but what its class resolves to is a 403 too.
//! - An update keeps the priority the create resolved when the new object leaves it out
//!   (validation forbids changing it).
//! - A PriorityClass may be `globalDefault` only while no other class is (403 otherwise).
//! - `system-node-critical` and `system-cluster-critical` exist from the first start.
//!
//! Classes are read from the store on each pod create (a get, or a range over the few
//! classes when the pod names none), so a class is usable the moment its create returns.

use serde_json::{Value, json};
use store::RangeRequest;

use super::objects;
use crate::registry::ResourceDef;
use crate::server::App;
use crate::status::{ApiError, qualified_resource};
use crate::validation::SYSTEM_PRIORITY_CLASSES;

/// The priority of a pod when no class names one and no class is the global default.
const DEFAULT_PRIORITY_WITHOUT_CLASS: i64 = 0;

/// At most this many classes are read to find the global default (clusters hold a handful).
const MAX_CLASSES: u64 = 10_000;

const DEFAULT_PREEMPTION: &str = "PreemptLowerPriority";

/// What a class resolves a pod to.
#[derive(Debug, Clone, PartialEq)]
struct Resolved {
    class: String,
    value: i64,
    preemption: String,
}

fn class_def(app: &App) -> Result<std::sync::Arc<ResourceDef>, ApiError> {
    app.registry()
        .lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .cloned()
        .ok_or_else(|| ApiError::internal("no priorityclasses resource"))
}

fn resolved_from(name: &str, class: &Value) -> Resolved {
    Resolved {
        class: name.to_string(),
        value: class.get("value").and_then(Value::as_i64).unwrap_or(0),
        preemption: class
            .get("preemptionPolicy")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_PREEMPTION)
            .to_string(),
    }
}

async fn read_class(app: &App, def: &ResourceDef, name: &str) -> Result<Option<Value>, ApiError> {
    let key = super::object_key(def, None, name);
    let Some(kv) = app.backend.get(key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&kv.value.raw)
        .map(Some)
        .map_err(ApiError::internal)
}

/// The global default class, if any: the lowest value among those marked default.
async fn global_default(app: &App, def: &ResourceDef) -> Result<Option<Resolved>, ApiError> {
    let prefix = super::object_key(def, None, "");
    let resp = app
        .backend
        .range(RangeRequest {
            limit: Some(MAX_CLASSES),
            ..RangeRequest::prefix(prefix)
        })
        .await?;
    Ok(pick_global_default(resp.kvs.iter().filter_map(|kv| {
        serde_json::from_slice::<Value>(&kv.value.raw).ok()
    })))
}

fn pick_global_default(classes: impl Iterator<Item = Value>) -> Option<Resolved> {
    classes
        .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
        .map(|c| {
            let name = c
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            resolved_from(&name, &c)
        })
        .min_by_key(|r| r.value)
}

fn pod_forbidden(pod: &Value, why: impl std::fmt::Display) -> ApiError {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    ApiError::forbidden(format!("pods \"{name}\" is forbidden: {why}"))
}

/// Resolves a new pod's priority (pod create, after defaulting, before validation).
pub(crate) async fn admit_pod_create(app: &App, pod: &mut Value) -> Result<(), ApiError> {
    let def = class_def(app)?;
    let named = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let resolved = if named.is_empty() {
        global_default(app, &def).await?
    } else {
        match read_class(app, &def, &named).await? {
            Some(c) => Some(resolved_from(&named, &c)),
            None => {
                return Err(pod_forbidden(
                    pod,
                    format_args!("no PriorityClass with name {named} was found"),
                ));
            }
        }
    };
    apply_resolved(pod, resolved.as_ref())
}

/// Writes the resolution into the pod, refusing values the pod set that disagree with it.
fn apply_resolved(pod: &mut Value, resolved: Option<&Resolved>) -> Result<(), ApiError> {
    let value = resolved.map_or(DEFAULT_PRIORITY_WITHOUT_CLASS, |r| r.value);
    let preemption = resolved.map_or(DEFAULT_PREEMPTION, |r| r.preemption.as_str());
    if let Some(given) = pod.pointer("/spec/priority").filter(|v| !v.is_null())
        && given.as_i64() != Some(value)
    {
        return Err(pod_forbidden(
            pod,
            format_args!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            ),
        ));
    }
    if let Some(given) = pod
        .pointer("/spec/preemptionPolicy")
        .and_then(Value::as_str)
        && given != preemption
    {
        return Err(pod_forbidden(
            pod,
            format_args!(
                "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {preemption} from the given PriorityClass name"
            ),
        ));
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if let Some(r) = resolved {
        spec.insert("priorityClassName".into(), json!(r.class));
    }
    spec.insert("priority".into(), json!(value));
    spec.insert("preemptionPolicy".into(), json!(preemption));
    Ok(())
}

/// On a pod update: keeps the priority and preemption policy the create resolved when the
/// new object leaves them out (a `replace` from a manifest), as upstream's plugin does.
pub(crate) fn keep_resolved_priority(old: &Value, new: &mut Value) {
    let Some(old_spec) = old.get("spec").and_then(Value::as_object) else {
        return;
    };
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for field in ["priority", "preemptionPolicy"] {
        let missing = spec.get(field).is_none_or(Value::is_null);
        if let (true, Some(v)) = (missing, old_spec.get(field)) {
            spec.insert(field.into(), v.clone());
        }
    }
}

/// A PriorityClass create or update: at most one class is the global default.
pub(crate) async fn admit_class(
    app: &App,
    def: &ResourceDef,
    class: &Value,
) -> Result<(), ApiError> {
    if class.get("globalDefault").and_then(Value::as_bool) != Some(true) {
        return Ok(());
    }
    let name = class
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(other) = global_default(app, def).await?
        && other.class != name
    {
        return Err(ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: PriorityClass {} is already marked as default. Only one default can exist",
            qualified_resource(&def.group, &def.plural),
            other.class
        )));
    }
    Ok(())
}

/// Creates the built-in classes if missing (first start, or after someone deleted one).
pub(crate) async fn ensure_system_classes(app: &App) -> Result<(), ApiError> {
    let def = class_def(app)?;
    for (name, value, description) in SYSTEM_PRIORITY_CLASSES {
        let obj = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "description": description});
        match objects::create_object(app, &def, None, obj, "kubeshard", false).await {
            Ok(_) => tracing::info!("created priority class {name}"),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn no_class_and_no_default_is_priority_zero() {
        let mut p = pod(json!({"containers": []}));
        apply_resolved(&mut p, None).unwrap();
        assert_eq!(p.pointer("/spec/priority"), Some(&json!(0)));
        assert_eq!(
            p.pointer("/spec/preemptionPolicy"),
            Some(&json!("PreemptLowerPriority"))
        );
        assert!(p.pointer("/spec/priorityClassName").is_none());
    }

    #[test]
    fn a_class_sets_name_value_and_policy_and_refuses_disagreeing_values() {
        let r = Resolved {
            class: "high".into(),
            value: 1000,
            preemption: "Never".into(),
        };
        let mut p = pod(json!({}));
        apply_resolved(&mut p, Some(&r)).unwrap();
        assert_eq!(p.pointer("/spec/priorityClassName"), Some(&json!("high")));
        assert_eq!(p.pointer("/spec/priority"), Some(&json!(1000)));
        assert_eq!(p.pointer("/spec/preemptionPolicy"), Some(&json!("Never")));
        // Agreeing values are fine.
        let mut same = pod(json!({"priority": 1000, "preemptionPolicy": "Never"}));
        apply_resolved(&mut same, Some(&r)).unwrap();
        let e = apply_resolved(&mut pod(json!({"priority": 5})), Some(&r)).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message
                .contains("the integer value of priority (5) must not be provided"),
            "{}",
            e.message
        );
        let e = apply_resolved(
            &mut pod(json!({"preemptionPolicy": "PreemptLowerPriority"})),
            Some(&r),
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("PreemptionPolicy (PreemptLowerPriority)")
        );
    }

    #[test]
    fn global_default_is_the_lowest_marked_class() {
        let classes = vec![
            json!({"metadata": {"name": "a"}, "value": 50, "globalDefault": true}),
            json!({"metadata": {"name": "b"}, "value": 10, "globalDefault": true}),
            json!({"metadata": {"name": "c"}, "value": 1}),
        ];
        let d = pick_global_default(classes.into_iter()).unwrap();
        assert_eq!((d.class.as_str(), d.value), ("b", 10));
        assert_eq!(d.preemption, "PreemptLowerPriority");
        assert!(pick_global_default(std::iter::empty()).is_none());
    }

    #[test]
    fn updates_keep_the_resolved_priority() {
        let old = pod(json!({"priority": 7, "preemptionPolicy": "Never"}));
        let mut new = pod(json!({"containers": []}));
        keep_resolved_priority(&old, &mut new);
        assert_eq!(new.pointer("/spec/priority"), Some(&json!(7)));
        assert_eq!(new.pointer("/spec/preemptionPolicy"), Some(&json!("Never")));
        let mut changed = pod(json!({"priority": 9}));
        keep_resolved_priority(&old, &mut changed);
        assert_eq!(changed.pointer("/spec/priority"), Some(&json!(9)));
    }
}
