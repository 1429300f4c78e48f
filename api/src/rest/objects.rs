//! Object handlers: get, list, create, update (PUT), patch (four types), delete, and the
//! `status` and `scale` subresources, over the store.
//!
//! Reads serve the stored bytes as they are (the store stamps `resourceVersion` into them
//! at the slot [`encode_for_store`] leaves), so GET and LIST neither parse nor re-encode.
//! Every write goes through [`guaranteed_update`] or [`create_object`]: decode, keep the
//! server-owned metadata, default, validate, skip no-ops (a write that changes nothing
//! returns the stored object with its old `resourceVersion`), compare-and-swap on the
//! revision read, retry a bounded number of times when someone else wrote in between.

use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use chrono::{SecondsFormat, Utc};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use store::{KeyValue, RangeEnd, RangeRequest, Revision};

use super::{Query, Target};
use crate::auth::UserInfo;
use crate::patch::schema::{NoSchema, PatchSchema};
use crate::registry::{self, ResourceDef};
use crate::server::App;
use crate::server::body::{self, Body};
use crate::status::ApiError;
use crate::table::{IncludeObject, TableOptions};
use crate::validation::{self, FieldValidation};

/// Attempts of a read-modify-write before giving up with a 409.
const MAX_UPDATE_ATTEMPTS: usize = 8;
/// Most store pages one filtered LIST reads before answering with what it has.
const MAX_LIST_PAGES: usize = 10_000;

/// The current time as Kubernetes writes timestamps.
pub(crate) fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// How the client wants objects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Json,
    Table,
}

pub(crate) fn negotiate_output(headers: &HeaderMap) -> Result<Output, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Output::Json);
    };
    // The common case, without looking further.
    if accept == "application/json" {
        return Ok(Output::Json);
    }
    let mut json_ok = accept.trim().is_empty();
    let media_is =
        |media: &str, names: &[&str]| names.iter().any(|n| media.eq_ignore_ascii_case(n));
    for entry in accept.split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let (mut is_table, mut has_as) = (false, false);
        for p in parts {
            is_table |= p.chars().filter(|c| *c != ' ').eq("as=Table".chars());
            has_as |= p.starts_with("as=");
        }
        if is_table && media_is(media, &["application/json", "*/*"]) {
            return Ok(Output::Table);
        }
        if has_as {
            continue;
        }
        if media_is(
            media,
            &[
                "application/json",
                "*/*",
                "application/*",
                "application/yaml",
                "",
            ],
        ) {
            json_ok = true;
        }
    }
    if json_ok {
        Ok(Output::Json)
    } else {
        Err(ApiError::not_acceptable(accept))
    }
}

/// Serializes `obj` for the store with an empty `metadata.resourceVersion` whose position
/// is returned, so the store can stamp the revision in place.
pub(crate) fn encode_for_store(obj: &mut Value) -> Result<(Bytes, u32), ApiError> {
    let sentinel = format!("ks-rv-{}", uuid::Uuid::new_v4().simple());
    let meta = metadata_mut(obj);
    meta.insert("resourceVersion".into(), Value::String(sentinel.clone()));
    let mut raw = serde_json::to_vec(obj).map_err(ApiError::internal)?;
    metadata_mut(obj).remove("resourceVersion");
    let pos = raw
        .windows(sentinel.len())
        .position(|w| w == sentinel.as_bytes())
        .ok_or_else(|| ApiError::internal("resourceVersion slot not found"))?;
    raw.drain(pos..pos + sentinel.len());
    let slot = u32::try_from(pos).map_err(|_| ApiError::internal("object too large"))?;
    Ok((Bytes::from(raw), slot))
}

/// `raw` with `rev` inserted at `slot` (what the store will hold).
pub(crate) fn stamp(raw: &[u8], slot: u32, rev: Revision) -> Bytes {
    let s = slot as usize;
    let r = rev.0.to_string();
    let mut out = BytesMut::with_capacity(raw.len() + r.len());
    out.extend_from_slice(&raw[..s]);
    out.extend_from_slice(r.as_bytes());
    out.extend_from_slice(&raw[s..]);
    out.freeze()
}

pub(crate) fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(o) = obj else {
        unreachable!("replaced by an object above")
    };
    let m = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    let Value::Object(m) = m else {
        unreachable!("replaced by an object above")
    };
    m
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn parse_stored(kv: &KeyValue) -> Result<Value, ApiError> {
    serde_json::from_slice(&kv.value.raw)
        .map_err(|e| ApiError::internal(format!("stored object is not valid JSON: {e}")))
}

fn object_response(status: StatusCode, raw: Bytes, warnings: &[String]) -> Response<Body> {
    let mut r = body::json(status, raw);
    add_warnings(&mut r, warnings);
    r
}

fn add_warnings(r: &mut Response<Body>, warnings: &[String]) {
    for w in warnings.iter().take(32) {
        let text = w.replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
}

fn value_response(
    status: StatusCode,
    v: &Value,
    warnings: &[String],
) -> Result<Response<Body>, ApiError> {
    let raw = serde_json::to_vec(v).map_err(ApiError::internal)?;
    Ok(object_response(status, Bytes::from(raw), warnings))
}

pub(super) fn dry_run(q: &Query) -> Result<bool, ApiError> {
    let mut dry = false;
    for v in q.all("dryRun") {
        match v {
            "All" => dry = true,
            "" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid dryRun value {other:?}: valid values are \"All\""
                )));
            }
        }
    }
    Ok(dry)
}

pub(super) fn field_manager(q: &Query, headers: &HeaderMap) -> String {
    if let Some(m) = q.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.chars().take(128).collect();
    }
    // Upstream derives the manager from the user agent's first token.
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

fn patch_schema(def: &ResourceDef) -> &'static dyn PatchSchema {
    crate::patch::schema::builtin_schema(&def.api_version(), &def.kind).unwrap_or(&NoSchema)
}

pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decodes a create/update body in any supported media type, checking fields per `mode`.
pub(super) fn decode_object(
    app: &App,
    def: &ResourceDef,
    headers: &HeaderMap,
    body: &[u8],
    mode: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let schemas = app.openapi().schemas().clone();
    let ct = content_type(headers);
    let (mut obj, warnings) = match ct.as_str() {
        "" | "application/json" => {
            let d = validation::decode_json(body, def, &schemas, mode)?;
            (d.object, d.warnings)
        }
        "application/yaml" => {
            let mut v: Value = serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            if !v.is_object() {
                return Err(ApiError::bad_request("the body must be an object"));
            }
            let w = validation::check_fields(&mut v, def, &schemas, mode)?;
            (v, w)
        }
        "application/vnd.kubernetes.protobuf" => {
            let mut v = crate::protobuf::decode_body(body)?;
            let w = validation::check_fields(&mut v, def, &schemas, mode)?;
            (v, w)
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    check_type_meta(def, &mut obj)?;
    Ok((obj, warnings))
}

/// Fills `apiVersion`/`kind` if absent; rejects a body of another kind.
fn check_type_meta(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let av = def.api_version();
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    match o.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("apiVersion".into(), Value::String(av.clone()));
        }
        Some(v) if v == av => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({av})"
            )));
        }
    }
    match o.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("kind".into(), Value::String(def.kind.clone()));
        }
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )));
        }
    }
    Ok(())
}

