//! `cargo fuzz run sample_session`: see [`vfu_server::fuzzing::sample_session`] for what the
//! input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfu_server::fuzzing::sample_session(data));
