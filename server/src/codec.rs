//! Message framing over a UNIX stream socket, with fds (SCM_RIGHTS) in both directions.
//!
//! One codec serves both ends: the server reads requests and writes replies with it, and a
//! client does the opposite. Every length the peer gives is bounded before anything is
//! allocated: a header whose `msg_size` is below 16 or above the connection's limit is
//! reported as [`Malformed`] after its bytes have been skipped (never buffered), so the stream
//! stays in step and the caller can answer with an errno and go on serving.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::cmsg_space;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, send, sendmsg, setsockopt, sockopt};
use zerocopy::{FromBytes, IntoBytes};

use crate::wire::{HEADER_SIZE, Header};

/// Most fds the kernel passes in one message (SCM_MAX_FD); room is always made for this many,
/// so a message with too many fds is detected rather than silently truncated.
pub const SCM_MAX_FDS: usize = 253;

/// One framed message.
#[derive(Debug)]
pub struct Message {
    /// Its header.
    pub header: Header,
    /// The `msg_size - 16` bytes after the header.
    pub payload: Vec<u8>,
    /// Fds that travelled with it.
    pub fds: Vec<OwnedFd>,
}

/// What was wrong with a message that was skipped but kept the stream in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// `msg_size` is smaller than the header itself.
    SizeBelowHeader,
    /// `msg_size` exceeds the connection's limit; the bytes were skipped.
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// More fds than the connection accepts (they were closed).
    TooManyFds {
        /// How many arrived (a lower bound when the kernel truncated them).
        got: usize,
        /// The limit.
        max: usize,
    },
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer closed the connection between messages.
    #[error("peer closed the connection")]
    Closed,
    /// A message was malformed; its bytes were consumed and the stream is still usable.
    #[error("malformed message {header:?}: {reason:?}")]
    Malformed {
        /// Its header as received.
        header: Header,
        /// What was wrong.
        reason: Malformed,
    },
    /// The socket failed, or closed mid-message.
    #[error("socket I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// Bytes read ahead of the message being framed: small messages arrive in one `recvmsg`,
/// header and payload together (several at once when the peer queued several), while a large
/// payload's bulk is read straight into its own buffer.
const READ_AHEAD: usize = 8192;

/// Messages up to this size without fds are copied into one buffer and sent with `send`.
const SMALL_MESSAGE: usize = 512;

/// Parts of a message gathered on the stack for one `sendmsg` (Linux takes up to 1024); a
/// message of more parts is sent by several.
const SEND_PARTS: usize = 256;

/// A vfio-user connection over a UNIX stream socket.
///
/// Reads are buffered (8 KiB at a time), so a caller that polls the socket before
/// [`recv`](Self::recv) must first ask [`has_buffered`](Self::has_buffered): a whole message
/// may already be here. Fds are kept with the stream position they arrived at: the kernel ends
/// a read right after the bytes an fd-carrying send started with, so the fds of a read belong
/// to the message holding its last byte.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    max_msg_size: usize,
    max_fds: usize,
    /// A payload buffer handed back with [`Connection::recycle`], reused by the next `recv` so
    /// a stream of large messages does not allocate (and fault in) fresh memory for each.
    spare: Vec<u8>,
    /// The same for payloads up to [`READ_AHEAD`] bytes, so a small message that is never
    /// handed back does not take the large buffer with it.
    small_spare: Vec<u8>,
    /// Read-ahead: bytes `at..end` of `ahead` are received and not yet framed.
    ahead: Box<[u8]>,
    at: usize,
    end: usize,
    /// Bytes received from the socket so far (the stream position after `ahead[end]`).
    received: u64,
    /// Fds received and not yet handed out, each batch with the stream position of the last
    /// byte of the read it came with, and whether the kernel truncated it.
    fds: Vec<(u64, Vec<OwnedFd>, bool)>,
    /// Room for the control message of one read, made once.
    cmsg: Vec<u8>,
}

/// The send buffer each connection asks for: room for a whole MIG_DATA message of 1 MiB and
/// more. With the default (about 200 KiB) a 1 MiB message goes out in five pieces, each a
/// sleep of the sender and a wake-up of the reader; with this it goes in one. The kernel caps
/// the request at `net.core.wmem_max`.
pub const SEND_BUFFER: usize = 4 << 20;

