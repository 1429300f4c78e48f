//! Unpacking one layer tar into its own directory, safe against hostile layers.
//!
//! Every path is resolved *inside* the layer directory: entry names are cleaned lexically
//! (`..` cannot climb above the root, absolute names become relative), and parent directories
//! are opened with `openat2(RESOLVE_IN_ROOT)`, so a symlink met on the way (absolute or with
//! `..`) is followed as if the layer directory were `/`. The final component is always
//! created relative to that parent fd without following it (`O_NOFOLLOW`, `*at` calls), and
//! hardlink targets are resolved the same way, so no entry can write or link outside.
//!
//! Whiteouts become overlayfs whiteouts: `.wh.NAME` -> a `0:0` character device `NAME`, and
//! `.wh..wh..opq` -> the `trusted.overlay.opaque=y` attribute on its directory, so the
//! unpacked layers stack as overlay lower directories unchanged.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::mkdirat;
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, fchmodat, mknodat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

use super::ImageError;
use super::oci::Digest;

/// Upper bound on entries in one layer (a bomb of tiny entries is refused).
const MAX_ENTRIES: u64 = 2_000_000;
/// Upper bound on path components of one entry.
const MAX_DEPTH: usize = 256;

/// A reader that hashes everything read through it (for the layer's diff id).
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Cleans an entry name into components below the root: drops `.` and empty parts, lets `..`
/// only remove earlier components (never climb above the root).
pub(crate) fn clean_components(name: &[u8]) -> Result<Vec<Vec<u8>>, ImageError> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            p => {
                if p.contains(&0) {
                    return Err(ImageError::InvalidLayer("entry name with NUL".into()));
                }
                out.push(p.to_vec());
            }
        }
        if out.len() > MAX_DEPTH {
            return Err(ImageError::InvalidLayer("entry nested too deep".into()));
        }
    }
    Ok(out)
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(p);
    }
    if v.is_empty() {
        v.push(b'.');
    }
    v
}

fn os(b: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::OsStr::from_bytes(b)
}

fn io_err(e: Errno) -> ImageError {
    ImageError::Io(io::Error::from(e))
}

/// Opens (creating as needed) the directory `parts` inside `root`, resolving every step
/// inside the root.
fn open_dir_in_root(root: &OwnedFd, parts: &[Vec<u8>]) -> Result<OwnedFd, ImageError> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let path = join(parts);
    match openat2(root.as_fd(), os(&path), how()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(io_err(e)),
    }
    // Create missing parents one by one; each step is resolved from the layer root again,
    // so a symlink component (from this layer) is followed inside the root.
    let mut dir = openat2(root.as_fd(), ".", how()).map_err(io_err)?;
    for i in 0..parts.len() {
        let upto = join(&parts[..=i]);
        dir = match openat2(root.as_fd(), os(&upto), how()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(dir.as_fd(), os(&parts[i]), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err(e)),
                }
                openat2(root.as_fd(), os(&upto), how()).map_err(io_err)?
            }
            Err(e) => return Err(io_err(e)),
        };
    }
    Ok(dir)
}

/// Removes whatever is at `name` in `dir` (file, symlink or directory tree), if anything.
fn remove_existing(dir: &OwnedFd, name: &[u8], keep_dir: bool) -> Result<(), ImageError> {
    match nix::sys::stat::fstatat(dir.as_fd(), os(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io_err(e)),
        Ok(st) => {
            let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
            if is_dir {
                if keep_dir {
                    return Ok(());
                }
                remove_tree_at(dir, name, 0)
            } else {
                unlinkat(dir.as_fd(), os(name), UnlinkatFlags::NoRemoveDir).map_err(io_err)
            }
        }
    }
}

fn remove_tree_at(dir: &OwnedFd, name: &[u8], depth: usize) -> Result<(), ImageError> {
    if depth > MAX_DEPTH {
        return Err(ImageError::InvalidLayer("directory nested too deep".into()));
    }
    let sub = openat(
        dir.as_fd(),
        os(name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)?;
    let mut d = nix::dir::Dir::from_fd(sub.try_clone().map_err(ImageError::Io)?).map_err(io_err)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(io_err)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((n.to_vec(), e.file_type()));
        }
    }
    for (n, t) in names {
        if t == Some(nix::dir::Type::Directory) {
            remove_tree_at(&sub, &n, depth + 1)?;
        } else {
            unlinkat(sub.as_fd(), os(&n), UnlinkatFlags::NoRemoveDir).map_err(io_err)?;
        }
    }
    unlinkat(dir.as_fd(), os(name), UnlinkatFlags::RemoveDir).map_err(io_err)
}

/// Statistics of one unpacked layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    /// Entries applied.
    pub entries: u64,
    /// Whiteouts (files and opaque directories).
    pub whiteouts: u64,
}

