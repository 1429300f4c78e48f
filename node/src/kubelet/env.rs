//! A container's environment as upstream's kubelet computes it (sans-IO): `envFrom` first
//! (ConfigMaps and Secrets, with prefixes), then `env` in order, `$(VAR)` references expanded
//! against what was defined before, `valueFrom` resolved from the pod (fieldRef), the
//! container's resources (resourceFieldRef) and ConfigMap/Secret keys. The objects are
//! fetched by the caller beforehand ([`referenced_objects`]).

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

use super::quantity;

/// Why an environment cannot be built (`CreateContainerConfigError`); the message is the
/// one upstream reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// What [`resolve`] reads besides the pod.
#[derive(Debug, Clone, Default)]
pub struct EnvInputs {
    /// The node's name (`spec.nodeName` when the pod has none yet).
    pub node_name: String,
    /// The pod's IP, once known.
    pub pod_ip: Option<String>,
    /// The node's IP.
    pub host_ip: String,
    /// ConfigMaps by name; `None`: it does not exist.
    pub config_maps: HashMap<String, Option<ConfigMap>>,
    /// Secrets by name; `None`: it does not exist.
    pub secrets: HashMap<String, Option<Secret>>,
    /// The node's allocatable CPU in millicores (the default of `limits.cpu`).
    pub node_cpu_millis: i64,
    /// The node's allocatable memory in bytes (the default of `limits.memory`).
    pub node_memory_bytes: i64,
    /// The node's allocatable ephemeral storage in bytes.
    pub node_storage_bytes: i64,
    /// The Service variables ([`service_env`]): referable by `$(VAR)` and added after the
    /// container's own variables unless it defines them itself.
    pub service_env: Vec<(String, String)>,
}

/// Upstream's `makeEnvVariableName`: upper case, `-` as `_`.
fn env_var_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// The Service variables of a pod in namespace `ns` (upstream's `getServiceEnvVarMap` and
/// `envvars.FromServices`): every Service of `ns` with a cluster IP when `service_links`
/// is set, and always `default/kubernetes` (a Service of the pod's namespace with the same
/// name wins). For each: `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT` (the first port),
/// `{SVC}_SERVICE_PORT_{NAME}` per named port and the Docker link variables
/// (`{SVC}_PORT`, `{SVC}_PORT_{port}_{PROTO}[_PROTO|_PORT|_ADDR]`). Sorted by Service name
/// (upstream's order is a map's; the set is what matters).
pub fn service_env(
    services: &[std::sync::Arc<k8s_openapi::api::core::v1::Service>],
    ns: &str,
    service_links: bool,
) -> Vec<(String, String)> {
    use std::collections::BTreeMap;
    let mut chosen: BTreeMap<String, &k8s_openapi::api::core::v1::Service> = BTreeMap::new();
    for s in services {
        let (Some(name), Some(sns)) = (s.metadata.name.as_ref(), s.metadata.namespace.as_ref())
        else {
            continue;
        };
        let ip = s.spec.as_ref().and_then(|sp| sp.cluster_ip.as_deref());
        if matches!(ip, None | Some("") | Some("None")) {
            continue;
        }
        if sns == "default" && name == "kubernetes" {
            // The master service: only when the pod's namespace has none of that name.
            if sns == ns || !chosen.contains_key(name) {
                chosen.insert(name.clone(), s);
            }
        } else if sns == ns && service_links {
            chosen.insert(name.clone(), s);
        }
    }
    let mut out = Vec::new();
    for (name, s) in chosen {
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        let Some(first) = ports.first() else {
            continue;
        };
        let prefix = env_var_name(&name);
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        let port_var = format!("{prefix}_SERVICE_PORT");
        out.push((port_var.clone(), first.port.to_string()));
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{port_var}_{}", env_var_name(pn)),
                    p.port.to_string(),
                ));
            }
        }
        let host = |port: i32| match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(_)) => format!("[{ip}]:{port}"),
            _ => format!("{ip}:{port}"),
        };
        for (i, p) in ports.iter().enumerate() {
            let proto = p
                .protocol
                .as_deref()
                .filter(|p| !p.is_empty())
                .unwrap_or("TCP");
            let lower = proto.to_lowercase();
            let url = format!("{lower}://{}", host(p.port));
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), lower.clone()));
            out.push((format!("{pp}_PORT"), p.port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.clone()));
        }
    }
    out
}

