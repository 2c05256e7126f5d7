//! DMA_LOGGING_REPORT, two ways, each as a ratio to a floor measured in the same run:
//!
//! - In the library: 32 GiB of guest memory logged at 4 KiB, reported at 2 MiB pages (QEMU's
//!   huge-page RAM) and at 4 KiB (into a reused bitmap, as a session reports), against a plain
//!   copy of the 1 MiB bitmap of the 4 KiB report (each timed after the same marking pass, so
//!   both start from the same cache state).
//! - Over the socket: the whole request and reply against a server (this benchmark run again
//!   as a process serving a device whose register writes mark pages), 16 GiB logged at 4 KiB and
//!   reported at 4 KiB and at 2 MiB, against the floor of a 4 KiB report: a copy of its 512 KiB
//!   bitmap plus the same request and reply sizes over a bare socketpair to a peer process.
//!
//! Two densities: 1% of pages dirty (a quiet guest) and every page dirty (the worst case:
//! every word must be swapped). Marking between iterations is not timed. The regions are
//! mapped without an fd: logging is per IOVA range, so no memory is needed.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{EchoPeer, median};
use mock_qemu::Client;
use nix::errno::Errno;
use vfu_server::device::{DeviceContext, DeviceSpec, RegionSpec};
use vfu_server::dma::DmaSpace;
use vfu_server::migration::{ArcError, MigState, Migratable};
use vfu_server::wire::{
    Command, DMA_MAP_READ, DMA_MAP_WRITE, DeviceFeature, DmaLoggingReport, FEATURE_DMA_LOGGING_REPORT, FEATURE_GET,
};
use vfu_server::{Device, Server, ServerConfig};
use zerocopy::IntoBytes;

const GIB: u64 = 1 << 30;
const GUEST: u64 = 32 * GIB;
const LOG_PAGE: u64 = 4096;
const REPORT_PAGE: u64 = 2 << 20;
const ITERATIONS: usize = 30;

/// 16 GiB like a PC: below the 4 GiB hole and above it.
const SOCKET_RANGES: [(u64, u64); 2] = [(0, 3 * GIB), (4 * GIB, 13 * GIB)];

/// A device whose BAR0 writes mark guest pages dirty, as its DMA would: writing `n` (u64)
/// marks every `n`-th 4 KiB page of [`SOCKET_RANGES`] (every page for 1).
struct Marker;

impl Device for Marker {
    fn spec(&self) -> DeviceSpec {
        DeviceSpec { pci: false, num_regions: 1, regions: vec![RegionSpec::rw(0, 8)], num_irqs: 0, irqs: Vec::new() }
    }

    fn region_read(&mut self, _: &mut DeviceContext<'_>, _: u32, _: u64, _: &mut [u8]) -> Result<(), Errno> {
        Ok(())
    }

    fn region_write(&mut self, ctx: &mut DeviceContext<'_>, _: u32, _: u64, data: &[u8]) -> Result<(), Errno> {
        let every = u64::from_le_bytes(data.try_into().map_err(|_| Errno::EINVAL)?).max(1);
        for (iova, len) in SOCKET_RANGES {
            if every == 1 {
                ctx.dma_space().mark_dirty(iova, len);
                continue;
            }
            for p in (0..len / LOG_PAGE).step_by(every as usize) {
                ctx.dma_space().mark_dirty(iova + p * LOG_PAGE, 1);
            }
        }
        Ok(())
    }

    fn migration(&mut self) -> Option<&mut dyn Migratable> {
        Some(self)
    }
}

impl Migratable for Marker {
    fn transition(&mut self, _: &mut DeviceContext<'_>, _: MigState, _: MigState) -> Result<(), ArcError> {
        Ok(())
    }

    fn read_data(&mut self, _: &mut [u8]) -> Result<usize, Errno> {
        Ok(0)
    }

    fn write_data(&mut self, _: &[u8]) -> Result<(), Errno> {
        Ok(())
    }
}

/// One DMA_LOGGING_REPORT request and its reply per range; returns the dirty bits reported and
/// the time the requests and replies took (the counting of the bits is not timed).
fn report(client: &mut Client, page: u64) -> (u64, Duration) {
    let (mut set, mut took) = (0, Duration::ZERO);
    for (iova, length) in SOCKET_RANGES {
        let bitmap = length.div_ceil(page).div_ceil(64) * 8;
        let req = DmaLoggingReport { iova, length, page_size: page };
        let argsz = (size_of::<DeviceFeature>() + size_of::<DmaLoggingReport>()) as u32 + bitmap as u32;
        let head = DeviceFeature { argsz, flags: FEATURE_DMA_LOGGING_REPORT | FEATURE_GET };
        let start = Instant::now();
        let m = client.request(Command::DeviceFeature, &[head.as_bytes(), req.as_bytes()], &[]).expect("report");
        took += start.elapsed();
        let bits = m.payload.get(size_of::<DeviceFeature>() + size_of::<DmaLoggingReport>()..).expect("bitmap");
        set += bits.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
        client.recycle(m.payload);
    }
    (set, took)
}

/// The reply to a 4 KiB report of a range of `length` bytes: header, feature head, the
/// request echoed, the bitmap.
fn reply_len(length: u64) -> usize {
    16 + size_of::<DeviceFeature>() + size_of::<DmaLoggingReport>() + (length / LOG_PAGE / 8) as usize
}

