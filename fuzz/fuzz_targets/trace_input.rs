//! A whole trace input as `collect --traces-file` reads it: plain or zstd, one document or JSON
//! Lines, any format, detected.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| evidence_locker::fuzzing::trace_input(data));
