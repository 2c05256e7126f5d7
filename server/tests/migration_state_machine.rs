//! The migration state machine and the DEVICE_FEATURE command over a real socket, against the
//! real `vfu-server --device dma-engine` binary, through mock-qemu's typed migration calls.
//!
//! Covers: GET and SET of MIG_DEVICE_STATE along every path the specification's next-hop table
//! gives (from RUNNING to every target, and from STOP, STOP_COPY and PRE_COPY to every target),
//! the refusals (STOP_COPY→PRE_COPY, states that do not exist, ERROR, the P2P states) and that a
//! refusal changes nothing; the MIGRATION flags; PROBE; the flag and `argsz` checks of
//! DEVICE_FEATURE; DEVICE_RESET from the saving and resuming states; arcs refused by repeated
//! `--fail-arc` flags (EIO, the walk stopping at the last completed hop); and a client that
//! disconnects in PRE_COPY, after which the next client finds the device RUNNING with logging
//! off and can migrate it.

mod common;

use mock_qemu::Client;
use nix::errno::Errno;
use pretty_assertions::assert_eq;
use vfu_server::wire::{
    Command, DeviceFeature, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP,
    FEATURE_GET, FEATURE_MIG_DEVICE_STATE, FEATURE_MIGRATION, FEATURE_PROBE, FEATURE_SET, MIGRATION_PRE_COPY,
    MIGRATION_STOP_COPY, MigState,
};
use zerocopy::IntoBytes;

use common::ServerProcess;
use common::dmae::{GuestRam, PAGE, ok};
use common::dmae::{errno, setup};

use MigState::{PreCopy, Resuming, Running, Stop, StopCopy};

fn state(c: &mut Client, server: &ServerProcess) -> MigState {
    ok("GET MIG_DEVICE_STATE", c.mig_state(), &|| server.context())
}

fn set(c: &mut Client, server: &ServerProcess, s: MigState) {
    ok(&format!("SET MIG_DEVICE_STATE {s:?}"), c.set_mig_state(s), &|| server.context());
}

/// Brings the device back to RUNNING from anywhere (DEVICE_RESET: RESUMING→STOP would need a
/// valid stream).
fn back_to_running(c: &mut Client, server: &ServerProcess) {
    ok("DEVICE_RESET", c.reset(), &|| server.context());
    assert_eq!(state(c, server), Running, "DEVICE_RESET must leave the device RUNNING");
}

/// Drives a fresh-from-RUNNING device to `s` (reading nothing).
fn reach(c: &mut Client, server: &ServerProcess, s: MigState) {
    back_to_running(c, server);
    set(c, server, s);
    assert_eq!(state(c, server), s);
}

#[test]
fn a_new_device_is_running() {
    let (server, mut c) = setup();
    assert_eq!(state(&mut c, &server), Running);
}

#[test]
fn migration_flags_include_stop_copy_and_pre_copy() {
    let (server, mut c) = setup();
    let flags = ok("GET MIGRATION", c.migration_flags(), &|| server.context());
    assert_eq!(
        flags & (MIGRATION_STOP_COPY | MIGRATION_PRE_COPY),
        MIGRATION_STOP_COPY | MIGRATION_PRE_COPY,
        "{flags:#x}"
    );
}

#[test]
fn every_target_is_reachable_from_running_in_one_set() {
    let (server, mut c) = setup();
    for target in [Stop, Running, StopCopy, Resuming, PreCopy] {
        back_to_running(&mut c, &server);
        set(&mut c, &server, target);
        assert_eq!(state(&mut c, &server), target, "RUNNING -> {target:?}");
    }
}

/// The specification's next-hop table read as "SET from `from` to `to` succeeds" (a path
/// exists), for every origin a device reaches without migration data.
#[test]
fn every_pair_succeeds_or_fails_as_the_next_hop_table_says() {
    let (server, mut c) = setup();
    for from in [Stop, Running, StopCopy, PreCopy] {
        for to in [Stop, Running, StopCopy, Resuming, PreCopy] {
            reach(&mut c, &server, from);
            let r = c.set_mig_state(to);
            if (from, to) == (StopCopy, PreCopy) {
                assert_eq!(errno(r), Some(Errno::EINVAL), "{from:?} -> {to:?}");
                assert_eq!(state(&mut c, &server), from, "a refused SET must leave the state unchanged");
            } else {
                ok(&format!("{from:?} -> {to:?}"), r, &|| server.context());
                assert_eq!(state(&mut c, &server), to, "{from:?} -> {to:?}");
            }
        }
    }
}

#[test]
fn stop_copy_to_pre_copy_is_refused_and_changes_nothing() {
    let (server, mut c) = setup();
    set(&mut c, &server, PreCopy);
    set(&mut c, &server, StopCopy);
    assert_eq!(errno(c.set_mig_state(PreCopy)), Some(Errno::EINVAL));
    assert_eq!(state(&mut c, &server), StopCopy);
    // The stream can still be read to its end and the device stopped.
    while ok("MIG_DATA_READ", c.mig_data_read(1 << 20), &|| server.context()).len() == 1 << 20 {}
    set(&mut c, &server, Stop);
}

