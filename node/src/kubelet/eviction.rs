//! The eviction manager: hard thresholds on `memory.available` and `nodefs.available`
//! (upstream's defaults `memory.available<100Mi`, `nodefs.available<10%`, set with
//! `--eviction-hard`), the MemoryPressure/DiskPressure conditions and their
//! `node.kubernetes.io/{memory,disk}-pressure:NoSchedule` taints (upstream's node lifecycle
//! controller adds those; no controller here does, so the kubelet keeps them), and one pod
//! evicted per pass while a threshold is crossed, ranked as upstream's `rankMemoryPressure` /
//! `rankDiskPressure`: pods whose usage exceeds their requests first, then lower priority,
//! then larger usage above requests; QoS class (BestEffort, Burstable, Guaranteed) breaks
//! ties. The evicted pod's worker kills it (grace 0, a hard threshold) and reports it
//! `Failed` with reason `Evicted` and upstream's message.

use std::sync::Arc;
use std::time::Duration;

use api::client::{Api, Patch, PatchParams};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use super::Ctx;
use super::events::{EventType, ObjectRef};
use super::quantity;

/// One hard threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Evict below this many bytes available.
    Bytes(u64),
    /// Evict below this percentage of capacity available.
    Percent(f64),
}

impl Threshold {
    fn crossed(self, available: u64, capacity: u64) -> bool {
        match self {
            Threshold::Bytes(b) => available < b,
            Threshold::Percent(p) => (available as f64) < capacity as f64 * p / 100.0,
        }
    }

    fn describe(self) -> String {
        match self {
            Threshold::Bytes(b) => quantity_string(b),
            Threshold::Percent(p) => format!("{p}%"),
        }
    }
}

/// The `--eviction-hard` thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `memory.available`.
    pub memory_available: Option<Threshold>,
    /// `nodefs.available`.
    pub nodefs_available: Option<Threshold>,
}

impl Default for Thresholds {
    /// Upstream's defaults: `memory.available<100Mi,nodefs.available<10%`.
    fn default() -> Thresholds {
        Thresholds {
            memory_available: Some(Threshold::Bytes(100 << 20)),
            nodefs_available: Some(Threshold::Percent(10.0)),
        }
    }
}

/// Parses `--eviction-hard` (`memory.available<100Mi,nodefs.available<10%`). Signals it does
/// not know are an error; an empty string disables hard eviction.
pub fn parse_eviction_hard(s: &str) -> Result<Thresholds, String> {
    let mut t = Thresholds {
        memory_available: None,
        nodefs_available: None,
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (signal, value) = part
            .split_once('<')
            .ok_or_else(|| format!("bad eviction threshold {part:?}: want signal<quantity"))?;
        let th = match value.trim().strip_suffix('%') {
            Some(p) => Threshold::Percent(
                p.parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| format!("bad percentage in {part:?}"))?,
            ),
            None => Threshold::Bytes(
                quantity::bytes(value.trim()).ok_or_else(|| format!("bad quantity in {part:?}"))?,
            ),
        };
        match signal.trim() {
            "memory.available" => t.memory_available = Some(th),
            "nodefs.available" => t.nodefs_available = Some(th),
            other => return Err(format!("unsupported eviction signal {other:?}")),
        }
    }
    Ok(t)
}

fn quantity_string(b: u64) -> String {
    for (shift, unit) in [(50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) {
            return format!("{}{unit}", b >> shift);
        }
    }
    if b >= 1 << 10 {
        return format!("{}Ki", b >> 10);
    }
    b.to_string()
}

/// What the node has (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    /// memory.available (MemAvailable).
    pub memory_available: u64,
    /// Memory capacity.
    pub memory_capacity: u64,
    /// nodefs.available (statfs of the data dir, available to unprivileged users).
    pub nodefs_available: u64,
    /// nodefs capacity.
    pub nodefs_capacity: u64,
}

/// Reads the signals for a node keeping its data in `data_dir`.
pub fn observe(data_dir: &std::path::Path) -> Signals {
    let (cap, avail) = super::machine::fs_bytes(data_dir).unwrap_or((0, 0));
    Signals {
        memory_available: super::machine::meminfo("MemAvailable").unwrap_or(u64::MAX),
        memory_capacity: super::machine::meminfo("MemTotal").unwrap_or(0),
        nodefs_available: avail,
        nodefs_capacity: cap,
    }
}

/// `(memory pressure, disk pressure)` under `t`.
pub fn pressure(t: &Thresholds, s: &Signals) -> (bool, bool) {
    (
        t.memory_available.is_some_and(|th| {
            s.memory_capacity > 0 && th.crossed(s.memory_available, s.memory_capacity)
        }),
        t.nodefs_available.is_some_and(|th| {
            s.nodefs_capacity > 0 && th.crossed(s.nodefs_available, s.nodefs_capacity)
        }),
    )
}

