//! The QUIC endpoint's shell: a quinn endpoint on its own multi-threaded tokio runtime,
//! a task per connection and per stream; each stream's request head goes through the
//! sans-IO [`super::frame`] core, then `rest::handle_read`, and the response body is
//! copied onto the stream as the client reads it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;

use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use quinn::VarInt;
use tokio::sync::watch;

use super::frame::{self, FrameError, HeadBuffer};
use super::{
    CLOSE_STOPPING, HEAD_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_STREAMS_PER_CONNECTION,
    QuicPort, RESET_STALLED, SEND_WINDOW, WRITE_STALL_TIMEOUT,
};
use crate::auth::UserInfo;
use crate::server::body::Body;
use crate::server::{App, ConnInfo, ServerError};
use crate::status::ApiError;

/// Request heads are small: the client's stream and connection windows toward the server.
const REQUEST_STREAM_WINDOW: u32 = 64 * 1024;
const REQUEST_CONN_WINDOW: u32 = 4 << 20;
/// Time open streams get to finish when the server stops.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A started QUIC endpoint.
pub(crate) struct Started {
    pub(crate) port: u16,
    pub(crate) thread: JoinHandle<()>,
}

fn quic_err(e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(format!("QUIC: {e}"))
}

/// The quinn server configuration: `tls` (the TLS port's, with our ALPN) and the bounds.
fn server_config(tls: &rustls::ServerConfig) -> Result<quinn::ServerConfig, ServerError> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![super::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).map_err(quic_err)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(quic_err)?))
        .stream_receive_window(VarInt::from_u32(REQUEST_STREAM_WINDOW))
        .receive_window(VarInt::from_u32(REQUEST_CONN_WINDOW))
        .send_window(SEND_WINDOW);
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind(addr)
}

/// Where the endpoint binds: `port` on `ip`; `tls_port` is the TLS port actually bound
/// (for [`QuicPort::SameAsTls`]), `tls_ephemeral` says the system picked it.
pub(crate) struct Listen {
    pub(crate) ip: IpAddr,
    pub(crate) port: QuicPort,
    pub(crate) tls_port: u16,
    pub(crate) tls_ephemeral: bool,
}

/// Binds the UDP port and starts serving on `threads` worker threads until `stop` turns
/// true; `None` when the endpoint is off.
pub(crate) fn start(
    app: Arc<App>,
    tls: &rustls::ServerConfig,
    listen: Listen,
    threads: usize,
    stop: watch::Receiver<bool>,
) -> Result<Option<Started>, ServerError> {
    let Listen {
        ip,
        port,
        tls_port,
        tls_ephemeral,
    } = listen;
    let socket = match port {
        QuicPort::Off => return Ok(None),
        QuicPort::Port(p) => bind(SocketAddr::new(ip, p)),
        QuicPort::SameAsTls => match bind(SocketAddr::new(ip, tls_port)) {
            Err(_) if tls_ephemeral => bind(SocketAddr::new(ip, 0)),
            r => r,
        },
    }
    .map_err(|source| ServerError::Io {
        what: "binding the QUIC (UDP) port".into(),
        source,
    })?;
    let port = socket
        .local_addr()
        .map_err(|source| ServerError::Io {
            what: "QUIC local address".into(),
            source,
        })?
        .port();
    let cfg = server_config(tls)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("api-quic")
        .enable_all()
        .build()
        .map_err(|source| ServerError::Io {
            what: "starting the QUIC runtime".into(),
            source,
        })?;
    let endpoint = {
        let _guard = rt.enter();
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(cfg),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| ServerError::Io {
            what: "starting the QUIC endpoint".into(),
            source,
        })?
    };
    let thread = std::thread::Builder::new()
        .name("api-quic-main".into())
        .spawn(move || {
            rt.block_on(serve(endpoint, app, stop));
            rt.shutdown_timeout(STOP_GRACE);
        })
        .map_err(|source| ServerError::Io {
            what: "spawning the QUIC thread".into(),
            source,
        })?;
    Ok(Some(Started { port, thread }))
}