#[test]
fn nonexistent_error_and_p2p_states_are_refused_from_every_state() {
    let (server, mut c) = setup();
    for from in [Stop, Running, StopCopy, Resuming, PreCopy] {
        reach(&mut c, &server, from);
        for bad in [MigState::Error as u32, 5, 7, 8, 0xffff, u32::MAX] {
            assert_eq!(errno(c.set_mig_state_raw(bad)), Some(Errno::EINVAL), "{from:?} -> {bad}");
            assert_eq!(state(&mut c, &server), from, "a refused SET to {bad} must leave {from:?}");
        }
    }
}

#[test]
fn every_fail_arc_given_is_refused_with_eio_and_stops_the_walk_there() {
    let args = ["--device", "dma-engine", "--fail-arc", "pre-copy:stop-copy", "--fail-arc", "stop:resuming"];
    let server = ServerProcess::spawn(&args);
    let mut c = server.connect();
    set(&mut c, &server, PreCopy);
    assert_eq!(errno(c.set_mig_state(StopCopy)), Some(Errno::EIO), "PRE_COPY -> STOP_COPY");
    assert_eq!(state(&mut c, &server), PreCopy);
    set(&mut c, &server, Running);
    assert_eq!(errno(c.set_mig_state(Resuming)), Some(Errno::EIO), "RUNNING -> STOP -> RESUMING");
    assert_eq!(state(&mut c, &server), Stop, "the walk stops after the last arc that succeeded");
    set(&mut c, &server, StopCopy);
    set(&mut c, &server, Stop);
}

#[test]
fn setting_the_current_state_again_succeeds() {
    let (server, mut c) = setup();
    for s in [Stop, Running, StopCopy, Resuming, PreCopy] {
        reach(&mut c, &server, s);
        set(&mut c, &server, s);
        assert_eq!(state(&mut c, &server), s);
    }
}

#[test]
fn device_reset_from_pre_copy_stop_copy_and_resuming_returns_to_running() {
    let (server, mut c) = setup();
    for s in [PreCopy, StopCopy, Resuming, Stop] {
        back_to_running(&mut c, &server);
        set(&mut c, &server, s);
        ok("DEVICE_RESET", c.reset(), &|| server.context());
        assert_eq!(state(&mut c, &server), Running, "DEVICE_RESET from {s:?}");
        // And the machine works again from there.
        set(&mut c, &server, PreCopy);
        set(&mut c, &server, Running);
    }
}

#[test]
fn probe_echoes_the_request() {
    let (server, mut c) = setup();
    let cases = [
        FEATURE_MIGRATION | FEATURE_GET,
        FEATURE_MIG_DEVICE_STATE | FEATURE_GET,
        FEATURE_MIG_DEVICE_STATE | FEATURE_SET,
        FEATURE_MIG_DEVICE_STATE | FEATURE_GET | FEATURE_SET,
        FEATURE_DMA_LOGGING_START | FEATURE_SET,
        FEATURE_DMA_LOGGING_STOP | FEATURE_SET,
        FEATURE_DMA_LOGGING_REPORT | FEATURE_GET,
    ];
    for f in cases {
        let flags = f | FEATURE_PROBE;
        let (head, data) = ok(&format!("PROBE {flags:#x}"), c.device_feature(flags, &[], None), &|| server.context());
        assert_eq!((head, data), (DeviceFeature { argsz: 8, flags }, vec![]), "PROBE {flags:#x}");
        ok("typed probe", c.probe(f & 0xffff, f & !0xffff), &|| server.context());
    }
}

#[test]
fn probe_of_an_unsupported_op_is_einval() {
    let (_server, mut c) = setup();
    let cases = [
        FEATURE_MIGRATION | FEATURE_SET,
        FEATURE_MIGRATION | FEATURE_GET | FEATURE_SET,
        FEATURE_DMA_LOGGING_START | FEATURE_GET,
        FEATURE_DMA_LOGGING_STOP | FEATURE_GET,
        FEATURE_DMA_LOGGING_REPORT | FEATURE_SET,
    ];
    for f in cases {
        assert_eq!(errno(c.probe(f & 0xffff, f & !0xffff)), Some(Errno::EINVAL), "PROBE {f:#x}");
    }
}

