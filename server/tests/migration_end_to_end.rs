//! Live migration of a running dma-engine between two real `vfu-server` processes, driven over
//! their sockets the way QEMU drives a vfio-user device (migration v2 with pre-copy and dirty
//! page logging).
//!
//! The source's guest RAM (a memfd) is mapped for its device, which DMAs into and out of it while
//! the migration is under way; the test plays the VMM: it copies guest RAM to the destination's
//! own memfd (all of it once, then the pages each DMA_LOGGING_REPORT names), and pipes the
//! device's migration stream from MIG_DATA_READ on the source to MIG_DATA_WRITE on the
//! destination. Afterwards everything a client can observe of the two devices (every BAR0
//! register, configuration space, device memory, the shared scratch BAR) and the two guest RAMs
//! must be equal, and the pages the device wrote during PRE_COPY must have been reported.

mod common;

use std::collections::BTreeSet;

use mock_qemu::Client;
use pretty_assertions::assert_eq;
use vfu_server::wire::MigState;

use common::ServerProcess;
use common::dmae::{
    BAR0, BAR4, CONFIG, Cmd, DeviceView, GuestRam, PAGE, REG_CMDS_COMPLETED, REG_SCRATCH, assert_same_bytes, ok,
    pages_of, run, set_pages, snapshot,
};

const DEVICE: [&str; 2] = ["--device", "dma-engine"];
const RAM_IOVA: u64 = 0x4000_0000;
const RAM_LEN: u64 = 16 << 20;
const MIB: u64 = 1 << 20;
/// Bytes asked for by each MIG_DATA_READ.
const READ_SIZE: u32 = 256 << 10;
/// Bound on the whole stream, so a device that never ends a round fails instead of hanging.
const MAX_STREAM: usize = 512 << 20;
const PRE_COPY_ROUNDS: u64 = 4;

/// The BAR0 registers by name, for a readable diff.
fn registers(view: &DeviceView) -> Vec<(&'static str, u64)> {
    const REGS: [(&str, usize, usize); 27] = [
        ("MAGIC", 0x00, 4),
        ("VERSION", 0x04, 4),
        ("DEVMEM_SIZE", 0x08, 8),
        ("CTRL", 0x10, 4),
        ("STATUS", 0x14, 4),
        ("SCRATCH", 0x18, 8),
        ("CMD_OP", 0x20, 4),
        ("CMD_FLAGS", 0x24, 4),
        ("CMD_GUEST_ADDR", 0x28, 8),
        ("CMD_DEV_OFFSET", 0x30, 8),
        ("CMD_LEN", 0x38, 8),
        ("CMD_SEED", 0x40, 8),
        ("DOORBELL", 0x48, 4),
        ("CMDS_COMPLETED", 0x50, 8),
        ("CMDS_FAILED", 0x58, 8),
        ("BYTES_TO_GUEST", 0x60, 8),
        ("BYTES_FROM_GUEST", 0x68, 8),
        ("IRQS_RAISED", 0x70, 8),
        ("LAST_CHECKSUM", 0x78, 8),
        ("BG_CTRL", 0x80, 4),
        ("BG_STATUS", 0x84, 4),
        ("BG_SEED", 0x88, 8),
        ("BG_ADDR", 0x90, 8),
        ("BG_LEN", 0x98, 8),
        ("BG_WRITES", 0xa0, 8),
        ("BG_INTERVAL_US", 0xa8, 4),
        ("(unassigned 0xac)", 0xac, 4),
    ];
    REGS.iter()
        .map(|(name, at, width)| {
            let mut b = [0u8; 8];
            if let (Some(dst), Some(src)) = (b.get_mut(..*width), view.regs.get(*at..at + width)) {
                dst.copy_from_slice(src);
            }
            (*name, u64::from_le_bytes(b))
        })
        .collect()
}

/// Reads the stream until a short read; appends the chunks, returns the bytes read.
fn read_round(
    c: &mut Client,
    src: &ServerProcess,
    chunks: &mut Vec<Vec<u8>>,
    between: &mut dyn FnMut(&mut Client),
) -> usize {
    let mut got = 0;
    loop {
        let data = ok("MIG_DATA_READ", c.mig_data_read(READ_SIZE), &|| src.context());
        let n = data.len();
        got += n;
        if n > 0 {
            chunks.push(data);
        }
        assert!(chunks.iter().map(Vec::len).sum::<usize>() <= MAX_STREAM, "the stream exceeds {MAX_STREAM} bytes");
        if n < READ_SIZE as usize {
            return got;
        }
        between(c);
    }
}

