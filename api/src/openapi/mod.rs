//! OpenAPI v3 (and v2 derived from it): the `/openapi/v3` index and one document per group-version, generated once
//! from the k8s-openapi schemas (with their descriptions) and the [`Registry`], and cached
//! as bytes with a content hash.
//!
//! Entry points:
//! - [`OpenApi::build`]`(&registry)`: generate everything (call once at start; ~1 s debug).
//! - [`OpenApi::index`]`() -> &Bytes`: the `/openapi/v3` body.
//! - [`OpenApi::document`]`("api/v1" | "apis/apps/v1") -> Option<&Document>`: a cached
//!   document (`bytes`, `hash`, `etag`); serve it with `Cache-Control: public, immutable`
//!   when the request's `hash` matches [`Document::hash`].
//! - [`OpenApi::update_crds`]`(&registry)`: regenerate the CRD group-versions after the
//!   registry changed (built-in documents are kept).
//! - [`OpenApi::schemas`]`() -> &SchemaSet`: the component schemas, for strict decoding and
//!   validation ([`crate::validation`]).
//! - [`OpenApi::v2_protobuf`]`()`: the `/openapi/v2` protobuf body for older kubectl.
//! - [`patch_meta`]: the patch strategy / merge key table (also usable by the strategic merge
//!   patch engine).

mod patch_meta;
mod v2;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api as k;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub use patch_meta::{PATCH_META, PatchMeta, patch_meta};

use crate::registry::{Registry, ResourceDef, Source};

/// The Kubernetes version the documents advertise.
pub const KUBERNETES_VERSION: &str = "v1.33.0";

const REF_PREFIX: &str = "#/components/schemas/";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";

/// Component schemas by name (`io.k8s.api.core.v1.Pod`), `$ref`s as
/// `#/components/schemas/<name>`.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    components: HashMap<String, Value>,
}

impl SchemaSet {
    /// The schema of component `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.components.get(name)
    }

    /// Follows a `$ref` string to its schema.
    pub fn resolve_ref(&self, reference: &str) -> Option<&Value> {
        self.get(reference.strip_prefix(REF_PREFIX)?)
    }

    /// Number of component schemas.
    pub fn len(&self) -> usize {
        self.components.len()
    }

    /// Whether there are no schemas.
    pub fn is_empty(&self) -> bool {
        self.components.is_empty()
    }

    /// Every component, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.components.iter()
    }
}

/// The component schemas of the built-in kinds (k8s-openapi's schemas plus the GVK and
/// [`PATCH_META`] extensions), generated once per process. The OpenAPI documents of a
/// registry without CRDs and the patch engines' [`crate::patch::schema::builtin_schema`]
/// share them, so patch metadata has one source.
pub fn builtin_schema_set() -> &'static Arc<SchemaSet> {
    static SET: std::sync::OnceLock<Arc<SchemaSet>> = std::sync::OnceLock::new();
    SET.get_or_init(|| Arc::new(builtin_components(&Registry::builtin())))
}

/// One cached OpenAPI document.
#[derive(Debug, Clone)]
pub struct Document {
    /// The JSON body.
    pub bytes: Bytes,
    /// Upper-case hex SHA-256 of `bytes` (the `hash` query parameter of its URL).
    pub hash: String,
    /// `"<hash>"`, for the `ETag` header.
    pub etag: String,
}

impl Document {
    fn new(body: &Value) -> Self {
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let digest = Sha256::digest(&bytes);
        let hash: String = digest.iter().map(|b| format!("{b:02X}")).collect();
        let etag = format!("\"{hash}\"");
        Self { bytes, hash, etag }
    }
}

/// The generated OpenAPI v3 documents.
#[derive(Debug, Clone)]
pub struct OpenApi {
    schemas: Arc<SchemaSet>,
    /// `api/v1`, `apis/apps/v1`, ... -> document.
    docs: BTreeMap<String, Document>,
    /// Which of `docs` came from CRDs (rebuilt by `update_crds`).
    crd_docs: BTreeSet<String>,
    index: Bytes,
    /// The v2 protobuf document, made on first request (only kubectl <= 1.29 asks) and
    /// dropped whenever the documents change.
    v2: Arc<std::sync::OnceLock<Bytes>>,
}

