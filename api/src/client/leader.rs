//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`.
//!
//! A candidate takes the Lease when it does not exist, names no holder, or its holder has
//! not renewed it for `leaseDurationSeconds` as observed *locally* (the time this candidate
//! last saw the Lease change, so clocks need not agree). The leader renews every
//! `retry_period`; if it cannot renew within `renew_deadline` (or sees another holder) it
//! stops leading and becomes a candidate again. On shutdown a leader releases the Lease
//! (empty holder) so another candidate takes over at once. Every write carries the read
//! resourceVersion, so two candidates never both win a round.
//!
//! Leadership is published on a `tokio::sync::watch` channel ([`LeaderElector::subscribe`]).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::Result;
use super::params::PostParams;
use super::runtime::random_unit;
use super::{Api, Client};

/// Timing of an election (upstream defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// Pause between attempts (acquire and renew).
    pub retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The current time as a `MicroTime` (jiff's clock is not enabled in k8s-openapi).
fn now() -> MicroTime {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(micros)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// What one try found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease now.
    Held,
    /// Someone else holds a valid Lease.
    Other,
}

/// A candidate for leadership of one Lease.
#[derive(Debug)]
pub struct LeaderElector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    cfg: LeaderElectionConfig,
    tx: watch::Sender<bool>,
    /// The Lease resourceVersion last seen and when it was seen.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    /// A candidate `identity` for Lease `namespace/name`, with the default timing.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            leases: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            cfg: LeaderElectionConfig::default(),
            tx: watch::Sender::new(false),
            observed: None,
        }
    }

    /// Replaces the timing.
    #[must_use]
    pub fn with_config(mut self, cfg: LeaderElectionConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// A receiver of the leadership state (true while this candidate leads).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// True while this candidate leads.
    pub fn is_leader(&self) -> bool {
        *self.tx.borrow()
    }

    fn lease_duration_secs(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One acquire-or-renew round.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt> {
        let now = now();
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: self.leases.namespace().map(str::to_string),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_duration_secs()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.observe(&l);
                    Ok(Attempt::Held)
                }
                Err(e) if e.is_already_exists() => Ok(Attempt::Other),
                Err(e) => Err(e),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let seen_at = self.observed.as_ref().map_or_else(Instant::now, |o| o.1);
        if !holder.is_empty() && holder != self.identity && seen_at.elapsed() < duration {
            return Ok(Attempt::Other);
        }
        let mut new = spec.clone();
        if holder != self.identity {
            new.acquire_time = Some(now.clone());
            new.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        new.holder_identity = Some(self.identity.clone());
        new.lease_duration_seconds = Some(self.lease_duration_secs());
        new.renew_time = Some(now);
        lease.spec = Some(new);
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                self.observe(&l);
                Ok(Attempt::Held)
            }
            // Someone else wrote first this round.
            Err(e) if e.is_conflict() => Ok(Attempt::Other),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(o, _)| *o != rv) {
            self.observed = Some((rv, Instant::now()));
        }
    }

    /// Gives the Lease up if this candidate holds it: empty holder, 1 s duration.
    async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let now = now();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        lease.spec = Some(spec);
        self.leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    fn jittered(&self) -> Duration {
        self.cfg.retry_period.mul_f64(1.0 + 0.2 * random_unit())
    }

    /// Campaigns and leads until `shutdown` completes, then releases the Lease if held.
    /// Leadership changes are published to [`LeaderElector::subscribe`] receivers.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            // Campaign.
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(Attempt::Held) => break,
                    Ok(Attempt::Other) => {}
                    Err(e) => tracing::debug!(lease = %self.name, "acquiring: {e}"),
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(self.jittered()) => {}
                }
            }
            self.tx.send_replace(true);
            tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
            // Lead: renew until a renewal misses the deadline or another holder appears.
            let mut renewed = Instant::now();
            loop {
                tokio::select! {
                    () = &mut shutdown => {
                        self.tx.send_replace(false);
                        return self.release().await;
                    }
                    () = tokio::time::sleep(self.cfg.retry_period) => {}
                }
                let left = self.cfg.renew_deadline.saturating_sub(renewed.elapsed());
                match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                    Ok(Ok(Attempt::Held)) => renewed = Instant::now(),
                    Ok(Ok(Attempt::Other)) => break,
                    Ok(Err(e)) => tracing::debug!(lease = %self.name, "renewing: {e}"),
                    Err(_) => {}
                }
                if renewed.elapsed() >= self.cfg.renew_deadline {
                    break;
                }
            }
            self.tx.send_replace(false);
            tracing::warn!(lease = %self.name, identity = %self.identity, "lost leadership");
        }
    }

    /// Runs the elector on its own task; the handle reports leadership and stops it.
    pub fn spawn(self) -> LeaderHandle {
        let rx = self.subscribe();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            let _ = stopped.await;
        }));
        LeaderHandle {
            rx,
            stop: Some(stop),
            task,
        }
    }
}

/// A running [`LeaderElector`]. Dropping it aborts the elector without releasing the
/// Lease (as a crash would); call [`LeaderHandle::stop`] to release it.
#[derive(Debug)]
pub struct LeaderHandle {
    rx: watch::Receiver<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl LeaderHandle {
    /// True while leading.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// A receiver of the leadership state.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Waits until this candidate leads.
    pub async fn wait_leader(&mut self) {
        let _ = self.rx.wait_for(|l| *l).await;
    }

    /// Stops campaigning and releases the Lease if held.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}

impl Drop for LeaderHandle {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}
