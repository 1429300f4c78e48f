//! The shim: the process the runtime starts (by re-executing a binary that calls
//! [`run_if_requested`] first thing in `main`) for each pod sandbox and each container.
//!
//! - `sandbox DIR`: unshares network, IPC, UTS and PID namespaces, sets the hostname, brings
//!   loopback up, forks the holder (PID 1 of the pod's PID namespace, which only reaps and
//!   waits for SIGTERM), prints the holder's host pid and waits for it.
//! - `container DIR`: joins the sandbox's namespaces (and its PID namespace when shared, else
//!   a new one), forks the container's first process, places it in its cgroup, lets it build
//!   its root file system and `execve` the command, prints `started <pid>` (or `error <msg>`),
//!   then copies stdout/stderr into the CRI log through io_uring, waits for the exit (pidfd),
//!   and writes `exit.json` (code, signal, OOM) before it exits.
//!
//! - `exec DIR EXEC_DIR`: runs one more process in a running container (`kubectl exec`, exec
//!   probes): joins the container's IPC, UTS, network and PID namespaces, forks, places the
//!   child in the container's cgroup, and the child joins the mount namespace and takes the
//!   container's identity, capabilities, `no_new_privs`, environment and working directory
//!   before it executes `EXEC_DIR/exec.json`'s argv. Its stdio is the shim's own (pipes or a
//!   pty slave from the runtime); it dies with the shim (`PR_SET_PDEATHSIG`). The shim waits
//!   and writes `EXEC_DIR/result.json` (exit code and signal, or the start error).
//!
//! The shim runs in its own session, so a restarted kubelet finds containers still running
//! and their monitors still writing logs and exit states.
//!
//! The shim is single-threaded until after its fork (no runtime is started before), so the
//! child may allocate freely.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid};

use crate::spec::{ContainerSpec, ExitState, SandboxSpec};

/// The first argument that selects the shim.
pub const SHIM_ARG: &str = "__kubeshard-shim";

/// The file name of the stand-alone shim binary (`node/src/bin/kubeshard-shim.rs`), looked
/// for next to the kubelet's own binary by [`program_for`].
pub const SHIM_BIN: &str = "kubeshard-shim";

/// This build's identity (a hash of the node crate's sources, from `build.rs`): a shim
/// binary answers `SHIM_ARG build-id` with it.
pub const BUILD_ID: &str = env!("KUBESHARD_NODE_BUILD_ID");

/// How long [`program_for`] waits for a candidate shim's `build-id` answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The program the runtime should start as its shim, given `main_exe`, the binary that
/// serves as the shim itself (the `kubeshard` binary, which calls [`run_if_requested`]).
///
/// Prefers the small stand-alone `kubeshard-shim` next to `main_exe` when it is an
/// executable file answering with this build's [`BUILD_ID`]: every sandbox and container
/// start fork+execs the shim, and the `kubeshard` binary (~150 MB, ~34,000 relocations)
/// costs more to load at each exec and more memory per running shim. Anything else
/// (missing, not executable, another build's shim, no answer within 5 s) falls back to
/// `main_exe`, which always works. Blocking: runs the candidate once.
pub fn program_for(main_exe: &Path) -> PathBuf {
    let candidate = main_exe.with_file_name(SHIM_BIN);
    if candidate == main_exe {
        return main_exe.to_path_buf();
    }
    match probe_build_id(&candidate) {
        Ok(id) if id == BUILD_ID => candidate,
        Ok(id) => {
            tracing::info!(shim = %candidate.display(), %id, expected = BUILD_ID,
                "not using the stand-alone shim: it is from another build");
            main_exe.to_path_buf()
        }
        Err(e) => {
            tracing::debug!(shim = %candidate.display(), "no stand-alone shim: {e}");
            main_exe.to_path_buf()
        }
    }
}

/// Runs `program SHIM_ARG build-id` and returns its answer (bounded in size and time).
fn probe_build_id(program: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let md = fs::metadata(program).map_err(|e| e.to_string())?;
    if !md.is_file() || md.permissions().mode() & 0o111 == 0 {
        return Err("not an executable file".into());
    }
    let mut child = std::process::Command::new(program)
        .arg(SHIM_ARG)
        .arg("build-id")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
    // Bounded poll: at most PROBE_TIMEOUT / 5 ms iterations.
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no answer".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut out = String::new();
    if let Some(so) = child.stdout.take() {
        let _ = so.take(4096).read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    Ok(out.trim().to_string())
}

/// If this process was started as a shim (`argv[1] == SHIM_ARG`), runs it and exits;
/// otherwise returns. Call it first in `main`, before any thread or runtime starts.
pub fn run_if_requested() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(SHIM_ARG) {
        return;
    }
    std::process::exit(run_mode(&args[2..]));
}

