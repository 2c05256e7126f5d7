//! [`StreamWriter`]: the source side of the migration stream.

use std::io::{self, BufWriter, Write};

use xxhash_rust::xxh3::Xxh3;

use super::error::StreamError;
use super::format::{
    DevicePhase, HEADER_LEN, MAX_DEVICE_CHUNK, MAX_PAYLOAD, MAX_RAM_PAGES, PAGE_SIZE, RAM_PAGE_RECORD_LEN,
    RAM_PAGE_ZERO, SECTION_HEAD_LEN, SECTION_TRAILER_LEN, STREAM_MAGIC, STREAM_VERSION, Section, SectionKind,
    chain_digest, clip_reason, head_checksum, head_fields, is_zero_page,
};

/// Capacity of the writer's buffer: a RAM section of 256 pages fits whole, so it goes out in
/// one write (and one wake-up of the reader) rather than sixteen; a device chunk this large
/// bypasses it.
const WRITE_BUFFER: usize = 1 << 20;

/// Writes a migration stream to any byte stream.
///
/// [`new`](Self::new) writes the stream header; every [`write`](Self::write) appends one
/// section, numbered, checksummed and chained into the digest that [`finish`](Self::finish)
/// sends in [`Section::Complete`]. Output is buffered and flushed after the header and at every
/// [`Section::RoundEnd`], [`Section::Complete`] and [`Section::Abort`], so a live destination
/// sees each round as it ends; [`flush`](Self::flush) flushes at any other point.
///
/// A section the format does not allow (too large, a RAM page of the wrong size, device state
/// out of QEMU's order) is refused with [`StreamError::Invalid`] or [`StreamError::TooLarge`]
/// before any of its bytes is written, and the writer stays usable. An I/O error leaves a
/// partial section behind, so after one every call fails with [`StreamError::Closed`]; so it
/// does after Complete or Abort.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: BufWriter<W>,
    sections: u64,
    digest: u64,
    phase: DevicePhase,
    closed: bool,
    /// Bytes of the stream written so far, header included.
    bytes: u64,
}

/// Where a section's payload goes: the output and the running payload checksum.
struct Sink<'a, W: Write> {
    out: &'a mut BufWriter<W>,
    hasher: Xxh3,
}

