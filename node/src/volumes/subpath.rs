//! volumeMount subPath and subPathExpr: expansion with the container's environment and a
//! resolution that never leaves the volume (no `..`, no absolute path, no symlink out).

use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::VolumeError;
use super::payload::{NodeAllocatable, field_value, resource_value};

/// Upstream's `$(VAR)` expansion: a defined variable is replaced, an undefined reference
/// stays as written, `$$` is a literal `$`.
pub fn expand(input: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) => {
                    let name = &r[..end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment as far as it is known without the API: literal values
/// (expanded against earlier ones) and fieldRef/resourceFieldRef. configMapKeyRef,
/// secretKeyRef and envFrom are left out (references to them stay unexpanded).
pub fn container_env(
    pod: &Pod,
    container: &Container,
    node: &NodeAllocatable,
) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for e in container.env.iter().flatten() {
        let v = if let Some(vf) = &e.value_from {
            if let Some(f) = &vf.field_ref {
                field_value(pod, f).ok()
            } else if let Some(r) = &vf.resource_field_ref {
                let mut r = r.clone();
                if r.container_name.as_deref().is_none_or(str::is_empty) {
                    r.container_name = Some(container.name.clone());
                }
                resource_value(pod, &r, node).ok()
            } else {
                None
            }
        } else {
            Some(expand(e.value.as_deref().unwrap_or(""), &env))
        };
        if let Some(v) = v {
            env.insert(e.name.clone(), v);
        }
    }
    env
}

/// Checks a subPath as upstream's validation does: relative, no `..` component.
pub fn check(sub: &str) -> Result<(), VolumeError> {
    let bad = |reason: &str| VolumeError::SubPath {
        sub_path: sub.to_owned(),
        reason: reason.to_owned(),
    };
    if sub.contains('\0') {
        return Err(bad("must not contain NUL"));
    }
    let p = Path::new(sub);
    if p.is_absolute() {
        return Err(bad("must not be absolute"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(bad("must not contain '..'"));
    }
    Ok(())
}

/// Resolves `sub` inside the volume at `root`, following symlinks only while they stay
/// inside it. Missing directories are created (with the volume root's mode) when `create`
/// is set, as upstream's SafeMakeDir; otherwise a missing path is an error.
pub fn resolve(root: &Path, sub: &str, create: bool) -> Result<PathBuf, VolumeError> {
    check(sub)?;
    let escape = |what: String| VolumeError::SubPath {
        sub_path: sub.to_owned(),
        reason: what,
    };
    let io = |ctx: String| {
        move |source| VolumeError::Io {
            context: ctx,
            source,
        }
    };
    let root = fs::canonicalize(root).map_err(io(format!("resolving {}", root.display())))?;
    let root_mode = fs::metadata(&root)
        .map_err(io(format!("stat {}", root.display())))?
        .permissions()
        .mode()
        & 0o7777;
    let parts: Vec<&str> = sub
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let mut cur = root.clone();
    for (i, c) in parts.iter().enumerate() {
        let next = cur.join(c);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                let real = fs::canonicalize(&next)
                    .map_err(|_| escape(format!("symlink {c:?} does not resolve")))?;
                if !real.starts_with(&root) {
                    return Err(escape(format!(
                        "symlink {c:?} points outside the volume ({})",
                        real.display()
                    )));
                }
                cur = real;
            }
            Ok(m) if m.is_dir() => cur = next,
            Ok(_) if i + 1 == parts.len() => cur = next,
            Ok(_) => return Err(escape(format!("{c:?} is not a directory"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                fs::create_dir(&next).map_err(io(format!("creating {}", next.display())))?;
                fs::set_permissions(&next, fs::Permissions::from_mode(root_mode))
                    .map_err(io(format!("chmod {}", next.display())))?;
                cur = next;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(escape("does not exist in the volume".to_owned()));
            }
            Err(e) => return Err(io(format!("stat {}", next.display()))(e)),
        }
        if !cur.starts_with(&root) {
            return Err(escape("resolves outside the volume".to_owned()));
        }
    }
    Ok(cur)
}

/// Opens `rel` (a path inside the volume, as [`resolve`] returns it relative to the
/// volume's real root) with `O_PATH`, refusing any resolution that leaves `root`
/// (`RESOLVE_BENEATH`: no `..` above it, no absolute or escaping symlink, no magic links).
/// The fd pins the object: swapping a component for a symlink afterwards changes nothing.
pub fn open_beneath(root: &Path, rel: &Path) -> Result<OwnedFd, VolumeError> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::Mode;
    let root_fd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| VolumeError::Io {
        context: format!("opening {}", root.display()),
        source: e.into(),
    })?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(&root_fd, rel, how).map_err(|e| VolumeError::SubPath {
        sub_path: rel.display().to_string(),
        reason: format!("cannot be opened inside the volume: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_upstream() {
        let env = HashMap::from([("A".to_owned(), "x".to_owned())]);
        assert_eq!(expand("$(A)/$(B)/$$(A)/$x/$(", &env), "x/$(B)/$(A)/$x/$(");
    }

    #[test]
    fn resolve_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("vol");
        fs::create_dir(&root).unwrap();
        fs::create_dir(root.join("a")).unwrap();
        fs::write(root.join("a/f"), "x").unwrap();
        std::os::unix::fs::symlink("a", root.join("in")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        std::os::unix::fs::symlink("../", root.join("up")).unwrap();
        let real = fs::canonicalize(&root).unwrap();
        assert_eq!(resolve(&root, "a/f", false).unwrap(), real.join("a/f"));
        assert_eq!(resolve(&root, "in/f", false).unwrap(), real.join("a/f"));
        assert!(resolve(&root, "out", true).is_err());
        assert!(resolve(&root, "out/passwd", true).is_err());
        assert!(resolve(&root, "up/x", true).is_err());
        assert!(resolve(&root, "../x", true).is_err());
        assert!(resolve(&root, "/etc", true).is_err());
        assert!(resolve(&root, "missing", false).is_err());
        assert_eq!(
            resolve(&root, "new/dir", true).unwrap(),
            real.join("new/dir")
        );
        assert!(root.join("new/dir").is_dir());
        assert!(!d.path().join("x").exists());
        assert!(open_beneath(&real, Path::new("in/f")).is_ok());
        assert!(open_beneath(&real, Path::new("out")).is_err());
        assert!(open_beneath(&real, Path::new("up/x")).is_err());
    }
}
