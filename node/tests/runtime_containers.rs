//! The built-in runtime end to end, as root: real namespaces, overlay mounts, cgroups and
//! processes from a busybox image built in the test.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use node::cgroup::{CgroupDriver, Resources};
use node::runtime::{ContainerConfig, ContainerState, Runtime, RuntimeConfig, SandboxConfig};

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cfg: RuntimeConfig,
    rt: Runtime,
}

fn setup(test: &str) -> Option<Env> {
    if !common::can_run_as_root(test) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let group = format!("kubeshard-test-{}", uuid::Uuid::new_v4().simple());
    let cgroups = match CgroupDriver::detect(&group) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP {test}: {e}");
            return None;
        }
    };
    let mut cfg = RuntimeConfig::new(
        &root.join("data"),
        PathBuf::from(env!("CARGO_BIN_EXE_kubeshard-shim")),
    )
    .unwrap();
    cfg.cgroups = cgroups;
    cfg.start_timeout = Duration::from_secs(20);
    let rt = Runtime::new(cfg.clone()).unwrap();
    rt.images().import(&common::busybox_image(&root)).unwrap();
    Some(Env {
        _tmp: tmp,
        root,
        cfg,
        rt,
    })
}

fn sh(script: &str) -> ContainerConfig {
    ContainerConfig {
        name: "c".into(),
        image: "kubeshard.test/busybox:1".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..ContainerConfig::default()
    }
}

fn sandbox(name: &str) -> SandboxConfig {
    SandboxConfig {
        name: name.into(),
        namespace: "default".into(),
        uid: "u1".into(),
        hostname: name.into(),
        dns_servers: vec!["127.0.0.53".into()],
        ..SandboxConfig::default()
    }
}

fn log_lines(path: &Path) -> Vec<(String, String)> {
    node::logs::read_records(path, 5)
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.stream, r.line))
        .collect()
}

fn cgroup_dirs(cfg: &RuntimeConfig) -> Vec<PathBuf> {
    match &cfg.cgroups {
        CgroupDriver::V1 { bases } => bases.iter().map(|(_, b)| b.clone()).collect(),
        CgroupDriver::V2 { base } => vec![base.clone()],
    }
}

