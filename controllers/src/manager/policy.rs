//! The shells of the ResourceQuota, HorizontalPodAutoscaler and PersistentVolume binder
//! controllers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use api::client::runtime::{Event, Informer, Store};
use api::client::{
    Api, ApiResource, Client, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use api::quota::Object;
use futures::future::BoxFuture;
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricValueStatus,
    ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota, Secret,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use parking_lot::Mutex;
use serde_json::json;

use super::{Ctx, Lane, api_err, key_of, object_ref, record_event, resource_for};
use crate::hpa::{self, PodInfo, Recommender, Sample, Target};
use crate::runtime::{Action, Controller, ReconcileError, run_workers};
use crate::util::ObjectKey;
use crate::{resourcequota, volumebinding};

/// How often an HPA is re-evaluated (`--horizontal-pod-autoscaler-sync-period`).
const HPA_SYNC_PERIOD: Duration = Duration::from_secs(15);
/// How often an unbound claim is retried (`--pvclaimbinder-sync-period`).
const CLAIM_RETRY: Duration = Duration::from_secs(15);
/// Pages of a live list for `count/<resource>` kinds without a cache.
const LIVE_COUNT_PAGES: usize = 100;

/// One container's usage as the metrics API reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    /// Container name.
    pub name: String,
    /// Millicores.
    pub cpu_milli: i64,
    /// Memory in thousandths of a byte (the unit of every quantity here).
    pub memory_milli: i64,
}

/// One pod's `metrics.k8s.io/v1beta1` PodMetrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// Pod name.
    pub pod: String,
    /// Sample time (Unix ms).
    pub timestamp_ms: i64,
    /// Sample window (ms).
    pub window_ms: i64,
    /// Per container.
    pub containers: Vec<ContainerUsage>,
}

/// Where the HPA controller reads pod metrics. The default reads the resource metrics API
/// through the apiserver; tests plug in their own.
pub trait MetricsSource: Send + Sync + 'static {
    /// The PodMetrics of the pods of `namespace` matching `selector`. `Err` carries
    /// upstream's text (it ends up in the HPA's `ScalingActive` condition).
    fn pod_metrics<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PodUsage>, String>>;
}

/// The resource metrics API (`/apis/metrics.k8s.io/v1beta1`) through the apiserver.
pub struct ApiMetrics(pub Client);

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

impl MetricsSource for ApiMetrics {
    fn pod_metrics<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PodUsage>, String>> {
        Box::pin(async move {
            let path = format!(
                "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={}",
                url_encode(selector)
            );
            let v: serde_json::Value = self.0.get_json(&path).await.map_err(|e| {
                if e.is_not_found() {
                    "unable to fetch metrics from resource metrics API: the server could not find the requested resource (get pods.metrics.k8s.io)".to_string()
                } else {
                    format!("unable to fetch metrics from resource metrics API: {e}")
                }
            })?;
            let mut out = Vec::new();
            for it in v["items"].as_array().into_iter().flatten() {
                let q = |c: &serde_json::Value, r: &str| {
                    c["usage"][r]
                        .as_str()
                        .and_then(api::quota::parse_milli)
                        .and_then(|x| i64::try_from(x).ok())
                        .unwrap_or(0)
                };
                out.push(PodUsage {
                    pod: it["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    timestamp_ms: it["timestamp"]
                        .as_str()
                        .and_then(parse_rfc3339_ms)
                        .unwrap_or(0),
                    window_ms: it["window"]
                        .as_str()
                        .and_then(|w| crate::util::parse_duration(w).ok())
                        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0)),
                    containers: it["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| ContainerUsage {
                            name: c["name"].as_str().unwrap_or("").to_string(),
                            cpu_milli: q(c, "cpu"),
                            memory_milli: q(c, "memory"),
                        })
                        .collect(),
                });
            }
            Ok(out)
        })
    }
}

/// Caches, queues and memory of the policy controllers.
pub(super) struct Policy {
    quotas: Store<ResourceQuota>,
    secrets: Store<Secret>,
    hpas: Store<HorizontalPodAutoscaler>,
    pvs: Store<PersistentVolume>,
    quota: Lane,
    hpa: Lane,
    pv: Lane,
    recommender: Mutex<Recommender>,
    metrics: Arc<dyn MetricsSource>,
}

