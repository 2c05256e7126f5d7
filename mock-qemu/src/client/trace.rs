//! Message traces: one JSON object per line for every message, both ways.
//!
//! The keys are those of the recorded reference trace (`reference-sample-client.jsonl`), in the
//! same order and with the same separators, followed by two of the client's own:
//!
//! ```text
//! {"session": "client", "dir": "c2s", "msg_id": 1, "cmd": 1, "size": 48, "flags": 0, "error_no": 0, "nfds": 0, "payload": "0000…", "cmd_name": "VERSION", "t": 153}
//! ```
//!
//! - `session`: [`TraceOptions::session`]; `dir`: `c2s` (client to server) or `s2c`.
//! - `msg_id`, `cmd`, `size` (`msg_size`), `flags`, `error_no`: the header as sent or received;
//!   `nfds`: fds that travelled with the message; `payload`: the bytes after the header, hex.
//! - `cmd_name`: the specification's name of `cmd` (`UNKNOWN` for a number it does not have).
//! - `t`: microseconds since the client was created (monotonic clock); left out when
//!   [`TraceOptions::timestamps`] is false, so two runs of the same conversation give
//!   byte-identical traces.
//!
//! Messages of the twin socket are traced like those of the main socket. A line is written
//! (and the writer flushed) before a message is sent and after one is received, so the order
//! of the lines is the order the client saw; a write error stops the trace (with a warning)
//! rather than failing the conversation.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Instant;

use vfu_server::wire::{Command, Header};

/// How a trace is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceOptions {
    /// The `session` value of every line.
    pub session: String,
    /// Whether lines carry the `t` field (false: byte-identical traces across runs).
    pub timestamps: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self { session: "client".into(), timestamps: true }
    }
}

/// Direction of a traced message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Client to server.
    C2s,
    /// Server to client.
    S2c,
}

/// A trace being written.
pub(crate) struct Tracer {
    out: Box<dyn Write + Send>,
    opts: TraceOptions,
    session_json: String,
    line: String,
}

impl Tracer {
    pub(crate) fn new(out: Box<dyn Write + Send>, opts: TraceOptions) -> Self {
        let session_json = serde_json::to_string(&opts.session).unwrap_or_else(|_| "\"client\"".into());
        Self { out, opts, session_json, line: String::new() }
    }

    /// Writes the line of one message; false if the writer failed.
    pub(crate) fn record(&mut self, start: Instant, dir: Dir, h: &Header, payload: &[&[u8]], nfds: usize) -> bool {
        let line = &mut self.line;
        line.clear();
        let dir = match dir {
            Dir::C2s => "c2s",
            Dir::S2c => "s2c",
        };
        let _ = write!(
            line,
            "{{\"session\": {}, \"dir\": \"{dir}\", \"msg_id\": {}, \"cmd\": {}, \"size\": {}, \"flags\": {}, \
             \"error_no\": {}, \"nfds\": {nfds}, \"payload\": \"",
            self.session_json, h.msg_id, h.cmd, h.msg_size, h.flags, h.error_no
        );
        const HEX: &[u8; 16] = b"0123456789abcdef";
        line.reserve(payload.iter().map(|p| p.len() * 2).sum());
        for b in payload.iter().flat_map(|p| p.iter()) {
            line.push(char::from(HEX[usize::from(b >> 4)]));
            line.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        let name = Command::from_u16(h.cmd).map_or("UNKNOWN", Command::name);
        let _ = write!(line, "\", \"cmd_name\": \"{name}\"");
        if self.opts.timestamps {
            let _ = write!(line, ", \"t\": {}", start.elapsed().as_micros());
        }
        line.push_str("}\n");
        self.out.write_all(line.as_bytes()).and_then(|()| self.out.flush()).is_ok()
    }
}
