//! One shard's multi-version key space: per key, its versions in revision order.
//!
//! **Invariant:** a key's history is sorted by revision, strictly increasing; a `None`
//! version is a tombstone (the key was deleted at that revision). Versions above the engine's
//! visible revision may exist (written, not yet durable); readers pass the revision they read
//! at and never see them.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use crate::envelope::Envelope;

/// One version of a key: a value or a tombstone, at `rev`.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub(crate) rev: u64,
    pub(crate) value: Option<Envelope>,
}

/// A key's versions, oldest first.
pub(crate) type History = Vec<Version>;

/// The end bound of a key interval, already resolved from a [`crate::RangeEnd`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Exactly the start key.
    Single,
    /// Exclusive end.
    Before(Bytes),
    /// No end.
    Unbounded,
}

/// A key interval `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    pub(crate) start: Bytes,
    pub(crate) end: End,
}

impl KeyRange {
    pub(crate) fn new(key: &Bytes, end: &crate::RangeEnd) -> Self {
        let end = match end {
            crate::RangeEnd::Single => End::Single,
            crate::RangeEnd::Unbounded => End::Unbounded,
            crate::RangeEnd::Until(e) => End::Before(e.clone()),
            crate::RangeEnd::Prefix => match prefix_end(key) {
                Some(e) => End::Before(e),
                None => End::Unbounded,
            },
        };
        Self {
            start: key.clone(),
            end,
        }
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            End::Single => key == &self.start[..],
            End::Before(e) => key >= &self.start[..] && key < &e[..],
            End::Unbounded => key >= &self.start[..],
        }
    }

    pub(crate) fn is_single(&self) -> bool {
        self.end == End::Single
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match &self.end {
            End::Single => (Bound::Included(&self.start), Bound::Included(&self.start)),
            End::Before(e) => (Bound::Included(&self.start), Bound::Excluded(e)),
            End::Unbounded => (Bound::Included(&self.start), Bound::Unbounded),
        }
    }

    /// Whether the interval is empty (end at or before start).
    pub(crate) fn is_empty(&self) -> bool {
        matches!(&self.end, End::Before(e) if e[..] <= self.start[..])
    }
}

/// The smallest key greater than every key with `prefix` (etcd's `GetPrefixRangeEnd`);
/// `None` if there is none (the prefix is empty or all `0xff`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(Bytes::from(end));
        }
    }
    None
}

/// The version of `h` visible at `rev`: the newest with revision `<= rev`.
pub(crate) fn at(h: &History, rev: u64) -> Option<&Version> {
    let idx = h.partition_point(|v| v.rev <= rev);
    idx.checked_sub(1).and_then(|i| h.get(i))
}

/// One shard's data.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    pub(crate) keys: BTreeMap<Bytes, History>,
    /// Reads below this revision fail with `Compacted` (history below it is gone).
    pub(crate) compacted: u64,
    /// Bytes of envelopes held (every retained version).
    pub(crate) bytes: u64,
}

impl Shard {
    /// Live values in `range` at `rev`, in key order, calling `f` for each; `f` returns
    /// `false` to stop.
    pub(crate) fn scan(&self, range: &KeyRange, rev: u64, mut f: impl FnMut(&Envelope) -> bool) {
        if range.is_empty() {
            return;
        }
        // One key: a point lookup, not a range search for both edges (the apiserver's GET
        // of one object reads through here).
        if let End::Single = range.end {
            if let Some(env) = self.get(&range.start, rev) {
                f(env);
            }
            return;
        }
        for (_, h) in self.keys.range::<[u8], _>(range.bounds()) {
            if let Some(Version {
                value: Some(env), ..
            }) = at(h, rev)
                && !f(env)
            {
                return;
            }
        }
    }

    /// Every key in `range` with its history (for deletes, compares and watch catch-up).
    pub(crate) fn histories<'a>(
        &'a self,
        range: &KeyRange,
    ) -> impl Iterator<Item = (&'a Bytes, &'a History)> + 'a {
        let iter = if range.is_empty() {
            None
        } else {
            Some(self.keys.range::<[u8], _>(range.bounds()))
        };
        iter.into_iter().flatten()
    }

    /// The live value of `key` at `rev`.
    pub(crate) fn get(&self, key: &[u8], rev: u64) -> Option<&Envelope> {
        self.keys
            .get(key)
            .and_then(|h| at(h, rev))
            .and_then(|v| v.value.as_ref())
    }

    /// Appends a version; `false` (nothing changed) if the key already has a version at
    /// `rev` (a transaction wrote it twice).
    pub(crate) fn push(&mut self, key: Bytes, rev: u64, value: Option<Envelope>) -> bool {
        let h = self.keys.entry(key).or_default();
        if h.last().is_some_and(|v| v.rev >= rev) {
            return false;
        }
        self.bytes += value.as_ref().map_or(0, |e| e.len() as u64);
        h.push(Version { rev, value });
        true
    }

    /// Removes the version at `rev` of `key` (rolling back a write that was not kept).
    pub(crate) fn pop(&mut self, key: &[u8], rev: u64) {
        let Some(h) = self.keys.get_mut(key) else {
            return;
        };
        if h.last().is_some_and(|v| v.rev == rev) {
            if let Some(v) = h.pop() {
                self.bytes -= v.value.as_ref().map_or(0, |e| e.len() as u64);
            }
            if h.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Drops history below `rev`: per key only the newest version `<= rev` survives, and not
    /// even that if it is a tombstone. Returns the bytes freed.
    pub(crate) fn compact(&mut self, rev: u64) -> u64 {
        let mut freed = 0u64;
        self.keys.retain(|_, h| {
            let idx = h.partition_point(|v| v.rev <= rev);
            // Keep h[idx-1] (the version visible at `rev`) unless it is a tombstone.
            let keep_from = match idx.checked_sub(1).and_then(|i| h.get(i)) {
                Some(v) if v.value.is_some() => idx - 1,
                _ => idx,
            };
            if keep_from > 0 {
                for v in h.drain(..keep_from) {
                    freed += v.value.as_ref().map_or(0, |e| e.len() as u64);
                }
            }
            !h.is_empty()
        });
        self.bytes -= freed;
        self.compacted = self.compacted.max(rev);
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"a").as_deref(), Some(&b"b"[..]));
        assert_eq!(prefix_end(b"a\xff").as_deref(), Some(&b"b"[..]));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn key_range_contains() {
        let k = Bytes::from_static(b"/a/");
        let r = KeyRange::new(&k, &crate::RangeEnd::Prefix);
        assert!(r.contains(b"/a/"));
        assert!(r.contains(b"/a/x"));
        assert!(!r.contains(b"/a0"));
        assert!(!r.contains(b"/a"));
        let r = KeyRange::new(&k, &crate::RangeEnd::Single);
        assert!(r.contains(b"/a/") && !r.contains(b"/a/x"));
    }
}
