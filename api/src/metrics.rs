//! `/metrics`: the apiserver's Prometheus text exposition.
//!
//! Series (named as upstream, so dashboards written for kube-apiserver work):
//! - `apiserver_request_total{verb,group,version,resource,subresource,scope,code}` counter;
//! - `apiserver_request_duration_seconds{verb,group,version,resource,subresource,scope}`
//!   histogram (time until the response head is ready; for watches that is the set-up);
//! - `apiserver_longrunning_requests{verb,group,version,resource,subresource,scope}` and
//!   `apiserver_registered_watchers{group,version,kind}` gauges (open watches);
//! - `etcd_request_duration_seconds{operation,type}` histogram: every `store::Backend` call,
//!   whichever backend (embedded engine or etcd), `type` taken from the key
//!   (`/registry/<group>/<resource>/...` -> `resource.group`).
//!
//! **Invariant: no global lock on the request path.** Samples go to one of [`SHARDS`]
//! cells chosen by the recording thread (each acceptor is one thread, so a cell's mutex is
//! only ever contended by a scrape); a scrape merges the cells. Counters and histogram
//! buckets are plain `u64` under the cell's lock.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use store::{
    Backend, LeaseGrant, LeaseId, LeaseTimeToLive, RangeRequest, RangeResponse, Revision,
    StoreError, StoreStatus, Txn, TxnOp, TxnResponse, WatchRequest, WatchStream,
};

/// Cells samples are spread over (more than the cores the acceptors run on).
pub const SHARDS: usize = 32;

/// Upstream's `apiserver_request_duration_seconds` buckets.
pub const REQUEST_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// Store latency buckets: finer at the low end than upstream's etcd buckets, because the
/// embedded engine answers in microseconds.
pub const STORE_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; bounds.len() + 1];
        }
        let i = bounds.partition_point(|b| *b < v);
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn merge(&mut self, o: &Histogram) {
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }
}

/// One cell's samples. Keys are pre-rendered label sets (`verb="GET",...`).
#[derive(Debug, Default)]
struct Cell {
    requests: HashMap<(String, u16), u64>,
    durations: HashMap<String, Histogram>,
    longrunning: HashMap<String, i64>,
    watchers: HashMap<String, i64>,
    store: HashMap<String, Histogram>,
}

fn bump<K: std::hash::Hash + Eq + Clone>(
    m: &mut HashMap<K, Histogram>,
    k: &K,
    bounds: &[f64],
    v: f64,
) {
    match m.get_mut(k) {
        Some(h) => h.observe(bounds, v),
        None => {
            let mut h = Histogram::default();
            h.observe(bounds, v);
            m.insert(k.clone(), h);
        }
    }
}

/// The server's metrics registry. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    cells: Box<[Mutex<Cell>]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// The labels of one resource request, rendered once per request.
#[derive(Debug, Clone, Default)]
pub struct RequestLabels {
    /// `verb="GET",group="",version="v1",resource="pods",subresource="",scope="namespace"`.
    rendered: String,
    /// `group="",version="v1",kind="Pod"` for watches.
    gvk: String,
    watch: bool,
}

impl RequestLabels {
    /// Labels of a resource request. `verb` is upstream's (`GET`, `LIST`, `WATCH`, `POST`,
    /// `PUT`, `PATCH`, `APPLY`, `DELETE`, `DELETECOLLECTION`, `CONNECT`).
    pub fn resource(
        verb: &str,
        group: &str,
        version: &str,
        resource: &str,
        subresource: &str,
        kind: &str,
        scope: &str,
    ) -> Self {
        Self {
            rendered: format!(
                "verb=\"{verb}\",group=\"{}\",version=\"{}\",resource=\"{}\",subresource=\"{}\",scope=\"{scope}\"",
                escape(group),
                escape(version),
                escape(resource),
                escape(subresource)
            ),
            gvk: format!(
                "group=\"{}\",version=\"{}\",kind=\"{}\"",
                escape(group),
                escape(version),
                escape(kind)
            ),
            watch: verb == "WATCH",
        }
    }

