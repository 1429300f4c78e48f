//! The pod network: a bridge per node, a veth pair per pod, IPAM from the node's podCIDR,
//! masquerade and hostPort DNAT in one nftables table, and routes to other nodes' podCIDRs.
//!
//! ```text
//!  host netns (the node's, or `NetworkConfig::host_netns`)          pod netns (sandbox holder)
//!  ┌──────────────────────────────────────────────┐                ┌──────────────────────┐
//!  │ kubeshard0 (bridge, podCIDR .1 = gateway)    │                │ lo up                │
//!  │   ├─ ks<hash of sandbox id>  ◄──── veth ─────┼────────────────┼─► eth0 podIP/prefix  │
//!  │ table ip kubeshard: masquerade, hostports    │                │   default via .1     │
//!  │ routes: <peer podCIDR> via <peer node IP>    │                └──────────────────────┘
//!  └──────────────────────────────────────────────┘
//! ```
//!
//! Links, addresses and routes go through rtnetlink sockets (no `ip` forks); the pod end of the
//! veth is created directly inside the pod's namespace as `eth0` and configured over a netlink
//! socket opened in that namespace (see [`nl`]). Only the nftables changes fork `nft`: once in
//! [`PodNetwork::new`] and once per setup/teardown of a pod that has host ports.
//!
//! Allocations live on disk under `state_dir` (see [`ipam`]), so a restarted kubelet keeps its
//! pods' addresses, and [`PodNetwork::setup`] is idempotent per sandbox id: a repeated call for
//! a sandbox whose namespace is already wired returns the same address without touching links.
//!
//! Invariants: one address per sandbox id; an address is never handed out twice while its
//! record exists; the host veth's name is a function of the sandbox id (so teardown works from
//! the id alone, even after a restart); the only nftables table touched is `ip kubeshard`, and
//! the only routes touched are the pod's own and the peer routes marked with
//! [`nl::RTPROT_KUBESHARD`].
//!
//! Not handled: IPv6, SCTP host ports, hostPort from 127.0.0.1 (needs route_localnet) and a pod
//! reaching its own hostPort through the node's address (hairpin), a host firewall that drops
//! forwarded traffic in another table (nftables cannot override another table's drop).

mod ipam;
mod nft;
mod nl;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::Ipv4Net;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use ipam::{Allocation, Ipam};

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// File or process I/O failed.
    #[error("pod network I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A netlink request was refused by the kernel.
    #[error("netlink {op}: {source}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// A netlink request got no answer in time.
    #[error("netlink {0}: timed out")]
    Timeout(String),
    /// A network namespace could not be opened or entered.
    #[error("network namespace: {0}")]
    Netns(String),
    /// Every address of the podCIDR is allocated.
    #[error("pod CIDR {cidr} exhausted: all {capacity} pod addresses are allocated")]
    IpamExhausted {
        /// The node's podCIDR.
        cidr: Ipv4Net,
        /// How many addresses it can hand out (network, gateway and broadcast excluded).
        capacity: u32,
    },
    /// The host port is already mapped to another pod on this node.
    #[error("host port {0} is already in use by another pod")]
    HostPortConflict(String),
    /// An nftables transaction failed.
    #[error("nftables: {0}")]
    Nft(String),
    /// The configuration or a request is invalid.
    #[error("invalid pod network config: {0}")]
    InvalidConfig(String),
    /// An IPAM record is unusable.
    #[error("corrupt IPAM state {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl From<rtnetlink::Error> for NetworkError {
    fn from(source: rtnetlink::Error) -> Self {
        NetworkError::Netlink {
            op: "connect".into(),
            source,
        }
    }
}

/// How the node's pod network is set up.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The node bridge (`kubeshard0`).
    pub bridge: String,
    /// The node's podCIDR; its first address is the gateway on the bridge.
    pub pod_cidr: Ipv4Net,
    /// Where IPAM state lives (one file per allocation).
    pub state_dir: PathBuf,
    /// MTU of the bridge and of both ends of every pod's veth.
    pub mtu: u32,
    /// The cluster CIDR: pod traffic to anything outside it is masqueraded. `None` turns
    /// masquerade off.
    pub cluster_cidr: Option<Ipv4Net>,
    /// Operate inside this network namespace (e.g. `/run/netns/node1`) instead of the
    /// process's own: tests make each "node" a namespace on one machine.
    pub host_netns: Option<PathBuf>,
}

