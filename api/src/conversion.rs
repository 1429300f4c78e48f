//! Conversion between served versions of one stored resource (pure, no I/O).
//!
//! Only HorizontalPodAutoscaler has more than one built-in version: it is stored as
//! `autoscaling/v2` (as upstream stores it) and also served as `autoscaling/v1`, whose spec
//! has only `targetCPUUtilizationPercentage`. As upstream's `pkg/apis/autoscaling/v1`
//! conversion does, everything v1 cannot express travels in annotations so a v1 client's
//! read-modify-write keeps it:
//! - [`METRICS_ANNOTATION`], spec metrics other than CPU utilization (v1 `MetricSpec` shape);
//! - [`CURRENT_METRICS_ANNOTATION`], `status.currentMetrics` (v1 `MetricStatus` shape);
//! - [`CONDITIONS_ANNOTATION`], `status.conditions`;
//! - [`BEHAVIOR_ANNOTATION`], `spec.behavior`.
//!
//! The annotations never reach storage: v1 -> v2 folds them back and removes them.

use serde_json::{Map, Value, json};

/// Spec metrics v1 has no field for.
pub const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// `status.currentMetrics` of the v2 object.
pub const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// `status.conditions` of the v2 object.
pub const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
/// `spec.behavior` of the v2 object.
pub const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

const ROUND_TRIP: [&str; 4] = [
    METRICS_ANNOTATION,
    CURRENT_METRICS_ANNOTATION,
    CONDITIONS_ANNOTATION,
    BEHAVIOR_ANNOTATION,
];

/// An object that cannot be converted (a malformed round-trip annotation).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConversionError(pub String);

/// Whether `(group, version, kind)` is served by converting another version's storage;
/// returns the stored version.
pub fn stored_version(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    (group == "autoscaling" && version == "v1" && kind == "HorizontalPodAutoscaler").then_some("v2")
}

fn obj(v: &Value) -> Option<&Map<String, Value>> {
    v.as_object()
}

fn is_cpu_utilization(m: &Value) -> Option<i64> {
    if m.get("type").and_then(Value::as_str) != Some("Resource") {
        return None;
    }
    let r = m.get("resource")?;
    if r.get("name").and_then(Value::as_str) != Some("cpu") {
        return None;
    }
    let t = r.get("target")?;
    if t.get("type").and_then(Value::as_str) != Some("Utilization") {
        return None;
    }
    t.get("averageUtilization").and_then(Value::as_i64)
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<&Value>) {
    if let Some(v) = v.filter(|v| !v.is_null()) {
        m.insert(k.to_owned(), v.clone());
    }
}

/// A v2 `MetricSpec` in v1's (v2beta1-like) shape.
fn spec_metric_to_v1(m: &Value) -> Value {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
    let mut out = Map::new();
    out.insert("type".into(), json!(ty));
    let target = |s: &Value| s.get("target").cloned().unwrap_or(Value::Null);
    match ty {
        "Resource" | "ContainerResource" => {
            let key = if ty == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            if let Some(s) = m.get(key) {
                let t = target(s);
                let mut r = Map::new();
                put(&mut r, "name", s.get("name"));
                put(&mut r, "container", s.get("container"));
                put(
                    &mut r,
                    "targetAverageUtilization",
                    t.get("averageUtilization"),
                );
                put(&mut r, "targetAverageValue", t.get("averageValue"));
                out.insert(key.into(), Value::Object(r));
            }
        }
        "Pods" => {
            if let Some(s) = m.get("pods") {
                let t = target(s);
                let mut r = Map::new();
                put(&mut r, "metricName", s.pointer("/metric/name"));
                put(&mut r, "selector", s.pointer("/metric/selector"));
                put(&mut r, "targetAverageValue", t.get("averageValue"));
                out.insert("pods".into(), Value::Object(r));
            }
        }
        "Object" => {
            if let Some(s) = m.get("object") {
                let t = target(s);
                let mut r = Map::new();
                put(&mut r, "target", s.get("describedObject"));
                put(&mut r, "metricName", s.pointer("/metric/name"));
                put(&mut r, "selector", s.pointer("/metric/selector"));
                put(&mut r, "targetValue", t.get("value"));
                put(&mut r, "averageValue", t.get("averageValue"));
                out.insert("object".into(), Value::Object(r));
            }
        }
        "External" => {
            if let Some(s) = m.get("external") {
                let t = target(s);
                let mut r = Map::new();
                put(&mut r, "metricName", s.pointer("/metric/name"));
                put(&mut r, "metricSelector", s.pointer("/metric/selector"));
                put(&mut r, "targetValue", t.get("value"));
                put(&mut r, "targetAverageValue", t.get("averageValue"));
                out.insert("external".into(), Value::Object(r));
            }
        }
        _ => {}
    }
    Value::Object(out)
}

