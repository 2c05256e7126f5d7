//! `cargo fuzz run wire_decoder`: see [`vfu_server::fuzzing::decode_wire`] for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfu_server::fuzzing::decode_wire(data));
