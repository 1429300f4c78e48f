//! Patch metadata: which lists merge by which key, which keep their keys, which are sets.
//!
//! The strategic-merge-patch engine and server-side apply both ask a [`PatchSchema`] about the
//! members of the object they walk. [`builtin_schema`] answers for the built-in kinds from a
//! table written from upstream's `patchStrategy`/`patchMergeKey`/`listType`/`listMapKey` struct
//! tags; a schema built from OpenAPI `x-kubernetes-patch-*` / `x-kubernetes-list-*` extensions
//! can implement the same trait.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Patch metadata of one object type.
pub trait PatchSchema: Send + Sync {
    /// Metadata of member `name` of objects of this type; `None` means "no special handling":
    /// objects merge member by member, lists are replaced (atomic).
    fn field(&self, name: &str) -> Option<FieldMeta<'_>>;
}

/// What the schema says about one member.
#[derive(Clone, Copy)]
pub struct FieldMeta<'a> {
    /// `patchStrategy` contains `merge`: the list merges (by `merge_key` for objects, as a set
    /// for scalars) instead of being replaced.
    pub merge: bool,
    /// `patchStrategy` contains `retainKeys` (the `$retainKeys` directive applies).
    pub retain_keys: bool,
    /// `patchMergeKey` of a list of objects.
    pub merge_key: Option<&'a str>,
    /// `listMapKey`s for server-side apply (falls back to `merge_key`).
    pub list_map_keys: &'a [&'a str],
    /// The type of the member's value (or of the list's elements), if it has metadata itself.
    pub schema: Option<&'a dyn PatchSchema>,
}

impl<'a> FieldMeta<'a> {
    /// The keys that identify an element of an associative list, if the list is one.
    pub fn keys(&self) -> Option<Vec<&'a str>> {
        if !self.list_map_keys.is_empty() {
            Some(self.list_map_keys.to_vec())
        } else {
            self.merge_key.map(|k| vec![k])
        }
    }
}

/// A schema with no metadata at all: plain JSON-merge-patch-like behaviour.
pub struct NoSchema;

impl PatchSchema for NoSchema {
    fn field(&self, _name: &str) -> Option<FieldMeta<'_>> {
        None
    }
}

/// One member of a table type.
struct F {
    name: &'static str,
    ty: Option<&'static str>,
    strategy: &'static str,
    key: Option<&'static str>,
    map_keys: &'static [&'static str],
}

const fn obj(name: &'static str, ty: &'static str) -> F {
    F {
        name,
        ty: Some(ty),
        strategy: "",
        key: None,
        map_keys: &[],
    }
}

const fn keyed(name: &'static str, ty: Option<&'static str>, key: &'static str) -> F {
    F {
        name,
        ty,
        strategy: "merge",
        key: Some(key),
        map_keys: &[],
    }
}

const fn set(name: &'static str) -> F {
    F {
        name,
        ty: None,
        strategy: "merge",
        key: None,
        map_keys: &[],
    }
}

/// A type of the built-in table.
struct TableType {
    fields: &'static [F],
}

const META: F = obj("metadata", "ObjectMeta");

