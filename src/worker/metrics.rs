//! The worker's side of the process's metrics (`crate::metrics`), served with `/healthz` and
//! `/readyz` on `metrics.listen`.

use crate::metrics::{Metrics, get};

/// What became of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Stored,
    AlreadyCaptured,
    DeadLettered,
    Retried,
    HandedBack,
    /// Not due yet: handed back until its window has passed.
    Waiting,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::AlreadyCaptured => "already_captured",
            Self::DeadLettered => "dead_lettered",
            Self::Retried => "retried",
            Self::HandedBack => "handed_back",
            Self::Waiting => "waiting",
        }
    }
}

pub fn outcome(o: Outcome) {
    Metrics::inc(&get().messages, &[("outcome", o.name())]);
}

/// Counts a captured bundle: its status, what it holds and, when partial, each kind of gap.
pub fn captured(status: &str, counts: &crate::bundle::Counts, gaps: &[crate::capture::Gap]) {
    let m = get();
    Metrics::inc(&m.captures, &[("status", status)]);
    m.captured(counts);
    let kinds: std::collections::BTreeSet<&str> = gaps.iter().map(|g| g.kind.as_str()).collect();
    for k in kinds {
        Metrics::inc(&m.partial_captures, &[("gap", k)]);
    }
}

/// Counts a failed capture attempt: `transient` (retried) or `permanent`.
pub fn failed(kind: &'static str) {
    Metrics::inc(&get().captures_failed, &[("kind", kind)]);
}

/// Counts a dead-lettered message under one of a few reasons.
pub fn dead_lettered(reason: &'static str) {
    Metrics::inc(&get().dead_letters, &[("reason", reason)]);
}

pub fn webhook(delivered: bool) {
    Metrics::inc(
        &get().webhook_deliveries,
        &[("result", if delivered { "delivered" } else { "failed" })],
    );
}
