//! The container's root file system, set up by the container's first process in its own
//! mount namespace before it executes the command: overlay over the image layers,
//! `pivot_root`, /proc, a minimal /dev, read-only /sys, the pod's /etc files and volumes bound
//! in, masked and read-only kernel paths, and a read-only root when asked.
//!
//! Bind sources are opened (`O_PATH`) before `pivot_root` and mounted afterwards through
//! `/proc/self/fd/N`, and every target is created after `pivot_root`, so a symlink in the
//! image resolves inside the container's root and can never point a mount at the host.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::Path;

use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::spec::ContainerSpec;

/// A setup step failed; the message names the step (sent to the shim and reported as the
/// container's start error).
pub(crate) type SetupResult<T> = Result<T, String>;

fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> SetupResult<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Where the old root is put by pivot_root (inside the new root, removed right after).
const OLD_ROOT_DIR: &str = ".kubeshard-oldroot";

/// Files masked with /dev/null and directories masked with an empty read-only tmpfs (as
/// runc's default masked paths).
const MASKED: [&str; 8] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/acpi",
    "/proc/scsi",
    "/sys/firmware",
];
/// Paths bound read-only over themselves.
const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the root file system and moves into it. Called in the container's first process
/// after `unshare(CLONE_NEWNS)`.
pub(crate) fn setup(spec: &ContainerSpec) -> SetupResult<()> {
    step(
        "making mounts private",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    // Overlay: lowerdirs relative to the layer directory keep the option string short.
    step(
        "chdir to layers",
        std::env::set_current_dir(&spec.layers_dir),
    )?;
    let lower = if spec.lower_dirs.is_empty() {
        // No layers: an empty lower directory (the work dir's sibling).
        let empty = spec.upper_dir.with_file_name("empty");
        step("empty lower dir", fs::create_dir_all(&empty))?;
        empty.display().to_string()
    } else {
        spec.lower_dirs.join(":")
    };
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        spec.upper_dir.display(),
        spec.work_dir.display()
    );
    step(
        "mounting overlay",
        mount(
            Some("overlay"),
            &spec.rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        ),
    )?;
    // Open bind sources now; after pivot_root they are reachable only through these fds.
    let mut sources: Vec<(OwnedFd, &crate::spec::BindMount, bool)> = Vec::new();
    for m in &spec.mounts {
        let fd = step(
            &format!("opening mount source {}", m.host_path.display()),
            open(
                &m.host_path,
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
        )?;
        let is_dir = m.host_path.is_dir();
        sources.push((fd, m, is_dir));
    }
    step("chdir to rootfs", std::env::set_current_dir(&spec.rootfs))?;
    // The old root goes to a directory inside the new one and stays attached until the binds
    // are done (a bind source must be a mount of this namespace).
    match fs::create_dir(OLD_ROOT_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {OLD_ROOT_DIR}: {e}")),
    }
    step("pivot_root", nix::unistd::pivot_root(".", OLD_ROOT_DIR))?;
    step("chdir /", std::env::set_current_dir("/"))?;
    let old = format!("/{OLD_ROOT_DIR}");
    step(
        "making the old root private",
        mount(
            None::<&str>,
            old.as_str(),
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;

    mount_proc()?;
    mount_dev(spec.shm_size_bytes)?;
    mkdir_p("/sys")?;
    step(
        "mounting /sys",
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ),
    )?;
    for (fd, m, is_dir) in &sources {
        bind_from_fd(fd, &m.container_path, *is_dir, m.read_only)?;
    }
    drop(sources);
    step(
        "detaching old root",
        umount2(old.as_str(), MntFlags::MNT_DETACH),
    )?;
    step("removing the old root dir", fs::remove_dir(&old))?;
    mask_paths()?;
    if spec.read_only_rootfs {
        step(
            "remounting / read-only",
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None::<&str>,
            ),
        )?;
    }
    Ok(())
}

fn mkdir_p(p: &str) -> SetupResult<()> {
    step(
        &format!("creating {p}"),
        fs::DirBuilder::new().recursive(true).mode(0o755).create(p),
    )
}

fn mount_proc() -> SetupResult<()> {
    mkdir_p("/proc")?;
    step(
        "mounting /proc",
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ),
    )
}

fn mount_dev(shm_size: u64) -> SetupResult<()> {
    mkdir_p("/dev")?;
    step(
        "mounting /dev",
        mount(
            Some("tmpfs"),
            "/dev",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = format!("/dev/{name}");
        step(
            &format!("mknod {p}"),
            mknod(
                p.as_str(),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            ),
        )?;
        // mknod honours the umask: set the mode explicitly.
        step(
            &format!("chmod {p}"),
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                p.as_str(),
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            ),
        )?;
    }
    mkdir_p("/dev/pts")?;
    step(
        "mounting /dev/pts",
        mount(
            Some("devpts"),
            "/dev/pts",
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    mkdir_p("/dev/shm")?;
    let shm = format!("mode=1777,size={}", shm_size.max(4096));
    step(
        "mounting /dev/shm",
        mount(
            Some("shm"),
            "/dev/shm",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(shm.as_str()),
        ),
    )?;
    mkdir_p("/dev/mqueue")?;
    // mqueue belongs to the (pod's) IPC namespace; failure is not fatal on kernels without it.
    let _ = mount(
        Some("mqueue"),
        "/dev/mqueue",
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/core", "/proc/kcore"),
    ] {
        step(&format!("symlink {link}"), symlink(target, link))?;
    }
    Ok(())
}

/// Binds the source behind `fd` onto `target` (created inside the root as a file or
/// directory as the source is).
fn bind_from_fd(fd: &OwnedFd, target: &str, is_dir: bool, read_only: bool) -> SetupResult<()> {
    let t = Path::new(target);
    if !t.is_absolute() {
        return Err(format!("mount target {target} is not absolute"));
    }
    if let Some(parent) = t.parent() {
        step(
            &format!("creating {}", parent.display()),
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent),
        )?;
    }
    if is_dir {
        if !t.is_dir() {
            step(&format!("creating {target}"), fs::create_dir(t))?;
        }
    } else if !t.exists() {
        step(
            &format!("creating {target}"),
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(t),
        )?;
    }
    let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
    step(
        &format!("binding {target}"),
        mount(
            Some(src.as_str()),
            t,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    if read_only {
        step(
            &format!("remounting {target} read-only"),
            mount(
                None::<&str>,
                t,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None::<&str>,
            ),
        )?;
    }
    Ok(())
}

fn mask_paths() -> SetupResult<()> {
    for p in MASKED {
        let path = Path::new(p);
        let Ok(meta) = fs::symlink_metadata(path) else {
            continue;
        };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        step(&format!("masking {p}"), r)?;
    }
    for p in READ_ONLY {
        let path = Path::new(p);
        if !path.exists() {
            continue;
        }
        step(
            &format!("binding {p}"),
            mount(
                Some(path),
                path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
        step(
            &format!("remounting {p} read-only"),
            mount(
                None::<&str>,
                path,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
    }
    Ok(())
}
