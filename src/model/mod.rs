//! The domain at the bottom of everything: incidents, time windows, trace and span ids and the one
//! normalized span model that every trace source maps into. Imports nothing of ours.

mod ids;
mod incident;
mod span;

pub use ids::{HexId, IdError, SpanId, TraceId};
pub use incident::{
    EARLIEST_NS, Incident, IncidentError, IncidentId, IncidentParts, LATEST_NS, ObjectError,
    ResolvedWindow, TimeWindow, WindowDefaults, json_object,
};
pub use span::{
    AttrValue, Attribute, Event, Link, List, Resource, Scope, Span, SpanKind, Status, StatusCode,
    Trace,
};
