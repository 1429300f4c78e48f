//! The kubelet's image manager: `imagePullPolicy` (Always / IfNotPresent / Never), pulls
//! deduplicated per image and credentials, and image garbage collection with upstream's
//! policy (above the high threshold of image-filesystem usage delete unused images, least
//! recently used first, until below the low threshold; never an image a container uses;
//! images younger than the minimum age are kept).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;

use super::auth::Keyring;
use super::oci::Digest;
use super::reference::Reference;
use super::registry::{RegistryClient, RegistryConfig};
use super::{ImageError, ImageRecord, ImageStore};

/// A container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference at the registry every time (blobs already held are not fetched
    /// again).
    Always,
    /// Pull only when the store has no image by that name.
    IfNotPresent,
    /// Never pull: `ErrImageNeverPull` when the image is missing.
    Never,
}

impl PullPolicy {
    /// The policy of a container: its `imagePullPolicy`, else upstream's default (Always for
    /// `:latest` or no tag, IfNotPresent otherwise, digests included).
    pub fn for_container(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => match Reference::parse(image) {
                Ok(r) if !r.is_latest() => PullPolicy::IfNotPresent,
                _ => PullPolicy::Always,
            },
        }
    }
}

/// Why a container's image is not there. [`EnsureError::reason`] is the container's waiting
/// reason; the Display text is upstream's message.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EnsureError {
    /// The image is missing and the policy is Never.
    #[error("Container image \"{image}\" is not present with pull policy of Never")]
    NeverPull {
        /// The container's image.
        image: String,
    },
    /// The reference cannot be parsed.
    #[error(
        "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": {message}"
    )]
    InvalidName {
        /// The container's image.
        image: String,
        /// Why.
        message: String,
    },
    /// The pull failed (the registry's error in `message`).
    #[error("Failed to pull image \"{image}\": {message}")]
    Pull {
        /// The container's image.
        image: String,
        /// What the registry (or the store) said.
        message: String,
    },
}

impl EnsureError {
    /// The container's waiting reason: `ErrImageNeverPull`, `InvalidImageName` or
    /// `ErrImagePull` (which turns into `ImagePullBackOff` while the kubelet backs off).
    pub fn reason(&self) -> &'static str {
        match self {
            EnsureError::NeverPull { .. } => "ErrImageNeverPull",
            EnsureError::InvalidName { .. } => "InvalidImageName",
            EnsureError::Pull { .. } => "ErrImagePull",
        }
    }
}

/// A finished pull.
#[derive(Debug, Clone)]
pub struct PullInfo {
    /// From asking to having the image (including waiting for a pull of the same image).
    pub duration: Duration,
    /// The image's size in the registry (config and layers).
    pub size: u64,
    /// Bytes downloaded (blobs the store had are not).
    pub bytes_fetched: u64,
}

/// The image a container will run.
#[derive(Debug, Clone)]
pub struct Ensured {
    /// The stored image.
    pub record: ImageRecord,
    /// `Some` when it was pulled now, `None` when it was present.
    pub pulled: Option<PullInfo>,
}

impl Ensured {
    /// Upstream's events for this outcome, `(reason, message)`, in order: `Pulling` and
    /// `Pulled` after a pull, `Pulled` ("already present") otherwise. The kubelet posts them
    /// on the pod (`spec.containers{name}`).
    pub fn events(&self, image: &str) -> Vec<(&'static str, String)> {
        match &self.pulled {
            Some(p) => vec![
                ("Pulling", format!("Pulling image \"{image}\"")),
                (
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{image}\" in {:?}. Image size: {} bytes.",
                        p.duration, p.size
                    ),
                ),
            ],
            None => vec![(
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            )],
        }
    }
}

/// Image garbage collection settings (upstream's kubelet defaults).
#[derive(Debug, Clone)]
pub struct ImageGcPolicy {
    /// Collect when the image filesystem is at least this full (percent; 100 disables).
    pub high_threshold_percent: u8,
    /// Collect down to this usage (percent).
    pub low_threshold_percent: u8,
    /// Images first seen less than this long ago are kept.
    pub min_age: Duration,
    /// How often usage is checked (upstream: 5 min).
    pub period: Duration,
}

impl Default for ImageGcPolicy {
    fn default() -> Self {
        ImageGcPolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            min_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Image-filesystem usage before (percent).
    pub usage_percent: u8,
    /// Bytes it set out to free (0: below the high threshold).
    pub wanted: u64,
    /// Bytes freed.
    pub freed: u64,
    /// The images deleted (their names, else their id).
    pub deleted: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    first_seen: Instant,
    last_used: Option<Instant>,
}

type PullFuture = Shared<BoxFuture<'static, Result<(ImageRecord, u64, u64), EnsureError>>>;

/// The image manager: one per kubelet, shared by its pod workers.
pub struct ImageManager {
    store: ImageStore,
    client: RegistryClient,
    gc: ImageGcPolicy,
    /// Pulls in flight by (reference, credentials fingerprint).
    inflight: Mutex<HashMap<String, PullFuture>>,
    /// When each image (by manifest digest) was first seen and last used by a container.
    usage: Mutex<HashMap<Digest, Usage>>,
    /// Pulls hold it shared, a collection exclusively (a pull's blobs are not yet named by
    /// an image, so a collection must not run in between).
    gc_lock: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for ImageManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageManager")
            .field("store", &self.store)
            .field("gc", &self.gc)
            .finish_non_exhaustive()
    }
}

