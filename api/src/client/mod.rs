//! # client — the Rust client of the kubeshard (and any Kubernetes) apiserver
//!
//! The scheduler, controllers, kubelet and proxy talk to the apiserver through this module,
//! over the network like any other client. It holds:
//!
//! - [`Client`]: a cheap-to-clone handle on a small pool of HTTP/2 connections (TLS with
//!   ALPN h2 via rustls/ring, or h2c for `http://` servers); many requests and watches are
//!   multiplexed as streams on each connection, and a lost connection is replaced on the
//!   next request. Built from a kubeconfig ([`Client::from_kubeconfig`]) or a
//!   [`ClientConfig`].
//! - [`Api`]: typed CRUD, patch, subresources and watch for any k8s-openapi resource, with
//!   paths computed from the type (`/api/v1/...` for the core group, `/apis/g/v/...`
//!   otherwise); [`Api<DynamicObject>`] with an [`ApiResource`] does the same untyped, for
//!   custom resources and generic controllers.
//! - [`WatchEvent`] streams decoded incrementally from newline-delimited JSON, each line
//!   bounded by [`MAX_WATCH_LINE`]; over HTTP/2 by default, or as streams on the server's
//!   QUIC endpoint ([`crate::quic`]) with [`ClientConfig::with_quic_watches`] (lists and
//!   writes stay on HTTP/2).
//! - [`runtime`]: reflectors/informers ([`runtime::Informer`], [`runtime::Store`]) that list,
//!   watch, resume from bookmarks, relist on 410 and back off.
//! - [`leader`]: leader election over a `coordination.k8s.io/v1` Lease.
//!
//! Errors are [`ClientError`]; a server refusal is [`ClientError::Api`] carrying the decoded
//! `metav1.Status` (`e.is_not_found()`, `e.is_conflict()`, `e.is_gone()`, ...).
//!
//! Bounds: connections per client ([`ClientConfig::connections`], at most 64), request
//! timeout, connect timeout, response size ([`ClientConfig::max_response_bytes`]), watch line
//! size, informer backoff (200 ms to 30 s).

mod api;
mod config;
mod error;
pub mod leader;
mod params;
mod quic;
pub mod runtime;
mod transport;
mod watch;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;

pub use api::{Api, ApiObject, ApiResource, DeleteResponse, DynamicObject, ObjectList, TypeMeta};
pub use config::ClientConfig;
pub use error::{ClientError, Result};
pub use params::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
    ValidationDirective, WatchParams,
};
pub use transport::TransportStats;
pub use watch::{MAX_WATCH_LINE, WatchEvent, WatchStream};

pub use crate::status::Status;

/// A handle on one apiserver: a pool of HTTP/2 connections plus credentials. Cloning is
/// cheap (an `Arc`); clones share the connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    pool: transport::Pool,
    /// Watches over QUIC, when configured.
    quic: Option<quic::QuicPool>,
    token: Option<HeaderValue>,
    user_agent: HeaderValue,
    timeout: Duration,
    gzip: bool,
    max_response_bytes: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.pool.endpoint.origin)
            .finish()
    }
}

