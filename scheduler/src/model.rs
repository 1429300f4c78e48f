//! The compact internal model the plugins read: a `PodInfo` precomputed once per pod from the
//! k8s-openapi `Pod`, a `NodeInfo` per node (allocatable, requested, pods, ports, images,
//! labels, taints) and the `Snapshot` of the cluster a cycle runs against.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

use crate::Error;
use crate::quantity::{parse_milli, parse_value};

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// The CPU the scoring plugins assume for a container that requests none (upstream: 100m).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The memory the scoring plugins assume for a container that requests none (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;
/// The well-known hostname label.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
/// The well-known zone label.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// Namespace and name of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Amounts of compute resources. CPU in millicores, the rest in whole units; `scalar` holds
/// extended resources and hugepages, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Number of pods (only meaningful as a node's allocatable).
    pub pods: i64,
    /// Extended resources, hugepages and other scalar resources, sorted by name.
    pub scalar: Vec<(String, i64)>,
}

impl Resources {
    /// Reads a resource list (requests, allocatable, overhead).
    pub fn from_list(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Result<Self, Error> {
        let mut r = Resources::default();
        if let Some(list) = list {
            for (name, q) in list {
                match name.as_str() {
                    "cpu" => r.milli_cpu = parse_milli(&q.0)?,
                    "memory" => r.memory = parse_value(&q.0)?,
                    "ephemeral-storage" => r.ephemeral_storage = parse_value(&q.0)?,
                    "pods" => r.pods = parse_value(&q.0)?,
                    other => r.set_scalar(other, parse_value(&q.0)?),
                }
            }
        }
        Ok(r)
    }

    /// The amount of a scalar resource (0 if absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .map(|i| self.scalar[i].1)
            .unwrap_or(0)
    }

    /// Sets a scalar resource.
    pub fn set_scalar(&mut self, name: &str, v: i64) {
        match self.scalar.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.scalar[i].1 = v,
            Err(i) => self.scalar.insert(i, (name.to_owned(), v)),
        }
    }

    /// The amount of a named resource.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.pods,
            other => self.scalar(other),
        }
    }

    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (n, v) in &o.scalar {
            let cur = self.scalar(n);
            self.set_scalar(n, cur + v);
        }
    }

    /// Subtracts `o` from `self`.
    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (n, v) in &o.scalar {
            let cur = self.scalar(n);
            self.set_scalar(n, cur - v);
        }
    }

    /// Raises every amount of `self` to at least `o`'s.
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        self.pods = self.pods.max(o.pods);
        for (n, v) in &o.scalar {
            let cur = self.scalar(n);
            if *v > cur {
                self.set_scalar(n, *v);
            }
        }
    }

    /// Whether nothing is requested.
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.iter().all(|(_, v)| *v == 0)
    }
}

/// A label selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelOp {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub op: SelOp,
    /// The values for In and NotIn.
    pub values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self.op {
            SelOp::In => labels
                .get(&self.key)
                .is_some_and(|v| self.values.contains(v)),
            SelOp::NotIn => labels
                .get(&self.key)
                .is_none_or(|v| !self.values.contains(v)),
            SelOp::Exists => labels.contains_key(&self.key),
            SelOp::DoesNotExist => !labels.contains_key(&self.key),
        }
    }
}

/// A compiled `metav1.LabelSelector`. A nil selector matches nothing, an empty one everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// Matches no object (a nil selector).
    Nothing,
    /// Matches objects meeting every requirement (none: everything).
    Reqs(Vec<Requirement>),
}

impl Selector {
    /// Compiles a selector; `None` gives `Nothing`.
    pub fn new(sel: Option<&meta::LabelSelector>) -> Result<Self, Error> {
        let Some(sel) = sel else {
            return Ok(Selector::Nothing);
        };
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement {
                key: k.clone(),
                op: SelOp::In,
                values: vec![v.clone()],
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            let op = match e.operator.as_str() {
                "In" => SelOp::In,
                "NotIn" => SelOp::NotIn,
                "Exists" => SelOp::Exists,
                "DoesNotExist" => SelOp::DoesNotExist,
                other => return Err(Error::Invalid(format!("label selector operator {other:?}"))),
            };
            reqs.push(Requirement {
                key: e.key.clone(),
                op,
                values: e.values.clone().unwrap_or_default(),
            });
        }
        Ok(Selector::Reqs(reqs))
    }

    /// A selector matching exactly these labels.
    pub fn from_labels(labels: &Labels) -> Self {
        Selector::Reqs(
            labels
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    op: SelOp::In,
                    values: vec![v.clone()],
                })
                .collect(),
        )
    }

    /// Whether the labels match.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Selector::Nothing => false,
            Selector::Reqs(r) => r.iter().all(|r| r.matches(labels)),
        }
    }

    /// Adds a requirement (a nil selector stays nil).
    pub fn push(&mut self, r: Requirement) {
        if let Selector::Reqs(v) = self {
            v.push(r);
        }
    }
}

/// A node selector operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOp {
    /// Value in the set.
    In(Vec<String>),
    /// Absent or value not in the set.
    NotIn(Vec<String>),
    /// Present.
    Exists,
    /// Absent.
    DoesNotExist,
    /// Present and, as an integer, greater.
    Gt(i64),
    /// Present and, as an integer, less.
    Lt(i64),
}

