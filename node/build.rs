//! Gives the node crate a build identity (`KUBESHARD_NODE_BUILD_ID`): a hash of its sources.
//! The kubelet uses the stand-alone `kubeshard-shim` binary found next to its own only when
//! that shim reports the same identity, so a shim left over from another build (whose
//! on-disk spec format may differ) is never used.

use std::hash::{Hash, Hasher};
use std::path::Path;

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, files);
        } else {
            files.push(p);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    let mut files = Vec::new();
    walk(Path::new("src"), &mut files);
    files.push("Cargo.toml".into());
    files.sort();
    // SipHash with fixed keys: the same sources give the same id with the same compiler.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    for f in &files {
        f.hash(&mut h);
        std::fs::read(f).unwrap_or_default().hash(&mut h);
    }
    println!(
        "cargo:rustc-env=KUBESHARD_NODE_BUILD_ID={}-{:016x}",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        h.finish()
    );
}
