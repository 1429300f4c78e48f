//! Pod volumes as upstream's kubelet lays them out, under
//! `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`:
//!
//! - emptyDir: a directory (0777); `medium: Memory` is a tmpfs sized by `sizeLimit`;
//! - hostPath: the host path itself, after the `type` check (`DirectoryOrCreate`, ...);
//! - configMap (on disk), secret, downwardAPI and projected (on tmpfs, as upstream): files
//!   written by the [`atomic`] writer, so a container sees a whole old or a whole new set;
//!   calling [`VolumeManager::setup_pod`] again refreshes them from the current objects;
//! - persistentVolumeClaim bound to a hostPath or local PersistentVolume: the PV's path.
//!
//! [`VolumeManager::container_mounts`] turns a container's volumeMounts into
//! [`crate::spec::BindMount`]s (readOnly, subPath, subPathExpr), refusing paths that leave
//! the volume. [`VolumeManager::teardown_pod`] unmounts and removes the pod directory and
//! never follows a symlink out of it.
//!
//! The API objects come through [`VolumeObjects`], which the kubelet implements with
//! `api::client`; this module makes no API calls of its own. Setup does short blocking file
//! system work (a few files per volume) on the calling task.

pub mod atomic;
mod mounts;
mod ownership;
pub mod payload;
pub mod subpath;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};

pub use atomic::{FileProjection, Payload};
pub use payload::NodeAllocatable;

use crate::spec::BindMount;

/// A ConfigMap's or Secret's data is at most 1 MiB (the apiserver's limit): a configMap,
/// secret or downwardAPI volume holds no more.
pub const MAX_OBJECT_BYTES: usize = 1 << 20;
/// A projected volume holds at most this much (several objects and a token).
pub const MAX_PROJECTED_BYTES: usize = 4 << 20;
/// Size of the tmpfs under a secret, downwardAPI or projected volume: two generations of
/// the largest payload (old and new during a swap) plus room for directories.
const PAYLOAD_TMPFS_BYTES: u64 = 2 * MAX_PROJECTED_BYTES as u64 + (1 << 20);
/// serviceAccountToken expirationSeconds: default, minimum (validation), maximum.
pub const TOKEN_DEFAULT_EXPIRATION_SECS: i64 = 3600;
/// The shortest token lifetime the API accepts.
pub const TOKEN_MIN_EXPIRATION_SECS: i64 = 600;
/// Tokens are never asked for longer than this (upstream's cap, 2^32 s); they are refreshed
/// long before (see below).
pub const TOKEN_MAX_EXPIRATION_SECS: i64 = 1 << 32;
/// A token is refreshed after 80% of its lifetime or after 24 h, as upstream's token manager.
const TOKEN_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Errors of volume setup, mounts and teardown. `SetUp` wraps the cause with the volume's
/// name; not-found and not-bound errors are retryable (the object may appear), the others
/// need a change to the pod.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// One volume of the pod could not be set up (upstream's event text).
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {source}")]
    SetUp {
        /// The volume's name.
        volume: String,
        /// What went wrong.
        source: Box<VolumeError>,
    },
    /// The ConfigMap does not exist and the volume is not optional.
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The Secret does not exist and the volume is not optional.
    #[error("secret \"{name}\" not found")]
    SecretNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// An item names a key the object does not have.
    #[error("{0}")]
    KeyNotFound(String),
    /// The claim does not exist.
    #[error("persistentvolumeclaim \"{0}\" not found")]
    ClaimNotFound(String),
    /// The claim is not bound to a volume yet.
    #[error("persistentvolumeclaim \"{0}\" is not bound")]
    ClaimNotBound(String),
    /// The claim's volume does not exist.
    #[error("persistentvolume \"{0}\" not found")]
    VolumeNotFound(String),
    /// A volume type or source this node does not support.
    #[error("unsupported volume: {0}")]
    Unsupported(String),
    /// A hostPath `type` check failed.
    #[error("{0}")]
    HostPathType(String),
    /// A bad file path in a payload or a mount path.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A subPath that is absolute, has `..` or leaves the volume through a symlink.
    #[error("subPath {sub_path:?} {reason}")]
    SubPath {
        /// The subPath after expansion.
        sub_path: String,
        /// Why it was refused.
        reason: String,
    },
    /// A volumeMount names a volume the pod does not have.
    #[error("cannot find volume \"{volume}\" to mount into container \"{container}\"")]
    UnknownVolume {
        /// The volume name.
        volume: String,
        /// The container name.
        container: String,
    },
    /// A payload above the size bound.
    #[error("volume data is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        /// Bytes asked for.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// A downward API item that cannot be computed.
    #[error("downward API: {0}")]
    DownwardApi(String),
    /// A bad serviceAccountToken projection.
    #[error("service account token: {0}")]
    Token(String),
    /// An invalid pod (no uid, a uid or volume name unusable as a path component).
    #[error("invalid pod: {0}")]
    InvalidPod(String),
    /// A mount or unmount failed.
    #[error("mount {path}: {reason}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Teardown left mounts in place and removed nothing (retry later).
    #[error("mounts still present under {0}")]
    Busy(PathBuf),
    /// The API call behind [`VolumeObjects`] failed (retryable).
    #[error("{0}")]
    Api(String),
    /// File system I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl VolumeError {
    /// Whether trying again later may succeed without a change to the pod (an object that
    /// may appear or bind, an API or I/O failure, a busy mount).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.cause(),
            VolumeError::ConfigMapNotFound { .. }
                | VolumeError::SecretNotFound { .. }
                | VolumeError::KeyNotFound(_)
                | VolumeError::ClaimNotFound(_)
                | VolumeError::ClaimNotBound(_)
                | VolumeError::VolumeNotFound(_)
                | VolumeError::HostPathType(_)
                | VolumeError::Busy(_)
                | VolumeError::Api(_)
                | VolumeError::Io { .. }
                | VolumeError::Mount { .. }
        )
    }

    /// The innermost error (through `SetUp`).
    pub fn cause(&self) -> &VolumeError {
        match self {
            VolumeError::SetUp { source, .. } => source.cause(),
            e => e,
        }
    }
}

