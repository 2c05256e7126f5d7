//! [`StreamReader`]: the destination side of the migration stream.

use std::io::{self, BufReader, Read};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::error::StreamError;
use super::format::{
    DevicePhase, HEADER_LEN, MAX_PAYLOAD, MAX_RAM_PAGES, PAGE_SIZE, RAM_PAGE_ZERO, SECTION_HEAD_LEN, STREAM_MAGIC,
    STREAM_VERSION, Section, SectionKind, be32, be64, chain_digest, head_checksum,
};

/// Capacity of the reader's buffer.
const READ_BUFFER: usize = 64 * 1024;
/// The most payload memory reserved before bytes arrive; the rest grows as they do. Every
/// section kind's payload is bounded by about 1 MiB ([`MAX_PAYLOAD`]) before this applies, so
/// a whole one is reserved at once: growing a 1 MiB device chunk from 64 KiB cost four
/// reallocations and copies.
const INITIAL_PAYLOAD_RESERVE: usize = MAX_PAYLOAD;

/// The bytes of a zero page, which a RAM section names without carrying them.
static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// A verified section as [`StreamReader::read_section_ref`] returns it: the bulk kinds borrow
/// their bytes from the reader's payload buffer, which the next section reuses, so a stream
/// is loaded without allocating or copying per section.
#[derive(Debug)]
pub enum SectionRef<'a> {
    /// [`Section::Ram`]'s pages, (guest address, bytes) each; a zero page's bytes are zeros.
    Ram(Vec<(u64, &'a [u8])>),
    /// [`Section::DeviceData`]'s chunk.
    DeviceData(&'a [u8]),
    /// Any other section, owned (they are small).
    Other(Section),
}

impl SectionRef<'_> {
    /// The owned section.
    pub fn into_owned(self) -> Section {
        match self {
            Self::Ram(pages) => Section::Ram { pages: pages.into_iter().map(|(a, d)| (a, d.to_vec())).collect() },
            Self::DeviceData(data) => Section::DeviceData(data.to_vec()),
            Self::Other(section) => section,
        }
    }
}

/// Reads and verifies a migration stream from any byte stream.
///
/// [`new`](Self::new) checks the header; [`read_section`](Self::read_section) (or the
/// [`Iterator`] impl) returns one verified section at a time. Each section's head is checked
/// before its length is trusted, so a damaged length never makes the reader allocate beyond the
/// kind's maximum or wait for bytes the source never sent; its payload is checked before it is
/// returned; its sequence number must be its position; device state must come in QEMU's order;
/// [`Section::Complete`] is returned only once its count and digest match the sections read.
///
/// [`Section::Abort`] is never returned: it is reported as [`StreamError::Aborted`]. After
/// Complete or any error the stream is over: every later call fails with
/// [`StreamError::Closed`] and the iterator ends. Bytes after Complete are not read.
#[derive(Debug)]
pub struct StreamReader<R: Read> {
    input: BufReader<R>,
    offset: u64,
    sections: u64,
    digest: u64,
    phase: DevicePhase,
    done: bool,
    complete: bool,
    /// The payload of the last section read, kept for the next one.
    payload: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    /// Starts reading a stream from `inner`: reads and checks the header (blocking until it
    /// arrives).
    pub fn new(inner: R) -> Result<Self, StreamError> {
        let mut reader = Self {
            input: BufReader::with_capacity(READ_BUFFER, inner),
            offset: 0,
            sections: 0,
            digest: 0,
            phase: DevicePhase::Idle,
            done: false,
            complete: false,
            payload: Vec::new(),
        };
        let mut header = [0u8; HEADER_LEN];
        reader.fill(&mut header)?;
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&header[0..8]);
        if magic != STREAM_MAGIC {
            return Err(StreamError::BadMagic { got: magic });
        }
        let version = be32(&header, 8);
        if version != STREAM_VERSION {
            return Err(StreamError::Version { got: version });
        }
        if be32(&header, 12) != PAGE_SIZE as u32 {
            return Err(StreamError::Malformed { what: "the stream's page size is not 4096", offset: 12 });
        }
        Ok(reader)
    }

    /// Reads the next section and verifies it. See the type's documentation for what is checked.
    pub fn read_section(&mut self) -> Result<Section, StreamError> {
        let owned = match self.read_section_ref()? {
            // Handed over without a copy; the next section gets a fresh buffer.
            SectionRef::DeviceData(_) => None,
            other => Some(other.into_owned()),
        };
        Ok(owned.unwrap_or_else(|| Section::DeviceData(std::mem::take(&mut self.payload))))
    }

    /// [`read_section`](Self::read_section), the bulk sections borrowed from the reader's
    /// payload buffer ([`SectionRef`]): what a destination loading a long stream uses.
    pub fn read_section_ref(&mut self) -> Result<SectionRef<'_>, StreamError> {
        if self.done {
            return Err(StreamError::Closed);
        }
        // Marked done first: a section that fails, Complete, and an Abort all end the stream
        // (`read_verified` reopens it after any other section).
        self.done = true;
        self.read_verified()
    }

    /// Sections read and verified so far.
    pub fn sections(&self) -> u64 {
        self.sections
    }

    /// Stream bytes consumed so far, header included.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether a verified [`Section::Complete`] has been read: the only state in which the
    /// destination may start the guest.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        self.input.get_ref()
    }

    fn read_verified(&mut self) -> Result<SectionRef<'_>, StreamError> {
        let start = self.offset;
        let damaged = StreamError::Checksum { section: self.sections, offset: start };

        let mut head = [0u8; SECTION_HEAD_LEN];
        self.fill(&mut head)?;
        let head_sum = be64(&head, 24);
        if head_checksum(&head[..24]) != head_sum {
            return Err(damaged);
        }
        let seq = be64(&head, 0);
        if seq != self.sections {
            return Err(StreamError::OutOfSequence { expected: self.sections, got: seq, offset: start });
        }
        let kind = SectionKind::from_tag(be64(&head, 8))
            .ok_or(StreamError::Malformed { what: "unknown section tag", offset: start + 8 })?;
        let len = be64(&head, 16);
        let max = kind.max_payload() as u64;
        if len > max {
            return Err(StreamError::TooLarge { len, max });
        }
        if kind.fixed_payload().is_some_and(|fixed| fixed as u64 != len) {
            return Err(StreamError::Malformed {
                what: "wrong payload length for the section kind",
                offset: start + 16,
            });
        }

        // `len` is at most `max` here, and memory beyond a first reserve grows only as bytes come.
        let len = len as usize;
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        payload.reserve(len.min(INITIAL_PAYLOAD_RESERVE));
        let got = (&mut self.input).take(len as u64).read_to_end(&mut payload).map_err(StreamError::Io)?;
        self.offset += got as u64;
        self.payload = payload;
        if got < len {
            return Err(self.truncated());
        }
        let mut sum = [0u8; 8];
        self.fill(&mut sum)?;
        let sum = u64::from_be_bytes(sum);
        if xxh3_64_with_seed(&self.payload, head_sum) != sum {
            return Err(damaged);
        }

        let payload_at = start + SECTION_HEAD_LEN as u64;
        let section = decode(kind, &self.payload, payload_at)?;
        self.phase = self.phase.advance(kind).map_err(|what| StreamError::Malformed { what, offset: start })?;
        match section {
            SectionRef::Other(Section::Complete { sections, digest })
                if (sections, digest) != (self.sections, self.digest) =>
            {
                Err(StreamError::Integrity {
                    sections_sent: sections,
                    digest_sent: digest,
                    sections_read: self.sections,
                    digest_read: self.digest,
                })
            }
            SectionRef::Other(Section::Abort { reason }) => Err(StreamError::Aborted { reason }),
            section => {
                self.sections += 1;
                self.digest = chain_digest(self.digest, sum);
                self.complete = matches!(section, SectionRef::Other(Section::Complete { .. }));
                self.done = self.complete;
                Ok(section)
            }
        }
    }

    /// Fills `buf` from the stream; the end of the stream is [`StreamError::Truncated`].
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StreamError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.truncated()),
            Err(e) => Err(StreamError::Io(e)),
        }
    }

    fn truncated(&self) -> StreamError {
        StreamError::Truncated { after_sections: self.sections }
    }
}

