//! `/metrics` on the real `kubeshard server`: scraped in the Prometheus text format, request
//! counts and latencies follow the requests made, the watch gauges follow open watches, and
//! store operations are timed.

#[path = "support/api_server.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{TestServer, curl};

fn scrape(s: &TestServer) -> String {
    let (code, body) = curl(
        &[],
        &format!("http://127.0.0.1:{}/metrics", s.insecure_port),
    );
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of one series (exact label set), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const CM_GET: &str =
    r#"verb="GET",group="",version="v1",resource="configmaps",subresource="",scope="resource""#;
const CM_WATCH: &str =
    r#"verb="WATCH",group="",version="v1",resource="configmaps",subresource="",scope="namespace""#;

/// Polls `/metrics` until `series` has value `want` (bounded).
fn wait_for(s: &TestServer, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(s);
        if value(&m, series) == Some(want) || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_count_requests_watches_and_store_calls() {
    let s = TestServer::start(&[]);
    let base = format!("http://127.0.0.1:{}", s.insecure_port);

    // Text format with HELP/TYPE lines.
    let m0 = scrape(&s);
    for t in [
        "# TYPE apiserver_request_total counter",
        "# TYPE apiserver_request_duration_seconds histogram",
        "# TYPE apiserver_longrunning_requests gauge",
        "# TYPE apiserver_registered_watchers gauge",
        "# TYPE etcd_request_duration_seconds histogram",
    ] {
        assert!(m0.contains(t), "{m0}");
    }

    for _ in 0..3 {
        let (code, _) = curl(
            &[],
            &format!("{base}/api/v1/namespaces/default/configmaps/nope"),
        );
        assert_eq!(code, 404);
    }
    let (code, _) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"m1"}}"#,
        ],
        &format!("{base}/api/v1/namespaces/default/configmaps"),
    );
    assert_eq!(code, 201);
    for _ in 0..2 {
        let (code, _) = curl(
            &[],
            &format!("{base}/api/v1/namespaces/default/configmaps/m1"),
        );
        assert_eq!(code, 200);
    }

    let m = scrape(&s);
    assert_eq!(
        value(
            &m,
            &format!("apiserver_request_total{{{CM_GET},code=\"404\"}}")
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            &format!("apiserver_request_total{{{CM_GET},code=\"200\"}}")
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            r#"apiserver_request_total{verb="POST",group="",version="v1",resource="configmaps",subresource="",scope="namespace",code="201"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            &format!("apiserver_request_duration_seconds_count{{{CM_GET}}}")
        ),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            &format!("apiserver_request_duration_seconds_bucket{{{CM_GET},le=\"+Inf\"}}")
        ),
        Some(5.0),
        "{m}"
    );
    // Every GET read the store once; the create wrote it in a transaction.
    let gets = value(
        &m,
        r#"etcd_request_duration_seconds_count{operation="get",type="configmaps"}"#,
    )
    .unwrap_or(0.0);
    assert!(gets >= 5.0, "{m}");
    assert!(
        value(
            &m,
            r#"etcd_request_duration_seconds_count{operation="txn",type="configmaps"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );

    // Two open watches show in the gauges, and leave them when the clients go.
    let mut watches: Vec<_> = (0..2)
        .map(|_| {
            Command::new("curl")
                .args(["-s", "-N", "--max-time", "60"])
                .arg(format!(
                    "{base}/api/v1/namespaces/default/configmaps?watch=true"
                ))
                .stdout(Stdio::null())
                .spawn()
                .expect("curl watch")
        })
        .collect();
    let gauge = format!("apiserver_longrunning_requests{{{CM_WATCH}}}");
    let watchers = r#"apiserver_registered_watchers{group="",version="v1",kind="ConfigMap"}"#;
    let m = wait_for(&s, &gauge, 2.0);
    assert_eq!(value(&m, &gauge), Some(2.0), "{m}");
    assert_eq!(value(&m, watchers), Some(2.0), "{m}");
    for w in &mut watches {
        let _ = w.kill();
        let _ = w.wait();
    }
    // The server notices a closed client when it next writes to it: make an event.
    let (code, _) = curl(
        &["-X", "DELETE"],
        &format!("{base}/api/v1/namespaces/default/configmaps/m1"),
    );
    assert_eq!(code, 200);
    let m = wait_for(&s, &gauge, 0.0);
    assert_eq!(value(&m, &gauge), Some(0.0), "{m}");
    assert_eq!(value(&m, watchers), Some(0.0), "{m}");
    assert_eq!(
        value(
            &m,
            r#"apiserver_request_total{verb="DELETE",group="",version="v1",resource="configmaps",subresource="",scope="resource",code="200"}"#
        ),
        Some(1.0),
        "{m}"
    );
}
