//! Node registration, status and Lease: the Node object is created (or adopted) with the
//! machine's capacity, addresses, node info and labels; its status (conditions, images,
//! heartbeats) is written every `node_status_interval`; its Lease in `kube-node-lease` is
//! renewed every `lease_interval`.

use std::sync::Arc;
use std::time::Duration;

use api::client::{Api, ClientError, Patch, PatchParams, PostParams};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use serde_json::{Value, json};

use super::events::{EventType, ObjectRef};
use super::machine::{self, MachineInfo, Pressure};
use super::{Ctx, KUBELET_VERSION};

/// The namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` of the Lease (upstream's 40 s).
pub const LEASE_DURATION_SECS: i32 = 40;

/// Now, as the API's second-precision timestamps.
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Now, as a MicroTime (Lease renewTime).
pub(crate) fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The labels the kubelet puts on its Node.
pub fn node_labels(name: &str, m: &MachineInfo) -> Value {
    json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": m.arch,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": m.arch,
    })
}

/// Capacity and allocatable of the machine: `(capacity, allocatable)`.
pub fn resources(m: &MachineInfo, storage_bytes: u64, max_pods: u32) -> (Value, Value) {
    let cap = json!({
        "cpu": m.cpus.to_string(),
        "memory": format!("{}Ki", m.memory_bytes / 1024),
        "pods": max_pods.to_string(),
        "ephemeral-storage": format!("{}Ki", storage_bytes / 1024),
        "hugepages-2Mi": "0",
        "hugepages-1Gi": "0",
    });
    // Upstream's defaults reserve nothing but the hard eviction threshold (100Mi).
    let alloc_mem = m.memory_bytes.saturating_sub(100 << 20);
    let alloc = json!({
        "cpu": m.cpus.to_string(),
        "memory": format!("{}Ki", alloc_mem / 1024),
        "pods": max_pods.to_string(),
        "ephemeral-storage": format!("{}Ki", storage_bytes / 10 * 9 / 1024),
        "hugepages-2Mi": "0",
        "hugepages-1Gi": "0",
    });
    (cap, alloc)
}

fn condition(
    t: &str,
    on: bool,
    reason: &str,
    message: &str,
    old: Option<&Value>,
    now: &str,
) -> Value {
    let status = if on { "True" } else { "False" };
    let since = old
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|l| {
            l.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
        })
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    json!({"type": t, "status": status, "reason": reason, "message": message,
           "lastHeartbeatTime": now, "lastTransitionTime": since})
}

/// The Node conditions for `p` (transition times kept from `old`, the current status).
pub fn conditions(p: Pressure, old: Option<&Value>, now: &str) -> Value {
    let mem = if p.memory {
        (
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        )
    } else {
        (
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        )
    };
    let disk = if p.disk {
        ("KubeletHasDiskPressure", "kubelet has disk pressure")
    } else {
        ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
    };
    let pid = if p.pid {
        (
            "KubeletHasInsufficientPID",
            "kubelet has insufficient PID available",
        )
    } else {
        (
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        )
    };
    json!([
        condition("MemoryPressure", p.memory, mem.0, mem.1, old, now),
        condition("DiskPressure", p.disk, disk.0, disk.1, old, now),
        condition("PIDPressure", p.pid, pid.0, pid.1, old, now),
        condition(
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status",
            old,
            now
        ),
    ])
}

