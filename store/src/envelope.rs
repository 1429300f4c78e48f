//! The envelope: how the engine holds one version of one object, in memory, in the WAL and
//! in snapshots.
//!
//! An envelope is one 16-byte-aligned record:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | format version ([`FORMAT_VERSION`]) |
//! | 1..4 | zero |
//! | 4..8 | crc32c of the body (little-endian) |
//! | 8..12 | body length (little-endian) |
//! | 12..16 | zero |
//! | 16.. | body: an rkyv archive of the object (key, revisions, metadata, raw bytes) |
//!
//! followed by zero padding to a multiple of 16. The body holds the key, mod/create revision,
//! version, lease, uid, kind, namespace, name, labels, indexed fields, content type and the
//! raw serialized object, with the revision already stamped into the raw bytes (see
//! [`ObjectValue::rv_slot`]). Reads hand out `raw` as a [`Bytes`] slice of the record: no
//! copy, no parse.
//!
//! **Trust boundary.** [`Envelope::decode`] is the only way to build an envelope from bytes
//! that came from outside this process (disk, network, fuzzer): it checks the header, the
//! crc32c (rkyv's validation is structural only) and then validates the archive with rkyv's
//! checked `access`. Envelopes built by [`Envelope::encode`] are valid by construction. After
//! that, accessors read the archive without re-validating it: this module is the one place of
//! the engine that holds `unsafe` (the crate doc allows it for rkyv access).
#![allow(unsafe_code)]

use bytes::Bytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::backend::{ContentType, KeyValue, LeaseId, ObjectValue, Revision};
use crate::error::{MAX_VALUE_BYTES, StoreError};

/// The envelope format this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Length of the record header; the body starts here, 16-byte aligned.
pub const HEADER_LEN: usize = 16;

/// Largest key the engine accepts (etcd's default request limits are far above typical keys;
/// Kubernetes keys are short). Bounds the envelope and the index.
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// A `(name, value)` string pair (labels, indexed fields).
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Label key or field path.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// The archived body of a version-1 envelope.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub struct EnvelopeBody {
    key: Vec<u8>,
    mod_revision: u64,
    create_revision: u64,
    version: i64,
    /// 0 = no lease.
    lease: i64,
    uid: String,
    kind: String,
    namespace: String,
    name: String,
    labels: Vec<Pair>,
    fields: Vec<Pair>,
    content_type: u8,
    raw: Vec<u8>,
}

/// The store-assigned part of a version: what the engine knows only at commit time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionMeta {
    /// The revision of this write.
    pub mod_revision: Revision,
    /// The revision that created the key (this one for a create).
    pub create_revision: Revision,
    /// Writes to the key since creation (1 after create).
    pub version: i64,
    /// The lease the key is attached to.
    pub lease: Option<LeaseId>,
}

/// One stored version of one key: a validated, 16-byte-aligned envelope record, shared by
/// reference count. Cloning is cheap (a `Bytes` clone).
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The whole record (header, body, padding). Invariant: starts 16-byte aligned, header
    /// valid, body a valid `ArchivedEnvelopeBody` of `body_len` bytes at `HEADER_LEN`.
    buf: Bytes,
    body_len: usize,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.body();
        f.debug_struct("Envelope")
            .field("key", &String::from_utf8_lossy(b.key.as_slice()))
            .field("mod_revision", &b.mod_revision.to_native())
            .field("len", &self.buf.len())
            .finish()
    }
}

fn check_value(value: &ObjectValue) -> Result<(), StoreError> {
    if value.raw.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            size: value.raw.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    if let Some(slot) = value.rv_slot
        && slot as usize > value.raw.len()
    {
        return Err(StoreError::InvalidRequest(format!(
            "rv_slot {slot} is past the end of the value ({} bytes)",
            value.raw.len()
        )));
    }
    Ok(())
}

