use serde_json::json;

use super::*;

#[test]
#[allow(clippy::type_complexity)]
fn builtin_names_match_upstream() {
    let r = Registry::builtin();
    // (group, version, plural, kind, namespaced, short names)
    let cases: &[(&str, &str, &str, &str, bool, &[&str])] = &[
        ("", "v1", "pods", "Pod", true, &["po"]),
        ("", "v1", "services", "Service", true, &["svc"]),
        ("", "v1", "namespaces", "Namespace", false, &["ns"]),
        ("", "v1", "nodes", "Node", false, &["no"]),
        ("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
        ("", "v1", "secrets", "Secret", true, &[]),
        ("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
        ("", "v1", "events", "Event", true, &["ev"]),
        ("", "v1", "limitranges", "LimitRange", true, &["limits"]),
        (
            "",
            "v1",
            "resourcequotas",
            "ResourceQuota",
            true,
            &["quota"],
        ),
        (
            "",
            "v1",
            "persistentvolumes",
            "PersistentVolume",
            false,
            &["pv"],
        ),
        (
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            &["pvc"],
        ),
        (
            "",
            "v1",
            "replicationcontrollers",
            "ReplicationController",
            true,
            &["rc"],
        ),
        ("", "v1", "endpoints", "Endpoints", true, &["ep"]),
        ("apps", "v1", "deployments", "Deployment", true, &["deploy"]),
        ("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"]),
        ("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"]),
        ("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"]),
        (
            "apps",
            "v1",
            "controllerrevisions",
            "ControllerRevision",
            true,
            &[],
        ),
        ("batch", "v1", "jobs", "Job", true, &[]),
        ("batch", "v1", "cronjobs", "CronJob", true, &["cj"]),
        ("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
        (
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
            &[],
        ),
        ("events.k8s.io", "v1", "events", "Event", true, &["ev"]),
        (
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
        ),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            &[],
        ),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
        ),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
        ),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        (
            "scheduling.k8s.io",
            "v1",
            "priorityclasses",
            "PriorityClass",
            false,
            &["pc"],
        ),
        (
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
        ),
        (
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
            true,
            &["hpa"],
        ),
        (
            "autoscaling",
            "v1",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
            true,
            &["hpa"],
        ),
        (
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
            &[],
        ),
        (
            "authorization.k8s.io",
            "v1",
            "selfsubjectrulesreviews",
            "SelfSubjectRulesReview",
            false,
            &[],
        ),
        (
            "authentication.k8s.io",
            "v1",
            "selfsubjectreviews",
            "SelfSubjectReview",
            false,
            &[],
        ),
    ];
    for (g, v, plural, kind, namespaced, short) in cases {
        let d = r
            .lookup(g, v, plural)
            .unwrap_or_else(|| panic!("{g}/{v} {plural} missing"));
        assert_eq!(d.kind, *kind);
        assert_eq!(d.namespaced, *namespaced, "{plural}");
        assert_eq!(
            d.short_names,
            short.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{plural}"
        );
        assert_eq!(d.singular, kind.to_ascii_lowercase());
        assert_eq!(
            r.lookup_kind(g, v, kind).map(|d| d.plural.as_str()),
            Some(*plural)
        );
    }
    assert_eq!(r.resources().count(), cases.len());
}

#[test]
fn category_all_is_upstreams() {
    let r = Registry::builtin();
    let mut all: Vec<&str> = r
        .resources()
        .filter(|d| d.categories.iter().any(|c| c == "all"))
        .map(|d| d.plural.as_str())
        .collect();
    all.sort();
    // HorizontalPodAutoscaler is in `all` at both its versions.
    all.dedup();
    assert_eq!(
        all,
        vec![
            "cronjobs",
            "daemonsets",
            "deployments",
            "horizontalpodautoscalers",
            "jobs",
            "pods",
            "replicasets",
            "replicationcontrollers",
            "services",
            "statefulsets",
        ]
    );
}

