//! [`ClientConfig`]: where the server is and who the client is, read from a kubeconfig or
//! built by hand; and the rustls configuration it turns into.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

use super::error::{ClientError, Result};

/// Largest kubeconfig file read (they are a few KiB).
const MAX_KUBECONFIG_BYTES: u64 = 4 << 20;

/// How to reach and authenticate to an apiserver.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host:port` or `http://host:port`, optionally with a path prefix.
    pub server: String,
    /// PEM CA bundle that signs the serving certificate (required for https unless
    /// `insecure_skip_tls_verify`).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain (x509 authentication), with `client_key_pem`.
    pub client_cert_pem: Option<Vec<u8>>,
    /// PEM private key of `client_cert_pem`.
    pub client_key_pem: Option<Vec<u8>>,
    /// Bearer token sent in `Authorization`.
    pub token: Option<String>,
    /// Accept any serving certificate (development only).
    pub insecure_skip_tls_verify: bool,
    /// The name checked against the serving certificate (default: the server's host).
    pub tls_server_name: Option<String>,
    /// HTTP/2 connections kept to the server; requests and watches are spread over them.
    pub connections: usize,
    /// Bound on a non-watch request (send plus full response), and on a watch's headers.
    pub timeout: Duration,
    /// Bound on TCP connect plus TLS and HTTP/2 handshakes.
    pub connect_timeout: Duration,
    /// Ask for gzip responses (`Accept-Encoding: gzip`); off by default since on a local
    /// network compression costs more CPU than it saves.
    pub gzip: bool,
    /// Largest response body accepted (after decompression).
    pub max_response_bytes: usize,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Run watches over the apiserver's QUIC endpoint ([`crate::quic`]) on this UDP port
    /// (0: the server URL's port, the server's default) instead of HTTP/2; every other
    /// request stays on HTTP/2. Needs an https server. `None` (the default): HTTP/2.
    pub quic_watch_port: Option<u16>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .field("token", &self.token.is_some())
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("connections", &self.connections)
            .field("timeout", &self.timeout)
            .field("quic_watch_port", &self.quic_watch_port)
            .finish()
    }
}

