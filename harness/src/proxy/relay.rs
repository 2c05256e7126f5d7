//! One direction of one proxied connection: read whole messages, apply the faults due, send.

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use vfu_server::codec::{CodecError, Connection, Malformed};
use vfu_server::wire::{HEADER_SIZE, Header};

use super::fault::{Direction, FaultAction, FaultBook, FiredFault};
use super::observe::{DirectionEnd, Watch};

/// Counters of one direction.
#[derive(Debug, Default)]
pub(crate) struct DirCounters {
    pub(crate) received: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) malformed: AtomicU64,
}

/// What every relay thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) book: FaultBook,
    pub(crate) to_server: DirCounters,
    pub(crate) to_client: DirCounters,
    pub(crate) max_msg_size: usize,
    pub(crate) watch: Watch,
    /// Where the msg_ids of messages that will never be answered go (see
    /// [`super::ProxyHandle::unanswered`]).
    pub(crate) unanswered: std::sync::Mutex<Option<OwnedFd>>,
    /// Requests whose command a fault changed, `(msg_id, new command)`: the client drops
    /// their replies, which name another command than it asked.
    pub(crate) renamed: std::sync::Mutex<Vec<(u16, u16)>>,
}

impl Shared {
    pub(crate) fn counters(&self, dir: Direction) -> &DirCounters {
        match dir {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }
}

/// Both sockets of one proxied connection, for closing them, and how many of its two
/// directions ended.
#[derive(Debug)]
pub(crate) struct Ends {
    pub(crate) client: UnixStream,
    pub(crate) server: UnixStream,
    ended: AtomicU8,
}

impl Ends {
    pub(crate) fn new(client: UnixStream, server: UnixStream) -> Self {
        Self { client, server, ended: AtomicU8::new(0) }
    }

    /// Shuts both sockets down both ways: the peers see EOF, blocked relay threads wake up.
    pub(crate) fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

/// A message on its way out.
struct Outgoing {
    header: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
    copies: u32,
}

/// Why a pump stops.
enum Stop {
    /// A fault closed the connection.
    Closed,
    /// The destination failed.
    Send(io::Error),
    /// The source failed (or closed mid-message): handled as a close.
    Read(io::Error),
}

/// Zeros streamed in place of payload bytes the codec skipped.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Relays one direction until its source closes, a send fails or a fault closes the connection.
pub(crate) struct Pump {
    pub(crate) dir: Direction,
    pub(crate) connection: u64,
    pub(crate) src: Connection,
    pub(crate) dst: Connection,
    pub(crate) ends: Arc<Ends>,
    pub(crate) shared: Arc<Shared>,
    /// Whether a message this pump forwarded announced another `msg_size` than the bytes it
    /// carried: the receiver's framing of this connection is lost from then on, so no later
    /// request can be answered as itself.
    pub(crate) misframed: bool,
}

impl Pump {
    pub(crate) fn run(mut self) {
        let mut held: Vec<Outgoing> = Vec::new();
        let end = loop {
            match self.src.recv() {
                Ok(m) => {
                    let (dir, connection) = (self.dir, self.connection);
                    self.shared.watch.with(|o| o.message(connection, dir, &m.header, &m.payload, m.fds.len()));
                    if let Err(stop) = self.relay(m.header, m.payload, m.fds, &mut held) {
                        break Some(stop);
                    }
                }
                Err(CodecError::Closed) => break None,
                Err(CodecError::Malformed { header, reason }) => {
                    self.shared.watch.with(|o| o.malformed(self.connection, self.dir, &header, reason));
                    if let Err(e) = self.relay_malformed(header, reason) {
                        break Some(Stop::Send(e));
                    }
                }
                Err(CodecError::Io(e)) => {
                    tracing::debug!(dir = self.dir.name(), error = %e, "proxy: reading failed");
                    break Some(Stop::Read(e));
                }
            }
        };
        let seen = match &end {
            None => DirectionEnd::Closed,
            Some(Stop::Closed) => DirectionEnd::Faulted,
            Some(Stop::Read(e)) => DirectionEnd::ReadFailed(e.to_string()),
            Some(Stop::Send(e)) => DirectionEnd::ForwardFailed(e.to_string()),
        };
        match end {
            Some(Stop::Closed) => {}
            Some(Stop::Send(e)) => {
                tracing::debug!(dir = self.dir.name(), error = %e, "proxy: forwarding failed");
                // Nobody takes what the source sends any more: make its writes fail too.
                let _ = self.src.stream().shutdown(Shutdown::Read);
                let _ = self.dst.stream().shutdown(Shutdown::Write);
            }
            None | Some(Stop::Read(_)) => {
                // The sender closed: what is held goes out now, then the receiver sees EOF.
                for h in held.drain(..) {
                    let _ = self.send(&h);
                }
                let _ = self.dst.stream().shutdown(Shutdown::Write);
            }
        }
        let (dir, connection) = (self.dir, self.connection);
        self.shared.watch.with(|o| o.direction_ended(connection, dir, &seen));
        if self.ends.ended.fetch_add(1, Ordering::AcqRel) == 1 {
            self.shared.watch.with(|o| o.disconnected(connection));
        }
    }

