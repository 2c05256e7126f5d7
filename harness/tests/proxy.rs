//! The fault-injecting proxy between a real in-process server (dma-engine) and mock-qemu's
//! client: a clean relay (fds both ways, device DMA), each fault's observable effect, and
//! malformed messages relayed in step (against a fake server speaking raw messages).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use harness::proxy::{Direction, FaultAction, HeaderField, Proxy, ProxyError, ProxyFault, ProxyHandle, ProxyOptions};
use mock_qemu::{Client, ClientError, DmaService};
use nix::errno::Errno;
use tempfile::TempDir;
use vfu_server::codec::{CodecError, Connection, Malformed};
use vfu_server::devices::dma_engine::{DmaEngine, fill_pattern};
use vfu_server::mmap::MappedRegion;
use vfu_server::server::SessionEnd;
use vfu_server::wire::{Command, FLAG_NO_REPLY, Header};
use vfu_server::{Server, ServerConfig, ServerError};

/// How long any reply or thread may take.
const DEADLINE: Duration = Duration::from_secs(10);

const BAR0: u32 = 0;
const REG_MAGIC: u64 = 0x00;
const REG_STATUS: u64 = 0x14;
const REG_SCRATCH: u64 = 0x18;
const REG_CMD_OP: u64 = 0x20;
const REG_CMD_GUEST_ADDR: u64 = 0x28;
const REG_CMD_LEN: u64 = 0x38;
const REG_CMD_SEED: u64 = 0x40;
const REG_DOORBELL: u64 = 0x48;
const MAGIC: u32 = 0x4541_4d44;
const OP_FILL: u32 = 1;
const STATUS_OK: u32 = 1;
const DMA_RW: u32 = 1 | 2;

const IOVA: u64 = 0x10_0000;
const RAM: u64 = 64 << 10;

/// A dma-engine server serving one client in-process, a proxy in front of it and a negotiated
/// client of the proxy.
struct Rig {
    proxy: ProxyHandle,
    client: Client,
    server_end: mpsc::Receiver<Result<SessionEnd, ServerError>>,
    _dir: TempDir,
}

/// A dma-engine server serving one client on a thread, in a new temporary directory: the
/// directory, the server's socket and how its session ends.
fn serve_one() -> (TempDir, PathBuf, mpsc::Receiver<Result<SessionEnd, ServerError>>) {
    let dir = tempfile::tempdir().unwrap();
    let server_path = dir.path().join("server.sock");
    let device = DmaEngine::new(Default::default()).unwrap();
    let mut server = Server::bind(&server_path, Box::new(device), ServerConfig::default()).unwrap();
    let (tx, server_end) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.serve_one());
    });
    (dir, server_path, server_end)
}

impl Rig {
    fn new(faults: Vec<ProxyFault>) -> Self {
        let (dir, server_path, server_end) = serve_one();
        let proxy = Proxy::start(dir.path().join("proxy.sock"), &server_path, faults).unwrap();
        let client = Client::connect_and_negotiate(proxy.path(), DEADLINE).unwrap();
        Self { proxy, client, server_end, _dir: dir }
    }

    /// How the server's session ended.
    fn server_end(&self) -> SessionEnd {
        self.server_end.recv_timeout(DEADLINE).expect("the server's session must end").unwrap()
    }
}

/// Guest memory the server reaches by DMA_READ / DMA_WRITE messages, counting them.
#[derive(Clone, Default)]
struct MsgRam {
    bytes: Arc<Mutex<Vec<u8>>>,
    calls: Arc<AtomicU64>,
}

impl MsgRam {
    fn new() -> Self {
        Self { bytes: Arc::new(Mutex::new(vec![0; RAM as usize])), calls: Arc::default() }
    }

    fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn range(addr: u64, len: u64) -> Result<std::ops::Range<usize>, Errno> {
        let start = addr.checked_sub(IOVA).ok_or(Errno::EFAULT)? as usize;
        Ok(start..start + len as usize)
    }
}

impl DmaService for MsgRam {
    fn dma_read(&mut self, addr: u64, len: u64) -> Result<Vec<u8>, Errno> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let r = Self::range(addr, len)?;
        self.bytes.lock().unwrap().get(r).map(<[u8]>::to_vec).ok_or(Errno::EFAULT)
    }

    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let r = Self::range(addr, data.len() as u64)?;
        self.bytes.lock().unwrap().get_mut(r).ok_or(Errno::EFAULT)?.copy_from_slice(data);
        Ok(())
    }
}

