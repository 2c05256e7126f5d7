//! A dma-engine served with `--no-pre-copy`, over a real socket against the real `vfu-server`
//! binary: a device that can only be migrated by stop-and-copy.
//!
//! Covers: GET MIGRATION reports STOP_COPY alone; SET MIG_DEVICE_STATE to PRE_COPY is refused
//! with EINVAL from every state and changes nothing (the server drops every arc touching
//! PRE_COPY from its next-hop table, so the device is never asked); RUNNING→STOP_COPY in one
//! SET walks through STOP; a stop-and-copy migration (RUNNING→STOP→STOP_COPY, the stream read
//! to its end, the destination RESUMING, the stream written, RESUMING→STOP→RUNNING) leaves the
//! destination equal to the source; mock-qemu's QEMU flow, asked for pre-copy, falls back to
//! stop-and-copy against such a device; and `--fail-arc` of an arc touching PRE_COPY is refused
//! at startup (exit code 1) rather than never firing.

mod common;

use mock_qemu::Client;
use mock_qemu::migrate::{CancelToken, MigrationParams, PairOptions, migrate_between};
use nix::errno::Errno;
use pretty_assertions::assert_eq;
use vfu_server::wire::{FEATURE_MIG_DEVICE_STATE, FEATURE_SET, MIGRATION_STOP_COPY, MigState};

use common::ServerProcess;
use common::dmae::{BAR0, BAR4, Cmd, GuestRam, REG_SCRATCH, assert_same_bytes, errno, ok, run, snapshot};

use MigState::{PreCopy, Resuming, Running, Stop, StopCopy};

const ARGS: [&str; 5] = ["--device", "dma-engine", "--devmem-size", "1M", "--no-pre-copy"];
const RAM_IOVA: u64 = 0x1000_0000;
const RAM_LEN: u64 = 1 << 20;
/// Bytes asked for by each MIG_DATA_READ (the server's default max_data_xfer_size).
const READ_SIZE: u32 = 1 << 20;
/// Bound on the stream, so a device that never ends it fails instead of looping.
const MAX_STREAM: usize = 64 << 20;

fn state(c: &mut Client, server: &ServerProcess) -> MigState {
    ok("GET MIG_DEVICE_STATE", c.mig_state(), &|| server.context())
}

fn set(c: &mut Client, server: &ServerProcess, s: MigState) {
    ok(&format!("SET MIG_DEVICE_STATE {s:?}"), c.set_mig_state(s), &|| server.context());
}

/// Reads the stream until the short read that ends it in STOP_COPY.
fn read_to_end(c: &mut Client, server: &ServerProcess) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut total = 0;
    loop {
        let data = ok("MIG_DATA_READ", c.mig_data_read(READ_SIZE), &|| server.context());
        let n = data.len();
        total += n;
        assert!(total <= MAX_STREAM, "the stream passed {MAX_STREAM} bytes without ending");
        if n > 0 {
            chunks.push(data);
        }
        if n < READ_SIZE as usize {
            return chunks;
        }
    }
}

#[test]
fn get_migration_reports_stop_copy_only() {
    let server = ServerProcess::spawn(&ARGS);
    let mut c = server.connect();
    let flags = ok("GET MIGRATION", c.migration_flags(), &|| server.context());
    assert_eq!(flags, MIGRATION_STOP_COPY, "{flags:#x}");
    ok("PROBE SET MIG_DEVICE_STATE", c.probe(FEATURE_MIG_DEVICE_STATE, FEATURE_SET), &|| server.context());
}

#[test]
fn set_pre_copy_is_refused_with_einval_from_every_state_and_changes_nothing() {
    let server = ServerProcess::spawn(&ARGS);
    let mut c = server.connect();
    for from in [Running, Stop, StopCopy, Resuming] {
        ok("DEVICE_RESET", c.reset(), &|| server.context());
        set(&mut c, &server, from);
        assert_eq!(errno(c.set_mig_state(PreCopy)), Some(Errno::EINVAL), "{from:?} -> PRE_COPY");
        assert_eq!(state(&mut c, &server), from, "a refused SET must leave {from:?}");
    }
    // The device is still usable: MIG_DATA_READ is refused in RUNNING as ever (no stream was
    // started by the refused SET), and STOP_COPY is reached through STOP.
    ok("DEVICE_RESET", c.reset(), &|| server.context());
    assert_eq!(errno(c.set_mig_state(PreCopy)), Some(Errno::EINVAL));
    assert_eq!(errno(c.mig_data_read(4096)), Some(Errno::EINVAL), "no stream in RUNNING");
    set(&mut c, &server, StopCopy);
    assert!(!read_to_end(&mut c, &server).is_empty());
    set(&mut c, &server, Stop);
}