/// The informers behind [`Policy`], until spawned.
pub(super) struct PolicyInformers {
    quotas: Informer<ResourceQuota>,
    secrets: Informer<Secret>,
    hpas: Informer<HorizontalPodAutoscaler>,
    pvs: Informer<PersistentVolume>,
}

impl Policy {
    pub(super) fn new(
        client: &Client,
        enabled: &BTreeSet<&'static str>,
        metrics: Option<Arc<dyn MetricsSource>>,
    ) -> (Self, PolicyInformers) {
        let on = |n: &str| enabled.contains(n);
        let (quotas, qi) = super::informer::<ResourceQuota>(client);
        let (secrets, si) = super::informer::<Secret>(client);
        let (hpas, hi) = super::informer::<HorizontalPodAutoscaler>(client);
        let (pvs, pi) = Informer::new(
            Api::<PersistentVolume>::all(client.clone()),
            ListParams::default(),
        );
        (
            Self {
                quotas,
                secrets,
                hpas,
                pvs,
                quota: Lane::new("resourcequota", on("resourcequota")),
                hpa: Lane::new("horizontalpodautoscaling", on("horizontalpodautoscaling")),
                pv: Lane::new("persistentvolume-binder", on("persistentvolume-binder")),
                recommender: Mutex::new(Recommender::default()),
                metrics: metrics.unwrap_or_else(|| Arc::new(ApiMetrics(client.clone()))),
            },
            PolicyInformers {
                quotas: qi,
                secrets: si,
                hpas: hi,
                pvs: pi,
            },
        )
    }

    pub(super) async fn wait_until_synced(&self) {
        self.quotas.wait_until_synced().await;
        self.secrets.wait_until_synced().await;
        self.hpas.wait_until_synced().await;
        self.pvs.wait_until_synced().await;
    }

    pub(super) fn lanes(&self) -> [&Lane; 3] {
        [&self.quota, &self.hpa, &self.pv]
    }

    pub(super) fn resync(&self) {
        for q in self.quotas.list() {
            self.quota.add(key_of(&q.metadata));
        }
        for h in self.hpas.list() {
            self.hpa.add(key_of(&h.metadata));
        }
        for v in self.pvs.list() {
            self.pv.add(key_of(&v.metadata));
        }
    }

    /// Something a quota may count changed in `ns`: its quotas recalculate.
    pub(super) fn on_ns_object(&self, ns: &str) {
        if !self.quota.on {
            return;
        }
        for q in self
            .quotas
            .filter(|q| q.metadata.namespace.as_deref() == Some(ns))
        {
            self.quota.add(key_of(&q.metadata));
        }
    }

    /// A claim changed: the binder syncs it and the volume it names; a deleted or resized
    /// claim is recounted by its quotas (creates were charged at admission).
    pub(super) fn on_claim(&self, c: &PersistentVolumeClaim, added: bool) {
        self.pv.add(key_of(&c.metadata));
        if let Some(v) = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) {
            self.pv.add(ObjectKey::new("", v));
        }
        for v in self.pvs.filter(|v| {
            v.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some_and(|r| r.name == c.metadata.name && r.namespace == c.metadata.namespace)
        }) {
            self.pv.add(key_of(&v.metadata));
        }
        if !added {
            self.on_ns_object(c.metadata.namespace.as_deref().unwrap_or(""));
        }
    }
}

