//! `/containerLogs`: a container's CRI log files (rotated ones first) rendered as
//! `kubectl logs` expects, with upstream's options: `tailLines`, `sinceSeconds`/`sinceTime`,
//! `timestamps`, `limitBytes` and `follow` (which keeps reading the live file across
//! rotations until the container has exited and the file is drained, or the client leaves).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::logs::{LogRecord, parse_record};

/// How often a follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Most rotated files looked at.
const MAX_ROTATED: u32 = 64;
/// Chunk size of the response stream.
const CHUNK: usize = 32 * 1024;

/// The options of a log request (upstream's `PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// Only lines at or after this time (Unix nanoseconds).
    pub since_unix_nanos: Option<i64>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
    /// The previous (exited) instance of the container.
    pub previous: bool,
}

impl LogOptions {
    /// Parses the query parameters (`follow`, `tailLines`, `sinceSeconds`, `sinceTime`,
    /// `timestamps`, `limitBytes`, `previous`).
    pub fn from_query(q: &[(String, String)], now_unix_nanos: i64) -> Result<LogOptions, String> {
        let mut o = LogOptions::default();
        let flag = |v: &str| matches!(v, "true" | "1" | "True");
        for (k, v) in q {
            match k.as_str() {
                "follow" => o.follow = flag(v),
                "timestamps" => o.timestamps = flag(v),
                "previous" => o.previous = flag(v),
                "tailLines" => {
                    let n: i64 = v.parse().map_err(|_| format!("invalid tailLines {v:?}"))?;
                    if n < 0 {
                        return Err("tailLines must be >= 0".into());
                    }
                    o.tail_lines = Some(n as u64);
                }
                "limitBytes" => {
                    let n: i64 = v.parse().map_err(|_| format!("invalid limitBytes {v:?}"))?;
                    if n < 1 {
                        return Err("limitBytes must be > 0".into());
                    }
                    o.limit_bytes = Some(n as u64);
                }
                "sinceSeconds" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| format!("invalid sinceSeconds {v:?}"))?;
                    if n < 1 {
                        return Err("sinceSeconds must be > 0".into());
                    }
                    o.since_unix_nanos =
                        Some(now_unix_nanos.saturating_sub(n.saturating_mul(1_000_000_000)));
                }
                "sinceTime" => {
                    let t = chrono::DateTime::parse_from_rfc3339(v)
                        .map_err(|_| format!("invalid sinceTime {v:?}"))?;
                    o.since_unix_nanos = t.timestamp_nanos_opt();
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// The log files of a container, oldest first (`log.N` ... `log.1`, `log`).
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=MAX_ROTATED)
        .map(|i| rotated(path, i))
        .take_while(|p| p.exists())
        .collect();
    out.reverse();
    out.push(path.to_path_buf());
    out
}

fn record_nanos(r: &LogRecord) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(&r.time)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}

/// Renders one record as `kubectl logs` prints it.
fn render(r: &LogRecord, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(r.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(r.line.as_bytes());
    if !r.partial {
        out.push(b'\n');
    }
}

/// Writes records to the response, enforcing `limitBytes`. False once the stream should end
/// (limit reached or client gone).
struct Sink {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    left: Option<u64>,
}

impl Sink {
    async fn push(&mut self, r: &LogRecord, timestamps: bool) -> bool {
        let start = self.buf.len();
        render(r, timestamps, &mut self.buf);
        if let Some(left) = &mut self.left {
            let n = (self.buf.len() - start) as u64;
            if n >= *left {
                self.buf.truncate(start + *left as usize);
                *left = 0;
                let _ = self.flush().await;
                return false;
            }
            *left -= n;
        }
        if self.buf.len() >= CHUNK {
            return self.flush().await;
        }
        true
    }

    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let b = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.send(b).await.is_ok()
    }
}

/// Reads complete lines from an open file starting at its current position; keeps a
/// trailing partial line for the next call.
pub(crate) struct Tail {
    reader: BufReader<File>,
    ino: u64,
    pending: Vec<u8>,
}

impl Tail {
    pub(crate) fn open(path: &Path, from_end: bool) -> std::io::Result<Tail> {
        let mut f = File::open(path)?;
        let ino = f.metadata()?.ino();
        if from_end {
            f.seek(SeekFrom::End(0))?;
        }
        Ok(Tail {
            reader: BufReader::new(f),
            ino,
            pending: Vec::new(),
        })
    }

