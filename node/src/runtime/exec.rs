//! Running more processes in a running container: [`Runtime::exec`] (interactive, for
//! `kubectl exec`) and [`Runtime::exec_sync`] (bounded output, for exec probes).
//!
//! The process is started by the shim in its `exec` mode (see [`crate::shim`]): this process
//! is multithreaded, so it never forks itself; it spawns the shim with the session's stdio
//! (pipes, or the slave of a pty it keeps the master of) and waits for it. The shim records
//! how the process ended in `<container>/exec/<id>/result.json`.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};

use super::{Runtime, RuntimeError, new_id, read_json, write_json};
use crate::shim::{ExecResult, ExecSpec};

/// Most bytes of stdout (and of stderr) [`Runtime::exec_sync`] keeps; the rest is read and
/// dropped.
pub const EXEC_SYNC_MAX_OUTPUT: usize = 1 << 20;

/// What to run in a container.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// The command and its arguments (looked up in the container's PATH).
    pub argv: Vec<String>,
    /// Run it on a terminal (stdout and stderr are then one stream, `stdout`).
    pub tty: bool,
    /// Give it a stdin (else /dev/null).
    pub stdin: bool,
}

/// The output of [`Runtime::exec_sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (128 + signal when killed by one).
    pub exit_code: i32,
    /// Standard output, at most [`EXEC_SYNC_MAX_OUTPUT`] bytes.
    pub stdout: Vec<u8>,
    /// Standard error, at most [`EXEC_SYNC_MAX_OUTPUT`] bytes.
    pub stderr: Vec<u8>,
}

/// How an exec'd process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecExit {
    /// Exit code (128 + signal when killed by one).
    pub exit_code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

/// A boxed async reader of an exec'd process' output.
pub type ExecReader = Pin<Box<dyn AsyncRead + Send>>;
/// A boxed async writer to an exec'd process' input.
pub type ExecWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// A running exec: its stdio, terminal size control, and exit status.
pub struct ExecSession {
    /// Its stdin (when asked for); drop it (or shut it down) to send EOF.
    pub stdin: Option<ExecWriter>,
    /// Its stdout (with a tty: the terminal's output, stdout and stderr together).
    pub stdout: Option<ExecReader>,
    /// Its stderr (none with a tty).
    pub stderr: Option<ExecReader>,
    tty: Option<OwnedFd>,
    shim: tokio::process::Child,
    dir: PathBuf,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("dir", &self.dir)
            .field("tty", &self.tty.is_some())
            .finish()
    }
}

impl ExecSession {
    /// Sets the terminal size (no-op without a tty).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), RuntimeError> {
        if let Some(t) = &self.tty {
            crate::sys::set_winsize(t, cols, rows)?;
        }
        Ok(())
    }

    /// A handle that resizes the terminal while [`ExecSession::wait`] runs (none without a
    /// tty).
    pub fn resizer(&self) -> Option<TtyResizer> {
        self.tty
            .as_ref()
            .and_then(|t| t.try_clone().ok())
            .map(TtyResizer)
    }

    /// Kills the process (through its shim; the process dies with it).
    pub fn kill(&mut self) {
        let _ = self.shim.start_kill();
    }

    /// Waits until the process has ended. A process that could not be started at all (e.g.
    /// its binary is missing) gives [`RuntimeError::StartFailed`] with the reason.
    pub async fn wait(&mut self) -> Result<ExecExit, RuntimeError> {
        let status = self.shim.wait().await?;
        let result: Option<ExecResult> = read_json(&self.dir.join("result.json"))?;
        let _ = fs::remove_dir_all(&self.dir);
        match result {
            Some(ExecResult {
                start_error: Some(e),
                ..
            }) => Err(RuntimeError::StartFailed(e)),
            Some(r) => Ok(ExecExit {
                exit_code: r.exit_code,
                signal: r.signal,
            }),
            None => Err(RuntimeError::StartFailed(format!(
                "the exec shim ended ({status}) without a result"
            ))),
        }
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        // The shim is killed on drop (kill_on_drop); its directory goes too.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Resizes an exec's terminal (see [`ExecSession::resizer`]).
#[derive(Debug)]
pub struct TtyResizer(OwnedFd);

impl TtyResizer {
    /// Sets the terminal size; the process group in the foreground gets SIGWINCH.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), RuntimeError> {
        crate::sys::set_winsize(&self.0, cols, rows)?;
        Ok(())
    }
}

fn cloexec(fd: &impl AsFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(())
}

