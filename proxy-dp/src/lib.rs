//! # proxy-dp — the userspace L4 service dataplane
//!
//! A sans-IO routing core (Services and EndpointSlices in, a routing table out, O(1) per
//! change) and a per-core forwarding shell on `shards` listeners that splices TCP and
//! forwards UDP per flow to ready endpoints.
//!
//! **Must not depend on:** `store`, `scheduler`, `controllers` or `node`. The routing core
//! must not do I/O, read clocks or spawn tasks: its shell hands it events and the time.
//!
//! ## Modules
//!
//! - [`core`]: the routing table ([`core::RoutingTable`]), the per-shard balancer
//!   ([`core::Balancer`]: round-robin, least-connections, Maglev, ClientIP affinity) and the
//!   Maglev table. Pure; its module doc lists what the shell owes it.
//! - [`shell`]: the per-core forwarding shell ([`Dataplane`]) on `shards`.
//! - [`run`]: `kubeshard proxy`, the dataplane fed by Service and EndpointSlice informers.
//! - [`servicelb`]: the service load balancer for a machine or a lab (k3s's servicelb):
//!   LoadBalancer Services get the nodes' addresses as ingress, served by the dataplane.
//! - [`dns`]: cluster DNS (CoreDNS's `kubernetes` schema): a sans-IO record core over
//!   Services and EndpointSlices and a per-shard UDP/TCP server shell.
//!
//! - [`bpf`]: in-kernel forwarding of established TCP flows (a sockmap and an `sk_skb`
//!   verdict program built as bytecode in Rust, loaded with the raw `bpf(2)` call).
//!
//! **Unsafe:** only in `bpf::sys` (the crate denies it elsewhere): the `bpf(2)` system call
//! has no safe wrapper in our dependencies (and a BPF toolchain or `aya`'s loader is not
//! wanted: CI builds on stable Rust with no external tools), and the `SO_COOKIE`/`TCP_INFO`
//! reads and the watcher's `epoll` calls are raw `libc` calls next to it. Each block has a
//! `// SAFETY:` comment. Splice goes through `shards::uring` or `nix`'s safe wrapper.

pub mod bpf;
pub mod core;
pub mod error;

pub use error::{CoreError, ShellError};
pub mod run;
pub mod servicelb;
pub mod shell;

pub use shell::{
    Change, Dataplane, DataplaneConfig, ForwardMode, KERNEL_FORWARD_ENV, KernelForward,
};
pub mod dns;
