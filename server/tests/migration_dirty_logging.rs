//! Dirty-page logging (DMA_LOGGING_START / STOP / REPORT) over a real socket, against the real
//! `vfu-server --device dma-engine` binary, with the device's own DMA as the writer.
//!
//! Covers: the START checks (page size 0, a second START identical or not), REPORT with logging
//! off or outside the logged ranges, reports at half, double and sixteen times the logging page
//! size (each compared bit for bit with the pages the commands wrote), a report spanning two DMA
//! regions, pages written through DMA_WRITE messages to a region mapped without an fd, bits that
//! survive a DMA_UNMAP until the next report, and map/unmap in a loop.

mod common;

use std::collections::BTreeSet;

use nix::errno::Errno;
use pretty_assertions::assert_eq;

use common::dmae::{Cmd, DMA_RW, GuestRam, MsgRam, PAGE, bitmap_of, ok, pages_of, run, set_pages};
use common::dmae::{errno, setup};

const IOVA: u64 = 0x1000_0000;
const LEN: u64 = 1 << 20;

/// Commands whose guest writes touch 4 KiB pages {3}, {15, 16}, {64..=68} and {255}.
fn writes() -> [Cmd; 4] {
    [
        Cmd::fill(IOVA + 0x3000, 0x100, 1),
        Cmd::fill(IOVA + 0x10_000 - 8, 16, 2),
        Cmd::fill(IOVA + 0x40_000, 0x5000, 3),
        Cmd::fill(IOVA + LEN - 8, 8, 4),
    ]
}

/// The pages of `page_size` the commands wrote, relative to `base`.
fn written(cmds: &[Cmd], base: u64, page_size: u64) -> BTreeSet<u64> {
    cmds.iter().filter(|c| c.writes_guest()).flat_map(|c| pages_of(base, page_size, c.guest, c.len)).collect()
}

#[test]
fn start_with_page_size_zero_is_einval() {
    let (server, mut c) = setup();
    let ram = GuestRam::new(IOVA, LEN);
    ok("DMA_MAP", ram.map(&mut c), &|| server.context());
    assert_eq!(errno(c.dma_logging_start(0, &[(IOVA, LEN)])), Some(Errno::EINVAL));
    assert_eq!(errno(c.dma_logging_start(0, &[])), Some(Errno::EINVAL));
    assert_eq!(errno(c.dma_logging_report(IOVA, LEN, PAGE)), Some(Errno::EINVAL), "logging must still be off");
}

#[test]
fn start_twice_identical_is_ok_and_with_another_page_size_is_ebusy() {
    let (server, mut c) = setup();
    let ram = GuestRam::new(IOVA, LEN);
    ok("DMA_MAP", ram.map(&mut c), &|| server.context());
    let page = ok("START", c.dma_logging_start(PAGE, &[(IOVA, LEN)]), &|| server.context());
    assert_eq!(page, PAGE);
    run(&mut c, writes()[0], &|| server.context());
    assert_eq!(ok("START again", c.dma_logging_start(PAGE, &[(IOVA, LEN)]), &|| server.context()), PAGE);
    assert_eq!(errno(c.dma_logging_start(2 * PAGE, &[(IOVA, LEN)])), Some(Errno::EBUSY));
    // The identical START kept the bits.
    let bits = ok("REPORT", c.dma_logging_report(IOVA, LEN, PAGE), &|| server.context());
    assert_eq!(set_pages(&bits), written(&writes()[..1], IOVA, PAGE));
}

#[test]
fn report_with_logging_off_is_einval() {
    let (server, mut c) = setup();
    let ram = GuestRam::new(IOVA, LEN);
    ok("DMA_MAP", ram.map(&mut c), &|| server.context());
    assert_eq!(errno(c.dma_logging_report(IOVA, LEN, PAGE)), Some(Errno::EINVAL), "never started");
    ok("START", c.dma_logging_start(PAGE, &[]), &|| server.context());
    ok("STOP", c.dma_logging_stop(), &|| server.context());
    assert_eq!(errno(c.dma_logging_report(IOVA, LEN, PAGE)), Some(Errno::EINVAL), "after STOP");
}

#[test]
fn report_of_an_unlogged_range_is_einval() {
    let (server, mut c) = setup();
    let ram = GuestRam::new(IOVA, 2 * LEN);
    ok("DMA_MAP", ram.map(&mut c), &|| server.context());
    ok("START", c.dma_logging_start(PAGE, &[(IOVA, LEN)]), &|| server.context());
    for (iova, len) in [(IOVA + LEN, LEN), (IOVA + LEN - PAGE, 2 * PAGE), (IOVA - PAGE, PAGE), (0, PAGE)] {
        assert_eq!(errno(c.dma_logging_report(iova, len, PAGE)), Some(Errno::EINVAL), "{iova:#x}+{len:#x}");
    }
    ok("REPORT of the logged range", c.dma_logging_report(IOVA, LEN, PAGE), &|| server.context());
}

#[test]
fn reports_at_half_double_and_sixteen_times_the_page_size_name_the_pages_dma_wrote() {
    let (server, mut c) = setup();
    let ram = GuestRam::new(IOVA, LEN);
    ok("DMA_MAP", ram.map(&mut c), &|| server.context());
    assert_eq!(ok("START", c.dma_logging_start(PAGE, &[(IOVA, LEN)]), &|| server.context()), PAGE);
    for report_page in [PAGE, PAGE / 2, 2 * PAGE, 16 * PAGE] {
        let cmds = writes();
        for cmd in cmds {
            run(&mut c, cmd, &|| server.context());
        }
        let bits = ok("REPORT", c.dma_logging_report(IOVA, LEN, report_page), &|| server.context());
        // A smaller page repeats each 4 KiB bit; a larger one ORs the 4 KiB pages it covers.
        let want: BTreeSet<u64> =
            written(&cmds, IOVA, PAGE).iter().flat_map(|p| pages_of(0, report_page, p * PAGE, PAGE)).collect();
        assert_eq!(bits, bitmap_of(&want, LEN / report_page), "report at page size {report_page:#x}");
        // Reading cleared it.
        let again = ok("REPORT again", c.dma_logging_report(IOVA, LEN, report_page), &|| server.context());
        assert!(set_pages(&again).is_empty(), "a second report at {report_page:#x} must be clean: {again:x?}");
    }
}