impl Runtime {
    /// Starts `req.argv` in the running container `container_id`: in its namespaces and
    /// cgroup, with its environment, user, capabilities, `no_new_privs` and working
    /// directory; on a pty when `req.tty`.
    pub async fn exec(
        &self,
        container_id: &str,
        req: ExecRequest,
    ) -> Result<ExecSession, RuntimeError> {
        if req.argv.is_empty() {
            return Err(RuntimeError::InvalidConfig("no command given".into()));
        }
        let (cdir, _spec, state, exit) = self.container_files(container_id)?;
        if state.is_none() || exit.is_some() {
            return Err(RuntimeError::InvalidState(format!(
                "container {container_id} is not running"
            )));
        }
        let dir = cdir.join("exec").join(new_id());
        fs::create_dir_all(&dir)?;
        write_json(
            &dir.join("exec.json"),
            &ExecSpec {
                argv: req.argv.clone(),
                tty: req.tty,
            },
        )?;
        let mut cmd = tokio::process::Command::new(&self.cfg.shim_program);
        cmd.arg(crate::shim::SHIM_ARG)
            .arg("exec")
            .arg(&cdir)
            .arg(&dir)
            .kill_on_drop(true);
        let mut master = None;
        if req.tty {
            let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
            cloexec(&pty.master)?;
            cloexec(&pty.slave)?;
            let slave = pty.slave;
            cmd.stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            master = Some(pty.master);
        } else {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
        let mut shim = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        // The Command (holding the parent's copies of the slave) is dropped here.
        drop(cmd);
        let mut session = ExecSession {
            stdin: shim.stdin.take().map(|s| Box::pin(s) as ExecWriter),
            stdout: shim.stdout.take().map(|s| Box::pin(s) as ExecReader),
            stderr: shim.stderr.take().map(|s| Box::pin(s) as ExecReader),
            tty: None,
            shim,
            dir,
        };
        if let Some(m) = master {
            let r = tokio::fs::File::from_std(fs::File::from(m.try_clone()?));
            session.stdout = Some(Box::pin(PtyReader(r)));
            if req.stdin {
                let w = tokio::fs::File::from_std(fs::File::from(m.try_clone()?));
                session.stdin = Some(Box::pin(w));
            }
            session.tty = Some(m);
        }
        Ok(session)
    }

    /// Runs `argv` in the container and collects its output (each stream bounded by
    /// [`EXEC_SYNC_MAX_OUTPUT`]), killing it after `timeout` ([`RuntimeError::Timeout`]).
    pub async fn exec_sync(
        &self,
        container_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut s = self
            .exec(
                container_id,
                ExecRequest {
                    argv: argv.to_vec(),
                    tty: false,
                    stdin: false,
                },
            )
            .await?;
        let out = s.stdout.take();
        let err = s.stderr.take();
        let run = async {
            let (o, e) = tokio::join!(read_bounded(out), read_bounded(err));
            let exit = s.wait().await?;
            Ok::<_, RuntimeError>((o?, e?, exit))
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => {
                let (stdout, stderr, exit) = r?;
                Ok(ExecOutput {
                    exit_code: exit.exit_code,
                    stdout,
                    stderr,
                })
            }
            Err(_) => {
                s.kill();
                Err(RuntimeError::Timeout(format!(
                    "command {argv:?} timed out after {timeout:?}"
                )))
            }
        }
    }
}

/// Reads a stream to its end, keeping at most [`EXEC_SYNC_MAX_OUTPUT`] bytes.
async fn read_bounded(r: Option<ExecReader>) -> io::Result<Vec<u8>> {
    let Some(mut r) = r else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        let room = EXEC_SYNC_MAX_OUTPUT.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// A pty master read as a stream: `EIO` (every slave closed) is the end of the stream.
struct PtyReader(tokio::fs::File);

impl AsyncRead for PtyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Most bytes of output an exec probe keeps (upstream's limit).
const PROBE_OUTPUT_MAX: usize = 10 * 1024;

/// Exec probes over [`Runtime::exec_sync`]: the exit code and stdout then stderr (at most
/// 10 KiB). A probe past its timeout is killed and reported as exit code 124 with
/// upstream's `command ... timed out` message (a failure, as upstream counts it); a command
/// that cannot start at all is an error (an `Unknown` result).
#[async_trait::async_trait]
impl crate::probe::ExecProber for Runtime {
    async fn exec(
        &self,
        container_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>), String> {
        match self.exec_sync(container_id, argv, timeout).await {
            Ok(out) => {
                let mut b = out.stdout;
                b.extend_from_slice(&out.stderr);
                b.truncate(PROBE_OUTPUT_MAX);
                Ok((out.exit_code, b))
            }
            Err(RuntimeError::Timeout(_)) => Ok((
                124,
                format!("command {:?} timed out", argv.join(" ")).into_bytes(),
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A connection to a running container's own stdio through its shim (see
/// [`crate::attach`] for the frames): output from now on, and its stdin and terminal size
/// when the container has them.
#[derive(Debug)]
pub struct AttachConn {
    /// The connection to the shim.
    pub stream: tokio::net::UnixStream,
    /// The container runs on a terminal (its output is all `stdout`).
    pub tty: bool,
    /// The container has a stdin.
    pub stdin: bool,
    /// Its stdin closes when the first stdin client ends (`stdinOnce`).
    pub stdin_once: bool,
}

impl Runtime {
    /// Attaches to the running container `container_id`; `with_stdin` declares this client
    /// a stdin client (with `stdinOnce`, its end closes the container's stdin). `None` when
    /// the container's shim offers no attach socket (one started by an older kubeshard).
    pub async fn attach(
        &self,
        container_id: &str,
        with_stdin: bool,
    ) -> Result<Option<AttachConn>, RuntimeError> {
        let (cdir, spec, state, exit) = self.container_files(container_id)?;
        if state.is_none() || exit.is_some() {
            return Err(RuntimeError::InvalidState(format!(
                "container {container_id} is not running"
            )));
        }
        if !cdir.join(crate::attach::SOCKET).exists() {
            return Ok(None);
        }
        // Connecting to a listening Unix socket does not block on the peer.
        let std_stream =
            crate::attach::with_socket_path(&cdir, |p| std::os::unix::net::UnixStream::connect(p))?;
        std_stream.set_nonblocking(true)?;
        let mut stream = tokio::net::UnixStream::from_std(std_stream)?;
        if with_stdin && spec.stdin {
            crate::attach::write_frame(&mut stream, crate::attach::TO_HELLO_STDIN, &[]).await?;
        }
        Ok(Some(AttachConn {
            stream,
            tty: spec.tty,
            stdin: spec.stdin,
            stdin_once: spec.stdin_once,
        }))
    }
}
