//! Compact traces: what the analysis needs of a span in 48 bytes (ids, times, kind, status, and
//! the operation and resource as numbers into tables shared by the whole capture), so that
//! millions of spans can be held while a file is read. The few spans with a status message or a
//! W3C trace state keep them beside the trace. Only the traces a capture keeps are turned back
//! into [`Trace`]s (with no attributes: those stay in the spill).

use foldhash::HashMap;
use std::sync::Arc;

use crate::model::{Resource, Span, SpanId, SpanKind, Status, StatusCode, Trace};

/// One span, compact.
#[derive(Clone, Debug)]
pub struct LightSpan {
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub start_ns: i64,
    pub end_ns: i64,
    pub operation: u32,
    pub resource: u32,
    pub kind: SpanKind,
    pub status: StatusCode,
    /// 1 + the index of this span's entry in [`LightTrace::extras`]; 0 for none.
    extra: u32,
}

impl LightSpan {
    fn duration_ns(&self) -> i64 {
        (self.end_ns - self.start_ns).max(0)
    }

    fn is_timed(&self) -> bool {
        self.start_ns != 0 || self.end_ns != 0
    }
}

/// What a few spans carry besides: a status message, a trace state.
#[derive(Clone, Debug)]
struct Extra {
    message: Option<Box<str>>,
    trace_state: Option<Box<str>>,
}

/// The extras of a trace's spans, behind one thin pointer (most traces have none).
#[derive(Clone, Debug, Default)]
pub struct Extras(Vec<Extra>);

/// Where one trace's compact spans lie: a run of a [`Slabs`] slab.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    slab: u32,
    start: u32,
    len: u32,
}

/// One trace's compact spans as the capture stores them: a run of a slab shared with the other
/// traces of its part of the input (one allocation a part, not one a trace, so that freeing the
/// traces not kept frees whole pages), and its spans' extras.
#[derive(Clone, Debug, Default)]
pub struct LightTrace {
    run: Run,
    extras: Option<Box<Extras>>,
}

impl LightTrace {
    /// How many spans the trace has.
    pub fn span_count(&self) -> usize {
        self.run.len as usize
    }
}

/// The slabs of compact spans, one per part of the input (and one per trace put together from
/// several parts).
#[derive(Default)]
pub struct Slabs {
    slabs: Vec<Box<[LightSpan]>>,
}

impl Slabs {
    /// Stores `spans` as a slab; each of `traces` (start, length, extras) is a run of it.
    pub fn add(
        &mut self,
        spans: Vec<LightSpan>,
        traces: Vec<(u32, u32, Option<Box<Extras>>)>,
    ) -> Vec<LightTrace> {
        let slab = self.slabs.len() as u32;
        self.slabs.push(spans.into_boxed_slice());
        traces
            .into_iter()
            .map(|(start, len, extras)| LightTrace {
                run: Run { slab, start, len },
                extras,
            })
            .collect()
    }

    /// Copies the spans of `t` to the end of `into`, to outlive the slabs, and gives up its
    /// extras.
    pub fn move_out(&self, t: LightTrace, into: &mut Vec<LightSpan>) -> Option<Box<Extras>> {
        into.extend_from_slice(self.view(&t).spans);
        t.extras
    }

    /// The spans of a stored trace.
    pub fn view<'a>(&'a self, t: &'a LightTrace) -> LightView<'a> {
        let Run { slab, start, len } = t.run;
        let spans = self
            .slabs
            .get(slab as usize)
            .and_then(|s| s.get(start as usize..(start + len) as usize))
            .unwrap_or(&[]);
        LightView {
            spans,
            extras: t.extras.as_deref(),
        }
    }

    /// Puts together the parts of one trace (in input order), dropping the spans a later part
    /// repeats (the same id, service, operation and start, as `formats` does when a trace is
    /// read whole); returns the trace and how many spans were dropped.
    pub fn merge(&mut self, parts: &[LightTrace], names: &Names) -> (LightTrace, usize) {
        let key = |s: &LightSpan| {
            (
                s.span_id,
                names.resources[s.resource as usize].service.clone(),
                s.operation,
                s.start_ns,
            )
        };
        let mut seen = foldhash::HashSet::default();
        let mut spans = Vec::new();
        let mut extras = Vec::new();
        let mut dropped = 0;
        for part in parts {
            let view = self.view(part);
            for s in view.spans {
                if !seen.insert(key(s)) {
                    dropped += 1;
                    continue;
                }
                let mut s = s.clone();
                if s.extra != 0 {
                    extras.extend(view.extra(&s).cloned());
                    s.extra = extras.len() as u32;
                }
                spans.push(s);
            }
        }
        let len = spans.len() as u32;
        let extras = (!extras.is_empty()).then(|| Box::new(Extras(extras)));
        let merged = self.add(spans, vec![(0, len, extras)]);
        (merged.into_iter().next().unwrap_or_default(), dropped)
    }
}

/// One trace's compact spans, borrowed.
#[derive(Clone, Copy)]
pub struct LightView<'a> {
    spans: &'a [LightSpan],
    extras: Option<&'a Extras>,
}

impl<'a> LightView<'a> {
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    /// As [`Trace::has_error`].
    pub fn has_error(&self) -> bool {
        self.spans.iter().any(|s| s.status == StatusCode::Error)
    }