/// Asks for a [`SEND_BUFFER`]-sized send buffer on the socket `fd`. Best effort: a socket that
/// keeps its default works, only slower.
pub fn enlarge_send_buffer(fd: &impl AsFd) {
    if let Err(e) = setsockopt(fd, sockopt::SndBuf, &SEND_BUFFER) {
        tracing::debug!(error = %e, "SO_SNDBUF refused; the socket keeps its default");
    }
}

impl Connection {
    /// Wraps `stream`, accepting messages of at most `max_msg_size` bytes and `max_fds` fds,
    /// with an [enlarged](enlarge_send_buffer) send buffer.
    pub fn new(stream: UnixStream, max_msg_size: usize, max_fds: usize) -> Self {
        enlarge_send_buffer(&stream);
        Self {
            stream,
            max_msg_size: max_msg_size.max(HEADER_SIZE),
            max_fds: max_fds.min(SCM_MAX_FDS),
            spare: Vec::new(),
            small_spare: Vec::new(),
            ahead: vec![0; READ_AHEAD].into_boxed_slice(),
            at: 0,
            end: 0,
            received: 0,
            fds: Vec::new(),
            cmsg: cmsg_space!([RawFd; SCM_MAX_FDS]),
        }
    }

    /// The underlying socket (for timeouts and shutdown). Reading from it directly would
    /// bypass the bytes already buffered.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Whether bytes already received wait to be framed: then `recv` must not wait for the
    /// socket to become readable first.
    pub fn has_buffered(&self) -> bool {
        self.at < self.end
    }

    /// Changes the largest message accepted.
    pub fn set_max_msg_size(&mut self, max: usize) {
        self.max_msg_size = max.max(HEADER_SIZE);
    }

    /// Changes the most fds accepted with one message.
    pub fn set_max_fds(&mut self, max: usize) {
        self.max_fds = max.min(SCM_MAX_FDS);
    }

    /// The stream position of the next byte to frame.
    fn position(&self) -> u64 {
        self.received - (self.end - self.at) as u64
    }

    /// Reads once into the empty read-ahead buffer; returns how many bytes came (0: EOF).
    fn fill(&mut self) -> io::Result<usize> {
        let mut buf = std::mem::take(&mut self.ahead);
        let got = self.recv_with_fds(&mut buf);
        self.ahead = buf;
        let n = got?;
        (self.at, self.end) = (0, n);
        Ok(n)
    }

    /// Copies buffered bytes into `out`; returns how many.
    fn take_buffered(&mut self, out: &mut [u8]) -> usize {
        let src = self.ahead.get(self.at..self.end).unwrap_or_default();
        let k = src.len().min(out.len());
        if let (Some(d), Some(s)) = (out.get_mut(..k), src.get(..k)) {
            d.copy_from_slice(s);
        }
        self.at += k;
        k
    }

