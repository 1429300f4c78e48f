//! [`Api`]: typed (and, with [`DynamicObject`], untyped) requests on one resource.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{ClientError, Result};
use super::params::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use super::watch::WatchStream;
use super::{Client, decode};
use crate::status::Status;

/// What a client can store and watch: a serializable object with `ObjectMeta`. Every
/// k8s-openapi resource is one (blanket impl), and so is [`DynamicObject`].
pub trait ApiObject: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;
    /// The object's metadata, mutably.
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

impl<K> ApiObject for K
where
    K: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Clone
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    fn meta(&self) -> &ObjectMeta {
        self.metadata()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.metadata_mut()
    }
}

/// Where a resource lives in the API: what a typed resource knows from its type, given at
/// run time for custom resources and generic controllers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiResource {
    /// API group (`""` for core).
    pub group: String,
    /// Version (`v1`).
    pub version: String,
    /// `group/version`, or `version` for core.
    pub api_version: String,
    /// Kind (`Pod`).
    pub kind: String,
    /// Plural resource name in URLs (`pods`).
    pub plural: String,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
}

impl ApiResource {
    /// The resource of a k8s-openapi type.
    pub fn of<K: k8s_openapi::Resource>() -> Self {
        Self {
            group: K::GROUP.to_string(),
            version: K::VERSION.to_string(),
            api_version: K::API_VERSION.to_string(),
            kind: K::KIND.to_string(),
            plural: K::URL_PATH_SEGMENT.to_string(),
            namespaced: std::any::type_name::<K::Scope>().ends_with("NamespaceResourceScope"),
        }
    }

    /// A resource given by its parts (custom resources).
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            api_version: if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.to_string(),
            plural: plural.to_string(),
            namespaced,
        }
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    pub fn group_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

/// `apiVersion` and `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TypeMeta {
    /// `apiVersion`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`.
    pub kind: String,
}

/// An object of any kind: typed metadata plus the rest as JSON (`spec`, `status`, `data`...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicObject {
    /// `apiVersion` and `kind`, when present.
    #[serde(flatten, default)]
    pub types: Option<TypeMeta>,
    /// `metadata`.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Every other top-level field (a JSON object).
    #[serde(flatten)]
    pub data: serde_json::Value,
}

impl DynamicObject {
    /// A new object named `name` of resource `ar`, with no other fields.
    pub fn new(name: &str, ar: &ApiResource) -> Self {
        Self {
            types: Some(TypeMeta {
                api_version: ar.api_version.clone(),
                kind: ar.kind.clone(),
            }),
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            data: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Sets the namespace.
    #[must_use]
    pub fn within(mut self, namespace: &str) -> Self {
        self.metadata.namespace = Some(namespace.to_string());
        self
    }

    /// Sets the non-metadata fields (must be a JSON object).
    #[must_use]
    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

impl ApiObject for DynamicObject {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectList<K> {
    /// The objects.
    pub items: Vec<K>,
    /// The list's `resourceVersion` (watch from here).
    pub resource_version: String,
    /// The `continue` token for the next page, if there is one.
    pub continue_token: Option<String>,
    /// `remainingItemCount`, when the server knows it.
    pub remaining_item_count: Option<i64>,
}

#[derive(Deserialize)]
#[serde(bound = "K: DeserializeOwned")]
struct WireList<K> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Option<Vec<K>>,
}

/// What a delete answers: the object while it is still terminating (graceful deletion,
/// finalizers) or as it was deleted, or a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteResponse<K> {
    /// The object.
    Object(K),
    /// A success Status.
    Status(Box<Status>),
}

#[derive(Deserialize)]
struct KindOnly {
    #[serde(default)]
    kind: Option<String>,
}

/// Requests on one resource type, in one namespace or across all of them. Cheap to clone.
pub struct Api<K> {
    client: Client,
    resource: Arc<ApiResource>,
    namespace: Option<String>,
    /// `/api/v1[/namespaces/ns]/plural`.
    base: String,
    _k: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            base: self.base.clone(),
            _k: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for Api<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("path", &self.base).finish()
    }
}

/// Checks one path segment (a name or namespace) and percent-encodes it.
fn segment(s: &str) -> Result<String> {
    if s.is_empty() || s == "." || s == ".." || s.len() > 253 {
        return Err(ClientError::InvalidRequest(format!(
            "invalid name {s:?} in a request path"
        )));
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

fn base_path(ar: &ApiResource, namespace: Option<&str>) -> Result<String> {
    let mut p = ar.group_path();
    if ar.namespaced
        && let Some(ns) = namespace
    {
        p.push_str("/namespaces/");
        p.push_str(&segment(ns)?);
    }
    p.push('/');
    p.push_str(&ar.plural);
    Ok(p)
}

fn json_body<T: Serialize>(v: &T) -> Result<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ClientError::InvalidRequest(format!("encoding the body: {e}")))
}

impl<K: k8s_openapi::Resource + ApiObject> Api<K> {
    /// Requests on `K` in `namespace` (for a cluster-scoped `K` the namespace is ignored).
    ///
    /// # Panics
    /// Never: an invalid namespace makes every request fail with `InvalidRequest` instead.
    pub fn namespaced(client: Client, namespace: &str) -> Self {
        Self::with_resource(client, Some(namespace), ApiResource::of::<K>())
    }

