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
