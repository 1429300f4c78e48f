//! Transport, PKI and authentication of `kubeshard server`, checked with curl: TLS with h2
//! and HTTP/1.1, client certificates, bearer tokens, 401s, the loopback plain-HTTP port,
//! the body limit, path validation, clean stop and PKI reuse on restart.

#[path = "support/api_server.rs"]
mod support;

use support::{TestServer, curl};

fn cert_args(s: &TestServer) -> Vec<String> {
    let pki = s.dir.join("pki");
    vec![
        "--cacert".into(),
        pki.join("ca.crt").display().to_string(),
        "--cert".into(),
        pki.join("admin.crt").display().to_string(),
        "--key".into(),
        pki.join("admin.key").display().to_string(),
    ]
}

#[test]
fn tls_auth_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cret,alice,u1,\"dev,ops\"\n").unwrap();
    let s = TestServer::start(&["--token-auth-file", tokens.to_str().unwrap()]);

    // No credentials: 401 Status.
    let (code, body) = s.curl(&["-k"], "/api/v1/namespaces");
    assert_eq!(code, 401, "{body}");
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["reason"], "Unauthorized");
    assert_eq!(st["kind"], "Status");
    // A wrong token is 401 too; the right one authenticates.
    assert_eq!(
        s.curl(&["-k", "-H", "Authorization: Bearer nope"], "/version")
            .0,
        401
    );
    let (code, _) = s.curl(
        &["-k", "-H", "Authorization: Bearer s3cret"],
        "/api/v1/namespaces/default",
    );
    assert_eq!(code, 200);

    // The admin client certificate over HTTP/2 (ALPN h2) and over HTTP/1.1.
    let certs = cert_args(&s);
    let mut a: Vec<&str> = certs.iter().map(String::as_str).collect();
    a.extend(["--http2", "-w", "\n%{http_version}\n%{http_code}"]);
    let (_, body) = s.curl(&a, "/version");
    let (json, version) = body.rsplit_once('\n').unwrap();
    assert_eq!(version.trim(), "2", "h2 expected");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["minor"], "33");
    assert!(v["gitVersion"].as_str().unwrap().starts_with("v1.33."));
    let mut b: Vec<&str> = certs.iter().map(String::as_str).collect();
    b.push("--http1.1");
    let (code, body) = s.curl(&b, "/api/v1/namespaces/kube-system");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"name\":\"kube-system\""));

    // Loopback plain HTTP is the admin; health endpoints answer ok.
    let http = format!("http://127.0.0.1:{}", s.insecure_port);
    for p in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(curl(&[], &format!("{http}{p}")), (200, "ok".to_string()));
    }
    assert_eq!(curl(&[], &format!("{http}/version/")).0, 200);

    // Body limit: 413 with a Status, nothing stored.
    let big = dir.path().join("big.json");
    let filler = "x".repeat(4 * 1024 * 1024);
    std::fs::write(&big, format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{filler}\"}}}}")).unwrap();
    let (code, body) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", big.display()),
        ],
        &format!("{http}/api/v1/namespaces/default/configmaps"),
    );
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("RequestEntityTooLarge"));
    assert_eq!(
        curl(
            &[],
            &format!("{http}/api/v1/namespaces/default/configmaps/big")
        )
        .0,
        404
    );

    // Path traversal and bad names in paths.
    let (code, _) = curl(
        &["--path-as-is"],
        &format!("{http}/api/v1/namespaces/default/configmaps/.."),
    );
    assert_eq!(code, 400);
    let (code, _) = curl(
        &[],
        &format!("{http}/api/v1/namespaces/default/configmaps/a%2Fb"),
    );
    assert_eq!(code, 400);
    // Unknown resources and wrong methods.
    assert_eq!(curl(&[], &format!("{http}/api/v1/frobnicators")).0, 404);
    assert_eq!(
        curl(
            &["-X", "PUT"],
            &format!("{http}/api/v1/namespaces/default/configmaps")
        )
        .0,
        405
    );
    // Wrong content type: 415.
    let (code, _) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data",
            "x",
        ],
        &format!("{http}/api/v1/namespaces/default/configmaps"),
    );
    assert_eq!(code, 415);
}

