//! `kubeshard server --etcd-servers URL` against the real etcd (Debian `etcd-server`): the
//! real kubectl creates, reads, watches and deletes through kubeshard, the objects live in
//! etcd (etcdctl sees them), and a second server with a fresh data dir serves them too.

#[path = "support/api_server.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use store::conformance::etcd_process::{EtcdProcess, etcd_binary};
use support::{KubectlStream, TestServer, kubectl_path};

const K: u32 = 33;

fn etcdctl_keys(url: &str, prefix: &str) -> Vec<String> {
    let out = Command::new("/usr/bin/etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={url}"),
            "--command-timeout=10s",
            "get",
            "--prefix",
            "--keys-only",
            prefix,
        ])
        .output()
        .expect("etcdctl");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn kubectl_over_etcd() {
    if etcd_binary().is_none() || !kubectl_path(K).exists() {
        eprintln!("\n*** SKIPPED: needs /usr/bin/etcd (etcd-server) and kubectl 1.{K} ***\n");
        return;
    }
    let etcd = EtcdProcess::start(&[]).expect("start etcd");
    let url = etcd.client_url().to_string();
    let s = TestServer::start(&["--etcd-servers", &url]);

    // Bootstrap wrote the default namespaces into etcd.
    let ns = etcdctl_keys(&url, "/registry/core/namespaces/");
    assert!(
        ns.iter()
            .any(|k| k == "/registry/core/namespaces/kube-system"),
        "{ns:?}"
    );

    // A watch from kubectl, started before the writes.
    let w = KubectlStream::start(
        &s,
        K,
        &[
            "get",
            "configmaps",
            "-n",
            "demo",
            "-w",
            "--output-watch-events",
        ],
    );

    assert_eq!(
        s.ok(K, &["create", "namespace", "demo"]).trim(),
        "namespace/demo created"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        s.ok(
            K,
            &[
                "create",
                "configmap",
                "c1",
                "-n",
                "demo",
                "--from-literal=a=b"
            ]
        )
        .trim(),
        "configmap/c1 created"
    );
    let e = s.err(K, &["create", "configmap", "c1", "-n", "demo"]);
    assert!(e.contains("configmaps \"c1\" already exists"), "{e}");
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(K, &["get", "configmap", "c1", "-n", "demo", "-o", "json"]))
            .expect("json");
    assert_eq!(json["data"]["a"], "b");
    let rv: u64 = json["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("resourceVersion");
    assert!(rv > 0);
    s.ok(K, &["label", "configmap", "c1", "-n", "demo", "x=y"]);
    let l = s.ok(K, &["get", "cm", "-n", "demo", "-l", "x=y", "-o", "name"]);
    assert_eq!(l.trim(), "configmap/c1");
    assert_eq!(
        etcdctl_keys(&url, "/registry/core/configmaps/demo/"),
        vec!["/registry/core/configmaps/demo/c1".to_string()]
    );
    assert_eq!(
        s.ok(K, &["delete", "configmap", "c1", "-n", "demo"]).trim(),
        "configmap \"c1\" deleted"
    );
    assert!(etcdctl_keys(&url, "/registry/core/configmaps/demo/").is_empty());

    // The watch saw the three changes, in order.
    let seen = w.lines_with("c1", 3, Duration::from_secs(30));
    drop(w);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].starts_with("ADDED"), "{seen:?}");
    assert!(seen[1].starts_with("MODIFIED"), "{seen:?}");
    assert!(seen[2].starts_with("DELETED"), "{seen:?}");

    // A second apiserver (fresh data dir, own PKI) over the same etcd sees the same objects.
    s.ok(K, &["create", "configmap", "kept", "-n", "demo"]);
    let s2 = TestServer::start(&["--etcd-servers", &url]);
    let g = s2.ok(K, &["get", "configmaps", "-n", "demo", "-o", "name"]);
    assert_eq!(g.trim(), "configmap/kept");
    drop(s2);
    drop(s);
    drop(etcd);
}

#[test]
fn server_refuses_to_start_without_etcd() {
    // Nothing listens on this port: start must fail with a clear message, not hang.
    let port = store::conformance::etcd_process::free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kubeshard"))
        .args(["server", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .args(["--etcd-servers", &format!("http://127.0.0.1:{port}")])
        .env("RUST_LOG", "error")
        .output()
        .expect("run kubeshard");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not answer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
}
