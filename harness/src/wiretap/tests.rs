//! The tap between real peers in-process: a dma-engine server or a fake one speaking raw
//! messages, mock-qemu's client or a raw one. What is relayed, recorded, printed and found.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mock_qemu::Client;
use pretty_assertions::assert_eq;
use vfu_server::codec::{Connection, SCM_MAX_FDS};
use vfu_server::devices::dma_engine::DmaEngine;
use vfu_server::mmap::MappedRegion;
use vfu_server::wire::{Command, Header, TYPE_COMMAND, TYPE_REPLY};
use vfu_server::{Server, ServerConfig};

use super::*;
use crate::trace::{DecodedMessage, decode_messages};

const DEADLINE: Duration = Duration::from_secs(10);

/// What the tap printed.
#[derive(Clone, Default)]
struct Screen(Arc<Mutex<Vec<u8>>>);

impl Write for Screen {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Screen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// A tap in a temporary directory, writing its trace there.
struct Rig {
    dir: tempfile::TempDir,
    tap: Tap,
    screen: Screen,
}

impl Rig {
    /// A tap in front of the server at `server` (a path in `dir`).
    fn new(dir: tempfile::TempDir, server: &Path) -> Self {
        let mut options = TapOptions::new(dir.path().join("tap.sock"), server);
        options.trace = Some(dir.path().join("trace.jsonl"));
        let screen = Screen::default();
        let tap = Tap::start(&options, Box::new(screen.clone())).unwrap();
        Rig { dir, tap, screen }
    }

    /// Waits until connection `n` is over.
    fn over(&self, n: u64) {
        loop {
            match self.tap.events().recv_timeout(DEADLINE).expect("a connection must end") {
                TapEvent::ConnectionOver(c) if c == n => return,
                _ => {}
            }
        }
    }

    /// Stops the tap: its summary and the messages of its trace.
    fn stop(self) -> (TapSummary, Vec<DecodedMessage>, String) {
        let (summary, written) = self.tap.stop();
        written.unwrap();
        let file = std::fs::File::open(self.dir.path().join("trace.jsonl")).unwrap();
        let (messages, decoded) = decode_messages(io::BufReader::new(file)).unwrap();
        assert!(decoded.malformed.is_empty(), "{:?}", decoded.malformed);
        (summary, messages, self.screen.text())
    }
}

/// A dma-engine server serving `clients` clients one after another on a thread.
fn dma_engine(clients: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.sock");
    let mut server =
        Server::bind(&path, Box::new(DmaEngine::new(Default::default()).unwrap()), ServerConfig::default()).unwrap();
    std::thread::spawn(move || {
        for _ in 0..clients {
            let _ = server.serve_one();
        }
    });
    (dir, path)
}

/// A server that answers each request with `reply(request)` (or closes when it gives None).
fn fake_server(
    reply: impl Fn(&Header, &[u8]) -> Option<(Header, Vec<u8>)> + Send + 'static,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else { return };
        let mut conn = Connection::new(stream, 1 << 20, SCM_MAX_FDS);
        while let Ok(m) = conn.recv() {
            let Some((h, payload)) = reply(&m.header, &m.payload) else { return };
            if conn.send(&h, &[&payload], &[]).is_err() {
                return;
            }
        }
    });
    (dir, path)
}

fn raw_client(path: &Path) -> Connection {
    Connection::new(UnixStream::connect(path).unwrap(), 1 << 20, SCM_MAX_FDS)
}

fn version_request(msg_id: u16) -> (Header, Vec<u8>) {
    let payload = b"\0\0\x01\0{}\0".to_vec();
    (
        Header {
            msg_id,
            cmd: Command::Version as u16,
            msg_size: 16 + payload.len() as u32,
            flags: TYPE_COMMAND,
            error_no: 0,
        },
        payload,
    )
}

#[test]
fn a_tapped_conversation_is_relayed_recorded_and_printed_without_findings() {
    let (dir, server) = dma_engine(1);
    let rig = Rig::new(dir, &server);
    let mut client = Client::connect_and_negotiate(rig.tap.path(), DEADLINE).unwrap();
    assert_eq!(client.device_info().unwrap().num_regions, 9);
    let (_ram, fd) = MappedRegion::memfd(c"guest", 1 << 20).unwrap();
    client.dma_map(0x10_0000, 1 << 20, 3, Some((fd.as_fd(), 0))).unwrap();
    assert_eq!(client.read_u32(0, 0).unwrap(), 0x4541_4d44, "the dma-engine's magic, through the tap");
    drop(client);
    rig.over(0);
    let (summary, messages, screen) = rig.stop();
    assert_eq!(summary.findings, vec![], "{screen}");
    assert_eq!((summary.stats.connections, summary.stats.to_server, summary.stats.to_client), (1, 4, 4));
    let seen: Vec<(String, &str, u16, u16, u64)> = messages
        .iter()
        .map(|m| {
            (
                m.record.session.clone(),
                m.record.dir.as_str(),
                m.record.header.cmd,
                m.record.header.msg_id,
                m.record.nfds,
            )
        })
        .collect();
    let conn1 = |dir, cmd: Command, id, nfds| ("conn1".to_owned(), dir, cmd as u16, id, nfds);
    assert_eq!(
        seen,
        [
            conn1("c2s", Command::Version, 1, 0),
            conn1("s2c", Command::Version, 1, 0),
            conn1("c2s", Command::DeviceGetInfo, 2, 0),
            conn1("s2c", Command::DeviceGetInfo, 2, 0),
            conn1("c2s", Command::DmaMap, 3, 1),
            conn1("s2c", Command::DmaMap, 3, 0),
            conn1("c2s", Command::RegionRead, 4, 0),
            conn1("s2c", Command::RegionRead, 4, 0),
        ]
    );
    assert!(messages.iter().all(|m| m.record.t.is_some()), "every line is timed");
    assert!(screen.contains("-- conn1: client connected (server pid "), "{screen}");
    assert!(
        screen
            .contains("conn1       c2s #3     DMA_MAP addr=0x100000 size=0x100000 flags=READ|WRITE offset=0x0 fds=1\n"),
        "{screen}"
    );
    assert!(screen.contains("-- conn1: the client closed the connection\n"), "{screen}");
}