impl OpenApi {
    /// Generates the component schemas and one document per served group-version.
    pub fn build(registry: &Registry) -> Self {
        let only_builtin = registry
            .resources()
            .all(|d| matches!(d.source, Source::BuiltIn));
        let schemas = if only_builtin {
            builtin_schema_set().clone()
        } else {
            Arc::new(builtin_components(registry))
        };
        let mut this = Self {
            schemas,
            docs: BTreeMap::new(),
            crd_docs: BTreeSet::new(),
            index: Bytes::new(),
            v2: Arc::default(),
        };
        for (group, versions) in registry.group_versions() {
            for v in versions {
                let defs: Vec<&ResourceDef> = registry
                    .resources_in(&group, &v)
                    .into_iter()
                    .map(|d| &**d)
                    .collect();
                if defs.iter().all(|d| matches!(d.source, Source::BuiltIn)) {
                    let doc = gv_document(&this.schemas, &defs);
                    this.docs.insert(doc_path(&group, &v), Document::new(&doc));
                }
            }
        }
        this.update_crds(registry);
        this
    }

    /// Regenerates the documents of CRD-defined group-versions from `registry`.
    pub fn update_crds(&mut self, registry: &Registry) {
        self.v2 = Arc::default();
        for p in std::mem::take(&mut self.crd_docs) {
            self.docs.remove(&p);
        }
        for (group, versions) in registry.group_versions() {
            for v in versions {
                let defs: Vec<&ResourceDef> = registry
                    .resources_in(&group, &v)
                    .into_iter()
                    .map(|d| &**d)
                    .collect();
                if defs.iter().any(|d| matches!(d.source, Source::Crd(_))) {
                    let doc = gv_document(&self.schemas, &defs);
                    let p = doc_path(&group, &v);
                    self.docs.insert(p.clone(), Document::new(&doc));
                    self.crd_docs.insert(p);
                }
            }
        }
        let paths: Map<String, Value> = self
            .docs
            .iter()
            .map(|(p, d)| {
                (
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", d.hash)}),
                )
            })
            .collect();
        self.index = Bytes::from(serde_json::to_vec(&json!({"paths": paths})).unwrap_or_default());
    }

    /// The `/openapi/v3` body.
    pub fn index(&self) -> &Bytes {
        &self.index
    }

    /// The document at `path` (`api/v1`, `apis/apps/v1`; a leading `/openapi/v3/` or `/`
    /// is ignored).
    pub fn document(&self, path: &str) -> Option<&Document> {
        let p = path
            .trim_start_matches("/openapi/v3")
            .trim_start_matches('/');
        self.docs.get(p)
    }

    /// The `/openapi/v2` body: every group-version's paths and definitions as one gnostic
    /// `openapi.v2.Document` protobuf (see [`v2`]).
    pub fn v2_protobuf(&self) -> Bytes {
        self.v2
            .get_or_init(|| {
                let docs: Vec<Value> = self
                    .docs
                    .values()
                    .filter_map(|d| serde_json::from_slice(&d.bytes).ok())
                    .collect();
                Bytes::from(v2::encode_document(&docs, KUBERNETES_VERSION))
            })
            .clone()
    }

    /// The component schemas of the built-in kinds.
    pub fn schemas(&self) -> &Arc<SchemaSet> {
        &self.schemas
    }
}

