//! Server-side apply and `metadata.managedFields` (pure, over [`serde_json::Value`]).
//!
//! Entry points:
//! - [`parse_apply_body`]: the `application/apply-patch+yaml` body (JSON or YAML) → object.
//! - [`apply`]`(live, applied, &ApplyOptions)`: the object after server-side apply, with
//!   updated `managedFields`, or [`ApplyError::Conflicts`] (409, message formatted like
//!   upstream's `Apply failed with N conflict(s): …`). `force` takes the conflicting fields.
//! - [`record_update`]`(old, new, &UpdateOptions)`: for every other write (create, PUT, the three
//!   other PATCH types): gives the fields that changed to the writing manager (operation
//!   `Update`), takes them from the others, and drops removed fields from every entry. Call it
//!   with `old = None` on create.
//!
//! Rules (as in upstream's structured-merge-diff):
//! - a manager owns the set of field paths it applied ([`fieldset`], FieldsV1 format);
//! - applying a value that differs from the live one on a path another manager owns is a
//!   conflict, unless `force`, which moves ownership to the applier;
//! - several managers applying the same value share ownership;
//! - a path the applier owned before and omits now is removed from the object unless another
//!   manager still owns it (or something under it);
//! - lists merge per the schema: associative lists by their keys, sets by value, others are
//!   atomic; objects merge member by member.
//!
//! Not done: version conversion of managed fields between API versions, the
//! `before-first-apply` manager for objects written before managed fields existed, and
//! element reordering within associative lists.

pub mod fieldset;

use serde_json::{Map, Value};

use crate::patch::json_patch::json_equal;
use crate::patch::schema::{FieldMeta, NoSchema, PatchSchema};
use fieldset::{FieldSet, ListKind, Path, item_key, list_kind, path_string, value_at};

/// Why an apply or a managed-fields update failed. Never retryable as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Fields owned by other managers would change (409 Conflict).
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The body is not a YAML/JSON object (400 BadRequest).
    #[error("{0}")]
    BadRequest(String),
    /// The applied configuration cannot be merged (duplicate list keys, missing key fields);
    /// 422 Invalid.
    #[error("{0}")]
    Invalid(String),
}

impl ApplyError {
    /// The HTTP status upstream answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            ApplyError::Conflicts(_) => 409,
            ApplyError::BadRequest(_) => 400,
            ApplyError::Invalid(_) => 422,
        }
    }
}

/// One conflicting field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager that owns the field.
    pub manager: String,
    /// Its operation (`Apply` or `Update`).
    pub operation: String,
    /// The API version it used.
    pub api_version: String,
    /// Its subresource, if any.
    pub subresource: Option<String>,
    /// The field, as `.spec.replicas`.
    pub path: String,
}

/// `Apply failed with 1 conflict: conflict with "kubectl" using v1: .data.a`, or for several:
/// `Apply failed with 2 conflicts: conflicts with "kubectl" using v1:\n- .data.a\n- .data.b`.
fn conflicts_message(conflicts: &[Conflict]) -> String {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for c in conflicts {
        let mut who = format!("{:?}", c.manager);
        if let Some(s) = &c.subresource {
            who.push_str(&format!(" with subresource {s:?}"));
        }
        who.push_str(&format!(" using {}", c.api_version));
        match groups.iter_mut().find(|(w, _)| *w == who) {
            Some((_, paths)) => paths.push(&c.path),
            None => groups.push((who, vec![&c.path])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(who, paths)| {
            if paths.len() == 1 {
                format!("conflict with {who}: {}", paths[0])
            } else {
                let list: Vec<String> = paths.iter().map(|p| format!("- {p}")).collect();
                format!("conflicts with {who}:\n{}", list.join("\n"))
            }
        })
        .collect();
    let n = conflicts.len();
    format!(
        "Apply failed with {n} conflict{}: {}",
        if n == 1 { "" } else { "s" },
        parts.join("\n")
    )
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedEntry {
    /// `manager`.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `apiVersion` the manager used.
    pub api_version: String,
    /// `time` (RFC 3339).
    pub time: Option<String>,
    /// `subresource` (`status`, `scale`) or none.
    pub subresource: Option<String>,
    /// `fieldsV1`.
    pub fields: FieldSet,
}

impl ManagedEntry {
    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.clone()));
        m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::String(t.clone()));
        }
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), Value::String(s.clone()));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Result<ManagedEntry, ApplyError> {
        let bad = |what: &str| {
            ApplyError::BadRequest(format!("invalid metadata.managedFields entry: {what}"))
        };
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        if s("fieldsType").is_some_and(|t| t != "FieldsV1") {
            return Err(bad("fieldsType must be FieldsV1"));
        }
        let fields = match v.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::default(),
            Some(f) => FieldSet::from_fields_v1(f).map_err(|e| bad(&e.to_string()))?,
        };
        Ok(ManagedEntry {
            manager: s("manager").unwrap_or_default(),
            operation: s("operation").ok_or_else(|| bad("operation is required"))?,
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").filter(|s| !s.is_empty()),
            fields,
        })
    }
}

