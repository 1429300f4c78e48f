//! Pod workers end to end, as root: pods created through a real (in-process) apiserver with
//! `spec.nodeName` set, run by a kubelet on real namespaces, cgroups and busybox images;
//! status, restarts, backoff, waiting reasons, env resolution, graceful deletion, adoption.

mod kubelet_common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use api::client::{Api, DeleteParams, PostParams};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kubelet_common::*;
use serde_json::json;

fn state_of(cs: &serde_json::Value) -> (&str, &serde_json::Value) {
    let st = cs["state"].as_object().unwrap();
    let (k, v) = st.iter().next().unwrap();
    (k.as_str(), v)
}

/// The log of the newest container named `name` of pod `pod` on the node.
fn log_of(dir: &NodeDir, pod: &str, name: &str) -> String {
    let rt = dir.runtime();
    let sbs: Vec<String> = rt
        .list_sandboxes()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == pod)
        .map(|s| s.id)
        .collect();
    let c = rt
        .list_containers()
        .unwrap()
        .into_iter()
        .rfind(|c| c.name == name && sbs.contains(&c.sandbox_id));
    c.map(|c| {
        node::logs::read_records(&c.log_path, 5)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.line)
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

#[test]
fn pods_run_exit_restart_and_report_status() {
    let Some(dir) = NodeDir::new("pods_run_exit_restart_and_report_status") else {
        return;
    };
    let server = Server::start();
    rt().block_on(async {
        let client = server.client();
        let n = "node-p";
        let k = RunningKubelet::start(dir.config(n, Some(&server.kubeconfig)));
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello", "K2": "two"}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();

        create(&client, &sh_pod(n, "ok", "echo hi; exit 0", "Never")).await;
        create(&client, &sh_pod(n, "fail", "exit 3", "Never")).await;
        create(&client, &sh_pod(n, "crash", "exit 1", "Always")).await;
        create(&client, &pod(n, json!({"metadata": {"name": "two", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                {"name": "a", "image": IMAGE, "command": ["sleep", "3600"]},
                {"name": "b", "image": IMAGE, "command": ["sleep", "3600"]}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "init", "namespace": "default"},
            "spec": {"restartPolicy": "Never", "initContainers": [
                {"name": "i1", "image": IMAGE, "command": ["sh", "-c", "sleep 2"]},
                {"name": "i2", "image": IMAGE, "command": ["sh", "-c", "sleep 1"]}],
              "containers": [{"name": "main", "image": IMAGE, "command": ["true"]}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "env", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"restartPolicy": "Never", "serviceAccountName": "default", "containers": [{"name": "c", "image": IMAGE,
                "command": ["sh", "-c", "echo \"$POD $NS $APP $NODE $SA $GREETING $CM_K2 $MEM $REF $(ARGV)\"; test \"$POD/$NS/$APP/$NODE/$GREETING/$CM_K2/$MEM/$REF\" = \"env/default/web/node-p/hello/two/32/hello-env\""],
                "resources": {"limits": {"memory": "32Mi"}},
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CM_"}],
                "env": [
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "REF", "value": "$(GREETING)-$(POD)"},
                    {"name": "ARGV", "value": "argv-expanded"}]}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "noimage", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "registry.invalid/nope:1"}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "nocm", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"],
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "x"}}}]}]}}))).await;

        create(
            &client,
            &pod(n, json!({"metadata": {"name": "vol", "namespace": "default"},
                "spec": {"restartPolicy": "Never",
                    "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "scratch", "emptyDir": {}}],
                    "initContainers": [{"name": "w", "image": IMAGE, "command": ["sh", "-c", "echo from-init > /scratch/f"],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                    "containers": [{"name": "c", "image": IMAGE,
                        "command": ["sh", "-c", "echo \"$(cat /cfg/greeting) $(cat /scratch/f)\"; test \"$(cat /cfg/greeting)$(cat /scratch/f)\" = hellofrom-init"],
                        "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "scratch", "mountPath": "/scratch"}]}]}})),
        )
        .await;

        create(
            &client,
            &pod(n, json!({"metadata": {"name": "execprobe", "namespace": "default"},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": IMAGE,
                    "command": ["sh", "-c", "sleep 4; touch /tmp/ready; sleep 3600"],
                    "readinessProbe": {"exec": {"command": ["sh", "-c", "test -f /tmp/ready"]}, "periodSeconds": 1}}]}})),
        )
        .await;

        // An exec readiness probe (through the runtime's exec) gates Ready.
        let p = wait_pod(&client, "execprobe", 60, "Running", |p| (phase(p) == "Running").then(|| p.clone())).await;
        let early_ready = condition(&p, "Ready");
        wait_pod(&client, "execprobe", 30, "Ready via the exec probe", |p| {
            (condition(p, "Ready").as_deref() == Some("True")).then_some(())
        })
        .await;
        assert_eq!(early_ready.as_deref(), Some("False"), "Ready before /tmp/ready existed");

        // Two long-running containers: Running, both ready, conditions and ids.
        let p = wait_pod(&client, "two", 60, "two Running and Ready", |p| {
            (phase(p) == "Running" && condition(p, "Ready").as_deref() == Some("True")).then(|| p.clone())
        })
        .await;
        for c in ["a", "b"] {
            let cs = cstatus(&p, c).unwrap();
            assert_eq!(state_of(&cs).0, "running", "{cs}");
            assert_eq!(cs["ready"], true);
            assert_eq!(cs["started"], true);
            assert_eq!(cs["restartCount"], 0);
            assert!(cs["containerID"].as_str().unwrap().starts_with("kubeshard://"), "{cs}");
            assert!(cs["imageID"].as_str().unwrap().starts_with("sha256:"), "{cs}");
            assert_eq!(cs["image"], IMAGE);
        }
        for t in ["PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"] {
            assert_eq!(condition(&p, t).as_deref(), Some("True"), "condition {t}");
        }
        let st = p.status.clone().unwrap();
        assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
        assert!(st.start_time.is_some());
        assert_eq!(st.qos_class.as_deref(), Some("BestEffort"));

        // Exits: Succeeded/Failed with exit codes and reasons.
        let p = wait_pod(&client, "ok", 60, "ok Succeeded", |p| (phase(p) == "Succeeded").then(|| p.clone())).await;
        let cs = cstatus(&p, "c").unwrap();
        let (s, t) = state_of(&cs);
        assert_eq!((s, t["exitCode"].as_i64(), t["reason"].as_str()), ("terminated", Some(0), Some("Completed")));
        assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
        let p = wait_pod(&client, "fail", 60, "fail Failed", |p| (phase(p) == "Failed").then(|| p.clone())).await;
        let cs = cstatus(&p, "c").unwrap();
        let (s, t) = state_of(&cs);
        assert_eq!((s, t["exitCode"].as_i64(), t["reason"].as_str()), ("terminated", Some(3), Some("Error")));
        assert_eq!(cs["restartCount"], 0);

        // Init containers run in order, before the main container.
        let p = wait_pod(&client, "init", 60, "init Succeeded", |p| (phase(p) == "Succeeded").then(|| p.clone())).await;
        let time = |c: &str, f: &str| -> String {
            let cs = cstatus(&p, c).unwrap();
            state_of(&cs).1[f].as_str().unwrap().to_string()
        };
        assert!(time("i1", "finishedAt") <= time("i2", "startedAt"), "i2 started before i1 finished");
        assert!(time("i2", "finishedAt") <= time("main", "startedAt"), "main started before i2 finished");
        assert_eq!(condition(&p, "Initialized").as_deref(), Some("True"));

        // Env from fieldRef, configMapKeyRef, envFrom with prefix, resourceFieldRef, $(VAR).
        let p = wait_pod(&client, "env", 60, "env finished", |p| matches!(phase(p), "Succeeded" | "Failed").then(|| p.clone())).await;
        let log = log_of(&dir, "env", "c");
        assert_eq!(phase(&p), "Succeeded", "env check failed; the container printed: {log}");
        assert_eq!(log, "env default web node-p default hello two 32 hello-env argv-expanded");

        // Volumes: a configMap and an emptyDir shared between an init container and the main one.
        let p = wait_pod(&client, "vol", 60, "vol finished", |p| {
            matches!(phase(p), "Succeeded" | "Failed").then(|| p.clone())
        })
        .await;
        let log = log_of(&dir, "vol", "c");
        assert_eq!(phase(&p), "Succeeded", "volume check failed; the container printed: {log}");
        assert_eq!(log, "hello from-init");

        // A missing image: ErrImagePull, then ImagePullBackOff.
        let mut seen = std::collections::BTreeSet::new();
        wait_pod(&client, "noimage", 30, "ErrImagePull and ImagePullBackOff", |p| {
            if let Some(cs) = cstatus(p, "c") {
                let (s, w) = state_of(&cs);
                if s == "waiting" {
                    seen.insert(w["reason"].as_str().unwrap_or("").to_string());
                }
            }
            (seen.contains("ErrImagePull") && seen.contains("ImagePullBackOff")).then_some(())
        })
        .await;
        let p = Api::<Pod>::namespaced(client.clone(), "default").get("noimage").await.unwrap();
        assert_eq!(phase(&p), "Pending");

        // A missing ConfigMap: CreateContainerConfigError, and the pod starts once it exists.
        let msg = wait_pod(&client, "nocm", 30, "CreateContainerConfigError", |p| {
            let cs = cstatus(p, "c")?;
            let (s, w) = state_of(&cs);
            (s == "waiting" && w["reason"] == "CreateContainerConfigError").then(|| w["message"].as_str().unwrap_or("").to_string())
        })
        .await;
        assert_eq!(msg, "configmap \"later\" not found");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "later"}, "data": {"x": "1"}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        wait_pod(&client, "nocm", 30, "nocm Running", |p| (phase(p) == "Running").then_some(())).await;

        // Restart backoff: an immediate first restart, then CrashLoopBackOff with the last
        // termination, and the next restart only after the backoff (2 s here, doubling).
        let p = wait_pod(&client, "crash", 60, "CrashLoopBackOff", |p| {
            let cs = cstatus(p, "c")?;
            let (s, w) = state_of(&cs);
            (s == "waiting" && w["reason"] == "CrashLoopBackOff").then(|| p.clone())
        })
        .await;
        let cs = cstatus(&p, "c").unwrap();
        assert!(cs["restartCount"].as_i64().unwrap() >= 1, "{cs}");
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1, "{cs}");
        assert_eq!(phase(&p), "Running");
        let count = |p: &Pod| cstatus(p, "c").and_then(|c| c["restartCount"].as_i64()).unwrap_or(0);
        let c0 = count(&p);
        let t0 = Instant::now();
        wait_pod(&client, "crash", 30, "another restart", |p| (count(p) > c0).then_some(())).await;
        let first_gap = t0.elapsed();
        let c1 = c0 + 1;
        let t1 = Instant::now();
        wait_pod(&client, "crash", 40, "another restart", |p| (count(p) > c1).then_some(())).await;
        let second_gap = t1.elapsed();
        assert!(second_gap >= Duration::from_millis(3500), "backoff did not grow: {first_gap:?} then {second_gap:?}");

        k.stop().await;
    });
    drop(server);
    rt().block_on(dir.cleanup());
}

