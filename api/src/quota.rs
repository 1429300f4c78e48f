//! ResourceQuota evaluation, shared by the apiserver's quota admission and the
//! controller-manager's ResourceQuota controller (one definition of "what an object uses").
//!
//! Pure functions over k8s-openapi types, no IO, no clock (callers pass `now`). Follows
//! upstream `pkg/quota/v1` and `plugin/pkg/admission/resourcequota`:
//! - pods use `pods`, `count/pods`, `cpu`/`requests.cpu`, `memory`/`requests.memory`,
//!   `limits.cpu`, `limits.memory`, `ephemeral-storage` (and `requests.`/`limits.` forms),
//!   extended resources as `requests.<name>`; terminal pods (and pods past their deletion
//!   grace) keep only `count/pods`;
//! - services use `services`, `services.loadbalancers`, `services.nodeports`;
//! - claims use `persistentvolumeclaims`, `requests.storage` and the per-class
//!   `<class>.storageclass.storage.k8s.io/...` forms;
//! - everything else uses `count/<resource>[.<group>]` (and the legacy `configmaps`,
//!   `secrets`, `replicationcontrollers`, `resourcequotas` names);
//! - scopes (`Terminating`, `NotTerminating`, `BestEffort`, `NotBestEffort`, a
//!   `PriorityClass` scopeSelector) select pods only; a scoped quota never matches other kinds.
//!
//! Amounts are `i128` thousandths of the unit (`Quantity.MilliValue()`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, Pod, ResourceQuota, ScopedResourceSelectorRequirement,
    Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Resource name -> amount in thousandths.
pub type Usage = BTreeMap<String, i128>;

/// Parses a quantity (`100m`, `1.5Gi`, `2e3`) into thousandths, rounding up as
/// `MilliValue()` does ([`crate::quantity::parse_milli`]). `None` when malformed.
pub fn parse_milli(s: &str) -> Option<i128> {
    crate::quantity::parse_milli(s).ok().map(i128::from)
}

/// Formats thousandths as a canonical quantity: `500m`, `3`, `2k`, `128Mi` (binary suffixes
/// for byte-like resources, decimal otherwise, as upstream's canonical forms).
pub fn format_milli(name: &str, milli: i128) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let v = milli / 1000;
    if v == 0 {
        return "0".into();
    }
    let bytes = name.contains("memory") || name.contains("storage") || name.contains("hugepages");
    if bytes {
        for (suffix, shift) in [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ] {
            let unit = 1i128 << shift;
            if v % unit == 0 {
                return format!("{}{suffix}", v / unit);
            }
        }
    }
    for (suffix, unit) in [
        ("E", 1_000_000_000_000_000_000i128),
        ("P", 1_000_000_000_000_000),
        ("T", 1_000_000_000_000),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("k", 1_000),
    ] {
        if v % unit == 0 {
            return format!("{}{suffix}", v / unit);
        }
    }
    v.to_string()
}

/// Parses a `hard`/`used` map; malformed amounts are left out (validation rejects them).
pub fn parse_list(list: Option<&BTreeMap<String, Quantity>>) -> Usage {
    list.into_iter()
        .flatten()
        .filter_map(|(k, q)| parse_milli(&q.0).map(|v| (k.clone(), v)))
        .collect()
}

