//! Probe handlers against real sockets on 127.0.0.1: an HTTP(S) server answering 200, 500
//! and redirects, a TCP listener, a tonic gRPC health server; exec through a fake prober.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, Probe,
    TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use node::probe::{ExecProber, ProbeResult, probe_container, probe_once};
use tokio::net::TcpListener;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct NoExec;

#[async_trait::async_trait]
impl ExecProber for NoExec {
    async fn exec(&self, _: &str, _: &[String], _: Duration) -> Result<(i32, Vec<u8>), String> {
        Err("no exec in this test".into())
    }
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let reply = |code: u16, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
        r
    };
    let redirect = |to: &str| {
        let mut r = reply(302, b"moved".to_vec());
        r.headers_mut().insert("location", to.parse().unwrap());
        r
    };
    Ok(match path.as_str() {
        "/ok" => reply(200, b"fine".to_vec()),
        "/fail" => reply(500, b"broken".to_vec()),
        "/created" => reply(204, vec![]),
        "/notfound" => reply(404, vec![]),
        "/redir-local" => redirect("/ok"),
        "/redir-relative" => redirect("ok"),
        "/redir-fail" => redirect("/fail"),
        "/redir-other-host" => redirect("http://other.invalid:1/fail"),
        "/loop" => redirect("/loop"),
        "/big" => reply(200, vec![b'x'; 1 << 20]),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            reply(200, vec![])
        }
        "/query" => {
            if req.uri().query() == Some("a=1&b=2") {
                reply(200, vec![])
            } else {
                reply(400, vec![])
            }
        }
        "/headers" => {
            let h = req.headers();
            let ok = h.get("user-agent").and_then(|v| v.to_str().ok()) == Some("kube-probe/1.33")
                && h.get("accept").and_then(|v| v.to_str().ok()) == Some("*/*")
                && h.get_all("x-probe").iter().count() == 2
                && h.get("host").and_then(|v| v.to_str().ok()) == Some("example.test");
            reply(if ok { 200 } else { 400 }, vec![])
        }
        _ => reply(404, vec![]),
    })
}

/// An HTTP/1 server on 127.0.0.1 (optionally TLS); returns its port. The task ends with the
/// test's runtime.
async fn http_server(tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(handle);
                let b = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(cfg) => {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await else {
                            return;
                        };
                        let _ = b.serve_connection(TokioIo::new(s), svc).await;
                    }
                    None => {
                        let _ = b.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
            });
        }
    });
    port
}

fn http_probe(port: i32, path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            port: IntOrString::Int(port),
            path: Some(path.into()),
            ..HTTPGetAction::default()
        }),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

async fn run(p: &Probe) -> ProbeResult {
    probe_once(p, Some(LOCAL), "c1", &NoExec).await
}

