//! # Cluster DNS
//!
//! A DNS server for the cluster zone (`cluster.local` by default) with the schema of
//! CoreDNS's `kubernetes` plugin: Services, headless endpoints, SRV for named ports,
//! ExternalName CNAMEs and dashed pod names. Names outside the zone are forwarded to the
//! upstream resolvers of a resolv.conf, or refused when there are none.
//!
//! Three layers, sans-IO first:
//!
//! - [`zone`]: the record core. [`ClusterZone`] takes k8s-openapi Services and
//!   EndpointSlices (`apply_*`/`delete_*`, O(size of the object) each) and answers
//!   [`ClusterZone::lookup`] with the sections of an authoritative answer (NXDOMAIN and
//!   NODATA told apart, the SOA in the authority section of negative answers). No I/O, no
//!   clock: the SOA serial is an update counter.
//! - [`message`]: [`handle_query`] turns a request packet into an [`Outcome`] (reply bytes,
//!   forward, or drop): decoding and encoding with hickory-proto, FORMERR/NOTIMP/REFUSED/
//!   BADVERS, EDNS, and truncation (TC) of UDP replies above 512 bytes or the client's EDNS
//!   size.
//! - [`run`]: [`run_cluster_dns`], the entry point: Service and EndpointSlice informers
//!   (api::client) feeding the zone, and the server.
//! - [`server`]: the shell on `shards`: one `SO_REUSEPORT` UDP socket and TCP listener per
//!   shard on one port, bounded forwards and TCP connections, [`DnsMetrics`] counters.
//!
//! ## What the shell owes the core
//!
//! 1. Apply every Service and EndpointSlice event to the [`ClusterZone`] (add/modify with
//!    `apply_*`, delete with `delete_*`); after a relist, apply the whole list and delete
//!    what it no longer holds.
//! 2. Call [`handle_query`] with the transport the packet came on, and send
//!    [`Outcome::Reply`] bytes unchanged to the client that asked.
//! 3. On [`Outcome::Forward`], send the request bytes unchanged to an upstream over the same
//!    transport, relay its reply, and on failure (bounded by a timeout) answer
//!    [`error_reply`] with SERVFAIL.
//!
//! [`ClusterZone`]: zone::ClusterZone
//! [`ClusterZone::lookup`]: zone::ClusterZone::lookup
//! [`handle_query`]: message::handle_query
//! [`error_reply`]: message::error_reply
//! [`Outcome`]: message::Outcome
//! [`Outcome::Reply`]: message::Outcome::Reply
//! [`Outcome::Forward`]: message::Outcome::Forward
//! [`DnsMetrics`]: metrics::DnsMetrics

pub mod error;
pub mod message;
pub mod metrics;
pub mod resolv;
pub mod run;
pub mod server;
pub mod zone;

pub use error::{ConfigError, ResolvConfError, ServeError};
pub use message::{HandlerConfig, Outcome, Transport, handle_query};
pub use metrics::DnsMetrics;
pub use run::{ClusterDnsConfig, RunningClusterDns, run_cluster_dns};
pub use server::{DnsServer, ServerConfig, SharedZone};
pub use zone::{Answer, ClusterZone, Lookup, ZoneConfig};
