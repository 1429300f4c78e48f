//! Sans-IO pieces of pod status: the phase from container states (upstream's `getPhase`),
//! the restart backoff (upstream's `flowcontrol.Backoff` as the kubelet uses it), and the
//! condition list with stable transition times.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

/// What the phase computation needs to know about one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// No status yet.
    Missing,
    /// Running.
    Running,
    /// Terminated with this exit code.
    Terminated(i32),
    /// Waiting; with the exit code of its last termination, if it ran before.
    Waiting(Option<i32>),
}

/// The pod phase (upstream's `getPhase`): `init` are the regular init containers,
/// `sidecars` the restartable ones (`restartPolicy: Always`) with whether each has started.
pub fn pod_phase(
    restart_policy: &str,
    init: &[Summary],
    sidecars: &[(Summary, bool)],
    containers: &[Summary],
) -> &'static str {
    let (mut pending_init, mut failed_init) = (0, 0);
    for s in init {
        match s {
            Summary::Running | Summary::Missing | Summary::Waiting(None) => pending_init += 1,
            Summary::Terminated(c) | Summary::Waiting(Some(c)) => {
                if *c != 0 {
                    failed_init += 1;
                }
            }
        }
    }
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for s in containers {
        match s {
            Summary::Missing => unknown += 1,
            Summary::Running => running += 1,
            Summary::Terminated(c) => {
                stopped += 1;
                if *c == 0 {
                    succeeded += 1;
                }
            }
            Summary::Waiting(Some(_)) => stopped += 1,
            Summary::Waiting(None) => waiting += 1,
        }
    }
    // Sidecars: a running one counts as running (pending until started); an exited one
    // does not count; one that never ran keeps the pod pending.
    let mut pending_sidecars = 0;
    for (s, started) in sidecars {
        match s {
            Summary::Running => {
                if !started {
                    pending_sidecars += 1;
                }
                running += 1;
            }
            Summary::Terminated(_) | Summary::Waiting(Some(_)) => {}
            Summary::Waiting(None) => {
                pending_sidecars += 1;
                waiting += 1;
            }
            Summary::Missing => unknown += 1,
        }
    }
    let any_regular_started = containers
        .iter()
        .any(|s| !matches!(s, Summary::Missing | Summary::Waiting(None)));
    if failed_init > 0 && restart_policy == "Never" {
        return "Failed";
    }
    if (pending_init > 0 || failed_init > 0 || pending_sidecars > 0) && !any_regular_started {
        return "Pending";
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 && unknown == 0 {
        return "Running";
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        if restart_policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if restart_policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

/// Whether a container that exited with `exit_code` is started again under `policy`.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Per-key exponential backoff as the kubelet uses it: the first restart is immediate; each
/// later one waits `base`, `2*base`, ... up to `max` after the previous exit; an entry not
/// touched for `2*max` (a container that ran for 10 minutes) starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    entries: HashMap<String, (Duration, i64)>,
}

impl Backoff {
    /// A backoff from `base` doubling to `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            entries: HashMap::new(),
        }
    }

    fn expired(&self, event_nanos: i64, last_update: i64) -> bool {
        event_nanos.saturating_sub(last_update) > (2 * self.max).as_nanos() as i64
    }

    /// If `key`, last exited at `since` (Unix ns), is still backing off at `now`: until when.
    pub fn in_backoff_until(&self, key: &str, since: i64, now: i64) -> Option<i64> {
        let (delay, last) = self.entries.get(key)?;
        if self.expired(now, *last) {
            return None;
        }
        let until = since.saturating_add(delay.as_nanos() as i64);
        (now < until).then_some(until)
    }

    /// Records a restart of `key` (at `now`): the next delay doubles (or starts at `base`).
    pub fn next(&mut self, key: &str, now: i64) {
        let d = match self.entries.get(key) {
            Some((d, last)) if !self.expired(now, *last) => (*d * 2).min(self.max),
            _ => self.base,
        };
        self.entries.insert(key.to_string(), (d, now));
    }

    /// Forgets `key`.
    pub fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

