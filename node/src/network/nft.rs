//! The node's nftables table `ip kubeshard`: masquerade for pod traffic leaving the cluster,
//! and hostPort DNAT through two maps, so adding or removing a pod's host ports is an element
//! update, never a rule rewrite.
//!
//! Scripts are built here (pure functions) and applied with `nft -f -`, one atomic transaction
//! per call. `nft` runs on the caller's thread, so it acts in that thread's network namespace.

use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::{HostPortMapping, NetworkError, Protocol};

/// The one table this module owns.
pub(crate) const TABLE: &str = "kubeshard";

/// The table, its maps and chains, created idempotently. The chains are flushed and refilled
/// (rules are not idempotent), the maps are kept: they hold the host ports of running pods,
/// which a restarted kubelet must not drop.
pub(crate) fn base_script(pod_cidr: Ipv4Net, cluster_cidr: Option<Ipv4Net>) -> String {
    let t = TABLE;
    let mut s = format!(
        "add table ip {t}\n\
         add map ip {t} hostports {{ type inet_proto . inet_service : ipv4_addr . inet_service ; }}\n\
         add map ip {t} hostports_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service ; }}\n\
         add chain ip {t} prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}\n\
         add chain ip {t} output {{ type nat hook output priority -100 ; policy accept ; }}\n\
         add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}\n\
         add chain ip {t} hostport\n\
         flush chain ip {t} prerouting\n\
         flush chain ip {t} output\n\
         flush chain ip {t} postrouting\n\
         flush chain ip {t} hostport\n\
         add rule ip {t} prerouting fib daddr type local meta l4proto {{ tcp, udp }} jump hostport\n\
         add rule ip {t} output fib daddr type local meta l4proto {{ tcp, udp }} jump hostport\n\
         add rule ip {t} hostport dnat to ip daddr . meta l4proto . th dport map @hostports_ip\n\
         add rule ip {t} hostport dnat to meta l4proto . th dport map @hostports\n"
    );
    if let Some(cluster) = cluster_cidr {
        s.push_str(&format!(
            "add rule ip {t} postrouting ip saddr {} ip daddr != {} masquerade\n",
            pod_cidr.trunc(),
            cluster.trunc()
        ));
    }
    s
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The map element key of a mapping (which map, and the key text).
fn key(m: &HostPortMapping) -> (&'static str, String) {
    match m.host_ip {
        Some(ip) if !ip.is_unspecified() => (
            "hostports_ip",
            format!("{ip} . {} . {}", proto(m.protocol), m.host_port),
        ),
        _ => (
            "hostports",
            format!("{} . {}", proto(m.protocol), m.host_port),
        ),
    }
}

/// Adds the pod's mappings (`add` of an identical element is a no-op, so a repeated setup is
/// fine; a port already mapped to another pod fails with "File exists").
pub(crate) fn add_hostports_script(pod_ip: Ipv4Addr, maps: &[HostPortMapping]) -> String {
    let mut s = String::new();
    for m in maps {
        let (map, k) = key(m);
        s.push_str(&format!(
            "add element ip {TABLE} {map} {{ {k} : {pod_ip} . {} }}\n",
            m.container_port
        ));
    }
    s
}

/// Deletes one mapping.
pub(crate) fn del_hostport_script(m: &HostPortMapping) -> String {
    let (map, k) = key(m);
    format!("delete element ip {TABLE} {map} {{ {k} }}\n")
}

/// Deletes mappings in one transaction (fails whole if any is missing).
pub(crate) fn del_hostports_script(maps: &[HostPortMapping]) -> String {
    maps.iter().map(del_hostport_script).collect()
}

/// Longest an `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of nft's error output is kept.
const MAX_STDERR: u64 = 4096;

/// Runs `nft -f -` with `script` on stdin, on the calling thread's network namespace.
pub(crate) fn run(script: &str) -> Result<(), NetworkError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetworkError::Nft("nft not found (install the nftables package)".into())
            } else {
                NetworkError::Io(e)
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // Scripts are small (a few hundred bytes per pod); nft reads all of stdin first.
        stdin.write_all(script.as_bytes())?;
    }
    let deadline = Instant::now() + NFT_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NetworkError::Nft(format!("nft ran over {NFT_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = stderr.take(MAX_STDERR).read_to_string(&mut err);
    }
    Err(NetworkError::Nft(err.trim().to_string()))
}

/// Whether an nft error says an element already exists (a host port taken by another pod).
pub(crate) fn is_exists(e: &NetworkError) -> bool {
    matches!(e, NetworkError::Nft(m) if m.contains("File exists"))
}

/// Whether an nft error says an element is missing.
pub(crate) fn is_missing(e: &NetworkError) -> bool {
    matches!(e, NetworkError::Nft(m) if m.contains("No such file or directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: u16, cont: u16, p: Protocol, ip: Option<Ipv4Addr>) -> HostPortMapping {
        HostPortMapping {
            host_port: host,
            container_port: cont,
            protocol: p,
            host_ip: ip.map(Into::into),
        }
    }

    #[test]
    fn scripts() {
        let base = base_script(
            "10.244.1.0/24".parse().unwrap(),
            Some("10.244.0.0/16".parse().unwrap()),
        );
        assert!(base.contains(
            "add rule ip kubeshard postrouting ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade"
        ));
        assert!(!base_script("10.244.1.0/24".parse().unwrap(), None).contains("masquerade"));
        let maps = [
            hp(8080, 80, Protocol::Tcp, None),
            hp(5353, 53, Protocol::Udp, Some(Ipv4Addr::new(192, 0, 2, 1))),
            hp(9090, 90, Protocol::Tcp, Some(Ipv4Addr::UNSPECIFIED)),
        ];
        let add = add_hostports_script(Ipv4Addr::new(10, 244, 1, 2), &maps);
        assert_eq!(
            add,
            "add element ip kubeshard hostports { tcp . 8080 : 10.244.1.2 . 80 }\n\
             add element ip kubeshard hostports_ip { 192.0.2.1 . udp . 5353 : 10.244.1.2 . 53 }\n\
             add element ip kubeshard hostports { tcp . 9090 : 10.244.1.2 . 90 }\n"
        );
        assert_eq!(
            del_hostports_script(&maps[..2]),
            "delete element ip kubeshard hostports { tcp . 8080 }\n\
             delete element ip kubeshard hostports_ip { 192.0.2.1 . udp . 5353 }\n"
        );
    }
}
