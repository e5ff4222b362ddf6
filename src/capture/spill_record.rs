//! How the spill keeps each part of a trace: one binary record, written as the part is read and
//! read back only for what needs it. The suspects read the first section (the spans' own
//! attributes) of a few hundred thousand calls; the bundle reads the whole record of the traces
//! it keeps, and only then writes them as OTLP and Jaeger JSON, so that the traces a capture
//! leaves out (two thirds of them at a million spans) are never turned into JSON at all.
//!
//! Layout (little-endian). A text is a u32 length and UTF-8 bytes; an optional text is a byte
//! (0: none, 1: some) and then the text; a value is a tag byte and its payload (nested arrays and
//! maps as counts and values).
//! - Attributes section: span count (u32), then per span its id (8 bytes), start and end (i64),
//!   service and operation (texts), attribute count (u32) and the attributes.
//! - The rest: the trace id (16 bytes); the resources (count, then each one's service and
//!   attributes) and the scopes (count, then name, version, attributes) its spans share; then per
//!   span, in the same order: parent (a byte, then 8 bytes when there is one), kind and status
//!   code (a byte each), status message (optional text), resource and scope numbers (u32;
//!   u32::MAX for no scope), events (count, then time, name, attributes), links (count, then
//!   trace id, span id, attributes) and trace state (optional text).
//!
//! Which spans share one resource or scope is kept (by number), because the OTLP and Jaeger
//! writers group spans by the resource they share.

use foldhash::HashMap;
use std::sync::Arc;

use crate::model::{
    AttrValue, Attribute, Event, Link, Resource, Scope, Span, SpanId, SpanKind, Status, StatusCode,
    Trace, TraceId,
};

/// Appends the record of `trace` to `out`; returns the length of its attributes section (what
/// [`decode`] reads) and of the rest.
pub fn encode(trace: &Trace, out: &mut Vec<u8>) -> (usize, usize) {
    let start = out.len();
    put_len(out, trace.spans.len());
    for s in &trace.spans {
        out.extend_from_slice(&s.span_id.0);
        out.extend_from_slice(&s.start_ns.to_le_bytes());
        out.extend_from_slice(&s.end_ns.to_le_bytes());
        put_text(out, s.service());
        put_text(out, &s.operation);
        put_attributes(out, &s.attributes);
    }
    let attrs = out.len() - start;
    out.extend_from_slice(&trace.id.0);
    // Shared resources and scopes are numbered in the order spans first point at them.
    let resources = shared(trace.spans.iter().map(|s| Some(&s.resource)));
    let scopes = shared(trace.spans.iter().map(|s| s.scope.as_ref()));
    put_len(out, resources.table.len());
    for r in &resources.table {
        put_text(out, &r.service);
        put_attributes(out, &r.attributes);
    }
    put_len(out, scopes.table.len());
    for s in &scopes.table {
        put_text(out, &s.name);
        put_text(out, &s.version);
        put_attributes(out, &s.attributes);
    }
    for (i, s) in trace.spans.iter().enumerate() {
        match s.parent {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.0);
            }
            None => out.push(0),
        }
        out.push(s.kind.otlp_number());
        out.push(s.status.code.otlp_number());
        put_optional_text(out, s.status.message.as_deref());
        put_len(out, resources.of_span[i] as usize);
        put_len(out, scopes.of_span[i] as usize);
        put_len(out, s.events.len());
        for e in &s.events {
            out.extend_from_slice(&e.time_ns.to_le_bytes());
            put_text(out, &e.name);
            put_attributes(out, &e.attributes);
        }
        put_len(out, s.links.len());
        for l in &s.links {
            out.extend_from_slice(&l.trace_id.0);
            out.extend_from_slice(&l.span_id.0);
            put_attributes(out, &l.attributes);
        }
        put_optional_text(out, s.trace_state.as_deref());
    }
    (attrs, out.len() - start - attrs)
}

/// The distinct shared values spans point at, in first-use order, and each span's number in
/// that table (u32::MAX for none).
struct Shared<'a, T> {
    table: Vec<&'a Arc<T>>,
    of_span: Vec<u32>,
}

