//! The pcapng writer byte by byte: block framing, the section and interface headers, and each
//! packet's header, message and lengths.

use pretty_assertions::assert_eq;
use vfu_server::wire::Header;

use super::*;

/// A block as read back: type, body (without the type and the two lengths).
fn blocks(file: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < file.len() {
        let kind = u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
        assert_eq!(len % 4, 0, "block at {at} is {len} bytes, not a multiple of 4");
        let trailer = u32::from_le_bytes(file[at + len - 4..at + len].try_into().unwrap()) as usize;
        assert_eq!(trailer, len, "block at {at}: the length at its end");
        out.push((kind, file[at + 8..at + len - 4].to_vec()));
        at += len;
    }
    assert_eq!(at, file.len());
    out
}

/// The options of a block, from `at` in its body: (code, value).
fn options(body: &[u8], mut at: usize) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let code = u16::from_le_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_le_bytes([body[at + 2], body[at + 3]]));
        if code == 0 {
            assert_eq!((len, at + 4), (0, body.len()), "opt_endofopt ends the block");
            return out;
        }
        out.push((code, body[at + 4..at + 4 + len].to_vec()));
        at += 4 + len.next_multiple_of(4);
    }
}

fn record(session: &str, dir: Dir, payload: &[u8], nfds: usize, snaplen: usize) -> Record {
    let header = Header { msg_id: 0x0102, cmd: 9, msg_size: 16 + payload.len() as u32, flags: 1, error_no: 0 };
    Record::capture(session, dir, header, payload, nfds, snaplen)
}

