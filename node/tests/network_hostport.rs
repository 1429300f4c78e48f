//! hostPort mappings: TCP and UDP to the node's address reach the pod's port, from another
//! machine (prerouting) and from the node itself (output); a port taken by another pod is a
//! clear error; teardown removes the mappings. Needs root, iproute2, nftables, busybox.

mod netns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use netns::Netns;
use node::network::{HostPortMapping, NetworkConfig, NetworkError, PodNetwork, Protocol};

fn hp(host_port: u16, container_port: u16, protocol: Protocol) -> HostPortMapping {
    HostPortMapping {
        host_port,
        container_port,
        protocol,
        host_ip: None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn host_ports_reach_the_pod() {
    if !netns::can_run("host_ports_reach_the_pod") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (host, client) = (Netns::new("h"), Netns::new("cl"));
    netns::link(&host, "192.0.2.1", &client, "192.0.2.9");
    let mut cfg = NetworkConfig::new("10.244.3.0/24".parse().unwrap(), tmp.path().into());
    cfg.host_netns = Some(host.path());
    let net = PodNetwork::new(cfg.clone()).unwrap();
    let (pod, other) = (Netns::bare("p"), Netns::bare("o"));
    let maps = [
        hp(18080, 8080, Protocol::Tcp),
        hp(18053, 5353, Protocol::Udp),
        HostPortMapping {
            host_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            ..hp(18081, 8081, Protocol::Tcp)
        },
    ];
    let st = net.setup("web", &pod.path(), &maps).await.unwrap();
    // Idempotent with host ports too.
    assert_eq!(net.setup("web", &pod.path(), &maps).await.unwrap(), st);

    let tcp = pod.tcp_echo(8080, 2);
    let tcp_ip = pod.tcp_echo(8081, 1);
    let udp = pod.udp_echo(5353, 1);
    let node_addr = Ipv4Addr::new(192, 0, 2, 1);
    // From another machine: DNAT in prerouting; the pod sees the client's real address.
    let r = client
        .tcp_call(SocketAddr::from((node_addr, 18080)), "a")
        .unwrap();
    assert_eq!(r, "192.0.2.9 a");
    let r = client
        .tcp_call(SocketAddr::from((node_addr, 18081)), "b")
        .unwrap();
    assert_eq!(r, "192.0.2.9 b");
    let r = client
        .udp_call(SocketAddr::from((node_addr, 18053)), "dns?")
        .unwrap();
    assert_eq!(r, "dns?");
    // From the node itself: DNAT in output.
    let r = host
        .tcp_call(SocketAddr::from((node_addr, 18080)), "c")
        .unwrap();
    assert!(r.ends_with(" c"), "{r}");
    tcp.join().unwrap();
    tcp_ip.join().unwrap();
    udp.join().unwrap();

    // Another pod asking for the same host port: a conflict, and its setup is undone.
    let err = net
        .setup("other", &other.path(), &[hp(18080, 80, Protocol::Tcp)])
        .await
        .unwrap_err();
    assert!(matches!(err, NetworkError::HostPortConflict(_)), "{err}");
    assert!(net.status("other").is_none());

    // A re-setup with fewer ports drops the others; teardown drops the rest.
    net.setup("web", &pod.path(), &maps[..1]).await.unwrap();
    let (_, table) = host.exec(&["nft", "list", "table", "ip", "kubeshard"]);
    assert!(
        table.contains(&format!("tcp . 18080 : {} . 8080", st.ip)),
        "{table}"
    );
    assert!(
        !table.contains("18053") && !table.contains("18081"),
        "{table}"
    );
    // A restarted kubelet keeps the mappings of running pods (maps survive new()).
    drop(net);
    let net = PodNetwork::new(cfg).unwrap();
    let (_, table) = host.exec(&["nft", "list", "table", "ip", "kubeshard"]);
    assert!(table.contains("18080"), "{table}");
    net.teardown("web").await.unwrap();
    let (_, table) = host.exec(&["nft", "list", "table", "ip", "kubeshard"]);
    assert!(!table.contains("18080"), "{table}");
    assert!(
        client
            .tcp_call(SocketAddr::from((node_addr, 18080)), "gone")
            .is_err()
    );
    net.teardown("web").await.unwrap();
}
