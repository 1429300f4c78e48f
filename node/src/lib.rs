//! # node — the kubelet and its built-in container runtime
//!
//! Registers a Node, renews its Lease, runs a worker per pod bound to it, and runs the
//! containers itself on Linux namespaces, cgroups and overlay root filesystems unpacked from
//! OCI images; serves logs and exec through the apiserver. Hollow mode runs many simulated
//! kubelets in one process for scale tests.
//!
//! **Must not depend on:** `store`, `scheduler`, `controllers` or `proxy-dp`: it talks to the
//! cluster only through the API.
//!
//! **Unsafe:** DESIGN.md allows it here for the runtime's kernel interfaces (clone, mounts,
//! io_uring log I/O), each block with a `// SAFETY:` comment.
//!
//! Status: the kubelet arrives with its own issue; this crate is the place it will live.
