//! End to end with the real kubectl against `kubeshard server` and the real `kubeshard
//! scheduler` process started with a KubeSchedulerConfiguration file: profiles selected by
//! `schedulerName` (a MostAllocated bin-packing profile next to the default one), the
//! `Scheduled` and `FailedScheduling` events as kubectl shows them (upstream's "0/N nodes are
//! available: ..." text), a pod unschedulable for lack of resources scheduled within a second
//! of a node being added, gated pods waiting until their gates are removed, and preemption
//! (the apiserver's Priority admission resolves `spec.priority` from `priorityClassName`; the
//! lower-priority victim is deleted, `nominatedNodeName` is set, and the preemptor binds
//! once the victim is gone).
//! The tests play the kubelet where one is needed (registering nodes with their capacity,
//! finishing a victim's deletion) through the admin plain-HTTP port.

#[path = "support/api_server.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{TestServer, wait_for_every as wait_for};

/// kubectl minor version the tests drive.
const K: u32 = 33;

/// Two profiles: the default one and a bin-packing one (MostAllocated, BalancedAllocation
/// off), as a user would write them.
const PROFILES: &str = "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: bin-packing
  plugins:
    score:
      disabled: [{name: NodeResourcesBalancedAllocation}]
      enabled: [{name: NodeResourcesFit, weight: 5}]
  pluginConfig:
  - name: NodeResourcesFit
    args: {scoringStrategy: {type: MostAllocated}}
";

/// The server plus a `kubeshard scheduler` process, both killed on drop.
struct Cluster {
    server: TestServer,
    sched: Option<Child>,
    metrics_port: u16,
}

/// A loopback port free at the time of the call.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

impl Cluster {
    /// The scheduler's `/metrics` text, or None while it does not answer.
    fn metrics(&self) -> Option<String> {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        sock.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// None when kubectl 1.33 is missing (the test is skipped).
    fn start() -> Option<Self> {
        let p = support::kubectl_path(K);
        if !p.exists() {
            eprintln!("skipping: {} is not installed", p.display());
            return None;
        }
        let server = TestServer::start(&[]);
        let config = server.dir.join("scheduler.yaml");
        std::fs::write(&config, PROFILES).expect("write profile file");
        let metrics_port = free_port();
        let sched = Command::new(env!("CARGO_BIN_EXE_kubeshard"))
            .arg("scheduler")
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .arg("--config")
            .arg(&config)
            .arg("--leader-elect=false")
            .arg("--metrics-bind-address")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kubeshard scheduler");
        Some(Cluster {
            metrics_port,
            server,
            sched: Some(sched),
        })
    }

    fn k(&self, args: &[&str]) -> String {
        self.server.ok(K, args)
    }

    fn apply(&self, yaml: &str) {
        self.server.ok_stdin(K, &["apply", "-f", "-"], yaml);
    }

    /// A request on the admin plain-HTTP port; (status, body).
    fn admin(&self, method: &str, path: &str, ctype: &str, body: &Value) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}{path}", self.server.insecure_port);
        let body = body.to_string();
        let mut args = vec!["-X", method];
        if method != "GET" {
            args.extend_from_slice(&["-H", ctype, "--data", &body]);
        }
        support::curl(&args, &url)
    }

    /// Registers a node with `cpu` allocatable as a kubelet does: one create carrying the
    /// capacity (one NodeAdd event), then the status again should the server have dropped it.
    fn add_node(&self, name: &str, cpu: &str) {
        let cap = json!({"cpu": cpu, "memory": "8Gi", "pods": "110"});
        let status = json!({"capacity": cap, "allocatable": cap,
            "conditions": [{"type": "Ready", "status": "True"}]});
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": status});
        let (code, out) = self.admin(
            "POST",
            "/api/v1/nodes",
            "Content-Type: application/json",
            &node,
        );
        assert_eq!(code, 201, "create node {name}: {out}");
        let created: Value = serde_json::from_str(&out).expect("node json");
        if created["status"]["allocatable"]["cpu"] != cpu {
            let (code, out) = self.admin(
                "PATCH",
                &format!("/api/v1/nodes/{name}/status"),
                "Content-Type: application/merge-patch+json",
                &json!({ "status": status }),
            );
            assert_eq!(code, 200, "node {name} status: {out}");
        }
    }

    /// A pod's JSON through the admin port (None when it does not exist).
    fn pod(&self, name: &str) -> Option<Value> {
        let (code, out) = self.admin(
            "GET",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            "",
            &Value::Null,
        );
        (code == 200).then(|| serde_json::from_str(&out).expect("pod json"))
    }

    /// The node a pod is bound to.
    fn node_of(&self, name: &str) -> Option<String> {
        self.pod(name)?["spec"]["nodeName"]
            .as_str()
            .map(str::to_string)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.sched.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pod_yaml(name: &str, cpu: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: \"{cpu}\"}}}}}}]
{extra_spec}"
    )
}