/// The API objects volumes read. The kubelet implements it with `api::client`; `Ok(None)`
/// means the object does not exist.
#[async_trait::async_trait]
pub trait VolumeObjects: Send + Sync {
    /// A ConfigMap.
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, VolumeError>;
    /// A Secret.
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, VolumeError>;
    /// A PersistentVolumeClaim.
    async fn persistent_volume_claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, VolumeError>;
    /// A PersistentVolume.
    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, VolumeError>;
    /// A token for the service account (TokenRequest), for `audiences` (empty: the API
    /// server's), valid `expiration_secs`.
    async fn service_account_token(
        &self,
        ns: &str,
        sa: &str,
        audiences: &[String],
        expiration_secs: i64,
    ) -> Result<String, VolumeError>;
}

/// The kind of a set-up volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// emptyDir on disk.
    EmptyDir,
    /// emptyDir on tmpfs.
    EmptyDirMemory,
    /// hostPath.
    HostPath,
    /// configMap.
    ConfigMap,
    /// secret.
    Secret,
    /// downwardAPI.
    DownwardApi,
    /// projected.
    Projected,
    /// persistentVolumeClaim.
    PersistentVolumeClaim,
}

/// One volume, ready to bind into containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolume {
    /// The directory (or file) on the host.
    pub host_path: PathBuf,
    /// Mounted read-only whatever the volumeMount says (configMap, secret, downwardAPI,
    /// projected, a read-only claim).
    pub read_only: bool,
    /// What it is.
    pub kind: VolumeKind,
    /// Whether this setup changed its files (a refreshed configMap, a new token).
    pub changed: bool,
}

