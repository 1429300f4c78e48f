//! The forwarding shell: the routing core's effects carried out on a [`shards::ShardSet`].
//!
//! - One control side ([`Dataplane::apply`]) owns the [`RoutingTable`]: it feeds it Service
//!   and EndpointSlice changes, assigns VIPs to the node device, binds one `SO_REUSEPORT`
//!   listener per shard for every new frontend (VIP:port, or each node address:NodePort), and
//!   broadcasts the changed routes to every shard. `apply` returns once every shard has them.
//! - Each shard keeps its own routes (a [`Balancer`] per frontend), connection and flow
//!   counts and a pipe pool; connections and flows stay on the shard that accepted them.
//!   ClientIP-affinity Services hand a new connection to the shard that owns the client IP
//!   (a stable hash), so affinity holds across shards.
//! - TCP: accept, pick, connect (failures retried on other backends within the connect
//!   timeout), forward ([`forward`]); a frontend with no backend accepts and resets at once.
//! - UDP: one flow per client address, forwarded through a connected socket to the chosen
//!   backend; replies go back from the frontend socket; flows expire when idle.

pub mod addr;
pub mod admin;
pub mod forward;
mod kernel;
pub mod metrics;
mod tcp;
mod udp;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use shards::{ShardConfig, ShardHandle, ShardSet};
use tokio::task::JoinHandle;

use crate::bpf::SockmapForwarder;
use crate::core::{BackendSet, Balancer, Effect, Frontend, Protocol, RoutingTable};
use crate::error::ShellError;
pub use forward::ForwardMode;
pub use metrics::{Metrics, ServiceMetrics};

/// How the dataplane runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DataplaneConfig {
    /// This node's name (for the `Local` traffic policies).
    pub node_name: String,
    /// Shards (cores) to forward on.
    pub shards: usize,
    /// Pin each shard to a core.
    pub pin: bool,
    /// Addresses NodePorts listen on (the node's own addresses).
    pub node_addresses: Vec<IpAddr>,
    /// The device VIPs are assigned to (`lo`), or `None` when something else assigns them.
    pub address_device: Option<String>,
    /// How TCP payload is moved.
    pub forward_mode: ForwardMode,
    /// The time to connect to a backend, retries on other backends included.
    pub connect_timeout: Duration,
    /// Open TCP connections per shard; beyond it new ones are reset (counted).
    pub max_connections_per_shard: usize,
    /// UDP flows per shard; beyond it datagrams of new flows are dropped (counted).
    pub max_udp_flows_per_shard: usize,
    /// A UDP flow with no datagram either way for this long is forgotten.
    pub udp_idle_timeout: Duration,
    /// Bytes asked for each splice pipe (`F_SETPIPE_SZ`); default [`forward::PIPE_SIZE`].
    pub pipe_size: usize,
    /// Whether established TCP connections are forwarded in the kernel (sockmap); see
    /// [`KernelForward`]. Connections the kernel path cannot take use `forward_mode`.
    pub kernel_forward: KernelForward,
    /// Connections the kernel path holds at once (all shards); beyond it new connections
    /// are forwarded in user space (`forward_mode`) and counted.
    pub kernel_max_connections: u32,
    /// Send the bytes a client has already sent on to the backend right after connecting,
    /// before the sockets are registered with the event loop (one non-blocking `recv`;
    /// default on). Off: the first bytes wait for epoll to report the client readable, as
    /// before session 8; kept so the bench can measure both in one run.
    pub first_bytes: bool,
}

/// Whether TCP payload is forwarded in the kernel (a sockmap with an `sk_skb` verdict
/// program, [`crate::bpf`]) or in user space ([`ForwardMode`]). Chosen once at start.
///
/// The default is `Off`: measured on this machine (BENCHMARKS.md, `## proxy-dp: kernel
/// forwarding with a sockmap`), the sockmap path moved 0.47x the bulk throughput of splice at
/// 2.1x its CPU per Gbit and 0.41x its short connections per second (see the crate doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelForward {
    /// The kernel path when it can be set up (BPF allowed, kernel support), else user space;
    /// the choice is logged.
    Auto,
    /// The kernel path or a start error ([`ShellError::Bpf`]). Experimental: on Linux 6.18
    /// it duplicated a segment in large transfers under pressure (see the crate doc).
    On,
    /// User space only (the default).
    #[default]
    Off,
}

