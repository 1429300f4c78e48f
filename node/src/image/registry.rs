//! An OCI distribution (registry v2) client that pulls images into the [`ImageStore`].
//!
//! - Manifests are asked for with the OCI and Docker schema 2 media types; an image index (or
//!   Docker manifest list) resolves to its `linux/<host arch>` manifest.
//! - Blobs stream to a staging file while hashed; only a blob whose sha256 and size match
//!   its descriptor is renamed into the store (a mismatch is an error and leaves nothing).
//! - Auth: anonymous, then on a 401 the `WWW-Authenticate` challenge: Basic (the pod's
//!   credentials) or Bearer (a token from the realm, with the credentials if any).
//! - Transport: HTTPS verified with the system roots plus the registry's own CAs in
//!   `<data-dir>/certs.d/<host[:port]>/*.crt` (containerd's and Docker's `certs.d` layout).
//!   Plain HTTP only for loopback registries and registries listed as insecure (Docker's
//!   rule; an insecure registry's certificate is not verified either), and only after
//!   HTTPS failed at the transport level.
//! - Bounded: manifest and error bodies by size, blobs by their descriptor's size and a
//!   global limit, connects and responses by timeouts, every body read by an idle timeout,
//!   redirects by count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION, USER_AGENT, WWW_AUTHENTICATE,
};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use super::auth::{Challenge, Credential, parse_challenge};
use super::oci::{Descriptor, Digest, ImageConfigFile, Index, Manifest, media};
use super::reference::Reference;
use super::{ImageError, ImageRecord, ImageStore};

/// The manifest types asked for, most wanted first.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Docker's schema 1 (signed) manifests: refused with a clear error.
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Largest registry error body read (for the message).
const MAX_ERROR_BODY: usize = 64 << 10;
/// Largest token response.
const MAX_TOKEN_BODY: usize = 1 << 20;
/// Redirects followed per request.
const MAX_REDIRECTS: usize = 5;
/// Largest number of layers in a manifest.
const MAX_LAYERS: usize = 512;

/// How the registry client connects and what it accepts.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Per-registry CAs: `<certs_dir>/<host[:port]>/*.crt` (default `<data-dir>/certs.d`).
    pub certs_dir: PathBuf,
    /// Registries reached over plain HTTP (or HTTPS without verification): `host`,
    /// `host:port` or an IP CIDR, as Docker's `insecure-registries`. Loopback registries
    /// may use plain HTTP without being listed.
    pub insecure_registries: Vec<String>,
    /// TCP connect and TLS handshake.
    pub connect_timeout: Duration,
    /// From a request sent to its response's headers.
    pub response_timeout: Duration,
    /// Largest pause within a body (upstream's image pull progress deadline is 1 min).
    pub idle_timeout: Duration,
    /// Largest manifest or index.
    pub max_manifest_bytes: usize,
    /// Largest blob.
    pub max_blob_bytes: u64,
    /// Blobs downloaded at once per pull (containerd's default is 3).
    pub max_concurrent_blobs: usize,
}

impl RegistryConfig {
    /// The defaults for a node keeping its data in `data_dir`.
    pub fn new(data_dir: &Path) -> RegistryConfig {
        RegistryConfig {
            certs_dir: data_dir.join("certs.d"),
            insecure_registries: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 32 << 30,
            max_concurrent_blobs: 3,
        }
    }
}

