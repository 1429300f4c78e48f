//! The connection pool: a few HTTP/2 connections (TLS with ALPN h2, or h2c for http://),
//! each carrying many concurrent streams; a connection found closed is replaced on the next
//! request that picks its slot.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;

use super::config::{ClientConfig, Endpoint};
use super::error::{ClientError, Result};

const H2_STREAM_WINDOW: u32 = 4 << 20;
const H2_CONN_WINDOW: u32 = 16 << 20;
const H2_MAX_FRAME: u32 = 1 << 20;
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections a client keeps, whatever the configuration asks.
const MAX_CONNECTIONS: usize = 64;

type Sender = SendRequest<Full<Bytes>>;

/// One pooled connection slot.
#[derive(Default)]
struct Slot {
    /// The live connection, if any (fast path; held only to clone).
    live: Mutex<Option<Sender>>,
    /// Held while (re)connecting so concurrent requests wait for one new connection.
    connecting: tokio::sync::Mutex<()>,
}

/// Counters of a client's transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Connections established since the client was created (reconnects included).
    pub connects: u64,
    /// Requests sent (watches over QUIC included).
    pub requests: u64,
    /// QUIC connections established for watches (reconnects included).
    pub quic_connects: u64,
}

pub(crate) struct Pool {
    pub(crate) endpoint: Endpoint,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    slots: Vec<Slot>,
    next: AtomicUsize,
    connect_timeout: Duration,
    connects: AtomicU64,
    pub(crate) requests: AtomicU64,
}

impl Pool {
    pub(crate) fn new(cfg: &ClientConfig) -> Result<Self> {
        let endpoint = Endpoint::parse(&cfg.server)?;
        let tls = if endpoint.https {
            let (c, name) = super::config::tls_config(cfg, &endpoint)?;
            Some((tokio_rustls::TlsConnector::from(c), name))
        } else {
            None
        };
        let n = cfg.connections.clamp(1, MAX_CONNECTIONS);
        Ok(Self {
            endpoint,
            tls,
            slots: (0..n).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            connect_timeout: cfg.connect_timeout,
            connects: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    pub(crate) fn stats(&self) -> TransportStats {
        TransportStats {
            connects: self.connects.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            quic_connects: 0,
        }
    }

    /// A sender on a live connection (round-robin over the slots), connecting if needed.
    pub(crate) async fn sender(&self) -> Result<Sender> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        if let Some(s) = live(slot) {
            return Ok(s);
        }
        let _guard = slot.connecting.lock().await;
        // Another request may have connected while we waited.
        if let Some(s) = live(slot) {
            return Ok(s);
        }
        let s = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| {
                self.connect_err(format!("timed out after {:?}", self.connect_timeout))
            })??;
        if let Ok(mut g) = slot.live.lock() {
            *g = Some(s.clone());
        }
        Ok(s)
    }

    fn connect_err(&self, message: String) -> ClientError {
        ClientError::Connect {
            server: self.endpoint.origin.clone(),
            message,
        }
    }

    async fn connect(&self) -> Result<Sender> {
        let ep = &self.endpoint;
        let tcp = tokio::net::TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| self.connect_err(e.to_string()))?;
        // Small requests must not wait for delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
            .max_frame_size(H2_MAX_FRAME)
            .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let sender = match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| self.connect_err(format!("TLS handshake: {e}")))?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(
                        self.connect_err("the server did not agree to HTTP/2 (ALPN h2)".into())
                    );
                }
                let (s, conn) = b
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| self.connect_err(format!("HTTP/2 handshake: {e}")))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("client connection ended: {e}");
                    }
                });
                s
            }
            None => {
                let (s, conn) = b
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| self.connect_err(format!("HTTP/2 handshake: {e}")))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("client connection ended: {e}");
                    }
                });
                s
            }
        };
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }
}

fn live(slot: &Slot) -> Option<Sender> {
    let g = slot.live.lock().ok()?;
    g.as_ref().filter(|s| !s.is_closed()).cloned()
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.endpoint.origin)
            .field("connections", &self.slots.len())
            .finish()
    }
}
