//! Container probes as upstream's kubelet runs them: one probe attempt ([`probe_once`]) with
//! the exec, httpGet, tcpSocket and grpc handlers, and [`ProbeState`], the sans-IO state
//! machine over the timing fields that tells the kubelet when to probe next and when a
//! container becomes started, ready or unready, or must be restarted.
//!
//! The shell's obligations (the kubelet's pod worker):
//! 1. create a [`ProbeState`] when a container starts (`ProbeState::new(container, now)`),
//!    drain [`ProbeState::poll_event`] at once (a container without a startup probe is
//!    started at once; one without a readiness probe is ready once started);
//! 2. loop: `while let Some(kind) = state.poll_probe(now)` run `probe_container` (or
//!    [`probe_once`]) for `state.probe(kind)` without holding up other containers, and hand
//!    the result back with [`ProbeState::handle_result`];
//! 3. after each result drain [`ProbeState::poll_event`]: `Ready(b)` sets the container's
//!    ready flag (and the pod's Ready condition), `Restart` kills the container with the
//!    given grace period and, once a new container runs, calls [`ProbeState::restart`];
//! 4. sleep until [`ProbeState::poll_timeout`];
//! 5. on pod deletion call [`ProbeState::set_terminating`] (liveness and startup stop,
//!    readiness goes on as upstream).

mod http;
mod state;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use state::{ProbeEvent, ProbeKind, ProbeState, ProbeTiming};

/// Runs a command in a running container: the kubelet implements it over the runtime's
/// `exec_sync`. Returns the exit code and the combined output (bounded by the implementor),
/// or an error when the command could not be run at all.
#[async_trait::async_trait]
pub trait ExecProber: Send + Sync {
    /// Runs `argv` in `container_id`, giving up after `timeout`.
    async fn exec(
        &self,
        container_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>), String>;
}

/// The outcome of one probe attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The probe passed.
    Success,
    /// The probe failed, with upstream's message (counted towards failureThreshold).
    Failure(String),
    /// The probe could not be run (an unresolvable port, an exec that could not start): as
    /// upstream, the attempt is thrown away and counts neither way.
    Unknown(String),
}

impl ProbeResult {
    /// Whether it is a success.
    pub fn is_success(&self) -> bool {
        matches!(self, ProbeResult::Success)
    }
}

/// The User-Agent upstream's prober sends (`kube-probe/<major>.<minor>`).
pub const USER_AGENT: &str = "kube-probe/1.33";

/// At most this much of an HTTP response body is read (upstream's maxRespBodyLength).
pub const MAX_BODY_BYTES: usize = 10 * 1024;

/// Redirects followed to the same host before the probe fails (as Go's http.Client).
pub const MAX_REDIRECTS: usize = 10;

/// Bound on the output an exec probe message keeps.
const MAX_EXEC_OUTPUT: usize = 10 * 1024;

/// The probe's timeout (timeoutSeconds, default 1, at least 1).
pub fn probe_timeout(probe: &Probe) -> Duration {
    Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64)
}

/// Runs one attempt of `probe` against a container whose probe ports are numeric. A named
/// port gives [`ProbeResult::Unknown`]: use [`probe_container`] to resolve names against
/// the container's ports.
pub async fn probe_once(
    probe: &Probe,
    pod_ip: Option<IpAddr>,
    container_id: &str,
    exec: &dyn ExecProber,
) -> ProbeResult {
    run(probe, None, pod_ip, container_id, exec).await
}

/// Runs one attempt of `probe` for `container`, resolving named ports (httpGet, tcpSocket)
/// against `container.ports` as upstream's `ResolveContainerPort`.
pub async fn probe_container(
    probe: &Probe,
    container: &Container,
    pod_ip: Option<IpAddr>,
    container_id: &str,
    exec: &dyn ExecProber,
) -> ProbeResult {
    run(probe, Some(container), pod_ip, container_id, exec).await
}

async fn run(
    probe: &Probe,
    container: Option<&Container>,
    pod_ip: Option<IpAddr>,
    container_id: &str,
    exec: &dyn ExecProber,
) -> ProbeResult {
    let timeout = probe_timeout(probe);
    if let Some(e) = &probe.exec {
        let argv = e.command.clone().unwrap_or_default();
        if argv.is_empty() {
            return ProbeResult::Unknown("exec probe has no command".to_owned());
        }
        return exec_probe(exec, container_id, &argv, timeout).await;
    }
    if let Some(h) = &probe.http_get {
        let port = match resolve_port(&h.port, container) {
            Ok(p) => p,
            Err(e) => return ProbeResult::Unknown(e),
        };
        return http::http_probe(h, port, pod_ip, timeout).await;
    }
    if let Some(t) = &probe.tcp_socket {
        let port = match resolve_port(&t.port, container) {
            Ok(p) => p,
            Err(e) => return ProbeResult::Unknown(e),
        };
        let host = match t.host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h.to_owned(),
            None => match pod_ip {
                Some(ip) => ip.to_string(),
                None => return ProbeResult::Unknown("pod has no IP yet".to_owned()),
            },
        };
        return tcp_probe(&host, port, timeout).await;
    }
    if let Some(g) = &probe.grpc {
        let port = match u16::try_from(g.port) {
            Ok(p) if p > 0 => p,
            _ => return ProbeResult::Unknown(format!("invalid port number: {}", g.port)),
        };
        let Some(ip) = pod_ip else {
            return ProbeResult::Unknown("pod has no IP yet".to_owned());
        };
        return grpc_probe(ip, port, g.service.as_deref().unwrap_or(""), timeout).await;
    }
    ProbeResult::Unknown("missing probe handler".to_owned())
}

