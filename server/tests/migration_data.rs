//! MIG_DATA_READ / MIG_DATA_WRITE and device access during migration, over a real socket
//! against the real `vfu-server --device dma-engine` binary.
//!
//! Covers: READ only in PRE_COPY and STOP_COPY, WRITE only in RESUMING (EINVAL elsewhere);
//! the size bounds (max_data_xfer_size, a payload shorter than the head, a WRITE whose data is
//! missing, an `argsz` without room); a destination that got a truncated stream refuses
//! RESUMING→STOP with ENODATA and stays in RESUMING, a corrupted one refuses it with EBADMSG;
//! and in STOP, STOP_COPY and RESUMING region writes other than to configuration space are
//! refused with EBUSY while reads still work.

mod common;

use mock_qemu::Client;
use nix::errno::Errno;
use pretty_assertions::assert_eq;
use vfu_server::wire::{Command, MigData, MigState};
use zerocopy::IntoBytes;

use common::ServerProcess;
use common::dmae::{BAR0, BAR2, BAR4, CONFIG, Cmd, GuestRam, REG_SCRATCH, ok, run};
use common::dmae::{errno, setup};

use MigState::{PreCopy, Resuming, Running, Stop, StopCopy};

/// The default max_data_xfer_size of both sides.
const MAX_XFER: u32 = 1 << 20;
const RAM_IOVA: u64 = 0x1000_0000;
const RAM_LEN: u64 = 4 << 20;

/// DEVICE_RESET, then SET to `s`.
fn reach(c: &mut Client, server: &ServerProcess, s: MigState) {
    ok("DEVICE_RESET", c.reset(), &|| server.context());
    ok(&format!("SET {s:?}"), c.set_mig_state(s), &|| server.context());
}

/// Reads until a short read.
fn read_to_short(c: &mut Client, server: &ServerProcess, out: &mut Vec<Vec<u8>>) {
    loop {
        let data = ok("MIG_DATA_READ", c.mig_data_read(MAX_XFER), &|| server.context());
        let n = data.len();
        if n > 0 {
            out.push(data);
        }
        assert!(out.len() < 4096, "the stream does not end");
        if n < MAX_XFER as usize {
            return;
        }
    }
}

/// A complete migration stream of a device that did some work, in the chunks it was read in.
fn a_complete_stream() -> Vec<Vec<u8>> {
    let (server, mut c) = setup();
    let ram = GuestRam::new(RAM_IOVA, RAM_LEN);
    ok("DMA_MAP", ram.map(&mut c), &|| server.context());
    run(&mut c, Cmd::fill(RAM_IOVA, RAM_LEN, 7), &|| server.context());
    run(&mut c, Cmd::to_device(RAM_IOVA, 0, RAM_LEN), &|| server.context());
    ok("SCRATCH", c.write_u64(BAR0, REG_SCRATCH, 42), &|| server.context());
    let mut chunks = Vec::new();
    ok("PRE_COPY", c.set_mig_state(PreCopy), &|| server.context());
    read_to_short(&mut c, &server, &mut chunks);
    ok("STOP_COPY", c.set_mig_state(StopCopy), &|| server.context());
    read_to_short(&mut c, &server, &mut chunks);
    ok("STOP", c.set_mig_state(Stop), &|| server.context());
    assert!(!chunks.is_empty());
    chunks
}

#[test]
fn mig_data_read_is_refused_outside_pre_copy_and_stop_copy() {
    let (server, mut c) = setup();
    for s in [Running, Stop, Resuming] {
        reach(&mut c, &server, s);
        assert_eq!(errno(c.mig_data_read(4096)), Some(Errno::EINVAL), "MIG_DATA_READ in {s:?}");
        assert_eq!(ok("GET state", c.mig_state(), &|| server.context()), s);
    }
    for s in [PreCopy, StopCopy] {
        reach(&mut c, &server, s);
        let data = ok(&format!("MIG_DATA_READ in {s:?}"), c.mig_data_read(4096), &|| server.context());
        assert!(data.len() <= 4096);
    }
}

#[test]
fn mig_data_write_is_refused_outside_resuming() {
    let (server, mut c) = setup();
    for s in [Running, Stop, PreCopy, StopCopy] {
        reach(&mut c, &server, s);
        assert_eq!(errno(c.mig_data_write(&[0u8; 64])), Some(Errno::EINVAL), "MIG_DATA_WRITE in {s:?}");
        assert_eq!(ok("GET state", c.mig_state(), &|| server.context()), s);
    }
}