/// The files a container wrote under `rel` in its root, for every container of the node.
fn container_files(dir: &NodeDir, rel: &str) -> Vec<String> {
    let mut out = Vec::new();
    let base = dir.data.join("run/containers");
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let p: PathBuf = e.path().join("upper").join(rel);
        if let Ok(s) = std::fs::read_to_string(&p) {
            out.push(s.trim().to_string());
        }
    }
    out
}

#[test]
fn graceful_delete_sends_sigterm_then_removes_the_pod() {
    let Some(dir) = NodeDir::new("graceful_delete_sends_sigterm_then_removes_the_pod") else {
        return;
    };
    let server = Server::start();
    rt().block_on(async {
        let client = server.client();
        let n = "node-g";
        let k = RunningKubelet::start(dir.config(n, Some(&server.kubeconfig)));
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let mut trap = sh_pod(n, "trap", "trap 'echo TERM > /tmp/term; sleep 2; exit 0' TERM; while true; do sleep 1 & wait $!; done", "Always");
        trap.spec.as_mut().unwrap().termination_grace_period_seconds = Some(20);
        create(&client, &trap).await;
        // PID 1 without a handler ignores SIGTERM: it takes SIGKILL after the grace period.
        let mut stubborn = sh_pod(n, "stubborn", "", "Always");
        stubborn.spec.as_mut().unwrap().containers[0].command = Some(vec!["sleep".into(), "3600".into()]);
        stubborn.spec.as_mut().unwrap().termination_grace_period_seconds = Some(3);
        create(&client, &stubborn).await;
        for p in ["trap", "stubborn"] {
            wait_pod(&client, p, 60, "Running", |p| (phase(p) == "Running").then_some(())).await;
        }

        let t0 = Instant::now();
        pods.delete("trap", &DeleteParams::default()).await.unwrap();
        // Graceful: the object stays, marked, until the kubelet is done.
        let p = pods.get("trap").await.expect("the pod is still there during its grace period");
        assert!(p.metadata.deletion_timestamp.is_some());
        let mut term_seen = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            term_seen |= container_files(&dir, "tmp/term").iter().any(|s| s == "TERM");
            if pods.get_opt("trap").await.unwrap().is_none() {
                break;
            }
            assert!(Instant::now() < deadline, "pod never removed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t0.elapsed();
        assert!(term_seen, "the container's TERM trap never ran");
        assert!(took >= Duration::from_secs(2), "the trap's 2 s were cut short: {took:?}");
        assert!(took < Duration::from_secs(15), "waited for the full grace period: {took:?}");

        let t0 = Instant::now();
        pods.delete("stubborn", &DeleteParams::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while pods.get_opt("stubborn").await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "stubborn never removed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(2900), "SIGKILL before the grace period: {took:?}");
        // Torn down: no sandbox, no container left.
        let rt = dir.runtime();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rt.list_sandboxes().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "sandboxes left");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(rt.list_containers().unwrap().is_empty());
        k.stop().await;
    });
    drop(server);
    rt().block_on(dir.cleanup());
}

#[test]
fn restarted_kubelet_adopts_running_pods() {
    let Some(dir) = NodeDir::new("restarted_kubelet_adopts_running_pods") else {
        return;
    };
    let server = Server::start();
    rt().block_on(async {
        let client = server.client();
        let n = "node-r";
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let k = RunningKubelet::start(dir.config(n, Some(&server.kubeconfig)));
        create(&client, &sh_pod(n, "keep", "sleep 3600", "Always")).await;
        create(&client, &sh_pod(n, "crashy", "exit 1", "Always")).await;
        create(&client, &sh_pod(n, "orphan", "sleep 3600", "Always")).await;
        let id =
            |p: &Pod| cstatus(p, "c").and_then(|c| c["containerID"].as_str().map(str::to_string));
        let keep = wait_pod(&client, "keep", 60, "Running", |p| {
            (phase(p) == "Running").then(|| p.clone())
        })
        .await;
        wait_pod(&client, "orphan", 60, "Running", |p| {
            (phase(p) == "Running").then_some(())
        })
        .await;
        let crashy = wait_pod(&client, "crashy", 60, "restarted", |p| {
            cstatus(p, "c")
                .filter(|c| c["restartCount"].as_i64() >= Some(1))
                .map(|_| p.clone())
        })
        .await;
        k.stop().await;
        let rt = dir.runtime();
        let before: Vec<String> = rt
            .list_containers()
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();

        // While the kubelet is down, one pod is force-deleted from the API.
        pods.delete(
            "orphan",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();

        let k = RunningKubelet::start(dir.config(n, Some(&server.kubeconfig)));
        // Its sandbox goes; the other pods stay as they were.
        let deadline = Instant::now() + Duration::from_secs(30);
        while rt
            .list_sandboxes()
            .unwrap()
            .iter()
            .any(|s| s.name == "orphan")
        {
            assert!(
                Instant::now() < deadline,
                "the orphan's sandbox was not removed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let a few resyncs pass (2 s each here).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let p = pods.get("keep").await.unwrap();
        assert_eq!(id(&p), id(&keep), "the running container was replaced");
        assert_eq!(cstatus(&p, "c").unwrap()["restartCount"], 0);
        assert_eq!(phase(&p), "Running");
        let keep_sb: Vec<_> = rt
            .list_sandboxes()
            .unwrap()
            .into_iter()
            .filter(|s| s.name == "keep")
            .collect();
        assert_eq!(keep_sb.len(), 1, "duplicate sandboxes");
        let keep_containers = rt
            .list_containers()
            .unwrap()
            .into_iter()
            .filter(|c| c.sandbox_id == keep_sb[0].id)
            .count();
        assert_eq!(keep_containers, 1, "duplicate containers");
        assert!(
            before
                .iter()
                .any(|b| Some(format!("kubeshard://{b}")) == id(&p))
        );
        // The crash-looping pod's restart count carries on from where it was.
        let c0 = cstatus(&crashy, "c").unwrap()["restartCount"]
            .as_i64()
            .unwrap();
        let p = pods.get("crashy").await.unwrap();
        assert!(cstatus(&p, "c").unwrap()["restartCount"].as_i64().unwrap() >= c0);
        k.stop().await;
    });
    drop(server);
    rt().block_on(dir.cleanup());
}