/// Resolves a probe port: a number in 1..=65535, or a name looked up in the container's
/// ports (a string of digits is taken as a number, as upstream).
pub fn resolve_port(port: &IntOrString, container: Option<&Container>) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            let found = container
                .and_then(|c| c.ports.as_ref())
                .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some(name.as_str())))
                .map(|p| p.container_port);
            match found {
                Some(n) => n,
                None => match name.parse::<i32>() {
                    Ok(n) => n,
                    Err(_) => return Err(format!("couldn't find port: {name}")),
                },
            }
        }
    };
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port number: {n}")),
    }
}

async fn exec_probe(
    exec: &dyn ExecProber,
    container_id: &str,
    argv: &[String],
    timeout: Duration,
) -> ProbeResult {
    // The runtime enforces the timeout; this bound only guards against an implementor that
    // does not (a little slack so its own timeout message wins).
    let guard = timeout + Duration::from_secs(1);
    match tokio::time::timeout(guard, exec.exec(container_id, argv, timeout)).await {
        Err(_) => ProbeResult::Failure(format!(
            "command {argv:?} timed out after {}s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => ProbeResult::Unknown(e),
        Ok(Ok((0, _))) => ProbeResult::Success,
        Ok(Ok((_, out))) => {
            let out = &out[..out.len().min(MAX_EXEC_OUTPUT)];
            ProbeResult::Failure(String::from_utf8_lossy(out).into_owned())
        }
    }
}

/// An I/O error as Go prints a syscall error ("connection refused").
fn os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Resolves `host:port` (an IP or a DNS name) to socket addresses.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let v: Vec<SocketAddr> = addrs.take(8).collect();
            if v.is_empty() {
                Err(format!("dial tcp: lookup {host}: no such host"))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(format!("dial tcp: lookup {host}: {e}")),
    }
}

/// `host:port` with brackets around IPv6 literals.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connects to the first address that answers, all within the caller's deadline.
async fn connect(addrs: &[SocketAddr]) -> Result<tokio::net::TcpStream, std::io::Error> {
    let mut last = std::io::Error::other("no addresses");
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn tcp_probe(host: &str, port: u16, timeout: Duration) -> ProbeResult {
    let target = join_host_port(host, port);
    let attempt = async {
        let addrs = resolve(host, port).await?;
        connect(&addrs)
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {target}: connect: {}", os_error(&e)))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => ProbeResult::Success,
        Ok(Err(e)) => ProbeResult::Failure(e),
        Err(_) => ProbeResult::Failure(format!("dial tcp {target}: i/o timeout")),
    }
}

async fn grpc_probe(ip: IpAddr, port: u16, service: &str, timeout: Duration) -> ProbeResult {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let addr = join_host_port(&ip.to_string(), port);
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .and_then(|e| e.user_agent(USER_AGENT))
    {
        Ok(e) => e.connect_timeout(timeout),
        Err(e) => return ProbeResult::Unknown(format!("bad address {addr}: {e}")),
    };
    let started = tokio::time::Instant::now();
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return ProbeResult::Failure(format!(
                "error: failed to connect service at {addr:?}: {e}"
            ));
        }
        Err(_) => {
            return ProbeResult::Failure(format!(
                "timeout: failed to connect service {addr:?} within {}s: context deadline exceeded",
                timeout.as_secs()
            ));
        }
    };
    let left = timeout.saturating_sub(started.elapsed());
    let mut client = HealthClient::new(channel);
    let req = HealthCheckRequest {
        service: service.to_owned(),
    };
    let resp = match tokio::time::timeout(left, client.check(req)).await {
        Err(_) => {
            return ProbeResult::Failure(format!(
                "timeout: health rpc did not complete within {}s",
                timeout.as_secs()
            ));
        }
        Ok(Err(status)) => {
            return ProbeResult::Failure(match status.code() {
                tonic::Code::Unimplemented => format!(
                    "error: this server does not implement the grpc health protocol \
                     (grpc.health.v1.Health): {}",
                    status.message()
                ),
                tonic::Code::DeadlineExceeded => format!(
                    "timeout: health rpc did not complete within {}s",
                    timeout.as_secs()
                ),
                _ => format!("error: health rpc probe failed: {status}"),
            });
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    match ServingStatus::try_from(resp.status) {
        Ok(ServingStatus::Serving) => ProbeResult::Success,
        Ok(s) => ProbeResult::Failure(format!(
            "service unhealthy (responded with {:?})",
            s.as_str_name()
        )),
        Err(_) => ProbeResult::Failure(format!(
            "service unhealthy (responded with \"{}\")",
            resp.status
        )),
    }
}
