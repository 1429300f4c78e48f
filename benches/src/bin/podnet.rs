//! Pod network latency (node::network): setup + teardown of one pod's network (veth pair with
//! eth0 created in the pod's namespace, address, routes, lo) on a bridge, all over rtnetlink;
//! also with two hostPorts (one `nft` run each way), and 100 pods set up at once. Prints
//! p50/p99. Runs inside network namespaces of its own (a "host" and one per pod), removed at
//! the end. Needs root and iproute2 + nftables.
//!
//! `cargo run --release -p kubeshard-benches --bin podnet`

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use node::network::{HostPortMapping, NetworkConfig, PodNetwork, Protocol};

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("ksbench-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip netns add {name}");
        Ns(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(what: &str, v: &mut [Duration]) {
    let n = v.len();
    println!(
        "{what} ({n} runs): p50 {:.2} ms, p99 {:.2} ms",
        ms(pct(v, 0.5)),
        ms(pct(v, 0.99))
    );
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("podnet needs root");
        std::process::exit(1);
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = Ns::new("host");
    let pods: Vec<Ns> = (0..100).map(|i| Ns::new(&format!("p{i}"))).collect();
    let mut cfg = NetworkConfig::new("10.244.1.0/24".parse().unwrap(), tmp.path().into());
    cfg.host_netns = Some(host.path());
    let t = Instant::now();
    let net = PodNetwork::new(cfg).unwrap();
    println!(
        "PodNetwork::new (bridge, forwarding, nft table): {:.2} ms",
        ms(t.elapsed())
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let ports = [
            HostPortMapping {
                host_port: 18080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None,
            },
            HostPortMapping {
                host_port: 18053,
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: None,
            },
        ];
        for (label, maps, runs) in [
            ("no hostPort", &ports[..0], 200),
            ("2 hostPorts", &ports[..], 100),
        ] {
            let (mut setup, mut teardown, mut both) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..runs + 10 {
                let id = format!("bench{i}");
                let ns = &pods[i % pods.len()];
                let t0 = Instant::now();
                let st = net.setup(&id, &ns.path(), maps).await.expect("setup");
                let t1 = Instant::now();
                net.teardown(&id).await.expect("teardown");
                let t2 = Instant::now();
                assert_ne!(st.ip, Ipv4Addr::UNSPECIFIED);
                if i >= 10 {
                    setup.push(t1 - t0);
                    teardown.push(t2 - t1);
                    both.push(t2 - t0);
                }
            }
            report(&format!("{label}: setup"), &mut setup);
            report(&format!("{label}: teardown"), &mut teardown);
            report(&format!("{label}: setup+teardown"), &mut both);
        }
        let (mut each, mut total) = (Vec::new(), Vec::new());
        for round in 0..3 {
            let t = Instant::now();
            let runs = futures::future::join_all(pods.iter().enumerate().map(|(i, ns)| {
                let net = &net;
                async move {
                    let t0 = Instant::now();
                    net.setup(&format!("r{round}p{i}"), &ns.path(), &[])
                        .await
                        .expect("setup");
                    t0.elapsed()
                }
            }))
            .await;
            total.push(t.elapsed());
            each.extend(runs);
            for i in 0..pods.len() {
                net.teardown(&format!("r{round}p{i}"))
                    .await
                    .expect("teardown");
            }
        }
        report("100 pods at once: setup of each", &mut each);
        println!(
            "100 pods at once: all wired after {:.2} ms (median of 3)",
            ms(pct(&mut total, 0.5))
        );
    });
}
