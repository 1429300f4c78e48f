//! The runtime API the kubelet calls: pod sandboxes and containers.
//!
//! Everything a restarted kubelet needs is on disk under the run dir:
//!
//! ```text
//! <run>/sandboxes/<id>/sandbox.json   SandboxSpec       hosts, hostname, resolv.conf
//!                      state.json     holder pid + start time (ProcState)
//! <run>/containers/<id>/spec.json     ContainerSpec (resolved argv, env, mounts, cgroup...)
//!                       state.json    shim + process pids and start times, once started
//!                       exit.json     exit code / signal / OOM, written by the shim
//!                       upper/ work/ rootfs/   the overlay's directories
//! ```
//!
//! A container's monitor (the shim, see [`crate::shim`]) is its parent and outlives the
//! kubelet, so [`Runtime::list_containers`] after a restart reports running containers as
//! running and exited ones with their real exit status. Pids are always checked against their
//! recorded start time, and signals go through pidfds, so a reused pid is never signalled.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt as _;

mod exec;

pub use exec::{
    AttachConn, EXEC_SYNC_MAX_OUTPUT, ExecExit, ExecOutput, ExecReader, ExecRequest, ExecSession,
    ExecWriter, TtyResizer,
};

use crate::cgroup::{CgroupDriver, CgroupError, Resources};
use crate::image::{ImageError, ImageStore};
use crate::spec::{
    BindMount, ContainerSpec, ExitState, ProcState, SandboxSpec, now_unix_nanos, proc_start_time,
};

/// Errors of the runtime API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// File system or process I/O failed (may be transient).
    #[error("runtime I/O: {0}")]
    Io(#[from] io::Error),
    /// The image is missing or unusable (`ErrImagePull`/`ImagePullBackOff` territory).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// No sandbox or container with this id.
    #[error("{0} not found")]
    NotFound(String),
    /// The container (or sandbox) could not be started: bad command, mount failure... Not
    /// retryable without a change (`CreateContainerError`/`RunContainerError`).
    #[error("start failed: {0}")]
    StartFailed(String),
    /// The request does not fit the object's state (e.g. starting a container twice).
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// An operation did not finish in time (e.g. an exec past its timeout, then killed).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The configuration is invalid (`CreateContainerConfigError`).
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A state file is corrupt.
    #[error("corrupt state {path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where the image store lives (`<data_dir>/images`).
    pub data_dir: PathBuf,
    /// Where sandbox and container state lives.
    pub run_dir: PathBuf,
    /// The binary started as the shim; it must call [`crate::shim::run_if_requested`] first
    /// in `main` (the `kubeshard` binary does).
    pub shim_program: PathBuf,
    /// cgroup layout ([`CgroupDriver::detect`]).
    pub cgroups: CgroupDriver,
    /// Rotate a container's log above this size.
    pub log_max_bytes: u64,
    /// Keep at most this many log files per container.
    pub log_max_files: u32,
    /// How long a shim may take to report that its process started.
    pub start_timeout: Duration,
}

impl RuntimeConfig {
    /// The defaults for a data dir: run dir `<data_dir>/run`, logs rotated at 10 MiB keeping
    /// 5 files (the kubelet's defaults), a 30 s start timeout, cgroups detected under a
    /// `kubeshard` group.
    pub fn new(data_dir: &Path, shim_program: PathBuf) -> Result<RuntimeConfig, RuntimeError> {
        Ok(RuntimeConfig {
            data_dir: data_dir.to_path_buf(),
            run_dir: data_dir.join("run"),
            shim_program,
            cgroups: CgroupDriver::detect("kubeshard")?,
            log_max_bytes: 10 << 20,
            log_max_files: 5,
            start_timeout: Duration::from_secs(30),
        })
    }
}

/// What a pod sandbox is created from.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
    /// Hostname of the pod (defaults to the pod name).
    pub hostname: String,
    /// The pod's IP, written to /etc/hosts next to the hostname when known.
    pub pod_ip: Option<String>,
    /// DNS servers for /etc/resolv.conf.
    pub dns_servers: Vec<String>,
    /// DNS search domains.
    pub dns_searches: Vec<String>,
    /// Pod-level limits (the pod cgroup).
    pub resources: Resources,
    /// Share the host's network and UTS namespaces (`hostNetwork: true`): no network
    /// namespace of its own, so no veth and no address; the hostname is the host's.
    pub host_network: bool,
}

