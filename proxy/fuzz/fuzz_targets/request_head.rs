//! `oracle::request_head` (proxy/tests/support/oracle.rs) under libFuzzer.

#![no_main]

#[path = "../../tests/support/oracle.rs"]
#[allow(dead_code)]
mod oracle;
#[path = "../../tests/support/strict.rs"]
#[allow(dead_code)]
mod strict;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::request_head(data));