/// The pod's volumes by name, from [`VolumeManager::setup_pod`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes {
    /// The pod's uid.
    pub pod_uid: String,
    /// Volumes by name.
    pub volumes: BTreeMap<String, PodVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    pod_uid: String,
    volume: String,
    audience: String,
    expiration_secs: i64,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    fetched: Instant,
    ttl: Duration,
}

/// Sets up, refreshes and tears down pod volumes under a root directory (the kubelet's
/// data dir). Send + Sync: one shared by all pod workers.
#[derive(Debug)]
pub struct VolumeManager {
    root: PathBuf,
    node: parking_lot::RwLock<NodeAllocatable>,
    tokens: parking_lot::Mutex<HashMap<TokenKey, CachedToken>>,
    pod_locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
const CONFIG_MAP: &str = "kubernetes.io~configmap";
const SECRET: &str = "kubernetes.io~secret";
const DOWNWARD_API: &str = "kubernetes.io~downward-api";
const PROJECTED: &str = "kubernetes.io~projected";

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

/// A name usable as one path component (uids and volume names come from the API).
fn check_component(what: &str, s: &str) -> Result<(), VolumeError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::InvalidPod(format!(
            "{what} {s:?} is not a valid name"
        )))
    }
}

fn mkdir_mode(path: &Path, mode: u32) -> Result<(), VolumeError> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = fs::symlink_metadata(path).map_err(io(format!("stat {}", path.display())))?;
            if !m.is_dir() {
                return Err(VolumeError::InvalidPath {
                    path: path.display().to_string(),
                    reason: "exists and is not a directory".into(),
                });
            }
            return Ok(());
        }
        Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

fn payload_size(p: &Payload) -> usize {
    p.values().map(|f| f.data.len()).sum()
}

fn check_size(p: &Payload, limit: usize) -> Result<(), VolumeError> {
    let size = payload_size(p);
    if size > limit {
        return Err(VolumeError::TooLarge { size, limit });
    }
    Ok(())
}

impl VolumeManager {
    /// A manager rooted at `root` (created when missing), reporting this machine's CPUs and
    /// memory for downward API limits the containers leave unset.
    pub fn new(root: PathBuf) -> VolumeManager {
        VolumeManager {
            root,
            node: parking_lot::RwLock::new(NodeAllocatable::of_this_machine()),
            tokens: parking_lot::Mutex::new(HashMap::new()),
            pod_locks: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Sets the node's allocatable resources (what the kubelet reports in Node status).
    pub fn set_node_allocatable(&self, n: NodeAllocatable) {
        *self.node.write() = n;
    }

    /// `<root>/pods/<uid>`.
    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.root.join("pods").join(pod_uid)
    }

    fn pod_lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.pod_locks
            .lock()
            .entry(uid.to_owned())
            .or_default()
            .clone()
    }

    /// Sets up every volume of `pod` (idempotent). Called again, it refreshes the files of
    /// configMap, secret, downwardAPI and projected volumes from the current objects
    /// (atomically) and renews service account tokens that are due.
    pub async fn setup_pod(
        &self,
        pod: &Pod,
        objs: &dyn VolumeObjects,
    ) -> Result<PodVolumes, VolumeError> {
        let uid = pod
            .metadata
            .uid
            .as_deref()
            .ok_or_else(|| VolumeError::InvalidPod("pod has no uid".into()))?;
        check_component("pod uid", uid)?;
        let lock = self.pod_lock(uid);
        let _guard = lock.lock().await;
        let vol_dir = self.pod_dir(uid).join("volumes");
        fs::create_dir_all(&vol_dir).map_err(io(format!("creating {}", vol_dir.display())))?;
        let mut out = PodVolumes {
            pod_uid: uid.to_owned(),
            volumes: BTreeMap::new(),
        };
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        for v in volumes.into_iter().flatten() {
            let pv = self
                .setup_volume(pod, uid, &vol_dir, v, objs)
                .await
                .map_err(|e| VolumeError::SetUp {
                    volume: v.name.clone(),
                    source: Box::new(e),
                })?;
            out.volumes.insert(v.name.clone(), pv);
        }
        Ok(out)
    }

