//! The engine's log records: what one write transaction (or lease/compaction event) puts in
//! a shard's write-ahead log, and the codec for it. The WAL frames and checksums records;
//! this payload is self-describing and versioned.
//!
//! ## Format (version 1, little-endian)
//! ```text
//! u8  format version (1)
//! u8  kind: 1 = revision part, 2 = lease grant, 3 = lease revoke, 4 = compact
//! [6] zero
//! kind 1: u64 revision | u64 prev (the revision this one follows in the chain)
//!         | u16 parts (shards this revision touched) | [6] zero | u32 entries
//!         then per entry: u8 op (1 put, 2 delete) | [3] zero | u32 key length | key
//!         | zero padding to 16 | for a put: u32 envelope length | [12] zero | envelope
//! kind 2: i64 lease id | i64 ttl seconds
//! kind 3: i64 lease id
//! kind 4: u64 compact revision
//! ```
//! Envelopes start on 16-byte boundaries of the payload (the WAL places payloads on 16-byte
//! boundaries), so recovery validates them in place without copying.
//!
//! ## Recovery rule (the revision chain)
//! Every revision part names the revision it follows (`prev`). Recovery starts at the
//! snapshot's revision and repeatedly takes the revision whose `prev` is the current one and
//! whose parts are all present (one per shard it touched); it stops when there is none. A
//! revision lost by a crash, or refused by a failed write, thus ends the chain, and every
//! later revision written before the failure (never acknowledged: acknowledgement waits for
//! all earlier revisions) is ignored; revisions written after a failed write follow the last
//! good revision and continue the chain.

use bytes::{BufMut, Bytes, BytesMut};

use crate::envelope::Envelope;
use crate::error::StoreError;

const VERSION: u8 = 1;

/// One entry of a revision part.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Put(Envelope),
    Delete(Bytes),
}

/// A decoded record.
#[derive(Debug, Clone)]
pub(crate) enum Record {
    Part {
        rev: u64,
        prev: u64,
        parts: u16,
        entries: Vec<Entry>,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    Compact {
        rev: u64,
    },
}

fn pad16(b: &mut BytesMut) {
    let pad = (16 - b.len() % 16) % 16;
    b.put_bytes(0, pad);
}

fn header(b: &mut BytesMut, kind: u8) {
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_bytes(0, 6);
}

/// Encodes a record.
pub(crate) fn encode(r: &Record) -> Bytes {
    let mut b = BytesMut::new();
    match r {
        Record::Part {
            rev,
            prev,
            parts,
            entries,
        } => {
            let size: usize = entries
                .iter()
                .map(|e| match e {
                    Entry::Put(env) => env.key_ref().len() + env.len() + 48,
                    Entry::Delete(k) => k.len() + 24,
                })
                .sum();
            b.reserve(40 + size);
            header(&mut b, 1);
            b.put_u64_le(*rev);
            b.put_u64_le(*prev);
            b.put_u16_le(*parts);
            b.put_bytes(0, 6);
            b.put_u32_le(u32::try_from(entries.len()).unwrap_or(u32::MAX));
            for e in entries {
                let (op, key) = match e {
                    Entry::Put(env) => (1u8, env.key_ref()),
                    Entry::Delete(k) => (2u8, &k[..]),
                };
                b.put_u8(op);
                b.put_bytes(0, 3);
                b.put_u32_le(u32::try_from(key.len()).unwrap_or(u32::MAX));
                b.put_slice(key);
                pad16(&mut b);
                if let Entry::Put(env) = e {
                    b.put_u32_le(u32::try_from(env.len()).unwrap_or(u32::MAX));
                    b.put_bytes(0, 12);
                    b.put_slice(env.as_bytes());
                }
            }
        }
        Record::LeaseGrant { id, ttl } => {
            header(&mut b, 2);
            b.put_i64_le(*id);
            b.put_i64_le(*ttl);
        }
        Record::LeaseRevoke { id } => {
            header(&mut b, 3);
            b.put_i64_le(*id);
        }
        Record::Compact { rev } => {
            header(&mut b, 4);
            b.put_u64_le(*rev);
        }
    }
    b.freeze()
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, StoreError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| corrupt("truncated record"))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    fn zeros(&mut self, n: usize) -> Result<(), StoreError> {
        if self.take(n)?.iter().any(|b| *b != 0) {
            return Err(corrupt("reserved bytes are not zero"));
        }
        Ok(())
    }

    fn pad16(&mut self) -> Result<(), StoreError> {
        let pad = (16 - self.pos % 16) % 16;
        self.zeros(pad)
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("engine log record: {what}"))
}

