//! How an [`ObjectValue`] is stored as an etcd value.
//!
//! Opaque values (what an etcd client `put`) are stored as their raw bytes, so a real etcd
//! holds exactly what a client wrote and `etcdctl get` against it shows it. Every other value
//! is stored as a small self-describing envelope:
//!
//! ```text
//! MAGIC "\0KSV" | format 1u8 | content_type u8 | rv_slot_present u8 | rv_slot u32le
//! | uid | kind | namespace | name            (each: len u32le + UTF-8 bytes)
//! | labels, fields                            (each: count u32le + (key, value) strings)
//! | raw (the rest)
//! ```
//!
//! An opaque value whose bytes happen to start with `MAGIC` is enveloped too, so decoding is
//! unambiguous: bytes starting with `MAGIC` are an envelope, anything else is opaque.
//! The revision is not stored: `rv_slot` is filled at read time with the mod revision etcd
//! reports, so the bytes served are those a write-once store would have stamped.

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::{ContentType, ObjectValue, Revision};
use crate::error::StoreError;

/// Leading bytes of an enveloped value. A NUL first byte never starts JSON, YAML or the
/// Kubernetes protobuf magic (`k8s\0`).
pub const MAGIC: &[u8; 4] = b"\0KSV";
const FORMAT: u8 = 1;
/// Longest metadata string or pair count accepted when decoding (bounds a corrupt length).
const MAX_META_LEN: usize = 1 << 20;

fn is_plain_opaque(v: &ObjectValue) -> bool {
    v.content_type == ContentType::Opaque
        && v.rv_slot.is_none()
        && v.uid.is_empty()
        && v.kind.is_empty()
        && v.namespace.is_empty()
        && v.name.is_empty()
        && v.labels.is_empty()
        && v.fields.is_empty()
        && !v.raw.starts_with(MAGIC)
}

fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_u32_le(s.len() as u32);
    buf.put_slice(s.as_bytes());
}

/// Encodes a value for storage in etcd.
pub fn encode(v: &ObjectValue) -> Bytes {
    if is_plain_opaque(v) {
        return v.raw.clone();
    }
    let meta: usize = [&v.uid, &v.kind, &v.namespace, &v.name]
        .iter()
        .map(|s| s.len() + 4)
        .sum::<usize>()
        + v.labels
            .iter()
            .chain(v.fields.iter())
            .map(|(k, x)| k.len() + x.len() + 8)
            .sum::<usize>();
    let mut buf = BytesMut::with_capacity(MAGIC.len() + 16 + meta + v.raw.len());
    buf.put_slice(MAGIC);
    buf.put_u8(FORMAT);
    buf.put_u8(v.content_type as u8);
    buf.put_u8(u8::from(v.rv_slot.is_some()));
    buf.put_u32_le(v.rv_slot.unwrap_or(0));
    for s in [&v.uid, &v.kind, &v.namespace, &v.name] {
        put_str(&mut buf, s);
    }
    for pairs in [&v.labels, &v.fields] {
        buf.put_u32_le(pairs.len() as u32);
        for (k, x) in pairs {
            put_str(&mut buf, k);
            put_str(&mut buf, x);
        }
    }
    buf.put_slice(&v.raw);
    buf.freeze()
}

struct Reader {
    data: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, StoreError> {
        if n > self.data.len() - self.pos {
            return Err(StoreError::Corrupt(format!(
                "etcd value envelope truncated at byte {} (wanted {n} more)",
                self.pos
            )));
        }
        let out = self.data.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn len(&mut self) -> Result<usize, StoreError> {
        let n = self.u32()? as usize;
        if n > MAX_META_LEN {
            return Err(StoreError::Corrupt(format!(
                "etcd value envelope: length {n} too large"
            )));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let n = self.len()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| StoreError::Corrupt("etcd value envelope: string not UTF-8".into()))
    }

    fn pairs(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            out.push((self.string()?, self.string()?));
        }
        Ok(out)
    }
}

/// Decodes a value read from etcd, stamping `mod_revision` into its `rv_slot` if it has one.
pub fn decode(stored: Bytes, mod_revision: Revision) -> Result<ObjectValue, StoreError> {
    if !stored.starts_with(MAGIC) {
        return Ok(ObjectValue::opaque(stored));
    }
    let mut r = Reader {
        data: stored,
        pos: MAGIC.len(),
    };
    let format = r.u8()?;
    if format != FORMAT {
        return Err(StoreError::Corrupt(format!(
            "etcd value envelope: unknown format {format}"
        )));
    }
    let content_type = match r.u8()? {
        0 => ContentType::Opaque,
        1 => ContentType::Json,
        2 => ContentType::Protobuf,
        other => {
            return Err(StoreError::Corrupt(format!(
                "etcd value envelope: unknown content type {other}"
            )));
        }
    };
    let has_slot = r.u8()? != 0;
    let slot = r.u32()?;
    let uid = r.string()?;
    let kind = r.string()?;
    let namespace = r.string()?;
    let name = r.string()?;
    let labels = r.pairs()?;
    let fields = r.pairs()?;
    let raw = r.data.slice(r.pos..);
    let (raw, rv_slot) = if has_slot {
        let at = slot as usize;
        if at > raw.len() {
            return Err(StoreError::Corrupt(format!(
                "etcd value envelope: rv_slot {at} past the end ({} bytes)",
                raw.len()
            )));
        }
        let digits = mod_revision.0.to_string();
        let mut out = BytesMut::with_capacity(raw.len() + digits.len());
        out.put_slice(&raw[..at]);
        out.put_slice(digits.as_bytes());
        out.put_slice(&raw[at..]);
        (out.freeze(), Some(slot))
    } else {
        (raw, None)
    };
    Ok(ObjectValue {
        uid,
        kind,
        namespace,
        name,
        labels,
        fields,
        content_type,
        raw,
        rv_slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_values_are_stored_verbatim() {
        let v = ObjectValue::opaque(&b"hello"[..]);
        assert_eq!(encode(&v), Bytes::from_static(b"hello"));
        assert_eq!(decode(encode(&v), Revision(3)).unwrap(), v);
    }

    #[test]
    fn opaque_values_that_look_like_an_envelope_round_trip() {
        let v = ObjectValue::opaque(Bytes::from_static(b"\0KSVxyz"));
        let enc = encode(&v);
        assert_ne!(enc, v.raw);
        assert_eq!(decode(enc, Revision(3)).unwrap(), v);
    }

    #[test]
    fn metadata_round_trips_and_the_revision_is_stamped() {
        let v = ObjectValue {
            uid: "u-1".into(),
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: "p".into(),
            labels: vec![("app".into(), "web".into())],
            fields: vec![("spec.nodeName".into(), "n1".into())],
            content_type: ContentType::Json,
            raw: Bytes::from_static(br#"{"resourceVersion":""}"#),
            rv_slot: Some(20),
        };
        let got = decode(encode(&v), Revision(42)).unwrap();
        assert_eq!(&got.raw[..], br#"{"resourceVersion":"42"}"#);
        assert_eq!(got.labels, v.labels);
        assert_eq!(got.fields, v.fields);
        assert_eq!(got.kind, "Pod");
        assert_eq!(got.content_type, ContentType::Json);
    }

    #[test]
    fn truncated_envelopes_are_corrupt_not_panics() {
        let v = ObjectValue {
            name: "x".into(),
            ..ObjectValue::opaque(&b"raw"[..])
        };
        let enc = encode(&v);
        for cut in MAGIC.len()..enc.len() - 3 {
            assert!(matches!(
                decode(enc.slice(..cut), Revision(1)),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
