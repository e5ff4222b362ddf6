//! An Alertmanager webhook body, with the default intake settings.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| evidence_locker::fuzzing::alertmanager(data));
