//! Port forwarding into a pod (`portforward.k8s.io` over SPDY/3.1, raw or tunnelled in
//! WebSocket binary messages): per forwarded connection the client opens an `error` and a
//! `data` stream carrying the same `port` and `requestid` headers; once both are there the
//! kubelet connects to `127.0.0.1:<port>` inside the pod's network namespace and copies
//! bytes both ways. A failed connect is reported as text on the error stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::spdy::{self, Event, SpdyReader, SpdyWriter};

/// How long a connect inside the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most forwarded connections open at once on one client connection.
const MAX_PAIRS: usize = 1024;

/// Connects to `127.0.0.1:port` inside the network namespace `netns` (a
/// `/proc/<pid>/ns/net` path) from a short-lived thread that joins it.
pub async fn connect_in_netns(netns: PathBuf, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kubeshard-portfwd".into())
        .spawn(move || {
            let r = (|| {
                let f = std::fs::File::open(&netns)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                let s = std::net::TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    CONNECT_TIMEOUT,
                )?;
                s.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(s)
            })();
            let _ = tx.send(r);
        })?;
    let s = rx
        .await
        .map_err(|_| std::io::Error::other("connect thread ended"))??;
    tokio::net::TcpStream::from_std(s)
}

#[derive(Default)]
struct Pair {
    port: u16,
    error_id: Option<u32>,
    data_id: Option<u32>,
    started: bool,
}

/// Serves port forwarding over a SPDY connection for the pod whose network namespace is
/// `netns`.
pub(crate) async fn serve_spdy<IO>(io: IO, netns: PathBuf, pod: String)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let Ok(writer) = SpdyWriter::new(w) else {
        return;
    };
    let mut reader = SpdyReader::new(r, writer.clone());
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Client data for a forwarded connection, by data stream id (None: the client's FIN).
    let mut to_socket: HashMap<u32, mpsc::Sender<Option<Bytes>>> = HashMap::new();
    let mut last_id = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let ev = match reader.next().await {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!("port-forward: {e}");
                break;
            }
        };
        while tasks.try_join_next().is_some() {}
        match ev {
            Event::Closed => break,
            Event::SynStream { id, headers, .. } => {
                last_id = id;
                let _ = writer.syn_reply(id, &Vec::new(), false).await;
                let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                let rid = spdy::header(&headers, "requestid")
                    .unwrap_or("")
                    .to_string();
                let kind = spdy::header(&headers, "streamtype")
                    .unwrap_or("")
                    .to_string();
                let Some(port) = port.filter(|p| *p > 0) else {
                    let _ = writer.reset(id).await;
                    continue;
                };
                if pairs.len() >= MAX_PAIRS && !pairs.contains_key(&rid) {
                    let _ = writer.reset(id).await;
                    continue;
                }
                let p = pairs.entry(rid.clone()).or_default();
                p.port = port;
                match kind.as_str() {
                    "error" => p.error_id = Some(id),
                    "data" => p.data_id = Some(id),
                    _ => {
                        let _ = writer.reset(id).await;
                        continue;
                    }
                }
                if let (Some(err_id), Some(data_id), false) = (p.error_id, p.data_id, p.started) {
                    p.started = true;
                    let (tx, rx) = mpsc::channel(16);
                    to_socket.insert(data_id, tx);
                    tasks.spawn(forward(
                        writer.clone(),
                        netns.clone(),
                        pod.clone(),
                        port,
                        err_id,
                        data_id,
                        rx,
                    ));
                    pairs.remove(&rid);
                }
            }
            Event::Data { id, data, fin } => {
                if let Some(tx) = to_socket.get(&id) {
                    if !data.is_empty() {
                        let _ = tx.send(Some(data)).await;
                    }
                    if fin {
                        let _ = tx.send(None).await;
                        to_socket.remove(&id);
                    }
                }
            }
            Event::Reset { id } => {
                if let Some(tx) = to_socket.remove(&id) {
                    let _ = tx.send(None).await;
                }
            }
        }
    }
    drop(to_socket);
    tasks.abort_all();
    let _ = writer.goaway(last_id).await;
}

async fn forward(
    writer: SpdyWriter,
    netns: PathBuf,
    pod: String,
    port: u16,
    err_id: u32,
    data_id: u32,
    mut from_client: mpsc::Receiver<Option<Bytes>>,
) {
    let sock = match connect_in_netns(netns, port).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {pod}: failed to connect to localhost:{port} inside the pod's network namespace: {e}"
            );
            let _ = writer.data(err_id, msg.as_bytes(), true).await;
            let _ = writer.fin(data_id).await;
            return;
        }
    };
    let (mut rd, mut wr) = sock.into_split();
    let up = tokio::spawn(async move {
        while let Some(m) = from_client.recv().await {
            match m {
                Some(b) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                None => break,
            }
        }
        let _ = wr.shutdown().await;
    });
    let w2 = writer.clone();
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w2.data(data_id, &buf[..n], false).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = w2.fin(data_id).await;
    };
    // The pod side ending ends the forwarded connection: the client's side gets a moment
    // to finish, then goes too.
    down.await;
    let abort = up.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), up)
        .await
        .is_err()
    {
        abort.abort();
    }
    let _ = writer.fin(err_id).await;
}

/// Serves the older WebSocket port-forward protocol (`v4.channel.k8s.io` with `?ports=`, as
/// the Python client uses): port `i` has data channel `2i` and error channel `2i+1`; the
/// server's first message on each carries the port (2 bytes, little-endian). One
/// connection per port, opened at once.
pub(crate) async fn serve_ws_channels<IO>(io: IO, netns: PathBuf, pod: String, ports: Vec<u16>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    use super::ws::{Message, WsReader, WsWriter};
    let (r, w) = tokio::io::split(io);
    let writer = WsWriter::new(w);
    let mut reader = WsReader::new(r, writer.clone());
    let mut to_socket: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    // The pod-to-client copies: when every one has ended, so has the session (as upstream).
    let mut downs = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let pb = port.to_le_bytes();
        let _ = writer.binary(&[data_ch, pb[0], pb[1]]).await;
        let _ = writer.binary(&[err_ch, pb[0], pb[1]]).await;
        let sock = match connect_in_netns(netns.clone(), port).await {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                let _ = writer
                    .binary(&[&[err_ch][..], msg.as_bytes()].concat())
                    .await;
                to_socket.push(None);
                continue;
            }
        };
        let (mut rd, mut wr) = sock.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        to_socket.push(Some(tx));
        tasks.spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let w2 = writer.clone();
        downs.spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut m = Vec::with_capacity(n + 1);
                        m.push(data_ch);
                        m.extend_from_slice(&buf[..n]);
                        if w2.binary(&m).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    let inbound = async move {
        while let Ok(Message::Data(b)) = reader.next().await {
            let Some((&ch, data)) = b.split_first() else {
                continue;
            };
            if ch % 2 == 0
                && let Some(Some(tx)) = to_socket.get(usize::from(ch / 2))
                && !data.is_empty()
                && tx.send(Bytes::copy_from_slice(data)).await.is_err()
            {
                break;
            }
        }
    };
    let all_down = async { while downs.join_next().await.is_some() {} };
    tokio::select! {
        _ = inbound => {}
        _ = all_down => {}
    }
    tasks.abort_all();
    downs.abort_all();
    let _ = writer.close().await;
}