fn written(records: &[Record]) -> Vec<u8> {
    let mut w = PcapngWriter::new(Vec::new()).unwrap();
    w.set_clock(1_700_000_000_000_000);
    for r in records {
        w.packet(r).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn the_file_starts_with_a_section_header_in_little_endian() {
    let file = written(&[]);
    assert_eq!(&file[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
    let b = blocks(&file);
    assert_eq!(b.len(), 1);
    let (kind, body) = &b[0];
    assert_eq!(*kind, 0x0A0D_0D0A);
    assert_eq!(&body[..4], &[0x4d, 0x3c, 0x2b, 0x1a], "byte-order magic");
    assert_eq!(&body[4..8], &[1, 0, 0, 0], "version 1.0");
    assert_eq!(&body[8..16], &[0xff; 8], "section length not given");
    let opts = options(body, 16);
    assert_eq!(opts, vec![(4, format!("miglab {}", env!("CARGO_PKG_VERSION")).into_bytes())]);
}

#[test]
fn each_session_gets_an_interface_named_after_it_before_its_first_packet() {
    let file = written(&[
        record("source", Dir::C2s, &[0; 16], 0, 0),
        record("source", Dir::S2c, &[0; 20], 0, 0),
        record("destination", Dir::C2s, &[0; 16], 0, 0),
    ]);
    let kinds: Vec<u32> = blocks(&file).iter().map(|b| b.0).collect();
    assert_eq!(kinds, [0x0A0D_0D0A, 1, 6, 6, 1, 6]);
    let b = blocks(&file);
    let idb = &b[1].1;
    assert_eq!(&idb[..8], &[147, 0, 0, 0, 0, 0, 4, 0], "LINKTYPE_USER0, reserved, a snap length of 256 KiB");
    assert_eq!(options(idb, 8), vec![(2, b"source".to_vec()), (9, vec![6])]);
    assert_eq!(options(&b[4].1, 8)[0], (2, b"destination".to_vec()));
    assert_eq!(u32::from_le_bytes(b[5].1[..4].try_into().unwrap()), 1, "the second interface");
}

#[test]
fn a_packet_carries_its_header_then_the_message_as_it_travelled() {
    let payload: Vec<u8> = (1..=20).collect();
    let file = written(&[record("conn1", Dir::S2c, &payload, 2, 0)]);
    let b = blocks(&file);
    let epb = &b[2].1;
    let word = |at: usize| u32::from_le_bytes(epb[at..at + 4].try_into().unwrap());
    assert_eq!(word(0), 0, "interface 0");
    let us = (u64::from(word(4)) << 32) | u64::from(word(8));
    assert_eq!(us, 1_700_000_000_000_000, "the first line without t is at the clock");
    let captured = 16 + 5 + 16 + 20;
    assert_eq!((word(12), word(16)), (captured, captured), "captured whole");
    let data = &epb[20..20 + captured as usize];
    assert_eq!(&data[..16], b"vfuT\x01\x01\x02\x00\x24\x00\x00\x00\x05\x00\x00\x00");
    assert_eq!(&data[16..21], b"conn1");
    assert_eq!(&data[21..37], &[2, 1, 9, 0, 36, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], "the vfio-user header");
    assert_eq!(&data[37..], &payload[..]);
    let after = 20 + (captured as usize).next_multiple_of(4);
    assert_eq!(options(epb, after), vec![(2, 2u32.to_le_bytes().to_vec())], "outbound: to the client");
}

#[test]
fn a_cut_payload_is_captured_shorter_than_its_original_length_and_says_so() {
    let payload = vec![0x5a; 300];
    let cut = record("s", Dir::C2s, &payload, 0, 100);
    let file = written(std::slice::from_ref(&cut));
    let b = blocks(&file);
    let epb = &b[2].1;
    let word = |at: usize| u32::from_le_bytes(epb[at..at + 4].try_into().unwrap());
    assert_eq!((word(12), word(16)), (16 + 1 + 16 + 100, 16 + 1 + 16 + 300));
    assert_eq!(&epb[20 + 8..20 + 12], &316u32.to_le_bytes(), "the whole message's length");
    assert_eq!(&epb[20 + 14..20 + 16], &[1, 0], "flag: cut by the trace");
    let opts = options(epb, 20 + (16 + 1 + 16 + 100usize).next_multiple_of(4));
    let comment = format!("the trace kept 100 of 300 payload bytes, xxh3 {:016x}", cut.payload_xxh3.unwrap());
    assert_eq!(opts, vec![(2, 1u32.to_le_bytes().to_vec()), (1, comment.into_bytes())]);
}

#[test]
fn timestamps_follow_t_after_the_clock_of_a_tap_event() {
    let mut a = record("s", Dir::C2s, &[], 0, 0);
    a.t = Some(250);
    let trace = format!(
        "{{\"event\": \"tap\", \"listen\": \"x\", \"unix_us\": 1000000}}\n{}\nnot json\n{}\n",
        a.to_line(),
        record("s", Dir::S2c, &[], 0, 0).to_line()
    );
    let mut out = Vec::new();
    let stats = trace_to_pcapng(trace.as_bytes(), &mut out).unwrap();
    assert_eq!(stats, PcapngStats { packets: 2, events: 1, malformed: 1 });
    let stamps: Vec<u64> = blocks(&out)
        .iter()
        .filter(|b| b.0 == 6)
        .map(|(_, e)| {
            let w = |at: usize| u64::from(u32::from_le_bytes(e[at..at + 4].try_into().unwrap()));
            (w(4) << 32) | w(8)
        })
        .collect();
    assert_eq!(stamps, [1_000_250, 1_000_251]);
}

#[test]
fn a_message_longer_than_wireshark_reads_is_captured_up_to_its_limit() {
    let payload = vec![7u8; 1 << 20];
    let whole = record("s", Dir::S2c, &payload, 0, 0);
    let file = written(std::slice::from_ref(&whole));
    let b = blocks(&file);
    let epb = &b[2].1;
    let word = |at: usize| u32::from_le_bytes(epb[at..at + 4].try_into().unwrap()) as usize;
    assert_eq!((word(12), word(16)), (MAX_CAPTURE, 16 + 1 + 16 + (1 << 20)));
    assert_eq!(&epb[20 + 14..20 + 16], &[1, 0], "flag: cut");
    let opts = options(epb, 20 + MAX_CAPTURE);
    let comment = format!(
        "the capture kept {} of {} payload bytes, xxh3 {:016x}",
        MAX_CAPTURE - 33,
        1 << 20,
        xxhash_rust::xxh3::xxh3_64(&payload)
    );
    assert_eq!(opts[1], (1, comment.into_bytes()));
}
