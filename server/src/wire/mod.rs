//! vfio-user wire format: the message header, command numbers and every payload layout.
//!
//! All integers are in host byte order, as the specification says. Every struct here is
//! `#[repr(C)]` with its padding spelled out and is checked by zerocopy's derives, so a layout
//! mistake is a compile error rather than a silent misread. Parsing is always fallible:
//! [`parse_prefix`] returns [`WireError::Truncated`] rather than reading past a buffer.

mod caps;
mod payload;

pub use caps::{
    Capabilities, DEFAULT_MAX_DATA_XFER_SIZE, DEFAULT_MAX_DMA_MAPS, DEFAULT_MAX_MSG_FDS, DEFAULT_PGSIZES, MigrationCap,
    TwinSocket, VersionError,
};
pub use payload::*;

use std::fmt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the message header in bytes.
pub const HEADER_SIZE: usize = size_of::<Header>();

/// Header flag bits 0-3: the message type.
pub const FLAGS_TYPE_MASK: u32 = 0xf;
/// Message type of a request.
pub const TYPE_COMMAND: u32 = 0;
/// Message type of a reply.
pub const TYPE_REPLY: u32 = 1;
/// The sender wants no reply, not even an error.
pub const FLAG_NO_REPLY: u32 = 0x10;
/// A reply that reports a failure in `error_no`.
pub const FLAG_ERROR: u32 = 0x20;

/// The 16-byte header that starts every message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Header {
    /// Chosen by the sender of a request and echoed in its reply.
    pub msg_id: u16,
    /// Command number ([`Command`]).
    pub cmd: u16,
    /// Size of the whole message, this header included.
    pub msg_size: u32,
    /// Type bits and the NO_REPLY / ERROR flags.
    pub flags: u32,
    /// errno of a failed request, when `flags` has [`FLAG_ERROR`].
    pub error_no: u32,
}

impl Header {
    /// The header of a request.
    pub fn request(msg_id: u16, cmd: Command, payload_len: usize) -> Self {
        Self { msg_id, cmd: cmd as u16, msg_size: msg_size(payload_len), flags: TYPE_COMMAND, error_no: 0 }
    }

    /// The header of a successful reply to `self`.
    pub fn reply(&self, payload_len: usize) -> Self {
        Self { msg_id: self.msg_id, cmd: self.cmd, msg_size: msg_size(payload_len), flags: TYPE_REPLY, error_no: 0 }
    }

    /// The header of an error reply to `self`.
    pub fn error_reply(&self, errno: i32) -> Self {
        Self {
            msg_id: self.msg_id,
            cmd: self.cmd,
            msg_size: msg_size(0),
            flags: TYPE_REPLY | FLAG_ERROR,
            error_no: errno.unsigned_abs(),
        }
    }

    /// The message type (bits 0-3 of `flags`).
    pub fn msg_type(&self) -> u32 {
        self.flags & FLAGS_TYPE_MASK
    }

    /// Whether this is a request (as opposed to a reply).
    pub fn is_request(&self) -> bool {
        self.msg_type() == TYPE_COMMAND
    }

    /// Whether the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// Whether this reply reports an error.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// The command, if its number is one this crate knows.
    pub fn command(&self) -> Option<Command> {
        Command::from_u16(self.cmd)
    }
}

/// `msg_size` for a payload of `payload_len` bytes, saturating rather than wrapping.
fn msg_size(payload_len: usize) -> u32 {
    u32::try_from(payload_len.saturating_add(HEADER_SIZE)).unwrap_or(u32::MAX)
}

