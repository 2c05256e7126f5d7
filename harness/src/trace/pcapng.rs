//! Traces as pcapng, for Wireshark: `miglab trace FILE --pcapng OUT` and `miglab tap --pcapng
//! OUT`, read with the vfio-user dissector in `contrib/wireshark/vfio_user.lua`.
//!
//! The file is one section (SHB), one interface (IDB) per session, named after it, and an
//! Enhanced Packet Block (EPB) per message. The link type is `LINKTYPE_USER0` (147): the
//! dissector registers for it in the `wtap_encap` table, with no preference to set. Each
//! packet starts with a small header of this project's, then the vfio-user message as it
//! travelled (little-endian, as the wire on x86-64):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `vfuT` |
//! | 4 | 1 | version, 1 |
//! | 5 | 1 | direction: 0 client to server, 1 server to client |
//! | 6 | 2 | fds that travelled with the message (SCM_RIGHTS) |
//! | 8 | 4 | the message's whole length (header and payload) |
//! | 12 | 2 | length S of the session name |
//! | 14 | 2 | flags: bit 0 the trace kept only the first bytes of the payload |
//! | 16 | S | the session name, UTF-8 |
//! | 16 + S | | the message: its 16-byte header, then its payload as the trace kept it |
//!
//! A payload the trace cut (`payload_len`, `payload_xxh3`) is written as captured bytes fewer
//! than the original length, as a capture with a snap length is, and the EPB's comment gives
//! the whole length and hash. So is a packet longer than [`MAX_CAPTURE`], the most Wireshark
//! reads of one packet (migration data and DMA messages reach 1 MiB and more). The EPB flags carry the direction too (inbound: to the server).
//! Timestamps are the trace's `t` (microseconds) after the `unix_us` of a `tap` event line
//! when the trace has one; a line without `t` is one microsecond after the message before it
//! (the first at that clock).

use std::collections::HashMap;
use std::io::{self, BufRead, Write};

use vfu_server::wire::HEADER_SIZE;
use zerocopy::IntoBytes;

use super::line::{self, Event, Line};
use super::record::{Dir, Record};
use super::{TraceError, for_each_line};

/// `LINKTYPE_USER0`.
pub const LINKTYPE: u16 = 147;
/// The packet header's magic.
pub const MAGIC: [u8; 4] = *b"vfuT";
/// Bytes of the packet header before the session name.
pub const PACKET_HEADER: usize = 16;
/// The packet header's flag: the payload was cut (by the trace, or to [`MAX_CAPTURE`]).
pub const FLAG_CUT: u16 = 1;
/// The most bytes of one packet written (Wireshark's largest packet: 256 KiB).
pub const MAX_CAPTURE: usize = 262_144;

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const OPT_SHB_USERAPPL: u16 = 4;
const OPT_IF_NAME: u16 = 2;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_EPB_FLAGS: u16 = 2;
const EPB_INBOUND: u32 = 1;
const EPB_OUTBOUND: u32 = 2;

/// One block being built: its body, then its options.
struct Block {
    kind: u32,
    body: Vec<u8>,
}

impl Block {
    fn new(kind: u32) -> Self {
        Self { kind, body: Vec::with_capacity(64) }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.body.extend_from_slice(b);
        self
    }

    /// Zeros up to the next multiple of 4.
    fn pad(&mut self) -> &mut Self {
        let n = self.body.len().next_multiple_of(4) - self.body.len();
        self.body.extend(std::iter::repeat_n(0, n));
        self
    }

    fn option(&mut self, code: u16, value: &[u8]) -> &mut Self {
        // An option longer than 64 KiB cannot be said; comments are the only long ones.
        let value = value.get(..usize::from(u16::MAX)).unwrap_or(value);
        self.bytes(&code.to_le_bytes()).bytes(&(value.len() as u16).to_le_bytes()).bytes(value).pad()
    }

    fn write(&mut self, out: &mut impl Write) -> io::Result<()> {
        self.option(OPT_END, &[]);
        let total = u32::try_from(self.body.len() + 12)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a pcapng block longer than 4 GiB"))?;
        out.write_all(&self.kind.to_le_bytes())?;
        out.write_all(&total.to_le_bytes())?;
        out.write_all(&self.body)?;
        out.write_all(&total.to_le_bytes())
    }
}

/// Writes messages as pcapng.
#[derive(Debug)]
pub struct PcapngWriter<W: Write> {
    out: W,
    interfaces: HashMap<String, u32>,
    base_us: u64,
    last_us: u64,
    packets: u64,
}