    async fn setup_volume(
        &self,
        pod: &Pod,
        uid: &str,
        vol_dir: &Path,
        v: &Volume,
        objs: &dyn VolumeObjects,
    ) -> Result<PodVolume, VolumeError> {
        check_component("volume name", &v.name)?;
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let fs_group = fs_group(pod)?;
        let plugin_dir = |plugin: &str| -> Result<PathBuf, VolumeError> {
            let d = vol_dir.join(plugin);
            mkdir_mode(&d, 0o750)?;
            let d = d.join(&v.name);
            mkdir_mode(&d, 0o777)?;
            Ok(d)
        };
        let vol =
            |host_path: PathBuf, read_only: bool, kind: VolumeKind, changed: bool| PodVolume {
                host_path,
                read_only,
                kind,
                changed,
            };

        if let Some(e) = &v.empty_dir {
            let dir = plugin_dir(EMPTY_DIR)?;
            return match e.medium.as_deref().unwrap_or("") {
                "" => {
                    ownership::apply_if_root_differs(&dir, fs_group, false)?;
                    Ok(vol(dir, false, VolumeKind::EmptyDir, false))
                }
                "Memory" => {
                    let size = match &e.size_limit {
                        Some(q) => Some(
                            u64::try_from((payload::parse_milli(&q.0)?.max(0) + 999) / 1000)
                                .map_err(|_| {
                                    VolumeError::Unsupported(format!("sizeLimit {}", q.0))
                                })?,
                        ),
                        None => None,
                    };
                    mounts::ensure_tmpfs(&dir, size)?;
                    ownership::apply_if_root_differs(&dir, fs_group, false)?;
                    Ok(vol(dir, false, VolumeKind::EmptyDirMemory, false))
                }
                other => Err(VolumeError::Unsupported(format!(
                    "emptyDir medium {other:?}"
                ))),
            };
        }
        if let Some(h) = &v.host_path {
            let path = host_path(&h.path)?;
            mounts::check_host_path(&path, h.type_.as_deref())?;
            return Ok(vol(path, false, VolumeKind::HostPath, false));
        }
        if let Some(c) = &v.config_map {
            let optional = c.optional.unwrap_or(false);
            let cm = objs.config_map(ns, &c.name).await?;
            if cm.is_none() && !optional {
                return Err(VolumeError::ConfigMapNotFound {
                    namespace: ns.into(),
                    name: c.name.clone(),
                });
            }
            let p = payload::config_map(cm.as_ref(), c.items.as_deref(), c.default_mode, optional)?;
            check_size(&p, MAX_OBJECT_BYTES)?;
            let dir = plugin_dir(CONFIG_MAP)?;
            let changed = write_payload(&dir, p, fs_group)?;
            return Ok(vol(dir, true, VolumeKind::ConfigMap, changed));
        }
        if let Some(s) = &v.secret {
            let optional = s.optional.unwrap_or(false);
            let name = s.secret_name.clone().unwrap_or_default();
            let obj = objs.secret(ns, &name).await?;
            if obj.is_none() && !optional {
                return Err(VolumeError::SecretNotFound {
                    namespace: ns.into(),
                    name,
                });
            }
            let p = payload::secret(obj.as_ref(), s.items.as_deref(), s.default_mode, optional)?;
            check_size(&p, MAX_OBJECT_BYTES)?;
            let dir = plugin_dir(SECRET)?;
            mounts::ensure_tmpfs(&dir, Some(PAYLOAD_TMPFS_BYTES))?;
            let changed = write_payload(&dir, p, fs_group)?;
            return Ok(vol(dir, true, VolumeKind::Secret, changed));
        }
        if let Some(d) = &v.downward_api {
            let node = *self.node.read();
            let p = payload::downward_api(
                pod,
                d.items.as_deref().unwrap_or(&[]),
                d.default_mode,
                &node,
            )?;
            check_size(&p, MAX_OBJECT_BYTES)?;
            let dir = plugin_dir(DOWNWARD_API)?;
            mounts::ensure_tmpfs(&dir, Some(PAYLOAD_TMPFS_BYTES))?;
            let changed = write_payload(&dir, p, fs_group)?;
            return Ok(vol(dir, true, VolumeKind::DownwardApi, changed));
        }
        if let Some(pr) = &v.projected {
            let p = self.projected_payload(pod, uid, ns, v, pr, objs).await?;
            check_size(&p, MAX_PROJECTED_BYTES)?;
            let dir = plugin_dir(PROJECTED)?;
            mounts::ensure_tmpfs(&dir, Some(PAYLOAD_TMPFS_BYTES))?;
            let changed = write_payload(&dir, p, fs_group)?;
            return Ok(vol(dir, true, VolumeKind::Projected, changed));
        }
        if let Some(c) = &v.persistent_volume_claim {
            let (path, ro) = self.claim_path(ns, c, objs).await?;
            return Ok(vol(path, ro, VolumeKind::PersistentVolumeClaim, false));
        }
        Err(VolumeError::Unsupported(format!(
            "volume {:?}: only emptyDir, hostPath, configMap, secret, downwardAPI, projected \
             and persistentVolumeClaim are supported",
            v.name
        )))
    }

