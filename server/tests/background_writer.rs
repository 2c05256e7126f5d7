//! The dma-engine's background writer over a real socket, against the real
//! `vfu-server --device dma-engine` binary: a device thread writing guest memory while the
//! client's requests, dirty-page reports above all, go on.
//!
//! Covers: a writer enabled on memfd guest RAM with logging on writes until the device is set
//! to STOP, and not once after the SET's reply (BG_WRITES read twice across a wait, the RAM
//! unchanged); every write the count admits is in memory, the last write to each word winning,
//! and nothing else is; one DMA_LOGGING_REPORT after STOP has exactly the pages those writes
//! touched; STOP→RUNNING resumes it from BG_WRITES, and reports taken while it runs, each
//! checked against the writes that must have been marked before it, lose no page to the
//! report-and-clear; DMA_UNMAP of its memory faults it with nothing written after the unmap;
//! a client that disconnects leaves it faulted and still.
//!
//! The address and value of each write are computed here from the register map's formula, not
//! with the server's code. Waits for progress poll BG_WRITES with a deadline; a check that
//! nothing moves watches across [`QUIET`].

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mock_qemu::Client;
use nix::errno::Errno;
use pretty_assertions::assert_eq;
use vfu_server::devices::dma_engine::splitmix64;
use vfu_server::wire::MigState;

use common::dmae::{BAR0, GuestRam, PAGE, assert_same_bytes, errno, ok, set_pages, setup};
use common::{ServerProcess, poll_until};

// The background writer's registers (the dma-engine's register map).
const BG_CTRL: u64 = 0x80;
const BG_STATUS: u64 = 0x84;
const BG_SEED: u64 = 0x88;
const BG_ADDR: u64 = 0x90;
const BG_LEN: u64 = 0x98;
const BG_WRITES: u64 = 0xa0;
const BG_INTERVAL_US: u64 = 0xa8;
const RUNNING: u32 = 1;
const PAUSED: u32 = 2;
const FAULT: u32 = 3;

const IOVA: u64 = 0x1000_0000;
const LEN: u64 = 1 << 20;
/// The writer's window: all of guest RAM, 256 pages, so most writes between two reports land
/// on pages no other of them touches.
const WINDOW: u64 = IOVA;
const WINDOW_LEN: u64 = LEN;
const SEED: u64 = 0x00b6_5eed;
/// How long BG_WRITES may take to grow as far as a test waits for.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long a check that nothing moves watches (thousands of writes at interval 0).
const QUIET: Duration = Duration::from_millis(100);

