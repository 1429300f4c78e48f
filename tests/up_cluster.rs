//! `kubeshard up` as a user meets it: the real binary, the real kubectl, real pods.
//!
//! - Control plane: the controller-manager creates the `default` ServiceAccount and turns a
//!   Deployment into a ReplicaSet and pods.
//! - As root, the whole single-machine cluster: the local node registers and turns Ready;
//!   `kubectl run` runs a real process (an image imported with `kubeshard image import`) that
//!   resolves `kubernetes.default` through the cluster DNS at 10.96.0.10; a Deployment's pods
//!   get addresses from the node's podCIDR and are reached through their Service's ClusterIP
//!   from another pod; the host resolves through the kube-dns VIP too.
//! - `kubectl logs` and `kubectl exec` reach the pods through the apiserver and the kubelet.
//! - SIGTERM stops everything cleanly.

#[path = "support/api_server.rs"]
mod support;

#[path = "../node/tests/common/mod.rs"]
mod images;

use std::path::{Path, PathBuf};
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
    nix::unistd::Uid::effective().is_root()
}

/// Pods outlive `kubeshard up` on purpose (a restarted node adopts them); a test must not
/// leave them behind: kills every process started from `dir` and unmounts what is under it.
struct PodReaper(PathBuf);

impl Drop for PodReaper {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().to_string();
        for _ in 0..3 {
            let Ok(procs) = std::fs::read_dir("/proc") else {
                return;
            };
            let mut killed = 0;
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&needle) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed += 1;
                }
            }
            if killed == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&needle))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for m in points {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn kubectl_json(s: &TestServer, args: &[&str]) -> serde_json::Value {
    let out = s.ok(KUBECTL_MINOR, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// Waits until pod `name` reaches phase `want` (Succeeded/Failed/Running); returns the pod.
fn wait_phase(s: &TestServer, name: &str, want: &str, limit: Duration) -> serde_json::Value {
    eventually(limit, &format!("pod {name} {want}"), || {
        let out = s.kubectl(KUBECTL_MINOR, &["get", "pod", name, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        assert!(
            !(phase == "Failed" && want != "Failed"),
            "pod {name} failed: {}",
            pod["status"]
        );
        (phase == want).then_some(pod)
    })
}

fn import_busybox(dir: &Path) {
    let layout = images::oci_layout(
        &dir.join("busybox-layout"),
        "busybox:1.36",
        &[images::busybox_layer()],
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"}),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kubeshard"))
        .args(["image", "import"])
        .arg(&layout)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("kubeshard image import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("docker.io/library/busybox:1.36"));
}

#[test]
fn up_runs_the_control_plane_and_cluster_dns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = PodReaper(tmp.path().to_path_buf());
    let node = is_root() && images::can_run_as_root("up_cluster");
    if node {
        import_busybox(tmp.path());
    }
    let mut s = TestServer::start_command_in("up", tmp.path(), &[]);
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

    // A Deployment becomes a ReplicaSet with its pods.
    s.ok(
        KUBECTL_MINOR,
        &[
            "create",
            "deployment",
            "web",
            "--image=busybox:1.36",
            "--replicas=2",
            "--port=8080",
            "--",
            "sh",
            "-c",
            "echo ok > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
        ],
    );
    eventually(Duration::from_secs(30), "the Deployment's pods", || {
        let pods = s.ok(
            KUBECTL_MINOR,
            &["get", "pods", "-l", "app=web", "-o", "name"],
        );
        (pods.lines().count() == 2).then_some(())
    });

    if !node {
        assert!(s.stop(), "kubeshard up did not exit cleanly on SIGTERM");
        return;
    }

    // The local node registers and is Ready.
    eventually(Duration::from_secs(60), "a Ready node", || {
        let nodes = kubectl_json(&s, &["get", "nodes", "-o", "json"]);
        let ready = nodes["items"].as_array()?.iter().any(|n| {
            n["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        });
        ready.then_some(())
    });

    // The cluster DNS answers on the host through the kube-dns VIP (proxy -> DNS server).
    let ip = s.ok(
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
    assert_eq!(ip, "10.96.0.10");
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

    // `kubectl run`: a real process in a pod resolves a Service name through cluster DNS
    // (its resolv.conf points at 10.96.0.10); the exit code carries the check.
    s.ok(
        KUBECTL_MINOR,
        &[
            "run",
            "resolver",
            "--image=busybox:1.36",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "grep -q 'nameserver 10.96.0.10' /etc/resolv.conf && \
             nslookup kubernetes.default.svc.cluster.local | tee /dev/stderr | \
             grep -q 'Address: 10.96.0.1$'",
        ],
    );
    let pod = wait_phase(&s, "resolver", "Succeeded", Duration::from_secs(60));
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    // Its output through the apiserver and the kubelet's API.
    let logs = s.ok(KUBECTL_MINOR, &["logs", "resolver"]);
    assert!(
        logs.contains("Name:\tkubernetes.default.svc.cluster.local")
            || logs.contains("Name:     kubernetes.default.svc.cluster.local")
            || logs.contains("kubernetes.default.svc.cluster.local"),
        "{logs}"
    );

    // The Deployment's pods run with addresses from the node's podCIDR.
    let pod_ips = eventually(Duration::from_secs(60), "2 running web pods", || {
        let pods = kubectl_json(&s, &["get", "pods", "-l", "app=web", "-o", "json"]);
        let ips: Vec<String> = pods["items"]
            .as_array()?
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
            .collect();
        (ips.len() == 2).then_some(ips)
    });
    for ip in &pod_ips {
        assert!(ip.starts_with("10.244."), "{pod_ips:?}");
    }
    assert_ne!(pod_ips[0], pod_ips[1]);

    // kubectl exec runs a process inside a running pod's container.
    let web_pod = s.ok(
        KUBECTL_MINOR,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    let out = s.ok(
        KUBECTL_MINOR,
        &["exec", &web_pod, "--", "cat", "/tmp/index.html"],
    );
    assert_eq!(out.trim(), "ok");

    // A Service in front of them, reached by its ClusterIP from another pod through the proxy.
    s.ok(
        KUBECTL_MINOR,
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8080",
        ],
    );
    let cluster_ip = s.ok(
        KUBECTL_MINOR,
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
    );
    eventually(Duration::from_secs(30), "the web EndpointSlice", || {
        let out = s.ok(
            KUBECTL_MINOR,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[0]}",
            ],
        );
        (out.split_whitespace().count() == 2).then_some(())
    });
    // Retried for up to 10 s: the proxy programs a new Service asynchronously, as upstream's.
    let script = format!(
        "i=0; while [ $i -lt 40 ]; do \
           printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc {cluster_ip} 80 | grep -q '^ok' && exit 0; \
           i=$((i+1)); sleep 0.25; done; exit 1"
    );
    s.ok(
        KUBECTL_MINOR,
        &[
            "run",
            "client",
            "--image=busybox:1.36",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    wait_phase(&s, "client", "Succeeded", Duration::from_secs(60));

    // Deleting the Deployment removes its pods (graceful deletion through the kubelet).
    s.ok(
        KUBECTL_MINOR,
        &["delete", "deployment", "web", "--wait=false"],
    );
    s.ok(
        KUBECTL_MINOR,
        &["delete", "pod", "resolver", "client", "--wait=false"],
    );
    eventually(Duration::from_secs(90), "every pod gone", || {
        let pods = s.ok(KUBECTL_MINOR, &["get", "pods", "-o", "name"]);
        pods.trim().is_empty().then_some(())
    });

    assert!(s.stop(), "kubeshard up did not exit cleanly on SIGTERM");
}
