//! The bundle's four trace files and `jaeger-ui.json`, written on every core: the traces are
//! made into JSON in runs by whichever thread is free (an error or slow trace read back from the
//! spill and decoded once for both its OTLP line and its Jaeger UI entry), and each file takes
//! its runs in order, so its bytes are those one thread writing it alone would write.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::writer::{FileEntry, FileWriter};
use crate::capture::Purposes;
use crate::capture::spill::Spill;
use crate::formats::{jaeger, otlp};
use crate::model::Trace;

/// Traces made into JSON at a time: small enough to keep both cores busy to the end, large
/// enough that handing runs over costs nothing that shows.
const RUN: usize = 64;

/// Bytes of runs that may wait for a file held by another thread (a sync, or a slow disk)
/// before the threads that made them wait too: what bounds the memory the files take.
const MOST_WAITING: usize = 8 << 20;

/// What the trace files hold, as indexes into the capture's traces.
pub(super) struct Files<'a> {
    pub errors: &'a [usize],
    pub slow: &'a [usize],
    pub baseline: &'a [usize],
    pub sample: &'a [usize],
}

const ERRORS: usize = 0;
const SLOW: usize = 1;
const UI: usize = 4;
const NAMES: [&str; 5] = [
    "traces/errors.jsonl.zst",
    "traces/slow.jsonl.zst",
    "traces/baseline.jsonl.zst",
    "traces/sample.jsonl.zst",
    "traces/jaeger-ui.json",
];

/// One run of work: traces `from..to` of file `file`, its run number `seq` there. Error and
/// slow runs also make those traces' Jaeger UI entries, `jaeger-ui.json`'s run `ui.seq`, whose
/// first trace is that file's `ui.first`.
struct Run {
    file: usize,
    from: usize,
    to: usize,
    seq: usize,
    ui: Option<UiPlace>,
}

struct UiPlace {
    first: usize,
    seq: usize,
}

/// Writes the five files with `workers` threads; their entries in the order errors, slow,
/// baseline, sample, `jaeger-ui.json`.
pub(super) fn write(
    dir: &Path,
    traces: &[(Trace, Purposes)],
    files: &Files<'_>,
    level: i32,
    spill: Option<&Spill>,
    workers: usize,
) -> io::Result<Vec<FileEntry>> {
    let lists = [files.errors, files.slow, files.baseline, files.sample];
    let mut runs = Vec::new();
    let mut counts = [0usize; 5];
    let mut ui_traces = 0;
    for (file, list) in lists.iter().enumerate() {
        for from in (0..list.len()).step_by(RUN) {
            let to = (from + RUN).min(list.len());
            let ui = (file == ERRORS || file == SLOW).then(|| {
                let place = UiPlace {
                    first: ui_traces,
                    seq: counts[UI],
                };
                counts[UI] += 1;
                ui_traces += to - from;
                place
            });
            runs.push(Run {
                file,
                from,
                to,
                seq: counts[file],
                ui,
            });
            counts[file] += 1;
        }
    }
    let mut sinks = Vec::with_capacity(5);
    for (file, name) in NAMES.iter().enumerate() {
        let mut out = FileWriter::create(dir, name)?;
        let out = if file == UI {
            out.write_all(jaeger::API_START)?;
            Out::Plain(out)
        } else {
            Out::Zstd(zstd::stream::write::Encoder::new(out, level)?)
        };
        sinks.push(Sink::new(
            out,
            counts[file],
            (file == UI).then_some(ui_traces),
        ));
    }

    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let work = || {
        let mut otlp_json = Vec::new();
        let mut ui_json = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let Some(run) = runs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            otlp_json.clear();
            ui_json.clear();
            let made = make_run(
                traces,
                lists[run.file],
                run,
                spill,
                &mut otlp_json,
                &mut ui_json,
            )
            .and_then(|()| {
                sinks[run.file].deliver(run.seq, &otlp_json)?;
                if let Some(ui) = &run.ui {
                    sinks[UI].deliver(ui.seq, &ui_json)?;
                }
                Ok(())
            });
            if let Err(e) = made {
                failed.store(true, Ordering::Relaxed);
                lock(&first_error).get_or_insert(e);
            }
        }
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..workers.max(1)).map(|_| scope.spawn(work)).collect();
        work();
        for other in others {
            if let Err(panic) = other.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    if let Some(e) = lock(&first_error).take() {
        return Err(e);
    }
    sinks.into_iter().map(Sink::finish).collect()
}