impl<R: Read> Iterator for StreamReader<R> {
    type Item = Result<Section, StreamError>;

    /// The next verified section; `None` once Complete or an error has been returned.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done { None } else { Some(self.read_section()) }
    }
}

/// The section of `kind` with checksummed `payload` (already within the kind's length bounds),
/// which starts at stream offset `at`.
fn decode(kind: SectionKind, payload: &[u8], at: u64) -> Result<SectionRef<'_>, StreamError> {
    let malformed = |what| StreamError::Malformed { what, offset: at };
    Ok(SectionRef::Other(match kind {
        SectionKind::Ram => {
            if payload.len() < 4 {
                return Err(malformed("RAM section shorter than its page count"));
            }
            let count = be32(payload, 0) as usize;
            if count > MAX_RAM_PAGES {
                return Err(malformed("RAM section length does not match its page count"));
            }
            let mut pages = Vec::with_capacity(count);
            let mut at = 4;
            for _ in 0..count {
                let word = payload.get(at..at + 8).map(|w| be64(w, 0));
                let Some(word) = word else {
                    return Err(malformed("RAM section length does not match its page count"));
                };
                let addr = word & !RAM_PAGE_ZERO;
                if !addr.is_multiple_of(PAGE_SIZE as u64) {
                    return Err(malformed("RAM page address is not page-aligned"));
                }
                at += 8;
                if word & RAM_PAGE_ZERO != 0 {
                    pages.push((addr, &ZERO_PAGE[..]));
                    continue;
                }
                let Some(data) = payload.get(at..at + PAGE_SIZE) else {
                    return Err(malformed("RAM section length does not match its page count"));
                };
                pages.push((addr, data));
                at += PAGE_SIZE;
            }
            if at != payload.len() {
                return Err(malformed("RAM section length does not match its page count"));
            }
            return Ok(SectionRef::Ram(pages));
        }
        SectionKind::DeviceSetup => Section::DeviceSetup,
        SectionKind::DeviceData => return Ok(SectionRef::DeviceData(payload)),
        SectionKind::DeviceConfig => Section::DeviceConfig(payload.to_vec()),
        SectionKind::DeviceEnd => Section::DeviceEnd,
        SectionKind::DeviceInitDataSent => Section::DeviceInitDataSent,
        SectionKind::RoundEnd => Section::RoundEnd { round: be32(payload, 0) },
        SectionKind::Complete => Section::Complete { sections: be64(payload, 0), digest: be64(payload, 8) },
        SectionKind::Abort => Section::Abort {
            reason: String::from_utf8(payload.to_vec()).map_err(|_| malformed("abort reason is not UTF-8"))?,
        },
    }))
}