fn metric_id(name: Option<&Value>, selector: Option<&Value>) -> Value {
    let mut id = Map::new();
    put(&mut id, "name", name);
    put(&mut id, "selector", selector);
    Value::Object(id)
}

/// A v1-shaped `MetricSpec` (from the annotation) in v2's shape.
fn spec_metric_to_v2(m: &Value) -> Value {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
    let mut out = Map::new();
    out.insert("type".into(), json!(ty));
    match ty {
        "Resource" | "ContainerResource" => {
            let key = if ty == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            if let Some(s) = m.get(key) {
                let mut t = Map::new();
                if let Some(u) = s.get("targetAverageUtilization").filter(|v| !v.is_null()) {
                    t.insert("type".into(), json!("Utilization"));
                    t.insert("averageUtilization".into(), u.clone());
                } else {
                    t.insert("type".into(), json!("AverageValue"));
                    put(&mut t, "averageValue", s.get("targetAverageValue"));
                }
                let mut r = Map::new();
                put(&mut r, "name", s.get("name"));
                put(&mut r, "container", s.get("container"));
                r.insert("target".into(), Value::Object(t));
                out.insert(key.into(), Value::Object(r));
            }
        }
        "Pods" => {
            if let Some(s) = m.get("pods") {
                let mut t = Map::new();
                t.insert("type".into(), json!("AverageValue"));
                put(&mut t, "averageValue", s.get("targetAverageValue"));
                out.insert(
                    "pods".into(),
                    json!({"metric": metric_id(s.get("metricName"), s.get("selector")), "target": t}),
                );
            }
        }
        "Object" => {
            if let Some(s) = m.get("object") {
                let mut t = Map::new();
                if let Some(a) = s.get("averageValue").filter(|v| !v.is_null()) {
                    t.insert("type".into(), json!("AverageValue"));
                    t.insert("averageValue".into(), a.clone());
                } else {
                    t.insert("type".into(), json!("Value"));
                    put(&mut t, "value", s.get("targetValue"));
                }
                let mut r = Map::new();
                put(&mut r, "describedObject", s.get("target"));
                r.insert(
                    "metric".into(),
                    metric_id(s.get("metricName"), s.get("selector")),
                );
                r.insert("target".into(), Value::Object(t));
                out.insert("object".into(), Value::Object(r));
            }
        }
        "External" => {
            if let Some(s) = m.get("external") {
                let mut t = Map::new();
                if let Some(a) = s.get("targetAverageValue").filter(|v| !v.is_null()) {
                    t.insert("type".into(), json!("AverageValue"));
                    t.insert("averageValue".into(), a.clone());
                } else {
                    t.insert("type".into(), json!("Value"));
                    put(&mut t, "value", s.get("targetValue"));
                }
                out.insert(
                    "external".into(),
                    json!({"metric": metric_id(s.get("metricName"), s.get("metricSelector")), "target": t}),
                );
            }
        }
        _ => {}
    }
    Value::Object(out)
}

