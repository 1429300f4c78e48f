//! A lean HTTP/2 load generator for paced single-object GETs (h2c with prior knowledge).
//!
//! Why it exists: the apiserver's GET target (p99 under 1 ms at 50,000 GET/s) is measured with
//! the load generator on the same two cores as the server. Driven through the `h2` crate, the
//! client spent about as much CPU per GET as the server (~20 µs), so at 50,000/s the two
//! together asked for the machine's whole budget and the p99 was the client's and server's
//! queueing, not the server's latency. This client does the least HTTP/2 work a correct
//! client can do for GETs:
//! - requests are written in batches, one `write` per connection per pacing step;
//! - it announces `SETTINGS_HEADER_TABLE_SIZE = 0`, so the server's HPACK encoder uses no
//!   dynamic table and a response's header block can be walked without keeping one; only
//!   `:status` is read (digit strings may be Huffman coded: decoded for digits only);
//! - flow control: a 1 MiB stream window (a GET answer is a few KiB) and a connection window
//!   topped up every 16 MiB received;
//! - SETTINGS and PING are acknowledged, GOAWAY ends the connection, RST_STREAM counts as a
//!   failure, CONTINUATION frames are joined.
//!
//! It is a bench tool, not a general client: no request bodies, no server push, no TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
/// Each stream's receive window: far above one object's size.
const STREAM_WINDOW: u32 = 1 << 20;
/// The connection's receive window, topped up after every `WINDOW_TOP_UP` bytes received.
const CONNECTION_WINDOW: u32 = 1 << 30;
const WINDOW_TOP_UP: u32 = 16 << 20;
/// In-flight slots per connection (a power of two, above any in-flight bound).
const SLOTS: usize = 1 << 16;
/// Largest frame payload accepted (the HTTP/2 default maximum frame size).
const MAX_FRAME: usize = 16_384;
/// Largest header block accepted after joining CONTINUATION frames.
const MAX_HEADER_BLOCK: usize = 64 << 10;
/// How long readers wait for answers still in flight once the pacer has stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a paced run produced.
#[derive(Debug, Default)]
pub struct PacedOutcome {
    /// Latency of each 2xx answer, from its scheduled send time.
    pub latencies: Vec<Duration>,
    /// Non-2xx answers, reset streams, and requests lost with a connection.
    pub failures: u64,
    /// Requests not sent because their connection's in-flight bound was full.
    pub not_sent: u64,
}

/// One connection's state shared by the pacer (writes) and its reader thread.
struct Conn {
    writer: Mutex<Writer>,
    /// Scheduled send time of the request in each slot, in ns since the run's start.
    scheduled: Vec<AtomicU64>,
    in_flight: AtomicUsize,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS (u32::MAX until announced).
    server_max_streams: AtomicU32,
    closed: AtomicBool,
}

struct Writer {
    stream: TcpStream,
    next_stream_id: u32,
    pending: Vec<u8>,
}

fn frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

/// HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, its name taken from static-table entry `name`.
fn hpack_literal(out: &mut Vec<u8>, name: usize, value: &[u8]) {
    hpack_int(out, 0x00, 4, name);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// The header block of `GET path` with `Accept: application/json`.
pub fn encode_get(path: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(path.len() + 48);
    b.push(0x82); // :method GET (static 2)
    b.push(0x86); // :scheme http (static 6)
    hpack_literal(&mut b, 4, path.as_bytes()); // :path
    hpack_literal(&mut b, 1, b"127.0.0.1"); // :authority
    hpack_literal(&mut b, 19, b"application/json"); // accept
    b
}

#[derive(Debug, PartialEq, Eq)]
enum HpackError {
    Truncated,
    DynamicIndex(usize),
    BadStatus,
}

fn read_int(buf: &[u8], at: &mut usize, n: u32) -> Result<usize, HpackError> {
    let max = (1usize << n) - 1;
    let first = *buf.get(*at).ok_or(HpackError::Truncated)? as usize & max;
    *at += 1;
    if first < max {
        return Ok(first);
    }
    let mut v = max;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*at).ok_or(HpackError::Truncated)? as usize;
        *at += 1;
        if shift > 28 {
            return Err(HpackError::Truncated);
        }
        v += (b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// A string literal's bytes and whether they are Huffman coded.
fn read_string<'a>(buf: &'a [u8], at: &mut usize) -> Result<(&'a [u8], bool), HpackError> {
    let huffman = buf.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = read_int(buf, at, 7)?;
    let s = buf.get(*at..*at + len).ok_or(HpackError::Truncated)?;
    *at += len;
    Ok((s, huffman))
}

/// Decodes a Huffman-coded string made only of decimal digits (RFC 7541 Appendix B: '0'-'2'
/// have 5-bit codes 0-2, '3'-'9' 6-bit codes 0x19-0x1f; the padding is all ones).
fn huffman_digits(s: &[u8]) -> Result<u16, HpackError> {
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut value: u32 = 0;
    let mut digits = 0;
    for &byte in s {
        acc = (acc << 8) | byte as u32;
        bits += 8;
        while bits >= 5 {
            let five = (acc >> (bits - 5)) & 0x1f;
            let digit = if five <= 2 {
                bits -= 5;
                five
            } else if bits >= 6 {
                let six = (acc >> (bits - 6)) & 0x3f;
                if !(0x19..=0x1f).contains(&six) {
                    break;
                }
                bits -= 6;
                six - 0x19 + 3
            } else {
                break;
            };
            value = value * 10 + digit;
            digits += 1;
            acc &= (1 << bits) - 1;
        }
    }
    // What is left must be padding: fewer than 8 bits, all ones.
    if digits == 0 || bits >= 8 || acc != (1 << bits) - 1 || value > u16::MAX as u32 {
        return Err(HpackError::BadStatus);
    }
    Ok(value as u16)
}

fn status_of(s: &[u8], huffman: bool) -> Result<u16, HpackError> {
    if huffman {
        return huffman_digits(s);
    }
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(HpackError::BadStatus)
}

/// `:status` of a response header block encoded without a dynamic table.
fn response_status(block: &[u8]) -> Result<Option<u16>, HpackError> {
    const STATIC_STATUS: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let mut at = 0;
    let mut status = None;
    while at < block.len() {
        let b = block[at];
        if b & 0x80 != 0 {
            let i = read_int(block, &mut at, 7)?;
            match i {
                8..=14 => status = Some(STATIC_STATUS[i - 8]),
                1..=61 => {}
                _ => return Err(HpackError::DynamicIndex(i)),
            }
        } else if b & 0xe0 == 0x20 {
            read_int(block, &mut at, 5)?; // dynamic table size update
        } else {
            let prefix = if b & 0xc0 == 0x40 { 6 } else { 4 };
            let name = read_int(block, &mut at, prefix)?;
            let is_status = match name {
                0 => {
                    let (n, huffman) = read_string(block, &mut at)?;
                    // ":status" is never sent as a new literal name by a sane encoder;
                    // accept the plain spelling anyway.
                    !huffman && n == b":status"
                }
                8..=14 => true,
                1..=61 => false,
                _ => return Err(HpackError::DynamicIndex(name)),
            };
            let (v, huffman) = read_string(block, &mut at)?;
            if is_status {
                status = Some(status_of(v, huffman)?);
            }
        }
    }
    Ok(status)
}

impl Conn {
    fn connect(port: u16) -> std::io::Result<(Arc<Conn>, TcpStream)> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        let mut hello = PREFACE.to_vec();
        let settings: [(u16, u32); 3] = [
            (SETTINGS_HEADER_TABLE_SIZE, 0),
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
        ];
        frame_head(&mut hello, settings.len() * 6, FRAME_SETTINGS, 0, 0);
        for (id, v) in settings {
            hello.extend_from_slice(&id.to_be_bytes());
            hello.extend_from_slice(&v.to_be_bytes());
        }
        window_update(&mut hello, CONNECTION_WINDOW - 65_535);
        (&stream).write_all(&hello)?;
        let reader = stream.try_clone()?;
        let conn = Arc::new(Conn {
            writer: Mutex::new(Writer {
                stream,
                next_stream_id: 1,
                pending: Vec::with_capacity(64 << 10),
            }),
            scheduled: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            in_flight: AtomicUsize::new(0),
            server_max_streams: AtomicU32::new(u32::MAX),
            closed: AtomicBool::new(false),
        });
        Ok((conn, reader))
    }

    /// Queues one GET (its header block pre-encoded) scheduled `scheduled_ns` after t0;
    /// false when the connection's in-flight bound is full or it is closed.
    fn queue(&self, w: &mut Writer, block: &[u8], scheduled_ns: u64, bound: usize) -> bool {
        let limit = bound.min(self.server_max_streams.load(Ordering::Relaxed) as usize);
        if self.closed.load(Ordering::Relaxed)
            || self.in_flight.load(Ordering::Acquire) >= limit.min(SLOTS - 1)
            || w.next_stream_id > 0x7fff_fff0
        {
            return false;
        }
        let id = w.next_stream_id;
        w.next_stream_id += 2;
        self.scheduled[(id as usize >> 1) & (SLOTS - 1)].store(scheduled_ns, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        frame_head(
            &mut w.pending,
            block.len(),
            FRAME_HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            id,
        );
        w.pending.extend_from_slice(block);
        true
    }

    fn write_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        let w = self.writer.lock();
        (&w.stream).write_all(bytes)
    }
}