fn shared<'a, T>(each: impl ExactSizeIterator<Item = Option<&'a Arc<T>>>) -> Shared<'a, T> {
    let mut table: Vec<&Arc<T>> = Vec::new();
    // Most traces share a handful; a hostile one with thousands is looked up by address.
    let mut by_address: foldhash::HashMap<*const T, u32> = Default::default();
    let mut of_span = Vec::with_capacity(each.len());
    for v in each {
        let Some(v) = v else {
            of_span.push(u32::MAX);
            continue;
        };
        let found = if table.len() <= 8 {
            table
                .iter()
                .position(|t| Arc::ptr_eq(t, v))
                .map(|i| i as u32)
        } else {
            by_address.get(&Arc::as_ptr(v)).copied()
        };
        let n = found.unwrap_or_else(|| {
            let n = table.len() as u32;
            table.push(v);
            if table.len() == 9 {
                by_address = table
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (Arc::as_ptr(t), i as u32))
                    .collect();
            } else if table.len() > 9 {
                by_address.insert(Arc::as_ptr(v), n);
            }
            n
        });
        of_span.push(n);
    }
    Shared { table, of_span }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_optional_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_text(out, s);
        }
        None => out.push(0),
    }
}

fn put_attributes(out: &mut Vec<u8>, attrs: &[Attribute]) {
    put_len(out, attrs.len());
    for a in attrs {
        put_text(out, &a.key);
        put_value(out, &a.value);
    }
}

fn put_value(out: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => {
            out.push(0);
            put_text(out, s);
        }
        AttrValue::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
        AttrValue::Int(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        AttrValue::Double(d) => {
            out.push(3);
            out.extend_from_slice(&d.to_bits().to_le_bytes());
        }
        AttrValue::Bytes(b) => {
            out.push(4);
            put_len(out, b.len());
            out.extend_from_slice(b);
        }
        AttrValue::Array(items) => {
            out.push(5);
            put_len(out, items.len());
            items.iter().for_each(|i| put_value(out, i));
        }
        AttrValue::Map(attrs) => {
            out.push(6);
            put_attributes(out, attrs);
        }
    }
}

/// One span's attributes, read back.
pub struct SpanRecord {
    pub span_id: SpanId,
    pub start_ns: i64,
    pub end_ns: i64,
    pub service: Arc<str>,
    pub attributes: Vec<Attribute>,
}

/// A record that does not decode: the spill file was damaged under us.
#[derive(Debug, thiserror::Error)]
#[error("a spilled trace record is damaged at byte {0}")]
pub struct Damaged(usize);

/// Names (keys, services, operations) read back over many records, each kept once.
#[derive(Default)]
pub struct Names(Option<HashMap<Box<str>, Arc<str>>>);

impl Names {
    /// Names shared by every record read with them.
    pub fn shared() -> Self {
        Self(Some(HashMap::default()))
    }
}

/// Reads the spans of a record's attributes section for which `wanted(service, operation)`,
/// sharing repeated keys and services through `names`.
pub fn decode(
    bytes: &[u8],
    names: &mut Names,
    wanted: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<SpanRecord>, Damaged> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.len()?;
    let mut spans = Vec::with_capacity(n.min(bytes.len() / 28));
    for _ in 0..n {
        let (span, operation) = r.span_record(names)?;
        if wanted(&span.service, &operation) {
            spans.push(span);
        }
    }
    Ok(spans)
}

/// Reads a whole record back into the trace [`encode`] was given.
pub fn decode_trace(bytes: &[u8]) -> Result<Trace, Damaged> {
    thread_local! {
        // Each thread writing trace files reads thousands of traces naming the same keys.
        static NAMES: std::cell::RefCell<Names> = std::cell::RefCell::new(Names::shared());
    }
    NAMES.with_borrow_mut(|names| {
        // Names that never repeat (hostile input, unique keys) are not kept for ever.
        if names.0.as_ref().is_some_and(|n| n.len() > MAX_NAMES) {
            *names = Names::shared();
        }
        decode_trace_with(bytes, names)
    })
}

/// The most names [`decode_trace`] keeps per thread.
const MAX_NAMES: usize = 1 << 16;

