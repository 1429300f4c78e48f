//! A [`Backend`] over a real etcd v3 cluster (e.g. Debian's `etcd-server`), for multi-machine
//! HA with several apiservers. It speaks gRPC through our own generated client (the same one
//! the benches use to drive etcd and the kubeshard store side by side).
//!
//! - Values are stored with [`codec`]: opaque values verbatim, others as a small envelope;
//!   `rv_slot` is filled at read time with the mod revision etcd reports.
//! - Watch filters (labels, fields) are evaluated here, on the client side: etcd has no index.
//!   A filtered watch asks etcd for `prev_kv` so that "stopped matching" events pass.
//! - Reads (range, status, lease lookups) are retried on `Unavailable` with bounded backoff.
//!   Writes are not retried (a write that reached etcd would be applied twice); their
//!   `Unavailable` error goes to the caller, who may retry (the compare-and-swap makes that safe).
//! - `compact_revision` in [`StoreStatus`] and [`StoreError::Compacted`] is learned from etcd
//!   (a probe watch on a reserved key) because etcd's errors do not carry it.
//!
//! Known limits: a `Value` compare compares the stored bytes, so it is exact only for opaque
//! values; progress notifications come from etcd's progress requests, which etcd 3.4 may
//! answer before it has flushed a lagging watcher's events.

pub mod codec;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::backend::{
    Backend, Compare, CompareOp, CompareTarget, KeyValue, LeaseGrant, LeaseId, LeaseTimeToLive,
    RangeRequest, RangeResponse, Requirement, Revision, StoreStatus, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchEvent, WatchFilter, WatchRequest, WatchStream,
};
use crate::error::{MAX_VALUE_BYTES, StoreError};
use crate::etcd_wire::{encode_range_end, msg};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::mvccpb;

/// Largest gRPC message the client accepts (a range of many large values).
const MAX_RECV_BYTES: usize = 256 * 1024 * 1024;
/// Attempts for a retryable read, and the first and largest backoff between them.
const READ_ATTEMPTS: u32 = 6;
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// Timeout of one unary request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Events buffered per watch between the etcd stream and the consumer.
const WATCH_BUFFER: usize = 256;
/// How long a watch with `progress_notify` stays idle before asking etcd for progress.
const PROGRESS_IDLE: Duration = Duration::from_millis(500);
/// The key the compaction probe watches; never written.
const PROBE_KEY: &[u8] = b"\0kubeshard/compact-probe";

/// Connection settings of an [`EtcdBackend`].
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
}

