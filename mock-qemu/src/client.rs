//! A vfio-user client: requests with msg_id matching and timeouts, typed calls for the core
//! commands, and a service that answers the server's DMA_READ / DMA_WRITE while a request is
//! outstanding.
//!
//! The client is deliberately tolerant of what it receives (an error reply of any length, for
//! instance, as the reference server sends) but strict about what it sends.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use vfu_server::codec::{CodecError, Connection, Message};
use vfu_server::wire::{
    Capabilities, Command, DmaAccess, DmaMap, DmaUnmap, Header, RegionAccess, Version, WireError, parse_prefix,
};
use zerocopy::IntoBytes;

mod info;
mod migration;
pub use info::{DeviceInfo, IrqInfo, RegionInfo};
pub use migration::report_bitmap_words;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the server's socket failed.
    #[error("connecting to {path} failed")]
    Connect {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket failed or the server closed it.
    #[error("socket failed during {cmd}")]
    Socket {
        /// The command under way.
        cmd: Command,
        /// The cause.
        #[source]
        source: CodecError,
    },
    /// The server answered with an error.
    #[error("{cmd} refused with {errno}")]
    Refused {
        /// The command.
        cmd: Command,
        /// The errno of the reply.
        errno: Errno,
    },
    /// The reply does not have the shape the specification gives it.
    #[error("{cmd} reply is malformed: {what}")]
    BadReply {
        /// The command.
        cmd: Command,
        /// What is wrong.
        what: String,
    },
}

impl ClientError {
    /// The errno of a refusal, if this is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ClientError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Answers server-initiated DMA requests (for regions mapped without an fd).
pub trait DmaService: Send {
    /// Reads `len` bytes of guest memory at `addr`.
    fn dma_read(&mut self, addr: u64, len: u64) -> Result<Vec<u8>, Errno>;
    /// Writes `data` to guest memory at `addr`.
    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno>;
}

/// A connection to a vfio-user server.
pub struct Client {
    conn: Connection,
    next_id: u16,
    timeout: Duration,
    server_caps: Capabilities,
    dma: Option<Box<dyn DmaService>>,
}

/// Largest message the client accepts from a server.
const MAX_REPLY: usize = 64 << 20;

impl Client {
    /// Connects to the server at `path` (no negotiation yet).
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        Ok(Self::from_stream(stream, timeout))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Self {
        let _ = stream.set_read_timeout(Some(timeout));
        Self {
            conn: Connection::new(stream, MAX_REPLY, 16),
            next_id: 0,
            timeout,
            server_caps: Capabilities::default(),
            dma: None,
        }
    }

    /// Connects and negotiates with default capabilities.
    pub fn connect_and_negotiate(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, ClientError> {
        let mut c = Self::connect(path, timeout)?;
        c.negotiate(&Capabilities { max_msg_fds: Some(16), ..Capabilities::default() })?;
        Ok(c)
    }

    /// Installs the service that answers the server's DMA_READ / DMA_WRITE.
    pub fn set_dma_service(&mut self, service: Box<dyn DmaService>) {
        self.dma = Some(service);
    }

    /// The capabilities the server stated in VERSION.
    pub fn server_caps(&self) -> &Capabilities {
        &self.server_caps
    }

    /// The reply timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        self.conn.stream()
    }

    /// Sends a raw message as is (the harness uses this to send malformed ones).
    pub fn send_raw(&self, header: &Header, payload: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), ClientError> {
        let cmd = header.command().unwrap_or(Command::Version);
        self.conn.send(header, payload, fds).map_err(|e| ClientError::Socket { cmd, source: CodecError::Io(e) })
    }

    /// Gives a reply's payload buffer back for the next reply to reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.conn.recycle(buf);
    }

