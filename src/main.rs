//! The `kubeshard` command line. This file holds only argument parsing and wiring; every
//! subcommand's work lives in a library crate.

use clap::{Parser, Subcommand};

mod up;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Kubernetes-compatible cluster system built for very large clusters.
#[derive(Debug, Parser)]
#[command(name = "kubeshard", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version of this binary and the Kubernetes version it serves.
    Version,
    /// The store and the apiserver; writes the admin kubeconfig to DIR/kubeconfig.
    Server(ServerArgs),
    /// The whole single-machine cluster: store, apiserver, scheduler, controllers, proxy, DNS.
    Up(UpArgs),
    /// Run the store alone, serving the etcd v3 gRPC API.
    Store(StoreArgs),
    /// The controllers (Deployment, ReplicaSet, Job, garbage collector, namespace, ...).
    ControllerManager(ControllerManagerArgs),
    /// Manage the node's image store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The service dataplane (Service VIPs and NodePorts forwarded to ready endpoints).
    Proxy(ProxyArgs),
    /// The scheduler: watches nodes and pods through the API and binds pending pods.
    Scheduler(SchedulerArgs),
    /// A kubelet: registers this machine as a Node and runs the pods bound to it.
    Node(NodeArgs),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Load an OCI image layout, OCI archive or `docker save` archive into the image store.
    Import {
        /// The archive file or layout directory.
        file: std::path::PathBuf,
        /// The node's data dir (default: ~/.kubeshard).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Pull an image from its registry into the image store.
    Pull {
        /// The image reference (`busybox`, `host:5000/repo:tag`, `repo@sha256:...`).
        reference: String,
        /// The node's data dir (default: ~/.kubeshard).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// A docker `config.json` with the registry's credentials.
        #[arg(long)]
        docker_config: Option<std::path::PathBuf>,
        /// A registry reached over plain HTTP or unverified HTTPS (repeatable).
        #[arg(long)]
        insecure_registry: Vec<String>,
    },
    /// List the images in the image store.
    Ls {
        /// The node's data dir (default: ~/.kubeshard).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
}

/// `kubeshard image import`: prints each imported image's id and names.
fn run_image(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Import { file, data_dir } => {
            let store = node::image::ImageStore::open(&data_dir.unwrap_or_else(default_data_dir))?;
            for img in store.import(&file)? {
                println!("{} {}", img.config, img.names.join(","));
            }
            Ok(())
        }
        ImageCommand::Pull {
            reference,
            data_dir,
            docker_config,
            insecure_registry,
        } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let line = rt
                .block_on(node::image::manager::pull_command(
                    &dir,
                    &reference,
                    docker_config.as_deref(),
                    insecure_registry,
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{line}");
            Ok(())
        }
        ImageCommand::Ls { data_dir } => {
            let store = node::image::ImageStore::open(&data_dir.unwrap_or_else(default_data_dir))?;
            print!("{}", node::image::manager::list_table(&store)?);
            Ok(())
        }
    }
}

#[derive(Debug, clap::Args)]
struct SchedulerArgs {
    /// The kubeconfig to reach the apiserver with.
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    /// A KubeSchedulerConfiguration file (profiles, plugins, weights).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Campaign for the kube-system/kube-scheduler Lease before scheduling.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Where /metrics listens (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:10251")]
    metrics_bind_address: std::net::SocketAddr,
}

/// Runs the scheduler until SIGTERM or SIGINT.
fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut opts = scheduler::shell::ShellOptions::new(args.kubeconfig);
        opts.config = args.config;
        opts.leader_elect = args.leader_elect;
        opts.metrics_addr = Some(args.metrics_bind_address);
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminated => {}
            }
        };
        scheduler::shell::run(opts, stop).await?;
        Ok(())
    })
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    components: up::ComponentArgs,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Where the store, the PKI and the kubeconfig live (default: ~/.kubeshard).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// The TLS port of the apiserver (0: any free port).
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// The address the TLS port binds.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: std::net::IpAddr,
    /// A plain-HTTP port on 127.0.0.1 for development; its requests are the admin.
    #[arg(long)]
    insecure_port: Option<u16>,
    /// The UDP port of the QUIC watch endpoint (default: the number of --port; 0: any).
    #[arg(long)]
    quic_port: Option<u16>,
    /// Serve no QUIC watch endpoint.
    #[arg(long, conflicts_with = "quic_port")]
    no_quic: bool,
    /// Extra names or addresses for the serving certificate (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Static bearer tokens: CSV `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<std::path::PathBuf>,
    /// Let requests without credentials through as system:anonymous.
    #[arg(long)]
    anonymous_auth: bool,
    /// Store objects in this etcd cluster (comma-separated client URLs) instead of the
    /// embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
}