impl PolicyInformers {
    pub(super) fn spawn(self, tasks: &mut tokio::task::JoinSet<()>, ctx: &Arc<Ctx>) {
        let c = ctx.clone();
        tasks.spawn(self.quotas.run(move |ev| match ev {
            Event::Added(q) => c.policy.quota.add(key_of(&q.metadata)),
            // As upstream, only a spec change recounts: admission's charges to `status.used`
            // must not trigger a recount from caches that may not hold the charged object yet.
            Event::Modified(q) => {
                let hard = q.spec.as_ref().and_then(|s| s.hard.as_ref());
                if q.status.as_ref().and_then(|s| s.hard.as_ref()) != hard {
                    c.policy.quota.add(key_of(&q.metadata));
                }
            }
            Event::Deleted(_) | Event::Synced => {}
        }));
        let c = ctx.clone();
        tasks.spawn(self.secrets.run(move |ev| {
            if let Event::Deleted(s) = ev {
                c.policy
                    .on_ns_object(s.metadata.namespace.as_deref().unwrap_or(""));
            }
        }));
        let c = ctx.clone();
        tasks.spawn(self.hpas.run(move |ev| match ev {
            Event::Added(h) | Event::Modified(h) => c.policy.hpa.add(key_of(&h.metadata)),
            Event::Deleted(h) => {
                c.policy
                    .recommender
                    .lock()
                    .forget(&key_of(&h.metadata).to_string());
            }
            Event::Synced => {}
        }));
        let c = ctx.clone();
        tasks.spawn(self.pvs.run(move |ev| {
            if let Event::Added(v) | Event::Modified(v) | Event::Deleted(v) = ev {
                let p = &c.policy;
                p.pv.add(key_of(&v.metadata));
                if let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                    p.pv.add(ObjectKey::new(
                        r.namespace.as_deref().unwrap_or(""),
                        r.name.as_deref().unwrap_or(""),
                    ));
                }
                // A new or freed volume may fit a waiting claim.
                for claim in c.apps.claims(|cl| {
                    cl.spec
                        .as_ref()
                        .and_then(|s| s.volume_name.as_deref())
                        .is_none_or(str::is_empty)
                }) {
                    p.pv.add(key_of(&claim.metadata));
                }
            }
        }));
    }
}

/// Starts the worker pools of the enabled policy controllers.
pub(super) fn spawn_workers(tasks: &mut tokio::task::JoinSet<()>, ctx: &Arc<Ctx>) {
    let p = &ctx.policy;
    if p.quota.on {
        tasks.spawn(run_workers(
            Arc::new(QuotaController(ctx.clone())),
            p.quota.queue.clone(),
            5,
            p.quota.stats.clone(),
        ));
    }
    if p.hpa.on {
        tasks.spawn(run_workers(
            Arc::new(HpaController(ctx.clone())),
            p.hpa.queue.clone(),
            5,
            p.hpa.stats.clone(),
        ));
    }
    if p.pv.on {
        tasks.spawn(run_workers(
            Arc::new(BinderController(ctx.clone())),
            p.pv.queue.clone(),
            1,
            p.pv.stats.clone(),
        ));
    }
}

fn now_s(ctx: &Ctx) -> i64 {
    ctx.clock.now().as_second()
}

// === ResourceQuota ===

struct QuotaController(Arc<Ctx>);

/// `(group, resource)` kinds counted from the manager's caches.
const CACHED: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("", "persistentvolumeclaims"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "replicationcontrollers"),
    ("", "resourcequotas"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("autoscaling", "horizontalpodautoscalers"),
];

impl QuotaController {
    /// How many objects of an uncached namespaced kind `ns` holds (a live, paged list).
    async fn live_count(
        &self,
        ns: &str,
        group: &str,
        resource: &str,
    ) -> Result<usize, ReconcileError> {
        let Some((g, v, k, p)) = super::NAMESPACED
            .iter()
            .find(|(g, _, _, p)| *g == group && *p == resource)
        else {
            return Ok(0);
        };
        let ar = ApiResource::new(g, v, k, p, true);
        let api: Api<DynamicObject> = Api::namespaced_with(self.0.client.clone(), ns, &ar);
        let list = api
            .list_all(&ListParams::default().limit(500), LIVE_COUNT_PAGES)
            .await
            .map_err(api_err)?;
        Ok(list.items.len())
    }
}

