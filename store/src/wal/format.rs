//! The WAL's on-disk encoding: segment headers and record frames, and a pure decoder.
//!
//! Nothing here does I/O, so the decoder can be fuzzed on arbitrary bytes
//! (`store/fuzz/fuzz_targets/wal_decode.rs`): it must never panic, never read out of bounds,
//! and never accept a record whose checksum does not match. All integers are little-endian.

use std::ops::Range;

/// The format version written into every segment header and record header.
pub const FORMAT_VERSION: u8 = 1;
/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KSWALSEG";
/// Size of the segment header; records start right after it.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Size of a record header; the payload follows it.
pub const RECORD_HEADER_LEN: usize = 32;
/// Every record starts (and so ends) on a multiple of this.
pub const RECORD_ALIGN: usize = 16;
/// The largest payload the format can carry (a sanity bound for the decoder).
pub const MAX_PAYLOAD_LEN: usize = 64 << 20;
/// Record flag: this record ends a write batch (the unit that is fdatasync'ed together).
pub const FLAG_BATCH_END: u8 = 1;

/// The header at the start of each segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The shard this log belongs to.
    pub shard: u16,
    /// Random per segment; seeds every record checksum, so a record copied from another
    /// segment (or forged inside a payload) never validates here.
    pub salt: u32,
    /// The segment's sequence number (consecutive within a log).
    pub seq: u64,
    /// The batch number of the first batch written to this segment.
    pub first_batch: u64,
    /// How many bytes of the previous segment are durable and valid. The writer starts a new
    /// segment after any I/O failure; bytes past this length in the previous segment belong
    /// to writes that failed and must never be replayed.
    pub prev_durable_len: u64,
    /// The last revision written before this segment (0 if none).
    pub base_revision: u64,
    /// The most write batches the writer may have had written but not yet acknowledged at
    /// once (overlapped group commit; 0 in segments written before overlap existed, read as
    /// 1). Recovery treats damage followed only by batches inside this window as a torn tail.
    pub overlap: u8,
}

impl SegmentHeader {
    /// Encodes the header, with its checksum in the last 4 bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8] = FORMAT_VERSION;
        b[9] = self.overlap;
        b[10..12].copy_from_slice(&self.shard.to_le_bytes());
        b[12..16].copy_from_slice(&self.salt.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_batch.to_le_bytes());
        b[32..40].copy_from_slice(&self.prev_durable_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.base_revision.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, FrameError> {
        let b: &[u8; SEGMENT_HEADER_LEN] = buf
            .get(..SEGMENT_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::Incomplete)?;
        if b.iter().all(|&x| x == 0) {
            return Err(FrameError::Zero);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(FrameError::BadHeader("segment magic"));
        }
        if b[8] != FORMAT_VERSION {
            return Err(FrameError::BadVersion(b[8]));
        }
        if le_u32(b, 60) != crc32c::crc32c(&b[..60]) {
            return Err(FrameError::BadChecksum);
        }
        Ok(Self {
            shard: u16::from_le_bytes([b[10], b[11]]),
            salt: le_u32(b, 12),
            seq: le_u64(b, 16),
            first_batch: le_u64(b, 24),
            prev_durable_len: le_u64(b, 32),
            base_revision: le_u64(b, 40),
            overlap: b[9],
        })
    }
}

/// Why a frame (segment header or record) did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside the frame.
    Incomplete,
    /// The header bytes are all zero: preallocated, never-written space.
    Zero,
    /// A header field has an impossible value.
    BadHeader(&'static str),
    /// An unknown format version.
    BadVersion(u8),
    /// The checksum does not match.
    BadChecksum,
}

/// A record that decoded and passed its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// The revision the engine appended it with.
    pub revision: u64,
    /// The write batch it was part of.
    pub batch: u64,
    /// Record flags ([`FLAG_BATCH_END`]).
    pub flags: u8,
    /// Where the payload lies in the decoded buffer.
    pub payload: Range<usize>,
    /// Offset of the next record.
    pub next: usize,
}

/// Rounds `n` up to a multiple of [`RECORD_ALIGN`].
pub const fn align_up(n: usize) -> usize {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// The framed size of a record with a payload of `payload_len` bytes.
pub const fn framed_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + align_up(payload_len)
}

fn record_crc(salt: u32, header_tail: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&salt.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, header_tail);
    crc32c::crc32c_append(crc, payload)
}

