//! An incident message (`incidents.declared`, `collect --incident FILE`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| evidence_locker::fuzzing::incident(data));