/// vfio-user command numbers (the specification's table; 14 is retired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum Command {
    /// Version and capability negotiation.
    Version = 1,
    /// Map guest memory into the server.
    DmaMap = 2,
    /// Unmap guest memory.
    DmaUnmap = 3,
    /// Device flags and the number of regions and IRQs.
    DeviceGetInfo = 4,
    /// One region's size, flags and capabilities.
    DeviceGetRegionInfo = 5,
    /// A region's ioeventfds.
    DeviceGetRegionIoFds = 6,
    /// One IRQ index's count and flags.
    DeviceGetIrqInfo = 7,
    /// Configure, trigger, mask or unmask IRQs.
    DeviceSetIrqs = 8,
    /// Read from a region.
    RegionRead = 9,
    /// Write to a region.
    RegionWrite = 10,
    /// Server-to-client: read guest memory.
    DmaRead = 11,
    /// Server-to-client: write guest memory.
    DmaWrite = 12,
    /// Reset the device.
    DeviceReset = 13,
    /// Several small region writes in one message.
    RegionWriteMulti = 15,
    /// Device features: migration, migration state, dirty-page logging.
    DeviceFeature = 16,
    /// Read migration data.
    MigDataRead = 17,
    /// Write migration data.
    MigDataWrite = 18,
}

impl Command {
    /// Every command, in numeric order.
    pub const ALL: [Command; 17] = [
        Command::Version,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DmaRead,
        Command::DmaWrite,
        Command::DeviceReset,
        Command::RegionWriteMulti,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
    ];

    /// The command with number `n`, if there is one.
    pub fn from_u16(n: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u16 == n)
    }

    /// The specification's name, without the `VFIO_USER_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Command::Version => "VERSION",
            Command::DmaMap => "DMA_MAP",
            Command::DmaUnmap => "DMA_UNMAP",
            Command::DeviceGetInfo => "DEVICE_GET_INFO",
            Command::DeviceGetRegionInfo => "DEVICE_GET_REGION_INFO",
            Command::DeviceGetRegionIoFds => "DEVICE_GET_REGION_IO_FDS",
            Command::DeviceGetIrqInfo => "DEVICE_GET_IRQ_INFO",
            Command::DeviceSetIrqs => "DEVICE_SET_IRQS",
            Command::RegionRead => "REGION_READ",
            Command::RegionWrite => "REGION_WRITE",
            Command::DmaRead => "DMA_READ",
            Command::DmaWrite => "DMA_WRITE",
            Command::DeviceReset => "DEVICE_RESET",
            Command::RegionWriteMulti => "REGION_WRITE_MULTI",
            Command::DeviceFeature => "DEVICE_FEATURE",
            Command::MigDataRead => "MIG_DATA_READ",
            Command::MigDataWrite => "MIG_DATA_WRITE",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A payload that does not hold what its command needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the fixed part of the payload.
    #[error("{what} needs {need} bytes, got {got}")]
    Truncated {
        /// What was being parsed.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
}

/// Parses the fixed-size `T` at the start of `buf`, returning it and the bytes after it.
pub fn parse_prefix<T: FromBytes + KnownLayout + Immutable + Copy>(buf: &[u8]) -> Result<(T, &[u8]), WireError> {
    T::read_from_prefix(buf).map_err(|_| WireError::Truncated {
        what: std::any::type_name::<T>().rsplit("::").next().unwrap_or("payload"),
        need: size_of::<T>(),
        got: buf.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_sixteen_bytes_in_spec_order() {
        let h = Header { msg_id: 0x0201, cmd: 0x0403, msg_size: 0x08070605, flags: 0x0c0b0a09, error_no: 0x100f0e0d };
        assert_eq!(h.as_bytes(), (1u8..=16).collect::<Vec<_>>().as_slice());
    }

    #[test]
    fn error_reply_has_flags_0x21_and_positive_errno() {
        let req = Header::request(7, Command::RegionRead, 16);
        let err = req.error_reply(-22);
        assert_eq!((err.msg_id, err.flags, err.error_no, err.msg_size), (7, 0x21, 22, 16));
    }

    #[test]
    fn every_command_round_trips_its_number() {
        for c in Command::ALL {
            assert_eq!(Command::from_u16(c as u16), Some(c));
        }
        assert_eq!(Command::from_u16(14), None);
        assert_eq!(Command::from_u16(0), None);
        assert_eq!(Command::from_u16(19), None);
    }

    #[test]
    fn truncated_prefix_names_the_struct_and_sizes() {
        let err = parse_prefix::<RegionAccess>(&[0; 5]).unwrap_err();
        assert_eq!(err, WireError::Truncated { what: "RegionAccess", need: 16, got: 5 });
    }
}
