//! Fuzzes the WAL decoder: arbitrary bytes never panic it, and a record that decodes is
//! always one that was encoded (a damaged record is rejected, never returned altered).
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::wal::format::{
    FLAG_BATCH_END, RECORD_ALIGN, SEGMENT_HEADER_LEN, SegmentHeader, decode_record, encode_record,
    scan_segment,
};

fuzz_target!(|data: &[u8]| {
    // 1. Arbitrary bytes as a segment: no panic, and what comes back is in bounds.
    if let Ok(scan) = scan_segment(data, data.len()) {
        assert!(scan.valid_end <= data.len());
        for r in &scan.records {
            assert!(r.payload.end <= r.next && r.next <= scan.valid_end);
            assert_eq!(r.next % RECORD_ALIGN, 0);
        }
    }
    for off in [0usize, 16, 64] {
        let _ = decode_record(data, off, 0);
    }

    // 2. Encode the input as records (split on 0xff), damage one byte, decode.
    let Some((&ctl, rest)) = data.split_first() else { return };
    let header = SegmentHeader {
        shard: 1,
        salt: 0x1234_5678,
        seq: 0,
        first_batch: 1,
        prev_durable_len: 0,
        base_revision: 0,
        overlap: 0,
    };
    let mut seg = header.encode().to_vec();
    let payloads: Vec<&[u8]> = rest.split(|&b| b == 0xff).take(64).collect();
    for (i, p) in payloads.iter().enumerate() {
        encode_record(&mut seg, header.salt, i as u64 + 1, i as u64 + 1, FLAG_BATCH_END, p);
    }
    let clean = scan_segment(&seg, seg.len()).expect("a segment we encoded decodes");
    assert_eq!(clean.records.len(), payloads.len());
    for (r, p) in clean.records.iter().zip(&payloads) {
        assert_eq!(&seg[r.payload.clone()], *p);
    }
    if seg.len() > SEGMENT_HEADER_LEN {
        let at = SEGMENT_HEADER_LEN + (usize::from(ctl) * 7919) % (seg.len() - SEGMENT_HEADER_LEN);
        let mut bad = seg.clone();
        bad[at] ^= ctl | 1;
        let scan = scan_segment(&bad, bad.len()).expect("header untouched");
        for (r, p) in scan.records.iter().zip(&payloads) {
            assert_eq!(&bad[r.payload.clone()], *p, "a damaged record was accepted");
        }
    }
});
