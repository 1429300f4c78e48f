//! # controllers — the controller-manager
//!
//! Level-triggered reconcilers (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job,
//! CronJob, garbage collector, namespace and node lifecycle, endpoints...) on shared informer
//! caches from `api`'s client, with rate-limited, deduplicated work queues.
//!
//! **Must not depend on:** `store`, `scheduler`, `node` or `proxy-dp`: it talks to the
//! cluster only through the API.
//!
//! Status: the controllers arrive with their own issue; this crate is the place they will
//! live.
