//! Specifications of the migration stream: round trips over every transport, and every kind of
//! damage detected and reported, never accepted.

use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::thread;

use proptest::prelude::*;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::format::{chain_digest, head_checksum, head_fields};
use super::*;

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE_SIZE]
}

/// Sections of every kind but Complete, in QEMU's order: setup, two precopy rounds (one with an
/// empty device pass, one ending in init-data-sent), stop-and-copy, config. `big` makes the RAM
/// section and a device chunk as large as the format allows.
fn every_kind(big: bool) -> Vec<Section> {
    let ram_pages = if big { MAX_RAM_PAGES } else { 1 };
    let chunk = if big { MAX_DEVICE_CHUNK } else { 100 };
    vec![
        Section::DeviceSetup,
        Section::DeviceEnd,
        Section::Ram { pages: vec![(0, page(1)), (0x7000, page(2))] },
        Section::DeviceData((0..chunk).map(|i| i as u8).collect()),
        Section::DeviceData(Vec::new()),
        Section::DeviceEnd,
        Section::RoundEnd { round: 0 },
        Section::DeviceEnd,
        Section::Ram { pages: (0..ram_pages).map(|i| (i as u64 * 3 * PAGE_SIZE as u64, page(i as u8))).collect() },
        Section::DeviceData(b"dirty device state".to_vec()),
        Section::DeviceInitDataSent,
        Section::RoundEnd { round: 1 },
        Section::Ram { pages: Vec::new() },
        Section::DeviceData(b"stop-copy state".to_vec()),
        Section::DeviceEnd,
        Section::DeviceConfig(b"config space".to_vec()),
        Section::DeviceEnd,
    ]
}

/// A small stream of every kind but RAM, plus one RAM page, to damage byte by byte.
fn small_stream() -> Vec<Section> {
    vec![
        Section::DeviceSetup,
        Section::DeviceEnd,
        Section::Ram { pages: vec![(0x2000, page(0x5a))] },
        Section::DeviceData(b"chunk".to_vec()),
        Section::DeviceInitDataSent,
        Section::RoundEnd { round: 7 },
        Section::DeviceData(b"last".to_vec()),
        Section::DeviceEnd,
        Section::DeviceConfig(b"cfg".to_vec()),
        Section::DeviceEnd,
    ]
}

/// `sections` written to a buffer and completed.
fn encode(sections: &[Section]) -> Vec<u8> {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    for section in sections {
        writer.write(section).unwrap();
    }
    writer.finish().unwrap()
}

/// Every section read from `input` up to Complete, and how reading ended.
fn read_all(input: impl Read) -> (Vec<Section>, Result<(), StreamError>) {
    let mut reader = match StreamReader::new(input) {
        Ok(reader) => reader,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut sections = Vec::new();
    loop {
        match reader.read_section() {
            Ok(section) => {
                let complete = matches!(section, Section::Complete { .. });
                sections.push(section);
                if complete {
                    assert!(reader.is_complete());
                    return (sections, Ok(()));
                }
            }
            Err(e) => {
                assert!(!reader.is_complete());
                assert!(matches!(reader.read_section(), Err(StreamError::Closed)), "a failed stream stays failed");
                return (sections, Err(e));
            }
        }
    }
}

/// Where each section of an encoded stream starts, and the stream's end.
fn section_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        starts.push(at);
        let len = u64::from_be_bytes(bytes[at + 16..at + 24].try_into().unwrap()) as usize;
        at += SECTION_HEAD_LEN + len + SECTION_TRAILER_LEN;
    }
    assert_eq!(at, bytes.len());
    starts.push(at);
    starts
}

/// The stream header as [`StreamWriter`] writes it.
fn header() -> Vec<u8> {
    let mut header = StreamWriter::new(Vec::new()).unwrap().finish().unwrap();
    header.truncate(HEADER_LEN);
    header
}

