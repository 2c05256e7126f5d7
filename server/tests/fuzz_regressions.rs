//! The fuzzers' inputs replayed on stable Rust: every file of `fuzz/regressions/<target>/`
//! (inputs that once crashed, or hostile ones made by hand) and of the checked-in seed corpus
//! `fuzz/corpus/<target>/` goes through its entry point of [`vfu_server::fuzzing`], and must
//! return without a panic. A failure names each file that panicked and what it said.
//!
//! The ignored test [`write_seed_corpus`] regenerates the seed corpus (`just fuzz-corpus`):
//! the recorded reference conversations of `tests/data/reference-sample-client.jsonl` (whole
//! sessions, and each distinct request alone), conversations with a dma-engine made here
//! (its registers and DMA by message, dirty logging, a migration out and one in), and real
//! dma-engine migration streams read out of devices driven through PRE_COPY and STOP_COPY.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfu_server::devices::dma_engine::regs::{
    BG_CTRL_ENABLE, DOORBELL_RING, OP_COPY_TO_DEVICE, OP_FILL, REG_BG_ADDR, REG_BG_CTRL, REG_BG_INTERVAL_US,
    REG_BG_LEN, REG_BG_SEED, REG_BG_WRITES, REG_CMD_DEV_OFFSET, REG_CMD_GUEST_ADDR, REG_CMD_LEN, REG_CMD_OP,
    REG_CMD_SEED, REG_DOORBELL, REG_SCRATCH,
};
use vfu_server::devices::dma_engine::stream::{RecordType, StreamDigest, encode_record, record_checksum};
use vfu_server::devices::dma_engine::{
    DmaEngine, REGION_CONFIG, REGION_DEVMEM, REGION_REGS, REGION_SCRATCH, fill_pattern,
};
use vfu_server::dma::DmaSpace;
use vfu_server::fuzzing::{self, DEVMEM_SIZE};
use vfu_server::irq::IrqTable;
use vfu_server::migration::{MigState, Migratable};
use vfu_server::mmap::MappedRegion;
use vfu_server::wire::{Command, FLAG_NO_REPLY, TYPE_REPLY};
use vfu_server::{Device, DeviceContext};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    out.sort();
    out
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Replays every file of `fuzz/<kind>/<target>/` through `entry`; fails naming each file that
/// panicked. Each directory must hold at least one file.
fn replay(kind: &str, target: &str, entry: fn(&[u8])) {
    let dir = fuzz_dir().join(kind).join(target);
    let inputs = files(&dir);
    assert!(!inputs.is_empty(), "{} holds no input", dir.display());
    let mut failed = Vec::new();
    for path in &inputs {
        let data = fs::read(path).unwrap();
        let name = format!("fuzz/{kind}/{target}/{}", path.file_name().unwrap().to_string_lossy());
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| entry(&data))) {
            failed.push(format!("{name} ({} bytes): {}", data.len(), panic_message(&*payload)));
        }
    }
    assert!(failed.is_empty(), "{} of {} inputs panicked:\n{}", failed.len(), inputs.len(), failed.join("\n"));
}

mod regressions {
    use super::*;

    #[test]
    fn wire_decoder() {
        replay("regressions", "wire_decoder", fuzzing::decode_wire);
    }

    #[test]
    fn session() {
        replay("regressions", "session", fuzzing::session);
    }

    /// The session target's regressions hit the sample device too.
    #[test]
    fn sample_session() {
        replay("regressions", "session", fuzzing::sample_session);
    }

    #[test]
    fn resume() {
        replay("regressions", "resume", fuzzing::resume);
    }
}

mod seed_corpus {
    use super::*;

    #[test]
    fn wire_decoder() {
        replay("corpus", "wire_decoder", fuzzing::decode_wire);
    }

    #[test]
    fn session() {
        replay("corpus", "session", fuzzing::session);
    }

    /// The session seeds, the recorded reference conversations among them, against the
    /// sample device (the `sample_session` target starts from the same seeds).
    #[test]
    fn sample_session() {
        replay("corpus", "session", fuzzing::sample_session);
    }

    #[test]
    fn resume() {
        replay("corpus", "resume", fuzzing::resume);
    }

