//! The httpGet handler: one GET per attempt on a fresh connection (upstream disables
//! keep-alives), HTTPS without certificate verification, same-host redirects followed,
//! a redirect to another host ends the probe as a success with a warning, 200-399 pass.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, HeaderName, HeaderValue, LOCATION, USER_AGENT};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::HTTPGetAction;

use super::{MAX_BODY_BYTES, MAX_REDIRECTS, ProbeResult, join_host_port, resolve};

/// Runs one httpGet attempt against `port` (already resolved), bounded by `timeout` overall.
pub(super) async fn http_probe(
    h: &HTTPGetAction,
    port: u16,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> ProbeResult {
    let host = match h.host.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => s.to_owned(),
        None => match pod_ip {
            Some(ip) => ip.to_string(),
            None => return ProbeResult::Unknown("pod has no IP yet".to_owned()),
        },
    };
    let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return ProbeResult::Unknown(format!("unsupported scheme {scheme:?}"));
    }
    let path = h.path.as_deref().unwrap_or("");
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let url = format!("{scheme}://{}{path}", join_host_port(&host, port));
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return ProbeResult::Unknown(format!("bad probe URL {url:?}: {e}")),
    };
    let (headers, host_header) = match build_headers(h) {
        Ok(v) => v,
        Err(e) => return ProbeResult::Unknown(e),
    };
    match tokio::time::timeout(timeout, follow(uri, headers, host_header)).await {
        Ok(r) => r,
        Err(_) => ProbeResult::Failure(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// The request headers: the probe's own (repeatable), then upstream's defaults for the
/// ones it did not set. A `Host` header sets the request's Host instead.
fn build_headers(h: &HTTPGetAction) -> Result<(HeaderMap, Option<HeaderValue>), String> {
    let mut map = HeaderMap::new();
    let mut host = None;
    for hh in h.http_headers.iter().flatten() {
        let name = HeaderName::from_bytes(hh.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", hh.name))?;
        let value = HeaderValue::from_str(&hh.value)
            .map_err(|_| format!("invalid value for header {:?}", hh.name))?;
        if name == HOST {
            host = Some(value);
        } else {
            map.append(name, value);
        }
    }
    if !map.contains_key(USER_AGENT) {
        map.insert(USER_AGENT, HeaderValue::from_static(super::USER_AGENT));
    }
    if !map.contains_key(ACCEPT) {
        map.insert(ACCEPT, HeaderValue::from_static("*/*"));
    }
    map.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok((map, host))
}

fn is_redirect(s: StatusCode) -> bool {
    matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308)
}

async fn follow(mut uri: Uri, headers: HeaderMap, mut host: Option<HeaderValue>) -> ProbeResult {
    let first_host = uri.host().unwrap_or_default().to_owned();
    let mut requests = 0usize;
    loop {
        requests += 1;
        let (status, location, body) = match request_once(&uri, &headers, host.as_ref()).await {
            Ok(v) => v,
            Err(e) => return ProbeResult::Failure(format!("Get \"{uri}\": {e}")),
        };
        if is_redirect(status)
            && let Some(loc) = location
        {
            let Some(next) = resolve_location(&uri, &loc) else {
                return ProbeResult::Failure(format!(
                    "Get \"{uri}\": failed to parse Location header {loc:?}"
                ));
            };
            // Upstream's redirect checker: no redirects off the probed host (the 3xx is the
            // answer, a warning that counts as success), and at most 10 requests.
            if next.host().unwrap_or_default() != first_host {
                tracing::debug!(
                    location = %next,
                    body = %String::from_utf8_lossy(&body),
                    "probe terminated redirects"
                );
                return ProbeResult::Success;
            }
            if requests >= MAX_REDIRECTS {
                return ProbeResult::Failure(format!(
                    "Get \"{next}\": stopped after {MAX_REDIRECTS} redirects"
                ));
            }
            // A custom Host survives only a relative redirect (as Go's client).
            if loc.contains("://") || loc.starts_with("//") {
                host = None;
            }
            uri = next;
            continue;
        }
        let code = status.as_u16();
        return if (200..400).contains(&code) {
            ProbeResult::Success
        } else {
            ProbeResult::Failure(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
}

/// Resolves a Location header against the URI it answered.
fn resolve_location(base: &Uri, loc: &str) -> Option<Uri> {
    if loc.contains("://") {
        let u: Uri = loc.parse().ok()?;
        let scheme = u.scheme_str()?;
        return (scheme == "http" || scheme == "https").then_some(u);
    }
    let scheme = base.scheme_str()?;
    if let Some(rest) = loc.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().ok();
    }
    let authority = base.authority()?.as_str();
    let path = if loc.starts_with('/') {
        loc.to_owned()
    } else {
        // Relative to the base path's directory.
        let bp = base.path();
        let dir = &bp[..bp.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{loc}", if dir.is_empty() { "/" } else { dir })
    };
    format!("{scheme}://{authority}{path}").parse().ok()
}

type Answer = (StatusCode, Option<String>, Vec<u8>);

async fn request_once(
    uri: &Uri,
    headers: &HeaderMap,
    host: Option<&HeaderValue>,
) -> Result<Answer, String> {
    let hostname = uri.host().ok_or("missing host")?;
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = hostname.trim_start_matches('[').trim_end_matches(']');
    let addrs = resolve(bare, port).await?;
    let target = join_host_port(bare, port);
    let tcp = super::connect(&addrs)
        .await
        .map_err(|e| format!("dial tcp {target}: connect: {}", super::os_error(&e)))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::get(path)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    *req.headers_mut() = headers.clone();
    let host_value = match host {
        Some(h) => h.clone(),
        None => HeaderValue::from_str(uri.authority().map_or("", |a| a.as_str()))
            .map_err(|e| e.to_string())?,
    };
    req.headers_mut().insert(HOST, host_value);
    if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|e| format!("bad TLS server name {bare:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        exchange(TokioIo::new(tls), req).await
    } else {
        exchange(TokioIo::new(tcp), req).await
    }
}

async fn exchange<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<Answer, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    // The connection task ends when the response is dropped (Connection: close) or with the
    // caller's timeout dropping `sender`.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = resp.into_body();
        let mut out = Vec::new();
        // Read at most MAX_BODY_BYTES; the rest is dropped with the connection.
        while out.len() < MAX_BODY_BYTES {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        let take = d.len().min(MAX_BODY_BYTES - out.len());
                        out.extend_from_slice(&d[..take]);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        Ok((status, location, out))
    }
    .await;
    driver.abort();
    result
}

/// TLS without verification, as upstream's prober (`InsecureSkipVerify`): probes check
/// liveness, not identity. The handshake signature is still checked against the presented
/// certificate.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(NoVerify(provider.clone()));
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Ok(Arc::new(cfg))
        })
        .clone()
}

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
    fn location_resolution() {
        let base: Uri = "http://127.0.0.1:8080/a/b?x=1".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "/c").unwrap().to_string(),
            "http://127.0.0.1:8080/c"
        );
        assert_eq!(
            resolve_location(&base, "d").unwrap().to_string(),
            "http://127.0.0.1:8080/a/d"
        );
        assert_eq!(
            resolve_location(&base, "//example.com/e")
                .unwrap()
                .to_string(),
            "http://example.com/e"
        );
        assert_eq!(
            resolve_location(&base, "https://h:9/f")
                .unwrap()
                .to_string(),
            "https://h:9/f"
        );
        assert!(resolve_location(&base, "ftp://h/f").is_none());
    }
}
