//! NodeResourcesFit (Filter + Score with LeastAllocated, MostAllocated or
//! RequestedToCapacityRatio) and NodeResourcesBalancedAllocation.

use serde::Deserialize;

use crate::Error;
use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, Plugin, PreScorePlugin, ScorePlugin,
};
use crate::model::{NodeInfo, PodInfo, Snapshot};
use crate::queue::ClusterEvent;
use crate::status::{Reason, Status};

/// A resource and its weight in a scoring strategy.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ResourceSpec {
    /// Resource name ("cpu", "memory", "example.com/gpu").
    pub name: String,
    /// Weight (default 1).
    #[serde(default = "one")]
    pub weight: i64,
}

fn one() -> i64 {
    1
}

fn default_resources() -> Vec<ResourceSpec> {
    vec![
        ResourceSpec {
            name: "cpu".into(),
            weight: 1,
        },
        ResourceSpec {
            name: "memory".into(),
            weight: 1,
        },
    ]
}

/// One point of the RequestedToCapacityRatio shape (utilization 0..100, score 0..10).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct ShapePoint {
    /// Utilization in percent.
    pub utilization: i64,
    /// Score 0..10.
    pub score: i64,
}

/// How NodeResourcesFit scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScoringStrategy {
    /// Prefer nodes with the most free room (the default).
    LeastAllocated,
    /// Prefer the fullest nodes (bin packing).
    MostAllocated,
    /// A piecewise-linear function of utilization (points scaled to 0..100).
    RequestedToCapacityRatio(Vec<ShapePoint>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FitArgs {
    #[serde(default)]
    ignored_resources: Vec<String>,
    #[serde(default)]
    ignored_resource_groups: Vec<String>,
    scoring_strategy: Option<StrategyArgs>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StrategyArgs {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    resources: Option<Vec<ResourceSpec>>,
    requested_to_capacity_ratio: Option<RtcrArgs>,
}

#[derive(Debug, Deserialize)]
struct RtcrArgs {
    shape: Vec<ShapePoint>,
}

/// A resource name compiled once, so scoring does not compare strings per node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Cpu,
    Memory,
    Ephemeral,
    Pods,
    Scalar(String),
}

fn compile(resources: &[ResourceSpec]) -> Vec<(Kind, i64)> {
    resources
        .iter()
        .map(|r| {
            let k = match r.name.as_str() {
                "cpu" => Kind::Cpu,
                "memory" => Kind::Memory,
                "ephemeral-storage" => Kind::Ephemeral,
                "pods" => Kind::Pods,
                other => Kind::Scalar(other.to_owned()),
            };
            (k, r.weight)
        })
        .collect()
}

/// NodeResourcesFit.
#[derive(Debug, Clone)]
pub struct Fit {
    ignored: Vec<String>,
    ignored_groups: Vec<String>,
    strategy: ScoringStrategy,
    resources: Vec<(Kind, i64)>,
}

impl Default for Fit {
    fn default() -> Self {
        Fit {
            ignored: Vec::new(),
            ignored_groups: Vec::new(),
            strategy: ScoringStrategy::LeastAllocated,
            resources: compile(&default_resources()),
        }
    }
}

impl Fit {
    /// Builds from `NodeResourcesFitArgs`.
    pub fn from_args(args: &serde_json::Value) -> Result<Self, Error> {
        if args.is_null() {
            return Ok(Fit::default());
        }
        let a: FitArgs = serde_json::from_value(args.clone())
            .map_err(|e| Error::Config(format!("NodeResourcesFit args: {e}")))?;
        let mut fit = Fit {
            ignored: a.ignored_resources,
            ignored_groups: a.ignored_resource_groups,
            ..Fit::default()
        };
        if let Some(s) = a.scoring_strategy {
            if let Some(r) = s.resources {
                if r.iter().any(|r| r.weight <= 0 || r.weight > 100) {
                    return Err(Error::Config("resource weights must be in 1..=100".into()));
                }
                fit.resources = compile(&r);
            }
            fit.strategy = match s.kind.as_deref().unwrap_or("LeastAllocated") {
                "LeastAllocated" => ScoringStrategy::LeastAllocated,
                "MostAllocated" => ScoringStrategy::MostAllocated,
                "RequestedToCapacityRatio" => {
                    let shape = s
                        .requested_to_capacity_ratio
                        .ok_or_else(|| {
                            Error::Config("RequestedToCapacityRatio needs a shape".into())
                        })?
                        .shape;
                    if shape.is_empty()
                        || shape
                            .windows(2)
                            .any(|w| w[0].utilization >= w[1].utilization)
                        || shape.iter().any(|p| {
                            !(0..=100).contains(&p.utilization) || !(0..=10).contains(&p.score)
                        })
                    {
                        return Err(Error::Config("bad RequestedToCapacityRatio shape".into()));
                    }
                    ScoringStrategy::RequestedToCapacityRatio(
                        shape
                            .into_iter()
                            .map(|p| ShapePoint {
                                utilization: p.utilization,
                                score: p.score * 10,
                            })
                            .collect(),
                    )
                }
                other => return Err(Error::Config(format!("unknown scoring strategy {other:?}"))),
            };
        }
        Ok(fit)
    }

    fn is_ignored(&self, name: &str) -> bool {
        self.ignored.iter().any(|i| i == name)
            || name
                .split_once('/')
                .is_some_and(|(g, _)| self.ignored_groups.iter().any(|i| i == g))
    }
}

/// Reasons a pod does not fit a node, as upstream's `fitsRequest`.
pub(crate) fn insufficient(
    pod: &PodInfo,
    node: &NodeInfo,
    ignore: impl Fn(&str) -> bool,
) -> Vec<Reason> {
    let mut reasons = Vec::new();
    let alloc = &node.allocatable;
    let used = &node.requested;
    if node.pods.len() as i64 + 1 > alloc.pods {
        reasons.push(Reason::Borrowed("Too many pods"));
    }
    let r = &pod.requests;
    if r.is_zero() {
        return reasons;
    }
    if r.milli_cpu > 0 && r.milli_cpu > alloc.milli_cpu - used.milli_cpu {
        reasons.push(Reason::Borrowed("Insufficient cpu"));
    }
    if r.memory > 0 && r.memory > alloc.memory - used.memory {
        reasons.push(Reason::Borrowed("Insufficient memory"));
    }
    if r.ephemeral_storage > 0
        && r.ephemeral_storage > alloc.ephemeral_storage - used.ephemeral_storage
    {
        reasons.push(Reason::Borrowed("Insufficient ephemeral-storage"));
    }
    for (name, v) in &r.scalar {
        if *v == 0 || ignore(name) {
            continue;
        }
        if *v > alloc.scalar(name) - used.scalar(name) {
            reasons.push(Reason::Owned(format!("Insufficient {name}")));
        }
    }
    reasons
}

impl Plugin for Fit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
    fn events(&self) -> &'static [ClusterEvent] {
        &[
            ClusterEvent::NodeAdd,
            ClusterEvent::NodeUpdate,
            ClusterEvent::PodDelete,
        ]
    }
}