/// A v2 `MetricStatus` in v1's shape.
fn status_metric_to_v1(m: &Value) -> Value {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
    let mut out = Map::new();
    out.insert("type".into(), json!(ty));
    let cur = |s: &Value| s.get("current").cloned().unwrap_or(Value::Null);
    match ty {
        "Resource" | "ContainerResource" => {
            let key = if ty == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            if let Some(s) = m.get(key) {
                let c = cur(s);
                let mut r = Map::new();
                put(&mut r, "name", s.get("name"));
                put(&mut r, "container", s.get("container"));
                put(
                    &mut r,
                    "currentAverageUtilization",
                    c.get("averageUtilization"),
                );
                put(&mut r, "currentAverageValue", c.get("averageValue"));
                out.insert(key.into(), Value::Object(r));
            }
        }
        "Pods" => {
            if let Some(s) = m.get("pods") {
                let c = cur(s);
                let mut r = Map::new();
                put(&mut r, "metricName", s.pointer("/metric/name"));
                put(&mut r, "selector", s.pointer("/metric/selector"));
                put(&mut r, "currentAverageValue", c.get("averageValue"));
                out.insert("pods".into(), Value::Object(r));
            }
        }
        "Object" => {
            if let Some(s) = m.get("object") {
                let c = cur(s);
                let mut r = Map::new();
                put(&mut r, "target", s.get("describedObject"));
                put(&mut r, "metricName", s.pointer("/metric/name"));
                put(&mut r, "selector", s.pointer("/metric/selector"));
                put(&mut r, "currentValue", c.get("value"));
                put(&mut r, "averageValue", c.get("averageValue"));
                out.insert("object".into(), Value::Object(r));
            }
        }
        "External" => {
            if let Some(s) = m.get("external") {
                let c = cur(s);
                let mut r = Map::new();
                put(&mut r, "metricName", s.pointer("/metric/name"));
                put(&mut r, "metricSelector", s.pointer("/metric/selector"));
                put(&mut r, "currentValue", c.get("value"));
                put(&mut r, "currentAverageValue", c.get("averageValue"));
                out.insert("external".into(), Value::Object(r));
            }
        }
        _ => {}
    }
    Value::Object(out)
}

/// A v1-shaped `MetricStatus` (from the annotation) in v2's shape.
fn status_metric_to_v2(m: &Value) -> Value {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
    let mut out = Map::new();
    out.insert("type".into(), json!(ty));
    match ty {
        "Resource" | "ContainerResource" => {
            let key = if ty == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            if let Some(s) = m.get(key) {
                let mut c = Map::new();
                put(
                    &mut c,
                    "averageUtilization",
                    s.get("currentAverageUtilization"),
                );
                put(&mut c, "averageValue", s.get("currentAverageValue"));
                let mut r = Map::new();
                put(&mut r, "name", s.get("name"));
                put(&mut r, "container", s.get("container"));
                r.insert("current".into(), Value::Object(c));
                out.insert(key.into(), Value::Object(r));
            }
        }
        "Pods" => {
            if let Some(s) = m.get("pods") {
                let mut c = Map::new();
                put(&mut c, "averageValue", s.get("currentAverageValue"));
                out.insert(
                    "pods".into(),
                    json!({"metric": metric_id(s.get("metricName"), s.get("selector")), "current": c}),
                );
            }
        }
        "Object" => {
            if let Some(s) = m.get("object") {
                let mut c = Map::new();
                put(&mut c, "value", s.get("currentValue"));
                put(&mut c, "averageValue", s.get("averageValue"));
                let mut r = Map::new();
                put(&mut r, "describedObject", s.get("target"));
                r.insert(
                    "metric".into(),
                    metric_id(s.get("metricName"), s.get("selector")),
                );
                r.insert("current".into(), Value::Object(c));
                out.insert("object".into(), Value::Object(r));
            }
        }
        "External" => {
            if let Some(s) = m.get("external") {
                let mut c = Map::new();
                put(&mut c, "value", s.get("currentValue"));
                put(&mut c, "averageValue", s.get("currentAverageValue"));
                out.insert(
                    "external".into(),
                    json!({"metric": metric_id(s.get("metricName"), s.get("metricSelector")), "current": c}),
                );
            }
        }
        _ => {}
    }
    Value::Object(out)
}

