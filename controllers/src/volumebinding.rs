//! PersistentVolume / PersistentVolumeClaim binding for statically provisioned volumes
//! (upstream `persistentvolume-binder`, `pkg/controller/volume/persistentvolume`), as pure
//! functions from cached objects to ordered writes.
//!
//! - [`sync_claim`]: an unbound claim gets the smallest Available volume of its
//!   storageClassName whose accessModes contain the claim's, whose capacity fits, whose
//!   volumeMode matches and whose labels match the claim's selector; a volume pre-bound to
//!   the claim (`spec.claimRef`) wins, and a claim pre-bound to a volume (`spec.volumeName`)
//!   takes only that one. Binding writes the volume's claimRef, the volume's phase Bound,
//!   the claim's volumeName + `pv.kubernetes.io/bind-completed`, the claim's status Bound
//!   (capacity and accessModes of the volume), in that order, as upstream.
//! - [`sync_volume`]: phases Available / Bound / Released; a Released volume is kept under
//!   `Retain`, and under `Delete` a volume no provisioner owns is marked Failed (there is no
//!   deleter plugin for it, as upstream reports).
//!
//! Shell obligations: run both on every change of claims and volumes and on a resync; send
//! every write with the object's resourceVersion (a conflict means another sync won; retry
//! from fresh caches), stop at the first failed write of a plan.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeStatus,
};

use crate::util::selector_matches;

/// Claim annotation: binding finished.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Annotation on either side: the controller (not the user) made the link.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// Volume annotation: the provisioner that created (and must delete) it.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// One write of a plan, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Replace the volume (spec.claimRef, annotations), with its resourceVersion.
    Volume(Box<PersistentVolume>),
    /// The volume's status.
    VolumeStatus {
        /// Volume name.
        name: String,
        /// New status.
        status: PersistentVolumeStatus,
    },
    /// Replace the claim (spec.volumeName, annotations), with its resourceVersion.
    Claim(Box<PersistentVolumeClaim>),
    /// The claim's status.
    ClaimStatus {
        /// Claim namespace.
        namespace: String,
        /// Claim name.
        name: String,
        /// New status.
        status: PersistentVolumeClaimStatus,
    },
}

/// An event the shell records: (object is the claim?, type, reason, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    /// Reason.
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

/// A plan: writes plus an event to record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Writes, in order.
    pub writes: Vec<Write>,
    /// An event about the object synced.
    pub note: Option<Note>,
}

