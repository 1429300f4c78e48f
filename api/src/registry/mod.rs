//! The resource registry: what the apiserver knows about every resource it serves.
//!
//! Pure data, no I/O. The server builds one [`Registry`] at start ([`Registry::builtin`]), and
//! updates it from CustomResourceDefinition objects as they are written
//! ([`Registry::apply_crd`], [`Registry::remove_crd`]). Discovery, OpenAPI, Tables,
//! validation and index extraction all read [`ResourceDef`]s from it.
//!
//! Entry points:
//! - [`Registry::builtin`] -> the built-in resources (Kubernetes 1.33 names, verbs, short
//!   names, categories, subresources, field selectors).
//! - [`Registry::lookup`]`(group, version, plural)` / [`Registry::lookup_kind`] /
//!   [`Registry::resolve_subresource`] -> what a request path names.
//! - [`Registry::apply_crd`]`(&crd_json)` / [`Registry::remove_crd`]`(name)` -> the dynamic part.
//! - [`Registry::group_versions`] -> served groups with versions, preferred first.
//! - [`extract_index`]`(def, &object)` -> labels and indexed field values for
//!   `store::ObjectValue` ([`IndexedObject::into_object_value`]).
//! - [`parse_field_selector`]`(def, "spec.nodeName=n1")` -> `store::Requirement`s (400 on
//!   unsupported fields), [`matches_fields`] to filter lists.
//! - [`scale_of`] / [`apply_scale`] -> the `scale` subresource (`autoscaling/v1 Scale`).

mod builtin;
mod crd;
mod fields;
mod index;
mod scale;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

pub use crd::{CrdError, version_priority};
pub use fields::{FieldSelectorError, matches_fields, parse_field_selector};
pub use index::{IndexedObject, extract_index, field_value};
pub use scale::{ScaleError, apply_scale, scale_of};

/// A group, version and kind (`group` is `""` for the core group).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Gvk {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl Gvk {
    /// Builds a GVK from string slices.
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// `apiVersion` as objects carry it: `v1` for core, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }
}

/// `apiVersion` for a group and version: `v1` for the core group, `apps/v1` otherwise.
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// A subresource such as `pods/log` or `deployments/scale`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubresourceDef {
    /// The name after the slash: `status`, `scale`, `log`, ...
    pub name: String,
    /// The kind the subresource answers with (`autoscaling/v1 Scale` for `scale`).
    pub kind: Gvk,
    pub verbs: Vec<String>,
}

/// Where a resource's definition comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Compiled in.
    BuiltIn,
    /// Defined by a CustomResourceDefinition.
    Crd(Arc<CrdVersionInfo>),
}

/// What a CRD says about one served version of its resource.
#[derive(Debug, Clone, PartialEq)]
pub struct CrdVersionInfo {
    /// The CRD's `metadata.name` (`<plural>.<group>`).
    pub crd_name: String,
    /// `openAPIV3Schema` of this version, if any.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns`, in order.
    pub printer_columns: Vec<PrinterColumn>,
    /// The scale subresource's paths, if enabled.
    pub scale: Option<ScalePaths>,
    /// Whether the status subresource is enabled.
    pub status: bool,
    /// Whether this is the storage version.
    pub storage: bool,
}

/// A CRD `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    /// `integer`, `number`, `string`, `boolean` or `date`.
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
    pub json_path: String,
}

/// A CRD's `subresources.scale`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas_path: String,
    pub status_replicas_path: String,
    pub label_selector_path: Option<String>,
}

/// Everything the server knows about one resource at one group-version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    /// The plural resource name used in paths (`pods`).
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub verbs: Vec<String>,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub subresources: Vec<SubresourceDef>,
    /// Field selector names this resource supports, `metadata.name` and
    /// `metadata.namespace` included, sorted.
    pub field_selectors: Vec<String>,
    /// The subset of `field_selectors` the store routes watches by (an index).
    pub indexed_fields: Vec<String>,
    /// The OpenAPI component schema name (`io.k8s.api.core.v1.Pod`); empty for CRDs.
    pub schema_name: String,
    pub source: Source,
}

impl ResourceDef {
    /// The kind this resource's objects carry.
    pub fn gvk(&self) -> Gvk {
        Gvk::new(&self.group, &self.version, &self.kind)
    }

    /// `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }

