//! What the proxy can do to a message, when, and the record of what it did.

use std::sync::{Mutex, PoisonError};

use vfu_server::wire::{Command, Header};

/// Which way a message travels through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From the client to the server: the client's requests and its replies to DMA_READ /
    /// DMA_WRITE.
    ToServer,
    /// From the server to the client: the server's replies and its DMA_READ / DMA_WRITE
    /// requests.
    ToClient,
}

impl Direction {
    /// Both directions, `ToServer` first.
    pub const BOTH: [Direction; 2] = [Direction::ToServer, Direction::ToClient];

    /// `"to-server"` or `"to-client"`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::ToServer => "to-server",
            Direction::ToClient => "to-client",
        }
    }
}

/// A field of the 16-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderField {
    /// `msg_id` (16 bits).
    MsgId,
    /// `cmd` (16 bits).
    Cmd,
    /// `msg_size` (32 bits).
    MsgSize,
    /// `flags` (32 bits).
    Flags,
    /// `error_no` (32 bits).
    ErrorNo,
}

impl HeaderField {
    /// XORs `xor` into this field of `header`; for the 16-bit fields only the low 16 bits of
    /// `xor` count. Returns whether the field changed.
    pub fn corrupt(self, header: &mut Header, xor: u32) -> bool {
        let low = (xor & 0xffff) as u16;
        match self {
            HeaderField::MsgId => header.msg_id ^= low,
            HeaderField::Cmd => header.cmd ^= low,
            HeaderField::MsgSize => header.msg_size ^= xor,
            HeaderField::Flags => header.flags ^= xor,
            HeaderField::ErrorNo => header.error_no ^= xor,
        }
        match self {
            HeaderField::MsgId | HeaderField::Cmd => low != 0,
            _ => xor != 0,
        }
    }
}

/// What to do to the matching message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FaultAction {
    /// XOR `xor` into one header field and send exactly that header, followed by the original
    /// payload bytes. Corrupting `msg_size` desynchronises the receiver's framing on purpose.
    CorruptHeader {
        /// The field.
        field: HeaderField,
        /// The bits to flip (the low 16 for `msg_id` and `cmd`).
        xor: u32,
    },
    /// XOR `xor` into the payload byte at `offset` (counted after the header). A payload too
    /// short to have that byte is left alone (the fault is recorded as not applied).
    CorruptPayload {
        /// Offset into the payload.
        offset: usize,
        /// The bits to flip.
        xor: u8,
    },
    /// Send the header unchanged (its `msg_size` still announces the whole message) but only
    /// the first `keep` bytes of the message, header included, then close both connections:
    /// what the peer sees when the sender crashes in the middle of a message. `keep` below 16
    /// cuts inside the header; `keep` at or above the message size sends all of it and then
    /// closes.
    Truncate {
        /// Bytes of the message (header included) that are sent.
        keep: usize,
    },
    /// Send the message twice, fds included.
    Duplicate,
    /// Sleep this long before forwarding the message (and so everything after it in the same
    /// direction of the same connection).
    Delay {
        /// Milliseconds.
        millis: u64,
    },
    /// Hold the message and send it right after the next message that is forwarded in the same
    /// direction of the same connection (or when that direction's sender closes).
    Reorder,
    /// Close the message's fds instead of forwarding them.
    DropFds,
    /// Attach one more fd (`/dev/null`, opened read-only) after the message's own.
    AddFd,
    /// Do not forward the message (its fds are closed).
    Drop,
    /// Do not forward the message; close both the client's and the server's connection.
    Disconnect,
}

impl FaultAction {
    /// A short name for reports: `corrupt-header`, `delay`, ...
    pub fn name(&self) -> &'static str {
        match self {
            FaultAction::CorruptHeader { .. } => "corrupt-header",
            FaultAction::CorruptPayload { .. } => "corrupt-payload",
            FaultAction::Truncate { .. } => "truncate",
            FaultAction::Duplicate => "duplicate",
            FaultAction::Delay { .. } => "delay",
            FaultAction::Reorder => "reorder",
            FaultAction::DropFds => "drop-fds",
            FaultAction::AddFd => "add-fd",
            FaultAction::Drop => "drop",
            FaultAction::Disconnect => "disconnect",
        }
    }
}

/// One fault: `action` on the `nth` message going `direction` whose command is `cmd`.
///
/// Occurrences are counted per fault over the proxy's whole life (all connections, in the
/// order the proxy reads them), on the header as it arrived, before any fault changed it. Each
/// fault fires at most once. Several faults may fire on the same message: they apply in the
/// order of the fault list, and of the actions that decide the message's fate the strongest
/// wins (Disconnect, then Truncate, then Drop, then Reorder; Duplicate sends the message twice
/// wherever it goes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyFault {
    /// Which way the message travels.
    pub direction: Direction,
    /// The command number to match (request or reply), any message if `None`. A raw number, so
    /// unknown or corrupted commands can be matched too.
    pub cmd: Option<u16>,
    /// Which occurrence of a matching message, from 1.
    pub nth: u32,
    /// What to do to it.
    pub action: FaultAction,
}