    /// Fills `out` from the stream: buffered bytes first, then a large rest straight from the
    /// socket and a small one through the read-ahead buffer. `what` names the place an EOF
    /// would cut.
    fn read_into(&mut self, out: &mut [u8], what: &str) -> io::Result<()> {
        let mut filled = self.take_buffered(out);
        while filled < out.len() {
            let rest = out.get_mut(filled..).unwrap_or_default();
            let n = if rest.len() >= READ_AHEAD / 2 {
                self.recv_with_fds(rest)?
            } else {
                let n = self.fill()?;
                self.take_buffered(rest);
                n.min(rest.len())
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("connection closed inside {what}")));
            }
            filled += n;
        }
        Ok(())
    }

    /// The fds of the message whose bytes end before stream position `end`: every batch that
    /// arrived with one of its bytes. The flag says whether the kernel truncated any.
    fn claim_fds(&mut self, end: u64) -> (Vec<OwnedFd>, bool) {
        let n = self.fds.iter().take_while(|(at, _, _)| *at < end).count();
        let mut out = Vec::new();
        let mut truncated = false;
        for (_, fds, cut) in self.fds.drain(..n) {
            out.extend(fds);
            truncated |= cut;
        }
        (out, truncated)
    }

    /// Reads one whole message.
    pub fn recv(&mut self) -> Result<Message, CodecError> {
        let mut head = [0u8; HEADER_SIZE];
        if !self.has_buffered() && self.fill()? == 0 {
            return Err(CodecError::Closed);
        }
        let start = self.position();
        self.read_into(&mut head, "a header")?;
        let header = Header::read_from_bytes(&head).map_err(|_| io::Error::other("header size"))?;
        let len = match payload_len(&header, self.max_msg_size) {
            Ok(len) => len,
            Err(reason) => {
                if let Malformed::TooLarge { .. } = reason {
                    self.skip(header.msg_size as usize - HEADER_SIZE)?;
                }
                // Fds that came with the skipped bytes are closed here.
                drop(self.claim_fds(self.position()));
                return Err(CodecError::Malformed { header, reason });
            }
        };
        // A recycled buffer is not zeroed first: every byte is overwritten by the read below.
        let spare = if len <= READ_AHEAD { &mut self.small_spare } else { &mut self.spare };
        let mut payload = std::mem::take(spare);
        payload.resize(len, 0);
        self.read_into(&mut payload, "a message")?;
        let (fds, truncated) = self.claim_fds(start + (HEADER_SIZE + len) as u64);
        if truncated || fds.len() > self.max_fds {
            return Err(CodecError::Malformed {
                header,
                reason: Malformed::TooManyFds { got: fds.len(), max: self.max_fds },
            });
        }
        Ok(Message { header, payload, fds })
    }

    /// Gives a message's payload buffer back for the next `recv` to reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        let spare = if buf.capacity() <= READ_AHEAD { &mut self.small_spare } else { &mut self.spare };
        if buf.capacity() > spare.capacity() {
            *spare = buf;
        }
    }

    /// Reads and discards `len` bytes without keeping them.
    fn skip(&mut self, mut len: usize) -> io::Result<()> {
        while len > 0 {
            if !self.has_buffered() && self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a message"));
            }
            let k = (self.end - self.at).min(len);
            self.at += k;
            len -= k;
        }
        Ok(())
    }

    /// One `recvmsg`, keeping any fds that come with it.
    fn recv_with_fds(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut iov = [IoSliceMut::new(buf)];
        let cmsg = &mut self.cmsg;
        let msg = loop {
            match recvmsg::<()>(self.stream.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(io::Error::from)?,
            }
        };
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel has just installed `fd` in this process for us with
                    // SCM_RIGHTS; nothing else owns it, so it is ours to close.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let n = msg.bytes;
        self.received += n as u64;
        if !fds.is_empty() || truncated {
            // Attributed to the message holding the last byte of this read.
            self.fds.push((self.received.saturating_sub(1), fds, truncated));
        }
        Ok(n)
    }

    /// Writes one message, all of it, with `fds` attached to its first byte. Its parts are
    /// gathered a few hundred at a time on the stack (nothing is allocated without fds);
    /// however many there are, the peer sees one message.
    pub fn send(&self, header: &Header, payload: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send_parts(header.as_bytes(), payload, fds)
    }

    /// Writes more bytes of a message whose header (announcing them) went with
    /// [`send`](Self::send): a large reply goes out in pieces as it is produced.
    pub fn send_rest(&self, payload: &[&[u8]]) -> io::Result<()> {
        self.send_parts(&[], payload, &[])
    }

    fn send_parts(&self, head: &[u8], payload: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let total = head.len() + payload.iter().map(|p| p.len()).sum::<usize>();
        if fds.is_empty() && total <= SMALL_MESSAGE {
            return self.send_small(head, payload, total);
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let count = payload.len() + 1;
        // The part not yet wholly sent, and how much of it was.
        let (mut idx, mut off) = (0, 0);
        let mut first = true;
        loop {
            while idx < count && off >= part(head, payload, idx).len() {
                (idx, off) = (idx + 1, 0);
            }
            if idx >= count {
                return Ok(());
            }
            let mut iov = [IoSlice::new(&[]); SEND_PARTS];
            let mut n_iov = 0;
            let mut from = off;
            for i in idx..count {
                let p = part(head, payload, i).get(from..).unwrap_or_default();
                from = 0;
                if p.is_empty() {
                    continue;
                }
                let Some(slot) = iov.get_mut(n_iov) else { break };
                *slot = IoSlice::new(p);
                n_iov += 1;
            }
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if first && !raw.is_empty() { &rights } else { &[] };
            let iov = iov.get(..n_iov).unwrap_or_default();
            let mut n = match sendmsg::<()>(self.stream.as_raw_fd(), iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => other.map_err(io::Error::from)?,
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"));
            }
            first = false;
            while n > 0 && idx < count {
                let left = part(head, payload, idx).len() - off;
                if n >= left {
                    (n, idx, off) = (n - left, idx + 1, 0);
                } else {
                    (n, off) = (0, off + n);
                }
            }
        }
    }

    /// A small message without fds, gathered into one stack buffer and sent with `send`,
    /// which costs the kernel less than a `sendmsg` of several parts.
    fn send_small(&self, head: &[u8], payload: &[&[u8]], total: usize) -> io::Result<()> {
        let mut buf = [0u8; SMALL_MESSAGE];
        let mut at = 0;
        for p in std::iter::once(head).chain(payload.iter().copied()) {
            if let Some(dst) = buf.get_mut(at..at + p.len()) {
                dst.copy_from_slice(p);
            }
            at += p.len();
        }
        let mut rest = buf.get(..total).unwrap_or_default();
        while !rest.is_empty() {
            match send(self.stream.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes")),
                Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes, for a peer whose message length is already known.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.read_into(buf, "a message")
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// The payload length `header` announces, bounded before a byte of it is read or allocated:
/// `msg_size` below the header is [`Malformed::SizeBelowHeader`] (nothing follows the header),
/// above `max_msg_size` (taken as at least [`HEADER_SIZE`]) is [`Malformed::TooLarge`] (its
/// `msg_size - 16` bytes are to be skipped). [`Connection::recv`] frames every message with it.
pub fn payload_len(header: &Header, max_msg_size: usize) -> Result<usize, Malformed> {
    let max = max_msg_size.max(HEADER_SIZE);
    let size = header.msg_size as usize;
    if size < HEADER_SIZE {
        Err(Malformed::SizeBelowHeader)
    } else if size > max {
        Err(Malformed::TooLarge { max })
    } else {
        Ok(size - HEADER_SIZE)
    }
}

/// Part `i` of a message: its header, then its payload parts.
fn part<'a>(head: &'a [u8], payload: &[&'a [u8]], i: usize) -> &'a [u8] {
    if i == 0 { head } else { payload.get(i - 1).copied().unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Command;
    use std::io::Write;

    fn pair() -> (Connection, Connection) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::new(a, 4096, 4), Connection::new(b, 4096, 4))
    }

    #[test]
    fn a_connection_asks_for_a_send_buffer_larger_than_the_default() {
        let (a, _b) = UnixStream::pair().unwrap();
        let default = nix::sys::socket::getsockopt(&a, sockopt::SndBuf).unwrap();
        let conn = Connection::new(a, 4096, 4);
        let enlarged = nix::sys::socket::getsockopt(conn.stream(), sockopt::SndBuf).unwrap();
        assert!(enlarged > default, "send buffer {enlarged} bytes, the default {default}");
    }

    #[test]
    fn a_message_and_its_fds_arrive_whole() {
        let (a, mut b) = pair();
        let file = tempfile::tempfile().unwrap();
        let h = Header::request(3, Command::DmaMap, 5);
        a.send(&h, &[b"hel", b"lo"], &[file.as_fd()]).unwrap();
        let m = b.recv().unwrap();
        assert_eq!((m.header, m.payload.as_slice(), m.fds.len()), (h, &b"hello"[..], 1));
    }

    #[test]
    fn a_message_of_more_parts_than_iov_max_arrives_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, mut b) = (Connection::new(a, 1 << 20, 4), Connection::new(b, 1 << 20, 4));
        let data: Vec<u8> = (0..3000 * 5).map(|i| (i % 251) as u8).collect();
        // 3000 parts of 1 to 9 bytes (some empty), so a wrong cut or a dropped part shows.
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = 0;
        for i in 0..3000 {
            let len = [0, 1, 4, 9, 7, 3][i % 6].min(data.len() - at);
            parts.push(&data[at..at + len]);
            at += len;
        }
        let sent: Vec<u8> = parts.concat();
        let file = tempfile::tempfile().unwrap();
        let h = Header::request(7, Command::RegionWrite, sent.len());
        let reader = std::thread::spawn(move || b.recv().unwrap());
        a.send(&h, &parts, &[file.as_fd()]).unwrap();
        let m = reader.join().unwrap();
        assert_eq!((m.header, m.fds.len()), (h, 1));
        assert_eq!(m.payload, sent);
    }

    #[test]
    fn queued_messages_arrive_one_by_one_each_with_its_own_fds() {
        let (a, mut b) = pair();
        let (f1, f2) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        a.send(&Header::request(1, Command::DmaMap, 2), &[b"ab"], &[f1.as_fd()]).unwrap();
        a.send(&Header::request(2, Command::DeviceReset, 0), &[], &[]).unwrap();
        a.send(&Header::request(3, Command::DmaMap, 1), &[b"c"], &[f1.as_fd(), f2.as_fd()]).unwrap();
        a.send(&Header::request(4, Command::RegionRead, 3), &[b"def"], &[]).unwrap();
        let got: Vec<_> = (0..4).map(|_| b.recv().unwrap()).collect();
        let summary: Vec<_> = got.iter().map(|m| (m.header.msg_id, m.payload.clone(), m.fds.len())).collect();
        assert_eq!(summary, [(1, b"ab".to_vec(), 1), (2, vec![], 0), (3, b"c".to_vec(), 2), (4, b"def".to_vec(), 0)]);
        assert!(!b.has_buffered());
    }

    #[test]
    fn a_large_message_after_a_small_one_arrives_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, mut b) = (Connection::new(a, 1 << 20, 4), Connection::new(b, 1 << 20, 4));
        let big: Vec<u8> = (0..300_000).map(|i| (i % 253) as u8).collect();
        let reader = std::thread::spawn(move || (b.recv().unwrap(), b.recv().unwrap()));
        a.send(&Header::request(1, Command::RegionWrite, 1), &[b"x"], &[]).unwrap();
        a.send(&Header::request(2, Command::RegionWrite, big.len()), &[&big[..5], &big[5..]], &[]).unwrap();
        let (small, large) = reader.join().unwrap();
        assert_eq!((small.payload, large.header.msg_id), (b"x".to_vec(), 2));
        assert!(large.payload == big, "the large payload arrives intact");
    }

    #[test]
    fn oversized_message_is_skipped_and_the_next_one_is_read() {
        let (a, mut b) = pair();
        let big = vec![7u8; 5000];
        a.send(&Header::request(1, Command::RegionWrite, big.len()), &[&big], &[]).unwrap();
        a.send(&Header::request(2, Command::DeviceReset, 0), &[], &[]).unwrap();
        match b.recv() {
            Err(CodecError::Malformed { header, reason: Malformed::TooLarge { max: 4096 } }) => {
                assert_eq!(header.msg_id, 1)
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(b.recv().unwrap().header.msg_id, 2);
    }

    #[test]
    fn size_below_header_is_malformed() {
        let (a, mut b) = pair();
        let mut h = Header::request(9, Command::DeviceReset, 0);
        h.msg_size = 3;
        a.send(&h, &[], &[]).unwrap();
        assert!(matches!(b.recv(), Err(CodecError::Malformed { reason: Malformed::SizeBelowHeader, .. })));
    }

    #[test]
    fn too_many_fds_are_closed_and_reported() {
        let (a, mut b) = pair();
        let files: Vec<_> = (0..6).map(|_| tempfile::tempfile().unwrap()).collect();
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        a.send(&Header::request(4, Command::DeviceSetIrqs, 0), &[], &fds).unwrap();
        assert!(matches!(
            b.recv(),
            Err(CodecError::Malformed { reason: Malformed::TooManyFds { got: 6, max: 4 }, .. })
        ));
    }

    #[test]
    fn eof_between_messages_is_closed_and_inside_one_is_an_error() {
        let (a, mut b) = pair();
        drop(a);
        assert!(matches!(b.recv(), Err(CodecError::Closed)));
        let (mut a, mut b) = UnixStream::pair().map(|(x, y)| (x, Connection::new(y, 4096, 4))).unwrap();
        a.write_all(&[1, 2, 3]).unwrap();
        drop(a);
        assert!(matches!(b.recv(), Err(CodecError::Io(_))));
    }
}
