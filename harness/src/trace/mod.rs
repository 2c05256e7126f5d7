//! Message traces decoded for people: what backs `miglab trace FILE`.
//!
//! A trace is JSON lines of two kinds. Message lines are those mock-qemu's client writes
//! (`mock_qemu::client::TraceOptions`; the recorded reference trace has the same keys without
//! `cmd_name` and `t`, and the command is always decoded from `cmd`). Event lines, written by
//! the scenario runner, have an `event` key: `step` (the messages after it belong to that
//! step), `fault`, `note`, and any other kind, shown as its fields.
//!
//! ```text
//! {"event": "step", "index": 3, "kind": "migrate", "line": 27, "column": 5}
//! {"session": "source", "dir": "c2s", "msg_id": 12, "cmd": 16, "size": 32, "flags": 0, "error_no": 0, "nfds": 0, "payload": "100000000200020006000000ffffffff"}
//! {"session": "source", "dir": "s2c", "msg_id": 12, "cmd": 16, "size": 32, "flags": 1, "error_no": 0, "nfds": 0, "payload": "100000000200020006000000ffffffff"}
//! {"event": "fault", "step": 3, "name": "proxy", "detail": "drop-reply on MIG_DATA_READ #2"}
//! ```
//!
//! becomes
//!
//! ```text
//! ── step 3: migrate (line 27:5) ──
//! [step 3 migrate] source      c2s #12    DEVICE_FEATURE SET MIG_DEVICE_STATE state=PRE_COPY
//! [step 3 migrate] source      s2c #12    DEVICE_FEATURE reply ok
//!    state RUNNING -> PRE_COPY
//! !! fault proxy: drop-reply on MIG_DATA_READ #2
//! ```
//!
//! - **Messages**: one line each — step, session, direction, msg_id, the command and its fields
//!   by the layouts of [`vfu_server::wire`] (requests and successful replies; an error reply
//!   shows its errno by name, `ERROR EINVAL (22)`). Data payloads show their first
//!   [`DecodeOptions::payload_bytes`] bytes in hex. Fds, NO_REPLY, unexpected flags and a
//!   `size` that does not match the payload are noted at the end of the line.
//! - **Migration state**, tracked per session from RUNNING: the state a SET of
//!   MIG_DEVICE_STATE asks for is applied when the reply to that msg_id succeeds, DEVICE_RESET
//!   gives RUNNING, a GET reply says what the state is (`(read back)` when that differs); a
//!   failed SET leaves the state unknown (`?`), since a refused walk may have stopped on its
//!   way. Each change is a `   state A -> B` line after the reply.
//! - **Hostile input never stops the decoding**: a line that is not JSON, lacks a key, has a
//!   bad payload string and so on is shown as `malformed line N: why`; a payload too short for
//!   its command ends its message line with `(payload too short for …)`. [`TraceError`] is
//!   only for reading and writing.
//! - **Filters** ([`DecodeOptions`]) select a session and a step; the bookkeeping still sees
//!   every line, so states stay right, and malformed lines are always shown.

#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod decoder;
pub mod diff;
mod feature;
mod line;
mod names;
mod payload;
pub mod pcapng;
mod record;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use vfu_server::wire::Command;

pub use record::{Dir, Record, cut_keys};

/// Bytes of a data payload shown in hex unless told otherwise.
pub const DEFAULT_PAYLOAD_BYTES: usize = 32;

/// What to decode and how much to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Only the messages (and notes) of this session (`source`, `destination`, ...).
    pub session: Option<String>,
    /// Only what belongs to this step (after its `step` event, before the next one).
    pub step: Option<usize>,
    /// Hex bytes shown of each data payload (region and DMA data, migration data, ...).
    pub payload_bytes: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { session: None, step: None, payload_bytes: DEFAULT_PAYLOAD_BYTES }
    }
}

