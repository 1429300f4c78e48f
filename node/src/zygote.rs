//! The shim zygote: a single-threaded child the kubelet's process forks first thing in
//! `main` ([`start`]), from which the runtime forks each sandbox and container shim instead
//! of executing a shim binary.
//!
//! Every pod start runs two shims (the sandbox's and its container's). Executing one costs an
//! `execve`, the dynamic loader's relocations and the page faults of a fresh image (the small
//! `kubeshard-shim` binary too, the ~150 MB `kubeshard` binary much more); a fork of the
//! zygote, which is already loaded and relocated and has no threads, costs a copy of its
//! small page tables. The zygote needs no second binary, so `cargo run --release -- up`
//! gets this path.
//!
//! Protocol (a `SOCK_SEQPACKET` socket pair made before the fork): the runtime sends the
//! shim's arguments (the ones after [`crate::shim::SHIM_ARG`], NUL-separated) with two
//! descriptors attached, the shim's stdout and stderr; the zygote forks, the child takes
//! them as its stdio, closes every other descriptor, names itself (`kshim-sandbox`,
//! [`CONTAINER_SHIM_NAME`]) and runs
//! [`crate::shim`]'s mode as a re-executed shim would (`setsid` first, so it outlives the
//! kubelet); the zygote answers with the child's pid (or an error) and reaps its exited
//! children. The zygote dies with the process that forked it (`PR_SET_PDEATHSIG`) or when its
//! socket closes; the shims it forked stay (re-parented to init, as a re-executed shim is
//! when the kubelet goes), so a restarted kubelet adopts their containers as before.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::ForkResult;

/// Largest request (the shim's arguments): directory paths are far shorter.
const MAX_REQUEST: usize = 8192;

/// How long the runtime waits for the zygote's answer before it falls back to executing
/// the shim binary.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the idle zygote wakes to reap exited shims.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// The process name (`/proc/PID/comm`) of a container shim forked from the zygote (its
/// command line is the kubelet's); a sandbox's shim is `kshim-sandbox`.
pub const CONTAINER_SHIM_NAME: &str = "kshim-container";

/// The zygote's process name.
pub const ZYGOTE_NAME: &str = "kshim-zygote";

static ZYGOTE: OnceLock<Zygote> = OnceLock::new();

/// The runtime's handle on the zygote of this process.
#[derive(Debug)]
pub(crate) struct Zygote {
    /// One request and its answer at a time.
    sock: Mutex<OwnedFd>,
    pid: i32,
}

/// Forks the zygote if this process has none yet; false if it could not (the runtime then
/// executes the shim binary, as without a zygote). Call it first thing in `main`, right after
/// [`crate::shim::run_if_requested`], while the process still has one thread (checked: the
/// fork is refused otherwise), and before anything this process' shims must not inherit.
pub fn start() -> bool {
    if ZYGOTE.get().is_some() {
        return true;
    }
    let Ok((ours, theirs)) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    ) else {
        return false;
    };
    let parent = nix::unistd::getpid();
    match crate::sys::fork_single_threaded() {
        Err(_) => false,
        Ok(ForkResult::Child) => {
            drop(ours);
            serve(theirs, parent)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(theirs);
            let set = ZYGOTE.set(Zygote {
                sock: Mutex::new(ours),
                pid: child.as_raw(),
            });
            set.is_ok()
        }
    }
}

/// The zygote of this process, if [`start`] made one.
pub(crate) fn get() -> Option<&'static Zygote> {
    ZYGOTE.get()
}

impl Zygote {
    /// The zygote's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Forks a shim running `args` (the arguments after `SHIM_ARG`) with `stdout` and
    /// `stderr` as its output; returns its pid. Blocking (one round trip of well under a
    /// millisecond; requests from concurrent callers take turns).
    pub(crate) fn spawn(
        &self,
        args: &[&str],
        stdout: &impl AsFd,
        stderr: &impl AsFd,
    ) -> std::io::Result<i32> {
        let mut req = Vec::new();
        for a in args {
            if a.contains('\0') {
                return Err(std::io::Error::other("NUL in a shim argument"));
            }
            if !req.is_empty() {
                req.push(0);
            }
            req.extend_from_slice(a.as_bytes());
        }
        if req.len() > MAX_REQUEST {
            return Err(std::io::Error::other("shim arguments too long"));
        }
        let sock = self
            .sock
            .lock()
            .map_err(|_| std::io::Error::other("zygote lock poisoned"))?;
        nix::sys::socket::setsockopt(
            &*sock,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0),
        )?;
        crate::sys::send_with_fds(
            &*sock,
            &req,
            &[stdout.as_fd().as_raw_fd(), stderr.as_fd().as_raw_fd()],
        )?;
        let mut ans = [0u8; 512];
        let (n, _) = crate::sys::recv_with_fds(&*sock, &mut ans)?;
        match ans.get(..n) {
            Some([b'p', pid @ ..]) => std::str::from_utf8(pid)
                .ok()
                .and_then(|p| p.parse::<i32>().ok())
                .ok_or_else(|| std::io::Error::other("bad answer from the zygote")),
            Some([b'e', msg @ ..]) => Err(std::io::Error::other(format!(
                "zygote: {}",
                String::from_utf8_lossy(msg)
            ))),
            _ => Err(std::io::Error::other("the zygote is gone")),
        }
    }
}

/// The zygote's loop; never returns.
fn serve(sock: OwnedFd, parent: nix::unistd::Pid) -> ! {
    // Die with the process that forked it (its main thread forked it, before any other).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        std::process::exit(0);
    }
    let _ = nix::sys::prctl::set_name(c"kshim-zygote");
    let _ = nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(REAP_INTERVAL.as_secs() as i64, 0),
    );
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        reap();
        let (n, fds) = match crate::sys::recv_with_fds(&sock, &mut buf) {
            Ok((0, _)) => std::process::exit(0),
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => std::process::exit(1),
        };
        let answer = match fork_shim(&buf[..n], fds) {
            Ok(pid) => format!("p{pid}"),
            Err(e) => format!("e{e}"),
        };
        if crate::sys::send_with_fds(&sock, answer.as_bytes(), &[]).is_err() {
            std::process::exit(1);
        }
    }
}

/// Reaps every exited child (bounded: at most the number of children).
fn reap() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    for _ in 0..100_000 {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Forks one shim for the request `req` with the stdio `fds`; its pid.
fn fork_shim(req: &[u8], fds: Vec<OwnedFd>) -> Result<i32, String> {
    let args: Vec<String> = req
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let [stdout, stderr] = <[OwnedFd; 2]>::try_from(fds)
        .map_err(|f| format!("expected 2 descriptors, got {}", f.len()))?;
    match crate::sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let code = match child_stdio(stdout, stderr) {
                Ok(()) => {
                    let _ = nix::sys::prctl::set_name(match args.first().map(String::as_str) {
                        Some("sandbox") => c"kshim-sandbox",
                        _ => c"kshim-container",
                    });
                    crate::shim::run_mode(&args)
                }
                Err(_) => 1,
            };
            std::process::exit(code)
        }
        ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

/// In a forked shim: stdin from /dev/null, stdout and stderr from the runtime, no other
/// descriptor (the zygote's socket, anything the kubelet's process had open before it).
fn child_stdio(stdout: OwnedFd, stderr: OwnedFd) -> std::io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&stdout)?;
    nix::unistd::dup2_stderr(&stderr)?;
    // close_range closes these three too: forgotten, not closed a second time.
    std::mem::forget((null, stdout, stderr));
    crate::sys::close_fds_from(3)
}