/// Decodes (and validates: every envelope through its checked decoder) a record.
pub(crate) fn decode(buf: Bytes) -> Result<Record, StoreError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != VERSION {
        return Err(corrupt("unknown version"));
    }
    let kind = r.u8()?;
    r.zeros(6)?;
    let rec = match kind {
        1 => {
            let rev = r.u64()?;
            let prev = r.u64()?;
            let parts = r.u16()?;
            r.zeros(6)?;
            let n = r.u32()? as usize;
            if prev >= rev || parts == 0 {
                return Err(corrupt("bad revision header"));
            }
            // Each entry takes at least 16 bytes: bound the allocation by the input.
            if n > r.buf.len() / 16 {
                return Err(corrupt("entry count exceeds the record"));
            }
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let op = r.u8()?;
                r.zeros(3)?;
                let klen = r.u32()? as usize;
                let key = r.take(klen)?;
                r.pad16()?;
                match op {
                    1 => {
                        let elen = r.u32()? as usize;
                        r.zeros(12)?;
                        let env = Envelope::decode(r.take(elen)?)?;
                        if env.key_ref() != &key[..] || env.mod_revision().0 != rev {
                            return Err(corrupt("envelope does not match its entry"));
                        }
                        entries.push(Entry::Put(env));
                    }
                    2 => {
                        if key.is_empty() {
                            return Err(corrupt("empty key"));
                        }
                        entries.push(Entry::Delete(key));
                    }
                    _ => return Err(corrupt("unknown entry op")),
                }
            }
            Record::Part {
                rev,
                prev,
                parts,
                entries,
            }
        }
        2 => Record::LeaseGrant {
            id: r.u64()? as i64,
            ttl: r.u64()? as i64,
        },
        3 => Record::LeaseRevoke {
            id: r.u64()? as i64,
        },
        4 => Record::Compact { rev: r.u64()? },
        _ => return Err(corrupt("unknown kind")),
    };
    if r.pos != r.buf.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ObjectValue, Revision};
    use crate::envelope::VersionMeta;

    fn env(key: &[u8], rev: u64) -> Envelope {
        Envelope::encode(
            key,
            ObjectValue::opaque(&b"value"[..]),
            VersionMeta {
                mod_revision: Revision(rev),
                create_revision: Revision(rev),
                version: 1,
                lease: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_zero_copy_alignment() {
        let rec = Record::Part {
            rev: 9,
            prev: 8,
            parts: 2,
            entries: vec![
                Entry::Put(env(b"/a", 9)),
                Entry::Delete(Bytes::from_static(b"/bcd")),
                Entry::Put(env(b"/xyz123", 9)),
            ],
        };
        let bytes = encode(&rec);
        // Copy into a 16-aligned buffer, as the WAL hands payloads back.
        let mut v = rkyv::util::AlignedVec::<16>::new();
        v.extend_from_slice(&bytes);
        let aligned = Bytes::from_owner(v);
        let Record::Part {
            rev,
            prev,
            parts,
            entries,
        } = decode(aligned.clone()).unwrap()
        else {
            panic!()
        };
        assert_eq!((rev, prev, parts, entries.len()), (9, 8, 2, 3));
        let Entry::Put(e) = &entries[0] else { panic!() };
        let off = e.as_bytes().as_ptr() as usize - aligned.as_ptr() as usize;
        assert!(off < aligned.len(), "decoded in place, no copy");
        for r in [
            Record::LeaseGrant { id: 5, ttl: 60 },
            Record::LeaseRevoke { id: 5 },
            Record::Compact { rev: 3 },
        ] {
            let d = decode(encode(&r)).unwrap();
            assert_eq!(format!("{d:?}"), format!("{r:?}"));
        }
    }

    #[test]
    fn rejects_damage() {
        let rec = Record::Part {
            rev: 2,
            prev: 1,
            parts: 1,
            entries: vec![Entry::Put(env(b"/a", 2))],
        };
        let good = encode(&rec).to_vec();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let _ = decode(Bytes::from(bad)); // must not panic
        }
        for n in 0..good.len() {
            assert!(decode(Bytes::from(good[..n].to_vec())).is_err());
        }
        // A put whose envelope revision differs from the record's is refused.
        let wrong = Record::Part {
            rev: 3,
            prev: 1,
            parts: 1,
            entries: vec![Entry::Put(env(b"/a", 2))],
        };
        assert!(decode(encode(&wrong)).is_err());
    }
}
