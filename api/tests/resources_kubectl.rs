//! The real kubectl against the discovery, OpenAPI and Table bodies of `api::discovery`,
//! `api::openapi` and `api::table`, served by a minimal HTTP/1.1 server in this test (the
//! apiserver proper lives elsewhere; this pins down the bodies kubectl parses).
//!
//! Needs the kubectl binaries of the machine (`/usr/lib/google-cloud-sdk/bin/kubectl.1.NN`);
//! a test whose binary is absent says so and passes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use api::discovery::{self, DiscoveryFormat, Scope};
use api::openapi::OpenApi;
use api::registry::Registry;
use api::table::{self, TableOptions};
use serde_json::{Value, json};

struct Fixture {
    registry: Registry,
    openapi: OpenApi,
}

fn pods() -> Vec<Value> {
    let now = chrono::Utc::now();
    let created =
        (now - chrono::Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    vec![
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "web-0", "namespace": "default", "resourceVersion": "11",
            "creationTimestamp": created, "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.0.5"}], "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "state": {"running": {}}}]}}),
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "job-x", "namespace": "default", "resourceVersion": "12",
            "creationTimestamp": created, "labels": {"app": "batch"}},
            "spec": {"containers": [{"name": "a", "image": "busybox"}]}, "status": {"phase": "Pending"}}),
    ]
}

fn respond(stream: &mut TcpStream, code: u16, ctype: &str, body: &[u8]) {
    let reason = if code == 200 { "OK" } else { "Not Found" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn handle(fx: &Fixture, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut accept = None;
    let mut content_length = 0usize;
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "accept" => accept = Some(v.trim().to_owned()),
                "content-length" => content_length = v.trim().parse().unwrap_or(0).min(1 << 20),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; content_length];
    let _ = reader.read_exact(&mut body);
    let (path, _query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let json_ct = "application/json";
    let send = |s: &mut TcpStream, v: &Value| respond(s, 200, json_ct, v.to_string().as_bytes());
    match path {
        "/version" | "/version/" => send(
            &mut stream,
            &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.4",
            "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.6",
            "compiler": "gc", "platform": "linux/amd64"}),
        ),
        "/api" | "/apis" => {
            let scope = if path == "/api" {
                Scope::Core
            } else {
                Scope::Apis
            };
            match discovery::negotiate(accept.as_deref()) {
                Some(f @ DiscoveryFormat::Aggregated(v)) => respond(
                    &mut stream,
                    200,
                    f.content_type(),
                    discovery::aggregated(&fx.registry, scope, v)
                        .to_string()
                        .as_bytes(),
                ),
                Some(DiscoveryFormat::Legacy) if scope == Scope::Core => {
                    send(&mut stream, &discovery::api_versions("127.0.0.1"))
                }
                Some(DiscoveryFormat::Legacy) => {
                    send(&mut stream, &discovery::api_group_list(&fx.registry))
                }
                None => respond(&mut stream, 406, json_ct, b"{}"),
            }
        }
        "/openapi/v3" => respond(&mut stream, 200, json_ct, fx.openapi.index()),
        "/api/v1/namespaces/default/pods" | "/api/v1/pods" => {
            let wants_table = accept.as_deref().is_some_and(|a| a.contains("as=Table"));
            if wants_table {
                let def = fx.registry.lookup("", "v1", "pods").cloned();
                let Some(def) = def else {
                    return respond(&mut stream, 404, json_ct, b"{}");
                };
                let opts = TableOptions {
                    list_meta: Some(json!({"resourceVersion": "12"})),
                    ..Default::default()
                };
                send(
                    &mut stream,
                    &table::to_table(&def, &pods(), &opts, chrono::Utc::now()),
                );
            } else {
                send(
                    &mut stream,
                    &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}, "items": pods()}),
                );
            }
        }
        p if p.starts_with("/openapi/v3/") => match fx.openapi.document(p) {
            Some(d) => respond(&mut stream, 200, json_ct, &d.bytes),
            None => respond(&mut stream, 404, json_ct, b"{}"),
        },
        p if p.starts_with("/api/") || p.starts_with("/apis/") => {
            let parts: Vec<&str> = p.trim_matches('/').split('/').collect();
            let found = match parts.as_slice() {
                ["api", v] => discovery::api_resource_list(&fx.registry, "", v),
                ["apis", g] => discovery::api_group(&fx.registry, g),
                ["apis", g, v] => discovery::api_resource_list(&fx.registry, g, v),
                _ => None,
            };
            match found {
                Some(v) => send(&mut stream, &v),
                None => respond(&mut stream, 404, json_ct, b"{}"),
            }
        }
        _ => respond(&mut stream, 404, json_ct, b"{}"),
    }
}

/// Serves up to `max_conns` connections on a loopback port; returns the port.
fn serve(max_conns: usize) -> u16 {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut registry = Registry::builtin();
    let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object",
            "properties": {"spec": {"type": "object", "description": "Widget spec.", "properties": {"size": {"type": "integer", "description": "How big the widget is."}}}}}}}]}});
    assert!(registry.apply_crd(&crd).is_ok());
    let openapi = OpenApi::build(&registry);
    let fx = Arc::new(Fixture { registry, openapi });
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_conns).flatten() {
            handle(&fx, stream);
        }
    });
    port
}

