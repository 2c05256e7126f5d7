//! mock-qemu's client against the real `vfu-server --device dma-engine` binary, in strict mode:
//!
//! - a session that sends every command of the specification (and is served every
//!   server-to-client one) finds no deviation at all: our server must be spec-clean;
//! - twin-socket mode: the device DMAs into a region mapped without an fd, the bytes arrive
//!   through the client's DMA service on the twin socket;
//! - the trace holds one JSON line per message, each request with exactly one reply.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;

use mock_qemu::client::{ClientOptions, TraceOptions};
use mock_qemu::{Client, ClientError};
use nix::errno::Errno;
use pretty_assertions::assert_eq;
use vfu_server::devices::dma_engine::fill_pattern;
use vfu_server::wire::{
    Command, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_GET,
    FEATURE_MIG_DEVICE_STATE, FEATURE_MIGRATION, FEATURE_PROBE, FEATURE_SET, IRQ_INDEX_MSIX, MigState,
};

use common::dmae::{self, BAR0, BAR2, BAR4, CONFIG, Cmd, DMA_RW, GuestRam, MsgRam, PAGE, ok};
use common::{REPLY_TIMEOUT, ServerProcess, eventfd};

const SERVER_ARGS: [&str; 4] = ["--device", "dma-engine", "--devmem-size", "64K"];
/// Guest memory the server maps from a memfd.
const FD_IOVA: u64 = 0x1000_0000;
/// Guest memory the server reaches only by DMA_READ / DMA_WRITE messages.
const MSG_IOVA: u64 = 0x2000_0000;
const RAM_LEN: u64 = 64 << 10;

/// A strict client asking for twin-socket mode, tracing to `trace` without timestamps.
fn strict_client(server: &ServerProcess, trace: Option<File>) -> Client {
    let opts = ClientOptions::with_timeout(REPLY_TIMEOUT).strict(true).twin_socket(true);
    let mut c = Client::connect(server.socket(), opts.timeout)
        .unwrap_or_else(|e| panic!("connecting failed: {e:?}\n{}", server.context()));
    c.set_strict(true);
    if let Some(f) = trace {
        let options = TraceOptions { session: "strict".into(), timestamps: false };
        c.set_trace_with(Box::new(BufWriter::new(f)), options);
    }
    ok("VERSION", c.negotiate(&opts.capabilities), &|| server.context());
    c
}

/// Reads the migration stream in `state` until a short read.
fn drain(c: &mut Client, server: &ServerProcess, out: &mut Vec<u8>) {
    loop {
        let n = ok("MIG_DATA_READ", c.mig_data_read_into(16 << 10, out), &|| server.context());
        if n < 16 << 10 {
            return;
        }
    }
}

