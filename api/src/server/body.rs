//! Response bodies and request-body reading with limits.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::status::ApiError;

/// Largest request body accepted (as kube-apiserver: 3 MiB).
pub const MAX_REQUEST_BODY: usize = 3 * 1024 * 1024;

/// How long a client may take to send its whole request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Every response body: a full buffer or a stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).boxed()
}

/// A response with `status`, a content type and `bytes`.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    bytes: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON response.
pub fn json(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    response(status, "application/json", bytes)
}

/// The `metav1.Status` answer for `e`.
pub fn error(e: &ApiError) -> Response<Body> {
    json(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        e.to_body(),
    )
}

/// Reads a whole request body: at most [`MAX_REQUEST_BODY`] bytes (413 beyond) within
/// [`BODY_READ_TIMEOUT`] (408-like 504 Timeout beyond).
pub async fn read_limited(body: hyper::body::Incoming) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > MAX_REQUEST_BODY as u64 {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, MAX_REQUEST_BODY);
    match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(ApiError::timeout("timed out reading the request body")),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(too_large())
            } else {
                Err(ApiError::bad_request(format!(
                    "reading the request body: {e}"
                )))
            }
        }
    }
}

fn too_large() -> ApiError {
    ApiError::request_entity_too_large(format!(
        "the request body is larger than the limit of {MAX_REQUEST_BODY} bytes"
    ))
}

/// A streaming body fed by a bounded channel (watch responses). The stream ends when the
/// sender is dropped.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it, holding at most `bound` chunks.
    pub fn new(bound: usize) -> (tokio::sync::mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(bound);
        (tx, Self { rx })
    }
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Size of the chunks a [`JoinedBody`] hands to the connection.
const JOINED_CHUNK: usize = 64 * 1024;

/// A body made of `prefix`, the `items` separated by `separator`, then `suffix` (a LIST:
/// the list's head, its objects, the closing brackets), sent in chunks of about
/// [`JOINED_CHUNK`] bytes. A LIST of 100,000 pods is over 200 MB: assembling it in one buffer
/// made the kernel zero that many fresh pages on every LIST (more than half the server's
/// CPU for it), while chunks of this size are recycled by the allocator.
pub struct JoinedBody {
    prefix: Option<Bytes>,
    items: std::vec::IntoIter<Bytes>,
    separator: &'static [u8],
    suffix: Option<Bytes>,
    first_item: bool,
    remaining: u64,
}

impl JoinedBody {
    /// The body `prefix item0 separator item1 ... suffix`.
    pub fn new(prefix: Bytes, items: Vec<Bytes>, separator: &'static [u8], suffix: Bytes) -> Self {
        let items_len: usize = items.iter().map(Bytes::len).sum();
        let separators = items.len().saturating_sub(1) * separator.len();
        let remaining = (prefix.len() + items_len + separators + suffix.len()) as u64;
        Self {
            prefix: Some(prefix),
            items: items.into_iter(),
            separator,
            suffix: Some(suffix),
            first_item: true,
            remaining,
        }
    }

    /// The next chunk, or `None` once everything was handed out.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.prefix.is_none() && self.suffix.is_none() {
            return None;
        }
        let mut chunk = bytes::BytesMut::with_capacity(JOINED_CHUNK + 1024);
        if let Some(p) = self.prefix.take() {
            chunk.extend_from_slice(&p);
        }
        while chunk.len() < JOINED_CHUNK {
            match self.items.next() {
                Some(item) => {
                    if !self.first_item {
                        chunk.extend_from_slice(self.separator);
                    }
                    self.first_item = false;
                    chunk.extend_from_slice(&item);
                }
                None => {
                    if let Some(s) = self.suffix.take() {
                        chunk.extend_from_slice(&s);
                    }
                    break;
                }
            }
        }
        self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
        Some(chunk.freeze())
    }
}

impl HttpBody for JoinedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.next_chunk().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.suffix.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_body_is_prefix_items_suffix_in_bounded_chunks() {
        let items: Vec<Bytes> = (0..5000)
            .map(|i| Bytes::from(format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 97))))
            .collect();
        let mut want = b"{\"items\":[".to_vec();
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                want.push(b',');
            }
            want.extend_from_slice(it);
        }
        want.extend_from_slice(b"]}");
        let mut body = JoinedBody::new(
            Bytes::from_static(b"{\"items\":["),
            items,
            b",",
            Bytes::from_static(b"]}"),
        );
        assert_eq!(body.size_hint().exact(), Some(want.len() as u64));
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(c) = body.next_chunk() {
            assert!(c.len() <= JOINED_CHUNK + 200, "chunk of {} bytes", c.len());
            got.extend_from_slice(&c);
            chunks += 1;
        }
        assert!(chunks > 1, "a large body comes in several chunks");
        assert_eq!(got, want);
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.is_end_stream());
    }

    #[test]
    fn joined_body_without_items() {
        let mut body = JoinedBody::new(
            Bytes::from_static(b"["),
            Vec::new(),
            b",",
            Bytes::from_static(b"]"),
        );
        assert_eq!(body.next_chunk().as_deref(), Some(&b"[]"[..]));
        assert!(body.next_chunk().is_none());
    }
}
