//! The apiserver's transport: one TLS port speaking HTTP/2 and HTTP/1.1 (ALPN `h2`,
//! `http/1.1`, upgrades on HTTP/1.1), accepted by one acceptor per core, each a
//! `current_thread` tokio runtime with its own `SO_REUSEPORT` listener; plus an optional
//! plain-HTTP port on loopback for development whose requests are the unsecured admin.
//! The kernel spreads new connections over the listeners by address hash, which leaves one
//! core with both of a few long-lived clients often enough; so an acceptor hands a new
//! connection to the acceptor serving the fewest (a bounded queue per acceptor), and a
//! connection then lives on that one core.
//!
//! [`start`] prepares everything that can fail (PKI, token file, TLS config, sockets,
//! default namespaces) before it returns, so a caller sees start-up errors at once; the
//! returned [`RunningServer`] stops every acceptor on [`RunningServer::shutdown`].
//!
//! Bounds: connections per acceptor ([`MAX_CONNECTIONS_PER_ACCEPTOR`]), TLS handshake time,
//! HTTP/1.1 header read time (also the idle keep-alive limit), HTTP/2 keep-alive pings,
//! concurrent HTTP/2 streams, request bodies (3 MiB, 413) and body read time.

pub mod body;
mod on_runtime;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::auth::{AuthError, Authenticator, UserInfo};
use crate::discovery::DiscoveryCache;
use crate::openapi::OpenApi;
use crate::pki::{self, PkiError};
use crate::registry::Registry;

/// Most open connections one acceptor serves at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS_PER_ACCEPTOR: usize = 10_000;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP1_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
const HTTP2_MAX_STREAMS: u32 = 1000;
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(3);

/// How to run the apiserver.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Holds `pki/` and `kubeconfig`.
    pub data_dir: PathBuf,
    /// The address the TLS port binds (loopback by default).
    pub bind_address: IpAddr,
    /// The TLS port; 0 picks a free one (see [`RunningServer::port`]).
    pub port: u16,
    /// A plain-HTTP port on 127.0.0.1 (development only; its requests are admin).
    pub insecure_port: Option<u16>,
    /// Extra SANs for the serving certificate (addresses clients use).
    pub extra_sans: Vec<String>,
    /// Upstream's static token file (`token,user,uid,"groups"`).
    pub token_auth_file: Option<PathBuf>,
    /// Let requests without credentials through as `system:anonymous`.
    pub anonymous_auth: bool,
    /// Number of acceptor threads (one per core by default).
    pub acceptors: usize,
    /// The QUIC watch endpoint ([`crate::quic`]): UDP on the TLS port's number by default.
    pub quic: crate::quic::QuicPort,
}

impl ServerOptions {
    /// Defaults: loopback, port 6443, no insecure port, one acceptor per core.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            bind_address: IpAddr::from([127, 0, 0, 1]),
            port: 6443,
            insecure_port: None,
            extra_sans: Vec::new(),
            token_auth_file: None,
            anonymous_auth: false,
            acceptors: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            quic: crate::quic::QuicPort::SameAsTls,
        }
    }
}

/// Start-up failures. None is retryable without a change (free the port, fix the files).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("bootstrapping the store: {0}")]
    Bootstrap(#[from] crate::status::ApiError),
    /// The store backend could not be reached or set up (e.g. etcd is down).
    #[error("store: {0}")]
    Store(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// What a request handler knows about its connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// False on the loopback plain-HTTP port.
    pub(crate) secure: bool,
    /// The identity of a verified client certificate.
    pub(crate) cert_user: Option<UserInfo>,
}

/// Shared state of every request handler.
pub(crate) struct App {
    pub(crate) backend: Arc<dyn store::Backend>,
    pub(crate) registry: RwLock<Arc<Registry>>,
    pub(crate) discovery: RwLock<Arc<DiscoveryCache>>,
    pub(crate) openapi: RwLock<Arc<OpenApi>>,
    pub(crate) auth: Authenticator,
    pub(crate) server_address: String,
    /// Shared watch fan-out per resource.
    pub(crate) hubs: crate::watch::Hubs,
    /// `/metrics` (request counts and latencies, watches, store latencies).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// TLS towards kubelets (pods/log, exec, attach, portforward), with the
    /// `apiserver-kubelet-client` certificate.
    pub(crate) kubelet_tls: Option<Arc<rustls::ClientConfig>>,
}

impl App {
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .map_or_else(|p| p.into_inner().clone(), |g| g.clone())
    }

    pub(crate) fn discovery(&self) -> Arc<DiscoveryCache> {
        self.discovery
            .read()
            .map_or_else(|p| p.into_inner().clone(), |g| g.clone())
    }

    pub(crate) fn openapi(&self) -> Arc<OpenApi> {
        self.openapi
            .read()
            .map_or_else(|p| p.into_inner().clone(), |g| g.clone())
    }
}