/// The object an evaluation is about.
#[derive(Clone, Copy, Debug)]
pub enum Object<'a> {
    /// A pod (compute resources, scopes).
    Pod(&'a Pod),
    /// A Service (load balancers, node ports).
    Service(&'a Service),
    /// A PersistentVolumeClaim (storage requests).
    Claim(&'a PersistentVolumeClaim),
    /// Any other namespaced object: counted only, by resource and group.
    Other {
        /// API group (`""` for core).
        group: &'a str,
        /// Plural resource name.
        resource: &'a str,
    },
}

impl Object<'_> {
    fn resource(&self) -> (&str, &str) {
        match self {
            Self::Pod(_) => ("", "pods"),
            Self::Service(_) => ("", "services"),
            Self::Claim(_) => ("", "persistentvolumeclaims"),
            Self::Other { group, resource } => (group, resource),
        }
    }
}

/// `count/<resource>` (core) or `count/<resource>.<group>`.
pub fn count_name(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// Whether `name` is a resource the evaluator of `obj` tracks.
pub fn tracks(obj: &Object<'_>, name: &str) -> bool {
    let (group, resource) = obj.resource();
    if name == count_name(group, resource) {
        return true;
    }
    match obj {
        Object::Pod(_) => {
            matches!(name, "pods" | "cpu" | "memory" | "ephemeral-storage")
                || name.starts_with("requests.")
                || name.starts_with("limits.")
                || name.starts_with("hugepages-")
        }
        Object::Service(_) => matches!(
            name,
            "services" | "services.loadbalancers" | "services.nodeports"
        ),
        Object::Claim(_) => {
            matches!(name, "persistentvolumeclaims" | "requests.storage")
                || name.contains(STORAGE_CLASS_SUFFIX)
        }
        Object::Other { group, resource } => {
            group.is_empty()
                && matches!(
                    (*resource, name),
                    ("configmaps", "configmaps")
                        | ("secrets", "secrets")
                        | ("replicationcontrollers", "replicationcontrollers")
                        | ("resourcequotas", "resourcequotas")
                )
        }
    }
}

fn add(u: &mut Usage, name: &str, v: i128) {
    *u.entry(name.to_string()).or_default() += v;
}

fn container_list(c: &Container, limits: bool) -> Usage {
    parse_list(c.resources.as_ref().and_then(|r| {
        if limits {
            r.limits.as_ref()
        } else {
            r.requests.as_ref()
        }
    }))
}

/// Upstream `PodRequests`/`PodLimits`: the sum over containers (and restartable init
/// containers), at least each plain init container's, plus the pod overhead.
fn pod_resources(pod: &Pod, limits: bool) -> Usage {
    let Some(spec) = pod.spec.as_ref() else {
        return Usage::new();
    };
    let mut sum = Usage::new();
    for c in &spec.containers {
        for (k, v) in container_list(c, limits) {
            add(&mut sum, &k, v);
        }
    }
    let mut sidecars = Usage::new();
    let mut init_max = Usage::new();
    for c in spec.init_containers.iter().flatten() {
        let l = container_list(c, limits);
        if c.restart_policy.as_deref() == Some("Always") {
            for (k, v) in l {
                add(&mut sum, &k, v);
                add(&mut sidecars, &k, v);
            }
        } else {
            for (k, v) in l {
                // A plain init container runs next to the sidecars started before it.
                let need = v + sidecars.get(&k).copied().unwrap_or(0);
                let e = init_max.entry(k).or_default();
                *e = (*e).max(need);
            }
        }
    }
    for (k, v) in init_max {
        let e = sum.entry(k).or_default();
        *e = (*e).max(v);
    }
    for (k, v) in parse_list(spec.overhead.as_ref()) {
        if sum.contains_key(&k) || !limits {
            add(&mut sum, &k, v);
        }
    }
    sum
}

/// Whether quota charges a pod's compute resources (`QuotaV1Pod`): not terminal, and not
/// past its deletion grace (`now_s` in Unix seconds).
pub fn pod_counts(pod: &Pod, now_s: i64) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    match &pod.metadata.deletion_timestamp {
        Some(t) => t.0.as_second() > now_s,
        None => true,
    }
}

/// The QoS class of a pod from its containers (`qos.GetPodQOS`).
pub fn pod_qos(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let req = container_list(c, false);
        let lim = container_list(c, true);
        for r in ["cpu", "memory"] {
            let (rq, lm) = (req.get(r), lim.get(r));
            if rq.is_some_and(|v| *v != 0) || lm.is_some_and(|v| *v != 0) {
                any = true;
            }
            match (rq, lm) {
                (_, None) => guaranteed = false,
                (Some(a), Some(b)) if a != b => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// What `obj` uses (every resource its evaluator knows; callers mask by the quota's hard).
pub fn usage(obj: &Object<'_>, now_s: i64) -> Usage {
    let (group, resource) = obj.resource();
    let mut u = Usage::new();
    add(&mut u, &count_name(group, resource), 1000);
    match obj {
        Object::Pod(pod) => {
            if !pod_counts(pod, now_s) {
                return u;
            }
            add(&mut u, "pods", 1000);
            for (k, v) in pod_resources(pod, false) {
                match k.as_str() {
                    "cpu" | "memory" | "ephemeral-storage" => {
                        add(&mut u, &k, v);
                        add(&mut u, &format!("requests.{k}"), v);
                    }
                    _ if k.starts_with("hugepages-") => {
                        add(&mut u, &k, v);
                        add(&mut u, &format!("requests.{k}"), v);
                    }
                    // Extended resources (domain-qualified): only the requests form.
                    _ if k.contains('/') => add(&mut u, &format!("requests.{k}"), v),
                    _ => {}
                }
            }
            for (k, v) in pod_resources(pod, true) {
                if matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage")
                    || k.starts_with("hugepages-")
                {
                    add(&mut u, &format!("limits.{k}"), v);
                }
            }
        }
        Object::Service(svc) => {
            add(&mut u, "services", 1000);
            let spec = svc.spec.as_ref();
            let ports = spec.and_then(|s| s.ports.as_ref());
            let n = i128::try_from(ports.map_or(0, Vec::len)).unwrap_or(0);
            match spec.and_then(|s| s.type_.as_deref()) {
                Some("NodePort") => add(&mut u, "services.nodeports", n * 1000),
                Some("LoadBalancer") => {
                    let explicit_only =
                        spec.and_then(|s| s.allocate_load_balancer_node_ports) == Some(false);
                    let np = if explicit_only {
                        let c = ports
                            .into_iter()
                            .flatten()
                            .filter(|p| p.node_port.is_some_and(|x| x != 0))
                            .count();
                        i128::try_from(c).unwrap_or(0)
                    } else {
                        n
                    };
                    add(&mut u, "services.nodeports", np * 1000);
                    add(&mut u, "services.loadbalancers", 1000);
                }
                _ => {}
            }
        }
        Object::Claim(pvc) => {
            add(&mut u, "persistentvolumeclaims", 1000);
            let spec = pvc.spec.as_ref();
            let requested = spec
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(|q| parse_milli(&q.0));
            let allocated = pvc
                .status
                .as_ref()
                .and_then(|s| s.allocated_resources.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(|q| parse_milli(&q.0));
            let storage = requested.max(allocated);
            let class = spec.and_then(|s| s.storage_class_name.as_deref());
            if let Some(s) = storage {
                add(&mut u, "requests.storage", s);
            }
            if let Some(c) = class.filter(|c| !c.is_empty()) {
                add(
                    &mut u,
                    &format!("{c}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
                    1000,
                );
                if let Some(s) = storage {
                    add(
                        &mut u,
                        &format!("{c}{STORAGE_CLASS_SUFFIX}requests.storage"),
                        s,
                    );
                }
            }
        }
        Object::Other { group, resource } => {
            if group.is_empty()
                && matches!(
                    *resource,
                    "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas"
                )
            {
                add(&mut u, resource, 1000);
            }
        }
    }
    u
}

fn scope_requirement_matches(r: &ScopedResourceSelectorRequirement, pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    match r.scope_name.as_str() {
        "Terminating" => spec
            .and_then(|s| s.active_deadline_seconds)
            .is_some_and(|d| d >= 0),
        "NotTerminating" => spec.and_then(|s| s.active_deadline_seconds).is_none(),
        "BestEffort" => pod_qos(pod) == "BestEffort",
        "NotBestEffort" => pod_qos(pod) != "BestEffort",
        "PriorityClass" => {
            let pc = spec
                .and_then(|s| s.priority_class_name.as_deref())
                .unwrap_or("");
            let values = r.values.as_deref().unwrap_or(&[]);
            match r.operator.as_str() {
                "In" => !pc.is_empty() && values.iter().any(|v| v == pc),
                "NotIn" => pc.is_empty() || !values.iter().any(|v| v == pc),
                "Exists" => !pc.is_empty(),
                "DoesNotExist" => pc.is_empty(),
                _ => false,
            }
        }
        // CrossNamespacePodAffinity and unknown scopes: not evaluated here.
        _ => false,
    }
}

/// The scope requirements of a quota: `spec.scopes` (as `Exists`) and `scopeSelector`.
fn scope_requirements(q: &ResourceQuota) -> Vec<ScopedResourceSelectorRequirement> {
    let spec = q.spec.as_ref();
    let mut v: Vec<ScopedResourceSelectorRequirement> = spec
        .and_then(|s| s.scopes.as_ref())
        .into_iter()
        .flatten()
        .map(|s| ScopedResourceSelectorRequirement {
            scope_name: s.clone(),
            operator: "Exists".into(),
            values: None,
        })
        .collect();
    v.extend(
        spec.and_then(|s| s.scope_selector.as_ref())
            .and_then(|s| s.match_expressions.clone())
            .into_iter()
            .flatten(),
    );
    v
}

/// Whether the quota's scopes select `obj` (an unscoped quota selects everything).
pub fn scopes_match(q: &ResourceQuota, obj: &Object<'_>) -> bool {
    let reqs = scope_requirements(q);
    if reqs.is_empty() {
        return true;
    }
    match obj {
        Object::Pod(pod) => reqs.iter().all(|r| scope_requirement_matches(r, pod)),
        _ => false,
    }
}

/// The quota's `status.hard` names (else `spec.hard`) that the evaluator of `obj` tracks,
/// if the quota's scopes select it.
pub fn interesting(q: &ResourceQuota, hard: &Usage, obj: &Object<'_>) -> BTreeSet<String> {
    if !scopes_match(q, obj) {
        return BTreeSet::new();
    }
    hard.keys().filter(|k| tracks(obj, k)).cloned().collect()
}

/// The `status.used` a quota should show over `objects` of its namespace: for each hard
/// resource, the sum of what the selected objects use.
pub fn used<'a>(
    q: &ResourceQuota,
    objects: impl IntoIterator<Item = Object<'a>>,
    now_s: i64,
) -> Usage {
    let hard = parse_list(q.spec.as_ref().and_then(|s| s.hard.as_ref()));
    let mut out: Usage = hard.keys().map(|k| (k.clone(), 0)).collect();
    for o in objects {
        let want = interesting(q, &hard, &o);
        if want.is_empty() {
            continue;
        }
        for (k, v) in usage(&o, now_s) {
            if want.contains(&k) {
                add(&mut out, &k, v);
            }
        }
    }
    out
}

/// `a=1,b=2` with sorted keys (upstream `prettyPrint`).
fn pretty(u: &Usage, raw: &BTreeMap<String, String>) -> String {
    u.iter()
        .map(|(k, v)| {
            let s = raw.get(k).cloned().unwrap_or_else(|| format_milli(k, *v));
            format!("{k}={s}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Upstream's pod `Constraints`: when a quota limits cpu/memory requests or limits, every
/// container must state them. `Err` carries `must specify ...`.
pub fn pod_constraints(pod: &Pod, required: &BTreeSet<String>) -> Result<(), String> {
    const VALIDATED: [&str; 6] = [
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
        "cpu",
        "memory",
    ];
    let need: Vec<&str> = VALIDATED
        .iter()
        .copied()
        .filter(|r| required.contains(*r))
        .collect();
    if need.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let spec = pod.spec.as_ref();
    let containers = spec
        .map(|s| s.containers.iter())
        .into_iter()
        .flatten()
        .chain(
            spec.and_then(|s| s.init_containers.as_ref())
                .into_iter()
                .flatten(),
        );
    for c in containers {
        let req = container_list(c, false);
        let lim = container_list(c, true);
        for r in &need {
            let have = match *r {
                "cpu" | "requests.cpu" => req.contains_key("cpu"),
                "memory" | "requests.memory" => req.contains_key("memory"),
                "limits.cpu" => lim.contains_key("cpu"),
                _ => lim.contains_key("memory"),
            };
            if !have {
                missing.entry(r).or_default().insert(c.name.clone());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// Why a quota refuses an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// Usage plus the request would pass `hard` (upstream's message, verbatim).
    #[error("exceeded quota: {quota}, requested: {requested}, used: {used}, limited: {limited}")]
    Exceeded {
        /// The quota's name.
        quota: String,
        /// `name=amount` of the request, for the exceeded resources.
        requested: String,
        /// `name=amount` already used.
        used: String,
        /// `name=amount` of the limit.
        limited: String,
    },
    /// The quota has no usage yet for a resource the object uses (its controller has not
    /// caught up); retryable.
    #[error("status unknown for quota: {quota}, resources: {resources}")]
    StatusUnknown {
        /// The quota's name.
        quota: String,
        /// Comma-separated resource names.
        resources: String,
    },
    /// A container lacks requests/limits the quota constrains.
    #[error("failed quota: {quota}: {detail}")]
    Constraints {
        /// The quota's name.
        quota: String,
        /// `must specify ...`.
        detail: String,
    },
}

/// Admission of `obj` against one quota: `Ok(Some(new used))` when the quota is charged,
/// `Ok(None)` when it does not concern `obj`. Uses the quota's `status.hard` and
/// `status.used` as upstream (a quota whose status the controller has not written yet does
/// not constrain).
pub fn admit(q: &ResourceQuota, obj: &Object<'_>, now_s: i64) -> Result<Option<Usage>, QuotaError> {
    admit_change(q, None, obj, now_s)
}

/// [`admit`] for an update from `old` to `new` (upstream's update path): only what `new`
/// uses beyond `old` is charged (each resource's delta floored at zero), so an update that
/// does not grow usage (a label change, a pod finishing, a claim shrinking) is admitted
/// without a charge even when the namespace is already over its quota.
pub fn admit_update(
    q: &ResourceQuota,
    old: &Object<'_>,
    new: &Object<'_>,
    now_s: i64,
) -> Result<Option<Usage>, QuotaError> {
    admit_change(q, Some(old), new, now_s)
}

fn admit_change(
    q: &ResourceQuota,
    prev: Option<&Object<'_>>,
    obj: &Object<'_>,
    now_s: i64,
) -> Result<Option<Usage>, QuotaError> {
    let name = q.metadata.name.clone().unwrap_or_default();
    let status = q.status.as_ref();
    let hard = parse_list(status.and_then(|s| s.hard.as_ref()));
    let want = interesting(q, &hard, obj);
    if want.is_empty() {
        return Ok(None);
    }
    let prev_usage = prev.map(|p| usage(p, now_s));
    let requested: Usage = usage(obj, now_s)
        .into_iter()
        .filter(|(k, _)| want.contains(k))
        .map(|(k, v)| {
            let before = prev_usage
                .as_ref()
                .and_then(|u| u.get(&k))
                .copied()
                .unwrap_or(0);
            (k, (v - before).max(0))
        })
        .collect();
    if prev.is_some() && requested.values().all(|v| *v == 0) {
        return Ok(None);
    }
    if let Object::Pod(pod) = obj {
        pod_constraints(pod, &want).map_err(|detail| QuotaError::Constraints {
            quota: name.clone(),
            detail,
        })?;
    }
    let used_raw: BTreeMap<String, String> = status
        .and_then(|s| s.used.as_ref())
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let hard_raw: BTreeMap<String, String> = status
        .and_then(|s| s.hard.as_ref())
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let used = parse_list(status.and_then(|s| s.used.as_ref()));
    let missing: Vec<String> = want
        .iter()
        .filter(|k| !used.contains_key(*k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(QuotaError::StatusUnknown {
            quota: name,
            resources: missing.join(","),
        });
    }
    if requested.values().all(|v| *v == 0) {
        return Ok(None);
    }
    let mut next = used.clone();
    let mut over = BTreeSet::new();
    for (k, v) in &requested {
        let n = next.entry(k.clone()).or_default();
        *n += v;
        if hard.get(k).is_some_and(|h| *n > *h) {
            over.insert(k.clone());
        }
    }
    if !over.is_empty() {
        let mask = |u: &Usage| -> Usage {
            u.iter()
                .filter(|(k, _)| over.contains(*k))
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        };
        return Err(QuotaError::Exceeded {
            quota: name,
            requested: pretty(&mask(&requested), &BTreeMap::new()),
            used: pretty(&mask(&used), &used_raw),
            limited: pretty(&mask(&hard), &hard_raw),
        });
    }
    Ok(Some(next))
}

#[cfg(test)]
mod tests;
