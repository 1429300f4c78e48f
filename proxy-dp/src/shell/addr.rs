//! Assigning Service VIPs to a node device (`lo` by default) with `ip -batch`, so per-core
//! listeners can bind them.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        // IPv6: `nodad`, or the address stays "tentative" during duplicate address
        // detection and the listeners' bind fails with EADDRNOTAVAIL for about a second.
        let (plen, flags) = match (ip.is_ipv4(), add) {
            (true, _) => (32, ""),
            (false, true) => (128, " nodad"),
            (false, false) => (128, ""),
        };
        script.push_str(&format!("address {verb} {ip}/{plen} dev {dev}{flags}\n"));
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
    if !real.is_empty() {
        return Err(err(real.join("; ")));
    }
    if add {
        wait_usable(ips);
    }
    Ok(())
}

/// How long [`wait_usable`] waits for IPv6 addresses at most.
const V6_SETTLE: Duration = Duration::from_secs(2);

/// Waits (bounded by [`V6_SETTLE`]) until each new IPv6 address can be bound and routed to.
/// The kernel finishes adding an IPv6 address (clears "tentative", inserts its local route)
/// in a work item after `ip address add` returns, even with `nodad`: until then a listener's
/// bind fails with EADDRNOTAVAIL and a connect with ENETUNREACH. IPv4 addresses are usable
/// at once.
fn wait_usable(ips: &[IpAddr]) {
    let t0 = Instant::now();
    for ip in ips.iter().filter(|ip| ip.is_ipv6()) {
        // A TCP connection to a throwaway listener on the address: bindable (not
        // tentative) and delivered locally (its local route is in; the prefix route alone,
        // inserted first, lets a UDP connect pass while TCP still gets ENETUNREACH).
        let usable = || {
            std::net::TcpListener::bind(SocketAddr::new(*ip, 0))
                .and_then(|l| l.local_addr())
                .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(100)))
                .is_ok()
        };
        while !usable() && t0.elapsed() < V6_SETTLE {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
