//! Per-kind validation (the important parts of kube-apiserver's `pkg/apis/*/validation`).

use serde_json::{Value, json};

use super::errors::FieldError;
use super::names::{self, NameRule};
use crate::registry::ResourceDef;

type Errs = Vec<FieldError>;

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The `metadata.name` rule for a resource.
pub(super) fn name_rule(def: &ResourceDef) -> NameRule {
    if def.crd().is_some() {
        return NameRule::PathSegment;
    }
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

/// `ValidateObjectMeta`: name/generateName, namespace scope, labels, annotations,
/// finalizers, ownerReferences.
pub(super) fn object_meta(def: &ResourceDef, obj: &Value, errs: &mut Errs) {
    let meta = obj.get("metadata").unwrap_or(&Value::Null);
    let name = s(meta, "/name").unwrap_or("");
    let generate = s(meta, "/generateName").unwrap_or("");
    let rule = name_rule(def);
    if name.is_empty() {
        if generate.is_empty() {
            errs.push(FieldError::required(
                "metadata.name",
                "name or generateName is required",
            ));
        } else {
            for m in names::name_errors(rule, generate, true) {
                errs.push(FieldError::invalid(
                    "metadata.generateName",
                    json!(generate),
                    m,
                ));
            }
        }
    } else {
        for m in names::name_errors(rule, name, false) {
            errs.push(FieldError::invalid("metadata.name", json!(name), m));
        }
    }
    if def.group == "batch" && def.kind == "CronJob" && name.len() > 52 {
        errs.push(FieldError::invalid(
            "metadata.name",
            json!(name),
            "must be no more than 52 characters",
        ));
    }
    let ns = s(meta, "/namespace").unwrap_or("");
    if def.namespaced {
        if ns.is_empty() {
            errs.push(FieldError::required("metadata.namespace", ""));
        } else {
            for m in names::dns1123_label(ns) {
                errs.push(FieldError::invalid("metadata.namespace", json!(ns), m));
            }
        }
    } else if !ns.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    labels(meta.get("labels"), "metadata.labels", errs);
    if let Some(a) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0usize;
        for (k, v) in a {
            for m in names::qualified_name(&k.to_ascii_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", json!(k), m));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            errs.push(FieldError::too_long("metadata.annotations", 256 * 1024));
        }
    }
    for (i, f) in arr(meta, "finalizers").iter().enumerate() {
        let f = f.as_str().unwrap_or("");
        for m in names::qualified_name(f) {
            errs.push(FieldError::invalid(
                format!("metadata.finalizers[{i}]"),
                json!(f),
                m,
            ));
        }
    }
    for (i, r) in arr(meta, "ownerReferences").iter().enumerate() {
        for key in ["apiVersion", "kind", "name", "uid"] {
            if s(r, &format!("/{key}")).unwrap_or("").is_empty() {
                let detail = if key == "uid" {
                    "uid must not be empty"
                } else {
                    ""
                };
                let field = format!("metadata.ownerReferences[{i}].{key}");
                if key == "uid" {
                    errs.push(FieldError::invalid(field, json!(""), detail));
                } else {
                    errs.push(FieldError::invalid(
                        field,
                        json!(""),
                        format!("{key} must not be empty"),
                    ));
                }
            }
        }
    }
}

/// `ValidateLabels`.
pub(super) fn labels(l: Option<&Value>, path: &str, errs: &mut Errs) {
    let Some(m) = l.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in m {
        for msg in names::qualified_name(k) {
            errs.push(FieldError::invalid(path, json!(k), msg));
        }
        let v = v.as_str().unwrap_or("");
        for msg in names::label_value(v) {
            errs.push(FieldError::invalid(path, json!(v), msg));
        }
    }
}

fn port_range(v: &Value, path: String, errs: &mut Errs) {
    match v.as_i64() {
        Some(p) if (1..=65535).contains(&p) => {}
        _ => errs.push(FieldError::invalid(
            path,
            v.clone(),
            "must be between 1 and 65535, inclusive",
        )),
    }
}

fn one_of(v: Option<&str>, path: String, allowed: &[&str], required: bool, errs: &mut Errs) {
    match v {
        None | Some("") if required => errs.push(FieldError::required(path, "")),
        None | Some("") => {}
        Some(x) if !allowed.contains(&x) => {
            errs.push(FieldError::not_supported(path, json!(x), allowed))
        }
        Some(_) => {}
    }
}

fn containers(list: &[Value], path: &str, seen: &mut Vec<String>, errs: &mut Errs) {
    for (i, c) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = s(c, "/name").unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else {
            for m in names::dns1123_label(name) {
                errs.push(FieldError::invalid(format!("{p}.name"), json!(name), m));
            }
            if seen.iter().any(|n| n == name) {
                errs.push(FieldError::duplicate(format!("{p}.name"), json!(name)));
            }
            seen.push(name.to_owned());
        }
        if s(c, "/image").unwrap_or("").trim().is_empty() {
            errs.push(FieldError::required(format!("{p}.image"), ""));
        }
        one_of(
            s(c, "/imagePullPolicy"),
            format!("{p}.imagePullPolicy"),
            &["Always", "IfNotPresent", "Never"],
            false,
            errs,
        );
        one_of(
            s(c, "/terminationMessagePolicy"),
            format!("{p}.terminationMessagePolicy"),
            &["File", "FallbackToLogsOnError"],
            false,
            errs,
        );
        let mut port_names: Vec<&str> = Vec::new();
        for (j, port) in arr(c, "ports").iter().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            port_range(
                port.get("containerPort").unwrap_or(&Value::Null),
                format!("{pp}.containerPort"),
                errs,
            );
            if let Some(hp) = port.get("hostPort").filter(|h| h.as_i64() != Some(0)) {
                port_range(hp, format!("{pp}.hostPort"), errs);
            }
            one_of(
                s(port, "/protocol"),
                format!("{pp}.protocol"),
                &["SCTP", "TCP", "UDP"],
                false,
                errs,
            );
            if let Some(n) = s(port, "/name").filter(|n| !n.is_empty()) {
                if port_names.contains(&n) {
                    errs.push(FieldError::duplicate(format!("{pp}.name"), json!(n)));
                }
                port_names.push(n);
            }
        }
        for (j, e) in arr(c, "env").iter().enumerate() {
            if s(e, "/name").unwrap_or("").is_empty() {
                errs.push(FieldError::required(format!("{p}.env[{j}].name"), ""));
            }
        }
        for (j, m) in arr(c, "volumeMounts").iter().enumerate() {
            if s(m, "/name").unwrap_or("").is_empty() {
                errs.push(FieldError::required(
                    format!("{p}.volumeMounts[{j}].name"),
                    "",
                ));
            }
            if s(m, "/mountPath").unwrap_or("").is_empty() {
                errs.push(FieldError::required(
                    format!("{p}.volumeMounts[{j}].mountPath"),
                    "",
                ));
            }
        }
    }
}

