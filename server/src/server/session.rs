//! One client's session: read a request, check it, dispatch it, answer it.
//!
//! Every failure of a request becomes an error reply with the specification's errno (or no
//! reply at all when the client set NO_REPLY), and the session goes on. Only a broken socket
//! ends it.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use zerocopy::IntoBytes;

use super::ServerConfig;
use super::peer::Peer;
use crate::codec::{CodecError, Connection, Malformed, Message};
use crate::device::{Device, DeviceContext, DeviceSpec};
use crate::dma::DmaSpace;
use crate::irq::IrqTable;
use crate::migration::control::MigrationCtl;
use crate::wire::{Capabilities, Command, TYPE_COMMAND};

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client closed the connection between messages.
    Disconnected,
    /// The socket failed or closed mid-message.
    SocketError(std::io::Error),
    /// The server closed the connection, as the specification asks (unsupported major version).
    ClosedByServer,
}

/// A successful reply: its payload, a bitmap sent after it (a dirty report's, sent from the
/// words it was reported into), and the fds that go with it.
#[derive(Default)]
pub(super) struct Reply {
    pub payload: Vec<u8>,
    pub bitmap: Vec<u64>,
    pub fds: Vec<Arc<OwnedFd>>,
    /// The handler sent the reply itself.
    pub sent: bool,
}

impl Reply {
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn bytes(payload: Vec<u8>) -> Self {
        Self { payload, ..Self::default() }
    }

    /// The handler already answered.
    pub fn sent() -> Self {
        Self { sent: true, ..Self::default() }
    }
}

/// What the client negotiated with VERSION.
#[derive(Debug, Clone)]
pub(super) struct Negotiated {
    /// The client's capabilities.
    #[allow(dead_code)]
    pub client: Capabilities,
}

pub(super) struct Session<'s> {
    pub peer: Peer,
    pub device: &'s mut dyn Device,
    pub spec: &'s DeviceSpec,
    pub dma: &'s Arc<DmaSpace>,
    pub irqs: &'s mut IrqTable,
    pub config: &'s ServerConfig,
    pub negotiated: Option<Negotiated>,
    /// Set by a handler whose failure the specification answers by closing the connection.
    pub close_after_reply: bool,
    /// The migration state, for a migratable device.
    pub mig: Option<&'s mut MigrationCtl>,
    /// The buffer of the last large reply, reused by the next (see [`Session::reply_buf`]).
    pub reply_spare: Vec<u8>,
    /// The bitmap of the last dirty report, reused by the next.
    pub bitmap_spare: Vec<u64>,
    /// The header of the request being served.
    pub request: Option<crate::wire::Header>,
}

impl<'s> Session<'s> {
    pub fn new(
        stream: UnixStream,
        device: &'s mut dyn Device,
        spec: &'s DeviceSpec,
        dma: &'s Arc<DmaSpace>,
        irqs: &'s mut IrqTable,
        config: &'s ServerConfig,
        mig: Option<&'s mut MigrationCtl>,
    ) -> Self {
        let conn = Connection::new(stream, config.max_msg_size(), config.max_msg_fds as usize);
        Self {
            peer: Peer::new(conn, config.dma_reply_timeout),
            device,
            spec,
            dma,
            irqs,
            config,
            negotiated: None,
            close_after_reply: false,
            mig,
            reply_spare: Vec::new(),
            bitmap_spare: Vec::new(),
            request: None,
        }
    }

    /// Serves requests until the client goes away.
    pub fn run(mut self) -> SessionEnd {
        loop {
            if self.peer.broken {
                return SessionEnd::SocketError(std::io::Error::other("client stopped answering DMA requests"));
            }
            if self.peer.deferred.is_empty()
                && let Err(e) = self.wait_for_request()
            {
                return SessionEnd::SocketError(e);
            }
            if self.peer.broken {
                continue;
            }
            let msg = match self.peer.next_request() {
                Ok(m) => m,
                Err(CodecError::Closed) => return SessionEnd::Disconnected,
                Err(CodecError::Io(e)) => return SessionEnd::SocketError(e),
                Err(CodecError::Malformed { header, reason }) => {
                    tracing::warn!(?header, ?reason, "malformed message");
                    let errno = match reason {
                        Malformed::TooLarge { .. } => Errno::E2BIG,
                        Malformed::SizeBelowHeader | Malformed::TooManyFds { .. } => Errno::EINVAL,
                    };
                    if header.msg_type() == TYPE_COMMAND && !header.no_reply() {
                        let mut h = header.error_reply(errno as i32);
                        h.msg_size = crate::wire::HEADER_SIZE as u32;
                        if let Err(e) = self.peer.reply(&h, &[], &[]) {
                            return SessionEnd::SocketError(e);
                        }
                    }
                    continue;
                }
            };
            if let Err(e) = self.handle(msg) {
                return SessionEnd::SocketError(e);
            }
            if self.close_after_reply {
                return SessionEnd::ClosedByServer;
            }
        }
    }

