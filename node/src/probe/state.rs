//! The sans-IO probe state machine of one container (upstream's prober workers, the three
//! of a container together): it never reads a clock; the caller passes `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};

use super::ProbeResult;

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// startupProbe: gates the other two; failing it restarts the container.
    Startup,
    /// livenessProbe: failing it restarts the container.
    Liveness,
    /// readinessProbe: drives the container's ready flag.
    Readiness,
}

impl ProbeKind {
    fn index(self) -> usize {
        match self {
            ProbeKind::Startup => 0,
            ProbeKind::Liveness => 1,
            ProbeKind::Readiness => 2,
        }
    }

    /// Upstream's name ("Startup", "Liveness", "Readiness") for events and messages.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];
}

/// A probe's timing fields after upstream's defaulting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// initialDelaySeconds (default 0), counted from the container's start.
    pub initial_delay: Duration,
    /// periodSeconds (default 10, at least 1).
    pub period: Duration,
    /// timeoutSeconds (default 1, at least 1).
    pub timeout: Duration,
    /// successThreshold (default 1).
    pub success_threshold: u32,
    /// failureThreshold (default 3).
    pub failure_threshold: u32,
    /// terminationGracePeriodSeconds of the probe (liveness and startup): the grace period
    /// of the kill it causes, overriding the pod's.
    pub termination_grace_period_seconds: Option<i64>,
}

impl ProbeTiming {
    /// The defaulted timing of `p`.
    pub fn from_probe(p: &Probe) -> ProbeTiming {
        let secs =
            |v: Option<i32>, d: i32, min: i32| Duration::from_secs(v.unwrap_or(d).max(min) as u64);
        ProbeTiming {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
            termination_grace_period_seconds: p.termination_grace_period_seconds,
        }
    }
}

/// What a probe result changed, for the kubelet to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The container counts as started (its startup probe passed, or it has none).
    Started,
    /// The container's ready flag changed.
    Ready(bool),
    /// The liveness or startup probe failed failureThreshold times in a row: kill the
    /// container (restartPolicy decides what follows). All probing stops until
    /// [`ProbeState::restart`].
    Restart {
        /// The failing probe.
        kind: ProbeKind,
        /// Upstream's message of the last failure.
        message: String,
        /// The probe's terminationGracePeriodSeconds, which overrides the pod's for this
        /// kill when set.
        grace_period_seconds: Option<i64>,
    },
}

#[derive(Debug, Clone)]
struct Worker {
    probe: Probe,
    timing: ProbeTiming,
    next_at: Instant,
    in_flight: bool,
    /// The last result kind seen (true: success) and how many times in a row.
    last: Option<bool>,
    run: u32,
}

/// The probe state of one running container: startup gating liveness and readiness,
/// thresholds, and the schedule. See the module doc of [`crate::probe`] for the loop the
/// caller runs.
#[derive(Debug, Clone)]
pub struct ProbeState {
    workers: [Option<Worker>; 3],
    started_at: Instant,
    started: bool,
    ready: bool,
    on_hold: bool,
    terminating: bool,
    events: VecDeque<ProbeEvent>,
}

impl ProbeState {
    /// The state of `container`, which started running at `started_at`.
    pub fn new(container: &Container, started_at: Instant) -> ProbeState {
        Self::from_probes(
            container.startup_probe.clone(),
            container.liveness_probe.clone(),
            container.readiness_probe.clone(),
            started_at,
        )
    }

    /// The state from the three probes directly.
    pub fn from_probes(
        startup: Option<Probe>,
        liveness: Option<Probe>,
        readiness: Option<Probe>,
        started_at: Instant,
    ) -> ProbeState {
        let mk = |p: Option<Probe>| {
            p.map(|probe| {
                let timing = ProbeTiming::from_probe(&probe);
                Worker {
                    probe,
                    timing,
                    next_at: started_at + timing.initial_delay,
                    in_flight: false,
                    last: None,
                    run: 0,
                }
            })
        };
        let mut s = ProbeState {
            workers: [mk(startup), mk(liveness), mk(readiness)],
            started_at,
            started: false,
            ready: false,
            on_hold: false,
            terminating: false,
            events: VecDeque::new(),
        };
        s.begin();
        s
    }

    fn begin(&mut self) {
        if self.workers[ProbeKind::Startup.index()].is_none() {
            self.mark_started(self.started_at);
        }
    }

    fn mark_started(&mut self, now: Instant) {
        self.started = true;
        self.events.push_back(ProbeEvent::Started);
        // The gated probes run from now on (not before their own initial delay).
        for k in [ProbeKind::Liveness, ProbeKind::Readiness] {
            if let Some(w) = self.workers[k.index()].as_mut() {
                w.next_at = (self.started_at + w.timing.initial_delay).max(now);
            }
        }
        if self.workers[ProbeKind::Readiness.index()].is_none() {
            self.set_ready(true);
        }
    }