impl FilterPlugin for Fit {
    #[inline]
    fn filter(
        &self,
        _: usize,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        // Fast path: the common resources only.
        let (a, u, r) = (&node.allocatable, &node.requested, &pod.requests);
        if (node.pods.len() as i64) < a.pods
            && r.milli_cpu <= a.milli_cpu - u.milli_cpu
            && r.memory <= a.memory - u.memory
            && r.ephemeral_storage <= a.ephemeral_storage - u.ephemeral_storage
            && r.scalar.is_empty()
        {
            return Status::Success;
        }
        let reasons = insufficient(pod, node, |n| self.is_ignored(n));
        if reasons.is_empty() {
            Status::Success
        } else {
            Status::Unschedulable(reasons)
        }
    }
}

/// (allocatable, requested-with-the-pod) of a resource for scoring; None to leave it out.
#[inline]
fn alloc_and_request(
    kind: &Kind,
    pod: &PodInfo,
    node: &NodeInfo,
    use_requested: bool,
) -> Option<(i64, i64)> {
    let (alloc, req) = match kind {
        Kind::Cpu if use_requested => (
            node.allocatable.milli_cpu,
            node.requested.milli_cpu + pod.requests.milli_cpu,
        ),
        Kind::Cpu => (
            node.allocatable.milli_cpu,
            node.non_zero_cpu + pod.non_zero_cpu,
        ),
        Kind::Memory if use_requested => (
            node.allocatable.memory,
            node.requested.memory + pod.requests.memory,
        ),
        Kind::Memory => (
            node.allocatable.memory,
            node.non_zero_mem + pod.non_zero_mem,
        ),
        Kind::Ephemeral => (
            node.allocatable.ephemeral_storage,
            node.requested.ephemeral_storage + pod.requests.ephemeral_storage,
        ),
        Kind::Pods => return None,
        Kind::Scalar(name) => {
            let p = pod.requests.scalar(name);
            if p == 0 {
                return None;
            }
            (
                node.allocatable.scalar(name),
                node.requested.scalar(name) + p,
            )
        }
    };
    (alloc != 0).then_some((alloc, req))
}