impl std::str::FromStr for KernelForward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(KernelForward::Auto),
            "on" | "sockmap" | "1" => Ok(KernelForward::On),
            "off" | "0" => Ok(KernelForward::Off),
            other => Err(format!(
                "unknown kernel forwarding {other:?} (auto, on, off)"
            )),
        }
    }
}

/// The environment variable that overrides [`DataplaneConfig::kernel_forward`] where the
/// binary reads it ([`KernelForward::from_env`]): `auto`, `on` or `off`.
pub const KERNEL_FORWARD_ENV: &str = "KUBESHARD_PROXY_SOCKMAP";

impl KernelForward {
    /// `KUBESHARD_PROXY_SOCKMAP` if set and valid.
    pub fn from_env() -> Option<KernelForward> {
        std::env::var(KERNEL_FORWARD_ENV).ok()?.parse().ok()
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            node_name: String::new(),
            shards: 2,
            pin: false,
            node_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            address_device: Some("lo".into()),
            forward_mode: ForwardMode::default(),
            connect_timeout: Duration::from_secs(2),
            max_connections_per_shard: 16_384,
            max_udp_flows_per_shard: 16_384,
            udp_idle_timeout: Duration::from_secs(30),
            pipe_size: forward::PIPE_SIZE,
            kernel_forward: KernelForward::default(),
            kernel_max_connections: 65_536,
            first_bytes: true,
        }
    }
}

impl DataplaneConfig {
    /// Sets the node name.
    pub fn node_name(mut self, n: impl Into<String>) -> Self {
        self.node_name = n.into();
        self
    }
    /// Sets the shard count.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }
    /// Sets the NodePort addresses.
    pub fn node_addresses(mut self, a: Vec<IpAddr>) -> Self {
        self.node_addresses = a;
        self
    }
    /// Sets the VIP device (`None`: do not manage addresses).
    pub fn address_device(mut self, d: Option<String>) -> Self {
        self.address_device = d;
        self
    }
    /// Sets the forwarding engine.
    pub fn forward_mode(mut self, m: ForwardMode) -> Self {
        self.forward_mode = m;
        self
    }
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets the per-shard connection bound.
    pub fn max_connections_per_shard(mut self, n: usize) -> Self {
        self.max_connections_per_shard = n;
        self
    }
    /// Sets the per-shard UDP flow bound.
    pub fn max_udp_flows_per_shard(mut self, n: usize) -> Self {
        self.max_udp_flows_per_shard = n;
        self
    }
    /// Sets the UDP idle timeout.
    pub fn udp_idle_timeout(mut self, d: Duration) -> Self {
        self.udp_idle_timeout = d;
        self
    }
    /// Sets the bytes asked for each splice pipe.
    pub fn pipe_size(mut self, n: usize) -> Self {
        self.pipe_size = n;
        self
    }
    /// Sets whether the kernel data path is used.
    pub fn kernel_forward(mut self, k: KernelForward) -> Self {
        self.kernel_forward = k;
        self
    }
    /// Sets how many connections the kernel path holds at once.
    pub fn kernel_max_connections(mut self, n: u32) -> Self {
        self.kernel_max_connections = n;
        self
    }
    /// Sets whether a client's first bytes are sent on before the sockets are registered.
    pub fn first_bytes(mut self, on: bool) -> Self {
        self.first_bytes = on;
        self
    }
    /// Pins shards to cores.
    pub fn pin(mut self, p: bool) -> Self {
        self.pin = p;
        self
    }
}

