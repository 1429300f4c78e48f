//! The service load balancer for a single machine or a lab (what k3s's servicelb does):
//! every `type: LoadBalancer` Service gets `status.loadBalancer.ingress` = the Ready nodes'
//! `InternalIP` addresses, and each node's dataplane serves `ingressIP:port` on its own
//! address (see [`crate::core::RoutingTable::with_local_addresses`]).
//!
//! - Only Services without `spec.loadBalancerClass` are ours (upstream's rule for the default
//!   load balancer); Services with a class are left to their controller.
//! - Every node address serves every LoadBalancer Service, so two Services may not share a
//!   `(protocol, port)`: the older Service (creation time, then namespace/name) keeps the
//!   port; the newer gets no ingress, a `LoadBalancerPortsAllocated=False` condition with
//!   reason `PortConflict`, and a Warning Event naming the owner. The others are unaffected.
//!   When the owner goes, the next Service gets the port on the following pass.
//! - A Service that stops being a LoadBalancer (or gets a class) loses the ingress and the
//!   condition this controller set.
//!
//! The core ([`plan`], [`desired_status`]) is pure; [`run`] is the shell: Service and Node
//! informers, one reconcile pass per burst of changes (and every [`RESYNC`]), a merge patch
//! of `status` only where it differs. A pass is O(Services): this is a lab controller, and
//! LoadBalancer Services are few.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::client::runtime::{Informer, Store};
use api::client::{Api, Client, ListParams, Patch, PatchParams, PostParams};
use k8s_openapi::api::core::v1::{
    Event, EventSource, LoadBalancerIngress, LoadBalancerStatus, Node, ObjectReference, Service,
    ServiceStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};

/// The condition this controller sets on LoadBalancer Services.
pub const CONDITION: &str = "LoadBalancerPortsAllocated";
/// The Event reason (and condition reason) of a port conflict.
pub const REASON_CONFLICT: &str = "PortConflict";
/// The component name on Events.
pub const COMPONENT: &str = "service-lb-controller";
/// A full pass runs at least this often (missed events, nodes whose readiness changed).
pub const RESYNC: Duration = Duration::from_secs(30);

/// What one Service should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A LoadBalancer Service of ours that holds all its ports: these ingress IPs (sorted).
    Serve(Vec<IpAddr>),
    /// A LoadBalancer Service of ours whose `protocol/port` an older Service holds.
    Conflict {
        /// `TCP/80`.
        port: String,
        /// The owner, `namespace/name`.
        owner: String,
    },
    /// Not ours (any more): no ingress, no condition of ours.
    Release,
    /// A LoadBalancer Service of another class: leave it alone.
    Foreign,
}

/// The Ready nodes' `InternalIP` addresses, sorted and without duplicates.
pub fn node_ingress_ips<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = nodes
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| n.status.as_ref())
        .filter(|st| {
            st.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .flat_map(|st| st.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

/// The `(protocol, port)` pairs a Service exposes (protocol defaults to TCP; invalid ports,
/// which the API rejects anyway, are skipped).
fn ports(svc: &Service) -> Vec<(String, u16)> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p > 0)?;
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), port))
        })
        .collect()
}

/// Decides every Service: ours get the node IPs unless a port is taken by an older one.
/// Returns `namespace/name` → decision for every Service given.
pub fn plan<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    node_ips: &[IpAddr],
) -> BTreeMap<String, Decision> {
    let mut out = BTreeMap::new();
    let mut ours: Vec<&Service> = Vec::new();
    for s in services {
        let spec = s.spec.as_ref();
        let is_lb = spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
        let class = spec.and_then(|s| s.load_balancer_class.as_deref());
        match (is_lb, class) {
            (true, None) => ours.push(s),
            (true, Some(_)) => {
                out.insert(key(&s.metadata), Decision::Foreign);
            }
            (false, _) => {
                out.insert(key(&s.metadata), Decision::Release);
            }
        }
    }
    // Oldest first; ties (same second) by name, so every pass decides alike.
    ours.sort_by(|a, b| {
        let t = |s: &Service| s.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| key(&a.metadata).cmp(&key(&b.metadata)))
    });
    let mut held: HashMap<(String, u16), String> = HashMap::new();
    for s in ours {
        let k = key(&s.metadata);
        let wanted = ports(s);
        let clash = wanted
            .iter()
            .find_map(|p| held.get(p).map(|owner| (p, owner.clone())));
        let d = match clash {
            Some(((proto, port), owner)) => Decision::Conflict {
                port: format!("{proto}/{port}"),
                owner,
            },
            None => {
                for p in wanted {
                    held.insert(p, k.clone());
                }
                Decision::Serve(node_ips.to_vec())
            }
        };
        out.insert(k, d);
    }
    out
}

