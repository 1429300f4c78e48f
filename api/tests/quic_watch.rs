//! Watches over the apiserver's QUIC endpoint (`api::quic`) against a real in-process
//! apiserver over real UDP sockets: event order and resourceVersions, selectors, resume,
//! 410 for a compacted resourceVersion, bookmarks, authentication, 1,000 watches on one
//! connection, a stalled stream next to a healthy one, an unread stream cut off with a 410,
//! an informer across a server restart, and raw GET/LIST/refusals on the wire format.
//! Every wait is bounded.

mod client_common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::client::runtime::{Event, Informer, InformerOptions};
use api::client::{
    Api, Client, ClientError, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams, WatchStream,
};
use client_common::{Server, eventually};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde_json::json;

/// Bound on waiting for one watch event.
const EVENT_WAIT: Duration = Duration::from_secs(10);

fn cm(name: &str, labels: &[(&str, &str)], data: &str) -> ConfigMap {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels}, "data": {"k": data}
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

/// A client whose watches run over QUIC (one connection), with the admin credentials.
fn quic_client(s: &Server) -> Client {
    let mut cfg = s.config();
    cfg.quic_watch_port = Some(s.quic_port.expect("the server runs the QUIC endpoint"));
    cfg.connections = 1;
    let c = Client::new(cfg).unwrap();
    assert!(c.quic_watches());
    c
}

async fn next<K: std::fmt::Debug>(w: &mut WatchStream<K>) -> WatchEvent<K> {
    tokio::time::timeout(EVENT_WAIT, w.next())
        .await
        .expect("a watch event in time")
        .expect("the watch is open")
        .expect("a decodable event")
}

/// The type, name and resourceVersion of an object event.
fn summary(ev: &WatchEvent<ConfigMap>) -> (&'static str, String, String) {
    let (t, o) = match ev {
        WatchEvent::Added(o) => ("ADDED", o),
        WatchEvent::Modified(o) => ("MODIFIED", o),
        WatchEvent::Deleted(o) => ("DELETED", o),
        other => panic!("not an object event: {other:?}"),
    };
    (
        t,
        o.metadata.name.clone().unwrap_or_default(),
        o.metadata.resource_version.clone().unwrap_or_default(),
    )
}

fn rv(o: &ConfigMap) -> String {
    o.metadata.resource_version.clone().unwrap()
}