#[tokio::test]
async fn http_status_codes_and_redirects() {
    let port = http_server(None).await as i32;
    assert_eq!(run(&http_probe(port, "/ok")).await, ProbeResult::Success);
    assert_eq!(
        run(&http_probe(port, "/created")).await,
        ProbeResult::Success
    );
    assert_eq!(
        run(&http_probe(port, "/fail")).await,
        ProbeResult::Failure("HTTP probe failed with statuscode: 500".into())
    );
    assert_eq!(
        run(&http_probe(port, "/notfound")).await,
        ProbeResult::Failure("HTTP probe failed with statuscode: 404".into())
    );
    assert_eq!(
        run(&http_probe(port, "/query?a=1&b=2")).await,
        ProbeResult::Success
    );
    // Same-host redirects are followed: the final answer decides.
    assert_eq!(
        run(&http_probe(port, "/redir-local")).await,
        ProbeResult::Success
    );
    assert_eq!(
        run(&http_probe(port, "/redir-relative")).await,
        ProbeResult::Success
    );
    assert_eq!(
        run(&http_probe(port, "/redir-fail")).await,
        ProbeResult::Failure("HTTP probe failed with statuscode: 500".into())
    );
    // A redirect to another host is not followed: the 3xx passes (upstream's warning).
    assert_eq!(
        run(&http_probe(port, "/redir-other-host")).await,
        ProbeResult::Success
    );
    match run(&http_probe(port, "/loop")).await {
        ProbeResult::Failure(m) => assert!(m.contains("stopped after 10 redirects"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A 1 MiB body: only 10 KiB is read, and the probe still answers at once.
    let t = Instant::now();
    assert_eq!(run(&http_probe(port, "/big")).await, ProbeResult::Success);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn http_headers_and_host_override() {
    let port = http_server(None).await as i32;
    let mut p = http_probe(port, "/headers");
    assert!(matches!(run(&p).await, ProbeResult::Failure(_)));
    p.http_get.as_mut().unwrap().http_headers = Some(vec![
        HTTPHeader {
            name: "X-Probe".into(),
            value: "1".into(),
        },
        HTTPHeader {
            name: "X-Probe".into(),
            value: "2".into(),
        },
        HTTPHeader {
            name: "Host".into(),
            value: "example.test".into(),
        },
    ]);
    assert_eq!(run(&p).await, ProbeResult::Success);
}

#[tokio::test]
async fn http_timeout_is_honoured() {
    let port = http_server(None).await as i32;
    let t = Instant::now();
    match run(&http_probe(port, "/slow")).await {
        ProbeResult::Failure(m) => assert!(m.contains("Client.Timeout exceeded"), "{m}"),
        other => panic!("{other:?}"),
    }
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(900) && e < Duration::from_secs(3),
        "{e:?}"
    );
}

#[tokio::test]
async fn http_connection_refused_and_host_field() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap().port() as i32;
    drop(l);
    match run(&http_probe(dead, "/ok")).await {
        ProbeResult::Failure(m) => assert!(m.contains("connection refused"), "{m}"),
        other => panic!("{other:?}"),
    }
    // host set explicitly, no pod IP.
    let port = http_server(None).await as i32;
    let mut p = http_probe(port, "ok");
    p.http_get.as_mut().unwrap().host = Some("127.0.0.1".into());
    assert_eq!(
        probe_once(&p, None, "c", &NoExec).await,
        ProbeResult::Success
    );
    // No host and no pod IP: the attempt cannot run.
    p.http_get.as_mut().unwrap().host = None;
    assert!(matches!(
        probe_once(&p, None, "c", &NoExec).await,
        ProbeResult::Unknown(_)
    ));
}

#[tokio::test]
async fn named_ports_resolve_from_the_container() {
    let port = http_server(None).await as i32;
    let c = Container {
        name: "c".into(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: port,
            ..ContainerPort::default()
        }]),
        ..Container::default()
    };
    let mut p = http_probe(0, "/ok");
    p.http_get.as_mut().unwrap().port = IntOrString::String("http".into());
    assert_eq!(
        probe_container(&p, &c, Some(LOCAL), "id", &NoExec).await,
        ProbeResult::Success
    );
    // Without the container the name cannot be resolved: thrown away, not a failure.
    assert!(matches!(run(&p).await, ProbeResult::Unknown(m) if m.contains("couldn't find port")));
    p.http_get.as_mut().unwrap().port = IntOrString::String("nope".into());
    assert!(matches!(
        probe_container(&p, &c, Some(LOCAL), "id", &NoExec).await,
        ProbeResult::Unknown(_)
    ));
}

#[tokio::test]
async fn https_without_verification() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let port = http_server(Some(Arc::new(cfg))).await as i32;
    let mut p = http_probe(port, "/ok");
    p.http_get.as_mut().unwrap().scheme = Some("HTTPS".into());
    assert_eq!(run(&p).await, ProbeResult::Success);
    p.http_get.as_mut().unwrap().path = Some("/fail".into());
    assert!(matches!(run(&p).await, ProbeResult::Failure(_)));
    // Plain HTTP against the TLS port fails.
    p.http_get.as_mut().unwrap().scheme = Some("HTTP".into());
    assert!(matches!(run(&p).await, ProbeResult::Failure(_)));
}

