//! Shared by the `client_*` tests: an in-process apiserver over the in-memory engine (the
//! server runs on its own acceptor threads, outside the test's runtime), and a TCP proxy
//! the tests can cut to simulate connection loss.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::client::{Client, ClientConfig};
use api::server::{RunningServer, ServerOptions};
use store::{Engine, EngineConfig};

/// A running apiserver with its engine; stopped on drop.
pub struct Server {
    pub engine: Arc<Engine>,
    server: Option<RunningServer>,
    pub port: u16,
    pub insecure_port: u16,
    /// The QUIC watch endpoint's UDP port.
    pub quic_port: Option<u16>,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(f: impl FnOnce(&mut ServerOptions)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = EngineConfig::in_memory();
        cfg.shards = 1;
        // Bookmarks come from progress notifications; keep them frequent in tests.
        cfg.progress_interval = Duration::from_millis(200);
        let engine = Engine::open(cfg).expect("engine");
        let mut opts = ServerOptions::new(dir.path());
        opts.port = 0;
        opts.insecure_port = Some(0);
        opts.acceptors = 1;
        f(&mut opts);
        // `start` builds its own runtimes: call it off the test's runtime thread.
        let e = engine.clone();
        let server = std::thread::spawn(move || api::server::start(opts, e))
            .join()
            .expect("start thread")
            .expect("server");
        Self {
            engine,
            port: server.port,
            insecure_port: server.insecure_port.expect("insecure port"),
            quic_port: server.quic_port,
            kubeconfig: server.kubeconfig.clone(),
            server: Some(server),
            dir,
        }
    }

    /// Stops the apiserver (the engine stays) and starts it again on the same ports and
    /// data directory, as a restarted apiserver process would.
    pub fn restart(&mut self) {
        let old = self.server.take();
        let (dir, port, quic) = (self.dir.path().to_path_buf(), self.port, self.quic_port);
        let e = self.engine.clone();
        let server = std::thread::spawn(move || {
            if let Some(s) = old {
                s.shutdown();
            }
            let mut opts = ServerOptions::new(dir);
            opts.port = port;
            opts.insecure_port = Some(0);
            opts.acceptors = 1;
            opts.quic = match quic {
                Some(p) => api::quic::QuicPort::Port(p),
                None => api::quic::QuicPort::Off,
            };
            api::server::start(opts, e)
        })
        .join()
        .expect("restart thread")
        .expect("server");
        self.insecure_port = server.insecure_port.expect("insecure port");
        self.server = Some(server);
    }

    /// A client with the admin kubeconfig the server wrote (TLS, x509).
    pub fn client(&self) -> Client {
        Client::from_kubeconfig(&self.kubeconfig).expect("client")
    }

    /// The admin kubeconfig's configuration, to adjust.
    pub fn config(&self) -> ClientConfig {
        ClientConfig::from_kubeconfig(&self.kubeconfig).expect("config")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stopping waits for open streams (up to the server's grace period) and joins its
        // threads; do it off the test runtime, which must keep running to close them.
        let server = self.server.take();
        let engine = self.engine.clone();
        std::thread::spawn(move || {
            if let Some(s) = server {
                s.shutdown();
            }
            engine.close();
        });
    }
}

/// A TCP proxy to `127.0.0.1:target` on its own thread; [`Proxy::cut`] drops every
/// connection and refuses new ones until [`Proxy::resume`].
pub struct Proxy {
    pub port: u16,
    paused: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: u16) -> Self {
        let paused = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (p, c) = (paused.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                port_tx
                    .send(l.local_addr().expect("addr").port())
                    .expect("port");
                loop {
                    let (mut inbound, _) = tokio::select! {
                        r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                        _ = &mut stopped => break,
                    };
                    if p.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut out) =
                            tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    c.lock().expect("conns").push(task.abort_handle());
                }
                for h in c.lock().expect("conns").drain(..) {
                    h.abort();
                }
            });
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("proxy port");
        Self {
            port,
            paused,
            conns,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.paused.store(true, Ordering::SeqCst);
        for h in self.conns.lock().expect("conns").drain(..) {
            h.abort();
        }
    }

    /// Accepts connections again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `f` every 20 ms until it holds, for at most `limit`.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
