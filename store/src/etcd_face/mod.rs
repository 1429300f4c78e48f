//! The etcd v3 face: serves etcd's gRPC API (KV, Watch, Lease, Maintenance.Status,
//! Cluster.MemberList) over any [`Backend`], so `etcdctl`, etcd client libraries and the
//! benches talk to the kubeshard store as they would to etcd.
//!
//! Semantics follow etcd 3.4: response headers carry the store revision and this member's
//! cluster/member ids; errors are etcd's gRPC codes and message texts; values are opaque
//! ([`ObjectValue::opaque`](crate::backend::ObjectValue::opaque)).
//!
//! What the face adds on top of the backend:
//! - Range sorting (any target, either order) and the min/max mod/create revision filters are
//!   applied here, after reading without a limit, as etcd's own server does.
//! - `ignore_value`/`ignore_lease` puts are a bounded read + compare-and-swap loop.
//! - Watch: one backend watch per etcd watch id, multiplexed on the client's gRPC stream;
//!   NOPUT/NODELETE filters; responses never split one revision; a backend
//!   [`StoreError::WatchTooSlow`] is resumed transparently from the revision it names (etcd's
//!   slow watchers catch up the same way), a compacted start revision is answered as etcd does
//!   (`compact_revision` set, then canceled). Progress requests are answered with the lowest
//!   revision every watcher of the stream is known to have delivered.
//!
//! Not served: nested transactions (`request_txn` inside a txn), watch fragmentation, auth,
//! and the other Cluster/Maintenance calls (they answer `Unimplemented`).

mod convert;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::{
    Backend, Compare, CompareOp, CompareTarget, RangeEnd, RangeRequest, Revision, Txn, TxnOp,
    TxnOpResponse, WatchEvent, WatchFilter, WatchRequest,
};
use crate::error::StoreError;
use crate::etcd_wire::{decode_range_end, msg};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use crate::proto::etcdserverpb::kv_server::{Kv, KvServer};
use crate::proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use crate::proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use crate::proto::etcdserverpb::watch_server::{Watch, WatchServer};
use crate::proto::mvccpb;
use convert::{
    PutIgnores, backend_rev, compare_from_pb, delete_op, kv_to_pb, put_op, range_from_pb,
    status_of, wire_header_rev, wire_rev,
};

/// Largest request the face accepts: etcd's 1.5 MiB request limit plus gRPC overhead.
const MAX_REQUEST_BYTES: usize = crate::error::MAX_VALUE_BYTES + 512 * 1024;
/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;
/// Attempts of the read + compare-and-swap loop behind `ignore_value`/`ignore_lease`.
const IGNORE_CAS_ATTEMPTS: usize = 16;
/// Responses buffered per watch stream before the watchers feeding it wait.
const WATCH_OUT_BUFFER: usize = 1024;
/// Events per watch response before a new response is started (at a revision boundary).
const WATCH_EVENTS_PER_RESPONSE: usize = 1000;
/// Watchers one gRPC watch stream may hold.
const MAX_WATCHERS_PER_STREAM: usize = 100_000;
/// Back-to-back transparent resumes of one watcher before it is canceled instead.
const MAX_RESUMES: u32 = 8;
/// Keep-alive requests buffered per lease stream.
const LEASE_OUT_BUFFER: usize = 64;
/// etcd's largest lease TTL.
const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Identity the face reports in response headers and `member list`.
#[derive(Debug, Clone)]
pub struct FaceConfig {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    /// The URLs clients reach this member on (reported by `member list`).
    pub client_urls: Vec<String>,
}

impl FaceConfig {
    /// A config whose ids are derived from `seed` (e.g. the data dir), stable across restarts.
    pub fn from_seed(seed: &str, client_urls: Vec<String>) -> Self {
        // FNV-1a: stable, dependency-free, good enough for an id.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self {
            cluster_id: h | 1,
            member_id: h.rotate_left(17) | 1,
            name: "kubeshard".into(),
            client_urls,
        }
    }
}

/// Failures starting or running the face.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FaceError {
    /// The listen address could not be bound. Not retryable with the same address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// A listen URL is not `http://IP:PORT`. Not retryable.
    #[error("bad listen URL {0:?}: expected http://IP:PORT")]
    BadUrl(String),
    /// The gRPC server failed. Not retryable.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The backend failed while starting. Retryable if the backend's error is.
    #[error("store backend: {0}")]
    Backend(#[from] StoreError),
}