    /// Waits until a request can be read, calling the device each time its
    /// [`next_deadline`](Device::next_deadline) passes meanwhile. Returns at once for a device
    /// without deadlines (the read that follows blocks), and as soon as the device's own work
    /// queued requests or broke the socket.
    fn wait_for_request(&mut self) -> std::io::Result<()> {
        while let Some(deadline) = self.device.next_deadline() {
            let now = Instant::now();
            if deadline > now {
                if self.peer.conn.has_buffered() {
                    return Ok(()); // a request already received: the socket would not poll readable
                }
                // Rounded up, so a wake-up never comes before the deadline and spins.
                let ms = (deadline - now).as_micros().div_ceil(1000);
                let timeout = PollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX)).unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(self.peer.conn.stream().as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, timeout) {
                    Ok(0) | Err(Errno::EINTR) => continue,
                    // A request that came after the deadline waits for the device's turn: the
                    // thread may have slept between the clock and the poll.
                    Ok(_) if Instant::now() < deadline => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.with_device(|dev, ctx| dev.deadline_reached(ctx));
            if self.peer.broken || !self.peer.deferred.is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Handles one message; an error here is a socket failure.
    fn handle(&mut self, msg: Message) -> std::io::Result<()> {
        let header = msg.header;
        if !header.is_request() {
            tracing::warn!(?header, "dropping a reply that answers nothing outstanding");
            return Ok(());
        }
        let cmd = header.command();
        let span = tracing::debug_span!("request", id = header.msg_id, cmd = cmd.map_or("?", Command::name));
        let _enter = span.enter();
        self.request = (!header.no_reply()).then_some(header);
        let result = match cmd {
            None => Err(Errno::ENOSYS),
            Some(cmd) => self.dispatch(cmd, msg),
        };
        self.send_reply(header, result)
    }

    /// Answers `header` with `result` (nothing for NO_REPLY), then keeps the reply's buffer for
    /// the next large reply.
    fn send_reply(&mut self, header: crate::wire::Header, result: Result<Reply, Errno>) -> std::io::Result<()> {
        if header.no_reply() {
            if let Err(errno) = result {
                tracing::debug!(%errno, "request failed (NO_REPLY)");
            }
            return Ok(());
        }
        match result {
            Ok(reply) if reply.sent => Ok(()),
            Ok(reply) => {
                let fds: Vec<_> = reply.fds.iter().map(|f| f.as_fd()).collect();
                let bitmap = reply.bitmap.as_bytes();
                let len = reply.payload.len() + bitmap.len();
                let sent = self.peer.reply(&header.reply(len), &[&reply.payload, bitmap], &fds);
                if reply.payload.capacity() > self.reply_spare.capacity() {
                    self.reply_spare = reply.payload;
                }
                if reply.bitmap.capacity() > self.bitmap_spare.capacity() {
                    self.bitmap_spare = reply.bitmap;
                }
                sent
            }
            Err(errno) => {
                tracing::debug!(%errno, "request refused");
                self.peer.reply(&header.error_reply(errno as i32), &[], &[])
            }
        }
    }

    fn dispatch(&mut self, cmd: Command, msg: Message) -> Result<Reply, Errno> {
        if self.negotiated.is_none() && cmd != Command::Version {
            return Err(Errno::EINVAL);
        }
        let Message { payload, fds, .. } = msg;
        if !cmd_takes_fds(cmd) && !fds.is_empty() {
            return Err(Errno::EINVAL);
        }
        let reply = self.run_command(cmd, &payload, fds);
        self.peer.conn.recycle(payload);
        reply
    }

    fn run_command(&mut self, cmd: Command, payload: &[u8], fds: Vec<OwnedFd>) -> Result<Reply, Errno> {
        match cmd {
            Command::Version => self.version(payload, fds),
            Command::DmaMap => self.dma_map(payload, fds),
            Command::DmaUnmap => self.dma_unmap(payload),
            Command::DeviceGetInfo => self.device_info(payload),
            Command::DeviceGetRegionInfo => self.region_info(payload),
            Command::DeviceGetRegionIoFds => self.region_io_fds(payload),
            Command::DeviceGetIrqInfo => self.irq_info(payload),
            Command::DeviceSetIrqs => self.set_irqs(payload, fds),
            Command::RegionRead => self.region_read(payload),
            Command::RegionWrite => self.region_write(payload),
            Command::RegionWriteMulti => self.region_write_multi(payload),
            Command::DeviceReset => self.device_reset(),
            // Server-to-client only.
            Command::DmaRead | Command::DmaWrite => Err(Errno::EINVAL),
            Command::DeviceFeature => self.device_feature(payload),
            Command::MigDataRead => self.mig_data_read(payload),
            Command::MigDataWrite => self.mig_data_write(payload),
        }
    }

    /// A reply buffer of `len` bytes, reusing the last large reply's memory. Bytes the caller
    /// does not overwrite hold what an earlier reply to this same client carried, never anything
    /// else; callers overwrite or truncate.
    pub fn reply_buf(&mut self, len: usize) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.reply_spare);
        buf.resize(len, 0);
        buf
    }

    /// Runs `f` with the device and a context over guest memory and IRQs.
    pub fn with_device<T>(&mut self, f: impl FnOnce(&mut dyn Device, &mut DeviceContext<'_>) -> T) -> T {
        let mut ctx = DeviceContext::new_shared(self.dma, Some(&mut self.peer), self.irqs);
        f(self.device, &mut ctx)
    }
}

/// Commands that may carry fds.
fn cmd_takes_fds(cmd: Command) -> bool {
    matches!(cmd, Command::DmaMap | Command::DeviceSetIrqs)
}
