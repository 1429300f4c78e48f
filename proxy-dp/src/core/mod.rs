//! The sans-IO routing core: Services and EndpointSlices in, routes out.
//!
//! [`RoutingTable`] keeps, per Service, its parsed spec and its EndpointSlices, and derives
//! the routes of that Service alone: one per frontend (ClusterIP:port, externalIP:port,
//! LoadBalancer ingress IP:port, NodePort; TCP or UDP), each to an `Arc<`[`BackendSet`]`>`.
//! A change to one Service or EndpointSlice recomputes only that Service's routes, so its
//! cost is O(ports x endpoints of that Service), independent of the cluster's size.
//!
//! # What the shell owes the core
//!
//! 1. Feed every Service and EndpointSlice event in order ([`RoutingTable::apply_service`],
//!    [`RoutingTable::delete_service`], [`RoutingTable::apply_endpoint_slice`],
//!    [`RoutingTable::delete_endpoint_slice`]).
//! 2. After each call, drain [`RoutingTable::poll_effect`] until `None` and carry the effects
//!    out in order: add/remove the VIP addresses, start/stop listeners, and hand each
//!    `Upsert` to every shard's [`Balancer`] for that frontend (create or `update`).
//! 3. On each shard, choose backends with [`Balancer::pick`] (passing the time) and call
//!    [`Balancer::release`] when a connection ends; call [`Balancer::expire`] now and then.
//!
//! The core reads no clock, opens no socket and spawns nothing.

pub mod balance;
pub mod maglev;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use balance::{BackendSet, Balancer, Policy};

use crate::error::CoreError;

/// The label an EndpointSlice carries naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The annotation choosing a Service's balancing policy (`round-robin`, `least-connections`,
/// `maglev`).
pub const POLICY_ANNOTATION: &str = "proxy.kubeshard.io/lb-policy";
/// The ClientIP affinity timeout when the Service gives none (upstream's 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// A Service's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// L4 protocol of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn parse(p: Option<&str>) -> Option<Protocol> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None, // SCTP: not served by this dataplane
        }
    }
}

/// Where traffic arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// The virtual IP; `None` for a NodePort (served on the node's own addresses).
    pub ip: Option<IpAddr>,
    /// The port.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

/// What kind of address a frontend is (decides internal vs external traffic policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrontendKind {
    /// `spec.clusterIPs`.
    ClusterIp,
    /// `spec.externalIPs`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
    /// `spec.ports[].nodePort`.
    NodePort,
}

/// One effect for the shell to carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The first route on this VIP appeared: assign it to the node (loopback).
    AddAddress(IpAddr),
    /// The last route on this VIP went: remove it from the node.
    RemoveAddress(IpAddr),
    /// A route appeared or its backends changed: listen on the frontend if not yet, and give
    /// every shard's balancer the new set.
    Upsert {
        /// Where traffic arrives.
        frontend: Frontend,
        /// What kind of frontend.
        kind: FrontendKind,
        /// The backends.
        set: Arc<BackendSet>,
    },
    /// A route went: stop listening, drop the balancers.
    Remove(Frontend),
}

/// Counters of what the table did (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Services known.
    pub services: usize,
    /// Routes (frontends) installed.
    pub routes: usize,
    /// Frontends refused because another Service owns them (e.g. a NodePort conflict).
    pub conflicts: u64,
    /// Addresses, ports or protocols skipped as invalid.
    pub invalid: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SvcPort {
    name: String,
    port: u16,
    node_port: Option<u16>,
    protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct SvcSpec {
    ports: Vec<SvcPort>,
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    internal_local: bool,
    external_local: bool,
    affinity: Option<Duration>,
    policy: Policy,
}

#[derive(Debug, Clone)]
struct SlicePort {
    name: String,
    port: u16,
    protocol: Protocol,
}

#[derive(Debug, Clone)]
struct SliceEndpoint {
    ip: IpAddr,
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
}

#[derive(Debug, Clone, Default)]
struct Slice {
    ports: Vec<SlicePort>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Default)]
struct SvcState {
    spec: Option<SvcSpec>,
    slices: HashMap<String, Slice>,
    /// Routes this Service owns now.
    routes: HashMap<Frontend, (FrontendKind, Arc<BackendSet>)>,
}