/// Resolves on SIGTERM or SIGINT (never, if the handlers cannot be installed).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn default_data_dir() -> std::path::PathBuf {
    std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("."))
        .join(".kubeshard")
}

/// Runs the store and the apiserver (and with `up`, every other component) until SIGTERM or
/// SIGINT.
fn run_server(args: ServerArgs, up: Option<up::ComponentArgs>) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let mut opts = api::server::ServerOptions::new(&data_dir);
    opts.port = args.port;
    opts.bind_address = args.bind_address;
    opts.insecure_port = args.insecure_port;
    opts.quic = match (args.no_quic, args.quic_port) {
        (true, _) => api::quic::QuicPort::Off,
        (false, Some(p)) => api::quic::QuicPort::Port(p),
        (false, None) => api::quic::QuicPort::SameAsTls,
    };
    opts.extra_sans = args.tls_san;
    opts.token_auth_file = args.token_auth_file;
    opts.anonymous_auth = args.anonymous_auth;
    let mut engine = None;
    let server = if args.etcd_servers.is_empty() {
        let e = store::Engine::open(store::EngineConfig::durable(data_dir.join("store")))?;
        engine = Some(e.clone());
        api::server::start(opts, e)?
    } else {
        api::server::start_with_etcd(opts, &args.etcd_servers)?
    };
    let kubeconfig = server.kubeconfig.display().to_string();
    tracing::info!(port = server.port, insecure_port = ?server.insecure_port, quic_port = ?server.quic_port, "apiserver listening");
    if up.is_some() {
        println!(
            "kubeshard is up: the API server listens on https://127.0.0.1:{}",
            server.port
        );
        println!("Use it with:");
        println!("  export KUBECONFIG={kubeconfig}");
        println!("  kubectl get namespaces");
    } else {
        println!(
            "kubeshard server listening on port {}; kubeconfig: {kubeconfig}",
            server.port
        );
    }
    if let Some(p) = server.insecure_port {
        println!("plain HTTP (admin, development only) on http://127.0.0.1:{p}");
    }
    if let Some(p) = server.quic_port {
        println!("QUIC watch endpoint on UDP port {p}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        match up {
            Some(up) => {
                up::run(server.kubeconfig.clone(), data_dir.clone(), up, stop).await;
            }
            None => stop.await,
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopping");
    server.shutdown();
    if let Some(e) = engine {
        e.close();
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Where the store keeps its data (default: ~/.kubeshard).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Comma-separated `http://IP:PORT` URLs to serve the etcd v3 API on.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    listen_client_urls: Vec<String>,
    /// Serve over an existing etcd cluster (comma-separated client URLs) instead of the
    /// embedded engine.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
}

/// Runs the store alone (the etcd v3 face over the durable engine) until SIGTERM or SIGINT.
fn run_store(args: StoreArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use store::etcd_face;
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut engine = None;
        let backend: Arc<dyn store::Backend> = if args.etcd_endpoints.is_empty() {
            let e = store::Engine::open(store::EngineConfig::durable(data_dir.join("store")))?;
            engine = Some(e.clone());
            e
        } else {
            Arc::new(store::etcd_backend::EtcdBackend::connect(
                &store::etcd_backend::EtcdConfig::new(args.etcd_endpoints.clone()),
            )?)
        };
        let config = etcd_face::FaceConfig::from_seed(
            &data_dir.to_string_lossy(),
            args.listen_client_urls.clone(),
        );
        tracing::info!(urls = ?args.listen_client_urls, data_dir = %data_dir.display(), "kubeshard store: serving the etcd v3 API");
        etcd_face::serve_urls(backend, &args.listen_client_urls, config, etcd_face::shutdown_signal()).await?;
        if let Some(e) = engine {
            e.close();
        }
        tracing::info!("kubeshard store: stopped");
        Ok(())
    })
}

