//! `kubeshard up`: the whole single-machine cluster in one process.
//!
//! The store and the apiserver start first (as `kubeshard server`); then, on one tokio runtime,
//! the components that talk to the apiserver through the admin kubeconfig: the scheduler, the
//! controller-manager, the service-LB controller, and — when running as root, since they need namespaces, cgroups and
//! addresses on `lo` — the local node's kubelet, the service proxy and the cluster DNS. Leader election is off: one
//! process holds every component, and a restarted `up` must not wait out its own old Lease.
//!
//! Cluster DNS listens on the node's address, port 53; the `kube-dns` Service
//! (`kube-system`, ClusterIP 10.96.0.10) has no selector and an EndpointSlice pointing at that
//! address, so pods reach it through the proxy like any other Service.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use api::client::{Api, ApiObject, Client, ClientError, PostParams};
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::watch;

/// The cluster DNS Service's address (upstream's convention: the tenth of the service range).
pub(crate) const CLUSTER_DNS_IP: &str = "10.96.0.10";
/// The DNS port.
const DNS_PORT: u16 = 53;

/// What `up` adds to the server's flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ComponentArgs {
    /// The node's address (NodePorts, cluster DNS); default: the kubelet's choice (the first
    /// global IPv4 address of an interface that is up), else 127.0.0.1.
    #[arg(long)]
    pub(crate) node_ip: Option<IpAddr>,
    /// The local node's pod CIDR until the controllers' node IPAM assigns one.
    #[arg(long, default_value = "10.244.0.0/24")]
    pub(crate) pod_cidr: String,
    /// Run no local node (control plane only).
    #[arg(long)]
    pub(crate) no_node: bool,
}

/// A stop signal shared by every component.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    async fn wait(mut self) {
        // An error means the sender is gone: stop as well.
        let _ = self.0.wait_for(|s| *s).await;
    }
}

