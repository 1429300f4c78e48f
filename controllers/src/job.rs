//! Job reconciler (sans-IO), after upstream's `pkg/controller/job`: keeps
//! `min(parallelism, remaining)` pods active until `completions` pods (or, Indexed, every
//! index) succeeded; fails the Job past `backoffLimit` failed pods or `activeDeadlineSeconds`.
//!
//! Tracking: counts come from the Job's pods (controller ref) and never go below the stored
//! status, so a finished pod removed by someone else does not undo progress. (Upstream
//! tracks with a pod finalizer; that and pod-failure backoff delays are not here yet.)
//!
//! The shell owes the core, per reconcile of a Job key:
//! 1. skip while creation/deletion expectations are pending;
//! 2. pass the Job and the pods it controls;
//! 3. create `plan.create` pods with [`pod_for`], delete `plan.delete`, write `plan.status`
//!    when it changed, and requeue after `plan.requeue_after` (the active deadline).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::replicaset::{PodRef, pods_to_delete};
use crate::util::{is_deleting, is_pod_active, is_pod_ready, new_controller_ref, pod_phase};

/// The annotation and label holding an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// What one reconcile of a Job wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to create: `None` for NonIndexed, `Some(index)` for Indexed.
    pub create: Vec<Option<i32>>,
    /// Active pods to delete.
    pub delete: Vec<PodRef>,
    /// The new status.
    pub status: JobStatus,
    /// Reconcile again after this long (active deadline).
    pub requeue_after: Option<Duration>,
}

fn cond_true(s: &JobStatus, type_: &str) -> bool {
    s.conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn add_cond(s: &mut JobStatus, type_: &str, reason: &str, msg: &str, now: Timestamp) {
    if cond_true(s, type_) {
        return;
    }
    s.conditions
        .get_or_insert_with(Vec::new)
        .push(JobCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(msg.into()),
            last_probe_time: Some(Time(now)),
            last_transition_time: Some(Time(now)),
        });
}

/// Whether the Job has finished (Complete or Failed).
pub fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| cond_true(s, "Complete") || cond_true(s, "Failed"))
}

fn pod_index(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .and_then(|v| v.parse().ok())
}

/// Formats indexes as upstream's `completedIndexes`: `1,3-5,7`.
pub fn format_indexes(idx: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = idx.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// Parses `1,3-5,7` (malformed parts are skipped).
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    // Bounded by the Job's completions in practice; cap the range anyway.
                    out.extend(a..=b.min(a.saturating_add(100_000)));
                }
            }
            None => {
                if let Ok(v) = part.parse() {
                    out.insert(v);
                }
            }
        }
    }
    out
}

