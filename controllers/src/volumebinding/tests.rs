use super::*;
use serde_json::json;

fn pv(
    name: &str,
    size: &str,
    class: &str,
    modes: &[&str],
    extra: serde_json::Value,
) -> PersistentVolume {
    let mut v = json!({"metadata": {"name": name, "labels": {"tier": "fast"}},
        "spec": {"capacity": {"storage": size}, "accessModes": modes, "storageClassName": class,
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/tmp/x"}},
        "status": {"phase": "Available"}});
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn pvc(
    name: &str,
    size: &str,
    class: &str,
    modes: &[&str],
    extra: serde_json::Value,
) -> PersistentVolumeClaim {
    let mut v = json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "7"},
        "spec": {"resources": {"requests": {"storage": size}}, "accessModes": modes, "storageClassName": class},
        "status": {"phase": "Pending"}});
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn bound_volume(p: &Plan) -> Option<String> {
    p.writes.iter().find_map(|w| match w {
        Write::Claim(c) => c.spec.as_ref().and_then(|s| s.volume_name.clone()),
        _ => None,
    })
}

#[test]
fn smallest_fit_of_the_class_and_modes_wins() {
    let rwo = ["ReadWriteOnce"];
    let vols = [
        pv("big", "10Gi", "", &rwo, json!({})),
        pv("small", "2Gi", "", &rwo, json!({})),
        pv("tiny", "512Mi", "", &rwo, json!({})),
        pv("gold", "1Gi", "gold", &rwo, json!({})),
        pv("rox", "1Gi", "", &["ReadOnlyMany"], json!({})),
        pv(
            "block",
            "1Gi",
            "",
            &rwo,
            json!({"spec": {"volumeMode": "Block"}}),
        ),
        pv(
            "taken",
            "1Gi",
            "",
            &rwo,
            json!({"status": {"phase": "Bound"}, "spec": {"claimRef": {"name": "x", "namespace": "ns", "uid": "u"}}}),
        ),
    ];
    let refs: Vec<&PersistentVolume> = vols.iter().collect();
    let c = pvc("c", "1Gi", "", &rwo, json!({}));
    assert_eq!(
        find_match(&c, &refs)
            .and_then(|v| v.metadata.name.clone())
            .as_deref(),
        Some("small")
    );
    let g = pvc("g", "1Gi", "gold", &rwo, json!({}));
    assert_eq!(
        find_match(&g, &refs)
            .and_then(|v| v.metadata.name.clone())
            .as_deref(),
        Some("gold")
    );
    let b = pvc(
        "b",
        "1Gi",
        "",
        &rwo,
        json!({"spec": {"volumeMode": "Block"}}),
    );
    assert_eq!(
        find_match(&b, &refs)
            .and_then(|v| v.metadata.name.clone())
            .as_deref(),
        Some("block")
    );
    let sel = pvc(
        "s",
        "1Gi",
        "",
        &rwo,
        json!({"spec": {"selector": {"matchLabels": {"tier": "slow"}}}}),
    );
    assert!(find_match(&sel, &refs).is_none());
    let huge = pvc("h", "100Gi", "", &rwo, json!({}));
    let plan = sync_claim(&huge, &refs);
    assert!(plan.writes.is_empty(), "already Pending: {plan:?}");
    assert_eq!(plan.note.unwrap().reason, "FailedBinding");
}

#[test]
fn binding_writes_volume_then_claim_in_order() {
    let rwo = ["ReadWriteOnce"];
    let v = pv("v1", "5Gi", "", &rwo, json!({}));
    let c = pvc("c", "1Gi", "", &rwo, json!({}));
    let plan = sync_claim(&c, &[&v]);
    let kinds: Vec<&str> = plan
        .writes
        .iter()
        .map(|w| match w {
            Write::Volume(_) => "volume",
            Write::VolumeStatus { .. } => "volume-status",
            Write::Claim(_) => "claim",
            Write::ClaimStatus { .. } => "claim-status",
        })
        .collect();
    assert_eq!(kinds, ["volume", "volume-status", "claim", "claim-status"]);
    let Write::Volume(nv) = &plan.writes[0] else {
        unreachable!()
    };
    let r = nv.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
    assert_eq!(
        (r.name.as_deref(), r.uid.as_deref()),
        (Some("c"), Some("uid-c"))
    );
    assert_eq!(
        nv.metadata.annotations.as_ref().unwrap()[ANN_BOUND_BY_CONTROLLER],
        "yes"
    );
    let Write::ClaimStatus { status, .. } = &plan.writes[3] else {
        unreachable!()
    };
    assert_eq!(status.phase.as_deref(), Some("Bound"));
    assert_eq!(status.capacity.as_ref().unwrap()["storage"].0, "5Gi");
    assert_eq!(bound_volume(&plan).as_deref(), Some("v1"));
}

