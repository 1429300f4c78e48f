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

use std::cell::RefCell;
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

/// One cell's samples. Request and store series are keyed by the address of their interned
/// label set (the cell holds a clone of it, so the address stays unique while it is a key):
/// recording a request hashes one integer, it neither renders nor hashes label strings.
#[derive(Debug, Default)]
struct Cell {
    requests: HashMap<usize, RequestSeries>,
    longrunning: HashMap<String, i64>,
    watchers: HashMap<String, i64>,
    store: HashMap<usize, (Arc<str>, Histogram)>,
}

/// The samples of one request label set in one cell.
#[derive(Debug)]
struct RequestSeries {
    labels: RequestLabels,
    /// Requests per response code (a handful of codes per series).
    codes: Vec<(u16, u64)>,
    durations: Histogram,
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

/// Interned label sets per thread, so a request's labels are rendered once per thread and
/// label set rather than once per request. Bounded: cleared when it grows past
/// [`INTERN_MAX`] (the label sets are few: verbs x resources x scopes).
struct Interner {
    /// Scratch buffer the lookup key is rendered into (reused, so no allocation per call).
    buf: String,
    requests: HashMap<Box<str>, RequestLabels>,
    store: HashMap<Box<str>, Arc<str>>,
}

/// Most label sets one thread's [`Interner`] keeps of each kind.
const INTERN_MAX: usize = 4096;

thread_local! {
    static INTERNER: RefCell<Interner> = RefCell::new(Interner {
        buf: String::with_capacity(256),
        requests: HashMap::new(),
        store: HashMap::new(),
    });
}

/// The rendered strings of one label set.
#[derive(Debug)]
struct LabelSet {
    /// `verb="GET",group="",version="v1",resource="pods",subresource="",scope="namespace"`.
    rendered: Box<str>,
    /// `group="",version="v1",kind="Pod"` for watches.
    gvk: Box<str>,
    watch: bool,
}

/// The labels of one request: an interned, shared label set (cloning is a reference count).
#[derive(Debug, Clone)]
pub struct RequestLabels(Arc<LabelSet>);

impl Default for RequestLabels {
    fn default() -> Self {
        Self(Arc::new(LabelSet {
            rendered: Box::from(""),
            gvk: Box::from(""),
            watch: false,
        }))
    }
}

/// `buf` holds `rendered` then `\n` then `gvk` (a raw newline cannot occur inside either:
/// [`push_escaped`] writes it as `\n`). Returns the interned label set for it.
fn intern_request(it: &mut Interner, watch: bool) -> RequestLabels {
    if let Some(l) = it.requests.get(it.buf.as_str()) {
        return l.clone();
    }
    if it.requests.len() >= INTERN_MAX {
        it.requests.clear();
    }
    let (rendered, gvk) = it.buf.split_once('\n').unwrap_or((it.buf.as_str(), ""));
    let l = RequestLabels(Arc::new(LabelSet {
        rendered: Box::from(rendered),
        gvk: Box::from(gvk),
        watch,
    }));
    it.requests.insert(Box::from(it.buf.as_str()), l.clone());
    l
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
        INTERNER.with(|it| {
            let it = &mut *it.borrow_mut();
            let b = &mut it.buf;
            b.clear();
            b.push_str("verb=\"");
            push_escaped(b, verb);
            b.push_str("\",group=\"");
            push_escaped(b, group);
            b.push_str("\",version=\"");
            push_escaped(b, version);
            b.push_str("\",resource=\"");
            push_escaped(b, resource);
            b.push_str("\",subresource=\"");
            push_escaped(b, subresource);
            b.push_str("\",scope=\"");
            push_escaped(b, scope);
            b.push_str("\"\ngroup=\"");
            push_escaped(b, group);
            b.push_str("\",version=\"");
            push_escaped(b, version);
            b.push_str("\",kind=\"");
            push_escaped(b, kind);
            b.push('"');
            intern_request(it, verb == "WATCH")
        })
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
        INTERNER.with(|it| {
            let it = &mut *it.borrow_mut();
            let b = &mut it.buf;
            b.clear();
            b.push_str("verb=\"");
            push_escaped(b, method);
            b.push_str(
                "\",group=\"\",version=\"\",resource=\"\",subresource=\"\",scope=\"\",path=\"",
            );
            b.push_str(p);
            b.push_str("\"\n");
            intern_request(it, false)
        })
    }

    fn rendered(&self) -> &str {
        &self.0.rendered
    }

