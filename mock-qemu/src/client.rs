//! A vfio-user client: a typed call for every command, msg_id matching, reply timeouts, a
//! service for the server's DMA_READ / DMA_WRITE, twin-socket mode, strict mode and traces.
//!
//! # Commands
//!
//! | # | command | call |
//! |---|---|---|
//! | 1 | VERSION | [`Client::negotiate`] |
//! | 2 | DMA_MAP | [`Client::dma_map`] (and [`Client::audit_remap`]) |
//! | 3 | DMA_UNMAP | [`Client::dma_unmap`] |
//! | 4 | DEVICE_GET_INFO | [`Client::device_info`] |
//! | 5 | DEVICE_GET_REGION_INFO | [`Client::region_info`], [`Client::region_info_raw`] |
//! | 6 | DEVICE_GET_REGION_IO_FDS | [`Client::region_io_fds`] |
//! | 7 | DEVICE_GET_IRQ_INFO | [`Client::irq_info`] |
//! | 8 | DEVICE_SET_IRQS | [`Client::set_irqs`], [`Client::set_eventfds`] |
//! | 9 | REGION_READ | [`Client::region_read`], [`Client::read_u32`], [`Client::read_u64`] |
//! | 10 | REGION_WRITE | [`Client::region_write`], [`Client::write_u32`], [`Client::write_u64`] |
//! | 11, 12 | DMA_READ, DMA_WRITE (server to client) | answered by the [`DmaService`] ([`Client::set_dma_service`]) |
//! | 13 | DEVICE_RESET | [`Client::reset`] |
//! | 15 | REGION_WRITE_MULTI | [`Client::region_write_multi`] |
//! | 16 | DEVICE_FEATURE | [`Client::device_feature`], [`Client::migration_flags`], [`Client::probe`], [`Client::mig_state`], [`Client::set_mig_state`], [`Client::dma_logging_start`], [`Client::dma_logging_stop`], [`Client::dma_logging_report`] |
//! | 17 | MIG_DATA_READ | [`Client::mig_data_read`] and variants |
//! | 18 | MIG_DATA_WRITE | [`Client::mig_data_write`] |
//!
//! # Replies, timeouts and msg_ids
//!
//! Every request gets the next msg_id (wrapping) and waits at most the timeout of
//! [`ClientOptions`] for its reply: no reply by then is [`ClientError::Timeout`]. A reply whose
//! msg_id (or command) is not the outstanding request's, such as the late reply to a request
//! that timed out, is dropped with a warning and counted ([`Client::stale_replies`]).
//!
//! # Server-initiated DMA and twin-socket mode
//!
//! While it waits for a reply the client answers the server's DMA_READ / DMA_WRITE with the
//! installed [`DmaService`] (EFAULT without one). If the VERSION request asked for twin-socket
//! mode ([`ClientOptions::twin_socket`]) and the server's reply offers it with the socket as fd
//! `fd_index`, the client keeps that socket and waits on both with `poll(2)`, serving requests
//! from either on the socket they came from. There is no background thread: the server only
//! sends DMA requests while it handles one of ours, and one thread keeps the trace in a
//! deterministic order.
//!
//! # Tolerance and strict mode
//!
//! The client tolerates the reference server's known deviations by default; in strict mode
//! each becomes a [`Finding`] ([`strict`] lists the rules). It is strict about what it sends.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vfu_server::codec::{CodecError, Connection, Message};
use vfu_server::wire::{Capabilities, Command, Header, TwinSocket, Version, WireError, parse_prefix};
use zerocopy::IntoBytes;

mod commands;
mod info;
mod migration;
mod served;
pub mod strict;
#[cfg(test)]
mod tests;
pub mod trace;

pub use info::{DeviceInfo, IrqInfo, RegionInfo};
pub use migration::report_bitmap_words;
pub use served::Served;
pub use strict::Finding;
pub use trace::TraceOptions;

use trace::{Dir, JsonLines, TraceSink, Traced};

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
    /// The socket failed or the server closed it (the cause is part of the message: a
    /// harness reports it as the reason a step failed, and a send that timed out is a hang).
    #[error("socket failed during {cmd}: {source}")]
    Socket {
        /// The command under way.
        cmd: Command,
        /// The cause.
        #[source]
        source: CodecError,
    },
    /// No reply came within the timeout. A reply that arrives later is dropped.
    #[error("no reply to {cmd} within {after:?}")]
    Timeout {
        /// The command.
        cmd: Command,
        /// How long the client waited.
        after: Duration,
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

/// How a client behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// Record every deviation from the specification as a [`Finding`] (see [`strict`]).
    pub strict: bool,
    /// What the client states in VERSION (used by [`Client::connect_with`]).
    pub capabilities: Capabilities,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            strict: false,
            capabilities: Capabilities { max_msg_fds: Some(16), ..Capabilities::default() },
        }
    }
}

