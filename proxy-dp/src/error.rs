//! Typed errors of the dataplane.

use std::net::SocketAddr;

/// The routing core refused an object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The object has no `metadata.name`. Not retryable: the object is malformed.
    #[error("object without metadata.name")]
    MissingName,
    /// An EndpointSlice without the `kubernetes.io/service-name` label (it belongs to no
    /// Service). Not retryable; the slice is ignored.
    #[error("EndpointSlice {slice} has no kubernetes.io/service-name label")]
    NoService {
        /// namespace/name of the slice.
        slice: String,
    },
}

/// The forwarding shell failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShellError {
    /// Starting the shards failed. Not retryable as configured.
    #[error("starting the shards: {0}")]
    Start(#[from] shards::StartError),
    /// Binding a listener failed (address missing, port taken). Retryable once the address
    /// exists or the port is free.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: shards::ListenError,
    },
    /// Adding or removing a VIP on the node failed. Retryable.
    #[error("{action} address {ip} on {dev}: {detail}")]
    Address {
        /// "adding" or "removing".
        action: &'static str,
        /// The address.
        ip: std::net::IpAddr,
        /// The device.
        dev: String,
        /// What `ip` said.
        detail: String,
    },
    /// The kernel data path was required ([`crate::KernelForward::On`]) and could not be
    /// set up. Not retryable on this kernel/privilege; `Auto` falls back instead.
    #[error("kernel forwarding: {0}")]
    Bpf(#[from] crate::bpf::BpfError),
    /// A cross-shard call failed (the set is shutting down). Not retryable.
    #[error("reaching a shard: {0}")]
    Invoke(String),
    /// Other I/O (metrics listener...). Retryable as the OS error allows.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}
