//! `miglab tap`: a transparent tap between any vfio-user client and any server, for debugging
//! a live conversation.
//!
//! The client connects to the tap's socket instead of the server's (QEMU's
//! `-device vfio-user-pci,socket=LISTEN`); the tap connects to the server for each client and
//! relays every message with its fds, both ways, unchanged: it is the fault proxy
//! ([`crate::proxy`]) without faults, and adds nothing of its own. As messages pass it
//!
//! - records them in the trace format `miglab trace` reads (`--trace`), each client a session
//!   `conn1`, `conn2`, ..., connection events as `note` lines and findings as `finding` lines,
//!   after a first `tap` line that dates the trace (`unix_us`);
//! - writes them as pcapng for Wireshark (`--pcapng`, see [`crate::trace::pcapng`]);
//! - prints them decoded, as `miglab trace` shows them (unless `--quiet`);
//! - judges every reply with the protocol model in passive mode ([`crate::model`], "Passive
//!   judging"): a reply the specification does not admit is a finding, printed at once and
//!   counted in the summary. The model learns the device from the replies it sees, and a new
//!   server process behind the socket gets a fresh one.
//!
//! Payloads longer than the snap length (`--snaplen`, 4096 bytes by default, 0 for no limit)
//! are kept in part in the trace and the capture, with their whole length and hash; the relay
//! always forwards them whole.
//!
//! # Limitations
//!
//! Those of the proxy: a twin socket the server passes in VERSION reaches the client as it
//! is, so the server-initiated messages on it bypass the tap (it notes the twin socket when
//! it passes); a message above 64 MiB is relayed as its header and zeros. A tap stopped by
//! SIGINT or SIGTERM closes the connections it relays.

mod judge;
mod recorder;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use crate::proxy::{Proxy, ProxyError, ProxyHandle, ProxyOptions};
use crate::trace::pcapng::PcapngWriter;
use crate::trace::{DecodeOptions, Decoding};

use recorder::{Outputs, Recorder};

/// Payload bytes kept of each message in the trace and the capture unless told otherwise.
pub const DEFAULT_SNAPLEN: usize = 4096;

/// The exit status of `miglab tap` when the model raised findings.
pub const EXIT_FINDINGS: u8 = 3;

/// What to tap and where to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOptions {
    /// The socket clients connect to.
    pub listen: PathBuf,
    /// The server's socket.
    pub server: PathBuf,
    /// Where to write the trace (JSON lines).
    pub trace: Option<PathBuf>,
    /// Where to write the capture (pcapng).
    pub pcapng: Option<PathBuf>,
    /// Print only findings, connection problems and the summary.
    pub quiet: bool,
    /// Payload bytes kept of each message (0: all).
    pub snaplen: usize,
    /// Hex bytes of data payloads shown.
    pub payload_bytes: usize,
}

impl TapOptions {
    /// Tapping `listen` to `server`, printing, writing no file.
    pub fn new(listen: impl Into<PathBuf>, server: impl Into<PathBuf>) -> Self {
        Self {
            listen: listen.into(),
            server: server.into(),
            trace: None,
            pcapng: None,
            quiet: false,
            snaplen: DEFAULT_SNAPLEN,
            payload_bytes: crate::trace::DEFAULT_PAYLOAD_BYTES,
        }
    }
}

/// Why the tap could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The listening socket could not be set up.
    #[error("listening on {path}")]
    Listen {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: ProxyError,
    },
    /// An output file could not be created.
    #[error("creating {path}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing the trace or the capture failed (the relay went on without it).
    #[error("{0}")]
    Write(String),
    /// Setting up the signal handling failed.
    #[error("handling SIGINT and SIGTERM")]
    Signals(#[source] io::Error),
}

/// Something the caller of a running tap waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapEvent {
    /// A connection is over (both its directions ended, or the server could not be reached
    /// for it); connections count from 0.
    ConnectionOver(u64),
    /// A signal asked the tap to stop.
    Signal(i32),
}

/// Counts of what passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Clients relayed.
    pub connections: u64,
    /// Clients for which the server could not be reached.
    pub unreachable: u64,
    /// Messages from clients.
    pub to_server: u64,
    /// Messages from the server.
    pub to_client: u64,
    /// Messages the codec found malformed (relayed anyway).
    pub malformed: u64,
}

/// A reply the model did not admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The connection (`conn1`, ...).
    pub session: String,
    /// What the model found.
    pub text: String,
}

/// What a tap saw, when it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSummary {
    /// Counts.
    pub stats: TapStats,
    /// The findings, in the order they were made.
    pub findings: Vec<Finding>,
}