/// `api/v1` for core, `apis/<g>/<v>` otherwise.
pub fn doc_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn gvk_ext(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// Adds `x-kubernetes-group-version-kind` (array form) to a component.
fn add_gvk(components: &mut HashMap<String, Value>, name: &str, gvk: Value) {
    if let Some(Value::Object(s)) = components.get_mut(name) {
        let e = s
            .entry("x-kubernetes-group-version-kind")
            .or_insert_with(|| json!([]));
        if let Value::Array(a) = e
            && !a.contains(&gvk)
        {
            a.push(gvk);
        }
    }
}

/// Every component schema the built-in kinds reach, with GVK and patch extensions.
fn builtin_components(registry: &Registry) -> SchemaSet {
    let mut generator = SchemaSettings::openapi3().into_generator();
    macro_rules! gen_all {
        ($($t:ty),* $(,)?) => { $( let _ = generator.subschema_for::<$t>(); )* };
    }
    gen_all!(
        k::core::v1::ConfigMap,
        k::core::v1::Endpoints,
        k::core::v1::Event,
        k::core::v1::LimitRange,
        k::core::v1::Namespace,
        k::core::v1::Node,
        k::core::v1::PersistentVolumeClaim,
        k::core::v1::PersistentVolume,
        k::core::v1::Pod,
        k::core::v1::ReplicationController,
        k::core::v1::ResourceQuota,
        k::core::v1::Secret,
        k::core::v1::ServiceAccount,
        k::core::v1::Service,
        k::core::v1::Binding,
        k::apps::v1::ControllerRevision,
        k::apps::v1::DaemonSet,
        k::apps::v1::Deployment,
        k::apps::v1::ReplicaSet,
        k::apps::v1::StatefulSet,
        k::events::v1::Event,
        k::authentication::v1::SelfSubjectReview,
        k::authentication::v1::TokenRequest,
        k::authorization::v1::SelfSubjectAccessReview,
        k::authorization::v1::SelfSubjectRulesReview,
        k::autoscaling::v2::HorizontalPodAutoscaler,
        k::autoscaling::v1::HorizontalPodAutoscaler,
        k::autoscaling::v1::Scale,
        k::batch::v1::CronJob,
        k::batch::v1::Job,
        k::policy::v1::PodDisruptionBudget,
        k::policy::v1::Eviction,
        k::rbac::v1::ClusterRoleBinding,
        k::rbac::v1::ClusterRole,
        k::rbac::v1::RoleBinding,
        k::rbac::v1::Role,
        apiext::CustomResourceDefinition,
        k::scheduling::v1::PriorityClass,
        k::coordination::v1::Lease,
        k::discovery::v1::EndpointSlice,
        meta::Status,
        meta::DeleteOptions,
        meta::Patch,
        meta::WatchEvent<k::core::v1::Pod>,
        meta::ListMeta,
        meta::ObjectMeta,
    );
    let mut components: HashMap<String, Value> =
        generator.take_definitions(true).into_iter().collect();

    // List kinds: k8s-openapi's generic List<T> has no schema; write them as upstream does.
    for d in registry
        .resources()
        .filter(|d| matches!(d.source, Source::BuiltIn))
    {
        if d.schema_name.is_empty() || !components.contains_key(&d.schema_name) {
            continue;
        }
        add_gvk(
            &mut components,
            &d.schema_name,
            gvk_ext(&d.group, &d.version, &d.kind),
        );
        if d.has_verb("list") {
            let list_name = format!("{}List", d.schema_name);
            components.insert(list_name.clone(), list_schema(d, &d.schema_name));
        }
    }
    let extra: &[(&str, (&str, &str, &str))] = &[
        (
            "io.k8s.api.autoscaling.v1.Scale",
            ("autoscaling", "v1", "Scale"),
        ),
        (
            "io.k8s.api.policy.v1.Eviction",
            ("policy", "v1", "Eviction"),
        ),
        ("io.k8s.api.core.v1.Binding", ("", "v1", "Binding")),
        (
            "io.k8s.api.authentication.v1.TokenRequest",
            ("authentication.k8s.io", "v1", "TokenRequest"),
        ),
        (STATUS, ("", "v1", "Status")),
    ];
    for (name, (g, v, kind)) in extra {
        add_gvk(&mut components, name, gvk_ext(g, v, kind));
    }
    // DeleteOptions and WatchEvent are served in every group-version, as upstream lists them.
    for (g, versions) in registry.group_versions() {
        for v in versions {
            add_gvk(
                &mut components,
                DELETE_OPTIONS,
                gvk_ext(&g, &v, "DeleteOptions"),
            );
            add_gvk(
                &mut components,
                "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent",
                gvk_ext(&g, &v, "WatchEvent"),
            );
        }
    }
    for p in PATCH_META {
        let Some(prop) = components
            .get_mut(p.component)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|props| props.get_mut(p.field))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Some(s) = p.strategy {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(s));
        }
        if let Some(k) = p.merge_key {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(k));
        }
        if let Some(t) = p.list_type {
            prop.insert("x-kubernetes-list-type".into(), json!(t));
        }
        if !p.map_keys.is_empty() {
            prop.insert("x-kubernetes-list-map-keys".into(), json!(p.map_keys));
        }
    }
    SchemaSet { components }
}

