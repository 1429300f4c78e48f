//! Label selectors (`labels.Parse` upstream): equality (`k=v`, `k==v`, `k!=v`) and set-based
//! (`k in (a,b)`, `k notin (a,b)`, `k`, `!k`) requirements, all of which must hold.

use store::Requirement;

use crate::status::ApiError;

/// Most requirements one selector may hold.
const MAX_REQUIREMENTS: usize = 64;

fn bad(selector: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why} (labelSelector {selector:?})"
    ))
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(selector: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(selector, "expected a parenthesised set of values"))?;
    let mut vals = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_value(v) {
            return Err(bad(selector, &format!("invalid label value: {v:?}")));
        }
        vals.push(v.to_string());
    }
    vals.sort();
    vals.dedup();
    Ok(vals)
}

/// Parses a label selector into requirements (empty selector: no requirement).
pub fn parse_label_selector(selector: &str) -> Result<Vec<Requirement>, ApiError> {
    let mut out = Vec::new();
    if selector.trim().is_empty() {
        return Ok(out);
    }
    for term in split_terms(selector) {
        let t = term.trim();
        if t.is_empty() {
            return Err(bad(selector, "found ',', expected: identifier"));
        }
        if out.len() >= MAX_REQUIREMENTS {
            return Err(bad(selector, "too many requirements"));
        }
        let req = if let Some(k) = t.strip_prefix('!') {
            let k = k.trim();
            if !valid_key(k) {
                return Err(bad(selector, &format!("invalid label key {k:?}")));
            }
            Requirement::DoesNotExist(k.to_string())
        } else if let Some((k, v)) = t.split_once("!=") {
            Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once("==") {
            Requirement::Equals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once('=') {
            Requirement::Equals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, rest)) = t.split_once(" notin ") {
            Requirement::NotIn(k.trim().to_string(), parse_set(selector, rest)?)
        } else if let Some((k, rest)) = t.split_once(" in ") {
            Requirement::In(k.trim().to_string(), parse_set(selector, rest)?)
        } else if t.contains(['<', '>', '(', ')', ' ']) {
            return Err(bad(selector, &format!("unsupported requirement {t:?}")));
        } else {
            Requirement::Exists(t.to_string())
        };
        let (key, value) = match &req {
            Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => (k, None),
        };
        if !valid_key(key) {
            return Err(bad(selector, &format!("invalid label key {key:?}")));
        }
        if let Some(v) = value
            && !valid_value(v)
        {
            return Err(bad(selector, &format!("invalid label value: {v:?}")));
        }
        out.push(req);
    }
    Ok(out)
}

/// Whether sorted-or-not `(key, value)` pairs satisfy every requirement.
pub fn matches(reqs: &[Requirement], pairs: &[(String, String)]) -> bool {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
    };
    reqs.iter().all(|r| match r {
        Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
        Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::DoesNotExist(k) => get(k).is_none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_set_based() {
        let r =
            parse_label_selector("app=web,tier!=db,env in (prod, staging),!legacy,team").unwrap();
        assert_eq!(r.len(), 5);
        let ok = l(&[("app", "web"), ("env", "prod"), ("team", "x")]);
        assert!(matches(&r, &ok));
        let bad_env = l(&[("app", "web"), ("env", "dev"), ("team", "x")]);
        assert!(!matches(&r, &bad_env));
        let legacy = l(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "x"),
            ("legacy", "1"),
        ]);
        assert!(!matches(&r, &legacy));
        let r = parse_label_selector("env notin (a,b)").unwrap();
        assert!(matches(&r, &l(&[])));
        assert!(!matches(&r, &l(&[("env", "a")])));
        assert!(parse_label_selector("").unwrap().is_empty());
    }

    #[test]
    fn rejects_garbage() {
        for s in ["a=b,", "k in a,b", "a b", "x>3", "=v", "k=v v"] {
            assert_eq!(parse_label_selector(s).unwrap_err().code, 400, "{s}");
        }
    }
}
