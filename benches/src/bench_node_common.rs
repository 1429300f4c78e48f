//! Shared by the node bench binaries (`node_start`, `pod_startup`): a busybox-static image
//! as an OCI layout named `bench/busybox:1`, and percentiles. Included with `#[path]`.

use std::path::Path;
use std::time::Duration;

use node::image::oci::Digest;

/// Writes the image layout under `dir` and returns its path.
pub(crate) fn busybox_layout(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let bb = std::fs::read("/bin/busybox").expect("busybox-static installed");
    // Every numeric header field set, as real image layers have them.
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    let mut h = header(tar::EntryType::Regular, 0o755, bb.len() as u64);
    b.append_data(&mut h, "bin/busybox", &bb[..]).unwrap();
    for a in ["sh", "sleep", "true"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
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

/// The `p` quantile (0..=1) of `v` (sorted in place).
pub(crate) fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}
