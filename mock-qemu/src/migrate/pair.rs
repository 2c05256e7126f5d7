//! A whole migration between two servers, as `mock-qemu migrate` runs it: both guests built
//! and mapped, the device primed with data, a seeded workload during pre-copy, the migration,
//! and the verdict — the destination's guest RAM page by page and its device state field by
//! field against the source's at the moment it stopped.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{CancelToken, Endpoints, MigrationError, MigrationParams, MigrationStats, StandardWorkload, migrate};
use crate::client::{Client, ClientOptions, TraceOptions};
use crate::guest::dmae::{DmaCommand, DmaEngineDriver, Status};
use crate::guest::{Guest, PAGE_SIZE};
use crate::stream::transport::{Transport, connected_pair};

/// Options of a migration between two servers.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// Guest RAM, laid out like a PC.
    pub ram: u64,
    /// Seed of the workload.
    pub seed: u64,
    /// vCPU page writes per workload step.
    pub vcpu_writes: usize,
    /// Device DMA commands per workload step (dma-engine only).
    pub dma_per_step: usize,
    /// The migration's tunables.
    pub params: MigrationParams,
    /// What carries the migration stream.
    pub transport: Transport,
    /// Client options of both sides (timeout, strict mode, twin socket).
    pub client: ClientOptions,
    /// Where to write both sides' messages as JSON lines (sessions "source" and "destination").
    pub trace: Option<SharedTrace>,
    /// Whether trace lines carry timestamps (false: identical runs give identical traces).
    pub trace_timestamps: bool,
    /// Region writes `(region, offset, bytes)` made on the source device before the migration,
    /// for devices that need setting up by their guest driver first.
    pub device_writes: Vec<(u32, u64, Vec<u8>)>,
    /// Device region ranges `(region, offset, len)` compared between the stopped source and
    /// the running destination, for devices whose state is plain memory in a region (a
    /// dma-engine's state is compared field by field anyway).
    pub compare_regions: Vec<(u32, u64, u32)>,
}

/// One trace file written by both sides' clients.
#[derive(Clone)]
pub struct SharedTrace(Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedTrace {
    /// A trace into `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self(Arc::new(Mutex::new(out)))
    }
}

impl std::fmt::Debug for SharedTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTrace")
    }
}

impl Write for SharedTrace {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            ram: 256 << 20,
            seed: 1,
            vcpu_writes: 16,
            dma_per_step: 2,
            params: MigrationParams::default(),
            transport: Transport::Pipe,
            client: ClientOptions::with_timeout(Duration::from_secs(10)),
            trace: None,
            trace_timestamps: true,
            device_writes: Vec::new(),
            compare_regions: Vec::new(),
        }
    }
}

/// What a migration between two servers ended with.
#[derive(Debug)]
pub struct PairReport {
    /// The statistics.
    pub stats: MigrationStats,
    /// Guest pages whose bytes differ between destination and source (empty when migrated).
    pub ram_diff: Vec<u64>,
    /// Device state fields that differ (empty when migrated).
    pub device_diff: Vec<String>,
    /// Whether the device state was compared: a dma-engine's always, another device's by the
    /// regions [`PairOptions::compare_regions`] names.
    pub device_compared: bool,
    /// Guest pages the vCPUs wrote during pre-copy.
    pub vcpu_pages: usize,
    /// Guest pages the device wrote during pre-copy.
    pub device_pages: usize,
    /// Strict mode's findings, both sides.
    pub findings: Vec<crate::client::Finding>,
}

impl PairReport {
    /// Whether the destination equals the source.
    pub fn equal(&self) -> bool {
        self.ram_diff.is_empty() && self.device_diff.is_empty()
    }
}

/// Why a migration between two servers could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// Setting up a side failed.
    #[error("setting up the {side}: {what}")]
    Setup {
        /// "source" or "destination".
        side: &'static str,
        /// What failed.
        what: String,
    },
    /// The migration failed (the source runs on).
    #[error("the migration failed")]
    Migration(#[source] MigrationError),
}

pub(super) fn setup(side: &'static str) -> impl Fn(String) -> PairError {
    move |what| PairError::Setup { side, what }
}

