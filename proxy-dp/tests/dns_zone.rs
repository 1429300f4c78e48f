//! The record core, table-driven: Services and EndpointSlices in, answers out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proxy_dp::dns::zone::SERVICE_NAME_LABEL;
use proxy_dp::dns::{Answer, ClusterZone, Lookup, ZoneConfig};

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

fn port(name: &str, proto: &str, p: i32) -> ServicePort {
    ServicePort {
        name: (!name.is_empty()).then(|| name.into()),
        protocol: Some(proto.into()),
        port: p,
        ..ServicePort::default()
    }
}

fn service(ns: &str, name: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn external(ns: &str, name: &str, target: &str) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(target.into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// (addresses, hostname, ready)
type Ep<'a> = (&'a [&'a str], Option<&'a str>, Option<bool>);

fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    eps: &[Ep<'_>],
    ports: &[(&str, &str, i32)],
) -> EndpointSlice {
    let mut m = meta(ns, name);
    m.labels = Some(BTreeMap::from([(
        SERVICE_NAME_LABEL.to_owned(),
        svc.to_owned(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: eps
            .iter()
            .map(|(addrs, host, ready)| Endpoint {
                addresses: addrs.iter().map(|a| (*a).to_owned()).collect(),
                hostname: host.map(str::to_owned),
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    ..EndpointConditions::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(
            ports
                .iter()
                .map(|(n, proto, p)| EndpointPort {
                    name: Some((*n).to_owned()),
                    protocol: Some((*proto).to_owned()),
                    port: Some(*p),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    }
}

fn zone() -> ClusterZone {
    let mut z = ClusterZone::new(ZoneConfig::cluster_local());
    z.apply_service(&service(
        "default",
        "web",
        "10.96.0.10",
        vec![port("http", "TCP", 80), port("dns", "UDP", 53)],
    ));
    let mut dual = service("default", "dual", "10.96.0.11", vec![port("", "TCP", 443)]);
    if let Some(s) = dual.spec.as_mut() {
        s.cluster_ips = Some(vec!["10.96.0.11".into(), "fd00::11".into()]);
    }
    z.apply_service(&dual);
    z.apply_service(&service("db", "pg", "None", vec![port("sql", "TCP", 5432)]));
    z.apply_endpoint_slice(&slice(
        "db",
        "pg-abc",
        "pg",
        &[
            (&["10.1.0.1"], Some("pg-0"), Some(true)),
            (&["10.1.0.2"], None, None),
            (&["10.1.0.3"], Some("pg-2"), Some(false)),
        ],
        &[("sql", "TCP", 5432)],
    ));
    z.apply_service(&external("default", "ext", "example.org"));
    z
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

fn answer(z: &ClusterZone, q: &str, t: RecordType) -> Answer {
    match z.lookup(&name(q), t) {
        Lookup::Answer(a) => a,
        Lookup::NotInZone => panic!("{q} should be in the zone"),
    }
}

fn addrs(rs: &[Record]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = rs
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ips(s: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = s.iter().map(|a| a.parse().expect("ip")).collect();
    v.sort();
    v
}

fn assert_negative(a: &Answer, rcode: ResponseCode, what: &str) {
    assert_eq!(a.rcode, rcode, "{what}");
    assert!(a.answers.is_empty(), "{what}: {:?}", a.answers);
    assert_eq!(a.authorities.len(), 1, "{what}: SOA in authority");
    assert_eq!(a.authorities[0].record_type(), RecordType::SOA, "{what}");
    assert_eq!(a.authorities[0].ttl, 5, "{what}");
}

#[test]
fn address_answers_table() {
    let z = zone();
    let cases: &[(&str, RecordType, &[&str])] = &[
        (
            "web.default.svc.cluster.local.",
            RecordType::A,
            &["10.96.0.10"],
        ),
        (
            "WEB.Default.svc.Cluster.Local.",
            RecordType::A,
            &["10.96.0.10"],
        ),
        (
            "dual.default.svc.cluster.local.",
            RecordType::A,
            &["10.96.0.11"],
        ),
        (
            "dual.default.svc.cluster.local.",
            RecordType::AAAA,
            &["fd00::11"],
        ),
        // Headless: ready endpoints only (ready unset counts as ready).
        (
            "pg.db.svc.cluster.local.",
            RecordType::A,
            &["10.1.0.1", "10.1.0.2"],
        ),
        (
            "pg-0.pg.db.svc.cluster.local.",
            RecordType::A,
            &["10.1.0.1"],
        ),
        (
            "10-1-0-2.pg.db.svc.cluster.local.",
            RecordType::A,
            &["10.1.0.2"],
        ),
        (
            "10-244-1-7.default.pod.cluster.local.",
            RecordType::A,
            &["10.244.1.7"],
        ),
        (
            "fd00--7.default.pod.cluster.local.",
            RecordType::AAAA,
            &["fd00::7"],
        ),
    ];
    for (q, t, want) in cases {
        let a = answer(&z, q, *t);
        assert_eq!(a.rcode, ResponseCode::NoError, "{q}");
        assert_eq!(addrs(&a.answers), ips(want), "{q} {t}");
        for r in &a.answers {
            assert_eq!(r.ttl, 5, "{q}");
            assert_eq!(r.name, name(q), "{q}: owner keeps the asked case");
        }
    }
}

#[test]
fn negative_answers_table() {
    let z = zone();
    let nx = ResponseCode::NXDomain;
    let no = ResponseCode::NoError;
    let cases: &[(&str, RecordType, ResponseCode)] = &[
        ("nope.default.svc.cluster.local.", RecordType::A, nx),
        ("web.nons.svc.cluster.local.", RecordType::A, nx),
        ("nons.svc.cluster.local.", RecordType::A, nx),
        ("a.b.c.d.e.f.svc.cluster.local.", RecordType::A, nx),
        ("web.default.cluster.local.", RecordType::A, nx),
        ("pg-2.pg.db.svc.cluster.local.", RecordType::A, nx), // not ready
        ("pg-9.pg.db.svc.cluster.local.", RecordType::A, nx),
        ("x.web.default.svc.cluster.local.", RecordType::A, nx), // not headless
        ("notanip.default.pod.cluster.local.", RecordType::A, nx),
        (
            "_nope._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            nx,
        ),
        (
            "_http._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
            nx,
        ),
        // NODATA: the name exists, no record of that type.
        ("web.default.svc.cluster.local.", RecordType::AAAA, no),
        ("web.default.svc.cluster.local.", RecordType::TXT, no),
        ("pg-0.pg.db.svc.cluster.local.", RecordType::AAAA, no),
        ("default.svc.cluster.local.", RecordType::A, no),
        ("svc.cluster.local.", RecordType::A, no),
        ("cluster.local.", RecordType::A, no),
        ("_tcp.web.default.svc.cluster.local.", RecordType::SRV, no),
        (
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::A,
            no,
        ),
        (
            "10-244-1-7.default.pod.cluster.local.",
            RecordType::AAAA,
            no,
        ),
    ];
    for (q, t, rcode) in cases {
        assert_negative(&answer(&z, q, *t), *rcode, &format!("{q} {t}"));
    }
}

fn srvs(a: &Answer) -> Vec<(u16, String)> {
    let mut v: Vec<(u16, String)> = a
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn srv_named_ports() {
    let z = zone();
    let a = answer(
        &z,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        srvs(&a),
        vec![(80, "web.default.svc.cluster.local.".to_owned())]
    );
    assert_eq!(addrs(&a.additionals), ips(&["10.96.0.10"]));
    let a = answer(
        &z,
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        srvs(&a),
        vec![(53, "web.default.svc.cluster.local.".to_owned())]
    );
    // Headless: one SRV per ready endpoint, targets the endpoint names, addresses additional.
    let a = answer(&z, "_sql._tcp.pg.db.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        srvs(&a),
        vec![
            (5432, "10-1-0-2.pg.db.svc.cluster.local.".to_owned()),
            (5432, "pg-0.pg.db.svc.cluster.local.".to_owned()),
        ]
    );
    assert_eq!(addrs(&a.additionals), ips(&["10.1.0.1", "10.1.0.2"]));
    // SRV on the Service name: every port.
    let a = answer(&z, "web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(srvs(&a).len(), 2);
}

#[test]
fn external_name_is_a_cname() {
    let z = zone();
    for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        let a = answer(&z, "ext.default.svc.cluster.local.", t);
        assert_eq!(a.rcode, ResponseCode::NoError);
        match a.answers.as_slice() {
            [r] => match &r.data {
                RData::CNAME(c) => assert_eq!(c.0.to_ascii(), "example.org."),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn apex_soa_ns_and_outside_names() {
    let z = zone();
    let a = answer(&z, "cluster.local.", RecordType::SOA);
    assert_eq!(a.answers.len(), 1);
    match &a.answers[0].data {
        RData::SOA(s) => {
            assert_eq!(s.mname.to_ascii(), "ns.dns.cluster.local.");
            assert_eq!(s.minimum, 5);
            assert_eq!(s.serial, z.serial());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        answer(&z, "cluster.local.", RecordType::NS).answers.len(),
        1
    );
    for q in [
        "example.org.",
        "local.",
        "cluster.local.evil.",
        "xcluster.local.",
    ] {
        assert_eq!(z.lookup(&name(q), RecordType::A), Lookup::NotInZone, "{q}");
    }
}

#[test]
fn updates_and_deletes() {
    let mut z = zone();
    let s0 = z.serial();
    // ClusterIP change.
    z.apply_service(&service(
        "default",
        "web",
        "10.96.0.99",
        vec![port("http", "TCP", 8080)],
    ));
    assert!(z.serial() != s0);
    let a = answer(&z, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&a.answers), ips(&["10.96.0.99"]));
    let a = answer(
        &z,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(srvs(&a)[0].0, 8080);
    // The old port name is gone.
    let a = answer(
        &z,
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(a.rcode, ResponseCode::NXDomain);

    // An endpoint becomes ready, another goes away.
    z.apply_endpoint_slice(&slice(
        "db",
        "pg-abc",
        "pg",
        &[
            (&["10.1.0.1"], Some("pg-0"), Some(true)),
            (&["10.1.0.3"], Some("pg-2"), Some(true)),
        ],
        &[("sql", "TCP", 5432)],
    ));
    let a = answer(&z, "pg.db.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&a.answers), ips(&["10.1.0.1", "10.1.0.3"]));
    // A second slice of the same Service adds to the answer (duplicates answered once).
    z.apply_endpoint_slice(&slice(
        "db",
        "pg-def",
        "pg",
        &[
            (&["10.1.0.4"], None, Some(true)),
            (&["10.1.0.1"], Some("pg-0"), Some(true)),
        ],
        &[("sql", "TCP", 5432)],
    ));
    let a = answer(&z, "pg.db.svc.cluster.local.", RecordType::A);
    assert_eq!(
        addrs(&a.answers),
        ips(&["10.1.0.1", "10.1.0.3", "10.1.0.4"])
    );
    z.delete_endpoint_slice("db", "pg-abc");
    let a = answer(&z, "pg.db.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&a.answers), ips(&["10.1.0.1", "10.1.0.4"]));
    z.delete_endpoint_slice("db", "pg-def");
    // No endpoints left: NODATA, the Service still exists.
    assert_negative(
        &answer(&z, "pg.db.svc.cluster.local.", RecordType::A),
        ResponseCode::NoError,
        "empty headless",
    );

    // Deleting the Service: NXDOMAIN, and the namespace with it.
    z.delete_service("db", "pg");
    assert_negative(
        &answer(&z, "pg.db.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
        "deleted",
    );
    assert_negative(
        &answer(&z, "db.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
        "empty ns",
    );
    // Deleting what does not exist changes nothing.
    let s1 = z.serial();
    z.delete_service("db", "pg");
    z.delete_endpoint_slice("nons", "x");
    assert_eq!(z.serial(), s1);

    // Re-typing a Service to ExternalName.
    z.apply_service(&external("default", "web", "web.example.net"));
    let a = answer(&z, "web.default.svc.cluster.local.", RecordType::A);
    assert!(matches!(a.answers[0].data, RData::CNAME(_)));
    assert_eq!(z.service_count(), 3);
}

#[test]
fn slice_moving_between_services() {
    let mut z = zone();
    z.apply_service(&service("db", "other", "None", vec![]));
    let mut s = slice(
        "db",
        "pg-abc",
        "other",
        &[(&["10.1.0.9"], None, Some(true))],
        &[],
    );
    z.apply_endpoint_slice(&s);
    assert_negative(
        &answer(&z, "pg.db.svc.cluster.local.", RecordType::A),
        ResponseCode::NoError,
        "moved away",
    );
    let a = answer(&z, "other.db.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&a.answers), ips(&["10.1.0.9"]));
    // Losing the label detaches it.
    s.metadata.labels = None;
    z.apply_endpoint_slice(&s);
    assert_negative(
        &answer(&z, "other.db.svc.cluster.local.", RecordType::A),
        ResponseCode::NoError,
        "unlabelled",
    );
}

#[test]
fn custom_zone_and_ttl() {
    let mut z = ClusterZone::new(ZoneConfig::new("kube.example", 30).expect("zone"));
    z.apply_service(&service("ns", "s", "10.0.0.1", vec![]));
    let a = match z.lookup(&name("s.ns.svc.kube.example."), RecordType::A) {
        Lookup::Answer(a) => a,
        Lookup::NotInZone => panic!("in zone"),
    };
    assert_eq!(a.answers[0].ttl, 30);
    assert_eq!(
        z.lookup(&name("s.ns.svc.cluster.local."), RecordType::A),
        Lookup::NotInZone
    );
    assert!(ZoneConfig::new(".", 5).is_err());
    assert!(ZoneConfig::new("bad..zone", 5).is_err());
}

fn ptrs(z: &ClusterZone, q: &str) -> Option<Vec<String>> {
    match z.lookup(&name(q), RecordType::PTR) {
        Lookup::NotInZone => None,
        Lookup::Answer(a) => {
            assert_eq!(a.rcode, ResponseCode::NoError, "{q}");
            let mut v: Vec<String> = a
                .answers
                .iter()
                .map(|r| {
                    assert_eq!(r.ttl, 5, "{q}");
                    assert_eq!(r.name, name(q), "{q}");
                    match &r.data {
                        RData::PTR(p) => p.0.to_string(),
                        other => panic!("{q}: not a PTR: {other:?}"),
                    }
                })
                .collect();
            v.sort();
            Some(v)
        }
    }
}

#[test]
fn ptr_for_cluster_ips_and_endpoint_ips() {
    let mut z = zone();
    let s = |v: &[&str]| Some(v.iter().map(|x| (*x).to_string()).collect::<Vec<_>>());
    // ClusterIPs (both families) name their Service.
    assert_eq!(
        ptrs(&z, "10.0.96.10.in-addr.arpa."),
        s(&["web.default.svc.cluster.local."])
    );
    assert_eq!(
        ptrs(&z, "11.0.96.10.IN-ADDR.ARPA."),
        s(&["dual.default.svc.cluster.local."]),
        "case-insensitive"
    );
    let v6 = "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    assert_eq!(ptrs(&z, v6), s(&["dual.default.svc.cluster.local."]));
    // Endpoint (pod) IPs name the endpoint: its hostname, else its dashed address; ready or
    // not, as CoreDNS.
    assert_eq!(
        ptrs(&z, "1.0.1.10.in-addr.arpa."),
        s(&["pg-0.pg.db.svc.cluster.local."])
    );
    assert_eq!(
        ptrs(&z, "2.0.1.10.in-addr.arpa."),
        s(&["10-1-0-2.pg.db.svc.cluster.local."])
    );
    // Unknown addresses and partial reverse names are not ours (forwarded upstream).
    assert_eq!(ptrs(&z, "9.9.9.10.in-addr.arpa."), None);
    assert_eq!(ptrs(&z, "96.10.in-addr.arpa."), None);
    assert_eq!(ptrs(&z, "x.0.96.10.in-addr.arpa."), None);
    // Another type on a known reverse name: NODATA.
    match z.lookup(&name("10.0.96.10.in-addr.arpa."), RecordType::A) {
        Lookup::Answer(a) => assert!(a.is_nodata(), "{a:?}"),
        Lookup::NotInZone => panic!("known address"),
    }
    // Updates and deletes keep the reverse index in step.
    z.apply_service(&service("default", "web", "10.96.0.20", vec![]));
    assert_eq!(ptrs(&z, "10.0.96.10.in-addr.arpa."), None, "old IP gone");
    assert_eq!(
        ptrs(&z, "20.0.96.10.in-addr.arpa."),
        s(&["web.default.svc.cluster.local."])
    );
    z.delete_service("default", "web");
    assert_eq!(ptrs(&z, "20.0.96.10.in-addr.arpa."), None);
    z.apply_endpoint_slice(&slice(
        "db",
        "pg-abc",
        "pg",
        &[(&["10.1.0.1"], Some("pg-0"), Some(true))],
        &[("sql", "TCP", 5432)],
    ));
    assert_eq!(ptrs(&z, "2.0.1.10.in-addr.arpa."), None, "endpoint removed");
    z.delete_endpoint_slice("db", "pg-abc");
    assert_eq!(ptrs(&z, "1.0.1.10.in-addr.arpa."), None, "slice deleted");
}
