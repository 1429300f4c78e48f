//! EndpointSlice and Endpoints core (sans-IO), after upstream's `endpointslice` and
//! `endpoint` controllers: a Service with a selector gets EndpointSlices (at most
//! [`MAX_ENDPOINTS_PER_SLICE`] endpoints each, one group per address type and resolved port
//! set) listing its pods with `ready`/`serving`/`terminating` conditions, and a legacy
//! Endpoints object of the same name.
//!
//! Placement keeps an endpoint in the slice that already holds it and fills new endpoints
//! into slices with room before creating slices, so one pod's change rewrites one slice.
//!
//! The shell owes the core, per reconcile of a Service key: pass the Service, the pods of its
//! namespace and the slices labelled with its name; apply [`Plan`]'s creates, updates and
//! deletes; create or replace the Endpoints object when [`endpoints_for`] differs.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::util::{is_pod_ready, new_controller_ref, pod_phase, selector_matches};

/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our manager name (upstream's).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// Writes for one Service's slices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Slices to create (generateName `<service>-`).
    pub create: Vec<EndpointSlice>,
    /// Slices to replace.
    pub update: Vec<EndpointSlice>,
    /// Slice names to delete.
    pub delete: Vec<String>,
}

type GroupKey = (String, Vec<(Option<String>, Option<String>, Option<i32>)>);

fn group_key(address_type: &str, ports: &[EndpointPort]) -> GroupKey {
    let mut p: Vec<_> = ports
        .iter()
        .map(|p| (p.name.clone(), p.protocol.clone(), p.port))
        .collect();
    p.sort();
    (address_type.to_string(), p)
}

/// The selector of a Service (None: not managed here).
fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// Whether a pod is an endpoint candidate: selected, has an IP, not finished.
fn candidate(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = selector(svc) else {
        return false;
    };
    let ls = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some(sel.clone()),
        match_expressions: None,
    };
    selector_matches(&ls, pod.metadata.labels.as_ref()).unwrap_or(false)
        && pod_ip(pod).is_some()
        && !matches!(pod_phase(pod), "Succeeded" | "Failed")
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
}

/// The Service's ports resolved against one pod (named target ports look up the pod's
/// container ports; unresolvable ones are left out, as upstream).
fn ports_for(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let mut out = Vec::new();
    for sp in svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
    {
        let port = match &sp.target_port {
            None => Some(sp.port),
            Some(IntOrString::Int(p)) => Some(*p),
            Some(IntOrString::String(name)) => pod
                .spec
                .as_ref()
                .into_iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .map(|cp| cp.container_port),
        };
        if let Some(port) = port {
            out.push(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            });
        }
    }
    out
}

fn endpoint_for(svc: &Service, pod: &Pod, ip: &str) -> Endpoint {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = is_pod_ready(pod);
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let spec = pod.spec.as_ref();
    let svc_name = svc.metadata.name.as_deref();
    let hostname = spec
        .and_then(|s| s.hostname.clone())
        .filter(|_| spec.and_then(|s| s.subdomain.as_deref()) == svc_name);
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(publish || (ready && !terminating)),
            serving: Some(publish || ready),
            terminating: Some(terminating),
        }),
        hostname,
        node_name: spec.and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn new_slice(svc: &Service, address_type: &str, ports: &[EndpointPort]) -> EndpointSlice {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![new_controller_ref("v1", "Service", &svc.metadata)]),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Vec::new(),
        ports: Some(ports.to_vec()),
    }
}

fn addr(e: &Endpoint) -> String {
    e.addresses.first().cloned().unwrap_or_default()
}

