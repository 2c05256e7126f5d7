//! Work a device starts on its own between requests (`Device::next_deadline`), served
//! in-process: with no request coming the device is called once its deadline passes, and may
//! raise an interrupt and DMA by message on the session's socket; a stream of requests does not
//! postpone the deadline; and a client that never answers the device's DMA_WRITE loses its
//! session after the reply timeout, the server then serving the next client.

mod common;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use pretty_assertions::assert_eq;
use vfu_server::irq::IrqSpec;
use vfu_server::server::SessionEnd;
use vfu_server::wire::Command;
use vfu_server::{Device, DeviceContext, DeviceSpec, RegionSpec, Server, ServerConfig};

use common::{RawConn, RawMsg, msg};

/// What the alarm saw when it went off: when, and how its DMA_WRITE ended.
#[derive(Debug, Default)]
struct Log {
    fired: Vec<Instant>,
    dma: Vec<Result<(), String>>,
}

/// Region 0 takes a u64: milliseconds from now until the alarm. The alarm raises IRQ 0 and
/// writes `ALARM` by message at the first DMA region the client mapped.
struct Alarm {
    at: Option<Instant>,
    region: Option<u64>,
    log: Arc<Mutex<Log>>,
}

const ALARM: &[u8] = b"alarm!!!";

impl Device for Alarm {
    fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            pci: false,
            num_regions: 1,
            regions: vec![RegionSpec::rw(0, 8)],
            num_irqs: 1,
            irqs: vec![IrqSpec { index: 0, count: 1, flags: 0 }],
        }
    }

    fn region_read(&mut self, _: &mut DeviceContext<'_>, _: u32, _: u64, data: &mut [u8]) -> Result<(), Errno> {
        data.fill(0);
        Ok(())
    }

    fn region_write(&mut self, _: &mut DeviceContext<'_>, _: u32, _: u64, data: &[u8]) -> Result<(), Errno> {
        let ms = u64::from_le_bytes(data.try_into().map_err(|_| Errno::EINVAL)?);
        self.at = Some(Instant::now() + Duration::from_millis(ms));
        Ok(())
    }

    fn dma_mapped(&mut self, iova: u64, _: u64, _: bool, _: bool) {
        self.region.get_or_insert(iova);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.at
    }

    fn deadline_reached(&mut self, ctx: &mut DeviceContext<'_>) {
        self.at = None;
        let mut log = self.log.lock().unwrap();
        log.fired.push(Instant::now());
        ctx.trigger_irq(0, 0).unwrap();
        if let Some(iova) = self.region {
            log.dma.push(ctx.dma_write_by_message(iova, ALARM).map_err(|e| e.to_string()));
        }
    }
}

struct Rig {
    path: PathBuf,
    log: Arc<Mutex<Log>>,
    serving: JoinHandle<Vec<SessionEnd>>,
    _dir: tempfile::TempDir,
}

/// A server of an `Alarm` serving `clients` clients one after the other, DMA replies awaited
/// `reply_timeout`.
fn serve(clients: usize, reply_timeout: Duration) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alarm.sock");
    let log = Arc::new(Mutex::new(Log::default()));
    let device = Alarm { at: None, region: None, log: Arc::clone(&log) };
    let config = ServerConfig { dma_reply_timeout: reply_timeout, ..ServerConfig::default() };
    let mut server = Server::bind(&path, Box::new(device), config).unwrap();
    let serving = std::thread::spawn(move || (0..clients).map(|_| server.serve_one().unwrap()).collect());
    Rig { path, log, serving, _dir: dir }
}

fn connect(rig: &Rig) -> RawConn {
    let mut conn = RawConn::new(std::os::unix::net::UnixStream::connect(&rig.path).unwrap());
    conn.negotiate().unwrap();
    conn
}

