//! The shim binary the kubelet starts, as root: the small stand-alone `kubeshard-shim` next
//! to the kubelet's binary when it is of the same build, else the binary itself (which serves
//! as its own shim); pods run either way.

mod kubelet_common;

use std::path::{Path, PathBuf};

use kubelet_common::*;

/// argv[0] of the shims that run `pod`'s sandbox holder and containers (from the runtime's
/// `state.json` records and `/proc/<shim pid>/cmdline`).
fn shim_programs(dir: &NodeDir, pod: &str) -> Vec<String> {
    let rt = dir.runtime();
    let sbs: Vec<String> = rt
        .list_sandboxes()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == pod)
        .map(|s| s.id)
        .collect();
    let mut dirs: Vec<PathBuf> = sbs
        .iter()
        .map(|id| dir.data.join("run/sandboxes").join(id))
        .collect();
    for c in rt.list_containers().unwrap() {
        if sbs.contains(&c.sandbox_id) {
            dirs.push(dir.data.join("run/containers").join(&c.id));
        }
    }
    dirs.iter()
        .map(|d| {
            let st: node::spec::ProcState =
                serde_json::from_slice(&std::fs::read(d.join("state.json")).unwrap()).unwrap();
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", st.shim_pid)).unwrap();
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(argv0).into_owned()
        })
        .collect()
}

fn link(target: &Path, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

#[test]
fn kubelet_uses_the_stand_alone_shim_and_falls_back_to_its_own_binary() {
    let Some(dir) = NodeDir::new("kubelet_uses_the_stand_alone_shim") else {
        return;
    };
    let server = Server::start();
    // A stand-in for the `kubeshard` binary (the test shim binary answers as its own shim),
    // with no `kubeshard-shim` next to it at first.
    let bins = tempfile::tempdir().unwrap();
    let real = PathBuf::from(env!("CARGO_BIN_EXE_kubeshard-shim"));
    let main_exe = bins.path().join("kubeshard");
    link(&real, &main_exe);
    rt().block_on(async {
        let client = server.client();
        let n = "node-shim";
        let mut cfg = dir.config(n, Some(&server.kubeconfig));
        cfg.shim_program = main_exe.clone();
        let k = RunningKubelet::start(cfg.clone());
        create(&client, &sh_pod(n, "own", "sleep 3600", "Always")).await;
        wait_pod(&client, "own", 60, "Running", |p| {
            (phase(p) == "Running").then_some(())
        })
        .await;
        let progs = shim_programs(&dir, "own");
        assert_eq!(progs.len(), 2, "sandbox and container shims: {progs:?}");
        for p in &progs {
            assert_eq!(Path::new(p), main_exe, "fallback to the binary itself");
        }
        k.stop().await;

        // Now the same build's stand-alone shim sits next to it: a restarted kubelet uses it.
        let small = bins.path().join(node::shim::SHIM_BIN);
        link(&real, &small);
        let k = RunningKubelet::start(cfg);
        create(&client, &sh_pod(n, "small", "sleep 3600", "Always")).await;
        wait_pod(&client, "small", 60, "Running", |p| {
            (phase(p) == "Running").then_some(())
        })
        .await;
        let progs = shim_programs(&dir, "small");
        assert_eq!(progs.len(), 2, "sandbox and container shims: {progs:?}");
        for p in &progs {
            assert_eq!(Path::new(p), small, "the stand-alone shim");
        }
        // The adopted pod kept its shims and still runs.
        wait_pod(&client, "own", 10, "Running", |p| {
            (phase(p) == "Running").then_some(())
        })
        .await;
        k.stop().await;
        dir.cleanup().await;
    });
}