/// The status `svc` should have under `d`, or `None` when it has it already (so a pass that
/// changes nothing writes nothing). `now` stamps a condition whose status changes.
pub fn desired_status(svc: &Service, d: &Decision, now: &Time) -> Option<ServiceStatus> {
    let current = svc.status.clone().unwrap_or_default();
    let cur_ingress: Vec<LoadBalancerIngress> = current
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    let mut conditions: Vec<Condition> = current
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != CONDITION)
        .collect();
    let old = current
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION)
        .cloned();
    let cond = |status: &str, reason: &str, message: String| {
        let changed = old.as_ref().is_none_or(|o| o.status != status);
        Condition {
            type_: CONDITION.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: svc.metadata.generation,
            last_transition_time: match (&old, changed) {
                (Some(o), false) => o.last_transition_time.clone(),
                _ => now.clone(),
            },
        }
    };
    let (ingress, condition) = match d {
        Decision::Foreign => return None,
        Decision::Release => (Vec::new(), None),
        Decision::Serve(ips) => (
            ips.iter()
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ip_mode: Some("VIP".into()),
                    ..Default::default()
                })
                .collect(),
            Some(cond(
                "True",
                "Allocated",
                "every port is served on the nodes' addresses".into(),
            )),
        ),
        Decision::Conflict { port, owner } => (
            Vec::new(),
            Some(cond(
                "False",
                REASON_CONFLICT,
                format!("port {port} is already used by LoadBalancer Service {owner}"),
            )),
        ),
    };
    if let Some(c) = condition {
        conditions.push(c);
    }
    let same_ingress = cur_ingress.len() == ingress.len()
        && cur_ingress
            .iter()
            .zip(&ingress)
            .all(|(a, b)| a.ip == b.ip && a.hostname.is_none());
    let same_cond = {
        let now_c = conditions.iter().find(|c| c.type_ == CONDITION);
        match (&old, now_c) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.status == b.status && a.reason == b.reason && a.message == b.message
            }
            _ => false,
        }
    };
    if same_ingress && same_cond {
        return None;
    }
    Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(ingress),
        }),
        conditions: Some(conditions),
    })
}

/// The service-LB controller failed to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceLbError {
    /// The kubeconfig could not be loaded or the client not built. Not retryable as is.
    #[error("API client: {0}")]
    Client(#[from] api::client::ClientError),
}

/// Runs the controller until `stop` resolves. Call inside a tokio runtime.
pub async fn run(
    kubeconfig: &std::path::Path,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceLbError> {
    let client = Client::from_kubeconfig(kubeconfig)?;
    run_with(client, stop).await;
    Ok(())
}

/// [`run`] with a client.
pub async fn run_with(client: Client, stop: impl std::future::Future<Output = ()>) {
    let (svc_store, svc_inf) =
        Informer::new(Api::<Service>::all(client.clone()), ListParams::default());
    let (node_store, node_inf) =
        Informer::new(Api::<Node>::all(client.clone()), ListParams::default());
    let wake = Arc::new(tokio::sync::Notify::new());
    let w1 = Arc::clone(&wake);
    let w2 = Arc::clone(&wake);
    let t1 = tokio::spawn(svc_inf.run(move |_| w1.notify_one()));
    let t2 = tokio::spawn(node_inf.run(move |_| w2.notify_one()));
    let mut events = Recent::default();
    let work = async {
        svc_store.wait_until_synced().await;
        node_store.wait_until_synced().await;
        tracing::info!("service-lb: informers synced");
        loop {
            reconcile(&client, &svc_store, &node_store, &mut events).await;
            // A burst of changes wakes one pass; a failed write is retried by the resync.
            let _ = tokio::time::timeout(RESYNC, wake.notified()).await;
        }
    };
    tokio::select! {
        () = work => {}
        () = stop => {}
    }
    t1.abort();
    t2.abort();
}

/// Events already sent, so a conflict that stays is reported once per 10 minutes (bounded).
#[derive(Default)]
struct Recent(HashMap<String, Instant>);

impl Recent {
    fn first(&mut self, k: String) -> bool {
        let now = Instant::now();
        if self
            .0
            .get(&k)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(600))
        {
            return false;
        }
        if self.0.len() >= 4096 {
            self.0.clear();
        }
        self.0.insert(k, now);
        true
    }
}

async fn reconcile(
    client: &Client,
    svcs: &Store<Service>,
    nodes: &Store<Node>,
    events: &mut Recent,
) {
    let node_list = nodes.list();
    let ips = node_ingress_ips(node_list.iter().map(|n| &**n));
    let list = svcs.list();
    let decisions = plan(list.iter().map(|s| &**s), &ips);
    let now = Time(timestamp_now());
    let mut seen = HashSet::new();
    for svc in &list {
        let k = key(&svc.metadata);
        let Some(d) = decisions.get(&k) else { continue };
        seen.insert(k.clone());
        let Some(status) = desired_status(svc, d, &now) else {
            continue;
        };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => tracing::info!(service = %k, decision = ?d, "service-lb: status updated"),
            Err(e) => tracing::warn!(service = %k, error = %e, "service-lb: status update"),
        }
        if let Decision::Conflict { port, owner } = d
            && events.first(format!("{k}/{port}/{owner}"))
        {
            let msg = format!(
                "port {port} is already used by LoadBalancer Service {owner}; this Service gets no ingress until the port is free"
            );
            record_event(client, svc, &msg).await;
        }
    }
}

/// The wall clock as an API timestamp (the shell's clock; the core is given times).
fn timestamp_now() -> k8s_openapi::jiff::Timestamp {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    k8s_openapi::jiff::Timestamp::from_nanosecond(i128::try_from(nanos).unwrap_or(0))
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

async fn record_event(client: &Client, svc: &Service, message: &str) {
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let now = timestamp_now();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some(name),
            namespace: Some(ns.clone()),
            uid: svc.metadata.uid.clone(),
            resource_version: svc.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(REASON_CONFLICT.into()),
        message: Some(message.into()),
        type_: Some("Warning".into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.into()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::debug!(error = %e, "service-lb: event not recorded");
    }
}
