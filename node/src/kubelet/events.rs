//! The kubelet's event recorder: core/v1 Events with `source {component: kubelet, host}`,
//! as upstream's `record.EventRecorder` writes them.
//!
//! Recording never blocks a pod worker: [`Recorder::record`] puts the event on a bounded
//! queue (dropped with a debug log when full, as client-go's broadcaster drops) and one task
//! writes them. Repeats of the same event (same object, type, reason, message) within
//! [`REPEAT_WINDOW`] are folded into the existing Event (`count` + 1, `lastTimestamp`
//! updated by a merge patch), as client-go's `eventLogger` does. Rate: client-go's spam
//! filter per involved object (a token bucket of [`SPAM_BURST`] refilled one per
//! [`SPAM_REFILL`]) and the kubelet's global `eventRecordQPS` 50 / `eventBurst` 100.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use api::client::{Api, Client, Patch, PatchParams, PostParams};
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::json;
use tokio::sync::mpsc;

/// Events queued for writing at most (the broadcaster's queue length upstream is 1000).
pub const QUEUE: usize = 1000;
/// Identical events within this window update the existing Event.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(600);
/// Events one object may emit in a burst (client-go's spam filter: 25).
pub const SPAM_BURST: f64 = 25.0;
/// One more event per object each this long (client-go: 1 per 5 minutes).
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Global events per second (the kubelet's `eventRecordQPS`).
pub const QPS: f64 = 50.0;
/// Global burst (the kubelet's `eventBurst`).
pub const BURST: f64 = 100.0;
/// Distinct events remembered for aggregation (client-go's LRU holds 4096).
const CACHE: usize = 4096;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Informational.
    Normal,
    /// Something went wrong.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The object an event is about (`involvedObject`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ObjectRef {
    /// `Pod`, `Node`.
    pub kind: String,
    /// Empty for cluster-scoped objects (their events go to `default`).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// uid (a Node's events carry the node name, as upstream's kubelet does).
    pub uid: String,
    /// `spec.containers{c}` for a container's events.
    pub field_path: String,
}

impl ObjectRef {
    /// A pod (or, with `container`, one of its containers: `spec.containers{name}` or
    /// `spec.initContainers{name}`).
    pub fn pod(pod: &Pod, container: Option<&str>) -> ObjectRef {
        let field_path = match container {
            None => String::new(),
            Some(c) => {
                let init = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.init_containers.as_ref())
                    .is_some_and(|l| l.iter().any(|x| x.name == c));
                if init {
                    format!("spec.initContainers{{{c}}}")
                } else {
                    format!("spec.containers{{{c}}}")
                }
            }
        };
        ObjectRef {
            kind: "Pod".into(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            field_path,
        }
    }

    /// The node `name`.
    pub fn node(name: &str) -> ObjectRef {
        ObjectRef {
            kind: "Node".into(),
            namespace: String::new(),
            name: name.into(),
            uid: name.into(),
            field_path: String::new(),
        }
    }
}

#[derive(Debug)]
struct Pending {
    obj: ObjectRef,
    kind: EventType,
    reason: String,
    message: String,
    at: chrono::DateTime<chrono::Utc>,
}

/// Hands events to the writer task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Pending>>,
}

impl Recorder {
    /// A recorder that drops everything (no apiserver).
    pub fn disabled() -> Recorder {
        Recorder { tx: None }
    }

    /// A recorder writing through `client` as `host`'s kubelet; the writer runs until every
    /// sender is dropped (or the returned task is aborted).
    pub fn start(client: Client, host: String) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_loop(client, host, rx));
        (Recorder { tx: Some(tx) }, task)
    }

    /// Records an event (never waits; dropped when the queue is full).
    pub fn record(&self, obj: ObjectRef, kind: EventType, reason: &str, message: String) {
        let Some(tx) = &self.tx else { return };
        let p = Pending {
            obj,
            kind,
            reason: reason.into(),
            message: truncate(message, 1024),
            at: chrono::Utc::now(),
        };
        if let Err(e) = tx.try_send(p) {
            tracing::debug!("event dropped: {e}");
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn take(&mut self, burst: f64, per_sec: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * per_sec).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The decisions of the writer, without I/O: aggregation and rate limits.
#[derive(Debug, Default)]
pub(crate) struct Correlator {
    /// (object, type, reason, message) -> (event name, namespace, count, first, last seen).
    seen: HashMap<(ObjectRef, EventType, String, String), Seen>,
    order: VecDeque<(ObjectRef, EventType, String, String)>,
    spam: HashMap<ObjectRef, Bucket>,
    global: Option<Bucket>,
}

#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) name: String,
    pub(crate) count: i32,
    pub(crate) first: chrono::DateTime<chrono::Utc>,
    last: Instant,
}

/// What to write for one event.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    /// A new Event object named so.
    Create(String),
    /// Patch the existing Event: its name, the new count and firstTimestamp.
    Update(String, i32, chrono::DateTime<chrono::Utc>),
    /// Rate-limited: dropped.
    Drop,
}