/// Dispatches a resource request.
pub(crate) async fn serve(
    app: &Arc<App>,
    user: &UserInfo,
    t: Target,
    q: Query,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    // Authorization comes with RBAC (a later issue): every authenticated user is allowed.
    let (parts, incoming) = req.into_parts();
    let method = parts.method.clone();
    let headers = parts.headers;
    let read = matches!(method, Method::GET | Method::HEAD);
    let stored = crate::conversion::stored_version(&t.def.group, &t.def.version, &t.def.kind);
    // The hottest request, a GET of one object, is awaited directly. Every other request
    // goes through a boxed future: the state machine of all the write paths is ~6 KiB, and
    // hyper moves the request's future several times (into its stream task, then into
    // the spawned task), which had made memmove ~10% of the server's CPU per GET.
    if read && stored.is_none() && t.name.is_some() && t.subresource.is_none() {
        if !t.def.has_verb("get") {
            return Err(ApiError::method_not_allowed());
        }
        return get(app, &t, &q, &headers).await;
    }
    let body = if read {
        Bytes::new()
    } else {
        body::read_limited(incoming).await?
    };
    serve_read_body(app, user, t, q, method, headers, body).await
}

/// Serves a resource request whose body has been read: through the conversion of a served
/// version that is not the stored one, else the stored version's handlers. Boxed: see
/// [`serve`].
pub(super) async fn serve_read_body(
    app: &Arc<App>,
    user: &UserInfo,
    t: Target,
    q: Query,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    match crate::conversion::stored_version(&t.def.group, &t.def.version, &t.def.kind) {
        Some(stored) => {
            Box::pin(super::convert::serve(
                app, user, t, q, method, headers, body, stored,
            ))
            .await
        }
        None => Box::pin(dispatch(app, user, t, q, method, headers, body)).await,
    }
}

/// Serves a resource request whose body has been read.
pub(super) async fn dispatch(
    app: &Arc<App>,
    user: &UserInfo,
    t: Target,
    q: Query,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    // Borrowed: cloning the `Arc` would bounce its shared count between the acceptor cores.
    let def: &ResourceDef = &t.def;
    let verb_ok = |v: &str| {
        if def.has_verb(v) {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match (&method, t.name.is_some(), t.subresource.as_deref()) {
        (&Method::GET | &Method::HEAD, false, None) => {
            if q.flag("watch") {
                verb_ok("watch")?;
                crate::watch::serve(app, &t, &q, &headers).await
            } else {
                verb_ok("list")?;
                list(app, &t, &q, &headers).await
            }
        }
        (&Method::POST, false, None) if is_review(def) => {
            verb_ok("create")?;
            review(app, user, &t, &q, &headers, &body)
        }
        (&Method::POST, false, None) => {
            verb_ok("create")?;
            create(app, &t, &q, &headers, &body).await
        }
        (&Method::DELETE, false, None) => {
            verb_ok("deletecollection")?;
            delete_collection(app, &t, &q, &body).await
        }
        (&Method::GET | &Method::HEAD, true, None) => {
            verb_ok("get")?;
            get(app, &t, &q, &headers).await
        }
        (&Method::PUT, true, None | Some("status")) => {
            verb_ok("update")?;
            update(app, &t, &q, &headers, &body).await
        }
        (&Method::PATCH, true, None | Some("status")) => {
            verb_ok("patch")?;
            patch(app, &t, &q, &headers, &body).await
        }
        (&Method::DELETE, true, None) => {
            verb_ok("delete")?;
            delete(app, &t, &q, &body).await
        }
        (&Method::GET, true, Some("status")) => get(app, &t, &q, &headers).await,
        (&Method::GET, true, Some("scale")) => {
            let (_, obj) = read_object(app, &t).await?;
            value_response(StatusCode::OK, &registry::scale_of(def, &obj)?, &[])
        }
        (&Method::POST, true, Some("binding")) => binding(app, &t, &q, &headers, &body).await,
        (&Method::POST, true, Some("eviction")) if def.plural == "pods" && def.group.is_empty() => {
            super::eviction::evict(app, &t, &q, &headers, &body).await
        }
        (&Method::PUT | &Method::PATCH, true, Some("scale")) => {
            scale_write(app, &t, &q, &headers, &body).await
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

pub(super) async fn read_object(app: &App, t: &Target) -> Result<(KeyValue, Value), ApiError> {
    let kv = app
        .backend
        .get(t.key())
        .await?
        .ok_or_else(|| not_found(t))?;
    let obj = parse_stored(&kv)?;
    Ok((kv, obj))
}

fn not_found(t: &Target) -> ApiError {
    ApiError::not_found(&t.def.group, &t.def.plural, t.name.as_deref().unwrap_or(""))
}

fn table_options(q: &Query, list_meta: Option<Value>) -> Result<TableOptions, ApiError> {
    let include_object = IncludeObject::parse(q.get("includeObject"))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(TableOptions {
        include_object,
        no_headers: false,
        list_meta,
    })
}

async fn get(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let output = negotiate_output(headers)?;
    if output == Output::Json {
        // The stored bytes only: a raw read copies none of the envelope's metadata (uid,
        // names, labels, fields) that `Backend::get` would clone out for nothing.
        let page = app
            .backend
            .list_raw(
                RangeRequest::single(t.key()),
                &store::WatchFilter::default(),
            )
            .await?;
        let item = page.items.into_iter().next().ok_or_else(|| not_found(t))?;
        return Ok(object_response(StatusCode::OK, item.raw, &[]));
    }
    let kv = app
        .backend
        .get(t.key())
        .await?
        .ok_or_else(|| not_found(t))?;
    match output {
        Output::Json => Ok(object_response(StatusCode::OK, kv.value.raw, &[])),
        Output::Table => {
            let obj = parse_stored(&kv)?;
            let table =
                crate::table::to_table(&t.def, &[obj], &table_options(q, None)?, Utc::now());
            value_response(StatusCode::OK, &table, &[])
        }
    }
}

/// A LIST continue token: the revision of the first page and the next key to read.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

fn encode_continue(rv: Revision, next_key: &[u8], prefix: &[u8]) -> String {
    let start = String::from_utf8_lossy(&next_key[prefix.len().min(next_key.len())..]).into_owned();
    let tok = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv: rv.0,
        start,
    };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&tok).unwrap_or_default())
}

fn decode_continue(s: &str) -> Result<ContinueToken, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .map_err(|_| bad())?;
    let tok: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if tok.v != "meta.k8s.io/v1" || tok.rv == 0 {
        return Err(bad());
    }
    Ok(tok)
}

/// The first key after every key with this prefix.
pub(crate) fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::new()
}

/// Label and field requirements of a list or watch.
pub(crate) struct Selectors {
    pub(crate) labels: Vec<store::Requirement>,
    pub(crate) fields: Vec<store::Requirement>,
}

