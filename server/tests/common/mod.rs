//! Shared helpers of the integration tests.
//!
//! - [`ServerProcess`] runs the real `vfu-server` binary on a socket in its own temporary
//!   directory, waits (by polling with a deadline) until the socket accepts connections,
//!   captures the server's output to a file that failing assertions quote, and stops the server
//!   with SIGTERM (SIGKILL after a deadline) when dropped.
//! - [`ServerProcess::connect`] gives a negotiated [`mock_qemu::Client`].
//! - [`RawConn`] and the [`msg`] builder send arbitrary bytes (and fds) and read replies without
//!   any of the server's own code, so tests can send what no well-behaved client would.
//! - [`dmae`] drives the dma-engine device and its guest memory (memfd RAM, message-served RAM,
//!   commands, a whole-device snapshot) for the migration tests.
#![allow(dead_code, unreachable_pub)] // every test crate uses its own subset

pub mod dmae;

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::unistd::Pid;
use tempfile::TempDir;
use vfu_server::wire::Command;

/// How long the server may take to start listening.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);
/// How long the server may take to exit after SIGTERM before it is killed.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// How long a reply may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between polls of a condition that has a deadline.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `cond` every [`POLL_INTERVAL`] until it returns `Some`, or `None` once `deadline` passed.
pub fn poll_until<T>(deadline: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A running `vfu-server` process, stopped on drop.
pub struct ServerProcess {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    // Last, so the directory outlives everything that points into it.
    _dir: TempDir,
}

impl ServerProcess {
    /// Starts `vfu-server --socket <tmp>/vfu.sock <args>` and waits until it accepts connections.
    pub fn spawn(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vfu-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temporary directory failed: {e}"));
        let socket = dir.path().join("vfu.sock");
        let log = dir.path().join("server.log");
        let out = File::create(&log).unwrap_or_else(|e| panic!("creating {} failed: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("duplicating the log file failed: {e}"));
        let mut cmd = Process::new(env!("CARGO_BIN_EXE_vfu-server"));
        cmd.arg("--socket").arg(&socket).args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "debug");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting vfu-server {args:?} failed: {e}"));
        let mut server =
            Self { child: Some(child), socket, log, args: args.iter().map(|s| s.to_string()).collect(), _dir: dir };
        server.wait_until_listening();
        server
    }

    fn wait_until_listening(&mut self) {
        let socket = self.socket.clone();
        let mut exited = None;
        let up = poll_until(STARTUP_DEADLINE, || {
            if let Some(status) = self.try_wait() {
                exited = Some(status);
                return Some(false);
            }
            // The probe connection is served (and ended) by the server like any client.
            UnixStream::connect(&socket).ok().map(|_| true)
        });
        match (up, exited) {
            (Some(true), _) => {}
            (_, Some(status)) => panic!("vfu-server exited with {status} before listening\n{}", self.context()),
            _ => panic!("vfu-server did not accept a connection within {STARTUP_DEADLINE:?}\n{}", self.context()),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<reading {} failed: {e}>", self.log.display()))
    }

    /// The server's command line and output, for assertion messages.
    pub fn context(&self) -> String {
        format!("--- vfu-server {:?} output ---\n{}--- end of server output ---", self.args, self.output())
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Panics (quoting the server's output) unless the process is still running.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!("vfu-server died: {status}\n{}", self.context());
        }
    }

    /// A [`mock_qemu::Client`] that has negotiated the version.
    pub fn connect(&self) -> mock_qemu::Client {
        mock_qemu::Client::connect_and_negotiate(&self.socket, REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting and negotiating failed: {e:?}\n{}", self.context()))
    }

    /// A raw connection that has not negotiated yet.
    pub fn raw(&self) -> RawConn {
        let stream = poll_until(STARTUP_DEADLINE, || UnixStream::connect(&self.socket).ok())
            .unwrap_or_else(|| panic!("connecting to {} failed\n{}", self.socket.display(), self.context()));
        RawConn::new(stream)
    }

    /// A raw connection that has negotiated with `{"capabilities":{"max_msg_fds":16}}`, and the
    /// server's capabilities.
    pub fn raw_negotiated(&self) -> (RawConn, serde_json::Value) {
        let mut conn = self.raw();
        let caps = conn.negotiate().unwrap_or_else(|e| panic!("{e}\n{}", self.context()));
        (conn, caps)
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after [`SHUTDOWN_DEADLINE`]); returns the
    /// status and whether SIGKILL was needed.
    pub fn terminate(&mut self) -> Option<(ExitStatus, bool)> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, false));
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        if let Some(status) = poll_until(SHUTDOWN_DEADLINE, || child.try_wait().ok().flatten()) {
            return Some((status, false));
        }
        let _ = child.kill();
        child.wait().ok().map(|s| (s, true))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let result = self.terminate();
        if std::thread::panicking() {
            eprintln!("{}", self.context());
        }
        if let Some((_, true)) = result {
            eprintln!("vfu-server ignored SIGTERM for {SHUTDOWN_DEADLINE:?} and was killed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw messages
// ---------------------------------------------------------------------------------------------

/// Builds one raw message: a header and payload bytes, `msg_size` computed unless overridden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// msg_id.
    pub msg_id: u16,
    /// Command number (any value).
    pub cmd: u16,
    /// Header flags.
    pub flags: u32,
    /// Header error_no.
    pub error_no: u32,
    /// Payload bytes.
    pub body: Vec<u8>,
    /// `msg_size` to send instead of the true size.
    pub size: Option<u32>,
}

/// A request of `cmd` with an empty payload, `msg(Command::RegionRead).u64(0).u32(7).u32(64)`.
pub fn msg(cmd: Command) -> Msg {
    msg_raw(cmd as u16)
}

/// A request with any command number.
pub fn msg_raw(cmd: u16) -> Msg {
    Msg { msg_id: 0x7e57, cmd, flags: 0, error_no: 0, body: Vec::new(), size: None }
}

impl Msg {
    /// Sets msg_id.
    pub fn id(mut self, id: u16) -> Self {
        self.msg_id = id;
        self
    }

    /// Sets the header flags.
    pub fn flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }

    /// Adds NO_REPLY to the flags.
    pub fn no_reply(mut self) -> Self {
        self.flags |= 0x10;
        self
    }

    /// Appends a byte.
    pub fn u8(mut self, v: u8) -> Self {
        self.body.push(v);
        self
    }

    /// Appends a little-endian u16.
    pub fn u16(mut self, v: u16) -> Self {
        self.body.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian u32.
    pub fn u32(mut self, v: u32) -> Self {
        self.body.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian u64.
    pub fn u64(mut self, v: u64) -> Self {
        self.body.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends bytes.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.body.extend_from_slice(b);
        self
    }

    /// Appends `n` zero bytes.
    pub fn zeros(mut self, n: usize) -> Self {
        self.body.resize(self.body.len() + n, 0);
        self
    }

    /// Keeps only the first `n` payload bytes (msg_size follows unless overridden).
    pub fn truncate(mut self, n: usize) -> Self {
        self.body.truncate(n);
        self
    }

    /// Sends `size` as msg_size whatever the real size.
    pub fn msg_size(mut self, size: u32) -> Self {
        self.size = Some(size);
        self
    }

    /// The msg_size that will be sent.
    pub fn wire_size(&self) -> u32 {
        self.size.unwrap_or_else(|| u32::try_from(16 + self.body.len()).unwrap_or(u32::MAX))
    }

    /// Header and payload bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.body.len());
        v.extend_from_slice(&self.msg_id.to_le_bytes());
        v.extend_from_slice(&self.cmd.to_le_bytes());
        v.extend_from_slice(&self.wire_size().to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&self.error_no.to_le_bytes());
        v.extend_from_slice(&self.body);
        v
    }
}

/// A message as received.
pub struct RawMsg {
    /// msg_id.
    pub msg_id: u16,
    /// Command number.
    pub cmd: u16,
    /// msg_size.
    pub msg_size: u32,
    /// Header flags.
    pub flags: u32,
    /// Header error_no.
    pub error_no: u32,
    /// Payload.
    pub payload: Vec<u8>,
    /// Fds that came with it.
    pub fds: Vec<OwnedFd>,
}

impl fmt::Debug for RawMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.payload.len().min(64);
        let hex: String = self.payload.get(..shown).unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect();
        write!(
            f,
            "RawMsg {{ msg_id: {:#x}, cmd: {}, msg_size: {}, flags: {:#x}, error_no: {}, fds: {}, payload[..{shown}]: {hex} }}",
            self.msg_id,
            self.cmd,
            self.msg_size,
            self.flags,
            self.error_no,
            self.fds.len()
        )
    }
}

impl RawMsg {
    /// Whether this is a successful reply.
    pub fn is_ok_reply(&self) -> bool {
        self.flags & 0xf == 1 && self.flags & 0x20 == 0
    }

    /// The errno of an error reply.
    pub fn errno(&self) -> Option<Errno> {
        (self.flags & 0x20 != 0).then(|| Errno::from_raw(i32::try_from(self.error_no).unwrap_or(-1)))
    }

    /// Reads a little-endian u32 of the payload.
    pub fn u32_at(&self, at: usize) -> Option<u32> {
        self.payload.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }

    /// Reads a little-endian u64 of the payload.
    pub fn u64_at(&self, at: usize) -> Option<u64> {
        self.payload.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }
}

/// A connection that sends and receives raw bytes, independent of the server's codec.
pub struct RawConn {
    stream: UnixStream,
}

impl RawConn {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        Self { stream }
    }

    /// The socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends `bytes` with `fds` attached to the first byte.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent = 0;
        while sent < bytes.len() {
            let iov = [IoSlice::new(bytes.get(sent..).unwrap_or_default())];
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !raw.is_empty() { &rights } else { &[] };
            match sendmsg::<()>(self.stream.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => sent += n,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sends a built message.
    pub fn send_msg(&self, m: &Msg, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send(&m.build(), fds)
    }

    fn recv_some(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        let mut cmsg = nix::cmsg_space!([RawFd; 253]);
        let mut iov = [IoSliceMut::new(buf)];
        loop {
            match recvmsg::<()>(self.stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(msg) => {
                    for c in msg.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: the kernel just installed `fd` in this process for this
                                // message; nothing else owns it.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                    return Ok(msg.bytes);
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn fill(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.recv_some(buf.get_mut(got..).unwrap_or_default(), fds)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
            }
            got += n;
        }
        Ok(())
    }

    /// Receives one message, waiting at most `timeout` for it to start; `Ok(None)` if nothing
    /// arrived in that time.
    pub fn recv_within(&self, timeout: Duration) -> io::Result<Option<RawMsg>> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut head = [0u8; 16];
        let mut fds = Vec::new();
        let first = match self.recv_some(&mut head, &mut fds) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
            Err(e) => return Err(e),
        };
        // The rest of a message that has started must come within the reply timeout.
        self.stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        self.fill(head.get_mut(first..).unwrap_or_default(), &mut fds)?;
        let field = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let msg_size = field(4);
        let len = (msg_size as usize).checked_sub(16).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("server sent msg_size {msg_size} below 16"))
        })?;
        if len > 64 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("server sent msg_size {msg_size}")));
        }
        let mut payload = vec![0u8; len];
        self.fill(&mut payload, &mut fds)?;
        Ok(Some(RawMsg {
            msg_id: u16::from_le_bytes([head[0], head[1]]),
            cmd: u16::from_le_bytes([head[2], head[3]]),
            msg_size,
            flags: field(8),
            error_no: field(12),
            payload,
            fds,
        }))
    }

    /// Receives one message within [`REPLY_TIMEOUT`].
    pub fn recv(&self) -> io::Result<RawMsg> {
        self.recv_within(REPLY_TIMEOUT)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, format!("no message within {REPLY_TIMEOUT:?}")))
    }

    /// Sends `m` and returns the next message (which should be its reply).
    pub fn request(&self, m: &Msg, fds: &[BorrowedFd<'_>]) -> io::Result<RawMsg> {
        self.send_msg(m, fds)?;
        self.recv()
    }

    /// VERSION 0.1 with `{"capabilities":{"max_msg_fds":16}}`; returns the server's capabilities.
    pub fn negotiate(&mut self) -> Result<serde_json::Value, String> {
        let reply = self.request(&version_request(b"{\"capabilities\":{\"max_msg_fds\":16}}\0"), &[]);
        let reply = reply.map_err(|e| format!("VERSION failed: {e}"))?;
        if !reply.is_ok_reply() || reply.cmd != 1 {
            return Err(format!("VERSION refused: {reply:?}"));
        }
        let json = reply.payload.get(4..).unwrap_or_default();
        let json =
            json.strip_suffix(&[0]).ok_or_else(|| format!("VERSION reply JSON is not NUL-terminated: {reply:?}"))?;
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("VERSION reply JSON does not parse: {e}"))?;
        v.get("capabilities").cloned().ok_or_else(|| format!("VERSION reply lacks capabilities: {v}"))
    }
}

