//! The shells of the DaemonSet, StatefulSet and ReplicationController reconcilers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::client::runtime::{Event, Informer, Store};
use api::client::{Api, Client, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, ReplicaSet, ReplicaSetSpec, StatefulSet,
};
use k8s_openapi::api::core::v1::{
    Node, PersistentVolumeClaim, Pod, ReplicationController, ReplicationControllerStatus,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use serde_json::json;

use super::{
    Ctx, Lane, adopt_release, api_err, create_pods, delete_pods, invalid, key_of, object_ref,
    record_event, requeue,
};
use crate::expectations::{EXPECTATIONS_TIMEOUT, Expectations};
use crate::history::{self, Owner};
use crate::runtime::{Action, Controller, ReconcileError, run_workers};
use crate::util::{ObjectKey, controller_ref, new_controller_ref};
use crate::{daemonset, disruption, replicaset, statefulset};

/// Caches, queues and expectations of the app controllers.
pub(super) struct Apps {
    dss: Store<DaemonSet>,
    stss: Store<StatefulSet>,
    crs: Store<ControllerRevision>,
    pvcs: Store<PersistentVolumeClaim>,
    rcs: Store<ReplicationController>,
    pdbs: Store<PodDisruptionBudget>,
    ds_exp: Expectations<ObjectKey>,
    rc_exp: Expectations<ObjectKey>,
    ds_backoff: parking_lot::Mutex<daemonset::FailedPodBackoff>,
    ds: Lane,
    sts: Lane,
    rc: Lane,
    pdb: Lane,
}

/// The informers behind [`Apps`], until spawned.
pub(super) struct AppsInformers {
    ds: Informer<DaemonSet>,
    sts: Informer<StatefulSet>,
    cr: Informer<ControllerRevision>,
    pvc: Informer<PersistentVolumeClaim>,
    rc: Informer<ReplicationController>,
    pdb: Informer<PodDisruptionBudget>,
}

impl Apps {
    pub(super) fn new(client: &Client, enabled: &BTreeSet<&'static str>) -> (Self, AppsInformers) {
        let on = |n: &str| enabled.contains(n);
        let (dss, ds) = super::informer::<DaemonSet>(client);
        let (stss, sts) = super::informer::<StatefulSet>(client);
        let (crs, cr) = super::informer::<ControllerRevision>(client);
        let (pvcs, pvc) = super::informer::<PersistentVolumeClaim>(client);
        let (rcs, rc) = super::informer::<ReplicationController>(client);
        let (pdbs, pdb) = super::informer::<PodDisruptionBudget>(client);
        (
            Self {
                dss,
                stss,
                crs,
                pvcs,
                rcs,
                pdbs,
                ds_exp: Expectations::default(),
                rc_exp: Expectations::default(),
                ds_backoff: parking_lot::Mutex::new(daemonset::FailedPodBackoff::default()),
                ds: Lane::new("daemonset", on("daemonset")),
                sts: Lane::new("statefulset", on("statefulset")),
                rc: Lane::new("replicationcontroller", on("replicationcontroller")),
                pdb: Lane::new("disruption", on("disruption")),
            },
            AppsInformers {
                ds,
                sts,
                cr,
                pvc,
                rc,
                pdb,
            },
        )
    }

    pub(super) async fn wait_until_synced(&self) {
        self.dss.wait_until_synced().await;
        self.stss.wait_until_synced().await;
        self.crs.wait_until_synced().await;
        self.pvcs.wait_until_synced().await;
        self.rcs.wait_until_synced().await;
        self.pdbs.wait_until_synced().await;
    }

    pub(super) fn lanes(&self) -> [&Lane; 4] {
        [&self.ds, &self.sts, &self.rc, &self.pdb]
    }

    /// Any pod of `ns` changed: its PDBs recount.
    pub(super) fn on_any_pod(&self, ns: &str) {
        if !self.pdb.on {
            return;
        }
        for p in self
            .pdbs
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        {
            self.pdb.add(key_of(&p.metadata));
        }
    }

    pub(super) fn resync(&self) {
        for d in self.dss.list() {
            self.ds.add(key_of(&d.metadata));
        }
        for s in self.stss.list() {
            self.sts.add(key_of(&s.metadata));
        }
        for r in self.rcs.list() {
            self.rc.add(key_of(&r.metadata));
        }
        for p in self.pdbs.list() {
            self.pdb.add(key_of(&p.metadata));
        }
    }

    /// A pod owned by one of our kinds changed.
    pub(super) fn on_owned_pod(
        &self,
        kind: &str,
        owner: &ObjectKey,
        pod_key: &str,
        gone: bool,
        added: bool,
    ) {
        let (lane, exp) = match kind {
            "DaemonSet" => (&self.ds, Some(&self.ds_exp)),
            "StatefulSet" => (&self.sts, None),
            _ => (&self.rc, Some(&self.rc_exp)),
        };
        if let Some(exp) = exp {
            if gone {
                exp.deletion_observed(owner, pod_key);
            } else if added {
                exp.creation_observed(owner);
            }
        }
        lane.add(owner.clone());
    }

    /// Cached claims that pass `f`.
    pub(super) fn claims(
        &self,
        f: impl Fn(&PersistentVolumeClaim) -> bool,
    ) -> Vec<Arc<PersistentVolumeClaim>> {
        self.pvcs.filter(f)
    }

    /// One cached claim.
    pub(super) fn claim(&self, ns: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.pvcs.get(ns, name)
    }

    /// `(group, resource, count)` of the app kinds cached here, in `ns` (quota counts).
    pub(super) fn counts(&self, ns: &str) -> Vec<(&'static str, &'static str, usize)> {
        let n = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.namespace.as_deref() == Some(ns)
        };
        vec![
            (
                "apps",
                "daemonsets",
                self.dss.filter(|x| n(&x.metadata)).len(),
            ),
            (
                "apps",
                "statefulsets",
                self.stss.filter(|x| n(&x.metadata)).len(),
            ),
            (
                "",
                "replicationcontrollers",
                self.rcs.filter(|x| n(&x.metadata)).len(),
            ),
        ]
    }

    /// Every DaemonSet (a Node changed: which nodes are eligible may have too).
    fn all_daemonsets(&self) {
        for d in self.dss.list() {
            self.ds.add(key_of(&d.metadata));
        }
    }
}