#[test]
fn mig_data_read_above_max_data_xfer_size_is_refused() {
    let (server, mut c) = setup();
    reach(&mut c, &server, StopCopy);
    assert_eq!(errno(c.mig_data_read(MAX_XFER + 1)), Some(Errno::EINVAL));
    assert_eq!(errno(c.mig_data_read(u32::MAX - 8)), Some(Errno::EINVAL));
    // The largest read is fine.
    let data = ok("MIG_DATA_READ of max_data_xfer_size", c.mig_data_read(MAX_XFER), &|| server.context());
    assert!(data.len() <= MAX_XFER as usize);
}

#[test]
fn mig_data_read_without_room_or_shorter_than_its_head_is_refused() {
    let (server, mut c) = setup();
    reach(&mut c, &server, StopCopy);
    for payload in [vec![], vec![0u8; 4], vec![0u8; 7]] {
        let r = c.request(Command::MigDataRead, &[&payload], &[]);
        assert_eq!(errno(r), Some(Errno::EINVAL), "{}-byte MIG_DATA_READ", payload.len());
    }
    for argsz in [0, 8, 8 + 4095] {
        let req = MigData { argsz, size: 4096 };
        let r = c.request(Command::MigDataRead, &[req.as_bytes()], &[]);
        assert_eq!(errno(r), Some(Errno::EINVAL), "MIG_DATA_READ of 4096 with argsz {argsz}");
    }
    let req = MigData { argsz: 8, size: 0 };
    assert_eq!(errno(c.request(Command::MigDataRead, &[req.as_bytes()], &[])), Some(Errno::EINVAL), "size 0");
    // Still readable to the end.
    read_to_short(&mut c, &server, &mut Vec::new());
}

#[test]
fn mig_data_write_too_long_or_with_data_missing_is_refused() {
    let (server, mut c) = setup();
    reach(&mut c, &server, Resuming);
    let big = vec![0u8; MAX_XFER as usize + 1];
    assert_eq!(errno(c.mig_data_write(&big)), Some(Errno::EINVAL), "size above max_data_xfer_size");
    for (size, carried) in [(16u32, 0usize), (16, 15), (4096, 100)] {
        let req = MigData { argsz: 8 + size, size };
        let data = vec![0u8; carried];
        let r = c.request(Command::MigDataWrite, &[req.as_bytes(), &data], &[]);
        assert_eq!(errno(r), Some(Errno::EINVAL), "size {size} carrying {carried} bytes");
    }
    let r = c.request(Command::MigDataWrite, &[&[0u8; 4]], &[]);
    assert_eq!(errno(r), Some(Errno::EINVAL), "4-byte MIG_DATA_WRITE");
    assert_eq!(ok("GET state", c.mig_state(), &|| server.context()), Resuming);
}

#[test]
fn a_complete_stream_resumes_and_the_same_stream_resumes_twice() {
    let chunks = a_complete_stream();
    let (server, mut c) = setup();
    for _ in 0..2 {
        ok("SET RESUMING", c.set_mig_state(Resuming), &|| server.context());
        for chunk in &chunks {
            ok("MIG_DATA_WRITE", c.mig_data_write(chunk), &|| server.context());
        }
        ok("RESUMING -> STOP", c.set_mig_state(Stop), &|| server.context());
        ok("STOP -> RUNNING", c.set_mig_state(Running), &|| server.context());
        assert_eq!(ok("SCRATCH", c.read_u64(BAR0, REG_SCRATCH), &|| server.context()), 42);
    }
}

