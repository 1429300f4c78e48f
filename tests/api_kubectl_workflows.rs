//! The real kubectl 1.27, 1.30 and 1.33 through everyday workflows against `kubeshard
//! server`: describe (pods, deployments, nodes, services, with their events), annotate,
//! edit (non-interactive editor), replace, apply (twice, changed, `--server-side`), delete
//! with `--cascade`, and the get output formats; outputs are checked, not just exit codes.

#[path = "support/api_server.rs"]
mod support;

use std::process::{Command, Stdio};

use support::{KubectlStream, TestServer, kubectl_path};

fn deploy(image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{tier: front}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: nginx
        image: {image}
        ports:
        - containerPort: 80
"
    )
}

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {kubernetes.io/hostname: node-a, node-role.kubernetes.io/worker: ''}
status:
  addresses:
  - {type: InternalIP, address: 10.1.2.3}
  nodeInfo:
    kubeletVersion: v1.33.1
    osImage: Debian GNU/Linux 13
    kernelVersion: 6.1.0
    containerRuntimeVersion: kubeshard://0.1
    architecture: amd64
    operatingSystem: linux
    bootID: ''
    machineID: ''
    systemUUID: ''
    kubeProxyVersion: ''
";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
";

/// Runs kubectl with an editor command (`KUBE_EDITOR`) that rewrites the file it is given.
fn edit(s: &TestServer, k: u32, editor: &str, args: &[&str]) -> std::process::Output {
    Command::new(kubectl_path(k))
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .arg("--cache-dir")
        .arg(s.dir.join(format!("kubectl-cache-{k}")))
        .arg("--request-timeout=30s")
        .args(args)
        .env("KUBE_EDITOR", editor)
        .env_remove("EDITOR")
        .stdin(Stdio::null())
        .output()
        .expect("kubectl edit")
}

fn json(s: &TestServer, k: u32, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&s.ok(k, &a)).expect("kubectl -o json")
}

fn line_with<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

/// `Key:   value` lines of describe output: the value after the label.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    line_with(text, &format!("{label}:"))
        .trim_start()
        .trim_start_matches(&format!("{label}:"))
        .trim()
}

