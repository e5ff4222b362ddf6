//! The spans' own attributes as the spill keeps them beside each trace: a small binary record
//! per part of a trace, so that the suspects can read back the attributes of a few hundred
//! thousand calls without parsing their traces' JSON again.
//!
//! Layout (little-endian): span count (u32), then per span its id (8 bytes), start and end (i64),
//! service and operation (texts), attribute count (u32) and the attributes; a text is a u32 length and UTF-8
//! bytes; a value is a tag byte and its payload (nested arrays and maps as counts and values).

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{AttrValue, Attribute, SpanId, Trace};

/// Appends the record of `trace`'s spans' attributes to `out`.
pub fn encode(trace: &Trace, out: &mut Vec<u8>) {
    put_len(out, trace.spans.len());
    for s in &trace.spans {
        out.extend_from_slice(&s.span_id.0);
        out.extend_from_slice(&s.start_ns.to_le_bytes());
        out.extend_from_slice(&s.end_ns.to_le_bytes());
        put_text(out, s.service());
        put_text(out, &s.operation);
        put_attributes(out, &s.attributes);
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
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
#[error("a spilled attribute record is damaged at byte {0}")]
pub struct Damaged(usize);

/// Reads the spans of a record written by [`encode`] for which `wanted(service, operation)`,
/// sharing repeated keys and services through `names`.
pub fn decode(
    bytes: &[u8],
    names: &mut HashMap<Box<str>, Arc<str>>,
    wanted: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<SpanRecord>, Damaged> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.len()?;
    let mut spans = Vec::with_capacity(n.min(bytes.len() / 28));
    for _ in 0..n {
        let span_id = SpanId(r.array()?);
        let start_ns = i64::from_le_bytes(r.array()?);
        let end_ns = i64::from_le_bytes(r.array()?);
        let service = r.name(names)?;
        let operation = r.name(names)?;
        let attributes = r.attributes(names, 0)?;
        if !wanted(&service, &operation) {
            continue;
        }
        spans.push(SpanRecord {
            span_id,
            start_ns,
            end_ns,
            service,
            attributes,
        });
    }
    Ok(spans)
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

    fn name(&mut self, names: &mut HashMap<Box<str>, Arc<str>>) -> Result<Arc<str>, Damaged> {
        let s = self.text()?;
        if let Some(a) = names.get(s) {
            return Ok(a.clone());
        }
        let a: Arc<str> = Arc::from(s);
        names.insert(Box::from(s), a.clone());
        Ok(a)
    }

    fn attributes(
        &mut self,
        names: &mut HashMap<Box<str>, Arc<str>>,
        depth: usize,
    ) -> Result<Vec<Attribute>, Damaged> {
        let n = self.len()?;
        let mut attrs = Vec::with_capacity(n.min(self.bytes.len() - self.at));
        for _ in 0..n {
            let key = self.name(names)?;
            let value = self.value(names, depth)?;
            attrs.push(Attribute { key, value });
        }
        Ok(attrs)
    }

    fn value(
        &mut self,
        names: &mut HashMap<Box<str>, Arc<str>>,
        depth: usize,
    ) -> Result<AttrValue, Damaged> {
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
    use crate::model::Span;
    use crate::model::{Resource, SpanKind, Status, TraceId};

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
        encode(&trace, &mut bytes);
        let back = decode(&bytes, &mut HashMap::new(), &|_, _| true).unwrap();
        assert_eq!(back.len(), 1);
        assert!(is_span(&back[0], &span));
        assert_eq!(back[0].attributes, attributes);
        let none = decode(&bytes, &mut HashMap::new(), &|_, op| op != "op").unwrap();
        assert!(none.is_empty());
        // A cut record is an error, not a panic or a short answer.
        for cut in [1, 10, bytes.len() - 1] {
            assert!(
                decode(&bytes[..cut], &mut HashMap::new(), &|_, _| true).is_err(),
                "{cut}"
            );
        }
    }
}