#[test]
fn subresources_and_their_kinds() {
    let r = Registry::builtin();
    let cases = [
        ("", "pods", "log", ("", "Pod"), vec!["get"]),
        (
            "",
            "pods",
            "status",
            ("", "Pod"),
            vec!["get", "patch", "update"],
        ),
        ("", "pods", "binding", ("", "Binding"), vec!["create"]),
        (
            "",
            "pods",
            "eviction",
            ("policy", "Eviction"),
            vec!["create"],
        ),
        (
            "",
            "pods",
            "exec",
            ("", "PodExecOptions"),
            vec!["create", "get"],
        ),
        (
            "",
            "pods",
            "attach",
            ("", "PodAttachOptions"),
            vec!["create", "get"],
        ),
        (
            "",
            "pods",
            "portforward",
            ("", "PodPortForwardOptions"),
            vec!["create", "get"],
        ),
        (
            "",
            "replicationcontrollers",
            "scale",
            ("autoscaling", "Scale"),
            vec!["get", "patch", "update"],
        ),
        (
            "apps",
            "deployments",
            "scale",
            ("autoscaling", "Scale"),
            vec!["get", "patch", "update"],
        ),
        (
            "apps",
            "replicasets",
            "scale",
            ("autoscaling", "Scale"),
            vec!["get", "patch", "update"],
        ),
        (
            "apps",
            "statefulsets",
            "scale",
            ("autoscaling", "Scale"),
            vec!["get", "patch", "update"],
        ),
        (
            "apps",
            "statefulsets",
            "status",
            ("apps", "StatefulSet"),
            vec!["get", "patch", "update"],
        ),
        (
            "apps",
            "daemonsets",
            "status",
            ("apps", "DaemonSet"),
            vec!["get", "patch", "update"],
        ),
    ];
    for (g, plural, sub, (kg, kind), verbs) in cases {
        let v = "v1";
        let (_, s) = r
            .resolve_subresource(g, v, plural, sub)
            .unwrap_or_else(|| panic!("{plural}/{sub}"));
        assert_eq!(
            (s.kind.group.as_str(), s.kind.kind.as_str()),
            (kg, kind),
            "{plural}/{sub}"
        );
        assert_eq!(s.verbs, verbs, "{plural}/{sub}");
    }
    assert!(
        r.resolve_subresource("apps", "v1", "daemonsets", "scale")
            .is_none()
    );
    assert!(
        r.resolve_subresource("", "v1", "configmaps", "status")
            .is_none()
    );
}