/// `ValidatePodSpec` (the important parts).
pub(super) fn pod_spec(spec: &Value, path: &str, errs: &mut Errs) {
    let cs = arr(spec, "containers");
    if cs.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut seen = Vec::new();
    containers(
        arr(spec, "initContainers"),
        &format!("{path}.initContainers"),
        &mut seen,
        errs,
    );
    containers(cs, &format!("{path}.containers"), &mut seen, errs);
    one_of(
        s(spec, "/restartPolicy"),
        format!("{path}.restartPolicy"),
        &["Always", "OnFailure", "Never"],
        false,
        errs,
    );
    one_of(
        s(spec, "/dnsPolicy"),
        format!("{path}.dnsPolicy"),
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        false,
        errs,
    );
    let mut vols: Vec<&str> = Vec::new();
    for (i, v) in arr(spec, "volumes").iter().enumerate() {
        let n = s(v, "/name").unwrap_or("");
        let p = format!("{path}.volumes[{i}].name");
        if n.is_empty() {
            errs.push(FieldError::required(p, ""));
        } else {
            for m in names::dns1123_label(n) {
                errs.push(FieldError::invalid(p.clone(), json!(n), m));
            }
            if vols.contains(&n) {
                errs.push(FieldError::duplicate(p, json!(n)));
            }
            vols.push(n);
        }
    }
    if let Some(t) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .filter(|t| *t < 0)
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            json!(t),
            "must be greater than or equal to 0",
        ));
    }
    if let Some(n) = s(spec, "/nodeName").filter(|n| !n.is_empty()) {
        for m in names::dns1123_subdomain(n) {
            errs.push(FieldError::invalid(format!("{path}.nodeName"), json!(n), m));
        }
    }
    labels(
        spec.get("nodeSelector"),
        &format!("{path}.nodeSelector"),
        errs,
    );
}

