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

/// If this process was started as a shim (`argv[1] == SHIM_ARG`), runs it and exits;
/// otherwise returns. Call it first in `main`, before any thread or runtime starts.
pub fn run_if_requested() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(SHIM_ARG) {
        return;
    }
    let code = match (args.get(2).map(String::as_str), args.get(3)) {
        (Some("sandbox"), Some(dir)) => run_sandbox(Path::new(dir)),
        (Some("container"), Some(dir)) => run_container(Path::new(dir)),
        (Some("exec"), Some(dir)) => match args.get(4) {
            Some(exec_dir) => run_exec(Path::new(dir), Path::new(exec_dir)),
            None => 2,
        },
        _ => {
            eprintln!("usage: {SHIM_ARG} sandbox|container DIR | exec DIR EXEC_DIR");
            2
        }
    };
    std::process::exit(code);
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
        Ok((child, stdout_r, stderr_r)) => {
            report(&format!("started {child}"));
            monitor(dir, &spec, child, stdout_r, stderr_r)
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
    crate::image::write_atomic(&dir.join("exit.json"), &b).map_err(|e| e.to_string())
}

/// Joins the namespaces, forks the container's first process and waits until it has
/// executed its command (or failed to). Returns its pid and the read ends of its output.
fn start_container(spec: &ContainerSpec) -> Result<(i32, OwnedFd, OwnedFd), String> {
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
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    match crate::sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((out_r, err_r, go_w, rep_r));
            let msg = container_init(spec, go_r, out_w, err_w).unwrap_err();
            let mut f = fs::File::from(rep_w);
            let _ = f.write_all(msg.as_bytes());
            std::process::exit(127);
        }
        ForkResult::Parent { child } => {
            drop((out_w, err_w, go_r, rep_w));
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
            Ok((pid, out_r, err_r))
        }
    }
}

/// Runs in the container's first process: root file system, identity, privileges, exec.
/// Returns only on failure.
fn container_init(
    spec: &ContainerSpec,
    go: OwnedFd,
    out_w: OwnedFd,
    err_w: OwnedFd,
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
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening /dev/null: {e}"))?;
    let dup_err = |e: nix::errno::Errno| format!("dup2: {e}");
    nix::unistd::dup2_stdin(&null).map_err(dup_err)?;
    nix::unistd::dup2_stdout(&out_w).map_err(dup_err)?;
    nix::unistd::dup2_stderr(&err_w).map_err(dup_err)?;
    drop((null, out_w, err_w));
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

/// Copies output into the CRI log until the process exits, then records how it ended.
fn monitor(dir: &Path, spec: &ContainerSpec, child: i32, out_r: OwnedFd, err_r: OwnedFd) -> i32 {
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
        let logs = copy_logs(spec, out_r, err_r);
        let exited = wait_exit(child);
        tokio::pin!(logs);
        tokio::pin!(exited);
        let status = tokio::select! {
            s = &mut exited => {
                // Give the streams a moment to drain what the process wrote last (other
                // processes of a shared PID namespace may hold them open longer).
                let _ = tokio::time::timeout(Duration::from_millis(500), &mut logs).await;
                s
            }
            _ = &mut logs => exited.await,
        };
        status
    });
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

async fn copy_logs(spec: &ContainerSpec, out_r: OwnedFd, err_r: OwnedFd) {
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
    let open = |fd: OwnedFd| {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
            .map_err(|e| eprintln!("kubeshard-shim: output pipe: {e}"))
            .ok()
    };
    let (Some(mut out), Some(mut err)) = (open(out_r), open(err_r)) else {
        return;
    };
    let mut ob = vec![0u8; 32 * 1024];
    let mut eb = vec![0u8; 32 * 1024];
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            r = out.read(&mut ob), if out_open => match r {
                Ok(0) | Err(_) => { out_open = false; let _ = w.finish(Stream::Stdout).await; }
                Ok(n) => if let Err(e) = w.feed(Stream::Stdout, &ob[..n]).await { eprintln!("kubeshard-shim: log write: {e}"); },
            },
            r = err.read(&mut eb), if err_open => match r {
                Ok(0) | Err(_) => { err_open = false; let _ = w.finish(Stream::Stderr).await; }
                Ok(n) => if let Err(e) = w.feed(Stream::Stderr, &eb[..n]).await { eprintln!("kubeshard-shim: log write: {e}"); },
            },
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
    match crate::image::write_atomic(&exec_dir.join("result.json"), &b) {
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