impl NodeOp {
    fn parse(op: &str, values: Option<&Vec<String>>) -> Result<Self, Error> {
        let values = values.cloned().unwrap_or_default();
        let int = |values: &[String]| -> Result<i64, Error> {
            match values {
                [v] => v
                    .parse()
                    .map_err(|_| Error::Invalid(format!("{op} needs an integer, got {v:?}"))),
                _ => Err(Error::Invalid(format!("{op} needs exactly one value"))),
            }
        };
        Ok(match op {
            "In" => NodeOp::In(values),
            "NotIn" => NodeOp::NotIn(values),
            "Exists" => NodeOp::Exists,
            "DoesNotExist" => NodeOp::DoesNotExist,
            "Gt" => NodeOp::Gt(int(&values)?),
            "Lt" => NodeOp::Lt(int(&values)?),
            other => return Err(Error::Invalid(format!("node selector operator {other:?}"))),
        })
    }

    fn matches(&self, v: Option<&str>) -> bool {
        match self {
            NodeOp::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
            NodeOp::NotIn(vals) => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
            NodeOp::Exists => v.is_some(),
            NodeOp::DoesNotExist => v.is_none(),
            NodeOp::Gt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            NodeOp::Lt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        }
    }
}

/// A compiled node selector term: all expressions (on labels) and fields (`metadata.name`).
/// An empty term matches no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTerm {
    /// Label requirements.
    pub exprs: Vec<(String, NodeOp)>,
    /// Field requirements; only `metadata.name` exists.
    pub fields: Vec<NodeOp>,
}

impl NodeTerm {
    /// Compiles a term.
    pub fn new(t: &core::NodeSelectorTerm) -> Result<Self, Error> {
        let mut exprs = Vec::new();
        for e in t.match_expressions.iter().flatten() {
            exprs.push((
                e.key.clone(),
                NodeOp::parse(&e.operator, e.values.as_ref())?,
            ));
        }
        let mut fields = Vec::new();
        for f in t.match_fields.iter().flatten() {
            if f.key != "metadata.name" {
                return Err(Error::Invalid(format!(
                    "unsupported field selector key {:?}",
                    f.key
                )));
            }
            let op = NodeOp::parse(&f.operator, f.values.as_ref())?;
            if !matches!(op, NodeOp::In(_) | NodeOp::NotIn(_)) {
                return Err(Error::Invalid("matchFields supports In and NotIn".into()));
            }
            fields.push(op);
        }
        Ok(NodeTerm { exprs, fields })
    }

    /// Whether the node matches.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        if self.exprs.is_empty() && self.fields.is_empty() {
            return false;
        }
        self.exprs
            .iter()
            .all(|(k, op)| op.matches(node.labels.get(k).map(String::as_str)))
            && self.fields.iter().all(|op| op.matches(Some(&node.name)))
    }
}

/// Taint effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// New pods that do not tolerate the taint are not scheduled.
    NoSchedule,
    /// The scheduler tries to avoid the node.
    PreferNoSchedule,
    /// As NoSchedule, and running pods are evicted.
    NoExecute,
}

impl Effect {
    fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "NoSchedule" => Effect::NoSchedule,
            "PreferNoSchedule" => Effect::PreferNoSchedule,
            "NoExecute" => Effect::NoExecute,
            other => return Err(Error::Invalid(format!("taint effect {other:?}"))),
        })
    }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value ("" when unset).
    pub value: String,
    /// Effect.
    pub effect: Effect,
}

/// A pod toleration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    /// Key ("" matches every key with `exists`).
    pub key: String,
    /// Operator Exists (true) or Equal (false).
    pub exists: bool,
    /// Value for Equal.
    pub value: String,
    /// Effect (None: all effects).
    pub effect: Option<Effect>,
}

impl Toleration {
    /// `v1.Toleration.ToleratesTaint`.
    pub fn tolerates(&self, t: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != t.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != t.key {
            return false;
        }
        self.exists || self.value == t.value
    }
}

/// Whether any toleration tolerates the taint.
pub fn tolerated(tols: &[Toleration], t: &Taint) -> bool {
    tols.iter().any(|tol| tol.tolerates(t))
}

/// A host port a pod asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host IP ("0.0.0.0" when unset).
    pub ip: String,
    /// Protocol (TCP when unset).
    pub protocol: String,
    /// Port.
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports cannot coexist on a node.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

/// A compiled pod (anti-)affinity term.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AffinityTerm {
    /// Selects the pods.
    pub selector: Selector,
    /// Namespaces listed (the pod's own when the list and the selector are both empty).
    pub namespaces: Vec<String>,
    /// Namespaces selected by label (None: only the list).
    pub ns_selector: Option<Selector>,
    /// The topology key.
    pub topology_key: String,
    /// Weight for preferred terms (0 for required ones).
    pub weight: i32,
}

impl AffinityTerm {
    fn new(
        t: &core::PodAffinityTerm,
        own_ns: &str,
        own_labels: &Labels,
        weight: i32,
    ) -> Result<Self, Error> {
        let mut selector = Selector::new(t.label_selector.as_ref())?;
        // matchLabelKeys / mismatchLabelKeys merge the pod's own values into the selector.
        for k in t.match_label_keys.iter().flatten() {
            if let Some(v) = own_labels.get(k) {
                selector.push(Requirement {
                    key: k.clone(),
                    op: SelOp::In,
                    values: vec![v.clone()],
                });
            }
        }
        for k in t.mismatch_label_keys.iter().flatten() {
            if let Some(v) = own_labels.get(k) {
                selector.push(Requirement {
                    key: k.clone(),
                    op: SelOp::NotIn,
                    values: vec![v.clone()],
                });
            }
        }
        let ns_selector = t
            .namespace_selector
            .as_ref()
            .map(|s| Selector::new(Some(s)))
            .transpose()?;
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && ns_selector.is_none() {
            namespaces.push(own_ns.to_owned());
        }
        if t.topology_key.is_empty() {
            return Err(Error::Invalid(
                "pod affinity term without topologyKey".into(),
            ));
        }
        Ok(AffinityTerm {
            selector,
            namespaces,
            ns_selector,
            topology_key: t.topology_key.clone(),
            weight,
        })
    }

