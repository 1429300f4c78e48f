//! `pods/{name}/eviction`: a delete that respects PodDisruptionBudgets, as upstream's
//! eviction REST does (what `kubectl drain` calls).
//!
//! The pod's budget (at most one may select it) must allow a disruption: the eviction then
//! takes one from `status.disruptionsAllowed` and records the pod in `status.disruptedPods`
//! in the same compare-and-swap write, so concurrent evictions never overdraw a budget; the
//! disruption controller recomputes the status afterwards. A budget that forbids it answers
//! 429 TooManyRequests (kubectl drain retries those), with upstream's texts.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};
use store::{RangeEnd, RangeRequest, WatchFilter};

use super::Target;
use super::objects::{self, encode_for_store, metadata_mut, now_rfc3339, prefix_end};
use crate::registry::{self, ResourceDef};
use crate::server::App;
use crate::server::body::Body;
use crate::status::{ApiError, StatusCause};

/// Compare-and-swap attempts on the budget before giving up with a conflict.
const MAX_BUDGET_ATTEMPTS: usize = 8;
/// Upstream's bound on evictions the disruption controller has not confirmed yet.
const MAX_DISRUPTED_PODS: usize = 2000;
/// What upstream puts in every refusal.
const VIOLATES: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Serves POST `pods/{name}/eviction` with `body` (a policy/v1 or v1beta1 `Eviction`).
pub(crate) async fn evict(
    app: &App,
    t: &Target,
    q: &super::Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let _ = headers;
    let eviction: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid Eviction: {e}")))?
    };
    let name = t.name.clone().unwrap_or_default();
    if let Some(n) = eviction.pointer("/metadata/name").and_then(Value::as_str)
        && !n.is_empty()
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object ({n} != {name})"
        )));
    }
    let delete_options = match eviction.get("deleteOptions") {
        Some(o) if !o.is_null() => serde_json::to_vec(o).map_err(ApiError::internal)?,
        _ => Vec::new(),
    };
    let dry = q.get("dryRun").is_some_and(|d| d == "All")
        || eviction
            .pointer("/deleteOptions/dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x == "All"));
    let mut pod_target = t.clone();
    pod_target.subresource = None;
    let namespace = t.namespace.clone().unwrap_or_default();

    let reg = app.registry();
    let pdb_def = reg
        .lookup("policy", "v1", "poddisruptionbudgets")
        .cloned()
        .ok_or_else(|| ApiError::internal("no poddisruptionbudgets resource"))?;
    for _ in 0..MAX_BUDGET_ATTEMPTS {
        let kv = app
            .backend
            .get(pod_target.key())
            .await?
            .ok_or_else(|| ApiError::not_found("", "pods", &name))?;
        let pod: Value = serde_json::from_slice(&kv.value.raw).map_err(ApiError::internal)?;
        // A pod already being deleted, or one that has finished, disrupts nothing.
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        let exempt = pod.pointer("/metadata/deletionTimestamp").is_some()
            || matches!(phase, Some("Succeeded" | "Failed"));
        let budgets = if exempt {
            Vec::new()
        } else {
            budgets_selecting(app, &pdb_def, &namespace, &pod).await?
        };
        match budgets.as_slice() {
            [] => {}
            [(key, rev, pdb)] => match decide(pdb, &pod)? {
                Decision::AllowWithoutCharge => {}
                Decision::Charge(updated) => {
                    if !dry && !charge(app, &pdb_def, key, *rev, updated).await? {
                        // The budget changed under us: read it again.
                        continue;
                    }
                }
            },
            _ => {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
        }
        if !dry {
            objects::delete_for_eviction(app, &pod_target, q, &delete_options).await?;
        }
        return Ok(objects::status_response(StatusCode::CREATED));
    }
    Err(ApiError::conflict(
        "policy",
        "poddisruptionbudgets",
        &name,
        "too many concurrent evictions; please try again",
    ))
}

/// The budgets in `namespace` whose selector selects `pod`: (key, mod revision, object).
async fn budgets_selecting(
    app: &App,
    def: &ResourceDef,
    namespace: &str,
    pod: &Value,
) -> Result<Vec<(Bytes, store::Revision, Value)>, ApiError> {
    let mut prefix = def.key_prefix();
    prefix.push_str(namespace);
    prefix.push('/');
    let prefix = Bytes::from(prefix);
    let end = prefix_end(&prefix);
    let page = app
        .backend
        .list_raw(
            RangeRequest {
                key: prefix,
                range_end: RangeEnd::Until(end),
                revision: None,
                limit: None,
                keys_only: false,
                count_only: false,
                skip_count: true,
            },
            &WatchFilter::default(),
        )
        .await?;
    let labels = pod
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for item in page.items {
        let pdb: Value = serde_json::from_slice(&item.raw).map_err(ApiError::internal)?;
        if !selector_selects(pdb.pointer("/spec/selector"), &labels) {
            continue;
        }
        // The compare-and-swap needs the budget's own revision.
        let Some(kv) = app.backend.get(item.key.clone()).await? else {
            continue;
        };
        out.push((item.key, kv.mod_revision, pdb));
    }
    Ok(out)
}

/// Whether a policy/v1 `LabelSelector` selects `labels`: a missing (null) selector selects
/// nothing, an empty one everything.
fn selector_selects(sel: Option<&Value>, labels: &serde_json::Map<String, Value>) -> bool {
    let Some(sel) = sel.filter(|s| !s.is_null()) else {
        return false;
    };
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()));
    let by_expressions = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|exprs| {
            exprs.iter().all(|e| {
                let key = e.get("key").and_then(Value::as_str).unwrap_or("");
                let values: Vec<&str> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|v| v.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match e.get("operator").and_then(Value::as_str) {
                    Some("In") => get(key).is_some_and(|v| values.contains(&v)),
                    Some("NotIn") => get(key).is_none_or(|v| !values.contains(&v)),
                    Some("Exists") => get(key).is_some(),
                    Some("DoesNotExist") => get(key).is_none(),
                    _ => false,
                }
            })
        });
    by_labels && by_expressions
}

