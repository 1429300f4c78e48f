//! `Runtime::exec_sync` and `Runtime::exec` as root: processes that join a running
//! container (namespaces, cgroup, identity, env, cwd), on pipes or a pty.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use node::cgroup::CgroupDriver;
use node::runtime::{
    ContainerConfig, ExecRequest, Runtime, RuntimeConfig, RuntimeError, SandboxConfig,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Env {
    _tmp: tempfile::TempDir,
    rt: Runtime,
    sandbox: String,
    container: String,
}

async fn setup(test: &str) -> Option<Env> {
    if !common::can_run_as_root(test) {
        return None;
    }
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
        PathBuf::from(env!("CARGO_BIN_EXE_kubeshard-shim")),
    )
    .unwrap();
    cfg.cgroups = cgroups;
    let rt = Runtime::new(cfg).unwrap();
    rt.images()
        .import(&common::busybox_image(tmp.path()))
        .unwrap();
    let sandbox = rt
        .create_sandbox(&SandboxConfig {
            name: "p".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            hostname: "exec-pod".into(),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
    let container = rt
        .create_container(
            &sandbox,
            &ContainerConfig {
                name: "c".into(),
                image: "kubeshard.test/busybox:1".into(),
                command: vec!["sh".into(), "-c".into(), "exec sleep 600".into()],
                env: vec![("FOO".into(), "bar".into())],
                working_dir: Some("/tmp".into()),
                user: Some("65534".into()),
                ..ContainerConfig::default()
            },
        )
        .await
        .unwrap();
    rt.start_container(&container).await.unwrap();
    Some(Env {
        _tmp: tmp,
        rt,
        sandbox,
        container,
    })
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_joins_the_container() {
    let Some(e) = setup("exec_sync_joins_the_container").await else {
        return;
    };
    let t = Duration::from_secs(20);
    // Output, exit code, env, cwd, identity, hostname, the container's files and PID 1.
    let out = e
        .rt
        .exec_sync(
            &e.container,
            &argv(&[
                "sh",
                "-c",
                "echo $FOO $(pwd) $(id -u) $(hostname); grep -c . /etc/passwd; cat /proc/1/cmdline | busybox tr '\\0' ' '; echo bad >&2; exit 7",
            ]),
            t,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 7);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("bar /tmp 65534 exec-pod\n2\n"),
        "{stdout}"
    );
    assert!(stdout.contains("sleep 600"), "{stdout}");
    assert_eq!(out.stderr, b"bad\n");
    // In the container's cgroup, without privileges beyond the container's.
    let out =
        e.rt.exec_sync(
            &e.container,
            &argv(&[
                "sh",
                "-c",
                "grep -c NoNewPrivs:.1 /proc/self/status; grep CapEff /proc/self/status",
            ]),
            t,
        )
        .await
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.starts_with("1\n"), "{s}");
    assert!(s.contains("CapEff:\t0000000000000000"), "{s}");
    // A missing binary.
    match e.rt.exec_sync(&e.container, &argv(&["nosuch"]), t).await {
        Err(RuntimeError::StartFailed(m)) => {
            assert!(m.contains("executable file not found in $PATH"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // A timeout kills the process.
    let started = std::time::Instant::now();
    match e
        .rt
        .exec_sync(
            &e.container,
            &argv(&["sleep", "30"]),
            Duration::from_millis(500),
        )
        .await
    {
        Err(RuntimeError::Timeout(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The same runtime as the probes' exec.
    use node::probe::ExecProber;
    let (code, out) = ExecProber::exec(
        &e.rt,
        &e.container,
        &argv(&["sh", "-c", "echo ok; exit 2"]),
        t,
    )
    .await
    .unwrap();
    assert_eq!((code, out.as_slice()), (2, &b"ok\n"[..]));
    let (code, out) = ExecProber::exec(
        &e.rt,
        &e.container,
        &argv(&["sleep", "30"]),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    assert_eq!(code, 124);
    assert!(String::from_utf8_lossy(&out).contains("timed out"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps =
        e.rt.exec_sync(&e.container, &argv(&["ps"]), t)
            .await
            .unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("sleep 30"),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
    e.rt.remove_sandbox(&e.sandbox).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_stdin_and_tty() {
    let Some(e) = setup("exec_with_stdin_and_tty").await else {
        return;
    };
    // Pipes: stdin in, EOF ends `cat`.
    let mut s =
        e.rt.exec(
            &e.container,
            ExecRequest {
                argv: argv(&["cat"]),
                tty: false,
                stdin: true,
            },
        )
        .await
        .unwrap();
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"through-stdin\n").await.unwrap();
    drop(stdin);
    let mut out = String::new();
    s.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(out, "through-stdin\n");
    assert_eq!(s.wait().await.unwrap().exit_code, 0);

    // A terminal, with its size set.
    let mut s =
        e.rt.exec(
            &e.container,
            ExecRequest {
                argv: argv(&[
                    "sh",
                    "-c",
                    "test -t 0 && echo is-a-tty; read x; echo got-$x",
                ]),
                tty: true,
                stdin: true,
            },
        )
        .await
        .unwrap();
    s.resize(100, 40).unwrap();
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"abc\n").await.unwrap();
    stdin.flush().await.unwrap();
    let mut out = s.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&got).contains("got-abc") {
        let n = tokio::time::timeout_at(deadline, out.read(&mut buf))
            .await
            .expect("tty output")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("is-a-tty"), "{text}");
    assert!(text.contains("got-abc"), "{text}");
    assert_eq!(s.wait().await.unwrap().exit_code, 0);
    e.rt.remove_sandbox(&e.sandbox).await.unwrap();
}
