use super::*;

const MIB: u64 = 1 << 20;

#[test]
fn pc_layout_splits_around_the_pci_hole() {
    let g = Guest::pc(2 * GIB).unwrap();
    assert_eq!(g.layout(), vec![(0, 2 * GIB)]);
    let g = Guest::pc(3 * GIB).unwrap();
    assert_eq!(g.layout(), vec![(0, 3 * GIB)]);
    let g = Guest::pc(6 * GIB).unwrap();
    assert_eq!(g.layout(), vec![(0, 3 * GIB), (4 * GIB, 3 * GIB)]);
    assert_eq!(g.ram_size(), 6 * GIB);
    assert_eq!(g.page_count(), 6 * GIB / PAGE_SIZE);
    // Sparse: six GiB of RAM that nobody touched hold nothing.
    assert_eq!(g.resident_bytes().unwrap(), 0);
}

#[test]
fn bad_sizes_and_layouts_are_refused() {
    assert!(matches!(Guest::pc(0), Err(GuestError::BadRamSize { ram_size: 0 })));
    assert!(matches!(Guest::pc(4097), Err(GuestError::BadRamSize { .. })));
    assert!(matches!(Guest::with_layout(&[]), Err(GuestError::EmptyLayout)));
    assert!(matches!(Guest::with_layout(&[(0, 0)]), Err(GuestError::BadRegion { .. })));
    assert!(matches!(Guest::with_layout(&[(12, 4096)]), Err(GuestError::BadRegion { .. })));
    assert!(matches!(Guest::with_layout(&[(u64::MAX - 4095, 8192)]), Err(GuestError::BadRegion { .. })));
    assert!(matches!(
        Guest::with_layout(&[(0x10000, 0x2000), (0, 0x11000)]),
        Err(GuestError::Overlap { a_iova: 0, a_len: 0x11000, b_iova: 0x10000, b_len: 0x2000 })
    ));
    // Unordered but disjoint is fine, and kept sorted.
    let g = Guest::with_layout(&[(0x10000, 0x1000), (0, 0x1000)]).unwrap();
    assert_eq!(g.layout(), vec![(0, 0x1000), (0x10000, 0x1000)]);
}

#[test]
fn logging_ranges_are_one_below_and_one_above_four_gib() {
    assert_eq!(Guest::pc(2 * GIB).unwrap().logging_ranges(), vec![(0, 2 * GIB)]);
    assert_eq!(Guest::pc(6 * GIB).unwrap().logging_ranges(), vec![(0, 3 * GIB), (4 * GIB, 3 * GIB)]);
    // Holes between sections are covered; a section ending exactly at 4 GiB is below it, one
    // straddling 4 GiB is above.
    let g = Guest::with_layout(&[(MIB, MIB), (16 * MIB, MIB), (4 * GIB - MIB, MIB)]).unwrap();
    assert_eq!(g.logging_ranges(), vec![(MIB, 4 * GIB - MIB)]);
    let g = Guest::with_layout(&[(0, MIB), (4 * GIB - MIB, 2 * MIB), (8 * GIB, MIB)]).unwrap();
    assert_eq!(g.logging_ranges(), vec![(0, MIB), (4 * GIB - MIB, 4 * GIB + 2 * MIB)]);
    let g = Guest::with_layout(&[(5 * GIB, MIB)]).unwrap();
    assert_eq!(g.logging_ranges(), vec![(5 * GIB, MIB)]);
}

