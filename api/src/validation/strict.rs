//! Strict decoding: duplicate-field detection while parsing, and a walk of the object against
//! its OpenAPI schema that finds (and prunes) unknown fields and wrong JSON types, as
//! kube-apiserver's `sigs.k8s.io/json` strict decoding and CRD pruning do.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::openapi::SchemaSet;

/// A JSON tree that keeps every key, duplicates included.
enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
                Ok(Node::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
                Ok(Node::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
                Ok(Node::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Node, E> {
                serde_json::Number::from_f64(n)
                    .map(Node::Number)
                    .ok_or_else(|| E::custom("invalid number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(Node::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Node, E> {
                Ok(Node::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Node::Array(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, Node>()? {
                    v.push((k, x));
                }
                Ok(Node::Object(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A field path built lazily: rendered (`spec.containers[0].image`) only when reported, so
/// walking an object allocates nothing per field.
#[derive(Debug, Clone, Copy)]
pub(super) enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    pub(super) fn render(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Key(p, k) => {
                let mut s = p.render();
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
                s
            }
            Path::Index(p, i) => format!("{}[{i}]", p.render()),
        }
    }
}

fn to_value(n: Node, path: &Path<'_>, dups: &mut Vec<String>) -> Value {
    match n {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Number(x) => Value::Number(x),
        Node::String(s) => Value::String(s),
        Node::Array(a) => Value::Array(
            a.into_iter()
                .enumerate()
                .map(|(i, x)| to_value(x, &Path::Index(path, i), dups))
                .collect(),
        ),
        Node::Object(entries) => {
            let mut m = Map::new();
            for (k, x) in entries {
                let v = to_value(x, &Path::Key(path, &k), dups);
                if m.contains_key(&k) && dups.len() < MAX_REPORTED {
                    dups.push(Path::Key(path, &k).render());
                }
                // last one wins, as Go's decoder does
                m.insert(k, v);
            }
            Value::Object(m)
        }
    }
}

/// At most this many unknown/duplicate fields are reported (the rest are still pruned).
const MAX_REPORTED: usize = 100;

/// Parses JSON, returning the value (last duplicate wins) and the paths of duplicate
/// fields.
pub(super) fn parse_with_duplicates(
    body: &[u8],
) -> Result<(Value, Vec<String>), serde_json::Error> {
    let node: Node = serde_json::from_slice(body)?;
    let mut dups = Vec::new();
    let v = to_value(node, &Path::Root, &mut dups);
    Ok((v, dups))
}

/// Findings of a schema walk.
#[derive(Debug, Default)]
pub(super) struct Walk {
    /// Paths of unknown fields (pruned from the object).
    pub unknown: Vec<String>,
    /// Type mismatches: (path, expected Go-ish type, JSON kind found, enclosing component).
    pub type_errors: Vec<(String, String, &'static str, String)>,
    /// The first invalid base64 value of a `format: byte` field, as Go's decoder words it.
    pub bad_bytes: Option<String>,
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The schema walker: resolves `$ref`/`allOf` through the component set.
pub(super) struct Walker<'a> {
    pub schemas: &'a SchemaSet,
    /// Apply `default`s from the schema (CRD structural defaulting).
    pub apply_defaults: bool,
    pub out: Walk,
    budget: usize,
}

const REF: &str = "#/components/schemas/";

impl<'a> Walker<'a> {
    pub(super) fn new(schemas: &'a SchemaSet, apply_defaults: bool) -> Self {
        Self {
            schemas,
            apply_defaults,
            out: Walk::default(),
            budget: 1_000_000,
        }
    }

    /// Follows `$ref` and single-element `allOf` wrappers; returns the schema and the
    /// component name it came from (if any).
    fn resolve<'s>(
        &self,
        mut s: &'s Value,
        mut comp: Option<&'s str>,
    ) -> (&'s Value, Option<&'s str>)
    where
        'a: 's,
    {
        for _ in 0..16 {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                let name = r.strip_prefix(REF).unwrap_or(r);
                match self.schemas.get(name) {
                    Some(t) => {
                        s = t;
                        comp = Some(name);
                        continue;
                    }
                    None => return (s, comp),
                }
            }
            if let Some([inner]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice)
                && s.get("properties").is_none()
                && s.get("type").is_none()
            {
                s = inner;
                continue;
            }
            break;
        }
        (s, comp)
    }

    /// Walks `v` at `path` against `schema` (the root when `root`), pruning unknown fields.
    pub(super) fn walk(
        &mut self,
        v: &mut Value,
        schema: &Value,
        comp: Option<&str>,
        path: &Path<'_>,
        root: bool,
    ) {
        if self.budget == 0 {
            return;
        }
        self.budget -= 1;
        let (s, comp) = self.resolve(schema, comp);
        let comp_name = comp;
        if v.is_null() {
            return;
        }
        let preserve = s
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        if s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
            if !(v.is_string() || v.is_i64() || v.is_u64() || v.is_number()) {
                self.type_err(path, "intstr.IntOrString", v, comp_name);
            }
            return;
        }
        let ty = s.get("type").and_then(Value::as_str);
        let format = s.get("format").and_then(Value::as_str).unwrap_or("");
        // Quantities are strings that also accept numbers.
        let string_ok = v.is_string()
            || (v.is_number() && comp.is_some_and(|c| c.ends_with("resource.Quantity")));
        match ty {
            Some("string") if !string_ok => {
                self.type_err(path, "string", v, comp_name);
            }
            Some("string") if format == "byte" => {
                // []byte fields travel as base64; Go rejects anything else.
                if let Some(text) = v.as_str()
                    && let Err(e) = base64::engine::general_purpose::STANDARD.decode(text)
                    && self.out.bad_bytes.is_none()
                {
                    self.out.bad_bytes = Some(match e {
                        base64::DecodeError::InvalidByte(at, _)
                        | base64::DecodeError::InvalidLastSymbol { offset: at, .. } => {
                            format!("illegal base64 data at input byte {at}")
                        }
                        _ => format!("illegal base64 data at input byte {}", text.len()),
                    });
                }
            }
            Some("integer") if !(v.is_i64() || v.is_u64()) => {
                let go = if format == "int64" { "int64" } else { "int32" };
                self.type_err(path, go, v, comp_name);
            }
            Some("number") if !v.is_number() => self.type_err(path, "float64", v, comp_name),
            Some("boolean") if !v.is_boolean() => self.type_err(path, "bool", v, comp_name),
            Some("array") => match v {
                Value::Array(items) => {
                    if let Some(item_schema) = s.get("items") {
                        for (i, x) in items.iter_mut().enumerate() {
                            self.walk(x, item_schema, comp, &Path::Index(path, i), false);
                        }
                    }
                }
                other => {
                    let t = format!("[]{}", item_type_name(s));
                    self.type_err(path, &t, other, comp_name);
                }
            },
            Some("object") | None => {
                let Value::Object(m) = v else {
                    if ty == Some("object") || s.get("properties").is_some() {
                        let t = comp.map_or("map[string]interface {}".to_owned(), short_name);
                        self.type_err(path, &t, v, comp_name);
                    }
                    return;
                };
                let props = s.get("properties").and_then(Value::as_object);
                let additional = s.get("additionalProperties");
                if let Some(props) = props {
                    // Defaults first, so they are walked like user input.
                    if self.apply_defaults {
                        for (k, ps) in props {
                            if !m.contains_key(k)
                                && let Some(d) = ps.get("default")
                            {
                                m.insert(k.clone(), d.clone());
                            }
                        }
                    }
                    let mut unknown: Vec<String> = Vec::new();
                    for (k, x) in m.iter_mut() {
                        let p = Path::Key(path, k);
                        match props.get(k) {
                            Some(ps) => self.walk(x, ps, comp, &p, false),
                            None if root && (k == "apiVersion" || k == "kind") => {}
                            None => match additional {
                                Some(a) if a.is_object() => self.walk(x, a, comp, &p, false),
                                Some(Value::Bool(true)) => {}
                                _ if preserve => {}
                                _ => {
                                    if self.out.unknown.len() < MAX_REPORTED {
                                        self.out.unknown.push(p.render());
                                    }
                                    unknown.push(k.clone());
                                }
                            },
                        }
                    }
                    for k in unknown {
                        m.remove(&k);
                    }
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    for (k, x) in m.iter_mut() {
                        self.walk(x, a, comp, &Path::Key(path, k), false);
                    }
                }
                // No properties and no additionalProperties: free-form (RawExtension,
                // FieldsV1, ...), nothing to check.
            }
            _ => {}
        }
    }

    fn type_err(&mut self, path: &Path<'_>, expected: &str, v: &Value, comp: Option<&str>) {
        if self.out.type_errors.len() < MAX_REPORTED {
            self.out.type_errors.push((
                path.render(),
                expected.to_owned(),
                json_kind(v),
                comp.unwrap_or_default().to_owned(),
            ));
        }
    }
}

/// `io.k8s.api.apps.v1.DeploymentSpec` -> `v1.DeploymentSpec`.
fn short_name(c: &str) -> String {
    let mut parts = c.rsplit('.');
    let last = parts.next().unwrap_or("");
    let ver = parts.next().unwrap_or("");
    format!("{ver}.{last}")
}

fn item_type_name(s: &Value) -> String {
    let items = s.get("items");
    match items.and_then(|i| i.get("$ref")).and_then(Value::as_str) {
        Some(r) => short_name(r.strip_prefix(REF).unwrap_or(r)),
        None => match items.and_then(|i| i.get("type")).and_then(Value::as_str) {
            Some("integer") => "int32".into(),
            Some("boolean") => "bool".into(),
            Some(t) => t.into(),
            None => "interface {}".into(),
        },
    }
}

/// Go's `UnmarshalTypeError` text for one mismatch.
pub(super) fn type_error_text(path: &str, expected: &str, found: &str, comp: &str) -> String {
    let strct = comp.rsplit('.').next().unwrap_or("");
    if strct.is_empty() {
        format!("json: cannot unmarshal {found} into Go value of type {expected}")
    } else {
        format!(
            "json: cannot unmarshal {found} into Go struct field {strct}.{path} of type {expected}"
        )
    }
}