impl EtcdConfig {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// The etcd v3 backend. Cheap to clone clients off; share it as `Arc<dyn Backend>`.
#[derive(Debug, Clone)]
pub struct EtcdBackend {
    channel: Channel,
    /// Highest compaction revision this client has requested or learned.
    compacted: Arc<AtomicU64>,
}

/// Opens a gRPC channel to the given etcd endpoints (round-robin over them). The connection
/// is made lazily and re-made after failures by the channel itself.
pub fn connect_channel(
    endpoints: &[String],
    connect_timeout: Duration,
) -> Result<Channel, StoreError> {
    if endpoints.is_empty() {
        return Err(StoreError::InvalidRequest("no etcd endpoints given".into()));
    }
    let mut eps = Vec::with_capacity(endpoints.len());
    for url in endpoints {
        let ep = Endpoint::from_shared(url.clone())
            .map_err(|e| StoreError::InvalidRequest(format!("bad etcd endpoint {url:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        eps.push(ep);
    }
    if eps.len() == 1 {
        let ep = eps
            .pop()
            .ok_or_else(|| StoreError::InvalidRequest("no endpoint".into()))?;
        Ok(ep.connect_lazy())
    } else {
        Ok(Channel::balance_list(eps.into_iter()))
    }
}

fn status_to_error(s: &Status) -> StoreError {
    let m = s.message();
    match s.code() {
        _ if m == msg::NO_SPACE => StoreError::QuotaExceeded(m.to_string()),
        _ if m == msg::LEASE_NOT_FOUND => StoreError::LeaseNotFound(0),
        _ if m == msg::REQUEST_TOO_LARGE => StoreError::ValueTooLarge {
            size: 0,
            limit: MAX_VALUE_BYTES,
        },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            StoreError::Unavailable(format!("etcd: {m}"))
        }
        Code::Unknown if m.contains("transport") || m.contains("connect") => {
            StoreError::Unavailable(format!("etcd: {m}"))
        }
        _ if m.contains("duplicate key") || s.code() == Code::InvalidArgument => {
            StoreError::InvalidRequest(m.to_string())
        }
        _ => StoreError::Unavailable(format!("etcd: {:?}: {m}", s.code())),
    }
}

fn is_retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded)
        || (s.code() == Code::Unknown
            && (s.message().contains("transport") || s.message().contains("connect")))
}

/// etcd starts an empty store at revision 1 (its first write gets 2); the `Backend` contract
/// gives the first write revision 1. Every revision crossing this backend is shifted by one;
/// 0 ("none", "missing key") maps to itself.
fn to_etcd(r: Revision) -> i64 {
    if r.0 == 0 {
        0
    } else {
        r.0.saturating_add(1).min(i64::MAX as u64) as i64
    }
}

/// The inverse of [`to_etcd`].
fn from_etcd(r: i64) -> Revision {
    Revision(r.saturating_sub(1).max(0) as u64)
}

fn header_rev(h: Option<&pb::ResponseHeader>) -> Revision {
    from_etcd(h.map_or(0, |h| h.revision))
}

fn kv_from_pb(kv: mvccpb::KeyValue) -> Result<KeyValue, StoreError> {
    let mod_revision = from_etcd(kv.mod_revision);
    Ok(KeyValue {
        value: codec::decode(kv.value, mod_revision)?,
        key: kv.key,
        create_revision: from_etcd(kv.create_revision),
        mod_revision,
        version: kv.version,
        lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
    })
}

fn range_to_pb(r: &RangeRequest) -> pb::RangeRequest {
    pb::RangeRequest {
        range_end: encode_range_end(&r.key, &r.range_end),
        key: r.key.clone(),
        limit: r.limit.unwrap_or(0).min(i64::MAX as u64) as i64,
        revision: r.revision.map_or(0, to_etcd),
        keys_only: r.keys_only,
        count_only: r.count_only,
        ..Default::default()
    }
}

fn range_from_pb(req: &RangeRequest, resp: pb::RangeResponse) -> Result<RangeResponse, StoreError> {
    let header_rev = header_rev(resp.header.as_ref());
    let kvs = resp
        .kvs
        .into_iter()
        .map(kv_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RangeResponse {
        kvs,
        more: resp.more,
        count: resp.count.max(0) as u64,
        revision: req.revision.unwrap_or(header_rev),
    })
}

fn compare_to_pb(c: &Compare) -> pb::Compare {
    use pb::compare::{CompareResult, CompareTarget as T, TargetUnion as U};
    let result = match c.op {
        CompareOp::Equal => CompareResult::Equal,
        CompareOp::NotEqual => CompareResult::NotEqual,
        CompareOp::Greater => CompareResult::Greater,
        CompareOp::Less => CompareResult::Less,
    };
    let (target, union) = match &c.target {
        CompareTarget::Version(v) => (T::Version, U::Version(*v)),
        CompareTarget::CreateRevision(r) => (T::Create, U::CreateRevision(to_etcd(*r))),
        CompareTarget::ModRevision(r) => (T::Mod, U::ModRevision(to_etcd(*r))),
        CompareTarget::Value(v) => (T::Value, U::Value(v.clone())),
        CompareTarget::Lease(l) => (T::Lease, U::Lease(l.map_or(0, |l| l.0))),
    };
    pb::Compare {
        result: result as i32,
        target: target as i32,
        range_end: encode_range_end(&c.key, &c.range_end),
        key: c.key.clone(),
        target_union: Some(union),
    }
}

fn op_to_pb(op: &TxnOp) -> Result<pb::RequestOp, StoreError> {
    use pb::request_op::Request;
    let request = match op {
        TxnOp::Put {
            key,
            value,
            lease,
            prev_kv,
        } => {
            if value.raw.len() > MAX_VALUE_BYTES {
                return Err(StoreError::ValueTooLarge {
                    size: value.raw.len(),
                    limit: MAX_VALUE_BYTES,
                });
            }
            if let Some(slot) = value.rv_slot
                && slot as usize > value.raw.len()
            {
                return Err(StoreError::InvalidRequest(format!(
                    "rv_slot {slot} is past the end of the value ({} bytes)",
                    value.raw.len()
                )));
            }
            Request::RequestPut(pb::PutRequest {
                key: key.clone(),
                value: codec::encode(value),
                lease: lease.map_or(0, |l| l.0),
                prev_kv: *prev_kv,
                ..Default::default()
            })
        }
        TxnOp::Delete {
            key,
            range_end,
            prev_kv,
        } => Request::RequestDeleteRange(pb::DeleteRangeRequest {
            range_end: encode_range_end(key, range_end),
            key: key.clone(),
            prev_kv: *prev_kv,
        }),
        TxnOp::Range(r) => Request::RequestRange(range_to_pb(r)),
    };
    Ok(pb::RequestOp {
        request: Some(request),
    })
}

/// Whether one object's labels/fields satisfy all requirements.
fn requirements_hold(reqs: &[Requirement], pairs: &[(String, String)]) -> bool {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
    };
    reqs.iter().all(|r| match r {
        Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
        Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::DoesNotExist(k) => get(k).is_none(),
    })
}

