//! The streaming pod subresources, proxied to the pod's kubelet: `pods/log` (a streamed
//! GET of `/containerLogs/...`), and `pods/exec`, `pods/attach`, `pods/portforward` (GET or
//! POST with `Upgrade`, WebSocket or SPDY alike: the kubelet's `101` is passed back and the
//! two upgraded HTTP/1.1 connections are spliced byte for byte).
//!
//! The kubelet is found from the pod's `spec.nodeName` and that Node's
//! `status.addresses` (InternalIP, else Hostname) and
//! `status.daemonEndpoints.kubeletEndpoint.Port`. The apiserver authenticates with its
//! `apiserver-kubelet-client` certificate; it does not verify the kubelet's serving
//! certificate (upstream's default without `--kubelet-certificate-authority`: kubelets serve
//! self-signed certificates).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{Query, Target};
use crate::server::App;
use crate::server::body::{self, Body};
use crate::status::ApiError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a kubelet error body relayed.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Log query parameters passed to the kubelet.
const LOG_PARAMS: [&str; 7] = [
    "follow",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "previous",
    "limitBytes",
];
/// Headers of an upgrade request passed to the kubelet.
const UPGRADE_HEADERS: [&str; 6] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];
/// Headers of the kubelet's `101` passed back.
const SWITCH_HEADERS: [&str; 5] = [
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// Whether a request names a streaming pod subresource this module serves.
pub(crate) fn is_streaming(t: &Target) -> bool {
    t.def.group.is_empty()
        && t.def.plural == "pods"
        && t.name.is_some()
        && matches!(
            t.subresource.as_deref(),
            Some("log" | "exec" | "attach" | "portforward")
        )
}

/// A TLS client configuration for kubelets: the apiserver's client certificate, any
/// serving certificate accepted.
pub(crate) fn kubelet_tls(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| e.to_string())?
        .ok_or("no private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any kubelet serving certificate (signatures are still checked, so the
/// handshake proves possession of the key).
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
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

async fn read_json(app: &App, key: Bytes) -> Result<Option<Value>, ApiError> {
    let Some(kv) = app.backend.get(key).await? else {
        return Ok(None);
    };
    let v = serde_json::from_slice(&kv.value.raw)
        .map_err(|e| ApiError::internal(format!("stored object: {e}")))?;
    Ok(Some(v))
}

fn encode(s: &str) -> String {
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

/// The container a request names, checked against the pod's spec (upstream's messages).
fn container_name(pod: &Value, name: &str, q: &Query) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|x| x == c)
            {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => {
            if let Some(d) = pod
                .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
                .and_then(Value::as_str)
                && containers.iter().any(|x| x == d)
            {
                return Ok(d.to_string());
            }
            match containers.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(ApiError::bad_request(format!(
                    "pod {name} does not have any containers"
                ))),
                many => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                ))),
            }
        }
    }
}

/// The kubelet's `host:port` for a node.
fn kubelet_address(node: &Value) -> Option<String> {
    let addrs = node.pointer("/status/addresses")?.as_array()?;
    let pick = |kind: &str| {
        addrs
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|a| a.get("address").and_then(Value::as_str))
    };
    let host = pick("InternalIP")
        .or_else(|| pick("ExternalIP"))
        .or_else(|| pick("Hostname"))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0 && *p <= 65535)
        .unwrap_or(10250);
    Some(match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    })
}

