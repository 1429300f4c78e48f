use chrono::TimeZone;
use serde_json::json;

use super::*;
use crate::registry::Registry;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 10, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn def(group: &str, version: &str, plural: &str) -> ResourceDef {
    Registry::builtin()
        .lookup(group, version, plural)
        .map(|d| (**d).clone())
        .unwrap_or_else(|| panic!("{plural}"))
}

fn names(def: &ResourceDef) -> Vec<(String, i64)> {
    column_definitions(def)
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_owned(),
                c["priority"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

#[test]
fn human_duration_matches_upstream() {
    let cases = [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (5, "5s"),
        (119, "119s"),
        (120, "2m"),
        (182, "3m2s"),
        (599, "9m59s"),
        (600, "10m"),
        (3600, "60m"),
        (10799, "179m"),
        (10800, "3h"),
        (3 * 3600 + 60 * 5, "3h5m"),
        (8 * 3600, "8h"),
        (47 * 3600 + 59, "47h"),
        (48 * 3600, "2d"),
        (2 * 86400 + 3 * 3600, "2d3h"),
        (8 * 86400, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (731 * 86400, "2y1d"),
        (9 * 365 * 86400, "9y"),
    ];
    for (secs, want) in cases {
        assert_eq!(human_duration(secs), want, "{secs}s");
    }
    assert_eq!(age(Some(&json!("2025-01-10T11:00:00Z")), now()), "60m");
    assert_eq!(age(None, now()), "<unknown>");
    assert_eq!(age(Some(&json!("garbage")), now()), "<unknown>");
}

#[test]
#[allow(clippy::type_complexity)]
fn column_sets_per_kind() {
    let cases: &[(&str, &str, &str, &[(&str, i64)])] = &[
        (
            "",
            "v1",
            "pods",
            &[
                ("Name", 0),
                ("Ready", 0),
                ("Status", 0),
                ("Restarts", 0),
                ("Age", 0),
                ("IP", 1),
                ("Node", 1),
                ("Nominated Node", 1),
                ("Readiness Gates", 1),
            ],
        ),
        (
            "apps",
            "v1",
            "deployments",
            &[
                ("Name", 0),
                ("Ready", 0),
                ("Up-to-date", 0),
                ("Available", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1),
            ],
        ),
        (
            "",
            "v1",
            "services",
            &[
                ("Name", 0),
                ("Type", 0),
                ("Cluster-IP", 0),
                ("External-IP", 0),
                ("Port(s)", 0),
                ("Age", 0),
                ("Selector", 1),
            ],
        ),
        (
            "",
            "v1",
            "nodes",
            &[
                ("Name", 0),
                ("Status", 0),
                ("Roles", 0),
                ("Age", 0),
                ("Version", 0),
                ("Internal-IP", 1),
                ("External-IP", 1),
                ("OS-Image", 1),
                ("Kernel-Version", 1),
                ("Container-Runtime", 1),
            ],
        ),
        (
            "",
            "v1",
            "configmaps",
            &[("Name", 0), ("Data", 0), ("Age", 0)],
        ),
        (
            "",
            "v1",
            "secrets",
            &[("Name", 0), ("Type", 0), ("Data", 0), ("Age", 0)],
        ),
        (
            "",
            "v1",
            "namespaces",
            &[("Name", 0), ("Status", 0), ("Age", 0)],
        ),
        ("", "v1", "limitranges", &[("Name", 0), ("Created At", 0)]),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            &[("Name", 0), ("Created At", 0)],
        ),
        (
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            &[("Name", 0), ("Created At", 0)],
        ),
        (
            "batch",
            "v1",
            "jobs",
            &[
                ("Name", 0),
                ("Status", 0),
                ("Completions", 0),
                ("Duration", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1),
            ],
        ),
    ];
    for (g, v, plural, want) in cases {
        let got = names(&def(g, v, plural));
        let want: Vec<(String, i64)> = want.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect();
        assert_eq!(got, want, "{plural}");
    }
    // every built-in has a Name column with format "name" and cells matching the columns
    for d in Registry::builtin().resources() {
        let cols = column_definitions(d);
        assert!(cols.iter().any(|c| c["format"] == "name"), "{}", d.plural);
        let cells = row_cells(
            d,
            &json!({"metadata": {"name": "x", "creationTimestamp": "2025-01-10T11:59:00Z"}}),
            now(),
        );
        assert_eq!(cells.len(), cols.len(), "{}", d.plural);
    }
}

#[test]
fn pod_rows() {
    let d = def("", "v1", "pods");
    let running = json!({"metadata": {"name": "web-0", "namespace": "default", "creationTimestamp": "2025-01-10T11:00:00Z", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.244.0.5"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
    assert_eq!(
        row_cells(&d, &running, now()),
        vec![
            json!("web-0"),
            json!("1/1"),
            json!("Running"),
            json!("0"),
            json!("60m"),
            json!("10.244.0.5"),
            json!("node-1"),
            json!("<none>"),
            json!("<none>")
        ]
    );

    let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {"phase": "Pending"}});
    let cells = row_cells(&d, &pending, now());
    assert_eq!(cells[1], "0/2");
    assert_eq!(cells[2], "Pending");
    assert_eq!(cells[4], "<unknown>");
    assert_eq!(cells[5], "<none>");

    let crash = json!({"metadata": {"name": "c"}, "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "a", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2025-01-10T11:58:00Z"}}}]}});
    let cells = row_cells(&d, &crash, now());
    assert_eq!(cells[2], "CrashLoopBackOff");
    assert_eq!(cells[3], "4 (2m ago)");

    let init = json!({"metadata": {"name": "i"}, "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
        "status": {"phase": "Pending", "initContainerStatuses": [
            {"name": "i1", "state": {"terminated": {"exitCode": 0}}}, {"name": "i2", "state": {"running": {}}}]}});
    assert_eq!(row_cells(&d, &init, now())[2], "Init:1/2");

    let deleting = json!({"metadata": {"name": "t", "deletionTimestamp": "2025-01-10T11:59:00Z"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running"}});
    assert_eq!(row_cells(&d, &deleting, now())[2], "Terminating");

    let completed = json!({"metadata": {"name": "d"}, "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}});
    assert_eq!(row_cells(&d, &completed, now())[2], "Completed");

    let gated = json!({"metadata": {"name": "g"}, "spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "x"}, {"conditionType": "y"}]},
        "status": {"phase": "Pending", "conditions": [{"type": "x", "status": "True"}]}});
    assert_eq!(row_cells(&d, &gated, now())[8], "1/2");
}

#[test]
fn workload_rows() {
    let deploy = json!({"metadata": {"name": "web", "creationTimestamp": "2025-01-10T11:59:55Z"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]},
            "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "side", "image": "busybox"}]}}},
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
    assert_eq!(
        row_cells(&def("apps", "v1", "deployments"), &deploy, now()),
        vec![
            json!("web"),
            json!("2/3"),
            json!(3),
            json!(2),
            json!("5s"),
            json!("nginx,side"),
            json!("nginx:1.27,busybox"),
            json!("app=web,tier in (a,b)")
        ]
    );
    let rs = row_cells(&def("apps", "v1", "replicasets"), &deploy, now());
    assert_eq!(&rs[1..4], &[json!(3), json!(0), json!(2)]);
    let job = json!({"metadata": {"name": "j"}, "spec": {"completions": 3},
        "status": {"succeeded": 3, "startTime": "2025-01-10T11:00:00Z", "completionTime": "2025-01-10T11:00:42Z",
            "conditions": [{"type": "Complete", "status": "True"}]}});
    let cells = row_cells(&def("batch", "v1", "jobs"), &job, now());
    assert_eq!(
        &cells[1..4],
        &[json!("Complete"), json!("3/3"), json!("42s")]
    );
    let running = json!({"metadata": {"name": "j"}, "spec": {"parallelism": 2}, "status": {"startTime": "2025-01-10T11:57:00Z"}});
    let cells = row_cells(&def("batch", "v1", "jobs"), &running, now());
    assert_eq!(
        &cells[1..4],
        &[json!("Running"), json!("0/1 of 2"), json!("3m")]
    );
    let cj = json!({"metadata": {"name": "cj"}, "spec": {"schedule": "*/5 * * * *", "suspend": false, "jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}});
    let cells = row_cells(&def("batch", "v1", "cronjobs"), &cj, now());
    assert_eq!(
        &cells[1..6],
        &[
            json!("*/5 * * * *"),
            json!("<none>"),
            json!("False"),
            json!(0),
            json!("<none>")
        ]
    );
}

#[test]
fn service_node_event_rows() {
    let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
        "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}], "selector": {"app": "web"}}});
    let cells = row_cells(&def("", "v1", "services"), &svc, now());
    assert_eq!(
        &cells[1..5],
        &[
            json!("NodePort"),
            json!("10.96.0.10"),
            json!("<none>"),
            json!("80:30080/TCP,53/UDP")
        ]
    );
    assert_eq!(cells[6], "app=web");
    let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.1", "ports": []}});
    assert_eq!(
        row_cells(&def("", "v1", "services"), &lb, now())[3],
        "<pending>"
    );

    let node = json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/worker": ""}},
        "spec": {"unschedulable": true},
        "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
            "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "kubeshard://0.1"}}});
    let cells = row_cells(&def("", "v1", "nodes"), &node, now());
    assert_eq!(
        &cells[1..3],
        &[
            json!("Ready,SchedulingDisabled"),
            json!("control-plane,worker")
        ]
    );
    assert_eq!(
        &cells[4..],
        &[
            json!("v1.33.0"),
            json!("192.0.2.1"),
            json!("<none>"),
            json!("Debian"),
            json!("6.1"),
            json!("kubeshard://0.1")
        ]
    );

    let ev = json!({"metadata": {"name": "web-0.1"}, "involvedObject": {"kind": "Pod", "name": "web-0", "fieldPath": "spec.containers{web}"},
        "reason": "Pulled", "message": " pulled \n", "type": "Normal", "source": {"component": "kubelet", "host": "n1"},
        "firstTimestamp": "2025-01-10T11:00:00Z", "lastTimestamp": "2025-01-10T11:59:30Z", "count": 3});
    assert_eq!(
        row_cells(&def("", "v1", "events"), &ev, now()),
        vec![
            json!("30s"),
            json!("Normal"),
            json!("Pulled"),
            json!("pod/web-0"),
            json!("spec.containers{web}"),
            json!("kubelet, n1"),
            json!("pulled"),
            json!("60m"),
            json!(3),
            json!("web-0.1")
        ]
    );
    let ev1 = json!({"metadata": {"name": "e"}, "regarding": {"kind": "Node", "name": "n1"}, "note": "hi", "reason": "R", "type": "Warning",
        "eventTime": "2025-01-10T11:59:00.000000Z", "reportingController": "ctl"});
    let cells = row_cells(&def("events.k8s.io", "v1", "events"), &ev1, now());
    assert_eq!(
        &cells[..7],
        &[
            json!("60s"),
            json!("Warning"),
            json!("R"),
            json!("node/n1"),
            json!(""),
            json!("ctl"),
            json!("hi")
        ]
    );
    assert_eq!(cells[8], 1);
}

#[test]
fn misc_rows() {
    let sec = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "", "b": ""}});
    assert_eq!(
        row_cells(&def("", "v1", "secrets"), &sec, now())[1..3],
        [json!("Opaque"), json!(2)]
    );
    let cm = json!({"metadata": {"name": "c"}, "data": {"a": "1"}, "binaryData": {"b": ""}});
    assert_eq!(row_cells(&def("", "v1", "configmaps"), &cm, now())[1], 2);
    let rq = json!({"metadata": {"name": "q"}, "status": {"hard": {"pods": "10", "limits.cpu": "2", "requests.cpu": "1"}, "used": {"pods": "3"}}});
    assert_eq!(
        row_cells(&def("", "v1", "resourcequotas"), &rq, now())[1..3],
        [
            json!("pods: 3/10, requests.cpu: 0/1"),
            json!("limits.cpu: 0/2")
        ]
    );
    let rb = json!({"metadata": {"name": "rb"}, "roleRef": {"kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "default", "namespace": "kube-system"}]});
    let cells = row_cells(
        &def("rbac.authorization.k8s.io", "v1", "rolebindings"),
        &rb,
        now(),
    );
    assert_eq!(cells[1], "ClusterRole/admin");
    assert_eq!(
        &cells[3..],
        &[json!("alice"), json!(""), json!("kube-system/default")]
    );
    let ep = json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]});
    assert_eq!(
        row_cells(&def("", "v1", "endpoints"), &ep, now())[1],
        "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more..."
    );
    let hpa = json!({"metadata": {"name": "h"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}});
    let cells = row_cells(
        &def("autoscaling", "v2", "horizontalpodautoscalers"),
        &hpa,
        now(),
    );
    assert_eq!(
        &cells[1..6],
        &[
            json!("Deployment/web"),
            json!("cpu: <unknown>/80%"),
            json!("<unset>"),
            json!(5),
            json!(0)
        ]
    );
    let lim = json!({"metadata": {"name": "l", "creationTimestamp": "2025-01-01T00:00:00Z"}});
    assert_eq!(
        row_cells(&def("", "v1", "limitranges"), &lim, now())[1],
        "2025-01-01T00:00:00Z"
    );
}

#[test]
fn table_shape_and_include_object() {
    let d = def("", "v1", "configmaps");
    let objs = vec![
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "a", "namespace": "n", "resourceVersion": "7", "labels": {"x": "y"}}, "data": {"k": "v"}}),
    ];
    let opts = TableOptions {
        list_meta: Some(json!({"resourceVersion": "9", "continue": ""})),
        ..Default::default()
    };
    let t = to_table(&d, &objs, &opts, now());
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(t["metadata"]["resourceVersion"], "9");
    assert_eq!(t["columnDefinitions"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        t["rows"][0]["object"],
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": "a", "namespace": "n", "resourceVersion": "7", "labels": {"x": "y"}}})
    );
    let full = to_table(
        &d,
        &objs,
        &TableOptions {
            include_object: IncludeObject::Object,
            ..Default::default()
        },
        now(),
    );
    assert_eq!(full["rows"][0]["object"], objs[0]);
    assert_eq!(full["metadata"]["resourceVersion"], "7");
    let none = to_table(
        &d,
        &objs,
        &TableOptions {
            include_object: IncludeObject::None,
            no_headers: true,
            list_meta: None,
        },
        now(),
    );
    assert!(none["rows"][0].get("object").is_none());
    assert_eq!(none["columnDefinitions"], json!([]));
    assert_eq!(IncludeObject::parse(None), Ok(IncludeObject::Metadata));
    assert_eq!(
        IncludeObject::parse(Some("Object")),
        Ok(IncludeObject::Object)
    );
    assert_eq!(IncludeObject::parse(Some("None")), Ok(IncludeObject::None));
    assert!(IncludeObject::parse(Some("All")).is_err());
}

#[test]
fn crd_printer_columns() {
    let mut r = Registry::builtin();
    let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "additionalPrinterColumns": [
            {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
            {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
            {"name": "Image", "type": "string", "priority": 1, "jsonPath": ".spec.containers[0].image"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Missing", "type": "string", "jsonPath": ".spec.nope"}]},
          {"name": "v2", "served": true, "storage": false}]}});
    assert!(r.apply_crd(&crd).is_ok());
    let Some(v1) = r.lookup("example.com", "v1", "widgets").cloned() else {
        panic!("v1")
    };
    let cols: Vec<String> = column_definitions(&v1)
        .iter()
        .map(|c| c["name"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        cols,
        vec!["Name", "Size", "Ready", "Image", "Age", "Missing"]
    );
    assert_eq!(column_definitions(&v1)[3]["priority"], 1);
    let obj = json!({"metadata": {"name": "w1", "creationTimestamp": "2025-01-10T11:57:58Z"}, "spec": {"size": 3, "containers": [{"image": "nginx"}]},
        "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}});
    assert_eq!(
        row_cells(&v1, &obj, now()),
        vec![
            json!("w1"),
            json!(3),
            json!("True"),
            json!("nginx"),
            json!("2m2s"),
            Value::Null
        ]
    );
    let Some(v2) = r.lookup("example.com", "v2", "widgets").cloned() else {
        panic!("v2")
    };
    let cols: Vec<String> = column_definitions(&v2)
        .iter()
        .map(|c| c["name"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(cols, vec!["Name", "Age"]);
    assert_eq!(
        row_cells(&v2, &obj, now()),
        vec![json!("w1"), json!("2m2s")]
    );
}

#[test]
fn jsonpath_subset() {
    let v = json!({"a": {"b.c": 1, "list": [{"n": "x", "v": 1}, {"n": "y", "v": 2}]}});
    let cases: &[(&str, Vec<Value>)] = &[
        (".a.list[0].n", vec![json!("x")]),
        ("{.a.list[-1].n}", vec![json!("y")]),
        (".a.list[*].v", vec![json!(1), json!(2)]),
        (".a['b.c']", vec![json!(1)]),
        (".a.list[?(@.n=='y')].v", vec![json!(2)]),
        (".a.list[?(@.v==1)].n", vec![json!("x")]),
        (".a.list[?(@.n!=\"y\")].n", vec![json!("x")]),
        (".a.missing", vec![]),
        ("a.list[5]", vec![]),
    ];
    for (p, want) in cases {
        let parsed = JsonPath::parse(p);
        let Ok(parsed) = parsed else {
            panic!("{p}: {parsed:?}")
        };
        let got: Vec<Value> = parsed.eval(&v).into_iter().cloned().collect();
        assert_eq!(&got, want, "{p}");
    }
    assert!(JsonPath::parse(".a[").is_err());
    assert!(JsonPath::parse("..a").is_err());
}

#[test]
fn table_negotiation() {
    let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    assert!(wants_table(Some(kubectl)));
    assert!(wants_table(Some(
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io"
    )));
    assert!(!wants_table(Some("application/json")));
    assert!(!wants_table(Some("application/json, */*")));
    assert!(!wants_table(None));
    assert!(!wants_table(Some(
        "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io"
    )));
    assert!(!wants_table(Some(
        "application/json,application/json;as=Table;v=v1;g=meta.k8s.io"
    )));
    assert!(!wants_table(Some(
        "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
    )));
}