/// Runs the shim in the mode `args` names (the arguments after [`SHIM_ARG`]) and returns its
/// exit code: for a re-executed binary ([`run_if_requested`]) and for a child of the
/// zygote ([`crate::zygote`]) alike.
pub(crate) fn run_mode(args: &[String]) -> i32 {
    // The kubeshard binary turns transparent huge pages off for itself (see its `main`); the
    // flag survives fork and exec, and a pod's processes must see the machine's own setting.
    let _ = nix::sys::prctl::set_thp_disable(false);
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("sandbox"), Some(dir)) => run_sandbox(Path::new(dir)),
        (Some("container"), Some(dir)) => run_container(Path::new(dir)),
        (Some("build-id"), None) => {
            report(BUILD_ID);
            0
        }
        (Some("exec"), Some(dir)) => match args.get(2) {
            Some(exec_dir) => run_exec(Path::new(dir), Path::new(exec_dir)),
            None => 2,
        },
        _ => {
            eprintln!("usage: {SHIM_ARG} sandbox|container DIR | exec DIR EXEC_DIR | build-id");
            2
        }
    }
}

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, String> {
    let b = fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
    serde_json::from_slice(&b).map_err(|e| format!("parsing {}: {e}", p.display()))
}

fn run_sandbox(dir: &Path) -> i32 {
    let _ = nix::unistd::setsid();
    let spec: SandboxSpec = match read_json(&dir.join("sandbox.json")) {
        Ok(s) => s,
        Err(e) => {
            report(&format!("error {e}"));
            return 1;
        }
    };
    // Into the holder's cgroup before anything else: if the runtime that started this shim
    // goes away before it records the holder (a kubelet stopped mid-create), removing the
    // sandbox still finds and kills both through the cgroup.
    if let Err(e) = spec.holder_cgroup.add_pid(std::process::id() as i32) {
        report(&format!("error joining the sandbox cgroup: {e}"));
        return 1;
    }
    // hostNetwork: the host's network and UTS namespaces (containers join the holder's,
    // which are then the host's), as CRI runtimes do.
    let flags = if spec.host_network {
        CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWPID
    } else {
        CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWPID
    };
    if let Err(e) = nix::sched::unshare(flags) {
        report(&format!("error unshare: {e}"));
        return 1;
    }
    if !spec.host_network {
        if let Err(e) = nix::unistd::sethostname(&spec.hostname) {
            report(&format!("error sethostname: {e}"));
            return 1;
        }
        if let Err(e) = crate::sys::loopback_up() {
            report(&format!("error loopback up: {e}"));
            return 1;
        }
    }
    match crate::sys::fork_single_threaded() {
        Err(e) => {
            report(&format!("error fork: {e}"));
            1
        }
        Ok(ForkResult::Child) => holder(),
        Ok(ForkResult::Parent { child }) => {
            report(&format!("started {child}"));
            // Stay the holder's parent so it is reaped here, not by the host's init.
            loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => return 0,
                }
            }
        }
    }
}

/// PID 1 of a pod: reaps orphans, exits on SIGTERM/SIGINT.
fn holder() -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    let _ = nix::sys::prctl::set_name(c"kubeshard-pause");
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return 1;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                // Reap every exited child (bounded: at most the number of children).
                for _ in 0..100_000 {
                    match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                    {
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            Ok(_) => return 0,
            Err(_) => {}
        }
    }
}

fn ns_fd(pid: i32, ns: &str) -> Result<fs::File, String> {
    fs::File::open(format!("/proc/{pid}/ns/{ns}"))
        .map_err(|e| format!("opening {ns} namespace of {pid}: {e}"))
}