/// A section with any fields, checksummed as a writer would (a forgery of the format's rules).
fn raw_section(seq: u64, tag: u64, len: u64, payload: &[u8]) -> Vec<u8> {
    let fields = head_fields(seq, tag, len);
    let head_sum = head_checksum(&fields);
    let mut bytes = fields.to_vec();
    bytes.extend_from_slice(&head_sum.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(&xxh3_64_with_seed(payload, head_sum).to_be_bytes());
    bytes
}

/// The header followed by `sections`, each a (tag, payload) numbered in order.
fn forged(sections: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = header();
    for (seq, (tag, payload)) in sections.iter().enumerate() {
        bytes.extend(raw_section(seq as u64, *tag, payload.len() as u64, payload));
    }
    bytes
}

fn round_trip_over(transport: Transport) {
    let (source, destination) = connected_pair(&transport).unwrap();
    let sections = every_kind(true);
    let expected = sections.clone();
    let reader = thread::spawn(move || read_all(destination));

    let mut writer = StreamWriter::new(source).unwrap();
    for section in &sections {
        writer.write(section).unwrap();
    }
    let (count, digest) = (writer.sections(), writer.digest());
    drop(writer.finish().unwrap());

    let (got, result) = reader.join().unwrap();
    result.unwrap();
    assert_eq!(got.len(), expected.len() + 1);
    assert!(got[..expected.len()] == expected[..], "sections differ after the trip");
    assert_eq!(got.last(), Some(&Section::Complete { sections: count, digest }));
    assert_eq!(count, expected.len() as u64);
}

#[test]
fn every_section_kind_round_trips_over_a_pipe() {
    round_trip_over(Transport::Pipe);
}

#[test]
fn every_section_kind_round_trips_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    round_trip_over(Transport::Unix(dir.path().join("migration.sock")));
}

#[test]
fn every_section_kind_round_trips_over_tcp_loopback() {
    round_trip_over(Transport::Tcp);
}

#[test]
fn every_section_kind_round_trips_in_memory_and_iterates() {
    let sections = every_kind(false);
    let bytes = encode(&sections);
    let reader = StreamReader::new(&bytes[..]).unwrap();
    let got: Vec<Section> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(got[..sections.len()], sections[..]);
    assert!(matches!(got.last(), Some(Section::Complete { .. })));
}

#[test]
fn device_data_frames_carry_qemus_flag_and_be64_size() {
    let bytes = encode(&[Section::DeviceData(b"abc".to_vec()), Section::DeviceEnd]);
    let at = HEADER_LEN;
    assert_eq!(bytes[at + 8..at + 16], 0xffff_ffff_ef10_0004u64.to_be_bytes());
    assert_eq!(bytes[at + 16..at + 24], 3u64.to_be_bytes());
    assert_eq!(&bytes[at + 32..at + 35], b"abc");
}

#[test]
fn round_end_reaches_a_live_destination_before_the_source_goes_on() {
    let (source, destination) = connected_pair(&Transport::Pipe).unwrap();
    let (seen_tx, seen_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut reader = StreamReader::new(destination).unwrap();
        loop {
            match reader.read_section().unwrap() {
                Section::RoundEnd { round } => seen_tx.send(round).unwrap(),
                Section::Complete { .. } => return,
                _ => {}
            }
        }
    });
    let mut writer = StreamWriter::new(source).unwrap();
    for round in 0..3 {
        writer.write_ram(&[(0x1000, &page(round as u8))]).unwrap();
        writer.write(&Section::RoundEnd { round }).unwrap();
        // The source has not written anything more: the round end must have been flushed.
        assert_eq!(seen_rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), round);
    }
    drop(writer.finish().unwrap());
    reader.join().unwrap();
}

