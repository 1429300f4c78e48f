//! The routing core against hand-built Services and EndpointSlices: routes, readiness,
//! terminating fallback, traffic policies, conflicts, and the effects the shell sees.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proxy_dp::core::{
    BackendSet, Balancer, Effect, Frontend, FrontendKind, Protocol, RoutingTable,
};

fn svc(name: &str, ip: &str, port: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// (ip, ready, serving, terminating, node)
type Ep<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>, &'a str);

fn slice(svc: &str, name: &str, port: i32, eps: &[Ep<'_>]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                svc.to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: eps
            .iter()
            .map(|(ip, ready, serving, terminating, node)| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    serving: *serving,
                    terminating: *terminating,
                }),
                node_name: Some(node.to_string()),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn fe(ip: &str, port: u16) -> Frontend {
    Frontend {
        ip: Some(ip.parse().expect("ip")),
        port,
        protocol: Protocol::Tcp,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn drain(t: &mut RoutingTable) -> Vec<Effect> {
    std::iter::from_fn(|| t.poll_effect()).collect()
}

fn backends(t: &RoutingTable, f: &Frontend) -> Vec<SocketAddr> {
    t.route(f)
        .map(|(_, s)| s.backends.clone())
        .unwrap_or_default()
}

#[test]
fn service_and_slice_make_a_route_with_only_ready_endpoints() {
    let mut t = RoutingTable::new("n1");
    t.apply_service(&svc("web", "10.96.0.10", 80)).expect("svc");
    let fx = drain(&mut t);
    assert_eq!(fx[0], Effect::AddAddress("10.96.0.10".parse().expect("ip")));
    assert!(matches!(&fx[1], Effect::Upsert { set, .. } if set.is_empty()));
    t.apply_endpoint_slice(&slice(
        "web",
        "web-1",
        8080,
        &[
            ("10.1.0.1", Some(true), None, None, "n1"),
            ("10.1.0.2", Some(false), Some(false), Some(false), "n2"),
            ("10.1.0.3", None, None, None, "n2"), // nil ready means ready
        ],
    ))
    .expect("slice");
    assert_eq!(
        backends(&t, &fe("10.96.0.10", 80)),
        vec![addr("10.1.0.1:8080"), addr("10.1.0.3:8080")]
    );
    let fx = drain(&mut t);
    assert_eq!(fx.len(), 1, "{fx:?}");
}

#[test]
fn terminating_endpoints_only_when_no_ready_one_is_left() {
    let mut t = RoutingTable::new("n1");
    t.apply_service(&svc("web", "10.96.0.10", 80)).expect("svc");
    let s = |eps: &[Ep<'_>]| slice("web", "web-1", 8080, eps);
    t.apply_endpoint_slice(&s(&[
        ("10.1.0.1", Some(true), Some(true), Some(false), "n1"),
        ("10.1.0.2", Some(false), Some(true), Some(true), "n1"),
        ("10.1.0.3", Some(false), Some(false), Some(true), "n1"),
    ]))
    .expect("slice");
    assert_eq!(
        backends(&t, &fe("10.96.0.10", 80)),
        vec![addr("10.1.0.1:8080")]
    );
    t.apply_endpoint_slice(&s(&[
        ("10.1.0.1", Some(false), Some(false), Some(true), "n1"),
        ("10.1.0.2", Some(false), Some(true), Some(true), "n1"),
    ]))
    .expect("slice");
    let (_, set) = t.route(&fe("10.96.0.10", 80)).expect("route");
    assert_eq!(set.backends, vec![addr("10.1.0.2:8080")]);
    assert!(set.terminating_fallback);
}

#[test]
fn traffic_policies_local_filter_by_node() {
    let mut t = RoutingTable::new("n1");
    let mut s = svc("web", "10.96.0.10", 80);
    let spec = s.spec.as_mut().expect("spec");
    spec.type_ = Some("LoadBalancer".into());
    spec.internal_traffic_policy = Some("Local".into());
    spec.external_traffic_policy = Some("Cluster".into());
    spec.ports.as_mut().expect("ports")[0].node_port = Some(30080);
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some("192.0.2.10".into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    t.apply_service(&s).expect("svc");
    t.apply_endpoint_slice(&slice(
        "web",
        "web-1",
        8080,
        &[
            ("10.1.0.1", Some(true), None, None, "n1"),
            ("10.1.0.2", Some(true), None, None, "n2"),
        ],
    ))
    .expect("slice");
    assert_eq!(
        backends(&t, &fe("10.96.0.10", 80)),
        vec![addr("10.1.0.1:8080")]
    );
    let np = Frontend {
        ip: None,
        port: 30080,
        protocol: Protocol::Tcp,
    };
    assert_eq!(backends(&t, &np).len(), 2);
    assert_eq!(t.route(&np).map(|r| r.0), Some(FrontendKind::NodePort));
    assert_eq!(backends(&t, &fe("192.0.2.10", 80)).len(), 2);

    // externalTrafficPolicy Local: NodePort and LB drop to the local endpoint.
    s.spec.as_mut().expect("spec").external_traffic_policy = Some("Local".into());
    s.spec.as_mut().expect("spec").internal_traffic_policy = None;
    t.apply_service(&s).expect("svc");
    assert_eq!(backends(&t, &np), vec![addr("10.1.0.1:8080")]);
    assert_eq!(backends(&t, &fe("10.96.0.10", 80)).len(), 2);
}

#[test]
fn conflicting_node_ports_first_owner_wins_and_deletes_clean_up() {
    let mut t = RoutingTable::new("n1");
    let with_np = |name: &str, ip: &str| {
        let mut s = svc(name, ip, 80);
        let spec = s.spec.as_mut().expect("spec");
        spec.type_ = Some("NodePort".into());
        spec.ports.as_mut().expect("ports")[0].node_port = Some(30001);
        s
    };
    t.apply_service(&with_np("a", "10.96.0.1")).expect("a");
    t.apply_service(&with_np("b", "10.96.0.2")).expect("b");
    assert_eq!(t.stats().conflicts, 1);
    let np = Frontend {
        ip: None,
        port: 30001,
        protocol: Protocol::Tcp,
    };
    assert_eq!(t.route(&np).expect("np").1.service.name, "a");
    drain(&mut t);
    t.delete_service("default", "a");
    let fx = drain(&mut t);
    assert!(fx.contains(&Effect::Remove(np)));
    assert!(fx.contains(&Effect::RemoveAddress("10.96.0.1".parse().expect("ip"))));
    assert_eq!(t.stats().routes, 1);
}

#[test]
fn a_shared_vip_is_removed_with_its_last_route_and_slices_survive_service_recreation() {
    let mut t = RoutingTable::new("n1");
    let mut s = svc("web", "10.96.0.10", 80);
    s.spec
        .as_mut()
        .expect("spec")
        .ports
        .as_mut()
        .expect("p")
        .push(ServicePort {
            name: Some("dns".into()),
            port: 53,
            protocol: Some("UDP".into()),
            ..Default::default()
        });
    t.apply_endpoint_slice(&slice(
        "web",
        "web-1",
        8080,
        &[("10.1.0.1", None, None, None, "n1")],
    ))
    .expect("slice first");
    t.apply_service(&s).expect("svc");
    let fx = drain(&mut t);
    let adds = fx
        .iter()
        .filter(|e| matches!(e, Effect::AddAddress(_)))
        .count();
    assert_eq!(adds, 1, "one VIP for two routes: {fx:?}");
    assert_eq!(
        backends(&t, &fe("10.96.0.10", 80)),
        vec![addr("10.1.0.1:8080")]
    );
    // The UDP port has no matching slice port: an empty route (refuses).
    let udp = Frontend {
        ip: Some("10.96.0.10".parse().expect("ip")),
        port: 53,
        protocol: Protocol::Udp,
    };
    assert!(t.route(&udp).expect("udp route").1.is_empty());
    t.delete_service("default", "web");
    let fx = drain(&mut t);
    assert_eq!(
        fx.iter()
            .filter(|e| matches!(e, Effect::RemoveAddress(_)))
            .count(),
        1
    );
    t.apply_service(&s).expect("again");
    assert_eq!(
        backends(&t, &fe("10.96.0.10", 80)),
        vec![addr("10.1.0.1:8080")]
    );
    t.delete_endpoint_slice("default", "web-1");
    assert!(backends(&t, &fe("10.96.0.10", 80)).is_empty());
}

#[test]
fn unchanged_objects_emit_nothing_and_keep_the_set() {
    let mut t = RoutingTable::new("n1");
    let s = svc("web", "10.96.0.10", 80);
    let sl = slice(
        "web",
        "web-1",
        8080,
        &[("10.1.0.1", None, None, None, "n1")],
    );
    t.apply_service(&s).expect("svc");
    t.apply_endpoint_slice(&sl).expect("slice");
    drain(&mut t);
    let before = Arc::clone(t.route(&fe("10.96.0.10", 80)).expect("r").1);
    t.apply_service(&s).expect("svc");
    t.apply_endpoint_slice(&sl).expect("slice");
    assert!(drain(&mut t).is_empty());
    assert!(Arc::ptr_eq(
        &before,
        t.route(&fe("10.96.0.10", 80)).expect("r").1
    ));
}

#[test]
fn bad_input_is_refused_or_skipped() {
    let mut t = RoutingTable::new("n1");
    let mut sl = slice("web", "x", 8080, &[("not-an-ip", None, None, None, "n1")]);
    sl.metadata.labels = None;
    assert!(t.apply_endpoint_slice(&sl).is_err());
    let mut s = svc("web", "10.96.0.10", 70_000);
    s.metadata.name = None;
    assert!(t.apply_service(&s).is_err());
    s.metadata.name = Some("web".into());
    t.apply_service(&s).expect("skips the bad port");
    assert_eq!(t.stats().routes, 0);
    assert!(t.stats().invalid >= 1);
}

#[test]
fn session_affinity_sticks_until_the_timeout() {
    let mut t = RoutingTable::new("n1");
    let mut s = svc("web", "10.96.0.10", 80);
    let spec = s.spec.as_mut().expect("spec");
    spec.session_affinity = Some("ClientIP".into());
    spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(5),
        }),
    });
    t.apply_service(&s).expect("svc");
    t.apply_endpoint_slice(&slice(
        "web",
        "w",
        8080,
        &[
            ("10.1.0.1", None, None, None, "n1"),
            ("10.1.0.2", None, None, None, "n1"),
            ("10.1.0.3", None, None, None, "n1"),
        ],
    ))
    .expect("slice");
    let set = Arc::clone(t.route(&fe("10.96.0.10", 80)).expect("r").1);
    assert_eq!(set.affinity, Some(Duration::from_secs(5)));
    let mut b = Balancer::new(set);
    let t0 = Instant::now();
    let client = |port| SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
    let first = b.pick(client(1000), t0, &[]).expect("pick");
    for i in 0..20u16 {
        let at = t0 + Duration::from_secs(u64::from(i) / 5);
        assert_eq!(b.pick(client(2000 + i), at, &[]), Some(first));
    }
    // A failed backend is skipped even for a sticky client.
    assert_ne!(
        b.pick(client(1), t0 + Duration::from_secs(4), &[first]),
        Some(first)
    );
    // After the timeout with no use, round-robin decides again: over three picks from new
    // idle clients every backend shows up.
    let late = t0 + Duration::from_secs(100);
    assert_eq!(b.expire(late), 1);
    let mut seen: Vec<SocketAddr> = (0..3)
        .filter_map(|i| b.pick(SocketAddr::new(IpAddr::from([10, 9, 9, i]), 1), late, &[]))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
}

#[test]
fn balancer_update_keeps_counts_of_staying_backends() {
    let key = proxy_dp::core::ServiceKey::new("d", "s");
    let mk = |v: &[&str]| {
        Arc::new(BackendSet::new(
            key.clone(),
            String::new(),
            v.iter().map(|s| addr(s)).collect(),
            false,
            proxy_dp::core::Policy::LeastConnections,
            None,
        ))
    };
    let mut b = Balancer::new(mk(&["10.0.0.1:1", "10.0.0.2:1"]));
    let now = Instant::now();
    let c = addr("127.0.0.1:5");
    let first = b.pick(c, now, &[]).expect("p");
    b.update(mk(&["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]));
    assert_eq!(b.active(first), 1);
    let next = b.pick(c, now, &[]).expect("p");
    assert_ne!(next, first);
    b.release(first);
    assert_eq!(b.active(first), 0);
}
