//! Per-pod and per-container cgroups written straight to cgroupfs, on v1 (one hierarchy per
//! controller: cpu, cpuacct, memory, pids) and v2 (the unified hierarchy).
//!
//! The runtime's cgroups live under a base group, by default `kubeshard` below the cgroup the
//! runtime itself runs in (in each hierarchy), as `<base>/pod-<sandbox>/<leaf>`; a pod's
//! holder process lives in the leaf `sandbox`, each container in a leaf named by its id (v2
//! allows processes only in leaves once controllers are enabled).
//!
//! OOM detection: v1 `memory.oom_control`'s `oom_kill` counter; v2 `memory.events`'
//! `oom_kill`. Cleanup kills what is left (`cgroup.kill` on v2, SIGKILL to each pid on v1) and
//! removes the directories, retrying a bounded number of times while the kernel still sees
//! dying tasks.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors of cgroup management. `Io` may be transient (a cgroup still busy while its last
/// task exits); the others are configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// Reading or writing a cgroup file failed.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No usable cgroup hierarchy was found.
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
}

fn ioe(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Resource limits for one cgroup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resources {
    /// Relative CPU weight in cgroup v1 `cpu.shares` units (Kubernetes: millicores * 1024 /
    /// 1000, at least 2); converted for v2.
    pub cpu_shares: Option<u64>,
    /// CFS quota per period, in microseconds (Kubernetes: limit millicores * period / 1000).
    pub cpu_quota_us: Option<i64>,
    /// CFS period in microseconds (default 100000).
    pub cpu_period_us: Option<u64>,
    /// Memory limit in bytes (swap is limited to the same total, i.e. no swap).
    pub memory_limit_bytes: Option<u64>,
    /// Maximum number of tasks.
    pub pids_limit: Option<u64>,
}

/// Which cgroup version and where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum CgroupDriver {
    /// v1: one directory per controller hierarchy, each the base group for that controller.
    V1 {
        /// Base directories, one per mounted controller hierarchy the runtime uses.
        bases: Vec<(String, PathBuf)>,
    },
    /// v2: the base group in the unified hierarchy.
    V2 {
        /// The base directory.
        base: PathBuf,
    },
}

/// The controllers the runtime uses on v1.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