    /// Every stream of the resume corpus is a real one: a dma-engine accepts it.
    #[test]
    fn resume_streams_are_accepted() {
        for path in files(&fuzz_dir().join("corpus/resume")) {
            let data = fs::read(&path).unwrap();
            let mut dst = Rig::new(false);
            dst.walk(&[MigState::Stop, MigState::Resuming]);
            dst.dev.write_data(&data[1..]).unwrap();
            assert_eq!(dst.arc(MigState::Stop), Ok(()), "{} is refused: regenerate it", path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The seed corpus

/// One message: the 16-byte header, then `payload`.
fn message(msg_id: u16, cmd: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&msg_id.to_le_bytes());
    out.extend_from_slice(&cmd.to_le_bytes());
    out.extend_from_slice(&(16 + payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Payload bytes, little-endian, built field by field.
#[derive(Default, Clone)]
struct P(Vec<u8>);

impl P {
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

fn p() -> P {
    P::default()
}

// Feature flags (specification).
const GET: u32 = 0x1_0000;
const SET: u32 = 0x2_0000;
const PROBE: u32 = 0x4_0000;
const MIGRATION: u32 = 1;
const MIG_DEVICE_STATE: u32 = 2;
const LOGGING_START: u32 = 6;
const LOGGING_STOP: u32 = 7;
const LOGGING_REPORT: u32 = 8;

fn version(json: &str) -> Vec<u8> {
    let mut tail = json.as_bytes().to_vec();
    tail.push(0);
    p().u16(0).u16(1).bytes(&tail).0
}

fn feature(flags: u32, data: &[u8]) -> Vec<u8> {
    p().u32(8 + data.len() as u32).u32(flags).bytes(data).0
}

fn set_state(state: MigState) -> Vec<u8> {
    feature(SET | MIG_DEVICE_STATE, &p().u32(state as u32).u32(0).0)
}

fn logging_start(page: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut d = p().u64(page).u32(ranges.len() as u32).u32(0);
    for &(iova, len) in ranges {
        d = d.u64(iova).u64(len);
    }
    feature(SET | LOGGING_START, &d.0)
}

/// A DMA_LOGGING_REPORT with room for exactly the bitmap it needs.
fn logging_report(iova: u64, length: u64, page: u64) -> Vec<u8> {
    let words = length.div_ceil(page).div_ceil(64) as u32;
    let d = p().u64(iova).u64(length).u64(page).0;
    p().u32(8 + 24 + 8 * words).u32(GET | LOGGING_REPORT).bytes(&d).0
}

fn region_access(region: u32, offset: u64, count: u32) -> P {
    p().u64(offset).u32(region).u32(count)
}

fn region_write(region: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    region_access(region, offset, data.len() as u32).bytes(data).0
}

fn mig_data_read(size: u32) -> Vec<u8> {
    p().u32(8 + size).u32(size).0
}

fn dma_map(addr: u64, size: u64) -> Vec<u8> {
    p().u32(32).u32(3).u64(0).u64(addr).u64(size).0
}

/// A client's side of a conversation: requests numbered from 1, and replies to the server's
/// own DMA requests.
#[derive(Default)]
struct Conversation {
    bytes: Vec<u8>,
    next_id: u16,
}

impl Conversation {
    fn send(&mut self, cmd: Command, payload: &[u8]) -> &mut Self {
        self.next_id += 1;
        self.bytes.extend(message(self.next_id, cmd as u16, 0, payload));
        self
    }

    /// The reply to the server's DMA request number `id`.
    fn reply(&mut self, id: u16, cmd: Command, payload: &[u8]) -> &mut Self {
        self.bytes.extend(message(id, cmd as u16, TYPE_REPLY, payload));
        self
    }

    /// A run of register writes in one REGION_WRITE_MULTI.
    fn write_multi(&mut self, writes: &[(u64, &[u8])]) -> &mut Self {
        let mut m = p().u64(writes.len() as u64);
        for (offset, data) in writes {
            let mut eight = [0u8; 8];
            eight[..data.len()].copy_from_slice(data);
            m = m.u64(*offset).u32(REGION_REGS).u32(data.len() as u32).bytes(&eight);
        }
        self.send(Command::RegionWriteMulti, &m.0)
    }

    /// The whole input of the `session` target: the chunking byte, then the bytes.
    fn input(&self, mode: u8) -> Vec<u8> {
        let mut out = vec![mode];
        out.extend_from_slice(&self.bytes);
        out
    }
}

const GUEST: u64 = 0x10_0000;
const GUEST_LEN: u64 = 1 << 20;
/// A client mapping without an fd: the server reaches it by DMA_READ / DMA_WRITE messages.
const REMOTE: u64 = 0x20_0000;
const REMOTE_LEN: u64 = 0x1_0000;

/// A dma-engine driven directly, as the server would, with 1 MiB of guest memory mapped from
/// a memfd at [`GUEST`].
struct Rig {
    dev: DmaEngine,
    space: Arc<DmaSpace>,
    irqs: IrqTable,
    _guest: Option<MappedRegion>,
}

impl Rig {
    fn new(guest: bool) -> Self {
        let dev = DmaEngine::new(fuzzing::dma_engine_config()).unwrap();
        let space = Arc::new(DmaSpace::new(16));
        let guest = guest.then(|| {
            let (region, fd) = MappedRegion::memfd(c"guest", GUEST_LEN).unwrap();
            space.map(GUEST, GUEST_LEN, true, true, Some((&fd, 0))).unwrap();
            region
        });
        let spec = dev.spec();
        Self { dev, space, irqs: IrqTable::new(spec.num_irqs, &spec.irqs), _guest: guest }
    }

    fn arc(&mut self, to: MigState) -> Result<(), vfu_server::migration::ArcError> {
        let from = self.dev.migration_state();
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.transition(&mut ctx, from, to)
    }

    fn walk(&mut self, path: &[MigState]) {
        for &to in path {
            self.arc(to).unwrap();
        }
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.region_write(&mut ctx, region, offset, data).unwrap();
    }

    fn reg(&mut self, offset: u64, v: u64) {
        self.write(REGION_REGS, offset, &v.to_le_bytes());
    }

    fn read_reg(&mut self, offset: u64) -> u64 {
        let mut buf = [0u8; 8];
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.region_read(&mut ctx, REGION_REGS, offset, &mut buf).unwrap();
        u64::from_le_bytes(buf)
    }

    fn command(&mut self, op: u32, guest: u64, dev_offset: u64, len: u64, seed: u64) {
        self.reg(REG_CMD_OP, op.into());
        self.reg(REG_CMD_GUEST_ADDR, guest);
        self.reg(REG_CMD_DEV_OFFSET, dev_offset);
        self.reg(REG_CMD_LEN, len);
        self.reg(REG_CMD_SEED, seed);
        self.write(REGION_REGS, REG_DOORBELL, &DOORBELL_RING.to_le_bytes());
    }

    /// Gives registers, configuration space, device and scratch memory non-power-on values.
    fn busy(&mut self) {
        self.write(REGION_CONFIG, 0x04, &[0x06, 0x04]);
        self.write(REGION_CONFIG, 0x18, &0x1234_5678_9ac0_0000u64.to_le_bytes());
        self.write(REGION_CONFIG, 0x3c, &[11]);
        self.command(OP_FILL, GUEST, 0, 3 * 4096 + 5, 7);
        self.command(OP_COPY_TO_DEVICE, GUEST, 0x801, 3 * 4096 + 5, 0);
        self.write(REGION_DEVMEM, DEVMEM_SIZE - 3, &[1, 2, 3]);
        self.write(REGION_SCRATCH, 20 << 10, &[9; 100]);
        self.reg(REG_SCRATCH, 0x5555);
    }

    /// Reads until a short read, `chunk` bytes at a time.
    fn read_round(&mut self, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = self.dev.read_data(&mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
            if n < chunk {
                return out;
            }
        }
    }
}

/// A busy device's whole stream: two pre-copy rounds (device memory written between them),
/// then STOP_COPY.
fn stream_pre_copy() -> Vec<u8> {
    let mut src = Rig::new(true);
    src.busy();
    src.walk(&[MigState::PreCopy]);
    let mut stream = src.read_round(64 << 10);
    src.write(REGION_DEVMEM, 0x5000, &[0xa5; 64]);
    stream.extend(src.read_round(1000));
    src.walk(&[MigState::StopCopy]);
    stream.extend(src.read_round(4096));
    stream
}

/// A power-on device's stream by stop-and-copy.
fn stream_stop_copy() -> Vec<u8> {
    let mut src = Rig::new(false);
    // Two pages of data; the rest never written goes in zero runs.
    src.write(REGION_DEVMEM, 0x3000, &[0x5a; 0x2000]);
    src.walk(&[MigState::Stop, MigState::StopCopy]);
    src.read_round(1 << 20)
}

/// The stream of a device whose background writer was enabled (and made exactly one write: its
/// interval is over an hour), so the destination gets it PAUSED.
fn stream_background_writer() -> Vec<u8> {
    let mut src = Rig::new(true);
    src.reg(REG_BG_SEED, 5);
    src.reg(REG_BG_ADDR, GUEST + 0x8000);
    src.reg(REG_BG_LEN, 0x1000);
    src.write(REGION_REGS, REG_BG_INTERVAL_US, &u32::MAX.to_le_bytes());
    src.write(REGION_REGS, REG_BG_CTRL, &BG_CTRL_ENABLE.to_le_bytes());
    let start = std::time::Instant::now();
    while src.read_reg(REG_BG_WRITES) == 0 {
        assert!(start.elapsed().as_secs() < 10, "the background writer made no write");
        std::thread::yield_now();
    }
    src.walk(&[MigState::PreCopy]);
    let mut stream = src.read_round(8192);
    src.walk(&[MigState::StopCopy]);
    stream.extend(src.read_round(8192));
    stream
}

/// The recorded reference conversations: each session's client-to-server messages in order.
fn trace_sessions() -> Vec<(String, Vec<Vec<u8>>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference-sample-client.jsonl");
    let mut sessions: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for line in fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["dir"] != "c2s" {
            continue;
        }
        let hex = v["payload"].as_str().unwrap();
        let payload: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let mut m = Vec::with_capacity(16 + payload.len());
        m.extend_from_slice(&(v["msg_id"].as_u64().unwrap() as u16).to_le_bytes());
        m.extend_from_slice(&(v["cmd"].as_u64().unwrap() as u16).to_le_bytes());
        m.extend_from_slice(&(v["size"].as_u64().unwrap() as u32).to_le_bytes());
        m.extend_from_slice(&(v["flags"].as_u64().unwrap() as u32).to_le_bytes());
        m.extend_from_slice(&(v["error_no"].as_u64().unwrap() as u32).to_le_bytes());
        m.extend_from_slice(&payload);
        assert_eq!(m.len() as u64, v["size"].as_u64().unwrap(), "a recorded message is whole: {line}");
        let session = v["session"].as_str().unwrap().to_string();
        match sessions.iter_mut().find(|(s, _)| *s == session) {
            Some((_, msgs)) => msgs.push(m),
            None => sessions.push((session, vec![m])),
        }
    }
    sessions
}

/// A dma-engine's tour: discovery, IRQs, region access, a mapping without an fd that its
/// commands reach by DMA_WRITE / DMA_READ messages (answered), dirty logging and its reports,
/// a migration out (PRE_COPY rounds, STOP_COPY to the end) and the way back.
fn conversation_tour() -> Conversation {
    let mut c = Conversation::default();
    c.send(Command::Version, &version(r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}"#));
    c.send(Command::DeviceGetInfo, &p().u32(16).u32(0).u32(0).u32(0).0);
    for index in 0..9 {
        let argsz = if index == REGION_SCRATCH { 80 } else { 32 };
        c.send(Command::DeviceGetRegionInfo, &p().u32(argsz).u32(0).u32(index).u32(0).u64(0).u64(0).0);
    }
    c.send(Command::DeviceGetRegionIoFds, &p().u32(16).u32(0).u32(0).u32(0).0);
    for index in 0..5 {
        c.send(Command::DeviceGetIrqInfo, &p().u32(16).u32(0).u32(index).u32(0).0);
    }
    c.send(Command::DeviceSetIrqs, &p().u32(22).u32(2 | 8).u32(2).u32(0).u32(2).bytes(&[1, 0]).0);
    c.send(Command::DeviceSetIrqs, &p().u32(20).u32(1 | 16).u32(2).u32(0).u32(4).0);
    c.send(Command::RegionRead, &region_access(REGION_REGS, 0, 0xb0).0);
    c.send(Command::RegionRead, &region_access(REGION_CONFIG, 0, 256).0);
    c.send(Command::RegionWrite, &region_write(REGION_CONFIG, 0x04, &[0x06, 0x04]));
    c.send(Command::RegionWrite, &region_write(REGION_SCRATCH, 0x4000, &[0x3c; 16]));
    c.send(Command::RegionWrite, &region_write(REGION_DEVMEM, 0x100, &0x1122_3344_5566_7788u64.to_le_bytes()));
    c.send(Command::DmaMap, &dma_map(REMOTE, REMOTE_LEN));
    c.send(Command::DeviceFeature, &feature(PROBE | SET | LOGGING_START, &[]));
    c.send(Command::DeviceFeature, &logging_start(4096, &[(REMOTE, REMOTE_LEN)]));
    // FILL 0x3000 bytes of the fd-less mapping: the server sends DMA_WRITE 1.
    let fill_len = 0x3000u64;
    c.write_multi(&[
        (0x20, &OP_FILL.to_le_bytes()),
        (0x28, &REMOTE.to_le_bytes()),
        (0x38, &fill_len.to_le_bytes()),
        (0x40, &7u64.to_le_bytes()),
        (0x48, &DOORBELL_RING.to_le_bytes()),
    ]);
    c.reply(1, Command::DmaWrite, &p().u64(REMOTE).u64(fill_len).0);
    // COPY 0x2000 bytes of it to device memory: the server sends DMA_READ 2.
    let copy_len = 0x2000u64;
    c.write_multi(&[
        (0x20, &OP_COPY_TO_DEVICE.to_le_bytes()),
        (0x30, &0x800u64.to_le_bytes()),
        (0x38, &copy_len.to_le_bytes()),
        (0x48, &DOORBELL_RING.to_le_bytes()),
    ]);
    let mut data = vec![0u8; copy_len as usize];
    fill_pattern(7, 0, &mut data);
    c.reply(2, Command::DmaRead, &p().u64(REMOTE).u64(copy_len).bytes(&data).0);
    c.send(Command::RegionRead, &region_access(REGION_REGS, 0x14, 4).0);
    c.send(Command::DeviceFeature, &logging_report(REMOTE, REMOTE_LEN, 4096));
    c.send(Command::DeviceFeature, &logging_report(REMOTE, REMOTE_LEN, 1024));
    c.send(Command::DeviceFeature, &logging_report(REMOTE + 0x1000, 0x4000, 0x4000));
    c.send(Command::DeviceFeature, &feature(GET | MIGRATION, &[0; 8]));
    c.send(Command::DeviceFeature, &set_state(MigState::PreCopy));
    c.send(Command::MigDataRead, &mig_data_read(64 << 10));
    c.send(Command::MigDataRead, &mig_data_read(64 << 10));
    c.send(Command::RegionWrite, &region_write(REGION_DEVMEM, 0x3000, &[0x77; 32]));
    c.send(Command::MigDataRead, &mig_data_read(64 << 10));
    c.send(Command::DeviceFeature, &set_state(MigState::StopCopy));
    for _ in 0..3 {
        c.send(Command::MigDataRead, &mig_data_read(64 << 10));
    }
    c.send(Command::DeviceFeature, &set_state(MigState::Stop));
    c.send(Command::DeviceFeature, &feature(GET | MIG_DEVICE_STATE, &[0; 8]));
    c.send(Command::DeviceFeature, &set_state(MigState::Running));
    c.send(Command::DeviceFeature, &feature(SET | LOGGING_STOP, &p().u64(0).u32(0).u32(0).0));
    c.send(Command::DmaUnmap, &p().u32(24).u32(0).u64(REMOTE).u64(REMOTE_LEN).0);
    c.send(Command::DmaUnmap, &p().u32(24).u32(2).u64(0).u64(0).0);
    c.send(Command::DeviceReset, &[]);
    c
}

/// A destination: RESUMING, `stream` in MIG_DATA_WRITEs of 32 KiB, configuration space
/// restored while resuming, STOP (the commit), RUNNING, the registers read back.
fn conversation_resume(stream: &[u8]) -> Conversation {
    let mut c = Conversation::default();
    c.send(Command::Version, &version("{}"));
    c.send(Command::DeviceFeature, &set_state(MigState::Resuming));
    for part in stream.chunks(32 << 10) {
        c.send(Command::MigDataWrite, &p().u32(8 + part.len() as u32).u32(part.len() as u32).bytes(part).0);
    }
    c.send(Command::RegionWrite, &region_write(REGION_CONFIG, 0x04, &[0x06, 0x00]));
    c.send(Command::DeviceFeature, &set_state(MigState::Stop));
    c.send(Command::DeviceFeature, &set_state(MigState::Running));
    c.send(Command::RegionRead, &region_access(REGION_REGS, 0, 0xb0).0);
    c
}

/// Twin-socket mode: the server's DMA goes to a socket whose client end the client drops.
fn conversation_twin_socket() -> Conversation {
    let mut c = Conversation::default();
    c.send(Command::Version, &version(r#"{"capabilities":{"twin_socket":{"supported":true}}}"#));
    c.send(Command::DmaMap, &dma_map(REMOTE, REMOTE_LEN));
    c.write_multi(&[
        (0x20, &OP_FILL.to_le_bytes()),
        (0x28, &REMOTE.to_le_bytes()),
        (0x38, &0x100u64.to_le_bytes()),
        (0x48, &DOORBELL_RING.to_le_bytes()),
    ]);
    c.send(Command::RegionRead, &region_access(REGION_REGS, 0x50, 16).0);
    c
}

/// Single requests for `wire_decoder` beyond the recorded ones: each command's dma-engine use.
fn wire_requests() -> Vec<(&'static str, Vec<u8>)> {
    let m = |cmd: Command, payload: Vec<u8>| message(1, cmd as u16, 0, &payload);
    vec![
        ("version-twin-socket", m(Command::Version, version(r#"{"capabilities":{"twin_socket":{"supported":true}}}"#))),
        (
            "version-every-capability",
            m(
                Command::Version,
                version(
                    r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":65536,"max_dma_maps":16,"pgsizes":4096,"write_multiple":true,"migration":{"pgsize":4096},"twin_socket":{"supported":false,"fd_index":0}}}"#,
                ),
            ),
        ),
        ("dma-map-no-fd", m(Command::DmaMap, dma_map(REMOTE, REMOTE_LEN))),
        ("dma-unmap-all", m(Command::DmaUnmap, p().u32(24).u32(2).u64(0).u64(0).0)),
        ("region-io-fds", m(Command::DeviceGetRegionIoFds, p().u32(16).u32(0).u32(0).u32(0).0)),
        ("set-irqs-bool-mask", m(Command::DeviceSetIrqs, p().u32(22).u32(2 | 8).u32(2).u32(0).u32(2).bytes(&[1, 0]).0)),
        ("set-irqs-none-trigger-intx", m(Command::DeviceSetIrqs, p().u32(20).u32(1 | 32).u32(0).u32(0).u32(1).0)),
        ("region-write-bar2", m(Command::RegionWrite, region_write(REGION_DEVMEM, 0x100, &[1, 2, 3, 4]))),
        (
            "region-write-multi-fill-doorbell",
            m(Command::RegionWriteMulti, p().u64(2).u64(0x20).u32(0).u32(4).u64(1).u64(0x48).u32(0).u32(4).u64(1).0),
        ),
        ("feature-probe-logging", m(Command::DeviceFeature, feature(PROBE | SET | LOGGING_START, &[]))),
        ("feature-set-resuming", m(Command::DeviceFeature, set_state(MigState::Resuming))),
        (
            "feature-logging-start-two-ranges",
            m(Command::DeviceFeature, logging_start(4096, &[(0, 0xa_0000), (0x10_0000, 0x100_0000)])),
        ),
        ("feature-logging-start-everything", m(Command::DeviceFeature, logging_start(0x2000, &[]))),
        ("feature-logging-report", m(Command::DeviceFeature, logging_report(REMOTE, REMOTE_LEN, 4096))),
        ("mig-data-read", m(Command::MigDataRead, mig_data_read(4096))),
        ("mig-data-write", m(Command::MigDataWrite, p().u32(12).u32(4).u32(0xdead_beef).0)),
        ("device-reset-no-reply", message(1, Command::DeviceReset as u16, FLAG_NO_REPLY, &[])),
        ("dma-read-reply", message(1, Command::DmaRead as u16, TYPE_REPLY, &p().u64(REMOTE).u64(4).u32(7).0)),
    ]
}

/// Streams of several messages for `wire_decoder`, with the limit byte each needs.
fn wire_sequences() -> Vec<(&'static str, u8, Vec<u8>)> {
    let mut log = Vec::new();
    log.extend(message(1, Command::DmaMap as u16, 0, &dma_map(REMOTE, REMOTE_LEN)));
    log.extend(message(2, Command::DeviceFeature as u16, 0, &logging_start(4096, &[])));
    log.extend(message(1, Command::DmaWrite as u16, 0, &p().u64(REMOTE + 0x1800).u64(0x2000).0));
    log.extend(message(3, Command::DeviceFeature as u16, 0, &logging_report(REMOTE, REMOTE_LEN, 4096)));
    log.extend(message(4, Command::DeviceFeature as u16, 0, &logging_report(REMOTE, 0x3000, 512)));
    log.extend(message(5, Command::DeviceFeature as u16, 0, &logging_report(REMOTE, REMOTE_LEN, 0x8000)));
    log.extend(message(6, Command::DeviceFeature as u16, 0, &feature(SET | LOGGING_STOP, &[0; 16])));
    let mut oversized = message(1, Command::RegionWrite as u16, 0, &region_write(REGION_REGS, 0x18, &[0; 100]));
    oversized.extend(message(2, Command::DeviceGetInfo as u16, 0, &p().u32(16).u32(0).u32(0).u32(0).0));
    let mut below = message(1, Command::DeviceGetInfo as u16, 0, &[]);
    below[4..8].copy_from_slice(&8u32.to_le_bytes());
    below.extend(message(2, Command::DeviceGetInfo as u16, 0, &p().u32(16).u32(0).u32(0).u32(0).0));
    vec![
        ("sequence-map-log-dma-write-reports-stop", 0, log),
        // Limit byte 5: 64-byte messages, so the 116-byte write is skipped whole.
        ("sequence-oversized-skipped-then-info", 5, oversized),
        ("sequence-size-below-header-then-info", 0, below),
    ]
}

/// Writes `files` into `dir`, replacing whatever it held.
fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    if dir.exists() {
        for f in self::files(dir) {
            fs::remove_file(f).unwrap();
        }
    }
    fs::create_dir_all(dir).unwrap();
    for (name, data) in files {
        fs::write(dir.join(name), data).unwrap();
    }
}

/// `just fuzz-corpus`: regenerates `fuzz/corpus/{session,wire_decoder,resume}/` (or those under
/// `$FUZZ_CORPUS_DIR`).
#[test]
#[ignore = "writes the seed corpus: run by `just fuzz-corpus`"]
fn write_seed_corpus() {
    let root = std::env::var_os("FUZZ_CORPUS_DIR").map_or_else(|| fuzz_dir().join("corpus"), PathBuf::from);
    let sessions = trace_sessions();

    let mut wire = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (session, msgs) in &sessions {
        for m in msgs {
            // One of each kind: command, flags, DEVICE_FEATURE's head, and size but for data.
            let cmd = u16::from_le_bytes([m[2], m[3]]);
            let feature_head = if cmd == Command::DeviceFeature as u16 { m[16..24].to_vec() } else { Vec::new() };
            let size = if [10, 17, 18].contains(&cmd) { 0 } else { m.len() };
            if !seen.insert((cmd, m[8..12].to_vec(), feature_head, size)) {
                continue;
            }
            let name = Command::from_u16(cmd).map_or("unknown", Command::name).to_lowercase().replace('_', "-");
            let mut input = vec![0u8];
            input.extend_from_slice(m);
            wire.push((format!("trace-{session}-{:02}-{name}", wire.len()), input));
        }
    }
    for (name, m) in wire_requests() {
        let mut input = vec![0u8];
        input.extend(m);
        wire.push((name.to_string(), input));
    }
    for (name, limit, bytes) in wire_sequences() {
        let mut input = vec![limit];
        input.extend(bytes);
        wire.push((name.to_string(), input));
    }

    let mut session = Vec::new();
    for (name, msgs) in &sessions {
        let c = Conversation { bytes: msgs.concat(), next_id: 0 };
        session.push((format!("trace-{name}"), c.input(0)));
    }
    session.push(("dma-engine-tour".into(), conversation_tour().input(0)));
    session.push(("dma-engine-tour-byte-by-byte".into(), conversation_tour().input(1)));
    session.push(("dma-engine-twin-socket".into(), conversation_twin_socket().input(0)));
    let pre_copy = stream_pre_copy();
    session.push(("dma-engine-resume".into(), conversation_resume(&pre_copy).input(0)));

    let with = |piece: u8, stream: &[u8]| [&[piece][..], stream].concat();
    let resume = vec![
        ("busy-pre-copy-then-stop-copy".to_string(), with(0, &pre_copy)),
        // 0x80: the harness fixes the checksums of whatever the fuzzer makes of it.
        ("power-on-stop-copy-in-4k-pieces-checksums-fixed".to_string(), with(0x80 | 64, &stream_stop_copy())),
        ("background-writer-paused-in-961-byte-pieces".to_string(), with(31, &stream_background_writer())),
    ];

    for (target, files) in [("wire_decoder", &wire), ("session", &session), ("resume", &resume)] {
        write_dir(&root.join(target), files);
        let bytes: usize = files.iter().map(|(_, d)| d.len()).sum();
        println!("{target}: {} files, {bytes} bytes", files.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-made hostile inputs (fuzz/regressions/, besides the crashes the fuzzers found)

/// `(offset, type, payload length)` of each record of a stream that starts at a record
/// boundary.
fn record_spans(stream: &[u8]) -> Vec<(usize, u32, usize)> {
    let (mut out, mut at) = (Vec::new(), 0);
    while at + 16 <= stream.len() {
        let ty = u32::from_le_bytes(stream[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(stream[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((at, ty, len));
        at += 16 + len;
    }
    out
}

fn put_u64(stream: &mut [u8], at: usize, v: u64) {
    stream[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Hostile migration streams, each named after what the device must answer RESUMING→STOP
/// with (`-ok` when it must accept it). Selector 0x80 makes the harness fix the checksums, so
/// the damage is seen behind them. All but one are a few records long: the first problem a
/// decoder finds is its answer, whatever follows.
fn hostile_streams() -> Vec<(&'static str, Vec<u8>)> {
    const FIX: u8 = 0x80;
    let valid = stream_stop_copy();
    let spans = record_spans(&valid);
    let record = |ty: RecordType| {
        let (at, _, len) = *spans.iter().find(|r| r.1 == ty as u32).unwrap();
        valid[at..at + 16 + len].to_vec()
    };
    let (header, regs, pci, page, zeros, trailer) = (
        record(RecordType::Header),
        record(RecordType::Registers),
        record(RecordType::PciConfig),
        record(RecordType::DevmemPage),
        record(RecordType::ZeroPages),
        record(RecordType::Trailer),
    );
    let with = |mode: u8, parts: &[&[u8]]| [&[mode][..], &parts.concat()].concat();
    let mut out = vec![
        ("valid-in-1-byte-pieces-ok", with(1, &[&valid])),
        ("header-alone-enodata", with(0, &[&header])),
        ("trailer-alone-ebadmsg", with(FIX, &[&trailer])),
        ("a-byte-after-the-trailer-ebadmsg", with(FIX, &[&header, &trailer, &[0]])),
        ("registers-twice-ebadmsg", with(FIX, &[&header, &regs, &regs])),
        ("complete-trailer-without-pages-ebadmsg", with(FIX, &[&header, &regs, &pci, &trailer])),
        ("header-record-length-4-gib-ebadmsg", with(0, &[&header[..4], &u32::MAX.to_le_bytes(), &header[8..]])),
    ];
    // The trailer of HEADER alone says 2 records: its own checksum right, its count wrong.
    let mut digest = StreamDigest::default();
    digest.update(u64::from_le_bytes(header[8..16].try_into().unwrap()));
    let count = encode_record(RecordType::Trailer as u32, &p().u64(2).u64(digest.finish()).0);
    out.push(("trailer-count-off-by-one-ebadmsg", with(0, &[&header, &count])));
    let mut v1 = header.clone();
    v1[16 + 8..16 + 12].copy_from_slice(&1u32.to_le_bytes());
    out.push(("format-version-1-eproto", with(FIX, &[&v1, &trailer])));
    let mut size = header.clone();
    put_u64(&mut size, 16 + 16, 2 * DEVMEM_SIZE);
    out.push(("devmem-size-of-another-device-einval", with(FIX, &[&size, &trailer])));
    let mut bg = regs.clone();
    put_u64(&mut bg, 16 + 14 * 8, 1); // BG_CTRL: enabled
    put_u64(&mut bg, 16 + 15 * 8, 2); // BG_STATUS: PAUSED, on BG_LEN 0
    out.push(("registers-background-writer-on-an-empty-window-ebadmsg", with(FIX, &[&header, &bg])));
    let mut status = regs.clone();
    put_u64(&mut status, 16, 6); // STATUS 6 does not exist
    out.push(("registers-unknown-status-ebadmsg", with(FIX, &[&header, &status])));
    let mut bar = pci.clone();
    bar[16 + 8..16 + 12].copy_from_slice(&0x0000_0fffu32.to_le_bytes()); // BAR0 size bits
    out.push(("pci-config-bar-bits-no-guest-can-write-ebadmsg", with(FIX, &[&header, &bar])));
    let mut past = page.clone();
    put_u64(&mut past, 16, DEVMEM_SIZE);
    out.push(("devmem-page-past-the-end-ebadmsg", with(FIX, &[&header, &past])));
    let mut unaligned = page.clone();
    put_u64(&mut unaligned, 16, 1);
    out.push(("devmem-page-unaligned-ebadmsg", with(FIX, &[&header, &unaligned])));
    let mut overrun = zeros.clone();
    put_u64(&mut overrun, 16, 4096);
    put_u64(&mut overrun, 16 + 8, DEVMEM_SIZE / 4096); // from page 1, one page too many
    out.push(("zero-run-past-the-end-ebadmsg", with(FIX, &[&header, &overrun])));
    let mut empty = zeros.clone();
    put_u64(&mut empty, 16 + 8, 0);
    out.push(("zero-run-of-no-pages-ebadmsg", with(FIX, &[&header, &empty])));
    out
}

/// Hostile conversations with a dma-engine: each ends with a request that must be served.
fn hostile_sessions() -> Vec<(&'static str, Vec<u8>)> {
    let info = p().u32(16).u32(0).u32(0).u32(0).0;
    let mut out = Vec::new();

    let mut c = Conversation::default();
    c.send(Command::DeviceGetInfo, &info).send(Command::DmaMap, &dma_map(REMOTE, REMOTE_LEN));
    c.send(Command::Version, &version("{}")).send(Command::DeviceGetInfo, &info);
    out.push(("requests-before-version", c.input(0)));

    let mut c = Conversation::default();
    c.send(Command::Version, &p().u16(1).u16(0).bytes(b"{}\0").0).send(Command::DeviceGetInfo, &info);
    out.push(("version-major-1-then-more-requests", c.input(3)));

    // A FILL of a mapping without an fd: while the server waits for the reply to its DMA_WRITE
    // 1, requests (queued), a reply to nothing and a malformed message arrive first.
    let mut c = Conversation::default();
    c.send(Command::Version, &version("{}")).send(Command::DmaMap, &dma_map(REMOTE, REMOTE_LEN));
    c.write_multi(&[
        (0x20, &OP_FILL.to_le_bytes()),
        (0x28, &REMOTE.to_le_bytes()),
        (0x38, &0x80u64.to_le_bytes()),
        (0x48, &DOORBELL_RING.to_le_bytes()),
    ]);
    c.send(Command::RegionRead, &region_access(REGION_REGS, 0x14, 4).0);
    c.reply(9, Command::DmaWrite, &p().u64(REMOTE).u64(0x80).0);
    let mut junk = message(0x77, Command::DeviceGetInfo as u16, 0, &[]);
    junk[4..8].copy_from_slice(&4u32.to_le_bytes()); // msg_size below the header
    c.bytes.extend(junk);
    c.send(Command::DeviceGetInfo, &info);
    c.reply(1, Command::DmaWrite, &p().u64(REMOTE).u64(0x80).0);
    c.send(Command::RegionRead, &region_access(REGION_REGS, 0x50, 16).0);
    out.push(("dma-write-reply-after-queued-requests-and-junk", c.input(5)));

    // Migration data and states where they are refused, then a reset.
    let mut c = Conversation::default();
    c.send(Command::Version, &version(r#"{"capabilities":{"max_data_xfer_size":4096}}"#));
    c.send(Command::MigDataRead, &mig_data_read(16));
    c.send(Command::DeviceFeature, &set_state(MigState::PreCopy));
    c.send(Command::MigDataWrite, &p().u32(12).u32(4).u32(0).0);
    c.send(Command::MigDataRead, &mig_data_read(0));
    c.send(Command::MigDataRead, &mig_data_read(8192));
    c.send(Command::MigDataRead, &p().u32(8).u32(64).0);
    c.send(Command::DeviceFeature, &feature(SET | MIG_DEVICE_STATE, &p().u32(0).u32(0).0));
    c.send(Command::DeviceFeature, &feature(SET | MIG_DEVICE_STATE, &p().u32(7).u32(0).0));
    c.send(Command::DeviceFeature, &feature(SET | MIG_DEVICE_STATE, &p().u32(99).u32(0).0));
    c.send(Command::DeviceFeature, &set_state(MigState::StopCopy));
    c.send(Command::DeviceFeature, &set_state(MigState::PreCopy));
    c.send(Command::RegionWrite, &region_write(REGION_DEVMEM, 0, &[1]));
    c.send(Command::DeviceFeature, &set_state(MigState::Resuming));
    c.send(Command::MigDataWrite, &p().u32(12).u32(4).u32(0xffff_ffff).0);
    c.send(Command::DeviceFeature, &set_state(MigState::Running));
    c.send(Command::DeviceReset, &[]).send(Command::DeviceGetInfo, &info);
    out.push(("migration-data-and-states-where-refused", c.input(0)));

    // Dirty reports at their edges: one word short, a page size that is no power of two,
    // outside the log, at the top of the address space.
    let mut c = Conversation::default();
    c.send(Command::Version, &version("{}"));
    let top = u64::MAX - 0xffff;
    c.send(Command::DeviceFeature, &logging_start(4096, &[(REMOTE, REMOTE_LEN), (top, 0xffff)]));
    let short = p().u32(8 + 24).u32(GET | LOGGING_REPORT).u64(REMOTE).u64(REMOTE_LEN).u64(4096).0;
    c.send(Command::DeviceFeature, &short);
    c.send(Command::DeviceFeature, &logging_report(REMOTE, REMOTE_LEN, 3000));
    c.send(Command::DeviceFeature, &logging_report(REMOTE - 0x1000, REMOTE_LEN, 4096));
    c.send(Command::DeviceFeature, &logging_report(top, 0xffff, 512));
    c.send(Command::DeviceFeature, &logging_report(top, 0xffff, 1 << 30));
    c.send(Command::DeviceFeature, &logging_start(8192, &[]));
    c.send(Command::DeviceFeature, &feature(SET | LOGGING_STOP, &[]));
    c.send(Command::DeviceFeature, &logging_report(REMOTE, REMOTE_LEN, 4096));
    c.send(Command::DeviceGetInfo, &info);
    out.push(("dirty-reports-at-their-edges", c.input(0)));
    out
}

/// Hostile byte streams for `wire_decoder`, with their limit byte.
fn hostile_wire() -> Vec<(&'static str, Vec<u8>)> {
    let m = |cmd: Command, payload: &[u8]| message(1, cmd as u16, 0, payload);
    let with = |limit: u8, bytes: Vec<u8>| [&[limit][..], &bytes].concat();
    let mut out = Vec::new();
    let deep = format!(r#"{{"capabilities":{{"max_msg_fds":{}1{}}}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    out.push(("version-json-nested-10000-deep", with(0, m(Command::Version, &version(&deep)))));
    out.push(("version-json-nul-inside", with(0, m(Command::Version, &p().u16(0).u16(1).bytes(b"{}\0{}\0").0))));
    let mut multi = p().u64(2048);
    for i in 0..2048u64 {
        multi = multi.u64(i * 8 % 4096).u32(REGION_REGS).u32((i % 9) as u32).u64(i);
    }
    out.push(("write-multi-2048-entries-counts-0-to-8", with(0, m(Command::RegionWriteMulti, &multi.0))));
    let ranges: Vec<(u64, u64)> = (0..4097).map(|i| (i * 0x2000, 0x1000)).collect();
    out.push(("logging-start-4097-ranges", with(0, m(Command::DeviceFeature, &logging_start(4096, &ranges)))));
    let top = u64::MAX - 0xffff;
    let mut log = m(Command::DeviceFeature, &logging_start(4096, &[(top, 0xffff)]));
    log.extend(m(Command::DmaWrite, &p().u64(u64::MAX - 8).u64(64).0));
    log.extend(m(Command::DmaWrite, &p().u64(top).u64(1).0));
    for page in [512, 4096, 1 << 20, 1 << 63] {
        log.extend(m(Command::DeviceFeature, &logging_report(top, 0xffff, page)));
    }
    out.push(("logging-at-the-top-of-the-address-space", with(0, log)));
    let mut mix = m(Command::DeviceGetInfo, &[]);
    mix[4..8].copy_from_slice(&0u32.to_le_bytes());
    mix.extend(m(Command::RegionRead, &region_access(0, 0, 4).0));
    mix.extend(m(Command::DeviceReset, &[]));
    mix.extend(m(Command::DeviceGetInfo, &[0; 3]));
    out.push(("limit-17-below-header-oversized-header-only-truncated", with(2, mix)));
    out
}

/// Writes the hand-made inputs into `fuzz/regressions/<target>/` (the crashes the fuzzers
/// found are kept as they are).
#[test]
#[ignore = "writes fuzz/regressions/: run by hand after changing the inputs above"]
fn write_hand_made_regressions() {
    let root = fuzz_dir().join("regressions");
    for (target, inputs) in
        [("resume", hostile_streams()), ("session", hostile_sessions()), ("wire_decoder", hostile_wire())]
    {
        fs::create_dir_all(root.join(target)).unwrap();
        for (name, data) in inputs {
            fs::write(root.join(target).join(name), data).unwrap();
        }
    }
}

/// The hand-made streams reach the check their name gives: the device answers RESUMING→STOP
/// with that errno (`-ok`: accepts).
#[test]
fn hand_made_streams_are_answered_as_named() {
    for (name, data) in hostile_streams() {
        let mut stream = data[1..].to_vec();
        if data[0] & 0x80 != 0 {
            fix_checksums(&mut stream);
        }
        let piece = match data[0] & 0x7f {
            0 => stream.len(),
            p => usize::from(p).pow(2),
        };
        let mut dst = Rig::new(false);
        dst.walk(&[MigState::Stop, MigState::Resuming]);
        for part in stream.chunks(piece) {
            dst.dev.write_data(part).unwrap();
        }
        let got = match dst.arc(MigState::Stop) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{:?}", e.errno()).to_lowercase(),
        };
        assert!(name.ends_with(&format!("-{got}")), "{name}: RESUMING->STOP answered {got}");
    }
}

/// The harness's checksum fix, redone here on the stream format's public pieces.
fn fix_checksums(stream: &mut [u8]) {
    let mut digest = StreamDigest::default();
    for (records, (at, ty, len)) in record_spans(stream).into_iter().enumerate() {
        if at + 16 + len > stream.len() {
            break;
        }
        if ty == RecordType::Trailer as u32 && len == 16 {
            put_u64(stream, at + 16, records as u64);
            put_u64(stream, at + 24, digest.finish());
        }
        let sum = record_checksum(ty, &stream[at + 16..at + 16 + len]);
        put_u64(stream, at + 8, sum);
        digest.update(sum);
    }
}
