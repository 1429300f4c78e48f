//! IP address management for one node's podCIDR, persisted on disk.
//!
//! Layout (one small file per allocation, as CNI's host-local plugin does):
//!
//! ```text
//! <state_dir>/ipam/<net>-<prefix>/<ip>     JSON Allocation (sandbox id, netns, host ports)
//! ```
//!
//! A new address is claimed with `link(2)` of a fully written temporary file onto the
//! address's name, which fails if the name exists: two instances on the same directory can
//! never hand out the same address, and a reader never sees a half-written record. Updates
//! of a record go through write-to-temp + `rename(2)`. There is no fsync: allocations only
//! matter while the pods' network namespaces live, and those do not survive a reboot, while a
//! kubelet restart keeps the page cache.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{HostPortMapping, NetworkError};

/// What is recorded for one allocated address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Allocation {
    /// The sandbox the address belongs to.
    pub(crate) sandbox_id: String,
    /// Identity of the pod's network namespace (`st_dev`, `st_ino` of the nsfs file) when it
    /// was wired, so a repeated setup can tell "same namespace" from "new sandbox, same id".
    #[serde(default)]
    pub(crate) netns: Option<(u64, u64)>,
    /// The host ports mapped to this pod (removed on teardown).
    #[serde(default)]
    pub(crate) host_ports: Vec<HostPortMapping>,
}

/// The allocations of one podCIDR: an in-memory index over the directory.
#[derive(Debug)]
pub(crate) struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
    /// First and last assignable addresses (network, gateway and broadcast excluded).
    first: u32,
    last: u32,
    by_ip: HashMap<Ipv4Addr, Option<Allocation>>,
    by_sandbox: HashMap<String, Ipv4Addr>,
    /// Where the next search starts, so a released address is not reused at once (stale ARP
    /// and conntrack entries of the previous owner).
    cursor: u32,
}

/// Longest sandbox id accepted (the runtime's ids are 32 hex characters).
const MAX_ID: usize = 128;

fn valid_sandbox_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub(crate) fn check_sandbox_id(id: &str) -> Result<(), NetworkError> {
    if valid_sandbox_id(id) {
        Ok(())
    } else {
        Err(NetworkError::InvalidConfig(format!(
            "bad sandbox id {id:?}"
        )))
    }
}

/// The gateway of a podCIDR: its first host address.
pub(crate) fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

