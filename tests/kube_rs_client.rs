//! kube-rs (the `kube` crate, unchanged) against `kubeshard server` over TLS with the admin
//! kubeconfig (x509 client certificate): discovery, CRUD with typed errors, label and field
//! selectors, paging, merge and server-side apply patches, the scale subresource, a raw
//! watch resumed from an event's resourceVersion, and kube-runtime's watcher feeding a
//! reflector store.

#[path = "support/api_server.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config, ResourceExt};
use support::TestServer;

/// Bounds every wait on the server.
const WAIT: Duration = Duration::from_secs(20);

fn config_map(name: &str, tier: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "kube-rs", "tier": tier}},
        "data": {"k": "v"}
    }))
    .expect("configmap")
}

async fn client(s: &TestServer) -> Client {
    let kubeconfig = Kubeconfig::read_from(s.kubeconfig()).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_client() {
    let s = TestServer::start(&[]);
    let client = client(&s).await;

    // Discovery (aggregated v2): the groups and kinds kube-rs resolves dynamically.
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let apps = discovery
        .groups()
        .find(|g| g.name() == "apps")
        .expect("apps group discovered");
    assert!(
        apps.recommended_resources()
            .iter()
            .any(|(ar, caps)| ar.kind == "Deployment"
                && caps.scope == kube::discovery::Scope::Namespaced),
        "Deployment not in apps/v1 discovery"
    );

    // CRUD with typed errors.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    for (name, tier) in [("cm-1", "a"), ("cm-2", "a"), ("cm-3", "b")] {
        let created = cms
            .create(&pp, &config_map(name, tier))
            .await
            .expect("create");
        assert!(created.resource_version().is_some());
        assert!(created.uid().is_some());
    }
    let dup = cms.create(&pp, &config_map("cm-1", "a")).await.unwrap_err();
    assert_eq!(status_code(&dup), Some(409), "{dup}");
    let got = cms.get("cm-1").await.expect("get");
    assert_eq!(got.labels().get("tier").map(String::as_str), Some("a"));
    let missing = cms.get("nope").await.unwrap_err();
    assert_eq!(status_code(&missing), Some(404), "{missing}");
    assert!(cms.get_opt("nope").await.expect("get_opt").is_none());

    // Label and field selectors, and paging with a continue token.
    let tier_a = cms
        .list(&ListParams::default().labels("app=kube-rs,tier=a"))
        .await
        .expect("list by label");
    let mut names: Vec<String> = tier_a.items.iter().map(|c| c.name_any()).collect();
    names.sort();
    assert_eq!(names, ["cm-1", "cm-2"]);
    let set_based = cms
        .list(&ListParams::default().labels("tier in (b),app"))
        .await
        .expect("set-based selector");
    assert_eq!(set_based.items.len(), 1);
    let by_field = cms
        .list(&ListParams::default().fields("metadata.name=cm-3"))
        .await
        .expect("list by field");
    assert_eq!(by_field.items.len(), 1);
    assert_eq!(by_field.items[0].name_any(), "cm-3");
    let page1 = cms
        .list(&ListParams::default().labels("app=kube-rs").limit(2))
        .await
        .expect("page 1");
    assert_eq!(page1.items.len(), 2);
    let token = page1.metadata.continue_.clone().expect("continue token");
    let page2 = cms
        .list(
            &ListParams::default()
                .labels("app=kube-rs")
                .limit(2)
                .continue_token(&token),
        )
        .await
        .expect("page 2");
    assert_eq!(page2.items.len(), 1);
    assert!(page2.metadata.continue_.as_deref().unwrap_or("").is_empty());

    // Optimistic concurrency: a replace with a stale resourceVersion is a 409 Conflict.
    let mut stale = got.clone();
    let patched = cms
        .patch(
            "cm-1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"k": "merged"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        patched
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("merged")
    );
    assert_ne!(patched.resource_version(), got.resource_version());
    stale.data = Some(BTreeMap::from([("k".to_string(), "stale".to_string())]));
    let conflict = cms.replace("cm-1", &pp, &stale).await.unwrap_err();
    assert_eq!(status_code(&conflict), Some(409), "{conflict}");

    // Server-side apply with a field manager.
    let applied = cms
        .patch(
            "cm-applied",
            &PatchParams::apply("kube-rs-test"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm-applied", "labels": {"app": "kube-rs", "tier": "c"}},
                "data": {"owned": "yes"}
            })),
        )
        .await
        .expect("server-side apply");
    assert!(
        applied
            .managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("kube-rs-test")),
        "no managedFields entry for the apply manager"
    );

    // The scale subresource of a Deployment.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}
            }
        }
    }))
    .expect("deployment");
    deployments
        .create(&pp, &deploy)
        .await
        .expect("create deployment");
    let scale = deployments.get_scale("web").await.expect("get scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(1));
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 4}})),
        )
        .await
        .expect("patch scale");
    let after = deployments.get("web").await.expect("get deployment");
    assert_eq!(after.spec.and_then(|s| s.replicas), Some(4));

    // A raw watch from a list's resourceVersion, then resumed from an event's.
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list for rv")
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let mut stream = cms
        .watch(&WatchParams::default().labels("app=kube-rs"), &rv)
        .await
        .expect("watch")
        .boxed();
    cms.create(&pp, &config_map("cm-4", "a"))
        .await
        .expect("create cm-4");
    let added_rv = tokio::time::timeout(WAIT, async {
        while let Some(ev) = stream.try_next().await.expect("watch event") {
            if let WatchEvent::Added(cm) = ev
                && cm.name_any() == "cm-4"
            {
                return cm.resource_version().expect("event resourceVersion");
            }
        }
        panic!("watch ended before cm-4 was added");
    })
    .await
    .expect("cm-4 Added within the wait");
    drop(stream);
    cms.patch(
        "cm-4",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"k": "changed while away"}})),
    )
    .await
    .expect("patch cm-4");
    let mut resumed = cms
        .watch(&WatchParams::default().labels("app=kube-rs"), &added_rv)
        .await
        .expect("resume watch")
        .boxed();
    tokio::time::timeout(WAIT, async {
        while let Some(ev) = resumed.try_next().await.expect("resumed event") {
            match ev {
                WatchEvent::Modified(cm) if cm.name_any() == "cm-4" => {
                    assert_eq!(
                        cm.data
                            .as_ref()
                            .and_then(|d| d.get("k"))
                            .map(String::as_str),
                        Some("changed while away")
                    );
                    return;
                }
                WatchEvent::Added(cm) if cm.name_any() == "cm-4" => {
                    panic!("resumed watch replayed the Added event it started after")
                }
                _ => {}
            }
        }
        panic!("resumed watch ended before the change");
    })
    .await
    .expect("the change made while away arrives on the resumed watch");

    // kube-runtime: watcher + reflector keep a store in step with the server.
    let (reader, writer) = reflector::store::<ConfigMap>();
    let cfg = watcher::Config::default().labels("app=kube-rs");
    let flow = reflector::reflector(writer, watcher(cms.clone(), cfg))
        .applied_objects()
        .for_each(|_| async {});
    let task = tokio::spawn(flow);
    tokio::time::timeout(WAIT, reader.wait_until_ready())
        .await
        .expect("reflector ready in time")
        .expect("reflector ready");
    assert_eq!(reader.state().len(), 5, "cm-1..4 and cm-applied");
    cms.delete("cm-2", &DeleteParams::default())
        .await
        .expect("delete");
    cms.create(&pp, &config_map("cm-5", "b"))
        .await
        .expect("create cm-5");
    let synced = tokio::time::timeout(WAIT, async {
        loop {
            let mut names: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
            names.sort();
            if names == ["cm-1", "cm-3", "cm-4", "cm-5", "cm-applied"] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    task.abort();
    assert!(
        synced.is_ok(),
        "reflector store did not follow the delete and the create"
    );
    assert!(cms.get_opt("cm-2").await.expect("get_opt").is_none());
}