impl Selectors {
    pub(crate) fn parse(def: &ResourceDef, q: &Query) -> Result<Self, ApiError> {
        let labels = super::selector::parse_label_selector(q.get("labelSelector").unwrap_or(""))?;
        let fields = registry::parse_field_selector(def, q.get("fieldSelector").unwrap_or(""))?;
        Ok(Self { labels, fields })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// The same requirements as the store checks them on its envelopes.
    pub(crate) fn filter(&self) -> store::WatchFilter {
        store::WatchFilter {
            labels: self.labels.clone(),
            fields: self.fields.clone(),
        }
    }

    /// Whether a stored value passes, from the store envelope's labels and fields alone.
    pub(crate) fn matches(&self, v: &store::ObjectValue) -> bool {
        super::selector::matches(&self.labels, &v.labels)
            && self.fields.iter().all(|r| match r {
                // Fields the envelope carries are matched there; metadata ones directly.
                store::Requirement::Equals(f, val) => field_of(v, f) == *val,
                store::Requirement::NotEquals(f, val) => field_of(v, f) != *val,
                _ => true,
            })
    }
}

fn field_of(v: &store::ObjectValue, f: &str) -> String {
    match f {
        "metadata.name" => v.name.clone(),
        "metadata.namespace" => v.namespace.clone(),
        _ => v
            .fields
            .iter()
            .find(|(k, _)| k == f)
            .map(|(_, x)| x.clone())
            .unwrap_or_default(),
    }
}

async fn list(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let output = negotiate_output(headers)?;
    let sel = Selectors::parse(&t.def, q)?;
    let limit: u64 = match q.get("limit") {
        None | Some("") => 0,
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
    };
    let prefix = t.prefix();
    let end = prefix_end(&prefix);
    let (start, mut revision) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let tok = decode_continue(c)?;
            let mut k = prefix.to_vec();
            k.extend_from_slice(tok.start.as_bytes());
            (Bytes::from(k), Some(Revision(tok.rv)))
        }
        None => {
            let exact = q.get("resourceVersionMatch") == Some("Exact");
            let rv = match q.get("resourceVersion") {
                Some(v) if exact && !v.is_empty() => Some(Revision(v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {v:?}"))
                })?)),
                _ => None,
            };
            (prefix.clone(), rv)
        }
    };
    let page = app
        .backend
        .list_raw(
            RangeRequest {
                key: start,
                range_end: RangeEnd::Until(end),
                revision,
                limit: (limit > 0).then_some(limit),
                keys_only: false,
                count_only: false,
                skip_count: true,
            },
            &sel.filter(),
        )
        .await
        .map_err(|e| match e {
            store::StoreError::Compacted { .. } if q.get("continue").is_some() => ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ),
            other => other.into(),
        })?;
    revision = Some(page.revision);
    let next = page.resume;
    let items: Vec<Bytes> = page.items.into_iter().map(|i| i.raw).collect();
    let rv = revision.unwrap_or_default();
    let cont = next.map(|k| encode_continue(rv, &k, &prefix));
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    if let Some(c) = &cont {
        meta.insert("continue".into(), Value::String(c.clone()));
    }
    match output {
        Output::Json => {
            let head = serde_json::to_vec(&json!({
                "kind": t.def.list_kind,
                "apiVersion": t.def.api_version(),
                "metadata": meta,
            }))
            .map_err(ApiError::internal)?;
            // {"apiVersion":..,"kind":..,"metadata":{..}} -> drop the final '}' and append items.
            let mut prefix = head;
            prefix.pop();
            prefix.extend_from_slice(b",\"items\":[");
            let joined =
                body::JoinedBody::new(Bytes::from(prefix), items, b",", Bytes::from_static(b"]}"));
            let mut r = Response::new(http_body_util::BodyExt::boxed(joined));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        Output::Table => {
            let objs: Vec<Value> = items
                .iter()
                .map(|b| serde_json::from_slice(b))
                .collect::<Result<_, _>>()
                .map_err(ApiError::internal)?;
            let table = crate::table::to_table(
                &t.def,
                &objs,
                &table_options(q, Some(Value::Object(meta)))?,
                Utc::now(),
            );
            value_response(StatusCode::OK, &table, &[])
        }
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

async fn create(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let mode = FieldValidation::parse(q.get("fieldValidation"))?;
    let (obj, warnings) = decode_object(app, &t.def, headers, body, mode)?;
    let manager = field_manager(q, headers);
    let (raw, _) = create_object(
        app,
        &t.def,
        t.namespace.as_deref(),
        obj,
        &manager,
        dry_run(q)?,
    )
    .await?;
    Ok(object_response(StatusCode::CREATED, raw, &warnings))
}

/// Creates `obj` (already decoded) as a `def` in `namespace`; returns the stored bytes.
pub(crate) async fn create_object(
    app: &App,
    def: &ResourceDef,
    namespace: Option<&str>,
    obj: Value,
    manager: &str,
    dry: bool,
) -> Result<(Bytes, Value), ApiError> {
    create_tracked(app, def, namespace, obj, Some(manager), dry).await
}

/// Creates `obj`. `manager` is the field manager of a plain create, recorded as an
/// `Update`; `None` when the caller (server-side apply) has already recorded the object's
/// `managedFields` and they must be stored as they are.
async fn create_tracked(
    app: &App,
    def: &ResourceDef,
    namespace: Option<&str>,
    mut obj: Value,
    manager: Option<&str>,
    dry: bool,
) -> Result<(Bytes, Value), ApiError> {
    check_type_meta(def, &mut obj)?;
    let now = now_rfc3339();
    {
        let meta = metadata_mut(&mut obj);
        if def.namespaced {
            let url_ns = namespace.unwrap_or("");
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), Value::String(url_ns.to_string()));
                }
                Some(ns) if ns == url_ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() && !generate.is_empty() {
            meta.insert(
                "name".into(),
                Value::String(format!("{generate}{}", random_suffix())),
            );
        }
        meta.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        meta.insert("creationTimestamp".into(), Value::String(now.clone()));
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(k);
        }
        meta.remove("generation");
    }
    if obj.get("spec").is_some() {
        metadata_mut(&mut obj).insert("generation".into(), json!(1));
    }
    let schemas = app.openapi().schemas().clone();
    validation::default_object(def, &schemas, &mut obj);
    if is_pod(def) {
        super::priority::admit_pod_create(app, &mut obj).await?;
    }
    validation::prepare_for_create(def, &mut obj);
    validation::validate_create(def, &obj)?;
    if is_priority_class(def) {
        super::priority::admit_class(app, def, &obj).await?;
    }
    if let Some(manager) = manager {
        let av = def.api_version();
        obj = crate::apply::record_update(
            None,
            &obj,
            &crate::apply::UpdateOptions {
                manager,
                api_version: &av,
                now: &now,
                schema: patch_schema(def),
                subresource: None,
            },
        )?;
    }
    let name = meta_str(&obj, "name").to_string();
    if def.namespaced {
        check_namespace_open(
            app,
            namespace.unwrap_or(""),
            &def.plural,
            def.kind == "Event",
        )
        .await?;
        super::quota::admit(app, def, namespace.unwrap_or(""), &obj, dry).await?;
    }
    if dry {
        let raw = serde_json::to_vec(&obj).map_err(ApiError::internal)?;
        return Ok((Bytes::from(raw), obj));
    }
    let key = super::object_key(def, namespace, &name);
    let service_ip = if is_service(def) {
        allocate_cluster_ip(app, &mut obj).await?
    } else {
        None
    };
    let node_ports = if is_service(def) {
        match allocate_node_ports(app, &mut obj, &[]).await {
            Ok(p) => p,
            Err(e) => {
                if let Some(ip) = &service_ip {
                    release_cluster_ip(app, ip).await;
                }
                return Err(e);
            }
        }
    } else {
        Vec::new()
    };
    let index = registry::extract_index(def, &obj);
    let (raw, slot) = encode_for_store(&mut obj)?;
    let value = index.into_object_value(raw.clone(), store::ContentType::Json, Some(slot));
    let created = app.backend.create(key, value, None).await;
    if !matches!(created, Ok(Some(_))) {
        if let Some(ip) = &service_ip {
            release_cluster_ip(app, ip).await;
        }
        release_node_ports(app, &node_ports).await;
    }
    match created? {
        Some(rev) => {
            metadata_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
            if def.group == "apiextensions.k8s.io" && def.kind == "CustomResourceDefinition" {
                app.crd_changed(&obj, false);
            }
            Ok((stamp(&raw, slot, rev), obj))
        }
        None => Err(ApiError::already_exists(&def.group, &def.plural, &name)),
    }
}