/// The routing table (see the module doc).
#[derive(Debug)]
pub struct RoutingTable {
    node_name: String,
    services: HashMap<ServiceKey, SvcState>,
    /// (namespace, slice name) → its Service (to find it again on delete).
    slice_owner: HashMap<(String, String), ServiceKey>,
    /// Which Service owns each frontend.
    owners: HashMap<Frontend, ServiceKey>,
    /// Routes per VIP (the address is on the node while this is > 0).
    vip_refs: HashMap<IpAddr, usize>,
    /// The node's own addresses: never added or removed, and the only LoadBalancer ingress
    /// IPs served when set (see [`RoutingTable::with_local_addresses`]).
    local_addresses: HashSet<IpAddr>,
    effects: VecDeque<Effect>,
    stats: TableStats,
}

impl RoutingTable {
    /// An empty table for the node `node_name` (used by the `Local` traffic policies).
    pub fn new(node_name: impl Into<String>) -> RoutingTable {
        RoutingTable {
            node_name: node_name.into(),
            services: HashMap::new(),
            slice_owner: HashMap::new(),
            owners: HashMap::new(),
            vip_refs: HashMap::new(),
            local_addresses: HashSet::new(),
            effects: VecDeque::new(),
            stats: TableStats::default(),
        }
    }

    /// Tells the table the node's own addresses (call before the first change). They exist
    /// on the node already, so no route ever emits [`Effect::AddAddress`] or
    /// [`Effect::RemoveAddress`] for them. LoadBalancer ingress IPs are then served only when
    /// they are among them: the service-LB controller ([`crate::servicelb`]) lists every
    /// node's address, and each node serves its own; putting another node's address on this
    /// node's loopback would make this node answer ARP for it. Without local addresses every
    /// ingress IP is a VIP like a ClusterIP.
    #[must_use]
    pub fn with_local_addresses(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.local_addresses = ips.into_iter().collect();
        self
    }

    /// The next effect for the shell, oldest first.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The route on `frontend`, if any.
    pub fn route(&self, frontend: &Frontend) -> Option<(FrontendKind, &Arc<BackendSet>)> {
        let owner = self.owners.get(frontend)?;
        let (kind, set) = self.services.get(owner)?.routes.get(frontend)?;
        Some((*kind, set))
    }

    /// Every installed route (for a new shard or a test); O(routes).
    pub fn routes(&self) -> impl Iterator<Item = (Frontend, FrontendKind, &Arc<BackendSet>)> {
        self.services
            .values()
            .flat_map(|s| s.routes.iter().map(|(f, (k, set))| (*f, *k, set)))
    }

    /// Counters.
    pub fn stats(&self) -> TableStats {
        TableStats {
            services: self.services.values().filter(|s| s.spec.is_some()).count(),
            routes: self.owners.len(),
            ..self.stats
        }
    }

    /// A Service was added or changed.
    pub fn apply_service(&mut self, svc: &Service) -> Result<(), CoreError> {
        let key = service_key(&svc.metadata)?;
        let spec = self.parse_service(svc);
        let state = self.services.entry(key.clone()).or_default();
        if state.spec.as_ref() == Some(&spec) {
            return Ok(());
        }
        state.spec = Some(spec);
        self.recompute(&key);
        Ok(())
    }

