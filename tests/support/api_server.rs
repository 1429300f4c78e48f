//! Test harness: starts the real `kubeshard server` binary on free ports in a temp dir and
//! runs the real kubectl against it.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Polls `f` every `every` until it returns `Some`, at most `secs` seconds (then panics,
/// naming `what`).
pub fn wait_for_every<T>(
    what: &str,
    secs: u64,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

pub const KUBECTL_DIR: &str = "/usr/lib/google-cloud-sdk/bin";

/// A running `kubeshard server`, killed on drop.
pub struct TestServer {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    pub insecure_port: u16,
    _tmp: Option<tempfile::TempDir>,
}

/// The kubectl binary of minor version `minor` (27..=33).
pub fn kubectl_path(minor: u32) -> PathBuf {
    Path::new(KUBECTL_DIR).join(format!("kubectl.1.{minor}"))
}

impl TestServer {
    /// Starts a server in a fresh temp dir.
    pub fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `dir` (which may hold a previous run's data).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Self {
        Self::start_command_in("server", dir, extra)
    }

    /// Starts `kubeshard up` (the whole cluster) in a fresh temp dir.
    pub fn start_up(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_command_in("up", &dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts `kubeshard <command>` (`server` or `up`) on `dir`.
    pub fn start_command_in(command: &str, dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubeshard"))
            .args([command, "--data-dir"])
            .arg(dir)
            .args(["--port", "0", "--insecure-port", "0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kubeshard");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut port, mut insecure_port) = (0u16, 0u16);
        while port == 0 || insecure_port == 0 {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("server did not report its ports");
            if let Some(rest) = line.strip_prefix("kubeshard server listening on port ") {
                port = rest.split(';').next().unwrap().trim().parse().unwrap();
            }
            if let Some(rest) =
                line.strip_prefix("kubeshard is up: the API server listens on https://127.0.0.1:")
            {
                port = rest.trim().parse().unwrap();
            }
            if let Some(rest) =
                line.strip_prefix("plain HTTP (admin, development only) on http://127.0.0.1:")
            {
                insecure_port = rest.trim().parse().unwrap();
            }
        }
        Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            port,
            insecure_port,
            _tmp: None,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Runs kubectl 1.`minor` with this server's kubeconfig and a cache dir of its own.
    pub fn kubectl(&self, minor: u32, args: &[&str]) -> Output {
        self.kubectl_stdin(minor, args, None)
    }

    pub fn kubectl_stdin(&self, minor: u32, args: &[&str], stdin: Option<&str>) -> Output {
        let cache = self.dir.join(format!("kubectl-cache-{minor}"));
        let mut cmd = Command::new(kubectl_path(minor));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--request-timeout=30s")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, minor: u32, args: &[&str]) -> String {
        let out = self.kubectl(minor, args);
        assert!(
            out.status.success(),
            "kubectl 1.{minor} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with stdin that must succeed; returns stdout.
    pub fn ok_stdin(&self, minor: u32, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_stdin(minor, args, Some(stdin));
        assert!(
            out.status.success(),
            "kubectl 1.{minor} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; returns stderr.
    pub fn err(&self, minor: u32, args: &[&str]) -> String {
        let out = self.kubectl(minor, args);
        assert!(
            !out.status.success(),
            "kubectl 1.{minor} {args:?} unexpectedly succeeded"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// curl against this server: `args` then the URL path on the TLS port.
    pub fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        curl(args, &url)
    }

    /// Sends SIGTERM and waits; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = child.id() as i32;
        // SAFETY-free: plain syscall through the kill(1) binary keeps tests free of unsafe.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        for _ in 0..300 {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs curl with `-s -o - -w '\n%{http_code}'`; returns (status code, body).
pub fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A running `kubectl get -w` (or any long-running kubectl) whose stdout lines are collected;
/// killed on drop.
pub struct KubectlStream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl KubectlStream {
    /// Starts kubectl 1.`minor` with `args` against `s` (its own cache dir).
    pub fn start(s: &TestServer, minor: u32, args: &[&str]) -> Self {
        let mut child = Command::new(kubectl_path(minor))
            .arg("--kubeconfig")
            .arg(s.kubeconfig())
            .arg("--cache-dir")
            .arg(s.dir.join(format!("stream-cache-{minor}")))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kubectl");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next `n` lines containing `needle`, waiting at most `timeout` in all.
    pub fn lines_with(&self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        while seen.len() < n && std::time::Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200))
                && l.contains(needle)
            {
                seen.push(l);
            }
        }
        seen
    }
}

impl Drop for KubectlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
