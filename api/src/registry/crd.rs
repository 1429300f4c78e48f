//! Turning a CustomResourceDefinition into registry entries.

use std::sync::Arc;

use serde_json::Value;

use super::{CrdVersionInfo, Gvk, PrinterColumn, ResourceDef, ScalePaths, Source, SubresourceDef};

/// Why a CRD could not be turned into served resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrdError {
    /// A required field is missing or has the wrong type (the field path is given).
    #[error("customresourcedefinition: missing or invalid field {0}")]
    Field(&'static str),
    /// The CRD names a resource a built-in already serves.
    #[error("customresourcedefinition: {0} is served by a built-in resource")]
    Conflict(String),
}

/// Kubernetes' version priority, higher is preferred: GA (`v2` > `v1`) above beta
/// (`v1beta2` > `v1beta1`) above alpha, then anything else.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let Ok(major) = rest[..digits].parse::<u32>() else {
        return (0, 0, 0);
    };
    let tail = &rest[digits..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (class, num) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (0, 0, 0);
    };
    match num.parse::<u32>() {
        Ok(minor) => (class, major, minor),
        Err(_) => (0, 0, 0),
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The CRD's name and one entry per served version, the preferred version first.
pub(super) fn defs_from_crd(crd: &Value) -> Result<(String, Vec<ResourceDef>), CrdError> {
    let name = str_at(crd, "/metadata/name").ok_or(CrdError::Field("metadata.name"))?;
    let group = str_at(crd, "/spec/group").ok_or(CrdError::Field("spec.group"))?;
    let plural = str_at(crd, "/spec/names/plural").ok_or(CrdError::Field("spec.names.plural"))?;
    let kind = str_at(crd, "/spec/names/kind").ok_or(CrdError::Field("spec.names.kind"))?;
    let singular = str_at(crd, "/spec/names/singular")
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let list_kind = str_at(crd, "/spec/names/listKind")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{kind}List"));
    let namespaced = match str_at(crd, "/spec/scope") {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err(CrdError::Field("spec.scope")),
    };
    let short_names = str_list(crd.pointer("/spec/names/shortNames"));
    let categories = str_list(crd.pointer("/spec/names/categories"));
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .ok_or(CrdError::Field("spec.versions"))?;

    let mut defs = Vec::new();
    for v in versions {
        if !v.get("served").and_then(Value::as_bool).unwrap_or(false) {
            continue;
        }
        let version = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or(CrdError::Field("spec.versions[].name"))?;
        let subs = v.get("subresources");
        let status = subs
            .and_then(|s| s.get("status"))
            .is_some_and(|s| !s.is_null());
        let scale = subs
            .and_then(|s| s.get("scale"))
            .filter(|s| !s.is_null())
            .map(|s| ScalePaths {
                spec_replicas_path: str_at(s, "/specReplicasPath")
                    .unwrap_or(".spec.replicas")
                    .to_owned(),
                status_replicas_path: str_at(s, "/statusReplicasPath")
                    .unwrap_or(".status.replicas")
                    .to_owned(),
                label_selector_path: str_at(s, "/labelSelectorPath").map(str::to_owned),
            });
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| cols.iter().filter_map(printer_column).collect())
            .unwrap_or_default();
        let schema = v
            .pointer("/schema/openAPIV3Schema")
            .filter(|s| !s.is_null())
            .cloned();
        let mut subresources = Vec::new();
        if scale.is_some() {
            subresources.push(SubresourceDef {
                name: "scale".to_owned(),
                kind: Gvk::new("autoscaling", "v1", "Scale"),
                verbs: vec!["get".into(), "patch".into(), "update".into()],
            });
        }
        if status {
            subresources.push(SubresourceDef {
                name: "status".to_owned(),
                kind: Gvk::new(group, version, kind),
                verbs: vec!["get".into(), "patch".into(), "update".into()],
            });
        }
        let mut field_selectors = vec!["metadata.name".to_owned()];
        if namespaced {
            field_selectors.push("metadata.namespace".to_owned());
        }
        // selectableFields (GA in 1.32): `.spec.color` is selected as `spec.color`.
        for f in v
            .get("selectableFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(p) = f.get("jsonPath").and_then(Value::as_str) {
                field_selectors.push(p.trim_start_matches('.').to_owned());
            }
        }
        field_selectors.sort();
        field_selectors.dedup();
        defs.push(ResourceDef {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            list_kind: list_kind.clone(),
            plural: plural.to_owned(),
            singular: singular.clone(),
            namespaced,
            verbs: [
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            short_names: short_names.clone(),
            categories: categories.clone(),
            subresources,
            field_selectors,
            indexed_fields: Vec::new(),
            schema_name: String::new(),
            source: Source::Crd(Arc::new(CrdVersionInfo {
                crd_name: name.to_owned(),
                schema,
                printer_columns,
                scale,
                status,
                storage: v.get("storage").and_then(Value::as_bool).unwrap_or(false),
            })),
        });
    }
    defs.sort_by_key(|d| std::cmp::Reverse(version_priority(&d.version)));
    Ok((name.to_owned(), defs))
}

fn printer_column(c: &Value) -> Option<PrinterColumn> {
    Some(PrinterColumn {
        name: c.get("name")?.as_str()?.to_owned(),
        type_: c
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("string")
            .to_owned(),
        format: c
            .get("format")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        description: c
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        priority: c
            .get("priority")
            .and_then(Value::as_i64)
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0),
        json_path: c.get("jsonPath")?.as_str()?.to_owned(),
    })
}