fn decode_trace_with(bytes: &[u8], names: &mut Names) -> Result<Trace, Damaged> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.len()?;
    // What the attributes section holds of each span; the rest follows once the trace id and
    // the shared resources are read.
    let mut firsts = Vec::with_capacity(n.min(bytes.len() / 28));
    for _ in 0..n {
        firsts.push(r.span_record(names)?);
    }
    let trace_id = TraceId(r.array()?);
    let mut resources = Vec::new();
    for _ in 0..r.len()? {
        let service = r.name(names)?;
        let attributes = r.attributes(names, 0)?;
        resources.push(Arc::new(Resource {
            service,
            attributes,
        }));
    }
    let mut scopes = Vec::new();
    for _ in 0..r.len()? {
        let name = r.text()?.into();
        let version = r.text()?.into();
        let attributes = r.attributes(names, 0)?;
        scopes.push(Arc::new(Scope {
            name,
            version,
            attributes,
        }));
    }
    let mut spans = Vec::with_capacity(firsts.len());
    for (first, operation) in firsts {
        let SpanRecord {
            span_id,
            start_ns,
            end_ns,
            attributes,
            ..
        } = first;
        let parent = match r.array::<1>()?[0] {
            0 => None,
            _ => Some(SpanId(r.array()?)),
        };
        let kind = SpanKind::from_otlp_number(r.array::<1>()?[0].into());
        let at = r.at;
        let code = match r.array::<1>()?[0] {
            0 => StatusCode::Unset,
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => return Err(Damaged(at)),
        };
        let message = r.optional_text()?.map(Box::from);
        let at = r.at;
        let resource = resources.get(r.len()?).ok_or(Damaged(at))?.clone();
        let at = r.at;
        let scope = match u32::from_le_bytes(r.array()?) {
            u32::MAX => None,
            n => Some(scopes.get(n as usize).ok_or(Damaged(at))?.clone()),
        };
        let mut events = Vec::new();
        for _ in 0..r.len()? {
            let time_ns = i64::from_le_bytes(r.array()?);
            let name = r.text()?.into();
            let attributes = r.attributes(names, 0)?;
            events.push(Event {
                time_ns,
                name,
                attributes,
            });
        }
        let mut links = Vec::new();
        for _ in 0..r.len()? {
            let trace_id = TraceId(r.array()?);
            let span_id = SpanId(r.array()?);
            let attributes = r.attributes(names, 0)?;
            links.push(Link {
                trace_id,
                span_id,
                attributes,
            });
        }
        let trace_state = r.optional_text()?.map(Box::from);
        spans.push(Span {
            trace_id,
            span_id,
            parent,
            operation,
            start_ns,
            end_ns,
            kind,
            status: Status { code, message },
            attributes: attributes.into(),
            resource,
            scope,
            events: events.into(),
            links: links.into(),
            trace_state,
        });
    }
    if r.at != bytes.len() {
        return Err(Damaged(r.at));
    }
    Ok(Trace {
        id: trace_id,
        spans,
    })
}

