//! Static pods: manifests in the pod manifest directory run without the apiserver; when the
//! API is reachable each gets a mirror pod (`<name>-<node>`, annotation
//! `kubernetes.io/config.mirror`) that carries its status, re-created when deleted.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api::client::{Api, DeleteParams, PostParams, Preconditions};
use k8s_openapi::api::core::v1::Pod;
use sha2::Digest as _;

use super::Ctx;

/// The mirror pod annotation (its value is the static pod's hash).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The static pod's hash annotation (also its uid).
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Where a pod came from (`file`, `api`).
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";

/// Most manifests read from the directory.
const MAX_MANIFESTS: usize = 1000;
/// Largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Parses one manifest into the static pod it declares for `node`.
pub fn parse_manifest(bytes: &[u8], node: &str) -> Result<Pod, String> {
    let v: serde_json::Value = serde_yaml::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(|k| k != "Pod")
    {
        return Err("not a Pod".into());
    }
    let mut pod: Pod = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("the pod has no name")?;
    let mut h = sha2::Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(bytes);
    let hash: String = h
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let m = &mut pod.metadata;
    m.name = Some(format!("{name}-{node}"));
    if m.namespace.as_deref().is_none_or(str::is_empty) {
        m.namespace = Some("default".into());
    }
    m.uid = Some(hash.clone());
    let a = m.annotations.get_or_insert_with(Default::default);
    a.insert(HASH_ANNOTATION.into(), hash);
    a.insert(SOURCE_ANNOTATION.into(), "file".into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_string());
    Ok(pod)
}

/// Reads every manifest (`*.yaml`, `*.yml`, `*.json`, not hidden) of `dir`; bad ones are
/// logged and skipped.
pub fn scan(dir: &Path, node: &str) -> Vec<Pod> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
        })
        .take(MAX_MANIFESTS)
        .collect();
    files.sort();
    let mut out: Vec<Pod> = Vec::new();
    for f in files {
        let bytes = match std::fs::metadata(&f) {
            Ok(m) if m.len() <= MAX_MANIFEST_BYTES && m.is_file() => match std::fs::read(&f) {
                Ok(b) => b,
                Err(_) => continue,
            },
            _ => continue,
        };
        match parse_manifest(&bytes, node) {
            Ok(p) => {
                if out.iter().any(|o| {
                    o.metadata.name == p.metadata.name
                        && o.metadata.namespace == p.metadata.namespace
                }) {
                    tracing::warn!(file = %f.display(), "static pod name used twice; skipped");
                    continue;
                }
                out.push(p);
            }
            Err(e) => tracing::warn!(file = %f.display(), "bad static pod manifest: {e}"),
        }
    }
    out
}

/// The mirror pod posted for `sp`.
pub fn mirror_of(sp: &Pod, node_uid: Option<&str>) -> Pod {
    let mut m = sp.clone();
    let hash = sp.metadata.uid.clone().unwrap_or_default();
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.status = None;
    m.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(MIRROR_ANNOTATION.into(), hash);
    if let Some(uid) = node_uid {
        m.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: sp
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                uid: uid.to_string(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
    }
    m
}

/// Keeps one mirror pod per static pod in the API (created when missing, replaced when it
/// is stale or being deleted, removed when its static pod is gone). Runs until aborted.
pub(crate) async fn mirror_loop(ctx: Arc<Ctx>) {
    let Some(client) = ctx.client.clone() else {
        return;
    };
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !ctx.pods.has_synced() {
            continue;
        }
        let statics: Vec<Arc<Pod>> = ctx.static_pods.read().clone();
        for sp in &statics {
            let ns = sp.metadata.namespace.clone().unwrap_or_default();
            let name = sp.metadata.name.clone().unwrap_or_default();
            let hash = sp.metadata.uid.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match ctx.pods.get(&ns, &name) {
                Some(m)
                    if mirror_hash(&m) == Some(hash.as_str())
                        && m.metadata.deletion_timestamp.is_none() => {}
                Some(m) => {
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions {
                            uid: m.metadata.uid.clone(),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    if let Err(e) = api.delete(&name, &dp).await
                        && !e.is_not_found()
                    {
                        tracing::warn!(pod = %format!("{ns}/{name}"), "deleting a stale mirror pod: {e}");
                    }
                }
                None => {
                    let node_uid = nodes
                        .get_opt(&ctx.cfg.node_name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|n| n.metadata.uid);
                    match api
                        .create(&PostParams::default(), &mirror_of(sp, node_uid.as_deref()))
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(pod = %format!("{ns}/{name}"), "mirror pod created")
                        }
                        Err(e) if e.is_already_exists() => {}
                        Err(e) => {
                            tracing::warn!(pod = %format!("{ns}/{name}"), "creating the mirror pod: {e}")
                        }
                    }
                }
            }
        }
        for m in ctx.pods.list() {
            let Some(h) = mirror_hash(&m) else { continue };
            if statics.iter().any(|s| s.metadata.uid.as_deref() == Some(h)) {
                continue;
            }
            let ns = m.metadata.namespace.clone().unwrap_or_default();
            let name = m.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            if let Err(e) = api.delete(&name, &dp).await
                && !e.is_not_found()
            {
                tracing::warn!(pod = %format!("{ns}/{name}"), "deleting an orphaned mirror pod: {e}");
            }
        }
    }
}

/// The static pod hash a mirror pod carries.
pub fn mirror_hash(p: &Pod) -> Option<&str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_static_pods() {
        let y = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
        let p = parse_manifest(y, "n1").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        // Same content, same uid; another node or content, another uid.
        assert_eq!(
            parse_manifest(y, "n1").unwrap().metadata.uid,
            Some(uid.clone())
        );
        assert_ne!(
            parse_manifest(y, "n2").unwrap().metadata.uid,
            Some(uid.clone())
        );
        let m = mirror_of(&p, Some("node-uid"));
        assert_eq!(mirror_hash(&m), Some(uid.as_str()));
        assert!(m.metadata.uid.is_none());
        assert!(parse_manifest(b"kind: Service\nmetadata: {name: x}\n", "n1").is_err());
        assert!(parse_manifest(b"kind: Pod\nmetadata: {}\n", "n1").is_err());
        assert!(parse_manifest(b"{{{", "n1").is_err());
    }
}
