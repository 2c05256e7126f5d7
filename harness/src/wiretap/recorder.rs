//! What the tap does with what passes: each message becomes a trace line (written to the
//! trace file), a packet (written to the pcapng file), a decoded line (printed) and a message
//! of the judge's model (whose findings are printed and written as `finding` events). The
//! proxy's threads call in; one lock keeps the outputs in the order things happened.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use vfu_server::codec::Malformed;
use vfu_server::wire::{Capabilities, Command, Header};

use super::judge::Judge;
use super::{Finding, TapEvent, TapStats};
use crate::model::{Dir as ModelDir, Msg};
use crate::proxy::{Direction, DirectionEnd, Observer};
use crate::trace::pcapng::PcapngWriter;
use crate::trace::{Decoding, Dir, Record};

/// Where the tap writes.
pub(super) struct Outputs {
    /// What a person reads: decoded messages, connection notes, findings.
    pub screen: Box<dyn Write + Send>,
    /// The JSON-lines trace.
    pub trace: Option<Box<dyn Write + Send>>,
    /// The pcapng capture.
    pub pcapng: Option<PcapngWriter<Box<dyn Write + Send>>>,
}

/// The mutable part of the recorder.
struct State {
    out: Outputs,
    decoding: Decoding,
    judge: Judge,
    stats: TapStats,
    findings: Vec<Finding>,
    /// The pid of the server process behind the last connection.
    server_pid: Option<i32>,
    /// The first failure to write the trace or the capture (they stop; the relay goes on).
    write_error: Option<String>,
}

/// The tap's observer.
pub(super) struct Recorder {
    state: Mutex<State>,
    started: Instant,
    quiet: bool,
    snaplen: usize,
    events: Sender<TapEvent>,
}

/// `conn1` for connection 0.
pub(super) fn session(connection: u64) -> String {
    format!("conn{}", connection.saturating_add(1))
}

impl Recorder {
    pub(super) fn new(out: Outputs, decoding: Decoding, quiet: bool, snaplen: usize, events: Sender<TapEvent>) -> Self {
        let state = State {
            out,
            decoding,
            judge: Judge::default(),
            stats: TapStats::default(),
            findings: Vec::new(),
            server_pid: None,
            write_error: None,
        };
        Self { state: Mutex::new(state), started: Instant::now(), quiet, snaplen, events }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes an event line to the trace (`fields` are JSON `"key": value` pairs).
    pub(super) fn event(&self, kind: &str, fields: &[(&str, serde_json::Value)]) {
        let mut obj = serde_json::Map::new();
        obj.insert("event".into(), kind.into());
        for (k, v) in fields {
            obj.insert((*k).into(), v.clone());
        }
        let line = serde_json::Value::Object(obj).to_string();
        self.state().trace_line(&line);
    }

    /// Prints a note about `connection` (unless quiet) and writes it to the trace.
    fn note(&self, connection: u64, text: &str) {
        self.state().note(!self.quiet, connection, text);
    }

    /// What the tap saw, and the findings, so far.
    pub(super) fn summary(&self) -> (TapStats, Vec<Finding>, Option<String>) {
        let s = self.state();
        (s.stats, s.findings.clone(), s.write_error.clone())
    }

    /// Flushes the outputs and hands them back.
    pub(super) fn finish(&self) -> Result<(), String> {
        let mut s = self.state();
        let mut failed = s.write_error.take();
        if let Some(t) = s.out.trace.as_mut()
            && let Err(e) = t.flush()
        {
            failed.get_or_insert(format!("writing the trace: {e}"));
        }
        if let Some(p) = s.out.pcapng.take()
            && let Err(e) = p.finish()
        {
            failed.get_or_insert(format!("writing the capture: {e}"));
        }
        let _ = s.out.screen.flush();
        failed.map_or(Ok(()), Err)
    }
}

impl State {
    fn screen(&mut self, text: &str) {
        // A closed terminal or pager does not stop the tap.
        let _ = self.out.screen.write_all(text.as_bytes()).and_then(|()| self.out.screen.flush());
    }

    /// A note about `connection`: printed when `show`, written to the trace as a `note` line.
    fn note(&mut self, show: bool, connection: u64, text: &str) {
        let session = session(connection);
        if show {
            self.screen(&format!("-- {session}: {text}\n"));
        }
        self.trace_line(&serde_json::json!({"event": "note", "side": session, "text": text}).to_string());
    }

    fn trace_line(&mut self, line: &str) {
        if let Some(t) = self.out.trace.as_mut()
            && let Err(e) = t.write_all(line.as_bytes()).and_then(|()| t.write_all(b"\n"))
        {
            self.write_error.get_or_insert(format!("writing the trace: {e}"));
            self.out.trace = None;
        }
    }

    fn packet(&mut self, r: &Record) {
        if let Some(p) = self.out.pcapng.as_mut()
            && let Err(e) = p.packet(r)
        {
            self.write_error.get_or_insert(format!("writing the capture: {e}"));
            self.out.pcapng = None;
        }
    }

