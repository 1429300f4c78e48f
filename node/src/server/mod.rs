//! The kubelet's HTTPS API (port 10250 by default), which the apiserver proxies
//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward` to:
//!
//! | path | what |
//! |---|---|
//! | `GET /healthz` | `ok` |
//! | `GET /pods` | a PodList of the sandboxes and containers the runtime holds |
//! | `GET /stats/summary` | node, pod and container usage (stats API v1alpha1 `Summary`) |
//! | `GET /containerLogs/{ns}/{pod}/{container}` | the CRI log ([`logs`]) |
//! | `GET\|POST /exec/{ns}/{pod}[/{uid}]/{container}?command=..` | [`remotecommand`] |
//! | `GET\|POST /attach/{ns}/{pod}[/{uid}]/{container}` | the container's output from now on |
//! | `GET\|POST /portForward/{ns}/{pod}[/{uid}]` | [`portforward`] |
//!
//! The streaming endpoints take an HTTP/1.1 upgrade: WebSocket (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`, `SPDY/3.1+portforward.k8s.io`) or SPDY/3.1 (with
//! `X-Stream-Protocol-Version`). Containers are found through the runtime alone: the
//! sandbox's pod name, namespace (and uid when given) plus the container name; `previous`
//! is the newest exited instance that is not the current one.
//!
//! TLS: a serving certificate from the configuration, else a self-signed one; when a client
//! CA is configured every client must present a certificate it signed (the apiserver's
//! `apiserver-kubelet-client`).

pub mod logs;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::sync::mpsc;

use crate::runtime::{ContainerState, ContainerStatus, ExecRequest, Runtime};

/// The kubelet's default API port.
pub const DEFAULT_PORT: u16 = 10250;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address to listen on (`0.0.0.0:10250` for a real node; tests use loopback).
    pub address: SocketAddr,
    /// Serving certificate and key (PEM); a self-signed pair is made when absent.
    pub cert_pem: Option<String>,
    /// The serving key (PEM).
    pub key_pem: Option<String>,
    /// CA (PEM) that client certificates must chain to; when absent, clients need none.
    pub client_ca_pem: Option<String>,
    /// Names and addresses for the self-signed certificate's SANs.
    pub hostnames: Vec<String>,
    /// The node's name (`/stats/summary`'s `node.nodeName`).
    pub node_name: String,
}

impl ServerConfig {
    /// Listens on `address` with a self-signed certificate and no client authentication.
    pub fn new(address: SocketAddr) -> Self {
        ServerConfig {
            address,
            cert_pem: None,
            key_pem: None,
            client_ca_pem: None,
            hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            node_name: String::new(),
        }
    }
}

/// Server failures (start-up only; request errors are answers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding or accepting failed.
    #[error("kubelet server I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS configuration is unusable.
    #[error("kubelet server TLS: {0}")]
    Tls(String),
}

type Body = BoxBody<Bytes, std::convert::Infallible>;

fn full(status: StatusCode, content_type: &'static str, b: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(b.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", msg.into())
}

/// A refused request: its status and message (answered as text).
#[derive(Debug)]
struct Reject(StatusCode, String);

impl Reject {
    fn response(self) -> Response<Body> {
        text(self.0, self.1)
    }
}

/// The bound server; [`KubeletServer::run`] serves until the shutdown future completes.
pub struct KubeletServer {
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    runtime: Arc<Runtime>,
    stats: Arc<(crate::kubelet::stats::StatsProvider, String)>,
}

impl std::fmt::Debug for KubeletServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletServer")
            .field("address", &self.listener.local_addr().ok())
            .finish()
    }
}

