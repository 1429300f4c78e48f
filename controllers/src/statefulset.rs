//! StatefulSet reconciler (sans-IO), as upstream's `pkg/controller/statefulset`
//! (`defaultStatefulSetControl.updateStatefulSet`, read, not copied).
//!
//! Pods have stable names `<set>-<ordinal>` for ordinals `start..start+replicas`; each gets
//! the claims of `volumeClaimTemplates` as `<claim>-<set>-<ordinal>` (created before the
//! pod, never deleted by scale-down). With `OrderedReady` (the default) the controller does
//! one thing per pass: create the lowest missing ordinal once every lower one is Running and
//! Ready, delete the highest condemned ordinal once every other pod is healthy. `Parallel`
//! creates and deletes without waiting. Updates: `RollingUpdate` deletes the highest ordinal
//! at or above `partition` that is not at the update revision (it comes back at the update
//! revision), one at a time, waiting for health; ordinals below the partition are recreated
//! at the current revision. `OnDelete` only recreates pods the user deleted, at the update
//! revision.
//!
//! The shell owes the core, per reconcile:
//! 1. plan the history ([`crate::history::plan`]); the update revision is the current
//!    template's; the current one is `status.currentRevision`'s if that revision exists,
//!    else the update revision;
//! 2. call [`plan`] with the pods the set controls and the names of existing claims;
//! 3. create `create_claims` (409 is fine), then the pods of `create` (409 is fine), then
//!    delete `delete`; write `status` when it differs. Pod and claim events requeue the set.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use crate::history::{REVISION_HASH, hash_label};
use crate::replicaset::PodRef;
use crate::util::{is_deleting, is_pod_available, is_pod_ready, new_controller_ref, pod_phase};

/// The label with a StatefulSet pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// A revision of the set: its hash and template.
#[derive(Clone, Debug, PartialEq)]
pub struct Revision {
    /// The `controller-revision-hash`.
    pub hash: String,
    /// The pod template of that revision.
    pub template: PodTemplateSpec,
}

/// The writes one reconcile wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Claims to create (before the pods).
    pub create_claims: Vec<PersistentVolumeClaim>,
    /// Pods to create, with their final names.
    pub create: Vec<Pod>,
    /// Pods to delete.
    pub delete: Vec<PodRef>,
    /// The status for this view.
    pub status: StatefulSetStatus,
}

/// The ordinal of a pod named `<set>-<n>`.
pub fn ordinal_of(set: &str, pod: &Pod) -> Option<i32> {
    pod.metadata
        .name
        .as_deref()?
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|n: &i32| *n >= 0)
}

/// The claim name of template `claim` for ordinal `ord`.
pub fn claim_name(claim: &str, set: &str, ord: i32) -> String {
    format!("{claim}-{set}-{ord}")
}

fn set_name(set: &StatefulSet) -> &str {
    set.metadata.name.as_deref().unwrap_or("")
}

/// The claims of ordinal `ord`.
pub fn claims_for(set: &StatefulSet, ord: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.as_ref();
    let sel = spec
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let delete_with_set = spec
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    spec.and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let name = t.metadata.name.clone().unwrap_or_default();
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(sel.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&name, set_name(set), ord)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: delete_with_set
                        .then(|| vec![owner_ref_to("apps/v1", "StatefulSet", &set.metadata)]),
                    ..Default::default()
                },
                spec: t.spec,
                status: None,
            }
        })
        .collect()
}

