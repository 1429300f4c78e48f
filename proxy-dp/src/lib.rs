//! # proxy-dp — the userspace L4 service dataplane
//!
//! A sans-IO routing core (Services and EndpointSlices in, a routing table out, O(1) per
//! change) and a per-core forwarding shell on `shards` listeners that splices TCP and
//! forwards UDP per flow to ready endpoints.
//!
//! **Must not depend on:** `store`, `scheduler`, `controllers` or `node`. The routing core
//! must not do I/O, read clocks or spawn tasks: its shell hands it events and the time.
//!
//! Status: the dataplane arrives with its own issue; this crate is the place it will live.