/// What a decoding saw (of the lines the filters let through, but for malformed lines, which
/// are all counted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Lines read.
    pub lines: usize,
    /// Message lines shown.
    pub messages: usize,
    /// Replies with the ERROR flag among them.
    pub error_replies: usize,
    /// Messages by command number.
    pub per_command: BTreeMap<u16, CommandCounts>,
    /// Event lines shown.
    pub events: usize,
    /// Messages whose payload is shorter than their command's fixed part.
    pub too_short: usize,
    /// Lines that are neither a message nor an event.
    pub malformed: Vec<MalformedLine>,
    /// Migration state changes, in trace order.
    pub state_changes: Vec<StateChange>,
}

impl DecodeSummary {
    /// Whether the trace had lines or payloads that could not be decoded.
    pub fn has_problems(&self) -> bool {
        !self.malformed.is_empty() || self.too_short != 0
    }
}

/// Messages of one command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandCounts {
    /// Requests.
    pub requests: usize,
    /// Replies, error replies included.
    pub replies: usize,
    /// Error replies.
    pub errors: usize,
}

/// A line that is neither a message nor an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedLine {
    /// Line number, from 1.
    pub line: usize,
    /// Why it was not understood.
    pub why: String,
}

/// A change of a session's migration state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// Line of the reply that made it.
    pub line: usize,
    /// The session.
    pub session: String,
    /// The state before (`MigState` number), None when it was unknown.
    pub from: Option<u32>,
    /// The state after (`MigState` number).
    pub to: u32,
    /// What made it.
    pub cause: ChangeCause,
}

/// What changed a migration state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeCause {
    /// A successful SET of MIG_DEVICE_STATE.
    Set,
    /// A successful DEVICE_RESET.
    Reset,
    /// A GET of MIG_DEVICE_STATE answered with another state than the one tracked.
    ReadBack,
}

impl ChangeCause {
    /// What the `state` line adds after the states.
    fn note(self) -> &'static str {
        match self {
            ChangeCause::Set => "",
            ChangeCause::Reset => " (reset)",
            ChangeCause::ReadBack => " (read back)",
        }
    }
}

impl fmt::Display for StateChange {
    /// `source RUNNING -> PRE_COPY`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.session, names::maybe_state(self.from), names::state(self.to))
    }
}

impl fmt::Display for DecodeSummary {
    /// The totals, a line per command, and the malformed lines' numbers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let requests: usize = self.per_command.values().map(|c| c.requests).sum();
        let replies: usize = self.per_command.values().map(|c| c.replies).sum();
        writeln!(
            f,
            "{} ({}, {}, {}), {}, {}",
            plural(self.messages, "message", "messages"),
            plural(requests, "request", "requests"),
            plural(replies, "reply", "replies"),
            plural(self.error_replies, "error reply", "error replies"),
            plural(self.events, "event", "events"),
            plural(self.malformed.len(), "malformed line", "malformed lines"),
        )?;
        for (cmd, c) in &self.per_command {
            let name = Command::from_u16(*cmd).map_or_else(|| format!("UNKNOWN({cmd})"), |c| c.name().to_owned());
            let errors =
                if c.errors == 0 { String::new() } else { format!(" ({})", plural(c.errors, "error", "errors")) };
            writeln!(f, "  {name:<24} {:>6} requests {:>6} replies{errors}", c.requests, c.replies)?;
        }
        if self.too_short != 0 {
            writeln!(f, "  {} payloads too short for their command", self.too_short)?;
        }
        if !self.malformed.is_empty() {
            let lines: Vec<String> = self.malformed.iter().take(20).map(|m| m.line.to_string()).collect();
            let more = if self.malformed.len() > lines.len() { ", …" } else { "" };
            writeln!(f, "  malformed lines: {}{more}", lines.join(", "))?;
        }
        Ok(())
    }
}

