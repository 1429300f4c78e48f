//! Routing: a stable hash from a key to a shard.
//!
//! **Architecture Invariant:** [`stable_hash`] never changes. Keys are placed on shards by it,
//! and on-disk layouts (per-shard WALs) depend on the placement, so the function is fixed
//! across platforms, releases and Rust versions: FNV-1a 64 over the bytes, then the murmur3
//! 64-bit finaliser to spread FNV's weak low bits before the modulo. It is not a keyed hash;
//! it must not be used where an adversary choosing keys could matter for more than balance.

use crate::id::ShardId;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bit, over `bytes` (the published reference function).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// murmur3's 64-bit finaliser: a bijection that makes every output bit depend on every
/// input bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The stable 64-bit hash of a key. Fixed forever (see the module doc).
pub fn stable_hash(key: &[u8]) -> u64 {
    fmix64(fnv1a64(key))
}

/// The shard that owns `key` in a set of `count` shards: `stable_hash(key) % count`.
///
/// `count` of 0 is treated as 1 (everything on shard 0) rather than panicking; a
/// [`ShardSet`](crate::ShardSet) never has 0 shards and at most `u16::MAX + 1`.
pub fn shard_for_key(key: &[u8], count: usize) -> ShardId {
    let count = count.clamp(1, usize::from(u16::MAX) + 1) as u64;
    // The remainder is < count <= 65536, so it fits a u16 index.
    ShardId((stable_hash(key) % count) as u16)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference test suite (isthe.com/chongo/tech/comp/fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn stable_hash_is_pinned() {
        // These values are the placement contract: if this test fails, existing data would
        // move shards. Never update them; add a new function instead.
        let vectors: [(&[u8], u64); 4] = [
            (b"", STABLE_EMPTY),
            (b"a", STABLE_A),
            (b"/registry/core/pods/default/nginx", STABLE_POD),
            (b"foobar", STABLE_FOOBAR),
        ];
        for (key, want) in vectors {
            assert_eq!(
                stable_hash(key),
                want,
                "key {:?}",
                String::from_utf8_lossy(key)
            );
        }
        assert_eq!(
            shard_for_key(b"/registry/core/pods/default/nginx", 4),
            ShardId((STABLE_POD % 4) as u16)
        );
        assert_eq!(
            shard_for_key(b"foobar", 7),
            ShardId((STABLE_FOOBAR % 7) as u16)
        );
    }

    const STABLE_EMPTY: u64 = 0xefd0_1f60_ba99_2926;
    const STABLE_A: u64 = 0x82a2_a958_a9be_ce5b;
    const STABLE_POD: u64 = 0xe033_9453_ec87_ad84;
    const STABLE_FOOBAR: u64 = 0x2c22_1949_22d1_672b;

    #[test]
    fn keys_spread_evenly_over_shards() {
        // 40,000 Kubernetes-shaped keys over 2, 3, 8 and 64 shards. A uniform hash gives
        // buckets with standard deviation sqrt(mean): require every bucket within 5 of those,
        // and the chi-square statistic within 6 standard deviations of its mean (k - 1).
        for count in [2usize, 3, 8, 64] {
            let mut buckets = vec![0u32; count];
            let n = 40_000u32;
            for i in 0..n {
                let key = format!("/registry/core/pods/ns-{}/pod-{i}", i % 97);
                buckets[shard_for_key(key.as_bytes(), count).index()] += 1;
            }
            let mean = f64::from(n) / count as f64;
            let sigma = mean.sqrt();
            let mut chi2 = 0.0;
            for (s, &b) in buckets.iter().enumerate() {
                let d = f64::from(b) - mean;
                chi2 += d * d / mean;
                assert!(
                    d.abs() < 5.0 * sigma,
                    "{count} shards: shard {s} has {b} keys, mean {mean}"
                );
            }
            let dof = (count - 1) as f64;
            assert!(
                chi2 < dof + 6.0 * (2.0 * dof).sqrt(),
                "{count} shards: chi2 {chi2} for {dof} dof"
            );
        }
    }

    #[test]
    fn zero_count_routes_to_shard_zero() {
        assert_eq!(shard_for_key(b"x", 0), ShardId(0));
        assert_eq!(shard_for_key(b"x", 1), ShardId(0));
    }
}
