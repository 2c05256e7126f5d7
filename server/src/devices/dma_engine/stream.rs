//! The wire format of the dma-engine's migration stream: records, their encoding, and an
//! incremental [`Decoder`] that takes the stream in pieces of any size.
//!
//! # Format (version 3)
//!
//! The stream is a sequence of records. Every record is a 16-byte record header followed by
//! its payload; all integers are little-endian:
//!
//! | bytes | field | meaning |
//! |---|---|---|
//! | 0..4 | type | [`RecordType`] |
//! | 4..8 | length | payload length; each type has one fixed length, any other is corruption |
//! | 8..16 | checksum | XXH3-64 of the payload, seeded with `type << 32 \| length`; for DEVMEM_PAGE and SCRATCH_PAGE, of the page's 4096 bytes alone, seeded with that XOR the page's offset (so it depends on the page's offset and bytes alone: the device keeps it per page as the page is written, and sends the page from where it lies) |
//! | 16.. | payload | below |
//!
//! | type | record | length | payload | sent |
//! |---|---|---|---|---|
//! | 1 | HEADER | 24 | magic `"DMAE-MIG"` (8 bytes), format version u32 (3), reserved u32 (0), `devmem_size` u64 | first, once |
//! | 2 | REGISTERS | 168 | the 21 fields of [`Registers`], u64 each, in [`Registers::fields`] order (the 14 command registers, then BG_CTRL, BG_STATUS, BG_SEED, BG_ADDR, BG_LEN, BG_WRITES, BG_INTERVAL_US) | STOP_COPY, once |
//! | 3 | PCI_CONFIG | 32 | command u32, interrupt line u32, the address bits of BAR0-BAR5 u32 each | STOP_COPY, once |
//! | 4 | DEVMEM_PAGE | 4104 | page-aligned offset u64, then the 4096 bytes of device memory there | PRE_COPY rounds and STOP_COPY; a page may come several times, the last copy wins |
//! | 5 | SCRATCH_PAGE | 4104 | page-aligned offset u64, then the 4096 bytes of shared scratch memory there | STOP_COPY, each of the 16 pages once |
//! | 6 | TRAILER | 16 | record count u64 (records before the trailer, header included), stream checksum u64 (the chain `c = XXH3-64(record checksum, seed c)` over every record before the trailer, from `c = 0`) | last |
//! | 7 | ZERO_PAGES | 16 | page-aligned offset u64, page count u64 (at least 1, all inside device memory): that many pages of zeros | instead of DEVMEM_PAGE records for consecutive pages the device has never written since power-on or its last reset |
//!
//! The HEADER record keeps this framing and payload layout in every format version, so a
//! destination can always tell another version (EPROTO) from garbage (EBADMSG). Version 1 had
//! a 112-byte REGISTERS record without the background writer's registers; version 2 had no
//! ZERO_PAGES record, so it sent never-written memory page by page (reading every page, which
//! faulted each one in); a stream of another version is refused with EPROTO. A complete
//! stream holds every devmem page (in a DEVMEM_PAGE or a ZERO_PAGES record) and every scratch
//! page at least once, REGISTERS and PCI_CONFIG once each, and nothing after the TRAILER.
//!
//! # Decoding
//!
//! [`Decoder::feed`] buffers at most one record ([`MAX_RECORD_LEN`] bytes): the record header
//! is checked as soon as its 16 bytes are in (unknown type or wrong length is corruption, so a
//! corrupted length never makes it allocate or wait for bytes that will not come), the payload
//! when the whole record is. The first problem is remembered and everything after it ignored;
//! [`Decoder::finish`] reports it. Errnos: EBADMSG for corruption (checksum mismatch, bad
//! magic, unknown type, wrong length, misplaced or repeated header, out-of-range values, bytes
//! after the trailer), EPROTO for another format version, EINVAL for another `devmem_size`,
//! ENODATA when the trailer has not arrived.
//!
//! Out-of-range register values are those no device could hold ([`decode_registers`]): an
//! unknown STATUS or BG_STATUS, undefined CMD_FLAGS or BG_CTRL bits, a 32-bit register above
//! 32 bits, and a background writer whose BG_CTRL and BG_STATUS disagree (enabled is RUNNING
//! or PAUSED, disabled is IDLE or FAULT) or that is enabled on an invalid window (enabling
//! on one faults at once).

use nix::errno::Errno;

