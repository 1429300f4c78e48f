//! The record core: Services and EndpointSlices in, DNS answers out (CoreDNS's `kubernetes`
//! plugin schema). Pure data structure: no I/O, no clock, no tasks.
//!
//! Index: namespace -> { services by name, slices by name, slice names by service }. Applying
//! or deleting one object touches only that object's entries, so an update costs O(size of
//! the object), independent of how many Services the cluster has.
//!
//! Names answered (`<zone>` is `cluster.local` by default):
//!
//! | name | answer |
//! |---|---|
//! | `<zone>` | SOA, NS; NODATA for other types |
//! | `svc.<zone>`, `pod.<zone>`, `<ns>.pod.<zone>` | NODATA (empty non-terminals) |
//! | `<ns>.svc.<zone>` | NODATA when the namespace has Services, else NXDOMAIN |
//! | `<svc>.<ns>.svc.<zone>` | A/AAAA of the ClusterIPs; headless: of the ready endpoints; ExternalName: CNAME; SRV: one per port |
//! | `<ep>.<svc>.<ns>.svc.<zone>` | headless only: A/AAAA of the endpoint whose hostname (or dashed IP) is `<ep>` |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | SRV for the named port (targets: the Service name, or each ready endpoint's name for headless) with the addresses as additionals |
//! | `<a-b-c-d>.<ns>.pod.<zone>` | A a.b.c.d (AAAA for dashed IPv6), as CoreDNS's `pods insecure` |
//!
//! | `d.c.b.a.in-addr.arpa` / `<nibbles>.ip6.arpa` | PTR: a ClusterIP's `<svc>.<ns>.svc.<zone>`, an endpoint (pod) IP's `<hostname-or-dashed-ip>.<svc>.<ns>.svc.<zone>`, as CoreDNS's `kubernetes` plugin with the reverse zones; an address the cluster does not know is outside the zone (forwarded upstream when there is one, CoreDNS's `fallthrough in-addr.arpa ip6.arpa`) |
//!
//! Negative answers carry the zone's SOA in the authority section (RFC 2308).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::error::ConfigError;

/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The zone's name and answer TTL.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    zone: Name,
    ttl: u32,
}

impl ZoneConfig {
    /// A zone named `zone` (e.g. `cluster.local`) whose records carry `ttl` seconds.
    pub fn new(zone: &str, ttl: u32) -> Result<Self, ConfigError> {
        let mut name = Name::from_ascii(zone).map_err(|e| ConfigError::InvalidZone {
            zone: zone.to_owned(),
            reason: e.to_string(),
        })?;
        name.set_fqdn(true);
        if name.is_root() {
            return Err(ConfigError::InvalidZone {
                zone: zone.to_owned(),
                reason: "the root zone cannot be the cluster zone".to_owned(),
            });
        }
        Ok(Self {
            zone: name.to_lowercase(),
            ttl,
        })
    }

    /// Kubernetes' defaults: `cluster.local`, TTL 5 s (CoreDNS's `ttl` default).
    pub fn cluster_local() -> Self {
        Self {
            zone: Name::from_ascii("cluster.local.").unwrap_or_else(|_| Name::root()),
            ttl: 5,
        }
    }

    /// The zone name (lower case, fully qualified).
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The answer TTL in seconds.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }
}

/// A Service port or an EndpointSlice port, as SRV needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortEntry {
    /// Lower-case port name; empty when unnamed.
    name: String,
    /// `tcp`, `udp` or `sctp` (lower case, as in `_tcp`).
    proto: String,
    port: u16,
}

#[derive(Clone, Debug)]
enum ServiceKind {
    /// ClusterIPs assigned (one per family).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the endpoints are the answer.
    Headless,
    /// `type: ExternalName`: a CNAME.
    ExternalName(Name),
    /// No ClusterIP assigned yet: the name exists but has no addresses.
    Pending,
}

#[derive(Clone, Debug)]
struct ServiceEntry {
    kind: ServiceKind,
    ports: Vec<PortEntry>,
    /// `<svc>.<ns>.svc.<zone>`, built once.
    fqdn: Name,
}

#[derive(Clone, Debug)]
struct EndpointEntry {
    addrs: Vec<IpAddr>,
    /// Lower-case hostname, or the first address dashed (CoreDNS's endpoint name).
    label: String,
    /// `<label>.<svc>.<ns>.svc.<zone>`, built once.
    fqdn: Name,
    ready: bool,
}