fn broken_linear(shape: &[ShapePoint], p: i64) -> i64 {
    for (i, pt) in shape.iter().enumerate() {
        if p <= pt.utilization {
            if i == 0 {
                return shape[0].score;
            }
            let prev = shape[i - 1];
            return prev.score
                + (pt.score - prev.score) * (p - prev.utilization)
                    / (pt.utilization - prev.utilization);
        }
    }
    shape[shape.len() - 1].score
}

impl ScorePlugin for Fit {
    #[inline]
    fn score(&self, _: usize, _: &CycleState, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let mut score = 0i64;
        let mut weights = 0i64;
        for (kind, weight) in &self.resources {
            let Some((alloc, req)) = alloc_and_request(kind, pod, node, false) else {
                continue;
            };
            let s = match &self.strategy {
                ScoringStrategy::LeastAllocated => {
                    if req > alloc {
                        0
                    } else {
                        (alloc - req) * MAX_NODE_SCORE / alloc
                    }
                }
                ScoringStrategy::MostAllocated => req.min(alloc) * MAX_NODE_SCORE / alloc,
                ScoringStrategy::RequestedToCapacityRatio(shape) => {
                    let util = if req > alloc { 100 } else { req * 100 / alloc };
                    let s = broken_linear(shape, util);
                    if s <= 0 {
                        continue;
                    }
                    s
                }
            };
            score += s * weight;
            weights += weight;
        }
        if weights == 0 {
            return 0;
        }
        match self.strategy {
            ScoringStrategy::RequestedToCapacityRatio(_) => {
                (score as f64 / weights as f64).round() as i64
            }
            _ => score / weights,
        }
    }
}

/// NodeResourcesBalancedAllocation: prefers nodes whose resource fractions stay close.
#[derive(Debug, Clone)]
pub struct BalancedAllocation {
    resources: Vec<(Kind, i64)>,
    names: Vec<String>,
}

impl Default for BalancedAllocation {
    fn default() -> Self {
        let r = default_resources();
        BalancedAllocation {
            resources: compile(&r),
            names: r.into_iter().map(|r| r.name).collect(),
        }
    }
}

