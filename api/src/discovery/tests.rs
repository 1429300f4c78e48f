use serde_json::{Value, json};

use super::*;

const KUBECTL_132: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
const KUBECTL_128: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

#[test]
fn negotiation_follows_the_client() {
    use AggregatedVersion::*;
    use DiscoveryFormat::*;
    let cases: &[(Option<&str>, Option<DiscoveryFormat>)] = &[
        (Some(KUBECTL_132), Some(Aggregated(V2))),
        (Some(KUBECTL_128), Some(Aggregated(V2beta1))),
        (Some("application/json"), Some(Legacy)),
        (None, Some(Legacy)),
        (Some(""), Some(Legacy)),
        (Some("*/*"), Some(Legacy)),
        // parameter order does not matter
        (
            Some("application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io"),
            Some(Aggregated(V2)),
        ),
        // protobuf aggregated is not offered; falls through to json
        (
            Some(
                "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
            ),
            Some(Legacy),
        ),
        (Some("application/vnd.kubernetes.protobuf"), None),
        (Some("text/html"), None),
        // q values rank
        (
            Some(
                "application/json;q=0.5,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            ),
            Some(Aggregated(V2)),
        ),
        (
            Some(
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;q=0,application/json",
            ),
            Some(Legacy),
        ),
        // unknown discovery versions are skipped
        (
            Some("application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList"),
            None,
        ),
    ];
    for (accept, want) in cases {
        assert_eq!(negotiate(*accept), *want, "{accept:?}");
    }
    assert_eq!(
        Aggregated(V2).content_type(),
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    assert_eq!(
        Aggregated(V2beta1).content_type(),
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
    );
    assert_eq!(Legacy.content_type(), "application/json");
}

#[test]
fn aggregated_apis_has_the_documented_shape() {
    let r = Registry::builtin();
    let body = aggregated(&r, Scope::Apis, AggregatedVersion::V2);
    assert_eq!(body["kind"], "APIGroupDiscoveryList");
    assert_eq!(body["apiVersion"], "apidiscovery.k8s.io/v2");
    let items = body["items"].as_array().cloned().unwrap_or_default();
    assert!(
        items.iter().all(|i| i["metadata"]["name"] != ""),
        "no core group in /apis"
    );
    let apps = items
        .iter()
        .find(|i| i["metadata"]["name"] == "apps")
        .cloned()
        .unwrap_or_default();
    assert_eq!(apps["versions"][0]["version"], "v1");
    assert_eq!(apps["versions"][0]["freshness"], "Current");
    let deploy = apps["versions"][0]["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resource"] == "deployments").cloned())
        .unwrap_or_default();
    assert_eq!(
        deploy,
        json!({
            "resource": "deployments",
            "responseKind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "scope": "Namespaced", "singularResource": "deployment", "shortNames": ["deploy"], "categories": ["all"],
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "subresources": [
                {"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]},
                {"subresource": "status", "responseKind": {"group": "apps", "version": "v1", "kind": "Deployment"}, "verbs": ["get", "patch", "update"]}
            ]
        })
    );
    let beta = aggregated(&r, Scope::Apis, AggregatedVersion::V2beta1);
    assert_eq!(beta["apiVersion"], "apidiscovery.k8s.io/v2beta1");
}

#[test]
fn aggregated_core_is_one_unnamed_group() {
    let r = Registry::builtin();
    let body = aggregated(&r, Scope::Core, AggregatedVersion::V2);
    let items = body["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "");
    let ns = items[0]["versions"][0]["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resource"] == "namespaces").cloned())
        .unwrap_or_default();
    assert_eq!(ns["scope"], "Cluster");
    assert_eq!(ns["shortNames"], json!(["ns"]));
    assert!(ns.get("categories").is_none());
}

