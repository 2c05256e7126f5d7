//! [`StreamError`]: everything that can go wrong writing or reading a migration stream.

use std::io;

use super::format::STREAM_VERSION;

/// An error writing or reading a migration stream.
///
/// On the reading side every variant except [`StreamError::Io`] means the stream as received
/// cannot be trusted; the destination must not start a guest from it. [`StreamError::is_damage`]
/// tells the variants that mean the bytes were damaged on the way.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The underlying byte stream failed (other than by ending early, which is
    /// [`StreamError::Truncated`]).
    #[error("migration stream I/O: {0}")]
    Io(#[from] io::Error),
    /// The stream does not start with [`STREAM_MAGIC`](super::STREAM_MAGIC).
    #[error("not a migration stream: magic {got:02x?}")]
    BadMagic {
        /// The eight bytes found instead.
        got: [u8; 8],
    },
    /// The stream is of a format version this code does not read.
    #[error("migration stream version {got}, this build reads version {STREAM_VERSION}")]
    Version {
        /// The version in the stream header.
        got: u32,
    },
    /// A section's head or payload does not match its checksum.
    #[error("checksum mismatch in section {section} (stream offset {offset})")]
    Checksum {
        /// The index of the damaged section (sections count from 0 after the header).
        section: u64,
        /// The stream offset where that section starts.
        offset: u64,
    },
    /// A section carries a sequence number other than its position: a section was repeated,
    /// dropped or reordered.
    #[error("section {got} where section {expected} was due (stream offset {offset})")]
    OutOfSequence {
        /// The index the section should have had.
        expected: u64,
        /// The index it had.
        got: u64,
        /// The stream offset where it starts.
        offset: u64,
    },
    /// The stream ended before [`Section::Complete`](super::Section::Complete).
    #[error("migration stream truncated after {after_sections} sections")]
    Truncated {
        /// How many whole, verified sections were read before the end.
        after_sections: u64,
    },
    /// A length field above the maximum for its section kind; nothing was allocated for it.
    #[error("section length {len} exceeds the maximum {max}")]
    TooLarge {
        /// The length in the stream, or the length a writer was given.
        len: u64,
        /// The maximum for that section kind.
        max: u64,
    },
    /// The bytes are not a well-formed stream: unknown tag, wrong length for a kind, bad
    /// payload, or device-state sections out of QEMU's order.
    #[error("malformed migration stream at offset {offset}: {what}")]
    Malformed {
        /// What is wrong.
        what: &'static str,
        /// The stream offset of the offending field or section.
        offset: u64,
    },
    /// [`Section::Complete`](super::Section::Complete) disagrees with the sections read.
    #[error(
        "stream completion does not match: {sections_sent} sections with digest {digest_sent:#018x} sent, \
         {sections_read} with digest {digest_read:#018x} read"
    )]
    Integrity {
        /// Section count the source put in Complete.
        sections_sent: u64,
        /// Digest the source put in Complete.
        digest_sent: u64,
        /// Sections the reader verified.
        sections_read: u64,
        /// Digest over the sections the reader verified.
        digest_read: u64,
    },
    /// The source aborted the migration.
    #[error("the source aborted the migration: {reason}")]
    Aborted {
        /// The reason the source gave.
        reason: String,
    },
    /// A writer was handed a section it must not send (checked before any byte is written).
    #[error("invalid section: {what}")]
    Invalid {
        /// What is wrong with it.
        what: &'static str,
    },
    /// The stream already ended (Complete, Abort, or an earlier error); nothing more is
    /// written or read.
    #[error("the migration stream has already ended")]
    Closed,
}

impl StreamError {
    /// Whether this error means the bytes were damaged or cut on the way (as opposed to an
    /// abort, a local I/O failure, or misuse of the API).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Self::BadMagic { .. }
                | Self::Version { .. }
                | Self::Checksum { .. }
                | Self::OutOfSequence { .. }
                | Self::Truncated { .. }
                | Self::TooLarge { .. }
                | Self::Malformed { .. }
                | Self::Integrity { .. }
        )
    }
}
