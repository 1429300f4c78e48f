//! A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`) started on loopback for tests and
//! benches: free ports, a temporary data dir, killed and reaped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs etcd; `KUBESHARD_ETCD_BIN` overrides it.
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";
/// How long a started etcd may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Starts attempted before giving up (a free port can be taken between probe and bind).
const START_ATTEMPTS: usize = 3;

/// The etcd binary, if installed.
pub fn etcd_binary() -> Option<PathBuf> {
    let p = std::env::var_os("KUBESHARD_ETCD_BIN")
        .map_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN), PathBuf::from);
    p.is_file().then_some(p)
}

/// A free loopback TCP port (released before returning, so it can race; callers retry).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running etcd; killed on drop.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Child,
    client_url: String,
    dir: tempfile::TempDir,
}

/// Why an etcd could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdStartError {
    /// `/usr/bin/etcd` is missing (install Debian's `etcd-server`). Not retryable.
    #[error("etcd binary not found at {DEFAULT_ETCD_BIN} (apt-get install etcd-server)")]
    NotInstalled,
    /// Spawning or preparing failed. Not retryable.
    #[error("starting etcd: {0}")]
    Io(#[from] std::io::Error),
    /// etcd did not answer in time or exited. Its log is included.
    #[error("etcd did not become ready: {0}")]
    NotReady(String),
}

impl EtcdProcess {
    /// Starts a single-member etcd on free loopback ports with a fresh data dir.
    /// `extra_args` are appended (e.g. `--quota-backend-bytes`).
    pub fn start(extra_args: &[&str]) -> Result<Self, EtcdStartError> {
        let bin = etcd_binary().ok_or(EtcdStartError::NotInstalled)?;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&bin, extra_args) {
                Ok(p) => return Ok(p),
                Err(EtcdStartError::NotReady(log)) => last = log,
                Err(e) => return Err(e),
            }
        }
        Err(EtcdStartError::NotReady(last))
    }

    fn try_start(bin: &Path, extra_args: &[&str]) -> Result<Self, EtcdStartError> {
        let dir = tempfile::Builder::new()
            .prefix("kubeshard-etcd-")
            .tempdir()?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let child = Command::new(bin)
            .arg("--name=t")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=t={peer_url}"))
            .arg("--log-level=error")
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut p = Self {
            child,
            client_url,
            dir,
        };
        p.wait_ready()?;
        Ok(p)
    }

    fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Waits until etcd accepts client connections and has a leader (a `/health`-like probe
    /// over plain HTTP: etcd serves `GET /health` on the client port).
    fn wait_ready(&mut self) -> Result<(), EtcdStartError> {
        use std::io::{Read, Write};
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = self.client_url.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(EtcdStartError::NotReady(format!(
                    "etcd exited with {status}: {}",
                    self.log()
                )));
            }
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req =
                    format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let mut body = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut body).is_ok()
                    && body.contains("\"health\":\"true\"")
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.log();
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(EtcdStartError::NotReady(format!("timed out: {log}")))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// The data directory etcd was started with.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The process id (for tests that signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