/// The same request and reply sizes over a bare socketpair (a peer per range), plus a copy of
/// the bitmap.
fn floor(peers: &mut [EchoPeer], source: &[u64], dest: &mut [u64], reply: &mut [u8]) -> Duration {
    let start = Instant::now();
    dest.copy_from_slice(std::hint::black_box(source));
    std::hint::black_box(&dest);
    for (peer, (_, length)) in peers.iter_mut().zip(SOCKET_RANGES) {
        peer.sock.write_all(&[0u8; 48]).expect("write");
        peer.sock.read_exact(&mut reply[..reply_len(length)]).expect("read");
    }
    start.elapsed()
}

fn over_the_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dirty.sock");
    // The server is this benchmark run again as a process of its own, as the baseline peer is.
    let mut server = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(MARKER_ENV, &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the server process starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&path).is_err() {
        assert!(Instant::now() < deadline, "the server did not listen within 10 s");
        std::thread::yield_now();
    }
    let mut client = Client::connect_and_negotiate(&path, Duration::from_secs(30)).expect("connect");
    for (iova, len) in SOCKET_RANGES {
        client.dma_map(iova, len, DMA_MAP_READ | DMA_MAP_WRITE, None).expect("DMA_MAP");
    }
    assert_eq!(client.dma_logging_start(LOG_PAGE, &SOCKET_RANGES).expect("logging"), LOG_PAGE);
    let mut peers: Vec<EchoPeer> =
        SOCKET_RANGES.iter().map(|(_, len)| EchoPeer::spawn(48, reply_len(*len), reply_len(*len))).collect();
    let largest = reply_len(13 * GIB);
    let words = (16 * GIB / LOG_PAGE / 64) as usize;
    let source: Vec<u64> = (0..words as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    let (mut dest, mut reply) = (vec![0u64; words], vec![0u8; largest]);
    let mark = |client: &mut Client, every: u64| client.region_write(0, 0, &every.to_le_bytes()).expect("mark");
    println!("dirty_report over the socket: 16 GiB logged at 4 KiB; median of {ITERATIONS}");
    for (name, every) in [("1% dirty", 100u64), ("all dirty", 1)] {
        let (mut small, mut huge, mut base) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ITERATIONS {
            mark(&mut client, every);
            let (set, took) = report(&mut client, LOG_PAGE);
            small.push(took);
            assert_eq!(set, (0..2).map(|i| (SOCKET_RANGES[i].1 / LOG_PAGE).div_ceil(every)).sum::<u64>());
            mark(&mut client, every);
            let (set, took) = report(&mut client, REPORT_PAGE);
            huge.push(took);
            assert_eq!(set, 16 * GIB / REPORT_PAGE, "every 2 MiB page has a dirty 4 KiB page");
            mark(&mut client, every);
            base.push(floor(&mut peers, &source, &mut dest, &mut reply));
        }
        let (small, huge, base) = (median(small), median(huge), median(base));
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "  {name:<10} at 4 KiB {:>8.1} us   at 2 MiB {:>8.1} us   floor (copy + send of 512 KiB) {:>8.1} us   ratio at 4 KiB {:>5.2}x  (target <= 2x)",
            us(small),
            us(huge),
            us(base),
            small.as_secs_f64() / base.as_secs_f64()
        );
    }
    drop(client);
    assert!(server.wait().expect("the server process ends").success(), "the server process failed");
}

/// Set in the environment of this benchmark re-run as the server: its socket path.
const MARKER_ENV: &str = "VFU_BENCH_MARKER_SERVER";

/// If this process was started as the server, serves one client with the [`Marker`] device
/// and exits; otherwise returns.
fn maybe_run_marker_server() {
    let Some(path) = std::env::var_os(MARKER_ENV) else { return };
    // The first connection is the client's wait for the socket; the second is the client.
    let mut server = Server::bind(&path, Box::new(Marker), ServerConfig::default()).expect("bind");
    for _ in 0..2 {
        server.serve_one().expect("served");
    }
    std::process::exit(0);
}

fn main() {
    common::maybe_run_echo_peer();
    maybe_run_marker_server();
    in_the_library();
    over_the_socket();
}

fn in_the_library() {
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
    println!(
        "dirty_report in the library: 32 GiB logged at 4 KiB, reported at 2 MiB and at 4 KiB; median of {ITERATIONS}"
    );

    let mut reused = Vec::new();
    for (name, every) in [("1% dirty", 100u64), ("all dirty", 1)] {
        let (mut ours, mut copy, mut small) = (Vec::new(), Vec::new(), Vec::new());
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

            // At the logging page size, into a reused bitmap, as a session reports.
            mark();
            let start = Instant::now();
            for (iova, len) in ranges {
                space.report_dirty_into(iova, len, LOG_PAGE, 1 << 30, &mut reused).expect("report");
            }
            small.push(start.elapsed());

            // The same marking before the copy, so both start from the same cache state.
            mark();
            let start = Instant::now();
            dest.copy_from_slice(std::hint::black_box(&source));
            std::hint::black_box(&dest);
            copy.push(start.elapsed());
        }
        let (ours, copy, small) = (median(ours), median(copy), median(small));
        println!(
            "  {name:<10} at 2 MiB {:>7.1} us   copy of the 1 MiB bitmap {:>7.1} us   ratio {:>5.2}x  (target <= 3x)   at 4 KiB (a 1 MiB bitmap) {:>7.1} us   ratio {:>5.2}x",
            ours.as_secs_f64() * 1e6,
            copy.as_secs_f64() * 1e6,
            ours.as_secs_f64() / copy.as_secs_f64(),
            small.as_secs_f64() * 1e6,
            small.as_secs_f64() / copy.as_secs_f64()
        );
    }
}
