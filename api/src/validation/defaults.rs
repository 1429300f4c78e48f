//! Defaulting as kube-apiserver applies it on writes (the `SetDefaults_*` functions and the
//! create-time strategy steps users see in `kubectl get -o yaml`).

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::registry::ResourceDef;

/// Sets `m[key] = value` when the key is missing or null.
fn set(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_owned(), value);
    }
}

/// The object at `m[key]`, created empty if missing or null.
fn ensure_obj<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_owned(), json!({}));
    }
    m.get_mut(key).and_then(Value::as_object_mut)
}

fn each_obj_in(m: &mut Map<String, Value>, key: &str, mut f: impl FnMut(&mut Map<String, Value>)) {
    if let Some(items) = m.get_mut(key).and_then(Value::as_array_mut) {
        for it in items.iter_mut().filter_map(Value::as_object_mut) {
            f(it);
        }
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise (digests included).
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn default_probe(p: &mut Map<String, Value>) {
    set(p, "timeoutSeconds", json!(1));
    set(p, "periodSeconds", json!(10));
    set(p, "successThreshold", json!(1));
    set(p, "failureThreshold", json!(3));
    if let Some(h) = obj_mut_map(p, "httpGet") {
        set(h, "path", json!("/"));
        set(h, "scheme", json!("HTTP"));
    }
    if let Some(g) = obj_mut_map(p, "grpc") {
        set(g, "service", json!(""));
    }
}

fn obj_mut_map<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    m.get_mut(key).and_then(Value::as_object_mut)
}

fn default_container(c: &mut Map<String, Value>) {
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !image.is_empty() {
        set(c, "imagePullPolicy", json!(image_pull_policy(&image)));
    }
    set(c, "resources", json!({}));
    // Requests default to limits (SetDefaults_Pod), which decides the QoS class.
    if let Some(res) = obj_mut_map(c, "resources") {
        let limits = res.get("limits").and_then(Value::as_object).cloned();
        if let Some(limits) = limits
            && let Some(req) = ensure_obj(res, "requests")
        {
            for (k, v) in limits {
                req.entry(k).or_insert(v);
            }
        }
    }
    each_obj_in(c, "ports", |p| set(p, "protocol", json!("TCP")));
    each_obj_in(c, "env", |e| {
        if let Some(fr) = e
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            set(fr, "apiVersion", json!("v1"));
        }
    });
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = obj_mut_map(c, probe) {
            default_probe(p);
        }
    }
}

/// `SetDefaults_PodSpec` and its nested defaults.
pub(super) fn default_pod_spec(spec: &mut Map<String, Value>) {
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "securityContext", json!({}));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "enableServiceLinks", json!(true));
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        each_obj_in(spec, key, default_container);
    }
    each_obj_in(spec, "volumes", |v| {
        let has_source = v.keys().any(|k| k != "name");
        if !has_source {
            v.insert("emptyDir".into(), json!({}));
        }
        for src in ["secret", "configMap", "downwardAPI", "projected"] {
            if let Some(s) = obj_mut_map(v, src) {
                set(s, "defaultMode", json!(420));
            }
        }
        if let Some(h) = obj_mut_map(v, "hostPath") {
            set(h, "type", json!(""));
        }
    });
}

fn default_template(spec: &mut Map<String, Value>) {
    if let Some(ps) = ensure_obj(spec, "template").and_then(|t| ensure_obj(t, "spec")) {
        default_pod_spec(ps);
    }
}

