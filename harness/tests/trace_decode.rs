//! The trace decoder on the recorded reference trace (libvfio-user's sample client and server,
//! a source and a destination session), checked against facts read from the file by hand.

use harness::trace::{ChangeCause, CommandCounts, DecodeOptions, DecodeSummary, decode_trace};
use pretty_assertions::assert_eq;
use vfu_server::wire::Command;

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../server/tests/data/reference-sample-client.jsonl");

fn decode_reference(options: &DecodeOptions) -> (String, DecodeSummary) {
    let file = std::fs::File::open(REFERENCE).expect("the reference trace is in the repository");
    let mut out = Vec::new();
    let summary = decode_trace(std::io::BufReader::new(file), options, &mut out).expect("decoding the reference trace");
    (String::from_utf8(out).expect("the decoded trace is UTF-8"), summary)
}

#[test]
fn reference_trace_decodes_every_line_as_a_message() {
    let (out, summary) = decode_reference(&DecodeOptions::default());
    assert_eq!((summary.lines, summary.messages, summary.events), (306, 306, 0));
    assert!(summary.malformed.is_empty(), "{:?}", summary.malformed);
    assert_eq!(summary.too_short, 0);
    assert!(!out.contains("malformed") && !out.contains("too short") && !out.contains("(size "), "{out}");
    assert_eq!(out.lines().filter(|l| !l.starts_with("   state")).count(), 306);
}

#[test]
fn reference_trace_starts_with_the_version_negotiation() {
    let (out, _) = decode_reference(&DecodeOptions::default());
    let first: Vec<&str> = out.lines().take(4).collect();
    assert_eq!(
        first,
        [
            r#"source      c2s #55893 VERSION 0.2 {"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024}}"#,
            r#"source      s2c #55893 VERSION reply ok 0.2 {"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}}}"#,
            "source      c2s #61455 REGION_READ region=3735928559 offset=0x0 count=4",
            "source      s2c #61455 REGION_READ reply ERROR EINVAL (22)",
        ]
    );
}

#[test]
fn reference_trace_state_changes_follow_the_file() {
    let (out, summary) = decode_reference(&DecodeOptions::default());
    let changes: Vec<(usize, String)> = summary.state_changes.iter().map(|c| (c.line, c.to_string())).collect();
    let expected = [
        (150, "source RUNNING -> PRE_COPY"),
        (196, "source PRE_COPY -> STOP_COPY"),
        (224, "source STOP_COPY -> STOP"),
        (228, "destination RUNNING -> RESUMING"),
        (256, "destination RESUMING -> STOP"),
        (260, "destination STOP -> RUNNING"),
    ];
    assert_eq!(changes, expected.map(|(l, s)| (l, s.to_owned())));
    assert!(summary.state_changes.iter().all(|c| c.cause == ChangeCause::Set));
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("   state")).collect();
    assert_eq!(
        lines,
        [
            "   state RUNNING -> PRE_COPY",
            "   state PRE_COPY -> STOP_COPY",
            "   state STOP_COPY -> STOP",
            "   state RUNNING -> RESUMING",
            "   state RESUMING -> STOP",
            "   state STOP -> RUNNING",
        ]
    );
    assert!(
        out.contains(
            "source      c2s #64177 DEVICE_FEATURE SET MIG_DEVICE_STATE state=PRE_COPY\n\
             source      s2c #64177 DEVICE_FEATURE reply ok\n   state RUNNING -> PRE_COPY\n"
        ),
        "{out}"
    );
}

#[test]
fn reference_trace_counts_each_command() {
    let (_, summary) = decode_reference(&DecodeOptions::default());
    let both = |n| CommandCounts { requests: n, replies: n, errors: 0 };
    let counts: Vec<(Command, CommandCounts)> = vec![
        (Command::Version, both(2)),
        (Command::DmaMap, both(24)),
        (Command::DmaUnmap, both(9)),
        (Command::DeviceGetInfo, both(1)),
        (Command::DeviceGetRegionInfo, both(10)),
        (Command::DeviceGetIrqInfo, both(10)),
        (Command::DeviceSetIrqs, both(2)),
        (Command::RegionRead, CommandCounts { errors: 1, ..both(4) }),
        (Command::RegionWrite, both(12)),
        (Command::DmaRead, both(8)),
        (Command::DmaWrite, both(8)),
        (Command::DeviceReset, both(1)),
        (Command::DeviceFeature, both(24)),
        (Command::MigDataRead, both(25)),
        (Command::MigDataWrite, both(13)),
    ];
    let got: Vec<(Command, CommandCounts)> =
        summary.per_command.iter().map(|(n, c)| (Command::from_u16(*n).expect("a known command"), *c)).collect();
    assert_eq!(got, counts);
    assert_eq!(summary.error_replies, 1);
}

#[test]
fn reference_trace_payload_details_are_decoded() {
    let (out, _) = decode_reference(&DecodeOptions::default());
    let find = |needle: &str| out.lines().filter(|l| l.contains(needle)).collect::<Vec<_>>();
    // BAR1's second GET_REGION_INFO reply carries the sparse-mmap capability and the region fd.
    assert_eq!(
        find("sparse="),
        ["source      s2c #43981 DEVICE_GET_REGION_INFO reply ok index=BAR1 size=0x3000 flags=READ|WRITE|MMAP|CAPS \
          cap_offset=32 argsz=80 sparse=[0x0+0x1000,0x2000+0x1000] fds=1"]
    );
    assert_eq!(
        find("DMA_LOGGING_START"),
        [
            "source      c2s #0     DEVICE_FEATURE SET DMA_LOGGING_START page_size=4096 ranges=all",
            "source      s2c #0     DEVICE_FEATURE reply ok DMA_LOGGING_START page_size=4096",
        ]
    );
    // Sixteen one-page reports; only the page at 0x1000 was dirty.
    assert_eq!(find("dirty=0 of 1 pages").len(), 15);
    assert_eq!(
        find("dirty=1 of 1 pages"),
        ["source      s2c #153   DEVICE_FEATURE reply ok DMA_LOGGING_REPORT iova=0x1000 length=0x1000 page_size=4096 \
          dirty=1 of 1 pages"]
    );
    // The sample server pads its last, short STOP_COPY read (one of its known deviations).
    assert_eq!(
        find(" short"),
        [
            "source      s2c #26860 MIG_DATA_READ reply ok size=8 of 1024 short data=6826096b00000000 (padded to 1024 bytes)"
        ]
    );
    assert_eq!(
        find("DMA_UNMAP addr=0x0 size=0x0 flags=ALL"),
        ["destination c2s #8     DMA_UNMAP addr=0x0 size=0x0 flags=ALL"]
    );
}

#[test]
fn reference_trace_filtered_to_the_destination() {
    let options = DecodeOptions { session: Some("destination".into()), ..DecodeOptions::default() };
    let (out, summary) = decode_reference(&options);
    assert_eq!(summary.messages, 82);
    assert!(out.lines().all(|l| l.starts_with("destination ") || l.starts_with("   state")), "{out}");
    let changes: Vec<String> = summary.state_changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        changes,
        ["destination RUNNING -> RESUMING", "destination RESUMING -> STOP", "destination STOP -> RUNNING"]
    );
}
