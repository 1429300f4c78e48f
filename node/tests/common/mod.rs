//! Test images built from Debian's busybox-static, as OCI layouts.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use node::image::oci::Digest;

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether the machine can run the root-only tests; prints why not.
pub fn can_run_as_root(test: &str) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP {test}: needs root (namespaces, mounts, cgroups)");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        eprintln!("SKIP {test}: {BUSYBOX} missing (apt-get install busybox-static)");
        return false;
    }
    true
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(0);
    h.set_path(path).unwrap();
    h
}

/// A layer tar from entries: (path, kind, content or link target).
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// Builds a tar; names are written raw (so hostile `..` names survive).
pub fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            Entry::Dir(p) => {
                let mut h = header("x", tar::EntryType::Directory, 0o755, 0);
                set_raw_name(&mut h, p);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Entry::File(p, data, mode) => {
                let mut h = header("x", tar::EntryType::Regular, *mode, data.len() as u64);
                set_raw_name(&mut h, p);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            Entry::Symlink(p, t) | Entry::Hardlink(p, t) => {
                let kind = if matches!(e, Entry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = header("x", kind, 0o777, 0);
                set_raw_name(&mut h, p);
                h.set_link_name(t).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn set_raw_name(h: &mut tar::Header, name: &str) {
    let bytes = name.as_bytes();
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name = [0; 100];
    gnu.name[..bytes.len()].copy_from_slice(bytes);
}

/// The busybox base layer: /bin/busybox, applet symlinks, /etc, /tmp, /root.
pub fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read(BUSYBOX).expect("busybox-static");
    let applets = [
        "sh", "echo", "cat", "sleep", "nc", "hostname", "dd", "ls", "true", "false", "head", "id",
        "wc", "mount", "ps", "grep", "touch", "env", "pwd",
    ];
    let mut entries = vec![
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", &bb, 0o755),
        Entry::Dir("etc/"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
            0o644,
        ),
        Entry::File("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        Entry::Dir("tmp/"),
        Entry::Dir("root/"),
    ];
    let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    for l in &links {
        entries.push(Entry::Symlink(l, "busybox"));
    }
    layer_tar(&entries)
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d
}

/// Writes an OCI layout at `layout` with `layers` (uncompressed tars, base first), the
/// given image config `exec` part, named `name`. Returns the layout path.
pub fn oci_layout(
    layout: &Path,
    name: &str,
    layers: &[Vec<u8>],
    exec: serde_json::Value,
) -> PathBuf {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = write_blob(layout, l);
        diff_ids.push(d.to_string());
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d.to_string(), "size": l.len()
        }));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": exec,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let cbytes = serde_json::to_vec(&config).unwrap();
    let cd = write_blob(layout, &cbytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cbytes.len()},
        "layers": descs
    });
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let md = write_blob(layout, &mbytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(), "size": mbytes.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"}}]
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    layout.to_path_buf()
}

/// The standard test image: busybox with `Cmd ["sh"]`, `Env PATH`, `WorkingDir /`.
pub fn busybox_image(dir: &Path) -> PathBuf {
    oci_layout(
        &dir.join("busybox-layout"),
        "kubeshard.test/busybox:1",
        &[busybox_layer()],
        serde_json::json!({"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": ["sh"], "WorkingDir": "/"}),
    )
}