/// Checks what [`Envelope::encode`] would refuse, without encoding (so a transaction can be
/// validated before it applies anything).
pub fn validate(key: &[u8], value: &ObjectValue) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidRequest("empty key".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::InvalidRequest(format!(
            "key of {} bytes exceeds {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    check_value(value)
}

/// The raw bytes with the decimal revision inserted at `rv_slot`.
fn stamp(raw: &[u8], rv_slot: Option<u32>, rev: Revision) -> Vec<u8> {
    match rv_slot {
        Some(slot) if (slot as usize) <= raw.len() => {
            let slot = slot as usize;
            let digits = rev.0.to_string();
            let mut out = Vec::with_capacity(raw.len() + digits.len());
            out.extend_from_slice(&raw[..slot]);
            out.extend_from_slice(digits.as_bytes());
            out.extend_from_slice(&raw[slot..]);
            out
        }
        _ => raw.to_vec(),
    }
}

/// Approximate size of an envelope built from these parts (for quota checks before encoding).
pub fn estimated_len(key: &[u8], value: &ObjectValue) -> u64 {
    let strings: usize = value.uid.len()
        + value.kind.len()
        + value.namespace.len()
        + value.name.len()
        + value
            .labels
            .iter()
            .chain(&value.fields)
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>();
    (HEADER_LEN + 128 + key.len() + strings + value.raw.len() + 20) as u64
}

impl Envelope {
    /// Builds the envelope of `value` stored under `key` with the store-assigned `meta`,
    /// stamping the revision into the raw bytes at `rv_slot`.
    ///
    /// Errors: `ValueTooLarge`, `InvalidRequest` (bad key or `rv_slot`).
    pub fn encode(key: &[u8], value: ObjectValue, meta: VersionMeta) -> Result<Self, StoreError> {
        validate(key, &value)?;
        let raw = stamp(&value.raw, value.rv_slot, meta.mod_revision);
        let body = EnvelopeBody {
            key: key.to_vec(),
            mod_revision: meta.mod_revision.0,
            create_revision: meta.create_revision.0,
            version: meta.version,
            lease: meta.lease.map_or(0, |l| l.0),
            uid: value.uid,
            kind: value.kind,
            namespace: value.namespace,
            name: value.name,
            labels: value
                .labels
                .into_iter()
                .map(|(name, value)| Pair { name, value })
                .collect(),
            fields: value
                .fields
                .into_iter()
                .map(|(name, value)| Pair { name, value })
                .collect(),
            content_type: value.content_type as u8,
            raw,
        };
        let mut buf = AlignedVec::<16>::with_capacity(HEADER_LEN + body.raw.len() + 256);
        buf.extend_from_slice(&[0u8; HEADER_LEN]);
        let mut buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&body, buf)
            .map_err(|e| StoreError::InvalidRequest(format!("envelope encoding failed: {e}")))?;
        let body_len = buf.len() - HEADER_LEN;
        let crc = crc32c::crc32c(&buf[HEADER_LEN..]);
        let pad = (16 - buf.len() % 16) % 16;
        buf.extend_from_slice(&[0u8; 16][..pad]);
        write_header(&mut buf[..HEADER_LEN], crc, body_len)?;
        let env = Self {
            buf: Bytes::from_owner(buf),
            body_len,
        };
        Ok(env)
    }

    /// Validates `buf` (header, crc32c, rkyv archive) and wraps it: the trust boundary for
    /// bytes read from disk. Copies only if `buf` is not 16-byte aligned.
    ///
    /// Errors: `Corrupt` (any check failed).
    pub fn decode(buf: Bytes) -> Result<Self, StoreError> {
        Self::decode_inner(buf, true)
    }

    /// As [`Envelope::decode`], but without the crc32c check: for bytes a container
    /// (a snapshot body) has already checksummed. The archive is still validated.
    pub fn decode_checksummed(buf: Bytes) -> Result<Self, StoreError> {
        Self::decode_inner(buf, false)
    }

    fn decode_inner(buf: Bytes, check_crc: bool) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("envelope: {what}"));
        if buf.len() < HEADER_LEN {
            return Err(corrupt("shorter than its header"));
        }
        if buf[0] != FORMAT_VERSION {
            return Err(corrupt(&format!("unknown format version {}", buf[0])));
        }
        if buf[1..4] != [0; 3] || buf[12..16] != [0; 4] {
            return Err(corrupt("reserved header bytes are not zero"));
        }
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let body_len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        let Some(end) = HEADER_LEN.checked_add(body_len) else {
            return Err(corrupt("body length overflows"));
        };
        if end > buf.len() || buf.len() - end >= 16 || !buf.len().is_multiple_of(16) {
            return Err(corrupt("body length does not match the record length"));
        }
        if check_crc && crc32c::crc32c(&buf[HEADER_LEN..end]) != crc {
            return Err(corrupt("crc32c mismatch"));
        }
        let buf = if (buf.as_ptr() as usize).is_multiple_of(16) {
            buf
        } else {
            let mut v = AlignedVec::<16>::with_capacity(buf.len());
            v.extend_from_slice(&buf);
            Bytes::from_owner(v)
        };
        let body = rkyv::access::<ArchivedEnvelopeBody, rancor::Error>(&buf[HEADER_LEN..end])
            .map_err(|e| corrupt(&format!("invalid archive: {e}")))?;
        if body.key.is_empty() || body.content_type > ContentType::Protobuf as u8 {
            return Err(corrupt("empty key or unknown content type"));
        }
        Ok(Self { buf, body_len })
    }

    fn body(&self) -> &ArchivedEnvelopeBody {
        let bytes = &self.buf[HEADER_LEN..HEADER_LEN + self.body_len];
        // SAFETY: `Envelope` is built only by `encode` (rkyv serialized exactly these bytes
        // from an `EnvelopeBody`) or by `decode` (which validated them with rkyv's checked
        // `access`); `buf` is immutable shared memory that starts 16-byte aligned, so the
        // archive at `HEADER_LEN..HEADER_LEN + body_len` stays valid for `&self`'s lifetime.
        unsafe { rkyv::access_unchecked::<ArchivedEnvelopeBody>(bytes) }
    }

    /// The whole record, as written to the WAL and snapshots.
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    /// Bytes held by this record.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Never true (a record has at least its header); present for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn slice_of(&self, part: &[u8]) -> Bytes {
        // The part lies inside `buf` (it is a field of the archive); compute its offset.
        let start = part.as_ptr() as usize - self.buf.as_ptr() as usize;
        self.buf.slice(start..start + part.len())
    }

    /// The key, as a zero-copy slice of the record.
    pub fn key(&self) -> Bytes {
        self.slice_of(self.body().key.as_slice())
    }

    /// The key, borrowed.
    pub fn key_ref(&self) -> &[u8] {
        self.body().key.as_slice()
    }

    /// The raw object bytes (revision stamped), as a zero-copy slice of the record.
    pub fn raw(&self) -> Bytes {
        self.slice_of(self.body().raw.as_slice())
    }

    /// The revision of this version.
    pub fn mod_revision(&self) -> Revision {
        Revision(self.body().mod_revision.to_native())
    }

    /// The revision that created the key.
    pub fn create_revision(&self) -> Revision {
        Revision(self.body().create_revision.to_native())
    }

    /// Writes since creation.
    pub fn version(&self) -> i64 {
        self.body().version.to_native()
    }

    /// The attached lease.
    pub fn lease(&self) -> Option<LeaseId> {
        let l = self.body().lease.to_native();
        (l != 0).then_some(LeaseId(l))
    }

    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        find(&self.body().labels, name)
    }

    /// The value of indexed field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        find(&self.body().fields, name)
    }

    /// Every indexed `(field, value)` pair.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.body()
            .fields
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
    }

    /// The value as a read returns it (metadata copied out, raw bytes shared).
    pub fn object_value(&self) -> ObjectValue {
        let b = self.body();
        let pairs = |v: &rkyv::vec::ArchivedVec<ArchivedPair>| {
            v.iter()
                .map(|p| (p.name.as_str().to_owned(), p.value.as_str().to_owned()))
                .collect()
        };
        ObjectValue {
            uid: b.uid.as_str().to_owned(),
            kind: b.kind.as_str().to_owned(),
            namespace: b.namespace.as_str().to_owned(),
            name: b.name.as_str().to_owned(),
            labels: pairs(&b.labels),
            fields: pairs(&b.fields),
            content_type: match b.content_type {
                1 => ContentType::Json,
                2 => ContentType::Protobuf,
                _ => ContentType::Opaque,
            },
            raw: self.raw(),
            rv_slot: None,
        }
    }

    /// The key-value a read returns.
    pub fn key_value(&self) -> KeyValue {
        KeyValue {
            key: self.key(),
            value: self.object_value(),
            create_revision: self.create_revision(),
            mod_revision: self.mod_revision(),
            version: self.version(),
            lease: self.lease(),
        }
    }

    /// The key-value without its value (etcd's `keys_only`).
    pub fn key_value_keys_only(&self) -> KeyValue {
        KeyValue {
            value: ObjectValue::opaque(Bytes::new()),
            ..self.key_value_meta()
        }
    }

    fn key_value_meta(&self) -> KeyValue {
        KeyValue {
            key: self.key(),
            value: ObjectValue::opaque(Bytes::new()),
            create_revision: self.create_revision(),
            mod_revision: self.mod_revision(),
            version: self.version(),
            lease: self.lease(),
        }
    }
}