/// Unpacks the (uncompressed) layer tar read from `reader` into the empty directory `dest`,
/// and checks that the tar's sha256 equals `diff_id` when one is given.
pub fn unpack_layer(
    reader: impl Read,
    dest: &Path,
    diff_id: Option<&Digest>,
) -> Result<UnpackStats, ImageError> {
    use sha2::Digest as _;
    let root = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)?;
    let mut hr = HashingReader {
        inner: reader,
        hasher: sha2::Sha256::new(),
    };
    let mut stats = UnpackStats::default();
    {
        let mut ar = tar::Archive::new(&mut hr);
        for entry in ar.entries().map_err(ImageError::Io)? {
            let mut entry = entry.map_err(ImageError::Io)?;
            stats.entries += 1;
            if stats.entries > MAX_ENTRIES {
                return Err(ImageError::InvalidLayer("too many entries".into()));
            }
            apply_entry(&root, &mut entry, &mut stats)?;
        }
    }
    // Hash the rest (end-of-archive blocks and padding) so the digest covers the whole tar.
    io::copy(&mut hr, &mut io::sink()).map_err(ImageError::Io)?;
    let got = Digest::from_sha256(hr.hasher.finalize().as_slice());
    if let Some(want) = diff_id
        && *want != got
    {
        return Err(ImageError::DigestMismatch {
            expected: want.to_string(),
            actual: got.to_string(),
        });
    }
    Ok(stats)
}

fn apply_entry<R: Read>(
    root: &OwnedFd,
    entry: &mut tar::Entry<'_, R>,
    stats: &mut UnpackStats,
) -> Result<(), ImageError> {
    let name = entry.path_bytes().into_owned();
    let mut parts = clean_components(&name)?;
    let Some(leaf) = parts.pop() else {
        return Ok(()); // the root itself: nothing to create
    };
    let parent = open_dir_in_root(root, &parts)?;
    let header = entry.header();
    let mode = Mode::from_bits_truncate(header.mode().map_err(ImageError::Io)? & 0o7777);
    let uid = header.uid().map_err(ImageError::Io)?;
    let gid = header.gid().map_err(ImageError::Io)?;
    let kind = header.entry_type();

    if leaf == b".wh..wh..opq" {
        stats.whiteouts += 1;
        crate::sys::fsetxattr(&parent, "trusted.overlay.opaque", b"y").map_err(ImageError::Io)?;
        return Ok(());
    }
    if let Some(hidden) = leaf.strip_prefix(b".wh.") {
        stats.whiteouts += 1;
        remove_existing(&parent, hidden, false)?;
        mknodat(parent.as_fd(), os(hidden), SFlag::S_IFCHR, Mode::empty(), 0).map_err(io_err)?;
        return Ok(());
    }
    remove_existing(&parent, &leaf, kind.is_dir())?;
    let chown = |nofollow: bool| -> Result<(), ImageError> {
        let flag = if nofollow {
            AtFlags::AT_SYMLINK_NOFOLLOW
        } else {
            AtFlags::empty()
        };
        let to_id = |v: u64| {
            u32::try_from(v).map_err(|_| ImageError::InvalidLayer("owner id out of range".into()))
        };
        fchownat(
            parent.as_fd(),
            os(&leaf),
            Some(Uid::from_raw(to_id(uid)?)),
            Some(Gid::from_raw(to_id(gid)?)),
            flag,
        )
        .map_err(io_err)
    };
    match kind {
        tar::EntryType::Directory => {
            match mkdirat(parent.as_fd(), os(&leaf), mode) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err(e)),
            }
            chown(true)?;
            fchmodat(
                parent.as_fd(),
                os(&leaf),
                mode,
                FchmodatFlags::NoFollowSymlink,
            )
            .or_else(|e| {
                if e == Errno::EOPNOTSUPP {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io_err)?;
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let fd = openat(
                parent.as_fd(),
                os(&leaf),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(io_err)?;
            let mut file = std::fs::File::from(fd);
            io::copy(entry, &mut file).map_err(ImageError::Io)?;
            chown(true)?;
            // fchmod after chown: chown clears setuid bits.
            nix::sys::stat::fchmod(file.as_fd(), mode).map_err(io_err)?;
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| ImageError::InvalidLayer("symlink without target".into()))?
                .into_owned();
            symlinkat(os(&target), parent.as_fd(), os(&leaf)).map_err(io_err)?;
            chown(true)?;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| ImageError::InvalidLayer("hardlink without target".into()))?
                .into_owned();
            let tparts = clean_components(&target)?;
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            let tfd = openat2(root.as_fd(), os(&join(&tparts)), how).map_err(|e| {
                ImageError::InvalidLayer(format!(
                    "hardlink target {} not in this layer: {e}",
                    String::from_utf8_lossy(&target)
                ))
            })?;
            let st = nix::sys::stat::fstat(tfd.as_fd()).map_err(io_err)?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
                return Err(ImageError::InvalidLayer("hardlink to a directory".into()));
            }
            linkat(
                tfd.as_fd(),
                "",
                parent.as_fd(),
                os(&leaf),
                AtFlags::AT_EMPTY_PATH,
            )
            .map_err(io_err)?;
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let (sflag, dev) = match kind {
                tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
                t => {
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    let f = if t == tar::EntryType::Char {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    (f, libc::makedev(major, minor))
                }
            };
            mknodat(parent.as_fd(), os(&leaf), sflag, mode, dev).map_err(io_err)?;
            chown(true)?;
        }
        // PAX/GNU metadata entries are consumed by the tar reader; anything else is skipped.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_climb_above_the_root() {
        let c = |s: &str| {
            clean_components(s.as_bytes())
                .unwrap()
                .into_iter()
                .map(|p| String::from_utf8(p).unwrap())
                .collect::<Vec<_>>()
                .join("/")
        };
        assert_eq!(c("../../etc/passwd"), "etc/passwd");
        assert_eq!(c("/abs/x"), "abs/x");
        assert_eq!(c("a/../../b"), "b");
        assert_eq!(c("./a/./b/"), "a/b");
        assert_eq!(c(".."), "");
    }
}
