//! PRE_COPY and STOP_COPY are one stream: a client that reads a pre-copy round only in part,
//! in pieces that cut records anywhere, and then switches over gets the rest first in
//! STOP_COPY, without repeats or gaps. QEMU reads one buffer per pre-copy iteration and may
//! switch over with pre-copy data unread, so this is what it relies on.

use proptest::prelude::*;
use rstest::rstest;

use super::REGION_DEVMEM;
use super::migration_tests::{DEVMEM, PAGES, devmem_pages, records, resume, rig};
use super::pages::PAGE_SIZE;
use super::stream::{MAX_RECORD_LEN, RECORD_HEADER_LEN, RecordType};
use super::test_rig::Rig;
use crate::migration::MigState::{PreCopy, Resuming, Stop, StopCopy};
use crate::migration::Migratable;

/// Length of the HEADER record, the first of every stream.
const HEADER_LEN: usize = RECORD_HEADER_LEN + 24;

impl Rig {
    /// Reads up to `bytes` bytes in reads of at most `chunk` bytes, the last one cut to fit;
    /// fewer if a short read ends the round first.
    fn read_bytes(&mut self, bytes: usize, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        while out.len() < bytes {
            let want = chunk.min(bytes - out.len());
            let n = self.dev.read_data(&mut buf[..want]).unwrap();
            out.extend_from_slice(&buf[..n]);
            if n < want {
                break;
            }
        }
        out
    }

    /// The source's whole stream when it switches over after `cut` pre-copy bytes, read in
    /// pieces of `pre` bytes before the switchover and `stop` bytes after it, and its snapshot
    /// on entering STOP_COPY.
    fn switch_over_after(&mut self, cut: usize, pre: usize, stop: usize) -> (Vec<u8>, super::DmaEngineSnapshot) {
        self.dirty_everything();
        self.walk(&[PreCopy]);
        let mut stream = self.read_bytes(cut, pre);
        self.walk(&[StopCopy]);
        let snap = self.dev.snapshot();
        stream.extend(self.read_round(stop));
        (stream, snap)
    }
}

#[rstest]
#[case::nothing_read(0, 1, 4096)]
#[case::inside_the_header_record(5, 5, 64)]
#[case::after_the_header_record(HEADER_LEN, 7, 4096)]
#[case::inside_a_page_record_header(HEADER_LEN + 3, 64, 333)]
#[case::inside_a_page_payload(HEADER_LEN + MAX_RECORD_LEN + 1000, 13, 1)]
#[case::on_a_record_boundary(HEADER_LEN + 2 * MAX_RECORD_LEN, MAX_RECORD_LEN, 4096)]
#[case::cut_by_an_odd_read_size(30_000, 61, 4097)]
#[case::one_byte_short_of_the_round(HEADER_LEN + PAGES * MAX_RECORD_LEN - 1, 1 << 20, 64)]
#[case::the_whole_round(usize::MAX, 1 << 20, 4096)]
fn unread_pre_copy_data_comes_first_in_stop_copy(#[case] cut: usize, #[case] pre: usize, #[case] stop: usize) {
    let (stream, snap) = rig().switch_over_after(cut, pre, stop);
    let recs = records(&stream);
    assert_eq!(recs.first().map(|r| r.0), Some(RecordType::Header as u32), "the header once, first");
    assert_eq!(recs.iter().filter(|r| r.0 == RecordType::Header as u32).count(), 1);
    let mut pages = devmem_pages(&stream);
    pages.sort_unstable();
    assert_eq!(pages, (0..PAGES as u64).collect::<Vec<_>>(), "every page once: no repeats, no gaps");
    let (dst, r) = resume(&stream, DEVMEM);
    assert_eq!(r, Ok(()));
    assert_eq!(dst.dev.snapshot(), snap);
}

#[test]
fn a_round_read_in_part_goes_on_in_the_next_iteration() {
    let mut src = rig();
    // Every page written first, so each goes as a page record of its own (never-written ones
    // would go as one zero run at the start).
    src.dirty_everything();
    src.walk(&[PreCopy]);
    let mut stream = src.read_bytes(HEADER_LEN + 3 * MAX_RECORD_LEN + 100, 64);
    src.write(REGION_DEVMEM, PAGE_SIZE + 9, &[7; 3]).unwrap();
    src.write(REGION_DEVMEM, 10 * PAGE_SIZE, &[8; 3]).unwrap();
    stream.extend(src.read_round(48));
    let mut want: Vec<u64> = (0..PAGES as u64).collect();
    want.insert(1, 1);
    let mut pages = devmem_pages(&stream);
    pages.sort_unstable();
    assert_eq!(pages, want, "page 1 again (written after it was sent), page 10 once (written before)");
    src.walk(&[StopCopy]);
    let snap = src.dev.snapshot();
    stream.extend(src.read_round(4096));
    let (dst, r) = resume(&stream, DEVMEM);
    assert_eq!(r, Ok(()));
    assert_eq!(dst.dev.snapshot(), snap);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The bytes of the stream depend on where the client switched over, never on the sizes
    /// of its reads.
    #[test]
    fn the_stream_does_not_depend_on_the_read_sizes(
        cut in 0usize..HEADER_LEN + PAGES * MAX_RECORD_LEN + 10,
        pre in prop_oneof![1usize..=64, 65usize..=9000, Just(1 << 20)],
        stop in prop_oneof![1usize..=64, 65usize..=9000],
    ) {
        let (stream, snap) = rig().switch_over_after(cut, pre, stop);
        let (reference, _) = rig().switch_over_after(cut, cut.max(1), 1 << 20);
        prop_assert!(stream == reference, "{} bytes against {}", stream.len(), reference.len());
        let mut dst = rig();
        dst.walk(&[Stop, Resuming]);
        dst.write_stream(&stream, cut as u64);
        prop_assert_eq!(dst.arc(Resuming, Stop), Ok(()));
        prop_assert_eq!(dst.dev.snapshot(), snap);
    }
}
