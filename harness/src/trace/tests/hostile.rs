//! Hostile input: every line is decoded or reported, none stops the decoding or panics.

use std::io::{self, BufReader, Read};

use pretty_assertions::assert_eq;
use rstest::rstest;
use vfu_server::wire::Command::*;

use super::*;

const GOOD: &str = r#"{"session": "source", "dir": "c2s", "msg_id": 1, "cmd": 13, "size": 16, "flags": 0, "error_no": 0, "nfds": 0, "payload": ""}"#;

/// GOOD with `key` set to the JSON `value` (None: removed).
fn with(key: &str, value: Option<&str>) -> String {
    let mut obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(GOOD).unwrap();
    match value {
        Some(v) => obj.insert(key.into(), serde_json::from_str(v).unwrap()),
        None => obj.remove(key),
    };
    serde_json::Value::Object(obj).to_string()
}

#[rstest]
#[case::not_json("{\"session\": ", "not JSON (EOF while parsing a value at line 1 column 12)")]
#[case::not_an_object("[1, 2]", "not a JSON object")]
#[case::missing_dir(&with("dir", None), "missing key `dir`")]
#[case::missing_payload(&with("payload", None), "missing key `payload`")]
#[case::bad_dir(&with("dir", Some("\"up\"")), "`dir` is \"up\", not \"c2s\" or \"s2c\"")]
#[case::msg_id_too_big(&with("msg_id", Some("70000")), "`msg_id` is not a u16: 70000")]
#[case::negative_size(&with("size", Some("-1")), "`size` is not a u32: -1")]
#[case::fractional_flags(&with("flags", Some("1.5")), "`flags` is not a u32: 1.5")]
#[case::session_not_a_string(&with("session", Some("7")), "`session` is not a string: 7")]
#[case::payload_not_a_string(&with("payload", Some("[0]")), "`payload` is not a string: [0]")]
#[case::odd_length_payload(&with("payload", Some("\"abc\"")), "payload has an odd number of hex digits (3)")]
#[case::non_hex_payload(&with("payload", Some("\"00zz\"")), "payload has the non-hex character 'z' at offset 2")]
#[case::non_ascii_payload(&with("payload", Some("\"0é\"")), "payload has the non-hex character 'é' at offset 1")]
#[case::event_not_a_string(r#"{"event": 5}"#, "`event` is not a string: 5")]
#[case::step_without_index(r#"{"event": "step", "kind": "migrate"}"#, "missing key `index`")]
#[case::note_without_text(r#"{"event": "note"}"#, "missing key `text`")]
fn malformed_line_is_reported_and_decoding_goes_on(#[case] line: &str, #[case] why: &str) {
    let (out, summary) = decode(&[line.to_owned(), GOOD.to_owned()]);
    assert_eq!(out, format!("malformed line 1: {why}\nsource      c2s #1     DEVICE_RESET\n"));
    assert_eq!(summary.malformed, vec![MalformedLine { line: 1, why: why.to_owned() }]);
    assert_eq!(summary.messages, 1);
}

#[test]
fn non_hex_payload_is_reported_not_fatal() {
    let (out, summary) = decode(&[with("payload", Some("\"xyz1\"")), GOOD.to_owned(), "".into(), "  ".into()]);
    assert!(out.starts_with("malformed line 1: payload has the non-hex character 'x' at offset 0\n"), "{out}");
    assert_eq!((summary.lines, summary.messages, summary.malformed.len()), (4, 1, 1));
    assert!(summary.has_problems());
}

#[test]
fn line_that_is_not_utf8_is_malformed_and_crlf_endings_are_fine() {
    let input = [b"\xff\xfe{}\n".as_slice(), GOOD.as_bytes(), b"\r\n"].concat();
    let mut out = Vec::new();
    let summary = decode_trace(input.as_slice(), &DecodeOptions::default(), &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "malformed line 1: not UTF-8 (byte 0)\nsource      c2s #1     DEVICE_RESET\n"
    );
    assert_eq!(summary.malformed.len(), 1);
}

#[rstest]
#[case::dma_map(req(2, DmaMap, p().u64(0)), "DMA_MAP (payload too short for DmaMap: 8 of 32 bytes)")]
#[case::version(req(1, Version, p().u16(0)), "VERSION (payload too short for Version: 2 of 4 bytes)")]
#[case::set_state(req(16, DeviceFeature, p().u32(16).u32(0x2_0002).u16(6)),
    "DEVICE_FEATURE SET MIG_DEVICE_STATE (payload too short for MigDeviceState: 2 of 8 bytes)")]
#[case::feature_reply(
    rep(16, DeviceFeature, p()),
    "DEVICE_FEATURE reply ok (payload too short for DeviceFeature: 0 of 8 bytes)"
)]
#[case::write_multi_claiming_too_many(req(15, RegionWriteMulti, p().u64(u64::MAX).u64(0).u32(0).u32(1).bytes(&[1; 8])),
    "REGION_WRITE_MULTI writes=18446744073709551615 BAR0+0x0=01 (payload too short for WriteMultiEntry: 0 of 24 bytes)")]
#[case::logging_start_claiming_too_many(req(16, DeviceFeature, p().u32(24).u32(0x2_0006).u64(4096).u32(u32::MAX).u32(0)),
    "DEVICE_FEATURE SET DMA_LOGGING_START page_size=4096 (payload too short for DmaLoggingRange: 0 of 16 bytes)")]
