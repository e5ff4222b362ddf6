//! A PagerDuty v3 webhook body (past its signature check).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| evidence_locker::fuzzing::pagerduty(data));