impl CgroupDriver {
    /// Detects the host's layout: v2 when `/sys/fs/cgroup` is the unified hierarchy, else v1
    /// from the mounted controller hierarchies. The base group is `name` below the caller's
    /// own cgroup in each hierarchy.
    pub fn detect(name: &str) -> Result<CgroupDriver, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(ioe(Path::new("/proc/self/mountinfo")))?;
        let own =
            fs::read_to_string("/proc/self/cgroup").map_err(ioe(Path::new("/proc/self/cgroup")))?;
        let mounts = parse_mounts(&mountinfo);
        if let Some((_, p)) = mounts
            .iter()
            .find(|(kind, p)| kind == "cgroup2" && p == Path::new("/sys/fs/cgroup"))
        {
            let rel = own_path(&own, "").unwrap_or_default();
            return Ok(CgroupDriver::V2 {
                base: join_rel(p, &rel).join(name),
            });
        }
        let mut bases = Vec::new();
        for c in V1_CONTROLLERS {
            let hit = mounts.iter().find(|(kind, p)| {
                kind.starts_with("cgroup:")
                    && kind["cgroup:".len()..].split(',').any(|o| o == c)
                    && p.starts_with("/sys/fs/cgroup")
            });
            if let Some((kind, p)) = hit {
                let opts = &kind["cgroup:".len()..];
                let rel = own_path(&own, opts).unwrap_or_default();
                let base = join_rel(p, &rel).join(name);
                if !bases.iter().any(|(_, b)| *b == base) {
                    bases.push((c.to_string(), base));
                }
            }
        }
        if bases.iter().any(|(c, _)| c == "memory") {
            Ok(CgroupDriver::V1 { bases })
        } else {
            Err(CgroupError::Unavailable(
                "neither a unified hierarchy at /sys/fs/cgroup nor a v1 memory hierarchy".into(),
            ))
        }
    }

    /// A v2 driver rooted at `base` (e.g. a group in a unified hierarchy mounted elsewhere).
    pub fn v2_at(base: PathBuf) -> CgroupDriver {
        CgroupDriver::V2 { base }
    }

    /// The base group itself (`<caller's group>/<name>` in every hierarchy), for whoever
    /// owns the whole group (a bench or test run) to remove with [`Cgroup::remove`] when it
    /// is done: the runtime removes only the groups below it.
    pub fn base(&self) -> Cgroup {
        match self {
            CgroupDriver::V1 { bases } => Cgroup {
                v2: false,
                dirs: bases.iter().map(|(_, b)| b.clone()).collect(),
            },
            CgroupDriver::V2 { base } => Cgroup {
                v2: true,
                dirs: vec![base.clone()],
            },
        }
    }

    /// Creates (or reuses) `<base>/<rel>` in every hierarchy and applies `res`.
    pub fn create(&self, rel: &str, res: &Resources) -> Result<Cgroup, CgroupError> {
        match self {
            CgroupDriver::V1 { bases } => {
                let mut dirs = Vec::new();
                for (c, base) in bases {
                    let dir = base.join(rel);
                    fs::create_dir_all(&dir).map_err(ioe(&dir))?;
                    dirs.push((c.clone(), dir));
                }
                let cg = Cgroup {
                    v2: false,
                    dirs: dirs.into_iter().map(|(_, d)| d).collect(),
                };
                cg.apply_v1(res)?;
                Ok(cg)
            }
            CgroupDriver::V2 { base } => {
                let dir = base.join(rel);
                enable_controllers_v2(&dir)?;
                fs::create_dir_all(&dir).map_err(ioe(&dir))?;
                let cg = Cgroup {
                    v2: true,
                    dirs: vec![dir],
                };
                cg.apply_v2(res)?;
                Ok(cg)
            }
        }
    }

    /// The group `<base>/<rel>` without creating it (for removal of a pod's parent group).
    pub fn existing(&self, rel: &str) -> Cgroup {
        match self {
            CgroupDriver::V1 { bases } => Cgroup {
                v2: false,
                dirs: bases.iter().map(|(_, b)| b.join(rel)).collect(),
            },
            CgroupDriver::V2 { base } => Cgroup {
                v2: true,
                dirs: vec![base.join(rel)],
            },
        }
    }
}

/// Parses mountinfo into `(kind, mount point)`: kind `cgroup2` or `cgroup:<super options>`.
fn parse_mounts(mountinfo: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mp = pre.split(' ').nth(4).unwrap_or("");
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let _source = post.next();
        let opts = post.next().unwrap_or("");
        match fstype {
            "cgroup2" => out.push(("cgroup2".to_string(), PathBuf::from(mp))),
            "cgroup" => out.push((format!("cgroup:{opts}"), PathBuf::from(mp))),
            _ => {}
        }
    }
    out
}

/// The caller's cgroup path for a hierarchy (`opts` holds its controllers; "" for v2).
fn own_path(proc_cgroup: &str, opts: &str) -> Option<String> {
    for line in proc_cgroup.lines() {
        let mut it = line.splitn(3, ':');
        let _id = it.next()?;
        let ctrls = it.next()?;
        let path = it.next()?;
        let hit = if opts.is_empty() {
            ctrls.is_empty()
        } else {
            !ctrls.is_empty() && ctrls.split(',').all(|c| opts.split(',').any(|o| o == c))
        };
        if hit {
            return Some(path.to_string());
        }
    }
    None
}

fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Enables the memory, cpu and pids controllers (those available) on every ancestor of `dir`
/// up to the first that does not exist, so the limits can be written in `dir`.
fn enable_controllers_v2(dir: &Path) -> Result<(), CgroupError> {
    let mut to_create = Vec::new();
    let mut p = dir.parent();
    while let Some(x) = p {
        if x.join("cgroup.controllers").exists() {
            // Best effort: a group that holds processes itself cannot enable controllers
            // for its children (v2's no-internal-process rule); limits then are not written.
            let _ = enable_in(x);
            break;
        }
        to_create.push(x.to_path_buf());
        if to_create.len() > 32 {
            break;
        }
        p = x.parent();
    }
    for d in to_create.iter().rev() {
        fs::create_dir_all(d).map_err(ioe(d))?;
        let _ = enable_in(d);
    }
    Ok(())
}

