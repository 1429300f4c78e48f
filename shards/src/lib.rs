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
//! ## Using it
//!
//! ```no_run
//! use shards::{ShardConfig, ShardSet, ShardId};
//! let set = ShardSet::start(ShardConfig::default().shards(2)).expect("start");
//! let h = set.handle().clone();
//! // From any thread or runtime: run a closure on shard 1; its future may be `!Send`.
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
//! let id = rt.block_on(h.invoke_on(ShardId(1), || async {
//!     let local = std::rc::Rc::new(5); // shard-local state is fine here
//!     (shards::current_shard(), *local)
//! }));
//! assert_eq!(id, Ok((Some(ShardId(1)), 5)));
//! set.shutdown().expect("clean shutdown");
//! ```
//!
//! ## Modules
//!
//! - [`ShardSet`], [`ShardHandle`], [`ShardConfig`], [`ShardContext`]: the runtimes and
//!   cross-shard calls (`invoke_on`, `try_invoke_on`, `invoke_on_all`).
//! - Shard-local services (Seastar's `sharded<T>`): [`ShardHandle::install_local`] builds one
//!   `T` per shard, [`local::<T>()`](local) gets this shard's.
//! - [`route`]: [`stable_hash`] and [`shard_for_key`].
//! - [`listen`]: `SO_REUSEPORT` listeners, [`ShardHandle::serve_tcp`]/[`ShardHandle::serve_udp`].
//! - [`uring`]: [`Ring`](uring::Ring) (`Ring::current()` per thread and runtime, `Ring::probe()`
//!   to choose io_uring or std I/O) and its operation futures: `write_at`, `write_all_at`,
//!   `writev_at`, `read_at`, `fsync`, `fdatasync`, `write_at_fdatasync` (linked), `splice`,
//!   `nop`. Buffers go in by value and come back with the result (`BufResult`).
//! - The stall detector is part of the set ([`ShardConfig::stall_threshold`],
//!   [`ShardHandle::stall_counts`]).
//!
//! **Must not depend on:** any other kubeshard crate, or anything Kubernetes-shaped. This is a
//! general substrate; it knows nothing of objects, revisions or HTTP.
//!
//! **Unsafe:** this crate may hold `unsafe` (DESIGN.md allows it here), only in the io_uring
//! module ([`uring`], where the kernel borrows buffers across an await) and in [`sched`] (one
//! `sched_setattr`/`sched_getattr` call that neither libc nor nix wraps, added with the
//! measurement in its doc); each has `#[allow(unsafe_code)]`, the crate denies it elsewhere.
//! Each block carries a
//! `// SAFETY:` comment; everything else is safe code.
//!
//! **Verification:** the cross-shard mailbox takes its atomics and locks from `crate::sync`,
//! which becomes loom under `cfg(loom)`; its model tests are the `loom_*` tests, run with
//! `RUSTFLAGS="--cfg loom" cargo test -p shards --release --lib loom` (under loom only the
//! mailbox tests are built). Miri is not run: the project builds on the stable toolchain only,
//! and miri needs nightly (it also cannot execute io_uring syscalls). The unsafe code in
//! [`uring`] is covered by the integration tests in `tests/uring_*.rs` instead.
//!
//! **What users owe it:** closures given to `invoke_on` must not block their shard (the stall
//! detector reports those that do; use `spawn_blocking` for blocking work); a
//! [`ShardSet`] is shut down from outside its own threads; io_uring file descriptors passed
//! to an operation stay open while it runs (the borrow enforces it for the future's life).
//! Closures that await replies from each other's shards in a cycle can deadlock once both
//! mailboxes and in-flight limits are exhausted (the price of bounded queues): such code uses
//! `try_invoke_on`, or sends without awaiting the reply inside the invoked closure.

pub mod batched;
pub mod error;
pub mod id;
pub mod listen;
mod mailbox;
pub mod route;
pub mod sched;
pub mod set;
mod stall;
pub(crate) mod sync;
pub mod uring;

pub use error::{InvokeError, ListenError, ShutdownError, StartError, TryInvokeError};
pub use id::{ShardContext, ShardId, current_shard, local, set_local};
pub use route::{shard_for_key, stable_hash};
pub use set::{ShardConfig, ShardHandle, ShardSet};
