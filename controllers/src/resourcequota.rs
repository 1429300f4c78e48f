//! ResourceQuota controller core: the status a quota should carry over the objects of its
//! namespace (`status.hard` = `spec.hard`, `status.used` = the sum over the objects its
//! scopes select, for each hard resource). The usage rules are `api::quota`'s, the same
//! code the apiserver's quota admission charges with.
//!
//! Shell obligations: call [`status`] with every object of the quota's namespace the quota
//! can count (pods, services, claims, and any `count/<resource>` kind), write the result
//! with `replace_status`/`patch_status` when it differs, on every change of those objects
//! and on a full resync period (upstream `--resource-quota-sync-period`, 5 minutes).

use std::collections::BTreeMap;

use api::quota::{self, Object};
use k8s_openapi::api::core::v1::{ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The status `q` should have over `objects`.
pub fn status<'a>(
    q: &ResourceQuota,
    objects: impl IntoIterator<Item = Object<'a>>,
    now_s: i64,
) -> ResourceQuotaStatus {
    let hard = q.spec.as_ref().and_then(|s| s.hard.clone());
    let used = quota::used(q, objects, now_s);
    let used: BTreeMap<String, Quantity> = used
        .into_iter()
        .map(|(k, v)| {
            let s = quota::format_milli(&k, v);
            (k, Quantity(s))
        })
        .collect();
    ResourceQuotaStatus {
        hard: hard.filter(|h| !h.is_empty()),
        used: Some(used).filter(|u| !u.is_empty()),
    }
}

/// Whether the written status differs in amount from `want` (a `1000m` written by someone
/// else equals our `1`).
pub fn differs(cur: Option<&ResourceQuotaStatus>, want: &ResourceQuotaStatus) -> bool {
    let amounts = |l: Option<&BTreeMap<String, Quantity>>| quota::parse_list(l);
    let raw =
        |l: Option<&BTreeMap<String, Quantity>>| l.map(|m| m.keys().cloned().collect::<Vec<_>>());
    let cur_hard = cur.and_then(|s| s.hard.as_ref());
    let cur_used = cur.and_then(|s| s.used.as_ref());
    cur_hard != want.hard.as_ref()
        || raw(cur_used) != raw(want.used.as_ref())
        || amounts(cur_used) != amounts(want.used.as_ref())
}

/// The `count/<resource>.<group>` names of `q` that are not counted from the manager's
/// caches (the shell lists those kinds live): `(group, resource)`.
pub fn live_counted(q: &ResourceQuota, cached: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for k in q
        .spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        let Some(rest) = k.strip_prefix("count/") else {
            continue;
        };
        let (resource, group) = rest.split_once('.').unwrap_or((rest, ""));
        if !cached.iter().any(|(g, r)| *g == group && *r == resource) {
            out.push((group.to_string(), resource.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use serde_json::json;

    #[test]
    fn status_copies_hard_and_counts_used() {
        let q: ResourceQuota = serde_json::from_value(json!({"metadata": {"name": "q"},
            "spec": {"hard": {"pods": "3", "requests.memory": "1Gi", "services.nodeports": "2"}}}))
        .unwrap();
        let p: Pod =
            serde_json::from_value(json!({"metadata": {"name": "a"}, "spec": {"containers": [
            {"name": "c", "image": "x", "resources": {"requests": {"memory": "256Mi"}}}]}}))
            .unwrap();
        let done: Pod = serde_json::from_value(json!({"metadata": {"name": "b"}, "spec": {"containers": [
            {"name": "c", "image": "x", "resources": {"requests": {"memory": "256Mi"}}}]}, "status": {"phase": "Failed"}})).unwrap();
        let s: Service = serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 1}]}})).unwrap();
        let st = status(
            &q,
            [Object::Pod(&p), Object::Pod(&done), Object::Service(&s)],
            0,
        );
        let used = st.used.clone().unwrap();
        assert_eq!(used["pods"].0, "1");
        assert_eq!(used["requests.memory"].0, "256Mi");
        assert_eq!(used["services.nodeports"].0, "1");
        assert_eq!(st.hard.as_ref().unwrap()["pods"].0, "3");
        assert!(differs(None, &st));
        assert!(!differs(Some(&st), &st));
        let mut same = st.clone();
        same.used
            .as_mut()
            .unwrap()
            .insert("pods".into(), Quantity("1000m".into()));
        assert!(
            !differs(Some(&same), &st),
            "equal amounts in another notation"
        );
    }

    #[test]
    fn uncached_count_resources_are_listed_live() {
        let q: ResourceQuota = serde_json::from_value(json!({"metadata": {"name": "q"},
            "spec": {"hard": {"count/deployments.apps": "1", "count/widgets.example.com": "2", "count/pods": "3"}}})).unwrap();
        let live = live_counted(&q, &[("", "pods"), ("apps", "deployments")]);
        assert_eq!(
            live,
            vec![("example.com".to_string(), "widgets".to_string())]
        );
    }
}
