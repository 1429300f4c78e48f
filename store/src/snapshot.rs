//! Shard snapshots: a sorted run of `(key, value)` entries written as one rkyv archive and read
//! back by mmap, zero-copy.
//!
//! This is the crate's zero-copy module, and the only one allowed `unsafe` (`lib.rs` puts
//! `#[allow(unsafe_code)]` on it): mapping a file and re-reading an already validated archive
//! are the two unsafe operations, each with a `// SAFETY:` note.
//!
//! # File format (version 1)
//! A snapshot lives in `{revision:016x}.snap` in its directory: a 64-byte header, then the
//! rkyv archive of the body (starting at byte 64, so 16-byte aligned in a page-aligned map).
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `KSSNAPSH` |
//! | 8 | format version (1) |
//! | 10..12 | shard id |
//! | 16..24 | revision |
//! | 24..32 | body length |
//! | 32..40 | entry count |
//! | 40..44 | crc32c of the body |
//! | 60..64 | crc32c of bytes 0..60 |
//!
//! The body archives `{ revision: u64, shard: u16, meta: [u8], entries: [{ key: [u8], value:
//! [u8] }] }` with entries sorted by key, keys unique.
//!
//! # Writing
//! Written to `{revision:016x}.snap.tmp` through the [`Storage`] seam (streamed: the archive
//! is never built in memory), fsync'ed, renamed to its final name, the directory fsync'ed.
//! Only then are older snapshots (and stale temp files) deleted, so a crash at any point
//! leaves at least one complete snapshot when one existed before.
//!
//! # Opening
//! [`Snapshot::open`] maps the file, checks the header, the body checksum and the archive's
//! structure (rkyv `access`, bytecheck), and that keys are sorted. Nothing is deserialized:
//! [`Snapshot::entry`] and [`Snapshot::get`] hand out `Bytes` that point into the mapping and
//! keep it alive (`Bytes::from_owner`). A snapshot file must not be modified while mapped: the
//! store alone writes its directory, and never rewrites a snapshot in place.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rkyv::rancor;
use rkyv::with::InlineAsBox;

use crate::backend::Revision;
use crate::error::StoreError;
use crate::fileio::{Storage, StorageFile};

/// Snapshot format version.
pub const SNAPSHOT_VERSION: u8 = 1;
/// First 8 bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"KSSNAPSH";
/// Size of the header before the archive.
pub const SNAPSHOT_HEADER_LEN: usize = 64;
/// Largest metadata blob accepted (the engine's small per-snapshot state).
pub const MAX_META_BYTES: usize = 1 << 20;

#[derive(rkyv::Archive, rkyv::Serialize)]
struct EntryRef<'a> {
    #[rkyv(with = InlineAsBox)]
    key: &'a [u8],
    #[rkyv(with = InlineAsBox)]
    value: &'a [u8],
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Body<'a> {
    revision: u64,
    shard: u16,
    #[rkyv(with = InlineAsBox)]
    meta: &'a [u8],
    entries: Vec<EntryRef<'a>>,
}

/// What a snapshot header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    shard: u16,
    revision: u64,
    body_len: u64,
    entries: u64,
    body_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; SNAPSHOT_HEADER_LEN] {
        let mut b = [0u8; SNAPSHOT_HEADER_LEN];
        b[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        b[8] = SNAPSHOT_VERSION;
        b[10..12].copy_from_slice(&self.shard.to_le_bytes());
        b[16..24].copy_from_slice(&self.revision.to_le_bytes());
        b[24..32].copy_from_slice(&self.body_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.entries.to_le_bytes());
        b[40..44].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(buf: &[u8]) -> Result<Self, String> {
        let b: &[u8; SNAPSHOT_HEADER_LEN] = buf
            .get(..SNAPSHOT_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or("file shorter than the snapshot header")?;
        if b[0..8] != SNAPSHOT_MAGIC {
            return Err("bad snapshot magic".into());
        }
        if b[8] != SNAPSHOT_VERSION {
            return Err(format!("unknown snapshot version {}", b[8]));
        }
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        if u32_at(60) != crc32c::crc32c(&b[..60]) {
            return Err("snapshot header checksum mismatch".into());
        }
        Ok(Self {
            shard: u16::from_le_bytes([b[10], b[11]]),
            revision: u64_at(16),
            body_len: u64_at(24),
            entries: u64_at(32),
            body_crc: u32_at(40),
        })
    }
}

fn snapshot_name(revision: u64) -> String {
    format!("{revision:016x}.snap")
}

fn parse_snapshot_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".snap")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Streams the archive into a [`StorageFile`] in 1 MiB writes, computing the checksum.
struct SeamWriter<'f> {
    file: &'f mut dyn StorageFile,
    offset: u64,
    buf: Vec<u8>,
    crc: u32,
    len: u64,
}

