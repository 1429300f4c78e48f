//! Conversions between the etcd wire types and the `Backend` types, and `StoreError` to the
//! gRPC status etcd would send (clients such as etcdctl match on the message text).

use bytes::Bytes;
use tonic::Status;

use crate::backend::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, ObjectValue, RangeRequest, Revision,
    TxnOp,
};
use crate::error::StoreError;
use crate::etcd_wire::{decode_range_end, msg};
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;

/// Maps a store error to etcd's gRPC status for the same condition.
pub(crate) fn status_of(e: &StoreError) -> Status {
    match e {
        StoreError::Compacted { .. } => Status::out_of_range(msg::COMPACTED),
        StoreError::FutureRevision { .. } => Status::out_of_range(msg::FUTURE_REV),
        StoreError::ValueTooLarge { .. } => Status::invalid_argument(msg::REQUEST_TOO_LARGE),
        StoreError::QuotaExceeded(_) => Status::resource_exhausted(msg::NO_SPACE),
        StoreError::LeaseNotFound(_) => Status::not_found(msg::LEASE_NOT_FOUND),
        StoreError::LeaseExists(_) => Status::failed_precondition(msg::LEASE_EXIST),
        StoreError::InvalidRequest(m) if m.contains("duplicate key") => {
            Status::invalid_argument(msg::DUPLICATE_KEY)
        }
        StoreError::InvalidRequest(m) => Status::invalid_argument(format!("etcdserver: {m}")),
        StoreError::WatchTooSlow { .. } | StoreError::Unavailable(_) => {
            Status::unavailable(format!("etcdserver: {e}"))
        }
        StoreError::Io(_) | StoreError::Corrupt(_) => Status::internal(format!("etcdserver: {e}")),
    }
}

/// A real etcd starts empty at revision 1 and gives its first write revision 2; a `Backend`
/// gives its first write revision 1. The face shows etcd's numbering: every revision on the
/// wire is the backend's plus one (0, "none", stays 0 for key revisions and compaction).
pub(crate) fn wire_rev(r: Revision) -> i64 {
    if r.0 == 0 {
        0
    } else {
        r.0.saturating_add(1).min(i64::MAX as u64) as i64
    }
}

/// A header revision on the wire: the backend's plus one (an empty store is at 1).
pub(crate) fn wire_header_rev(r: i64) -> i64 {
    r.saturating_add(1)
}

/// The backend revision of a wire revision `> 0` (wire 1, the empty store, maps to 0).
pub(crate) fn backend_rev(wire: i64) -> Revision {
    Revision(wire.saturating_sub(1).max(0) as u64)
}

fn rev_of(v: i64) -> Option<Revision> {
    (v > 0).then(|| backend_rev(v))
}

pub(crate) fn kv_to_pb(kv: KeyValue, keys_only: bool) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: wire_rev(kv.create_revision),
        mod_revision: wire_rev(kv.mod_revision),
        version: kv.version,
        value: if keys_only {
            Bytes::new()
        } else {
            kv.value.raw
        },
        lease: kv.lease.map_or(0, |l| l.0),
    }
}

/// The part of a `RangeRequest` the backend serves; sorting and the min/max revision filters
/// are applied by the face (as etcd does, after reading).
pub(crate) fn range_from_pb(r: &pb::RangeRequest) -> Result<RangeRequest, Status> {
    if r.key.is_empty() && r.range_end.is_empty() {
        return Err(Status::invalid_argument(msg::EMPTY_KEY));
    }
    if r.limit < 0 {
        return Err(Status::invalid_argument("etcdserver: negative limit"));
    }
    Ok(RangeRequest {
        range_end: decode_range_end(&r.key, r.range_end.clone()),
        key: r.key.clone(),
        revision: rev_of(r.revision),
        limit: (r.limit > 0).then_some(r.limit as u64),
        keys_only: r.keys_only,
        count_only: r.count_only,
        skip_count: false,
    })
}

pub(crate) fn compare_from_pb(c: pb::Compare) -> Result<Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget as T, TargetUnion as U};
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => CompareOp::Equal,
        Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
        Ok(CompareResult::Greater) => CompareOp::Greater,
        Ok(CompareResult::Less) => CompareOp::Less,
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: unknown compare result",
            ));
        }
    };
    let target = T::try_from(c.target)
        .map_err(|_| Status::invalid_argument("etcdserver: unknown compare target"))?;
    // A missing union member compares against the zero value, as etcd's generated getters do.
    let target = match (target, c.target_union) {
        (T::Version, Some(U::Version(v))) => CompareTarget::Version(v),
        (T::Version, None) => CompareTarget::Version(0),
        (T::Create, Some(U::CreateRevision(v))) => CompareTarget::CreateRevision(backend_rev(v)),
        (T::Create, None) => CompareTarget::CreateRevision(Revision(0)),
        (T::Mod, Some(U::ModRevision(v))) => CompareTarget::ModRevision(backend_rev(v)),
        (T::Mod, None) => CompareTarget::ModRevision(Revision(0)),
        (T::Value, Some(U::Value(v))) => CompareTarget::Value(v),
        (T::Value, None) => CompareTarget::Value(Bytes::new()),
        (T::Lease, Some(U::Lease(v))) => CompareTarget::Lease((v != 0).then_some(LeaseId(v))),
        (T::Lease, None) => CompareTarget::Lease(None),
        _ => {
            return Err(Status::invalid_argument(
                "etcdserver: compare target and value do not match",
            ));
        }
    };
    Ok(Compare {
        range_end: decode_range_end(&c.key, c.range_end),
        key: c.key,
        op,
        target,
    })
}

/// What a put needs from the current value when it sets `ignore_value`/`ignore_lease`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PutIgnores {
    pub(crate) value: bool,
    pub(crate) lease: bool,
}

pub(crate) fn put_op(p: pb::PutRequest) -> Result<(TxnOp, PutIgnores), Status> {
    if p.key.is_empty() {
        return Err(Status::invalid_argument(msg::EMPTY_KEY));
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(Status::invalid_argument(msg::VALUE_PROVIDED));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Status::invalid_argument(msg::LEASE_PROVIDED));
    }
    Ok((
        TxnOp::Put {
            key: p.key,
            value: ObjectValue::opaque(p.value),
            lease: (p.lease != 0).then_some(LeaseId(p.lease)),
            prev_kv: p.prev_kv,
        },
        PutIgnores {
            value: p.ignore_value,
            lease: p.ignore_lease,
        },
    ))
}

pub(crate) fn delete_op(d: pb::DeleteRangeRequest) -> Result<TxnOp, Status> {
    if d.key.is_empty() && d.range_end.is_empty() {
        return Err(Status::invalid_argument(msg::EMPTY_KEY));
    }
    Ok(TxnOp::Delete {
        range_end: decode_range_end(&d.key, d.range_end),
        key: d.key,
        prev_kv: d.prev_kv,
    })
}
