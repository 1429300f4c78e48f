//! The Rust client against a real in-process apiserver over TLS (HTTP/2): CRUD with the
//! admin kubeconfig, typed errors, selectors, paging, patches, subresources, untyped
//! objects, watches (order, bookmarks, 410, many streams on one connection), plain HTTP
//! and bearer tokens.

mod client_common;

use std::collections::BTreeMap;
use std::time::Duration;

use api::client::{
    Api, ApiResource, Client, ClientConfig, DeleteParams, DeleteResponse, DynamicObject,
    ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use client_common::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::json;

fn cm(name: &str, labels: &[(&str, &str)], data: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "data": {"k": data}
    }))
    .unwrap()
}

fn pod(name: &str, node: Option<&str>) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": spec
    }))
    .unwrap()
}

fn data(c: &ConfigMap) -> &str {
    c.data
        .as_ref()
        .and_then(|d| d.get("k"))
        .map_or("", String::as_str)
}

#[tokio::test]
async fn crud_and_typed_errors_over_tls() {
    let s = Server::start();
    let client = s.client();
    assert!(client.server().starts_with("https://127.0.0.1:"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    let created = cms.create(&pp, &cm("a", &[], "1")).await.unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    let got = cms.get("a").await.unwrap();
    assert_eq!(data(&got), "1");
    assert!(cms.get_opt("missing").await.unwrap().is_none());

    // 404 with the decoded Status.
    let e = cms.get("missing").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(e.code(), Some(404));
    assert_eq!(e.reason(), Some("NotFound"));
    assert!(e.status().unwrap().message.contains("\"missing\""), "{e}");

    // 409 AlreadyExists.
    let e = cms.create(&pp, &cm("a", &[], "x")).await.unwrap_err();
    assert!(e.is_already_exists(), "{e}");
    assert!(!e.is_conflict());
    assert_eq!(e.code(), Some(409));

    // Replace, then a replace with the stale resourceVersion is a 409 Conflict.
    let mut upd = got.clone();
    upd.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    let replaced = cms.replace("a", &pp, &upd).await.unwrap();
    assert_eq!(data(&replaced), "2");
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    let e = cms.replace("a", &pp, &upd).await.unwrap_err();
    assert!(e.is_conflict(), "{e}");
    assert_eq!(e.reason(), Some("Conflict"));
    assert_eq!(data(&cms.get("a").await.unwrap()), "2");

    // 422 Invalid, nothing stored.
    let e = cms
        .create(&pp, &cm("Not_Valid", &[], "x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(422), "{e}");
    assert!(e.is_invalid());
    assert!(cms.get_opt("Not_Valid").await.unwrap().is_none());
    // A name that cannot be a path segment fails before any request.
    assert!(matches!(
        cms.get("..").await.unwrap_err(),
        api::client::ClientError::InvalidRequest(_)
    ));

    // The four patch types.
    let p = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"m": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.data.as_ref().unwrap()["m"], "1");
    let p = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::<()>::Json(json!([{"op": "replace", "path": "/data/k", "value": "3"}])),
        )
        .await
        .unwrap();
    assert_eq!(data(&p), "3");
    let p = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"s": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.as_ref().unwrap()["s"], "y");
    let applied = cms
        .patch(
            "b",
            &PatchParams::apply("client-test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}, "data": {"k": "ap"}})),
        )
        .await
        .unwrap();
    assert_eq!(data(&applied), "ap");
    assert!(applied.metadata.managed_fields.is_some());

    // Dry run stores nothing.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    cms.create(&dry, &cm("dry", &[], "x")).await.unwrap();
    assert!(cms.get_opt("dry").await.unwrap().is_none());

    // Delete, then it is gone.
    match cms.delete("a", &DeleteParams::default()).await.unwrap() {
        DeleteResponse::Object(o) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
        DeleteResponse::Status(st) => assert_eq!(st.status, "Success"),
    }
    assert!(cms.get("a").await.unwrap_err().is_not_found());
    assert!(
        cms.delete("a", &DeleteParams::default())
            .await
            .unwrap_err()
            .is_not_found()
    );

    // Cluster-scoped resources ignore the namespace.
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<_> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");
    let v: serde_json::Value = client.get_json("/version").await.unwrap();
    assert_eq!(v["major"], "1");
    // Every request went over at most the two pooled connections.
    let st = client.stats();
    assert!(st.connects >= 1 && st.connects <= 2, "{st:?}");
    assert!(st.requests > 15, "{st:?}");
}

#[tokio::test]
async fn selectors_paging_and_subresources() {
    let s = Server::start();
    let client = s.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..25 {
        let app = if i % 5 == 0 { "a" } else { "b" };
        cms.create(
            &PostParams::default(),
            &cm(&format!("cm-{i:02}"), &[("app", app)], "x"),
        )
        .await
        .unwrap();
    }
    let a = cms
        .list(&ListParams::default().labels("app=a"))
        .await
        .unwrap();
    assert_eq!(a.items.len(), 5);
    let set = cms
        .list(&ListParams::default().labels("app in (a,c),app!=b"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 5);
    let one = cms
        .list(&ListParams::default().fields("metadata.name=cm-07"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    assert_eq!(one.items[0].metadata.name.as_deref(), Some("cm-07"));

    // Pages of 10: 10, 10, 5, each continuing the previous one, in name order.
    let mut names = Vec::new();
    let mut lp = ListParams::default().labels("app").limit(10);
    let mut sizes = Vec::new();
    for _ in 0..10 {
        let page = cms.list(&lp).await.unwrap();
        sizes.push(page.items.len());
        names.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        match page.continue_token {
            Some(t) => lp = lp.continue_token(&t),
            None => break,
        }
    }
    assert_eq!(sizes, [10, 10, 5]);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted);
    let all = cms
        .list_all(&ListParams::default().limit(7), 100)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 25);
    assert!(!all.resource_version.is_empty());

    // Delete the selected ones only.
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=a"),
    )
    .await
    .unwrap();
    assert!(
        cms.list(&ListParams::default().labels("app=a"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        cms.list(&ListParams::default().labels("app=b"))
            .await
            .unwrap()
            .items
            .len(),
        20
    );

    // Pods: field selector on spec.nodeName, and the binding subresource.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("on-n1", Some("n1")))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("unbound", None))
        .await
        .unwrap();
    let on = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    assert_eq!(on.items.len(), 1);
    let binding: Binding = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "unbound"},
        "target": {"kind": "Node", "name": "n2"}
    }))
    .unwrap();
    let st: api::client::Status = pods
        .create_subresource("unbound", "binding", &binding)
        .await
        .unwrap();
    assert_eq!(st.status, "Success");
    let p = pods.get("unbound").await.unwrap();
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n2"));
    // Binding again: the pod is bound already.
    let e = pods
        .create_subresource::<_, api::client::Status>("unbound", "binding", &binding)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");

    // Status subresource: replace_status changes status, not spec.
    let mut p = pods.get("on-n1").await.unwrap();
    p.status = Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
    let p2 = pods
        .replace_status("on-n1", &PostParams::default(), &p)
        .await
        .unwrap();
    assert_eq!(p2.status.unwrap().phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn dynamic_objects() {
    let s = Server::start();
    let client = s.client();
    let ar = ApiResource::new("", "v1", "ConfigMap", "configmaps", true);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let obj = DynamicObject::new("dyn", &ar).data(json!({"data": {"k": "v"}}));
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.data["data"]["k"], "v");
    assert_eq!(created.types.as_ref().unwrap().kind, "ConfigMap");
    let p = api
        .patch(
            "dyn",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "w"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.data["data"]["k"], "w");
    // Typed and untyped views agree.
    let typed: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert_eq!(data(&typed.get("dyn").await.unwrap()), "w");
    let all = Api::all_with(client.clone(), &ar);
    let l = all
        .list(&ListParams::default().fields("metadata.name=dyn"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    assert_eq!(l.items[0].metadata.namespace.as_deref(), Some("default"));

    // A custom resource, served once its CRD is stored.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]
        }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let wr = ApiResource::new("example.com", "v1", "Widget", "widgets", true);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &wr);
    let w = DynamicObject::new("w1", &wr).data(json!({"spec": {"size": 3}}));
    let mut created = None;
    for _ in 0..100 {
        match widgets.create(&PostParams::default(), &w).await {
            Ok(o) => {
                created = Some(o);
                break;
            }
            Err(e) if e.is_not_found() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let created = created.expect("the custom resource is served");
    assert_eq!(created.data["spec"]["size"], 3);
    // Its schema is enforced: a string size is 422.
    let bad = DynamicObject::new("w2", &wr).data(json!({"spec": {"size": "big"}}));
    let e = widgets
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(422), "{e}");
    assert_eq!(
        widgets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

async fn next<K: std::fmt::Debug>(s: &mut api::client::WatchStream<K>) -> WatchEvent<K> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("watch event in time")
        .expect("stream open")
        .expect("event")
}

/// The next event that is not a bookmark.
async fn next_change<K: std::fmt::Debug>(s: &mut api::client::WatchStream<K>) -> WatchEvent<K> {
    for _ in 0..1000 {
        match next(s).await {
            WatchEvent::Bookmark { .. } => {}
            ev => return ev,
        }
    }
    panic!("only bookmarks")
}

#[tokio::test]
async fn watch_in_order_with_bookmarks_and_410() {
    let s = Server::start();
    let client = s.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &cm("w0", &[], "0"))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.unwrap();
    let mut w = cms
        .watch(&WatchParams::default().bookmarks(true).timeout(30), &rv)
        .await
        .unwrap();
    let c = cms
        .create(&PostParams::default(), &cm("w1", &[], "1"))
        .await
        .unwrap();
    let mut m = c.clone();
    m.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    cms.replace("w1", &PostParams::default(), &m).await.unwrap();
    cms.delete("w1", &DeleteParams::default()).await.unwrap();
    match next_change(&mut w).await {
        WatchEvent::Added(o) => {
            assert_eq!((o.metadata.name.as_deref(), data(&o)), (Some("w1"), "1"))
        }
        ev => panic!("{ev:?}"),
    }
    match next_change(&mut w).await {
        WatchEvent::Modified(o) => assert_eq!(data(&o), "2"),
        ev => panic!("{ev:?}"),
    }
    let deleted_rv = match next_change(&mut w).await {
        WatchEvent::Deleted(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("w1"));
            o.metadata.resource_version.unwrap()
        }
        ev => panic!("{ev:?}"),
    };
    // Idle: a bookmark at or after the last change arrives (progress every 200 ms).
    match next(&mut w).await {
        WatchEvent::Bookmark {
            resource_version, ..
        } => {
            assert!(resource_version.parse::<u64>().unwrap() >= deleted_rv.parse::<u64>().unwrap())
        }
        ev => panic!("{ev:?}"),
    }
    drop(w);

    // sendInitialEvents: the current objects, then the end-of-initial-events bookmark.
    let mut w = cms
        .watch(
            &WatchParams::default().send_initial_events(true).timeout(30),
            "",
        )
        .await
        .unwrap();
    match next(&mut w).await {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("w0")),
        ev => panic!("{ev:?}"),
    }
    match next(&mut w).await {
        WatchEvent::Bookmark {
            initial_events_end, ..
        } => assert!(initial_events_end),
        ev => panic!("{ev:?}"),
    }
    drop(w);

    // After a compaction, watching from before it is 410 Gone.
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("x{i}"), &[], "x"))
            .await
            .unwrap();
    }
    let head = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .resource_version;
    store::Backend::compact(&*s.engine, store::Revision(head.parse().unwrap()))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    match pods.watch(&WatchParams::default(), &rv).await {
        Err(e) => assert!(e.is_gone(), "{e}"),
        Ok(mut w) => match next(&mut w).await {
            WatchEvent::Error(st) => assert_eq!(st.code, 410, "{st:?}"),
            ev => panic!("{ev:?}"),
        },
    }
    // The watch with the timeout ends by itself.
    let mut w = cms
        .watch(&WatchParams::default().timeout(1), &head)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = w.next().await {
            ev.unwrap();
        }
    })
    .await;
    assert!(ended.is_ok(), "the server ends a watch at timeoutSeconds");
}