#[test]
fn verbs_match_upstream() {
    let r = Registry::builtin();
    let ns = r.lookup("", "v1", "namespaces").map(|d| d.verbs.clone());
    assert_eq!(
        ns,
        Some(
            [
                "create", "delete", "get", "list", "patch", "update", "watch"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    let ssar = r
        .lookup("authorization.k8s.io", "v1", "selfsubjectaccessreviews")
        .map(|d| d.verbs.clone());
    assert_eq!(ssar, Some(vec!["create".to_owned()]));
    assert!(
        r.lookup("apps", "v1", "deployments")
            .is_some_and(|d| d.has_verb("deletecollection"))
    );
}

#[test]
fn field_selectors_and_index() {
    let r = Registry::builtin();
    let pods = r.lookup("", "v1", "pods").cloned();
    let Some(pods) = pods else { panic!("pods") };
    for f in [
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "status.phase",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.podIP",
        "status.nominatedNodeName",
    ] {
        assert!(pods.supports_field(f), "{f}");
    }
    assert!(!pods.supports_field("spec.containers"));
    assert_eq!(pods.indexed_fields, vec!["spec.nodeName".to_owned()]);
    let nodes = r.lookup("", "v1", "nodes").cloned();
    assert!(nodes.as_ref().is_some_and(
        |n| n.supports_field("spec.unschedulable") && !n.supports_field("metadata.namespace")
    ));
    let secrets = r.lookup("", "v1", "secrets").cloned();
    assert!(secrets.is_some_and(|s| s.supports_field("type")));

    let pod = json!({"metadata": {"name": "p", "namespace": "ns1", "uid": "u1",
        "labels": {"b": "2", "a": "1"}}, "spec": {"nodeName": "node-1", "hostNetwork": true},
        "status": {"phase": "Running"}});
    let idx = extract_index(&pods, &pod);
    assert_eq!(idx.uid, "u1");
    assert_eq!(idx.kind, "Pod");
    assert_eq!((idx.namespace.as_str(), idx.name.as_str()), ("ns1", "p"));
    assert_eq!(
        idx.labels,
        vec![("a".into(), "1".into()), ("b".into(), "2".into())]
    );
    let get = |f: &str| {
        idx.fields
            .iter()
            .find(|(k, _)| k == f)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("spec.nodeName"), Some("node-1"));
    assert_eq!(get("status.phase"), Some("Running"));
    assert_eq!(get("spec.hostNetwork"), Some("true"));
    assert_eq!(get("status.podIP"), Some(""));
    assert_eq!(get("metadata.namespace"), Some("ns1"));
    let mut sorted = idx.fields.clone();
    sorted.sort();
    assert_eq!(sorted, idx.fields);
}

#[test]
fn event_and_job_fields_render_like_upstream() {
    let r = Registry::builtin();
    let Some(ev) = r.lookup("", "v1", "events").cloned() else {
        panic!("events")
    };
    let e = json!({"metadata": {"name": "e", "namespace": "d"}, "involvedObject": {"kind": "Pod",
        "name": "web-0", "uid": "x"}, "source": {"component": "kubelet"}, "reason": "Started", "type": "Normal"});
    assert_eq!(
        field_value(&ev, &e, "involvedObject.name").as_deref(),
        Some("web-0")
    );
    assert_eq!(field_value(&ev, &e, "source").as_deref(), Some("kubelet"));
    assert_eq!(
        field_value(&ev, &e, "involvedObject.fieldPath").as_deref(),
        Some("")
    );
    assert_eq!(field_value(&ev, &e, "spec.nodeName"), None);
    let Some(job) = r.lookup("batch", "v1", "jobs").cloned() else {
        panic!("jobs")
    };
    assert_eq!(
        field_value(
            &job,
            &json!({"status": {"succeeded": 3}}),
            "status.successful"
        )
        .as_deref(),
        Some("3")
    );
    assert_eq!(
        field_value(&job, &json!({}), "status.successful").as_deref(),
        Some("0")
    );
}

fn sample_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
            "versions": [
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v1", "served": true, "storage": true,
                 "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                 "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Color", "type": "string", "priority": 1, "jsonPath": ".spec.color"}],
                 "selectableFields": [{"jsonPath": ".spec.color"}],
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}}},
                {"name": "v1alpha1", "served": false, "storage": false}
            ]}
    })
}

#[test]
fn crd_adds_and_removes_entries() {
    let mut r = Registry::builtin();
    let before = r.generation();
    let defs = r.apply_crd(&sample_crd()).unwrap_or_default();
    assert_eq!(defs.len(), 2, "served versions only");
    assert!(r.generation() > before);
    let Some(v1) = r.lookup("example.com", "v1", "widgets").cloned() else {
        panic!("widgets v1")
    };
    assert_eq!(v1.kind, "Widget");
    assert_eq!(v1.list_kind, "WidgetList");
    assert_eq!(v1.short_names, vec!["wd".to_owned()]);
    assert_eq!(v1.categories, vec!["all".to_owned()]);
    let subs: Vec<(&str, &str)> = v1
        .subresources
        .iter()
        .map(|s| (s.name.as_str(), s.kind.kind.as_str()))
        .collect();
    assert_eq!(subs, vec![("scale", "Scale"), ("status", "Widget")]);
    let info = v1.crd().cloned();
    let Some(info) = info else { panic!("crd info") };
    assert_eq!(info.printer_columns.len(), 2);
    assert_eq!(info.printer_columns[1].priority, 1);
    assert_eq!(
        info.scale.as_ref().map(|s| s.spec_replicas_path.as_str()),
        Some(".spec.size")
    );
    assert!(info.schema.is_some());
    assert!(v1.supports_field("spec.color"));
    assert!(r.lookup("example.com", "v1alpha1", "widgets").is_none());
    // preferred version first
    let gv = r.group_versions();
    let ex = gv
        .iter()
        .find(|(g, _)| g == "example.com")
        .map(|(_, v)| v.clone());
    assert_eq!(ex, Some(vec!["v1".to_owned(), "v1beta1".to_owned()]));
    assert!(r.remove_crd("widgets.example.com"));
    assert!(r.lookup("example.com", "v1", "widgets").is_none());
    assert!(!r.remove_crd("widgets.example.com"));
}

