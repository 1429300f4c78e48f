//! Container logs in the CRI format (`2016-10-06T00:17:09.669794202Z stdout F line`), one
//! file per container, with size-based rotation (`log`, `log.1`, ... `log.<n-1>`, oldest
//! dropped).
//!
//! [`CriLogWriter`] is fed the bytes of a stream as they arrive; it emits one record per line
//! (`F`), and splits a line longer than [`MAX_LINE_BYTES`] into partial records (`P`) followed
//! by the final one, as the kubelet's reader expects. Writes go through the calling thread's
//! io_uring ring (`shards::uring::Ring`) when one can be set up, else through std I/O.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use shards::uring::Ring;

/// Longest line written as one record; longer ones are split into `P` records.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A parsed CRI log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// RFC 3339 timestamp with nanoseconds.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `F` (full line, or the last piece of one) or `P` (partial).
    pub partial: bool,
    /// The content, without the newline.
    pub line: String,
}

/// Parses one line of a CRI log file.
pub fn parse_record(line: &str) -> Option<LogRecord> {
    let mut it = line.splitn(4, ' ');
    let time = it.next()?.to_string();
    let stream = it.next()?.to_string();
    let tag = it.next()?;
    let content = it.next().unwrap_or("").to_string();
    let partial = match tag {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    Some(LogRecord {
        time,
        stream,
        partial,
        line: content,
    })
}

/// Reads all records of a log file (rotated files first, oldest first).
pub fn read_records(path: &Path, max_files: u32) -> io::Result<Vec<LogRecord>> {
    let mut out = Vec::new();
    for i in (1..max_files.max(1)).rev() {
        if let Ok(s) = fs::read_to_string(rotated(path, i)) {
            out.extend(s.lines().filter_map(parse_record));
        }
    }
    let s = fs::read_to_string(path)?;
    out.extend(s.lines().filter_map(parse_record));
    Ok(out)
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Writes CRI log records for the streams of one container.
pub struct CriLogWriter {
    path: PathBuf,
    file: File,
    offset: u64,
    max_bytes: u64,
    max_files: u32,
    ring: Option<Ring>,
    pending: [Vec<u8>; 2],
}

impl std::fmt::Debug for CriLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriLogWriter")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .field("uring", &self.ring.is_some())
            .finish()
    }
}

impl CriLogWriter {
    /// Opens (appending to) the log at `path`. Must be called inside a tokio runtime for the
    /// io_uring path; elsewhere it falls back to std I/O.
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<CriLogWriter> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(path)?;
        let offset = file.metadata()?.len();
        let ring = tokio::runtime::Handle::try_current()
            .ok()
            .and_then(|_| Ring::current().ok());
        Ok(CriLogWriter {
            path: path.to_path_buf(),
            file,
            offset,
            max_bytes: max_bytes.max(4096),
            max_files: max_files.max(1),
            ring,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Whether writes go through io_uring.
    pub fn uses_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// Feeds bytes read from `stream`; writes the records for every complete line.
    pub async fn feed(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        self.pending[idx].extend_from_slice(bytes);
        let mut out = Vec::new();
        let ts = timestamp();
        loop {
            let buf = &self.pending[idx];
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                if pos > MAX_LINE_BYTES {
                    record(&mut out, &ts, stream, true, &buf[..MAX_LINE_BYTES]);
                    self.pending[idx].drain(..MAX_LINE_BYTES);
                } else {
                    record(&mut out, &ts, stream, false, &buf[..pos]);
                    self.pending[idx].drain(..=pos);
                }
            } else if buf.len() > MAX_LINE_BYTES {
                record(&mut out, &ts, stream, true, &buf[..MAX_LINE_BYTES]);
                self.pending[idx].drain(..MAX_LINE_BYTES);
            } else {
                break;
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        self.write(out).await
    }

    /// Flushes what is left of a stream that ended without a newline (as a full record).
    pub async fn finish(&mut self, stream: Stream) -> io::Result<()> {
        let idx = stream as usize;
        if self.pending[idx].is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending[idx]);
        record(&mut out, &timestamp(), stream, false, &rest);
        self.write(out).await
    }

    async fn write(&mut self, out: Vec<u8>) -> io::Result<()> {
        if self.offset > 0 && self.offset + out.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let len = out.len() as u64;
        match &self.ring {
            Some(ring) => {
                let (r, _) = ring.write_all_at(&self.file, out, self.offset).await;
                r.map_err(|e| io::Error::other(e.to_string()))?;
            }
            None => {
                use std::os::unix::fs::FileExt as _;
                self.file.write_all_at(&out, self.offset)?;
            }
        }
        self.offset += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.max_files <= 1 {
            self.file.set_len(0)?;
            self.offset = 0;
            return Ok(());
        }
        let _ = fs::remove_file(rotated(&self.path, self.max_files - 1));
        for i in (1..self.max_files - 1).rev() {
            let _ = fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.offset = 0;
        Ok(())
    }
}

fn timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

fn record(out: &mut Vec<u8>, ts: &str, stream: Stream, partial: bool, line: &[u8]) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.tag().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(line);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn lines_partials_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let mut w = CriLogWriter::open(&p, 4096, 3).unwrap();
        w.feed(Stream::Stdout, b"hello\nwor").await.unwrap();
        w.feed(Stream::Stderr, b"oops\n").await.unwrap();
        w.feed(Stream::Stdout, b"ld\n").await.unwrap();
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        w.finish(Stream::Stdout).await.unwrap();
        let recs = read_records(&p, 3).unwrap();
        let lines: Vec<_> = recs
            .iter()
            .map(|r| (r.stream.as_str(), r.partial, r.line.as_str()))
            .collect();
        assert_eq!(
            lines,
            vec![
                ("stdout", false, "hello"),
                ("stderr", false, "oops"),
                ("stdout", false, "world")
            ]
        );
        assert!(
            recs[0].time.ends_with('Z') && recs[0].time.len() == 30,
            "{}",
            recs[0].time
        );
        // A long line: a partial record then the final piece; the file rotates past 4 KiB.
        w.feed(Stream::Stdout, &long).await.unwrap();
        w.feed(Stream::Stdout, b"\n").await.unwrap();
        let recs = read_records(&p, 3).unwrap();
        let n = recs.len();
        assert!(recs[n - 2].partial && recs[n - 2].line.len() == MAX_LINE_BYTES);
        assert!(!recs[n - 1].partial && recs[n - 1].line == "x".repeat(10));
        assert!(rotated(&p, 1).exists());
        for i in 0..20 {
            w.feed(Stream::Stdout, format!("{i:04000}\n").as_bytes())
                .await
                .unwrap();
        }
        assert!(!rotated(&p, 3).exists(), "at most 3 files");
        assert!(fs::metadata(&p).unwrap().len() <= 4096);
    }
}
