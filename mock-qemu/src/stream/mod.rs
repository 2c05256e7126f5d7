//! The migration stream between the two mock-qemu sides.
//!
//! The source writes framed, checksummed [`Section`]s with a [`StreamWriter`] to any byte
//! stream ([`transport`]: an in-process pipe, a UNIX socket, TCP on loopback), so the
//! destination may run in another process; the destination reads them with a
//! [`StreamReader`], which verifies every section and reports any damage as a
//! [`StreamError`]. The destination starts the guest only after the reader has returned a
//! verified [`Section::Complete`] ([`StreamReader::is_complete`]); from a cut, corrupted,
//! repeated or aborted stream it never does. The harness damages a stream on purpose with a
//! [`FaultyWriter`] under the writer.
//!
//! ```
//! use mock_qemu::stream::{Section, StreamReader, StreamWriter};
//!
//! let mut writer = StreamWriter::new(Vec::new())?;
//! writer.write(&Section::DeviceSetup)?;
//! writer.write(&Section::DeviceEnd)?;
//! writer.write_ram(&[(0x1000, &[7u8; 4096][..])])?;
//! writer.write(&Section::RoundEnd { round: 0 })?;
//! let bytes = writer.finish()?;
//!
//! let mut reader = StreamReader::new(&bytes[..])?;
//! let sections = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
//! assert_eq!(sections.len(), 5);
//! assert!(reader.is_complete());
//! # Ok::<(), mock_qemu::stream::StreamError>(())
//! ```
//!
//! # Format (version 1)
//!
//! All integers are big-endian, as QEMU's `qemu_put_be64` writes them. The stream is a header,
//! then sections.
//!
//! | offset | bytes | header field | value |
//! |---|---|---|---|
//! | 0 | 8 | magic | [`STREAM_MAGIC`], `"MIGLABMS"` |
//! | 8 | 4 | version | [`STREAM_VERSION`] (2) |
//! | 12 | 4 | page size | [`PAGE_SIZE`] (4096) |
//!
//! Every section is a 32-byte head, the payload, and the payload checksum:
//!
//! | offset | bytes | section field | meaning |
//! |---|---|---|---|
//! | 0 | 8 | seq | the section's index, from 0; must equal its position in the stream |
//! | 8 | 8 | tag | the [`SectionKind`]; device-state kinds use QEMU's `VFIO_MIG_FLAG_*` values |
//! | 16 | 8 | len | payload length, at most the kind's maximum, exact for fixed-size kinds (for device data this is QEMU's be64 size) |
//! | 24 | 8 | head sum | XXH3-64 of bytes 0..24 |
//! | 32 | len | payload | per kind, below |
//! | 32 + len | 8 | sum | XXH3-64 of the payload seeded with the head sum: the section checksum |
//!
//! | tag | kind | payload | max len | QEMU counterpart (hw/vfio/migration.c) |
//! |---|---|---|---|---|
//! | `0x6d69676c61620001` | [`Section::Ram`] | page count u32, then per page: guest address u64 (page-aligned), 4096 bytes; a page of zeros is its address ORed with [`RAM_PAGE_ZERO`] (0x2) alone, as QEMU sends zero pages (`RAM_SAVE_FLAG_ZERO`) | 4 + 256 × 4104 | (QEMU's RAM stream has its own format) |
//! | `0xffffffffef100003` | [`Section::DeviceSetup`] | empty | 0 | `DEV_SETUP_STATE`, from `vfio_save_setup` |
//! | `0xffffffffef100004` | [`Section::DeviceData`] | the chunk | 1 MiB | `DEV_DATA_STATE`, be64 size, data: `vfio_save_block` |
//! | `0xffffffffef100002` | [`Section::DeviceConfig`] | the config state | 1 MiB | `DEV_CONFIG_STATE`, from `vfio_save_device_config_state` |
//! | `0xffffffffef100001` | [`Section::DeviceEnd`] | empty | 0 | `END_OF_STATE` |
//! | `0xffffffffef100005` | [`Section::DeviceInitDataSent`] | empty | 0 | `DEV_INIT_DATA_SENT`, ends a precopy pass instead of `END_OF_STATE` (switchover-ack) |
//! | `0x6d69676c61620002` | [`Section::RoundEnd`] | round u32 | 4 | — |
//! | `0x6d69676c61620003` | [`Section::Complete`] | section count u64, digest u64 | 16 | — |
//! | `0x6d69676c61620004` | [`Section::Abort`] | reason, UTF-8 | 4096 | — |
//!
//! The digest in Complete is the chain `d = XXH3-64(sum as be64, seed d)` over the sums of every
//! section before it, from `d = 0`; the count is the number of those sections.
//!
//! # Order
//!
//! Device state comes in QEMU's order, which writer and reader both enforce:
//!
//! - setup (`vfio_save_setup`): `DeviceSetup DeviceEnd`;
//! - each precopy pass (`vfio_save_iterate`): `DeviceData*` then `DeviceEnd` or
//!   `DeviceInitDataSent` (a bare `DeviceEnd` when the device had nothing to send);
//! - stop-and-copy (`vfio_save_complete_precopy`): `DeviceData*` then `DeviceEnd`;
//! - config (`vfio_save_state`): `DeviceConfig DeviceEnd`.
//!
//! RAM sections may come anywhere before Complete, and an Abort anywhere; a `RoundEnd` or the
//! `Complete` only when no device phase is open. Complete or Abort ends the stream. A typical
//! migration: setup, then rounds of RAM and device data each closed by `RoundEnd`, then
//! stop-and-copy RAM and device data, config, `Complete`.
//!
//! # Damage and what the reader reports
//!
//! QEMU's own stream has no checksums; ours checks each section's head before trusting its
//! length (so a damaged length never makes the destination allocate beyond the kind's maximum or
//! wait for bytes the source never sent), its payload before returning it, its place in the
//! sequence, and the whole at Complete.
//!
//! | damage | reported as |
//! |---|---|
//! | a byte of the header changed | [`StreamError::BadMagic`], [`StreamError::Version`], or [`StreamError::Malformed`] (page size) |
//! | a byte of a section changed (head, payload or sum) | [`StreamError::Checksum`] naming that section's index and offset |
//! | the stream ends before Complete | [`StreamError::Truncated`] with the number of sections verified |
//! | a section repeated, dropped or reordered | [`StreamError::OutOfSequence`], at the first section out of place |
//! | Complete's count or digest wrong | [`StreamError::Integrity`] |
//! | a length above the kind's maximum under a valid head sum (a forged stream) | [`StreamError::TooLarge`] |
//! | an unknown tag, a bad payload, device state out of order | [`StreamError::Malformed`] |
//! | the source gave up | [`StreamError::Aborted`] with its reason |