#[test]
fn a_stop_and_copy_migration_moves_the_whole_device() {
    let src = ServerProcess::spawn(&ARGS);
    let dst = ServerProcess::spawn(&ARGS);
    let (mut s, mut d) = (src.connect(), dst.connect());
    let ram = GuestRam::new(RAM_IOVA, RAM_LEN);
    ok("DMA_MAP", ram.map(&mut s), &|| src.context());
    run(&mut s, Cmd::fill(RAM_IOVA, RAM_LEN, 11), &|| src.context());
    run(&mut s, Cmd::to_device(RAM_IOVA, 0, RAM_LEN / 2), &|| src.context());
    ok("SCRATCH", s.write_u64(BAR0, REG_SCRATCH, 0xfeed), &|| src.context());
    ok("BAR4", s.region_write(BAR4, 40 << 10, &[0x5a; 64]), &|| src.context());

    set(&mut s, &src, Stop);
    set(&mut s, &src, StopCopy);
    let before = snapshot(&mut s, &|| src.context());
    let chunks = read_to_end(&mut s, &src);
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    // Never-written device memory goes in zero runs: the stream carries the half written.
    assert!(bytes > (RAM_LEN / 2) as usize, "the stream carries the written device memory ({bytes} bytes)");
    set(&mut s, &src, Stop);

    set(&mut d, &dst, Resuming);
    for chunk in &chunks {
        ok("MIG_DATA_WRITE", d.mig_data_write(chunk), &|| dst.context());
    }
    set(&mut d, &dst, Stop);
    set(&mut d, &dst, Running);
    let after = snapshot(&mut d, &|| dst.context());
    assert_same_bytes("BAR0", &before.regs, &after.regs);
    assert_same_bytes("configuration space", &before.config, &after.config);
    assert_same_bytes("device memory", &before.devmem, &after.devmem);
    assert_same_bytes("shared scratch memory", &before.scratch, &after.scratch);
    assert_eq!(ok("SCRATCH", d.read_u64(BAR0, REG_SCRATCH), &|| dst.context()), 0xfeed);
}

#[test]
fn running_to_stop_copy_in_one_set_walks_through_stop() {
    let server = ServerProcess::spawn(&ARGS);
    let mut c = server.connect();
    set(&mut c, &server, StopCopy);
    assert_eq!(state(&mut c, &server), StopCopy);
    assert!(!read_to_end(&mut c, &server).is_empty());
    set(&mut c, &server, Running);
    assert_eq!(state(&mut c, &server), Running, "STOP_COPY -> STOP -> RUNNING");
}

#[test]
fn a_fail_arc_touching_pre_copy_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vfu.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vfu-server"))
        .arg("--socket")
        .arg(&socket)
        .args(ARGS)
        .args(["--fail-arc", "running:pre-copy"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("vfu-server: error: invalid dma-engine options: cannot fail Running->PreCopy"), "{stderr}");
    assert!(!socket.exists(), "nothing was bound");
}

#[test]
fn qemus_flow_falls_back_to_stop_and_copy() {
    let (src, dst) = (ServerProcess::spawn(&ARGS), ServerProcess::spawn(&ARGS));
    let params = MigrationParams { use_pre_copy: true, max_rounds: 2, ..MigrationParams::default() };
    let options = PairOptions { ram: 64 << 20, seed: 3, vcpu_writes: 8, dma_per_step: 1, params, ..Default::default() };
    let report = migrate_between(src.socket(), dst.socket(), &options, &CancelToken::default()).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}\n{}", mock_qemu::migrate::error_chain(&e), src.context(), dst.context())
    });
    assert!(!report.stats.pre_copy, "the device offers no PRE_COPY:\n{}", report.stats);
    assert!(report.stats.rounds.iter().all(|r| r.device_bytes == 0), "no device data before the stop");
    assert!(report.stats.stop_copy_device_bytes > 0, "all device memory at stop-and-copy (never written: zero runs)");
    assert!(report.equal(), "{report:?}");
}
