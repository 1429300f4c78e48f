//! Registry credentials: the keyring built from a pod's image pull secrets
//! (`kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg`), and the parsing of
//! `WWW-Authenticate` challenges (Basic and Bearer).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use super::reference::Reference;

/// The secret type of `~/.docker/config.json` content (key `.dockerconfigjson`).
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// The legacy secret type of `~/.dockercfg` content (key `.dockercfg`).
pub const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name.
    pub username: String,
    /// The password (or a personal access token).
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credential {
    /// The `Authorization: Basic ...` value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Credentials by registry, in the order they were added (tried in that order, as the
/// kubelet's keyring does).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// `(host[:port][/path prefix], credential)`.
    entries: Vec<(String, Credential)>,
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Why a pull secret could not be used (the pull goes on without it, as upstream's).
#[derive(Debug, thiserror::Error)]
#[error("image pull secret {name:?}: {reason}")]
pub struct SecretError {
    /// The secret's name.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Keyring {
    /// An empty keyring (anonymous pulls).
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Whether the keyring has no credentials.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds one credential for `registry` (`host[:port]`, optionally with a path prefix, a
    /// scheme or Docker Hub's legacy `https://index.docker.io/v1/`).
    pub fn add(&mut self, registry: &str, cred: Credential) {
        self.entries.push((normalize_key(registry), cred));
    }

    /// Adds the content of a docker `config.json` (`{"auths": {...}}`).
    pub fn add_docker_config_json(&mut self, bytes: &[u8]) -> Result<(), String> {
        let cfg: DockerConfigJson =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid .dockerconfigjson: {e}"))?;
        self.add_auths(cfg.auths)
    }

    /// Adds the content of a legacy `.dockercfg` (the `auths` map without its wrapper).
    pub fn add_docker_cfg(&mut self, bytes: &[u8]) -> Result<(), String> {
        let auths: BTreeMap<String, DockerAuth> =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid .dockercfg: {e}"))?;
        self.add_auths(auths)
    }

    fn add_auths(&mut self, auths: BTreeMap<String, DockerAuth>) -> Result<(), String> {
        for (key, a) in auths {
            let cred = match (a.username, a.password, a.auth) {
                (Some(u), Some(p), _) if !u.is_empty() => Credential {
                    username: u,
                    password: p,
                },
                (_, _, Some(auth)) if !auth.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| format!("{key}: auth is not base64: {e}"))?;
                    let raw =
                        String::from_utf8(raw).map_err(|_| format!("{key}: auth is not UTF-8"))?;
                    let (u, p) = raw
                        .split_once(':')
                        .ok_or_else(|| format!("{key}: auth is not user:password"))?;
                    Credential {
                        username: u.to_string(),
                        password: p.to_string(),
                    }
                }
                _ => continue,
            };
            self.add(&key, cred);
        }
        Ok(())
    }

    /// Adds a pod's image pull secret. Secrets of other types are ignored, as upstream.
    pub fn add_secret(&mut self, secret: &Secret) -> Result<(), SecretError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let err = |reason: String| SecretError {
            name: name.clone(),
            reason,
        };
        let data = |key: &str| -> Option<Vec<u8>> {
            if let Some(b) = secret.data.as_ref().and_then(|d| d.get(key)) {
                return Some(b.0.clone());
            }
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        };
        match secret.type_.as_deref() {
            Some(DOCKER_CONFIG_JSON) => {
                let b = data(".dockerconfigjson")
                    .ok_or_else(|| err("no .dockerconfigjson key".into()))?;
                self.add_docker_config_json(&b).map_err(err)
            }
            Some(DOCKER_CFG) => {
                let b = data(".dockercfg").ok_or_else(|| err("no .dockercfg key".into()))?;
                self.add_docker_cfg(&b).map_err(err)
            }
            _ => Ok(()),
        }
    }

    /// The credentials that apply to `r`, most specific first (longest matching key), in
    /// insertion order among equals.
    pub fn lookup(&self, r: &Reference) -> Vec<Credential> {
        let registry = r.registry.as_str();
        let hub = registry == "docker.io";
        let path = format!("{registry}/{}", r.repository);
        let mut hits: Vec<(usize, usize, &Credential)> = Vec::new();
        for (i, (key, cred)) in self.entries.iter().enumerate() {
            let (khost, kpath) = key.split_once('/').unwrap_or((key.as_str(), ""));
            let host_ok = khost == registry
                || (hub && matches!(khost, "index.docker.io" | "registry-1.docker.io"))
                || glob_host(khost, registry);
            let path_ok = kpath.is_empty()
                || path
                    .strip_prefix(&format!("{registry}/{kpath}"))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if host_ok && path_ok {
                hits.push((key.len(), i, cred));
            }
        }
        hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out: Vec<Credential> = Vec::new();
        for (_, _, c) in hits {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }

    /// A fingerprint of the credentials for `r` (pulls with different credentials are not
    /// merged into one).
    pub(crate) fn fingerprint(&self, r: &Reference) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for c in self.lookup(r) {
            h.update(c.username.as_bytes());
            h.update([0]);
            h.update(c.password.as_bytes());
            h.update([0]);
        }
        super::oci::Digest::from_sha256(h.finalize().as_slice()).hex()[..16].to_string()
    }
}

