//! Typed errors of the cluster DNS module.

use std::net::SocketAddr;

/// A zone or server configuration was refused. Not retryable: fix the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The zone name is not a valid DNS name.
    #[error("invalid DNS zone {zone:?}: {reason}")]
    InvalidZone {
        /// The zone as given.
        zone: String,
        /// What the DNS library said.
        reason: String,
    },
    /// A numeric limit was zero or out of range.
    #[error("invalid DNS server setting {name}: {reason}")]
    InvalidLimit {
        /// The setting.
        name: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// Reading a resolv.conf failed. Retryable only if the file appears later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolvConfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Starting the DNS server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding the per-shard sockets failed (address in use, no permission...).
    #[error("binding the DNS listeners on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The error from `shards`.
        source: shards::ListenError,
    },
    /// Handing a socket to a shard failed (the set is shutting down).
    #[error("starting the DNS server on the shards: {0}")]
    Shards(#[from] shards::InvokeError),
    /// The resolv.conf naming the upstreams could not be read.
    #[error(transparent)]
    ResolvConf(#[from] ResolvConfError),
    /// A socket operation during start-up failed.
    #[error("DNS socket setup: {0}")]
    Io(#[from] std::io::Error),
}