    fn relay(
        &mut self,
        header: Header,
        payload: Vec<u8>,
        fds: Vec<OwnedFd>,
        held: &mut Vec<Outgoing>,
    ) -> Result<(), Stop> {
        let counters = self.shared.counters(self.dir);
        counters.received.fetch_add(1, Ordering::Relaxed);
        let due = self.shared.book.due(self.dir, &header);
        let mut out = Outgoing { header, payload, fds, copies: 1 };
        let sent = header;
        let (mut delay, mut hold, mut drop, mut truncate, mut disconnect) = (0u64, false, false, None, false);
        let mut fired = Vec::with_capacity(due.len());
        for d in due {
            let applied = match &d.action {
                FaultAction::CorruptHeader { field, xor } => field.corrupt(&mut out.header, *xor),
                FaultAction::CorruptPayload { offset, xor } => match out.payload.get_mut(*offset) {
                    Some(b) => {
                        *b ^= *xor;
                        *xor != 0
                    }
                    None => false,
                },
                FaultAction::Truncate { keep } => {
                    truncate = Some(truncate.map_or(*keep, |k: usize| k.min(*keep)));
                    true
                }
                FaultAction::Duplicate => {
                    out.copies += 1;
                    true
                }
                FaultAction::Delay { millis } => {
                    delay = delay.saturating_add(*millis);
                    true
                }
                FaultAction::Reorder => {
                    hold = true;
                    true
                }
                FaultAction::DropFds => !std::mem::take(&mut out.fds).is_empty(),
                FaultAction::AddFd => match std::fs::File::open("/dev/null") {
                    Ok(f) => {
                        out.fds.push(f.into());
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy: opening /dev/null for AddFd failed");
                        false
                    }
                },
                FaultAction::Drop => {
                    drop = true;
                    true
                }
                FaultAction::Disconnect => {
                    disconnect = true;
                    true
                }
            };
            fired.push(FiredFault {
                fault: d.fault,
                action: d.action,
                direction: self.dir,
                connection: self.connection,
                msg_id: header.msg_id,
                cmd: header.cmd,
                ordinal: d.ordinal,
                applied,
            });
        }
        // Recorded before acting, so whoever sees the effect also finds the record.
        if !fired.is_empty() {
            self.shared.book.record(fired);
        }
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if disconnect {
            self.ends.close();
            return Err(Stop::Closed);
        }
        // Told before the message goes: the client must not start reading a reply it will
        // never have whole.
        if truncate.is_none() && self.unanswered(&sent, &out.header, drop || hold) {
            self.tell_unanswered(sent.msg_id);
        }
        // The receiver takes `msg_size` bytes (a header alone when that is below 16).
        let takes = (out.header.msg_size as usize).max(HEADER_SIZE);
        self.misframed |= truncate.is_none() && !drop && takes != HEADER_SIZE + out.payload.len();
        if let Some(keep) = truncate {
            if let Err(e) = self.counted(|| self.send_prefix(&out, keep)) {
                tracing::debug!(dir = self.dir.name(), error = %e, "proxy: sending a truncated message failed");
            }
            self.ends.close();
            return Err(Stop::Closed);
        }
        if drop {
            return Ok(());
        }
        if hold {
            held.push(out);
            return Ok(());
        }
        self.send(&out).map_err(Stop::Send)?;
        for h in held.drain(..) {
            self.send(&h).map_err(Stop::Send)?;
        }
        Ok(())
    }

    /// Whether the faults that made `out` of the message `sent` leave the request it is, or
    /// answers, without a reply the client takes: by the protocol's rules, not by waiting. A
    /// dropped or held message (`lost`: the client sends nothing more while it waits); a
    /// request the server must wait for more bytes of, turned into NO_REPLY, or sent after
    /// the server's framing was lost; a reply the client must wait for more bytes of, given
    /// another command or type, or that answers a request whose command was changed.
    /// A truncated message is not among them: the proxy closes the connection then.
    fn unanswered(&self, sent: &Header, out: &Header, lost: bool) -> bool {
        match self.dir {
            Direction::ToServer if sent.is_request() && !sent.no_reply() => {
                if out.cmd != sent.cmd {
                    let mut renamed = self.shared.renamed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    renamed.retain(|&(id, _)| id != sent.msg_id);
                    renamed.push((sent.msg_id, out.cmd));
                }
                // Once the server's framing is lost, it reads this request's bytes as part of
                // another message: whatever it answers, it is not this request's reply.
                lost || self.misframed || out.msg_size > sent.msg_size || out.no_reply()
            }
            Direction::ToServer => false,
            Direction::ToClient if sent.is_request() => false,
            Direction::ToClient => {
                let mut renamed = self.shared.renamed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let answers_renamed = renamed.contains(&(sent.msg_id, sent.cmd));
                renamed.retain(|&(id, _)| id != sent.msg_id);
                // The client takes a reply only with its request's command, and answers what
                // looks like a request instead. (A reply given another msg_id is not told: the
                // client must drop it while it waits, or it may take it for the next
                // request's, whose msg_id it may have.)
                let misaddressed = out.cmd != sent.cmd || out.is_request();
                lost || out.msg_size > sent.msg_size || answers_renamed || misaddressed
            }
        }
    }