/// The keyring of a pod: the Secrets its `imagePullSecrets` name, or, when it names none,
/// those of its ServiceAccount (`spec.serviceAccountName`, else `default`). A secret that is
/// missing or unusable is skipped with a warning and the pull goes on, as upstream's.
pub async fn keyring_for_pod(
    client: Option<&api::client::Client>,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Keyring {
    use api::client::Api;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let mut k = Keyring::new();
    let Some(client) = client else { return k };
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = pod.spec.as_ref();
    let mut names: Vec<String> = spec
        .and_then(|s| s.image_pull_secrets.as_ref())
        .map(|v| {
            v.iter()
                .map(|r| r.name.clone())
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        let sa = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        if let Ok(Some(sa)) = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .get_opt(&sa)
            .await
        {
            names = sa
                .image_pull_secrets
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.name)
                .filter(|n| !n.is_empty())
                .collect();
        }
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    for name in names.into_iter().take(64) {
        match secrets.get_opt(&name).await {
            Ok(Some(s)) => {
                if let Err(e) = k.add_secret(&s) {
                    tracing::warn!(namespace = %ns, "{e}; the image pull may not succeed");
                }
            }
            Ok(None) => {
                tracing::warn!(namespace = %ns, secret = %name, "image pull secret not found; the image pull may not succeed")
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, secret = %name, "reading the image pull secret: {e}; the image pull may not succeed")
            }
        }
    }
    k
}

/// `*.example.com` matches `a.example.com` (one label), as the kubelet's keyring does.
fn glob_host(pattern: &str, host: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    host.strip_suffix(suffix)
        .and_then(|h| h.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

/// `https://index.docker.io/v1/` -> `docker.io`; `https://host:5000/` -> `host:5000`.
fn normalize_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let k = k.trim_end_matches('/');
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        h => h,
    };
    // The legacy Docker Hub key carries the API version, not a repository.
    let path = if matches!(path, "v1" | "v2") {
        ""
    } else {
        path
    };
    if path.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{path}")
    }
}

/// An authentication challenge from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`: get a token from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter to pass on.
        service: Option<String>,
        /// The `scope` parameter to pass on.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (one challenge; quoted strings with escapes).
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let v = value.trim();
    let (scheme, rest) = v.split_once(char::is_whitespace).unwrap_or((v, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = s[start..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
                val.push_str(&s[i..i + ch_len]);
                i += ch_len;
            }
            i += 1;
        } else {
            let start = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = s[start..i].trim().to_string();
        }
        if !key.is_empty() {
            out.insert(key, val);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"bearer realm="a\"b", service=x"#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: Some("x".into()),
                scope: None
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn keyring_from_docker_configs() {
        let mut k = Keyring::new();
        let auth = base64::engine::general_purpose::STANDARD.encode("u1:p:1");
        k.add_docker_config_json(
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                   "reg.example:5000":{{"username":"u2","password":"p2"}},
                   "reg.example:5000/team":{{"username":"u3","password":"p3"}},
                   "*.corp.example":{{"username":"u4","password":"p4"}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let users = |r: &str| -> Vec<String> {
            k.lookup(&Reference::parse(r).unwrap())
                .into_iter()
                .map(|c| c.username)
                .collect()
        };
        assert_eq!(users("busybox"), ["u1"]);
        assert_eq!(
            k.lookup(&Reference::parse("busybox").unwrap())[0].password,
            "p:1"
        );
        assert_eq!(users("reg.example:5000/x/y"), ["u2"]);
        assert_eq!(users("reg.example:5000/team/y:1"), ["u3", "u2"]);
        assert_eq!(users("reg.example:5000/teams/y"), ["u2"]);
        assert_eq!(users("a.corp.example/x"), ["u4"]);
        assert!(users("a.b.corp.example/x").is_empty());
        assert!(users("other.example/x").is_empty());
        let mut legacy = Keyring::new();
        legacy
            .add_docker_cfg(
                format!(r#"{{"reg.example:5000":{{"auth":"{auth}","email":"e"}}}}"#).as_bytes(),
            )
            .unwrap();
        assert_eq!(
            legacy.lookup(&Reference::parse("reg.example:5000/x").unwrap())[0].username,
            "u1"
        );
        assert!(
            Keyring::new()
                .add_docker_config_json(br#"{"auths":{"h":{"auth":"!!"}}}"#)
                .is_err()
        );
        assert!(
            !format!("{:?}", k).contains("p2"),
            "passwords stay out of Debug"
        );
    }
}
