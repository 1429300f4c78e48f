//! Counters of the dataplane, shared by every shard (relaxed atomics), rendered in the
//! Prometheus text format by the admin server.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::ServiceKey;

/// Counters of one Service.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    /// Connections (TCP) or flows (UDP) open now.
    pub active: AtomicU64,
    /// Connections or flows opened since start.
    pub total: AtomicU64,
    /// Bytes forwarded, both directions.
    pub bytes: AtomicU64,
    /// Connect attempts to a backend that failed.
    pub connect_errors: AtomicU64,
    /// Connections refused because no backend was left (RST).
    pub refused: AtomicU64,
}

/// Upper bounds (microseconds) of the table update latency histogram buckets.
pub const UPDATE_BUCKETS_US: [u64; 10] =
    [10, 50, 100, 250, 500, 1_000, 5_000, 10_000, 50_000, 100_000];

/// Dataplane-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections refused because a shard's connection table was full.
    pub conn_table_full: AtomicU64,
    /// UDP datagrams dropped because a shard's flow table was full.
    pub flow_table_full: AtomicU64,
    /// UDP flows expired for idleness.
    pub flows_expired: AtomicU64,
    /// Listeners that could not be bound.
    pub listen_errors: AtomicU64,
    /// VIP add/remove commands that failed.
    pub address_errors: AtomicU64,
    /// Table updates applied.
    pub updates: AtomicU64,
    /// TCP connections forwarded in the kernel (sockmap) to their end.
    pub kernel_flows: AtomicU64,
    /// TCP connections forwarded in user space because the kernel path's maps were full.
    pub kernel_full: AtomicU64,
    /// Times a FIN on the kernel path found its bytes not yet in the peer's send queue and
    /// waited (yield, then 1 ms sleeps) before passing the FIN on.
    pub kernel_fin_waits: AtomicU64,
    /// TCP connections the kernel path could not take for another reason (forwarded in user
    /// space): mostly a client whose FIN came in before the proxy got to its socket (only
    /// established sockets may enter a sockmap).
    pub kernel_errors: AtomicU64,
    update_buckets: [AtomicU64; UPDATE_BUCKETS_US.len() + 1],
    update_sum_us: AtomicU64,
    services: Mutex<HashMap<ServiceKey, (usize, Arc<ServiceMetrics>)>>,
}

impl Metrics {
    /// Records one table update (core apply plus fan-out to the shards) that took `d`.
    pub fn observe_update(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = UPDATE_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(UPDATE_BUCKETS_US.len());
        self.update_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.update_sum_us.fetch_add(us, Ordering::Relaxed);
        self.updates.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of `svc`, registering one more route of it.
    pub(crate) fn route_added(&self, svc: &ServiceKey) -> Arc<ServiceMetrics> {
        let mut m = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(svc.clone()).or_default();
        e.0 += 1;
        Arc::clone(&e.1)
    }

    /// The counters of `svc` without registering a route (for a changed route).
    pub(crate) fn service(&self, svc: &ServiceKey) -> Arc<ServiceMetrics> {
        let mut m = self.services.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&m.entry(svc.clone()).or_default().1)
    }

    /// One route of `svc` went; the counters go with its last route (bounded by routes).
    pub(crate) fn route_removed(&self, svc: &ServiceKey) {
        let mut m = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.get_mut(svc) {
            e.0 = e.0.saturating_sub(1);
            if e.0 == 0 {
                m.remove(svc);
            }
        }
    }

    /// The counters of one Service, if it has routes (for tests and tools).
    pub fn service_metrics(&self, svc: &ServiceKey) -> Option<Arc<ServiceMetrics>> {
        let m = self.services.lock().unwrap_or_else(|e| e.into_inner());
        m.get(svc).map(|e| Arc::clone(&e.1))
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(s, "# TYPE kubeshard_proxy_conn_table_full_total counter");
        let _ = writeln!(
            s,
            "kubeshard_proxy_conn_table_full_total {}",
            g(&self.conn_table_full)
        );
        for (name, v) in [
            ("kubeshard_proxy_kernel_flows_total", &self.kernel_flows),
            ("kubeshard_proxy_kernel_full_total", &self.kernel_full),
            ("kubeshard_proxy_kernel_errors_total", &self.kernel_errors),
            (
                "kubeshard_proxy_kernel_fin_waits_total",
                &self.kernel_fin_waits,
            ),
        ] {
            let _ = writeln!(s, "# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", g(v));
        }
        let _ = writeln!(s, "# TYPE kubeshard_proxy_flow_table_full_total counter");
        let _ = writeln!(
            s,
            "kubeshard_proxy_flow_table_full_total {}",
            g(&self.flow_table_full)
        );
        let _ = writeln!(
            s,
            "kubeshard_proxy_udp_flows_expired_total {}",
            g(&self.flows_expired)
        );
        let _ = writeln!(
            s,
            "kubeshard_proxy_listen_errors_total {}",
            g(&self.listen_errors)
        );
        let _ = writeln!(
            s,
            "kubeshard_proxy_address_errors_total {}",
            g(&self.address_errors)
        );
        let _ = writeln!(s, "# TYPE kubeshard_proxy_table_update_seconds histogram");
        let mut cum = 0;
        for (i, b) in UPDATE_BUCKETS_US.iter().enumerate() {
            cum += g(&self.update_buckets[i]);
            let _ = writeln!(
                s,
                "kubeshard_proxy_table_update_seconds_bucket{{le=\"{}\"}} {cum}",
                *b as f64 / 1e6
            );
        }
        cum += g(&self.update_buckets[UPDATE_BUCKETS_US.len()]);
        let _ = writeln!(
            s,
            "kubeshard_proxy_table_update_seconds_bucket{{le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            s,
            "kubeshard_proxy_table_update_seconds_sum {}",
            g(&self.update_sum_us) as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "kubeshard_proxy_table_update_seconds_count {}",
            g(&self.updates)
        );
        let m = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<_> = m.keys().collect();
        keys.sort();
        for (name, field) in [
            ("connections_active", 0usize),
            ("connections_total", 1),
            ("bytes_total", 2),
            ("connect_errors_total", 3),
            ("refused_total", 4),
        ] {
            let _ = writeln!(
                s,
                "# TYPE kubeshard_proxy_{name} {}",
                if field == 0 { "gauge" } else { "counter" }
            );
            for k in &keys {
                let Some((_, sm)) = m.get(*k) else { continue };
                let v = match field {
                    0 => g(&sm.active),
                    1 => g(&sm.total),
                    2 => g(&sm.bytes),
                    3 => g(&sm.connect_errors),
                    _ => g(&sm.refused),
                };
                let _ = writeln!(
                    s,
                    "kubeshard_proxy_{name}{{namespace=\"{}\",service=\"{}\"}} {v}",
                    k.namespace, k.name
                );
            }
        }
        s
    }
}