fn kubectl_bin(minor: u32) -> Option<PathBuf> {
    let p = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"));
    p.exists().then_some(p)
}

fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    namespace: default\ncurrent-context: t\nusers: []\n"
    );
    if let Err(e) = std::fs::write(&path, cfg) {
        panic!("write kubeconfig: {e}");
    }
    path
}

/// Runs kubectl with a fresh cache; returns (exit ok, stdout, stderr).
fn kubectl(bin: &Path, dir: &Path, port: u16, args: &[&str]) -> (bool, String, String) {
    let cfg = kubeconfig(dir, port);
    let cache = dir.join(format!(
        "cache-{}",
        args.join("-").replace(['/', ' ', '='], "_")
    ));
    let out = Command::new(bin)
        .arg(format!("--kubeconfig={}", cfg.display()))
        .arg(format!("--cache-dir={}", cache.display()))
        .arg("--request-timeout=20s")
        .args(args)
        .output();
    match out {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => panic!("run kubectl: {e}"),
    }
}

#[test]
fn kubectl_reads_discovery_openapi_and_tables() {
    let Some(bin) = kubectl_bin(32) else {
        eprintln!("kubectl.1.32 not installed; skipping");
        return;
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let port = serve(200);

    let (ok, out, err) = kubectl(&bin, dir.path(), port, &["api-resources"]);
    assert!(ok, "api-resources: {err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(
        line("deployments"),
        Some(vec![
            "deployments",
            "deploy",
            "apps/v1",
            "true",
            "Deployment"
        ])
    );
    assert_eq!(
        line("namespaces"),
        Some(vec!["namespaces", "ns", "v1", "false", "Namespace"])
    );
    assert_eq!(
        line("widgets"),
        Some(vec!["widgets", "wd", "example.com/v1", "true", "Widget"])
    );
    assert_eq!(
        line("horizontalpodautoscalers"),
        Some(vec![
            "horizontalpodautoscalers",
            "hpa",
            "autoscaling/v2",
            "true",
            "HorizontalPodAutoscaler"
        ])
    );

    let (ok, out, err) = kubectl(&bin, dir.path(), port, &["explain", "pods.spec.containers"]);
    assert!(ok, "explain: {err}");
    assert!(
        out.contains("KIND:       Pod") || out.contains("KIND:     Pod"),
        "{out}"
    );
    assert!(out.contains("FIELD: containers <[]Container>"), "{out}");
    assert!(
        out.contains("List of containers belonging to the pod."),
        "{out}"
    );
    assert!(
        out.contains("image\t<string>")
            || out.contains("image <string>")
            || out.contains("image\t"),
        "{out}"
    );

    let (ok, out, err) = kubectl(
        &bin,
        dir.path(),
        port,
        &["explain", "deployment.spec.replicas"],
    );
    assert!(ok, "explain deployment: {err}");
    assert!(out.contains("GROUP:      apps"), "{out}");
    assert!(out.contains("FIELD: replicas <integer>"), "{out}");

    let (ok, out, err) = kubectl(&bin, dir.path(), port, &["explain", "widgets.spec.size"]);
    assert!(ok, "explain widget: {err}");
    assert!(out.contains("How big the widget is."), "{out}");

    let (ok, out, err) = kubectl(&bin, dir.path(), port, &["get", "pods"]);
    assert!(ok, "get pods: {err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows.first().cloned(),
        Some(vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"])
    );
    assert_eq!(
        rows.get(1).cloned(),
        Some(vec!["web-0", "1/1", "Running", "0", "5m"])
    );
    assert_eq!(
        rows.get(2).cloned(),
        Some(vec!["job-x", "0/1", "Pending", "0", "5m"])
    );

    let (ok, out, err) = kubectl(
        &bin,
        dir.path(),
        port,
        &["get", "pods", "-o", "wide", "--show-labels"],
    );
    assert!(ok, "get pods -o wide: {err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        vec![
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES",
            "LABELS"
        ]
    );
    assert!(
        out.contains("10.244.0.5") && out.contains("node-1") && out.contains("app=web"),
        "{out}"
    );

    let (ok, out, err) = kubectl(&bin, dir.path(), port, &["get", "pods", "-A"]);
    assert!(ok, "get pods -A: {err}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("default ")),
        "namespace from row.object: {out}"
    );
}

#[test]
fn old_kubectl_uses_v2beta1_discovery() {
    let Some(bin) = kubectl_bin(28) else {
        eprintln!("kubectl.1.28 not installed; skipping");
        return;
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let port = serve(100);
    let (ok, out, err) = kubectl(
        &bin,
        dir.path(),
        port,
        &["api-resources", "--api-group=apps"],
    );
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["statefulsets", "sts", "apps/v1", "true", "StatefulSet"]),
        "{out}"
    );
    let (ok, out, err) = kubectl(&bin, dir.path(), port, &["api-versions"]);
    assert!(ok, "{err}");
    for gv in [
        "v1",
        "apps/v1",
        "batch/v1",
        "example.com/v1",
        "rbac.authorization.k8s.io/v1",
    ] {
        assert!(out.lines().any(|l| l == gv), "{gv} in {out}");
    }
}
