//! The request pipeline: authenticate, route, then the handler of the endpoint.
//!
//! Non-resource endpoints (`/version`, health, discovery, OpenAPI) are answered from caches;
//! resource paths (`/api/v1/...`, `/apis/{g}/{v}/...`) are parsed into a [`Target`] and
//! handed to [`objects`] (CRUD, patch, subresources) or [`crate::watch`].
//!
//! Store keys are `/registry/<group>/<resource>/[<namespace>/]<name>` with the core group
//! written `core` ([`crate::registry::ResourceDef::key_prefix`]).

mod convert;
mod eviction;
pub mod objects;
mod priority;
mod proxy;
mod quota;
pub mod selector;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::auth::UserInfo;
use crate::discovery::{self, Scope};
use crate::registry::ResourceDef;
use crate::server::body::{self, Body};
use crate::server::{App, ConnInfo};
use crate::status::ApiError;

/// The Kubernetes version this server reports.
pub const KUBE_MINOR: &str = "33";
/// `gitVersion` reported by `/version`.
pub const KUBE_GIT_VERSION: &str = "v1.33.1";

/// Namespaces every cluster starts with.
pub const DEFAULT_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// A parsed query string (`application/x-www-form-urlencoded`).
#[derive(Debug, Default, Clone)]
pub(crate) struct Query(pub(crate) Vec<(String, String)>);

fn percent_decode(s: &str, plus_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl Query {
    pub(crate) fn parse(q: Option<&str>) -> Result<Self, ApiError> {
        let mut out = Vec::new();
        for pair in q
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .take(256)
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = || ApiError::bad_request(format!("malformed query parameter {pair:?}"));
            out.push((
                percent_decode(k, true).ok_or_else(bad)?,
                percent_decode(v, true).ok_or_else(bad)?,
            ));
        }
        Ok(Self(out))
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a boolean parameter is set (`true`, `1`).
    pub(crate) fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1" | "True"))
    }

    /// Every value of `name`.
    pub(crate) fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a resource path names.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) def: Arc<ResourceDef>,
    /// The namespace in the path (namespaced resources only).
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
}

impl Target {
    /// The store key of the named object.
    pub(crate) fn key(&self) -> Bytes {
        object_key(
            &self.def,
            self.namespace.as_deref(),
            self.name.as_deref().unwrap_or(""),
        )
    }

    /// The store key prefix of the collection (all namespaces when none is given).
    pub(crate) fn prefix(&self) -> Bytes {
        let mut p = self.def.key_prefix();
        if let Some(ns) = &self.namespace {
            p.push_str(ns);
            p.push('/');
        }
        Bytes::from(p)
    }
}

/// The store key of an object.
pub(crate) fn object_key(def: &ResourceDef, namespace: Option<&str>, name: &str) -> Bytes {
    let mut k = def.key_prefix();
    if def.namespaced {
        k.push_str(namespace.unwrap_or(""));
        k.push('/');
    }
    k.push_str(name);
    Bytes::from(k)
}

/// A path segment that names an object or namespace: no traversal, no separators.
pub(crate) fn check_segment(s: &str) -> Result<(), ApiError> {
    let why = match s {
        "" => Some("may not be empty".to_string()),
        "." | ".." => Some(format!("may not be {s:?}")),
        _ if s.contains('/') => Some("may not contain '/'".to_string()),
        _ if s.contains('%') => Some("may not contain '%'".to_string()),
        _ if s.chars().any(char::is_control) => Some("may not contain control characters".into()),
        _ => None,
    };
    match why {
        Some(w) => Err(ApiError::bad_request(format!("name {w}"))),
        None => Ok(()),
    }
}

/// Serve a whole request; never fails (errors become Status answers).
pub(crate) async fn handle(
    app: &Arc<App>,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // A shared handle on the request's URI (no copy), for the labels of non-resource paths.
    let uri = req.uri().clone();
    let gzip_ok = accepts_gzip(req.headers());
    let mut labels = None;
    let mut resp = match route(app, conn, req, &mut labels).await {
        Ok(r) => r,
        Err(e) => body::error(&e),
    };
    if gzip_ok {
        resp = maybe_gzip(resp);
    }
    let labels = labels.unwrap_or_else(|| {
        crate::metrics::RequestLabels::non_resource(method.as_str(), uri.path())
    });
    app.metrics
        .observe_request(&labels, resp.status().as_u16(), started.elapsed());
    tracing::debug!(%method, path = uri.path(), status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    resp
}

fn accepts_gzip(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|e| e.trim().split(';').next() == Some("gzip"))
        })
}