    async fn projected_payload(
        &self,
        pod: &Pod,
        uid: &str,
        ns: &str,
        v: &Volume,
        pr: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
        objs: &dyn VolumeObjects,
    ) -> Result<Payload, VolumeError> {
        let mut out = Payload::new();
        let default_mode = pr.default_mode;
        for src in pr.sources.iter().flatten() {
            // Later sources win a path conflict (validation normally refuses them).
            if let Some(c) = &src.config_map {
                let optional = c.optional.unwrap_or(false);
                let cm = objs.config_map(ns, &c.name).await?;
                if cm.is_none() && !optional {
                    return Err(VolumeError::ConfigMapNotFound {
                        namespace: ns.into(),
                        name: c.name.clone(),
                    });
                }
                out.extend(payload::config_map(
                    cm.as_ref(),
                    c.items.as_deref(),
                    default_mode,
                    optional,
                )?);
            }
            if let Some(s) = &src.secret {
                let optional = s.optional.unwrap_or(false);
                let obj = objs.secret(ns, &s.name).await?;
                if obj.is_none() && !optional {
                    return Err(VolumeError::SecretNotFound {
                        namespace: ns.into(),
                        name: s.name.clone(),
                    });
                }
                out.extend(payload::secret(
                    obj.as_ref(),
                    s.items.as_deref(),
                    default_mode,
                    optional,
                )?);
            }
            if let Some(d) = &src.downward_api {
                let node = *self.node.read();
                out.extend(payload::downward_api(
                    pod,
                    d.items.as_deref().unwrap_or(&[]),
                    default_mode,
                    &node,
                )?);
            }
            if let Some(t) = &src.service_account_token {
                let token = self.token(pod, uid, ns, &v.name, t, objs).await?;
                let mode = u32::try_from(default_mode.unwrap_or(payload::DEFAULT_MODE))
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .unwrap_or(0o644);
                out.insert(
                    t.path.clone(),
                    FileProjection {
                        data: token.into_bytes(),
                        mode,
                    },
                );
            }
            if src.cluster_trust_bundle.is_some() {
                return Err(VolumeError::Unsupported(
                    "projected clusterTrustBundle sources".into(),
                ));
            }
            if out.len() > 4096 {
                return Err(VolumeError::TooLarge {
                    size: out.len(),
                    limit: 4096,
                });
            }
        }
        Ok(out)
    }

