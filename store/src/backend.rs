//! The `Backend` trait: what the apiserver (and the etcd v3 face) asks of a store.
//!
//! The shape is etcd v3's (ranges over `[key, range_end)`, transactions with compare
//! predicates, leases, revisions, watch), extended with what Kubernetes needs and etcd lacks:
//! object metadata travels beside the raw bytes ([`ObjectValue`]) so the store can index label
//! and field selectors for watches, and a write can ask the store to stamp the revision it
//! assigns into the raw bytes ([`ObjectValue::rv_slot`]) so that reads serve stored bytes
//! without re-encoding.
//!
//! Two implementations: the embedded engine (default) and the etcd v3 backend (a real etcd
//! cluster). Both pass the conformance suite in `tests/`.
//!
//! ## Contract
//! - Revisions are cluster-wide, start at 1 for the first write, and every successful write
//!   transaction gets exactly one new revision (all of its puts and deletes share it). A
//!   read-only or failed transaction does not consume a revision.
//! - A write is acknowledged (its future resolves `Ok`) only once it is durable.
//! - Reads at `revision: None` are linearizable: they see every acknowledged write.
//! - A watch delivers, per watcher, every matching event after its start revision exactly
//!   once, in revision order, never splitting one revision's events across a gap; it ends
//!   with [`StoreError::Compacted`] if started below the compaction point, or with
//!   [`StoreError::WatchTooSlow`] if it fell too far behind (resume from the revision given).

use std::fmt;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

use crate::error::StoreError;

/// A cluster-wide revision (Kubernetes' `resourceVersion`). `Revision(0)` means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A lease identifier, as etcd's (non-zero when set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

/// How the raw bytes of an object are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ContentType {
    /// Opaque bytes (etcd face: whatever a client `put`).
    Opaque = 0,
    /// `application/json`.
    Json = 1,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf = 2,
}

/// A value as the writer hands it to the store: the raw object plus the metadata the store
/// indexes. The store wraps it into its envelope format; the etcd face uses
/// [`ObjectValue::opaque`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectValue {
    /// `metadata.uid`, empty for opaque values.
    pub uid: String,
    /// `kind`, empty for opaque values.
    pub kind: String,
    /// `metadata.namespace`, empty for cluster-scoped or opaque values.
    pub namespace: String,
    /// `metadata.name`, empty for opaque values.
    pub name: String,
    /// `metadata.labels`, sorted by key, keys unique.
    pub labels: Vec<(String, String)>,
    /// Indexed selector fields such as `("spec.nodeName", "node-1")`, sorted by name.
    pub fields: Vec<(String, String)>,
    pub content_type: ContentType,
    /// The serialized object.
    pub raw: Bytes,
    /// If set, a byte offset into `raw` where the store inserts the decimal revision it
    /// assigns to this write (the empty value of `"resourceVersion":""`), so stored bytes are
    /// served as they are. Must be `<= raw.len()`.
    pub rv_slot: Option<u32>,
}

impl ObjectValue {
    /// An opaque value with no metadata (what an etcd client stores).
    pub fn opaque(raw: impl Into<Bytes>) -> Self {
        Self {
            uid: String::new(),
            kind: String::new(),
            namespace: String::new(),
            name: String::new(),
            labels: Vec::new(),
            fields: Vec::new(),
            content_type: ContentType::Opaque,
            raw: raw.into(),
            rv_slot: None,
        }
    }
}

/// One stored key and its value at some revision, as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    /// The stored value: `raw` already holds the revision in its `rv_slot` (if it had one).
    pub value: ObjectValue,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// Number of writes to this key since its creation (1 after create).
    pub version: i64,
    pub lease: Option<LeaseId>,
}

/// The end of a key range, as etcd's `range_end`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RangeEnd {
    /// Only `key` itself.
    Single,
    /// Every key with `key` as prefix.
    Prefix,
    /// Keys in `[key, end)`.
    Until(Bytes),
    /// Every key `>= key` (etcd's `range_end = "\0"`).
    Unbounded,
}

/// A range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Bytes,
    pub range_end: RangeEnd,
    /// Read at this revision (must not be compacted, must not be in the future); `None` is
    /// the latest.
    pub revision: Option<Revision>,
    /// At most this many keys, in key order; `None` or `Some(0)` is unlimited.
    pub limit: Option<u64>,
    pub keys_only: bool,
    pub count_only: bool,
    /// With a `limit`, the backend may stop reading after the keys it returns: `count` is
    /// then a lower bound and only `more` is exact. A Kubernetes LIST never needs the total,
    /// and counting every key of the range made each page of a paged LIST cost the whole
    /// range. The etcd face never sets it (etcd's `count` is exact); the etcd backend
    /// ignores it.
    pub skip_count: bool,
}

