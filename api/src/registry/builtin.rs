//! The built-in resource table (Kubernetes 1.33: names, verbs, short names, categories,
//! subresources and field selectors as kube-apiserver serves them).

use super::{Gvk, ResourceDef, Source, SubresourceDef};

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NO_DELETECOLLECTION: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];
const CREATE: &[&str] = &["create"];
const CREATE_GET: &[&str] = &["create", "get"];
const GET: &[&str] = &["get"];

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

/// The core/v1 Event field selectors (apiserver's `event.GetAttrs`).
pub(super) const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// events.k8s.io/v1 names of the same fields (the server converts them).
const EVENTS_V1_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "type",
];

struct B(ResourceDef);

impl B {
    fn new(gv: (&str, &str), kind: &str, plural: &str, namespaced: bool, schema: &str) -> Self {
        let (group, version) = gv;
        Self(ResourceDef {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            list_kind: format!("{kind}List"),
            plural: plural.to_owned(),
            singular: kind.to_ascii_lowercase(),
            namespaced,
            verbs: strs(ALL_VERBS),
            short_names: Vec::new(),
            categories: Vec::new(),
            subresources: Vec::new(),
            field_selectors: Vec::new(),
            indexed_fields: Vec::new(),
            schema_name: schema.to_owned(),
            source: Source::BuiltIn,
        })
    }
    fn verbs(mut self, v: &[&str]) -> Self {
        self.0.verbs = strs(v);
        self
    }
    fn short(mut self, v: &[&str]) -> Self {
        self.0.short_names = strs(v);
        self
    }
    fn all(mut self) -> Self {
        self.0.categories = vec!["all".to_owned()];
        self
    }
    fn categories(mut self, v: &[&str]) -> Self {
        self.0.categories = strs(v);
        self
    }
    fn fields(mut self, v: &[&str]) -> Self {
        self.0.field_selectors.extend(strs(v));
        self
    }
    fn indexed(mut self, v: &[&str]) -> Self {
        self.0.indexed_fields = strs(v);
        self
    }
    /// A subresource answering with the resource's own kind.
    fn sub_self(mut self, name: &str, verbs: &[&str]) -> Self {
        let kind = self.0.gvk();
        self.0.subresources.push(SubresourceDef {
            name: name.to_owned(),
            kind,
            verbs: strs(verbs),
        });
        self
    }
    fn status(self) -> Self {
        self.sub_self("status", GET_PATCH_UPDATE)
    }
    fn scale(self) -> Self {
        self.sub(("autoscaling", "v1"), "Scale", "scale", GET_PATCH_UPDATE)
    }
    fn sub(mut self, gv: (&str, &str), kind: &str, name: &str, verbs: &[&str]) -> Self {
        self.0.subresources.push(SubresourceDef {
            name: name.to_owned(),
            kind: Gvk::new(gv.0, gv.1, kind),
            verbs: strs(verbs),
        });
        self
    }
    fn done(mut self) -> ResourceDef {
        self.0.field_selectors.push("metadata.name".to_owned());
        if self.0.namespaced {
            self.0.field_selectors.push("metadata.namespace".to_owned());
        }
        self.0.field_selectors.sort();
        self.0.field_selectors.dedup();
        self.0.subresources.sort_by(|a, b| a.name.cmp(&b.name));
        self.0
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

const CORE: (&str, &str) = ("", "v1");
const APPS: (&str, &str) = ("apps", "v1");
const BATCH: (&str, &str) = ("batch", "v1");

/// Every built-in resource, in discovery order (core first, then groups as kube-apiserver
/// lists them).
pub(super) fn all() -> Vec<ResourceDef> {
    let c = |kind: &str| format!("io.k8s.api.core.v1.{kind}");
    let a = |kind: &str| format!("io.k8s.api.apps.v1.{kind}");
    let ns = true;
    let cluster = false;
    vec![
        // core/v1, alphabetical as /api/v1 lists them
        B::new(CORE, "ConfigMap", "configmaps", ns, &c("ConfigMap"))
            .short(&["cm"])
            .done(),
        B::new(CORE, "Endpoints", "endpoints", ns, &c("Endpoints"))
            .short(&["ep"])
            .done(),
        B::new(CORE, "Event", "events", ns, &c("Event"))
            .short(&["ev"])
            .fields(EVENT_FIELDS)
            .indexed(&["involvedObject.name"])
            .done(),
        B::new(CORE, "LimitRange", "limitranges", ns, &c("LimitRange"))
            .short(&["limits"])
            .done(),
        B::new(CORE, "Namespace", "namespaces", cluster, &c("Namespace"))
            .verbs(NO_DELETECOLLECTION)
            .short(&["ns"])
            .fields(&["status.phase"])
            .sub_self("finalize", &["update"])
            .status()
            .done(),
        B::new(CORE, "Node", "nodes", cluster, &c("Node"))
            .short(&["no"])
            .fields(&["spec.unschedulable"])
            .sub(
                CORE,
                "NodeProxyOptions",
                "proxy",
                &["create", "delete", "get", "patch", "update"],
            )
            .status()
            .done(),
        B::new(
            CORE,
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            ns,
            &c("PersistentVolumeClaim"),
        )
        .short(&["pvc"])
        .status()
        .done(),
        B::new(
            CORE,
            "PersistentVolume",
            "persistentvolumes",
            cluster,
            &c("PersistentVolume"),
        )
        .short(&["pv"])
        .status()
        .done(),
        B::new(CORE, "Pod", "pods", ns, &c("Pod"))
            .short(&["po"])
            .all()
            .fields(POD_FIELDS)
            .indexed(&["spec.nodeName"])
            .sub(CORE, "PodAttachOptions", "attach", CREATE_GET)
            .sub(CORE, "Binding", "binding", CREATE)
            .sub_self("ephemeralcontainers", GET_PATCH_UPDATE)
            .sub(("policy", "v1"), "Eviction", "eviction", CREATE)
            .sub(CORE, "PodExecOptions", "exec", CREATE_GET)
            .sub_self("log", GET)
            .sub(CORE, "PodPortForwardOptions", "portforward", CREATE_GET)
            .sub(
                CORE,
                "PodProxyOptions",
                "proxy",
                &["create", "delete", "get", "patch", "update"],
            )
            .sub_self("resize", GET_PATCH_UPDATE)
            .status()
            .done(),
        B::new(
            CORE,
            "ReplicationController",
            "replicationcontrollers",
            ns,
            &c("ReplicationController"),
        )
        .short(&["rc"])
        .all()
        .fields(&["status.replicas"])
        .scale()
        .status()
        .done(),
        B::new(
            CORE,
            "ResourceQuota",
            "resourcequotas",
            ns,
            &c("ResourceQuota"),
        )
        .short(&["quota"])
        .status()
        .done(),
        B::new(CORE, "Secret", "secrets", ns, &c("Secret"))
            .fields(&["type"])
            .done(),
        B::new(
            CORE,
            "ServiceAccount",
            "serviceaccounts",
            ns,
            &c("ServiceAccount"),
        )
        .short(&["sa"])
        .sub(
            ("authentication.k8s.io", "v1"),
            "TokenRequest",
            "token",
            CREATE,
        )
        .done(),
        B::new(CORE, "Service", "services", ns, &c("Service"))
            .short(&["svc"])
            .all()
            .sub(
                CORE,
                "ServiceProxyOptions",
                "proxy",
                &["create", "delete", "get", "patch", "update"],
            )
            .status()
            .done(),
        // apps/v1
        B::new(
            APPS,
            "ControllerRevision",
            "controllerrevisions",
            ns,
            &a("ControllerRevision"),
        )
        .done(),
        B::new(APPS, "DaemonSet", "daemonsets", ns, &a("DaemonSet"))
            .short(&["ds"])
            .all()
            .status()
            .done(),
        B::new(APPS, "Deployment", "deployments", ns, &a("Deployment"))
            .short(&["deploy"])
            .all()
            .scale()
            .status()
            .done(),
        B::new(APPS, "ReplicaSet", "replicasets", ns, &a("ReplicaSet"))
            .short(&["rs"])
            .all()
            .fields(&["status.replicas"])
            .scale()
            .status()
            .done(),
        B::new(APPS, "StatefulSet", "statefulsets", ns, &a("StatefulSet"))
            .short(&["sts"])
            .all()
            .scale()
            .status()
            .done(),
        // events.k8s.io/v1
        B::new(
            ("events.k8s.io", "v1"),
            "Event",
            "events",
            ns,
            "io.k8s.api.events.v1.Event",
        )
        .short(&["ev"])
        .fields(EVENTS_V1_FIELDS)
        .done(),
        // authentication.k8s.io/v1
        B::new(
            ("authentication.k8s.io", "v1"),
            "SelfSubjectReview",
            "selfsubjectreviews",
            cluster,
            "io.k8s.api.authentication.v1.SelfSubjectReview",
        )
        .verbs(CREATE)
        .done(),
        // authorization.k8s.io/v1
        B::new(
            ("authorization.k8s.io", "v1"),
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            cluster,
            "io.k8s.api.authorization.v1.SelfSubjectAccessReview",
        )
        .verbs(CREATE)
        .done(),
        B::new(
            ("authorization.k8s.io", "v1"),
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            cluster,
            "io.k8s.api.authorization.v1.SelfSubjectRulesReview",
        )
        .verbs(CREATE)
        .done(),
        // autoscaling/v2
        B::new(
            ("autoscaling", "v2"),
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            ns,
            "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
        )
        .short(&["hpa"])
        .all()
        .status()
        .done(),
        // autoscaling/v1: the same objects, converted from the stored v2 (crate::conversion).
        B::new(
            ("autoscaling", "v1"),
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            ns,
            "io.k8s.api.autoscaling.v1.HorizontalPodAutoscaler",
        )
        .short(&["hpa"])
        .all()
        .status()
        .done(),
        // batch/v1
        B::new(
            BATCH,
            "CronJob",
            "cronjobs",
            ns,
            "io.k8s.api.batch.v1.CronJob",
        )
        .short(&["cj"])
        .all()
        .status()
        .done(),
        B::new(BATCH, "Job", "jobs", ns, "io.k8s.api.batch.v1.Job")
            .all()
            .fields(&["status.successful"])
            .status()
            .done(),
        // policy/v1
        B::new(
            ("policy", "v1"),
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            ns,
            "io.k8s.api.policy.v1.PodDisruptionBudget",
        )
        .short(&["pdb"])
        .status()
        .done(),
        // rbac.authorization.k8s.io/v1
        rbac("ClusterRoleBinding", "clusterrolebindings", cluster),
        rbac("ClusterRole", "clusterroles", cluster),
        rbac("RoleBinding", "rolebindings", ns),
        rbac("Role", "roles", ns),
        // apiextensions.k8s.io/v1
        B::new(
            ("apiextensions.k8s.io", "v1"),
            "CustomResourceDefinition",
            "customresourcedefinitions",
            cluster,
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
        )
        .short(&["crd", "crds"])
        .categories(&["api-extensions"])
        .status()
        .done(),
        // scheduling.k8s.io/v1
        B::new(
            ("scheduling.k8s.io", "v1"),
            "PriorityClass",
            "priorityclasses",
            cluster,
            "io.k8s.api.scheduling.v1.PriorityClass",
        )
        .short(&["pc"])
        .done(),
        // coordination.k8s.io/v1
        B::new(
            ("coordination.k8s.io", "v1"),
            "Lease",
            "leases",
            ns,
            "io.k8s.api.coordination.v1.Lease",
        )
        .done(),
        // discovery.k8s.io/v1
        B::new(
            ("discovery.k8s.io", "v1"),
            "EndpointSlice",
            "endpointslices",
            ns,
            "io.k8s.api.discovery.v1.EndpointSlice",
        )
        .done(),
    ]
}

fn rbac(kind: &str, plural: &str, namespaced: bool) -> ResourceDef {
    B::new(
        ("rbac.authorization.k8s.io", "v1"),
        kind,
        plural,
        namespaced,
        &format!("io.k8s.api.rbac.v1.{kind}"),
    )
    .done()
}