/// Runs a FILL of the whole guest RAM with `seed` and returns STATUS.
fn fill(c: &mut Client, seed: u64) -> u32 {
    c.write_u32(BAR0, REG_CMD_OP, OP_FILL).unwrap();
    c.write_u64(BAR0, REG_CMD_GUEST_ADDR, IOVA).unwrap();
    c.write_u64(BAR0, REG_CMD_LEN, RAM).unwrap();
    c.write_u64(BAR0, REG_CMD_SEED, seed).unwrap();
    c.write_u32(BAR0, REG_DOORBELL, 1).unwrap();
    c.read_u32(BAR0, REG_STATUS).unwrap()
}

fn pattern(seed: u64) -> Vec<u8> {
    let mut want = vec![0u8; RAM as usize];
    fill_pattern(seed, 0, &mut want);
    want
}

fn memfd_contents(region: &MappedRegion) -> Vec<u8> {
    let mut got = vec![0u8; RAM as usize];
    region.read_at(0, &mut got).unwrap();
    got
}

fn fault(dir: Direction, cmd: Command, action: FaultAction) -> ProxyFault {
    ProxyFault::on(dir, cmd, 1, action)
}

/// The faults that fired, as (fault index, direction, cmd, ordinal, applied).
fn fired(p: &ProxyHandle) -> Vec<(usize, Direction, u16, u32, bool)> {
    p.fired().iter().map(|f| (f.fault, f.direction, f.cmd, f.ordinal, f.applied)).collect()
}

#[test]
fn without_faults_everything_passes_fds_and_device_dma_included() {
    let mut rig = Rig::new(vec![]);
    let c = &mut rig.client;
    assert!(c.device_info().unwrap().num_regions >= 8);
    assert_eq!(c.read_u32(BAR0, REG_MAGIC).unwrap(), MAGIC);

    // DMA_MAP with a memfd: the fd crosses the proxy and the device writes through it.
    let ram = MsgRam::new();
    c.set_dma_service(Box::new(ram.clone()));
    let (region, fd) = MappedRegion::memfd(c"guest", RAM).unwrap();
    c.dma_map(IOVA, RAM, DMA_RW, Some((fd.as_fd(), 0))).unwrap();
    assert_eq!(fill(c, 7), STATUS_OK);
    assert_eq!(memfd_contents(&region), pattern(7));
    assert_eq!(ram.calls(), 0, "with an fd no DMA goes by message");

    // Mapped without an fd, the device's DMA goes by DMA_WRITE messages through the proxy.
    c.dma_unmap(IOVA, RAM, 0).unwrap();
    c.dma_map(IOVA, RAM, DMA_RW, None).unwrap();
    assert_eq!(fill(c, 9), STATUS_OK);
    assert!(ram.calls() > 0);
    assert_eq!(ram.contents(), pattern(9));
    assert_eq!(c.stale_replies(), 0);

    assert!(rig.proxy.fired().is_empty());
    let s = rig.proxy.stats();
    assert_eq!(s.connections, 1);
    for dir in Direction::BOTH {
        let d = s.direction(dir);
        assert_eq!((d.forwarded, d.malformed), (d.received, 0), "{dir:?}");
        assert!(d.received > 10, "{dir:?}: {d:?}");
    }
    assert_eq!(rig.proxy.relayed(Direction::ToClient), s.to_client.forwarded);
}

#[test]
fn corrupt_payload_makes_the_server_write_other_data() {
    let action = FaultAction::CorruptPayload { offset: 16, xor: 0xff };
    let mut rig = Rig::new(vec![fault(Direction::ToServer, Command::RegionWrite, action)]);
    rig.client.write_u64(BAR0, REG_SCRATCH, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(rig.client.read_u64(BAR0, REG_SCRATCH).unwrap(), 0x1122_3344_5566_7777);
    rig.client.write_u64(BAR0, REG_SCRATCH, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(rig.client.read_u64(BAR0, REG_SCRATCH).unwrap(), 0x1122_3344_5566_7788, "fires once");
    assert_eq!(fired(&rig.proxy), vec![(0, Direction::ToServer, Command::RegionWrite as u16, 1, true)]);
}

#[test]
fn corrupt_header_cmd_gets_enosys_from_the_server() {
    let bad = Command::RegionRead as u16 ^ 0x100;
    let faults = vec![
        fault(
            Direction::ToServer,
            Command::RegionRead,
            FaultAction::CorruptHeader { field: HeaderField::Cmd, xor: 0x100 },
        ),
        // The server answers the unknown command with ENOSYS in a reply carrying it; set the
        // command back so the client matches the reply to its request.
        ProxyFault {
            direction: Direction::ToClient,
            cmd: Some(bad),
            nth: 1,
            action: FaultAction::CorruptHeader { field: HeaderField::Cmd, xor: 0x100 },
        },
    ];
    let mut rig = Rig::new(faults);
    let err = rig.client.read_u32(BAR0, REG_MAGIC).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ENOSYS), "{err:?}");
    assert_eq!(rig.client.read_u32(BAR0, REG_MAGIC).unwrap(), MAGIC);
    assert_eq!(
        fired(&rig.proxy),
        vec![(0, Direction::ToServer, Command::RegionRead as u16, 1, true), (1, Direction::ToClient, bad, 1, true)]
    );
}