    /// Whether the term selects `pod` (namespace and labels).
    pub fn matches(&self, pod: &PodInfo, snap: &Snapshot) -> bool {
        self.matches_labels(&pod.key.namespace, &pod.labels, snap)
    }

    /// Whether the term selects pods of namespace `ns` with these labels.
    pub fn matches_labels(&self, ns: &str, labels: &Labels, snap: &Snapshot) -> bool {
        let ns_ok = self.namespaces.iter().any(|n| n == ns)
            || self
                .ns_selector
                .as_ref()
                .is_some_and(|s| s.matches(snap.namespace_labels(ns)));
        ns_ok && self.selector.matches(labels)
    }
}

/// What to do when a spread constraint cannot be met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnsatisfiable {
    /// A hard constraint (Filter).
    DoNotSchedule,
    /// A soft constraint (Score).
    ScheduleAnyway,
}

/// A compiled topology spread constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadConstraint {
    /// Maximum permitted skew.
    pub max_skew: i32,
    /// The topology key.
    pub topology_key: String,
    /// Hard or soft.
    pub when: WhenUnsatisfiable,
    /// Selects the pods counted.
    pub selector: Selector,
    /// Minimum number of eligible domains.
    pub min_domains: Option<i32>,
    /// Count only nodes matching the pod's node affinity/selector (default Honor).
    pub honor_node_affinity: bool,
    /// Count only nodes whose taints the pod tolerates (default Ignore).
    pub honor_node_taints: bool,
}

impl SpreadConstraint {
    /// Compiles a constraint for a pod with these labels.
    pub fn new(c: &core::TopologySpreadConstraint, own_labels: &Labels) -> Result<Self, Error> {
        let mut selector = Selector::new(c.label_selector.as_ref())?;
        for k in c.match_label_keys.iter().flatten() {
            if let Some(v) = own_labels.get(k) {
                selector.push(Requirement {
                    key: k.clone(),
                    op: SelOp::In,
                    values: vec![v.clone()],
                });
            }
        }
        let when = match c.when_unsatisfiable.as_str() {
            "DoNotSchedule" => WhenUnsatisfiable::DoNotSchedule,
            "ScheduleAnyway" => WhenUnsatisfiable::ScheduleAnyway,
            o => return Err(Error::Invalid(format!("whenUnsatisfiable {o:?}"))),
        };
        if c.max_skew <= 0 {
            return Err(Error::Invalid("maxSkew must be positive".into()));
        }
        Ok(SpreadConstraint {
            max_skew: c.max_skew,
            topology_key: c.topology_key.clone(),
            when,
            selector,
            min_domains: c.min_domains,
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_node_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        })
    }
}

/// A volume that can conflict with another pod's on the same node (VolumeRestrictions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskVolume {
    /// GCE PD by name.
    Gce { pd: String, read_only: bool },
    /// AWS EBS by volume ID.
    Ebs { id: String },
    /// Ceph RBD by monitors + pool + image.
    Rbd {
        monitors: Vec<String>,
        pool: String,
        image: String,
        read_only: bool,
    },
    /// iSCSI by IQN + LUN + portal.
    Iscsi {
        iqn: String,
        lun: i32,
        portal: String,
        read_only: bool,
    },
}

impl DiskVolume {
    /// Upstream `isVolumeConflict`.
    pub fn conflicts(&self, o: &DiskVolume) -> bool {
        match (self, o) {
            (
                DiskVolume::Gce {
                    pd: a,
                    read_only: ra,
                },
                DiskVolume::Gce {
                    pd: b,
                    read_only: rb,
                },
            ) => a == b && !(*ra && *rb),
            (DiskVolume::Ebs { id: a }, DiskVolume::Ebs { id: b }) => a == b,
            (
                DiskVolume::Rbd {
                    monitors: ma,
                    pool: pa,
                    image: ia,
                    read_only: ra,
                },
                DiskVolume::Rbd {
                    monitors: mb,
                    pool: pb,
                    image: ib,
                    read_only: rb,
                },
            ) => ma.iter().any(|m| mb.contains(m)) && pa == pb && ia == ib && !(*ra && *rb),
            (
                DiskVolume::Iscsi {
                    iqn: a,
                    lun: la,
                    portal: pa,
                    read_only: ra,
                },
                DiskVolume::Iscsi {
                    iqn: b,
                    lun: lb,
                    portal: pb,
                    read_only: rb,
                },
            ) => a == b && la == lb && pa == pb && !(*ra && *rb),
            _ => false,
        }
    }
}