#[test]
fn legacy_bodies() {
    let r = Registry::builtin();
    let v = api_versions("127.0.0.1:6443");
    assert_eq!(v["versions"], json!(["v1"]));
    assert_eq!(
        v["serverAddressByClientCIDRs"][0]["serverAddress"],
        "127.0.0.1:6443"
    );

    let list = api_group_list(&r);
    assert_eq!(list["kind"], "APIGroupList");
    let groups = list["groups"].as_array().cloned().unwrap_or_default();
    let apps = groups
        .iter()
        .find(|g| g["name"] == "apps")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        apps,
        json!({"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}})
    );
    assert!(
        groups
            .iter()
            .any(|g| g["name"] == "autoscaling" && g["preferredVersion"]["version"] == "v2")
    );

    let g = api_group(&r, "batch").unwrap_or_default();
    assert_eq!(g["kind"], "APIGroup");
    assert_eq!(g["preferredVersion"]["groupVersion"], "batch/v1");
    assert!(api_group(&r, "nosuch.io").is_none());
    assert!(api_group(&r, "").is_none());
}

#[test]
fn resource_lists_write_subresources_with_slashes() {
    let r = Registry::builtin();
    let core = api_resource_list(&r, "", "v1").unwrap_or_default();
    assert_eq!(core["groupVersion"], "v1");
    let res = core["resources"].as_array().cloned().unwrap_or_default();
    let find = |n: &str| {
        res.iter()
            .find(|x| x["name"] == n)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        find("pods"),
        json!({"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        "shortNames": ["po"], "categories": ["all"]})
    );
    assert_eq!(
        find("pods/log"),
        json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]})
    );
    assert_eq!(find("pods/eviction")["group"], "policy");
    assert_eq!(find("pods/eviction")["kind"], "Eviction");
    assert!(find("pods/exec").get("group").is_none());
    let apps = api_resource_list(&r, "apps", "v1").unwrap_or_default();
    let res = apps["resources"].as_array().cloned().unwrap_or_default();
    let scale = res
        .iter()
        .find(|x| x["name"] == "deployments/scale")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        scale,
        json!({"name": "deployments/scale", "singularName": "", "namespaced": true,
        "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
    );
    assert!(api_resource_list(&r, "apps", "v1beta1").is_none());
}

#[test]
fn crd_groups_appear_in_discovery() {
    let mut r = Registry::builtin();
    let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Cluster",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}});
    assert!(r.apply_crd(&crd).is_ok());
    let list = api_group_list(&r);
    assert!(
        list["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["name"] == "example.com"))
    );
    let agg = aggregated(&r, Scope::Apis, AggregatedVersion::V2);
    let item = agg["items"]
        .as_array()
        .and_then(|i| {
            i.iter()
                .find(|i| i["metadata"]["name"] == "example.com")
                .cloned()
        })
        .unwrap_or_default();
    assert_eq!(item["versions"][0]["resources"][0]["resource"], "widgets");
    assert_eq!(
        item["versions"][0]["resources"][0]["singularResource"],
        "widget"
    );
    assert_eq!(item["versions"][0]["resources"][0]["scope"], "Cluster");
    let rl = api_resource_list(&r, "example.com", "v1").unwrap_or_default();
    assert_eq!(rl["resources"][1]["name"], "widgets/status");
}

#[test]
fn cache_serves_the_same_bodies() {
    let r = Registry::builtin();
    let c = DiscoveryCache::build(&r, "127.0.0.1:6443");
    assert_eq!(c.generation(), r.generation());
    let parse = |b: bytes::Bytes| serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null);
    let (ct, body) = c.root(
        Scope::Apis,
        DiscoveryFormat::Aggregated(AggregatedVersion::V2),
    );
    assert_eq!(ct, AGGREGATED_V2);
    assert_eq!(
        parse(body),
        aggregated(&r, Scope::Apis, AggregatedVersion::V2)
    );
    let (ct, body) = c.root(
        Scope::Core,
        DiscoveryFormat::Aggregated(AggregatedVersion::V2beta1),
    );
    assert_eq!(ct, AGGREGATED_V2BETA1);
    assert_eq!(parse(body)["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    let (ct, body) = c.root(Scope::Core, DiscoveryFormat::Legacy);
    assert_eq!(ct, "application/json");
    assert_eq!(parse(body), api_versions("127.0.0.1:6443"));
    assert_eq!(
        parse(c.root(Scope::Apis, DiscoveryFormat::Legacy).1),
        api_group_list(&r)
    );
    assert_eq!(c.group("apps").map(parse), api_group(&r, "apps"));
    assert_eq!(
        c.resource_list("", "v1").map(parse),
        api_resource_list(&r, "", "v1")
    );
    assert!(c.resource_list("apps", "v2").is_none());
    assert!(c.group("nosuch").is_none());
}