    /// Writes `msg_id` to the pipe of [`super::ProxyHandle::unanswered`], if there is one.
    fn tell_unanswered(&self, msg_id: u16) {
        let pipe = self.shared.unanswered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(fd) = pipe.as_ref() {
            let _ = nix::unistd::write(fd, &msg_id.to_le_bytes());
        }
    }

    /// Sends `out` (`copies` times).
    fn send(&self, out: &Outgoing) -> io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(AsFd::as_fd).collect();
        for _ in 0..out.copies {
            self.counted(|| self.dst.send(&out.header, &[&out.payload], &fds))?;
        }
        Ok(())
    }

    /// Runs `send`, counting the message as forwarded from before it goes (so whoever sees
    /// the effect of the message also sees it counted) unless the send fails.
    fn counted(&self, send: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let forwarded = &self.shared.counters(self.dir).forwarded;
        forwarded.fetch_add(1, Ordering::Relaxed);
        send().inspect_err(|_| {
            forwarded.fetch_sub(1, Ordering::Relaxed);
        })
    }

    /// Sends the first `keep` bytes of `out` (header included), with its fds if any byte goes.
    fn send_prefix(&self, out: &Outgoing, keep: usize) -> io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(AsFd::as_fd).collect();
        if keep >= HEADER_SIZE {
            let body = out.payload.get(..keep - HEADER_SIZE).unwrap_or(&out.payload);
            return self.dst.send(&out.header, &[body], &fds);
        }
        let head = header_bytes(&out.header);
        send_raw(self.dst.stream(), head.get(..keep).unwrap_or_default(), &fds)
    }

    /// Forwards a message the codec reported as malformed so the receiver frames the stream as
    /// the proxy did: the header as it came and, for a message that has a body, that many
    /// bytes (zeros where the codec did not keep them). Its fds were closed by the codec.
    fn relay_malformed(&self, header: Header, reason: Malformed) -> io::Result<()> {
        let counters = self.shared.counters(self.dir);
        counters.received.fetch_add(1, Ordering::Relaxed);
        counters.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(dir = self.dir.name(), ?header, ?reason, "proxy: relaying a malformed message");
        let body = match reason {
            // Only the 16 header bytes were consumed; what follows is read as the next header.
            Malformed::SizeBelowHeader => 0,
            Malformed::TooLarge { .. } | Malformed::TooManyFds { .. } => {
                (header.msg_size as usize).saturating_sub(HEADER_SIZE)
            }
        };
        let mut parts: Vec<&[u8]> = Vec::with_capacity(body.div_ceil(ZEROS.len()));
        let mut left = body;
        while left > 0 {
            let n = left.min(ZEROS.len());
            parts.push(ZEROS.get(..n).unwrap_or_default());
            left -= n;
        }
        self.counted(|| self.dst.send(&header, &parts, &[]))
    }
}

/// The 16 bytes of `h` as they go on the wire (host byte order).
fn header_bytes(h: &Header) -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    let fields: [&[u8]; 5] = [
        &h.msg_id.to_ne_bytes(),
        &h.cmd.to_ne_bytes(),
        &h.msg_size.to_ne_bytes(),
        &h.flags.to_ne_bytes(),
        &h.error_no.to_ne_bytes(),
    ];
    let mut at = 0;
    for f in fields {
        if let Some(dst) = b.get_mut(at..at + f.len()) {
            dst.copy_from_slice(f);
        }
        at += f.len();
    }
    b
}

/// Writes all of `bytes`, with `fds` attached to the first byte.
fn send_raw(stream: &UnixStream, mut bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut first = true;
    while !bytes.is_empty() {
        let iov = [IoSlice::new(bytes)];
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if first && !raw.is_empty() { &rights } else { &[] };
        let n = match sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => other.map_err(io::Error::from)?,
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"));
        }
        first = false;
        bytes = bytes.get(n..).unwrap_or_default();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_are_the_wire_layout() {
        let h = Header { msg_id: 0x0201, cmd: 0x0403, msg_size: 0x08070605, flags: 0x0c0b0a09, error_no: 0x100f0e0d };
        let want: Vec<u8> = (1u8..=16).collect();
        assert_eq!(header_bytes(&h).to_vec(), want);
    }
}