impl Correlator {
    pub(crate) fn decide(
        &mut self,
        obj: &ObjectRef,
        kind: EventType,
        reason: &str,
        message: &str,
        at: chrono::DateTime<chrono::Utc>,
        now: Instant,
    ) -> Action {
        // The spam filter is keyed by the object (not its field path), as client-go's.
        let mut key_obj = obj.clone();
        key_obj.field_path.clear();
        if self.spam.len() > CACHE {
            self.spam.clear();
        }
        let bucket = self
            .spam
            .entry(key_obj)
            .or_insert_with(|| Bucket::full(SPAM_BURST, now));
        if !bucket.take(SPAM_BURST, 1.0 / SPAM_REFILL.as_secs_f64(), now) {
            return Action::Drop;
        }
        let g = self.global.get_or_insert_with(|| Bucket::full(BURST, now));
        if !g.take(BURST, QPS, now) {
            return Action::Drop;
        }
        let key = (obj.clone(), kind, reason.to_string(), message.to_string());
        if let Some(s) = self.seen.get_mut(&key)
            && now.saturating_duration_since(s.last) < REPEAT_WINDOW
        {
            s.count += 1;
            s.last = now;
            return Action::Update(s.name.clone(), s.count, s.first);
        }
        let name = format!("{}.{:x}", obj.name, at.timestamp_nanos_opt().unwrap_or(0));
        if self.seen.len() >= CACHE
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        if self
            .seen
            .insert(
                key.clone(),
                Seen {
                    name: name.clone(),
                    count: 1,
                    first: at,
                    last: now,
                },
            )
            .is_none()
        {
            self.order.push_back(key);
        }
        Action::Create(name)
    }
}

fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn write_loop(client: Client, host: String, mut rx: mpsc::Receiver<Pending>) {
    let mut corr = Correlator::default();
    while let Some(p) = rx.recv().await {
        let ns = if p.obj.namespace.is_empty() {
            "default".to_string()
        } else {
            p.obj.namespace.clone()
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        let action = corr.decide(&p.obj, p.kind, &p.reason, &p.message, p.at, Instant::now());
        let r = match action {
            Action::Drop => {
                tracing::debug!(reason = %p.reason, object = %p.obj.name, "event rate-limited");
                continue;
            }
            Action::Create(name) => {
                let mut inv = json!({"kind": p.obj.kind, "name": p.obj.name, "uid": p.obj.uid,
                    "apiVersion": "v1"});
                if !p.obj.namespace.is_empty() {
                    inv["namespace"] = json!(p.obj.namespace);
                }
                if !p.obj.field_path.is_empty() {
                    inv["fieldPath"] = json!(p.obj.field_path);
                }
                let ev = json!({"apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": name, "namespace": ns},
                    "involvedObject": inv, "reason": p.reason, "message": p.message,
                    "type": p.kind.as_str(),
                    "source": {"component": "kubelet", "host": host},
                    "firstTimestamp": ts(&p.at), "lastTimestamp": ts(&p.at), "count": 1,
                    "reportingComponent": "kubelet", "reportingInstance": host});
                match serde_json::from_value::<Event>(ev) {
                    Ok(ev) => api.create(&PostParams::default(), &ev).await.map(|_| ()),
                    Err(e) => {
                        tracing::warn!("building an event: {e}");
                        continue;
                    }
                }
            }
            Action::Update(name, count, first) => {
                let patch = json!({"count": count, "lastTimestamp": ts(&p.at),
                    "firstTimestamp": ts(&first), "message": p.message});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = r {
            tracing::debug!(reason = %p.reason, object = %p.obj.name, "writing an event: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> ObjectRef {
        ObjectRef {
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("u-{name}"),
            field_path: String::new(),
        }
    }

    #[test]
    fn repeats_fold_into_one_event_with_a_count() {
        let mut c = Correlator::default();
        let t0 = Instant::now();
        let at = chrono::Utc::now();
        let a = c.decide(&obj("p"), EventType::Warning, "BackOff", "m", at, t0);
        let Action::Create(name) = a else {
            panic!("{a:?}")
        };
        assert!(name.starts_with("p."));
        let b = c.decide(&obj("p"), EventType::Warning, "BackOff", "m", at, t0);
        assert_eq!(b, Action::Update(name.clone(), 2, at));
        // Another message is another event.
        assert!(matches!(
            c.decide(&obj("p"), EventType::Warning, "BackOff", "other", at, t0),
            Action::Create(_)
        ));
        // After the window, a new event.
        let later = t0 + REPEAT_WINDOW + Duration::from_secs(1);
        assert!(matches!(
            c.decide(&obj("p"), EventType::Warning, "BackOff", "m", at, later),
            Action::Create(_)
        ));
    }

    #[test]
    fn spam_filter_bounds_each_object() {
        let mut c = Correlator::default();
        let t0 = Instant::now();
        let at = chrono::Utc::now();
        let mut written = 0;
        for i in 0..40 {
            if c.decide(&obj("p"), EventType::Normal, "R", &format!("m{i}"), at, t0) != Action::Drop
            {
                written += 1;
            }
        }
        assert_eq!(written, SPAM_BURST as usize);
        // Another object is not affected; the first gets one more after the refill period.
        assert_ne!(
            c.decide(&obj("q"), EventType::Normal, "R", "m", at, t0),
            Action::Drop
        );
        assert_ne!(
            c.decide(&obj("p"), EventType::Normal, "R", "x", at, t0 + SPAM_REFILL),
            Action::Drop
        );
    }
}
