//! Upstream's atomic writer (pkg/volume/util/atomic_writer.go): the files of a configMap,
//! secret, downwardAPI or projected volume live in a timestamped directory; `..data` is a
//! symlink to it, swapped by rename; the paths the container sees are symlinks through
//! `..data`. A reader therefore sees either the whole old set or the whole new one.
//!
//! ```text
//! <volume>/..2026_11_24_09_00_00.123456789_42   files of the current payload
//! <volume>/..data -> ..2026_11_24_09_00_00.123456789_42
//! <volume>/key    -> ..data/key
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::VolumeError;

/// The symlink to the current timestamped directory.
pub const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// Longest payload path, and longest path component (as upstream's validation).
const MAX_PATH_LEN: usize = 4096;
const MAX_NAME_LEN: usize = 255;

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// Content.
    pub data: Vec<u8>,
    /// Permission bits (0..=0o777).
    pub mode: u32,
}

/// A volume's files by relative path.
pub type Payload = BTreeMap<String, FileProjection>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

/// Checks a payload path as upstream's `validatePath`: relative, no `..` component, not
/// starting with `..`, bounded lengths. Returns it cleaned (no empty or `.` components).
pub fn clean_path(p: &str) -> Result<String, VolumeError> {
    let bad = |reason: &str| VolumeError::InvalidPath {
        path: p.to_owned(),
        reason: reason.to_owned(),
    };
    if p.is_empty() {
        return Err(bad("must not be empty"));
    }
    if p.len() > MAX_PATH_LEN {
        return Err(bad("too long"));
    }
    if p.starts_with('/') {
        return Err(bad("must be relative"));
    }
    if p.starts_with("..") {
        return Err(bad("must not start with '..'"));
    }
    if p.contains('\0') {
        return Err(bad("must not contain NUL"));
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad("must not contain '..'")),
            c if c.len() > MAX_NAME_LEN => return Err(bad("component too long")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(bad("must not be empty"));
    }
    Ok(parts.join("/"))
}

/// Validates and cleans every path of `payload`, refusing a file that is also a directory
/// of another.
fn validate(payload: &Payload) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    for (p, f) in payload {
        if f.mode > 0o777 {
            return Err(VolumeError::InvalidPath {
                path: p.clone(),
                reason: format!("mode {:o} out of range", f.mode),
            });
        }
        out.insert(clean_path(p)?, f.clone());
    }
    for p in out.keys() {
        let mut prefix = String::new();
        for c in p.split('/') {
            if !prefix.is_empty() && out.contains_key(&prefix) {
                return Err(VolumeError::InvalidPath {
                    path: p.clone(),
                    reason: format!("{prefix} is both a file and a directory"),
                });
            }
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
        }
    }
    Ok(out)
}

/// The top-level names a payload makes visible.
fn top_level(payload: &Payload) -> BTreeSet<String> {
    payload
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p).to_owned())
        .collect()
}

/// The current timestamped directory's name, if `..data` points at a sane one.
fn current_ts_dir(target: &Path) -> Option<String> {
    let link = fs::read_link(target.join(DATA_DIR)).ok()?;
    let name = link.to_str()?.to_owned();
    (name.starts_with("..") && !name.contains('/') && name != DATA_DIR && name != "..")
        .then_some(name)
}

/// Whether the files under `dir` are exactly `payload` (content and mode).
fn matches(dir: &Path, payload: &Payload) -> bool {
    let mut count = 0usize;
    if !count_files(dir, &mut count, 0) || count != payload.len() {
        return false;
    }
    payload.iter().all(|(p, f)| {
        let path = dir.join(p);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o7777 == f.mode => {
                fs::read(&path).is_ok_and(|d| d == f.data)
            }
            _ => false,
        }
    })
}

/// Counts regular files under `dir` (false on anything unexpected: a symlink, too deep).
fn count_files(dir: &Path, count: &mut usize, depth: usize) -> bool {
    if depth > 64 {
        return false;
    }
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    for e in rd {
        let Ok(e) = e else { return false };
        let Ok(t) = e.file_type() else { return false };
        if t.is_dir() {
            if !count_files(&e.path(), count, depth + 1) {
                return false;
            }
        } else if t.is_file() {
            *count += 1;
        } else {
            return false;
        }
    }
    true
}

fn write_file(path: &Path, f: &FileProjection) -> Result<(), VolumeError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(f.mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    file.write_all(&f.data)
        .map_err(io(format!("writing {}", path.display())))?;
    // The umask must not narrow the mode asked for.
    file.set_permissions(fs::Permissions::from_mode(f.mode))
        .map_err(io(format!("chmod {}", path.display())))?;
    Ok(())
}

