//! Discovery bodies built from the [`Registry`]: aggregated (`apidiscovery.k8s.io` v2 and
//! v2beta1) and legacy (`APIVersions`, `APIGroupList`, `APIGroup`, `APIResourceList`).
//!
//! Entry points (all pure; the server serializes the returned values, ideally once per
//! [`Registry::generation`]):
//! - [`negotiate`]`(accept_header) -> Option<DiscoveryFormat>`: which form to answer `/api`
//!   and `/apis` with; [`DiscoveryFormat::content_type`] is the exact Content-Type to send.
//!   `None` means nothing acceptable (406).
//! - [`aggregated`]`(&registry, Scope::Core|Apis, AggregatedVersion)` -> `APIGroupDiscoveryList`.
//! - [`api_versions`]`(server_address)` -> `/api` legacy body.
//! - [`api_group_list`]`(&registry)` -> `/apis` legacy body.
//! - [`api_group`]`(&registry, group)` -> `/apis/{group}` (`None`: 404).
//! - [`api_resource_list`]`(&registry, group, version)` -> `/api/v1`, `/apis/{g}/{v}` (`None`: 404).
//! - [`DiscoveryCache::build`]`(&registry, server_address)`: every body above serialized once
//!   (rebuild when [`Registry::generation`] changes); [`DiscoveryCache::root`],
//!   [`DiscoveryCache::group`], [`DiscoveryCache::resource_list`] hand out shared [`Bytes`].

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::registry::{Registry, ResourceDef, api_version};

/// The aggregated discovery Content-Type for `apidiscovery.k8s.io/v2`.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
/// The aggregated discovery Content-Type for `apidiscovery.k8s.io/v2beta1`.
pub const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Which aggregated discovery version to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregatedVersion {
    V2,
    V2beta1,
}

/// How to answer a discovery request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryFormat {
    /// An `APIGroupDiscoveryList` with the given version.
    Aggregated(AggregatedVersion),
    /// The legacy `APIVersions` / `APIGroupList` body, `application/json`.
    Legacy,
}

impl DiscoveryFormat {
    /// The exact Content-Type header value for the answer.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Aggregated(AggregatedVersion::V2) => AGGREGATED_V2,
            Self::Aggregated(AggregatedVersion::V2beta1) => AGGREGATED_V2BETA1,
            Self::Legacy => "application/json",
        }
    }
}

/// Picks the answer form from an `Accept` header, honouring the client's order (client-go
/// lists its preference first) and `q=0` exclusions. A missing or empty header means legacy
/// JSON. Protobuf aggregated discovery is not offered, so such entries are skipped.
pub fn negotiate(accept: Option<&str>) -> Option<DiscoveryFormat> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Some(DiscoveryFormat::Legacy);
    };
    let mut candidates: Vec<(f32, usize, DiscoveryFormat)> = Vec::new();
    for (pos, entry) in accept.split(',').enumerate().take(64) {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut g, mut v, mut as_, mut q) = (None, None, None, 1.0f32);
        for p in parts {
            let Some((k, val)) = p.split_once('=') else {
                continue;
            };
            let val = val.trim().trim_matches('"');
            match k.trim() {
                "g" => g = Some(val.to_owned()),
                "v" => v = Some(val.to_owned()),
                "as" => as_ = Some(val.to_owned()),
                "q" => q = val.parse().unwrap_or(1.0),
                _ => {}
            }
        }
        if q <= 0.0 {
            continue;
        }
        let json_like = media == "application/json" || media == "application/*" || media == "*/*";
        let format = match (g.as_deref(), v.as_deref(), as_.as_deref()) {
            (Some("apidiscovery.k8s.io"), Some("v2"), Some("APIGroupDiscoveryList"))
                if json_like =>
            {
                Some(DiscoveryFormat::Aggregated(AggregatedVersion::V2))
            }
            (Some("apidiscovery.k8s.io"), Some("v2beta1"), Some("APIGroupDiscoveryList"))
                if json_like =>
            {
                Some(DiscoveryFormat::Aggregated(AggregatedVersion::V2beta1))
            }
            (None, None, None) if json_like => Some(DiscoveryFormat::Legacy),
            _ => None,
        };
        if let Some(f) = format {
            candidates.push((q, pos, f));
        }
    }
    // Highest q first, then the client's order.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    candidates.first().map(|c| c.2)
}

/// Which aggregated document: `/api` (the core group only) or `/apis` (every named group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Core,
    Apis,
}

fn scope_str(d: &ResourceDef) -> &'static str {
    if d.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn aggregated_resource(d: &ResourceDef) -> Value {
    let mut r = Map::new();
    r.insert("resource".into(), json!(d.plural));
    r.insert(
        "responseKind".into(),
        json!({"group": d.group, "version": d.version, "kind": d.kind}),
    );
    r.insert("scope".into(), json!(scope_str(d)));
    r.insert("singularResource".into(), json!(d.singular));
    r.insert("verbs".into(), json!(d.verbs));
    if !d.short_names.is_empty() {
        r.insert("shortNames".into(), json!(d.short_names));
    }
    if !d.categories.is_empty() {
        r.insert("categories".into(), json!(d.categories));
    }
    if !d.subresources.is_empty() {
        let subs: Vec<Value> = d
            .subresources
            .iter()
            .map(|s| {
                json!({"subresource": s.name,
                       "responseKind": {"group": s.kind.group, "version": s.kind.version, "kind": s.kind.kind},
                       "verbs": s.verbs})
            })
            .collect();
        r.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(r)
}

/// The `APIGroupDiscoveryList` for `/api` ([`Scope::Core`]) or `/apis` ([`Scope::Apis`]).
pub fn aggregated(registry: &Registry, scope: Scope, version: AggregatedVersion) -> Value {
    let api_version = match version {
        AggregatedVersion::V2 => "apidiscovery.k8s.io/v2",
        AggregatedVersion::V2beta1 => "apidiscovery.k8s.io/v2beta1",
    };
    let items: Vec<Value> = registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| (scope == Scope::Core) == g.is_empty())
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = registry
                        .resources_in(&group, v)
                        .into_iter()
                        .map(|d| aggregated_resource(d))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}