/// Parses `http://IP:PORT` (etcd's `--listen-client-urls` form; TLS is not served).
pub fn parse_listen_url(url: &str) -> Result<SocketAddr, FaceError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| FaceError::BadUrl(url.to_string()))?;
    rest.trim_end_matches('/')
        .parse()
        .map_err(|_| FaceError::BadUrl(url.to_string()))
}

#[derive(Clone)]
struct Face {
    backend: Arc<dyn Backend>,
    config: Arc<FaceConfig>,
    /// Highest store revision this face has seen; stamps headers of calls that do not read
    /// one (leases, watch creation).
    last_rev: Arc<AtomicI64>,
}

impl Face {
    fn saw(&self, rev: Revision) -> i64 {
        let r = rev.0 as i64;
        self.last_rev.fetch_max(r, Ordering::Relaxed).max(r)
    }

    fn header_at(&self, rev: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.config.cluster_id,
            member_id: self.config.member_id,
            revision: wire_header_rev(rev),
            raft_term: 2,
        })
    }

    /// A header with the newest revision seen (never older than `rev`).
    fn header(&self, rev: Revision) -> Option<pb::ResponseHeader> {
        self.header_at(self.saw(rev))
    }

    /// A write's header: exactly the revision the write produced (etcd applies writes in
    /// order, so its header after a put is that put's revision).
    fn write_header(&self, rev: Revision) -> Option<pb::ResponseHeader> {
        self.saw(rev);
        self.header_at(rev.0 as i64)
    }

    fn latest_header(&self) -> Option<pb::ResponseHeader> {
        self.header_at(self.last_rev.load(Ordering::Relaxed))
    }
}

/// Whether a range needs every key read first (sorting other than by key ascending, or
/// min/max revision filters), as etcd decides.
fn needs_full_read(r: &pb::RangeRequest) -> bool {
    use pb::range_request::{SortOrder, SortTarget};
    let order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let sorted = match order {
        SortOrder::None => target != SortTarget::Key,
        SortOrder::Ascend => target != SortTarget::Key,
        SortOrder::Descend => true,
    };
    sorted
        || r.min_mod_revision > 0
        || r.max_mod_revision > 0
        || r.min_create_revision > 0
        || r.max_create_revision > 0
}

