//! Byte streams to carry a migration: an in-process pipe, a UNIX socket, TCP on loopback.
//!
//! The destination listens ([`UnixIncoming`], [`TcpIncoming`]) and reads; the source connects
//! ([`unix_connect`], [`tcp_connect`]) and writes. [`connected_pair`] sets up either end of any
//! [`Transport`] in one process, for tests and an in-process harness.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use vfu_server::codec::enlarge_send_buffer;

/// The source's end of a connected transport.
pub type BoxedWrite = Box<dyn Write + Send>;
/// The destination's end of a connected transport.
pub type BoxedRead = Box<dyn Read + Send>;

/// How long [`accept`](UnixIncoming::accept) sleeps between tries while it waits with a timeout.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// Which kind of byte stream carries a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// An in-process pipe ([`pipe`]).
    Pipe,
    /// A UNIX stream socket bound at this path.
    Unix(PathBuf),
    /// TCP on 127.0.0.1, on a port the system picks.
    Tcp,
}

/// An in-process pipe: (source end, destination end), a connected UNIX stream socket pair.
/// Dropping the source end is the end of the stream for the destination.
pub fn pipe() -> io::Result<(UnixStream, UnixStream)> {
    let (source, destination) = UnixStream::pair()?;
    // Each end is used one way only.
    source.shutdown(std::net::Shutdown::Read)?;
    destination.shutdown(std::net::Shutdown::Write)?;
    enlarge_send_buffer(&source);
    Ok((source, destination))
}

/// The destination's listening UNIX socket. The socket file is removed when this is dropped.
#[derive(Debug)]
pub struct UnixIncoming {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixIncoming {
    /// Listens at `path`, replacing a stale socket file there (but no other kind of file).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let stale_socket = fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_socket());
        if stale_socket {
            fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        Ok(Self { listener, path })
    }

    /// The path the source connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the source's connection, waiting at most `timeout` (for ever if `None`);
    /// [`io::ErrorKind::TimedOut`] if none came.
    pub fn accept(&self, timeout: Option<Duration>) -> io::Result<UnixStream> {
        let l = &self.listener;
        let stream = accept_within(timeout, |nb| l.set_nonblocking(nb), || l.accept().map(|(s, _)| s))?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

impl Drop for UnixIncoming {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Connects the source to a destination listening at `path`.
pub fn unix_connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(path)?;
    enlarge_send_buffer(&stream);
    Ok(stream)
}

/// The destination's listening TCP socket on 127.0.0.1.
#[derive(Debug)]
pub struct TcpIncoming {
    listener: TcpListener,
    port: u16,
}

impl TcpIncoming {
    /// Listens on 127.0.0.1 on a port the system picks; [`port`](Self::port) tells which.
    pub fn bind_loopback() -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        Ok(Self { listener, port })
    }

    /// The port the source connects to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the source connects to.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Accepts the source's connection, waiting at most `timeout` (for ever if `None`);
    /// [`io::ErrorKind::TimedOut`] if none came.
    pub fn accept(&self, timeout: Option<Duration>) -> io::Result<TcpStream> {
        let l = &self.listener;
        let stream = accept_within(timeout, |nb| l.set_nonblocking(nb), || l.accept().map(|(s, _)| s))?;
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Connects the source to a destination listening on 127.0.0.1:`port`, with Nagle off (the
/// writer flushes where the destination should see data at once).
pub fn tcp_connect(port: u16) -> io::Result<TcpStream> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Both ends of `transport`, connected in this process: (source end, destination end).
pub fn connected_pair(transport: &Transport) -> io::Result<(BoxedWrite, BoxedRead)> {
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    match transport {
        Transport::Pipe => {
            let (source, destination) = pipe()?;
            Ok((Box::new(source), Box::new(destination)))
        }
        Transport::Unix(path) => {
            let incoming = UnixIncoming::bind(path)?;
            let source = unix_connect(incoming.path())?;
            let destination = incoming.accept(Some(CONNECT_TIMEOUT))?;
            // The listener's drop removes the socket file; the connection stays.
            Ok((Box::new(source), Box::new(destination)))
        }
        Transport::Tcp => {
            let incoming = TcpIncoming::bind_loopback()?;
            let source = tcp_connect(incoming.port())?;
            let destination = incoming.accept(Some(CONNECT_TIMEOUT))?;
            Ok((Box::new(source), Box::new(destination)))
        }
    }
}

/// Retries a nonblocking `accept` until it yields a connection or `timeout` passes.
/// Accepts one connection, for ever (`None`) or within `timeout`: the listener is made
/// non-blocking for the wait and blocking again after it.
fn accept_within<S>(
    timeout: Option<Duration>,
    set_nonblocking: impl Fn(bool) -> io::Result<()>,
    mut accept: impl FnMut() -> io::Result<S>,
) -> io::Result<S> {
    let Some(timeout) = timeout else { return accept() };
    set_nonblocking(true)?;
    let accepted = poll_accept(timeout, &mut accept);
    set_nonblocking(false)?;
    accepted
}

fn poll_accept<S>(timeout: Duration, mut accept: impl FnMut() -> io::Result<S>) -> io::Result<S> {
    let deadline = Instant::now() + timeout;
    loop {
        match accept() {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no migration source connected in time"));
                }
                thread::sleep(ACCEPT_POLL);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_times_out_when_no_source_connects() {
        let dir = tempfile::tempdir().unwrap();
        let unix = UnixIncoming::bind(dir.path().join("mig.sock")).unwrap();
        let err = unix.accept(Some(Duration::from_millis(30))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let tcp = TcpIncoming::bind_loopback().unwrap();
        assert_ne!(tcp.port(), 0);
        let err = tcp.accept(Some(Duration::from_millis(30))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn unix_socket_file_is_replaced_when_stale_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mig.sock");
        drop(UnixListener::bind(&path).unwrap()); // leaves a stale socket file
        let incoming = UnixIncoming::bind(&path).unwrap();
        assert!(path.exists());
        drop(incoming);
        assert!(!path.exists());
    }

    #[test]
    fn a_regular_file_in_the_way_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-socket");
        fs::write(&path, b"keep me").unwrap();
        assert!(UnixIncoming::bind(&path).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"keep me");
    }
}