/// Whether a value passes a watch filter (the empty filter passes everything).
pub fn filter_matches(filter: &WatchFilter, value: &crate::backend::ObjectValue) -> bool {
    requirements_hold(&filter.labels, &value.labels)
        && requirements_hold(&filter.fields, &value.fields)
}

fn filter_is_empty(f: &WatchFilter) -> bool {
    f.labels.is_empty() && f.fields.is_empty()
}

impl EtcdBackend {
    /// A backend over the etcd cluster at `config.endpoints`. Does not wait for a connection:
    /// the first request does (and fails with `Unavailable` if etcd cannot be reached).
    pub fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        Ok(Self {
            channel: connect_channel(&config.endpoints, config.connect_timeout)?,
            compacted: Arc::new(AtomicU64::new(0)),
        })
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(MAX_RECV_BYTES)
    }

    fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }

    fn req<T>(m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.set_timeout(REQUEST_TIMEOUT);
        r
    }

    /// Runs a read with bounded retries on transient failures.
    async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut backoff = BACKOFF_FIRST;
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(s) if attempt < READ_ATTEMPTS && is_retryable(&s) => {
                    tracing::debug!(attempt, error = %s, "etcd read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    attempt += 1;
                }
                Err(s) => return Err(s),
            }
        }
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .retry(|| {
                let mut kv = self.kv();
                async move {
                    kv.range(Self::req(pb::RangeRequest {
                        key: Bytes::from_static(PROBE_KEY),
                        count_only: true,
                        ..Default::default()
                    }))
                    .await
                }
            })
            .await
            .map_err(|s| status_to_error(&s))?
            .into_inner();
        Ok(header_rev(resp.header.as_ref()))
    }

    /// Learns etcd's compaction revision: a watch from revision 1 on a key never written is
    /// answered with `compact_revision` if revision 1 is compacted, and with nothing else
    /// otherwise. Bounded by a short timeout; falls back to what this client already knows.
    async fn probe_compacted(&self) -> Revision {
        let known = Revision(self.compacted.load(Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: Bytes::from_static(PROBE_KEY),
                    start_revision: 1,
                    ..Default::default()
                },
            )),
        };
        if tx.send(create).await.is_err() {
            return known;
        }
        let mut client = WatchClient::new(self.channel.clone());
        let fut = async move {
            let mut stream = client
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .ok()?
                .into_inner();
            // etcd checks unsynced watchers every 100 ms; two rounds are plenty.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
            loop {
                let msg = tokio::time::timeout_at(deadline, stream.message()).await;
                match msg {
                    Ok(Ok(Some(r))) if r.compact_revision > 0 => {
                        return Some(from_etcd(r.compact_revision).0);
                    }
                    Ok(Ok(Some(_))) => {}
                    _ => return None,
                }
            }
        };
        let learned = fut.await.unwrap_or(0);
        drop(tx);
        let max = self
            .compacted
            .fetch_max(learned, Ordering::Relaxed)
            .max(learned);
        Revision(max.max(known.0))
    }

    async fn map_read_error(&self, s: Status, requested: Option<Revision>) -> StoreError {
        match s.message() {
            m if m == msg::COMPACTED => StoreError::Compacted {
                requested: requested.unwrap_or_default(),
                compact_revision: self.probe_compacted().await,
            },
            m if m == msg::FUTURE_REV => StoreError::FutureRevision {
                requested: requested.unwrap_or_default(),
                current: self.current_revision().await.unwrap_or_default(),
            },
            _ => status_to_error(&s),
        }
    }
}