/// A capture's trace whole: from a spill, the trace is light and its whole self is read back;
/// else it is whole already.
pub(super) fn whole<'a>(spill: Option<&Spill>, trace: &'a Trace) -> io::Result<Cow<'a, Trace>> {
    match spill {
        Some(s) => s.whole_or(trace),
        None => Ok(Cow::Borrowed(trace)),
    }
}

/// Makes the JSON of one run: its OTLP lines into `otlp_json` and, for error and slow runs, its
/// Jaeger UI entries into `ui_json`, each preceded by the separator but the file's first.
fn make_run(
    traces: &[(Trace, Purposes)],
    list: &[usize],
    run: &Run,
    spill: Option<&Spill>,
    otlp_json: &mut Vec<u8>,
    ui_json: &mut Vec<u8>,
) -> io::Result<()> {
    for (k, &i) in list[run.from..run.to].iter().enumerate() {
        let whole = whole(spill, &traces[i].0)?;
        otlp::write_trace_line(&whole, otlp_json)?;
        if let Some(ui) = &run.ui {
            if ui.first + k > 0 {
                ui_json.extend_from_slice(jaeger::API_SEPARATOR);
            }
            jaeger::write_api_trace(&whole, ui_json)?;
        }
    }
    Ok(())
}

enum Out {
    Zstd(zstd::stream::write::Encoder<'static, FileWriter>),
    Plain(FileWriter),
}

impl Out {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Out::Zstd(z) => z.write_all(bytes),
            Out::Plain(f) => f.write_all(bytes),
        }
    }
}

/// Runs that are made, waiting for the ones before them.
struct Ready {
    next: usize,
    runs: BTreeMap<usize, Vec<u8>>,
    /// Bytes of the runs waiting, and the most that ever waited.
    waiting: usize,
    most_waiting: usize,
}

impl Ready {
    /// Leaves a copy of run `seq` to the thread that holds the file; whether too much now waits.
    fn leave(&mut self, seq: usize, json: &[u8]) -> bool {
        self.waiting += json.len();
        self.most_waiting = self.most_waiting.max(self.waiting);
        self.runs.insert(seq, json.to_vec());
        self.waiting > MOST_WAITING
    }

    /// The next run in order, if it is ready.
    fn take_next(&mut self) -> Option<Vec<u8>> {
        let json = self.runs.remove(&self.next)?;
        self.next += 1;
        self.waiting -= json.len();
        Some(json)
    }
}

/// One file: takes runs in any order, writes them in order, and is closed by the thread that
/// writes its last run (its sync then overlaps the other files' work).
struct Sink {
    ready: Mutex<Ready>,
    /// `None` once closed.
    out: Mutex<Option<Out>>,
    runs: usize,
    /// For `jaeger-ui.json`, the number of its traces, written at its end.
    ui_traces: Option<usize>,
    entry: Mutex<Option<io::Result<FileEntry>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink {
    fn new(out: Out, runs: usize, ui_traces: Option<usize>) -> Self {
        Self {
            ready: Mutex::new(Ready {
                next: 0,
                runs: BTreeMap::new(),
                waiting: 0,
                most_waiting: 0,
            }),
            out: Mutex::new(Some(out)),
            runs,
            ui_traces,
            entry: Mutex::new(None),
        }
    }

    /// Hands over run `seq`. Whichever thread holds the file writes every run that is ready in
    /// order; one that finds it held leaves a copy of its run to that thread and goes back to
    /// work. A run that is next when its thread gets the file is written without a copy, so
    /// each thread keeps reusing its own buffers.
    fn deliver(&self, seq: usize, json: &[u8]) -> io::Result<()> {
        let mut own = Some(json);
        loop {
            let mut out = match self.out.try_lock() {
                Ok(out) => out,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    let Some(json) = own.take() else {
                        return Ok(());
                    };
                    if !lock(&self.ready).leave(seq, json) {
                        // Looked at again: the holder may have looked for it already.
                        continue;
                    }
                    lock(&self.out)
                }
            };
            let Some(file) = out.as_mut() else {
                // Closed: this run was left and then written, as the file's last, by the thread
                // that held it.
                return match own {
                    None => Ok(()),
                    Some(_) => Err(io::Error::other(
                        "a run of traces came after its file was closed",
                    )),
                };
            };
            if let Some(json) = own.take() {
                let mut ready = lock(&self.ready);
                if ready.next == seq {
                    ready.next += 1;
                    drop(ready);
                    file.write_all(json)?;
                } else {
                    ready.leave(seq, json);
                }
            }
            if self.write_ready(&mut out)? {
                return Ok(());
            }
            drop(out);
            // A run made ready after the last look, by a thread that found the file held, is
            // written by this one.
            let ready = lock(&self.ready);
            if !ready.runs.contains_key(&ready.next) {
                return Ok(());
            }
        }
    }