    /// Labels of a request outside the resource paths (`/version`, discovery, OpenAPI,
    /// unknown paths); `path` is collapsed to a few fixed values to bound cardinality.
    pub fn non_resource(method: &str, path: &str) -> Self {
        let p = match path {
            "/version" | "/version/" => "/version",
            "/healthz" | "/livez" | "/readyz" | "/metrics" | "/api" | "/apis" | "/openapi/v3" => {
                path
            }
            _ if path.starts_with("/openapi/") => "/openapi/*",
            _ if path.starts_with("/healthz/")
                || path.starts_with("/livez/")
                || path.starts_with("/readyz/") =>
            {
                "/health/*"
            }
            _ if path.starts_with("/api") => "/api*",
            _ => "other",
        };
        Self {
            rendered: format!(
                "verb=\"{}\",group=\"\",version=\"\",resource=\"\",subresource=\"\",scope=\"\",path=\"{p}\"",
                escape(method)
            ),
            gvk: String::new(),
            watch: false,
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Keeps an open watch counted in the gauges until dropped.
#[derive(Debug)]
pub struct WatchGuard {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.metrics.add_watch(&self.labels, -1);
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            cells: (0..SHARDS).map(|_| Mutex::new(Cell::default())).collect(),
        }
    }

    fn with_cell(&self, f: impl FnOnce(&mut Cell)) {
        let i = SLOT.with(|s| *s);
        let mut g = self.cells[i].lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }

    /// Counts one finished request.
    pub fn observe_request(&self, labels: &RequestLabels, code: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.with_cell(|c| {
            match c.requests.get_mut(&(labels.rendered.clone(), code)) {
                Some(n) => *n += 1,
                None => {
                    c.requests.insert((labels.rendered.clone(), code), 1);
                }
            }
            bump(&mut c.durations, &labels.rendered, &REQUEST_BUCKETS, secs);
        });
    }

    fn add_watch(&self, labels: &RequestLabels, delta: i64) {
        self.with_cell(|c| {
            *c.longrunning.entry(labels.rendered.clone()).or_insert(0) += delta;
            *c.watchers.entry(labels.gvk.clone()).or_insert(0) += delta;
        });
    }

    /// Counts an open watch until the guard is dropped (no-op labels for non-watches).
    pub fn watch_started(self: &Arc<Self>, labels: &RequestLabels) -> Option<WatchGuard> {
        if !labels.watch {
            return None;
        }
        self.add_watch(labels, 1);
        Some(WatchGuard {
            metrics: self.clone(),
            labels: labels.clone(),
        })
    }

    /// Records one store operation.
    pub fn observe_store(&self, operation: &str, key: &[u8], elapsed: Duration) {
        let ty = store_type(key);
        let k = format!("operation=\"{operation}\",type=\"{}\"", escape(&ty));
        let secs = elapsed.as_secs_f64();
        self.with_cell(|c| bump(&mut c.store, &k, &STORE_BUCKETS, secs));
    }

    /// Merges every cell and renders the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut requests: BTreeMap<(String, u16), u64> = BTreeMap::new();
        let mut durations: BTreeMap<String, Histogram> = BTreeMap::new();
        let mut longrunning: BTreeMap<String, i64> = BTreeMap::new();
        let mut watchers: BTreeMap<String, i64> = BTreeMap::new();
        let mut storeh: BTreeMap<String, Histogram> = BTreeMap::new();
        for cell in self.cells.iter() {
            let c = cell.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in &c.requests {
                *requests.entry(k.clone()).or_default() += v;
            }
            for (k, h) in &c.durations {
                durations.entry(k.clone()).or_default().merge(h);
            }
            for (k, v) in &c.longrunning {
                *longrunning.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &c.watchers {
                *watchers.entry(k.clone()).or_default() += v;
            }
            for (k, h) in &c.store {
                storeh.entry(k.clone()).or_default().merge(h);
            }
        }
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, version, resource, subresource, scope and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((labels, code), n) in &requests {
            let _ = writeln!(
                out,
                "apiserver_request_total{{{labels},code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, version, resource, subresource and scope.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for (labels, h) in &durations {
            histogram(
                &mut out,
                "apiserver_request_duration_seconds",
                labels,
                &REQUEST_BUCKETS,
                h,
            );
        }
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, subresource and scope.\n# TYPE apiserver_longrunning_requests gauge\n");
        for (labels, n) in &longrunning {
            let _ = writeln!(out, "apiserver_longrunning_requests{{{labels}}} {n}");
        }
        out.push_str("# HELP apiserver_registered_watchers Number of currently registered watchers for a given resource.\n# TYPE apiserver_registered_watchers gauge\n");
        for (labels, n) in &watchers {
            let _ = writeln!(out, "apiserver_registered_watchers{{{labels}}} {n}");
        }
        out.push_str("# HELP etcd_request_duration_seconds Store (backend) request latency in seconds for each operation and object type.\n# TYPE etcd_request_duration_seconds histogram\n");
        for (labels, h) in &storeh {
            histogram(
                &mut out,
                "etcd_request_duration_seconds",
                labels,
                &STORE_BUCKETS,
                h,
            );
        }
        out
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, bounds: &[f64], h: &Histogram) {
    let mut cum = 0u64;
    for (i, b) in bounds.iter().enumerate() {
        cum += h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// `resource.group` (or `resource` for core) from a store key
/// `/registry/<group>/<resource>/...`; keys outside `/registry/` give `other`.
fn store_type(key: &[u8]) -> String {
    let Some(rest) = key.strip_prefix(b"/registry/") else {
        return "other".into();
    };
    let mut it = rest.split(|b| *b == b'/');
    let (Some(g), Some(r)) = (it.next(), it.next()) else {
        return "other".into();
    };
    let (g, r) = (String::from_utf8_lossy(g), String::from_utf8_lossy(r));
    if r.is_empty() {
        return "other".into();
    }
    if g == "core" {
        r.into_owned()
    } else {
        format!("{r}.{g}")
    }
}

/// A [`Backend`] that times every call of the backend it wraps into
/// `etcd_request_duration_seconds`.
pub struct MeteredBackend {
    inner: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
}

impl MeteredBackend {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn done(&self, op: &str, key: &[u8], started: Instant) {
        self.metrics.observe_store(op, key, started.elapsed());
    }
}

fn op_key(o: &TxnOp) -> &[u8] {
    match o {
        TxnOp::Range(r) => r.key.as_ref(),
        TxnOp::Put { key, .. } | TxnOp::Delete { key, .. } => key.as_ref(),
    }
}

fn txn_key(t: &Txn) -> &[u8] {
    t.compare
        .first()
        .map(|c| c.key.as_ref())
        .or_else(|| t.success.first().map(op_key))
        .unwrap_or(b"")
}

#[async_trait::async_trait]
impl Backend for MeteredBackend {
    async fn list_raw(
        &self,
        req: RangeRequest,
        filter: &store::WatchFilter,
    ) -> Result<store::RawList, StoreError> {
        let t = Instant::now();
        let key = req.key.clone();
        let r = self.inner.list_raw(req, filter).await;
        self.done("list", &key, t);
        r
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        let t = Instant::now();
        let key = req.key.clone();
        let op = if req.range_end == store::RangeEnd::Single {
            "get"
        } else {
            "list"
        };
        let r = self.inner.range(req).await;
        self.done(op, &key, t);
        r
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let t = Instant::now();
        let key = Bytes::copy_from_slice(txn_key(&txn));
        let r = self.inner.txn(txn).await;
        self.done("txn", &key, t);
        r
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream, StoreError> {
        let t = Instant::now();
        let key = req.key.clone();
        let r = self.inner.watch(req).await;
        self.done("watch", &key, t);
        r
    }

    async fn lease_grant(
        &self,
        ttl_seconds: i64,
        id: Option<LeaseId>,
    ) -> Result<LeaseGrant, StoreError> {
        let t = Instant::now();
        let r = self.inner.lease_grant(ttl_seconds, id).await;
        self.done("lease_grant", b"", t);
        r
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, StoreError> {
        let t = Instant::now();
        let r = self.inner.lease_revoke(id).await;
        self.done("lease_revoke", b"", t);
        r
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        let t = Instant::now();
        let r = self.inner.lease_keep_alive(id).await;
        self.done("lease_keep_alive", b"", t);
        r
    }

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
    ) -> Result<LeaseTimeToLive, StoreError> {
        let t = Instant::now();
        let r = self.inner.lease_time_to_live(id, keys).await;
        self.done("lease_time_to_live", b"", t);
        r
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.compact(revision).await;
        self.done("compact", b"", t);
        r
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        let t = Instant::now();
        let r = self.inner.status().await;
        self.done("status", b"", t);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counts_merge_across_threads() {
        let m = Arc::new(Metrics::new());
        let l = RequestLabels::resource("GET", "", "v1", "pods", "", "Pod", "resource");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..250 {
                        m.observe_request(&l, 200, Duration::from_millis(3));
                    }
                });
            }
        });
        m.observe_request(&l, 404, Duration::from_millis(700));
        let t = m.render();
        let base =
            r#"verb="GET",group="",version="v1",resource="pods",subresource="",scope="resource""#;
        assert_eq!(
            value(
                &t,
                &format!("apiserver_request_total{{{base},code=\"200\"}}")
            ),
            Some(1000.0)
        );
        assert_eq!(
            value(
                &t,
                &format!("apiserver_request_total{{{base},code=\"404\"}}")
            ),
            Some(1.0)
        );
        // 3 ms falls in the first bucket (0.005); 700 ms in 0.8 and above.
        let b = |le: &str| {
            value(
                &t,
                &format!("apiserver_request_duration_seconds_bucket{{{base},le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.005"), Some(1000.0));
        assert_eq!(b("0.6"), Some(1000.0));
        assert_eq!(b("0.8"), Some(1001.0));
        assert_eq!(b("+Inf"), Some(1001.0));
        assert_eq!(
            value(
                &t,
                &format!("apiserver_request_duration_seconds_count{{{base}}}")
            ),
            Some(1001.0)
        );
    }

    #[test]
    fn watch_gauges_follow_guards() {
        let m = Arc::new(Metrics::new());
        let w = RequestLabels::resource(
            "WATCH",
            "apps",
            "v1",
            "deployments",
            "",
            "Deployment",
            "namespace",
        );
        let g1 = m.watch_started(&w);
        let g2 = m.watch_started(&w);
        assert!(
            m.watch_started(&RequestLabels::resource(
                "GET", "", "v1", "pods", "", "Pod", "resource"
            ))
            .is_none()
        );
        let series =
            r#"apiserver_registered_watchers{group="apps",version="v1",kind="Deployment"}"#;
        assert_eq!(value(&m.render(), series), Some(2.0));
        drop(g1);
        // Dropped on another thread: the sum is still right.
        std::thread::spawn(move || drop(g2)).join().unwrap();
        assert_eq!(value(&m.render(), series), Some(0.0));
    }

    #[test]
    fn store_types_from_keys() {
        assert_eq!(store_type(b"/registry/core/pods/default/p"), "pods");
        assert_eq!(
            store_type(b"/registry/apps/deployments/"),
            "deployments.apps"
        );
        assert_eq!(store_type(b"/registry/"), "other");
        assert_eq!(store_type(b"compact"), "other");
    }

    #[tokio::test]
    async fn metered_backend_times_store_calls() {
        let engine = store::Engine::open(store::EngineConfig::in_memory()).unwrap();
        let m = Arc::new(Metrics::new());
        let b = MeteredBackend::new(engine.clone(), m.clone());
        b.get(Bytes::from_static(b"/registry/core/configmaps/default/a"))
            .await
            .unwrap();
        b.get(Bytes::from_static(b"/registry/core/configmaps/default/b"))
            .await
            .unwrap();
        let t = m.render();
        assert_eq!(
            value(
                &t,
                r#"etcd_request_duration_seconds_count{operation="get",type="configmaps"}"#
            ),
            Some(2.0),
            "{t}"
        );
        engine.close();
    }
}