impl Controller for QuotaController {
    fn name(&self) -> &'static str {
        "resourcequota"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let p = &c.policy;
        let Some(q) = p.quotas.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        let ns = key.namespace.as_str();
        let in_ns = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.namespace.as_deref() == Some(ns)
        };
        let pods = c.pods_in(ns);
        let svcs = c.svcs.filter(|s| in_ns(&s.metadata));
        let claims = c.apps.claims(|x| in_ns(&x.metadata));
        let mut counts: Vec<(&str, &str, usize)> = vec![
            ("", "configmaps", c.cms.filter(|x| in_ns(&x.metadata)).len()),
            (
                "",
                "secrets",
                p.secrets.filter(|x| in_ns(&x.metadata)).len(),
            ),
            (
                "",
                "resourcequotas",
                p.quotas.filter(|x| in_ns(&x.metadata)).len(),
            ),
            (
                "apps",
                "deployments",
                c.deploys.filter(|x| in_ns(&x.metadata)).len(),
            ),
            (
                "apps",
                "replicasets",
                c.rss.filter(|x| in_ns(&x.metadata)).len(),
            ),
            ("batch", "jobs", c.jobs.filter(|x| in_ns(&x.metadata)).len()),
            (
                "autoscaling",
                "horizontalpodautoscalers",
                p.hpas.filter(|x| in_ns(&x.metadata)).len(),
            ),
        ];
        counts.extend(c.apps.counts(ns));
        counts.push(("batch", "cronjobs", c.batch.count(ns)));
        let live = resourcequota::live_counted(&q, CACHED);
        let mut live_counts = Vec::new();
        for (g, r) in &live {
            live_counts.push((g.as_str(), r.as_str(), self.live_count(ns, g, r).await?));
        }
        let objects = pods
            .iter()
            .map(|x| Object::Pod(x))
            .chain(svcs.iter().map(|x| Object::Service(x)))
            .chain(claims.iter().map(|x| Object::Claim(x)))
            .chain(counts.iter().chain(&live_counts).flat_map(|(g, r, n)| {
                std::iter::repeat_n(
                    Object::Other {
                        group: g,
                        resource: r,
                    },
                    *n,
                )
            }));
        let want = resourcequota::status(&q, objects, now_s(c));
        if resourcequota::differs(q.status.as_ref(), &want) {
            let mut next = (*q).clone();
            next.status = Some(want);
            let api: Api<ResourceQuota> = Api::namespaced(c.client.clone(), ns);
            match api
                .replace_status(&key.name, &PostParams::default(), &next)
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

// === HorizontalPodAutoscaler ===

struct HpaController(Arc<Ctx>);

/// The status being built by one reconcile.
struct HpaState {
    conditions: Vec<HorizontalPodAutoscalerCondition>,
    now: Time,
}

impl HpaState {
    fn set(&mut self, type_: &str, ok: bool, reason: &str, message: String) {
        let status = if ok { "True" } else { "False" };
        if let Some(c) = self.conditions.iter_mut().find(|c| c.type_ == type_) {
            if c.status != status {
                c.last_transition_time = Some(self.now.clone());
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message);
        } else {
            self.conditions.push(HorizontalPodAutoscalerCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message),
                last_transition_time: Some(self.now.clone()),
            });
        }
    }

    fn set3(&mut self, c: hpa::CondSet) {
        self.set(c.0, c.1, c.2, c.3.to_string());
    }
}

/// A metric's evaluation failure: (condition reason, message).
type MetricError = (&'static str, String);

fn pod_info(p: &Pod, resource: &str, container: Option<&str>) -> PodInfo {
    let st = p.status.as_ref();
    let ready = st
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| {
            (
                c.status == "True",
                c.last_transition_time
                    .as_ref()
                    .map_or(0, |t| t.0.as_millisecond()),
            )
        });
    let mut request = Ok(0i64);
    for c in p
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[])
    {
        if container.is_some_and(|n| n != c.name) {
            continue;
        }
        let r = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| api::quota::parse_milli(&q.0))
            .and_then(|x| i64::try_from(x).ok());
        match r {
            Some(v) => {
                if let Ok(sum) = request.as_mut() {
                    *sum += v;
                }
            }
            None => {
                if request.is_ok() {
                    request = Err(c.name.clone());
                }
            }
        }
    }
    PodInfo {
        name: p.metadata.name.clone().unwrap_or_default(),
        phase: st.and_then(|s| s.phase.clone()).unwrap_or_default(),
        deleting: p.metadata.deletion_timestamp.is_some(),
        ready,
        start_ms: st
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.as_millisecond()),
        request,
    }
}

