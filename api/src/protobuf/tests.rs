//! Bodies built the way client-go's gogo-protobuf marshaller writes them: every non-pointer
//! member present (empty strings, zeros, empty messages), pointer members only when set,
//! members in field-number order.

use super::*;
use serde_json::json;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited member.
fn ld(num: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(num) << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn s(num: u32, v: &str) -> Vec<u8> {
    ld(num, v.as_bytes())
}

/// A varint member.
fn n(num: u32, v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(num) << 3, &mut out);
    varint(v as u64, &mut out);
    out
}

fn m(num: u32, parts: &[Vec<u8>]) -> Vec<u8> {
    ld(num, &parts.concat())
}

fn map_entry(num: u32, k: &str, v: &[u8]) -> Vec<u8> {
    m(num, &[s(1, k), ld(2, v)])
}

/// ObjectMeta as gogo writes it for a new object: name, then the empty non-pointer members.
fn meta(name: &str, extra: &[Vec<u8>]) -> Vec<u8> {
    let mut parts = vec![
        s(1, name),
        s(2, ""),
        s(3, ""),
        s(4, ""),
        s(5, ""),
        s(6, ""),
        n(7, 0),
        m(8, &[]),
    ];
    parts.extend_from_slice(extra);
    m(1, &parts)
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(m(1, &[s(1, api_version), s(2, kind)]));
    out.extend(ld(2, raw));
    out.extend(s(3, ""));
    out.extend(s(4, ""));
    out
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn create_namespace_demo_matches_recorded_bytes() {
    // The recorded prefix from KUBECTL_WIRE.md section 9, completed with the Namespace's
    // spec {} and status {phase ""} and the envelope's empty contentEncoding/contentType.
    let body = hex(
        "6b387300 0a0f 0a027631 1209 4e616d657370616365 121c 0a14 0a0464656d6f 1200 1a00 2200 \
         2a00 3200 3800 4200 1200 1a02 0a00 1a00 2200",
    );
    let built = envelope(
        "v1",
        "Namespace",
        &[meta("demo", &[]), m(2, &[]), m(3, &[s(1, "")])].concat(),
    );
    assert_eq!(body, built, "the test encoder writes what client-go writes");
    assert_eq!(
        decode_body(&body).unwrap(),
        json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"demo"}})
    );
}

#[test]
fn configmap_and_secret_maps() {
    let raw = [
        meta("cfg", &[map_entry(11, "app", b"web")]),
        map_entry(2, "a", b"1"),
        map_entry(2, "b", b""),
        map_entry(3, "bin", &[0, 1, 2]),
    ]
    .concat();
    let v = decode_body(&envelope("v1", "ConfigMap", &raw)).unwrap();
    assert_eq!(
        v,
        json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg","labels":{"app":"web"}},
               "data":{"a":"1","b":""},"binaryData":{"bin":"AAEC"}})
    );

    let raw = [
        meta("s", &[]),
        map_entry(2, "password", b"hunter2"),
        s(3, "Opaque"),
    ]
    .concat();
    let v = decode_body(&envelope("v1", "Secret", &raw)).unwrap();
    assert_eq!(v["data"], json!({"password":"aHVudGVyMg=="}));
    assert_eq!(v["type"], "Opaque");
}

fn container(name: &str, image: &str, port: Option<i64>) -> Vec<u8> {
    let mut parts = vec![s(1, name), s(2, image), s(5, "")];
    if let Some(p) = port {
        parts.push(m(6, &[s(1, ""), n(2, 0), n(3, p), s(4, "TCP"), s(5, "")]));
    }
    parts.extend([
        m(8, &[]),
        s(13, ""),
        s(14, ""),
        n(16, 0),
        n(17, 0),
        n(18, 0),
        s(20, ""),
    ]);
    m(2, &parts)
}