impl SeamWriter<'_> {
    const CHUNK: usize = 1 << 20;

    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.offset)?;
            self.offset += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

impl io::Write for SeamWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.len += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::CHUNK {
            self.flush_buf()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

/// Writes a snapshot of shard `shard` at `revision` into `dir`, durably, then deletes older
/// snapshots. `entries` must be sorted by key with unique keys (`InvalidRequest` otherwise);
/// `meta` is the engine's small metadata (at most [`MAX_META_BYTES`]).
///
/// Returns the path of the new snapshot. Errors: `Io` (nothing replaced: an earlier snapshot
/// stays the latest), `InvalidRequest`.
pub fn write_snapshot<'a, I>(
    storage: &dyn Storage,
    dir: &Path,
    shard: u16,
    revision: Revision,
    meta: &[u8],
    entries: I,
) -> Result<PathBuf, StoreError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    if meta.len() > MAX_META_BYTES {
        return Err(StoreError::InvalidRequest(format!(
            "snapshot metadata of {} bytes exceeds {MAX_META_BYTES}",
            meta.len()
        )));
    }
    let mut refs: Vec<EntryRef<'a>> = Vec::new();
    for (key, value) in entries {
        if let Some(prev) = refs.last()
            && prev.key >= key
        {
            return Err(StoreError::InvalidRequest(
                "snapshot entries must be sorted by key with unique keys".into(),
            ));
        }
        refs.push(EntryRef { key, value });
    }
    storage.create_dir_all(dir)?;
    let final_path = dir.join(snapshot_name(revision.0));
    let tmp_path = dir.join(format!("{}.tmp", snapshot_name(revision.0)));
    let _ = storage.remove(&tmp_path);
    let body = Body {
        revision: revision.0,
        shard,
        meta,
        entries: refs,
    };
    let mut file = storage.create(&tmp_path)?;
    let written = write_file(file.as_mut(), &body, shard, revision.0);
    drop(file);
    if let Err(e) = written {
        let _ = storage.remove(&tmp_path);
        return Err(e);
    }
    storage.rename(&tmp_path, &final_path)?;
    storage.sync_dir(dir)?;
    remove_older(storage, dir, revision.0)?;
    Ok(final_path)
}

fn write_file(
    file: &mut dyn StorageFile,
    body: &Body<'_>,
    shard: u16,
    revision: u64,
) -> Result<(), StoreError> {
    let mut w = SeamWriter {
        file,
        offset: SNAPSHOT_HEADER_LEN as u64,
        buf: Vec::with_capacity(SeamWriter::CHUNK + (64 << 10)),
        crc: 0,
        len: 0,
    };
    let writer = rkyv::ser::writer::IoWriter::new(&mut w);
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(body, writer)
        .map_err(|e| StoreError::Io(io::Error::other(format!("snapshot serialization: {e}"))))?;
    io::Write::flush(&mut w)?;
    let header = Header {
        shard,
        revision,
        body_len: w.len,
        entries: body.entries.len() as u64,
        body_crc: w.crc,
    };
    w.file.write_all_at(&header.encode(), 0)?;
    w.file.sync_all()?;
    Ok(())
}

/// Deletes snapshots older than `keep` and stale temp files.
fn remove_older(storage: &dyn Storage, dir: &Path, keep: u64) -> Result<(), StoreError> {
    let mut removed = false;
    for name in storage.list(dir)? {
        let stale_tmp = name.ends_with(".snap.tmp");
        let older = parse_snapshot_name(&name).is_some_and(|r| r < keep);
        if stale_tmp || older {
            storage.remove(&dir.join(&name))?;
            removed = true;
        }
    }
    if removed {
        storage.sync_dir(dir)?;
    }
    Ok(())
}

/// An open, validated snapshot. Cheap to clone; entries are zero-copy `Bytes` into the map.
#[derive(Clone)]
pub struct Snapshot {
    /// The whole file (mapped); slices of it keep the mapping alive.
    file: Bytes,
    header: Header,
    path: PathBuf,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .field("shard", &self.header.shard)
            .field("revision", &self.header.revision)
            .field("entries", &self.header.entries)
            .finish()
    }
}