/// One change for the table.
#[derive(Debug, Clone)]
pub enum Change {
    /// A Service was added or modified.
    Service(Arc<Service>),
    /// A Service was deleted.
    ServiceDeleted {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// An EndpointSlice was added or modified.
    Slice(Arc<EndpointSlice>),
    /// An EndpointSlice was deleted.
    SliceDeleted {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// Settings every shard reads.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) mode: ForwardMode,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_conns: usize,
    pub(crate) max_flows: usize,
    pub(crate) udp_idle: Duration,
    pub(crate) first_bytes: bool,
    pub(crate) metrics: Arc<Metrics>,
}

/// A route as a shard holds it.
pub(crate) struct ShardRoute {
    pub(crate) balancer: Balancer,
    pub(crate) metrics: Arc<ServiceMetrics>,
}

/// One shard's state (installed with `install_local`).
pub(crate) struct ShardState {
    pub(crate) settings: Arc<Settings>,
    pub(crate) routes: RefCell<HashMap<Frontend, ShardRoute>>,
    listeners: RefCell<HashMap<Frontend, Vec<JoinHandle<()>>>>,
    pub(crate) conns: Cell<usize>,
    pub(crate) flows: Cell<usize>,
    pub(crate) pools: forward::Pools,
    /// The kernel data path, when it is on.
    pub(crate) kernel: Option<kernel::KernelPath>,
}

type RouteUpdate = (Frontend, Arc<BackendSet>, Arc<ServiceMetrics>);

struct Control {
    table: RoutingTable,
    /// Frontends with listeners, and their Service (for per-Service metrics).
    listening: HashMap<Frontend, crate::core::ServiceKey>,
    addresses: HashSet<IpAddr>,
}

/// The running dataplane (see the module doc).
pub struct Dataplane {
    set: Option<ShardSet>,
    handle: ShardHandle,
    control: tokio::sync::Mutex<Control>,
    metrics: Arc<Metrics>,
    config: DataplaneConfig,
    sockmap: Option<Arc<SockmapForwarder>>,
}

impl Dataplane {
    /// Starts the shards. Call from outside them (any thread).
    pub async fn start(config: DataplaneConfig) -> Result<Dataplane, ShellError> {
        let set = ShardSet::start(
            ShardConfig::default()
                .shards(config.shards.max(1))
                .pin(config.pin)
                .thread_name_prefix("proxy"),
        )?;
        let handle = set.handle().clone();
        let metrics = Arc::new(Metrics::default());
        let sockmap = match config.kernel_forward {
            KernelForward::Off => {
                tracing::info!("TCP forwarding in user space ({:?})", config.forward_mode);
                None
            }
            k => match SockmapForwarder::new(config.kernel_max_connections) {
                Ok(s) => {
                    tracing::info!(
                        max_connections = config.kernel_max_connections,
                        "TCP forwarding in the kernel (sockmap)"
                    );
                    Some(Arc::new(s))
                }
                Err(e) if k == KernelForward::On => return Err(ShellError::Bpf(e)),
                Err(e) => {
                    tracing::info!(
                        error = %e,
                        "kernel forwarding unavailable; TCP forwarding in user space ({:?})",
                        config.forward_mode
                    );
                    None
                }
            },
        };
        let shard_sockmap = sockmap.clone();
        let pipe_size = config.pipe_size;
        let settings = Arc::new(Settings {
            mode: config.forward_mode,
            connect_timeout: config.connect_timeout,
            max_conns: config.max_connections_per_shard,
            max_flows: config.max_udp_flows_per_shard,
            udp_idle: config.udp_idle_timeout,
            first_bytes: config.first_bytes,
            metrics: Arc::clone(&metrics),
        });
        handle
            .install_local(move |_| ShardState {
                settings: Arc::clone(&settings),
                routes: RefCell::new(HashMap::new()),
                listeners: RefCell::new(HashMap::new()),
                conns: Cell::new(0),
                flows: Cell::new(0),
                pools: forward::Pools::new(pipe_size),
                kernel: shard_sockmap
                    .as_ref()
                    .map(|s| kernel::KernelPath::new(Arc::clone(s))),
            })
            .await
            .map_err(|e| ShellError::Invoke(e.to_string()))?;
        Ok(Dataplane {
            set: Some(set),
            handle,
            control: tokio::sync::Mutex::new(Control {
                table: RoutingTable::new(config.node_name.clone())
                    .with_local_addresses(config.node_addresses.iter().copied()),
                listening: HashMap::new(),
                addresses: HashSet::new(),
            }),
            metrics,
            config,
            sockmap,
        })
    }

    /// Whether TCP connections are forwarded in the kernel (decided at start).
    pub fn kernel_forwarding(&self) -> bool {
        self.sockmap.is_some()
    }

    /// Entries in the kernel path's two maps (`peers`, `active`; two per connection each),
    /// or `None` when the kernel path is off.
    pub fn kernel_map_entries(&self) -> Option<Result<(usize, usize), crate::bpf::BpfError>> {
        self.sockmap.as_ref().map(|s| s.entries())
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The shards' handle.
    pub fn handle(&self) -> &ShardHandle {
        &self.handle
    }

    /// Applies changes (in order) and returns once every shard routes by the new table.
    /// Objects the core refuses are logged and skipped; a listener or address that cannot be
    /// set up is counted in the metrics and logged, and the first such error is returned after
    /// everything else was applied.
    pub async fn apply(&self, changes: impl IntoIterator<Item = Change>) -> Result<(), ShellError> {
        let started = Instant::now();
        let mut control = self.control.lock().await;
        let c = &mut *control;
        let mut finals: HashMap<Frontend, Option<Arc<BackendSet>>> = HashMap::new();
        let mut addr_final: HashMap<IpAddr, bool> = HashMap::new();
        for change in changes {
            let r = match &change {
                Change::Service(s) => c.table.apply_service(s),
                Change::ServiceDeleted { namespace, name } => {
                    c.table.delete_service(namespace, name);
                    Ok(())
                }
                Change::Slice(s) => c.table.apply_endpoint_slice(s),
                Change::SliceDeleted { namespace, name } => {
                    c.table.delete_endpoint_slice(namespace, name);
                    Ok(())
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "change skipped");
            }
            while let Some(fx) = c.table.poll_effect() {
                match fx {
                    Effect::AddAddress(ip) => {
                        addr_final.insert(ip, true);
                    }
                    Effect::RemoveAddress(ip) => {
                        addr_final.insert(ip, false);
                    }
                    Effect::Upsert { frontend, set, .. } => {
                        finals.insert(frontend, Some(set));
                    }
                    Effect::Remove(f) => {
                        finals.insert(f, None);
                    }
                }
            }
        }
        let mut first_err: Option<ShellError> = None;
        // 1. Addresses that appear, so listeners can bind them.
        if let Some(dev) = &self.config.address_device {
            let add: Vec<IpAddr> = addr_final
                .iter()
                .filter(|(ip, add)| **add && !c.addresses.contains(*ip))
                .map(|(ip, _)| *ip)
                .collect();
            if let Err(e) = addr::change_addresses(dev, &add, true) {
                self.metrics
                    .address_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "adding service addresses");
                first_err.get_or_insert(e);
            }
            c.addresses.extend(add);
        }
        // 2. Routes to every shard (before listeners start, so the first accept finds them).
        let mut updates: Vec<RouteUpdate> = Vec::new();
        let mut removes: Vec<Frontend> = Vec::new();
        let mut new_frontends = Vec::new();
        for (f, set) in finals {
            match set {
                Some(set) => {
                    let m = match c.listening.get(&f) {
                        Some(svc) if *svc == set.service => self.metrics.service(&set.service),
                        Some(svc) => {
                            // The frontend moved to another Service.
                            self.metrics.route_removed(svc);
                            c.listening.insert(f, set.service.clone());
                            self.metrics.route_added(&set.service)
                        }
                        None => {
                            new_frontends.push(f);
                            c.listening.insert(f, set.service.clone());
                            self.metrics.route_added(&set.service)
                        }
                    };
                    updates.push((f, set, m));
                }
                None => {
                    if let Some(svc) = c.listening.remove(&f) {
                        // Per-Service metrics go with the Service's last route.
                        self.metrics.route_removed(&svc);
                        removes.push(f);
                    }
                }
            }
        }
        let updates = Arc::new(updates);
        let removes = Arc::new(removes);
        {
            let (u, r) = (Arc::clone(&updates), Arc::clone(&removes));
            self.handle
                .invoke_on_all(move || async move {
                    if let Some(st) = shards::local::<ShardState>() {
                        st.apply_routes(&u, &r);
                    }
                })
                .await
                .map_err(|e| ShellError::Invoke(e.to_string()))?;
        }
        // 3. Listeners for new frontends.
        for f in new_frontends {
            if let Err(e) = self.listen(f).await {
                self.metrics
                    .listen_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "listener");
                first_err.get_or_insert(e);
            }
        }
        // 4. Addresses that went (their listeners are gone).
        if let Some(dev) = &self.config.address_device {
            let del: Vec<IpAddr> = addr_final
                .iter()
                .filter(|(ip, add)| !**add && c.addresses.contains(*ip))
                .map(|(ip, _)| *ip)
                .collect();
            for ip in &del {
                c.addresses.remove(ip);
            }
            if let Err(e) = addr::change_addresses(dev, &del, false) {
                self.metrics
                    .address_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                first_err.get_or_insert(e);
            }
        }
        drop(control);
        self.metrics.observe_update(started.elapsed());
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The socket addresses a frontend listens on.
    fn listen_addrs(&self, f: Frontend) -> Vec<SocketAddr> {
        match f.ip {
            Some(ip) => vec![SocketAddr::new(ip, f.port)],
            None => self
                .config
                .node_addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, f.port))
                .collect(),
        }
    }