#[test]
fn cut_stream_is_truncated() {
    let bytes = encode(&every_kind(false));
    let starts = section_starts(&bytes);
    let cuts = (0..bytes.len()).step_by(61).chain(starts.iter().copied()).chain([bytes.len() - 1]);
    for cut in cuts.filter(|&cut| cut < bytes.len()) {
        let (_, result) = read_all(&bytes[..cut]);
        let whole_sections = starts.iter().skip(1).filter(|&&end| end <= cut).count() as u64;
        match result {
            Err(StreamError::Truncated { after_sections }) => {
                assert_eq!(after_sections, whole_sections, "cut at {cut}")
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn cut_connection_is_truncated_while_the_source_lives_on() {
    let sections = every_kind(false);
    let bytes = encode(&sections);
    let starts = section_starts(&bytes);
    for after in [0, 3, HEADER_LEN as u64, starts[5] as u64 + 40, starts[starts.len() - 2] as u64] {
        let (source, destination) = connected_pair(&Transport::Pipe).unwrap();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let sections = sections.clone();
        let source = thread::spawn(move || {
            let faulty = FaultyWriter::new(source, StreamFault::Cut { after });
            let result = StreamWriter::new(faulty).and_then(|mut writer| {
                let written = sections.iter().try_for_each(|s| writer.write(s)).and_then(|()| writer.flush());
                // Keep the writer (and so the source process) alive until the destination is done.
                done_rx.recv().unwrap();
                written.and_then(|()| writer.finish().map(drop))
            });
            assert!(matches!(result, Err(StreamError::Io(ref e)) if e.kind() == io::ErrorKind::BrokenPipe));
        });
        let (_, result) = read_all(destination);
        assert!(matches!(result, Err(StreamError::Truncated { .. })), "cut after {after}: {result:?}");
        let _ = done_tx.send(()); // the source may have failed before it waits
        source.join().unwrap();
    }
}

#[test]
fn flipped_byte_is_a_checksum_error_naming_the_section() {
    let bytes = encode(&small_stream());
    let starts = section_starts(&bytes);
    for at in 0..bytes.len() {
        for xor in [0xff, 0x01, 0x80] {
            let mut damaged = bytes.clone();
            damaged[at] ^= xor;
            let (_, result) = read_all(&damaged[..]);
            let error = result.expect_err("a damaged stream was accepted");
            assert!(error.is_damage(), "{error:?}");
            if at < HEADER_LEN {
                assert!(
                    matches!(
                        error,
                        StreamError::BadMagic { .. } | StreamError::Version { .. } | StreamError::Malformed { .. }
                    ),
                    "header byte {at}: {error:?}"
                );
                continue;
            }
            let section = starts.iter().rposition(|&start| start <= at).unwrap();
            match error {
                StreamError::Checksum { section: s, offset } => {
                    assert_eq!((s, offset), (section as u64, starts[section] as u64), "byte {at} ^ {xor:#x}")
                }
                other => panic!("byte {at} ^ {xor:#x} in section {section}: {other:?}"),
            }
        }
    }
}

#[test]
fn faulty_writer_flips_land_in_the_named_section() {
    let sections = small_stream();
    let starts = section_starts(&encode(&sections));
    for (index, &start) in starts[..starts.len() - 1].iter().enumerate() {
        for at in [start, start + 20, start + 33] {
            let faulty = FaultyWriter::new(Vec::new(), StreamFault::FlipByte { at: at as u64, xor: 0x10 });
            let mut writer = StreamWriter::new(faulty).unwrap();
            sections.iter().for_each(|s| writer.write(s).unwrap());
            let faulty = writer.finish().unwrap();
            assert!(faulty.fired());
            let damaged = faulty.into_inner().unwrap();
            let (_, result) = read_all(&damaged[..]);
            assert!(
                matches!(result, Err(StreamError::Checksum { section, .. }) if section == index as u64),
                "flip at {at}: {result:?}"
            );
        }
    }
}

#[test]
fn duplicated_section_is_detected() {
    let sections = small_stream();
    let total = sections.len() as u64 + 1; // and Complete
    for index in 0..total {
        let faulty = FaultyWriter::new(Vec::new(), StreamFault::DuplicateSection { index });
        let mut writer = StreamWriter::new(faulty).unwrap();
        sections.iter().for_each(|s| writer.write(s).unwrap());
        let faulty = writer.finish().unwrap();
        assert!(faulty.fired(), "section {index} was not repeated");
        let repeated = faulty.into_inner().unwrap();
        let (read, result) = read_all(&repeated[..]);
        if index + 1 == total {
            // A repeated Complete comes after the end: the stream was whole, nothing past it is read.
            result.unwrap();
            continue;
        }
        match result {
            Err(StreamError::OutOfSequence { expected, got, .. }) => {
                assert_eq!((expected, got), (index + 1, index));
                assert_eq!(read.len() as u64, index + 1, "the sections before the repeat were good");
            }
            other => panic!("section {index} repeated: {other:?}"),
        }
    }
}

#[test]
fn dropped_section_is_detected() {
    let bytes = encode(&small_stream());
    let starts = section_starts(&bytes);
    let mut dropped = bytes[..starts[3]].to_vec();
    dropped.extend_from_slice(&bytes[starts[4]..]);
    let (_, result) = read_all(&dropped[..]);
    assert!(matches!(result, Err(StreamError::OutOfSequence { expected: 3, got: 4, .. })), "{result:?}");
}

#[test]
fn complete_with_wrong_count_or_digest_is_rejected() {
    let ram = {
        let mut payload = 1u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&0x3000u64.to_be_bytes());
        payload.extend_from_slice(&page(9));
        payload
    };
    let good_sum = {
        let fields = head_fields(0, TAG_RAM, ram.len() as u64);
        xxh3_64_with_seed(&ram, head_checksum(&fields))
    };
    let good_digest = chain_digest(0, good_sum);
    let complete = |sections: u64, digest: u64| {
        let mut payload = sections.to_be_bytes().to_vec();
        payload.extend_from_slice(&digest.to_be_bytes());
        (TAG_COMPLETE, payload)
    };

    let (_, result) = read_all(&forged(&[(TAG_RAM, ram.clone()), complete(1, good_digest)])[..]);
    result.unwrap();
    for (sections, digest) in [(2, good_digest), (0, good_digest), (1, good_digest ^ 1), (1, 0)] {
        let (_, result) = read_all(&forged(&[(TAG_RAM, ram.clone()), complete(sections, digest)])[..]);
        match result {
            Err(StreamError::Integrity { sections_sent, digest_sent, sections_read, digest_read }) => {
                assert_eq!(
                    (sections_sent, digest_sent, sections_read, digest_read),
                    (sections, digest, 1, good_digest)
                );
            }
            other => panic!("Complete({sections}, {digest:#x}): {other:?}"),
        }
    }
}

#[test]
fn corrupt_length_never_allocates_beyond_max() {
    /// Counts the bytes taken from an endless stream of zeros.
    struct Endless(u64);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(0);
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    for (kind, len) in [
        (SectionKind::DeviceData, u64::MAX),
        (SectionKind::DeviceData, MAX_DEVICE_CHUNK as u64 + 1),
        (SectionKind::Ram, MAX_PAYLOAD as u64 + 1),
        (SectionKind::Abort, 1 << 40),
        (SectionKind::DeviceConfig, 1 << 62),
    ] {
        let mut bytes = header();
        let head = raw_section(0, kind.tag(), len, &[]);
        bytes.extend_from_slice(&head[..SECTION_HEAD_LEN]);
        let mut endless = Endless(0);
        let (_, result) = read_all((&bytes[..]).chain(&mut endless));
        match result {
            Err(StreamError::TooLarge { len: got, max }) => assert_eq!((got, max), (len, kind.max_payload() as u64)),
            other => panic!("{kind:?} of {len}: {other:?}"),
        }
        assert!(endless.0 <= 64 * 1024, "read {} bytes past a length it refused", endless.0);
    }

    // A length at the maximum is read, and no further: the payload's checksum fails.
    let mut bytes = header();
    bytes.extend_from_slice(&raw_section(0, TAG_RAM, MAX_PAYLOAD as u64, &[])[..SECTION_HEAD_LEN]);
    let mut endless = Endless(0);
    let (_, result) = read_all((&bytes[..]).chain(&mut endless));
    assert!(matches!(result, Err(StreamError::Checksum { section: 0, .. })), "{result:?}");
    assert!(endless.0 <= (MAX_PAYLOAD + 8 + 64 * 1024) as u64);

    // A fixed-size kind with a shorter length is refused before its payload is awaited.
    let mut bytes = header();
    bytes.extend_from_slice(&raw_section(0, TAG_ROUND_END, 3, &[])[..SECTION_HEAD_LEN]);
    let (_, result) = read_all(&bytes[..]);
    assert!(matches!(result, Err(StreamError::Malformed { offset, .. }) if offset == HEADER_LEN as u64 + 16));
}

#[test]
fn malformed_payloads_and_tags_are_reported() {
    let ram_with = |count: u32, addr: u64, pages: usize| {
        let mut payload = count.to_be_bytes().to_vec();
        for _ in 0..pages {
            payload.extend_from_slice(&addr.to_be_bytes());
            payload.extend_from_slice(&page(0));
        }
        payload
    };
    type Forged = Vec<(u64, Vec<u8>)>;
    let cases: Vec<(&str, Forged)> = vec![
        ("unknown tag", vec![(0x1234, Vec::new())]),
        ("page count above the real pages", vec![(TAG_RAM, ram_with(2, 0, 1))]),
        ("page count above the maximum", vec![(TAG_RAM, ram_with(u32::MAX, 0, 0))]),
        ("RAM shorter than its count", vec![(TAG_RAM, vec![0, 0])]),
        ("unaligned page", vec![(TAG_RAM, ram_with(1, 0x1001, 1))]),
        ("abort reason not UTF-8", vec![(TAG_ABORT, vec![0xff, 0xfe])]),
        ("data inside setup", vec![(VFIO_MIG_FLAG_DEV_SETUP_STATE, vec![]), (VFIO_MIG_FLAG_DEV_DATA_STATE, vec![1])]),
        ("round end inside a data phase", vec![(VFIO_MIG_FLAG_DEV_DATA_STATE, vec![1]), (TAG_ROUND_END, vec![0; 4])]),
        ("complete inside config", vec![(VFIO_MIG_FLAG_DEV_CONFIG_STATE, vec![1]), (TAG_COMPLETE, vec![0; 16])]),
    ];
    for (name, sections) in cases {
        let (_, result) = read_all(&forged(&sections)[..]);
        assert!(matches!(result, Err(StreamError::Malformed { .. })), "{name}: {result:?}");
    }
}

#[test]
fn a_zero_page_travels_as_its_address_alone_and_arrives_as_zeros() {
    let with_zero = Section::Ram { pages: vec![(0x1000, page(0)), (0x3000, page(7))] };
    let without = Section::Ram { pages: vec![(0x1000, page(9)), (0x3000, page(7))] };
    let (zero_stream, full_stream) = (encode(std::slice::from_ref(&with_zero)), encode(&[without]));
    assert_eq!(full_stream.len() - zero_stream.len(), PAGE_SIZE, "the zero page's bytes are not sent");
    let (sections, end) = read_all(&zero_stream[..]);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(sections.first(), Some(&with_zero));
}

#[test]
fn header_damage_is_reported_as_such() {
    let good = header();
    let (_, result) = read_all(&b"GARBAGE!and more bytes"[..]);
    assert!(matches!(result, Err(StreamError::BadMagic { got }) if &got == b"GARBAGE!"));
    let mut version = good.clone();
    version[8..12].copy_from_slice(&1u32.to_be_bytes());
    assert!(
        matches!(read_all(&version[..]).1, Err(StreamError::Version { got: 1 })),
        "version 1 sent zero pages whole"
    );
    let mut page_size = good.clone();
    page_size[12..16].copy_from_slice(&65536u32.to_be_bytes());
    assert!(matches!(read_all(&page_size[..]).1, Err(StreamError::Malformed { offset: 12, .. })));
    assert!(matches!(read_all(&good[..7]).1, Err(StreamError::Truncated { after_sections: 0 })));
    assert!(matches!(read_all(&good[..]).1, Err(StreamError::Truncated { after_sections: 0 })));
}

#[test]
fn abort_is_reported() {
    let (source, destination) = connected_pair(&Transport::Pipe).unwrap();
    let reader = thread::spawn(move || read_all(destination));
    let mut writer = StreamWriter::new(source).unwrap();
    writer.write(&Section::DeviceSetup).unwrap();
    writer.write(&Section::DeviceEnd).unwrap();
    writer.write_ram(&[(0, &page(3))]).unwrap();
    writer.write(&Section::DeviceData(b"half a pass".to_vec())).unwrap(); // an abort may cut a phase short
    let source = writer.abort("cancelled by the harness").unwrap();
    let (read, result) = reader.join().unwrap();
    drop(source);
    assert_eq!(read.len(), 4);
    match result {
        Err(error @ StreamError::Aborted { .. }) => {
            assert!(!error.is_damage());
            assert!(error.to_string().contains("cancelled by the harness"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn long_abort_reasons_are_cut_not_refused() {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write(&Section::Abort { reason: "x".repeat(3 * MAX_ABORT_REASON) }).unwrap();
    assert!(writer.is_closed());
    let bytes = writer.get_ref().clone();
    match read_all(&bytes[..]).1 {
        Err(StreamError::Aborted { reason }) => assert_eq!(reason.len(), MAX_ABORT_REASON),
        other => panic!("{other:?}"),
    }
}

#[test]
fn writer_refuses_what_the_format_does_not_allow_and_stays_usable() {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    let short = [0u8; 100];
    let full = page(0);
    let too_many: Vec<(u64, &[u8])> = (0..=MAX_RAM_PAGES).map(|i| (i as u64 * 4096, &full[..])).collect();
    assert!(matches!(writer.write_ram(&[(0, &short[..])]), Err(StreamError::Invalid { .. })));
    assert!(matches!(writer.write_ram(&[(8, &full[..])]), Err(StreamError::Invalid { .. })));
    assert!(matches!(writer.write_ram(&too_many), Err(StreamError::TooLarge { .. })));
    assert!(matches!(
        writer.write_device_data(&vec![0; MAX_DEVICE_CHUNK + 1]),
        Err(StreamError::TooLarge { len, max }) if len == MAX_DEVICE_CHUNK as u64 + 1 && max == MAX_DEVICE_CHUNK as u64
    ));
    assert!(matches!(writer.write(&Section::Complete { sections: 5, digest: 0 }), Err(StreamError::Invalid { .. })));
    writer.write(&Section::DeviceSetup).unwrap();
    assert!(matches!(writer.write(&Section::DeviceData(vec![1])), Err(StreamError::Invalid { .. })));
    assert!(matches!(writer.write(&Section::RoundEnd { round: 0 }), Err(StreamError::Invalid { .. })));
    writer.write(&Section::DeviceEnd).unwrap();
    assert_eq!(writer.sections(), 2);
    let bytes = writer.finish().unwrap();
    let (read, result) = read_all(&bytes[..]);
    result.unwrap();
    assert_eq!(
        read,
        vec![Section::DeviceSetup, Section::DeviceEnd, Section::Complete { sections: 2, digest: read_digest(&bytes) }]
    );
}

/// The digest a reader computes over every section of a complete stream.
fn read_digest(bytes: &[u8]) -> u64 {
    match StreamReader::new(bytes).unwrap().last() {
        Some(Ok(Section::Complete { digest, .. })) => digest,
        other => panic!("{other:?}"),
    }
}

#[test]
fn writer_is_closed_after_the_end_or_an_io_error() {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write(&Section::Complete { sections: 0, digest: 0 }).unwrap();
    assert!(matches!(writer.write(&Section::DeviceEnd), Err(StreamError::Closed)));

    let faulty = FaultyWriter::new(Vec::new(), StreamFault::Cut { after: HEADER_LEN as u64 + 10 });
    let mut writer = StreamWriter::new(faulty).unwrap();
    assert!(matches!(writer.write(&Section::RoundEnd { round: 0 }), Err(StreamError::Io(_))));
    assert!(writer.is_closed());
    assert!(matches!(writer.write(&Section::RoundEnd { round: 1 }), Err(StreamError::Closed)));
    assert!(matches!(writer.finish(), Err(StreamError::Closed)));
}

#[test]
fn reader_is_closed_after_complete() {
    let bytes = encode(&[]);
    let mut reader = StreamReader::new(&bytes[..]).unwrap();
    assert_eq!(reader.read_section().unwrap(), Section::Complete { sections: 0, digest: 0 });
    assert!(reader.is_complete());
    assert_eq!(reader.offset(), bytes.len() as u64);
    assert!(matches!(reader.read_section(), Err(StreamError::Closed)));
    assert!(reader.next().is_none());
}

#[test]
fn device_state_is_split_into_chunks_of_at_most_the_maximum() {
    let state: Vec<u8> = (0..2 * MAX_DEVICE_CHUNK + 10).map(|i| (i % 251) as u8).collect();
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    assert_eq!(writer.write_device_data_chunks(&state).unwrap(), 3);
    assert_eq!(writer.write_device_data_chunks(&[]).unwrap(), 0);
    writer.write(&Section::DeviceEnd).unwrap();
    let bytes = writer.finish().unwrap();
    let mut joined = Vec::new();
    for section in StreamReader::new(&bytes[..]).unwrap() {
        if let Section::DeviceData(chunk) = section.unwrap() {
            assert!(chunk.len() <= MAX_DEVICE_CHUNK);
            joined.extend(chunk);
        }
    }
    assert!(joined == state);
}

/// A writer whose output goes to a channel, so the test can see what was sent before a failure.
struct Sent(mpsc::Sender<Vec<u8>>);
impl Write for Sent {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf.to_vec()).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_sends_nothing_of_a_refused_section() {
    let (tx, rx) = mpsc::channel();
    let mut writer = StreamWriter::new(Sent(tx)).unwrap();
    let _ = writer.write(&Section::DeviceConfig(vec![0; MAX_DEVICE_CHUNK + 1]));
    let _ = writer.write_ram(&[(1, &page(0))]);
    writer.flush().unwrap();
    let sent: Vec<u8> = rx.try_iter().flatten().collect();
    assert_eq!(sent, header());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_or_pass_the_reader(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        with_header in any::<bool>(),
    ) {
        let mut input = if with_header { header() } else { Vec::new() };
        input.extend(bytes);
        let (_, result) = read_all(&input[..]);
        prop_assert!(result.is_err());
    }

    #[test]
    fn random_damage_to_a_stream_is_never_accepted(
        at in any::<proptest::sample::Index>(),
        xor in 1u8..,
        cut in any::<proptest::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = encode(&small_stream());
        let len = bytes.len();
        bytes[at.index(len)] ^= xor;
        if do_cut {
            bytes.truncate(cut.index(len));
        }
        let (_, result) = read_all(&bytes[..]);
        prop_assert!(result.as_ref().is_err_and(StreamError::is_damage), "{:?}", result);
    }

    #[test]
    fn random_sections_round_trip(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        pages in proptest::collection::vec((0u64..1 << 20, any::<u8>()), 0..4),
        round in any::<u32>(),
    ) {
        let mut sections: Vec<Section> = chunks.into_iter().map(Section::DeviceData).collect();
        sections.push(Section::DeviceEnd);
        sections.push(Section::Ram { pages: pages.into_iter().map(|(pfn, fill)| (pfn * PAGE_SIZE as u64, page(fill))).collect() });
        sections.push(Section::RoundEnd { round });
        let (read, result) = read_all(&encode(&sections)[..]);
        prop_assert!(result.is_ok());
        prop_assert_eq!(&read[..sections.len()], &sections[..]);
    }
}

#[test]
fn borrowed_sections_are_the_owned_ones_and_the_buffer_is_reused() {
    let sections = every_kind(true);
    let bytes = encode(&sections);
    let mut reader = StreamReader::new(&bytes[..]).unwrap();
    let mut got = Vec::new();
    loop {
        let section = reader.read_section_ref().unwrap().into_owned();
        let complete = matches!(section, Section::Complete { .. });
        got.push(section);
        if complete {
            break;
        }
    }
    assert!(reader.is_complete());
    assert_eq!(got[..sections.len()], sections[..]);
    assert!(matches!(reader.read_section_ref(), Err(StreamError::Closed)));
}

#[test]
fn a_borrowed_zero_page_reads_as_zeros() {
    let bytes = encode(&[Section::Ram { pages: vec![(0x3000, page(0)), (0x4000, page(9))] }]);
    let mut reader = StreamReader::new(&bytes[..]).unwrap();
    match reader.read_section_ref().unwrap() {
        SectionRef::Ram(pages) => assert_eq!(pages, vec![(0x3000, &page(0)[..]), (0x4000, &page(9)[..])]),
        other => panic!("expected RAM, got {other:?}"),
    }
}

#[test]
fn a_borrowed_section_that_fails_ends_the_stream() {
    let mut bytes = encode(&small_stream());
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // Complete's sum
    let mut reader = StreamReader::new(&bytes[..]).unwrap();
    let err = loop {
        if let Err(e) = reader.read_section_ref() {
            break e;
        }
    };
    assert!(matches!(err, StreamError::Checksum { .. }), "{err:?}");
    assert!(!reader.is_complete());
    assert!(matches!(reader.read_section_ref(), Err(StreamError::Closed)));
}

#[test]
fn the_writer_counts_every_byte_it_writes() {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    for section in every_kind(true) {
        writer.write(&section).unwrap();
    }
    let counted = writer.bytes();
    let bytes = writer.finish().unwrap();
    assert_eq!(counted + (SECTION_HEAD_LEN + 16 + SECTION_TRAILER_LEN) as u64, bytes.len() as u64);
}
