//! Container start latency of the node's built-in runtime: create + start until the command
//! runs (the shim has seen `execve` succeed), image present and unpacked. One container at a
//! time, then 100 at once in one pod; prints p50/p99. Needs root and busybox-static.
//!
//! `cargo run --release -p kubeshard-benches --bin node_start`
//!
//! The binary is its own shim (it re-executes itself), like the `kubeshard` binary.

use std::path::Path;
use std::time::{Duration, Instant};

use node::cgroup::CgroupDriver;
use node::image::oci::Digest;
use node::runtime::{ContainerConfig, Runtime, RuntimeConfig, SandboxConfig};

fn busybox_layout(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let bb = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(bb.len() as u64);
    b.append_data(&mut h, "bin/busybox", &bb[..]).unwrap();
    for a in ["sh", "sleep", "true"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    let layer = b.into_inner().unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    };
    let ld = put(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [ld.to_string()]}
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": layer.len()}]
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(),
            "size": manifest.len(), "annotations": {"io.containerd.image.name": "bench/busybox:1"}}]}))
        .unwrap(),
    )
    .unwrap();
    layout
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn container() -> ContainerConfig {
    ContainerConfig {
        name: "c".into(),
        image: "bench/busybox:1".into(),
        command: vec!["sleep".into(), "1000".into()],
        ..ContainerConfig::default()
    }
}

async fn start_one(rt: &Runtime, sb: &str) -> (String, Duration) {
    let t = Instant::now();
    let id = rt.create_container(sb, &container()).await.expect("create");
    rt.start_container(&id).await.expect("start");
    (id, t.elapsed())
}

fn main() {
    node::shim::run_if_requested();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("node_start needs root");
        std::process::exit(1);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg =
        RuntimeConfig::new(&tmp.path().join("data"), std::env::current_exe().unwrap()).unwrap();
    cfg.cgroups = CgroupDriver::detect(&format!("kubeshard-bench-{}", std::process::id())).unwrap();
    let rt = Runtime::new(cfg).unwrap();
    rt.images().import(&busybox_layout(tmp.path())).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let sb = rt
            .create_sandbox(&SandboxConfig { name: "bench".into(), ..SandboxConfig::default() })
            .await
            .unwrap();
        // Warm up: the layer is unpacked on first use.
        let (id, _) = start_one(&rt, &sb).await;
        rt.remove_container(&id).await.unwrap();

        let mut one = Vec::new();
        for _ in 0..50 {
            let (id, d) = start_one(&rt, &sb).await;
            one.push(d);
            rt.remove_container(&id).await.unwrap();
        }
        println!(
            "1 container at a time (50 runs): p50 {:.2} ms, p99 {:.2} ms",
            pct(&mut one, 0.5).as_secs_f64() * 1e3,
            pct(&mut one, 0.99).as_secs_f64() * 1e3
        );

        let mut hundred = Vec::new();
        let mut batch_total = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let started = futures::future::join_all((0..100).map(|_| start_one(&rt, &sb))).await;
            batch_total.push(t.elapsed());
            for (id, d) in &started {
                hundred.push(*d);
                let _ = id;
            }
            for (id, _) in started {
                rt.remove_container(&id).await.unwrap();
            }
        }
        println!(
            "100 containers at once (3 batches): p50 {:.2} ms, p99 {:.2} ms, all 100 running after {:.2} ms (median batch)",
            pct(&mut hundred, 0.5).as_secs_f64() * 1e3,
            pct(&mut hundred, 0.99).as_secs_f64() * 1e3,
            pct(&mut batch_total, 0.5).as_secs_f64() * 1e3
        );
        rt.remove_sandbox(&sb).await.unwrap();
    });
}
