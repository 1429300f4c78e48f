//! The apiserver's request path over HTTP/2 (h2c prior knowledge on the loopback port, so
//! TLS is not in the figure): a single-object GET and a 1,000-object LIST, served from the
//! in-memory engine's stored bytes. One client connection, requests in sequence: the figure
//! is per-request latency through hyper, routing, the store read and the response.
//!
//! Run: `cargo bench -p kubeshard-benches --bench api_server`

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

const OBJECTS: usize = 1000;

async fn request(
    s: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, usize) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = s.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, bytes.len())
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = store::Engine::open(store::EngineConfig::in_memory()).expect("engine");
    let mut opts = api::server::ServerOptions::new(dir.path());
    opts.port = 0;
    opts.insecure_port = Some(0);
    let server = api::server::start(opts, engine.clone()).expect("server");
    let port = server.insecure_port.expect("insecure port");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut sender = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        s
    });
    rt.block_on(async {
        for i in 0..OBJECTS {
            let body = format!(
                r#"{{"metadata":{{"name":"cm-{i:04}","labels":{{"app":"bench"}}}},"data":{{"key":"{}"}}}}"#,
                "v".repeat(200)
            );
            let (st, _) = request(&mut sender, "POST", "/api/v1/namespaces/default/configmaps", &body).await;
            assert_eq!(st, 201);
        }
    });
    c.bench_function("api_get_configmap_h2", |b| {
        b.iter(|| {
            let (st, n) = rt.block_on(request(
                &mut sender,
                "GET",
                "/api/v1/namespaces/default/configmaps/cm-0500",
                "",
            ));
            assert_eq!(st, 200);
            n
        })
    });
    let mut g = c.benchmark_group("api_list");
    g.sample_size(20);
    g.bench_function("list_1000_configmaps_h2", |b| {
        b.iter(|| {
            let (st, n) = rt.block_on(request(
                &mut sender,
                "GET",
                "/api/v1/namespaces/default/configmaps",
                "",
            ));
            assert_eq!(st, 200);
            n
        })
    });
    g.finish();
    drop(sender);
    drop(rt);
    server.shutdown();
    engine.close();
}

criterion_group!(benches, bench);
criterion_main!(benches);
