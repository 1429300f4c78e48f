//! Counters of the DNS server: queries by type, responses by rcode, and the shell's events.
//! Relaxed atomics shared by all shards (a handful of cache lines; the write rate is one
//! increment or two per query).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// Query types counted separately; everything else is `other`.
const QTYPES: [(&str, RecordType); 9] = [
    ("A", RecordType::A),
    ("AAAA", RecordType::AAAA),
    ("SRV", RecordType::SRV),
    ("PTR", RecordType::PTR),
    ("CNAME", RecordType::CNAME),
    ("SOA", RecordType::SOA),
    ("NS", RecordType::NS),
    ("TXT", RecordType::TXT),
    ("ANY", RecordType::ANY),
];

/// Response codes counted separately; everything else is `other`.
const RCODES: [(&str, ResponseCode); 7] = [
    ("NOERROR", ResponseCode::NoError),
    ("FORMERR", ResponseCode::FormErr),
    ("SERVFAIL", ResponseCode::ServFail),
    ("NXDOMAIN", ResponseCode::NXDomain),
    ("NOTIMP", ResponseCode::NotImp),
    ("REFUSED", ResponseCode::Refused),
    ("BADVERS", ResponseCode::BADVERS),
];

/// Shell events worth a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A UDP response did not fit and went out with TC set.
    Truncated,
    /// A query was forwarded upstream.
    Forwarded,
    /// Every upstream failed or timed out (the client got SERVFAIL).
    ForwardFailed,
    /// A forward was refused because the in-flight bound was reached (SERVFAIL).
    ForwardOverload,
    /// A packet was dropped unanswered (too short for a header, or a response).
    Dropped,
    /// A TCP connection was closed at once: the per-shard connection bound was reached.
    TcpRejected,
    /// A TCP connection was accepted.
    TcpAccepted,
}

const EVENTS: [(&str, Event); 7] = [
    ("truncated", Event::Truncated),
    ("forwarded", Event::Forwarded),
    ("forward_failed", Event::ForwardFailed),
    ("forward_overload", Event::ForwardOverload),
    ("dropped", Event::Dropped),
    ("tcp_rejected", Event::TcpRejected),
    ("tcp_accepted", Event::TcpAccepted),
];

/// The DNS server's counters.
#[derive(Debug, Default)]
pub struct DnsMetrics {
    qtypes: [AtomicU64; QTYPES.len() + 1],
    rcodes: [AtomicU64; RCODES.len() + 1],
    events: [AtomicU64; EVENTS.len()],
}

impl DnsMetrics {
    /// Counts a query of `qtype`.
    pub fn query(&self, qtype: RecordType) {
        let i = QTYPES
            .iter()
            .position(|(_, t)| *t == qtype)
            .unwrap_or(QTYPES.len());
        self.qtypes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response with `rcode`.
    pub fn response(&self, rcode: ResponseCode) {
        let i = RCODES
            .iter()
            .position(|(_, c)| *c == rcode)
            .unwrap_or(RCODES.len());
        self.rcodes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a shell event.
    pub fn event(&self, e: Event) {
        if let Some(i) = EVENTS.iter().position(|(_, x)| *x == e) {
            self.events[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queries counted for `qtype`'s bucket.
    pub fn queries_of(&self, qtype: RecordType) -> u64 {
        let i = QTYPES
            .iter()
            .position(|(_, t)| *t == qtype)
            .unwrap_or(QTYPES.len());
        self.qtypes[i].load(Ordering::Relaxed)
    }

    /// Responses counted for `rcode`'s bucket.
    pub fn responses_of(&self, rcode: ResponseCode) -> u64 {
        let i = RCODES
            .iter()
            .position(|(_, c)| *c == rcode)
            .unwrap_or(RCODES.len());
        self.rcodes[i].load(Ordering::Relaxed)
    }

    /// Times `e` happened.
    pub fn events_of(&self, e: Event) -> u64 {
        EVENTS
            .iter()
            .position(|(_, x)| *x == e)
            .map_or(0, |i| self.events[i].load(Ordering::Relaxed))
    }

    /// The counters in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE kubeshard_dns_queries_total counter\n");
        let names = QTYPES.iter().map(|(n, _)| *n).chain(["other"]);
        for (name, c) in names.zip(&self.qtypes) {
            let _ = writeln!(
                out,
                "kubeshard_dns_queries_total{{type=\"{name}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# TYPE kubeshard_dns_responses_total counter\n");
        let names = RCODES.iter().map(|(n, _)| *n).chain(["other"]);
        for (name, c) in names.zip(&self.rcodes) {
            let _ = writeln!(
                out,
                "kubeshard_dns_responses_total{{rcode=\"{name}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        for ((name, _), c) in EVENTS.iter().zip(&self.events) {
            let _ = writeln!(out, "# TYPE kubeshard_dns_{name}_total counter");
            let _ = writeln!(
                out,
                "kubeshard_dns_{name}_total {}",
                c.load(Ordering::Relaxed)
            );
        }
        out
    }
}
