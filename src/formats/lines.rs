//! JSON Lines read on every core: the input is cut into batches of whole lines, each batch is
//! parsed into its own collector by a worker, and the batches are merged back in input order, so
//! the result is the same as reading line by line.

use std::io::BufRead;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::{Format, FormatError, Json, ReadError, TraceCollector, jaeger, otlp};

const BATCH_BYTES: usize = 1 << 20;

struct Batch {
    no: usize,
    first_line: usize,
    bytes: Vec<u8>,
}

/// Parses the lines of `bytes` (the first being line `first_line`) into `c`, trying the previous
/// line's format first and detecting afresh only when a line is not of it.
pub(super) fn parse_lines(
    c: &mut TraceCollector,
    bytes: &[u8],
    first_line: usize,
    mut format: Format,
) -> Result<Format, FormatError> {
    // One check of the whole part: each line's strings then need none of their own.
    let text = std::str::from_utf8(bytes).ok();
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
    for (n, end) in ends.enumerate() {
        let json = match text {
            // A newline is never inside a character, so the cut is on a boundary.
            Some(t) => Json::Text(t.get(start..end).unwrap_or_default()),
            None => Json::Bytes(&bytes[start..end]),
        };
        let line = &bytes[start..end];
        start = end + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let same = match format {
            Format::JaegerTrace => jaeger::parse_if_trace(json, c),
            Format::Otlp => otlp::parse_if_plain(json, c),
            _ => false,
        };
        if same {
            *c.formats.entry(format).or_default() += 1;
        } else {
            match c.add_document(line) {
                Ok(f) => format = f,
                // A damaged line (a truncated last write, say) costs that line, not the file:
                // it is counted, and the first one named.
                Err(e) => c.bad_line(first_line + n, e),
            }
        }
    }
    Ok(format)
}

fn next_batch<R: BufRead>(
    input: &mut R,
    no: usize,
    line_no: &mut usize,
) -> std::io::Result<Option<Batch>> {
    let mut bytes = Vec::with_capacity(BATCH_BYTES + 64 * 1024);
    let first_line = *line_no + 1;
    while bytes.len() < BATCH_BYTES {
        let n = input.read_until(b'\n', &mut bytes)?;
        if n == 0 {
            break;
        }
        *line_no += 1;
    }
    Ok((!bytes.is_empty()).then_some(Batch {
        no,
        first_line,
        bytes,
    }))
}

/// Reads the rest of a JSON Lines input (after line `line_no`, whose format was `format`).
pub(super) fn read_rest<R: BufRead>(
    c: &mut TraceCollector,
    mut input: R,
    mut line_no: usize,
    format: Format,
) -> Result<(), ReadError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    if workers == 1 {
        let mut format = format;
        let mut no = 0;
        while let Some(batch) = next_batch(&mut input, no, &mut line_no)? {
            let mut part = c.part();
            format = parse_lines(&mut part, &batch.bytes, batch.first_line, format)?;
            part.hand_over(batch.first_line)?;
            c.absorb(part);
            no += 1;
        }
        return Ok(());
    }
    let (batch_tx, batch_rx) = mpsc::sync_channel::<Batch>(workers * 2);
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<TraceCollector, ReadError>)>();
    let mut parsed: Vec<(usize, TraceCollector)> = Vec::new();
    let mut failure: Option<(usize, ReadError)> = None;
    let read_result = std::thread::scope(|scope| {
        for _ in 0..workers {
            let rx = Arc::clone(&batch_rx);
            let tx = done_tx.clone();
            let template = c.part();
            scope.spawn(move || {
                loop {
                    let next = rx.lock().map(|r| r.recv());
                    let Ok(Ok(batch)) = next else { break };
                    let mut part = template.part();
                    // Each batch is parsed, then handed over (redacted and written out, when
                    // streaming) on this worker, so every core does that work too.
                    let result = parse_lines(&mut part, &batch.bytes, batch.first_line, format)
                        .map_err(ReadError::from)
                        .and_then(|_| part.hand_over(batch.first_line).map_err(ReadError::from))
                        .map(|_| part);
                    if tx.send((batch.no, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut no = 0;
        let read = loop {
            // Stop reading at the first failure a worker reports.
            match done_rx.try_recv() {
                Ok((n, Ok(part))) => parsed.push((n, part)),
                Ok((n, Err(e))) => {
                    failure = Some((n, e));
                    break Ok(());
                }
                Err(_) => {}
            }
            match next_batch(&mut input, no, &mut line_no) {
                Ok(Some(batch)) => {
                    if batch_tx.send(batch).is_err() {
                        break Ok(());
                    }
                    no += 1;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(batch_tx);
        for (n, result) in done_rx.iter() {
            match result {
                Ok(part) => parsed.push((n, part)),
                Err(e) if failure.as_ref().is_none_or(|(f, _)| n < *f) => failure = Some((n, e)),
                Err(_) => {}
            }
        }
        read
    });
    read_result?;
    if let Some((_, e)) = failure {
        return Err(e);
    }
    parsed.sort_by_key(|(n, _)| *n);
    for (_, part) in parsed {
        c.absorb(part);
    }
    Ok(())
}
