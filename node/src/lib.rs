//! # node — the kubelet and its built-in container runtime
//!
//! Registers a Node, renews its Lease, runs a worker per pod bound to it, and runs the
//! containers itself on Linux namespaces, cgroups and overlay root filesystems unpacked from
//! OCI images; serves logs and exec through the apiserver. Hollow mode runs many simulated
//! kubelets in one process for scale tests.
//!
//! - [`kubelet`]: the kubelet proper (Node registration and Lease, pod workers, status,
//!   graceful termination, adoption, static pods), over the runtime below and `api::client`.
//!
//! The built-in runtime needs no API:
//! - [`image`]: the content-addressed image store, archive/layout import, safe layer unpack;
//! - [`runtime`]: pod sandboxes and containers ([`runtime::Runtime`]), the API the kubelet
//!   calls; state lives on disk under the run dir so a restarted kubelet adopts its containers;
//! - [`cgroup`]: per-pod and per-container cgroups on v1 and v2 (limits, OOM, cleanup);
//! - [`logs`]: the CRI log format writer with size-based rotation (io_uring when available);
//! - [`network`]: the pod network (node bridge, a veth per pod, IPAM from the podCIDR,
//!   masquerade and hostPorts in nftables, routes to other nodes' podCIDRs) over rtnetlink;
//! - [`volumes`]: pod volumes (emptyDir, hostPath, configMap, secret, downwardAPI, projected,
//!   PVCs on hostPath/local PVs) with upstream's atomic writer, subPaths and teardown;
//! - [`probe`]: the exec/httpGet/tcpSocket/grpc probe handlers and the sans-IO probe state;
//! - [`server`]: the kubelet's HTTPS API (logs, exec, attach, port-forward over WebSocket
//!   and SPDY/3.1), which the apiserver proxies `pods/log|exec|attach|portforward` to;
//! - [`shim`]: the per-container monitor process (and the sandbox holder) the runtime starts by
//!   re-executing a binary that calls [`shim::run_if_requested`] first thing in `main`: the
//!   small `kubeshard-shim` next to the kubelet's binary when it is of the same build
//!   ([`shim::program_for`]), else the kubelet's binary itself;
//! - [`zygote`]: a single-threaded child forked first thing in `main`, from which the
//!   runtime forks the shims instead (no exec per sandbox and container) when the process
//!   made one (`kubeshard up` and `kubeshard node` do).
//!
//! **Must not depend on:** `store`, `scheduler`, `controllers` or `proxy-dp`: it talks to the
//! cluster only through the API.
//!
//! **Unsafe:** DESIGN.md allows it here for the runtime's kernel interfaces (clone, mounts,
//! io_uring log I/O), each block with a `// SAFETY:` comment. Only the `sys` module carries
//! `#[allow(unsafe_code)]` (pidfds, capabilities, xattrs, the loopback ioctl, fork in the
//! single-threaded shim); io_uring itself is `shards::uring`.

pub mod attach;
pub mod cgroup;
pub mod hollow;
pub mod image;
pub mod kubelet;
pub mod logs;
pub mod network;
pub mod probe;
mod rootfs;
pub mod runtime;
pub mod server;
pub mod shim;
pub mod spec;
mod sys;
pub mod volumes;
pub mod zygote;
