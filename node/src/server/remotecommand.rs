//! The remote command protocol of `exec` and `attach`, over either transport kubectl uses:
//!
//! - WebSocket `v5.channel.k8s.io` / `v4.channel.k8s.io`: binary messages whose first byte
//!   is the channel (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize; v5 adds 255 "close
//!   channel", e.g. `ff 00` at stdin's EOF);
//! - SPDY/3.1 with `X-Stream-Protocol-Version: v4.channel.k8s.io` (or v3/v2/v1): one stream
//!   per channel, named by its `streamtype` header (`error`, `stdin`, `stdout`, `stderr`,
//!   `resize`), each answered with a SYN_REPLY; stdin's EOF is its FIN.
//!
//! The end is a `metav1.Status` on the status channel (v4+; plain text before): `Success`,
//! or `Failure` with reason `NonZeroExitCode` and the code as an `ExitCode` cause (kubectl
//! exits with it), or the reason the command could not run.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::spdy::{self, Event, SpdyReader, SpdyWriter};
use super::ws::{Message, WsReader, WsWriter};
use crate::runtime::{AttachConn, ExecExit, ExecReader, ExecSession, RuntimeError};

/// How long the streams may take to deliver their last bytes after the process ended (a
/// background child may hold them open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long an attach whose client closed its stdin waits for more output before it ends.
const ATTACH_QUIET: Duration = Duration::from_millis(300);
/// How long a SPDY client may take to open the streams it announced.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

/// What the client asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOptions {
    /// It sends stdin.
    pub stdin: bool,
    /// It wants stdout.
    pub stdout: bool,
    /// It wants stderr.
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

/// From the client.
#[derive(Debug)]
pub(crate) enum In {
    Stdin(Bytes),
    StdinEof,
    Resize(u16, u16),
}

/// To the client.
#[derive(Debug)]
pub(crate) enum Out {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// How a remote command ended, as the status channel reports it.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Exited(ExecExit, String),
    Failed(String),
}

