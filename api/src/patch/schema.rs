//! Patch metadata: which lists merge by which key, which keep their keys, which are sets.
//!
//! The strategic-merge-patch engine and server-side apply both ask a [`PatchSchema`] about the
//! members of the object they walk. [`builtin_schema`] answers for the built-in kinds from a
//! table written from upstream's `patchStrategy`/`patchMergeKey`/`listType`/`listMapKey` struct
//! tags; a schema built from OpenAPI `x-kubernetes-patch-*` / `x-kubernetes-list-*` extensions
//! can implement the same trait.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

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

/// Patch metadata read from OpenAPI v3 schemas: the `x-kubernetes-patch-strategy`,
/// `x-kubernetes-patch-merge-key`, `x-kubernetes-list-type` and `x-kubernetes-list-map-keys`
/// extensions on properties, following `$ref`/`allOf` into `components.schemas` and `items`
/// into list elements. Works for built-in components (as `openapi::SchemaSet` serves them) and
/// for the inline `openAPIV3Schema` of a CRD version.
pub struct OpenApiSchema {
    fields: HashMap<String, OpenApiField>,
}

struct OpenApiField {
    merge: bool,
    retain_keys: bool,
    merge_key: Option<&'static str>,
    map_keys: &'static [&'static str],
    child: Option<Arc<OpenApiSchema>>,
}

/// Nesting bound when following references (recursive schemas such as JSONSchemaProps).
const OPENAPI_MAX_DEPTH: usize = 16;

/// Interned extension strings: schemas are built rarely (at start, on CRD changes) and their
/// key names are few, so leaking them keeps `FieldMeta` borrow-only.
fn intern(s: &str) -> &'static str {
    static POOL: OnceLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        OnceLock::new();
    let pool = POOL.get_or_init(Default::default);
    let mut guard = match pool.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(found) = guard.get(s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    guard.insert(leaked);
    leaked
}

fn intern_list(keys: &[&str]) -> &'static [&'static str] {
    static POOL: OnceLock<std::sync::Mutex<Vec<&'static [&'static str]>>> = OnceLock::new();
    let pool = POOL.get_or_init(Default::default);
    let mut guard = match pool.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(found) = guard.iter().find(|l| **l == keys) {
        return found;
    }
    let interned: Vec<&'static str> = keys.iter().map(|k| intern(k)).collect();
    let leaked: &'static [&'static str] = Box::leak(interned.into_boxed_slice());
    guard.push(leaked);
    leaked
}

impl OpenApiSchema {
    /// The schema of component `root` in `components` (the `components.schemas` object).
    pub fn from_component(
        components: &serde_json::Map<String, Value>,
        root: &str,
    ) -> Option<Arc<OpenApiSchema>> {
        let node = components.get(root)?;
        Some(Self::build(components, node, 0))
    }

    /// The schema of an inline OpenAPI schema object (a CRD's `openAPIV3Schema`).
    pub fn from_inline(schema: &Value) -> Arc<OpenApiSchema> {
        Self::build(&serde_json::Map::new(), schema, 0)
    }

