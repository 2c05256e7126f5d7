//! Tests of the dirty log: START parameters, marking, and reports at every page size checked
//! against a naive model.

use super::*;
use proptest::prelude::*;
use rstest::rstest;

const K4: u64 = 4096;

fn log(page: u64, ranges: &[(u64, u64)]) -> DirtyLog {
    DirtyLog::start(page, ranges, &[]).unwrap()
}

fn bits(words: &[u64]) -> Vec<u64> {
    (0..words.len() as u64 * 64).filter(|i| words[(*i / 64) as usize] >> (i % 64) & 1 == 1).collect()
}

/// What a report must say: output bit i is set iff a dirty tracked page meets its bytes.
fn model(dirty_pages: &[u64], l: u64, iova: u64, length: u64, p: u64) -> Vec<u64> {
    let end = iova + length;
    let mut out: Vec<u64> = Vec::new();
    for i in 0..length.div_ceil(p) {
        let (a, b) = (iova + i * p, (iova + (i + 1) * p).min(end));
        if dirty_pages.iter().any(|t| t * l < b && (t + 1) * l > a) {
            out.push(i);
        }
    }
    out
}

mod start {
    use super::*;

    #[test]
    fn page_size_zero_is_refused() {
        assert_eq!(DirtyLog::start(0, &[(0, K4)], &[]).unwrap_err().errno(), Errno::EINVAL);
    }

    #[rstest]
    #[case(1, K4)]
    #[case(4096, K4)]
    #[case(5000, 8192)]
    #[case(1 << 21, 1 << 21)]
    #[case(u64::MAX, MAX_PAGE_SIZE)]
    fn page_size_hint_is_rounded_to_a_supported_power_of_two(#[case] hint: u64, #[case] chosen: u64) {
        assert_eq!(log(hint, &[(0, 1 << 30)]).page_size(), chosen);
    }

    #[test]
    fn huge_ranges_get_a_page_size_that_bounds_the_bitmap() {
        let l = log(K4, &[(0, 1 << 50)]);
        assert!(l.page_size() > K4);
        assert!(l.bitmap_bytes() as u64 <= MAX_BITMAP_BYTES, "{} bytes", l.bitmap_bytes());
    }

    /// Found by replaying the `session` fuzzer's inputs: one range over the whole address
    /// space took 4 GiB of bitmaps at the largest page size.
    #[test]
    fn ranges_too_large_for_the_bound_at_the_largest_page_size_are_e2big() {
        let err = DirtyLog::start(K4, &[(0, u64::MAX)], &[]).unwrap_err();
        assert!(matches!(err, LogError::RangesTooLarge { need: 4294967296 }), "{err:?}");
        assert_eq!(err.errno(), Errno::E2BIG);
        let l = log(K4, &[(0, 1 << 60)]);
        assert_eq!((l.page_size(), l.bitmap_bytes() as u64), (MAX_PAGE_SIZE, MAX_BITMAP_BYTES));
    }

    #[rstest]
    #[case::empty(&[(0x1000, 0)])]
    #[case::wraps(&[(u64::MAX - 10, 100)])]
    #[case::overlap(&[(0, 0x3000), (0x2000, 0x1000)])]
    fn bad_ranges_are_einval(#[case] ranges: &[(u64, u64)]) {
        assert_eq!(DirtyLog::start(K4, ranges, &[]).unwrap_err().errno(), Errno::EINVAL);
    }

    #[test]
    fn too_many_ranges_is_e2big() {
        let ranges: Vec<_> = (0..MAX_RANGES as u64 + 1).map(|i| (i * 2 * K4, K4)).collect();
        assert_eq!(DirtyLog::start(K4, &ranges, &[]).unwrap_err().errno(), Errno::E2BIG);
    }

    #[test]
    fn no_ranges_logs_every_mapped_region() {
        let l = DirtyLog::start(K4, &[], &[(0x10000, 0x4000), (0x100000, 0x1000)]).unwrap();
        assert_eq!(l.range_count(), 2);
        l.mark(0x100000, 1);
        assert_eq!(bits(&l.report(0x100000, 0x1000, K4, 8).unwrap()), vec![0]);
    }

