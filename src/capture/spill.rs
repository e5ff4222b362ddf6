//! Traces written out as they are read, so that a large trace file never sits in memory whole.
//!
//! Each part of the input (a batch of JSON Lines, on whichever core parsed it) is redacted and
//! written to a temporary file as one binary record per trace ([`spill_record`]). Only light
//! spans (`Span::slim`: ids, names, times, status) stay in memory for the analysis. The suspects
//! read back the attributes they compare; the bundle reads back the traces it keeps and writes
//! them as OTLP and Jaeger JSON then, so the traces it leaves out are never written as JSON. A
//! trace whose spans came in several parts is read back and merged before it is written, as if
//! it had been read whole.
//!
//! A backend capture writes here too ([`Spill::for_backends`]): each answer's traces are
//! redacted and written as they arrive ([`Spill::store`]), and the capture goes on with light
//! copies of them, so that it holds no more than one answer's whole traces at a time.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use super::light::{self, LightSpan, LightTrace, LightView, Names, PartNames, Slabs};
use super::spill_record::{self, SpanRecord};
use crate::formats::TraceSink;
use crate::model::{Span, SpanId, Trace, TraceId};
use crate::redact::{RedactionReport, Redactor};

/// Where one part's record of a trace lies in the spill file: its attributes section, then the
/// rest.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// The part of the input it came from: the merge order.
    part: u64,
    offset: u64,
    attrs: u32,
    rest: u32,
}

impl Record {
    fn attrs(&self) -> (u64, u32) {
        (self.offset, self.attrs)
    }
    fn whole(&self) -> (u64, u32) {
        // The sum fits: `take` refuses a record of 4 GiB or more.
        (self.offset, self.attrs.saturating_add(self.rest))
    }
}

/// One trace: where its parts lie, and (until the plan sorts them out) its compact spans.
struct Entry {
    id: TraceId,
    /// Where the trace was first seen (part, then position in it): the order traces are
    /// handed to the analysis, as when a file is read whole.
    first_seen: (u64, u32),
    record: Record,
    light: LightTrace,
    /// Further parts, when the trace's spans were spread over the input.
    more: Option<Box<MoreParts>>,
    /// What redaction replaced in it, by rule (most traces: nothing).
    redacted: Option<Box<Redacted>>,
}

type Redacted = std::collections::BTreeMap<String, usize>;

fn add_counts(to: &mut Redacted, from: &Redacted) {
    for (rule, n) in from {
        *to.entry(rule.clone()).or_default() += n;
    }
}

/// The further parts of a trace, behind one thin pointer (most traces are read in one).
struct MoreParts(Vec<(Record, LightTrace)>);

/// Entries in chunks of fixed size: a million traces never need one large block moved.
#[derive(Default)]
struct Entries {
    chunks: Vec<Vec<Entry>>,
    len: usize,
}

const CHUNK: usize = 1 << 16;

impl Entries {
    fn push(&mut self, e: Entry) -> u32 {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let i = self.len;
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(e);
        }
        self.len += 1;
        i as u32
    }

    fn get(&self, i: u32) -> Option<&Entry> {
        let i = i as usize;
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut Entry> {
        let i = i as usize;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }
}

/// Where each trace kept lies, once the plan has sorted the traces out.
#[derive(Default)]
struct Kept {
    /// Traces written in one record (most of them), without an allocation each: at 5M spans
    /// this is made at the capture's peak of memory.
    one: foldhash::HashMap<TraceId, Record>,
    /// Traces written in several (spread over the input, or held by several answers).
    more: foldhash::HashMap<TraceId, Vec<Record>>,
}

/// A trace's records, in the order written.
type Records = smallvec::SmallVec<[Record; 1]>;

impl Kept {
    fn push(&mut self, id: TraceId, record: Record) {
        if let Some(records) = self.more.get_mut(&id) {
            records.push(record);
        } else if let Some(first) = self.one.remove(&id) {
            self.more.insert(id, vec![first, record]);
        } else {
            self.one.insert(id, record);
        }
    }

    fn insert(&mut self, id: TraceId, records: Records) {
        match records.as_slice() {
            [] => {}
            [one] => {
                self.one.insert(id, *one);
            }
            _ => {
                self.more.insert(id, records.into_vec());
            }
        }
    }

    fn get(&self, id: TraceId) -> Records {
        match self.one.get(&id) {
            Some(r) => Records::from_buf([*r]),
            None => self
                .more
                .get(&id)
                .map(|rs| Records::from_slice(rs))
                .unwrap_or_default(),
        }
    }