#[async_trait::async_trait]
impl Backend for EtcdBackend {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        let pbreq = range_to_pb(&req);
        let result = self
            .retry(|| {
                let mut kv = self.kv();
                let r = pbreq.clone();
                async move { kv.range(Self::req(r)).await }
            })
            .await;
        match result {
            Ok(resp) => range_from_pb(&req, resp.into_inner()),
            Err(s) => Err(self.map_read_error(s, req.revision).await),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let pbreq = pb::TxnRequest {
            compare: txn.compare.iter().map(compare_to_pb).collect(),
            success: txn.success.iter().map(op_to_pb).collect::<Result<_, _>>()?,
            failure: txn.failure.iter().map(op_to_pb).collect::<Result<_, _>>()?,
        };
        let resp = match self.kv().txn(Self::req(pbreq)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.message() == msg::LEASE_NOT_FOUND => {
                let id = txn
                    .success
                    .iter()
                    .chain(txn.failure.iter())
                    .find_map(|op| match op {
                        TxnOp::Put { lease: Some(l), .. } => Some(l.0),
                        _ => None,
                    });
                return Err(StoreError::LeaseNotFound(id.unwrap_or(0)));
            }
            Err(s) => {
                let requested =
                    txn.success
                        .iter()
                        .chain(txn.failure.iter())
                        .find_map(|op| match op {
                            TxnOp::Range(r) => r.revision,
                            _ => None,
                        });
                return Err(self.map_read_error(s, requested).await);
            }
        };
        let revision = header_rev(resp.header.as_ref());
        let branch = if resp.succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(resp.responses.len());
        for (op, r) in branch.iter().zip(resp.responses) {
            use pb::response_op::Response;
            let out = match (op, r.response) {
                (TxnOp::Put { .. }, Some(Response::ResponsePut(p))) => TxnOpResponse::Put {
                    prev_kv: p.prev_kv.map(kv_from_pb).transpose()?,
                },
                (TxnOp::Delete { .. }, Some(Response::ResponseDeleteRange(d))) => {
                    TxnOpResponse::Delete {
                        deleted: d.deleted.max(0) as u64,
                        prev_kvs: d
                            .prev_kvs
                            .into_iter()
                            .map(kv_from_pb)
                            .collect::<Result<_, _>>()?,
                    }
                }
                (TxnOp::Range(req), Some(Response::ResponseRange(rr))) => {
                    let mut out = range_from_pb(req, rr)?;
                    if req.revision.is_none() {
                        out.revision = revision;
                    }
                    TxnOpResponse::Range(out)
                }
                _ => {
                    return Err(StoreError::Corrupt(
                        "etcd txn response does not match its request".into(),
                    ));
                }
            };
            responses.push(out);
        }
        Ok(TxnResponse {
            succeeded: resp.succeeded,
            revision,
            responses,
        })
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream, StoreError> {
        let want_prev = req.prev_kv;
        let filter = req.filter.clone();
        let filtered = !filter_is_empty(&filter);
        let create = pb::WatchCreateRequest {
            range_end: encode_range_end(&req.key, &req.range_end),
            key: req.key.clone(),
            start_revision: req.start_revision.map_or(0, to_etcd),
            progress_notify: req.progress_notify,
            prev_kv: want_prev || filtered,
            ..Default::default()
        };
        let (req_tx, req_rx) = mpsc::channel::<pb::WatchRequest>(4);
        req_tx
            .send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
            })
            .await
            .map_err(|_| StoreError::Unavailable("watch request channel closed".into()))?;
        let mut client =
            WatchClient::new(self.channel.clone()).max_decoding_message_size(MAX_RECV_BYTES);
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .map_err(|s| status_to_error(&s))?
            .into_inner();
        // The first response confirms the watch (or refuses it).
        let first = tokio::time::timeout(REQUEST_TIMEOUT, stream.message())
            .await
            .map_err(|_| StoreError::Unavailable("etcd did not confirm the watch".into()))?
            .map_err(|s| status_to_error(&s))?
            .ok_or_else(|| StoreError::Unavailable("etcd closed the watch stream".into()))?;
        if first.canceled && first.compact_revision == 0 {
            return Err(StoreError::InvalidRequest(format!(
                "etcd refused the watch: {}",
                first.cancel_reason
            )));
        }
        let (tx, rx) = mpsc::channel::<Result<Vec<WatchEvent>, StoreError>>(WATCH_BUFFER);
        let requested = req.start_revision.unwrap_or_default();
        let compacted = self.compacted.clone();
        let progress_notify = req.progress_notify;
        tokio::spawn(async move {
            // Kept alive for the life of the watch: dropping it would end etcd's stream.
            let req_tx = req_tx;
            let mut pending = Some(first);
            loop {
                let resp = match pending.take() {
                    Some(r) => r,
                    None => {
                        let next = if progress_notify {
                            match tokio::time::timeout(PROGRESS_IDLE, stream.message()).await {
                                Ok(n) => n,
                                Err(_) => {
                                    let ask = pb::WatchRequest {
                                        request_union: Some(
                                            pb::watch_request::RequestUnion::ProgressRequest(
                                                pb::WatchProgressRequest {},
                                            ),
                                        ),
                                    };
                                    if req_tx.send(ask).await.is_err() {
                                        return;
                                    }
                                    continue;
                                }
                            }
                        } else {
                            tokio::select! {
                                n = stream.message() => n,
                                () = tx.closed() => return,
                            }
                        };
                        match next {
                            Ok(Some(r)) => r,
                            Ok(None) => {
                                let _ = tx
                                    .send(Err(StoreError::Unavailable(
                                        "etcd ended the watch".into(),
                                    )))
                                    .await;
                                return;
                            }
                            Err(s) => {
                                let _ = tx.send(Err(status_to_error(&s))).await;
                                return;
                            }
                        }
                    }
                };
                if resp.compact_revision > 0 {
                    let c = from_etcd(resp.compact_revision).0;
                    compacted.fetch_max(c, Ordering::Relaxed);
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            requested,
                            compact_revision: Revision(c),
                        }))
                        .await;
                    return;
                }
                if resp.canceled {
                    let _ = tx
                        .send(Err(StoreError::Unavailable(format!(
                            "etcd canceled the watch: {}",
                            resp.cancel_reason
                        ))))
                        .await;
                    return;
                }
                let header_rev = header_rev(resp.header.as_ref());
                if resp.created {
                    continue;
                }
                let batch = if resp.events.is_empty() {
                    if !progress_notify {
                        continue;
                    }
                    vec![WatchEvent::Progress(header_rev)]
                } else {
                    match convert_events(resp.events, &filter, want_prev) {
                        Ok(b) if b.is_empty() => continue,
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                };
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn lease_grant(
        &self,
        ttl_seconds: i64,
        id: Option<LeaseId>,
    ) -> Result<LeaseGrant, StoreError> {
        let resp = self
            .lease()
            .lease_grant(Self::req(pb::LeaseGrantRequest {
                ttl: ttl_seconds,
                id: id.map_or(0, |l| l.0),
            }))
            .await
            .map_err(|s| match s.message() {
                m if m == msg::LEASE_EXIST => StoreError::LeaseExists(id.map_or(0, |l| l.0)),
                m if m == msg::LEASE_TTL_TOO_LARGE => StoreError::InvalidRequest(m.to_string()),
                _ => status_to_error(&s),
            })?
            .into_inner();
        if !resp.error.is_empty() {
            return Err(StoreError::InvalidRequest(resp.error));
        }
        Ok(LeaseGrant {
            id: LeaseId(resp.id),
            ttl_seconds: resp.ttl,
        })
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, StoreError> {
        let resp = self
            .lease()
            .lease_revoke(Self::req(pb::LeaseRevokeRequest { id: id.0 }))
            .await
            .map_err(|s| match s.message() {
                m if m == msg::LEASE_NOT_FOUND => StoreError::LeaseNotFound(id.0),
                _ => status_to_error(&s),
            })?
            .into_inner();
        Ok(header_rev(resp.header.as_ref()))
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        let resp = self
            .retry(|| {
                let mut lease = self.lease();
                async move {
                    let out = futures::stream::iter([pb::LeaseKeepAliveRequest { id: id.0 }]);
                    let mut s = lease.lease_keep_alive(Self::req(out)).await?.into_inner();
                    s.message()
                        .await?
                        .ok_or_else(|| Status::unavailable("etcd closed the keep-alive stream"))
                }
            })
            .await
            .map_err(|s| status_to_error(&s))?;
        if resp.ttl <= 0 {
            return Err(StoreError::LeaseNotFound(id.0));
        }
        Ok(resp.ttl)
    }

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        with_keys: bool,
    ) -> Result<LeaseTimeToLive, StoreError> {
        let resp = self
            .retry(|| {
                let mut lease = self.lease();
                async move {
                    lease
                        .lease_time_to_live(Self::req(pb::LeaseTimeToLiveRequest {
                            id: id.0,
                            keys: with_keys,
                        }))
                        .await
                }
            })
            .await;
        match resp {
            Ok(r) => {
                let r = r.into_inner();
                Ok(LeaseTimeToLive {
                    id,
                    ttl_seconds: if r.ttl < 0 { -1 } else { r.ttl },
                    granted_ttl_seconds: r.granted_ttl,
                    keys: r.keys,
                })
            }
            Err(s) if s.message() == msg::LEASE_NOT_FOUND => Ok(LeaseTimeToLive {
                id,
                ttl_seconds: -1,
                granted_ttl_seconds: 0,
                keys: Vec::new(),
            }),
            Err(s) => Err(status_to_error(&s)),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let result = self
            .kv()
            .compact(Self::req(pb::CompactionRequest {
                revision: to_etcd(revision),
                physical: false,
            }))
            .await;
        match result {
            Ok(_) => {
                self.compacted.fetch_max(revision.0, Ordering::Relaxed);
                Ok(())
            }
            Err(s) => Err(self.map_read_error(s, Some(revision)).await),
        }
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        let resp = self
            .retry(|| {
                let mut m = MaintenanceClient::new(self.channel.clone());
                async move { m.status(Self::req(pb::StatusRequest {})).await }
            })
            .await
            .map_err(|s| status_to_error(&s))?
            .into_inner();
        // Status's header revision is the store revision as of the raft index; a range is
        // the linearizable answer.
        let revision = self.current_revision().await?;
        Ok(StoreStatus {
            revision,
            compact_revision: Revision(self.compacted.load(Ordering::Relaxed)),
            db_size_bytes: resp.db_size.max(0) as u64,
            db_size_in_use_bytes: resp.db_size_in_use.max(0) as u64,
            version: resp.version,
        })
    }
}

fn convert_events(
    events: Vec<mvccpb::Event>,
    filter: &WatchFilter,
    want_prev: bool,
) -> Result<Vec<WatchEvent>, StoreError> {
    let filtered = !filter_is_empty(filter);
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let Some(kv) = ev.kv else {
            return Err(StoreError::Corrupt("etcd watch event without kv".into()));
        };
        let prev = ev.prev_kv.map(kv_from_pb).transpose()?;
        let is_delete = ev.r#type == mvccpb::event::EventType::Delete as i32;
        let event = if is_delete {
            WatchEvent::Delete {
                key: kv.key,
                revision: from_etcd(kv.mod_revision),
                prev_kv: prev,
            }
        } else {
            WatchEvent::Put {
                kv: kv_from_pb(kv)?,
                prev_kv: prev,
            }
        };
        if filtered {
            let passes = match &event {
                WatchEvent::Put { kv, prev_kv } => {
                    filter_matches(filter, &kv.value)
                        || prev_kv
                            .as_ref()
                            .is_some_and(|p| filter_matches(filter, &p.value))
                }
                WatchEvent::Delete { prev_kv, .. } => prev_kv
                    .as_ref()
                    .is_some_and(|p| filter_matches(filter, &p.value)),
                WatchEvent::Progress(_) => true,
            };
            if !passes {
                continue;
            }
        }
        let event = if want_prev {
            event
        } else {
            match event {
                WatchEvent::Put { kv, .. } => WatchEvent::Put { kv, prev_kv: None },
                WatchEvent::Delete {
                    key,
                    revision,
                    prev_kv,
                } => WatchEvent::Delete {
                    key,
                    revision,
                    // The trait lets a filtered delete carry prev_kv; keep it then.
                    prev_kv: if filtered { prev_kv } else { None },
                },
                p @ WatchEvent::Progress(_) => p,
            }
        };
        out.push(event);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ObjectValue;

    #[test]
    fn requirements_follow_label_selector_semantics() {
        let mut v = ObjectValue::opaque(&b""[..]);
        v.labels = vec![("app".into(), "web".into()), ("tier".into(), "fe".into())];
        let f = |labels: Vec<Requirement>| WatchFilter {
            labels,
            fields: vec![],
        };
        assert!(filter_matches(&f(vec![]), &v));
        assert!(filter_matches(
            &f(vec![Requirement::Equals("app".into(), "web".into())]),
            &v
        ));
        assert!(!filter_matches(
            &f(vec![Requirement::Equals("app".into(), "db".into())]),
            &v
        ));
        assert!(filter_matches(
            &f(vec![Requirement::NotEquals("app".into(), "db".into())]),
            &v
        ));
        assert!(filter_matches(
            &f(vec![Requirement::In(
                "tier".into(),
                vec!["be".into(), "fe".into()]
            )]),
            &v
        ));
        assert!(filter_matches(
            &f(vec![Requirement::NotIn("zone".into(), vec!["a".into()])]),
            &v
        ));
        assert!(!filter_matches(
            &f(vec![Requirement::Exists("zone".into())]),
            &v
        ));
        assert!(filter_matches(
            &f(vec![Requirement::DoesNotExist("zone".into())]),
            &v
        ));
    }
}