/// Builds the condition list: each `(type, status, reason, message)`; the transition time of
/// a condition whose status did not change is kept from `old` (the status the API holds),
/// and conditions the kubelet does not own (PodScheduled, readiness gates' types) are kept.
pub fn conditions(old: Option<&Value>, now: &str, want: &[(&str, bool, &str, String)]) -> Value {
    let old_list: Vec<Value> = old
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<Value> = old_list
        .iter()
        .filter(|c| {
            let t = c.get("type").and_then(Value::as_str).unwrap_or("");
            !want.iter().any(|w| w.0 == t)
        })
        .cloned()
        .collect();
    for (t, ok, reason, message) in want {
        let status = if *ok { "True" } else { "False" };
        let prev = old_list
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(t));
        let since = prev
            .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        let mut c = json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
        if !reason.is_empty() {
            c["reason"] = json!(reason);
        }
        if !message.is_empty() {
            c["message"] = json!(message);
        }
        out.push(c);
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Summary::*;

    #[test]
    fn phases_follow_upstream() {
        assert_eq!(pod_phase("Always", &[], &[], &[Missing]), "Pending");
        assert_eq!(pod_phase("Always", &[], &[], &[Waiting(None)]), "Pending");
        assert_eq!(
            pod_phase("Always", &[], &[], &[Running, Running]),
            "Running"
        );
        assert_eq!(
            pod_phase("Always", &[], &[], &[Running, Missing]),
            "Pending"
        );
        assert_eq!(
            pod_phase("Always", &[], &[], &[Waiting(Some(1))]),
            "Running"
        );
        assert_eq!(
            pod_phase("Never", &[], &[], &[Terminated(0), Terminated(0)]),
            "Succeeded"
        );
        assert_eq!(
            pod_phase("Never", &[], &[], &[Terminated(0), Terminated(2)]),
            "Failed"
        );
        assert_eq!(
            pod_phase("OnFailure", &[], &[], &[Terminated(0)]),
            "Succeeded"
        );
        assert_eq!(
            pod_phase("OnFailure", &[], &[], &[Waiting(Some(1))]),
            "Running"
        );
        assert_eq!(
            pod_phase("Never", &[], &[], &[Running, Terminated(1)]),
            "Running"
        );
        assert_eq!(
            pod_phase("Always", &[Terminated(0), Running], &[], &[Waiting(None)]),
            "Pending"
        );
        assert_eq!(
            pod_phase("Never", &[Terminated(1)], &[], &[Waiting(None)]),
            "Failed"
        );
        assert_eq!(
            pod_phase("OnFailure", &[Waiting(Some(1))], &[], &[Waiting(None)]),
            "Pending"
        );
        assert_eq!(
            pod_phase("Always", &[Terminated(0)], &[], &[Running]),
            "Running"
        );
        // Sidecars: not started yet keeps the pod pending; running with finished main
        // containers keeps it running; once stopped, the main containers decide.
        assert_eq!(
            pod_phase("Never", &[], &[(Running, false)], &[Waiting(None)]),
            "Pending"
        );
        assert_eq!(
            pod_phase("Never", &[], &[(Running, true)], &[Running]),
            "Running"
        );
        assert_eq!(
            pod_phase("Never", &[], &[(Running, true)], &[Terminated(0)]),
            "Running"
        );
        assert_eq!(
            pod_phase("Never", &[], &[(Terminated(137), false)], &[Terminated(0)]),
            "Succeeded"
        );
        assert_eq!(
            pod_phase("Never", &[], &[(Terminated(143), false)], &[Terminated(3)]),
            "Failed"
        );
        // A restarting sidecar does not send a started pod back to Pending.
        assert_eq!(
            pod_phase("Always", &[], &[(Waiting(Some(1)), false)], &[Running]),
            "Running"
        );
    }

    #[test]
    fn backoff_doubles_and_resets() {
        let s = 1_000_000_000i64;
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        // First exit: no entry, restart at once.
        assert_eq!(b.in_backoff_until("c", 0, 0), None);
        b.next("c", 0);
        // Second exit at t=1s: wait until 11 s.
        assert_eq!(b.in_backoff_until("c", s, 2 * s), Some(11 * s));
        assert_eq!(b.in_backoff_until("c", s, 11 * s), None);
        b.next("c", 11 * s);
        assert_eq!(b.in_backoff_until("c", 12 * s, 12 * s), Some(32 * s));
        for i in 0..10 {
            b.next("c", (40 + i) * s);
        }
        assert_eq!(b.in_backoff_until("c", 50 * s, 50 * s), Some(350 * s));
        // Ten minutes later (2 x max) the entry has expired.
        assert_eq!(b.in_backoff_until("c", 700 * s, 700 * s), None);
        b.next("c", 700 * s);
        assert_eq!(b.in_backoff_until("c", 701 * s, 701 * s), Some(711 * s));
        assert!(should_restart("Always", 0));
        assert!(!should_restart("OnFailure", 0));
        assert!(should_restart("OnFailure", 3));
        assert!(!should_restart("Never", 3));
    }

    #[test]
    fn conditions_keep_transition_times() {
        let old = json!({"conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"},
            {"type": "Ready", "status": "False", "lastTransitionTime": "t1"},
            {"type": "Initialized", "status": "True", "lastTransitionTime": "t1"}]});
        let c = conditions(
            Some(&old),
            "t2",
            &[
                ("Initialized", true, "", String::new()),
                ("Ready", true, "", String::new()),
            ],
        );
        let get = |t: &str| {
            c.as_array()
                .unwrap()
                .iter()
                .find(|x| x["type"] == t)
                .unwrap()
                .clone()
        };
        assert_eq!(get("PodScheduled")["lastTransitionTime"], "t0");
        assert_eq!(get("Initialized")["lastTransitionTime"], "t1");
        assert_eq!(get("Ready")["lastTransitionTime"], "t2");
        assert_eq!(get("Ready")["status"], "True");
    }
}