    fn remove(&mut self, id: TraceId) -> Records {
        match self.one.remove(&id) {
            Some(r) => Records::from_buf([r]),
            None => self
                .more
                .remove(&id)
                .map(Records::from_vec)
                .unwrap_or_default(),
        }
    }
}

#[derive(Default)]
struct State {
    len: u64,
    /// While reading: each trace's entry number.
    index: foldhash::HashMap<TraceId, u32>,
    entries: Entries,
    /// The compact spans of the entries.
    slabs: Slabs,
    names: Names,
    /// What redaction replaced in the traces kept (all of them until [`Spill::keep`]).
    redaction: Redacted,
}

/// Traces a backend returned, as [`Spill::store`] wrote them.
#[derive(Default)]
struct Stored {
    traces: foldhash::HashMap<TraceId, StoredTrace>,
    /// Answers stored: the order of a trace's records.
    parts: u64,
}

/// What was written of one trace a backend returned.
#[derive(Default)]
struct StoredTrace {
    /// Copies written of each span, by its id and what its light copy shows ([`shown`]).
    spans: foldhash::HashMap<(SpanId, u64), u32>,
    /// What redaction replaced in the spans written.
    redacted: Redacted,
}

/// The temporary file of redacted traces, their index, and their compact spans.
pub struct Spill {
    file: File,
    redactor: Redactor,
    /// Written by a backend capture ([`Spill::store`]) rather than by reading files.
    backends: bool,
    stored: Mutex<Stored>,
    /// Inputs begun (each file is one): parts are numbered input first, then line.
    inputs: AtomicU64,
    state: Mutex<State>,
    /// After [`Spill::keep`]: the records of the traces kept, and nothing else. Apart from the
    /// state, so that the threads writing the bundle read it at once.
    kept: RwLock<Kept>,
}

impl Spill {
    /// A spill in the system's temporary directory (`TMPDIR`), removed when dropped; traces are
    /// redacted by `redactor` before they are written.
    pub fn new(redactor: Redactor) -> io::Result<Self> {
        Ok(Self {
            file: tempfile::tempfile()?,
            redactor,
            backends: false,
            stored: Mutex::default(),
            inputs: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            kept: RwLock::default(),
        })
    }