/// The managed-fields entries of an object (`[]` when it has none).
pub fn managed_entries(obj: &Value) -> Result<Vec<ManagedEntry>, ApplyError> {
    match obj.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(ManagedEntry::from_json).collect(),
        Some(_) => Err(ApplyError::BadRequest(
            "metadata.managedFields must be a list".into(),
        )),
    }
}

fn set_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    if let Value::Object(root) = obj {
        let meta = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(meta) = meta {
            if entries.is_empty() {
                meta.remove("managedFields");
            } else {
                meta.insert(
                    "managedFields".into(),
                    Value::Array(entries.iter().map(ManagedEntry::to_json).collect()),
                );
            }
        }
    }
}

/// Parses an apply body: JSON (what kubectl sends) or YAML; must be an object.
pub fn parse_apply_body(body: &[u8]) -> Result<Value, ApplyError> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => serde_yaml::from_slice(body)
            .map_err(|e| ApplyError::BadRequest(format!("error decoding YAML: {e}")))?,
    };
    if !v.is_object() {
        return Err(ApplyError::BadRequest(
            "the applied configuration must be an object".into(),
        ));
    }
    Ok(v)
}

/// Parameters of [`apply`].
pub struct ApplyOptions<'a> {
    /// `fieldManager` (required for apply).
    pub manager: &'a str,
    /// `force=true`: take conflicting fields instead of failing.
    pub force: bool,
    /// The API version of the request (`apps/v1`).
    pub api_version: &'a str,
    /// The current time, RFC 3339, for the entry's `time`.
    pub now: &'a str,
    /// Patch metadata of the kind (list keys, sets); [`NoSchema`] makes every list atomic.
    pub schema: &'a dyn PatchSchema,
    /// `status` for the status subresource; `None` for the main resource.
    pub subresource: Option<&'a str>,
}

/// Parameters of [`record_update`].
pub struct UpdateOptions<'a> {
    /// `fieldManager` of the write (upstream derives one from the user agent when absent).
    pub manager: &'a str,
    /// The API version of the request.
    pub api_version: &'a str,
    /// The current time, RFC 3339.
    pub now: &'a str,
    /// Patch metadata of the kind.
    pub schema: &'a dyn PatchSchema,
    /// `status`/`scale` for subresource writes.
    pub subresource: Option<&'a str>,
}

/// The tracked field set of `obj` for the main resource or a subresource.
fn scoped_fields(obj: &Value, schema: &dyn PatchSchema, subresource: Option<&str>) -> FieldSet {
    match subresource {
        Some("status") => {
            let mut only = Map::new();
            if let Some(s) = obj.get("status") {
                only.insert("s".into(), s.clone());
            }
            let inner = fieldset::fields_of(&Value::Object(only), &StatusRoot(schema));
            FieldSet(
                inner
                    .0
                    .into_iter()
                    .map(|mut p| {
                        p[0] = "f:status".into();
                        p
                    })
                    .collect(),
            )
        }
        _ => fieldset::fields_of(obj, schema),
    }
}

/// Exposes the `status` member's metadata under the placeholder name `s` (so the root filter
/// of [`fieldset::fields_of`], which skips `status`, does not apply).
struct StatusRoot<'a>(&'a dyn PatchSchema);

