//! Leader election between real candidates over a Lease on an in-process apiserver: one
//! leads, the other takes over once the holder stops renewing, a release hands over at
//! once, and a leader whose Lease is taken notices.

mod client_common;

use std::time::Duration;

use api::client::leader::{LeaderElectionConfig, LeaderElector};
use api::client::{Api, PostParams};
use client_common::{Server, eventually};
use k8s_openapi::api::coordination::v1::Lease;

fn fast() -> LeaderElectionConfig {
    LeaderElectionConfig {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_millis(2500),
        retry_period: Duration::from_millis(250),
    }
}

fn holder(l: &Lease) -> String {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn takeover_release_and_loss() {
    let s = Server::start();
    let client = s.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");

    let mut a = LeaderElector::new(client.clone(), "kube-system", "sched", "a")
        .with_config(fast())
        .spawn();
    tokio::time::timeout(Duration::from_secs(5), a.wait_leader())
        .await
        .expect("a leads");
    let l = leases.get("sched").await.unwrap();
    assert_eq!(holder(&l), "a");
    assert_eq!(l.spec.as_ref().unwrap().lease_duration_seconds, Some(3));

    let mut b = LeaderElector::new(client.clone(), "kube-system", "sched", "b")
        .with_config(fast())
        .spawn();
    // While a renews, b never leads (several lease durations).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.is_leader());
    assert!(!b.is_leader());
    assert_eq!(holder(&leases.get("sched").await.unwrap()), "a");

    // a crashes (no release): b takes over after the lease runs out.
    let t0 = tokio::time::Instant::now();
    drop(a);
    tokio::time::timeout(Duration::from_secs(8), b.wait_leader())
        .await
        .expect("b takes over");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "not before the lease expired"
    );
    let l = leases.get("sched").await.unwrap();
    assert_eq!(holder(&l), "b");
    assert_eq!(l.spec.as_ref().unwrap().lease_transitions, Some(1));

    // b releases on stop: a new candidate leads at once, well within a lease duration.
    let mut c = LeaderElector::new(client.clone(), "kube-system", "sched", "c")
        .with_config(LeaderElectionConfig {
            lease_duration: Duration::from_secs(30),
            renew_deadline: Duration::from_millis(2500),
            retry_period: Duration::from_millis(200),
        })
        .spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!c.is_leader());
    b.stop().await.unwrap();
    let t1 = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3), c.wait_leader())
        .await
        .expect("c leads after release");
    assert!(t1.elapsed() < Duration::from_secs(2));

    // Someone takes c's Lease behind its back: c notices and stops leading.
    let mut rx = c.subscribe();
    let mut l = leases.get("sched").await.unwrap();
    let spec = l.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(3600);
    leases
        .replace("sched", &PostParams::default(), &l)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| !*l))
        .await
        .expect("c sees the loss")
        .unwrap();
    assert!(eventually(Duration::from_secs(1), || !c.is_leader()).await);
    assert_eq!(holder(&leases.get("sched").await.unwrap()), "intruder");
    c.stop().await.unwrap();
    // Stopping a non-leader does not touch the Lease.
    assert_eq!(holder(&leases.get("sched").await.unwrap()), "intruder");
}