#[test]
fn duplicate_write_gets_two_replies() {
    let mut rig = Rig::new(vec![fault(Direction::ToServer, Command::RegionWrite, FaultAction::Duplicate)]);
    rig.client.write_u64(BAR0, REG_SCRATCH, 42).unwrap();
    assert_eq!(rig.client.read_u64(BAR0, REG_SCRATCH).unwrap(), 42);
    assert_eq!(rig.client.stale_replies(), 1, "the duplicate's reply answers nothing outstanding");
    let s = rig.proxy.stats().to_server;
    assert_eq!(s.forwarded, s.received + 1);
    assert_eq!(fired(&rig.proxy), vec![(0, Direction::ToServer, Command::RegionWrite as u16, 1, true)]);
}

#[test]
fn drop_fds_on_dma_map_makes_the_device_dma_go_by_message() {
    let mut rig = Rig::new(vec![fault(Direction::ToServer, Command::DmaMap, FaultAction::DropFds)]);
    let ram = MsgRam::new();
    rig.client.set_dma_service(Box::new(ram.clone()));
    let (region, fd) = MappedRegion::memfd(c"guest", RAM).unwrap();
    rig.client.dma_map(IOVA, RAM, DMA_RW, Some((fd.as_fd(), 0))).unwrap();
    assert_eq!(fill(&mut rig.client, 3), STATUS_OK);
    assert!(memfd_contents(&region).iter().all(|b| *b == 0), "the server never had the memfd");
    assert!(ram.calls() > 0);
    assert_eq!(ram.contents(), pattern(3));
    assert_eq!(fired(&rig.proxy), vec![(0, Direction::ToServer, Command::DmaMap as u16, 1, true)]);
}

#[test]
fn add_fd_on_region_read_is_refused_with_einval() {
    let mut rig = Rig::new(vec![fault(Direction::ToServer, Command::RegionRead, FaultAction::AddFd)]);
    let err = rig.client.read_u32(BAR0, REG_MAGIC).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EINVAL), "{err:?}");
    assert_eq!(rig.client.read_u32(BAR0, REG_MAGIC).unwrap(), MAGIC);
    assert_eq!(fired(&rig.proxy), vec![(0, Direction::ToServer, Command::RegionRead as u16, 1, true)]);
}

#[test]
fn a_dropped_request_times_out() {
    let mut rig = Rig::new(vec![fault(Direction::ToServer, Command::DeviceGetInfo, FaultAction::Drop)]);
    rig.client.set_timeout(Duration::from_millis(300));
    let err = rig.client.device_info().unwrap_err();
    assert!(matches!(err, ClientError::Timeout { cmd: Command::DeviceGetInfo, .. }), "{err:?}");
    rig.client.set_timeout(DEADLINE);
    assert!(rig.client.device_info().is_ok());
    assert_eq!(fired(&rig.proxy), vec![(0, Direction::ToServer, Command::DeviceGetInfo as u16, 1, true)]);
    let s = rig.proxy.stats().to_server;
    assert_eq!(s.forwarded, s.received - 1);
}

#[test]
fn after_a_grown_msg_size_no_request_of_the_connection_is_waited_for() {
    let grow = FaultAction::CorruptHeader { field: HeaderField::MsgSize, xor: 8 };
    let mut rig = Rig::new(vec![fault(Direction::ToServer, Command::DeviceGetInfo, grow)]);
    rig.client.set_unanswered(rig.proxy.unanswered().unwrap());
    let started = std::time::Instant::now();
    // The server waits for 8 bytes more of DEVICE_GET_INFO; the next request's bytes complete
    // it, and the server frames the rest of the connection differently from the client: the
    // proxy says so, and neither request costs the client its whole reply timeout.
    for _ in 0..2 {
        let err = rig.client.device_info().unwrap_err();
        assert!(matches!(err, ClientError::Timeout { cmd: Command::DeviceGetInfo, .. }), "{err:?}");
    }
    assert!(started.elapsed() < DEADLINE, "the client waited for a reply the proxy knew would not come");
}

