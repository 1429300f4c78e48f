//! Attach with stdin and a terminal end to end, as root: the real kubectl (1.33 over
//! WebSocket v5, 1.27 over SPDY) -> the in-process apiserver's `pods/attach` -> the kubelet's
//! `/attach` -> the container's shim, which keeps the container's stdin (a pipe, or a pty
//! with `tty: true`) open across attaches.
//!
//! - `stdin: true`: two attaches in a row each send a line and get the container's answer
//!   (the stdin stays open between them; a client's stdin EOF ends its attach only);
//! - `stdinOnce: true`: the attached client's EOF closes the container's stdin (cat exits);
//! - `kubectl run -i --rm` with stdin piped: the answer, then the pod is gone;
//! - `tty: true`: `kubectl attach -it` on a terminal (util-linux `script`): a shell on a
//!   pty, its size from kubectl's resize channel.

mod kubelet_common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use api::client::Api;
use k8s_openapi::api::core::v1::Pod;
use kubelet_common::*;
use serde_json::json;

fn kubectl_path(minor: u32) -> PathBuf {
    PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"))
}

/// Runs `cmd` with `input` on its stdin; kills it after `secs`.
fn run_with_input(mut cmd: Command, input: &str, secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let re = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: ro.join().unwrap(),
        stderr: re.join().unwrap(),
    }
}

fn kubectl(kc: &Path, minor: u32, args: &[&str]) -> Command {
    let mut c = Command::new(kubectl_path(minor));
    c.arg("--kubeconfig")
        .arg(kc)
        .arg("--cache-dir")
        .arg(kc.with_file_name(format!("cache-{minor}")))
        .args(args);
    c
}

/// `kubectl args` with `input` piped in, off the async threads.
async fn kubectl_input(kc: &Path, minor: u32, args: &[&str], input: &str) -> Output {
    let cmd = kubectl(kc, minor, args);
    let input = input.to_string();
    tokio::task::spawn_blocking(move || run_with_input(cmd, &input, 60))
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn attach_with_stdin_and_tty() {
    let Some(dir) = NodeDir::new("attach_with_stdin_and_tty") else {
        return;
    };
    if !kubectl_path(33).exists() || !kubectl_path(27).exists() {
        eprintln!("SKIP attach_with_stdin_and_tty: needs kubectl 1.33 and 1.27");
        return;
    }
    let server = Server::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kc = server.kubeconfig.clone();
    rt().block_on(async {
        let client = server.client();
        let n = "node-at";
        let mut cfg = dir.config(n, Some(&kc));
        cfg.kubelet_port = port;
        let k = RunningKubelet::start(cfg);
        create(&client, &pod(n, json!({"metadata": {"name": "lines", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": IMAGE, "stdin": true,
                "command": ["sh", "-c", "while read l; do echo got-$l; done; echo stdin-closed"]}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "once", "namespace": "default"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": IMAGE,
                "stdin": true, "stdinOnce": true, "command": ["cat"]}]}}))).await;
        create(&client, &pod(n, json!({"metadata": {"name": "term", "namespace": "default"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": IMAGE,
                "stdin": true, "tty": true, "command": ["sh"]}]}}))).await;
        for p in ["lines", "once", "term"] {
            wait_pod(&client, p, 60, "Running", |p| (phase(p) == "Running").then_some(())).await;
        }

        // stdin: true — one attach per kubectl, the container's stdin open between them.
        for minor in [33u32, 27] {
            let out = kubectl_input(&kc, minor, &["attach", "-i", "lines"], &format!("from-{minor}\n")).await;
            let so = text(&out.stdout);
            assert!(so.contains(&format!("got-from-{minor}")), "1.{minor}: {so} / {}", text(&out.stderr));
            assert!(!so.contains("stdin-closed"), "1.{minor}: {so}");
            assert!(out.status.success(), "1.{minor}: {out:?}");
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        assert_eq!(phase(&api.get("lines").await.unwrap()), "Running");

        // stdinOnce: the client's EOF closes the container's stdin; cat ends, the pod succeeds.
        let out = kubectl_input(&kc, 27, &["attach", "-i", "once"], "hello-once\n").await;
        assert!(text(&out.stdout).contains("hello-once"), "{out:?}");
        wait_pod(&client, "once", 30, "Succeeded", |p| (phase(p) == "Succeeded").then_some(())).await;

        // kubectl run -i --rm: stdin piped to a new pod, its answer back, the pod deleted.
        let overrides = json!({"apiVersion": "v1", "spec": {"nodeName": n}}).to_string();
        let out = kubectl_input(
            &kc,
            33,
            &["run", "runner", "-i", "--rm", "--restart=Never", "--image", IMAGE,
              "--image-pull-policy=IfNotPresent", "--overrides", &overrides, "--pod-running-timeout=60s",
              "--", "sh", "-c", "read x; echo run-got-$x"],
            "abc\n",
        )
        .await;
        assert!(text(&out.stdout).contains("run-got-abc"), "{out:?}");
        assert!(out.status.success(), "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while api.get_opt("runner").await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "kubectl run --rm left the pod");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // tty: a shell on a pty through `kubectl attach -it`, given a terminal by `script`;
        // kubectl sends the terminal's size over the resize channel.
        if Path::new("/usr/bin/script").exists() {
            let cmd = format!(
                "stty rows 33 cols 101; {} --kubeconfig {} --cache-dir {} attach -it term",
                kubectl_path(33).display(),
                kc.display(),
                kc.with_file_name("cache-tty").display()
            );
            let mut c = Command::new("script");
            c.args(["-q", "-e", "-c", &cmd, "/dev/null"]);
            let out = tokio::task::spawn_blocking(move || {
                run_with_input(c, "test -t 0 && echo tty-$((6*7)); stty size; exit\n", 60)
            })
            .await
            .unwrap();
            let so = text(&out.stdout);
            assert!(so.contains("tty-42"), "{so} / {}", text(&out.stderr));
            assert!(so.contains("33 101"), "{so}");
            wait_pod(&client, "term", 30, "Succeeded", |p| (phase(p) == "Succeeded").then_some(())).await;
        }
        k.stop().await;
        dir.cleanup().await;
    });
}
