//! Node IPAM (sans-IO): hands each Node a `spec.podCIDR` (and `spec.podCIDRs`) carved out of
//! the cluster CIDR, as upstream's range allocator (`pkg/controller/nodeipam/ipam`, read,
//! not copied). IPv4 only (the cluster's constants are single-stack).
//!
//! The allocation is persistent through the Nodes themselves: nothing is stored elsewhere.
//!
//! The shell owes the core:
//! 1. once the Node cache has synced, and before any allocation, [`CidrAllocator::occupy`]
//!    every Node that already has a `spec.podCIDR` (a restart rebuilds the map this way);
//! 2. for a Node without one, [`CidrAllocator::allocate`] (idempotent per node name: a
//!    cache that lags behind our own patch gets the same range again) and patch
//!    `spec.podCIDR`/`spec.podCIDRs`; on [`IpamError::Full`], record a Warning Event
//!    `CIDRNotAvailable` on the Node and retry later;
//! 3. on a Node delete, [`CidrAllocator::release`] its name.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;

/// Default `--cluster-cidr`.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Default `--node-cidr-mask-size`.
pub const DEFAULT_NODE_MASK: u8 = 24;
/// Upstream's bound: a cluster CIDR holds at most 2^16 node ranges.
const MAX_SUBNET_BITS: u8 = 16;

/// Why an allocation or a configuration failed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpamError {
    /// The mask size is not longer than the cluster prefix, or leaves more than 2^16 ranges.
    #[error("invalid node CIDR mask size /{mask} for cluster CIDR {cluster}")]
    BadMask {
        /// The cluster CIDR.
        cluster: Ipv4Net,
        /// The node mask size.
        mask: u8,
    },
    /// Every range is taken (retryable once a Node goes).
    #[error(
        "CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range {0}"
    )]
    Full(Ipv4Net),
    /// The range is not a node range of this cluster CIDR.
    #[error("{0} is not a /{1} inside the cluster CIDR")]
    OutOfRange(Ipv4Net, u8),
    /// The range belongs to another node.
    #[error("{cidr} is already allocated to node {owner}")]
    Taken {
        /// The range.
        cidr: Ipv4Net,
        /// The node holding it.
        owner: String,
    },
}

/// The allocation map: which node holds which index of the cluster CIDR's node ranges.
#[derive(Debug)]
pub struct CidrAllocator {
    cluster: Ipv4Net,
    mask: u8,
    /// Number of node ranges.
    size: u32,
    /// Range index -> node.
    used: BTreeMap<u32, String>,
    /// Node -> range index.
    by_node: HashMap<String, u32>,
    /// Where the next search starts (upstream rotates so freed ranges are not reused at once).
    next: u32,
}

impl CidrAllocator {
    /// An empty map of `/mask` ranges of `cluster`.
    pub fn new(cluster: Ipv4Net, mask: u8) -> Result<Self, IpamError> {
        let cluster = cluster.trunc();
        if mask < cluster.prefix_len() || mask > 32 || mask - cluster.prefix_len() > MAX_SUBNET_BITS
        {
            return Err(IpamError::BadMask { cluster, mask });
        }
        Ok(Self {
            cluster,
            mask,
            size: 1u32 << (mask - cluster.prefix_len()),
            used: BTreeMap::new(),
            by_node: HashMap::new(),
            next: 0,
        })
    }

    /// The cluster CIDR.
    pub fn cluster(&self) -> Ipv4Net {
        self.cluster
    }

    /// Ranges in use.
    pub fn used(&self) -> usize {
        self.used.len()
    }

    fn cidr_at(&self, idx: u32) -> Ipv4Net {
        let step = 1u64 << (32 - u32::from(self.mask));
        let base = u64::from(u32::from(self.cluster.network())) + u64::from(idx) * step;
        // Within the cluster CIDR by construction (idx < size).
        let addr = Ipv4Addr::from(u32::try_from(base).unwrap_or(u32::MAX));
        Ipv4Net::new(addr, self.mask).unwrap_or(self.cluster)
    }

    fn index_of(&self, cidr: Ipv4Net) -> Result<u32, IpamError> {
        if cidr.prefix_len() != self.mask || !self.cluster.contains(&cidr) {
            return Err(IpamError::OutOfRange(cidr, self.mask));
        }
        let off = u32::from(cidr.network()) - u32::from(self.cluster.network());
        Ok(off >> (32 - u32::from(self.mask)))
    }

    /// Marks `cidr` as held by `node` (a Node that already has its range).
    pub fn occupy(&mut self, node: &str, cidr: Ipv4Net) -> Result<(), IpamError> {
        let idx = self.index_of(cidr)?;
        if let Some(owner) = self.used.get(&idx)
            && owner != node
        {
            return Err(IpamError::Taken {
                cidr,
                owner: owner.clone(),
            });
        }
        if let Some(old) = self.by_node.insert(node.to_string(), idx)
            && old != idx
        {
            self.used.remove(&old);
        }
        self.used.insert(idx, node.to_string());
        Ok(())
    }

