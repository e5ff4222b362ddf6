//! Each trace format reader on its own, as the backends' answers are read: the first byte picks
//! the reader, so that every one of them sees every shape of input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| evidence_locker::fuzzing::trace_formats(data));