/// Plans one reconcile of `job` given the pods it controls.
pub fn plan<'a>(job: &Job, pods: impl IntoIterator<Item = &'a Pod>, now: Timestamp) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let pods: Vec<&Pod> = pods.into_iter().collect();
    let active: Vec<&Pod> = pods.iter().copied().filter(|p| is_pod_active(p)).collect();
    let mut plan = Plan::default();
    if is_finished(job) || is_deleting(&job.metadata) {
        plan.status = status;
        return plan;
    }
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let count = |phase: &str| pods.iter().filter(|p| pod_phase(p) == phase).count();
    let mut done_idx = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""));
    if indexed {
        let n = completions.unwrap_or(0);
        done_idx.extend(
            pods.iter()
                .filter(|p| pod_phase(p) == "Succeeded")
                .filter_map(|p| pod_index(p))
                .filter(|i| (0..n).contains(i)),
        );
    }
    let succeeded = if indexed {
        i32::try_from(done_idx.len()).unwrap_or(i32::MAX)
    } else {
        i32::try_from(count("Succeeded")).unwrap_or(i32::MAX)
    }
    .max(old.succeeded.unwrap_or(0));
    let failed = i32::try_from(count("Failed"))
        .unwrap_or(i32::MAX)
        .max(old.failed.unwrap_or(0));
    let suspended = spec.suspend.unwrap_or(false);
    if status.start_time.is_none() && !suspended {
        status.start_time = Some(Time(now));
    }
    let started = status.start_time.as_ref().map(|t| t.0.as_second());
    let deadline_at = spec
        .active_deadline_seconds
        .zip(started)
        .map(|(d, s)| s + d);
    let past_deadline = deadline_at.is_some_and(|at| now.as_second() >= at);
    let over_backoff = failed > spec.backoff_limit.unwrap_or(6);
    let complete = match (indexed, completions) {
        (true, Some(n)) => succeeded >= n,
        (false, Some(n)) => succeeded >= n,
        (_, None) => succeeded > 0 && active.is_empty(),
    };
    let mut want_active = i32::try_from(active.len()).unwrap_or(i32::MAX);
    if over_backoff || past_deadline {
        let (reason, msg) = if over_backoff {
            (
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        } else {
            (
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )
        };
        add_cond(&mut status, "FailureTarget", reason, msg, now);
        add_cond(&mut status, "Failed", reason, msg, now);
        want_active = 0;
    } else if complete {
        let msg = "Reached expected number of succeeded pods";
        add_cond(
            &mut status,
            "SuccessCriteriaMet",
            "CompletionsReached",
            msg,
            now,
        );
        add_cond(&mut status, "Complete", "CompletionsReached", msg, now);
        status.completion_time = Some(Time(now));
        want_active = 0;
    } else if suspended {
        want_active = 0;
    } else {
        want_active = match completions {
            Some(n) if indexed => {
                let remaining = (0..n).filter(|i| !done_idx.contains(i)).count();
                parallelism.min(i32::try_from(remaining).unwrap_or(i32::MAX))
            }
            Some(n) => parallelism.min((n - succeeded).max(0)),
            None if succeeded > 0 => want_active.min(parallelism),
            None => parallelism,
        };
        plan.requeue_after = deadline_at
            .map(|at| Duration::from_secs(u64::try_from(at - now.as_second()).unwrap_or(0).max(1)));
    }
    let have = i32::try_from(active.len()).unwrap_or(i32::MAX);
    if have > want_active {
        let n = usize::try_from(have - want_active).unwrap_or(0);
        plan.delete = pods_to_delete(&active, &active, n, now)
            .into_iter()
            .map(|p| PodRef {
                name: p.metadata.name.clone().unwrap_or_default(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
            })
            .collect();
    } else if have < want_active {
        let n = usize::try_from(want_active - have).unwrap_or(0);
        if indexed {
            let busy: BTreeSet<i32> = active.iter().filter_map(|p| pod_index(p)).collect();
            plan.create = (0..completions.unwrap_or(0))
                .filter(|i| !done_idx.contains(i) && !busy.contains(i))
                .take(n)
                .map(Some)
                .collect();
        } else {
            plan.create = vec![None; n];
        }
    }
    let staying = want_active.min(have);
    status.active = Some(staying + i32::try_from(plan.create.len()).unwrap_or(0));
    status.ready = Some(
        i32::try_from(active.iter().filter(|p| is_pod_ready(p)).count())
            .unwrap_or(0)
            .min(staying),
    );
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    if indexed {
        status.completed_indexes = Some(format_indexes(&done_idx));
    }
    if suspended && !cond_true(&status, "Suspended") {
        add_cond(
            &mut status,
            "Suspended",
            "JobSuspended",
            "Job suspended",
            now,
        );
    }
    plan.status = status;
    plan
}

/// The pod a Job creates (for `index` when Indexed).
pub fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let t = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let tm = t.metadata.unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    let mut spec = t.spec.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            annotations.insert(COMPLETION_INDEX.into(), i.to_string());
            spec.hostname.get_or_insert_with(|| format!("{name}-{i}"));
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                c.env.get_or_insert_with(Vec::new).push(EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: Some(i.to_string()),
                    value_from: None,
                });
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![new_controller_ref("batch/v1", "Job", &job.metadata)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{pod, ts};
    use k8s_openapi::api::batch::v1::JobSpec;
    use proptest::prelude::*;

    fn job(completions: Option<i32>, parallelism: i32, indexed: bool) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("default".into()),
                uid: Some("job-uid".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                completion_mode: indexed.then(|| "Indexed".to_string()),
                backoff_limit: Some(2),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn jpod(name: &str, phase: &str, index: Option<i32>) -> Pod {
        let mut p = pod(name, None, phase, false, "");
        if let Some(i) = index {
            p.metadata.annotations = Some(std::collections::BTreeMap::from([(
                COMPLETION_INDEX.to_string(),
                i.to_string(),
            )]));
        }
        p
    }

    /// Runs the Job to completion: each round creates what the plan asks and finishes the
    /// pods `finish` picks. Returns the peak number of active pods.
    fn run(mut j: Job, fail_every: usize) -> (Job, usize, usize) {
        let mut pods: Vec<Pod> = Vec::new();
        let mut peak = 0;
        let mut n = 0;
        for round in 0..200 {
            let p = plan(&j, pods.iter(), ts(100 + round));
            for idx in p.create {
                n += 1;
                pods.push(jpod(&format!("p{n}"), "Running", idx));
            }
            pods.retain(|x| {
                !p.delete
                    .iter()
                    .any(|d| Some(&d.name) == x.metadata.name.as_ref())
            });
            j.status = Some(p.status);
            let active = pods.iter().filter(|p| is_pod_active(p)).count();
            peak = peak.max(active);
            if is_finished(&j) {
                return (j, peak, n);
            }
            // Finish the oldest active pod.
            if let Some(x) = pods.iter_mut().find(|p| is_pod_active(p)) {
                let fail = fail_every > 0 && n % fail_every == 0;
                x.status.as_mut().unwrap().phase =
                    Some(if fail { "Failed" } else { "Succeeded" }.into());
            }
        }
        panic!("job never finished");
    }

    #[test]
    fn ten_completions_with_parallelism_three() {
        let (j, peak, created) = run(job(Some(10), 3, false), 0);
        let s = j.status.unwrap();
        assert_eq!(s.succeeded, Some(10));
        assert_eq!(peak, 3);
        assert_eq!(created, 10);
        assert!(cond_true(&s, "Complete"));
        assert!(s.completion_time.is_some());
        assert_eq!(s.active, Some(0));
    }

    #[test]
    fn backoff_limit_fails_the_job() {
        let (j, _, _) = run(job(Some(10), 2, false), 1);
        let s = j.status.unwrap();
        assert!(cond_true(&s, "Failed"));
        assert_eq!(
            s.failed,
            Some(3),
            "backoffLimit 2: the third failure fails it"
        );
        let c = s
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Failed")
            .unwrap();
        assert_eq!(c.reason.as_deref(), Some("BackoffLimitExceeded"));
    }

    #[test]
    fn indexed_job_completes_every_index_once() {
        let (j, peak, created) = run(job(Some(5), 2, true), 0);
        let s = j.status.unwrap();
        assert_eq!(s.completed_indexes.as_deref(), Some("0-4"));
        assert_eq!(s.succeeded, Some(5));
        assert_eq!((peak, created), (2, 5));
    }

    #[test]
    fn active_deadline_fails_and_deletes_active_pods() {
        let mut j = job(Some(3), 3, false);
        j.spec.as_mut().unwrap().active_deadline_seconds = Some(10);
        let p = plan(&j, [], ts(100));
        assert_eq!(p.create.len(), 3);
        assert_eq!(p.requeue_after, Some(Duration::from_secs(10)));
        j.status = Some(p.status);
        let pods = [jpod("a", "Running", None)];
        let p = plan(&j, pods.iter(), ts(111));
        assert_eq!(p.delete.len(), 1);
        assert!(cond_true(&p.status, "Failed"));
    }

    #[test]
    fn index_ranges_round_trip() {
        let s: BTreeSet<i32> = [0, 1, 2, 5, 7, 8].into();
        assert_eq!(format_indexes(&s), "0-2,5,7-8");
        assert_eq!(parse_indexes("0-2,5,7-8"), s);
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let j = job(Some(3), 1, true);
        let p = pod_for(&j, Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(p.metadata.annotations.unwrap()[COMPLETION_INDEX], "2");
        assert_eq!(p.spec.unwrap().hostname.as_deref(), Some("pi-2"));
    }

    proptest! {
        #[test]
        fn never_exceeds_parallelism_and_completes(c in 1i32..15, par in 1i32..6, indexed in any::<bool>()) {
            let (j, peak, _) = run(job(Some(c), par, indexed), 0);
            prop_assert!(peak <= usize::try_from(par).unwrap());
            prop_assert_eq!(j.status.unwrap().succeeded, Some(c));
        }
    }
}
