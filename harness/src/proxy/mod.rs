//! A fault-injecting vfio-user proxy between a client and a server.
//!
//! [`Proxy::start`] listens on a UNIX socket; for each client that connects it connects to the
//! server's socket and relays messages both ways, one thread per direction. It is
//! message-aware: it reads whole messages with their fds (SCM_RIGHTS) with the server's own
//! codec ([`vfu_server::codec::Connection`]) and forwards each with its fds, in order, in both
//! directions (the client's requests and its replies to DMA_READ / DMA_WRITE, the server's
//! replies and its DMA requests).
//!
//! Each [`ProxyFault`] names a direction, a command (or any) and an occurrence, and a
//! [`FaultAction`] to apply to that message: corrupt a header field or a payload byte,
//! truncate (then close, like a crash), duplicate, delay, reorder, drop or add fds, drop the
//! message or disconnect. Each fault fires once; [`ProxyHandle::fired`] lists what fired on
//! which message. Nothing inside is random: the harness chooses the faults (from its seed) and
//! the same traffic meets the same faults.
//!
//! An [`Observer`] ([`Proxy::start_observed`]) sees every connection start and end and every
//! message as it arrives; without faults the proxy is then a transparent tap (`miglab tap`).
//!
//! # Limitations
//!
//! - Messages the codec reports as malformed are relayed so the receiver frames the stream as
//!   the proxy did, but not always byte for byte: a header whose `msg_size` is below 16 is
//!   forwarded alone (the bytes after it are read as the next message, by the proxy and by the
//!   receiver alike); a message larger than [`ProxyOptions::max_msg_size`] (64 MiB + 64 KiB by
//!   default, above any limit of the server and mock-qemu) or with more fds than SCM_MAX_FD is
//!   forwarded as its header followed by `msg_size - 16` zero bytes, because the codec skips
//!   such bodies without keeping them. Fds that came with a malformed message are closed.
//!   Faults never fire on malformed messages.
//! - A message that the sender stops halfway (it closes mid-message) is not forwarded: the
//!   receiver sees EOF at the message boundary before it.
//! - A twin socket the server passes in VERSION (twin-socket mode) is forwarded like any fd,
//!   so traffic on it bypasses the proxy.
//! - Delay sleeps in the relay thread, so it delays everything after the message in the same
//!   direction of the same connection (order is kept).
#![forbid(unsafe_code)]

mod fault;
mod observe;
mod relay;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vfu_server::codec::{Connection, SCM_MAX_FDS};

pub use fault::{Direction, FaultAction, FiredFault, HeaderField, ProxyFault};
pub use observe::{DirectionEnd, Observer};

use fault::FaultBook;
use observe::Watch;
use relay::{DirCounters, Ends, Pump, Shared};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Something already exists at the listen path.
    #[error("listen path {path} already exists")]
    PathExists {
        /// The path.
        path: PathBuf,
    },
    /// Binding the listen socket failed.
    #[error("binding {path} failed")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A fault cannot fire.
    #[error("fault {index} is invalid: {why}")]
    InvalidFault {
        /// Its index in the list.
        index: usize,
        /// Why.
        why: &'static str,
    },
    /// Setting up the proxy's threads or wake-up pipe failed.
    #[error("starting the proxy failed")]
    Setup(#[source] io::Error),
}

/// Tunables of a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    /// Largest message relayed byte for byte; a larger one goes as its header and zeros (see
    /// the module's limitations). The proxy buffers one message per direction, so this bounds
    /// its memory.
    pub max_msg_size: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self { max_msg_size: (64 << 20) + (64 << 10) }
    }
}

/// Message counts of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Messages read from the sender (malformed ones included).
    pub received: u64,
    /// Messages written to the receiver (a duplicate counts twice, a truncated one once).
    pub forwarded: u64,
    /// Messages the codec reported as malformed (relayed as the module describes).
    pub malformed: u64,
}

/// Message counts of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client to server.
    pub to_server: DirectionStats,
    /// Server to client.
    pub to_client: DirectionStats,
    /// Client connections accepted.
    pub connections: u64,
}

impl ProxyStats {
    /// The counts of `dir`.
    pub fn direction(&self, dir: Direction) -> DirectionStats {
        match dir {
            Direction::ToServer => self.to_server,
            Direction::ToClient => self.to_client,
        }
    }
}