impl HpaController {
    /// One metric: `Ok((replicas, status, name))` or the failure.
    async fn metric(
        &self,
        ns: &str,
        spec: &MetricSpec,
        current: i32,
        selector: &str,
        pods: &[Arc<Pod>],
    ) -> Result<(i32, MetricStatus, String), MetricError> {
        let (resource, container, target) = match spec.type_.as_str() {
            "Resource" => {
                let r = spec.resource.as_ref().ok_or(("InvalidMetricSourceType", "resource metric without a source".to_string()))?;
                (r.name.clone(), None, &r.target)
            }
            "ContainerResource" => {
                let r = spec.container_resource.as_ref().ok_or(("InvalidMetricSourceType", "container resource metric without a source".to_string()))?;
                (r.name.clone(), Some(r.container.clone()), &r.target)
            }
            "Pods" => return Err(("FailedGetPodsMetric", "the HPA was unable to compute the replica count: unable to get metric: no custom metrics API (custom.metrics.k8s.io) registered".into())),
            "Object" => return Err(("FailedGetObjectMetric", "the HPA was unable to compute the replica count: unable to get metric: no custom metrics API (custom.metrics.k8s.io) registered".into())),
            "External" => return Err(("FailedGetExternalMetric", "the HPA was unable to compute the replica count: unable to get external metric: no external metrics API (external.metrics.k8s.io) registered".into())),
            other => return Err(("InvalidMetricSourceType", format!("the HPA was unable to compute the replica count: unknown metric source type {other:?}"))),
        };
        let reason = if container.is_some() {
            "FailedGetContainerResourceMetric"
        } else {
            "FailedGetResourceMetric"
        };
        let tgt = match (target.type_.as_str(), target.average_utilization, target.average_value.as_ref()) {
            ("Utilization", Some(u), _) => Target::Utilization(u),
            ("AverageValue", _, Some(q)) => Target::AverageValue(
                api::quota::parse_milli(&q.0)
                    .and_then(|x| i64::try_from(x).ok())
                    .ok_or((reason, format!("invalid averageValue {:?}", q.0)))?,
            ),
            _ => return Err((reason, "the HPA was unable to compute the replica count: invalid resource metric source: neither a utilization target nor a value target was set".into())),
        };
        let what = match tgt {
            Target::Utilization(_) => "utilization",
            Target::AverageValue(_) => "usage",
        };
        let fail = |e: String| {
            (
                reason,
                format!(
                    "the HPA was unable to compute the replica count: failed to get {resource} {what}: {e}"
                ),
            )
        };
        let usage = self
            .0
            .policy
            .metrics
            .pod_metrics(ns, selector)
            .await
            .map_err(|e| {
                fail(format!(
                    "unable to get metrics for resource {resource}: {e}"
                ))
            })?;
        // Samples of pods the pod cache does not hold yet (just created) are left out: counted
        // in the second pass's `len(metrics)` they would inflate the proposal.
        let known: BTreeSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        let samples: BTreeMap<String, Sample> = usage
            .iter()
            .filter(|u| known.contains(u.pod.as_str()))
            .filter_map(|u| {
                let cs: Vec<&ContainerUsage> = u
                    .containers
                    .iter()
                    .filter(|c| container.as_deref().is_none_or(|n| n == c.name))
                    .collect();
                if cs.is_empty() {
                    return None;
                }
                let value = cs
                    .iter()
                    .map(|c| {
                        if resource == "cpu" {
                            c.cpu_milli
                        } else {
                            c.memory_milli
                        }
                    })
                    .sum();
                Some((
                    u.pod.clone(),
                    Sample {
                        value,
                        timestamp_ms: u.timestamp_ms,
                        window_ms: u.window_ms,
                    },
                ))
            })
            .collect();
        if samples.is_empty() {
            return Err(fail(format!(
                "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
            )));
        }
        let infos: Vec<PodInfo> = pods
            .iter()
            .map(|p| pod_info(p, &resource, container.as_deref()))
            .collect();
        let now_ms = self.0.clock.now().as_millisecond();
        let prop =
            hpa::resource_replicas(current, tgt, &infos, &samples, resource == "cpu", now_ms)
                .map_err(|e| fail(e.to_string()))?;
        let current_value = MetricValueStatus {
            average_utilization: prop.utilization,
            average_value: Some(Quantity(api::quota::format_milli(
                &resource,
                i128::from(prop.average),
            ))),
            value: None,
        };
        let (status, name) = match container {
            None => (
                MetricStatus {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricStatus {
                        name: resource.clone(),
                        current: current_value,
                    }),
                    ..Default::default()
                },
                match tgt {
                    Target::Utilization(_) => {
                        format!("{resource} resource utilization (percentage of request)")
                    }
                    Target::AverageValue(_) => format!("{resource} resource"),
                },
            ),
            Some(cn) => (
                MetricStatus {
                    type_: "ContainerResource".into(),
                    container_resource: Some(ContainerResourceMetricStatus {
                        container: cn.clone(),
                        name: resource.clone(),
                        current: current_value,
                    }),
                    ..Default::default()
                },
                format!("{resource} container resource utilization (percentage of request)"),
            ),
        };
        Ok((prop.replicas, status, name))
    }
}

