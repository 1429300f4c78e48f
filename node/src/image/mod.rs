//! The node's image store: content-addressed blobs, image names, imports of OCI layouts and
//! `docker save` / OCI archives, and layers unpacked once each.
//!
//! Layout under the data dir:
//!
//! ```text
//! images/blobs/sha256/<hex>     blobs (manifests, configs, layer tars), named by their digest
//! images/layers/<hex>/          a layer unpacked (named by its blob digest), an overlay lowerdir
//! images/images.json            image names -> manifest digests
//! images/tmp/                   staging (same file system, so blobs move in by rename)
//! images/lock                   flock held while images.json changes (CLI import vs kubelet)
//! ```
//!
//! **Invariant:** a file in `blobs/` always has the digest it is named by (it is hashed as it is
//! copied to staging and renamed in only on a match), and a directory in `layers/` is complete
//! (unpacked to staging, checked against the config's diff id, then renamed in).

pub mod auth;
pub mod manager;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use oci::{Descriptor, Digest, ExecConfig, ImageConfigFile, Index, Manifest, media};

/// Largest JSON document (index, manifest, config) the store reads.
const MAX_JSON_BYTES: u64 = 8 << 20;
/// Largest number of entries in an imported archive.
const MAX_ARCHIVE_ENTRIES: usize = 100_000;
/// Deepest index nesting followed.
const MAX_INDEX_DEPTH: usize = 4;

/// Errors of the image store. None is retryable as is except `Io`, which may be transient
/// (disk full, a file removed under us).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file system operation failed.
    #[error("image store I/O: {0}")]
    Io(#[from] io::Error),
    /// A digest string is not `sha256:` and 64 lowercase hex digits.
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// Content does not hash to the digest that names it.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the descriptor (or diff id) names.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// An image reference is malformed.
    #[error("invalid image reference {0:?}")]
    InvalidReference(String),
    /// A JSON document is malformed.
    #[error("invalid {what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The archive or layout is not one the store understands.
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// A layer tar is malformed or hostile in a way that cannot be applied safely.
    #[error("invalid layer: {0}")]
    InvalidLayer(String),
    /// A referenced blob is not in the archive or the store.
    #[error("blob {0} is missing")]
    MissingBlob(String),
    /// A media type the store does not support (e.g. zstd layers).
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// No image has this name or id.
    #[error("image {0:?} not found")]
    NotFound(String),
}

/// An image as the store knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// Normalised names (`docker.io/library/busybox:latest`), may be empty.
    pub names: Vec<String>,
    /// Digest of the manifest.
    pub manifest: Digest,
    /// Digest of the config (the image id).
    pub config: Digest,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ImagesFile {
    images: Vec<ImageRecord>,
}

/// A resolved image: its record, its config and its layers.
#[derive(Debug, Clone)]
pub struct Image {
    /// The store's record.
    pub record: ImageRecord,
    /// Execution defaults from the config (Entrypoint, Cmd, Env, WorkingDir, User).
    pub exec: ExecConfig,
    /// Layer descriptors, base first.
    pub layers: Vec<Descriptor>,
    /// Diff ids, base first (same length as `layers`).
    pub diff_ids: Vec<Digest>,
}

