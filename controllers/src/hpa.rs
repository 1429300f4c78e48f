//! HorizontalPodAutoscaler (autoscaling/v2) core: upstream's replica calculator and its
//! normalization (stabilization windows, scaling policies, min/max), as pure functions.
//!
//! Follows `pkg/controller/podautoscaler/{replica_calculator,horizontal}.go`:
//! - [`resource_replicas`]: utilization or averageValue targets over pod metrics, tolerance
//!   0.1, pods grouped into ready / unready / missing / ignored (deleted, failed, pending,
//!   CPU samples in the initialization period), the conservative second pass (missing pods
//!   at 100 %/target on scale-down, 0 on scale-up; unready pods 0 on scale-up) and the
//!   "no change of direction" rule;
//! - [`Recommender`]: per-HPA recommendation and scale-event history; `normalize` applies
//!   `spec.behavior` (stabilization windows with the 300 s scale-down default, Pods/Percent
//!   policies with `selectPolicy` Max/Min/Disabled) or, without behavior, the legacy rules
//!   (5 min downscale stabilization, scale-up limit max(2x, 4)).
//!
//! Time is an argument (`now`, milliseconds); nothing here reads a clock.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};

/// Upstream's `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;
/// `--horizontal-pod-autoscaler-cpu-initialization-period` (ms).
pub const CPU_INITIALIZATION_PERIOD_MS: i64 = 5 * 60 * 1000;
/// `--horizontal-pod-autoscaler-initial-readiness-delay` (ms).
pub const INITIAL_READINESS_DELAY_MS: i64 = 30 * 1000;
/// `--horizontal-pod-autoscaler-downscale-stabilization` (s), also the default
/// `behavior.scaleDown.stabilizationWindowSeconds`.
pub const DOWNSCALE_STABILIZATION_S: i32 = 300;

/// Why a replica count could not be computed (the text goes into the HPA's condition).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CalcError {
    /// The selector matched no pod.
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    /// Every pod was unready or had no sample.
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoMetrics,
    /// A container has no request for the resource (utilization needs one).
    #[error("missing request for {resource} in container {container} of Pod {pod}")]
    MissingRequest {
        /// Resource name.
        resource: String,
        /// Container name.
        container: String,
        /// Pod name.
        pod: String,
    },
    /// No sample matched a pod with a request.
    #[error("no metrics returned matched known pods")]
    NoMatch,
}

/// A pod as the calculator sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    /// Pod name (the key of metrics).
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    /// Being deleted.
    pub deleting: bool,
    /// The Ready condition: `(status == True, lastTransitionTime ms)`, if present.
    pub ready: Option<(bool, i64)>,
    /// `status.startTime` (ms).
    pub start_ms: Option<i64>,
    /// The pod's request for the resource (milli), `Err(container)` when a container has
    /// none.
    pub request: Result<i64, String>,
}

/// One pod's sample (milli-units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Value (millicores, milli-bytes).
    pub value: i64,
    /// When it was taken (ms).
    pub timestamp_ms: i64,
    /// Its window (ms).
    pub window_ms: i64,
}

/// What the metric's target is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// `averageUtilization` (percent of requests).
    Utilization(i32),
    /// `averageValue` (milli).
    AverageValue(i64),
}

/// Result of one metric's calculation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Proposed replicas.
    pub replicas: i32,
    /// Current utilization percent (utilization targets).
    pub utilization: Option<i32>,
    /// Current average value (milli).
    pub average: i64,
}

fn within_tolerance(ratio: f64) -> bool {
    (1.0 - ratio).abs() <= TOLERANCE
}

struct Groups {
    ready: usize,
    unready: Vec<String>,
    missing: Vec<String>,
    ignored: Vec<String>,
}

