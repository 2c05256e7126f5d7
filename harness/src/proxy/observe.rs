//! What a proxy shows an observer: each connection as it starts and ends, and every message as
//! it arrives, before it is forwarded. `miglab tap` is a proxy without faults and with an
//! observer that records, prints and judges the conversation; the relay itself stays one.

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vfu_server::codec::Malformed;
use vfu_server::wire::Header;

use super::Direction;

/// How one direction of a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectionEnd {
    /// Its sender closed the connection between messages.
    Closed,
    /// Reading from its sender failed (a message cut off by a close included).
    ReadFailed(String),
    /// Forwarding to its receiver failed.
    ForwardFailed(String),
    /// A fault closed the connection.
    Faulted,
}

impl fmt::Display for DirectionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectionEnd::Closed => f.write_str("closed"),
            DirectionEnd::ReadFailed(why) => write!(f, "reading failed: {why}"),
            DirectionEnd::ForwardFailed(why) => write!(f, "forwarding failed: {why}"),
            DirectionEnd::Faulted => f.write_str("closed by a fault"),
        }
    }
}

/// Sees what a proxy relays. Every method has an empty default; they are called from the
/// proxy's threads (one accept thread, two relay threads per connection), so an observer
/// serialises what it needs to. Connections are numbered from 0 in the order they were
/// accepted. For one connection, `connected` comes first and `disconnected` last; the
/// messages of one direction come in order, each before it is forwarded, so a request is
/// always seen before its reply.
pub trait Observer: Send + Sync {
    /// A client connected and the proxy reached the server for it; `server` is the proxy's
    /// socket to the server (to ask who serves it).
    fn connected(&self, _connection: u64, _server: &UnixStream) {}

    /// A client connected but the server could not be reached; the client is closed.
    fn unreachable(&self, _connection: u64, _error: &io::Error) {}

    /// A message arrived from the sender of `dir`, with `nfds` fds; faults are applied after.
    fn message(&self, _connection: u64, _dir: Direction, _header: &Header, _payload: &[u8], _nfds: usize) {}

    /// A message the codec reported as malformed arrived (it is relayed as the module says).
    fn malformed(&self, _connection: u64, _dir: Direction, _header: &Header, _reason: Malformed) {}

    /// Direction `dir` ended.
    fn direction_ended(&self, _connection: u64, _dir: Direction, _end: &DirectionEnd) {}

    /// Both directions ended: the connection is over.
    fn disconnected(&self, _connection: u64) {}
}

/// The observer of a proxy, if any.
#[derive(Clone, Default)]
pub(crate) struct Watch(pub(crate) Option<Arc<dyn Observer>>);

impl Watch {
    /// Runs `f` on the observer, if there is one.
    pub(crate) fn with(&self, f: impl FnOnce(&dyn Observer)) {
        if let Some(o) = &self.0 {
            f(o.as_ref());
        }
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Watch(observer)" } else { "Watch(none)" })
    }
}