#[derive(Debug, clap::Args)]
struct ProxyArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    /// This node's name (for the Local traffic policies; default: the hostname).
    #[arg(long)]
    hostname_override: Option<String>,
    /// Where /metrics and /healthz listen.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: std::net::SocketAddr,
    /// Forwarding shards (cores).
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// TCP forwarding engine: adaptive (copy, then splice for bulk), splice, uring or copy.
    #[arg(long, default_value = "adaptive")]
    forward_mode: proxy_dp::ForwardMode,
    /// Addresses NodePorts listen on (comma-separated); LoadBalancer ingress IPs are served
    /// when they are among them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    nodeport_addresses: Vec<std::net::IpAddr>,
    /// Also run the service-LB controller (LoadBalancer Services get the nodes' addresses as
    /// ingress). `kubeshard up` runs it on its own; run it in one proxy of a cluster.
    #[arg(long)]
    service_lb: bool,
}

/// Runs the service dataplane until SIGTERM or SIGINT.
fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let node = match args.hostname_override {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_string(),
    };
    let dp = proxy_dp::DataplaneConfig::default()
        .node_name(node)
        .shards(args.shards)
        .forward_mode(args.forward_mode)
        .node_addresses(args.nodeport_addresses);
    let mut opts = proxy_dp::run::ProxyOptions::new(args.kubeconfig, dp);
    opts.metrics_addr = args.metrics_bind_address;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        if args.service_lb {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let kc = opts.kubeconfig.clone();
            let lb = tokio::spawn(async move {
                let mut rx = rx;
                proxy_dp::servicelb::run(&kc, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            });
            let r = proxy_dp::run::run(opts, stop).await;
            let _ = tx.send(true);
            let _ = lb.await;
            r?;
        } else {
            proxy_dp::run::run(opts, stop).await?;
        }
        anyhow::Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    // The node runtime re-executes this binary as its per-container shim: before anything else.
    node::shim::run_if_requested();
    // Commands that run a kubelet fork its shims from a zygote made now, while this process
    // has one thread (no exec of a shim binary per sandbox and container).
    if matches!(
        std::env::args_os()
            .nth(1)
            .and_then(|a| a.into_string().ok())
            .as_deref(),
        Some("up" | "node")
    ) {
        node::zygote::start();
    }
    // No transparent huge pages for the control plane: mimalloc asks for them on its arenas,
    // and every re-touch of a purged range then faults in and zeroes a whole 2 MiB page.
    // Measured on the store's durable put path (etcd_vs_store, 4 KiB x 64 clients, alternated
    // 3x): 138 -> 73 us of server CPU per put (BENCHMARKS.md, "store: transparent huge pages").
    // Best effort: without it the process still runs, only slower. The shim turns it back on.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("kubeshard: could not turn transparent huge pages off: {e}");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("kubeshard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Server(args) => run_server(args, None),
        Command::Up(args) => run_server(args.server, Some(args.components)),
        Command::Store(args) => run_store(args),
        Command::ControllerManager(args) => run_controller_manager(args),
        Command::Image(cmd) => run_image(cmd),
        Command::Proxy(args) => run_proxy(args),
        Command::Scheduler(args) => run_scheduler(args),
        Command::Node(args) => run_node(args),
    }
}

