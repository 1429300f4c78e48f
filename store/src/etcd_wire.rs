//! What the etcd face and the etcd backend share about etcd's wire conventions: how a range
//! end is spelled, and the exact error strings etcd sends (clients match on them).

use bytes::Bytes;

use crate::backend::RangeEnd;

/// etcd's gRPC error messages, as `etcdserver/api/v3rpc/rpctypes` spells them.
pub mod msg {
    pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
    pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
    pub const LEASE_EXIST: &str = "etcdserver: lease already exists";
    pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
    pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
    pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
    pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
    pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
    pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
    pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
    pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
    pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
    pub const NOT_CAPABLE: &str = "etcdserver: not capable";
    pub const STOPPED: &str = "etcdserver: server stopped";
}

/// The smallest key greater than every key with `prefix` as prefix (etcd's `GetPrefixRangeEnd`):
/// the prefix with its last non-0xff byte incremented and what follows dropped; `"\0"` (every
/// key) if there is none.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// etcd's `range_end` bytes for a range starting at `key`.
pub fn encode_range_end(key: &[u8], end: &RangeEnd) -> Bytes {
    match end {
        RangeEnd::Single => Bytes::new(),
        RangeEnd::Prefix => prefix_end(key),
        RangeEnd::Until(e) => e.clone(),
        RangeEnd::Unbounded => Bytes::from_static(b"\0"),
    }
}

/// Reads etcd's `range_end` bytes for a range starting at `key`.
pub fn decode_range_end(key: &[u8], end: Bytes) -> RangeEnd {
    if end.is_empty() {
        RangeEnd::Single
    } else if end.as_ref() == b"\0" {
        RangeEnd::Unbounded
    } else if !key.is_empty() && end == prefix_end(key) {
        RangeEnd::Prefix
    } else {
        RangeEnd::Until(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"abc"), Bytes::from_static(b"abd"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
        assert_eq!(prefix_end(b""), Bytes::from_static(b"\0"));
    }

    #[test]
    fn range_ends_round_trip() {
        for end in [
            RangeEnd::Single,
            RangeEnd::Prefix,
            RangeEnd::Unbounded,
            RangeEnd::Until(Bytes::from_static(b"zzz")),
        ] {
            assert_eq!(
                decode_range_end(b"/registry/", encode_range_end(b"/registry/", &end)),
                end
            );
        }
    }
}