fn run_container(dir: &Path) -> i32 {
    let _ = nix::unistd::setsid();
    let spec: ContainerSpec = match read_json(&dir.join("spec.json")) {
        Ok(s) => s,
        Err(e) => {
            report(&format!("error {e}"));
            return 1;
        }
    };
    match start_container(&spec) {
        Ok((child, io)) => {
            // The attach socket exists before the runtime sees the container running.
            let _ = fs::remove_file(dir.join(crate::attach::SOCKET));
            let listener = crate::attach::with_socket_path(dir, |p| {
                let l = std::os::unix::net::UnixListener::bind(p)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .map_err(|e| eprintln!("kubeshard-shim: attach socket: {e}"))
            .ok();
            report(&format!("started {child}"));
            monitor(dir, &spec, child, io, listener)
        }
        Err(e) => {
            let exit = ExitState {
                exit_code: 128,
                signal: None,
                oom_killed: false,
                finished_at_unix_nanos: crate::spec::now_unix_nanos(),
                start_error: Some(e.clone()),
            };
            let _ = write_exit(dir, &exit);
            report(&format!("error {e}"));
            1
        }
    }
}

fn write_exit(dir: &Path, exit: &ExitState) -> Result<(), String> {
    let b = serde_json::to_vec(exit).map_err(|e| e.to_string())?;
    crate::image::write_replace(&dir.join("exit.json"), &b).map_err(|e| e.to_string())
}

/// The container's stdio as the shim keeps it.
enum ShimIo {
    /// Output pipes (read ends) and, with `stdin: true`, stdin's write end.
    Pipes {
        out: OwnedFd,
        err: OwnedFd,
        stdin: Option<OwnedFd>,
    },
    /// `tty: true`: the pty master (output, input and resizes).
    Tty { master: OwnedFd },
}

/// The container's stdio as its first process gets it.
enum ChildIo {
    Pipes {
        out: OwnedFd,
        err: OwnedFd,
        stdin: Option<OwnedFd>,
    },
    Tty {
        slave: OwnedFd,
    },
}

fn set_cloexec(fd: &OwnedFd) -> Result<(), String> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(|_| ())
        .map_err(|e| format!("FD_CLOEXEC: {e}"))
}

/// Joins the namespaces, forks the container's first process and waits until it has
/// executed its command (or failed to). Returns its pid and the shim's ends of its stdio.
fn start_container(spec: &ContainerSpec) -> Result<(i32, ShimIo), String> {
    let start = crate::spec::proc_start_time(spec.sandbox_pid);
    if start != Some(spec.sandbox_start_time) {
        return Err(format!("sandbox holder {} is gone", spec.sandbox_pid));
    }
    let net = ns_fd(spec.sandbox_pid, "net")?;
    let ipc = ns_fd(spec.sandbox_pid, "ipc")?;
    let uts = ns_fd(spec.sandbox_pid, "uts")?;
    let pidns = ns_fd(spec.sandbox_pid, "pid")?;
    for (f, t) in [
        (&net, CloneFlags::CLONE_NEWNET),
        (&ipc, CloneFlags::CLONE_NEWIPC),
        (&uts, CloneFlags::CLONE_NEWUTS),
    ] {
        nix::sched::setns(f.as_fd(), t).map_err(|e| format!("joining {t:?}: {e}"))?;
    }
    // The shim's own PID namespace, restored for its later children after the fork: a task
    // whose children would land in another PID namespace cannot start threads, and io_uring's
    // workers are threads.
    let own_pidns = ns_fd(std::process::id() as i32, "pid")?;
    if spec.share_pid {
        nix::sched::setns(pidns.as_fd(), CloneFlags::CLONE_NEWPID)
            .map_err(|e| format!("joining the pod PID namespace: {e}"))?;
    } else {
        nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare pid: {e}"))?;
    }
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (shim_io, child_io) = if spec.tty {
        let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
        set_cloexec(&pty.master)?;
        set_cloexec(&pty.slave)?;
        (
            ShimIo::Tty { master: pty.master },
            ChildIo::Tty { slave: pty.slave },
        )
    } else {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (in_r, in_w) = if spec.stdin {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        (
            ShimIo::Pipes {
                out: out_r,
                err: err_r,
                stdin: in_w,
            },
            ChildIo::Pipes {
                out: out_w,
                err: err_w,
                stdin: in_r,
            },
        )
    };
    let (go_r, go_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    match crate::sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((shim_io, go_w, rep_r));
            let msg = container_init(spec, go_r, child_io).unwrap_err();
            let mut f = fs::File::from(rep_w);
            let _ = f.write_all(msg.as_bytes());
            std::process::exit(127);
        }
        ForkResult::Parent { child } => {
            drop((child_io, go_r, rep_w));
            let _ = nix::sched::setns(own_pidns.as_fd(), CloneFlags::CLONE_NEWPID);
            let pid = child.as_raw();
            let placed = spec.cgroup.add_pid(pid).map_err(|e| e.to_string());
            if let Err(e) = placed {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(format!("placing in cgroup: {e}"));
            }
            let mut go = fs::File::from(go_w);
            go.write_all(b"g")
                .map_err(|e| format!("releasing the container: {e}"))?;
            drop(go);
            // EOF on the report pipe: execve succeeded (the write end was close-on-exec).
            let mut msg = String::new();
            let _ = fs::File::from(rep_r)
                .take(64 * 1024)
                .read_to_string(&mut msg);
            if !msg.is_empty() {
                let _ = waitpid(child, None);
                return Err(msg);
            }
            Ok((pid, shim_io))
        }
    }
}

/// Runs in the container's first process: root file system, identity, privileges, exec.
/// Returns only on failure.
fn container_init(
    spec: &ContainerSpec,
    go: OwnedFd,
    io: ChildIo,
) -> Result<std::convert::Infallible, String> {
    let mut b = [0u8; 1];
    let n = fs::File::from(go)
        .read(&mut b)
        .map_err(|e| format!("waiting for release: {e}"))?;
    if n != 1 {
        return Err("the shim went away before releasing the container".into());
    }
    let _ = nix::sys::prctl::set_pdeathsig(None);
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare mount: {e}"))?;
    crate::rootfs::setup(spec)?;
    let (uid, gid, mut groups) = resolve_user(spec)?;
    groups.extend(spec.supplementary_gids.iter().copied());
    // Working directory (created as root, like other runtimes do).
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    fs::create_dir_all(cwd).map_err(|e| format!("creating working dir {cwd}: {e}"))?;
    // Output and input.
    let dup_err = |e: nix::errno::Errno| format!("dup2: {e}");
    match io {
        ChildIo::Pipes { out, err, stdin } => {
            let stdin = match stdin {
                Some(r) => r,
                None => nix::fcntl::open(
                    "/dev/null",
                    nix::fcntl::OFlag::O_RDONLY,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| format!("opening /dev/null: {e}"))?,
            };
            nix::unistd::dup2_stdin(&stdin).map_err(dup_err)?;
            nix::unistd::dup2_stdout(&out).map_err(dup_err)?;
            nix::unistd::dup2_stderr(&err).map_err(dup_err)?;
        }
        ChildIo::Tty { slave } => {
            // A session of its own with the terminal as its controlling tty.
            nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
            nix::unistd::dup2_stdin(&slave).map_err(dup_err)?;
            nix::unistd::dup2_stdout(&slave).map_err(dup_err)?;
            nix::unistd::dup2_stderr(&slave).map_err(dup_err)?;
            drop(slave);
            crate::sys::set_controlling_tty(0).map_err(|e| format!("TIOCSCTTY: {e}"))?;
        }
    }
    drop_privileges(spec, uid, gid, &groups)?;
    std::env::set_current_dir(cwd).map_err(|e| format!("chdir {cwd}: {e}"))?;
    let argv0 = spec.argv.first().ok_or("no command")?;
    let path = resolve_exe(argv0, &spec.env)?;
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("NUL in {s:?}"));
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec.env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    crate::sys::reset_signals();
    let e = nix::unistd::execve(&cstr(&path)?, &argv, &envp).unwrap_err();
    Err(format!("exec {argv0}: {e}"))
}