/// What a container is created from (the kubelet's resolved view of a pod's container).
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// `command` (replaces the image's Entrypoint).
    pub command: Vec<String>,
    /// `args` (replaces the image's Cmd).
    pub args: Vec<String>,
    /// `workingDir` (default: the image's, else `/`).
    pub working_dir: Option<String>,
    /// Environment, applied over the image's.
    pub env: Vec<(String, String)>,
    /// `runAsUser` (or a name); default: the image's User, else root.
    pub user: Option<String>,
    /// `runAsGroup` (or a name).
    pub group: Option<String>,
    /// `supplementalGroups`.
    pub supplementary_gids: Vec<u32>,
    /// Capabilities added to the default set (`NET_ADMIN` or `CAP_NET_ADMIN`; `ALL`).
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it (`ALL` drops every one).
    pub cap_drop: Vec<String>,
    /// `readOnlyRootFilesystem`.
    pub read_only_rootfs: bool,
    /// Join the sandbox's PID namespace (`shareProcessNamespace`).
    pub share_pid: bool,
    /// Limits of the container's cgroup.
    pub resources: Resources,
    /// Volumes.
    pub mounts: Vec<BindMount>,
    /// Log file (default: `<run>/containers/<id>/container.log`).
    pub log_path: Option<PathBuf>,
    /// `stdin`: a stdin kept open across attaches.
    pub stdin: bool,
    /// `stdinOnce`: the first attach's end closes it.
    pub stdin_once: bool,
    /// `tty`: a terminal for stdin, stdout and stderr.
    pub tty: bool,
}

/// A container's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited (or failed to start).
    Exited(ExitState),
    /// Started, but its monitor is gone without recording an exit (e.g. killed).
    Unknown,
}

/// A container's status.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    /// Container id.
    pub id: String,
    /// Its sandbox.
    pub sandbox_id: String,
    /// Name.
    pub name: String,
    /// Image reference and id.
    pub image: String,
    /// Image id.
    pub image_id: String,
    /// State.
    pub state: ContainerState,
    /// Host pid of its first process, once started.
    pub pid: Option<i32>,
    /// Start time, Unix nanoseconds.
    pub started_at_unix_nanos: Option<i64>,
    /// Creation time, Unix nanoseconds.
    pub created_at_unix_nanos: i64,
    /// The CRI log file.
    pub log_path: PathBuf,
}

impl ContainerStatus {
    /// The Kubernetes reason for a terminated container.
    pub fn reason(&self) -> Option<&'static str> {
        match &self.state {
            ContainerState::Exited(e) if e.oom_killed => Some("OOMKilled"),
            ContainerState::Exited(e) if e.start_error.is_some() => Some("StartError"),
            ContainerState::Exited(e) if e.exit_code == 0 => Some("Completed"),
            ContainerState::Exited(_) => Some("Error"),
            _ => None,
        }
    }
}

/// A sandbox's status.
#[derive(Debug, Clone)]
pub struct SandboxStatus {
    /// Sandbox id.
    pub id: String,
    /// Pod name, namespace, uid.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
    /// Host pid of the namespace holder while it runs.
    pub pid: Option<i32>,
    /// Whether the holder runs.
    pub ready: bool,
}

/// The default capabilities of a container (containerd's and docker's default set).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn cap_number(name: &str) -> Result<u32, RuntimeError> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("CAP_").unwrap_or(&n);
    CAP_NAMES
        .iter()
        .position(|c| *c == n)
        .map(|i| i as u32)
        .ok_or_else(|| RuntimeError::InvalidConfig(format!("unknown capability {name:?}")))
}

/// The capability set of a container: the default set, plus `add`, minus `drop`.
pub fn capability_set(add: &[String], drop: &[String]) -> Result<Vec<u32>, RuntimeError> {
    let mut set: Vec<u32> = if drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| cap_number(c))
            .collect::<Result<_, _>>()?
    };
    for d in drop.iter().filter(|d| !d.eq_ignore_ascii_case("ALL")) {
        let n = cap_number(d)?;
        set.retain(|c| *c != n);
    }
    for a in add {
        if a.eq_ignore_ascii_case("ALL") {
            set = (0..CAP_NAMES.len() as u32).collect();
        } else {
            let n = cap_number(a)?;
            if !set.contains(&n) {
                set.push(n);
            }
        }
    }
    set.sort_unstable();
    Ok(set)
}

