//! Message framing over a UNIX stream socket, with fds (SCM_RIGHTS) in both directions.
//!
//! One codec serves both ends: the server reads requests and writes replies with it, and a
//! client does the opposite. Every length the peer gives is bounded before anything is
//! allocated: a header whose `msg_size` is below 16 or above the connection's limit is
//! reported as [`Malformed`] after its bytes have been skipped (never buffered), so the stream
//! stays in step and the caller can answer with an errno and go on serving.

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::cmsg_space;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use zerocopy::{FromBytes, IntoBytes};

use crate::wire::{HEADER_SIZE, Header};

/// Most fds the kernel passes in one message (SCM_MAX_FD); room is always made for this many,
/// so a message with too many fds is detected rather than silently truncated.
pub const SCM_MAX_FDS: usize = 253;

/// Most iovecs Linux takes in one `sendmsg` (IOV_MAX, UIO_MAXIOV); a message of more parts is
/// sent by several.
pub const IOV_MAX: usize = 1024;

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
    #[error("socket I/O failed")]
    Io(#[from] io::Error),
}

/// A vfio-user connection over a UNIX stream socket.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    max_msg_size: usize,
    max_fds: usize,
    /// A payload buffer handed back with [`Connection::recycle`], reused by the next `recv` so
    /// a stream of large messages does not allocate (and fault in) fresh memory for each.
    spare: Vec<u8>,
}

impl Connection {
    /// Wraps `stream`, accepting messages of at most `max_msg_size` bytes and `max_fds` fds.
    pub fn new(stream: UnixStream, max_msg_size: usize, max_fds: usize) -> Self {
        Self {
            stream,
            max_msg_size: max_msg_size.max(HEADER_SIZE),
            max_fds: max_fds.min(SCM_MAX_FDS),
            spare: Vec::new(),
        }
    }

    /// The underlying socket (for timeouts and shutdown).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Changes the largest message accepted.
    pub fn set_max_msg_size(&mut self, max: usize) {
        self.max_msg_size = max.max(HEADER_SIZE);
    }

    /// Changes the most fds accepted with one message.
    pub fn set_max_fds(&mut self, max: usize) {
        self.max_fds = max.min(SCM_MAX_FDS);
    }

    /// Reads one whole message.
    pub fn recv(&mut self) -> Result<Message, CodecError> {
        let mut head = [0u8; HEADER_SIZE];
        let mut fds = Vec::new();
        let mut fds_truncated = false;
        let mut got = 0;
        while got < HEADER_SIZE {
            let rest = head.get_mut(got..).unwrap_or_default();
            let n = self.recv_with_fds(rest, &mut fds, &mut fds_truncated)?;
            if n == 0 {
                return Err(if got == 0 {
                    CodecError::Closed
                } else {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a header").into()
                });
            }
            got += n;
        }
        let header = Header::read_from_bytes(&head).map_err(|_| io::Error::other("header size"))?;
        let len = match payload_len(&header, self.max_msg_size) {
            Ok(len) => len,
            Err(reason) => {
                if let Malformed::TooLarge { .. } = reason {
                    self.skip(header.msg_size as usize - HEADER_SIZE, &mut fds, &mut fds_truncated)?;
                }
                return Err(CodecError::Malformed { header, reason });
            }
        };
        // A recycled buffer is not zeroed first: every byte is overwritten by the read below.
        let mut payload = std::mem::take(&mut self.spare);
        payload.resize(len, 0);
        let mut filled = 0;
        while filled < payload.len() {
            let rest = payload.get_mut(filled..).unwrap_or_default();
            let n = self.recv_with_fds(rest, &mut fds, &mut fds_truncated)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a message").into());
            }
            filled += n;
        }
        if fds_truncated || fds.len() > self.max_fds {
            return Err(CodecError::Malformed {
                header,
                reason: Malformed::TooManyFds { got: fds.len(), max: self.max_fds },
            });
        }
        Ok(Message { header, payload, fds })
    }

    /// Gives a message's payload buffer back for the next `recv` to reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.spare.capacity() {
            self.spare = buf;
        }
    }

    /// Reads and discards `len` bytes without buffering them (fds that come along are closed).
    fn skip(&mut self, mut len: usize, fds: &mut Vec<OwnedFd>, truncated: &mut bool) -> io::Result<()> {
        let mut sink = [0u8; 8192];
        while len > 0 {
            let take = len.min(sink.len());
            let n = self.recv_with_fds(sink.get_mut(..take).unwrap_or_default(), fds, truncated)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a message"));
            }
            len -= n;
        }
        Ok(())
    }

    /// One `recvmsg`, collecting any fds that come with it.
    fn recv_with_fds(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>, truncated: &mut bool) -> io::Result<usize> {
        let mut cmsg = cmsg_space!([RawFd; SCM_MAX_FDS]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = loop {
            match recvmsg::<()>(self.stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(io::Error::from)?,
            }
        };
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            *truncated = true;
        }
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel has just installed `fd` in this process for us with
                    // SCM_RIGHTS; nothing else owns it, so it is ours to close.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Ok(msg.bytes)
    }

    /// Writes one message, all of it, with `fds` attached to its first byte. Its parts are
    /// gathered [`IOV_MAX`] at a time; however many there are, the peer sees one message.
    pub fn send(&self, header: &Header, payload: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(payload.len() + 1);
        parts.push(header.as_bytes());
        parts.extend(payload.iter().copied().filter(|p| !p.is_empty()));
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut first = true;
        while !parts.is_empty() {
            let iov: Vec<IoSlice<'_>> = parts.iter().take(IOV_MAX).map(|p| IoSlice::new(p)).collect();
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if first && !raw.is_empty() { &rights } else { &[] };
            let n = match sendmsg::<()>(self.stream.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => other.map_err(io::Error::from)?,
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"));
            }
            first = false;
            advance(&mut parts, n);
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes, for a peer whose message length is already known.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.stream.read_exact(buf)
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

/// Drops the first `n` bytes from a list of slices.
fn advance(parts: &mut Vec<&[u8]>, mut n: usize) {
    let mut drop_whole = 0;
    for p in parts.iter_mut() {
        if n >= p.len() {
            n -= p.len();
            drop_whole += 1;
        } else {
            *p = p.get(n..).unwrap_or_default();
            break;
        }
    }
    parts.drain(..drop_whole);
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