/// Takes a report of the whole RAM, copies the pages it names from `from` to `to`, returns them.
fn sync_dirty(c: &mut Client, src: &ServerProcess, from: &GuestRam, to: &GuestRam) -> BTreeSet<u64> {
    let bitmap = ok("DMA_LOGGING_REPORT", c.dma_logging_report(from.iova, from.len, PAGE), &|| src.context());
    let pages = set_pages(&bitmap);
    for p in &pages {
        assert!(p * PAGE < from.len, "the report names page {p}, past the {} bytes of RAM", from.len);
        let at = from.iova + p * PAGE;
        to.write(at, &from.read(at, PAGE));
    }
    pages
}

#[test]
fn migrates_a_running_dma_engine_between_two_servers() {
    let src = ServerProcess::spawn(&DEVICE);
    let dst = ServerProcess::spawn(&DEVICE);
    let sctx = || src.context();
    let dctx = || dst.context();
    let mut s = src.connect();
    let mut d = dst.connect();
    let src_ram = GuestRam::new(RAM_IOVA, RAM_LEN);
    let dst_ram = GuestRam::new(RAM_IOVA, RAM_LEN);
    ok("source DMA_MAP", src_ram.map(&mut s), &sctx);
    ok("destination DMA_MAP", dst_ram.map(&mut d), &dctx);

    // The guest sets the device up and uses it before the migration starts.
    ok("config command register", s.region_write(CONFIG, 0x04, &0x0006u16.to_le_bytes()), &sctx);
    ok("config BAR0", s.region_write(CONFIG, 0x10, &0xfe00_0000u32.to_le_bytes()), &sctx);
    ok("SCRATCH", s.write_u64(BAR0, REG_SCRATCH, 0x5eed_cafe_f00d_0001), &sctx);
    for (at, seed) in [(0u64, 1u8), (20 << 10, 2), (40 << 10, 3)] {
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect();
        ok("BAR4 write", s.region_write(BAR4, at, &bytes), &sctx);
    }
    let ram = |off: u64| RAM_IOVA + off;
    run(&mut s, Cmd::fill(ram(0), 4 * MIB, 11), &sctx);
    run(&mut s, Cmd::to_device(ram(0), 0, 4 * MIB), &sctx);
    run(&mut s, Cmd::fill(ram(4 * MIB), 4 * MIB, 12), &sctx);
    run(&mut s, Cmd::to_device(ram(5 * MIB + 123), 6 * MIB, MIB), &sctx);
    run(&mut s, Cmd::to_guest(MIB, ram(12 * MIB), MIB), &sctx);

    // Migration starts: dirty logging, a first full copy of guest RAM, PRE_COPY.
    let page = ok("DMA_LOGGING_START", s.dma_logging_start(PAGE, &[(RAM_IOVA, RAM_LEN)]), &sctx);
    assert_eq!(page, PAGE);
    let bulk = src_ram.contents();
    dst_ram.write(RAM_IOVA, &bulk);
    ok("RUNNING -> PRE_COPY", s.set_mig_state(MigState::PreCopy), &sctx);

    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut written_in_pre_copy: BTreeSet<u64> = BTreeSet::new();
    let mut reported: BTreeSet<u64> = BTreeSet::new();
    for round in 0..PRE_COPY_ROUNDS {
        // The guest keeps using the device: guest memory and device memory change.
        let fill_at = 8 * MIB + round * 512 * 1024 + round * 4096 + 100;
        let cmds = [
            Cmd::fill(ram(fill_at), 300 * 1024, 100 + round),
            Cmd::to_device(ram(fill_at), 4 * MIB + round * 256 * 1024, 256 * 1024),
            Cmd::to_guest(round * 64 * 1024 + 8, ram(14 * MIB + round * 128 * 1024 + 8), 64 * 1024),
        ];
        for cmd in cmds {
            run(&mut s, cmd, &sctx);
            if cmd.writes_guest() {
                written_in_pre_copy.extend(pages_of(RAM_IOVA, PAGE, cmd.guest, cmd.len));
            }
        }
        // And during the round, between two reads, once.
        let mut once = true;
        let mut between = |c: &mut Client| {
            if std::mem::take(&mut once) {
                let cmd = Cmd::fill(ram(15 * MIB + round * 8192), 5000, 200 + round);
                run(c, cmd, &sctx);
                written_in_pre_copy.extend(pages_of(RAM_IOVA, PAGE, cmd.guest, cmd.len));
                run(c, Cmd::to_device(ram(15 * MIB), 7 * MIB + round * 4096, 4096), &sctx);
            }
        };
        let got = read_round(&mut s, &src, &mut chunks, &mut between);
        assert!(got > 0, "round {round}: device memory changed since the last round, so it must carry data");
        if round == 0 {
            assert!(!once, "the first round (all of device memory) must take more than one read");
        }
        let dirty = sync_dirty(&mut s, &src, &src_ram, &dst_ram);
        eprintln!("pre-copy round {round}: {got:>8} bytes of device state, {:>4} dirty guest pages", dirty.len());
        reported.extend(dirty);
        assert_eq!(ok("GET state", s.mig_state(), &sctx), MigState::PreCopy);
    }

    ok("PRE_COPY -> STOP_COPY", s.set_mig_state(MigState::StopCopy), &sctx);
    let got = read_round(&mut s, &src, &mut chunks, &mut |_| {});
    let dirty = sync_dirty(&mut s, &src, &src_ram, &dst_ram);
    eprintln!("stop-and-copy:     {got:>8} bytes of device state, {:>4} dirty guest pages", dirty.len());
    reported.extend(dirty);
    ok("STOP_COPY -> STOP", s.set_mig_state(MigState::Stop), &sctx);
    ok("DMA_LOGGING_STOP", s.dma_logging_stop(), &sctx);

    // Destination: RUNNING -> RESUMING in one SET, the whole stream, RESUMING -> STOP -> RUNNING.
    ok("RUNNING -> RESUMING", d.set_mig_state(MigState::Resuming), &dctx);
    assert_eq!(ok("GET state", d.mig_state(), &dctx), MigState::Resuming);
    for (i, chunk) in chunks.iter().enumerate() {
        ok(&format!("MIG_DATA_WRITE of chunk {i} ({} bytes)", chunk.len()), d.mig_data_write(chunk), &dctx);
    }
    ok("RESUMING -> STOP", d.set_mig_state(MigState::Stop), &dctx);
    ok("STOP -> RUNNING", d.set_mig_state(MigState::Running), &dctx);

    // Everything observable is equal.
    let want = snapshot(&mut s, &sctx);
    let got = snapshot(&mut d, &dctx);
    assert_eq!(registers(&got), registers(&want), "BAR0 registers");
    assert_same_bytes("BAR0", &want.regs, &got.regs);
    assert_same_bytes("configuration space", &want.config, &got.config);
    assert_same_bytes("device memory (BAR2)", &want.devmem, &got.devmem);
    assert_same_bytes("shared scratch (BAR4)", &want.scratch, &got.scratch);
    let final_ram = src_ram.contents();
    assert_same_bytes("guest RAM", &final_ram, &dst_ram.contents());

    // Dirty tracking mattered: what the device wrote during PRE_COPY was reported, and the
    // first full copy alone would have been wrong.
    let missed: Vec<u64> = written_in_pre_copy.difference(&reported).copied().collect();
    assert!(missed.is_empty(), "pages the device wrote during PRE_COPY but no report named: {missed:?}");
    let stale = written_in_pre_copy
        .iter()
        .filter(|p| {
            let r = (**p * PAGE) as usize..((**p + 1) * PAGE) as usize;
            bulk.get(r.clone()) != final_ram.get(r)
        })
        .count();
    assert!(stale > 0, "the pages written in PRE_COPY must differ from the first copy, or the test proves nothing");

    let stream: usize = chunks.iter().map(Vec::len).sum();
    eprintln!(
        "destination equals source: {} BAR0 registers, config space, {} MiB device memory, {} KiB scratch, \
         {} MiB guest RAM ({stream} bytes of device stream, {} pages written during pre-copy, all reported)",
        registers(&got).len(),
        got.devmem.len() >> 20,
        got.scratch.len() >> 10,
        final_ram.len() >> 20,
        written_in_pre_copy.len()
    );

    // The migrated device runs where it landed.
    let before = ok("CMDS_COMPLETED", d.read_u64(BAR0, REG_CMDS_COMPLETED), &dctx);
    run(&mut d, Cmd::to_guest(0, ram(0), 4096), &dctx);
    assert_eq!(ok("CMDS_COMPLETED", d.read_u64(BAR0, REG_CMDS_COMPLETED), &dctx), before + 1);
    assert_eq!(dst_ram.read(ram(0), 4096), want.devmem.get(..4096).unwrap_or_default());
}