fn storage_of(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Option<i128> {
    list.and_then(|m| m.get("storage"))
        .and_then(|q| api::quota::parse_milli(&q.0))
}

fn volume_capacity(v: &PersistentVolume) -> i128 {
    storage_of(v.spec.as_ref().and_then(|s| s.capacity.as_ref())).unwrap_or(0)
}

fn claim_request(c: &PersistentVolumeClaim) -> i128 {
    storage_of(
        c.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
    .unwrap_or(0)
}

fn volume_class(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn claim_class(c: &PersistentVolumeClaim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn volume_mode_pv(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem")
}

fn volume_mode_pvc(c: &PersistentVolumeClaim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem")
}

fn phase_of(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn ann<'a>(
    m: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    k: &str,
) -> Option<&'a str> {
    m.annotations
        .as_ref()
        .and_then(|a| a.get(k))
        .map(String::as_str)
}

fn modes_contain(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let have = v.spec.as_ref().and_then(|s| s.access_modes.as_ref());
    c.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .into_iter()
        .flatten()
        .all(|m| have.is_some_and(|h| h.contains(m)))
}

/// Whether the volume's claimRef names this claim (uid empty or equal).
pub fn bound_to(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name.as_deref() == c.metadata.name.as_deref()
        && r.namespace.as_deref() == c.metadata.namespace.as_deref()
        && (r.uid.as_deref().is_none_or(str::is_empty) || r.uid == c.metadata.uid)
}

/// `checkVolumeSatisfyClaim`: capacity, class, access modes and volume mode.
fn satisfies(v: &PersistentVolume, c: &PersistentVolumeClaim) -> Result<(), String> {
    if volume_capacity(v) < claim_request(c) {
        return Err("requested PV is too small".into());
    }
    if volume_class(v) != claim_class(c) {
        return Err("storageClassName does not match".into());
    }
    if volume_mode_pv(v) != volume_mode_pvc(c) {
        return Err("incompatible volumeMode".into());
    }
    if !modes_contain(v, c) {
        return Err("incompatible accessMode".into());
    }
    Ok(())
}

/// `findMatchingVolume`: a volume pre-bound to the claim, else the smallest Available fit.
pub fn find_match<'a>(
    c: &PersistentVolumeClaim,
    volumes: &[&'a PersistentVolume],
) -> Option<&'a PersistentVolume> {
    let selector = c.spec.as_ref().and_then(|s| s.selector.as_ref());
    let mut best: Option<&PersistentVolume> = None;
    for v in volumes.iter().copied() {
        if v.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if volume_mode_pv(v) != volume_mode_pvc(c) || !modes_contain(v, c) {
            continue;
        }
        if volume_capacity(v) < claim_request(c) {
            continue;
        }
        if bound_to(v, c) {
            return Some(v);
        }
        if v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some()
            || phase_of(v) != "Available"
        {
            continue;
        }
        if let Some(sel) = selector
            && !selector_matches(sel, v.metadata.labels.as_ref()).unwrap_or(false)
        {
            continue;
        }
        if volume_class(v) != claim_class(c) {
            continue;
        }
        if best.is_none_or(|b| volume_capacity(b) > volume_capacity(v)) {
            best = Some(v);
        }
    }
    best
}

fn claim_ref(c: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: c.metadata.name.clone(),
        namespace: c.metadata.namespace.clone(),
        uid: c.metadata.uid.clone(),
        resource_version: c.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn volume_status(
    phase: &str,
    message: Option<String>,
    reason: Option<&str>,
) -> PersistentVolumeStatus {
    PersistentVolumeStatus {
        phase: Some(phase.into()),
        message,
        reason: reason.map(str::to_string),
        ..Default::default()
    }
}

/// The writes that bind `v` to `c` (each skipped when already done).
fn bind(c: &PersistentVolumeClaim, v: &PersistentVolume) -> Vec<Write> {
    let mut out = Vec::new();
    let vname = v.metadata.name.clone().unwrap_or_default();
    let linked = v
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| r.uid == c.metadata.uid && c.metadata.uid.is_some());
    if !linked {
        let mut nv = v.clone();
        let pre_bound = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
        nv.spec.get_or_insert_with(Default::default).claim_ref = Some(claim_ref(c));
        if !pre_bound {
            nv.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
        }
        out.push(Write::Volume(Box::new(nv)));
    }
    if phase_of(v) != "Bound" {
        out.push(Write::VolumeStatus {
            name: vname.clone(),
            status: volume_status("Bound", None, None),
        });
    }
    let spec_name = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or("");
    if spec_name != vname || ann(&c.metadata, ANN_BIND_COMPLETED).is_none() {
        let mut nc = c.clone();
        let a = nc.metadata.annotations.get_or_insert_with(Default::default);
        a.insert(ANN_BIND_COMPLETED.into(), "yes".into());
        if spec_name.is_empty() {
            a.insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
        }
        nc.spec.get_or_insert_with(Default::default).volume_name = Some(vname);
        out.push(Write::Claim(Box::new(nc)));
    }
    let vs = v.spec.as_ref();
    let want = PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        access_modes: vs.and_then(|s| s.access_modes.clone()),
        capacity: vs.and_then(|s| s.capacity.clone()),
        ..c.status.clone().unwrap_or_default()
    };
    if c.status.as_ref() != Some(&want) {
        out.push(Write::ClaimStatus {
            namespace: c.metadata.namespace.clone().unwrap_or_default(),
            name: c.metadata.name.clone().unwrap_or_default(),
            status: want,
        });
    }
    out
}

fn claim_phase(c: &PersistentVolumeClaim, phase: &str) -> Option<Write> {
    if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
        return None;
    }
    Some(Write::ClaimStatus {
        namespace: c.metadata.namespace.clone().unwrap_or_default(),
        name: c.metadata.name.clone().unwrap_or_default(),
        status: PersistentVolumeClaimStatus {
            phase: Some(phase.into()),
            ..c.status.clone().unwrap_or_default()
        },
    })
}

