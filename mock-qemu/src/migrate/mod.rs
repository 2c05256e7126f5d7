//! The migration driver: QEMU's VFIO pre-copy flow (hw/vfio/migration.c, carried over
//! vfio-user messages), moving a running device and its guest RAM from a source server to a
//! destination server through a framed, checksummed stream.
//!
//! [`Source`] and [`Destination`] each own one client and one guest and talk only through the
//! stream, so they can run in one process (threads, an in-process pipe) or in two (a UNIX
//! socket or TCP). [`migrate`] runs both in this process and, as QEMU's return path does,
//! resumes the source when the destination refuses to start.

mod destination;
mod device;
mod iteration;
mod pair;
mod source;
mod split;
mod stats;
mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use destination::{Destination, DestinationDone};
pub use device::{StateChangeError, set_state, set_state_or_reset};
pub use iteration::{Iteration, RATE_LIMIT_WINDOW};
pub use pair::{PairError, PairOptions, PairReport, SharedTrace, migrate_between};
pub use source::{Source, SourceDone};
pub use split::{Digests, IncomingReport, OutgoingReport, StreamAddr, digests, incoming, outgoing};
pub use stats::{MigrationStats, RoundStats};
pub use workload::StandardWorkload;

use crate::client::{Client, ClientError};
use crate::guest::{Guest, GuestError};
use crate::stream::{StreamError, StreamReader, StreamWriter};

/// What keeps the guest busy during pre-copy: vCPU writes and device DMA.
///
/// It is also told what the source does (its phases and each dirty sync with the device's
/// reports as they came back), so that a test harness can hold every report against the
/// pages its workload wrote.
pub trait Workload {
    /// One step of work on the source, between two reads of device data.
    fn step(&mut self, client: &mut Client, guest: &Guest) -> Result<(), String>;

    /// Dirty logging has just started on the source (the START reply came back).
    fn logging_started(&mut self, _client: &mut Client) {}

    /// A dirty sync of the source is about to ask for its reports.
    fn sync_starting(&mut self, _client: &mut Client) {}

    /// A dirty sync of the source: the device's DMA_LOGGING_REPORT of each RAM region.
    fn dirty_synced(&mut self, _client: &mut Client, _sync: &DirtySync<'_>) {}

    /// The source entered a phase of the migration.
    fn phase(&mut self, _client: &mut Client, _phase: Phase) {}
}

/// One dirty sync of the source, as [`Workload::dirty_synced`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct DirtySync<'a> {
    /// The pre-copy round (from 1), or `None` for the final sync after the device stopped.
    pub round: Option<u32>,
    /// Page size of the reports (bit `i` of a report is page `iova + i * page_size`).
    pub page_size: u64,
    /// Each report: the range asked for, `(iova, length)`, and the bitmap the server returned.
    pub reports: &'a [DirtyReport],
}

/// One DMA_LOGGING_REPORT: the range asked for and the bitmap that came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyReport {
    /// First address of the range.
    pub iova: u64,
    /// Length of the range in bytes.
    pub length: u64,
    /// The bitmap words as the server returned them.
    pub bitmap: Vec<u64>,
}

/// Phases of the source, as [`Workload::phase`] sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A round starts: 0 is the first pass over RAM, then the pre-copy rounds.
    RoundStart(u32),
    /// A round ended.
    RoundEnd(u32),
    /// The vCPUs stop: stop-and-copy begins.
    Switchover,
}

