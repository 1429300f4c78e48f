//! The files of configMap, secret, downwardAPI and projected volumes, as upstream's plugins
//! compute them (pure functions over the API objects).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod,
    ResourceFieldSelector, Secret,
};

use super::VolumeError;
use super::atomic::{FileProjection, Payload};

/// Upstream's default file mode for configMap, secret, downwardAPI and projected files.
pub const DEFAULT_MODE: i32 = 0o644;

/// Node capacity the downward API reports for a resource limit the container leaves unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAllocatable {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage_bytes: i64,
}

impl NodeAllocatable {
    /// This machine's CPUs and memory (ephemeral storage: the root file system's size).
    pub fn of_this_machine() -> NodeAllocatable {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        let storage = nix::sys::statvfs::statvfs("/")
            .map(|s| (s.blocks() as i64).saturating_mul(s.fragment_size() as i64))
            .unwrap_or(0);
        NodeAllocatable {
            cpu_millis: cpus * 1000,
            memory_bytes: memory,
            ephemeral_storage_bytes: storage,
        }
    }
}

fn mode_of(item_mode: Option<i32>, default_mode: Option<i32>) -> Result<u32, VolumeError> {
    let m = item_mode.or(default_mode).unwrap_or(DEFAULT_MODE);
    u32::try_from(m)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| VolumeError::InvalidPath {
            path: String::new(),
            reason: format!("file mode {m:o} out of range 0..0777"),
        })
}