/// Applies the kind's defaults to `obj` in place (idempotent).
pub(super) fn apply(def: &ResourceDef, obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                default_pod_spec(spec);
            }
        }
        ("", "ReplicationController") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "replicas", json!(1));
                set(spec, "minReadySeconds", json!(0));
                // The selector and labels default to the template's labels.
                let tl = spec
                    .get("template")
                    .and_then(|t| t.pointer("/metadata/labels"))
                    .cloned();
                if let Some(tl) = tl {
                    set(spec, "selector", tl.clone());
                    if let Some(meta) = ensure_obj(root, "metadata") {
                        set(meta, "labels", tl);
                    }
                }
            }
            if let Some(spec) = obj_mut_map(root, "spec") {
                default_template(spec);
            }
        }
        ("", "Service") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "type", json!("ClusterIP"));
                set(spec, "sessionAffinity", json!("None"));
                let ty = spec
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if ty != "ExternalName" {
                    set(spec, "internalTrafficPolicy", json!("Cluster"));
                }
                if ty == "NodePort" || ty == "LoadBalancer" {
                    set(spec, "externalTrafficPolicy", json!("Cluster"));
                }
                if ty == "LoadBalancer" {
                    set(spec, "allocateLoadBalancerNodePorts", json!(true));
                }
                each_obj_in(spec, "ports", |p| {
                    set(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set(p, "targetPort", port);
                    }
                });
                if let Some(sa) = obj_mut_map(spec, "sessionAffinityConfig")
                    .and_then(|c| obj_mut_map(c, "clientIP"))
                {
                    set(sa, "timeoutSeconds", json!(10800));
                }
            }
        }
        ("", "Secret") => set(root, "type", json!("Opaque")),
        ("", "Namespace") => {
            if let Some(st) = ensure_obj(root, "status") {
                set(st, "phase", json!("Active"));
            }
        }
        ("", "PersistentVolume") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                set(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(st) = ensure_obj(root, "status") {
                set(st, "phase", json!("Pending"));
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(st) = ensure_obj(root, "status") {
                set(st, "phase", json!("Pending"));
            }
        }
        ("", "Endpoints") => {
            each_obj_in(root, "subsets", |ss| {
                each_obj_in(ss, "ports", |p| set(p, "protocol", json!("TCP")))
            });
        }
        ("", "LimitRange")
        | ("", "ResourceQuota")
        | ("", "ConfigMap")
        | ("", "ServiceAccount")
        | ("", "Event")
        | ("", "Node") => {}
        ("apps", "Deployment") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "replicas", json!(1));
                set(spec, "revisionHistoryLimit", json!(10));
                set(spec, "progressDeadlineSeconds", json!(600));
                if let Some(strategy) = ensure_obj(spec, "strategy") {
                    set(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                        && let Some(ru) = ensure_obj(strategy, "rollingUpdate")
                    {
                        set(ru, "maxUnavailable", json!("25%"));
                        set(ru, "maxSurge", json!("25%"));
                    }
                }
                default_template(spec);
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "replicas", json!(1));
                default_template(spec);
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "replicas", json!(1));
                set(spec, "podManagementPolicy", json!("OrderedReady"));
                set(spec, "revisionHistoryLimit", json!(10));
                set(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                if let Some(us) = ensure_obj(spec, "updateStrategy") {
                    set(us, "type", json!("RollingUpdate"));
                    if us.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                        && let Some(ru) = ensure_obj(us, "rollingUpdate")
                    {
                        set(ru, "partition", json!(0));
                    }
                }
                each_obj_in(spec, "volumeClaimTemplates", |t| {
                    if let Some(s) = ensure_obj(t, "spec") {
                        set(s, "volumeMode", json!("Filesystem"));
                    }
                    if let Some(st) = ensure_obj(t, "status") {
                        set(st, "phase", json!("Pending"));
                    }
                });
                default_template(spec);
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "revisionHistoryLimit", json!(10));
                if let Some(us) = ensure_obj(spec, "updateStrategy") {
                    set(us, "type", json!("RollingUpdate"));
                    if us.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                        && let Some(ru) = ensure_obj(us, "rollingUpdate")
                    {
                        set(ru, "maxUnavailable", json!(1));
                        set(ru, "maxSurge", json!(0));
                    }
                }
                default_template(spec);
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                default_job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "concurrencyPolicy", json!("Allow"));
                set(spec, "suspend", json!(false));
                set(spec, "successfulJobsHistoryLimit", json!(3));
                set(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(js) =
                    ensure_obj(spec, "jobTemplate").and_then(|t| ensure_obj(t, "spec"))
                {
                    default_job_spec(js);
                }
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                set(spec, "minReplicas", json!(1));
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            set(root, "preemptionPolicy", json!("PreemptLowerPriority"))
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            each_obj_in(root, "ports", |p| {
                set(p, "protocol", json!("TCP"));
                set(p, "name", json!(""));
            });
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if let Some(spec) = ensure_obj(root, "spec") {
                if let Some(c) = ensure_obj(spec, "conversion") {
                    set(c, "strategy", json!("None"));
                }
                if let Some(names) = obj_mut_map(spec, "names") {
                    let kind = names.get("kind").and_then(Value::as_str).map(str::to_owned);
                    if let Some(kind) = kind {
                        set(names, "listKind", json!(format!("{kind}List")));
                        set(names, "singular", json!(kind.to_ascii_lowercase()));
                    }
                }
            }
        }
        _ => {}
    }
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    let completions_unset = spec.get("completions").is_none_or(Value::is_null);
    let parallelism_unset = spec.get("parallelism").is_none_or(Value::is_null);
    if completions_unset && parallelism_unset {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    set(spec, "backoffLimit", json!(6));
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    set(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    default_template(spec);
}

/// `stringData` merged into base64 `data` (stringData wins), then dropped, as the Secret
/// conversion does before validation.
pub fn merge_string_data(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(sd)) = root.remove("stringData") else {
        return;
    };
    let data = ensure_obj(root, "data");
    if let Some(data) = data {
        for (k, v) in sd {
            let s = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(s.as_bytes())),
            );
        }
    }
}