/// The image store under `<data_dir>/images`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating) the store under `data_dir/images`.
    pub fn open(data_dir: &Path) -> Result<ImageStore, ImageError> {
        let root = data_dir.join("images");
        for d in ["blobs/sha256", "layers", "tmp"] {
            fs::create_dir_all(root.join(d))?;
        }
        Ok(ImageStore { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a blob.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The directory that holds unpacked layers (overlay lowerdirs are named relative to it).
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn staging(&self) -> Result<PathBuf, ImageError> {
        let p = self
            .root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        fs::create_dir(&p)?;
        Ok(p)
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>, ImageError> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| ImageError::Io(e.into()))
    }

    fn read_images(&self) -> Result<ImagesFile, ImageError> {
        match fs::read(self.root.join("images.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| ImageError::Json {
                what: "images.json",
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ImagesFile::default()),
            Err(e) => Err(e.into()),
        }
    }

    fn write_images(&self, f: &ImagesFile) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(f).map_err(|source| ImageError::Json {
            what: "images.json",
            source,
        })?;
        write_atomic(&self.root.join("images.json"), &bytes)
    }

    /// All images.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.read_images()?.images)
    }

    /// Finds an image by name (normalised), by config digest (`sha256:...`), or by a unique
    /// prefix of at least 12 hex digits of the config digest.
    pub fn find(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let images = self.read_images()?.images;
        let hexref = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hexref.len() >= 12 && hexref.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = images
                .iter()
                .filter(|i| i.config.hex().starts_with(hexref))
                .collect();
            if hits.len() == 1 {
                return Ok(hits[0].clone());
            }
        }
        let name = oci::normalize_reference(reference)?;
        images
            .into_iter()
            .find(|i| i.names.contains(&name))
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))
    }

    /// Resolves an image with its config and layers.
    pub fn get(&self, reference: &str) -> Result<Image, ImageError> {
        let record = self.find(reference)?;
        let manifest: Manifest = self.read_json_blob(&record.manifest, "manifest")?;
        let config: ImageConfigFile = self.read_json_blob(&record.config, "image config")?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::InvalidArchive(format!(
                "{} layers but {} diff ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        Ok(Image {
            record,
            exec: config.config.unwrap_or_default(),
            layers: manifest.layers,
            diff_ids: config.rootfs.diff_ids,
        })
    }

    fn read_json_blob<T: serde::de::DeserializeOwned>(
        &self,
        d: &Digest,
        what: &'static str,
    ) -> Result<T, ImageError> {
        let mut buf = Vec::new();
        fs::File::open(self.blob_path(d))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => ImageError::MissingBlob(d.to_string()),
                _ => e.into(),
            })?
            .take(MAX_JSON_BYTES)
            .read_to_end(&mut buf)?;
        serde_json::from_slice(&buf).map_err(|source| ImageError::Json { what, source })
    }

    /// Unpacks each layer of `image` that is not unpacked yet and returns the layer
    /// directories, base first. Each layer is unpacked once into its own directory.
    pub fn ensure_unpacked(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        let mut dirs = Vec::with_capacity(image.layers.len());
        for (layer, diff_id) in image.layers.iter().zip(&image.diff_ids) {
            let dir = self.layers_dir().join(layer.digest.hex());
            if !dir.is_dir() {
                self.unpack_into_place(layer, diff_id, &dir)?;
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    fn unpack_into_place(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        dir: &Path,
    ) -> Result<(), ImageError> {
        let staging = self.staging()?;
        let target = staging.join("fs");
        fs::create_dir(&target)?;
        let result = (|| {
            let f = fs::File::open(self.blob_path(&layer.digest))
                .map_err(|_| ImageError::MissingBlob(layer.digest.to_string()))?;
            let reader = decompressor(&layer.media_type, io::BufReader::new(f))?;
            unpack::unpack_layer(reader, &target, Some(diff_id))?;
            match fs::rename(&target, dir) {
                Ok(()) => Ok(()),
                // Another unpack of the same layer won the race: theirs is as good as ours.
                Err(_) if dir.is_dir() => Ok(()),
                Err(e) => Err(ImageError::Io(e)),
            }
        })();
        let _ = fs::remove_dir_all(&staging);
        result
    }

    /// Imports an OCI image layout directory, an OCI archive (a tar of a layout) or a
    /// `docker save` archive (optionally gzip-compressed). Returns the images imported.
    pub fn import(&self, path: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        let staging = self.staging()?;
        let result = (|| {
            let files = if path.is_dir() {
                Staged::from_dir(path)?
            } else {
                Staged::from_archive(fs::File::open(path)?, &staging)?
            };
            self.import_staged(&files)
        })();
        let _ = fs::remove_dir_all(&staging);
        result
    }

    fn import_staged(&self, files: &Staged) -> Result<Vec<ImageRecord>, ImageError> {
        let mut found: Vec<(Vec<String>, Digest, Digest)> = Vec::new();
        if let Some(index_path) = files.get("index.json") {
            let index: Index = read_json_file(index_path, "index.json")?;
            for desc in &index.manifests {
                let mut names = Vec::new();
                if let Some(n) = desc.annotations.get("io.containerd.image.name") {
                    names.push(oci::normalize_reference(n)?);
                }
                // `ref.name` is often a bare tag (`latest`), which names nothing by itself.
                if let Some(n) = desc.annotations.get("org.opencontainers.image.ref.name")
                    && (n.contains('/') || n.contains(':'))
                {
                    names.push(oci::normalize_reference(n)?);
                }
                let (manifest_digest, config_digest) = self.import_oci_manifest(files, desc, 0)?;
                names.dedup();
                found.push((names, manifest_digest, config_digest));
            }
        } else if let Some(mpath) = files.get("manifest.json") {
            let entries: Vec<oci::DockerSaveEntry> = read_json_file(mpath, "manifest.json")?;
            for e in entries {
                let (md, cd) = self.import_docker_entry(files, &e)?;
                let mut names = Vec::new();
                for t in e.repo_tags.unwrap_or_default() {
                    names.push(oci::normalize_reference(&t)?);
                }
                found.push((names, md, cd));
            }
        } else {
            return Err(ImageError::InvalidArchive(
                "neither an OCI layout (index.json) nor a docker archive (manifest.json)".into(),
            ));
        }
        if found.is_empty() {
            return Err(ImageError::InvalidArchive(
                "no images in the archive".into(),
            ));
        }
        self.add_images(found)
    }

    /// Records images `(names, manifest digest, config digest)` whose blobs are in the
    /// store; a name moves to the image recorded last.
    pub(crate) fn add_images(
        &self,
        found: Vec<(Vec<String>, Digest, Digest)>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let _lock = self.lock()?;
        let mut db = self.read_images()?;
        let mut out = Vec::new();
        for (names, manifest, config) in found {
            // A name moves to the newly imported image.
            for img in &mut db.images {
                img.names.retain(|n| !names.contains(n));
            }
            let rec = match db.images.iter_mut().find(|i| i.manifest == manifest) {
                Some(existing) => {
                    for n in &names {
                        if !existing.names.contains(n) {
                            existing.names.push(n.clone());
                        }
                    }
                    existing.clone()
                }
                None => {
                    let r = ImageRecord {
                        names,
                        manifest,
                        config,
                    };
                    db.images.push(r.clone());
                    r
                }
            };
            out.push(rec);
        }
        self.write_images(&db)?;
        Ok(out)
    }

    /// The blobs an image consists of: its manifest, config and layers.
    fn image_blobs(&self, rec: &ImageRecord) -> Vec<Digest> {
        let mut out = vec![rec.manifest.clone(), rec.config.clone()];
        if let Ok(m) = self.read_json_blob::<Manifest>(&rec.manifest, "manifest") {
            out.extend(m.layers.into_iter().map(|l| l.digest));
        }
        out
    }

    /// The disk an image takes: its blobs and its unpacked layers (shared ones counted in
    /// full, as upstream counts image sizes).
    pub fn image_size(&self, rec: &ImageRecord) -> u64 {
        let mut size = 0;
        for d in self.image_blobs(rec) {
            size += fs::metadata(self.blob_path(&d)).map_or(0, |m| m.len());
            size += dir_size(&self.layers_dir().join(d.hex()), 100_000);
        }
        size
    }

    /// Removes the image with manifest digest `manifest` and the blobs and unpacked layers
    /// no other image uses. Returns the bytes freed. The caller makes sure no container
    /// uses the image.
    pub fn remove_image(&self, manifest: &Digest) -> Result<u64, ImageError> {
        let _lock = self.lock()?;
        let mut db = self.read_images()?;
        let Some(pos) = db.images.iter().position(|i| i.manifest == *manifest) else {
            return Err(ImageError::NotFound(manifest.to_string()));
        };
        let gone = db.images.remove(pos);
        self.write_images(&db)?;
        let keep: std::collections::HashSet<Digest> =
            db.images.iter().flat_map(|i| self.image_blobs(i)).collect();
        let mut freed = 0;
        for d in self.image_blobs(&gone) {
            if keep.contains(&d) {
                continue;
            }
            let layer = self.layers_dir().join(d.hex());
            if layer.is_dir() {
                freed += dir_size(&layer, 100_000);
                // Renamed away first so a half-deleted layer is never taken for a whole one.
                let trash = self.staging()?.join("layer");
                fs::rename(&layer, &trash)?;
                let _ = fs::remove_dir_all(trash.parent().unwrap_or(&trash));
            }
            let blob = self.blob_path(&d);
            if let Ok(m) = fs::metadata(&blob) {
                freed += m.len();
                fs::remove_file(&blob)?;
            }
        }
        Ok(freed)
    }

    /// Whether the store holds blob `d`.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Moves a verified staging file in as blob `d` (the caller hashed it).
    pub(crate) fn commit_blob(&self, tmp: &Path, d: &Digest) -> Result<(), ImageError> {
        fs::rename(tmp, self.blob_path(d))?;
        Ok(())
    }

    /// Stores `bytes` as a blob under their own digest `d` (checked).
    pub(crate) fn put_blob(&self, d: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
        let got = Digest::of(bytes);
        if got != *d {
            return Err(ImageError::DigestMismatch {
                expected: d.to_string(),
                actual: got.to_string(),
            });
        }
        if !self.has_blob(d) {
            write_atomic(&self.blob_path(d), bytes)?;
        }
        Ok(())
    }

    /// Copies a blob from the staged files into the store, verifying its digest.
    fn take_blob(&self, files: &Staged, d: &Digest) -> Result<(), ImageError> {
        let dst = self.blob_path(d);
        if dst.exists() {
            return Ok(());
        }
        let src = files
            .get(&format!("blobs/sha256/{}", d.hex()))
            .ok_or_else(|| ImageError::MissingBlob(d.to_string()))?;
        self.copy_verified(src, d)
    }

    fn copy_verified(&self, src: &Path, d: &Digest) -> Result<(), ImageError> {
        use sha2::Digest as _;
        let staging = self.staging()?;
        let tmp = staging.join("blob");
        let result = (|| {
            let mut input = fs::File::open(src)?;
            let mut out = fs::File::create(&tmp)?;
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            out.sync_all()?;
            let got = Digest::from_sha256(hasher.finalize().as_slice());
            if got != *d {
                return Err(ImageError::DigestMismatch {
                    expected: d.to_string(),
                    actual: got.to_string(),
                });
            }
            fs::rename(&tmp, self.blob_path(d))?;
            Ok(())
        })();
        let _ = fs::remove_dir_all(&staging);
        result
    }

    fn import_oci_manifest(
        &self,
        files: &Staged,
        desc: &Descriptor,
        depth: usize,
    ) -> Result<(Digest, Digest), ImageError> {
        if depth > MAX_INDEX_DEPTH {
            return Err(ImageError::InvalidArchive("indexes nested too deep".into()));
        }
        self.take_blob(files, &desc.digest)?;
        let raw = read_limited(&self.blob_path(&desc.digest))?;
        if desc.media_type == media::INDEX || desc.media_type == media::DOCKER_LIST {
            let index: Index = serde_json::from_slice(&raw).map_err(|source| ImageError::Json {
                what: "image index",
                source,
            })?;
            let arch = host_arch();
            let pick = index
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .or_else(|| index.manifests.iter().find(|m| m.platform.is_none()))
                .ok_or_else(|| {
                    ImageError::InvalidArchive(format!("no manifest for linux/{arch}"))
                })?;
            return self.import_oci_manifest(files, pick, depth + 1);
        }
        let manifest: Manifest =
            serde_json::from_slice(&raw).map_err(|source| ImageError::Json {
                what: "image manifest",
                source,
            })?;
        self.take_blob(files, &manifest.config.digest)?;
        for l in &manifest.layers {
            decompressor(&l.media_type, io::empty())?; // reject unsupported types early
            self.take_blob(files, &l.digest)?;
        }
        Ok((desc.digest.clone(), manifest.config.digest))
    }

    fn import_docker_entry(
        &self,
        files: &Staged,
        e: &oci::DockerSaveEntry,
    ) -> Result<(Digest, Digest), ImageError> {
        let cfg_path = files
            .get(&e.config)
            .ok_or_else(|| ImageError::MissingBlob(e.config.clone()))?;
        let cfg_bytes = read_limited(cfg_path)?;
        let cfg_digest = Digest::of(&cfg_bytes);
        // Old docker names the config `<hex>.json`, new docker `blobs/sha256/<hex>`: both
        // name its digest, which must match.
        let stem = e
            .config
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".json");
        if stem.len() == 64 && stem != cfg_digest.hex() {
            return Err(ImageError::DigestMismatch {
                expected: format!("sha256:{stem}"),
                actual: cfg_digest.to_string(),
            });
        }
        let config: ImageConfigFile =
            serde_json::from_slice(&cfg_bytes).map_err(|source| ImageError::Json {
                what: "image config",
                source,
            })?;
        if config.rootfs.diff_ids.len() != e.layers.len() {
            return Err(ImageError::InvalidArchive(format!(
                "{} layers but {} diff ids",
                e.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (name, diff_id) in e.layers.iter().zip(&config.rootfs.diff_ids) {
            let p = files
                .get(name)
                .ok_or_else(|| ImageError::MissingBlob(name.clone()))?;
            // docker save layers are uncompressed tars: the blob digest is the diff id.
            let (digest, gz) = sniff_digest(p)?;
            if !gz && digest != *diff_id {
                return Err(ImageError::DigestMismatch {
                    expected: diff_id.to_string(),
                    actual: digest.to_string(),
                });
            }
            if !self.blob_path(&digest).exists() {
                self.copy_verified(p, &digest)?;
            }
            let size = fs::metadata(p)?.len();
            layers.push(Descriptor {
                media_type: if gz {
                    media::LAYER_TAR_GZIP
                } else {
                    media::LAYER_TAR
                }
                .into(),
                digest,
                size,
                annotations: BTreeMap::new(),
                platform: None,
            });
        }
        if !self.blob_path(&cfg_digest).exists() {
            self.copy_verified(cfg_path, &cfg_digest)?;
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.into()),
            config: Descriptor {
                media_type: media::CONFIG.into(),
                digest: cfg_digest.clone(),
                size: cfg_bytes.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers,
        };
        let mbytes = serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
            what: "image manifest",
            source,
        })?;
        let md = Digest::of(&mbytes);
        if !self.blob_path(&md).exists() {
            write_atomic(&self.blob_path(&md), &mbytes)?;
        }
        Ok((md, cfg_digest))
    }
}

/// Bytes in the regular files under `dir` (at most `max_entries` looked at; 0 if absent).
fn dir_size(dir: &Path, max_entries: usize) -> u64 {
    let mut total = 0;
    let mut seen = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            seen += 1;
            if seen > max_entries {
                return total;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// Returns the sha256 of a file and whether it is gzip-compressed.
fn sniff_digest(p: &Path) -> Result<(Digest, bool), ImageError> {
    use sha2::Digest as _;
    let mut f = fs::File::open(p)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut first = true;
    let mut gz = false;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if first {
            gz = n >= 2 && buf[0] == 0x1f && buf[1] == 0x8b;
            first = false;
        }
        hasher.update(&buf[..n]);
    }
    Ok((Digest::from_sha256(hasher.finalize().as_slice()), gz))
}

/// A reader that undoes a layer's compression.
fn decompressor<'a, R: io::BufRead + 'a>(
    media_type: &str,
    r: R,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    match media_type {
        media::LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" | "" => Ok(Box::new(r)),
        media::LAYER_TAR_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Ok(Box::new(flate2::bufread::GzDecoder::new(r)))
        }
        other => Err(ImageError::UnsupportedMediaType(other.to_string())),
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn read_limited(p: &Path) -> Result<Vec<u8>, ImageError> {
    let mut buf = Vec::new();
    fs::File::open(p)?
        .take(MAX_JSON_BYTES)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_json_file<T: serde::de::DeserializeOwned>(
    p: &Path,
    what: &'static str,
) -> Result<T, ImageError> {
    serde_json::from_slice(&read_limited(p)?).map_err(|source| ImageError::Json { what, source })
}

/// Replaces a file atomically (temporary file, rename) without an fsync: for runtime state
/// (sandbox, container and exit records) that only has to survive the kubelet or a shim
/// dying, never the machine (after a reboot no process of the record is left anyway). An
/// fsync per record cost a disk flush on every pod start.
pub(crate) fn write_replace(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    fs::write(&tmp, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

/// Writes a file atomically (temporary file, fsync, rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The files of an archive or layout, by their cleaned path inside it.
struct Staged {
    files: BTreeMap<String, PathBuf>,
    /// Symlinks inside an archive (docker 25+ links legacy layer paths into blobs/).
    links: BTreeMap<String, String>,
}

impl Staged {
    fn get(&self, name: &str) -> Option<&Path> {
        let mut name = clean(name)?;
        for _ in 0..16 {
            if let Some(p) = self.files.get(&name) {
                return Some(p);
            }
            let target = self.links.get(&name)?;
            name = target.clone();
        }
        None
    }

    /// A layout on disk: files are read where they are (blobs are verified when copied).
    fn from_dir(dir: &Path) -> Result<Staged, ImageError> {
        let mut files = BTreeMap::new();
        for name in ["index.json", "oci-layout", "manifest.json"] {
            if dir.join(name).is_file() {
                files.insert(name.to_string(), dir.join(name));
            }
        }
        let blobs = dir.join("blobs/sha256");
        if blobs.is_dir() {
            for e in fs::read_dir(&blobs)?.take(MAX_ARCHIVE_ENTRIES) {
                let e = e?;
                if let Some(n) = e.file_name().to_str() {
                    files.insert(format!("blobs/sha256/{n}"), e.path());
                }
            }
        }
        Ok(Staged {
            files,
            links: BTreeMap::new(),
        })
    }

    /// An archive: regular files are copied into `staging` (flat, numbered), symlinks are
    /// remembered and resolved lexically inside the archive.
    fn from_archive(f: fs::File, staging: &Path) -> Result<Staged, ImageError> {
        let mut r = io::BufReader::new(f);
        let gz = {
            use io::BufRead as _;
            let head = r.fill_buf()?;
            head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
        };
        let reader: Box<dyn Read> = if gz {
            Box::new(flate2::bufread::GzDecoder::new(r))
        } else {
            Box::new(r)
        };
        let mut ar = tar::Archive::new(reader);
        let mut files = BTreeMap::new();
        let mut links = BTreeMap::new();
        for (i, entry) in ar.entries()?.enumerate() {
            if i >= MAX_ARCHIVE_ENTRIES {
                return Err(ImageError::InvalidArchive("too many entries".into()));
            }
            let mut entry = entry?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = clean(&raw) else { continue };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let dst = staging.join(format!("f{i}"));
                    let mut out = fs::File::create(&dst)?;
                    io::copy(&mut entry, &mut out)?;
                    files.insert(name, dst);
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    let resolved = if entry.header().entry_type() == tar::EntryType::Link
                        || target.starts_with('/')
                    {
                        clean(&target)
                    } else {
                        let base = name.rsplit_once('/').map_or("", |(d, _)| d);
                        clean(&format!("{base}/{target}"))
                    };
                    if let Some(t) = resolved {
                        links.insert(name, t);
                    }
                }
                _ => {}
            }
        }
        Ok(Staged { files, links })
    }
}

/// Cleans a path inside an archive; `None` for the root or a path that climbs out.
fn clean(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}