/// Plans the slices of `svc` given its namespace's pods and the slices it has now.
pub fn plan<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
    existing: &[&EndpointSlice],
) -> Plan {
    let mut plan = Plan::default();
    if selector(svc).is_none() {
        return plan;
    }
    // Desired endpoints per group, keyed by address.
    let mut groups: BTreeMap<GroupKey, (Vec<EndpointPort>, BTreeMap<String, Endpoint>)> =
        BTreeMap::new();
    for pod in pods.into_iter().filter(|p| candidate(svc, p)) {
        let Some(ip) = pod_ip(pod) else { continue };
        let at = if ip.contains(':') { "IPv6" } else { "IPv4" };
        let ports = ports_for(svc, pod);
        let g = groups
            .entry(group_key(at, &ports))
            .or_insert_with(|| (ports.clone(), BTreeMap::new()));
        g.1.insert(ip.to_string(), endpoint_for(svc, pod, ip));
    }
    let ours: Vec<&EndpointSlice> = existing
        .iter()
        .copied()
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .map(String::as_str)
                == Some(MANAGED_BY)
        })
        .collect();
    if groups.is_empty() {
        // Upstream keeps one empty placeholder slice for a Service with no endpoints.
        let placeholder = new_slice(svc, "IPv4", &[]);
        match ours.split_first() {
            None => plan.create.push(placeholder),
            Some((first, rest)) => {
                if !first.endpoints.is_empty()
                    || first.ports.as_ref().is_some_and(|p| !p.is_empty())
                {
                    let mut s = (*first).clone();
                    s.endpoints.clear();
                    s.ports = Some(Vec::new());
                    plan.update.push(s);
                }
                plan.delete
                    .extend(rest.iter().filter_map(|s| s.metadata.name.clone()));
            }
        }
        return plan;
    }
    let mut by_group: BTreeMap<GroupKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in &ours {
        by_group
            .entry(group_key(
                &s.address_type,
                s.ports.as_deref().unwrap_or(&[]),
            ))
            .or_default()
            .push(s);
    }
    for (key, slices) in &by_group {
        if !groups.contains_key(key) {
            plan.delete
                .extend(slices.iter().filter_map(|s| s.metadata.name.clone()));
        }
    }
    for (key, (ports, mut want)) in groups {
        let mut slices: Vec<EndpointSlice> = by_group
            .get(&key)
            .map(|v| v.iter().map(|s| (*s).clone()).collect())
            .unwrap_or_default();
        slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut changed: BTreeSet<usize> = BTreeSet::new();
        // Keep endpoints where they are (refreshing their conditions).
        for (i, s) in slices.iter_mut().enumerate() {
            let before = s.endpoints.clone();
            s.endpoints = before
                .iter()
                .filter_map(|e| want.remove(&addr(e)))
                .collect();
            if s.endpoints != before {
                changed.insert(i);
            }
        }
        // New endpoints fill slices with room, then new slices.
        let mut new: Vec<Endpoint> = want.into_values().collect();
        for (i, s) in slices.iter_mut().enumerate() {
            while s.endpoints.len() < MAX_ENDPOINTS_PER_SLICE && !new.is_empty() {
                s.endpoints.push(new.remove(0));
                changed.insert(i);
            }
        }
        for chunk in new.chunks(MAX_ENDPOINTS_PER_SLICE) {
            let mut s = new_slice(svc, &key.0, &ports);
            s.endpoints = chunk.to_vec();
            plan.create.push(s);
        }
        for (i, s) in slices.into_iter().enumerate() {
            if s.endpoints.is_empty() {
                plan.delete.extend(s.metadata.name);
            } else if changed.contains(&i) {
                plan.update.push(s);
            }
        }
    }
    plan
}

