//! # controllers — the controller-manager
//!
//! Level-triggered reconcilers (Deployment, ReplicaSet, Job, garbage collector, namespace
//! lifecycle, service accounts, endpoints...) on shared informer caches from `api`'s client,
//! with rate-limited, deduplicated work queues.
//!
//! **Must not depend on:** `store`, `scheduler`, `node` or `proxy-dp`: it talks to the
//! cluster only through the API.
//!
//! ## Layout: sans-IO cores, a thin shell
//! - [`queue`], [`expectations`]: the controller runtime's state machines; every call takes
//!   `now`, nothing reads a clock.
//! - [`replicaset`], [`deployment`], [`job`], [`gc`], [`namespace`], [`serviceaccount`],
//!   [`endpointslice`]: pure functions from cached objects (and `now`) to the writes a
//!   reconcile wants. Each module doc lists what its shell owes it.
//! - [`runtime`]: the [`runtime::Controller`] trait and its worker pool.
//!
//! Unsafe code is forbidden (workspace lint).

pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpointslice;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod job;
pub mod manager;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod queue;
pub mod replicaset;
pub mod resourcequota;
pub mod runtime;
pub mod serviceaccount;
pub mod statefulset;
pub mod ttl;
pub mod util;
pub mod volumebinding;

#[cfg(test)]
mod testutil;