fn workflows(k: u32) {
    if !kubectl_path(k).exists() {
        eprintln!("skipping: kubectl 1.{k} is not installed");
        return;
    }
    let s = TestServer::start(&[]);
    // Default validation everywhere: kubectl 1.27 reads the protobuf OpenAPI v2 document,
    // newer ones v3.
    let validate = "--validate=strict";
    let ns = "wf";
    s.ok(k, &["create", "namespace", ns]);

    // apply: created, unchanged, configured, then server-side.
    let apply = |doc: &str, extra: &[&str]| {
        let mut a = vec!["apply", validate, "-n", ns, "-f", "-"];
        a.extend(extra);
        s.ok_stdin(k, &a, doc).trim().to_string()
    };
    assert_eq!(
        apply(&deploy("nginx:1.27", 2), &[]),
        "deployment.apps/web created"
    );
    assert_eq!(
        apply(&deploy("nginx:1.27", 2), &[]),
        "deployment.apps/web unchanged"
    );
    assert_eq!(
        apply(&deploy("nginx:1.28", 2), &[]),
        "deployment.apps/web configured"
    );
    assert_eq!(
        apply(
            &deploy("nginx:1.28", 3),
            &["--server-side", "--force-conflicts"]
        ),
        "deployment.apps/web serverside-applied"
    );
    let d = json(&s, k, &["get", "deployment", "web", "-n", ns]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.28"
    );
    // get -o json strips managedFields; jsonpath shows that SSA recorded its manager.
    assert!(d["metadata"].get("managedFields").is_none(), "{d}");
    let managers = s.ok(
        k,
        &[
            "get",
            "deployment",
            "web",
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    );
    assert!(
        managers.split(' ').any(|m| m == "kubectl"),
        "managers: {managers}"
    );
    // Server-side apply without force over a field another manager owns: conflict.
    let out = s.kubectl_stdin(
        k,
        &[
            "apply",
            validate,
            "--server-side",
            "--field-manager=other",
            "-n",
            ns,
            "-f",
            "-",
        ],
        Some(&deploy("nginx:1.29", 4)),
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("conflict"), "{e}");

    // get formats.
    let wide = s.ok(k, &["get", "deployments", "-n", ns, "-o", "wide"]);
    let header = wide.lines().next().unwrap_or("");
    for col in [
        "NAME",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "AGE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
    ] {
        assert!(header.contains(col), "{wide}");
    }
    let row = line_with(&wide, "web");
    assert!(
        row.contains("0/3") && row.contains("nginx:1.28") && row.contains("app=web"),
        "{wide}"
    );
    let y = s.ok(k, &["get", "deployment", "web", "-n", ns, "-o", "yaml"]);
    assert!(
        y.contains("kind: Deployment")
            && y.contains("replicas: 3")
            && y.contains("image: nginx:1.28"),
        "{y}"
    );
    let labels = s.ok(k, &["get", "deployments", "-n", ns, "--show-labels"]);
    assert!(
        line_with(&labels, "web").ends_with("tier=front"),
        "{labels}"
    );
    let jp = s.ok(
        k,
        &[
            "get",
            "deployments",
            "-n",
            ns,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.replicas}{\"\\n\"}{end}",
        ],
    );
    assert_eq!(jp, "web=3\n");
    let all = s.ok(k, &["get", "namespaces", "-A", "-o", "name"]);
    assert!(all.lines().any(|l| l == "namespace/wf"), "{all}");

    // A pod, a node, a service, events about them; describe each.
    s.ok(
        k,
        &[
            "run",
            "p1",
            "-n",
            ns,
            "--image=busybox:1.36",
            "--labels=app=web",
            "--",
            "sleep",
            "3600",
        ],
    );
    // -A with -o wide and --show-labels: NAMESPACE and LABELS come from row.object.
    let pods = s.ok(k, &["get", "pods", "-A", "-o", "wide", "--show-labels"]);
    let header = pods.lines().next().unwrap_or("");
    assert!(
        header.starts_with("NAMESPACE")
            && header.contains("NOMINATED NODE")
            && header.ends_with("LABELS"),
        "{pods}"
    );
    let row = line_with(&pods, ns);
    assert!(
        row.contains("p1") && row.contains("Pending") && row.ends_with("app=web"),
        "{pods}"
    );
    let pod = json(&s, k, &["get", "pod", "p1", "-n", ns]);
    let pod_uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
    s.ok_stdin(k, &["create", validate, "-f", "-"], NODE);
    s.ok_stdin(k, &["create", validate, "-n", ns, "-f", "-"], SERVICE);
    let event = format!(
        "apiVersion: v1
kind: Event
metadata: {{name: p1.scheduled, namespace: {ns}}}
involvedObject: {{kind: Pod, name: p1, namespace: {ns}, uid: {pod_uid}, apiVersion: v1}}
reason: Scheduled
message: Successfully assigned {ns}/p1 to node-a
type: Normal
source: {{component: default-scheduler}}
count: 1
firstTimestamp: '2026-01-01T00:00:00Z'
lastTimestamp: '2026-01-01T00:00:00Z'
"
    );
    s.ok_stdin(k, &["create", validate, "-f", "-"], &event);
    // An event about another pod must not show up in p1's description.
    let other = event
        .replace("p1.scheduled", "p2.scheduled")
        .replace("name: p1,", "name: p2,")
        .replace("uid: ", "uid: x")
        .replace("Successfully assigned", "Other pod");
    s.ok_stdin(k, &["create", validate, "-f", "-"], &other);

    let dp = s.ok(k, &["describe", "pod", "p1", "-n", ns]);
    assert_eq!(field(&dp, "Name"), "p1", "{dp}");
    assert_eq!(field(&dp, "Namespace"), ns, "{dp}");
    assert_eq!(field(&dp, "Status"), "Pending", "{dp}");
    assert!(field(&dp, "Labels").contains("app=web"), "{dp}");
    assert_eq!(field(&dp, "Image"), "busybox:1.36", "{dp}");
    let ev = line_with(&dp, "Normal");
    assert!(
        ev.contains("Scheduled")
            && ev.contains("default-scheduler")
            && ev.contains("Successfully assigned wf/p1 to node-a"),
        "{dp}"
    );
    assert!(!dp.contains("Other pod"), "{dp}");

    let dd = s.ok(k, &["describe", "deployment", "web", "-n", ns]);
    assert_eq!(field(&dd, "Name"), "web", "{dd}");
    assert_eq!(field(&dd, "Selector"), "app=web", "{dd}");
    assert!(field(&dd, "Replicas").starts_with("3 desired"), "{dd}");
    assert_eq!(field(&dd, "StrategyType"), "RollingUpdate", "{dd}");
    assert_eq!(field(&dd, "Image"), "nginx:1.28", "{dd}");
    assert!(dd.contains("Events:"), "{dd}");

    let dn = s.ok(k, &["describe", "node", "node-a"]);
    assert_eq!(field(&dn, "Name"), "node-a", "{dn}");
    assert_eq!(field(&dn, "InternalIP"), "10.1.2.3", "{dn}");
    assert_eq!(field(&dn, "Kubelet Version"), "v1.33.1", "{dn}");
    assert!(dn.contains("Non-terminated Pods:"), "{dn}");

    let ds = s.ok(k, &["describe", "service", "web", "-n", ns]);
    assert_eq!(field(&ds, "Name"), "web", "{ds}");
    assert_eq!(field(&ds, "Selector"), "app=web", "{ds}");
    assert_eq!(field(&ds, "Type"), "ClusterIP", "{ds}");
    assert!(field(&ds, "Port").starts_with("http  80/TCP"), "{ds}");
    assert_eq!(field(&ds, "TargetPort"), "8080/TCP", "{ds}");
    assert_eq!(field(&ds, "IP Families"), "IPv4", "{ds}");
    assert_eq!(field(&ds, "IP Family Policy"), "SingleStack", "{ds}");
    // In the service range 10.96.0.0/12.
    let ip: Vec<u8> = field(&ds, "IP")
        .split('.')
        .filter_map(|o| o.parse().ok())
        .collect();
    assert!(
        ip.len() == 4 && ip[0] == 10 && (96..=111).contains(&ip[1]),
        "{ds}"
    );

    // A watch (server-side Table events) running while c1 is created and changed.
    let watch = KubectlStream::start(
        &s,
        k,
        &["get", "configmaps", "-n", ns, "-w", "--output-watch-events"],
    );
    std::thread::sleep(std::time::Duration::from_secs(1));

    // annotate.
    s.ok(
        k,
        &["create", "configmap", "c1", "-n", ns, "--from-literal=a=b"],
    );
    // kubectl 1.27 prints the verb unconjugated (its own text, not the server's).
    let annotated = if k == 27 { "annotate" } else { "annotated" };
    assert_eq!(
        s.ok(k, &["annotate", "configmap", "c1", "-n", ns, "note=hello"])
            .trim(),
        format!("configmap/c1 {annotated}")
    );
    let e = s.err(k, &["annotate", "configmap", "c1", "-n", ns, "note=again"]);
    assert!(e.contains("--overwrite is false"), "{e}");
    s.ok(
        k,
        &[
            "annotate",
            "configmap",
            "c1",
            "-n",
            ns,
            "--overwrite",
            "note=again",
        ],
    );
    assert_eq!(
        s.ok(
            k,
            &[
                "get",
                "cm",
                "c1",
                "-n",
                ns,
                "-o",
                "jsonpath={.metadata.annotations.note}"
            ]
        ),
        "again"
    );
    s.ok(k, &["annotate", "configmap", "c1", "-n", ns, "note-"]);
    let c1 = json(&s, k, &["get", "cm", "c1", "-n", ns]);
    assert!(c1["metadata"]["annotations"].get("note").is_none(), "{c1}");

    // edit with a non-interactive editor.
    let out = edit(
        &s,
        k,
        "sed -i -e 's/^  a: b$/  a: edited/'",
        &["edit", validate, "configmap", "c1", "-n", ns],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configmap/c1 edited"
    );
    assert_eq!(
        s.ok(
            k,
            &["get", "cm", "c1", "-n", ns, "-o", "jsonpath={.data.a}"]
        ),
        "edited"
    );
    // An editor that changes nothing: no PATCH, "Edit cancelled".
    let out = edit(
        &s,
        k,
        "true",
        &["edit", validate, "configmap", "c1", "-n", ns],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Edit cancelled, no changes made."),
        "{out:?}"
    );
    // edit of a deployment goes through the strategic patch and keeps the containers.
    let out = edit(
        &s,
        k,
        "sed -i -e 's/replicas: 3/replicas: 1/'",
        &["edit", validate, "deployment", "web", "-n", ns],
    );
    assert!(out.status.success(), "{out:?}");
    let d = json(&s, k, &["get", "deployment", "web", "-n", ns]);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["name"],
        "nginx"
    );

    let events = watch.lines_with(" c1 ", 2, std::time::Duration::from_secs(20));
    drop(watch);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].starts_with("ADDED"), "{events:?}");
    assert!(events[1].starts_with("MODIFIED"), "{events:?}");

    // replace: with the current resourceVersion, then a stale one (409).
    let cur = s.ok(k, &["get", "cm", "c1", "-n", ns, "-o", "yaml"]);
    let rv = c1_rv(&s, k, ns);
    let replaced = cur.replace("a: edited", "a: replaced");
    assert_eq!(
        s.ok_stdin(k, &["replace", validate, "-f", "-"], &replaced)
            .trim(),
        "configmap/c1 replaced"
    );
    assert_ne!(c1_rv(&s, k, ns), rv);
    let out = s.kubectl_stdin(
        k,
        &["replace", validate, "-f", "-"],
        Some(&cur.replace("a: edited", "a: stale")),
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains(
            "Operation cannot be fulfilled on configmaps \"c1\": the object has been modified"
        ),
        "{e}"
    );
    assert_eq!(
        s.ok(
            k,
            &["get", "cm", "c1", "-n", ns, "-o", "jsonpath={.data.a}"]
        ),
        "replaced"
    );

    // delete --cascade: background deletes at once; foreground and orphan leave the object
    // with deletionTimestamp and the GC's finalizer (the cascade is the GC's job).
    for (name, cascade, finalizer) in [
        ("bg", "background", None),
        ("fg", "foreground", Some("foregroundDeletion")),
        ("orph", "orphan", Some("orphan")),
    ] {
        s.ok(k, &["create", "configmap", name, "-n", ns]);
        let out = s.ok(
            k,
            &[
                "delete",
                "configmap",
                name,
                "-n",
                ns,
                &format!("--cascade={cascade}"),
                "--wait=false",
            ],
        );
        assert_eq!(out.trim(), format!("configmap \"{name}\" deleted"));
        match finalizer {
            None => {
                let e = s.err(k, &["get", "cm", name, "-n", ns]);
                assert!(e.contains("NotFound"), "{e}");
            }
            Some(f) => {
                let o = json(&s, k, &["get", "cm", name, "-n", ns]);
                assert!(
                    o["metadata"]["deletionTimestamp"].is_string(),
                    "{cascade}: {o}"
                );
                assert_eq!(o["metadata"]["finalizers"], serde_json::json!([f]), "{o}");
                // What the GC does once the dependents are handled: drop the finalizer,
                // and the object goes.
                s.ok(
                    k,
                    &[
                        "patch",
                        "cm",
                        name,
                        "-n",
                        ns,
                        "--type=json",
                        "-p",
                        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
                    ],
                );
                let e = s.err(k, &["get", "cm", name, "-n", ns]);
                assert!(e.contains("NotFound"), "{cascade}: {e}");
            }
        }
    }
    // delete with the default cascade and --wait: returns once the object is gone.
    assert_eq!(
        s.ok(k, &["delete", "deployment", "web", "-n", ns]).trim(),
        "deployment.apps \"web\" deleted"
    );
    let left = s.ok(k, &["get", "all", "-n", ns, "-o", "name"]);
    assert!(
        left.lines().any(|l| l == "pod/p1") && !left.contains("deployment"),
        "{left}"
    );
}

