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
//! Messages of the twin socket are traced like those of the main socket. A message is traced
//! before it is sent and after it is received, so the order of the lines is the order the
//! client saw; a failing trace stops (with a warning) rather than failing the conversation.
//!
//! The client hands each message to a [`TraceSink`]. [`JsonLines`], the sink of
//! [`Client::set_trace`](super::Client::set_trace), writes the lines above (flushing the writer
//! after each). A sink of its own lets a caller read the messages as bytes instead of parsing
//! them back out of text, and [`LineEncoder`] still gives it the very same lines, with long
//! payloads cut if it wants them smaller.

use std::io::{self, Write};
use std::time::Duration;

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
pub enum Dir {
    /// Client to server.
    C2s,
    /// Server to client.
    S2c,
}

impl Dir {
    /// The trace's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::C2s => "c2s",
            Dir::S2c => "s2c",
        }
    }
}

/// One message as the client sent or received it.
#[derive(Debug, Clone, Copy)]
pub struct Traced<'a> {
    /// Which way it went.
    pub dir: Dir,
    /// The header as sent or received.
    pub header: &'a Header,
    /// The bytes after the header, in the pieces they were sent or received in.
    pub payload: &'a [&'a [u8]],
    /// File descriptors that travelled with it.
    pub nfds: usize,
    /// Time since the client was created.
    pub elapsed: Duration,
}

impl Traced<'_> {
    /// The payload's length, all pieces together.
    pub fn payload_len(&self) -> usize {
        self.payload.iter().map(|p| p.len()).sum()
    }
}

/// What a client tells of every message it sends or receives, on the client's thread and in
/// the order it saw them.
pub trait TraceSink: Send {
    /// One message, before it is sent or after it is received; an error stops the trace.
    fn message(&mut self, msg: &Traced<'_>) -> io::Result<()>;
}

/// Where a line's payload is cut: a trace that keeps many megabytes of migration data would
/// be too large to keep with every report.
#[derive(Debug, Clone, Copy)]
pub struct Cut<'a> {
    /// Payload bytes kept; a payload no longer than this is not cut.
    pub keep: usize,
    /// Text written right after the cut payload's closing quote (more keys, each after `, `).
    pub suffix: &'a str,
}

/// Encodes messages as trace lines (the module's format).
#[derive(Debug, Clone)]
pub struct LineEncoder {
    session_json: String,
    timestamps: bool,
}

impl LineEncoder {
    /// An encoder of lines as `options` say.
    pub fn new(options: &TraceOptions) -> Self {
        let session_json = serde_json::to_string(&options.session).unwrap_or_else(|_| "\"client\"".into());
        Self { session_json, timestamps: options.timestamps }
    }

    /// Appends the line of `msg` to `line`, its newline included; with `cut`, a payload longer
    /// than `cut.keep` bytes keeps its first bytes only and is followed by `cut.suffix`.
    pub fn encode(&self, line: &mut Vec<u8>, msg: &Traced<'_>, cut: Option<Cut<'_>>) {
        let h = msg.header;
        let cut = cut.filter(|c| msg.payload_len() > c.keep);
        // Writing into a Vec cannot fail.
        let _ = write!(
            line,
            "{{\"session\": {}, \"dir\": \"{}\", \"msg_id\": {}, \"cmd\": {}, \"size\": {}, \"flags\": {}, \
             \"error_no\": {}, \"nfds\": {}, \"payload\": \"",
            self.session_json,
            msg.dir.as_str(),
            h.msg_id,
            h.cmd,
            h.msg_size,
            h.flags,
            h.error_no,
            msg.nfds
        );
        let mut left = cut.map_or(usize::MAX, |c| c.keep);
        line.reserve(2 * msg.payload_len().min(left));
        for piece in msg.payload {
            let piece = piece.get(..left).unwrap_or(piece);
            left -= piece.len();
            hex(line, piece);
        }
        line.push(b'"');
        if let Some(c) = cut {
            line.extend_from_slice(c.suffix.as_bytes());
        }
        let name = Command::from_u16(h.cmd).map_or("UNKNOWN", Command::name);
        let _ = write!(line, ", \"cmd_name\": \"{name}\"");
        if self.timestamps {
            let _ = write!(line, ", \"t\": {}", msg.elapsed.as_micros());
        }
        line.extend_from_slice(b"}\n");
    }
}

/// Appends `bytes` in lowercase hex.
fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend(bytes.iter().flat_map(|&b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]));
}

/// The default sink: one whole line per message into a writer, flushed after each so a trace
/// is complete up to the last message even if the process dies.
pub struct JsonLines {
    out: Box<dyn Write + Send>,
    encoder: LineEncoder,
    line: Vec<u8>,
}

impl JsonLines {
    /// Lines into `out`, as `options` say.
    pub fn new(out: Box<dyn Write + Send>, options: &TraceOptions) -> Self {
        Self { out, encoder: LineEncoder::new(options), line: Vec::new() }
    }
}

impl TraceSink for JsonLines {
    fn message(&mut self, msg: &Traced<'_>) -> io::Result<()> {
        self.line.clear();
        self.encoder.encode(&mut self.line, msg, None);
        self.out.write_all(&self.line)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(payload: &[&[u8]], cut: Option<Cut<'_>>) -> String {
        let header = Header { msg_id: 3, cmd: 18, msg_size: 16 + 6, flags: 0, error_no: 0 };
        let msg = Traced { dir: Dir::C2s, header: &header, payload, nfds: 1, elapsed: Duration::from_micros(9) };
        let mut line = Vec::new();
        LineEncoder::new(&TraceOptions { session: "source".into(), timestamps: true }).encode(&mut line, &msg, cut);
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn a_line_has_the_reference_keys_and_the_pieces_of_the_payload_in_order() {
        assert_eq!(
            encode(&[&[0xde, 0xad], &[], &[0xbe, 0xef, 0x00, 0x01]], None),
            "{\"session\": \"source\", \"dir\": \"c2s\", \"msg_id\": 3, \"cmd\": 18, \"size\": 22, \"flags\": 0, \
             \"error_no\": 0, \"nfds\": 1, \"payload\": \"deadbeef0001\", \"cmd_name\": \"MIG_DATA_WRITE\", \"t\": 9}\n"
        );
    }

    #[test]
    fn a_cut_payload_keeps_its_head_across_pieces_and_gets_the_suffix_after_its_quote() {
        let pieces: &[&[u8]] = &[&[0xde, 0xad], &[0xbe, 0xef, 0x00, 0x01]];
        let cut = encode(pieces, Some(Cut { keep: 3, suffix: ", \"more\": 1" }));
        assert!(cut.contains("\"payload\": \"deadbe\", \"more\": 1, \"cmd_name\""), "{cut}");
        // A payload no longer than the cut is written whole, without the suffix.
        assert_eq!(encode(pieces, Some(Cut { keep: 6, suffix: ", \"more\": 1" })), encode(pieces, None));
    }
}