/// After removal: no pod cgroups, no state, no mounts of ours, no holder process.
fn assert_clean(env: &Env, holder_pids: &[i32]) {
    for base in cgroup_dirs(&env.cfg) {
        let left: Vec<_> = std::fs::read_dir(&base)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "cgroups left: {left:?}");
        let _ = std::fs::remove_dir(&base);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(env.root.to_str().unwrap()),
        "mounts left:\n{mountinfo}"
    );
    for pid in holder_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "holder {pid} still there"
        );
    }
    assert_eq!(
        std::fs::read_dir(env.cfg.run_dir.join("containers"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(env.cfg.run_dir.join("sandboxes"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "current_thread")]
async fn exit_code_env_and_cri_log() {
    let Some(env) = setup("exit_code_env_and_cri_log") else {
        return;
    };
    let sb = env.rt.create_sandbox(&sandbox("pod-one")).await.unwrap();
    let holder = env.rt.sandbox_status(&sb).unwrap().pid.unwrap();
    let mut c = sh(
        "echo hello; echo oops >&2; echo $FROM_IMAGE $HOSTNAME $EXTRA; pwd; cat /etc/hostname; exit 3",
    );
    c.working_dir = Some("/work".into());
    c.env = vec![("EXTRA".into(), "x=1".into())];
    let id = env.rt.create_container(&sb, &c).await.unwrap();
    assert_eq!(
        env.rt.container_status(&id).unwrap().state,
        ContainerState::Created
    );
    env.rt.start_container(&id).await.unwrap();
    let st = env
        .rt
        .wait_container(&id, Duration::from_secs(20))
        .await
        .unwrap();
    let ContainerState::Exited(exit) = &st.state else {
        panic!("{st:?}")
    };
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
    assert_eq!(st.reason(), Some("Error"));
    let lines = log_lines(&st.log_path);
    let want: Vec<(String, String)> = [
        ("stdout", "hello"),
        ("stderr", "oops"),
        ("stdout", "yes pod-one x=1"),
        ("stdout", "/work"),
        ("stdout", "pod-one"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    // stdout and stderr are separate pipes: compare per stream.
    for stream in ["stdout", "stderr"] {
        let got: Vec<_> = lines.iter().filter(|l| l.0 == stream).collect();
        let exp: Vec<_> = want.iter().filter(|l| l.0 == stream).collect();
        let shim_log = std::fs::read_to_string(
            env.cfg
                .run_dir
                .join("containers")
                .join(&id)
                .join("shim.log"),
        )
        .unwrap_or_default();
        assert_eq!(got, exp, "shim log: {shim_log}");
    }
    let raw = std::fs::read_to_string(&st.log_path).unwrap();
    let first = raw.lines().find(|l| l.contains("hello")).unwrap();
    assert!(
        first.ends_with(" stdout F hello") && first.as_bytes()[10] == b'T',
        "{first}"
    );
    // A bad command fails the start and records it.
    let bad = env
        .rt
        .create_container(
            &sb,
            &ContainerConfig {
                command: vec!["/nonexistent".into()],
                ..sh("")
            },
        )
        .await
        .unwrap();
    let err = env.rt.start_container(&bad).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent"), "{err}");
    let ContainerState::Exited(e) = env.rt.container_status(&bad).unwrap().state else {
        panic!()
    };
    assert!(e.start_error.is_some());
    env.rt.remove_sandbox(&sb).await.unwrap();
    assert_clean(&env, &[holder]);
}

#[tokio::test(flavor = "current_thread")]
async fn pod_containers_share_localhost_and_hostname() {
    let Some(env) = setup("pod_containers_share_localhost_and_hostname") else {
        return;
    };
    let sb = env.rt.create_sandbox(&sandbox("pod-net")).await.unwrap();
    let holder = env.rt.sandbox_status(&sb).unwrap().pid.unwrap();
    let server = env
        .rt
        .create_container(&sb, &sh("hostname; nc -l -p 8080"))
        .await
        .unwrap();
    env.rt.start_container(&server).await.unwrap();
    let client = env
        .rt
        .create_container(
            &sb,
            // The message comes from a here-document, written before nc starts: with
            // `echo | nc`, busybox nc could see the server's early half-close (its stdin
            // is empty) before echo's line and quit without sending anything.
            &sh("hostname; i=0; while [ $i -lt 100 ]; do nc -w 1 127.0.0.1 8080 <<EOF && exit 0\nhello-from-b\nEOF\ni=$((i+1)); sleep 0.05; done; exit 1"),
        )
        .await
        .unwrap();
    env.rt.start_container(&client).await.unwrap();
    let st = env
        .rt
        .wait_container(&client, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        matches!(&st.state, ContainerState::Exited(e) if e.exit_code == 0),
        "{st:?} {:?}",
        log_lines(&st.log_path)
    );
    let server_log = env.rt.container_status(&server).unwrap().log_path;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log_lines(&server_log).iter().any(|l| l.1 == "hello-from-b") {
        assert!(
            Instant::now() < deadline,
            "server log: {:?}, server: {:?}, client log: {:?}",
            log_lines(&server_log),
            env.rt.container_status(&server).unwrap().state,
            log_lines(&st.log_path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log_lines(&server_log)[0].1, "pod-net");
    assert_eq!(log_lines(&st.log_path)[0].1, "pod-net");
    env.rt.remove_sandbox(&sb).await.unwrap();
    assert_clean(&env, &[holder]);
}

#[tokio::test(flavor = "current_thread")]
async fn memory_limit_oom_is_reported() {
    let Some(env) = setup("memory_limit_oom_is_reported") else {
        return;
    };
    let sb = env.rt.create_sandbox(&sandbox("pod-oom")).await.unwrap();
    let holder = env.rt.sandbox_status(&sb).unwrap().pid.unwrap();
    let mut c = sh("exec dd if=/dev/zero of=/dev/null bs=64M count=4");
    c.resources = Resources {
        memory_limit_bytes: Some(16 << 20),
        cpu_shares: Some(512),
        cpu_quota_us: Some(50_000),
        pids_limit: Some(64),
        ..Resources::default()
    };
    let id = env.rt.create_container(&sb, &c).await.unwrap();
    env.rt.start_container(&id).await.unwrap();
    let st = env
        .rt
        .wait_container(&id, Duration::from_secs(30))
        .await
        .unwrap();
    let ContainerState::Exited(exit) = &st.state else {
        panic!("{st:?}")
    };
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.signal, Some(9));
    assert_eq!(st.reason(), Some("OOMKilled"));
    // Without a limit the same command completes.
    let ok = env
        .rt
        .create_container(&sb, &sh("dd if=/dev/zero of=/dev/null bs=64M count=1"))
        .await
        .unwrap();
    env.rt.start_container(&ok).await.unwrap();
    let st = env
        .rt
        .wait_container(&ok, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(st.reason(), Some("Completed"), "{st:?}");
    env.rt.remove_sandbox(&sb).await.unwrap();
    assert_clean(&env, &[holder]);
}

#[tokio::test(flavor = "current_thread")]
async fn stop_grace_then_kill_and_adoption_after_restart() {
    let Some(env) = setup("stop_grace_then_kill_and_adoption_after_restart") else {
        return;
    };
    let sb = env.rt.create_sandbox(&sandbox("pod-stop")).await.unwrap();
    let holder = env.rt.sandbox_status(&sb).unwrap().pid.unwrap();
    // PID 1 without a TERM handler ignores SIGTERM: killed after the grace period.
    let stubborn = env
        .rt
        .create_container(&sb, &sh("exec sleep 1000"))
        .await
        .unwrap();
    env.rt.start_container(&stubborn).await.unwrap();
    // A handler: exits with its own status on SIGTERM.
    let polite = env
        .rt
        .create_container(
            &sb,
            &sh("trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done"),
        )
        .await
        .unwrap();
    env.rt.start_container(&polite).await.unwrap();

    // A restarted kubelet (a new Runtime over the same dirs) adopts both as running.
    drop(env.rt);
    let rt = Runtime::new(env.cfg.clone()).unwrap();
    let listed = rt.list_containers().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|c| c.state == ContainerState::Running),
        "{listed:?}"
    );
    assert_eq!(rt.list_sandboxes().unwrap().len(), 1);

    let polite_log = rt.container_status(&polite).unwrap().log_path;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log_lines(&polite_log).iter().any(|l| l.1 == "ready") {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let st = rt
        .stop_container(&polite, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(&st.state, ContainerState::Exited(e) if e.exit_code == 7 && e.signal.is_none()),
        "{st:?}"
    );
    assert!(log_lines(&polite_log).iter().any(|l| l.1 == "got-term"));

    let t = Instant::now();
    let st = rt
        .stop_container(&stubborn, Duration::from_millis(800))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(800));
    assert!(
        matches!(&st.state, ContainerState::Exited(e) if e.signal == Some(9) && e.exit_code == 137),
        "{st:?}"
    );

    rt.remove_sandbox(&sb).await.unwrap();
    let env = Env { rt, ..env };
    assert_clean(&env, &[holder]);
}

#[tokio::test(flavor = "current_thread")]
async fn user_capabilities_and_read_only_root() {
    let Some(env) = setup("user_capabilities_and_read_only_root") else {
        return;
    };
    let sb = env.rt.create_sandbox(&sandbox("pod-sec")).await.unwrap();
    let holder = env.rt.sandbox_status(&sb).unwrap().pid.unwrap();
    let script = "id -u; id -g; touch /x 2>/dev/null && echo writable || echo readonly; \
                  grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ls /dev | wc -l; \
                  touch /tmp/../etc/hosts && echo hosts-writable";
    let mut c = sh(script);
    c.user = Some("nobody".into());
    c.read_only_rootfs = true;
    let id = env.rt.create_container(&sb, &c).await.unwrap();
    env.rt.start_container(&id).await.unwrap();
    let st = env
        .rt
        .wait_container(&id, Duration::from_secs(20))
        .await
        .unwrap();
    let out: Vec<String> = log_lines(&st.log_path)
        .into_iter()
        .filter(|l| l.0 == "stdout")
        .map(|l| l.1)
        .collect();
    assert_eq!(out[0], "65534");
    assert_eq!(out[1], "65534");
    assert_eq!(out[2], "readonly");
    assert!(
        out.iter()
            .any(|l| l.starts_with("CapEff:") && l.ends_with("0000000000000000")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("CapBnd:") && l.ends_with("00000000a80425fb")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "{out:?}"
    );
    // Root keeps exactly the default set.
    let root = env
        .rt
        .create_container(
            &sb,
            &sh("grep CapEff /proc/self/status; touch /x && echo writable"),
        )
        .await
        .unwrap();
    env.rt.start_container(&root).await.unwrap();
    let st = env
        .rt
        .wait_container(&root, Duration::from_secs(20))
        .await
        .unwrap();
    let out: Vec<String> = log_lines(&st.log_path).into_iter().map(|l| l.1).collect();
    assert_eq!(
        out,
        vec![
            "CapEff:\t00000000a80425fb".to_string(),
            "writable".to_string()
        ]
    );
    env.rt.remove_sandbox(&sb).await.unwrap();
    assert_clean(&env, &[holder]);
}
