//! Watches over the apiserver's QUIC endpoint ([`crate::quic`]): a few QUIC connections,
//! each carrying up to [`crate::quic::MAX_STREAMS_PER_CONNECTION`] watches as streams; a
//! connection found closed is replaced by the next watch that picks its slot (a fresh
//! endpoint and a 1-RTT handshake), and the caller (an informer) resumes from the last
//! resourceVersion it saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use quinn::VarInt;

use super::config::{ClientConfig, Endpoint};
use super::error::{ClientError, Result};
use crate::quic::frame::{self, HeadBuffer};

/// Unread bytes the server may send on one watch stream.
pub(crate) const STREAM_WINDOW: u32 = 512 * 1024;
/// Unread bytes over all streams of a connection: 256 streams' windows, so that many
/// watches left unread still leave the others flowing.
const CONNECTION_WINDOW: u32 = 128 << 20;
/// Keep-alive pings, so an idle watch connection is neither closed by the server's idle
/// timeout nor kept on a dead server for long.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// A connection without any packet from the server for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest error body read from a refused watch.
const MAX_ERROR_BODY: usize = 1 << 20;
/// Most QUIC connections a client keeps.
const MAX_CONNECTIONS: usize = 64;

/// A live QUIC connection and the endpoint (UDP socket) it runs on.
#[derive(Clone)]
struct Live {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

#[derive(Default)]
struct Slot {
    live: Mutex<Option<Live>>,
    connecting: tokio::sync::Mutex<()>,
}

pub(crate) struct QuicPool {
    host: String,
    port: u16,
    server_name: String,
    crypto: Arc<quinn::crypto::rustls::QuicClientConfig>,
    slots: Vec<Slot>,
    next: AtomicUsize,
    connect_timeout: Duration,
    pub(crate) connects: AtomicU64,
}

/// A watch response body arriving on a QUIC stream.
pub(crate) struct QuicBody {
    /// Body bytes that came with the response head.
    pub(crate) first: Option<Bytes>,
    pub(crate) recv: quinn::RecvStream,
}

impl QuicBody {
    /// The next chunk of the body; `None` at its end.
    pub(crate) async fn chunk(&mut self) -> Option<Result<Bytes>> {
        if let Some(b) = self.first.take() {
            return Some(Ok(b));
        }
        match self.recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => Some(Ok(c.bytes)),
            Ok(None) => None,
            Err(e) => Some(Err(ClientError::Quic(e.to_string()))),
        }
    }
}

impl QuicPool {
    /// The pool for `cfg`, if it asks for QUIC watches.
    pub(crate) fn new(cfg: &ClientConfig, ep: &Endpoint) -> Result<Option<Self>> {
        let Some(port) = cfg.quic_watch_port else {
            return Ok(None);
        };
        if !ep.https {
            return Err(ClientError::Kubeconfig(
                "QUIC watches need an https server".into(),
            ));
        }
        let (tls, name) = super::config::tls_config(cfg, ep)?;
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![crate::quic::ALPN.to_vec()];
        tls.enable_early_data = false;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(|e| ClientError::Tls(format!("QUIC: {e}")))?;
        Ok(Some(Self {
            host: ep.host.clone(),
            port: if port == 0 { ep.port } else { port },
            server_name: name.to_str().into_owned(),
            crypto: Arc::new(crypto),
            slots: (0..cfg.connections.clamp(1, MAX_CONNECTIONS))
                .map(|_| Slot::default())
                .collect(),
            next: AtomicUsize::new(0),
            connect_timeout: cfg.connect_timeout,
            connects: AtomicU64::new(0),
        }))
    }

    fn connect_err(&self, message: impl std::fmt::Display) -> ClientError {
        ClientError::Connect {
            server: format!("quic://{}:{}", self.host, self.port),
            message: message.to_string(),
        }
    }

    fn client_config(&self) -> quinn::ClientConfig {
        let mut cfg = quinn::ClientConfig::new(self.crypto.clone());
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
            .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
            .keep_alive_interval(Some(KEEPALIVE));
        if let Ok(idle) = IDLE_TIMEOUT.try_into() {
            t.max_idle_timeout(Some(idle));
        }
        cfg.transport_config(Arc::new(t));
        cfg
    }