#[tokio::test]
async fn many_watches_share_one_connection() {
    let s = Server::start();
    let mut cfg = s.config();
    cfg.connections = 1;
    let client = Client::new(cfg).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .resource_version;
    const N: usize = 120;
    let mut watches = Vec::with_capacity(N);
    for i in 0..N {
        // Half filtered by label, half not: both kinds of server-side source.
        let wp = if i % 2 == 0 {
            WatchParams::default().labels("app=fan").timeout(60)
        } else {
            WatchParams::default().timeout(60)
        };
        watches.push(cms.watch(&wp, &rv).await.unwrap());
    }
    cms.create(&PostParams::default(), &cm("fan", &[("app", "fan")], "1"))
        .await
        .unwrap();
    let got = futures::future::join_all(watches.iter_mut().map(|w| async move {
        match next_change(w).await {
            WatchEvent::Added(o) => o.metadata.name,
            ev => panic!("{ev:?}"),
        }
    }))
    .await;
    assert_eq!(got.len(), N);
    assert!(got.iter().all(|n| n.as_deref() == Some("fan")));
    assert_eq!(client.stats().connects, 1, "all watches on one connection");
    // Plain requests still flow next to the open watches.
    assert_eq!(data(&cms.get("fan").await.unwrap()), "1");
}