fn list_schema(d: &ResourceDef, item_schema: &str) -> Value {
    json!({
        "description": format!("{} is a list of {} objects.", d.list_kind, d.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of an object.", "type": "string"},
            "items": {"description": format!("List of {}.", d.plural), "type": "array",
                      "items": {"allOf": [{"$ref": format!("{REF_PREFIX}{item_schema}")}], "default": {}}},
            "kind": {"description": "Kind is a string value representing the REST resource this object represents.", "type": "string"},
            "metadata": {"description": "Standard list metadata.", "allOf": [{"$ref": format!("{REF_PREFIX}{LIST_META}")}], "default": {}}
        },
        "x-kubernetes-group-version-kind": [gvk_ext(&d.group, &d.version, &d.list_kind)]
    })
}

/// Upstream's component name for a CRD kind: the group reversed (`com.example.v1.Widget`).
pub fn crd_schema_name(d: &ResourceDef) -> String {
    let mut parts: Vec<&str> = d.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), d.version, d.kind)
}

/// The component schema for a CRD version: its `openAPIV3Schema` with `apiVersion`, `kind`
/// and `metadata` (ObjectMeta) filled in, as upstream publishes it.
fn crd_component(d: &ResourceDef) -> Value {
    let mut schema = d
        .crd()
        .and_then(|c| c.schema.clone())
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    if let Value::Object(s) = &mut schema {
        let props = s.entry("properties").or_insert_with(|| json!({}));
        if let Value::Object(p) = props {
            p.insert("apiVersion".into(), json!({"description": "APIVersion defines the versioned schema of this representation of an object.", "type": "string"}));
            p.insert("kind".into(), json!({"description": "Kind is a string value representing the REST resource this object represents.", "type": "string"}));
            p.insert("metadata".into(), json!({"description": "Standard object's metadata.", "allOf": [{"$ref": format!("{REF_PREFIX}{OBJECT_META}")}]}));
        }
        s.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([gvk_ext(&d.group, &d.version, &d.kind)]),
        );
    }
    schema
}

fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(name) = x.as_str().and_then(|r| r.strip_prefix(REF_PREFIX)) {
                        out.push(name.to_owned());
                    }
                } else {
                    refs_in(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs_in(x, out)),
        _ => {}
    }
}

/// One group-version's document: paths for every resource and the closure of components
/// they reference.
fn gv_document(schemas: &SchemaSet, defs: &[&ResourceDef]) -> Value {
    let mut paths = Map::new();
    let mut local: BTreeMap<String, Value> = BTreeMap::new();
    for d in defs {
        let (item_schema, list_schema_name) = match &d.source {
            Source::BuiltIn => (d.schema_name.clone(), format!("{}List", d.schema_name)),
            Source::Crd(_) => {
                let name = crd_schema_name(d);
                local.insert(name.clone(), crd_component(d));
                let list = format!("{name}List");
                local.insert(list.clone(), list_schema(d, &name));
                (name, list)
            }
        };
        for (p, item) in resource_paths(d, &item_schema, &list_schema_name) {
            paths.insert(p, item);
        }
    }
    // Closure over $refs, starting from what the paths and local components name.
    let mut pending = Vec::new();
    refs_in(&Value::Object(paths.clone()), &mut pending);
    for v in local.values() {
        refs_in(v, &mut pending);
    }
    let mut components: BTreeMap<String, Value> = local;
    let mut guard = 0usize;
    while let Some(name) = pending.pop() {
        guard += 1;
        if guard > 100_000 || components.contains_key(&name) {
            continue;
        }
        if let Some(s) = schemas.get(&name) {
            refs_in(s, &mut pending);
            components.insert(name, s.clone());
        }
    }
    let components: Map<String, Value> = components.into_iter().collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}}},
        "security": [{"BearerToken": []}]
    })
}

