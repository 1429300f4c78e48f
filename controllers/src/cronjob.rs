//! CronJob reconciler (sans-IO), as upstream's `pkg/controller/cronjob` v2 (`syncCronJob`,
//! read, not copied). Every call takes `now`; the shell's clock can be driven in tests.
//!
//! The shell owes the core, per reconcile of a CronJob:
//! 1. call [`plan`] with the Jobs the CronJob controls and `now`;
//! 2. delete `plan.delete` (background propagation; 404 is fine);
//! 3. create `plan.create` if any (409 with a Job we own is fine: it was created before) and
//!    append a reference to it (with its uid) to `plan.status.active`;
//! 4. write `plan.status` when it differs, record `plan.events` on the CronJob, and requeue
//!    after `plan.requeue_after` (the next scheduled time).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;

use crate::cron::Schedule;
use crate::job::is_finished;
use crate::util::{is_deleting, new_controller_ref};

/// The annotation with a Job's scheduled time.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Upstream warns when more start times than this were missed.
pub const MAX_MISSED: u32 = 100;

/// An event to record on the CronJob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    /// The reason.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

/// What one reconcile wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// A Job to create.
    pub create: Option<Job>,
    /// Jobs to delete: (name, uid).
    pub delete: Vec<(String, String)>,
    /// The status after this reconcile (without the Job being created).
    pub status: CronJobStatus,
    /// Events to record.
    pub events: Vec<Event>,
    /// Reconcile again after this long.
    pub requeue_after: Option<Duration>,
}

fn job_condition(j: &Job, type_: &str) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// The reference to a Job kept in `status.active`.
pub fn reference(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The zone the schedule runs in: the `CRON_TZ=` prefix, else `spec.timeZone`, else `local`.
pub fn zone_of(schedule: &Schedule, cj: &CronJob, local: &TimeZone) -> Result<TimeZone, String> {
    let name = schedule
        .zone
        .clone()
        .or_else(|| cj.spec.as_ref().and_then(|s| s.time_zone.clone()));
    match name {
        Some(n) => TimeZone::get(&n).map_err(|e| format!("unknown time zone {n:?}: {e}")),
        None => Ok(local.clone()),
    }
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    let ms = at.as_millisecond() - now.as_millisecond();
    // A little past the minute so the reconcile sees it as due.
    Duration::from_millis(u64::try_from(ms).unwrap_or(0) + 100)
}

/// The Job for `scheduled`: `<cronjob>-<minutes since epoch>`, upstream's name.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let name = cj.metadata.name.clone().unwrap_or_default();
    let tmpl = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let tmeta = tmpl.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", scheduled.as_second().div_euclid(60))),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![new_controller_ref(
                "batch/v1",
                "CronJob",
                &cj.metadata,
            )]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    }
}