/// Responses at least this large are gzipped when the client accepts it (as upstream).
const GZIP_MIN_BYTES: usize = 128 * 1024;

/// Gzips a full (non-streaming) body of at least [`GZIP_MIN_BYTES`].
fn maybe_gzip(resp: Response<Body>) -> Response<Body> {
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    let exact = resp.body().size_hint().exact();
    let Some(len) = exact else { return resp };
    if (len as usize) < GZIP_MIN_BYTES || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let (mut parts, b) = resp.into_parts();
    // A full body is ready at once: poll it without a runtime hop.
    let fut = b.collect();
    let mut fut = std::pin::pin!(fut);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let data = match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(c)) => c.to_bytes(),
        _ => return Response::from_parts(parts, body::full(Bytes::new())),
    };
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    use std::io::Write;
    if enc.write_all(&data).is_err() {
        return Response::from_parts(parts, body::full(data));
    }
    match enc.finish() {
        Ok(z) => {
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, body::full(z))
        }
        Err(_) => Response::from_parts(parts, body::full(data)),
    }
}

use std::future::Future as _;

fn version_body() -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "major": "1",
            "minor": KUBE_MINOR,
            "gitVersion": KUBE_GIT_VERSION,
            "gitCommit": "kubeshard",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }))
        .unwrap_or_default(),
    )
}

/// The media type of the OpenAPI v2 document as upstream answers it (clients ask with
/// `...spec.v2@v1.0+protobuf`, which Go's mime parser rejects in a response).
const OPENAPI_V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

