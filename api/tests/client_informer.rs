//! Informers against a real in-process apiserver: the store converges after creates,
//! updates and deletes; a dropped connection resumes the watch without a re-list; a
//! resume below a compaction gets 410 and re-lists, with synthetic events that keep the
//! handler level-correct.

mod client_common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::client::runtime::{Event, Informer, InformerOptions, Store};
use api::client::{Api, Client, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use client_common::{Proxy, Server, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde_json::json;

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "inf"}}, "data": {"k": v}
    }))
    .unwrap()
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

/// What a handler saw, per kind.
#[derive(Default, Debug)]
struct Seen {
    added: Vec<String>,
    modified: Vec<String>,
    deleted: Vec<String>,
    synced: usize,
}

fn recorder<K: api::client::ApiObject>(seen: Arc<Mutex<Seen>>) -> impl FnMut(Event<K>) + Send {
    move |ev| {
        let mut s = seen.lock().unwrap();
        let name = |o: &K| o.meta().name.clone().unwrap_or_default();
        match ev {
            Event::Added(o) => s.added.push(name(&o)),
            Event::Modified(o) => s.modified.push(name(&o)),
            Event::Deleted(o) => s.deleted.push(name(&o)),
            Event::Synced => s.synced += 1,
        }
    }
}

fn fast() -> InformerOptions {
    InformerOptions {
        page_size: 7,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..InformerOptions::default()
    }
}