/// Starts proxies.
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// Listens on `listen_path` and relays each client that connects to the server listening
    /// on `server_path`, applying `faults`.
    pub fn start(
        listen_path: impl AsRef<Path>,
        server_path: impl AsRef<Path>,
        faults: Vec<ProxyFault>,
    ) -> Result<ProxyHandle, ProxyError> {
        Self::start_with(listen_path, server_path, faults, ProxyOptions::default())
    }

    /// [`Proxy::start`] with `options`.
    pub fn start_with(
        listen_path: impl AsRef<Path>,
        server_path: impl AsRef<Path>,
        faults: Vec<ProxyFault>,
        options: ProxyOptions,
    ) -> Result<ProxyHandle, ProxyError> {
        Self::start_inner(listen_path.as_ref(), server_path.as_ref(), faults, options, Watch::default())
    }

    /// [`Proxy::start_with`], with `observer` seeing every connection and message.
    pub fn start_observed(
        listen_path: impl AsRef<Path>,
        server_path: impl AsRef<Path>,
        faults: Vec<ProxyFault>,
        options: ProxyOptions,
        observer: Arc<dyn Observer>,
    ) -> Result<ProxyHandle, ProxyError> {
        Self::start_inner(listen_path.as_ref(), server_path.as_ref(), faults, options, Watch(Some(observer)))
    }

    fn start_inner(
        listen_path: &Path,
        server_path: &Path,
        faults: Vec<ProxyFault>,
        options: ProxyOptions,
        watch: Watch,
    ) -> Result<ProxyHandle, ProxyError> {
        if let Some(index) = faults.iter().position(|f| f.nth == 0) {
            return Err(ProxyError::InvalidFault { index, why: "nth counts from 1" });
        }
        let path = listen_path.to_path_buf();
        if path.symlink_metadata().is_ok() {
            return Err(ProxyError::PathExists { path });
        }
        let listener = UnixListener::bind(&path).map_err(|source| ProxyError::Bind { path: path.clone(), source })?;
        let cleanup = |e: io::Error| {
            let _ = std::fs::remove_file(&path);
            ProxyError::Setup(e)
        };
        listener.set_nonblocking(true).map_err(cleanup)?;
        let (wake_rx, wake_tx) = nix::unistd::pipe().map_err(|e| cleanup(e.into()))?;
        let shared = Arc::new(Shared {
            book: FaultBook::new(faults),
            to_server: DirCounters::default(),
            to_client: DirCounters::default(),
            max_msg_size: options.max_msg_size,
            watch,
            unanswered: std::sync::Mutex::new(None),
            renamed: std::sync::Mutex::new(Vec::new()),
        });
        let conns = Arc::new(Conns::default());
        let acceptor = Acceptor {
            listener,
            wake: wake_rx,
            server_path: server_path.to_path_buf(),
            shared: shared.clone(),
            conns: conns.clone(),
        };
        let accept =
            std::thread::Builder::new().name("proxy-accept".into()).spawn(move || acceptor.run()).map_err(cleanup)?;
        Ok(ProxyHandle { path, shared, conns, wake: Some(wake_tx), accept: Some(accept) })
    }
}

/// The connections of a proxy: their sockets (to close them) and relay threads (to join them).
#[derive(Debug, Default)]
struct Conns {
    accepted: AtomicU64,
    live: Mutex<Vec<Live>>,
}

/// One relayed connection: its sockets and its two relay threads.
type Live = (Arc<Ends>, Vec<JoinHandle<()>>);

/// The accepting thread.
struct Acceptor {
    listener: UnixListener,
    wake: OwnedFd,
    server_path: PathBuf,
    shared: Arc<Shared>,
    conns: Arc<Conns>,
}