    /// `pods` for core, `deployments.apps` otherwise (as error messages name resources).
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The subresource of this name, if served.
    pub fn subresource(&self, name: &str) -> Option<&SubresourceDef> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether `verb` (`get`, `list`, `create`, ...) is allowed on the main resource.
    pub fn has_verb(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// Whether `field` may be used in a field selector on this resource.
    pub fn supports_field(&self, field: &str) -> bool {
        self.field_selectors.iter().any(|f| f == field)
    }

    /// The CRD details, if this resource is a custom resource.
    pub fn crd(&self) -> Option<&CrdVersionInfo> {
        match &self.source {
            Source::Crd(info) => Some(info),
            Source::BuiltIn => None,
        }
    }

    /// The store key prefix for this resource (`/registry/<group>/<resource>/`), as
    /// DESIGN.md fixes it; the core group is written `core`.
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group.as_str()
        };
        format!("/registry/{group}/{}/", self.plural)
    }
}

/// The served resources, built-in and from CRDs.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    builtin: Vec<Arc<ResourceDef>>,
    /// CRD name -> the entries it defines (one per served version).
    crds: BTreeMap<String, Vec<Arc<ResourceDef>>>,
    /// Bumped on every change, so caches keyed on it (discovery bodies, OpenAPI) know when
    /// to rebuild.
    generation: u64,
}

impl Registry {
    /// The built-in resources of Kubernetes 1.33 that kubeshard serves.
    pub fn builtin() -> Self {
        Self {
            builtin: builtin::all().into_iter().map(Arc::new).collect(),
            crds: BTreeMap::new(),
            generation: 1,
        }
    }

    /// A counter that changes whenever the set of resources changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every resource: built-ins first (in discovery order), then CRD resources by CRD name.
    pub fn resources(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.builtin.iter().chain(self.crds.values().flatten())
    }

    /// The resource at `group/version/plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceDef>> {
        self.resources()
            .find(|r| r.plural == plural && r.version == version && r.group == group)
    }

    /// The resource whose objects are of this kind.
    pub fn lookup_kind(&self, group: &str, version: &str, kind: &str) -> Option<&Arc<ResourceDef>> {
        self.resources()
            .find(|r| r.kind == kind && r.version == version && r.group == group)
    }

    /// The resource and subresource a path names (`pods`, `log`).
    pub fn resolve_subresource(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        subresource: &str,
    ) -> Option<(&Arc<ResourceDef>, &SubresourceDef)> {
        let def = self.lookup(group, version, plural)?;
        let sub = def.subresource(subresource)?;
        Some((def, sub))
    }

    /// Served groups in discovery order, each with its versions, the preferred one first.
    /// The core group is `""`.
    pub fn group_versions(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.resources() {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        versions.push(r.version.clone());
                    }
                }
                None => out.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        for (_, versions) in &mut out {
            // Kubernetes' version priority: GA > beta > alpha, higher numbers first.
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out
    }

    /// The resources of one group-version, in registry order.
    pub fn resources_in(&self, group: &str, version: &str) -> Vec<&Arc<ResourceDef>> {
        self.resources()
            .filter(|r| r.group == group && r.version == version)
            .collect()
    }

    /// Adds or replaces the resources a CRD defines. `crd` is the CRD object
    /// (apiextensions.k8s.io/v1) as JSON. Returns the entries it now defines.
    ///
    /// A CRD whose names collide with a built-in resource is rejected.
    pub fn apply_crd(&mut self, crd: &Value) -> Result<Vec<Arc<ResourceDef>>, CrdError> {
        let (name, defs) = crd::defs_from_crd(crd)?;
        for d in &defs {
            if self
                .builtin
                .iter()
                .any(|b| b.group == d.group && b.plural == d.plural)
            {
                return Err(CrdError::Conflict(format!("{}.{}", d.plural, d.group)));
            }
        }
        let defs: Vec<Arc<ResourceDef>> = defs.into_iter().map(Arc::new).collect();
        self.crds.insert(name, defs.clone());
        self.generation += 1;
        Ok(defs)
    }

    /// Removes the resources of the CRD named `name`; returns whether it was known.
    pub fn remove_crd(&mut self, name: &str) -> bool {
        let removed = self.crds.remove(name).is_some();
        if removed {
            self.generation += 1;
        }
        removed
    }
}

#[cfg(test)]
mod tests;