impl AppsInformers {
    pub(super) fn spawn(self, tasks: &mut tokio::task::JoinSet<()>, ctx: &Arc<Ctx>) {
        let c = ctx.clone();
        tasks.spawn(self.ds.run(move |ev| c.on_daemonset(ev)));
        let c = ctx.clone();
        tasks.spawn(self.sts.run(move |ev| c.on_statefulset(ev)));
        let c = ctx.clone();
        tasks.spawn(self.cr.run(move |ev| c.on_revision(ev)));
        let c = ctx.clone();
        tasks.spawn(self.pvc.run(move |ev| c.on_claim(ev)));
        let c = ctx.clone();
        tasks.spawn(self.rc.run(move |ev| c.on_rc(ev)));
        let c = ctx.clone();
        tasks.spawn(self.pdb.run(move |ev| {
            if let Some((p, _)) = split(ev) {
                c.apps.pdb.add(key_of(&p.metadata));
            }
        }));
    }
}

/// Starts the worker pools of the enabled app controllers.
pub(super) fn spawn_workers(tasks: &mut tokio::task::JoinSet<()>, ctx: &Arc<Ctx>) {
    let a = &ctx.apps;
    if a.ds.on {
        tasks.spawn(run_workers(
            Arc::new(DaemonSetController(ctx.clone())),
            a.ds.queue.clone(),
            4,
            a.ds.stats.clone(),
        ));
    }
    if a.sts.on {
        tasks.spawn(run_workers(
            Arc::new(StatefulSetController(ctx.clone())),
            a.sts.queue.clone(),
            4,
            a.sts.stats.clone(),
        ));
    }
    if a.pdb.on {
        tasks.spawn(run_workers(
            Arc::new(DisruptionController(ctx.clone())),
            a.pdb.queue.clone(),
            2,
            a.pdb.stats.clone(),
        ));
    }
    if a.rc.on {
        tasks.spawn(run_workers(
            Arc::new(ReplicationControllerController(ctx.clone())),
            a.rc.queue.clone(),
            5,
            a.rc.stats.clone(),
        ));
    }
}

fn split<K>(ev: Event<K>) -> Option<(Arc<K>, bool)> {
    match ev {
        Event::Added(o) | Event::Modified(o) => Some((o, false)),
        Event::Deleted(o) => Some((o, true)),
        Event::Synced => None,
    }
}

// === impl Ctx: app informer handlers ===

