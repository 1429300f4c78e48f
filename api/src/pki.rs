//! The cluster's PKI under `DIR/pki/`, laid out as kubeadm does: a CA (`ca.crt`, `ca.key`),
//! the apiserver's serving certificate (`apiserver.crt`, `apiserver.key`) and the admin
//! client certificate (`admin.crt`, `admin.key`, CN `kubeshard-admin`, O `system:masters`),
//! and the client certificate the apiserver presents to kubelets for logs, exec and
//! port-forward (`apiserver-kubelet-client.crt`, `.key`, CN `kube-apiserver-kubelet-client`,
//! O `system:masters`).
//!
//! Created on first start and reused afterwards. The serving certificate is re-issued (by
//! the same CA) when the configured addresses are not all among its SANs. Private keys are
//! written with mode 0600.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The admin user's name (the CN of the admin client certificate).
pub const ADMIN_USER: &str = "kubeshard-admin";
/// The admin user's group (the O of the admin client certificate).
pub const ADMIN_GROUP: &str = "system:masters";
/// The user the apiserver presents to kubelets (the CN of `apiserver-kubelet-client.crt`,
/// as kubeadm names it).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// PKI failures. None is retryable without fixing the directory or its files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("PKI file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating or parsing a certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("PKI file {path} is not valid: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// The PEM files of the cluster PKI, loaded or created by [`ensure`].
#[derive(Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The apiserver's client certificate towards kubelets.
    pub kubelet_client_cert_pem: String,
    /// Its key.
    pub kubelet_client_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private keys.
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes atomically (temp file + rename), with mode 0600 for keys.
fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    opts.mode(if private { 0o600 } else { 0o644 });
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time_now();
    params.not_before = now - rcgen_duration(3600);
    params.not_after = now + rcgen_duration(days * 86_400);
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_duration(secs: i64) -> time::Duration {
    time::Duration::seconds(secs)
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "kubeshard-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, 3650);
    p
}

/// The SANs of the serving certificate: localhost, 127.0.0.1, ::1, `kubernetes*` service
/// names, plus `extra` (IP addresses or DNS names).
pub fn serving_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        // The `kubernetes` Service's ClusterIP: in-cluster clients verify it.
        "10.96.0.1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for e in extra {
        if !e.is_empty() && !sans.contains(e) {
            sans.push(e.clone());
        }
    }
    sans
}

fn san_type(s: &str) -> Result<SanType, PkiError> {
    Ok(match s.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(s.try_into()?),
    })
}

