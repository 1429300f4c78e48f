//! The shells of the CronJob and TTL-after-finished controllers.

use std::collections::BTreeSet;
use std::sync::Arc;

use api::client::runtime::{Event, Informer, Store};
use api::client::{
    Api, Client, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::jiff::tz::TimeZone;
use serde_json::json;

use super::{Ctx, Lane, api_err, key_of, object_ref, record_event, requeue};
use crate::runtime::{Action, Controller, ReconcileError, run_workers};
use crate::util::{ObjectKey, controller_ref};
use crate::{cronjob, ttl};

/// Caches and queues of the batch controllers (the Job cache is the manager's).
pub(super) struct Batch {
    cjs: Store<CronJob>,
    cj: Lane,
    ttl: Lane,
    /// The controller-manager's own zone, for CronJobs that name none.
    local: TimeZone,
}

/// The informers behind [`Batch`], until spawned.
pub(super) struct BatchInformers {
    cj: Informer<CronJob>,
}

impl Batch {
    pub(super) fn new(client: &Client, enabled: &BTreeSet<&'static str>) -> (Self, BatchInformers) {
        let (cjs, cj) = super::informer::<CronJob>(client);
        (
            Self {
                cjs,
                cj: Lane::new("cronjob", enabled.contains("cronjob")),
                ttl: Lane::new("ttl-after-finished", enabled.contains("ttl-after-finished")),
                local: TimeZone::try_system().unwrap_or(TimeZone::UTC),
            },
            BatchInformers { cj },
        )
    }

    pub(super) async fn wait_until_synced(&self) {
        self.cjs.wait_until_synced().await;
    }

    pub(super) fn lanes(&self) -> [&Lane; 2] {
        [&self.cj, &self.ttl]
    }

    /// CronJobs cached in `ns` (quota counts).
    pub(super) fn count(&self, ns: &str) -> usize {
        self.cjs
            .filter(|c| c.metadata.namespace.as_deref() == Some(ns))
            .len()
    }

    pub(super) fn resync(&self) {
        for c in self.cjs.list() {
            self.cj.add(key_of(&c.metadata));
        }
    }

    /// A Job changed: its CronJob and the TTL controller look at it.
    pub(super) fn on_job(&self, j: &Job) {
        let ns = j.metadata.namespace.as_deref().unwrap_or("");
        if let Some(o) = controller_ref(&j.metadata).filter(|o| o.kind == "CronJob") {
            self.cj.add(ObjectKey::new(ns, &o.name));
        }
        if j.spec
            .as_ref()
            .and_then(|s| s.ttl_seconds_after_finished)
            .is_some()
        {
            self.ttl.add(key_of(&j.metadata));
        }
    }
}

impl BatchInformers {
    pub(super) fn spawn(self, tasks: &mut tokio::task::JoinSet<()>, ctx: &Arc<Ctx>) {
        let c = ctx.clone();
        tasks.spawn(self.cj.run(move |ev| c.on_cronjob(ev)));
    }
}

/// Starts the worker pools of the enabled batch controllers.
pub(super) fn spawn_workers(tasks: &mut tokio::task::JoinSet<()>, ctx: &Arc<Ctx>) {
    let b = &ctx.batch;
    if b.cj.on {
        tasks.spawn(run_workers(
            Arc::new(CronJobController(ctx.clone())),
            b.cj.queue.clone(),
            3,
            b.cj.stats.clone(),
        ));
    }
    if b.ttl.on {
        tasks.spawn(run_workers(
            Arc::new(TtlController(ctx.clone())),
            b.ttl.queue.clone(),
            3,
            b.ttl.stats.clone(),
        ));
    }
}

impl Ctx {
    fn on_cronjob(&self, ev: Event<CronJob>) {
        match ev {
            Event::Added(c) | Event::Modified(c) => {
                self.gc_upsert("batch/v1", "CronJob", &c.metadata);
                self.batch.cj.add(key_of(&c.metadata));
            }
            Event::Deleted(c) => self.gc_remove(&c.metadata),
            Event::Synced => {}
        }
    }
}

// === CronJob ===

struct CronJobController(Arc<Ctx>);

impl Controller for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let b = &c.batch;
        let Some(cj) = b.cjs.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let mut jobs = c.jobs.filter(|j| {
            j.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && controller_ref(&j.metadata).is_some_and(|o| o.uid == uid)
        });
        let japi: Api<Job> = Api::namespaced(c.client.clone(), &key.namespace);
        // An active Job the Job cache does not hold yet is looked up live before the core
        // calls it missing (the caches of two kinds lag each other), as upstream does.
        for a in cj.status.iter().flat_map(|s| s.active.iter().flatten()) {
            if jobs.iter().any(|j| j.metadata.uid == a.uid) {
                continue;
            }
            let Some(name) = a.name.as_deref() else {
                continue;
            };
            if let Some(j) = japi.get_opt(name).await.map_err(api_err)?
                && j.metadata.uid == a.uid
            {
                jobs.push(Arc::new(j));
            }
        }
        let refs: Vec<&Job> = jobs.iter().map(AsRef::as_ref).collect();
        let mut plan = cronjob::plan(&cj, &refs, c.clock.now(), &b.local);
        for (name, juid) in &plan.delete {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                preconditions: Some(Preconditions {
                    uid: Some(juid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match japi.delete(name, &dp).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        if let Some(job) = &plan.create {
            let created = match japi.create(&PostParams::default(), job).await {
                Ok(j) => Some(j),
                Err(e) if e.is_already_exists() => {
                    let name = job.metadata.name.clone().unwrap_or_default();
                    japi.get_opt(&name)
                        .await
                        .map_err(api_err)?
                        .filter(|j| controller_ref(&j.metadata).is_some_and(|o| o.uid == uid))
                }
                Err(e) => {
                    record_event(
                        c,
                        object_ref("batch/v1", "CronJob", &cj.metadata),
                        "cronjob-controller",
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating job: {e}"),
                    )
                    .await;
                    return Err(api_err(e));
                }
            };
            if let Some(j) = created {
                plan.status
                    .active
                    .get_or_insert_with(Vec::new)
                    .push(cronjob::reference(&j));
            }
        }
        if cj.status.as_ref() != Some(&plan.status) {
            // The status accumulates (active Jobs, last schedule time): write it only over the
            // version this plan was made from, so a reconcile on a stale cache cannot undo a
            // newer write; a conflict retries on a fresher cache (upstream's UpdateStatus).
            let st = serde_json::to_value(&plan.status).unwrap_or_else(|_| json!({}));
            let patch = json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": cj.metadata.resource_version},
                {"op": "add", "path": "/status", "value": st}
            ]);
            let capi: Api<CronJob> = Api::namespaced(c.client.clone(), &key.namespace);
            match capi
                .patch_status(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::<()>::Json(patch),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(api_err(e)),
            }
        }
        for ev in &plan.events {
            record_event(
                c,
                object_ref("batch/v1", "CronJob", &cj.metadata),
                "cronjob-controller",
                ev.type_,
                ev.reason,
                &ev.message,
            )
            .await;
        }
        Ok(requeue(plan.requeue_after))
    }
}

// === TTL after finished ===

struct TtlController(Arc<Ctx>);

impl Controller for TtlController {
    fn name(&self) -> &'static str {
        "ttl-after-finished"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let Some(j) = c.jobs.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        match ttl::step(&j, c.clock.now()) {
            ttl::Step::Nothing => return Ok(Action::Done),
            ttl::Step::Wait(d) => return Ok(Action::RequeueAfter(d)),
            ttl::Step::Delete => {}
        }
        // The cache may be stale (the TTL changed): decide again on a live copy.
        let api: Api<Job> = Api::namespaced(c.client.clone(), &key.namespace);
        let Some(live) = api.get_opt(&key.name).await.map_err(api_err)? else {
            return Ok(Action::Done);
        };
        match ttl::step(&live, c.clock.now()) {
            ttl::Step::Nothing => Ok(Action::Done),
            ttl::Step::Wait(d) => Ok(Action::RequeueAfter(d)),
            ttl::Step::Delete => {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    preconditions: Some(Preconditions {
                        uid: live.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&key.name, &dp).await {
                    Ok(_) => Ok(Action::Done),
                    Err(e) if e.is_not_found() || e.is_conflict() => Ok(Action::Done),
                    Err(e) => Err(api_err(e)),
                }
            }
        }
    }
}
