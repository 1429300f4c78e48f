//! Per-kind columns and cells, following kube-apiserver's `pkg/printers/internalversion`
//! (server-side tables are generated "wide": every column is filled).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Column, age, human_duration};
use crate::registry::ResourceDef;

pub(super) const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
pub(super) const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

pub(super) const NAME_COL: Column = Column {
    name: "Name",
    type_: "string",
    format: "name",
    description: NAME_DESC,
    priority: 0,
};
const AGE: Column = Column {
    name: "Age",
    type_: "string",
    format: "",
    description: AGE_DESC,
    priority: 0,
};
const CREATED_AT: Column = Column {
    name: "Created At",
    type_: "date",
    format: "",
    description: AGE_DESC,
    priority: 0,
};

const fn c(name: &'static str, type_: &'static str, description: &'static str) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority: 0,
    }
}
const fn w(name: &'static str, type_: &'static str, description: &'static str) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority: 1,
    }
}

const CONTAINERS: Column = w(
    "Containers",
    "string",
    "Names of each container in the template.",
);
const IMAGES: Column = w(
    "Images",
    "string",
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = w(
    "Selector",
    "string",
    "A label query over pods that should match the replica count.",
);

const POD: &[Column] = &[
    NAME_COL,
    c(
        "Ready",
        "string",
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    c(
        "Status",
        "string",
        "The aggregate status of the containers in this pod.",
    ),
    c(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE,
    w("IP", "string", "podIP address allocated to the pod."),
    w(
        "Node",
        "string",
        "NodeName indicates in which node this pod is scheduled.",
    ),
    w(
        "Nominated Node",
        "string",
        "nominatedNodeName is set only when this pod preempts other pods on the node.",
    ),
    w(
        "Readiness Gates",
        "string",
        "If specified, all readiness gates will be evaluated for pod readiness.",
    ),
];
const RC_RS: &[Column] = &[
    NAME_COL,
    c(
        "Desired",
        "integer",
        "Replicas is the number of desired replicas.",
    ),
    c(
        "Current",
        "integer",
        "Replicas is the most recently observed number of replicas.",
    ),
    c(
        "Ready",
        "integer",
        "The number of ready replicas for this replica set.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];
const DEPLOYMENT: &[Column] = &[
    NAME_COL,
    c("Ready", "string", "Number of the pod with ready state"),
    c(
        "Up-to-date",
        "string",
        "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
    ),
    c(
        "Available",
        "string",
        "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];
const STATEFULSET: &[Column] = &[
    NAME_COL,
    c("Ready", "string", "Number of the pod with ready state"),
    AGE,
    CONTAINERS,
    IMAGES,
];
const DAEMONSET: &[Column] = &[
    NAME_COL,
    c(
        "Desired",
        "integer",
        "The total number of nodes that should be running the daemon pod.",
    ),
    c(
        "Current",
        "integer",
        "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
    ),
    c(
        "Ready",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
    ),
    c(
        "Up-to-date",
        "integer",
        "The total number of nodes that are running updated daemon pod",
    ),
    c(
        "Available",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
    ),
    c(
        "Node Selector",
        "string",
        "NodeSelector is a selector which must be true for the pod to fit on a node.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];
const JOB: &[Column] = &[
    NAME_COL,
    c("Status", "string", "Status of the job."),
    c(
        "Completions",
        "string",
        "The number of pods which reached phase Succeeded.",
    ),
    c("Duration", "string", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];
const CRONJOB: &[Column] = &[
    NAME_COL,
    c("Schedule", "string", "The schedule in Cron format."),
    c(
        "Timezone",
        "string",
        "The time zone name for the given schedule.",
    ),
    c(
        "Suspend",
        "boolean",
        "This flag tells the controller to suspend subsequent executions.",
    ),
    c(
        "Active",
        "integer",
        "A list of pointers to currently running jobs.",
    ),
    c(
        "Last Schedule",
        "string",
        "Information when was the last time the job was successfully scheduled.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];
const SERVICE: &[Column] = &[
    NAME_COL,
    c(
        "Type",
        "string",
        "type determines how the Service is exposed.",
    ),
    c(
        "Cluster-IP",
        "string",
        "clusterIP is the IP address of the service.",
    ),
    c(
        "External-IP",
        "string",
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
    ),
    c(
        "Port(s)",
        "string",
        "The list of ports that are exposed by this service.",
    ),
    AGE,
    w(
        "Selector",
        "string",
        "Route service traffic to pods with label keys and values matching this selector.",
    ),
];
const ENDPOINTS: &[Column] = &[
    NAME_COL,
    c(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets.",
    ),
    AGE,
];
const NODE: &[Column] = &[
    NAME_COL,
    c("Status", "string", "The status of the node"),
    c("Roles", "string", "The roles of the node"),
    AGE,
    c("Version", "string", "Kubelet Version reported by the node."),
    w(
        "Internal-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    w(
        "External-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    w(
        "OS-Image",
        "string",
        "OS Image reported by the node from /etc/os-release.",
    ),
    w(
        "Kernel-Version",
        "string",
        "Kernel Version reported by the node from 'uname -r'.",
    ),
    w(
        "Container-Runtime",
        "string",
        "ContainerRuntime Version reported by the node through runtime remote API.",
    ),
];
const EVENT: &[Column] = &[
    c(
        "Last Seen",
        "string",
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    c(
        "Type",
        "string",
        "Type of this event (Normal, Warning), new types could be added in the future",
    ),
    c(
        "Reason",
        "string",
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    c("Object", "string", "The object that this event is about."),
    w(
        "Subobject",
        "string",
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
    ),
    w("Source", "string", "The component reporting this event."),
    c(
        "Message",
        "string",
        "A human-readable description of the status of this operation.",
    ),
    w(
        "First Seen",
        "string",
        "The time at which the event was first recorded.",
    ),
    w(
        "Count",
        "string",
        "The number of times this event has occurred.",
    ),
    Column {
        name: "Name",
        type_: "string",
        format: "name",
        description: NAME_DESC,
        priority: 1,
    },
];
const NAMESPACE: &[Column] = &[
    NAME_COL,
    c("Status", "string", "The status of the namespace"),
    AGE,
];
const SECRET: &[Column] = &[
    NAME_COL,
    c(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    c("Data", "string", "Data contains the secret data."),
    AGE,
];
const SERVICE_ACCOUNT: &[Column] = &[
    NAME_COL,
    c(
        "Secrets",
        "string",
        "Secrets is a list of the secrets in the same namespace.",
    ),
    AGE,
];
const CONFIGMAP: &[Column] = &[
    NAME_COL,
    c("Data", "string", "Data contains the configuration data."),
    AGE,
];
const PV: &[Column] = &[
    NAME_COL,
    c(
        "Capacity",
        "string",
        "capacity is the description of the persistent volume's resources and capacity.",
    ),
    c(
        "Access Modes",
        "string",
        "accessModes contains all ways the volume can be mounted.",
    ),
    c(
        "Reclaim Policy",
        "string",
        "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
    ),
    c(
        "Status",
        "string",
        "phase indicates if a volume is available, bound to a claim, or released by a claim.",
    ),
    c(
        "Claim",
        "string",
        "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
    ),
    c("StorageClass", "string", "StorageClass of the pv"),
    c(
        "VolumeAttributesClass",
        "string",
        "VolumeAttributesClass of the pv",
    ),
    c(
        "Reason",
        "string",
        "reason is a brief CamelCase string that describes any failure.",
    ),
    AGE,
    w(
        "VolumeMode",
        "string",
        "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
    ),
];
const PVC: &[Column] = &[
    NAME_COL,
    c(
        "Status",
        "string",
        "phase represents the current phase of PersistentVolumeClaim.",
    ),
    c(
        "Volume",
        "string",
        "volumeName is the binding reference to the PersistentVolume backing this claim.",
    ),
    c(
        "Capacity",
        "string",
        "capacity represents the actual resources of the underlying volume.",
    ),
    c(
        "Access Modes",
        "string",
        "accessModes contains the actual access modes the volume backing the PVC has.",
    ),
    c("StorageClass", "string", "StorageClass of the pvc"),
    c(
        "VolumeAttributesClass",
        "string",
        "VolumeAttributesClass of the pvc",
    ),
    AGE,
    w(
        "VolumeMode",
        "string",
        "volumeMode defines what type of volume is required by the claim.",
    ),
];
const CONTROLLER_REVISION: &[Column] = &[
    NAME_COL,
    c("Controller", "string", "Controller of the object"),
    c(
        "Revision",
        "string",
        "Revision indicates the revision of the state represented by Data.",
    ),
    AGE,
];
const RESOURCE_QUOTA: &[Column] = &[
    NAME_COL,
    c(
        "Request",
        "string",
        "Request represents a minimum amount of cpu/memory that a container may consume.",
    ),
    c(
        "Limit",
        "string",
        "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
    ),
    AGE,
];
const PRIORITY_CLASS: &[Column] = &[
    NAME_COL,
    c(
        "Value",
        "integer",
        "value represents the integer value of this priority class.",
    ),
    c(
        "Global-Default",
        "boolean",
        "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class.",
    ),
    AGE,
    c(
        "PreemptionPolicy",
        "string",
        "preemptionPolicy is the Policy for preempting pods with lower priority.",
    ),
];
const HPA: &[Column] = &[
    NAME_COL,
    c(
        "Reference",
        "string",
        "scaleTargetRef points to the target resource to scale.",
    ),
    c(
        "Targets",
        "string",
        "metrics contains the specifications for which to use to calculate the desired replica count.",
    ),
    c(
        "MinPods",
        "string",
        "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.",
    ),
    c(
        "MaxPods",
        "string",
        "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up.",
    ),
    c(
        "Replicas",
        "string",
        "currentReplicas is current number of replicas of pods managed by this autoscaler.",
    ),
    AGE,
];
const LEASE: &[Column] = &[
    NAME_COL,
    c(
        "Holder",
        "string",
        "holderIdentity contains the identity of the holder of a current lease.",
    ),
    AGE,
];
const ENDPOINT_SLICE: &[Column] = &[
    NAME_COL,
    c(
        "AddressType",
        "string",
        "addressType specifies the type of address carried by this EndpointSlice.",
    ),
    c(
        "Ports",
        "string",
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    c(
        "Endpoints",
        "string",
        "endpoints is a list of unique endpoints in this slice.",
    ),
    AGE,
];
const PDB: &[Column] = &[
    NAME_COL,
    c(
        "Min Available",
        "string",
        "The minimum number of pods that must be available.",
    ),
    c(
        "Max Unavailable",
        "string",
        "The maximum number of pods that may be unavailable.",
    ),
    c(
        "Allowed Disruptions",
        "integer",
        "Calculated number of pods that may be disrupted at this time.",
    ),
    AGE,
];
const ROLE_BINDING: &[Column] = &[
    NAME_COL,
    c(
        "Role",
        "string",
        "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace.",
    ),
    AGE,
    w("Users", "string", "Users in the roleBinding"),
    w("Groups", "string", "Groups in the roleBinding"),
    w(
        "ServiceAccounts",
        "string",
        "ServiceAccounts in the roleBinding",
    ),
];
const DEFAULT: &[Column] = &[NAME_COL, CREATED_AT];

/// The column set for a built-in resource (Name + Created At for kinds without a printer).
pub(super) fn columns(def: &ResourceDef) -> &'static [Column] {
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => POD,
        ("", "ReplicationController") | ("apps", "ReplicaSet") => RC_RS,
        ("apps", "Deployment") => DEPLOYMENT,
        ("apps", "StatefulSet") => STATEFULSET,
        ("apps", "DaemonSet") => DAEMONSET,
        ("apps", "ControllerRevision") => CONTROLLER_REVISION,
        ("batch", "Job") => JOB,
        ("batch", "CronJob") => CRONJOB,
        ("", "Service") => SERVICE,
        ("", "Endpoints") => ENDPOINTS,
        ("", "Node") => NODE,
        ("", "Event") | ("events.k8s.io", "Event") => EVENT,
        ("", "Namespace") => NAMESPACE,
        ("", "Secret") => SECRET,
        ("", "ServiceAccount") => SERVICE_ACCOUNT,
        ("", "ConfigMap") => CONFIGMAP,
        ("", "PersistentVolume") => PV,
        ("", "PersistentVolumeClaim") => PVC,
        ("", "ResourceQuota") => RESOURCE_QUOTA,
        ("scheduling.k8s.io", "PriorityClass") => PRIORITY_CLASS,
        ("autoscaling", "HorizontalPodAutoscaler") => HPA,
        ("coordination.k8s.io", "Lease") => LEASE,
        ("discovery.k8s.io", "EndpointSlice") => ENDPOINT_SLICE,
        ("policy", "PodDisruptionBudget") => PDB,
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        _ => DEFAULT,
    }
}

// === value helpers ===

fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}
fn i(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}
fn arr<'a>(o: &'a Value, ptr: &str) -> &'a [Value] {
    o.pointer(ptr)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}
fn or_none(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.to_owned()
    }
}
fn name(o: &Value) -> Value {
    json!(s(o, "/metadata/name"))
}
fn created(o: &Value, now: DateTime<Utc>) -> Value {
    json!(age(o.pointer("/metadata/creationTimestamp"), now))
}
fn map_len(o: &Value, ptr: &str) -> usize {
    o.pointer(ptr)
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
}

/// `labels.FormatLabels`: `k=v,...` sorted by key, `<none>` if empty.
pub(crate) fn format_labels(m: Option<&Value>) -> String {
    let mut pairs: Vec<String> = m
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// A LabelSelector as `labels.Selector.String()` renders it (requirements sorted by key).
pub(crate) fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return String::new() };
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut vals: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        vals.sort_unstable();
        let text = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => continue,
        };
        reqs.push((key, text));
    }
    reqs.sort();
    reqs.into_iter().map(|r| r.1).collect::<Vec<_>>().join(",")
}

/// `metav1.FormatLabelSelector`: like [`selector_string`] but `<none>` when empty.
fn format_selector(sel: Option<&Value>) -> String {
    let s = selector_string(sel);
    if s.is_empty() { "<none>".into() } else { s }
}

fn containers_images(o: &Value, ptr: &str) -> (Value, Value) {
    let cs = arr(o, ptr);
    let names: Vec<&str> = cs
        .iter()
        .map(|c| c.get("name").and_then(Value::as_str).unwrap_or(""))
        .collect();
    let images: Vec<&str> = cs
        .iter()
        .map(|c| c.get("image").and_then(Value::as_str).unwrap_or(""))
        .collect();
    (json!(names.join(",")), json!(images.join(",")))
}

fn condition_true(conds: &[Value], type_: &str) -> bool {
    conds.iter().any(|c| {
        c.get("type").and_then(Value::as_str) == Some(type_)
            && c.get("status").and_then(Value::as_str) == Some("True")
    })
}

fn parse_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The cells of one row of a built-in kind.
pub(super) fn cells(def: &ResourceDef, o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => pod(o, now),
        ("", "ReplicationController") => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            vec![
                name(o),
                json!(
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ),
                json!(i(o, "/status/replicas")),
                json!(i(o, "/status/readyReplicas")),
                created(o, now),
                cn,
                im,
                json!(format_labels(o.pointer("/spec/selector"))),
            ]
        }
        ("apps", "ReplicaSet") => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            vec![
                name(o),
                json!(
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ),
                json!(i(o, "/status/replicas")),
                json!(i(o, "/status/readyReplicas")),
                created(o, now),
                cn,
                im,
                json!(format_selector(o.pointer("/spec/selector"))),
            ]
        }
        ("apps", "Deployment") => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            let desired = o
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            vec![
                name(o),
                json!(format!("{}/{desired}", i(o, "/status/readyReplicas"))),
                json!(i(o, "/status/updatedReplicas")),
                json!(i(o, "/status/availableReplicas")),
                created(o, now),
                cn,
                im,
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        ("apps", "StatefulSet") => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            let desired = o
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            vec![
                name(o),
                json!(format!("{}/{desired}", i(o, "/status/readyReplicas"))),
                created(o, now),
                cn,
                im,
            ]
        }
        ("apps", "DaemonSet") => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            vec![
                name(o),
                json!(i(o, "/status/desiredNumberScheduled")),
                json!(i(o, "/status/currentNumberScheduled")),
                json!(i(o, "/status/numberReady")),
                json!(i(o, "/status/updatedNumberScheduled")),
                json!(i(o, "/status/numberAvailable")),
                json!(format_labels(o.pointer("/spec/template/spec/nodeSelector"))),
                created(o, now),
                cn,
                im,
                json!(format_selector(o.pointer("/spec/selector"))),
            ]
        }
        ("apps", "ControllerRevision") => {
            let controller = arr(o, "/metadata/ownerReferences")
                .iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                .map(|r| {
                    let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or("");
                    let group = api_version.split_once('/').map_or("", |(g, _)| g);
                    let kind = r
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    let res = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!(
                        "{res}/{}",
                        r.get("name").and_then(Value::as_str).unwrap_or("")
                    )
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name(o),
                json!(controller),
                json!(i(o, "/revision")),
                created(o, now),
            ]
        }
        ("batch", "Job") => job(o, now),
        ("batch", "CronJob") => {
            let (cn, im) = containers_images(o, "/spec/jobTemplate/spec/template/spec/containers");
            let suspend = match o.pointer("/spec/suspend").and_then(Value::as_bool) {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            let last = match o.pointer("/status/lastScheduleTime") {
                Some(v @ Value::String(_)) => age(Some(v), now),
                _ => "<none>".into(),
            };
            vec![
                name(o),
                json!(s(o, "/spec/schedule")),
                json!(or_none(s(o, "/spec/timeZone"))),
                json!(suspend),
                json!(arr(o, "/status/active").len()),
                json!(last),
                created(o, now),
                cn,
                im,
                json!(format_selector(
                    o.pointer("/spec/jobTemplate/spec/selector")
                )),
            ]
        }
        ("", "Service") => service(o, now),
        ("", "Endpoints") => vec![name(o), json!(format_endpoints(o)), created(o, now)],
        ("", "Node") => node(o, now),
        ("", "Event") => event(o, now),
        ("events.k8s.io", "Event") => event(&events_v1_as_core(o), now),
        ("", "Namespace") => vec![name(o), json!(s(o, "/status/phase")), created(o, now)],
        ("", "Secret") => vec![
            name(o),
            json!(s(o, "/type")),
            json!(map_len(o, "/data")),
            created(o, now),
        ],
        ("", "ServiceAccount") => vec![name(o), json!(arr(o, "/secrets").len()), created(o, now)],
        ("", "ConfigMap") => vec![
            name(o),
            json!(map_len(o, "/data") + map_len(o, "/binaryData")),
            created(o, now),
        ],
        ("", "PersistentVolume") => pv(o, now),
        ("", "PersistentVolumeClaim") => pvc(o, now),
        ("", "ResourceQuota") => resource_quota(o, now),
        ("scheduling.k8s.io", "PriorityClass") => vec![
            name(o),
            json!(i(o, "/value")),
            json!(
                o.get("globalDefault")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            ),
            created(o, now),
            json!(
                o.get("preemptionPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("PreemptLowerPriority")
            ),
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(o, now),
        ("coordination.k8s.io", "Lease") => vec![
            name(o),
            json!(s(o, "/spec/holderIdentity")),
            created(o, now),
        ],
        ("discovery.k8s.io", "EndpointSlice") => endpoint_slice(o, now),
        ("policy", "PodDisruptionBudget") => {
            let f = |p: &str| match o.pointer(p) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "N/A".into(),
            };
            vec![
                name(o),
                json!(f("/spec/minAvailable")),
                json!(f("/spec/maxUnavailable")),
                json!(i(o, "/status/disruptionsAllowed")),
                created(o, now),
            ]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => role_binding(o, now),
        _ => vec![name(o), json!(s(o, "/metadata/creationTimestamp"))],
    }
}

fn pod(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let phase = s(o, "/status/phase");
    let mut reason = if s(o, "/status/reason").is_empty() {
        phase.to_owned()
    } else {
        s(o, "/status/reason").to_owned()
    };
    let conditions = arr(o, "/status/conditions");
    if conditions.iter().any(|c| {
        c.get("type").and_then(Value::as_str) == Some("PodScheduled")
            && c.get("reason").and_then(Value::as_str) == Some("SchedulingGated")
    }) {
        reason = "SchedulingGated".into();
    }
    let spec_init = arr(o, "/spec/initContainers");
    let restartable = |n: &str| {
        spec_init.iter().any(|c| {
            c.get("name").and_then(Value::as_str) == Some(n)
                && c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
        })
    };
    let mut total = arr(o, "/spec/containers").len();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut last_sidecar_restart: Option<DateTime<Utc>> = None;
    let init_statuses = arr(o, "/status/initContainerStatuses");
    for st in init_statuses {
        if restartable(st.get("name").and_then(Value::as_str).unwrap_or("")) {
            total += 1;
        }
    }
    let mut initializing = false;
    for (idx, st) in init_statuses.iter().enumerate() {
        let rc = st.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
        restarts += rc;
        let finished = parse_time(st.pointer("/lastState/terminated/finishedAt"));
        if finished > last_restart {
            last_restart = finished;
        }
        let sidecar = restartable(st.get("name").and_then(Value::as_str).unwrap_or(""));
        if sidecar {
            sidecar_restarts += rc;
            if finished > last_sidecar_restart {
                last_sidecar_restart = finished;
            }
        }
        let term = st.pointer("/state/terminated");
        let waiting_reason = st
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .unwrap_or("");
        if term.is_some_and(|t| t.get("exitCode").and_then(Value::as_i64).unwrap_or(0) == 0) {
            continue;
        }
        if sidecar && st.get("started").and_then(Value::as_bool) == Some(true) {
            if st.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = term {
            let r = t.get("reason").and_then(Value::as_str).unwrap_or("");
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if t.get("signal").and_then(Value::as_i64).unwrap_or(0) != 0 {
                format!(
                    "Init:Signal:{}",
                    t.get("signal").and_then(Value::as_i64).unwrap_or(0)
                )
            } else {
                format!(
                    "Init:ExitCode:{}",
                    t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                )
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{idx}/{}", spec_init.len());
        }
        initializing = true;
        break;
    }
    if !initializing || condition_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for st in arr(o, "/status/containerStatuses").iter().rev() {
            restarts += st.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            let finished = parse_time(st.pointer("/lastState/terminated/finishedAt"));
            if finished > last_restart {
                last_restart = finished;
            }
            let waiting = st
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .unwrap_or("");
            let term = st.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_owned();
            } else if let Some(t) = term {
                let r = t.get("reason").and_then(Value::as_str).unwrap_or("");
                reason = if !r.is_empty() {
                    r.to_owned()
                } else if t.get("signal").and_then(Value::as_i64).unwrap_or(0) != 0 {
                    format!(
                        "Signal:{}",
                        t.get("signal").and_then(Value::as_i64).unwrap_or(0)
                    )
                } else {
                    format!(
                        "ExitCode:{}",
                        t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    )
                };
            } else if st.get("ready").and_then(Value::as_bool) == Some(true)
                && st.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(conditions, "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let deleting = o
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null());
    if deleting && s(o, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            human_duration((now - t).num_seconds())
        ),
        _ => restarts.to_string(),
    };
    let ip = arr(o, "/status/podIPs")
        .first()
        .and_then(|p| p.get("ip"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let gates = arr(o, "/spec/readinessGates");
    let gates_str = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let ok = gates
            .iter()
            .filter(|g| {
                let t = g.get("conditionType").and_then(Value::as_str).unwrap_or("");
                conditions
                    .iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
                    .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
            })
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        name(o),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_str),
        created(o, now),
        json!(or_none(ip)),
        json!(or_none(s(o, "/spec/nodeName"))),
        json!(or_none(s(o, "/status/nominatedNodeName"))),
        json!(gates_str),
    ]
}

fn job(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (cn, im) = containers_images(o, "/spec/template/spec/containers");
    let succeeded = i(o, "/status/succeeded");
    let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let p = i(o, "/spec/parallelism");
            if p > 1 {
                format!("{succeeded}/1 of {p}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let duration = match (
        parse_time(o.pointer("/status/startTime")),
        parse_time(o.pointer("/status/completionTime")),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration((now - start).num_seconds()),
        (Some(start), Some(end)) => human_duration((end - start).num_seconds()),
    };
    let conds = arr(o, "/status/conditions");
    let status = if condition_true(conds, "Complete") {
        "Complete"
    } else if condition_true(conds, "Failed") {
        "Failed"
    } else if o
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        "Terminating"
    } else if condition_true(conds, "Suspended") {
        "Suspended"
    } else if condition_true(conds, "FailureTarget") {
        "FailureTarget"
    } else if condition_true(conds, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    vec![
        name(o),
        json!(status),
        json!(completions),
        json!(duration),
        created(o, now),
        cn,
        im,
        json!(format_selector(o.pointer("/spec/selector"))),
    ]
}

fn service(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let type_ = if s(o, "/spec/type").is_empty() {
        "ClusterIP"
    } else {
        s(o, "/spec/type")
    };
    let external_ips: Vec<&str> = arr(o, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let lb: Vec<&str> = arr(o, "/status/loadBalancer/ingress")
        .iter()
        .filter_map(|i| {
            i.get("ip")
                .and_then(Value::as_str)
                .or_else(|| i.get("hostname").and_then(Value::as_str))
        })
        .collect();
    let external = match type_ {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".into()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            if !external_ips.is_empty() {
                external_ips
                    .iter()
                    .chain(lb.iter())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(",")
            } else if !lb.is_empty() {
                lb.join(",")
            } else {
                "<pending>".into()
            }
        }
        "ExternalName" => s(o, "/spec/externalName").to_owned(),
        _ => "<unknown>".into(),
    };
    let ports: Vec<String> = arr(o, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64).filter(|n| *n > 0) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    };
    vec![
        name(o),
        json!(type_),
        json!(or_none(s(o, "/spec/clusterIP"))),
        json!(external),
        json!(ports),
        created(o, now),
        json!(format_labels(o.pointer("/spec/selector"))),
    ]
}

fn format_endpoints(o: &Value) -> String {
    let subsets = arr(o, "/subsets");
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut list = Vec::new();
    let mut total = 0usize;
    for ss in subsets {
        let addrs = ss
            .get("addresses")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let ports = ss
            .get("ports")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        if ports.is_empty() {
            for a in addrs {
                total += 1;
                if list.len() < 3 {
                    list.push(a.get("ip").and_then(Value::as_str).unwrap_or("").to_owned());
                }
            }
        } else {
            for p in ports {
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                for a in addrs {
                    total += 1;
                    if list.len() < 3 {
                        list.push(format!(
                            "{}:{port}",
                            a.get("ip").and_then(Value::as_str).unwrap_or("")
                        ));
                    }
                }
            }
        }
    }
    let mut out = list.join(",");
    if total > list.len() {
        out.push_str(&format!(" + {} more...", total - list.len()));
    }
    if out.is_empty() { "<none>".into() } else { out }
}

fn node(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    if let Some(c) = arr(o, "/status/conditions")
        .iter()
        .rev()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
    {
        status.push(if c.get("status").and_then(Value::as_str) == Some("True") {
            "Ready".into()
        } else {
            "NotReady".into()
        });
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = o.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                if !r.is_empty() {
                    roles.push(r.to_owned());
                }
            } else if k == "kubernetes.io/role"
                && let Some(v) = v.as_str().filter(|v| !v.is_empty())
            {
                roles.push(v.to_owned());
            }
        }
    }
    roles.sort();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    };
    let addr = |t: &str| {
        arr(o, "/status/addresses")
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(t))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .unwrap_or("<none>")
            .to_owned()
    };
    let unknown = |p: &str| {
        let v = s(o, p);
        if v.is_empty() {
            "<unknown>".to_owned()
        } else {
            v.to_owned()
        }
    };
    vec![
        name(o),
        json!(status.join(",")),
        json!(roles),
        created(o, now),
        json!(s(o, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(unknown("/status/nodeInfo/osImage")),
        json!(unknown("/status/nodeInfo/kernelVersion")),
        json!(unknown("/status/nodeInfo/containerRuntimeVersion")),
    ]
}

/// events.k8s.io/v1 fields under their core/v1 names, so one printer serves both.
fn events_v1_as_core(o: &Value) -> Value {
    let mut c = json!({
        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
        "involvedObject": o.get("regarding").cloned().unwrap_or(json!({})),
        "reason": o.get("reason").cloned().unwrap_or(Value::Null),
        "message": o.get("note").cloned().unwrap_or(Value::Null),
        "type": o.get("type").cloned().unwrap_or(Value::Null),
        "source": o.get("deprecatedSource").cloned().unwrap_or(json!({})),
        "firstTimestamp": o.get("deprecatedFirstTimestamp").cloned().unwrap_or(Value::Null),
        "lastTimestamp": o.get("deprecatedLastTimestamp").cloned().unwrap_or(Value::Null),
        "count": o.get("deprecatedCount").cloned().unwrap_or(Value::Null),
        "eventTime": o.get("eventTime").cloned().unwrap_or(Value::Null),
        "reportingComponent": o.get("reportingController").cloned().unwrap_or(Value::Null),
        "reportingInstance": o.get("reportingInstance").cloned().unwrap_or(Value::Null),
    });
    if let Some(series) = o.get("series").filter(|s| !s.is_null()) {
        c["series"] = series.clone();
    }
    c
}

fn event(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let first = match o.get("firstTimestamp").filter(|v| v.is_string()) {
        Some(v) => age(Some(v), now),
        None => age(o.get("eventTime"), now),
    };
    let mut last = match o.get("lastTimestamp").filter(|v| v.is_string()) {
        Some(v) => age(Some(v), now),
        None => first.clone(),
    };
    let mut count = o.get("count").and_then(Value::as_i64).unwrap_or(0);
    if let Some(series) = o.get("series").filter(|v| v.is_object()) {
        last = age(series.get("lastObservedTime"), now);
        count = series.get("count").and_then(Value::as_i64).unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let kind = s(o, "/involvedObject/kind").to_ascii_lowercase();
    let target = match s(o, "/involvedObject/name") {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let component = s(o, "/source/component");
    let source = if component.is_empty() {
        let rc = s(o, "/reportingComponent");
        let ri = s(o, "/reportingInstance");
        if ri.is_empty() {
            rc.to_owned()
        } else {
            format!("{rc}, {ri}")
        }
    } else {
        let host = s(o, "/source/host");
        if host.is_empty() {
            component.to_owned()
        } else {
            format!("{component}, {host}")
        }
    };
    vec![
        json!(last),
        json!(s(o, "/type")),
        json!(s(o, "/reason")),
        json!(target),
        json!(s(o, "/involvedObject/fieldPath")),
        json!(source),
        json!(s(o, "/message").trim()),
        json!(first),
        json!(count),
        name(o),
    ]
}

fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|x| x.as_str() == Some(m));
    let mut out = Vec::new();
    for (m, short) in [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ] {
        if has(m) {
            out.push(short);
        }
    }
    out.join(",")
}

fn storage_class(o: &Value) -> String {
    let sc = s(o, "/spec/storageClassName");
    if !sc.is_empty() {
        return sc.to_owned();
    }
    s(
        o,
        "/metadata/annotations/volume.beta.kubernetes.io~1storage-class",
    )
    .to_owned()
}

fn pv(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let claim = match (
        s(o, "/spec/claimRef/namespace"),
        s(o, "/spec/claimRef/name"),
    ) {
        (_, "") => String::new(),
        (ns, n) => format!("{ns}/{n}"),
    };
    let mut phase = s(o, "/status/phase").to_owned();
    if o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        phase = "Terminating".into();
    }
    let vm = s(o, "/spec/volumeMode");
    let vac = s(o, "/spec/volumeAttributesClassName");
    vec![
        name(o),
        json!(s(o, "/spec/capacity/storage")),
        json!(access_modes(arr(o, "/spec/accessModes"))),
        json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
        json!(phase),
        json!(claim),
        json!(storage_class(o)),
        json!(if vac.is_empty() { "<unset>" } else { vac }),
        json!(s(o, "/status/reason")),
        created(o, now),
        json!(if vm.is_empty() { "<unset>" } else { vm }),
    ]
}

fn pvc(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut phase = s(o, "/status/phase").to_owned();
    if o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        phase = "Terminating".into();
    }
    let (capacity, modes) = if s(o, "/spec/volumeName").is_empty() {
        (String::new(), String::new())
    } else {
        (
            s(o, "/status/capacity/storage").to_owned(),
            access_modes(arr(o, "/status/accessModes")),
        )
    };
    let vm = s(o, "/spec/volumeMode");
    let vac = s(o, "/status/currentVolumeAttributesClassName");
    vec![
        name(o),
        json!(phase),
        json!(s(o, "/spec/volumeName")),
        json!(capacity),
        json!(modes),
        json!(storage_class(o)),
        json!(if vac.is_empty() { "<unset>" } else { vac }),
        created(o, now),
        json!(if vm.is_empty() { "<unset>" } else { vm }),
    ]
}

fn quantity(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".into(),
    }
}

fn resource_quota(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut keys: Vec<&String> = o
        .pointer("/status/hard")
        .and_then(Value::as_object)
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    keys.sort();
    let (mut req, mut lim) = (Vec::new(), Vec::new());
    for k in keys {
        let used = quantity(o.pointer("/status/used").and_then(|u| u.get(k.as_str())));
        let hard = quantity(o.pointer("/status/hard").and_then(|u| u.get(k.as_str())));
        let entry = format!("{k}: {used}/{hard}");
        if k.split('.').next() == Some("limits") && k.contains('.') {
            lim.push(entry)
        } else {
            req.push(entry)
        }
    }
    vec![
        name(o),
        json!(req.join(", ")),
        json!(lim.join(", ")),
        created(o, now),
    ]
}

fn hpa(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        s(o, "/spec/scaleTargetRef/kind"),
        s(o, "/spec/scaleTargetRef/name")
    );
    let specs = arr(o, "/spec/metrics");
    let statuses = arr(o, "/status/currentMetrics");
    let targets = if specs.is_empty() {
        "<none>".to_owned()
    } else {
        let mut list = Vec::new();
        for (idx, spec) in specs.iter().enumerate() {
            let st = statuses.get(idx);
            let text = match spec.get("type").and_then(Value::as_str).unwrap_or("") {
                "Resource" | "ContainerResource" => {
                    let key = if spec.get("type").and_then(Value::as_str) == Some("Resource") {
                        "resource"
                    } else {
                        "containerResource"
                    };
                    let rname = spec
                        .pointer(&format!("/{key}/name"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if let Some(av) = spec.pointer(&format!("/{key}/target/averageValue")) {
                        let cur = st
                            .and_then(|s| s.pointer(&format!("/{key}/current/averageValue")))
                            .map_or("<unknown>".into(), |v| quantity(Some(v)));
                        format!("{rname}: {cur}/{}", quantity(Some(av)))
                    } else {
                        let cur = st
                            .and_then(|s| s.pointer(&format!("/{key}/current/averageUtilization")))
                            .and_then(Value::as_i64)
                            .map_or("<unknown>".into(), |u| format!("{u}%"));
                        let target = spec
                            .pointer(&format!("/{key}/target/averageUtilization"))
                            .and_then(Value::as_i64)
                            .map_or("<auto>".into(), |u| format!("{u}%"));
                        format!("{rname}: {cur}/{target}")
                    }
                }
                other => {
                    let key = match other {
                        "Pods" => "pods",
                        "Object" => "object",
                        _ => "external",
                    };
                    let target = spec
                        .pointer(&format!("/{key}/target/averageValue"))
                        .or_else(|| spec.pointer(&format!("/{key}/target/value")))
                        .map_or("<unknown>".into(), |v| quantity(Some(v)));
                    let cur = st
                        .and_then(|s| {
                            s.pointer(&format!("/{key}/current/averageValue"))
                                .or_else(|| s.pointer(&format!("/{key}/current/value")))
                        })
                        .map_or("<unknown>".into(), |v| quantity(Some(v)));
                    format!("{cur}/{target}")
                }
            };
            list.push(text);
        }
        let shown = list.len().min(2);
        let mut out = list[..shown].join(", ");
        if list.len() > shown {
            out.push_str(&format!(" + {} more...", list.len() - shown));
        }
        out
    };
    let min = o
        .pointer("/spec/minReplicas")
        .and_then(Value::as_i64)
        .map_or("<unset>".into(), |m| m.to_string());
    vec![
        name(o),
        json!(reference),
        json!(targets),
        json!(min),
        json!(i(o, "/spec/maxReplicas")),
        json!(i(o, "/status/currentReplicas")),
        created(o, now),
    ]
}

fn endpoint_slice(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let ports = match o.get("ports").and_then(Value::as_array) {
        None => "<unset>".to_owned(),
        Some(p) if p.is_empty() => "<unset>".to_owned(),
        Some(p) => {
            let list: Vec<String> = p
                .iter()
                .map(|x| {
                    x.get("port")
                        .and_then(Value::as_i64)
                        .map_or("<unset>".into(), |n| n.to_string())
                })
                .collect();
            truncate_list(&list, 3)
        }
    };
    let addrs: Vec<String> = arr(o, "/endpoints")
        .iter()
        .flat_map(|e| {
            e.get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let endpoints = if addrs.is_empty() {
        "<unset>".into()
    } else {
        truncate_list(&addrs, 3)
    };
    vec![
        name(o),
        json!(s(o, "/addressType")),
        json!(ports),
        json!(endpoints),
        created(o, now),
    ]
}

fn truncate_list(list: &[String], max: usize) -> String {
    let shown = list.len().min(max);
    let mut out = list[..shown].join(",");
    if list.len() > shown {
        out.push_str(&format!(" + {} more...", list.len() - shown));
    }
    out
}

fn role_binding(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let role = format!("{}/{}", s(o, "/roleRef/kind"), s(o, "/roleRef/name"));
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for sub in arr(o, "/subjects") {
        let n = sub.get("name").and_then(Value::as_str).unwrap_or("");
        match sub.get("kind").and_then(Value::as_str).unwrap_or("") {
            "User" => users.push(n.to_owned()),
            "Group" => groups.push(n.to_owned()),
            "ServiceAccount" => sas.push(format!(
                "{}/{n}",
                sub.get("namespace").and_then(Value::as_str).unwrap_or("")
            )),
            _ => {}
        }
    }
    vec![
        name(o),
        json!(role),
        created(o, now),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ]
}