    #[test]
    fn identical_second_start_is_recognised() {
        let l = log(K4, &[(0, 0x10000)]);
        assert!(l.same_request(K4, &[(0, 0x10000)]));
        assert!(!l.same_request(8192, &[(0, 0x10000)]));
        assert!(!l.same_request(K4, &[(0, 0x20000)]));
    }
}

mod report {
    use super::*;

    #[test]
    fn marked_pages_are_reported_once_then_cleared() {
        let l = log(K4, &[(0, 0x100000)]);
        l.mark(0x3000, 0x2001);
        assert_eq!(bits(&l.report(0, 0x100000, K4, 1 << 20).unwrap()), vec![3, 4, 5]);
        assert_eq!(bits(&l.report(0, 0x100000, K4, 1 << 20).unwrap()), Vec::<u64>::new());
    }

    #[rstest]
    #[case::first(0)]
    #[case::bit_63(63)]
    #[case::bit_64(64)]
    #[case::bit_65(65)]
    #[case::last(199)]
    fn edge_bits_land_where_they_belong(#[case] page: u64) {
        let l = log(K4, &[(0, 200 * K4)]);
        l.mark(page * K4 + 17, 1);
        let out = l.report(0, 200 * K4, K4, 1 << 20).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(bits(&out), vec![page]);
    }

    #[test]
    fn bits_past_the_range_are_zero() {
        let l = log(K4, &[(0, 200 * K4)]);
        l.mark(0, 200 * K4);
        let out = l.report(0, 70 * K4, K4, 1 << 20).unwrap();
        assert_eq!(out, vec![u64::MAX, 0x3f]);
        // Pages after the report were not cleared.
        assert_eq!(bits(&l.report(70 * K4, 2 * K4, K4, 8).unwrap()), vec![0, 1]);
    }

    #[test]
    fn logging_off_parts_and_unlogged_ranges_are_refused() {
        let l = log(K4, &[(0x10000, 0x10000)]);
        assert_eq!(l.report(0x8000, 0x10000, K4, 64).unwrap_err().errno(), Errno::EINVAL);
        assert_eq!(l.report(0x10000, 0, K4, 64).unwrap_err().errno(), Errno::EINVAL);
        assert_eq!(l.report(0x10000, 0x1000, 3000, 64).unwrap_err().errno(), Errno::EINVAL);
        assert_eq!(l.report(0x10000, 0x1000, 0, 64).unwrap_err().errno(), Errno::EINVAL);
    }

    #[test]
    fn a_report_larger_than_the_clients_room_is_refused() {
        let l = log(K4, &[(0, 1 << 30)]);
        assert!(matches!(l.report(0, 1 << 30, K4, 8), Err(LogError::ReportTooLarge { need: 32768, room: 8 })));
    }

    #[rstest]
    #[case::half(K4 / 2)]
    #[case::same(K4)]
    #[case::double(2 * K4)]
    #[case::sixteen(16 * K4)]
    #[case::huge_page(512 * K4)]
    fn report_at_other_page_sizes_matches_the_model(#[case] p: u64) {
        let l = log(K4, &[(0, 1 << 30)]);
        let dirty: Vec<u64> = vec![0, 1, 63, 64, 65, 511, 512, 4095, 4096, 10_000, 70_000];
        for t in &dirty {
            l.mark(t * K4, 1);
        }
        let length = 100_000 * K4;
        let got = bits(&l.report(0, length, p, 1 << 26).unwrap());
        assert_eq!(got, model(&dirty, K4, 0, length, p));
    }

