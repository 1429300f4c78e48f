//! Resource usage of the node, its pods and their containers, in the kubelet stats API's
//! v1alpha1 `Summary` shape (`GET /stats/summary`), read from cgroups (v1 and v2), /proc and
//! statfs; also what the eviction manager ranks pods by.
//!
//! `usageNanoCores` is a rate: each [`StatsProvider`] remembers the last cumulative CPU
//! sample per cgroup (bounded) and reports the rate since then, as cAdvisor does between its
//! housekeeping samples.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::cgroup::CgroupUsage;
use crate::runtime::{ContainerState, Runtime};

/// Cgroups whose last CPU sample is remembered at most.
const CPU_SAMPLES: usize = 10_000;
/// Files a directory walk looks at at most (volume and rootfs usage).
const WALK_LIMIT: usize = 100_000;

/// The usage of one pod, for eviction ranking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    /// Pod uid.
    pub uid: String,
    /// Pod namespace/name.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Working set of the pod cgroup.
    pub memory_working_set_bytes: u64,
    /// Writable layers, logs and emptyDir volumes.
    pub ephemeral_bytes: u64,
    /// Per container: (name, working set bytes).
    pub containers: Vec<(String, u64)>,
}

/// Remembers CPU samples between summaries.
#[derive(Debug, Default)]
pub struct StatsProvider {
    cpu: Mutex<HashMap<String, (Instant, u64)>>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn nanos_rfc3339(n: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(n).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Bytes used by the files under `dir` (allocated blocks; hard links counted once per walk).
pub fn dir_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > WALK_LIMIT {
                return (bytes, inodes);
            }
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            bytes += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

// fsblkcnt_t/fsfilcnt_t are 32-bit on some targets.
#[allow(clippy::unnecessary_cast)]
fn fs_stats(path: &Path) -> Value {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let f = s.fragment_size() as u64;
            let cap = s.blocks() as u64 * f;
            let avail = s.blocks_available() as u64 * f;
            let free = s.blocks_free() as u64 * f;
            json!({"time": now_rfc3339(), "availableBytes": avail, "capacityBytes": cap,
                "usedBytes": cap.saturating_sub(free), "inodesFree": s.files_free() as u64,
                "inodes": s.files() as u64,
                "inodesUsed": (s.files() as u64).saturating_sub(s.files_free() as u64)})
        }
        Err(_) => json!({"time": now_rfc3339()}),
    }
}

fn meminfo(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    })
}

/// Total CPU time of the machine from /proc/stat, nanoseconds (user+nice+system+irq+softirq+
/// steal; idle and iowait excluded).
fn node_cpu_nanos() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| f.get(*i))
        .sum::<u64>();
    // USER_HZ is 100 on every Linux ABI the project targets.
    Some(busy * 10_000_000)
}

impl StatsProvider {
    /// A provider with no samples yet.
    pub fn new() -> StatsProvider {
        StatsProvider::default()
    }

    /// The CPU JSON for a cumulative `total` under `key`, with the rate since the last call.
    fn cpu_json(&self, key: &str, total: Option<u64>) -> Value {
        let Some(total) = total else {
            return json!({"time": now_rfc3339()});
        };
        let now = Instant::now();
        let mut m = self.cpu.lock();
        let rate = m.get(key).and_then(|(t, prev)| {
            let dt = now.saturating_duration_since(*t).as_nanos() as u64;
            (dt > 0 && total >= *prev).then(|| {
                ((total - prev) as u128 * 1_000_000_000 / dt as u128).min(u64::MAX as u128) as u64
            })
        });
        if m.len() >= CPU_SAMPLES && !m.contains_key(key) {
            m.clear();
        }
        m.insert(key.to_string(), (now, total));
        let mut v = json!({"time": now_rfc3339(), "usageCoreNanoSeconds": total});
        if let Some(r) = rate {
            v["usageNanoCores"] = json!(r);
        }
        v
    }

    fn memory_json(u: &CgroupUsage, available: Option<u64>) -> Value {
        let mut v = json!({"time": now_rfc3339()});
        let mut set = |k: &str, x: Option<u64>| {
            if let Some(x) = x {
                v[k] = json!(x);
            }
        };
        set("usageBytes", u.memory_usage_bytes);
        set("workingSetBytes", u.working_set_bytes);
        set("rssBytes", u.rss_bytes);
        set("pageFaults", u.page_faults);
        set("majorPageFaults", u.major_page_faults);
        set("availableBytes", available);
        v
    }

    /// Usage of every pod with a sandbox (for eviction), and nothing else.
    pub fn pod_usage(&self, rt: &Runtime) -> Vec<PodUsage> {
        let containers = rt.list_containers().unwrap_or_default();
        let mut out = Vec::new();
        for sb in rt.list_sandboxes().unwrap_or_default() {
            if !sb.ready {
                continue;
            }
            let pod_u = rt
                .sandbox_cgroup(&sb.id)
                .map(|c| c.usage())
                .unwrap_or_default();
            let mut cs = Vec::new();
            let mut eph = dir_usage(
                &rt.data_dir()
                    .join("pods")
                    .join(&sb.uid)
                    .join("volumes")
                    .join("kubernetes.io~empty-dir"),
            )
            .0;
            for c in containers.iter().filter(|c| c.sandbox_id == sb.id) {
                if let Ok((cg, upper)) = rt.container_usage_paths(&c.id) {
                    eph += dir_usage(&upper).0;
                    if c.state == ContainerState::Running {
                        cs.push((c.name.clone(), cg.usage().working_set_bytes.unwrap_or(0)));
                    }
                }
                eph += std::fs::metadata(&c.log_path).map(|m| m.len()).unwrap_or(0);
            }
            out.push(PodUsage {
                uid: sb.uid.clone(),
                namespace: sb.namespace.clone(),
                name: sb.name.clone(),
                memory_working_set_bytes: pod_u.working_set_bytes.unwrap_or(0),
                ephemeral_bytes: eph,
                containers: cs,
            });
        }
        out
    }