async fn route(
    app: &Arc<App>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    labels: &mut Option<crate::metrics::RequestLabels>,
) -> Result<Response<Body>, ApiError> {
    // Borrowed, not copied: from the connection, the token table or a shared constant.
    let user: &UserInfo = if conn.secure {
        app.auth.authenticate_ref(
            conn.cert_user.as_ref(),
            req.headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )?
    } else {
        &crate::auth::UNSECURED_ADMIN
    };
    // Shared handles (reference counts, no copies) that outlive moving `req` below.
    let uri = req.uri().clone();
    let path = uri.path();
    let query = Query::parse(uri.query())?;
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let accept_header = req.headers().get(header::ACCEPT).cloned();
    let accept = accept_header.as_ref().and_then(|v| v.to_str().ok());

    match path {
        "/version" | "/version/" if get => return Ok(body::json(StatusCode::OK, version_body())),
        "/healthz" | "/livez" | "/readyz" | "/healthz/" | "/livez/" | "/readyz/" if get => {
            return Ok(body::response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ok",
            ));
        }
        "/api" | "/api/" | "/apis" | "/apis/" if get => {
            let scope = if path.starts_with("/apis") {
                Scope::Apis
            } else {
                Scope::Core
            };
            let format = discovery::negotiate(accept)
                .ok_or_else(|| ApiError::not_acceptable(accept.unwrap_or("")))?;
            let (ct, bytes) = app.discovery().root(scope, format);
            return Ok(body::response(StatusCode::OK, ct, bytes));
        }
        "/metrics" if get => {
            return Ok(body::response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                app.metrics.render(),
            ));
        }
        "/openapi/v2" | "/swagger-2.0.0.pb-v1" if get => {
            // Only the protobuf form is served: the clients that read v2 (kubectl <= 1.29,
            // client-go's OpenAPISchema) ask for it and nothing else.
            let accept = accept.unwrap_or("");
            if !path.ends_with("pb-v1") && !accept.contains("protobuf") {
                return Err(ApiError::not_acceptable(accept));
            }
            return Ok(body::response(
                StatusCode::OK,
                OPENAPI_V2_PROTOBUF,
                app.openapi().v2_protobuf(),
            ));
        }
        "/openapi/v3" | "/openapi/v3/" if get => {
            return Ok(body::json(StatusCode::OK, app.openapi().index().clone()));
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/openapi/v3/") {
        if !get {
            return Err(ApiError::method_not_allowed());
        }
        let oa = app.openapi();
        let doc = oa.document(rest).ok_or_else(ApiError::path_not_found)?;
        let mut r = body::json(StatusCode::OK, doc.bytes.clone());
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&doc.etag) {
            h.insert(header::ETAG, v);
        }
        let cache = if query.get("hash") == Some(doc.hash.as_str()) {
            "public, immutable"
        } else {
            "no-cache, private"
        };
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        return Ok(r);
    }
    if path.starts_with("/healthz/") || path.starts_with("/livez/") || path.starts_with("/readyz/")
    {
        return Ok(body::response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ok",
        ));
    }

    // Resource paths.
    // Segments are decoded only when they hold an escape (rarely): no copy otherwise.
    let segs: Vec<std::borrow::Cow<'_, str>> = path
        .split('/')
        .skip(1)
        .map(|s| {
            if s.contains('%') {
                percent_decode(s, false)
                    .map(std::borrow::Cow::Owned)
                    .ok_or_else(|| ApiError::bad_request("malformed path"))
            } else {
                Ok(std::borrow::Cow::Borrowed(s))
            }
        })
        .collect::<Result<_, _>>()?;
    let segs: Vec<&str> = segs.iter().map(|s| &**s).collect();
    let segs: &[&str] = match segs.last() {
        Some(&"") => &segs[..segs.len() - 1],
        _ => &segs[..],
    };
    // nodes/{name}/proxy/{path...}: the node's kubelet answers.
    if let ["api", "v1", "nodes", node, "proxy", tail @ ..] = segs {
        check_segment(node)?;
        return Box::pin(proxy::serve_node_proxy(app, node, &tail.join("/"), req)).await;
    }
    let (group, version, rest): (&str, &str, &[&str]) = match segs {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g] if get => {
            let b = app
                .discovery()
                .group(g)
                .ok_or_else(ApiError::path_not_found)?;
            return Ok(body::json(StatusCode::OK, b));
        }
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    if rest.is_empty() {
        if !get {
            return Err(ApiError::method_not_allowed());
        }
        let b = app
            .discovery()
            .resource_list(group, version)
            .ok_or_else(ApiError::path_not_found)?;
        return Ok(body::json(StatusCode::OK, b));
    }
    let target = parse_target(app, group, version, rest)?;
    *labels = Some(request_labels(&target, &query, &req));
    if proxy::is_streaming(&target) {
        return Box::pin(proxy::serve(app, target, query, req)).await;
    }
    objects::serve(app, user, target, query, req).await
}

/// The TLS client configuration towards kubelets, from the PKI.
pub(crate) fn kubelet_tls(pki: &crate::pki::Pki) -> Result<Arc<rustls::ClientConfig>, String> {
    proxy::kubelet_tls(&pki.kubelet_client_cert_pem, &pki.kubelet_client_key_pem)
}

/// Upstream's verb and labels of a resource request, for `/metrics`.
fn request_labels(t: &Target, q: &Query, req: &Request<Incoming>) -> crate::metrics::RequestLabels {
    let named = t.name.is_some();
    let verb = match *req.method() {
        Method::GET | Method::HEAD if !named && q.flag("watch") => "WATCH",
        Method::GET | Method::HEAD if !named => "LIST",
        Method::GET | Method::HEAD => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH
            if req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("application/apply-patch")) =>
        {
            "APPLY"
        }
        Method::PATCH => "PATCH",
        Method::DELETE if named => "DELETE",
        Method::DELETE => "DELETECOLLECTION",
        _ => "CONNECT",
    };
    let scope = if named {
        "resource"
    } else if t.namespace.is_some() {
        "namespace"
    } else {
        "cluster"
    };
    crate::metrics::RequestLabels::resource(
        verb,
        &t.def.group,
        &t.def.version,
        &t.def.plural,
        t.subresource.as_deref().unwrap_or(""),
        &t.def.kind,
        scope,
    )
}

