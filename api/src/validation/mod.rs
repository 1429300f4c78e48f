//! Decoding, defaulting and validation of objects on writes, per kind, as kube-apiserver does
//! the parts users see. Pure functions over `serde_json::Value`; the server maps the typed
//! errors to `metav1.Status` ([`DecodeError`] -> 400 BadRequest, [`Invalid`] -> 422 Invalid
//! with `details.causes` from [`Invalid::causes_json`]).
//!
//! Order on a create (the server does the I/O in between):
//! 1. [`FieldValidation::parse`]`(query "fieldValidation")`.
//! 2. [`decode_json`]`(body, &def, schemas, mode) -> Decoded { object, warnings }` (or, for
//!    bodies decoded elsewhere such as protobuf/YAML/patch results,
//!    [`check_fields`]`(&mut object, &def, schemas, mode)`): unknown fields are pruned;
//!    Strict turns unknown/duplicate fields into a 400, Warn into warnings (send each as a
//!    `Warning: 299 - "<text>"` header), Ignore drops them silently. Wrong JSON types are a
//!    400 for built-ins.
//! 3. The server fills `metadata.namespace` from the URL, `uid`, `creationTimestamp`...
//! 4. [`default_object`]`(&def, schemas, &mut obj)` (kind defaults; CRD schema defaults),
//!    then [`prepare_for_create`]`(&def, &mut obj)` (Secret stringData -> data, pod
//!    status/QoS, namespace label + finalizer, job selector from the uid).
//! 5. [`validate_create`]`(&def, &obj) -> Result<(), Invalid>`.
//!
//! On an update: decode/check as above, [`default_object`], [`prepare_for_update`],
//! [`validate_update`]`(&def, &new, &old)`.

mod crd_schema;
mod defaults;
mod errors;
pub mod names;
mod rules;
mod strict;

use serde_json::{Value, json};

pub use defaults::{image_pull_policy, merge_string_data, pod_qos};
pub use errors::{DecodeError, FieldError, FieldErrorKind, Invalid};
pub use names::NameRule;
pub(crate) use rules::SYSTEM_PRIORITY_CLASSES;

use crate::openapi::SchemaSet;
use crate::registry::ResourceDef;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop them and return warnings (the default, as upstream since 1.27).
    #[default]
    Warn,
    /// Reject the request.
    Strict,
}

impl FieldValidation {
    /// Parses the query value; absent or empty means `Warn`.
    pub fn parse(q: Option<&str>) -> Result<Self, DecodeError> {
        match q.unwrap_or("") {
            "" | "Warn" => Ok(Self::Warn),
            "Ignore" => Ok(Self::Ignore),
            "Strict" => Ok(Self::Strict),
            other => Err(DecodeError::BadFieldValidation(other.to_owned())),
        }
    }
}

/// A decoded object and the warnings to send with the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// Decodes a JSON body for `def`: parses it (finding duplicate fields), then
/// [`check_fields`].
pub fn decode_json(
    body: &[u8],
    def: &ResourceDef,
    schemas: &SchemaSet,
    mode: FieldValidation,
) -> Result<Decoded, DecodeError> {
    let (mut object, dups) = strict::parse_with_duplicates(body).map_err(|e| {
        DecodeError::Malformed(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            def.kind, def.version, def.kind
        ))
    })?;
    if !object.is_object() {
        return Err(DecodeError::Malformed(format!(
            "{} in version {:?} cannot be handled as a {}: the body must be a JSON object",
            def.kind, def.version, def.kind
        )));
    }
    let mut warnings = check_with(&mut object, def, schemas, mode, dups)?;
    warnings.shrink_to_fit();
    Ok(Decoded { object, warnings })
}

/// Checks an already-parsed object against the kind's schema: prunes unknown fields, and
/// per `mode` rejects them (Strict) or returns them as warnings (Warn). Wrong JSON types are
/// errors for built-in kinds (custom resources report them in [`validate_create`]).
pub fn check_fields(
    object: &mut Value,
    def: &ResourceDef,
    schemas: &SchemaSet,
    mode: FieldValidation,
) -> Result<Vec<String>, DecodeError> {
    check_with(object, def, schemas, mode, Vec::new())
}

fn crd_root_schema(def: &ResourceDef) -> Option<Value> {
    let schema = def.crd()?.schema.clone()?;
    let mut schema = schema;
    if let Some(props) = schema
        .as_object_mut()
        .map(|s| s.entry("properties").or_insert_with(|| json!({})))
        && let Some(p) = props.as_object_mut()
    {
        p.insert(
            "metadata".into(),
            json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
        );
        p.insert("apiVersion".into(), json!({"type": "string"}));
        p.insert("kind".into(), json!({"type": "string"}));
    }
    Some(schema)
}