/// Everything the plugins need about one pod, computed once from the `Pod`.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Namespace/name.
    pub key: PodKey,
    /// The uid (may be empty in tests).
    pub uid: String,
    /// Labels.
    pub labels: Labels,
    /// `spec.schedulerName` (default-scheduler when unset).
    pub scheduler_name: String,
    /// Effective priority (`spec.priority`, else from the PriorityClass, else 0).
    pub priority: i32,
    /// `spec.priorityClassName`.
    pub priority_class_name: Option<String>,
    /// `preemptionPolicy: Never`.
    pub never_preempt: bool,
    /// Effective requests: sum of containers, max with each init container step (sidecars
    /// count towards the sum), plus overhead.
    pub requests: Resources,
    /// CPU and memory requests with the scoring defaults for containers that request none.
    pub non_zero_cpu: i64,
    /// See `non_zero_cpu`.
    pub non_zero_mem: i64,
    /// `spec.nodeName` when set.
    pub node_name: Option<String>,
    /// `spec.nominatedNodeName` (status).
    pub nominated_node: Option<String>,
    /// `spec.nodeSelector`.
    pub node_selector: Labels,
    /// Required node affinity terms (OR), None when unset.
    pub required_node_affinity: Option<Vec<NodeTerm>>,
    /// Preferred node affinity terms with weights.
    pub preferred_node_affinity: Vec<(i32, NodeTerm)>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Host ports.
    pub host_ports: Vec<HostPort>,
    /// Topology spread constraints.
    pub spread: Vec<SpreadConstraint>,
    /// Required pod affinity terms.
    pub required_affinity: Vec<AffinityTerm>,
    /// Required pod anti-affinity terms.
    pub required_anti_affinity: Vec<AffinityTerm>,
    /// Preferred pod affinity terms.
    pub preferred_affinity: Vec<AffinityTerm>,
    /// Preferred pod anti-affinity terms.
    pub preferred_anti_affinity: Vec<AffinityTerm>,
    /// Normalized image names of all containers (init first).
    pub images: Vec<String>,
    /// Volumes that can conflict on one node.
    pub disks: Vec<DiskVolume>,
    /// PersistentVolumeClaim names the pod uses.
    pub pvcs: Vec<String>,
    /// Whether `spec.schedulingGates` is non-empty.
    pub gated: bool,
    /// Whether the pod is terminating (deletionTimestamp set).
    pub terminating: bool,
    /// Controller owner (kind, name), for the default spread constraints.
    pub owner: Option<(String, String)>,
    /// Creation order hint (seconds since epoch of creationTimestamp, 0 when unset).
    pub created: i64,
}