async fn serve(endpoint: quinn::Endpoint, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = stop.changed() => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        tokio::spawn(connection(app.clone(), incoming, permit, stop.clone()));
    }
    endpoint.close(VarInt::from_u32(CLOSE_STOPPING), b"server stopping");
    let _ = tokio::time::timeout(STOP_GRACE, endpoint.wait_idle()).await;
}

/// The verified client certificate's identity, if the client presented one.
fn cert_user(conn: &quinn::Connection) -> Option<UserInfo> {
    let id = conn.peer_identity()?;
    let certs = id
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().and_then(|c| UserInfo::from_client_cert(c))
}

async fn connection(
    app: Arc<App>,
    incoming: quinn::Incoming,
    _permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let conn = match tokio::time::timeout(HEAD_TIMEOUT, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!("QUIC handshake: {e}");
            return;
        }
        Err(_) => return,
    };
    let info = Arc::new(ConnInfo {
        secure: true,
        cert_user: cert_user(&conn),
    });
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("QUIC connection: {e}");
                    return;
                }
            },
            _ = stop.changed() => {
                conn.close(VarInt::from_u32(CLOSE_STOPPING), b"server stopping");
                return;
            }
        };
        tokio::spawn(stream(app.clone(), info.clone(), send, recv));
    }
}

/// Reads one request head (the rest of the client's side is ignored).
async fn read_head(recv: &mut quinn::RecvStream) -> Result<frame::RequestHead, FrameError> {
    let mut buf = HeadBuffer::new();
    loop {
        match recv.read_chunk(frame::MAX_HEAD_BYTES, true).await {
            Ok(Some(c)) => buf.push(&c.bytes),
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Malformed(e.to_string())),
        }
        if let Some((head, _)) = buf.request()? {
            return Ok(head);
        }
    }
}

/// Serves one stream: head, handler, response head, body.
async fn stream(
    app: Arc<App>,
    info: Arc<ConnInfo>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut recv)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let resp = crate::server::body::error(&ApiError::bad_request(format!(
                "QUIC request head: {e}"
            )));
            respond(&mut send, resp, false).await;
            return;
        }
        Err(_) => {
            let resp = crate::server::body::error(&ApiError::timeout(
                "timed out reading the QUIC request head",
            ));
            respond(&mut send, resp, false).await;
            return;
        }
    };
    drop(recv);
    let resp = crate::rest::handle_read(&app, &info, &head.method, &head.uri, head.headers).await;
    respond(&mut send, resp, head.method == Method::HEAD).await;
}

/// Writes the response head, then the body as the client takes it, then finishes the
/// stream. Stops early when the client stops the stream or the connection goes.
async fn respond(send: &mut quinn::SendStream, resp: http::Response<Body>, head_only: bool) {
    let (parts, mut body) = resp.into_parts();
    let head = frame::encode_response(parts.status, &without_hop_headers(parts.headers));
    if send.write_all(&head).await.is_err() {
        return;
    }
    if !head_only && parts.status != StatusCode::NO_CONTENT {
        // An idle watch waits for its next event: a client that goes away must end it too.
        let stopped = send.stopped();
        tokio::pin!(stopped);
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = &mut stopped => return,
            };
            let Some(Ok(frame)) = frame else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match tokio::time::timeout(WRITE_STALL_TIMEOUT, send.write_chunk(data)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    let _ = send.reset(VarInt::from_u32(RESET_STALLED));
                    return;
                }
            }
        }
    }
    // quinn delivers the rest and the end of the stream after the handle is gone.
    let _ = send.finish();
}

/// Headers that describe an HTTP/1.1 or HTTP/2 transfer, not the response.
fn without_hop_headers(mut h: HeaderMap) -> HeaderMap {
    h.remove(http::header::CONTENT_LENGTH);
    h.remove(http::header::TRANSFER_ENCODING);
    h.remove(http::header::CONNECTION);
    h
}
