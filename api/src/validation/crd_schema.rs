//! Validation of custom resources against their CRD's structural OpenAPI v3 schema: types,
//! `required`, `enum`, numeric bounds, string/array/map lengths, `nullable`.

use serde_json::{Value, json};

use super::errors::FieldError;

/// Budget on visited nodes, so a hostile object cannot make validation quadratic.
const MAX_NODES: usize = 200_000;

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validates `v` at `path` against `schema`, appending errors.
pub(super) fn validate(
    schema: &Value,
    v: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
    budget: &mut usize,
) {
    if *budget == 0 {
        return;
    }
    *budget -= 1;
    let shown = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true)
            && schema.get("type").is_some()
        {
            let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
            errs.push(FieldError::invalid(
                shown,
                Value::Null,
                format!("{shown} in body must be of type {ty}: \"null\""),
            ));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errs.push(FieldError::invalid(
                shown,
                v.clone(),
                format!(
                    "{shown} in body must be of type integer,string: {:?}",
                    go_kind(v)
                ),
            ));
        }
        return;
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !type_ok(ty, v)
    {
        errs.push(FieldError::invalid(
            shown,
            v.clone(),
            format!("{shown} in body must be of type {ty}: {:?}", go_kind(v)),
        ));
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        let sup: Vec<String> = e
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect();
        let sup_ref: Vec<&str> = sup.iter().map(String::as_str).collect();
        errs.push(FieldError::not_supported(shown, v.clone(), &sup_ref));
    }
    if let Some(n) = v.as_f64() {
        let excl_min = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
        let excl_max = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && (n < min || (excl_min && n == min))
        {
            let op = if excl_min {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errs.push(FieldError::invalid(
                shown,
                v.clone(),
                format!("{shown} in body should be {op} {min}"),
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && (n > max || (excl_max && n == max))
        {
            let op = if excl_max {
                "less than"
            } else {
                "less than or equal to"
            };
            errs.push(FieldError::invalid(
                shown,
                v.clone(),
                format!("{shown} in body should be {op} {max}"),
            ));
        }
    }
    if let Some(sv) = v.as_str() {
        let len = sv.chars().count() as u64;
        if let Some(max) = schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .filter(|m| len > *m)
        {
            errs.push(FieldError {
                field: shown.to_owned(),
                kind: super::FieldErrorKind::TooLong(usize::try_from(max).unwrap_or(usize::MAX)),
                detail: String::new(),
            });
        }
        if let Some(min) = schema
            .get("minLength")
            .and_then(Value::as_u64)
            .filter(|m| len < *m)
        {
            errs.push(FieldError::invalid(
                shown,
                v.clone(),
                format!("{shown} in body should be at least {min} chars long"),
            ));
        }
    }
    match v {
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .filter(|m| n > *m)
            {
                errs.push(FieldError {
                    field: shown.to_owned(),
                    kind: super::FieldErrorKind::TooMany(
                        usize::try_from(max).unwrap_or(usize::MAX),
                    ),
                    detail: String::new(),
                });
            }
            if let Some(min) = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .filter(|m| n < *m)
            {
                errs.push(FieldError::invalid(
                    shown,
                    json!(n),
                    format!("{shown} in body should have at least {min} items"),
                ));
            }
            if let Some(is) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    validate(is, x, &format!("{path}[{i}]"), errs, budget);
                }
            }
        }
        Value::Object(m) => {
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(r) {
                    let p = if path.is_empty() {
                        r.to_owned()
                    } else {
                        format!("{path}.{r}")
                    };
                    errs.push(FieldError::required(p, ""));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                // metadata is ObjectMeta, validated by the generic rules.
                if path.is_empty() && (k == "metadata" || k == "apiVersion" || k == "kind") {
                    continue;
                }
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    validate(ps, x, &p, errs, budget);
                } else if let Some(a) = additional {
                    validate(a, x, &p, errs, budget);
                }
            }
            let n = m.len() as u64;
            if let Some(max) = schema
                .get("maxProperties")
                .and_then(Value::as_u64)
                .filter(|mx| n > *mx)
            {
                errs.push(FieldError {
                    field: shown.to_owned(),
                    kind: super::FieldErrorKind::TooMany(
                        usize::try_from(max).unwrap_or(usize::MAX),
                    ),
                    detail: String::new(),
                });
            }
        }
        _ => {}
    }
}

/// Validates a custom resource against its version's schema.
pub(super) fn validate_cr(schema: &Value, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut budget = MAX_NODES;
    validate(schema, obj, "", &mut errs, &mut budget);
    errs
}
