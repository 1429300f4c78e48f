//! ControllerRevisions of DaemonSets and StatefulSets (sans-IO), as upstream's
//! `pkg/controller/history` and the two controllers' `constructHistory` (read, not copied).
//!
//! A revision holds the owner's pod template as upstream stores it,
//! `{"spec":{"template":{..., "$patch":"replace"}}}`, so `kubectl rollout history|undo`
//! read it the same way; it is named `<owner>-<hash>` and labelled
//! `controller-revision-hash=<hash>`, the label the owner's pods carry too.
//!
//! The shell owes the core: pass every revision the owner controls to [`plan`]; create the
//! returned revision (on 409, re-read: a revision of the same name with other data is a hash
//! collision, and the owner's `status.collisionCount` goes up by one); apply the revision
//! number bump; delete the returned names.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{Value, json};

use crate::deployment::compute_hash;
use crate::util::new_controller_ref;

/// The label on revisions and pods naming the revision.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// Upstream's default `revisionHistoryLimit`.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// The revision data of a template.
pub fn data_of(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut t {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template a revision holds.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Value::Object(m) = &mut t {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// The hash of the owner's current template (and collision count).
pub fn hash_of(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    compute_hash(template, collision_count)
}

/// The revision hash label of an object.
pub fn hash_label(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
        .map(String::as_str)
}

/// What to write for the owner's history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The current template's hash (the update revision's).
    pub hash: String,
    /// The current revision's name.
    pub name: String,
    /// The current revision's number after this plan.
    pub number: i64,
    /// Create this revision (none matches the template yet).
    pub create: Option<ControllerRevision>,
    /// An existing revision matches but is older than the newest: renumber it.
    pub renumber: Option<(String, i64)>,
    /// Revisions beyond the history limit that no live pod uses.
    pub delete: Vec<String>,
}

/// The owner, for naming and owner references.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    /// `apps/v1`.
    pub api_version: &'a str,
    /// `DaemonSet` or `StatefulSet`.
    pub kind: &'a str,
    /// The owner's metadata.
    pub meta: &'a ObjectMeta,
    /// The owner's pod template.
    pub template: &'a PodTemplateSpec,
    /// `status.collisionCount`.
    pub collision_count: Option<i32>,
    /// `spec.revisionHistoryLimit`.
    pub history_limit: Option<i32>,
}

/// Plans the owner's history: which revision is current, what to create, renumber and
/// delete. `live_hashes` are the hashes live pods carry (never deleted).
pub fn plan(
    owner: Owner<'_>,
    revisions: &[&ControllerRevision],
    live_hashes: &BTreeSet<String>,
) -> Plan {
    let hash = hash_of(owner.template, owner.collision_count);
    let data = data_of(owner.template);
    let max = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    let same = revisions
        .iter()
        .filter(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
        .max_by_key(|r| r.revision);
    let owner_name = owner.meta.name.clone().unwrap_or_default();
    let mut p = Plan::default();
    match same {
        Some(r) => {
            p.name = r.metadata.name.clone().unwrap_or_default();
            p.hash = hash_label(&r.metadata).unwrap_or(&hash).to_string();
            p.number = r.revision;
            if r.revision < max {
                p.number = max + 1;
                p.renumber = Some((p.name.clone(), max + 1));
            }
        }
        None => {
            let name = format!("{owner_name}-{hash}");
            let mut labels = owner
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_HASH.into(), hash.clone());
            p.create = Some(ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: owner.meta.namespace.clone(),
                    labels: Some(labels),
                    owner_references: Some(vec![new_controller_ref(
                        owner.api_version,
                        owner.kind,
                        owner.meta,
                    )]),
                    ..Default::default()
                },
                data: Some(RawExtension(data)),
                revision: max + 1,
            });
            p.name = name;
            p.hash = hash;
            p.number = max + 1;
        }
    }
    let limit =
        usize::try_from(owner.history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT).max(0)).unwrap_or(0);
    let mut old: Vec<&&ControllerRevision> = revisions
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(p.name.as_str()))
        .filter(|r| hash_label(&r.metadata).is_none_or(|h| !live_hashes.contains(h)))
        .collect();
    if old.len() > limit {
        old.sort_by_key(|r| r.revision);
        let n = old.len() - limit;
        p.delete = old
            .into_iter()
            .take(n)
            .filter_map(|r| r.metadata.name.clone())
            .collect();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::template;

    fn owner<'a>(meta: &'a ObjectMeta, t: &'a PodTemplateSpec, limit: i32) -> Owner<'a> {
        Owner {
            api_version: "apps/v1",
            kind: "DaemonSet",
            meta,
            template: t,
            collision_count: None,
            history_limit: Some(limit),
        }
    }

    fn rev_from(p: &Plan) -> ControllerRevision {
        p.create.clone().expect("a revision to create")
    }

    #[test]
    fn create_reuse_renumber_and_trim() {
        let meta = ObjectMeta {
            name: Some("ds".into()),
            namespace: Some("default".into()),
            uid: Some("u".into()),
            ..Default::default()
        };
        let t1 = template("img:1", &[("app", "x")]);
        let t2 = template("img:2", &[("app", "x")]);
        let t3 = template("img:3", &[("app", "x")]);
        let none = BTreeSet::new();
        let p1 = plan(owner(&meta, &t1, 1), &[], &none);
        let r1 = rev_from(&p1);
        assert_eq!(r1.revision, 1);
        assert_eq!(
            r1.metadata.name.as_deref(),
            Some(format!("ds-{}", p1.hash).as_str())
        );
        assert_eq!(template_of(&r1).as_ref(), Some(&t1));
        // Same template: reused, nothing to write.
        let again = plan(owner(&meta, &t1, 1), &[&r1], &none);
        assert_eq!(
            (again.create.is_none(), again.renumber.is_none()),
            (true, true)
        );
        assert_eq!(again.hash, p1.hash);
        let r2 = rev_from(&plan(owner(&meta, &t2, 1), &[&r1], &none));
        assert_eq!(r2.revision, 2);
        // Back to t1 (an undo): renumbered to 3.
        let back = plan(owner(&meta, &t1, 1), &[&r1, &r2], &none);
        assert_eq!(back.renumber, Some((r1.metadata.name.clone().unwrap(), 3)));
        // A third template with limit 1: the oldest unused goes, the live one stays.
        let r3 = plan(owner(&meta, &t3, 1), &[&r1, &r2], &none);
        assert_eq!(r3.delete, vec![r1.metadata.name.clone().unwrap()]);
        let live: BTreeSet<String> = [hash_label(&r1.metadata).unwrap().to_string()].into();
        // Live revisions neither go nor count against the limit (upstream's cleanupHistory).
        let r3 = plan(owner(&meta, &t3, 1), &[&r1, &r2], &live);
        assert!(r3.delete.is_empty());
        let r3 = plan(owner(&meta, &t3, 0), &[&r1, &r2], &live);
        assert_eq!(r3.delete, vec![r2.metadata.name.clone().unwrap()]);
    }
}
