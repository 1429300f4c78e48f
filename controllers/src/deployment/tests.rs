use super::*;
use crate::replicaset;
use crate::testutil::{labels, template, ts};
use crate::util::{is_pod_active, is_pod_ready};
use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use proptest::prelude::*;

fn deployment(
    replicas: i32,
    surge: IntOrString,
    unavailable: IntOrString,
    recreate: bool,
) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("d-uid".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", "web")])),
                ..Default::default()
            },
            template: template("v1", &[("app", "web")]),
            strategy: Some(if recreate {
                DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    rolling_update: None,
                }
            } else {
                DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }
            }),
            revision_history_limit: Some(10),
            progress_deadline_seconds: Some(600),
            ..Default::default()
        }),
        status: None,
    }
}

/// A tiny cluster: the Deployment, its ReplicaSets and their pods. The ReplicaSet controller
/// runs right after each Deployment step (through the real `replicaset::plan`); pods become
/// ready only when the test says so.
struct Sim {
    d: Deployment,
    rss: Vec<ReplicaSet>,
    pods: Vec<Pod>,
    clock: i64,
    next: u64,
}

impl Sim {
    fn new(d: Deployment) -> Self {
        Self {
            d,
            rss: Vec::new(),
            pods: Vec::new(),
            clock: 10_000,
            next: 0,
        }
    }

    fn now(&self) -> Timestamp {
        ts(self.clock)
    }

    /// One deployment reconcile; returns whether it wrote anything.
    fn deploy_step(&mut self) -> bool {
        self.clock += 1;
        let owned: Vec<&ReplicaSet> = self.rss.iter().collect();
        let p = plan(&self.d, owned, self.pods.iter(), self.now()).expect("plan");
        let wrote = !p.writes.is_empty();
        for w in p.writes {
            match w {
                Write::CreateReplicaSet(mut rs) => {
                    self.next += 1;
                    assert!(
                        !self.rss.iter().any(|r| r.metadata.name == rs.metadata.name),
                        "created a ReplicaSet twice"
                    );
                    rs.metadata.uid = Some(format!("rs-{}", self.next));
                    rs.metadata.generation = Some(1);
                    rs.metadata.creation_timestamp =
                        Some(Time(ts(self.clock * 1000 + self.next as i64)));
                    self.rss.push(rs);
                }
                Write::UpdateReplicaSet(rs) => {
                    let cur = self
                        .rss
                        .iter_mut()
                        .find(|r| r.metadata.name == rs.metadata.name)
                        .expect("update of a missing rs");
                    cur.spec = rs.spec;
                    cur.metadata.annotations = rs.metadata.annotations;
                }
                Write::DeleteReplicaSet { name, .. } => {
                    let rs = self
                        .rss
                        .iter()
                        .find(|r| r.metadata.name.as_deref() == Some(&name))
                        .expect("delete of a missing rs");
                    let uid = rs.metadata.uid.clone();
                    assert!(
                        !self
                            .pods
                            .iter()
                            .any(|p| controller_ref(&p.metadata).map(|r| Some(&r.uid))
                                == Some(uid.as_ref()))
                    );
                    self.rss
                        .retain(|r| r.metadata.name.as_deref() != Some(&name));
                }
                Write::SetRevision(r) => {
                    self.d
                        .metadata
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(REVISION.into(), r);
                }
                Write::UpdateStatus(s) => self.d.status = Some(s),
            }
        }
        wrote
    }

