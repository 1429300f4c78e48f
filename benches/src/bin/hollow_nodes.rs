//! Hollow nodes: memory per simulated kubelet, and the time to register a fleet.
//!
//! Starts `kubeshard server` (embedded store) and `kubeshard node --hollow N` as two
//! processes, waits until the N Nodes are Ready, lets them run through a few Lease periods,
//! then reads both processes' resident memory (VmRSS). Upstream's kubemark hollow node costs
//! about 220 MB each; the target is under 1 MiB.
//!
//! Command: `HOLLOW_NODES=1000 cargo run --release -p kubeshard-benches --bin hollow_nodes`
//! (builds `target/release/kubeshard` first when missing; `KUBESHARD_BIN` overrides;
//! `HOLLOW_SETTLE_SECS` sets how long the fleet runs before memory is read, default 25).
//! Every wait is bounded.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api::client::{Api, Client, ListParams};
use k8s_openapi::api::core::v1::Node;

use kubeshard_benches::server_proc::{BoxError, env_or, kubeshard_bin, rss_kib, start_server};

fn main() -> Result<(), BoxError> {
    let count: usize = env_or("HOLLOW_NODES", 1000);
    let settle = Duration::from_secs(env_or("HOLLOW_SETTLE_SECS", 25));
    let bin = kubeshard_bin()?;
    let dir = tempfile::tempdir()?;

    let started = start_server(&bin, dir.path(), false)?;
    let server = started.proc;
    let kubeconfig = started.kubeconfig;
    let server_rss_before = rss_kib(server.id());

    let t0 = Instant::now();
    let node = kubeshard_benches::server_proc::Proc(
        Command::new(&bin)
            .args(["node", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--hollow", &count.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let registered = rt.block_on(async {
        let client = Client::from_kubeconfig(&kubeconfig)?;
        let nodes: Api<Node> = Api::all(client);
        let lp = ListParams::default().labels("kubeshard.io/hollow=true");
        let limit = Duration::from_secs(60 + count as u64 / 20);
        loop {
            let ready = nodes
                .list(&lp)
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|n| {
                            n.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|cs| {
                                    cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                        })
                        .count()
                })
                .unwrap_or(0);
            if ready >= count {
                return Ok::<Duration, BoxError>(t0.elapsed());
            }
            if t0.elapsed() > limit {
                return Err(format!("only {ready} of {count} nodes Ready after {limit:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })?;
    std::thread::sleep(settle);
    let node_rss = rss_kib(node.id());
    let server_rss = rss_kib(server.id());
    let per_node_kib = node_rss as f64 / count as f64;
    println!("hollow nodes: {count}");
    println!(
        "all Ready after: {:.1} s (start rate 100 nodes/s)",
        registered.as_secs_f64()
    );
    println!(
        "hollow process RSS: {:.1} MiB = {:.0} KiB per node = {:.0} nodes per GiB",
        node_rss as f64 / 1024.0,
        per_node_kib,
        (1024.0 * 1024.0) / per_node_kib
    );
    println!(
        "apiserver+store RSS: {:.1} MiB (before the nodes: {:.1} MiB)",
        server_rss as f64 / 1024.0,
        server_rss_before as f64 / 1024.0
    );
    println!(
        "vs kubemark (~220 MB per hollow node): {:.0}x less memory per node",
        220.0 * 1024.0 / per_node_kib
    );
    drop(node);
    drop(server);
    Ok(())
}