/// The ConfigMaps and Secrets a container's environment reads: `(config maps, secrets)`.
pub fn referenced_objects(c: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            cms.insert(r.name.clone());
        }
        if let Some(r) = &f.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(src) = &e.value_from {
            if let Some(r) = &src.config_map_key_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &src.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// Expands `$(VAR)` in `input` with `lookup` exactly as upstream's `expansion.Expand`:
/// `$$` is an escaped `$`, an unknown or unterminated reference is left as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let b = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < b.len() {
        if b[cursor] == b'$' && cursor + 1 < b.len() {
            out.extend_from_slice(&b[checkpoint..cursor]);
            let rest = &b[cursor + 1..];
            let advance = match rest[0] {
                b'$' => {
                    out.push(b'$');
                    1
                }
                b'(' => match rest.iter().position(|&c| c == b')') {
                    Some(end) => {
                        let name = String::from_utf8_lossy(&rest[1..end]);
                        match lookup(&name) {
                            Some(v) => out.extend_from_slice(v.as_bytes()),
                            None => {
                                out.extend_from_slice(b"$(");
                                out.extend_from_slice(name.as_bytes());
                                out.push(b')');
                            }
                        }
                        end + 1
                    }
                    None => {
                        out.extend_from_slice(b"$(");
                        1
                    }
                },
                c => {
                    out.push(b'$');
                    out.push(c);
                    1
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.extend_from_slice(&b[checkpoint.min(b.len())..]);
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// An ordered environment where a later definition replaces an earlier one in place.
#[derive(Debug, Default)]
struct EnvList {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl EnvList {
    fn set(&mut self, k: String, v: String) {
        match self.index.get(&k) {
            Some(&i) => self.vars[i].1 = v,
            None => {
                self.index.insert(k.clone(), self.vars.len());
                self.vars.push((k, v));
            }
        }
    }

    fn get(&self, k: &str) -> Option<String> {
        self.index.get(k).map(|&i| self.vars[i].1.clone())
    }
}

/// A valid environment variable name (upstream's relaxed rule: printable ASCII, no `=`).
fn valid_env_name(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| (32..127).contains(&b) && b != b'=')
}

/// A field of the pod for `fieldRef` (env vars support single labels/annotations only).
pub fn pod_field(pod: &Pod, path: &str, inp: &EnvInputs) -> Result<String, EnvError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let lookup = |prefix: &str, map: Option<&std::collections::BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(|k| map.and_then(|m| m.get(k)).cloned().unwrap_or_default())
    };
    if let Some(v) = lookup("metadata.labels['", m.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = lookup("metadata.annotations['", m.annotations.as_ref()) {
        return Ok(v);
    }
    let pod_ip = || inp.pod_ip.clone().unwrap_or_default();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| inp.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => inp.host_ip.clone(),
        "status.podIP" | "status.podIPs" => pod_ip(),
        other => {
            return Err(EnvError(format!(
                "unsupported fieldRef fieldPath {other:?}"
            )));
        }
    })
}

/// The value of a `resourceFieldRef` for container `c` (limits default to the node's
/// allocatable, as upstream).
fn resource_field(
    pod: &Pod,
    c: &Container,
    sel: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    inp: &EnvInputs,
) -> Result<String, EnvError> {
    let target = match sel.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => pod
            .spec
            .as_ref()
            .and_then(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .find(|x| x.name == name)
            })
            .ok_or_else(|| EnvError(format!("container {name:?} not found in the pod")))?,
        None => c,
    };
    let res = target.resources.as_ref();
    let get = |kind: &str, key: &str| {
        let map = match kind {
            "limits" => res.and_then(|r| r.limits.as_ref()),
            _ => res.and_then(|r| r.requests.as_ref()),
        };
        map.and_then(|m| m.get(key)).map(|q| q.0.clone())
    };
    let (kind, key) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError(format!("unsupported resource {:?}", sel.resource)))?;
    let divisor = sel.divisor.as_ref().map(|q| q.0.as_str()).unwrap_or("1");
    let div = quantity::parse(divisor)
        .filter(|d| d.0 > 0)
        .ok_or_else(|| EnvError(format!("invalid divisor {divisor:?}")))?;
    let value_milli: i128 = match (kind, key) {
        ("limits" | "requests", "cpu" | "memory" | "ephemeral-storage") => {
            match get(kind, key).or_else(|| {
                // Requests default to limits (API defaulting does the same).
                (kind == "requests").then(|| get("limits", key)).flatten()
            }) {
                Some(q) => {
                    quantity::parse(&q)
                        .ok_or_else(|| EnvError(format!("invalid quantity {q:?}")))?
                        .0
                }
                None if kind == "limits" => match key {
                    "cpu" => i128::from(inp.node_cpu_millis),
                    "memory" => i128::from(inp.node_memory_bytes) * 1000,
                    _ => i128::from(inp.node_storage_bytes) * 1000,
                },
                None => 0,
            }
        }
        _ => {
            return Err(EnvError(format!("unsupported resource {:?}", sel.resource)));
        }
    };
    // ceil(value / divisor), both in milli-units.
    let v = (value_milli + div.0 - 1).div_euclid(div.0);
    Ok(v.to_string())
}

