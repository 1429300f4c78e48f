//! The kubelet with the pod network on (as root): pods get addresses from the podCIDR on a
//! bridge of their own, a tcpSocket readiness probe gates the Ready condition, and a failing
//! liveness probe restarts the container.

mod kubelet_common;

use std::time::{Duration, Instant};

use api::client::{Api, DeleteParams};
use k8s_openapi::api::core::v1::Pod;
use kubelet_common::*;
use serde_json::json;

struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

#[test]
fn pod_network_probes_gate_ready_and_restart() {
    let Some(dir) = NodeDir::new("pod_network_probes_gate_ready_and_restart") else {
        return;
    };
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP pod_network_probes_gate_ready_and_restart: nft missing");
        return;
    }
    let bridge = Bridge(format!(
        "kst{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let server = Server::start();
    rt().block_on(async {
        let client = server.client();
        let n = "node-net";
        let mut cfg = dir.config(n, Some(&server.kubeconfig));
        cfg.pod_network = true;
        cfg.bridge = bridge.0.clone();
        cfg.pod_cidr = Some("10.244.251.0/24".into());
        let k = RunningKubelet::start(cfg);
        create(&client, &pod(n, json!({"metadata": {"name": "ready", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": IMAGE,
                "command": ["sh", "-c", "sleep 3; while true; do echo ok | nc -l -p 8080; done"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "live", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": IMAGE,
                "command": ["sleep", "3600"],
                "livenessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2}}]}}))).await;

        // Running but not Ready while nothing listens; Ready once the probe passes.
        let p = wait_pod(&client, "ready", 60, "Running", |p| (phase(p) == "Running").then(|| p.clone())).await;
        let ip = p.status.as_ref().unwrap().pod_ip.clone().expect("a pod IP");
        assert!(ip.starts_with("10.244.251."), "{ip}");
        let not_ready_seen = condition(&p, "Ready").as_deref() == Some("False");
        wait_pod(&client, "ready", 30, "Ready", |p| (condition(p, "Ready").as_deref() == Some("True")).then_some(())).await;
        assert!(not_ready_seen, "Ready before the readiness probe could pass");
        let p = Api::<Pod>::namespaced(client.clone(), "default").get("ready").await.unwrap();
        assert_eq!(cstatus(&p, "c").unwrap()["ready"], true);

        // The liveness probe fails twice: the container is killed and restarted.
        let p = wait_pod(&client, "live", 60, "a liveness restart", |p| {
            cstatus(p, "c").filter(|c| c["restartCount"].as_i64() >= Some(1)).map(|_| p.clone())
        })
        .await;
        let cs = cstatus(&p, "c").unwrap();
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137, "{cs}");
        let ip2 = p.status.as_ref().unwrap().pod_ip.clone().expect("a pod IP");
        assert_ne!(ip, ip2);

        // Deleting the pods releases their addresses.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for name in ["ready", "live"] {
            pods.delete(name, &DeleteParams::default()).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = pods.list(&Default::default()).await.unwrap().items.len();
            let allocs = std::fs::read_dir(dir.data.join("network")).map(|d| d.count()).unwrap_or(0);
            if left == 0 && dir.runtime().list_sandboxes().unwrap().is_empty() {
                eprintln!("network state entries left: {allocs}");
                break;
            }
            assert!(Instant::now() < deadline, "pods not removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        k.stop().await;
    });
    drop(server);
    rt().block_on(dir.cleanup());
}