const POLL: Duration = Duration::from_millis(200);

#[test]
fn profiles_events_queueing_and_gates_through_kubectl() {
    let Some(c) = Cluster::start() else {
        return;
    };
    c.add_node("n1", "4");
    c.add_node("n2", "4");

    // The bin-packing profile (from the file) stacks its pods on one node; the default
    // profile spreads onto the emptiest node.
    let mut manifests = Vec::new();
    for i in 0..3 {
        manifests.push(pod_yaml(
            &format!("bp{i}"),
            "500m",
            "  schedulerName: bin-packing\n",
        ));
    }
    c.apply(&manifests.join("---\n"));
    let packed: Vec<String> = (0..3)
        .map(|i| {
            wait_for(&format!("bp{i} bound"), 60, POLL, || {
                c.node_of(&format!("bp{i}"))
            })
        })
        .collect();
    assert!(
        packed.iter().all(|n| *n == packed[0]),
        "MostAllocated stacks the bin-packing pods: {packed:?}"
    );
    let other = if packed[0] == "n1" { "n2" } else { "n1" };
    c.apply(&pod_yaml("spread", "500m", ""));
    let spread = wait_for("spread bound", 60, POLL, || c.node_of("spread"));
    assert_eq!(spread, other, "LeastAllocated picks the empty node");

    // A pod for a scheduler nobody runs stays pending and gets no events from us.
    c.apply(&pod_yaml(
        "foreign",
        "100m",
        "  schedulerName: someone-else\n",
    ));
    // A gated pod waits.
    c.apply(&pod_yaml(
        "gated",
        "100m",
        "  schedulingGates: [{name: example.com/quota}]\n",
    ));
    // A pod that fits nowhere: FailedScheduling with upstream's text.
    c.apply(&pod_yaml("huge", "8", ""));
    let want = "0/2 nodes are available: 2 Insufficient cpu.";
    let events = wait_for("FailedScheduling event for huge", 60, POLL, || {
        let t = c.k(&["get", "events", "-n", "default"]);
        t.lines()
            .any(|l| l.contains("FailedScheduling") && l.contains("pod/huge") && l.contains(want))
            .then_some(t)
    });
    for p in ["bp0", "bp1", "bp2", "spread"] {
        let node = c.node_of(p).expect("bound");
        let msg = format!("Successfully assigned default/{p} to {node}");
        assert!(
            events
                .lines()
                .any(|l| l.contains("Normal") && l.contains("Scheduled") && l.contains(&msg)),
            "no Scheduled event for {p}:\n{events}"
        );
    }
    let described = c.k(&["describe", "pod", "huge"]);
    assert!(
        described
            .lines()
            .any(|l| l.contains("Warning") && l.contains("FailedScheduling") && l.contains(want)),
        "{described}"
    );
    let huge = c.pod("huge").expect("huge");
    let cond = huge["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
        .cloned()
        .expect("PodScheduled condition");
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("False"), Some("Unschedulable"))
    );

    // Queueing: the unschedulable pod is scheduled within a second of a node that fits it
    // being added (the NodeAdd/NodeUpdate event moves it out of the unschedulable queue).
    // Wait past the first attempt's backoff (1 s) so only the event can explain a fast bind.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.node_of("huge"), None);
    c.add_node("big", "16");
    let added = Instant::now();
    let node = wait_for(
        "huge bound after the node was added",
        30,
        Duration::from_millis(20),
        || c.node_of("huge"),
    );
    let took = added.elapsed();
    assert_eq!(node, "big");
    assert!(
        took <= Duration::from_secs(1),
        "bound {took:?} after the node was added"
    );

    // The gated and the foreign pod are still pending; the gated one has no node even though
    // three nodes have room.
    assert_eq!(c.node_of("gated"), None);
    assert_eq!(c.node_of("foreign"), None);
    let table = c.k(&["get", "pod", "foreign", "gated"]);
    assert!(
        table
            .lines()
            .filter(|l| l.contains("Pending") || l.contains("SchedulingGated"))
            .count()
            == 2,
        "{table}"
    );
    let foreign_events = c.k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=foreign",
        "-o",
        "name",
    ]);
    assert!(foreign_events.trim().is_empty(), "{foreign_events}");
    // Removing the gate releases it.
    c.k(&[
        "patch",
        "pod",
        "gated",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/schedulingGates"}]"#,
    ]);
    wait_for("gated bound once its gate is removed", 30, POLL, || {
        c.node_of("gated")
    });
    // /metrics counts the attempts by result and the queues.
    let text = wait_for("scheduled attempts in /metrics", 30, POLL, || {
        c.metrics().filter(|t| {
            t.lines().any(|l| {
                l.strip_prefix("scheduler_schedule_attempts_total{result=\"scheduled\"} ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .is_some_and(|n| n >= 3)
            })
        })
    });
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("scheduler_pending_pods{queue=\"active\"}"),
        "{text}"
    );
}

