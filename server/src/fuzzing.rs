//! Entry points for coverage-guided fuzzing (`fuzz/`, cargo-fuzz) and for replaying its
//! findings on stable Rust (`tests/fuzz_regressions.rs`).
//!
//! Each takes arbitrary bytes and must return normally for every input: a panic (an
//! assertion of this module included) is a bug in the server, which is what the fuzzer looks
//! for. None of them passes fds: a fuzz input cannot carry any.
//!
//! - [`decode_wire`]: the bytes as a stream of messages, framed with the codec's bounds
//!   ([`codec::payload_len`]) and each payload taken apart with the parsers the server's
//!   handlers use, the VERSION JSON and the DMA logging requests included.
//! - [`session`]: the bytes as everything a client sends on one connection to an in-process
//!   server of a dma-engine, which must then end its session and leave the device clean;
//!   [`sample_session`] the same against the libvfio-user-sample device.
//! - [`resume`]: the bytes as a migration stream given to a resuming dma-engine, which must
//!   accept it or refuse it and stay in RESUMING.
//!
//! Inputs follow one convention: their first byte chooses how the rest is delivered (a size
//! limit, the size of the pieces, whether the harness fixes the stream's checksums); the rest
//! is the message stream, the client's bytes or the migration stream.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv, send};
use zerocopy::FromBytes;

use crate::codec::{self, Malformed};
use crate::device::{Device, DeviceContext};
use crate::devices::dma_engine::stream::{RECORD_HEADER_LEN, RecordType, StreamDigest, record_checksum};
use crate::devices::dma_engine::{DmaEngine, DmaEngineConfig, REGION_CONFIG, REGION_REGS};
use crate::devices::lvu_sample::{self, LvuSample};
use crate::dma::DmaSpace;
use crate::irq::{IrqSpec, IrqTable};
use crate::migration::dirty::DirtyLog;
use crate::migration::{ArcError, MigState, Migratable};
use crate::server::{
    FeatureRequest, Host, ServerConfig, argsz_at_least, check_feature_ops, fixed, parse_feature, parse_logging_report,
    parse_logging_start, parse_write_multi, write_multi_data,
};
use crate::wire::{
    Capabilities, Command, DeviceInfo, DmaAccess, DmaMap, DmaUnmap, FEATURE_DMA_LOGGING_REPORT,
    FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MIG_DEVICE_STATE, FEATURE_PROBE,
    FEATURE_SET, HEADER_SIZE, Header, IrqInfo, MigData, MigDeviceState, RegionAccess, RegionInfo, RegionIoFds, SetIrqs,
    Version, parse_prefix,
};

/// Device memory of the dma-engines these entry points build: small, so that a whole
/// migration stream (about 130 KiB) fits a fuzz input.
pub const DEVMEM_SIZE: u64 = 64 << 10;