/// A started apiserver.
pub struct RunningServer {
    /// The TLS port actually bound.
    pub port: u16,
    /// The plain-HTTP port actually bound, if any.
    pub insecure_port: Option<u16>,
    /// The QUIC (UDP) port actually bound, if the QUIC endpoint runs.
    pub quic_port: Option<u16>,
    /// The admin kubeconfig written at start.
    pub kubeconfig: PathBuf,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// The runtime the etcd backend's client runs on (servers over etcd only).
    store_runtime: Option<tokio::runtime::Runtime>,
}

impl RunningServer {
    /// Stops accepting, lets open requests finish for a few seconds, and joins every
    /// acceptor thread.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(rt) = self.store_runtime {
            rt.shutdown_timeout(GRACEFUL_SHUTDOWN);
        }
    }
}

/// Starts the apiserver over the etcd cluster at `endpoints` (client URLs such as
/// `http://127.0.0.1:2379`) through `store::etcd_backend`, whose gRPC client runs on a
/// small runtime the returned server owns. Fails at once if etcd does not answer.
pub fn start_with_etcd(
    opts: ServerOptions,
    endpoints: &[String],
) -> Result<RunningServer, ServerError> {
    let (backend, rt) = on_runtime::connect_etcd(endpoints)?;
    let mut server = start(opts, backend)?;
    server.store_runtime = Some(rt);
    Ok(server)
}