    /// Writes the runs that are ready, in order, into the file `out` holds, and closes it after
    /// its last run; whether it is closed.
    fn write_ready(&self, out: &mut Option<Out>) -> io::Result<bool> {
        let Some(file) = out.as_mut() else {
            return Ok(true);
        };
        loop {
            let Some(json) = lock(&self.ready).take_next() else {
                break;
            };
            file.write_all(&json)?;
        }
        if lock(&self.ready).next < self.runs {
            return Ok(false);
        }
        if let Some(file) = out.take() {
            let entry = self.close(file);
            *lock(&self.entry) = Some(entry);
        }
        Ok(true)
    }

    /// Ends the file (`jaeger-ui.json` with the number of its traces), syncs it, and returns its
    /// entry.
    fn close(&self, out: Out) -> io::Result<FileEntry> {
        let entry = match out {
            Out::Zstd(z) => z.finish()?.finish(),
            Out::Plain(mut f) => {
                jaeger::write_api_end(self.ui_traces.unwrap_or(0), &mut f)?;
                f.finish()
            }
        }?;
        tracing::debug!(
            file = %entry.path,
            bytes = entry.bytes,
            most_waiting_kib = lock(&self.ready).most_waiting >> 10,
            "trace file written"
        );
        Ok(entry)
    }

