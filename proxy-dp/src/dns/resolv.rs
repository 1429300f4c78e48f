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

/// Search domains a pod's resolv.conf keeps at most (upstream kubelet's `MaxDNSSearchPaths`).
pub const MAX_SEARCH_DOMAINS: usize = 32;
/// Characters the search line may hold at most (upstream's `MaxDNSSearchListChars`).
pub const MAX_SEARCH_CHARS: usize = 2048;

/// A pod's DNS settings, as the kubelet reads them from the pod spec.
#[derive(Clone, Debug, Default)]
pub struct PodDns<'a> {
    /// `metadata.namespace`.
    pub namespace: &'a str,
    /// `spec.dnsPolicy` (`ClusterFirst` when unset).
    pub policy: Option<&'a str>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.dnsConfig.nameservers`.
    pub nameservers: &'a [String],
    /// `spec.dnsConfig.searches`.
    pub searches: &'a [String],
    /// `spec.dnsConfig.options` as (name, value).
    pub options: &'a [(String, Option<String>)],
}

/// The `/etc/resolv.conf` the kubelet writes for a pod (upstream's `dns.Configurer`):
///
/// - `ClusterFirst` (the default; with `hostNetwork` only `ClusterFirstWithHostNet`):
///   `nameserver` = the cluster DNS, `search <ns>.svc.<domain> svc.<domain> <domain>` then
///   the host's search domains, `options ndots:5`.
/// - `Default` (and `ClusterFirst` on the host network): the host's resolv.conf.
/// - `None`: only what `dnsConfig` gives.
///
/// `dnsConfig` is merged in: nameservers and searches appended (duplicates dropped), options
/// replacing same-named ones. Limits as glibc and upstream: 3 nameservers, 32 search
/// domains, 2048 characters of search line.
pub fn pod_resolv_conf(
    pod: &PodDns<'_>,
    cluster_dns: &[IpAddr],
    domain: &str,
    host: &str,
) -> String {
    let word_lines = |key: &str| -> Vec<String> {
        host.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key)).then(|| w.map(str::to_owned).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    };
    let host_ns = word_lines("nameserver");
    // The last `search` (or `domain`) line wins in glibc.
    let host_search: Vec<String> = host
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            matches!(w.next(), Some("search" | "domain")).then(|| w.map(str::to_owned).collect())
        })
        .next_back()
        .unwrap_or_default();
    let host_opts: Vec<(String, Option<String>)> = word_lines("options")
        .into_iter()
        .map(|o| match o.split_once(':') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (o, None),
        })
        .collect();
    let policy = pod.policy.unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !pod.host_network,
        _ => false,
    };
    type Opts = Vec<(String, Option<String>)>;
    let (mut ns, mut search, mut opts): (Vec<String>, Vec<String>, Opts) = if policy == "None" {
        (Vec::new(), Vec::new(), Vec::new())
    } else if cluster && !cluster_dns.is_empty() {
        let d = domain.trim_end_matches('.');
        let mut s = vec![
            format!("{}.svc.{d}", pod.namespace),
            format!("svc.{d}"),
            d.to_owned(),
        ];
        s.extend(host_search);
        (
            cluster_dns.iter().map(ToString::to_string).collect(),
            s,
            vec![("ndots".to_owned(), Some("5".to_owned()))],
        )
    } else {
        (host_ns, host_search, host_opts)
    };
    for n in pod.nameservers {
        if !ns.contains(n) {
            ns.push(n.clone());
        }
    }
    for s in pod.searches {
        if !search.contains(s) {
            search.push(s.clone());
        }
    }
    for (k, v) in pod.options {
        opts.retain(|(o, _)| o != k);
        opts.push((k.clone(), v.clone()));
    }
    ns.truncate(MAX_UPSTREAMS);
    let mut kept: Vec<String> = Vec::new();
    let mut chars = 0;
    for s in search {
        let s = s.trim_end_matches('.').to_owned();
        if s.is_empty() || kept.contains(&s) || kept.len() == MAX_SEARCH_DOMAINS {
            continue;
        }
        if chars + s.len() + usize::from(!kept.is_empty()) > MAX_SEARCH_CHARS {
            break;
        }
        chars += s.len() + usize::from(!kept.is_empty());
        kept.push(s);
    }
    let mut out = String::new();
    for n in &ns {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !kept.is_empty() {
        out.push_str(&format!("search {}\n", kept.join(" ")));
    }
    if !opts.is_empty() {
        let o: Vec<String> = opts
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}:{v}"),
                None => k.clone(),
            })
            .collect();
        out.push_str(&format!("options {}\n", o.join(" ")));
    }
    out
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