#[case::region_read_reply(rep(9, RegionRead, p().u32(0)), "REGION_READ reply ok (payload too short for RegionAccess: 4 of 16 bytes)")]
fn payload_too_short_for_its_command_is_noted(#[case] m: Msg, #[case] want: &str) {
    let (out, summary) = decode(&[m.line(), GOOD.to_owned()]);
    assert_eq!(body(out.lines().next().unwrap()), want);
    assert_eq!((summary.messages, summary.too_short), (2, 1));
}

#[rstest]
#[case::capability_pointing_at_itself(rep(5, DeviceGetRegionInfo, p().u32(40).u32(0xf).u32(0).u32(32).u64(0x1000).u64(0)
        .u16(9).u16(1).u32(32)),
    "DEVICE_GET_REGION_INFO reply ok index=BAR0 size=0x1000 flags=READ|WRITE|MMAP|CAPS cap_offset=32 argsz=40 cap=9v1")]
#[case::capability_past_the_reply(rep(5, DeviceGetRegionInfo, p().u32(32).u32(8).u32(0).u32(u32::MAX).u64(0).u64(0)),
    "DEVICE_GET_REGION_INFO reply ok index=BAR0 size=0x0 flags=CAPS cap_offset=4294967295 argsz=32")]
#[case::sparse_areas_claiming_too_many(rep(5, DeviceGetRegionInfo, p().u32(64).u32(8).u32(0).u32(32).u64(0).u64(0)
        .u16(1).u16(1).u32(0).u32(u32::MAX).u32(0).u64(0).u64(0x1000)),
    "DEVICE_GET_REGION_INFO reply ok index=BAR0 size=0x0 flags=CAPS cap_offset=32 argsz=64 sparse=[0x0+0x1000]")]
#[case::report_of_page_size_zero(rep(16, DeviceFeature, p().u32(40).u32(0x1_0008).u64(0).u64(u64::MAX).u64(0).u64(3)),
    "DEVICE_FEATURE reply ok DMA_LOGGING_REPORT iova=0x0 length=0xffffffffffffffff page_size=0 dirty=2")]
#[case::report_of_a_huge_range(rep(16, DeviceFeature, p().u32(40).u32(0x1_0008).u64(0).u64(u64::MAX).u64(1).u64(1)),
    "DEVICE_FEATURE reply ok DMA_LOGGING_REPORT iova=0x0 length=0xffffffffffffffff page_size=1 dirty=1 of 18446744073709551615 pages \
     (bitmap 8 of 2305843009213693952 bytes)")]
#[case::header_flags_and_errno(Msg { errno: 5, ..raw(1, 13, 0x40, p()) }, "DEVICE_RESET flags=0x40 error_no=5")]
#[case::unknown_message_type(raw(1, 13, 3, p()), "DEVICE_RESET type=3")]
fn hostile_fields_are_shown_without_trusting_them(#[case] m: Msg, #[case] want: &str) {
    let (out, _) = decode(&[m.line()]);
    assert_eq!(body(out.trim_end()), want);
}

#[test]
fn every_command_at_every_short_length_decodes_without_panicking() {
    for cmd in 0..=20u16 {
        for len in 0..=72usize {
            for fill in [0x00u8, 0xff, 0x08] {
                let payload: Vec<u8> = (0..len).map(|i| if fill == 0x08 { i as u8 } else { fill }).collect();
                let msgs: Vec<Msg> = [0, 1, 0x21]
                    .into_iter()
                    .flat_map(|flags| {
                        let m = raw(1, cmd, flags, p().bytes(&payload));
                        [m.clone(), m.flipped()]
                    })
                    .collect();
                let (_, summary) = decode(&lines(&msgs));
                assert_eq!((summary.messages, summary.malformed.len()), (6, 0), "cmd {cmd}, {len} bytes of {fill:#x}");
            }
        }
    }
}

#[test]
fn every_feature_and_op_decodes_without_panicking() {
    for feature in 0..=10u32 {
        for ops in [0, 0x1_0000, 0x2_0000, 0x4_0000, 0x3_0000, 0x7_0000, 0x8_0000] {
            for tail in [&[][..], &[0xff; 7], &[0xff; 40], &[0x01; 64]] {
                let payload = p().u32(8).u32(feature | ops).bytes(tail);
                let msgs = [req(1, DeviceFeature, payload.clone()), rep(1, DeviceFeature, payload)];
                let (_, summary) = decode(&lines(&msgs));
                assert_eq!(summary.messages, 2);
            }
        }
    }
}

#[test]
fn mangled_reference_trace_never_stops_the_decoding() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../server/tests/data/reference-sample-client.jsonl");
    let original = std::fs::read(path).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let mut mangled = original.clone();
        for _ in 0..64 {
            let at = (next() % mangled.len() as u64) as usize;
            let alphabet = b"0123456789abcdef\",:{}[] -\n\xff";
            mangled[at] = alphabet[(next() % alphabet.len() as u64) as usize];
        }
        let summary = decode_trace(mangled.as_slice(), &DecodeOptions::default(), &mut io::sink()).unwrap();
        assert!(summary.lines > 0);
    }
}

/// A reader that fails.
struct Broken;

impl Read for Broken {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("device gone"))
    }
}

/// A writer that fails.
struct Full;

impl io::Write for Full {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::StorageFull))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn only_io_errors_fail_the_decoding() {
    let first = format!("{GOOD}\n");
    let input = BufReader::new(first.as_bytes().chain(Broken));
    let read = decode_trace(input, &DecodeOptions::default(), &mut io::sink());
    assert!(matches!(read, Err(TraceError::Read { line: 2, .. })), "{read:?}");
    let write = decode_trace(GOOD.as_bytes(), &DecodeOptions::default(), &mut Full);
    assert!(matches!(write, Err(TraceError::Write(_))), "{write:?}");
}
