//! # scheduler — batch-parallel pod scheduling
//!
//! Kubernetes' scheduling framework (PreFilter, Filter, PostFilter, PreScore, Score +
//! NormalizeScore, Reserve/Unreserve, Permit, PreBind, Bind; see [`framework`]) with the
//! default plugins ([`plugins`]), profiles by `spec.schedulerName` from a
//! KubeSchedulerConfiguration-style file ([`config`]), upstream's queueing ([`queue`]), and a
//! batch-parallel cycle ([`cycle`]): a batch of pending pods is evaluated against node
//! partitions owned by worker threads, every feasible node is scored (no sampling), and
//! conflicts inside a batch are resolved in priority order so that each pod gets the node a
//! sequential scheduler would give it.
//!
//! The core is sans-IO: it takes k8s-openapi objects and `now`, and returns decisions
//! (assume + bind, FailedScheduling message, preemption victims). The shell owes it: every
//! node/pod/PriorityClass change in order (`upsert_node`, `upsert_pod`, `delete_pod`), a call
//! to `schedule_batch` whenever the queue may hold ready pods, and for each `Assumed`
//! decision either `finish_binding` + `confirm` or `forget`.
//!
//! **Must not depend on:** `store` (it never reads the store directly; the tests start an
//! in-process apiserver over it), `controllers`, `node` or `proxy-dp`. It talks to the
//! cluster only through the client in `api` ([`shell`]).
//!
//! No `unsafe`.

pub mod config;
pub mod cycle;
pub mod framework;
pub mod model;
pub mod plugins;
pub mod quantity;
pub mod queue;
pub mod shell;
pub mod status;

pub use config::Config;
pub use cycle::{Decision, Options, Scheduler};
pub use status::Status;

/// Errors of the scheduler core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A resource quantity could not be parsed.
    #[error("invalid quantity {0:?}")]
    Quantity(String),
    /// An object violates what the scheduler needs (bad operator, missing spec).
    #[error("invalid object: {0}")]
    Invalid(String),
    /// The configuration file is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The queue is full.
    #[error("scheduling queue full ({0} pods)")]
    QueueFull(usize),
}

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<crate::Scheduler>();
        assert_send_sync::<crate::framework::Framework>();
        assert_send_sync::<crate::model::Snapshot>();
        assert_send_sync::<crate::Decision>();
        assert_send_sync::<crate::Error>();
    }
}
