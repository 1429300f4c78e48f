//! Shared by the `tests/store_*.rs` end-to-end tests: start the real `kubeshard store`
//! binary on a free loopback port with its own data dir, and run `etcdctl` against it.

#![allow(dead_code)] // each test crate uses a different part

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use store::conformance::etcd_process::free_port;

pub(crate) const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Whether etcdctl is installed; prints a loud skip message if not.
pub(crate) fn etcdctl_available() -> bool {
    let ok = Path::new(ETCDCTL).is_file();
    if !ok {
        eprintln!("\n*** SKIPPED: {ETCDCTL} is not installed (apt-get install etcd-client) ***\n");
    }
    ok
}

/// Runs `etcdctl --endpoints=URL ARGS` (API v3) with optional stdin; bounded by etcdctl's own
/// dial and command timeouts. Returns (exit code, stdout, stderr).
pub(crate) fn etcdctl(url: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("etcdctl output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `kubeshard store`; stopped with SIGTERM (then SIGKILL) on drop.
pub(crate) struct StoreProcess {
    child: Option<Child>,
    url: String,
    data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl StoreProcess {
    /// Starts a store on a fresh data dir.
    pub(crate) fn start() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("kubeshard-store-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut p = Self::start_in(&dir, None);
        p._tmp = Some(tmp);
        p
    }

    /// Starts a store on `dir` (kept by the caller), on `port` or a free one.
    pub(crate) fn start_in(dir: &Path, port: Option<u16>) -> Self {
        for _ in 0..3 {
            let port = port.unwrap_or_else(|| free_port().expect("free port"));
            let url = format!("http://127.0.0.1:{port}");
            let log =
                std::fs::File::create(dir.join(format!("store-{port}.log"))).expect("log file");
            let child = Command::new(env!("CARGO_BIN_EXE_kubeshard"))
                .args(["store", "--data-dir"])
                .arg(dir)
                .args(["--listen-client-urls", &url])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn kubeshard store");
            let mut p = Self {
                child: Some(child),
                url,
                data_dir: dir.to_path_buf(),
                _tmp: None,
            };
            if p.wait_ready(port) {
                return p;
            }
        }
        panic!("kubeshard store did not start in {}", dir.display());
    }

    fn wait_ready(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                eprintln!("kubeshard store exited early with {status}");
                self.child = None;
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Forgets the child (already reaped by the caller).
    pub(crate) fn forget(&mut self) {
        self.child = None;
    }

    /// Kills the process with SIGKILL (no chance to flush) and reaps it.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns whether it exited 0.
    pub(crate) fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}