use super::pages::PAGE_SIZE;
use super::pci_config::{COMMAND_WRITABLE, PciConfigState, SCRATCH_SIZE};
use super::regs::{BG_CTRL_ENABLE, BgRegisters, BgStatus, CMD_FLAG_IRQ, Registers, Status};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The magic at the start of the HEADER payload.
pub const STREAM_MAGIC: [u8; 8] = *b"DMAE-MIG";
/// The format version this code writes and reads (3: ZERO_PAGES runs stand for memory the
/// device never wrote; since 2, REGISTERS carries the background writer's registers).
pub const FORMAT_VERSION: u32 = 3;
/// Length of a record header (type, length, checksum).
pub const RECORD_HEADER_LEN: usize = 16;
/// Payload length of a DEVMEM_PAGE or SCRATCH_PAGE record: offset plus one page.
pub const PAGE_PAYLOAD_LEN: usize = 8 + PAGE_SIZE as usize;
/// The bytes of a page record before its page: record header and offset.
pub const PAGE_RECORD_HEAD: usize = RECORD_HEADER_LEN + 8;
/// The longest record of the format; the decoder never buffers more.
pub const MAX_RECORD_LEN: usize = RECORD_HEADER_LEN + PAGE_PAYLOAD_LEN;

/// The record types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordType {
    /// Magic, format version, device configuration.
    Header = 1,
    /// The BAR0 registers.
    Registers = 2,
    /// The writable part of configuration space.
    PciConfig = 3,
    /// One page of device memory (BAR2).
    DevmemPage = 4,
    /// One page of shared scratch memory (BAR4).
    ScratchPage = 5,
    /// Record count and whole-stream checksum.
    Trailer = 6,
    /// A run of device memory pages that hold zeros.
    ZeroPages = 7,
}

impl RecordType {
    /// The type with number `raw`, if there is one.
    pub fn from_raw(raw: u32) -> Option<Self> {
        [
            Self::Header,
            Self::Registers,
            Self::PciConfig,
            Self::DevmemPage,
            Self::ScratchPage,
            Self::Trailer,
            Self::ZeroPages,
        ]
        .into_iter()
        .find(|t| *t as u32 == raw)
    }

    /// The payload length every record of this type has.
    pub fn payload_len(self) -> usize {
        match self {
            Self::Header => 24,
            Self::Registers => Registers::FIELD_COUNT * 8,
            Self::PciConfig => 32,
            Self::DevmemPage | Self::ScratchPage => PAGE_PAYLOAD_LEN,
            Self::Trailer | Self::ZeroPages => 16,
        }
    }
}

/// The checksum field of a record with type `ty` and `payload`.
///
/// XXH3 rather than the device's FNV-1a: it runs at memory speed, and the stream is as long as
/// device memory.
pub fn record_checksum(ty: u32, payload: &[u8]) -> u64 {
    let is_page = ty == RecordType::DevmemPage as u32 || ty == RecordType::ScratchPage as u32;
    match (is_page, le_u64(payload, 0), payload.get(8..)) {
        (true, Some(offset), Some(page)) if payload.len() == PAGE_PAYLOAD_LEN => page_checksum(ty, offset, page),
        _ => xxh3_64_with_seed(payload, seed(ty, payload.len())),
    }
}

/// The checksum of a page record (type `ty`) of the page `page` at `offset`.
pub fn page_checksum(ty: u32, offset: u64, page: &[u8]) -> u64 {
    xxh3_64_with_seed(page, seed(ty, PAGE_PAYLOAD_LEN) ^ offset)
}

fn seed(ty: u32, len: usize) -> u64 {
    u64::from(ty) << 32 | u64::from(u32::try_from(len).unwrap_or(u32::MAX))
}

/// The whole-stream checksum: a chain over the record checksums, in order. Each record's
/// checksum already covers its bytes, so the chain covers every byte and the order without
/// hashing the data twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamDigest(u64);

impl StreamDigest {
    /// Adds the next record's checksum.
    pub fn update(&mut self, record_checksum: u64) {
        self.0 = xxh3_64_with_seed(&record_checksum.to_le_bytes(), self.0);
    }