fn find<'a>(pairs: &'a rkyv::vec::ArchivedVec<ArchivedPair>, name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|p| p.name.as_str() == name)
        .map(|p| p.value.as_str())
}

fn write_header(h: &mut [u8], crc: u32, body_len: usize) -> Result<(), StoreError> {
    let len = u32::try_from(body_len)
        .map_err(|_| StoreError::InvalidRequest("envelope body over 4 GiB".into()))?;
    h.fill(0);
    h[0] = FORMAT_VERSION;
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(rev: u64) -> VersionMeta {
        VersionMeta {
            mod_revision: Revision(rev),
            create_revision: Revision(3),
            version: 2,
            lease: Some(LeaseId(7)),
        }
    }

    fn sample() -> ObjectValue {
        ObjectValue {
            uid: "u-1".into(),
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: "p".into(),
            labels: vec![("app".into(), "web".into())],
            fields: vec![("spec.nodeName".into(), "n1".into())],
            content_type: ContentType::Json,
            raw: Bytes::from_static(br#"{"resourceVersion":""}"#),
            rv_slot: Some(20),
        }
    }

    #[test]
    fn round_trips_and_stamps_the_revision() {
        let env = Envelope::encode(b"/registry/pods/ns/p", sample(), meta(42)).unwrap();
        assert_eq!(env.len() % 16, 0);
        assert_eq!(env.as_bytes().as_ptr() as usize % 16, 0);
        let kv = env.key_value();
        assert_eq!(&kv.value.raw[..], br#"{"resourceVersion":"42"}"#);
        assert_eq!(&kv.key[..], b"/registry/pods/ns/p");
        assert_eq!(kv.mod_revision, Revision(42));
        assert_eq!(kv.create_revision, Revision(3));
        assert_eq!(kv.version, 2);
        assert_eq!(kv.lease, Some(LeaseId(7)));
        assert_eq!(kv.value.labels, vec![("app".to_owned(), "web".to_owned())]);
        assert_eq!(env.field("spec.nodeName"), Some("n1"));
        assert_eq!(env.label("missing"), None);
        // The raw bytes are a slice of the record, not a copy.
        let rec = env.as_bytes().as_ptr() as usize;
        let raw = kv.value.raw.as_ptr() as usize;
        assert!(raw > rec && raw < rec + env.len());
        let again = Envelope::decode(env.as_bytes().clone()).unwrap();
        assert_eq!(again.key_value(), kv);
    }

    #[test]
    fn decode_rejects_damage() {
        let env = Envelope::encode(b"/k", sample(), meta(5)).unwrap();
        let good = env.as_bytes().to_vec();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            // Flipping padding bytes past the body is harmless only if they are ignored;
            // everything inside header+body must be caught.
            if i < HEADER_LEN + env.body_len {
                assert!(Envelope::decode(Bytes::from(bad)).is_err(), "flip at {i}");
            }
        }
        assert!(Envelope::decode(Bytes::from(good[..good.len() - 16].to_vec())).is_err());
        assert!(Envelope::decode(Bytes::new()).is_err());
    }

    proptest::proptest! {
        /// What the fuzz target checks, in the normal test run: arbitrary bytes, and valid
        /// records with arbitrary bytes flipped, never panic the decoder.
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
                               flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 0..8)) {
            let _ = Envelope::decode(Bytes::from(data));
            let env = Envelope::encode(b"/k", sample(), meta(5)).unwrap();
            let mut bad = env.as_bytes().to_vec();
            for (i, x) in flips {
                let n = bad.len();
                bad[i % n] ^= x;
            }
            if let Ok(d) = Envelope::decode(Bytes::from(bad)) {
                let _ = d.key_value();
            }
        }
    }

    #[test]
    fn decode_copies_misaligned_input() {
        let env = Envelope::encode(b"/k", sample(), meta(5)).unwrap();
        let mut v = vec![0u8];
        v.extend_from_slice(env.as_bytes());
        let b = Bytes::from(v).slice(1..);
        let d = Envelope::decode(b).unwrap();
        assert_eq!(d.key_value(), env.key_value());
    }

    #[test]
    fn rejects_bad_input() {
        let mut v = sample();
        v.rv_slot = Some(1000);
        assert!(matches!(
            Envelope::encode(b"/k", v, meta(1)),
            Err(StoreError::InvalidRequest(_))
        ));
        let big = ObjectValue::opaque(vec![0u8; MAX_VALUE_BYTES + 1]);
        assert!(matches!(
            Envelope::encode(b"/k", big, meta(1)),
            Err(StoreError::ValueTooLarge { .. })
        ));
        assert!(Envelope::encode(b"", sample(), meta(1)).is_err());
    }
}