#[derive(Debug, clap::Args)]
struct ControllerManagerArgs {
    /// The kubeconfig to reach the apiserver with.
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    /// Controllers to run: `*` (all), `name`, `-name` (disable), comma-separated.
    #[arg(long, default_value = "*")]
    controllers: String,
    /// Serve Prometheus `/metrics` on this 127.0.0.1 port.
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Take the kube-system/kube-controller-manager Lease before running.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Give each Node a podCIDR out of --cluster-cidr.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    /// The pods' address range, carved into node ranges.
    #[arg(long, default_value = controllers::nodeipam::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: String,
    /// The prefix length of each node's range.
    #[arg(long, default_value_t = controllers::nodeipam::DEFAULT_NODE_MASK)]
    node_cidr_mask_size: u8,
    /// A node without a heartbeat this long goes Unknown and gets tainted (e.g. 40s, 1m).
    #[arg(long, default_value = "40s", value_parser = controllers::util::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How often every node's health is checked.
    #[arg(long, default_value = "5s", value_parser = controllers::util::parse_duration)]
    node_monitor_period: std::time::Duration,
}

/// Runs the controller-manager until SIGTERM or SIGINT (or lost leadership).
fn run_controller_manager(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut opts = controllers::manager::Options::new(args.kubeconfig);
    opts.controllers = args.controllers;
    opts.metrics_port = args.metrics_port;
    opts.leader_elect = args.leader_elect;
    opts.identity = format!("{}_{}", host.trim(), std::process::id());
    opts.nodes.allocate_node_cidrs = args.allocate_node_cidrs;
    opts.nodes.cluster_cidr = args.cluster_cidr.parse()?;
    opts.nodes.node_cidr_mask_size = args.node_cidr_mask_size;
    opts.nodes.monitor_grace_period = args.node_monitor_grace_period;
    opts.nodes.monitor_period = args.node_monitor_period;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(controllers::manager::run(opts, async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }))?;
    Ok(())
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The kubeconfig to reach the apiserver with.
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    /// The Node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Images, containers' state and manifests (default: ~/.kubeshard).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// The pod CIDR when the Node has no spec.podCIDR.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The node's address (default: the first global IPv4 address).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// Static pod manifests (default: DATA_DIR/manifests).
    #[arg(long)]
    pod_manifest_path: Option<std::path::PathBuf>,
    /// Run N simulated (hollow) kubelets instead: real API traffic, no containers.
    #[arg(long)]
    hollow: Option<usize>,
    /// Hollow nodes' names are PREFIX<index>.
    #[arg(long, default_value = "hollow-node-")]
    hollow_prefix: String,
    /// Index of the first hollow node (to split a fleet over several processes).
    #[arg(long, default_value_t = 0)]
    hollow_first_index: usize,
    /// A registry pulled from over plain HTTP or unverified HTTPS (repeatable).
    #[arg(long)]
    insecure_registry: Vec<String>,
    /// Image GC runs when the image filesystem is at least this full (percent).
    #[arg(long, default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Image GC frees down to this usage (percent).
    #[arg(long, default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// Hard eviction thresholds, as upstream's kubelet flag.
    #[arg(long, default_value = "memory.available<100Mi,nodefs.available<10%")]
    eviction_hard: String,
}

/// Runs a kubelet (or N hollow ones) until SIGTERM or SIGINT; its pods keep running.
fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    if let Some(count) = args.hollow {
        let mut cfg = node::hollow::HollowConfig::new(args.kubeconfig, count);
        cfg.name_prefix = args.hollow_prefix;
        cfg.first_index = args.hollow_first_index;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(async {
            node::hollow::run(cfg, stop_signal()).await?;
            anyhow::Ok(())
        });
    }
    let name = match args.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_ascii_lowercase(),
    };
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    // The shim is this binary (see `node::shim::run_if_requested` in main).
    let mut cfg = node::kubelet::KubeletConfig::new(&name, data_dir, std::env::current_exe()?);
    cfg.kubeconfig = Some(args.kubeconfig);
    cfg.pod_cidr = args.pod_cidr;
    cfg.node_ip = args.node_ip;
    cfg.pod_manifest_path = args.pod_manifest_path;
    cfg.insecure_registries = args.insecure_registry;
    cfg.image_gc.high_threshold_percent = args.image_gc_high_threshold;
    cfg.image_gc.low_threshold_percent = args.image_gc_low_threshold;
    cfg.eviction_hard = node::kubelet::eviction::parse_eviction_hard(&args.eviction_hard)
        .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        node::kubelet::Kubelet::run(cfg, stop).await?;
        anyhow::Ok(())
    })
}