fn selector_matches(sel: &Value, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    for (k, v) in sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if get(k) != v.as_str() {
            return false;
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let k = e.get("key").and_then(Value::as_str).unwrap_or("");
        let vals: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let ok = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => get(k).is_some_and(|x| vals.contains(&x)),
            "NotIn" => get(k).is_none_or(|x| !vals.contains(&x)),
            "Exists" => get(k).is_some(),
            "DoesNotExist" => get(k).is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn selector_empty(sel: &Value) -> bool {
    sel.get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.is_empty())
        && sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty())
}

fn label_selector(sel: &Value, path: &str, errs: &mut Errs) {
    labels(sel.get("matchLabels"), &format!("{path}.matchLabels"), errs);
    for (i, e) in arr(sel, "matchExpressions").iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let op = s(e, "/operator").unwrap_or("");
        one_of(
            Some(op),
            format!("{p}.operator"),
            &["In", "NotIn", "Exists", "DoesNotExist"],
            true,
            errs,
        );
        let n = arr(e, "values").len();
        if matches!(op, "In" | "NotIn") && n == 0 {
            errs.push(FieldError::required(
                format!("{p}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ));
        }
        if matches!(op, "Exists" | "DoesNotExist") && n > 0 {
            errs.push(FieldError::forbidden(
                format!("{p}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ));
        }
    }
}

/// Workload controllers: selector, template labels, replicas, template pod spec.
fn workload(spec: &Value, kind: &str, restart: &[&str], errs: &mut Errs) {
    let sel = spec.get("selector").filter(|s| !s.is_null());
    match sel {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            label_selector(sel, "spec.selector", errs);
            if selector_empty(sel) {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    sel.clone(),
                    format!("empty selector is invalid for {kind}"),
                ));
            }
        }
    }
    if let Some(r) = spec
        .get("replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r < 0)
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            json!(r),
            "must be greater than or equal to 0",
        ));
    }
    let tl = spec
        .pointer("/template/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    labels(Some(&tl), "spec.template.metadata.labels", errs);
    if let Some(sel) = sel
        && !selector_empty(sel)
        && !selector_matches(sel, &tl)
    {
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            tl.clone(),
            "`selector` does not match template `labels`",
        ));
    }
    template(spec, restart, errs);
}

fn template(spec: &Value, restart: &[&str], errs: &mut Errs) {
    match spec.pointer("/template/spec") {
        Some(ps) if ps.is_object() => {
            pod_spec(ps, "spec.template.spec", errs);
            let rp = s(ps, "/restartPolicy");
            if let Some(rp) = rp.filter(|r| !restart.contains(r)) {
                errs.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    json!(rp),
                    restart,
                ));
            } else if rp.is_none() {
                errs.push(FieldError::required("spec.template.spec.restartPolicy", ""));
            }
        }
        _ => errs.push(FieldError::required("spec.template", "")),
    }
}

