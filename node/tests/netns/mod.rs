//! Network namespaces as test "hosts" and "pods": unique names, removed on drop.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether the machine can run the network tests; prints why not.
pub fn can_run(test: &str) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP {test}: needs root (network namespaces)");
        return false;
    }
    for tool in ["ip", "nft", "busybox"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            eprintln!(
                "SKIP {test}: {tool} missing (apt-get install iproute2 nftables busybox-static)"
            );
            return false;
        }
    }
    true
}

/// A named network namespace (`ip netns add`), deleted on drop with everything in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace; `tag` shows in its name (short: names must stay unique, not pretty).
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "kst-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A namespace with `lo` left down, as a fresh sandbox namespace is before setup.
    pub fn bare(tag: &str) -> Netns {
        let name = format!(
            "kst-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME args...`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// `ip netns exec NAME cmd...`: (success, stdout+stderr).
    pub fn exec(&self, cmd: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("run ip netns exec");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    /// One ping (1 s deadline) from this namespace.
    pub fn ping(&self, ip: &str) -> bool {
        self.exec(&["busybox", "ping", "-c", "1", "-W", "1", ip]).0
    }

    /// Runs `f` on a thread inside this namespace (sockets made there stay there).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let f0 = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f0, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// A TCP echo server inside this namespace on `port` (all addresses), serving up to
    /// `conns` connections on a background thread; each reply is "<peer ip> <data>".
    pub fn tcp_echo(&self, port: u16, conns: usize) -> std::thread::JoinHandle<()> {
        let l = self.run_in(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
        std::thread::spawn(move || {
            for _ in 0..conns {
                let Ok((mut s, peer)) = l.accept() else {
                    return;
                };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).unwrap_or(0);
                let mut reply = format!("{} ", peer.ip()).into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.write_all(&reply);
            }
        })
    }

    /// A UDP echo server inside this namespace answering up to `n` datagrams.
    pub fn udp_echo(&self, port: u16, n: usize) -> std::thread::JoinHandle<()> {
        let s = self.run_in(move || UdpSocket::bind(("0.0.0.0", port)).unwrap());
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            for _ in 0..n {
                let Ok((len, peer)) = s.recv_from(&mut buf) else {
                    return;
                };
                let _ = s.send_to(&buf[..len], peer);
            }
        })
    }

    /// Connects from this namespace to `to`, sends `msg`, returns the reply (2 s bound).
    pub fn tcp_call(&self, to: SocketAddr, msg: &str) -> std::io::Result<String> {
        let msg = msg.to_string();
        self.run_in(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(msg.as_bytes())?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
    }

    /// Sends a datagram from this namespace to `to` and waits (2 s) for the answer.
    pub fn udp_call(&self, to: SocketAddr, msg: &str) -> std::io::Result<String> {
        let msg = msg.to_string();
        self.run_in(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.send_to(msg.as_bytes(), to)?;
            let mut buf = [0u8; 256];
            let (n, _) = s.recv_from(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    }

    /// Whether a link of this name exists here.
    pub fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command that must succeed; returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects two namespaces with a veth: `a_ip`/24 in `a`, `b_ip`/24 in `b`, both up.
pub fn link(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) {
    a.ip(&[
        "link", "add", "node0", "type", "veth", "peer", "name", "node0", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", &format!("{a_ip}/24"), "dev", "node0"]);
    b.ip(&["addr", "add", &format!("{b_ip}/24"), "dev", "node0"]);
    a.ip(&["link", "set", "node0", "up"]);
    b.ip(&["link", "set", "node0", "up"]);
}