fn normalize_image(name: &str) -> String {
    // A name without tag or digest means ":latest", as upstream's ImageLocality normalizes.
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

impl PodInfo {
    /// Compiles a pod. `priority_classes` maps PriorityClass names to values.
    pub fn new(pod: &core::Pod, priority_classes: &HashMap<String, i32>) -> Result<Self, Error> {
        let meta = &pod.metadata;
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| Error::Invalid("pod without spec".into()))?;
        let labels = meta.labels.clone().unwrap_or_default();
        let key = PodKey {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
        };

        // Requests: upstream resourcehelper.PodRequests.
        let mut sum = Resources::default();
        let mut nz_cpu = 0;
        let mut nz_mem = 0;
        for c in &spec.containers {
            let r = Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()))?;
            nz_cpu += if r.milli_cpu == 0 {
                DEFAULT_MILLI_CPU_REQUEST
            } else {
                r.milli_cpu
            };
            nz_mem += if r.memory == 0 {
                DEFAULT_MEMORY_REQUEST
            } else {
                r.memory
            };
            sum.add(&r);
        }
        let mut sidecars = Resources::default();
        let mut init_max = Resources::default();
        let (mut nz_sidecar_cpu, mut nz_sidecar_mem, mut nz_init_cpu, mut nz_init_mem) =
            (0, 0, 0, 0);
        for c in spec.init_containers.iter().flatten() {
            let r = Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()))?;
            let (c_cpu, c_mem) = (
                if r.milli_cpu == 0 {
                    DEFAULT_MILLI_CPU_REQUEST
                } else {
                    r.milli_cpu
                },
                if r.memory == 0 {
                    DEFAULT_MEMORY_REQUEST
                } else {
                    r.memory
                },
            );
            if c.restart_policy.as_deref() == Some("Always") {
                sum.add(&r);
                sidecars.add(&r);
                nz_cpu += c_cpu;
                nz_mem += c_mem;
                nz_sidecar_cpu += c_cpu;
                nz_sidecar_mem += c_mem;
                init_max.max_with(&sidecars);
                nz_init_cpu = nz_init_cpu.max(nz_sidecar_cpu);
                nz_init_mem = nz_init_mem.max(nz_sidecar_mem);
            } else {
                let mut step = r.clone();
                step.add(&sidecars);
                init_max.max_with(&step);
                nz_init_cpu = nz_init_cpu.max(c_cpu + nz_sidecar_cpu);
                nz_init_mem = nz_init_mem.max(c_mem + nz_sidecar_mem);
            }
        }
        sum.max_with(&init_max);
        nz_cpu = nz_cpu.max(nz_init_cpu);
        nz_mem = nz_mem.max(nz_init_mem);
        let overhead = Resources::from_list(spec.overhead.as_ref())?;
        sum.add(&overhead);
        nz_cpu += overhead.milli_cpu;
        nz_mem += overhead.memory;

        let mut required_node_affinity = None;
        let mut preferred_node_affinity = Vec::new();
        let (mut ra, mut raa, mut pa, mut paa) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        if let Some(aff) = &spec.affinity {
            if let Some(na) = &aff.node_affinity {
                if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                    required_node_affinity = Some(
                        req.node_selector_terms
                            .iter()
                            .map(NodeTerm::new)
                            .collect::<Result<Vec<_>, _>>()?,
                    );
                }
                for p in na
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                {
                    preferred_node_affinity.push((p.weight, NodeTerm::new(&p.preference)?));
                }
            }
            if let Some(a) = &aff.pod_affinity {
                for t in a
                    .required_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                {
                    ra.push(AffinityTerm::new(t, &key.namespace, &labels, 0)?);
                }
                for t in a
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                {
                    pa.push(AffinityTerm::new(
                        &t.pod_affinity_term,
                        &key.namespace,
                        &labels,
                        t.weight,
                    )?);
                }
            }
            if let Some(a) = &aff.pod_anti_affinity {
                for t in a
                    .required_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                {
                    raa.push(AffinityTerm::new(t, &key.namespace, &labels, 0)?);
                }
                for t in a
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                {
                    paa.push(AffinityTerm::new(
                        &t.pod_affinity_term,
                        &key.namespace,
                        &labels,
                        t.weight,
                    )?);
                }
            }
        }

        let mut tolerations = Vec::new();
        for t in spec.tolerations.iter().flatten() {
            let exists = match t.operator.as_deref() {
                None | Some("Equal") => false,
                Some("Exists") => true,
                Some(o) => return Err(Error::Invalid(format!("toleration operator {o:?}"))),
            };
            let effect = match t.effect.as_deref() {
                None | Some("") => None,
                Some(e) => Some(Effect::parse(e)?),
            };
            tolerations.push(Toleration {
                key: t.key.clone().unwrap_or_default(),
                exists,
                value: t.value.clone().unwrap_or_default(),
                effect,
            });
        }

        let mut host_ports = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port: hp,
                    });
                }
            }
        }

        let spread = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|c| SpreadConstraint::new(c, &labels))
            .collect::<Result<Vec<_>, _>>()?;

        let images = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter_map(|c| c.image.as_deref())
            .map(normalize_image)
            .collect();

        let mut disks = Vec::new();
        let mut pvcs = Vec::new();
        for v in spec.volumes.iter().flatten() {
            if let Some(g) = &v.gce_persistent_disk {
                disks.push(DiskVolume::Gce {
                    pd: g.pd_name.clone(),
                    read_only: g.read_only.unwrap_or(false),
                });
            }
            if let Some(e) = &v.aws_elastic_block_store {
                disks.push(DiskVolume::Ebs {
                    id: e.volume_id.clone(),
                });
            }
            if let Some(r) = &v.rbd {
                disks.push(DiskVolume::Rbd {
                    monitors: r.monitors.clone(),
                    pool: r.pool.clone().unwrap_or_else(|| "rbd".into()),
                    image: r.image.clone(),
                    read_only: r.read_only.unwrap_or(false),
                });
            }
            if let Some(i) = &v.iscsi {
                disks.push(DiskVolume::Iscsi {
                    iqn: i.iqn.clone(),
                    lun: i.lun,
                    portal: i.target_portal.clone(),
                    read_only: i.read_only.unwrap_or(false),
                });
            }
            if let Some(c) = &v.persistent_volume_claim {
                pvcs.push(c.claim_name.clone());
            }
        }

        let priority = match (spec.priority, spec.priority_class_name.as_ref()) {
            (Some(p), _) => p,
            (None, Some(pc)) => priority_classes.get(pc).copied().unwrap_or(0),
            (None, None) => priority_classes.get("").copied().unwrap_or(0),
        };
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.kind.clone(), o.name.clone()));

        Ok(PodInfo {
            uid: meta.uid.clone().unwrap_or_default(),
            scheduler_name: spec
                .scheduler_name
                .clone()
                .unwrap_or_else(|| "default-scheduler".into()),
            priority,
            priority_class_name: spec.priority_class_name.clone(),
            never_preempt: spec.preemption_policy.as_deref() == Some("Never"),
            requests: sum,
            non_zero_cpu: nz_cpu,
            non_zero_mem: nz_mem,
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            nominated_node: pod
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.clone())
                .filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_node_affinity,
            preferred_node_affinity,
            tolerations,
            host_ports,
            spread,
            required_affinity: ra,
            required_anti_affinity: raa,
            preferred_affinity: pa,
            preferred_anti_affinity: paa,
            images,
            disks,
            pvcs,
            gated: spec
                .scheduling_gates
                .as_ref()
                .is_some_and(|g| !g.is_empty()),
            terminating: meta.deletion_timestamp.is_some(),
            owner,
            created: meta
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0),
            labels,
            key,
        })
    }

    /// Whether `o` has the same scheduling-relevant spec: everything the plugins read except
    /// the pod's name, uid and creation time. Two such pods get the same filter and score
    /// results on the same cluster state (the batch cycle's equivalence classes rely on it).
    pub fn same_class(&self, o: &PodInfo) -> bool {
        self.key.namespace == o.key.namespace
            && self.scheduler_name == o.scheduler_name
            && self.priority == o.priority
            && self.never_preempt == o.never_preempt
            && self.requests == o.requests
            && self.non_zero_cpu == o.non_zero_cpu
            && self.non_zero_mem == o.non_zero_mem
            && self.node_name == o.node_name
            && self.nominated_node == o.nominated_node
            && self.gated == o.gated
            && self.terminating == o.terminating
            && self.labels == o.labels
            && self.node_selector == o.node_selector
            && self.required_node_affinity == o.required_node_affinity
            && self.preferred_node_affinity == o.preferred_node_affinity
            && self.tolerations == o.tolerations
            && self.host_ports == o.host_ports
            && self.spread == o.spread
            && self.required_affinity == o.required_affinity
            && self.required_anti_affinity == o.required_anti_affinity
            && self.preferred_affinity == o.preferred_affinity
            && self.preferred_anti_affinity == o.preferred_anti_affinity
            && self.images == o.images
            && self.disks == o.disks
            && self.pvcs == o.pvcs
            && self.owner == o.owner
    }

    /// A hash over part of what `same_class` compares (equal classes hash equal).
    pub fn class_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.key.namespace.hash(&mut h);
        self.scheduler_name.hash(&mut h);
        self.priority.hash(&mut h);
        self.requests.milli_cpu.hash(&mut h);
        self.requests.memory.hash(&mut h);
        self.non_zero_cpu.hash(&mut h);
        self.non_zero_mem.hash(&mut h);
        self.labels.hash(&mut h);
        self.images.hash(&mut h);
        self.owner.hash(&mut h);
        h.finish()
    }

    /// Whether the pod has any pod (anti-)affinity term.
    pub fn has_affinity_terms(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }

    /// Whether the node matches `nodeSelector` and the required node affinity.
    pub fn matches_node_selector(&self, node: &NodeInfo) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
            && self
                .required_node_affinity
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(node)))
    }
}