/// Applies etcd's post-read steps (filters, sort, limit) and builds the wire response.
fn finish_range(
    face: &Face,
    r: &pb::RangeRequest,
    resp: crate::backend::RangeResponse,
) -> pb::RangeResponse {
    use pb::range_request::{SortOrder, SortTarget};
    let mut kvs = resp.kvs;
    let mut more = resp.more;
    if needs_full_read(r) && !r.count_only {
        kvs.retain(|kv| {
            let m = wire_rev(kv.mod_revision);
            let c = wire_rev(kv.create_revision);
            (r.min_mod_revision == 0 || m >= r.min_mod_revision)
                && (r.max_mod_revision == 0 || m <= r.max_mod_revision)
                && (r.min_create_revision == 0 || c >= r.min_create_revision)
                && (r.max_create_revision == 0 || c <= r.max_create_revision)
        });
        let order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
        let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
        let order = if order == SortOrder::None && target != SortTarget::Key {
            SortOrder::Ascend
        } else {
            order
        };
        if order != SortOrder::None {
            // Stable sorts over key-ordered input: ties stay in key order, as etcd's.
            match target {
                SortTarget::Key => {}
                SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
                SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
                SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
                SortTarget::Value => kvs.sort_by(|a, b| a.value.raw.cmp(&b.value.raw)),
            }
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
    }
    pb::RangeResponse {
        header: face.header(resp.revision),
        kvs: kvs
            .into_iter()
            .map(|kv| kv_to_pb(kv, r.keys_only))
            .collect(),
        more,
        count: resp.count as i64,
    }
}

/// etcd returns a range delete's previous values in key order; a sharded backend may not.
fn prev_kvs_in_key_order(mut kvs: Vec<crate::backend::KeyValue>) -> Vec<mvccpb::KeyValue> {
    kvs.sort_by(|a, b| a.key.cmp(&b.key));
    kvs.into_iter().map(|kv| kv_to_pb(kv, false)).collect()
}

fn backend_range(r: &pb::RangeRequest) -> Result<RangeRequest, Status> {
    let mut req = range_from_pb(r)?;
    if needs_full_read(r) && !r.count_only {
        req.limit = None;
    }
    Ok(req)
}

impl Face {
    async fn run_txn(&self, txn: Txn) -> Result<crate::backend::TxnResponse, Status> {
        self.backend.txn(txn).await.map_err(|e| status_of(&e))
    }

    /// A put with `ignore_value`/`ignore_lease`: keeps the current value/lease, applied with a
    /// compare on the mod revision so a concurrent write is not overwritten blindly.
    async fn put_keeping(
        &self,
        op: TxnOp,
        ignore: PutIgnores,
    ) -> Result<(crate::backend::TxnResponse, bool), Status> {
        let TxnOp::Put {
            key,
            value,
            lease,
            prev_kv,
        } = op
        else {
            return Err(Status::internal("put_keeping called without a put"));
        };
        for _ in 0..IGNORE_CAS_ATTEMPTS {
            let cur = self
                .backend
                .get(key.clone())
                .await
                .map_err(|e| status_of(&e))?
                .ok_or_else(|| Status::invalid_argument(msg::KEY_NOT_FOUND))?;
            let txn = Txn {
                compare: vec![Compare {
                    key: key.clone(),
                    range_end: RangeEnd::Single,
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(cur.mod_revision),
                }],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value: if ignore.value {
                        cur.value.clone()
                    } else {
                        value.clone()
                    },
                    lease: if ignore.lease { cur.lease } else { lease },
                    prev_kv,
                }],
                failure: vec![],
            };
            let resp = self.run_txn(txn).await?;
            if resp.succeeded {
                return Ok((resp, true));
            }
        }
        Err(Status::unavailable(
            "etcdserver: too much contention on the key for ignore_value/ignore_lease",
        ))
    }

    fn op_from_pb(&self, op: pb::RequestOp) -> Result<TxnOp, Status> {
        use pb::request_op::Request;
        match op.request {
            Some(Request::RequestRange(r)) => Ok(TxnOp::Range(backend_range(&r)?)),
            Some(Request::RequestPut(p)) => {
                if p.ignore_value || p.ignore_lease {
                    return Err(Status::unimplemented(
                        "etcdserver: ignore_value/ignore_lease inside a txn is not supported by kubeshard",
                    ));
                }
                Ok(put_op(p)?.0)
            }
            Some(Request::RequestDeleteRange(d)) => delete_op(d),
            Some(Request::RequestTxn(_)) => Err(Status::unimplemented(
                "etcdserver: nested txn is not supported by kubeshard",
            )),
            None => Err(Status::invalid_argument("etcdserver: empty request op")),
        }
    }
}

