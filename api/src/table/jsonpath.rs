//! The JSONPath subset CRD printer columns use: `.a.b`, `['a.b']`, `[0]`, `[-1]`, `[*]`,
//! `.*` and filters `[?(@.type=="Ready")]` (`==`, `!=`, or bare existence).

use serde_json::Value;

/// A JSONPath that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath {path:?}: {reason}")]
pub struct JsonPathError {
    pub path: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Field(String),
    Index(i64),
    Wildcard,
    Filter {
        path: Vec<String>,
        op: Option<(bool, Value)>,
    },
}

/// A parsed JSONPath.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    segs: Vec<Seg>,
}

const MAX_SEGMENTS: usize = 64;

impl JsonPath {
    /// Parses `path` (surrounding `{}` allowed).
    pub fn parse(path: &str) -> Result<Self, JsonPathError> {
        let err = |reason| JsonPathError {
            path: path.to_owned(),
            reason,
        };
        let mut s = path.trim();
        if let Some(inner) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            s = inner.trim();
        }
        s = s.strip_prefix('$').unwrap_or(s);
        let b = s.as_bytes();
        let mut i = 0;
        let mut segs = Vec::new();
        while i < b.len() {
            if segs.len() >= MAX_SEGMENTS {
                return Err(err("too many segments"));
            }
            match b[i] {
                b'.' => {
                    i += 1;
                    if i < b.len() && b[i] == b'.' {
                        return Err(err("recursive descent is not supported"));
                    }
                    let start = i;
                    while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                        i += 1;
                    }
                    let name = &s[start..i];
                    if name == "*" {
                        segs.push(Seg::Wildcard);
                    } else if !name.is_empty() {
                        segs.push(Seg::Field(name.to_owned()));
                    }
                }
                b'[' => {
                    let end = find_close(s, i).ok_or_else(|| err("unclosed ["))?;
                    let inner = s[i + 1..end].trim();
                    segs.push(parse_bracket(inner).ok_or_else(|| err("bad [] expression"))?);
                    i = end + 1;
                }
                _ => {
                    // a leading bare name (`metadata.name`)
                    let start = i;
                    while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                        i += 1;
                    }
                    segs.push(Seg::Field(s[start..i].to_owned()));
                }
            }
        }
        Ok(Self { segs })
    }

    /// Every value the path selects, in document order.
    pub fn eval<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut cur = vec![root];
        for seg in &self.segs {
            let mut next = Vec::new();
            for v in cur {
                match seg {
                    Seg::Field(f) => {
                        if let Some(x) = v.get(f.as_str()) {
                            next.push(x);
                        }
                    }
                    Seg::Index(n) => {
                        if let Some(a) = v.as_array() {
                            let len = i64::try_from(a.len()).unwrap_or(i64::MAX);
                            let idx = if *n < 0 { len + n } else { *n };
                            if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                                next.push(x);
                            }
                        }
                    }
                    Seg::Wildcard => match v {
                        Value::Array(a) => next.extend(a.iter()),
                        Value::Object(m) => next.extend(m.values()),
                        _ => {}
                    },
                    Seg::Filter { path, op } => {
                        for item in v.as_array().into_iter().flatten() {
                            let mut t = Some(item);
                            for p in path {
                                t = t.and_then(|x| x.get(p.as_str()));
                            }
                            let keep = match (t, op) {
                                (Some(_), None) => true,
                                (Some(x), Some((eq, want))) => loose_eq(x, want) == *eq,
                                (None, Some((false, _))) => true,
                                (None, _) => false,
                            };
                            if keep {
                                next.push(item);
                            }
                        }
                    }
                }
            }
            cur = next;
        }
        cur
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn find_close(s: &str, open: usize) -> Option<usize> {
    let mut quote: Option<u8> = None;
    let mut depth = 0i32;
    for (i, c) in s.bytes().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(c),
            (None, b'[') => depth += 1,
            (None, b']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
}

fn parse_bracket(inner: &str) -> Option<Seg> {
    if inner == "*" {
        return Some(Seg::Wildcard);
    }
    if let Some(name) = unquote(inner) {
        return Some(Seg::Field(name.to_owned()));
    }
    if let Ok(n) = inner.parse::<i64>() {
        return Some(Seg::Index(n));
    }
    let f = inner.strip_prefix("?(")?.strip_suffix(')')?.trim();
    let (lhs, op) = if let Some((l, r)) = f.split_once("==") {
        (l, Some((true, literal(r)?)))
    } else if let Some((l, r)) = f.split_once("!=") {
        (l, Some((false, literal(r)?)))
    } else {
        (f, None)
    };
    let lhs = lhs.trim().strip_prefix('@')?;
    let path: Vec<String> = lhs
        .split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    Some(Seg::Filter { path, op })
}

fn literal(s: &str) -> Option<Value> {
    let s = s.trim();
    if let Some(q) = unquote(s) {
        return Some(Value::String(q.to_owned()));
    }
    serde_json::from_str(s).ok()
}