fn window_update(out: &mut Vec<u8>, increment: u32) {
    frame_head(out, 4, 0x8, 0, 0);
    out.extend_from_slice(&(increment & 0x7fff_ffff).to_be_bytes());
}

/// What one reader thread saw.
#[derive(Default)]
struct ReadOutcome {
    latencies: Vec<Duration>,
    failures: u64,
}

/// Reads frames until the connection closes or `stop` is set with nothing in flight.
fn read_loop(
    conn: Arc<Conn>,
    mut sock: TcpStream,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> ReadOutcome {
    let mut out = ReadOutcome::default();
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 256 << 10];
    let (mut filled, mut start) = (0usize, 0usize);
    let mut status = vec![0u16; SLOTS];
    let mut block: Vec<u8> = Vec::new();
    let mut block_stream = 0u32;
    let mut block_end_stream = false;
    let mut received_since_update = 0u32;
    let mut stopped_at: Option<Instant> = None;
    let finish = |out: &mut ReadOutcome, id: u32, code: u16| {
        let slot = (id as usize >> 1) & (SLOTS - 1);
        let sched = Duration::from_nanos(conn.scheduled[slot].load(Ordering::Acquire));
        if (200..300).contains(&code) {
            out.latencies.push(t0.elapsed().saturating_sub(sched));
        } else {
            out.failures += 1;
        }
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    };
    'outer: loop {
        if stop.load(Ordering::Relaxed) {
            // Answers still due get a bounded grace period after the last send.
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if conn.in_flight.load(Ordering::Acquire) == 0 || at.elapsed() > STOP_GRACE {
                break;
            }
        }
        if start > 0 && filled - start < 9 + MAX_FRAME {
            buf.copy_within(start..filled, 0);
            filled -= start;
            start = 0;
        }
        match sock.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        }
        while filled - start >= 9 {
            let h = &buf[start..start + 9];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let (kind, flags) = (h[3], h[4]);
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if len > MAX_FRAME {
                break 'outer;
            }
            if filled - start < 9 + len {
                break;
            }
            let payload = &buf[start + 9..start + 9 + len];
            start += 9 + len;
            match kind {
                FRAME_DATA => {
                    received_since_update += len as u32;
                    if flags & FLAG_END_STREAM != 0 {
                        let slot = (id as usize >> 1) & (SLOTS - 1);
                        finish(&mut out, id, status[slot]);
                        status[slot] = 0;
                    }
                }
                FRAME_HEADERS | FRAME_CONTINUATION => {
                    let mut frag = payload;
                    if kind == FRAME_HEADERS {
                        let mut skip = 0usize;
                        let mut pad = 0usize;
                        if flags & FLAG_PADDED != 0 {
                            pad = *frag.first().unwrap_or(&0) as usize;
                            skip += 1;
                        }
                        if flags & FLAG_PRIORITY != 0 {
                            skip += 5;
                        }
                        if skip + pad > frag.len() {
                            break 'outer;
                        }
                        frag = &frag[skip..frag.len() - pad];
                        block.clear();
                        block_stream = id;
                        block_end_stream = flags & FLAG_END_STREAM != 0;
                    } else if id != block_stream {
                        break 'outer;
                    }
                    if block.len() + frag.len() > MAX_HEADER_BLOCK {
                        break 'outer;
                    }
                    block.extend_from_slice(frag);
                    if flags & FLAG_END_HEADERS != 0 {
                        let code = match response_status(&block) {
                            Ok(Some(c)) => c,
                            // A trailer block or a malformed one: not a 2xx head.
                            _ => 0,
                        };
                        let slot = (block_stream as usize >> 1) & (SLOTS - 1);
                        if status[slot] == 0 || code != 0 {
                            status[slot] = code;
                        }
                        if block_end_stream {
                            let s = status[slot];
                            finish(&mut out, block_stream, s);
                            status[slot] = 0;
                        }
                    }
                }
                FRAME_RST_STREAM => {
                    let slot = (id as usize >> 1) & (SLOTS - 1);
                    finish(&mut out, id, 0);
                    status[slot] = 0;
                }
                FRAME_SETTINGS if flags & FLAG_ACK == 0 => {
                    for s in payload.chunks_exact(6) {
                        let key = u16::from_be_bytes([s[0], s[1]]);
                        let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                        if key == SETTINGS_MAX_CONCURRENT_STREAMS {
                            conn.server_max_streams.store(v, Ordering::Relaxed);
                        }
                    }
                    let mut ack = Vec::with_capacity(9);
                    frame_head(&mut ack, 0, FRAME_SETTINGS, FLAG_ACK, 0);
                    if conn.write_raw(&ack).is_err() {
                        break 'outer;
                    }
                }
                FRAME_PING if flags & FLAG_ACK == 0 => {
                    let mut pong = Vec::with_capacity(17);
                    frame_head(&mut pong, 8, FRAME_PING, FLAG_ACK, 0);
                    pong.extend_from_slice(payload);
                    if conn.write_raw(&pong).is_err() {
                        break 'outer;
                    }
                }
                FRAME_GOAWAY => break 'outer,
                _ => {}
            }
            if received_since_update >= WINDOW_TOP_UP {
                let mut wu = Vec::with_capacity(13);
                window_update(&mut wu, received_since_update);
                received_since_update = 0;
                if conn.write_raw(&wu).is_err() {
                    break 'outer;
                }
            }
        }
    }
    conn.closed.store(true, Ordering::Relaxed);
    // Whatever was still in flight is lost with the connection.
    out.failures += conn.in_flight.swap(0, Ordering::AcqRel) as u64;
    out
}

