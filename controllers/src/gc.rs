//! Garbage collector core (sans-IO): the ownerReferences graph and upstream's decisions
//! (`pkg/controller/garbagecollector`, read, not copied).
//!
//! Every watched object is a node keyed by uid; an owner reference adds an edge from the owner
//! node to the dependent. An owner that was never observed is a *virtual* node. For one node,
//! [`Graph::decide`] says what to do:
//! - an owner being deleted with the `foregroundDeletion` finalizer waits for its dependents
//!   that block it (`blockOwnerDeletion`); once none is left the finalizer goes;
//! - an owner being deleted with the `orphan` finalizer first loses its references from every
//!   dependent, then the finalizer;
//! - a dependent with at least one live owner stays (references to absent owners are
//!   dropped); one whose owners are all gone is deleted (background unless its own finalizers
//!   say otherwise); one whose owner waits in foreground deletion is deleted too, in
//!   foreground if it has dependents of its own.
//!
//! The shell owes the core:
//! 1. feed every watched object's add/update to [`Graph::upsert`] and deletes to
//!    [`Graph::remove`], queueing the uids they return;
//! 2. for a queued uid, run [`Graph::decide`] and carry out its [`Action`]s in order;
//! 3. before deleting on the strength of an owner absent *from the cache*
//!    (`verify_absent`), confirm with a live GET that the owner is gone or has another uid
//!    (caches of different kinds lag each other); if it exists, do nothing;
//! 4. treat owners of kinds it does not watch as alive (never delete on unknown owners).

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The finalizer of foreground deletion.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of orphan deletion.
pub const ORPHAN: &str = "orphan";

/// Which object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// `group/version` or `v1`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
}

impl Identity {
    /// The identity of an owner reference (in the dependent's namespace).
    pub fn of_owner(r: &OwnerReference, namespace: &str) -> Self {
        Self {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: namespace.to_string(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }
}

/// What the graph keeps of an object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectInfo {
    /// Which object.
    pub id: Identity,
    /// Its owner references.
    pub owners: Vec<OwnerReference>,
    /// Whether it has a deletionTimestamp.
    pub deleting: bool,
    /// Its finalizers.
    pub finalizers: Vec<String>,
}

impl ObjectInfo {
    /// From an object's metadata and type.
    pub fn new(api_version: &str, kind: &str, meta: &ObjectMeta) -> Self {
        Self {
            id: Identity {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                uid: meta.uid.clone().unwrap_or_default(),
            },
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        }
    }

    fn has(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    fn deleting_dependents(&self) -> bool {
        self.deleting && self.has(FOREGROUND)
    }
}

/// The propagation policy of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Delete now; dependents are collected afterwards.
    Background,
    /// Delete dependents first (the `foregroundDeletion` finalizer).
    Foreground,
    /// Keep dependents (the `orphan` finalizer).
    Orphan,
}

impl Propagation {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Background => "Background",
            Self::Foreground => "Foreground",
            Self::Orphan => "Orphan",
        }
    }
}

/// A step the shell carries out.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Delete `who` (uid precondition) with this propagation, after confirming each of
    /// `verify_absent` is gone from the API.
    Delete {
        /// The object.
        who: Identity,
        /// Propagation policy.
        policy: Propagation,
        /// Owners absent from the cache to confirm absent with a live read.
        verify_absent: Vec<Identity>,
    },
    /// Remove owner references (by uid) from `who`, after confirming `verify_absent`.
    RemoveOwnerRefs {
        /// The object.
        who: Identity,
        /// Owner uids to drop.
        uids: Vec<String>,
        /// Owners absent from the cache to confirm absent with a live read.
        verify_absent: Vec<Identity>,
    },
    /// Remove a finalizer from `who`.
    RemoveFinalizer {
        /// The object.
        who: Identity,
        /// The finalizer.
        finalizer: &'static str,
    },
    /// Process these uids too (blocking dependents of a foreground deletion).
    Enqueue(Vec<String>),
}

#[derive(Debug, Default)]
struct Node {
    info: Option<ObjectInfo>,
    dependents: BTreeSet<String>,
}