#[test]
fn a_truncated_stream_fails_resuming_to_stop_with_enodata_and_stays_resuming() {
    let chunks = a_complete_stream();
    let whole: Vec<u8> = chunks.concat();
    let (server, mut c) = setup();
    let cuts = [0, 1, whole.len() / 2, whole.len() - 1];
    for cut in cuts {
        ok("DEVICE_RESET", c.reset(), &|| server.context());
        ok("SET RESUMING", c.set_mig_state(Resuming), &|| server.context());
        for part in whole.get(..cut).unwrap_or_default().chunks(MAX_XFER as usize) {
            ok("MIG_DATA_WRITE", c.mig_data_write(part), &|| server.context());
        }
        let r = c.set_mig_state(Stop);
        assert_eq!(errno(r), Some(Errno::ENODATA), "RESUMING -> STOP after {cut} of {} bytes", whole.len());
        assert_eq!(ok("GET state", c.mig_state(), &|| server.context()), Resuming, "after {cut} bytes");
        // The refusal is sticky (the device's documented choice): more data does not revive a
        // stream that was judged incomplete, but a fresh RESUMING after DEVICE_RESET takes the
        // complete stream.
        for part in whole.get(cut..).unwrap_or_default().chunks(MAX_XFER as usize) {
            ok("MIG_DATA_WRITE", c.mig_data_write(part), &|| server.context());
        }
        assert_eq!(errno(c.set_mig_state(Stop)), Some(Errno::ENODATA), "second RESUMING -> STOP after {cut} bytes");
        assert_eq!(ok("GET state", c.mig_state(), &|| server.context()), Resuming);
        ok("DEVICE_RESET", c.reset(), &|| server.context());
        ok("SET RESUMING", c.set_mig_state(Resuming), &|| server.context());
        for part in whole.chunks(MAX_XFER as usize) {
            ok("MIG_DATA_WRITE", c.mig_data_write(part), &|| server.context());
        }
        ok("RESUMING -> STOP of the complete stream", c.set_mig_state(Stop), &|| server.context());
    }
}

#[test]
fn a_corrupted_stream_fails_resuming_to_stop_with_ebadmsg() {
    let chunks = a_complete_stream();
    let whole: Vec<u8> = chunks.concat();
    let (server, mut c) = setup();
    for at in [0, 4, whole.len() / 2, whole.len() - 1] {
        let mut bad = whole.clone();
        if let Some(b) = bad.get_mut(at) {
            *b ^= 0x5a;
        }
        ok("DEVICE_RESET", c.reset(), &|| server.context());
        ok("SET RESUMING", c.set_mig_state(Resuming), &|| server.context());
        let mut refused = None;
        for part in bad.chunks(MAX_XFER as usize) {
            if let Err(e) = c.mig_data_write(part) {
                refused = Some(e);
                break;
            }
        }
        let r = match refused {
            // A device may refuse the bad bytes as they arrive; then RESUMING -> STOP must fail too.
            Some(e) => {
                assert_eq!(e.errno(), Some(Errno::EBADMSG), "MIG_DATA_WRITE of a stream corrupted at {at}");
                c.set_mig_state(Stop)
            }
            None => c.set_mig_state(Stop),
        };
        assert_eq!(errno(r), Some(Errno::EBADMSG), "RESUMING -> STOP of a stream corrupted at byte {at}");
        let s = ok("GET state", c.mig_state(), &|| server.context());
        assert!(matches!(s, Resuming | MigState::Error), "after a corrupted stream the state is {s:?}");
    }
    ok("DEVICE_RESET", c.reset(), &|| server.context());
    assert_eq!(ok("GET state", c.mig_state(), &|| server.context()), Running);
}

#[test]
fn region_writes_other_than_config_are_refused_while_stopped_and_reads_work() {
    let (server, mut c) = setup();
    ok("SCRATCH", c.write_u64(BAR0, REG_SCRATCH, 0x1234), &|| server.context());
    for s in [Stop, StopCopy, Resuming] {
        reach(&mut c, &server, s);
        let ctx = || format!("in {s:?}\n{}", server.context());
        for (what, region, offset) in [("BAR0", BAR0, REG_SCRATCH), ("BAR2", BAR2, 64), ("BAR4", BAR4, 20 << 10)] {
            assert_eq!(errno(c.region_write(region, offset, &[1u8; 8])), Some(Errno::EBUSY), "{what} write in {s:?}");
            ok(&format!("{what} read"), c.region_read(region, offset, 8), &ctx);
        }
        let doorbell = c.write_u32(BAR0, 0x48, 1);
        assert_eq!(errno(doorbell), Some(Errno::EBUSY), "DOORBELL in {s:?}");
        // Configuration space stays writable (the VMM may still touch it).
        let cmd = ok("config read", c.region_read(CONFIG, 4, 2), &ctx);
        ok("config write", c.region_write(CONFIG, 4, &cmd), &ctx);
        assert_eq!(ok("GET state", c.mig_state(), &ctx), s);
    }
    // In PRE_COPY the device still runs.
    reach(&mut c, &server, PreCopy);
    ok("SCRATCH write in PRE_COPY", c.write_u64(BAR0, REG_SCRATCH, 0x5678), &|| server.context());
    assert_eq!(ok("SCRATCH", c.read_u64(BAR0, REG_SCRATCH), &|| server.context()), 0x5678);
}
