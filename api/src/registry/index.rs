//! What the store indexes of an object: labels and selectable field values.

use serde_json::Value;

use super::ResourceDef;

/// The metadata a write hands the store beside the raw bytes (`store::ObjectValue`'s
/// `uid`, `kind`, `namespace`, `name`, `labels`, `fields`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexedObject {
    pub uid: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `metadata.labels`, sorted by key.
    pub labels: Vec<(String, String)>,
    /// Every field selector the resource supports with the object's value (missing values
    /// as upstream renders them: `""`, `"false"`, `"0"`), sorted by field name.
    pub fields: Vec<(String, String)>,
}

impl IndexedObject {
    /// The store value for `raw` (the serialized object) with this metadata.
    pub fn into_object_value(
        self,
        raw: bytes::Bytes,
        content_type: store::ContentType,
        rv_slot: Option<u32>,
    ) -> store::ObjectValue {
        store::ObjectValue {
            uid: self.uid,
            kind: self.kind,
            namespace: self.namespace,
            name: self.name,
            labels: self.labels,
            fields: self.fields,
            content_type,
            raw,
            rv_slot,
        }
    }
}

/// Extracts labels and the field-selector values of `obj`, a resource of `def`.
pub fn extract_index(def: &ResourceDef, obj: &Value) -> IndexedObject {
    let meta = obj.get("metadata");
    let s = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let mut labels: Vec<(String, String)> = meta
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default();
    labels.sort();
    let mut fields: Vec<(String, String)> = def
        .field_selectors
        .iter()
        .map(|f| (f.clone(), field_value(def, obj, f).unwrap_or_default()))
        .collect();
    fields.sort();
    IndexedObject {
        uid: s("uid"),
        kind: def.kind.clone(),
        namespace: if def.namespaced {
            s("namespace")
        } else {
            String::new()
        },
        name: s("name"),
        labels,
        fields,
    }
}

/// The value of field selector `field` on `obj`, as upstream's `GetAttrs` renders it;
/// `None` if the resource does not support that field.
pub fn field_value(def: &ResourceDef, obj: &Value, field: &str) -> Option<String> {
    if !def.supports_field(field) {
        return None;
    }
    // Fields whose selector name differs from their JSON path.
    let path = match (def.group.as_str(), def.kind.as_str(), field) {
        ("", "Event", "source") => "source.component",
        ("batch", "Job", "status.successful") => "status.succeeded",
        _ => field,
    };
    let mut cur = Some(obj);
    for part in path.split('.') {
        cur = cur.and_then(|c| c.get(part));
    }
    let rendered = match cur {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => default_for(field).to_owned(),
    };
    Some(rendered)
}

/// What upstream renders for a field the object leaves unset (Go zero values).
fn default_for(field: &str) -> &'static str {
    match field {
        "spec.hostNetwork" | "spec.unschedulable" => "false",
        "status.replicas" | "status.successful" => "0",
        _ => "",
    }
}
