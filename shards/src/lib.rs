//! # shards — the thread-per-core substrate
//!
//! Every other kubeshard crate runs on this one. It owns the threads and the kernel-facing
//! I/O primitives so that no other crate has to:
//!
//! - a `ShardSet`: one pinned tokio `current_thread` runtime per core, each with its own
//!   `!Send` shard-local state, started and shut down (drain, join) as one unit;
//! - per-shard `SO_REUSEPORT` TCP and UDP listeners bound to one address;
//! - bounded cross-shard mailboxes (`invoke_on`, broadcast) that apply back-pressure instead
//!   of growing without limit;
//! - routing: a stable hash from a key to a shard;
//! - a per-shard io_uring ring whose completions are awaited from the shard's runtime;
//! - a stall detector for tasks that run too long without yielding.
//!
//! **Must not depend on:** any other kubeshard crate, or anything Kubernetes-shaped. This is a
//! general substrate; it knows nothing of objects, revisions or HTTP.
//!
//! **Unsafe:** this crate may hold `unsafe` (DESIGN.md allows it here), only in the io_uring
//! module, where the kernel borrows buffers across an await. Each block carries a `// SAFETY:`
//! comment; everything else is safe code.