impl Ipam {
    /// Opens (creating) the allocation directory of `cidr` under `state_dir` and loads it.
    pub(crate) fn open(state_dir: &Path, cidr: Ipv4Net) -> Result<Ipam, NetworkError> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 30 {
            return Err(NetworkError::InvalidConfig(format!(
                "pod CIDR {cidr} is too small (at most /30)"
            )));
        }
        let net = u32::from(cidr.network());
        let bcast = u32::from(cidr.broadcast());
        let dir = state_dir
            .join("ipam")
            .join(format!("{}-{}", cidr.network(), cidr.prefix_len()));
        fs::create_dir_all(&dir)?;
        let mut ipam = Ipam {
            dir,
            cidr,
            first: net + 2,
            last: bcast - 1,
            by_ip: HashMap::new(),
            by_sandbox: HashMap::new(),
            cursor: net + 2,
        };
        ipam.load()?;
        Ok(ipam)
    }

    fn load(&mut self) -> Result<(), NetworkError> {
        // Bounded: at most one file per address of the CIDR plus stray temporaries.
        let limit = (self.last - self.first + 1) as usize + 1024;
        for e in fs::read_dir(&self.dir)?.take(limit) {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp") {
                let _ = fs::remove_file(e.path());
                continue;
            }
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            if !self.assignable(ip) {
                continue;
            }
            // An unreadable record still holds its address: never double-allocate.
            let rec = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Allocation>(&b).ok());
            match &rec {
                Some(a) => {
                    self.by_sandbox.insert(a.sandbox_id.clone(), ip);
                }
                None => {
                    tracing::warn!(ip = %ip, dir = %self.dir.display(), "unreadable IPAM record; address kept reserved")
                }
            }
            self.by_ip.insert(ip, rec);
        }
        Ok(())
    }

    fn assignable(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.first && v <= self.last
    }

    /// How many addresses the CIDR can hand out.
    pub(crate) fn capacity(&self) -> u32 {
        self.last - self.first + 1
    }

    /// The CIDR managed.
    pub(crate) fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The address and record of a sandbox, if it has one.
    pub(crate) fn get(&self, sandbox_id: &str) -> Option<(Ipv4Addr, Allocation)> {
        let ip = *self.by_sandbox.get(sandbox_id)?;
        let rec = self.by_ip.get(&ip)?.clone()?;
        Some((ip, rec))
    }

    /// All allocations (address, sandbox id).
    pub(crate) fn list(&self) -> Vec<(String, Ipv4Addr)> {
        let mut v: Vec<_> = self
            .by_sandbox
            .iter()
            .map(|(s, ip)| (s.clone(), *ip))
            .collect();
        v.sort_by_key(|(_, ip)| *ip);
        v
    }

    fn tmp_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir
            .join(format!(".tmp-{ip}-{}", uuid::Uuid::new_v4().simple()))
    }

    fn write_tmp(&self, ip: Ipv4Addr, rec: &Allocation) -> Result<PathBuf, NetworkError> {
        let b = serde_json::to_vec(rec).map_err(|e| NetworkError::Corrupt {
            path: self.dir.join(ip.to_string()),
            reason: e.to_string(),
        })?;
        let tmp = self.tmp_path(ip);
        fs::write(&tmp, b)?;
        Ok(tmp)
    }

    /// Returns the sandbox's address, allocating one if it has none. The record is written
    /// before this returns.
    pub(crate) fn allocate(&mut self, rec: Allocation) -> Result<Ipv4Addr, NetworkError> {
        check_sandbox_id(&rec.sandbox_id)?;
        if let Some((ip, _)) = self.get(&rec.sandbox_id) {
            return Ok(ip);
        }
        let cap = self.capacity();
        let start = self.cursor.clamp(self.first, self.last);
        for i in 0..cap {
            let v = self.first + (start - self.first + i) % cap;
            let ip = Ipv4Addr::from(v);
            if self.by_ip.contains_key(&ip) {
                continue;
            }
            let tmp = self.write_tmp(ip, &rec)?;
            let claimed = fs::hard_link(&tmp, self.dir.join(ip.to_string()));
            let _ = fs::remove_file(&tmp);
            match claimed {
                Ok(()) => {
                    self.by_ip.insert(ip, Some(rec.clone()));
                    self.by_sandbox.insert(rec.sandbox_id, ip);
                    self.cursor = if v == self.last { self.first } else { v + 1 };
                    return Ok(ip);
                }
                // Taken by another instance on the same directory: remember and go on.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    self.by_ip.insert(ip, None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(NetworkError::IpamExhausted {
            cidr: self.cidr,
            capacity: cap,
        })
    }

    /// Rewrites the record of an allocated address (atomically).
    pub(crate) fn update(&mut self, ip: Ipv4Addr, rec: Allocation) -> Result<(), NetworkError> {
        let tmp = self.write_tmp(ip, &rec)?;
        if let Err(e) = fs::rename(&tmp, self.dir.join(ip.to_string())) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        self.by_sandbox.insert(rec.sandbox_id.clone(), ip);
        self.by_ip.insert(ip, Some(rec));
        Ok(())
    }

    /// Releases the sandbox's address; returns its record if it had one.
    pub(crate) fn release(
        &mut self,
        sandbox_id: &str,
    ) -> Result<Option<(Ipv4Addr, Allocation)>, NetworkError> {
        let Some(ip) = self.by_sandbox.get(sandbox_id).copied() else {
            return Ok(None);
        };
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.by_sandbox.remove(sandbox_id);
        let rec = self.by_ip.remove(&ip).flatten();
        Ok(rec.map(|r| (ip, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> Allocation {
        Allocation {
            sandbox_id: id.into(),
            netns: None,
            host_ports: vec![],
        }
    }

    #[test]
    fn allocates_distinct_addresses_and_skips_reserved_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let cidr: Ipv4Net = "10.244.3.0/29".parse().unwrap();
        let mut ipam = Ipam::open(tmp.path(), cidr).unwrap();
        // .0 network, .1 gateway, .7 broadcast: .2 to .6 assignable.
        assert_eq!(ipam.capacity(), 5);
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(ipam.allocate(rec(&format!("s{i}"))).unwrap());
        }
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 244, 3, h)).collect();
        assert_eq!(got, want);
        // Idempotent per sandbox.
        assert_eq!(ipam.allocate(rec("s3")).unwrap(), want[3]);
        let err = ipam.allocate(rec("s5")).unwrap_err();
        assert!(
            matches!(err, NetworkError::IpamExhausted { capacity: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("10.244.3.0/29"), "{err}");
        // Release frees exactly that address, and the files follow.
        let (ip, r) = ipam.release("s1").unwrap().unwrap();
        assert_eq!((ip, r.sandbox_id.as_str()), (want[1], "s1"));
        assert!(ipam.release("s1").unwrap().is_none());
        assert!(!ipam.dir.join(want[1].to_string()).exists());
        assert_eq!(ipam.allocate(rec("s5")).unwrap(), want[1]);
    }

    #[test]
    fn state_survives_reopen_and_is_shared_safely() {
        let tmp = tempfile::tempdir().unwrap();
        let cidr: Ipv4Net = "10.244.9.0/24".parse().unwrap();
        let mut a = Ipam::open(tmp.path(), cidr).unwrap();
        let ip1 = a.allocate(rec("one")).unwrap();
        let mut r = rec("one");
        r.host_ports.push(HostPortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: super::super::Protocol::Tcp,
            host_ip: None,
        });
        a.update(ip1, r.clone()).unwrap();
        // A second instance over the same directory (e.g. a restarted kubelet) sees it...
        let mut b = Ipam::open(tmp.path(), cidr).unwrap();
        assert_eq!(b.get("one"), Some((ip1, r)));
        // ...and so never hands out the same address, even when the first instance
        // allocates after the second one loaded.
        let ip2 = a.allocate(rec("two")).unwrap();
        let ip3 = b.allocate(rec("three")).unwrap();
        assert!(ip1 != ip2 && ip2 != ip3 && ip1 != ip3, "{ip1} {ip2} {ip3}");
        // A corrupt record keeps its address reserved.
        fs::write(a.dir.join("10.244.9.200"), b"{not json").unwrap();
        let c = Ipam::open(tmp.path(), cidr).unwrap();
        assert!(c.by_ip.contains_key(&Ipv4Addr::new(10, 244, 9, 200)));
        assert_eq!(c.list().len(), 3);
    }

    #[test]
    fn rejects_bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(Ipam::open(tmp.path(), "10.244.0.0/31".parse().unwrap()).is_err());
        let mut ipam = Ipam::open(tmp.path(), "10.244.0.0/24".parse().unwrap()).unwrap();
        assert!(ipam.allocate(rec("../x")).is_err());
        assert!(ipam.allocate(rec("")).is_err());
        assert_eq!(
            gateway("10.244.7.0/24".parse().unwrap()),
            Ipv4Addr::new(10, 244, 7, 1)
        );
    }
}
