//! What the benchmarks share: the bare-socket baseline peer, run as a separate process like
//! the server it is compared with, and the server process itself.

// Each benchmark uses part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the environment of a benchmark binary re-run as the baseline peer:
/// "<request bytes>:<reply bytes>:<source bytes>".
const ECHO_ENV: &str = "VFU_BENCH_ECHO_PEER";

/// If this process was started as the baseline peer, serves on stdin (a socket) until EOF and
/// exits; otherwise returns.
pub fn maybe_run_echo_peer() {
    let Ok(spec) = std::env::var(ECHO_ENV) else { return };
    let sizes: Vec<usize> = spec.split(':').map(|s| s.parse().expect("a size")).collect();
    let [req, reply, source] = sizes[..] else { panic!("{ECHO_ENV} wants request:reply:source") };
    let fd = std::io::stdin().as_fd().try_clone_to_owned().expect("stdin is the socket");
    let mut sock = UnixStream::from(fd);
    let mut buf = vec![0u8; req];
    // Replies come from consecutive places of a `source`-byte buffer of real data, so a peer
    // standing in for a device with a large state reads that state from memory as the device
    // must, rather than resending one buffer that stays in cache.
    let data: Vec<u8> = (0..source.max(reply)).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut at = 0;
    while sock.read_exact(&mut buf).is_ok() {
        if at + reply > data.len() {
            at = 0;
        }
        if sock.write_all(&data[at..at + reply]).is_err() {
            break;
        }
        at += reply;
    }
    std::process::exit(0);
}

/// A peer process that answers every `request`-byte message with `reply` bytes, and our end
/// of the socketpair to it.
pub struct EchoPeer {
    child: Child,
    /// Our end.
    pub sock: UnixStream,
}

impl EchoPeer {
    /// Starts this benchmark binary again as the peer, its replies taken in turn from a
    /// `source`-byte buffer.
    pub fn spawn(request: usize, reply: usize, source: usize) -> Self {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let child = Command::new(std::env::current_exe().expect("own path"))
            .env(ECHO_ENV, format!("{request}:{reply}:{source}"))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .expect("baseline peer starts");
        Self { child, sock: ours }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// A `vfu-server` process, stopped with SIGTERM on drop.
pub struct Server(Child);

impl Server {
    /// Starts `vfu-server --socket <socket> <args>` and waits until it accepts connections.
    pub fn spawn(socket: &Path, args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_vfu-server"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("vfu-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "vfu-server did not listen on {} within 10 s", socket.display());
            std::thread::yield_now();
        }
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// The median of `v`.
pub fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}
