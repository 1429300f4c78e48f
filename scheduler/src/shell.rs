//! The `kubeshard scheduler` shell: informers feed the sans-IO core, the batch cycle runs when
//! something changed, and the decisions are carried out through the API (binding
//! subresource with bounded concurrency, `Scheduled`/`FailedScheduling` events, the
//! `PodScheduled` condition, `nominatedNodeName`, victim deletion). With leader election,
//! only the holder of the `kube-system/kube-scheduler` Lease schedules.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::client::leader::LeaderElector;
use api::client::runtime::{Event, Informer};
use api::client::{Api, Client, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use serde_json::json;

use crate::model::PodKey;
use crate::{Config, Decision, Options, Scheduler};

/// Errors of the shell.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The API client failed to start.
    #[error("client: {0}")]
    Client(#[from] api::client::ClientError),
    /// The core refused its configuration.
    #[error(transparent)]
    Core(#[from] crate::Error),
    /// The `/metrics` listener could not be bound.
    #[error("listening on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    /// The configuration file could not be read.
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// How the shell runs.
#[derive(Debug, Clone)]
pub struct ShellOptions {
    /// Admin (or scheduler) kubeconfig.
    pub kubeconfig: PathBuf,
    /// KubeSchedulerConfiguration file (None: the default profile).
    pub config: Option<PathBuf>,
    /// Bindings in flight at most.
    pub bind_concurrency: usize,
    /// Campaign for the Lease before scheduling.
    pub leader_elect: bool,
    /// This instance's identity in the Lease.
    pub identity: String,
    /// Where `/metrics` (Prometheus text) is served over plain HTTP; `None`: not served.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl ShellOptions {
    /// Defaults for a kubeconfig.
    pub fn new(kubeconfig: PathBuf) -> Self {
        ShellOptions {
            kubeconfig,
            config: None,
            bind_concurrency: 64,
            leader_elect: true,
            identity: format!("kubeshard-scheduler-{}", std::process::id()),
            metrics_addr: None,
        }
    }
}

/// Serves `/metrics` (any path answers the metrics) until the task is dropped: one bounded read
/// of the request head, then the text and close.
async fn serve_metrics(listener: tokio::net::TcpListener, core: Arc<Mutex<Scheduler>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
            let body = match core.lock() {
                Ok(c) => c.metrics_text(),
                Err(p) => p.into_inner().metrics_text(),
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}

fn event(pod: &crate::model::PodInfo, reason: &str, kind: &str, message: &str) -> core::Event {
    event_for(&pod.key, Some(&pod.uid), reason, kind, message)
}

fn event_for(
    key: &PodKey,
    uid: Option<&str>,
    reason: &str,
    kind: &str,
    message: &str,
) -> core::Event {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut msg = message.to_owned();
    msg.truncate(1024);
    serde_json::from_value(json!({
        "metadata": {"generateName": format!("{}.", key.name), "namespace": key.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": key.namespace,
                           "name": key.name, "uid": uid},
        "reason": reason, "message": msg, "type": kind, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": "default-scheduler"}, "reportingComponent": "default-scheduler"
    }))
    .unwrap_or_default()
}

async fn post_event(
    client: &Client,
    pod: &crate::model::PodInfo,
    reason: &str,
    kind: &str,
    message: &str,
) {
    let events: Api<core::Event> = Api::namespaced(client.clone(), &pod.key.namespace);
    if let Err(e) = events
        .create(&PostParams::default(), &event(pod, reason, kind, message))
        .await
    {
        tracing::debug!(pod = %pod.key, "event: {e}");
    }
}

/// Most `Scheduled` events being posted at once (more are dropped).
const EVENTS_IN_FLIGHT: usize = 256;

/// Most unschedulable outcomes (status patch, event, victim deletions) being written at once;
/// the cycle waits for room beyond that.
const FAILURES_IN_FLIGHT: usize = 64;

/// Runs the scheduler until `shutdown` resolves.
pub async fn run(
    opts: ShellOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ShellError> {
    let client = Client::from_kubeconfig(&opts.kubeconfig)?;
    let cfg = match &opts.config {
        Some(p) => Config::from_yaml(
            &std::fs::read_to_string(p).map_err(|e| ShellError::Io(p.clone(), e))?,
        )?,
        None => Config::default(),
    };
    let core = Arc::new(Mutex::new(Scheduler::new(&cfg, Options::default())?));
    let wake = Arc::new(tokio::sync::Notify::new());
    tokio::pin!(shutdown);

    let mut leader = None;
    if opts.leader_elect {
        let mut h = LeaderElector::new(
            client.clone(),
            "kube-system",
            "kube-scheduler",
            &opts.identity,
        )
        .spawn();
        tokio::select! {
            _ = h.wait_leader() => {}
            _ = &mut shutdown => return Ok(()),
        }
        leader = Some(h);
    }

    let mut tasks = Vec::new();
    if let Some(addr) = opts.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ShellError::Listen(addr, e))?;
        tasks.push(tokio::spawn(serve_metrics(listener, core.clone())));
    }
    {
        let (store, inf) = Informer::new(
            Api::<PriorityClass>::all(client.clone()),
            ListParams::default(),
        );
        let (c, w) = (core.clone(), wake.clone());
        tasks.push(tokio::spawn(inf.run(move |ev: Event<PriorityClass>| {
            if let Event::Added(pc) | Event::Modified(pc) = ev
                && let Ok(mut s) = c.lock()
            {
                let name = pc.metadata.name.clone().unwrap_or_default();
                s.set_priority_class(&name, pc.value, pc.global_default.unwrap_or(false));
                w.notify_one();
            }
        })));
        store.wait_until_synced().await;
    }
    let (nodes, inf) = Informer::new(
        Api::<core::Node>::all(client.clone()),
        ListParams::default(),
    );
    let (c, w) = (core.clone(), wake.clone());
    tasks.push(tokio::spawn(inf.run(move |ev: Event<core::Node>| {
        let Ok(mut s) = c.lock() else { return };
        let now = Instant::now();
        match ev {
            Event::Added(n) | Event::Modified(n) => {
                if let Err(e) = s.upsert_node(&n, now) {
                    tracing::warn!("node {:?}: {e}", n.metadata.name);
                }
            }
            Event::Deleted(n) => s.remove_node(n.metadata.name.as_deref().unwrap_or("")),
            Event::Synced => {}
        }
        w.notify_one();
    })));
    let (pods, inf) = Informer::new(Api::<core::Pod>::all(client.clone()), ListParams::default());
    let (c, w) = (core.clone(), wake.clone());
    tasks.push(tokio::spawn(inf.run(move |ev: Event<core::Pod>| {
        let Ok(mut s) = c.lock() else { return };
        let now = Instant::now();
        match ev {
            Event::Added(p) | Event::Modified(p) => {
                if let Err(e) = s.upsert_pod(&p, now) {
                    tracing::warn!("pod {:?}: {e}", p.metadata.name);
                }
            }
            Event::Deleted(p) => {
                let key = PodKey {
                    namespace: p.metadata.namespace.clone().unwrap_or_default(),
                    name: p.metadata.name.clone().unwrap_or_default(),
                };
                s.delete_pod(&key, now);
            }
            Event::Synced => {}
        }
        w.notify_one();
    })));
    nodes.wait_until_synced().await;
    pods.wait_until_synced().await;
    tracing::info!("scheduler caches synced");

    let binds = Arc::new(tokio::sync::Semaphore::new(
        opts.bind_concurrency.clamp(1, 1024),
    ));
    // Events are posted off the binding path, at most EVENTS_IN_FLIGHT at once; beyond that
    // they are dropped (as upstream's event broadcaster drops when its queue is full).
    let events = Arc::new(tokio::sync::Semaphore::new(EVENTS_IN_FLIGHT));
    let failures = Arc::new(tokio::sync::Semaphore::new(FAILURES_IN_FLIGHT));
    // Binding outcomes (pod, bound?) for the core. At most one per assumed pod, and assumed
    // pods are bounded by the queue's capacity.
    let (outcomes_tx, outcomes_rx) = std::sync::mpsc::channel::<(PodKey, bool)>();
    let outcomes_rx = Arc::new(Mutex::new(outcomes_rx));
    loop {
        if leader.as_ref().is_some_and(|h| !h.is_leader()) {
            tracing::warn!("lost the scheduler lease; stopping");
            break;
        }
        // The batch runs on the blocking pool: it holds the core for milliseconds, and a
        // runtime worker stuck on it would stall the connections the bindings and informers
        // are using. Binding outcomes reach the core through `outcomes` (drained here), so
        // a finished binding never waits for a batch either.
        let (c, rx) = (core.clone(), outcomes_rx.clone());
        let batch = tokio::task::spawn_blocking(move || {
            let mut s = c.lock().ok()?;
            let now = Instant::now();
            if let Ok(rx) = rx.lock() {
                while let Ok((key, ok)) = rx.try_recv() {
                    if ok {
                        s.finish_binding(&key, now);
                    } else {
                        s.forget(&key, now);
                    }
                }
            }
            s.queue.flush(now);
            s.cleanup_assumed(now);
            Some(s.schedule_batch(now))
        })
        .await;
        let Ok(Some(decisions)) = batch else { break };
        if decisions.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = &mut shutdown => break,
            }
            continue;
        }
        for d in decisions {
            match d {
                Decision::Assumed { pod, node, .. } => {
                    let Ok(permit) = binds.clone().acquire_owned().await else {
                        break;
                    };
                    let (client, outcomes, wake) =
                        (client.clone(), outcomes_tx.clone(), wake.clone());
                    let events = events.clone();
                    tokio::spawn(async move {
                        let pods: Api<core::Pod> =
                            Api::namespaced(client.clone(), &pod.key.namespace);
                        let binding = json!({"apiVersion": "v1", "kind": "Binding",
                            "metadata": {"name": pod.key.name, "namespace": pod.key.namespace},
                            "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                        let res: Result<serde_json::Value, _> = pods
                            .create_subresource(&pod.key.name, "binding", &binding)
                            .await;
                        drop(permit);
                        match res {
                            Ok(_) => {
                                let _ = outcomes.send((pod.key.clone(), true));
                                if let Ok(p) = events.try_acquire_owned() {
                                    let _p = p;
                                    let msg =
                                        format!("Successfully assigned {} to {node}", pod.key);
                                    post_event(&client, &pod, "Scheduled", "Normal", &msg).await;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(pod = %pod.key, "binding failed: {e}");
                                let _ = outcomes.send((pod.key.clone(), false));
                                wake.notify_one();
                                post_event(
                                    &client,
                                    &pod,
                                    "FailedScheduling",
                                    "Warning",
                                    &format!("Binding rejected: {e}"),
                                )
                                .await;
                            }
                        }
                    });
                }
                Decision::Unschedulable {
                    pod,
                    message,
                    nomination,
                } => {
                    let Ok(permit) = failures.clone().acquire_owned().await else {
                        break;
                    };
                    let client = client.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let pods: Api<core::Pod> =
                            Api::namespaced(client.clone(), &pod.key.namespace);
                        let mut status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
                            "reason": "Unschedulable", "message": message}]}});
                        if let Some((node, victims)) = &nomination {
                            status["status"]["nominatedNodeName"] = json!(node);
                            for v in victims {
                                let vp: Api<core::Pod> =
                                    Api::namespaced(client.clone(), &v.namespace);
                                match vp.delete(&v.name, &DeleteParams::default()).await {
                                    Ok(_) => {
                                        // Upstream's event on the victim.
                                        let msg =
                                            format!("Preempted by pod {} on node {node}", pod.uid);
                                        let ev = event_for(v, None, "Preempted", "Normal", &msg);
                                        let events: Api<core::Event> =
                                            Api::namespaced(client.clone(), &v.namespace);
                                        if let Err(e) =
                                            events.create(&PostParams::default(), &ev).await
                                        {
                                            tracing::debug!(victim = %v, "event: {e}");
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(victim = %v, "preemption delete: {e}")
                                    }
                                }
                            }
                        }
                        let patch = Patch::Strategic(status);
                        if let Err(e) = pods
                            .patch_status(&pod.key.name, &PatchParams::default(), &patch)
                            .await
                        {
                            tracing::debug!(pod = %pod.key, "status: {e}");
                        }
                        post_event(&client, &pod, "FailedScheduling", "Warning", &message).await;
                    });
                }
                Decision::Error { pod, message } => {
                    tracing::warn!(pod = %pod.key, "scheduling error: {message}");
                }
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    if let Some(h) = leader {
        let _ = h.stop().await;
    }
    Ok(())
}