/// Binds `n` SO_REUSEPORT listeners on `addr` through `shards` (port 0: one shared port).
fn bind_group(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, ServerError> {
    let (_, listeners) = shards::listen::bind_tcp(addr, n, shards::listen::DEFAULT_BACKLOG)
        .map_err(|e| ServerError::Io {
            what: format!("binding {addr}"),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(listeners)
}

fn tls_config(pki: &pki::Pki) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.ca_cert_pem.as_bytes()) {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))?;
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut pki.serving_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| tls(&e))?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut pki.serving_key_pem.as_bytes())
            .map_err(|e| tls(&e))?
            .ok_or_else(|| ServerError::Tls("no private key in apiserver.key".into()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Starts the apiserver over `backend`: PKI and kubeconfig under `opts.data_dir`, default
/// namespaces, then the acceptors. Returns once every listener is bound.
pub fn start(
    opts: ServerOptions,
    backend: Arc<dyn store::Backend>,
) -> Result<RunningServer, ServerError> {
    std::fs::create_dir_all(&opts.data_dir).map_err(io(format!(
        "creating data directory {}",
        opts.data_dir.display()
    )))?;
    let mut sans = opts.extra_sans.clone();
    if !opts.bind_address.is_unspecified() {
        sans.push(opts.bind_address.to_string());
    }
    let pki = pki::ensure(&opts.data_dir, &sans)?;
    let mut auth = Authenticator::new(opts.anonymous_auth);
    if let Some(f) = &opts.token_auth_file {
        auth.load_token_file(f)?;
    }
    let tls = tls_config(&pki)?;
    let n = opts.acceptors.max(1);
    let listeners = bind_group(SocketAddr::new(opts.bind_address, opts.port), n)?;
    let port = listeners[0]
        .local_addr()
        .map_err(io("local address"))?
        .port();
    let insecure = match opts.insecure_port {
        Some(p) => Some(bind_group(SocketAddr::from(([127, 0, 0, 1], p)), n)?),
        None => None,
    };
    let insecure_port = match &insecure {
        Some(l) => Some(l[0].local_addr().map_err(io("local address"))?.port()),
        None => None,
    };

    let host = if opts.bind_address.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        match opts.bind_address {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        }
    };
    let server_address = format!("{host}:{port}");
    let kubeconfig = opts.data_dir.join("kubeconfig");
    crate::kubeconfig::write_admin_kubeconfig(
        &pki,
        &format!("https://{server_address}"),
        &kubeconfig,
    )
    .map_err(io(format!("writing {}", kubeconfig.display())))?;

    let registry = Registry::builtin();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let backend: Arc<dyn store::Backend> = Arc::new(crate::metrics::MeteredBackend::new(
        backend,
        metrics.clone(),
    ));
    let app = Arc::new(App {
        backend,
        metrics,
        discovery: RwLock::new(Arc::new(DiscoveryCache::build(&registry, &server_address))),
        openapi: RwLock::new(Arc::new(OpenApi::build(&registry))),
        registry: RwLock::new(Arc::new(registry)),
        auth,
        server_address,
        hubs: Default::default(),
        kubelet_tls: crate::rest::kubelet_tls(&pki)
            .map_err(|e| tracing::warn!("kubelet client TLS: {e}"))
            .ok(),
    });

    // Bootstrap (default namespaces) on a throwaway runtime before serving.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting a runtime"))?;
    rt.block_on(crate::rest::bootstrap(&app))?;
    drop(rt);

    let (stop, stop_rx) = watch::channel(false);
    let mut threads = Vec::new();
    let mut insecure = insecure.map(Vec::into_iter);
    let balance = Arc::new(Balance::new(n));
    let mut inboxes: Vec<_> = (0..n)
        .map(|_| {
            let (tx, rx) = tokio::sync::mpsc::channel(HANDOFF_QUEUE);
            (tx, Some(rx))
        })
        .collect();
    let outboxes: Arc<[tokio::sync::mpsc::Sender<Handoff>]> =
        inboxes.iter().map(|(tx, _)| tx.clone()).collect();
    for (i, l) in listeners.into_iter().enumerate() {
        let shard = Shard {
            index: i,
            app: app.clone(),
            tls: tokio_rustls::TlsAcceptor::from(tls.clone()),
            stop: stop_rx.clone(),
            balance: balance.clone(),
            outboxes: outboxes.clone(),
        };
        let plain = insecure.as_mut().and_then(Iterator::next);
        let inbox = inboxes[i].1.take().expect("one inbox per acceptor");
        let t = std::thread::Builder::new()
            .name(format!("api-accept-{i}"))
            .spawn(move || acceptor(shard, l, plain, inbox))
            .map_err(io("spawning an acceptor thread"))?;
        threads.push(t);
    }
    drop(inboxes);
    let listen = crate::quic::server::Listen {
        ip: opts.bind_address,
        port: opts.quic,
        tls_port: port,
        tls_ephemeral: opts.port == 0,
    };
    let quic = crate::quic::server::start(app, &tls, listen, n, stop_rx)?;
    let quic_port = quic.map(|q| {
        threads.push(q.thread);
        q.port
    });
    Ok(RunningServer {
        port,
        insecure_port,
        quic_port,
        kubeconfig,
        stop,
        threads,
        store_runtime: None,
    })
}

/// Most connections waiting in one acceptor's hand-off queue.
const HANDOFF_QUEUE: usize = 256;

/// Open connections per acceptor, so a new connection goes to the least busy one. The kernel
/// spreads connections over the `SO_REUSEPORT` listeners by a hash of their addresses: with
/// the few long-lived HTTP/2 connections that real clients keep (a scheduler and its
/// informers, a controller-manager), two of them often hash to the same acceptor and one
/// core serves both while the other idles.
struct Balance {
    open: Box<[std::sync::atomic::AtomicUsize]>,
}

impl Balance {
    fn new(n: usize) -> Self {
        Self {
            open: (0..n)
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
        }
    }

    /// The acceptor that should serve a connection accepted by `me`: `me` unless another
    /// serves fewer connections.
    fn pick(&self, me: usize) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let mut best = me;
        let mut least = self.open[me].load(Relaxed);
        for (i, c) in self.open.iter().enumerate() {
            let c = c.load(Relaxed);
            if c < least {
                best = i;
                least = c;
            }
        }
        best
    }

    /// Counts a connection on acceptor `i` until the guard drops.
    fn serving(self: &Arc<Self>, i: usize) -> Serving {
        self.open[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Serving {
            balance: self.clone(),
            index: i,
        }
    }
}

struct Serving {
    balance: Arc<Balance>,
    index: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.balance.open[self.index].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A connection accepted by one acceptor and handed to another.
struct Handoff {
    sock: std::net::TcpStream,
    secure: bool,
}

/// The fair-scheduler slice an acceptor thread asks for (`shards::sched`): a burst of requests
/// takes tens of microseconds, and with the default slice (milliseconds) a woken acceptor
/// waits behind whatever else holds its core. `KUBESHARD_API_SLICE_US` overrides it
/// (microseconds; 0 keeps the kernel's default).
const ACCEPTOR_SLICE: Duration = Duration::from_micros(100);

fn ask_for_a_short_slice() {
    let slice = match std::env::var("KUBESHARD_API_SLICE_US") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => return,
            Ok(us) => Duration::from_micros(us),
            Err(_) => {
                tracing::warn!("KUBESHARD_API_SLICE_US={v:?} is not a number of microseconds");
                ACCEPTOR_SLICE
            }
        },
        Err(_) => ACCEPTOR_SLICE,
    };
    if let Err(e) = shards::sched::set_current_thread_slice(slice) {
        tracing::debug!("acceptor: no custom scheduler slice ({e})");
    }
}