impl<W: Write> PcapngWriter<W> {
    /// Starts the file: its section header.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut shb = Block::new(SHB);
        shb.bytes(&BYTE_ORDER_MAGIC.to_le_bytes()).bytes(&1u16.to_le_bytes()).bytes(&0u16.to_le_bytes());
        // Section length: not given.
        shb.bytes(&u64::MAX.to_le_bytes());
        shb.option(OPT_SHB_USERAPPL, concat!("miglab ", env!("CARGO_PKG_VERSION")).as_bytes());
        shb.write(&mut out)?;
        Ok(Self { out, interfaces: HashMap::new(), base_us: 0, last_us: 0, packets: 0 })
    }

    /// The wall-clock time (microseconds since 1970) at which the trace's `t` is 0.
    pub fn set_clock(&mut self, unix_us: u64) {
        self.base_us = unix_us;
    }

    /// Packets written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Writes one message (and its session's interface, the first time).
    pub fn packet(&mut self, r: &Record) -> io::Result<()> {
        let interface = self.interface(&r.session)?;
        let us = match r.t {
            Some(t) => self.base_us.saturating_add(t),
            None => self.last_us.saturating_add(1).max(self.base_us),
        };
        self.last_us = us;
        let session = r.session.as_bytes();
        let session = session.get(..usize::from(u16::MAX)).unwrap_or(session);
        let whole = (HEADER_SIZE as u64).saturating_add(r.payload_len);
        let room = MAX_CAPTURE.saturating_sub(PACKET_HEADER + session.len() + HEADER_SIZE);
        let kept = r.payload.get(..room).unwrap_or(&r.payload);
        let cut = (kept.len() as u64) < r.payload_len;
        let mut head = [0u8; PACKET_HEADER];
        head[..4].copy_from_slice(&MAGIC);
        head[4] = 1;
        head[5] = u8::from(r.dir == Dir::S2c);
        head[6..8].copy_from_slice(&u16::try_from(r.nfds).unwrap_or(u16::MAX).to_le_bytes());
        head[8..12].copy_from_slice(&u32::try_from(whole).unwrap_or(u32::MAX).to_le_bytes());
        head[12..14].copy_from_slice(&(session.len() as u16).to_le_bytes());
        head[14..16].copy_from_slice(&(if cut { FLAG_CUT } else { 0 }).to_le_bytes());
        let captured = PACKET_HEADER + session.len() + HEADER_SIZE + kept.len();
        let original = (PACKET_HEADER + session.len()) as u64 + whole;
        let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "a message longer than 4 GiB");
        let mut epb = Block::new(EPB);
        epb.bytes(&interface.to_le_bytes())
            .bytes(&((us >> 32) as u32).to_le_bytes())
            .bytes(&(us as u32).to_le_bytes())
            .bytes(&u32::try_from(captured).map_err(|_| too_long())?.to_le_bytes())
            .bytes(&u32::try_from(original).map_err(|_| too_long())?.to_le_bytes())
            .bytes(&head)
            .bytes(session)
            .bytes(r.header.as_bytes())
            .bytes(kept)
            .pad();
        epb.option(OPT_EPB_FLAGS, &(if r.dir == Dir::C2s { EPB_INBOUND } else { EPB_OUTBOUND }).to_le_bytes());
        if cut {
            let hash = r.whole_xxh3().map(|h| format!(", xxh3 {h:016x}")).unwrap_or_default();
            let by = if r.is_cut() { "the trace" } else { "the capture" };
            let note = format!("{by} kept {} of {} payload bytes{hash}", kept.len(), r.payload_len);
            epb.option(OPT_COMMENT, note.as_bytes());
        }
        epb.write(&mut self.out)?;
        self.packets += 1;
        Ok(())
    }

    /// The interface of `session`, described the first time.
    fn interface(&mut self, session: &str) -> io::Result<u32> {
        if let Some(&id) = self.interfaces.get(session) {
            return Ok(id);
        }
        let id = u32::try_from(self.interfaces.len()).unwrap_or(u32::MAX);
        let mut idb = Block::new(IDB);
        idb.bytes(&LINKTYPE.to_le_bytes()).bytes(&0u16.to_le_bytes()).bytes(&(MAX_CAPTURE as u32).to_le_bytes());
        idb.option(OPT_IF_NAME, session.as_bytes()).option(OPT_IF_TSRESOL, &[6]);
        idb.write(&mut self.out)?;
        self.interfaces.insert(session.to_owned(), id);
        Ok(id)
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// What a conversion wrote and skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PcapngStats {
    /// Messages written as packets.
    pub packets: u64,
    /// Event lines (not packets).
    pub events: u64,
    /// Lines that were neither.
    pub malformed: u64,
}

/// Writes the messages of the trace `input` to `out` as pcapng; only I/O fails it.
pub fn trace_to_pcapng(input: impl BufRead, out: impl Write) -> Result<PcapngStats, TraceError> {
    let mut writer = PcapngWriter::new(out).map_err(TraceError::Write)?;
    let mut stats = PcapngStats::default();
    for_each_line(input, |_, raw| {
        let parsed = std::str::from_utf8(raw).map_err(|e| e.to_string()).and_then(line::parse);
        match parsed {
            Ok(Line::Message(r)) => writer.packet(&r).map_err(TraceError::Write)?,
            Ok(Line::Event(e)) => {
                stats.events += 1;
                if let Some(us) = clock(&e) {
                    writer.set_clock(us);
                }
            }
            Ok(Line::Blank) => {}
            Err(_) => stats.malformed += 1,
        }
        Ok(())
    })?;
    stats.packets = writer.packets();
    writer.finish().map_err(TraceError::Write)?;
    Ok(stats)
}

/// The `unix_us` of a `tap` event line: when the trace's clock started.
fn clock(e: &Event) -> Option<u64> {
    match e {
        Event::Other { kind, fields } if kind == "tap" => {
            fields.iter().find(|(k, _)| k == "unix_us").and_then(|(_, v)| v.parse().ok())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