fn missing(kind: &str, name: &str) -> EnvError {
    EnvError(format!("{kind} \"{name}\" not found"))
}

/// The environment of container `c` of `pod` (in order), or why it cannot be built.
pub fn resolve(
    pod: &Pod,
    c: &Container,
    inp: &EnvInputs,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut env = EnvList::default();
    for f in c.env_from.iter().flatten() {
        let prefix = f.prefix.clone().unwrap_or_default();
        if let Some(r) = &f.config_map_ref {
            match inp.config_maps.get(&r.name).cloned().flatten() {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        let name = format!("{prefix}{k}");
                        if valid_env_name(&name) {
                            env.set(name, v.clone());
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(missing("configmap", &r.name)),
            }
        }
        if let Some(r) = &f.secret_ref {
            match inp.secrets.get(&r.name).cloned().flatten() {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        let name = format!("{prefix}{k}");
                        if valid_env_name(&name) {
                            env.set(name, String::from_utf8_lossy(&v.0).into_owned());
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(missing("secret", &r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let raw = e.value.clone().unwrap_or_default();
                expand(&raw, |n| {
                    env.get(n).or_else(|| {
                        inp.service_env
                            .iter()
                            .find(|(k, _)| k == n)
                            .map(|(_, v)| v.clone())
                    })
                })
            }
            Some(src) => {
                if let Some(f) = &src.field_ref {
                    pod_field(pod, &f.field_path, inp)?
                } else if let Some(r) = &src.resource_field_ref {
                    resource_field(pod, c, r, inp)?
                } else if let Some(r) = &src.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match inp.config_maps.get(&r.name).cloned().flatten() {
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(EnvError(format!(
                                    "couldn't find key {} in ConfigMap {}/{}",
                                    r.key,
                                    pod.metadata.namespace.as_deref().unwrap_or(""),
                                    r.name
                                )));
                            }
                        },
                        None if optional => continue,
                        None => return Err(missing("configmap", &r.name)),
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match inp.secrets.get(&r.name).cloned().flatten() {
                        Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(EnvError(format!(
                                    "couldn't find key {} in Secret {}/{}",
                                    r.key,
                                    pod.metadata.namespace.as_deref().unwrap_or(""),
                                    r.name
                                )));
                            }
                        },
                        None if optional => continue,
                        None => return Err(missing("secret", &r.name)),
                    }
                } else {
                    String::new()
                }
            }
        };
        env.set(e.name.clone(), value);
    }
    // The Service variables last; the container's own definitions win.
    for (k, v) in &inp.service_env {
        if env.get(k).is_none() {
            env.set(k.clone(), v.clone());
        }
    }
    Ok(env.vars)
}