impl fmt::Display for TapSummary {
    /// `tap: 2 clients, 616 messages (...)`, then a line per finding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "tap: {} client(s), {} messages ({} to the server, {} to the client), {} malformed",
            s.connections,
            s.to_server + s.to_client,
            s.to_server,
            s.to_client,
            s.malformed
        )?;
        if s.unreachable != 0 {
            write!(f, ", {} client(s) the server could not take", s.unreachable)?;
        }
        writeln!(f, "; {} finding(s)", self.findings.len())?;
        for x in &self.findings {
            writeln!(f, "  {}: {}", x.session, x.text)?;
        }
        Ok(())
    }
}

/// A running tap.
pub struct Tap {
    proxy: ProxyHandle,
    recorder: Arc<Recorder>,
    events: Receiver<TapEvent>,
    sender: Sender<TapEvent>,
}

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tap").field("listen", &self.proxy.path()).finish_non_exhaustive()
    }
}

fn create(path: &Path) -> Result<Box<dyn Write + Send>, TapError> {
    let file = File::create(path).map_err(|source| TapError::Create { path: path.to_owned(), source })?;
    Ok(Box::new(BufWriter::new(file)))
}

impl Tap {
    /// Listens on `options.listen`, printing to `screen`.
    pub fn start(options: &TapOptions, screen: Box<dyn Write + Send>) -> Result<Tap, TapError> {
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let trace = options.trace.as_deref().map(create).transpose()?;
        let pcapng = match options.pcapng.as_deref() {
            Some(path) => {
                let mut w = PcapngWriter::new(create(path)?)
                    .map_err(|source| TapError::Create { path: path.to_owned(), source })?;
                w.set_clock(unix_us);
                Some(w)
            }
            None => None,
        };
        let decoding =
            Decoding::new(DecodeOptions { payload_bytes: options.payload_bytes, ..DecodeOptions::default() });
        let (sender, events) = channel();
        let outputs = Outputs { screen, trace, pcapng };
        let recorder = Arc::new(Recorder::new(outputs, decoding, options.quiet, options.snaplen, sender.clone()));
        recorder.event(
            "tap",
            &[
                ("listen", options.listen.display().to_string().into()),
                ("server", options.server.display().to_string().into()),
                ("unix_us", unix_us.into()),
            ],
        );
        let proxy = Proxy::start_observed(
            &options.listen,
            &options.server,
            Vec::new(),
            ProxyOptions::default(),
            recorder.clone(),
        )
        .map_err(|source| TapError::Listen { path: options.listen.clone(), source })?;
        Ok(Tap { proxy, recorder, events, sender })
    }

    /// The socket clients connect to.
    pub fn path(&self) -> &Path {
        self.proxy.path()
    }

    /// What the tap tells its caller: connections that are over, and what others send
    /// through [`Tap::sender`].
    pub fn events(&self) -> &Receiver<TapEvent> {
        &self.events
    }

    /// A sender of events to whoever waits on [`Tap::events`] (a signal handler's, say).
    pub fn sender(&self) -> Sender<TapEvent> {
        self.sender.clone()
    }

    /// What passed so far.
    pub fn summary(&self) -> TapSummary {
        let (stats, findings, _) = self.recorder.summary();
        TapSummary { stats, findings }
    }

    /// Stops listening, closes the connections still relayed, flushes the files and returns
    /// what passed; the summary is also returned when a file could not be written.
    pub fn stop(mut self) -> (TapSummary, Result<(), TapError>) {
        self.proxy.stop();
        let written = self.recorder.finish().map_err(TapError::Write);
        (self.summary(), written)
    }
}

/// `miglab tap`: taps until SIGINT or SIGTERM (or, with `once`, until the first client is
/// gone), printing to standard output, then prints the summary there.
pub fn run(options: &TapOptions, once: bool) -> Result<TapSummary, TapError> {
    // Blocked before any thread starts, so every thread inherits the mask and the signals
    // wait for the one thread that takes them.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.thread_block().map_err(|e| TapError::Signals(e.into()))?;
    let tap = Tap::start(options, Box::new(io::stdout()))?;
    let to_tap = tap.sender();
    std::thread::Builder::new()
        .name("tap-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                let _ = to_tap.send(TapEvent::Signal(sig as i32));
            }
        })
        .map_err(TapError::Signals)?;
    println!("tap: listening on {} for {}", tap.path().display(), options.server.display());
    loop {
        match tap.events().recv() {
            Ok(TapEvent::ConnectionOver(_)) if once => break,
            Ok(TapEvent::ConnectionOver(_)) => {}
            Ok(TapEvent::Signal(_)) | Err(_) => break,
        }
    }
    let (summary, written) = tap.stop();
    print!("{summary}");
    let _ = io::stdout().flush();
    written.map(|()| summary)
}
