//! OpenAPI v2 as kubectl ≤ 1.29 and client-go's discovery read it: the gnostic
//! `openapi.v2.Document` protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`),
//! converted from the v3 documents so both versions describe the same API.
//!
//! Who reads what: kubectl 1.27 fetches `/openapi/v2` before `create -f`, `apply`, `replace`
//! and `edit`. Its query-parameter verifier scans `paths` for the PATCH operation carrying the
//! kind's `x-kubernetes-group-version-kind` and a `fieldValidation` query parameter (then the
//! server validates); `apply` takes strategic-merge metadata (`x-kubernetes-patch-*`) from
//! `definitions`, and `explain` reads their descriptions. JSON is not accepted on this path.
//!
//! The encoder writes protobuf by hand (field numbers from gnostic's `OpenAPIv2.proto`): the
//! document is produced once per API surface and cached, so a generated message layer would
//! buy nothing. Vendor-extension values are `Any{yaml}`; JSON text is valid YAML, and the Go
//! side parses it with a YAML decoder, so values are written as JSON.

use serde_json::{Map, Value};

const V3_REF: &str = "#/components/schemas/";
const V2_REF: &str = "#/definitions/";

/// A protobuf message being written: fields appended in order.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// A string field; proto3 omits empty ones.
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }

    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A nested message field, written even when empty (presence matters for oneofs).
    fn message(&mut self, field: u32, f: impl FnOnce(&mut Pb)) {
        let mut inner = Pb::default();
        f(&mut inner);
        self.bytes(field, &inner.0);
    }
}

/// The v2 document of the given v3 documents (each `{"paths", "components": {"schemas"}}`),
/// encoded as gnostic protobuf. Later documents do not override paths or definitions an
/// earlier one already gave.
pub(crate) fn encode_document(v3_docs: &[Value], version: &str) -> Vec<u8> {
    let mut paths: Vec<(&String, &Value)> = Vec::new();
    let mut defs: std::collections::BTreeMap<&String, &Value> = Default::default();
    let mut seen_paths = std::collections::HashSet::new();
    for d in v3_docs {
        if let Some(p) = d.get("paths").and_then(Value::as_object) {
            for (k, v) in p {
                if seen_paths.insert(k) {
                    paths.push((k, v));
                }
            }
        }
        if let Some(s) = d.pointer("/components/schemas").and_then(Value::as_object) {
            for (k, v) in s {
                defs.entry(k).or_insert(v);
            }
        }
    }
    paths.sort_by(|a, b| a.0.cmp(b.0));

    let mut doc = Pb::default();
    doc.string(1, "2.0");
    doc.message(2, |info| {
        info.string(1, "Kubernetes");
        info.string(2, version);
    });
    // paths (8): Paths{path = 2: NamedPathItem{name, value: PathItem}}
    doc.message(8, |ps| {
        for (name, item) in &paths {
            ps.message(2, |named| {
                named.string(1, name);
                named.message(2, |pi| path_item(pi, item));
            });
        }
    });
    // definitions (9): Definitions{additional_properties = 1: NamedSchema}
    doc.message(9, |ds| {
        for (name, schema) in &defs {
            ds.message(1, |named| {
                named.string(1, name);
                named.message(2, |s| schema_message(s, schema, 0));
            });
        }
    });
    // securityDefinitions (13) as upstream: BearerToken, an apiKey in the authorization header.
    doc.message(13, |sd| {
        sd.message(1, |named| {
            named.string(1, "BearerToken");
            named.message(2, |item| {
                item.message(2, |k| {
                    k.string(1, "apiKey");
                    k.string(2, "authorization");
                    k.string(3, "header");
                    k.string(4, "Bearer Token authentication");
                });
            });
        });
    });
    doc.message(12, |req| {
        req.message(1, |named| {
            named.string(1, "BearerToken");
            named.message(2, |_| {});
        });
    });
    doc.0
}

/// PathItem: get 2, put 3, post 4, delete 5, options 6, head 7, patch 8, parameters 9.
fn path_item(pi: &mut Pb, item: &Value) {
    for (verb, field) in [
        ("get", 2),
        ("put", 3),
        ("post", 4),
        ("delete", 5),
        ("options", 6),
        ("head", 7),
        ("patch", 8),
    ] {
        if let Some(op) = item.get(verb) {
            pi.message(field, |o| operation(o, op));
        }
    }
    for p in item
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pi.message(9, |pit| parameter_item(pit, p));
    }
    vendor_extensions(pi, item, 10);
}

