//! Watch streams: newline-delimited JSON `WatchEvent`s read incrementally from an HTTP/2
//! response body or a QUIC stream, each line bounded by [`MAX_WATCH_LINE`].

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::{ClientError, Result, status_from_value};
use crate::status::Status;

/// Longest watch event line accepted (objects are at most 1.5 MiB; JSON escaping and the
/// event envelope stay well below this).
pub const MAX_WATCH_LINE: usize = 4 << 20;

/// The annotation on the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// One event of a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<K> {
    /// An object was created (or, for a selector watch, started matching; or is one of the
    /// initial objects).
    Added(K),
    /// An object changed.
    Modified(K),
    /// An object was deleted (or stopped matching the selector); its last state.
    Deleted(K),
    /// Progress: every change up to `resource_version` was sent.
    Bookmark {
        /// Resume a watch from here.
        resource_version: String,
        /// This bookmark ends the initial events of a `sendInitialEvents` watch.
        initial_events_end: bool,
    },
    /// The server ended the watch with an error (410 Expired: re-list).
    Error(Box<Status>),
}

/// A stream of watch events; ends when the server ends the watch.
pub type WatchStream<K> = BoxStream<'static, Result<WatchEvent<K>>>;

#[derive(Deserialize)]
#[serde(tag = "type", content = "object", bound = "K: DeserializeOwned")]
enum Wire<K> {
    #[serde(rename = "ADDED")]
    Added(K),
    #[serde(rename = "MODIFIED")]
    Modified(K),
    #[serde(rename = "DELETED")]
    Deleted(K),
    #[serde(rename = "BOOKMARK")]
    Bookmark(BookmarkObject),
    #[serde(rename = "ERROR")]
    Error(serde_json::Value),
}

#[derive(Deserialize, Default)]
struct BookmarkObject {
    #[serde(default)]
    metadata: BookmarkMeta,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct BookmarkMeta {
    #[serde(default)]
    resource_version: String,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// Decodes one event line.
pub(crate) fn parse_event<K: DeserializeOwned>(line: &[u8]) -> Result<WatchEvent<K>> {
    let w: Wire<K> = serde_json::from_slice(line)
        .map_err(|e| ClientError::Decode(format!("watch event: {e}")))?;
    Ok(match w {
        Wire::Added(k) => WatchEvent::Added(k),
        Wire::Modified(k) => WatchEvent::Modified(k),
        Wire::Deleted(k) => WatchEvent::Deleted(k),
        Wire::Bookmark(b) => WatchEvent::Bookmark {
            initial_events_end: b
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INITIAL_EVENTS_END))
                .is_some_and(|v| v == "true"),
            resource_version: b.metadata.resource_version,
        },
        Wire::Error(v) => WatchEvent::Error(Box::new(status_from_value(&v).unwrap_or_else(|| {
            let mut s = Status::success(None);
            s.status = "Failure".into();
            s.code = 500;
            s.reason = "InternalError".into();
            s.message = format!("watch error: {v}");
            s
        }))),
    })
}

/// Splits a byte stream into lines, holding at most `max` bytes of an unfinished line.
#[derive(Debug)]
pub(crate) struct LineBuffer {
    buf: BytesMut,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    max: usize,
}

impl LineBuffer {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            max,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line without its newline (empty lines skipped); an error once an
    /// unfinished line exceeds the bound.
    pub(crate) fn next_line(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let mut line = self.buf.split_to(self.scanned + i + 1);
                    self.scanned = 0;
                    line.truncate(line.len() - 1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    if line.len() > self.max {
                        return Err(ClientError::TooLarge { limit: self.max });
                    }
                    return Ok(Some(line.freeze()));
                }
                None => {
                    self.scanned = self.buf.len();
                    if self.buf.len() > self.max {
                        return Err(ClientError::TooLarge { limit: self.max });
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// What is left after the body ended (a last line without a newline).
    pub(crate) fn rest(&mut self) -> Option<Bytes> {
        let rest = self.buf.split().freeze();
        self.scanned = 0;
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }
}

/// A watch response body on either transport.
pub(crate) enum WatchBody {
    /// An HTTP/2 response body.
    Http(hyper::body::Incoming),
    /// A QUIC stream after its response head.
    Quic(super::quic::QuicBody),
}

impl WatchBody {
    /// The next chunk; `None` at the end of the body.
    async fn chunk(&mut self) -> Option<Result<Bytes>> {
        match self {
            WatchBody::Http(b) => loop {
                match b.frame().await? {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            return Some(Ok(data));
                        }
                    }
                    Err(e) => return Some(Err(ClientError::Http(e))),
                }
            },
            WatchBody::Quic(q) => q.chunk().await,
        }
    }
}

struct State {
    body: Option<WatchBody>,
    lines: LineBuffer,
}

/// The event stream of a watch response body.
pub(crate) fn decode_stream<K: DeserializeOwned + Send + 'static>(
    body: WatchBody,
) -> WatchStream<K> {
    let st = State {
        body: Some(body),
        lines: LineBuffer::new(MAX_WATCH_LINE),
    };
    Box::pin(futures::stream::unfold(st, |mut st| async move {
        loop {
            match st.lines.next_line() {
                Ok(Some(line)) => return Some((parse_event(&line), st)),
                Ok(None) => {}
                Err(e) => {
                    st.body = None;
                    return Some((Err(e), st));
                }
            }
            let body = st.body.as_mut()?;
            match body.chunk().await {
                Some(Ok(data)) => st.lines.push(&data),
                Some(Err(e)) => {
                    st.body = None;
                    return Some((Err(e), st));
                }
                None => {
                    st.body = None;
                    let rest = st.lines.rest()?;
                    return Some((parse_event(&rest), st));
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn lines_split_across_chunks_and_bounded() {
        let mut lb = LineBuffer::new(16);
        lb.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(
            lb.next_line().unwrap().unwrap(),
            Bytes::from_static(b"{\"a\":1}")
        );
        assert!(lb.next_line().unwrap().is_none());
        lb.push(b":2}\n\n");
        assert_eq!(
            lb.next_line().unwrap().unwrap(),
            Bytes::from_static(b"{\"b\":2}")
        );
        assert!(lb.next_line().unwrap().is_none());
        lb.push(&[b'x'; 17]);
        assert!(matches!(
            lb.next_line(),
            Err(ClientError::TooLarge { limit: 16 })
        ));
    }

    #[test]
    fn events_decode() {
        let ev: WatchEvent<ConfigMap> = parse_event(
            br#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","resourceVersion":"5"}}}"#,
        )
        .unwrap();
        let WatchEvent::Added(cm) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(cm.metadata.name.as_deref(), Some("a"));
        let ev: WatchEvent<ConfigMap> = parse_event(
            br#"{"type":"BOOKMARK","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"resourceVersion":"9","annotations":{"k8s.io/initial-events-end":"true"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            WatchEvent::Bookmark {
                resource_version: "9".into(),
                initial_events_end: true
            }
        );
        let ev: WatchEvent<ConfigMap> = parse_event(
            br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old","reason":"Expired","code":410}}"#,
        )
        .unwrap();
        let WatchEvent::Error(st) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!((st.code, st.reason.as_str()), (410, "Expired"));
        assert!(parse_event::<ConfigMap>(b"{\"type\":\"NOPE\",\"object\":{}}").is_err());
    }
}