    /// As [`Trace::max_span_duration_ns`].
    pub fn max_span_duration_ns(&self) -> i64 {
        self.spans
            .iter()
            .map(LightSpan::duration_ns)
            .max()
            .unwrap_or(0)
    }

    /// As [`Trace::start_ns`].
    pub fn start_ns(&self) -> i64 {
        self.spans.iter().map(|s| s.start_ns).min().unwrap_or(0)
    }

    /// Earliest start and latest end of the spans that have a time at all.
    pub fn timed_range(&self) -> Option<(i64, i64)> {
        let timed = || self.spans.iter().filter(|s| s.is_timed());
        let start = timed().map(|s| s.start_ns).min()?;
        let end = timed().map(|s| s.end_ns.max(s.start_ns)).max()?;
        Some((start, end))
    }

    fn extra(&self, s: &LightSpan) -> Option<&'a Extra> {
        let i = (s.extra as usize).checked_sub(1)?;
        self.extras?.0.get(i)
    }

    /// A view of spans owned elsewhere (see [`Slabs::move_out`]).
    pub fn of(spans: &'a [LightSpan], extras: Option<&'a Extras>) -> Self {
        Self { spans, extras }
    }

    /// The trace, with each span's attributes, events and links left out (`Span::slim`).
    pub fn to_trace(&self, id: crate::model::TraceId, names: &Names) -> Trace {
        let spans = self
            .spans
            .iter()
            .map(|s| {
                let extra = self.extra(s);
                Span {
                    trace_id: id,
                    span_id: s.span_id,
                    parent: s.parent,
                    operation: names.operations[s.operation as usize].clone(),
                    start_ns: s.start_ns,
                    end_ns: s.end_ns,
                    kind: s.kind,
                    status: Status {
                        code: s.status,
                        message: extra.and_then(|e| e.message.clone()),
                    },
                    attributes: Default::default(),
                    resource: names.resources[s.resource as usize].clone(),
                    scope: None,
                    events: Default::default(),
                    links: Default::default(),
                    trace_state: extra.and_then(|e| e.trace_state.clone()),
                }
            })
            .collect();
        Trace { id, spans }
    }
}

/// The operation names and resources of a whole capture, numbered.
#[derive(Default)]
pub struct Names {
    operations: Vec<Arc<str>>,
    operation_index: HashMap<Arc<str>, u32>,
    resources: Vec<Arc<Resource>>,
    /// Resources by service name, compared whole within a service.
    resource_index: HashMap<Arc<str>, Vec<u32>>,
}

impl Names {
    fn operation(&mut self, name: &Arc<str>) -> u32 {
        if let Some(&i) = self.operation_index.get(name) {
            return i;
        }
        let i = self.operations.len() as u32;
        self.operations.push(name.clone());
        self.operation_index.insert(name.clone(), i);
        i
    }

    fn resource(&mut self, r: &Arc<Resource>) -> u32 {
        let same = self.resource_index.entry(r.service.clone()).or_default();
        if let Some(&i) = same
            .iter()
            .find(|&&i| self.resources[i as usize].as_ref() == r.as_ref())
        {
            return i;
        }
        let i = self.resources.len() as u32;
        self.resources.push(r.clone());
        same.push(i);
        i
    }
}

/// The numbers one part of the input uses for its operations and resources, looked up once per
/// distinct name (by pointer: a part shares its names) under the capture's lock.
#[derive(Default)]
pub struct PartNames {
    operations: HashMap<usize, u32>,
    resources: HashMap<usize, u32>,
}

fn address<T: ?Sized>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a).cast::<u8>() as usize
}

impl PartNames {
    /// Numbers every operation and resource of `traces` in `names`.
    pub fn of(traces: &[Trace], names: &mut Names) -> Self {
        let mut part = Self::default();
        for s in traces.iter().flat_map(|t| &t.spans) {
            part.operations
                .entry(address(&s.operation))
                .or_insert_with(|| names.operation(&s.operation));
            part.resources
                .entry(address(&s.resource))
                .or_insert_with(|| names.resource(&s.resource));
        }
        part
    }

    /// Appends `trace`'s spans, compact, to `spans` (its names must have been numbered by
    /// [`PartNames::of`]); returns where they start, how many, and their extras.
    pub fn lighten(
        &self,
        trace: &Trace,
        spans: &mut Vec<LightSpan>,
    ) -> (u32, u32, Option<Box<Extras>>) {
        let start = spans.len() as u32;
        let mut extras = Vec::new();
        for s in &trace.spans {
            let trace_state = s.recorded_trace_state().map(Box::from);
            let extra = if s.status.message.is_some() || trace_state.is_some() {
                extras.push(Extra {
                    message: s.status.message.clone(),
                    trace_state,
                });
                extras.len() as u32
            } else {
                0
            };
            spans.push(LightSpan {
                span_id: s.span_id,
                parent: s.parent,
                start_ns: s.start_ns,
                end_ns: s.end_ns,
                operation: self.operations[&address(&s.operation)],
                resource: self.resources[&address(&s.resource)],
                kind: s.kind,
                status: s.status.code,
                extra,
            });
        }
        let len = spans.len() as u32 - start;
        (
            start,
            len,
            (!extras.is_empty()).then(|| Box::new(Extras(extras))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_light_span_is_small() {
        assert!(std::mem::size_of::<LightSpan>() <= 48);
        assert!(std::mem::size_of::<LightTrace>() <= 24);
    }
}
