//! The trace tap: the sink of a side's client's message trace.
//!
//! It gets every message as the client sent or received it and writes its trace line, keeping
//! the lines until the runner moves them into the run's trace file (so the lines of the two
//! sides, whose clients run on two threads during a migration, never interleave by chance);
//! it reads the migration state changes off the messages for the timeline, and fires the
//! triggers armed on the Nth message of a command: the client traces each request before it
//! sends it, so a trigger fires just before that message leaves.
//!
//! Every message also goes to the side's protocol model ([`crate::model`]), which predicts
//! each reply from the conversation so far and keeps what it finds for the runner.
//!
//! A payload longer than [`PAYLOAD_KEPT`] bytes (migration data, large DMA) keeps its first
//! bytes only in the line, followed by `"payload_len"` and `"payload_xxh3"` of the whole
//! payload: a trace stays small enough to keep with every report, and two traces still differ
//! wherever a payload byte does. The model and the line are made from the message's bytes:
//! megabytes of migration data are hashed, never written out as hex.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use mock_qemu::client::TraceOptions;
use mock_qemu::client::trace::{self, Cut, LineEncoder, TraceSink, Traced};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vfu_server::wire::{Command, FEATURE_MIG_DEVICE_STATE, FEATURE_SET, MigState};
use xxhash_rust::xxh3::Xxh3Default;

use crate::model::{Dir, Event, Matrix, Msg, ServerModel};

/// What a trigger does when it fires.
#[derive(Debug)]
pub enum TriggerAction {
    /// SIGKILL the server with this pid.
    KillServer(i32),
    /// Shut the client's socket down (this is a clone of it).
    Disconnect(UnixStream),
}

/// A trigger armed on a side's client messages.
#[derive(Debug)]
pub struct Armed {
    /// The command counted (any when `None`).
    pub cmd: Option<u16>,
    /// Fire on this occurrence, from 1.
    pub nth: u32,
    /// Occurrences seen.
    pub seen: u32,
    /// What to do.
    pub action: TriggerAction,
    /// A label for the trace and the timeline.
    pub label: String,
}

/// A state change seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenChange {
    /// When.
    pub at: Instant,
    /// The new state.
    pub to: MigState,
}

/// A fired trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// When.
    pub at: Instant,
    /// Its label.
    pub label: String,
}

/// Payload bytes a trace line keeps.
pub const PAYLOAD_KEPT: usize = 4096;

/// Lines up to this long (newline included) keep their payload whole even past
/// [`PAYLOAD_KEPT`] bytes: traces have always been cut so, and a trace must not change with the
/// way it is made.
const LINE_KEPT: usize = 2 * PAYLOAD_KEPT + 512;

/// Appends the line of `msg` as a trace keeps it: whole, or with its payload cut to
/// [`PAYLOAD_KEPT`] bytes and the length and XXH3 of the whole payload added.
fn keep_line(encoder: &LineEncoder, msg: &Traced<'_>, out: &mut Vec<u8>) {
    let len = msg.payload_len();
    if len > PAYLOAD_KEPT {
        let mut hash = Xxh3Default::new();
        for piece in msg.payload {
            hash.update(piece);
        }
        let suffix = crate::trace::cut_keys(len as u64, hash.digest());
        let start = out.len();
        encoder.encode(out, msg, Some(Cut { keep: PAYLOAD_KEPT, suffix: &suffix }));
        let whole = out.len() - start - suffix.len() + 2 * (len - PAYLOAD_KEPT);
        if whole > LINE_KEPT {
            return;
        }
        out.truncate(start);
    }
    encoder.encode(out, msg, None);
}

/// What a side's client traces into: its messages go to the tap's model and lines.
#[derive(Debug)]
pub struct TapSink {
    tap: Tap,
    encoder: LineEncoder,
    line: Vec<u8>,
}

