//! # scheduler — batch-parallel pod scheduling
//!
//! Kubernetes' scheduling framework (PreFilter, Filter, PostFilter, PreScore, Score, Reserve,
//! Permit, Bind) with the default plugins, run batch-parallel: a batch of pending pods is
//! scored against node partitions owned by worker threads. Talks to the cluster only through
//! the client in `api`.
//!
//! **Must not depend on:** `store` (it never reads the store directly), `controllers`,
//! `node` or `proxy-dp`.
//!
//! Status: the framework and plugins arrive with their own issue; this crate is the place
//! they will live.
