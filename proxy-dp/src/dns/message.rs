//! Query handling, sans-IO: a request packet in, an [`Outcome`] out (a reply to send, a
//! query to forward upstream, or nothing). Decoding and encoding go through hickory-proto;
//! this module decides what to answer and enforces the transport's size limit.

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::metrics::{DnsMetrics, Event};
use super::zone::{ClusterZone, Lookup};

/// The classic DNS-over-UDP payload limit without EDNS (RFC 1035).
pub const UDP_MIN_PAYLOAD: u16 = 512;
/// The EDNS payload we advertise and honour at most (the DNS flag day 2020 value: fits an
/// IPv6 minimum MTU without fragmentation).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1232;
/// A DNS message over TCP is length-prefixed by a u16.
pub const TCP_MAX_MESSAGE: usize = u16::MAX as usize;

/// Which transport a query came over; UDP answers are truncated to the client's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Datagram: the reply must fit 512 bytes or the client's EDNS payload size.
    Udp,
    /// Stream (length-prefixed): up to 64 KiB.
    Tcp,
}

/// How the handler answers; shared by every shard.
#[derive(Clone, Copy, Debug)]
pub struct HandlerConfig {
    /// The largest UDP payload we send (the client's EDNS size is clamped to it).
    pub max_udp_payload: u16,
    /// Whether names outside the zone are forwarded (an upstream exists); if not they are
    /// refused.
    pub forwarding: bool,
}

/// What the shell must do with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// The name is outside the zone: send the request bytes unchanged to an upstream and
    /// relay its reply; on failure answer [`error_reply`] with SERVFAIL.
    Forward,
    /// Send nothing (not a query, or too short to answer).
    Drop,
}

fn response_metadata(req: &Metadata, rcode: ResponseCode, forwarding: bool) -> Metadata {
    let mut m = Metadata::response_from_request(req);
    m.response_code = rcode;
    m.recursion_available = forwarding;
    m
}

fn encode(msg: &Message, metrics: &DnsMetrics) -> Outcome {
    match msg.to_vec() {
        Ok(bytes) => {
            metrics.response(msg.metadata.response_code);
            Outcome::Reply(bytes)
        }
        Err(e) => {
            tracing::warn!(error = %e, "encoding a DNS response failed");
            metrics.event(Event::Dropped);
            Outcome::Drop
        }
    }
}

/// An error response to `packet` carrying `rcode` (with its question when it decodes), or
/// `None` when the packet has no usable header. The shell uses it for SERVFAIL after a
/// failed forward.
pub fn error_reply(packet: &[u8], rcode: ResponseCode, forwarding: bool) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
    let mut msg = Message::new(header.id, MessageType::Response, header.op_code);
    msg.metadata = response_metadata(&header.metadata, rcode, forwarding);
    if let Ok(req) = Message::from_vec(packet) {
        msg.add_queries(req.queries);
        if req.edns.is_some() {
            msg.set_edns(server_edns(DEFAULT_MAX_UDP_PAYLOAD));
        }
    }
    msg.to_vec().ok()
}

fn server_edns(payload: u16) -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(payload);
    e.set_version(0);
    e
}

/// Handles one request packet against `zone`.
pub fn handle_query(
    zone: &ClusterZone,
    cfg: &HandlerConfig,
    packet: &[u8],
    transport: Transport,
    metrics: &DnsMetrics,
) -> Outcome {
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
        metrics.event(Event::Dropped);
        return Outcome::Drop;
    };
    // Never answer a response: that is how reflection loops start.
    if header.message_type == MessageType::Response {
        metrics.event(Event::Dropped);
        return Outcome::Drop;
    }
    let reply = |rcode| {
        let mut m = Message::new(header.id, MessageType::Response, header.op_code);
        m.metadata = response_metadata(&header.metadata, rcode, cfg.forwarding);
        m
    };
    let Ok(req) = Message::from_vec(packet) else {
        return encode(&reply(ResponseCode::FormErr), metrics);
    };
    if header.op_code != OpCode::Query {
        let mut m = reply(ResponseCode::NotImp);
        m.add_queries(req.queries);
        return encode(&m, metrics);
    }
    let [query] = req.queries.as_slice() else {
        return encode(&reply(ResponseCode::FormErr), metrics);
    };
    metrics.query(query.query_type());
    let mut resp = reply(ResponseCode::NoError);
    resp.add_query(query.clone());
    let limit = match (&req.edns, transport) {
        (_, Transport::Tcp) => TCP_MAX_MESSAGE,
        (Some(e), Transport::Udp) => usize::from(
            e.max_payload()
                .clamp(UDP_MIN_PAYLOAD, cfg.max_udp_payload.max(UDP_MIN_PAYLOAD)),
        ),
        (None, Transport::Udp) => usize::from(UDP_MIN_PAYLOAD),
    };
    if let Some(e) = &req.edns {
        resp.set_edns(server_edns(cfg.max_udp_payload));
        if e.version() > 0 {
            resp.metadata.response_code = ResponseCode::BADVERS;
            return encode(&resp, metrics);
        }
    }
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY)
        || matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR)
    {
        resp.metadata.response_code = ResponseCode::Refused;
        return encode(&resp, metrics);
    }
    match zone.lookup(query.name(), query.query_type()) {
        Lookup::NotInZone if cfg.forwarding => {
            metrics.event(Event::Forwarded);
            Outcome::Forward
        }
        Lookup::NotInZone => {
            resp.metadata.response_code = ResponseCode::Refused;
            encode(&resp, metrics)
        }
        Lookup::Answer(a) => {
            resp.metadata.authoritative = true;
            resp.metadata.response_code = a.rcode;
            resp.insert_answers(a.answers);
            resp.insert_authorities(a.authorities);
            resp.insert_additionals(a.additionals);
            fit(resp, limit, metrics)
        }
    }
}

/// Encodes `resp`; if it exceeds `limit`, sends the question alone with TC set so the
/// client retries over TCP (RFC 1035 4.2.1, RFC 7766).
fn fit(resp: Message, limit: usize, metrics: &DnsMetrics) -> Outcome {
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => {
            metrics.response(resp.metadata.response_code);
            Outcome::Reply(bytes)
        }
        Ok(_) => {
            metrics.event(Event::Truncated);
            let mut t = resp.truncate();
            t.metadata.message_type = MessageType::Response;
            encode(&t, metrics)
        }
        Err(e) => {
            tracing::warn!(error = %e, "encoding a DNS response failed");
            metrics.event(Event::Dropped);
            Outcome::Drop
        }
    }
}

/// The response code of a reply packet (the low four bits; enough for counting upstream
/// answers), or `None` if it is shorter than a header.
pub fn reply_rcode(packet: &[u8]) -> Option<ResponseCode> {
    let b = packet.get(3)?;
    Some(ResponseCode::from_low(b & 0x0f))
}

/// The message id of a packet (`None` if shorter than two bytes).
pub fn packet_id(packet: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*packet.first()?, *packet.get(1)?]))
}