/// Namespaced creates need an existing namespace that is not being deleted.
async fn check_namespace_open(
    app: &App,
    ns: &str,
    resource: &str,
    allow_terminating: bool,
) -> Result<(), ApiError> {
    let reg = app.registry();
    let Some(nsdef) = reg.lookup("", "v1", "namespaces") else {
        return Ok(());
    };
    let key = super::object_key(nsdef, None, ns);
    let kv = app
        .backend
        .get(key)
        .await?
        .ok_or_else(|| ApiError::not_found("", "namespaces", ns))?;
    if !allow_terminating {
        let obj = parse_stored(&kv)?;
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::forbidden(format!(
                "{resource} is forbidden: unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
    }
    Ok(())
}

/// What a read-modify-write produced.
enum Outcome {
    /// Stored at a new revision: the stored bytes.
    Written(Bytes),
    /// Nothing changed: the stored bytes as they were.
    Unchanged(Bytes),
    /// Deleted (finalizers done): the last state.
    Deleted(Value),
    /// Dry run: the object that would have been stored.
    DryRun(Value),
}

/// Server-owned metadata an update may not change.
fn keep_server_fields(def: &ResourceDef, old: &Value, new: &mut Value, subresource: Option<&str>) {
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let is_status = subresource == Some("status");
    let has_status_sub = def.subresource("status").is_some();
    if is_status {
        // Only status changes through the status subresource.
        let status = new.get("status").cloned();
        *new = old.clone();
        match status {
            Some(s) => {
                if let Some(o) = new.as_object_mut() {
                    o.insert("status".into(), s);
                }
            }
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        return;
    }
    if has_status_sub && let Some(o) = new.as_object_mut() {
        match old.get("status") {
            Some(s) => {
                o.insert("status".into(), s.clone());
            }
            None => {
                o.remove("status");
            }
        }
    }
    let meta = metadata_mut(new);
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "generation",
    ] {
        match old_meta.get(k) {
            Some(v) => {
                meta.insert(k.into(), v.clone());
            }
            None => {
                meta.remove(k);
            }
        }
    }
    meta.remove("selfLink");
    if old.get("spec") != new.get("spec") && new.get("spec").is_some() {
        let g = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        metadata_mut(new).insert("generation".into(), json!(g + 1));
    }
}

fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(Value::Object(m)) = v.get_mut("metadata") {
        m.remove("resourceVersion");
    }
    v
}

/// The core of every update: reads the object, lets `mutate` produce the desired state,
/// keeps server-owned fields, defaults, validates, skips no-ops, writes with
/// compare-and-swap, and retries if another write came in between.
#[allow(clippy::too_many_arguments)]
async fn guaranteed_update<F>(
    app: &App,
    t: &Target,
    manager: &str,
    dry: bool,
    subresource: Option<&str>,
    track_update: bool,
    mut mutate: F,
) -> Result<Outcome, ApiError>
where
    F: FnMut(&Value) -> Result<Value, ApiError>,
{
    let def = &t.def;
    let schemas = app.openapi().schemas().clone();
    let av = def.api_version();
    for _ in 0..MAX_UPDATE_ATTEMPTS {
        let (kv, mut old) = read_object(app, t).await?;
        metadata_mut(&mut old).insert(
            "resourceVersion".into(),
            Value::String(kv.mod_revision.to_string()),
        );
        let mut new = mutate(&old)?;
        check_type_meta(def, &mut new)?;
        // A resourceVersion in the desired object is a precondition.
        let rv = meta_str(&new, "resourceVersion").to_string();
        if !rv.is_empty() && rv != kv.mod_revision.to_string() {
            return Err(ApiError::conflict_modified(
                &def.group,
                &def.plural,
                t.name.as_deref().unwrap_or(""),
            ));
        }
        if meta_str(&new, "name") != t.name.as_deref().unwrap_or("") {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({})",
                meta_str(&new, "name"),
                t.name.as_deref().unwrap_or("")
            )));
        }
        if def.namespaced {
            let ns = meta_str(&new, "namespace");
            if !ns.is_empty() && ns != t.namespace.as_deref().unwrap_or("") {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        keep_server_fields(def, &old, &mut new, subresource);
        if is_pod(def) {
            super::priority::keep_resolved_priority(&old, &mut new);
        }
        let service_spec = is_service(def) && subresource.is_none();
        if service_spec {
            carry_node_ports(&old, &mut new);
        }
        validation::default_object(def, &schemas, &mut new);
        validation::prepare_for_update(def, &mut new);
        validation::validate_update(def, &new, &old)?;
        if is_priority_class(def) && subresource.is_none() {
            super::priority::admit_class(app, def, &new).await?;
        }
        if track_update {
            let now = now_rfc3339();
            new = crate::apply::record_update(
                Some(&old),
                &new,
                &crate::apply::UpdateOptions {
                    manager,
                    api_version: &av,
                    now: &now,
                    schema: patch_schema(def),
                    subresource,
                },
            )?;
        }
        if without_rv(&new) == without_rv(&old) {
            return Ok(Outcome::Unchanged(kv.value.raw));
        }
        let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            && !graceful_pending(def, &new);
        if !finalized && def.namespaced && super::quota::update_may_charge(def, &old, &new) {
            let ns = t.namespace.as_deref().unwrap_or("");
            super::quota::admit_update(app, def, ns, &old, &new, dry).await?;
        }
        if dry {
            return Ok(Outcome::DryRun(new));
        }
        if finalized {
            match app.backend.delete(t.key(), Some(kv.mod_revision)).await? {
                Some(_) => return Ok(Outcome::Deleted(new)),
                None => continue,
            }
        }
        // A type change to NodePort/LoadBalancer allocates nodePorts; the ones the
        // Service no longer holds are released once the write has landed.
        let held = if service_spec {
            service_node_ports(&old)
        } else {
            Vec::new()
        };
        let taken = if service_spec {
            allocate_node_ports(app, &mut new, &held).await?
        } else {
            Vec::new()
        };
        let index = registry::extract_index(def, &new);
        let (raw, slot) = match encode_for_store(&mut new) {
            Ok(v) => v,
            Err(e) => {
                release_node_ports(app, &taken).await;
                return Err(e);
            }
        };
        let value = index.into_object_value(raw.clone(), store::ContentType::Json, Some(slot));
        let written = app
            .backend
            .update(t.key(), kv.mod_revision, value, None)
            .await;
        if !matches!(written, Ok(Ok(_))) {
            release_node_ports(app, &taken).await;
        }
        match written? {
            Ok(rev) => {
                if def.group == "apiextensions.k8s.io" && def.kind == "CustomResourceDefinition" {
                    app.crd_changed(&new, false);
                }
                if service_spec {
                    let now_held = service_node_ports(&new);
                    let gone: Vec<u16> =
                        held.into_iter().filter(|p| !now_held.contains(p)).collect();
                    release_node_ports(app, &gone).await;
                }
                return Ok(Outcome::Written(stamp(&raw, slot, rev)));
            }
            Err(None) => return Err(not_found(t)),
            Err(Some(_)) => {
                if !rv.is_empty() {
                    return Err(ApiError::conflict_modified(
                        &def.group,
                        &def.plural,
                        t.name.as_deref().unwrap_or(""),
                    ));
                }
            }
        }
    }
    Err(ApiError::conflict(
        &def.group,
        &def.plural,
        t.name.as_deref().unwrap_or(""),
        "too many concurrent writes; please try again",
    ))
}

