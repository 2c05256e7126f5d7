//! DMA_LOGGING_REPORT over 32 GiB of guest memory logged at 4 KiB, reported at 2 MiB pages
//! (QEMU's huge-page RAM), as a ratio to a plain copy of the same 1 MiB bitmap measured in the
//! same run (each timed after the same marking pass, so both start from the same cache
//! state). Two densities: 1% of pages dirty (a quiet guest) and every page dirty (the worst
//! case: every word must be swapped). Marking between iterations is not timed.
//!
//! The regions are mapped without an fd: logging is per IOVA range, so no memory is needed.

use std::time::{Duration, Instant};

use vfu_server::dma::DmaSpace;

const GIB: u64 = 1 << 30;
const GUEST: u64 = 32 * GIB;
const LOG_PAGE: u64 = 4096;
const REPORT_PAGE: u64 = 2 << 20;
const ITERATIONS: usize = 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let space = DmaSpace::new(16);
    // Two regions like a PC: RAM below the 4 GiB hole and above it.
    space.map(0, 3 * GIB, true, true, None).expect("map low RAM");
    space.map(4 * GIB, GUEST - 3 * GIB, true, true, None).expect("map high RAM");
    let ranges = [(0, 3 * GIB), (4 * GIB, GUEST - 3 * GIB)];
    assert_eq!(space.start_logging(LOG_PAGE, &ranges).expect("logging"), LOG_PAGE);
    let pages = GUEST / LOG_PAGE;
    let bitmap_words = (pages / 64) as usize;
    let source: Vec<u64> = (0..bitmap_words as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    let mut dest = vec![0u64; bitmap_words];
    println!("dirty_report: 32 GiB logged at 4 KiB, reported at 2 MiB; median of {ITERATIONS}");

    for (name, every) in [("1% dirty", 100u64), ("all dirty", 1)] {
        let (mut ours, mut copy) = (Vec::new(), Vec::new());
        let mark = || {
            for (iova, len) in ranges {
                for p in (0..len / LOG_PAGE).step_by(every as usize) {
                    space.mark_dirty(iova + p * LOG_PAGE, 1);
                }
            }
        };
        for _ in 0..ITERATIONS {
            mark();
            let start = Instant::now();
            let mut set = 0u32;
            for (iova, len) in ranges {
                let bits = space.report_dirty(iova, len, REPORT_PAGE, 1 << 20).expect("report");
                set += bits.iter().map(|w| w.count_ones()).sum::<u32>();
            }
            ours.push(start.elapsed());
            assert_eq!(set as u64, GUEST / REPORT_PAGE, "every 2 MiB page has a dirty 4 KiB page");

            // The same marking before the copy, so both start from the same cache state.
            mark();
            let start = Instant::now();
            dest.copy_from_slice(std::hint::black_box(&source));
            std::hint::black_box(&dest);
            copy.push(start.elapsed());
        }
        let (ours, copy) = (median(ours), median(copy));
        println!(
            "  {name:<10} report {:>9.1} us   copy of the 1 MiB bitmap {:>7.1} us   ratio {:>6.2}x  (target <= 3x)",
            ours.as_secs_f64() * 1e6,
            copy.as_secs_f64() * 1e6,
            ours.as_secs_f64() / copy.as_secs_f64()
        );
    }
}