    /// The digest so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// One encoded record: header and payload.
pub fn encode_record(ty: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&record_checksum(ty, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The HEADER payload for format `version` and a device memory of `devmem_size` bytes.
pub fn header_payload(version: u32, devmem_size: u64) -> Vec<u8> {
    let mut p = STREAM_MAGIC.to_vec();
    p.extend_from_slice(&version.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&devmem_size.to_le_bytes());
    p
}

/// The REGISTERS payload.
pub fn registers_payload(r: &Registers) -> Vec<u8> {
    r.fields().iter().flat_map(|(_, v)| v.to_le_bytes()).collect()
}

/// The PCI_CONFIG payload.
pub fn pci_config_payload(c: &PciConfigState) -> Vec<u8> {
    let mut p = u32::from(c.command).to_le_bytes().to_vec();
    p.extend_from_slice(&u32::from(c.interrupt_line).to_le_bytes());
    for bar in c.bars {
        p.extend_from_slice(&bar.to_le_bytes());
    }
    p
}

/// A DEVMEM_PAGE or SCRATCH_PAGE payload: `offset`, then `page` (one page).
pub fn page_payload(offset: u64, page: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PAGE_PAYLOAD_LEN);
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(page);
    p
}

/// Encodes records in stream order, keeping the count and whole-stream checksum the trailer
/// carries.
#[derive(Debug, Clone, Default)]
pub struct StreamWriter {
    hash: StreamDigest,
    records: u64,
}

impl StreamWriter {
    /// Encodes the next record, whose payload is `parts` in order, at the start of `out`;
    /// returns its length, or `None` (writing nothing) if `out` is too small. Encoding in place
    /// means a device memory page is copied once, from device memory to the reply.
    pub fn record_into(&mut self, ty: RecordType, parts: &[&[u8]], out: &mut [u8]) -> Option<usize> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let total = RECORD_HEADER_LEN.checked_add(len)?;
        let rec = out.get_mut(..total)?;
        let (head, payload) = rec.split_at_mut(RECORD_HEADER_LEN);
        let mut at = 0;
        for p in parts {
            payload.get_mut(at..at + p.len())?.copy_from_slice(p);
            at += p.len();
        }
        let sum = record_checksum(ty as u32, payload);
        head.get_mut(0..4)?.copy_from_slice(&(ty as u32).to_le_bytes());
        head.get_mut(4..8)?.copy_from_slice(&u32::try_from(len).ok()?.to_le_bytes());
        head.get_mut(8..16)?.copy_from_slice(&sum.to_le_bytes());
        self.hash.update(sum);
        self.records += 1;
        Some(total)
    }

    /// The record header and offset of the next record, a DEVMEM_PAGE or SCRATCH_PAGE at
    /// `offset` whose page has the checksum `sum` ([`page_checksum`], kept by the caller): the
    /// record is those 24 bytes followed by the page, which the caller sends from where it lies.
    pub fn page_record_head(&mut self, ty: RecordType, offset: u64, sum: u64) -> [u8; PAGE_RECORD_HEAD] {
        let mut head = [0u8; PAGE_RECORD_HEAD];
        head[..4].copy_from_slice(&(ty as u32).to_le_bytes());
        head[4..8].copy_from_slice(&(PAGE_PAYLOAD_LEN as u32).to_le_bytes());
        head[8..16].copy_from_slice(&sum.to_le_bytes());
        head[16..].copy_from_slice(&offset.to_le_bytes());
        self.hash.update(sum);
        self.records += 1;
        head
    }

    /// The next record of the stream, as a new buffer.
    pub fn record(&mut self, ty: RecordType, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; RECORD_HEADER_LEN + payload.len()];
        let n = self.record_into(ty, &[payload], &mut out).unwrap_or(0);
        out.truncate(n);
        out
    }

    /// The TRAILER payload over everything written so far.
    pub fn trailer_payload(&self) -> [u8; 16] {
        let mut p = [0u8; 16];
        p[..8].copy_from_slice(&self.records.to_le_bytes());
        p[8..].copy_from_slice(&self.hash.finish().to_le_bytes());
        p
    }

    /// The TRAILER record over everything written so far.
    pub fn trailer(&self) -> Vec<u8> {
        encode_record(RecordType::Trailer as u32, &self.trailer_payload())
    }
}