impl Snapshot {
    /// Opens the newest snapshot in `dir`, if any. A damaged newest snapshot is an error, not
    /// a reason to fall back to an older one (the WAL before it may already be gone).
    pub fn open_latest(dir: &Path, shard: u16) -> Result<Option<Self>, StoreError> {
        let names = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let newest = names.iter().filter_map(|n| parse_snapshot_name(n)).max();
        match newest {
            Some(rev) => Self::open(&dir.join(snapshot_name(rev)), shard).map(Some),
            None => Ok(None),
        }
    }

    /// Maps and validates one snapshot file (header, body checksum, archive structure, key
    /// order, shard). Damage is [`StoreError::Corrupt`].
    pub fn open(path: &Path, shard: u16) -> Result<Self, StoreError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let bad = |msg: String| StoreError::Corrupt(format!("snapshot {}: {msg}", path.display()));
        if len < SNAPSHOT_HEADER_LEN as u64 {
            return Err(bad("file shorter than the snapshot header".into()));
        }
        // SAFETY: the mapping is read-only and private to this process's view of a file that
        // the store writes once (temp name, fsync, rename) and never modifies in place; the
        // store alone owns its directory. Truncation by another process would be outside the
        // contract (and show as SIGBUS, not as undefined reads through a Rust reference).
        // `populate`: every page is read right away (the body checksum below reads all of
        // them anyway), in one pass in the kernel instead of one page fault per few pages.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }?;
        let bytes = Bytes::from_owner(map);
        let header = Header::decode(&bytes).map_err(bad)?;
        if header.shard != shard {
            return Err(bad(format!(
                "belongs to shard {}, not {shard}",
                header.shard
            )));
        }
        let body_len = usize::try_from(header.body_len).map_err(|_| bad("body too long".into()))?;
        let body = bytes
            .get(SNAPSHOT_HEADER_LEN..)
            .filter(|b| b.len() == body_len)
            .ok_or_else(|| bad(format!("body length {} does not match the file", body_len)))?;
        if crc32c::crc32c(body) != header.body_crc {
            return Err(bad("body checksum mismatch".into()));
        }
        let archived = rkyv::access::<ArchivedBody<'_>, rancor::Error>(body)
            .map_err(|e| bad(format!("archive invalid: {e}")))?;
        if archived.revision.to_native() != header.revision
            || archived.shard.to_native() != header.shard
            || archived.entries.len() as u64 != header.entries
        {
            return Err(bad("header and body disagree".into()));
        }
        let sorted = archived
            .entries
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.key.as_ref() < b.key.as_ref()));
        if !sorted {
            return Err(bad("entries not sorted by key".into()));
        }
        Ok(Self {
            file: bytes,
            header,
            path: path.to_path_buf(),
        })
    }

    fn body(&self) -> &ArchivedBody<'_> {
        let body = self.file.get(SNAPSHOT_HEADER_LEN..).unwrap_or_default();
        // SAFETY: `open` validated exactly these bytes with `rkyv::access` (bytecheck) and
        // `self.file` is immutable, so the archive is still valid.
        unsafe { rkyv::access_unchecked::<ArchivedBody<'_>>(body) }
    }

    /// Zero-copy `Bytes` for a slice of the mapped file.
    fn share(&self, part: &[u8]) -> Bytes {
        let base = self.file.as_ptr() as usize;
        let start = (part.as_ptr() as usize).wrapping_sub(base);
        self.file.slice(start..start + part.len())
    }

    /// The revision the snapshot was taken at.
    pub fn revision(&self) -> Revision {
        Revision(self.header.revision)
    }

    /// The shard it belongs to.
    pub fn shard(&self) -> u16 {
        self.header.shard
    }

    /// The engine's metadata, as written.
    pub fn meta(&self) -> Bytes {
        self.share(self.body().meta.as_ref())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.body().entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th entry in key order, as zero-copy `(key, value)`.
    pub fn entry(&self, i: usize) -> Option<(Bytes, Bytes)> {
        let e = self.body().entries.get(i)?;
        Some((self.share(e.key.as_ref()), self.share(e.value.as_ref())))
    }

    /// The value stored under `key` (binary search), zero-copy.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        let entries = self.body().entries.as_slice();
        let i = entries.binary_search_by(|e| e.key.as_ref().cmp(key)).ok()?;
        entries.get(i).map(|e| self.share(e.value.as_ref()))
    }

    /// Every entry in key order, zero-copy.
    pub fn iter(&self) -> impl Iterator<Item = (Bytes, Bytes)> + '_ {
        (0..self.len()).filter_map(|i| self.entry(i))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.file.len() as u64
    }
}