#[test]
fn reads_and_writes_are_bounds_checked_and_touch_nothing_on_error() {
    let g = Guest::pc(6 * GIB).unwrap();
    g.load(3 * GIB - 4, &[1, 2, 3, 4]).unwrap();
    g.load(4 * GIB, &[5, 6]).unwrap();
    let mut b = [0u8; 4];
    g.read(3 * GIB - 4, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    assert_eq!(g.read_vec(4 * GIB, 3).unwrap(), vec![5, 6, 0]);
    // Into the hole, past the end, wrapping: refused, nothing written.
    for (iova, len) in [(3 * GIB - 2, 4), (3 * GIB, 1), (7 * GIB - 1, 2), (u64::MAX, 2)] {
        let err = g.vcpu_write(iova, &vec![9; len]).unwrap_err();
        assert!(matches!(err, GuestError::OutOfRange { .. }), "{err}");
        assert!(err.to_string().contains("outside guest RAM"), "{err}");
        assert!(g.read(iova, &mut vec![0; len]).is_err());
    }
    assert_eq!(g.read_vec(3 * GIB - 4, 4).unwrap(), vec![1, 2, 3, 4]);
    assert!(!g.contains(3 * GIB - 1, 2) && g.contains(3 * GIB - 1, 1));
    // Zero-length accesses are no-ops anywhere.
    g.vcpu_write(3 * GIB + 5, &[]).unwrap();
}

#[test]
fn accesses_may_span_adjacent_regions() {
    let g = Guest::with_layout(&[(0, 0x1000), (0x1000, 0x1000)]).unwrap();
    g.set_vcpu_logging(true);
    g.vcpu_write(0xffe, &[1, 2, 3, 4]).unwrap();
    assert_eq!(g.read_vec(0xffe, 4).unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(g.take_vcpu_dirty(), vec![0, 0x1000]);
}

#[test]
fn vcpu_dirty_log_records_only_while_on_and_take_clears_it() {
    let g = Guest::pc(6 * GIB).unwrap();
    g.vcpu_write(0x5000, &[1]).unwrap();
    assert!(g.take_vcpu_dirty().is_empty(), "logging is off by default");
    g.set_vcpu_logging(true);
    g.vcpu_write(4 * GIB + 0x1fff, &[1, 2]).unwrap(); // two pages
    g.vcpu_write(0x5000, &[2]).unwrap();
    g.vcpu_write(0x5008, &[3]).unwrap();
    g.load(0x9000, &[4]).unwrap(); // not a vCPU store
    g.message_write(0xa000, &[5]).unwrap(); // the other log
    assert_eq!(g.take_vcpu_dirty(), vec![0x5000, 4 * GIB + 0x1000, 4 * GIB + 0x2000]);
    assert!(g.take_vcpu_dirty().is_empty());
    assert_eq!(g.take_message_dirty(), vec![0xa000]);
    // Off keeps what was recorded for a last take; on again starts clean.
    g.vcpu_write(0x6000, &[1]).unwrap();
    g.set_vcpu_logging(false);
    g.vcpu_write(0x7000, &[1]).unwrap();
    assert_eq!(g.take_vcpu_dirty(), vec![0x6000]);
    g.vcpu_write(0x7000, &[1]).unwrap();
    g.set_vcpu_logging(true);
    assert!(g.take_vcpu_dirty().is_empty());
    // Clones share the log.
    let h = g.clone();
    h.vcpu_write(0x8000, &[1]).unwrap();
    assert_eq!(g.take_vcpu_dirty(), vec![0x8000]);
}

#[test]
fn pages_lists_every_page_in_order() {
    let g = Guest::with_layout(&[(0x10000, 0x2000), (0, 0x1000)]).unwrap();
    assert_eq!(g.pages().collect::<Vec<_>>(), vec![0, 0x10000, 0x11000]);
    assert_eq!(Guest::pc(6 * GIB).unwrap().pages().count() as u64, 6 * GIB / PAGE_SIZE);
}

#[test]
fn diff_pages_finds_differing_pages_cheaply() {
    let a = Guest::pc(6 * GIB).unwrap();
    let b = Guest::pc(6 * GIB).unwrap();
    assert!(a.diff_pages(&b).unwrap().is_empty());
    a.load(0x3000, &[1]).unwrap();
    a.load(4 * GIB + 3 * MIB + 5, &[7; 8192]).unwrap(); // three pages
    b.load(0x3000, &[1]).unwrap(); // same bytes: no difference
    b.load(5 * GIB, &[0]).unwrap(); // data that equals the hole's zeros
    b.load(6 * GIB, &[2]).unwrap();
    let want = vec![4 * GIB + 3 * MIB, 4 * GIB + 3 * MIB + 0x1000, 4 * GIB + 3 * MIB + 0x2000, 6 * GIB];
    assert_eq!(a.diff_pages(&b).unwrap(), want);
    assert_eq!(b.diff_pages(&a).unwrap(), want);
    assert!(a.resident_bytes().unwrap() < MIB, "comparing must not populate RAM");
    let c = Guest::pc(2 * GIB).unwrap();
    assert!(matches!(a.diff_pages(&c), Err(GuestError::LayoutMismatch { .. })));
}

#[test]
fn dma_service_answers_from_ram_and_records_writes_in_the_message_log() {
    let g = Guest::pc(6 * GIB).unwrap();
    g.set_vcpu_logging(true);
    let mut svc = g.dma_service();
    svc.dma_write(4 * GIB + 0x10, &[1, 2, 3]).unwrap();
    assert_eq!(svc.dma_read(4 * GIB + 0x10, 4).unwrap(), vec![1, 2, 3, 0]);
    assert_eq!(g.read_vec(4 * GIB + 0x10, 3).unwrap(), vec![1, 2, 3]);
    assert_eq!(g.take_message_dirty(), vec![4 * GIB]);
    assert!(g.take_vcpu_dirty().is_empty());
    assert_eq!(svc.dma_write(3 * GIB, &[1]), Err(Errno::EFAULT));
    assert_eq!(svc.dma_read(7 * GIB - 1, 2), Err(Errno::EFAULT));
    assert_eq!(svc.dma_read(0, MAX_DMA_READ + 1), Err(Errno::EINVAL));
    assert!(g.take_message_dirty().is_empty());
}

#[test]
fn workload_is_deterministic_and_stays_in_its_window() {
    let run = |seed| {
        let g = Guest::pc(6 * GIB).unwrap();
        g.set_vcpu_logging(true);
        let mut w = VcpuWorkload::new(seed, (3 * GIB - 8 * PAGE_SIZE, GIB + 16 * PAGE_SIZE), 32);
        let steps: Vec<Vec<u64>> = (0..4).map(|_| w.step(&g).unwrap()).collect();
        (g, steps)
    };
    let (g1, s1) = run(7);
    let (g2, s2) = run(7);
    let (_, s3) = run(8);
    assert_eq!(s1, s2);
    assert_ne!(s1, s3);
    assert!(g1.diff_pages(&g2).unwrap().is_empty(), "same seed, same bytes");
    let all: std::collections::BTreeSet<u64> = s1.iter().flatten().copied().collect();
    // Only the 8 pages below the hole and the 8 above 4 GiB are RAM inside the window.
    assert!(
        all.iter().all(
            |&p| (3 * GIB - 8 * PAGE_SIZE..3 * GIB).contains(&p) || (4 * GIB..4 * GIB + 8 * PAGE_SIZE).contains(&p)
        ),
        "{all:x?}"
    );
    assert_eq!(g1.take_vcpu_dirty(), all.into_iter().collect::<Vec<_>>());
    for s in &s1 {
        assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
    }
    let mut empty = VcpuWorkload::new(1, (3 * GIB, GIB), 4);
    assert!(matches!(empty.step(&g1), Err(GuestError::EmptyWindow { .. })));
}

#[test]
fn loaded_page_runs_land_in_their_regions_and_read_back_by_runs() {
    let g = Guest::with_layout(&[(0, 3 * PAGE_SIZE), (0x10000, 2 * PAGE_SIZE)]).unwrap();
    let p = |b: u8| vec![b; PAGE_SIZE as usize];
    let (a, b, c, d) = (p(1), p(2), p(3), p(4));
    // A run of two, a lone page, and a run that continues across the end of a region.
    let pages: Vec<(u64, &[u8])> = vec![(0, &a), (PAGE_SIZE, &b), (0x10000, &c), (0x11000, &d)];
    g.load_pages(&pages).unwrap();
    let addrs = [0, PAGE_SIZE, 0x10000, 0x11000, 2 * PAGE_SIZE];
    let mut buf = vec![9u8; addrs.len() * PAGE_SIZE as usize];
    g.read_pages(&addrs, &mut buf).unwrap();
    let want: Vec<u8> = [&a, &b, &c, &d, &p(0)].iter().flat_map(|v| v.iter().copied()).collect();
    assert_eq!(buf, want);
    assert_eq!(g.take_vcpu_dirty(), Vec::<u64>::new(), "loading marks nothing");
}

#[test]
fn page_loads_and_reads_outside_ram_are_refused() {
    let g = Guest::with_layout(&[(0, 2 * PAGE_SIZE)]).unwrap();
    let page = vec![1u8; PAGE_SIZE as usize];
    for iova in [2 * PAGE_SIZE, PAGE_SIZE + 1, u64::MAX - 10] {
        assert!(matches!(g.load_pages(&[(iova, &page)]), Err(GuestError::OutOfRange { .. })), "{iova:#x}");
    }
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    assert!(g.read_pages(&[2 * PAGE_SIZE], &mut buf).is_err());
    assert!(g.read_pages(&[0, PAGE_SIZE], &mut buf).is_err(), "more pages than the buffer holds");
}

#[test]
fn a_region_lies_at_its_file_offset_in_the_memfd_it_hands_the_server() {
    use std::os::unix::fs::FileExt;
    let g = Guest::with_layout(&[(0, 4 * PAGE_SIZE)]).unwrap();
    g.vcpu_write(PAGE_SIZE + 3, &[7, 8]).unwrap();
    g.load(3 * PAGE_SIZE, &[9]).unwrap();
    let r = &g.regions()[0];
    assert_eq!(r.file_offset(), ram::FILE_OFFSET);
    assert!(
        r.file_offset() > 0 && r.file_offset().is_multiple_of(PAGE_SIZE),
        "a page-aligned offset past 0, as QEMU's"
    );
    // What a server maps from (fd, offset) is what the guest wrote.
    let file = std::fs::File::from(r.fd().try_clone_to_owned().unwrap());
    let mut seen = [0u8; 2];
    file.read_exact_at(&mut seen, r.file_offset() + PAGE_SIZE + 3).unwrap();
    assert_eq!(seen, [7, 8]);
    // Holes and data are told apart in the region's own offsets.
    assert_eq!(g.populated_pages().unwrap(), vec![PAGE_SIZE, 3 * PAGE_SIZE]);
    assert_eq!(g.read_vec(3 * PAGE_SIZE, 1).unwrap(), vec![9]);
}
