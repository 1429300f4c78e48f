//! Property tests of the balancing policies.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use proxy_dp::core::{BackendSet, Balancer, Policy, ServiceKey};

fn backends(n: usize, seed: u8) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            SocketAddr::new(
                IpAddr::from([10, seed, (i / 250) as u8, (i % 250) as u8 + 1]),
                8080,
            )
        })
        .collect()
}

fn set(b: Vec<SocketAddr>, policy: Policy) -> Arc<BackendSet> {
    Arc::new(BackendSet::new(
        ServiceKey::new("ns", "svc"),
        String::new(),
        b,
        false,
        policy,
        None,
    ))
}

fn client(i: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::from((0xC000_0000u32 | (i >> 8)).to_be_bytes()),
        (i & 0xff) as u16 + 1024,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Adding one backend to N moves at most about 1/(N+1) of the flows (the ones the new
    /// backend takes), plus a small slack for Maglev's imperfect stability.
    #[test]
    fn maglev_adding_a_backend_moves_about_one_nth(n in 2usize..40, seed in 0u8..200) {
        let before = backends(n + 1, seed);
        let sa = set(before[..n].to_vec(), Policy::Maglev);
        // As the table does on a change: the new set keeps the old table size.
        let sb = Arc::new(BackendSet::clone(&set(before.clone(), Policy::Maglev)).sized_like(&sa));
        prop_assert!(sb.maglev_size() > 100 * (n + 1));
        let mut a = Balancer::new(sa);
        let mut b = Balancer::new(sb);
        let now = Instant::now();
        let flows = 4000u32;
        let mut moved = 0u32;
        for i in 0..flows {
            let c = client(i.wrapping_mul(2_654_435_761));
            let x = a.pick(c, now, &[]);
            let y = b.pick(c, now, &[]);
            prop_assert!(x.is_some() && y.is_some());
            if x != y {
                moved += 1;
            }
        }
        let frac = f64::from(moved) / f64::from(flows);
        let bound = 1.0 / n as f64 + 0.04;
        prop_assert!(frac <= bound, "n={} moved {:.4} > {:.4}", n, frac, bound);
    }

    /// Least-connections never picks a busier backend while an idle one is eligible.
    #[test]
    fn least_connections_prefers_idle(
        n in 1usize..12,
        ops in proptest::collection::vec((any::<bool>(), 0usize..64), 1..200),
    ) {
        let mut bal = Balancer::new(set(backends(n, 1), Policy::LeastConnections));
        let now = Instant::now();
        let mut open: Vec<SocketAddr> = Vec::new();
        for (open_new, k) in ops {
            if open_new || open.is_empty() {
                let all = backends(n, 1);
                let idle_exists = all.iter().any(|b| bal.active(*b) == 0);
                let min = all.iter().map(|b| bal.active(*b)).min().unwrap_or(0);
                let got = bal.pick(client(k as u32), now, &[]);
                prop_assert!(got.is_some());
                let got = got.unwrap_or(all[0]);
                prop_assert_eq!(bal.active(got) - 1, min);
                if idle_exists {
                    prop_assert_eq!(bal.active(got), 1, "picked a busy backend while one was idle");
                }
                open.push(got);
            } else {
                let b = open.swap_remove(k % open.len());
                bal.release(b);
            }
        }
    }

    /// Every policy picks only from the set's backends (the table holds only ready ones when
    /// any exists), never an excluded one, and round-robin reaches all of them.
    #[test]
    fn picks_come_from_the_set_and_skip_excluded(
        n in 1usize..10,
        policy in prop_oneof![Just(Policy::RoundRobin), Just(Policy::LeastConnections), Just(Policy::Maglev)],
        excluded in 0usize..3,
    ) {
        let all = backends(n, 3);
        let mut bal = Balancer::new(set(all.clone(), policy));
        let excl: Vec<SocketAddr> = all.iter().take(excluded.min(n - 1)).copied().collect();
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for i in 0..(n as u32 * 4) {
            let got = bal.pick(client(i * 7919), now, &excl);
            prop_assert!(got.is_some());
            let got = got.unwrap_or(all[0]);
            prop_assert!(all.contains(&got) && !excl.contains(&got));
            seen.insert(got);
        }
        if policy == Policy::RoundRobin {
            prop_assert_eq!(seen.len(), n - excl.len());
        }
    }
}

mod table {
    use super::*;
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proxy_dp::core::{Frontend, Protocol, RoutingTable};
    use std::collections::BTreeMap;

    fn meta(name: &str, svc: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            labels: svc.map(|s| {
                BTreeMap::from([("kubernetes.io/service-name".to_string(), s.to_string())])
            }),
            ..Default::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// The route holds exactly the ready endpoints when any is ready, else exactly the
        /// serving-and-terminating ones; never a not-serving one.
        #[test]
        fn only_ready_endpoints_when_any_exist(
            conds in proptest::collection::vec(
                (proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>())),
                0..12,
            ),
        ) {
            let mut t = RoutingTable::new("n1");
            t.apply_service(&Service {
                metadata: meta("svc", None),
                spec: Some(ServiceSpec {
                    cluster_ips: Some(vec!["10.96.1.1".into()]),
                    ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
                    ..Default::default()
                }),
                status: None,
            }).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let eps: Vec<Endpoint> = conds.iter().enumerate().map(|(i, (r, s, term))| Endpoint {
                addresses: vec![format!("10.2.0.{}", i + 1)],
                conditions: Some(EndpointConditions { ready: *r, serving: *s, terminating: *term }),
                ..Default::default()
            }).collect();
            t.apply_endpoint_slice(&EndpointSlice {
                metadata: meta("svc-a", Some("svc")),
                address_type: "IPv4".into(),
                endpoints: eps,
                ports: Some(vec![EndpointPort { port: Some(8080), ..Default::default() }]),
            }).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let fe = Frontend { ip: Some("10.96.1.1".parse().map_err(|_| TestCaseError::fail("ip"))?), port: 80, protocol: Protocol::Tcp };
            let got = t.route(&fe).map(|(_, s)| s.backends.clone()).unwrap_or_default();
            let addr = |i: usize| SocketAddr::new(IpAddr::from([10, 2, 0, i as u8 + 1]), 8080);
            let ready: Vec<SocketAddr> = conds.iter().enumerate()
                .filter(|(_, (r, _, _))| r.unwrap_or(true)).map(|(i, _)| addr(i)).collect();
            let term: Vec<SocketAddr> = conds.iter().enumerate()
                .filter(|(_, (r, s, t))| !r.unwrap_or(true) && s.unwrap_or(false) && t.unwrap_or(false))
                .map(|(i, _)| addr(i)).collect();
            let mut want = if ready.is_empty() { term } else { ready };
            want.sort();
            prop_assert_eq!(got, want);
        }
    }
}