/// A pod the manager may evict.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Pod uid.
    pub uid: String,
    /// `BestEffort`, `Burstable` or `Guaranteed`.
    pub qos: &'static str,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// Usage of the resource under pressure (bytes).
    pub usage: u64,
    /// The pod's request of it (bytes; sum over its containers).
    pub request: u64,
}

fn qos_rank(q: &str) -> u8 {
    match q {
        "BestEffort" => 0,
        "Burstable" => 1,
        _ => 2,
    }
}

/// Orders candidates, first to evict first (see the module doc).
pub fn rank(mut c: Vec<Candidate>) -> Vec<Candidate> {
    c.sort_by(|a, b| {
        let exceeds = |x: &Candidate| x.usage > x.request;
        exceeds(b)
            .cmp(&exceeds(a))
            .then(a.priority.cmp(&b.priority))
            .then((b.usage as i128 - b.request as i128).cmp(&(a.usage as i128 - a.request as i128)))
            .then(qos_rank(a.qos).cmp(&qos_rank(b.qos)))
    });
    c
}

/// The sum of a resource's requests over a pod's containers (bytes).
pub fn pod_request(pod: &Pod, resource: &str) -> u64 {
    pod.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
                .filter_map(|q| quantity::bytes(&q.0))
                .sum()
        })
        .unwrap_or(0)
}

/// The pressure the node is under now, with the configured thresholds.
pub(crate) fn current(ctx: &Ctx) -> super::machine::Pressure {
    let (memory, disk) = pressure(&ctx.cfg.eviction_hard, &observe(&ctx.cfg.data_dir));
    let pid = super::machine::pressure(&ctx.cfg.data_dir).pid;
    super::machine::Pressure { memory, disk, pid }
}

const MEMORY_TAINT: &str = "node.kubernetes.io/memory-pressure";
const DISK_TAINT: &str = "node.kubernetes.io/disk-pressure";

/// Adds or removes the pressure taints to match `(memory, disk)`; bounded retries on
/// conflicts.
async fn sync_taints(ctx: &Ctx, memory: bool, disk: bool) {
    let Some(client) = ctx.client.clone() else {
        return;
    };
    let nodes: Api<Node> = Api::all(client);
    for _ in 0..3 {
        let Ok(Some(node)) = nodes.get_opt(&ctx.cfg.node_name).await else {
            return;
        };
        let mut taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let before = taints.clone();
        for (key, want) in [(MEMORY_TAINT, memory), (DISK_TAINT, disk)] {
            let has = taints.iter().any(|t| t.key == key);
            if want && !has {
                taints.push(k8s_openapi::api::core::v1::Taint {
                    key: key.into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                });
            } else if !want && has {
                taints.retain(|t| t.key != key);
            }
        }
        if taints == before {
            return;
        }
        let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": taints}});
        match nodes
            .patch(
                &ctx.cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => {
                tracing::warn!(node = %ctx.cfg.node_name, "updating the pressure taints: {e}");
                return;
            }
        }
    }
}

/// The eviction loop: every `eviction_interval`, observe, keep the taints, and evict one pod
/// per resource under pressure. Runs until aborted.
pub(crate) async fn run(ctx: Arc<Ctx>, stats: Arc<super::stats::StatsProvider>) {
    let mut last: Option<(bool, bool)> = None;
    loop {
        let sig = observe(&ctx.cfg.data_dir);
        let (mem, disk) = pressure(&ctx.cfg.eviction_hard, &sig);
        if last != Some((mem, disk)) {
            if mem || disk {
                tracing::warn!(node = %ctx.cfg.node_name, memory = mem, disk, ?sig, "node under pressure");
            }
            sync_taints(&ctx, mem, disk).await;
            last = Some((mem, disk));
        }
        if mem || disk {
            let rt = ctx.runtime.clone();
            let st = stats.clone();
            let usage = tokio::task::spawn_blocking(move || st.pod_usage(&rt))
                .await
                .unwrap_or_default();
            let (resource, threshold, available) = if mem {
                (
                    "memory",
                    ctx.cfg.eviction_hard.memory_available,
                    sig.memory_available,
                )
            } else {
                (
                    "ephemeral-storage",
                    ctx.cfg.eviction_hard.nodefs_available,
                    sig.nodefs_available,
                )
            };
            evict_one(&ctx, &usage, resource, threshold, available);
        }
        tokio::time::sleep(ctx.cfg.eviction_interval).await;
    }
}

