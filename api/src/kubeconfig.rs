//! Writes the admin kubeconfig (`DIR/kubeconfig`): one cluster, one user with the admin
//! client certificate, one context, all certificates embedded as base64 data.

use std::path::Path;

use base64::Engine;

use crate::pki::Pki;

/// The kubeconfig text for `server` (e.g. `https://127.0.0.1:6443`) with the admin identity.
pub fn admin_kubeconfig(pki: &Pki, server: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubeshard
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: kubeshard-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: kubeshard
  context:
    cluster: kubeshard
    user: kubeshard-admin
current-context: kubeshard
preferences: {{}}
",
        ca = b64(&pki.ca_cert_pem),
        cert = b64(&pki.admin_cert_pem),
        key = b64(&pki.admin_key_pem),
    )
}

/// Writes [`admin_kubeconfig`] to `path` (mode 0600, atomically).
pub fn write_admin_kubeconfig(pki: &Pki, server: &str, path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(admin_kubeconfig(pki, server).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
