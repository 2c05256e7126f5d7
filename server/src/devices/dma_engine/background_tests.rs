//! Background writer tests: the device driven like a server would (contexts over a shared DMA
//! table, guest memory in a memfd), its thread running for real. Waits for progress poll with
//! a deadline; a check that nothing moves watches across [`QUIET`], long enough for thousands
//! of writes at interval 0.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use pretty_assertions::assert_eq;

use super::pages::PAGE_SIZE;
use super::regs::*;
use super::*;
use crate::migration::{ArcError, MigState, Migratable};
use MigState::{PreCopy, Resuming, Running, Stop, StopCopy};

const DEVMEM: u64 = 64 << 10;
/// The window most tests use: 16 pages in the middle of guest memory.
const WINDOW: u64 = GUEST + 0x4_0000;
const WINDOW_LEN: u64 = 16 * PAGE_SIZE;
const SEED: u64 = 0x5eed;
/// How long a wait for progress may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a check that nothing moves watches.
const QUIET: Duration = Duration::from_millis(20);

use super::test_rig::{GUEST, GUEST_LEN, Rig};

fn rig() -> Rig {
    Rig::with_devmem(DEVMEM)
}

impl Rig {
    fn write_bar0(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.region_write(&mut ctx, REGION_REGS, offset, data)
    }

    fn w64(&mut self, offset: u64, v: u64) {
        self.write_bar0(offset, &v.to_le_bytes()).unwrap();
    }

    fn w32(&mut self, offset: u64, v: u32) {
        self.write_bar0(offset, &v.to_le_bytes()).unwrap();
    }

    fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        let mut buf = vec![0xee; len];
        self.dev.region_read(&mut ctx, REGION_REGS, offset, &mut buf).unwrap();
        buf
    }

    fn r64(&mut self, offset: u64) -> u64 {
        u64::from_le_bytes(self.read(offset, 8).try_into().unwrap())
    }

    fn r32(&mut self, offset: u64) -> u32 {
        u32::from_le_bytes(self.read(offset, 4).try_into().unwrap())
    }

    fn writes(&mut self) -> u64 {
        self.r64(REG_BG_WRITES)
    }

    fn status(&mut self) -> BgStatus {
        BgStatus::from_raw(self.r32(REG_BG_STATUS)).unwrap()
    }

    fn reset(&mut self) {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.reset(&mut ctx).unwrap();
    }

    /// Programs the writer and enables it.
    fn enable(&mut self, seed: u64, addr: u64, len: u64, interval_us: u32) {
        self.w64(REG_BG_SEED, seed);
        self.w64(REG_BG_ADDR, addr);
        self.w64(REG_BG_LEN, len);
        self.w32(REG_BG_INTERVAL_US, interval_us);
        self.w32(REG_BG_CTRL, BG_CTRL_ENABLE);
    }

    /// Waits until BG_WRITES is at least `n`; returns it.
    fn wait_writes(&mut self, n: u64) -> u64 {
        let end = Instant::now() + DEADLINE;
        loop {
            let w = self.writes();
            if w >= n {
                return w;
            }
            assert!(Instant::now() < end, "BG_WRITES still {w} after {DEADLINE:?}, waiting for {n}");
            std::thread::yield_now();
        }
    }

    /// Waits until BG_STATUS is `s`.
    fn wait_status(&mut self, s: BgStatus) {
        let end = Instant::now() + DEADLINE;
        while self.status() != s {
            assert!(Instant::now() < end, "BG_STATUS still {:?} after {DEADLINE:?}, waiting for {s:?}", self.status());
            std::thread::yield_now();
        }
    }

    fn guest_bytes(&self, iova: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        self.guest.read_at(iova - GUEST, &mut buf).unwrap();
        buf
    }

    fn word(&self, iova: u64) -> u64 {
        u64::from_le_bytes(self.guest_bytes(iova, 8).try_into().unwrap())
    }
}

/// The words writes `ks` leave in the window, the last write to each address winning.
fn expected(seed: u64, addr: u64, len: u64, ks: Range<u64>) -> HashMap<u64, u64> {
    ks.map(|k| background_write(seed, addr, len, k).unwrap()).collect()
}

