//! Authentication: who sent a request.
//!
//! In order: a verified x509 client certificate (user = CN, groups = every O; rustls has
//! already checked the chain against the cluster CA during the handshake), then a static
//! bearer token from the token file (`--token-auth-file`, upstream's CSV format
//! `token,user,uid,"group1,group2"`), then anonymous (`system:anonymous`) if allowed, else
//! 401. Requests over the loopback plain-HTTP port are the unsecured admin (kubectl sends no
//! credentials over http).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::status::ApiError;

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    fn with_authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == "system:authenticated") {
            self.groups.push("system:authenticated".into());
        }
        self
    }

    /// The user of plain-HTTP loopback requests.
    pub fn unsecured_admin() -> Self {
        Self {
            name: "system:unsecured".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    /// The anonymous user.
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// The identity in a verified client certificate (DER): CN and every O.
    pub fn from_client_cert(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())?
            .to_string();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        Some(
            Self {
                name,
                uid: String::new(),
                groups,
            }
            .with_authenticated(),
        )
    }
}

/// Token-file failures at start-up. Not retryable without fixing the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("token auth file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token auth file {path} line {line}: {why}")]
    Parse {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// Splits one CSV line, honouring double quotes (`""` is a literal quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

/// Decides the user of each request.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
    anonymous: bool,
}

impl Authenticator {
    /// `anonymous`: whether requests without credentials pass as `system:anonymous`.
    pub fn new(anonymous: bool) -> Self {
        Self {
            tokens: HashMap::new(),
            anonymous,
        }
    }

    /// Adds a static token.
    pub fn add_token(&mut self, token: impl Into<String>, user: UserInfo) {
        self.tokens.insert(token.into(), user.with_authenticated());
    }

    /// Loads upstream's static token file: `token,user,uid[,"group1,group2"]` per line.
    pub fn load_token_file(&mut self, path: &Path) -> Result<(), AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv_fields(line);
            let parse_err = |why: &str| AuthError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                why: why.to_string(),
            };
            if f.len() < 3 {
                return Err(parse_err("expected at least 3 columns: token,user,uid"));
            }
            if f[0].is_empty() || f[1].is_empty() {
                return Err(parse_err("empty token or user name"));
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            self.add_token(
                f[0].clone(),
                UserInfo {
                    name: f[1].clone(),
                    uid: f[2].clone(),
                    groups,
                },
            );
        }
        Ok(())
    }

    /// The user of a request: the verified client certificate's identity if any, else the
    /// bearer token's, else anonymous if allowed. A bearer token that matches nothing is
    /// 401 even when anonymous access is on (as upstream).
    pub fn authenticate(
        &self,
        cert_user: Option<&UserInfo>,
        authorization: Option<&[u8]>,
    ) -> Result<UserInfo, ApiError> {
        self.authenticate_ref(cert_user, authorization).cloned()
    }

    /// [`Authenticator::authenticate`] without copying the user out: the request path
    /// borrows it from the connection, the token table or a shared constant.
    pub fn authenticate_ref<'a>(
        &'a self,
        cert_user: Option<&'a UserInfo>,
        authorization: Option<&[u8]>,
    ) -> Result<&'a UserInfo, ApiError> {
        if let Some(u) = cert_user {
            return Ok(u);
        }
        if let Some(h) = authorization {
            let h = std::str::from_utf8(h).map_err(|_| ApiError::unauthorized())?;
            let token = h
                .strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .map(str::trim);
            return match token.and_then(|t| self.tokens.get(t)) {
                Some(u) => Ok(u),
                None => Err(ApiError::unauthorized()),
            };
        }
        if self.anonymous {
            Ok(&ANONYMOUS)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// The anonymous user, shared by every request that has it.
static ANONYMOUS: std::sync::LazyLock<UserInfo> = std::sync::LazyLock::new(UserInfo::anonymous);

/// The unsecured admin, shared by every plain-HTTP request.
pub(crate) static UNSECURED_ADMIN: std::sync::LazyLock<UserInfo> =
    std::sync::LazyLock::new(UserInfo::unsecured_admin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_in_upstream_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.csv");
        std::fs::write(
            &p,
            "# comment\nsecret1,alice,u1,\"dev,ops\"\nsecret2,bob,u2\n",
        )
        .unwrap();
        let mut a = Authenticator::new(false);
        a.load_token_file(&p).unwrap();
        let u = a.authenticate(None, Some(b"Bearer secret1")).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, vec!["dev", "ops", "system:authenticated"]);
        assert_eq!(
            a.authenticate(None, Some(b"Bearer secret2")).unwrap().name,
            "bob"
        );
        assert_eq!(
            a.authenticate(None, Some(b"Bearer nope")).unwrap_err().code,
            401
        );
        assert_eq!(a.authenticate(None, None).unwrap_err().code, 401);
        std::fs::write(&p, "onlytoken\n").unwrap();
        assert!(Authenticator::new(false).load_token_file(&p).is_err());
    }

    #[test]
    fn anonymous_only_when_allowed() {
        let a = Authenticator::new(true);
        assert_eq!(a.authenticate(None, None).unwrap().name, "system:anonymous");
        assert_eq!(
            a.authenticate(None, Some(b"Bearer x")).unwrap_err().code,
            401
        );
    }

    #[test]
    fn client_cert_identity_is_cn_and_orgs() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::ensure(dir.path(), &[]).unwrap();
        let der = rustls_pemfile::certs(&mut pki.admin_cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let u = UserInfo::from_client_cert(&der).unwrap();
        assert_eq!(u.name, "kubeshard-admin");
        assert!(u.groups.contains(&"system:masters".to_string()));
    }
}