/// Operation: tags 1, description 3, operation_id 5, produces 6, consumes 7, parameters 8,
/// responses 9, schemes 10, vendor_extension 13.
fn operation(o: &mut Pb, op: &Value) {
    for t in op
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        o.string(1, t.as_str().unwrap_or(""));
    }
    o.string(3, str_of(op, "description"));
    o.string(5, str_of(op, "operationId"));
    let produces: Vec<&String> = op
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|r| r.values())
        .filter_map(|r| r.get("content").and_then(Value::as_object))
        .flat_map(|c| c.keys())
        .collect();
    let mut produced = Vec::new();
    for p in produces {
        if !produced.contains(&p) {
            produced.push(p);
        }
    }
    for p in produced {
        o.string(6, p);
    }
    if let Some(body) = op.get("requestBody") {
        for ct in body
            .get("content")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|c| c.keys())
        {
            o.string(7, ct);
        }
    }
    if let Some(body) = op.get("requestBody") {
        // BodyParameter: description 1, name 2, in 3, required 4, schema 5.
        let schema = body
            .get("content")
            .and_then(Value::as_object)
            .and_then(|c| c.values().next())
            .and_then(|m| m.get("schema"));
        o.message(8, |pit| {
            pit.message(1, |p| {
                p.message(1, |b| {
                    b.string(2, "body");
                    b.string(3, "body");
                    b.boolean(
                        4,
                        body.get("required").and_then(Value::as_bool) == Some(true),
                    );
                    if let Some(s) = schema {
                        b.message(5, |sm| schema_message(sm, s, 0));
                    }
                });
            });
        });
    }
    for p in op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        o.message(8, |pit| parameter_item(pit, p));
    }
    if let Some(rs) = op.get("responses").and_then(Value::as_object) {
        // Responses{response_code = 1: NamedResponseValue{name, value: ResponseValue{response = 1}}}
        o.message(9, |resps| {
            for (code, r) in rs {
                resps.message(1, |named| {
                    named.string(1, code);
                    named.message(2, |rv| {
                        rv.message(1, |resp| {
                            resp.string(1, str_of(r, "description"));
                            let schema = r
                                .get("content")
                                .and_then(Value::as_object)
                                .and_then(|c| c.get("application/json").or(c.values().next()))
                                .and_then(|m| m.get("schema"));
                            if let Some(s) = schema {
                                // SchemaItem{schema = 1}
                                resp.message(2, |si| si.message(1, |sm| schema_message(sm, s, 0)));
                            }
                        });
                    });
                });
            }
        });
    }
    o.string(10, "https");
    vendor_extensions(o, op, 13);
}

/// ParametersItem{parameter = 1: Parameter{non_body_parameter = 2: NonBodyParameter{query 3 |
/// path 4 | header 1}}}; the sub-schemas share field numbers up to `type`/`format`, except
/// that query parameters have `allow_empty_value` (5) before them.
fn parameter_item(pit: &mut Pb, p: &Value) {
    let location = str_of(p, "in");
    let (variant, type_field) = match location {
        "query" => (3, 6),
        "path" => (4, 5),
        "header" => (1, 5),
        _ => return,
    };
    let schema = p.get("schema").cloned().unwrap_or(Value::Null);
    pit.message(1, |param| {
        param.message(2, |nb| {
            nb.message(variant, |s| {
                s.boolean(1, p.get("required").and_then(Value::as_bool) == Some(true));
                s.string(2, location);
                s.string(3, str_of(p, "description"));
                s.string(4, str_of(p, "name"));
                s.string(type_field, str_of(&schema, "type"));
                // unique_items: 20 for query, 19 for path and header.
                let unique = if variant == 3 { 20 } else { 19 };
                s.boolean(
                    unique,
                    schema.get("uniqueItems").and_then(Value::as_bool) == Some(true),
                );
            });
        });
    });
}

/// Every `x-*` key of `v` as a NamedAny at `field`.
fn vendor_extensions(m: &mut Pb, v: &Value, field: u32) {
    if let Some(obj) = v.as_object() {
        for (k, val) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
            m.message(field, |named| {
                named.string(1, k);
                named.message(2, |any| any_yaml(any, val));
            });
        }
    }
}