impl PatchSchema for StatusRoot<'_> {
    fn field(&self, name: &str) -> Option<FieldMeta<'_>> {
        if name == "s" {
            self.0.field("status")
        } else {
            None
        }
    }
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Server-side apply of `applied` onto `live` (`None` when the object does not exist yet).
/// Returns the new object with its `metadata.managedFields`.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    opts: &ApplyOptions<'_>,
) -> Result<Value, ApplyError> {
    let Value::Object(_) = applied else {
        return Err(ApplyError::BadRequest(
            "the applied configuration must be an object".into(),
        ));
    };
    let mut applied = applied.clone();
    strip_nulls(&mut applied);
    if let Some(Value::Object(meta)) = applied.get_mut("metadata") {
        meta.remove("managedFields");
    }
    check_lists(&applied, None, opts.schema, 0)?;
    let live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    let mut entries = managed_entries(&live_obj)?;
    let applied_set = scoped_fields(&applied, opts.schema, opts.subresource);

    // Conflicts: paths we apply with a value other than the live one, owned by someone else.
    let mut conflicts = Vec::new();
    for path in &applied_set.0 {
        let differs = leaf_differs(path, &applied, &live_obj);
        if !differs {
            continue;
        }
        for e in &entries {
            if e.is(opts.manager, "Apply", opts.subresource) {
                continue;
            }
            if e.fields.0.contains(path) {
                conflicts.push((
                    path.clone(),
                    Conflict {
                        manager: e.manager.clone(),
                        operation: e.operation.clone(),
                        api_version: e.api_version.clone(),
                        subresource: e.subresource.clone(),
                        path: path_string(path),
                    },
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        if !opts.force {
            return Err(ApplyError::Conflicts(
                conflicts.into_iter().map(|(_, c)| c).collect(),
            ));
        }
        for (path, _) in &conflicts {
            for e in entries.iter_mut() {
                if !e.is(opts.manager, "Apply", opts.subresource) {
                    e.fields.0.remove(path);
                }
            }
        }
    }

    let mut merged = live_obj.clone();
    merge_value(&mut merged, &applied, None, opts.schema, 0)?;

    // Removal of fields this manager applied before and no longer applies.
    let previous = entries
        .iter()
        .find(|e| e.is(opts.manager, "Apply", opts.subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let dropped = previous.difference(&applied_set);
    for path in dropped.0.iter().rev() {
        if is_key_of_kept_element(path, &merged) {
            continue;
        }
        let owned_elsewhere = entries
            .iter()
            .filter(|e| !e.is(opts.manager, "Apply", opts.subresource))
            .any(|e| e.fields.owns_or_has_descendant(path))
            || applied_set.owns_or_has_descendant(path);
        if !owned_elsewhere {
            fieldset::remove_at(&mut merged, path);
        }
    }

    let mine = ManagedEntry {
        manager: opts.manager.to_string(),
        operation: "Apply".into(),
        api_version: opts.api_version.to_string(),
        time: Some(opts.now.to_string()),
        subresource: opts.subresource.map(str::to_string),
        fields: applied_set,
    };
    match entries
        .iter_mut()
        .find(|e| e.is(opts.manager, "Apply", opts.subresource))
    {
        Some(e) => *e = mine,
        None => entries.push(mine),
    }
    entries.retain(|e| !e.fields.is_empty());
    set_managed(&mut merged, &entries);
    Ok(merged)
}

/// Records a non-apply write (`old` → `new`, `old = None` on create) in `new`'s
/// `managedFields` and returns the object to store. A write that changes no tracked field
/// leaves `managedFields` exactly as it was (so no-op writes stay no-ops).
///
/// If the request itself changed `metadata.managedFields` (kubectl's client-side-apply
/// migration replaces them with a JSON patch), the request's entries are the new baseline; an
/// empty list clears them.
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    opts: &UpdateOptions<'_>,
) -> Result<Value, ApplyError> {
    let old_obj = old.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    let old_managed = old_obj.pointer("/metadata/managedFields");
    let new_managed = new.pointer("/metadata/managedFields");
    let mut entries = match new_managed {
        Some(m) if Some(m) != old_managed => managed_entries(new)?,
        _ => managed_entries(&old_obj)?,
    };
    let reset = matches!(new_managed, Some(m) if Some(m) != old_managed);

    let old_set = scoped_fields(&old_obj, opts.schema, opts.subresource);
    let new_set = scoped_fields(new, opts.schema, opts.subresource);
    let removed = old_set.difference(&new_set);
    let mut changed = new_set.difference(&old_set);
    for path in old_set.0.intersection(&new_set.0) {
        if leaf_differs(path, &old_obj, new) {
            changed.0.insert(path.clone());
        }
    }

    let before = entries.clone();
    for e in entries.iter_mut() {
        let mine = e.is(opts.manager, "Update", opts.subresource);
        e.fields
            .0
            .retain(|p| !removed.0.contains(p) && (mine || !changed.0.contains(p)));
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.is(opts.manager, "Update", opts.subresource))
        {
            Some(e) => {
                e.fields.0.extend(changed.0);
                e.time = Some(opts.now.to_string());
                e.api_version = opts.api_version.to_string();
            }
            None => entries.push(ManagedEntry {
                manager: opts.manager.to_string(),
                operation: "Update".into(),
                api_version: opts.api_version.to_string(),
                time: Some(opts.now.to_string()),
                subresource: opts.subresource.map(str::to_string),
                fields: changed,
            }),
        }
    }
    entries.retain(|e| !e.fields.is_empty());
    let mut out = new.clone();
    match old_managed {
        // Nothing changed hands: keep the stored value byte for byte (no-op writes stay no-ops).
        Some(m) if !reset && entries == before => {
            if let Some(Value::Object(meta)) = out.get_mut("metadata") {
                meta.insert("managedFields".into(), m.clone());
            }
        }
        _ => set_managed(&mut out, &entries),
    }
    Ok(out)
}

const MAX_DEPTH: usize = 100;

/// Whether the value at `path` differs between `a` and `b` when present in both. List
/// elements (`k:`/`v:` paths) are identified by their key, so only leaves compare values.
fn leaf_differs(path: &Path, a: &Value, b: &Value) -> bool {
    if path
        .last()
        .is_some_and(|el| el.starts_with("k:") || el.starts_with("v:"))
    {
        return false;
    }
    match (value_at(a, path), value_at(b, path)) {
        (Some(x), Some(y)) => !json_equal(x, y),
        _ => false,
    }
}

/// A key member of an associative-list element stays as long as the element does.
fn is_key_of_kept_element(path: &Path, obj: &Value) -> bool {
    let [parents @ .., item, field] = path.as_slice() else {
        return false;
    };
    let (Some(key), Some(name)) = (item.strip_prefix("k:"), field.strip_prefix("f:")) else {
        return false;
    };
    let is_key =
        matches!(serde_json::from_str::<Value>(key), Ok(Value::Object(k)) if k.contains_key(name));
    let mut element = parents.to_vec();
    element.push(item.clone());
    is_key && value_at(obj, &element).is_some()
}

/// Associative lists in an applied configuration need key fields, each key once.
fn check_lists(
    v: &Value,
    meta: Option<&FieldMeta<'_>>,
    schema: &dyn PatchSchema,
    depth: usize,
) -> Result<(), ApplyError> {
    if depth > MAX_DEPTH {
        return Err(ApplyError::BadRequest("object nested too deeply".into()));
    }
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let fm = schema.field(k);
                let cs: &dyn PatchSchema = fm.as_ref().and_then(|m| m.schema).unwrap_or(&NoSchema);
                check_lists(child, fm.as_ref(), cs, depth + 1)?;
            }
        }
        Value::Array(a) => {
            if let ListKind::Map(keys) = list_kind(meta, a) {
                let mut seen = Vec::new();
                for item in a {
                    let key = item_key(item, &keys).ok_or_else(|| {
                        ApplyError::Invalid(format!(
                            "associative list with keys {keys:?} has an element that omits all key fields: {item}"
                        ))
                    })?;
                    if seen.contains(&key) {
                        return Err(ApplyError::Invalid(format!(
                            "duplicate entries for key {}",
                            Value::Object(key)
                        )));
                    }
                    seen.push(key);
                }
            }
            for item in a {
                check_lists(item, None, schema, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Merges an applied value into the live one: objects member by member, associative lists by
/// key, sets by value, everything else replaced.
fn merge_value(
    live: &mut Value,
    applied: &Value,
    meta: Option<&FieldMeta<'_>>,
    schema: &dyn PatchSchema,
    depth: usize,
) -> Result<(), ApplyError> {
    if depth > MAX_DEPTH {
        return Err(ApplyError::BadRequest("object nested too deeply".into()));
    }
    match (&mut *live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                let m = schema.field(k);
                let child: &dyn PatchSchema =
                    m.as_ref().and_then(|m| m.schema).unwrap_or(&NoSchema);
                match l.get_mut(k) {
                    Some(lv) => merge_value(lv, av, m.as_ref(), child, depth + 1)?,
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_kind(meta, a) {
            ListKind::Map(keys) => {
                let mut seen = Vec::new();
                for item in a {
                    let key = item_key(item, &keys).ok_or_else(|| {
                        ApplyError::Invalid(format!(
                            "associative list with keys {keys:?} has an element that omits all key fields: {item}"
                        ))
                    })?;
                    if seen.contains(&key) {
                        return Err(ApplyError::Invalid(format!(
                            "duplicate entries for key {}",
                            Value::Object(key)
                        )));
                    }
                    let found = l
                        .iter_mut()
                        .find(|x| key.iter().all(|(k, v)| x.get(k) == Some(v)));
                    match found {
                        Some(x) => merge_value(x, item, None, schema, depth + 1)?,
                        None => l.push(item.clone()),
                    }
                    seen.push(key);
                }
            }
            ListKind::Set => {
                for item in a {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListKind::Atomic => *live = applied.clone(),
        },
        _ => *live = applied.clone(),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