/// The Node's full status as the kubelet reports it.
pub(crate) fn node_status(ctx: &Ctx, old: Option<&Value>) -> Value {
    let m = &ctx.machine;
    let storage = machine::fs_bytes(&ctx.cfg.data_dir).map_or(0, |(t, _)| t);
    let (cap, alloc) = resources(m, storage, ctx.cfg.max_pods);
    let now = now_rfc3339();
    let images: Vec<Value> = ctx
        .runtime
        .images()
        .list()
        .unwrap_or_default()
        .into_iter()
        .take(50)
        .map(|i| {
            let mut names = i.names.clone();
            names.push(i.config.to_string());
            json!({"names": names})
        })
        .collect();
    // Upstream reports the hostname override, i.e. the node name.
    let hostname = ctx.cfg.node_name.clone();
    json!({
        "capacity": cap,
        "allocatable": alloc,
        "conditions": conditions(super::eviction::current(ctx), old, &now),
        "addresses": [
            {"type": "InternalIP", "address": ctx.host_ip},
            {"type": "Hostname", "address": hostname},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": ctx.cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": m.machine_id,
            "systemUUID": m.machine_id,
            "bootID": m.boot_id,
            "kernelVersion": m.kernel_version,
            "osImage": m.os_image,
            "containerRuntimeVersion": format!("kubeshard://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": m.arch,
        },
        "images": images,
    })
}

/// Creates the Node (or adopts an existing one, adding the kubelet's labels); returns it.
pub(crate) async fn register(ctx: &Ctx, nodes: &Api<Node>) -> Result<Node, ClientError> {
    let name = &ctx.cfg.node_name;
    let labels = node_labels(name, &ctx.machine);
    let mut spec = json!({});
    if let Some(c) = ctx.pod_cidr.read().clone() {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": spec,
    }))
    .map_err(|e| ClientError::Decode(e.to_string()))?;
    let node = match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(e) if e.is_already_exists() => {
            nodes
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": labels}})),
                )
                .await?
        }
        Err(e) => return Err(e),
    };
    let old = serde_json::to_value(&node.status).ok();
    let status = node_status(ctx, old.as_ref());
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
}

