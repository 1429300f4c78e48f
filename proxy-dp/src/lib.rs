//! # proxy-dp — the userspace L4 service dataplane
//!
//! A sans-IO routing core (Services and EndpointSlices in, a routing table out, O(1) per
//! change) and a per-core forwarding shell on `shards` listeners that splices TCP and
//! forwards UDP per flow to ready endpoints.
//!
//! ## Forwarding: splice in user space, the sockmap kernel path measured and kept off
//!
//! DESIGN.md chose "splice forwarding". Session 6 measured the user-space engines at 0.44x a
//! direct connection's bulk throughput with the shard threads over 90% in the kernel, and
//! concluded forwarding had to move into the kernel. Session 7 built that ([`bpf`]: a sockmap
//! and an `sk_skb` stream-verdict program redirecting each socket's bytes to its peer's
//! egress; user space keeps accept, backend choice, connect, and watches only FIN/errors to
//! pass half-closes and resets on) and measured it side by side
//! (`RUNS=3 SECS=2 ./target/release/proxy_vs_haproxy`, medians of 3, load 4.0-7.0, BENCHMARKS.md
//! `## proxy-dp: kernel forwarding with a sockmap`):
//!
//! | path | bulk Gbit/s | CPU ms/Gbit | short conn/s | RTT p50/p99 us |
//! |---|---:|---:|---:|---:|
//! | sockmap | 4.64 | 425 | 2,906 | 39.5 / 102.7 |
//! | splice | 9.87 | 202 | 7,167 | 78.8 / 1,021 |
//! | adaptive (default) | 7.62 | 260 | 6,138 | 46.4 / 129.1 |
//! | HAProxy 2.6 | 6.62 | 302 | 6,403 | 73.8 / 1,244 |
//!
//! The kernel path lost on throughput, CPU and connection rate: an egress redirect from an
//! `sk_skb` program is not sent in the softirq that received the segment but queued on the
//! peer's psock and sent by a kernel work queue (a context switch per batch, on the same two
//! cores as everything else), and a FIN has to wait until that queue has handed the bytes
//! before it can be passed on (most short connections waited). So the decision stays
//! **splice/adaptive in user space by default**; the sockmap path is kept, tested and
//! selectable ([`KernelForward::On`], `KUBESHARD_PROXY_SOCKMAP=on`) for kernels or workloads
//! where it measures better (its added latency was the lowest of the proxies here).
//!
//! **Known broken, so experimental:** on Linux 6.18 the kernel path duplicated bytes in 2 of
//! 12 runs of a 32-48 MiB echo through it (`kernel_forward.rs`, the ignored
//! `large_transfers_...` test): 65,483 extra bytes (one loopback segment) in the middle of
//! the stream. User space never writes payload on that path, so the duplicate comes from the
//! kernel's redirect/backlog queue under send-buffer pressure (the 6.6 source of
//! `sk_psock_backlog` resets a saved partial-send offset to 0 on its retry; whether that is
//! the cause here is not established). Transfers of 4 MiB and less passed every run. Do not
//! turn it on for traffic that matters until this is understood.
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