#[tonic::async_trait]
impl Kv for Face {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.into_inner();
        let resp = self
            .backend
            .range(backend_range(&r)?)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(finish_range(self, &r, resp)))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let (op, ignore) = put_op(request.into_inner())?;
        let resp = if ignore.value || ignore.lease {
            self.put_keeping(op, ignore).await?.0
        } else {
            self.run_txn(Txn {
                compare: vec![],
                success: vec![op],
                failure: vec![],
            })
            .await?
        };
        let prev_kv = match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Put { prev_kv }) => prev_kv.map(|kv| kv_to_pb(kv, false)),
            _ => None,
        };
        Ok(Response::new(pb::PutResponse {
            header: self.write_header(resp.revision),
            prev_kv,
        }))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let op = delete_op(request.into_inner())?;
        let resp = self
            .run_txn(Txn {
                compare: vec![],
                success: vec![op],
                failure: vec![],
            })
            .await?;
        let (deleted, prev_kvs) = match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Delete { deleted, prev_kvs }) => (deleted, prev_kvs),
            _ => (0, Vec::new()),
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: self.write_header(resp.revision),
            deleted: deleted as i64,
            prev_kvs: prev_kvs_in_key_order(prev_kvs),
        }))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let t = request.into_inner();
        if t.success.len() > MAX_TXN_OPS || t.failure.len() > MAX_TXN_OPS {
            return Err(Status::invalid_argument(msg::TOO_MANY_OPS));
        }
        // Keep the wire ranges: their sort/filter options are applied to the answers.
        let ranges_of = |ops: &[pb::RequestOp]| -> Vec<Option<pb::RangeRequest>> {
            ops.iter()
                .map(|op| match &op.request {
                    Some(pb::request_op::Request::RequestRange(r)) => Some(r.clone()),
                    _ => None,
                })
                .collect()
        };
        let success_ranges = ranges_of(&t.success);
        let failure_ranges = ranges_of(&t.failure);
        let txn = Txn {
            compare: t
                .compare
                .into_iter()
                .map(compare_from_pb)
                .collect::<Result<_, _>>()?,
            success: t
                .success
                .into_iter()
                .map(|op| self.op_from_pb(op))
                .collect::<Result<_, _>>()?,
            failure: t
                .failure
                .into_iter()
                .map(|op| self.op_from_pb(op))
                .collect::<Result<_, _>>()?,
        };
        let resp = self.run_txn(txn).await?;
        let wire_ranges = if resp.succeeded {
            success_ranges
        } else {
            failure_ranges
        };
        let header = self.write_header(resp.revision);
        let mut responses = Vec::with_capacity(resp.responses.len());
        for (i, r) in resp.responses.into_iter().enumerate() {
            use pb::response_op::Response as R;
            let out = match r {
                TxnOpResponse::Put { prev_kv } => R::ResponsePut(pb::PutResponse {
                    header,
                    prev_kv: prev_kv.map(|kv| kv_to_pb(kv, false)),
                }),
                TxnOpResponse::Delete { deleted, prev_kvs } => {
                    R::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header,
                        deleted: deleted as i64,
                        prev_kvs: prev_kvs_in_key_order(prev_kvs),
                    })
                }
                TxnOpResponse::Range(rr) => {
                    let wire = wire_ranges.get(i).cloned().flatten().unwrap_or_default();
                    let mut out = finish_range(self, &wire, rr);
                    out.header = header;
                    R::ResponseRange(out)
                }
            };
            responses.push(pb::ResponseOp {
                response: Some(out),
            });
        }
        Ok(Response::new(pb::TxnResponse {
            header,
            succeeded: resp.succeeded,
            responses,
        }))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let r = request.into_inner();
        if r.revision <= 0 {
            return Err(Status::out_of_range(msg::COMPACTED));
        }
        // Wire revision 1 is the empty store: nothing below it to discard.
        let rev = backend_rev(r.revision);
        if rev.0 > 0 {
            self.backend.compact(rev).await.map_err(|e| status_of(&e))?;
        }
        let st = self.backend.status().await.map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::CompactionResponse {
            header: self.header(st.revision),
        }))
    }
}

#[tonic::async_trait]
impl Lease for Face {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(Status::out_of_range(msg::LEASE_TTL_TOO_LARGE));
        }
        let id = (r.id != 0).then_some(crate::backend::LeaseId(r.id));
        let g = self
            .backend
            .lease_grant(r.ttl, id)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: self.latest_header(),
            id: g.id.0,
            ttl: g.ttl_seconds,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let r = request.into_inner();
        let rev = self
            .backend
            .lease_revoke(crate::backend::LeaseId(r.id))
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: self.header(rev),
        }))
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(LEASE_OUT_BUFFER);
        let face = self.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    m = inbound.message() => m,
                    () = tx.closed() => return,
                };
                let req = match req {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                let id = crate::backend::LeaseId(req.id);
                // etcd answers an unknown or expired lease with TTL 0, not an error.
                let out = match face.backend.lease_keep_alive(id).await {
                    Ok(ttl) => Ok(ttl),
                    Err(StoreError::LeaseNotFound(_)) => Ok(0),
                    Err(e) => Err(status_of(&e)),
                };
                let msg = out.map(|ttl| pb::LeaseKeepAliveResponse {
                    header: face.latest_header(),
                    id: req.id,
                    ttl,
                });
                let stop = msg.is_err();
                if tx.send(msg).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let resp = match self
            .backend
            .lease_time_to_live(crate::backend::LeaseId(r.id), r.keys)
            .await
        {
            Ok(t) if t.ttl_seconds >= 0 => pb::LeaseTimeToLiveResponse {
                header: self.latest_header(),
                id: r.id,
                ttl: t.ttl_seconds,
                granted_ttl: t.granted_ttl_seconds,
                keys: t.keys,
            },
            // etcd 3.4 answers an unknown or expired lease with TTL -1.
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => pb::LeaseTimeToLiveResponse {
                header: self.latest_header(),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Err(e) => return Err(status_of(&e)),
        };
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl Maintenance for Face {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.backend.status().await.map_err(|e| status_of(&e))?;
        let rev = self.saw(st.revision);
        Ok(Response::new(pb::StatusResponse {
            header: self.header_at(rev),
            version: st.version,
            db_size: st.db_size_bytes as i64,
            leader: self.config.member_id,
            raft_index: wire_header_rev(rev) as u64,
            raft_term: 2,
            raft_applied_index: wire_header_rev(rev) as u64,
            errors: Vec::new(),
            db_size_in_use: st.db_size_in_use_bytes as i64,
            is_learner: false,
        }))
    }
}

#[tonic::async_trait]
impl Cluster for Face {
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: self.latest_header(),
            members: vec![pb::Member {
                id: self.config.member_id,
                name: self.config.name.clone(),
                peer_ur_ls: Vec::new(),
                client_ur_ls: self.config.client_urls.clone(),
                is_learner: false,
            }],
        }))
    }
}

