//! evidence-locker: captures the trace evidence of an incident before the tracing backend's
//! retention deletes it, analyses it and writes one immutable, checksummed bundle.
//!
//! The modules follow the flow: `model` (the domain, imported by all) → `formats` (reading and
//! writing trace formats) → `capture` (trace sources) → `analyze` → `bundle` → `store` →
//! `notify`; `intake` turns webhooks into incident messages on the `queue`, which the `worker`
//! consumes.

pub mod analyze;
pub mod audit;
pub mod bundle;
pub mod capture;
pub mod collect;
pub mod config;
pub mod duration;
pub mod formats;
#[doc(hidden)]
pub mod fuzzing;
pub mod intake;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod queue;
pub mod redact;
pub mod replay;
pub mod sign;
pub mod store;
pub mod worker;
