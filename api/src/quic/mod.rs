//! # quic — the apiserver's QUIC endpoint for watch-heavy clients
//!
//! A UDP port (by default the TLS port's number) serving resource reads — above all
//! watches — as QUIC streams: one bidirectional stream per request, so a watch that its
//! client does not read stalls only itself (no head-of-line blocking across watches, as on
//! one TCP connection), and a client reconnects with a 1-RTT handshake.
//!
//! ## Wire format (ALPN [`ALPN`], TLS 1.3)
//! The serving certificate, client-certificate verification and bearer tokens are the TLS
//! port's. On each bidirectional stream:
//! 1. the client writes a request head in HTTP/1.1 syntax — `GET /api/v1/pods?watch=true&…
//!    HTTP/1.1`, header lines (`Authorization`, `Accept`, …), an empty line — and finishes
//!    its side of the stream (no request body); at most [`frame::MAX_HEAD_BYTES`];
//! 2. the server answers with a response head in the same syntax (`HTTP/1.1 200 OK`,
//!    `Content-Type`, an empty line), then the body until it finishes the stream: for a
//!    watch, the very newline-delimited JSON events an HTTP/2 watch carries (the same
//!    encoded-once `Bytes` of the watch fan-out); for a GET or LIST the object or list; for
//!    a failure a `metav1.Status` with the HTTP code in the head.
//!
//! Only `GET`/`HEAD` of resource paths (`/api/v1/…`, `/apis/g/v/…`) are served, through
//! the same handlers as HTTPS (`rest::handle_read`): everything else is a 405 or 404 Status.
//!
//! ## Bounds
//! Connections ([`MAX_CONNECTIONS`]), concurrent streams per connection
//! ([`MAX_STREAMS_PER_CONNECTION`], more wait for credit), idle connections
//! ([`IDLE_TIMEOUT`]; clients send keep-alives), handshake and request-head time
//! ([`HEAD_TIMEOUT`]), head size, unacknowledged bytes per connection ([`SEND_WINDOW`]) and
//! per stream (the client's stream window, 512 KiB for ours). A stream whose client stops
//! reading stops being polled: its watch backs up into the fan-out, which ends it with a
//! 410 `Gone` event exactly as over HTTP/2; a stream that cannot take a single write for
//! [`WRITE_STALL_TIMEOUT`] is reset ([`RESET_STALLED`]).
//!
//! The wire format's core is sans-IO ([`frame`]); [`server`] is the tokio/quinn shell.

pub mod frame;
pub(crate) mod server;

use std::time::Duration;

/// The ALPN protocol of the endpoint.
pub const ALPN: &[u8] = b"kubeshard-watch/1";
/// Most concurrent bidirectional streams (requests, watches) per connection, as HTTP/2's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` on the TLS port.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;
/// Most open QUIC connections; more are refused.
pub const MAX_CONNECTIONS: usize = 10_000;
/// A connection with no packet for this long is closed (clients keep alive at a third).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the handshake and, separately, on reading a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream that accepts no write for this long is reset with [`RESET_STALLED`].
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Unacknowledged bytes the server keeps in flight per connection.
pub const SEND_WINDOW: u64 = 16 << 20;
/// Stream reset code: the client did not read for [`WRITE_STALL_TIMEOUT`].
pub const RESET_STALLED: u32 = 1;
/// Connection close code of a server that stops.
pub const CLOSE_STOPPING: u32 = 0;

/// Where the QUIC endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicPort {
    /// No QUIC endpoint.
    Off,
    /// UDP on the TLS port's number (the default); with an ephemeral TLS port (0) and that
    /// number taken on UDP, any free UDP port.
    SameAsTls,
    /// This UDP port (0: any free one).
    Port(u16),
}