/// The legacy Endpoints object of `svc` (None for a Service without selector).
pub fn endpoints_for<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Option<Endpoints> {
    selector(svc)?;
    let mut subsets: BTreeMap<GroupKey, EndpointSubset> = BTreeMap::new();
    for pod in pods.into_iter().filter(|p| candidate(svc, p)) {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let ports = ports_for(svc, pod);
        let e = endpoint_for(svc, pod, ip);
        let sub = subsets
            .entry(group_key("", &ports))
            .or_insert_with(|| EndpointSubset {
                ports: Some(
                    ports
                        .iter()
                        .map(|p| CorePort {
                            name: p.name.clone().filter(|n| !n.is_empty()),
                            port: p.port.unwrap_or(0),
                            protocol: p.protocol.clone(),
                            app_protocol: p.app_protocol.clone(),
                        })
                        .collect(),
                ),
                ..Default::default()
            });
        let a = EndpointAddress {
            ip: ip.to_string(),
            hostname: e.hostname,
            node_name: e.node_name,
            target_ref: e.target_ref,
        };
        let ready = e.conditions.and_then(|c| c.ready).unwrap_or(false);
        let list = if ready {
            &mut sub.addresses
        } else {
            &mut sub.not_ready_addresses
        };
        list.get_or_insert_with(Vec::new).push(a);
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_values()
        .map(|mut s| {
            for l in [&mut s.addresses, &mut s.not_ready_addresses]
                .into_iter()
                .flatten()
            {
                l.sort_by(|a, b| a.ip.cmp(&b.ip));
            }
            s
        })
        .collect();
    Some(Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: svc.metadata.labels.clone(),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{labels, pod};
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    fn svc() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("svc-uid".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(labels(&[("app", "web")])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::Int(8080)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn ep_pod(i: usize, ready: bool) -> Pod {
        let mut p = pod(&format!("p{i}"), None, "Running", ready, "n1");
        p.status.as_mut().unwrap().pod_ip = Some(format!("10.0.{}.{}", i / 250, i % 250 + 1));
        p
    }

    /// Applies a plan to a slice set (names for created slices are made up).
    fn apply(mut slices: Vec<EndpointSlice>, p: Plan, n: &mut usize) -> Vec<EndpointSlice> {
        slices.retain(|s| !p.delete.contains(s.metadata.name.as_ref().unwrap()));
        for u in p.update {
            let cur = slices
                .iter_mut()
                .find(|s| s.metadata.name == u.metadata.name)
                .unwrap();
            *cur = u;
        }
        for mut c in p.create {
            *n += 1;
            c.metadata.name = Some(format!("web-{n}"));
            slices.push(c);
        }
        slices
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let mut t = ep_pod(1, true);
        t.metadata.deletion_timestamp = Some(Time(crate::testutil::ts(5)));
        let pods = [ep_pod(0, true), t, ep_pod(2, false)];
        let p = plan(&svc(), pods.iter(), &[]);
        assert_eq!(p.create.len(), 1);
        let s = &p.create[0];
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
        let conds: Vec<_> = s
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref().unwrap();
                (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
            })
            .collect();
        assert_eq!(
            conds,
            [
                (true, true, false),
                (false, true, true),
                (false, false, false)
            ]
        );
        let e = endpoints_for(&svc(), pods.iter()).unwrap();
        let sub = &e.subsets.unwrap()[0];
        assert_eq!(sub.addresses.as_ref().unwrap().len(), 1);
        assert_eq!(
            sub.not_ready_addresses.as_ref().unwrap().len(),
            1,
            "terminating pods are left out"
        );
    }

    #[test]
    fn no_pods_keeps_a_placeholder() {
        let p = plan(&svc(), [].iter(), &[]);
        assert_eq!(p.create.len(), 1);
        assert!(p.create[0].endpoints.is_empty());
    }

    proptest! {
        /// Any sequence of pod sets converges to slices of at most 100 endpoints that list each
        /// selected pod exactly once; a second plan on the result is empty.
        #[test]
        fn slices_hold_every_endpoint_once(sets in proptest::collection::vec(proptest::collection::btree_set(0usize..450, 0..300), 1..4)) {
            let mut slices: Vec<EndpointSlice> = Vec::new();
            let mut n = 0;
            for set in sets {
                let pods: Vec<Pod> = set.iter().map(|i| ep_pod(*i, i % 3 != 0)).collect();
                let refs: Vec<&EndpointSlice> = slices.iter().collect();
                let p = plan(&svc(), pods.iter(), &refs);
                slices = apply(slices, p, &mut n);
                let mut seen = BTreeSet::new();
                for s in &slices {
                    prop_assert!(s.endpoints.len() <= MAX_ENDPOINTS_PER_SLICE);
                    for e in &s.endpoints { prop_assert!(seen.insert(addr(e)), "duplicate {}", addr(e)); }
                }
                prop_assert_eq!(seen.len(), pods.len());
                let refs: Vec<&EndpointSlice> = slices.iter().collect();
                prop_assert_eq!(plan(&svc(), pods.iter(), &refs), Plan::default());
            }
        }
    }
}