fn enable_in(dir: &Path) -> Result<(), CgroupError> {
    let avail = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in ["memory", "cpu", "pids"] {
        if avail.split_whitespace().any(|a| a == c) && !enabled.split_whitespace().any(|a| a == c) {
            let f = dir.join("cgroup.subtree_control");
            fs::write(&f, format!("+{c}")).map_err(ioe(&f))?;
        }
    }
    Ok(())
}

/// What a cgroup has used ([`Cgroup::usage`]); `None` where the controller is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_usage_nanos: Option<u64>,
    /// Memory charged, bytes.
    pub memory_usage_bytes: Option<u64>,
    /// Usage minus inactive file pages.
    pub working_set_bytes: Option<u64>,
    /// Anonymous memory.
    pub rss_bytes: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
}

/// One cgroup (one directory per v1 hierarchy, or one on v2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cgroup {
    /// Unified hierarchy.
    pub v2: bool,
    /// Its directories.
    pub dirs: Vec<PathBuf>,
}

fn write_if_exists(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    if !p.exists() {
        return Ok(());
    }
    fs::write(&p, value).map_err(ioe(&p))
}

impl Cgroup {
    fn dir_with(&self, file: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .map(PathBuf::as_path)
            .find(|d| d.join(file).exists())
    }

    fn apply_v1(&self, res: &Resources) -> Result<(), CgroupError> {
        for d in &self.dirs {
            if let Some(mem) = res.memory_limit_bytes {
                // memsw must stay >= limit: raise memsw first when growing, after when
                // shrinking; writing both twice covers either order.
                let m = mem.to_string();
                let _ = write_if_exists(d, "memory.memsw.limit_in_bytes", &m);
                write_if_exists(d, "memory.limit_in_bytes", &m)?;
                write_if_exists(d, "memory.memsw.limit_in_bytes", &m)?;
            }
            if let Some(s) = res.cpu_shares {
                write_if_exists(d, "cpu.shares", &s.max(2).to_string())?;
            }
            if let Some(q) = res.cpu_quota_us {
                let period = res.cpu_period_us.unwrap_or(100_000);
                write_if_exists(d, "cpu.cfs_period_us", &period.to_string())?;
                write_if_exists(d, "cpu.cfs_quota_us", &q.to_string())?;
            }
            if let Some(p) = res.pids_limit {
                write_if_exists(d, "pids.max", &p.to_string())?;
            }
        }
        Ok(())
    }

