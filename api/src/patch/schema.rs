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

/// The patch metadata of a built-in kind, by `apiVersion` (`v1`, `apps/v1`, …) and `kind`.
/// `None` for kinds the built-in schemas do not know (custom resources): upstream answers a
/// strategic merge patch on those with 415 UnsupportedMediaType.
///
/// **Single source of truth:** this is read from the same component schemas the OpenAPI
/// documents serve ([`crate::openapi::builtin_schema_set`]: k8s-openapi's schemas with the
/// `x-kubernetes-patch-*`/`x-kubernetes-list-*` extensions of [`crate::openapi::PATCH_META`]),
/// so kubectl's client-side apply and the server's patch engines see the same metadata.
/// Each kind's schema is built on first use and kept for the life of the process.
pub fn builtin_schema(api_version: &str, kind: &str) -> Option<&'static dyn PatchSchema> {
    type Cache = std::sync::Mutex<HashMap<(String, String), Option<&'static OpenApiSchema>>>;
    // (apiVersion, kind) -> component; a kind served at several versions
    // (HorizontalPodAutoscaler v1 and v2) has one entry per version.
    static KINDS: OnceLock<HashMap<(String, String), String>> = OnceLock::new();
    static BUILT: OnceLock<Cache> = OnceLock::new();
    let set = crate::openapi::builtin_schema_set();
    let kinds = KINDS.get_or_init(|| {
        let mut m = HashMap::new();
        for (name, schema) in set.iter() {
            let gvks = schema
                .get("x-kubernetes-group-version-kind")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for gvk in gvks {
                let g = gvk.get("group").and_then(Value::as_str).unwrap_or("");
                let v = gvk.get("version").and_then(Value::as_str).unwrap_or("");
                let k = gvk.get("kind").and_then(Value::as_str).unwrap_or("");
                // Kinds served in every group (DeleteOptions, WatchEvent) are not objects.
                if !k.is_empty() && k != "DeleteOptions" && k != "WatchEvent" {
                    let av = if g.is_empty() {
                        v.to_string()
                    } else {
                        format!("{g}/{v}")
                    };
                    m.insert((av, k.to_string()), name.clone());
                }
            }
        }
        m
    });
    let key = (api_version.to_string(), kind.to_string());
    let component = kinds.get(&key)?;
    let cache = BUILT.get_or_init(Default::default);
    let mut guard = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let built = *guard.entry(key).or_insert_with(|| {
        OpenApiSchema::from_lookup(&**set, component).map(|s| {
            let leaked: &'static Arc<OpenApiSchema> = Box::leak(Box::new(s));
            &**leaked
        })
    });
    built.map(|s| s as &dyn PatchSchema)
}

/// Where [`OpenApiSchema`] finds `$ref`erenced component schemas by name.
pub trait ComponentLookup {
    /// The component schema called `name` (`io.k8s.api.core.v1.Pod`).
    fn component(&self, name: &str) -> Option<&Value>;
}

