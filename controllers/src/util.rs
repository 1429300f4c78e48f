//! Small pure helpers over k8s-openapi types shared by the reconcilers.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

/// `namespace/name` of an object (empty namespace for cluster-scoped ones).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of an object's metadata.
    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or(""),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A label selector that matched nothing or could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid label selector: {0}")]
pub struct InvalidSelector(pub String);

/// Whether `labels` satisfy `sel` (matchLabels and matchExpressions, ANDed). An empty
/// selector matches everything, as upstream's `LabelSelectorAsSelector`.
pub fn selector_matches(
    sel: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<bool, InvalidSelector> {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    if let Some(ml) = &sel.match_labels {
        for (k, v) in ml {
            if labels.get(k) != Some(v) {
                return Ok(false);
            }
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let have = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or(&[]);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            op => return Err(InvalidSelector(format!("unknown operator {op:?}"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The controller owner reference of an object, if any.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// An owner reference marking `controller=true, blockOwnerDeletion=true`.
pub fn new_controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether the object is being deleted.
pub fn is_deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// Pod phase ("" when unset).
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Upstream's `IsPodActive`: not finished and not being deleted.
pub fn is_pod_active(pod: &Pod) -> bool {
    !matches!(pod_phase(pod), "Succeeded" | "Failed") && !is_deleting(&pod.metadata)
}

/// The pod's Ready condition: (is it True, when it last changed).
pub fn pod_ready_condition(pod: &Pod) -> (bool, Option<Timestamp>) {
    let c = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    match c {
        Some(c) => (
            c.status == "True",
            c.last_transition_time.as_ref().map(|t| t.0),
        ),
        None => (false, None),
    }
}

/// Whether the pod is Ready.
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod_ready_condition(pod).0
}

/// Upstream's `IsPodAvailable`: ready for at least `min_ready_seconds` at `now`.
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    let (ready, since) = pod_ready_condition(pod);
    if !ready {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    since.is_some_and(|t| t.as_second() + i64::from(min_ready_seconds) <= now.as_second())
}

/// The time after which a ready pod becomes available (for requeueing), if it is not yet.
pub fn pod_available_at(pod: &Pod, min_ready_seconds: i32) -> Option<i64> {
    let (ready, since) = pod_ready_condition(pod);
    if !ready || min_ready_seconds <= 0 {
        return None;
    }
    since.map(|t| t.as_second() + i64::from(min_ready_seconds))
}

/// An int-or-percent scaled against `total`, as upstream's
/// `GetScaledValueFromIntOrPercent`: percentages round up or down as asked.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, InvalidSelector> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| InvalidSelector(format!("invalid value for IntOrString: {s:?}")))?;
            let num = pct * i64::from(total);
            let v = if round_up {
                (num + 99).div_euclid(100)
            } else {
                num.div_euclid(100)
            };
            i32::try_from(v).map_err(|_| InvalidSelector(format!("{s} of {total} overflows")))
        }
    }
}

/// Creation time in seconds (None sorts first, as upstream's "empty creation time").
pub fn created(meta: &ObjectMeta) -> Option<Timestamp> {
    meta.creation_timestamp.as_ref().map(|t| t.0)
}

/// A 32-bit FNV-1a hash.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Upstream's `rand.SafeEncodeString`: maps each character onto a vowel-free alphabet so
/// names never spell words.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Parses a Go-style duration as upstream's flags take them: `40s`, `1m30s`, `500ms`, `2h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(total);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        total += std::time::Duration::try_from_secs_f64(value * secs)
            .map_err(|_| format!("duration {s:?} out of range"))?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "5x", "s", "1m-2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn percent_rounding_matches_upstream() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled_value(&p("25%"), 10, true), Ok(3));
        assert_eq!(scaled_value(&p("25%"), 10, false), Ok(2));
        assert_eq!(scaled_value(&p("0%"), 10, true), Ok(0));
        assert_eq!(scaled_value(&p("100%"), 7, false), Ok(7));
        assert_eq!(scaled_value(&IntOrString::Int(4), 10, true), Ok(4));
        assert!(scaled_value(&p("x"), 10, true).is_err());
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<_, _> = [("app".to_string(), "web".to_string())].into();
        let mut sel = LabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        assert_eq!(selector_matches(&sel, Some(&labels)), Ok(true));
        assert_eq!(selector_matches(&sel, None), Ok(false));
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "DoesNotExist".into(),
            values: None,
        }]);
        assert_eq!(selector_matches(&sel, Some(&labels)), Ok(true));
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "app".into(),
            operator: "NotIn".into(),
            values: Some(vec!["web".into()]),
        }]);
        assert_eq!(selector_matches(&sel, Some(&labels)), Ok(false));
    }

    #[test]
    fn safe_encoding_has_no_vowels() {
        let s = safe_encode(&fnv32a(b"template").to_string());
        assert!(s.chars().all(|c| !"aeiou".contains(c)), "{s}");
        assert_eq!(safe_encode("0"), "4");
    }
}
