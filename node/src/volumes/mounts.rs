//! tmpfs mounts for memory-backed volumes, the mount table, and hostPath type checks.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::VolumeError;

/// Mount points of this mount namespace (field 5 of /proc/self/mountinfo, unescaped).
pub(super) fn mount_points() -> Result<Vec<PathBuf>, VolumeError> {
    let s = fs::read_to_string("/proc/self/mountinfo").map_err(|source| VolumeError::Io {
        context: "reading /proc/self/mountinfo".into(),
        source,
    })?;
    Ok(s.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point.
pub(super) fn is_mount_point(path: &Path) -> Result<bool, VolumeError> {
    Ok(mount_points()?.iter().any(|p| p == path))
}

/// Mounts a tmpfs on `dir` unless one is there already. `size_bytes` None: the kernel's
/// default (half the memory).
pub(super) fn ensure_tmpfs(dir: &Path, size_bytes: Option<u64>) -> Result<(), VolumeError> {
    if is_mount_point(dir)? {
        return Ok(());
    }
    let mut opts = String::from("mode=0777");
    if let Some(s) = size_bytes {
        // tmpfs rounds up to pages; a zero size would mean "unlimited".
        opts.push_str(&format!(",size={}", s.max(4096)));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| VolumeError::Mount {
        path: dir.to_path_buf(),
        reason: format!("mount -t tmpfs: {e}"),
    })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).map_err(|source| VolumeError::Io {
        context: format!("chmod {}", dir.display()),
        source,
    })
}

/// Unmounts every mount at or below `dir`, deepest first. Returns the ones that stay.
pub(super) fn unmount_below(dir: &Path) -> Result<Vec<PathBuf>, VolumeError> {
    let mut below: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    below.dedup();
    for p in &below {
        if let Err(e) = nix::mount::umount2(p, MntFlags::empty()) {
            tracing::debug!(path = %p.display(), error = %e, "umount busy, detaching");
            let _ = nix::mount::umount2(p, MntFlags::MNT_DETACH);
        }
    }
    Ok(mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// Checks (and for the *OrCreate types, creates) a hostPath as upstream's `checkType`.
pub(super) fn check_host_path(path: &Path, kind: Option<&str>) -> Result<(), VolumeError> {
    let fail = |what: &str| {
        VolumeError::HostPathType(format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        ))
    };
    let kind = kind.unwrap_or("");
    let meta = fs::metadata(path);
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .create(path)
                    .map_err(|source| VolumeError::Io {
                        context: format!("creating {}", path.display()),
                        source,
                    })?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(|source| {
                    VolumeError::Io {
                        context: format!("chmod {}", path.display()),
                        source,
                    }
                })?;
                return Ok(());
            }
            match meta {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(fail("a directory")),
            }
        }
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(fail("a directory")),
        },
        "FileOrCreate" => {
            if meta.is_err() {
                // As upstream: the parent must exist; the file is created empty, 0644.
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|source| VolumeError::Io {
                        context: format!("creating {}", path.display()),
                        source,
                    })?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(|source| {
                    VolumeError::Io {
                        context: format!("chmod {}", path.display()),
                        source,
                    }
                })?;
                return Ok(());
            }
            match meta {
                Ok(m) if m.is_file() => Ok(()),
                _ => Err(fail("a file")),
            }
        }
        "File" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(fail("a file")),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => Err(fail("a socket file")),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => Err(fail("a character device")),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => Err(fail("a block device")),
        },
        other => Err(VolumeError::HostPathType(format!(
            "{other} is an invalid volume type"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\01"), "/x\\01");
    }

    #[test]
    fn host_path_types() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("sub/dir");
        assert!(check_host_path(&dir, Some("Directory")).is_err());
        check_host_path(&dir, Some("DirectoryOrCreate")).unwrap();
        assert!(dir.is_dir());
        check_host_path(&dir, Some("Directory")).unwrap();
        let e = check_host_path(&dir, Some("File")).unwrap_err().to_string();
        assert!(e.ends_with("is not a file"), "{e}");
        let f = d.path().join("f");
        check_host_path(&f, Some("FileOrCreate")).unwrap();
        assert!(f.is_file());
        assert!(check_host_path(&f, Some("DirectoryOrCreate")).is_err());
        assert!(check_host_path(&d.path().join("nope/f"), Some("FileOrCreate")).is_err());
        assert!(check_host_path(&f, Some("Socket")).is_err());
        assert!(check_host_path(Path::new("/dev/null"), Some("CharDevice")).is_ok());
        assert!(check_host_path(&f, Some("BlockDevice")).is_err());
        assert!(check_host_path(&f, Some("Bogus")).is_err());
        check_host_path(&d.path().join("absent"), None).unwrap();
        let sock = d.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        check_host_path(&sock, Some("Socket")).unwrap();
    }
}