fn default_metrics() -> Vec<MetricSpec> {
    serde_json::from_value(json!([{"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 80}}}]))
    .unwrap_or_default()
}

impl Controller for HpaController {
    fn name(&self) -> &'static str {
        "horizontalpodautoscaling"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let p = &c.policy;
        let Some(h) = p.hpas.get(&key.namespace, &key.name) else {
            p.recommender.lock().forget(&key.to_string());
            return Ok(Action::Done);
        };
        let ns = key.namespace.as_str();
        let rkey = key.to_string();
        let spec = h.spec.clone().unwrap_or_default();
        let old = h.status.clone().unwrap_or_default();
        let now = c.clock.now();
        let now_ms = now.as_millisecond();
        let mut st = HpaState {
            conditions: old.conditions.clone().unwrap_or_default(),
            now: Time(now),
        };
        let href = object_ref("autoscaling/v2", "HorizontalPodAutoscaler", &h.metadata);
        let tref = &spec.scale_target_ref;
        let reference = format!("{}/{}", tref.kind, tref.name);
        let scale_api = resource_for(tref.api_version.as_deref().unwrap_or(""), &tref.kind)
            .map(|ar| Api::<DynamicObject>::namespaced_with(c.client.clone(), ns, &ar));
        let scale = match &scale_api {
            Some(api) => api
                .get_subresource::<Scale>(&tref.name, "scale")
                .await
                .map_err(|e| e.to_string()),
            None => Err(format!("no scale subresource known for {}", tref.kind)),
        };
        let mut status = HorizontalPodAutoscalerStatus {
            observed_generation: h.metadata.generation,
            last_scale_time: old.last_scale_time.clone(),
            current_metrics: old.current_metrics.clone(),
            current_replicas: old.current_replicas,
            desired_replicas: old.desired_replicas,
            conditions: None,
        };
        let scale = match scale {
            Ok(s) => s,
            Err(e) => {
                record_event(
                    c,
                    href,
                    "horizontal-pod-autoscaler",
                    "Warning",
                    "FailedGetScale",
                    &e,
                )
                .await;
                st.set(
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    format!("the HPA controller was unable to get the target's current scale: {e}"),
                );
                status.conditions = Some(st.conditions);
                self.write_status(ns, &key.name, &h, status).await?;
                return Ok(Action::RequeueAfter(HPA_SYNC_PERIOD));
            }
        };
        st.set(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
        );
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        p.recommender.lock().initial(&rkey, current, now_ms);
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let mut desired = 0;
        let mut reason = String::new();
        let mut rescale = true;
        let mut metric_statuses: Option<Vec<MetricStatus>> = None;
        if current == 0 && min != 0 {
            rescale = false;
            st.set(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            );
        } else if current > max {
            reason = "Current number of replicas above Spec.MaxReplicas".into();
            desired = max;
        } else if current < min {
            reason = "Current number of replicas below Spec.MinReplicas".into();
            desired = min;
        } else {
            let selector = scale
                .status
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            if selector.is_empty() {
                record_event(
                    c,
                    href.clone(),
                    "horizontal-pod-autoscaler",
                    "Warning",
                    "SelectorRequired",
                    "selector is required",
                )
                .await;
                st.set(
                    "ScalingActive",
                    false,
                    "InvalidSelector",
                    "the HPA target's scale is missing a selector".into(),
                );
                status.current_replicas = Some(current);
                status.conditions = Some(st.conditions);
                self.write_status(ns, &key.name, &h, status).await?;
                return Ok(Action::RequeueAfter(HPA_SYNC_PERIOD));
            }
            let reqs = api::rest::selector::parse_label_selector(&selector)
                .map_err(|e| ReconcileError::Invalid(e.to_string()))?;
            let pods: Vec<Arc<Pod>> = c
                .pods_in(ns)
                .into_iter()
                .filter(|p| {
                    let pairs: Vec<(String, String)> = p
                        .metadata
                        .labels
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .collect();
                    api::rest::selector::matches(&reqs, &pairs)
                })
                .collect();
            let specs = spec
                .metrics
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(default_metrics);
            let mut best: Option<(i32, String)> = None;
            let mut statuses = Vec::new();
            let mut first_err: Option<MetricError> = None;
            let mut invalid = 0usize;
            for m in &specs {
                match self.metric(ns, m, current, &selector, &pods).await {
                    Ok((n, s, name)) => {
                        statuses.push(s);
                        if best.as_ref().is_none_or(|(b, _)| n > *b) {
                            best = Some((n, name));
                        }
                    }
                    Err(e) => {
                        invalid += 1;
                        statuses.push(MetricStatus {
                            type_: String::new(),
                            ..Default::default()
                        });
                        first_err.get_or_insert(e);
                    }
                }
            }
            let proposed = best.as_ref().map_or(0, |b| b.0);
            if invalid >= specs.len() || (invalid > 0 && proposed < current) {
                let (r, msg) = first_err.unwrap_or(("FailedGetResourceMetric", String::new()));
                st.set("ScalingActive", false, r, msg.clone());
                record_event(
                    c,
                    href.clone(),
                    "horizontal-pod-autoscaler",
                    "Warning",
                    r,
                    &msg,
                )
                .await;
                let msg = format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {msg}",
                    specs.len()
                );
                record_event(
                    c,
                    href,
                    "horizontal-pod-autoscaler",
                    "Warning",
                    "FailedComputeMetricsReplicas",
                    &msg,
                )
                .await;
                status.current_replicas = Some(current);
                status.current_metrics = None;
                status.conditions = Some(st.conditions);
                self.write_status(ns, &key.name, &h, status).await?;
                return Ok(Action::RequeueAfter(HPA_SYNC_PERIOD));
            }
            let metric_name = best.map(|b| b.1).unwrap_or_default();
            st.set(
                "ScalingActive",
                true,
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {metric_name}"
                ),
            );
            statuses.retain(|s| !s.type_.is_empty());
            metric_statuses = Some(statuses).filter(|s| !s.is_empty());
            desired = proposed;
            if desired > current {
                reason = format!("{metric_name} above target");
            } else if desired < current {
                reason = "All metrics below target".into();
            }
            let (n, able, limited) = p.recommender.lock().normalize(
                &rkey,
                spec.behavior.as_ref(),
                current,
                desired,
                min,
                max,
                now_ms,
            );
            st.set3(able);
            st.set3(limited);
            desired = n;
            rescale = desired != current;
        }
        if rescale {
            let api = scale_api
                .as_ref()
                .ok_or_else(|| ReconcileError::Invalid("no scale target".into()))?;
            let patch = json!({"spec": {"replicas": desired}});
            match api
                .patch_subresource::<_, Scale>(
                    &tref.name,
                    "scale",
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => {
                    st.set(
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    );
                    record_event(
                        c,
                        href,
                        "horizontal-pod-autoscaler",
                        "Normal",
                        "SuccessfulRescale",
                        &format!("New size: {desired}; reason: {reason}"),
                    )
                    .await;
                    p.recommender.lock().scaled(
                        &rkey,
                        spec.behavior.as_ref(),
                        current,
                        desired,
                        now_ms,
                    );
                    status.last_scale_time = Some(Time(now));
                }
                Err(e) => {
                    record_event(
                        c,
                        href,
                        "horizontal-pod-autoscaler",
                        "Warning",
                        "FailedRescale",
                        &format!("New size: {desired}; reason: {reason}; error: {e}"),
                    )
                    .await;
                    st.set(
                        "AbleToScale",
                        false,
                        "FailedUpdateScale",
                        format!("the HPA controller was unable to update the target scale: {e}"),
                    );
                    status.current_replicas = Some(current);
                    status.current_metrics = metric_statuses;
                    status.conditions = Some(st.conditions);
                    self.write_status(ns, &key.name, &h, status).await?;
                    return Err(ReconcileError::Api(format!(
                        "failed to rescale {reference}: {e}"
                    )));
                }
            }
        } else {
            desired = current;
        }
        status.current_replicas = Some(current);
        status.desired_replicas = desired;
        status.current_metrics = metric_statuses;
        status.conditions = Some(st.conditions);
        self.write_status(ns, &key.name, &h, status).await?;
        Ok(Action::RequeueAfter(HPA_SYNC_PERIOD))
    }
}

impl HpaController {
    async fn write_status(
        &self,
        ns: &str,
        name: &str,
        h: &HorizontalPodAutoscaler,
        status: HorizontalPodAutoscalerStatus,
    ) -> Result<(), ReconcileError> {
        if h.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<HorizontalPodAutoscaler> = Api::namespaced(self.0.client.clone(), ns);
        match api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(api_err(e)),
        }
    }
}