fn service(obj: &Value, errs: &mut Errs) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = s(spec, "/type").unwrap_or("ClusterIP");
    one_of(
        Some(ty),
        "spec.type".into(),
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        true,
        errs,
    );
    let headless = s(spec, "/clusterIP") == Some("None");
    let ports = arr(spec, "ports");
    if ty == "ExternalName" {
        if s(spec, "/externalName").unwrap_or("").is_empty() {
            errs.push(FieldError::required("spec.externalName", ""));
        }
    } else if ports.is_empty() && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let name = s(p, "/name").unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{pp}.name"), ""));
        }
        if !name.is_empty() {
            for m in names::dns1123_label(name) {
                errs.push(FieldError::invalid(format!("{pp}.name"), json!(name), m));
            }
            if seen.contains(&name) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), json!(name)));
            }
            seen.push(name);
        }
        port_range(
            p.get("port").unwrap_or(&Value::Null),
            format!("{pp}.port"),
            errs,
        );
        one_of(
            s(p, "/protocol"),
            format!("{pp}.protocol"),
            &["SCTP", "TCP", "UDP"],
            false,
            errs,
        );
        if let Some(tp) = p.get("targetPort") {
            match tp {
                Value::Number(_) => port_range(tp, format!("{pp}.targetPort"), errs),
                Value::String(n) if n.is_empty() || n.len() > 15 => errs.push(FieldError::invalid(
                    format!("{pp}.targetPort"),
                    tp.clone(),
                    "must contain 1-15 characters",
                )),
                _ => {}
            }
        }
        if let Some(np) = p
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
        {
            if ty == "ClusterIP" {
                errs.push(FieldError::forbidden(
                    format!("{pp}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(30000..=32767).contains(&np) {
                errs.push(FieldError::invalid(format!("{pp}.nodePort"), json!(np), "provided port is not in the valid range. The range of valid ports is 30000-32767"));
            }
        }
    }
    labels(spec.get("selector"), "spec.selector", errs);
    one_of(
        s(spec, "/sessionAffinity"),
        "spec.sessionAffinity".into(),
        &["ClientIP", "None"],
        false,
        errs,
    );
}

/// Bytes a standard base64 text decodes to (padding and whitespace not counted).
fn base64_decoded_len(text: &str) -> usize {
    let chars = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .count();
    chars * 3 / 4
}

fn data_keys(obj: &Value, keys: &[&str], errs: &mut Errs) {
    let mut total = 0usize;
    let mut seen: Vec<&String> = Vec::new();
    for key in keys {
        for (k, v) in obj
            .get(*key)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            for m in names::config_key(k) {
                errs.push(FieldError::invalid(format!("{key}[{k}]"), json!(k), m));
            }
            if seen.contains(&k) {
                errs.push(FieldError::invalid(
                    format!("{key}[{k}]"),
                    json!(k),
                    "duplicate of key present in another data field",
                ));
            }
            seen.push(k);
            // Upstream counts bytes: decoded for base64 fields (Secret data, binaryData).
            let text = v.as_str().unwrap_or("");
            total += if *key == "binaryData" || (*key == "data" && keys == ["data"]) {
                base64_decoded_len(text)
            } else {
                text.len()
            };
        }
    }
    if total > 1024 * 1024 {
        errs.push(FieldError::too_long(
            keys.first().copied().unwrap_or("data"),
            1024 * 1024,
        ));
    }
}