/// A VERSION 0.1 request carrying `json` (which should be NUL-terminated).
pub fn version_request(json: &[u8]) -> Msg {
    msg(Command::Version).id(1).u16(0).u16(1).bytes(json)
}

/// A DEVICE_GET_INFO request with argsz 16.
pub fn device_info_request() -> Msg {
    msg(Command::DeviceGetInfo).id(0x1f0).u32(16).u32(0).u32(0).u32(0)
}

/// A REGION_READ request.
pub fn region_read_request(region: u32, offset: u64, count: u32) -> Msg {
    msg(Command::RegionRead).id(0x1f1).u64(offset).u32(region).u32(count)
}

/// Sends DEVICE_GET_INFO and a 4-byte REGION_READ of BAR0 offset 0, and asserts both succeed:
/// the connection is still in step and served.
pub fn assert_still_serving(conn: &RawConn, server: &ServerProcess, after: &str) {
    let info = device_info_request();
    let reply = conn
        .request(&info, &[])
        .unwrap_or_else(|e| panic!("after {after}: DEVICE_GET_INFO got no reply: {e}\n{}", server.context()));
    assert!(
        reply.is_ok_reply() && reply.msg_id == info.msg_id && reply.cmd == 4 && reply.payload.len() == 16,
        "after {after}: DEVICE_GET_INFO must succeed on the same connection, got {reply:?}\n{}",
        server.context()
    );
    let read = region_read_request(0, 0, 4);
    let reply = conn
        .request(&read, &[])
        .unwrap_or_else(|e| panic!("after {after}: REGION_READ got no reply: {e}\n{}", server.context()));
    assert!(
        reply.is_ok_reply() && reply.msg_id == read.msg_id && reply.cmd == 9 && reply.payload.len() == 20,
        "after {after}: REGION_READ of BAR0 must succeed on the same connection, got {reply:?}\n{}",
        server.context()
    );
}

/// A memfd of `len` bytes.
pub fn memfd(len: u64) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(c"vfu-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .unwrap_or_else(|e| panic!("memfd_create failed: {e}"));
    nix::unistd::ftruncate(&fd, i64::try_from(len).unwrap_or(i64::MAX))
        .unwrap_or_else(|e| panic!("ftruncate of a memfd to {len} failed: {e}"));
    fd
}

/// A non-blocking eventfd.
pub fn eventfd() -> OwnedFd {
    nix::sys::eventfd::EventFd::from_flags(
        nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
    )
    .unwrap_or_else(|e| panic!("eventfd failed: {e}"))
    .into()
}
