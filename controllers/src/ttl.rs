//! TTL-after-finished (sans-IO), as upstream's `pkg/controller/ttlafterfinished`: a finished
//! Job with `spec.ttlSecondsAfterFinished` is deleted (background propagation, so its pods
//! go too) that many seconds after its Complete or Failed condition became true.
//!
//! The shell owes the core: for each Job event (and at the returned wait), call [`step`];
//! on [`Step::Delete`], re-read the Job live and call [`step`] again on that copy (the TTL
//! may have been changed), then delete it with a uid precondition.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;

/// What to do with one Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not finished, no TTL, or already being deleted.
    Nothing,
    /// The TTL has run out.
    Delete,
    /// Look again after this long.
    Wait(Duration),
}

/// When the Job finished: its Complete or Failed condition's transition time.
pub fn finish_time(job: &Job) -> Option<Timestamp> {
    let st = job.status.as_ref()?;
    st.conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .or_else(|| st.completion_time.as_ref().map(|t| t.0))
}

/// Decides for `job` at `now`.
pub fn step(job: &Job, now: Timestamp) -> Step {
    if job.metadata.deletion_timestamp.is_some() {
        return Step::Nothing;
    }
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Step::Nothing;
    };
    let Some(done) = finish_time(job) else {
        return Step::Nothing;
    };
    let at_ms = done.as_millisecond() + i64::from(ttl.max(0)) * 1000;
    let left = at_ms - now.as_millisecond();
    if left <= 0 {
        Step::Delete
    } else {
        Step::Wait(Duration::from_millis(
            u64::try_from(left).unwrap_or(0) + 100,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ts;
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(ttl: Option<i32>, cond: Option<(&str, i64)>) -> Job {
        Job {
            spec: Some(JobSpec {
                ttl_seconds_after_finished: ttl,
                ..Default::default()
            }),
            status: Some(JobStatus {
                conditions: cond.map(|(t, at)| {
                    vec![JobCondition {
                        type_: t.into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(ts(at))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn table() {
        let cases = [
            (job(None, Some(("Complete", 100))), Step::Nothing),
            (job(Some(10), None), Step::Nothing),
            (
                job(Some(10), Some(("Complete", 100))),
                Step::Wait(Duration::from_millis(5_100)),
            ),
            (job(Some(10), Some(("Failed", 90))), Step::Delete),
            (job(Some(0), Some(("Complete", 105))), Step::Delete),
            (job(Some(10), Some(("Suspended", 1))), Step::Nothing),
        ];
        for (j, want) in cases {
            assert_eq!(step(&j, ts(105)), want, "{:?}", j.status);
        }
        let mut going = job(Some(0), Some(("Complete", 1)));
        going.metadata.deletion_timestamp = Some(Time(ts(2)));
        assert_eq!(step(&going, ts(105)), Step::Nothing);
    }
}