fn annotations_mut(o: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = o
        .as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let meta = meta.as_object_mut()?;
    let a = meta.entry("annotations").or_insert_with(|| json!({}));
    if !a.is_object() {
        *a = json!({});
    }
    a.as_object_mut()
}

fn drop_empty_annotations(o: &mut Value) {
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut)
        && meta
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        meta.remove("annotations");
    }
}

/// A stored `autoscaling/v2` HorizontalPodAutoscaler as `autoscaling/v1` returns it.
pub fn hpa_v2_to_v1(v2: &Value) -> Value {
    let mut out = v2.clone();
    let Some(o) = out.as_object_mut() else {
        return out;
    };
    o.insert("apiVersion".into(), json!("autoscaling/v1"));
    let spec = v2.get("spec").and_then(obj).cloned().unwrap_or_default();
    let status = v2.get("status").and_then(obj).cloned();
    let metrics: Vec<Value> = spec
        .get("metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut cpu = None;
    let mut other = Vec::new();
    for m in &metrics {
        match is_cpu_utilization(m) {
            Some(u) if cpu.is_none() => cpu = Some(u),
            _ => other.push(spec_metric_to_v1(m)),
        }
    }
    let mut s1 = Map::new();
    put(&mut s1, "scaleTargetRef", spec.get("scaleTargetRef"));
    put(&mut s1, "minReplicas", spec.get("minReplicas"));
    put(&mut s1, "maxReplicas", spec.get("maxReplicas"));
    if let Some(u) = cpu {
        s1.insert("targetCPUUtilizationPercentage".into(), json!(u));
    }
    if v2.get("spec").is_some() {
        o.insert("spec".into(), Value::Object(s1));
    }
    let mut ann: Vec<(&str, String)> = Vec::new();
    if !other.is_empty() {
        ann.push((METRICS_ANNOTATION, Value::Array(other).to_string()));
    }
    if let Some(b) = spec.get("behavior").filter(|b| !b.is_null()) {
        ann.push((BEHAVIOR_ANNOTATION, b.to_string()));
    }
    if let Some(st) = status {
        let mut s1 = Map::new();
        put(&mut s1, "observedGeneration", st.get("observedGeneration"));
        put(&mut s1, "lastScaleTime", st.get("lastScaleTime"));
        s1.insert(
            "currentReplicas".into(),
            st.get("currentReplicas").cloned().unwrap_or(json!(0)),
        );
        s1.insert(
            "desiredReplicas".into(),
            st.get("desiredReplicas").cloned().unwrap_or(json!(0)),
        );
        let current: Vec<Value> = st
            .get("currentMetrics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for m in &current {
            if m.get("type").and_then(Value::as_str) == Some("Resource")
                && m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
                && let Some(u) = m.pointer("/resource/current/averageUtilization")
            {
                s1.insert("currentCPUUtilizationPercentage".into(), u.clone());
                break;
            }
        }
        if !current.is_empty() {
            let v1: Vec<Value> = current.iter().map(status_metric_to_v1).collect();
            ann.push((CURRENT_METRICS_ANNOTATION, Value::Array(v1).to_string()));
        }
        if let Some(c) = st
            .get("conditions")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
        {
            ann.push((CONDITIONS_ANNOTATION, Value::Array(c.clone()).to_string()));
        }
        o.insert("status".into(), Value::Object(s1));
    }
    if let Some(a) = annotations_mut(&mut out) {
        for k in ROUND_TRIP {
            a.remove(k);
        }
        for (k, v) in ann {
            a.insert(k.to_owned(), Value::String(v));
        }
    }
    drop_empty_annotations(&mut out);
    out
}

fn parse_annotation(a: &Map<String, Value>, key: &str) -> Result<Option<Value>, ConversionError> {
    match a.get(key).and_then(Value::as_str) {
        None => Ok(None),
        Some(s) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| ConversionError(format!("annotation {key}: {e}"))),
    }
}