fn group_pods(
    pods: &[PodInfo],
    metrics: &BTreeMap<String, Sample>,
    cpu: bool,
    now_ms: i64,
) -> Groups {
    let mut g = Groups {
        ready: 0,
        unready: Vec::new(),
        missing: Vec::new(),
        ignored: Vec::new(),
    };
    for p in pods {
        if p.deleting || p.phase == "Failed" {
            g.ignored.push(p.name.clone());
            continue;
        }
        if p.phase == "Pending" {
            g.unready.push(p.name.clone());
            continue;
        }
        let Some(m) = metrics.get(&p.name) else {
            g.missing.push(p.name.clone());
            continue;
        };
        if cpu {
            let unready = match (p.ready, p.start_ms) {
                (Some((ready, transition)), Some(start)) => {
                    if start + CPU_INITIALIZATION_PERIOD_MS > now_ms {
                        !ready || m.timestamp_ms < transition + m.window_ms
                    } else {
                        !ready && start + INITIAL_READINESS_DELAY_MS > transition
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.push(p.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// `(ratio, utilization, raw average)` of `GetResourceUtilizationRatio`.
fn utilization_ratio(
    metrics: &BTreeMap<String, Sample>,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), CalcError> {
    let (mut total, mut req, mut n) = (0i64, 0i64, 0i64);
    for (pod, m) in metrics {
        let Some(r) = requests.get(pod) else { continue };
        total += m.value;
        req += r;
        n += 1;
    }
    if req == 0 || n == 0 {
        return Err(CalcError::NoMatch);
    }
    let util = i32::try_from(total * 100 / req).unwrap_or(i32::MAX);
    Ok((f64::from(util) / f64::from(target.max(1)), util, total / n))
}

fn usage_ratio(metrics: &BTreeMap<String, Sample>, target: i64) -> (f64, i64) {
    let n = i64::try_from(metrics.len()).unwrap_or(1).max(1);
    let avg = metrics.values().map(|m| m.value).sum::<i64>() / n;
    (avg as f64 / target.max(1) as f64, avg)
}

fn ceil_i32(x: f64) -> i32 {
    let c = x.ceil();
    if c >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        c as i32
    }
}

/// Upstream `GetResourceReplicas` / `GetRawResourceReplicas` for one resource metric.
/// `metrics` is keyed by pod name; `cpu` enables the readiness rules that only apply to CPU.
pub fn resource_replicas(
    current: i32,
    target: Target,
    pods: &[PodInfo],
    metrics: &BTreeMap<String, Sample>,
    cpu: bool,
    now_ms: i64,
) -> Result<Proposal, CalcError> {
    if pods.is_empty() {
        return Err(CalcError::NoPods);
    }
    let mut metrics = metrics.clone();
    let g = group_pods(pods, &metrics, cpu, now_ms);
    for n in g.ignored.iter().chain(&g.unready) {
        metrics.remove(n);
    }
    if metrics.is_empty() {
        return Err(CalcError::NoMetrics);
    }
    let mut requests = BTreeMap::new();
    if let Target::Utilization(_) = target {
        for p in pods {
            match &p.request {
                Ok(r) => {
                    requests.insert(p.name.clone(), *r);
                }
                Err(c) => {
                    return Err(CalcError::MissingRequest {
                        resource: if cpu { "cpu" } else { "memory" }.into(),
                        container: c.clone(),
                        pod: p.name.clone(),
                    });
                }
            }
        }
    }
    let ratio_of = |m: &BTreeMap<String, Sample>| -> Result<(f64, Option<i32>, i64), CalcError> {
        match target {
            Target::Utilization(t) => {
                utilization_ratio(m, &requests, t).map(|(r, u, a)| (r, Some(u), a))
            }
            Target::AverageValue(v) => {
                let (r, a) = usage_ratio(m, v);
                Ok((r, None, a))
            }
        }
    };
    let (ratio, utilization, average) = ratio_of(&metrics)?;
    let keep = Proposal {
        replicas: current,
        utilization,
        average,
    };
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if within_tolerance(ratio) {
            return Ok(keep);
        }
        return Ok(Proposal {
            replicas: ceil_i32(ratio * g.ready as f64),
            ..keep
        });
    }
    if !g.missing.is_empty() {
        for name in &g.missing {
            let value = if ratio < 1.0 {
                match target {
                    Target::Utilization(t) => {
                        requests.get(name).copied().unwrap_or(0) * i64::from(t.max(100)) / 100
                    }
                    Target::AverageValue(v) => v,
                }
            } else {
                0
            };
            if ratio != 1.0 {
                metrics.insert(
                    name.clone(),
                    Sample {
                        value,
                        timestamp_ms: now_ms,
                        window_ms: 0,
                    },
                );
            }
        }
    }
    if scale_up_with_unready {
        for name in &g.unready {
            metrics.insert(
                name.clone(),
                Sample {
                    value: 0,
                    timestamp_ms: now_ms,
                    window_ms: 0,
                },
            );
        }
    }
    let (new_ratio, _, _) = ratio_of(&metrics)?;
    if within_tolerance(new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(keep);
    }
    let replicas = ceil_i32(new_ratio * metrics.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(keep);
    }
    Ok(Proposal { replicas, ..keep })
}

/// A condition the normalization sets: `(type, status, reason, message)`.
pub type CondSet = (&'static str, bool, &'static str, &'static str);

/// Upstream's default scale-up rules: no stabilization, max of +4 pods or +100 % per 15 s.
pub fn default_scale_up() -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: Some(0),
        select_policy: Some("Max".into()),
        policies: Some(vec![
            HPAScalingPolicy {
                type_: "Pods".into(),
                value: 4,
                period_seconds: 15,
            },
            HPAScalingPolicy {
                type_: "Percent".into(),
                value: 100,
                period_seconds: 15,
            },
        ]),
        tolerance: None,
    }
}

/// Upstream's default scale-down rules: 300 s stabilization, -100 % per 15 s.
pub fn default_scale_down() -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: Some(DOWNSCALE_STABILIZATION_S),
        select_policy: Some("Max".into()),
        policies: Some(vec![HPAScalingPolicy {
            type_: "Percent".into(),
            value: 100,
            period_seconds: 15,
        }]),
        tolerance: None,
    }
}

/// `GenerateHPAScale{Up,Down}Rules`: the user's rules with unset fields defaulted.
fn fill(rules: Option<&HPAScalingRules>, default: HPAScalingRules) -> HPAScalingRules {
    let Some(r) = rules else { return default };
    HPAScalingRules {
        stabilization_window_seconds: r
            .stabilization_window_seconds
            .or(default.stabilization_window_seconds),
        select_policy: r.select_policy.clone().or(default.select_policy),
        policies: r.policies.clone().or(default.policies),
        tolerance: r.tolerance.clone(),
    }
}

#[derive(Clone, Copy, Debug)]
struct Timed {
    value: i32,
    at_ms: i64,
}

/// Per-HPA memory of recommendations and scale events (upstream keeps it in the
/// controller; it is lost on restart there too). Bounded: one entry per distinct time
/// window slot, old entries are overwritten or pruned.
#[derive(Debug, Default)]
pub struct Recommender {
    recommendations: HashMap<String, Vec<Timed>>,
    scale_up: HashMap<String, Vec<Timed>>,
    scale_down: HashMap<String, Vec<Timed>>,
}

/// Upper bound of history entries kept per HPA and list.
const MAX_HISTORY: usize = 1024;

impl Recommender {
    /// Records the target's size when the HPA is first seen (`recordInitialRecommendation`).
    pub fn initial(&mut self, key: &str, current: i32, now_ms: i64) {
        self.recommendations
            .entry(key.to_string())
            .or_insert_with(|| {
                vec![Timed {
                    value: current,
                    at_ms: now_ms,
                }]
            });
    }

    /// Forgets a deleted HPA.
    pub fn forget(&mut self, key: &str) {
        self.recommendations.remove(key);
        self.scale_up.remove(key);
        self.scale_down.remove(key);
    }

    fn record(list: &mut Vec<Timed>, old: Option<usize>, t: Timed) {
        match old {
            Some(i) => list[i] = t,
            None if list.len() < MAX_HISTORY => list.push(t),
            None => {
                if let Some(oldest) = (0..list.len()).min_by_key(|i| list[*i].at_ms) {
                    list[oldest] = t;
                }
            }
        }
    }

    /// Records a rescale (`storeScaleEvent`): events older than the longest policy period
    /// are replaced.
    pub fn scaled(
        &mut self,
        key: &str,
        behavior: Option<&HorizontalPodAutoscalerBehavior>,
        from: i32,
        to: i32,
        now_ms: i64,
    ) {
        let Some(b) = behavior else { return };
        let (list, rules, change) = if to > from {
            (
                self.scale_up.entry(key.to_string()).or_default(),
                fill(b.scale_up.as_ref(), default_scale_up()),
                to - from,
            )
        } else {
            (
                self.scale_down.entry(key.to_string()).or_default(),
                fill(b.scale_down.as_ref(), default_scale_down()),
                from - to,
            )
        };
        let longest = rules
            .policies
            .iter()
            .flatten()
            .map(|p| i64::from(p.period_seconds))
            .max()
            .unwrap_or(0);
        let cutoff = now_ms - longest * 1000;
        let old = list.iter().position(|e| e.at_ms <= cutoff);
        Self::record(
            list,
            old,
            Timed {
                value: change,
                at_ms: now_ms,
            },
        );
    }

    fn changes_since(list: Option<&Vec<Timed>>, period_s: i32, now_ms: i64) -> i32 {
        let cutoff = now_ms - i64::from(period_s) * 1000;
        list.into_iter()
            .flatten()
            .filter(|e| e.at_ms > cutoff)
            .map(|e| e.value)
            .sum()
    }

    fn limit(
        &self,
        key: &str,
        current: i32,
        rules: &HPAScalingRules,
        up: bool,
        now_ms: i64,
    ) -> i32 {
        let policy = rules.select_policy.as_deref().unwrap_or("Max");
        if policy == "Disabled" {
            return current;
        }
        let min_change = policy == "Min";
        // Up: Max picks the highest limit; down: Max picks the lowest.
        let pick_max = up != min_change;
        let mut result = if pick_max { i32::MIN } else { i32::MAX };
        for p in rules.policies.iter().flatten() {
            let added = Self::changes_since(self.scale_up.get(key), p.period_seconds, now_ms);
            let deleted = Self::changes_since(self.scale_down.get(key), p.period_seconds, now_ms);
            let start = current - added + deleted;
            let proposed = match (p.type_.as_str(), up) {
                ("Pods", true) => start.saturating_add(p.value),
                ("Pods", false) => start - p.value,
                (_, true) => ceil_i32(f64::from(start) * (1.0 + f64::from(p.value) / 100.0)),
                (_, false) => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
            };
            result = if pick_max {
                result.max(proposed)
            } else {
                result.min(proposed)
            };
        }
        result
    }

    /// Normalizes a metric proposal into the replicas to set, and the `AbleToScale` and
    /// `ScalingLimited` conditions to record (upstream `normalizeDesiredReplicas[WithBehaviors]`).
    #[allow(clippy::too_many_arguments)]
    pub fn normalize(
        &mut self,
        key: &str,
        behavior: Option<&HorizontalPodAutoscalerBehavior>,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now_ms: i64,
    ) -> (i32, CondSet, CondSet) {
        match behavior {
            None => self.normalize_legacy(key, current, desired, min, max, now_ms),
            Some(b) => self.normalize_behavior(key, b, current, desired, min, max, now_ms),
        }
    }

    fn normalize_legacy(
        &mut self,
        key: &str,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now_ms: i64,
    ) -> (i32, CondSet, CondSet) {
        let cutoff = now_ms - i64::from(DOWNSCALE_STABILIZATION_S) * 1000;
        let list = self.recommendations.entry(key.to_string()).or_default();
        let mut stabilized = desired;
        let mut old = None;
        for (i, r) in list.iter().enumerate() {
            if r.at_ms < cutoff {
                old = Some(i);
            } else {
                stabilized = stabilized.max(r.value);
            }
        }
        Self::record(
            list,
            old,
            Timed {
                value: desired,
                at_ms: now_ms,
            },
        );
        let able = if stabilized == desired {
            (
                "AbleToScale",
                true,
                "ReadyForNewScale",
                "recommended size matches current size",
            )
        } else {
            (
                "AbleToScale",
                true,
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        };
        let up_limit = (current.saturating_mul(2)).max(4);
        let (max_allowed, reason, msg) = if max > up_limit {
            (
                up_limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        let (out, reason, msg) = if stabilized < min {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        } else if stabilized > max_allowed {
            (max_allowed, reason, msg)
        } else {
            (
                stabilized,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        };
        (
            out,
            able,
            ("ScalingLimited", out != stabilized, reason, msg),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn normalize_behavior(
        &mut self,
        key: &str,
        b: &HorizontalPodAutoscalerBehavior,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now_ms: i64,
    ) -> (i32, CondSet, CondSet) {
        let up = fill(b.scale_up.as_ref(), default_scale_up());
        let down = fill(b.scale_down.as_ref(), default_scale_down());
        let up_cut = now_ms - i64::from(up.stabilization_window_seconds.unwrap_or(0)) * 1000;
        let down_cut = now_ms
            - i64::from(
                down.stabilization_window_seconds
                    .unwrap_or(DOWNSCALE_STABILIZATION_S),
            ) * 1000;
        let list = self.recommendations.entry(key.to_string()).or_default();
        let (mut up_rec, mut down_rec) = (desired, desired);
        let mut old = None;
        for (i, r) in list.iter().enumerate() {
            if r.at_ms > up_cut {
                up_rec = up_rec.min(r.value);
            }
            if r.at_ms > down_cut {
                down_rec = down_rec.max(r.value);
            }
            if r.at_ms < up_cut && r.at_ms < down_cut {
                old = Some(i);
            }
        }
        let stabilized = current.max(up_rec).min(down_rec);
        Self::record(
            list,
            old,
            Timed {
                value: desired,
                at_ms: now_ms,
            },
        );
        let able = if stabilized == desired {
            (
                "AbleToScale",
                true,
                "ReadyForNewScale",
                "recommended size matches current size",
            )
        } else if desired >= current {
            (
                "AbleToScale",
                true,
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            (
                "AbleToScale",
                true,
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        };
        let (out, reason, msg) = if stabilized > current {
            let limit = self.limit(key, current, &up, true, now_ms).max(current);
            let (allowed, reason, msg) = if max > limit {
                (
                    limit,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    max,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if stabilized > allowed {
                (allowed, reason, msg)
            } else {
                (
                    stabilized,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range",
                )
            }
        } else if stabilized < current {
            let limit = self.limit(key, current, &down, false, now_ms).min(current);
            let (allowed, reason, msg) = if min < limit {
                (
                    limit,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    min,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if stabilized < allowed {
                (allowed, reason, msg)
            } else {
                (
                    stabilized,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range",
                )
            }
        } else {
            (
                stabilized,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        };
        (
            out,
            able,
            ("ScalingLimited", out != stabilized, reason, msg),
        )
    }
}

#[cfg(test)]
mod tests;