/// The files of a configMap (volume or projection source): every key, or the listed items.
/// `cm` None means the object does not exist (the caller handled `optional`).
pub fn config_map(
    cm: Option<&ConfigMap>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, VolumeError> {
    let mut all: BTreeMap<&str, &[u8]> = BTreeMap::new();
    if let Some(cm) = cm {
        for (k, v) in cm.data.iter().flatten() {
            all.insert(k, v.as_bytes());
        }
        for (k, v) in cm.binary_data.iter().flatten() {
            all.insert(k, &v.0);
        }
    }
    project(all, items, default_mode, optional, |key| {
        format!("configmap references non-existent config key: {key}")
    })
}

/// The files of a secret (volume or projection source).
pub fn secret(
    s: Option<&Secret>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, VolumeError> {
    let mut all: BTreeMap<&str, &[u8]> = BTreeMap::new();
    if let Some(s) = s {
        for (k, v) in s.data.iter().flatten() {
            all.insert(k, &v.0);
        }
    }
    project(all, items, default_mode, optional, |key| {
        format!("secret references non-existent secret key: {key}")
    })
}

fn project(
    all: BTreeMap<&str, &[u8]>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    missing: impl Fn(&str) -> String,
) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            let mode = mode_of(None, default_mode)?;
            for (k, v) in all {
                out.insert(
                    k.to_owned(),
                    FileProjection {
                        data: v.to_vec(),
                        mode,
                    },
                );
            }
        }
        Some(items) => {
            for it in items {
                let Some(v) = all.get(it.key.as_str()) else {
                    if optional {
                        continue;
                    }
                    return Err(VolumeError::KeyNotFound(missing(&it.key)));
                };
                out.insert(
                    it.path.clone(),
                    FileProjection {
                        data: v.to_vec(),
                        mode: mode_of(it.mode, default_mode)?,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// The files of a downwardAPI volume or projection source.
pub fn downward_api(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    node: &NodeAllocatable,
) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    for it in items {
        let data = match (&it.field_ref, &it.resource_field_ref) {
            (Some(f), None) => field_value(pod, f)?,
            (None, Some(r)) => resource_value(pod, r, node)?,
            _ => {
                return Err(VolumeError::DownwardApi(format!(
                    "item {:?} needs exactly one of fieldRef and resourceFieldRef",
                    it.path
                )));
            }
        };
        out.insert(
            it.path.clone(),
            FileProjection {
                data: data.into_bytes(),
                mode: mode_of(it.mode, default_mode)?,
            },
        );
    }
    Ok(out)
}

/// A pod field by upstream's fieldPath (`metadata.name`, `metadata.labels['k']`,
/// `status.podIP`, ...), as the downward API and env `fieldRef` read it.
pub fn field_value(pod: &Pod, f: &ObjectFieldSelector) -> Result<String, VolumeError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let path = f.field_path.as_str();
    if let Some((kind, key)) = subscript(path) {
        let map = if kind == "labels" {
            &m.labels
        } else {
            &m.annotations
        };
        return Ok(map
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default());
    }
    let s = |v: Option<&String>| v.cloned().unwrap_or_default();
    Ok(match path {
        "metadata.name" => s(m.name.as_ref()),
        "metadata.namespace" => s(m.namespace.as_ref()),
        "metadata.uid" => s(m.uid.as_ref()),
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
        "spec.nodeName" => s(spec.and_then(|p| p.node_name.as_ref())),
        "spec.serviceAccountName" => s(spec.and_then(|p| p.service_account_name.as_ref())),
        "status.hostIP" => s(status.and_then(|p| p.host_ip.as_ref())),
        "status.podIP" => s(status.and_then(|p| p.pod_ip.as_ref())),
        "status.hostIPs" => status
            .and_then(|p| p.host_ips.as_ref())
            .map(|v| {
                v.iter()
                    .map(|i| i.ip.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        "status.podIPs" => status
            .and_then(|p| p.pod_ips.as_ref())
            .map(|v| {
                v.iter()
                    .map(|i| i.ip.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        other => {
            return Err(VolumeError::DownwardApi(format!(
                "unsupported fieldPath: {other}"
            )));
        }
    })
}

/// `metadata.labels['key']` -> ("labels", "key").
fn subscript(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("metadata.")?;
    let (kind, rest) = rest.split_once("['")?;
    let key = rest.strip_suffix("']")?;
    matches!(kind, "labels" | "annotations").then_some((kind, key))
}

/// Upstream's `FormatMap`: `key="value"` lines sorted by key, values quoted as Go's `%q`.
pub fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    let Some(m) = m else { return String::new() };
    m.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote` for the characters labels and annotations hold.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// A container resource by upstream's `resourceFieldRef` (limits fall back to the node's
/// allocatable when unset), divided by the divisor and rounded up.
pub fn resource_value(
    pod: &Pod,
    r: &ResourceFieldSelector,
    node: &NodeAllocatable,
) -> Result<String, VolumeError> {
    let bad = |m: String| VolumeError::DownwardApi(m);
    let cname = r
        .container_name
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("resourceFieldRef needs containerName in a volume".into()))?;
    let c = container(pod, cname)
        .ok_or_else(|| bad(format!("container {cname:?} not found in the pod")))?;
    let res = c.resources.as_ref();
    let (kind, name) = r
        .resource
        .split_once('.')
        .ok_or_else(|| bad(format!("unsupported container resource: {}", r.resource)))?;
    let list = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(bad(format!(
                "unsupported container resource: {}",
                r.resource
            )));
        }
    };
    let set = list.and_then(|l| l.get(name)).map(|q| q.0.clone());
    let divisor = r.divisor.as_ref().map_or("1", |q| q.0.as_str());
    let divisor_milli = parse_milli(divisor)?;
    if divisor_milli <= 0 {
        return Err(bad(format!("invalid divisor {divisor}")));
    }
    // The amount in thousandths of the unit.
    let milli: i128 = match set {
        Some(q) => parse_milli(&q)? as i128,
        None if kind == "limits" => match name {
            "cpu" => node.cpu_millis as i128,
            "memory" => node.memory_bytes as i128 * 1000,
            "ephemeral-storage" => node.ephemeral_storage_bytes as i128 * 1000,
            n if n.starts_with("hugepages-") => 0,
            _ => {
                return Err(bad(format!(
                    "unsupported container resource: {}",
                    r.resource
                )));
            }
        },
        None => match name {
            "cpu" | "memory" | "ephemeral-storage" => 0,
            n if n.starts_with("hugepages-") => 0,
            _ => {
                return Err(bad(format!(
                    "unsupported container resource: {}",
                    r.resource
                )));
            }
        },
    };
    // Upstream rounds up (math.Ceil) for CPU (in millis) and for the byte resources.
    let d = divisor_milli as i128;
    let v = (milli + d - 1).div_euclid(d);
    Ok(v.to_string())
}

/// Parses a Kubernetes quantity (`100m`, `1.5Gi`, `2e3`) into thousandths of its unit,
/// rounding up as `Quantity.MilliValue()` does.
pub fn parse_milli(s: &str) -> Result<i64, VolumeError> {
    api::quantity::parse_milli(s).map_err(|e| VolumeError::DownwardApi(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn format_map_quotes_like_go() {
        let m = BTreeMap::from([
            ("b".to_owned(), "x\"y\n".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]);
        assert_eq!(format_map(Some(&m)), "a=\"1\"\nb=\"x\\\"y\\n\"");
    }

    #[test]
    fn resource_values_round_up_and_fall_back_to_node() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
                        requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = NodeAllocatable {
            cpu_millis: 4000,
            memory_bytes: 1 << 30,
            ephemeral_storage_bytes: 0,
        };
        let r = |res: &str, div: Option<&str>| {
            resource_value(
                &pod,
                &ResourceFieldSelector {
                    container_name: Some("c".into()),
                    resource: res.into(),
                    divisor: div.map(|d| Quantity(d.into())),
                },
                &node,
            )
            .unwrap()
        };
        assert_eq!(r("limits.memory", None), (64u64 << 20).to_string());
        assert_eq!(r("limits.memory", Some("1Mi")), "64");
        assert_eq!(r("requests.cpu", None), "1"); // 250m rounds up to 1 core
        assert_eq!(r("requests.cpu", Some("1m")), "250");
        assert_eq!(r("limits.cpu", None), "4"); // node allocatable
        assert_eq!(r("requests.memory", None), "0");
    }
}
