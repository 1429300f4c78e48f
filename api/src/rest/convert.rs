//! Serving a resource version by converting another version's storage
//! (`autoscaling/v1` HorizontalPodAutoscaler over the stored `autoscaling/v2`).
//!
//! The request is answered by the stored version's handlers ([`super::objects::dispatch`])
//! with the conversions of [`crate::conversion`] around them:
//! - create and update bodies are decoded and field-checked as the served version, then
//!   converted to the stored one;
//! - JSON, merge and strategic merge patches are applied to the served version's view of
//!   the stored object (as upstream applies patches in the request's version), converted
//!   back and written as an update guarded by the resourceVersion read (retried a bounded
//!   number of times when someone else wrote in between, unless the patch named its own
//!   resourceVersion);
//! - server-side apply runs in the served version (its managedFields entry names that
//!   version and its field paths) on the served view of the stored object, and the result
//!   is stored converted;
//! - every response (object, list, Table, watch event) is converted back. Responses are
//!   JSON: a protobuf Accept is answered with JSON, which clients accept as a fallback.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

use super::objects::{
    ServedVersion, content_type, decode_object, dispatch, metadata_mut, read_object,
    server_side_apply,
};
use super::{Query, Target};
use crate::auth::UserInfo;
use crate::conversion::{self, ConversionError};
use crate::server::App;
use crate::server::body::Body;
use crate::status::ApiError;
use crate::validation::{self, FieldValidation};

/// Read-convert-patch-write attempts before a patch gives up with 409.
const MAX_PATCH_ATTEMPTS: usize = 8;
/// Longest watch line buffered while converting (larger lines pass unconverted).
const MAX_WATCH_LINE: usize = 8 * 1024 * 1024;

fn bad(e: ConversionError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

fn to_stored(v: &Value) -> Result<Value, ApiError> {
    conversion::hpa_v1_to_v2(v).map_err(bad)
}

fn json_headers(mut headers: HeaderMap) -> HeaderMap {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

/// Serves `t` (a converted version) through the handlers of its `stored` version.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    app: &Arc<App>,
    user: &UserInfo,
    t: Target,
    q: Query,
    method: Method,
    mut headers: HeaderMap,
    body: Bytes,
    stored: &str,
) -> Result<Response<Body>, ApiError> {
    let stored_def = app
        .registry()
        .lookup(&t.def.group, stored, &t.def.plural)
        .cloned()
        .ok_or_else(|| ApiError::internal("stored version not served"))?;
    let mut t2 = t.clone();
    t2.def = stored_def;
    if headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("protobuf"))
    {
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    }
    let watch = matches!(method, Method::GET) && t.name.is_none() && q.flag("watch");
    let mut warnings = Vec::new();
    let resp = match method {
        Method::POST | Method::PUT => {
            let mode = FieldValidation::parse(q.get("fieldValidation"))?;
            let (obj, w) = decode_object(app, &t.def, &headers, &body, mode)?;
            warnings = w;
            let v2 = to_stored(&obj)?;
            let b = serde_json::to_vec(&v2).map_err(ApiError::internal)?;
            dispatch(app, user, t2, q, method, json_headers(headers), b.into()).await?
        }
        Method::PATCH => patch(app, user, &t, t2, q, headers, &body).await?,
        _ => dispatch(app, user, t2, q, method, headers, body).await?,
    };
    let mut resp = if watch {
        convert_stream(resp)
    } else {
        convert_full(resp).await
    };
    for w in warnings.iter().take(32) {
        let text = w.replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(resp)
}

async fn patch(
    app: &Arc<App>,
    user: &UserInfo,
    t: &Target,
    t2: Target,
    q: Query,
    headers: HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let ct = content_type(&headers);
    if ct == "application/apply-patch+yaml" {
        // Applied in the served version, so the managedFields entry is the served
        // version's (apiVersion and field paths), then stored converted.
        let served = ServedVersion {
            def: &t.def,
            to_served: conversion::hpa_v2_to_v1,
            to_stored,
        };
        return server_side_apply(app, &t2, &q, body, Some(&served)).await;
    }
    let av = t.def.api_version();
    let schema = crate::patch::schema::builtin_schema(&av, &t.def.kind);
    let supported = match ct.as_str() {
        "application/json-patch+json" | "application/merge-patch+json" => true,
        "application/strategic-merge-patch+json" => schema.is_some(),
        _ => false,
    };
    if !supported {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    let mode = FieldValidation::parse(q.get("fieldValidation"))?;
    let schemas = app.openapi().schemas().clone();
    let headers = json_headers(headers);
    for _ in 0..MAX_PATCH_ATTEMPTS {
        let (_, stored) = read_object(app, &t2).await?;
        let old = conversion::hpa_v2_to_v1(&stored);
        let mut new = match (ct.as_str(), schema) {
            ("application/json-patch+json", _) => {
                crate::patch::json_patch::apply_bytes(&old, body)?
            }
            ("application/merge-patch+json", _) => {
                crate::patch::merge_patch::apply_bytes(&old, body)?
            }
            (_, Some(s)) => crate::patch::strategic::apply_bytes(&old, body, s)?,
            (_, None) => return Err(ApiError::unsupported_media_type(&ct)),
        };
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the patched object must be a JSON object",
            ));
        }
        validation::check_fields(&mut new, &t.def, &schemas, mode)?;
        let old_rv = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let new_rv = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        // A patch naming its own resourceVersion is a precondition; otherwise the write
        // is guarded by the version this patch was applied to.
        let own_precondition = !new_rv.is_empty() && new_rv != old_rv;
        if new_rv.is_empty() {
            metadata_mut(&mut new).insert("resourceVersion".into(), Value::String(old_rv));
        }
        let v2 = to_stored(&new)?;
        let b = serde_json::to_vec(&v2).map_err(ApiError::internal)?;
        match dispatch(
            app,
            user,
            t2.clone(),
            q.clone(),
            Method::PUT,
            headers.clone(),
            b.into(),
        )
        .await
        {
            Err(e) if e.code == 409 && !own_precondition => continue,
            other => return other,
        }
    }
    Err(ApiError::conflict(
        &t.def.group,
        &t.def.plural,
        t.name.as_deref().unwrap_or(""),
        "the object kept changing; please try again",
    ))
}

fn convert_bytes(raw: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(raw).ok()?;
    conversion::response_to_v1(&mut v);
    serde_json::to_vec(&v).ok()
}

/// A whole response converted (non-JSON bodies pass unchanged).
async fn convert_full(resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let raw = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    let out = convert_bytes(&raw).map_or(raw, Bytes::from);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, crate::server::body::full(out))
}

/// A watch stream converted event by event (one JSON object per line).
fn convert_stream(resp: Response<Body>) -> Response<Body> {
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let mut pending = BytesMut::new();
    let frames = BodyStream::new(body).map(move |f| {
        let f = match f {
            Ok(f) => f,
            Err(never) => match never {},
        };
        let Ok(data) = f.into_data() else {
            return Ok::<_, std::convert::Infallible>(Frame::data(Bytes::new()));
        };
        pending.extend_from_slice(&data);
        let mut out = BytesMut::new();
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line = pending.split_to(i + 1);
            match convert_bytes(&line[..i]) {
                Some(c) => {
                    out.extend_from_slice(&c);
                    out.extend_from_slice(b"\n");
                }
                None => out.extend_from_slice(&line),
            }
        }
        if pending.len() > MAX_WATCH_LINE {
            out.extend_from_slice(&pending.split());
        }
        Ok(Frame::data(out.freeze()))
    });
    Response::from_parts(parts, BodyExt::boxed(StreamBody::new(frames)))
}
