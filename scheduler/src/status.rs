//! The closed set of outcomes a plugin can return, and what each means for requeueing.

use std::borrow::Cow;
use std::time::Duration;

/// Why a node was rejected, as upstream words it ("Insufficient cpu").
pub type Reason = Cow<'static, str>;

/// A plugin's verdict. The set is closed: the framework and the queue act on each variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The plugin is satisfied; go on.
    Success,
    /// The node (or pod) does not fit now but may after a cluster change, or after preemption
    /// frees room. The pod goes to the unschedulable queue and moves back on a relevant event
    /// (node added/updated, pod deleted); PostFilter (preemption) may run.
    Unschedulable(Vec<Reason>),
    /// The node cannot host the pod whatever is preempted (wrong labels, untolerated taint).
    /// Requeue as `Unschedulable`, but preemption never considers this node.
    UnschedulableAndUnresolvable(Vec<Reason>),
    /// An internal error (bad input, broken invariant). The pod is retried through the backoff
    /// queue without waiting for an event.
    Error(String),
    /// The plugin has nothing to do for this pod (returned by PreFilter/PreScore): its
    /// Filter/Score are not called for the pod in this cycle. Never a rejection.
    Skip,
    /// Permit only: hold the pod in the assumed state for at most this long before binding.
    Wait(Duration),
}

impl Status {
    /// An `Unschedulable` status with one reason.
    pub fn unschedulable(reason: impl Into<Reason>) -> Self {
        Status::Unschedulable(vec![reason.into()])
    }

    /// An `UnschedulableAndUnresolvable` status with one reason.
    pub fn unresolvable(reason: impl Into<Reason>) -> Self {
        Status::UnschedulableAndUnresolvable(vec![reason.into()])
    }

    /// Success or Skip: the pod may proceed.
    pub fn is_success(&self) -> bool {
        matches!(self, Status::Success | Status::Skip)
    }

    /// Whether this is one of the two rejection codes.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Status::Unschedulable(_) | Status::UnschedulableAndUnresolvable(_)
        )
    }

    /// The reasons carried by a rejection or error.
    pub fn reasons(&self) -> Vec<Reason> {
        match self {
            Status::Unschedulable(r) | Status::UnschedulableAndUnresolvable(r) => r.clone(),
            Status::Error(e) => vec![Cow::Owned(e.clone())],
            _ => Vec::new(),
        }
    }
}