/// Cuts the capability bounding set to the container's, changes identity, sets the
/// capability sets and `no_new_privs` (the container's first process and exec'd ones alike).
fn drop_privileges(spec: &ContainerSpec, uid: u32, gid: u32, groups: &[u32]) -> Result<(), String> {
    // Capabilities: shrink the bounding set first (needs CAP_SETPCAP), then change identity.
    let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let mut keep: u64 = 0;
    for c in &spec.capabilities {
        if *c < 64 {
            keep |= 1 << c;
        }
    }
    for cap in 0..=last.min(63) {
        if keep & (1 << cap) == 0 {
            crate::sys::capbset_drop(cap).map_err(|e| format!("dropping capability {cap}: {e}"))?;
        }
    }
    let gids: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&gids).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
        .map_err(|e| format!("setgid {gid}: {e}"))?;
    nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
        .map_err(|e| format!("setuid {uid}: {e}"))?;
    if uid == 0 {
        crate::sys::capset_all(keep).map_err(|e| format!("capset: {e}"))?;
    }
    crate::sys::clear_ambient_caps().map_err(|e| format!("clearing ambient caps: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(())
}

/// Looks a command up in the container's PATH (after pivot_root, so inside its root).
fn resolve_exe(cmd: &str, env: &[String]) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt as _;
    if cmd.contains('/') {
        return Ok(cmd.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').take(64) {
        let p = PathBuf::from(if dir.is_empty() { "." } else { dir }).join(cmd);
        if let Ok(m) = fs::metadata(&p)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(p.display().to_string());
        }
    }
    Err(format!("exec {cmd}: executable file not found in $PATH"))
}

