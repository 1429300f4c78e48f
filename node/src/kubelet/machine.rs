//! What the node reports about the machine: CPU, memory, storage, kernel, OS image, ids,
//! its addresses, and the pressure signals of the eviction thresholds.

use std::net::IpAddr;
use std::path::Path;

/// Static facts about the machine.
#[derive(Debug, Clone, Default)]
pub struct MachineInfo {
    /// Online CPUs.
    pub cpus: u32,
    /// Physical memory in bytes (MemTotal).
    pub memory_bytes: u64,
    /// `uname -r`.
    pub kernel_version: String,
    /// PRETTY_NAME of /etc/os-release.
    pub os_image: String,
    /// GOARCH spelling of the architecture (`amd64`, `arm64`).
    pub arch: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// /proc/sys/kernel/random/boot_id.
    pub boot_id: String,
    /// The kernel's hostname.
    pub hostname: String,
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A `/proc/meminfo` field in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// The GOARCH name of the running architecture.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

impl MachineInfo {
    /// Reads the machine's facts.
    pub fn detect() -> MachineInfo {
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_string())
                })
            })
            .unwrap_or_else(|| "Linux".into());
        MachineInfo {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: meminfo("MemTotal").unwrap_or(0),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            os_image,
            arch: go_arch().to_string(),
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            hostname: read_trim("/proc/sys/kernel/hostname"),
        }
    }
}

/// `(total, available)` bytes of the file system holding `dir`.
pub fn fs_bytes(dir: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = s.fragment_size().max(1) as u64;
    Some((
        (s.blocks() as u64).saturating_mul(frag),
        (s.blocks_available() as u64).saturating_mul(frag),
    ))
}

/// The node's address when none is configured: the first global IPv4 address of an
/// interface that is up (not loopback, not the pod bridge), else 127.0.0.1.
pub fn default_node_ip() -> IpAddr {
    let mut best: Option<IpAddr> = None;
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
            let lo = a
                .flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK);
            if !up
                || lo
                || a.interface_name.starts_with("kubeshard")
                || a.interface_name.starts_with("veth")
            {
                continue;
            }
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                let ip = IpAddr::V4(sin.ip());
                if best.is_none() {
                    best = Some(ip);
                }
            }
        }
    }
    best.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The pressure signals with upstream's default hard eviction thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// memory.available < 100Mi.
    pub memory: bool,
    /// nodefs.available < 10%.
    pub disk: bool,
    /// More than 90% of pid_max in use.
    pub pid: bool,
}

/// Reads the pressure signals for a node whose data lives in `data_dir`.
pub fn pressure(data_dir: &Path) -> Pressure {
    let memory = meminfo("MemAvailable").is_some_and(|a| a < 100 << 20);
    let disk = fs_bytes(data_dir).is_some_and(|(t, a)| t > 0 && a.saturating_mul(10) < t);
    let pid_max: u64 = read_trim("/proc/sys/kernel/pid_max").parse().unwrap_or(0);
    // /proc/loadavg: "0.00 0.01 0.05 1/123 4567": the fourth field's total is the task count.
    let tasks: u64 = read_trim("/proc/loadavg")
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, t)| t.parse().ok())
        .unwrap_or(0);
    let pid = pid_max > 0 && tasks.saturating_mul(10) > pid_max.saturating_mul(9);
    Pressure { memory, disk, pid }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_facts_are_read() {
        let m = MachineInfo::detect();
        assert!(m.cpus >= 1);
        assert!(m.memory_bytes > 0);
        assert!(!m.kernel_version.is_empty());
        assert!(meminfo("MemAvailable").is_some());
        let (total, avail) = fs_bytes(Path::new("/")).unwrap();
        assert!(total >= avail && total > 0);
        assert!(!default_node_ip().is_unspecified());
    }
}