/// The bridge of every node.
pub const DEFAULT_BRIDGE: &str = "kubeshard0";
/// The cluster CIDR `kubeshard up` configures.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";

impl NetworkConfig {
    /// The defaults: bridge `kubeshard0`, MTU 1500, cluster CIDR 10.244.0.0/16, the
    /// process's own network namespace.
    pub fn new(pod_cidr: Ipv4Net, state_dir: PathBuf) -> NetworkConfig {
        NetworkConfig {
            bridge: DEFAULT_BRIDGE.into(),
            pod_cidr,
            state_dir,
            mtu: 1500,
            cluster_cidr: DEFAULT_CLUSTER_CIDR.parse().ok(),
            host_netns: None,
        }
    }
}

/// A transport protocol of a host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// From a Kubernetes `ContainerPort.protocol` (`TCP` when empty); SCTP is not supported.
    pub fn from_k8s(p: Option<&str>) -> Result<Protocol, NetworkError> {
        match p.unwrap_or("TCP") {
            "TCP" | "" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            other => Err(NetworkError::InvalidConfig(format!(
                "host port protocol {other:?} not supported"
            ))),
        }
    }
}

/// One hostPort of a pod: traffic to the node's address (or `host_ip`) at `host_port` is sent
/// to the pod's `container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostPortMapping {
    /// The node port.
    pub host_port: u16,
    /// The pod port.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Only traffic to this node address (`None` or 0.0.0.0: any local address).
    pub host_ip: Option<IpAddr>,
}

/// The result of wiring a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworkStatus {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Its default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// The podCIDR's prefix length (eth0 carries ip/prefix_len).
    pub prefix_len: u8,
    /// The interface in the pod (`eth0`).
    pub interface: String,
    /// The host end of the pod's veth.
    pub host_interface: String,
}

/// The interface name inside every pod.
pub const POD_INTERFACE: &str = "eth0";

