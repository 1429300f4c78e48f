//! `kubectl logs`, `exec` and `port-forward` end to end, as root: the real kubectl (1.33 over
//! WebSocket, 1.27 over SPDY/3.1) -> `kubeshard server` (pods/log|exec|portforward proxied
//! over TLS with the apiserver's kubelet client certificate) -> `node::server::KubeletServer`
//! -> the built-in runtime running busybox containers in namespaces.
//!
//! The Node and Pod objects are made by hand (no kubelet runs): the Node points at the
//! test's KubeletServer, the Pod's sandbox carries its name, namespace and uid.

#[path = "support/api_server.rs"]
mod support;

#[path = "../node/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::cgroup::CgroupDriver;
use node::runtime::{ContainerConfig, ContainerState, Runtime, RuntimeConfig, SandboxConfig};
use node::server::{KubeletServer, ServerConfig};
use support::{TestServer, kubectl_path};

struct Cluster {
    server: TestServer,
    rt: tokio::runtime::Runtime,
    runtime: Arc<Runtime>,
    sandbox: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _tmp: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let runtime = self.runtime.clone();
        let sb = self.sandbox.clone();
        let _ = self
            .rt
            .block_on(async move { runtime.remove_sandbox(&sb).await });
    }
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
spec:
  nodeName: n1
  containers:
  - name: app
    image: kubeshard.test/busybox:1
";

fn kubectl(s: &TestServer, minor: u32, args: &[&str]) -> std::process::Output {
    s.kubectl(minor, args)
}

fn ok(s: &TestServer, minor: u32, args: &[&str]) -> String {
    s.ok(minor, args)
}

/// Starts the apiserver, a runtime with the pod's sandbox (a first container that exited
/// and the current one serving HTTP on 8080), the KubeletServer, and the API objects.
fn setup(test: &str) -> Option<Cluster> {
    if !common::can_run_as_root(test) || !kubectl_path(33).exists() {
        eprintln!("SKIP {test}: needs root, busybox-static and kubectl 1.33");
        return None;
    }
    let server = TestServer::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let group = format!("kubeshard-test-{}", uuid::Uuid::new_v4().simple());
    let cgroups = match CgroupDriver::detect(&group) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP {test}: {e}");
            return None;
        }
    };
    let mut cfg = RuntimeConfig::new(
        &tmp.path().join("data"),
        PathBuf::from(env!("CARGO_BIN_EXE_kubeshard")),
    )
    .unwrap();
    cfg.cgroups = cgroups;
    let runtime = Arc::new(Runtime::new(cfg).unwrap());
    runtime
        .images()
        .import(&common::busybox_image(tmp.path()))
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // API objects: the pod (bound to n1), then the runtime with its name/namespace/uid.
    let out = server.kubectl_stdin(33, &["create", "--validate=false", "-f", "-"], Some(POD));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = ok(
        &server,
        33,
        &["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"],
    );
    ok(
        &server,
        33,
        &[
            "patch",
            "pod",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ],
    );

    let r2 = runtime.clone();
    let uid2 = uid.clone();
    let sandbox = rt.block_on(async move {
        let sb = r2
            .create_sandbox(&SandboxConfig {
                name: "web".into(),
                namespace: "default".into(),
                uid: uid2,
                hostname: "web".into(),
                ..SandboxConfig::default()
            })
            .await
            .unwrap();
        let app = |script: &str| ContainerConfig {
            name: "app".into(),
            image: "kubeshard.test/busybox:1".into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello-env".into())],
            working_dir: Some("/tmp".into()),
            ..ContainerConfig::default()
        };
        // The previous instance: ran and exited.
        let first = r2.create_container(&sb, &app("echo first-run; exit 1")).await.unwrap();
        r2.start_container(&first).await.unwrap();
        let st = r2.wait_container(&first, Duration::from_secs(20)).await.unwrap();
        assert!(matches!(st.state, ContainerState::Exited(_)), "{st:?}");
        // The current one: three lines, one on stderr, then an HTTP server on 8080.
        let cur = r2
            .create_container(
                &sb,
                &app("echo line1; sleep 0.2; echo err1 >&2; sleep 0.2; echo line2; echo line3; busybox mkdir -p /tmp/www; echo served-from-pod > /tmp/www/index.html; exec busybox httpd -f -p 8080 -h /tmp/www"),
            )
            .await
            .unwrap();
        r2.start_container(&cur).await.unwrap();
        sb
    });

    // The kubelet server, trusting the cluster CA for client certificates.
    let ca = std::fs::read_to_string(server.dir.join("pki/ca.crt")).unwrap();
    let mut scfg = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    scfg.client_ca_pem = Some(ca);
    let ks = rt
        .block_on(KubeletServer::bind(scfg, runtime.clone()))
        .unwrap();
    let port = ks.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(ks.run(async move {
        let _ = stopped.await;
    }));

    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n";
    let out = server.kubectl_stdin(33, &["create", "--validate=false", "-f", "-"], Some(node));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = format!(
        r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}},{{"type":"Hostname","address":"n1"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{port}}}}}}}}}"#
    );
    ok(
        &server,
        33,
        &[
            "patch",
            "node",
            "n1",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    );
    // Wait until the container's first lines are in its log.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&server, 33, &["logs", "web"]).contains("line3") {
        assert!(Instant::now() < deadline, "no logs");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Cluster {
        server,
        rt,
        runtime,
        sandbox,
        stop: Some(stop),
        _tmp: tmp,
    })
}

