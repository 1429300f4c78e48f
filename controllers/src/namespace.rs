//! Namespace lifecycle core (sans-IO), after upstream's `pkg/controller/namespace`: a
//! namespace being deleted (phase Terminating, the `kubernetes` finalizer in `spec`) has all
//! its content deleted; once nothing is left the finalizer is removed through the
//! `namespaces/{name}/finalize` subresource and the apiserver deletes the namespace.
//!
//! The shell owes the core, per reconcile of a namespace being deleted:
//! 1. for every namespaced resource it knows, list what is left in the namespace
//!    ([`Remaining`]) and issue a delete-collection for the kinds that still have objects;
//! 2. call [`step`]; write the conditions when they changed; when it says
//!    [`Step::Finalize`], PUT the namespace to `/finalize` without the `kubernetes`
//!    finalizer; otherwise requeue after [`Step::Wait`]'s delay.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The finalizer in `spec.finalizers` the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";

/// What is left of one resource in the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remaining {
    /// Resource (plural, with group: `pods`, `deployments.apps`).
    pub resource: String,
    /// How many objects remain.
    pub count: usize,
    /// Finalizers those objects carry (deduplicated), with how many objects carry each.
    pub finalizers: Vec<(String, usize)>,
}

/// The next step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Not being deleted, or not ours to finalize.
    Nothing,
    /// Content remains: check again after this long.
    Wait(Duration),
    /// Nothing left: remove the `kubernetes` finalizer.
    Finalize,
}

/// Whether the namespace is being deleted and still carries our finalizer.
pub fn needs_finalizing(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        && ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// The next step for `ns` given what remains (and the errors of this pass).
pub fn step(ns: &Namespace, remaining: &[Remaining], errors: &[String]) -> Step {
    if !needs_finalizing(ns) {
        return Step::Nothing;
    }
    if errors.is_empty() && remaining.iter().all(|r| r.count == 0) {
        Step::Finalize
    } else {
        // Upstream requeues content-remaining namespaces after an estimate (graceful pod
        // deletion); a short fixed delay keeps tests fast and the load small.
        Step::Wait(Duration::from_secs(1))
    }
}

fn cond(
    type_: &str,
    ok: bool,
    reason_ok: &str,
    reason_bad: &str,
    msg: String,
    now: Timestamp,
) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if ok { "False" } else { "True" }.into(),
        reason: Some(if ok { reason_ok } else { reason_bad }.into()),
        message: Some(if ok { String::new() } else { msg }),
        last_transition_time: Some(Time(now)),
    }
}

/// Upstream's deletion conditions for this pass. Conditions whose status and reason did not
/// change keep their transition time from `old`.
pub fn conditions(
    old: &[NamespaceCondition],
    remaining: &[Remaining],
    errors: &[String],
    now: Timestamp,
) -> Vec<NamespaceCondition> {
    let left: Vec<String> = remaining
        .iter()
        .filter(|r| r.count > 0)
        .map(|r| format!("{} has {} resource instances", r.resource, r.count))
        .collect();
    let mut fins: Vec<String> = remaining
        .iter()
        .flat_map(|r| r.finalizers.iter())
        .map(|(f, n)| format!("{f} in {n} resource instances"))
        .collect();
    fins.sort();
    fins.dedup();
    let mut out = vec![
        cond(
            "NamespaceDeletionDiscoveryFailure",
            true,
            "ResourcesDiscovered",
            "DiscoveryFailed",
            String::new(),
            now,
        ),
        cond(
            "NamespaceDeletionGroupVersionParsingFailure",
            true,
            "ParsedGroupVersions",
            "GroupVersionParsingFailed",
            String::new(),
            now,
        ),
        cond(
            "NamespaceDeletionContentFailure",
            errors.is_empty(),
            "ContentDeleted",
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                errors.len(),
                errors.join(", ")
            ),
            now,
        ),
        cond(
            "NamespaceContentRemaining",
            left.is_empty(),
            "ContentRemoved",
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", left.join(", ")),
            now,
        ),
        cond(
            "NamespaceFinalizersRemaining",
            fins.is_empty(),
            "ContentHasNoFinalizers",
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                fins.join(", ")
            ),
            now,
        ),
    ];
    for c in &mut out {
        if let Some(o) = old.iter().find(|o| o.type_ == c.type_)
            && o.status == c.status
            && o.reason == c.reason
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
    out
}

/// Whether two condition lists say the same (ignoring transition times).
pub fn same_conditions(a: &[NamespaceCondition], b: &[NamespaceCondition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ts;
    use k8s_openapi::api::core::v1::NamespaceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ns(deleting: bool) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("demo".into()),
                deletion_timestamp: deleting.then(|| Time(ts(10))),
                ..Default::default()
            },
            spec: Some(NamespaceSpec {
                finalizers: Some(vec![FINALIZER.into()]),
            }),
            status: None,
        }
    }

    #[test]
    fn finalizes_only_when_empty() {
        let pods = Remaining {
            resource: "pods".into(),
            count: 2,
            finalizers: vec![],
        };
        assert_eq!(
            step(&ns(false), std::slice::from_ref(&pods), &[]),
            Step::Nothing
        );
        assert!(matches!(
            step(&ns(true), std::slice::from_ref(&pods), &[]),
            Step::Wait(_)
        ));
        let none = Remaining { count: 0, ..pods };
        assert_eq!(
            step(&ns(true), std::slice::from_ref(&none), &[]),
            Step::Finalize
        );
        assert!(matches!(
            step(&ns(true), &[none], &["boom".into()]),
            Step::Wait(_)
        ));
    }

    #[test]
    fn conditions_name_what_remains() {
        let r = [Remaining {
            resource: "pods".into(),
            count: 2,
            finalizers: vec![("example.com/x".into(), 1)],
        }];
        let c = conditions(&[], &r, &[], ts(20));
        let get = |t: &str| c.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(get("NamespaceContentRemaining").status, "True");
        assert_eq!(
            get("NamespaceContentRemaining").message.as_deref(),
            Some("Some resources are remaining: pods has 2 resource instances")
        );
        assert_eq!(
            get("NamespaceFinalizersRemaining").reason.as_deref(),
            Some("SomeFinalizersRemain")
        );
        assert_eq!(get("NamespaceDeletionContentFailure").status, "False");
        let again = conditions(&c, &r, &[], ts(99));
        assert!(same_conditions(&c, &again));
        assert_eq!(
            again[3].last_transition_time,
            Some(Time(ts(20))),
            "transition time kept"
        );
    }
}
