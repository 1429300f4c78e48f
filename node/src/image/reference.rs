//! Image references with Docker's defaults: `busybox` is `docker.io/library/busybox:latest`,
//! `host:port/repo:tag` names its registry, `name@sha256:...` pins a digest.

use std::fmt;

use super::ImageError;
use super::oci::Digest;

/// The registry of references without a host.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Where Docker Hub's registry API is served.
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]` (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path (`library/busybox`).
    pub repository: String,
    /// The tag (`latest` when neither a tag nor a digest is given).
    pub tag: Option<String>,
    /// The digest, when pinned.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference the way Docker does.
    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        let bad = || ImageError::InvalidReference(reference.to_string());
        let r = reference.trim();
        if r.is_empty()
            || r.len() > 4096
            || r.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad());
        }
        let (name, digest) = match r.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d)?)),
            None => (r, None),
        };
        let (registry, rest) = match name.split_once('/') {
            Some((f, rest)) if f.contains('.') || f.contains(':') || f == "localhost" => {
                (f.to_string(), rest)
            }
            _ => (DEFAULT_REGISTRY.to_string(), name),
        };
        // A tag is a ':' after the last '/'.
        let (repo, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (rest, None),
        };
        let repository = if registry == DEFAULT_REGISTRY && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        };
        if !valid_registry(&registry)
            || !valid_repository(&repository)
            || tag.as_deref().is_some_and(|t| !valid_tag(t))
        {
            return Err(bad());
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) the registry API is reached at (Docker Hub's is not `docker.io`).
    pub fn endpoint(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY || self.registry == "index.docker.io" {
            DOCKER_HUB_ENDPOINT
        } else {
            &self.registry
        }
    }

    /// What goes after `/manifests/`: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// Whether the reference names `:latest` (explicitly or by default) and no digest: the
    /// images whose default pull policy is Always.
    pub fn is_latest(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref() == Some("latest")
    }
}

/// The normalised form, as the image store names images (`docker.io/library/busybox:latest`,
/// `host:5000/x@sha256:...`).
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")
        } else {
            write!(f, ":{}", self.tag.as_deref().unwrap_or("latest"))
        }
    }
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        // `[::1]:5000`
        Some((h, p)) if !h.ends_with(':') => (h, Some(p)),
        _ => (r, None),
    };
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
        && port.is_none_or(|p| p.parse::<u16>().is_ok())
}

/// Path components: lowercase alphanumerics separated by `.`, `_`, `__` or `-`s.
fn valid_repository(r: &str) -> bool {
    r.len() <= 255
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.endpoint(), "registry-1.docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert!(r.is_latest());
        let r = Reference::parse("127.0.0.1:5000/a/b:v1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "a/b", Some("v1.2"))
        );
        assert_eq!(r.endpoint(), "127.0.0.1:5000");
        assert!(!r.is_latest());
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!(r.to_string(), "localhost/x:latest");
        let d = Digest::of(b"x");
        let r = Reference::parse(&format!("quay.io/a/b@{d}")).unwrap();
        assert_eq!(r.manifest_ref(), d.to_string());
        assert_eq!(r.tag, None);
        assert!(!r.is_latest());
        assert_eq!(r.to_string(), format!("quay.io/a/b@{d}"));
        // tag and digest: the digest wins.
        let r = Reference::parse(&format!("a:1@{d}")).unwrap();
        assert_eq!(r.manifest_ref(), d.to_string());
        // the normalised forms agree with the store's.
        for s in ["busybox", "a/b", "localhost:5000/x", "quay.io/a/b:v1"] {
            assert_eq!(
                Reference::parse(s).unwrap().to_string(),
                super::super::oci::normalize_reference(s).unwrap()
            );
        }
    }

    #[test]
    fn bad_references() {
        for s in [
            "",
            "a b",
            "UPPER",
            "a/:x",
            "x:",
            "x@sha256:zz",
            "-a",
            "a//b",
            "h:99999/x",
            "x:-tag",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} accepted");
        }
    }
}
