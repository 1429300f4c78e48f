//! Watch: `GET ...?watch=true` as a stream of newline-terminated JSON `WatchEvent`s.
//!
//! Semantics (KUBECTL_WIRE.md section 7): `resourceVersion` unset or `"0"` first sends a
//! synthetic `ADDED` for every current object, then changes after that list; `N` sends only
//! changes after N; an N older than the store's history ends the stream with an `ERROR`
//! event carrying a 410 `Expired` Status (clients re-list). `allowWatchBookmarks` turns the
//! store's progress notifications into `BOOKMARK` events; `timeoutSeconds` bounds the
//! stream (default: a random 30 to 60 minutes, as `--min-request-timeout`).
//! `sendInitialEvents=true` ends the initial events with a bookmark annotated
//! `k8s.io/initial-events-end`.
//!
//! With label or field selectors, an object that starts matching is `ADDED` and one that
//! stops matching is `DELETED`, as upstream. For JSON output the stored bytes are framed as
//! they are (no parse); Table output (`kubectl get -w`) converts each event.

mod hub;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use hub::Hubs;
use hub::{HubItem, SharedEvent, frame};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use store::{KeyValue, RangeEnd, RangeRequest, Revision, WatchEvent, WatchRequest, WatchStream};

use crate::rest::objects::{Output, Selectors, negotiate_output, prefix_end};
use crate::rest::{Query, Target};
use crate::server::App;
use crate::server::body::{Body, ChannelBody};
use crate::status::ApiError;
use crate::table::TableOptions;

/// Encoded events a watch response buffers before its producer waits for the client.
const WATCH_CHANNEL_EVENTS: usize = 256;
/// Most objects the initial ADDED events read per store page.
const INITIAL_PAGE: u64 = 1000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn prefix(self) -> &'static [u8] {
        match self {
            EventType::Added => b"{\"type\":\"ADDED\",\"object\":",
            EventType::Modified => b"{\"type\":\"MODIFIED\",\"object\":",
            EventType::Deleted => b"{\"type\":\"DELETED\",\"object\":",
        }
    }
}

/// One watch response's encoder.
struct Encoder {
    def: Arc<crate::registry::ResourceDef>,
    output: Output,
    sent_headers: bool,
}

impl Encoder {
    /// Frames `raw` (a stored object) as one event line.
    fn event(&mut self, ty: EventType, raw: &[u8]) -> Bytes {
        match self.output {
            Output::Json => {
                let mut out = BytesMut::with_capacity(raw.len() + 40);
                out.extend_from_slice(ty.prefix());
                out.extend_from_slice(raw);
                out.extend_from_slice(b"}\n");
                out.freeze()
            }
            Output::Table => {
                let obj: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
                let opts = TableOptions {
                    no_headers: self.sent_headers,
                    ..Default::default()
                };
                self.sent_headers = true;
                let table = crate::table::to_table(&self.def, &[obj], &opts, Utc::now());
                let mut out = BytesMut::new();
                out.extend_from_slice(ty.prefix());
                out.extend_from_slice(&serde_json::to_vec(&table).unwrap_or_default());
                out.extend_from_slice(b"}\n");
                out.freeze()
            }
        }
    }

    fn bookmark(&self, rev: Revision, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta});
        line("BOOKMARK", &obj)
    }
}

fn line(ty: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn error_line(e: &ApiError) -> Bytes {
    let status = serde_json::to_value(e.status()).unwrap_or(Value::Null);
    line("ERROR", &status)
}

/// The stored object with `resourceVersion` set to the deletion revision.
fn deleted_object(prev: &KeyValue, rev: Revision) -> Bytes {
    match serde_json::from_slice::<Value>(&prev.value.raw) {
        Ok(mut v) => {
            if let Some(Value::Object(m)) = v.get_mut("metadata") {
                m.insert("resourceVersion".into(), Value::String(rev.to_string()));
            }
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        Err(_) => prev.value.raw.clone(),
    }
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))
}