impl Ctx {
    fn gc_event(
        &self,
        api_version: &str,
        kind: &str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        deleted: bool,
    ) {
        if deleted {
            self.gc_remove(meta);
        } else {
            self.gc_upsert(api_version, kind, meta);
        }
    }

    fn on_daemonset(&self, ev: Event<DaemonSet>) {
        let Some((d, deleted)) = split(ev) else {
            return;
        };
        let key = key_of(&d.metadata);
        if deleted {
            self.apps.ds_exp.delete(&key);
            self.apps.ds_backoff.lock().forget(&format!("{key}/"));
        }
        self.gc_event("apps/v1", "DaemonSet", &d.metadata, deleted);
        self.apps.ds.add(key);
    }

    fn on_statefulset(&self, ev: Event<StatefulSet>) {
        let Some((s, deleted)) = split(ev) else {
            return;
        };
        self.gc_event("apps/v1", "StatefulSet", &s.metadata, deleted);
        self.apps.sts.add(key_of(&s.metadata));
    }

    fn on_revision(&self, ev: Event<ControllerRevision>) {
        let Some((r, deleted)) = split(ev) else {
            return;
        };
        self.gc_event("apps/v1", "ControllerRevision", &r.metadata, deleted);
        if let Some(o) = controller_ref(&r.metadata) {
            let k = ObjectKey::new(r.metadata.namespace.as_deref().unwrap_or(""), &o.name);
            match o.kind.as_str() {
                "DaemonSet" => self.apps.ds.add(k),
                "StatefulSet" => self.apps.sts.add(k),
                _ => {}
            }
        }
    }

    fn on_claim(&self, ev: Event<PersistentVolumeClaim>) {
        let added = matches!(ev, Event::Added(_));
        let Some((c, deleted)) = split(ev) else {
            return;
        };
        self.gc_event("v1", "PersistentVolumeClaim", &c.metadata, deleted);
        self.policy.on_claim(&c, added);
    }

    fn on_rc(&self, ev: Event<ReplicationController>) {
        let Some((r, deleted)) = split(ev) else {
            return;
        };
        let key = key_of(&r.metadata);
        if deleted {
            self.apps.rc_exp.delete(&key);
        }
        self.gc_event("v1", "ReplicationController", &r.metadata, deleted);
        self.apps.rc.add(key);
    }

    /// A Node was added, changed or deleted.
    pub(super) fn apps_on_node(&self, _node: &Node) {
        self.apps.all_daemonsets();
    }

    /// The pods controlled by the owner `uid` in `ns`.
    fn owned_pods(&self, ns: &str, uid: &str) -> Vec<Arc<Pod>> {
        self.pods_owned_by(ns, uid, false)
    }

    fn revisions_of(&self, ns: &str, uid: &str) -> Vec<Arc<ControllerRevision>> {
        self.apps.crs.filter(|r| {
            r.metadata.namespace.as_deref() == Some(ns)
                && controller_ref(&r.metadata).is_some_and(|o| o.uid == uid)
        })
    }

    /// Writes a history plan. A revision name taken by other data is a hash collision:
    /// `status.collisionCount` goes up (through `bump`) and the reconcile fails to retry.
    async fn write_history(
        &self,
        ns: &str,
        plan: &history::Plan,
        bump_collision: impl AsyncFnOnce() -> Result<(), ReconcileError>,
    ) -> Result<(), ReconcileError> {
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), ns);
        let pp = PostParams::default();
        if let Some(r) = &plan.create {
            match api.create(&pp, r).await {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {
                    let existing = api.get_opt(&plan.name).await.map_err(api_err)?;
                    let same = existing.as_ref().is_some_and(|x| x.data == r.data);
                    if !same {
                        bump_collision().await?;
                        return Err(ReconcileError::Api(format!(
                            "controller revision {} collides",
                            plan.name
                        )));
                    }
                }
                Err(e) => return Err(api_err(e)),
            }
        }
        if let Some((name, n)) = &plan.renumber {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"revision": n})),
            )
            .await
            .map_err(api_err)?;
        }
        for name in &plan.delete {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        Ok(())
    }
}

fn live_hashes(pods: &[Arc<Pod>]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| history::hash_label(&p.metadata).map(str::to_string))
        .collect()
}

// === DaemonSet ===

struct DaemonSetController(Arc<Ctx>);