impl ImageManager {
    /// A manager over `store`, pulling with `registry`, collecting with `gc`.
    pub fn new(store: ImageStore, registry: RegistryConfig, gc: ImageGcPolicy) -> ImageManager {
        ImageManager {
            store,
            client: RegistryClient::new(registry),
            gc,
            inflight: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            gc_lock: tokio::sync::RwLock::new(()),
        }
    }

    /// The store.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Makes sure `image` is in the store under `policy`, pulling with `keyring`'s
    /// credentials; marks it used.
    pub async fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        keyring: &Keyring,
    ) -> Result<Ensured, EnsureError> {
        let present = self.store.find(image).ok();
        let result = match (policy, present) {
            (PullPolicy::Never, Some(rec)) | (PullPolicy::IfNotPresent, Some(rec)) => Ensured {
                record: rec,
                pulled: None,
            },
            (PullPolicy::Never, None) => {
                return Err(EnsureError::NeverPull {
                    image: image.to_string(),
                });
            }
            (PullPolicy::Always, _) | (PullPolicy::IfNotPresent, None) => {
                let started = Instant::now();
                let (record, size, bytes_fetched) = self.pull(image, keyring).await?;
                Ensured {
                    record,
                    pulled: Some(PullInfo {
                        duration: started.elapsed(),
                        size,
                        bytes_fetched,
                    }),
                }
            }
        };
        self.mark_used(&result.record);
        Ok(result)
    }

    /// Pulls `image` (one pull at a time per image and credentials: concurrent callers share
    /// it). Returns the record, the image's size and the bytes downloaded.
    pub async fn pull(
        &self,
        image: &str,
        keyring: &Keyring,
    ) -> Result<(ImageRecord, u64, u64), EnsureError> {
        let reference = Reference::parse(image).map_err(|e| EnsureError::InvalidName {
            image: image.to_string(),
            message: e.to_string(),
        })?;
        let key = format!("{reference}#{}", keyring.fingerprint(&reference));
        let fut = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let client = self.client.clone();
                    let store = self.store.clone();
                    let creds = keyring.lookup(&reference);
                    let shown = image.to_string();
                    let task = tokio::spawn(async move {
                        let r = client.pull(&store, &reference, &creds).await;
                        r.map(|rep| (rep.record, rep.size, rep.bytes_fetched))
                            .map_err(|e| EnsureError::Pull {
                                image: shown,
                                message: e.to_string(),
                            })
                    });
                    let shown = image.to_string();
                    let f = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(EnsureError::Pull {
                                image: shown,
                                message: format!("pull task failed: {e}"),
                            })
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        let result = {
            let _pulling = self.gc_lock.read().await;
            fut.clone().await
        };
        // The first waiter to finish retires the entry (later ones find it gone).
        {
            let mut inflight = self.inflight.lock();
            if inflight.get(&key).is_some_and(|f| f.peek().is_some()) {
                inflight.remove(&key);
            }
        }
        if let Ok((rec, _, _)) = &result {
            tracing::info!(image, id = %rec.config, "pulled image");
        }
        result
    }

    /// Records that a container is about to use `rec` now.
    pub fn mark_used(&self, rec: &ImageRecord) {
        let now = Instant::now();
        let mut u = self.usage.lock();
        let e = u.entry(rec.manifest.clone()).or_insert(Usage {
            first_seen: now,
            last_used: None,
        });
        e.last_used = Some(now);
    }

    /// One collection: `in_use` holds the image ids (config digests, as the runtime's
    /// containers record them) of every container present, running or exited.
    pub async fn garbage_collect(&self, in_use: &HashSet<String>) -> Result<GcReport, ImageError> {
        let _exclusive = self.gc_lock.write().await;
        let (capacity, available) = fs_stats(self.store.root())?;
        let usage_percent = available
            .saturating_mul(100)
            .checked_div(capacity)
            .map_or(0, |free| 100u64.saturating_sub(free) as u8);
        let images = self.store.list()?;
        let now = Instant::now();
        let order = {
            let mut u = self.usage.lock();
            u.retain(|d, _| images.iter().any(|i| i.manifest == *d));
            let mut order = Vec::new();
            for rec in &images {
                let e = u.entry(rec.manifest.clone()).or_insert(Usage {
                    first_seen: now,
                    last_used: None,
                });
                if in_use.contains(rec.config.as_str()) {
                    e.last_used = Some(now);
                    continue;
                }
                if now.duration_since(e.first_seen) < self.gc.min_age {
                    continue;
                }
                order.push((e.last_used, e.first_seen, rec.clone()));
            }
            // Never used first, then least recently used.
            order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
            order
        };
        let mut report = GcReport {
            usage_percent,
            ..GcReport::default()
        };
        if self.gc.high_threshold_percent >= 100 || usage_percent < self.gc.high_threshold_percent {
            return Ok(report);
        }
        let target =
            capacity.saturating_mul(100 - self.gc.low_threshold_percent.min(100) as u64) / 100;
        report.wanted = target.saturating_sub(available);
        for (_, _, rec) in order {
            if report.freed >= report.wanted {
                break;
            }
            let size = self.store.image_size(&rec);
            match self.store.remove_image(&rec.manifest) {
                Ok(freed) => {
                    tracing::info!(id = %rec.config, names = ?rec.names, size, freed, "image garbage collected");
                    report.freed += size.max(freed);
                    report.deleted.push(
                        rec.names
                            .first()
                            .cloned()
                            .unwrap_or_else(|| rec.config.to_string()),
                    );
                    self.usage.lock().remove(&rec.manifest);
                }
                Err(e) => tracing::warn!(id = %rec.config, "removing image: {e}"),
            }
        }
        if report.freed < report.wanted {
            tracing::warn!(
                usage = usage_percent,
                wanted = report.wanted,
                freed = report.freed,
                "image garbage collection freed less than wanted (the rest is in use or too young)"
            );
        }
        Ok(report)
    }

    /// Collects every `gc.period` with the images of `runtime`'s containers in use. Runs
    /// until aborted.
    pub async fn gc_loop(self: Arc<Self>, runtime: Arc<crate::runtime::Runtime>) {
        let period = self.gc.period.max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(period).await;
            let in_use: HashSet<String> = match runtime.list_containers() {
                Ok(cs) => cs.into_iter().map(|c| c.image_id).collect(),
                Err(e) => {
                    tracing::warn!("image gc: listing containers: {e}");
                    continue;
                }
            };
            if let Err(e) = self.garbage_collect(&in_use).await {
                tracing::warn!("image garbage collection: {e}");
            }
        }
    }
}

