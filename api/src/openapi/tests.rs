use std::sync::OnceLock;

use serde_json::{Value, json};

use super::*;

fn built() -> &'static OpenApi {
    static API: OnceLock<OpenApi> = OnceLock::new();
    API.get_or_init(|| OpenApi::build(&Registry::builtin()))
}

fn doc(path: &str) -> Value {
    let d = built()
        .document(path)
        .map(|d| d.bytes.clone())
        .unwrap_or_default();
    serde_json::from_slice(&d).unwrap_or(Value::Null)
}

#[test]
fn index_lists_every_group_version_with_its_hash() {
    let api = built();
    let index: Value = serde_json::from_slice(api.index()).unwrap_or(Value::Null);
    for p in [
        "api/v1",
        "apis/apps/v1",
        "apis/batch/v1",
        "apis/autoscaling/v2",
        "apis/rbac.authorization.k8s.io/v1",
        "apis/apiextensions.k8s.io/v1",
        "apis/authorization.k8s.io/v1",
    ] {
        let url = index["paths"][p]["serverRelativeURL"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let hash = api.document(p).map(|d| d.hash.clone()).unwrap_or_default();
        assert_eq!(hash.len(), 64, "{p}");
        assert_eq!(url, format!("/openapi/v3/{p}?hash={hash}"));
        assert!(api.document(&format!("/openapi/v3/{p}")).is_some());
    }
    assert!(api.document("apis/apps/v1beta1").is_none());
}

#[test]
fn hash_is_the_content_hash() {
    let api = built();
    let d = api.document("api/v1").cloned();
    let Some(d) = d else { panic!("api/v1") };
    let digest = sha2::Sha256::digest(&d.bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(d.hash, hex);
    assert_eq!(d.etag, format!("\"{hex}\""));
    // Rebuilding gives the same bytes (stable across restarts, so kubectl's cache holds).
    let again = OpenApi::build(&Registry::builtin());
    assert_eq!(
        again.document("api/v1").map(|d| d.hash.clone()),
        Some(d.hash)
    );
}

#[test]
fn patch_operation_per_kind_is_what_kubectl_looks_for() {
    let apps = doc("apis/apps/v1");
    let op = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        op["x-kubernetes-group-version-kind"],
        json!({"group": "apps", "version": "v1", "kind": "Deployment"})
    );
    let params = op["parameters"].as_array().cloned().unwrap_or_default();
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
    );
    let content = op["requestBody"]["content"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut types: Vec<&str> = content.keys().map(String::as_str).collect();
    types.sort();
    assert_eq!(
        types,
        vec![
            "application/apply-patch+yaml",
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json"
        ]
    );
    let scale =
        &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"];
    assert_eq!(scale["x-kubernetes-group-version-kind"]["kind"], "Scale");
    let core = doc("api/v1");
    for kind_path in ["pods", "services", "configmaps", "secrets"] {
        let op = &core["paths"][format!("/api/v1/namespaces/{{namespace}}/{kind_path}/{{name}}")]["patch"];
        assert!(
            op["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation")),
            "{kind_path}"
        );
    }
    assert_eq!(
        core["paths"]["/api/v1/namespaces/{name}"]["patch"]["x-kubernetes-group-version-kind"]["kind"],
        "Namespace"
    );
    assert_eq!(
        core["paths"]["/api/v1/namespaces/{name}"]["patch"]["operationId"],
        "patchCoreV1Namespace"
    );
    assert_eq!(
        apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["get"]["operationId"],
        "readAppsV1NamespacedDeployment"
    );
    let rbac = doc("apis/rbac.authorization.k8s.io/v1");
    assert_eq!(
        rbac["paths"]["/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"]["patch"]["operationId"],
        "patchRbacAuthorizationV1ClusterRole"
    );
}

#[test]
fn components_have_descriptions_gvk_and_patch_extensions() {
    let core = doc("api/v1");
    let schemas = &core["components"]["schemas"];
    let pod = &schemas["io.k8s.api.core.v1.Pod"];
    assert!(
        pod["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("Pod is a collection of containers"))
    );
    assert_eq!(
        pod["x-kubernetes-group-version-kind"],
        json!([{"group": "", "version": "v1", "kind": "Pod"}])
    );
    // $ref with a description becomes allOf, as upstream writes it (explain reads both).
    let spec = &pod["properties"]["spec"];
    assert_eq!(
        spec["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.PodSpec"
    );
    assert!(spec["description"].is_string());
    let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(
        containers["items"]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.Container"
    );
    assert!(
        schemas["io.k8s.api.core.v1.Container"]["properties"]["image"]["description"].is_string()
    );
    let ports = &schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"];
    assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
    assert_eq!(
        ports["x-kubernetes-list-map-keys"],
        json!(["containerPort", "protocol"])
    );
    assert_eq!(
        schemas["io.k8s.api.core.v1.PodList"]["x-kubernetes-group-version-kind"][0]["kind"],
        "PodList"
    );
    assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
    assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Patch"].is_object());
    // every $ref in the document resolves inside it
    let mut refs = Vec::new();
    refs_in(&core, &mut refs);
    for r in refs {
        assert!(schemas.get(&r).is_some(), "dangling $ref {r}");
    }
    let apps = doc("apis/apps/v1");
    assert_eq!(
        apps["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"]
            ["x-kubernetes-patch-strategy"],
        "retainKeys"
    );
    assert!(apps["components"]["schemas"]["io.k8s.api.autoscaling.v1.Scale"].is_object());
}

#[test]
fn crd_group_versions_are_added_and_removed() {
    let mut reg = Registry::builtin();
    let mut api = OpenApi::build(&reg);
    let before_core = api.document("api/v1").map(|d| d.hash.clone());
    let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "description": "The spec.",
                "properties": {"size": {"type": "integer"}}}}}}}]}});
    assert!(reg.apply_crd(&crd).is_ok());
    api.update_crds(&reg);
    let d: Value = api
        .document("apis/example.com/v1")
        .map(|d| serde_json::from_slice(&d.bytes).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let w = &d["components"]["schemas"]["com.example.v1.Widget"];
    assert_eq!(w["x-kubernetes-group-version-kind"][0]["kind"], "Widget");
    assert_eq!(w["properties"]["spec"]["description"], "The spec.");
    assert!(
        d["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object()
    );
    let op = &d["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
    assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Widget");
    assert!(
        op["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_none()
    );
    assert!(
        op["requestBody"]["content"]
            .get("application/merge-patch+json")
            .is_some()
    );
    let index: Value = serde_json::from_slice(api.index()).unwrap_or(Value::Null);
    assert!(index["paths"]["apis/example.com/v1"]["serverRelativeURL"].is_string());
    assert_eq!(api.document("api/v1").map(|d| d.hash.clone()), before_core);
    assert!(reg.remove_crd("widgets.example.com"));
    api.update_crds(&reg);
    assert!(api.document("apis/example.com/v1").is_none());
}

#[test]
fn schema_set_resolves_refs() {
    let s = built().schemas();
    assert!(s.len() > 100);
    let r = s.resolve_ref("#/components/schemas/io.k8s.api.core.v1.PodSpec");
    assert!(r.is_some_and(|p| p["properties"]["containers"].is_object()));
    assert!(s.resolve_ref("io.k8s.api.core.v1.PodSpec").is_none());
    assert_eq!(
        patch_meta("io.k8s.api.core.v1.PodSpec", "volumes").and_then(|p| p.strategy),
        Some("merge,retainKeys")
    );
}