impl ComponentLookup for serde_json::Map<String, Value> {
    fn component(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

impl ComponentLookup for crate::openapi::SchemaSet {
    fn component(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
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

/// Component schemas already built during one [`OpenApiSchema`] construction, by name;
/// `None` while a component is being built (a reference back to it is a cycle, such as
/// JSONSchemaProps, and gets no metadata, which no recursive built-in type has).
type Memo = HashMap<String, Option<Arc<OpenApiSchema>>>;

impl OpenApiSchema {
    /// The schema of component `root` in `components` (the `components.schemas` object).
    pub fn from_component(
        components: &serde_json::Map<String, Value>,
        root: &str,
    ) -> Option<Arc<OpenApiSchema>> {
        Self::from_lookup(components, root)
    }

    /// The schema of component `root`, resolving references through `components`.
    pub fn from_lookup(components: &dyn ComponentLookup, root: &str) -> Option<Arc<OpenApiSchema>> {
        let node = components.component(root)?;
        let mut memo = Memo::new();
        memo.insert(root.to_string(), None);
        let built = Self::build(components, node, 0, &mut memo);
        Some(built)
    }

    /// The schema of an inline OpenAPI schema object (a CRD's `openAPIV3Schema`).
    pub fn from_inline(schema: &Value) -> Arc<OpenApiSchema> {
        Self::build(&serde_json::Map::new(), schema, 0, &mut Memo::new())
    }

    /// Follows `$ref`/`allOf[0].$ref` to the component; returns it and its name, if any.
    fn resolve<'a>(
        components: &'a dyn ComponentLookup,
        mut node: &'a Value,
    ) -> (&'a Value, Option<&'a str>) {
        let mut name = None;
        for _ in 0..8 {
            let reference = node.get("$ref").and_then(Value::as_str).or_else(|| {
                node.get("allOf")
                    .and_then(|a| a.get(0))
                    .and_then(|x| x.get("$ref"))
                    .and_then(Value::as_str)
            });
            let Some((n, target)) = reference
                .and_then(|r| r.rsplit('/').next())
                .and_then(|n| components.component(n).map(|t| (n, t)))
            else {
                break;
            };
            node = target;
            name = Some(n);
        }
        (node, name)
    }

    /// The schema of a property's value (or list element), memoized by component name.
    fn child(
        components: &dyn ComponentLookup,
        element: &Value,
        depth: usize,
        memo: &mut Memo,
    ) -> Option<Arc<OpenApiSchema>> {
        let (resolved, name) = Self::resolve(components, element);
        resolved.get("properties")?;
        let Some(name) = name else {
            return Some(Self::build(components, element, depth + 1, memo));
        };
        if let Some(done) = memo.get(name) {
            return done.clone();
        }
        memo.insert(name.to_string(), None);
        let built = Self::build(components, element, depth + 1, memo);
        memo.insert(name.to_string(), Some(built.clone()));
        Some(built)
    }

    fn build(
        components: &dyn ComponentLookup,
        node: &Value,
        depth: usize,
        memo: &mut Memo,
    ) -> Arc<OpenApiSchema> {
        let (node, _) = Self::resolve(components, node);
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
                let (resolved, _) = Self::resolve(components, prop);
                let element = resolved.get("items").unwrap_or(prop);
                let child = Self::child(components, element, depth, memo);
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
    fn every_builtin_kind_has_patch_metadata() {
        // The kinds the table used to list, now read from the OpenAPI components.
        for (av, kind) in [
            ("v1", "Pod"),
            ("v1", "ReplicationController"),
            ("v1", "Service"),
            ("v1", "Node"),
            ("v1", "Namespace"),
            ("v1", "PersistentVolumeClaim"),
            ("v1", "PersistentVolume"),
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "ServiceAccount"),
            ("v1", "Endpoints"),
            ("v1", "Event"),
            ("v1", "LimitRange"),
            ("v1", "ResourceQuota"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "ReplicaSet"),
            ("apps/v1", "StatefulSet"),
            ("apps/v1", "DaemonSet"),
            ("apps/v1", "ControllerRevision"),
            ("batch/v1", "Job"),
            ("batch/v1", "CronJob"),
            ("coordination.k8s.io/v1", "Lease"),
            ("discovery.k8s.io/v1", "EndpointSlice"),
            ("events.k8s.io/v1", "Event"),
            ("policy/v1", "PodDisruptionBudget"),
            ("rbac.authorization.k8s.io/v1", "Role"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
            ("scheduling.k8s.io/v1", "PriorityClass"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            ("autoscaling/v1", "Scale"),
        ] {
            let s = builtin_schema(av, kind).unwrap_or_else(|| panic!("{av} {kind}"));
            let meta = s
                .field("metadata")
                .and_then(|f| f.schema)
                .expect("metadata");
            let fin = meta.field("finalizers").expect("finalizers");
            assert!(fin.merge && fin.merge_key.is_none(), "{av} {kind}");
            let owners = meta.field("ownerReferences").expect("ownerReferences");
            assert_eq!(owners.merge_key, Some("uid"), "{av} {kind}");
        }
        // Status conditions merge by type where the Go types say so.
        for (av, kind) in [
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
            ("batch/v1", "Job"),
        ] {
            let st = builtin_schema(av, kind)
                .and_then(|s| s.field("status"))
                .and_then(|f| f.schema)
                .expect("status");
            let c = st.field("conditions").expect("conditions");
            assert!(c.merge && c.merge_key == Some("type"), "{av} {kind}");
        }
        let cj = builtin_schema("batch/v1", "CronJob").expect("cronjob");
        let containers = ["spec", "jobTemplate", "spec", "template", "spec"]
            .iter()
            .try_fold(cj, |s, f| s.field(f).and_then(|m| m.schema))
            .and_then(|s| s.field("containers"))
            .expect("cronjob containers");
        assert_eq!(containers.merge_key, Some("name"));
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
        assert!(pod.field("tolerations").is_none_or(|f| !f.merge));
        let strategy = spec.field("strategy").expect("strategy");
        assert!(strategy.retain_keys && !strategy.merge);
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