/// An `autoscaling/v1` HorizontalPodAutoscaler (as a client sent it) in the stored
/// `autoscaling/v2` form. A missing `apiVersion`/`kind` stays missing.
pub fn hpa_v1_to_v2(v1: &Value) -> Result<Value, ConversionError> {
    let mut out = v1.clone();
    let ann = v1
        .pointer("/metadata/annotations")
        .and_then(obj)
        .cloned()
        .unwrap_or_default();
    let Some(o) = out.as_object_mut() else {
        return Err(ConversionError("the body must be a JSON object".into()));
    };
    if o.get("apiVersion").and_then(Value::as_str) == Some("autoscaling/v1") {
        o.insert("apiVersion".into(), json!("autoscaling/v2"));
    }
    if let Some(spec) = v1.get("spec").and_then(obj) {
        let mut s2 = Map::new();
        put(&mut s2, "scaleTargetRef", spec.get("scaleTargetRef"));
        put(&mut s2, "minReplicas", spec.get("minReplicas"));
        put(&mut s2, "maxReplicas", spec.get("maxReplicas"));
        let mut metrics = Vec::new();
        if let Some(u) = spec
            .get("targetCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": u}}}));
        }
        if let Some(Value::Array(other)) = parse_annotation(&ann, METRICS_ANNOTATION)? {
            metrics.extend(other.iter().map(spec_metric_to_v2));
        }
        if !metrics.is_empty() {
            s2.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(b) = parse_annotation(&ann, BEHAVIOR_ANNOTATION)? {
            s2.insert("behavior".into(), b);
        }
        o.insert("spec".into(), Value::Object(s2));
    }
    if let Some(st) = v1.get("status").and_then(obj) {
        let mut s2 = Map::new();
        put(&mut s2, "observedGeneration", st.get("observedGeneration"));
        put(&mut s2, "lastScaleTime", st.get("lastScaleTime"));
        put(&mut s2, "currentReplicas", st.get("currentReplicas"));
        s2.insert(
            "desiredReplicas".into(),
            st.get("desiredReplicas").cloned().unwrap_or(json!(0)),
        );
        if let Some(Value::Array(cur)) = parse_annotation(&ann, CURRENT_METRICS_ANNOTATION)? {
            // The annotation has more than the CPU percentage: it wins.
            s2.insert(
                "currentMetrics".into(),
                Value::Array(cur.iter().map(status_metric_to_v2).collect()),
            );
        } else if let Some(u) = st
            .get("currentCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            s2.insert(
                "currentMetrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu",
                    "current": {"averageUtilization": u}}}]),
            );
        }
        if let Some(c) = parse_annotation(&ann, CONDITIONS_ANNOTATION)? {
            s2.insert("conditions".into(), c);
        }
        o.insert("status".into(), Value::Object(s2));
    }
    if let Some(a) = out
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_object_mut)
    {
        for k in ROUND_TRIP {
            a.remove(k);
        }
    }
    drop_empty_annotations(&mut out);
    Ok(out)
}