#[test]
fn rest_semantics_over_http() {
    let s = TestServer::start(&[]);
    let http = format!("http://127.0.0.1:{}", s.insecure_port);
    let cms = format!("{http}/api/v1/namespaces/default/configmaps");
    let post = |body: &str| {
        curl(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                body,
            ],
            &cms,
        )
    };

    // generateName, then optimistic concurrency on PUT.
    let (code, body) = post(r#"{"metadata":{"generateName":"gen-"},"data":{"a":"1"}}"#);
    assert_eq!(code, 201, "{body}");
    let obj: serde_json::Value = serde_json::from_str(&body).unwrap();
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    let rv = obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let put = |body: String| {
        curl(
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "--data",
                &body,
            ],
            &format!("{cms}/{name}"),
        )
    };
    let (code, body) = put(format!(
        r#"{{"metadata":{{"name":"{name}","resourceVersion":"{rv}"}},"data":{{"a":"2"}}}}"#
    ));
    assert_eq!(code, 200, "{body}");
    let newer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(
        newer["metadata"]["resourceVersion"],
        obj["metadata"]["resourceVersion"]
    );
    let (code, body) = put(format!(
        r#"{{"metadata":{{"name":"{name}","resourceVersion":"{rv}"}},"data":{{"a":"3"}}}}"#
    ));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("the object has been modified; please apply your changes to the latest version and try again"));
    // A no-op PUT keeps the resourceVersion.
    let rv2 = newer["metadata"]["resourceVersion"].as_str().unwrap();
    let (code, body) = put(format!(
        r#"{{"metadata":{{"name":"{name}"}},"data":{{"a":"2"}}}}"#
    ));
    assert_eq!(code, 200);
    let same: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(same["metadata"]["resourceVersion"].as_str().unwrap(), rv2);

    // dryRun stores nothing.
    let (code, _) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"metadata":{"name":"dry"}}"#,
        ],
        &format!("{cms}?dryRun=All"),
    );
    assert_eq!(code, 201);
    assert_eq!(curl(&[], &format!("{cms}/dry")).0, 404);

    // Namespace must exist.
    let (code, body) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"metadata":{"name":"x"}}"#,
        ],
        &format!("{http}/api/v1/namespaces/nope/configmaps"),
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("namespaces \\\"nope\\\" not found"), "{body}");

    // Finalizers keep a deleted object with a deletionTimestamp until they are removed.
    let (code, _) = post(r#"{"metadata":{"name":"fin","finalizers":["example.com/x"]}}"#);
    assert_eq!(code, 201);
    let (code, body) = curl(&["-X", "DELETE"], &format!("{cms}/fin"));
    assert_eq!(code, 200);
    assert!(body.contains("deletionTimestamp"), "{body}");
    assert_eq!(curl(&[], &format!("{cms}/fin")).0, 200);
    let (code, _) = curl(
        &[
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/merge-patch+json",
            "--data",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        &format!("{cms}/fin"),
    );
    assert_eq!(code, 200);
    assert_eq!(curl(&[], &format!("{cms}/fin")).0, 404);

    // Field selectors, label selectors and limit/continue on a raw list.
    for i in 0..3 {
        post(&format!(
            r#"{{"metadata":{{"name":"l{i}","labels":{{"n":"{i}"}}}}}}"#
        ));
    }
    let (_, body) = curl(&[], &format!("{cms}?labelSelector=n%20in%20(0,2)"));
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "ConfigMapList");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["l0", "l2"]);
    let (_, body) = curl(&[], &format!("{cms}?fieldSelector=metadata.name%3Dl1"));
    assert!(body.contains("\"l1\"") && !body.contains("\"l0\""));
    let (_, body) = curl(&[], &format!("{cms}?limit=2"));
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cont = page["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, body) = curl(&[], &format!("{cms}?limit=2&continue={cont}"));
    let page2: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        page2["metadata"]["resourceVersion"],
        page["metadata"]["resourceVersion"]
    );
    assert!(!page2["items"].as_array().unwrap().is_empty());

    // Watch from a list's resourceVersion sees later writes; bookmarks are JSON lines.
    let list_rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = curl(
        &[],
        &format!("{cms}?watch=1&resourceVersion={list_rv}&timeoutSeconds=2"),
    );
    assert_eq!(code, 200);
    // l0..l2 were created before the list: nothing newer yet, but the deletes below are.
    assert!(
        body.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    let (_, body) = curl(&[], &format!("{cms}?watch=true&timeoutSeconds=2"));
    let added = body
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"ADDED\""))
        .count();
    assert!(added >= 4, "{body}");
}