// === PersistentVolume binder ===

struct BinderController(Arc<Ctx>);

impl BinderController {
    async fn apply(&self, plan: &volumebinding::Plan) -> Result<(), ReconcileError> {
        let c = &self.0;
        let pp = PostParams::default();
        for w in &plan.writes {
            let r = match w {
                volumebinding::Write::Volume(v) => Api::<PersistentVolume>::all(c.client.clone())
                    .replace(v.metadata.name.as_deref().unwrap_or(""), &pp, v)
                    .await
                    .map(|_| ()),
                volumebinding::Write::VolumeStatus { name, status } => {
                    Api::<PersistentVolume>::all(c.client.clone())
                        .patch_status(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": status})),
                        )
                        .await
                        .map(|_| ())
                }
                volumebinding::Write::Claim(cl) => Api::<PersistentVolumeClaim>::namespaced(
                    c.client.clone(),
                    cl.metadata.namespace.as_deref().unwrap_or(""),
                )
                .replace(cl.metadata.name.as_deref().unwrap_or(""), &pp, cl)
                .await
                .map(|_| ()),
                volumebinding::Write::ClaimStatus {
                    namespace,
                    name,
                    status,
                } => Api::<PersistentVolumeClaim>::namespaced(c.client.clone(), namespace)
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": status})),
                    )
                    .await
                    .map(|_| ()),
            };
            match r {
                Ok(()) => {}
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(api_err(e)),
            }
        }
        Ok(())
    }
}