/// Plans one reconcile of `cj` with the Jobs it controls, at `now`; `local` is the
/// controller-manager's zone (used when the CronJob names none).
pub fn plan(cj: &CronJob, jobs: &[&Job], now: Timestamp, local: &TimeZone) -> Plan {
    let mut p = Plan {
        status: cj.status.clone().unwrap_or_default(),
        ..Default::default()
    };
    let ev = |type_, reason, message: String| Event {
        type_,
        reason,
        message,
    };
    // 1. The active list follows the Jobs.
    let mut active = p.status.active.take().unwrap_or_default();
    let by_uid: BTreeMap<&str, &Job> = jobs
        .iter()
        .filter_map(|j| Some((j.metadata.uid.as_deref()?, *j)))
        .collect();
    for j in jobs {
        let uid = j.metadata.uid.as_deref().unwrap_or("");
        let found = active.iter().any(|a| a.uid.as_deref() == Some(uid));
        if !found && !is_finished(j) && !is_deleting(&j.metadata) {
            // A running Job of ours missing from the list (a status write lost to a conflict
            // after the create): it is active. Upstream only warns (UnexpectedJob) and would
            // never list it again.
            active.push(reference(j));
        }
        if found && is_finished(j) {
            active.retain(|a| a.uid.as_deref() != Some(uid));
            let cond = if job_condition(j, "Complete") {
                "Complete"
            } else {
                "Failed"
            };
            p.events.push(ev(
                "Normal",
                "SawCompletedJob",
                format!(
                    "Saw completed job: {}, condition: {cond}",
                    j.metadata.name.as_deref().unwrap_or("")
                ),
            ));
        }
        if job_condition(j, "Complete")
            && let Some(done) = j.status.as_ref().and_then(|s| s.completion_time.clone())
            && p.status
                .last_successful_time
                .as_ref()
                .is_none_or(|t| t.0 < done.0)
        {
            p.status.last_successful_time = Some(done);
        }
    }
    active.retain(|a| {
        let keep = a.uid.as_deref().is_some_and(|u| by_uid.contains_key(u));
        if !keep {
            p.events.push(ev(
                "Normal",
                "MissingJob",
                format!(
                    "Active job went missing: {}",
                    a.name.as_deref().unwrap_or("")
                ),
            ));
        }
        keep
    });
    if is_deleting(&cj.metadata) {
        p.status.active = (!active.is_empty()).then_some(active);
        return p;
    }
    cleanup_history(cj, jobs, &active, &mut p);
    let spec = cj.spec.clone().unwrap_or_default();
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            p.events
                .push(ev("Warning", "InvalidSchedule", e.to_string()));
            p.status.active = (!active.is_empty()).then_some(active);
            return p;
        }
    };
    let tz = match zone_of(&schedule, cj, local) {
        Ok(tz) => tz,
        Err(e) => {
            p.events.push(ev("Warning", "UnknownTimeZone", e));
            p.status.active = (!active.is_empty()).then_some(active);
            return p;
        }
    };
    let next_after_now = schedule.next(now, &tz);
    p.requeue_after = next_after_now.map(|t| until(t, now));
    if spec.suspend == Some(true) {
        p.status.active = (!active.is_empty()).then_some(active);
        return p;
    }
    // 2. The most recent unmet start time.
    let mut earliest = p
        .status
        .last_schedule_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    if let Some(sds) = spec.starting_deadline_seconds
        && let Ok(window) =
            now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(sds.max(0)))
        && window > earliest
    {
        earliest = window;
    }
    let (scheduled, missed) = schedule.most_recent(earliest, now, &tz, MAX_MISSED);
    if missed > MAX_MISSED {
        p.events.push(ev(
            "Warning",
            "TooManyMissedTimes",
            format!("too many missed start times: > {MAX_MISSED}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
        ));
    }
    let Some(scheduled) = scheduled else {
        p.status.active = (!active.is_empty()).then_some(active);
        return p;
    };
    if let Some(sds) = spec.starting_deadline_seconds
        && scheduled.as_second() + sds < now.as_second()
    {
        p.events.push(ev(
            "Warning",
            "MissSchedule",
            format!("Missed scheduled time to start a job: {scheduled}"),
        ));
        p.status.active = (!active.is_empty()).then_some(active);
        return p;
    }
    let job = job_for(cj, scheduled, &tz);
    let already = jobs.iter().any(|j| j.metadata.name == job.metadata.name)
        || active.iter().any(|a| a.name == job.metadata.name);
    if already {
        p.status.active = (!active.is_empty()).then_some(active);
        return p;
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            p.events.push(ev(
                "Normal",
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            ));
            p.status.active = Some(active);
            return p;
        }
        Some("Replace") => {
            for a in active.drain(..) {
                let (Some(n), Some(u)) = (a.name, a.uid) else {
                    continue;
                };
                p.events
                    .push(ev("Normal", "SuccessfulDelete", format!("Deleted job {n}")));
                p.delete.push((n, u));
            }
        }
        _ => {}
    }
    p.events.push(ev(
        "Normal",
        "SuccessfulCreate",
        format!("Created job {}", job.metadata.name.as_deref().unwrap_or("")),
    ));
    p.create = Some(job);
    p.status.last_schedule_time = Some(Time(scheduled));
    p.status.active = (!active.is_empty()).then_some(active);
    p
}