impl Outcome {
    /// The `metav1.Status` JSON (v4+).
    pub(crate) fn status_json(&self) -> Vec<u8> {
        let v = match self {
            Outcome::Exited(e, _) if e.exit_code == 0 => {
                json!({"metadata": {}, "status": "Success"})
            }
            Outcome::Exited(e, cmd) => json!({
                "metadata": {}, "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command {cmd}, exit code {}", e.exit_code),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": e.exit_code.to_string()}]}
            }),
            Outcome::Failed(msg) => json!({
                "metadata": {}, "status": "Failure", "message": msg,
                "reason": "InternalError", "code": 500,
                "details": {"causes": [{"message": msg}]}
            }),
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// The plain-text error of the pre-v4 protocols (empty on success).
    fn status_text(&self) -> Vec<u8> {
        match self {
            Outcome::Exited(e, _) if e.exit_code == 0 => Vec::new(),
            Outcome::Exited(e, _) => {
                format!("command terminated with exit code {}", e.exit_code).into_bytes()
            }
            Outcome::Failed(m) => m.clone().into_bytes(),
        }
    }
}

/// The process side of a session: an exec, or an attach to the container's output.
pub(crate) enum Target {
    Exec(Box<ExecSession>, String),
    /// Attach: the container's log records from now on, until it exits (a container whose
    /// shim has no attach socket).
    Attach(mpsc::Receiver<Out>),
    /// Attach through the shim: the container's output from now on, its stdin and terminal.
    Live(AttachConn),
}

async fn copy_out(r: Option<ExecReader>, out: mpsc::Sender<Out>, stderr: bool) {
    let Some(mut r) = r else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let b = Bytes::copy_from_slice(&buf[..n]);
                let m = if stderr {
                    Out::Stderr(b)
                } else {
                    Out::Stdout(b)
                };
                if out.send(m).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs the process side: stdin and resizes in, output out; returns how it ended once
/// the output is drained (the `out` senders are all dropped by then).
pub(crate) async fn pump(
    target: Target,
    mut inp: mpsc::Receiver<In>,
    out: mpsc::Sender<Out>,
) -> Outcome {
    match target {
        Target::Attach(mut rx) => {
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => if out.send(m).await.is_err() { break },
                        None => break,
                    },
                    i = inp.recv() => if i.is_none() {
                        // The client went away.
                        break;
                    },
                }
            }
            Outcome::Exited(
                ExecExit {
                    exit_code: 0,
                    signal: None,
                },
                String::new(),
            )
        }
        Target::Live(conn) => {
            use crate::attach::{
                FROM_STDERR, FROM_STDOUT, TO_RESIZE, TO_STDIN, TO_STDIN_EOF, read_frame,
                write_frame,
            };
            let (stdin_once, tty) = (conn.stdin_once, conn.tty);
            let (mut r, mut w) = conn.stream.into_split();
            // Output read in a task of its own (reading a frame is not cancel-safe); it ends
            // when the shim closes the connection after the container's exit.
            let (ftx, mut frx) = mpsc::channel::<Out>(16);
            let reader = tokio::spawn(async move {
                while let Ok(Some((kind, b))) = read_frame(&mut r).await {
                    let m = match kind {
                        FROM_STDOUT => Out::Stdout(b),
                        FROM_STDERR => Out::Stderr(b),
                        _ => continue,
                    };
                    if ftx.send(m).await.is_err() {
                        return;
                    }
                }
            });
            let mut inp_open = true;
            // When the client's stdin ended an attach: its output still flows until it has
            // been quiet for ATTACH_QUIET (the answer to the last input), at most
            // DRAIN_AFTER_EXIT.
            let mut ending: Option<tokio::time::Instant> = None;
            loop {
                let quiet = async {
                    match ending {
                        Some(_) => tokio::time::sleep(ATTACH_QUIET).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    m = frx.recv() => match m {
                        Some(m) => if out.send(m).await.is_err() { break },
                        None => break,
                    },
                    _ = quiet => break,
                    i = inp.recv(), if inp_open => {
                        let sent = match i {
                            Some(In::Stdin(b)) => write_frame(&mut w, TO_STDIN, &b).await,
                            // As containerd: with stdinOnce (and no terminal) the end of
                            // the client's stdin closes the container's, whose output then
                            // runs to its exit; otherwise it ends the attach.
                            Some(In::StdinEof) if stdin_once && !tty => {
                                write_frame(&mut w, TO_STDIN_EOF, &[]).await
                            }
                            Some(In::StdinEof) => {
                                ending = Some(tokio::time::Instant::now());
                                inp_open = false;
                                Ok(())
                            }
                            Some(In::Resize(c, rows)) => {
                                let mut p = [0u8; 4];
                                p[..2].copy_from_slice(&c.to_be_bytes());
                                p[2..].copy_from_slice(&rows.to_be_bytes());
                                write_frame(&mut w, TO_RESIZE, &p).await
                            }
                            // The client went away: detach (the container runs on).
                            None => break,
                        };
                        if sent.is_err() {
                            inp_open = false;
                        }
                    },
                }
                if ending.is_some_and(|t| t.elapsed() >= DRAIN_AFTER_EXIT) {
                    break;
                }
            }
            reader.abort();
            Outcome::Exited(
                ExecExit {
                    exit_code: 0,
                    signal: None,
                },
                String::new(),
            )
        }
        Target::Exec(mut s, cmd) => {
            let copies = tokio::spawn({
                let (o, e) = (s.stdout.take(), s.stderr.take());
                let (out1, out2) = (out.clone(), out.clone());
                async move {
                    tokio::join!(copy_out(o, out1, false), copy_out(e, out2, true));
                }
            });
            drop(out);
            let mut stdin = s.stdin.take();
            let resizer = s.resizer();
            let mut inp_open = true;
            let waited = loop {
                tokio::select! {
                    w = s.wait() => break w,
                    i = inp.recv(), if inp_open => match i {
                        Some(In::Stdin(b)) => {
                            if let Some(w) = &mut stdin
                                && (w.write_all(&b).await.is_err() || w.flush().await.is_err())
                            {
                                stdin = None;
                            }
                        }
                        Some(In::StdinEof) => {
                            if let Some(mut w) = stdin.take() {
                                let _ = w.shutdown().await;
                            }
                        }
                        Some(In::Resize(c, r)) => {
                            if let Some(z) = &resizer {
                                let _ = z.resize(c, r);
                            }
                        }
                        None => {
                            inp_open = false;
                            if let Some(mut w) = stdin.take() {
                                let _ = w.shutdown().await;
                            }
                        }
                    },
                }
            };
            let abort = copies.abort_handle();
            if tokio::time::timeout(DRAIN_AFTER_EXIT, copies)
                .await
                .is_err()
            {
                abort.abort();
            }
            match waited {
                Ok(e) => Outcome::Exited(e, cmd),
                Err(RuntimeError::StartFailed(m)) => {
                    Outcome::Failed(format!("failed to exec in container: {m}"))
                }
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
    }
}

fn parse_resize(b: &[u8]) -> Option<In> {
    let v: serde_json::Value = serde_json::from_slice(b).ok()?;
    let w = v.get("Width")?.as_u64()?;
    let h = v.get("Height")?.as_u64()?;
    Some(In::Resize(
        w.min(u16::MAX.into()) as u16,
        h.min(u16::MAX.into()) as u16,
    ))
}

/// Serves a remote command over an upgraded WebSocket connection (`v5` or `v4`: they
/// differ only in the close-channel message, which v4 clients never send). `start` yields
/// the process side or the error to report.
pub(crate) async fn serve_ws<IO>(io: IO, opts: StreamOptions, start: Result<Target, String>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let writer = WsWriter::new(w);
    let mut reader = WsReader::new(r, writer.clone());
    let target = match start {
        Ok(t) => t,
        Err(msg) => {
            let _ = writer
                .binary(&[&[3u8][..], &Outcome::Failed(msg).status_json()].concat())
                .await;
            let _ = writer.close().await;
            return;
        }
    };
    let (in_tx, in_rx) = mpsc::channel::<In>(16);
    let read_task = tokio::spawn(async move {
        loop {
            match reader.next().await {
                Ok(Message::Data(b)) if !b.is_empty() => {
                    let m = match b[0] {
                        0 => Some(In::Stdin(b.slice(1..))),
                        4 => parse_resize(&b[1..]),
                        255 if b.get(1) == Some(&0) => Some(In::StdinEof),
                        _ => None,
                    };
                    if let Some(m) = m
                        && in_tx.send(m).await.is_err()
                    {
                        return;
                    }
                }
                Ok(Message::Data(_)) => {}
                Ok(Message::Close) | Err(_) => return,
            }
        }
    });
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(16);
    let write_out = async {
        while let Some(o) = out_rx.recv().await {
            let (ch, b) = match o {
                Out::Stdout(b) if opts.stdout => (1u8, b),
                Out::Stderr(b) if opts.stderr => (2u8, b),
                _ => continue,
            };
            let mut m = Vec::with_capacity(b.len() + 1);
            m.push(ch);
            m.extend_from_slice(&b);
            if writer.binary(&m).await.is_err() {
                break;
            }
        }
    };
    let (outcome, ()) = tokio::join!(pump(target, in_rx, out_tx), write_out);
    let _ = writer
        .binary(&[&[3u8][..], &outcome.status_json()].concat())
        .await;
    let _ = writer.close().await;
    read_task.abort();
}

/// The SPDY remote command protocol versions this server speaks, best first.
pub const SPDY_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Serves a remote command over an upgraded SPDY/3.1 connection speaking `protocol`.
pub(crate) async fn serve_spdy<IO>(
    io: IO,
    protocol: &str,
    opts: StreamOptions,
    start: Result<Target, String>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let v4 = protocol == "v4.channel.k8s.io";
    let (r, w) = tokio::io::split(io);
    let Ok(writer) = SpdyWriter::new(w) else {
        return;
    };
    let mut reader = SpdyReader::new(r, writer.clone());
    // Collect the announced streams: error always, then the ones the options name.
    let mut want = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr && !opts.tty);
    if opts.tty && (v4 || protocol == "v3.channel.k8s.io") {
        want += 1; // resize
    }
    let (mut err_id, mut stdin_id, mut stdout_id, mut stderr_id, mut resize_id) =
        (None, None, None, None, None);
    let mut last_id = 0;
    let mut early: Vec<Event> = Vec::new();
    let collected = tokio::time::timeout(STREAMS_TIMEOUT, async {
        let mut seen = 0;
        while seen < want {
            match reader.next().await {
                Ok(Event::SynStream { id, headers, .. }) => {
                    last_id = id;
                    let _ = writer.syn_reply(id, &Vec::new(), false).await;
                    match spdy::header(&headers, "streamtype") {
                        Some("error") => err_id = Some(id),
                        Some("stdin") => stdin_id = Some(id),
                        Some("stdout") => stdout_id = Some(id),
                        Some("stderr") => stderr_id = Some(id),
                        Some("resize") => resize_id = Some(id),
                        _ => {
                            let _ = writer.reset(id).await;
                            continue;
                        }
                    }
                    seen += 1;
                }
                Ok(Event::Closed) | Err(_) => return false,
                Ok(ev) => early.push(ev),
            }
        }
        true
    })
    .await;
    if !matches!(collected, Ok(true)) {
        let _ = writer.goaway(last_id).await;
        return;
    }
    let finish = |outcome: Outcome| {
        let writer = writer.clone();
        async move {
            if let Some(id) = err_id {
                let body = if v4 {
                    outcome.status_json()
                } else {
                    outcome.status_text()
                };
                if !body.is_empty() {
                    let _ = writer.data(id, &body, false).await;
                }
                let _ = writer.fin(id).await;
            }
            for id in [stdout_id, stderr_id].into_iter().flatten() {
                let _ = writer.fin(id).await;
            }
            let _ = writer.goaway(last_id).await;
        }
    };
    let target = match start {
        Ok(t) => t,
        Err(msg) => {
            finish(Outcome::Failed(msg)).await;
            return;
        }
    };
    let (in_tx, in_rx) = mpsc::channel::<In>(16);
    let read_task = tokio::spawn(async move {
        let mut resize_buf = Vec::new();
        let handle = |ev: Event, resize_buf: &mut Vec<u8>| -> Vec<In> {
            match ev {
                Event::Data { id, data, fin } if Some(id) == stdin_id => {
                    let mut v = Vec::new();
                    if !data.is_empty() {
                        v.push(In::Stdin(data));
                    }
                    if fin {
                        v.push(In::StdinEof);
                    }
                    v
                }
                Event::Reset { id } if Some(id) == stdin_id => vec![In::StdinEof],
                Event::Data { id, data, .. } if Some(id) == resize_id => {
                    // A stream of JSON objects, not delimited.
                    resize_buf.extend_from_slice(&data);
                    let mut v = Vec::new();
                    let mut it = serde_json::Deserializer::from_slice(resize_buf)
                        .into_iter::<serde_json::Value>();
                    let mut used = 0;
                    while let Some(Ok(val)) = it.next() {
                        used = it.byte_offset();
                        if let Some(r) = parse_resize(val.to_string().as_bytes()) {
                            v.push(r);
                        }
                    }
                    resize_buf.drain(..used);
                    if resize_buf.len() > 64 * 1024 {
                        resize_buf.clear();
                    }
                    v
                }
                _ => Vec::new(),
            }
        };
        for ev in early {
            for m in handle(ev, &mut resize_buf) {
                if in_tx.send(m).await.is_err() {
                    return;
                }
            }
        }
        loop {
            match reader.next().await {
                Ok(Event::Closed) | Err(_) => return,
                // Streams opened after the handshake are not part of the protocol.
                Ok(Event::SynStream { .. }) => {}
                Ok(ev) => {
                    for m in handle(ev, &mut resize_buf) {
                        if in_tx.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(16);
    let write_out = async {
        while let Some(o) = out_rx.recv().await {
            let (id, b) = match o {
                Out::Stdout(b) => (stdout_id, b),
                Out::Stderr(b) => (stderr_id, b),
            };
            if let Some(id) = id
                && writer.data(id, &b, false).await.is_err()
            {
                break;
            }
        }
    };
    let (outcome, ()) = tokio::join!(pump(target, in_rx, out_tx), write_out);
    finish(outcome).await;
    read_task.abort();
}
