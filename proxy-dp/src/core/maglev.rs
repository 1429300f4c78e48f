//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4).
//!
//! Each backend gets a permutation of the lookup table's slots from two hashes of its name
//! (`offset`, `skip`); backends take turns claiming their next unclaimed preferred slot until
//! the table is full. A flow hashes to a slot. Adding or removing one backend moves only a
//! small share of slots beyond the ones it must (about `1/N`), which keeps most flows on
//! their backend when the set changes.

use std::net::SocketAddr;

/// The lookup table size for `n` backends: the smallest prime at or above the power of two
/// above `100 * n` (so every backend owns at least 100 slots, which keeps the load even), and
/// at least [`MIN_TABLE_SIZE`].
/// Sizes come from a ladder (one per power of two) so that adding a backend rarely changes
/// the size: a new size reshuffles every flow. [`Maglev::build_sized`] keeps an earlier
/// size while it still fits.
pub fn table_size(n: usize) -> usize {
    next_prime((n.max(1).saturating_mul(100) + 1).next_power_of_two()).max(MIN_TABLE_SIZE)
}

/// The smallest table (Maglev's own choice, a prime): up to 655 backends the size never
/// changes, so adding or removing one moves only the flows it must.
pub const MIN_TABLE_SIZE: usize = 65_537;

fn next_prime(mut m: usize) -> usize {
    while !is_prime(m) {
        m += 1;
    }
    m
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// A stable hash of a backend's address, seeded (two seeds give Maglev's two hashes).
fn addr_hash(addr: &SocketAddr, seed: u8) -> u64 {
    let mut key = Vec::with_capacity(20);
    key.push(seed);
    match addr.ip() {
        std::net::IpAddr::V4(v4) => key.extend_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => key.extend_from_slice(&v6.octets()),
    }
    key.extend_from_slice(&addr.port().to_be_bytes());
    shards::stable_hash(&key)
}

/// A filled Maglev lookup table: slot → index into the backend list it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// Builds the table for `backends` (in any order: the result depends only on the set of
    /// addresses and their positions are looked up by index). Empty input gives an empty table.
    /// Cost: O(M) with M = [`table_size`] (about 100 x the backends; this is per Service, not
    /// per cluster).
    pub fn build(backends: &[SocketAddr]) -> Maglev {
        Self::build_sized(backends, None)
    }

    /// As [`build`](Self::build), keeping the size `previous` (an earlier table's) while it
    /// is still more than 100 x the backends and at most 8 x the needed size: a route that
    /// gains or loses a backend keeps its table size, so only about `1/N` of flows move.
    pub fn build_sized(backends: &[SocketAddr], previous: Option<usize>) -> Maglev {
        let n = backends.len();
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let need = n.saturating_mul(100);
        let m = match previous {
            Some(p) if p > need && p <= table_size(n).saturating_mul(8) && is_prime(p) => p,
            _ => table_size(n),
        };
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|b| {
                let offset = addr_hash(b, 1) % m as u64;
                let skip = addr_hash(b, 2) % (m as u64 - 1) + 1;
                (offset, skip)
            })
            .collect();
        // Fill in a canonical order (sorted by address) so equal sets give equal tables
        // whatever the list order; `table` then maps to indices of `backends`.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| backends[i]);
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0usize;
        'fill: loop {
            for &i in &order {
                let (offset, skip) = perms[i];
                // Each backend's permutation covers every slot (M prime, skip in 1..M), so
                // this inner search ends within M steps.
                let mut c = (offset + next[i] * skip) % m as u64;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m as u64;
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }

    /// The table size (0 when built from no backends).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The backend index for a flow hash, or `None` for an empty table.
    pub fn lookup(&self, flow_hash: u64) -> Option<usize> {
        self.probe(flow_hash, 0)
    }

    /// The `i`th alternative for a flow hash (the slot `i` places after its own), used when
    /// the first choice was excluded (a failed connect).
    pub fn probe(&self, flow_hash: u64, i: usize) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let slot = (flow_hash as usize).wrapping_add(i) % self.table.len();
        Some(self.table[slot] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_primes_above_100x() {
        assert_eq!(table_size(1), MIN_TABLE_SIZE);
        assert_eq!(table_size(655), MIN_TABLE_SIZE);
        assert_eq!(table_size(1000), 131_101);
        for n in [1, 2, 7, 50, 100, 1000, 5000] {
            let m = table_size(n);
            assert!(m > 100 * n && is_prime(m), "n={n} m={m}");
        }
    }

    #[test]
    fn every_backend_owns_a_fair_share() {
        let backends: Vec<SocketAddr> = (0..10)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8], 80)))
            .collect();
        let t = Maglev::build(&backends);
        let mut counts = vec![0usize; backends.len()];
        for s in 0..t.len() {
            counts[t.probe(0, s).expect("non-empty")] += 1;
        }
        let ideal = t.len() / backends.len();
        for c in counts {
            assert!(
                c * 10 >= ideal * 9 && c * 10 <= ideal * 11,
                "{c} vs {ideal}"
            );
        }
    }
}