#[rstest::rstest]
#[case::reply_renamed(Direction::ToClient, HeaderField::Cmd)]
#[case::reply_made_a_request(Direction::ToClient, HeaderField::Flags)]
fn a_reply_the_client_will_not_take_is_not_waited_for(#[case] dir: Direction, #[case] field: HeaderField) {
    let action = FaultAction::CorruptHeader { field, xor: 1 };
    let mut rig = Rig::new(vec![fault(dir, Command::DeviceGetInfo, action)]);
    rig.client.set_unanswered(rig.proxy.unanswered().unwrap());
    let started = std::time::Instant::now();
    let err = rig.client.device_info().unwrap_err();
    assert!(matches!(err, ClientError::Timeout { cmd: Command::DeviceGetInfo, .. }), "{err:?}");
    assert!(started.elapsed() < DEADLINE, "the client waited for a reply the proxy knew it would drop");
    // The framing is intact: the next request is answered.
    assert!(rig.client.device_info().is_ok());
}

#[test]
fn disconnect_closes_both_connections() {
    let mut rig = Rig::new(vec![fault(Direction::ToServer, Command::RegionRead, FaultAction::Disconnect)]);
    let err = rig.client.read_u32(BAR0, REG_MAGIC).unwrap_err();
    assert!(matches!(err, ClientError::Socket { source: CodecError::Closed, .. }), "{err:?}");
    assert!(matches!(rig.server_end(), SessionEnd::Disconnected));
    assert_eq!(fired(&rig.proxy), vec![(0, Direction::ToServer, Command::RegionRead as u16, 1, true)]);
}

#[test]
fn truncate_then_close_looks_like_a_crash_to_the_server() {
    let mut rig = Rig::new(vec![fault(Direction::ToServer, Command::RegionWrite, FaultAction::Truncate { keep: 20 })]);
    let err = rig.client.write_u64(BAR0, REG_SCRATCH, 1).unwrap_err();
    assert!(matches!(err, ClientError::Socket { .. }), "{err:?}");
    match rig.server_end() {
        SessionEnd::SocketError(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        other => panic!("expected a socket error mid-message, got {other:?}"),
    }
}

/// A REGION_WRITE of 8 bytes to SCRATCH that asks for no reply.
fn write_no_reply(c: &mut Client, value: u64) {
    let mut payload = REG_SCRATCH.to_ne_bytes().to_vec();
    payload.extend_from_slice(&BAR0.to_ne_bytes());
    payload.extend_from_slice(&8u32.to_ne_bytes());
    payload.extend_from_slice(&value.to_le_bytes());
    let id = c.next_msg_id();
    let mut h = Header::request(id, Command::RegionWrite, payload.len());
    h.flags |= FLAG_NO_REPLY;
    c.send_raw(&h, &[&payload], &[]).unwrap();
}

#[test]
fn reorder_swaps_two_no_reply_writes() {
    let mut rig = Rig::new(vec![fault(Direction::ToServer, Command::RegionWrite, FaultAction::Reorder)]);
    write_no_reply(&mut rig.client, 1);
    write_no_reply(&mut rig.client, 2);
    assert_eq!(rig.client.read_u64(BAR0, REG_SCRATCH).unwrap(), 1, "the first write was applied last");
    // Once fired, order is kept.
    write_no_reply(&mut rig.client, 3);
    write_no_reply(&mut rig.client, 4);
    assert_eq!(rig.client.read_u64(BAR0, REG_SCRATCH).unwrap(), 4);
    assert_eq!(fired(&rig.proxy), vec![(0, Direction::ToServer, Command::RegionWrite as u16, 1, true)]);
}

#[test]
fn delay_slows_a_request_that_still_succeeds() {
    let mut rig = Rig::new(vec![fault(Direction::ToClient, Command::RegionRead, FaultAction::Delay { millis: 200 })]);
    assert_eq!(rig.client.read_u32(BAR0, REG_MAGIC).unwrap(), MAGIC);
    assert_eq!(fired(&rig.proxy), vec![(0, Direction::ToClient, Command::RegionRead as u16, 1, true)]);
}

#[test]
fn nth_counts_matching_messages_and_inapplicable_faults_are_recorded() {
    let faults = vec![
        ProxyFault::on(
            Direction::ToServer,
            Command::RegionWrite,
            2,
            FaultAction::CorruptPayload { offset: 16, xor: 1 },
        ),
        // REGION_READ requests carry no fds and 16 payload bytes.
        fault(Direction::ToServer, Command::RegionRead, FaultAction::DropFds),
        ProxyFault::on(Direction::ToServer, Command::RegionRead, 2, FaultAction::CorruptPayload { offset: 99, xor: 1 }),
    ];
    let mut rig = Rig::new(faults);
    let c = &mut rig.client;
    c.write_u64(BAR0, REG_SCRATCH, 0x10).unwrap();
    assert_eq!(c.read_u64(BAR0, REG_SCRATCH).unwrap(), 0x10);
    c.write_u64(BAR0, REG_SCRATCH, 0x20).unwrap();
    assert_eq!(c.read_u64(BAR0, REG_SCRATCH).unwrap(), 0x21);
    let (w, r) = (Command::RegionWrite as u16, Command::RegionRead as u16);
    assert_eq!(
        fired(&rig.proxy),
        vec![
            (1, Direction::ToServer, r, 1, false),
            (0, Direction::ToServer, w, 2, true),
            (2, Direction::ToServer, r, 2, false)
        ]
    );
}

/// A proxy in front of a fake server whose connection the test drives with raw messages.
fn raw_rig(options: ProxyOptions) -> (TempDir, ProxyHandle, Connection, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let server_path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&server_path).unwrap();
    let proxy = Proxy::start_with(dir.path().join("proxy.sock"), &server_path, vec![], options).unwrap();
    let client = UnixStream::connect(proxy.path()).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(s, _)| s));
    });
    let server = rx.recv_timeout(DEADLINE).expect("the proxy must connect to the server").unwrap();
    for s in [&client, &server] {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
    }
    (dir, proxy, Connection::new(client, 1 << 20, 8), Connection::new(server, 1 << 20, 8))
}