impl Acceptor {
    fn run(self) {
        loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "proxy: poll failed; no more clients are accepted");
                    return;
                }
                Ok(_) => {}
            }
            if fds.get(1).and_then(PollFd::revents).is_some_and(|r| !r.is_empty()) {
                return;
            }
            let client = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "proxy: accept failed; no more clients are accepted");
                    return;
                }
            };
            if let Err(e) = self.serve(client) {
                tracing::warn!(error = %e, "proxy: could not relay a client");
            }
        }
    }

    /// Connects `client` to the server and starts its two relay threads.
    fn serve(&self, client: UnixStream) -> io::Result<()> {
        client.set_nonblocking(false)?;
        let connection = self.conns.accepted.fetch_add(1, Ordering::Relaxed);
        let server = connect_retrying(&self.server_path).inspect_err(|e| {
            self.shared.watch.with(|o| o.unreachable(connection, e));
        })?;
        let ends = Arc::new(Ends::new(client.try_clone()?, server.try_clone()?));
        self.shared.watch.with(|o| o.connected(connection, &server));
        let conn = |s: UnixStream| Connection::new(s, self.shared.max_msg_size, SCM_MAX_FDS);
        let pumps = [
            (Direction::ToServer, conn(client.try_clone()?), conn(server.try_clone()?)),
            (Direction::ToClient, conn(server), conn(client)),
        ];
        let mut threads = Vec::with_capacity(2);
        for (dir, src, dst) in pumps {
            let pump =
                Pump { dir, connection, src, dst, ends: ends.clone(), shared: self.shared.clone(), misframed: false };
            match std::thread::Builder::new()
                .name(format!("proxy-{connection}-{}", dir.name()))
                .spawn(move || pump.run())
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    ends.close();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        tracing::debug!(connection, "proxy: client connected and relayed");
        let mut live = self.conns.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|(_, ts)| !ts.iter().all(JoinHandle::is_finished));
        live.push((ends, threads));
        Ok(())
    }
}

/// Connects to the server, retrying a refused connection for a while: a server that has just
/// bound its socket may not listen yet.
fn connect_retrying(path: &Path) -> io::Result<UnixStream> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        match UnixStream::connect(path) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && std::time::Instant::now() < deadline => {
                // Nothing to wait on but time: the server's listen() is not observable.
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// A running proxy; [`ProxyHandle::stop`] (or dropping it) closes every connection, joins its
/// threads and removes the listen socket.
#[derive(Debug)]
pub struct ProxyHandle {
    path: PathBuf,
    shared: Arc<Shared>,
    conns: Arc<Conns>,
    wake: Option<OwnedFd>,
    accept: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The socket clients connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Arms one more fault, its occurrences counted from now (as the scenario's `fault` step
    /// says); returns its index in [`fired`](Self::fired) records. A fault with `nth` 0 never
    /// fires.
    pub fn arm(&self, fault: ProxyFault) -> usize {
        self.shared.book.arm(fault)
    }

    /// A pipe on which the proxy writes, from now on, the msg_id (16 bits little-endian) of
    /// each request whose reply it knows the client will never take: a request it dropped or
    /// held, made the server wait for bytes that never come (a larger `msg_size`), turned
    /// into NO_REPLY or into another command, or sent after the server's framing of the
    /// connection was lost; a reply it dropped, held, made the client wait for bytes of, or
    /// gave another command or type. For the client's `set_unanswered`:
    /// a fault only the proxy sees does not cost a reply timeout.
    /// A new call replaces the previous pipe (a new client numbers its requests from 1 again).
    pub fn unanswered(&self) -> io::Result<OwnedFd> {
        use nix::fcntl::OFlag;
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        *self.shared.unanswered.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(write);
        Ok(read)
    }

    /// The faults that fired so far, in firing order.
    pub fn fired(&self) -> Vec<FiredFault> {
        self.shared.book.fired()
    }

    /// Message counts so far.
    pub fn stats(&self) -> ProxyStats {
        let get = |c: &DirCounters| DirectionStats {
            received: c.received.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
        };
        ProxyStats {
            to_server: get(&self.shared.to_server),
            to_client: get(&self.shared.to_client),
            connections: self.conns.accepted.load(Ordering::Relaxed),
        }
    }

    /// Messages forwarded so far in `dir`.
    pub fn relayed(&self, dir: Direction) -> u64 {
        self.stats().direction(dir).forwarded
    }

    /// Stops accepting, closes every connection (both peers see EOF), joins every thread and
    /// removes the listen socket. Idempotent.
    pub fn stop(&mut self) {
        if let Some(wake) = self.wake.take() {
            match nix::unistd::write(&wake, &[1]) {
                Ok(_) => {
                    if let Some(t) = self.accept.take() {
                        let _ = t.join();
                    }
                }
                // Not joined: it would wait forever. It ends with the process.
                Err(e) => tracing::error!(error = %e, "proxy: waking the accept thread failed"),
            }
            let _ = std::fs::remove_file(&self.path);
        }
        let live = std::mem::take(&mut *self.conns.live.lock().unwrap_or_else(PoisonError::into_inner));
        for (ends, _) in &live {
            ends.close();
        }
        for (_, threads) in live {
            for t in threads {
                let _ = t.join();
            }
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