/// The built-in types: (name, members with metadata). Members not listed have none.
static TYPES: &[(&str, &[F])] = &[
    (
        "ObjectMeta",
        &[set("finalizers"), keyed("ownerReferences", None, "uid")],
    ),
    ("Plain", &[META]),
    ("PodTemplateSpec", &[META, obj("spec", "PodSpec")]),
    (
        "PodSpec",
        &[
            F {
                name: "volumes",
                ty: None,
                strategy: "merge,retainKeys",
                key: Some("name"),
                map_keys: &[],
            },
            keyed("initContainers", Some("Container"), "name"),
            keyed("containers", Some("Container"), "name"),
            keyed("ephemeralContainers", Some("Container"), "name"),
            keyed("imagePullSecrets", None, "name"),
            keyed("hostAliases", None, "ip"),
            F {
                name: "topologySpreadConstraints",
                ty: None,
                strategy: "merge",
                key: Some("topologyKey"),
                map_keys: &["topologyKey", "whenUnsatisfiable"],
            },
            F {
                name: "resourceClaims",
                ty: None,
                strategy: "merge,retainKeys",
                key: Some("name"),
                map_keys: &[],
            },
            keyed("schedulingGates", None, "name"),
        ],
    ),
    (
        "Container",
        &[
            F {
                name: "ports",
                ty: None,
                strategy: "merge",
                key: Some("containerPort"),
                map_keys: &["containerPort", "protocol"],
            },
            keyed("env", None, "name"),
            keyed("volumeMounts", None, "mountPath"),
            keyed("volumeDevices", None, "devicePath"),
        ],
    ),
    (
        "PodStatus",
        &[
            keyed("conditions", None, "type"),
            keyed("podIPs", None, "ip"),
            keyed("hostIPs", None, "ip"),
            F {
                name: "resourceClaimStatuses",
                ty: None,
                strategy: "merge,retainKeys",
                key: Some("name"),
                map_keys: &[],
            },
        ],
    ),
    ("Conditions", &[keyed("conditions", None, "type")]),
    (
        "Pod",
        &[META, obj("spec", "PodSpec"), obj("status", "PodStatus")],
    ),
    ("PodTemplate", &[META, obj("template", "PodTemplateSpec")]),
    ("TemplateSpec", &[obj("template", "PodTemplateSpec")]),
    (
        "DeploymentSpec",
        &[
            obj("template", "PodTemplateSpec"),
            F {
                name: "strategy",
                ty: None,
                strategy: "retainKeys",
                key: None,
                map_keys: &[],
            },
        ],
    ),
    (
        "Deployment",
        &[
            META,
            obj("spec", "DeploymentSpec"),
            obj("status", "Conditions"),
        ],
    ),
    (
        "Workload",
        &[
            META,
            obj("spec", "TemplateSpec"),
            obj("status", "Conditions"),
        ],
    ),
    ("JobTemplateSpec", &[META, obj("spec", "TemplateSpec")]),
    ("CronJobSpec", &[obj("jobTemplate", "JobTemplateSpec")]),
    ("CronJob", &[META, obj("spec", "CronJobSpec")]),
    (
        "ServiceSpec",
        &[F {
            name: "ports",
            ty: None,
            strategy: "merge",
            key: Some("port"),
            map_keys: &["port", "protocol"],
        }],
    ),
    (
        "Service",
        &[
            META,
            obj("spec", "ServiceSpec"),
            obj("status", "Conditions"),
        ],
    ),
    ("NodeSpec", &[set("podCIDRs")]),
    (
        "NodeStatus",
        &[
            keyed("addresses", None, "type"),
            keyed("conditions", None, "type"),
        ],
    ),
    (
        "Node",
        &[META, obj("spec", "NodeSpec"), obj("status", "NodeStatus")],
    ),
    ("WithStatusConditions", &[META, obj("status", "Conditions")]),
    ("ServiceAccount", &[META, keyed("secrets", None, "name")]),
];

