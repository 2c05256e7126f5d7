//! One message as the model sees it, handed over by the tap that saw it whole.
//!
//! The tap sees what the client sent and received, so the model judges exactly the
//! conversation the server took part in. Data payloads can be megabytes; only the bytes a
//! prediction needs are kept (the whole payload for DEVICE_FEATURE, whose report bitmaps are
//! judged bit by bit, and VERSION, whose capabilities bound later requests; the fixed part for
//! the rest), and the length.

use vfu_server::wire::{
    Command, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_GET,
    FEATURE_MASK, FEATURE_MIG_DEVICE_STATE, FEATURE_MIGRATION, FEATURE_PROBE, FEATURE_SET, FLAG_ERROR, FLAG_NO_REPLY,
    FLAGS_TYPE_MASK, TYPE_COMMAND, TYPE_REPLY,
};

/// Bytes of a payload decoded for commands whose data the model does not read.
const HEAD_BYTES: usize = 64;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

/// A message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Direction.
    pub dir: Dir,
    /// The header's msg_id.
    pub msg_id: u16,
    /// The header's command number.
    pub cmd: u16,
    /// The header's msg_size.
    pub size: u32,
    /// The header's flags.
    pub flags: u32,
    /// The header's error_no.
    pub error_no: u32,
    /// File descriptors that travelled with it.
    pub nfds: u32,
    /// The payload, or its first bytes (see [`Msg::payload_len`]).
    pub payload: Vec<u8>,
    /// The whole payload's length.
    pub payload_len: usize,
}

impl Msg {
    /// A message seen whole, its payload in the pieces it travelled in: the whole payload is
    /// kept for DEVICE_FEATURE and VERSION, its first 64 bytes for the rest.
    pub fn new(dir: Dir, header: &vfu_server::wire::Header, payload: &[&[u8]], nfds: usize) -> Msg {
        let whole = [Command::DeviceFeature as u16, Command::Version as u16];
        let payload_len: usize = payload.iter().map(|p| p.len()).sum();
        let limit = if whole.contains(&header.cmd) { payload_len } else { payload_len.min(HEAD_BYTES) };
        let mut kept = Vec::with_capacity(limit);
        for piece in payload {
            let room = limit - kept.len();
            kept.extend_from_slice(piece.get(..room).unwrap_or(piece));
        }
        Msg {
            dir,
            msg_id: header.msg_id,
            cmd: header.cmd,
            size: header.msg_size,
            flags: header.flags,
            error_no: header.error_no,
            nfds: u32::try_from(nfds).unwrap_or(u32::MAX),
            payload: kept,
            payload_len,
        }
    }

    /// A request (of either side).
    pub fn is_request(&self) -> bool {
        self.flags & FLAGS_TYPE_MASK == TYPE_COMMAND
    }

    /// A reply (of either side).
    pub fn is_reply(&self) -> bool {
        self.flags & FLAGS_TYPE_MASK == TYPE_REPLY
    }

    /// A request that must not be answered.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// The errno of an error reply.
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        (self.flags & FLAG_ERROR != 0).then(|| nix::errno::Errno::from_raw(self.error_no as i32))
    }

    /// A little-endian integer of the payload at `at`, if the decoded bytes hold it.
    pub fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.payload.get(at..at + 4)?.try_into().ok()?))
    }

    /// A little-endian 64-bit integer of the payload at `at`.
    pub fn u64_at(&self, at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.payload.get(at..at + 8)?.try_into().ok()?))
    }
}

/// The name of a request's operation in the coverage matrix: the command, and for
/// DEVICE_FEATURE the feature and its op (`FEATURE SET MIG_DEVICE_STATE`).
pub fn op_name(cmd: u16, feature_flags: Option<u32>) -> String {
    match Command::from_u16(cmd) {
        Some(Command::DeviceFeature) => {
            let Some(flags) = feature_flags else { return "DEVICE_FEATURE".into() };
            let feature = match flags & FEATURE_MASK {
                FEATURE_MIGRATION => "MIGRATION",
                FEATURE_MIG_DEVICE_STATE => "MIG_DEVICE_STATE",
                FEATURE_DMA_LOGGING_START => "DMA_LOGGING_START",
                FEATURE_DMA_LOGGING_STOP => "DMA_LOGGING_STOP",
                FEATURE_DMA_LOGGING_REPORT => "DMA_LOGGING_REPORT",
                _ => "UNKNOWN",
            };
            let op = match flags & !FEATURE_MASK {
                f if f & FEATURE_PROBE != 0 => "PROBE",
                FEATURE_GET => "GET",
                FEATURE_SET => "SET",
                _ => "BAD-OP",
            };
            format!("FEATURE {op} {feature}")
        }
        Some(c) => c.name().into(),
        None => "UNKNOWN".into(),
    }
}

/// Whether a request of command `cmd` may carry fds: DMA_MAP (its region's) and
/// DEVICE_SET_IRQS (eventfds).
pub fn takes_fds(cmd: u16) -> bool {
    cmd == Command::DmaMap as u16 || cmd == Command::DeviceSetIrqs as u16
}

#[cfg(test)]
mod tests {
    use vfu_server::wire::Header;

    use super::*;

    fn header(cmd: u16, flags: u32) -> Header {
        Header { msg_id: 7, cmd, msg_size: 0, flags, error_no: 0 }
    }

    #[test]
    fn a_feature_payload_is_kept_whole_across_its_pieces() {
        let m = Msg::new(Dir::ToServer, &header(16, 0), &[&[0x10, 0, 0, 0], &[2, 0, 2, 0], &[]], 1);
        assert_eq!((m.dir, m.msg_id, m.cmd, m.nfds, m.payload_len), (Dir::ToServer, 7, 16, 1, 8));
        assert_eq!(m.u32_at(4), Some(0x20002));
        assert_eq!(op_name(m.cmd, m.u32_at(4)), "FEATURE SET MIG_DEVICE_STATE");
        let bitmap = vec![0xff; 5000];
        assert_eq!(Msg::new(Dir::ToClient, &header(16, 1), &[&bitmap[..10], &bitmap[10..]], 0).payload, bitmap);
    }

    #[test]
    fn a_long_data_payload_keeps_its_head_and_its_length() {
        let data = vec![0xab; 5000];
        let m = Msg::new(Dir::ToClient, &header(17, 1), &[&data[..16], &data[16..]], 0);
        assert_eq!((m.payload.len(), m.payload_len), (HEAD_BYTES, 5000));
        assert!(m.is_reply());
    }
}
