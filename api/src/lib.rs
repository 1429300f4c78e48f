//! # api — the Kubernetes API server and the Rust client
//!
//! Serves the Kubernetes REST API (discovery, OpenAPI, CRUD, watch, patch, subresources) over
//! one TLS port with HTTP/2 and HTTP/1.1, on per-core acceptors from `shards`, backed by a
//! `store::Backend`; watches (and other reads) also as QUIC streams on a UDP port
//! ([`quic`]: one stream per watch, no head-of-line blocking). Also holds the Rust client
//! (typed requests, reflectors, informers, watches over HTTP/2 or QUIC) that the scheduler,
//! controllers, kubelet and proxy use to talk to it over the network.
//!
//! **Must not depend on:** `scheduler`, `controllers`, `node` or `proxy-dp`; those depend on
//! this crate's client, never the other way round.

pub mod apply;
pub mod conversion;
pub mod discovery;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod status;
pub mod table;
pub mod validation;

pub use status::{ApiError, FieldError, Reason, Status};
pub mod auth;
pub mod client;
pub mod kubeconfig;
pub mod metrics;
pub mod pki;
pub mod quic;
pub mod rest;
pub mod server;
pub mod watch;