impl TraceSink for TapSink {
    fn message(&mut self, msg: &Traced<'_>) -> io::Result<()> {
        let dir = match msg.dir {
            trace::Dir::C2s => Dir::ToServer,
            trace::Dir::S2c => Dir::ToClient,
        };
        let m = Msg::new(dir, msg.header, msg.payload, msg.nfds);
        self.line.clear();
        keep_line(&self.encoder, msg, &mut self.line);
        let mut inner = self.tap.inner();
        Tap::message(&mut inner, m);
        inner.lines.extend_from_slice(&self.line);
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Inner {
    lines: Vec<u8>,
    pending_sets: BTreeMap<u16, MigState>,
    pending_reset: Option<u16>,
    changes: Vec<SeenChange>,
    armed: Vec<Armed>,
    fired: Vec<Fired>,
    messages: u64,
    resets: u64,
    last_state: Option<MigState>,
    model: ServerModel,
}

/// A side's trace tap; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Tap(Arc<Mutex<Inner>>);

impl Tap {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sink of a client of this side, whose lines are written as `options` say.
    pub fn sink(&self, options: &TraceOptions) -> TapSink {
        TapSink { tap: self.clone(), encoder: LineEncoder::new(options), line: Vec::new() }
    }

    /// Arms a trigger.
    pub fn arm(&self, armed: Armed) {
        self.inner().armed.push(armed);
    }

    /// Drops every armed trigger and forgets the state last seen and the requests awaiting
    /// replies: a side's client or server is gone, and the server moves the device without a
    /// message then.
    pub fn disarm(&self) {
        let mut inner = self.inner();
        inner.armed.clear();
        inner.last_state = None;
        // The next client numbers its messages from 1 again: a request of the old one that
        // never got its reply must not take a new reply for its own.
        inner.pending_sets.clear();
        inner.pending_reset = None;
    }

    /// The trace lines written since the last call.
    pub fn take_lines(&self) -> Vec<u8> {
        std::mem::take(&mut self.inner().lines)
    }

    /// The state changes seen since the last call.
    pub fn take_changes(&self) -> Vec<SeenChange> {
        std::mem::take(&mut self.inner().changes)
    }

    /// The triggers fired since the last call.
    pub fn take_fired(&self) -> Vec<Fired> {
        std::mem::take(&mut self.inner().fired)
    }

    /// The state the last successful SET (or reset) on the wire put the device in; `None`
    /// after a refused SET, which may have stopped part of the way.
    pub fn last_state(&self) -> Option<MigState> {
        self.inner().last_state
    }

    /// Successful DEVICE_RESETs seen so far.
    pub fn resets(&self) -> u64 {
        self.inner().resets
    }

    /// Messages traced so far.
    pub fn messages(&self) -> u64 {
        self.inner().messages
    }

    /// Triggers armed and not yet fired.
    pub fn armed_triggers(&self) -> usize {
        self.inner().armed.len()
    }

    /// Tells the protocol model of something that happened to the server.
    pub fn model_event(&self, event: Event) {
        self.inner().model.event(event);
    }

    /// The protocol model's findings since the last call.
    pub fn take_model_findings(&self) -> Vec<String> {
        self.inner().model.take_findings()
    }

    /// The known deviations the protocol model saw since the last call.
    pub fn take_model_deviations(&self) -> Vec<crate::model::deviation::Seen> {
        self.inner().model.take_deviations()
    }

    /// What the protocol model's judgement covered.
    pub fn matrix(&self) -> Matrix {
        self.inner().model.matrix.clone()
    }

    /// Runs `f` on the protocol model (what it promises now, the runner's word on the state).
    pub fn with_model<R>(&self, f: impl FnOnce(&mut ServerModel) -> R) -> R {
        f(&mut self.inner().model)
    }

    /// One message: the state changes and triggers it makes, then the model's judgement.
    fn message(inner: &mut Inner, m: Msg) {
        inner.messages += 1;
        let (cmd, msg_id, ok) = (m.cmd, m.msg_id, m.errno().is_none());
        if m.dir == Dir::ToServer && m.is_request() {
            Self::count(inner, cmd);
            if cmd == Command::DeviceFeature as u16 {
                if m.u32_at(4) == Some(FEATURE_SET | FEATURE_MIG_DEVICE_STATE)
                    && let Some(state) = m.u32_at(8).and_then(MigState::from_u32)
                {
                    inner.pending_sets.insert(msg_id, state);
                }
            } else if cmd == Command::DeviceReset as u16 {
                inner.pending_reset = Some(msg_id);
            }
        } else if m.dir == Dir::ToClient && m.is_reply() {
            let to = if cmd == Command::DeviceFeature as u16 {
                inner.pending_sets.remove(&msg_id)
            } else if cmd == Command::DeviceReset as u16 && inner.pending_reset == Some(msg_id) {
                inner.pending_reset = None;
                inner.resets += u64::from(ok);
                Some(MigState::Running)
            } else {
                None
            };
            match to {
                Some(to) if ok => {
                    inner.last_state = Some(to);
                    inner.changes.push(SeenChange { at: Instant::now(), to });
                }
                // A refused SET may have walked some of its arcs: where it left the device is
                // not known from the wire.
                Some(_) if cmd == Command::DeviceFeature as u16 => inner.last_state = None,
                _ => {}
            }
        }
        inner.model.message(m);
    }

    fn count(inner: &mut Inner, cmd: u16) {
        let mut due = Vec::new();
        for (i, a) in inner.armed.iter_mut().enumerate() {
            if a.cmd.is_none_or(|c| c == cmd) {
                a.seen += 1;
                if a.seen == a.nth {
                    due.push(i);
                }
            }
        }
        for i in due.into_iter().rev() {
            let a = inner.armed.remove(i);
            match &a.action {
                TriggerAction::KillServer(pid) => {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
                TriggerAction::Disconnect(stream) => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
            tracing::info!(label = %a.label, "trigger fired");
            inner.fired.push(Fired { at: Instant::now(), label: a.label });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mock_qemu::client::trace::JsonLines;
    use vfu_server::wire::Header;

    use super::*;

    fn options() -> TraceOptions {
        TraceOptions { session: "source".into(), timestamps: false }
    }

    fn traced<'a>(dir: trace::Dir, header: &'a Header, payload: &'a [&'a [u8]]) -> Traced<'a> {
        Traced { dir, header, payload, nfds: 0, elapsed: Duration::ZERO }
    }

    fn send(sink: &mut TapSink, dir: trace::Dir, msg_id: u16, cmd: u16, flags: u32, payload: &[u8]) {
        let header = Header { msg_id, cmd, msg_size: 16 + payload.len() as u32, flags, error_no: 0 };
        sink.message(&traced(dir, &header, &[payload])).unwrap();
    }

    /// The line the tap kept before it got messages as bytes: the client's whole line, cut as
    /// text when longer than [`LINE_KEPT`] with a payload past [`PAYLOAD_KEPT`].
    fn cut_as_text(whole: &str, payload: &[u8]) -> String {
        if whole.len() <= LINE_KEPT || payload.len() <= PAYLOAD_KEPT {
            return whole.into();
        }
        let start = whole.find("\"payload\": \"").unwrap() + 12;
        let keys = crate::trace::cut_keys(payload.len() as u64, xxhash_rust::xxh3::xxh3_64(payload));
        format!("{}\"{keys}{}", &whole[..start + 2 * PAYLOAD_KEPT], &whole[start + 2 * payload.len() + 1..])
    }

    #[test]
    fn a_successful_set_reply_is_a_state_change_and_a_refused_one_is_not() {
        let tap = Tap::default();
        let mut sink = tap.sink(&options());
        // argsz 16, flags SET | MIG_DEVICE_STATE (0x20002), state 6 (PRE_COPY).
        let set = [0x10, 0, 0, 0, 2, 0, 2, 0, 6, 0, 0, 0, 0, 0, 0, 0];
        send(&mut sink, trace::Dir::C2s, 7, 16, 0, &set);
        send(&mut sink, trace::Dir::S2c, 7, 16, 1, &[]);
        send(&mut sink, trace::Dir::C2s, 8, 16, 0, &set);
        send(&mut sink, trace::Dir::S2c, 8, 16, 0x21, &[]);
        let changes = tap.take_changes();
        assert_eq!(changes.iter().map(|c| c.to).collect::<Vec<_>>(), vec![MigState::PreCopy]);
        assert_eq!(tap.messages(), 4);
    }

    #[test]
    fn a_long_payload_keeps_its_head_its_length_and_its_hash() {
        let tap = Tap::default();
        let payload = vec![0xab; 3 * PAYLOAD_KEPT];
        send(&mut tap.sink(&options()), trace::Dir::C2s, 1, 18, 0, &payload);
        let v: serde_json::Value = serde_json::from_slice(&tap.take_lines()).unwrap();
        assert_eq!(v["payload"].as_str().unwrap().len(), 2 * PAYLOAD_KEPT);
        assert_eq!(v["payload_len"], 3 * PAYLOAD_KEPT);
        assert_eq!(v["payload_xxh3"], format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&payload)));
        assert_eq!(v["cmd_name"], "MIG_DATA_WRITE");
    }

    #[test]
    fn a_kept_line_is_the_whole_line_cut_as_the_trace_always_cut_it() {
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        // Around the cut, where a line barely past it stays whole, and far past it.
        for len in (0..8).chain(PAYLOAD_KEPT - 4..PAYLOAD_KEPT + 400).chain([9000, 70_000]) {
            let payload = &bytes[..len];
            for pieces in [vec![payload], vec![&payload[..len / 3], &payload[len / 3..]]] {
                let header = Header { msg_id: 300, cmd: 17, msg_size: 16 + len as u32, flags: 1, error_no: 0 };
                let msg = traced(trace::Dir::S2c, &header, &pieces);
                let whole = Arc::new(Mutex::new(Vec::new()));
                JsonLines::new(Box::new(Shared(Arc::clone(&whole))), &options()).message(&msg).unwrap();
                let whole = String::from_utf8(whole.lock().unwrap().clone()).unwrap();
                let tap = Tap::default();
                tap.sink(&options()).message(&msg).unwrap();
                assert!(tap.take_lines() == cut_as_text(&whole, payload).as_bytes(), "a payload of {len} bytes");
            }
        }
    }

    /// A writer into shared memory.
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_trigger_fires_on_its_nth_request_of_the_command() {
        let tap = Tap::default();
        let mut sink = tap.sink(&options());
        let (a, b) = UnixStream::pair().unwrap();
        tap.arm(Armed { cmd: Some(9), nth: 2, seen: 0, action: TriggerAction::Disconnect(a), label: "x".into() });
        send(&mut sink, trace::Dir::C2s, 1, 9, 0, &[]);
        send(&mut sink, trace::Dir::C2s, 2, 10, 0, &[]);
        assert!(tap.take_fired().is_empty());
        send(&mut sink, trace::Dir::C2s, 3, 9, 0, &[]);
        assert_eq!(tap.take_fired().len(), 1);
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &b, &mut buf).unwrap(), 0, "the peer sees the shutdown");
    }
}