/// Resolves `spec.user`/`spec.group` (numbers or names in the container's /etc/passwd and
/// /etc/group) to uid, gid and supplementary groups.
fn resolve_user(spec: &ContainerSpec) -> Result<(u32, u32, Vec<u32>), String> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    let (user, grp_from_user) = match spec.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec.user.as_str(), None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let mut primary = None;
    let mut name = None;
    let uid = match user.parse::<u32>() {
        Ok(u) => {
            if let Some(l) = passwd.lines().find(|l| l.split(':').nth(2) == Some(user)) {
                primary = l.split(':').nth(3).and_then(|g| g.parse::<u32>().ok());
                name = l.split(':').next().map(str::to_string);
            }
            u
        }
        Err(_) => {
            let l = passwd
                .lines()
                .find(|l| l.split(':').next() == Some(user))
                .ok_or_else(|| format!("user {user:?} not found in /etc/passwd"))?;
            primary = l.split(':').nth(3).and_then(|g| g.parse::<u32>().ok());
            name = Some(user.to_string());
            l.split(':')
                .nth(2)
                .and_then(|u| u.parse().ok())
                .ok_or_else(|| format!("bad /etc/passwd entry for {user:?}"))?
        }
    };
    let group_name = spec.group.as_deref().or(grp_from_user);
    let gid = match group_name {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .find(|l| l.split(':').next() == Some(g))
                .and_then(|l| l.split(':').nth(2))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("group {g:?} not found in /etc/group"))?,
        },
        None => primary.unwrap_or(0),
    };
    let mut groups = vec![gid];
    if let Some(n) = name {
        for l in group.lines().take(100_000) {
            let mut it = l.split(':');
            let _gname = it.next();
            let _pw = it.next();
            let id = it.next().and_then(|x| x.parse::<u32>().ok());
            let members = it.next().unwrap_or("");
            if let Some(id) = id
                && members.split(',').any(|m| m == n)
                && !groups.contains(&id)
            {
                groups.push(id);
            }
        }
    }
    Ok((uid, gid, groups))
}

/// What the attach clients send the container's stdin owner.
enum StdinMsg {
    Data(bytes::Bytes),
    /// A stdin client ended (closed its stdin or went away).
    Eof,
    Resize(u16, u16),
}

/// Most output chunks queued for each attached client; a slower client skips ahead.
const ATTACH_BACKLOG: usize = 256;
/// How long attached clients may take to receive the last output after the exit.
const ATTACH_DRAIN: Duration = Duration::from_secs(1);

/// Copies output into the CRI log (and to attached clients) until the process exits, keeps
/// its stdin for attaches, then records how it ended.
fn monitor(
    dir: &Path,
    spec: &ContainerSpec,
    child: i32,
    io: ShimIo,
    listener: Option<std::os::unix::net::UnixListener>,
) -> i32 {
    // Detach from the kubelet's pipe: nothing more is reported there.
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 1;
    };
    let status = rt.block_on(async {
        use crate::attach::FdIo;
        type Reader = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;
        let (out_tx, _) = tokio::sync::broadcast::channel::<(u8, bytes::Bytes)>(ATTACH_BACKLOG);
        let (stdin_tx, stdin_rx) = tokio::sync::mpsc::channel::<StdinMsg>(64);
        let pipe_reader = |fd: OwnedFd| -> Option<Reader> {
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .map_err(|e| eprintln!("kubeshard-shim: output pipe: {e}"))
                .ok()
                .map(|r| Box::pin(r) as Reader)
        };
        let (out, err, sink): (Option<Reader>, Option<Reader>, StdinSink) = match io {
            ShimIo::Pipes { out, err, stdin } => (
                pipe_reader(out),
                pipe_reader(err),
                match stdin.map(tokio::net::unix::pipe::Sender::from_owned_fd) {
                    Some(Ok(w)) => StdinSink::Pipe(w),
                    _ => StdinSink::None,
                },
            ),
            ShimIo::Tty { master } => match FdIo::new(master) {
                Ok(m) => (Some(Box::pin(m.clone()) as Reader), None, StdinSink::Tty(m)),
                Err(e) => {
                    eprintln!("kubeshard-shim: pty: {e}");
                    (None, None, StdinSink::None)
                }
            },
        };
        tokio::spawn(stdin_loop(sink, stdin_rx, spec.stdin, spec.stdin_once));
        // Attached clients each hold a clone of `alive`: its receiver ends when all are gone.
        let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
        let accept = accept_attaches(listener, out_tx.clone(), stdin_tx, alive_tx);
        // Boxed (not pinned on the stack) so both can be dropped before the drain below.
        let mut logs = Box::pin(copy_logs(spec, out, err, out_tx));
        let mut accept = Box::pin(accept);
        let exited = wait_exit(child);
        tokio::pin!(exited);
        let status = tokio::select! {
            s = &mut exited => {
                // Give the streams a moment to drain what the process wrote last (other
                // processes of a shared PID namespace may hold them open longer).
                let _ = tokio::time::timeout(Duration::from_millis(500), &mut logs).await;
                s
            }
            _ = &mut logs => tokio::select! {
                s = &mut exited => s,
                _ = &mut accept => exited.await,
            },
            _ = &mut accept => exited.await,
        };
        // Every output sender is gone once `logs` and `accept` are dropped: the clients
        // send what is queued and close their connections.
        drop(logs);
        drop(accept);
        let _ = tokio::time::timeout(ATTACH_DRAIN, alive_rx.recv()).await;
        status
    });
    drop(rt);
    let _ = fs::remove_file(dir.join(crate::attach::SOCKET));
    let (exit_code, signal) = match status {
        Some(WaitStatus::Exited(_, c)) => (c, None),
        Some(WaitStatus::Signaled(_, s, _)) => (128 + s as i32, Some(s as i32)),
        _ => (255, None),
    };
    let exit = ExitState {
        exit_code,
        signal,
        oom_killed: spec.cgroup.oom_killed(),
        finished_at_unix_nanos: crate::spec::now_unix_nanos(),
        start_error: None,
    };
    match write_exit(dir, &exit) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Where the container's stdin goes.