/// Write `k`: its guest address and the value it stores.
fn write_k(k: u64) -> (u64, u64) {
    let slot = splitmix64(SEED ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % (WINDOW_LEN / 8);
    (WINDOW + 8 * slot, splitmix64(SEED.wrapping_add(k)))
}

/// The window after writes `ks` on zeroed memory, the last write to each word winning.
fn window_after(ks: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = vec![0u8; WINDOW_LEN as usize];
    for k in ks {
        let (at, v) = write_k(k);
        let i = (at - WINDOW) as usize;
        out[i..i + 8].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// The pages (relative to IOVA) writes `ks` touch.
fn pages(ks: std::ops::Range<u64>) -> BTreeSet<u64> {
    ks.map(|k| (write_k(k).0 - IOVA) / PAGE).collect()
}

struct Dev<'a> {
    c: Client,
    server: &'a ServerProcess,
}

impl Dev<'_> {
    fn r32(&mut self, reg: u64) -> u32 {
        ok(&format!("reading BAR0 {reg:#x}"), self.c.read_u32(BAR0, reg), &|| self.server.context())
    }

    fn r64(&mut self, reg: u64) -> u64 {
        ok(&format!("reading BAR0 {reg:#x}"), self.c.read_u64(BAR0, reg), &|| self.server.context())
    }

    fn w32(&mut self, reg: u64, v: u32) {
        ok(&format!("writing BAR0 {reg:#x}"), self.c.write_u32(BAR0, reg, v), &|| self.server.context());
    }

    fn w64(&mut self, reg: u64, v: u64) {
        ok(&format!("writing BAR0 {reg:#x}"), self.c.write_u64(BAR0, reg, v), &|| self.server.context());
    }

    fn writes(&mut self) -> u64 {
        self.r64(BG_WRITES)
    }

    fn set(&mut self, s: MigState) {
        ok(&format!("SET MIG_DEVICE_STATE {s:?}"), self.c.set_mig_state(s), &|| self.server.context());
    }

    fn report(&mut self) -> BTreeSet<u64> {
        set_pages(&ok("DMA_LOGGING_REPORT", self.c.dma_logging_report(IOVA, LEN, PAGE), &|| self.server.context()))
    }

    /// Programs the writer on the window, at interval 0, and enables it.
    fn enable(&mut self) {
        self.w64(BG_SEED, SEED);
        self.w64(BG_ADDR, WINDOW);
        self.w64(BG_LEN, WINDOW_LEN);
        self.w32(BG_INTERVAL_US, 0);
        self.w32(BG_CTRL, 1);
        assert_eq!(self.r32(BG_STATUS), RUNNING, "enabled on a mapped window of a running device");
    }

    /// Waits until BG_WRITES is at least `n`; returns it.
    fn wait_writes(&mut self, n: u64) -> u64 {
        let mut last = 0;
        poll_until(DEADLINE, || {
            last = self.writes();
            (last >= n).then_some(last)
        })
        .unwrap_or_else(|| {
            panic!("BG_WRITES still {last} after {DEADLINE:?}, waiting for {n}\n{}", self.server.context())
        })
    }
}

mod background_writer {
    use super::{
        BAR0, BG_CTRL, BG_STATUS, DEADLINE, Dev, Errno, FAULT, GuestRam, IOVA, Instant, LEN, MigState, PAGE, PAUSED,
        QUIET, RUNNING, ServerProcess, WINDOW, WINDOW_LEN, assert_same_bytes, errno, ok, pages, poll_until, setup,
        window_after,
    };
    use pretty_assertions::assert_eq;

    #[test]
    fn stop_quiesces_it_and_every_counted_write_is_in_memory_and_reported() {
        let (server, c) = setup();
        let mut d = Dev { c, server: &server };
        let ram = GuestRam::new(IOVA, LEN);
        ok("DMA_MAP", ram.map(&mut d.c), &|| server.context());
        assert_eq!(ok("DMA_LOGGING_START", d.c.dma_logging_start(PAGE, &[(IOVA, LEN)]), &|| server.context()), PAGE);
        d.enable();
        d.wait_writes(5000);

        d.set(MigState::Stop);
        assert_eq!(d.r32(BG_STATUS), PAUSED);
        let n = d.writes();
        std::thread::sleep(QUIET);
        assert_eq!(d.writes(), n, "BG_WRITES moved after the device stopped");
        let window = ram.read(WINDOW, WINDOW_LEN);
        assert_same_bytes(&format!("guest RAM after {n} writes"), &window_after(0..n), &window);
        std::thread::sleep(QUIET);
        assert_same_bytes("guest RAM across a wait in STOP", &window, &ram.read(WINDOW, WINDOW_LEN));
        assert_eq!(d.report(), pages(0..n), "the report after STOP: exactly the pages of writes 0..{n}");
        assert_eq!(errno(d.c.write_u32(BAR0, BG_CTRL, 0)), Some(Errno::EBUSY), "BAR0 is read-only while stopped");

        // Back to RUNNING: it goes on from BG_WRITES while reports come and go. A write after
        // the one in flight when the last report ended was marked after that report, and one
        // below the count read before a report was marked before it.
        d.set(MigState::Running);
        assert_eq!(d.r32(BG_STATUS), RUNNING);
        let (mut after_last, mut reports, start) = (n - 1, 0, Instant::now());
        // At least 50 reports across at least 2000 writes (a writer at interval 0 yields after
        // each write, so on a loaded machine it may write slowly).
        while d.writes() < n + 2000 || reports < 50 {
            let before = d.writes();
            let set = d.report();
            let owed = pages(after_last + 1..before);
            let lost: Vec<_> = owed.difference(&set).collect();
            assert!(lost.is_empty(), "report {reports}: pages {lost:?} of writes {}..{before} missing", after_last + 1);
            after_last = d.writes();
            reports += 1;
            assert!(
                start.elapsed() < DEADLINE,
                "{reports} reports but the writer does not get on\n{}",
                server.context()
            );
        }
        d.set(MigState::Stop);
        let m = d.writes();
        let owed = pages(after_last + 1..m);
        let set = d.report();
        assert!(owed.is_subset(&set), "the last report misses pages {:?}", owed.difference(&set).collect::<Vec<_>>());
        assert_same_bytes(&format!("guest RAM after {m} writes"), &window_after(0..m), &ram.read(WINDOW, WINDOW_LEN));
    }

    #[test]
    fn unmapping_its_memory_faults_it_with_nothing_written_after_the_unmap() {
        let (server, c) = setup();
        let mut d = Dev { c, server: &server };
        let ram = GuestRam::new(IOVA, LEN);
        ok("DMA_MAP", ram.map(&mut d.c), &|| server.context());
        d.enable();
        d.wait_writes(1000);
        ok("DMA_UNMAP", ram.unmap(&mut d.c), &|| server.context());
        let window = ram.read(WINDOW, WINDOW_LEN);
        poll_until(DEADLINE, || (d.r32(BG_STATUS) == FAULT).then_some(()))
            .unwrap_or_else(|| panic!("the writer did not fault\n{}", server.context()));
        assert_eq!(d.r32(BG_CTRL), 0, "a fault clears BG_CTRL");
        let n = d.writes();
        assert_same_bytes("guest RAM after the unmap", &window, &ram.read(WINDOW, WINDOW_LEN));
        assert_same_bytes(&format!("guest RAM after {n} writes"), &window_after(0..n), &window);
    }

    #[test]
    fn a_client_that_disconnects_leaves_it_faulted_and_still() {
        let server = ServerProcess::spawn(&["--device", "dma-engine"]);
        let ram = GuestRam::new(IOVA, LEN);
        {
            let mut d = Dev { c: server.connect(), server: &server };
            ok("DMA_MAP", ram.map(&mut d.c), &|| server.context());
            d.enable();
            d.wait_writes(1000);
        }
        // The server serves the next client once it is done with the last one.
        let mut d = Dev { c: server.connect(), server: &server };
        assert_eq!((d.r32(BG_STATUS), d.r32(BG_CTRL)), (FAULT, 0));
        let n = d.writes();
        let window = ram.read(WINDOW, WINDOW_LEN);
        assert_same_bytes(&format!("guest RAM after {n} writes"), &window_after(0..n), &window);
        std::thread::sleep(QUIET);
        assert_eq!(d.writes(), n);
        assert_same_bytes("guest RAM across a wait", &window, &ram.read(WINDOW, WINDOW_LEN));
    }
}