fn store_data(store: &Store<ConfigMap>) -> BTreeMap<String, String> {
    store
        .list()
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap_or_default(),
                c.data
                    .as_ref()
                    .and_then(|d| d.get("k"))
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

async fn server_data(api: &Api<ConfigMap>) -> BTreeMap<String, String> {
    api.list(&ListParams::default().labels("app=inf"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap_or_default(),
                c.data
                    .as_ref()
                    .and_then(|d| d.get("k"))
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn store_converges_after_changes() {
    let s = Server::start();
    let client = s.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..30 {
        cms.create(&PostParams::default(), &cm(&format!("c{i:02}"), "0"))
            .await
            .unwrap();
    }
    // Not selected: must never show up.
    let mut other = cm("other", "0");
    other.metadata.labels = None;
    cms.create(&PostParams::default(), &other).await.unwrap();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let (store, informer) = Informer::new(cms.clone(), ListParams::default().labels("app=inf"));
    let informer = informer.with_options(fast());
    assert!(!store.has_synced());
    let task = tokio::spawn(informer.run(recorder(seen.clone())));
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_synced())
        .await
        .expect("synced in time");
    // Paged (7 per page) initial list: all 30, none unselected.
    assert_eq!(store.len(), 30);
    assert!(store.get("default", "other").is_none());
    assert_eq!(seen.lock().unwrap().added.len(), 30);
    assert_eq!(seen.lock().unwrap().synced, 1);

    for i in 30..40 {
        cms.create(&PostParams::default(), &cm(&format!("c{i:02}"), "0"))
            .await
            .unwrap();
    }
    for i in 0..5 {
        cms.patch(
            &format!("c{i:02}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "1"}})),
        )
        .await
        .unwrap();
    }
    for i in 35..40 {
        cms.delete(&format!("c{i:02}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let want = server_data(&cms).await;
    assert_eq!(want.len(), 35);
    assert!(
        eventually(Duration::from_secs(10), || store_data(&store) == want).await,
        "store {:?}",
        store_data(&store)
    );
    assert_eq!(
        store.get("default", "c03").unwrap().data.as_ref().unwrap()["k"],
        "1"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.added.len(), 40);
    assert_eq!(seen.modified.len(), 5);
    let mut deleted = seen.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, ["c35", "c36", "c37", "c38", "c39"]);
    assert_eq!(seen.synced, 1, "no re-list without a reason");
    task.abort();
}

/// A client that goes through `proxy` to the server of `s`.
fn proxied(s: &Server, proxy: &Proxy) -> Client {
    let mut cfg = s.config();
    cfg.server = format!("https://127.0.0.1:{}", proxy.port);
    cfg.connections = 1;
    cfg.timeout = Duration::from_secs(5);
    cfg.connect_timeout = Duration::from_secs(2);
    Client::new(cfg).unwrap()
}

#[tokio::test]
async fn resumes_after_connection_loss_without_relist() {
    let s = Server::start();
    let proxy = Proxy::start(s.port);
    let direct: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    let via: Api<ConfigMap> = Api::namespaced(proxied(&s, &proxy), "default");
    direct
        .create(&PostParams::default(), &cm("a", "0"))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (store, informer) = Informer::new(via.clone(), ListParams::default().labels("app=inf"));
    let task = tokio::spawn(informer.with_options(fast()).run(recorder(seen.clone())));
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_synced())
        .await
        .unwrap();

    proxy.cut();
    direct
        .create(&PostParams::default(), &cm("b", "0"))
        .await
        .unwrap();
    direct
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "1"}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.resume();
    let want = server_data(&direct).await;
    assert!(
        eventually(Duration::from_secs(10), || store_data(&store) == want).await,
        "store {:?}",
        store_data(&store)
    );
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.synced, 1,
        "resumed from the last resourceVersion, no re-list: {seen:?}"
    );
    assert_eq!(seen.added, ["a", "b"]);
    assert_eq!(seen.modified, ["a"]);
    assert!(via.client().stats().connects >= 2, "reconnected");
    task.abort();
}

#[tokio::test]
async fn relists_after_410_with_synthetic_events() {
    let s = Server::start();
    let proxy = Proxy::start(s.port);
    let direct: Api<Pod> = Api::namespaced(s.client(), "default");
    let via: Api<Pod> = Api::namespaced(proxied(&s, &proxy), "default");
    for n in ["x", "y", "gone"] {
        direct
            .create(&PostParams::default(), &pod(n, "n1"))
            .await
            .unwrap();
    }
    direct
        .create(&PostParams::default(), &pod("elsewhere", "n2"))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    // The kubelet's informer: pods of one node (an indexed field, so the server watches
    // the store directly and a compacted resourceVersion is refused).
    let (store, informer) = Informer::new(
        via.clone(),
        ListParams::default().fields("spec.nodeName=n1"),
    );
    let task = tokio::spawn(informer.with_options(fast()).run(recorder(seen.clone())));
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_synced())
        .await
        .unwrap();
    assert_eq!(store.len(), 3);

    proxy.cut();
    direct
        .delete("gone", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    direct
        .patch(
            "y",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
        )
        .await
        .unwrap();
    direct
        .create(&PostParams::default(), &pod("z", "n1"))
        .await
        .unwrap();
    let head = direct
        .list(&ListParams::default())
        .await
        .unwrap()
        .resource_version;
    store::Backend::compact(&*s.engine, store::Revision(head.parse().unwrap()))
        .await
        .unwrap();
    proxy.resume();

    let names = |st: &Store<Pod>| {
        let mut v: Vec<String> = st
            .list()
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        v.sort();
        v
    };
    assert!(
        eventually(Duration::from_secs(15), || names(&store) == ["x", "y", "z"]).await,
        "store {:?}",
        names(&store)
    );
    assert_eq!(
        store
            .get("default", "y")
            .unwrap()
            .metadata
            .labels
            .as_ref()
            .unwrap()["v"],
        "2"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.synced, 2, "re-listed once after the 410: {seen:?}");
    assert_eq!(seen.deleted, ["gone"], "{seen:?}");
    assert_eq!(seen.modified, ["y"], "{seen:?}");
    assert_eq!(
        seen.added.iter().filter(|n| *n == "z").count(),
        1,
        "{seen:?}"
    );
    assert_eq!(seen.added.len(), 4, "x, y, gone, then z: {seen:?}");
    task.abort();
}