/// `1 reply`, `2 replies`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Why a trace could not be decoded: reading or writing failed (the content never fails it).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The trace file could not be opened.
    #[error("cannot open trace {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading the trace failed.
    #[error("reading line {line} of the trace failed")]
    Read {
        /// The line being read, from 1.
        line: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing the decoded text failed.
    #[error("writing the decoded trace failed")]
    Write(#[source] io::Error),
}

/// A message as the decoder read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedMessage {
    /// Its line number, from 1.
    pub line: usize,
    /// What the line says.
    pub record: Record,
    /// What the decoder shows after the line's columns: the command, its fields and notes.
    pub text: String,
    /// The payload's fields, `(key, value)` as shown (`("", word)` for a word without a key).
    pub fields: Vec<(String, String)>,
}

/// Decodes a trace a line at a time, for a trace being written (`miglab tap` shows each
/// message as it passes) as for a file.
#[derive(Debug)]
pub struct Decoding {
    decoder: decoder::Decoder,
    number: usize,
}

impl Decoding {
    /// A decoding from the first line.
    pub fn new(options: DecodeOptions) -> Self {
        Self { decoder: decoder::Decoder::new(options), number: 0 }
    }

    /// Decodes the next line (with or without its newline): the text it shows (empty for a
    /// line the filters hide, several lines after a state change) and its message, if it is one.
    pub fn line(&mut self, raw: &[u8]) -> (String, Option<DecodedMessage>) {
        self.number = self.number.saturating_add(1);
        let mut text = String::new();
        self.decoder.line(self.number, raw, &mut text);
        (text, self.decoder.take_message())
    }

    /// What was decoded so far.
    pub fn summary(&self) -> &DecodeSummary {
        self.decoder.summary()
    }

    /// What was decoded.
    pub fn finish(self) -> DecodeSummary {
        self.decoder.finish()
    }
}

/// Reads `input` a line at a time into `each` (the line number, from 1, and its bytes with
/// the newline); only reading fails it.
fn for_each_line(
    mut input: impl BufRead,
    mut each: impl FnMut(usize, &[u8]) -> Result<(), TraceError>,
) -> Result<(), TraceError> {
    let mut raw = Vec::new();
    let mut number = 0usize;
    loop {
        raw.clear();
        let line = number.saturating_add(1);
        if input.read_until(b'\n', &mut raw).map_err(|source| TraceError::Read { line, source })? == 0 {
            return Ok(());
        }
        number = line;
        each(number, &raw)?;
    }
}

/// Decodes the trace `input` into `out`, a line per message or event (see the module
/// documentation), and returns what it saw. Only I/O fails it.
pub fn decode_trace(
    input: impl BufRead,
    options: &DecodeOptions,
    out: &mut impl Write,
) -> Result<DecodeSummary, TraceError> {
    let mut decoding = Decoding::new(options.clone());
    for_each_line(input, |_, raw| {
        let (text, _) = decoding.line(raw);
        out.write_all(text.as_bytes()).map_err(TraceError::Write)
    })?;
    out.flush().map_err(TraceError::Write)?;
    Ok(decoding.finish())
}

/// Every message of the trace `input`, decoded (the summary tells of lines that were not
/// messages). Only reading fails it.
pub fn decode_messages(input: impl BufRead) -> Result<(Vec<DecodedMessage>, DecodeSummary), TraceError> {
    let mut decoding = Decoding::new(DecodeOptions::default());
    let mut messages = Vec::new();
    for_each_line(input, |_, raw| {
        messages.extend(decoding.line(raw).1);
        Ok(())
    })?;
    Ok((messages, decoding.finish()))
}

/// `miglab trace FILE`: decodes the file at `path` into `out`, then writes the summary after a
/// blank line.
pub fn decode_trace_file(
    path: &Path,
    options: &DecodeOptions,
    out: &mut impl Write,
) -> Result<DecodeSummary, TraceError> {
    let file = std::fs::File::open(path).map_err(|source| TraceError::Open { path: path.to_owned(), source })?;
    let summary = decode_trace(io::BufReader::new(file), options, out)?;
    write!(out, "\n{summary}").and_then(|()| out.flush()).map_err(TraceError::Write)?;
    Ok(summary)
}