    /// The `/stats/summary` document.
    pub fn summary(&self, rt: &Runtime, node_name: &str) -> Value {
        let data = rt.data_dir();
        let mem_total = meminfo("MemTotal").unwrap_or(0);
        let mem_avail = meminfo("MemAvailable").unwrap_or(0);
        let node_ws = mem_total.saturating_sub(mem_avail);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<i64>().ok())
            })
            .unwrap_or(0);
        let node_fs = fs_stats(data);
        let node = json!({
            "nodeName": node_name,
            "startTime": nanos_rfc3339(boot * 1_000_000_000),
            "cpu": self.cpu_json("node", node_cpu_nanos()),
            "memory": {"time": now_rfc3339(), "availableBytes": mem_avail,
                "usageBytes": node_ws, "workingSetBytes": node_ws,
                "rssBytes": node_ws.saturating_sub(meminfo("Cached").unwrap_or(0))},
            "fs": node_fs.clone(),
            "runtime": {"imageFs": fs_stats(&data.join("images")), "containerFs": node_fs},
            "systemContainers": [],
        });
        let containers = rt.list_containers().unwrap_or_default();
        let mut pods = Vec::new();
        for sb in rt.list_sandboxes().unwrap_or_default() {
            if !sb.ready {
                continue;
            }
            let pod_cg = rt.sandbox_cgroup(&sb.id).ok();
            let pod_u = pod_cg.as_ref().map(|c| c.usage()).unwrap_or_default();
            let mut cjson = Vec::new();
            let mut eph_used = 0u64;
            let mut start: Option<i64> = None;
            for c in containers
                .iter()
                .filter(|c| c.sandbox_id == sb.id && c.state == ContainerState::Running)
            {
                let Ok((cg, upper)) = rt.container_usage_paths(&c.id) else {
                    continue;
                };
                let u = cg.usage();
                let (root_used, root_inodes) = dir_usage(&upper);
                let log_used = std::fs::metadata(&c.log_path).map(|m| m.len()).unwrap_or(0);
                eph_used += root_used + log_used;
                let started = c.started_at_unix_nanos.unwrap_or(c.created_at_unix_nanos);
                start = Some(start.map_or(started, |s: i64| s.min(started)));
                let mut rootfs = fs_stats(data);
                rootfs["usedBytes"] = json!(root_used);
                rootfs["inodesUsed"] = json!(root_inodes);
                let mut logs = fs_stats(data);
                logs["usedBytes"] = json!(log_used);
                logs["inodesUsed"] = json!(1);
                cjson.push(json!({
                    "name": c.name,
                    "startTime": nanos_rfc3339(started),
                    "cpu": self.cpu_json(&format!("c/{}", c.id), u.cpu_usage_nanos),
                    "memory": Self::memory_json(&u, None),
                    "rootfs": rootfs,
                    "logs": logs,
                }));
            }
            let mut volumes = Vec::new();
            let vroot = data.join("pods").join(&sb.uid).join("volumes");
            if let Ok(rd) = std::fs::read_dir(&vroot) {
                for plugin in rd.flatten().take(64) {
                    let Ok(vs) = std::fs::read_dir(plugin.path()) else {
                        continue;
                    };
                    for v in vs.flatten().take(256) {
                        let (used, inodes) = dir_usage(&v.path());
                        if plugin.file_name() == "kubernetes.io~empty-dir" {
                            eph_used += used;
                        }
                        let mut fsj = fs_stats(&v.path());
                        fsj["usedBytes"] = json!(used);
                        fsj["inodesUsed"] = json!(inodes);
                        fsj["name"] = json!(v.file_name().to_string_lossy());
                        volumes.push(fsj);
                    }
                }
            }
            let mut eph = fs_stats(data);
            eph["usedBytes"] = json!(eph_used);
            pods.push(json!({
                "podRef": {"name": sb.name, "namespace": sb.namespace, "uid": sb.uid},
                "startTime": nanos_rfc3339(start.unwrap_or_else(crate::spec::now_unix_nanos)),
                "containers": cjson,
                "cpu": self.cpu_json(&format!("p/{}", sb.id), pod_u.cpu_usage_nanos),
                "memory": Self::memory_json(&pod_u, None),
                "volume": volumes,
                "ephemeral-storage": eph,
            }));
        }
        json!({"node": node, "pods": pods})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_needs_two_samples() {
        let p = StatsProvider::new();
        let a = p.cpu_json("k", Some(1_000));
        assert!(a.get("usageNanoCores").is_none());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = p.cpu_json("k", Some(1_000 + 10_000_000));
        let r = b["usageNanoCores"].as_u64().unwrap();
        // 10 ms of CPU in about 20 ms: about half a core.
        assert!(r > 50_000_000 && r <= 500_000_000, "{r}");
        assert_eq!(b["usageCoreNanoSeconds"], 10_001_000);
    }

    #[test]
    fn dir_usage_counts_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("x")).unwrap();
        std::fs::write(d.path().join("x/f"), vec![1u8; 64 * 1024]).unwrap();
        let (b, n) = dir_usage(d.path());
        assert!(b >= 64 * 1024, "{b}");
        assert_eq!(n, 2);
    }
}