#[test]
fn create_deployment_keeps_pointer_zeros() {
    // kubectl create deployment web --image=nginx --port=80 --replicas=0
    let labels = map_entry(11, "app", b"web");
    let pod_spec = m(
        2,
        &[
            container("nginx", "nginx", Some(80)),
            s(3, ""),
            s(6, ""),
            s(8, ""),
            s(9, ""),
            s(10, ""),
            n(11, 0),
            n(12, 0),
            n(13, 0),
            s(16, ""),
            s(17, ""),
            s(19, ""),
        ],
    );
    let template = m(3, &[meta("", std::slice::from_ref(&labels)), pod_spec]);
    let spec = m(
        2,
        &[
            n(1, 0),
            m(2, &[map_entry(1, "app", b"web")]),
            template,
            m(4, &[s(1, "")]),
            n(5, 0),
            n(7, 0),
        ],
    );
    let raw = [meta("web", &[labels]), spec, m(3, &[])].concat();
    let v = decode_body(&envelope("apps/v1", "Deployment", &raw)).unwrap();
    assert_eq!(
        v,
        json!({"apiVersion":"apps/v1","kind":"Deployment",
            "metadata":{"name":"web","labels":{"app":"web"}},
            "spec":{"replicas":0,"selector":{"matchLabels":{"app":"web"}},
                "template":{"metadata":{"labels":{"app":"web"}},
                    "spec":{"containers":[{"name":"nginx","image":"nginx",
                        "ports":[{"containerPort":80,"protocol":"TCP"}]}]}}}})
    );
}

#[test]
fn auth_reviews() {
    // kubectl auth can-i create pods
    let raw = [
        meta("", &[]),
        m(
            2,
            &[m(
                1,
                &[
                    s(1, "default"),
                    s(2, "create"),
                    s(3, ""),
                    s(4, ""),
                    s(5, "pods"),
                    s(6, ""),
                    s(7, ""),
                ],
            )],
        ),
        m(3, &[n(1, 0), n(4, 0), s(2, ""), s(3, "")]),
    ]
    .concat();
    let v = decode_body(&envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        &raw,
    ))
    .unwrap();
    assert_eq!(
        v,
        json!({"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","metadata":{},
            "spec":{"resourceAttributes":{"namespace":"default","verb":"create","resource":"pods"}},
            "status":{"allowed":false}})
    );

    // kubectl auth can-i --list / whoami
    let raw = [meta("", &[]), m(2, &[s(1, "default")]), m(3, &[])].concat();
    let v = decode_body(&envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectRulesReview",
        &raw,
    ))
    .unwrap();
    assert_eq!(v["spec"], json!({"namespace":"default"}));
    let raw = [meta("", &[]), m(2, &[m(1, &[s(1, ""), s(2, "")])])].concat();
    let v = decode_body(&envelope(
        "authentication.k8s.io/v1",
        "SelfSubjectReview",
        &raw,
    ))
    .unwrap();
    assert_eq!(
        v,
        json!({"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview","metadata":{}})
    );
}

#[test]
fn eviction_and_token_request() {
    // kubectl drain --grace-period=0: the pointer member is set to 0 and must survive.
    let raw = [meta("web-0", &[]), m(2, &[n(1, 0), s(4, "Background")])].concat();
    let v = decode_body(&envelope("policy/v1", "Eviction", &raw)).unwrap();
    assert_eq!(
        v["deleteOptions"],
        json!({"gracePeriodSeconds":0,"propagationPolicy":"Background"})
    );
    // kubectl create token default --duration=1h --audience=api
    let raw = [
        meta("", &[]),
        m(2, &[s(1, "api"), n(4, 3600)]),
        m(3, &[s(1, ""), m(2, &[])]),
    ]
    .concat();
    let v = decode_body(&envelope("authentication.k8s.io/v1", "TokenRequest", &raw)).unwrap();
    assert_eq!(
        v["spec"],
        json!({"audiences":["api"],"expirationSeconds":3600})
    );
}

#[test]
fn rbac_required_empty_strings_are_kept() {
    // ClusterRoleBinding: 2 subjects, 3 roleRef.
    let raw = [
        meta("read", &[]),
        m(2, &[s(1, "User"), s(2, ""), s(3, "alice"), s(4, "")]),
        m(
            2,
            &[s(1, "ServiceAccount"), s(2, ""), s(3, "sa"), s(4, "ns")],
        ),
        m(
            3,
            &[
                s(1, "rbac.authorization.k8s.io"),
                s(2, "ClusterRole"),
                s(3, "view"),
            ],
        ),
    ]
    .concat();
    let v = decode_body(&envelope(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        &raw,
    ))
    .unwrap();
    assert_eq!(
        v["subjects"],
        json!([{"kind":"User","name":"alice"},{"kind":"ServiceAccount","name":"sa","namespace":"ns"}])
    );
    assert_eq!(
        v["roleRef"],
        json!({"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"})
    );
    // PriorityClass.value has no omitempty: a zero stays.
    let raw = [meta("low", &[]), n(2, 0), n(3, 0), s(4, "")].concat();
    let v = decode_body(&envelope("scheduling.k8s.io/v1", "PriorityClass", &raw)).unwrap();
    assert_eq!(
        v,
        json!({"apiVersion":"scheduling.k8s.io/v1","kind":"PriorityClass","metadata":{"name":"low"},"value":0})
    );
}