fn evict_one(
    ctx: &Ctx,
    usage: &[super::stats::PodUsage],
    resource: &str,
    threshold: Option<Threshold>,
    available: u64,
) {
    let pods: Vec<Arc<Pod>> = ctx.pods.list();
    let mut cands = Vec::new();
    for u in usage {
        let Some(pod) = pods
            .iter()
            .find(|p| p.metadata.uid.as_deref() == Some(u.uid.as_str()))
        else {
            continue; // static pods (critical) and unknown sandboxes are not evicted
        };
        if pod.metadata.deletion_timestamp.is_some()
            || ctx.evictions.lock().contains_key(&u.uid)
            || matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        {
            continue;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        cands.push(Candidate {
            uid: u.uid.clone(),
            qos: super::worker::qos_class(&spec),
            priority: spec.priority.unwrap_or(0),
            usage: if resource == "memory" {
                u.memory_working_set_bytes
            } else {
                u.ephemeral_bytes
            },
            request: pod_request(pod, resource),
        });
    }
    let Some(victim) = rank(cands).into_iter().next() else {
        return;
    };
    let Some(pod) = pods
        .iter()
        .find(|p| p.metadata.uid.as_deref() == Some(victim.uid.as_str()))
    else {
        return;
    };
    let u = usage.iter().find(|u| u.uid == victim.uid);
    // Upstream's message: the threshold, what was available, and the containers' usage.
    let mut msg = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
        threshold.map_or_else(|| "0".into(), |t| t.describe()),
        quantity_string(available / 1024 * 1024),
    );
    if resource == "memory"
        && let Some(u) = u
    {
        for (c, ws) in &u.containers {
            let req = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|x| &x.name == c))
                .and_then(|x| {
                    x.resources
                        .as_ref()?
                        .requests
                        .as_ref()?
                        .get("memory")
                        .cloned()
                })
                .map_or_else(|| "0".into(), |q| q.0);
            msg.push_str(&format!(
                "Container {c} was using {}, request is {req}, has larger consumption of {resource}. ",
                quantity_string(*ws / 1024 * 1024)
            ));
        }
    }
    let msg = msg.trim_end().to_string();
    tracing::warn!(pod = %format!("{}/{}", u.map_or("", |u| u.namespace.as_str()), u.map_or("", |u| u.name.as_str())), "evicting: {msg}");
    ctx.events.record(
        ObjectRef::pod(pod, None),
        EventType::Warning,
        "Evicted",
        msg.clone(),
    );
    {
        let mut ev = ctx.evictions.lock();
        if ev.len() < 10_000 {
            ev.insert(victim.uid.clone(), msg);
        }
    }
    // Kill it now (grace 0: a hard threshold); the worker wakes on the exits and reports.
    let rt = ctx.runtime.clone();
    let uid = victim.uid.clone();
    tokio::spawn(async move {
        let sbs = rt.list_sandboxes().unwrap_or_default();
        for c in rt.list_containers().unwrap_or_default() {
            if sbs.iter().any(|s| s.id == c.sandbox_id && s.uid == uid)
                && c.state == crate::runtime::ContainerState::Running
            {
                let _ = rt.stop_container(&c.id, Duration::ZERO).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_eviction_hard() {
        assert_eq!(
            parse_eviction_hard("memory.available<100Mi,nodefs.available<10%").unwrap(),
            Thresholds::default()
        );
        let t = parse_eviction_hard("memory.available<1Gi").unwrap();
        assert_eq!(t.memory_available, Some(Threshold::Bytes(1 << 30)));
        assert_eq!(t.nodefs_available, None);
        assert!(parse_eviction_hard("imagefs.available<15%").is_err());
        assert!(parse_eviction_hard("memory.available>1").is_err());
        assert!(parse_eviction_hard("nodefs.available<120%").is_err());
        assert_eq!(
            parse_eviction_hard("").unwrap(),
            Thresholds {
                memory_available: None,
                nodefs_available: None
            }
        );
    }

    #[test]
    fn thresholds_cross() {
        let t = Thresholds::default();
        let mut s = Signals {
            memory_available: 200 << 20,
            memory_capacity: 4 << 30,
            nodefs_available: 50,
            nodefs_capacity: 100,
        };
        assert_eq!(pressure(&t, &s), (false, false));
        s.memory_available = 99 << 20;
        s.nodefs_available = 9;
        assert_eq!(pressure(&t, &s), (true, true));
    }

    #[test]
    fn ranking_follows_upstream() {
        let c = |uid: &str, qos: &'static str, priority: i32, usage: u64, request: u64| Candidate {
            uid: uid.into(),
            qos,
            priority,
            usage,
            request,
        };
        let order: Vec<String> = rank(vec![
            c("guaranteed-within", "Guaranteed", 0, 50, 100),
            c("burstable-over-a-bit", "Burstable", 0, 110, 100),
            c("besteffort-small", "BestEffort", 0, 10, 0),
            c("burstable-over-much", "Burstable", 0, 900, 100),
            c("high-priority-over", "BestEffort", 1000, 5000, 0),
        ])
        .into_iter()
        .map(|c| c.uid)
        .collect();
        assert_eq!(
            order,
            [
                "burstable-over-much",
                "besteffort-small",
                "burstable-over-a-bit",
                "high-priority-over",
                "guaranteed-within"
            ]
        );
    }
}