/// Everything the plugins need about one node, with the pods placed on it (bound or assumed).
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Taints.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// Allocatable resources (pods included).
    pub allocatable: Resources,
    /// Sum of the placed pods' requests.
    pub requested: Resources,
    /// Sum of the placed pods' CPU requests with the scoring defaults.
    pub non_zero_cpu: i64,
    /// Sum of the placed pods' memory requests with the scoring defaults.
    pub non_zero_mem: i64,
    /// The pods placed here.
    pub pods: Vec<Arc<PodInfo>>,
    /// How many placed pods have pod (anti-)affinity terms.
    pub pods_with_affinity: usize,
    /// How many placed pods have required anti-affinity terms.
    pub pods_with_required_anti_affinity: usize,
    /// Host ports in use.
    pub used_ports: Vec<HostPort>,
    /// Images present (normalized name -> size in bytes).
    pub images: HashMap<String, i64>,
    /// Bumped on every change; lets a batch tell which nodes it touched.
    pub generation: u64,
}

impl NodeInfo {
    /// Compiles a node (no pods yet).
    pub fn new(node: &core::Node) -> Result<Self, Error> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        let mut taints = Vec::new();
        for t in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
            taints.push(Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect: Effect::parse(&t.effect)?,
            });
        }
        let status = node.status.as_ref();
        let allocatable = Resources::from_list(
            status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
        )?;
        let mut images = HashMap::new();
        for img in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            for n in img.names.iter().flatten() {
                images.insert(normalize_image(n), img.size_bytes.unwrap_or(0));
            }
        }
        Ok(NodeInfo {
            name,
            labels,
            taints,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable,
            images,
            ..Default::default()
        })
    }

    /// Places a pod here.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_cpu += pod.non_zero_cpu;
        self.non_zero_mem += pod.non_zero_mem;
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if pod.has_affinity_terms() {
            self.pods_with_affinity += 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.pods.push(pod);
        self.generation += 1;
    }

    /// Removes a pod; returns it when it was here.
    pub fn remove_pod(&mut self, key: &PodKey) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.key == *key)?;
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        self.non_zero_cpu -= pod.non_zero_cpu;
        self.non_zero_mem -= pod.non_zero_mem;
        for hp in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        if pod.has_affinity_terms() {
            self.pods_with_affinity -= 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        self.generation += 1;
        Some(pod)
    }
}

/// A PodDisruptionBudget as preemption sees it.
#[derive(Debug, Clone)]
pub struct Pdb {
    /// Namespace.
    pub namespace: String,
    /// Selects the pods.
    pub selector: Selector,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
}

/// The cluster a cycle runs against: nodes with their pods, namespaces' labels, and the
/// objects some plugins consult. Plugins only read it; the scheduler mutates it between
/// phases (assume, forget, node and pod events).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The nodes, in a stable order (partitions are index ranges).
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pod_node: HashMap<PodKey, usize>,
    namespaces: HashMap<String, Labels>,
    /// Number of nodes holding each image.
    pub image_nodes: HashMap<String, u32>,
    /// Selectors of services, by namespace (default spread constraints).
    pub services: Vec<(String, Selector)>,
    /// Selectors of ReplicaSets/StatefulSets/ReplicationControllers by (namespace, kind, name).
    pub controllers: HashMap<(String, String, String), Selector>,
    /// PVC access: claims (namespace, name) with ReadWriteOncePod.
    pub rwop_claims: std::collections::HashSet<(String, String)>,
    /// PodDisruptionBudgets.
    pub pdbs: Vec<Pdb>,
    /// Pods nominated to a node by preemption, by node index (maintained by the scheduler).
    pub nominated: HashMap<usize, Vec<Arc<PodInfo>>>,
    /// Pods with required anti-affinity anywhere (count), to skip work.
    pub pods_with_required_anti_affinity: usize,
    /// Pods with any affinity terms anywhere (count).
    pub pods_with_affinity: usize,
    /// Pods whose own terms score other pods (required affinity, preferred affinity or
    /// anti-affinity), to skip InterPodAffinity's PreScore scan.
    pub pods_with_scoring_affinity: usize,
    /// Bound and assumed pods grouped by (namespace, labels, terminating), by a hash of
    /// those: selector-based plugins match a group once instead of every pod.
    groups: HashMap<u64, Vec<PodGroup>>,
    /// Existing pods' required anti-affinity terms with, per value of the term's topology
    /// key on the nodes they run on, how many pods carry the term.
    pub existing_anti: HashMap<AffinityTerm, HashMap<String, i64>>,
    /// Node label key -> value -> number of nodes with it (topology domains).
    key_values: HashMap<String, HashMap<String, u32>>,
    empty_labels: Labels,
}

/// Pods of one namespace with identical labels and terminating state, counted per node.
#[derive(Debug, Clone)]
pub struct PodGroup {
    /// The namespace.
    pub namespace: String,
    /// The labels.
    pub labels: Labels,
    /// Whether these pods are terminating.
    pub terminating: bool,
    /// Node index -> number of these pods on it.
    pub nodes: HashMap<u32, u32>,
    total: u64,
}

fn group_hash(ns: &str, labels: &Labels, terminating: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ns.hash(&mut h);
    labels.hash(&mut h);
    terminating.hash(&mut h);
    h.finish()
}