    /// New complete records (at most `max` lines per call).
    pub(crate) fn read_records(&mut self, max: usize) -> std::io::Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        for _ in 0..max {
            let n = (&mut self.reader)
                .take(1 << 20)
                .read_until(b'\n', &mut self.pending)?;
            if n == 0 || !self.pending.ends_with(b"\n") {
                break;
            }
            let line =
                String::from_utf8_lossy(&self.pending[..self.pending.len() - 1]).into_owned();
            self.pending.clear();
            if let Some(r) = parse_record(&line) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// Streams the log of a container into `tx` as `opts` asks. `running` says whether the
/// container still runs (checked while following). Returns when done.
pub async fn stream_logs<F>(path: PathBuf, opts: LogOptions, tx: mpsc::Sender<Bytes>, running: F)
where
    F: Fn() -> bool + Send,
{
    let mut sink = Sink {
        tx,
        buf: Vec::new(),
        left: opts.limit_bytes,
    };
    let keep = |r: &LogRecord| match opts.since_unix_nanos {
        Some(since) => record_nanos(r).is_none_or(|t| t >= since),
        None => true,
    };
    // What exists now: every file, oldest first. With tailLines, only the last N lines are
    // kept (a bounded ring), counting a line as its final (`F`) record.
    let files = log_files(&path);
    let live_ino = std::fs::metadata(&path).map(|m| m.ino()).ok();
    let mut live: Option<Tail> = None;
    let mut ring: VecDeque<LogRecord> = VecDeque::new();
    let mut full_lines = 0u64;
    for f in &files {
        let Ok(mut t) = Tail::open(f, false) else {
            continue;
        };
        while let Ok(recs) = t.read_records(4096) {
            if recs.is_empty() {
                break;
            }
            for r in recs.into_iter().filter(|r| keep(r)) {
                match opts.tail_lines {
                    Some(n) => {
                        if !r.partial {
                            full_lines += 1;
                        }
                        ring.push_back(r);
                        while full_lines > n {
                            match ring.pop_front() {
                                Some(x) if !x.partial => full_lines -= 1,
                                Some(_) => {}
                                None => break,
                            }
                        }
                    }
                    None => {
                        if !sink.push(&r, opts.timestamps).await {
                            return;
                        }
                    }
                }
            }
        }
        if Some(t.ino) == live_ino && f == &path {
            live = Some(t);
        }
    }
    for r in ring.drain(..) {
        if !sink.push(&r, opts.timestamps).await {
            return;
        }
    }
    if !sink.flush().await || !opts.follow {
        return;
    }
    // Follow the live file; a new inode at the path means it was rotated: drain the old
    // handle, then continue from the start of the new file.
    let mut live = match live {
        Some(t) => t,
        None => match Tail::open(&path, false) {
            Ok(t) => t,
            Err(_) => return,
        },
    };
    let mut idle_after_exit = 0u32;
    loop {
        let recs = live.read_records(4096).unwrap_or_default();
        let got = !recs.is_empty();
        for r in recs.iter().filter(|r| keep(r)) {
            if !sink.push(r, opts.timestamps).await {
                return;
            }
        }
        if !sink.flush().await {
            return;
        }
        if got {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.ino() != live.ino => {
                if let Ok(t) = Tail::open(&path, false) {
                    live = t;
                    continue;
                }
            }
            _ => {}
        }
        if !running() {
            // Drained once more after the exit: done.
            idle_after_exit += 1;
            if idle_after_exit >= 2 {
                return;
            }
        }
        if sink.tx.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn options_parse_and_reject_bad_values() {
        let now = 1_000_000_000_000_000_000;
        let o = LogOptions::from_query(
            &q(&[
                ("follow", "true"),
                ("tailLines", "5"),
                ("sinceSeconds", "10"),
            ]),
            now,
        )
        .unwrap();
        assert!(o.follow);
        assert_eq!(o.tail_lines, Some(5));
        assert_eq!(o.since_unix_nanos, Some(now - 10_000_000_000));
        assert!(LogOptions::from_query(&q(&[("tailLines", "x")]), now).is_err());
        assert!(LogOptions::from_query(&q(&[("limitBytes", "0")]), now).is_err());
        let o = LogOptions::from_query(&q(&[("sinceTime", "2024-01-02T03:04:05Z")]), now).unwrap();
        assert_eq!(o.since_unix_nanos, Some(1_704_164_645_000_000_000));
    }

    async fn collect(path: &Path, opts: LogOptions) -> String {
        let (tx, mut rx) = mpsc::channel(16);
        let p = path.to_path_buf();
        let t = tokio::spawn(stream_logs(p, opts, tx, || false));
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        t.await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn tail_timestamps_limit_since_and_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        std::fs::write(
            rotated(&log, 1),
            "2024-01-01T00:00:01.000000000Z stdout F one\n2024-01-01T00:00:02.000000000Z stderr F two\n",
        )
        .unwrap();
        std::fs::write(
            &log,
            "2024-01-01T00:00:03.000000000Z stdout P thr\n2024-01-01T00:00:03.100000000Z stdout F ee\n2024-01-01T00:00:04.000000000Z stdout F four\n",
        )
        .unwrap();
        assert_eq!(
            collect(&log, LogOptions::default()).await,
            "one\ntwo\nthree\nfour\n"
        );
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(collect(&log, tail).await, "three\nfour\n");
        let ts = LogOptions {
            tail_lines: Some(1),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            collect(&log, ts).await,
            "2024-01-01T00:00:04.000000000Z four\n"
        );
        let lim = LogOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(collect(&log, lim).await, "one\ntw");
        let since = LogOptions {
            since_unix_nanos: Some(1_704_067_203_000_000_000),
            ..Default::default()
        };
        assert_eq!(collect(&log, since).await, "three\nfour\n");
    }
}