/// Sends `total` GETs (`paths[i % len]`) paced at `rate` per second over `conns` connections,
/// waking every `step`; at most `in_flight_per_conn` unanswered per connection. Latency
/// counts from each request's scheduled send time. Bounded: the run ends `total / rate + 10`
/// seconds after it starts at the latest.
pub fn run_paced_gets(
    port: u16,
    paths: &[String],
    conns: usize,
    rate: u64,
    total: u64,
    step: Duration,
    in_flight_per_conn: usize,
) -> std::io::Result<PacedOutcome> {
    let blocks: Vec<Vec<u8>> = paths.iter().map(|p| encode_get(p)).collect();
    if blocks.is_empty() {
        return Ok(PacedOutcome::default());
    }
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut all = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..conns.max(1) {
        let (conn, sock) = Conn::connect(port)?;
        let (c, s) = (conn.clone(), stop.clone());
        readers.push(std::thread::spawn(move || read_loop(c, sock, t0, s)));
        all.push(conn);
    }
    // Let the SETTINGS exchange finish before the clock starts.
    std::thread::sleep(Duration::from_millis(50));
    let rate = rate.max(1);
    let start = Instant::now();
    let offset = start.duration_since(t0);
    let limit = Duration::from_secs(total.div_ceil(rate) + 10);
    let mut sent = 0u64;
    let mut not_sent = 0u64;
    let mut next = start;
    let mut turn = 0usize;
    while sent < total && start.elapsed() < limit {
        next += step;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        let mut guards: Vec<_> = all.iter().map(|c| c.writer.lock()).collect();
        while sent < due {
            let scheduled = offset + Duration::from_secs_f64(sent as f64 / rate as f64);
            let k = turn % all.len();
            turn += 1;
            let block = &blocks[(sent as usize).wrapping_mul(7919) % blocks.len()];
            if !all[k].queue(
                &mut guards[k],
                block,
                scheduled.as_nanos() as u64,
                in_flight_per_conn,
            ) {
                not_sent += 1;
            }
            sent += 1;
        }
        for w in guards.iter_mut() {
            if !w.pending.is_empty() {
                let Writer {
                    stream, pending, ..
                } = &mut **w;
                let _ = (&*stream).write_all(pending);
                pending.clear();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut outcome = PacedOutcome {
        not_sent,
        ..PacedOutcome::default()
    };
    for r in readers {
        if let Ok(o) = r.join() {
            outcome.latencies.extend(o.latencies);
            outcome.failures += o.failures;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_static_index_and_literals() {
        assert_eq!(response_status(&[0x88]), Ok(Some(200)));
        assert_eq!(response_status(&[0x20, 0x8d]), Ok(Some(404)));
        // ":status: 403" as a literal without indexing, name index 8, plain value.
        assert_eq!(
            response_status(&[0x08, 0x03, b'4', b'0', b'3']),
            Ok(Some(403))
        );
        assert_eq!(response_status(&[0xbe]), Err(HpackError::DynamicIndex(62)));
    }

    #[test]
    #[allow(clippy::identity_op)] // the zero-valued code of '0' is spelled out on purpose
    fn huffman_digit_strings_decode() {
        // "409": '4' 011010, '0' 00000, '9' 011111 -> 17 bits + 7 bits of 1s padding.
        let bits: u32 = (0b011010 << 18) | (0b00000 << 13) | (0b011111 << 7) | 0x7f;
        let s = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
        assert_eq!(huffman_digits(&s), Ok(409));
        // "200": 00010 00000 00000 + 1 bit padding.
        let bits: u16 = (0b00010 << 11) | 1;
        assert_eq!(huffman_digits(&bits.to_be_bytes()), Ok(200));
        assert!(huffman_digits(&[0x00]).is_err());
    }

    #[test]
    fn get_header_block_decodes_with_the_h2_crate_rules() {
        let b = encode_get("/api/v1/namespaces/load/pods/pod-1");
        assert_eq!(&b[..2], &[0x82, 0x86]);
        let mut at = 2;
        let name = read_int(&b, &mut at, 4).expect("name index");
        assert_eq!(name, 4);
        let (v, huffman) = read_string(&b, &mut at).expect("path");
        assert!(!huffman);
        assert_eq!(v, b"/api/v1/namespaces/load/pods/pod-1");
    }
}