fn tls_config(cfg: &ServerConfig) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let (cert_pem, key_pem) = match (&cfg.cert_pem, &cfg.key_pem) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let ck =
                rcgen::generate_simple_self_signed(cfg.hostnames.clone()).map_err(|e| tls(&e))?;
            (ck.cert.pem(), ck.signing_key.serialize_pem())
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls(&e))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| tls(&e))?
        .ok_or_else(|| ServerError::Tls("no private key".into()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?;
    let builder = match &cfg.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
                roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| tls(&e))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut c = builder.with_single_cert(certs, key).map_err(|e| tls(&e))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

impl KubeletServer {
    /// Binds the listener and prepares TLS.
    pub async fn bind(cfg: ServerConfig, runtime: Arc<Runtime>) -> Result<Self, ServerError> {
        let tls = tls_config(&cfg)?;
        let listener = tokio::net::TcpListener::bind(cfg.address).await?;
        Ok(KubeletServer {
            listener,
            tls: tokio_rustls::TlsAcceptor::from(tls),
            runtime,
            stats: Arc::new((
                crate::kubelet::stats::StatsProvider::new(),
                cfg.node_name.clone(),
            )),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        Ok(self.listener.local_addr()?)
    }

    /// Binds and serves until `shutdown` completes.
    pub async fn serve(
        cfg: ServerConfig,
        runtime: Arc<Runtime>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        Self::bind(cfg, runtime).await?.run(shutdown).await
    }

    /// Serves until `shutdown` completes; open connections are dropped then.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = &mut shutdown => break,
            };
            let (sock, _) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("kubelet server accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = sock.set_nodelay(true);
            let tls = self.tls.clone();
            let rt = self.runtime.clone();
            let stats = self.stats.clone();
            conns.spawn(async move {
                let _permit = permit;
                let Ok(Ok(stream)) =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(sock)).await
                else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let (rt, stats) = (rt.clone(), stats.clone());
                    async move { Ok::<_, std::convert::Infallible>(handle(rt, stats, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!("kubelet server connection: {e}");
                }
            });
            while conns.try_join_next().is_some() {}
        }
        conns.abort_all();
        Ok(())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a query string into pairs (at most 1024).
pub fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .take(1024)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn flag(q: &[(String, String)], name: &str) -> bool {
    q.iter()
        .any(|(k, v)| k == name && matches!(v.as_str(), "true" | "1" | "True"))
}

/// A container of a pod, found through the runtime.
fn find_container(
    rt: &Runtime,
    ns: &str,
    pod: &str,
    uid: Option<&str>,
    name: &str,
    previous: bool,
) -> Result<ContainerStatus, Reject> {
    let not_found = |m: String| Err(Reject(StatusCode::NOT_FOUND, m));
    let sandboxes: Vec<String> = rt
        .list_sandboxes()
        .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .into_iter()
        .filter(|s| s.namespace == ns && s.name == pod && uid.is_none_or(|u| u == s.uid))
        .map(|s| s.id)
        .collect();
    if sandboxes.is_empty() {
        return not_found(format!("pod \"{pod}\" in namespace \"{ns}\" not found"));
    }
    let mut cs: Vec<ContainerStatus> = rt
        .list_containers()
        .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .into_iter()
        .filter(|c| c.name == name && sandboxes.contains(&c.sandbox_id))
        .collect();
    cs.sort_by_key(|c| c.created_at_unix_nanos);
    let current_idx = cs
        .iter()
        .rposition(|c| c.state == ContainerState::Running)
        .or(cs.len().checked_sub(1));
    let Some(ci) = current_idx else {
        return not_found(format!(
            "container \"{name}\" in pod \"{pod}\" is not available"
        ));
    };
    if !previous {
        return Ok(cs.swap_remove(ci));
    }
    let prev = cs
        .iter()
        .enumerate()
        .rev()
        .find(|(i, c)| *i != ci && matches!(c.state, ContainerState::Exited(_)))
        .map(|(i, _)| i);
    match prev {
        Some(i) => Ok(cs.swap_remove(i)),
        None => Err(Reject(
            StatusCode::BAD_REQUEST,
            format!("previous terminated container \"{name}\" in pod \"{pod}\" not found"),
        )),
    }
}

async fn handle(
    rt: Arc<Runtime>,
    stats: Arc<(crate::kubelet::stats::StatsProvider, String)>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = parse_query(req.uri().query());
    let segs: Vec<String> = path
        .split('/')
        .skip(1)
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = req.method() == Method::GET;
    match segs.as_slice() {
        ["healthz"] if get => text(StatusCode::OK, "ok"),
        ["pods"] if get => pods(&rt),
        ["stats", "summary"] if get => {
            // Directory walks and cgroup reads: off the async threads.
            let r = tokio::task::spawn_blocking(move || stats.0.summary(&rt, &stats.1)).await;
            match r {
                Ok(v) => full(StatusCode::OK, "application/json", v.to_string()),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        ["containerLogs", ns, pod, c] if get => container_logs(&rt, ns, pod, c, &q).await,
        ["exec", ns, pod, c] | ["exec", ns, pod, _, c] => {
            let uid = (segs.len() == 5).then(|| segs[3]);
            exec(rt.clone(), req, ns, pod, uid, c, q, false).await
        }
        ["attach", ns, pod, c] | ["attach", ns, pod, _, c] => {
            let uid = (segs.len() == 5).then(|| segs[3]);
            exec(rt.clone(), req, ns, pod, uid, c, q, true).await
        }
        ["portForward", ns, pod] | ["portForward", ns, pod, _] => {
            let uid = (segs.len() == 4).then(|| segs[3]);
            port_forward(rt.clone(), req, ns, pod, uid, &q).await
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

fn pods(rt: &Runtime) -> Response<Body> {
    let (Ok(sbs), Ok(cs)) = (rt.list_sandboxes(), rt.list_containers()) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "listing the runtime failed",
        );
    };
    let items: Vec<serde_json::Value> = sbs
        .iter()
        .map(|s| {
            let statuses: Vec<serde_json::Value> = cs
                .iter()
                .filter(|c| c.sandbox_id == s.id)
                .map(|c| {
                    let state = match &c.state {
                        ContainerState::Running => json!({"running": {}}),
                        ContainerState::Exited(e) => {
                            json!({"terminated": {"exitCode": e.exit_code, "reason": c.reason()}})
                        }
                        _ => json!({"waiting": {}}),
                    };
                    json!({"name": c.name, "image": c.image, "imageID": c.image_id,
                           "containerID": format!("kubeshard://{}", c.id), "state": state})
                })
                .collect();
            json!({"metadata": {"name": s.name, "namespace": s.namespace, "uid": s.uid},
                   "status": {"phase": if s.ready {"Running"} else {"Unknown"},
                              "containerStatuses": statuses}})
        })
        .collect();
    let body = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    full(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

async fn container_logs(
    rt: &Arc<Runtime>,
    ns: &str,
    pod: &str,
    c: &str,
    q: &[(String, String)],
) -> Response<Body> {
    let opts = match logs::LogOptions::from_query(q, crate::spec::now_unix_nanos()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let st = match find_container(rt, ns, pod, None, c, opts.previous) {
        Ok(s) => s,
        Err(r) => return r.response(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let id = st.id.clone();
    let rt2 = rt.clone();
    let running = move || {
        rt2.container_status(&id)
            .is_ok_and(|s| s.state == ContainerState::Running)
    };
    tokio::spawn(logs::stream_logs(st.log_path, opts, tx, running));
    let body = http_body_util::StreamBody::new(futures_stream(rx)).boxed();
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A body stream over a channel of chunks.
fn futures_stream(
    mut rx: mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> {
    futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    })
}

/// The protocols a request offers (`Sec-WebSocket-Protocol` list, or each
/// `X-Stream-Protocol-Version` header).
fn offered(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

enum Upgrade {
    WebSocket { key: String, protocol: String },
    Spdy { protocol: String },
}

fn upgrade_kind(
    headers: &HeaderMap,
    ws_protocols: &[&str],
    spdy_protocols: &[&str],
) -> Result<Upgrade, Reject> {
    let up = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if up == "websocket" {
        let key = headers
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Reject(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key".into()))?;
        let offered = offered(headers, "sec-websocket-protocol");
        let protocol = offered
            .iter()
            .find(|p| ws_protocols.contains(&p.as_str()))
            .ok_or_else(|| {
                Reject(
                    StatusCode::BAD_REQUEST,
                    format!("unable to upgrade: none of the offered WebSocket subprotocols {offered:?} is supported ({ws_protocols:?})"),
                )
            })?;
        return Ok(Upgrade::WebSocket {
            key: key.to_string(),
            protocol: protocol.clone(),
        });
    }
    if up.starts_with("spdy/3.1") {
        let offered = offered(headers, "x-stream-protocol-version");
        let protocol = offered
            .iter()
            .find(|p| spdy_protocols.contains(&p.as_str()))
            .ok_or_else(|| {
                Reject(
                    StatusCode::FORBIDDEN,
                    format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {spdy_protocols:?}"),
                )
            })?;
        return Ok(Upgrade::Spdy {
            protocol: protocol.clone(),
        });
    }
    Err(Reject(
        StatusCode::BAD_REQUEST,
        "Upgrade request required".into(),
    ))
}

fn switching(kind: &Upgrade) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    match kind {
        Upgrade::WebSocket { key, protocol } => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(&ws::accept_key(key)) {
                h.insert("sec-websocket-accept", v);
            }
            if let Ok(v) = HeaderValue::from_str(protocol) {
                h.insert("sec-websocket-protocol", v);
            }
        }
        Upgrade::Spdy { protocol } => {
            h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            if let Ok(v) = HeaderValue::from_str(protocol) {
                h.insert("x-stream-protocol-version", v);
            }
        }
    }
    r
}

const WS_EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

#[allow(clippy::too_many_arguments)]
async fn exec(
    rt: Arc<Runtime>,
    mut req: Request<Incoming>,
    ns: &str,
    pod: &str,
    uid: Option<&str>,
    c: &str,
    q: Vec<(String, String)>,
    attach: bool,
) -> Response<Body> {
    let opts = remotecommand::StreamOptions {
        stdin: flag(&q, "stdin") || flag(&q, "input"),
        stdout: flag(&q, "stdout") || flag(&q, "output"),
        stderr: flag(&q, "stderr") || flag(&q, "error"),
        tty: flag(&q, "tty"),
    };
    let argv: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if !attach && argv.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        );
    }
    if !opts.stdin && !opts.stdout && !opts.stderr {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    let st = match find_container(&rt, ns, pod, uid, c, false) {
        Ok(s) => s,
        Err(r) => return r.response(),
    };
    let kind = match upgrade_kind(
        req.headers(),
        &WS_EXEC_PROTOCOLS,
        &remotecommand::SPDY_PROTOCOLS,
    ) {
        Ok(k) => k,
        Err(r) => return r.response(),
    };
    // Start the process before answering, so a failure still reaches the client through
    // the protocol's status channel.
    let start: Result<remotecommand::Target, String> = if st.state != ContainerState::Running {
        Err(format!("container {c} is not running"))
    } else if attach {
        match rt.attach(&st.id, opts.stdin).await {
            Ok(Some(conn)) => Ok(remotecommand::Target::Live(conn)),
            Ok(None) => Ok(remotecommand::Target::Attach(attach_output(
                rt.clone(),
                st.clone(),
            ))),
            Err(e) => Err(format!("failed to attach to container: {e}")),
        }
    } else {
        let cmd = format!("{argv:?}");
        match rt
            .exec(
                &st.id,
                ExecRequest {
                    argv,
                    tty: opts.tty,
                    stdin: opts.stdin,
                },
            )
            .await
        {
            Ok(s) => Ok(remotecommand::Target::Exec(Box::new(s), cmd)),
            Err(e) => Err(format!("failed to exec in container: {e}")),
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let resp = switching(&kind);
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let io = TokioIo::new(up);
        match kind {
            Upgrade::WebSocket { .. } => remotecommand::serve_ws(io, opts, start).await,
            Upgrade::Spdy { protocol } => {
                remotecommand::serve_spdy(io, &protocol, opts, start).await
            }
        }
    });
    resp
}

/// Attach: the container's log records from now on, as output, until it exits.
fn attach_output(rt: Arc<Runtime>, st: ContainerStatus) -> mpsc::Receiver<remotecommand::Out> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let path = st.log_path.clone();
        let Ok(mut tail) = logs::Tail::open(&path, true) else {
            return;
        };
        loop {
            let recs = tail.read_records(4096).unwrap_or_default();
            let got = !recs.is_empty();
            for r in recs {
                let mut line = r.line.into_bytes();
                if !r.partial {
                    line.push(b'\n');
                }
                let m = if r.stream == "stderr" {
                    remotecommand::Out::Stderr(Bytes::from(line))
                } else {
                    remotecommand::Out::Stdout(Bytes::from(line))
                };
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            if got {
                continue;
            }
            if !rt
                .container_status(&st.id)
                .is_ok_and(|s| s.state == ContainerState::Running)
            {
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    rx
}

async fn port_forward(
    rt: Arc<Runtime>,
    mut req: Request<Incoming>,
    ns: &str,
    pod: &str,
    uid: Option<&str>,
    q: &[(String, String)],
) -> Response<Body> {
    let sb = match rt.list_sandboxes() {
        Ok(v) => v.into_iter().find(|s| {
            s.namespace == ns && s.name == pod && s.ready && uid.is_none_or(|u| u == s.uid)
        }),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(sb) = sb else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{ns}\" not found"),
        );
    };
    let Some(pid) = sb.pid else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" is not running"),
        );
    };
    let kind = match upgrade_kind(
        req.headers(),
        &["SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io"],
        &["portforward.k8s.io"],
    ) {
        Ok(k) => k,
        Err(r) => return r.response(),
    };
    // The channel protocol names its ports in the query (`ports=80,8080` or repeated).
    let ports: Vec<u16> = q
        .iter()
        .filter(|(k, _)| k == "ports")
        .flat_map(|(_, v)| v.split(','))
        .filter_map(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p > 0)
        .take(64)
        .collect();
    if matches!(&kind, Upgrade::WebSocket { protocol, .. } if protocol == "v4.channel.k8s.io")
        && ports.is_empty()
    {
        return text(
            StatusCode::BAD_REQUEST,
            "query parameter \"ports\" is required",
        );
    }
    let netns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    let pod = format!("{}/{}", ns, pod);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let resp = switching(&kind);
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let io = TokioIo::new(up);
        match kind {
            Upgrade::Spdy { .. } => portforward::serve_spdy(io, netns, pod).await,
            Upgrade::WebSocket { protocol, .. } if protocol == "v4.channel.k8s.io" => {
                portforward::serve_ws_channels(io, netns, pod, ports).await
            }
            Upgrade::WebSocket { .. } => {
                // SPDY inside binary WebSocket messages: bridge the messages to a byte pipe.
                let (a, b) = tokio::io::duplex(256 * 1024);
                tokio::spawn(bridge_ws(io, a));
                portforward::serve_spdy(b, netns, pod).await;
            }
        }
    });
    resp
}

/// Copies WebSocket binary messages into `pipe` and `pipe`'s bytes out as binary messages.
async fn bridge_ws<IO>(io: IO, pipe: tokio::io::DuplexStream)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (r, w) = tokio::io::split(io);
    let writer = ws::WsWriter::new(w);
    let mut reader = ws::WsReader::new(r, writer.clone());
    let (mut pr, mut pw) = tokio::io::split(pipe);
    let inbound = async move {
        while let Ok(ws::Message::Data(b)) = reader.next().await {
            if pw.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = pw.shutdown().await;
    };
    let w2 = writer.clone();
    let outbound = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w2.binary(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = w2.close().await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "command=sh&command=-c&command=echo+hi%3B+exit+3&tty=true",
        ));
        assert_eq!(q[2].1, "echo hi; exit 3");
        assert!(flag(&q, "tty"));
        assert!(!flag(&q, "stdin"));
        assert_eq!(percent_decode("a%zz%4"), "a%zz%4");
    }
}