    /// The ReplicaSet controller over every ReplicaSet (creations only when `create`).
    fn rs_step(&mut self, create: bool) {
        for i in 0..self.rss.len() {
            let rs = self.rss[i].clone();
            let p = replicaset::plan(&rs, self.pods.iter(), self.now()).expect("rs plan");
            if create {
                for _ in 0..p.create {
                    self.next += 1;
                    let mut pod = replicaset::pod_from_template(&rs);
                    pod.metadata.name = Some(format!("pod-{}", self.next));
                    pod.metadata.uid = Some(format!("pod-uid-{}", self.next));
                    pod.metadata.creation_timestamp = Some(Time(self.now()));
                    pod.status = Some(PodStatus {
                        phase: Some("Running".into()),
                        conditions: Some(vec![PodCondition {
                            type_: "Ready".into(),
                            status: "False".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    });
                    self.pods.push(pod);
                }
            }
            let gone: Vec<String> = p.delete.iter().map(|d| d.name.clone()).collect();
            self.pods
                .retain(|p| !gone.contains(p.metadata.name.as_ref().unwrap()));
            let active: Vec<&Pod> = self
                .pods
                .iter()
                .filter(|p| {
                    controller_ref(&p.metadata).map(|r| &r.uid) == rs.metadata.uid.as_ref()
                        && is_pod_active(p)
                })
                .collect();
            let mut status = replicaset::calculate_status(&rs, &active, self.now());
            status.observed_generation = rs.metadata.generation;
            self.rss[i].status = Some(status);
        }
    }

    /// Marks the unready pods whose bit in `mask` is set as ready.
    fn make_ready(&mut self, mask: u64) {
        let now = self.now();
        for (k, p) in self
            .pods
            .iter_mut()
            .filter(|p| !is_pod_ready(p))
            .enumerate()
        {
            if mask & (1 << (k % 64)) != 0 {
                let c = &mut p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0];
                c.status = "True".into();
                c.last_transition_time = Some(Time(now));
            }
        }
    }

    fn total(&self) -> usize {
        self.pods.iter().filter(|p| is_pod_active(p)).count()
    }

    fn ready(&self) -> usize {
        self.pods.iter().filter(|p| is_pod_ready(p)).count()
    }

    /// Runs all controllers with every pod turning ready until nothing changes.
    fn settle(&mut self) {
        for _ in 0..200 {
            let wrote = self.deploy_step();
            self.rs_step(true);
            let unready = self.total() - self.ready();
            self.make_ready(u64::MAX);
            self.rs_step(true);
            if !wrote && unready == 0 && !self.deploy_step() {
                return;
            }
        }
        panic!("did not settle in 200 rounds");
    }

    fn set_image(&mut self, image: &str) {
        let spec = self.d.spec.as_mut().unwrap();
        spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
        *self.d.metadata.generation.as_mut().unwrap() += 1;
    }

    fn new_rs(&self) -> &ReplicaSet {
        let t = &self.d.spec.as_ref().unwrap().template;
        self.rss
            .iter()
            .find(|r| equal_ignore_hash(r.spec.as_ref().unwrap().template.as_ref().unwrap(), t))
            .expect("new rs")
    }

    fn assert_converged(&self, replicas: i32) {
        let new = self.new_rs();
        assert_eq!(spec_replicas(new), replicas);
        for rs in &self.rss {
            if rs.metadata.uid != new.metadata.uid {
                assert_eq!(spec_replicas(rs), 0, "old rs not scaled down");
            }
        }
        assert_eq!(self.total(), usize::try_from(replicas).unwrap());
        assert_eq!(self.ready(), usize::try_from(replicas).unwrap());
        let s = self.d.status.as_ref().unwrap();
        assert_eq!(s.updated_replicas, Some(replicas));
        assert_eq!(s.available_replicas, Some(replicas));
        assert!(deployment_complete(&self.d, s));
        let prog = get_cond(s, "Progressing").unwrap();
        assert_eq!(prog.reason.as_deref(), Some("NewReplicaSetAvailable"));
        assert_eq!(get_cond(s, "Available").unwrap().status, "True");
    }
}

fn int_or_pct() -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        (0i32..5).prop_map(IntOrString::Int),
        (0i32..=100).prop_map(|p| IntOrString::String(format!("{p}%"))),
    ]
}

