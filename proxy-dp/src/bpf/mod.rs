//! In-kernel forwarding of established TCP flows: a sockmap and an `sk_skb` stream-verdict
//! program that hands every segment a socket receives to its peer socket's send side, so
//! payload never reaches user space and the proxy thread is not woken for it.
//!
//! Built without a BPF toolchain: the program is bytecode from [`insn`], loaded and attached
//! with the raw `bpf(2)` system call ([`sys`]).
//!
//! Two `SOCKHASH` maps, both keyed by socket cookie (`SO_COOKIE`, `bpf_get_socket_cookie`):
//! - `peers`: cookie of a socket -> its peer socket. No program is attached to it; being in
//!   it gives a socket the kernel state (`psock`) a redirect needs.
//! - `active`: cookie -> the socket itself, with the verdict program attached: a socket
//!   starts being forwarded by the kernel when it is inserted here.
//!
//! [`SockmapForwarder::insert_pair`] fills `peers` for both sockets before it activates
//! either, so the program never runs for a socket whose peer is missing (a miss would drop
//! the segment: `bpf_sk_redirect_hash` returns `SK_DROP`). Closing a socket removes it from
//! both maps (the kernel unlinks a closed socket from every sockmap).
//!
//! The program (16 instructions):
//! ```text
//!     r6 = r1                       ; ctx (struct __sk_buff *)
//!     r2 = *(u32 *)(r6 + 0)         ; skb->len
//!     if r2 == 0 goto drop          ; a bare FIN: the kernel already noted it; redirecting an
//!                                   ; empty skb would fail the peer's send with EPIPE
//!     r1 = r6
//!     call bpf_get_socket_cookie
//!     *(u64 *)(r10 - 8) = r0
//!     r1 = r6; r2 = map peers; r3 = r10 - 8; r4 = 0   ; flags 0: the peer's egress
//!     call bpf_sk_redirect_hash     ; SK_PASS with a redirect, or SK_DROP on a miss
//!     exit
//! drop:
//!     r0 = SK_DROP; exit
//! ```

pub mod insn;
pub(crate) mod sys;

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use insn::{Asm, Reg, Size};
pub(crate) use sys::{
    accept_nonblocking, async_fd, epoll_add, epoll_create, epoll_poll, socket_cookie, tcp_counters,
};

const MAP_TYPE_SOCKHASH: u32 = 18;
const PROG_TYPE_SK_SKB: u32 = 14;
const ATTACH_SK_SKB_STREAM_VERDICT: u32 = 5;
const FUNC_GET_SOCKET_COOKIE: i32 = 46;
const FUNC_SK_REDIRECT_HASH: i32 = 72;
const SK_DROP: i32 = 0;
const BPF_NOEXIST: u64 = 1;
/// Bytes of verifier log kept when a load fails.
const VERIFIER_LOG: usize = 64 * 1024;

