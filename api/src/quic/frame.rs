//! The sans-IO core of the QUIC endpoint's wire format: request and response heads in
//! HTTP/1.1 syntax, encoded and decoded incrementally over byte chunks. No sockets, no
//! clocks; the shells ([`super::server`] and the client's QUIC transport) feed it the bytes
//! they read and write what it encodes.
//!
//! A head is at most [`MAX_HEAD_BYTES`] bytes with at most [`MAX_HEADERS`] headers; a longer
//! or malformed head is an error, never a wait for more bytes.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

/// Largest request or response head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines in one head.
pub const MAX_HEADERS: usize = 64;

/// A head that cannot be decoded. Not retryable: the peer sent bytes this protocol rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The head is longer than [`MAX_HEAD_BYTES`].
    #[error("head longer than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// The head is not valid HTTP/1.1 head syntax (or has too many headers).
    #[error("malformed head: {0}")]
    Malformed(String),
    /// The stream ended before the head did.
    #[error("the stream ended inside the head")]
    Truncated,
}

/// A decoded request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// `GET` or `HEAD` (others are refused by the server with 405).
    pub method: Method,
    /// Path and query (`/api/v1/pods?watch=true`).
    pub uri: Uri,
    /// The request headers (`Authorization`, `Accept`, ...).
    pub headers: HeaderMap,
}

/// A decoded response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers (`Content-Type`, ...).
    pub headers: HeaderMap,
}

/// Encodes a request head: `METHOD path HTTP/1.1`, the headers, an empty line.
pub fn encode_request(method: &Method, path_and_query: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + path_and_query.len() + headers.len() * 32);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    encode_headers(&mut out, headers);
    out
}

/// Encodes a response head: `HTTP/1.1 code reason`, the headers, an empty line.
pub fn encode_response(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + headers.len() * 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    encode_headers(&mut out, headers);
    out
}

fn encode_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Collects the bytes of one head as they arrive and decodes it once complete.
#[derive(Debug, Default)]
pub struct HeadBuffer {
    buf: Vec<u8>,
}

impl HeadBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The request head, once complete, and the bytes after it; `Ok(None)`: more bytes
    /// are needed.
    pub fn request(&self) -> Result<Option<(RequestHead, &[u8])>, FrameError> {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut hs);
        match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
                    .map_err(|e| FrameError::Malformed(e.to_string()))?;
                let uri: Uri = req
                    .path
                    .unwrap_or("")
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| FrameError::Malformed(e.to_string()))?;
                if uri.scheme().is_some() || !uri.path().starts_with('/') {
                    return Err(FrameError::Malformed("the path must start with /".into()));
                }
                let headers = header_map(req.headers)?;
                Ok(Some((
                    RequestHead {
                        method,
                        uri,
                        headers,
                    },
                    &self.buf[n..],
                )))
            }
            Ok(httparse::Status::Partial) => self.partial(),
            Err(e) => Err(FrameError::Malformed(e.to_string())),
        }
    }

    /// The response head, once complete, and the bytes after it (the start of the body).
    pub fn response(&self) -> Result<Option<(ResponseHead, &[u8])>, FrameError> {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut hs);
        match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = StatusCode::from_u16(resp.code.unwrap_or(0))
                    .map_err(|e| FrameError::Malformed(e.to_string()))?;
                let headers = header_map(resp.headers)?;
                Ok(Some((ResponseHead { status, headers }, &self.buf[n..])))
            }
            Ok(httparse::Status::Partial) => self.partial(),
            Err(e) => Err(FrameError::Malformed(e.to_string())),
        }
    }

    fn partial<T>(&self) -> Result<Option<T>, FrameError> {
        if self.buf.len() >= MAX_HEAD_BYTES {
            Err(FrameError::TooLarge)
        } else {
            Ok(None)
        }
    }
}

fn header_map(hs: &[httparse::Header<'_>]) -> Result<HeaderMap, FrameError> {
    let mut map = HeaderMap::with_capacity(hs.len());
    for h in hs {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|e| FrameError::Malformed(e.to_string()))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_in_any_split() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        let path = "/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dx";
        let bytes = encode_request(&Method::GET, path, &h);
        for split in 0..bytes.len() {
            let mut b = HeadBuffer::new();
            b.push(&bytes[..split]);
            assert!(b.request().unwrap().is_none(), "split {split}");
            b.push(&bytes[split..]);
            b.push(b"extra");
            let (head, rest) = b.request().unwrap().unwrap();
            assert_eq!(head.method, Method::GET);
            assert_eq!(head.uri.path(), "/api/v1/namespaces/default/pods");
            assert_eq!(head.uri.query(), Some("watch=true&labelSelector=app%3Dx"));
            assert_eq!(head.headers, h);
            assert_eq!(rest, b"extra");
        }
    }

    #[test]
    fn response_round_trips_with_the_body_start() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut bytes = encode_response(StatusCode::GONE, &h);
        bytes.extend_from_slice(b"{\"kind\":\"Status\"}");
        let mut b = HeadBuffer::new();
        b.push(&bytes);
        let (head, rest) = b.response().unwrap().unwrap();
        assert_eq!(head.status, StatusCode::GONE);
        assert_eq!(head.headers, h);
        assert_eq!(rest, b"{\"kind\":\"Status\"}");
    }

    #[test]
    fn oversize_and_malformed_heads_are_errors() {
        let mut b = HeadBuffer::new();
        b.push(b"GET /api/v1/pods HTTP/1.1\r\nX-Pad: ");
        b.push(&vec![b'a'; MAX_HEAD_BYTES]);
        assert_eq!(b.request().unwrap_err(), FrameError::TooLarge);

        let mut b = HeadBuffer::new();
        b.push(b"GET http://evil/x HTTP/1.1\r\n\r\n");
        assert!(matches!(b.request(), Err(FrameError::Malformed(_))));

        let mut b = HeadBuffer::new();
        b.push(b"\x00\x01garbage\r\n\r\n");
        assert!(matches!(b.request(), Err(FrameError::Malformed(_))));

        let mut b = HeadBuffer::new();
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        b.push(&many);
        assert!(matches!(b.request(), Err(FrameError::Malformed(_))));
    }
}