impl ClientOptions {
    /// The defaults with a reply timeout of `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self { timeout, ..Self::default() }
    }

    /// Sets strict mode.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Asks for twin-socket mode in VERSION (or stops asking).
    pub fn twin_socket(mut self, ask: bool) -> Self {
        self.capabilities.twin_socket = ask.then_some(TwinSocket { supported: true, fd_index: None });
        self
    }
}

/// Which socket a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sock {
    Main,
    Twin,
}

/// A connection to a vfio-user server.
pub struct Client {
    conn: Connection,
    twin: Option<Connection>,
    next_id: u16,
    timeout: Duration,
    strict: bool,
    findings: Vec<Finding>,
    stale_replies: u64,
    server_caps: Capabilities,
    dma: Option<Box<dyn DmaService>>,
    trace: Option<Box<dyn TraceSink>>,
    started: Instant,
    /// See [`Client::set_unanswered`].
    unanswered: Option<std::fs::File>,
}

/// Largest message the client accepts from a server.
const MAX_REPLY: usize = 64 << 20;
/// Most fds the client accepts with one message.
const MAX_FDS: usize = 16;
/// The protocol version the client asks for.
const CLIENT_VERSION: Version = Version { major: 0, minor: 1 };

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
        Self::from_stream_with(stream, &ClientOptions::with_timeout(timeout))
    }

    /// Wraps an already connected stream, with `options` (the capabilities are not used: no
    /// negotiation happens).
    pub fn from_stream_with(stream: UnixStream, options: &ClientOptions) -> Self {
        // A backstop for a message that stops arriving halfway; waits for a reply poll first.
        let _ = stream.set_read_timeout(Some(options.timeout));
        // A server that stops reading must not block a send forever: it is a hang to report.
        let _ = stream.set_write_timeout(Some(options.timeout));
        Self {
            conn: Connection::new(stream, MAX_REPLY, MAX_FDS),
            twin: None,
            next_id: 0,
            timeout: options.timeout,
            strict: options.strict,
            findings: Vec::new(),
            stale_replies: 0,
            server_caps: Capabilities::default(),
            dma: None,
            trace: None,
            started: Instant::now(),
            unanswered: None,
        }
    }

    /// Connects and negotiates with default capabilities.
    pub fn connect_and_negotiate(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_with(path, &ClientOptions::with_timeout(timeout))
    }

    /// Connects and negotiates with `options`.
    pub fn connect_with(path: impl AsRef<Path>, options: &ClientOptions) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        let mut c = Self::from_stream_with(stream, options);
        c.negotiate(&options.capabilities)?;
        Ok(c)
    }

    /// A non-blocking pipe on which whatever relays this client's messages (a fault-injecting
    /// proxy) writes the msg_id, 16 bits little-endian, of each request it knows will never be
    /// answered (a message it dropped or held, or made the server wait for bytes that never
    /// come): the client stops waiting for such a reply at once, as it would at its timeout.
    pub fn set_unanswered(&mut self, pipe: OwnedFd) {
        self.unanswered = Some(std::fs::File::from(pipe));
    }

    /// Whether the relay said the request `msg_id` will never be answered; reads what the
    /// pipe holds.
    fn told_unanswered(&mut self, msg_id: u16) -> bool {
        let Some(pipe) = self.unanswered.as_mut() else { return false };
        let mut buf = [0u8; 64];
        let mut said = false;
        while let Ok(n @ 1..) = std::io::Read::read(pipe, &mut buf) {
            said |= buf[..n & !1].chunks(2).any(|c| u16::from_le_bytes([c[0], c[1]]) == msg_id);
        }
        said
    }

    /// Installs the service that answers the server's DMA_READ / DMA_WRITE.
    pub fn set_dma_service(&mut self, service: Box<dyn DmaService>) {
        self.dma = Some(service);
    }

    /// Traces every message from now on to `out`, with timestamps (see [`TraceOptions`]).
    pub fn set_trace(&mut self, out: Box<dyn Write + Send>) {
        self.set_trace_with(out, TraceOptions::default());
    }

    /// Traces every message from now on to `out`, as `options` say.
    pub fn set_trace_with(&mut self, out: Box<dyn Write + Send>, options: TraceOptions) {
        self.set_trace_sink(Box::new(JsonLines::new(out, &options)));
    }

    /// Hands every message from now on to `sink` (instead of any trace set before).
    pub fn set_trace_sink(&mut self, sink: Box<dyn TraceSink>) {
        self.trace = Some(sink);
    }

    /// Stops tracing (dropping the sink, and a writer's flushing a buffered one).
    pub fn stop_trace(&mut self) {
        self.trace = None;
    }

    /// Turns strict mode on or off (see [`strict`]).
    pub fn set_strict(&mut self, strict: bool) {
        self.strict = strict;
    }

    /// Whether strict mode is on.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// The findings of strict mode so far.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Takes the findings of strict mode so far, leaving none.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// Replies dropped because they answered no outstanding request (late replies to requests
    /// that timed out, mostly).
    pub fn stale_replies(&self) -> u64 {
        self.stale_replies
    }

    /// The capabilities the server stated in VERSION.
    pub fn server_caps(&self) -> &Capabilities {
        &self.server_caps
    }

    /// Whether twin-socket mode is in use.
    pub fn has_twin_socket(&self) -> bool {
        self.twin.is_some()
    }

    /// The reply timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the reply timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        let _ = self.conn.stream().set_read_timeout(Some(timeout));
        let _ = self.conn.stream().set_write_timeout(Some(timeout));
        if let Some(t) = &self.twin {
            let _ = t.stream().set_read_timeout(Some(timeout));
            let _ = t.stream().set_write_timeout(Some(timeout));
        }
    }

    /// The underlying (main) socket.
    pub fn stream(&self) -> &UnixStream {
        self.conn.stream()
    }

    /// A deviation from the specification: a finding in strict mode, a debug line otherwise.
    pub(crate) fn deviation(&mut self, cmd: Command, msg_id: u16, rule: &'static str, detail: impl Into<String>) {
        let detail = detail.into();
        if self.strict {
            tracing::info!(%cmd, msg_id, rule, %detail, "finding");
            self.findings.push(Finding { cmd, msg_id, rule, detail });
        } else {
            tracing::debug!(%cmd, msg_id, rule, %detail, "tolerated a deviation from the specification");
        }
    }

    /// The msg_id of the last request sent.
    pub(crate) fn last_msg_id(&self) -> u16 {
        self.next_id
    }

    fn trace(&mut self, dir: Dir, header: &Header, payload: &[&[u8]], nfds: usize) {
        let Some(sink) = self.trace.as_mut() else { return };
        let msg = Traced { dir, header, payload, nfds, elapsed: self.started.elapsed() };
        if let Err(e) = sink.message(&msg) {
            tracing::warn!(error = %e, "tracing a message failed; tracing stops");
            self.trace = None;
        }
    }

    fn send_on(
        &mut self,
        sock: Sock,
        header: &Header,
        payload: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        self.trace(Dir::C2s, header, payload, fds.len());
        match (sock, self.twin.as_ref()) {
            (Sock::Twin, Some(t)) => t.send(header, payload, fds),
            _ => self.conn.send(header, payload, fds),
        }
    }

    /// Sends a raw message as is on the main socket (the harness uses this to send malformed
    /// ones).
    pub fn send_raw(&mut self, header: &Header, payload: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), ClientError> {
        let cmd = header.command().unwrap_or(Command::Version);
        self.send_on(Sock::Main, header, payload, fds)
            .map_err(|e| ClientError::Socket { cmd, source: CodecError::Io(e) })
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

    /// Waits until a socket is readable: the twin socket first (serving it unblocks the
    /// server), None once `deadline` passed.
    fn wait_readable(&mut self, deadline: Instant, msg_id: u16) -> std::io::Result<Option<Sock>> {
        // Bytes already received come first: the sockets would not poll readable for them.
        if self.twin.as_ref().is_some_and(Connection::has_buffered) {
            return Ok(Some(Sock::Twin));
        }
        if self.conn.has_buffered() {
            return Ok(Some(Sock::Main));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Rounded up, so the poll does not return just before the deadline and spin.
            let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
            let mut fds = vec![PollFd::new(self.conn.as_fd(), PollFlags::POLLIN)];
            if let Some(t) = &self.twin {
                fds.push(PollFd::new(t.as_fd(), PollFlags::POLLIN));
            }
            if let Some(p) = &self.unanswered {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
                Err(Errno::EINTR) | Ok(0) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            let ready = |i: usize| fds.get(i).and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
            let twin = self.twin.is_some();
            let (main_ready, twin_ready) = (ready(0), twin && ready(1));
            let told = self.unanswered.is_some() && ready(1 + usize::from(twin));
            drop(fds);
            if told && self.told_unanswered(msg_id) {
                return Ok(None);
            }
            if twin_ready {
                return Ok(Some(Sock::Twin));
            }
            if main_ready {
                return Ok(Some(Sock::Main));
            }
        }
    }

    /// Receives and traces one message from `sock`; `None` when that was the twin socket and
    /// the server closed it (the main socket carries everything from then on).
    fn recv_on(&mut self, sock: Sock) -> Result<Option<Message>, CodecError> {
        let received = match (sock, self.twin.as_mut()) {
            (Sock::Twin, Some(t)) => t.recv(),
            _ => self.conn.recv(),
        };
        let m = match received {
            Ok(m) => m,
            Err(CodecError::Closed) if sock == Sock::Twin => {
                tracing::warn!("the server closed the twin socket");
                self.twin = None;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.trace(Dir::S2c, &m.header, &[&m.payload], m.fds.len());
        Ok(Some(m))
    }

    /// Waits for the reply to `request`, answering server-initiated requests meanwhile.
    pub fn wait_reply(&mut self, request: &Header) -> Result<Message, ClientError> {
        let cmd = request.command().unwrap_or(Command::Version);
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        let socket_err = |source: CodecError| match &source {
            CodecError::Io(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                ClientError::Timeout { cmd, after: timeout }
            }
            _ => ClientError::Socket { cmd, source },
        };
        loop {
            // Without a twin socket the reply can only come on the main one: read it at once,
            // the socket's receive timeout (the reply timeout) bounding the wait.
            let waited = if self.twin.is_none() && self.unanswered.is_none() {
                Ok(Some(Sock::Main))
            } else {
                self.wait_readable(deadline, request.msg_id)
            };
            let sock = match waited.map_err(|e| socket_err(CodecError::Io(e)))? {
                Some(s) => s,
                None => {
                    tracing::warn!(%cmd, msg_id = request.msg_id, ?timeout, "no reply within the timeout");
                    return Err(ClientError::Timeout { cmd, after: timeout });
                }
            };
            let Some(m) = self.recv_on(sock).map_err(socket_err)? else { continue };
            if m.header.is_request() {
                self.answer_server_request(sock, m).map_err(|e| socket_err(CodecError::Io(e)))?;
                continue;
            }
            if m.header.msg_id != request.msg_id || m.header.cmd != request.cmd || sock != Sock::Main {
                tracing::warn!(?m.header, ?sock, "dropping a reply to nothing outstanding");
                self.stale_replies += 1;
                continue;
            }
            if m.header.is_error() {
                if !m.payload.is_empty() {
                    self.deviation(
                        cmd,
                        m.header.msg_id,
                        strict::ERROR_REPLY_HAS_PAYLOAD,
                        format!("error reply ({}) carries {} payload bytes", m.header.error_no, m.payload.len()),
                    );
                }
                let errno = Errno::from_raw(i32::try_from(m.header.error_no).unwrap_or(nix::libc::EIO));
                return Err(ClientError::Refused { cmd, errno });
            }
            return Ok(m);
        }
    }

    /// VERSION: sends `caps`, returns the server's version and capabilities. If `caps` asks for
    /// twin-socket mode and the server offers it, the socket it passes is used from now on.
    pub fn negotiate(&mut self, caps: &Capabilities) -> Result<(Version, Capabilities), ClientError> {
        let cmd = Command::Version;
        let json = caps.to_wire();
        let mut m = self.request(cmd, &[CLIENT_VERSION.as_bytes(), &json], &[])?;
        let id = m.header.msg_id;
        let (v, tail) = parse_prefix::<Version>(&m.payload).map_err(|e| bad(cmd, e))?;
        if v.major != CLIENT_VERSION.major {
            return Err(ClientError::BadReply { cmd, what: format!("major version {}", v.major) });
        }
        let (server, wrong) = strict::parse_caps_lenient(tail).map_err(|what| ClientError::BadReply { cmd, what })?;
        if v.minor > CLIENT_VERSION.minor {
            let detail = format!("minor {} in reply to {}", v.minor, CLIENT_VERSION.minor);
            self.deviation(cmd, id, strict::VERSION_MINOR_TOO_HIGH, detail);
        }
        for w in wrong {
            self.deviation(cmd, id, strict::VERSION_CAPS_WRONG_TYPE, w);
        }
        let asked = caps.twin_socket.is_some_and(|t| t.supported);
        match server.twin_socket {
            Some(TwinSocket { supported: true, fd_index: Some(i) }) if asked => {
                let i = i as usize;
                if i >= m.fds.len() {
                    let what = format!("twin socket fd_index {i} but {} fds came", m.fds.len());
                    return Err(ClientError::BadReply { cmd, what });
                }
                let fd: OwnedFd = m.fds.swap_remove(i);
                let stream = UnixStream::from(fd);
                let _ = stream.set_read_timeout(Some(self.timeout));
                let _ = stream.set_write_timeout(Some(self.timeout));
                self.twin = Some(Connection::new(stream, MAX_REPLY, MAX_FDS));
                tracing::debug!("twin-socket mode");
            }
            Some(TwinSocket { supported: true, .. }) if !asked => {
                tracing::warn!("the server offered a twin socket that was not asked for; ignored");
            }
            _ => {}
        }
        self.server_caps = server.clone();
        Ok((v, server))
    }
}

pub(crate) fn bad(cmd: Command, e: WireError) -> ClientError {
    ClientError::BadReply { cmd, what: e.to_string() }
}