// --- watch ---

struct Watcher {
    task: JoinHandle<()>,
    /// Every event up to this revision has been handed to the client's stream.
    resolved: Arc<AtomicI64>,
}

/// What a watcher's pump needs besides the backend stream.
struct PumpCtx {
    face: Face,
    id: i64,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    req: WatchRequest,
    no_put: bool,
    no_delete: bool,
    client_progress: bool,
    resolved: Arc<AtomicI64>,
}

fn event_to_pb(ev: WatchEvent) -> Option<mvccpb::Event> {
    use mvccpb::event::EventType;
    match ev {
        WatchEvent::Put { kv, prev_kv } => Some(mvccpb::Event {
            r#type: EventType::Put as i32,
            kv: Some(kv_to_pb(kv, false)),
            prev_kv: prev_kv.map(|p| kv_to_pb(p, false)),
        }),
        WatchEvent::Delete {
            key,
            revision,
            prev_kv,
        } => Some(mvccpb::Event {
            r#type: EventType::Delete as i32,
            kv: Some(mvccpb::KeyValue {
                key,
                mod_revision: wire_rev(revision),
                ..Default::default()
            }),
            prev_kv: prev_kv.map(|p| kv_to_pb(p, false)),
        }),
        WatchEvent::Progress(_) => None,
    }
}

