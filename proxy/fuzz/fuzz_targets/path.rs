//! `oracle::invocation_path` (proxy/tests/support/oracle.rs) under
//! libFuzzer: `path::parse` on any target. The engine's origin-form
//! handling is reached end to end by the `end_to_end` target.

#![no_main]

#[path = "../../tests/support/oracle.rs"]
#[allow(dead_code)]
mod oracle;
#[path = "../../tests/support/strict.rs"]
#[allow(dead_code)]
mod strict;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::invocation_path(data));