fn bump_count<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: K, d: i64) {
    let e = m.entry(k).or_insert(0);
    *e = (i64::from(*e) + d).max(0) as u32;
}

impl Snapshot {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// The groups of bound and assumed pods (see `PodGroup`).
    pub fn pod_groups(&self) -> impl Iterator<Item = &PodGroup> {
        self.groups.values().flatten()
    }

    /// The values of a node label key over all nodes, with how many nodes carry each.
    pub fn key_values(&self, key: &str) -> Option<&HashMap<String, u32>> {
        self.key_values.get(key)
    }

    fn index_node_labels(&mut self, labels: &Labels, d: i64) {
        for (k, v) in labels {
            let vals = match self.key_values.get_mut(k) {
                Some(m) => m,
                None => self.key_values.entry(k.clone()).or_default(),
            };
            match vals.get_mut(v) {
                Some(c) => *c = (i64::from(*c) + d).max(0) as u32,
                None => bump_count(vals, v.clone(), d),
            }
            vals.retain(|_, c| *c > 0);
            if vals.is_empty() {
                self.key_values.remove(k);
            }
        }
    }

    /// Adds (`d` = 1) or removes (-1) a pod on node `node` to the indexes. The node must be
    /// at that index with its current labels.
    fn index_pod(&mut self, node: usize, p: &PodInfo, d: i64) {
        let h = group_hash(&p.key.namespace, &p.labels, p.terminating);
        let list = self.groups.entry(h).or_default();
        let gi = match list.iter().position(|g| {
            g.terminating == p.terminating && g.namespace == p.key.namespace && g.labels == p.labels
        }) {
            Some(gi) => gi,
            None => {
                list.push(PodGroup {
                    namespace: p.key.namespace.clone(),
                    labels: p.labels.clone(),
                    terminating: p.terminating,
                    nodes: HashMap::new(),
                    total: 0,
                });
                list.len() - 1
            }
        };
        let g = &mut list[gi];
        bump_count(&mut g.nodes, node as u32, d);
        if g.nodes.get(&(node as u32)) == Some(&0) {
            g.nodes.remove(&(node as u32));
        }
        g.total = g.total.saturating_add_signed(d);
        if g.total == 0 {
            list.swap_remove(gi);
            if list.is_empty() {
                self.groups.remove(&h);
            }
        }
        for t in &p.required_anti_affinity {
            let Some(v) = self.nodes[node].labels.get(&t.topology_key) else {
                continue;
            };
            let counts = match self.existing_anti.get_mut(t) {
                Some(c) => c,
                None => self.existing_anti.entry(t.clone()).or_default(),
            };
            match counts.get_mut(v) {
                Some(c) => *c += d,
                None => {
                    counts.insert(v.clone(), d);
                }
            }
            if counts.get(v).is_some_and(|c| *c <= 0) {
                counts.remove(v);
            }
            if counts.is_empty() {
                self.existing_anti.remove(t);
            }
        }
        if !p.required_affinity.is_empty()
            || !p.preferred_affinity.is_empty()
            || !p.preferred_anti_affinity.is_empty()
        {
            self.pods_with_scoring_affinity = self
                .pods_with_scoring_affinity
                .saturating_add_signed(d as isize);
        }
    }

    /// Adds or replaces a node, keeping its pods on replace.
    pub fn upsert_node(&mut self, mut n: NodeInfo) {
        if let Some(&i) = self.index.get(&n.name) {
            // The node's labels may change: take its pods out of the indexes and back in.
            let pods = self.nodes[i].pods.clone();
            for p in &pods {
                self.index_pod(i, p, -1);
            }
            let old_labels = std::mem::take(&mut self.nodes[i].labels);
            self.index_node_labels(&old_labels, -1);
            self.index_node_labels(&n.labels, 1);
            let old = std::mem::take(&mut self.nodes[i]);
            for img in old.images.keys() {
                self.dec_image(img);
            }
            n.generation = old.generation + 1;
            for p in old.pods {
                n.add_pod(p);
            }
            for img in n.images.keys() {
                *self.image_nodes.entry(img.clone()).or_default() += 1;
            }
            self.nodes[i] = n;
            for p in &pods {
                self.index_pod(i, p, 1);
            }
        } else {
            for img in n.images.keys() {
                *self.image_nodes.entry(img.clone()).or_default() += 1;
            }
            self.index_node_labels(&n.labels, 1);
            self.index.insert(n.name.clone(), self.nodes.len());
            self.nodes.push(n);
        }
    }

    fn dec_image(&mut self, img: &str) {
        if let Some(c) = self.image_nodes.get_mut(img) {
            *c -= 1;
            if *c == 0 {
                self.image_nodes.remove(img);
            }
        }
    }

    /// Removes a node and forgets its pods; returns the removed pods.
    pub fn remove_node(&mut self, name: &str) -> Vec<Arc<PodInfo>> {
        let Some(i) = self.index.remove(name) else {
            return Vec::new();
        };
        // Indexes hold node indices: the last node moves to `i`.
        let last = self.nodes.len() - 1;
        for j in [i, last] {
            let pods = self.nodes[j].pods.clone();
            for p in &pods {
                self.index_pod(j, p, -1);
            }
            if i == last {
                break;
            }
        }
        let n = self.nodes.swap_remove(i);
        self.index_node_labels(&n.labels, -1);
        if i < self.nodes.len() {
            let moved = self.nodes[i].name.clone();
            self.index.insert(moved, i);
            for p in &self.nodes[i].pods {
                self.pod_node.insert(p.key.clone(), i);
            }
            let pods = self.nodes[i].pods.clone();
            for p in &pods {
                self.index_pod(i, p, 1);
            }
        }
        for img in n.images.keys() {
            self.dec_image(img);
        }
        for p in &n.pods {
            self.pod_node.remove(&p.key);
            self.count_pod(p, -1);
        }
        n.pods
    }

