//! What the runtime records on disk for a sandbox or a container, and hands to the shim: the
//! fully resolved process and mount description (the shim reads no image metadata).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;

/// A bind mount into the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (file or directory).
    pub host_path: PathBuf,
    /// Absolute path inside the container (resolved inside its root).
    pub container_path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The resolved description of one container, written by the runtime to
/// `<run>/containers/<id>/spec.json` and executed by the shim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container id.
    pub id: String,
    /// Sandbox id.
    pub sandbox_id: String,
    /// Container name (unique in its pod).
    pub name: String,
    /// The image reference it was created from, and the image id (config digest).
    pub image: String,
    /// Image id.
    pub image_id: String,
    /// When it was created, Unix nanoseconds.
    pub created_at_unix_nanos: i64,
    /// Pid of the sandbox holder (its namespaces are joined through `/proc/<pid>/ns`).
    pub sandbox_pid: i32,
    /// Start time of the sandbox holder (clock ticks since boot) to detect pid reuse.
    pub sandbox_start_time: u64,
    /// Join the sandbox's PID namespace instead of getting a private one.
    pub share_pid: bool,
    /// argv, already resolved from command/args and the image's Entrypoint/Cmd.
    pub argv: Vec<String>,
    /// `NAME=value` environment.
    pub env: Vec<String>,
    /// Working directory (created when missing).
    pub cwd: String,
    /// User: a numeric uid or a name looked up in the rootfs' /etc/passwd.
    pub user: String,
    /// Group: a numeric gid or name (None: the user's primary group).
    pub group: Option<String>,
    /// Extra supplementary gids.
    pub supplementary_gids: Vec<u32>,
    /// Capability numbers the process keeps (bounding, permitted, effective, inheritable).
    pub capabilities: Vec<u32>,
    /// Keep the root file system read-only.
    pub read_only_rootfs: bool,
    /// Overlay lower directories, top first, relative to `layers_dir`.
    pub lower_dirs: Vec<String>,
    /// The image store's layer directory (the overlay is mounted with it as cwd to keep the
    /// option string short).
    pub layers_dir: PathBuf,
    /// Overlay upper, work and mount-point directories.
    pub upper_dir: PathBuf,
    /// Overlay work directory.
    pub work_dir: PathBuf,
    /// The merged root (a mount point inside the container's mount namespace only).
    pub rootfs: PathBuf,
    /// /etc/hosts, /etc/hostname and /etc/resolv.conf of the pod, and volumes.
    pub mounts: Vec<BindMount>,
    /// Size of the container's /dev/shm in bytes.
    pub shm_size_bytes: u64,
    /// The container's cgroup.
    pub cgroup: Cgroup,
    /// CRI log file.
    pub log_path: PathBuf,
    /// Rotate the log when it would grow past this size.
    pub log_max_bytes: u64,
    /// Keep at most this many log files (the live one included).
    pub log_max_files: u32,
    /// Give the container a stdin the shim keeps open for attaches (`stdin: true`).
    #[serde(default)]
    pub stdin: bool,
    /// Close that stdin when the first attached client ends (`stdinOnce: true`).
    #[serde(default)]
    pub stdin_once: bool,
    /// Run the container on a terminal (`tty: true`): stdout and stderr are its output.
    #[serde(default)]
    pub tty: bool,
}

/// What the runtime records for a pod sandbox in `<run>/sandboxes/<id>/sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Sandbox id.
    pub id: String,
    /// Pod name, namespace and uid (for listing).
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
    /// Hostname of the pod's UTS namespace.
    pub hostname: String,
    /// The sandbox shares the host's network and UTS namespaces (`hostNetwork: true`).
    #[serde(default)]
    pub host_network: bool,
    /// The pod's cgroup (parent of the containers' and the holder's).
    pub cgroup: Cgroup,
    /// The holder's leaf cgroup.
    pub holder_cgroup: Cgroup,
}

/// The runtime state of a started process, `state.json` beside the spec.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcState {
    /// Host pid of the monitor (shim) process.
    pub shim_pid: i32,
    /// Its start time (clock ticks since boot, /proc/<pid>/stat field 22).
    pub shim_start_time: u64,
    /// Host pid of the container's first process (or the sandbox holder).
    pub pid: i32,
    /// Its start time.
    pub start_time: u64,
    /// When it started, Unix nanoseconds.
    pub started_at_unix_nanos: i64,
}

/// How a container's process ended, `exit.json` (written by the shim).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitState {
    /// Exit code (128 + signal when killed by a signal, as shells report it).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// The kernel's OOM killer acted in the container's cgroup.
    pub oom_killed: bool,
    /// When it ended, Unix nanoseconds.
    pub finished_at_unix_nanos: i64,
    /// Set when the process could not be started at all (bad command, mount failure).
    pub start_error: Option<String>,
}

/// The start time of a process (field 22 of /proc/<pid>/stat), to tell a pid apart from a
/// later process that reused it.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Unix time now in nanoseconds.
pub fn now_unix_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}
