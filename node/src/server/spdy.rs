//! SPDY/3.1 framing, server side, as kubectl's streams use it (client-go's `spdystream`):
//! SYN_STREAM/SYN_REPLY with zlib-compressed header blocks (one compression context per
//! direction per connection, primed with the protocol's dictionary), DATA with FIN,
//! RST_STREAM, PING (echoed), GOAWAY; SETTINGS and WINDOW_UPDATE are read and ignored, and a
//! WINDOW_UPDATE is sent for the data received so a peer that counts windows never stalls.
//!
//! The transport is any byte stream: the upgraded HTTP/1.1 connection (`Upgrade: SPDY/3.1`)
//! or a WebSocket carrying the SPDY bytes (`SPDY/3.1+portforward.k8s.io`).

use std::sync::Arc;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Mutex;

/// Largest frame accepted (the 24-bit length field allows 16 MiB).
pub const MAX_FRAME: usize = 1 << 24;
/// Largest decompressed header block accepted.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Largest DATA payload sent in one frame.
const MAX_DATA_CHUNK: usize = 32 * 1024;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
/// The FIN flag of SYN_STREAM, SYN_REPLY and DATA frames.
pub const FLAG_FIN: u8 = 1;

/// Length-prefixed words that open the SPDY/3 header dictionary (spec section 2.6.10.1).
const DICT_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The raw tail of the SPDY/3 header dictionary.
const DICT_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
);

/// The SPDY/3 zlib dictionary.
pub fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1424);
    for w in DICT_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICT_TAIL.as_bytes());
    d
}

/// Header pairs of a stream (names lower-case, as SPDY/3 requires).
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (case-insensitive).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn encode_header_block(h: &Headers) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(h.len() as u32).to_be_bytes());
    for (k, v) in h {
        let k = k.to_ascii_lowercase();
        b.extend_from_slice(&(k.len() as u32).to_be_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn parse_header_block(b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::Protocol("malformed header block".into());
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let s = b.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        Ok(s)
    };
    let u32_at = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let count = u32_at(take(4)?);
    if count > 1024 {
        return Err(SpdyError::Protocol("too many headers".into()));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let kl = u32_at(take(4)?);
        let k = String::from_utf8_lossy(take(kl)?).to_ascii_lowercase();
        let vl = u32_at(take(4)?);
        let v = String::from_utf8_lossy(take(vl)?).into_owned();
        // Several values of one name are NUL-separated.
        for v in v.split('\0') {
            out.push((k.clone(), v.to_string()));
        }
    }
    Ok(out)
}

/// SPDY failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpdyError {
    /// The connection failed.
    #[error("SPDY I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol.
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
}

/// Something the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new stream with its headers.
    SynStream {
        /// Stream id (odd: client-initiated).
        id: u32,
        /// Its headers.
        headers: Headers,
        /// The client will send no data on it.
        fin: bool,
    },
    /// Data on a stream.
    Data {
        /// Stream id.
        id: u32,
        /// The bytes.
        data: Bytes,
        /// The client's last data on this stream.
        fin: bool,
    },
    /// The client reset a stream.
    Reset {
        /// Stream id.
        id: u32,
    },
    /// The client is going away, or the connection ended.
    Closed,
}

/// The writing half: frames out, with the outgoing header compression context.
#[derive(Clone)]
pub struct SpdyWriter {
    inner: Arc<Mutex<WriterInner>>,
}

struct WriterInner {
    w: Box<dyn AsyncWrite + Send + Unpin>,
    z: Compress,
}