/// A plain (non-controller) owner reference, as upstream's claim retention sets.
fn owner_ref_to(
    api_version: &str,
    kind: &str,
    owner: &ObjectMeta,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// `persistentVolumeClaimRetentionPolicy` (upstream `updateClaimOwnerRefForSetAndPod`):
/// the claims of the set's templates whose ownerReferences must change, with the new
/// references. `whenDeleted: Delete` makes the set an owner of every claim (the garbage
/// collector deletes them with the set); `whenScaled: Delete` makes a condemned pod (an
/// ordinal outside the replicas) the owner of its claims, so they go with it. `Retain`
/// removes those references. Other owners are left alone.
pub fn claim_owner_updates(
    set: &StatefulSet,
    pods: &[&Pod],
    claims: &[&PersistentVolumeClaim],
) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.as_ref();
    let policy = spec.and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let when_deleted = policy.and_then(|p| p.when_deleted.as_deref()) == Some("Delete");
    let when_scaled = policy.and_then(|p| p.when_scaled.as_deref()) == Some("Delete");
    let name = set_name(set);
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0);
    let start = spec
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let end = start.saturating_add(replicas);
    let set_uid = set.metadata.uid.clone().unwrap_or_default();
    let templates: Vec<String> = spec
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|t| t.metadata.name.clone())
        .collect();
    let mut out = Vec::new();
    for claim in claims {
        let cname = claim.metadata.name.as_deref().unwrap_or("");
        let Some(ord) = templates.iter().find_map(|t| {
            cname
                .strip_prefix(t.as_str())?
                .strip_prefix('-')?
                .strip_prefix(name)?
                .strip_prefix('-')?
                .parse::<i32>()
                .ok()
        }) else {
            continue;
        };
        let pod = pods
            .iter()
            .find(|p| ordinal_of(name, p) == Some(ord))
            .copied();
        let refs = claim.metadata.owner_references.clone().unwrap_or_default();
        let mut next: Vec<_> = refs
            .iter()
            .filter(|r| !(r.kind == "StatefulSet" && r.uid == set_uid))
            .filter(|r| !(r.kind == "Pod" && r.api_version == "v1"))
            .cloned()
            .collect();
        if when_deleted {
            next.push(owner_ref_to("apps/v1", "StatefulSet", &set.metadata));
        }
        let condemned = !(start..end).contains(&ord);
        if when_scaled
            && condemned
            && let Some(p) = pod
        {
            next.push(owner_ref_to("v1", "Pod", &p.metadata));
        }
        // A pod reference of a condemned ordinal whose pod is already gone stays (the
        // garbage collector acts on it).
        if when_scaled && condemned && pod.is_none() {
            next.extend(
                refs.iter()
                    .filter(|r| r.kind == "Pod" && r.api_version == "v1")
                    .cloned(),
            );
        }
        let same =
            |a: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
             b: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
                a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| y.uid == x.uid))
            };
        if !same(&refs, &next) {
            let mut c = (*claim).clone();
            c.metadata.owner_references = Some(next).filter(|v| !v.is_empty());
            out.push(c);
        }
    }
    out
}