fn parse_target(app: &App, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    // Under the read lock rather than through `App::registry`: no clone of the shared `Arc`.
    let reg = app
        .registry
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let lookup = |r: &str| reg.lookup(group, version, r).cloned();
    // The resource after `namespaces/{ns}/`, looked up once.
    let namespaced = match rest {
        ["namespaces", _, r, ..] => lookup(r).filter(|d| d.namespaced),
        _ => None,
    };
    let t = match (rest, namespaced) {
        (["namespaces", ns, _, tail @ ..], Some(def)) => {
            check_segment(ns)?;
            match tail {
                [] => Target {
                    def,
                    namespace: Some(ns.to_string()),
                    name: None,
                    subresource: None,
                },
                [n] => Target {
                    def,
                    namespace: Some(ns.to_string()),
                    name: Some(n.to_string()),
                    subresource: None,
                },
                [n, s] => Target {
                    def,
                    namespace: Some(ns.to_string()),
                    name: Some(n.to_string()),
                    subresource: Some(s.to_string()),
                },
                _ => return Err(ApiError::path_not_found()),
            }
        }
        ([r, tail @ ..], _) => {
            let def = lookup(r).ok_or_else(ApiError::path_not_found)?;
            match tail {
                [] => Target {
                    def,
                    namespace: None,
                    name: None,
                    subresource: None,
                },
                [n] if !def.namespaced => Target {
                    def,
                    namespace: None,
                    name: Some(n.to_string()),
                    subresource: None,
                },
                [n, s] if !def.namespaced => Target {
                    def,
                    namespace: None,
                    name: Some(n.to_string()),
                    subresource: Some(s.to_string()),
                },
                _ => return Err(ApiError::path_not_found()),
            }
        }
        ([], _) => return Err(ApiError::path_not_found()),
    };
    if let Some(n) = &t.name {
        check_segment(n)?;
    }
    if let Some(s) = &t.subresource
        && t.def.subresource(s).is_none()
    {
        return Err(ApiError::path_not_found());
    }
    Ok(t)
}

/// Creates the default namespaces, the built-in PriorityClasses and the `kubernetes`
/// Service with its endpoints, if missing.
pub(crate) async fn bootstrap(app: &Arc<App>) -> Result<(), ApiError> {
    let reg = app.registry();
    let def = reg
        .lookup("", "v1", "namespaces")
        .cloned()
        .ok_or_else(|| ApiError::internal("no namespaces resource"))?;
    for ns in DEFAULT_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match objects::create_object(app, &def, None, obj, "kubeshard", false).await {
            Ok(_) => tracing::info!("created namespace {ns}"),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    priority::ensure_system_classes(app).await?;
    // The `kubernetes` Service in `default`, at the first address of the service range.
    if let Some(svc) = reg.lookup("", "v1", "services").cloned() {
        let port: u16 = app
            .server_address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(6443);
        let obj = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}});
        match objects::create_object(app, &svc, Some("default"), obj, "kubeshard", false).await {
            Ok(_)
            | Err(ApiError {
                code: 409 | 422, ..
            }) => {}
            Err(e) => return Err(e),
        }
        ensure_kubernetes_endpoints(app, &reg).await?;
    }
    Ok(())
}