/// The legacy `/api` body. `server_address` is `host:port` as clients reach the server.
pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn group_body(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": api_version(group, v), "version": v}))
        .collect();
    let preferred = vs.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": vs, "preferredVersion": preferred})
}

/// The legacy `/apis` body (`APIGroupList`, every named group).
pub fn api_group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_body(&g, &v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The `/apis/{group}` body (`APIGroup`), or `None` if the group is not served.
pub fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    if group.is_empty() {
        return None;
    }
    let (g, versions) = registry
        .group_versions()
        .into_iter()
        .find(|(g, _)| g == group)?;
    let mut body = group_body(&g, &versions);
    if let Value::Object(m) = &mut body {
        m.insert("kind".into(), json!("APIGroup"));
        m.insert("apiVersion".into(), json!("v1"));
    }
    Some(body)
}

/// The `APIResourceList` for `/api/v1` (group `""`) or `/apis/{group}/{version}`, with
/// subresources as `pods/log` entries; `None` if that group-version is not served.
pub fn api_resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs = registry.resources_in(group, version);
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for d in defs {
        let mut r = Map::new();
        r.insert("name".into(), json!(d.plural));
        r.insert("singularName".into(), json!(d.singular));
        r.insert("namespaced".into(), json!(d.namespaced));
        r.insert("kind".into(), json!(d.kind));
        r.insert("verbs".into(), json!(d.verbs));
        if !d.short_names.is_empty() {
            r.insert("shortNames".into(), json!(d.short_names));
        }
        if !d.categories.is_empty() {
            r.insert("categories".into(), json!(d.categories));
        }
        resources.push(Value::Object(r));
        for s in &d.subresources {
            let mut r = Map::new();
            r.insert("name".into(), json!(format!("{}/{}", d.plural, s.name)));
            r.insert("singularName".into(), json!(""));
            r.insert("namespaced".into(), json!(d.namespaced));
            // A kind from another group-version names it (deployments/scale: autoscaling/v1).
            if s.kind.group != d.group || s.kind.version != d.version {
                r.insert("group".into(), json!(s.kind.group));
                r.insert("version".into(), json!(s.kind.version));
            }
            r.insert("kind".into(), json!(s.kind.kind));
            r.insert("verbs".into(), json!(s.verbs));
            resources.push(Value::Object(r));
        }
    }
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": api_version(group, version), "resources": resources}))
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Every discovery body, serialized once for one registry generation.
#[derive(Debug, Clone)]
pub struct DiscoveryCache {
    generation: u64,
    /// (scope, version) -> aggregated body.
    aggregated: HashMap<(bool, bool), Bytes>,
    api_versions: Bytes,
    group_list: Bytes,
    groups: HashMap<String, Bytes>,
    resource_lists: HashMap<(String, String), Bytes>,
}

impl DiscoveryCache {
    /// Serializes every discovery body of `registry`.
    pub fn build(registry: &Registry, server_address: &str) -> Self {
        let mut aggregated = HashMap::new();
        for (core, scope) in [(true, Scope::Core), (false, Scope::Apis)] {
            for (v2, version) in [
                (true, AggregatedVersion::V2),
                (false, AggregatedVersion::V2beta1),
            ] {
                aggregated.insert(
                    (core, v2),
                    to_bytes(&self::aggregated(registry, scope, version)),
                );
            }
        }
        let mut groups = HashMap::new();
        let mut resource_lists = HashMap::new();
        for (g, versions) in registry.group_versions() {
            if let Some(body) = api_group(registry, &g) {
                groups.insert(g.clone(), to_bytes(&body));
            }
            for v in versions {
                if let Some(body) = api_resource_list(registry, &g, &v) {
                    resource_lists.insert((g.clone(), v), to_bytes(&body));
                }
            }
        }
        Self {
            generation: registry.generation(),
            aggregated,
            api_versions: to_bytes(&api_versions(server_address)),
            group_list: to_bytes(&api_group_list(registry)),
            groups,
            resource_lists,
        }
    }

    /// The registry generation these bodies were built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The `/api` ([`Scope::Core`]) or `/apis` body in `format`, with its Content-Type.
    pub fn root(&self, scope: Scope, format: DiscoveryFormat) -> (&'static str, Bytes) {
        let core = scope == Scope::Core;
        let body = match format {
            DiscoveryFormat::Aggregated(v) => self
                .aggregated
                .get(&(core, v == AggregatedVersion::V2))
                .cloned()
                .unwrap_or_default(),
            DiscoveryFormat::Legacy if core => self.api_versions.clone(),
            DiscoveryFormat::Legacy => self.group_list.clone(),
        };
        (format.content_type(), body)
    }

    /// The `/apis/{group}` body.
    pub fn group(&self, group: &str) -> Option<Bytes> {
        self.groups.get(group).cloned()
    }

    /// The `/api/v1` (group `""`) or `/apis/{group}/{version}` body.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Bytes> {
        self.resource_lists
            .get(&(group.to_owned(), version.to_owned()))
            .cloned()
    }
}

#[cfg(test)]
mod tests;