#[test]
fn stops_on_sigterm_and_reuses_pki() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(tmp.path(), &[]);
    let http = format!("http://127.0.0.1:{}", s.insecure_port);
    let (code, _) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"metadata":{"name":"keep"}}"#,
        ],
        &format!("{http}/api/v1/namespaces/default/configmaps"),
    );
    assert_eq!(code, 201);
    let ca = std::fs::read(tmp.path().join("pki/ca.crt")).unwrap();
    assert!(s.stop(), "clean exit on SIGTERM");
    let s2 = TestServer::start_in(tmp.path(), &[]);
    assert_eq!(std::fs::read(tmp.path().join("pki/ca.crt")).unwrap(), ca);
    let http = format!("http://127.0.0.1:{}", s2.insecure_port);
    assert_eq!(
        curl(
            &[],
            &format!("{http}/api/v1/namespaces/default/configmaps/keep")
        )
        .0,
        200
    );
}

#[test]
fn watch_fanout_namespaces_and_indexed_fields() {
    let s = TestServer::start(&[]);
    let http = format!("http://127.0.0.1:{}", s.insecure_port);
    let watch = |path: &str| {
        let url = format!("{http}{path}");
        std::thread::spawn(move || curl(&[], &url).1)
    };
    // Two watchers share the configmaps hub; the pod watcher uses the store's nodeName index.
    let ns_watch =
        watch("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=4&resourceVersion=");
    let all_watch =
        watch("/api/v1/configmaps?watch=true&timeoutSeconds=4&allowWatchBookmarks=true");
    let node_watch =
        watch("/api/v1/pods?watch=true&timeoutSeconds=4&fieldSelector=spec.nodeName%3Dn1");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let post = |ns: &str, res: &str, body: &str| {
        let (code, b) = curl(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                body,
            ],
            &format!("{http}/api/v1/namespaces/{ns}/{res}"),
        );
        assert_eq!(code, 201, "{b}");
    };
    post(
        "default",
        "configmaps",
        r#"{"metadata":{"name":"in-default"}}"#,
    );
    post(
        "kube-system",
        "configmaps",
        r#"{"metadata":{"name":"in-system"}}"#,
    );
    let pod = |name: &str, node: &str| {
        format!(
            r#"{{"metadata":{{"name":"{name}"}},"spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"busybox"}}]}}}}"#
        )
    };
    post("default", "pods", &pod("on-n1", "n1"));
    post("default", "pods", &pod("on-n2", "n2"));

    let names = |body: &str| -> Vec<String> {
        body.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] != "BOOKMARK")
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["object"]["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let ns_events = names(&ns_watch.join().unwrap());
    assert!(
        ns_events.contains(&"ADDED in-default".to_string()),
        "{ns_events:?}"
    );
    assert!(
        !ns_events.iter().any(|e| e.contains("in-system")),
        "{ns_events:?}"
    );
    let all_events = names(&all_watch.join().unwrap());
    assert!(
        all_events.contains(&"ADDED in-default".to_string()),
        "{all_events:?}"
    );
    assert!(
        all_events.contains(&"ADDED in-system".to_string()),
        "{all_events:?}"
    );
    let node_events = names(&node_watch.join().unwrap());
    assert_eq!(node_events, vec!["ADDED on-n1".to_string()]);
}