    async fn token(
        &self,
        pod: &Pod,
        uid: &str,
        ns: &str,
        volume: &str,
        t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
        objs: &dyn VolumeObjects,
    ) -> Result<String, VolumeError> {
        let exp = t
            .expiration_seconds
            .unwrap_or(TOKEN_DEFAULT_EXPIRATION_SECS);
        if exp < TOKEN_MIN_EXPIRATION_SECS {
            return Err(VolumeError::Token(format!(
                "expirationSeconds {exp} is less than {TOKEN_MIN_EXPIRATION_SECS}"
            )));
        }
        let exp = exp.min(TOKEN_MAX_EXPIRATION_SECS);
        let audience = t.audience.clone().unwrap_or_default();
        let key = TokenKey {
            pod_uid: uid.to_owned(),
            volume: volume.to_owned(),
            audience: audience.clone(),
            expiration_secs: exp,
        };
        let now = Instant::now();
        if let Some(c) = self.tokens.lock().get(&key)
            && !token_needs_refresh(now.saturating_duration_since(c.fetched), c.ttl)
        {
            return Ok(c.token.clone());
        }
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| {
                s.service_account_name
                    .as_deref()
                    .or(s.service_account.as_deref())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        let audiences: Vec<String> = if audience.is_empty() {
            Vec::new()
        } else {
            vec![audience]
        };
        let token = objs.service_account_token(ns, sa, &audiences, exp).await?;
        if token.len() > MAX_OBJECT_BYTES {
            return Err(VolumeError::TooLarge {
                size: token.len(),
                limit: MAX_OBJECT_BYTES,
            });
        }
        self.tokens.lock().insert(
            key,
            CachedToken {
                token: token.clone(),
                fetched: now,
                ttl: Duration::from_secs(exp as u64),
            },
        );
        Ok(token)
    }

    async fn claim_path(
        &self,
        ns: &str,
        c: &k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource,
        objs: &dyn VolumeObjects,
    ) -> Result<(PathBuf, bool), VolumeError> {
        let pvc = objs
            .persistent_volume_claim(ns, &c.claim_name)
            .await?
            .ok_or_else(|| VolumeError::ClaimNotFound(c.claim_name.clone()))?;
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|s| !s.is_empty());
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let Some(pv_name) = pv_name.filter(|_| bound) else {
            return Err(VolumeError::ClaimNotBound(c.claim_name.clone()));
        };
        let pv = objs
            .persistent_volume(&pv_name)
            .await?
            .ok_or_else(|| VolumeError::VolumeNotFound(pv_name.clone()))?;
        let spec = pv.spec.unwrap_or_default();
        let path = if let Some(h) = &spec.host_path {
            let p = host_path(&h.path)?;
            mounts::check_host_path(&p, h.type_.as_deref())?;
            p
        } else if let Some(l) = &spec.local {
            let p = host_path(&l.path)?;
            if !p.exists() {
                return Err(VolumeError::HostPathType(format!(
                    "local volume {pv_name}: {} does not exist",
                    p.display()
                )));
            }
            p
        } else {
            return Err(VolumeError::Unsupported(format!(
                "persistentvolume {pv_name:?} is neither hostPath nor local"
            )));
        };
        Ok((path, c.read_only.unwrap_or(false)))
    }