    fn apply_v2(&self, res: &Resources) -> Result<(), CgroupError> {
        let d = &self.dirs[0];
        if let Some(mem) = res.memory_limit_bytes {
            write_if_exists(d, "memory.max", &mem.to_string())?;
            write_if_exists(d, "memory.swap.max", "0")?;
        }
        if let Some(s) = res.cpu_shares {
            // The conversion runc and the kubelet use: [2, 262144] -> [1, 10000].
            let s = s.clamp(2, 262_144);
            let w = 1 + ((s - 2) * 9999) / 262_142;
            write_if_exists(d, "cpu.weight", &w.to_string())?;
        }
        if let Some(q) = res.cpu_quota_us {
            let period = res.cpu_period_us.unwrap_or(100_000);
            let quota = if q <= 0 {
                "max".to_string()
            } else {
                q.to_string()
            };
            write_if_exists(d, "cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(p) = res.pids_limit {
            write_if_exists(d, "pids.max", &p.to_string())?;
        }
        Ok(())
    }

    /// Moves `pid` into this group (in every hierarchy).
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let f = d.join("cgroup.procs");
            fs::write(&f, pid.to_string()).map_err(ioe(&f))?;
        }
        Ok(())
    }

    /// The pids in this group.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for d in &self.dirs {
            if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether the kernel's OOM killer killed a task in this group.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        let Some(d) = self.dir_with(file) else {
            return false;
        };
        let Ok(s) = fs::read_to_string(d.join(file)) else {
            return false;
        };
        s.lines().any(|l| {
            let mut it = l.split_whitespace();
            it.next() == Some(key) && it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) > 0
        })
    }

    /// Memory in use, in bytes, when the memory controller is there.
    pub fn memory_usage_bytes(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        let d = self.dir_with(file)?;
        fs::read_to_string(d.join(file)).ok()?.trim().parse().ok()
    }

    /// CPU and memory usage of the group (v1: `cpuacct.usage`, `memory.usage_in_bytes`,
    /// `memory.stat`'s `total_*`; v2: `cpu.stat`'s `usage_usec`, `memory.current`,
    /// `memory.stat`). The working set is usage minus inactive file pages, as cAdvisor's.
    pub fn usage(&self) -> CgroupUsage {
        let read = |file: &str| -> Option<String> {
            let d = self.dir_with(file)?;
            fs::read_to_string(d.join(file)).ok()
        };
        let stat_of = |text: &str, key: &str| -> Option<u64> {
            text.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
            })
        };
        let mut u = CgroupUsage::default();
        if self.v2 {
            u.cpu_usage_nanos = read("cpu.stat")
                .and_then(|s| stat_of(&s, "usage_usec"))
                .map(|us| us.saturating_mul(1000));
            u.memory_usage_bytes = read("memory.current").and_then(|s| s.trim().parse().ok());
            if let Some(ms) = read("memory.stat") {
                let inactive = stat_of(&ms, "inactive_file").unwrap_or(0);
                u.rss_bytes = stat_of(&ms, "anon");
                u.page_faults = stat_of(&ms, "pgfault");
                u.major_page_faults = stat_of(&ms, "pgmajfault");
                u.working_set_bytes = u.memory_usage_bytes.map(|m| m.saturating_sub(inactive));
            }
        } else {
            u.cpu_usage_nanos = read("cpuacct.usage").and_then(|s| s.trim().parse().ok());
            u.memory_usage_bytes =
                read("memory.usage_in_bytes").and_then(|s| s.trim().parse().ok());
            if let Some(ms) = read("memory.stat") {
                let inactive = stat_of(&ms, "total_inactive_file").unwrap_or(0);
                u.rss_bytes = stat_of(&ms, "total_rss");
                u.page_faults = stat_of(&ms, "total_pgfault");
                u.major_page_faults = stat_of(&ms, "total_pgmajfault");
                u.working_set_bytes = u.memory_usage_bytes.map(|m| m.saturating_sub(inactive));
            }
        }
        u
    }

    /// SIGKILLs every task in the group (v2: `cgroup.kill`).
    pub fn kill_all(&self) {
        if self.v2
            && let Some(d) = self.dir_with("cgroup.kill")
            && fs::write(d.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(crate::sys::pid(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Kills what is left and removes the directories (children first), retrying for up to
    /// `budget` while tasks are still exiting. Missing directories are fine.
    pub fn remove(&self, budget: Duration) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + budget;
        for d in &self.dirs {
            if !d.exists() {
                continue;
            }
            // Children first (bounded depth: the runtime makes two levels).
            let mut subdirs = Vec::new();
            if let Ok(rd) = fs::read_dir(d) {
                for e in rd.flatten().take(10_000) {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        subdirs.push(e.path());
                    }
                }
            }
            for s in subdirs {
                Cgroup {
                    v2: self.v2,
                    dirs: vec![s],
                }
                .remove(deadline.saturating_duration_since(std::time::Instant::now()))?;
            }
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => {
                        if std::time::Instant::now() >= deadline {
                            return Err(CgroupError::Io {
                                path: d.clone(),
                                source: e,
                            });
                        }
                        Cgroup {
                            v2: self.v2,
                            dirs: vec![d.clone()],
                        }
                        .kill_all();
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_paths_match_their_hierarchy() {
        let pc = "12:pids:/a\n4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/u\n";
        assert_eq!(own_path(pc, "rw,memory").as_deref(), Some("/process_api/x"));
        assert_eq!(own_path(pc, "memory").as_deref(), Some("/process_api/x"));
        assert_eq!(own_path(pc, "cpu,cpuacct").as_deref(), Some("/"));
        assert_eq!(own_path(pc, "").as_deref(), Some("/u"));
    }

    #[test]
    fn mountinfo_yields_cgroup_hierarchies() {
        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                  27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n";
        let m = parse_mounts(mi);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0, "cgroup:rw,memory");
        assert_eq!(
            m[1],
            (
                "cgroup2".to_string(),
                PathBuf::from("/sys/fs/cgroup/unified")
            )
        );
    }
}
