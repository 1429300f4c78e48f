//! # store — the sharded MVCC object store
//!
//! Holds every cluster object under keys `/registry/<group>/<resource>/<namespace>/<name>`,
//! one shard per core, with one cluster-wide revision. Values are rkyv envelopes read
//! zero-copy. It offers the `Backend` trait the apiserver uses, implemented by the embedded
//! engine (the default) and by an etcd v3 backend for multi-machine HA, and it can serve the
//! etcd v3 gRPC API itself.
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