    /// The bind mounts of `container`'s volumeMounts over the set-up `vols`.
    pub fn container_mounts(
        &self,
        pod: &Pod,
        container: &Container,
        vols: &PodVolumes,
    ) -> Result<Vec<BindMount>, VolumeError> {
        let mut out = Vec::new();
        let mut env = None;
        for (index, m) in container.volume_mounts.iter().flatten().enumerate() {
            let v = vols
                .volumes
                .get(&m.name)
                .ok_or_else(|| VolumeError::UnknownVolume {
                    volume: m.name.clone(),
                    container: container.name.clone(),
                })?;
            let target = Path::new(&m.mount_path);
            if !target.is_absolute() || target.components().any(|c| c == Component::ParentDir) {
                return Err(VolumeError::InvalidPath {
                    path: m.mount_path.clone(),
                    reason: "mountPath must be absolute without '..'".into(),
                });
            }
            let sub = match (m.sub_path.as_deref(), m.sub_path_expr.as_deref()) {
                (Some(s), _) if !s.is_empty() => Some(s.to_owned()),
                (_, Some(e)) if !e.is_empty() => {
                    let env = env.get_or_insert_with(|| {
                        subpath::container_env(pod, container, &self.node.read())
                    });
                    Some(subpath::expand(e, env))
                }
                _ => None,
            };
            let host_path = match sub {
                None => v.host_path.clone(),
                Some(s) => {
                    // Only writable volumes get missing subPath directories created.
                    let create = matches!(
                        v.kind,
                        VolumeKind::EmptyDir
                            | VolumeKind::EmptyDirMemory
                            | VolumeKind::HostPath
                            | VolumeKind::PersistentVolumeClaim
                    ) && !v.read_only;
                    let resolved = subpath::resolve(&v.host_path, &s, create)?;
                    self.pin_subpath(
                        vols,
                        &m.name,
                        &container.name,
                        index,
                        &v.host_path,
                        &resolved,
                    )?
                }
            };
            out.push(BindMount {
                host_path,
                container_path: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false) || v.read_only,
            });
        }
        Ok(out)
    }

    /// The uids of the pods that have a directory under `<root>/pods` (after a restart,
    /// the kubelet tears down those it no longer runs).
    pub fn pod_uids_on_disk(&self) -> Result<Vec<String>, VolumeError> {
        let dir = self.root.join("pods");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io(format!("reading {}", dir.display())))?;
            if let Some(name) = e.file_name().to_str()
                && check_component("pod uid", name).is_ok()
            {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Pins a resolved subPath as upstream does: the path is opened beneath the volume root
    /// (so no symlink swapped in since the check can redirect it) and that open file is
    /// bind-mounted on `<pod>/volume-subpaths/<volume>/<container>/<index>`, a path the
    /// containers cannot reach; the runtime binds from there.
    fn pin_subpath(
        &self,
        vols: &PodVolumes,
        volume: &str,
        container: &str,
        index: usize,
        volume_root: &Path,
        resolved: &Path,
    ) -> Result<PathBuf, VolumeError> {
        check_component("pod uid", &vols.pod_uid)?;
        check_component("volume name", volume)?;
        check_component("container name", container)?;
        let root = fs::canonicalize(volume_root)
            .map_err(io(format!("resolving {}", volume_root.display())))?;
        let rel = resolved
            .strip_prefix(&root)
            .map_err(|_| VolumeError::SubPath {
                sub_path: resolved.display().to_string(),
                reason: "resolves outside the volume".into(),
            })?;
        let fd = subpath::open_beneath(&root, rel)?;
        let is_dir = nix::sys::stat::fstat(&fd)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .map_err(|e| VolumeError::Io {
                context: format!("stat {}", resolved.display()),
                source: e.into(),
            })?;
        let dir = self
            .pod_dir(&vols.pod_uid)
            .join("volume-subpaths")
            .join(volume)
            .join(container);
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let target = dir.join(index.to_string());
        // A container restart binds again: drop the previous pin first.
        if mounts::is_mount_point(&target)? {
            nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                VolumeError::Mount {
                    path: target.clone(),
                    reason: format!("umount: {e}"),
                }
            })?;
        }
        let _ = fs::remove_dir(&target);
        let _ = fs::remove_file(&target);
        if is_dir {
            fs::create_dir(&target).map_err(io(format!("creating {}", target.display())))?;
        } else {
            fs::File::create(&target).map_err(io(format!("creating {}", target.display())))?;
        }
        let src = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        nix::mount::mount(
            Some(src.as_str()),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| VolumeError::Mount {
            path: target.clone(),
            reason: format!("bind {}: {e}", resolved.display()),
        })?;
        Ok(target)
    }

    /// Unmounts the pod's tmpfs volumes and removes `<root>/pods/<uid>` with everything in
    /// it (idempotent). Symlinks are removed, never followed; if a mount cannot be removed
    /// nothing is deleted and [`VolumeError::Busy`] is returned. hostPath and claim volumes
    /// live outside the pod directory and are left alone.
    pub async fn teardown_pod(&self, pod_uid: &str) -> Result<(), VolumeError> {
        check_component("pod uid", pod_uid)?;
        let lock = self.pod_lock(pod_uid);
        let guard = lock.lock().await;
        self.tokens.lock().retain(|k, _| k.pod_uid != pod_uid);
        let dir = self.pod_dir(pod_uid);
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("stat {}", dir.display()))(e)),
            Ok(m) if !m.is_dir() => {
                // Never follow a symlink planted in place of the pod directory.
                fs::remove_file(&dir).map_err(io(format!("removing {}", dir.display())))?;
            }
            Ok(_) => {
                let real =
                    fs::canonicalize(&dir).map_err(io(format!("resolving {}", dir.display())))?;
                let left = mounts::unmount_below(&real)?;
                if !left.is_empty() {
                    return Err(VolumeError::Busy(real));
                }
                fs::remove_dir_all(&real).map_err(io(format!("removing {}", real.display())))?;
            }
        }
        drop(guard);
        self.pod_locks.lock().remove(pod_uid);
        Ok(())
    }
}