/// `Any{yaml = 2}` holding `v` as JSON (a YAML subset).
fn any_yaml(any: &mut Pb, v: &Value) {
    any.string(2, &serde_json::to_string(v).unwrap_or_default());
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn v2_ref(r: &str) -> String {
    match r.strip_prefix(V3_REF) {
        Some(name) => format!("{V2_REF}{name}"),
        None => r.to_owned(),
    }
}

/// Nesting bound: schemas are trees of bounded depth; this guards against a malformed CRD
/// schema recursing without end.
const MAX_DEPTH: usize = 64;

/// Schema (gnostic field numbers): _ref 1, format 2, title 3, description 4, default 5,
/// multiple_of 6, maximum 7, exclusive_maximum 8, minimum 9, exclusive_minimum 10,
/// max_length 11, min_length 12, pattern 13, max_items 14, min_items 15, unique_items 16,
/// max_properties 17, min_properties 18, required 19, enum 20, additional_properties 21,
/// type 22, items 23, all_of 24, properties 25, read_only 27, example 30, vendor_extension 31.
fn schema_message(s: &mut Pb, v: &Value, depth: usize) {
    let Some(obj) = v.as_object() else {
        return;
    };
    if depth > MAX_DEPTH {
        return;
    }
    // v3 wraps a `$ref` with siblings in a one-element allOf; v2 readers expect `$ref`.
    let single_ref = obj
        .get("allOf")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 1)
        .and_then(|a| a[0].get("$ref"))
        .and_then(Value::as_str);
    if let Some(r) = obj.get("$ref").and_then(Value::as_str).or(single_ref) {
        s.string(1, &v2_ref(r));
    }
    s.string(2, str_of(v, "format"));
    s.string(3, str_of(v, "title"));
    s.string(4, str_of(v, "description"));
    if let Some(d) = obj.get("default") {
        s.message(5, |a| any_yaml(a, d));
    }
    let num = |k: &str| obj.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let int = |k: &str| obj.get(k).and_then(Value::as_i64).unwrap_or(0);
    let flag = |k: &str| obj.get(k).and_then(Value::as_bool) == Some(true);
    s.double(6, num("multipleOf"));
    s.double(7, num("maximum"));
    s.boolean(8, flag("exclusiveMaximum"));
    s.double(9, num("minimum"));
    s.boolean(10, flag("exclusiveMinimum"));
    s.int64(11, int("maxLength"));
    s.int64(12, int("minLength"));
    s.string(13, str_of(v, "pattern"));
    s.int64(14, int("maxItems"));
    s.int64(15, int("minItems"));
    s.boolean(16, flag("uniqueItems"));
    s.int64(17, int("maxProperties"));
    s.int64(18, int("minProperties"));
    for r in obj
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        s.string(19, r.as_str().unwrap_or(""));
    }
    for e in obj
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        s.message(20, |a| any_yaml(a, e));
    }
    match obj.get("additionalProperties") {
        Some(Value::Bool(b)) => s.message(21, |ap| {
            ap.key(2, 0);
            ap.varint(u64::from(*b));
        }),
        Some(sub @ Value::Object(_)) => s.message(21, |ap| {
            ap.message(1, |m| schema_message(m, sub, depth + 1))
        }),
        _ => {}
    }
    match obj.get("type") {
        Some(Value::String(t)) => s.message(22, |ti| ti.string(1, t)),
        Some(Value::Array(ts)) => s.message(22, |ti| {
            for t in ts.iter().filter_map(Value::as_str).filter(|t| *t != "null") {
                ti.string(1, t);
            }
        }),
        _ => {}
    }
    match obj.get("items") {
        Some(sub @ Value::Object(_)) => s.message(23, |ii| {
            ii.message(1, |m| schema_message(m, sub, depth + 1))
        }),
        Some(Value::Array(subs)) => s.message(23, |ii| {
            for sub in subs {
                ii.message(1, |m| schema_message(m, sub, depth + 1));
            }
        }),
        _ => {}
    }
    if single_ref.is_none() {
        for sub in obj
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            s.message(24, |m| schema_message(m, sub, depth + 1));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        // Properties{additional_properties = 1: NamedSchema}
        s.message(25, |ps| properties(ps, props, depth));
    }
    s.boolean(27, flag("readOnly"));
    if let Some(e) = obj.get("example") {
        s.message(30, |a| any_yaml(a, e));
    }
    vendor_extensions(s, v, 31);
}

