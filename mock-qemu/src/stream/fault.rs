//! [`FaultyWriter`]: damages a migration stream on its way out, for the harness.

use std::io::{self, Write};

use super::format::{HEADER_LEN, MAX_PAYLOAD, SECTION_HEAD_LEN, SECTION_TRAILER_LEN, be64};

/// One fault to inject into a byte stream. Offsets count the bytes of the stream as the source
/// wrote it, header included, from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFault {
    /// Pass the first `after` bytes, then cut the connection: flush and drop the inner writer
    /// (so the destination sees the end of the stream even while the source lives on) and fail
    /// every later write or flush with [`io::ErrorKind::BrokenPipe`].
    Cut {
        /// Bytes that get through.
        after: u64,
    },
    /// XOR the byte at offset `at` with `xor` (`0xff` inverts it, `0x01` flips its low bit;
    /// `0` changes nothing).
    FlipByte {
        /// Offset of the byte to damage.
        at: u64,
        /// The bits to flip.
        xor: u8,
    },
    /// Once section `index` (counted from 0 after the stream header) has passed whole, send its
    /// bytes a second time. A section longer than the format allows is not repeated.
    DuplicateSection {
        /// The section to repeat.
        index: u64,
    },
}

/// A [`Write`] that passes a migration stream through to `W` and injects one [`StreamFault`].
///
/// Put it under the [`StreamWriter`](super::StreamWriter):
/// `StreamWriter::new(FaultyWriter::new(socket, fault))`. It may accept fewer bytes than
/// offered per call (callers use `write_all`), so that every fault lands at its exact offset.
#[derive(Debug)]
pub struct FaultyWriter<W: Write> {
    inner: Option<W>,
    fault: StreamFault,
    pos: u64,
    fired: bool,
    sections: SectionTracker,
}

impl<W: Write> FaultyWriter<W> {
    /// Wraps `inner`, to inject `fault`. A `Cut { after: 0 }` cuts at once.
    pub fn new(inner: W, fault: StreamFault) -> Self {
        let mut writer = Self { inner: Some(inner), fault, pos: 0, fired: false, sections: SectionTracker::default() };
        if fault == (StreamFault::Cut { after: 0 }) {
            writer.cut();
        }
        writer
    }

    /// The fault this writer injects.
    pub fn fault(&self) -> StreamFault {
        self.fault
    }

    /// Whether the fault has been injected yet.
    pub fn fired(&self) -> bool {
        self.fired
    }

    /// Stream bytes passed through so far (not counting a repeated section).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The inner writer; `None` once a cut dropped it.
    pub fn into_inner(self) -> Option<W> {
        self.inner
    }

    fn cut(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            // The bytes before the cut were sent; whether the last of them arrive is up to the
            // connection, as in a real cut.
            let _ = inner.flush();
        }
        self.fired = true;
    }

    fn broken() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "migration stream cut by fault injection")
    }
}

impl<W: Write> Write for FaultyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(Self::broken());
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let passed = match self.fault {
            StreamFault::Cut { after } => {
                let n = buf.len().min(usize::try_from(after - self.pos).unwrap_or(usize::MAX));
                inner.write_all(&buf[..n])?;
                self.pos += n as u64;
                if self.pos == after {
                    self.cut();
                }
                n
            }
            StreamFault::FlipByte { at, xor } => {
                if self.pos == at {
                    inner.write_all(&[buf[0] ^ xor])?;
                    self.fired = true;
                    self.pos += 1;
                    1
                } else {
                    let n = if self.pos < at {
                        buf.len().min(usize::try_from(at - self.pos).unwrap_or(usize::MAX))
                    } else {
                        buf.len()
                    };
                    inner.write_all(&buf[..n])?;
                    self.pos += n as u64;
                    n
                }
            }
            StreamFault::DuplicateSection { index } => {
                let n = buf.len().min(self.sections.until_boundary());
                inner.write_all(&buf[..n])?;
                self.pos += n as u64;
                if let Some(copy) = self.sections.feed(&buf[..n], index) {
                    inner.write_all(&copy)?;
                    self.fired = true;
                }
                n
            }
        };
        Ok(passed)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(inner) => inner.flush(),
            None => Err(Self::broken()),
        }
    }
}

/// Follows the section boundaries of a stream passing through, and keeps a copy of one section.
#[derive(Debug, Default)]
struct SectionTracker {
    /// Past the stream header.
    in_sections: bool,
    /// Bytes of the current unit (header or section) seen.
    at: usize,
    /// The current section's head, as far as seen.
    head: Vec<u8>,
    /// The current section's whole length, once its head is in.
    len: Option<usize>,
    /// Index of the current section.
    index: u64,
    /// The copy of the section being repeated, while it passes.
    copy: Vec<u8>,
}