/// Serves a watch request.
pub(crate) async fn serve(
    app: &Arc<App>,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let output = negotiate_output(headers)?;
    let sel = Selectors::parse(&t.def, q)?;
    let timeout = match q.get("timeoutSeconds") {
        Some(s) if !s.is_empty() => Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        ),
        _ => {
            let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 1800 / 255;
            Duration::from_secs(1800 + jitter)
        }
    };
    let bookmarks = q.flag("allowWatchBookmarks");
    let rv = q.get("resourceVersion").unwrap_or("");
    let send_initial = match q.get("sendInitialEvents") {
        Some("true") => true,
        Some("false") => false,
        _ => rv.is_empty() || rv == "0",
    };
    let prefix = t.prefix();
    let end = prefix_end(&prefix);

    // The hub first, so the list below is at or after the hub's start.
    let hub = app
        .hubs
        .get(&app.backend, Bytes::from(t.def.key_prefix()))
        .await
        .ok();
    // Initial state: list at one revision, then watch right after it.
    let mut initial: Vec<Bytes> = Vec::new();
    let start = if send_initial || rv.is_empty() || rv == "0" {
        let mut key = prefix.clone();
        let mut at: Option<Revision> = if rv.is_empty() || rv == "0" {
            None
        } else {
            Some(Revision(parse_rv(rv)?))
        };
        let mut enc = Encoder {
            def: t.def.clone(),
            output,
            sent_headers: false,
        };
        for _ in 0..1_000_000 {
            let resp = app
                .backend
                .range(RangeRequest {
                    key: key.clone(),
                    range_end: RangeEnd::Until(end.clone()),
                    revision: at,
                    limit: Some(INITIAL_PAGE),
                    keys_only: false,
                    count_only: false,
                    skip_count: true,
                })
                .await?;
            at = Some(resp.revision);
            let last = resp.kvs.last().map(|kv| kv.key.clone());
            if send_initial {
                for kv in &resp.kvs {
                    if sel.matches(&kv.value) {
                        initial.push(enc.event(EventType::Added, &kv.value.raw));
                    }
                }
            }
            match last {
                Some(k) if resp.more => {
                    let mut k = k.to_vec();
                    k.push(0);
                    key = Bytes::from(k);
                }
                _ => break,
            }
        }
        let r = at.unwrap_or_default();
        if send_initial && q.get("sendInitialEvents") == Some("true") {
            initial.push(enc.bookmark(r, true));
        }
        Revision(r.0 + 1)
    } else {
        Revision(parse_rv(rv)? + 1)
    };

    let (tx, body) = ChannelBody::new(WATCH_CHANNEL_EVENTS);
    let def = t.def.clone();
    let after = Revision(start.0 - 1);
    // Watches selected by an indexed field use the store's index; the rest share a hub.
    let indexed = sel.fields.iter().any(|r| {
        matches!(r, store::Requirement::Equals(f, _) if def.indexed_fields.iter().any(|i| i == f))
    });
    let subscription = match &hub {
        Some(h) if !indexed => h.subscribe(after),
        _ => None,
    };
    let source = match subscription {
        Some(sub) => Source::Hub {
            replay: sub.replay,
            rx: sub.rx,
        },
        None => {
            let stream = app
                .backend
                .watch(WatchRequest {
                    key: prefix,
                    range_end: RangeEnd::Until(end),
                    start_revision: Some(start),
                    filter: sel.filter(),
                    prev_kv: true,
                    progress_notify: bookmarks,
                })
                .await;
            Source::Store(stream.map_err(ApiError::from))
        }
    };
    let namespace = t.namespace.clone();
    let filtered = !sel.is_empty() || namespace.is_some();
    let matches = move |v: &store::ObjectValue| {
        namespace.as_deref().is_none_or(|ns| v.namespace == ns) && sel.matches(v)
    };
    let gauge = app
        .metrics
        .watch_started(&crate::metrics::RequestLabels::resource(
            "WATCH",
            &def.group,
            &def.version,
            &def.plural,
            "",
            &def.kind,
            if t.namespace.is_some() {
                "namespace"
            } else {
                "cluster"
            },
        ));
    tokio::spawn(async move {
        // Counted in apiserver_registered_watchers while this task runs.
        let _gauge = gauge;
        let mut enc = Encoder {
            def,
            output,
            sent_headers: !initial.is_empty() && output == Output::Table,
        };
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut source = source;
        let mut last = after;
        loop {
            let items = tokio::select! {
                i = source.next() => i,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            };
            let items = match items {
                None => return,
                Some(Err(e)) => {
                    let _ = tx.send(error_line(&e)).await;
                    return;
                }
                Some(Ok(items)) => items,
            };
            for item in items {
                let out = match item {
                    HubItem::Progress(rev) => {
                        if !bookmarks || rev <= last {
                            continue;
                        }
                        last = rev;
                        enc.bookmark(rev, false)
                    }
                    HubItem::Event(e) => {
                        if e.revision <= last {
                            continue;
                        }
                        match encode_event(&mut enc, &e, filtered, &matches) {
                            Some(b) => b,
                            None => continue,
                        }
                    }
                };
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut r = Response::new(body.boxed());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}

/// Where a watcher's events come from.
enum Source {
    /// The resource's shared hub: history to replay, then the live ring.
    Hub {
        replay: Vec<Arc<SharedEvent>>,
        rx: tokio::sync::broadcast::Receiver<HubItem>,
    },
    /// Its own store watch (indexed field selectors, or a start the hub cannot serve).
    Store(Result<WatchStream, ApiError>),
}

impl Source {
    async fn next(&mut self) -> Option<Result<Vec<HubItem>, ApiError>> {
        use futures::StreamExt;
        match self {
            Source::Hub { replay, rx } => {
                if !replay.is_empty() {
                    let items = std::mem::take(replay)
                        .into_iter()
                        .map(HubItem::Event)
                        .collect();
                    return Some(Ok(items));
                }
                match rx.recv().await {
                    Ok(i) => Some(Ok(vec![i])),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        Some(Err(ApiError::gone(
                            "watch closed: the client fell too far behind; re-list and watch again",
                        )))
                    }
                }
            }
            Source::Store(Err(e)) => {
                let e = e.clone();
                *self = Source::Store(Err(ApiError::gone("watch ended")));
                Some(Err(e))
            }
            Source::Store(Ok(stream)) => match stream.next().await? {
                Err(e) => Some(Err(e.into())),
                Ok(events) => Some(Ok(events
                    .into_iter()
                    .map(|ev| match ev {
                        WatchEvent::Progress(r) => HubItem::Progress(r),
                        other => match SharedEvent::from_store(other) {
                            Some(e) => HubItem::Event(Arc::new(e)),
                            None => HubItem::Progress(Revision(0)),
                        },
                    })
                    .collect())),
            },
        }
    }
}

/// One event for one watcher: its type under the watcher's filter, encoded once per event
/// and type (JSON) or per watcher (Table).
fn encode_event(
    enc: &mut Encoder,
    e: &SharedEvent,
    filtered: bool,
    matches: &impl Fn(&store::ObjectValue) -> bool,
) -> Option<Bytes> {
    let kv = e.kv.as_ref()?;
    let ty = if e.deleted {
        if filtered && !matches(&kv.value) {
            return None;
        }
        EventType::Deleted
    } else {
        let now = matches(&kv.value);
        let before = e.prev.as_ref().is_some_and(|p| matches(&p.value));
        if filtered {
            match (before, now) {
                (false, true) => EventType::Added,
                (true, true) => EventType::Modified,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            }
        } else if kv.create_revision == kv.mod_revision {
            EventType::Added
        } else {
            EventType::Modified
        }
    };
    let slot = match ty {
        EventType::Added => 0,
        EventType::Modified => 1,
        EventType::Deleted => 2,
    };
    match enc.output {
        Output::Json => Some(e.line(slot, || {
            if e.deleted {
                frame(ty.prefix(), &deleted_object(kv, e.revision))
            } else {
                frame(ty.prefix(), &kv.value.raw)
            }
        })),
        Output::Table => {
            let raw = if e.deleted {
                deleted_object(kv, e.revision)
            } else {
                kv.value.raw.clone()
            };
            Some(enc.event(ty, &raw))
        }
    }
}
