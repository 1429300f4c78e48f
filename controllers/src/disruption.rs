//! PodDisruptionBudget status (sans-IO), as upstream's `pkg/controller/disruption`
//! (`trySync`, read, not copied): how many of the selected pods are healthy, how many must
//! stay healthy, and how many may be disrupted now.
//!
//! `minAvailable: N` counts against the selected pods; `minAvailable: P%` and
//! `maxUnavailable` count against the *expected* pods, the sum of the scales of the pods'
//! controllers (Deployment, ReplicaSet, StatefulSet, ReplicationController).
//!
//! The shell owes the core: the pods of the PDB's namespace, and a lookup from a pod's
//! controller reference to that controller's scale (a ReplicaSet owned by a Deployment
//! counts as the Deployment); write the returned status when it differs. Pod and PDB events
//! requeue the PDBs of their namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::util::{controller_ref, is_deleting, is_pod_ready, scaled_value, selector_matches};

/// The condition type upstream sets.
pub const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";

fn condition(
    old: Option<&Condition>,
    ok: bool,
    reason: &str,
    message: &str,
    generation_: i64,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = old
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: DISRUPTION_ALLOWED.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(generation_),
        last_transition_time: since,
    }
}

/// The PDB's status given the pods of its namespace.
pub fn status<'a>(
    pdb: &PodDisruptionBudget,
    ns_pods: impl IntoIterator<Item = &'a Pod>,
    scale_of: impl Fn(&OwnerReference) -> Option<i32>,
    now: Timestamp,
) -> PodDisruptionBudgetStatus {
    let spec = pdb.spec.clone().unwrap_or_default();
    let generation_ = pdb.metadata.generation.unwrap_or(0);
    let old = pdb.status.clone().unwrap_or_default();
    let old_cond = old
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == DISRUPTION_ALLOWED));
    let failed = |msg: String| PodDisruptionBudgetStatus {
        disruptions_allowed: 0,
        observed_generation: Some(generation_),
        conditions: Some(vec![condition(
            old_cond,
            false,
            "SyncFailed",
            &msg,
            generation_,
            now,
        )]),
        ..old.clone()
    };
    // A PDB without a selector selects nothing (policy/v1: an empty one selects all).
    let Some(sel) = spec.selector.as_ref() else {
        return failed("the PodDisruptionBudget has no selector".into());
    };
    let mut pods: Vec<&Pod> = Vec::new();
    for p in ns_pods {
        match selector_matches(sel, p.metadata.labels.as_ref()) {
            Ok(true) => pods.push(p),
            Ok(false) => {}
            Err(e) => return failed(e.to_string()),
        }
    }
    let healthy = i32::try_from(
        pods.iter()
            .filter(|p| is_pod_ready(p) && !is_deleting(&p.metadata))
            .count(),
    )
    .unwrap_or(i32::MAX);
    let count = i32::try_from(pods.len()).unwrap_or(i32::MAX);
    let expected_scale = || -> Result<i32, String> {
        // Each controller once, however many of its pods match.
        let mut owners: BTreeMap<String, i32> = BTreeMap::new();
        for p in &pods {
            let Some(r) = controller_ref(&p.metadata) else {
                return Err(format!(
                    "found no controller for pod {:?}",
                    p.metadata.name.as_deref().unwrap_or("")
                ));
            };
            let s =
                scale_of(r).ok_or_else(|| format!("found no scale for {} {}", r.kind, r.name))?;
            owners.insert(r.uid.clone(), s);
        }
        Ok(owners.values().sum())
    };
    let (expected, desired) = match (&spec.min_available, &spec.max_unavailable) {
        (_, Some(mu)) => match expected_scale() {
            Ok(e) => match scaled_value(mu, e, true) {
                Ok(m) => (e, (e - m).max(0)),
                Err(err) => return failed(err.to_string()),
            },
            Err(m) => return failed(m),
        },
        (Some(IntOrString::Int(n)), None) => (count, *n),
        (Some(pct), None) => match expected_scale() {
            Ok(e) => match scaled_value(pct, e, true) {
                Ok(d) => (e, d),
                Err(err) => return failed(err.to_string()),
            },
            Err(m) => return failed(m),
        },
        (None, None) => (count, 1),
    };
    let allowed = if expected <= 0 {
        0
    } else {
        (healthy - desired).max(0)
    };
    let cond = if allowed > 0 {
        condition(old_cond, true, "SufficientPods", "", generation_, now)
    } else {
        condition(old_cond, false, "InsufficientPods", "", generation_, now)
    };
    PodDisruptionBudgetStatus {
        current_healthy: healthy,
        desired_healthy: desired,
        expected_pods: expected,
        disruptions_allowed: allowed,
        observed_generation: Some(generation_),
        disrupted_pods: old.disrupted_pods,
        conditions: Some(vec![cond]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{labels, pod, rs, ts};
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("p".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                selector: Some(LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                }),
                unhealthy_pod_eviction_policy: None,
            }),
            status: None,
        }
    }

    #[test]
    fn table() {
        let owner = rs("web", "rs-uid", 5);
        // 5 replicas wanted, 4 pods of which 3 ready.
        let pods = [
            pod("a", Some(&owner), "Running", true, "n"),
            pod("b", Some(&owner), "Running", true, "n"),
            pod("c", Some(&owner), "Running", true, "n"),
            pod("d", Some(&owner), "Pending", false, ""),
        ];
        let scale = |r: &OwnerReference| (r.uid == "rs-uid").then_some(5);
        let cases = [
            (Some(IntOrString::Int(2)), None, (3, 2, 4, 1)),
            (Some(IntOrString::Int(3)), None, (3, 3, 4, 0)),
            (Some(IntOrString::String("50%".into())), None, (3, 3, 5, 0)),
            (Some(IntOrString::String("40%".into())), None, (3, 2, 5, 1)),
            (None, Some(IntOrString::Int(1)), (3, 4, 5, 0)),
            (None, Some(IntOrString::Int(3)), (3, 2, 5, 1)),
        ];
        for (min, max, want) in cases {
            let s = status(&pdb(min.clone(), max.clone()), &pods, scale, ts(10));
            let got = (
                s.current_healthy,
                s.desired_healthy,
                s.expected_pods,
                s.disruptions_allowed,
            );
            assert_eq!(got, want, "{min:?} {max:?}");
            let c = &s.conditions.unwrap()[0];
            assert_eq!(c.status == "True", want.3 > 0);
            assert_eq!(s.observed_generation, Some(3));
        }
        // An orphan pod with a percentage: the scale is unknown, the sync fails.
        let orphan = pod("o", None, "Running", true, "n");
        let s = status(
            &pdb(None, Some(IntOrString::Int(1))),
            [&orphan],
            scale,
            ts(10),
        );
        assert_eq!(s.conditions.unwrap()[0].reason, "SyncFailed");
        assert_eq!(s.disruptions_allowed, 0);
    }
}