/// Built-in kinds by (API group, kind) and the table type describing them.
static KINDS: &[(&str, &str, &str)] = &[
    ("", "Pod", "Pod"),
    ("", "PodTemplate", "PodTemplate"),
    ("", "ReplicationController", "Workload"),
    ("", "Service", "Service"),
    ("", "Node", "Node"),
    ("", "Namespace", "WithStatusConditions"),
    ("", "PersistentVolumeClaim", "WithStatusConditions"),
    ("", "PersistentVolume", "Plain"),
    ("", "ConfigMap", "Plain"),
    ("", "Secret", "Plain"),
    ("", "ServiceAccount", "ServiceAccount"),
    ("", "Endpoints", "Plain"),
    ("", "Event", "Plain"),
    ("", "LimitRange", "Plain"),
    ("", "ResourceQuota", "Plain"),
    ("apps", "Deployment", "Deployment"),
    ("apps", "ReplicaSet", "Workload"),
    ("apps", "StatefulSet", "Workload"),
    ("apps", "DaemonSet", "Workload"),
    ("apps", "ControllerRevision", "Plain"),
    ("batch", "Job", "Workload"),
    ("batch", "CronJob", "CronJob"),
    ("coordination.k8s.io", "Lease", "Plain"),
    ("discovery.k8s.io", "EndpointSlice", "Plain"),
    ("events.k8s.io", "Event", "Plain"),
    ("policy", "PodDisruptionBudget", "WithStatusConditions"),
    ("rbac.authorization.k8s.io", "Role", "Plain"),
    ("rbac.authorization.k8s.io", "ClusterRole", "Plain"),
    ("rbac.authorization.k8s.io", "RoleBinding", "Plain"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding", "Plain"),
    ("scheduling.k8s.io", "PriorityClass", "Plain"),
    (
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "WithStatusConditions",
    ),
    ("autoscaling", "Scale", "Plain"),
];

fn table() -> &'static HashMap<&'static str, TableType> {
    static TABLE: OnceLock<HashMap<&'static str, TableType>> = OnceLock::new();
    TABLE.get_or_init(|| {
        TYPES
            .iter()
            .map(|(name, fields)| (*name, TableType { fields }))
            .collect()
    })
}

impl PatchSchema for TableType {
    fn field(&self, name: &str) -> Option<FieldMeta<'_>> {
        let f = self.fields.iter().find(|f| f.name == name)?;
        let schema =
            f.ty.and_then(|t| table().get(t))
                .map(|t| t as &dyn PatchSchema);
        Some(FieldMeta {
            merge: f.strategy.split(',').any(|s| s == "merge"),
            retain_keys: f.strategy.split(',').any(|s| s == "retainKeys"),
            merge_key: f.key,
            list_map_keys: f.map_keys,
            schema,
        })
    }
}

/// The patch metadata of a built-in kind, by `apiVersion` (`v1`, `apps/v1`, …) and `kind`.
/// `None` for kinds this table does not know (custom resources): upstream answers a strategic
/// merge patch on those with 415 UnsupportedMediaType.
pub fn builtin_schema(api_version: &str, kind: &str) -> Option<&'static dyn PatchSchema> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let (_, _, ty) = KINDS.iter().find(|(g, k, _)| *g == group && *k == kind)?;
    table().get(ty).map(|t| t as &dyn PatchSchema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_referenced_type_exists() {
        for (name, fields) in TYPES {
            for f in fields.iter() {
                if let Some(t) = f.ty {
                    assert!(table().contains_key(t), "{name}.{} -> {t}", f.name);
                }
            }
        }
        for (g, k, t) in KINDS {
            assert!(table().contains_key(t), "{g}/{k} -> {t}");
        }
    }

    #[test]
    fn lookups() {
        let d = builtin_schema("apps/v1", "Deployment").expect("deployment");
        let spec = d.field("spec").and_then(|f| f.schema).expect("spec");
        let tpl = spec.field("template").and_then(|f| f.schema).expect("tpl");
        let pod = tpl.field("spec").and_then(|f| f.schema).expect("podspec");
        let c = pod.field("containers").expect("containers");
        assert!(c.merge);
        assert_eq!(c.merge_key, Some("name"));
        let v = pod.field("volumes").expect("volumes");
        assert!(v.merge && v.retain_keys);
        assert!(pod.field("tolerations").is_none());
        assert!(builtin_schema("example.com/v1", "Widget").is_none());
        assert!(builtin_schema("v1", "ConfigMap").is_some());
        assert!(builtin_schema("apps/v1", "ConfigMap").is_none());
    }
}