impl RangeRequest {
    pub fn single(key: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            range_end: RangeEnd::Single,
            revision: None,
            limit: None,
            keys_only: false,
            count_only: false,
            skip_count: false,
        }
    }

    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        Self {
            range_end: RangeEnd::Prefix,
            ..Self::single(prefix)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys remained past `limit`.
    pub more: bool,
    /// Number of keys in the whole range (ignoring `limit`).
    pub count: u64,
    /// The revision the read was served at (the store's current revision for latest reads).
    pub revision: Revision,
}

/// What a compare looks at, with the value to compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(Revision),
    ModRevision(Revision),
    /// The raw bytes.
    Value(Bytes),
    /// `None` compares against "no lease".
    Lease(Option<LeaseId>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// A transaction guard, as etcd's `Compare`: a missing key has version, create and mod
/// revision 0, no lease, and an empty value never equal to anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Bytes,
    pub range_end: RangeEnd,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: Bytes,
        value: ObjectValue,
        lease: Option<LeaseId>,
        /// Return the previous key-value.
        prev_kv: bool,
    },
    Delete {
        key: Bytes,
        range_end: RangeEnd,
        prev_kv: bool,
    },
    Range(RangeRequest),
}

/// `if all(compare) then success else failure`, applied atomically at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[allow(clippy::large_enum_variant)] // built once per response; boxing adds an allocation
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Range(RangeResponse),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (the success branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction (the new one if it wrote).
    pub revision: Revision,
    pub responses: Vec<TxnOpResponse>,
}

/// Set-based and equality requirements, as Kubernetes label selectors have them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A watch filter: all label requirements and all field requirements must hold. An event
/// passes if the new or the previous value of the object matches (so the apiserver can turn
/// "stopped matching" into a DELETED event).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchFilter {
    pub labels: Vec<Requirement>,
    /// Over [`ObjectValue::fields`]; `Equals` on an indexed field is routed by index.
    pub fields: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    pub key: Bytes,
    pub range_end: RangeEnd,
    /// Deliver events with revision `>= start_revision`; `None` starts after the current
    /// revision.
    pub start_revision: Option<Revision>,
    pub filter: WatchFilter,
    /// Include the previous key-value on every event.
    pub prev_kv: bool,
    /// Send [`WatchEvent::Progress`] when idle, so the watcher can advance its resume point.
    pub progress_notify: bool,
}

#[allow(clippy::large_enum_variant)] // built once per response; boxing adds an allocation
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put {
        kv: KeyValue,
        prev_kv: Option<KeyValue>,
    },
    /// The key was deleted at `revision`; `prev_kv` is its last value (when asked for or
    /// when a filter needed it).
    Delete {
        key: Bytes,
        revision: Revision,
        prev_kv: Option<KeyValue>,
    },
    /// Every event up to and including this revision has been delivered (a bookmark).
    Progress(Revision),
}

impl WatchEvent {
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
            WatchEvent::Progress(r) => *r,
        }
    }
}

/// A watch: batches of events, each batch holding whole revisions in order.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<WatchEvent>, StoreError>> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: LeaseId,
    pub ttl_seconds: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    pub id: LeaseId,
    /// Remaining seconds; -1 if the lease has expired or does not exist.
    pub ttl_seconds: i64,
    pub granted_ttl_seconds: i64,
    pub keys: Vec<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    pub revision: Revision,
    pub compact_revision: Revision,
    /// Bytes on disk (WAL + snapshots).
    pub db_size_bytes: u64,
    /// Bytes of live values held.
    pub db_size_in_use_bytes: u64,
    pub version: String,
}

/// Keys read per [`Backend::range`] call when the default [`Backend::list_raw`] pages.
const LIST_RAW_BATCH: u64 = 500;

/// One object of a [`RawList`]: its key and stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawKv {
    pub key: Bytes,
    pub raw: Bytes,
}

/// A page of [`Backend::list_raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawList {
    pub items: Vec<RawKv>,
    /// The first matching key past this page, if any (the next page starts there).
    pub resume: Option<Bytes>,
    /// The revision the page was read at.
    pub revision: Revision,
}