/// What one acceptor thread needs to serve connections.
#[derive(Clone)]
struct Shard {
    index: usize,
    app: Arc<App>,
    tls: tokio_rustls::TlsAcceptor,
    stop: watch::Receiver<bool>,
    balance: Arc<Balance>,
    outboxes: Arc<[tokio::sync::mpsc::Sender<Handoff>]>,
}

fn acceptor(
    shard: Shard,
    listener: std::net::TcpListener,
    plain: Option<std::net::TcpListener>,
    inbox: tokio::sync::mpsc::Receiver<Handoff>,
) {
    ask_for_a_short_slice();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("acceptor runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_ACCEPTOR));
        let mut conns = tokio::task::JoinSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ServeJob>();
        let secure = accept_loop(&shard, true, listener, &limit, tx.clone());
        let handed = receive_handoffs(&shard, inbox, &limit, tx.clone());
        let spawner = async {
            while let Some(job) = rx.recv().await {
                conns.spawn(job);
                // Reap finished connection tasks so the set stays small.
                while conns.try_join_next().is_some() {}
            }
        };
        match plain {
            Some(p) => {
                let insecure = accept_loop(&shard, false, p, &limit, tx);
                tokio::join!(secure, insecure, handed, spawner);
            }
            None => {
                drop(tx);
                tokio::join!(secure, handed, spawner);
            }
        }
        // Stop: give open connections a moment, then drop them.
        let _ = tokio::time::timeout(GRACEFUL_SHUTDOWN, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
    });
    // Dropping the runtime cancels what is still running (open watches).
}

/// A connection's whole life, spawned on the acceptor that serves it.
type ServeJob = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The accept loop of one listener: returns a future that sends each accepted connection's
/// serving job to `jobs`, or hands the connection to a less busy acceptor.
async fn accept_loop(
    shard: &Shard,
    secure: bool,
    listener: std::net::TcpListener,
    limit: &Arc<tokio::sync::Semaphore>,
    jobs: tokio::sync::mpsc::UnboundedSender<ServeJob>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("listener: {e}");
            return;
        }
    };
    let mut stop = shard.stop.clone();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = sock.set_nodelay(true);
        let target = shard.balance.pick(shard.index);
        let sock = if target == shard.index {
            sock
        } else {
            match sock.into_std() {
                Ok(sock) => match shard.outboxes[target].try_send(Handoff { sock, secure }) {
                    Ok(()) => continue,
                    // The other acceptor's queue is full or gone: serve it here.
                    Err(e) => {
                        let h = e.into_inner();
                        match tokio::net::TcpStream::from_std(h.sock) {
                            Ok(s) => s,
                            Err(_) => continue,
                        }
                    }
                },
                Err(_) => continue,
            }
        };
        let _ = jobs.send(serve_job(shard, sock, secure, permit));
    }
}

/// Serves the connections other acceptors hand to this one.
async fn receive_handoffs(
    shard: &Shard,
    mut inbox: tokio::sync::mpsc::Receiver<Handoff>,
    limit: &Arc<tokio::sync::Semaphore>,
    jobs: tokio::sync::mpsc::UnboundedSender<ServeJob>,
) {
    let mut stop = shard.stop.clone();
    loop {
        let h = tokio::select! {
            h = inbox.recv() => match h { Some(h) => h, None => break },
            _ = stop.changed() => break,
        };
        let Ok(sock) = tokio::net::TcpStream::from_std(h.sock) else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Full: the connection is refused rather than queued without bound.
            continue;
        };
        let _ = jobs.send(serve_job(shard, sock, h.secure, permit));
    }
}

/// The serving of one accepted connection on this acceptor: TLS handshake (secure port),
/// then HTTP until the client or the server stops.
fn serve_job(
    shard: &Shard,
    sock: tokio::net::TcpStream,
    secure: bool,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> ServeJob {
    let app = shard.app.clone();
    let tls = shard.tls.clone();
    let stop = shard.stop.clone();
    let serving = shard.balance.serving(shard.index);
    Box::pin(async move {
        let _permit = permit;
        let _serving = serving;
        let (sock, flusher) = shards::batched::batched(sock);
        if !secure {
            let info = ConnInfo {
                secure: false,
                cert_user: None,
            };
            serve_conn(app, sock, info, stop, flusher).await;
            return;
        }
        let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(sock)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake: {e}");
                return;
            }
            Err(_) => return,
        };
        let cert_user = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| UserInfo::from_client_cert(c));
        let info = ConnInfo {
            secure: true,
            cert_user,
        };
        serve_conn(app, tls, info, stop, flusher).await;
    })
}