    fn set_ready(&mut self, ready: bool) {
        if self.ready != ready {
            self.ready = ready;
            self.events.push_back(ProbeEvent::Ready(ready));
        }
    }

    /// The probe of `kind`, if the container has one.
    pub fn probe(&self, kind: ProbeKind) -> Option<&Probe> {
        self.workers[kind.index()].as_ref().map(|w| &w.probe)
    }

    /// The defaulted timing of the probe of `kind`.
    pub fn timing(&self, kind: ProbeKind) -> Option<ProbeTiming> {
        self.workers[kind.index()].as_ref().map(|w| w.timing)
    }

    /// Whether the container counts as started.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Whether the container is ready.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    fn active(&self, kind: ProbeKind) -> bool {
        if self.on_hold {
            return false;
        }
        match kind {
            ProbeKind::Startup => !self.started && !self.terminating,
            ProbeKind::Liveness => self.started && !self.terminating,
            ProbeKind::Readiness => self.started,
        }
    }

    /// The next probe due at `now`, if any: the caller runs it and reports with
    /// [`ProbeState::handle_result`]. The probe's next run is scheduled one period after
    /// this one started; a probe still in flight is not handed out again.
    pub fn poll_probe(&mut self, now: Instant) -> Option<ProbeKind> {
        for k in ProbeKind::ALL {
            if !self.active(k) {
                continue;
            }
            if let Some(w) = self.workers[k.index()].as_mut()
                && !w.in_flight
                && w.next_at <= now
            {
                w.in_flight = true;
                // Keep the period's grid; after a long stall start again from now.
                let mut next = w.next_at + w.timing.period;
                if next <= now {
                    next = now + w.timing.period;
                }
                w.next_at = next;
                return Some(k);
            }
        }
        None
    }

    /// When the next probe is due (None: nothing to probe until an external change).
    pub fn poll_timeout(&self) -> Option<Instant> {
        ProbeKind::ALL
            .iter()
            .filter(|k| self.active(**k))
            .filter_map(|k| self.workers[k.index()].as_ref())
            .filter(|w| !w.in_flight)
            .map(|w| w.next_at)
            .min()
    }

    /// The next change for the caller to act on.
    pub fn poll_event(&mut self) -> Option<ProbeEvent> {
        self.events.pop_front()
    }

    /// Records the result of a probe handed out by [`ProbeState::poll_probe`]. `Unknown`
    /// results are thrown away as upstream does; results arriving after the state moved on
    /// (on hold, startup already passed) are ignored.
    pub fn handle_result(&mut self, kind: ProbeKind, result: &ProbeResult, now: Instant) {
        let active = self.active(kind);
        let Some(w) = self.workers[kind.index()].as_mut() else {
            return;
        };
        w.in_flight = false;
        if !active {
            return;
        }
        let success = match result {
            ProbeResult::Success => true,
            ProbeResult::Failure(_) => false,
            ProbeResult::Unknown(_) => return,
        };
        if w.last == Some(success) {
            w.run = w.run.saturating_add(1);
        } else {
            w.last = Some(success);
            w.run = 1;
        }
        let threshold = if success {
            w.timing.success_threshold
        } else {
            w.timing.failure_threshold
        };
        if w.run < threshold {
            return;
        }
        let grace = w.timing.termination_grace_period_seconds;
        match (kind, success) {
            (ProbeKind::Startup, true) => self.mark_started(now),
            (ProbeKind::Readiness, ok) => self.set_ready(ok),
            (ProbeKind::Liveness, true) => {}
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                let message = match result {
                    ProbeResult::Failure(m) => m.clone(),
                    _ => String::new(),
                };
                // The container is going away: stop probing it, and it is not ready.
                self.on_hold = true;
                if let Some(w) = self.workers[kind.index()].as_mut() {
                    w.run = 0;
                }
                self.set_ready(false);
                self.events.push_back(ProbeEvent::Restart {
                    kind,
                    message,
                    grace_period_seconds: grace,
                });
            }
        }
    }

    /// The pod is being deleted: liveness and startup probes stop (so a slow shutdown is not
    /// answered with a restart); readiness goes on.
    pub fn set_terminating(&mut self) {
        self.terminating = true;
    }

    /// A new container replaced the old one at `started_at`: everything starts over.
    pub fn restart(&mut self, started_at: Instant) {
        let s = Self::from_probes(
            self.probe(ProbeKind::Startup).cloned(),
            self.probe(ProbeKind::Liveness).cloned(),
            self.probe(ProbeKind::Readiness).cloned(),
            started_at,
        );
        let was_ready = self.ready;
        let terminating = self.terminating;
        *self = s;
        self.terminating = terminating;
        // The new container starts unready; tell the caller if that is a change, then the
        // new state's own events (Started, Ready(true) without a readiness probe).
        if was_ready {
            self.events.push_front(ProbeEvent::Ready(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ExecAction;

    fn probe(period: i32, delay: i32, succ: i32, fail: i32) -> Probe {
        Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            period_seconds: Some(period),
            initial_delay_seconds: Some(delay),
            success_threshold: Some(succ),
            failure_threshold: Some(fail),
            ..Probe::default()
        }
    }

    fn ok() -> ProbeResult {
        ProbeResult::Success
    }
    fn bad() -> ProbeResult {
        ProbeResult::Failure("boom".into())
    }

    fn events(s: &mut ProbeState) -> Vec<ProbeEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// Drives the state over simulated time: at each due instant the probe of each kind
    /// answers with `answer(kind, seconds since start)`. Returns (seconds, event) pairs.
    fn simulate(
        s: &mut ProbeState,
        t0: Instant,
        until_secs: u64,
        mut answer: impl FnMut(ProbeKind, u64) -> ProbeResult,
    ) -> Vec<(u64, ProbeEvent)> {
        let mut out: Vec<(u64, ProbeEvent)> = events(s).into_iter().map(|e| (0, e)).collect();
        let end = t0 + Duration::from_secs(until_secs);
        for _ in 0..10_000 {
            let Some(next) = s.poll_timeout() else { break };
            if next > end {
                break;
            }
            while let Some(k) = s.poll_probe(next) {
                let secs = (next - t0).as_secs();
                let r = answer(k, secs);
                s.handle_result(k, &r, next);
                out.extend(events(s).into_iter().map(|e| (secs, e)));
            }
        }
        out
    }

    #[test]
    fn defaults_follow_upstream() {
        let t = ProbeTiming::from_probe(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!(t.initial_delay, Duration::ZERO);
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
    }

    #[test]
    fn no_probes_means_started_and_ready_at_once() {
        let t0 = Instant::now();
        let mut s = ProbeState::from_probes(None, None, None, t0);
        assert_eq!(
            events(&mut s),
            vec![ProbeEvent::Started, ProbeEvent::Ready(true)]
        );
        assert!(s.is_ready() && s.is_started());
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.poll_probe(t0 + Duration::from_secs(100)), None);
    }

    #[test]
    fn readiness_waits_for_initial_delay_and_success_threshold() {
        let t0 = Instant::now();
        let mut s = ProbeState::from_probes(None, None, Some(probe(5, 12, 2, 3)), t0);
        let ev = simulate(&mut s, t0, 40, |_, _| ok());
        // First probe at 12 s, second at 17 s: the second success reaches the threshold.
        assert_eq!(
            ev,
            vec![(0, ProbeEvent::Started), (17, ProbeEvent::Ready(true))]
        );
    }

    #[test]
    fn readiness_flips_after_failure_threshold_and_back() {
        let t0 = Instant::now();
        let mut s = ProbeState::from_probes(None, None, Some(probe(10, 0, 1, 3)), t0);
        // Healthy until 30 s, failing 30..=60, healthy after.
        let ev = simulate(&mut s, t0, 100, |_, t| {
            if (30..=60).contains(&t) { bad() } else { ok() }
        });
        assert_eq!(
            ev,
            vec![
                (0, ProbeEvent::Started),
                (0, ProbeEvent::Ready(true)),
                (50, ProbeEvent::Ready(false)),
                (70, ProbeEvent::Ready(true)),
            ]
        );
    }

    #[test]
    fn liveness_failure_restarts_once_and_holds() {
        let t0 = Instant::now();
        let mut p = probe(3, 0, 1, 2);
        p.termination_grace_period_seconds = Some(7);
        let mut s = ProbeState::from_probes(None, Some(p), None, t0);
        let ev = simulate(&mut s, t0, 60, |_, t| if t >= 6 { bad() } else { ok() });
        assert_eq!(
            ev,
            vec![
                (0, ProbeEvent::Started),
                (0, ProbeEvent::Ready(true)),
                (9, ProbeEvent::Ready(false)),
                (
                    9,
                    ProbeEvent::Restart {
                        kind: ProbeKind::Liveness,
                        message: "boom".into(),
                        grace_period_seconds: Some(7)
                    }
                ),
            ]
        );
        // On hold: nothing more until the container is replaced.
        assert_eq!(s.poll_timeout(), None);
        let t1 = t0 + Duration::from_secs(70);
        s.restart(t1);
        assert_eq!(
            events(&mut s),
            vec![ProbeEvent::Started, ProbeEvent::Ready(true)]
        );
        assert_eq!(s.poll_timeout(), Some(t1));
    }

    #[test]
    fn startup_gates_liveness_and_readiness() {
        let t0 = Instant::now();
        let mut s = ProbeState::from_probes(
            Some(probe(2, 0, 1, 30)),
            Some(probe(10, 0, 1, 1)),
            Some(probe(10, 0, 1, 1)),
            t0,
        );
        let mut seen = Vec::new();
        // The app takes 7 s to start: startup fails until then; liveness would fail if it
        // ran before startup passed.
        let ev = simulate(&mut s, t0, 30, |k, t| {
            seen.push((k, t));
            match k {
                ProbeKind::Startup => {
                    if t >= 7 {
                        ok()
                    } else {
                        bad()
                    }
                }
                ProbeKind::Liveness | ProbeKind::Readiness => {
                    if t < 8 {
                        bad()
                    } else {
                        ok()
                    }
                }
            }
        });
        assert_eq!(
            ev,
            vec![(8, ProbeEvent::Started), (8, ProbeEvent::Ready(true))]
        );
        assert!(
            seen.iter()
                .all(|(k, t)| *k == ProbeKind::Startup || *t >= 8)
        );
        // The startup probe stops once passed.
        assert!(!seen.iter().any(|(k, t)| *k == ProbeKind::Startup && *t > 8));
        assert!(seen.contains(&(ProbeKind::Liveness, 18)));
    }

    #[test]
    fn startup_failure_restarts() {
        let t0 = Instant::now();
        let mut s =
            ProbeState::from_probes(Some(probe(1, 0, 1, 5)), Some(probe(10, 0, 1, 1)), None, t0);
        let ev = simulate(&mut s, t0, 30, |_, _| bad());
        assert_eq!(
            ev,
            vec![(
                4,
                ProbeEvent::Restart {
                    kind: ProbeKind::Startup,
                    message: "boom".into(),
                    grace_period_seconds: None
                }
            )]
        );
        assert!(!s.is_started());
    }

    #[test]
    fn unknown_results_count_neither_way() {
        let t0 = Instant::now();
        let mut s = ProbeState::from_probes(None, Some(probe(1, 0, 1, 2)), None, t0);
        let ev = simulate(&mut s, t0, 20, |_, t| {
            if t % 2 == 0 {
                ProbeResult::Unknown("x".into())
            } else {
                bad()
            }
        });
        // Failures at 1 and 3 are consecutive once the unknowns are thrown away.
        assert_eq!(ev.last().map(|e| e.0), Some(3));
        assert!(matches!(
            ev.last().map(|e| &e.1),
            Some(ProbeEvent::Restart { .. })
        ));
    }

    #[test]
    fn in_flight_probe_is_not_handed_out_twice() {
        let t0 = Instant::now();
        let mut s = ProbeState::from_probes(None, Some(probe(1, 0, 1, 3)), None, t0);
        events(&mut s);
        assert_eq!(s.poll_probe(t0), Some(ProbeKind::Liveness));
        // A slow probe: past its next period, still in flight.
        assert_eq!(s.poll_probe(t0 + Duration::from_secs(5)), None);
        assert_eq!(s.poll_timeout(), None);
        s.handle_result(ProbeKind::Liveness, &ok(), t0 + Duration::from_secs(5));
        // Overdue: due at once, then the grid restarts from the stall.
        let t5 = t0 + Duration::from_secs(5);
        assert!(s.poll_timeout().unwrap() <= t5);
        assert_eq!(s.poll_probe(t5), Some(ProbeKind::Liveness));
        s.handle_result(ProbeKind::Liveness, &ok(), t5);
        assert_eq!(s.poll_timeout(), Some(t5 + Duration::from_secs(1)));
    }

    #[test]
    fn terminating_stops_liveness_not_readiness() {
        let t0 = Instant::now();
        let mut s =
            ProbeState::from_probes(None, Some(probe(1, 0, 1, 1)), Some(probe(1, 0, 1, 1)), t0);
        events(&mut s);
        s.set_terminating();
        let mut kinds = Vec::new();
        let ev = simulate(&mut s, t0, 5, |k, _| {
            kinds.push(k);
            bad()
        });
        assert!(kinds.iter().all(|k| *k == ProbeKind::Readiness));
        assert!(!kinds.is_empty());
        assert!(
            !ev.iter()
                .any(|(_, e)| matches!(e, ProbeEvent::Restart { .. }))
        );
    }
}
