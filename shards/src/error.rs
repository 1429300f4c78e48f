//! Typed errors, one enum per operation family (STYLE.md 2.4). Each variant's doc says whether
//! retrying can help.

use std::io;

use crate::id::ShardId;

/// Starting a [`ShardSet`](crate::ShardSet) failed. Nothing is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration asked for 0 shards or more than `u16::MAX + 1`. Not retryable.
    #[error("invalid shard count {0}: must be 1..=65536")]
    InvalidShardCount(usize),
    /// A bound (mailbox capacity, in-flight limit) was 0. Not retryable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The OS refused a thread. Retryable once resources free up.
    #[error("spawning the thread for {shard}: {source}")]
    Spawn {
        /// The shard whose thread failed.
        shard: ShardId,
        /// The OS error.
        source: io::Error,
    },
    /// A shard's tokio runtime could not be built. Retryable once resources free up.
    #[error("building the runtime of {shard}: {source}")]
    Runtime {
        /// The shard whose runtime failed.
        shard: ShardId,
        /// The OS error.
        source: io::Error,
    },
}

/// Running a closure on a shard ([`ShardHandle::invoke_on`](crate::ShardHandle::invoke_on))
/// failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The set is shutting down and accepts no new work. Not retryable.
    #[error("the shard set is shutting down")]
    ShuttingDown,
    /// No shard has this id. Not retryable.
    #[error("{shard} does not exist (the set has {count} shards)")]
    NoSuchShard {
        /// The id asked for.
        shard: ShardId,
        /// The set's shard count.
        count: usize,
    },
    /// The closure was accepted but did not produce a result: it panicked, or its shard
    /// stopped before it finished (shutdown past the drain timeout). Retrying may repeat
    /// side effects the closure had already made.
    #[error("the closure on {0} did not complete (panicked or cancelled)")]
    Cancelled(ShardId),
}

/// A non-waiting submission ([`ShardHandle::try_invoke_on`](crate::ShardHandle::try_invoke_on))
/// was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryInvokeError {
    /// The shard's mailbox is full: the target is behind. Retryable later; this is the
    /// back-pressure signal, so callers should shed or slow down rather than spin.
    #[error("the mailbox of {0} is full")]
    Full(ShardId),
    /// As [`InvokeError::ShuttingDown`]. Not retryable.
    #[error("the shard set is shutting down")]
    ShuttingDown,
    /// As [`InvokeError::NoSuchShard`]. Not retryable.
    #[error("{shard} does not exist (the set has {count} shards)")]
    NoSuchShard {
        /// The id asked for.
        shard: ShardId,
        /// The set's shard count.
        count: usize,
    },
}

/// Shutting a [`ShardSet`](crate::ShardSet) down did not end cleanly. The threads that could
/// be joined were joined either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// `shutdown` was called from one of the set's own shard threads, which cannot join
    /// itself. The shards were still told to stop (they drain and exit, detached), but
    /// nothing was joined. Call it from outside the set (e.g. `spawn_blocking`).
    #[error("shutdown called from {0}, a thread of the set itself")]
    CalledFromShard(ShardId),
    /// A shard thread panicked outside any invoked closure.
    #[error("{0} panicked")]
    ShardPanicked(ShardId),
}

/// Binding per-shard listeners failed. Nothing stays bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Creating, configuring or binding a socket failed (address in use, permission...).
    /// Retryable only if the cause is transient.
    #[error("binding {addr} for listener {index}: {source}")]
    Bind {
        /// The address being bound.
        addr: std::net::SocketAddr,
        /// Which of the per-shard listeners failed.
        index: usize,
        /// The OS error.
        source: io::Error,
    },
    /// Handing a listener to its shard failed.
    #[error("installing the listener on its shard: {0}")]
    Invoke(#[from] InvokeError),
    /// Registering a listener with a shard's runtime failed.
    #[error("registering the listener with {shard}'s runtime: {source}")]
    Register {
        /// The shard.
        shard: ShardId,
        /// The OS error.
        source: io::Error,
    },
    /// A count of 0 listeners was asked for. Not retryable.
    #[error("zero listeners requested")]
    ZeroCount,
}