impl BalancedAllocation {
    /// Builds from `NodeResourcesBalancedAllocationArgs`.
    pub fn from_args(args: &serde_json::Value) -> Result<Self, Error> {
        #[derive(Deserialize)]
        struct A {
            resources: Option<Vec<ResourceSpec>>,
        }
        if args.is_null() {
            return Ok(Self::default());
        }
        let a: A = serde_json::from_value(args.clone())
            .map_err(|e| Error::Config(format!("BalancedAllocation args: {e}")))?;
        let r = a.resources.unwrap_or_else(default_resources);
        Ok(BalancedAllocation {
            resources: compile(&r),
            names: r.into_iter().map(|r| r.name).collect(),
        })
    }
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn as_pre_score(&self) -> Option<&dyn PreScorePlugin> {
        Some(self)
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl PreScorePlugin for BalancedAllocation {
    fn pre_score(&self, _: usize, _: &mut CycleState, pod: &PodInfo, _: &Snapshot) -> Status {
        // A best-effort pod changes no fraction.
        if self.names.iter().all(|n| pod.requests.get(n) == 0) {
            Status::Skip
        } else {
            Status::Success
        }
    }
}

impl ScorePlugin for BalancedAllocation {
    #[inline]
    fn score(&self, _: usize, _: &CycleState, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let mut fr = [0f64; 8];
        let mut n = 0;
        let mut extra = Vec::new();
        for (kind, _) in &self.resources {
            let Some((alloc, req)) = alloc_and_request(kind, pod, node, true) else {
                continue;
            };
            let f = (req as f64 / alloc as f64).min(1.0);
            if n < fr.len() {
                fr[n] = f;
                n += 1;
            } else {
                extra.push(f);
            }
        }
        let all: Vec<f64>;
        let fr: &[f64] = if extra.is_empty() {
            &fr[..n]
        } else {
            all = fr.iter().copied().chain(extra).collect();
            &all
        };
        let std = match fr.len() {
            0 | 1 => 0.0,
            2 => (fr[0] - fr[1]).abs() / 2.0,
            len => {
                let mean = fr.iter().sum::<f64>() / len as f64;
                (fr.iter().map(|f| (f - mean) * (f - mean)).sum::<f64>() / len as f64).sqrt()
            }
        };
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::plugins::testutil::*;
    use crate::status::Status;

    #[test]
    fn fit_filter_table() {
        let fw = single("NodeResourcesFit", None);
        let mut s = snap(vec![node(
            json!({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "3", "example.com/gpu": "2"}}}),
        )]);
        s.add_pod(0, Arc::new(req_pod("e", "3", "4Gi")));
        let gpu = |n: &str| {
            pod(
                json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": n}}}]}}),
            )
        };
        let cases: Vec<(crate::model::PodInfo, Vec<&str>)> = vec![
            (req_pod("p", "1", "4Gi"), vec![]),
            (req_pod("p", "1100m", "1Gi"), vec!["Insufficient cpu"]),
            (
                req_pod("p", "2", "5Gi"),
                vec!["Insufficient cpu", "Insufficient memory"],
            ),
            (gpu("2"), vec![]),
            (gpu("3"), vec!["Insufficient example.com/gpu"]),
            // Init containers: the max of the sum of containers and each init step.
            (
                pod(json!({"spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}})),
                vec!["Insufficient cpu"],
            ),
            // Overhead counts.
            (
                pod(json!({"spec": {"overhead": {"cpu": "600m"},
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}})),
                vec!["Insufficient cpu"],
            ),
            (
                pod(json!({"spec": {"overhead": {"cpu": "500m"},
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}})),
                vec![],
            ),
        ];
        for (p, want) in cases {
            let st = &filter_all(&fw, &p, &s)[0];
            let got: Vec<String> = st.reasons().iter().map(|r| r.to_string()).collect();
            assert_eq!(got, want, "{:?}", p.requests);
        }
        // Too many pods.
        s.add_pod(0, Arc::new(req_pod("e2", "0", "0")));
        s.add_pod(0, Arc::new(req_pod("e3", "0", "0")));
        let st = &filter_all(&fw, &req_pod("p", "0", "0"), &s)[0];
        assert_eq!(*st, Status::unschedulable("Too many pods"));
    }

    #[test]
    fn sidecars_add_to_the_sum() {
        let p = pod(json!({"spec": {
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "1"}}},
                {"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}}));
        // max(1 + 0.5, 2 + 1) = 3
        assert_eq!(p.requests.milli_cpu, 3000);
    }

    #[test]
    fn least_most_and_ratio_scores() {
        // Upstream examples: node 4000m/10000 mem, pod 3000m/5000 (non-zero requests).
        let mk = || {
            snap(vec![
                node(
                    json!({"metadata": {"name": "a"}, "status": {"allocatable": {"cpu": "4", "memory": "10000", "pods": "10"}}}),
                ),
                node(
                    json!({"metadata": {"name": "b"}, "status": {"allocatable": {"cpu": "6", "memory": "10000", "pods": "10"}}}),
                ),
            ])
        };
        let p = req_pod("p", "3", "5000");
        let least = single("NodeResourcesFit", None);
        // a: cpu (4000-3000)*100/4000=25, mem 50 -> 37; b: cpu 50, mem 50 -> 50
        assert_eq!(score_all(&least, &p, &mk()), vec![37, 50]);
        let most = single(
            "NodeResourcesFit",
            Some(json!({"scoringStrategy": {"type": "MostAllocated"}})),
        );
        // a: 75, 50 -> 62; b: 50, 50 -> 50
        assert_eq!(score_all(&most, &p, &mk()), vec![62, 50]);
        let ratio = single(
            "NodeResourcesFit",
            Some(
                json!({"scoringStrategy": {"type": "RequestedToCapacityRatio",
                "requestedToCapacityRatio": {"shape": [{"utilization": 0, "score": 10}, {"utilization": 100, "score": 0}]}}}),
            ),
        );
        // a: util cpu 75 -> 25, mem 50 -> 50 -> round(37.5)=38; b: 50, 50 -> 50
        assert_eq!(score_all(&ratio, &p, &mk()), vec![38, 50]);
        // Weighted resources.
        let weighted = single(
            "NodeResourcesFit",
            Some(
                json!({"scoringStrategy": {"type": "LeastAllocated", "resources": [{"name": "cpu", "weight": 3}, {"name": "memory", "weight": 1}]}}),
            ),
        );
        // a: (25*3+50)/4 = 31
        assert_eq!(score_all(&weighted, &p, &mk())[0], 31);
        // Empty pod: non-zero defaults (100m, 200Mi) apply to scoring.
        let empty = pod(json!({"spec": {"containers": [{"name": "c"}]}}));
        assert_eq!(empty.non_zero_cpu, 100);
        assert!(empty.requests.is_zero());
    }

    #[test]
    fn extended_resources_in_scoring() {
        let fw = single(
            "NodeResourcesFit",
            Some(
                json!({"scoringStrategy": {"type": "MostAllocated", "resources": [{"name": "example.com/gpu", "weight": 1}]}}),
            ),
        );
        let s = snap(vec![
            node(
                json!({"metadata": {"name": "a"}, "status": {"allocatable": {"cpu": "4", "memory": "1Gi", "pods": "10", "example.com/gpu": "4"}}}),
            ),
            node(
                json!({"metadata": {"name": "b"}, "status": {"allocatable": {"cpu": "4", "memory": "1Gi", "pods": "10", "example.com/gpu": "8"}}}),
            ),
        ]);
        let p = pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": "2"}}}]}}),
        );
        assert_eq!(score_all(&fw, &p, &s), vec![50, 25]);
        // A pod not asking for the resource leaves it out: score 0.
        assert_eq!(score_all(&fw, &req_pod("q", "1", "1"), &s), vec![0, 0]);
    }

    #[test]
    fn balanced_allocation_table() {
        let fw = single("NodeResourcesBalancedAllocation", None);
        let s = snap(vec![
            node(
                json!({"metadata": {"name": "a"}, "status": {"allocatable": {"cpu": "4", "memory": "10000", "pods": "10"}}}),
            ),
            node(
                json!({"metadata": {"name": "b"}, "status": {"allocatable": {"cpu": "6", "memory": "10000", "pods": "10"}}}),
            ),
        ]);
        let p = req_pod("p", "3", "5000");
        // a: |0.75-0.5|/2 = 0.125 -> 87; b: 0 -> 100
        assert_eq!(score_all(&fw, &p, &s), vec![87, 100]);
        // Best effort: skipped, every node scores 0.
        let be = pod(json!({"spec": {"containers": [{"name": "c"}]}}));
        assert_eq!(score_all(&fw, &be, &s), vec![0, 0]);
    }
}