/// The host end of a sandbox's veth: `ks` + 11 hex digits of its id's SHA-256 (fits IFNAMSIZ).
pub fn host_veth_name(sandbox_id: &str) -> String {
    let d = sha2::Sha256::digest(sandbox_id.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("ks{}", &hex[..11])
}

/// The node's pod network; `Send + Sync`, shared by all pod workers.
#[derive(Debug)]
pub struct PodNetwork {
    cfg: NetworkConfig,
    /// The node's network namespace, held open for the life of the value.
    host: Arc<File>,
    gateway: Ipv4Net,
    ipam: Mutex<Ipam>,
}

fn netns_identity(f: &File) -> Result<(u64, u64), NetworkError> {
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

fn open_netns(p: &Path) -> Result<File, NetworkError> {
    File::open(p).map_err(|e| NetworkError::Netns(format!("open {}: {e}", p.display())))
}

/// A locally administered unicast MAC derived from the bridge name and podCIDR, stable across
/// restarts.
fn bridge_mac(name: &str, cidr: Ipv4Net) -> [u8; 6] {
    let d = sha2::Sha256::digest(format!("{name}/{cidr}").as_bytes());
    [(d[0] & 0xfe) | 0x02, d[1], d[2], d[3], d[4], d[5]]
}

fn validate_host_ports(maps: &[HostPortMapping]) -> Result<(), NetworkError> {
    if maps.len() > 1024 {
        return Err(NetworkError::InvalidConfig(
            "more than 1024 host ports".into(),
        ));
    }
    for m in maps {
        if m.host_port == 0 || m.container_port == 0 {
            return Err(NetworkError::InvalidConfig(format!(
                "host port mapping {}->{} has port 0",
                m.host_port, m.container_port
            )));
        }
        if let Some(IpAddr::V6(ip)) = m.host_ip {
            return Err(NetworkError::InvalidConfig(format!(
                "IPv6 host IP {ip} not supported"
            )));
        }
    }
    Ok(())
}

impl PodNetwork {
    /// Creates or adopts the bridge (gateway address, MTU, up), turns IPv4 forwarding on,
    /// creates the `ip kubeshard` nftables table (masquerade, hostport maps) and loads IPAM
    /// state from disk.
    pub fn new(cfg: NetworkConfig) -> Result<PodNetwork, NetworkError> {
        if cfg.bridge.is_empty()
            || cfg.bridge.len() > 15
            || !cfg
                .bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(NetworkError::InvalidConfig(format!(
                "bad bridge name {:?}",
                cfg.bridge
            )));
        }
        if !(576..=65535).contains(&cfg.mtu) {
            return Err(NetworkError::InvalidConfig(format!("bad MTU {}", cfg.mtu)));
        }
        let ipam = Ipam::open(&cfg.state_dir, cfg.pod_cidr)?;
        let pod_cidr = ipam.cidr();
        let gateway = Ipv4Net::new(ipam::gateway(pod_cidr), pod_cidr.prefix_len())
            .map_err(|e| NetworkError::InvalidConfig(e.to_string()))?;
        let host = Arc::new(match &cfg.host_netns {
            Some(p) => open_netns(p)?,
            None => open_netns(Path::new("/proc/thread-self/ns/net"))?,
        });
        let (bridge, mtu, mac) = (
            cfg.bridge.clone(),
            cfg.mtu,
            bridge_mac(&cfg.bridge, pod_cidr),
        );
        let script = nft::base_script(pod_cidr, cfg.cluster_cidr);
        nl::on_thread_blocking(host.clone(), move || async move {
            let h = nl::connect()?;
            nl::ensure_bridge(&h, &bridge, mtu, mac, gateway).await?;
            // Read on this thread: /proc/sys/net follows the thread's network namespace.
            let fwd = "/proc/sys/net/ipv4/ip_forward";
            if std::fs::read_to_string(fwd)?.trim() != "1" {
                std::fs::write(fwd, "1")?;
            }
            nft::run(&script)
        })?;
        Ok(PodNetwork {
            cfg,
            host,
            gateway,
            ipam: Mutex::new(ipam),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    fn status_for(&self, sandbox_id: &str, ip: Ipv4Addr) -> PodNetworkStatus {
        PodNetworkStatus {
            ip,
            gateway: self.gateway.addr(),
            prefix_len: self.gateway.prefix_len(),
            interface: POD_INTERFACE.into(),
            host_interface: host_veth_name(sandbox_id),
        }
    }

    /// Wires a sandbox into the node network: an address from IPAM, the veth pair (`eth0` in
    /// the pod, the host end on the bridge), `lo` up, the default route via the gateway, and
    /// the host ports. Idempotent: for a sandbox already wired in the same namespace it only
    /// reconciles the host ports and returns the same status.
    pub async fn setup(
        &self,
        sandbox_id: &str,
        netns: &Path,
        host_ports: &[HostPortMapping],
    ) -> Result<PodNetworkStatus, NetworkError> {
        ipam::check_sandbox_id(sandbox_id)?;
        validate_host_ports(host_ports)?;
        let pod_ns = open_netns(netns)?;
        let ident = netns_identity(&pod_ns)?;
        let (ip, prev) = {
            let mut ipam = self.ipam.lock();
            match ipam.get(sandbox_id) {
                Some((ip, rec)) => (ip, Some(rec)),
                None => {
                    let ip = ipam.allocate(Allocation {
                        sandbox_id: sandbox_id.to_string(),
                        netns: None,
                        host_ports: vec![],
                    })?;
                    (ip, None)
                }
            }
        };
        let status = self.status_for(sandbox_id, ip);
        let same_ns = prev.as_ref().is_some_and(|r| r.netns == Some(ident));
        let old_ports: Vec<HostPortMapping> = prev
            .as_ref()
            .map(|r| r.host_ports.clone())
            .unwrap_or_default();
        let work = Wiring {
            host: self.host.clone(),
            pod_ns,
            veth: status.host_interface.clone(),
            bridge: self.cfg.bridge.clone(),
            mtu: self.cfg.mtu,
            addr: Ipv4Net::new(ip, self.gateway.prefix_len())
                .map_err(|e| NetworkError::InvalidConfig(e.to_string()))?,
            gateway: self.gateway.addr(),
            same_ns,
            old_ports,
            new_ports: host_ports.to_vec(),
        };
        match nl::on_thread(self.host.clone(), move || work.run()).await {
            Ok(()) => {
                self.ipam.lock().update(
                    ip,
                    Allocation {
                        sandbox_id: sandbox_id.to_string(),
                        netns: Some(ident),
                        host_ports: host_ports.to_vec(),
                    },
                )?;
                Ok(status)
            }
            Err(e) => {
                // A fresh allocation that could not be wired is undone, so a failed setup
                // leaks neither an address nor a link; an existing one stays for teardown.
                if prev.is_none() {
                    let veth = status.host_interface.clone();
                    let _ = nl::on_thread(self.host.clone(), move || async move {
                        let h = nl::connect()?;
                        nl::del_link(&h, &veth).await
                    })
                    .await;
                    let _ = self.ipam.lock().release(sandbox_id);
                }
                Err(e)
            }
        }
    }

    /// Unwires a sandbox: removes its host ports and its veth, and releases its address.
    /// Idempotent, and works after the sandbox's namespace is gone.
    pub async fn teardown(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        ipam::check_sandbox_id(sandbox_id)?;
        let rec = self.ipam.lock().get(sandbox_id);
        let ports = rec.map(|(_, r)| r.host_ports).unwrap_or_default();
        let veth = host_veth_name(sandbox_id);
        nl::on_thread(self.host.clone(), move || async move {
            remove_host_ports(&ports)?;
            let h = nl::connect()?;
            nl::del_link(&h, &veth).await?;
            Ok(())
        })
        .await?;
        self.ipam.lock().release(sandbox_id)?;
        Ok(())
    }

    /// Makes the routes to other nodes' podCIDRs exactly `peers` (podCIDR via node IP): adds
    /// or replaces those given and deletes the ones set before that are no longer listed. The
    /// node's own podCIDR is skipped.
    pub async fn set_peer_routes(&self, peers: &[(Ipv4Net, IpAddr)]) -> Result<(), NetworkError> {
        if peers.len() > 100_000 {
            return Err(NetworkError::InvalidConfig("too many peer routes".into()));
        }
        let own = self.ipam.lock().cidr();
        let mut want: Vec<(Ipv4Net, Ipv4Addr)> = Vec::with_capacity(peers.len());
        for (net, via) in peers {
            let IpAddr::V4(via) = via else {
                return Err(NetworkError::InvalidConfig(format!(
                    "IPv6 node address {via} for {net} not supported"
                )));
            };
            let net = net.trunc();
            if net != own {
                want.push((net, *via));
            }
        }
        nl::on_thread(self.host.clone(), move || async move {
            let h = nl::connect()?;
            for (net, gw, msg) in nl::peer_routes(&h).await? {
                if !want.iter().any(|(n, v)| *n == net && Some(*v) == gw) {
                    nl::del_route(&h, msg).await?;
                }
            }
            for (net, via) in want {
                nl::replace_peer_route(&h, net, via).await?;
            }
            Ok(())
        })
        .await
    }

    /// The status of a sandbox wired earlier (also by a previous instance on the same
    /// state dir).
    pub fn status(&self, sandbox_id: &str) -> Option<PodNetworkStatus> {
        let (ip, _) = self.ipam.lock().get(sandbox_id)?;
        Some(self.status_for(sandbox_id, ip))
    }

    /// Every allocation: (sandbox id, address). A restarted kubelet tears down the ones whose
    /// sandbox no longer exists.
    pub fn allocations(&self) -> Vec<(String, Ipv4Addr)> {
        self.ipam.lock().list()
    }
}

/// Removes host port mappings, in one transaction when possible; mappings already gone are
/// fine.
fn remove_host_ports(ports: &[HostPortMapping]) -> Result<(), NetworkError> {
    if ports.is_empty() {
        return Ok(());
    }
    match nft::run(&nft::del_hostports_script(ports)) {
        Ok(()) => Ok(()),
        Err(e) if nft::is_missing(&e) => {
            for m in ports {
                match nft::run(&nft::del_hostport_script(m)) {
                    Ok(()) => {}
                    Err(e) if nft::is_missing(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The work of one setup, run on a network thread (which starts in the host namespace).
struct Wiring {
    host: Arc<File>,
    pod_ns: File,
    veth: String,
    bridge: String,
    mtu: u32,
    addr: Ipv4Net,
    gateway: Ipv4Addr,
    same_ns: bool,
    old_ports: Vec<HostPortMapping>,
    new_ports: Vec<HostPortMapping>,
}

impl Wiring {
    async fn run(self) -> Result<(), NetworkError> {
        let host = nl::connect()?;
        nl::enter(&self.pod_ns)?;
        let pod = nl::connect();
        // Back to the host namespace whatever happened: nft runs from this thread.
        nl::enter(&self.host)?;
        let pod = pod?;
        let wired = self.same_ns
            && nl::link_index(&host, &self.veth).await?.is_some()
            && match nl::link_index(&pod, POD_INTERFACE).await? {
                Some(i) => nl::addrs_v4(&pod, i).await?.contains(&self.addr),
                None => false,
            };
        if !wired {
            self.wire(&host, &pod).await?;
        }
        let stale: Vec<HostPortMapping> = self
            .old_ports
            .iter()
            .filter(|m| !self.new_ports.contains(m))
            .cloned()
            .collect();
        remove_host_ports(&stale)?;
        if !self.new_ports.is_empty() {
            let script = nft::add_hostports_script(self.addr.addr(), &self.new_ports);
            nft::run(&script).map_err(|e| {
                if nft::is_exists(&e) {
                    NetworkError::HostPortConflict(
                        self.new_ports
                            .iter()
                            .map(|m| format!("{}/{:?}", m.host_port, m.protocol))
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                } else {
                    e
                }
            })?;
        }
        Ok(())
    }

    async fn wire(
        &self,
        host: &rtnetlink::Handle,
        pod: &rtnetlink::Handle,
    ) -> Result<(), NetworkError> {
        let bridge = nl::link_index(host, &self.bridge)
            .await?
            .ok_or_else(|| NetworkError::Netns(format!("bridge {} missing", self.bridge)))?;
        // Leftovers of an interrupted setup: the old pair (deleting one end deletes both).
        nl::del_link(host, &self.veth).await?;
        nl::del_link(pod, POD_INTERFACE).await?;
        nl::add_veth(
            host,
            &self.veth,
            POD_INTERFACE,
            &self.pod_ns,
            self.mtu,
            bridge,
        )
        .await?
        .map_err(|source| NetworkError::Netlink {
            op: format!("add veth {}", self.veth),
            source,
        })?;
        let eth0 = nl::link_index(pod, POD_INTERFACE)
            .await?
            .ok_or_else(|| NetworkError::Netns("eth0 missing after veth creation".into()))?;
        nl::ensure_addr(pod, eth0, self.addr).await?;
        nl::set_up(pod, eth0).await?;
        nl::lo_up(pod).await?;
        nl::default_route(pod, self.gateway).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kubelet shares one `PodNetwork` between pod workers spawned on a multi-threaded
    /// runtime: the value must be `Send + Sync` and its futures `Send`.
    #[test]
    fn shareable_across_tasks() {
        fn is_send_sync<T: Send + Sync>() {}
        fn is_send<T: Send>(_: &T) {}
        is_send_sync::<PodNetwork>();
        fn futures(n: &PodNetwork) {
            is_send(&n.setup("a", Path::new("/"), &[]));
            is_send(&n.teardown("a"));
            is_send(&n.set_peer_routes(&[]));
        }
        let _ = futures;
    }

    #[test]
    fn names_and_macs() {
        let n = host_veth_name("0123456789abcdef0123456789abcdef");
        assert_eq!(n.len(), 13);
        assert!(n.starts_with("ks"));
        assert_ne!(n, host_veth_name("0123456789abcdef0123456789abcdee"));
        let mac = bridge_mac("kubeshard0", "10.244.1.0/24".parse().unwrap());
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(Protocol::from_k8s(None).unwrap(), Protocol::Tcp);
        assert_eq!(Protocol::from_k8s(Some("UDP")).unwrap(), Protocol::Udp);
        assert!(Protocol::from_k8s(Some("SCTP")).is_err());
        assert!(
            validate_host_ports(&[HostPortMapping {
                host_port: 0,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None
            }])
            .is_err()
        );
    }
}