    fn count_pod(&mut self, p: &PodInfo, d: isize) {
        if p.has_affinity_terms() {
            self.pods_with_affinity = self.pods_with_affinity.saturating_add_signed(d);
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity = self
                .pods_with_required_anti_affinity
                .saturating_add_signed(d);
        }
    }

    /// The index of a node by name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The node a pod is placed on.
    pub fn pod_node(&self, key: &PodKey) -> Option<usize> {
        self.pod_node.get(key).copied()
    }

    /// Places a pod on node `i` (replacing an earlier placement of the same pod).
    pub fn add_pod(&mut self, i: usize, pod: Arc<PodInfo>) {
        self.remove_pod(&pod.key);
        self.count_pod(&pod, 1);
        self.pod_node.insert(pod.key.clone(), i);
        self.index_pod(i, &pod, 1);
        self.nodes[i].add_pod(pod);
    }

    /// Removes a pod from wherever it is placed.
    pub fn remove_pod(&mut self, key: &PodKey) -> Option<Arc<PodInfo>> {
        let i = self.pod_node.remove(key)?;
        let p = self.nodes[i].remove_pod(key)?;
        self.index_pod(i, &p, -1);
        self.count_pod(&p, -1);
        Some(p)
    }

    /// Sets a namespace's labels.
    pub fn set_namespace(&mut self, name: &str, labels: Labels) {
        self.namespaces.insert(name.to_owned(), labels);
    }

    /// A namespace's labels (empty when unknown).
    pub fn namespace_labels(&self, ns: &str) -> &Labels {
        self.namespaces.get(ns).unwrap_or(&self.empty_labels)
    }

    /// Node `idx` with the pods nominated to it of at least `pod`'s priority added (room
    /// promised to them is not free for `pod`), or None when there are none.
    pub fn with_nominated(&self, idx: usize, pod: &PodInfo) -> Option<NodeInfo> {
        let noms = self.nominated.get(&idx)?;
        let mut it = noms
            .iter()
            .filter(|p| p.key != pod.key && p.priority >= pod.priority)
            .peekable();
        it.peek()?;
        let mut n = self.nodes[idx].clone();
        for p in it {
            n.add_pod(p.clone());
        }
        Some(n)
    }

    /// Number of pods placed.
    pub fn pod_count(&self) -> usize {
        self.pod_node.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn node(name: &str, zone: &str) -> NodeInfo {
        let n: core::Node = serde_json::from_value(json!({"metadata": {"name": name,
            "labels": {"kubernetes.io/hostname": name, "zone": zone}}}))
        .expect("node");
        NodeInfo::new(&n).expect("node info")
    }

    fn pod(name: &str, app: &str, anti: bool) -> Arc<PodInfo> {
        let mut spec = json!({"containers": []});
        if anti {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "zone"}]}});
        }
        let p: core::Pod =
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
            "labels": {"app": app}}, "spec": spec}))
            .expect("pod");
        Arc::new(PodInfo::new(&p, &HashMap::new()).expect("pod info"))
    }

    /// The indexes recomputed from scratch by scanning every pod.
    fn check(s: &Snapshot) {
        let mut groups: HashMap<(String, Labels), HashMap<u32, u32>> = HashMap::new();
        let mut anti: HashMap<AffinityTerm, HashMap<String, i64>> = HashMap::new();
        let mut values: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for (i, n) in s.nodes.iter().enumerate() {
            for (k, v) in &n.labels {
                *values
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default() += 1;
            }
            for p in &n.pods {
                *groups
                    .entry((p.key.namespace.clone(), p.labels.clone()))
                    .or_default()
                    .entry(i as u32)
                    .or_default() += 1;
                for t in &p.required_anti_affinity {
                    if let Some(v) = n.labels.get(&t.topology_key) {
                        *anti
                            .entry(t.clone())
                            .or_default()
                            .entry(v.clone())
                            .or_default() += 1;
                    }
                }
            }
        }
        let got: HashMap<(String, Labels), HashMap<u32, u32>> = s
            .pod_groups()
            .map(|g| ((g.namespace.clone(), g.labels.clone()), g.nodes.clone()))
            .collect();
        assert_eq!(got, groups);
        assert_eq!(s.existing_anti, anti);
        assert_eq!(s.key_values, values);
    }

    #[test]
    fn indexes_follow_pod_and_node_changes() {
        let mut s = Snapshot::new();
        for (n, z) in [("a", "z1"), ("b", "z1"), ("c", "z2"), ("d", "z3")] {
            s.upsert_node(node(n, z));
        }
        check(&s);
        let mut k = 0;
        for round in 0..3 {
            for i in 0..s.nodes.len() {
                for app in ["x", "y"] {
                    k += 1;
                    s.add_pod(i, pod(&format!("p{k}"), app, (k + round) % 3 == 0));
                }
            }
            check(&s);
        }
        // Moving a pod (add under the same key elsewhere) and removing some.
        s.add_pod(3, pod("p1", "x", true));
        s.remove_pod(&PodKey {
            namespace: "default".into(),
            name: "p2".into(),
        });
        check(&s);
        // A node changes zone: its pods' anti-affinity terms move with it.
        s.upsert_node(node("a", "z3"));
        check(&s);
        // Removing a node moves the last node into its index.
        s.remove_node("b");
        check(&s);
        s.remove_node("d");
        check(&s);
        for name in ["a", "c"] {
            s.remove_node(name);
        }
        check(&s);
        assert!(s.pod_groups().next().is_none());
        assert!(s.existing_anti.is_empty());
    }
}