fn check_with(
    object: &mut Value,
    def: &ResourceDef,
    schemas: &SchemaSet,
    mode: FieldValidation,
    dups: Vec<String>,
) -> Result<Vec<String>, DecodeError> {
    let mut walker = strict::Walker::new(schemas, false);
    let is_crd = def.crd().is_some();
    if is_crd {
        match crd_root_schema(def) {
            Some(root) => walker.walk(object, &root, None, &strict::Path::Root, true),
            // No schema: everything is preserved, except metadata is still ObjectMeta.
            None => {
                if let (Some(meta), Some(s)) = (
                    object.get_mut("metadata"),
                    schemas.get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                ) {
                    walker.walk(
                        meta,
                        s,
                        Some("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                        &strict::Path::Key(&strict::Path::Root, "metadata"),
                        false,
                    );
                }
            }
        }
    } else if let Some(s) = schemas.get(&def.schema_name) {
        walker.walk(object, s, Some(&def.schema_name), &strict::Path::Root, true);
    }
    let out = walker.out;
    if !is_crd && let Some((path, expected, found, comp)) = out.type_errors.first() {
        return Err(DecodeError::Type {
            kind: def.kind.clone(),
            version: def.version.clone(),
            detail: strict::type_error_text(path, expected, found, comp),
        });
    }
    if !is_crd && let Some(detail) = out.bad_bytes {
        return Err(DecodeError::Type {
            kind: def.kind.clone(),
            version: def.version.clone(),
            detail,
        });
    }
    let mut problems: Vec<String> = out
        .unknown
        .iter()
        .map(|p| format!("unknown field {p:?}"))
        .collect();
    problems.extend(dups.iter().map(|p| format!("duplicate field {p:?}")));
    match mode {
        FieldValidation::Strict if !problems.is_empty() => Err(DecodeError::Strict {
            kind: def.kind.clone(),
            version: def.version.clone(),
            errors: problems,
        }),
        FieldValidation::Warn => Ok(problems),
        _ => Ok(Vec::new()),
    }
}

/// Create-time preparation (see the module doc, step 4). Call after `metadata.uid` is set
/// and after [`default_object`].
pub fn prepare_for_create(def: &ResourceDef, obj: &mut Value) {
    defaults::prepare_for_create(def, obj);
}

/// Update-time preparation (Secret `stringData`).
pub fn prepare_for_update(def: &ResourceDef, obj: &mut Value) {
    defaults::prepare_for_update(def, obj);
}

/// Applies the kind's defaults (built-ins), or the CRD schema's `default`s (custom
/// resources). Idempotent.
pub fn default_object(def: &ResourceDef, schemas: &SchemaSet, obj: &mut Value) {
    if def.crd().is_some() {
        if let Some(root) = crd_root_schema(def) {
            let mut walker = strict::Walker::new(schemas, true);
            walker.walk(obj, &root, None, &strict::Path::Root, true);
        }
        return;
    }
    defaults::apply(def, obj);
}

fn invalid(def: &ResourceDef, obj: &Value, causes: Vec<FieldError>) -> Result<(), Invalid> {
    if causes.is_empty() {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = if name.is_empty() {
        obj.pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
    } else {
        name
    };
    Err(Invalid {
        kind: def.kind.clone(),
        group: def.group.clone(),
        name: name.to_owned(),
        causes,
    })
}

fn object_errors(def: &ResourceDef, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    rules::object_meta(def, obj, &mut errs);
    if let Some(schema) = def.crd().and_then(|c| c.schema.as_ref()) {
        errs.extend(crd_schema::validate_cr(schema, obj));
    } else {
        rules::kind_rules(def, obj, &mut errs);
    }
    errs
}

/// Validates a new object (after defaulting). `metadata.namespace` must already be set for
/// namespaced kinds.
pub fn validate_create(def: &ResourceDef, obj: &Value) -> Result<(), Invalid> {
    invalid(def, obj, object_errors(def, obj))
}

/// Validates an update of `old` to `new` (after defaulting): everything
/// [`validate_create`] checks plus immutable fields.
pub fn validate_update(def: &ResourceDef, new: &Value, old: &Value) -> Result<(), Invalid> {
    let mut errs = object_errors(def, new);
    let name = |v: &Value| v.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    if name(new) != name(old) {
        errs.push(FieldError::invalid(
            "metadata.name",
            name(new),
            "field is immutable",
        ));
    }
    if def.crd().is_none() {
        rules::update_rules(def, new, old, &mut errs);
    }
    invalid(def, new, errs)
}

#[cfg(test)]
mod tests;