impl ProxyFault {
    /// `action` on the `nth` (from 1) message of command `cmd` going `direction`.
    pub fn on(direction: Direction, cmd: Command, nth: u32, action: FaultAction) -> Self {
        Self { direction, cmd: Some(cmd as u16), nth, action }
    }

    /// `action` on the `nth` (from 1) message of any command going `direction`.
    pub fn any(direction: Direction, nth: u32, action: FaultAction) -> Self {
        Self { direction, cmd: None, nth, action }
    }

    /// Whether a message going `direction` with `header` is one this fault counts.
    pub fn matches(&self, direction: Direction, header: &Header) -> bool {
        self.direction == direction && self.cmd.is_none_or(|c| c == header.cmd)
    }
}

/// A fault that fired: which one, on which message, and whether it changed anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredFault {
    /// Index of the fault in the list given to the proxy.
    pub fault: usize,
    /// The action.
    pub action: FaultAction,
    /// Which way the message was going.
    pub direction: Direction,
    /// The proxy's number for the client connection, from 0 in accept order.
    pub connection: u64,
    /// `msg_id` of the message as it arrived.
    pub msg_id: u16,
    /// `cmd` of the message as it arrived.
    pub cmd: u16,
    /// The message's occurrence among those the fault matches (its `nth`).
    pub ordinal: u32,
    /// Whether the action changed anything (false for DropFds on a message without fds, a
    /// payload corruption past the payload's end, an XOR of 0 or an AddFd whose open failed).
    pub applied: bool,
}

/// The faults and how many matching messages each has seen; shared by every relay thread.
#[derive(Debug)]
pub(crate) struct FaultBook {
    state: Mutex<BookState>,
}

#[derive(Debug)]
struct BookState {
    faults: Vec<ProxyFault>,
    seen: Vec<u32>,
    fired: Vec<FiredFault>,
}

/// A fault that is due on a message; the relay applies it and then records it.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub(crate) fault: usize,
    pub(crate) ordinal: u32,
    pub(crate) action: FaultAction,
}

impl FaultBook {
    pub(crate) fn new(faults: Vec<ProxyFault>) -> Self {
        let seen = vec![0; faults.len()];
        Self { state: Mutex::new(BookState { faults, seen, fired: Vec::new() }) }
    }

    /// Counts a message going `direction` and returns the faults due on it, in list order.
    pub(crate) fn due(&self, direction: Direction, header: &Header) -> Vec<Due> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let BookState { faults, seen, .. } = &mut *s;
        let mut due = Vec::new();
        for (i, (f, n)) in faults.iter().zip(seen.iter_mut()).enumerate() {
            if f.matches(direction, header) {
                *n = n.saturating_add(1);
                if *n == f.nth {
                    due.push(Due { fault: i, ordinal: *n, action: f.action.clone() });
                }
            }
        }
        due
    }

    /// Adds a fault whose count of matching messages starts now; returns its index.
    pub(crate) fn arm(&self, fault: ProxyFault) -> usize {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.faults.push(fault);
        s.seen.push(0);
        s.faults.len() - 1
    }

    pub(crate) fn record(&self, fired: impl IntoIterator<Item = FiredFault>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for f in fired {
            tracing::info!(
                fault = f.fault,
                action = f.action.name(),
                dir = f.direction.name(),
                msg_id = f.msg_id,
                cmd = f.cmd,
                ordinal = f.ordinal,
                applied = f.applied,
                "proxy fault fired"
            );
            s.fired.push(f);
        }
    }

    pub(crate) fn fired(&self) -> Vec<FiredFault> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).fired.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_fires_once_at_its_nth_match() {
        let book = FaultBook::new(vec![
            ProxyFault::on(Direction::ToServer, Command::RegionWrite, 2, FaultAction::Duplicate),
            ProxyFault::any(Direction::ToClient, 1, FaultAction::Drop),
        ]);
        let w = Header::request(1, Command::RegionWrite, 0);
        let r = Header::request(2, Command::RegionRead, 0);
        assert!(book.due(Direction::ToServer, &r).is_empty());
        assert!(book.due(Direction::ToServer, &w).is_empty());
        let due = book.due(Direction::ToServer, &w);
        assert_eq!((due.len(), due[0].fault, due[0].ordinal), (1, 0, 2));
        assert!(book.due(Direction::ToServer, &w).is_empty());
        assert_eq!(book.due(Direction::ToClient, &r).len(), 1);
        assert!(book.due(Direction::ToClient, &r).is_empty());
    }

    #[test]
    fn sixteen_bit_fields_take_the_low_bits_of_the_xor() {
        let mut h = Header::request(1, Command::RegionRead, 0);
        assert!(HeaderField::Cmd.corrupt(&mut h, 0x1_0100));
        assert_eq!(h.cmd, 9 ^ 0x100);
        assert!(!HeaderField::MsgId.corrupt(&mut h, 0x1_0000));
        assert_eq!(h.msg_id, 1);
    }
}