/// Serves `pods/{log,exec,attach,portforward}` by proxying to the kubelet.
pub(crate) async fn serve(
    app: &Arc<App>,
    t: Target,
    q: Query,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let sub = t.subresource.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let ns = t.namespace.clone().unwrap_or_default();
    let method = req.method().clone();
    let ok_method = match sub.as_str() {
        "log" => method == Method::GET,
        _ => method == Method::GET || method == Method::POST,
    };
    if !ok_method {
        return Err(ApiError::method_not_allowed());
    }
    let pod = read_json(app, t.key())
        .await?
        .ok_or_else(|| ApiError::not_found("", "pods", &name))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?
        .to_string();
    let mut path = match sub.as_str() {
        "portforward" => format!("/portForward/{}/{}", encode(&ns), encode(&name)),
        _ => {
            let c = container_name(&pod, &name, &q)?;
            let kind = match sub.as_str() {
                "log" => "containerLogs",
                "exec" => "exec",
                _ => "attach",
            };
            format!("/{kind}/{}/{}/{}", encode(&ns), encode(&name), encode(&c))
        }
    };
    let pairs: Vec<(&str, &str)> =
        q.0.iter()
            .filter(|(k, _)| match sub.as_str() {
                "log" => LOG_PARAMS.contains(&k.as_str()),
                _ => k != "container",
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
    if !pairs.is_empty() {
        path.push('?');
        let enc: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        path.push_str(&enc.join("&"));
    }
    kubelet_request(app, &node_name, &name, path, sub != "log", req).await
}

/// `nodes/{name}/proxy/{path}`: the request (its method, path rest and query; upgrades
/// included) sent to that node's kubelet.
pub(crate) async fn serve_node_proxy(
    app: &Arc<App>,
    node_name: &str,
    rest: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let mut path = format!("/{}", rest.trim_start_matches('/'));
    if let Some(q) = req.uri().query() {
        path.push('?');
        path.push_str(q);
    }
    let upgrade = req.headers().contains_key(header::UPGRADE);
    kubelet_request(app, node_name, node_name, path, upgrade, req).await
}

/// Sends `method path` to the kubelet of `node_name` and relays the answer: a `101` becomes
/// a spliced connection, an error a Status, anything else a streamed body.
async fn kubelet_request(
    app: &Arc<App>,
    node_name: &str,
    name: &str,
    path: String,
    upgrade: bool,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let name = name.to_string();
    let nodes = app
        .registry()
        .lookup("", "v1", "nodes")
        .cloned()
        .ok_or_else(|| ApiError::internal("no nodes resource"))?;
    let node = read_json(app, super::object_key(&nodes, None, node_name))
        .await?
        .ok_or_else(|| ApiError::not_found("", "nodes", node_name))?;
    let addr = kubelet_address(&node).ok_or_else(|| {
        ApiError::internal(format!(
            "node {node_name} has no address to reach its kubelet"
        ))
    })?;
    let tls = app
        .kubelet_tls
        .clone()
        .ok_or_else(|| ApiError::internal("no kubelet client certificate configured"))?;

    // Connect and speak HTTP/1.1 to the kubelet.
    let unreachable = |e: &dyn std::fmt::Display| {
        let mut err = ApiError::internal(format!("error dialing backend: dial tcp {addr}: {e}"));
        err.code = 502;
        err
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| unreachable(&"i/o timeout"))?
        .map_err(|e| unreachable(&e))?;
    let _ = tcp.set_nodelay(true);
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']'))
        .unwrap_or("localhost")
        .to_string();
    let server_name =
        rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| unreachable(&e))?;
    let tls_stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp),
    )
    .await
    .map_err(|_| unreachable(&"TLS handshake timeout"))?
    .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls_stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("kubelet connection: {e}");
        }
    });

    let mut up = Request::builder().method(method).uri(path.as_str());
    if let Some(h) = up.headers_mut() {
        if let Ok(v) = HeaderValue::from_str(&addr) {
            h.insert(header::HOST, v);
        }
        if upgrade {
            for name in UPGRADE_HEADERS {
                for v in req.headers().get_all(name) {
                    h.append(name, v.clone());
                }
            }
        }
    }
    let up = up
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = sender.send_request(up).await.map_err(|e| unreachable(&e))?;
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let mut out = Response::new(body::full(Bytes::new()));
        *out.status_mut() = status;
        for name in SWITCH_HEADERS {
            for v in resp.headers().get_all(name) {
                out.headers_mut().append(name, v.clone());
            }
        }
        let kubelet_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(a), Ok(b)) = tokio::join!(client_upgrade, kubelet_upgrade) else {
                return;
            };
            let mut a = TokioIo::new(a);
            let mut b = TokioIo::new(b);
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
        return Ok(out);
    }
    if !status.is_success() {
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY);
        let text = match limited.collect().await {
            Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_string(),
            Err(_) => String::new(),
        };
        let mut err = match status.as_u16() {
            404 => ApiError::not_found("", "pods", &name),
            400 | 403 => ApiError::bad_request(text.clone()),
            _ => ApiError::internal(text.clone()),
        };
        if status.as_u16() == 404 && !text.is_empty() {
            err.message = text;
        }
        return Err(err);
    }
    // A streamed body (logs, or an endpoint answering without an upgrade).
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("text/plain"));
    let (tx, chan) = body::ChannelBody::new(16);
    let mut incoming = resp.into_body();
    tokio::spawn(async move {
        while let Some(f) = incoming.frame().await {
            let Ok(f) = f else { break };
            if let Ok(d) = f.into_data()
                && tx.send(d).await.is_err()
            {
                break;
            }
        }
    });
    let mut out = Response::new(chan.boxed());
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubelet_address_prefers_internal_ip_and_port() {
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"},
            {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}}}});
        assert_eq!(kubelet_address(&n).as_deref(), Some("10.0.0.5:12345"));
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(kubelet_address(&n).as_deref(), Some("n1:10250"));
        assert_eq!(kubelet_address(&json!({})), None);
    }

    #[test]
    fn container_defaulting_and_errors() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let q = Query::parse(Some("container=b")).unwrap();
        assert_eq!(container_name(&pod, "p", &q).unwrap(), "b");
        let q = Query::parse(Some("container=zz")).unwrap();
        let e = container_name(&pod, "p", &q).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "container zz is not valid for pod p")
        );
        let e = container_name(&pod, "p", &Query::default()).unwrap_err();
        assert!(e.message.contains("choose one of: [a b]"), "{}", e.message);
        let one = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(
            container_name(&one, "p", &Query::default()).unwrap(),
            "only"
        );
    }

    #[test]
    fn encoding_keeps_safe_bytes() {
        assert_eq!(encode("echo hi; exit 3"), "echo%20hi%3B%20exit%203");
        assert_eq!(encode("web-1.x_~"), "web-1.x_~");
    }
}
