//! # store — the sharded MVCC object store
//!
//! Holds every cluster object under keys `/registry/<group>/<resource>/<namespace>/<name>`,
//! one shard per core, with one cluster-wide revision. Values are rkyv envelopes read
//! zero-copy. It offers the `Backend` trait the apiserver uses, implemented by the embedded
//! engine (the default) and by an etcd v3 backend for multi-machine HA, and it can serve the
//! etcd v3 gRPC API itself.
//!
//! **Revisions are monotonic, not dense.** Within one run without snapshots every write
//! takes the next number, but the engine skips numbers in three places, all deliberate: a
//! snapshot skips one (so the WAL can drop every record at or below the snapshot's revision),
//! a write whose log append failed keeps its number, and recovery after a crash never reuses
//! the numbers of unacknowledged revisions whose records survived past a lost earlier one
//! (the WAL only appends in non-decreasing revision order). Acknowledged writes never leave a
//! hole: recovery keeps exactly the unbroken chain of revisions (tests/store_crash.rs).
//! Kubernetes clients treat `resourceVersion` as opaque and ordered, which this satisfies;
//! etcd itself numbers densely. Making it dense would need a WAL "rewind" record (drop this
//! shard's records above N) written at recovery, and snapshot-covered lease records tagged
//! apart from revisions.
//!
//! **Must not depend on:** `api` or any crate above it, nor on Kubernetes types: the store
//! sees envelopes (keys, labels, indexed fields, raw bytes), never parsed objects.
//!
//! **Unsafe:** DESIGN.md allows `unsafe` only in the zero-copy module (mmap'd snapshots and
//! rkyv access); each block carries a `// SAFETY:` comment.

pub mod backend;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod etcd_backend;
pub mod etcd_face;
pub mod etcd_wire;
pub mod fileio;
pub mod proto;
#[allow(unsafe_code)]
pub mod snapshot;
pub mod wal;

pub use backend::{
    Backend, Compare, CompareOp, CompareTarget, ContentType, KeyValue, LeaseGrant, LeaseId,
    LeaseTimeToLive, ObjectValue, RangeEnd, RangeRequest, RangeResponse, RawKv, RawList,
    Requirement, Revision, StoreStatus, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchEvent,
    WatchFilter, WatchRequest, WatchStream,
};
pub use engine::{Clock, Engine, EngineConfig, LogStore, ManualClock, MemLog, SystemClock};
pub use error::{MAX_VALUE_BYTES, StoreError};