/// `kubeshard image pull`: pulls `reference` into the store under `data_dir` with the
/// credentials of a docker `config.json`, and returns the line to print (id, name, size,
/// time).
pub async fn pull_command(
    data_dir: &std::path::Path,
    reference: &str,
    docker_config: Option<&std::path::Path>,
    insecure_registries: Vec<String>,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let store = ImageStore::open(data_dir)?;
    let mut keyring = Keyring::new();
    if let Some(p) = docker_config {
        keyring.add_docker_config_json(&std::fs::read(p)?)?;
    }
    let mut cfg = RegistryConfig::new(data_dir);
    cfg.insecure_registries = insecure_registries;
    let m = ImageManager::new(store, cfg, ImageGcPolicy::default());
    let started = Instant::now();
    let (rec, size, fetched) = m.pull(reference, &keyring).await?;
    Ok(format!(
        "{} {} size={size} fetched={fetched} in {:?}",
        rec.config,
        rec.names.join(","),
        started.elapsed()
    ))
}

/// `kubeshard image ls`: one line per image (names, id, size).
pub fn list_table(store: &ImageStore) -> Result<String, ImageError> {
    use std::fmt::Write as _;
    let mut out = String::from("IMAGE\tID\tSIZE\n");
    for rec in store.list()? {
        let size = store.image_size(&rec);
        let id = &rec.config.hex()[..12];
        if rec.names.is_empty() {
            let _ = writeln!(out, "<none>\t{id}\t{size}");
        }
        for n in &rec.names {
            let _ = writeln!(out, "{n}\t{id}\t{size}");
        }
    }
    Ok(out)
}

/// Capacity and space available to unprivileged users of the file system holding `path`.
fn fs_stats(path: &std::path::Path) -> Result<(u64, u64), ImageError> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| ImageError::Io(e.into()))?;
    let frsize = s.fragment_size() as u64;
    Ok((
        (s.blocks() as u64).saturating_mul(frsize),
        (s.blocks_available() as u64).saturating_mul(frsize),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pull_policies() {
        let p = |pol: Option<&str>, img: &str| PullPolicy::for_container(pol, img);
        assert_eq!(p(None, "busybox"), PullPolicy::Always);
        assert_eq!(p(None, "busybox:latest"), PullPolicy::Always);
        assert_eq!(p(None, "busybox:1.36"), PullPolicy::IfNotPresent);
        assert_eq!(
            p(None, &format!("busybox@{}", Digest::of(b""))),
            PullPolicy::IfNotPresent
        );
        assert_eq!(p(Some("Never"), "busybox"), PullPolicy::Never);
        assert_eq!(p(Some("IfNotPresent"), "busybox"), PullPolicy::IfNotPresent);
        assert_eq!(p(Some("Always"), "x:1"), PullPolicy::Always);
    }

    #[test]
    fn reasons() {
        let e = EnsureError::NeverPull { image: "x".into() };
        assert_eq!(e.reason(), "ErrImageNeverPull");
        assert_eq!(
            e.to_string(),
            "Container image \"x\" is not present with pull policy of Never"
        );
    }
}
