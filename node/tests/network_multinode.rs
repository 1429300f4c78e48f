//! Two "hosts" (network namespaces joined by a veth), each with its own podCIDR and bridge:
//! with peer routes set, a pod on host A reaches a pod on host B by pod IP, unNATed; without
//! them it cannot. Needs root, iproute2, nftables, busybox.

mod netns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use netns::Netns;
use node::network::{NetworkConfig, PodNetwork};

fn node_net(host: &Netns, cidr: &str, state: std::path::PathBuf) -> PodNetwork {
    let mut cfg = NetworkConfig::new(cidr.parse().unwrap(), state);
    cfg.host_netns = Some(host.path());
    PodNetwork::new(cfg).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn pods_on_two_nodes_reach_each_other() {
    if !netns::can_run("pods_on_two_nodes_reach_each_other") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ha, hb) = (Netns::new("ha"), Netns::new("hb"));
    // Node addresses from TEST-NET-1, on a link that exists only between these namespaces.
    netns::link(&ha, "192.0.2.1", &hb, "192.0.2.2");
    let (na, nb) = (
        node_net(&ha, "10.244.1.0/24", tmp.path().join("a")),
        node_net(&hb, "10.244.2.0/24", tmp.path().join("b")),
    );
    let (pa, pb) = (Netns::bare("pa"), Netns::bare("pb"));
    let sa = na.setup("poda", &pa.path(), &[]).await.unwrap();
    let sb = nb.setup("podb", &pb.path(), &[]).await.unwrap();

    // No peer routes yet: host A does not know 10.244.2.0/24.
    assert!(!pa.ping(&sb.ip.to_string()));

    let peers = [
        (
            "10.244.1.0/24".parse().unwrap(),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        ),
        (
            "10.244.2.0/24".parse().unwrap(),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        ),
    ];
    na.set_peer_routes(&peers).await.unwrap();
    nb.set_peer_routes(&peers).await.unwrap();
    // Idempotent.
    na.set_peer_routes(&peers).await.unwrap();
    let ra = ha.ip(&["route"]);
    assert!(ra.contains("10.244.2.0/24 via 192.0.2.2"), "{ra}");
    assert!(
        !ra.contains("10.244.1.0/24 via"),
        "own podCIDR skipped: {ra}"
    );

    let srv = pb.tcp_echo(8080, 2);
    let reply = pa
        .tcp_call(SocketAddr::from((sb.ip, 8080)), "ping")
        .unwrap();
    assert_eq!(
        reply,
        format!("{} ping", sa.ip),
        "pod-to-pod is not masqueraded"
    );
    assert!(pb.ping(&sa.ip.to_string()));
    // Host A's node address reaches pod B too (node-to-pod).
    let reply = ha
        .tcp_call(SocketAddr::from((sb.ip, 8080)), "node")
        .unwrap();
    assert!(reply.ends_with(" node"), "{reply}");
    srv.join().unwrap();

    // Routes follow the peer list: an empty list removes ours (and only ours).
    ha.ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.2"]);
    na.set_peer_routes(&[]).await.unwrap();
    let ra = ha.ip(&["route"]);
    assert!(!ra.contains("10.244.2.0/24"), "{ra}");
    assert!(ra.contains("198.51.100.0/24 via 192.0.2.2"), "{ra}");
    assert!(pa.tcp_call(SocketAddr::from((sb.ip, 8080)), "x").is_err());

    na.teardown("poda").await.unwrap();
    nb.teardown("podb").await.unwrap();
}