/// The window as it must be after exactly writes `ks` (starting from zeroed memory).
fn window_after(seed: u64, addr: u64, len: u64, ks: Range<u64>) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    for (at, v) in expected(seed, addr, len, ks) {
        let i = (at - addr) as usize;
        out[i..i + 8].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Whether write `k` on the window `addr`+`len` lands in guest memory (the one writable
/// region with an fd).
fn in_guest(addr: u64, len: u64, k: u64) -> bool {
    let at = background_write(SEED, addr, len, k).unwrap().0;
    (GUEST..GUEST + GUEST_LEN).contains(&at)
}

fn bg_registers(rig: &mut Rig) -> Vec<u8> {
    rig.read(BG_REGS.start, (BG_REGS.end - BG_REGS.start) as usize)
}

#[test]
fn write_k_lands_on_an_aligned_word_of_the_window_with_its_splitmix_value() {
    for k in 0..10_000 {
        let (at, v) = background_write(SEED, WINDOW, WINDOW_LEN, k).unwrap();
        assert!(at >= WINDOW && at + 8 <= WINDOW + WINDOW_LEN && at % 8 == 0, "write {k} at {at:#x}");
        assert_eq!(v, splitmix64(SEED.wrapping_add(k)));
        let slot = splitmix64(SEED ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % (WINDOW_LEN / 8);
        assert_eq!(at, WINDOW + 8 * slot);
    }
    assert_eq!(background_write(SEED, WINDOW, 0, 0), None);
    assert_eq!(background_write(SEED, WINDOW + 4, 8, 0), None);
    assert_eq!(background_write(SEED, WINDOW, 12, 0), None);
    assert_eq!(background_write(u64::MAX, 0, 8, u64::MAX), Some((0, splitmix64(u64::MAX - 1))));
}

#[test]
fn registers_read_back_and_keep_only_defined_bits() {
    let mut rig = rig();
    assert_eq!(bg_registers(&mut rig), vec![0; 0x2c], "all zero at power-on");
    rig.w32(REG_BG_SEED + 4, 0x1122_3344);
    rig.w32(REG_BG_SEED, 0x5566_7788);
    assert_eq!(rig.r64(REG_BG_SEED), 0x1122_3344_5566_7788);
    rig.w64(REG_BG_ADDR, 0xdead_0000);
    rig.w64(REG_BG_LEN, 0x40);
    rig.w32(REG_BG_INTERVAL_US, 0xffff_ffff);
    assert_eq!((rig.r64(REG_BG_ADDR), rig.r64(REG_BG_LEN), rig.r32(REG_BG_INTERVAL_US)), (0xdead_0000, 0x40, u32::MAX));
    rig.w32(REG_BG_CTRL, 0xffff_fffe);
    assert_eq!((rig.r32(REG_BG_CTRL), rig.status()), (0, BgStatus::Idle), "bit 0 alone is kept");
    rig.w32(REG_BG_STATUS, 2);
    rig.w64(REG_BG_WRITES, 7);
    assert_eq!((rig.status(), rig.writes()), (BgStatus::Idle, 0), "read-only");
    assert_eq!(rig.read(BG_REGS.end, 4), [0; 4], "nothing past BG_INTERVAL_US");
}

#[test]
fn writes_follow_the_formula_and_the_last_write_to_a_word_wins() {
    let mut rig = rig();
    rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
    assert_eq!(rig.status(), BgStatus::Running);
    rig.wait_writes(5000);
    rig.w32(REG_BG_CTRL, 0);
    let n = rig.writes();
    assert_eq!(rig.status(), BgStatus::Idle);
    assert_eq!(rig.guest_bytes(WINDOW, WINDOW_LEN), window_after(SEED, WINDOW, WINDOW_LEN, 0..n), "{n} writes");
    assert_eq!(rig.guest_bytes(WINDOW - PAGE_SIZE, PAGE_SIZE), vec![0; PAGE_SIZE as usize], "before the window");
    assert_eq!(rig.guest_bytes(WINDOW + WINDOW_LEN, PAGE_SIZE), vec![0; PAGE_SIZE as usize], "after it");
}

#[test]
fn disabling_returns_once_the_writer_is_parked() {
    let mut rig = rig();
    rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
    rig.wait_writes(100);
    rig.w32(REG_BG_CTRL, 0);
    let (n, window) = (rig.writes(), rig.guest_bytes(WINDOW, WINDOW_LEN));
    assert_eq!(window, window_after(SEED, WINDOW, WINDOW_LEN, 0..n), "no write was in flight");
    std::thread::sleep(QUIET);
    assert_eq!((rig.writes(), rig.status()), (n, BgStatus::Idle));
    assert_eq!(rig.guest_bytes(WINDOW, WINDOW_LEN), window, "no write came after");
    rig.w32(REG_BG_CTRL, BG_CTRL_ENABLE);
    rig.wait_writes(n + 100);
    rig.w32(REG_BG_CTRL, 0);
    let m = rig.writes();
    assert_eq!(rig.guest_bytes(WINDOW, WINDOW_LEN), window_after(SEED, WINDOW, WINDOW_LEN, 0..m), "went on from {n}");
}

#[test]
fn parking_a_pausing_writer_does_not_wait_for_the_pause() {
    let mut rig = rig();
    rig.enable(SEED, WINDOW, WINDOW_LEN, 10_000_000);
    rig.wait_writes(1);
    let t = Instant::now();
    rig.w32(REG_BG_CTRL, 0);
    assert!(t.elapsed() < Duration::from_secs(2), "parking took {:?}", t.elapsed());
    assert_eq!(rig.writes(), 1, "the first write comes at once, the second after 10 s");
}

#[test]
fn stopped_device_makes_no_background_write() {
    for (stop, back) in [(&[Stop][..], &[Running][..]), (&[PreCopy, StopCopy], &[Stop, Running])] {
        let mut rig = rig();
        rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
        rig.wait_writes(100);
        rig.walk(stop);
        assert_eq!((rig.status(), rig.r32(REG_BG_CTRL)), (BgStatus::Paused, BG_CTRL_ENABLE), "{stop:?}");
        let (n, window) = (rig.writes(), rig.guest_bytes(WINDOW, WINDOW_LEN));
        assert_eq!(window, window_after(SEED, WINDOW, WINDOW_LEN, 0..n), "{stop:?}: no write in flight");
        std::thread::sleep(QUIET);
        assert_eq!(rig.writes(), n, "{stop:?}: no write to come");
        assert_eq!(rig.guest_bytes(WINDOW, WINDOW_LEN), window, "{stop:?}");
        assert_eq!(rig.write_bar0(REG_BG_CTRL, &[0; 4]), Err(Errno::EBUSY), "a stopped device takes no BAR0 write");
        assert_eq!(rig.write_bar0(REG_BG_SEED, &[1; 8]), Err(Errno::EBUSY));
        assert_eq!(rig.r64(REG_BG_SEED), SEED, "reads are served");

        rig.walk(back);
        assert_eq!(rig.status(), BgStatus::Running, "{back:?} resumes it");
        rig.wait_writes(n + 100);
        rig.w32(REG_BG_CTRL, 0);
        let m = rig.writes();
        assert_eq!(rig.guest_bytes(WINDOW, WINDOW_LEN), window_after(SEED, WINDOW, WINDOW_LEN, 0..m), "{back:?}");
    }
}

#[test]
fn pre_copy_keeps_the_writer_running() {
    let mut rig = rig();
    rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
    rig.walk(&[PreCopy]);
    assert_eq!(rig.status(), BgStatus::Running);
    let n = rig.wait_writes(1);
    rig.wait_writes(n + 100);
    rig.walk(&[Running]);
    let n = rig.writes();
    rig.wait_writes(n + 100);
    assert_eq!(rig.status(), BgStatus::Running);
}

#[test]
fn a_refused_arc_leaves_the_writer_running() {
    let fail_arcs = ArcSet::from([(Running, Stop)]);
    let mut rig = Rig::with(DmaEngineConfig { devmem_size: DEVMEM, fail_arcs, ..DmaEngineConfig::default() });
    rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
    assert_eq!(rig.arc(Running, Stop), Err(ArcError::Refused(Errno::EIO)));
    assert_eq!(rig.status(), BgStatus::Running);
    let n = rig.writes();
    rig.wait_writes(n + 100);
}

#[test]
fn bg_writes_counts_only_completed_and_marked_writes() {
    let mut rig = rig();
    let (addr, len) = (GUEST, GUEST_LEN); // 256 pages, so most writes land on a page of their own
    rig.space.start_logging(PAGE_SIZE, &[(GUEST, GUEST_LEN)]).unwrap();
    rig.enable(SEED, addr, len, 0);
    let mut last: HashMap<u64, u64> = HashMap::new(); // address -> value of its last write below `n`
    let (mut counted, mut after_report) = (0, None::<u64>);
    for round in 0..30 {
        // Each round waits for the writer to go on (on a loaded machine it may not get a CPU).
        let n = rig.wait_writes(counted + 50);
        let bits = rig.space.report_dirty(GUEST, GUEST_LEN, PAGE_SIZE, 1 << 20).unwrap();
        let a = rig.writes();
        // Writes after the one in flight when the last report ended started after it, and
        // ended before `n` was read, so before this report.
        let owed_from = after_report.map_or(0, |a| a + 1);
        let reported: BTreeSet<u64> =
            (0..GUEST_LEN / PAGE_SIZE).filter(|p| bits[*p as usize / 64] >> (p % 64) & 1 != 0).collect();
        for k in owed_from..n {
            let (at, _) = background_write(SEED, addr, len, k).unwrap();
            let page = (at - GUEST) / PAGE_SIZE;
            assert!(reported.contains(&page), "round {round}: write {k} < BG_WRITES {n} at {at:#x} unreported");
        }
        after_report = Some(a);
        // Every write below `n` is in memory: each word holds its last write below `n`, or a
        // later one (the thread goes on; the one in flight now may be in memory already).
        last.extend(expected(SEED, addr, len, counted..n));
        counted = n;
        let window = rig.guest_bytes(addr, len);
        let m = rig.writes();
        let later: HashMap<u64, Vec<u64>> =
            (n..=m).map(|k| background_write(SEED, addr, len, k).unwrap()).fold(HashMap::new(), |mut map, (at, v)| {
                map.entry(at).or_default().push(v);
                map
            });
        for (at, v) in &last {
            let i = (at - addr) as usize;
            let got = u64::from_le_bytes(window[i..i + 8].try_into().unwrap());
            assert!(
                got == *v || later.get(at).is_some_and(|vs| vs.contains(&got)),
                "round {round}: {at:#x} holds {got:#x}, not its write below {n} ({v:#x}) nor a later one"
            );
        }
    }
    rig.w32(REG_BG_CTRL, 0);
    let n = rig.writes();
    assert_eq!(rig.guest_bytes(addr, len), window_after(SEED, addr, len, 0..n));
}

#[test]
fn unmapped_window_faults_the_writer() {
    let mut rig = rig();
    let (_ro, ro_fd) = MappedRegion::memfd(c"ro", PAGE_SIZE).unwrap();
    rig.space.map(0x1000, PAGE_SIZE, true, false, Some((&ro_fd, 0))).unwrap();
    rig.space.map(0x8000, PAGE_SIZE, true, true, None).unwrap();
    for (what, addr, len) in [
        ("unmapped", 0x4000_0000, WINDOW_LEN),
        ("read-only", 0x1000, PAGE_SIZE),
        ("mapped without an fd", 0x8000, PAGE_SIZE),
        ("running past guest memory", GUEST + GUEST_LEN - PAGE_SIZE, 2 * PAGE_SIZE),
    ] {
        rig.enable(SEED, addr, len, 0);
        rig.wait_status(BgStatus::Fault);
        assert_eq!(rig.r32(REG_BG_CTRL), 0, "{what}: the writer stopped");
        // Every write before the first that left guest memory completed; that one is not counted.
        let n = rig.writes();
        assert_eq!(n, (0..).find(|k| !in_guest(addr, len, *k)).unwrap(), "{what}");
        rig.w32(REG_BG_CTRL, 0);
        assert_eq!(rig.status(), BgStatus::Idle, "{what}: disabling clears the fault");
        // Start the next case from 0.
        rig.w32(REG_CTRL, CTRL_RESET);
    }
    assert_eq!(rig.guest_bytes(GUEST, GUEST_LEN - 2 * PAGE_SIZE), vec![0; (GUEST_LEN - 2 * PAGE_SIZE) as usize]);
}

#[test]
fn a_write_racing_an_unmap_completes_before_it_or_faults() {
    let mut rig = rig();
    rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
    rig.wait_writes(1000);
    rig.space.unmap(GUEST, GUEST_LEN).unwrap();
    let window = rig.guest_bytes(WINDOW, WINDOW_LEN);
    rig.wait_status(BgStatus::Fault);
    let n = rig.writes();
    assert_eq!(rig.guest_bytes(WINDOW, WINDOW_LEN), window, "no write after DMA_UNMAP returned");
    assert_eq!(window, window_after(SEED, WINDOW, WINDOW_LEN, 0..n), "every counted write landed before it");
    // Mapped again (the same memory), the writer goes on from BG_WRITES once enabled again.
    let fd = MappedRegion::memfd(c"g2", GUEST_LEN).unwrap().1;
    rig.space.map(GUEST, GUEST_LEN, true, true, Some((&fd, 0))).unwrap();
    rig.w32(REG_BG_CTRL, BG_CTRL_ENABLE);
    assert_eq!(rig.status(), BgStatus::Running);
    rig.wait_writes(n + 10);
}

#[test]
fn enabling_on_an_invalid_window_faults_at_once() {
    let mut rig = rig();
    for (what, addr, len) in [
        ("BG_LEN 0", WINDOW, 0),
        ("BG_ADDR unaligned", WINDOW + 4, WINDOW_LEN),
        ("BG_LEN not a multiple of 8", WINDOW, WINDOW_LEN - 4),
        ("a wrapping window", u64::MAX - 7, 16),
    ] {
        rig.enable(SEED, addr, len, 0);
        assert_eq!((rig.status(), rig.r32(REG_BG_CTRL), rig.writes()), (BgStatus::Fault, 0, 0), "{what}");
    }
    rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
    assert_eq!(rig.status(), BgStatus::Running, "enabling again with a valid window clears the fault");
    rig.w64(REG_BG_LEN, 0);
    assert_eq!((rig.status(), rig.r32(REG_BG_CTRL)), (BgStatus::Fault, 0), "made invalid while running");
}

#[test]
fn a_context_without_a_shared_table_cannot_run_the_writer() {
    let mut rig = rig();
    for (at, v) in [(REG_BG_ADDR, WINDOW), (REG_BG_LEN, WINDOW_LEN), (REG_BG_CTRL, 1)] {
        let mut ctx = DeviceContext::new(&rig.space, None, &mut rig.irqs);
        rig.dev.region_write(&mut ctx, REGION_REGS, at, &v.to_le_bytes()).unwrap();
    }
    assert_eq!(rig.status(), BgStatus::Fault);
}

#[test]
fn reset_disables_the_writer() {
    for how in ["guest reset", "DEVICE_RESET", "DEVICE_RESET in STOP_COPY"] {
        let mut rig = rig();
        rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
        rig.wait_writes(100);
        match how {
            "guest reset" => rig.w32(REG_CTRL, CTRL_RESET),
            "DEVICE_RESET" => rig.reset(),
            _ => {
                rig.walk(&[PreCopy, StopCopy]);
                rig.reset();
            }
        }
        assert_eq!(bg_registers(&mut rig), vec![0; 0x2c], "{how}: every BG_* register is 0");
        let window = rig.guest_bytes(WINDOW, WINDOW_LEN);
        std::thread::sleep(QUIET);
        assert_eq!((rig.writes(), rig.status()), (0, BgStatus::Idle), "{how}");
        assert_eq!(rig.guest_bytes(WINDOW, WINDOW_LEN), window, "{how}: no write after the reset");
        if how != "guest reset" {
            let fresh = DmaEngine::new(DmaEngineConfig { devmem_size: DEVMEM, ..DmaEngineConfig::default() }).unwrap();
            assert_eq!(rig.dev.snapshot(), fresh.snapshot(), "{how}: power-on state");
        }
    }
}

#[test]
fn a_wide_write_resetting_and_enabling_enables_after_the_reset() {
    let mut rig = rig();
    rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
    rig.wait_writes(10);
    let mut block = vec![0u8; BG_REGS.end as usize];
    block[REG_CTRL as usize] = 1;
    block[REG_BG_CTRL as usize] = 1;
    block[REG_BG_SEED as usize..][..8].copy_from_slice(&7u64.to_le_bytes());
    block[REG_BG_ADDR as usize..][..8].copy_from_slice(&WINDOW.to_le_bytes());
    block[REG_BG_LEN as usize..][..8].copy_from_slice(&64u64.to_le_bytes());
    rig.write_bar0(0, &block).unwrap();
    assert_eq!((rig.status(), rig.r64(REG_BG_SEED)), (BgStatus::Running, 7));
    rig.wait_writes(10);
    rig.w32(REG_BG_CTRL, 0);
    let n = rig.writes();
    let expect = expected(7, WINDOW, 64, 0..n);
    for (at, v) in expect {
        assert_eq!(rig.word(at), v, "{at:#x}");
    }
}

#[test]
fn background_registers_migrate_and_the_destination_resumes() {
    let mut src = rig();
    src.enable(SEED, WINDOW, WINDOW_LEN, 0);
    src.wait_writes(100);
    src.walk(&[PreCopy]);
    let mut stream = read_all(&mut src);
    let before = src.writes();
    src.wait_writes(before + 100); // it runs on in PRE_COPY
    src.walk(&[StopCopy]);
    assert_eq!(src.status(), BgStatus::Paused);
    let snap = src.dev.snapshot();
    let n = snap.state.regs.bg.writes;
    assert_eq!(src.writes(), n, "the stream's registers hold the final BG_WRITES");
    stream.extend(read_all(&mut src));

    let mut dst = rig();
    dst.walk(&[Stop, Resuming]);
    dst.dev.write_data(&stream).unwrap();
    assert_eq!(dst.arc(Resuming, Stop), Ok(()));
    assert_eq!(dst.dev.snapshot(), snap);
    assert_eq!((dst.status(), dst.writes(), dst.r64(REG_BG_SEED)), (BgStatus::Paused, n, SEED));
    assert_eq!(dst.guest_bytes(WINDOW, WINDOW_LEN), vec![0; WINDOW_LEN as usize], "no write before RUNNING");
    dst.walk(&[Running]);
    assert_eq!(dst.status(), BgStatus::Running);
    dst.wait_writes(n + 1000);
    dst.w32(REG_BG_CTRL, 0);
    let m = dst.writes();
    // The destination wrote `n..m` (its guest memory was not migrated in this test).
    assert_eq!(dst.guest_bytes(WINDOW, WINDOW_LEN), window_after(SEED, WINDOW, WINDOW_LEN, n..m));
    assert_eq!(src.writes(), n, "the source stays stopped");
}

/// Reads the stream until a short read.
fn read_all(rig: &mut Rig) -> Vec<u8> {
    let (mut out, mut buf) = (Vec::new(), vec![0u8; 1 << 20]);
    loop {
        let n = rig.dev.read_data(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return out;
        }
    }
}

#[test]
fn a_disconnect_stops_the_writer_and_faults_it() {
    let mut rig = rig();
    rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
    rig.wait_writes(100);
    assert!(Arc::strong_count(&rig.space) > 1, "the thread holds the table");
    // What the server does on a disconnect: the regions go, then the device is told.
    rig.space.unmap_all();
    rig.dev.disconnected();
    assert_eq!(Arc::strong_count(&rig.space), 1, "the thread was joined and let go of the table");
    let n = rig.writes();
    assert_eq!((rig.status(), rig.r32(REG_BG_CTRL)), (BgStatus::Fault, 0));
    // The next client maps memory and enables it again: a new thread goes on from BG_WRITES.
    let fd = MappedRegion::memfd(c"g2", GUEST_LEN).unwrap().1;
    rig.space.map(GUEST, GUEST_LEN, true, true, Some((&fd, 0))).unwrap();
    rig.w32(REG_BG_CTRL, BG_CTRL_ENABLE);
    rig.wait_writes(n + 100);
}

#[test]
fn dropping_the_device_stops_and_joins_the_writer() {
    let mut rig = rig();
    rig.enable(SEED, WINDOW, WINDOW_LEN, 0);
    rig.wait_writes(100);
    let Rig { space, guest, dev, .. } = rig;
    drop(dev);
    assert_eq!(Arc::strong_count(&space), 1, "the thread was joined and let go of the table");
    let mut before = vec![0; WINDOW_LEN as usize];
    guest.read_at(WINDOW - GUEST, &mut before).unwrap();
    std::thread::sleep(QUIET);
    let mut after = vec![0; WINDOW_LEN as usize];
    guest.read_at(WINDOW - GUEST, &mut after).unwrap();
    assert_eq!(after, before);
}