#[derive(Clone, Debug)]
struct SliceEntry {
    service: String,
    endpoints: Vec<EndpointEntry>,
    ports: Vec<PortEntry>,
}

#[derive(Default, Debug)]
struct Namespace {
    services: HashMap<String, ServiceEntry>,
    slices: HashMap<String, SliceEntry>,
    /// Slice names per Service name (a Service usually has one or a few).
    slices_by_service: HashMap<String, BTreeSet<String>>,
}

impl Namespace {
    fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }

    fn service_slices<'a>(&'a self, svc: &str) -> impl Iterator<Item = &'a SliceEntry> + 'a {
        self.slices_by_service
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|n| self.slices.get(n))
    }
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Lookup {
    /// The name is inside the cluster zone: this is the authoritative answer.
    Answer(Answer),
    /// The name is outside the zone: the shell forwards it upstream (or refuses).
    NotInZone,
}

/// An authoritative answer: the sections of the response.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Answer {
    /// `NoError` (with answers, or none for NODATA) or `NXDomain`.
    pub rcode: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA on negative answers).
    pub authorities: Vec<Record>,
    /// The additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
}

impl Answer {
    /// Whether this is NODATA: the name exists, no record of the asked type.
    pub fn is_nodata(&self) -> bool {
        self.rcode == ResponseCode::NoError && self.answers.is_empty()
    }
}