/// A pod marked for deletion with a grace period waits for its kubelet.
fn graceful_pending(def: &ResourceDef, obj: &Value) -> bool {
    def.group.is_empty()
        && def.kind == "Pod"
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

fn outcome_response(o: Outcome, warnings: &[String]) -> Result<Response<Body>, ApiError> {
    match o {
        Outcome::Written(raw) | Outcome::Unchanged(raw) => {
            Ok(object_response(StatusCode::OK, raw, warnings))
        }
        Outcome::Deleted(v) | Outcome::DryRun(v) => value_response(StatusCode::OK, &v, warnings),
    }
}

async fn update(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let mode = FieldValidation::parse(q.get("fieldValidation"))?;
    let (obj, warnings) = decode_object(app, &t.def, headers, body, mode)?;
    let manager = field_manager(q, headers);
    let sub = t.subresource.as_deref();
    let o = guaranteed_update(app, t, &manager, dry_run(q)?, sub, true, |_old| {
        Ok(obj.clone())
    })
    .await?;
    outcome_response(o, &warnings)
}

/// The version a client speaks when it is not the stored one (autoscaling/v1 HPAs over the
/// stored v2): server-side apply runs in that version, so the manager's `managedFields`
/// entry carries its `apiVersion` and its field paths, as upstream records them.
pub(super) struct ServedVersion<'a> {
    pub def: &'a ResourceDef,
    pub to_served: fn(&Value) -> Value,
    pub to_stored: fn(&Value) -> Result<Value, ApiError>,
}

/// PATCH with `application/apply-patch+yaml` on `t` (the stored version), the body in
/// `served`'s version when given.
pub(super) async fn server_side_apply(
    app: &App,
    t: &Target,
    q: &Query,
    body: &[u8],
    served: Option<&ServedVersion<'_>>,
) -> Result<Response<Body>, ApiError> {
    let mode = FieldValidation::parse(q.get("fieldValidation"))?;
    let dry = dry_run(q)?;
    let sub = t.subresource.as_deref();
    let schemas = app.openapi().schemas().clone();
    let manager = q
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requires fieldManager to be set",
            )
        })?
        .to_string();
    let force = q.flag("force");
    let view_def: &ResourceDef = served.map_or(&t.def, |s| s.def);
    let mut applied = crate::apply::parse_apply_body(body)?;
    check_type_meta(view_def, &mut applied)?;
    let warnings = validation::check_fields(&mut applied, view_def, &schemas, mode)?;
    let av = view_def.api_version();
    let schema = patch_schema(view_def);
    let to_stored = |v: Value| match served {
        Some(s) => (s.to_stored)(&v),
        None => Ok(v),
    };
    // Apply to a missing object creates it.
    let now = now_rfc3339();
    let opts = crate::apply::ApplyOptions {
        manager: &manager,
        force,
        api_version: &av,
        now: &now,
        schema,
        subresource: sub,
    };
    if app.backend.get(t.key()).await?.is_none() && sub.is_none() {
        let obj = crate::apply::apply(None, &applied, &opts)?;
        if meta_str(&obj, "name") != t.name.as_deref().unwrap_or("") {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let obj = to_stored(obj)?;
        let (raw, _) = create_tracked(app, &t.def, t.namespace.as_deref(), obj, None, dry).await?;
        return Ok(object_response(StatusCode::CREATED, raw, &warnings));
    }
    let o = guaranteed_update(app, t, &manager, dry, sub, false, |old| match served {
        Some(s) => {
            let view = (s.to_served)(old);
            to_stored(crate::apply::apply(Some(&view), &applied, &opts)?)
        }
        None => Ok(crate::apply::apply(Some(old), &applied, &opts)?),
    })
    .await?;
    outcome_response(o, &warnings)
}

async fn patch(
    app: &Arc<App>,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let ct = content_type(headers);
    let mode = FieldValidation::parse(q.get("fieldValidation"))?;
    let manager = field_manager(q, headers);
    let dry = dry_run(q)?;
    let def = t.def.clone();
    let sub = t.subresource.as_deref();
    let schemas = app.openapi().schemas().clone();
    let mut warnings: Vec<String> = Vec::new();
    if ct == "application/apply-patch+yaml" {
        return server_side_apply(app, t, q, body, None).await;
    }
    let kind = match ct.as_str() {
        "application/json-patch+json" => 0,
        "application/merge-patch+json" => 1,
        "application/strategic-merge-patch+json" => {
            if crate::patch::schema::builtin_schema(&def.api_version(), &def.kind).is_none() {
                return Err(ApiError::unsupported_media_type(&ct));
            }
            2
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let mut warn_once: Option<Vec<String>> = None;
    let o = guaranteed_update(app, t, &manager, dry, sub, true, |old| {
        let mut new = match kind {
            0 => crate::patch::json_patch::apply_bytes(old, body)?,
            1 => crate::patch::merge_patch::apply_bytes(old, body)?,
            _ => crate::patch::strategic::apply_bytes(old, body, patch_schema(&def))?,
        };
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the patched object must be a JSON object",
            ));
        }
        let w = validation::check_fields(&mut new, &def, &schemas, mode)?;
        warn_once.get_or_insert(w);
        // A patch does not carry a precondition unless it sets resourceVersion itself.
        let patched_rv = meta_str(&new, "resourceVersion").to_string();
        if patched_rv == meta_str(old, "resourceVersion") {
            metadata_mut(&mut new).remove("resourceVersion");
        }
        Ok(new)
    })
    .await?;
    warnings.extend(warn_once.unwrap_or_default());
    outcome_response(o, &warnings)
}

async fn scale_write(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let def = t.def.clone();
    let manager = field_manager(q, headers);
    let ct = content_type(headers);
    let put = ct.is_empty()
        || ct == "application/json"
        || ct == "application/yaml"
        || ct == "application/vnd.kubernetes.protobuf";
    let put_body: Option<Value> = if put {
        Some(match ct.as_str() {
            "application/yaml" => {
                serde_yaml::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?
            }
            "application/vnd.kubernetes.protobuf" => crate::protobuf::decode_body(body)?,
            _ => serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?,
        })
    } else {
        None
    };
    if !put
        && !matches!(
            ct.as_str(),
            "application/json-patch+json"
                | "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
        )
    {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    let o = guaranteed_update(app, t, &manager, dry_run(q)?, Some("scale"), true, |old| {
        let current = registry::scale_of(&def, old)?;
        let scale = match &put_body {
            Some(b) => {
                let rv = b
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !rv.is_empty() && rv != meta_str(old, "resourceVersion") {
                    return Err(ApiError::conflict_modified(
                        &def.group,
                        &def.plural,
                        meta_str(old, "name"),
                    ));
                }
                b.clone()
            }
            None if ct == "application/json-patch+json" => {
                crate::patch::json_patch::apply_bytes(&current, body)?
            }
            // A Scale has no lists: strategic merge is a merge patch here.
            None => crate::patch::merge_patch::apply_bytes(&current, body)?,
        };
        let mut new = old.clone();
        registry::apply_scale(&def, &mut new, &scale)?;
        metadata_mut(&mut new).remove("resourceVersion");
        Ok(new)
    })
    .await?;
    let obj = match o {
        Outcome::Written(raw) | Outcome::Unchanged(raw) => {
            serde_json::from_slice::<Value>(&raw).map_err(ApiError::internal)?
        }
        Outcome::Deleted(v) | Outcome::DryRun(v) => v,
    };
    value_response(StatusCode::OK, &registry::scale_of(&def, &obj)?, &[])
}

/// `DeleteOptions` fields the server honours.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteOptions {
    grace_period_seconds: Option<i64>,
    preconditions: Option<Preconditions>,
    #[serde(default)]
    dry_run: Vec<String>,
    propagation_policy: Option<String>,
    orphan_dependents: Option<bool>,
}

