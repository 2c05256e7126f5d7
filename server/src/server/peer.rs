//! The client as the server sees it: the socket(s), and server-initiated DMA messages.
//!
//! Without twin-socket mode, a DMA_READ / DMA_WRITE goes out on the main socket and the
//! server reads until its reply arrives; requests the client sent meanwhile are queued and
//! served afterwards, in order. With twin-socket mode the DMA messages use their own socket.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::errno::Errno;
use zerocopy::IntoBytes;

use crate::codec::{CodecError, Connection, Message};
use crate::device::RemoteDma;
use crate::wire::{Command, DmaAccess, HEADER_SIZE, Header, parse_prefix};

/// The client's end of things.
pub(super) struct Peer {
    /// The main socket.
    pub conn: Connection,
    /// The twin socket for server-initiated messages, once negotiated.
    pub twin: Option<Connection>,
    /// Requests that arrived while waiting for a DMA reply.
    pub deferred: VecDeque<Message>,
    /// Largest transfer the client accepts in one message.
    pub client_max_xfer: u32,
    /// How long to wait for a DMA reply.
    pub reply_timeout: Duration,
    next_id: u16,
    /// Set when the socket failed during a DMA exchange: the session must end.
    pub broken: bool,
}

impl Peer {
    pub fn new(conn: Connection, reply_timeout: Duration) -> Self {
        Self {
            conn,
            twin: None,
            deferred: VecDeque::new(),
            client_max_xfer: crate::wire::Capabilities::default().max_data_xfer_size_or_default(),
            reply_timeout,
            next_id: 0,
            broken: false,
        }
    }

    /// The next request: a queued one first, else one from the socket.
    pub fn next_request(&mut self) -> Result<Message, CodecError> {
        match self.deferred.pop_front() {
            Some(m) => Ok(m),
            None => self.conn.recv(),
        }
    }

    /// Sends a reply on the main socket.
    pub fn reply(&self, header: &Header, payload: &[&[u8]], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        self.conn.send(header, payload, fds)
    }

    /// Sends one server-initiated request and waits for its reply.
    fn exchange(&mut self, cmd: Command, payload: &[&[u8]]) -> Result<Message, Errno> {
        self.next_id = self.next_id.wrapping_add(1);
        let len = payload.iter().map(|p| p.len()).sum();
        let header = Header::request(self.next_id, cmd, len);
        let timeout = self.reply_timeout;
        let conn = self.twin.as_mut().unwrap_or(&mut self.conn);
        conn.send(&header, payload, &[]).map_err(|_| Errno::EIO)?;
        let _ = conn.stream().set_read_timeout(Some(timeout));
        let result = loop {
            match conn.recv() {
                Ok(m) if m.header.is_request() => self.deferred.push_back(m),
                Ok(m) if m.header.msg_id == header.msg_id && m.header.cmd == header.cmd => break Ok(m),
                Ok(m) => tracing::warn!(?m.header, "dropping a reply that answers nothing outstanding"),
                Err(CodecError::Malformed { header: h, reason }) => {
                    tracing::warn!(?h, ?reason, "malformed message while waiting for a DMA reply")
                }
                Err(e) => break Err(e),
            }
        };
        let _ = conn.stream().set_read_timeout(None);
        let m = result.map_err(|e| {
            tracing::warn!(error = %e, %cmd, "no reply to a server-initiated request");
            self.broken = true;
            Errno::EIO
        })?;
        if m.header.is_error() {
            return Err(Errno::from_raw(i32::try_from(m.header.error_no).unwrap_or(nix::libc::EIO)));
        }
        Ok(m)
    }

    fn chunk(&self) -> usize {
        (self.client_max_xfer as usize).max(1)
    }
}

impl RemoteDma for Peer {
    fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let chunk = self.chunk();
        for (i, part) in buf.chunks_mut(chunk).enumerate() {
            let addr = iova + (i * chunk) as u64;
            let req = DmaAccess { addr, count: part.len() as u64 };
            let reply = self.exchange(Command::DmaRead, &[req.as_bytes()])?;
            let (head, data) = parse_prefix::<DmaAccess>(&reply.payload).map_err(|_| Errno::EIO)?;
            if head.addr != addr || head.count != part.len() as u64 || data.len() != part.len() {
                tracing::warn!(?head, got = data.len(), "DMA_READ reply does not match its request");
                return Err(Errno::EIO);
            }
            part.copy_from_slice(data);
        }
        Ok(())
    }

    fn dma_write(&mut self, iova: u64, data: &[u8]) -> Result<(), Errno> {
        let chunk = self.chunk();
        for (i, part) in data.chunks(chunk).enumerate() {
            let addr = iova + (i * chunk) as u64;
            let req = DmaAccess { addr, count: part.len() as u64 };
            let reply = self.exchange(Command::DmaWrite, &[req.as_bytes(), part])?;
            if reply.payload.len() + HEADER_SIZE < HEADER_SIZE + size_of::<DmaAccess>() {
                tracing::warn!(len = reply.payload.len(), "DMA_WRITE reply is truncated");
                return Err(Errno::EIO);
            }
        }
        Ok(())
    }
}