/// A decoded record the device applies (HEADER and TRAILER are the decoder's own business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// The BAR0 registers.
    Registers(Registers),
    /// The writable part of configuration space.
    PciConfig(PciConfigState),
    /// A device memory page at `offset` (page-aligned, inside the device memory).
    DevmemPage {
        /// Offset in device memory.
        offset: u64,
        /// The page's bytes.
        data: &'a [u8],
        /// The record's checksum, checked against `data`: its [`page_checksum`].
        checksum: u64,
    },
    /// A shared scratch memory page at `offset` (page-aligned, inside BAR4).
    ScratchPage {
        /// Offset in the scratch memory.
        offset: u64,
        /// The page's bytes.
        data: &'a [u8],
    },
    /// `count` pages of zeros from `offset` (page-aligned, the whole run inside device memory).
    ZeroPages {
        /// Offset in device memory.
        offset: u64,
        /// Number of pages, at least 1.
        count: u64,
    },
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// Decodes a REGISTERS payload; EBADMSG if a value is not one the registers can hold (see
/// the module documentation).
pub fn decode_registers(p: &[u8]) -> Result<Registers, Errno> {
    let v = |i: usize| le_u64(p, i * 8).ok_or(Errno::EBADMSG);
    let narrow = |x: u64| u32::try_from(x).map_err(|_| Errno::EBADMSG);
    let cmd_flags = narrow(v(3)?)?;
    if cmd_flags & !CMD_FLAG_IRQ != 0 {
        return Err(Errno::EBADMSG);
    }
    let bg = BgRegisters {
        ctrl: narrow(v(14)?)?,
        status: BgStatus::from_raw(narrow(v(15)?)?).ok_or(Errno::EBADMSG)?,
        seed: v(16)?,
        addr: v(17)?,
        len: v(18)?,
        writes: v(19)?,
        interval_us: narrow(v(20)?)?,
    };
    let active = matches!(bg.status, BgStatus::Running | BgStatus::Paused);
    if bg.ctrl & !BG_CTRL_ENABLE != 0 || bg.enabled() != active || (bg.enabled() && !bg.window_is_valid()) {
        return Err(Errno::EBADMSG);
    }
    Ok(Registers {
        status: Status::from_raw(narrow(v(0)?)?).ok_or(Errno::EBADMSG)?,
        scratch: v(1)?,
        cmd_op: narrow(v(2)?)?,
        cmd_flags,
        cmd_guest_addr: v(4)?,
        cmd_dev_offset: v(5)?,
        cmd_len: v(6)?,
        cmd_seed: v(7)?,
        cmds_completed: v(8)?,
        cmds_failed: v(9)?,
        bytes_to_guest: v(10)?,
        bytes_from_guest: v(11)?,
        irqs_raised: v(12)?,
        last_checksum: v(13)?,
        bg,
    })
}

/// Decodes a PCI_CONFIG payload for a device memory of `devmem_size` bytes; EBADMSG if a value
/// has bits the guest could not have written (so it is not a state the device can be in).
pub fn decode_pci_config(p: &[u8], devmem_size: u64) -> Result<PciConfigState, Errno> {
    let command = u16::try_from(le_u32(p, 0).ok_or(Errno::EBADMSG)?).map_err(|_| Errno::EBADMSG)?;
    let interrupt_line = u8::try_from(le_u32(p, 4).ok_or(Errno::EBADMSG)?).map_err(|_| Errno::EBADMSG)?;
    let bar_bytes = p.get(8..32).ok_or(Errno::EBADMSG)?;
    let mut bars = [0u32; 6];
    for (i, bar) in bars.iter_mut().enumerate() {
        *bar = le_u32(bar_bytes, i * 4).ok_or(Errno::EBADMSG)?;
    }
    // Replaying the guest writes yields the state only if every value is one it could hold.
    let mut c = PciConfigState::default();
    c.write(devmem_size, 0x04, &command.to_le_bytes());
    c.write(devmem_size, 0x10, bar_bytes);
    c.write(devmem_size, 0x3c, &[interrupt_line]);
    if c.command != command || c.bars != bars || command & !COMMAND_WRITABLE != 0 {
        return Err(Errno::EBADMSG);
    }
    Ok(c)
}

/// Takes a migration stream in pieces and hands out its records, checking everything the
/// format promises (see the module documentation).
#[derive(Debug, Clone)]
pub struct Decoder {
    devmem_size: u64,
    pending: Vec<u8>,
    hash: StreamDigest,
    records: u64,
    seen_header: bool,
    ended: bool,
    problem: Option<Errno>,
}

