//! Wiring to the API: informers on Services and EndpointSlices (all namespaces) feed the
//! shared [`ClusterZone`], and the [`DnsServer`] answers from it. This is the entry point
//! `kubeshard up` (or a `kubeshard dns` command) calls.

use std::path::PathBuf;
use std::sync::Arc;

use api::client::runtime::{Event, Informer, Store};
use api::client::{Api, Client, ListParams};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use parking_lot::RwLock;
use shards::ShardHandle;
use tokio::task::JoinHandle;

use super::error::ServeError;
use super::resolv::read_resolv_conf;
use super::server::{DnsServer, ServerConfig, SharedZone};
use super::zone::{ClusterZone, ZoneConfig};

/// What [`run_cluster_dns`] serves and where.
#[derive(Clone, Debug)]
pub struct ClusterDnsConfig {
    /// The zone (`cluster.local`, TTL 5 s by default).
    pub zone: ZoneConfig,
    /// Listen address, bounds and upstreams (upstreams here are used as given).
    pub server: ServerConfig,
    /// A resolv.conf whose nameservers are added to the upstreams (e.g. the host's
    /// `/etc/resolv.conf`); `None` for none.
    pub resolv_conf: Option<PathBuf>,
}

/// A running cluster DNS: the server plus its two informer tasks. Dropping it stops both.
pub struct RunningClusterDns {
    server: DnsServer,
    zone: SharedZone,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningClusterDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningClusterDns")
            .field("addr", &self.server.local_addr())
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .finish()
    }
}

impl RunningClusterDns {
    /// The server (its address and metrics).
    pub fn server(&self) -> &DnsServer {
        &self.server
    }

    /// The zone the informers fill.
    pub fn zone(&self) -> &SharedZone {
        &self.zone
    }

    /// Waits until both informers have listed once (the zone then holds every object).
    pub async fn wait_synced(&self) {
        self.services.wait_until_synced().await;
        self.slices.wait_until_synced().await;
    }

    /// Stops the informers and the server.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.server.stop();
    }
}

impl Drop for RunningClusterDns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the cluster DNS: the server on `shards`, and (on the caller's tokio runtime) the
/// informers that keep its zone in sync with the API.
pub async fn run_cluster_dns(
    client: Client,
    shards: &ShardHandle,
    mut cfg: ClusterDnsConfig,
) -> Result<RunningClusterDns, ServeError> {
    if let Some(path) = &cfg.resolv_conf {
        for up in read_resolv_conf(path)? {
            if !cfg.server.upstreams.contains(&up) {
                cfg.server.upstreams.push(up);
            }
        }
    }
    let zone: SharedZone = Arc::new(RwLock::new(ClusterZone::new(cfg.zone)));
    let server = DnsServer::start(shards, zone.clone(), cfg.server).await?;

    let (services, svc_informer) =
        Informer::new(Api::<Service>::all(client.clone()), ListParams::default());
    let z = zone.clone();
    let svc_task = tokio::spawn(svc_informer.run(move |ev: Event<Service>| match ev {
        Event::Added(s) | Event::Modified(s) => z.write().apply_service(&s),
        Event::Deleted(s) => {
            if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                z.write().delete_service(ns, name);
            }
        }
        Event::Synced => {}
    }));

    let (slices, slice_informer) =
        Informer::new(Api::<EndpointSlice>::all(client), ListParams::default());
    let z = zone.clone();
    let slice_task = tokio::spawn(
        slice_informer.run(move |ev: Event<EndpointSlice>| match ev {
            Event::Added(s) | Event::Modified(s) => z.write().apply_endpoint_slice(&s),
            Event::Deleted(s) => {
                if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                    z.write().delete_endpoint_slice(ns, name);
                }
            }
            Event::Synced => {}
        }),
    );

    Ok(RunningClusterDns {
        server,
        zone,
        services,
        slices,
        tasks: vec![svc_task, slice_task],
    })
}