impl Controller for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let a = &c.apps;
        let Some(ds) = a.dss.get(&key.namespace, &key.name) else {
            a.ds_exp.delete(&key);
            return Ok(Action::Done);
        };
        let t = Instant::now();
        if !a.ds_exp.satisfied(&key, t) {
            return Ok(Action::RequeueAfter(
                EXPECTATIONS_TIMEOUT + Duration::from_secs(1),
            ));
        }
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let pods = c.owned_pods(&key.namespace, &uid);
        let revs = c.revisions_of(&key.namespace, &uid);
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let collision = ds.status.as_ref().and_then(|s| s.collision_count);
        let rev_refs: Vec<&ControllerRevision> = revs.iter().map(AsRef::as_ref).collect();
        let hp = history::plan(
            Owner {
                api_version: "apps/v1",
                kind: "DaemonSet",
                meta: &ds.metadata,
                template: &template,
                collision_count: collision,
                history_limit: ds.spec.as_ref().and_then(|s| s.revision_history_limit),
            },
            &rev_refs,
            &live_hashes(&pods),
        );
        let dsapi: Api<DaemonSet> = Api::namespaced(c.client.clone(), &key.namespace);
        if ds.metadata.deletion_timestamp.is_none() {
            c.write_history(&key.namespace, &hp, async || {
                let patch = json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
                dsapi
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map(|_| ())
                    .map_err(api_err)
            })
            .await?;
        }
        let nodes = c.nodes.list_nodes();
        let node_refs: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
        let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
        let mut plan = daemonset::plan(&ds, &hp.hash, &node_refs, &pod_refs, c.clock.now())
            .map_err(invalid)?;
        // Failed pods: deleted (and recreated) under a per-node backoff.
        let now_ms = c.clock.now().as_millisecond();
        let mut backoff_retry: Option<Duration> = None;
        for (node, pod) in std::mem::take(&mut plan.failed) {
            let allowed = a.ds_backoff.lock().allow(&format!("{key}/{node}"), now_ms);
            match allowed {
                Ok(()) => {
                    let msg = format!(
                        "Found failed daemon pod {}/{} on node {node}, will try to kill it",
                        key.namespace, pod.name
                    );
                    record_event(
                        c,
                        object_ref("apps/v1", "DaemonSet", &ds.metadata),
                        "daemonset-controller",
                        "Warning",
                        "FailedDaemonPod",
                        &msg,
                    )
                    .await;
                    plan.delete.push(pod);
                }
                Err(d) => {
                    backoff_retry = Some(backoff_retry.map_or(d, |r| r.min(d)));
                }
            }
        }
        if let Some(d) = backoff_retry {
            plan.requeue_after = Some(plan.requeue_after.map_or(d, |r| r.min(d)));
        }
        let api: Api<Pod> = Api::namespaced(c.client.clone(), &key.namespace);
        let deletes: Vec<String> = plan
            .delete
            .iter()
            .map(|p| format!("{}/{}", key.namespace, p.name))
            .collect();
        a.ds_exp.expect(&key, plan.create.len(), deletes, t);
        let mut err = None;
        if !plan.create.is_empty() {
            let new: Vec<Pod> = plan
                .create
                .iter()
                .map(|n| daemonset::pod_for_node(&ds, n, &hp.hash))
                .collect();
            err = create_pods(&api, new, &a.ds_exp, &key).await.1;
        }
        if !plan.delete.is_empty()
            && let Some(e) = delete_pods(&api, &plan.delete, &key.namespace, &a.ds_exp, &key).await
        {
            err.get_or_insert(e);
        }
        if ds.status.as_ref() != Some(&plan.status) {
            let patch = json!({"status": plan.status});
            if let Err(e) = dsapi
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                && !e.is_not_found()
            {
                err.get_or_insert(e);
            }
        }
        if let Some(e) = err {
            return Err(api_err(e));
        }
        Ok(requeue(plan.requeue_after))
    }
}

// === StatefulSet ===

struct StatefulSetController(Arc<Ctx>);