fn mkdir_p(base: &Path, rel: &str) -> Result<(), VolumeError> {
    let mut cur = base.to_path_buf();
    for c in rel.split('/') {
        cur.push(c);
        match fs::create_dir(&cur) {
            Ok(()) => fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                .map_err(io(format!("chmod {}", cur.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating {}", cur.display()))(e)),
        }
    }
    Ok(())
}

fn new_ts_name() -> String {
    let now = chrono::Utc::now();
    format!(
        "..{}_{}",
        now.format("%Y_%m_%d_%H_%M_%S.%9f"),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..8)
            .unwrap_or("0")
    )
}

/// Writes `payload` into `target` (an existing directory) atomically. Returns whether
/// anything changed. Safe to call again with the same payload (nothing is rewritten) and
/// after a crash in the middle (stale timestamped directories are removed).
pub fn write(target: &Path, payload: &Payload) -> Result<bool, VolumeError> {
    let payload = validate(payload)?;
    let new_top = top_level(&payload);
    let old_ts = current_ts_dir(target);

    let unchanged = old_ts
        .as_ref()
        .is_some_and(|ts| matches(&target.join(ts), &payload));
    if !unchanged {
        let ts = new_ts_name();
        let ts_path = target.join(&ts);
        fs::create_dir(&ts_path).map_err(io(format!("creating {}", ts_path.display())))?;
        fs::set_permissions(&ts_path, fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", ts_path.display())))?;
        for (p, f) in &payload {
            if let Some((dir, _)) = p.rsplit_once('/') {
                mkdir_p(&ts_path, dir)?;
            }
            write_file(&ts_path.join(p), f)?;
        }
        // The swap: a new symlink renamed over `..data` (rename is atomic).
        let tmp = target.join(DATA_DIR_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", tmp.display()))(e)),
        }
        std::os::unix::fs::symlink(&ts, &tmp).map_err(io(format!("symlink {}", tmp.display())))?;
        fs::rename(&tmp, target.join(DATA_DIR))
            .map_err(io(format!("renaming {} to {DATA_DIR}", tmp.display())))?;
    }

    // User-visible symlinks for the new set.
    for name in &new_top {
        let visible = target.join(name);
        let want = Path::new(DATA_DIR).join(name);
        match fs::read_link(&visible) {
            Ok(t) if t == want => {}
            Ok(_) => {
                fs::remove_file(&visible).map_err(io(format!("removing {}", visible.display())))?;
                std::os::unix::fs::symlink(&want, &visible)
                    .map_err(io(format!("symlink {}", visible.display())))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink(&want, &visible)
                    .map_err(io(format!("symlink {}", visible.display())))?;
            }
            Err(_) => {
                return Err(VolumeError::InvalidPath {
                    path: visible.display().to_string(),
                    reason: "exists and is not a symlink".to_owned(),
                });
            }
        }
    }

    // Remove what is no longer part of the set: old user-visible symlinks, old and stale
    // timestamped directories. Only our own names are touched, symlinks are never followed.
    let current = current_ts_dir(target);
    let rd = fs::read_dir(target).map_err(io(format!("reading {}", target.display())))?;
    for e in rd {
        let e = e.map_err(io(format!("reading {}", target.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().map_err(io(format!("stat {name}")))?;
        let path = e.path();
        if name.starts_with("..") {
            if name == DATA_DIR || Some(&name) == current.as_ref() {
                continue;
            }
            if ft.is_dir() {
                fs::remove_dir_all(&path).map_err(io(format!("removing {}", path.display())))?;
            } else {
                fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
            }
        } else if ft.is_symlink() && !new_top.contains(&name) {
            fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
        }
    }
    Ok(!unchanged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn clean_path_refuses_escapes() {
        assert_eq!(clean_path("a/./b//c").unwrap(), "a/b/c");
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "..data/x",
            "..x",
            ".",
            "a\0b",
        ] {
            assert!(clean_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_and_directory_conflict_is_refused() {
        let mut p = Payload::new();
        p.insert("a".into(), f("1", 0o644));
        p.insert("a/b".into(), f("2", 0o644));
        assert!(validate(&p).is_err());
    }

    #[test]
    fn write_lays_out_data_dir_and_swaps() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        let mut p = Payload::new();
        p.insert("a".into(), f("one", 0o644));
        p.insert("dir/b".into(), f("two", 0o600));
        assert!(write(t, &p).unwrap());
        let ts1 = current_ts_dir(t).unwrap();
        assert_eq!(fs::read_link(t.join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(
            fs::read_link(t.join("dir")).unwrap(),
            Path::new("..data/dir")
        );
        assert_eq!(fs::read_to_string(t.join("dir/b")).unwrap(), "two");
        let m = fs::metadata(t.join("dir/b")).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        // Same payload: nothing rewritten.
        assert!(!write(t, &p).unwrap());
        assert_eq!(current_ts_dir(t).unwrap(), ts1);
        // New payload: new dir, old one and the dropped key gone.
        let mut p2 = Payload::new();
        p2.insert("a".into(), f("uno", 0o644));
        assert!(write(t, &p2).unwrap());
        let ts2 = current_ts_dir(t).unwrap();
        assert_ne!(ts1, ts2);
        assert!(!t.join(&ts1).exists());
        assert!(fs::symlink_metadata(t.join("dir")).is_err());
        assert_eq!(fs::read_to_string(t.join("a")).unwrap(), "uno");
        let names: BTreeSet<String> = fs::read_dir(t)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, BTreeSet::from(["..data".into(), "a".into(), ts2]));
    }
}
