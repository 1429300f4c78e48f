//! Fuzz-ish property tests of the decoder path: no input panics `handle_query`, and every
//! reply it produces is a well-formed response to the same id within the transport's limit.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::prelude::*;
use proxy_dp::dns::metrics::DnsMetrics;
use proxy_dp::dns::{ClusterZone, HandlerConfig, Outcome, Transport, ZoneConfig, handle_query};

fn zone() -> ClusterZone {
    let mut z = ClusterZone::new(ZoneConfig::cluster_local());
    z.apply_service(&Service {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some("web".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    });
    z
}

fn valid_query(name: &str, t: u16, edns: bool) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    let n = Name::from_ascii(name).unwrap_or_else(|_| Name::root());
    m.add_query(Query::query(n, RecordType::from(t)));
    if edns {
        m.set_edns(Edns::new());
    }
    m.to_vec().unwrap_or_default()
}

fn check(z: &ClusterZone, packet: &[u8], transport: Transport) {
    let metrics = DnsMetrics::default();
    let cfg = HandlerConfig {
        max_udp_payload: 1232,
        forwarding: false,
    };
    match handle_query(z, &cfg, packet, transport, &metrics) {
        Outcome::Reply(bytes) => {
            if transport == Transport::Udp {
                assert!(bytes.len() <= 1232);
            }
            let m = Message::from_vec(&bytes).expect("our replies decode");
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(m.metadata.id, u16::from_be_bytes([packet[0], packet[1]]));
        }
        Outcome::Drop => {}
        Outcome::Forward => panic!("forwarding is off"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let z = zone();
        check(&z, &bytes, Transport::Udp);
        check(&z, &bytes, Transport::Tcp);
    }

    #[test]
    fn mutated_queries_never_panic(
        label in "[a-z0-9-]{1,20}",
        t in any::<u16>(),
        edns in any::<bool>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let z = zone();
        let mut q = valid_query(&format!("{label}.default.svc.cluster.local."), t, edns);
        for (at, b) in flips {
            if !q.is_empty() {
                let i = at % q.len();
                q[i] ^= b;
            }
        }
        let keep = if q.is_empty() { 0 } else { cut % (q.len() + 1) };
        check(&z, &q, Transport::Udp);
        check(&z, &q[..keep], Transport::Udp);
    }
}
