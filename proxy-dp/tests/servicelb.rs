//! The service-LB controller end to end: a real in-process apiserver, `kubeshard proxy`'s
//! dataplane fed by informers, the controller, a real TCP backend on loopback. The node's
//! InternalIP is 127.0.0.1 (the dataplane's node address), so LoadBalancer ingress is
//! `127.0.0.1:<port>`. Also checks `kubectl get svc` shows the EXTERNAL-IP, port conflicts
//! (condition + Event, the other Service unaffected) and the clean-up when a Service stops
//! being a LoadBalancer. Needs root (the ClusterIP VIPs go on `lo`); without it the test says
//! so and passes vacuously. The pure planning core has its own tests at the end.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use api::client::{Api, Client, ListParams, Patch, PatchParams, PostParams};
use k8s_openapi::api::core::v1::{
    Event, Node, NodeAddress, NodeCondition, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use proxy_dp::servicelb::{self, CONDITION, Decision, REASON_CONFLICT};
use proxy_dp::{DataplaneConfig, ForwardMode};

mod common;
use common::ApiServer;

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        ..ObjectMeta::default()
    }
}

fn lb_service(name: &str, port: u16) -> Service {
    Service {
        metadata: meta(name),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort {
                name: Some("p".into()),
                port: i32::from(port),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice_for(svc: &str, backend: u16) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                svc.to_string(),
            )])),
            ..meta(&format!("{svc}-1"))
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["127.0.0.1".into()],
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("p".into()),
            port: Some(i32::from(backend)),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

/// A backend that writes `id\n` to every connection and closes.
fn backend(id: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(format!("{id}\n").as_bytes());
        }
    });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Reads the line a backend sends through `addr` (bounded by socket timeouts).
fn reach(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

fn ingress_ips(s: &Service) -> Vec<String> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

fn condition(s: &Service) -> Option<(String, String, String)> {
    s.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Polls `get` (bounded: 15 s) until `pred` holds; returns the last value.
async fn until<T, F, P>(what: &str, mut get: F, pred: P) -> T
where
    F: AsyncFnMut() -> Option<T>,
    P: Fn(&T) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = get().await
            && pred(&v)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_ready_node(client: &Client, name: &str, ip: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let status = NodeStatus {
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: ip.into(),
        }]),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..NodeCondition::default()
        }]),
        ..NodeStatus::default()
    };
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .expect("node status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_services_get_node_ingress_and_are_served() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to add Service VIPs to lo");
        return;
    }
    let apiserver = ApiServer::start();
    let client = Client::from_kubeconfig(&apiserver.kubeconfig).expect("client");
    create_ready_node(&client, "n1", "127.0.0.1").await;

    // The proxy (dataplane on 127.0.0.1 as the node address) and the controller.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut popts = proxy_dp::run::ProxyOptions::new(
        apiserver.kubeconfig.clone(),
        DataplaneConfig::default()
            .node_name("n1")
            .shards(2)
            .forward_mode(ForwardMode::Splice)
            .node_addresses(vec![IpAddr::from([127, 0, 0, 1])]),
    );
    popts.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let proxy = tokio::spawn(proxy_dp::run::run(popts, stop(stop_rx.clone())));
    let lb = tokio::spawn(servicelb::run_with(client.clone(), stop(stop_rx.clone())));

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let port = free_port();
    let (b1, b2) = (backend("one"), backend("two"));

    // 1. A LoadBalancer Service gets the node address as ingress and is served there.
    svcs.create(&PostParams::default(), &lb_service("one", port))
        .await
        .expect("create one");
    slices
        .create(&PostParams::default(), &slice_for("one", b1))
        .await
        .expect("slice one");
    let one = until(
        "ingress on one",
        async || svcs.get("one").await.ok(),
        |s| !ingress_ips(s).is_empty(),
    )
    .await;
    assert_eq!(ingress_ips(&one), vec!["127.0.0.1".to_string()]);
    assert_eq!(
        condition(&one).map(|c| c.0),
        Some("True".to_string()),
        "{:?}",
        condition(&one)
    );
    let ingress = SocketAddr::from(([127, 0, 0, 1], port));
    let got = until(
        "traffic through the ingress",
        async || reach(ingress).ok(),
        |s| s == "one",
    )
    .await;
    assert_eq!(got, "one");

    // kubectl shows it as EXTERNAL-IP.
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&apiserver.kubeconfig)
        .args(["get", "svc", "one", "--request-timeout=20s"])
        .output()
        .expect("run kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = text.lines().next().unwrap_or_default();
    let row = text.lines().nth(1).unwrap_or_default();
    assert!(header.contains("EXTERNAL-IP"), "{text}");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols.get(1), Some(&"LoadBalancer"), "{text}");
    assert_eq!(cols.get(3), Some(&"127.0.0.1"), "{text}");

    // 2. A second LoadBalancer Service on the same port: no ingress, a clear condition and
    //    an Event; the first keeps working.
    svcs.create(&PostParams::default(), &lb_service("two", port))
        .await
        .expect("create two");
    slices
        .create(&PostParams::default(), &slice_for("two", b2))
        .await
        .expect("slice two");
    let two = until(
        "conflict condition on two",
        async || svcs.get("two").await.ok(),
        |s| condition(s).is_some(),
    )
    .await;
    let (status, reason, message) = condition(&two).expect("condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", REASON_CONFLICT)
    );
    assert!(
        message.contains(&format!("TCP/{port}")) && message.contains("default/one"),
        "{message}"
    );
    assert!(ingress_ips(&two).is_empty());
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let ev = until(
        "a PortConflict event",
        async || events.list(&ListParams::default()).await.ok(),
        |l| {
            l.items.iter().any(|e| {
                e.reason.as_deref() == Some(REASON_CONFLICT)
                    && e.involved_object.name.as_deref() == Some("two")
            })
        },
    )
    .await;
    assert!(!ev.items.is_empty());
    assert_eq!(reach(ingress).expect("one still served"), "one");

    // 3. "one" stops being a LoadBalancer: its ingress goes, and "two" gets the port.
    svcs.patch(
        "one",
        &PatchParams::default(),
        // The nodePort goes with the type (this apiserver does not yet drop type-dependent
        // fields on update as upstream's strategy does).
        &Patch::Merge(serde_json::json!({"spec": {
            "type": "ClusterIP",
            "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
        }})),
    )
    .await
    .expect("one to ClusterIP");
    let one = until(
        "one released",
        async || svcs.get("one").await.ok(),
        |s| ingress_ips(s).is_empty() && condition(s).is_none(),
    )
    .await;
    assert!(ingress_ips(&one).is_empty());
    let two = until(
        "two gets the port",
        async || svcs.get("two").await.ok(),
        |s| !ingress_ips(s).is_empty(),
    )
    .await;
    assert_eq!(condition(&two).map(|c| c.0), Some("True".to_string()));
    let got = until(
        "traffic to two",
        async || reach(ingress).ok(),
        |s| s == "two",
    )
    .await;
    assert_eq!(got, "two");

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), lb).await;
    let r = tokio::time::timeout(Duration::from_secs(10), proxy)
        .await
        .expect("proxy stops in time")
        .expect("proxy task");
    r.expect("proxy run");
}