    /// Prints and records what the judge found and noted since the last call.
    fn judged(&mut self, quiet: bool) {
        for (connection, text) in self.judge.take_notes() {
            self.note(!quiet, connection, &text);
        }
        for f in self.judge.take_findings() {
            let session = session(f.connection);
            self.screen(&format!("!! finding {session}: {}\n", f.text));
            self.trace_line(&serde_json::json!({"event": "finding", "session": session, "text": f.text}).to_string());
            self.findings.push(Finding { session, text: f.text });
        }
    }
}

/// The fd index of the twin socket a VERSION reply passes, if it passes one.
fn twin_socket(header: &Header, payload: &[u8], nfds: usize) -> Option<u32> {
    if header.cmd != Command::Version as u16 || header.is_request() || header.is_error() || nfds == 0 {
        return None;
    }
    let caps = Capabilities::parse(payload.get(4..)?).ok()?;
    caps.twin_socket.filter(|t| t.supported).map(|t| t.fd_index.unwrap_or(0))
}

impl Observer for Recorder {
    fn connected(&self, connection: u64, server: &UnixStream) {
        let pid =
            nix::sys::socket::getsockopt(server, nix::sys::socket::sockopt::PeerCredentials).ok().map(|c| c.pid());
        let mut s = self.state();
        s.stats.connections += 1;
        let fresh = pid.is_some() && pid != s.server_pid;
        let replaced = fresh && s.server_pid.is_some();
        if pid.is_some() {
            s.server_pid = pid;
        }
        s.judge.connected(connection, fresh);
        drop(s);
        let who =
            pid.map_or(String::new(), |p| format!(" (server pid {p}{})", if replaced { ", a new one" } else { "" }));
        self.note(connection, &format!("client connected{who}"));
    }

    fn unreachable(&self, connection: u64, error: &io::Error) {
        let mut s = self.state();
        s.stats.unreachable += 1;
        // Shown even when quiet: the client was turned away, and its connection is over.
        s.note(true, connection, &format!("the server cannot be reached: {error}; the client is closed"));
        drop(s);
        let _ = self.events.send(TapEvent::ConnectionOver(connection));
    }

    fn message(&self, connection: u64, dir: Direction, header: &Header, payload: &[u8], nfds: usize) {
        let trace_dir = if dir == Direction::ToServer { Dir::C2s } else { Dir::S2c };
        let mut r = Record::capture(&session(connection), trace_dir, *header, payload, nfds, self.snaplen);
        r.t = Some(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX));
        let line = r.to_line();
        let model_dir = if dir == Direction::ToServer { ModelDir::ToServer } else { ModelDir::ToClient };
        let msg = Msg::new(model_dir, header, &[payload], nfds);
        let mut s = self.state();
        match dir {
            Direction::ToServer => s.stats.to_server += 1,
            Direction::ToClient => s.stats.to_client += 1,
        }
        s.trace_line(&line);
        s.packet(&r);
        let (text, _) = s.decoding.line(line.as_bytes());
        if !self.quiet {
            s.screen(&text);
        }
        s.judge.message(connection, msg);
        s.judged(self.quiet);
        drop(s);
        if let Some(fd) = twin_socket(header, payload, nfds) {
            let text = format!("the server passed a twin socket (fd {fd}): the messages it carries bypass the tap");
            self.note(connection, &text);
        }
    }

    fn malformed(&self, connection: u64, dir: Direction, header: &Header, reason: Malformed) {
        {
            let mut s = self.state();
            s.stats.malformed += 1;
            s.judge.damaged(connection);
        }
        let what = match reason {
            Malformed::SizeBelowHeader => {
                "msg_size below the header's 16 bytes; the header alone is relayed".to_owned()
            }
            Malformed::TooLarge { max } => format!("larger than {max} bytes; relayed as its header and zeros"),
            Malformed::TooManyFds { got, max } => format!("{got} fds, more than {max}; relayed without them"),
        };
        let text = format!(
            "{} malformed message #{} cmd {} msg_size {}: {what}; not judged until the next client",
            if dir == Direction::ToServer { "c2s" } else { "s2c" },
            header.msg_id,
            header.cmd,
            header.msg_size
        );
        self.note(connection, &text);
    }

    fn direction_ended(&self, connection: u64, dir: Direction, end: &DirectionEnd) {
        let who = if dir == Direction::ToServer { "the client" } else { "the server" };
        let text = match end {
            DirectionEnd::Closed => format!("{who} closed the connection"),
            other => format!("from {who}: {other}"),
        };
        self.note(connection, &text);
    }

    fn disconnected(&self, connection: u64) {
        {
            let mut s = self.state();
            s.judge.disconnected(connection);
            s.judged(self.quiet);
        }
        self.note(connection, "over");
        let _ = self.events.send(TapEvent::ConnectionOver(connection));
    }
}
