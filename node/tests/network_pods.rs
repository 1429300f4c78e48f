//! The pod network on one "host" (a network namespace of its own): bridge, veth per pod,
//! IPAM, idempotent setup, teardown, state across instances, exhaustion, and a real runtime
//! sandbox wired and given its IP in /etc/hosts. Needs root, iproute2, nftables, busybox.

mod common;
mod netns;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use netns::Netns;
use node::network::{NetworkConfig, NetworkError, PodNetwork, host_veth_name};

fn config(host: &Netns, cidr: &str, state: PathBuf) -> NetworkConfig {
    let mut cfg = NetworkConfig::new(cidr.parse().unwrap(), state);
    cfg.host_netns = Some(host.path());
    cfg.mtu = 1400;
    cfg
}

fn ipam_files(state: &std::path::Path, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("ipam").join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "current_thread")]
async fn two_pods_on_one_bridge() {
    if !netns::can_run("two_pods_on_one_bridge") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = Netns::new("h");
    let (p1, p2, p3) = (Netns::bare("p1"), Netns::bare("p2"), Netns::bare("p3"));
    let cfg = config(&host, "10.244.1.0/24", tmp.path().to_path_buf());
    let net = PodNetwork::new(cfg.clone()).unwrap();
    // The bridge holds the gateway; forwarding is on; the nft table has the masquerade.
    let br = host.ip(&["-4", "-o", "addr", "show", "kubeshard0"]);
    assert!(br.contains("10.244.1.1/24"), "{br}");
    assert!(
        host.ip(&["-o", "link", "show", "kubeshard0"])
            .contains("mtu 1400")
    );
    let (_, fwd) = host.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(fwd.trim(), "1");
    let (ok, table) = host.exec(&["nft", "list", "table", "ip", "kubeshard"]);
    assert!(ok, "{table}");
    assert!(
        table.contains("ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade"),
        "{table}"
    );
    // The test's own namespace must be untouched by a config naming another one.
    let (_, mine) = (0, netns::run("ip", &["-o", "link"]));
    assert!(!mine.contains(&host_veth_name("sb1")), "{mine}");

    let s1 = net.setup("sb1", &p1.path(), &[]).await.unwrap();
    let s2 = net.setup("sb2", &p2.path(), &[]).await.unwrap();
    assert_ne!(s1.ip, s2.ip);
    let cidr: ipnet::Ipv4Net = "10.244.1.0/24".parse().unwrap();
    for s in [&s1, &s2] {
        assert!(
            cidr.contains(&s.ip) && s.ip != Ipv4Addr::new(10, 244, 1, 1),
            "{s:?}"
        );
        assert_eq!(s.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(s.prefix_len, 24);
    }
    // eth0 in the pod with the address, MTU, default route; lo up.
    let eth0 = p1.ip(&["-o", "addr", "show", "eth0"]);
    assert!(eth0.contains(&format!("{}/24", s1.ip)), "{eth0}");
    assert!(p1.ip(&["-o", "link", "show", "eth0"]).contains("mtu 1400"));
    let routes = p1.ip(&["route"]);
    assert!(
        routes.contains("default via 10.244.1.1 dev eth0"),
        "{routes}"
    );
    let lo = p1.ip(&["-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    assert!(host.has_link(&s1.host_interface) && host.has_link(&s2.host_interface));

    // Pods reach each other, the gateway, and their own localhost.
    assert!(p1.ping(&s2.ip.to_string()));
    assert!(p2.ping(&s1.ip.to_string()));
    assert!(p1.ping("10.244.1.1"));
    let srv = p2.tcp_echo(7000, 1);
    let reply = p1.tcp_call(SocketAddr::from((s2.ip, 7000)), "hi").unwrap();
    assert_eq!(reply, format!("{} hi", s1.ip), "no NAT between pods");
    srv.join().unwrap();
    let lsrv = p1.tcp_echo(7001, 1);
    assert!(p1.tcp_call("127.0.0.1:7001".parse().unwrap(), "lo").is_ok());
    lsrv.join().unwrap();

    // Idempotent: the same status, the same links (same ifindex).
    let before = host.ip(&["-o", "link", "show", &s1.host_interface]);
    assert_eq!(net.setup("sb1", &p1.path(), &[]).await.unwrap(), s1);
    assert_eq!(host.ip(&["-o", "link", "show", &s1.host_interface]), before);

    // State survives a new instance on the same state dir: same addresses, no reuse.
    drop(net);
    let net = PodNetwork::new(cfg.clone()).unwrap();
    assert_eq!(net.status("sb1"), Some(s1.clone()));
    assert_eq!(net.allocations().len(), 2);
    assert_eq!(net.setup("sb2", &p2.path(), &[]).await.unwrap(), s2);
    let s3 = net.setup("sb3", &p3.path(), &[]).await.unwrap();
    assert!(s3.ip != s1.ip && s3.ip != s2.ip);

    // Teardown removes the veth (both ends) and releases the address; twice is fine.
    net.teardown("sb1").await.unwrap();
    assert!(!host.has_link(&s1.host_interface));
    assert!(!p1.has_link("eth0"));
    assert_eq!(net.status("sb1"), None);
    assert!(!ipam_files(tmp.path(), "10.244.1.0-24").contains(&s1.ip.to_string()));
    net.teardown("sb1").await.unwrap();
    assert!(!p2.ping(&s1.ip.to_string()));
    // A torn-down sandbox can be wired again (gets an address, reaches its peers).
    let s1b = net.setup("sb1", &p1.path(), &[]).await.unwrap();
    assert!(p1.ping(&s3.ip.to_string()), "{s1b:?}");
    for id in ["sb1", "sb2", "sb3"] {
        net.teardown(id).await.unwrap();
    }
    assert!(ipam_files(tmp.path(), "10.244.1.0-24").is_empty());
    assert!(net.allocations().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn ipam_exhaustion_and_missing_netns() {
    if !netns::can_run("ipam_exhaustion_and_missing_netns") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = Netns::new("h");
    let (p1, p2) = (Netns::bare("p1"), Netns::bare("p2"));
    // A /30: network, gateway, broadcast, and a single pod address.
    let net = PodNetwork::new(config(&host, "10.244.7.0/30", tmp.path().into())).unwrap();
    let s1 = net.setup("only", &p1.path(), &[]).await.unwrap();
    assert_eq!(s1.ip, Ipv4Addr::new(10, 244, 7, 2));
    let err = net.setup("second", &p2.path(), &[]).await.unwrap_err();
    assert!(
        matches!(err, NetworkError::IpamExhausted { capacity: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("10.244.7.0/30 exhausted"), "{err}");
    assert!(!host.has_link(&host_veth_name("second")));
    assert!(!p2.has_link("eth0"));
    // A namespace that does not exist: a clear error, nothing allocated.
    net.teardown("only").await.unwrap();
    let err = net
        .setup(
            "ghost",
            std::path::Path::new("/run/netns/kst-does-not-exist"),
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, NetworkError::Netns(_)), "{err}");
    assert!(net.allocations().is_empty());
    // Bad input.
    assert!(net.setup("../x", &p1.path(), &[]).await.is_err());
    let mut bad = config(&host, "10.244.7.0/24", tmp.path().into());
    bad.bridge = "a-name-much-too-long".into();
    assert!(matches!(
        PodNetwork::new(bad),
        Err(NetworkError::InvalidConfig(_))
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn runtime_sandbox_is_wired_and_gets_its_ip_in_etc_hosts() {
    if !netns::can_run("runtime_sandbox") || !common::can_run_as_root("runtime_sandbox") {
        return;
    }
    use node::cgroup::CgroupDriver;
    use node::runtime::{ContainerConfig, ContainerState, Runtime, RuntimeConfig, SandboxConfig};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let group = format!("kubeshard-test-{}", uuid::Uuid::new_v4().simple());
    let cgroups = match CgroupDriver::detect(&group) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP runtime_sandbox: {e}");
            return;
        }
    };
    let mut rcfg = RuntimeConfig::new(
        &root.join("data"),
        PathBuf::from(env!("CARGO_BIN_EXE_kubeshard-shim")),
    )
    .unwrap();
    rcfg.cgroups = cgroups.clone();
    rcfg.start_timeout = Duration::from_secs(20);
    let rt = Runtime::new(rcfg).unwrap();
    rt.images().import(&common::busybox_image(root)).unwrap();
    let host = Netns::new("h");
    let net = PodNetwork::new(config(&host, "10.244.5.0/24", root.join("net"))).unwrap();

    let sb = rt
        .create_sandbox(&SandboxConfig {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            hostname: "web".into(),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
    let pid = rt.sandbox_status(&sb).unwrap().pid.unwrap();
    let netns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let st = net.setup(&sb, &netns_path, &[]).await.unwrap();
    rt.set_sandbox_pod_ip(&sb, &st.ip.to_string()).unwrap();
    // The gateway (host namespace) reaches the pod. Up to 5 pings of 1 s: the first
    // exchange (ARP, then the echo) missed its single 1 s wait on a loaded machine (load ~9,
    // 2 of 4 runs of this binary failed here).
    assert!((0..5).any(|_| host.ping(&st.ip.to_string())));
    let c = rt
        .create_container(
            &sb,
            &ContainerConfig {
                name: "c".into(),
                image: "kubeshard.test/busybox:1".into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /etc/hosts; busybox ip -4 -o addr show eth0; busybox ping -c 1 -W 2 10.244.5.1 >/dev/null && echo gw-ok".into(),
                ],
                ..ContainerConfig::default()
            },
        )
        .await
        .unwrap();
    rt.start_container(&c).await.unwrap();
    let cs = rt
        .wait_container(&c, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(matches!(cs.state, ContainerState::Exited(_)), "{cs:?}");
    let out: Vec<String> = node::logs::read_records(&cs.log_path, 50)
        .unwrap()
        .into_iter()
        .map(|r| r.line)
        .collect();
    let all = out.join("\n");
    assert!(all.contains(&format!("{}\tweb", st.ip)), "{all}");
    assert!(all.contains(&format!("inet {}/24", st.ip)), "{all}");
    assert!(all.contains("gw-ok"), "{all}");
    // Removing the sandbox destroys its namespace; teardown still cleans up.
    rt.remove_sandbox(&sb).await.unwrap();
    net.teardown(&sb).await.unwrap();
    assert!(!host.has_link(&st.host_interface));
    assert!(net.allocations().is_empty());
    if let CgroupDriver::V2 { base } = &cgroups {
        let _ = std::fs::remove_dir(base);
    }
    if let CgroupDriver::V1 { bases } = &cgroups {
        for (_, b) in bases {
            let _ = std::fs::remove_dir(b);
        }
    }
}
