//! `cargo fuzz run session`: see [`vfu_server::fuzzing::session`] for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfu_server::fuzzing::session(data));