#[test]
fn a_report_spanning_two_dma_regions_names_pages_of_both() {
    for everything in [false, true] {
        let (server, mut c) = setup();
        let low = GuestRam::new(IOVA, LEN);
        let high = GuestRam::new(IOVA + LEN, LEN);
        ok("DMA_MAP low", low.map(&mut c), &|| server.context());
        ok("DMA_MAP high", high.map(&mut c), &|| server.context());
        let ranges: &[(u64, u64)] = if everything { &[] } else { &[(IOVA, 2 * LEN)] };
        ok("START", c.dma_logging_start(PAGE, ranges), &|| server.context());
        // One command across the boundary, and one in each region.
        let cmds = [
            Cmd::fill(IOVA + LEN - 0x1800, 0x3000, 9),
            Cmd::fill(IOVA + 0x2000, 1, 10),
            Cmd::fill(IOVA + LEN + 0x7000, 0x1000, 11),
        ];
        for cmd in cmds {
            run(&mut c, cmd, &|| server.context());
        }
        let bits = ok("REPORT", c.dma_logging_report(IOVA, 2 * LEN, PAGE), &|| server.context());
        let want = written(&cmds, IOVA, PAGE);
        assert_eq!(bits, bitmap_of(&want, 2 * LEN / PAGE), "ranges {ranges:?}");
    }
}

#[test]
fn pages_written_by_dma_write_messages_to_a_region_without_fd_are_reported() {
    let (server, mut c) = setup();
    let mem = MsgRam::new(IOVA, LEN as usize);
    c.set_dma_service(Box::new(mem.clone()));
    ok("DMA_MAP without fd", c.dma_map(IOVA, LEN, DMA_RW, None), &|| server.context());
    ok("START", c.dma_logging_start(PAGE, &[(IOVA, LEN)]), &|| server.context());
    let cmds = writes();
    for cmd in cmds {
        run(&mut c, cmd, &|| server.context());
    }
    assert!(mem.contents().iter().any(|b| *b != 0), "the device's DMA_WRITEs must have reached the client");
    let bits = ok("REPORT", c.dma_logging_report(IOVA, LEN, PAGE), &|| server.context());
    assert_eq!(bits, bitmap_of(&written(&cmds, IOVA, PAGE), LEN / PAGE));
    // COPY to device reads by message and dirties nothing.
    run(&mut c, Cmd::to_device(IOVA, 0, LEN), &|| server.context());
    let bits = ok("REPORT", c.dma_logging_report(IOVA, LEN, PAGE), &|| server.context());
    assert!(set_pages(&bits).is_empty(), "reads must not dirty pages: {:?}", set_pages(&bits));
}

#[test]
fn dma_unmap_while_logging_keeps_the_bits_for_the_next_report() {
    for everything in [false, true] {
        let (server, mut c) = setup();
        let ram = GuestRam::new(IOVA, LEN);
        ok("DMA_MAP", ram.map(&mut c), &|| server.context());
        let ranges: &[(u64, u64)] = if everything { &[] } else { &[(IOVA, LEN)] };
        ok("START", c.dma_logging_start(PAGE, ranges), &|| server.context());
        let cmds = writes();
        for cmd in cmds {
            run(&mut c, cmd, &|| server.context());
        }
        ok("DMA_UNMAP", ram.unmap(&mut c), &|| server.context());
        let bits = ok("REPORT after DMA_UNMAP", c.dma_logging_report(IOVA, LEN, PAGE), &|| server.context());
        assert_eq!(bits, bitmap_of(&written(&cmds, IOVA, PAGE), LEN / PAGE), "ranges {ranges:?}");
    }
}

#[test]
fn unmap_and_remap_in_a_loop_keeps_logging_right() {
    for everything in [false, true] {
        let (server, mut c) = setup();
        let ram = GuestRam::new(IOVA, LEN);
        let ranges: &[(u64, u64)] = if everything { &[] } else { &[(IOVA, LEN)] };
        ok("DMA_MAP", ram.map(&mut c), &|| server.context());
        ok("START", c.dma_logging_start(PAGE, ranges), &|| server.context());
        for i in 0..200u64 {
            let page = (i * 37) % (LEN / PAGE);
            let cmd = Cmd::fill(IOVA + page * PAGE + 16, 32, i);
            run(&mut c, cmd, &|| server.context());
            ok("DMA_UNMAP", ram.unmap(&mut c), &|| server.context());
            let bits = ok(&format!("REPORT {i}"), c.dma_logging_report(IOVA, LEN, PAGE), &|| server.context());
            assert_eq!(set_pages(&bits), BTreeSet::from([page]), "iteration {i} ({ranges:?})");
            ok("DMA_MAP again", ram.map(&mut c), &|| server.context());
        }
        // Still logging the remapped region.
        run(&mut c, writes()[0], &|| server.context());
        let bits = ok("final REPORT", c.dma_logging_report(IOVA, LEN, PAGE), &|| server.context());
        assert_eq!(set_pages(&bits), written(&writes()[..1], IOVA, PAGE));
        ok("STOP", c.dma_logging_stop(), &|| server.context());
    }
}
