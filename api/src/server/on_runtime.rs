//! A [`Backend`] whose every call runs on a tokio runtime owned by the server.
//!
//! The etcd backend's gRPC channel spawns its connection tasks on the runtime it is created
//! in, and that runtime must keep running for the life of the channel; the acceptors'
//! `current_thread` runtimes come and go with their threads and only run while they serve.
//! So the server owns a small multi-thread runtime for the etcd backend and hops every call
//! onto it (one task per call; a watch stream is a channel and is read from anywhere).

use std::sync::Arc;

use store::{
    Backend, LeaseGrant, LeaseId, LeaseTimeToLive, RangeRequest, RangeResponse, Revision,
    StoreError, StoreStatus, Txn, TxnResponse, WatchRequest, WatchStream,
};
use tokio::runtime::{Handle, Runtime};

use super::{ServerError, io};

/// Worker threads of the etcd runtime (gRPC framing is light; the machine's cores are the
/// acceptors').
const ETCD_RUNTIME_THREADS: usize = 2;

/// Runs `inner`'s calls on `handle`.
pub(crate) struct OnRuntime {
    inner: Arc<dyn Backend>,
    handle: Handle,
}

fn joined<T>(r: Result<Result<T, StoreError>, tokio::task::JoinError>) -> Result<T, StoreError> {
    r.unwrap_or_else(|e| {
        Err(StoreError::Unavailable(format!(
            "store runtime task failed: {e}"
        )))
    })
}

macro_rules! hop {
    ($self:ident, |$b:ident| $call:expr) => {{
        let $b = $self.inner.clone();
        joined($self.handle.spawn(async move { $call.await }).await)
    }};
}

#[async_trait::async_trait]
impl Backend for OnRuntime {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        hop!(self, |b| b.range(req))
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        hop!(self, |b| b.txn(txn))
    }
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream, StoreError> {
        hop!(self, |b| b.watch(req))
    }
    async fn lease_grant(
        &self,
        ttl_seconds: i64,
        id: Option<LeaseId>,
    ) -> Result<LeaseGrant, StoreError> {
        hop!(self, |b| b.lease_grant(ttl_seconds, id))
    }
    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, StoreError> {
        hop!(self, |b| b.lease_revoke(id))
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        hop!(self, |b| b.lease_keep_alive(id))
    }
    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
    ) -> Result<LeaseTimeToLive, StoreError> {
        hop!(self, |b| b.lease_time_to_live(id, keys))
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        hop!(self, |b| b.compact(revision))
    }
    async fn status(&self) -> Result<StoreStatus, StoreError> {
        hop!(self, |b| b.status())
    }
}

/// Connects to the etcd cluster at `endpoints` on a runtime of its own, and checks that it
/// answers. Returns the backend and the runtime that must outlive it.
pub(crate) fn connect_etcd(
    endpoints: &[String],
) -> Result<(Arc<dyn Backend>, Runtime), ServerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ETCD_RUNTIME_THREADS)
        .thread_name("etcd-client")
        .enable_all()
        .build()
        .map_err(io("starting the etcd client runtime"))?;
    let etcd = {
        let _in_rt = rt.enter();
        store::etcd_backend::EtcdBackend::connect(&store::etcd_backend::EtcdConfig::new(
            endpoints.to_vec(),
        ))
        .map_err(|e| ServerError::Store(format!("etcd at {endpoints:?}: {e}")))?
    };
    let backend: Arc<dyn Backend> = Arc::new(OnRuntime {
        inner: Arc::new(etcd),
        handle: rt.handle().clone(),
    });
    // Fail at start, not on the first request, when etcd is not there.
    rt.block_on(backend.status())
        .map_err(|e| ServerError::Store(format!("etcd at {endpoints:?} does not answer: {e}")))?;
    Ok((backend, rt))
}