/// The dma-engine configuration every entry point uses.
pub fn dma_engine_config() -> DmaEngineConfig {
    DmaEngineConfig { devmem_size: DEVMEM_SIZE, ..DmaEngineConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// decode_wire

/// Size limits [`decode_wire`]'s first byte picks from (`byte % 8`): 0 is the server's own,
/// the others are small enough for a short input to reach the skip of an oversized message and
/// the messages after it.
const WIRE_LIMITS: [usize; 7] = [16, 17, 24, 40, 64, 256, 4096];

/// The largest logging bitmap [`decode_wire`] lets a DMA_LOGGING_START allocate (the server
/// allows 256 MiB; allocating that for every input would only make the fuzzer slow).
const DECODE_MAX_LOG_BYTES: u64 = 1 << 20;
/// The largest report bitmap [`decode_wire`] asks for (the server's bound is 64 MiB).
const DECODE_MAX_REPORT_BYTES: u64 = 1 << 20;
/// Most DMA_MAP ranges [`decode_wire`] remembers for a log of everything mapped.
const DECODE_MAX_MAPPED: usize = 64;

/// Decodes `data` as the server decodes what a client sends: `data[0] % 8` picks the message
/// size limit (0: the server's, [`ServerConfig::max_msg_size`]; else one of a few small ones),
/// the rest is a byte stream framed into messages as [`codec::Connection::recv`] frames it (a
/// `msg_size` below the header is skipped alone, one above the limit is skipped whole, a
/// message cut by the end of the input ends the stream). Each request's payload goes through
/// the parsers its handler uses: the fixed part and `argsz` of every command, VERSION's JSON
/// capabilities (which must survive a round trip through [`Capabilities::to_wire`]),
/// DEVICE_SET_IRQS against the dma-engine's IRQ table, REGION_WRITE_MULTI's entries,
/// DEVICE_FEATURE's head, ops and sub-payloads, MIG_DATA heads. Replies to DMA_READ /
/// DMA_WRITE go through the server's parse of them.
///
/// The DMA logging requests also drive a [`DirtyLog`] as the server's DMA table would: START
/// (over the ranges named, or over the DMA_MAP ranges seen so far) starts it unless it is on,
/// STOP drops it, DMA_WRITE requests (the server's own writes to guest memory) mark their
/// range, and each REPORT is checked to return exactly the words its range needs with every
/// bit past the range zero, as the specification asks. Bitmaps are kept to 1 MiB here (the
/// server's bounds are larger) so no input makes the fuzzer slow.
pub fn decode_wire(data: &[u8]) {
    let Some((&limit, mut rest)) = data.split_first() else { return };
    let max = match usize::from(limit) % (WIRE_LIMITS.len() + 1) {
        0 => ServerConfig::default().max_msg_size(),
        i => WIRE_LIMITS.get(i - 1).copied().unwrap_or(HEADER_SIZE),
    };
    let mut state = DecodeState::new();
    while let Some((head, after)) = rest.split_first_chunk::<HEADER_SIZE>() {
        let Ok(header) = Header::read_from_bytes(head) else { return };
        rest = match codec::payload_len(&header, max) {
            Ok(len) => {
                let Some((payload, after)) = after.split_at_checked(len) else { return };
                state.message(&header, payload);
                after
            }
            Err(Malformed::TooLarge { .. }) => {
                let skip = (header.msg_size as usize).saturating_sub(HEADER_SIZE);
                let Some(after) = after.get(skip..) else { return };
                after
            }
            Err(Malformed::SizeBelowHeader | Malformed::TooManyFds { .. }) => after,
        };
    }
}

/// The IRQs of a dma-engine, from its spec (built once).
fn dma_engine_irqs() -> IrqTable {
    static SPEC: OnceLock<(u32, Vec<IrqSpec>)> = OnceLock::new();
    let (num, specs) = SPEC.get_or_init(|| match DmaEngine::new(dma_engine_config()) {
        Ok(dev) => {
            let spec = dev.spec();
            (spec.num_irqs, spec.irqs)
        }
        Err(_) => (0, Vec::new()),
    });
    IrqTable::new(*num, specs)
}

/// What [`decode_wire`] keeps from one message to the next.
struct DecodeState {
    irqs: IrqTable,
    log: Option<DirtyLog>,
    mapped: Vec<(u64, u64)>,
}

impl DecodeState {
    fn new() -> Self {
        Self { irqs: dma_engine_irqs(), log: None, mapped: Vec::new() }
    }

    fn message(&mut self, header: &Header, payload: &[u8]) {
        let Some(cmd) = header.command() else { return };
        if !header.is_request() {
            // The only replies the server reads: those to its own DMA requests.
            if matches!(cmd, Command::DmaRead | Command::DmaWrite) {
                black_box(parse_prefix::<DmaAccess>(payload).ok());
            }
            return;
        }
        match cmd {
            Command::Version => {
                if let Ok((v, tail)) = fixed::<Version>(payload) {
                    black_box(v);
                    if let Ok(caps) = Capabilities::parse(tail) {
                        let again = Capabilities::parse(&caps.to_wire()).ok();
                        assert_eq!(again.as_ref(), Some(&caps), "capabilities do not survive a round trip");
                    }
                }
            }
            Command::DmaMap => {
                if let Some(m) = argsz_checked::<DmaMap>(payload, |m| m.argsz)
                    && self.mapped.len() < DECODE_MAX_MAPPED
                {
                    self.mapped.push((m.addr, m.size));
                }
            }
            Command::DmaUnmap => {
                if let Some(u) = argsz_checked::<DmaUnmap>(payload, |u| u.argsz) {
                    self.mapped.retain(|&(addr, size)| (addr, size) != (u.addr, u.size));
                }
            }
            Command::DeviceGetInfo => drop(black_box(argsz_checked::<DeviceInfo>(payload, |d| d.argsz))),
            Command::DeviceGetRegionInfo => drop(black_box(argsz_checked::<RegionInfo>(payload, |r| r.argsz))),
            Command::DeviceGetRegionIoFds => drop(black_box(argsz_checked::<RegionIoFds>(payload, |r| r.argsz))),
            Command::DeviceGetIrqInfo => drop(black_box(argsz_checked::<IrqInfo>(payload, |i| i.argsz))),
            Command::DeviceSetIrqs => {
                if let Ok((req, data)) = fixed::<SetIrqs>(payload)
                    && argsz_at_least::<SetIrqs>(req.argsz).is_ok()
                {
                    black_box(self.irqs.set_irqs(&req, data, Vec::new()).ok());
                }
            }
            Command::RegionRead => drop(black_box(fixed::<RegionAccess>(payload).ok())),
            Command::RegionWrite => {
                if let Ok((req, data)) = fixed::<RegionAccess>(payload) {
                    black_box(data.len() == req.count as usize);
                }
            }
            Command::RegionWriteMulti => {
                if let Ok((head, entries)) = parse_write_multi(payload) {
                    black_box(head);
                    for e in entries {
                        black_box(write_multi_data(e).ok());
                    }
                }
            }
            Command::DeviceFeature => {
                if let Ok(req) = parse_feature(payload) {
                    self.feature(req);
                }
            }
            Command::MigDataRead | Command::MigDataWrite => {
                if let Ok((head, data)) = fixed::<MigData>(payload) {
                    black_box((head, data.len() == head.size as usize));
                }
            }
            Command::DmaWrite => {
                // A DMA_WRITE request is the server's own write of guest memory: the pages it
                // covers are marked, as the DMA table marks them once the client has them.
                if let (Ok((req, _)), Some(log)) = (parse_prefix::<DmaAccess>(payload), &self.log) {
                    log.mark(req.addr, req.count);
                }
            }
            Command::DmaRead | Command::DeviceReset => {}
        }
    }

    /// A DEVICE_FEATURE request whose head parsed: its ops are checked as on a migratable
    /// device, and a GET or SET's data is parsed as its handler parses it (PROBE echoes).
    fn feature(&mut self, req: FeatureRequest<'_>) {
        if check_feature_ops(req.feature, req.ops).is_err() || req.ops & FEATURE_PROBE != 0 {
            return;
        }
        match (req.feature, req.ops) {
            (FEATURE_MIG_DEVICE_STATE, FEATURE_SET) => {
                if let Ok((s, _)) = fixed::<MigDeviceState>(req.data) {
                    black_box(MigState::from_u32(s.device_state));
                }
            }
            (FEATURE_DMA_LOGGING_START, FEATURE_SET) => {
                let Ok((ctl, ranges)) = parse_logging_start(req.data, req.room) else { return };
                let ranges: Vec<(u64, u64)> = ranges.iter().map(|r| (r.iova, r.length)).collect();
                match &self.log {
                    Some(log) => drop(black_box(log.same_request(ctl.page_size, &ranges))),
                    None => {
                        let spans = if ranges.is_empty() { &self.mapped } else { &ranges };
                        if log_fits(ctl.page_size, spans) {
                            self.log = DirtyLog::start(ctl.page_size, &ranges, &self.mapped).ok();
                        }
                    }
                }
            }
            (FEATURE_DMA_LOGGING_STOP, FEATURE_SET) => self.log = None,
            (FEATURE_DMA_LOGGING_REPORT, FEATURE_GET) => {
                let Ok((r, room)) = parse_logging_report(req.data, req.room) else { return };
                let Some(log) = &self.log else { return };
                let room = (room as u64).min(DECODE_MAX_REPORT_BYTES);
                if let Ok(bitmap) = log.report(r.iova, r.length, r.page_size, room) {
                    check_report(&bitmap, r.length, r.page_size);
                }
            }
            _ => {}
        }
    }
}

/// The fixed part `T` of `payload`, if it is there and its `argsz` covers it.
fn argsz_checked<T>(payload: &[u8], argsz: impl Fn(&T) -> u32) -> Option<T>
where
    T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + Copy,
{
    let (v, _) = fixed::<T>(payload).ok()?;
    argsz_at_least::<T>(argsz(&v)).ok()?;
    Some(v)
}

/// Whether logging `spans` at (at least) the page size `hint` asks for takes at most
/// [`DECODE_MAX_LOG_BYTES`] of bitmap: an upper bound of what [`DirtyLog::start`] allocates.
fn log_fits(hint: u64, spans: &[(u64, u64)]) -> bool {
    use crate::migration::dirty::{MAX_PAGE_SIZE, MIN_PAGE_SIZE};
    let page = hint.checked_next_power_of_two().unwrap_or(MAX_PAGE_SIZE).clamp(MIN_PAGE_SIZE, MAX_PAGE_SIZE);
    let bits: u64 = spans.iter().map(|&(_, len)| len / page + 2).fold(0, u64::saturating_add);
    // Two buffers per range.
    bits.saturating_mul(2) / 8 <= DECODE_MAX_LOG_BYTES
}

/// A report of `length` bytes at `page_size` has one bit per page, in whole u64 words, and
/// every bit past the range is zero.
fn check_report(bitmap: &[u64], length: u64, page_size: u64) {
    let nbits = length.div_ceil(page_size);
    assert_eq!(bitmap.len() as u64, nbits.div_ceil(64), "report of {length:#x} at {page_size:#x}: word count");
    let tail = nbits % 64;
    if let (Some(last), true) = (bitmap.last(), tail != 0) {
        assert_eq!(last >> tail, 0, "report of {length:#x} at {page_size:#x}: bits past the range are set");
    }
}

// ---------------------------------------------------------------------------------------------
// session

/// Write sizes [`session`]'s first byte picks from (`byte % 16`); 0 is "everything at once".
const CHUNKS: [usize; 16] = [0, 1, 2, 3, 5, 7, 8, 13, 16, 17, 24, 31, 64, 257, 4096, 65536];
/// Most writes [`session`]'s client cuts its bytes into: a long input gets longer writes, so
/// that no input costs the fuzzer more than a few hundred system calls a side.
const MAX_WRITES: usize = 256;

/// How long the fuzzed server waits for a reply to its own DMA requests. The client closes
/// its end after its bytes, so a wait never lasts this long unless the server is wrong.
const SESSION_DMA_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `data[1..]` as one client's whole side of a connection to an in-process server of a
/// dma-engine ([`DEVMEM_SIZE`] of device memory, the server's default limits). `data[0] % 16`
/// picks the size of the writes the client cuts its bytes into (from one byte at a time to
/// all at once, in at most 256 writes). The server's session runs on this thread over one end
/// of a socketpair; a client thread writes the bytes to the other, reading (and dropping)
/// whatever the server sends meanwhile, so neither side can block the other, then closes its
/// writing side and reads until the server closes. The server's own DMA requests are answered
/// only by replies the input carries (its msg_ids count from 1), and a twin socket is closed as
/// it arrives. The session must end; afterwards the device must be RUNNING with no DMA region
/// mapped and logging off (what a disconnect leaves).
pub fn session(data: &[u8]) {
    let Ok(device) = DmaEngine::new(dma_engine_config()) else { return };
    serve_session(Box::new(device), ServerConfig::default(), data);
}

/// [`session`] against the reference library's sample device (`libvfio-user-sample`), served
/// with the limits `vfu-server` gives it (eight fds per message, padded short MIG_DATA_READ
/// replies): the recorded reference conversations reach far into this device, and its timer,
/// message DMA and migration format are code the dma-engine never runs.
pub fn sample_session(data: &[u8]) {
    let Ok(device) = LvuSample::new() else { return };
    serve_session(Box::new(device), lvu_sample::server_config(ServerConfig::default()), data);
}

/// The body of [`session`] and [`sample_session`]: `data` as one client's bytes to `device`.
fn serve_session(device: Box<dyn Device>, config: ServerConfig, data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let chunk = match CHUNKS.get(usize::from(mode) % CHUNKS.len()).copied().unwrap_or(0) {
        0 => bytes.len(),
        n => n.max(bytes.len().div_ceil(MAX_WRITES)),
    }
    .max(1);
    let Ok((server_end, client_end)) = UnixStream::pair() else { return };
    let config = ServerConfig { dma_reply_timeout: SESSION_DMA_REPLY_TIMEOUT, ..config };
    let mut host = Host::new(device, config);
    std::thread::scope(|s| {
        s.spawn(move || client(client_end, bytes, chunk));
        black_box(host.serve(server_end));
    });
    assert_eq!(host.migration_state(), Some(MigState::Running), "a disconnect leaves the device RUNNING");
    assert!(host.dma().regions().is_empty(), "a disconnect unmaps every DMA region");
    assert!(!host.dma().is_logging(), "a disconnect stops logging");
}

/// The client of [`session`]: writes `data` in `chunk`-byte sends while draining the socket,
/// then shuts down its writing side and drains until the server closes.
fn client(stream: UnixStream, data: &[u8], chunk: usize) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let fd = stream.as_raw_fd();
    let mut sent = 0;
    let mut shut = false;
    let mut sink = vec![0u8; 64 << 10];
    loop {
        let mut progress = false;
        if sent < data.len() {
            let end = sent.saturating_add(chunk).min(data.len());
            match send(fd, data.get(sent..end).unwrap_or_default(), MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => {
                    sent += n;
                    progress = true;
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                // The server closed the connection: the rest cannot be delivered.
                Err(_) => sent = data.len(),
            }
        }
        if sent >= data.len() && !shut {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            shut = true;
        }
        match recv(fd, &mut sink, MsgFlags::empty()) {
            Ok(0) => return,
            Ok(_) => progress = true,
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => return,
        }
        if !progress {
            let events = if sent < data.len() { PollFlags::POLLIN | PollFlags::POLLOUT } else { PollFlags::POLLIN };
            let mut fds = [PollFd::new(stream.as_fd(), events)];
            let _ = poll(&mut fds, PollTimeout::from(100u8));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// resume

/// A dma-engine with the DMA table and IRQs a server would give it, driven directly.
struct Rig {
    dev: DmaEngine,
    space: Arc<DmaSpace>,
    irqs: IrqTable,
}

impl Rig {
    fn new() -> Option<Self> {
        let dev = DmaEngine::new(dma_engine_config()).ok()?;
        let spec = dev.spec();
        Some(Self { dev, space: Arc::new(DmaSpace::new(16)), irqs: IrqTable::new(spec.num_irqs, &spec.irqs) })
    }

    fn arc(&mut self, to: MigState) -> Result<(), ArcError> {
        let from = self.dev.migration_state();
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.transition(&mut ctx, from, to)
    }

    /// Takes the arcs of `path`, each of which the device must take.
    fn walk(&mut self, path: &[MigState]) {
        for &to in path {
            let from = self.dev.migration_state();
            let taken = self.arc(to);
            assert_eq!(taken, Ok(()), "a dma-engine refused {from:?} -> {to:?}");
        }
    }

    /// Gives `stream` to the device in `piece`-byte writes, each of which it must take.
    fn write_stream(&mut self, stream: &[u8], piece: usize) {
        for part in stream.chunks(piece.max(1)) {
            assert_eq!(self.dev.write_data(part), Ok(()), "write_data failed in RESUMING");
        }
    }

    /// The device's whole outgoing stream from STOP, read in `piece`-byte reads.
    fn stream_out(&mut self, piece: usize) -> Vec<u8> {
        self.walk(&[MigState::StopCopy]);
        let mut out = Vec::new();
        let mut buf = vec![0u8; piece];
        loop {
            let n = self.dev.read_data(&mut buf);
            assert!(matches!(n, Ok(k) if k <= piece), "read_data in STOP_COPY: {n:?}");
            let n = n.unwrap_or(0);
            out.extend_from_slice(buf.get(..n).unwrap_or_default());
            if n < piece {
                break;
            }
        }
        self.walk(&[MigState::Stop]);
        out
    }

    /// Reads all of BAR0 and configuration space (a device must answer reads in every state).
    fn read_all(&mut self) {
        let mut buf = [0u8; 4096];
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        for (region, len) in [(REGION_REGS, 4096), (REGION_CONFIG, 256)] {
            let data = buf.get_mut(..len).unwrap_or_default();
            assert_eq!(self.dev.region_read(&mut ctx, region, 0, data), Ok(()), "reading region {region}");
        }
        black_box(&buf);
    }
}

/// Bit of [`resume`]'s first byte that has the harness fix the stream's checksums first.
const FIX_CHECKSUMS: u8 = 0x80;

/// Rewrites the checksum of every record of `stream` whose header and payload are there (as
/// its header states them), and the count and chain of a TRAILER record of the right length,
/// so that a mutated stream reaches the checks behind the checksums. Records are taken as
/// they come: the first whose stated length runs past the end stops it.
fn fix_checksums(stream: &mut [u8]) {
    let mut digest = StreamDigest::default();
    let mut records = 0u64;
    let mut at = 0;
    while let Some(head) = stream.get(at..at + RECORD_HEADER_LEN) {
        let (Ok(ty), Ok(len)) = (<[u8; 4]>::try_from(&head[..4]), <[u8; 4]>::try_from(&head[4..8])) else { return };
        let (ty, len) = (u32::from_le_bytes(ty), u32::from_le_bytes(len) as usize);
        let start = at + RECORD_HEADER_LEN;
        let Some(payload) = stream.get_mut(start..start.saturating_add(len)) else { return };
        if ty == RecordType::Trailer as u32 && len == RecordType::Trailer.payload_len() {
            payload[..8].copy_from_slice(&records.to_le_bytes());
            payload[8..].copy_from_slice(&digest.finish().to_le_bytes());
        }
        let sum = record_checksum(ty, payload);
        if let Some(field) = stream.get_mut(at + 8..at + 16) {
            field.copy_from_slice(&sum.to_le_bytes());
        }
        digest.update(sum);
        records += 1;
        at = start + len;
    }
}

/// Gives `data[1..]` as an incoming migration stream to a dma-engine ([`DEVMEM_SIZE`] of
/// device memory) driven directly through RUNNING→STOP→RESUMING (each arc must succeed), in
/// `write_data` calls of `(data[0] & 0x7f)²` bytes each (0: all at once), each of which it must
/// take; then RESUMING→STOP. With bit 7 of `data[0]` set the harness first rewrites the
/// stream's record checksums and its trailer (a mutation then reaches what the checksums
/// guard: record contents, register values, page offsets, the trailer's count); without, the
/// stream is given as is.
///
/// - Refused: the device must still be in RESUMING, refuse a second RESUMING→STOP with the
///   same errno (the refusal is sticky), and a reset must bring it back to RUNNING.
/// - Accepted: the device is in STOP. Its state must survive a migration of its own: its
///   stream out of STOP_COPY, resumed by a second device, must leave that device with the same
///   snapshot. Then it must run again (STOP→RUNNING) and answer reads of its registers and
///   configuration space.
pub fn resume(data: &[u8]) {
    use MigState::{Resuming, Running, Stop};
    let Some((&mode, stream)) = data.split_first() else { return };
    let piece = match mode & !FIX_CHECKSUMS {
        0 => stream.len().max(1),
        p => usize::from(p).pow(2),
    };
    let mut fixed_stream;
    let stream = if mode & FIX_CHECKSUMS != 0 {
        fixed_stream = stream.to_vec();
        fix_checksums(&mut fixed_stream);
        &fixed_stream[..]
    } else {
        stream
    };
    let Some(mut rig) = Rig::new() else { return };
    rig.walk(&[Stop, Resuming]);
    rig.write_stream(stream, piece);
    match rig.arc(Stop) {
        Err(refusal) => {
            let state = rig.dev.migration_state();
            assert_eq!(state, Resuming, "a refused RESUMING->STOP ({refusal:?}) left the device in {state:?}");
            assert_eq!(rig.arc(Stop), Err(refusal), "a refused stream stays refused the same way");
            rig.read_all();
            let mut ctx = DeviceContext::new_shared(&rig.space, None, &mut rig.irqs);
            assert_eq!(rig.dev.reset(&mut ctx), Ok(()), "DEVICE_RESET after a refused stream");
            assert_eq!(rig.dev.migration_state(), Running, "DEVICE_RESET returns to RUNNING");
        }
        Ok(()) => {
            assert_eq!(rig.dev.migration_state(), Stop, "an accepted stream leaves the device in STOP");
            let snapshot = rig.dev.snapshot();
            let again = rig.stream_out(piece.clamp(1, 1 << 20));
            let Some(mut twin) = Rig::new() else { return };
            twin.walk(&[Stop, Resuming]);
            twin.write_stream(&again, 4093);
            assert_eq!(twin.arc(Stop), Ok(()), "a second device refused the first one's stream");
            assert!(twin.dev.snapshot() == snapshot, "a state accepted from a stream does not survive a migration");
            rig.walk(&[Running]);
            rig.read_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A power-on dma-engine's whole stream by stop-and-copy.
    fn stream() -> Vec<u8> {
        let mut rig = Rig::new().unwrap();
        rig.walk(&[MigState::Stop]);
        rig.stream_out(1 << 20)
    }

    fn accepted(stream: &[u8]) -> Result<(), ArcError> {
        let mut rig = Rig::new().unwrap();
        rig.walk(&[MigState::Stop, MigState::Resuming]);
        rig.write_stream(stream, stream.len());
        rig.arc(MigState::Stop)
    }

    #[test]
    fn fixing_the_checksums_of_a_valid_stream_changes_nothing() {
        let s = stream();
        let mut fixed = s.clone();
        fix_checksums(&mut fixed);
        assert!(fixed == s);
    }

    #[test]
    fn fixed_checksums_let_a_changed_page_through() {
        let mut s = stream();
        // A byte of the first scratch page (after HEADER, REGISTERS and PCI_CONFIG records).
        let at = 3 * RECORD_HEADER_LEN + 24 + 168 + 32 + RECORD_HEADER_LEN + 8 + 100;
        s[at] ^= 0xff;
        assert_eq!(accepted(&s), Err(ArcError::Refused(Errno::EBADMSG)));
        fix_checksums(&mut s);
        assert_eq!(accepted(&s), Ok(()));
    }

    #[test]
    fn every_entry_point_takes_the_empty_input_and_a_lone_byte() {
        for data in [&[][..], &[0], &[0xff]] {
            decode_wire(data);
            session(data);
            resume(data);
        }
    }
}