    /// The range of `node`: the one it holds, or the next free one.
    pub fn allocate(&mut self, node: &str) -> Result<Ipv4Net, IpamError> {
        if let Some(idx) = self.by_node.get(node) {
            return Ok(self.cidr_at(*idx));
        }
        if self.used.len() >= usize::try_from(self.size).unwrap_or(usize::MAX) {
            return Err(IpamError::Full(self.cluster));
        }
        // The first free index at or after `next`, wrapping; bounded by `size` steps.
        let mut idx = self.next % self.size;
        for _ in 0..self.size {
            if !self.used.contains_key(&idx) {
                break;
            }
            idx = (idx + 1) % self.size;
        }
        self.used.insert(idx, node.to_string());
        self.by_node.insert(node.to_string(), idx);
        self.next = (idx + 1) % self.size;
        Ok(self.cidr_at(idx))
    }

    /// Frees the range of `node` (the Node was deleted). Returns it.
    pub fn release(&mut self, node: &str) -> Option<Ipv4Net> {
        let idx = self.by_node.remove(node)?;
        self.used.remove(&idx);
        Some(self.cidr_at(idx))
    }

    /// The range recorded for `node`.
    pub fn of(&self, node: &str) -> Option<Ipv4Net> {
        self.by_node.get(node).map(|i| self.cidr_at(*i))
    }
}

/// The node's current `spec.podCIDR`, parsed (None when unset or unparsable).
pub fn node_cidr(node: &Node) -> Option<Ipv4Net> {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| c.parse::<Ipv4Net>().ok())
}

/// What the shell does for one Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeStep {
    /// The Node holds its range (or is being deleted): nothing to write.
    Nothing,
    /// Patch `spec.podCIDR` and `spec.podCIDRs` to this range.
    Assign(Ipv4Net),
    /// No range left: record the event, retry later.
    Full(IpamError),
}

/// Plans one Node: records what it holds, or allocates a range for it.
pub fn plan(alloc: &mut CidrAllocator, node: &Node) -> NodeStep {
    let name = node.metadata.name.as_deref().unwrap_or("");
    if node.metadata.deletion_timestamp.is_some() {
        return NodeStep::Nothing;
    }
    if let Some(c) = node_cidr(node) {
        // Already set (by us earlier, or by hand): keep the map in step. A range outside the
        // cluster CIDR or held by another node is the user's choice; we leave it alone.
        if let Err(e) = alloc.occupy(name, c) {
            tracing::warn!(node = name, error = %e, "node podCIDR not recorded");
        }
        return NodeStep::Nothing;
    }
    match alloc.allocate(name) {
        Ok(c) => NodeStep::Assign(c),
        Err(e) => NodeStep::Full(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn node(name: &str, cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(Into::into),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn distinct_ranges_in_order_and_idempotent_per_node() {
        let mut a = CidrAllocator::new(net("10.244.0.0/16"), 24).unwrap();
        assert_eq!(a.allocate("n1"), Ok(net("10.244.0.0/24")));
        assert_eq!(a.allocate("n2"), Ok(net("10.244.1.0/24")));
        assert_eq!(
            a.allocate("n1"),
            Ok(net("10.244.0.0/24")),
            "same node, same range"
        );
        assert_eq!(a.used(), 2);
    }

    #[test]
    fn rebuild_from_nodes_then_allocate_around_them() {
        let mut a = CidrAllocator::new(net("10.244.0.0/16"), 24).unwrap();
        for n in [
            node("a", Some("10.244.0.0/24")),
            node("b", Some("10.244.2.0/24")),
        ] {
            assert_eq!(plan(&mut a, &n), NodeStep::Nothing);
        }
        assert_eq!(
            plan(&mut a, &node("c", None)),
            NodeStep::Assign(net("10.244.1.0/24"))
        );
        assert_eq!(
            plan(&mut a, &node("d", None)),
            NodeStep::Assign(net("10.244.3.0/24"))
        );
    }

    #[test]
    fn full_then_release_frees_a_range() {
        let mut a = CidrAllocator::new(net("10.0.0.0/30"), 31).unwrap();
        assert_eq!(a.allocate("a"), Ok(net("10.0.0.0/31")));
        assert_eq!(a.allocate("b"), Ok(net("10.0.0.2/31")));
        let full = plan(&mut a, &node("c", None));
        assert_eq!(full, NodeStep::Full(IpamError::Full(net("10.0.0.0/30"))));
        assert!(
            IpamError::Full(net("10.0.0.0/30"))
                .to_string()
                .contains("no remaining CIDRs")
        );
        assert_eq!(a.release("a"), Some(net("10.0.0.0/31")));
        assert_eq!(a.allocate("c"), Ok(net("10.0.0.0/31")));
    }

    #[test]
    fn bad_configs_and_foreign_ranges() {
        for (c, m) in [("10.0.0.0/16", 8), ("10.0.0.0/8", 25), ("10.0.0.0/16", 33)] {
            assert!(matches!(
                CidrAllocator::new(net(c), m),
                Err(IpamError::BadMask { .. })
            ));
        }
        let mut a = CidrAllocator::new(net("10.244.0.0/16"), 24).unwrap();
        assert!(matches!(
            a.occupy("x", net("10.9.0.0/24")),
            Err(IpamError::OutOfRange(..))
        ));
        assert!(matches!(
            a.occupy("x", net("10.244.0.0/25")),
            Err(IpamError::OutOfRange(..))
        ));
        a.occupy("x", net("10.244.7.0/24")).unwrap();
        assert!(matches!(
            a.occupy("y", net("10.244.7.0/24")),
            Err(IpamError::Taken { .. })
        ));
        // Deleted nodes are not allocated for.
        let mut gone = node("z", None);
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(plan(&mut a, &gone), NodeStep::Nothing);
    }
}