enum Decision {
    /// Evict without touching the budget (an unhealthy pod the policy lets go).
    AllowWithoutCharge,
    /// Evict after writing this budget (one disruption taken).
    Charge(Value),
}

fn pod_is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn refused(cause: String) -> ApiError {
    let mut e = ApiError::too_many_requests(VIOLATES, 10);
    if let Some(d) = e.details.as_mut() {
        d.causes.push(StatusCause {
            reason: "DisruptionBudget".into(),
            message: cause,
            field: String::new(),
        });
    }
    e
}

/// Upstream's check-and-decrement, on the budget `pdb` guarding `pod`.
fn decide(pdb: &Value, pod: &Value) -> Result<Decision, ApiError> {
    let name = pdb
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let int = |p: &str| pdb.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let generation = int("/metadata/generation");
    let observed = int("/status/observedGeneration");
    let (current, desired) = (int("/status/currentHealthy"), int("/status/desiredHealthy"));
    if observed < generation {
        return Err(refused(format!(
            "The disruption budget {name} is still being processed by the server."
        )));
    }
    if !pod_is_ready(pod) {
        let policy = pdb
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(Value::as_str)
            .unwrap_or("IfHealthyBudget");
        // An unready pod adds nothing to the budget's health: AlwaysAllow lets it go, and
        // IfHealthyBudget does while the guarded application is healthy enough.
        if policy == "AlwaysAllow" || (current >= desired && desired > 0) {
            return Ok(Decision::AllowWithoutCharge);
        }
    }
    let allowed = int("/status/disruptionsAllowed");
    if allowed < 0 {
        return Err(ApiError::forbidden("pdb disruptions allowed is negative"));
    }
    let disrupted = pdb
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len);
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(ApiError::forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(refused(format!(
            "The disruption budget {name} needs {desired} healthy pods and has {current} currently"
        )));
    }
    let mut updated = pdb.clone();
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let status = updated
        .as_object_mut()
        .ok_or_else(|| ApiError::internal("stored budget is not an object"))?
        .entry("status")
        .or_insert_with(|| json!({}));
    if let Some(st) = status.as_object_mut() {
        st.insert("disruptionsAllowed".into(), json!(allowed - 1));
        let pods = st
            .entry("disruptedPods")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::internal("stored budget's disruptedPods"))?;
        pods.insert(pod_name, Value::String(now_rfc3339()));
    }
    Ok(Decision::Charge(updated))
}