/// The cluster zone's records, indexed for O(1) updates per object.
#[derive(Debug)]
pub struct ClusterZone {
    cfg: ZoneConfig,
    namespaces: HashMap<String, Namespace>,
    /// Address -> the names PTR answers for it (ClusterIPs, endpoint addresses); kept in step
    /// with the index by each apply/delete, so it costs O(the object) too.
    reverse: HashMap<IpAddr, Vec<Name>>,
    /// Bumped on every change; the SOA serial (the core reads no clock).
    serial: u32,
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa.`, 32 nibbles + `ip6.arpa.`) stands
/// for; `None` for any other name, including partial reverse names.
pub fn reverse_name_ip(lower: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = lower.iter().collect();
    match labels.as_slice() {
        [d, c, b, a, in_addr, arpa] if *in_addr == b"in-addr" && *arpa == b"arpa" => {
            let o = |l: &[u8]| std::str::from_utf8(l).ok()?.parse::<u8>().ok();
            Some(IpAddr::V4(Ipv4Addr::new(o(a)?, o(b)?, o(c)?, o(d)?)))
        }
        [nibbles @ .., ip6, arpa] if nibbles.len() == 32 && *ip6 == b"ip6" && *arpa == b"arpa" => {
            let mut v: u128 = 0;
            for l in nibbles.iter().rev() {
                let [h] = l else { return None };
                let d = char::from(*h).to_digit(16)?;
                v = (v << 4) | u128::from(d);
            }
            Some(IpAddr::V6(Ipv6Addr::from(v)))
        }
        _ => None,
    }
}

fn rev_add(rev: &mut HashMap<IpAddr, Vec<Name>>, ip: IpAddr, name: &Name) {
    let v = rev.entry(ip).or_default();
    if !v.contains(name) {
        v.push(name.clone());
    }
}

fn rev_del(rev: &mut HashMap<IpAddr, Vec<Name>>, ip: IpAddr, name: &Name) {
    if let Some(v) = rev.get_mut(&ip) {
        v.retain(|n| n != name);
        if v.is_empty() {
            rev.remove(&ip);
        }
    }
}

fn rev_service(rev: &mut HashMap<IpAddr, Vec<Name>>, e: &ServiceEntry, add: bool) {
    if let ServiceKind::ClusterIp(ips) = &e.kind {
        for ip in ips {
            if add {
                rev_add(rev, *ip, &e.fqdn);
            } else {
                rev_del(rev, *ip, &e.fqdn);
            }
        }
    }
}

fn rev_slice(rev: &mut HashMap<IpAddr, Vec<Name>>, s: &SliceEntry, add: bool) {
    for ep in &s.endpoints {
        for ip in &ep.addrs {
            if add {
                rev_add(rev, *ip, &ep.fqdn);
            } else {
                rev_del(rev, *ip, &ep.fqdn);
            }
        }
    }
}

fn ns_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(&str, &str)> {
    Some((meta.namespace.as_deref()?, meta.name.as_deref()?))
}

fn parse_proto(p: Option<&str>) -> String {
    p.unwrap_or("TCP").to_ascii_lowercase()
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// `10.0.0.1` -> `10-0-0-1`; `fd00::1` -> `fd00--1`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// `10-0-0-1` -> 10.0.0.1; `fd00--1` -> fd00::1.
fn undashed(label: &str) -> Option<IpAddr> {
    if label.contains('.') || label.contains(':') {
        return None;
    }
    let dots = label.replace('-', ".");
    if let Ok(v4) = dots.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn addr_record(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), ttl, data)
}

/// Advances an SOA serial (never 0).
fn bump(serial: &mut u32) {
    *serial = serial.wrapping_add(1).max(1);
}

fn family_matches(qtype: RecordType, ip: &IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

impl ClusterZone {
    /// An empty zone.
    pub fn new(cfg: ZoneConfig) -> Self {
        Self {
            cfg,
            namespaces: HashMap::new(),
            reverse: HashMap::new(),
            serial: 1,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ZoneConfig {
        &self.cfg
    }

    /// The SOA serial: changes whenever the zone's content does.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Number of Services indexed.
    pub fn service_count(&self) -> usize {
        self.namespaces.values().map(|n| n.services.len()).sum()
    }

    fn bump(&mut self) {
        bump(&mut self.serial);
    }

    fn name_under(&self, labels: &[&str]) -> Option<Name> {
        let mut name = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
        name = name.append_name(&self.cfg.zone).ok()?;
        name.set_fqdn(true);
        Some(name)
    }

    /// Adds or replaces a Service. Objects without a namespace or name are ignored.
    pub fn apply_service(&mut self, svc: &Service) {
        let Some((ns, name)) = ns_key(&svc.metadata) else {
            return;
        };
        let Some(fqdn) = self.name_under(&[name, ns, "svc"]) else {
            return;
        };
        let spec = svc.spec.as_ref();
        let kind = match spec {
            Some(s) if s.type_.as_deref() == Some("ExternalName") => {
                match s
                    .external_name
                    .as_deref()
                    .and_then(|n| Name::from_ascii(n).ok())
                {
                    Some(mut target) => {
                        target.set_fqdn(true);
                        ServiceKind::ExternalName(target)
                    }
                    None => ServiceKind::Pending,
                }
            }
            Some(s) if s.cluster_ip.as_deref() == Some("None") => ServiceKind::Headless,
            Some(s) => {
                let mut ips: Vec<IpAddr> = s
                    .cluster_ips
                    .iter()
                    .flatten()
                    .chain(s.cluster_ip.iter())
                    .filter_map(|ip| ip.parse().ok())
                    .collect();
                ips.sort_unstable();
                ips.dedup();
                if ips.is_empty() {
                    ServiceKind::Pending
                } else {
                    ServiceKind::ClusterIp(ips)
                }
            }
            None => ServiceKind::Pending,
        };
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(PortEntry {
                    name: p.name.as_deref().unwrap_or("").to_ascii_lowercase(),
                    proto: parse_proto(p.protocol.as_deref()),
                    port: port_u16(p.port)?,
                })
            })
            .collect();
        let entry = ServiceEntry { kind, ports, fqdn };
        rev_service(&mut self.reverse, &entry, true);
        if let Some(old) = self
            .namespaces
            .entry(ns.to_owned())
            .or_default()
            .services
            .insert(name.to_owned(), entry.clone())
        {
            rev_service(&mut self.reverse, &old, false);
            // The same name and address stay if they did not change.
            rev_service(&mut self.reverse, &entry, true);
        }
        self.bump();
    }

    /// Removes a Service (its EndpointSlices stay until they are deleted themselves).
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let Some(n) = self.namespaces.get_mut(namespace) else {
            return;
        };
        if let Some(old) = n.services.remove(name) {
            rev_service(&mut self.reverse, &old, false);
            bump(&mut self.serial);
        }
        if n.is_empty() {
            self.namespaces.remove(namespace);
        }
    }

    /// Adds or replaces an EndpointSlice (keyed by its own name; it belongs to the Service
    /// named by its `kubernetes.io/service-name` label). Slices without that label are
    /// ignored.
    pub fn apply_endpoint_slice(&mut self, slice: &EndpointSlice) {
        let Some((ns, name)) = ns_key(&slice.metadata) else {
            return;
        };
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned();
        let Some(service) = service else {
            // A slice that lost its label no longer belongs to any Service.
            self.delete_endpoint_slice(ns, name);
            return;
        };
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|ep| self.endpoint_entry(ep, &service, ns))
            .collect();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(PortEntry {
                    name: p.name.as_deref().unwrap_or("").to_ascii_lowercase(),
                    proto: parse_proto(p.protocol.as_deref()),
                    port: port_u16(p.port?)?,
                })
            })
            .collect();
        let entry = SliceEntry {
            service: service.clone(),
            endpoints,
            ports,
        };
        let n = self.namespaces.entry(ns.to_owned()).or_default();
        let old = n.slices.insert(name.to_owned(), entry);
        if let Some(old) = &old
            && old.service != service
            && let Some(set) = n.slices_by_service.get_mut(&old.service)
        {
            set.remove(name);
            if set.is_empty() {
                n.slices_by_service.remove(&old.service);
            }
        }
        if let Some(old) = &old {
            rev_slice(&mut self.reverse, old, false);
        }
        if let Some(new) = n.slices.get(name) {
            rev_slice(&mut self.reverse, new, true);
        }
        n.slices_by_service
            .entry(service)
            .or_default()
            .insert(name.to_owned());
        self.bump();
    }

    fn endpoint_entry(
        &self,
        ep: &k8s_openapi::api::discovery::v1::Endpoint,
        service: &str,
        ns: &str,
    ) -> Option<EndpointEntry> {
        let addrs: Vec<IpAddr> = ep.addresses.iter().filter_map(|a| a.parse().ok()).collect();
        let first = *addrs.first()?;
        // `ready` unset means ready (the API's documented default).
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        let label = match ep.hostname.as_deref() {
            Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
            _ => dashed(first),
        };
        let fqdn = self.name_under(&[&label, service, ns, "svc"])?;
        Some(EndpointEntry {
            addrs,
            label,
            fqdn,
            ready,
        })
    }

    /// Removes an EndpointSlice.
    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) {
        let Some(n) = self.namespaces.get_mut(namespace) else {
            return;
        };
        if let Some(old) = n.slices.remove(name) {
            rev_slice(&mut self.reverse, &old, false);
            if let Some(set) = n.slices_by_service.get_mut(&old.service) {
                set.remove(name);
                if set.is_empty() {
                    n.slices_by_service.remove(&old.service);
                }
            }
            bump(&mut self.serial);
        }
        if n.is_empty() {
            self.namespaces.remove(namespace);
        }
    }

    // === lookup ===

    /// The zone's SOA record (also the authority of negative answers).
    pub fn soa(&self) -> Record {
        let zone = &self.cfg.zone;
        let mname = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_name(zone))
            .unwrap_or_else(|_| zone.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_name(zone))
            .unwrap_or_else(|_| zone.clone());
        let ttl = self.cfg.ttl;
        // refresh/retry/expire as CoreDNS's kubernetes plugin; minimum = the record TTL.
        let soa = SOA::new(mname, rname, self.serial, 7200, 1800, 86400, ttl);
        Record::from_rdata(zone.clone(), ttl, RData::SOA(soa))
    }

    fn negative(&self, rcode: ResponseCode) -> Answer {
        Answer {
            rcode,
            authorities: vec![self.soa()],
            ..Answer::default()
        }
    }

    fn nxdomain(&self) -> Answer {
        self.negative(ResponseCode::NXDomain)
    }

    fn nodata(&self) -> Answer {
        self.negative(ResponseCode::NoError)
    }

    fn positive(&self, answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        if answers.is_empty() {
            return self.nodata();
        }
        Answer {
            rcode: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
            additionals,
        }
    }

    /// Answers `qname`/`qtype` from the index. `qname` may be in any case; answer records
    /// are owned by `qname` as asked (so 0x20 case randomisation survives).
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let zone = &self.cfg.zone;
        let lower = qname.to_lowercase();
        if !zone.zone_of(&lower) {
            return self.reverse_lookup(qname, &lower, qtype);
        }
        let depth = usize::from(lower.num_labels()) - usize::from(zone.num_labels());
        let labels: Vec<&[u8]> = lower.iter().take(depth).collect();
        let Some(labels) = labels
            .iter()
            .map(|l| std::str::from_utf8(l).ok())
            .collect::<Option<Vec<&str>>>()
        else {
            return Lookup::Answer(self.nxdomain());
        };
        let mut owner = qname.clone();
        owner.set_fqdn(true);
        Lookup::Answer(match labels.as_slice() {
            [] => self.apex(&owner, qtype),
            ["svc"] | ["pod"] | [_, "pod"] => self.nodata(),
            [ns, "svc"] => match self.namespaces.get(*ns) {
                Some(n) if !n.services.is_empty() => self.nodata(),
                _ => self.nxdomain(),
            },
            [svc, ns, "svc"] => self.service(&owner, qtype, ns, svc),
            [first, svc, ns, "svc"] => self.below_service(&owner, qtype, ns, svc, first),
            [port, proto, svc, ns, "svc"] => self.srv_named(&owner, qtype, ns, svc, port, proto),
            [ip, _ns, "pod"] => self.pod(&owner, qtype, ip),
            _ => self.nxdomain(),
        })
    }

    /// PTR for an address the cluster knows; anything else outside the zone.
    fn reverse_lookup(&self, qname: &Name, lower: &Name, qtype: RecordType) -> Lookup {
        let Some(names) = reverse_name_ip(lower).and_then(|ip| self.reverse.get(&ip)) else {
            return Lookup::NotInZone;
        };
        let mut owner = qname.clone();
        owner.set_fqdn(true);
        let answers = if matches!(qtype, RecordType::PTR | RecordType::ANY) {
            names
                .iter()
                .map(|n| {
                    Record::from_rdata(owner.clone(), self.cfg.ttl, RData::PTR(PTR(n.clone())))
                })
                .collect()
        } else {
            Vec::new()
        };
        // NODATA here carries no SOA: the cluster zone is not the reverse zone's authority.
        Lookup::Answer(Answer {
            rcode: ResponseCode::NoError,
            answers,
            ..Answer::default()
        })
    }

    fn apex(&self, owner: &Name, qtype: RecordType) -> Answer {
        match qtype {
            RecordType::SOA => {
                let mut soa = self.soa();
                soa.name = owner.clone();
                self.positive(vec![soa], Vec::new())
            }
            RecordType::NS => {
                let target = Name::from_ascii("ns.dns")
                    .and_then(|n| n.append_name(&self.cfg.zone))
                    .unwrap_or_else(|_| self.cfg.zone.clone());
                let ns = Record::from_rdata(owner.clone(), self.cfg.ttl, RData::NS(NS(target)));
                self.positive(vec![ns], Vec::new())
            }
            _ => self.nodata(),
        }
    }

    fn find_service(&self, ns: &str, svc: &str) -> Option<(&Namespace, &ServiceEntry)> {
        let n = self.namespaces.get(ns)?;
        Some((n, n.services.get(svc)?))
    }

    fn service(&self, owner: &Name, qtype: RecordType, ns: &str, svc: &str) -> Answer {
        let Some((n, entry)) = self.find_service(ns, svc) else {
            return self.nxdomain();
        };
        let ttl = self.cfg.ttl;
        match (&entry.kind, qtype) {
            (ServiceKind::ExternalName(target), _) => {
                let cname =
                    Record::from_rdata(owner.clone(), ttl, RData::CNAME(CNAME(target.clone())));
                self.positive(vec![cname], Vec::new())
            }
            (_, RecordType::SRV) => self.srv(entry, n, svc, None),
            (ServiceKind::ClusterIp(ips), _) => {
                let answers = ips
                    .iter()
                    .filter(|ip| family_matches(qtype, ip))
                    .map(|ip| addr_record(owner, ttl, *ip))
                    .collect();
                self.positive(answers, Vec::new())
            }
            (ServiceKind::Headless, _) => {
                let mut seen = Vec::new();
                let answers = n
                    .service_slices(svc)
                    .flat_map(|s| s.endpoints.iter())
                    .filter(|ep| ep.ready)
                    .flat_map(|ep| ep.addrs.iter())
                    .filter(|ip| family_matches(qtype, ip))
                    .filter(|ip| {
                        // Slices can overlap during updates; answer each address once.
                        if seen.contains(*ip) {
                            false
                        } else {
                            seen.push(**ip);
                            true
                        }
                    })
                    .map(|ip| addr_record(owner, ttl, *ip))
                    .collect();
                self.positive(answers, Vec::new())
            }
            (ServiceKind::Pending, _) => self.nodata(),
        }
    }

    /// One label below a Service: a headless endpoint's name, or a `_proto` empty
    /// non-terminal of the SRV names.
    fn below_service(
        &self,
        owner: &Name,
        qtype: RecordType,
        ns: &str,
        svc: &str,
        first: &str,
    ) -> Answer {
        let Some((n, entry)) = self.find_service(ns, svc) else {
            return self.nxdomain();
        };
        if let Some(proto) = first.strip_prefix('_') {
            let exists = entry
                .ports
                .iter()
                .any(|p| !p.name.is_empty() && p.proto == proto);
            return if exists {
                self.nodata()
            } else {
                self.nxdomain()
            };
        }
        if !matches!(entry.kind, ServiceKind::Headless) {
            return self.nxdomain();
        }
        let ttl = self.cfg.ttl;
        let mut found = false;
        let mut answers = Vec::new();
        for ep in n
            .service_slices(svc)
            .flat_map(|s| s.endpoints.iter())
            .filter(|ep| ep.ready && ep.label == first)
        {
            found = true;
            answers.extend(
                ep.addrs
                    .iter()
                    .filter(|ip| family_matches(qtype, ip))
                    .map(|ip| addr_record(owner, ttl, *ip)),
            );
        }
        if found {
            self.positive(answers, Vec::new())
        } else {
            self.nxdomain()
        }
    }

    fn srv_named(
        &self,
        owner: &Name,
        qtype: RecordType,
        ns: &str,
        svc: &str,
        port: &str,
        proto: &str,
    ) -> Answer {
        let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else {
            return self.nxdomain();
        };
        let Some((n, entry)) = self.find_service(ns, svc) else {
            return self.nxdomain();
        };
        if port.is_empty()
            || !entry
                .ports
                .iter()
                .any(|p| p.name == port && p.proto == proto)
        {
            return self.nxdomain();
        }
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return self.nodata();
        }
        let mut a = self.srv(entry, n, svc, Some((port, proto)));
        for r in &mut a.answers {
            r.name = owner.clone();
        }
        a
    }

    /// SRV records of a Service: all its ports (`filter` None, owner = the Service name) or
    /// the one named port. Targets are the Service name (ClusterIP) or each ready endpoint's
    /// name (headless), their addresses in the additional section.
    fn srv(
        &self,
        entry: &ServiceEntry,
        n: &Namespace,
        svc: &str,
        filter: Option<(&str, &str)>,
    ) -> Answer {
        let ttl = self.cfg.ttl;
        let wanted =
            |p: &PortEntry| filter.is_none_or(|(name, proto)| p.name == name && p.proto == proto);
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match &entry.kind {
            ServiceKind::ClusterIp(ips) => {
                for p in entry.ports.iter().filter(|p| wanted(p)) {
                    let srv = SRV::new(0, 100, p.port, entry.fqdn.clone());
                    answers.push(Record::from_rdata(entry.fqdn.clone(), ttl, RData::SRV(srv)));
                }
                if !answers.is_empty() {
                    additionals.extend(ips.iter().map(|ip| addr_record(&entry.fqdn, ttl, *ip)));
                }
            }
            ServiceKind::Headless => {
                let mut targets: Vec<(&EndpointEntry, u16)> = Vec::new();
                for s in n.service_slices(svc) {
                    for p in s.ports.iter().filter(|p| wanted(p)) {
                        for ep in s.endpoints.iter().filter(|e| e.ready) {
                            if !targets
                                .iter()
                                .any(|(e, port)| e.fqdn == ep.fqdn && *port == p.port)
                            {
                                targets.push((ep, p.port));
                            }
                        }
                    }
                }
                // Equal weights summing to about 100, as CoreDNS.
                let weight = u16::try_from(100 / targets.len().max(1))
                    .unwrap_or(1)
                    .max(1);
                for (ep, port) in &targets {
                    let srv = SRV::new(0, weight, *port, ep.fqdn.clone());
                    answers.push(Record::from_rdata(entry.fqdn.clone(), ttl, RData::SRV(srv)));
                }
                let mut seen: Vec<&Name> = Vec::new();
                for (ep, _) in &targets {
                    if seen.contains(&&ep.fqdn) {
                        continue;
                    }
                    seen.push(&ep.fqdn);
                    additionals.extend(ep.addrs.iter().map(|ip| addr_record(&ep.fqdn, ttl, *ip)));
                }
            }
            ServiceKind::ExternalName(_) | ServiceKind::Pending => {}
        }
        self.positive(answers, additionals)
    }

    fn pod(&self, owner: &Name, qtype: RecordType, label: &str) -> Answer {
        let Some(ip) = undashed(label) else {
            return self.nxdomain();
        };
        let answers = if family_matches(qtype, &ip) {
            vec![addr_record(owner, self.cfg.ttl, ip)]
        } else {
            Vec::new()
        };
        self.positive(answers, Vec::new())
    }
}