/// Every command the specification has, in one session, with strict mode on.
fn every_command(c: &mut Client, server: &ServerProcess) {
    let ctx = || server.context();
    assert!(c.has_twin_socket(), "the server must offer twin-socket mode\n{}", ctx());
    let caps = c.server_caps().clone();
    assert_eq!(caps.write_multiple, Some(true));

    // Device, regions, IRQs.
    let dev = ok("DEVICE_GET_INFO", c.device_info(), &ctx);
    for index in 0..dev.num_regions {
        let r = ok(&format!("REGION_INFO {index}"), c.region_info(index), &ctx);
        if index == BAR4 {
            assert_eq!(r.sparse_areas.len(), 2);
            assert!(r.fd.is_some());
        }
        ok(&format!("REGION_IO_FDS {index}"), c.region_io_fds(index).or_else(einval_is_fine), &ctx);
    }
    for index in 0..dev.num_irqs {
        ok(&format!("IRQ_INFO {index}"), c.irq_info(index), &ctx);
    }
    let efd = eventfd();
    ok("SET_IRQS", c.set_eventfds(IRQ_INDEX_MSIX, 0, &[&efd]), &ctx);

    // Guest memory: one region with an fd, one served by messages.
    let fd_ram = GuestRam::new(FD_IOVA, RAM_LEN);
    let msg_ram = MsgRam::new(MSG_IOVA, RAM_LEN as usize);
    c.set_dma_service(Box::new(msg_ram.clone()));
    let remap = ok("audit_remap", c.audit_remap(FD_IOVA, RAM_LEN, DMA_RW, Some((fd_ram.fd(), 0))), &ctx);
    assert!(!remap, "vfu-server must refuse an identical re-map");
    ok("DMA_MAP fd", fd_ram.map(c), &ctx);
    ok("DMA_MAP no fd", c.dma_map(MSG_IOVA, RAM_LEN, DMA_RW, None), &ctx);

    // Region access.
    ok("REGION_WRITE", c.write_u64(BAR0, dmae::REG_SCRATCH, 0x1122_3344_5566_7788), &ctx);
    assert_eq!(ok("REGION_READ", c.read_u64(BAR0, dmae::REG_SCRATCH), &ctx), 0x1122_3344_5566_7788);
    let writes: [(u32, u64, &[u8]); 3] = [(BAR2, 0, &[1, 2, 3, 4]), (BAR2, 8, &[5; 8]), (BAR0, 0x18, &[9])];
    assert_eq!(ok("REGION_WRITE_MULTI", c.region_write_multi(&writes), &ctx), 3);
    assert_eq!(
        ok("REGION_READ BAR2", c.region_read(BAR2, 0, 16), &ctx),
        [1, 2, 3, 4, 0, 0, 0, 0, 5, 5, 5, 5, 5, 5, 5, 5]
    );
    ok("REGION_READ config", c.region_read(CONFIG, 0, 64), &ctx);
    // A refusal (an offset past BAR0) is an error reply without a payload.
    assert!(matches!(c.region_read(BAR0, 1 << 20, 4), Err(ClientError::Refused { .. })));

    // Migration features and dirty logging.
    ok("GET MIGRATION", c.migration_flags(), &ctx);
    for (feature, ops) in [
        (FEATURE_MIGRATION, FEATURE_GET),
        (FEATURE_MIG_DEVICE_STATE, FEATURE_GET | FEATURE_SET),
        (FEATURE_DMA_LOGGING_START, FEATURE_SET),
        (FEATURE_DMA_LOGGING_STOP, FEATURE_SET),
        (FEATURE_DMA_LOGGING_REPORT, FEATURE_GET),
    ] {
        ok(&format!("PROBE {feature} {ops:#x}"), c.probe(feature, ops), &ctx);
    }
    let _ = FEATURE_PROBE;
    ok("DMA_LOGGING_START", c.dma_logging_start(PAGE, &[(FD_IOVA, RAM_LEN)]), &ctx);

    // DMA: FILL both guest memories (DMA_WRITE on the twin socket for the message-served
    // one), then COPY each back into the device (DMA_READ).
    dmae::run(c, Cmd::fill(FD_IOVA + 0x1000, 0x3000, 7), &ctx);
    dmae::run(c, Cmd::fill(MSG_IOVA + 0x100, 0x2345, 9), &ctx);
    dmae::run(c, Cmd::to_device(MSG_IOVA + 0x100, 0x100, 0x2345), &ctx);
    dmae::run(c, Cmd::to_device(FD_IOVA + 0x1000, 0x8000, 0x3000), &ctx);
    let mut want = vec![0u8; 0x2345];
    fill_pattern(9, 0, &mut want);
    dmae::assert_same_bytes("message-served guest memory", &want, &msg_ram.contents()[0x100..0x100 + 0x2345]);
    // Reports of several sizes: the bits past the range must be zero (strict mode checks).
    for (len, page) in [(RAM_LEN, PAGE), (0x5000, PAGE), (0x3000, 0x2000), (RAM_LEN - PAGE, 1 << 10)] {
        ok("DMA_LOGGING_REPORT", c.dma_logging_report(FD_IOVA, len, page), &ctx);
    }
    ok("DMA_LOGGING_STOP", c.dma_logging_stop(), &ctx);

    // Migration data out and back in.
    assert_eq!(ok("GET state", c.mig_state(), &ctx), MigState::Running);
    ok("PRE_COPY", c.set_mig_state(MigState::PreCopy), &ctx);
    let mut stream = Vec::new();
    drain(c, server, &mut stream);
    ok("STOP_COPY", c.set_mig_state(MigState::StopCopy), &ctx);
    drain(c, server, &mut stream);
    ok("STOP", c.set_mig_state(MigState::Stop), &ctx);
    ok("RESUMING", c.set_mig_state(MigState::Resuming), &ctx);
    for chunk in stream.chunks(16 << 10) {
        ok("MIG_DATA_WRITE", c.mig_data_write(chunk), &ctx);
    }
    ok("RESUMING -> STOP", c.set_mig_state(MigState::Stop), &ctx);
    ok("RUNNING", c.set_mig_state(MigState::Running), &ctx);

    // Tear down.
    ok("DMA_UNMAP", c.dma_unmap(MSG_IOVA, RAM_LEN, 0), &ctx);
    ok("DMA_UNMAP", fd_ram.unmap(c), &ctx);
    ok("DEVICE_RESET", c.reset(), &ctx);
}