/// The store, as the apiserver and the etcd face see it. Object-safe: use `Arc<dyn Backend>`.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError>;

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream, StoreError>;

    async fn lease_grant(
        &self,
        ttl_seconds: i64,
        id: Option<LeaseId>,
    ) -> Result<LeaseGrant, StoreError>;

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, StoreError>;

    /// Renews a lease; returns its TTL.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError>;

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        with_keys: bool,
    ) -> Result<LeaseTimeToLive, StoreError>;

    /// Discards history below `revision`; reads and watches below it fail with `Compacted`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    async fn status(&self) -> Result<StoreStatus, StoreError>;

    // --- conveniences on top of `txn`, shared by every implementation ---

    /// A LIST page: the objects of `req`'s range (at `req.revision`, latest if `None`) that
    /// match `filter`, in key order, at most `req.limit` of them (all if unlimited), each as
    /// its key and raw bytes only: no metadata is copied out, which is most of a LIST's cost
    /// in [`Backend::range`] (a dozen small allocations per object). `resume` is the first
    /// matching key not returned, where the next page starts; `keys_only`, `count_only` and
    /// `skip_count` of `req` are ignored. The default pages through [`Backend::range`] and
    /// filters the key-values; the engine filters on its envelopes while it scans.
    async fn list_raw(
        &self,
        req: RangeRequest,
        filter: &WatchFilter,
    ) -> Result<RawList, StoreError> {
        let limit = req.limit.filter(|l| *l > 0);
        let range_end = match req.range_end {
            RangeEnd::Prefix => match crate::etcd_wire::prefix_end(&req.key) {
                end if end.as_ref() == b"\0" => RangeEnd::Unbounded,
                end => RangeEnd::Until(end),
            },
            other => other,
        };
        let single = range_end == RangeEnd::Single;
        let mut start = req.key;
        let mut revision = req.revision;
        let mut items = Vec::new();
        loop {
            let resp = self
                .range(RangeRequest {
                    key: start.clone(),
                    range_end: range_end.clone(),
                    revision,
                    limit: limit.map(|l| l.saturating_add(1).max(LIST_RAW_BATCH)),
                    keys_only: false,
                    count_only: false,
                    skip_count: true,
                })
                .await?;
            revision = Some(resp.revision);
            let last = resp.kvs.last().map(|kv| kv.key.clone());
            for kv in resp.kvs {
                if !crate::engine::watch::filter_matches_kv(filter, &kv) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() as u64 >= l) {
                    return Ok(RawList {
                        items,
                        resume: Some(kv.key),
                        revision: resp.revision,
                    });
                }
                items.push(RawKv {
                    key: kv.key,
                    raw: kv.value.raw,
                });
            }
            match last {
                Some(k) if resp.more && !single => {
                    let mut next = k.to_vec();
                    next.push(0);
                    start = Bytes::from(next);
                }
                _ => {
                    return Ok(RawList {
                        items,
                        resume: None,
                        revision: resp.revision,
                    });
                }
            }
        }
    }

    /// Reads one key at the latest revision.
    async fn get(&self, key: Bytes) -> Result<Option<KeyValue>, StoreError> {
        let mut resp = self.range(RangeRequest::single(key)).await?;
        Ok(resp.kvs.pop())
    }

    /// Creates `key` if it does not exist. `Ok(None)` if it already exists, otherwise the
    /// new revision.
    async fn create(
        &self,
        key: Bytes,
        value: ObjectValue,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>, StoreError> {
        let txn = Txn {
            compare: vec![Compare {
                key: key.clone(),
                range_end: RangeEnd::Single,
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(Revision(0)),
            }],
            success: vec![TxnOp::Put {
                key,
                value,
                lease,
                prev_kv: false,
            }],
            failure: vec![],
        };
        let resp = self.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Replaces `key` only if its mod revision is still `expected` (compare-and-swap).
    /// `Ok(Err(current))` carries the current value (None if gone) when the compare failed.
    async fn update(
        &self,
        key: Bytes,
        expected: Revision,
        value: ObjectValue,
        lease: Option<LeaseId>,
    ) -> Result<Result<Revision, Option<KeyValue>>, StoreError> {
        let txn = Txn {
            compare: vec![Compare {
                key: key.clone(),
                range_end: RangeEnd::Single,
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(expected),
            }],
            success: vec![TxnOp::Put {
                key: key.clone(),
                value,
                lease,
                prev_kv: false,
            }],
            failure: vec![TxnOp::Range(RangeRequest::single(key))],
        };
        let resp = self.txn(txn).await?;
        if resp.succeeded {
            return Ok(Ok(resp.revision));
        }
        let current = match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Range(mut r)) => r.kvs.pop(),
            _ => None,
        };
        Ok(Err(current))
    }

    /// Deletes `key` if its mod revision is `expected` (or unconditionally if `None`).
    /// Returns the deleted key-value and the delete revision, `Ok(None)` if nothing matched.
    async fn delete(
        &self,
        key: Bytes,
        expected: Option<Revision>,
    ) -> Result<Option<(KeyValue, Revision)>, StoreError> {
        let compare = match expected {
            Some(rev) => vec![Compare {
                key: key.clone(),
                range_end: RangeEnd::Single,
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(rev),
            }],
            None => vec![Compare {
                key: key.clone(),
                range_end: RangeEnd::Single,
                op: CompareOp::Greater,
                target: CompareTarget::ModRevision(Revision(0)),
            }],
        };
        let txn = Txn {
            compare,
            success: vec![TxnOp::Delete {
                key,
                range_end: RangeEnd::Single,
                prev_kv: true,
            }],
            failure: vec![],
        };
        let resp = self.txn(txn).await?;
        if !resp.succeeded {
            return Ok(None);
        }
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Delete { mut prev_kvs, .. }) => {
                Ok(prev_kvs.pop().map(|kv| (kv, resp.revision)))
            }
            _ => Ok(None),
        }
    }
}