#[test]
fn crd_errors() {
    let mut r = Registry::builtin();
    let mut bad = sample_crd();
    bad["spec"]["scope"] = json!("Galaxy");
    assert_eq!(r.apply_crd(&bad).err(), Some(CrdError::Field("spec.scope")));
    let mut clash = sample_crd();
    clash["spec"]["group"] = json!("apps");
    clash["spec"]["names"]["plural"] = json!("deployments");
    assert!(matches!(r.apply_crd(&clash), Err(CrdError::Conflict(_))));
    assert_eq!(
        r.apply_crd(&json!({})).err(),
        Some(CrdError::Field("metadata.name"))
    );
}

#[test]
fn version_priority_orders_like_kubernetes() {
    let mut v = vec!["v1alpha1", "foo", "v1beta1", "v2", "v1", "v1beta2", "v10"];
    v.sort_by_key(|s| std::cmp::Reverse(version_priority(s)));
    assert_eq!(
        v,
        vec!["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
    );
}

#[test]
fn group_versions_core_first() {
    let r = Registry::builtin();
    let gv = r.group_versions();
    assert_eq!(gv.first().map(|(g, _)| g.as_str()), Some(""));
    assert!(
        gv.iter()
            .any(|(g, v)| g == "autoscaling" && v == &vec!["v2".to_owned(), "v1".to_owned()]),
        "autoscaling serves v2 (preferred, stored) and v1 (converted)"
    );
    assert_eq!(
        r.lookup("apps", "v1", "deployments")
            .map(|d| d.qualified_resource()),
        Some("deployments.apps".into())
    );
    assert_eq!(
        r.lookup("", "v1", "pods").map(|d| d.key_prefix()),
        Some("/registry/core/pods/".into())
    );
}

#[test]
fn field_selector_parsing_and_matching() {
    let r = Registry::builtin();
    let Some(pods) = r.lookup("", "v1", "pods").cloned() else {
        panic!("pods")
    };
    use store::Requirement::*;
    let ok: &[(&str, Vec<store::Requirement>)] = &[
        ("", vec![]),
        (
            "spec.nodeName=n1",
            vec![Equals("spec.nodeName".into(), "n1".into())],
        ),
        (
            "status.phase!=Running,metadata.name==a",
            vec![
                NotEquals("status.phase".into(), "Running".into()),
                Equals("metadata.name".into(), "a".into()),
            ],
        ),
        (
            "metadata.name=a\\,b",
            vec![Equals("metadata.name".into(), "a,b".into())],
        ),
        (
            "spec.nodeName=",
            vec![Equals("spec.nodeName".into(), "".into())],
        ),
    ];
    for (sel, want) in ok {
        assert_eq!(parse_field_selector(&pods, sel).as_ref(), Ok(want), "{sel}");
    }
    assert_eq!(
        parse_field_selector(&pods, "spec.foo=x"),
        Err(FieldSelectorError::Unsupported("spec.foo".into()))
    );
    assert_eq!(
        parse_field_selector(&pods, "spec.foo=x")
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("field label not supported: spec.foo")
    );
    assert!(matches!(
        parse_field_selector(&pods, "nonsense"),
        Err(FieldSelectorError::Syntax { .. })
    ));
    let pod = json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}});
    let reqs =
        parse_field_selector(&pods, "spec.nodeName=n1,status.phase!=Running").unwrap_or_default();
    assert!(matches_fields(&pods, &pod, &reqs));
    let reqs = parse_field_selector(&pods, "spec.nodeName=n2").unwrap_or_default();
    assert!(!matches_fields(&pods, &pod, &reqs));
    let unscheduled = parse_field_selector(&pods, "spec.nodeName=").unwrap_or_default();
    assert!(matches_fields(
        &pods,
        &json!({"metadata": {"name": "b"}}),
        &unscheduled
    ));
}