    /// Requests on `K` across all namespaces (lists and watches), or on a cluster-scoped `K`.
    pub fn all(client: Client) -> Self {
        Self::with_resource(client, None, ApiResource::of::<K>())
    }
}

impl Api<DynamicObject> {
    /// Untyped requests on resource `ar` in `namespace`.
    pub fn namespaced_with(client: Client, namespace: &str, ar: &ApiResource) -> Self {
        Self::with_resource(client, Some(namespace), ar.clone())
    }

    /// Untyped requests on resource `ar` across all namespaces (or cluster-scoped).
    pub fn all_with(client: Client, ar: &ApiResource) -> Self {
        Self::with_resource(client, None, ar.clone())
    }
}

impl<K: ApiObject> Api<K> {
    fn with_resource(client: Client, namespace: Option<&str>, ar: ApiResource) -> Self {
        let namespace = namespace.filter(|_| ar.namespaced).map(str::to_string);
        // A bad namespace is reported by every request (see `path`).
        let base = base_path(&ar, namespace.as_deref()).unwrap_or_default();
        Self {
            client,
            resource: Arc::new(ar),
            namespace,
            base,
            _k: PhantomData,
        }
    }

    /// The resource these requests address.
    pub fn resource(&self) -> &ApiResource {
        &self.resource
    }

    /// The namespace, if namespaced requests.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn collection(&self) -> Result<&str> {
        if self.base.is_empty() {
            return Err(ClientError::InvalidRequest(format!(
                "invalid namespace {:?}",
                self.namespace
            )));
        }
        Ok(&self.base)
    }

    fn path(&self, name: &str, sub: Option<&str>) -> Result<String> {
        let mut p = format!("{}/{}", self.collection()?, segment(name)?);
        if let Some(s) = sub {
            p.push('/');
            p.push_str(&segment(s)?);
        }
        Ok(p)
    }

    /// Reads `name`.
    pub async fn get(&self, name: &str) -> Result<K> {
        let b = self
            .client
            .request_bytes(Method::GET, &self.path(name, None)?, None)
            .await?;
        decode(&b)
    }

    /// Reads `name`; `None` if it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists one page (or everything if `lp.limit` is unset).
    pub async fn list(&self, lp: &ListParams) -> Result<ObjectList<K>> {
        let path = format!("{}{}", self.collection()?, lp.query());
        let b = self.client.request_bytes(Method::GET, &path, None).await?;
        let w: WireList<K> = decode(&b)?;
        Ok(ObjectList {
            items: w.items.unwrap_or_default(),
            resource_version: w.metadata.resource_version.unwrap_or_default(),
            continue_token: w.metadata.continue_.filter(|c| !c.is_empty()),
            remaining_item_count: w.metadata.remaining_item_count,
        })
    }