/// `command` and `args` with `$(VAR)` expanded against the container's environment.
pub fn expand_argv(list: &[String], env: &[(String, String)]) -> Vec<String> {
    let map: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    list.iter()
        .map(|s| expand(s, |n| map.get(n).map(|v| (*v).to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lookup(n: &str) -> Option<String> {
        match n {
            "A" => Some("a".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_matches_upstream() {
        // Cases from upstream's expand_test.go.
        assert_eq!(expand("$(A)", lookup), "a");
        assert_eq!(expand("x$(A)y", lookup), "xay");
        assert_eq!(expand("$(EMPTY)", lookup), "");
        assert_eq!(expand("$(NOPE)", lookup), "$(NOPE)");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("$$$(A)", lookup), "$a");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("$A", lookup), "$A");
        assert_eq!(expand("$", lookup), "$");
        assert_eq!(expand("a$", lookup), "a$");
        assert_eq!(expand("é$(A)ü", lookup), "éaü");
        assert_eq!(expand("$(A)$(A)", lookup), "aa");
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": [{
                "name": "c", "image": "i",
                "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "P_"},
                            {"secretRef": {"name": "nosecret", "optional": true}}],
                "env": [
                    {"name": "FIRST", "value": "1"},
                    {"name": "REF", "value": "$(FIRST)-$(P_k)-$(LATER)"},
                    {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                    {"name": "CPULIM", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "KEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                    {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nokey", "optional": true}}},
                    {"name": "FIRST", "value": "override"},
                    {"name": "LATER", "value": "l"}
                ]}]}
        }))
        .unwrap()
    }

    fn inputs() -> EnvInputs {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "cm"}, "data": {"k": "v"}}))
                .unwrap();
        EnvInputs {
            node_name: "n1".into(),
            pod_ip: Some("10.244.0.5".into()),
            host_ip: "192.0.2.1".into(),
            config_maps: HashMap::from([("cm".to_string(), Some(cm))]),
            secrets: HashMap::from([("nosecret".to_string(), None)]),
            node_cpu_millis: 2500,
            node_memory_bytes: 1 << 30,
            node_storage_bytes: 1 << 30,
            service_env: Vec::new(),
        }
    }

    fn svc(
        ns: &str,
        name: &str,
        ip: &str,
        ports: serde_json::Value,
    ) -> std::sync::Arc<k8s_openapi::api::core::v1::Service> {
        std::sync::Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip, "ports": ports}}))
            .unwrap(),
        )
    }

    #[test]
    fn service_variables_match_upstream() {
        let svcs = vec![
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443}]),
            ),
            svc(
                "ns",
                "redis-master",
                "10.96.0.11",
                json!([{"port": 6379, "protocol": "TCP"}, {"name": "metrics", "port": 9121, "protocol": "UDP"}]),
            ),
            svc("ns", "headless", "None", json!([{"port": 80}])),
            svc("other", "web", "10.96.0.12", json!([{"port": 80}])),
        ];
        let env = service_env(&svcs, "ns", true);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        // Upstream's envvars_test.go names and values.
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.96.0.1"));
        assert_eq!(get("REDIS_MASTER_SERVICE_HOST"), Some("10.96.0.11"));
        assert_eq!(get("REDIS_MASTER_SERVICE_PORT"), Some("6379"));
        assert_eq!(get("REDIS_MASTER_SERVICE_PORT_METRICS"), Some("9121"));
        assert_eq!(get("REDIS_MASTER_PORT"), Some("tcp://10.96.0.11:6379"));
        assert_eq!(
            get("REDIS_MASTER_PORT_9121_UDP"),
            Some("udp://10.96.0.11:9121")
        );
        assert_eq!(get("REDIS_MASTER_PORT_9121_UDP_PROTO"), Some("udp"));
        assert_eq!(get("HEADLESS_SERVICE_HOST"), None);
        assert_eq!(get("WEB_SERVICE_HOST"), None);
        assert_eq!(env.len(), 8 + 3 + 1 + 8);
        // enableServiceLinks: false keeps only the master service.
        let env = service_env(&svcs, "ns", false);
        assert!(
            env.iter().all(|(k, _)| k.starts_with("KUBERNETES_")),
            "{env:?}"
        );
        assert_eq!(env.len(), 8);
        // A `kubernetes` Service of the pod's own namespace wins.
        let mut svcs2 = svcs.clone();
        svcs2.push(svc("ns", "kubernetes", "10.96.0.99", json!([{"port": 80}])));
        let env = service_env(&svcs2, "ns", true);
        assert!(env.contains(&("KUBERNETES_SERVICE_HOST".into(), "10.96.0.99".into())));
        let env = service_env(&svcs2, "ns", false);
        assert!(env.contains(&("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into())));
    }

    #[test]
    fn own_variables_win_over_service_variables() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c", "env": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": "mine"},
                {"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"}]}]}
        }))
        .unwrap();
        let mut inp = inputs();
        inp.service_env = vec![
            ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
        ];
        let env = resolve(&p, &p.spec.as_ref().unwrap().containers[0], &inp).unwrap();
        assert_eq!(
            env,
            vec![
                ("KUBERNETES_SERVICE_HOST".to_string(), "mine".to_string()),
                ("URL".into(), "https://mine:443".into()),
                ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
            ]
        );
    }

    #[test]
    fn resolves_like_upstream() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = resolve(&p, c, &inputs()).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("P_k"), Some("v"));
        assert_eq!(get("FIRST"), Some("override"));
        assert_eq!(get("REF"), Some("1-v-$(LATER)"));
        assert_eq!(get("NAME"), Some("p"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("NODE"), Some("n1"));
        assert_eq!(get("IP"), Some("10.244.0.5"));
        assert_eq!(get("MEM"), Some("64"));
        assert_eq!(get("CPU"), Some("250"));
        assert_eq!(get("CPULIM"), Some("3"));
        assert_eq!(get("KEY"), Some("v"));
        assert_eq!(get("OPT"), None);
        // FIRST keeps its first position although redefined.
        assert_eq!(env[1].0, "FIRST");
        let (cms, secrets) = referenced_objects(c);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), ["cm"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["nosecret"]);
    }

    #[test]
    fn missing_objects_are_config_errors() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let mut inp = inputs();
        inp.config_maps.insert("cm".into(), None);
        assert_eq!(
            resolve(&p, c, &inp).unwrap_err().0,
            "configmap \"cm\" not found"
        );
        let mut c2 = c.clone();
        c2.env_from = None;
        c2.env = Some(vec![serde_json::from_value(
            json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm2", "key": "missing"}}}),
        )
        .unwrap()]);
        let mut inp = inputs();
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "cm2"}, "data": {}})).unwrap();
        inp.config_maps.insert("cm2".into(), Some(cm));
        assert_eq!(
            resolve(&p, &c2, &inp).unwrap_err().0,
            "couldn't find key missing in ConfigMap ns/cm2"
        );
        assert_eq!(
            expand_argv(
                &["echo $(X) $$(X)".to_string()],
                &[("X".into(), "y".into())]
            ),
            ["echo y $(X)"]
        );
    }
}