impl<W: Write> Sink<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream on `inner`: writes the header and flushes it.
    pub fn new(inner: W) -> Result<Self, StreamError> {
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, inner);
        let mut header = [0u8; HEADER_LEN];
        header[0..8].copy_from_slice(&STREAM_MAGIC);
        header[8..12].copy_from_slice(&STREAM_VERSION.to_be_bytes());
        header[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_be_bytes());
        out.write_all(&header)?;
        out.flush()?;
        Ok(Self { out, sections: 0, digest: 0, phase: DevicePhase::Idle, closed: false, bytes: HEADER_LEN as u64 })
    }

    /// Appends `section`.
    ///
    /// A [`Section::Complete`] must carry this writer's [`sections`](Self::sections) and
    /// [`digest`](Self::digest) ([`finish`](Self::finish) fills them in); an abort reason longer
    /// than [`MAX_ABORT_REASON`](super::MAX_ABORT_REASON) is cut.
    pub fn write(&mut self, section: &Section) -> Result<(), StreamError> {
        match section {
            Section::Ram { pages } => self.ram(pages.len(), pages.iter().map(|(addr, data)| (*addr, data.as_slice()))),
            Section::DeviceSetup | Section::DeviceEnd | Section::DeviceInitDataSent => {
                self.emit(section.kind(), 0, |_| Ok(()))
            }
            Section::DeviceData(data) => self.write_device_data(data),
            Section::DeviceConfig(config) => {
                self.emit(SectionKind::DeviceConfig, config.len(), |sink| sink.put(config))
            }
            Section::RoundEnd { round } => self.emit(SectionKind::RoundEnd, 4, |sink| sink.put(&round.to_be_bytes())),
            Section::Complete { sections, digest } => {
                if (*sections, *digest) != (self.sections, self.digest) {
                    return Err(StreamError::Invalid {
                        what: "Complete must carry the writer's section count and digest (use finish)",
                    });
                }
                self.emit(SectionKind::Complete, 16, |sink| {
                    sink.put(&sections.to_be_bytes())?;
                    sink.put(&digest.to_be_bytes())
                })
            }
            Section::Abort { reason } => {
                let reason = clip_reason(reason);
                self.emit(SectionKind::Abort, reason.len(), |sink| sink.put(reason.as_bytes()))
            }
        }
    }

    /// Appends a RAM section of borrowed pages: (page-aligned guest address, [`PAGE_SIZE`]
    /// bytes) each, at most [`MAX_RAM_PAGES`].
    pub fn write_ram(&mut self, pages: &[(u64, &[u8])]) -> Result<(), StreamError> {
        self.ram(pages.len(), pages.iter().copied())
    }

    /// Appends one device data chunk (QEMU's `DEV_DATA_STATE`), at most
    /// [`MAX_DEVICE_CHUNK`] bytes.
    pub fn write_device_data(&mut self, data: &[u8]) -> Result<(), StreamError> {
        self.emit(SectionKind::DeviceData, data.len(), |sink| sink.put(data))
    }

    /// Appends `data` as as many device data chunks as it takes (none for empty data); returns
    /// how many.
    pub fn write_device_data_chunks(&mut self, data: &[u8]) -> Result<u64, StreamError> {
        let mut chunks = 0;
        for chunk in data.chunks(MAX_DEVICE_CHUNK) {
            self.write_device_data(chunk)?;
            chunks += 1;
        }
        Ok(chunks)
    }

    /// Flushes everything written so far to the underlying stream.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        self.out.flush().map_err(|e| self.fail(e))
    }

    /// Ends the stream with [`Section::Complete`], flushes it, and hands back the underlying
    /// stream (drop it, or shut a socket down, so the destination sees the end).
    pub fn finish(mut self) -> Result<W, StreamError> {
        let complete = Section::Complete { sections: self.sections, digest: self.digest };
        self.write(&complete)?;
        self.into_inner()
    }

    /// Ends the stream with [`Section::Abort`], flushes it, and hands back the underlying stream.
    pub fn abort(mut self, reason: &str) -> Result<W, StreamError> {
        self.write(&Section::Abort { reason: reason.to_owned() })?;
        self.into_inner()
    }

    /// Sections written so far (the header is not a section).
    pub fn sections(&self) -> u64 {
        self.sections
    }

    /// The digest over the sections written so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Bytes of the stream written so far (handed to the buffer, not necessarily flushed),
    /// header included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the stream has ended (Complete, Abort, or an I/O error).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        self.out.get_ref()
    }

    /// The underlying stream, for socket options and the like; writing to it directly corrupts
    /// the stream.
    pub fn get_mut(&mut self) -> &mut W {
        self.out.get_mut()
    }

    fn into_inner(self) -> Result<W, StreamError> {
        self.out.into_inner().map_err(|e| StreamError::Io(e.into_error()))
    }

    fn fail(&mut self, error: io::Error) -> StreamError {
        self.closed = true;
        StreamError::Io(error)
    }

    fn ram<'p>(
        &mut self,
        count: usize,
        pages: impl Iterator<Item = (u64, &'p [u8])> + Clone,
    ) -> Result<(), StreamError> {
        if count > MAX_RAM_PAGES {
            let len = 4 + count as u64 * RAM_PAGE_RECORD_LEN as u64;
            return Err(StreamError::TooLarge { len, max: MAX_PAYLOAD as u64 });
        }
        // Which pages are zeros: those go as their address and the zero flag alone.
        let mut zero = [false; MAX_RAM_PAGES];
        let mut len = 4;
        for ((addr, data), zero) in pages.clone().zip(zero.iter_mut()) {
            if data.len() != PAGE_SIZE {
                return Err(StreamError::Invalid { what: "a RAM page is not PAGE_SIZE bytes" });
            }
            if addr % PAGE_SIZE as u64 != 0 {
                return Err(StreamError::Invalid { what: "a RAM page's guest address is not page-aligned" });
            }
            *zero = is_zero_page(data);
            len += if *zero { 8 } else { RAM_PAGE_RECORD_LEN };
        }
        self.emit(SectionKind::Ram, len, |sink| {
            sink.put(&(count as u32).to_be_bytes())?;
            for ((addr, data), zero) in pages.zip(zero) {
                if zero {
                    sink.put(&(addr | RAM_PAGE_ZERO).to_be_bytes())?;
                } else {
                    sink.put(&addr.to_be_bytes())?;
                    sink.put(data)?;
                }
            }
            Ok(())
        })
    }

    /// Checks a section of `kind` with a `len`-byte payload, then writes it: head, payload
    /// (from `body`), payload checksum.
    fn emit(
        &mut self,
        kind: SectionKind,
        len: usize,
        body: impl FnOnce(&mut Sink<'_, W>) -> io::Result<()>,
    ) -> Result<(), StreamError> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        if len > kind.max_payload() {
            return Err(StreamError::TooLarge { len: len as u64, max: kind.max_payload() as u64 });
        }
        let phase = self.phase.advance(kind).map_err(|what| StreamError::Invalid { what })?;

        let fields = head_fields(self.sections, kind.tag(), len as u64);
        let head_sum = head_checksum(&fields);
        let written = (|| {
            self.out.write_all(&fields)?;
            self.out.write_all(&head_sum.to_be_bytes())?;
            let mut sink = Sink { out: &mut self.out, hasher: Xxh3::with_seed(head_sum) };
            body(&mut sink)?;
            let sum = sink.hasher.digest();
            self.out.write_all(&sum.to_be_bytes())?;
            if matches!(kind, SectionKind::RoundEnd | SectionKind::Complete | SectionKind::Abort) {
                self.out.flush()?;
            }
            Ok(sum)
        })();
        let sum = written.map_err(|e| self.fail(e))?;

        self.phase = phase;
        self.digest = chain_digest(self.digest, sum);
        self.sections += 1;
        self.bytes += (SECTION_HEAD_LEN + len + SECTION_TRAILER_LEN) as u64;
        if matches!(kind, SectionKind::Complete | SectionKind::Abort) {
            self.closed = true;
        }
        Ok(())
    }
}
