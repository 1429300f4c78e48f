//! Kubelet features end to end, as root, against a real (in-process) apiserver: Service
//! environment variables, hostNetwork pods (host namespaces, hostPort, DNS policy), the
//! kubelet's Events (seen by `kubectl describe`), and sidecar init containers.

mod kubelet_common;

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

use api::client::{Api, ListParams, PostParams};
use k8s_openapi::api::core::v1::{Event, Service};
use kubelet_common::*;
use serde_json::json;

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

async fn events_of(client: &api::client::Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Waits until pod `name` has an Event with `reason` (and `count >= min_count`).
async fn wait_event(
    client: &api::client::Client,
    name: &str,
    reason: &str,
    min_count: i32,
) -> Event {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let evs = events_of(client, "default", name).await;
        if let Some(e) = evs
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason) && e.count.unwrap_or(0) >= min_count)
        {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event (count >= {min_count}) for {name}; have: {:?}",
            evs.iter()
                .map(|e| (e.reason.clone(), e.count, e.message.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn service_env_host_network_events_and_sidecars() {
    let Some(dir) = NodeDir::new("service_env_host_network_events_and_sidecars") else {
        return;
    };
    let server = Server::start();
    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    rt().block_on(async {
        let client = server.client();
        let n = "node-f";
        // Services first: the kubelet reads them from its informer when containers start.
        let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "redis-master"},
            "spec": {"clusterIP": "10.96.0.11", "ports": [
                {"name": "redis", "port": 6379, "protocol": "TCP"},
                {"name": "metrics", "port": 9121, "protocol": "UDP"}]}}))
        .unwrap();
        svcs.create(&PostParams::default(), &svc).await.unwrap();
        let k = RunningKubelet::start(dir.config(n, Some(&server.kubeconfig)));

        // Service variables, the master service's, and the pod's own winning.
        create(&client, &pod(n, json!({"metadata": {"name": "svcenv", "namespace": "default"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": IMAGE,
                "command": ["sh", "-c", "env | sort; test \"$REDIS_MASTER_SERVICE_HOST $REDIS_MASTER_SERVICE_PORT $REDIS_MASTER_SERVICE_PORT_METRICS $REDIS_MASTER_SERVICE_PORT_REDIS $REDIS_MASTER_PORT $REDIS_MASTER_PORT_9121_UDP_ADDR $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT $KUBERNETES_PORT $URL\" = \"10.96.0.11 6379 9121 6379 tcp://10.96.0.11:6379 10.96.0.11 10.96.0.1 443 mine https://10.96.0.1:443\""],
                "env": [{"name": "KUBERNETES_PORT", "value": "mine"},
                        {"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"}]}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "nolinks", "namespace": "default"},
            "spec": {"restartPolicy": "Never", "enableServiceLinks": false, "containers": [{"name": "c", "image": IMAGE,
                "command": ["sh", "-c", "env | sort; test -z \"$REDIS_MASTER_SERVICE_HOST\" && test \"$KUBERNETES_SERVICE_HOST\" = 10.96.0.1"]}]}}))).await;

        // hostNetwork: the host's network and UTS namespaces; ClusterFirstWithHostNet DNS;
        // a hostPort served straight from the host's network.
        let check = format!(
            "test \"$(readlink /proc/self/ns/net)\" = '{}' && test \"$(hostname)\" = '{host_name}' && grep -q 'nameserver 10.96.0.10' /etc/resolv.conf",
            host_netns.display()
        );
        create(&client, &pod(n, json!({"metadata": {"name": "hostnet", "namespace": "default"},
            "spec": {"restartPolicy": "Never", "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet",
                "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", check]}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "hostport", "namespace": "default"},
            "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": IMAGE,
                    "command": ["sh", "-c", format!("while true; do echo hello-from-hostnet | nc -l -p {port}; done")],
                    "ports": [{"containerPort": port, "hostPort": port}]}]}}))).await;

        // Events: a crash loop (BackOff, counted) and a failing readiness probe (Unhealthy).
        create(&client, &sh_pod(n, "crash", "exit 1", "Always")).await;
        create(&client, &pod(n, json!({"metadata": {"name": "unready", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": IMAGE,
                "command": ["sleep", "3600"],
                "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1}}]}}))).await;

        // Sidecars: started in order (i2 sees the sidecar's file), kept running while the
        // main container runs, restarted after a crash, stopped after the main container.
        create(&client, &pod(n, json!({"metadata": {"name": "sidecar", "namespace": "default"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                "volumes": [{"name": "s", "emptyDir": {}}],
                "initContainers": [
                    {"name": "i1", "image": IMAGE, "command": ["sh", "-c", "echo i1 > /s/order"],
                     "volumeMounts": [{"name": "s", "mountPath": "/s"}]},
                    {"name": "sc", "image": IMAGE, "restartPolicy": "Always",
                     "command": ["sh", "-c", "echo sc >> /s/order; if [ ! -f /s/crashed ]; then touch /s/crashed; exit 1; fi; trap 'exit 0' TERM; while true; do date +%s > /s/alive; sleep 0.2; done"],
                     "volumeMounts": [{"name": "s", "mountPath": "/s"}]},
                    {"name": "i2", "image": IMAGE, "command": ["sh", "-c", "echo i2 >> /s/order"],
                     "volumeMounts": [{"name": "s", "mountPath": "/s"}]}],
                "containers": [{"name": "main", "image": IMAGE, "volumeMounts": [{"name": "s", "mountPath": "/s"}],
                    "command": ["sh", "-c", "sleep 3; cat /s/order; test -f /s/alive && test \"$(($(date +%s) - $(cat /s/alive)))\" -le 1"]}]}}))).await;

        for name in ["svcenv", "nolinks", "hostnet"] {
            let p = wait_pod(&client, name, 60, "Succeeded", |p| {
                matches!(phase(p), "Succeeded" | "Failed").then(|| p.clone())
            })
            .await;
            assert_eq!(phase(&p), "Succeeded", "{name}: {:?}", p.status);
        }
        let hp = wait_pod(&client, "hostport", 60, "Running", |p| {
            (phase(p) == "Running").then(|| p.clone())
        })
        .await;
        let st = hp.status.clone().unwrap();
        assert_eq!(st.pod_ip.as_deref(), Some("127.0.0.1"), "hostNetwork pod IP is the host's");
        assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            let r = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut b = String::new();
                s.read_to_string(&mut b).map(|_| b)
            });
            match r {
                Ok(b) if b.contains("hello-from-hostnet") => break b,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => panic!("hostPort {port} of the hostNetwork pod: {other:?}"),
            }
        };
        assert!(got.contains("hello-from-hostnet"));

        // Sidecar pod.
        let p = wait_pod(&client, "sidecar", 90, "Succeeded", |p| {
            matches!(phase(p), "Succeeded" | "Failed").then(|| p.clone())
        })
        .await;
        assert_eq!(phase(&p), "Succeeded", "{:?}", p.status);
        let sc = cstatus(&p, "sc").unwrap();
        assert!(sc["restartCount"].as_i64().unwrap() >= 1, "sidecar restarted: {sc}");
        assert!(sc["state"]["terminated"].is_object(), "sidecar stopped: {sc}");
        let main = cstatus(&p, "main").unwrap();
        assert_eq!(main["state"]["terminated"]["exitCode"], 0, "{main}");
        let t = |v: &serde_json::Value, k: &str| {
            chrono::DateTime::parse_from_rfc3339(v["state"]["terminated"][k].as_str().unwrap()).unwrap()
        };
        assert!(t(&sc, "finishedAt") >= t(&main, "finishedAt"), "sidecar stopped after main: {sc} {main}");
        assert!(t(&cstatus(&p, "i2").unwrap(), "startedAt") >= t(&sc, "startedAt") - chrono::Duration::seconds(30));

        // Events.
        for reason in ["Pulled", "Created", "Started"] {
            let e = wait_event(&client, "svcenv", reason, 1).await;
            assert_eq!(e.source.as_ref().and_then(|s| s.component.as_deref()), Some("kubelet"));
            assert_eq!(e.source.as_ref().and_then(|s| s.host.as_deref()), Some(n));
            assert_eq!(e.involved_object.kind.as_deref(), Some("Pod"));
            assert_eq!(e.involved_object.field_path.as_deref(), Some("spec.containers{c}"));
            assert!(e.involved_object.uid.is_some());
        }
        let backoff = wait_event(&client, "crash", "BackOff", 2).await;
        assert_eq!(backoff.type_.as_deref(), Some("Warning"));
        assert!(backoff.message.as_deref().unwrap_or("").starts_with("Back-off restarting failed container c"));
        let unhealthy = wait_event(&client, "unready", "Unhealthy", 2).await;
        assert!(unhealthy.message.as_deref().unwrap_or("").starts_with("Readiness probe failed"), "{unhealthy:?}");
        // One Event object per repeated event, not one per occurrence.
        let n_unhealthy = events_of(&client, "default", "unready")
            .await
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Unhealthy"))
            .count();
        assert_eq!(n_unhealthy, 1);
        assert!(wait_event(&client, "sidecar", "Killing", 1).await.message.unwrap().contains("sc"));
        // Node events, in `default`.
        let node_events = events_of(&client, "default", n).await;
        let reasons: Vec<_> = node_events.iter().filter_map(|e| e.reason.clone()).collect();
        for r in ["Starting", "NodeReady", "NodeHasSufficientPID"] {
            assert!(reasons.iter().any(|x| x == r), "{r} in {reasons:?}");
        }
        // kubectl describe shows them.
        if Path::new(KUBECTL).exists() {
            let out = std::process::Command::new(KUBECTL)
                .arg("--kubeconfig")
                .arg(&server.kubeconfig)
                .args(["describe", "pod", "crash"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
            assert!(text.contains("Events:"), "{text}");
            assert!(text.contains("BackOff") && text.contains("kubelet"), "{text}");
            assert!(text.contains("Started"), "{text}");
        }
        k.stop().await;
    });
    drop(dir);
}

fn kubectl_raw(kubeconfig: &Path, path: &str) -> serde_json::Value {
    let out = std::process::Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stats_summary_and_eviction_under_pressure() {
    let Some(dir) = NodeDir::new("stats_summary_and_eviction_under_pressure") else {
        return;
    };
    if !Path::new(KUBECTL).exists() {
        eprintln!("SKIP stats_summary_and_eviction_under_pressure: no kubectl 1.33");
        return;
    }
    let server = Server::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    rt().block_on(async {
        let client = server.client();
        let n = "node-e";
        let mut cfg = dir.config(n, Some(&server.kubeconfig));
        cfg.kubelet_port = port;
        // The machine is not under pressure with thresholds this low.
        cfg.eviction_hard = node::kubelet::eviction::parse_eviction_hard("memory.available<1Mi").unwrap();
        cfg.eviction_interval = Duration::from_millis(500);
        let k = RunningKubelet::start(cfg);
        create(&client, &pod(n, json!({"metadata": {"name": "busy", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": IMAGE,
                "command": ["sh", "-c", "while true; do :; done"],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "be", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [{"name": "c", "image": IMAGE,
                "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/f bs=1024 count=2048; sleep 3600"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}}))).await;
        for p in ["busy", "be"] {
            wait_pod(&client, p, 60, "Running", |p| (phase(p) == "Running").then_some(())).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let path = format!("/api/v1/nodes/{n}/proxy/stats/summary");
        let kc = server.kubeconfig.clone();
        let first = tokio::task::spawn_blocking({
            let (kc, path) = (kc.clone(), path.clone());
            move || kubectl_raw(&kc, &path)
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = tokio::task::spawn_blocking(move || kubectl_raw(&kc, &path)).await.unwrap();
        assert_eq!(s["node"]["nodeName"], n);
        assert!(s["node"]["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0, "{s}");
        assert!(s["node"]["cpu"]["usageNanoCores"].as_u64().is_some(), "{s}");
        assert!(s["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
        assert!(s["node"]["fs"]["capacityBytes"].as_u64().unwrap() > 0);
        let pod_of = |s: &serde_json::Value, name: &str| {
            s["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["name"] == name).cloned()
                .unwrap_or_else(|| panic!("no {name} in {s}"))
        };
        let _ = pod_of(&first, "busy");
        let busy = pod_of(&s, "busy");
        let c = &busy["containers"][0];
        assert_eq!(c["name"], "c");
        // A busy loop under a 100m limit: between a few and about 100 millicores.
        let cores = c["cpu"]["usageNanoCores"].as_u64().unwrap();
        assert!(cores > 5_000_000 && cores < 300_000_000, "usageNanoCores {cores}");
        assert!(c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0);
        assert!(c["memory"]["workingSetBytes"].as_u64().unwrap() > 0, "{c}");
        assert!(busy["memory"]["usageBytes"].as_u64().unwrap() > 0, "{busy}");
        assert!(c["logs"]["capacityBytes"].as_u64().unwrap() > 0);
        let be = pod_of(&s, "be");
        let vol = be["volume"].as_array().unwrap().iter().find(|v| v["name"] == "scratch").cloned().unwrap();
        assert!(vol["usedBytes"].as_u64().unwrap() >= 2 << 20, "{vol}");
        assert!(be["ephemeral-storage"]["usedBytes"].as_u64().unwrap() >= 2 << 20, "{be}");
        k.stop().await;

        // Now with a threshold the machine crosses: pressure, taint, evictions in rank order.
        let mut cfg = dir.config(n, Some(&server.kubeconfig));
        cfg.eviction_hard = node::kubelet::eviction::parse_eviction_hard("memory.available<1024Ti").unwrap();
        cfg.eviction_interval = Duration::from_millis(1500);
        let k = RunningKubelet::start(cfg);
        let be = wait_pod(&client, "be", 30, "evicted", |p| (phase(p) == "Failed").then(|| p.clone())).await;
        let st = be.status.clone().unwrap();
        assert_eq!(st.reason.as_deref(), Some("Evicted"));
        let msg = st.message.unwrap_or_default();
        assert!(msg.starts_with("The node was low on resource: memory. Threshold quantity: 1Pi"), "{msg}");
        // The Guaranteed pod within its requests goes second (passes are 1.5 s apart, so the
        // second-precision finish times tell the order).
        let b = wait_pod(&client, "busy", 30, "evicted", |p| (phase(p) == "Failed").then(|| p.clone())).await;
        let finished = |p: &k8s_openapi::api::core::v1::Pod| {
            let cs = cstatus(p, "c").unwrap();
            chrono::DateTime::parse_from_rfc3339(cs["state"]["terminated"]["finishedAt"].as_str().unwrap()).unwrap()
        };
        assert!(finished(&be) < finished(&b), "the BestEffort pod was evicted first");
        assert_eq!(b.status.as_ref().unwrap().reason.as_deref(), Some("Evicted"));
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let node = nodes.get(n).await.unwrap();
            let cond = node.status.as_ref().and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "MemoryPressure").map(|c| c.status.clone()));
            let taint = node.spec.as_ref().and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/memory-pressure" && t.effect == "NoSchedule"));
            if cond.as_deref() == Some("True") && taint {
                break;
            }
            assert!(Instant::now() < deadline, "MemoryPressure {cond:?}, taint {taint}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let e = wait_event(&client, "be", "Evicted", 1).await;
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        k.stop().await;
    });
    drop(dir);
}
