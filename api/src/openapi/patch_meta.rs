//! Patch and list metadata the k8s-openapi schemas leave out: the struct tags
//! (`patchStrategy`, `patchMergeKey`, `listType`, `listMapKeys`) of the Kubernetes Go types,
//! for the fields kubectl's client-side apply and strategic merge patch depend on.

/// One field's patch metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchMeta {
    /// OpenAPI component name, e.g. `io.k8s.api.core.v1.PodSpec`.
    pub component: &'static str,
    /// JSON field name.
    pub field: &'static str,
    /// `x-kubernetes-patch-strategy` (`merge`, `retainKeys`, `merge,retainKeys`), if any.
    pub strategy: Option<&'static str>,
    /// `x-kubernetes-patch-merge-key`, if any.
    pub merge_key: Option<&'static str>,
    /// `x-kubernetes-list-type` (`atomic`, `set`, `map`), if any.
    pub list_type: Option<&'static str>,
    /// `x-kubernetes-list-map-keys` for `map` lists.
    pub map_keys: &'static [&'static str],
}

const fn m(
    component: &'static str,
    field: &'static str,
    strategy: Option<&'static str>,
    merge_key: Option<&'static str>,
    list_type: Option<&'static str>,
    map_keys: &'static [&'static str],
) -> PatchMeta {
    PatchMeta {
        component,
        field,
        strategy,
        merge_key,
        list_type,
        map_keys,
    }
}

const MERGE: Option<&str> = Some("merge");
const MAP: Option<&str> = Some("map");

macro_rules! core {
    ($name:literal) => {
        concat!("io.k8s.api.core.v1.", $name)
    };
}

/// The patch metadata table, as the Kubernetes 1.33 Go types declare it.
pub const PATCH_META: &[PatchMeta] = &[
    // PodSpec
    m(
        core!("PodSpec"),
        "containers",
        MERGE,
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("PodSpec"),
        "initContainers",
        MERGE,
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("PodSpec"),
        "ephemeralContainers",
        MERGE,
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("PodSpec"),
        "volumes",
        Some("merge,retainKeys"),
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("PodSpec"),
        "imagePullSecrets",
        MERGE,
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("PodSpec"),
        "hostAliases",
        MERGE,
        Some("ip"),
        MAP,
        &["ip"],
    ),
    m(
        core!("PodSpec"),
        "topologySpreadConstraints",
        MERGE,
        Some("topologyKey"),
        MAP,
        &["topologyKey", "whenUnsatisfiable"],
    ),
    m(
        core!("PodSpec"),
        "resourceClaims",
        Some("merge,retainKeys"),
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("PodSpec"),
        "schedulingGates",
        MERGE,
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("PodSpec"),
        "tolerations",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    // Container and EphemeralContainer
    m(
        core!("Container"),
        "env",
        MERGE,
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("Container"),
        "ports",
        MERGE,
        Some("containerPort"),
        MAP,
        &["containerPort", "protocol"],
    ),
    m(
        core!("Container"),
        "volumeMounts",
        MERGE,
        Some("mountPath"),
        MAP,
        &["mountPath"],
    ),
    m(
        core!("Container"),
        "volumeDevices",
        MERGE,
        Some("devicePath"),
        MAP,
        &["devicePath"],
    ),
    m(
        core!("Container"),
        "resizePolicy",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    m(
        core!("EphemeralContainer"),
        "env",
        MERGE,
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("EphemeralContainer"),
        "ports",
        MERGE,
        Some("containerPort"),
        MAP,
        &["containerPort", "protocol"],
    ),
    m(
        core!("EphemeralContainer"),
        "volumeMounts",
        MERGE,
        Some("mountPath"),
        MAP,
        &["mountPath"],
    ),
    m(
        core!("EphemeralContainer"),
        "volumeDevices",
        MERGE,
        Some("devicePath"),
        MAP,
        &["devicePath"],
    ),
    // status conditions and addresses
    m(
        core!("PodStatus"),
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        core!("PodStatus"),
        "podIPs",
        MERGE,
        Some("ip"),
        MAP,
        &["ip"],
    ),
    m(
        core!("PodStatus"),
        "hostIPs",
        MERGE,
        Some("ip"),
        Some("atomic"),
        &[],
    ),
    m(
        core!("PodStatus"),
        "resourceClaimStatuses",
        Some("merge,retainKeys"),
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("NodeStatus"),
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        core!("NodeStatus"),
        "addresses",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(core!("NodeSpec"), "podCIDRs", MERGE, None, Some("set"), &[]),
    m(core!("NodeSpec"), "taints", None, None, Some("atomic"), &[]),
    m(
        core!("NamespaceStatus"),
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        core!("PersistentVolumeClaimStatus"),
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        core!("ReplicationControllerStatus"),
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        core!("ServiceSpec"),
        "ports",
        MERGE,
        Some("port"),
        MAP,
        &["port", "protocol"],
    ),
    m(
        core!("ServiceAccount"),
        "secrets",
        MERGE,
        Some("name"),
        MAP,
        &["name"],
    ),
    m(
        core!("ServiceStatus"),
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    // ObjectMeta
    m(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        MERGE,
        None,
        Some("set"),
        &[],
    ),
    m(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        MERGE,
        Some("uid"),
        MAP,
        &["uid"],
    ),
    m(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "managedFields",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    // apps/v1
    m(
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        Some("retainKeys"),
        None,
        None,
        &[],
    ),
    m(
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        "io.k8s.api.apps.v1.DaemonSetSpec",
        "updateStrategy",
        None,
        None,
        None,
        &[],
    ),
    m(
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        "io.k8s.api.apps.v1.StatefulSetSpec",
        "volumeClaimTemplates",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    // batch/v1
    m(
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        MERGE,
        Some("type"),
        Some("atomic"),
        &[],
    ),
    m(
        "io.k8s.api.batch.v1.CronJobStatus",
        "active",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    // policy/v1
    m(
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    // autoscaling/v2
    m(
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerStatus",
        "conditions",
        MERGE,
        Some("type"),
        MAP,
        &["type"],
    ),
    m(
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerSpec",
        "metrics",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    // rbac/v1
    m(
        "io.k8s.api.rbac.v1.Role",
        "rules",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    m(
        "io.k8s.api.rbac.v1.ClusterRole",
        "rules",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    m(
        "io.k8s.api.rbac.v1.RoleBinding",
        "subjects",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    m(
        "io.k8s.api.rbac.v1.ClusterRoleBinding",
        "subjects",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    // discovery/v1
    m(
        "io.k8s.api.discovery.v1.EndpointSlice",
        "endpoints",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    m(
        "io.k8s.api.discovery.v1.EndpointSlice",
        "ports",
        None,
        None,
        Some("atomic"),
        &[],
    ),
];

/// The patch metadata for `component.field`, if the table has it.
pub fn patch_meta(component: &str, field: &str) -> Option<&'static PatchMeta> {
    PATCH_META
        .iter()
        .find(|p| p.component == component && p.field == field)
}