fn crd(obj: &Value, errs: &mut Errs) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let group = s(spec, "/group").unwrap_or("");
    let plural = s(spec, "/names/plural").unwrap_or("");
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural", ""));
    }
    if s(spec, "/names/kind").unwrap_or("").is_empty() {
        errs.push(FieldError::required("spec.names.kind", ""));
    }
    let name = s(obj, "/metadata/name").unwrap_or("");
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    one_of(
        s(spec, "/scope"),
        "spec.scope".into(),
        &["Cluster", "Namespaced"],
        true,
        errs,
    );
    let versions = arr(spec, "versions");
    if versions.is_empty() {
        errs.push(FieldError::invalid(
            "spec.versions",
            json!([]),
            "must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions
            .iter()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .count();
        if storage != 1 {
            errs.push(FieldError::invalid(
                "spec.versions",
                json!(storage),
                "must have exactly one version marked as storage version",
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, v) in versions.iter().enumerate() {
            let n = s(v, "/name").unwrap_or("");
            for m in names::dns1035_label(n) {
                errs.push(FieldError::invalid(
                    format!("spec.versions[{i}].name"),
                    json!(n),
                    m,
                ));
            }
            if seen.contains(&n) {
                errs.push(FieldError::duplicate(
                    format!("spec.versions[{i}].name"),
                    json!(n),
                ));
            }
            seen.push(n);
        }
    }
}

/// Kind-specific validation of a whole object on create (and update).
pub(super) fn kind_rules(def: &ResourceDef, obj: &Value, errs: &mut Errs) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => pod_spec(spec, "spec", errs),
        ("", "Service") => service(obj, errs),
        ("", "ConfigMap") => data_keys(obj, &["data", "binaryData"], errs),
        ("", "Secret") => data_keys(obj, &["data"], errs),
        ("", "ReplicationController") => {
            if let Some(r) = spec
                .get("replicas")
                .and_then(Value::as_i64)
                .filter(|r| *r < 0)
            {
                errs.push(FieldError::invalid(
                    "spec.replicas",
                    json!(r),
                    "must be greater than or equal to 0",
                ));
            }
            template(spec, &["Always"], errs);
        }
        ("apps", "Deployment") => workload(spec, "deployment", &["Always"], errs),
        ("apps", "ReplicaSet") => workload(spec, "replicaset", &["Always"], errs),
        ("apps", "StatefulSet") => workload(spec, "statefulset", &["Always"], errs),
        ("apps", "DaemonSet") => workload(spec, "daemonset", &["Always"], errs),
        ("batch", "Job") => {
            if let Some(sel) = spec.get("selector").filter(|s| !s.is_null()) {
                label_selector(sel, "spec.selector", errs);
            }
            for f in [
                "parallelism",
                "completions",
                "backoffLimit",
                "activeDeadlineSeconds",
            ] {
                if let Some(n) = spec.get(f).and_then(Value::as_i64).filter(|n| *n < 0) {
                    errs.push(FieldError::invalid(
                        format!("spec.{f}"),
                        json!(n),
                        "must be greater than or equal to 0",
                    ));
                }
            }
            template(spec, &["OnFailure", "Never"], errs);
        }
        ("batch", "CronJob") => {
            let sched = s(spec, "/schedule").unwrap_or("");
            if sched.is_empty() {
                errs.push(FieldError::required("spec.schedule", ""));
            } else if !sched.starts_with('@') && sched.split_whitespace().count() != 5 {
                errs.push(FieldError::invalid(
                    "spec.schedule",
                    json!(sched),
                    "unparseable cron expression: expected exactly 5 fields",
                ));
            }
            one_of(
                s(spec, "/concurrencyPolicy"),
                "spec.concurrencyPolicy".into(),
                &["Allow", "Forbid", "Replace"],
                false,
                errs,
            );
            match spec.pointer("/jobTemplate/spec/template/spec") {
                Some(ps) if ps.is_object() => {
                    pod_spec(ps, "spec.jobTemplate.spec.template.spec", errs);
                    if let Some(rp) =
                        s(ps, "/restartPolicy").filter(|r| !["OnFailure", "Never"].contains(r))
                    {
                        errs.push(FieldError::not_supported(
                            "spec.jobTemplate.spec.template.spec.restartPolicy",
                            json!(rp),
                            &["OnFailure", "Never"],
                        ));
                    }
                }
                _ => errs.push(FieldError::required("spec.jobTemplate.spec.template", "")),
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
            if max < 1 {
                errs.push(FieldError::invalid(
                    "spec.maxReplicas",
                    json!(max),
                    "must be greater than or equal to 1",
                ));
            }
            if let Some(min) = spec
                .get("minReplicas")
                .and_then(Value::as_i64)
                .filter(|m| *m > max && max >= 1)
            {
                errs.push(FieldError::invalid(
                    "spec.minReplicas",
                    json!(min),
                    "must be less than or equal to maxReplicas",
                ));
            }
            for f in ["kind", "name"] {
                if s(spec, &format!("/scaleTargetRef/{f}"))
                    .unwrap_or("")
                    .is_empty()
                {
                    errs.push(FieldError::required(format!("spec.scaleTargetRef.{f}"), ""));
                }
            }
        }
        ("policy", "PodDisruptionBudget")
            if spec.get("minAvailable").is_some_and(|v| !v.is_null())
                && spec.get("maxUnavailable").is_some_and(|v| !v.is_null()) =>
        {
            errs.push(FieldError::invalid(
                "spec",
                spec.clone(),
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            one_of(
                s(obj, "/addressType"),
                "addressType".into(),
                &["IPv4", "IPv6", "FQDN"],
                true,
                errs,
            );
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            for f in ["kind", "name"] {
                if s(obj, &format!("/roleRef/{f}")).unwrap_or("").is_empty() {
                    errs.push(FieldError::required(format!("roleRef.{f}"), ""));
                }
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            one_of(
                s(obj, "/preemptionPolicy"),
                "preemptionPolicy".into(),
                &["Never", "PreemptLowerPriority"],
                false,
                errs,
            );
            priority_class_value(obj, errs);
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj, errs),
        ("", "Event")
            if s(obj, "/involvedObject/name").is_none()
                && s(obj, "/involvedObject/kind").is_none() =>
        {
            errs.push(FieldError::required("involvedObject", ""));
        }
        _ => {}
    }
}

/// The built-in PriorityClasses: (name, value, description), upstream's.
pub(crate) const SYSTEM_PRIORITY_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// The highest value a class other than the built-in ones may have.
const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

/// `system-` names are reserved for the built-in classes (with their values, never the
/// global default); every other class stays at or below one billion.
fn priority_class_value(obj: &Value, errs: &mut Errs) {
    let name = s(obj, "/metadata/name").unwrap_or("");
    let value = obj.get("value").and_then(Value::as_i64);
    let global_default = obj.get("globalDefault").and_then(Value::as_bool) == Some(true);
    if name.starts_with("system-") {
        let known = SYSTEM_PRIORITY_CLASSES
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, v, _)| *v);
        let why = match known {
            None => Some(format!("{name} is not a known system priority class")),
            Some(v) if value != Some(v) => {
                Some(format!("value of {name} PriorityClass must be {v}"))
            }
            Some(_) if global_default => Some(format!(
                "globalDefault of {name} PriorityClass must be false"
            )),
            Some(_) => None,
        };
        if let Some(why) = why {
            errs.push(FieldError::forbidden(
                "metadata.name",
                format!(
                    "priority class names with 'system-' prefix are reserved for system use only. error: {why}"
                ),
            ));
        }
    } else if value.is_some_and(|v| v > HIGHEST_USER_PRIORITY) {
        errs.push(FieldError::forbidden(
            "value",
            format!("maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"),
        ));
    }
}

fn immutable(new: &Value, old: &Value, ptr: &str, field: &str, errs: &mut Errs) {
    let a = new.pointer(ptr).filter(|v| !v.is_null());
    let b = old.pointer(ptr).filter(|v| !v.is_null());
    if a != b {
        errs.push(FieldError::invalid(
            field,
            a.cloned().unwrap_or(Value::Null),
            "field is immutable",
        ));
    }
}

/// Update-only rules: immutable fields.
pub(super) fn update_rules(def: &ResourceDef, new: &Value, old: &Value, errs: &mut Errs) {
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            // Pods may only change images, activeDeadlineSeconds, tolerations (additions)
            // and terminationGracePeriodSeconds; compare the rest.
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(m) = spec.as_object_mut() {
                    for k in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "terminationGracePeriodSeconds",
                        "nodeName",
                        "schedulingGates",
                    ] {
                        m.remove(k);
                    }
                    for key in ["containers", "initContainers"] {
                        if let Some(cs) = m.get_mut(key).and_then(Value::as_array_mut) {
                            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                                c.remove("image");
                                c.remove("resources");
                            }
                        }
                    }
                }
                spec
            };
            if strip(new) != strip(old) {
                errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
            let old_node = old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !old_node.is_empty() {
                immutable(new, old, "/spec/nodeName", "spec.nodeName", errs);
            }
        }
        ("", "Service") => {
            let old_ip = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            let new_ip = new
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !old_ip.is_empty() && !new_ip.is_empty() && old_ip != new_ip {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    json!(new_ip),
                    "may not change once set",
                ));
            }
        }
        ("", "ConfigMap" | "Secret") => {
            if old.get("immutable").and_then(Value::as_bool) == Some(true) {
                for f in ["data", "binaryData"] {
                    if new.get(f) != old.get(f) {
                        errs.push(FieldError::forbidden(
                            f,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if new.get("immutable").and_then(Value::as_bool) != Some(true) {
                    errs.push(FieldError::forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
            if def.kind == "Secret" {
                let t = |v: &Value| {
                    v.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("Opaque")
                        .to_owned()
                };
                if t(new) != t(old) {
                    errs.push(FieldError::invalid(
                        "type",
                        json!(t(new)),
                        "field is immutable",
                    ));
                }
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            immutable(new, old, "/spec/selector", "spec.selector", errs);
        }
        ("batch", "Job") => {
            immutable(new, old, "/spec/selector", "spec.selector", errs);
            immutable(new, old, "/spec/completions", "spec.completions", errs);
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            immutable(new, old, "/roleRef", "roleRef", errs);
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            if new.get("value") != old.get("value") {
                errs.push(FieldError::forbidden(
                    "value",
                    "may not be changed in an update.",
                ));
            }
            immutable(new, old, "/preemptionPolicy", "preemptionPolicy", errs);
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            immutable(new, old, "/spec/group", "spec.group", errs);
            immutable(new, old, "/spec/names/plural", "spec.names.plural", errs);
            immutable(new, old, "/spec/scope", "spec.scope", errs);
        }
        _ => {}
    }
}