#[test]
fn get_and_set_together_without_probe_is_einval() {
    let (_server, mut c) = setup();
    let data = [2u32, 0].as_bytes().to_vec();
    let r = c.device_feature(FEATURE_MIG_DEVICE_STATE | FEATURE_GET | FEATURE_SET, &data, None);
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn no_op_or_an_unknown_flag_bit_is_einval() {
    let (_server, mut c) = setup();
    assert_eq!(errno(c.device_feature(FEATURE_MIGRATION, &[], Some(16))), Some(Errno::EINVAL), "no op");
    let r = c.device_feature(FEATURE_MIGRATION | FEATURE_GET | 0x8_0000, &[], Some(16));
    assert_eq!(errno(r), Some(Errno::EINVAL), "bit 0x80000");
}

#[test]
fn an_unknown_feature_id_is_enotty() {
    let (_server, mut c) = setup();
    for id in [0, 3, 4, 5, 9, 0x1234, 0xffff] {
        for op in [FEATURE_GET, FEATURE_SET, FEATURE_PROBE | FEATURE_GET] {
            let r = c.device_feature(id | op, &[0; 16], Some(64));
            assert_eq!(errno(r), Some(Errno::ENOTTY), "feature {id} op {op:#x}");
        }
    }
}

#[test]
fn every_argsz_too_small_is_einval() {
    let (server, mut c) = setup();
    let ram = GuestRam::new(0x1000_0000, 1 << 20);
    ok("DMA_MAP", ram.map(&mut c), &|| server.context());
    let state_data = [Running as u32, 0].as_bytes().to_vec();
    let mut start_data = PAGE.as_bytes().to_vec(); // page_size, num_ranges 1, reserved, one range
    start_data.extend_from_slice([1u32, 0].as_bytes());
    start_data.extend_from_slice([ram.iova, ram.len].as_bytes());
    let report_data = [ram.iova, ram.len, PAGE].as_bytes().to_vec();
    // (what, flags, data, smallest valid argsz, whether logging must be on)
    let cases: [(&str, u32, &[u8], u32, bool); 5] = [
        ("GET MIGRATION", FEATURE_MIGRATION | FEATURE_GET, &[], 16, false),
        ("GET MIG_DEVICE_STATE", FEATURE_MIG_DEVICE_STATE | FEATURE_GET, &[], 16, false),
        ("SET MIG_DEVICE_STATE", FEATURE_MIG_DEVICE_STATE | FEATURE_SET, &state_data, 16, false),
        ("SET DMA_LOGGING_START", FEATURE_DMA_LOGGING_START | FEATURE_SET, &start_data, 8 + 16 + 16, false),
        // 256 pages: 4 words of bitmap.
        ("GET DMA_LOGGING_REPORT", FEATURE_DMA_LOGGING_REPORT | FEATURE_GET, &report_data, 8 + 24 + 32, true),
    ];
    for (what, flags, data, min, logging) in cases {
        if logging {
            ok("DMA_LOGGING_START", c.dma_logging_start(PAGE, &[(ram.iova, ram.len)]), &|| server.context());
        }
        for argsz in [0, 4, 7, 8, min - 1] {
            let r = c.device_feature(flags, data, Some(argsz));
            assert_eq!(errno(r), Some(Errno::EINVAL), "{what} with argsz {argsz} (needs {min})");
        }
        let r = c.device_feature(flags, data, Some(min));
        let (head, _) = ok(&format!("{what} with argsz {min}"), r, &|| server.context());
        assert_eq!(head.flags, flags, "{what}");
        if logging || what == "SET DMA_LOGGING_START" {
            ok("DMA_LOGGING_STOP", c.dma_logging_stop(), &|| server.context());
        }
    }
    // A payload shorter than the 8-byte head, whatever argsz says.
    let r = c.request(Command::DeviceFeature, &[&16u32.to_le_bytes()], &[]);
    assert_eq!(errno(r), Some(Errno::EINVAL), "4-byte DEVICE_FEATURE payload");
}

#[test]
fn a_client_that_disconnects_in_pre_copy_leaves_a_running_device_with_logging_off() {
    let server = ServerProcess::spawn(&["--device", "dma-engine"]);
    let ram = GuestRam::new(0x1000_0000, 1 << 20);
    {
        let mut c = server.connect();
        ok("DMA_MAP", ram.map(&mut c), &|| server.context());
        ok("DMA_LOGGING_START", c.dma_logging_start(PAGE, &[]), &|| server.context());
        set(&mut c, &server, PreCopy);
        let first = ok("MIG_DATA_READ", c.mig_data_read(4096), &|| server.context());
        assert!(!first.is_empty(), "PRE_COPY must have data to read");
    }
    let mut c = server.connect();
    assert_eq!(state(&mut c, &server), Running, "after the client left in PRE_COPY");
    ok("DMA_MAP", ram.map(&mut c), &|| server.context());
    assert_eq!(
        errno(c.dma_logging_report(ram.iova, ram.len, PAGE)),
        Some(Errno::EINVAL),
        "logging must be off for the next client"
    );
    // A whole new migration works.
    ok("DMA_LOGGING_START", c.dma_logging_start(PAGE, &[]), &|| server.context());
    set(&mut c, &server, PreCopy);
    let mut total = 0;
    loop {
        let n = ok("MIG_DATA_READ", c.mig_data_read(1 << 20), &|| server.context()).len();
        total += n;
        if n < 1 << 20 {
            break;
        }
    }
    set(&mut c, &server, StopCopy);
    loop {
        let n = ok("MIG_DATA_READ", c.mig_data_read(1 << 20), &|| server.context()).len();
        total += n;
        if n < 1 << 20 {
            break;
        }
    }
    assert!(total > 0);
    set(&mut c, &server, Stop);
    ok("DMA_LOGGING_STOP", c.dma_logging_stop(), &|| server.context());
    set(&mut c, &server, Running);
}
