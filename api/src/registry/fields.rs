//! Field selectors: parsing (`fields.ParseSelector`), checking against what a resource
//! supports, and matching against an object.

use serde_json::Value;
use store::Requirement;

use super::{ResourceDef, field_value};

/// A field selector the server must answer with 400 BadRequest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldSelectorError {
    /// A term without `=`, `==` or `!=`.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    Syntax { selector: String, term: String },
    /// A field the resource does not support.
    #[error("field label not supported: {0}")]
    Unsupported(String),
    /// More terms than we evaluate.
    #[error("field selector has more than {0} terms")]
    TooManyTerms(usize),
}

const MAX_TERMS: usize = 64;

/// Splits on unescaped `sep`.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        cur.push('\\');
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses a `fieldSelector` (`a=b,c!=d`, values with `\,` `\=` `\\` escapes) into store
/// requirements, rejecting fields `def` does not support. An empty selector gives none.
pub fn parse_field_selector(
    def: &ResourceDef,
    selector: &str,
) -> Result<Vec<Requirement>, FieldSelectorError> {
    let mut out = Vec::new();
    if selector.is_empty() {
        return Ok(out);
    }
    let terms = split_unescaped(selector, ',');
    if terms.len() > MAX_TERMS {
        return Err(FieldSelectorError::TooManyTerms(MAX_TERMS));
    }
    for term in terms {
        if term.is_empty() {
            continue;
        }
        let (field, value, negate) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v, false)
        } else {
            return Err(FieldSelectorError::Syntax {
                selector: selector.to_owned(),
                term,
            });
        };
        let field = unescape(field);
        if !def.supports_field(&field) {
            return Err(FieldSelectorError::Unsupported(field));
        }
        let value = unescape(value);
        out.push(if negate {
            Requirement::NotEquals(field, value)
        } else {
            Requirement::Equals(field, value)
        });
    }
    Ok(out)
}

/// Whether `obj` satisfies every requirement (equality on the rendered field values).
pub fn matches_fields(def: &ResourceDef, obj: &Value, reqs: &[Requirement]) -> bool {
    reqs.iter().all(|r| {
        let get = |f: &str| field_value(def, obj, f).unwrap_or_default();
        match r {
            Requirement::Equals(f, v) => get(f) == *v,
            Requirement::NotEquals(f, v) => get(f) != *v,
            Requirement::In(f, vs) => vs.contains(&get(f)),
            Requirement::NotIn(f, vs) => !vs.contains(&get(f)),
            Requirement::Exists(f) => !get(f).is_empty(),
            Requirement::DoesNotExist(f) => get(f).is_empty(),
        }
    })
}
