//! The kubelet against a real (in-process) apiserver, as root: node registration with the
//! machine's capacity and info, Lease renewal, the Ready condition; and a static pod that runs
//! with no apiserver reachable, then gets its mirror pod once one is.

mod kubelet_common;

use std::time::{Duration, Instant};

use api::client::{Api, ListParams};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kubelet_common::*;

#[test]
fn registers_node_renews_lease_and_reports_ready() {
    let Some(dir) = NodeDir::new("registers_node_renews_lease_and_reports_ready") else {
        return;
    };
    let server = Server::start();
    rt().block_on(async {
        let client = server.client();
        let mut cfg = dir.config("node-a", Some(&server.kubeconfig));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        cfg.kubelet_port = port;
        let k = RunningKubelet::start(cfg);
        let nodes: Api<Node> = Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        let node = loop {
            if let Ok(Some(n)) = nodes.get_opt("node-a").await
                && n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some()
            {
                break n;
            }
            assert!(Instant::now() < deadline, "node never registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let labels = node.metadata.labels.clone().unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "node-a");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert!(!labels["kubernetes.io/arch"].is_empty());
        let st = node.status.clone().unwrap();
        let cap = st.capacity.clone().unwrap();
        let cpus = std::thread::available_parallelism()
            .unwrap()
            .get()
            .to_string();
        assert_eq!(cap["cpu"].0, cpus);
        assert_eq!(cap["pods"].0, "110");
        let mem_kib: u64 = cap["memory"].0.trim_end_matches("Ki").parse().unwrap();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total: u64 = meminfo
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(mem_kib, total);
        assert!(cap.contains_key("ephemeral-storage"));
        assert!(st.allocatable.unwrap().contains_key("memory"));
        let info = st.node_info.clone().unwrap();
        assert!(
            info.kubelet_version.starts_with("v1.33."),
            "{}",
            info.kubelet_version
        );
        assert!(info.container_runtime_version.starts_with("kubeshard://"));
        assert_eq!(info.operating_system, "linux");
        assert_eq!(
            info.kernel_version,
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap()
                .trim()
        );
        assert_eq!(
            info.boot_id,
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .unwrap()
                .trim()
        );
        let addrs = st.addresses.clone().unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
        );
        assert!(
            addrs
                .iter()
                .any(|a| a.type_ == "Hostname" && a.address == "node-a")
        );
        assert_eq!(
            st.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port,
            i32::from(port)
        );
        // The kubelet API (node::server) listens there.
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok(),
            "kubelet API not listening"
        );
        let images = st.images.unwrap_or_default();
        assert!(
            images.iter().any(|i| i
                .names
                .iter()
                .flatten()
                .any(|n| n.contains("kubeshard.test/busybox:1"))),
            "{images:?}"
        );
        let conds = st.conditions.unwrap();
        for (t, want) in [
            ("Ready", "True"),
            ("MemoryPressure", "False"),
            ("DiskPressure", "False"),
            ("PIDPressure", "False"),
        ] {
            let c = conds
                .iter()
                .find(|c| c.type_ == t)
                .unwrap_or_else(|| panic!("no {t}"));
            assert_eq!(c.status, want, "{t}");
        }

        // The Lease exists and its renewTime moves (renewed every second here).
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let renew = |l: &Lease| serde_json::to_value(&l.spec.as_ref().unwrap().renew_time).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = loop {
            if let Ok(Some(l)) = leases.get_opt("node-a").await {
                break l;
            }
            assert!(Instant::now() < deadline, "no lease");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let spec = first.spec.clone().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        let owner = &first.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Node", "node-a")
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = leases.get("node-a").await.unwrap();
            if renew(&l) != renew(&first) {
                break;
            }
            assert!(Instant::now() < deadline, "lease never renewed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The status heartbeat moves too (every 2 s here).
        let hb = |n: &Node| {
            n.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| serde_json::to_value(&c.last_heartbeat_time).unwrap())
        };
        let before = hb(&node);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = nodes.get("node-a").await.unwrap();
            if hb(&n) != before {
                break;
            }
            assert!(Instant::now() < deadline, "status heartbeat never moved");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        k.stop().await;
    });
    drop(server);
    rt().block_on(dir.cleanup());
}

#[test]
fn static_pod_runs_without_apiserver_then_gets_a_mirror() {
    let Some(dir) = NodeDir::new("static_pod_runs_without_apiserver_then_gets_a_mirror") else {
        return;
    };
    let manifests = dir.tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let marker = dir.tmp.path().join("share");
    std::fs::create_dir_all(&marker).unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: kube-system\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, 'echo started; sleep 3600']\n"
        ),
    )
    .unwrap();
    // A kubeconfig pointing at a port nothing listens on: the API is unreachable.
    let dead = dir.tmp.path().join("dead.kubeconfig");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &dead,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"),
    )
    .unwrap();
    rt().block_on(async {
        let mut cfg = dir.config("node-s", Some(&dead));
        cfg.pod_manifest_path = Some(manifests.clone());
        let k = RunningKubelet::start(cfg);
        let runtime = dir.runtime();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let running = runtime
                .list_containers()
                .unwrap()
                .into_iter()
                .any(|c| c.name == "c" && c.state == node::runtime::ContainerState::Running);
            let sb = runtime.list_sandboxes().unwrap();
            if running {
                assert_eq!(sb.len(), 1);
                assert_eq!(sb[0].name, "web-node-s");
                assert_eq!(sb[0].namespace, "kube-system");
                break;
            }
            assert!(Instant::now() < deadline, "static pod never ran");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first_id = runtime.list_containers().unwrap()[0].id.clone();
        k.stop().await;

        // Now with an apiserver: the same pod keeps running (adopted) and gets a mirror pod.
        let server = Server::start();
        let client = server.client();
        let mut cfg = dir.config("node-s", Some(&server.kubeconfig));
        cfg.pod_manifest_path = Some(manifests.clone());
        let k = RunningKubelet::start(cfg);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mirror = loop {
            if let Ok(Some(p)) = pods.get_opt("web-node-s").await
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            {
                break p;
            }
            assert!(Instant::now() < deadline, "no running mirror pod");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ann = mirror.metadata.annotations.clone().unwrap();
        assert!(ann.contains_key("kubernetes.io/config.mirror"));
        let cs = cstatus(&mirror, "c").unwrap();
        assert_eq!(cs["containerID"], format!("kubeshard://{first_id}"));
        assert_eq!(
            runtime.list_containers().unwrap().len(),
            1,
            "the static pod's container was duplicated"
        );

        // Deleting the manifest tears the pod down and removes the mirror.
        std::fs::remove_file(manifests.join("web.yaml")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let gone_rt = runtime.list_sandboxes().unwrap().is_empty();
            let gone_api = pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(false);
            if gone_rt && gone_api {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "static pod not torn down (runtime gone: {gone_rt}, mirror gone: {gone_api})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        k.stop().await;
        drop(server);
    });
    rt().block_on(dir.cleanup());
}