/// Tunables of a migration.
#[derive(Debug, Clone)]
pub struct MigrationParams {
    /// Most pre-copy rounds before switching over anyway.
    pub max_rounds: u32,
    /// Bandwidth for the switchover budget, bytes per second; `None` measures each round's.
    pub bandwidth: Option<u64>,
    /// Downtime the switchover budget allows.
    pub downtime: Duration,
    /// Bytes asked for by each MIG_DATA_READ (bounded by the server's `max_data_xfer_size`);
    /// QEMU's `data_buffer_size`. Any size works: the device's stream is cut anywhere.
    pub read_size: u32,
    /// How much device data each pre-copy iteration reads.
    pub iteration: Iteration,
    /// Use PRE_COPY when the device offers it (false: RUNNING→STOP→STOP_COPY at switchover).
    pub use_pre_copy: bool,
    /// Bound on device data in one phase, so a device that never ends a round fails.
    pub max_device_bytes: u64,
    /// Start the destination's guest once the stream is in (RESUMING→RUNNING); false holds
    /// the device in STOP instead (QEMU's `-S`), for a client that looks before it starts it.
    pub start_destination: bool,
}

impl Default for MigrationParams {
    fn default() -> Self {
        Self {
            max_rounds: 30,
            bandwidth: None,
            downtime: Duration::from_millis(300),
            read_size: 1 << 20,
            iteration: Iteration::default(),
            use_pre_copy: true,
            max_device_bytes: 64 << 30,
            start_destination: true,
        }
    }
}

impl MigrationParams {
    /// Bytes that fit the downtime after `round`: bandwidth × downtime, with the bandwidth
    /// measured from the round itself when none is set.
    pub fn budget_bytes(&self, round: &RoundStats) -> u64 {
        let bandwidth = self.bandwidth.unwrap_or_else(|| {
            let bytes = round.device_bytes + round.pages_sent * crate::guest::PAGE_SIZE;
            bytes.saturating_mul(1_000_000).checked_div(round.micros).unwrap_or(u64::MAX)
        });
        (bandwidth as u128 * self.downtime.as_micros() / 1_000_000).min(u128::from(u64::MAX)) as u64
    }
}