#[tokio::test]
async fn events_in_order_with_resource_versions_and_selectors() {
    let s = Server::start();
    let http: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    let quic: Api<ConfigMap> = Api::namespaced(quic_client(&s), "default");
    let start = http
        .list(&ListParams::default())
        .await
        .unwrap()
        .resource_version;
    let mut all = quic.watch(&WatchParams::default(), &start).await.unwrap();
    let mut labeled = quic
        .watch(&WatchParams::default().labels("app=a"), &start)
        .await
        .unwrap();
    let mut named = quic
        .watch(&WatchParams::default().fields("metadata.name=y"), &start)
        .await
        .unwrap();

    let x1 = http
        .create(&PostParams::default(), &cm("x", &[("app", "a")], "0"))
        .await
        .unwrap();
    let y1 = http
        .create(&PostParams::default(), &cm("y", &[("app", "b")], "0"))
        .await
        .unwrap();
    let x2 = http
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "1"}})),
        )
        .await
        .unwrap();
    // y starts matching app=a: ADDED for the selector watch.
    let y2 = http
        .patch(
            "y",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "a"}}})),
        )
        .await
        .unwrap();
    http.delete("x", &DeleteParams::default()).await.unwrap();
    let head = http
        .list(&ListParams::default())
        .await
        .unwrap()
        .resource_version;

    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(summary(&next(&mut all).await));
    }
    let s3 = |t: &'static str, n: &str, r: String| (t, n.to_string(), r);
    assert_eq!(
        got,
        [
            s3("ADDED", "x", rv(&x1)),
            s3("ADDED", "y", rv(&y1)),
            s3("MODIFIED", "x", rv(&x2)),
            s3("MODIFIED", "y", rv(&y2)),
            s3("DELETED", "x", head.clone()),
        ]
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(summary(&next(&mut labeled).await));
    }
    assert_eq!(
        got,
        [
            s3("ADDED", "x", rv(&x1)),
            s3("MODIFIED", "x", rv(&x2)),
            s3("ADDED", "y", rv(&y2)),
            s3("DELETED", "x", head),
        ]
    );
    assert_eq!(
        [
            summary(&next(&mut named).await),
            summary(&next(&mut named).await)
        ],
        [s3("ADDED", "y", rv(&y1)), s3("MODIFIED", "y", rv(&y2))]
    );
    // Nothing else arrived on the field-selected watch.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), named.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn resume_initial_events_and_bookmarks() {
    let s = Server::start();
    let http: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    let quic: Api<ConfigMap> = Api::namespaced(quic_client(&s), "default");
    let a = http
        .create(&PostParams::default(), &cm("a", &[], "0"))
        .await
        .unwrap();
    let b = http
        .create(&PostParams::default(), &cm("b", &[], "0"))
        .await
        .unwrap();

    // From a's resourceVersion: only b.
    let mut w = quic.watch(&WatchParams::default(), &rv(&a)).await.unwrap();
    assert_eq!(summary(&next(&mut w).await), ("ADDED", "b".into(), rv(&b)));

    // "0": the current objects as ADDED first.
    let mut w = quic.watch(&WatchParams::default(), "0").await.unwrap();
    let mut names = vec![
        summary(&next(&mut w).await).1,
        summary(&next(&mut w).await).1,
    ];
    names.sort();
    assert_eq!(names, ["a", "b"]);

    // sendInitialEvents: the objects, then the bookmark that ends them.
    let wp = WatchParams::default()
        .bookmarks(true)
        .send_initial_events(true);
    let mut w = quic.watch(&wp, "").await.unwrap();
    next(&mut w).await;
    next(&mut w).await;
    match next(&mut w).await {
        WatchEvent::Bookmark {
            initial_events_end,
            resource_version,
        } => {
            assert!(initial_events_end);
            assert!(resource_version.parse::<u64>().unwrap() >= rv(&b).parse::<u64>().unwrap());
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }

    // A bookmark on a watch whose resource is idle while the store moves on (a write to
    // another resource; the test engine reports progress every 200 ms).
    let mut w = quic
        .watch(&WatchParams::default().bookmarks(true), &rv(&b))
        .await
        .unwrap();
    let other = Api::<Pod>::namespaced(s.client(), "default")
        .create(&PostParams::default(), &pod("elsewhere", "n1"))
        .await
        .unwrap();
    match next(&mut w).await {
        WatchEvent::Bookmark {
            resource_version, ..
        } => assert!(
            resource_version.parse::<u64>().unwrap()
                >= other
                    .metadata
                    .resource_version
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
        ),
        other => panic!("expected a bookmark, got {other:?}"),
    }

    // timeoutSeconds ends the stream.
    let mut w = quic
        .watch(&WatchParams::default().timeout(1), &rv(&b))
        .await
        .unwrap();
    let end = tokio::time::timeout(EVENT_WAIT, w.next()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn compacted_resource_version_is_410() {
    let s = Server::start();
    let http: Api<Pod> = Api::namespaced(s.client(), "default");
    let quic: Api<Pod> = Api::namespaced(quic_client(&s), "default");
    let first = http
        .create(&PostParams::default(), &pod("p1", "n1"))
        .await
        .unwrap();
    for p in ["p2", "p3"] {
        http.create(&PostParams::default(), &pod(p, "n1"))
            .await
            .unwrap();
    }
    // Compacted past p2's create: a watch from p1's resourceVersion cannot be served.
    let head = http
        .list(&ListParams::default())
        .await
        .unwrap()
        .resource_version;
    store::Backend::compact(&*s.engine, store::Revision(head.parse().unwrap()))
        .await
        .unwrap();
    let old = first.metadata.resource_version.unwrap();
    for wp in [
        WatchParams::default(),
        WatchParams::default().fields("spec.nodeName=n1"),
    ] {
        match quic.watch(&wp, &old).await {
            Err(e) => assert!(e.is_gone(), "{e}"),
            Ok(mut w) => match next(&mut w).await {
                WatchEvent::Error(st) => {
                    assert_eq!((st.code, st.reason.as_str()), (410, "Expired"))
                }
                other => panic!("expected a 410 event, got {other:?}"),
            },
        }
    }
}

#[tokio::test]
async fn authentication_as_over_https() {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), "s3cret,alice,u1,\"system:masters\"\n").unwrap();
    let path = tokens.path().to_path_buf();
    let s = Server::start_with(|o| o.token_auth_file = Some(path));
    let mut cfg = s.config();
    cfg.quic_watch_port = s.quic_port;
    cfg.client_cert_pem = None;
    cfg.client_key_pem = None;

    // No client certificate and no token: 401 Status.
    let anon: Api<ConfigMap> = Api::namespaced(Client::new(cfg.clone()).unwrap(), "default");
    let e = anon
        .watch(&WatchParams::default(), "0")
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(401), "{e}");
    assert_eq!(e.reason(), Some("Unauthorized"), "{e}");

    // A wrong token: 401.
    cfg.token = Some("wrong".into());
    let bad: Api<ConfigMap> = Api::namespaced(Client::new(cfg.clone()).unwrap(), "default");
    let e = bad.watch(&WatchParams::default(), "0").await.err().unwrap();
    assert_eq!(e.code(), Some(401), "{e}");

    // The right token, and the admin certificate: served.
    cfg.token = Some("s3cret".into());
    let ok: Api<ConfigMap> = Api::namespaced(Client::new(cfg).unwrap(), "default");
    let mut w = ok.watch(&WatchParams::default(), "0").await.unwrap();
    let admin: Api<ConfigMap> = Api::namespaced(quic_client(&s), "default");
    let mut w2 = admin.watch(&WatchParams::default(), "0").await.unwrap();
    admin
        .create(&PostParams::default(), &cm("seen", &[], "0"))
        .await
        .unwrap();
    assert_eq!(summary(&next(&mut w).await).1, "seen");
    assert_eq!(summary(&next(&mut w2).await).1, "seen");

    // A path the endpoint does not serve: a Status too.
    let e = Api::<ConfigMap>::namespaced(quic_client(&s), "default")
        .watch(&WatchParams::default().fields("no.such.field=1"), "0")
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(400), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watches_on_one_connection() {
    const WATCHES: usize = 1000;
    let s = Server::start();
    let client = quic_client(&s);
    let quic: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let http: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    let start = http
        .list(&ListParams::default())
        .await
        .unwrap()
        .resource_version;
    let wp = WatchParams::default();
    let opens = (0..WATCHES).map(|_| quic.watch(&wp, &start));
    let watches: Vec<WatchStream<ConfigMap>> = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::try_join_all(opens),
    )
    .await
    .expect("1,000 watches open in time")
    .unwrap();
    let created = http
        .create(&PostParams::default(), &cm("fan", &[], "1"))
        .await
        .unwrap();
    let received =
        futures::future::join_all(watches.into_iter().map(|mut w| async move {
            tokio::time::timeout(Duration::from_secs(60), w.next()).await
        }))
        .await;
    let ok = received
        .iter()
        .filter(|r| matches!(r, Ok(Some(Ok(WatchEvent::Added(o)))) if o.metadata.resource_version == created.metadata.resource_version))
        .count();
    assert_eq!(ok, WATCHES, "every watch received the event");
    assert_eq!(client.stats().quic_connects, 1, "all on one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_does_not_delay_the_others() {
    let s = Server::start();
    let quic: Api<ConfigMap> = Api::namespaced(quic_client(&s), "default");
    let http: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    let start = http
        .list(&ListParams::default())
        .await
        .unwrap()
        .resource_version;
    // Never read while the big objects are written: its stream window fills up.
    let mut stalled = quic
        .watch(&WatchParams::default().labels("size=big"), &start)
        .await
        .unwrap();
    let mut healthy = quic
        .watch(&WatchParams::default().labels("size=small"), &start)
        .await
        .unwrap();
    // 12 x 200 KB: several times the client's 512 KiB stream window.
    let big = "x".repeat(200_000);
    for i in 0..12 {
        http.create(
            &PostParams::default(),
            &cm(&format!("big-{i}"), &[("size", "big")], &big),
        )
        .await
        .unwrap();
    }
    for i in 0..5 {
        let name = format!("small-{i}");
        http.create(
            &PostParams::default(),
            &cm(&name, &[("size", "small")], "1"),
        )
        .await
        .unwrap();
        // Arrives although the other stream on the connection is not read.
        assert_eq!(summary(&next(&mut healthy).await).1, name);
    }
    // The stalled stream then delivers everything, in order.
    for i in 0..12 {
        assert_eq!(summary(&next(&mut stalled).await).1, format!("big-{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informer_over_quic_resyncs_after_a_server_restart() {
    let mut s = Server::start();
    let http: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    let client = quic_client(&s);
    let quic: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    http.create(&PostParams::default(), &cm("a", &[("app", "inf")], "0"))
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (store, informer) = Informer::new(quic, ListParams::default().labels("app=inf"));
    let opts = InformerOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..InformerOptions::default()
    };
    let rec = seen.clone();
    let task = tokio::spawn(
        informer
            .with_options(opts)
            .run(move |ev: Event<ConfigMap>| {
                if let Event::Added(o) | Event::Modified(o) = ev {
                    rec.lock()
                        .unwrap()
                        .push(o.metadata.name.clone().unwrap_or_default());
                }
            }),
    );
    tokio::time::timeout(EVENT_WAIT, store.wait_until_synced())
        .await
        .unwrap();
    http.create(&PostParams::default(), &cm("b", &[("app", "inf")], "0"))
        .await
        .unwrap();
    assert!(eventually(EVENT_WAIT, || store.get("default", "b").is_some()).await);

    s.restart();
    let http: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    http.create(&PostParams::default(), &cm("c", &[("app", "inf")], "0"))
        .await
        .unwrap();
    http.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            store.get("default", "c").is_some() && store.get("default", "a").is_none()
        })
        .await,
        "store after the restart: {:?}",
        store
            .list()
            .iter()
            .map(|o| o.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    assert!(
        client.stats().quic_connects >= 2,
        "reconnected over QUIC: {:?}",
        client.stats()
    );
    task.abort();
}

/// A watch refused before it starts is the server's Status, not a transport error.
#[tokio::test]
async fn refusals_are_statuses() {
    let s = Server::start();
    let quic: Api<ConfigMap> = Api::namespaced(quic_client(&s), "default");
    let e = quic
        .watch(&WatchParams::default(), "not-a-number")
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, ClientError::Api(_)), "{e:?}");
    assert_eq!(e.code(), Some(400), "{e}");
}

