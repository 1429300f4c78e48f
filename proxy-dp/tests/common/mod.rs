//! Shared by the tests that need a real apiserver: one in process, on an in-memory store.

use std::path::PathBuf;
use std::sync::Arc;

use api::server::ServerOptions;
use store::{Engine, EngineConfig};

/// An apiserver on 127.0.0.1 (a free port) over an in-memory store; stopped on drop.
pub(crate) struct ApiServer {
    engine: Arc<Engine>,
    server: Option<api::server::RunningServer>,
    /// Its admin kubeconfig.
    pub(crate) kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts one.
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = EngineConfig::in_memory();
        cfg.shards = 1;
        let engine = Engine::open(cfg).expect("engine");
        let mut opts = ServerOptions::new(dir.path());
        opts.port = 0;
        opts.acceptors = 1;
        let e = engine.clone();
        let server = std::thread::spawn(move || api::server::start(opts, e))
            .join()
            .expect("start thread")
            .expect("apiserver");
        Self {
            engine,
            kubeconfig: server.kubeconfig.clone(),
            server: Some(server),
            _dir: dir,
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let server = self.server.take();
        let engine = self.engine.clone();
        let _ = std::thread::spawn(move || {
            if let Some(s) = server {
                s.shutdown();
            }
            engine.close();
        })
        .join();
    }
}