/// Appends one framed record to `out` (header, payload, zero padding to [`RECORD_ALIGN`]).
///
/// Record header layout (32 bytes): `payload_len u32 | crc32c u32 | revision u64 | batch u64 |
/// version u8 | flags u8 | reserved [u8; 6]`. The checksum covers the salt, header bytes
/// 8..32 and the payload.
pub fn encode_record(
    out: &mut Vec<u8>,
    salt: u32,
    revision: u64,
    batch: u64,
    flags: u8,
    payload: &[u8],
) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LEN);
    debug_assert!(
        out.len().is_multiple_of(RECORD_ALIGN),
        "records start aligned"
    );
    let mut h = [0u8; RECORD_HEADER_LEN];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&revision.to_le_bytes());
    h[16..24].copy_from_slice(&batch.to_le_bytes());
    h[24] = FORMAT_VERSION;
    h[25] = flags;
    let crc = record_crc(salt, &h[8..], payload);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.resize(out.len() + (align_up(payload.len()) - payload.len()), 0);
}

/// Decodes the record at `offset` in `buf`, checking its framing and checksum.
pub fn decode_record(buf: &[u8], offset: usize, salt: u32) -> Result<DecodedRecord, FrameError> {
    if !offset.is_multiple_of(RECORD_ALIGN) {
        return Err(FrameError::BadHeader("unaligned record"));
    }
    let h: &[u8; RECORD_HEADER_LEN] = buf
        .get(offset..offset.saturating_add(RECORD_HEADER_LEN))
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameError::Incomplete)?;
    if h.iter().all(|&x| x == 0) {
        return Err(FrameError::Zero);
    }
    if h[24] != FORMAT_VERSION {
        return Err(FrameError::BadVersion(h[24]));
    }
    if h[25] & !FLAG_BATCH_END != 0 || h[26..32].iter().any(|&x| x != 0) {
        return Err(FrameError::BadHeader("reserved bits set"));
    }
    let len = le_u32(h, 0) as usize;
    if len > MAX_PAYLOAD_LEN {
        return Err(FrameError::BadHeader("payload length"));
    }
    let start = offset + RECORD_HEADER_LEN;
    let payload = buf.get(start..start + len).ok_or(FrameError::Incomplete)?;
    let next = offset + framed_len(len);
    let padding = buf.get(start + len..next).ok_or(FrameError::Incomplete)?;
    if padding.iter().any(|&b| b != 0) {
        return Err(FrameError::BadHeader("nonzero padding"));
    }
    if record_crc(salt, &h[8..], payload) != le_u32(h, 4) {
        return Err(FrameError::BadChecksum);
    }
    Ok(DecodedRecord {
        revision: le_u64(h, 8),
        batch: le_u64(h, 16),
        flags: h[25],
        payload: start..start + len,
        next,
    })
}

/// The result of scanning one segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub header: SegmentHeader,
    /// Records of complete batches, in order.
    pub records: Vec<DecodedRecord>,
    /// End of the last complete batch (or of the header): everything before is valid.
    pub valid_end: usize,
    /// The last complete batch number (`header.first_batch - 1` if none).
    pub last_batch: u64,
    /// Why scanning stopped before `limit`, if it did: the offset and the error there.
    pub stopped: Option<(usize, FrameError)>,
    /// Offset of a valid record of a batch beyond the overlap window (> `last_batch +
    /// max(header.overlap, 1)`) found after the stop point. With at most `overlap` batches
    /// written but unacknowledged at any time, such a record was written after the damaged
    /// batch was synced and acknowledged, so the damage is corruption, not a torn tail.
    pub later_batch_at: Option<usize>,
}

/// Scans a segment: validates its header and decodes records up to `limit` bytes (the file
/// length, or the durable length recorded by the next segment). Records of a batch count only
/// once the batch's last record (flag [`FLAG_BATCH_END`]) has decoded. Never panics.
pub fn scan_segment(buf: &[u8], limit: usize) -> Result<SegmentScan, FrameError> {
    let header = SegmentHeader::decode(buf)?;
    let buf = buf.get(..limit.min(buf.len())).unwrap_or(buf);
    let mut scan = SegmentScan {
        header,
        records: Vec::new(),
        valid_end: SEGMENT_HEADER_LEN,
        last_batch: header.first_batch.saturating_sub(1),
        stopped: None,
        later_batch_at: None,
    };
    let mut pending: Vec<DecodedRecord> = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while off < buf.len() {
        let rec = match decode_record(buf, off, header.salt) {
            Ok(rec) => rec,
            Err(e) => {
                scan.stopped = Some((off, e));
                break;
            }
        };
        // A batch's records share one batch number, which grows by one per batch.
        let expected = scan.last_batch.wrapping_add(1);
        if rec.batch != expected {
            scan.stopped = Some((off, FrameError::BadHeader("batch number out of sequence")));
            break;
        }
        off = rec.next;
        let end = rec.flags & FLAG_BATCH_END != 0;
        pending.push(rec);
        if end {
            scan.records.append(&mut pending);
            scan.valid_end = off;
            scan.last_batch = expected;
        }
    }
    if scan.stopped.is_none() && !pending.is_empty() {
        // The buffer ended inside a batch.
        scan.stopped = Some((off, FrameError::Incomplete));
    }
    if scan.stopped.is_some() {
        let window = u64::from(header.overlap.max(1));
        scan.later_batch_at = find_later_batch(
            buf,
            scan.valid_end,
            header.salt,
            scan.last_batch.saturating_add(window),
        );
    }
    Ok(scan)
}