fn properties(ps: &mut Pb, props: &Map<String, Value>, depth: usize) {
    for (name, sub) in props {
        ps.message(1, |named| {
            named.string(1, name);
            named.message(2, |m| schema_message(m, sub, depth + 1));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal protobuf reader for the assertions: (field, wire type, payload) triples.
    fn fields(mut b: &[u8]) -> Vec<(u32, u8, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            while let Some((&x, rest)) = b.split_first() {
                *b = rest;
                v |= u64::from(x & 0x7f) << shift;
                shift += 7;
                if x & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
            match wire {
                0 => out.push((field, 0, varint(&mut b).to_le_bytes().to_vec())),
                1 => {
                    out.push((field, 1, b[..8].to_vec()));
                    b = &b[8..];
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    out.push((field, 2, b[..n].to_vec()));
                    b = &b[n..];
                }
                _ => panic!("unexpected wire type {wire}"),
            }
        }
        out
    }

    fn one(b: &[u8], field: u32) -> Vec<u8> {
        fields(b)
            .into_iter()
            .find(|f| f.0 == field)
            .map(|f| f.2)
            .unwrap_or_else(|| panic!("field {field} missing"))
    }

    fn all(b: &[u8], field: u32) -> Vec<Vec<u8>> {
        fields(b)
            .into_iter()
            .filter(|f| f.0 == field)
            .map(|f| f.2)
            .collect()
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn patch_operation_carries_gvk_and_field_validation() {
        let v3 = json!({"paths": {"/api/v1/namespaces/{namespace}/configmaps/{name}": {
            "patch": {"operationId": "patchCoreV1NamespacedConfigMap",
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                "requestBody": {"content": {"application/merge-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}}}, "required": true},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/io.k8s.api.core.v1.ConfigMap"}}}}},
                "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": "ConfigMap"}},
            "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]}},
            "components": {"schemas": {}}});
        let doc = encode_document(&[v3], "v1.33.0");
        assert_eq!(text(&one(&doc, 1)), "2.0");
        let paths = one(&doc, 8);
        let named = one(&paths, 2);
        assert_eq!(
            text(&one(&named, 1)),
            "/api/v1/namespaces/{namespace}/configmaps/{name}"
        );
        let item = one(&named, 2);
        let patch = one(&item, 8);
        assert_eq!(text(&one(&patch, 5)), "patchCoreV1NamespacedConfigMap");
        // Vendor extension: the GVK as YAML (JSON text).
        let ext = one(&patch, 13);
        assert_eq!(text(&one(&ext, 1)), "x-kubernetes-group-version-kind");
        let yaml: Value = serde_json::from_slice(&one(&one(&ext, 2), 2)).unwrap();
        assert_eq!(
            yaml,
            json!({"group": "", "version": "v1", "kind": "ConfigMap"})
        );
        // Parameters: the body first, then fieldValidation as a query parameter.
        let params = all(&patch, 8);
        assert_eq!(params.len(), 2);
        let body = one(&one(&params[0], 1), 1);
        assert_eq!(text(&one(&body, 3)), "body");
        let query = one(&one(&one(&params[1], 1), 2), 3);
        assert_eq!(text(&one(&query, 4)), "fieldValidation");
        assert_eq!(text(&one(&query, 2)), "query");
        // The path-level `name` parameter.
        let path_param = one(&one(&one(&one(&item, 9), 1), 2), 4);
        assert_eq!(text(&one(&path_param, 4)), "name");
        // The response schema refers to definitions.
        let resp = one(&one(&one(&one(&one(&patch, 9), 1), 2), 1), 2);
        let sref = one(&one(&resp, 1), 1);
        assert_eq!(text(&sref), "#/definitions/io.k8s.api.core.v1.ConfigMap");
    }

    #[test]
    fn schemas_keep_refs_types_and_patch_extensions() {
        let v3 = json!({"paths": {}, "components": {"schemas": {"io.k8s.api.core.v1.PodSpec": {
        "description": "PodSpec is a description of a pod.",
        "type": "object",
        "required": ["containers"],
        "properties": {
            "containers": {"type": "array", "items": {"allOf": [{"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}], "default": {}},
                "x-kubernetes-patch-merge-key": "name", "x-kubernetes-patch-strategy": "merge"},
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string", "default": ""}}
        }}}}});
        let doc = encode_document(&[v3], "v1.33.0");
        let named = one(&one(&doc, 9), 1);
        assert_eq!(text(&one(&named, 1)), "io.k8s.api.core.v1.PodSpec");
        let schema = one(&named, 2);
        assert_eq!(text(&one(&schema, 4)), "PodSpec is a description of a pod.");
        assert_eq!(text(&one(&one(&schema, 22), 1)), "object");
        assert_eq!(text(&one(&schema, 19)), "containers");
        let props = all(&one(&schema, 25), 1);
        assert_eq!(props.len(), 2);
        let containers = one(&props[0], 2);
        assert_eq!(text(&one(&one(&containers, 22), 1)), "array");
        let item = one(&one(&containers, 23), 1);
        assert_eq!(
            text(&one(&item, 1)),
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        let exts: Vec<String> = all(&containers, 31)
            .iter()
            .map(|e| text(&one(e, 1)))
            .collect();
        assert_eq!(
            exts,
            [
                "x-kubernetes-patch-merge-key",
                "x-kubernetes-patch-strategy"
            ]
        );
        let node_selector = one(&props[1], 2);
        let ap = one(&one(&node_selector, 21), 1);
        assert_eq!(text(&one(&one(&ap, 22), 1)), "string");
    }

    #[test]
    fn deep_schemas_are_bounded() {
        let mut v = json!({"type": "string"});
        for _ in 0..200 {
            v = json!({"type": "object", "properties": {"x": v}});
        }
        let doc = encode_document(
            &[json!({"components": {"schemas": {"Deep": v}}})],
            "v1.33.0",
        );
        assert!(doc.len() < 64 * 1024, "{}", doc.len());
    }
}