fn ok(conn: &RawConn, m: &common::Msg, fds: &[std::os::fd::BorrowedFd<'_>]) -> RawMsg {
    let reply = conn.request(m, fds).unwrap();
    assert!(reply.is_ok_reply(), "{reply:?}");
    reply
}

fn set_alarm(conn: &RawConn, ms: u64) {
    ok(conn, &msg(Command::RegionWrite).u64(0).u32(0).u32(8).u64(ms), &[]);
}

/// Maps one page of a memfd at 0x1000 and wires IRQ 0 to an eventfd; returns the eventfd.
fn map_and_wire(conn: &RawConn) -> std::os::fd::OwnedFd {
    let guest = common::memfd(4096);
    ok(conn, &msg(Command::DmaMap).u32(32).u32(3).u64(0).u64(0x1000).u64(4096), &[guest.as_fd()]);
    let irq = common::eventfd();
    ok(conn, &msg(Command::DeviceSetIrqs).u32(20).u32(0x24).u32(0).u32(0).u32(1), &[irq.as_fd()]);
    irq
}

fn read_eventfd(fd: &std::os::fd::OwnedFd) -> Option<u64> {
    let mut count = [0u8; 8];
    nix::unistd::read(fd, &mut count).ok().map(|_| u64::from_le_bytes(count))
}

#[test]
fn a_deadline_with_no_request_runs_the_device_which_may_dma_by_message() {
    let rig = serve(1, Duration::from_secs(5));
    let conn = connect(&rig);
    let irq = map_and_wire(&conn);
    set_alarm(&conn, 50);
    let dma = conn.recv_within(Duration::from_secs(5)).unwrap().expect("the alarm's DMA_WRITE");
    assert_eq!((dma.cmd, dma.flags & 0xf), (Command::DmaWrite as u16, 0), "{dma:?}");
    assert_eq!(dma.u64_at(0), Some(0x1000));
    assert_eq!(dma.payload.get(16..), Some(ALARM));
    assert_eq!(read_eventfd(&irq), Some(1), "the interrupt came before the DMA");
    // The reply: the DmaAccess echoed.
    let reply = msg(Command::DmaWrite).id(dma.msg_id).flags(1).bytes(&dma.payload[..16]);
    conn.send_msg(&reply, &[]).unwrap();
    // The session goes on.
    ok(&conn, &common::device_info_request(), &[]);
    assert_eq!(rig.log.lock().unwrap().dma, vec![Ok(())]);
    drop(conn);
    let ends = rig.serving.join().unwrap();
    assert!(matches!(ends[..], [SessionEnd::Disconnected]), "{ends:?}");
}

#[test]
fn requests_arriving_before_the_deadline_do_not_postpone_it() {
    let rig = serve(1, Duration::from_secs(5));
    let conn = connect(&rig);
    let start = Instant::now();
    set_alarm(&conn, 300);
    // The deadline is at most 300 ms after the write was answered.
    let latest = Instant::now() + Duration::from_millis(300);
    // Keep the session busy until a request goes out after the deadline.
    loop {
        let sent = Instant::now();
        ok(&conn, &common::device_info_request(), &[]);
        if sent > latest {
            break;
        }
    }
    // The last request was read after the deadline had passed, so the session, which looks
    // at the deadline before reading each request, had called the device by then.
    let fired = rig.log.lock().unwrap().fired.clone();
    assert_eq!(fired.len(), 1, "the alarm went off once, while requests kept coming");
    assert!(fired[0].duration_since(start) >= Duration::from_millis(300), "not before its time");
}

#[test]
fn a_client_that_never_answers_the_devices_dma_loses_its_session_and_the_next_is_served() {
    let rig = serve(2, Duration::from_millis(200));
    let conn = connect(&rig);
    let _irq = map_and_wire(&conn);
    set_alarm(&conn, 10);
    let dma = conn.recv_within(Duration::from_secs(5)).unwrap().expect("the alarm's DMA_WRITE");
    assert_eq!(dma.cmd, Command::DmaWrite as u16);
    // Not answered: the server gives up on this client after its reply timeout.
    let gone = conn.recv_within(Duration::from_secs(5));
    assert!(matches!(gone, Err(ref e) if e.kind() == std::io::ErrorKind::UnexpectedEof), "{gone:?}");
    let second = connect(&rig);
    ok(&second, &common::device_info_request(), &[]);
    drop(second);
    let ends = rig.serving.join().unwrap();
    assert!(matches!(ends[..], [SessionEnd::SocketError(_), SessionEnd::Disconnected]), "{ends:?}");
    assert_eq!(rig.log.lock().unwrap().dma.len(), 1);
    assert!(rig.log.lock().unwrap().dma[0].is_err(), "the unanswered DMA failed");
}