/// The garbage collector's finalizers (`metav1.FinalizerOrphanDependents`,
/// `metav1.FinalizerDeleteDependents`).
const ORPHAN_FINALIZER: &str = "orphan";
const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// Upstream's `deletionFinalizersForGarbageCollection`: the finalizers a delete with these
/// options leaves on the object (the GC's two replaced, others kept), or `None` when they
/// stay as they are. Foreground adds `foregroundDeletion`, Orphan adds `orphan`, Background
/// removes both; without a policy the object's own GC finalizers are kept and the
/// resource's default applies (Orphan for core/v1 ReplicationControllers, as upstream;
/// events take no GC finalizers).
fn gc_finalizers(def: &ResourceDef, old: &Value, opts: &DeleteOptions) -> Option<Vec<Value>> {
    let is_event = def.kind == "Event" && matches!(def.group.as_str(), "" | "events.k8s.io");
    if is_event {
        return None;
    }
    let current: Vec<&str> = old
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let has = |f: &str| current.contains(&f);
    let policy = opts.propagation_policy.as_deref();
    let orphan = match (policy, opts.orphan_dependents) {
        (Some(p), _) => p == "Orphan",
        (None, Some(o)) => o,
        (None, None) if has(ORPHAN_FINALIZER) => true,
        (None, None) => {
            def.group.is_empty() && def.version == "v1" && def.kind == "ReplicationController"
        }
    };
    let foreground = match (policy, opts.orphan_dependents) {
        (_, Some(true)) => false,
        (Some(p), _) => p == "Foreground",
        (None, _) => has(FOREGROUND_FINALIZER),
    };
    let mut new: Vec<&str> = current
        .iter()
        .copied()
        .filter(|f| *f != ORPHAN_FINALIZER && *f != FOREGROUND_FINALIZER)
        .collect();
    if orphan {
        new.push(ORPHAN_FINALIZER);
    }
    if foreground {
        new.push(FOREGROUND_FINALIZER);
    }
    let same = new.len() == current.len() && new.iter().all(|f| current.contains(f));
    (!same).then(|| {
        new.into_iter()
            .map(|f| Value::String(f.to_string()))
            .collect()
    })
}

/// Upstream's `ValidateDeleteOptions` (422 on the `DeleteOptions` kind).
fn validate_delete_options(opts: &DeleteOptions) -> Result<(), ApiError> {
    use crate::status::{FieldError, FieldErrorKind};
    let mut errs = Vec::new();
    let policy = opts.propagation_policy.as_deref();
    if opts.orphan_dependents.is_some() && policy.is_some() {
        errs.push(FieldError::invalid(
            "propagationPolicy",
            policy.unwrap_or(""),
            "orphanDependents and deletionPropagation cannot be both set",
        ));
    }
    if let Some(p) = policy
        && !matches!(p, "Orphan" | "Background" | "Foreground")
    {
        errs.push(FieldError {
            kind: FieldErrorKind::NotSupported,
            field: "propagationPolicy".into(),
            value: Some(Value::from(p).to_string()),
            detail: r#"supported values: "Foreground", "Background", "Orphan", "nil""#.into(),
        });
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("meta.k8s.io", "DeleteOptions", "", &errs))
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

/// The delete an allowed eviction makes, with the Eviction's `deleteOptions` as its body.
pub(crate) async fn delete_for_eviction(
    app: &App,
    t: &Target,
    q: &Query,
    delete_options: &[u8],
) -> Result<(), ApiError> {
    delete(app, t, q, delete_options).await.map(drop)
}

/// A `metav1.Status` Success answer with `code`.
pub(crate) fn status_response(code: StatusCode) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code.as_u16()});
    body::json(code, serde_json::to_vec(&body).unwrap_or_default())
}

async fn delete(app: &App, t: &Target, q: &Query, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let def = t.def.clone();
    let mut opts: DeleteOptions = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    if opts.propagation_policy.is_none()
        && let Some(p) = q.get("propagationPolicy")
    {
        opts.propagation_policy = Some(p.to_string());
    }
    if opts.orphan_dependents.is_none()
        && let Some(o) = q.get("orphanDependents")
    {
        opts.orphan_dependents = Some(matches!(o, "true" | "1"));
    }
    validate_delete_options(&opts)?;
    let dry = dry_run(q)? || opts.dry_run.iter().any(|d| d == "All");
    let grace_q = match q.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| ApiError::bad_request("invalid gracePeriodSeconds"))?,
        ),
        None => None,
    };
    let grace_opt = opts.grace_period_seconds.or(grace_q);
    let name = t.name.clone().unwrap_or_default();
    for _ in 0..MAX_UPDATE_ATTEMPTS {
        let (kv, old) = read_object(app, t).await?;
        if let Some(p) = &opts.preconditions {
            let uid = meta_str(&old, "uid");
            if let Some(want) = p.uid.as_deref().filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict(
                    &def.group,
                    &def.plural,
                    &name,
                    &format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                    ),
                ));
            }
            if let Some(want) = p.resource_version.as_deref().filter(|r| !r.is_empty())
                && want != kv.mod_revision.to_string()
            {
                return Err(ApiError::conflict(
                    &def.group,
                    &def.plural,
                    &name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                        kv.mod_revision
                    ),
                ));
            }
        }
        let gc = gc_finalizers(&def, &old, &opts);
        let finalizers = match &gc {
            Some(f) => !f.is_empty(),
            None => old
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty()),
        };
        let ns_finalizers = def.group.is_empty()
            && def.kind == "Namespace"
            && old
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        let is_pod = def.group.is_empty() && def.kind == "Pod";
        let grace = if is_pod {
            let phase = old
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            let bound = !old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty();
            let g = grace_opt
                .or_else(|| {
                    old.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30);
            if bound && !matches!(phase, "Succeeded" | "Failed") {
                g.max(0)
            } else {
                0
            }
        } else {
            0
        };
        if finalizers || ns_finalizers || grace > 0 {
            let already = old.pointer("/metadata/deletionTimestamp").is_some();
            let current_grace = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if already && gc.is_none() && current_grace.is_none_or(|c| c <= grace) {
                return value_response(StatusCode::OK, &old, &[]);
            }
            let mut new = old.clone();
            let when = Utc::now() + chrono::Duration::seconds(grace);
            {
                let meta = metadata_mut(&mut new);
                if !already || current_grace.is_some_and(|c| c > grace) {
                    meta.insert(
                        "deletionTimestamp".into(),
                        json!(when.to_rfc3339_opts(SecondsFormat::Secs, true)),
                    );
                    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                }
                match &gc {
                    Some(f) if f.is_empty() => {
                        meta.remove("finalizers");
                    }
                    Some(f) => {
                        meta.insert("finalizers".into(), Value::Array(f.clone()));
                    }
                    None => {}
                }
            }
            if ns_finalizers && let Some(o) = new.as_object_mut() {
                o.insert("status".into(), json!({"phase": "Terminating"}));
            }
            if !finalizers && !ns_finalizers && grace == 0 {
                // Grace shortened to zero with nothing else pending: delete now (below).
            } else {
                if dry {
                    return value_response(StatusCode::OK, &new, &[]);
                }
                let index = registry::extract_index(&def, &new);
                let (raw, slot) = encode_for_store(&mut new)?;
                let value =
                    index.into_object_value(raw.clone(), store::ContentType::Json, Some(slot));
                match app
                    .backend
                    .update(t.key(), kv.mod_revision, value, None)
                    .await?
                {
                    Ok(rev) => {
                        return Ok(object_response(StatusCode::OK, stamp(&raw, slot, rev), &[]));
                    }
                    Err(None) => return Err(not_found(t)),
                    Err(Some(_)) => continue,
                }
            }
        }
        if dry {
            return Ok(object_response(StatusCode::OK, kv.value.raw, &[]));
        }
        match app.backend.delete(t.key(), Some(kv.mod_revision)).await? {
            Some(_) => {
                if def.group == "apiextensions.k8s.io" && def.kind == "CustomResourceDefinition" {
                    app.crd_changed(&old, true);
                }
                if is_service(&def)
                    && let Some(ip) = old.pointer("/spec/clusterIP").and_then(Value::as_str)
                {
                    release_cluster_ip(app, ip).await;
                }
                if is_service(&def) {
                    release_node_ports(app, &service_node_ports(&old)).await;
                }
                return Ok(object_response(StatusCode::OK, kv.value.raw, &[]));
            }
            None => continue,
        }
    }
    Err(ApiError::conflict(
        &def.group,
        &def.plural,
        &name,
        "too many concurrent writes; please try again",
    ))
}