/// The components, running until `shutdown` resolves; then each is stopped and awaited (with
/// a bound, so a stuck component cannot hold the process).
pub(crate) async fn run(
    kubeconfig: PathBuf,
    data_dir: PathBuf,
    args: ComponentArgs,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    // The node name, as the kubelet registers it (lower case, a DNS subdomain).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "localhost".into());
    // The kubelet's own choice, so the node, NodePorts and DNS agree on one address.
    let node_ip = args
        .node_ip
        .unwrap_or_else(node::kubelet::machine::default_node_ip);
    let root = nix_is_root();
    let mut tasks = Vec::new();

    let mut sched = scheduler::shell::ShellOptions::new(kubeconfig.clone());
    sched.leader_elect = false;
    let s = stop.clone();
    tasks.push((
        "scheduler",
        tokio::spawn(async move {
            if let Err(e) = scheduler::shell::run(sched, s.wait()).await {
                tracing::error!(error = %e, "scheduler stopped");
            }
        }),
    ));

    let mut cm = controllers::manager::Options::new(kubeconfig.clone());
    cm.identity = format!("{host}_{}", std::process::id());
    let s = stop.clone();
    tasks.push((
        "controller-manager",
        tokio::spawn(async move {
            if let Err(e) = controllers::manager::run(cm, s.wait()).await {
                tracing::error!(error = %e, "controller-manager stopped");
            }
        }),
    ));

    // The service load balancer (k3s's servicelb): LoadBalancer Services get the nodes'
    // addresses as ingress; the proxy serves them. API-only, so it runs without root too.
    let s = stop.clone();
    let kc = kubeconfig.clone();
    tasks.push((
        "service-lb",
        tokio::spawn(async move {
            if let Err(e) = proxy_dp::servicelb::run(&kc, s.wait()).await {
                tracing::error!(error = %e, "service-lb controller stopped");
            }
        }),
    ));

    let mut dns = None;
    let mut node = false;
    if root && !args.no_node {
        match std::env::current_exe() {
            Ok(shim) => {
                // The shim is this binary; images are where `kubeshard image import
                // --data-dir DIR` puts them.
                let mut cfg = node::kubelet::KubeletConfig::new(&host, data_dir.clone(), shim);
                cfg.kubeconfig = Some(kubeconfig.clone());
                cfg.node_ip = Some(node_ip);
                cfg.pod_cidr = Some(args.pod_cidr.clone());
                // A development cluster on a shared disk: no disk evictions (kind sets
                // nodefs.available 0% for the same reason); memory.available<100Mi stays.
                cfg.eviction_hard.nodefs_available = None;
                let s = stop.clone();
                tasks.push((
                    "kubelet",
                    tokio::spawn(async move {
                        if let Err(e) = node::kubelet::Kubelet::run(cfg, s.wait()).await {
                            tracing::error!(error = %e, "kubelet stopped");
                        }
                    }),
                ));
                node = true;
            }
            Err(e) => tracing::error!(error = %e, "kubelet not started: no path to this binary"),
        }
    }
    if root {
        let dp = proxy_dp::DataplaneConfig::default()
            .node_name(host.clone())
            .shards(2)
            .node_addresses(vec![node_ip, IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let popts = proxy_dp::run::ProxyOptions::new(kubeconfig.clone(), dp);
        let s = stop.clone();
        tasks.push((
            "proxy",
            tokio::spawn(async move {
                if let Err(e) = proxy_dp::run::run(popts, s.wait()).await {
                    tracing::error!(error = %e, "proxy stopped");
                }
            }),
        ));
        match start_cluster_dns(&kubeconfig, node_ip).await {
            Ok(d) => dns = Some(d),
            Err(e) => tracing::error!(error = %e, "cluster DNS not started"),
        }
    } else {
        tracing::warn!(
            "not root: the kubelet, the service proxy and cluster DNS need privileges and are not started"
        );
    }
    let mut running = vec![
        "scheduler".to_string(),
        "controller-manager".to_string(),
        "service-lb".to_string(),
    ];
    if node {
        running.push(format!("kubelet (node {host})"));
    }
    if root {
        running.push("proxy".into());
    }
    if dns.is_some() {
        running.push("cluster DNS (kube-system/kube-dns 10.96.0.10)".into());
    }
    let line = running.join(", ");
    println!("components: {line}");

    shutdown.await;
    tracing::info!("stopping the components");
    let _ = stop_tx.send(true);
    if let Some((dns, _shards)) = dns {
        dns.stop();
    }
    for (name, task) in tasks {
        if tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .is_err()
        {
            tracing::warn!(component = name, "did not stop within 10 s");
        }
    }
}

fn nix_is_root() -> bool {
    // /proc/self/status's Uid line: real, effective, saved, fs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Starts the DNS server on `node_ip:53` and makes sure `kube-system/kube-dns` points at it.
async fn start_cluster_dns(
    kubeconfig: &std::path::Path,
    node_ip: IpAddr,
) -> anyhow::Result<(proxy_dp::dns::RunningClusterDns, shards::ShardSet)> {
    let client = Client::from_kubeconfig(kubeconfig)?;
    let shard_set = shards::ShardSet::start(shards::ShardConfig::default().shards(1).pin(false))?;
    let resolv = PathBuf::from("/etc/resolv.conf");
    let cfg = proxy_dp::dns::ClusterDnsConfig {
        zone: proxy_dp::dns::ZoneConfig::cluster_local(),
        server: proxy_dp::dns::ServerConfig::new(SocketAddr::new(node_ip, DNS_PORT)),
        resolv_conf: resolv.exists().then_some(resolv),
    };
    let dns = proxy_dp::dns::run_cluster_dns(client.clone(), shard_set.handle(), cfg).await?;
    ensure_kube_dns(&client, node_ip).await?;
    Ok((dns, shard_set))
}

fn dns_ports() -> [(&'static str, &'static str); 2] {
    [("dns", "UDP"), ("dns-tcp", "TCP")]
}

/// Creates the selector-less `kube-dns` Service and its endpoints when missing, and points
/// them at `node_ip` (the address may change between runs).
async fn ensure_kube_dns(client: &Client, node_ip: IpAddr) -> anyhow::Result<()> {
    let ns = "kube-system";
    let labels = std::collections::BTreeMap::from([
        ("k8s-app".to_string(), "kube-dns".to_string()),
        (
            "kubernetes.io/name".to_string(),
            "CoreDNS-compatible".to_string(),
        ),
    ]);
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("kube-dns".into()),
            namespace: Some(ns.into()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(CLUSTER_DNS_IP.into()),
            ports: Some(
                dns_ports()
                    .iter()
                    .map(|(name, proto)| ServicePort {
                        name: Some((*name).into()),
                        protocol: Some((*proto).into()),
                        port: DNS_PORT.into(),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    ignore_exists(services.create(&PostParams::default(), &svc).await)?;

    let mut slice_labels = labels.clone();
    slice_labels.insert("kubernetes.io/service-name".into(), "kube-dns".into());
    slice_labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        "kubeshard-up".into(),
    );
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("kube-dns-node".into()),
            namespace: Some(ns.into()),
            labels: Some(slice_labels),
            ..ObjectMeta::default()
        },
        address_type: if node_ip.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
        endpoints: vec![Endpoint {
            addresses: vec![node_ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            ..Endpoint::default()
        }],
        ports: Some(
            dns_ports()
                .iter()
                .map(
                    |(name, proto)| k8s_openapi::api::discovery::v1::EndpointPort {
                        name: Some((*name).into()),
                        protocol: Some((*proto).into()),
                        port: Some(DNS_PORT.into()),
                        ..Default::default()
                    },
                )
                .collect(),
        ),
    };
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    upsert(&slices, "kube-dns-node", slice).await?;

    let endpoints = Endpoints {
        metadata: ObjectMeta {
            name: Some("kube-dns".into()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress {
                ip: node_ip.to_string(),
                ..EndpointAddress::default()
            }]),
            ports: Some(
                dns_ports()
                    .iter()
                    .map(|(name, proto)| EndpointPort {
                        name: Some((*name).into()),
                        protocol: Some((*proto).into()),
                        port: DNS_PORT.into(),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
            ..EndpointSubset::default()
        }]),
    };
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    upsert(&eps, "kube-dns", endpoints).await?;
    Ok(())
}

fn ignore_exists<T>(r: Result<T, ClientError>) -> Result<(), ClientError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(409) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `obj`, or replaces the stored one (keeping its resourceVersion) when it exists.
async fn upsert<K: ApiObject>(api: &Api<K>, name: &str, mut obj: K) -> Result<(), ClientError> {
    match api.get_opt(name).await? {
        None => ignore_exists(api.create(&PostParams::default(), &obj).await),
        Some(cur) => {
            obj.meta_mut().resource_version = cur.meta().resource_version.clone();
            api.replace(name, &PostParams::default(), &obj)
                .await
                .map(|_| ())
        }
    }
}