fn control_frame(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    let len = body.len() as u32;
    f.push(flags);
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

fn data_frame(id: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

impl SpdyWriter {
    /// Wraps the write half of the transport.
    pub fn new(w: impl AsyncWrite + Send + Unpin + 'static) -> Result<Self, SpdyError> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&dictionary())
            .map_err(|e| SpdyError::Protocol(format!("zlib dictionary: {e}")))?;
        Ok(SpdyWriter {
            inner: Arc::new(Mutex::new(WriterInner { w: Box::new(w), z })),
        })
    }

    async fn write(&self, frame: &[u8]) -> Result<(), SpdyError> {
        let mut g = self.inner.lock().await;
        g.w.write_all(frame).await?;
        g.w.flush().await?;
        Ok(())
    }

    /// Answers a SYN_STREAM.
    pub async fn syn_reply(&self, id: u32, headers: &Headers, fin: bool) -> Result<(), SpdyError> {
        let block = encode_header_block(headers);
        let mut g = self.inner.lock().await;
        let mut out = Vec::with_capacity(block.len() + 64);
        let before = g.z.total_in();
        loop {
            let consumed = (g.z.total_in() - before) as usize;
            out.reserve(256);
            g.z.compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Protocol(format!("zlib: {e}")))?;
            if (g.z.total_in() - before) as usize == block.len() && out.len() < out.capacity() {
                break;
            }
        }
        let mut body = Vec::with_capacity(4 + out.len());
        body.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        body.extend_from_slice(&out);
        let f = control_frame(SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &body);
        g.w.write_all(&f).await?;
        g.w.flush().await?;
        Ok(())
    }

    /// Sends data on a stream (split into frames of at most 32 KiB).
    pub async fn data(&self, id: u32, data: &[u8], fin: bool) -> Result<(), SpdyError> {
        if data.is_empty() {
            return self
                .write(&data_frame(id, if fin { FLAG_FIN } else { 0 }, &[]))
                .await;
        }
        let chunks: Vec<&[u8]> = data.chunks(MAX_DATA_CHUNK).collect();
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            let flags = if fin && i == last { FLAG_FIN } else { 0 };
            self.write(&data_frame(id, flags, c)).await?;
        }
        Ok(())
    }

    /// Half-closes a stream from this side.
    pub async fn fin(&self, id: u32) -> Result<(), SpdyError> {
        self.write(&data_frame(id, FLAG_FIN, &[])).await
    }

    /// Resets a stream (status 5: CANCEL).
    pub async fn reset(&self, id: u32) -> Result<(), SpdyError> {
        let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
        body.extend_from_slice(&5u32.to_be_bytes());
        self.write(&control_frame(RST_STREAM, 0, &body)).await
    }

    async fn window_update(&self, id: u32, delta: u32) -> Result<(), SpdyError> {
        let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
        body.extend_from_slice(&delta.to_be_bytes());
        self.write(&control_frame(WINDOW_UPDATE, 0, &body)).await
    }

    /// Says goodbye (GOAWAY, status OK) and shuts the write side down.
    pub async fn goaway(&self, last_id: u32) -> Result<(), SpdyError> {
        let mut body = (last_id & 0x7fff_ffff).to_be_bytes().to_vec();
        body.extend_from_slice(&0u32.to_be_bytes());
        let r = self.write(&control_frame(GOAWAY, 0, &body)).await;
        let _ = self.inner.lock().await.w.shutdown().await;
        r
    }
}

/// The reading half: frames in, with the incoming header decompression context.
pub struct SpdyReader {
    r: Box<dyn AsyncRead + Send + Unpin>,
    z: Decompress,
    dict: Vec<u8>,
    writer: SpdyWriter,
}

impl SpdyReader {
    /// Wraps the read half; pings and window updates go out through `writer`.
    pub fn new(r: impl AsyncRead + Send + Unpin + 'static, writer: SpdyWriter) -> Self {
        SpdyReader {
            r: Box::new(r),
            z: Decompress::new(true),
            dict: dictionary(),
            writer,
        }
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let before = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - before) as usize;
            if out.len() == out.capacity() {
                out.reserve(1024);
            }
            match self
                .z
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&self.dict)
                        .map_err(|e| SpdyError::Protocol(format!("zlib dictionary: {e}")))?;
                }
                Err(e) => return Err(SpdyError::Protocol(format!("header block: {e}"))),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Protocol("header block too large".into()));
            }
            let consumed = (self.z.total_in() - before) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(out)
    }

    /// The next event; [`Event::Closed`] at the end of the connection.
    pub async fn next(&mut self) -> Result<Event, SpdyError> {
        loop {
            let mut h = [0u8; 8];
            match self.r.read_exact(&mut h).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(Event::Closed);
                }
                Err(e) => return Err(e.into()),
            }
            let flags = h[4];
            let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
            if len > MAX_FRAME {
                return Err(SpdyError::Protocol("frame too large".into()));
            }
            let mut body = vec![0u8; len];
            self.r.read_exact(&mut body).await?;
            let u32_at = |b: &[u8], i: usize| -> Result<u32, SpdyError> {
                b.get(i..i + 4)
                    .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
                    .ok_or_else(|| SpdyError::Protocol("short frame".into()))
            };
            if h[0] & 0x80 == 0 {
                let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & 0x7fff_ffff;
                if !body.is_empty() {
                    let n = body.len() as u32;
                    self.writer.window_update(id, n).await?;
                    self.writer.window_update(0, n).await?;
                }
                return Ok(Event::Data {
                    id,
                    data: Bytes::from(body),
                    fin: flags & FLAG_FIN != 0,
                });
            }
            let version = u16::from_be_bytes([h[0], h[1]]) & 0x7fff;
            if version != VERSION {
                return Err(SpdyError::Protocol(format!(
                    "unsupported version {version}"
                )));
            }
            let kind = u16::from_be_bytes([h[2], h[3]]);
            match kind {
                SYN_STREAM => {
                    let id = u32_at(&body, 0)? & 0x7fff_ffff;
                    let block = body
                        .get(10..)
                        .ok_or_else(|| SpdyError::Protocol("short SYN_STREAM".into()))?;
                    let raw = self.inflate(block)?;
                    let headers = parse_header_block(&raw)?;
                    return Ok(Event::SynStream {
                        id,
                        headers,
                        fin: flags & FLAG_FIN != 0,
                    });
                }
                SYN_REPLY | HEADERS => {
                    // Keep the decompression context in step; the content is not used.
                    if let Some(block) = body.get(4..) {
                        self.inflate(block)?;
                    }
                }
                RST_STREAM => {
                    return Ok(Event::Reset {
                        id: u32_at(&body, 0)? & 0x7fff_ffff,
                    });
                }
                PING => {
                    self.writer.write(&control_frame(PING, 0, &body)).await?;
                }
                GOAWAY => return Ok(Event::Closed),
                _ => {} // SETTINGS, WINDOW_UPDATE, NOOP, CREDENTIAL: nothing to do.
            }
        }
    }
}

