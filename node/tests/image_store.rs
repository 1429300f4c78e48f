//! The image store: imports (OCI layout, OCI archive, docker save), digest checks, and
//! unpacking hostile layers without writing outside the layer directory.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{Entry, layer_tar};
use node::image::{ImageError, ImageStore};

fn tar_dir(src: &Path, dst: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(dst).unwrap());
    b.append_dir_all(".", src).unwrap();
    b.finish().unwrap();
}

#[test]
fn oci_layout_imports_and_unpacks_once() {
    if !common::can_run_as_root("oci_layout_imports_and_unpacks_once") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = common::busybox_image(tmp.path());
    let store = ImageStore::open(&tmp.path().join("data")).unwrap();
    let imported = store.import(&layout).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(
        imported[0].names,
        vec!["kubeshard.test/busybox:1".to_string()]
    );
    let img = store.get("kubeshard.test/busybox:1").unwrap();
    assert_eq!(img.exec.cmd.as_deref(), Some(&["sh".to_string()][..]));
    assert_eq!(img.exec.working_dir.as_deref(), Some("/"));
    // Found by id prefix as well.
    assert_eq!(
        store.get(&img.record.config.hex()[..12]).unwrap().record,
        img.record
    );
    let dirs = store.ensure_unpacked(&img).unwrap();
    assert_eq!(dirs.len(), 1);
    let bb = std::fs::metadata(dirs[0].join("bin/busybox")).unwrap();
    assert_eq!(bb.mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    // A second call reuses the unpacked directory (same inode).
    let ino = std::fs::metadata(&dirs[0]).unwrap().ino();
    let again = store.ensure_unpacked(&img).unwrap();
    assert_eq!(std::fs::metadata(&again[0]).unwrap().ino(), ino);
    assert!(store.blob_path(&img.layers[0].digest).exists());
}

#[test]
fn oci_archive_and_docker_save_import() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = layer_tar(&[Entry::Dir("etc/"), Entry::File("etc/motd", b"hi\n", 0o644)]);
    let layout = common::oci_layout(
        &tmp.path().join("l"),
        "example.org/motd:v1",
        std::slice::from_ref(&layer),
        serde_json::json!({"Entrypoint": ["/bin/cat"], "Cmd": ["/etc/motd"], "User": "65534"}),
    );
    let archive = tmp.path().join("oci.tar");
    tar_dir(&layout, &archive);
    let store = ImageStore::open(&tmp.path().join("data")).unwrap();
    let got = store.import(&archive).unwrap();
    assert_eq!(got[0].names, vec!["example.org/motd:v1".to_string()]);
    let img = store.get("example.org/motd:v1").unwrap();
    assert_eq!(img.exec.user.as_deref(), Some("65534"));
    assert_eq!(
        img.exec.entrypoint.as_deref(),
        Some(&["/bin/cat".to_string()][..])
    );

    // docker save (legacy layout): manifest.json, <hex>.json config, <id>/layer.tar.
    let ds = tmp.path().join("ds");
    std::fs::create_dir_all(ds.join("abc")).unwrap();
    std::fs::write(ds.join("abc/layer.tar"), &layer).unwrap();
    let diff = node::image::oci::Digest::of(&layer);
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff.to_string()]}
    }))
    .unwrap();
    let cd = node::image::oci::Digest::of(&cfg);
    std::fs::write(ds.join(format!("{}.json", cd.hex())), &cfg).unwrap();
    std::fs::write(
        ds.join("manifest.json"),
        serde_json::to_vec(&serde_json::json!([{
            "Config": format!("{}.json", cd.hex()), "RepoTags": ["busybox:saved"], "Layers": ["abc/layer.tar"]
        }]))
        .unwrap(),
    )
    .unwrap();
    let dsa = tmp.path().join("ds.tar");
    tar_dir(&ds, &dsa);
    let got = store.import(&dsa).unwrap();
    assert_eq!(
        got[0].names,
        vec!["docker.io/library/busybox:saved".to_string()]
    );
    assert_eq!(got[0].config, cd);
    let img = store.get("busybox:saved").unwrap();
    assert_eq!(img.layers[0].digest, diff);
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn corrupt_blob_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = layer_tar(&[Entry::File("a", b"content", 0o644)]);
    let layout = common::oci_layout(
        &tmp.path().join("l"),
        "x.io/bad:1",
        std::slice::from_ref(&layer),
        serde_json::json!({}),
    );
    let d = node::image::oci::Digest::of(&layer);
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), b"tampered").unwrap();
    let store = ImageStore::open(&tmp.path().join("data")).unwrap();
    let err = store.import(&layout).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(!store.blob_path(&d).exists());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn hostile_layer_stays_inside_its_directory() {
    if !common::can_run_as_root("hostile_layer_stays_inside_its_directory") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"original").unwrap();
    let out_abs = outside.to_str().unwrap().to_string();
    let victim = format!("{out_abs}/victim");
    let dest = tmp.path().join("root");
    std::fs::create_dir(&dest).unwrap();
    let depth = "../".repeat(dest.components().count() + 2);
    let climb = format!("{depth}{}/climbed", out_abs.trim_start_matches('/'));
    let tar = layer_tar(&[
        Entry::File(&climb, b"x", 0o644),
        Entry::File("/abs-file", b"x", 0o644),
        Entry::Symlink("escape", &out_abs),
        Entry::File("escape/through-symlink", b"x", 0o644),
        Entry::Symlink("up", "../../../../../../.."),
        Entry::File(&format!("up{out_abs}/through-dotdot"), b"x", 0o644),
        Entry::Symlink("victimlink", &victim),
        Entry::File("victimlink", b"overwritten?", 0o644),
        Entry::Dir("d/"),
        Entry::File("d/gone", b"x", 0o644),
        Entry::File("d/.wh.gone", b"", 0o644),
        Entry::File("d/.wh..wh..opq", b"", 0o644),
    ]);
    let r = node::image::unpack::unpack_layer(&tar[..], &dest, None);
    // Whatever the outcome, nothing outside changed.
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("victim")], "{r:?}");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"original");
    let top: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top.len(), 2, "{top:?}");
    r.unwrap();
    // `..` names were cleaned to paths inside; the absolute name landed inside.
    assert!(
        dest.join(format!("{}/climbed", out_abs.trim_start_matches('/')))
            .is_file()
    );
    assert!(dest.join("abs-file").is_file());
    // Writes through symlinks were resolved inside the root.
    assert!(
        dest.join(out_abs.trim_start_matches('/'))
            .join("through-symlink")
            .is_file()
    );
    assert!(
        dest.join(out_abs.trim_start_matches('/'))
            .join("through-dotdot")
            .is_file()
    );
    // A file entry replaced the symlink instead of writing through it.
    assert_eq!(
        std::fs::read(dest.join("victimlink")).unwrap(),
        b"overwritten?"
    );
    // The whiteout became an overlay whiteout (0:0 char device), the opaque marker an xattr.
    let wh = std::fs::symlink_metadata(dest.join("d/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    let mut buf = [0u8; 4];
    let n = nix_getxattr(&dest.join("d"), &mut buf);
    assert_eq!(&buf[..n], b"y");
}

#[test]
fn hardlink_out_of_the_layer_is_refused() {
    if !common::can_run_as_root("hardlink_out_of_the_layer_is_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, b"s").unwrap();
    let dest = tmp.path().join("root");
    std::fs::create_dir(&dest).unwrap();
    let tar = layer_tar(&[Entry::Hardlink("hl", secret.to_str().unwrap())]);
    let err = node::image::unpack::unpack_layer(&tar[..], &dest, None).unwrap_err();
    assert!(matches!(err, ImageError::InvalidLayer(_)), "{err}");
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    // A hardlink within the layer works.
    let tar = layer_tar(&[Entry::File("a", b"1", 0o644), Entry::Hardlink("b", "a")]);
    node::image::unpack::unpack_layer(&tar[..], &dest, None).unwrap();
    assert_eq!(std::fs::metadata(dest.join("b")).unwrap().nlink(), 2);
}

fn nix_getxattr(p: &Path, buf: &mut [u8]) -> usize {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "trusted.overlay.opaque"])
        .arg(p)
        .output();
    let o = out.expect("getfattr (Debian package attr)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = o.stdout.len().min(buf.len());
    buf[..n].copy_from_slice(&o.stdout[..n]);
    n
}
