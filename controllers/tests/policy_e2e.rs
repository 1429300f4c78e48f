//! End to end through a real apiserver (in-process): ResourceQuota usage and admission,
//! HorizontalPodAutoscaler (a fake metrics source the test drives; and without a metrics
//! API), PersistentVolume binding, StatefulSet claim retention, DaemonSet failed pods.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use api::client::{Api, Client, ListParams, Patch, PatchParams, PostParams};
use common::{Manager, Server, TestClock, create, name, pods, wait_for};
use controllers::manager::{ContainerUsage, Metrics, MetricsSource, PodUsage};
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use parking_lot::Mutex;
use serde_json::{Value, json};

fn used(q: &core::ResourceQuota) -> HashMap<String, String> {
    q.status
        .as_ref()
        .and_then(|s| s.used.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

async fn wait_used(api: &Api<core::ResourceQuota>, name: &str, want: &[(&str, &str)]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let q = api.get(name).await.expect("get quota");
        let u = used(&q);
        if want
            .iter()
            .all(|(k, v)| u.get(*k).map(String::as_str) == Some(*v))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for quota {name} used {want:?}; status: {:?}",
            q.status
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn pod_json(name: &str, cpu: Option<&str>) -> Value {
    let resources = match cpu {
        Some(c) => json!({"requests": {"cpu": c}, "limits": {"cpu": c}}),
        None => json!({}),
    };
    json!({"metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "x", "resources": resources}]}})
}

async fn try_create_pod(
    api: &Api<core::Pod>,
    v: Value,
) -> Result<core::Pod, api::client::ClientError> {
    let p: core::Pod = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &p).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quota_tracks_usage_and_admission_enforces_it() {
    let s = Server::start();
    let c = &s.client;
    let _m = Manager::start(&s, "resourcequota", |_| {});
    let quotas: Api<core::ResourceQuota> = Api::namespaced(c.clone(), "default");
    create(
        &quotas,
        json!({"metadata": {"name": "compute"},
               "spec": {"hard": {"pods": "2", "requests.cpu": "1", "limits.cpu": "2",
                                 "services": "2", "services.nodeports": "1", "configmaps": "10",
                                 "count/deployments.apps": "1", "persistentvolumeclaims": "1",
                                 "requests.storage": "1Gi"}}}),
    )
    .await;
    // The controller writes hard and the usage: nothing but the apiserver's own
    // `kubernetes` Service (the root-ca publisher is off here).
    wait_used(
        &quotas,
        "compute",
        &[
            ("pods", "0"),
            ("requests.cpu", "0"),
            ("services", "1"),
            ("configmaps", "0"),
        ],
    )
    .await;
    let q = quotas.get("compute").await.unwrap();
    assert_eq!(
        q.status.as_ref().unwrap().hard.as_ref().unwrap()["pods"].0,
        "2"
    );
    let papi: Api<core::Pod> = Api::namespaced(c.clone(), "default");
    // A container without the constrained requests/limits is refused.
    let e = try_create_pod(&papi, pod_json("bare", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(403));
    assert!(
        e.to_string().contains(
            "pods \"bare\" is forbidden: failed quota: compute: must specify limits.cpu for: c; requests.cpu for: c"
        ),
        "{e}"
    );
    try_create_pod(&papi, pod_json("a", Some("400m")))
        .await
        .unwrap();
    // (Each create is followed by a wait for the recount, so the controller's caches hold
    // what admission charged before the next create: the recount is eventually consistent,
    // as upstream's.)
    wait_used(
        &quotas,
        "compute",
        &[("pods", "1"), ("requests.cpu", "400m")],
    )
    .await;
    // Over the cpu limit.
    let e = try_create_pod(&papi, pod_json("big", Some("700m")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(403));
    assert!(
        e.to_string().contains(
            "exceeded quota: compute, requested: requests.cpu=700m, used: requests.cpu=400m, limited: requests.cpu=1"
        ),
        "{e}"
    );
    try_create_pod(&papi, pod_json("b", Some("500m")))
        .await
        .unwrap();
    wait_used(
        &quotas,
        "compute",
        &[("pods", "2"), ("requests.cpu", "900m")],
    )
    .await;
    let e = try_create_pod(&papi, pod_json("c", Some("10m")))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"),
        "{e}"
    );
    wait_used(
        &quotas,
        "compute",
        &[
            ("pods", "2"),
            ("requests.cpu", "900m"),
            ("limits.cpu", "900m"),
        ],
    )
    .await;
    // A finished pod frees its share (event-driven recount), and the next create fits.
    papi.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    wait_used(
        &quotas,
        "compute",
        &[("pods", "1"), ("requests.cpu", "500m")],
    )
    .await;
    try_create_pod(&papi, pod_json("c", Some("10m")))
        .await
        .unwrap();
    // Services: two (one is `kubernetes`), and node ports count.
    let sapi: Api<core::Service> = Api::namespaced(c.clone(), "default");
    let svc = |n: &str, t: &str| -> core::Service {
        serde_json::from_value(
            json!({"metadata": {"name": n}, "spec": {"type": t, "selector": {"a": "b"},
            "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}}),
        )
        .unwrap()
    };
    let e = sapi
        .create(&PostParams::default(), &svc("np", "NodePort"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exceeded quota: compute, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"), "{e}");
    sapi.create(&PostParams::default(), &svc("ip", "ClusterIP"))
        .await
        .unwrap();
    wait_used(&quotas, "compute", &[("services", "2")]).await;
    let e = sapi
        .create(&PostParams::default(), &svc("ip2", "ClusterIP"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("requested: services=1, used: services=2, limited: services=2"),
        "{e}"
    );
    // Object counts of other groups and storage requests.
    let dapi: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let dep = |n: &str| -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": n}, "spec": {"replicas": 0, "selector": {"matchLabels": {"a": n}},
            "template": {"metadata": {"labels": {"a": n}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}))
        .unwrap()
    };
    dapi.create(&PostParams::default(), &dep("d1"))
        .await
        .unwrap();
    wait_used(&quotas, "compute", &[("count/deployments.apps", "1")]).await;
    let e = dapi
        .create(&PostParams::default(), &dep("d2"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("deployments.apps \"d2\" is forbidden: exceeded quota: compute, requested: count/deployments.apps=1"), "{e}");
    let capi: Api<core::PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let claim = |n: &str, size: &str| -> core::PersistentVolumeClaim {
        serde_json::from_value(
            json!({"metadata": {"name": n}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}}}}),
        )
        .unwrap()
    };
    let e = capi
        .create(&PostParams::default(), &claim("huge", "2Gi"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("requested: requests.storage=2Gi, used: requests.storage=0, limited: requests.storage=1Gi"), "{e}");
    capi.create(&PostParams::default(), &claim("ok", "512Mi"))
        .await
        .unwrap();
    wait_used(
        &quotas,
        "compute",
        &[
            ("services", "2"),
            ("count/deployments.apps", "1"),
            ("persistentvolumeclaims", "1"),
            ("requests.storage", "512Mi"),
        ],
    )
    .await;
    // Deleting frees: the recount follows the delete event.
    dapi.delete("d1", &Default::default()).await.unwrap();
    wait_used(&quotas, "compute", &[("count/deployments.apps", "0")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_admission_never_admits_past_the_limit_under_concurrency() {
    let s = Server::start();
    let c = &s.client;
    // No controller: the test writes the status one would.
    let quotas: Api<core::ResourceQuota> = Api::namespaced(c.clone(), "default");
    let mut q = create(
        &quotas,
        json!({"metadata": {"name": "five"}, "spec": {"hard": {"pods": "5"}}}),
    )
    .await;
    let papi: Api<core::Pod> = Api::namespaced(c.clone(), "default");
    // A quota whose status is not written yet does not constrain (as upstream).
    try_create_pod(&papi, pod_json("early", None))
        .await
        .unwrap();
    q.status = Some(
        serde_json::from_value(json!({"hard": {"pods": "5"}, "used": {"pods": "0"}})).unwrap(),
    );
    quotas
        .replace_status("five", &PostParams::default(), &q)
        .await
        .unwrap();
    let results = futures::future::join_all(
        (0..12).map(|i| try_create_pod(&papi, pod_json(&format!("p{i}"), None))),
    )
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5, "{results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(e.code(), Some(403), "{e}");
        assert!(
            e.to_string()
                .contains("exceeded quota: five, requested: pods=1, used: pods=5, limited: pods=5"),
            "{e}"
        );
    }
    assert_eq!(used(&quotas.get("five").await.unwrap())["pods"], "5");
    // Dry-run creates are checked but not charged.
    let p: core::Pod = serde_json::from_value(pod_json("dry", None)).unwrap();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let e = papi.create(&dry, &p).await.unwrap_err();
    assert_eq!(e.code(), Some(403));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quota_scopes_select_pods() {
    let s = Server::start();
    let c = &s.client;
    let _m = Manager::start(&s, "resourcequota", |_| {});
    let quotas: Api<core::ResourceQuota> = Api::namespaced(c.clone(), "default");
    create(&quotas, json!({"metadata": {"name": "besteffort"}, "spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]}})).await;
    create(&quotas, json!({"metadata": {"name": "burst"}, "spec": {"hard": {"pods": "5"}, "scopes": ["NotBestEffort", "NotTerminating"]}})).await;
    create(
        &quotas,
        json!({"metadata": {"name": "high"}, "spec": {"hard": {"pods": "3"},
               "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}}),
    )
    .await;
    for q in ["besteffort", "burst", "high"] {
        wait_used(&quotas, q, &[("pods", "0")]).await;
    }
    // Priority admission refuses pods naming a class that does not exist.
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(c.clone());
    create(
        &classes,
        json!({"metadata": {"name": "high"}, "value": 1000}),
    )
    .await;
    let papi: Api<core::Pod> = Api::namespaced(c.clone(), "default");
    try_create_pod(&papi, pod_json("be1", None)).await.unwrap();
    wait_used(&quotas, "besteffort", &[("pods", "1")]).await;
    try_create_pod(&papi, pod_json("bu1", Some("100m")))
        .await
        .unwrap();
    let mut hi = pod_json("hi1", Some("100m"));
    hi["spec"]["priorityClassName"] = json!("high");
    try_create_pod(&papi, hi).await.unwrap();
    let mut term = pod_json("term1", Some("100m"));
    term["spec"]["activeDeadlineSeconds"] = json!(60);
    try_create_pod(&papi, term).await.unwrap();
    wait_used(&quotas, "besteffort", &[("pods", "1")]).await;
    wait_used(&quotas, "burst", &[("pods", "2")]).await;
    wait_used(&quotas, "high", &[("pods", "1")]).await;
    let e = try_create_pod(&papi, pod_json("be2", None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exceeded quota: besteffort"), "{e}");
}

/// Metrics the test sets: every pod of the namespace reports `cpu_milli` per container.
struct FakeMetrics {
    client: Client,
    cpu_milli: Mutex<i64>,
    calls: Mutex<usize>,
}

impl MetricsSource for FakeMetrics {
    fn pod_metrics<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PodUsage>, String>> {
        Box::pin(async move {
            *self.calls.lock() += 1;
            let api: Api<core::Pod> = Api::namespaced(self.client.clone(), namespace);
            let list = api
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| e.to_string())?;
            let v = *self.cpu_milli.lock();
            // Like metrics-server: running pods only.
            Ok(list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .map(|p| PodUsage {
                    pod: name(p),
                    timestamp_ms: Timestamp::now().as_millisecond(),
                    window_ms: 30_000,
                    containers: vec![ContainerUsage {
                        name: "c".into(),
                        cpu_milli: v,
                        memory_milli: 0,
                    }],
                })
                .collect())
        })
    }
}

/// Marks every pod of `sel` Running and Ready since two minutes ago (past the
/// readiness-transition window the CPU rules look at).
async fn ready_since(c: &Client, sel: &str) {
    let api: Api<core::Pod> = Api::namespaced(c.clone(), "default");
    let then = Timestamp::now()
        .checked_sub(SignedDuration::from_secs(120))
        .unwrap()
        .to_string();
    for p in pods(c, "default", sel).await {
        if common::is_ready(&p) {
            continue;
        }
        let st = json!({"status": {"phase": "Running", "startTime": then, "podIP": "10.244.0.9",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": then}]}});
        let _ = api
            .patch_status(&name(&p), &PatchParams::default(), &Patch::Merge(st))
            .await;
    }
}

fn condition(h: &HorizontalPodAutoscaler, t: &str) -> Option<(String, String, String)> {
    h.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

async fn replicas(api: &Api<Deployment>) -> i32 {
    api.get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_scales_a_deployment_from_pod_metrics() {
    let s = Server::start();
    let c = &s.client;
    let clock = TestClock::default();
    clock.set(Timestamp::now());
    let fake = Arc::new(FakeMetrics {
        client: c.clone(),
        cpu_milli: Mutex::new(100),
        calls: Mutex::new(0),
    });
    let metrics: Arc<dyn MetricsSource> = fake.clone();
    let ck = clock.clock();
    let _m = Manager::start(
        &s,
        "deployment,replicaset,horizontalpodautoscaling",
        move |o| {
            o.metrics = Some(Metrics(metrics));
            o.clock = ck;
        },
    );
    let dapi: Api<Deployment> = Api::namespaced(c.clone(), "default");
    create(
        &dapi,
        json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
               "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                   {"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m"}}}]}}}}),
    )
    .await;
    wait_for("2 pods", 30, || async {
        (pods(c, "default", "app=web").await.len() == 2).then_some(())
    })
    .await;
    ready_since(c, "app=web").await;
    let hapi: Api<HorizontalPodAutoscaler> = Api::namespaced(c.clone(), "default");
    create(
        &hapi,
        json!({"metadata": {"name": "web"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}}),
    )
    .await;
    // 100 % of the request against a 50 % target: double, within max(2x, 4).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    while replicas(&dapi).await != 4 {
        let h = hapi.get("web").await.unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "no scale to 4; HPA status: {:?}; pods: {:?}",
            h.status,
            pods(c, "default", "app=web")
                .await
                .iter()
                .map(|p| (name(p), p.status.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let h = wait_for("status", 30, || async {
        let h = hapi.get("web").await.ok()?;
        (h.status.as_ref()?.desired_replicas == 4).then_some(h)
    })
    .await;
    let st = h.status.as_ref().unwrap();
    let m = &st.current_metrics.as_ref().unwrap()[0];
    assert_eq!(
        m.resource.as_ref().unwrap().current.average_utilization,
        Some(100)
    );
    assert_eq!(
        condition(&h, "ScalingActive").unwrap().1,
        "ValidMetricFound"
    );
    assert!(st.last_scale_time.is_some());
    // Load drops: the recommendation (1) is held by the 5 min downscale window.
    *fake.cpu_milli.lock() = 10;
    wait_for("4 pods ready", 30, || async {
        ready_since(c, "app=web").await;
        (pods(c, "default", "app=web")
            .await
            .iter()
            .filter(|p| common::is_ready(p))
            .count()
            == 4)
            .then_some(())
    })
    .await;
    let touch = |n: u32| {
        let hapi = hapi.clone();
        async move {
            hapi.patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"test/touch": n.to_string()}}})),
            )
            .await
            .unwrap();
        }
    };
    touch(1).await;
    wait_for("stabilized", 30, || async {
        let h = hapi.get("web").await.ok()?;
        (condition(&h, "AbleToScale")?.1 == "ScaleDownStabilized").then_some(())
    })
    .await;
    assert_eq!(replicas(&dapi).await, 4);
    // Past the window the HPA follows the metrics down (to minReplicas' floor of 1).
    clock.set(
        Timestamp::now()
            .checked_add(SignedDuration::from_secs(301))
            .unwrap(),
    );
    touch(2).await;
    wait_for("scale to 1", 30, || async {
        (replicas(&dapi).await == 1).then_some(())
    })
    .await;
    assert!(*fake.calls.lock() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_without_a_metrics_api_reports_it_and_does_not_scale() {
    let s = Server::start();
    let c = &s.client;
    let _m = Manager::start(&s, "deployment,replicaset,horizontalpodautoscaling", |_| {});
    let dapi: Api<Deployment> = Api::namespaced(c.clone(), "default");
    create(
        &dapi,
        json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
               "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                   {"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m"}}}]}}}}),
    )
    .await;
    let hapi: Api<HorizontalPodAutoscaler> = Api::namespaced(c.clone(), "default");
    create(
        &hapi,
        json!({"metadata": {"name": "web"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "maxReplicas": 10}}),
    )
    .await;
    let (status, reason, msg) = wait_for("ScalingActive False", 30, || async {
        let h = hapi.get("web").await.ok()?;
        condition(&h, "ScalingActive")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "FailedGetResourceMetric")
    );
    assert!(
        msg.contains("failed to get cpu utilization: unable to get metrics for resource cpu: unable to fetch metrics from resource metrics API"),
        "{msg}"
    );
    let h = hapi.get("web").await.unwrap();
    assert_eq!(condition(&h, "AbleToScale").unwrap().1, "SucceededGetScale");
    assert_eq!(h.status.unwrap().current_replicas, Some(2));
    assert_eq!(replicas(&dapi).await, 2);
}

fn phase_pv(v: &core::PersistentVolume) -> String {
    v.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn phase_pvc(v: &core::PersistentVolumeClaim) -> String {
    v.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_volumes_bind_release_and_fail() {
    let s = Server::start();
    let c = &s.client;
    let _m = Manager::start(&s, "persistentvolume-binder", |_| {});
    let pvs: Api<core::PersistentVolume> = Api::all(c.clone());
    for (n, size, policy, class) in [
        ("pv-small", "1Gi", "Retain", ""),
        ("pv-big", "10Gi", "Retain", ""),
        ("pv-gold", "1Gi", "Delete", "gold"),
    ] {
        create(
            &pvs,
            json!({"metadata": {"name": n}, "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                   "persistentVolumeReclaimPolicy": policy, "storageClassName": class, "hostPath": {"path": format!("/tmp/{n}")}}}),
        )
        .await;
    }
    wait_for("volumes Available", 30, || async {
        let l = pvs.list(&ListParams::default()).await.ok()?;
        l.items
            .iter()
            .all(|v| phase_pv(v) == "Available")
            .then_some(())
    })
    .await;
    let capi: Api<core::PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let claim = |n: &str, size: &str, class: &str| {
        json!({"metadata": {"name": n}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
               "resources": {"requests": {"storage": size}}}})
    };
    create(&capi, claim("data", "512Mi", "")).await;
    create(&capi, claim("gold", "1Gi", "gold")).await;
    create(&capi, claim("huge", "100Gi", "")).await;
    let bound = wait_for("claims bound", 30, || async {
        let d = capi.get("data").await.ok()?;
        let g = capi.get("gold").await.ok()?;
        (phase_pvc(&d) == "Bound" && phase_pvc(&g) == "Bound").then_some(d)
    })
    .await;
    // Smallest fit.
    assert_eq!(
        bound.spec.as_ref().unwrap().volume_name.as_deref(),
        Some("pv-small")
    );
    assert_eq!(
        bound.status.as_ref().unwrap().capacity.as_ref().unwrap()["storage"].0,
        "1Gi"
    );
    let v = pvs.get("pv-small").await.unwrap();
    assert_eq!(phase_pv(&v), "Bound");
    assert_eq!(v.spec.unwrap().claim_ref.unwrap().uid, bound.metadata.uid);
    assert_eq!(phase_pvc(&capi.get("huge").await.unwrap()), "Pending");
    // Released under Retain; Failed under Delete (no deleter for a static volume).
    capi.delete("data", &Default::default()).await.unwrap();
    capi.delete("gold", &Default::default()).await.unwrap();
    wait_for("released and failed", 30, || async {
        let a = phase_pv(&pvs.get("pv-small").await.ok()?);
        let b = phase_pv(&pvs.get("pv-gold").await.ok()?);
        (a == "Released" && b == "Failed").then_some(())
    })
    .await;
    // A claim pre-bound by volumeName takes the big one, even though smaller would fit.
    let mut pre = claim("pre", "1Gi", "");
    pre["spec"]["volumeName"] = json!("pv-big");
    create(&capi, pre).await;
    wait_for("pre-bound claim", 30, || async {
        let p = capi.get("pre").await.ok()?;
        (phase_pvc(&p) == "Bound" && phase_pv(&pvs.get("pv-big").await.ok()?) == "Bound")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_claim_retention_sets_owners() {
    let s = Server::start();
    let c = &s.client;
    let _m = Manager::start(&s, "statefulset", |_| {});
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    create(
        &sts,
        json!({"metadata": {"name": "db"},
               "spec": {"replicas": 2, "serviceName": "db", "podManagementPolicy": "Parallel",
                        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
                        "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "db:1"}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"},
                            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    )
    .await;
    let set = sts.get("db").await.unwrap();
    let capi: Api<core::PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let owners = |cl: &core::PersistentVolumeClaim| -> Vec<(String, String)> {
        cl.metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.kind, r.uid))
            .collect()
    };
    wait_for("claims owned by the set", 30, || async {
        let l = capi.list(&ListParams::default()).await.ok()?;
        (l.items.len() == 2
            && l.items.iter().all(|cl| {
                owners(cl) == [("StatefulSet".to_string(), set.metadata.uid.clone().unwrap())]
            }))
        .then_some(())
    })
    .await;
    // whenScaled Delete: the condemned pod becomes an owner of its claim before it goes.
    let p1_uid = wait_for("pod db-1", 30, || async {
        let p = pods(c, "default", "statefulset.kubernetes.io/pod-name=db-1").await;
        p.first().and_then(|p| p.metadata.uid.clone())
    })
    .await;
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    wait_for("db-1's claim owned by db-1", 30, || async {
        let cl = capi.get("data-db-1").await.ok()?;
        owners(&cl)
            .iter()
            .any(|(k, u)| k == "Pod" && *u == p1_uid)
            .then_some(())
    })
    .await;
    // Retain again: the references go.
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"}}})),
    )
    .await
    .unwrap();
    wait_for("no owners", 30, || async {
        let cl = capi.get("data-db-0").await.ok()?;
        owners(&cl).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_replaces_failed_pods_and_says_so() {
    let s = Server::start();
    let c = &s.client;
    common::node(c, "n1", json!({}), json!([])).await;
    let _m = Manager::start(&s, "daemonset", |_| {});
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    create(
        &dss,
        json!({"metadata": {"name": "agent"},
               "spec": {"selector": {"matchLabels": {"app": "agent"}},
                        "template": {"metadata": {"labels": {"app": "agent"}},
                                     "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}}),
    )
    .await;
    let first = wait_for("a daemon pod", 30, || async {
        let p = pods(c, "default", "app=agent").await;
        (p.len() == 1).then(|| name(&p[0]))
    })
    .await;
    let papi: Api<core::Pod> = Api::namespaced(c.clone(), "default");
    papi.patch_status(
        &first,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    wait_for("a replacement", 30, || async {
        let p = pods(c, "default", "app=agent").await;
        (p.len() == 1 && name(&p[0]) != first).then_some(())
    })
    .await;
    let eapi: Api<core::Event> = Api::namespaced(c.clone(), "default");
    wait_for("FailedDaemonPod event", 30, || async {
        let l = eapi.list(&ListParams::default()).await.ok()?;
        l.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedDaemonPod")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains(&first) && m.contains("on node n1"))
            })
            .then_some(())
    })
    .await;
}
