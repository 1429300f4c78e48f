//! Server-side Tables (`meta.k8s.io/v1 Table`) with kube-apiserver's columns per kind.
//!
//! Entry points (pure; the caller passes the clock):
//! - [`IncludeObject::parse`]`(query "includeObject")`.
//! - [`to_table`]`(&def, &objects, &TableOptions, now) -> Value`: a Table for a list (pass the
//!   list's `metadata` in [`TableOptions::list_meta`]) or for one object (watch events: one
//!   object, `no_headers` after the first event).
//! - [`column_definitions`]`(&def)` and [`row_cells`]`(&def, &obj, now)` if the server wants
//!   to assemble rows itself.
//! - [`human_duration`]`(seconds)`: upstream's `duration.HumanDuration`.
//! - [`wants_table`]`(accept_header)`: whether the client asked for a Table (kubectl's
//!   `application/json;as=Table;v=v1;g=meta.k8s.io,...`).
//!
//! Server-side tables carry every column (the `priority: 1` ones are kubectl's `-o wide`).

mod jsonpath;
pub(crate) mod printers;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

pub use jsonpath::{JsonPath, JsonPathError};

use crate::registry::ResourceDef;

/// `includeObject`: what `row.object` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object.
    None,
    /// `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The full object.
    Object,
}

/// An `includeObject` value the server does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unrecognized includeObject value: {0:?}")]
pub struct BadIncludeObject(pub String);

impl IncludeObject {
    /// Parses the `includeObject` query parameter (absent or empty means `Metadata`).
    pub fn parse(q: Option<&str>) -> Result<Self, BadIncludeObject> {
        match q.unwrap_or("") {
            "" | "Metadata" => Ok(Self::Metadata),
            "None" => Ok(Self::None),
            "Object" => Ok(Self::Object),
            other => Err(BadIncludeObject(other.to_owned())),
        }
    }
}

/// Whether an `Accept` header asks for `meta.k8s.io` `Table` (v1 or v1beta1) in JSON before
/// any plain media type, as kubectl sends it for human-readable output.
pub fn wants_table(accept: Option<&str>) -> bool {
    for entry in accept.unwrap_or("").split(',').take(32) {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut as_, mut g, mut v) = ("", "", "");
        for p in parts {
            match p.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("as", x)) => as_ = x,
                Some(("g", x)) => g = x,
                Some(("v", x)) => v = x,
                _ => {}
            }
        }
        let json_like = media == "application/json" || media == "*/*" || media == "application/*";
        if as_ == "Table" && g == "meta.k8s.io" && (v == "v1" || v == "v1beta1") && json_like {
            return true;
        }
        if as_.is_empty() && !media.is_empty() {
            // A plain type listed first wins.
            return false;
        }
    }
    false
}

/// How to build a Table.
#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    pub include_object: IncludeObject,
    /// Leave `columnDefinitions` empty (watch events after the first).
    pub no_headers: bool,
    /// The list's `metadata` (`resourceVersion`, `continue`, `remainingItemCount`); for a
    /// single object, its resourceVersion is used when this is `None`.
    pub list_meta: Option<Value>,
}

/// One column definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    pub priority: i32,
}

impl Column {
    fn to_json(&self) -> Value {
        json!({"name": self.name, "type": self.type_, "format": self.format,
               "description": self.description, "priority": self.priority})
    }
}

/// upstream's `duration.HumanDuration` for a duration in seconds (negative values beyond
/// two seconds of clock skew give `<invalid>`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Upstream's `translateTimestampSince`: `<unknown>` for a missing or unparsable time.
pub fn age(ts: Option<&Value>, now: DateTime<Utc>) -> String {
    match ts
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => human_duration((now - t.with_timezone(&Utc)).num_seconds()),
        None => "<unknown>".into(),
    }
}

/// The column definitions for a resource.
pub fn column_definitions(def: &ResourceDef) -> Vec<Value> {
    if let Some(crd) = def.crd() {
        let mut cols = vec![printers::NAME_COL.to_json()];
        if crd.printer_columns.is_empty() {
            cols.push(json!({"name": "Age", "type": "date", "format": "", "description": printers::AGE_DESC, "priority": 0}));
        }
        for c in &crd.printer_columns {
            cols.push(json!({"name": c.name, "type": c.type_, "format": c.format,
                             "description": c.description, "priority": c.priority}));
        }
        return cols;
    }
    printers::columns(def).iter().map(Column::to_json).collect()
}

/// The cells of one object's row.
pub fn row_cells(def: &ResourceDef, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    if let Some(crd) = def.crd() {
        let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
        let mut cells = vec![name];
        if crd.printer_columns.is_empty() {
            cells.push(json!(age(obj.pointer("/metadata/creationTimestamp"), now)));
        }
        for c in &crd.printer_columns {
            cells.push(crd_cell(&c.type_, &c.json_path, obj, now));
        }
        return cells;
    }
    printers::cells(def, obj, now)
}

/// A CRD printer-column cell, as apiextensions' table convertor renders it.
fn crd_cell(type_: &str, path: &str, obj: &Value, now: DateTime<Utc>) -> Value {
    let Ok(p) = JsonPath::parse(path) else {
        return Value::Null;
    };
    let Some(v) = p.eval(obj).into_iter().next() else {
        return Value::Null;
    };
    match type_ {
        "string" => match v {
            Value::String(s) => json!(s),
            other => json!(other.to_string()),
        },
        "integer" => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map_or(Value::Null, |i| json!(i)),
        "number" => v.as_f64().map_or(Value::Null, |f| json!(f)),
        "boolean" => v.as_bool().map_or(Value::Null, |b| json!(b)),
        "date" => match v
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        {
            Some(t) => json!(human_duration((now - t.with_timezone(&Utc)).num_seconds())),
            None => Value::Null,
        },
        _ => v.clone(),
    }
}

fn row_object(obj: &Value, include: IncludeObject) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(obj.clone()),
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
    }
}

/// Builds a `Table` for `objects` (a list page, or one object for a watch event).
pub fn to_table(
    def: &ResourceDef,
    objects: &[Value],
    opts: &TableOptions,
    now: DateTime<Utc>,
) -> Value {
    let columns = if opts.no_headers {
        Vec::new()
    } else {
        column_definitions(def)
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(row_cells(def, o, now)));
            if let Some(obj) = row_object(o, opts.include_object) {
                row.insert("object".into(), obj);
            }
            Value::Object(row)
        })
        .collect();
    let metadata = match &opts.list_meta {
        Some(m) => m.clone(),
        None => {
            let rv = objects
                .first()
                .and_then(|o| o.pointer("/metadata/resourceVersion"))
                .cloned();
            rv.map_or_else(|| json!({}), |rv| json!({"resourceVersion": rv}))
        }
    };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
           "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests;
