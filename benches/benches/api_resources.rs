//! Benches of the apiserver's pure resource modules: the create pipeline of one Deployment
//! (strict decode, defaults, validation, index extraction), a server-side Table of 500 pods,
//! and the start-up cost of the OpenAPI documents and discovery bodies.
//!
//! Run: `cargo bench -p kubeshard-benches --bench api_resources`.

use std::time::Duration;

use api::discovery::DiscoveryCache;
use api::openapi::OpenApi;
use api::registry::{Registry, extract_index};
use api::table::{TableOptions, to_table};
use api::validation::{self, FieldValidation};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

const DEPLOYMENT: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"default",
 "labels":{"app":"web","tier":"frontend"},"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}"}},
 "spec":{"replicas":3,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web","tier":"frontend"}},
 "spec":{"containers":[{"name":"nginx","image":"nginx:1.27","ports":[{"containerPort":80,"name":"http"}],
 "env":[{"name":"A","value":"1"},{"name":"B","valueFrom":{"fieldRef":{"fieldPath":"metadata.name"}}}],
 "resources":{"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"cpu":"500m","memory":"256Mi"}},
 "readinessProbe":{"httpGet":{"path":"/","port":80}},"volumeMounts":[{"name":"cfg","mountPath":"/etc/cfg"}]}],
 "volumes":[{"name":"cfg","configMap":{"name":"web-cfg"}}]}}}}"#;

fn pod(i: usize) -> Value {
    json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": format!("web-{i}"), "namespace": "default",
        "uid": format!("uid-{i}"), "resourceVersion": format!("{}", 100 + i), "creationTimestamp": "2025-01-10T11:00:00Z",
        "labels": {"app": "web", "pod-template-hash": "abc123"}},
        "spec": {"nodeName": format!("node-{}", i % 50), "containers": [{"name": "web", "image": "nginx:1.27"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.244.0.5"}], "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "state": {"running": {}}}]}})
}

fn bench_create_pipeline(c: &mut Criterion) {
    let registry = Registry::builtin();
    let openapi = OpenApi::build(&registry);
    let schemas = openapi.schemas().clone();
    let def = registry
        .lookup("apps", "v1", "deployments")
        .cloned()
        .expect("deployments");
    let mut g = c.benchmark_group("api_resources/create_pipeline");
    g.throughput(Throughput::Elements(1));
    g.bench_function("deployment", |b| {
        b.iter(|| {
            let mut d = validation::decode_json(
                DEPLOYMENT.as_bytes(),
                &def,
                &schemas,
                FieldValidation::Strict,
            )
            .expect("decode");
            d.object["metadata"]["uid"] = json!("u");
            validation::default_object(&def, &schemas, &mut d.object);
            validation::prepare_for_create(&def, &mut d.object);
            validation::validate_create(&def, &d.object).expect("valid");
            let idx = extract_index(&def, &d.object);
            let raw = serde_json::to_vec(&d.object).expect("encode");
            (idx, raw)
        });
    });
    g.finish();
}

fn bench_table(c: &mut Criterion) {
    let registry = Registry::builtin();
    let def = registry.lookup("", "v1", "pods").cloned().expect("pods");
    let pods: Vec<Value> = (0..500).map(pod).collect();
    let now = chrono::Utc::now();
    let opts = TableOptions {
        list_meta: Some(json!({"resourceVersion": "1000"})),
        ..Default::default()
    };
    let mut g = c.benchmark_group("api_resources/table");
    g.throughput(Throughput::Elements(500));
    g.bench_function("pods_500", |b| {
        b.iter(|| {
            serde_json::to_vec(&to_table(&def, &pods, &opts, now))
                .expect("encode")
                .len()
        });
    });
    g.finish();
}

fn bench_startup(c: &mut Criterion) {
    let registry = Registry::builtin();
    let mut g = c.benchmark_group("api_resources/startup");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("openapi_build", |b| {
        b.iter(|| OpenApi::build(&registry).index().len())
    });
    g.bench_function("discovery_cache_build", |b| {
        b.iter(|| DiscoveryCache::build(&registry, "127.0.0.1:6443").generation())
    });
    g.finish();
}

criterion_group!(benches, bench_create_pipeline, bench_table, bench_startup);
criterion_main!(benches);
