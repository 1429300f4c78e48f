//! The `kubeshard` binary as a child process of a bench: where to find it, how to start
//! `kubeshard server` and wait for it, and how much memory a process holds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The error type of the bench binaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A child process, killed and reaped on drop so no bench leaves a server behind.
pub struct Proc(pub Child);

impl Proc {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release `kubeshard` binary: `KUBESHARD_BIN` if set, else `target/release/kubeshard`,
/// built first when it is missing.
pub fn kubeshard_bin() -> Result<PathBuf, BoxError> {
    if let Some(p) = std::env::var_os("KUBESHARD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/release/kubeshard");
    if !bin.is_file() {
        eprintln!("building target/release/kubeshard ...");
        let ok = Command::new(env!("CARGO"))
            .args(["build", "--release", "--bin", "kubeshard"])
            .current_dir(&root)
            .status()?
            .success();
        if !ok {
            return Err("cargo build --release --bin kubeshard failed".into());
        }
    }
    Ok(bin)
}

/// A running `kubeshard server` (embedded durable store) on a free TLS port.
pub struct Server {
    /// The server process.
    pub proc: Proc,
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The plain-HTTP loopback port, when one was asked for.
    pub insecure_port: Option<u16>,
}

/// Starts `kubeshard server --data-dir DIR --port 0` (plus `--insecure-port 0` when
/// `plain_http`) and waits, at most 60 s, until it says it listens.
pub fn start_server(bin: &Path, data_dir: &Path, plain_http: bool) -> Result<Server, BoxError> {
    let mut cmd = Command::new(bin);
    cmd.args(["server", "--data-dir"])
        .arg(data_dir)
        .args(["--port", "0"]);
    if plain_http {
        cmd.args(["--insecure-port", "0"]);
    }
    let mut child = cmd.env("RUST_LOG", "warn").stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().ok_or("server stdout")?;
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    // Reads the server's stdout to the end so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut listening = false;
    let mut insecure_port = None;
    while !(listening && (insecure_port.is_some() || !plain_http)) {
        let left = Duration::from_secs(60).saturating_sub(started.elapsed());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| "kubeshard server did not start within 60 s")?;
        if line.starts_with("kubeshard server listening") {
            listening = true;
        }
        if let Some(rest) =
            line.strip_prefix("plain HTTP (admin, development only) on http://127.0.0.1:")
        {
            insecure_port = rest.trim().parse().ok();
        }
    }
    Ok(Server {
        proc,
        kubeconfig: data_dir.join("kubeconfig"),
        insecure_port,
    })
}

/// VmRSS of `pid` in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) `pid` has used so far (0 when it cannot be read).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the ')'.
    // /proc reports them in USER_HZ, which Linux fixes at 100 for user space.
    let hz = 100.0;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// An environment variable parsed as `T`, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `q` quantile (0..=1) of `samples`, sorting them in place; zero when empty.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}