    /// The file's entry, once every run was written (a file with none is closed here).
    fn finish(self) -> io::Result<FileEntry> {
        {
            let ready = lock(&self.ready);
            if ready.next != self.runs || !ready.runs.is_empty() {
                return Err(io::Error::other(format!(
                    "a bundle trace file was left with {} of its {} runs of traces written",
                    ready.next, self.runs
                )));
            }
        }
        if let Some(entry) = lock(&self.entry).take() {
            return entry;
        }
        let out = lock(&self.out).take();
        match out {
            Some(out) => self.close(out),
            None => Err(io::Error::other(
                "a bundle trace file was closed without its entry",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Resource, Span, SpanId, Status, TraceId};
    use sha2::Digest;
    use std::sync::Arc;

    fn trace(n: usize) -> (Trace, Purposes) {
        let id = TraceId::parse(&format!("{:032x}", n + 1)).unwrap();
        let span = Span {
            trace_id: id,
            span_id: SpanId::parse(&format!("{:016x}", n + 1)).unwrap(),
            parent: None,
            operation: format!("GET /item/{n}").into(),
            start_ns: 1_000 + n as i64,
            end_ns: 2_000 + n as i64,
            kind: Default::default(),
            status: Status::default(),
            attributes: Default::default(),
            resource: Arc::new(Resource {
                service: "shop".into(),
                attributes: Vec::new(),
            }),
            scope: None,
            events: Default::default(),
            links: Default::default(),
            trace_state: None,
        };
        (
            Trace {
                id,
                spans: vec![span],
            },
            Purposes::default(),
        )
    }

    /// Files of many runs, written by more threads than there are cores so that runs come in out
    /// of order, are byte for byte what one thread writing each file alone writes: the traces in
    /// the order given, compressed in one stream, and one Jaeger UI response of the error traces
    /// then the slow ones.
    #[test]
    fn files_written_on_several_threads_are_byte_for_byte_those_of_one_thread() {
        let traces: Vec<_> = (0..1500).map(trace).collect();
        // Each file's order is not the capture's.
        let errors: Vec<usize> = (0..1500).rev().filter(|i| i % 3 == 0).collect();
        let slow: Vec<usize> = (0..1500).filter(|i| i % 3 == 1).collect();
        let baseline: Vec<usize> = (0..1500).filter(|i| i % 6 == 2).collect();
        let sample: Vec<usize> = (0..1500).rev().filter(|i| i % 6 == 5).collect();
        let files = Files {
            errors: &errors,
            slow: &slow,
            baseline: &baseline,
            sample: &sample,
        };
        let lists = [&errors, &slow, &baseline, &sample];
        let mut expected = Vec::new();
        for list in lists {
            let mut json = Vec::new();
            for &i in list {
                otlp::write_trace_line(&traces[i].0, &mut json).unwrap();
            }
            let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            z.write_all(&json).unwrap();
            expected.push(z.finish().unwrap());
        }
        let mut ui = Vec::new();
        jaeger::write_api_response(errors.iter().chain(&slow).map(|&i| &traces[i].0), &mut ui)
            .unwrap();
        expected.push(ui);

        for workers in [1, 6] {
            let dir = tempfile::tempdir().unwrap();
            let entries = write(dir.path(), &traces, &files, 3, None, workers).unwrap();
            assert_eq!(entries.len(), 5);
            for ((entry, name), want) in entries.iter().zip(NAMES).zip(&expected) {
                let got = std::fs::read(dir.path().join(name)).unwrap();
                assert!(got == *want, "{name} differs with {workers} workers");
                assert_eq!(entry.path, name);
                assert_eq!(entry.bytes, want.len() as u64);
                assert_eq!(entry.sha256, hex::encode(sha2::Sha256::digest(want)));
            }
        }
    }

    /// From a spill, where the capture holds light copies, the files and the context file
    /// (`write_traces`) are written from the whole traces read back: the bytes the whole traces
    /// themselves make.
    #[test]
    fn traces_read_back_from_a_spill_are_written_whole() {
        // With an attribute each, which a light copy leaves out.
        let whole: Vec<Trace> = (0..300)
            .map(|n| {
                let mut t = trace(n).0;
                t.spans[0].attributes.push(crate::model::Attribute {
                    key: "order".into(),
                    value: crate::model::AttrValue::Str(format!("order {n}").into()),
                });
                t
            })
            .collect();
        let redactor = crate::redact::Redactor::new(&crate::redact::RedactionSettings {
            enabled: false,
            keys: Vec::new(),
            values: Vec::new(),
        })
        .unwrap();
        let spill = Spill::for_backends(redactor).unwrap();
        let mut light = whole.clone();
        spill.store(&mut light).unwrap();
        spill.settle(light.iter().map(|t| t.id));
        assert!(
            light[0].spans[0].attributes.is_empty(),
            "the capture holds light copies"
        );
        let light: Vec<(Trace, Purposes)> = light
            .into_iter()
            .map(|t| (t, Purposes::default()))
            .collect();
        let errors: Vec<usize> = (0..300).rev().collect();
        let files = Files {
            errors: &errors,
            slow: &[],
            baseline: &[],
            sample: &[],
        };
        let mut json = Vec::new();
        for &i in &errors {
            otlp::write_trace_line(&whole[i], &mut json).unwrap();
        }
        let want = zstd::encode_all(&json[..], 3).unwrap();
        let mut ui = Vec::new();
        jaeger::write_api_response(errors.iter().map(|&i| &whole[i]), &mut ui).unwrap();

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &light, &files, 3, Some(&spill), 2).unwrap();
        super::super::write_traces(dir.path(), "context", &light, &errors, 3, Some(&spill))
            .unwrap();
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        assert!(zstd::decode_all(&read(NAMES[ERRORS])[..]).unwrap() == json);
        assert!(read(NAMES[ERRORS]) == want, "errors file");
        assert!(read("context") == want, "context file");
        assert!(read(NAMES[UI]) == ui, "Jaeger UI file");
    }

    /// A capture with no traces still gets its five files: empty streams and an empty response.
    #[test]
    fn no_traces_make_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            errors: &[],
            slow: &[],
            baseline: &[],
            sample: &[],
        };
        let entries = write(dir.path(), &[], &files, 3, None, 2).unwrap();
        assert_eq!(entries.len(), 5);
        let ui = std::fs::read_to_string(dir.path().join("traces/jaeger-ui.json")).unwrap();
        assert_eq!(
            ui,
            r#"{"data":[],"total":0,"limit":0,"offset":0,"errors":null}"#
        );
        let errors = std::fs::read(dir.path().join("traces/errors.jsonl.zst")).unwrap();
        assert!(zstd::decode_all(&errors[..]).unwrap().is_empty());
    }