/// Creates or renews the node's Lease.
pub(crate) async fn renew_lease(
    ctx: &Ctx,
    leases: &Api<Lease>,
    node_uid: &str,
) -> Result<(), ClientError> {
    let name = &ctx.cfg.node_name;
    let spec = json!({"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECS,
                      "renewTime": now_micro()});
    match leases.get_opt(name).await? {
        Some(mut l) => {
            let spec: k8s_openapi::api::coordination::v1::LeaseSpec =
                serde_json::from_value(spec).map_err(|e| ClientError::Decode(e.to_string()))?;
            l.spec = Some(spec);
            leases.replace(name, &PostParams::default(), &l).await?;
        }
        None => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]},
                "spec": spec,
            }))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {
                    // The namespace is missing (a bare apiserver): create it, renew next round.
                    let ns: Api<Namespace> = Api::all(leases.client().clone());
                    let n: Namespace =
                        serde_json::from_value(json!({"metadata": {"name": LEASE_NAMESPACE}}))
                            .map_err(|e| ClientError::Decode(e.to_string()))?;
                    match ns.create(&PostParams::default(), &n).await {
                        Ok(_) => {}
                        Err(e) if e.is_already_exists() => {}
                        Err(e) => return Err(e),
                    }
                    leases.create(&PostParams::default(), &lease).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Registers, then keeps the Lease and the status fresh. Runs until aborted.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let Some(client) = ctx.client.clone() else {
        return;
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    ctx.events.record(
        ObjectRef::node(&ctx.cfg.node_name),
        EventType::Normal,
        "Starting",
        "Starting kubelet.".into(),
    );
    let mut delay = Duration::from_millis(200);
    let node = loop {
        match register(&ctx, &nodes).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(node = %ctx.cfg.node_name, "registering the node failed, retrying in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    tracing::info!(node = %ctx.cfg.node_name, "node registered");
    let mut last_pressure: Option<Pressure> = None;
    condition_events(&ctx, &mut last_pressure);
    let mut uid = node.metadata.uid.clone().unwrap_or_default();
    adopt_pod_cidr(&ctx, &node);
    let mut lease_at = tokio::time::Instant::now();
    let mut status_at = tokio::time::Instant::now() + ctx.cfg.node_status_interval;
    loop {
        let now = tokio::time::Instant::now();
        if now >= lease_at {
            match renew_lease(&ctx, &leases, &uid).await {
                Ok(()) => lease_at = now + ctx.cfg.lease_interval,
                Err(e) => {
                    tracing::warn!(node = %ctx.cfg.node_name, "renewing the lease: {e}");
                    lease_at = now + ctx.cfg.lease_interval.min(Duration::from_secs(2));
                }
            }
        }
        if now >= status_at {
            status_at = now + ctx.cfg.node_status_interval;
            match nodes.get_opt(&ctx.cfg.node_name).await {
                Ok(Some(n)) => {
                    adopt_pod_cidr(&ctx, &n);
                    uid = n.metadata.uid.clone().unwrap_or_default();
                    let old = serde_json::to_value(&n.status).ok();
                    let status = node_status(&ctx, old.as_ref());
                    condition_events(&ctx, &mut last_pressure);
                    if let Err(e) = nodes
                        .patch_status(
                            &ctx.cfg.node_name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": status})),
                        )
                        .await
                    {
                        tracing::warn!(node = %ctx.cfg.node_name, "updating the node status: {e}");
                    }
                }
                Ok(None) => {
                    // Deleted under us: register again, as upstream does after a restart.
                    if let Ok(n) = register(&ctx, &nodes).await {
                        uid = n.metadata.uid.clone().unwrap_or_default();
                    }
                }
                Err(e) => tracing::warn!(node = %ctx.cfg.node_name, "reading the node: {e}"),
            }
        }
        tokio::time::sleep_until(lease_at.min(status_at)).await;
    }
}

/// The node's condition events as upstream's kubelet records them ("Node n status is now:
/// NodeHasSufficientMemory", ..., "NodeReady"): all once after registration, then on each
/// change.
fn condition_events(ctx: &Ctx, last: &mut Option<Pressure>) {
    let p = super::eviction::current(ctx);
    let before = *last;
    *last = Some(p);
    let changed = |f: fn(&Pressure) -> bool| before.is_none_or(|b| f(&b) != f(&p));
    let mut out = Vec::new();
    if changed(|p| p.memory) {
        out.push(if p.memory {
            "NodeHasInsufficientMemory"
        } else {
            "NodeHasSufficientMemory"
        });
    }
    if changed(|p| p.disk) {
        out.push(if p.disk {
            "NodeHasDiskPressure"
        } else {
            "NodeHasNoDiskPressure"
        });
    }
    if changed(|p| p.pid) {
        out.push(if p.pid {
            "NodeHasInsufficientPID"
        } else {
            "NodeHasSufficientPID"
        });
    }
    if before.is_none() {
        out.push("NodeReady");
    }
    let name = &ctx.cfg.node_name;
    for reason in out {
        // Upstream records them all as Normal.
        ctx.events.record(
            ObjectRef::node(name),
            EventType::Normal,
            reason,
            format!("Node {name} status is now: {reason}"),
        );
    }
}

fn adopt_pod_cidr(ctx: &Ctx, node: &Node) {
    if let Some(c) = node.spec.as_ref().and_then(|s| s.pod_cidr.clone())
        && !c.is_empty()
    {
        let mut cur = ctx.pod_cidr.write();
        if cur.as_deref() != Some(c.as_str()) {
            tracing::info!(node = %ctx.cfg.node_name, pod_cidr = %c, "using the node's podCIDR");
            *cur = Some(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_transition_times() {
        let now = "2026-01-01T00:00:10Z";
        let old = json!({"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "t0"},
            {"type": "MemoryPressure", "status": "True", "lastTransitionTime": "t0"}]});
        let c = conditions(Pressure::default(), Some(&old), now);
        let l = c.as_array().unwrap();
        assert_eq!(l.len(), 4);
        let get = |t: &str| l.iter().find(|x| x["type"] == t).unwrap();
        assert_eq!(get("Ready")["lastTransitionTime"], "t0");
        assert_eq!(get("Ready")["lastHeartbeatTime"], now);
        assert_eq!(get("MemoryPressure")["status"], "False");
        assert_eq!(get("MemoryPressure")["lastTransitionTime"], now);
        let m = MachineInfo {
            cpus: 2,
            memory_bytes: 4 << 30,
            arch: "amd64".into(),
            ..MachineInfo::default()
        };
        let (cap, alloc) = resources(&m, 100 << 30, 110);
        assert_eq!(cap["cpu"], "2");
        assert_eq!(cap["memory"], "4194304Ki");
        assert_eq!(alloc["memory"], "4091904Ki");
        assert_eq!(cap["pods"], "110");
        assert_eq!(node_labels("n1", &m)["kubernetes.io/arch"], "amd64");
    }
}