impl Controller for BinderController {
    fn name(&self) -> &'static str {
        "persistentvolume-binder"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let p = &c.policy;
        if key.namespace.is_empty() {
            let Some(v) = p.pvs.get("", &key.name) else {
                return Ok(Action::Done);
            };
            let claim = v
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| {
                    c.apps.claim(
                        r.namespace.as_deref().unwrap_or(""),
                        r.name.as_deref().unwrap_or(""),
                    )
                });
            let plan = volumebinding::sync_volume(&v, claim.as_deref());
            self.apply(&plan).await?;
            if let Some(n) = plan.note {
                record_event(
                    c,
                    object_ref("v1", "PersistentVolume", &v.metadata),
                    "persistentvolume-controller",
                    n.type_,
                    n.reason,
                    &n.message,
                )
                .await;
            }
            return Ok(Action::Done);
        }
        let Some(claim) = c.apps.claim(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        let vols = p.pvs.list();
        let refs: Vec<&PersistentVolume> = vols.iter().map(AsRef::as_ref).collect();
        let plan = volumebinding::sync_claim(&claim, &refs);
        self.apply(&plan).await?;
        if let Some(n) = &plan.note {
            record_event(
                c,
                object_ref("v1", "PersistentVolumeClaim", &claim.metadata),
                "persistentvolume-controller",
                n.type_,
                n.reason,
                &n.message,
            )
            .await;
        }
        let bound = claim
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(volumebinding::ANN_BIND_COMPLETED));
        Ok(if bound || !plan.writes.is_empty() {
            Action::Done
        } else {
            Action::RequeueAfter(CLAIM_RETRY)
        })
    }
}

/// A [`MetricsSource`] handle for [`super::Options`].
#[derive(Clone)]
pub struct Metrics(pub Arc<dyn MetricsSource>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}