/// The pod of ordinal `ord` at revision `rev`.
pub fn pod_for(set: &StatefulSet, rev: &Revision, ord: i32) -> Pod {
    let name = format!("{}-{ord}", set_name(set));
    let tmeta = rev.template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
    labels.insert(REVISION_HASH.into(), rev.hash.clone());
    let mut spec = rev.template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    if let Some(svc) = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(svc);
    }
    let templates = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    if !templates.is_empty() {
        let mut vols: Vec<Volume> = spec.volumes.take().unwrap_or_default();
        for t in &templates {
            let claim = t.metadata.name.clone().unwrap_or_default();
            vols.retain(|v| v.name != claim);
            vols.push(Volume {
                name: claim.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&claim, set_name(set), ord),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
        spec.volumes = Some(vols);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![new_controller_ref(
                "apps/v1",
                "StatefulSet",
                &set.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
    }
}

fn finished(p: &Pod) -> bool {
    matches!(pod_phase(p), "Failed" | "Succeeded")
}

/// Upstream's `isHealthy`: running and ready (available with minReadySeconds), not going.
fn healthy(p: &Pod, min_ready: i32, now: Timestamp) -> bool {
    pod_phase(p) == "Running" && is_pod_available(p, min_ready, now) && !is_deleting(&p.metadata)
}

/// Plans one reconcile of `set`.
pub fn plan(
    set: &StatefulSet,
    current: &Revision,
    update: &Revision,
    pods: &[&Pod],
    claims: &BTreeSet<String>,
    now: Timestamp,
) -> Plan {
    let name = set_name(set);
    let spec = set.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0);
    let start = spec
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let monotonic = spec
        .and_then(|s| s.pod_management_policy.as_deref())
        .is_none_or(|p| p != "Parallel");
    let strategy = spec.and_then(|s| s.update_strategy.as_ref());
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let end = start.saturating_add(replicas);
    let n = usize::try_from(replicas).unwrap_or(0);
    let mut slots: Vec<Option<&Pod>> = vec![None; n];
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for p in pods {
        let Some(ord) = ordinal_of(name, p) else {
            continue;
        };
        if (start..end).contains(&ord) {
            let i = usize::try_from(ord - start).unwrap_or(0);
            slots[i] = Some(*p);
        } else {
            condemned.push((ord, p));
        }
    }
    condemned.sort_by_key(|c| std::cmp::Reverse(c.0));
    let mut plan = Plan {
        status: status(set, current, update, pods, min_ready, now, rolling),
        ..Default::default()
    };
    if is_deleting(&set.metadata) {
        return plan;
    }
    let first_unhealthy: Option<&Pod> = slots
        .iter()
        .flatten()
        .copied()
        .chain(condemned.iter().map(|(_, p)| *p))
        .find(|p| !healthy(p, min_ready, now));
    // 1. the replicas, lowest ordinal first.
    for (i, slot) in slots.iter().enumerate() {
        let ord = start + i32::try_from(i).unwrap_or(0);
        match slot {
            Some(p) if finished(p) && !is_deleting(&p.metadata) => {
                plan.delete.push(pod_ref(p));
                if monotonic {
                    return plan;
                }
            }
            Some(p) => {
                if monotonic && !healthy(p, min_ready, now) {
                    return plan;
                }
            }
            None => {
                let rev = if rolling && ord < partition {
                    current
                } else {
                    update
                };
                for c in claims_for(set, ord) {
                    if !claims.contains(c.metadata.name.as_deref().unwrap_or("")) {
                        plan.create_claims.push(c);
                    }
                }
                plan.create.push(pod_for(set, rev, ord));
                if monotonic {
                    return plan;
                }
            }
        }
    }
    // 2. condemned pods, highest ordinal first.
    for (_, p) in &condemned {
        if is_deleting(&p.metadata) {
            if monotonic {
                return plan;
            }
            continue;
        }
        if monotonic && first_unhealthy.is_some_and(|u| !std::ptr::eq(u, *p)) {
            return plan;
        }
        plan.delete.push(pod_ref(p));
        if monotonic {
            return plan;
        }
    }
    if !monotonic && (!plan.create.is_empty() || !plan.delete.is_empty()) {
        return plan;
    }
    // 3. the rolling update, highest ordinal first, down to the partition.
    if rolling {
        let floor = usize::try_from((partition - start).max(0)).unwrap_or(0);
        for i in (floor..n).rev() {
            let Some(p) = slots[i] else { return plan };
            if hash_label(&p.metadata) != Some(update.hash.as_str()) && !is_deleting(&p.metadata) {
                plan.delete.push(pod_ref(p));
                return plan;
            }
            if !healthy(p, min_ready, now) {
                return plan;
            }
        }
    }
    plan
}

fn status(
    set: &StatefulSet,
    current: &Revision,
    update: &Revision,
    pods: &[&Pod],
    min_ready: i32,
    now: Timestamp,
    rolling: bool,
) -> StatefulSetStatus {
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(pods.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let name = set_name(set);
    let ours = |p: &Pod| ordinal_of(name, p).is_some();
    let rev = |p: &Pod, h: &str| hash_label(&p.metadata) == Some(h);
    let mut st = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: count(&|p| ours(p)),
        ready_replicas: Some(count(&|p| {
            ours(p) && is_pod_ready(p) && !is_deleting(&p.metadata)
        })),
        available_replicas: Some(count(&|p| {
            ours(p) && is_pod_available(p, min_ready, now) && !is_deleting(&p.metadata)
        })),
        current_replicas: Some(count(&|p| ours(p) && rev(p, &current.hash))),
        updated_replicas: Some(count(&|p| ours(p) && rev(p, &update.hash))),
        current_revision: Some(current.hash.clone()),
        update_revision: Some(update.hash.clone()),
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    // Upstream's completeRollingUpdate.
    let want = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if rolling
        && st.updated_replicas == Some(st.replicas)
        && st.ready_replicas == Some(st.replicas)
        && st.replicas == want
    {
        st.current_replicas = st.updated_replicas;
        st.current_revision = st.update_revision.clone();
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{labels, template, ts};
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn set(replicas: i32, policy: &str, partition: Option<i32>) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("default".into()),
                uid: Some("set-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("db".into()),
                pod_management_policy: Some(policy.into()),
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "db")])),
                    ..Default::default()
                },
                template: template("db:1", &[("app", "db")]),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: partition.map(|p| RollingUpdateStatefulSetStrategy {
                        partition: Some(p),
                        max_unavailable: None,
                    }),
                }),
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        ..Default::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec::default()),
                    status: None,
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rev(h: &str, image: &str) -> Revision {
        Revision {
            hash: h.into(),
            template: template(image, &[("app", "db")]),
        }
    }

    fn live(s: &StatefulSet, r: &Revision, ord: i32, ready: bool) -> Pod {
        let mut p = pod_for(s, r, ord);
        p.metadata.uid = Some(format!("uid-{ord}-{}", r.hash));
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(ts(1))),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn names(p: &Plan) -> (Vec<String>, Vec<String>) {
        (
            p.create
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect(),
            p.delete.iter().map(|p| p.name.clone()).collect(),
        )
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_with_claims() {
        let s = set(3, "OrderedReady", None);
        let r = rev("h1", "db:1");
        let none = BTreeSet::new();
        let p = plan(&s, &r, &r, &[], &none, ts(10));
        assert_eq!(names(&p).0, ["db-0"]);
        assert_eq!(
            p.create_claims[0].metadata.name.as_deref(),
            Some("data-db-0")
        );
        let pod = &p.create[0];
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some("db-0"), Some("db"))
        );
        assert_eq!(
            spec.volumes.as_ref().unwrap()[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-db-0"
        );
        // db-0 exists but is not ready: wait.
        let p0 = live(&s, &r, 0, false);
        let p = plan(
            &s,
            &r,
            &r,
            &[&p0],
            &["data-db-0".to_string()].into(),
            ts(10),
        );
        assert_eq!(names(&p), (vec![], vec![]));
        let p0 = live(&s, &r, 0, true);
        let p = plan(
            &s,
            &r,
            &r,
            &[&p0],
            &["data-db-0".to_string()].into(),
            ts(10),
        );
        assert_eq!(names(&p).0, ["db-1"]);
        assert_eq!(p.create_claims.len(), 1, "only the missing claim");
        assert_eq!(p.status.replicas, 1);
        assert_eq!(p.status.ready_replicas, Some(1));
    }

    #[test]
    fn parallel_creates_all_and_scale_down_goes_highest_first() {
        let s = set(3, "Parallel", None);
        let r = rev("h1", "db:1");
        let p = plan(&s, &r, &r, &[], &BTreeSet::new(), ts(10));
        assert_eq!(names(&p).0, ["db-0", "db-1", "db-2"]);
        let ordered = set(1, "OrderedReady", None);
        let pods: Vec<Pod> = (0..3).map(|i| live(&ordered, &r, i, true)).collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&ordered, &r, &r, &refs, &BTreeSet::new(), ts(10));
        assert_eq!(names(&p).1, ["db-2"], "one at a time, highest first");
        let mut going = pods.clone();
        going[2].metadata.deletion_timestamp = Some(Time(ts(5)));
        let refs: Vec<&Pod> = going.iter().collect();
        let p = plan(&ordered, &r, &r, &refs, &BTreeSet::new(), ts(10));
        assert_eq!(names(&p).1, Vec::<String>::new(), "wait for db-2 to go");
    }

    #[test]
    fn rolling_update_with_partition_goes_from_the_top() {
        let s = set(3, "OrderedReady", Some(1));
        let old = rev("h1", "db:1");
        let new = rev("h2", "db:2");
        let pods: Vec<Pod> = (0..3).map(|i| live(&s, &old, i, true)).collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&s, &old, &new, &refs, &BTreeSet::new(), ts(10));
        assert_eq!(names(&p).1, ["db-2"]);
        // db-2 gone: recreated at the update revision.
        let refs: Vec<&Pod> = pods[..2].iter().collect();
        let p = plan(&s, &old, &new, &refs, &BTreeSet::new(), ts(10));
        assert_eq!(names(&p).0, ["db-2"]);
        assert_eq!(hash_label(&p.create[0].metadata), Some("h2"));
        // db-2 updated and ready: db-1 is next; db-0 stays below the partition.
        let n2 = live(&s, &new, 2, true);
        let refs = vec![&pods[0], &pods[1], &n2];
        let p = plan(&s, &old, &new, &refs, &BTreeSet::new(), ts(10));
        assert_eq!(names(&p).1, ["db-1"]);
        let n1 = live(&s, &new, 1, true);
        let refs = vec![&pods[0], &n1, &n2];
        let p = plan(&s, &old, &new, &refs, &BTreeSet::new(), ts(10));
        assert_eq!(names(&p), (vec![], vec![]), "db-0 is below the partition");
        assert_eq!(p.status.updated_replicas, Some(2));
        assert_eq!(p.status.current_revision.as_deref(), Some("h1"));
        // A deleted db-0 below the partition comes back at the current revision.
        let refs = vec![&n1, &n2];
        let p = plan(&s, &old, &new, &refs, &BTreeSet::new(), ts(10));
        assert_eq!(hash_label(&p.create[0].metadata), Some("h1"));
        // Partition 0 and all updated: the rollout completes.
        let s0 = set(3, "OrderedReady", Some(0));
        let n0 = live(&s0, &new, 0, true);
        let refs = vec![&n0, &n1, &n2];
        let p = plan(&s0, &old, &new, &refs, &BTreeSet::new(), ts(10));
        assert_eq!(p.status.current_revision.as_deref(), Some("h2"));
        assert_eq!(p.status.current_replicas, Some(3));
    }

    #[test]
    fn failed_pods_are_replaced_and_ordinals_parse() {
        let s = set(1, "OrderedReady", None);
        let r = rev("h1", "db:1");
        let mut p0 = live(&s, &r, 0, false);
        p0.status.as_mut().unwrap().phase = Some("Failed".into());
        let p = plan(&s, &r, &r, &[&p0], &BTreeSet::new(), ts(1));
        assert_eq!(names(&p).1, ["db-0"]);
        let mut other = p0.clone();
        for (name, want) in [
            ("db-12", Some(12)),
            ("db-x", None),
            ("dbx-1", None),
            ("db--1", None),
        ] {
            other.metadata.name = Some(name.into());
            assert_eq!(ordinal_of("db", &other), want, "{name}");
        }
    }

    #[test]
    fn claim_retention_follows_the_policy() {
        use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy as Policy;
        let mut set = set(2, "OrderedReady", None);
        let claim = |ord: i32| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim_name("data", "db", ord)),
                ..Default::default()
            },
            ..Default::default()
        };
        let pod = |ord: i32| Pod {
            metadata: ObjectMeta {
                name: Some(format!("db-{ord}")),
                uid: Some(format!("pod-{ord}")),
                ..Default::default()
            },
            ..Default::default()
        };
        let (c0, c1, c2) = (claim(0), claim(1), claim(2));
        let (p0, p1, p2) = (pod(0), pod(1), pod(2));
        let pods = [&p0, &p1, &p2];
        let claims = [&c0, &c1, &c2];
        let owners = |v: &[PersistentVolumeClaim], name: &str| -> Vec<String> {
            v.iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .and_then(|c| c.metadata.owner_references.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.uid)
                .collect()
        };
        // Retain/Retain (the default): nothing to do.
        assert!(claim_owner_updates(&set, &pods, &claims).is_empty());
        // whenScaled Delete: only the condemned ordinal 2 gets its pod as owner.
        set.spec
            .as_mut()
            .unwrap()
            .persistent_volume_claim_retention_policy = Some(Policy {
            when_deleted: Some("Retain".into()),
            when_scaled: Some("Delete".into()),
        });
        let u = claim_owner_updates(&set, &pods, &claims);
        assert_eq!(u.len(), 1);
        assert_eq!(owners(&u, "data-db-2"), ["pod-2"]);
        // whenDeleted Delete too: every claim gets the set; ordinal 2 also its pod.
        set.spec
            .as_mut()
            .unwrap()
            .persistent_volume_claim_retention_policy = Some(Policy {
            when_deleted: Some("Delete".into()),
            when_scaled: Some("Delete".into()),
        });
        let u = claim_owner_updates(&set, &pods, &claims);
        assert_eq!(owners(&u, "data-db-0"), ["set-uid"]);
        assert_eq!(owners(&u, "data-db-2"), ["set-uid", "pod-2"]);
        assert!(u.iter().all(|c| {
            c.metadata
                .owner_references
                .as_ref()
                .unwrap()
                .iter()
                .all(|r| r.controller.is_none())
        }));
        // Back to Retain: the references go again; a claim already right is not rewritten.
        let mut owned = c0.clone();
        owned.metadata.owner_references = u[0].metadata.owner_references.clone();
        set.spec
            .as_mut()
            .unwrap()
            .persistent_volume_claim_retention_policy = Some(Policy {
            when_deleted: Some("Delete".into()),
            when_scaled: Some("Retain".into()),
        });
        assert!(claim_owner_updates(&set, &pods, &[&owned]).is_empty());
        set.spec
            .as_mut()
            .unwrap()
            .persistent_volume_claim_retention_policy = None;
        let u = claim_owner_updates(&set, &pods, &[&owned]);
        assert_eq!(u.len(), 1);
        assert!(u[0].metadata.owner_references.is_none());
    }
}