/// Looks for any valid record of a batch `> beyond` at an aligned offset after `from`.
fn find_later_batch(buf: &[u8], from: usize, salt: u32, beyond: u64) -> Option<usize> {
    let mut off = align_up(from);
    while off + RECORD_HEADER_LEN <= buf.len() {
        // Cheap filter before the checksum: the version byte and reserved bytes.
        if buf.get(off + 24) == Some(&FORMAT_VERSION)
            && let Ok(rec) = decode_record(buf, off, salt)
            && rec.batch > beyond
        {
            return Some(off);
        }
        off += RECORD_ALIGN;
    }
    None
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(salt: u32) -> Vec<u8> {
        let h = SegmentHeader {
            shard: 3,
            salt,
            seq: 7,
            first_batch: 10,
            prev_durable_len: 0,
            base_revision: 0,
            overlap: 0,
        };
        h.encode().to_vec()
    }

    #[test]
    fn header_round_trip_and_checksum() {
        let h = SegmentHeader {
            shard: 1,
            salt: 0xdead_beef,
            seq: 2,
            first_batch: 3,
            prev_durable_len: 4,
            base_revision: 5,
            overlap: 4,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(FrameError::BadChecksum));
        assert_eq!(SegmentHeader::decode(&[0u8; 64]), Err(FrameError::Zero));
    }

    #[test]
    fn records_are_aligned_and_checked() {
        let mut buf = segment(42);
        for (i, len) in [0usize, 1, 15, 16, 17, 100].into_iter().enumerate() {
            let payload = vec![i as u8 + 1; len];
            encode_record(
                &mut buf,
                42,
                i as u64 + 1,
                10 + i as u64,
                FLAG_BATCH_END,
                &payload,
            );
            assert_eq!(buf.len() % RECORD_ALIGN, 0);
        }
        let scan = scan_segment(&buf, buf.len()).unwrap();
        assert_eq!(scan.records.len(), 6);
        assert_eq!(scan.valid_end, buf.len());
        assert_eq!(scan.stopped, None);
        assert_eq!(&buf[scan.records[5].payload.clone()], &[6u8; 100][..]);
        // The wrong salt fails every record.
        assert_eq!(
            decode_record(&buf, SEGMENT_HEADER_LEN, 43),
            Err(FrameError::BadChecksum)
        );
    }

    #[test]
    fn an_unfinished_batch_is_not_returned() {
        let mut buf = segment(1);
        encode_record(&mut buf, 1, 1, 10, 0, b"a");
        let scan = scan_segment(&buf, buf.len()).unwrap();
        assert!(scan.records.is_empty());
        assert_eq!(scan.valid_end, SEGMENT_HEADER_LEN);
        assert_eq!(scan.stopped, Some((buf.len(), FrameError::Incomplete)));
    }

    #[test]
    fn damage_followed_by_a_later_batch_is_reported() {
        let mut buf = segment(1);
        encode_record(&mut buf, 1, 1, 10, FLAG_BATCH_END, b"first");
        let second = buf.len();
        encode_record(&mut buf, 1, 2, 11, FLAG_BATCH_END, b"second");
        encode_record(&mut buf, 1, 3, 12, FLAG_BATCH_END, b"third");
        buf[second + RECORD_HEADER_LEN] ^= 0xff;
        let scan = scan_segment(&buf, buf.len()).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert!(scan.later_batch_at.is_some());
        // With two batches in flight allowed, batch 12 may have been written before batch
        // 11's sync returned: a torn tail, not corruption. Batch 13 would be beyond it.
        let mut overlapped = segment(1);
        overlapped[9] = 2;
        let crc = crc32c::crc32c(&overlapped[..60]);
        overlapped[60..64].copy_from_slice(&crc.to_le_bytes());
        overlapped.extend_from_slice(&buf[SEGMENT_HEADER_LEN..]);
        let scan = scan_segment(&overlapped, overlapped.len()).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.later_batch_at, None);
        encode_record(&mut overlapped, 1, 4, 13, FLAG_BATCH_END, b"fourth");
        let scan = scan_segment(&overlapped, overlapped.len()).unwrap();
        assert_eq!(scan.stopped, Some((second, FrameError::BadChecksum)));
        assert!(scan.later_batch_at.is_some());
    }
}