fn tcp_probe(port: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            host: None,
        }),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

#[tokio::test]
async fn tcp_socket() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port() as i32;
    assert_eq!(run(&tcp_probe(port)).await, ProbeResult::Success);
    drop(l);
    match run(&tcp_probe(port)).await {
        ProbeResult::Failure(m) => assert!(m.contains("connection refused"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run(&tcp_probe(70000)).await,
        ProbeResult::Unknown(_)
    ));
}

async fn grpc_server() -> (u16, tonic_health::server::HealthReporter) {
    let (reporter, svc) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("down", tonic_health::ServingStatus::NotServing)
        .await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (port, reporter)
}

fn grpc_probe(port: u16, service: Option<&str>) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: port as i32,
            service: service.map(str::to_owned),
        }),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

#[tokio::test]
async fn grpc_health() {
    let (port, reporter) = grpc_server().await;
    assert_eq!(run(&grpc_probe(port, None)).await, ProbeResult::Success);
    assert_eq!(
        run(&grpc_probe(port, Some("down"))).await,
        ProbeResult::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
    );
    assert!(matches!(
        run(&grpc_probe(port, Some("unknown"))).await,
        ProbeResult::Failure(m) if m.starts_with("error: health rpc probe failed")
    ));
    reporter
        .set_service_status("down", tonic_health::ServingStatus::Serving)
        .await;
    assert_eq!(
        run(&grpc_probe(port, Some("down"))).await,
        ProbeResult::Success
    );
    // Nothing listening.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap().port();
    drop(l);
    assert!(matches!(
        run(&grpc_probe(dead, None)).await,
        ProbeResult::Failure(m) if m.starts_with("error: failed to connect")
    ));
}

#[tokio::test]
async fn grpc_timeout_against_a_silent_server() {
    // Accepts and never answers: the probe gives up after timeoutSeconds.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            conns.push(s);
            if conns.len() > 16 {
                return;
            }
        }
    });
    let t = Instant::now();
    match run(&grpc_probe(port, None)).await {
        ProbeResult::Failure(m) => assert!(m.starts_with("timeout"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// Answers exit codes by the first argv word, "sleep" outlives any timeout.
struct FakeExec;

#[async_trait::async_trait]
impl ExecProber for FakeExec {
    async fn exec(
        &self,
        container_id: &str,
        argv: &[String],
        _timeout: Duration,
    ) -> Result<(i32, Vec<u8>), String> {
        assert_eq!(container_id, "cid");
        match argv.first().map(String::as_str) {
            Some("true") => Ok((0, vec![])),
            Some("false") => Ok((1, b"it failed\n".to_vec())),
            Some("sleep") => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok((0, vec![]))
            }
            _ => Err("executable file not found".into()),
        }
    }
}

fn exec_probe(cmd: &str) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![cmd.into()]),
        }),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

#[tokio::test]
async fn exec_exit_codes_and_timeout() {
    let ex =
        |c: &'static str| async move { probe_once(&exec_probe(c), None, "cid", &FakeExec).await };
    assert_eq!(ex("true").await, ProbeResult::Success);
    assert_eq!(
        ex("false").await,
        ProbeResult::Failure("it failed\n".into())
    );
    assert!(matches!(ex("missing").await, ProbeResult::Unknown(_)));
    let mut empty = exec_probe("true");
    empty.exec.as_mut().unwrap().command = Some(vec![]);
    assert!(matches!(
        probe_once(&empty, None, "cid", &FakeExec).await,
        ProbeResult::Unknown(_)
    ));
    let t = Instant::now();
    assert!(matches!(ex("sleep").await, ProbeResult::Failure(m) if m.contains("timed out")));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<node::probe::ProbeState>();
    check::<ProbeResult>();
    let _ = SocketAddr::from(([127, 0, 0, 1], 0));
}
