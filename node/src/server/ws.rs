//! WebSocket (RFC 6455), server side: the upgrade answer and message framing, enough for the
//! Kubernetes channel protocols (`v4`/`v5.channel.k8s.io`) and SPDY tunnelled in binary
//! messages (`SPDY/3.1+portforward.k8s.io`).
//!
//! [`WsReader`] reassembles fragmented messages (bounded by [`MAX_MESSAGE`]), answers pings
//! through the shared writer, and ends on a close frame. [`WsWriter`] sends unmasked frames
//! (servers never mask).

use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Mutex;

/// Largest message accepted from a client.
pub const MAX_MESSAGE: usize = 16 << 20;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` answer to a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(GUID.as_bytes());
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// Frame opcodes.
const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A binary (or text) message.
    Data(Bytes),
    /// The client closed the connection.
    Close,
}

/// Encodes one unmasked frame.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// The writing half, shared by whoever sends (data, pongs, the close).
pub struct WsWriter<W> {
    inner: Arc<Mutex<W>>,
}

impl<W> Clone for WsWriter<W> {
    fn clone(&self) -> Self {
        WsWriter {
            inner: self.inner.clone(),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send> WsWriter<W> {
    /// Wraps the write half of an upgraded connection.
    pub fn new(w: W) -> Self {
        WsWriter {
            inner: Arc::new(Mutex::new(w)),
        }
    }

    async fn frame(&self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let f = encode_frame(opcode, payload);
        let mut w = self.inner.lock().await;
        w.write_all(&f).await?;
        w.flush().await
    }

    /// Sends a binary message.
    pub async fn binary(&self, payload: &[u8]) -> std::io::Result<()> {
        self.frame(OP_BINARY, payload).await
    }

    /// Sends a close frame (normal closure) and shuts the connection's write side down.
    pub async fn close(&self) -> std::io::Result<()> {
        let r = self.frame(OP_CLOSE, &1000u16.to_be_bytes()).await;
        let _ = self.inner.lock().await.shutdown().await;
        r
    }
}

/// The reading half.
pub struct WsReader<R, W> {
    r: R,
    writer: WsWriter<W>,
    closed: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin + Send> WsReader<R, W> {
    /// Wraps the read half; pings are answered through `writer`.
    pub fn new(r: R, writer: WsWriter<W>) -> Self {
        WsReader {
            r,
            writer,
            closed: false,
        }
    }

    async fn read_frame(&mut self) -> std::io::Result<(bool, u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.r.read_exact(&mut h).await?;
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            len = u64::from(self.r.read_u16().await?);
        } else if len == 127 {
            len = self.r.read_u64().await?;
        }
        if len > MAX_MESSAGE as u64 {
            return Err(std::io::Error::other("WebSocket frame too large"));
        }
        let mut mask = [0u8; 4];
        if masked {
            self.r.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        self.r.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        Ok((fin, opcode, payload))
    }

    /// The next message; [`Message::Close`] once the client closed (or the connection
    /// ended).
    pub async fn next(&mut self) -> std::io::Result<Message> {
        if self.closed {
            return Ok(Message::Close);
        }
        let mut msg = BytesMut::new();
        let mut in_message = false;
        loop {
            let (fin, opcode, payload) = match self.read_frame().await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.closed = true;
                    return Ok(Message::Close);
                }
                Err(e) => return Err(e),
            };
            match opcode {
                OP_PING => {
                    let _ = self.writer.frame(OP_PONG, &payload).await;
                }
                OP_PONG => {}
                OP_CLOSE => {
                    self.closed = true;
                    return Ok(Message::Close);
                }
                OP_TEXT | OP_BINARY | OP_CONT => {
                    if (opcode == OP_CONT) != in_message {
                        return Err(std::io::Error::other("bad WebSocket fragmentation"));
                    }
                    if msg.len() + payload.len() > MAX_MESSAGE {
                        return Err(std::io::Error::other("WebSocket message too large"));
                    }
                    msg.extend_from_slice(&payload);
                    if fin {
                        return Ok(Message::Data(msg.freeze()));
                    }
                    in_message = true;
                }
                _ => return Err(std::io::Error::other("unknown WebSocket opcode")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        assert!(payload.len() < 126);
        f.push(0x80 | payload.len() as u8);
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[tokio::test]
    async fn reads_fragmented_masked_messages_and_answers_pings() {
        let mut wire = Vec::new();
        wire.extend(masked(OP_BINARY, false, b"\x00hel"));
        wire.extend(masked(OP_PING, true, b"p"));
        wire.extend(masked(OP_CONT, true, b"lo"));
        wire.extend(masked(OP_CLOSE, true, b""));
        let (out_w, mut out_r) = tokio::io::duplex(1024);
        let writer = WsWriter::new(out_w);
        let mut r = WsReader::new(&wire[..], writer.clone());
        assert_eq!(
            r.next().await.unwrap(),
            Message::Data(Bytes::from_static(b"\x00hello"))
        );
        assert_eq!(r.next().await.unwrap(), Message::Close);
        drop(r);
        drop(writer);
        let mut pong = Vec::new();
        out_r.read_to_end(&mut pong).await.unwrap();
        assert_eq!(pong, encode_frame(OP_PONG, b"p"));
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(encode_frame(OP_BINARY, &[0; 5])[1], 5);
        let f = encode_frame(OP_BINARY, &[0; 300]);
        assert_eq!((f[1], f[2], f[3]), (126, 1, 44));
        let f = encode_frame(OP_BINARY, &vec![0; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_000 + 10);
    }
}
