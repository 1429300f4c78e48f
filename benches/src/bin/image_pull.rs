//! Image pull time from a local registry: Debian's `docker-registry` on 127.0.0.1 (plain
//! HTTP), the busybox-static image pushed with `skopeo copy` (gzip layer). Measures a cold
//! pull into an empty store (manifest, config and layer downloaded, verified, stored), a warm
//! `imagePullPolicy: Always` re-pull (manifest resolved, blobs present), and the peer: `skopeo
//! copy docker://... oci:DIR` (containers/image, the library CRI-O and Podman pull with; its
//! figure includes the process start). Prints medians and p90 of N runs each.
//!
//! `cargo run --release -p kubeshard-benches --bin image_pull [-- N]`
//!
//! Needs `docker-registry`, `skopeo` and busybox-static installed.

#[path = "../bench_node_common.rs"]
mod bench_node_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use node::image::ImageStore;
use node::image::auth::Keyring;
use node::image::manager::{ImageGcPolicy, ImageManager, PullPolicy};
use node::image::registry::RegistryConfig;

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = bench_node_common::busybox_layout(tmp.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let storage = tmp.path().join("storage");
    let cfg = tmp.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .unwrap();
    let mut registry = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let image = format!("127.0.0.1:{port}/bench/busybox:1");
    let push = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-compress",
        ])
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("docker://{image}"))
        .status()
        .expect("skopeo installed");
    assert!(push.success(), "skopeo push failed");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let none = Keyring::new();
    let manager = |dir: &std::path::Path| {
        ImageManager::new(
            ImageStore::open(dir).unwrap(),
            RegistryConfig::new(dir),
            ImageGcPolicy::default(),
        )
    };
    let mut cold = Vec::new();
    let mut size = 0;
    for i in 0..runs {
        let dir = tmp.path().join(format!("cold-{i}"));
        let m = manager(&dir);
        let t = Instant::now();
        let (_, s, fetched) = rt.block_on(m.pull(&image, &none)).expect("pull");
        cold.push(t.elapsed());
        assert_eq!(s, fetched, "a cold pull fetches everything");
        size = s;
        let _ = std::fs::remove_dir_all(&dir);
    }
    let warm_dir = tmp.path().join("warm");
    let m = manager(&warm_dir);
    rt.block_on(m.pull(&image, &none)).expect("pull");
    let mut warm = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let e = rt
            .block_on(m.ensure(&image, PullPolicy::Always, &none))
            .expect("ensure");
        warm.push(t.elapsed());
        assert_eq!(e.pulled.map(|p| p.bytes_fetched), Some(0));
    }
    let mut peer = Vec::new();
    for i in 0..runs {
        let dir = tmp.path().join(format!("skopeo-{i}"));
        let t = Instant::now();
        let ok = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{image}"))
            .arg(format!("oci:{}", dir.display()))
            .status()
            .expect("skopeo")
            .success();
        peer.push(t.elapsed());
        assert!(ok, "skopeo pull failed");
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = registry.kill();
    let _ = registry.wait();
    let p = bench_node_common::pct;
    let (c50, c90) = (p(&mut cold, 0.5), p(&mut cold, 0.9));
    let (w50, w90) = (p(&mut warm, 0.5), p(&mut warm, 0.9));
    let (s50, s90) = (p(&mut peer, 0.5), p(&mut peer, 0.9));
    println!("image {image}: {size} bytes (config + gzip layer), {runs} runs each");
    println!("cold pull (empty store):        p50 {c50:?}  p90 {c90:?}");
    println!("warm pull (Always, blobs held): p50 {w50:?}  p90 {w90:?}");
    println!("skopeo copy docker:// -> oci:   p50 {s50:?}  p90 {s90:?}");
    println!(
        "cold p50 / skopeo p50 = {:.2}",
        c50.as_secs_f64() / s50.as_secs_f64()
    );
}
