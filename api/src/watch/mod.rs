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

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use store::{KeyValue, RangeEnd, RangeRequest, Revision, WatchEvent, WatchFilter, WatchRequest};

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

    let filter = WatchFilter {
        labels: sel.labels.clone(),
        fields: sel.fields.clone(),
    };
    let stream = app
        .backend
        .watch(WatchRequest {
            key: prefix,
            range_end: RangeEnd::Until(end),
            start_revision: Some(start),
            filter,
            prev_kv: true,
            progress_notify: bookmarks,
        })
        .await;

    let (tx, body) = ChannelBody::new(WATCH_CHANNEL_EVENTS);
    let def = t.def.clone();
    let filtered = !sel.is_empty();
    tokio::spawn(async move {
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
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(error_line(&e.into())).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        use futures::StreamExt;
        loop {
            let batch = tokio::select! {
                b = stream.next() => b,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            };
            let events = match batch {
                None => return,
                Some(Err(e)) => {
                    let _ = tx.send(error_line(&e.into())).await;
                    return;
                }
                Some(Ok(ev)) => ev,
            };
            for ev in events {
                let out = match ev {
                    WatchEvent::Put { kv, prev_kv } => {
                        let now = sel.matches(&kv.value);
                        let before = prev_kv.as_ref().is_some_and(|p| sel.matches(&p.value));
                        let ty = if filtered {
                            match (before, now) {
                                (false, true) => EventType::Added,
                                (true, true) => EventType::Modified,
                                (true, false) => EventType::Deleted,
                                (false, false) => continue,
                            }
                        } else if kv.create_revision == kv.mod_revision {
                            EventType::Added
                        } else {
                            EventType::Modified
                        };
                        enc.event(ty, &kv.value.raw)
                    }
                    WatchEvent::Delete {
                        revision, prev_kv, ..
                    } => {
                        let Some(prev) = prev_kv else { continue };
                        if filtered && !sel.matches(&prev.value) {
                            continue;
                        }
                        enc.event(EventType::Deleted, &deleted_object(&prev, revision))
                    }
                    WatchEvent::Progress(rev) => {
                        if !bookmarks {
                            continue;
                        }
                        enc.bookmark(rev, false)
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
