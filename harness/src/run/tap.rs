//! The trace tap: where a side's client writes its message trace.
//!
//! It keeps the lines until the runner moves them into the run's trace file (so the lines of
//! the two sides, whose clients run on two threads during a migration, never interleave by
//! chance), reads the migration state changes off them for the timeline, and fires the
//! triggers armed on the Nth message of a command: the client traces each request before it
//! sends it, so a trigger fires just before that message leaves.
//!
//! Every message also goes to the side's protocol model ([`crate::model`]), which predicts
//! each reply from the conversation so far and keeps what it finds for the runner.
//!
//! A payload longer than [`PAYLOAD_KEPT`] bytes (migration data, large DMA) keeps its first
//! bytes only, followed by `"payload_len"` and `"payload_xxh3"` of the whole payload: a
//! trace stays small enough to keep with every report, and two traces still differ wherever
//! a payload byte does.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vfu_server::wire::{Command, FEATURE_MIG_DEVICE_STATE, FEATURE_SET, MigState};

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

/// `line` with its payload cut to [`PAYLOAD_KEPT`] bytes and the length and XXH3 of the
/// whole appended; unchanged when the payload is short or the line is not of the expected
/// shape.
fn shorten(line: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"\"payload\": \"";
    if line.len() <= 2 * PAYLOAD_KEPT + 512 {
        return line.to_vec();
    }
    let Some(start) = line.windows(KEY.len()).position(|w| w == KEY).map(|p| p + KEY.len()) else {
        return line.to_vec();
    };
    let Some(len) = line[start..].iter().position(|&b| b == b'"') else { return line.to_vec() };
    if len <= 2 * PAYLOAD_KEPT {
        return line.to_vec();
    }
    let hex = &line[start..start + len];
    // Megabytes of migration data pass here: nibbles decoded by table, not by parsing.
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes: Vec<u8> = hex
        .chunks(2)
        .filter_map(|p| match *p {
            [h, l] => Some(nibble(h)? << 4 | nibble(l)?),
            [c] => nibble(c),
            _ => None,
        })
        .collect();
    let mut out = Vec::with_capacity(2 * PAYLOAD_KEPT + 256);
    out.extend_from_slice(&line[..start + 2 * PAYLOAD_KEPT]);
    out.push(b'"');
    out.extend_from_slice(crate::trace::cut_keys(bytes.len() as u64, xxhash_rust::xxh3::xxh3_64(&bytes)).as_bytes());
    out.extend_from_slice(&line[start + len + 1..]);
    out
}

#[derive(Debug, Default)]
struct Inner {
    lines: Vec<u8>,
    partial: Vec<u8>,
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

    /// One message's line, whole and as kept ([`shorten`]).
    fn line(inner: &mut Inner, whole: &[u8], kept: &[u8]) {
        inner.messages += 1;
        // The message is read once, for the state changes and triggers here and for the
        // model, from the line as kept: the head of a long payload and its length are all the
        // model decodes of most commands, and a line of megabytes is not searched again. A
        // feature's or VERSION's payload is judged whole (a dirty bitmap), from the whole line.
        let parse = |l: &[u8]| std::str::from_utf8(l).ok().and_then(Msg::parse_line);
        let Some(mut m) = parse(kept) else { return };
        if kept.len() != whole.len() && [Command::DeviceFeature as u16, Command::Version as u16].contains(&m.cmd) {
            let Some(w) = parse(whole) else { return };
            m = w;
        }
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

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.inner();
        inner.partial.extend_from_slice(buf);
        while let Some(nl) = inner.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = inner.partial.drain(..=nl).collect();
            let short = shorten(&line);
            Self::line(&mut inner, &line, &short);
            inner.lines.extend_from_slice(&short);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(dir: &str, id: u16, cmd: u16, flags: u32, payload: &str) -> String {
        format!(
            "{{\"session\": \"source\", \"dir\": \"{dir}\", \"msg_id\": {id}, \"cmd\": {cmd}, \"size\": 0, \
             \"flags\": {flags}, \"error_no\": 0, \"nfds\": 0, \"payload\": \"{payload}\", \"cmd_name\": \"X\"}}\n"
        )
    }

    #[test]
    fn a_successful_set_reply_is_a_state_change_and_a_refused_one_is_not() {
        let mut tap = Tap::default();
        // argsz 16, flags SET | MIG_DEVICE_STATE (0x20002), state 6 (PRE_COPY).
        let set = "1000000002000200060000000000000000";
        tap.write_all(line("c2s", 7, 16, 0, set).as_bytes()).unwrap();
        tap.write_all(line("s2c", 7, 16, 1, "").as_bytes()).unwrap();
        tap.write_all(line("c2s", 8, 16, 0, set).as_bytes()).unwrap();
        tap.write_all(line("s2c", 8, 16, 0x21, "").as_bytes()).unwrap();
        let changes = tap.take_changes();
        assert_eq!(changes.iter().map(|c| c.to).collect::<Vec<_>>(), vec![MigState::PreCopy]);
        assert_eq!(tap.messages(), 4);
    }

    #[test]
    fn a_long_payload_keeps_its_head_its_length_and_its_hash() {
        let payload = "ab".repeat(3 * PAYLOAD_KEPT);
        let long = line("c2s", 1, 18, 0, &payload);
        let short = String::from_utf8(shorten(long.as_bytes())).unwrap();
        let v: serde_json::Value = serde_json::from_str(&short).unwrap();
        assert_eq!(v["payload"].as_str().unwrap().len(), 2 * PAYLOAD_KEPT);
        assert_eq!(v["payload_len"], 3 * PAYLOAD_KEPT);
        assert_eq!(v["payload_xxh3"], format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&vec![0xab; 3 * PAYLOAD_KEPT])));
        assert_eq!(v["cmd_name"], "X");
        let small = line("c2s", 1, 18, 0, "abcd");
        assert_eq!(shorten(small.as_bytes()), small.as_bytes());
    }

    #[test]
    fn a_trigger_fires_on_its_nth_request_of_the_command() {
        let mut tap = Tap::default();
        let (a, b) = UnixStream::pair().unwrap();
        tap.arm(Armed { cmd: Some(9), nth: 2, seen: 0, action: TriggerAction::Disconnect(a), label: "x".into() });
        tap.write_all(line("c2s", 1, 9, 0, "").as_bytes()).unwrap();
        tap.write_all(line("c2s", 2, 10, 0, "").as_bytes()).unwrap();
        assert!(tap.take_fired().is_empty());
        tap.write_all(line("c2s", 3, 9, 0, "").as_bytes()).unwrap();
        assert_eq!(tap.take_fired().len(), 1);
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &b, &mut buf).unwrap(), 0, "the peer sees the shutdown");
    }
}
