//! fsGroup ownership of volume contents, as upstream's `SetVolumeOwnership`: every file and
//! directory gets the group, files `rw-rw----` (read-only volumes `r--r-----`) added to their
//! mode, directories also setgid and group-searchable. Symlinks are re-owned, never followed.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::VolumeError;

/// Added to files of writable volumes.
const RW_MASK: u32 = 0o660;
/// Added to files of read-only volumes (configMap, secret, downwardAPI, projected).
pub(super) const RO_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
/// Bounds of one walk.
const MAX_DEPTH: usize = 64;
const MAX_ENTRIES: usize = 100_000;

/// Applies the group when the volume's root does not have it yet (upstream's
/// `OnRootMismatch`: a volume already owned is not walked again).
pub(super) fn apply_if_root_differs(
    dir: &Path,
    gid: Option<u32>,
    read_only: bool,
) -> Result<(), VolumeError> {
    let Some(g) = gid else { return Ok(()) };
    let m = fs::symlink_metadata(dir).map_err(|source| VolumeError::Io {
        context: format!("stat {}", dir.display()),
        source,
    })?;
    if m.gid() == g && m.mode() & 0o2000 != 0 {
        return Ok(());
    }
    apply(dir, gid, read_only)
}

/// Walks `dir` giving everything the group `gid` (nothing when None).
pub(super) fn apply(dir: &Path, gid: Option<u32>, read_only: bool) -> Result<(), VolumeError> {
    let Some(g) = gid else { return Ok(()) };
    let mut budget = MAX_ENTRIES;
    walk(dir, g, read_only, 0, &mut budget)
}

fn walk(
    path: &Path,
    gid: u32,
    read_only: bool,
    depth: usize,
    budget: &mut usize,
) -> Result<(), VolumeError> {
    let io = |what: &str| {
        let context = format!("{what} {}", path.display());
        move |source| VolumeError::Io { context, source }
    };
    if depth > MAX_DEPTH || *budget == 0 {
        return Err(VolumeError::TooLarge {
            size: MAX_ENTRIES,
            limit: MAX_ENTRIES,
        });
    }
    *budget -= 1;
    let m = fs::symlink_metadata(path).map_err(io("stat"))?;
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io("chown"))?;
    if m.file_type().is_symlink() {
        return Ok(());
    }
    let mut mask = if read_only { RO_MASK } else { RW_MASK };
    if m.is_dir() {
        mask |= 0o2000 | EXEC_MASK;
    }
    let mode = (m.mode() & 0o7777) | mask;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
    if m.is_dir() {
        for e in fs::read_dir(path).map_err(io("reading"))? {
            let e = e.map_err(io("reading"))?;
            walk(&e.path(), gid, read_only, depth + 1, budget)?;
        }
    }
    Ok(())
}