/// Create-only review kinds answered from the request, never stored.
fn is_review(def: &ResourceDef) -> bool {
    matches!(
        (def.group.as_str(), def.kind.as_str()),
        (
            "authorization.k8s.io",
            "SelfSubjectAccessReview"
                | "SelfSubjectRulesReview"
                | "SubjectAccessReview"
                | "LocalSubjectAccessReview"
        ) | ("authentication.k8s.io", "SelfSubjectReview" | "TokenReview")
    )
}

/// Answers a review: every authenticated user may do everything until RBAC lands.
fn review(
    app: &App,
    user: &UserInfo,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let mode = FieldValidation::parse(q.get("fieldValidation"))?;
    let (mut obj, warnings) = decode_object(app, &t.def, headers, body, mode)?;
    let status = match t.def.kind.as_str() {
        "SelfSubjectReview" => json!({"userInfo": {
            "username": user.name, "uid": user.uid, "groups": user.groups}}),
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false}),
        "TokenReview" => {
            let token = obj
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .unwrap_or("");
            let auth = format!("Bearer {token}");
            match app.auth.authenticate(None, Some(auth.as_bytes())) {
                Ok(u) => {
                    json!({"authenticated": true, "user": {"username": u.name, "uid": u.uid, "groups": u.groups}})
                }
                Err(_) => json!({"authenticated": false}),
            }
        }
        _ => json!({"allowed": true, "reason": "kubeshard: authorization is not enforced yet"}),
    };
    if let Some(o) = obj.as_object_mut() {
        o.insert("status".into(), status);
        o.entry("metadata").or_insert_with(|| json!({}));
    }
    value_response(StatusCode::CREATED, &obj, &warnings)
}

/// `POST pods/{name}/binding`: sets `spec.nodeName` once (409 if already bound).
async fn binding(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let binding: Value = match content_type(headers).as_str() {
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode_body(body)?,
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid Binding: {e}")))?,
    };
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = t.name.clone().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            &name,
            &[crate::status::FieldError::required("target.name", "")],
        ));
    }
    let manager = field_manager(q, headers);
    let mut t = t.clone();
    t.subresource = None;
    guaranteed_update(app, &t, &manager, dry_run(q)?, None, true, |old| {
        let current = old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !current.is_empty() {
            return Err(ApiError::conflict(
                "",
                "pods",
                &name,
                &format!("pod {name} is already assigned to node \"{current}\""),
            ));
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                "",
                "pods",
                &name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        let mut new = old.clone();
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("nodeName".into(), Value::String(node.clone()));
        }
        metadata_mut(&mut new).remove("resourceVersion");
        Ok(new)
    })
    .await?;
    value_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    )
}

/// The Service ClusterIP range (upstream's default `--service-cluster-ip-range`).
const SERVICE_CIDR_BASE: [u8; 4] = [10, 96, 0, 0];
/// Addresses in the range (a /12); `.0.1` is the `kubernetes` service's by convention.
const SERVICE_CIDR_SIZE: u32 = 1 << 20;
/// Random probes before the allocator reports the range as full.
const IP_ALLOCATION_ATTEMPTS: usize = 64;
/// The low band of the range is left to requested addresses (10.96.0.10 for cluster DNS and
/// the like), as upstream's allocator prefers the upper range for dynamic ones.
const SERVICE_CIDR_STATIC_BAND: u32 = 256;

fn is_pod(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.kind == "Pod"
}

fn is_priority_class(def: &ResourceDef) -> bool {
    def.group == "scheduling.k8s.io" && def.kind == "PriorityClass"
}

fn is_service(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.kind == "Service"
}

fn ip_key(ip: &str) -> Bytes {
    Bytes::from(format!("/registry/core/serviceips/{ip}"))
}

/// Allocates (or reserves the requested) ClusterIP of a new Service; each address is a
/// store key created with compare-and-swap, so two Services never share one.
async fn allocate_cluster_ip(app: &App, svc: &mut Value) -> Result<Option<String>, ApiError> {
    let ty = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return Ok(None);
    }
    let requested = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // Single-stack IPv4 cluster: every service with cluster IPs (or headless) is IPv4 only,
    // as upstream's allocator defaults them.
    if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        spec.entry("ipFamilyPolicy")
            .or_insert_with(|| json!("SingleStack"));
    }
    if requested == "None" {
        return Ok(None);
    }
    let owner = format!(
        "{}/{}",
        svc.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(""),
        svc.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    let ip = if requested.is_empty() {
        let base = u32::from_be_bytes(SERVICE_CIDR_BASE);
        let mut found = None;
        for _ in 0..IP_ALLOCATION_ATTEMPTS {
            let r = u32::from_be_bytes(
                uuid::Uuid::new_v4().as_bytes()[..4]
                    .try_into()
                    .unwrap_or([0; 4]),
            );
            // Skip the static band (requested addresses) and the broadcast address.
            let offset =
                SERVICE_CIDR_STATIC_BAND + r % (SERVICE_CIDR_SIZE - SERVICE_CIDR_STATIC_BAND - 1);
            let ip = std::net::Ipv4Addr::from(base + offset).to_string();
            if app
                .backend
                .create(ip_key(&ip), store::ObjectValue::opaque(owner.clone()), None)
                .await?
                .is_some()
            {
                found = Some(ip);
                break;
            }
        }
        found.ok_or_else(|| {
            ApiError::internal("failed to allocate a ClusterIP: the range is full")
        })?
    } else {
        if app
            .backend
            .create(ip_key(&requested), store::ObjectValue::opaque(owner), None)
            .await?
            .is_none()
        {
            return Err(ApiError::invalid(
                "",
                "Service",
                svc.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                &[crate::status::FieldError::invalid(
                    "spec.clusterIPs",
                    &requested,
                    "failed to allocate IP: provided IP is already allocated",
                )],
            ));
        }
        requested
    };
    if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("clusterIP".into(), Value::String(ip.clone()));
        spec.insert("clusterIPs".into(), json!([ip.clone()]));
    }
    Ok(Some(ip))
}

/// The NodePort range (upstream's default `--service-node-port-range`).
const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

fn node_port_key(port: u16) -> Bytes {
    Bytes::from(format!("/registry/core/servicenodeports/{port}"))
}