/// Client-side helpers (tests): a SYN_STREAM with its compressed header block.
pub fn client_syn_stream(z: &mut Compress, id: u32, headers: &Headers, fin: bool) -> Vec<u8> {
    let block = encode_header_block(headers);
    let mut out = Vec::with_capacity(block.len() + 1024);
    let _ = z.compress_vec(&block, &mut out, FlushCompress::Sync);
    let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
    body.extend_from_slice(&0u32.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&out);
    control_frame(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &body)
}

/// Client-side helper (tests): a DATA frame.
pub fn client_data(id: u32, data: &[u8], fin: bool) -> Vec<u8> {
    data_frame(id, if fin { FLAG_FIN } else { 0 }, data)
}

/// Client-side helper (tests): a header compressor primed with the dictionary.
pub fn client_compressor() -> Compress {
    let mut z = Compress::new(Compression::default(), true);
    let _ = z.set_dictionary(&dictionary());
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_has_the_spec_length_and_checksum() {
        let d = dictionary();
        // The SPDY/3 dictionary is 1423 bytes; zlib identifies it by this Adler-32.
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[tokio::test]
    async fn syn_stream_data_and_reply_round_trip() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (sr, sw) = tokio::io::split(server);
        let writer = SpdyWriter::new(sw).unwrap();
        let mut reader = SpdyReader::new(sr, writer.clone());
        let (mut cr, mut cw) = tokio::io::split(client);
        let mut z = client_compressor();
        let h1: Headers = vec![
            ("streamtype".into(), "error".into()),
            ("port".into(), "80".into()),
        ];
        let h2: Headers = vec![("streamtype".into(), "data".into())];
        cw.write_all(&client_syn_stream(&mut z, 1, &h1, false))
            .await
            .unwrap();
        cw.write_all(&client_syn_stream(&mut z, 3, &h2, false))
            .await
            .unwrap();
        cw.write_all(&client_data(3, b"hello", true)).await.unwrap();
        assert_eq!(
            reader.next().await.unwrap(),
            Event::SynStream {
                id: 1,
                headers: h1,
                fin: false
            }
        );
        assert_eq!(
            reader.next().await.unwrap(),
            Event::SynStream {
                id: 3,
                headers: h2,
                fin: false
            }
        );
        assert_eq!(
            reader.next().await.unwrap(),
            Event::Data {
                id: 3,
                data: Bytes::from_static(b"hello"),
                fin: true
            }
        );
        writer.syn_reply(1, &Vec::new(), false).await.unwrap();
        writer.data(1, b"x", true).await.unwrap();
        // The client sees two WINDOW_UPDATEs (stream and connection), the SYN_REPLY, DATA.
        let mut buf = vec![0u8; 16 + 16];
        cr.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[..4], &[0x80, 3, 0, 9]);
        let mut hdr = [0u8; 8];
        cr.read_exact(&mut hdr).await.unwrap();
        assert_eq!(&hdr[..4], &[0x80, 3, 0, 2]);
        let len = u32::from_be_bytes([0, hdr[5], hdr[6], hdr[7]]) as usize;
        let mut body = vec![0u8; len];
        cr.read_exact(&mut body).await.unwrap();
        let mut dz = Decompress::new(true);
        let mut out = Vec::with_capacity(256);
        let e = dz
            .decompress_vec(&body[4..], &mut out, FlushDecompress::Sync)
            .unwrap_err();
        assert!(e.needs_dictionary().is_some());
        dz.set_dictionary(&dictionary()).unwrap();
        let consumed = dz.total_in() as usize;
        dz.decompress_vec(&body[4 + consumed..], &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, vec![0, 0, 0, 0]);
        let mut data = [0u8; 9];
        cr.read_exact(&mut data).await.unwrap();
        assert_eq!(data, [0, 0, 0, 1, FLAG_FIN, 0, 0, 1, b'x']);
    }
}