/// Cancels a migration from another thread; checked between steps.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks the migration to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether cancel was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The source device does not answer GET MIGRATION.
    #[error("the device is not migratable")]
    NotMigratable(#[source] ClientError),
    /// The device's migration flags lack STOP_COPY.
    #[error("the device's migration flags {flags:#x} lack STOP_COPY")]
    NoStopCopy {
        /// The flags.
        flags: u64,
    },
    /// The device has no dirty-page logging.
    #[error("the device has no DMA dirty-page logging")]
    NoDirtyTracking(#[source] ClientError),
    /// A request failed.
    #[error("a request failed")]
    Client(#[source] ClientError),
    /// A state change failed.
    #[error(transparent)]
    State(#[from] StateChangeError),
    /// The stream failed or is damaged.
    #[error("the migration stream failed")]
    Stream(#[from] StreamError),
    /// Guest RAM could not be read or written.
    #[error("guest RAM access failed")]
    Guest(#[source] GuestError),
    /// The workload failed.
    #[error("the workload failed: {0}")]
    Workload(String),
    /// The device kept producing data past the bound.
    #[error("the device produced {bytes} bytes in one phase without a short read")]
    EndlessStream {
        /// Bytes read.
        bytes: u64,
    },
    /// Cancelled.
    #[error("the migration was cancelled")]
    Cancelled,
    /// The source gave up and said why.
    #[error("the source aborted: {reason}")]
    SourceAborted {
        /// The source's reason.
        reason: String,
    },
    /// The destination's device refused the state on the way to RUNNING.
    #[error("the destination refused the device state")]
    DestinationRefused(#[source] StateChangeError),
    /// The destination failed, so the source was resumed.
    #[error("the destination failed ({destination}); the source runs on")]
    DestinationFailed {
        /// What failed on the destination.
        destination: String,
    },
}

/// Both ends of one migration in this process.
pub struct Endpoints<'a> {
    /// Source client.
    pub source: &'a mut Client,
    /// Source guest.
    pub source_guest: &'a Guest,
    /// Destination client (moved to the destination's thread for the duration).
    pub destination: Client,
    /// Destination guest.
    pub destination_guest: Guest,
}

/// The result of [`migrate`]: the statistics, and the destination client back.
pub struct Migrated {
    /// Statistics, downtime included.
    pub stats: MigrationStats,
    /// The destination's client, its guest running.
    pub destination: Client,
    /// What the destination saw.
    pub loaded: DestinationDone,
}

/// A failed [`migrate`]: why, and the destination client back (unless its thread died).
pub struct Failed {
    /// Why.
    pub error: MigrationError,
    /// The destination's client.
    pub destination: Option<Box<Client>>,
}

impl std::fmt::Debug for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failed").field("error", &self.error).finish_non_exhaustive()
    }
}

/// Migrates from `ends.source` to `ends.destination` over the byte stream `(writer, reader)`:
/// the destination loads on its own thread while the source runs here. When the destination
/// fails, the source device is returned to RUNNING (the guest was never lost) and the error
/// says so.
pub fn migrate<W, R>(
    ends: Endpoints<'_>,
    params: &MigrationParams,
    workload: Option<&mut dyn Workload>,
    cancel: &CancelToken,
    writer: W,
    reader: R,
) -> Result<Migrated, Box<Failed>>
where
    W: std::io::Write,
    R: std::io::Read + Send + 'static,
{
    let Endpoints { source, source_guest, destination, destination_guest } = ends;
    let start = params.start_destination;
    let dest = std::thread::spawn(move || {
        let mut client = destination;
        let result = StreamReader::new(reader).map_err(MigrationError::from).and_then(|mut input| {
            Destination { client: &mut client, guest: &destination_guest, start }.run(&mut input)
        });
        (result, client)
    });
    let counted = Counting { inner: writer, bytes: 0 };
    let src_result = match StreamWriter::new(counted) {
        Ok(mut out) => {
            let workload = workload.map(|w| w as &mut dyn Workload);
            let done = Source { client: &mut *source, guest: source_guest, params, workload, cancel }.run(&mut out);
            let bytes = out.get_ref().bytes;
            // Dropping the writer ends the byte stream, whatever happened.
            drop(out);
            done.map(|mut d| {
                d.stats.stream_bytes = bytes;
                d
            })
        }
        Err(e) => Err(e.into()),
    };
    let Ok((dest_result, dest_client)) = dest.join() else {
        return Err(Box::new(Failed {
            error: MigrationError::DestinationFailed { destination: "its thread panicked".into() },
            destination: None,
        }));
    };
    match (src_result, dest_result) {
        (Ok(mut done), Ok(loaded)) => {
            let started = loaded.started_at.unwrap_or_else(std::time::Instant::now);
            done.stats.downtime_micros = started.saturating_duration_since(done.stopped_at).as_micros() as u64;
            Ok(Migrated { stats: done.stats, destination: dest_client, loaded })
        }
        // The source's stream broke because the destination hung up: the destination's
        // error is the cause (the source has already gone back to RUNNING).
        (Err(MigrationError::Stream(StreamError::Io(_))), Err(e)) => Err(Box::new(Failed {
            error: MigrationError::DestinationFailed { destination: format!("{e}: {}", error_chain(&e)) },
            destination: Some(Box::new(dest_client)),
        })),
        (Err(error), _) => Err(Box::new(Failed { error, destination: Some(Box::new(dest_client)) })),
        (Ok(_), Err(e)) => {
            tracing::warn!(error = %e, "the destination failed: resuming the source");
            if let Err(r) = set_state_or_reset(source, vfu_server::wire::MigState::Running) {
                tracing::error!(error = %r, "resuming the source device");
            }
            source_guest.set_vcpu_logging(false);
            Err(Box::new(Failed {
                error: MigrationError::DestinationFailed { destination: format!("{e}: {}", error_chain(&e)) },
                destination: Some(Box::new(dest_client)),
            }))
        }
    }
}

/// Counts the bytes of the migration stream on their way out.
pub(crate) struct Counting<W> {
    pub(crate) inner: W,
    pub(crate) bytes: u64,
}

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An error with its sources, one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