/// DEVICE_GET_REGION_IO_FDS of a region without ioeventfds may be refused.
fn einval_is_fine<T: Default>(e: ClientError) -> Result<T, ClientError> {
    match e.errno() {
        Some(Errno::EINVAL) => Ok(T::default()),
        _ => Err(e),
    }
}

#[test]
fn our_server_is_spec_clean_in_strict_mode_over_every_command() {
    let server = ServerProcess::spawn(&SERVER_ARGS);
    let mut c = strict_client(&server, None);
    every_command(&mut c, &server);
    assert_eq!(c.findings(), [], "findings against vfu-server\n{}", server.context());
    assert_eq!(c.stale_replies(), 0);
}

#[test]
fn twin_socket_serves_device_dma_into_memory_mapped_without_an_fd() {
    let server = ServerProcess::spawn(&SERVER_ARGS);
    let ctx = || server.context();
    let mut c = strict_client(&server, None);
    assert!(c.has_twin_socket());
    let ram = MsgRam::new(MSG_IOVA, 0x4000);
    c.set_dma_service(Box::new(ram.clone()));
    ok("DMA_MAP", c.dma_map(MSG_IOVA, 0x4000, DMA_RW, None), &ctx);
    dmae::run(&mut c, Cmd::fill(MSG_IOVA + 8, 0x3000, 42), &ctx);
    let mut want = vec![0u8; 0x3000];
    fill_pattern(42, 0, &mut want);
    let got = ram.contents();
    dmae::assert_same_bytes("guest memory after FILL", &want, &got[8..8 + 0x3000]);
    assert!(got[..8].iter().chain(&got[8 + 0x3000..]).all(|b| *b == 0), "FILL wrote outside its range");
    // And back: COPY guest -> device reads it with DMA_READ.
    dmae::run(&mut c, Cmd::to_device(MSG_IOVA + 8, 0, 0x3000), &ctx);
    assert_eq!(ok("REGION_READ", c.region_read(BAR2, 0, 0x3000), &ctx), want);
    assert_eq!(c.findings(), []);
}

#[test]
fn the_trace_has_one_line_per_message() {
    let server = ServerProcess::spawn(&SERVER_ARGS);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    let mut c = strict_client(&server, Some(File::create(&path).unwrap()));
    every_command(&mut c, &server);
    c.stop_trace();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    // Each request (flags type 0) has exactly one reply (type 1), keyed by direction, msg_id, cmd.
    let mut open: BTreeMap<(String, u64, u64), usize> = BTreeMap::new();
    let (mut requests, mut dma) = (0, 0);
    for l in &lines {
        assert_eq!(l["session"], "strict");
        assert!(l.get("t").is_none());
        let (dir, id, cmd, flags) = (
            l["dir"].as_str().unwrap(),
            l["msg_id"].as_u64().unwrap(),
            l["cmd"].as_u64().unwrap(),
            l["flags"].as_u64().unwrap(),
        );
        assert_eq!(l["size"].as_u64().unwrap(), 16 + l["payload"].as_str().unwrap().len() as u64 / 2);
        let from_requester = if flags & 0xf == 0 { dir.to_string() } else { other(dir) };
        let key = (from_requester, id, cmd);
        if flags & 0xf == 0 {
            requests += 1;
            if cmd == Command::DmaRead as u64 || cmd == Command::DmaWrite as u64 {
                dma += 1;
                assert_eq!(dir, "s2c");
            }
            assert!(open.insert(key, 1).is_none(), "two requests outstanding as {l}");
        } else {
            assert!(open.remove(&key).is_some(), "a reply to nothing: {l}");
        }
    }
    assert!(open.is_empty(), "requests without replies: {open:?}");
    assert_eq!(lines.len(), 2 * requests);
    assert!(dma > 0, "the session must have served DMA requests");
    assert_eq!(lines[0]["cmd_name"], "VERSION");
}

fn other(dir: &str) -> String {
    if dir == "c2s" { "s2c".into() } else { "c2s".into() }
}
