//! `cargo fuzz run resume`: see [`vfu_server::fuzzing::resume`] for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfu_server::fuzzing::resume(data));