/// `kubectl port-forward pod/web :8080`, then an HTTP GET through the local port.
fn port_forward_get(s: &TestServer, minor: u32) -> String {
    let mut child = Command::new(kubectl_path(minor))
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .arg("--cache-dir")
        .arg(s.dir.join(format!("pf-cache-{minor}")))
        .args(["port-forward", "pod/web", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut local = 0u16;
    let deadline = Instant::now() + Duration::from_secs(20);
    while local == 0 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200))
            && let Some(rest) = l.strip_prefix("Forwarding from 127.0.0.1:")
        {
            local = rest.split(' ').next().unwrap().parse().unwrap();
        }
    }
    let result = if local == 0 {
        String::from("port-forward did not start")
    } else {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        let _ = c.read_to_string(&mut resp);
        resp
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[test]
fn kubectl_logs_exec_port_forward() {
    let Some(c) = setup("kubectl_logs_exec_port_forward") else {
        return;
    };
    let s = &c.server;

    // logs: all, --tail, --timestamps, --previous.
    let all = ok(s, 33, &["logs", "web"]);
    assert_eq!(all, "line1\nerr1\nline2\nline3\n");
    assert_eq!(ok(s, 33, &["logs", "web", "--tail=1"]), "line3\n");
    let ts = ok(s, 33, &["logs", "web", "--tail=2", "--timestamps"]);
    let lines: Vec<&str> = ts.lines().collect();
    assert_eq!(lines.len(), 2, "{ts}");
    for (l, want) in lines.iter().zip(["line2", "line3"]) {
        let (t, rest) = l.split_once(' ').unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{l}");
        assert_eq!(rest, want);
    }
    assert_eq!(ok(s, 33, &["logs", "web", "--previous"]), "first-run\n");
    assert_eq!(
        ok(s, 33, &["logs", "web", "-c", "app", "--limit-bytes=8"]),
        "line1\ner"
    );

    // logs -f: a line written later (by an exec, into the container's stdout) arrives.
    let follow = support::KubectlStream::start(s, 33, &["logs", "-f", "web"]);
    assert_eq!(
        follow.lines_with("line3", 1, Duration::from_secs(20)).len(),
        1
    );
    ok(
        s,
        33,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo followed-line > /proc/1/fd/1",
        ],
    );
    assert_eq!(
        follow
            .lines_with("followed-line", 1, Duration::from_secs(20))
            .len(),
        1
    );
    drop(follow);

    // attach: the container's output from now on.
    let attach = support::KubectlStream::start(s, 33, &["attach", "web"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        ok(
            s,
            33,
            &[
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                "echo attached-line > /proc/1/fd/1",
            ],
        );
        seen = !attach
            .lines_with("attached-line", 1, Duration::from_millis(500))
            .is_empty();
    }
    assert!(seen, "kubectl attach did not stream the container's output");
    drop(attach);

    python_exec_and_port_forward(s);

    // exec -it on a terminal (util-linux `script` gives kubectl one): a pty in the container.
    if std::path::Path::new("/usr/bin/script").exists() {
        for minor in [33u32, 27] {
            let cmd = format!(
                "{} --kubeconfig {} --cache-dir {} exec -it web -- sh -c 'test -t 0 && echo tty-yes; stty size'",
                kubectl_path(minor).display(),
                s.kubeconfig().display(),
                s.dir.join(format!("tty-cache-{minor}")).display()
            );
            let out = Command::new("script")
                .args(["-q", "-e", "-c", &cmd, "/dev/null"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("tty-yes"), "1.{minor}: {text} {out:?}");
        }
    }

    for minor in [33u32, 27] {
        if !kubectl_path(minor).exists() {
            continue;
        }
        // exec: output and the exit code; the container's env and working dir.
        let out = kubectl(
            s,
            minor,
            &[
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                "echo hi; echo oops >&2; exit 3",
            ],
        );
        assert_eq!(out.status.code(), Some(3), "1.{minor}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("oops"),
            "{out:?}"
        );
        assert_eq!(
            ok(
                s,
                minor,
                &["exec", "web", "--", "sh", "-c", "echo $GREETING $(pwd)"]
            ),
            "hello-env /tmp\n"
        );
        // exec -i: stdin reaches the process, EOF ends it.
        let piped = s.ok_stdin(
            minor,
            &["exec", "-i", "web", "--", "cat"],
            "from-stdin\nline two\n",
        );
        assert_eq!(piped, "from-stdin\nline two\n", "1.{minor}");
        // A missing binary is a clear error.
        let out = kubectl(s, minor, &["exec", "web", "--", "nosuch-binary"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("executable file not found"),
            "1.{minor}: {err}"
        );
        // port-forward to the pod's HTTP server.
        let resp = port_forward_get(s, minor);
        assert!(resp.contains("served-from-pod"), "1.{minor}: {resp}");
    }

    // nodes/{name}/proxy: the kubelet's own endpoints through the apiserver.
    assert_eq!(
        ok(s, 33, &["get", "--raw", "/api/v1/nodes/n1/proxy/healthz"]),
        "ok"
    );
    let pods: serde_json::Value =
        serde_json::from_str(&ok(s, 33, &["get", "--raw", "/api/v1/nodes/n1/proxy/pods"])).unwrap();
    assert_eq!(pods["items"][0]["metadata"]["name"], "web", "{pods}");
    assert_eq!(
        pods["items"][0]["status"]["containerStatuses"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Bad input: a missing pod, a missing container.
    let err = s.err(33, &["exec", "nosuch", "--", "true"]);
    assert!(err.contains("pods \"nosuch\" not found"), "{err}");
    let err = s.err(33, &["logs", "nosuch"]);
    assert!(err.contains("pods \"nosuch\" not found"), "{err}");
    let err = s.err(33, &["logs", "web", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );
    let err = s.err(33, &["exec", "web", "-c", "nope", "--", "true"]);
    assert!(err.contains("nope"), "{err}");
    // A pod on a node whose kubelet does not answer, and a pod bound to no node.
    let n2 = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n2\n";
    assert!(
        s.kubectl_stdin(33, &["create", "--validate=false", "-f", "-"], Some(n2))
            .status
            .success()
    );
    ok(
        s,
        33,
        &[
            "patch",
            "node",
            "n2",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"}],"daemonEndpoints":{"kubeletEndpoint":{"Port":1}}}}"#,
        ],
    );
    for (pod, node) in [("lost", "\n  nodeName: n2"), ("unbound", "")] {
        let y = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\nspec:{node}\n  containers:\n  - name: app\n    image: x\n"
        );
        assert!(
            s.kubectl_stdin(33, &["create", "--validate=false", "-f", "-"], Some(&y))
                .status
                .success()
        );
    }
    let err = s.err(33, &["logs", "lost"]);
    assert!(err.contains("error dialing backend"), "{err}");
    let err = s.err(33, &["logs", "unbound"]);
    assert!(err.contains("does not have a host assigned"), "{err}");
}

/// The Python `kubernetes` client: exec over WebSocket (v5 offered with v4) and port-forward
/// over the v4 channel protocol with `?ports=`.
fn python_exec_and_port_forward(s: &TestServer) {
    let have = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !have {
        eprintln!("SKIP python part: the Python `kubernetes` package is not installed");
        return;
    }
    let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import stream, portforward
config.load_kube_config(sys.argv[1])
core = client.CoreV1Api()
r = stream(core.connect_get_namespaced_pod_exec, 'web', 'default',
           command=['sh', '-c', 'echo py-$GREETING; exit 4'],
           stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
r.run_forever(timeout=20)
print('exec', r.read_stdout().strip(), r.returncode)
pf = portforward(core.connect_get_namespaced_pod_portforward, 'web', 'default', ports='8080')
sock = pf.socket(8080)
sock.setblocking(True)
sock.settimeout(20)
sock.sendall(b'GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n')
data = b''
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
sock.close()
print('pf', 'served-from-pod' in data.decode(errors='replace'))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(s.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("exec py-hello-env 4"), "{stdout}\n{stderr}");
    assert!(stdout.contains("pf True"), "{stdout}\n{stderr}");
}