/// A QUIC connection made by hand with the admin certificate, for raw requests.
async fn raw_connection(s: &Server) -> (quinn::Endpoint, quinn::Connection) {
    let cfg = s.config();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &cfg.ca_pem.unwrap()[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs = rustls_pemfile::certs(&mut &cfg.client_cert_pem.unwrap()[..])
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &cfg.client_key_pem.unwrap()[..])
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = vec![api::quic::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], s.quic_port.unwrap()));
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    (ep, conn)
}

/// Sends `head` on a new stream and reads the whole answer: status and body.
async fn raw(conn: &quinn::Connection, head: &[u8]) -> (u16, serde_json::Value) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(head).await.unwrap();
    send.finish().unwrap();
    let all = tokio::time::timeout(EVENT_WAIT, recv.read_to_end(4 << 20))
        .await
        .unwrap()
        .unwrap();
    let mut buf = api::quic::frame::HeadBuffer::new();
    buf.push(&all);
    let (h, body) = buf.response().unwrap().unwrap();
    (h.status.as_u16(), serde_json::from_slice(body).unwrap())
}

#[tokio::test]
async fn raw_get_and_list_and_refusals() {
    let s = Server::start();
    let http: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    http.create(&PostParams::default(), &cm("one", &[], "1"))
        .await
        .unwrap();
    let (_ep, conn) = raw_connection(&s).await;
    let (code, body) = raw(
        &conn,
        b"GET /api/v1/namespaces/default/configmaps/one HTTP/1.1\r\naccept: application/json\r\n\r\n",
    )
    .await;
    assert_eq!((code, body["data"]["k"].as_str()), (200, Some("1")));
    let (code, body) = raw(
        &conn,
        b"GET /api/v1/namespaces/default/configmaps?limit=10 HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["kind"], "ConfigMapList");
    assert_eq!(body["items"][0]["metadata"]["name"], "one");
    let (code, body) = raw(
        &conn,
        b"GET /api/v1/namespaces/default/configmaps/missing HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));
    let (code, body) = raw(
        &conn,
        b"DELETE /api/v1/namespaces/default/configmaps/one HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!((code, body["kind"].as_str()), (405, Some("Status")));
    let (code, _) = raw(&conn, b"GET /version HTTP/1.1\r\n\r\n").await;
    assert_eq!(code, 404);
    let (code, body) = raw(&conn, b"\x00garbage\r\n\r\n").await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    // The refused delete changed nothing.
    assert!(http.get_opt("one").await.unwrap().is_some());
}

/// A watch whose client stops reading backs up into the fan-out, which cuts it off with a
/// 410 `Gone` event as over HTTP/2, while its neighbour on the connection gets every
/// event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_stream_is_cut_off_with_410() {
    // More than the fan-out's ring (4,096) plus the watch's buffer (256) and window.
    const OBJECTS: usize = 4_600;
    let s = Server::start();
    let quic: Api<ConfigMap> = Api::namespaced(quic_client(&s), "default");
    let http: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    let start = http
        .list(&ListParams::default())
        .await
        .unwrap()
        .resource_version;
    let mut unread = quic
        .watch(&WatchParams::default().labels("app=flood"), &start)
        .await
        .unwrap();
    let mut reader = quic
        .watch(&WatchParams::default().labels("app=flood"), &start)
        .await
        .unwrap();
    let data = "y".repeat(2_000);
    let creates = futures::stream::iter(0..OBJECTS)
        .map(|i| {
            let (http, data) = (http.clone(), data.clone());
            async move {
                http.create(
                    &PostParams::default(),
                    &cm(&format!("f-{i}"), &[("app", "flood")], &data),
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(16);
    let read_all = async {
        let mut n = 0;
        while n < OBJECTS {
            match next(&mut reader).await {
                WatchEvent::Added(_) => n += 1,
                other => panic!("the read stream got {other:?}"),
            }
        }
    };
    let ((), ()) = tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::join(creates.collect::<()>(), read_all),
    )
    .await
    .expect("creates and the read stream in time");
    // The unread stream: what was buffered, then the 410 (bounded by the object count).
    let mut added = 0;
    let status = loop {
        match next(&mut unread).await {
            WatchEvent::Added(_) => added += 1,
            WatchEvent::Error(st) => break st,
            other => panic!("unexpected {other:?}"),
        }
        assert!(added < OBJECTS, "the unread stream was never cut off");
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Gone"));
    assert!(
        unread.next().await.is_none(),
        "the stream ends after the 410"
    );
}
