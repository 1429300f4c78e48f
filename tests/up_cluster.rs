//! `kubeshard up` as a user meets it: the real binary, the real kubectl. The components run:
//! the controller-manager creates the `default` ServiceAccount and turns a Deployment into a
//! ReplicaSet and pods; as root, the cluster DNS answers through the `kube-dns` Service VIP
//! (10.96.0.10, forwarded by the proxy) with the `kubernetes` Service's address; SIGTERM stops
//! everything cleanly.

#[path = "support/api_server.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::TestServer;

const KUBECTL_MINOR: u32 = 33;

/// Polls `f` every 200 ms until it returns Some, for at most `limit`.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[test]
fn up_runs_the_control_plane_and_cluster_dns() {
    let mut s = TestServer::start_up(&[]);
    let namespaces = s.ok(KUBECTL_MINOR, &["get", "namespaces", "-o", "name"]);
    assert!(namespaces.contains("namespace/kube-system"), "{namespaces}");

    // The controller-manager runs: the ServiceAccount controller fills every namespace.
    eventually(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || {
            let out = s.kubectl(
                KUBECTL_MINOR,
                &["get", "serviceaccount", "default", "-o", "name"],
            );
            out.status.success().then_some(())
        },
    );

    // A Deployment becomes a ReplicaSet with its pods (Pending until a node runs them).
    s.ok(
        KUBECTL_MINOR,
        &[
            "create",
            "deployment",
            "web",
            "--image=busybox",
            "--replicas=2",
        ],
    );
    eventually(Duration::from_secs(30), "the Deployment's pods", || {
        let pods = s.ok(
            KUBECTL_MINOR,
            &["get", "pods", "-l", "app=web", "-o", "name"],
        );
        (pods.lines().count() == 2).then_some(())
    });

    if is_root() {
        let ip = eventually(Duration::from_secs(30), "the kube-dns Service", || {
            let out = s.kubectl(
                KUBECTL_MINOR,
                &[
                    "-n",
                    "kube-system",
                    "get",
                    "service",
                    "kube-dns",
                    "-o",
                    "jsonpath={.spec.clusterIP}",
                ],
            );
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).to_string())
        });
        assert_eq!(ip, "10.96.0.10");
        // The query goes to the VIP, through the proxy, to the DNS server on the node address.
        let answer = eventually(
            Duration::from_secs(30),
            "a DNS answer through the VIP",
            || {
                let out = Command::new("dig")
                    .args([
                        "@10.96.0.10",
                        "+time=2",
                        "+tries=1",
                        "+short",
                        "kubernetes.default.svc.cluster.local",
                    ])
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                (out.status.success() && !text.is_empty() && !text.starts_with(';')).then_some(text)
            },
        );
        assert_eq!(answer, "10.96.0.1");
    }

    assert!(s.stop(), "kubeshard up did not exit cleanly on SIGTERM");
}