mod error;
mod fault;
mod format;
mod reader;
pub mod transport;
mod writer;

#[cfg(test)]
mod tests;

pub use error::StreamError;
pub use fault::{FaultyWriter, StreamFault};
pub use format::{
    HEADER_LEN, MAX_ABORT_REASON, MAX_DEVICE_CHUNK, MAX_PAYLOAD, MAX_RAM_PAGES, PAGE_SIZE, RAM_PAGE_RECORD_LEN,
    RAM_PAGE_ZERO, SECTION_HEAD_LEN, SECTION_TRAILER_LEN, STREAM_MAGIC, STREAM_VERSION, Section, SectionKind,
    TAG_ABORT, TAG_COMPLETE, TAG_RAM, TAG_ROUND_END, VFIO_MIG_FLAG_DEV_CONFIG_STATE, VFIO_MIG_FLAG_DEV_DATA_STATE,
    VFIO_MIG_FLAG_DEV_INIT_DATA_SENT, VFIO_MIG_FLAG_DEV_SETUP_STATE, VFIO_MIG_FLAG_END_OF_STATE, is_zero_page,
};
pub use reader::{SectionRef, StreamReader};
pub use transport::{BoxedRead, BoxedWrite, Transport, connected_pair};
pub use writer::StreamWriter;