/// Nesting deeper than this is not something we wrote.
const MAX_DEPTH: usize = 64;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Damaged> {
        let end = self.at.checked_add(n).ok_or(Damaged(self.at))?;
        let s = self.bytes.get(self.at..end).ok_or(Damaged(self.at))?;
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Damaged> {
        let at = self.at;
        self.take(N)?.try_into().map_err(|_| Damaged(at))
    }

    fn len(&mut self) -> Result<usize, Damaged> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn text(&mut self) -> Result<&str, Damaged> {
        let n = self.len()?;
        let at = self.at;
        std::str::from_utf8(self.take(n)?).map_err(|_| Damaged(at))
    }

    /// One span of the attributes section, and its operation.
    fn span_record(&mut self, names: &mut Names) -> Result<(SpanRecord, Arc<str>), Damaged> {
        let span_id = SpanId(self.array()?);
        let start_ns = i64::from_le_bytes(self.array()?);
        let end_ns = i64::from_le_bytes(self.array()?);
        let service = self.name(names)?;
        let operation = self.name(names)?;
        let attributes = self.attributes(names, 0)?;
        let span = SpanRecord {
            span_id,
            start_ns,
            end_ns,
            service,
            attributes,
        };
        Ok((span, operation))
    }

    fn optional_text(&mut self) -> Result<Option<&str>, Damaged> {
        let at = self.at;
        match self.array::<1>()?[0] {
            0 => Ok(None),
            1 => self.text().map(Some),
            _ => Err(Damaged(at)),
        }
    }

    fn name(&mut self, names: &mut Names) -> Result<Arc<str>, Damaged> {
        let s = self.text()?;
        let Some(names) = &mut names.0 else {
            return Ok(Arc::from(s));
        };
        if let Some(a) = names.get(s) {
            return Ok(a.clone());
        }
        let a: Arc<str> = Arc::from(s);
        names.insert(Box::from(s), a.clone());
        Ok(a)
    }

    fn attributes(&mut self, names: &mut Names, depth: usize) -> Result<Vec<Attribute>, Damaged> {
        let n = self.len()?;
        let mut attrs = Vec::with_capacity(n.min(self.bytes.len() - self.at));
        for _ in 0..n {
            let key = self.name(names)?;
            let value = self.value(names, depth)?;
            attrs.push(Attribute { key, value });
        }
        Ok(attrs)
    }

    fn value(&mut self, names: &mut Names, depth: usize) -> Result<AttrValue, Damaged> {
        if depth > MAX_DEPTH {
            return Err(Damaged(self.at));
        }
        let at = self.at;
        let [tag] = self.array()?;
        Ok(match tag {
            0 => AttrValue::Str(self.text()?.into()),
            1 => AttrValue::Bool(self.array::<1>()?[0] != 0),
            2 => AttrValue::Int(i64::from_le_bytes(self.array()?)),
            3 => AttrValue::Double(f64::from_bits(u64::from_le_bytes(self.array()?))),
            4 => {
                let n = self.len()?;
                AttrValue::Bytes(self.take(n)?.into())
            }
            5 => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(self.bytes.len() - self.at));
                for _ in 0..n {
                    items.push(self.value(names, depth + 1)?);
                }
                AttrValue::Array(items)
            }
            6 => AttrValue::Map(self.attributes(names, depth + 1)?),
            _ => return Err(Damaged(at)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::List;

    /// Whether `record` is the span `s` (what tells two spans of one trace apart).
    fn is_span(record: &SpanRecord, s: &Span) -> bool {
        record.span_id == s.span_id
            && record.start_ns == s.start_ns
            && record.end_ns == s.end_ns
            && *record.service == **s.service()
    }

    #[test]
    fn every_kind_of_value_reads_back_as_written() {
        let attr = |k: &str, v: AttrValue| Attribute {
            key: k.into(),
            value: v,
        };
        let attributes = vec![
            attr("s", AttrValue::Str("ünïcode".into())),
            attr("b", AttrValue::Bool(true)),
            attr("i", AttrValue::Int(-42)),
            attr("d", AttrValue::Double(0.1)),
            attr("x", AttrValue::Bytes(vec![0, 255].into())),
            attr(
                "a",
                AttrValue::Array(vec![AttrValue::Int(1), AttrValue::Str("two".into())]),
            ),
            attr(
                "m",
                AttrValue::Map(vec![attr("inner", AttrValue::Bool(false))]),
            ),
        ];
        let span = Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent: None,
            operation: "op".into(),
            start_ns: 10,
            end_ns: 20,
            kind: SpanKind::Server,
            status: Status::default(),
            attributes: attributes.clone().into(),
            resource: Arc::new(Resource {
                service: "svc".into(),
                attributes: Vec::new(),
            }),
            scope: None,
            events: Default::default(),
            links: Default::default(),
            trace_state: None,
        };
        let trace = Trace {
            id: span.trace_id,
            spans: vec![span.clone()],
        };
        let mut bytes = Vec::new();
        let (attrs, _) = encode(&trace, &mut bytes);
        bytes.truncate(attrs);
        let back = decode(&bytes, &mut Names::shared(), &|_, _| true).unwrap();
        assert_eq!(back.len(), 1);
        assert!(is_span(&back[0], &span));
        assert_eq!(back[0].attributes, attributes);
        let none = decode(&bytes, &mut Names::shared(), &|_, op| op != "op").unwrap();
        assert!(none.is_empty());
        // A cut record is an error, not a panic or a short answer.
        for cut in [1, 10, bytes.len() - 1] {
            assert!(
                decode(&bytes[..cut], &mut Names::shared(), &|_, _| true).is_err(),
                "{cut}"
            );
        }
    }

    /// Two resources and a scope shared by some spans, every optional part present somewhere.
    fn rich_trace() -> Trace {
        let attr = |k: &str, v: AttrValue| Attribute {
            key: k.into(),
            value: v,
        };
        let front = Arc::new(Resource {
            service: "frontend".into(),
            attributes: vec![attr("service.name", AttrValue::Str("frontend".into()))],
        });
        // Equal to `front` but a resource of its own: the writers must keep them apart.
        let front_again = Arc::new((*front).clone());
        let pay = Arc::new(Resource {
            service: "payment".into(),
            attributes: vec![attr("host", AttrValue::Int(3))],
        });
        let scope = Arc::new(Scope {
            name: "io.opentelemetry.http".into(),
            version: "1.2".into(),
            attributes: vec![attr("x", AttrValue::Bool(true))],
        });
        let id = TraceId([7; 16]);
        let span = |n: u8, resource: &Arc<Resource>| Span {
            trace_id: id,
            span_id: SpanId([n; 8]),
            parent: (n > 1).then_some(SpanId([1; 8])),
            operation: format!("op{n}").into(),
            start_ns: 1_000 * i64::from(n),
            end_ns: 5_000 * i64::from(n),
            kind: SpanKind::from_otlp_number(i64::from(n % 6)),
            status: Status::default(),
            attributes: vec![attr("n", AttrValue::Int(n.into()))].into(),
            resource: resource.clone(),
            scope: None,
            events: Default::default(),
            links: Default::default(),
            trace_state: None,
        };
        let mut spans = vec![span(1, &front), span(2, &pay), span(3, &front_again)];
        spans.push(span(4, &pay));
        spans[1].scope = Some(scope.clone());
        spans[3].scope = Some(scope);
        spans[1].status = Status {
            code: StatusCode::Error,
            message: Some("card declined".into()),
        };
        spans[2].status.code = StatusCode::Ok;
        spans[1].events.push(Event {
            time_ns: 2_500,
            name: "exception".into(),
            attributes: vec![attr("exception.type", AttrValue::Str("Declined".into()))],
        });
        spans[3].links.push(Link {
            trace_id: TraceId([9; 16]),
            span_id: SpanId([8; 8]),
            attributes: Vec::new(),
        });
        spans[0].trace_state = Some("ot=th:8".into());
        spans[0].attributes = List::new();
        Trace { id, spans }
    }

    /// Which spans share a resource (and a scope), as span numbers grouped by address.
    fn sharing(t: &Trace) -> Vec<Vec<usize>> {
        let by = |f: &dyn Fn(&Span) -> usize| {
            (0..t.spans.len())
                .map(|i| {
                    (0..t.spans.len())
                        .filter(|&j| f(&t.spans[j]) == f(&t.spans[i]))
                        .collect()
                })
                .collect::<Vec<Vec<usize>>>()
        };
        let mut out = by(&|s| Arc::as_ptr(&s.resource) as usize);
        out.extend(by(&|s| {
            s.scope.as_ref().map_or(0, |x| Arc::as_ptr(x) as usize)
        }));
        out
    }

    #[test]
    fn a_whole_trace_reads_back_as_written_down_to_which_spans_share_a_resource() {
        let trace = rich_trace();
        let mut bytes = vec![0xAB; 3];
        let (attrs, rest) = encode(&trace, &mut bytes);
        assert_eq!(3 + attrs + rest, bytes.len());
        let record = &bytes[3..];
        let back = decode_trace(record).unwrap();
        assert_eq!(back, trace);
        assert_eq!(sharing(&back), sharing(&trace));
        // Spans 0 and 2 have equal resources that are not one: still two after the round trip.
        assert!(!Arc::ptr_eq(
            &back.spans[0].resource,
            &back.spans[2].resource
        ));
        // The suspects' reader reads the attributes section alone, as before.
        let firsts = decode(&record[..attrs], &mut Names::shared(), &|_, _| true).unwrap();
        assert_eq!(firsts.len(), 4);
        assert_eq!(&*firsts[1].service, "payment");
        // A cut or padded record is an error, not a panic or a short trace.
        for cut in [0, 1, attrs, attrs + 16, record.len() - 1] {
            assert!(decode_trace(&record[..cut]).is_err(), "{cut}");
        }
        let mut padded = record.to_vec();
        padded.push(0);
        assert!(decode_trace(&padded).is_err());
    }
}