/// A response body of the stored version (an HPA, an HPA list, a Table, a watch event)
/// rewritten for a v1 client. Anything else (a `Status`) is returned as it is.
pub fn response_to_v1(v: &mut Value) {
    match v.get("kind").and_then(Value::as_str) {
        Some("HorizontalPodAutoscaler") => *v = hpa_v2_to_v1(v),
        Some("HorizontalPodAutoscalerList") => {
            v["apiVersion"] = json!("autoscaling/v1");
            if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
                for i in items {
                    *i = hpa_v2_to_v1(i);
                }
            }
        }
        Some("Table") => {
            if let Some(rows) = v.get_mut("rows").and_then(Value::as_array_mut) {
                for r in rows {
                    if let Some(o) = r.get_mut("object") {
                        response_to_v1(o);
                    }
                }
            }
        }
        _ => {
            // A watch event: {"type": ..., "object": ...}.
            if v.get("type").is_some()
                && let Some(o) = v.get_mut("object")
            {
                response_to_v1(o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_full() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "annotations": {"keep": "me"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                    {"type": "Object", "object": {"describedObject": {"apiVersion": "v1", "kind": "Service", "name": "s"},
                        "metric": {"name": "hits"}, "target": {"type": "Value", "value": "3"}}},
                    {"type": "External", "external": {"metric": {"name": "queue", "selector": {"matchLabels": {"q": "a"}}},
                        "target": {"type": "AverageValue", "averageValue": "30"}}},
                    {"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "app",
                        "target": {"type": "Utilization", "averageUtilization": 60}}}
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}
            },
            "status": {
                "currentReplicas": 3, "desiredReplicas": 4, "observedGeneration": 1,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 91, "averageValue": "455m"}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "current": {"averageValue": "12"}}}
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}]
            }
        })
    }

    #[test]
    fn v2_to_v1_maps_cpu_and_keeps_the_rest_in_annotations() {
        let v1 = hpa_v2_to_v1(&v2_full());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 80);
        assert_eq!(v1["spec"]["minReplicas"], 2);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 91);
        assert_eq!(v1["status"]["desiredReplicas"], 4);
        let a = &v1["metadata"]["annotations"];
        assert_eq!(a["keep"], "me");
        let other: Value =
            serde_json::from_str(a[METRICS_ANNOTATION].as_str().expect("metrics")).expect("json");
        assert_eq!(other.as_array().map(Vec::len), Some(5));
        assert_eq!(other[0]["resource"]["targetAverageValue"], "100Mi");
        assert_eq!(other[1]["pods"]["metricName"], "qps");
        assert_eq!(other[2]["object"]["targetValue"], "3");
        assert_eq!(other[3]["external"]["targetAverageValue"], "30");
        assert_eq!(
            other[4]["containerResource"]["targetAverageUtilization"],
            60
        );
        assert!(a[BEHAVIOR_ANNOTATION].is_string());
        assert!(a[CONDITIONS_ANNOTATION].is_string());
        assert!(a[CURRENT_METRICS_ANNOTATION].is_string());
    }

    #[test]
    fn v2_v1_v2_round_trips() {
        let v2 = v2_full();
        let back = hpa_v1_to_v2(&hpa_v2_to_v1(&v2)).expect("convert");
        assert_eq!(back, v2);
    }

    #[test]
    fn v1_cpu_target_becomes_a_resource_metric() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                     "minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 80}});
        let v2 = hpa_v1_to_v2(&v1).expect("convert");
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}])
        );
        assert!(v2.pointer("/metadata/annotations").is_none());
        assert_eq!(hpa_v2_to_v1(&v2), v1);
    }

    #[test]
    fn malformed_annotation_is_an_error() {
        let v1 = json!({"metadata": {"annotations": {METRICS_ANNOTATION: "not json"}},
            "spec": {"maxReplicas": 1}});
        assert!(hpa_v1_to_v2(&v1).is_err());
    }

    #[test]
    fn lists_tables_and_events_are_rewritten() {
        let mut list = json!({"kind": "HorizontalPodAutoscalerList", "apiVersion": "autoscaling/v2",
            "items": [v2_full()]});
        response_to_v1(&mut list);
        assert_eq!(list["apiVersion"], "autoscaling/v1");
        assert_eq!(
            list["items"][0]["spec"]["targetCPUUtilizationPercentage"],
            80
        );
        let mut ev = json!({"type": "ADDED", "object": v2_full()});
        response_to_v1(&mut ev);
        assert_eq!(ev["object"]["apiVersion"], "autoscaling/v1");
        let mut st = json!({"kind": "Status", "apiVersion": "v1", "code": 404});
        let before = st.clone();
        response_to_v1(&mut st);
        assert_eq!(st, before);
    }
}