impl Controller for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let a = &c.apps;
        let Some(set) = a.stss.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let pods = c.owned_pods(&key.namespace, &uid);
        let revs = c.revisions_of(&key.namespace, &uid);
        let template = set
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let collision = set.status.as_ref().and_then(|s| s.collision_count);
        let rev_refs: Vec<&ControllerRevision> = revs.iter().map(AsRef::as_ref).collect();
        let hp = history::plan(
            Owner {
                api_version: "apps/v1",
                kind: "StatefulSet",
                meta: &set.metadata,
                template: &template,
                collision_count: collision,
                history_limit: set.spec.as_ref().and_then(|s| s.revision_history_limit),
            },
            &rev_refs,
            &live_hashes(&pods),
        );
        let sapi: Api<StatefulSet> = Api::namespaced(c.client.clone(), &key.namespace);
        if set.metadata.deletion_timestamp.is_none() {
            c.write_history(&key.namespace, &hp, async || {
                let patch = json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
                sapi.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map(|_| ())
                    .map_err(api_err)
            })
            .await?;
        }
        let update = statefulset::Revision {
            hash: hp.hash.clone(),
            template: template.clone(),
        };
        let current = set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref())
            .and_then(|h| {
                revs.iter()
                    .find(|r| history::hash_label(&r.metadata) == Some(h))
                    .and_then(|r| history::template_of(r))
                    .map(|t| statefulset::Revision {
                        hash: h.to_string(),
                        template: t,
                    })
            })
            .unwrap_or_else(|| update.clone());
        let claims: BTreeSet<String> = a
            .pvcs
            .filter(|p| p.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
        let plan = statefulset::plan(&set, &current, &update, &pod_refs, &claims, c.clock.now());
        let pp = PostParams::default();
        let capi: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), &key.namespace);
        for claim in &plan.create_claims {
            match capi.create(&pp, claim).await {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        // Claim retention: owner references follow the policy before any pod goes.
        if set.metadata.deletion_timestamp.is_none() {
            let ns_claims = a
                .pvcs
                .filter(|p| p.metadata.namespace.as_deref() == Some(key.namespace.as_str()));
            let claim_refs: Vec<&PersistentVolumeClaim> =
                ns_claims.iter().map(AsRef::as_ref).collect();
            for claim in statefulset::claim_owner_updates(&set, &pod_refs, &claim_refs) {
                match capi
                    .replace(claim.metadata.name.as_deref().unwrap_or(""), &pp, &claim)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(api_err(e)),
                }
            }
        }
        let api: Api<Pod> = Api::namespaced(c.client.clone(), &key.namespace);
        for p in &plan.create {
            match api.create(&pp, p).await {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        for v in &plan.delete {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(v.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&v.name, &dp).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        if set.status.as_ref() != Some(&plan.status) {
            let patch = json!({"status": plan.status});
            match sapi
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        Ok(Action::Done)
    }
}

// === ReplicationController (the ReplicaSet core over a converted object) ===

/// The ReplicaSet an RC behaves as: its selector map as matchLabels (the template's labels
/// when empty, as upstream defaulting), same template, uid and status counts.
fn rc_as_rs(rc: &ReplicationController) -> ReplicaSet {
    let spec = rc.spec.clone().unwrap_or_default();
    let selector = spec.selector.filter(|s| !s.is_empty()).or_else(|| {
        spec.template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
    });
    ReplicaSet {
        metadata: rc.metadata.clone(),
        spec: Some(ReplicaSetSpec {
            replicas: spec.replicas,
            min_ready_seconds: spec.min_ready_seconds,
            selector: LabelSelector {
                match_labels: selector,
                match_expressions: None,
            },
            template: spec.template,
        }),
        status: rc
            .status
            .as_ref()
            .map(|s| k8s_openapi::api::apps::v1::ReplicaSetStatus {
                replicas: s.replicas,
                fully_labeled_replicas: s.fully_labeled_replicas,
                ready_replicas: s.ready_replicas,
                available_replicas: s.available_replicas,
                observed_generation: s.observed_generation,
                ..Default::default()
            }),
    }
}

struct ReplicationControllerController(Arc<Ctx>);

impl Controller for ReplicationControllerController {
    fn name(&self) -> &'static str {
        "replicationcontroller"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let a = &c.apps;
        let Some(rc) = a.rcs.get(&key.namespace, &key.name) else {
            a.rc_exp.delete(&key);
            return Ok(Action::Done);
        };
        let t = Instant::now();
        let satisfied = a.rc_exp.satisfied(&key, t);
        let rs = rc_as_rs(&rc);
        let uid = rc.metadata.uid.clone().unwrap_or_default();
        let pods = c.pods_owned_by(&key.namespace, &uid, true);
        let plan = replicaset::plan(&rs, pods.iter().map(AsRef::as_ref), c.clock.now())
            .map_err(invalid)?;
        let api: Api<Pod> = Api::namespaced(c.client.clone(), &key.namespace);
        let me = new_controller_ref("v1", "ReplicationController", &rc.metadata);
        let mut err = None;
        if satisfied {
            adopt_release(&api, &me, &plan).await.map_err(api_err)?;
            let deletes: Vec<String> = plan
                .delete
                .iter()
                .map(|p| format!("{}/{}", key.namespace, p.name))
                .collect();
            a.rc_exp.expect(&key, plan.create, deletes, t);
            if plan.create > 0 {
                let new: Vec<Pod> = (0..plan.create)
                    .map(|_| {
                        let mut p = replicaset::pod_from_template(&rs);
                        p.metadata.owner_references = Some(vec![me.clone()]);
                        p
                    })
                    .collect();
                err = create_pods(&api, new, &a.rc_exp, &key).await.1;
            }
            if !plan.delete.is_empty()
                && let Some(e) =
                    delete_pods(&api, &plan.delete, &key.namespace, &a.rc_exp, &key).await
            {
                err.get_or_insert(e);
            }
        }
        let status = ReplicationControllerStatus {
            replicas: plan.status.replicas,
            fully_labeled_replicas: plan.status.fully_labeled_replicas,
            ready_replicas: plan.status.ready_replicas,
            available_replicas: plan.status.available_replicas,
            observed_generation: plan.status.observed_generation,
            conditions: rc.status.as_ref().and_then(|s| s.conditions.clone()),
        };
        if rc.status.as_ref() != Some(&status) {
            let rcapi: Api<ReplicationController> =
                Api::namespaced(c.client.clone(), &key.namespace);
            let patch = json!({"status": status});
            if let Err(e) = rcapi
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                && !e.is_not_found()
            {
                err.get_or_insert(e);
            }
        }
        if let Some(e) = err {
            return Err(api_err(e));
        }
        Ok(if satisfied {
            requeue(plan.requeue_after)
        } else {
            Action::RequeueAfter(EXPECTATIONS_TIMEOUT + Duration::from_secs(1))
        })
    }
}

// === PodDisruptionBudget status ===

struct DisruptionController(Arc<Ctx>);

impl DisruptionController {
    /// The scale of a pod's controller (a Deployment's for its ReplicaSets), uid-checked.
    fn scale_of(&self, ns: &str, r: &OwnerReference) -> Option<i32> {
        let c = &self.0;
        let same = |uid: Option<&String>| uid == Some(&r.uid);
        match r.kind.as_str() {
            "ReplicaSet" => {
                let rs = c
                    .rss
                    .get(ns, &r.name)
                    .filter(|x| same(x.metadata.uid.as_ref()))?;
                if let Some(d) = controller_ref(&rs.metadata).filter(|o| o.kind == "Deployment") {
                    let dep = c.deploys.get(ns, &d.name)?;
                    return Some(dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1));
                }
                Some(rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
            }
            "StatefulSet" => {
                let s = c
                    .apps
                    .stss
                    .get(ns, &r.name)
                    .filter(|x| same(x.metadata.uid.as_ref()))?;
                Some(s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
            }
            "ReplicationController" => {
                let s = c
                    .apps
                    .rcs
                    .get(ns, &r.name)
                    .filter(|x| same(x.metadata.uid.as_ref()))?;
                Some(s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
            }
            _ => None,
        }
    }
}

impl Controller for DisruptionController {
    fn name(&self) -> &'static str {
        "disruption"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let Some(pdb) = c.apps.pdbs.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        let pods = c.pods_in(&key.namespace);
        let st = disruption::status(
            &pdb,
            pods.iter().map(AsRef::as_ref),
            |r| self.scale_of(&key.namespace, r),
            c.clock.now(),
        );
        if pdb.status.as_ref() != Some(&st) {
            let api: Api<PodDisruptionBudget> = Api::namespaced(c.client.clone(), &key.namespace);
            match api
                .patch_status(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": st})),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ReplicationControllerSpec;

    #[test]
    fn rc_selector_defaults_to_template_labels() {
        let mut rc = ReplicationController {
            spec: Some(ReplicationControllerSpec {
                template: Some(crate::testutil::template("x", &[("app", "web")])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let rs = rc_as_rs(&rc);
        assert_eq!(
            rs.spec.unwrap().selector.match_labels,
            Some(crate::testutil::labels(&[("app", "web")]))
        );
        rc.spec.as_mut().unwrap().selector = Some(crate::testutil::labels(&[("tier", "a")]));
        assert_eq!(
            rc_as_rs(&rc).spec.unwrap().selector.match_labels,
            Some(crate::testutil::labels(&[("tier", "a")]))
        );
    }
}