    /// A plain file of `runs` runs, closed as an empty Jaeger UI response.
    fn plain_sink(dir: &Path, runs: usize) -> Sink {
        Sink::new(
            Out::Plain(FileWriter::create(dir, "runs").unwrap()),
            runs,
            Some(0),
        )
    }

    /// What such a file holds once `runs` are written in order and it is closed.
    fn plain_file(runs: &[&[u8]]) -> Vec<u8> {
        let mut file = runs.concat();
        file.extend_from_slice(br#"],"total":0,"limit":0,"offset":0,"errors":null}"#);
        file
    }

    /// Runs that come while another thread holds the file wait for it and are written in order
    /// by that thread; past `MOST_WAITING` bytes, the thread that made a run waits for the file
    /// instead of leaving more.
    #[test]
    fn runs_wait_in_order_for_a_held_file_and_too_many_make_their_thread_wait() {
        let dir = tempfile::tempdir().unwrap();
        let sink = plain_sink(dir.path(), 4);
        let big = vec![b'c'; MOST_WAITING + 1];
        std::thread::scope(|scope| {
            let held = lock(&sink.out);
            // Left while the file is held: both come back at once.
            sink.deliver(2, b"b").unwrap();
            sink.deliver(3, b"d").unwrap();
            // Too much waiting: this thread waits for the file.
            let waiting = scope.spawn(|| sink.deliver(1, &big));
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(
                !waiting.is_finished(),
                "a run past the limit was left, not waited with"
            );
            drop(held);
            waiting.join().unwrap().unwrap();
            sink.deliver(0, b"a").unwrap();
        });
        let written = std::fs::read(dir.path().join("runs")).unwrap();
        let want = plain_file(&[b"a", &big, b"bd"]);
        assert!(written == want, "runs written out of order");
        assert_eq!(sink.finish().unwrap().bytes, want.len() as u64);
    }

    /// A thread that left the file's last run and waits for the file finds it written and closed
    /// by the thread that held it: its run is done, not refused.
    #[test]
    fn a_last_run_left_to_the_holder_is_written_and_closed_without_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sink = plain_sink(dir.path(), 2);
        let big = vec![b'b'; MOST_WAITING + 1];
        std::thread::scope(|scope| {
            let mut held = lock(&sink.out);
            lock(&sink.ready).leave(0, b"a");
            // The last run, past the limit: its thread leaves it and waits for the file.
            let last = scope.spawn(|| sink.deliver(1, &big));
            while !lock(&sink.ready).runs.contains_key(&1) {
                std::thread::yield_now();
            }
            // The holder writes both and closes the file before letting it go.
            assert!(sink.write_ready(&mut held).unwrap());
            drop(held);
            last.join().unwrap().unwrap();
        });
        let want = plain_file(&[b"a", &big]);
        assert!(std::fs::read(dir.path().join("runs")).unwrap() == want);
        assert_eq!(sink.finish().unwrap().bytes, want.len() as u64);
    }
}