fn op_prefix(group: &str, version: &str) -> String {
    let g = if group.is_empty() {
        "core"
    } else {
        group.trim_end_matches(".k8s.io")
    };
    let mut out = String::new();
    for part in g.split(['.', '-']) {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    let mut c = version.chars();
    if let Some(f) = c.next() {
        out.extend(f.to_uppercase());
        out.push_str(c.as_str());
    }
    out
}

fn tag(group: &str, version: &str) -> String {
    let g = if group.is_empty() {
        "core"
    } else {
        group.trim_end_matches(".k8s.io")
    };
    format!("{}_{version}", g.replace(['.', '-'], "_"))
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn json_response(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("{REF_PREFIX}{schema}")}},
        "application/yaml": {"schema": {"$ref": format!("{REF_PREFIX}{schema}")}}}})
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut p = vec![
        query_param(
            "dryRun",
            "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
        ),
        query_param(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query_param(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict",
        ),
    ];
    if patch {
        p.push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests.", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    p
}

/// Paths for one resource: collection, item, and status/scale subresources.
fn resource_paths(d: &ResourceDef, item_schema: &str, list_schema: &str) -> Vec<(String, Value)> {
    let prefix = if d.group.is_empty() {
        format!("/api/{}", d.version)
    } else {
        format!("/apis/{}/{}", d.group, d.version)
    };
    let base = if d.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", d.plural)
    } else {
        format!("{prefix}/{}", d.plural)
    };
    let ns_word = if d.namespaced { "Namespaced" } else { "" };
    let opid = |verb: &str, suffix: &str| {
        format!(
            "{verb}{}{ns_word}{}{suffix}",
            op_prefix(&d.group, &d.version),
            d.kind
        )
    };
    let gvk = gvk_ext(&d.group, &d.version, &d.kind);
    let t = tag(&d.group, &d.version);
    let mut path_params = vec![];
    if d.namespaced {
        path_params.push(json!({"name": "namespace", "in": "path", "description": "object name and auth scope, such as for teams and projects", "required": true, "schema": {"type": "string", "uniqueItems": true}}));
    }
    let mut out = Vec::new();

    // collection
    let mut coll = Map::new();
    if d.has_verb("list") {
        coll.insert("get".into(), json!({"tags": [t], "description": format!("list or watch objects of kind {}", d.kind),
            "operationId": opid("list", ""), "parameters": [query_param("fieldSelector", "A selector to restrict the list of returned objects by their fields."),
                query_param("labelSelector", "A selector to restrict the list of returned objects by their labels."),
                json!({"name": "limit", "in": "query", "schema": {"type": "integer", "uniqueItems": true}}),
                query_param("continue", "The continue option should be set when retrieving more results from the server."),
                query_param("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from."),
                json!({"name": "watch", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}})],
            "responses": {"200": json_response(list_schema), "401": {"description": "Unauthorized"}},
            "x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk}));
    }
    if d.has_verb("create") {
        coll.insert("post".into(), json!({"tags": [t], "description": format!("create a {}", d.kind),
            "operationId": opid("create", ""), "parameters": write_params(false),
            "requestBody": {"content": {"*/*": {"schema": {"$ref": format!("{REF_PREFIX}{item_schema}")}}}, "required": true},
            "responses": {"200": json_response(item_schema), "201": json_response(item_schema), "202": json_response(item_schema), "401": {"description": "Unauthorized"}},
            "x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk}));
    }
    if d.has_verb("deletecollection") {
        coll.insert("delete".into(), json!({"tags": [t], "description": format!("delete collection of {}", d.kind),
            "operationId": opid("deleteCollection", ""), "parameters": [query_param("dryRun", "dry run"), query_param("labelSelector", "label selector")],
            "requestBody": {"content": {"*/*": {"schema": {"$ref": format!("{REF_PREFIX}{DELETE_OPTIONS}")}}}},
            "responses": {"200": json_response(STATUS), "401": {"description": "Unauthorized"}},
            "x-kubernetes-action": "deletecollection", "x-kubernetes-group-version-kind": gvk}));
    }
    if !coll.is_empty() {
        coll.insert("parameters".into(), Value::Array(path_params.clone()));
        out.push((base.clone(), Value::Object(coll)));
    }

    // item
    let mut name_params = path_params.clone();
    name_params.insert(0, json!({"name": "name", "in": "path", "description": format!("name of the {}", d.kind), "required": true, "schema": {"type": "string", "uniqueItems": true}}));
    if d.has_verb("get") {
        let mut item = Map::new();
        item.insert("get".into(), json!({"tags": [t], "description": format!("read the specified {}", d.kind),
            "operationId": opid("read", ""), "responses": {"200": json_response(item_schema), "401": {"description": "Unauthorized"}},
            "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk}));
        if d.has_verb("update") {
            item.insert("put".into(), json!({"tags": [t], "description": format!("replace the specified {}", d.kind),
                "operationId": opid("replace", ""), "parameters": write_params(false),
                "requestBody": {"content": {"*/*": {"schema": {"$ref": format!("{REF_PREFIX}{item_schema}")}}}, "required": true},
                "responses": {"200": json_response(item_schema), "201": json_response(item_schema), "401": {"description": "Unauthorized"}},
                "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk}));
        }
        if d.has_verb("patch") {
            item.insert(
                "patch".into(),
                patch_op(d, &t, &opid("patch", ""), item_schema, &gvk),
            );
        }
        if d.has_verb("delete") {
            item.insert("delete".into(), json!({"tags": [t], "description": format!("delete a {}", d.kind),
                "operationId": opid("delete", ""), "parameters": [query_param("dryRun", "dry run"),
                    json!({"name": "gracePeriodSeconds", "in": "query", "schema": {"type": "integer", "uniqueItems": true}}),
                    query_param("propagationPolicy", "Whether and how garbage collection will be performed.")],
                "requestBody": {"content": {"*/*": {"schema": {"$ref": format!("{REF_PREFIX}{DELETE_OPTIONS}")}}}},
                "responses": {"200": json_response(item_schema), "202": json_response(item_schema), "401": {"description": "Unauthorized"}},
                "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk}));
        }
        item.insert("parameters".into(), Value::Array(name_params.clone()));
        out.push((format!("{base}/{{name}}"), Value::Object(item)));
    }

    // status and scale subresources
    for s in d
        .subresources
        .iter()
        .filter(|s| s.name == "status" || s.name == "scale")
    {
        let (schema, sgvk) = if s.name == "scale" {
            (
                "io.k8s.api.autoscaling.v1.Scale".to_owned(),
                gvk_ext("autoscaling", "v1", "Scale"),
            )
        } else {
            (item_schema.to_owned(), gvk.clone())
        };
        let suffix = if s.name == "scale" { "Scale" } else { "Status" };
        let mut item = Map::new();
        item.insert("get".into(), json!({"tags": [t], "description": format!("read {} of the specified {}", s.name, d.kind),
            "operationId": opid("read", suffix), "responses": {"200": json_response(&schema), "401": {"description": "Unauthorized"}},
            "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": sgvk}));
        item.insert("put".into(), json!({"tags": [t], "description": format!("replace {} of the specified {}", s.name, d.kind),
            "operationId": opid("replace", suffix), "parameters": write_params(false),
            "requestBody": {"content": {"*/*": {"schema": {"$ref": format!("{REF_PREFIX}{schema}")}}}, "required": true},
            "responses": {"200": json_response(&schema), "201": json_response(&schema), "401": {"description": "Unauthorized"}},
            "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": sgvk}));
        item.insert(
            "patch".into(),
            patch_op(d, &t, &opid("patch", suffix), &schema, &sgvk),
        );
        item.insert("parameters".into(), Value::Array(name_params.clone()));
        out.push((format!("{base}/{{name}}/{}", s.name), Value::Object(item)));
    }
    out
}

/// A PATCH operation: the four patch content types (no strategic merge patch for CRDs, as
/// upstream), `fieldValidation`, and the GVK kubectl's query-param verifier looks for.
fn patch_op(d: &ResourceDef, tag: &str, op_id: &str, schema: &str, gvk: &Value) -> Value {
    let patch_ref = json!({"schema": {"$ref": format!("{REF_PREFIX}{PATCH}")}});
    let mut content = Map::new();
    content.insert("application/apply-patch+yaml".into(), patch_ref.clone());
    content.insert("application/json-patch+json".into(), patch_ref.clone());
    content.insert("application/merge-patch+json".into(), patch_ref.clone());
    if matches!(d.source, Source::BuiltIn) {
        content.insert("application/strategic-merge-patch+json".into(), patch_ref);
    }
    json!({"tags": [tag], "description": format!("partially update the specified {}", d.kind),
        "operationId": op_id, "parameters": write_params(true),
        "requestBody": {"content": content, "required": true},
        "responses": {"200": json_response(schema), "201": json_response(schema), "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk})
}

#[cfg(test)]
mod tests;