/// Points the `kubernetes` Service at this apiserver, as upstream's endpoint reconciler
/// does: the Endpoints (with `endpointslice.kubernetes.io/skip-mirror`) and the EndpointSlice
/// `kubernetes`, at the address clients reach the server on (`server_address`: the bind
/// address, or 127.0.0.1 when bound to all addresses, which the node's service proxy reaches
/// from the host). Rewritten only when the address or port changed since the last start.
async fn ensure_kubernetes_endpoints(
    app: &Arc<App>,
    reg: &crate::registry::Registry,
) -> Result<(), ApiError> {
    let Some((ip, port)) = app.server_address.rsplit_once(':').and_then(|(h, p)| {
        Some((
            h.trim_matches(['[', ']']).to_string(),
            p.parse::<u16>().ok()?,
        ))
    }) else {
        return Ok(());
    };
    let address_type = if ip.contains(':') { "IPv6" } else { "IPv4" };
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}],
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "kubeshard-apiserver"}},
        "addressType": address_type,
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
    for (group, version, resource, obj, addr_ptr, port_ptr) in [
        (
            "",
            "v1",
            "endpoints",
            endpoints,
            "/subsets/0/addresses/0/ip",
            "/subsets/0/ports/0/port",
        ),
        (
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            slice,
            "/endpoints/0/addresses/0",
            "/ports/0/port",
        ),
    ] {
        let Some(def) = reg.lookup(group, version, resource).cloned() else {
            continue;
        };
        let key = object_key(&def, Some("default"), "kubernetes");
        if let Some(cur) = app.backend.get(key.clone()).await? {
            let cur: serde_json::Value =
                serde_json::from_slice(&cur.value.raw).map_err(ApiError::internal)?;
            if cur.pointer(addr_ptr) == obj.pointer(addr_ptr)
                && cur.pointer(port_ptr) == obj.pointer(port_ptr)
            {
                continue;
            }
            // The server moved (another port or address): replace the stale endpoints.
            app.backend.delete(key, None).await?;
        }
        match objects::create_object(app, &def, Some("default"), obj, "kubeshard", false).await {
            Ok(_) | Err(ApiError { code: 409, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves a body-less resource read (GET/HEAD of an object or a collection, watches
/// included) for a transport without hyper bodies: the QUIC endpoint ([`crate::quic`]).
/// The same authentication, target parsing, handlers (so the same encoded-once watch
/// events), metrics and `metav1.Status` errors as [`handle`]; anything else is 405 there
/// (non-resource paths 404; pod log/exec/attach/port-forward need HTTP).
pub(crate) async fn handle_read(
    app: &Arc<App>,
    conn: &ConnInfo,
    method: &Method,
    uri: &http::Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let started = Instant::now();
    let mut labels = None;
    let resp = match route_read(app, conn, method, uri, headers, &mut labels).await {
        Ok(r) => r,
        Err(e) => body::error(&e),
    };
    let labels = labels.unwrap_or_else(|| {
        crate::metrics::RequestLabels::non_resource(method.as_str(), uri.path())
    });
    app.metrics
        .observe_request(&labels, resp.status().as_u16(), started.elapsed());
    resp
}

async fn route_read(
    app: &Arc<App>,
    conn: &ConnInfo,
    method: &Method,
    uri: &http::Uri,
    headers: HeaderMap,
    labels: &mut Option<crate::metrics::RequestLabels>,
) -> Result<Response<Body>, ApiError> {
    let user: &UserInfo = if conn.secure {
        app.auth.authenticate_ref(
            conn.cert_user.as_ref(),
            headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )?
    } else {
        &crate::auth::UNSECURED_ADMIN
    };
    if *method != Method::GET && *method != Method::HEAD {
        return Err(ApiError::method_not_allowed());
    }
    let query = Query::parse(uri.query())?;
    let segs: Vec<String> = uri
        .path()
        .split('/')
        .skip(1)
        .map(|s| percent_decode(s, false).ok_or_else(|| ApiError::bad_request("malformed path")))
        .collect::<Result<_, _>>()?;
    let mut segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if segs.last() == Some(&"") {
        segs.pop();
    }
    let (group, version, rest): (&str, &str, &[&str]) = match &segs[..] {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g, v, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    let target = parse_target(app, group, version, rest)?;
    let named = target.name.is_some();
    let verb = match (named, query.flag("watch")) {
        (false, true) => "WATCH",
        (false, false) => "LIST",
        (true, _) => "GET",
    };
    let scope = if named {
        "resource"
    } else if target.namespace.is_some() {
        "namespace"
    } else {
        "cluster"
    };
    *labels = Some(crate::metrics::RequestLabels::resource(
        verb,
        &target.def.group,
        &target.def.version,
        &target.def.plural,
        target.subresource.as_deref().unwrap_or(""),
        &target.def.kind,
        scope,
    ));
    if proxy::is_streaming(&target) {
        return Err(ApiError::method_not_allowed());
    }
    objects::serve_read_body(
        app,
        user,
        target,
        query,
        method.clone(),
        headers,
        Bytes::new(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&x")).unwrap();
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some(""));
        assert!(Query::parse(Some("a=%zz")).is_err());
    }

    #[test]
    fn segments_reject_traversal() {
        for s in ["", ".", "..", "a/b", "a%2f"] {
            assert!(check_segment(s).is_err(), "{s}");
        }
        assert!(check_segment("web-1").is_ok());
    }
}