    /// A Service was deleted: its routes go (its slices stay until they are deleted too).
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = ServiceKey::new(namespace, name);
        let Some(state) = self.services.get_mut(&key) else {
            return;
        };
        state.spec = None;
        self.recompute(&key);
        self.gc(&key);
    }

    /// An EndpointSlice was added or changed. Slices without the
    /// `kubernetes.io/service-name` label are refused with [`CoreError::NoService`].
    pub fn apply_endpoint_slice(&mut self, slice: &EndpointSlice) -> Result<(), CoreError> {
        let (ns, name) = object_name(&slice.metadata)?;
        let svc_name = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .ok_or_else(|| CoreError::NoService {
                slice: format!("{ns}/{name}"),
            })?;
        let key = ServiceKey::new(ns.clone(), svc_name.clone());
        let parsed = self.parse_slice(slice);
        let slice_id = (ns, name);
        if let Some(old) = self.slice_owner.get(&slice_id)
            && *old != key
        {
            // The slice moved to another Service (relabelled): drop it from the old one.
            let old = old.clone();
            if let Some(s) = self.services.get_mut(&old) {
                s.slices.remove(&slice_id.1);
            }
            self.recompute(&old);
            self.gc(&old);
        }
        self.slice_owner.insert(slice_id.clone(), key.clone());
        self.services
            .entry(key.clone())
            .or_default()
            .slices
            .insert(slice_id.1, parsed);
        self.recompute(&key);
        Ok(())
    }

    /// An EndpointSlice was deleted.
    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) {
        let id = (namespace.to_string(), name.to_string());
        let Some(key) = self.slice_owner.remove(&id) else {
            return;
        };
        if let Some(s) = self.services.get_mut(&key) {
            s.slices.remove(name);
        }
        self.recompute(&key);
        self.gc(&key);
    }

    /// Drops a Service's state once it has neither a spec nor slices.
    fn gc(&mut self, key: &ServiceKey) {
        if let Entry::Occupied(e) = self.services.entry(key.clone())
            && e.get().spec.is_none()
            && e.get().slices.is_empty()
        {
            e.remove();
        }
    }

    fn parse_ip(&mut self, s: &str) -> Option<IpAddr> {
        match s.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.stats.invalid += 1;
                None
            }
        }
    }

    fn parse_port(&mut self, p: i32) -> Option<u16> {
        match u16::try_from(p) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                self.stats.invalid += 1;
                None
            }
        }
    }

    fn parse_service(&mut self, svc: &Service) -> SvcSpec {
        let Some(spec) = svc.spec.as_ref() else {
            return SvcSpec::default();
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            return SvcSpec::default();
        }
        let mut out = SvcSpec::default();
        let ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(v), _) if !v.is_empty() => v.clone(),
            (_, Some(ip)) => vec![ip.clone()],
            _ => Vec::new(),
        };
        for ip in ips.iter().filter(|ip| !ip.is_empty() && *ip != "None") {
            if let Some(ip) = self.parse_ip(ip) {
                out.cluster_ips.push(ip);
            }
        }
        for ip in spec.external_ips.iter().flatten() {
            if let Some(ip) = self.parse_ip(ip) {
                out.external_ips.push(ip);
            }
        }
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
        for ing in ingress.into_iter().flatten().filter(|_| is_lb) {
            if let Some(ip) = ing.ip.as_deref()
                && let Some(ip) = self.parse_ip(ip)
                && (self.local_addresses.is_empty() || self.local_addresses.contains(&ip))
            {
                out.lb_ips.push(ip);
            }
        }
        let wants_node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        for p in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
                self.stats.invalid += 1;
                continue;
            };
            let Some(port) = self.parse_port(p.port) else {
                continue;
            };
            let node_port = match p.node_port {
                Some(np) if wants_node_ports => self.parse_port(np),
                _ => None,
            };
            out.ports.push(SvcPort {
                name: p.name.clone().unwrap_or_default(),
                port,
                node_port,
                protocol,
            });
        }
        out.internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        out.external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            let secs = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0);
            out.affinity = Some(secs.map_or(DEFAULT_AFFINITY_TIMEOUT, Duration::from_secs));
        }
        out.policy = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POLICY_ANNOTATION))
            .and_then(|v| Policy::from_annotation(v))
            .unwrap_or_default();
        out
    }

    fn parse_slice(&mut self, slice: &EndpointSlice) -> Slice {
        let mut out = Slice::default();
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            return out; // FQDN slices carry no addresses to forward to
        }
        for p in slice.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
                continue;
            };
            let Some(port) = p.port.and_then(|p| self.parse_port(p)) else {
                continue;
            };
            out.ports.push(SlicePort {
                name: p.name.clone().unwrap_or_default(),
                port,
                protocol,
            });
        }
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            // Upstream semantics: nil ready/serving mean true, nil terminating means false.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = ep.node_name.as_deref() == Some(self.node_name.as_str());
            for a in &ep.addresses {
                if let Some(ip) = self.parse_ip(a) {
                    out.endpoints.push(SliceEndpoint {
                        ip,
                        local,
                        ready,
                        serving,
                        terminating,
                    });
                }
            }
        }
        out
    }

    /// Recomputes the routes of one Service and emits the differences. O(this Service).
    fn recompute(&mut self, key: &ServiceKey) {
        let Some(state) = self.services.get(key) else {
            return;
        };
        let mut wanted: HashMap<Frontend, (FrontendKind, BackendSet)> = HashMap::new();
        if let Some(spec) = &state.spec {
            for port in &spec.ports {
                let set_for = |local_only: bool| {
                    let (backends, fallback) = choose_endpoints(state, port, local_only);
                    BackendSet::new(
                        key.clone(),
                        port.name.clone(),
                        backends,
                        fallback,
                        spec.policy,
                        spec.affinity,
                    )
                };
                let internal = set_for(spec.internal_local);
                let external = set_for(spec.external_local);
                let fe = |ip: Option<IpAddr>, port_no: u16| Frontend {
                    ip,
                    port: port_no,
                    protocol: port.protocol,
                };
                for ip in &spec.cluster_ips {
                    wanted.insert(
                        fe(Some(*ip), port.port),
                        (FrontendKind::ClusterIp, internal.clone()),
                    );
                }
                for ip in &spec.external_ips {
                    wanted.insert(
                        fe(Some(*ip), port.port),
                        (FrontendKind::ExternalIp, external.clone()),
                    );
                }
                for ip in &spec.lb_ips {
                    wanted.insert(
                        fe(Some(*ip), port.port),
                        (FrontendKind::LoadBalancer, external.clone()),
                    );
                }
                if let Some(np) = port.node_port {
                    wanted.insert(fe(None, np), (FrontendKind::NodePort, external.clone()));
                }
            }
        }
        // Removals first (so a VIP that moves between kinds is not dropped and re-added).
        let old: Vec<Frontend> = state
            .routes
            .keys()
            .filter(|f| !wanted.contains_key(f))
            .copied()
            .collect();
        for f in old {
            self.remove_route(key, f);
        }
        for (f, (kind, set)) in wanted {
            self.upsert_route(key, f, kind, set);
        }
    }

    fn remove_route(&mut self, key: &ServiceKey, f: Frontend) {
        if let Some(s) = self.services.get_mut(key) {
            s.routes.remove(&f);
        }
        if self.owners.get(&f) == Some(key) {
            self.owners.remove(&f);
            self.effects.push_back(Effect::Remove(f));
            if let Some(ip) = f.ip
                && !self.local_addresses.contains(&ip)
                && let Entry::Occupied(mut e) = self.vip_refs.entry(ip)
            {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                    self.effects.push_back(Effect::RemoveAddress(ip));
                }
            }
        }
    }

    fn upsert_route(&mut self, key: &ServiceKey, f: Frontend, kind: FrontendKind, set: BackendSet) {
        match self.owners.get(&f) {
            Some(owner) if owner != key => {
                // Another Service holds this frontend (e.g. a duplicate NodePort): first wins.
                self.stats.conflicts += 1;
                return;
            }
            Some(_) => {}
            None => {
                self.owners.insert(f, key.clone());
                if let Some(ip) = f.ip
                    && !self.local_addresses.contains(&ip)
                {
                    let n = self.vip_refs.entry(ip).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        self.effects.push_back(Effect::AddAddress(ip));
                    }
                }
            }
        }
        let Some(state) = self.services.get_mut(key) else {
            return;
        };
        let mut set = set;
        if let Some((k, old)) = state.routes.get(&f) {
            set = set.sized_like(old);
            if *k == kind && **old == set {
                return; // unchanged: keep the Arc so balancers keep their state
            }
        }
        let set = Arc::new(set);
        state.routes.insert(f, (kind, Arc::clone(&set)));
        self.effects.push_back(Effect::Upsert {
            frontend: f,
            kind,
            set,
        });
    }
}

/// The endpoints a Service port forwards to: ready ones (local only if asked), or, when
/// none is ready, the serving-but-terminating ones.
fn choose_endpoints(state: &SvcState, port: &SvcPort, local_only: bool) -> (Vec<SocketAddr>, bool) {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in state.slices.values() {
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            if local_only && !ep.local {
                continue;
            }
            let addr = SocketAddr::new(ep.ip, target.port);
            if ep.ready {
                ready.push(addr);
            } else if ep.serving && ep.terminating {
                terminating.push(addr);
            }
        }
    }
    if ready.is_empty() && !terminating.is_empty() {
        (terminating, true)
    } else {
        (ready, false)
    }
}

fn object_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<(String, String), CoreError> {
    let name = meta.name.clone().ok_or(CoreError::MissingName)?;
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    Ok((ns, name))
}

fn service_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<ServiceKey, CoreError> {
    let (ns, name) = object_name(meta)?;
    Ok(ServiceKey::new(ns, name))
}