enum StdinSink {
    None,
    Pipe(tokio::net::unix::pipe::Sender),
    Tty(crate::attach::FdIo),
}

/// Owns the container's stdin: writes what attached clients send, resizes the terminal, and
/// with `stdinOnce` (and no terminal) closes stdin when the first stdin client ends, as
/// containerd does.
async fn stdin_loop(
    mut sink: StdinSink,
    mut rx: tokio::sync::mpsc::Receiver<StdinMsg>,
    stdin: bool,
    stdin_once: bool,
) {
    use tokio::io::AsyncWriteExt as _;
    let mut open = stdin;
    while let Some(m) = rx.recv().await {
        match m {
            StdinMsg::Data(b) if open => {
                let r = match &mut sink {
                    StdinSink::Pipe(w) => w.write_all(&b).await,
                    StdinSink::Tty(m) => m.write_all(&b).await,
                    StdinSink::None => Ok(()),
                };
                if r.is_err() {
                    open = false;
                }
            }
            StdinMsg::Data(_) => {}
            // A terminal keeps its stdin: the master also carries the output.
            StdinMsg::Eof if open && stdin_once && matches!(sink, StdinSink::Pipe(_)) => {
                open = false;
                sink = StdinSink::None;
            }
            StdinMsg::Eof => {}
            StdinMsg::Resize(cols, rows) => {
                if let StdinSink::Tty(m) = &sink {
                    let _ = crate::sys::set_winsize(&m.fd(), cols, rows);
                }
            }
        }
    }
}

