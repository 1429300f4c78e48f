//! ServiceAccount and root-CA publisher core (sans-IO): every active namespace has a
//! `default` ServiceAccount and a `kube-root-ca.crt` ConfigMap holding the cluster CA
//! (upstream's `serviceaccounts-controller` and `root-ca-cert-publisher`).
//!
//! The shell owes the core: on every namespace event, and on every delete or change of one
//! of those objects, call [`wants`] with what its caches hold; create what is missing (an
//! AlreadyExists answer is success) and replace a ConfigMap whose data drifted.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The ServiceAccount every namespace gets.
pub const DEFAULT_SA: &str = "default";
/// The ConfigMap holding the cluster CA.
pub const ROOT_CA: &str = "kube-root-ca.crt";

/// A write wanted in a namespace.
#[derive(Clone, Debug, PartialEq)]
pub enum Want {
    /// Create the `default` ServiceAccount.
    CreateServiceAccount(ServiceAccount),
    /// Create the root-CA ConfigMap.
    CreateConfigMap(ConfigMap),
    /// Replace the root-CA ConfigMap (its data drifted).
    UpdateConfigMap(ConfigMap),
}

/// Whether the namespace is active (not being deleted).
pub fn is_active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// The root-CA ConfigMap for `namespace`.
pub fn root_ca_configmap(namespace: &str, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CA.into()),
            namespace: Some(namespace.into()),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/description".to_string(),
                "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("ca.crt".to_string(), ca_pem.to_string())])),
        ..Default::default()
    }
}

/// What `ns` is missing, given the cached `default` ServiceAccount and root-CA ConfigMap.
pub fn wants(
    ns: &Namespace,
    sa: Option<&ServiceAccount>,
    cm: Option<&ConfigMap>,
    ca_pem: Option<&str>,
) -> Vec<Want> {
    let mut out = Vec::new();
    if !is_active(ns) {
        return out;
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    if sa.is_none() {
        out.push(Want::CreateServiceAccount(ServiceAccount {
            metadata: ObjectMeta {
                name: Some(DEFAULT_SA.into()),
                namespace: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        }));
    }
    if let Some(ca) = ca_pem {
        let desired = root_ca_configmap(&name, ca);
        match cm {
            None => out.push(Want::CreateConfigMap(desired)),
            Some(cur) if cur.data != desired.data => {
                let mut next = cur.clone();
                next.data = desired.data;
                out.push(Want::UpdateConfigMap(next));
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceStatus;

    fn ns(phase: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("demo".into()),
                ..Default::default()
            },
            spec: None,
            status: Some(NamespaceStatus {
                phase: Some(phase.into()),
                conditions: None,
            }),
        }
    }

    #[test]
    fn creates_missing_and_repairs_drift() {
        let w = wants(&ns("Active"), None, None, Some("PEM"));
        assert_eq!(w.len(), 2);
        let Want::CreateConfigMap(cm) = &w[1] else {
            panic!()
        };
        assert_eq!(cm.data.as_ref().unwrap()["ca.crt"], "PEM");
        let sa = ServiceAccount::default();
        assert!(wants(&ns("Active"), Some(&sa), Some(cm), Some("PEM")).is_empty());
        let w = wants(&ns("Active"), Some(&sa), Some(cm), Some("NEW"));
        assert!(
            matches!(&w[..], [Want::UpdateConfigMap(c)] if c.data.as_ref().unwrap()["ca.crt"] == "NEW")
        );
        assert!(wants(&ns("Terminating"), None, None, Some("PEM")).is_empty());
    }
}
