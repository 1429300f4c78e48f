//! The OCI image-spec documents the store reads and writes (and the docker `save` manifest),
//! plus image references and digests.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ImageError;

/// Media types the store knows.
pub mod media {
    /// OCI image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Uncompressed layer tar.
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// gzip-compressed layer tar.
    pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
}

/// A sha256 content digest, `sha256:` and 64 lowercase hex digits (validated).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest string. Only sha256 is supported.
    pub fn parse(s: &str) -> Result<Digest, ImageError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| ImageError::InvalidDigest(s.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ImageError::InvalidDigest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(sha2::Sha256::digest(bytes).as_slice())
    }

    /// Builds a digest from a finished sha256 state.
    pub fn from_sha256(raw: &[u8]) -> Digest {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in raw {
            let _ = write!(s, "{b:02x}");
        }
        Digest(s)
    }

    /// The 64 hex digits (used as file names).
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The whole `sha256:...` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = ImageError;
    fn try_from(s: String) -> Result<Self, ImageError> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OCI content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (image names live here in OCI layouts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform (in indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A platform selector in an index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
}

/// An OCI image index (also `index.json` of a layout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// Media type, when present.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Manifests (or nested indexes).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An OCI image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// Media type, when present.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
}

/// The image config document (only the parts a runtime uses).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfigFile {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Execution defaults.
    #[serde(default)]
    pub config: Option<ExecConfig>,
    /// Layer diff ids (sha256 of each uncompressed layer tar), base first.
    pub rootfs: RootFs,
}

/// The root filesystem part of an image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// One per layer, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// The execution defaults of an image.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    /// `NAME=value` entries.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// The entrypoint.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
}

/// One entry of a `docker save` archive's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DockerSaveEntry {
    #[serde(rename = "Config")]
    pub(crate) config: String,
    #[serde(rename = "RepoTags", default)]
    pub(crate) repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub(crate) layers: Vec<String>,
}

/// Normalises an image reference the way docker does: `busybox` ->
/// `docker.io/library/busybox:latest`, `a/b` -> `docker.io/a/b:latest`; a reference with a
/// registry host (a first component with `.` or `:`, or `localhost`) keeps it. Digested
/// references (`name@sha256:...`) keep their digest.
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    let r = reference.trim();
    if r.is_empty()
        || r.len() > 4096
        || r.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(ImageError::InvalidReference(reference.to_string()));
    }
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(Digest::parse(d)?)),
        None => (r, None),
    };
    let (first, rest) = match name.split_once('/') {
        Some((f, rest)) if f.contains('.') || f.contains(':') || f == "localhost" => (f, rest),
        _ => ("docker.io", name),
    };
    let rest = if first == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest.to_string()
    };
    // A tag is a ':' after the last '/'.
    let last = rest.rsplit('/').next().unwrap_or("");
    let tagged = last.contains(':');
    let mut out = format!("{first}/{rest}");
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d.as_str());
    } else if !tagged {
        out.push_str(":latest");
    }
    if out.contains("//") || out.ends_with(':') || out.contains("/:") {
        return Err(ImageError::InvalidReference(reference.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        let n = |s| normalize_reference(s).unwrap();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("a/b"), "docker.io/a/b:latest");
        assert_eq!(n("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(n("quay.io/a/b:v1"), "quay.io/a/b:v1");
        assert!(normalize_reference("").is_err());
        assert!(normalize_reference("a b").is_err());
        assert!(normalize_reference("x@sha256:zz").is_err());
    }

    #[test]
    fn digests_are_validated() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Digest::parse("sha256:E3B0").is_err());
        assert!(Digest::parse("md5:00").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "g".repeat(64))).is_err());
    }
}