fn file_with(contents: &[u8]) -> OwnedFd {
    let f = tempfile::tempfile().unwrap();
    f.write_all_at(contents, 0).unwrap();
    f.into()
}

fn read_fd(fd: &OwnedFd) -> Vec<u8> {
    let f = std::fs::File::from(fd.try_clone().unwrap());
    let mut buf = vec![0u8; 5];
    f.read_exact_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn fds_pass_both_ways_with_their_messages() {
    let (_dir, proxy, mut client, mut server) = raw_rig(ProxyOptions::default());
    // Server to client: a DMA_WRITE request with an fd.
    let h = Header::request(5, Command::DmaWrite, 3);
    server.send(&h, &[b"abc"], &[file_with(b"hello").as_fd()]).unwrap();
    let m = client.recv().unwrap();
    assert_eq!((m.header, m.payload.as_slice(), m.fds.len()), (h, &b"abc"[..], 1));
    assert_eq!(read_fd(&m.fds[0]), b"hello");
    // Client to server: its reply with two fds.
    let r = h.reply(0);
    client.send(&r, &[], &[file_with(b"one..").as_fd(), file_with(b"two..").as_fd()]).unwrap();
    let m = server.recv().unwrap();
    assert_eq!((m.header, m.fds.len()), (r, 2));
    assert_eq!((read_fd(&m.fds[0]), read_fd(&m.fds[1])), (b"one..".to_vec(), b"two..".to_vec()));
    assert_eq!((proxy.relayed(Direction::ToServer), proxy.relayed(Direction::ToClient)), (1, 1));
}

#[test]
fn malformed_messages_are_relayed_in_step() {
    let (_dir, proxy, client, mut server) = raw_rig(ProxyOptions { max_msg_size: 4096 });
    // msg_size below the header: the header alone goes on, then the next message.
    let mut tiny = Header::request(1, Command::DeviceReset, 0);
    tiny.msg_size = 3;
    client.send(&tiny, &[], &[]).unwrap();
    // Above the proxy's limit (not the server's): the header and as many (zero) bytes.
    let big = vec![7u8; 5000];
    let bh = Header::request(2, Command::RegionWrite, big.len());
    client.send(&bh, &[&big], &[]).unwrap();
    let ok = Header::request(3, Command::DeviceReset, 0);
    client.send(&ok, &[], &[]).unwrap();

    match server.recv() {
        Err(CodecError::Malformed { header, reason: Malformed::SizeBelowHeader }) => assert_eq!(header, tiny),
        other => panic!("expected the tiny header, got {other:?}"),
    }
    let m = server.recv().unwrap();
    assert_eq!((m.header, m.payload.len()), (bh, 5000));
    assert!(m.payload.iter().all(|b| *b == 0), "bytes the codec skipped go as zeros");
    assert_eq!(server.recv().unwrap().header, ok);
    let s = proxy.stats().to_server;
    assert_eq!((s.received, s.forwarded, s.malformed), (3, 3, 2));
}

#[test]
fn stop_closes_connections_and_removes_the_socket() {
    let (_dir, mut proxy, mut client, mut server) = raw_rig(ProxyOptions::default());
    let path: PathBuf = proxy.path().to_path_buf();
    proxy.stop();
    assert!(!path.exists());
    assert!(matches!(client.recv(), Err(CodecError::Closed)));
    assert!(matches!(server.recv(), Err(CodecError::Closed)));
    proxy.stop();
}

#[test]
fn start_refuses_nth_zero_and_a_taken_path() {
    let dir = tempfile::tempdir().unwrap();
    let server: &Path = &dir.path().join("none.sock");
    let zero = ProxyFault::any(Direction::ToServer, 0, FaultAction::Drop);
    let err = Proxy::start(dir.path().join("p.sock"), server, vec![zero]).unwrap_err();
    assert!(matches!(err, ProxyError::InvalidFault { index: 0, .. }), "{err:?}");
    let _first = Proxy::start(dir.path().join("p.sock"), server, vec![]).unwrap();
    let err = Proxy::start(dir.path().join("p.sock"), server, vec![]).unwrap_err();
    assert!(matches!(err, ProxyError::PathExists { .. }), "{err:?}");
}

/// What an observer saw, in order.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl harness::proxy::Observer for Seen {
    fn connected(&self, connection: u64, _server: &UnixStream) {
        self.0.lock().unwrap().push(format!("connected {connection}"));
    }
    fn message(&self, connection: u64, dir: Direction, header: &Header, payload: &[u8], nfds: usize) {
        // VERSION's sizes follow the capabilities; DMA_MAP's are the specification's.
        let size =
            if header.cmd == Command::DmaMap as u16 { format!(" {} bytes", payload.len()) } else { String::new() };
        let line = format!("{connection} {} cmd {} #{}{size} {nfds} fds", dir.name(), header.cmd, header.msg_id);
        self.0.lock().unwrap().push(line);
    }
    fn direction_ended(&self, connection: u64, dir: Direction, end: &harness::proxy::DirectionEnd) {
        self.0.lock().unwrap().push(format!("{connection} {} {end}", dir.name()));
    }
    fn disconnected(&self, connection: u64) {
        self.0.lock().unwrap().push(format!("disconnected {connection}"));
    }
}