    /// A spill for the answers of backends ([`Spill::store`]), in `TMPDIR` like [`Spill::new`].
    pub fn for_backends(redactor: Redactor) -> io::Result<Self> {
        Ok(Self {
            backends: true,
            ..Self::new(redactor)?
        })
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the spans of `traces` (one backend answer, filtered) that are not written yet,
    /// redacted, and leaves `traces` light (`Span::slim`, no scope: what the analysis of a
    /// streamed file sees) and redacted. A span is written once however many answers hold it
    /// (a trace found by the error search and by the sample): a copy is a new one when what
    /// its light copy shows differs ([`shown`]), and a copy of a trace holding the same span
    /// several times has as many written. What redaction replaced is counted with the spans
    /// written. When the answer cannot be written, nothing of it counts as written.
    pub fn store(&self, traces: &mut [Trace]) -> io::Result<()> {
        // Each trace split in the spans not written yet and the others, and where each goes.
        let mut fresh: Vec<Trace> = Vec::with_capacity(traces.len());
        let mut known: Vec<Trace> = Vec::with_capacity(traces.len());
        let mut layouts: Vec<Vec<bool>> = Vec::with_capacity(traces.len());
        // The copies counted as written, with how many there were before.
        let mut marked: Vec<(TraceId, (SpanId, u64), u32)> = Vec::new();
        let part = {
            let mut stored = self.stored();
            let part = stored.parts;
            stored.parts += 1;
            let mut here: foldhash::HashMap<(SpanId, u64), u32> = foldhash::HashMap::default();
            for t in traces.iter_mut() {
                let entry = stored.traces.entry(t.id).or_default();
                here.clear();
                let (mut new, mut old) = (Vec::new(), Vec::new());
                let mut layout = Vec::with_capacity(t.spans.len());
                for span in std::mem::take(&mut t.spans) {
                    let key = shown(&span);
                    let copy = here.entry(key).or_default();
                    *copy += 1;
                    let written = entry.spans.entry(key).or_default();
                    let is_new = *copy > *written;
                    if is_new {
                        marked.push((t.id, key, *written));
                        *written = *copy;
                        new.push(span);
                    } else {
                        old.push(span);
                    }
                    layout.push(is_new);
                }
                fresh.push(Trace {
                    id: t.id,
                    spans: new,
                });
                known.push(Trace {
                    id: t.id,
                    spans: old,
                });
                layouts.push(layout);
            }
            part
        };
        let counts = self.redactor.apply_counted(fresh.iter_mut());
        // Spans written before were counted then: these are redacted only to be shown.
        self.redactor.apply_counted(known.iter_mut());
        if let Err(e) = self.write_part(part, &fresh) {
            let mut stored = self.stored();
            for (id, key, before) in marked.into_iter().rev() {
                if let Some(n) = stored
                    .traces
                    .get_mut(&id)
                    .and_then(|t| t.spans.get_mut(&key))
                {
                    *n = before;
                }
            }
            return Err(e);
        }
        {
            let mut stored = self.stored();
            for (t, c) in fresh.iter().zip(counts).filter(|(_, c)| !c.is_empty()) {
                if let Some(entry) = stored.traces.get_mut(&t.id) {
                    add_counts(&mut entry.redacted, &c);
                }
            }
        }
        for ((t, (new, old)), layout) in traces
            .iter_mut()
            .zip(fresh.into_iter().zip(known))
            .zip(layouts)
        {
            let (mut new, mut old) = (new.spans.into_iter(), old.spans.into_iter());
            t.spans = layout
                .into_iter()
                .filter_map(|is_new| if is_new { new.next() } else { old.next() })
                .map(|mut s| {
                    s.slim();
                    s.scope = None;
                    s
                })
                .collect();
        }
        Ok(())
    }

    /// Writes the spans of `traces` as one part, and records where each trace's lie.
    fn write_part(&self, part: u64, traces: &[Trace]) -> io::Result<()> {
        let written: Vec<&Trace> = traces.iter().filter(|t| !t.spans.is_empty()).collect();
        let mut buf = Vec::new();
        let records = encode_part(part, written.iter().copied(), &mut buf)?;
        let base = {
            let mut state = self.state();
            let base = state.len;
            state.len += buf.len() as u64;
            base
        };
        self.file.write_all_at(&buf, base)?;
        let mut kept = self.kept.write().unwrap_or_else(|p| p.into_inner());
        for (t, mut record) in written.into_iter().zip(records) {
            record.offset += base;
            kept.push(t.id, record);
        }
        Ok(())
    }

    /// Once a backend capture has chosen the traces it keeps: totals what redaction replaced
    /// in them, and forgets the others' records (their bytes stay in the file until it goes).
    pub fn settle(&self, kept: impl Iterator<Item = TraceId>) {
        let stored = std::mem::take(&mut *self.stored());
        let mut total = Redacted::new();
        let mut records = Kept::default();
        let mut all = std::mem::take(&mut *self.kept.write().unwrap_or_else(|p| p.into_inner()));
        for id in kept {
            if let Some(t) = stored.traces.get(&id) {
                add_counts(&mut total, &t.redacted);
            }
            records.insert(id, all.remove(id));
        }
        drop(all);
        *self.kept.write().unwrap_or_else(|p| p.into_inner()) = records;
        self.state().redaction = total;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the start of another input (file): its parts come after the previous one's.
    pub fn next_input(&self) {
        self.inputs.fetch_add(1, Ordering::SeqCst);
    }

    /// What redaction did to every trace written so far.
    pub fn redaction(&self) -> RedactionReport {
        RedactionReport {
            enabled: self.redactor.enabled(),
            rules: self.state().redaction.clone(),
        }
    }

    /// Merges the parts of each trace read in several, in input order (once, when reading is
    /// done); returns how many spans the merging found twice (and dropped).
    pub fn merge_parts(&self) -> usize {
        let mut state = self.state();
        let State {
            entries,
            names,
            slabs,
            ..
        } = &mut *state;
        let mut duplicates = 0;
        for chunk in &mut entries.chunks {
            for e in chunk.iter_mut().filter(|e| e.more.is_some()) {
                let mut parts: Vec<(u64, LightTrace)> = vec![(e.record.part, e.light.clone())];
                if let Some(more) = &e.more {
                    parts.extend(more.0.iter().map(|(r, l)| (r.part, l.clone())));
                }
                parts.sort_by_key(|(p, _)| *p);
                let parts: Vec<LightTrace> = parts.into_iter().map(|(_, l)| l).collect();
                let (merged, dropped) = slabs.merge(&parts, names);
                duplicates += dropped;
                e.light = merged;
            }
        }
        duplicates
    }

    /// Earliest start and latest end of the spans that have a time at all, over every trace.
    pub fn span_range(&self) -> Option<(i64, i64)> {
        let state = self.state();
        state
            .entries
            .chunks
            .iter()
            .flatten()
            .filter_map(|e| state.slabs.view(&e.light).timed_range())
            .reduce(|(a, b), (s, e)| (a.min(s), b.max(e)))
    }

    /// Shows every trace to `visit` (its number in the spill, its id, its compact spans), in
    /// the order first seen.
    pub fn visit(&self, mut visit: impl FnMut(u32, TraceId, LightView<'_>)) {
        let state = self.state();
        let (entries, slabs) = (&state.entries, &state.slabs);
        // Numbers, not (first seen, number) pairs: this runs at the capture's peak of memory.
        let mut order: Vec<u32> = (0..entries.len as u32).collect();
        order.sort_unstable_by_key(|&i| entries.get(i).map(|e| e.first_seen));
        for i in order {
            if let Some(e) = entries.get(i) {
                visit(i, e.id, slabs.view(&e.light));
            }
        }
    }

    /// Keeps the traces `keep` (by their numbers from [`Spill::visit`]) and makes them whole
    /// again (their spans, not their attributes), in the order given; forgets the compact
    /// spans of every trace, and everything of those not kept.
    pub fn keep<P: Send>(&self, keep: Vec<(u32, P)>) -> Vec<(Trace, P)> {
        let mut state = self.state();
        let State {
            index,
            entries,
            slabs,
            names,
            redaction,
            ..
        } = &mut *state;
        let began = std::time::Instant::now();
        let mut kept = Kept::default();
        kept.one.reserve(keep.len());
        redaction.clear();
        // Where each trace goes in `keep`, by its number (u32::MAX: not kept).
        let mut at = vec![u32::MAX; entries.len];
        for (k, (i, _)) in keep.iter().enumerate() {
            if let Some(slot) = at.get_mut(*i as usize) {
                *slot = k as u32;
            }
        }
        // The kept traces' compact spans are copied out first, into one block, so that
        // freeing the slabs frees whole pages the system can take back.
        let total: usize = keep
            .iter()
            .filter_map(|(i, _)| entries.get(*i))
            .map(|e| e.light.span_count())
            .sum();
        let mut copied: Vec<LightSpan> = Vec::with_capacity(total);
        // Per trace kept: its id, where its spans start in `copied`, how many, its extras.
        type Copied = (TraceId, usize, usize, Option<Box<light::Extras>>);
        let mut lights: Vec<Option<Copied>> = Vec::new();
        lights.resize_with(keep.len(), || None);
        let mut number = 0usize;
        for chunk in std::mem::take(&mut entries.chunks) {
            for e in chunk {
                let k = at[number];
                number += 1;
                if k == u32::MAX {
                    continue;
                }
                let mut records = Records::from_buf([e.record]);
                if let Some(more) = e.more {
                    records.extend(more.0.into_iter().map(|(r, _)| r));
                }
                kept.insert(e.id, records);
                if let Some(r) = &e.redacted {
                    add_counts(redaction, r);
                }
                let start = copied.len();
                let extras = slabs.move_out(e.light, &mut copied);
                lights[k as usize] = Some((e.id, start, copied.len() - start, extras));
            }
        }
        let copied_at = began.elapsed();
        drop(at);
        *entries = Entries::default();
        *index = Default::default();
        *slabs = Slabs::default();
        *self.kept.write().unwrap_or_else(|p| p.into_inner()) = kept;
        let freed_at = began.elapsed();
        release_freed_memory();
        let trimmed_at = began.elapsed();
        // The kept traces are made on every core, in runs that keep their order.
        let mut rest: Vec<((u32, P), Option<Copied>)> = keep.into_iter().zip(lights).collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let run = rest.len().div_ceil(cores).max(4096);
        let mut runs = Vec::new();
        while rest.len() > run {
            let tail = rest.split_off(run);
            runs.push(std::mem::replace(&mut rest, tail));
        }
        runs.push(rest);
        let (copied, names) = (&copied, &*names);
        let make = move |run: Vec<((u32, P), Option<Copied>)>| -> Vec<(Trace, P)> {
            run.into_iter()
                .filter_map(|((_, p), light)| {
                    let (id, start, len, extras) = light?;
                    let view = LightView::of(copied.get(start..start + len)?, extras.as_deref());
                    Some((view.to_trace(id, names), p))
                })
                .collect()
        };
        std::thread::scope(|scope| {
            let mut runs = runs.into_iter();
            let first = runs.next().unwrap_or_default();
            let others: Vec<_> = runs.map(|r| scope.spawn(move || make(r))).collect();
            let mut traces = make(first);
            for other in others {
                match other.join() {
                    Ok(more) => traces.extend(more),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            tracing::debug!(
                copied_ms = copied_at.as_millis() as u64,
                freed_ms = freed_at.as_millis() as u64,
                trimmed_ms = trimmed_at.as_millis() as u64,
                made_ms = began.elapsed().as_millis() as u64,
                "kept traces made whole"
            );
            traces
        })
    }

    fn records(&self, id: TraceId) -> Records {
        self.kept.read().unwrap_or_else(|p| p.into_inner()).get(id)
    }

    fn read(&self, at: (u64, u32)) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(at, &mut buf)?;
        Ok(buf)
    }

    /// Reads into `buf`, replacing what it held (one buffer for many reads: no fresh pages
    /// for each).
    fn read_into(&self, (offset, len): (u64, u32), buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        buf.resize(len as usize, 0);
        self.file.read_exact_at(buf, offset)
    }

    /// The whole trace of which `light` is the light copy, or `None` when it was never written
    /// here. From a file, [`Spill::load`]; from backends, the spans written for it, each in the
    /// place of its light copy (the copies of a trace that several answers held were merged
    /// light, as whole ones were before).
    pub fn whole(&self, light: &Trace) -> io::Result<Option<Trace>> {
        if !self.backends {
            return self.load(light.id);
        }
        let id = light.id;
        let mut records = self.records(id);
        if records.is_empty() {
            if light.spans.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::other(format!(
                "trace {id} was never written to the capture's temporary file"
            )));
        }
        records.sort_by_key(|r| (r.part, r.offset));
        let mut written: Vec<Option<Span>> = Vec::new();
        for r in records {
            written.extend(self.decode(id, r)?.spans.into_iter().map(Some));
        }
        // Where each span's copies are, first written first, by what their light copies show
        // (written and light copies were both redacted).
        let mut at: foldhash::HashMap<(SpanId, u64), VecDeque<usize>> =
            foldhash::HashMap::default();
        for (i, s) in written.iter().enumerate() {
            if let Some(s) = s {
                at.entry(shown(s)).or_default().push_back(i);
            }
        }
        let mut spans = Vec::with_capacity(light.spans.len());
        for s in &light.spans {
            let found = at
                .get_mut(&shown(s))
                .and_then(VecDeque::pop_front)
                .and_then(|i| written.get_mut(i).and_then(Option::take));
            let Some(whole) = found else {
                return Err(io::Error::other(format!(
                    "span {} of {} in trace {id} was never written to the capture's temporary file",
                    s.span_id,
                    s.service()
                )));
            };
            spans.push(whole);
        }
        Ok(Some(Trace { id, spans }))
    }

    /// The whole trace as it was read (its parts merged, in input order, repeated spans
    /// dropped as reading the input whole drops them), or `None` when it was never written here.
    pub fn load(&self, id: TraceId) -> io::Result<Option<Trace>> {
        let mut records = self.records(id);
        records.sort_by_key(|r| r.part);
        let joined = records.len() > 1;
        let mut whole: Option<Trace> = None;
        for r in records {
            let part = self.decode(id, r)?;
            match &mut whole {
                None => whole = Some(part),
                Some(w) => w.spans.extend(part.spans),
            }
        }
        // Each part lost its repeated spans before it was written: only joining makes more.
        if let Some(w) = whole.as_mut().filter(|_| joined) {
            crate::formats::dedupe_spans(w);
        }
        Ok(whole)
    }

    fn decode(&self, id: TraceId, r: Record) -> io::Result<Trace> {
        let bytes = self.read(r.whole())?;
        spill_record::decode_trace(&bytes).map_err(|e| {
            io::Error::other(format!(
                "the spilled record of trace {id} cannot be read: {e}"
            ))
        })
    }

    /// The whole trace of which `trace` is the light copy, read back, or `trace` itself when it
    /// was never written here.
    pub fn whole_or<'a>(&self, trace: &'a Trace) -> io::Result<Cow<'a, Trace>> {
        Ok(self.whole(trace)?.map_or(Cow::Borrowed(trace), Cow::Owned))
    }

    /// The attributes of the spans of the traces `ids` for which `wanted(service, operation)`,
    /// read in the order they lie in the file.
    pub fn attributes(
        &self,
        ids: &[TraceId],
        wanted: &dyn Fn(&str, &str) -> bool,
    ) -> io::Result<Vec<(TraceId, SpanRecord)>> {
        let mut extents: Vec<(TraceId, (u64, u32))> = ids
            .iter()
            .flat_map(|id| self.records(*id).into_iter().map(|r| (*id, r.attrs())))
            .collect();
        extents.sort_unstable_by_key(|(_, e)| e.0);
        let mut names = spill_record::Names::shared();
        let mut out = Vec::new();
        let mut bytes = Vec::new();
        // Records close together are read in one go: a trace's record sits a few KiB after the
        // previous one's, and a read per record cost more than the bytes between them.
        let mut rest = extents.as_slice();
        while let Some(((_, (start, _)), _)) = rest.split_first() {
            let run = rest
                .iter()
                .take_while(|(_, (offset, len))| {
                    offset + u64::from(*len) - start <= COALESCED_READ as u64
                })
                .count()
                .max(1);
            let (group, after) = rest.split_at(run);
            rest = after;
            let end = group
                .iter()
                .map(|(_, (offset, len))| offset + u64::from(*len))
                .max()
                .unwrap_or(*start);
            self.read_into((*start, len32((end - start) as usize)?), &mut bytes)?;
            for (id, (offset, len)) in group {
                let at = (offset - start) as usize;
                let record = bytes
                    .get(at..at + *len as usize)
                    .ok_or_else(|| io::Error::other("a spilled record lies outside its read"))?;
                let spans =
                    spill_record::decode(record, &mut names, wanted).map_err(io::Error::other)?;
                out.extend(spans.into_iter().map(|s| (*id, s)));
            }
        }
        Ok(out)
    }
}

/// A span's id, and what its light copy shows (`Span::slim`: all but attributes, events, links
/// and scope), hashed: two copies of a span that differ in it (times a server adjusted between
/// two answers, the two halves of a call that share an id) are two copies, each written, and
/// each light copy is written back from its own.
fn shown(s: &Span) -> (SpanId, u64) {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::quality::FixedState::with_seed(0x5eed).build_hasher();
    s.parent.hash(&mut h);
    (s.start_ns, s.end_ns).hash(&mut h);
    (s.kind, s.status.code).hash(&mut h);
    s.status.message.hash(&mut h);
    s.operation.hash(&mut h);
    s.service().hash(&mut h);
    s.recorded_trace_state().hash(&mut h);
    (s.span_id, h.finish())
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

/// Hands the memory just freed (the compact spans of millions of traces, in small pieces) back
/// to the system: glibc's allocator keeps it otherwise, and the whole traces made next need
/// larger pieces than the holes it leaves.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The most bytes [`Spill::attributes`] reads at once.
const COALESCED_READ: usize = 1 << 20;

/// Appends the record of each of `traces` to `buf`; where each lies in it, as part `part`.
fn encode_part<'t>(
    part: u64,
    traces: impl IntoIterator<Item = &'t Trace>,
    buf: &mut Vec<u8>,
) -> io::Result<Vec<Record>> {
    traces
        .into_iter()
        .map(|t| {
            let offset = buf.len();
            let (attrs, rest) = spill_record::encode(t, buf);
            len32(attrs + rest)?;
            Ok(Record {
                part,
                offset: offset as u64,
                attrs: len32(attrs)?,
                rest: len32(rest)?,
            })
        })
        .collect()
}

fn len32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("a single trace of 4 GiB or more"))
}

