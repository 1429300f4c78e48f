//! Typed store errors. Each variant's doc says whether a caller may retry.

use crate::backend::Revision;

/// Largest value the store accepts (etcd's and Kubernetes' limit for one object).
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The requested revision was compacted away. Not retryable at that revision: re-list.
    #[error(
        "required revision {requested} has been compacted (compacted up to {compact_revision})"
    )]
    Compacted {
        requested: Revision,
        compact_revision: Revision,
    },
    /// The requested revision is newer than the store's. Retryable later.
    #[error("required revision {requested} is a future revision (current {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// A value is larger than [`MAX_VALUE_BYTES`]. Not retryable.
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    /// A memory or disk quota is full. Retryable once space is freed (delete + compact).
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The lease does not exist or has expired. Not retryable.
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
    /// A lease with that id already exists. Not retryable.
    #[error("lease {0} already exists")]
    LeaseExists(i64),
    /// A watcher fell too far behind and was cut off. Retry by watching from `resume_from`.
    #[error("watcher too slow; resume from revision {resume_from}")]
    WatchTooSlow { resume_from: Revision },
    /// The request is malformed (bad range, duplicate key in a txn...). Not retryable.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The storage layer failed (write error, full disk, fsync failure). The write was not
    /// applied; the store stays readable. Retryable once the fault clears.
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data failed a checksum or format check. Not retryable.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The backend is unreachable or shutting down (etcd down, store closing). Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}