/// Why a pull failed. The message is what the pod's `ErrImagePull` status shows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry could not be reached (DNS, TCP, TLS).
    #[error("{0}")]
    Transport(String),
    /// The registry's certificate is not trusted (never a reason to fall back to HTTP).
    #[error("{0}")]
    Certificate(String),
    /// A connect, response or body read took too long.
    #[error("timed out {0}")]
    Timeout(String),
    /// The registry refused the credentials (or wants some).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The image (or a blob of it) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other unexpected HTTP status.
    #[error("unexpected status {status}: {message}")]
    Status {
        /// The status code.
        status: u16,
        /// The registry's error message.
        message: String,
    },
    /// A manifest, index or token is malformed or of an unsupported kind.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// Which document.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Content does not match its digest (or its size).
    #[error("{what} {expected} failed verification: got {actual}")]
    Verification {
        /// Which content.
        what: &'static str,
        /// The descriptor's digest.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// Content is larger than allowed.
    #[error("{what} larger than {limit} bytes")]
    TooLarge {
        /// Which content.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The store could not take the image.
    #[error(transparent)]
    Store(#[from] ImageError),
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        RegistryError::Store(ImageError::Io(e))
    }
}

impl RegistryError {
    /// Whether the failure happened before any HTTP exchange (worth retrying over HTTP).
    fn is_transport(&self) -> bool {
        matches!(self, RegistryError::Transport(_))
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The image as stored.
    pub record: ImageRecord,
    /// The image's size (config and layers as in the registry).
    pub size: u64,
    /// Blobs downloaded (the others were in the store already).
    pub blobs_fetched: usize,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
}

/// The registry client. Cheap to share; each pull opens its own connections.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    cfg: Arc<RegistryConfig>,
}

impl RegistryClient {
    /// A client with `cfg`.
    pub fn new(cfg: RegistryConfig) -> RegistryClient {
        RegistryClient { cfg: Arc::new(cfg) }
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// Pulls `reference` into `store` and names it there. `creds` are tried in order (a
    /// credential the registry refuses moves on to the next); with none the pull is
    /// anonymous.
    pub async fn pull(
        &self,
        store: &ImageStore,
        reference: &Reference,
        creds: &[Credential],
    ) -> Result<PullReport, RegistryError> {
        if creds.is_empty() {
            return self.pull_with(store, reference, None).await;
        }
        let mut last = None;
        for c in creds {
            match self.pull_with(store, reference, Some(c.clone())).await {
                Err(e @ RegistryError::Unauthorized(_)) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Unauthorized("no credential accepted".into())))
    }

    async fn pull_with(
        &self,
        store: &ImageStore,
        reference: &Reference,
        cred: Option<Credential>,
    ) -> Result<PullReport, RegistryError> {
        let s = Session::new(self.cfg.clone(), reference, cred);
        let (bytes, mt, digest) = s
            .fetch_manifest(&reference.manifest_ref(), reference.digest.as_ref())
            .await?;
        let (bytes, digest) = match kind_of(&mt, &bytes)? {
            Kind::Index => {
                let index: Index =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
                        what: "image index",
                        message: e.to_string(),
                    })?;
                let pick = pick_platform(&index)?;
                let (b, mt, d) = s
                    .fetch_manifest(pick.digest.as_str(), Some(&pick.digest))
                    .await?;
                if kind_of(&mt, &b)? != Kind::Manifest {
                    return Err(RegistryError::Invalid {
                        what: "image index",
                        message: "its platform entry is not an image manifest".into(),
                    });
                }
                (b, d)
            }
            Kind::Manifest => (bytes, digest),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
                what: "image manifest",
                message: e.to_string(),
            })?;
        if manifest.layers.len() > MAX_LAYERS {
            return Err(RegistryError::Invalid {
                what: "image manifest",
                message: format!("{} layers (at most {MAX_LAYERS})", manifest.layers.len()),
            });
        }
        for l in &manifest.layers {
            // Unsupported layer types (zstd, foreign layers) are refused before any download.
            super::decompressor(&l.media_type, std::io::empty())?;
        }
        if manifest.config.size > self.cfg.max_manifest_bytes as u64 {
            return Err(RegistryError::TooLarge {
                what: "image config",
                limit: self.cfg.max_manifest_bytes as u64,
            });
        }
        let mut blobs: Vec<&Descriptor> = vec![&manifest.config];
        blobs.extend(manifest.layers.iter());
        let size: u64 = blobs.iter().map(|d| d.size).sum();
        // Boxed futures in a Vec (not a lazy `map`): keeps the pull future `Send` for spawn.
        let mut downloads: Vec<futures::future::BoxFuture<'_, Result<u64, RegistryError>>> =
            Vec::with_capacity(blobs.len());
        for d in &blobs {
            downloads.push(Box::pin(s.download_blob(store, d)));
        }
        let results: Vec<Result<u64, RegistryError>> = futures::stream::iter(downloads)
            .buffer_unordered(self.cfg.max_concurrent_blobs.max(1))
            .collect()
            .await;
        let mut blobs_fetched = 0;
        let mut bytes_fetched = 0;
        for r in results {
            let n = r?;
            if n > 0 {
                blobs_fetched += 1;
                bytes_fetched += n;
            }
        }
        // The config must describe the layers before the image is named.
        let config: ImageConfigFile = store
            .read_json_blob(&manifest.config.digest, "image config")
            .map_err(RegistryError::Store)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(RegistryError::Invalid {
                what: "image config",
                message: format!(
                    "{} layers but {} diff ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        store.put_blob(&digest, &bytes)?;
        let mut recs = store.add_images(vec![(
            vec![reference.to_string()],
            digest,
            manifest.config.digest.clone(),
        )])?;
        let record = recs.pop().ok_or_else(|| RegistryError::Invalid {
            what: "image manifest",
            message: "not recorded".into(),
        })?;
        Ok(PullReport {
            record,
            size,
            blobs_fetched,
            bytes_fetched,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
}

/// What a manifest response is: by its Content-Type, else by its `mediaType` field, else by
/// its shape.
fn kind_of(content_type: &str, bytes: &[u8]) -> Result<Kind, RegistryError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(bytes).map_err(|e| RegistryError::Invalid {
        what: "manifest",
        message: e.to_string(),
    })?;
    let mt = match content_type {
        media::INDEX | media::DOCKER_LIST | media::MANIFEST | media::DOCKER_MANIFEST => {
            content_type.to_string()
        }
        _ => p.media_type.clone().unwrap_or_default(),
    };
    match mt.as_str() {
        media::INDEX | media::DOCKER_LIST => return Ok(Kind::Index),
        media::MANIFEST | media::DOCKER_MANIFEST => return Ok(Kind::Manifest),
        _ => {}
    }
    if mt == DOCKER_SCHEMA1 || p.schema_version == Some(1) {
        return Err(RegistryError::Invalid {
            what: "manifest",
            message: "Docker schema 1 manifests are not supported (push the image again with a current client)".into(),
        });
    }
    if p.schema_version == Some(2) {
        if p.manifests.is_some() {
            return Ok(Kind::Index);
        }
        if p.layers.is_some() {
            return Ok(Kind::Manifest);
        }
    }
    Err(RegistryError::Invalid {
        what: "manifest",
        message: format!("unsupported media type {mt:?}"),
    })
}

/// The index entry for `linux/<host arch>` (upstream picks the host platform).
fn pick_platform(index: &Index) -> Result<&Descriptor, RegistryError> {
    let arch = super::host_arch();
    index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .ok_or_else(|| RegistryError::NotFound(format!("no image for linux/{arch} in the index")))
}

/// One pull's connection state: the scheme chosen for the registry and its authorization.
struct Session {
    cfg: Arc<RegistryConfig>,
    /// `host[:port]` of the registry API.
    host: String,
    repository: String,
    /// The name shown in errors.
    display: String,
    cred: Option<Credential>,
    auth: Mutex<Option<String>>,
    /// `Some(true)`: HTTPS; `Some(false)`: plain HTTP; `None`: not decided yet.
    https: Mutex<Option<bool>>,
    tls: Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
}

impl Session {
    fn new(cfg: Arc<RegistryConfig>, r: &Reference, cred: Option<Credential>) -> Session {
        Session {
            cfg,
            host: r.endpoint().to_string(),
            repository: r.repository.clone(),
            display: r.to_string(),
            cred,
            auth: Mutex::new(None),
            https: Mutex::new(None),
            tls: Mutex::new(HashMap::new()),
        }
    }

    /// GETs a manifest and checks it against `expect` (a pinned digest) or the registry's
    /// `Docker-Content-Digest`. Returns its bytes, content type and digest.
    async fn fetch_manifest(
        &self,
        reference: &str,
        expect: Option<&Digest>,
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let path = format!("/v2/{}/manifests/{reference}", self.repository);
        let resp = self.get(&path, Some(ACCEPT_MANIFESTS)).await?;
        let resp = self.check(resp, "manifest").await?;
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let bytes = read_bounded(
            resp.into_body(),
            self.cfg.max_manifest_bytes,
            self.cfg.idle_timeout,
            "manifest",
        )
        .await?;
        let got = Digest::of(&bytes);
        if let Some(want) = expect.or(header_digest.as_ref())
            && *want != got
        {
            return Err(RegistryError::Verification {
                what: "manifest",
                expected: want.to_string(),
                actual: got.to_string(),
            });
        }
        Ok((bytes, ct, got))
    }

    /// Downloads one blob into the store unless it is there; returns the bytes downloaded.
    async fn download_blob(
        &self,
        store: &ImageStore,
        d: &Descriptor,
    ) -> Result<u64, RegistryError> {
        if store.has_blob(&d.digest) {
            return Ok(0);
        }
        if d.size > self.cfg.max_blob_bytes {
            return Err(RegistryError::TooLarge {
                what: "blob",
                limit: self.cfg.max_blob_bytes,
            });
        }
        let path = format!("/v2/{}/blobs/{}", self.repository, d.digest);
        let resp = self.get(&path, None).await?;
        let resp = self.check(resp, "blob").await?;
        let staging = store.staging()?;
        let tmp = staging.join("blob");
        let result = async {
            use sha2::Digest as _;
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = sha2::Sha256::new();
            let mut body = resp.into_body();
            let mut total: u64 = 0;
            while let Some(chunk) = next_chunk(&mut body, self.cfg.idle_timeout, "blob").await? {
                total += chunk.len() as u64;
                if total > d.size {
                    return Err(RegistryError::Verification {
                        what: "blob",
                        expected: format!("{} ({} bytes)", d.digest, d.size),
                        actual: format!("more than {} bytes", d.size),
                    });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            let got = Digest::from_sha256(hasher.finalize().as_slice());
            if got != d.digest || total != d.size {
                return Err(RegistryError::Verification {
                    what: "blob",
                    expected: format!("{} ({} bytes)", d.digest, d.size),
                    actual: format!("{got} ({total} bytes)"),
                });
            }
            file.sync_all().await?;
            drop(file);
            store.commit_blob(&tmp, &d.digest)?;
            Ok::<u64, RegistryError>(total)
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&staging).await;
        result
    }

    /// Turns a non-success response into the error it means (with the registry's message).
    async fn check(
        &self,
        resp: Response<Incoming>,
        what: &'static str,
    ) -> Result<Response<Incoming>, RegistryError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let message = error_message(resp, self.cfg.idle_timeout).await;
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let who = match &self.cred {
                    Some(c) => format!("as {:?}", c.username),
                    None => "anonymously (no image pull secret matches the registry)".into(),
                };
                RegistryError::Unauthorized(format!(
                    "pulling {} from {} {who}: {message}",
                    self.display, self.host
                ))
            }
            StatusCode::NOT_FOUND => {
                RegistryError::NotFound(format!("{what} of {}: {message}", self.display))
            }
            s => RegistryError::Status {
                status: s.as_u16(),
                message: format!("{what} of {}: {message}", self.display),
            },
        })
    }

    /// A GET on the registry with its authorization; answers a 401 challenge once.
    async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Response<Incoming>, RegistryError> {
        let mut challenged = false;
        loop {
            let auth = self.auth.lock().clone();
            let resp = self.send_registry(path, accept, auth.as_deref()).await?;
            if resp.status() != StatusCode::UNAUTHORIZED || challenged {
                return Ok(resp);
            }
            challenged = true;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            let new_auth = match challenge {
                Some(Challenge::Basic) => match &self.cred {
                    Some(c) => c.basic_header(),
                    None => return Ok(resp),
                },
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => {
                    let scope =
                        scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                    format!(
                        "Bearer {}",
                        self.token(&realm, service.as_deref(), &scope).await?
                    )
                }
                None => return Ok(resp),
            };
            *self.auth.lock() = Some(new_auth);
        }
    }

    /// The Bearer token flow: GET `realm?service=..&scope=..`, with Basic credentials if any.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let mut url = realm.to_string();
        url.push(if realm.contains('?') { '&' } else { '?' });
        if let Some(s) = service {
            url.push_str(&format!("service={}&", pct(s)));
        }
        url.push_str(&format!("scope={}", pct(scope)));
        let uri: Uri = url.parse().map_err(|e| RegistryError::Invalid {
            what: "token realm",
            message: format!("{realm:?}: {e}"),
        })?;
        if uri.scheme_str() == Some("http")
            && !self.may_use_http(uri.authority().map_or("", |a| a.as_str()))
        {
            return Err(RegistryError::Invalid {
                what: "token realm",
                message: format!(
                    "{realm:?} is plain HTTP to a registry that is not loopback or insecure"
                ),
            });
        }
        let basic = self.cred.as_ref().map(Credential::basic_header);
        let resp = self.follow(uri, None, basic.as_deref()).await?;
        let status = resp.status();
        if !status.is_success() {
            let message = error_message(resp, self.cfg.idle_timeout).await;
            let who = match &self.cred {
                Some(c) => format!("as {:?}", c.username),
                None => "anonymously".into(),
            };
            return Err(
                if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                    RegistryError::Unauthorized(format!(
                        "token for {} from {realm} {who}: {message}",
                        self.display
                    ))
                } else {
                    RegistryError::Status {
                        status: status.as_u16(),
                        message: format!("token from {realm}: {message}"),
                    }
                },
            );
        }
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let body = read_bounded(
            resp.into_body(),
            MAX_TOKEN_BODY,
            self.cfg.idle_timeout,
            "token",
        )
        .await?;
        let t: Token = serde_json::from_slice(&body).map_err(|e| RegistryError::Invalid {
            what: "token response",
            message: e.to_string(),
        })?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| RegistryError::Invalid {
                what: "token response",
                message: "no token".into(),
            })
    }

    fn may_use_http(&self, host_port: &str) -> bool {
        is_loopback(host_port) || is_insecure(&self.cfg.insecure_registries, host_port)
    }

    /// Sends a GET to the registry host: HTTPS, or plain HTTP when the registry may use it
    /// and HTTPS failed before any HTTP exchange. The choice holds for the session.
    async fn send_registry(
        &self,
        path: &str,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<Response<Incoming>, RegistryError> {
        let decided = *self.https.lock();
        let url = |https: bool| -> Result<Uri, RegistryError> {
            let scheme = if https { "https" } else { "http" };
            format!("{scheme}://{}{path}", self.host)
                .parse()
                .map_err(|e| RegistryError::Invalid {
                    what: "registry URL",
                    message: format!("{}{path}: {e}", self.host),
                })
        };
        match decided {
            Some(https) => self.follow(url(https)?, accept, auth).await,
            None => match self.follow(url(true)?, accept, auth).await {
                Ok(r) => {
                    *self.https.lock() = Some(true);
                    Ok(r)
                }
                Err(e) if e.is_transport() && self.may_use_http(&self.host) => {
                    match self.follow(url(false)?, accept, auth).await {
                        Ok(r) => {
                            *self.https.lock() = Some(false);
                            Ok(r)
                        }
                        Err(e2) => Err(RegistryError::Transport(format!(
                            "{} over HTTPS: {e}; over HTTP: {e2}",
                            self.host
                        ))),
                    }
                }
                Err(e) => Err(e),
            },
        }
    }

    /// A GET that follows redirects (blob downloads are often redirected to storage); the
    /// authorization goes only to the original host.
    async fn follow(
        &self,
        mut uri: Uri,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<Response<Incoming>, RegistryError> {
        let origin = uri.authority().map(|a| a.as_str().to_string());
        for _ in 0..=MAX_REDIRECTS {
            let same = uri.authority().map(|a| a.as_str().to_string()) == origin;
            let resp = self
                .roundtrip(&uri, accept, if same { auth } else { None })
                .await?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let loc = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| RegistryError::Status {
                    status: resp.status().as_u16(),
                    message: "redirect without a Location".into(),
                })?;
            let next = resolve(&uri, loc)?;
            if next.scheme_str() == Some("http")
                && uri.scheme_str() == Some("https")
                && !self.may_use_http(next.authority().map_or("", |a| a.as_str()))
            {
                return Err(RegistryError::Invalid {
                    what: "redirect",
                    message: format!("from HTTPS to plain HTTP ({next})"),
                });
            }
            uri = next;
        }
        Err(RegistryError::Status {
            status: 310,
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// One request on a new connection.
    async fn roundtrip(
        &self,
        uri: &Uri,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<Response<Incoming>, RegistryError> {
        let authority = uri
            .authority()
            .ok_or_else(|| RegistryError::Invalid {
                what: "URL",
                message: format!("{uri} has no host"),
            })?
            .clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(RegistryError::Invalid {
                    what: "URL",
                    message: format!("{uri}: not http(s)"),
                });
            }
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::get(path)
            .header(HOST, authority.as_str())
            .header(USER_AGENT, concat!("kubeshard/", env!("CARGO_PKG_VERSION")));
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| RegistryError::Invalid {
                what: "request",
                message: e.to_string(),
            })?;
        let timeout = self.cfg.connect_timeout;
        let tcp = tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| RegistryError::Timeout(format!("connecting to {authority}")))?
        .map_err(|e| RegistryError::Transport(format!("connecting to {authority}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let tls = self.tls_config(authority.as_str())?;
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                RegistryError::Transport(format!("bad TLS server name {host:?}: {e}"))
            })?;
            let stream = tokio::time::timeout(
                timeout,
                tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
            )
            .await
            .map_err(|_| RegistryError::Timeout(format!("TLS handshake with {authority}")))?
            .map_err(|e| {
                let cert = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| {
                        matches!(
                            r,
                            rustls::Error::InvalidCertificate(_)
                                | rustls::Error::NoCertificatesPresented
                        )
                    });
                if cert {
                    RegistryError::Certificate(format!(
                        "TLS handshake with {authority}: {e} (a private registry's CA goes in {}/ca.crt)",
                        self.cfg.certs_dir.join(authority.as_str()).display()
                    ))
                } else {
                    RegistryError::Transport(format!("TLS handshake with {authority}: {e}"))
                }
            })?;
            self.exchange(TokioIo::new(stream), req, &authority).await
        } else {
            self.exchange(TokioIo::new(tcp), req, &authority).await
        }
    }

    async fn exchange<IO>(
        &self,
        io: IO,
        req: Request<Empty<Bytes>>,
        authority: &http::uri::Authority,
    ) -> Result<Response<Incoming>, RegistryError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| RegistryError::Transport(format!("{authority}: {e}")))?;
        // The connection ends with the response body (or when both are dropped).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        tokio::time::timeout(self.cfg.response_timeout, sender.send_request(req))
            .await
            .map_err(|_| RegistryError::Timeout(format!("waiting for {authority}")))?
            .map_err(|e| RegistryError::Transport(format!("{authority}: {e}")))
    }

    /// The TLS configuration for `host_port`: the system roots plus its `certs.d` CAs, or no
    /// verification for an insecure registry.
    fn tls_config(&self, host_port: &str) -> Result<Arc<rustls::ClientConfig>, RegistryError> {
        if let Some(c) = self.tls.lock().get(host_port) {
            return Ok(c.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| RegistryError::Transport(format!("tls: {e}")))?;
        let mut cfg = if is_insecure(&self.cfg.insecure_registries, host_port) {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for c in system_roots() {
                let _ = roots.add(c.clone());
            }
            let dir = self.cfg.certs_dir.join(host_port);
            for ca in registry_cas(&dir)? {
                roots.add(ca).map_err(|e| {
                    RegistryError::Transport(format!("a CA in {}: {e}", dir.display()))
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        self.tls.lock().insert(host_port.to_string(), cfg.clone());
        Ok(cfg)
    }
}

/// The CAs of one registry: every `*.crt` in its `certs.d` directory.
fn registry_cas(
    dir: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, RegistryError> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries.take(64).flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("crt") {
            continue;
        }
        let pem = std::fs::read(&p)?;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            out.push(
                c.map_err(|e| RegistryError::Transport(format!("reading {}: {e}", p.display())))?,
            );
        }
    }
    Ok(out)
}

/// The system's trusted roots (`SSL_CERT_FILE`, else the distribution's bundle), read once.
fn system_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let candidates = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain(
                [
                    "/etc/ssl/certs/ca-certificates.crt",
                    "/etc/pki/tls/certs/ca-bundle.crt",
                    "/etc/ssl/ca-bundle.pem",
                    "/etc/ssl/cert.pem",
                ]
                .map(PathBuf::from),
            );
        for p in candidates {
            if let Ok(pem) = std::fs::read(&p) {
                let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                    .filter_map(Result::ok)
                    .collect();
                if !certs.is_empty() {
                    return certs;
                }
            }
        }
        tracing::warn!("no system CA bundle found: only certs.d CAs are trusted");
        Vec::new()
    })
}

