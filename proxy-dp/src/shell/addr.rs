//! Assigning Service VIPs to a node device (`lo` by default) with `ip -batch`, so per-core
//! listeners can bind them.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::error::ShellError;

/// Adds (`add == true`) or removes `ips` on `dev` in one `ip -force -batch -` run (errors
/// such as "address already assigned" do not stop the others). Returns the first failure.
pub fn change_addresses(dev: &str, ips: &[IpAddr], add: bool) -> Result<(), ShellError> {
    if ips.is_empty() {
        return Ok(());
    }
    let verb = if add { "add" } else { "del" };
    let mut script = String::new();
    for ip in ips {
        let plen = if ip.is_ipv4() { 32 } else { 128 };
        script.push_str(&format!("address {verb} {ip}/{plen} dev {dev}\n"));
    }
    let err = |detail: String| ShellError::Address {
        action: if add { "adding" } else { "removing" },
        ip: ips[0],
        dev: dev.to_string(),
        detail,
    };
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Adding an address that exists, or removing one that is gone, is what we wanted.
    let real: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !l.contains("File exists")
                && !l.contains("already assigned")
                && !l.contains("Cannot assign requested address")
                && !l.contains("Command failed")
                && !l.trim().is_empty()
        })
        .collect();
    if real.is_empty() {
        Ok(())
    } else {
        Err(err(real.join("; ")))
    }
}
