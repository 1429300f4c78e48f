//! The bad input for Services, against a real in-process apiserver: ports out of
//! range and a NodePort another Service holds are rejected with 422 and a message naming
//! the field; a deleted Service's NodePort is free again; NodePort and LoadBalancer
//! Services get a nodePort in 30000-32767 when they ask for none; a type change allocates
//! (ClusterIP -> NodePort) or releases (NodePort -> ClusterIP) them. (A Service with no
//! endpoints refusing at once, by RST, is `dataplane.rs`'s
//! `no_endpoints_refuse_promptly_and_dead_backends_are_retried`.)

mod common;

use api::client::{Api, Client, DeleteParams, Patch, PatchParams, PostParams};
use common::ApiServer;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn svc(name: &str, ty: &str, port: i32, node_port: Option<i32>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(ty.into()),
            ports: Some(vec![ServicePort {
                port,
                node_port,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Creates `s`, expecting a 422 whose message contains every `needles`.
async fn rejected(api: &Api<Service>, s: &Service, needles: &[&str]) {
    let e = api
        .create(&PostParams::default(), s)
        .await
        .expect_err("the API must reject this Service");
    assert_eq!(e.code(), Some(422), "{e}");
    let text = e.to_string();
    for n in needles {
        assert!(text.contains(n), "{n:?} missing in: {text}");
    }
}

fn node_port(s: &Service) -> Option<i32> {
    s.spec.as_ref()?.ports.as_ref()?.first()?.node_port
}

#[tokio::test]
async fn out_of_range_ports_and_conflicting_node_ports_are_rejected() {
    let apiserver = ApiServer::start();
    let client = Client::from_kubeconfig(&apiserver.kubeconfig).expect("client");
    let api: Api<Service> = Api::namespaced(client, "default");

    rejected(
        &api,
        &svc("p0", "ClusterIP", 0, None),
        &["spec.ports[0].port"],
    )
    .await;
    rejected(
        &api,
        &svc("p1", "ClusterIP", 70_000, None),
        &["spec.ports[0].port"],
    )
    .await;
    rejected(
        &api,
        &svc("np-low", "NodePort", 80, Some(80)),
        &["spec.ports[0].nodePort", "30000-32767"],
    )
    .await;
    rejected(
        &api,
        &svc("np-cip", "ClusterIP", 80, Some(30080)),
        &["spec.ports[0].nodePort"],
    )
    .await;

    // The first Service holds 30080; the second asking for it is told so.
    let a = api
        .create(
            &PostParams::default(),
            &svc("a", "NodePort", 80, Some(30080)),
        )
        .await
        .expect("create a");
    assert_eq!(node_port(&a), Some(30080));
    rejected(
        &api,
        &svc("b", "NodePort", 81, Some(30080)),
        &["spec.ports[0].nodePort", "30080", "already allocated"],
    )
    .await;
    // The refused Service was not stored.
    assert!(api.get_opt("b").await.expect("get b").is_none());

    // Asking for none allocates one in range, for NodePort and LoadBalancer alike.
    for (name, ty) in [("c", "NodePort"), ("d", "LoadBalancer")] {
        let s = api
            .create(&PostParams::default(), &svc(name, ty, 80, None))
            .await
            .expect("create");
        let np = node_port(&s).expect("nodePort allocated");
        assert!((30000..=32767).contains(&np), "{name}: {np}");
        assert_ne!(np, 30080, "{name}: not the taken one");
    }

    // Deleting the holder frees the port.
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    let b = api
        .create(
            &PostParams::default(),
            &svc("b", "NodePort", 81, Some(30080)),
        )
        .await
        .expect("30080 is free again");
    assert_eq!(node_port(&b), Some(30080));
}

/// A type change moves nodePorts as upstream does: ClusterIP -> NodePort allocates one,
/// an update that omits it keeps the one held, NodePort -> ClusterIP drops and releases it
/// (another Service can take it), and a held port is not reserved twice on update.
#[tokio::test]
async fn type_changes_allocate_and_release_node_ports() {
    let apiserver = ApiServer::start();
    let client = Client::from_kubeconfig(&apiserver.kubeconfig).expect("client");
    let api: Api<Service> = Api::namespaced(client, "default");
    let pp = PatchParams::default();

    let s = api
        .create(&PostParams::default(), &svc("t", "ClusterIP", 80, None))
        .await
        .expect("create t");
    assert_eq!(node_port(&s), None);

    // ClusterIP -> NodePort: a port in range is allocated.
    let s = api
        .patch(
            "t",
            &pp,
            &Patch::Merge(serde_json::json!({"spec": {"type": "NodePort"}})),
        )
        .await
        .expect("to NodePort");
    let np = node_port(&s).expect("nodePort allocated on type change");
    assert!((30000..=32767).contains(&np), "{np}");
    // It is really reserved: another Service asking for it is refused.
    rejected(
        &api,
        &svc("u", "NodePort", 80, Some(np)),
        &["already allocated"],
    )
    .await;

    // A replace that omits the nodePort keeps the held one (no second reservation, no leak).
    let mut r = api.get("t").await.expect("get t");
    if let Some(p) = r.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        p[0].node_port = None;
    }
    let s = api
        .replace("t", &PostParams::default(), &r)
        .await
        .expect("replace without nodePort");
    assert_eq!(node_port(&s), Some(np));

    // Changing the requested port moves the reservation: the old one is free again.
    let other = if np == 32767 { 30000 } else { np + 1 };
    let moved = api
        .patch(
            "t",
            &pp,
            &Patch::<serde_json::Value>::Json(serde_json::json!([
                {"op": "replace", "path": "/spec/ports/0/nodePort", "value": other}
            ])),
        )
        .await;
    // `other` may have been taken by nobody else here; the apiserver is this test's own.
    let s = moved.expect("move nodePort");
    assert_eq!(node_port(&s), Some(other));
    let v = api
        .create(&PostParams::default(), &svc("v", "NodePort", 80, Some(np)))
        .await
        .expect("the old nodePort is released after a move");
    assert_eq!(node_port(&v), Some(np));
    api.delete("v", &DeleteParams::default())
        .await
        .expect("delete v");

    // NodePort -> ClusterIP (merge patch keeps the port fields): the nodePort is dropped
    // and released.
    let s = api
        .patch(
            "t",
            &pp,
            &Patch::Merge(serde_json::json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .expect("to ClusterIP");
    assert_eq!(node_port(&s), None, "{s:?}");
    let w = api
        .create(
            &PostParams::default(),
            &svc("w", "NodePort", 80, Some(other)),
        )
        .await
        .expect("the nodePort is released after NodePort -> ClusterIP");
    assert_eq!(node_port(&w), Some(other));

    // A ClusterIP Service asking for a nodePort of its own is still refused.
    let e = api
        .patch(
            "t",
            &pp,
            &Patch::<serde_json::Value>::Json(serde_json::json!([
                {"op": "add", "path": "/spec/ports/0/nodePort", "value": 31999}
            ])),
        )
        .await
        .expect_err("nodePort on ClusterIP");
    assert_eq!(e.code(), Some(422), "{e}");
}