impl Decoder {
    /// A decoder for a device with `devmem_size` bytes of device memory.
    pub fn new(devmem_size: u64) -> Self {
        Self {
            devmem_size,
            pending: Vec::with_capacity(MAX_RECORD_LEN),
            hash: StreamDigest::default(),
            records: 0,
            seen_header: false,
            ended: false,
            problem: None,
        }
    }

    /// The first problem found, if any.
    pub fn problem(&self) -> Option<Errno> {
        self.problem
    }

    /// Remembers `errno` as the problem unless one was found before.
    pub fn fail(&mut self, errno: Errno) {
        self.problem.get_or_insert(errno);
    }

    /// Whether the stream is complete and valid so far: the trailer arrived and checked out.
    pub fn finish(&self) -> Result<(), Errno> {
        match self.problem {
            Some(e) => Err(e),
            None if !self.ended => Err(Errno::ENODATA),
            None => Ok(()),
        }
    }

    /// Takes the next bytes of the stream, calling `apply` with every complete record; an
    /// error from `apply` becomes the problem. Never fails: problems are remembered.
    pub fn feed(&mut self, mut data: &[u8], mut apply: impl FnMut(Record<'_>) -> Result<(), Errno>) {
        while !data.is_empty() && self.problem.is_none() {
            if self.ended {
                self.fail(Errno::EBADMSG); // bytes after the trailer
                break;
            }
            let want = match self.expected_len() {
                Ok(n) => n,
                Err(e) => {
                    self.fail(e);
                    break;
                }
            };
            let take = want.saturating_sub(self.pending.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            self.pending.extend_from_slice(head);
            data = rest;
            match self.expected_len() {
                Ok(n) if n == self.pending.len() && n > RECORD_HEADER_LEN => {
                    if let Err(e) = self.complete(&mut apply) {
                        self.fail(e);
                    }
                    self.pending.clear();
                }
                Ok(_) => {}
                Err(e) => self.fail(e),
            }
        }
    }

    /// The length the pending record will have: the record header's until it is in, then the
    /// whole record's; EBADMSG for an unknown type or a length that type never has.
    fn expected_len(&self) -> Result<usize, Errno> {
        if self.pending.len() < RECORD_HEADER_LEN {
            return Ok(RECORD_HEADER_LEN);
        }
        let ty = le_u32(&self.pending, 0).and_then(RecordType::from_raw).ok_or(Errno::EBADMSG)?;
        let len = le_u32(&self.pending, 4).ok_or(Errno::EBADMSG)?;
        if usize::try_from(len).ok() != Some(ty.payload_len()) {
            return Err(Errno::EBADMSG);
        }
        Ok(RECORD_HEADER_LEN + ty.payload_len())
    }

    fn complete(&mut self, apply: &mut impl FnMut(Record<'_>) -> Result<(), Errno>) -> Result<(), Errno> {
        let rec = &self.pending;
        let raw_ty = le_u32(rec, 0).ok_or(Errno::EBADMSG)?;
        let ty = RecordType::from_raw(raw_ty).ok_or(Errno::EBADMSG)?;
        let payload = rec.get(RECORD_HEADER_LEN..).ok_or(Errno::EBADMSG)?;
        if le_u64(rec, 8) != Some(record_checksum(raw_ty, payload)) {
            return Err(Errno::EBADMSG);
        }
        if (ty == RecordType::Header) == self.seen_header {
            return Err(Errno::EBADMSG); // the header must come first, and only once
        }
        match ty {
            RecordType::Header => {
                if payload.get(..8) != Some(&STREAM_MAGIC[..]) {
                    return Err(Errno::EBADMSG);
                }
                if le_u32(payload, 8) != Some(FORMAT_VERSION) {
                    return Err(Errno::EPROTO);
                }
                if le_u32(payload, 12) != Some(0) {
                    return Err(Errno::EBADMSG);
                }
                if le_u64(payload, 16) != Some(self.devmem_size) {
                    return Err(Errno::EINVAL);
                }
                self.seen_header = true;
            }
            RecordType::Trailer => {
                if le_u64(payload, 0) != Some(self.records) || le_u64(payload, 8) != Some(self.hash.finish()) {
                    return Err(Errno::EBADMSG);
                }
                self.ended = true;
                return Ok(());
            }
            RecordType::Registers => apply(Record::Registers(decode_registers(payload)?))?,
            RecordType::ZeroPages => {
                let offset = le_u64(payload, 0).ok_or(Errno::EBADMSG)?;
                let count = le_u64(payload, 8).ok_or(Errno::EBADMSG)?;
                let end = count.checked_mul(PAGE_SIZE).and_then(|len| offset.checked_add(len));
                if offset % PAGE_SIZE != 0 || count == 0 || end.is_none_or(|e| e > self.devmem_size) {
                    return Err(Errno::EBADMSG);
                }
                apply(Record::ZeroPages { offset, count })?;
            }
            RecordType::PciConfig => apply(Record::PciConfig(decode_pci_config(payload, self.devmem_size)?))?,
            RecordType::DevmemPage | RecordType::ScratchPage => {
                let offset = le_u64(payload, 0).ok_or(Errno::EBADMSG)?;
                let size = if ty == RecordType::DevmemPage { self.devmem_size } else { SCRATCH_SIZE };
                let data = payload.get(8..).ok_or(Errno::EBADMSG)?;
                if offset % PAGE_SIZE != 0 || offset >= size {
                    return Err(Errno::EBADMSG);
                }
                let checksum = le_u64(rec, 8).ok_or(Errno::EBADMSG)?;
                apply(if ty == RecordType::DevmemPage {
                    Record::DevmemPage { offset, data, checksum }
                } else {
                    Record::ScratchPage { offset, data }
                })?;
            }
        }
        self.hash.update(le_u64(&self.pending, 8).unwrap_or(0));
        self.records += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    const DEVMEM: u64 = 8 * PAGE_SIZE;

    fn small_stream() -> Vec<u8> {
        let mut w = StreamWriter::default();
        let mut s = w.record(RecordType::Header, &header_payload(FORMAT_VERSION, DEVMEM));
        s.extend(w.record(RecordType::DevmemPage, &page_payload(PAGE_SIZE, &[7; PAGE_SIZE as usize])));
        s.extend(w.trailer());
        s
    }

    fn decode(stream: &[u8], chunk: usize) -> (Result<(), Errno>, usize) {
        let mut d = Decoder::new(DEVMEM);
        let mut n = 0;
        for piece in stream.chunks(chunk) {
            d.feed(piece, |_| {
                n += 1;
                Ok(())
            });
        }
        assert!(d.pending.capacity() <= MAX_RECORD_LEN, "the pending buffer stays bounded");
        (d.finish(), n)
    }

    #[test]
    fn a_page_record_sent_from_its_head_and_page_equals_the_encoded_record() {
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7) as u8).collect();
        let (mut a, mut b) = (StreamWriter::default(), StreamWriter::default());
        let whole = a.record(RecordType::DevmemPage, &page_payload(3 * PAGE_SIZE, &page));
        let sum = page_checksum(RecordType::DevmemPage as u32, 3 * PAGE_SIZE, &page);
        let mut split = b.page_record_head(RecordType::DevmemPage, 3 * PAGE_SIZE, sum).to_vec();
        split.extend_from_slice(&page);
        assert_eq!((whole, a.trailer()), (split, b.trailer()));
    }

    #[test]
    fn records_survive_any_split() {
        let s = small_stream();
        for chunk in [1, 3, 16, 17, 4096, s.len()] {
            assert_eq!(decode(&s, chunk), (Ok(()), 1), "chunk {chunk}");
        }
    }

    #[test]
    fn registers_and_config_round_trip() {
        let r =
            Registers { status: Status::DmaFault, cmd_op: 9, cmd_flags: 1, last_checksum: 3, ..Registers::default() };
        assert_eq!(decode_registers(&registers_payload(&r)), Ok(r));
        let c =
            PciConfigState { command: 0x406, bars: [0xfebf_0000, 0, 0xff80_0000, 1, 0x1_0000, 0], interrupt_line: 5 };
        assert_eq!(decode_pci_config(&pci_config_payload(&c), 8 << 20), Ok(c));
        let mut bad = pci_config_payload(&c);
        bad[8] = 1; // a BAR0 size bit
        assert_eq!(decode_pci_config(&bad, 8 << 20), Err(Errno::EBADMSG));
    }

    #[test]
    fn background_registers_round_trip() {
        let bg = BgRegisters {
            ctrl: BG_CTRL_ENABLE,
            status: BgStatus::Paused,
            seed: u64::MAX,
            addr: 0x10_0000,
            len: 0x2000,
            writes: 12_345,
            interval_us: u32::MAX,
        };
        let r = Registers { bg, ..Registers::default() };
        assert_eq!(registers_payload(&r).len(), RecordType::Registers.payload_len());
        assert_eq!(decode_registers(&registers_payload(&r)), Ok(r));
        let faulted = Registers { bg: BgRegisters { ctrl: 0, status: BgStatus::Fault, ..bg }, ..r };
        assert_eq!(decode_registers(&registers_payload(&faulted)), Ok(faulted));
    }

    #[test]
    fn background_registers_no_device_could_hold_are_corruption() {
        let good = BgRegisters { ctrl: 1, status: BgStatus::Running, addr: 0x1000, len: 0x1000, ..Default::default() };
        for (what, bg) in [
            ("enabled but idle", BgRegisters { status: BgStatus::Idle, ..good }),
            ("enabled but faulted", BgRegisters { status: BgStatus::Fault, ..good }),
            ("disabled but paused", BgRegisters { ctrl: 0, status: BgStatus::Paused, ..good }),
            ("an undefined BG_CTRL bit", BgRegisters { ctrl: 3, ..good }),
            ("enabled on an empty window", BgRegisters { len: 0, ..good }),
            ("enabled on an unaligned window", BgRegisters { addr: 0x1004, ..good }),
        ] {
            let p = registers_payload(&Registers { bg, ..Registers::default() });
            assert_eq!(decode_registers(&p), Err(Errno::EBADMSG), "{what}");
        }
        let mut p = registers_payload(&Registers { bg: good, ..Registers::default() });
        p[15 * 8..16 * 8].copy_from_slice(&4u64.to_le_bytes());
        assert_eq!(decode_registers(&p), Err(Errno::EBADMSG), "an unknown BG_STATUS");
        let mut p = registers_payload(&Registers { bg: good, ..Registers::default() });
        p[20 * 8..21 * 8].copy_from_slice(&(1u64 << 32).to_le_bytes());
        assert_eq!(decode_registers(&p), Err(Errno::EBADMSG), "BG_INTERVAL_US above 32 bits");
    }

    fn zero_run_stream(offset: u64, count: u64) -> Vec<u8> {
        let mut w = StreamWriter::default();
        let mut s = w.record(RecordType::Header, &header_payload(FORMAT_VERSION, DEVMEM));
        let run: Vec<u8> = [offset, count].iter().flat_map(|v| v.to_le_bytes()).collect();
        s.extend(w.record(RecordType::ZeroPages, &run));
        s.extend(w.trailer());
        s
    }

    #[test]
    fn a_zero_run_inside_device_memory_decodes_to_its_pages() {
        let mut d = Decoder::new(DEVMEM);
        let mut got = Vec::new();
        d.feed(&zero_run_stream(PAGE_SIZE, 7), |r| {
            got.push(r.clone().into_owned_run());
            Ok(())
        });
        assert_eq!((d.finish(), got), (Ok(()), vec![Some((PAGE_SIZE, 7))]));
    }

    #[test]
    fn an_empty_unaligned_or_overrunning_zero_run_is_corruption() {
        for (offset, count) in [(0, 0), (1, 1), (PAGE_SIZE, 8), (0, u64::MAX), (u64::MAX - 4095, 1)] {
            assert_eq!(decode(&zero_run_stream(offset, count), 5).0, Err(Errno::EBADMSG), "{offset:#x}+{count}");
        }
    }

    impl Record<'_> {
        fn into_owned_run(self) -> Option<(u64, u64)> {
            match self {
                Record::ZeroPages { offset, count } => Some((offset, count)),
                _ => None,
            }
        }
    }

    #[test]
    fn a_huge_length_is_corruption_not_an_allocation() {
        let mut s = small_stream();
        s[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&s, 1).0, Err(Errno::EBADMSG));
    }

    #[test]
    fn a_record_before_the_header_and_bytes_after_the_trailer_are_corruption() {
        let mut w = StreamWriter::default();
        let page = w.record(RecordType::DevmemPage, &page_payload(0, &[0; PAGE_SIZE as usize]));
        assert_eq!(decode(&page, 5).0, Err(Errno::EBADMSG));
        let mut s = small_stream();
        s.push(0);
        assert_eq!(decode(&s, 64).0, Err(Errno::EBADMSG));
        assert_eq!(decode(&small_stream()[..40], 7).0, Err(Errno::ENODATA));
    }
}