/// The distinct nodePorts a stored Service holds.
fn service_node_ports(svc: &Value) -> Vec<u16> {
    let mut v: Vec<u16> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter_map(|n| u16::try_from(n).ok())
        .filter(|n| NODE_PORT_RANGE.contains(n))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Whether a Service of this spec holds nodePorts.
fn wants_node_ports(svc: &Value) -> bool {
    match svc.pointer("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => true,
        Some("LoadBalancer") => svc
            .pointer("/spec/allocateLoadBalancerNodePorts")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        _ => false,
    }
}

/// Upstream's update rules for nodePorts (`patchAllocatedValues`, `dropTypeDependentFields`):
/// a Service that keeps nodePorts keeps the ones it was given when the new spec omits them
/// (matched by port and protocol); a Service whose new type holds none (ClusterIP,
/// ExternalName) drops the nodePorts it had, so they are released.
fn carry_node_ports(old: &Value, new: &mut Value) {
    let key = |p: &Value| {
        (
            p.get("port").and_then(Value::as_i64),
            p.get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string(),
        )
    };
    let old_ports: Vec<((Option<i64>, String), u64)> = old
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| Some((key(p), p.get("nodePort").and_then(Value::as_u64)?)))
        .collect();
    let held = service_node_ports(old);
    let wants = wants_node_ports(new);
    let keeps_any = matches!(
        new.pointer("/spec/type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    );
    let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else {
        return;
    };
    for p in ports {
        let k = key(p);
        let Some(o) = p.as_object_mut() else { continue };
        let given = o
            .get("nodePort")
            .and_then(Value::as_u64)
            .filter(|n| *n != 0);
        if wants {
            if given.is_none()
                && let Some((_, n)) = old_ports.iter().find(|(ok, _)| *ok == k)
            {
                o.insert("nodePort".into(), json!(n));
            }
        } else if !keeps_any
            && given.is_some_and(|n| u16::try_from(n).is_ok_and(|n| held.contains(&n)))
        {
            o.remove("nodePort");
        }
    }
}

/// Reserves the nodePorts of a new NodePort or LoadBalancer Service: requested ones as
/// given (one already taken by another Service fails with 422 "provided port is already
/// allocated", as upstream), missing ones picked at random from 30000-32767 (LoadBalancer
/// Services too, unless `allocateLoadBalancerNodePorts: false`). Each port is a store key
/// created with compare-and-swap, so two Services never share one. Ports of one Service
/// may share a number across protocols (upstream allows TCP and UDP on one nodePort).
/// `held` are the ports the Service already holds (on update): requested again, they are
/// kept without a new reservation. Returns the ports newly reserved, for release if the
/// write fails.
async fn allocate_node_ports(
    app: &App,
    svc: &mut Value,
    held: &[u16],
) -> Result<Vec<u16>, ApiError> {
    let ty = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if !matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        return Ok(Vec::new());
    }
    let auto = wants_node_ports(svc);
    let name = svc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let owner = format!(
        "{}/{name}",
        svc.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    let mut taken: Vec<u16> = Vec::new();
    let count = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut failure = None;
    for i in 0..count {
        let requested = svc
            .pointer(&format!("/spec/ports/{i}/nodePort"))
            .and_then(Value::as_u64)
            .filter(|n| *n != 0);
        let port = match requested {
            // Validation has checked the range already.
            Some(n) => {
                let Ok(n) = u16::try_from(n) else { continue };
                if !taken.contains(&n) && !held.contains(&n) {
                    let ok = app
                        .backend
                        .create(
                            node_port_key(n),
                            store::ObjectValue::opaque(owner.clone()),
                            None,
                        )
                        .await;
                    match ok {
                        Ok(Some(_)) => taken.push(n),
                        Ok(None) => {
                            failure = Some(ApiError::invalid(
                                "",
                                "Service",
                                &name,
                                &[crate::status::FieldError::invalid(
                                    format!("spec.ports[{i}].nodePort"),
                                    &n.to_string(),
                                    "provided port is already allocated",
                                )],
                            ));
                            break;
                        }
                        Err(e) => {
                            failure = Some(e.into());
                            break;
                        }
                    }
                }
                n
            }
            None if auto => {
                let span = u32::from(NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start()) + 1;
                let mut found = None;
                for _ in 0..IP_ALLOCATION_ATTEMPTS {
                    let r = u32::from_be_bytes(
                        uuid::Uuid::new_v4().as_bytes()[..4]
                            .try_into()
                            .unwrap_or([0; 4]),
                    );
                    let Ok(n) = u16::try_from(u32::from(*NODE_PORT_RANGE.start()) + r % span)
                    else {
                        continue;
                    };
                    if taken.contains(&n) || held.contains(&n) {
                        continue;
                    }
                    match app
                        .backend
                        .create(
                            node_port_key(n),
                            store::ObjectValue::opaque(owner.clone()),
                            None,
                        )
                        .await
                    {
                        Ok(Some(_)) => {
                            found = Some(n);
                            break;
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            failure = Some(e.into());
                            break;
                        }
                    }
                }
                if failure.is_some() {
                    break;
                }
                let Some(n) = found else {
                    failure = Some(ApiError::internal(
                        "failed to allocate a nodePort: the range is full",
                    ));
                    break;
                };
                taken.push(n);
                n
            }
            None => continue,
        };
        if let Some(p) = svc
            .pointer_mut(&format!("/spec/ports/{i}"))
            .and_then(Value::as_object_mut)
        {
            p.insert("nodePort".into(), json!(port));
        }
    }
    if let Some(e) = failure {
        release_node_ports(app, &taken).await;
        return Err(e);
    }
    Ok(taken)
}

async fn release_node_ports(app: &App, ports: &[u16]) {
    for p in ports {
        if let Err(e) = app.backend.delete(node_port_key(*p), None).await {
            tracing::warn!("releasing nodePort {p}: {e}");
        }
    }
}

async fn release_cluster_ip(app: &App, ip: &str) {
    if let Err(e) = app.backend.delete(ip_key(ip), None).await {
        tracing::warn!("releasing ClusterIP {ip}: {e}");
    }
}

/// `DELETE` on a collection: deletes every object that matches the selectors, one by one
/// with the same options (finalizers and graceful deletion apply to each).
async fn delete_collection(
    app: &App,
    t: &Target,
    q: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let sel = Selectors::parse(&t.def, q)?;
    let prefix = t.prefix();
    let end = prefix_end(&prefix);
    let mut start = prefix.clone();
    let mut names: Vec<(String, String)> = Vec::new();
    for _ in 0..MAX_LIST_PAGES {
        let resp = app
            .backend
            .range(RangeRequest {
                key: start.clone(),
                range_end: RangeEnd::Until(end.clone()),
                revision: None,
                limit: Some(500),
                keys_only: false,
                count_only: false,
                skip_count: true,
            })
            .await?;
        for kv in &resp.kvs {
            if sel.matches(&kv.value) {
                names.push((kv.value.namespace.clone(), kv.value.name.clone()));
            }
        }
        match resp.kvs.last() {
            Some(kv) if resp.more => {
                let mut k = kv.key.to_vec();
                k.push(0);
                start = Bytes::from(k);
            }
            _ => break,
        }
    }
    for (ns, name) in names {
        let one = Target {
            def: t.def.clone(),
            namespace: t.def.namespaced.then_some(ns),
            name: Some(name),
            subresource: None,
        };
        match delete(app, &one, q, body).await {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    value_response(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
        &[],
    )
}