#[test]
fn preemption_through_kubectl() {
    let Some(c) = Cluster::start() else {
        return;
    };
    c.add_node("n1", "2");
    c.apply(
        "apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: low}
value: 10
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
",
    );
    // Priority admission resolved the classes into spec.priority, which the scheduler uses.
    c.apply(&pod_yaml("victim", "2", "  priorityClassName: low\n"));
    wait_for("victim bound", 60, POLL, || c.node_of("victim"));
    let victim = c.pod("victim").expect("victim");
    assert_eq!(victim["spec"]["priority"], 10, "{victim}");
    c.apply(&pod_yaml("keep", "0", "  priorityClassName: high\n"));
    wait_for("keep bound", 60, POLL, || c.node_of("keep"));
    c.apply(&pod_yaml("preemptor", "2", "  priorityClassName: high\n"));
    // The preemptor is nominated to n1 and the victim (not the higher-priority pod) is
    // deleted; the test finishes the deletion as the kubelet would.
    let nominated = wait_for("nominatedNodeName", 60, POLL, || {
        let p = c.pod("preemptor")?;
        p["status"]["nominatedNodeName"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(nominated, "n1");
    wait_for("victim deleted", 60, POLL, || match c.pod("victim") {
        None => Some(()),
        Some(v) if !v["metadata"]["deletionTimestamp"].is_null() => {
            c.k(&["delete", "pod", "victim", "--force", "--grace-period=0"]);
            Some(())
        }
        Some(_) => None,
    });
    assert!(
        c.pod("keep")
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_null())
    );
    let node = wait_for("preemptor bound", 60, POLL, || c.node_of("preemptor"));
    assert_eq!(node, "n1");
    let events = c.k(&["get", "events", "-n", "default"]);
    assert!(
        events
            .lines()
            .any(|l| l.contains("pod/victim") && l.contains("Preempted")),
        "{events}"
    );
    assert!(
        events
            .lines()
            .any(|l| l.contains("pod/preemptor") && l.contains("FailedScheduling")),
        "{events}"
    );
}