impl SectionTracker {
    /// How many bytes may pass before the next point the tracker must see (end of the header,
    /// of a section head, or of a section).
    fn until_boundary(&self) -> usize {
        if !self.in_sections {
            HEADER_LEN - self.at
        } else {
            match self.len {
                None => SECTION_HEAD_LEN - self.at,
                Some(len) => len - self.at,
            }
        }
    }

    /// Notes `bytes` (no more than [`until_boundary`](Self::until_boundary)) passing; returns
    /// the bytes of section `target` when it has just passed whole.
    fn feed(&mut self, bytes: &[u8], target: u64) -> Option<Vec<u8>> {
        self.at += bytes.len();
        if !self.in_sections {
            if self.at == HEADER_LEN {
                self.in_sections = true;
                self.at = 0;
            }
            return None;
        }
        if self.index == target {
            self.copy.extend_from_slice(bytes);
        }
        if self.len.is_none() {
            self.head.extend_from_slice(bytes);
            if self.at == SECTION_HEAD_LEN {
                let payload = be64(&self.head, 16);
                let too_long = payload > MAX_PAYLOAD as u64;
                let payload = if too_long { 0 } else { payload as usize };
                if too_long && self.index == target {
                    // Not a section this format sends: follow a zero-length one, repeat nothing.
                    self.copy = Vec::new();
                }
                self.len = Some(SECTION_HEAD_LEN + payload + SECTION_TRAILER_LEN);
            }
            return None;
        }
        if Some(self.at) != self.len {
            return None;
        }
        let done = self.index;
        self.index += 1;
        self.at = 0;
        self.head.clear();
        self.len = None;
        let copy = std::mem::take(&mut self.copy);
        (done == target && !copy.is_empty()).then_some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `stream` through a [`FaultyWriter`] in pieces of `piece` bytes.
    fn through(stream: &[u8], fault: StreamFault, piece: usize) -> (Vec<u8>, io::Result<()>) {
        let mut out = Vec::new();
        let mut writer = FaultyWriter::new(&mut out, fault);
        let result = stream.chunks(piece).try_for_each(|chunk| writer.write_all(chunk));
        drop(writer);
        (out, result)
    }

    /// A header and three sections with payloads of 0, 5 and 2 bytes (contents arbitrary: the
    /// tracker only reads lengths).
    fn fake_stream() -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
        let mut stream = vec![0xaa; HEADER_LEN];
        let mut ranges = Vec::new();
        for (i, payload) in [0usize, 5, 2].into_iter().enumerate() {
            let start = stream.len();
            let mut head = vec![i as u8; SECTION_HEAD_LEN];
            head[16..24].copy_from_slice(&(payload as u64).to_be_bytes());
            stream.extend_from_slice(&head);
            stream.extend(std::iter::repeat_n(0x10 + i as u8, payload + SECTION_TRAILER_LEN));
            ranges.push(start..stream.len());
        }
        (stream, ranges)
    }

    #[test]
    fn cut_passes_exactly_the_first_bytes_then_breaks() {
        let (stream, _) = fake_stream();
        for piece in [1, 7, 1000] {
            let (out, result) = through(&stream, StreamFault::Cut { after: 20 }, piece);
            assert_eq!(out, &stream[..20]);
            assert_eq!(result.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        }
        let (out, result) = through(&stream, StreamFault::Cut { after: 0 }, 3);
        assert!(out.is_empty());
        assert!(result.is_err());
    }

    #[test]
    fn flip_changes_exactly_one_byte() {
        let (stream, _) = fake_stream();
        for piece in [1, 5, 1000] {
            let (out, result) = through(&stream, StreamFault::FlipByte { at: 17, xor: 0x81 }, piece);
            result.unwrap();
            let mut expected = stream.clone();
            expected[17] ^= 0x81;
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn duplicate_repeats_the_named_section_right_after_it() {
        let (stream, ranges) = fake_stream();
        for (index, range) in ranges.iter().enumerate() {
            for piece in [1, 3, 1000] {
                let (out, result) = through(&stream, StreamFault::DuplicateSection { index: index as u64 }, piece);
                result.unwrap();
                let mut expected = stream[..range.end].to_vec();
                expected.extend_from_slice(&stream[range.clone()]);
                expected.extend_from_slice(&stream[range.end..]);
                assert_eq!(out, expected, "section {index}, pieces of {piece}");
            }
        }
        let (out, _) = through(&stream, StreamFault::DuplicateSection { index: 9 }, 4);
        assert_eq!(out, stream);
    }
}