/// Writes the charged budget if it is still at `rev`; `false` if it changed meanwhile.
async fn charge(
    app: &App,
    def: &ResourceDef,
    key: &Bytes,
    rev: store::Revision,
    mut updated: Value,
) -> Result<bool, ApiError> {
    metadata_mut(&mut updated).remove("resourceVersion");
    let index = registry::extract_index(def, &updated);
    let (raw, slot) = encode_for_store(&mut updated)?;
    let value = index.into_object_value(raw, store::ContentType::Json, Some(slot));
    match app.backend.update(key.clone(), rev, value, None).await? {
        Ok(_) => Ok(true),
        Err(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ready: bool) -> Value {
        json!({"metadata": {"name": "p", "labels": {"app": "web"}},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    fn pdb(allowed: i64, current: i64, desired: i64) -> Value {
        json!({"metadata": {"name": "web-pdb", "generation": 1},
               "spec": {"selector": {"matchLabels": {"app": "web"}}},
               "status": {"observedGeneration": 1, "disruptionsAllowed": allowed,
                          "currentHealthy": current, "desiredHealthy": desired, "expectedPods": 3}})
    }

    #[test]
    fn selectors_as_policy_v1() {
        let labels = pod(true)["metadata"]["labels"].as_object().unwrap().clone();
        assert!(
            selector_selects(Some(&json!({})), &labels),
            "empty selects all"
        );
        assert!(!selector_selects(None, &labels), "null selects none");
        assert!(!selector_selects(Some(&Value::Null), &labels));
        assert!(selector_selects(
            Some(
                &json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]})
            ),
            &labels
        ));
        assert!(!selector_selects(
            Some(
                &json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]})
            ),
            &labels
        ));
    }

    #[test]
    fn a_budget_with_room_is_charged_one_disruption() {
        let Decision::Charge(next) = decide(&pdb(2, 3, 1), &pod(true)).unwrap() else {
            panic!("expected a charge");
        };
        assert_eq!(next["status"]["disruptionsAllowed"], 1);
        assert!(next["status"]["disruptedPods"]["p"].is_string());
    }

    #[test]
    fn an_exhausted_budget_refuses_with_429_and_upstreams_texts() {
        let e = decide(&pdb(0, 2, 2), &pod(true)).err().unwrap();
        assert_eq!(e.code, 429);
        assert_eq!(e.message, VIOLATES);
        let d: &crate::status::StatusDetails = e.details.as_deref().unwrap();
        assert_eq!(
            d.causes[0].message,
            "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"
        );
        let mut stale = pdb(1, 3, 1);
        stale["metadata"]["generation"] = json!(2);
        let e = decide(&stale, &pod(true)).err().unwrap();
        assert_eq!(e.code, 429);
        assert!(
            e.details.unwrap().causes[0]
                .message
                .contains("still being processed")
        );
        assert_eq!(decide(&pdb(-1, 0, 1), &pod(true)).err().unwrap().code, 403);
    }

    #[test]
    fn unready_pods_follow_the_unhealthy_pod_policy() {
        // IfHealthyBudget: an unready pod goes without a charge while the app is healthy.
        assert!(matches!(
            decide(&pdb(0, 2, 2), &pod(false)).unwrap(),
            Decision::AllowWithoutCharge
        ));
        // ... and is refused when the app is already below its budget.
        assert_eq!(decide(&pdb(0, 1, 2), &pod(false)).err().unwrap().code, 429);
        let mut always = pdb(0, 1, 2);
        always["spec"]["unhealthyPodEvictionPolicy"] = json!("AlwaysAllow");
        assert!(matches!(
            decide(&always, &pod(false)).unwrap(),
            Decision::AllowWithoutCharge
        ));
    }
}