/// Connects to both servers, runs a migration with a workload, and compares the two sides.
pub fn migrate_between(
    source: &Path,
    destination: &Path,
    options: &PairOptions,
    cancel: &CancelToken,
) -> Result<PairReport, PairError> {
    let (mut src, src_guest) = side(source, "source", options).map_err(setup("source"))?;
    let (mut dst, dst_guest) = side(destination, "destination", options).map_err(setup("destination"))?;
    let (mut workload, is_dma_engine) = prepare_source(&mut src, &src_guest, options)?;
    let (writer, reader) = connected_pair(&options.transport).map_err(|e| setup("stream")(e.to_string()))?;
    let ends = Endpoints {
        source: &mut src,
        source_guest: &src_guest,
        destination: dst,
        destination_guest: dst_guest.clone(),
    };
    let migrated = migrate(ends, &options.params, Some(&mut workload), cancel, writer, reader)
        .map_err(|f| PairError::Migration(f.error))?;
    dst = migrated.destination;
    let ram_diff = dst_guest.diff_pages(&src_guest).map_err(|e| setup("comparison")(e.to_string()))?;
    let device_compared = is_dma_engine || !options.compare_regions.is_empty();
    let mut device_diff = if is_dma_engine {
        match (DmaEngineDriver::snapshot(&mut src), DmaEngineDriver::snapshot(&mut dst)) {
            (Ok(a), Ok(b)) => b.differences(&a),
            (Err(e), _) | (_, Err(e)) => vec![format!("device snapshot failed: {e}")],
        }
    } else {
        Vec::new()
    };
    for &(region, offset, len) in &options.compare_regions {
        device_diff.extend(compare_region(&mut src, &mut dst, region, offset, len));
    }
    let mut findings = src.take_findings();
    findings.extend(dst.take_findings());
    Ok(PairReport {
        findings,
        stats: migrated.stats,
        ram_diff,
        device_diff,
        device_compared,
        vcpu_pages: workload.vcpu_pages.len(),
        device_pages: workload.device_pages.len(),
    })
}

/// Reads `region` at `offset..offset+len` from both sides in one request each (a device may
/// treat split reads differently) and names the byte ranges that differ.
fn compare_region(src: &mut Client, dst: &mut Client, region: u32, offset: u64, len: u32) -> Vec<String> {
    let (a, b) = match (src.region_read(region, offset, len), dst.region_read(region, offset, len)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) => return vec![format!("region {region} {offset:#x}+{len:#x}: reading the source failed: {e}")],
        (_, Err(e)) => {
            return vec![format!("region {region} {offset:#x}+{len:#x}: reading the destination failed: {e}")];
        }
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < a.len() {
        if a.get(at) == b.get(at) {
            at += 1;
            continue;
        }
        let start = at;
        while at < a.len() && a.get(at) != b.get(at) {
            at += 1;
        }
        out.push(format!("region {region} bytes {:#x}..{:#x} differ", offset + start as u64, offset + at as u64));
    }
    out
}

/// Sets the source up before a migration: the device writes asked for, and a dma-engine put
/// to work (its memory primed from guest RAM, then commands throughout pre-copy). Returns the
/// workload and whether the device is a dma-engine.
pub(super) fn prepare_source(
    src: &mut Client,
    guest: &Guest,
    options: &PairOptions,
) -> Result<(StandardWorkload, bool), PairError> {
    for (region, offset, bytes) in &options.device_writes {
        src.region_write(*region, *offset, bytes)
            .map_err(|e| setup("source")(format!("writing region {region} at {offset:#x}: {e}")))?;
    }
    let driver = match DmaEngineDriver::attach(src) {
        Ok(mut d) => {
            prime(src, &mut d, guest, options.seed).map_err(setup("source"))?;
            Some(d)
        }
        Err(e) => {
            tracing::info!(error = %e, "not a dma-engine: no device workload");
            None
        }
    };
    let is_dma_engine = driver.is_some();
    let window = (0, options.ram.min(guest.regions().first().map_or(0, |r| r.len)));
    Ok((StandardWorkload::new(options.seed, window, options.vcpu_writes, driver, options.dma_per_step), is_dma_engine))
}

/// One side: a client and a PC guest mapped into its server.
pub(super) fn side(socket: &Path, name: &str, options: &PairOptions) -> Result<(Client, Guest), String> {
    let mut client = Client::connect(socket, options.client.timeout).map_err(|e| e.to_string())?;
    client.set_strict(options.client.strict);
    if let Some(trace) = &options.trace {
        let trace_options = TraceOptions { session: name.into(), timestamps: options.trace_timestamps };
        client.set_trace_with(Box::new(trace.clone()), trace_options);
    }
    client.negotiate(&options.client.capabilities).map_err(|e| e.to_string())?;
    let guest = Guest::pc(options.ram).map_err(|e| e.to_string())?;
    guest.map_into(&mut client).map_err(|e| e.to_string())?;
    client.set_dma_service(guest.dma_service());
    Ok((client, guest))
}

/// Gives the device and the guest some state before the migration: a filled stretch of RAM,
/// copied into the first half of device memory.
fn prime(client: &mut Client, driver: &mut DmaEngineDriver, guest: &Guest, seed: u64) -> Result<(), String> {
    let len = (driver.devmem_size() / 2).min(guest.ram_size() / 2).max(PAGE_SIZE) / PAGE_SIZE * PAGE_SIZE;
    for cmd in [DmaCommand::fill(0, len, seed), DmaCommand::copy_to_device(0, 0, len)] {
        match driver.run(client, &cmd).map_err(|e| e.to_string())? {
            Status::Ok => {}
            other => return Err(format!("priming the device: {cmd:?} ended {other:?}")),
        }
    }
    Ok(())
}