    async fn listen(&self, f: Frontend) -> Result<(), ShellError> {
        let n = self.handle.shard_count();
        for addr in self.listen_addrs(f) {
            match f.protocol {
                Protocol::Tcp => {
                    let (_, ls) =
                        shards::listen::bind_tcp(addr, n, shards::listen::DEFAULT_BACKLOG)
                            .map_err(|source| ShellError::Listen { addr, source })?;
                    // Accepted sockets inherit TCP_NODELAY from the listener (Linux copies
                    // it at accept): one `setsockopt` per connection saved.
                    for l in &ls {
                        let _ = socket2::SockRef::from(l).set_tcp_nodelay(true);
                    }
                    for (shard, l) in self.handle.shard_ids().zip(ls) {
                        self.handle
                            .invoke_on(shard, move || async move {
                                let Some(st) = shards::local::<ShardState>() else {
                                    return;
                                };
                                let Ok(l) = crate::bpf::async_fd(l, tokio::io::Interest::READABLE)
                                else {
                                    return;
                                };
                                let h = tokio::task::spawn_local(tcp::accept_loop(f, l));
                                st.listeners.borrow_mut().entry(f).or_default().push(h);
                            })
                            .await
                            .map_err(|e| ShellError::Invoke(e.to_string()))?;
                    }
                }
                Protocol::Udp => {
                    let (_, ss) = shards::listen::bind_udp(addr, n)
                        .map_err(|source| ShellError::Listen { addr, source })?;
                    for (shard, s) in self.handle.shard_ids().zip(ss) {
                        self.handle
                            .invoke_on(shard, move || async move {
                                let Some(st) = shards::local::<ShardState>() else {
                                    return;
                                };
                                let Ok(s) = tokio::net::UdpSocket::from_std(s) else {
                                    return;
                                };
                                let h = tokio::task::spawn_local(udp::serve(f, s));
                                st.listeners.borrow_mut().entry(f).or_default().push(h);
                            })
                            .await
                            .map_err(|e| ShellError::Invoke(e.to_string()))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Serves `/healthz` and `/metrics` over plain HTTP/1 on `addr` (on shard 0). Returns the
    /// bound address.
    pub async fn serve_admin(&self, addr: SocketAddr) -> Result<SocketAddr, ShellError> {
        let l = std::net::TcpListener::bind(addr).map_err(|source| ShellError::Io {
            what: "binding the admin listener",
            source,
        })?;
        l.set_nonblocking(true).map_err(|source| ShellError::Io {
            what: "admin listener",
            source,
        })?;
        let bound = l.local_addr().map_err(|source| ShellError::Io {
            what: "admin listener",
            source,
        })?;
        let m = Arc::clone(&self.metrics);
        self.handle
            .invoke_on(shards::ShardId(0), move || async move {
                if let Ok(l) = tokio::net::TcpListener::from_std(l) {
                    tokio::task::spawn_local(admin::serve(l, m));
                }
            })
            .await
            .map_err(|e| ShellError::Invoke(e.to_string()))?;
        Ok(bound)
    }

    /// Stops forwarding: removes the VIPs this dataplane added and shuts the shards down.
    pub fn shutdown(mut self) -> Result<(), ShellError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), ShellError> {
        // Addresses first: joining the shards waits for their threads, and a VIP must not
        // outlive the dataplane even if a shard never stops.
        let mut result = Ok(());
        if let Some(dev) = &self.config.address_device {
            let ips: Vec<IpAddr> = self.control.get_mut().addresses.drain().collect();
            result = addr::change_addresses(dev, &ips, false);
        }
        if let Some(set) = self.set.take()
            && let Err(e) = set.shutdown()
        {
            result = result.and(Err(ShellError::Invoke(e.to_string())));
        }
        result
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "dataplane teardown");
        }
    }
}

impl ShardState {
    fn apply_routes(&self, updates: &[RouteUpdate], removes: &[Frontend]) {
        let mut routes = self.routes.borrow_mut();
        for f in removes {
            routes.remove(f);
            if let Some(hs) = self.listeners.borrow_mut().remove(f) {
                for h in hs {
                    h.abort();
                }
            }
        }
        for (f, set, m) in updates {
            match routes.get_mut(f) {
                Some(r) => {
                    r.balancer.update(Arc::clone(set));
                    r.metrics = Arc::clone(m);
                }
                None => {
                    routes.insert(
                        *f,
                        ShardRoute {
                            balancer: Balancer::new(Arc::clone(set)),
                            metrics: Arc::clone(m),
                        },
                    );
                }
            }
        }
    }
}

/// A shard's state, for the tasks that run on it.
pub(crate) fn shard_state() -> Option<Rc<ShardState>> {
    shards::local::<ShardState>()
}