/// Accepts attach connections until the container ends (the future is dropped), each served
/// by a task of its own.
async fn accept_attaches(
    listener: Option<std::os::unix::net::UnixListener>,
    out: tokio::sync::broadcast::Sender<(u8, bytes::Bytes)>,
    stdin: tokio::sync::mpsc::Sender<StdinMsg>,
    alive: tokio::sync::mpsc::Sender<()>,
) {
    let Some(l) = listener.and_then(|l| tokio::net::UnixListener::from_std(l).ok()) else {
        return std::future::pending().await;
    };
    loop {
        match l.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(serve_attach(
                    conn,
                    out.subscribe(),
                    stdin.clone(),
                    alive.clone(),
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One attached client: its frames to the stdin owner, the container's output to it.
async fn serve_attach(
    conn: tokio::net::UnixStream,
    mut out: tokio::sync::broadcast::Receiver<(u8, bytes::Bytes)>,
    stdin: tokio::sync::mpsc::Sender<StdinMsg>,
    _alive: tokio::sync::mpsc::Sender<()>,
) {
    use crate::attach::{
        TO_HELLO_STDIN, TO_RESIZE, TO_STDIN, TO_STDIN_EOF, read_frame, write_frame,
    };
    use tokio::sync::broadcast::error::RecvError;
    let (mut r, mut w) = conn.into_split();
    // Frames from the client, in a task of their own (reading a frame is not cancel-safe).
    let mut inbound = tokio::spawn(async move {
        let mut stdin_client = false;
        let mut eof_sent = false;
        loop {
            match read_frame(&mut r).await {
                Ok(Some((TO_HELLO_STDIN, _))) => stdin_client = true,
                Ok(Some((TO_STDIN, b))) => {
                    if stdin.send(StdinMsg::Data(b)).await.is_err() {
                        return;
                    }
                }
                Ok(Some((TO_STDIN_EOF, _))) => {
                    if !eof_sent {
                        eof_sent = true;
                        let _ = stdin.send(StdinMsg::Eof).await;
                    }
                }
                Ok(Some((TO_RESIZE, b))) if b.len() == 4 => {
                    let cols = u16::from_be_bytes([b[0], b[1]]);
                    let rows = u16::from_be_bytes([b[2], b[3]]);
                    let _ = stdin.send(StdinMsg::Resize(cols, rows)).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    if stdin_client && !eof_sent {
                        let _ = stdin.send(StdinMsg::Eof).await;
                    }
                    return;
                }
            }
        }
    });
    loop {
        tokio::select! {
            m = out.recv() => match m {
                Ok((kind, b)) => {
                    if write_frame(&mut w, kind, &b).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
            // The client went away: no task is left behind for a quiet container.
            _ = &mut inbound => return,
        }
    }
    // The container ended (or the client stopped reading): stop reading from it too.
    inbound.abort();
}

async fn copy_logs(
    spec: &ContainerSpec,
    out: Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>,
    err: Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>,
    attached: tokio::sync::broadcast::Sender<(u8, bytes::Bytes)>,
) {
    use crate::attach::{FROM_STDERR, FROM_STDOUT};
    use crate::logs::{CriLogWriter, Stream};
    use tokio::io::AsyncReadExt as _;
    let mut w = match CriLogWriter::open(&spec.log_path, spec.log_max_bytes, spec.log_max_files) {
        Ok(w) => w,
        Err(e) => {
            eprintln!(
                "kubeshard-shim: opening log {}: {e}",
                spec.log_path.display()
            );
            return;
        }
    };
    let (mut out_open, mut err_open) = (out.is_some(), err.is_some());
    let mut out = out.unwrap_or_else(|| Box::pin(tokio::io::empty()));
    let mut err = err.unwrap_or_else(|| Box::pin(tokio::io::empty()));
    let mut ob = vec![0u8; 32 * 1024];
    let mut eb = vec![0u8; 32 * 1024];
    while out_open || err_open {
        tokio::select! {
            r = out.read(&mut ob), if out_open => match r {
                Ok(0) | Err(_) => { out_open = false; let _ = w.finish(Stream::Stdout).await; }
                Ok(n) => {
                    if attached.receiver_count() > 0 {
                        let _ = attached.send((FROM_STDOUT, bytes::Bytes::copy_from_slice(&ob[..n])));
                    }
                    if let Err(e) = w.feed(Stream::Stdout, &ob[..n]).await { eprintln!("kubeshard-shim: log write: {e}"); }
                }
            },
            r = err.read(&mut eb), if err_open => match r {
                Ok(0) | Err(_) => { err_open = false; let _ = w.finish(Stream::Stderr).await; }
                Ok(n) => {
                    if attached.receiver_count() > 0 {
                        let _ = attached.send((FROM_STDERR, bytes::Bytes::copy_from_slice(&eb[..n])));
                    }
                    if let Err(e) = w.feed(Stream::Stderr, &eb[..n]).await { eprintln!("kubeshard-shim: log write: {e}"); }
                }
            },
        }
    }
}

async fn wait_exit(child: i32) -> Option<WaitStatus> {
    if let Ok(fd) = crate::sys::pidfd_open(child) {
        let _ = crate::sys::pidfd_readable(fd).await;
    }
    loop {
        match waitpid(crate::sys::pid(child), None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(s) => return Some(s),
            Err(_) => return None,
        }
    }
}

/// What to execute in a running container (`EXEC_DIR/exec.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ExecSpec {
    /// The command and its arguments.
    pub(crate) argv: Vec<String>,
    /// Stdio is a terminal: the process gets a new session with it as controlling tty.
    pub(crate) tty: bool,
}

/// How an exec'd process ended (`EXEC_DIR/result.json`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ExecResult {
    /// Exit code (128 + signal when killed by one).
    pub(crate) exit_code: i32,
    /// The signal that killed it.
    pub(crate) signal: Option<i32>,
    /// The process could not be started (e.g. the binary is missing).
    pub(crate) start_error: Option<String>,
}

fn write_exec_result(exec_dir: &Path, r: &ExecResult) -> i32 {
    let Ok(b) = serde_json::to_vec(r) else {
        return 1;
    };
    match crate::image::write_replace(&exec_dir.join("result.json"), &b) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn run_exec(dir: &Path, exec_dir: &Path) -> i32 {
    let failed = |e: String| {
        let r = ExecResult {
            exit_code: 126,
            signal: None,
            start_error: Some(e),
        };
        write_exec_result(exec_dir, &r);
        1
    };
    let spec: ContainerSpec = match read_json(&dir.join("spec.json")) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let exec: ExecSpec = match read_json(&exec_dir.join("exec.json")) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    if exec.argv.is_empty() {
        return failed("no command given".into());
    }
    let state: crate::spec::ProcState = match read_json(&dir.join("state.json")) {
        Ok(s) => s,
        Err(_) => return failed("container is not running".into()),
    };
    if crate::spec::proc_start_time(state.pid) != Some(state.start_time)
        || dir.join("exit.json").exists()
    {
        return failed("container is not running".into());
    }
    match exec_start(&spec, &exec, state.pid) {
        Err(e) => failed(e),
        Ok(child) => {
            // Only the child (and what it starts) holds the session's stdio from now on, so
            // the runtime sees EOF when it is done.
            if let Ok(null) = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = nix::unistd::dup2_stdin(&null);
                let _ = nix::unistd::dup2_stdout(&null);
                let _ = nix::unistd::dup2_stderr(&null);
            }
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            let (exit_code, signal) = match status {
                Ok(WaitStatus::Exited(_, c)) => (c, None),
                Ok(WaitStatus::Signaled(_, s, _)) => (128 + s as i32, Some(s as i32)),
                _ => (255, None),
            };
            write_exec_result(
                exec_dir,
                &ExecResult {
                    exit_code,
                    signal,
                    start_error: None,
                },
            )
        }
    }
}

/// Joins the container's namespaces (all but mount, which only the child joins so the shim
/// keeps the host's files), forks and waits until the child has executed the command.
fn exec_start(spec: &ContainerSpec, exec: &ExecSpec, pid: i32) -> Result<nix::unistd::Pid, String> {
    let mnt = ns_fd(pid, "mnt")?;
    let pidns = ns_fd(pid, "pid")?;
    for (ns, t) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
    ] {
        let f = ns_fd(pid, ns)?;
        nix::sched::setns(f.as_fd(), t).map_err(|e| format!("joining {ns} namespace: {e}"))?;
    }
    nix::sched::setns(pidns.as_fd(), CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("joining the PID namespace: {e}"))?;
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (go_r, go_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    match crate::sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((go_w, rep_r));
            let msg = exec_init(spec, exec, mnt, go_r).unwrap_err();
            let mut f = fs::File::from(rep_w);
            let _ = f.write_all(msg.as_bytes());
            std::process::exit(127);
        }
        ForkResult::Parent { child } => {
            drop((go_r, rep_w, mnt));
            if let Err(e) = spec.cgroup.add_pid(child.as_raw()) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(format!("placing in cgroup: {e}"));
            }
            let mut go = fs::File::from(go_w);
            go.write_all(b"g")
                .map_err(|e| format!("releasing the process: {e}"))?;
            drop(go);
            let mut msg = String::new();
            let _ = fs::File::from(rep_r)
                .take(64 * 1024)
                .read_to_string(&mut msg);
            if !msg.is_empty() {
                let _ = waitpid(child, None);
                return Err(msg);
            }
            Ok(child)
        }
    }
}

/// Runs in the exec'd process: mount namespace, terminal, identity, privileges, exec.
fn exec_init(
    spec: &ContainerSpec,
    exec: &ExecSpec,
    mnt: fs::File,
    go: OwnedFd,
) -> Result<std::convert::Infallible, String> {
    let mut b = [0u8; 1];
    let n = fs::File::from(go)
        .read(&mut b)
        .map_err(|e| format!("waiting for release: {e}"))?;
    if n != 1 {
        return Err("the shim went away before releasing the process".into());
    }
    nix::sched::setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("joining the mount namespace: {e}"))?;
    drop(mnt);
    if exec.tty {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        crate::sys::set_controlling_tty(0).map_err(|e| format!("TIOCSCTTY: {e}"))?;
    }
    let (uid, gid, mut groups) = resolve_user(spec)?;
    groups.extend(spec.supplementary_gids.iter().copied());
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    let path = resolve_exe(&exec.argv[0], &spec.env)?;
    drop_privileges(spec, uid, gid, &groups)?;
    // Die with the shim (set after the identity change, which clears it).
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("pdeathsig: {e}"))?;
    std::env::set_current_dir(cwd).map_err(|e| format!("chdir {cwd}: {e}"))?;
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("NUL in {s:?}"));
    let argv: Vec<CString> = exec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec.env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    crate::sys::reset_signals();
    let e = nix::unistd::execve(&cstr(&path)?, &argv, &envp).unwrap_err();
    Err(format!("exec {}: {e}", exec.argv[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in shim: a script answering `build-id` with `answer`.
    fn fake_shim(dir: &Path, answer: &str, mode: u32) -> PathBuf {
        let p = dir.join(SHIM_BIN);
        fs::write(&p, format!("#!/bin/sh\necho '{answer}'\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn program_for_prefers_a_same_build_shim_next_to_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let main_exe = dir.path().join("kubeshard");
        // Missing: the binary itself.
        assert_eq!(program_for(&main_exe), main_exe);
        // Same build: the stand-alone shim.
        let shim = fake_shim(dir.path(), BUILD_ID, 0o755);
        assert_eq!(program_for(&main_exe), shim);
        // The shim binary given directly stays itself.
        assert_eq!(program_for(&shim), shim);
    }

    #[test]
    fn program_for_falls_back_on_other_builds_and_non_executables() {
        let dir = tempfile::tempdir().unwrap();
        let main_exe = dir.path().join("kubeshard");
        fake_shim(dir.path(), "0.1.0-0000000000000000", 0o755);
        assert_eq!(program_for(&main_exe), main_exe, "another build's shim");
        fake_shim(dir.path(), BUILD_ID, 0o644);
        assert_eq!(program_for(&main_exe), main_exe, "not executable");
        fs::remove_file(dir.path().join(SHIM_BIN)).unwrap();
        fs::create_dir(dir.path().join(SHIM_BIN)).unwrap();
        assert_eq!(program_for(&main_exe), main_exe, "a directory");
    }
}
