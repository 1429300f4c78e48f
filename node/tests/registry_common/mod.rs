//! A local Debian `docker-registry` on 127.0.0.1 for pull tests: its own config file and
//! temporary storage, optional TLS (a self-signed CA) and htpasswd (bcrypt) auth; images
//! pushed with `skopeo copy` from an OCI archive built from busybox-static. The process is
//! killed when the value drops.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The busybox image builders (the test crate declares `kubelet_common` too).
use crate::kubelet_common::images;

pub const USER: &str = "puller";
pub const PASSWORD: &str = "s3cret-pw";

/// Whether `docker-registry`, `skopeo` and `htpasswd` are installed; prints why not.
pub fn have_tools(test: &str) -> bool {
    for tool in ["docker-registry", "skopeo", "htpasswd"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            eprintln!(
                "SKIP {test}: {tool} missing (apt-get install docker-registry skopeo apache2-utils)"
            );
            return false;
        }
    }
    true
}

pub struct Options {
    pub tls: bool,
    /// htpasswd (Basic) auth.
    pub auth: bool,
    /// Token (Bearer) auth through a [`TokenServer`] that checks [`USER`]/[`PASSWORD`].
    pub token: bool,
}

pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The CA of its serving certificate (with `tls`).
    pub ca_pem: Option<String>,
    pub tls: bool,
    pub auth: bool,
    pub token: Option<TokenServer>,
}

impl Registry {
    pub fn start(opts: Options) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let mut extra = String::new();
        let mut ca_pem = None;
        if opts.tls {
            let pki = api::pki::ensure(&dir.path().join("pki-root"), &[]).expect("pki");
            let crt = dir.path().join("server.crt");
            let key = dir.path().join("server.key");
            std::fs::write(&crt, &pki.serving_cert_pem).unwrap();
            std::fs::write(&key, &pki.serving_key_pem).unwrap();
            extra.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                crt.display(),
                key.display()
            ));
            ca_pem = Some(pki.ca_cert_pem.clone());
        }
        let mut auth = String::new();
        if opts.auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: kubeshard-test\n    path: {}\n",
                file.display()
            );
        }
        let token = opts.token.then(|| TokenServer::start(dir.path()));
        if let Some(t) = &token {
            auth = format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                t.port,
                t.cert_file.display()
            );
        }
        // A free port: bound, released, then given to the registry (it retries below if lost).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}{auth}",
            storage.display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("access.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start docker-registry");
        let reg = Registry {
            child,
            dir,
            port,
            ca_pem,
            tls: opts.tls,
            auth: opts.auth || opts.token,
            token,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen; log: {}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything the registry printed (its access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// How many GETs of `repo`'s manifests the registry answered so far.
    pub fn manifest_gets(&self, repo: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(&format!("\"GET /v2/{repo}/manifests/")))
            .count()
    }

    /// Pushes an OCI archive (`oci-archive:FILE:TAG`) as `host/dest` with skopeo;
    /// `extra` adds skopeo flags (`--format v2s2`, `--dest-compress`).
    pub fn push(&self, archive: &Path, tag: &str, dest: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--quiet"]);
        if self.tls {
            let certs = self.dir.path().join("skopeo-certs");
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::write(certs.join("ca.crt"), self.ca_pem.as_ref().unwrap()).unwrap();
            cmd.arg(format!("--dest-cert-dir={}", certs.display()));
        } else {
            cmd.arg("--dest-tls-verify=false");
        }
        if self.auth {
            cmd.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        cmd.args(extra);
        cmd.arg(format!("oci-archive:{}:{tag}", archive.display()));
        cmd.arg(format!("docker://{}/{dest}", self.host()));
        let out = cmd.output().expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}\nregistry log: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The file of blob `hex` in the registry's storage.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI archive (a tar of an OCI layout) of busybox with `env` in its config, tagged `1`.
pub fn busybox_archive(dir: &Path, name: &str, env: &str) -> PathBuf {
    let layout = images::oci_layout(
        &dir.join(format!("{name}-layout")),
        &format!("kubeshard.test/{name}:1"),
        &[images::busybox_layer()],
        serde_json::json!({"Env": ["PATH=/bin", env], "Cmd": ["sh"], "WorkingDir": "/"}),
    );
    let archive = dir.join(format!("{name}.tar"));
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.finish().unwrap();
    archive
}

pub const TOKEN_SERVICE: &str = "kubeshard-test-registry";
pub const TOKEN_ISSUER: &str = "kubeshard-test-issuer";

/// A registry token server (the Bearer flow): `GET /token?service=..&scope=..` with Basic
/// [`USER`]/[`PASSWORD`] answers `{"token": JWT}`, an ES256 JWT whose `x5c` certificate is the
/// registry's `rootcertbundle`, granting pull and push on the scopes asked; anything else is
/// a 401. Counts the tokens it issued.
pub struct TokenServer {
    pub port: u16,
    pub cert_file: PathBuf,
    pub issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path) -> TokenServer {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["token-signer".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubeshard test token signer");
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.join("token-signer.crt");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let cert_der = cert.der().to_vec();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let issued = std::sync::Arc::new(AtomicUsize::new(0));
        let (stop2, issued2) = (stop.clone(), issued.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let (status, body) = match read_head(&mut conn) {
                    Some(head) => answer(&head, &signer, &cert_der),
                    None => (400, String::new()),
                };
                if status == 200 {
                    issued2.fetch_add(1, Ordering::SeqCst);
                }
                let reason = if status == 200 { "OK" } else { "Unauthorized" };
                let resp = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                use std::io::Write as _;
                let _ = conn.write_all(resp.as_bytes());
            }
        });
        TokenServer {
            port,
            cert_file,
            issued,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_head(conn: &mut std::net::TcpStream) -> Option<String> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 << 10 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

fn unpct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(head: &str, signer: &ring::signature::EcdsaKeyPair, cert_der: &[u8]) -> (u16, String) {
    use base64::Engine as _;
    let denied = |m: &str| {
        (
            401,
            serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": m}]}).to_string(),
        )
    };
    let target = head.split_whitespace().nth(1).unwrap_or("");
    let Some(query) = target.strip_prefix("/token?") else {
        return denied("no such endpoint");
    };
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let authorized = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == want);
    if !authorized {
        return denied("invalid username or password");
    }
    let mut access = Vec::new();
    let mut service = String::new();
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = unpct(v);
        match k {
            "service" => service = v,
            "scope" => {
                for scope in v.split(' ') {
                    let parts: Vec<&str> = scope.splitn(2, ':').collect();
                    if let [kind, rest] = parts[..]
                        && let Some((name, _actions)) = rest.rsplit_once(':')
                    {
                        access.push(serde_json::json!({"type": kind, "name": name, "actions": ["pull", "push"]}));
                    }
                }
            }
            _ => {}
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)]
    });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": USER, "aud": service,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": uuid::Uuid::new_v4().to_string(), "access": access
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = signer
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    let token = format!("{input}.{}", b64(sig.as_ref()));
    (200, serde_json::json!({"token": token}).to_string())
}