    async fn connect(&self) -> Result<Live> {
        let addr: SocketAddr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.connect_err(e))?
            .next()
            .ok_or_else(|| self.connect_err("no address"))?;
        let bind: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| self.connect_err(e))?;
        endpoint.set_default_client_config(self.client_config());
        let conn = endpoint
            .connect(addr, &self.server_name)
            .map_err(|e| self.connect_err(e))?
            .await
            .map_err(|e| self.connect_err(format!("QUIC handshake: {e}")))?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(Live {
            conn,
            _endpoint: endpoint,
        })
    }

    /// A live connection (round-robin over the slots), connecting if needed.
    async fn connection(&self) -> Result<Live> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        if let Some(l) = live(slot) {
            return Ok(l);
        }
        let _guard = slot.connecting.lock().await;
        if let Some(l) = live(slot) {
            return Ok(l);
        }
        let l = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| {
                self.connect_err(format!("timed out after {:?}", self.connect_timeout))
            })??;
        if let Ok(mut g) = slot.live.lock() {
            *g = Some(l.clone());
        }
        Ok(l)
    }

    /// Opens a stream, sends the request head for `path_and_query` and reads the response
    /// head (bounded by `timeout`); a non-200 answer is read and returned as an error.
    /// Retries once on a fresh connection when the chosen one had just closed.
    pub(crate) async fn watch(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<QuicBody> {
        let head = frame::encode_request(&Method::GET, path_and_query, headers);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let live = self.connection().await?;
            let fut = exchange(&live.conn, &head);
            match tokio::time::timeout(timeout, fut).await {
                Err(_) => return Err(ClientError::Timeout(timeout)),
                Ok(Err(Exchange::Lost(_))) if attempt < 2 => continue,
                Ok(Err(Exchange::Lost(e))) => return Err(ClientError::Quic(e)),
                Ok(Err(Exchange::Failed(e))) => return Err(e),
                Ok(Ok(body)) => return Ok(body),
            }
        }
    }
}

enum Exchange {
    /// The connection was gone before the server answered (safe to retry).
    Lost(String),
    Failed(ClientError),
}

async fn exchange(
    conn: &quinn::Connection,
    head: &[u8],
) -> std::result::Result<QuicBody, Exchange> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Exchange::Lost(e.to_string()))?;
    send.write_all(head)
        .await
        .map_err(|e| Exchange::Lost(e.to_string()))?;
    let _ = send.finish();
    let mut buf = HeadBuffer::new();
    let (status, first) = loop {
        match recv.read_chunk(frame::MAX_HEAD_BYTES, true).await {
            Ok(Some(c)) => buf.push(&c.bytes),
            Ok(None) => {
                return Err(Exchange::Failed(ClientError::Quic(
                    "the stream ended before the response head".into(),
                )));
            }
            Err(quinn::ReadError::ConnectionLost(e)) => return Err(Exchange::Lost(e.to_string())),
            Err(e) => return Err(Exchange::Failed(ClientError::Quic(e.to_string()))),
        }
        match buf.response() {
            Ok(Some((h, rest))) => break (h.status, Bytes::copy_from_slice(rest)),
            Ok(None) => {}
            Err(e) => return Err(Exchange::Failed(ClientError::Quic(e.to_string()))),
        }
    };
    if status.as_u16() == 200 {
        return Ok(QuicBody {
            first: (!first.is_empty()).then_some(first),
            recv,
        });
    }
    let mut body = first.to_vec();
    while body.len() <= MAX_ERROR_BODY {
        match recv.read_chunk(MAX_ERROR_BODY, true).await {
            Ok(Some(c)) => body.extend_from_slice(&c.bytes),
            _ => break,
        }
    }
    Err(Exchange::Failed(super::error::error_from_response(
        status.as_u16(),
        &body,
    )))
}

fn live(slot: &Slot) -> Option<Live> {
    let g = slot.live.lock().ok()?;
    g.as_ref()
        .filter(|l| l.conn.close_reason().is_none())
        .cloned()
}

/// The request headers of a QUIC watch.
pub(crate) fn headers(user_agent: &HeaderValue, token: Option<&HeaderValue>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(header::USER_AGENT, user_agent.clone());
    if let Some(t) = token {
        h.insert(header::AUTHORIZATION, t.clone());
    }
    h
}
