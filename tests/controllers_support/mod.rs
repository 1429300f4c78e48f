//! Shared harness of the controllers e2e tests: the real `kubeshard server`, the real
//! `kubeshard controller-manager` binary next to it, and the real kubectl 1.33. Tests play
//! the kubelet by patching pod status through the admin plain-HTTP port.

#![allow(dead_code, unreachable_pub)]

#[path = "../support/api_server.rs"]
pub mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
pub use support::TestServer;

/// kubectl minor version the tests drive.
pub const K: u32 = 33;

/// The server plus a controller-manager, both killed on drop.
pub struct Cluster {
    pub server: TestServer,
    cm: Option<Child>,
}

impl Cluster {
    /// Starts a server and a controller-manager with `--controllers controllers`; `None` when
    /// kubectl 1.33 is missing (the test is skipped).
    pub fn start(controllers: &str) -> Option<Self> {
        let p = support::kubectl_path(K);
        if !p.exists() {
            eprintln!("skipping: {} is not installed", p.display());
            return None;
        }
        let server = TestServer::start(&[]);
        let cm = Command::new(env!("CARGO_BIN_EXE_kubeshard"))
            .arg("controller-manager")
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .args(["--controllers", controllers])
            .env("RUST_LOG", "warn,controllers=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn controller-manager");
        Some(Self {
            server,
            cm: Some(cm),
        })
    }

    /// kubectl that must succeed; stdout.
    pub fn k(&self, args: &[&str]) -> String {
        self.server.ok(K, args)
    }

    /// kubectl with stdin that must succeed.
    pub fn apply(&self, yaml: &str) -> String {
        self.server.ok_stdin(K, &["apply", "-f", "-"], yaml)
    }

    /// `kubectl get ... -o json`.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.k(&a)).expect("kubectl json")
    }

    /// Items of `kubectl get <what> -n ns -o json`.
    pub fn items(&self, what: &str, ns: &str, extra: &[&str]) -> Vec<Value> {
        let mut a = vec![what, "-n", ns];
        a.extend_from_slice(extra);
        self.json(&a)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `kubectl get` finds the object.
    pub fn exists(&self, args: &[&str]) -> bool {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        let out = self.server.kubectl(K, &a);
        if out.status.success() {
            return true;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("NotFound") || err.contains("not found"),
            "kubectl get {args:?}: {err}"
        );
        false
    }

    /// Patches a pod's status through the admin port, as a kubelet would.
    pub fn pod_status(&self, ns: &str, name: &str, status: Value) {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/namespaces/{ns}/pods/{name}/status",
            self.server.insecure_port
        );
        let body = json!({"status": status}).to_string();
        let (code, out) = support::curl(
            &[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/merge-patch+json",
                "--data",
                &body,
            ],
            &url,
        );
        // A pod deleted meanwhile is fine; anything else is a harness bug.
        assert!(
            code == 200 || code == 404,
            "patch status of {ns}/{name}: {code} {out}"
        );
    }

    /// Marks a pod Running and Ready with an IP.
    pub fn make_ready(&self, ns: &str, pod: &Value, ip: &str) {
        let name = pod["metadata"]["name"].as_str().expect("pod name");
        let now = chrono_now();
        self.pod_status(
            ns,
            name,
            json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}),
        );
    }

    /// Marks a pod finished with `phase` (Succeeded or Failed).
    pub fn finish(&self, ns: &str, pod: &Value, phase: &str) {
        let name = pod["metadata"]["name"].as_str().expect("pod name");
        self.pod_status(ns, name, json!({"phase": phase}));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.cm.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// RFC 3339 "now" without a date crate: `date -u`.
pub fn chrono_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `f` every 200 ms until it returns `Some`, at most `secs` seconds.
pub fn wait_for<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    support::wait_for_every(what, secs, Duration::from_millis(200), f)
}

/// Whether a pod JSON is Ready.
pub fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Whether a pod JSON is being deleted.
pub fn terminating(p: &Value) -> bool {
    !p["metadata"]["deletionTimestamp"].is_null()
}

/// The image of a pod's first container.
pub fn image(p: &Value) -> String {
    p["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_string()
}