/// The SANs a PEM certificate carries, rendered as strings (IPs in their usual form).
fn cert_sans(pem: &str, path: &Path) -> Result<Vec<String>, PkiError> {
    let invalid = |why: String| PkiError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| invalid("no certificate".into()))?
        .map_err(|e| invalid(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| invalid(e.to_string()))?;
    let mut out = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => out.push(
                        IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string(),
                    ),
                    16 => out.push(
                        IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Loads the PKI under `dir/pki`, creating what is missing. `extra_sans` are the configured
/// addresses the serving certificate must also name.
pub fn ensure(dir: &Path, extra_sans: &[String]) -> Result<Pki, PkiError> {
    let pki = dir.join("pki");
    fs::create_dir_all(&pki).map_err(io_err(&pki))?;
    let (ca_crt, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));

    let (ca_cert_pem, ca_key_pem, fresh_ca) = match (read(&ca_crt)?, read(&ca_key)?) {
        (Some(c), Some(k)) => (c, k, false),
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write(&ca_key, &key.serialize_pem(), true)?;
            write(&ca_crt, &cert.pem(), false)?;
            (cert.pem(), key.serialize_pem(), true)
        }
    };
    let ca_key_pair = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key_pair)?;

    // Serving certificate.
    let sans = serving_sans(extra_sans);
    let (srv_crt, srv_key) = (pki.join("apiserver.crt"), pki.join("apiserver.key"));
    let existing = match (read(&srv_crt)?, read(&srv_key)?) {
        (Some(c), Some(k)) if !fresh_ca => {
            let have = cert_sans(&c, &srv_crt)?;
            sans.iter().all(|s| have.contains(s)).then_some((c, k))
        }
        _ => None,
    };
    let (serving_cert_pem, serving_key_pem) = match existing {
        Some(pair) => pair,
        None => {
            let mut p = CertificateParams::default();
            p.distinguished_name
                .push(DnType::CommonName, "kube-apiserver");
            p.subject_alt_names = sans.iter().map(|s| san_type(s)).collect::<Result<_, _>>()?;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            validity(&mut p, 365);
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &issuer)?;
            write(&srv_key, &key.serialize_pem(), true)?;
            write(&srv_crt, &cert.pem(), false)?;
            (cert.pem(), key.serialize_pem())
        }
    };

    // Admin client certificate.
    let (adm_crt, adm_key) = (pki.join("admin.crt"), pki.join("admin.key"));
    let (admin_cert_pem, admin_key_pem) = match (read(&adm_crt)?, read(&adm_key)?) {
        (Some(c), Some(k)) if !fresh_ca => (c, k),
        _ => {
            let (c, k) = issue_client_cert(&issuer, ADMIN_USER, &[ADMIN_GROUP])?;
            write(&adm_key, &k, true)?;
            write(&adm_crt, &c, false)?;
            (c, k)
        }
    };

    // The apiserver's client certificate towards kubelets.
    let (kc_crt, kc_key) = (
        pki.join("apiserver-kubelet-client.crt"),
        pki.join("apiserver-kubelet-client.key"),
    );
    let (kubelet_client_cert_pem, kubelet_client_key_pem) = match (read(&kc_crt)?, read(&kc_key)?) {
        (Some(c), Some(k)) if !fresh_ca => (c, k),
        _ => {
            let (c, k) = issue_client_cert(&issuer, KUBELET_CLIENT_USER, &[ADMIN_GROUP])?;
            write(&kc_key, &k, true)?;
            write(&kc_crt, &c, false)?;
            (c, k)
        }
    };

    Ok(Pki {
        dir: pki,
        ca_cert_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_cert_pem,
        admin_key_pem,
        kubelet_client_cert_pem,
        kubelet_client_key_pem,
    })
}

/// Issues a client certificate (user = CN, groups = O) signed by the CA; returns
/// (cert PEM, key PEM).
pub fn issue_client_cert(
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    groups: &[&str],
) -> Result<(String, String), PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, user);
    for g in groups {
        p.distinguished_name.push(DnType::OrganizationName, *g);
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut p, 365);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Pki {
    /// Issues a client certificate from this PKI's CA (for tests and extra users).
    pub fn issue_client_cert(
        &self,
        user: &str,
        groups: &[&str],
    ) -> Result<(String, String), PkiError> {
        let key_path = self.dir.join("ca.key");
        let key_pem = read(&key_path)?.ok_or_else(|| PkiError::Invalid {
            path: key_path.clone(),
            why: "missing".into(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, KeyPair::from_pem(&key_pem)?)?;
        issue_client_cert(&issuer, user, groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses_and_reissues_for_new_sans() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure(dir.path(), &[]).unwrap();
        for f in [
            "ca.crt",
            "ca.key",
            "apiserver.crt",
            "apiserver.key",
            "admin.crt",
            "admin.key",
            "apiserver-kubelet-client.crt",
            "apiserver-kubelet-client.key",
        ] {
            assert!(dir.path().join("pki").join(f).exists(), "{f}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = ensure(dir.path(), &[]).unwrap();
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
        assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
        assert_eq!(a.kubelet_client_cert_pem, b.kubelet_client_cert_pem);
        let sans = cert_sans(&a.serving_cert_pem, Path::new("x")).unwrap();
        assert!(sans.contains(&"127.0.0.1".to_string()) && sans.contains(&"localhost".to_string()));

        let c = ensure(dir.path(), &["10.1.2.3".to_string()]).unwrap();
        assert_eq!(a.ca_cert_pem, c.ca_cert_pem);
        assert_ne!(a.serving_cert_pem, c.serving_cert_pem);
        let sans = cert_sans(&c.serving_cert_pem, Path::new("x")).unwrap();
        assert!(sans.contains(&"10.1.2.3".to_string()));
    }
}
