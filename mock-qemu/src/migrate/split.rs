//! A migration whose two sides run in different processes, joined by a UNIX socket or TCP:
//! `mock-qemu incoming` listens for the stream and loads it into its server, `mock-qemu migrate
//! --to-stream` drives the source into it. Neither side sees the other's memory, so each prints
//! digests — of its guest RAM (the non-zero pages with their addresses) and, for a dma-engine,
//! of its device state — taken when the source stopped and when the destination started; equal
//! digests mean the destination equals the source.
//!
//! There is no return path: a source whose destination refuses the state learns it only from
//! the other process's exit status, and is left stopped (a single-process `migrate` resumes it).

use std::io::{BufReader, BufWriter};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use super::pair::{PairError, PairOptions, prepare_source, setup, side};
use super::{CancelToken, Destination, DestinationDone, MigrationStats, Source};
use crate::client::Client;
use crate::guest::dmae::DmaEngineDriver;
use crate::guest::{Guest, PAGE_SIZE};
use crate::stream::{StreamReader, StreamWriter};

/// Where the stream goes: `unix:PATH` or `tcp:HOST:PORT` (listening: `tcp:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAddr {
    /// A UNIX socket path.
    Unix(PathBuf),
    /// A TCP address; the host is ignored when listening (always 127.0.0.1).
    Tcp(String),
}

impl std::str::FromStr for StreamAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => Ok(Self::Unix(path.into())),
            Some(("tcp", addr)) if !addr.is_empty() => Ok(Self::Tcp(addr.into())),
            _ => Err(format!("{s:?}: expected unix:PATH or tcp:[HOST:]PORT")),
        }
    }
}

/// Digests of one side, comparable across processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    /// XXH3 over the non-zero guest pages and their addresses, in address order.
    pub ram: u64,
    /// XXH3 over a dma-engine's registers, config space, device memory and scratch memory.
    pub device: Option<u64>,
}

impl std::fmt::Display for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest RAM digest {:#018x}", self.ram)?;
        match self.device {
            Some(d) => write!(f, ", device state digest {d:#018x}"),
            None => write!(f, ", device state not digested (not a dma-engine)"),
        }
    }
}

/// Takes both digests of a side.
pub fn digests(client: &mut Client, guest: &Guest, dma_engine: bool) -> Result<Digests, String> {
    let mut h = Xxh3::new();
    let zero = vec![0u8; PAGE_SIZE as usize];
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for addr in guest.populated_pages().map_err(|e| e.to_string())? {
        guest.read(addr, &mut page).map_err(|e| e.to_string())?;
        if page != zero {
            h.update(&addr.to_le_bytes());
            h.update(&page);
        }
    }
    let device = if dma_engine {
        let s = DmaEngineDriver::snapshot(client).map_err(|e| e.to_string())?;
        let mut d = Xxh3::new();
        for (name, value) in &s.registers {
            d.update(name.as_bytes());
            d.update(&value.to_le_bytes());
        }
        for part in [&s.config, &s.devmem, &s.scratch] {
            d.update(&(part.len() as u64).to_le_bytes());
            d.update(part);
        }
        Some(d.digest())
    } else {
        None
    };
    Ok(Digests { ram: h.digest(), device })
}

/// The source side of a two-process migration.
#[derive(Debug)]
pub struct OutgoingReport {
    /// Statistics (the downtime is the destination's to know: 0 here).
    pub stats: MigrationStats,
    /// Digests at the moment the source stopped.
    pub digests: Digests,
}

/// Drives the source at `source` into the stream at `to`. The stream is connected first, so
/// a destination that is not listening yet fails this before the source is touched.
pub fn outgoing(source: &Path, to: &StreamAddr, options: &PairOptions) -> Result<OutgoingReport, PairError> {
    let stream: Box<dyn std::io::Write> = match to {
        StreamAddr::Unix(path) => {
            Box::new(crate::stream::transport::unix_connect(path).map_err(|e| setup("stream")(e.to_string()))?)
        }
        StreamAddr::Tcp(addr) => {
            let s = TcpStream::connect(addr).map_err(|e| setup("stream")(e.to_string()))?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
    };
    let (mut src, guest) = side(source, "source", options).map_err(setup("source"))?;
    let (mut workload, dma_engine) = prepare_source(&mut src, &guest, options)?;
    let counted = super::Counting { inner: BufWriter::new(stream), bytes: 0 };
    let mut out = StreamWriter::new(counted).map_err(|e| setup("stream")(e.to_string()))?;
    let cancel = CancelToken::default();
    let params = &options.params;
    let mut done = Source { client: &mut src, guest: &guest, params, workload: Some(&mut workload), cancel: &cancel }
        .run(&mut out)
        .map_err(PairError::Migration)?;
    done.stats.stream_bytes = out.get_ref().bytes;
    drop(out);
    let digests = digests(&mut src, &guest, dma_engine).map_err(setup("digest"))?;
    Ok(OutgoingReport { stats: done.stats, digests })
}

/// The destination side of a two-process migration.
#[derive(Debug)]
pub struct IncomingReport {
    /// What the destination loaded.
    pub loaded: DestinationDone,
    /// Digests once the guest started.
    pub digests: Digests,
}

/// Listens at `listen`, takes one stream and loads it into the destination at `destination`;
/// the guest starts only if the stream checked out and the device took its state.
pub fn incoming(destination: &Path, listen: &StreamAddr, options: &PairOptions) -> Result<IncomingReport, PairError> {
    let (mut dst, guest) = side(destination, "destination", options).map_err(setup("destination"))?;
    let input: Box<dyn std::io::Read + Send> = match listen {
        StreamAddr::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path).map_err(|e| setup("stream")(format!("{}: {e}", path.display())))?;
            let (s, _) = l.accept().map_err(|e| setup("stream")(e.to_string()))?;
            let _ = std::fs::remove_file(path);
            Box::new(s)
        }
        StreamAddr::Tcp(addr) => {
            let port = addr.rsplit(':').next().unwrap_or(addr);
            let l = TcpListener::bind(("127.0.0.1", port.parse::<u16>().map_err(|e| setup("stream")(e.to_string()))?))
                .map_err(|e| setup("stream")(e.to_string()))?;
            let (s, _) = l.accept().map_err(|e| setup("stream")(e.to_string()))?;
            Box::new(s)
        }
    };
    let mut reader = StreamReader::new(BufReader::new(input)).map_err(|e| setup("stream")(e.to_string()))?;
    let loaded =
        Destination { client: &mut dst, guest: &guest, start: true }.run(&mut reader).map_err(PairError::Migration)?;
    let dma_engine = DmaEngineDriver::snapshot(&mut dst).is_ok();
    let digests = digests(&mut dst, &guest, dma_engine).map_err(setup("digest"))?;
    Ok(IncomingReport { loaded, digests })
}
