//! Shims forked from the zygote (`node::zygote`), as root, end to end: the runtime's shim
//! program does not exist, so every sandbox and container here can only start through the
//! zygote. Covers: the container runs and logs, its shim is a child of the zygote under its
//! own name, a second runtime over the same run dir (a restarted kubelet) adopts the running
//! container, a stop records the exit, the zygote reaps the exited shim, and removal cleans up.
//!
//! `harness = false`: the zygote must be forked while the process has one thread, before a
//! test harness or a Tokio runtime starts any.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use node::cgroup::CgroupDriver;
use node::runtime::{ContainerConfig, ContainerState, Runtime, RuntimeConfig, SandboxConfig};

fn main() {
    let zygote = node::zygote::start();
    if !common::can_run_as_root("shim_zygote") {
        return;
    }
    assert!(zygote, "the zygote did not start");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
    println!("shim_zygote: ok");
}

/// `/proc/PID/status` field `name`.
fn status_field(pid: i32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
}

fn shim_pid(cfg: &RuntimeConfig, id: &str) -> i32 {
    let state = std::fs::read(cfg.run_dir.join("containers").join(id).join("state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&state).unwrap();
    v["shim_pid"].as_i64().unwrap() as i32
}

async fn run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let group = format!("kubeshard-test-{}", uuid::Uuid::new_v4().simple());
    let cgroups = match CgroupDriver::detect(&group) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP shim_zygote: {e}");
            return;
        }
    };
    // No shim binary: only the zygote can start shims.
    let mut cfg =
        RuntimeConfig::new(&root.join("data"), PathBuf::from("/nonexistent/kubeshard")).unwrap();
    cfg.cgroups = cgroups;
    cfg.start_timeout = Duration::from_secs(20);
    let rt = Runtime::new(cfg.clone()).unwrap();
    rt.images().import(&common::busybox_image(&root)).unwrap();

    let sb = rt
        .create_sandbox(&SandboxConfig {
            name: "zy".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            hostname: "zy".into(),
            dns_servers: vec!["127.0.0.53".into()],
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
    let holder = rt.sandbox_status(&sb).unwrap().pid.unwrap();
    let id = rt
        .create_container(
            &sb,
            &ContainerConfig {
                name: "c".into(),
                image: "kubeshard.test/busybox:1".into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo hello from $(hostname); exec sleep 1000".into(),
                ],
                ..ContainerConfig::default()
            },
        )
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    let st = rt.container_status(&id).unwrap();
    assert_eq!(st.state, ContainerState::Running);

    // The shim: forked from the zygote, named, its own session leader.
    let shim = shim_pid(&cfg, &id);
    let comm = std::fs::read_to_string(format!("/proc/{shim}/comm")).unwrap();
    assert_eq!(comm.trim_end(), node::zygote::CONTAINER_SHIM_NAME);
    let ppid: i32 = status_field(shim, "PPid").unwrap().parse().unwrap();
    let parent_comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap();
    assert_eq!(
        parent_comm.trim_end(),
        node::zygote::ZYGOTE_NAME,
        "shim's parent {ppid}"
    );
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(shim)))
            .unwrap()
            .as_raw(),
        shim
    );

    // Its output reaches the CRI log through the shim.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = node::logs::read_records(&st.log_path, 5)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.line)
            .collect();
        if lines.iter().any(|l| l == "hello from zy") {
            break;
        }
        assert!(Instant::now() < deadline, "log: {lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A restarted kubelet (a second runtime over the same run dir) adopts it as running.
    let rt2 = Runtime::new(cfg.clone()).unwrap();
    let listed = rt2.list_containers().unwrap();
    assert!(
        listed
            .iter()
            .any(|c| c.id == id && c.state == ContainerState::Running),
        "{listed:?}"
    );

    // Stopped: the shim records the exit, and the zygote reaps it (no zombie left).
    let st = rt2
        .stop_container(&id, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        matches!(st.state, ContainerState::Exited(ref e) if e.signal.is_some() || e.exit_code != 0),
        "{st:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{shim}")).exists() {
        assert!(
            Instant::now() < deadline,
            "shim {shim} not reaped: {:?}",
            status_field(shim, "State")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    rt2.remove_container(&id).await.unwrap();
    rt2.remove_sandbox(&sb).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{holder}")).exists() {
        assert!(Instant::now() < deadline, "holder {holder} still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let CgroupDriver::V1 { bases } = &cfg.cgroups {
        for (_, b) in bases {
            let _ = std::fs::remove_dir(b);
        }
    } else if let CgroupDriver::V2 { base } = &cfg.cgroups {
        let _ = std::fs::remove_dir(base);
    }
}