#[test]
fn fenceposts_round_as_upstream() {
    let p = |s: &str| IntOrString::String(s.into());
    assert_eq!(
        resolve_fenceposts(Some(&p("25%")), Some(&p("25%")), 10),
        Ok((3, 2))
    );
    assert_eq!(resolve_fenceposts(None, None, 1), Ok((1, 0)));
    assert_eq!(
        resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 5),
        Ok((0, 1))
    );
    assert_eq!(
        resolve_fenceposts(Some(&p("0%")), Some(&p("10%")), 5),
        Ok((0, 1)),
        "10% of 5 rounds down to 0"
    );
}

#[test]
fn first_sync_creates_a_hashed_replicaset_with_revision_1() {
    let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0), false);
    let p = plan(&d, [], [], ts(100)).unwrap();
    let Write::CreateReplicaSet(rs) = &p.writes[0] else {
        panic!("{:?}", p.writes)
    };
    let hash = rs
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .as_ref()
        .unwrap()[POD_TEMPLATE_HASH]
        .clone();
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
    let ann = rs.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann[REVISION], "1");
    assert_eq!(ann[DESIRED_REPLICAS], "3");
    assert_eq!(ann[MAX_REPLICAS], "4");
    assert!(p.writes.contains(&Write::SetRevision("1".into())));
    let Some(Write::UpdateStatus(s)) = p.writes.last() else {
        panic!()
    };
    assert_eq!(
        get_cond(s, "Progressing").unwrap().reason.as_deref(),
        Some("NewReplicaSetCreated")
    );
    assert_eq!(get_cond(s, "Available").unwrap().status, "False");
    // The same template hashes the same; another collision count does not.
    assert_eq!(compute_hash(&d.spec.as_ref().unwrap().template, None), hash);
    assert_ne!(
        compute_hash(&d.spec.as_ref().unwrap().template, Some(1)),
        hash
    );
}

#[test]
fn rollout_then_undo_bumps_revisions_and_history_limit_cleans_up() {
    let mut d = deployment(3, IntOrString::Int(1), IntOrString::Int(1), false);
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    let mut sim = Sim::new(d);
    sim.settle();
    sim.assert_converged(3);
    let v1 = sim.new_rs().metadata.name.clone();
    sim.set_image("v2");
    sim.settle();
    sim.assert_converged(3);
    assert_eq!(revision_of(&sim.new_rs().metadata), 2);
    // Undo: the old template comes back, its ReplicaSet becomes new with revision 3.
    sim.set_image("v1");
    sim.settle();
    sim.assert_converged(3);
    assert_eq!(sim.new_rs().metadata.name, v1);
    assert_eq!(revision_of(&sim.new_rs().metadata), 3);
    assert_eq!(
        sim.new_rs().metadata.annotations.as_ref().unwrap()[REVISION_HISTORY],
        "1"
    );
    assert_eq!(sim.d.metadata.annotations.as_ref().unwrap()[REVISION], "3");
    // v3 makes a third revision; a limit of 1 keeps one old ReplicaSet.
    sim.set_image("v3");
    sim.settle();
    assert_eq!(sim.rss.len(), 2, "history limit 1: the new one and one old");
}

#[test]
fn recreate_waits_for_old_pods_before_scaling_up() {
    let d = deployment(3, IntOrString::Int(0), IntOrString::Int(0), true);
    let mut sim = Sim::new(d);
    sim.settle();
    sim.assert_converged(3);
    sim.set_image("v2");
    sim.deploy_step();
    // The old ReplicaSet is scaled to zero; the new one is not created while pods remain.
    assert_eq!(sim.rss.len(), 1);
    assert_eq!(spec_replicas(&sim.rss[0]), 0);
    sim.rs_step(true);
    assert_eq!(sim.total(), 0);
    sim.deploy_step();
    assert_eq!(sim.rss.len(), 2);
    assert_eq!(spec_replicas(sim.new_rs()), 3);
    sim.settle();
    sim.assert_converged(3);
}