impl PumpCtx {
    fn response(&self, rev: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: self.face.header_at(rev),
            watch_id: self.id,
            ..Default::default()
        }
    }

    async fn send(&self, r: pb::WatchResponse) -> bool {
        self.out.send(Ok(r)).await.is_ok()
    }

    async fn cancel(&self, compact_revision: i64, reason: String) {
        let mut r = self.response(self.face.last_rev.load(Ordering::Relaxed));
        r.canceled = true;
        r.compact_revision = wire_rev(Revision(compact_revision.max(0) as u64));
        r.cancel_reason = reason;
        let _ = self.send(r).await;
    }

    /// Forwards one batch (whole revisions) as responses; false if the client is gone.
    async fn deliver(&self, batch: Vec<WatchEvent>) -> bool {
        let mut events: Vec<mvccpb::Event> = Vec::new();
        let mut events_rev: i64 = 0;
        let mut progress: Option<i64> = None;
        let mut last_rev: i64 = 0;
        for ev in batch {
            let rev = ev.revision().0 as i64;
            if let WatchEvent::Progress(r) = ev {
                progress = Some(r.0 as i64);
                last_rev = last_rev.max(r.0 as i64);
                continue;
            }
            // Cut at a revision boundary once a response is large enough.
            if rev != events_rev && events.len() >= WATCH_EVENTS_PER_RESPONSE {
                let mut r = self.response(events_rev);
                r.events = std::mem::take(&mut events);
                if !self.send(r).await {
                    return false;
                }
                self.resolved.fetch_max(events_rev, Ordering::Relaxed);
            }
            events_rev = rev;
            last_rev = last_rev.max(rev);
            let skip = match &ev {
                WatchEvent::Put { .. } => self.no_put,
                WatchEvent::Delete { .. } => self.no_delete,
                WatchEvent::Progress(_) => true,
            };
            if !skip && let Some(e) = event_to_pb(ev) {
                events.push(e);
            }
        }
        if !events.is_empty() {
            let mut r = self.response(events_rev);
            r.events = events;
            if !self.send(r).await {
                return false;
            }
        }
        self.face.saw(Revision(last_rev.max(0) as u64));
        self.resolved.fetch_max(last_rev, Ordering::Relaxed);
        if let Some(p) = progress
            && self.client_progress
            && !self.send(self.response(p)).await
        {
            return false;
        }
        true
    }

    async fn run(self, mut stream: crate::backend::WatchStream) {
        let mut resumes = 0u32;
        loop {
            match stream.next().await {
                Some(Ok(batch)) => {
                    if batch.iter().any(|e| !matches!(e, WatchEvent::Progress(_))) {
                        resumes = 0;
                    }
                    if !self.deliver(batch).await {
                        return;
                    }
                }
                Some(Err(StoreError::Compacted {
                    compact_revision, ..
                })) => {
                    self.cancel(compact_revision.0 as i64, msg::COMPACTED.to_string())
                        .await;
                    return;
                }
                Some(Err(StoreError::WatchTooSlow { resume_from })) if resumes < MAX_RESUMES => {
                    resumes += 1;
                    let mut req = self.req.clone();
                    req.start_revision = Some(resume_from);
                    match self.face.backend.watch(req).await {
                        Ok(s) => stream = s,
                        Err(StoreError::Compacted {
                            compact_revision, ..
                        }) => {
                            self.cancel(compact_revision.0 as i64, msg::COMPACTED.to_string())
                                .await;
                            return;
                        }
                        Err(e) => {
                            self.cancel(0, format!("etcdserver: {e}")).await;
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    self.cancel(0, format!("etcdserver: {e}")).await;
                    return;
                }
                None => {
                    self.cancel(0, msg::STOPPED.to_string()).await;
                    return;
                }
            }
        }
    }
}

async fn watch_session(
    face: Face,
    mut inbound: Streaming<pb::WatchRequest>,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
) {
    use pb::watch_request::RequestUnion;
    let mut watchers: HashMap<i64, Watcher> = HashMap::new();
    let mut next_id: i64 = 0;
    loop {
        let req = tokio::select! {
            m = inbound.message() => m,
            () = out.closed() => break,
        };
        let Ok(Some(req)) = req else { break };
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                watchers.retain(|_, w| !w.task.is_finished());
                let id = if c.watch_id != 0 {
                    c.watch_id
                } else {
                    while watchers.contains_key(&next_id) {
                        next_id += 1;
                    }
                    next_id
                };
                let refuse = if watchers.contains_key(&id) {
                    Some("etcdserver: duplicate watch ID".to_string())
                } else if watchers.len() >= MAX_WATCHERS_PER_STREAM {
                    Some("etcdserver: too many watchers on this stream".to_string())
                } else if !c.range_end.is_empty()
                    && c.range_end.as_ref() != b"\0"
                    && c.range_end <= c.key
                {
                    Some("etcdserver: watch range is empty".to_string())
                } else {
                    None
                };
                if let Some(reason) = refuse {
                    let r = pb::WatchResponse {
                        header: face.latest_header(),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: reason,
                        ..Default::default()
                    };
                    if out.send(Ok(r)).await.is_err() {
                        break;
                    }
                    continue;
                }
                if c.watch_id == 0 {
                    next_id += 1;
                }
                let no_put = c
                    .filters
                    .contains(&(pb::watch_create_request::FilterType::Noput as i32));
                let no_delete = c
                    .filters
                    .contains(&(pb::watch_create_request::FilterType::Nodelete as i32));
                let wreq = WatchRequest {
                    range_end: decode_range_end(&c.key, c.range_end.clone()),
                    key: c.key.clone(),
                    // Wire revision 1 (the empty store) starts at the backend's first write.
                    start_revision: (c.start_revision > 0)
                        .then(|| Revision(backend_rev(c.start_revision).0.max(1))),
                    filter: WatchFilter::default(),
                    prev_kv: c.prev_kv,
                    // Always asked of the backend: progress keeps `resolved` current for
                    // progress requests; the client sees it only if it asked.
                    progress_notify: true,
                };
                let now = face.last_rev.load(Ordering::Relaxed);
                let resolved = Arc::new(AtomicI64::new(match wreq.start_revision {
                    Some(r) => r.0 as i64 - 1,
                    None => now,
                }));
                let created = pb::WatchResponse {
                    header: face.header_at(now),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                };
                let ctx = PumpCtx {
                    face: face.clone(),
                    id,
                    out: out.clone(),
                    req: wreq.clone(),
                    no_put,
                    no_delete,
                    client_progress: c.progress_notify,
                    resolved: resolved.clone(),
                };
                let stream = face.backend.watch(wreq).await;
                if out.send(Ok(created)).await.is_err() {
                    break;
                }
                let task = match stream {
                    Ok(s) => tokio::spawn(ctx.run(s)),
                    Err(StoreError::Compacted {
                        compact_revision, ..
                    }) => tokio::spawn(async move {
                        ctx.cancel(compact_revision.0 as i64, msg::COMPACTED.to_string())
                            .await;
                    }),
                    Err(e) => tokio::spawn(async move {
                        ctx.cancel(0, format!("etcdserver: {e}")).await;
                    }),
                };
                watchers.insert(id, Watcher { task, resolved });
            }
            Some(RequestUnion::CancelRequest(c)) => {
                if let Some(w) = watchers.remove(&c.watch_id) {
                    w.task.abort();
                    let r = pb::WatchResponse {
                        header: face.latest_header(),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    if out.send(Ok(r)).await.is_err() {
                        break;
                    }
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                watchers.retain(|_, w| !w.task.is_finished());
                let rev = watchers
                    .values()
                    .map(|w| w.resolved.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or_else(|| face.last_rev.load(Ordering::Relaxed));
                let r = pb::WatchResponse {
                    header: face.header_at(rev),
                    watch_id: -1,
                    ..Default::default()
                };
                if out.send(Ok(r)).await.is_err() {
                    break;
                }
            }
            None => {}
        }
    }
    for w in watchers.values() {
        w.task.abort();
    }
}

#[tonic::async_trait]
impl Watch for Face {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(WATCH_OUT_BUFFER);
        tokio::spawn(watch_session(self.clone(), inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the etcd v3 API over `backend` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight unary calls finish, and returns.
///
/// Connections are served by one `current_thread` runtime per core (at most
/// [`MAX_FACE_WORKERS`]), each on its own OS thread; the caller's task accepts and hands each
/// connection to the worker serving the fewest. A connection and every stream on it then stay
/// on one thread: HTTP/2 framing, the per-stream tasks and the backend call never cross
/// threads or wake another core, which on a multi-threaded runtime cost a futex wake-up and
/// the h2 connection lock's contention per request (BENCHMARKS.md, "store: session 8").
pub async fn serve(
    backend: Arc<dyn Backend>,
    listener: tokio::net::TcpListener,
    config: FaceConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), FaceError> {
    let start_rev = backend.status().await?.revision;
    let face = Face {
        backend,
        config: Arc::new(config),
        last_rev: Arc::new(AtomicI64::new(start_rev.0 as i64)),
    };
    let n = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_FACE_WORKERS);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let (conn_tx, conn_rx) = mpsc::channel::<std::net::TcpStream>(ACCEPT_QUEUE);
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (face, mut stop, live2) = (face.clone(), stop_rx.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("etcd-face-{i}"))
            .spawn(move || {
                let res = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| FaceError::Bind {
                        addr: "etcd face worker runtime".into(),
                        source: e,
                    })
                    .and_then(|rt| {
                        rt.block_on(serve_worker(face, conn_rx, live2, async move {
                            let _ = stop.wait_for(|s| *s).await;
                        }))
                    });
                let _ = done_tx.send(res);
            });
        if let Err(source) = spawned {
            let _ = stop_tx.send(true);
            return Err(FaceError::Bind {
                addr: "etcd face worker thread".into(),
                source,
            });
        }
        workers.push((conn_tx, live, done_rx));
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Per-connection errors (a reset before accept, out of descriptors): keep
                // serving; back off briefly so a persistent error does not spin.
                tracing::debug!(error = %e, "etcd face accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        // Small unary replies must not wait out the peer's delayed ACK (~40 ms per get).
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let Some((tx, live, _)) = workers
            .iter()
            .min_by_key(|(_, live, _)| live.load(Ordering::Relaxed))
        else {
            break;
        };
        live.fetch_add(1, Ordering::Relaxed);
        if tx.send(stream).await.is_err() {
            live.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    for (tx, _, done) in workers {
        drop(tx);
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => tracing::error!("etcd face worker ended without a result"),
        }
    }
    result
}

/// Most worker runtimes one listener is served by.
pub const MAX_FACE_WORKERS: usize = 64;
/// Accepted connections waiting for their worker to pick them up.
const ACCEPT_QUEUE: usize = 128;

/// An accepted connection on its worker; counts itself out of the worker's load on drop.
struct WorkerConn {
    io: tokio::net::TcpStream,
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for WorkerConn {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for WorkerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for WorkerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One worker: the face's gRPC services on this thread's runtime, over the connections
/// handed to it. Each connection is driven by hyper's HTTP/2 server directly (not tonic's
/// `Server`), so that what one poll of the connection answers leaves in one write
/// (`shards::batched`): h2 flushes every reply above 256 bytes on its own otherwise, one
/// `writev` and one loopback trip per get.
async fn serve_worker(
    face: Face,
    mut conns: mpsc::Receiver<std::net::TcpStream>,
    live: Arc<std::sync::atomic::AtomicUsize>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), FaceError> {
    let routes = tonic::service::Routes::new(
        KvServer::new(face.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(WatchServer::new(face.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
    .add_service(LeaseServer::new(face.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
    .add_service(ClusterServer::new(face.clone()))
    .add_service(MaintenanceServer::new(face));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let std = tokio::select! {
            _ = &mut shutdown => break,
            c = conns.recv() => match c { Some(c) => c, None => break },
        };
        while tasks.try_join_next().is_some() {}
        let _ = std.set_nonblocking(true);
        let io = match tokio::net::TcpStream::from_std(std) {
            Ok(io) => WorkerConn {
                io,
                live: live.clone(),
            },
            Err(e) => {
                live.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "etcd face: cannot register a connection");
                continue;
            }
        };
        tasks.spawn(serve_face_conn(io, routes.clone(), stop_rx.clone()));
    }
    // Stop: connections finish what they serve (GOAWAY), bounded like tonic's own shutdown.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

/// One client connection of the face, HTTP/2 only (gRPC), until it or the face stops.
async fn serve_face_conn(
    io: WorkerConn,
    routes: tonic::service::Routes,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let (io, flusher) = shards::batched::batched(io);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = builder.http2_only();
    let svc = hyper_util::service::TowerToHyperService::new(routes);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = shards::batched::polled_then_flushed(conn.as_mut(), &flusher) => {
            if let Some(Err(e)) = r {
                tracing::debug!(error = %e, "etcd face connection");
            }
        }
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                shards::batched::polled_then_flushed(conn.as_mut(), &flusher),
            )
            .await;
        }
    }
}

/// Binds every `http://IP:PORT` in `urls` (failing before serving anything if one cannot be
/// bound), serves the etcd v3 API on all of them until `shutdown` resolves, then returns.
pub async fn serve_urls(
    backend: Arc<dyn Backend>,
    urls: &[String],
    config: FaceConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), FaceError> {
    let mut listeners = Vec::with_capacity(urls.len());
    for url in urls {
        listeners.push(bind(parse_listen_url(url)?).await?);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let mut rx = stop_rx.clone();
        let (backend, config) = (backend.clone(), config.clone());
        servers.push(tokio::spawn(async move {
            serve(backend, listener, config, async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await
        }));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    for s in servers {
        match s.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => tracing::error!(error = %e, "etcd face server task failed"),
        }
    }
    result
}

/// Binds `addr` (loopback or any address the caller chose) for [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, FaceError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| FaceError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Resolves on SIGTERM or SIGINT (what every long-running kubeshard command stops on).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on the default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