#[tokio::test]
async fn plain_http_tokens_and_anonymous() {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), "s3cret,alice,u1,\"system:masters\"\n").unwrap();
    let path = tokens.path().to_path_buf();
    let s = Server::start_with(|o| o.token_auth_file = Some(path));

    // http:// on the loopback port.
    let plain = Client::new(ClientConfig::new(format!(
        "http://127.0.0.1:{}",
        s.insecure_port
    )))
    .unwrap();
    let ns: Api<Namespace> = Api::all(plain);
    assert!(ns.get("default").await.is_ok());

    // A bearer token with the CA, and with insecure-skip-tls-verify.
    let mut cfg = s.config();
    cfg.client_cert_pem = None;
    cfg.client_key_pem = None;
    cfg.token = Some("s3cret".into());
    let ns: Api<Namespace> = Api::all(Client::new(cfg.clone()).unwrap());
    assert!(ns.get("default").await.is_ok());
    let mut insecure = cfg.clone();
    insecure.ca_pem = None;
    insecure.insecure_skip_tls_verify = true;
    let ns: Api<Namespace> = Api::all(Client::new(insecure).unwrap());
    assert!(ns.get("default").await.is_ok());

    // A wrong token and no credentials are 401.
    cfg.token = Some("wrong".into());
    let e = Api::<Namespace>::all(Client::new(cfg.clone()).unwrap())
        .get("default")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(401), "{e}");
    cfg.token = None;
    let e = Api::<Namespace>::all(Client::new(cfg).unwrap())
        .get("default")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(401), "{e}");

    // A kubeconfig with a token and a CA file next to it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(s.dir.path().join("pki/ca.crt"), dir.path().join("ca.crt")).unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n    token: s3cret\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
            s.port
        ),
    )
    .unwrap();
    let ns: Api<Namespace> = Api::all(Client::from_kubeconfig(&kc).unwrap());
    assert!(ns.get("kube-system").await.is_ok());
    // A kubeconfig naming a missing context is a clear error.
    assert!(matches!(
        ClientConfig::from_kubeconfig_context(&kc, Some("nope")),
        Err(api::client::ClientError::Kubeconfig(_))
    ));
    // A server that is not there is a connect error, not a hang.
    let mut gone = ClientConfig::new("http://127.0.0.1:1");
    gone.connect_timeout = Duration::from_secs(2);
    let e = Api::<Namespace>::all(Client::new(gone).unwrap())
        .get("default")
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
}