    /// The key of this label set in a cell: the address of the shared set.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

/// Appends `s` with Prometheus label-value escaping (`\`, `"`, newline).
fn push_escaped(out: &mut String, s: &str) {
    if !s.contains(['\\', '"', '\n']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
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
            let s = c
                .requests
                .entry(labels.id())
                .or_insert_with(|| RequestSeries {
                    labels: labels.clone(),
                    codes: Vec::new(),
                    durations: Histogram::default(),
                });
            match s.codes.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => s.codes.push((code, 1)),
            }
            s.durations.observe(&REQUEST_BUCKETS, secs);
        });
    }

    fn add_watch(&self, labels: &RequestLabels, delta: i64) {
        self.with_cell(|c| {
            match c.longrunning.get_mut(labels.rendered()) {
                Some(n) => *n += delta,
                None => {
                    c.longrunning.insert(labels.rendered().to_string(), delta);
                }
            }
            match c.watchers.get_mut(&*labels.0.gvk) {
                Some(n) => *n += delta,
                None => {
                    c.watchers.insert(labels.0.gvk.to_string(), delta);
                }
            }
        });
    }

    /// Counts an open watch until the guard is dropped (no-op labels for non-watches).
    pub fn watch_started(self: &Arc<Self>, labels: &RequestLabels) -> Option<WatchGuard> {
        if !labels.0.watch {
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
        let series = INTERNER.with(|it| {
            let it = &mut *it.borrow_mut();
            let b = &mut it.buf;
            b.clear();
            b.push_str("operation=\"");
            push_escaped(b, operation);
            b.push_str("\",type=\"");
            push_store_type(b, key);
            b.push('"');
            if let Some(s) = it.store.get(it.buf.as_str()) {
                return s.clone();
            }
            if it.store.len() >= INTERN_MAX {
                it.store.clear();
            }
            let s: Arc<str> = Arc::from(it.buf.as_str());
            it.store.insert(Box::from(it.buf.as_str()), s.clone());
            s
        });
        let secs = elapsed.as_secs_f64();
        self.with_cell(|c| {
            c.store
                .entry(Arc::as_ptr(&series) as *const u8 as usize)
                .or_insert_with(|| (series.clone(), Histogram::default()))
                .1
                .observe(&STORE_BUCKETS, secs);
        });
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
            for s in c.requests.values() {
                for (code, n) in &s.codes {
                    *requests
                        .entry((s.labels.rendered().to_string(), *code))
                        .or_default() += n;
                }
                durations
                    .entry(s.labels.rendered().to_string())
                    .or_default()
                    .merge(&s.durations);
            }
            for (k, v) in &c.longrunning {
                *longrunning.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &c.watchers {
                *watchers.entry(k.clone()).or_default() += v;
            }
            for (k, h) in c.store.values() {
                storeh.entry(k.to_string()).or_default().merge(h);
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

/// Appends `resource.group` (or `resource` for core) from a store key
/// `/registry/<group>/<resource>/...`, escaped; keys outside `/registry/` give `other`.
fn push_store_type(out: &mut String, key: &[u8]) {
    let Some(rest) = key.strip_prefix(b"/registry/") else {
        out.push_str("other");
        return;
    };
    let mut it = rest.split(|b| *b == b'/');
    let (Some(g), Some(r)) = (it.next(), it.next()) else {
        out.push_str("other");
        return;
    };
    if r.is_empty() {
        out.push_str("other");
        return;
    }
    let (g, r) = (String::from_utf8_lossy(g), String::from_utf8_lossy(r));
    push_escaped(out, &r);
    if g != "core" {
        out.push('.');
        push_escaped(out, &g);
    }
}

#[cfg(test)]
fn store_type(key: &[u8]) -> String {
    let mut s = String::new();
    push_store_type(&mut s, key);
    s
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
        // A single key read through `list_raw` is a GET that skips the metadata copy.
        let op = if req.range_end == store::RangeEnd::Single {
            "get"
        } else {
            "list"
        };
        let r = self.inner.list_raw(req, filter).await;
        self.done(op, &key, t);
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
    fn label_sets_built_on_different_threads_are_one_series() {
        let m = Arc::new(Metrics::new());
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..10 {
                        // Built per request, as the request path does.
                        let l = RequestLabels::resource(
                            "LIST",
                            "example.com",
                            "v1",
                            "widgets",
                            "",
                            "Widget",
                            "cluster",
                        );
                        m.observe_request(&l, 200, Duration::from_millis(1));
                    }
                });
            }
        });
        let t = m.render();
        let series = r#"apiserver_request_total{verb="LIST",group="example.com",version="v1",resource="widgets",subresource="",scope="cluster",code="200"}"#;
        assert_eq!(value(&t, series), Some(30.0), "{t}");
        assert_eq!(t.matches("resource=\"widgets\"").count(), 1 + 23 + 3, "{t}");
    }

    #[test]
    fn label_values_are_escaped_and_paths_collapsed() {
        let m = Metrics::new();
        let odd = RequestLabels::resource("GET", "a\"b", "v1", "x\ny", "", "K", "resource");
        m.observe_request(&odd, 404, Duration::from_millis(1));
        let other = RequestLabels::non_resource("GET", "/openapi/v3/apis/apps/v1");
        m.observe_request(&other, 200, Duration::from_millis(1));
        m.observe_store(
            "get",
            b"/registry/apps/deployments/ns/d",
            Duration::from_micros(50),
        );
        let t = m.render();
        assert!(
            t.contains(r#"apiserver_request_total{verb="GET",group="a\"b",version="v1",resource="x\ny",subresource="",scope="resource",code="404"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"path="/openapi/*",code="200"} 1"#), "{t}");
        assert_eq!(
            value(
                &t,
                r#"etcd_request_duration_seconds_count{operation="get",type="deployments.apps"}"#
            ),
            Some(1.0),
            "{t}"
        );
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