impl Client {
    /// A client for `cfg`. Connects lazily, on the first request; fails now only on a
    /// bad configuration (server URL, certificates, key).
    pub fn new(cfg: ClientConfig) -> Result<Self> {
        let pool = transport::Pool::new(&cfg)?;
        let quic = quic::QuicPool::new(&cfg, &pool.endpoint)?;
        let token = match &cfg.token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| ClientError::Kubeconfig("token is not a valid header".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let user_agent = HeaderValue::from_str(&cfg.user_agent)
            .map_err(|_| ClientError::InvalidRequest("user agent is not a valid header".into()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                quic,
                token,
                user_agent,
                timeout: cfg.timeout,
                gzip: cfg.gzip,
                max_response_bytes: cfg.max_response_bytes,
            }),
        })
    }

    /// A client for the current context of the kubeconfig at `path`.
    pub fn from_kubeconfig(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::new(ClientConfig::from_kubeconfig(path)?)
    }

    /// The server origin (`https://host:port`).
    pub fn server(&self) -> &str {
        &self.inner.pool.endpoint.origin
    }

    /// Transport counters (connections made, requests sent).
    pub fn stats(&self) -> TransportStats {
        let mut s = self.inner.pool.stats();
        if let Some(q) = &self.inner.quic {
            s.quic_connects = q.connects.load(Ordering::Relaxed);
        }
        s
    }

    /// Whether watches run over the server's QUIC endpoint
    /// ([`ClientConfig::quic_watch_port`]).
    pub fn quic_watches(&self) -> bool {
        self.inner.quic.is_some()
    }

    /// Starts a watch over HTTP/2 or QUIC, as configured: the body once the response head
    /// arrived (bounded by the request timeout); a refusal is the server's Status.
    pub(crate) async fn watch_body(&self, path_and_query: &str) -> Result<watch::WatchBody> {
        let Some(q) = &self.inner.quic else {
            return Ok(watch::WatchBody::Http(self.stream(path_and_query).await?));
        };
        let ep = &self.inner.pool.endpoint;
        let path = format!("{}{}", ep.prefix, path_and_query);
        let headers = quic::headers(&self.inner.user_agent, self.inner.token.as_ref());
        self.inner.pool.requests.fetch_add(1, Ordering::Relaxed);
        Ok(watch::WatchBody::Quic(
            q.watch(&path, &headers, self.inner.timeout).await?,
        ))
    }

    fn build(
        &self,
        method: &Method,
        path_and_query: &str,
        body: Option<(&Bytes, &str)>,
        watch: bool,
    ) -> Result<Request<Full<Bytes>>> {
        let ep = &self.inner.pool.endpoint;
        let uri = format!("{}{}{}", ep.origin, ep.prefix, path_and_query);
        let mut b = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, self.inner.user_agent.clone());
        if let Some(t) = &self.inner.token {
            b = b.header(header::AUTHORIZATION, t.clone());
        }
        if self.inner.gzip && !watch {
            b = b.header(header::ACCEPT_ENCODING, "gzip");
        }
        let body = match body {
            Some((bytes, ct)) => {
                b = b.header(header::CONTENT_TYPE, ct);
                bytes.clone()
            }
            None => Bytes::new(),
        };
        b.body(Full::new(body))
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))
    }

    /// Sends one request, retrying once on a fresh connection when an idempotent request
    /// failed because its connection had just closed.
    async fn send(
        &self,
        method: &Method,
        path_and_query: &str,
        body: Option<(&Bytes, &str)>,
        watch: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let idempotent = matches!(*method, Method::GET | Method::HEAD);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = self.build(method, path_and_query, body, watch)?;
            let mut sender = self.inner.pool.sender().await?;
            self.inner.pool.requests.fetch_add(1, Ordering::Relaxed);
            match sender.send_request(req).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt < 2 && idempotent && (e.is_closed() || e.is_canceled()) => {
                    continue;
                }
                Err(e) => return Err(ClientError::Http(e)),
            }
        }
    }

    /// Sends a request and reads the whole response; a non-2xx answer becomes a
    /// [`ClientError`] (`Api(Status)` when the body is a Status).
    pub async fn request_bytes(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &str)>,
    ) -> Result<Bytes> {
        let fut = async {
            let resp = self
                .send(
                    &method,
                    path_and_query,
                    body.as_ref().map(|(b, c)| (b, *c)),
                    false,
                )
                .await?;
            let code = resp.status().as_u16();
            let gz = resp
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let limit = self.inner.max_response_bytes;
            let bytes = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(h) => ClientError::Http(*h),
                    Err(_) => ClientError::TooLarge { limit },
                })?
                .to_bytes();
            let bytes = if gz { gunzip(&bytes, limit)? } else { bytes };
            if (200..300).contains(&code) {
                Ok(bytes)
            } else {
                Err(error::error_from_response(code, &bytes))
            }
        };
        tokio::time::timeout(self.inner.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout(self.inner.timeout))?
    }

    /// GETs `path` (e.g. `/version`) and decodes the JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let b = self.request_bytes(Method::GET, path, None).await?;
        decode(&b)
    }

    /// Starts a streaming GET (a watch): waits for the response headers only (bounded by
    /// the request timeout); a non-200 answer is read and returned as an error.
    pub(crate) async fn stream(&self, path_and_query: &str) -> Result<hyper::body::Incoming> {
        let fut = async {
            let resp = self.send(&Method::GET, path_and_query, None, true).await?;
            let code = resp.status().as_u16();
            if code == 200 {
                return Ok(resp.into_body());
            }
            let bytes = Limited::new(resp.into_body(), 1 << 20)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            Err(error::error_from_response(code, &bytes))
        };
        tokio::time::timeout(self.inner.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout(self.inner.timeout))?
    }
}

/// Decodes a JSON body into `T`.
pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| ClientError::Decode(e.to_string()))
}

fn gunzip(b: &[u8], limit: usize) -> Result<Bytes> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ClientError::Decode(format!("gzip: {e}")))?;
    if out.len() > limit {
        return Err(ClientError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}
