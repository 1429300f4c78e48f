//! `kubeshard proxy`: the dataplane fed by Service and EndpointSlice informers.
//!
//! Informer handlers only record which objects changed (a set of keys per resource, bounded
//! by the number of objects, so no event is lost and bursts coalesce); one applier task reads
//! the current state of those objects from the informers' stores and hands the batch to
//! [`Dataplane::apply`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use api::client::runtime::{Event, Informer, Store};
use api::client::{Api, Client, ListParams};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::error::ShellError;
use crate::shell::{Change, Dataplane, DataplaneConfig};

/// What `kubeshard proxy` runs with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyOptions {
    /// The kubeconfig to reach the API server with.
    pub kubeconfig: std::path::PathBuf,
    /// The dataplane settings (node name, shards, forwarding engine...).
    pub dataplane: DataplaneConfig,
    /// Where `/metrics` and `/healthz` are served (127.0.0.1 only by default).
    pub metrics_addr: SocketAddr,
}

impl ProxyOptions {
    /// Options with the given kubeconfig and defaults elsewhere (metrics on 127.0.0.1:10249).
    pub fn new(kubeconfig: impl Into<std::path::PathBuf>, dataplane: DataplaneConfig) -> Self {
        ProxyOptions {
            kubeconfig: kubeconfig.into(),
            dataplane,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 10249)),
        }
    }
}

/// `kubeshard proxy` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The kubeconfig could not be loaded or the client not built. Not retryable as is.
    #[error("API client: {0}")]
    Client(#[from] api::client::ClientError),
    /// The dataplane failed to start or serve.
    #[error(transparent)]
    Shell(#[from] ShellError),
}

type Keys = Arc<Mutex<HashSet<(String, String)>>>;

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Runs the proxy until `stop` resolves. Call inside a tokio runtime (the informers and the
/// applier run on it; forwarding runs on the dataplane's own shards).
pub async fn run(
    opts: ProxyOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let client = Client::from_kubeconfig(&opts.kubeconfig)?;
    let mut cfg = opts.dataplane.clone();
    // `KUBESHARD_PROXY_SOCKMAP=auto|on|off` forces the kernel data path on or off.
    if let Some(k) = crate::KernelForward::from_env() {
        cfg.kernel_forward = k;
    }
    let dp = Dataplane::start(cfg).await?;
    let admin = dp.serve_admin(opts.metrics_addr).await?;
    tracing::info!(%admin, "proxy: /metrics and /healthz");

    let (svc_store, svc_inf) =
        Informer::new(Api::<Service>::all(client.clone()), ListParams::default());
    let (sl_store, sl_inf) = Informer::new(
        Api::<EndpointSlice>::all(client.clone()),
        ListParams::default(),
    );
    let svc_keys: Keys = Arc::default();
    let sl_keys: Keys = Arc::default();
    let wake = Arc::new(tokio::sync::Notify::new());

    let t1 = tokio::spawn(svc_inf.run(handler_svc(Arc::clone(&svc_keys), Arc::clone(&wake))));
    let t2 = tokio::spawn(sl_inf.run(handler_slice(Arc::clone(&sl_keys), Arc::clone(&wake))));

    let applier = async {
        svc_store.wait_until_synced().await;
        sl_store.wait_until_synced().await;
        tracing::info!("proxy: informers synced");
        loop {
            let changes = collect(&svc_keys, &svc_store, &sl_keys, &sl_store);
            if !changes.is_empty() {
                let n = changes.len();
                if let Err(e) = dp.apply(changes).await {
                    tracing::warn!(error = %e, "proxy: applying {n} changes");
                }
            }
            wake.notified().await;
        }
    };
    tokio::select! {
        () = applier => {}
        () = stop => {}
    }
    t1.abort();
    t2.abort();
    tracing::info!("proxy: stopping");
    dp.shutdown()?;
    Ok(())
}

fn handler_svc(keys: Keys, wake: Arc<tokio::sync::Notify>) -> impl FnMut(Event<Service>) + Send {
    move |ev| {
        if let Event::Added(o) | Event::Modified(o) | Event::Deleted(o) = &ev {
            keys.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key_of(&o.metadata));
        }
        wake.notify_one();
    }
}

fn handler_slice(
    keys: Keys,
    wake: Arc<tokio::sync::Notify>,
) -> impl FnMut(Event<EndpointSlice>) + Send {
    move |ev| {
        if let Event::Added(o) | Event::Modified(o) | Event::Deleted(o) = &ev {
            keys.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key_of(&o.metadata));
        }
        wake.notify_one();
    }
}

/// The current state of every changed object, Services first (so a new Service and its
/// slices land in one batch).
fn collect(
    svc_keys: &Keys,
    svc_store: &Store<Service>,
    sl_keys: &Keys,
    sl_store: &Store<EndpointSlice>,
) -> Vec<Change> {
    let svcs = std::mem::take(&mut *svc_keys.lock().unwrap_or_else(|e| e.into_inner()));
    let slices = std::mem::take(&mut *sl_keys.lock().unwrap_or_else(|e| e.into_inner()));
    let mut out = Vec::with_capacity(svcs.len() + slices.len());
    for (ns, name) in svcs {
        out.push(match svc_store.get(&ns, &name) {
            Some(s) => Change::Service(s),
            None => Change::ServiceDeleted {
                namespace: ns,
                name,
            },
        });
    }
    for (ns, name) in slices {
        out.push(match sl_store.get(&ns, &name) {
            Some(s) => Change::Slice(s),
            None => Change::SliceDeleted {
                namespace: ns,
                name,
            },
        });
    }
    out
}