/// The pod QoS class from container requests and limits (`qos.GetPodQOS`, simplified to
/// cpu and memory).
pub fn pod_qos(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            spec.get("initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
    for c in containers {
        let req = c.pointer("/resources/requests");
        let lim = c.pointer("/resources/limits");
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|x| x.get(r));
            let lm = lim.and_then(|x| x.get(r));
            if rq.is_some() || lm.is_some() {
                any = true;
            }
            match (rq, lm) {
                (_, None) => guaranteed = false,
                (Some(a), Some(b)) if a != b => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Create-time steps of the kind's strategy (`PrepareForCreate`) and the admission
/// defaults users see: pod status/QoS/priority/tolerations, namespace metadata label and
/// finalizer, job selector and labels from the object's `uid`, Secret `stringData`.
/// Call after the server set `metadata.uid` and after [`apply`] (upstream defaults at decode
/// time, then runs the strategy).
pub(super) fn prepare_for_create(def: &ResourceDef, obj: &mut Value) {
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Secret") => merge_string_data(obj),
        ("", "Pod") => {
            let qos = pod_qos(obj.get("spec").unwrap_or(&Value::Null));
            if let Some(root) = obj.as_object_mut() {
                root.insert(
                    "status".into(),
                    json!({"phase": "Pending", "qosClass": qos}),
                );
                if let Some(spec) = ensure_obj(root, "spec") {
                    set(spec, "serviceAccountName", json!("default"));
                    let sa = spec
                        .get("serviceAccountName")
                        .cloned()
                        .unwrap_or(json!("default"));
                    set(spec, "serviceAccount", sa);
                    // `priority` and `preemptionPolicy` come from Priority admission
                    // (rest::priority), which must see only what the client sent.
                    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
                    if let Value::Array(t) = tolerations {
                        for key in [
                            "node.kubernetes.io/not-ready",
                            "node.kubernetes.io/unreachable",
                        ] {
                            let present = t
                                .iter()
                                .any(|x| x.get("key").and_then(Value::as_str) == Some(key));
                            if !present {
                                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                            }
                        }
                    }
                }
            }
        }
        ("", "Namespace") => {
            if let Some(root) = obj.as_object_mut() {
                if let Some(meta) = ensure_obj(root, "metadata")
                    && let Some(labels) = ensure_obj(meta, "labels")
                {
                    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
                if let Some(spec) = ensure_obj(root, "spec") {
                    set(spec, "finalizers", json!(["kubernetes"]));
                }
                root.insert("status".into(), json!({"phase": "Active"}));
            }
        }
        ("batch", "Job") => {
            let manual = obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
            if manual || uid.is_empty() {
                return;
            }
            let labels = json!({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                                "controller-uid": uid, "job-name": name});
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                if spec.get("selector").is_none_or(Value::is_null) {
                    spec.insert(
                        "selector".into(),
                        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                    );
                }
                if let Some(meta) =
                    ensure_obj(spec, "template").and_then(|t| ensure_obj(t, "metadata"))
                    && let Some(l) = ensure_obj(meta, "labels")
                {
                    for (k, v) in labels.as_object().into_iter().flatten() {
                        l.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("", "ReplicationController") => {
            // Status is not writable through the main resource.
            if let Some(root) = obj.as_object_mut() {
                root.remove("status");
            }
        }
        _ => {}
    }
}

/// Update-time steps (`PrepareForUpdate`): Secret `stringData`.
pub(super) fn prepare_for_update(def: &ResourceDef, obj: &mut Value) {
    if def.group.is_empty() && def.kind == "Secret" {
        merge_string_data(obj);
    }
}