fn c1_rv(s: &TestServer, k: u32, ns: &str) -> String {
    s.ok(
        k,
        &[
            "get",
            "cm",
            "c1",
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    )
}

#[test]
fn workflows_kubectl_1_27() {
    workflows(27);
}

#[test]
fn workflows_kubectl_1_30() {
    workflows(30);
}

#[test]
fn workflows_kubectl_1_33() {
    workflows(33);
}

fn hpa_v1(target_cpu: u32) -> String {
    format!(
        "apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata:
  name: h1
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}
  minReplicas: 1
  maxReplicas: 5
  targetCPUUtilizationPercentage: {target_cpu}
"
    )
}

/// Server-side apply records an `Apply` entry (a create included) in the version the
/// client spoke: an autoscaling/v1 HPA is stored as v2, but its manager's entry names
/// autoscaling/v1 and v1's field paths, and conflicts are reported in that version.
#[test]
fn server_side_apply_records_apply_entries_in_the_request_version() {
    let k = 33;
    if !kubectl_path(k).exists() {
        eprintln!("skipping: kubectl 1.{k} is not installed");
        return;
    }
    let s = TestServer::start(&[]);
    let ns = "ssa";
    s.ok(k, &["create", "namespace", ns]);
    let managed = |what: &str| {
        let out = s.ok(
            k,
            &["get", what, "-n", ns, "--show-managed-fields", "-o", "json"],
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["metadata"]["managedFields"].clone()
    };
    let apply = |doc: &str, extra: &[&str]| {
        let mut a = vec!["apply", "--server-side", "-n", ns, "-f", "-"];
        a.extend(extra);
        s.kubectl_stdin(k, &a, Some(doc))
    };

    // A create through apply is an Apply entry, not an Update.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\ndata: {a: '1'}\n";
    assert!(apply(cm, &[]).status.success());
    let m = managed("configmap/c1");
    assert_eq!(m.as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(m[0]["manager"], "kubectl", "{m}");
    assert_eq!(m[0]["operation"], "Apply", "{m}");
    assert_eq!(m[0]["apiVersion"], "v1", "{m}");
    assert!(m[0]["fieldsV1"]["f:data"]["f:a"].is_object(), "{m}");

    // An autoscaling/v1 HPA: created, then changed, through apply.
    assert!(apply(&hpa_v1(60), &[]).status.success());
    assert!(apply(&hpa_v1(70), &[]).status.success());
    let m = managed("horizontalpodautoscalers.v1.autoscaling/h1");
    assert_eq!(m.as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(m[0]["operation"], "Apply", "{m}");
    assert_eq!(m[0]["apiVersion"], "autoscaling/v1", "{m}");
    assert!(
        m[0]["fieldsV1"]["f:spec"]["f:targetCPUUtilizationPercentage"].is_object(),
        "{m}"
    );
    assert!(m[0]["fieldsV1"]["f:spec"].get("f:metrics").is_none(), "{m}");
    // Stored as v2, with the applied value.
    let v2 = s.ok(
        k,
        &[
            "get",
            "horizontalpodautoscalers.v2.autoscaling/h1",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.metrics[0].resource.target.averageUtilization}",
        ],
    );
    assert_eq!(v2.trim(), "70");

    // Another manager changing the same field conflicts, named in v1's terms.
    let out = apply(&hpa_v1(80), &["--field-manager=other"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("autoscaling/v1") && e.contains(".spec.targetCPUUtilizationPercentage"),
        "{e}"
    );
    // With force it takes the field over.
    assert!(
        apply(&hpa_v1(80), &["--field-manager=other", "--force-conflicts"])
            .status
            .success()
    );
    let m = managed("horizontalpodautoscalers.v1.autoscaling/h1");
    let owner_of_target = m
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["fieldsV1"]["f:spec"]["f:targetCPUUtilizationPercentage"].is_object())
        .map(|e| e["manager"].clone());
    assert_eq!(owner_of_target, Some(serde_json::json!("other")), "{m}");
}