#[test]
fn paused_deployment_scales_but_does_not_roll() {
    let d = deployment(2, IntOrString::Int(1), IntOrString::Int(0), false);
    let mut sim = Sim::new(d);
    sim.settle();
    sim.d.spec.as_mut().unwrap().paused = Some(true);
    sim.set_image("v2");
    sim.d.spec.as_mut().unwrap().replicas = Some(4);
    sim.settle();
    assert_eq!(sim.rss.len(), 1, "no new ReplicaSet while paused");
    assert_eq!(spec_replicas(&sim.rss[0]), 4);
    let s = sim.d.status.as_ref().unwrap();
    assert_eq!(
        get_cond(s, "Progressing").unwrap().reason.as_deref(),
        Some("DeploymentPaused")
    );
    sim.d.spec.as_mut().unwrap().paused = Some(false);
    sim.settle();
    sim.assert_converged(4);
}

#[test]
fn progress_deadline_times_out() {
    let d = deployment(1, IntOrString::Int(1), IntOrString::Int(0), false);
    let mut sim = Sim::new(d);
    sim.deploy_step();
    sim.rs_step(true);
    sim.deploy_step();
    sim.clock += 601;
    sim.deploy_step();
    let s = sim.d.status.as_ref().unwrap();
    let c = get_cond(s, "Progressing").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The rolling-update contract: during a rollout, never more than replicas + maxSurge
    /// pods and never fewer available than replicas - maxUnavailable; then it converges.
    #[test]
    fn rolling_update_respects_surge_and_unavailability(
        replicas in 0i32..12,
        surge in int_or_pct(),
        unavailable in int_or_pct(),
        steps in proptest::collection::vec((any::<u64>(), any::<bool>()), 1..60),
    ) {
        let d = deployment(replicas, surge, unavailable, false);
        let (max_surge, max_unavailable) = surge_and_unavailable(&d).unwrap();
        let mut sim = Sim::new(d);
        sim.settle();
        sim.assert_converged(replicas);
        sim.set_image("v2");
        let max_total = usize::try_from(replicas + max_surge).unwrap();
        let min_ready = usize::try_from(replicas - max_unavailable).unwrap();
        for (mask, create) in steps {
            sim.deploy_step();
            sim.rs_step(create);
            prop_assert!(sim.total() <= max_total, "{} pods > {}", sim.total(), max_total);
            prop_assert!(sim.ready() >= min_ready, "{} ready < {}", sim.ready(), min_ready);
            sim.make_ready(mask);
            sim.rs_step(create);
            prop_assert!(sim.total() <= max_total);
        }
        sim.settle();
        sim.assert_converged(replicas);
    }

    /// Scaling in the middle of a rollout spreads the change over the active ReplicaSets and
    /// keeps their total within the new replicas + maxSurge; the rollout still completes.
    #[test]
    fn proportional_scaling_mid_rollout(
        replicas in 1i32..10,
        scaled in 0i32..15,
        mask in any::<u64>(),
        rounds in 1usize..4,
    ) {
        let d = deployment(replicas, IntOrString::String("30%".into()), IntOrString::String("20%".into()), false);
        let mut sim = Sim::new(d);
        sim.settle();
        sim.set_image("v2");
        for _ in 0..rounds {
            sim.deploy_step();
            sim.rs_step(true);
            sim.make_ready(mask);
            sim.rs_step(true);
        }
        sim.d.spec.as_mut().unwrap().replicas = Some(scaled);
        *sim.d.metadata.generation.as_mut().unwrap() += 1;
        let (s2, _) = surge_and_unavailable(&sim.d).unwrap();
        let bound = if scaled > 0 { scaled + s2 } else { 0 };
        for _ in 0..3 {
            sim.deploy_step();
            let total: i32 = sim.rss.iter().map(spec_replicas).sum();
            prop_assert!(total <= bound, "{} > {}", total, bound);
            sim.rs_step(true);
        }
        sim.settle();
        sim.assert_converged(scaled);
    }
}