/// `syncClaim` over the volume cache.
pub fn sync_claim(c: &PersistentVolumeClaim, volumes: &[&PersistentVolume]) -> Plan {
    if c.metadata.deletion_timestamp.is_some() {
        return Plan::default();
    }
    let wanted = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty());
    let by_name = |n: &str| {
        volumes
            .iter()
            .copied()
            .find(|v| v.metadata.name.as_deref() == Some(n))
    };
    if ann(&c.metadata, ANN_BIND_COMPLETED).is_some() {
        // syncBoundClaim
        let Some(vname) = wanted else {
            return Plan { writes: claim_phase(c, "Lost").into_iter().collect(), note: Some(Note {
                type_: "Warning",
                reason: "ClaimLost",
                message: "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!".into(),
            }) };
        };
        let Some(v) = by_name(vname) else {
            return Plan {
                writes: claim_phase(c, "Lost").into_iter().collect(),
                note: Some(Note {
                    type_: "Warning",
                    reason: "ClaimLost",
                    message:
                        "Bound claim has lost its PersistentVolume. Data on the volume is lost!"
                            .into(),
                }),
            };
        };
        let other = v
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid.is_some() && r.uid != c.metadata.uid);
        if other {
            return Plan {
                writes: claim_phase(c, "Lost").into_iter().collect(),
                note: Some(Note {
                    type_: "Warning",
                    reason: "ClaimMisbound",
                    message:
                        "Two claims are bound to the same volume, this one is bound incorrectly"
                            .into(),
                }),
            };
        }
        return Plan {
            writes: bind(c, v),
            note: None,
        };
    }
    match wanted {
        None => match find_match(c, volumes) {
            Some(v) => Plan {
                writes: bind(c, v),
                note: None,
            },
            None => {
                let class = claim_class(c);
                let message = if class.is_empty() {
                    "no persistent volumes available for this claim and no storage class is set"
                        .to_string()
                } else {
                    format!("storageclass.storage.k8s.io \"{class}\" not found")
                };
                Plan {
                    writes: claim_phase(c, "Pending").into_iter().collect(),
                    note: Some(Note {
                        type_: "Normal",
                        reason: "FailedBinding",
                        message,
                    }),
                }
            }
        },
        Some(vname) => {
            let Some(v) = by_name(vname) else {
                return Plan {
                    writes: claim_phase(c, "Pending").into_iter().collect(),
                    note: None,
                };
            };
            let r = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
            if r.is_none() || bound_to(v, c) {
                if let Err(why) = satisfies(v, c) {
                    return Plan {
                        writes: claim_phase(c, "Pending").into_iter().collect(),
                        note: Some(Note {
                            type_: "Warning",
                            reason: "VolumeMismatch",
                            message: format!("Cannot bind to requested volume \"{vname}\": {why}"),
                        }),
                    };
                }
                return Plan {
                    writes: bind(c, v),
                    note: None,
                };
            }
            Plan {
                writes: claim_phase(c, "Pending").into_iter().collect(),
                note: Some(Note {
                    type_: "Warning",
                    reason: "FailedBinding",
                    message: format!("volume \"{vname}\" already bound to a different claim."),
                }),
            }
        }
    }
}

/// `syncVolume`: `claim` is the cached claim named by the volume's claimRef, if any.
pub fn sync_volume(v: &PersistentVolume, claim: Option<&PersistentVolumeClaim>) -> Plan {
    let name = v.metadata.name.clone().unwrap_or_default();
    let set = |phase: &str| -> Vec<Write> {
        if phase_of(v) == phase {
            Vec::new()
        } else {
            vec![Write::VolumeStatus {
                name: name.clone(),
                status: volume_status(phase, None, None),
            }]
        }
    };
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Plan {
            writes: set("Available"),
            note: None,
        };
    };
    if r.uid.as_deref().is_none_or(str::is_empty) {
        // Pre-bound by the user; waits for its claim.
        return Plan {
            writes: set("Available"),
            note: None,
        };
    }
    let claim = claim.filter(|c| c.metadata.uid == r.uid);
    let Some(c) = claim else {
        // The claim is gone: Released, then the reclaim policy.
        let policy = v
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        return match policy {
            "Delete" if ann(&v.metadata, ANN_PROVISIONED_BY).is_none() => {
                let message = format!(
                    "error getting deleter volume plugin for volume \"{name}\": no deletable volume plugin matched"
                );
                if phase_of(v) == "Failed" {
                    return Plan::default();
                }
                Plan {
                    writes: vec![Write::VolumeStatus {
                        name: name.clone(),
                        status: volume_status("Failed", Some(message.clone()), None),
                    }],
                    note: Some(Note {
                        type_: "Warning",
                        reason: "VolumeFailedDelete",
                        message,
                    }),
                }
            }
            "Recycle" => {
                let message = "No recycler plugin found for the volume!".to_string();
                if phase_of(v) == "Failed" {
                    return Plan::default();
                }
                Plan {
                    writes: vec![Write::VolumeStatus {
                        name: name.clone(),
                        status: volume_status("Failed", Some(message.clone()), None),
                    }],
                    note: Some(Note {
                        type_: "Warning",
                        reason: "VolumeFailedRecycle",
                        message,
                    }),
                }
            }
            // Retain (and Delete owned by an external provisioner): Released until an admin acts.
            _ => {
                if phase_of(v) == "Failed" {
                    return Plan::default();
                }
                Plan {
                    writes: set("Released"),
                    note: None,
                }
            }
        };
    };
    let claim_volume = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or("");
    if claim_volume.is_empty() {
        // Binding in progress (the claim's write comes next) or pre-bound volume.
        if ann(&v.metadata, ANN_BOUND_BY_CONTROLLER).is_some() {
            return Plan::default();
        }
        return Plan {
            writes: set("Available"),
            note: None,
        };
    }
    if claim_volume == name {
        return Plan {
            writes: set("Bound"),
            note: None,
        };
    }
    // The claim took another volume: a link the controller made is undone.
    if ann(&v.metadata, ANN_BOUND_BY_CONTROLLER).is_some() {
        let mut nv = v.clone();
        if let Some(s) = nv.spec.as_mut() {
            s.claim_ref = None;
        }
        if let Some(a) = nv.metadata.annotations.as_mut() {
            a.remove(ANN_BOUND_BY_CONTROLLER);
        }
        let mut writes = vec![Write::Volume(Box::new(nv))];
        writes.extend(set("Available"));
        return Plan { writes, note: None };
    }
    Plan::default()
}

#[cfg(test)]
mod tests;
