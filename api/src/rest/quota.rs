//! ResourceQuota admission on create (upstream's `ResourceQuota` admission plugin): the
//! namespace's quotas are read, [`crate::quota::admit`] decides, and every quota the object
//! is charged to gets its new `status.used` in one transaction guarded by each quota's mod
//! revision (a concurrent charge makes the loser re-read and re-decide, so two creates can
//! never both take the last unit). A refused create is a 403 with upstream's message.
//!
//! Like upstream, a quota constrains only once the controller wrote its `status.hard`.
//! Updates of pods, Services and PersistentVolumeClaims that change the spec are charged
//! what they add ([`admit_update`]: a claim's `requests.storage` growing, a Service
//! becoming a NodePort or LoadBalancer); other updates are not re-evaluated (the
//! controller's recalculation corrects usage afterwards).

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceQuota, Service};
use serde_json::{Value, json};
use store::{Compare, CompareOp, CompareTarget, RangeEnd, RangeRequest, Txn, TxnOp};

use super::objects::{encode_for_store, metadata_mut};
use crate::quota::{self, Object};
use crate::registry::{self, ResourceDef};
use crate::server::App;
use crate::status::ApiError;

/// Charge attempts before giving up under contention (each re-reads the quotas).
const MAX_ATTEMPTS: usize = 16;

/// Quotas read per namespace (upstream namespaces hold a handful).
const MAX_QUOTAS: u64 = 256;

fn resource_name(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        def.plural.clone()
    } else {
        format!("{}.{}", def.plural, def.group)
    }
}

fn typed<T: serde::de::DeserializeOwned>(obj: &Value) -> Result<T, ApiError> {
    serde_json::from_value(obj.clone()).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Whether an update of a `def` from `old` to `new` can use more quota: only pods,
/// Services and claims are evaluated on update, and only a spec change can grow what they
/// use (status writes never do), so the common update costs no quota read.
pub(crate) fn update_may_charge(def: &ResourceDef, old: &Value, new: &Value) -> bool {
    def.group.is_empty()
        && matches!(
            def.plural.as_str(),
            "pods" | "services" | "persistentvolumeclaims"
        )
        && old.get("spec") != new.get("spec")
}

/// Admits the update of `old` to `new` (a `def` in `ns`): charges what `new` uses beyond
/// `old` against the namespace's quotas, unless `dry`.
pub(crate) async fn admit_update(
    app: &App,
    def: &ResourceDef,
    ns: &str,
    old: &Value,
    new: &Value,
    dry: bool,
) -> Result<(), ApiError> {
    admit_change(app, def, ns, Some(old), new, dry).await
}

/// Admits the create of `obj` (a `def` in `ns`) against the namespace's quotas, charging
/// them unless `dry`.
pub(crate) async fn admit(
    app: &App,
    def: &ResourceDef,
    ns: &str,
    obj: &Value,
    dry: bool,
) -> Result<(), ApiError> {
    admit_change(app, def, ns, None, obj, dry).await
}

/// The typed view of a `def` object the quota rules evaluate.
enum Typed {
    Pod(Box<Pod>),
    Service(Box<Service>),
    Claim(Box<PersistentVolumeClaim>),
    Other,
}

impl Typed {
    fn of(def: &ResourceDef, obj: &Value) -> Result<Self, ApiError> {
        Ok(match (def.group.as_str(), def.plural.as_str()) {
            ("", "pods") => Self::Pod(Box::new(typed(obj)?)),
            ("", "services") => Self::Service(Box::new(typed(obj)?)),
            ("", "persistentvolumeclaims") => Self::Claim(Box::new(typed(obj)?)),
            _ => Self::Other,
        })
    }

    fn object<'a>(&'a self, def: &'a ResourceDef) -> Object<'a> {
        match self {
            Self::Pod(p) => Object::Pod(p),
            Self::Service(s) => Object::Service(s),
            Self::Claim(c) => Object::Claim(c),
            Self::Other => Object::Other {
                group: &def.group,
                resource: &def.plural,
            },
        }
    }
}

async fn admit_change(
    app: &App,
    def: &ResourceDef,
    ns: &str,
    old: Option<&Value>,
    obj: &Value,
    dry: bool,
) -> Result<(), ApiError> {
    let reg = app.registry();
    let Some(qdef) = reg.lookup("", "v1", "resourcequotas") else {
        return Ok(());
    };
    let prefix = super::object_key(qdef, Some(ns), "");
    let now_s = chrono::Utc::now().timestamp();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let forbidden = |e: quota::QuotaError| {
        ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: {e}",
            resource_name(def)
        ))
    };
    let range = || {
        let mut req = RangeRequest::prefix(prefix.clone());
        req.limit = Some(MAX_QUOTAS);
        app.backend.range(req)
    };
    let mut resp = range().await?;
    if resp.kvs.is_empty() {
        // Most namespaces have no quota: one range read is the whole cost.
        return Ok(());
    }
    let new_typed = Typed::of(def, obj)?;
    let o = new_typed.object(def);
    let old_typed = old.map(|v| Typed::of(def, v)).transpose()?;
    let prev = old_typed.as_ref().map(|t| t.object(def));
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            resp = range().await?;
            if resp.kvs.is_empty() {
                return Ok(());
            }
        }
        let mut txn = Txn {
            compare: Vec::new(),
            success: Vec::new(),
            failure: Vec::new(),
        };
        for kv in &resp.kvs {
            let mut qv: Value = serde_json::from_slice(&kv.value.raw)
                .map_err(|e| ApiError::internal(format!("stored quota: {e}")))?;
            let q: ResourceQuota = serde_json::from_value(qv.clone())
                .map_err(|e| ApiError::internal(format!("stored quota: {e}")))?;
            let decided = match &prev {
                Some(p) => quota::admit_update(&q, p, &o, now_s),
                None => quota::admit(&q, &o, now_s),
            };
            let Some(next) = decided.map_err(forbidden)? else {
                continue;
            };
            let used: serde_json::Map<String, Value> = next
                .iter()
                .map(|(k, v)| (k.clone(), json!(quota::format_milli(k, *v))))
                .collect();
            if let Some(st) = qv.get_mut("status").and_then(Value::as_object_mut) {
                st.insert("used".into(), Value::Object(used));
            }
            metadata_mut(&mut qv).remove("resourceVersion");
            let index = registry::extract_index(qdef, &qv);
            let (raw, slot) = encode_for_store(&mut qv)?;
            txn.compare.push(Compare {
                key: kv.key.clone(),
                range_end: RangeEnd::Single,
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(kv.mod_revision),
            });
            txn.success.push(TxnOp::Put {
                key: kv.key.clone(),
                value: index.into_object_value(raw, store::ContentType::Json, Some(slot)),
                lease: None,
                prev_kv: false,
            });
        }
        if dry || txn.success.is_empty() {
            return Ok(());
        }
        if app.backend.txn(txn).await?.succeeded {
            return Ok(());
        }
    }
    Err(ApiError::conflict(
        "",
        "resourcequotas",
        ns,
        "too many concurrent quota charges; please try again",
    ))
}