#[test]
fn scale_subresource() {
    let r = Registry::builtin();
    let Some(dep) = r.lookup("apps", "v1", "deployments").cloned() else {
        panic!("deployments")
    };
    let mut d = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "5", "labels": {"x": "y"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2}});
    assert_eq!(
        scale_of(&dep, &d),
        Ok(json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "5"},
        "spec": {"replicas": 3}, "status": {"replicas": 2, "selector": "app=web"}}))
    );
    assert_eq!(
        apply_scale(&dep, &mut d, &json!({"spec": {"replicas": 5}})),
        Ok(())
    );
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        apply_scale(&dep, &mut d, &json!({"spec": {"replicas": -1}})),
        Err(ScaleError::BadReplicas(-1))
    );
    let Some(rc) = r.lookup("", "v1", "replicationcontrollers").cloned() else {
        panic!("rc")
    };
    let s = scale_of(
        &rc,
        &json!({"metadata": {"name": "r"}, "spec": {"selector": {"b": "2", "a": "1"}}}),
    )
    .unwrap_or_default();
    assert_eq!(s["status"]["selector"], "a=1,b=2");
    assert_eq!(s["spec"]["replicas"], 1);
    let Some(ds) = r.lookup("apps", "v1", "daemonsets").cloned() else {
        panic!("ds")
    };
    assert_eq!(scale_of(&ds, &json!({})), Err(ScaleError::NoScale));

    let mut reg = Registry::builtin();
    let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true,
            "subresources": {"scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size", "labelSelectorPath": ".status.sel"}}}]}});
    assert!(reg.apply_crd(&crd).is_ok());
    let Some(w) = reg.lookup("example.com", "v1", "widgets").cloned() else {
        panic!("widgets")
    };
    let mut obj = json!({"metadata": {"name": "w"}, "status": {"size": 1, "sel": "app=w"}});
    let s = scale_of(&w, &obj).unwrap_or_default();
    assert_eq!(
        (
            s["spec"]["replicas"].clone(),
            s["status"]["replicas"].clone(),
            s["status"]["selector"].clone()
        ),
        (json!(0), json!(1), json!("app=w"))
    );
    assert_eq!(
        apply_scale(&w, &mut obj, &json!({"spec": {"replicas": 4}})),
        Ok(())
    );
    assert_eq!(obj["spec"]["size"], 4);
}

#[test]
fn index_into_store_value() {
    let r = Registry::builtin();
    let Some(pods) = r.lookup("", "v1", "pods").cloned() else {
        panic!("pods")
    };
    let idx = extract_index(
        &pods,
        &json!({"metadata": {"name": "p", "namespace": "n", "uid": "u"}, "spec": {"nodeName": "x"}}),
    );
    let v = idx.into_object_value(
        bytes::Bytes::from_static(b"{}"),
        store::ContentType::Json,
        None,
    );
    assert_eq!(
        (
            v.name.as_str(),
            v.namespace.as_str(),
            v.kind.as_str(),
            v.uid.as_str()
        ),
        ("p", "n", "Pod", "u")
    );
    assert!(
        v.fields
            .contains(&("spec.nodeName".to_owned(), "x".to_owned()))
    );
}