    /// Lists every page of `lp.limit` objects (following `continue`), at most
    /// `max_pages` pages; the resourceVersion is the first page's (the list's snapshot).
    pub async fn list_all(&self, lp: &ListParams, max_pages: usize) -> Result<ObjectList<K>> {
        let mut lp = lp.clone();
        lp.continue_token = None;
        let mut first = self.list(&lp).await?;
        for _ in 1..max_pages.max(1) {
            let Some(token) = first.continue_token.take() else {
                return Ok(first);
            };
            lp.continue_token = Some(token);
            let page = self.list(&lp).await?;
            first.items.extend(page.items);
            first.continue_token = page.continue_token;
            first.remaining_item_count = page.remaining_item_count;
        }
        if first.continue_token.is_some() {
            return Err(ClientError::TooLarge {
                limit: max_pages.saturating_mul(lp.limit.unwrap_or(0) as usize),
            });
        }
        Ok(first)
    }

    /// Creates `obj`.
    pub async fn create(&self, pp: &PostParams, obj: &K) -> Result<K> {
        let path = format!("{}{}", self.collection()?, pp.query());
        let b = self
            .client
            .request_bytes(
                Method::POST,
                &path,
                Some((json_body(obj)?, "application/json")),
            )
            .await?;
        decode(&b)
    }

    /// Replaces `name` with `obj` (409 Conflict if `obj`'s resourceVersion is stale).
    pub async fn replace(&self, name: &str, pp: &PostParams, obj: &K) -> Result<K> {
        self.replace_subresource_inner(name, None, pp, obj).await
    }

    /// Replaces the `status` subresource of `name`.
    pub async fn replace_status(&self, name: &str, pp: &PostParams, obj: &K) -> Result<K> {
        self.replace_subresource_inner(name, Some("status"), pp, obj)
            .await
    }

    async fn replace_subresource_inner<B: Serialize, R: DeserializeOwned>(
        &self,
        name: &str,
        sub: Option<&str>,
        pp: &PostParams,
        body: &B,
    ) -> Result<R> {
        let path = format!("{}{}", self.path(name, sub)?, pp.query());
        let b = self
            .client
            .request_bytes(
                Method::PUT,
                &path,
                Some((json_body(body)?, "application/json")),
            )
            .await?;
        decode(&b)
    }

    /// Patches `name`.
    pub async fn patch<P: Serialize>(
        &self,
        name: &str,
        pp: &PatchParams,
        patch: &Patch<P>,
    ) -> Result<K> {
        self.patch_inner(name, None, pp, patch).await
    }

    /// Patches the `status` subresource of `name`.
    pub async fn patch_status<P: Serialize>(
        &self,
        name: &str,
        pp: &PatchParams,
        patch: &Patch<P>,
    ) -> Result<K> {
        self.patch_inner(name, Some("status"), pp, patch).await
    }

    async fn patch_inner<P: Serialize, R: DeserializeOwned>(
        &self,
        name: &str,
        sub: Option<&str>,
        pp: &PatchParams,
        patch: &Patch<P>,
    ) -> Result<R> {
        let path = format!("{}{}", self.path(name, sub)?, pp.query(patch.is_apply()));
        let body = patch
            .body()
            .map_err(|e| ClientError::InvalidRequest(format!("encoding the patch: {e}")))?;
        let b = self
            .client
            .request_bytes(
                Method::PATCH,
                &path,
                Some((Bytes::from(body), patch.content_type())),
            )
            .await?;
        decode(&b)
    }