#[test]
fn pre_bound_either_way() {
    let rwo = ["ReadWriteOnce"];
    // Volume pre-bound to the claim by name: chosen over a smaller free one.
    let pre = pv(
        "pre",
        "10Gi",
        "",
        &rwo,
        json!({"spec": {"claimRef": {"name": "c", "namespace": "ns"}}}),
    );
    let free = pv("free", "1Gi", "", &rwo, json!({}));
    let c = pvc("c", "1Gi", "", &rwo, json!({}));
    assert_eq!(
        bound_volume(&sync_claim(&c, &[&free, &pre])).as_deref(),
        Some("pre")
    );
    // ... and not given to another claim.
    let other = pvc("other", "1Gi", "", &rwo, json!({}));
    assert!(find_match(&other, &[&pre]).is_none());
    // Claim naming a volume: only that one, if it satisfies.
    let named = pvc(
        "n",
        "1Gi",
        "",
        &rwo,
        json!({"spec": {"volumeName": "free"}}),
    );
    let plan = sync_claim(&named, &[&free, &pre]);
    assert_eq!(bound_volume(&plan).as_deref(), Some("free"));
    let Write::Claim(nc) = plan
        .writes
        .iter()
        .find(|w| matches!(w, Write::Claim(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert!(
        !nc.metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(ANN_BOUND_BY_CONTROLLER)
    );
    let too_big = pvc(
        "n",
        "5Gi",
        "",
        &rwo,
        json!({"spec": {"volumeName": "free"}}),
    );
    let plan = sync_claim(&too_big, &[&free]);
    assert_eq!(plan.note.unwrap().reason, "VolumeMismatch");
}

#[test]
fn volume_phases_and_reclaim() {
    let rwo = ["ReadWriteOnce"];
    let status_of = |p: &Plan| {
        p.writes.iter().find_map(|w| match w {
            Write::VolumeStatus { status, .. } => status.phase.clone(),
            _ => None,
        })
    };
    let fresh = pv(
        "v",
        "1Gi",
        "",
        &rwo,
        json!({"status": {"phase": "Pending"}}),
    );
    assert_eq!(
        status_of(&sync_volume(&fresh, None)).as_deref(),
        Some("Available")
    );
    let bound = pv(
        "v",
        "1Gi",
        "",
        &rwo,
        json!({"spec": {"claimRef": {"name": "c", "namespace": "ns", "uid": "uid-c"}},
        "status": {"phase": "Bound"}}),
    );
    let c = pvc("c", "1Gi", "", &rwo, json!({"spec": {"volumeName": "v"}}));
    assert_eq!(sync_volume(&bound, Some(&c)), Plan::default());
    // Claim deleted (or replaced by a new one with another uid): Released under Retain.
    assert_eq!(
        status_of(&sync_volume(&bound, None)).as_deref(),
        Some("Released")
    );
    let newer = pvc("c", "1Gi", "", &rwo, json!({"metadata": {"uid": "other"}}));
    assert_eq!(
        status_of(&sync_volume(&bound, Some(&newer))).as_deref(),
        Some("Released")
    );
    // Delete without a provisioner: Failed, as upstream (no deleter plugin).
    let mut del = bound.clone();
    del.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Delete".into());
    let p = sync_volume(&del, None);
    assert_eq!(status_of(&p).as_deref(), Some("Failed"));
    assert_eq!(p.note.unwrap().reason, "VolumeFailedDelete");
    // A claim that went to another volume releases a controller-made link.
    let mut ours = bound.clone();
    ours.metadata.annotations =
        Some([(ANN_BOUND_BY_CONTROLLER.to_string(), "yes".to_string())].into());
    let elsewhere = pvc("c", "1Gi", "", &rwo, json!({"spec": {"volumeName": "w"}}));
    let p = sync_volume(&ours, Some(&elsewhere));
    assert!(
        matches!(&p.writes[0], Write::Volume(v) if v.spec.as_ref().unwrap().claim_ref.is_none())
    );
    assert_eq!(status_of(&p).as_deref(), Some("Available"));
}

#[test]
fn bound_claim_whose_volume_vanished_is_lost() {
    let rwo = ["ReadWriteOnce"];
    let c = pvc(
        "c",
        "1Gi",
        "",
        &rwo,
        json!({"metadata": {"annotations": {ANN_BIND_COMPLETED: "yes"}},
        "spec": {"volumeName": "gone"}, "status": {"phase": "Bound"}}),
    );
    let p = sync_claim(&c, &[]);
    assert!(
        matches!(&p.writes[0], Write::ClaimStatus { status, .. } if status.phase.as_deref() == Some("Lost"))
    );
}