    fn resolve<'a>(
        components: &'a serde_json::Map<String, Value>,
        mut node: &'a Value,
    ) -> &'a Value {
        for _ in 0..8 {
            let reference = node.get("$ref").and_then(Value::as_str).or_else(|| {
                node.get("allOf")
                    .and_then(|a| a.get(0))
                    .and_then(|x| x.get("$ref"))
                    .and_then(Value::as_str)
            });
            let Some(target) = reference
                .and_then(|r| r.rsplit('/').next())
                .and_then(|name| components.get(name))
            else {
                break;
            };
            node = target;
        }
        node
    }

    fn build(
        components: &serde_json::Map<String, Value>,
        node: &Value,
        depth: usize,
    ) -> Arc<OpenApiSchema> {
        let node = Self::resolve(components, node);
        let mut fields = HashMap::new();
        if depth < OPENAPI_MAX_DEPTH
            && let Some(props) = node.get("properties").and_then(Value::as_object)
        {
            for (name, prop) in props {
                let strategy = prop
                    .get("x-kubernetes-patch-strategy")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let list_type = prop.get("x-kubernetes-list-type").and_then(Value::as_str);
                let map_keys: Vec<&str> = prop
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let resolved = Self::resolve(components, prop);
                let element = resolved.get("items").unwrap_or(resolved);
                let child = (Self::resolve(components, element)
                    .get("properties")
                    .is_some())
                .then(|| Self::build(components, element, depth + 1));
                fields.insert(
                    name.clone(),
                    OpenApiField {
                        merge: strategy.split(',').any(|s| s == "merge")
                            || list_type == Some("set"),
                        retain_keys: strategy.split(',').any(|s| s == "retainKeys"),
                        merge_key: prop
                            .get("x-kubernetes-patch-merge-key")
                            .and_then(Value::as_str)
                            .map(intern),
                        map_keys: if list_type == Some("map") {
                            intern_list(&map_keys)
                        } else {
                            &[]
                        },
                        child,
                    },
                );
            }
        }
        Arc::new(OpenApiSchema { fields })
    }
}

impl PatchSchema for OpenApiSchema {
    fn field(&self, name: &str) -> Option<FieldMeta<'_>> {
        let f = self.fields.get(name)?;
        Some(FieldMeta {
            merge: f.merge,
            retain_keys: f.retain_keys,
            merge_key: f.merge_key,
            list_map_keys: f.map_keys,
            schema: f.child.as_deref().map(|c| c as &dyn PatchSchema),
        })
    }
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

    #[test]
    fn openapi_extensions_drive_the_schema() {
        let components = serde_json::json!({
            "io.k8s.api.apps.v1.Deployment": {"properties": {
                "spec": {"allOf": [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}]}}},
            "io.k8s.api.apps.v1.DeploymentSpec": {"properties": {
                "template": {"$ref": "#/components/schemas/io.k8s.api.core.v1.PodTemplateSpec"}}},
            "io.k8s.api.core.v1.PodTemplateSpec": {"properties": {
                "spec": {"$ref": "#/components/schemas/io.k8s.api.core.v1.PodSpec"}}},
            "io.k8s.api.core.v1.PodSpec": {"properties": {
                "containers": {"type": "array", "x-kubernetes-patch-merge-key": "name",
                    "x-kubernetes-patch-strategy": "merge", "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}}}},
            "io.k8s.api.core.v1.Container": {"properties": {
                "ports": {"type": "array", "x-kubernetes-patch-merge-key": "containerPort",
                    "x-kubernetes-patch-strategy": "merge", "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["containerPort", "protocol"],
                    "items": {"properties": {"containerPort": {"type": "integer"}}}}}}
        });
        let components = components.as_object().unwrap();
        let d = OpenApiSchema::from_component(components, "io.k8s.api.apps.v1.Deployment").unwrap();
        let pod = d
            .field("spec")
            .and_then(|f| f.schema)
            .and_then(|s| s.field("template"))
            .and_then(|f| f.schema)
            .and_then(|s| s.field("spec"))
            .and_then(|f| f.schema)
            .expect("podspec");
        let c = pod.field("containers").expect("containers");
        assert!(c.merge);
        assert_eq!(c.merge_key, Some("name"));
        let ports = c.schema.and_then(|s| s.field("ports")).expect("ports");
        assert_eq!(ports.keys(), Some(vec!["containerPort", "protocol"]));

        // A CRD's inline schema: a set list and an atomic list.
        let crd = OpenApiSchema::from_inline(&serde_json::json!({"properties": {"spec": {
            "properties": {"tags": {"type": "array", "x-kubernetes-list-type": "set"},
                           "args": {"type": "array"}}}}}));
        let spec = crd.field("spec").and_then(|f| f.schema).expect("spec");
        assert!(
            spec.field("tags")
                .is_some_and(|f| f.merge && f.merge_key.is_none())
        );
        assert!(spec.field("args").is_some_and(|f| !f.merge));
    }
}