/// Resolves the argv like the kubelet: `command` replaces the Entrypoint and drops the Cmd;
/// `args` alone replaces the Cmd.
pub fn resolve_argv(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Vec<String> {
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => entrypoint.iter().chain(args).cloned().collect(),
        (true, true) => entrypoint.iter().chain(cmd).cloned().collect(),
    }
}

/// The built-in container runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    cfg: RuntimeConfig,
    images: ImageStore,
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>, RuntimeError> {
    match fs::read(p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| RuntimeError::Corrupt {
                path: p.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<(), RuntimeError> {
    let b = serde_json::to_vec_pretty(v).map_err(|source| RuntimeError::Corrupt {
        path: p.to_path_buf(),
        source,
    })?;
    crate::image::write_replace(p, &b)?;
    Ok(())
}

/// Records a started sandbox holder or container (`state.json`): the shim's and the
/// process's pids with their start times, so a restarted kubelet can tell them from reused pids.
fn record_started(dir: &Path, shim_pid: u32, pid: i32) -> Result<(), RuntimeError> {
    let shim_pid = shim_pid as i32;
    let state = ProcState {
        shim_pid,
        shim_start_time: proc_start_time(shim_pid).unwrap_or(0),
        pid,
        start_time: proc_start_time(pid).unwrap_or(0),
        started_at_unix_nanos: now_unix_nanos(),
    };
    write_json(&dir.join("state.json"), &state)
}

/// The pod's /etc/hosts: localhost entries, then the pod IP with the hostname when known.
fn hosts_file(hostname: &str, pod_ip: Option<&str>) -> String {
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    if let Some(ip) = pod_ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    hosts
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A pidfd for `pid` if it is still the process that started at `start_time`.
fn live_pidfd(pid: i32, start_time: u64) -> Option<OwnedFd> {
    let fd = crate::sys::pidfd_open(pid).ok()?;
    // Checked after opening: if the start time still matches, the fd refers to that process.
    (proc_start_time(pid) == Some(start_time)).then_some(fd)
}

/// Waits until the process behind `fd` exits, at most `timeout`. True if it exited.
async fn pidfd_exited(fd: OwnedFd, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, crate::sys::pidfd_readable(fd)).await,
        Ok(Ok(()))
    )
}

/// Runs `f` on tokio's blocking pool: the runtime's file, cgroup and fork work (each a few
/// syscalls to a few ms) must not hold the async workers, which the kubelet's pod workers,
/// informers and status writes share (100 pods started at once waited up to a second for a
/// worker thread).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Io(io::Error::other(e.to_string())))?
}

impl Runtime {
    /// Opens the runtime (creating its directories).
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        fs::create_dir_all(cfg.run_dir.join("sandboxes"))?;
        fs::create_dir_all(cfg.run_dir.join("containers"))?;
        let images = ImageStore::open(&cfg.data_dir)?;
        Ok(Runtime { cfg, images })
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    fn sandbox_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        if !valid_id(id) {
            return Err(RuntimeError::NotFound(format!("sandbox {id:?}")));
        }
        Ok(self.cfg.run_dir.join("sandboxes").join(id))
    }

    fn container_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        if !valid_id(id) {
            return Err(RuntimeError::NotFound(format!("container {id:?}")));
        }
        Ok(self.cfg.run_dir.join("containers").join(id))
    }

    /// Starts the shim in `mode` for `dir` and waits for its `started <pid>` line: forked
    /// from this process' zygote when it has one ([`crate::zygote`]), else by executing the
    /// shim program.
    async fn spawn_shim(&self, mode: &str, dir: &Path) -> Result<(u32, i32), RuntimeError> {
        if let Some(z) = crate::zygote::get() {
            let (mode_s, dir_b) = (mode.to_string(), dir.to_path_buf());
            let forked = blocking(move || {
                let log = fs::File::create(dir_b.join("shim.log"))?;
                let (out_r, out_w) =
                    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
                let dir_s = dir_b
                    .to_str()
                    .ok_or_else(|| RuntimeError::InvalidConfig("non-UTF-8 run dir".into()))?;
                let pid = z.spawn(&[&mode_s, dir_s], &out_w, &log)?;
                Ok((pid, out_r))
            })
            .await;
            match forked {
                Ok((pid, out_r)) => {
                    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r)?;
                    return self.shim_answer(pid as u32, stdout, dir).await;
                }
                Err(e) => {
                    tracing::warn!(
                        zygote = z.pid(),
                        "forking the shim from the zygote failed, executing it instead: {e}"
                    );
                }
            }
        }
        let (program, mode_s, dir_b) = (
            self.cfg.shim_program.clone(),
            mode.to_string(),
            dir.to_path_buf(),
        );
        // fork+exec of the shim binary (tens of MB) waits for the child's exec: off the
        // async workers.
        let mut child = blocking(move || {
            let log = fs::File::create(dir_b.join("shim.log"))?;
            Ok(tokio::process::Command::new(&program)
                .arg(crate::shim::SHIM_ARG)
                .arg(&mode_s)
                .arg(&dir_b)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(log)
                .kill_on_drop(false)
                .spawn()?)
        })
        .await?;
        let shim_pid = child
            .id()
            .ok_or_else(|| RuntimeError::StartFailed("shim exited".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| RuntimeError::StartFailed("no shim stdout".into()))?;
        // Reap the shim whenever it exits (tokio's orphan queue also would); never block here.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        self.shim_answer(shim_pid, stdout, dir).await
    }

    /// Reads a started shim's first line: `started <pid>` or `error <message>`.
    async fn shim_answer(
        &self,
        shim_pid: u32,
        stdout: impl tokio::io::AsyncRead + Unpin,
        dir: &Path,
    ) -> Result<(u32, i32), RuntimeError> {
        let mut line = String::new();
        let mut reader =
            tokio::io::AsyncReadExt::take(tokio::io::BufReader::new(stdout), 64 * 1024);
        let read = tokio::time::timeout(self.cfg.start_timeout, reader.read_line(&mut line)).await;
        match read {
            Err(_) => Err(RuntimeError::StartFailed(format!(
                "no answer from the shim within {:?}",
                self.cfg.start_timeout
            ))),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(_)) => {
                let line = line.trim();
                if let Some(pid) = line.strip_prefix("started ") {
                    let pid = pid.parse::<i32>().map_err(|_| {
                        RuntimeError::StartFailed(format!("bad shim answer {line:?}"))
                    })?;
                    Ok((shim_pid, pid))
                } else if let Some(msg) = line.strip_prefix("error ") {
                    Err(RuntimeError::StartFailed(msg.to_string()))
                } else {
                    let log = fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
                    Err(RuntimeError::StartFailed(format!(
                        "shim exited without an answer: {}",
                        log.chars().take(2000).collect::<String>()
                    )))
                }
            }
        }
    }

    /// Creates and starts a pod sandbox: network, IPC, UTS and PID namespaces held by a
    /// holder process, the pod cgroup, and the pod's /etc/hosts, /etc/hostname and
    /// /etc/resolv.conf. Returns its id.
    pub async fn create_sandbox(&self, cfg: &SandboxConfig) -> Result<String, RuntimeError> {
        let (this, cfg) = (self.clone(), cfg.clone());
        let (id, dir, pod_cg, _holder_cg) = blocking(move || this.prepare_sandbox(&cfg)).await?;
        match self.spawn_shim("sandbox", &dir).await {
            Ok((shim_pid, pid)) => {
                // The holder is already in its cgroup: the shim moved itself there before it
                // forked the holder (a second move cost 4 `cgroup.procs` writes per pod on v1,
                // each a global cgroup lock that forks and exits on the host also take).
                let d = dir.clone();
                blocking(move || record_started(&d, shim_pid, pid)).await?;
                Ok(id)
            }
            Err(e) => {
                let _ = blocking(move || {
                    let _ = pod_cg.remove(Duration::from_secs(2));
                    let _ = fs::remove_dir_all(&dir);
                    Ok(())
                })
                .await;
                Err(e)
            }
        }
    }

    /// The files and cgroups of a new sandbox: its id, directory, pod and holder cgroups.
    fn prepare_sandbox(
        &self,
        cfg: &SandboxConfig,
    ) -> Result<
        (
            String,
            PathBuf,
            crate::cgroup::Cgroup,
            crate::cgroup::Cgroup,
        ),
        RuntimeError,
    > {
        let id = new_id();
        let dir = self.sandbox_dir(&id)?;
        fs::create_dir_all(&dir)?;
        let hostname = if cfg.hostname.is_empty() {
            cfg.name.clone()
        } else {
            cfg.hostname.clone()
        };
        if hostname.is_empty()
            || hostname.len() > 64
            || !hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            let _ = fs::remove_dir_all(&dir);
            return Err(RuntimeError::InvalidConfig(format!(
                "bad hostname {hostname:?}"
            )));
        }
        // hostNetwork pods see the host's /etc/hosts (upstream does not manage theirs).
        let hosts = match cfg.host_network {
            true => fs::read_to_string("/etc/hosts")
                .unwrap_or_else(|_| hosts_file(&hostname, cfg.pod_ip.as_deref())),
            false => hosts_file(&hostname, cfg.pod_ip.as_deref()),
        };
        fs::write(dir.join("hosts"), hosts)?;
        fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        let mut resolv = String::new();
        for s in &cfg.dns_servers {
            resolv.push_str(&format!("nameserver {s}\n"));
        }
        if !cfg.dns_searches.is_empty() {
            resolv.push_str(&format!("search {}\n", cfg.dns_searches.join(" ")));
        }
        if resolv.is_empty() {
            resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        }
        fs::write(dir.join("resolv.conf"), resolv)?;
        let pod_cg = self
            .cfg
            .cgroups
            .create(&format!("pod-{id}"), &cfg.resources)?;
        let holder_cg = self
            .cfg
            .cgroups
            .create(&format!("pod-{id}/sandbox"), &Resources::default())?;
        let spec = SandboxSpec {
            id: id.clone(),
            name: cfg.name.clone(),
            namespace: cfg.namespace.clone(),
            uid: cfg.uid.clone(),
            hostname,
            host_network: cfg.host_network,
            cgroup: pod_cg.clone(),
            holder_cgroup: holder_cg.clone(),
        };
        if let Err(e) = write_json(&dir.join("sandbox.json"), &spec) {
            let _ = pod_cg.remove(Duration::from_secs(2));
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok((id, dir, pod_cg, holder_cg))
    }

    /// Records the pod's IP in the sandbox's /etc/hosts once the network has given it one
    /// (the sandbox, and so its network namespace, exists before the IP is known). The file
    /// is rewritten in place: containers bind-mount it, and a rename would leave them the old
    /// inode.
    pub fn set_sandbox_pod_ip(&self, id: &str, pod_ip: &str) -> Result<(), RuntimeError> {
        if pod_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(RuntimeError::InvalidConfig(format!(
                "bad pod IP {pod_ip:?}"
            )));
        }
        let (spec, _) = self.sandbox_spec(id)?;
        let dir = self.sandbox_dir(id)?;
        fs::write(dir.join("hosts"), hosts_file(&spec.hostname, Some(pod_ip)))?;
        Ok(())
    }

    fn sandbox_spec(&self, id: &str) -> Result<(SandboxSpec, Option<ProcState>), RuntimeError> {
        let dir = self.sandbox_dir(id)?;
        let spec: SandboxSpec = read_json(&dir.join("sandbox.json"))?
            .ok_or_else(|| RuntimeError::NotFound(format!("sandbox {id}")))?;
        let state: Option<ProcState> = read_json(&dir.join("state.json"))?;
        Ok((spec, state))
    }

    /// Creates a container in a sandbox (image unpacked, rootfs directories, cgroup, resolved
    /// spec on disk); [`Runtime::start_container`] runs it. Returns its id.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        cfg: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let (this, sandbox_id, cfg) = (self.clone(), sandbox_id.to_string(), cfg.clone());
        blocking(move || this.create_container_blocking(&sandbox_id, &cfg)).await
    }

    fn create_container_blocking(
        &self,
        sandbox_id: &str,
        cfg: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let (sb, sb_state) = self.sandbox_spec(sandbox_id)?;
        let sb_state = sb_state.ok_or_else(|| {
            RuntimeError::InvalidState(format!("sandbox {sandbox_id} not running"))
        })?;
        let image = self.images.get(&cfg.image)?;
        let layers = self.images.ensure_unpacked(&image)?;
        let exec = &image.exec;
        let argv = resolve_argv(
            &cfg.command,
            &cfg.args,
            exec.entrypoint.as_deref().unwrap_or(&[]),
            exec.cmd.as_deref().unwrap_or(&[]),
        );
        if argv.is_empty() {
            return Err(RuntimeError::InvalidConfig(
                "no command: neither the pod nor the image names one".into(),
            ));
        }
        let mut env: Vec<String> = exec.env.clone().unwrap_or_default();
        let mut set_env = |k: &str, v: &str| {
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != k);
            env.push(format!("{k}={v}"));
        };
        set_env("HOSTNAME", &sb.hostname);
        for (k, v) in &cfg.env {
            if k.is_empty() || k.contains('=') {
                return Err(RuntimeError::InvalidConfig(format!("bad env name {k:?}")));
            }
            set_env(k, v);
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        let capabilities = capability_set(&cfg.cap_add, &cfg.cap_drop)?;
        let id = new_id();
        let dir = self.container_dir(&id)?;
        for d in ["upper", "work", "rootfs"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let layers_dir = self.images.layers_dir();
        let lower_dirs = layers
            .iter()
            .rev()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let cgroup = match self
            .cfg
            .cgroups
            .create(&format!("pod-{sandbox_id}/{id}"), &cfg.resources)
        {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let sbdir = self.sandbox_dir(sandbox_id)?;
        let mut mounts = vec![
            BindMount {
                host_path: sbdir.join("hosts"),
                container_path: "/etc/hosts".into(),
                read_only: false,
            },
            BindMount {
                host_path: sbdir.join("hostname"),
                container_path: "/etc/hostname".into(),
                read_only: false,
            },
            BindMount {
                host_path: sbdir.join("resolv.conf"),
                container_path: "/etc/resolv.conf".into(),
                read_only: false,
            },
        ];
        mounts.extend(cfg.mounts.iter().cloned());
        let spec = ContainerSpec {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            name: cfg.name.clone(),
            image: cfg.image.clone(),
            image_id: image.record.config.to_string(),
            created_at_unix_nanos: now_unix_nanos(),
            sandbox_pid: sb_state.pid,
            sandbox_start_time: sb_state.start_time,
            share_pid: cfg.share_pid,
            argv,
            env,
            cwd: cfg
                .working_dir
                .clone()
                .or_else(|| exec.working_dir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            user: cfg
                .user
                .clone()
                .or_else(|| exec.user.clone())
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "0".into()),
            group: cfg.group.clone(),
            supplementary_gids: cfg.supplementary_gids.clone(),
            capabilities,
            read_only_rootfs: cfg.read_only_rootfs,
            lower_dirs,
            layers_dir,
            upper_dir: dir.join("upper"),
            work_dir: dir.join("work"),
            rootfs: dir.join("rootfs"),
            mounts,
            shm_size_bytes: 64 << 20,
            cgroup,
            log_path: cfg
                .log_path
                .clone()
                .unwrap_or_else(|| dir.join("container.log")),
            log_max_bytes: self.cfg.log_max_bytes,
            log_max_files: self.cfg.log_max_files,
            stdin: cfg.stdin,
            stdin_once: cfg.stdin_once,
            tty: cfg.tty,
        };
        write_json(&dir.join("spec.json"), &spec)?;
        Ok(id)
    }

    fn container_files(
        &self,
        id: &str,
    ) -> Result<(PathBuf, ContainerSpec, Option<ProcState>, Option<ExitState>), RuntimeError> {
        let dir = self.container_dir(id)?;
        let spec: ContainerSpec = read_json(&dir.join("spec.json"))?
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        let state = read_json(&dir.join("state.json"))?;
        let exit = read_json(&dir.join("exit.json"))?;
        Ok((dir, spec, state, exit))
    }

    /// Starts a created container: returns once its command runs (after `execve`), or with
    /// [`RuntimeError::StartFailed`] naming what failed (the container is then exited with
    /// the start error recorded).
    pub async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let (this, id_s) = (self.clone(), id.to_string());
        let (dir, _spec, state, exit) = blocking(move || this.container_files(&id_s)).await?;
        if state.is_some() || exit.is_some() {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} was already started"
            )));
        }
        let (shim_pid, pid) = self.spawn_shim("container", &dir).await?;
        // A new file (temp + rename): off the async workers, as every runtime file write is
        // (an inode allocation took milliseconds on a file system with many recent deletions).
        blocking(move || record_started(&dir, shim_pid, pid)).await
    }

    /// The status of a container, from its files (works the same after a kubelet restart).
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let (_dir, spec, state, exit) = self.container_files(id)?;
        let st = match (&state, exit) {
            (_, Some(e)) => ContainerState::Exited(e),
            (None, None) => ContainerState::Created,
            (Some(s), None) => {
                if proc_start_time(s.shim_pid) == Some(s.shim_start_time) {
                    ContainerState::Running
                } else {
                    // The shim may have just written exit.json: read once more.
                    match read_json::<ExitState>(&self.container_dir(id)?.join("exit.json"))? {
                        Some(e) => ContainerState::Exited(e),
                        None => ContainerState::Unknown,
                    }
                }
            }
        };
        Ok(ContainerStatus {
            id: spec.id,
            sandbox_id: spec.sandbox_id,
            name: spec.name,
            image: spec.image,
            image_id: spec.image_id,
            state: st,
            pid: state.map(|s| s.pid),
            started_at_unix_nanos: state.map(|s| s.started_at_unix_nanos),
            created_at_unix_nanos: spec.created_at_unix_nanos,
            log_path: spec.log_path,
        })
    }

    /// Waits until the container is no longer running (watching its shim's pidfd), at most
    /// `timeout`, and returns its status.
    pub async fn wait_container(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<ContainerStatus, RuntimeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let st = self.container_status(id)?;
            if st.state != ContainerState::Running {
                return Ok(st);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(st);
            }
            let (_, _, state, _) = self.container_files(id)?;
            match state.and_then(|s| live_pidfd(s.shim_pid, s.shim_start_time)) {
                Some(fd) => {
                    pidfd_exited(fd, deadline - now).await;
                }
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Stops a container: SIGTERM, then SIGKILL (to every process of its cgroup) once
    /// `grace` has passed. Returns the final status.
    pub async fn stop_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<ContainerStatus, RuntimeError> {
        let (_dir, spec, state, _) = self.container_files(id)?;
        let Some(state) = state else {
            return self.container_status(id);
        };
        if let Some(fd) = live_pidfd(state.pid, state.start_time) {
            if !grace.is_zero() {
                let _ = crate::sys::pidfd_send_signal(&fd, libc::SIGTERM);
                let st = self.wait_container(id, grace).await?;
                if st.state != ContainerState::Running {
                    return Ok(st);
                }
            }
            let _ = crate::sys::pidfd_send_signal(&fd, libc::SIGKILL);
        }
        spec.cgroup.kill_all();
        let st = self.wait_container(id, Duration::from_secs(10)).await?;
        Ok(st)
    }

    /// Removes a container (stopping it at once if it still runs): its cgroup, its files,
    /// and its log when the log is inside the container's directory.
    pub async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let st = self.container_status(id)?;
        if st.state == ContainerState::Running {
            self.stop_container(id, Duration::ZERO).await?;
        }
        let (dir, spec, state, _) = self.container_files(id)?;
        // The shim exits right after recording the exit; wait for it (bounded).
        if let Some(s) = state
            && let Some(fd) = live_pidfd(s.shim_pid, s.shim_start_time)
        {
            pidfd_exited(fd, Duration::from_secs(5)).await;
        }
        spec.cgroup.remove(Duration::from_secs(5))?;
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// All containers on disk (ids), for adoption after a restart.
    pub fn list_containers(&self) -> Result<Vec<ContainerStatus>, RuntimeError> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.cfg.run_dir.join("containers"))?.take(100_000) {
            let name = e?.file_name().to_string_lossy().into_owned();
            match self.container_status(&name) {
                Ok(s) => out.push(s),
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|s| s.created_at_unix_nanos);
        Ok(out)
    }

    /// The status of a sandbox.
    pub fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        let (spec, state) = self.sandbox_spec(id)?;
        let alive = state.filter(|s| proc_start_time(s.pid) == Some(s.start_time));
        Ok(SandboxStatus {
            id: spec.id,
            name: spec.name,
            namespace: spec.namespace,
            uid: spec.uid,
            pid: alive.map(|s| s.pid),
            ready: alive.is_some(),
        })
    }

    /// The pod cgroup of a sandbox (for stats and eviction).
    pub fn sandbox_cgroup(&self, id: &str) -> Result<crate::cgroup::Cgroup, RuntimeError> {
        Ok(self.sandbox_spec(id)?.0.cgroup)
    }

    /// A container's cgroup and its overlay upper directory (what it wrote to its root
    /// file system).
    pub fn container_usage_paths(
        &self,
        id: &str,
    ) -> Result<(crate::cgroup::Cgroup, PathBuf), RuntimeError> {
        let (_, spec, _, _) = self.container_files(id)?;
        Ok((spec.cgroup, spec.upper_dir))
    }

    /// The runtime's data directory (images, run state).
    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    /// All sandboxes on disk.
    pub fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.cfg.run_dir.join("sandboxes"))?.take(100_000) {
            let name = e?.file_name().to_string_lossy().into_owned();
            match self.sandbox_status(&name) {
                Ok(s) => out.push(s),
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Stops a sandbox: its containers (killed at once), then its holder.
    pub async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let (spec, state) = self.sandbox_spec(id)?;
        for c in self.list_containers()? {
            if c.sandbox_id == id && c.state == ContainerState::Running {
                self.stop_container(&c.id, Duration::ZERO).await?;
            }
        }
        if let Some(s) = state
            && let Some(fd) = live_pidfd(s.pid, s.start_time)
        {
            let _ = crate::sys::pidfd_send_signal(&fd, libc::SIGKILL);
            pidfd_exited(fd, Duration::from_secs(5)).await;
        }
        spec.cgroup.kill_all();
        spec.holder_cgroup.kill_all();
        Ok(())
    }

    /// Removes a sandbox: stops it, removes its containers, its cgroups and its files.
    pub async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_sandbox(id).await?;
        let mut seen = HashSet::new();
        for c in self.list_containers()? {
            if c.sandbox_id == id && seen.insert(c.id.clone()) {
                self.remove_container(&c.id).await?;
            }
        }
        let (spec, state) = self.sandbox_spec(id)?;
        if let Some(s) = state
            && let Some(fd) = live_pidfd(s.shim_pid, s.shim_start_time)
        {
            pidfd_exited(fd, Duration::from_secs(5)).await;
        }
        spec.cgroup.remove(Duration::from_secs(5))?;
        fs::remove_dir_all(self.sandbox_dir(id)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn argv_follows_kubernetes_rules() {
        let ep = s(&["/ep"]);
        let cmd = s(&["c1"]);
        assert_eq!(resolve_argv(&[], &[], &ep, &cmd), s(&["/ep", "c1"]));
        assert_eq!(resolve_argv(&[], &s(&["a"]), &ep, &cmd), s(&["/ep", "a"]));
        assert_eq!(resolve_argv(&s(&["x"]), &[], &ep, &cmd), s(&["x"]));
        assert_eq!(
            resolve_argv(&s(&["x"]), &s(&["a"]), &ep, &cmd),
            s(&["x", "a"])
        );
    }

    #[test]
    fn capability_sets() {
        let d = capability_set(&[], &[]).unwrap();
        assert_eq!(d.len(), 14);
        assert!(!d.contains(&21)); // SYS_ADMIN
        let x = capability_set(&s(&["CAP_NET_ADMIN"]), &s(&["NET_RAW"])).unwrap();
        assert!(x.contains(&12) && !x.contains(&13));
        assert_eq!(
            capability_set(&s(&["KILL"]), &s(&["ALL"])).unwrap(),
            vec![5]
        );
        assert!(capability_set(&s(&["NOPE"]), &[]).is_err());
    }
}