    #[test]
    fn thousands_of_repeated_bits_in_the_small_page_direction() {
        let l = log(64 * K4, &[(0, 1 << 30)]);
        l.mark(0, 3 * 64 * K4);
        let got = bits(&l.report(0, 3 * 64 * K4, K4, 1 << 20).unwrap());
        assert_eq!(got, (0..192).collect::<Vec<_>>(), "each 256 KiB page repeats into 64 bits");
        let l = log(K4, &[(0, 1 << 30)]);
        l.mark(0, 5000 * K4);
        let got = bits(&l.report(0, 6000 * K4, K4 / 4, 1 << 20).unwrap());
        assert_eq!(got, (0..20_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_report_over_two_ranges_spanning_two_regions_is_whole() {
        let l = DirtyLog::start(K4, &[], &[(0, 0x4000), (0x4000, 0x4000)]).unwrap();
        l.mark(0x3000, 0x2000);
        assert_eq!(bits(&l.report(0, 0x8000, K4, 8).unwrap()), vec![3, 4]);
    }

    #[test]
    fn a_partly_covered_tracked_page_is_reported_and_kept() {
        let l = log(8 * K4, &[(0, 1 << 20)]);
        l.mark(0, 1);
        assert_eq!(bits(&l.report(0, 4 * K4, K4, 8).unwrap()), vec![0, 1, 2, 3]);
        assert_eq!(bits(&l.report(4 * K4, 4 * K4, K4, 8).unwrap()), vec![0, 1, 2, 3], "other half still sees it");
        assert_eq!(bits(&l.report(0, 8 * K4, 8 * K4, 8).unwrap()), vec![0]);
        assert_eq!(bits(&l.report(0, 8 * K4, 8 * K4, 8).unwrap()), Vec::<u64>::new());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn any_page_size_and_offset_matches_the_model(
            l_shift in 12u32..17,
            p_shift in 9u32..23,
            start_page in 0u64..200,
            sub_offset in 0u64..4096,
            length in 1u64..(5000 * 4096),
            dirty in proptest::collection::vec(0u64..8000, 0..64),
        ) {
            let l = 1u64 << l_shift;
            let p = 1u64 << p_shift;
            let log = log(l, &[(0, 1 << 40)]);
            for t in &dirty {
                log.mark(t * l + (t % 7), 1);
            }
            let iova = start_page * 4096 + (sub_offset & !(p.min(4096) - 1));
            let got = bits(&log.report(iova, length, p, 1 << 26).unwrap());
            let mut pages = dirty.clone();
            pages.sort_unstable();
            pages.dedup();
            prop_assert_eq!(got, model(&pages, l, iova, length, p));
        }
    }
}

mod mapping {
    use super::*;

    #[test]
    fn a_region_mapped_while_logging_everything_is_logged_from_its_first_write() {
        let mut l = DirtyLog::start(K4, &[], &[(0, 0x1000)]).unwrap();
        l.region_mapped(0x100000, 0x2000).unwrap();
        l.mark(0x101000, 8);
        assert_eq!(bits(&l.report(0x100000, 0x2000, K4, 8).unwrap()), vec![1]);
    }

    /// Found by the `session` fuzzer: a mapping without an fd of 16 EiB while logging
    /// everything asked for a 130 TiB bitmap, and the allocation failure aborted the server.
    #[test]
    fn a_mapping_whose_bitmap_would_pass_the_bound_is_refused_and_changes_nothing() {
        let mut l = DirtyLog::start(K4, &[], &[(0, 0x1000)]).unwrap();
        let before = l.bitmap_bytes();
        let err = l.region_mapped(0x1_0000_0000, 0x4141_4141_4141_4000).unwrap_err();
        assert!(matches!(err, LogError::MappingTooLarge { iova: 0x1_0000_0000, .. }), "{err:?}");
        assert_eq!(err.errno(), Errno::ENOMEM);
        assert_eq!((l.range_count(), l.bitmap_bytes()), (1, before));
        // One that fits the bound is still taken: 1 TiB at 4 KiB pages is 64 MiB of bitmaps.
        l.region_mapped(1 << 40, 1 << 40).unwrap();
        assert_eq!(l.range_count(), 2);
    }

    #[test]
    fn unmap_keeps_dirty_bits_for_the_next_report() {
        let mut l = DirtyLog::start(K4, &[], &[(0, 0x4000)]).unwrap();
        l.mark(0x1000, 1);
        l.region_unmapped(0, 0x4000, &[]);
        assert_eq!(bits(&l.report(0, 0x4000, K4, 8).unwrap()), vec![1]);
    }

    #[test]
    fn map_unmap_in_a_loop_does_not_grow_the_log() {
        let mut l = DirtyLog::start(K4, &[], &[]).unwrap();
        for i in 0..1000u64 {
            let iova = (i % 7) * 0x100000;
            l.region_mapped(iova, 0x10000).unwrap();
            l.mark(iova, if i % 3 == 0 { 1 } else { 0 });
            l.region_unmapped(iova, 0x10000, &[]);
            if i % 3 == 0 {
                let _ = l.report(iova, 0x10000, K4, 64).unwrap();
                l.region_unmapped(iova, 0x10000, &[]);
            }
        }
        assert!(l.range_count() <= 7, "{} ranges", l.range_count());
    }
}

mod concurrent {
    use crate::dma::DmaSpace;
    use crate::mmap::MappedRegion;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const PAGE: u64 = 4096;
    const BASE: u64 = 0x1_0000_0000;
    const WRITERS: u64 = 4;
    /// Pages of one round: 64 bitmap words, small enough that writers and the reporter meet
    /// on the same words all the time.
    const ROUND_PAGES: u64 = 64 * 64;
    const ROUNDS: u64 = 40;

    /// Several device threads write guest pages through the DMA table while a reporter
    /// reports and clears in a loop: the union of all reports must be exactly the set of pages
    /// written. Every page is written once only, so a mark lost between a report's read and its
    /// clear can never be repaired by a later write and shows up as a missing page.
    #[test]
    fn union_of_reports_equals_pages_written_by_concurrent_dma() {
        let pages = ROUND_PAGES * ROUNDS;
        let (_m, fd) = MappedRegion::memfd(c"guest", pages * PAGE).unwrap();
        let space = Arc::new(DmaSpace::new(8));
        space.map(BASE, pages * PAGE, true, true, Some((&fd, 0))).unwrap();
        assert_eq!(space.start_logging(PAGE, &[(BASE, pages * PAGE)]).unwrap(), PAGE);
        let (mut written, mut reported) = (BTreeSet::new(), BTreeSet::new());
        for round in 0..ROUNDS {
            let first = round * ROUND_PAGES;
            let done = Arc::new(AtomicBool::new(false));
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let space = Arc::clone(&space);
                    std::thread::spawn(move || {
                        let mut rng = ChaCha8Rng::seed_from_u64(round * WRITERS + w);
                        let mut mine: Vec<u64> = (first + w..first + ROUND_PAGES).step_by(WRITERS as usize).collect();
                        // Each page once, in a random order.
                        for i in (1..mine.len()).rev() {
                            mine.swap(i, rng.random_range(0..=i));
                        }
                        for &page in &mine {
                            let len = rng.random_range(1..=16u64);
                            let offset = rng.random_range(0..PAGE - len);
                            space.write(BASE + page * PAGE + offset, &vec![0xa5; len as usize]).unwrap();
                        }
                        mine
                    })
                })
                .collect();
            let reporter = {
                let (space, done) = (Arc::clone(&space), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut seen = BTreeSet::new();
                    loop {
                        let finished = done.load(Ordering::Acquire);
                        let bits =
                            space.report_dirty(BASE + first * PAGE, ROUND_PAGES * PAGE, PAGE, ROUND_PAGES / 8).unwrap();
                        for (i, word) in bits.iter().enumerate() {
                            for b in 0..64 {
                                if word >> b & 1 == 1 {
                                    seen.insert(first + i as u64 * 64 + b);
                                }
                            }
                        }
                        if finished {
                            return seen;
                        }
                    }
                })
            };
            for w in writers {
                written.extend(w.join().unwrap());
            }
            done.store(true, Ordering::Release);
            reported.extend(reporter.join().unwrap());
        }
        let lost: Vec<_> = written.difference(&reported).take(10).collect();
        assert!(
            lost.is_empty(),
            "{} pages written, never reported (first {lost:?})",
            written.difference(&reported).count()
        );
        assert_eq!(reported, written);
    }

    #[test]
    fn a_range_in_the_last_page_of_the_address_space_is_refused() {
        use crate::migration::dirty::{DirtyLog, LogError};
        let top = DirtyLog::start(4096, &[(0xffff_ffff_ffff_0000, 0xffff)], &[]);
        assert!(matches!(top, Err(LogError::BadRange { .. })), "{top:?}");
        assert!(DirtyLog::start(4096, &[(0xffff_ffff_fffe_0000, 0x1_0000)], &[]).is_ok());
    }
}