/// The kernel data path could not be set up or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BpfError {
    /// Creating a map failed (no privilege: EPERM; no sockmap support: EINVAL).
    #[error("creating BPF map {name}: {source}")]
    MapCreate {
        /// The map.
        name: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The verifier refused the program, or loading failed; `log` is the verifier's log.
    #[error("loading the sk_skb verdict program: {source}; verifier log: {log}")]
    ProgLoad {
        /// The OS error.
        source: io::Error,
        /// The verifier log (empty when the kernel gave none).
        log: String,
    },
    /// The program could not be assembled (a bug in this module).
    #[error("assembling the verdict program: {0}")]
    Asm(#[from] insn::AsmError),
    /// Attaching the program to the map failed.
    #[error("attaching the verdict program: {0}")]
    Attach(io::Error),
    /// A map is full: the flow stays in user space.
    #[error("sockmap full")]
    Full,
    /// Inserting or reading a socket failed (the socket closed meanwhile, memory).
    #[error("{what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// The verdict program, for a `peers` map with file descriptor `peers_fd`.
pub fn verdict_program(peers_fd: i32) -> Result<Vec<insn::Insn>, BpfError> {
    let mut a = Asm::new();
    let drop = a.label();
    a.mov64_reg(Reg::R6, Reg::R1)
        .load(Size::W, Reg::R2, Reg::R6, 0)
        .jeq_imm(Reg::R2, 0, drop)
        .mov64_reg(Reg::R1, Reg::R6)
        .call(FUNC_GET_SOCKET_COOKIE)
        .store(Size::Dw, Reg::R10, -8, Reg::R0)
        .mov64_reg(Reg::R1, Reg::R6)
        .load_map_fd(Reg::R2, peers_fd)
        .mov64_reg(Reg::R3, Reg::R10)
        .add64_imm(Reg::R3, -8)
        .mov64_imm(Reg::R4, 0)
        .call(FUNC_SK_REDIRECT_HASH)
        .exit()
        .bind(drop)
        .mov64_imm(Reg::R0, SK_DROP)
        .exit();
    Ok(a.finish()?)
}

/// The maps and the attached program (see the module doc). Shared by all shards: the
/// kernel serializes map updates. Dropping it frees the maps, which releases every socket
/// still in them (their flows fall back to the kernel's normal receive path).
#[derive(Debug)]
pub struct SockmapForwarder {
    peers: OwnedFd,
    active: OwnedFd,
    _prog: OwnedFd,
    max_pairs: u32,
}

impl SockmapForwarder {
    /// Creates the maps for at most `max_pairs` forwarded connections (two sockets each),
    /// loads the program and attaches it. Fails without privilege (CAP_BPF/CAP_NET_ADMIN)
    /// or on a kernel without sockmap support; the caller then forwards in user space.
    pub fn new(max_pairs: u32) -> Result<SockmapForwarder, BpfError> {
        let entries = max_pairs.max(1).saturating_mul(2);
        let peers =
            sys::map_create(MAP_TYPE_SOCKHASH, 8, 4, entries, "ks_peers").map_err(|source| {
                BpfError::MapCreate {
                    name: "ks_peers",
                    source,
                }
            })?;
        let active =
            sys::map_create(MAP_TYPE_SOCKHASH, 8, 4, entries, "ks_active").map_err(|source| {
                BpfError::MapCreate {
                    name: "ks_active",
                    source,
                }
            })?;
        let prog = load(&verdict_program(std::os::fd::AsRawFd::as_raw_fd(&peers))?)?;
        sys::prog_attach(active.as_fd(), prog.as_fd(), ATTACH_SK_SKB_STREAM_VERDICT)
            .map_err(BpfError::Attach)?;
        Ok(SockmapForwarder {
            peers,
            active,
            _prog: prog,
            max_pairs: max_pairs.max(1),
        })
    }

    /// The connections the maps hold at most.
    pub fn max_pairs(&self) -> u32 {
        self.max_pairs
    }

    /// Hands the connection `a` <-> `b` (cookies `ka`, `kb`) to the kernel: `peers` first
    /// for both, then `active` for both. On failure every entry made is removed again and
    /// the sockets are as before ([`BpfError::Full`] when a map is full).
    pub fn insert_pair(
        &self,
        a: BorrowedFd<'_>,
        ka: u64,
        b: BorrowedFd<'_>,
        kb: u64,
    ) -> Result<(), BpfError> {
        // `a` first: a client that already half-closed (CLOSE_WAIT; only established
        // sockets may enter a sockmap, else EOPNOTSUPP) fails before anything is undone.
        let steps: [(&OwnedFd, u64, BorrowedFd<'_>); 4] = [
            (&self.peers, kb, a),
            (&self.peers, ka, b),
            (&self.active, ka, a),
            (&self.active, kb, b),
        ];
        for (i, (map, key, sock)) in steps.iter().enumerate() {
            let fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(sock)).map_err(|_| {
                BpfError::Socket {
                    what: "socket fd",
                    source: io::Error::from_raw_os_error(libc::EBADF),
                }
            })?;
            if let Err(e) = sys::map_update(
                map.as_fd(),
                &key.to_ne_bytes(),
                &fd.to_ne_bytes(),
                BPF_NOEXIST,
            ) {
                for (m, k, _) in steps.iter().take(i) {
                    let _ = sys::map_delete(m.as_fd(), &k.to_ne_bytes());
                }
                return Err(match e.raw_os_error() {
                    Some(libc::E2BIG | libc::ENOSPC) => BpfError::Full,
                    Some(libc::EOPNOTSUPP) => BpfError::Socket {
                        what: "a socket no longer established (FIN already in) cannot enter a sockmap",
                        source: e,
                    },
                    _ => BpfError::Socket {
                        what: "inserting a socket into the sockmap",
                        source: e,
                    },
                });
            }
        }
        Ok(())
    }

    /// Entries in (`peers`, `active`): both 0 once every forwarded connection has closed.
    pub fn entries(&self) -> Result<(usize, usize), BpfError> {
        let limit = usize::try_from(self.max_pairs).unwrap_or(usize::MAX / 8) * 2 + 1;
        Ok((count(&self.peers, limit)?, count(&self.active, limit)?))
    }
}

fn count(map: &OwnedFd, limit: usize) -> Result<usize, BpfError> {
    let mut key: Option<[u8; 8]> = None;
    let mut n = 0usize;
    // Bounded: a map holds at most `limit` keys (a concurrent change can restart the walk,
    // so allow a few rounds' worth).
    for _ in 0..limit.saturating_mul(4) {
        let mut next = [0u8; 8];
        let more = sys::map_next_key(map.as_fd(), key.as_ref().map(|k| &k[..]), &mut next)
            .map_err(|source| BpfError::Socket {
                what: "walking a sockmap",
                source,
            })?;
        if !more {
            return Ok(n);
        }
        n += 1;
        key = Some(next);
    }
    Ok(n)
}

fn load(prog: &[insn::Insn]) -> Result<OwnedFd, BpfError> {
    // The program's own license: it calls no GPL-only helper.
    let license: &CStr = c"Apache-2.0";
    match sys::prog_load(PROG_TYPE_SK_SKB, prog, license, None, "ks_fwd") {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Load again with a log buffer to say why.
            let mut log = vec![0u8; VERIFIER_LOG];
            match sys::prog_load(PROG_TYPE_SK_SKB, prog, license, Some(&mut log), "ks_fwd") {
                Ok(fd) => Ok(fd),
                Err(source) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let _ = first;
                    Err(BpfError::ProgLoad {
                        source,
                        log: String::from_utf8_lossy(&log[..end]).into_owned(),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program the verifier refuses (it returns r0 without ever setting it): the error
    /// carries the verifier's log, which names the register.
    #[test]
    fn a_refused_program_reports_the_verifier_log() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to load BPF programs");
            return;
        }
        let mut a = Asm::new();
        a.exit();
        let bad = a.finish().expect("assembles");
        match load(&bad) {
            Err(BpfError::ProgLoad { source, log }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EACCES), "{source}");
                assert!(log.contains("R0 !read_ok"), "log: {log}");
            }
            other => panic!("want a verifier refusal, got {other:?}"),
        }
    }

    /// The real program passes the verifier and the maps take no socket but established TCP.
    #[test]
    fn the_verdict_program_loads_and_attaches() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to load BPF programs");
            return;
        }
        let f = SockmapForwarder::new(4).expect("sockmap forwarder");
        assert_eq!(f.entries().expect("walk"), (0, 0));
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        let (ka, kb) = (
            socket_cookie(a.as_fd()).expect("cookie"),
            socket_cookie(b.as_fd()).expect("cookie"),
        );
        assert_ne!(ka, kb);
        f.insert_pair(a.as_fd(), ka, b.as_fd(), kb).expect("insert");
        assert_eq!(f.entries().expect("walk"), (2, 2));
        // The same pair again: the keys exist (BPF_NOEXIST), and nothing is left half-done.
        assert!(f.insert_pair(a.as_fd(), ka, b.as_fd(), kb).is_err());
        assert_eq!(f.entries().expect("walk"), (2, 2));
        drop((a, b));
        let t0 = std::time::Instant::now();
        while f.entries().expect("walk") != (0, 0) && t0.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            f.entries().expect("walk"),
            (0, 0),
            "closed sockets left in the maps"
        );
    }
}