/// The ownership graph. Bounded by the objects the watched informers hold (plus one virtual
/// node per distinct absent owner, dropped when its last dependent goes).
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    /// Kinds (`apiVersion/kind` as `group/version, Kind`) whose objects the shell watches.
    watched: BTreeSet<(String, String)>,
}

impl Graph {
    /// A graph whose absent owners of these `(apiVersion, kind)` pairs count as gone.
    pub fn new(watched: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            nodes: HashMap::new(),
            watched: watched.into_iter().collect(),
        }
    }

    /// Number of nodes (observed and virtual).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Records an added or updated object; returns the uids to process.
    pub fn upsert(&mut self, info: ObjectInfo) -> Vec<String> {
        let uid = info.id.uid.clone();
        let old_owners: BTreeSet<String> = self
            .nodes
            .get(&uid)
            .and_then(|n| n.info.as_ref())
            .map(|i| i.owners.iter().map(|o| o.uid.clone()).collect())
            .unwrap_or_default();
        let new_owners: BTreeSet<String> = info.owners.iter().map(|o| o.uid.clone()).collect();
        for gone in old_owners.difference(&new_owners) {
            self.unlink(gone, &uid);
        }
        for o in &new_owners {
            self.nodes
                .entry(o.clone())
                .or_default()
                .dependents
                .insert(uid.clone());
        }
        let mut out = vec![uid.clone()];
        let mut owners_changed: Vec<String> = old_owners
            .symmetric_difference(&new_owners)
            .cloned()
            .collect();
        // An owner in foreground deletion re-checks when a dependent changes or leaves it.
        out.append(&mut owners_changed);
        out.extend(
            new_owners
                .iter()
                .filter(|o| self.is_deleting_dependents(o))
                .cloned(),
        );
        let node = self.nodes.entry(uid).or_default();
        if info.deleting {
            out.extend(node.dependents.iter().cloned());
        }
        node.info = Some(info);
        out.sort();
        out.dedup();
        out
    }

    fn is_deleting_dependents(&self, uid: &str) -> bool {
        self.nodes
            .get(uid)
            .and_then(|n| n.info.as_ref())
            .is_some_and(ObjectInfo::deleting_dependents)
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(n) = self.nodes.get_mut(owner) {
            n.dependents.remove(dependent);
            if n.info.is_none() && n.dependents.is_empty() {
                self.nodes.remove(owner);
            }
        }
    }

    /// Records a deleted object; returns the uids to process (its dependents and owners).
    pub fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(node) = self.nodes.get_mut(uid) else {
            return Vec::new();
        };
        let owners: Vec<String> = node
            .info
            .take()
            .map(|i| i.owners.into_iter().map(|o| o.uid).collect())
            .unwrap_or_default();
        let mut out: Vec<String> = node.dependents.iter().cloned().collect();
        if node.dependents.is_empty() {
            self.nodes.remove(uid);
        }
        for o in &owners {
            self.unlink(o, uid);
        }
        out.extend(owners);
        out.sort();
        out.dedup();
        out
    }

    /// What to do about `uid` now.
    pub fn decide(&self, uid: &str) -> Vec<Action> {
        let Some(node) = self.nodes.get(uid) else {
            return Vec::new();
        };
        let Some(info) = &node.info else {
            return Vec::new();
        };
        if info.deleting {
            return self.decide_deleting(node, info);
        }
        if info.owners.is_empty() {
            return Vec::new();
        }
        let mut solid = 0;
        let mut dangling: Vec<Identity> = Vec::new();
        let mut waiting: Vec<String> = Vec::new();
        for r in &info.owners {
            match self.nodes.get(&r.uid).and_then(|n| n.info.as_ref()) {
                Some(o) if o.deleting_dependents() => waiting.push(r.uid.clone()),
                Some(_) => solid += 1,
                None if self
                    .watched
                    .contains(&(r.api_version.clone(), r.kind.clone())) =>
                {
                    dangling.push(Identity::of_owner(r, &info.id.namespace));
                }
                None => solid += 1, // an owner of a kind we do not watch: assume alive
            }
        }
        if solid > 0 {
            if dangling.is_empty() && waiting.is_empty() {
                return Vec::new();
            }
            let mut uids: Vec<String> = dangling.iter().map(|d| d.uid.clone()).collect();
            uids.extend(waiting);
            return vec![Action::RemoveOwnerRefs {
                who: info.id.clone(),
                uids,
                verify_absent: dangling,
            }];
        }
        let policy = if !waiting.is_empty() && !node.dependents.is_empty() {
            Propagation::Foreground
        } else if info.has(ORPHAN) {
            Propagation::Orphan
        } else if info.has(FOREGROUND) {
            Propagation::Foreground
        } else {
            Propagation::Background
        };
        vec![Action::Delete {
            who: info.id.clone(),
            policy,
            verify_absent: dangling,
        }]
    }

    fn decide_deleting(&self, node: &Node, info: &ObjectInfo) -> Vec<Action> {
        let live_dependents = || {
            node.dependents
                .iter()
                .filter_map(|d| self.nodes.get(d).and_then(|n| n.info.as_ref()))
        };
        if info.has(ORPHAN) {
            let mut out: Vec<Action> = live_dependents()
                .map(|d| Action::RemoveOwnerRefs {
                    who: d.id.clone(),
                    uids: vec![info.id.uid.clone()],
                    verify_absent: Vec::new(),
                })
                .collect();
            out.push(Action::RemoveFinalizer {
                who: info.id.clone(),
                finalizer: ORPHAN,
            });
            return out;
        }
        if info.has(FOREGROUND) {
            let blocking: Vec<&ObjectInfo> = live_dependents()
                .filter(|d| {
                    d.owners
                        .iter()
                        .any(|o| o.uid == info.id.uid && o.block_owner_deletion == Some(true))
                })
                .collect();
            if blocking.is_empty() {
                return vec![Action::RemoveFinalizer {
                    who: info.id.clone(),
                    finalizer: FOREGROUND,
                }];
            }
            let pending: Vec<String> = blocking
                .iter()
                .filter(|d| !d.deleting)
                .map(|d| d.id.uid.clone())
                .collect();
            return if pending.is_empty() {
                Vec::new()
            } else {
                vec![Action::Enqueue(pending)]
            };
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obj(kind: &str, name: &str, owners: &[(&str, &str, bool)]) -> ObjectInfo {
        ObjectInfo {
            id: Identity {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                namespace: "default".into(),
                name: name.into(),
                uid: format!("uid-{name}"),
            },
            owners: owners
                .iter()
                .map(|(k, n, block)| OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: (*k).into(),
                    name: (*n).into(),
                    uid: format!("uid-{n}"),
                    controller: Some(true),
                    block_owner_deletion: Some(*block),
                })
                .collect(),
            deleting: false,
            finalizers: Vec::new(),
        }
    }

    fn graph() -> Graph {
        Graph::new([
            ("apps/v1".to_string(), "Deployment".to_string()),
            ("apps/v1".to_string(), "ReplicaSet".to_string()),
        ])
    }

    #[test]
    fn dependents_of_a_deleted_owner_are_collected_in_background() {
        let mut g = graph();
        g.upsert(obj("Deployment", "d", &[]));
        g.upsert(obj("ReplicaSet", "rs", &[("Deployment", "d", true)]));
        assert!(g.decide("uid-rs").is_empty(), "the owner is alive");
        let queued = g.remove("uid-d");
        assert_eq!(queued, ["uid-rs"]);
        let a = g.decide("uid-rs");
        let [
            Action::Delete {
                who,
                policy,
                verify_absent,
            },
        ] = a.as_slice()
        else {
            panic!("{a:?}")
        };
        assert_eq!(
            (who.name.as_str(), *policy),
            ("rs", Propagation::Background)
        );
        assert_eq!(verify_absent[0].name, "d");
    }

    #[test]
    fn unknown_owner_kinds_keep_their_dependents() {
        let mut g = graph();
        let mut o = obj("ReplicaSet", "rs", &[]);
        o.owners.push(OwnerReference {
            api_version: "example.com/v1".into(),
            kind: "Thing".into(),
            name: "t".into(),
            uid: "uid-t".into(),
            ..Default::default()
        });
        g.upsert(o);
        assert!(g.decide("uid-rs").is_empty());
    }

    #[test]
    fn foreground_waits_for_blocking_dependents() {
        let mut g = graph();
        g.upsert(obj("ReplicaSet", "rs", &[]));
        g.upsert(obj("Pod", "p1", &[("ReplicaSet", "rs", true)]));
        g.upsert(obj("Pod", "p2", &[("ReplicaSet", "rs", false)]));
        let mut rs = obj("ReplicaSet", "rs", &[]);
        rs.deleting = true;
        rs.finalizers = vec![FOREGROUND.into()];
        let q = g.upsert(rs);
        assert!(q.contains(&"uid-p1".to_string()) && q.contains(&"uid-p2".to_string()));
        assert_eq!(g.decide("uid-rs"), [Action::Enqueue(vec!["uid-p1".into()])]);
        for p in ["uid-p1", "uid-p2"] {
            let a = g.decide(p);
            assert!(
                matches!(
                    a.as_slice(),
                    [Action::Delete {
                        policy: Propagation::Background,
                        ..
                    }]
                ),
                "{a:?}"
            );
        }
        g.remove("uid-p1");
        assert_eq!(
            g.decide("uid-rs"),
            [Action::RemoveFinalizer {
                who: obj("ReplicaSet", "rs", &[]).id,
                finalizer: FOREGROUND
            }],
            "p2 does not block"
        );
    }

    #[test]
    fn orphaning_drops_references_then_the_finalizer() {
        let mut g = graph();
        g.upsert(obj("ReplicaSet", "rs", &[]));
        g.upsert(obj("Pod", "p1", &[("ReplicaSet", "rs", true)]));
        let mut rs = obj("ReplicaSet", "rs", &[]);
        rs.deleting = true;
        rs.finalizers = vec![ORPHAN.into()];
        g.upsert(rs);
        let a = g.decide("uid-rs");
        assert_eq!(a.len(), 2);
        assert!(
            matches!(&a[0], Action::RemoveOwnerRefs { who, uids, .. } if who.name == "p1" && uids == &["uid-rs".to_string()])
        );
        assert!(matches!(
            &a[1],
            Action::RemoveFinalizer {
                finalizer: ORPHAN,
                ..
            }
        ));
        // Once the reference is gone, the pod is no one's dependent.
        g.upsert(obj("Pod", "p1", &[]));
        assert!(g.decide("uid-p1").is_empty());
        assert_eq!(
            g.decide("uid-rs").len(),
            1,
            "only the finalizer is left to remove"
        );
    }

    #[test]
    fn a_second_live_owner_keeps_the_dependent() {
        let mut g = graph();
        g.upsert(obj("ReplicaSet", "a", &[]));
        g.upsert(obj(
            "Pod",
            "p",
            &[("ReplicaSet", "a", false), ("ReplicaSet", "b", false)],
        ));
        let a = g.decide("uid-p");
        assert!(
            matches!(a.as_slice(), [Action::RemoveOwnerRefs { uids, .. }] if uids == &["uid-b".to_string()]),
            "{a:?}"
        );
    }

    proptest! {
        /// Random add/remove sequences never leave a virtual node without dependents, and
        /// every dependent edge points at a node that lists it.
        #[test]
        fn graph_stays_consistent(ops in proptest::collection::vec((0u8..6, 0u8..6, any::<bool>()), 1..100)) {
            let mut g = graph();
            for (obj_i, owner_i, add) in ops {
                let name = format!("o{obj_i}");
                if add {
                    let owner = format!("o{owner_i}");
                    let owners: Vec<(&str, &str, bool)> = if owner_i != obj_i { vec![("ReplicaSet", owner.as_str(), true)] } else { vec![] };
                    g.upsert(obj("ReplicaSet", &name, &owners));
                } else {
                    g.remove(&format!("uid-{name}"));
                }
                for (uid, n) in &g.nodes {
                    prop_assert!(n.info.is_some() || !n.dependents.is_empty(), "dangling virtual node {}", uid);
                    for d in &n.dependents {
                        let dep = g.nodes.get(d).and_then(|x| x.info.as_ref());
                        prop_assert!(dep.is_some_and(|i| i.owners.iter().any(|o| &o.uid == uid)), "stale edge {} -> {}", uid, d);
                    }
                }
            }
        }
    }
}
