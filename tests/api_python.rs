//! The official Python `kubernetes` client (pip, see scripts/pip-packages.txt) against
//! `kubeshard server` over TLS with the admin kubeconfig (x509 client certificate): CRUD,
//! list with label/field selectors and paging, the scale subresource, and watches started
//! from a list's resourceVersion and resumed from an event's. The steps and their checks are
//! in tests/support/python_client.py.

#[path = "support/api_server.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::TestServer;

fn python_client_available() -> bool {
    Command::new("python3")
        .args(["-c", "import kubernetes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn python_kubernetes_client() {
    if !python_client_available() {
        eprintln!(
            "\n*** SKIPPED: the Python `kubernetes` package is not installed (pip install kubernetes) ***\n"
        );
        return;
    }
    let s = TestServer::start(&[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/python_client.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .arg(s.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let steps: Vec<&str> = stdout.lines().collect();
    for step in [
        "crud ok",
        "selectors ok",
        "deployments ok",
        "watch ok",
        "OK",
    ] {
        assert!(
            steps.contains(&step),
            "missing {step:?}: {stdout}\n{stderr}"
        );
    }
    assert!(steps[0].starts_with("version v1."), "{stdout}");
}