    /// The next msg_id.
    pub fn next_msg_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Sends a request and waits for its reply, serving DMA requests meanwhile. An error reply
    /// becomes [`ClientError::Refused`].
    pub fn request(&mut self, cmd: Command, payload: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<Message, ClientError> {
        let len = payload.iter().map(|p| p.len()).sum();
        let header = Header::request(self.next_msg_id(), cmd, len);
        self.send_raw(&header, payload, fds)?;
        self.wait_reply(&header)
    }

    /// Waits for the reply to `request`, answering server-initiated requests meanwhile.
    pub fn wait_reply(&mut self, request: &Header) -> Result<Message, ClientError> {
        let cmd = request.command().unwrap_or(Command::Version);
        loop {
            let m = self.conn.recv().map_err(|source| ClientError::Socket { cmd, source })?;
            if m.header.is_request() {
                self.serve_server_request(m).map_err(|source| ClientError::Socket { cmd, source })?;
                continue;
            }
            if m.header.msg_id != request.msg_id || m.header.cmd != request.cmd {
                tracing::warn!(?m.header, "reply to nothing outstanding");
                continue;
            }
            if m.header.is_error() {
                let errno = Errno::from_raw(i32::try_from(m.header.error_no).unwrap_or(nix::libc::EIO));
                return Err(ClientError::Refused { cmd, errno });
            }
            return Ok(m);
        }
    }

    /// Answers one DMA_READ / DMA_WRITE from the server.
    fn serve_server_request(&mut self, m: Message) -> Result<(), CodecError> {
        let h = m.header;
        let result: Result<Vec<u8>, Errno> = (|| {
            let (acc, data) = parse_prefix::<DmaAccess>(&m.payload).map_err(|_| Errno::EINVAL)?;
            let dma = self.dma.as_mut().ok_or(Errno::EFAULT)?;
            match h.command() {
                Some(Command::DmaRead) => {
                    let bytes = dma.dma_read(acc.addr, acc.count)?;
                    let mut out = acc.as_bytes().to_vec();
                    out.extend_from_slice(&bytes);
                    Ok(out)
                }
                Some(Command::DmaWrite) => {
                    if data.len() as u64 != acc.count {
                        return Err(Errno::EINVAL);
                    }
                    dma.dma_write(acc.addr, data)?;
                    Ok(acc.as_bytes().to_vec())
                }
                _ => Err(Errno::ENOSYS),
            }
        })();
        let sent = match result {
            Ok(payload) => self.conn.send(&h.reply(payload.len()), &[&payload], &[]),
            Err(errno) => self.conn.send(&h.error_reply(errno as i32), &[], &[]),
        };
        sent.map_err(CodecError::Io)
    }

    /// VERSION: sends `caps`, returns the server's version and capabilities.
    pub fn negotiate(&mut self, caps: &Capabilities) -> Result<(Version, Capabilities), ClientError> {
        let head = Version { major: 0, minor: 1 };
        let json = caps.to_wire();
        let m = self.request(Command::Version, &[head.as_bytes(), &json], &[])?;
        let (v, tail) = parse_prefix::<Version>(&m.payload).map_err(|e| bad(Command::Version, e))?;
        let server = Capabilities::parse(tail)
            .map_err(|e| ClientError::BadReply { cmd: Command::Version, what: e.to_string() })?;
        self.server_caps = server.clone();
        Ok((v, server))
    }

    /// DMA_MAP of `size` bytes at `addr`, optionally backed by `fd` from `offset`.
    pub fn dma_map(
        &mut self,
        addr: u64,
        size: u64,
        flags: u32,
        fd: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<(), ClientError> {
        let m = DmaMap { argsz: 32, flags, offset: fd.map_or(0, |f| f.1), addr, size };
        let fds: Vec<BorrowedFd<'_>> = fd.map(|f| f.0).into_iter().collect();
        self.request(Command::DmaMap, &[m.as_bytes()], &fds)?;
        Ok(())
    }

    /// DMA_UNMAP; returns the echoed request.
    pub fn dma_unmap(&mut self, addr: u64, size: u64, flags: u32) -> Result<DmaUnmap, ClientError> {
        let u = DmaUnmap { argsz: 24, flags, addr, size };
        let m = self.request(Command::DmaUnmap, &[u.as_bytes()], &[])?;
        parse_prefix::<DmaUnmap>(&m.payload).map(|(r, _)| r).map_err(|e| bad(Command::DmaUnmap, e))
    }

    /// REGION_READ of `count` bytes.
    pub fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Result<Vec<u8>, ClientError> {
        let req = RegionAccess { offset, region, count };
        let m = self.request(Command::RegionRead, &[req.as_bytes()], &[])?;
        let (head, data) = parse_prefix::<RegionAccess>(&m.payload).map_err(|e| bad(Command::RegionRead, e))?;
        if head != req || data.len() != count as usize {
            return Err(ClientError::BadReply {
                cmd: Command::RegionRead,
                what: format!("asked {req:?}, got {head:?} with {} bytes", data.len()),
            });
        }
        Ok(data.to_vec())
    }

    /// REGION_WRITE of `data`.
    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        let count = u32::try_from(data.len())
            .map_err(|_| ClientError::Refused { cmd: Command::RegionWrite, errno: Errno::E2BIG })?;
        let req = RegionAccess { offset, region, count };
        self.request(Command::RegionWrite, &[req.as_bytes(), data], &[])?;
        Ok(())
    }

    /// A 32-bit register read.
    pub fn read_u32(&mut self, region: u32, offset: u64) -> Result<u32, ClientError> {
        let b = self.region_read(region, offset, 4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// A 64-bit register read.
    pub fn read_u64(&mut self, region: u32, offset: u64) -> Result<u64, ClientError> {
        let b = self.region_read(region, offset, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// A 32-bit register write.
    pub fn write_u32(&mut self, region: u32, offset: u64, v: u32) -> Result<(), ClientError> {
        self.region_write(region, offset, &v.to_le_bytes())
    }

    /// A 64-bit register write.
    pub fn write_u64(&mut self, region: u32, offset: u64, v: u64) -> Result<(), ClientError> {
        self.region_write(region, offset, &v.to_le_bytes())
    }

    /// DEVICE_SET_IRQS with optional bool data and eventfds.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let argsz = (size_of::<vfu_server::wire::SetIrqs>() + data.len()) as u32;
        let req = vfu_server::wire::SetIrqs { argsz, flags, index, start, count };
        self.request(Command::DeviceSetIrqs, &[req.as_bytes(), data], fds)?;
        Ok(())
    }

    /// Attaches one eventfd per vector from `start`.
    pub fn set_eventfds(&mut self, index: u32, start: u32, fds: &[&OwnedFd]) -> Result<(), ClientError> {
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let flags = vfu_server::wire::IRQ_SET_DATA_EVENTFD | vfu_server::wire::IRQ_SET_ACTION_TRIGGER;
        self.set_irqs(index, flags, start, fds.len() as u32, &[], &borrowed)
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<(), ClientError> {
        self.request(Command::DeviceReset, &[], &[])?;
        Ok(())
    }
}

pub(crate) fn bad(cmd: Command, e: WireError) -> ClientError {
    ClientError::BadReply { cmd, what: e.to_string() }
}