#[test]
fn pod_binding_and_eviction() {
    let s = TestServer::start(&[]);
    let http = format!("http://127.0.0.1:{}", s.insecure_port);
    let pods = format!("{http}/api/v1/namespaces/default/pods");
    let post = |url: &str, body: &str| {
        curl(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                body,
            ],
            url,
        )
    };
    let (code, b) = post(
        &pods,
        r#"{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#,
    );
    assert_eq!(code, 201, "{b}");
    let bind = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"n1"}}"#;
    let (code, b) = post(&format!("{pods}/p/binding"), bind);
    assert_eq!(code, 201, "{b}");
    let (_, b) = curl(&[], &format!("{pods}/p"));
    let pod: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(pod["spec"]["nodeName"], "n1");
    let (code, b) = post(&format!("{pods}/p/binding"), bind);
    assert_eq!(code, 409, "{b}");
    assert!(b.contains("is already assigned to node"), "{b}");

    // Eviction of an unscheduled pod deletes it at once.
    post(
        &pods,
        r#"{"metadata":{"name":"q"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#,
    );
    let ev = r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"q","namespace":"default"}}"#;
    let (code, b) = post(&format!("{pods}/q/eviction"), ev);
    assert_eq!(code, 201, "{b}");
    assert_eq!(curl(&[], &format!("{pods}/q")).0, 404);
    // A bound pod is deleted gracefully: it stays, Terminating, until its kubelet finishes.
    let (code, b) = curl(&["-X", "DELETE"], &format!("{pods}/p"));
    assert_eq!(code, 200);
    assert!(
        b.contains("deletionTimestamp") && b.contains("\"deletionGracePeriodSeconds\":30"),
        "{b}"
    );
    let (code, _) = curl(
        &[
            "-X",
            "DELETE",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"gracePeriodSeconds":0}"#,
        ],
        &format!("{pods}/p"),
    );
    assert_eq!(code, 200);
    assert_eq!(curl(&[], &format!("{pods}/p")).0, 404);
}

#[test]
fn services_get_unique_cluster_ips() {
    let s = TestServer::start(&[]);
    let http = format!("http://127.0.0.1:{}", s.insecure_port);
    let svcs = format!("{http}/api/v1/namespaces/default/services");
    let (code, b) = curl(&[], &format!("{svcs}/kubernetes"));
    assert_eq!(code, 200, "{b}");
    assert!(b.contains("\"clusterIP\":\"10.96.0.1\""), "{b}");
    let post = |body: String| {
        curl(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                &body,
            ],
            &svcs,
        )
    };
    let svc = |name: &str, ip: &str| {
        let ip = if ip.is_empty() {
            String::new()
        } else {
            format!(r#","clusterIP":"{ip}""#)
        };
        format!(r#"{{"metadata":{{"name":"{name}"}},"spec":{{"ports":[{{"port":80}}]{ip}}}}}"#)
    };
    let mut ips = Vec::new();
    for n in ["a", "b", "c"] {
        let (code, b) = post(svc(n, ""));
        assert_eq!(code, 201, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        let ip: std::net::Ipv4Addr = v["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert_eq!(ip.octets()[0], 10);
        assert!((96..112).contains(&ip.octets()[1]), "{ip}");
        ips.push(ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3);
    let taken = ips[0].to_string();
    let (code, b) = post(svc("d", &taken));
    assert_eq!(code, 422, "{b}");
    assert!(b.contains("provided IP is already allocated"), "{b}");
    // Deleting the owner frees the address.
    let (_, list) = curl(&[], &svcs);
    let owner = serde_json::from_str::<serde_json::Value>(&list).unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["spec"]["clusterIP"] == taken.as_str())
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(curl(&["-X", "DELETE"], &format!("{svcs}/{owner}")).0, 200);
    assert_eq!(post(svc("d", &taken)).0, 201);
}

#[test]
fn delete_collection_by_label() {
    let s = TestServer::start(&[]);
    let http = format!("http://127.0.0.1:{}", s.insecure_port);
    let cms = format!("{http}/api/v1/namespaces/default/configmaps");
    for (n, l) in [("a", "x"), ("b", "x"), ("c", "y")] {
        let body = format!(r#"{{"metadata":{{"name":"{n}","labels":{{"g":"{l}"}}}}}}"#);
        assert_eq!(
            curl(
                &[
                    "-X",
                    "POST",
                    "-H",
                    "Content-Type: application/json",
                    "--data",
                    &body
                ],
                &cms
            )
            .0,
            201
        );
    }
    assert_eq!(
        curl(&["-X", "DELETE"], &format!("{cms}?labelSelector=g%3Dx")).0,
        200
    );
    assert_eq!(curl(&[], &format!("{cms}/a")).0, 404);
    assert_eq!(curl(&[], &format!("{cms}/b")).0, 404);
    assert_eq!(curl(&[], &format!("{cms}/c")).0, 200);
}