/// Whether `host[:port]` is a loopback host (`localhost`, 127.0.0.0/8, ::1).
pub fn is_loopback(host_port: &str) -> bool {
    let host = split_host(host_port);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host[:port]` is listed in `insecure` (by `host:port`, `host` or IP CIDR).
pub fn is_insecure(insecure: &[String], host_port: &str) -> bool {
    let host = split_host(host_port);
    let ip = host.parse::<std::net::IpAddr>().ok();
    insecure.iter().any(|entry| {
        let e = entry.trim();
        if e == host_port || e == host {
            return true;
        }
        match (ip, e.parse::<ipnet::IpNet>()) {
            (Some(ip), Ok(net)) => net.contains(&ip),
            _ => false,
        }
    })
}

fn split_host(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    }
}

/// Resolves a `Location` against the request's URI.
fn resolve(base: &Uri, loc: &str) -> Result<Uri, RegistryError> {
    let bad = |e: String| RegistryError::Invalid {
        what: "redirect",
        message: format!("{loc:?}: {e}"),
    };
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()));
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map_or("", |a| a.as_str());
    let s = if let Some(rest) = loc.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if loc.starts_with('/') {
        format!("{scheme}://{authority}{loc}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{scheme}://{authority}{dir}/{loc}")
    };
    s.parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))
}

/// Percent-encodes a query value.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn next_chunk(
    body: &mut Incoming,
    idle: Duration,
    what: &str,
) -> Result<Option<Bytes>, RegistryError> {
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| {
                RegistryError::Timeout(format!("reading a {what}: no data for {idle:?}"))
            })?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(RegistryError::Transport(format!("reading a {what}: {e}"))),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    return Ok(Some(d));
                }
            }
        }
    }
}

async fn read_bounded(
    mut body: Incoming,
    max: usize,
    idle: Duration,
    what: &'static str,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(c) = next_chunk(&mut body, idle, what).await? {
        if out.len() + c.len() > max {
            return Err(RegistryError::TooLarge {
                what,
                limit: max as u64,
            });
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// The registry's error message: `CODE: message` of each error in its JSON body, else the
/// body's text, else the status line.
async fn error_message(resp: Response<Incoming>, idle: Duration) -> String {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let status = resp.status();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Ok(Some(c)) = next_chunk(&mut body, idle.min(Duration::from_secs(10)), "error").await
    {
        let take = c.len().min(MAX_ERROR_BODY - buf.len());
        buf.extend_from_slice(&c[..take]);
        if buf.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&buf)
        && !e.errors.is_empty()
    {
        return e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(&buf);
    let text: String = text.trim().chars().take(300).collect();
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}

/// No certificate verification (insecure registries only); handshake signatures are still
/// checked against the presented certificate.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_and_loopback() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        let list = vec!["reg.local:5000".to_string(), "10.1.0.0/16".to_string()];
        assert!(is_insecure(&list, "reg.local:5000"));
        assert!(!is_insecure(&list, "reg.local:5001"));
        assert!(is_insecure(&list, "10.1.2.3:443"));
        assert!(!is_insecure(&list, "10.2.2.3"));
    }

    #[test]
    fn manifest_kinds() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(kind_of("", idx).unwrap(), Kind::Index);
        assert_eq!(kind_of(media::DOCKER_LIST, idx).unwrap(), Kind::Index);
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#;
        assert_eq!(kind_of("application/json", m).unwrap(), Kind::Manifest);
        let s1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(
            kind_of(DOCKER_SCHEMA1, s1)
                .unwrap_err()
                .to_string()
                .contains("schema 1")
        );
    }

    #[test]
    fn redirects_resolve() {
        let base: Uri = "https://r.example/v2/a/blobs/sha256:x".parse().unwrap();
        assert_eq!(
            resolve(&base, "https://cdn.example/b?sig=1")
                .unwrap()
                .to_string(),
            "https://cdn.example/b?sig=1"
        );
        assert_eq!(
            resolve(&base, "/c").unwrap().to_string(),
            "https://r.example/c"
        );
        assert_eq!(pct("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