impl TraceSink for Spill {
    fn take(&self, part: usize, mut traces: Vec<Trace>) -> io::Result<()> {
        let part = (self.inputs.load(Ordering::SeqCst) << 40) | part as u64;
        let mut redacted = self.redactor.apply_counted(traces.iter_mut()).into_iter();
        let mut buf = Vec::with_capacity(1 << 20);
        let records = encode_part(part, &traces, &mut buf)?;
        let part_names = PartNames::of(&traces, &mut self.state().names);
        let mut spans = Vec::with_capacity(traces.iter().map(|t| t.spans.len()).sum());
        let runs: Vec<_> = traces
            .iter()
            .map(|t| part_names.lighten(t, &mut spans))
            .collect();
        let ids: Vec<TraceId> = traces.iter().map(|t| t.id).collect();
        drop(traces);
        // The range is taken under the lock and written outside it, so parts are written at
        // once from every core.
        let base = {
            let mut state = self.state();
            let base = state.len;
            state.len += buf.len() as u64;
            let State {
                index,
                entries,
                slabs,
                redaction,
                ..
            } = &mut *state;
            let lights = slabs.add(spans, runs);
            for (i, ((id, mut record), light)) in
                ids.into_iter().zip(records).zip(lights).enumerate()
            {
                record.offset += base;
                let seen = (part, i as u32);
                let counts = redacted.next().filter(|c| !c.is_empty());
                if let Some(c) = &counts {
                    add_counts(redaction, c);
                }
                match index.get(&id).and_then(|&n| entries.get_mut(n)) {
                    None => {
                        let n = entries.push(Entry {
                            id,
                            first_seen: seen,
                            record,
                            light,
                            more: None,
                            redacted: counts.map(Box::new),
                        });
                        index.insert(id, n);
                    }
                    Some(e) => {
                        e.first_seen = e.first_seen.min(seen);
                        e.more
                            .get_or_insert_with(|| Box::new(MoreParts(Vec::new())))
                            .0
                            .push((record, light));
                        if let Some(c) = counts {
                            add_counts(e.redacted.get_or_insert_default(), &c);
                        }
                    }
                }
            }
            base
        };
        self.file.write_all_at(&buf, base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, Attribute};
    use crate::redact::RedactionSettings;

    fn span(id: &str, service: &str, secret: &str) -> Span {
        let mut attributes = crate::model::List::new();
        attributes.push(Attribute {
            key: "note".into(),
            value: AttrValue::Str(format!("{id} {secret}").into()),
        });
        Span {
            operation: "GET /".into(),
            kind: Default::default(),
            attributes,
            ..Span::plain(
                TraceId::parse("0af7651916cd43dd8448eb211c80319c").unwrap(),
                SpanId::parse(id).unwrap(),
                service,
                1_000,
                2_000,
            )
        }
    }

    fn trace(spans: Vec<Span>) -> Trace {
        Trace {
            id: spans[0].trace_id,
            spans,
        }
    }

    /// A trace that grew between two answers, and Zipkin's client and server halves (one span
    /// id, two services): merged light as whole traces were merged, each span is written back
    /// whole in its light copy's place, and its secret counted once.
    #[test]
    fn copies_of_a_trace_from_several_answers_are_written_back_whole_and_counted_once() {
        let redactor = Redactor::new(&RedactionSettings {
            enabled: true,
            keys: Vec::new(),
            values: vec![r"ACME-\d{6}".into()],
        })
        .unwrap();
        let spill = Spill::for_backends(redactor).unwrap();
        let first = || {
            trace(vec![
                span("00000000000000a1", "checkout", "ACME-000001"),
                span("00000000000000a2", "payment", "ACME-000002"),
            ])
        };
        let mut early = vec![first()];
        spill.store(&mut early).unwrap();
        // The later answer: the same two spans, the server half of a2, and a new span.
        let mut grown = first();
        // The server moved a1's end between the two answers: another copy, written too.
        grown.spans[0].end_ns = 2_500;
        grown.spans[0].attributes[0].value = AttrValue::Str("moved".into());
        grown
            .spans
            .push(span("00000000000000a2", "payment-server", "ACME-000003"));
        grown
            .spans
            .push(span("00000000000000a3", "payment", "plain"));
        let mut later = vec![grown];
        spill.store(&mut later).unwrap();
        assert!(later[0].spans.iter().all(|s| s.attributes.is_empty()));
        let mut light = early.remove(0);
        let mut later_first = later[0].clone();
        light.merge(later.remove(0));
        assert_eq!(light.spans.len(), 4);
        later_first.merge(light.clone());
        assert_eq!(later_first.spans.len(), 4);
        spill.settle(std::iter::once(light.id));
        let whole = spill.whole(&light).unwrap().unwrap();
        let got: Vec<(String, String, String)> = whole
            .spans
            .iter()
            .map(|s| {
                let note = match s.attribute("note") {
                    Some(AttrValue::Str(v)) => v.to_string(),
                    other => format!("{other:?}"),
                };
                (s.span_id.to_string(), s.service().to_string(), note)
            })
            .collect();
        let want = [
            (
                "00000000000000a1",
                "checkout",
                "00000000000000a1 [REDACTED:values[0]]",
            ),
            (
                "00000000000000a2",
                "payment",
                "00000000000000a2 [REDACTED:values[0]]",
            ),
            (
                "00000000000000a2",
                "payment-server",
                "00000000000000a2 [REDACTED:values[0]]",
            ),
            ("00000000000000a3", "payment", "00000000000000a3 plain"),
        ];
        assert_eq!(
            got,
            want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
        );
        let rules = spill.redaction().rules;
        assert_eq!(rules.values().sum::<usize>(), 3, "{rules:?}");
        // Merged the other way, the moved copy of a1 is the one written back.
        let whole = spill.whole(&later_first).unwrap().unwrap();
        assert_eq!(whole.spans[0].end_ns, 2_500);
        assert!(
            matches!(whole.spans[0].attribute("note"), Some(AttrValue::Str(v)) if &**v == "moved")
        );
        assert_eq!(whole.spans.len(), 4);
        // A trace the capture did not keep is not written back, nor counted.
        let other = spill.whole(&Trace {
            id: TraceId::parse("1af7651916cd43dd8448eb211c80319c").unwrap(),
            spans: Vec::new(),
        });
        assert!(other.unwrap().is_none());
    }

    fn in_trace(trace: &str, mut s: Span) -> Trace {
        s.trace_id = TraceId::parse(trace).unwrap();
        Trace {
            id: s.trace_id,
            spans: vec![s],
        }
    }

    /// The cores hand their parts of a file over in whatever order they finish them: the
    /// traces are still visited in the order the file holds them, and each trace kept comes
    /// back with its spans from every part (a status message too) and its records from every
    /// part, in the order asked for.
    #[test]
    fn traces_are_visited_in_file_order_and_kept_whole_whatever_order_their_parts_came_in() {
        let (a, b, c) = (
            "000000000000000000000000000000aa",
            "000000000000000000000000000000bb",
            "000000000000000000000000000000cc",
        );
        let spill = Spill::new(Redactor::new(&RedactionSettings::default()).unwrap()).unwrap();
        let mut failed = span("00000000000000c2", "payment", "second part");
        failed.status.message = Some("card declined".into());
        let later = vec![
            in_trace(b, span("00000000000000b1", "checkout", "b")),
            in_trace(c, failed),
        ];
        let earlier = vec![
            in_trace(a, span("00000000000000a1", "checkout", "a")),
            in_trace(c, span("00000000000000c1", "checkout", "first part")),
        ];
        spill.take(1, later).unwrap();
        spill.take(0, earlier).unwrap();
        assert_eq!(spill.merge_parts(), 0);
        let mut seen = Vec::new();
        spill.visit(|number, id, light| seen.push((number, id.to_string(), light.span_count())));
        let ids: Vec<(&str, usize)> = seen.iter().map(|(_, id, n)| (id.as_str(), *n)).collect();
        assert_eq!(ids, [(a, 1), (c, 2), (b, 1)]);
        let number = |id: &str| seen.iter().find(|(_, i, _)| i == id).unwrap().0;
        let kept = spill.keep(vec![(number(c), 'c'), (number(b), 'b')]);
        let got: Vec<(String, char, Vec<String>)> = kept
            .iter()
            .map(|(t, p)| {
                let spans = t.spans.iter().map(|s| s.span_id.to_string()).collect();
                (t.id.to_string(), *p, spans)
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    c.to_owned(),
                    'c',
                    vec!["00000000000000c1".to_owned(), "00000000000000c2".to_owned()]
                ),
                (b.to_owned(), 'b', vec!["00000000000000b1".to_owned()]),
            ]
        );
        assert_eq!(
            kept[0].0.spans[1].status.message.as_deref(),
            Some("card declined")
        );
        // Read back whole from both parts' records, attributes and all.
        let whole = spill.load(kept[0].0.id).unwrap().unwrap();
        let notes: Vec<_> = whole
            .spans
            .iter()
            .map(|s| s.attribute("note").cloned())
            .collect();
        assert_eq!(
            notes,
            [
                Some(AttrValue::Str("00000000000000c1 first part".into())),
                Some(AttrValue::Str("00000000000000c2 second part".into())),
            ]
        );
        // A trace not kept is forgotten.
        assert!(spill.load(TraceId::parse(a).unwrap()).unwrap().is_none());
    }
}