#[test]
fn a_reply_with_a_wrong_msg_id_is_a_finding_of_the_tap() {
    let (dir, server) =
        fake_server(|h, p| Some((Header { msg_id: h.msg_id.wrapping_add(1), flags: TYPE_REPLY, ..*h }, p.to_vec())));
    let rig = Rig::new(dir, &server);
    let mut client = raw_client(rig.tap.path());
    let (h, p) = version_request(7);
    client.send(&h, &[&p], &[]).unwrap();
    let reply = client.recv().unwrap();
    assert_eq!(reply.header.msg_id, 8, "relayed as the server sent it");
    drop(client);
    rig.over(0);
    let (summary, messages, screen) = rig.stop();
    assert_eq!(summary.findings.len(), 1, "{screen}");
    assert_eq!(summary.findings[0].session, "conn1");
    assert!(summary.findings[0].text.contains("msg_id 8"), "{:?}", summary.findings);
    assert!(screen.contains("!! finding conn1: "), "{screen}");
    assert_eq!(messages.len(), 2);
    assert!(summary.to_string().contains("; 1 finding(s)\n  conn1: "), "{summary}");
}

#[test]
fn clients_one_after_another_are_sessions_of_their_own() {
    let (dir, server) = dma_engine(2);
    let rig = Rig::new(dir, &server);
    for n in 0..2 {
        let mut client = Client::connect_and_negotiate(rig.tap.path(), DEADLINE).unwrap();
        client.read_u32(0, 0).unwrap();
        drop(client);
        rig.over(n);
    }
    let (summary, messages, screen) = rig.stop();
    assert_eq!(summary.findings, vec![], "{screen}");
    let sessions: Vec<&str> = messages.iter().map(|m| m.record.session.as_str()).collect();
    assert_eq!(sessions, ["conn1", "conn1", "conn1", "conn1", "conn2", "conn2", "conn2", "conn2"]);
    assert!(!screen.contains("a new one"), "the same server process serves both: {screen}");
}

#[test]
fn a_server_that_closes_is_shown_and_a_server_that_is_gone_too() {
    let (dir, server) = fake_server(|_, _| None);
    let rig = Rig::new(dir, &server);
    let mut client = raw_client(rig.tap.path());
    let (h, p) = version_request(1);
    client.send(&h, &[&p], &[]).unwrap();
    assert!(client.recv().is_err(), "the server closed");
    drop(client);
    rig.over(0);
    // The fake server served its one client and its socket file is gone with its listener's
    // thread: the next client meets a server that cannot be reached.
    std::fs::remove_file(&server).unwrap();
    let mut late = raw_client(rig.tap.path());
    assert!(late.recv().is_err(), "the tap closes a client it cannot serve");
    rig.over(1);
    let (summary, _, screen) = rig.stop();
    assert!(screen.contains("-- conn1: the server closed the connection\n"), "{screen}");
    assert!(screen.contains("-- conn2: the server cannot be reached: "), "{screen}");
    assert_eq!((summary.stats.connections, summary.stats.unreachable), (1, 1));
}

#[test]
fn a_malformed_message_is_relayed_and_shown_and_not_judged() {
    let (dir, server) = fake_server(|h, p| Some((Header { flags: TYPE_REPLY, ..*h }, p.to_vec())));
    let rig = Rig::new(dir, &server);
    let stream = UnixStream::connect(rig.tap.path()).unwrap();
    // A header whose msg_size is below the header's own 16 bytes.
    let bad = Header { msg_id: 1, cmd: 9, msg_size: 8, flags: 0, error_no: 0 };
    (&stream).write_all(zerocopy::IntoBytes::as_bytes(&bad)).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = io::Read::read_to_end(&mut &stream, &mut Vec::new());
    drop(stream);
    rig.over(0);
    let (summary, _, screen) = rig.stop();
    assert_eq!(summary.stats.malformed, 1);
    assert!(screen.contains("c2s malformed message #1 cmd 9 msg_size 8: msg_size below the header"), "{screen}");
    assert_eq!(summary.findings, vec![]);
}