impl ClientConfig {
    /// A configuration for `server` with no credentials and the defaults: 2 connections,
    /// 30 s request timeout, 10 s connect timeout, no gzip, 1 GiB response bound.
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            ca_pem: None,
            client_cert_pem: None,
            client_key_pem: None,
            token: None,
            insecure_skip_tls_verify: false,
            tls_server_name: None,
            connections: 2,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            gzip: false,
            max_response_bytes: 1 << 30,
            user_agent: "kubeshard-client/0.1".into(),
            quic_watch_port: None,
        }
    }

    /// The same configuration with watches over QUIC on the server URL's port number
    /// (see [`ClientConfig::quic_watch_port`]).
    pub fn with_quic_watches(mut self) -> Self {
        self.quic_watch_port = Some(0);
        self
    }

    /// Reads the current context of the kubeconfig at `path`.
    pub fn from_kubeconfig(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_kubeconfig_context(path, None)
    }

    /// Reads context `context` (or the current context) of the kubeconfig at `path`.
    /// Supports embedded (`*-data`) and file credentials, `token`/`tokenFile`,
    /// `insecure-skip-tls-verify`, `tls-server-name` and http:// servers.
    pub fn from_kubeconfig_context(path: impl AsRef<Path>, context: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_bounded(path)?;
        let kc: Kubeconfig = serde_yaml::from_slice(&text)
            .map_err(|e| ClientError::Kubeconfig(format!("{}: {e}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        kc.resolve(context, &base)
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| ClientError::Kubeconfig(format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(MAX_KUBECONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ClientError::Kubeconfig(format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_KUBECONFIG_BYTES {
        return Err(ClientError::Kubeconfig(format!(
            "{}: larger than {MAX_KUBECONFIG_BYTES} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Kubeconfig {
    clusters: Vec<Named<Cluster>>,
    users: Vec<NamedUser>,
    contexts: Vec<Named<Context>>,
    #[serde(rename = "current-context")]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority_data: Option<String>,
    certificate_authority: Option<PathBuf>,
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct User {
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Context {
    cluster: String,
    user: String,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| ClientError::Kubeconfig(format!("{field}: invalid base64: {e}")))
}

fn read_rel(base: &Path, p: &Path) -> Result<Vec<u8>> {
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    read_bounded(&full)
}

impl Kubeconfig {
    fn resolve(self, context: Option<&str>, base: &Path) -> Result<ClientConfig> {
        let ctx_name = context
            .map(str::to_string)
            .or(self.current_context.clone())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ClientError::Kubeconfig("no current-context".into()))?;
        let ctx = self
            .contexts
            .iter()
            .find(|c| c.name == ctx_name)
            .ok_or_else(|| ClientError::Kubeconfig(format!("context {ctx_name:?} not found")))?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == ctx.value.cluster)
            .ok_or_else(|| {
                ClientError::Kubeconfig(format!("cluster {:?} not found", ctx.value.cluster))
            })?;
        let c = &cluster.value;
        if c.server.is_empty() {
            return Err(ClientError::Kubeconfig(format!(
                "cluster {:?} has no server",
                cluster.name
            )));
        }
        let mut cfg = ClientConfig::new(c.server.clone());
        cfg.insecure_skip_tls_verify = c.insecure_skip_tls_verify;
        cfg.tls_server_name = c.tls_server_name.clone();
        cfg.ca_pem = match (&c.certificate_authority_data, &c.certificate_authority) {
            (Some(d), _) => Some(b64("certificate-authority-data", d)?),
            (None, Some(p)) => Some(read_rel(base, p)?),
            (None, None) => None,
        };
        // A context without a user (or naming none) is anonymous.
        if let Some(u) = self.users.iter().find(|u| u.name == ctx.value.user) {
            let u = &u.user;
            cfg.client_cert_pem = match (&u.client_certificate_data, &u.client_certificate) {
                (Some(d), _) => Some(b64("client-certificate-data", d)?),
                (None, Some(p)) => Some(read_rel(base, p)?),
                (None, None) => None,
            };
            cfg.client_key_pem = match (&u.client_key_data, &u.client_key) {
                (Some(d), _) => Some(b64("client-key-data", d)?),
                (None, Some(p)) => Some(read_rel(base, p)?),
                (None, None) => None,
            };
            cfg.token = match (&u.token, &u.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(p)) => Some(
                    String::from_utf8(read_rel(base, p)?)
                        .map_err(|_| ClientError::Kubeconfig("tokenFile is not UTF-8".into()))?
                        .trim()
                        .to_string(),
                ),
                (None, None) => None,
            };
        }
        Ok(cfg)
    }
}

/// The parsed server address.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `scheme://authority` for request URIs.
    pub(crate) origin: String,
    /// Path prefix without a trailing slash (usually empty).
    pub(crate) prefix: String,
}

impl Endpoint {
    pub(crate) fn parse(server: &str) -> Result<Self> {
        let uri: http::Uri = server
            .parse()
            .map_err(|e| ClientError::Kubeconfig(format!("server {server:?}: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ClientError::Kubeconfig(format!(
                    "server {server:?}: scheme must be https or http"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Kubeconfig(format!("server {server:?}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let origin = format!("{}://{authority}", if https { "https" } else { "http" });
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            https,
            host,
            port,
            origin,
            prefix,
        })
    }
}

/// The rustls client configuration for `cfg` (ring provider, ALPN h2) and the server name.
pub(crate) fn tls_config(
    cfg: &ClientConfig,
    ep: &Endpoint,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
    let tls = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?;
    let builder = if cfg.insecure_skip_tls_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider.clone())))
    } else {
        let ca = cfg.ca_pem.as_deref().ok_or_else(|| {
            ClientError::Tls(
                "https server without a certificate authority (set certificate-authority-data \
                 or insecure-skip-tls-verify)"
                    .into(),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls("no certificate in the CA bundle".into()));
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&cfg.client_cert_pem, &cfg.client_key_pem) {
        (Some(cert), Some(key)) => {
            let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert[..])
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| tls(&e))?;
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
                .map_err(|e| tls(&e))?
                .ok_or_else(|| ClientError::Tls("no private key in client-key".into()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| tls(&e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(ClientError::Tls(
                "a client certificate needs both the certificate and the key".into(),
            ));
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = cfg
        .tls_server_name
        .clone()
        .unwrap_or_else(|| ep.host.clone());
    let server_name =
        ServerName::try_from(name).map_err(|e| ClientError::Tls(format!("server name: {e}")))?;
    Ok((Arc::new(config), server_name))
}

/// `insecure-skip-tls-verify`: accepts any certificate but still checks the handshake
/// signatures (so the session keys are bound to the presented certificate).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