#[test]
fn service_int_or_string_and_negative_numbers() {
    let port = |p: i64, target: Vec<u8>| m(1, &[s(1, ""), s(2, "TCP"), n(3, p), target, n(5, 0)]);
    let spec = m(
        2,
        &[
            port(80, m(4, &[n(1, 0), n(2, 8080), s(3, "")])),
            port(443, m(4, &[n(1, 1), n(2, 0), s(3, "https")])),
            map_entry(2, "app", b"web"),
            s(4, "ClusterIP"),
        ],
    );
    let raw = [meta("web", &[]), spec, m(3, &[m(1, &[])])].concat();
    let v = decode_body(&envelope("v1", "Service", &raw)).unwrap();
    assert_eq!(
        v["spec"],
        json!({"ports":[{"protocol":"TCP","port":80,"targetPort":8080},
                        {"protocol":"TCP","port":443,"targetPort":"https"}],
               "selector":{"app":"web"},"type":"ClusterIP"})
    );
    // int32 -1 is a 10-byte varint.
    let raw = [meta("low", &[]), n(2, -1)].concat();
    let v = decode_body(&envelope("scheduling.k8s.io/v1", "PriorityClass", &raw)).unwrap();
    assert_eq!(v["value"], -1);
}

#[test]
fn timestamps_decode_to_rfc3339() {
    // deletionTimestamp {seconds: 1700000000}; creationTimestamp {} is the zero time.
    let raw = meta("x", &[m(9, &[n(1, 1_700_000_000), n(2, 0)])]);
    let v = decode_body(&envelope("v1", "ConfigMap", &raw)).unwrap();
    assert_eq!(v["metadata"]["deletionTimestamp"], "2023-11-14T22:13:20Z");
}

#[test]
fn errors_are_typed() {
    assert_eq!(decode_body(b"{}"), Err(ProtobufError::MissingMagic));
    assert_eq!(decode_body(b"{}").unwrap_err().http_status(), 400);
    let err = decode_body(&envelope("example.com/v1", "Widget", &[])).unwrap_err();
    assert_eq!(err.http_status(), 415);
    assert!(err.to_string().contains("Widget"), "{err}");
    let mut gz = MAGIC.to_vec();
    gz.extend(m(1, &[s(1, "v1"), s(2, "ConfigMap")]));
    gz.extend(s(3, "gzip"));
    assert_eq!(decode_body(&gz).unwrap_err().http_status(), 415);
    // Truncated: a length past the end.
    let mut t = envelope("v1", "ConfigMap", &meta("x", &[]));
    t.truncate(t.len() - 6);
    assert_eq!(decode_body(&t).unwrap_err().http_status(), 400);
    // Wrong wire type for a string member.
    let bad = envelope("v1", "ConfigMap", &m(1, &[n(1, 5)]));
    assert!(matches!(
        decode_body(&bad),
        Err(ProtobufError::Malformed(_))
    ));
    // Invalid UTF-8 in a string.
    let bad = envelope("v1", "ConfigMap", &m(1, &[ld(1, &[0xff, 0xfe])]));
    assert!(matches!(
        decode_body(&bad),
        Err(ProtobufError::Malformed(_))
    ));
    assert!(is_supported_kind("v1", "Namespace"));
    assert!(is_supported_kind("policy/v1", "Eviction"));
    assert!(!is_supported_kind("apps/v1", "Namespace"));
}

#[test]
fn deep_nesting_is_bounded() {
    // Nesting that does not fit the schema is rejected, not recursed into.
    let mut deep = Vec::new();
    for _ in 0..200 {
        deep = m(2, &[m(3, &[m(2, &[deep.clone()])])]);
    }
    assert!(decode_body(&envelope("apps/v1", "Deployment", &deep)).is_err());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_body(&envelope("apps/v1", "Deployment", &raw));
            let mut body = MAGIC.to_vec();
            body.extend(&raw);
            let _ = decode_body(&body);
        }
    }
}