    /// Deletes `name`.
    pub async fn delete(&self, name: &str, dp: &DeleteParams) -> Result<DeleteResponse<K>> {
        let b = self
            .client
            .request_bytes(
                Method::DELETE,
                &self.path(name, None)?,
                Some((Bytes::from(dp.body()), "application/json")),
            )
            .await?;
        let k: KindOnly = decode(&b)?;
        if k.kind.as_deref() == Some("Status") && self.resource.kind != "Status" {
            let v: serde_json::Value = decode(&b)?;
            let st = super::error::status_from_value(&v)
                .ok_or_else(|| ClientError::Decode("malformed Status".into()))?;
            return Ok(DeleteResponse::Status(Box::new(st)));
        }
        Ok(DeleteResponse::Object(decode(&b)?))
    }

    /// Deletes every object `lp` selects (its label and field selectors); the answer is the
    /// list of deleted objects or, as this server answers, a success Status.
    pub async fn delete_collection(
        &self,
        dp: &DeleteParams,
        lp: &ListParams,
    ) -> Result<DeleteResponse<ObjectList<K>>> {
        let sel = ListParams {
            label_selector: lp.label_selector.clone(),
            field_selector: lp.field_selector.clone(),
            ..ListParams::default()
        };
        let path = format!("{}{}", self.collection()?, sel.query());
        let b = self
            .client
            .request_bytes(
                Method::DELETE,
                &path,
                Some((Bytes::from(dp.body()), "application/json")),
            )
            .await?;
        let k: KindOnly = decode(&b)?;
        if k.kind.as_deref() == Some("Status") {
            let v: serde_json::Value = decode(&b)?;
            let st = super::error::status_from_value(&v)
                .ok_or_else(|| ClientError::Decode("malformed Status".into()))?;
            return Ok(DeleteResponse::Status(Box::new(st)));
        }
        let w: WireList<K> = decode(&b)?;
        Ok(DeleteResponse::Object(ObjectList {
            items: w.items.unwrap_or_default(),
            resource_version: w.metadata.resource_version.unwrap_or_default(),
            continue_token: None,
            remaining_item_count: None,
        }))
    }

    /// POSTs `body` to subresource `sub` of `name` (`binding`, `eviction`) and decodes
    /// the answer as `R` (often a `Status`).
    pub async fn create_subresource<B: Serialize, R: DeserializeOwned>(
        &self,
        name: &str,
        sub: &str,
        body: &B,
    ) -> Result<R> {
        let b = self
            .client
            .request_bytes(
                Method::POST,
                &self.path(name, Some(sub))?,
                Some((json_body(body)?, "application/json")),
            )
            .await?;
        decode(&b)
    }

    /// GETs subresource `sub` of `name` (`scale`, `status`).
    pub async fn get_subresource<R: DeserializeOwned>(&self, name: &str, sub: &str) -> Result<R> {
        let b = self
            .client
            .request_bytes(Method::GET, &self.path(name, Some(sub))?, None)
            .await?;
        decode(&b)
    }

    /// PUTs `body` to subresource `sub` of `name` (`scale`).
    pub async fn replace_subresource<B: Serialize, R: DeserializeOwned>(
        &self,
        name: &str,
        sub: &str,
        pp: &PostParams,
        body: &B,
    ) -> Result<R> {
        self.replace_subresource_inner(name, Some(sub), pp, body)
            .await
    }

    /// PATCHes subresource `sub` of `name`.
    pub async fn patch_subresource<P: Serialize, R: DeserializeOwned>(
        &self,
        name: &str,
        sub: &str,
        pp: &PatchParams,
        patch: &Patch<P>,
    ) -> Result<R> {
        self.patch_inner(name, Some(sub), pp, patch).await
    }

    /// Watches changes after `resource_version` (`""`/`"0"`: the current objects first as
    /// ADDED). The stream ends when the server ends the watch (`timeoutSeconds`); a 410 is
    /// an `Err` with `is_gone()` (from the request) or a `WatchEvent::Error` (mid-stream).
    pub async fn watch(&self, wp: &WatchParams, resource_version: &str) -> Result<WatchStream<K>> {
        let path = format!("{}{}", self.collection()?, wp.query(resource_version));
        let body = self.client.watch_body(&path).await?;
        Ok(super::watch::decode_stream(body))
    }
}