/// Deletes the oldest finished Jobs beyond the history limits (3 succeeded, 1 failed).
fn cleanup_history(cj: &CronJob, jobs: &[&Job], active: &[ObjectReference], p: &mut Plan) {
    let spec = cj.spec.as_ref();
    let limits = [
        (
            "Complete",
            spec.and_then(|s| s.successful_jobs_history_limit)
                .unwrap_or(3),
        ),
        (
            "Failed",
            spec.and_then(|s| s.failed_jobs_history_limit).unwrap_or(1),
        ),
    ];
    for (cond, limit) in limits {
        let mut done: Vec<&&Job> = jobs
            .iter()
            .filter(|j| job_condition(j, cond))
            .filter(|j| !active.iter().any(|a| a.uid == j.metadata.uid))
            .filter(|j| !is_deleting(&j.metadata))
            .collect();
        let limit = usize::try_from(limit.max(0)).unwrap_or(0);
        if done.len() <= limit {
            continue;
        }
        let started = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .or(j.metadata.creation_timestamp.as_ref())
                .map(|t| t.0)
        };
        done.sort_by_key(|j| (started(j), j.metadata.name.clone()));
        let n = done.len() - limit;
        for j in done.into_iter().take(n) {
            let name = j.metadata.name.clone().unwrap_or_default();
            p.events.push(Event {
                type_: "Normal",
                reason: "SuccessfulDelete",
                message: format!("Deleted job {name}"),
            });
            p.delete
                .push((name, j.metadata.uid.clone().unwrap_or_default()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobStatus, JobTemplateSpec};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cj(schedule: &str, policy: Option<&str>) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("tick".into()),
                namespace: Some("default".into()),
                uid: Some("cj-uid".into()),
                creation_timestamp: Some(Time(at("2026-01-01T00:00:00Z"))),
                ..Default::default()
            },
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                concurrency_policy: policy.map(Into::into),
                job_template: JobTemplateSpec::default(),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn finished(name: &str, cond: &str, start: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: None,
            status: Some(JobStatus {
                start_time: Some(Time(at(start))),
                completion_time: Some(Time(at(start))),
                conditions: Some(vec![JobCondition {
                    type_: cond.into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn with_active(mut c: CronJob, jobs: &[&Job], last: &str) -> CronJob {
        c.status = Some(CronJobStatus {
            active: Some(jobs.iter().map(|j| reference(j)).collect()),
            last_schedule_time: Some(Time(at(last))),
            ..Default::default()
        });
        c
    }

    fn running(name: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn fires_at_the_scheduled_minute_once() {
        let c = cj("*/1 * * * *", None);
        let utc = TimeZone::UTC;
        let p = plan(&c, &[], at("2026-01-01T00:00:30Z"), &utc);
        assert!(p.create.is_none());
        assert_eq!(p.requeue_after, Some(Duration::from_millis(30_100)));
        let p = plan(&c, &[], at("2026-01-01T00:01:02Z"), &utc);
        let job = p.create.unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("tick-29453761"));
        assert_eq!(
            job.metadata
                .annotations
                .unwrap()
                .get(SCHEDULED_TIMESTAMP)
                .map(String::as_str),
            Some("2026-01-01T00:01:00+00:00")
        );
        assert_eq!(
            p.status.last_schedule_time,
            Some(Time(at("2026-01-01T00:01:00Z")))
        );
        // The same minute again (its Job exists): nothing.
        let j = running("tick-29453761");
        let c2 = with_active(c.clone(), &[&j], "2026-01-01T00:01:00Z");
        let p = plan(&c2, &[&j], at("2026-01-01T00:01:40Z"), &utc);
        assert!(p.create.is_none());
        assert_eq!(p.status.active.map(|a| a.len()), Some(1));
    }

    #[test]
    fn concurrency_policies() {
        let utc = TimeZone::UTC;
        let j = running("tick-1");
        let now = at("2026-01-01T00:02:05Z");
        let p = plan(
            &with_active(
                cj("*/1 * * * *", Some("Forbid")),
                &[&j],
                "2026-01-01T00:01:00Z",
            ),
            &[&j],
            now,
            &utc,
        );
        assert!(p.create.is_none());
        assert_eq!(p.events[0].reason, "JobAlreadyActive");
        let p = plan(
            &with_active(
                cj("*/1 * * * *", Some("Replace")),
                &[&j],
                "2026-01-01T00:01:00Z",
            ),
            &[&j],
            now,
            &utc,
        );
        assert_eq!(
            p.delete,
            vec![("tick-1".to_string(), "uid-tick-1".to_string())]
        );
        assert!(p.create.is_some());
        assert_eq!(p.status.active, None);
        let p = plan(
            &with_active(
                cj("*/1 * * * *", Some("Allow")),
                &[&j],
                "2026-01-01T00:01:00Z",
            ),
            &[&j],
            now,
            &utc,
        );
        assert!(p.create.is_some() && p.delete.is_empty());
        assert_eq!(
            p.status.active.map(|a| a.len()),
            Some(1),
            "the running one stays"
        );
    }

    #[test]
    fn deadlines_missed_starts_suspend_and_bad_input() {
        let utc = TimeZone::UTC;
        let mut c = cj("0 * * * *", None);
        c.spec.as_mut().unwrap().starting_deadline_seconds = Some(60);
        // 10:00 was missed by more than 60 s.
        let p = plan(&c, &[], at("2026-01-01T10:05:00Z"), &utc);
        assert!(p.create.is_none());
        // Within the deadline it starts.
        let p = plan(&c, &[], at("2026-01-01T10:00:30Z"), &utc);
        assert!(p.create.is_some());
        // Many missed minutes without a deadline: warned, and the latest one runs.
        let m = cj("* * * * *", None);
        let p = plan(&m, &[], at("2026-01-02T00:00:10Z"), &utc);
        assert!(p.events.iter().any(|e| e.reason == "TooManyMissedTimes"));
        assert_eq!(
            p.status.last_schedule_time,
            Some(Time(at("2026-01-02T00:00:00Z")))
        );
        let mut s = cj("* * * * *", None);
        s.spec.as_mut().unwrap().suspend = Some(true);
        assert!(
            plan(&s, &[], at("2026-01-01T00:10:00Z"), &utc)
                .create
                .is_none()
        );
        let p = plan(
            &cj("61 * * * *", None),
            &[],
            at("2026-01-01T00:10:00Z"),
            &utc,
        );
        assert_eq!(p.events[0].reason, "InvalidSchedule");
        let mut z = cj("* * * * *", None);
        z.spec.as_mut().unwrap().time_zone = Some("Mars/Olympus".into());
        assert_eq!(
            plan(&z, &[], at("2026-01-01T00:10:00Z"), &utc).events[0].reason,
            "UnknownTimeZone"
        );
    }

    #[test]
    fn time_zone_of_the_spec() {
        let mut c = cj("0 9 * * *", None);
        c.spec.as_mut().unwrap().time_zone = Some("Europe/Paris".into());
        // 09:00 in Paris (winter) is 08:00Z.
        assert!(
            plan(&c, &[], at("2026-01-01T07:59:00Z"), &TimeZone::UTC)
                .create
                .is_none()
        );
        let p = plan(&c, &[], at("2026-01-01T08:00:10Z"), &TimeZone::UTC);
        assert!(p.create.is_some());
    }

    #[test]
    fn a_running_job_missing_from_the_list_is_listed() {
        let j = running("tick-1");
        let c = cj("0 0 1 1 *", None);
        let p = plan(&c, &[&j], at("2026-01-01T00:10:00Z"), &TimeZone::UTC);
        let names: Vec<String> = p
            .status
            .active
            .unwrap()
            .into_iter()
            .filter_map(|a| a.name)
            .collect();
        assert_eq!(names, ["tick-1"]);
    }

    #[test]
    fn history_limits_and_completed_jobs() {
        let utc = TimeZone::UTC;
        let ok: Vec<Job> = (0..5)
            .map(|i| {
                finished(
                    &format!("ok{i}"),
                    "Complete",
                    &format!("2026-01-01T00:0{i}:00Z"),
                )
            })
            .collect();
        let bad: Vec<Job> = (0..2)
            .map(|i| {
                finished(
                    &format!("bad{i}"),
                    "Failed",
                    &format!("2026-01-01T00:0{i}:00Z"),
                )
            })
            .collect();
        let refs: Vec<&Job> = ok.iter().chain(bad.iter()).collect();
        let c = with_active(cj("0 0 1 1 *", None), &[&ok[4]], "2026-01-01T00:00:00Z");
        let p = plan(&c, &refs, at("2026-01-01T00:10:00Z"), &utc);
        let del: Vec<&str> = p.delete.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(del, ["ok0", "ok1", "bad0"]);
        assert!(p.events.iter().any(|e| e.reason == "SawCompletedJob"));
        assert_eq!(p.status.active, None);
        assert_eq!(
            p.status.last_successful_time,
            Some(Time(at("2026-01-01T00:04:00Z")))
        );
    }
}