#[test]
fn an_observer_sees_each_message_before_its_reply_and_the_connection_end() {
    let (dir, server_path, server_end) = serve_one();
    let seen = Arc::new(Seen::default());
    let mut proxy =
        Proxy::start_observed(dir.path().join("p.sock"), &server_path, vec![], ProxyOptions::default(), seen.clone())
            .unwrap();
    let mut client = Client::connect_and_negotiate(proxy.path(), DEADLINE).unwrap();
    let (_region, fd) = MappedRegion::memfd(c"guest", RAM).unwrap();
    client.dma_map(IOVA, RAM, DMA_RW, Some((fd.as_fd(), 0))).unwrap();
    drop(client);
    assert!(server_end.recv_timeout(DEADLINE).unwrap().is_ok());
    // The relay threads end once both peers closed; stop joins them.
    proxy.stop();
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(
        seen[..5],
        [
            "connected 0",
            "0 to-server cmd 1 #1 0 fds",
            "0 to-client cmd 1 #1 0 fds",
            "0 to-server cmd 2 #2 32 bytes 1 fds",
            "0 to-client cmd 2 #2 0 bytes 0 fds",
        ],
        "{seen:#?}"
    );
    assert!(seen[5..7].contains(&"0 to-server closed".to_string()), "{seen:#?}");
    assert!(seen[5..7].contains(&"0 to-client closed".to_string()), "{seen:#?}");
    assert_eq!(seen[7..], ["disconnected 0"]);
}