/// The executor of a connection's HTTP/2 request streams: it polls each stream's future
/// once on the connection task, and spawns it only if that first poll does not finish it.
///
/// Why: a GET of one object is answered synchronously from the store, so its whole stream
/// (handler, response headers, a body that fits the flow-control window) ends in one poll.
/// Spawning it anyway costs a task allocation, a run-queue hand-off and a second wake-up of
/// the connection task per request, a large share of a small GET's CPU at tens of thousands
/// per second. A future still pending after the first poll is spawned as before and polled
/// again at once by the runtime, which registers its real waker (the first poll's no-op waker
/// is never relied upon). A panic in the first poll is contained as a spawned task's would
/// be: the stream's future is dropped (h2 resets the stream), the connection lives on.
#[derive(Clone, Copy)]
struct FirstPollInline;

impl<F> hyper::rt::Executor<F> for FirstPollInline
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut fut = Box::pin(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fut.as_mut().poll(&mut cx).is_pending()
        }));
        match first {
            Ok(true) => {
                tokio::spawn(fut);
            }
            Ok(false) => {}
            Err(_) => tracing::error!("a request handler panicked; its stream was reset"),
        }
    }
}

async fn serve_conn<I, S>(
    app: Arc<App>,
    io: I,
    info: ConnInfo,
    mut stop: watch::Receiver<bool>,
    flusher: shards::batched::Flusher<S>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncWrite + Unpin,
{
    // One handle per connection: a request clones only this connection's reference count,
    // not the `App`'s, which every acceptor thread would otherwise bounce between cores.
    let conn_ctx = Arc::new((app, info));
    let svc = hyper::service::service_fn(move |req| {
        let ctx = conn_ctx.clone();
        async move {
            let (app, info) = &*ctx;
            Ok::<_, std::convert::Infallible>(crate::rest::handle(app, info, req).await)
        }
    });
    let mut builder = auto::Builder::new(FirstPollInline);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP1_HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(HTTP2_MAX_STREAMS);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = shards::batched::polled_then_flushed(conn.as_mut(), &flusher) => {
            if let Some(Err(e)) = r {
                tracing::debug!("connection: {e}");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(
                GRACEFUL_SHUTDOWN,
                shards::batched::polled_then_flushed(conn.as_mut(), &flusher),
            )
            .await;
        }
    }
}

impl App {
    /// A CustomResourceDefinition was written or deleted: serve (or stop serving) its
    /// resources and refresh discovery and OpenAPI.
    pub(crate) fn crd_changed(&self, crd: &serde_json::Value, deleted: bool) {
        let mut reg = (*self.registry()).clone();
        let name = crd
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string();
        let changed = if deleted {
            reg.remove_crd(&name)
        } else {
            match reg.apply_crd(crd) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!("CRD {name}: {e}");
                    false
                }
            }
        };
        if !changed {
            return;
        }
        let disc = DiscoveryCache::build(&reg, &self.server_address);
        let mut oa = (*self.openapi()).clone();
        oa.update_crds(&reg);
        if let Ok(mut g) = self.registry.write() {
            *g = Arc::new(reg);
        }
        if let Ok(mut g) = self.discovery.write() {
            *g = Arc::new(disc);
        }
        if let Ok(mut g) = self.openapi.write() {
            *g = Arc::new(oa);
        }
    }
}

#[cfg(test)]
mod balance_tests {
    use super::Balance;
    use std::sync::Arc;

    #[test]
    fn a_new_connection_goes_to_the_least_busy_acceptor() {
        let b = Arc::new(Balance::new(3));
        // All idle: whoever accepted keeps it.
        assert_eq!(b.pick(1), 1);
        let first = b.serving(1);
        // Acceptor 1 now serves one: a connection it accepts goes to an idle one.
        let to = b.pick(1);
        assert_ne!(to, 1);
        let second = b.serving(to);
        let third = b.serving(b.pick(1));
        assert_eq!(
            b.open
                .iter()
                .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
                .collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
        // A tie keeps the connection where it was accepted.
        assert_eq!(b.pick(2), 2);
        drop(first);
        assert_eq!(
            b.pick(2),
            1,
            "the acceptor whose connection closed is now the least busy"
        );
        drop((second, third));
        assert!(
            b.open
                .iter()
                .all(|c| c.load(std::sync::atomic::Ordering::Relaxed) == 0)
        );
    }
}
