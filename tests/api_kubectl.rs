//! End-to-end sessions of the real kubectl (1.27, 1.30, 1.33) against `kubeshard server`.

#[path = "support/api_server.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{TestServer, kubectl_path};

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: IMAGE
";

fn have_kubectl(minor: u32) -> bool {
    let p = kubectl_path(minor);
    if !p.exists() {
        eprintln!("skipping: {} is not installed", p.display());
    }
    p.exists()
}

#[test]
fn kubectl_1_33_session() {
    if !have_kubectl(33) {
        return;
    }
    let s = TestServer::start(&[]);
    let k = 33;
    let v = s.ok(k, &["version"]);
    assert!(v.contains("Server Version: v1.33."), "{v}");

    let ns = s.ok(k, &["get", "namespaces"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            ns.lines().any(|l| l.starts_with(n) && l.contains("Active")),
            "{ns}"
        );
    }

    // Typed-client creates send protobuf bodies on 1.33.
    assert_eq!(
        s.ok(k, &["create", "namespace", "demo"]).trim(),
        "namespace/demo created"
    );
    assert_eq!(
        s.ok(
            k,
            &[
                "create",
                "configmap",
                "c1",
                "-n",
                "demo",
                "--from-literal=a=b"
            ]
        )
        .trim(),
        "configmap/c1 created"
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(k, &["get", "configmap", "c1", "-n", "demo", "-o", "json"]))
            .unwrap();
    assert_eq!(json["data"]["a"], "b");
    assert_eq!(json["metadata"]["namespace"], "demo");
    assert!(
        json["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(json["metadata"]["uid"].as_str().unwrap().len(), 36);
    let e = s.err(k, &["create", "configmap", "c1", "-n", "demo"]);
    assert!(e.contains("configmaps \"c1\" already exists"), "{e}");

    // Labels and selectors.
    assert_eq!(
        s.ok(k, &["label", "configmap", "c1", "-n", "demo", "tier=web"])
            .trim(),
        "configmap/c1 labeled"
    );
    let l = s.ok(
        k,
        &[
            "get",
            "configmap",
            "-n",
            "demo",
            "-l",
            "tier=web",
            "--show-labels",
        ],
    );
    assert!(l.contains("c1") && l.contains("tier=web"), "{l}");
    let out = s.kubectl(
        k,
        &["get", "configmap", "-n", "demo", "-l", "tier in (db,cache)"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("No resources found in demo namespace."));
    let y = s.ok(k, &["get", "configmap", "c1", "-n", "demo", "-o", "yaml"]);
    assert!(
        y.contains("tier: web") && y.contains("kind: ConfigMap"),
        "{y}"
    );

    // Client-side apply: create, unchanged, configured.
    let d1 = DEPLOY.replace("IMAGE", "nginx:1.27");
    let d2 = DEPLOY.replace("IMAGE", "nginx:1.28");
    let apply = |doc: &str| s.ok_stdin(k, &["apply", "-n", "demo", "-f", "-"], doc);
    assert_eq!(apply(&d1).trim(), "deployment.apps/web created");
    assert_eq!(apply(&d1).trim(), "deployment.apps/web unchanged");
    assert_eq!(apply(&d2).trim(), "deployment.apps/web configured");
    let wide = s.ok(k, &["get", "deployments", "-n", "demo", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("nginx:1.28") && wide.contains("app=web"),
        "{wide}"
    );

    // Scale, patches (no-op keeps the resourceVersion), server-side apply.
    assert_eq!(
        s.ok(
            k,
            &["scale", "deployment", "web", "-n", "demo", "--replicas=5"]
        )
        .trim(),
        "deployment.apps/web scaled"
    );
    let reps = |s: &TestServer| {
        s.ok(
            k,
            &[
                "get",
                "deployment",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        )
    };
    assert_eq!(reps(&s), "5");
    let p = s.ok(
        k,
        &[
            "patch",
            "deployment",
            "web",
            "-n",
            "demo",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":5}}"#,
        ],
    );
    assert_eq!(p.trim(), "deployment.apps/web patched (no change)");
    s.ok(
        k,
        &[
            "patch",
            "deployment",
            "web",
            "-n",
            "demo",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
        ],
    );
    assert_eq!(reps(&s), "3");
    s.ok(k, &["patch", "deployment", "web", "-n", "demo", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.29"}]}}}}"#]);
    let img = s.ok(
        k,
        &[
            "get",
            "deployment",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ],
    );
    assert_eq!(img, "nginx:1.29");
    let ssa = s.ok_stdin(
        k,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            "demo",
            "-f",
            "-",
        ],
        &d2,
    );
    assert_eq!(ssa.trim(), "deployment.apps/web serverside-applied");

    // Strict decoding and name validation.
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c2\nbogus: 1\n";
    let e = s.kubectl_stdin(k, &["create", "-n", "demo", "-f", "-"], Some(bad));
    let e = String::from_utf8_lossy(&e.stderr);
    assert!(
        e.contains("strict decoding error: unknown field \"bogus\""),
        "{e}"
    );
    let e = s.err(k, &["create", "configmap", "Bad_Name", "-n", "demo"]);
    assert!(
        e.contains("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"),
        "{e}"
    );

    // Pods, -A, -o wide columns from the server-side Table.
    s.ok(k, &["run", "p1", "-n", "demo", "--image=nginx"]);
    let all = s.ok(k, &["get", "pods", "-A", "-o", "wide"]);
    assert!(
        all.contains("NAMESPACE") && all.contains("NOMINATED NODE"),
        "{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("demo") && l.contains("p1") && l.contains("Pending")),
        "{all}"
    );

    // Discovery, OpenAPI, auth.
    let ar = s.ok(k, &["api-resources"]);
    assert!(
        ar.lines()
            .any(|l| l.starts_with("deployments") && l.contains("apps/v1")),
        "{ar}"
    );
    let ex = s.ok(k, &["explain", "deployment.spec.replicas"]);
    assert!(ex.contains("FIELD: replicas <integer>"), "{ex}");
    assert_eq!(s.ok(k, &["auth", "can-i", "create", "pods"]).trim(), "yes");

    // Delete returns, then 404.
    assert_eq!(
        s.ok(k, &["delete", "configmap", "c1", "-n", "demo"]).trim(),
        "configmap \"c1\" deleted"
    );
    let e = s.err(k, &["get", "configmap", "c1", "-n", "demo"]);
    assert!(
        e.contains("Error from server (NotFound): configmaps \"c1\" not found"),
        "{e}"
    );
    // Paging follows continue tokens.
    for i in 0..5 {
        s.ok(
            k,
            &["create", "configmap", &format!("page-{i}"), "-n", "demo"],
        );
    }
    let paged = s.ok(
        k,
        &[
            "get",
            "configmaps",
            "-n",
            "demo",
            "--chunk-size=2",
            "-o",
            "name",
        ],
    );
    assert_eq!(
        paged
            .lines()
            .filter(|l| l.starts_with("configmap/page-"))
            .count(),
        5,
        "{paged}"
    );
}

#[test]
fn older_kubectl_versions() {
    for k in [27, 30] {
        if !have_kubectl(k) {
            continue;
        }
        let s = TestServer::start(&[]);
        // kubectl 1.27 reads the protobuf OpenAPI v2 document to learn that the server
        // validates (fieldValidation); newer ones read v3.
        let validate = "--validate=strict";
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: old\ndata:\n  k: v\n";
        assert_eq!(
            s.ok_stdin(k, &["create", validate, "-f", "-"], cm).trim(),
            "configmap/old created",
            "1.{k}"
        );
        let g = s.ok(k, &["get", "configmaps"]);
        assert!(
            g.contains("DATA") && g.lines().any(|l| l.starts_with("old")),
            "1.{k}: {g}"
        );
        assert_eq!(
            s.ok(k, &["create", "namespace", "n2"]).trim(),
            "namespace/n2 created"
        );
        s.ok(k, &["label", "configmap", "old", "a=b"]);
        assert_eq!(
            s.ok(
                k,
                &["get", "cm", "old", "-o", "jsonpath={.metadata.labels.a}"]
            ),
            "b"
        );
        let d = DEPLOY.replace("IMAGE", "nginx");
        assert_eq!(
            s.ok_stdin(k, &["apply", validate, "-f", "-"], &d).trim(),
            "deployment.apps/web created"
        );
        assert_eq!(
            s.ok_stdin(k, &["apply", validate, "-f", "-"], &d).trim(),
            "deployment.apps/web unchanged"
        );
        assert_eq!(
            s.ok(k, &["delete", "configmap", "old"]).trim(),
            "configmap \"old\" deleted"
        );
        // Validation is real: an unknown field is refused by the server (strict decoding)
        // after kubectl learned from OpenAPI that the server validates.
        let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\nbogus: 1\n";
        let out = s.kubectl_stdin(k, &["create", "-f", "-"], Some(bad));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("unknown field \"bogus\""),
            "1.{k}: {err}"
        );
        // explain reads schemas (v2 definitions for 1.27).
        let ex = s.ok(k, &["explain", "deployment.spec.replicas"]);
        assert!(
            ex.contains("replicas") && ex.contains("<integer>") && ex.contains("desired pods"),
            "1.{k}: {ex}"
        );
        drop(s);
    }
}

#[test]
fn get_watch_streams_changes() {
    if !have_kubectl(33) {
        return;
    }
    let s = TestServer::start(&[]);
    let mut child = Command::new(kubectl_path(33))
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .arg("--cache-dir")
        .arg(s.dir.join("watch-cache"))
        .args(["get", "configmaps", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // Give the watch time to start, then write.
    std::thread::sleep(Duration::from_secs(2));
    s.ok(33, &["create", "configmap", "w1"]);
    s.ok(33, &["label", "configmap", "w1", "x=y"]);
    s.ok(33, &["delete", "configmap", "w1"]);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500))
            && l.contains("w1")
        {
            seen.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].starts_with("ADDED"), "{seen:?}");
    assert!(seen[1].starts_with("MODIFIED"), "{seen:?}");
    assert!(seen[2].starts_with("DELETED"), "{seen:?}");
}

/// `/openapi/v2` is served as protobuf only (what kubectl <= 1.29 and client-go ask for); a
/// JSON request gets 406 with a Status rather than a body the client cannot parse.
#[test]
fn openapi_v2_is_protobuf_only() {
    let s = TestServer::start(&[]);
    let base = format!("http://127.0.0.1:{}", s.insecure_port);
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{content_type} %{size_download}",
        ])
        .args([
            "-H",
            "Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        ])
        .arg(format!("{base}/openapi/v2"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut parts = text.split(' ');
    assert_eq!(parts.next(), Some("200"), "{text}");
    assert_eq!(
        parts.next(),
        Some("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
        "{text}"
    );
    let size: usize = parts.next().unwrap_or("0").parse().unwrap_or(0);
    assert!(
        size > 100_000,
        "the document holds every definition: {size} bytes"
    );
    let (code, body) = support::curl(
        &["-H", "Accept: application/json"],
        &format!("{base}/openapi/v2"),
    );
    assert_eq!(code, 406, "{body}");
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
}

/// The `kubernetes` Service points at the apiserver itself, in Endpoints and in an
/// EndpointSlice, and a restart on another port rewrites both.
#[test]
fn kubernetes_service_has_the_apiservers_endpoints() {
    if !have_kubectl(33) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    for _ in 0..2 {
        // Each start binds a fresh port in the same data directory.
        let s = TestServer::start_in(tmp.path(), &[]);
        let want = format!("127.0.0.1:{}", s.port);
        let ep = s.ok(
            33,
            &[
                "get",
                "endpoints",
                "kubernetes",
                "-o",
                "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
            ],
        );
        assert_eq!(ep.trim(), want);
        let slice = s.ok(
            33,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=kubernetes",
                "-o",
                "jsonpath={.items[*].endpoints[0].addresses[0]}:{.items[*].ports[0].port}",
            ],
        );
        assert_eq!(slice.trim(), want);
        let svc = s.ok(
            33,
            &[
                "get",
                "service",
                "kubernetes",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
        );
        assert_eq!(svc.trim(), "10.96.0.1");
        drop(s);
    }
}

/// pods/eviction honours a PodDisruptionBudget: an eviction the budget allows deletes the pod
/// and takes one disruption from the budget's status; the next one gets upstream's 429.
#[test]
fn eviction_respects_the_pod_disruption_budget() {
    if !have_kubectl(33) {
        return;
    }
    let s = TestServer::start(&[]);
    let k = 33;
    for p in ["web-1", "web-2"] {
        s.ok(k, &["run", p, "--image=busybox:1.36", "--labels=app=web"]);
        s.ok(
            k,
            &[
                "patch",
                "pod",
                p,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#,
            ],
        );
    }
    s.ok(
        k,
        &[
            "create",
            "pdb",
            "web",
            "--selector=app=web",
            "--min-available=1",
        ],
    );
    let generation = s.ok(
        k,
        &["get", "pdb", "web", "-o", "jsonpath={.metadata.generation}"],
    );
    // What the disruption controller would report for two healthy pods and minAvailable 1.
    let status = format!(
        r#"{{"status":{{"observedGeneration":{},"disruptionsAllowed":1,"currentHealthy":2,"desiredHealthy":1,"expectedPods":2}}}}"#,
        generation.trim()
    );
    s.ok(
        k,
        &[
            "patch",
            "pdb",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    );
    let evict = |pod: &str| {
        let body = format!(
            r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"default"}}}}"#
        );
        s.kubectl_stdin(
            k,
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/default/pods/{pod}/eviction"),
                "-f",
                "-",
            ],
            Some(&body),
        )
    };
    let first = evict("web-1");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let pods = s.ok(k, &["get", "pods", "-o", "name"]);
    assert_eq!(pods.trim(), "pod/web-2", "the evicted pod is gone");
    let pdb = s.ok(
        k,
        &[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptionsAllowed} {.status.disruptedPods}",
        ],
    );
    assert!(pdb.starts_with("0 "), "one disruption taken: {pdb}");
    assert!(pdb.contains("web-1"), "the eviction is recorded: {pdb}");

    let second = evict("web-2");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("TooManyRequests")
            && err.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{err}"
    );
    assert_eq!(
        s.ok(k, &["get", "pods", "-o", "name"]).trim(),
        "pod/web-2",
        "nothing deleted"
    );
}

#[test]
fn priority_admission_resolves_classes() {
    if !have_kubectl(33) {
        return;
    }
    let s = TestServer::start(&[]);
    let k = 33;
    // The built-in classes exist from the first start.
    let classes = s.ok(k, &["get", "priorityclasses", "-o", "name"]);
    for c in ["system-cluster-critical", "system-node-critical"] {
        assert!(classes.contains(c), "{classes}");
    }
    let priority = |pod: &str| {
        s.ok(
            k,
            &[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.spec.priorityClassName}/{.spec.priority}/{.spec.preemptionPolicy}",
            ],
        )
    };
    s.ok(
        k,
        &[
            "create",
            "priorityclass",
            "high",
            "--value=1000",
            "--preemption-policy=Never",
        ],
    );
    s.ok(
        k,
        &[
            "run",
            "named",
            "--image=busybox:1.36",
            "--overrides",
            r#"{"spec":{"priorityClassName":"high"}}"#,
        ],
    );
    assert_eq!(priority("named"), "high/1000/Never");
    s.ok(k, &["run", "plain", "--image=busybox:1.36"]);
    assert_eq!(priority("plain"), "/0/PreemptLowerPriority");

    // Unknown classes and values that disagree with the class are refused, nothing stored.
    let err = s.err(
        k,
        &[
            "run",
            "ghost",
            "--image=busybox:1.36",
            "--overrides",
            r#"{"spec":{"priorityClassName":"nope"}}"#,
        ],
    );
    assert!(
        err.contains(r#"pods "ghost" is forbidden: no PriorityClass with name nope was found"#),
        "{err}"
    );
    let err = s.err(
        k,
        &[
            "run",
            "forged",
            "--image=busybox:1.36",
            "--overrides",
            r#"{"spec":{"priorityClassName":"high","priority":5}}"#,
        ],
    );
    assert!(
        err.contains("the integer value of priority (5) must not be provided in pod spec"),
        "{err}"
    );
    let pods = s.ok(k, &["get", "pods", "-o", "name"]);
    assert!(
        !pods.contains("ghost") && !pods.contains("forged"),
        "{pods}"
    );

    // A global default applies to pods that name no class; only one default may exist.
    s.ok(
        k,
        &[
            "create",
            "priorityclass",
            "standard",
            "--value=100",
            "--global-default=true",
        ],
    );
    s.ok(k, &["run", "defaulted", "--image=busybox:1.36"]);
    assert_eq!(priority("defaulted"), "standard/100/PreemptLowerPriority");
    let err = s.err(
        k,
        &[
            "create",
            "priorityclass",
            "second",
            "--value=5",
            "--global-default=true",
        ],
    );
    assert!(
        err.contains(
            "PriorityClass standard is already marked as default. Only one default can exist"
        ),
        "{err}"
    );
    // The built-in names and values above one billion are reserved; values are immutable.
    let err = s.err(k, &["create", "priorityclass", "system-mine", "--value=7"]);
    assert!(err.contains("reserved for system use only"), "{err}");
    let err = s.err(
        k,
        &["create", "priorityclass", "huge", "--value=1000000001"],
    );
    assert!(
        err.contains("maximum allowed value of a user defined priority is 1000000000"),
        "{err}"
    );
    let err = s.err(
        k,
        &[
            "patch",
            "priorityclass",
            "high",
            "--type=merge",
            "-p",
            r#"{"value":2000}"#,
        ],
    );
    assert!(err.contains("may not be changed in an update"), "{err}");
    // Replacing a pod from a manifest without the resolved fields keeps them.
    let mut pod: serde_json::Value =
        serde_json::from_str(&s.ok(k, &["get", "pod", "named", "-o", "json"])).expect("pod json");
    let spec = pod["spec"].as_object_mut().expect("spec");
    spec.remove("priority");
    spec.remove("preemptionPolicy");
    pod["metadata"]["labels"]["tier"] = "gold".into();
    s.ok_stdin(k, &["replace", "-f", "-"], &pod.to_string());
    assert_eq!(priority("named"), "high/1000/Never");
    let tier = s.ok(
        k,
        &[
            "get",
            "pod",
            "named",
            "-o",
            "jsonpath={.metadata.labels.tier}",
        ],
    );
    assert_eq!(tier, "gold");
}
