//! Factories for the conformance suite: each makes a fresh backend (and whatever keeps it
//! alive) or says loudly why it cannot and returns `None`.

use std::any::Any;
use std::sync::Arc;

use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig};
use crate::etcd_backend::{EtcdBackend, EtcdConfig};
use crate::etcd_face::{self, FaceConfig};

use super::etcd_process::{EtcdProcess, EtcdStartError};

/// A backend under test and what must outlive it (a process, a server task).
pub struct Harness {
    pub backend: Arc<dyn Backend>,
    _guards: Vec<Box<dyn Any + Send + Sync>>,
}

impl Harness {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            _guards: Vec::new(),
        }
    }

    /// Keeps `guard` alive as long as the harness.
    pub fn guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self._guards.push(Box::new(guard));
        self
    }
}

/// A real etcd (Debian `etcd-server`) on free loopback ports, through [`EtcdBackend`].
/// Returns `None` (with a loud message) only if the etcd binary is not installed.
pub async fn real_etcd() -> Option<Harness> {
    let etcd = match tokio::task::spawn_blocking(|| EtcdProcess::start(&[])).await {
        Ok(Ok(p)) => p,
        Ok(Err(EtcdStartError::NotInstalled)) => {
            eprintln!(
                "\n*** SKIPPED: /usr/bin/etcd is not installed (apt-get install etcd-server); \
                 the etcd conformance run did not happen ***\n"
            );
            return None;
        }
        Ok(Err(e)) => panic!("cannot start etcd: {e}"),
        Err(e) => panic!("etcd start task failed: {e}"),
    };
    let backend =
        EtcdBackend::connect(&EtcdConfig::new([etcd.client_url()])).expect("etcd backend");
    Some(Harness::new(Arc::new(backend)).guard(etcd))
}

fn small_engine() -> Arc<Engine> {
    let mut cfg = EngineConfig::in_memory();
    cfg.shards = 2;
    cfg.progress_interval = std::time::Duration::from_millis(500);
    Engine::open(cfg).expect("open engine")
}

/// The embedded engine, in memory.
pub async fn engine() -> Option<Harness> {
    let e = small_engine();
    Some(Harness::new(e))
}

/// Stops a face server when dropped.
struct FaceGuard(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for FaceGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// The etcd face serving `inner` on a free loopback port, reached through [`EtcdBackend`]:
/// checks the face and the client end to end.
pub async fn face_over(inner: Arc<dyn Backend>) -> Harness {
    let listener = etcd_face::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let url = format!("http://{addr}");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = FaceConfig::from_seed("conformance", vec![url.clone()]);
    let server_backend = inner.clone();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = rx.await;
        };
        if let Err(e) = etcd_face::serve(server_backend, listener, config, shutdown).await {
            eprintln!("etcd face failed: {e}");
        }
    });
    let client = EtcdBackend::connect(&EtcdConfig::new([url])).expect("client");
    Harness::new(Arc::new(client))
        .guard(FaceGuard(Some(tx)))
        .guard(inner)
}

/// The etcd face over the in-memory engine.
pub async fn face_over_engine() -> Option<Harness> {
    Some(face_over(small_engine()).await)
}
