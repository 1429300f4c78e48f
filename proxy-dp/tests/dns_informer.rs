//! Cluster DNS wired to a real in-process apiserver through the client's informers:
//! Services and EndpointSlices created, changed and deleted over the API show up in answers.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::client::{Api, Client, DeleteParams, PostParams};
use api::server::ServerOptions;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proxy_dp::dns::zone::SERVICE_NAME_LABEL;
use proxy_dp::dns::{ClusterDnsConfig, ServerConfig, ZoneConfig, run_cluster_dns};
use shards::{ShardConfig, ShardSet};
use store::{Engine, EngineConfig};

struct ApiServer {
    engine: Arc<Engine>,
    server: Option<api::server::RunningServer>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl ApiServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = EngineConfig::in_memory();
        cfg.shards = 1;
        let engine = Engine::open(cfg).expect("engine");
        let mut opts = ServerOptions::new(dir.path());
        opts.port = 0;
        opts.acceptors = 1;
        let e = engine.clone();
        // `start` builds its own runtimes: call it off the test's runtime thread.
        let server = std::thread::spawn(move || api::server::start(opts, e))
            .join()
            .expect("start thread")
            .expect("apiserver");
        Self {
            engine,
            kubeconfig: server.kubeconfig.clone(),
            server: Some(server),
            _dir: dir,
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let server = self.server.take();
        let engine = self.engine.clone();
        let _ = std::thread::spawn(move || {
            if let Some(s) = server {
                s.shutdown();
            }
            engine.close();
        })
        .join();
    }
}

fn ask(addr: SocketAddr, name: &str, t: RecordType) -> Option<Message> {
    let mut m = Message::new(9, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    sock.send_to(&m.to_vec().expect("encode"), addr)
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

fn addresses(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Polls (bounded: 10 s) until `pred` holds for the answer to `name`.
async fn eventually(addr: SocketAddr, name: &str, pred: impl Fn(&Message) -> bool) -> Message {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = ask(addr, name, RecordType::A)
            && (pred(&m) || Instant::now() > deadline)
        {
            return m;
        }
        assert!(Instant::now() < deadline, "no answer for {name}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn meta(name: &str, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        labels,
        ..ObjectMeta::default()
    }
}

#[tokio::test]
async fn informers_feed_the_zone() {
    let apiserver = ApiServer::start();
    let client = Client::from_kubeconfig(&apiserver.kubeconfig).expect("client");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    // One Service before the DNS starts (found by the initial list), one after (by watch).
    let web = Service {
        metadata: meta("web", None),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let web = services
        .create(&PostParams::default(), &web)
        .await
        .expect("create web");
    let web_ip = web
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("ClusterIP allocated");

    let set = ShardSet::start(ShardConfig::default().shards(2).pin(false)).expect("shards");
    let cfg = ClusterDnsConfig {
        zone: ZoneConfig::cluster_local(),
        server: ServerConfig::new("127.0.0.1:0".parse().expect("addr")),
        resolv_conf: None,
    };
    let dns = run_cluster_dns(client, set.handle(), cfg)
        .await
        .expect("cluster dns");
    tokio::time::timeout(Duration::from_secs(10), dns.wait_synced())
        .await
        .expect("synced");
    let addr = dns.server().local_addr();

    let m = eventually(addr, "web.default.svc.cluster.local.", |m| {
        !m.answers.is_empty()
    })
    .await;
    assert_eq!(addresses(&m), vec![web_ip.clone()]);

    // A headless Service and its EndpointSlice, created after start.
    let db = Service {
        metadata: meta("db", None),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    services
        .create(&PostParams::default(), &db)
        .await
        .expect("create db");
    let labels = BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), "db".to_owned())]);
    let slice = EndpointSlice {
        metadata: meta("db-1", Some(labels)),
        address_type: "IPv4".into(),
        endpoints: vec![
            Endpoint {
                addresses: vec!["10.1.2.3".into()],
                ..Endpoint::default()
            },
            Endpoint {
                addresses: vec!["10.1.2.4".into()],
                ..Endpoint::default()
            },
        ],
        ports: None,
    };
    slices
        .create(&PostParams::default(), &slice)
        .await
        .expect("create slice");
    let m = eventually(addr, "db.default.svc.cluster.local.", |m| {
        m.answers.len() == 2
    })
    .await;
    assert_eq!(
        addresses(&m),
        vec!["10.1.2.3".to_owned(), "10.1.2.4".to_owned()]
    );

    // Deletes reach the zone too.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    let m = eventually(addr, "web.default.svc.cluster.local.", |m| {
        m.metadata.response_code == ResponseCode::NXDomain
    })
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    slices
        .delete("db-1", &DeleteParams::default())
        .await
        .expect("delete slice");
    let m = eventually(addr, "db.default.svc.cluster.local.", |m| {
        m.answers.is_empty()
    })
    .await;
    assert!(m.answers.is_empty());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);

    dns.stop();
    drop(dns);
    let _ = set.shutdown();
}