// === the pure core ===

fn svc_at(name: &str, secs: i64, ty: &str, ports: &[(&str, u16)]) -> Service {
    let mut s = lb_service(name, 1);
    s.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(secs).expect("time"),
    ));
    let spec = s.spec.as_mut().expect("spec");
    spec.type_ = Some(ty.into());
    spec.ports = Some(
        ports
            .iter()
            .map(|(proto, p)| ServicePort {
                port: i32::from(*p),
                protocol: Some((*proto).into()),
                ..ServicePort::default()
            })
            .collect(),
    );
    s
}

#[test]
fn plan_gives_ports_to_the_oldest_and_protocols_do_not_clash() {
    let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().expect("ip")];
    let a = svc_at("a", 10, "LoadBalancer", &[("TCP", 80)]);
    let b = svc_at("b", 5, "LoadBalancer", &[("TCP", 80), ("TCP", 443)]);
    let c = svc_at("c", 20, "LoadBalancer", &[("UDP", 80)]);
    let d = svc_at("d", 1, "ClusterIP", &[("TCP", 80)]);
    let mut e = svc_at("e", 0, "LoadBalancer", &[("TCP", 443)]);
    e.spec.as_mut().expect("spec").load_balancer_class = Some("example.com/other".into());
    let plan = servicelb::plan([&a, &b, &c, &d, &e], &ips);
    assert_eq!(
        plan["default/b"],
        Decision::Serve(ips.clone()),
        "oldest wins"
    );
    assert_eq!(
        plan["default/a"],
        Decision::Conflict {
            port: "TCP/80".into(),
            owner: "default/b".into()
        }
    );
    assert_eq!(
        plan["default/c"],
        Decision::Serve(ips.clone()),
        "UDP/80 is free"
    );
    assert_eq!(plan["default/d"], Decision::Release);
    assert_eq!(
        plan["default/e"],
        Decision::Foreign,
        "another class: not ours"
    );
}

#[test]
fn desired_status_is_none_when_nothing_changes() {
    let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().expect("ip")];
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(100).expect("time"));
    let mut s = svc_at("a", 10, "LoadBalancer", &[("TCP", 80)]);
    let d = Decision::Serve(ips);
    let st = servicelb::desired_status(&s, &d, &now).expect("first write");
    s.status = Some(st);
    assert_eq!(servicelb::desired_status(&s, &d, &now), None, "idempotent");
    // Released: ingress and our condition go.
    let st = servicelb::desired_status(&s, &Decision::Release, &now).expect("release");
    assert_eq!(
        st.load_balancer.and_then(|l| l.ingress).map(|i| i.len()),
        Some(0)
    );
    assert!(st.conditions.unwrap_or_default().is_empty());
}

#[test]
fn only_ready_nodes_internal_ips_are_ingress() {
    let node = |name: &str, ip: &str, ready: &str| Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    };
    let nodes = [
        node("b", "10.0.0.2", "True"),
        node("a", "10.0.0.1", "True"),
        node("c", "10.0.0.3", "False"),
    ];
    let ips = servicelb::node_ingress_ips(nodes.iter());
    let want: Vec<IpAddr> = vec![
        "10.0.0.1".parse().expect("ip"),
        "10.0.0.2".parse().expect("ip"),
    ];
    assert_eq!(ips, want);
}
