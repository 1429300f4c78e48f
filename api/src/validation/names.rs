//! Name rules (apimachinery `validation.IsDNS1123Subdomain` and friends), returning the
//! upstream error texts.

/// Which rule a kind's `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces).
    Label,
    /// RFC 1035 label (services).
    Dns1035,
    /// Path segment (RBAC kinds, HPAs): not `.`/`..`, no `/` or `%`.
    PathSegment,
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

fn is_label_chars(s: &str, first_alpha: bool) -> bool {
    let b = s.as_bytes();
    let (Some(&f), Some(&l)) = (b.first(), b.last()) else {
        return false;
    };
    let ok_first = if first_alpha {
        f.is_ascii_lowercase()
    } else {
        f.is_ascii_lowercase() || f.is_ascii_digit()
    };
    ok_first
        && (l.is_ascii_lowercase() || l.is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// RFC 1123 label errors (empty when valid).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 63 {
        e.push("must be no more than 63 characters".to_owned());
    }
    if !is_label_chars(s, false) {
        e.push(LABEL_MSG.to_owned());
    }
    e
}

/// RFC 1123 subdomain errors.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 253 {
        e.push("must be no more than 253 characters".to_owned());
    }
    if s.is_empty() || !s.split('.').all(|p| is_label_chars(p, false)) {
        e.push(SUBDOMAIN_MSG.to_owned());
    }
    e
}

/// RFC 1035 label errors.
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 63 {
        e.push("must be no more than 63 characters".to_owned());
    }
    if !is_label_chars(s, true) {
        e.push(DNS1035_MSG.to_owned());
    }
    e
}

/// Path segment name errors.
pub fn path_segment(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s == "." || s == ".." {
        e.push(format!("may not be '{s}'"));
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            e.push(format!("may not contain '{bad}'"));
        }
    }
    e
}

/// Errors of `name` under `rule`. For a `generateName` prefix the trailing `-` is allowed
/// (upstream validates the prefix with a generated suffix in mind).
pub fn name_errors(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    let n = if prefix {
        format!("{name}a")
    } else {
        name.to_owned()
    };
    match rule {
        NameRule::Subdomain => dns1123_subdomain(&n),
        NameRule::Label => dns1123_label(&n),
        NameRule::Dns1035 => dns1035_label(&n),
        NameRule::PathSegment => path_segment(name),
    }
}

fn qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    let (Some(f), Some(l)) = (b.first(), b.last()) else {
        return false;
    };
    f.is_ascii_alphanumeric()
        && l.is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `IsQualifiedName` (label and annotation keys): errors.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if name.matches('/').count() > 0 {
        e.push(format!("a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
        return e;
    }
    if name.is_empty() {
        e.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        e.push("name part must be no more than 63 characters".to_owned());
    }
    if !name.is_empty() && !qualified_name_part(name) {
        e.push(QUALIFIED_NAME_MSG.to_owned());
    }
    if let Some(p) = prefix {
        if p.is_empty() {
            e.push("prefix part must be non-empty".to_owned());
        } else {
            e.extend(
                dns1123_subdomain(p)
                    .into_iter()
                    .map(|m| format!("prefix part {m}")),
            );
        }
    }
    e
}

/// `IsValidLabelValue` errors.
pub fn label_value(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 63 {
        e.push("must be no more than 63 characters".to_owned());
    }
    if !s.is_empty() && !qualified_name_part(s) {
        e.push(LABEL_VALUE_MSG.to_owned());
    }
    e
}

/// `IsConfigMapKey` errors (ConfigMap and Secret data keys).
pub fn config_key(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 253 {
        e.push("must be no more than 253 characters".to_owned());
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        e.push(CONFIG_KEY_MSG.to_owned());
    }
    if s == "." {
        e.push("must not be '.'".to_owned());
    } else if s == ".." {
        e.push("must not be '..'".to_owned());
    } else if s.starts_with("..") {
        e.push("must not start with '..'".to_owned());
    }
    e
}