/// The pod's fsGroup, if any.
fn fs_group(pod: &Pod) -> Result<Option<u32>, VolumeError> {
    let g = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| c.fs_group);
    match g {
        None => Ok(None),
        Some(g) => u32::try_from(g)
            .map(Some)
            .map_err(|_| VolumeError::InvalidPod(format!("fsGroup {g} out of range"))),
    }
}

/// Writes an atomic-writer payload; with an fsGroup the files are group-readable and owned
/// by that group, as upstream's SetVolumeOwnership does for these read-only volumes.
fn write_payload(dir: &Path, mut p: Payload, fs_group: Option<u32>) -> Result<bool, VolumeError> {
    if fs_group.is_some() {
        for f in p.values_mut() {
            f.mode |= ownership::RO_MASK;
        }
    }
    let changed = atomic::write(dir, &p)?;
    if changed {
        ownership::apply(dir, fs_group, true)?;
    } else {
        ownership::apply_if_root_differs(dir, fs_group, true)?;
    }
    Ok(changed)
}

/// Upstream's token manager rule: renew once 80% of the lifetime has passed, or after 24 h.
fn token_needs_refresh(age: Duration, ttl: Duration) -> bool {
    age >= ttl.mul_f64(0.8) || age >= TOKEN_MAX_AGE
}

/// A hostPath path: absolute, no `..` (the API validates the same).
fn host_path(p: &str) -> Result<PathBuf, VolumeError> {
    let path = Path::new(p);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(VolumeError::InvalidPath {
            path: p.to_owned(),
            reason: "hostPath must be absolute without '..'".into(),
        });
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_refresh_at_80_percent_or_a_day() {
        let h = Duration::from_secs(3600);
        assert!(!token_needs_refresh(Duration::from_secs(2879), h));
        assert!(token_needs_refresh(Duration::from_secs(2880), h));
        let week = Duration::from_secs(7 * 24 * 3600);
        assert!(!token_needs_refresh(Duration::from_secs(23 * 3600), week));
        assert!(token_needs_refresh(TOKEN_MAX_AGE, week));
    }

    #[test]
    fn names_that_are_path_components() {
        for ok in ["0b5e-41", "kube-api-access-x9", "a.b_c"] {
            assert!(check_component("x", ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\0", &"x".repeat(300)] {
            assert!(check_component("x", bad).is_err(), "{bad}");
        }
    }
}
