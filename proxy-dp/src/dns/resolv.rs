//! Upstream resolvers from a resolv.conf: its `nameserver` lines, port 53, at most
//! [`MAX_UPSTREAMS`] (glibc's MAXNS), in file order.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::error::ResolvConfError;

/// How many nameservers are used at most (glibc reads three).
pub const MAX_UPSTREAMS: usize = 3;

/// Parses resolv.conf text. Unparsable lines are skipped, as the C resolver does; IPv6
/// zone ids (`fe80::1%eth0`) are dropped with the address (we cannot bind them portably).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        let sa = SocketAddr::new(ip, 53);
        if !out.contains(&sa) {
            out.push(sa);
        }
        if out.len() == MAX_UPSTREAMS {
            break;
        }
    }
    out
}

/// Reads and parses the resolv.conf at `path`.
pub fn read_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, ResolvConfError> {
    let text = std::fs::read_to_string(path).map_err(|source| ResolvConfError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_resolv_conf(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_in_order_deduplicated_bounded() {
        let text = "# comment\nsearch a.b\nnameserver 10.0.0.10\nnameserver  ::1 \n\
                    nameserver bogus\nnameserver 10.0.0.10\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n";
        let got = parse_resolv_conf(text);
        let want: Vec<SocketAddr> = vec![
            "10.0.0.10:53".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            "1.1.1.1:53".parse().unwrap(),
        ];
        assert_eq!(got, want);
        assert!(parse_resolv_conf("options ndots:5\n").is_empty());
    }
}
