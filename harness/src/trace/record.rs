//! One message of a trace as a value: what a line says, read and written the same way by
//! everything that reads or writes traces (the decoder, the tap, the pcapng writer, the diff).
//!
//! A payload may be kept in part only: the runner and the tap keep the first bytes of a long
//! payload and add `"payload_len"` (the whole length) and `"payload_xxh3"` (XXH3-64 of the
//! whole payload), so a trace stays small and two traces still differ wherever a byte does.
//! Readers take the whole length from `payload_len`, never from the kept bytes.

use std::fmt::Write as _;

use vfu_server::wire::{Command, Header};

/// Direction of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// The direction of the other party's messages.
    pub fn opposite(self) -> Self {
        match self {
            Dir::C2s => Dir::S2c,
            Dir::S2c => Dir::C2s,
        }
    }
}

/// A message line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Which client (`source`, `destination`, `conn1`, ...).
    pub session: String,
    /// Which way it travelled.
    pub dir: Dir,
    /// The header as sent (`size` is `msg_size`).
    pub header: Header,
    /// File descriptors that travelled with it.
    pub nfds: u64,
    /// The bytes after the header, or their first bytes when the payload was cut.
    pub payload: Vec<u8>,
    /// The whole payload's length (`payload.len()` unless it was cut).
    pub payload_len: u64,
    /// XXH3-64 of the whole payload, when it was cut.
    pub payload_xxh3: Option<u64>,
    /// The recorder's name of the command, when the line has one.
    pub cmd_name: Option<String>,
    /// Microseconds since the recorder started, when the line has them.
    pub t: Option<u64>,
}

impl Record {
    /// A message seen whole, its payload kept up to `snaplen` bytes (0: all of it).
    pub fn capture(session: &str, dir: Dir, header: Header, payload: &[u8], nfds: usize, snaplen: usize) -> Self {
        let cut = snaplen != 0 && payload.len() > snaplen;
        let kept = if cut { payload.get(..snaplen).unwrap_or(payload) } else { payload };
        Self {
            session: session.to_owned(),
            dir,
            header,
            nfds: nfds as u64,
            payload: kept.to_vec(),
            payload_len: payload.len() as u64,
            payload_xxh3: cut.then(|| xxhash_rust::xxh3::xxh3_64(payload)),
            cmd_name: Some(Command::from_u16(header.cmd).map_or("UNKNOWN", Command::name).to_owned()),
            t: None,
        }
    }

    /// Whether only the first bytes of the payload are here.
    pub fn is_cut(&self) -> bool {
        (self.payload.len() as u64) < self.payload_len
    }

    /// The line (without its newline), keys in the order mock-qemu's client writes them.
    pub fn to_line(&self) -> String {
        let h = &self.header;
        let session = serde_json::to_string(&self.session).unwrap_or_else(|_| "\"?\"".into());
        let mut line = String::with_capacity(192 + 2 * self.payload.len());
        let _ = write!(
            line,
            "{{\"session\": {session}, \"dir\": \"{}\", \"msg_id\": {}, \"cmd\": {}, \"size\": {}, \"flags\": {}, \
             \"error_no\": {}, \"nfds\": {}, \"payload\": \"",
            self.dir.as_str(),
            h.msg_id,
            h.cmd,
            h.msg_size,
            h.flags,
            h.error_no,
            self.nfds
        );
        for b in &self.payload {
            let _ = write!(line, "{b:02x}");
        }
        line.push('"');
        if let Some(hash) = self.payload_xxh3.filter(|_| self.is_cut()) {
            line.push_str(&cut_keys(self.payload_len, hash));
        }
        if let Some(name) = &self.cmd_name {
            let _ = write!(line, ", \"cmd_name\": {}", serde_json::to_string(name).unwrap_or_else(|_| "\"?\"".into()));
        }
        if let Some(t) = self.t {
            let _ = write!(line, ", \"t\": {t}");
        }
        line.push('}');
        line
    }

    /// Whether the whole payloads of `self` and `other` are equal, as far as both lines tell:
    /// by their bytes when both are whole, by length and XXH3 when either was cut.
    pub fn same_payload(&self, other: &Record) -> bool {
        if self.payload_len != other.payload_len {
            return false;
        }
        match (self.is_cut(), other.is_cut()) {
            (false, false) => self.payload == other.payload,
            _ => self.whole_xxh3() == other.whole_xxh3() && self.whole_xxh3().is_some(),
        }
    }

    /// XXH3-64 of the whole payload: computed when it is all here, else the line's, if any.
    pub fn whole_xxh3(&self) -> Option<u64> {
        if self.is_cut() { self.payload_xxh3 } else { Some(xxhash_rust::xxh3::xxh3_64(&self.payload)) }
    }
}

/// The keys a line gets when its payload is cut: `, "payload_len": N, "payload_xxh3": "…"`.
pub fn cut_keys(len: u64, xxh3: u64) -> String {
    format!(", \"payload_len\": {len}, \"payload_xxh3\": \"{xxh3:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::line::{Line, parse};

    fn header(size: u32) -> Header {
        Header { msg_id: 3, cmd: 17, msg_size: size, flags: 1, error_no: 0 }
    }

    #[test]
    fn a_captured_message_reads_back_as_it_was_written() {
        let mut r = Record::capture("conn1", Dir::S2c, header(24), &[1, 2, 3, 4, 5, 6, 7, 8], 0, 0);
        r.t = Some(99);
        let line = r.to_line();
        assert_eq!(
            line,
            "{\"session\": \"conn1\", \"dir\": \"s2c\", \"msg_id\": 3, \"cmd\": 17, \"size\": 24, \"flags\": 1, \
             \"error_no\": 0, \"nfds\": 0, \"payload\": \"0102030405060708\", \"cmd_name\": \"MIG_DATA_READ\", \"t\": 99}"
        );
        assert_eq!(parse(&line), Ok(Line::Message(r)));
    }

    #[test]
    fn a_payload_past_the_snaplen_keeps_its_head_its_length_and_its_hash() {
        let payload: Vec<u8> = (0..=255).collect();
        let r = Record::capture("s", Dir::C2s, header(16 + 256), &payload, 1, 16);
        assert!(r.is_cut());
        assert_eq!((r.payload.len(), r.payload_len), (16, 256));
        assert_eq!(r.payload_xxh3, Some(xxhash_rust::xxh3::xxh3_64(&payload)));
        let Ok(Line::Message(back)) = parse(&r.to_line()) else { panic!("{}", r.to_line()) };
        assert_eq!(back, r);
        let whole = Record::capture("s", Dir::C2s, header(16 + 256), &payload, 1, 0);
        assert!(back.same_payload(&whole) && whole.same_payload(&back));
        let mut other = payload.clone();
        other[200] ^= 1;
        assert!(!back.same_payload(&Record::capture("s", Dir::C2s, header(16 + 256), &other, 1, 0)));
    }
}
