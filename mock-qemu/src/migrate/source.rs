//! The source side: QEMU's VFIO pre-copy flow over vfio-user, with guest RAM.
//!
//! Setup: GET MIGRATION (STOP_COPY required), PROBE DMA_LOGGING_START, logging START over the
//! RAM ranges QEMU computes (one below 4 GiB, one above, holes included) at the host page size,
//! vCPU dirty logging on, `DEV_SETUP` and RUNNING→PRE_COPY, and every populated RAM page once.
//! Rounds (QEMU's iterations): the workload runs between reads; device data is read until a
//! short read, or only as much as the [`Iteration`](super::Iteration) allows (QEMU: one buffer
//! under the rate limit), leaving the rest for a later round or STOP_COPY; a dirty sync takes
//! DMA_LOGGING_REPORT per RAM region merged with the vCPU log and the pages the server wrote by
//! message; those pages are sent. Switchover when the estimated remaining data fits
//! `bandwidth × downtime` (vfio-user has no pre-copy size query, so the device's part is what
//! its last round returned: all there was after a short read, at least as much again after an
//! iteration cut short) or after `max_rounds`: the vCPUs stop, config space is read
//! (before the device stops), PRE_COPY→STOP_COPY (RUNNING→STOP→STOP_COPY without PRE_COPY),
//! data is read to the end of the stream, a final dirty sync sends the last pages, config space
//! follows, then `Complete`. Cleanup after switchover: STOP_COPY→STOP, logging STOP; a failure
//! there is recorded in the statistics and does not fail the migration, which has completed.
//!
//! Any failure, or a cancel, goes back the way QEMU does: the device to RUNNING (or reset if it
//! cannot be), logging stopped, vCPU logging off, an `Abort` section on the stream, and the
//! guest keeps running.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Instant;

use vfu_server::wire::{FEATURE_DMA_LOGGING_START, FEATURE_SET, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY, MigState};

use super::device::{set_state, set_state_or_reset};
use super::stats::{MigrationStats, RoundStats};
use super::{CancelToken, DirtyReport, DirtySync, MigrationError, MigrationParams, Phase, Workload};
use crate::client::Client;
use crate::guest::{Guest, PAGE_SIZE};
use crate::stream::{Section, StreamWriter};

/// Guest pages per RAM section of the stream.
const PAGES_PER_SECTION: usize = 256;

/// The source of a migration.
pub struct Source<'a> {
    /// The source's client.
    pub client: &'a mut Client,
    /// The source's guest.
    pub guest: &'a Guest,
    /// Migration parameters.
    pub params: &'a MigrationParams,
    /// What keeps running during pre-copy.
    pub workload: Option<&'a mut dyn Workload>,
    /// Cancels the migration between steps.
    pub cancel: &'a CancelToken,
}

/// What the source hands over after a successful stop-and-copy.
#[derive(Debug)]
pub struct SourceDone {
    /// Statistics so far (downtime completed by the caller).
    pub stats: MigrationStats,
    /// When the vCPUs stopped.
    pub stopped_at: Instant,
}

impl Source<'_> {
    /// Runs the source side, writing the migration stream to `out`.
    pub fn run<W: Write>(mut self, out: &mut StreamWriter<W>) -> Result<SourceDone, MigrationError> {
        let started = Instant::now();
        let mut stats = MigrationStats::default();
        match self.migrate(out, &mut stats, started) {
            Ok(stopped_at) => {
                stats.total_micros = started.elapsed().as_micros() as u64;
                Ok(SourceDone { stats, stopped_at })
            }
            Err(e) => {
                self.recover();
                let _ = out.write(&Section::Abort { reason: e.to_string() });
                Err(e)
            }
        }
    }

    /// Back to a running source: device RUNNING (or reset), logging off.
    fn recover(&mut self) {
        tracing::warn!("migration failed or cancelled: the source runs on");
        if let Err(e) = set_state_or_reset(self.client, MigState::Running) {
            tracing::error!(error = %e, "returning the source device to RUNNING");
        }
        if let Err(e) = self.client.dma_logging_stop() {
            tracing::warn!(error = %e, "stopping dirty logging");
        }
        self.guest.set_vcpu_logging(false);
    }

    fn check_cancel(&self) -> Result<(), MigrationError> {
        if self.cancel.is_cancelled() { Err(MigrationError::Cancelled) } else { Ok(()) }
    }

    fn migrate<W: Write>(
        &mut self,
        out: &mut StreamWriter<W>,
        stats: &mut MigrationStats,
        started: Instant,
    ) -> Result<Instant, MigrationError> {
        // Setup.
        let flags = self.client.migration_flags().map_err(MigrationError::NotMigratable)?;
        if flags & MIGRATION_STOP_COPY == 0 {
            return Err(MigrationError::NoStopCopy { flags });
        }
        let pre_copy = flags & MIGRATION_PRE_COPY != 0 && self.params.use_pre_copy;
        stats.pre_copy = pre_copy;
        self.client.probe(FEATURE_DMA_LOGGING_START, FEATURE_SET).map_err(MigrationError::NoDirtyTracking)?;
        let ranges = self.guest.logging_ranges();
        stats.log_page_size = self.client.dma_logging_start(PAGE_SIZE, &ranges).map_err(MigrationError::Client)?;
        if let Some(w) = self.workload.as_deref_mut() {
            w.logging_started(self.client);
        }
        self.guest.set_vcpu_logging(true);
        out.write(&Section::DeviceSetup)?;
        if pre_copy {
            set_state(self.client, MigState::PreCopy, MigState::Running)?;
        }
        out.write(&Section::DeviceEnd)?;

        // Round 0: every populated page of guest RAM.
        self.phase(Phase::RoundStart(0));
        let t0 = Instant::now();
        let bytes0 = out.bytes();
        let all: Vec<u64> = self.guest.populated_pages().map_err(MigrationError::Guest)?;
        let sent = self.send_pages(out, &all)?;
        out.write(&Section::RoundEnd { round: 0 })?;
        stats.rounds.push(RoundStats {
            round: 0,
            pages_sent: sent,
            micros: t0.elapsed().as_micros() as u64,
            stream_bytes: out.bytes() - bytes0,
            ..Default::default()
        });
        self.phase(Phase::RoundEnd(0));

        // Pre-copy rounds.
        let mut switchover = "max rounds";
        for round in 1..=self.params.max_rounds {
            self.check_cancel()?;
            self.phase(Phase::RoundStart(round));
            let t = Instant::now();
            let bytes0 = out.bytes();
            let mut r = RoundStats { round, ..Default::default() };
            if pre_copy {
                let (bytes, ended) = self.read_device(out, true)?;
                (r.device_bytes, r.device_pending) = (bytes, !ended);
            } else if let Some(w) = self.workload.as_deref_mut() {
                w.step(self.client, self.guest).map_err(MigrationError::Workload)?;
            }
            let (pages, dev, vcpu) = self.dirty_sync(Some(round))?;
            r.device_dirty_pages = dev;
            r.vcpu_dirty_pages = vcpu;
            r.pages_sent = self.send_pages(out, &pages)?;
            out.write(&Section::RoundEnd { round })?;
            self.phase(Phase::RoundEnd(round));
            r.micros = t.elapsed().as_micros() as u64;
            r.stream_bytes = out.bytes() - bytes0;
            // vfio-user has no pre-copy size query: the device's part of what remains is taken
            // to be what its last round returned.
            r.remaining_estimate = r.device_bytes + r.pages_sent * PAGE_SIZE;
            let budget = self.params.budget_bytes(&r);
            tracing::info!(
                round,
                device_bytes = r.device_bytes,
                pages = r.pages_sent,
                remaining = r.remaining_estimate,
                budget,
                "pre-copy round"
            );
            let fits = r.remaining_estimate <= budget;
            stats.rounds.push(r);
            if fits {
                switchover = "budget";
                break;
            }
        }
        stats.switchover = switchover.to_string();
        stats.pending_at_switchover = stats.rounds.last().is_some_and(|r| r.device_pending);
        self.check_cancel()?;

        // Switchover: the vCPUs stop; the device stops and its state is read to the end.
        self.phase(Phase::Switchover);
        let stopped_at = Instant::now();
        let bytes0 = out.bytes();
        // Config space is taken as the guest left it, before the device stops: QEMU saves its
        // own copy and never reads the device in STOP_COPY, where libvfio-user refuses region
        // access.
        let config = self
            .client
            .region_read(vfu_server::wire::PCI_CONFIG_REGION_INDEX, 0, 256)
            .map_err(MigrationError::Client)?;
        if pre_copy {
            set_state_or_reset(self.client, MigState::StopCopy)?;
        } else {
            set_state_or_reset(self.client, MigState::Stop)?;
            set_state(self.client, MigState::StopCopy, MigState::Stop)?;
        }
        stats.stop_copy_device_bytes = self.read_device(out, false)?.0;
        let (pages, _, _) = self.dirty_sync(None)?;
        stats.stop_copy_pages = self.send_pages(out, &pages)?;
        out.write(&Section::DeviceConfig(config))?;
        out.write(&Section::DeviceEnd)?;
        let complete = Section::Complete { sections: out.sections(), digest: out.digest() };
        out.write(&complete)?;
        stats.stop_copy_stream_bytes = out.bytes() - bytes0;
        stats.stop_copy_micros = stopped_at.elapsed().as_micros() as u64;

        // Cleanup after switchover, off the downtime path. The migration has completed (the
        // destination may already run the guest): a failure here is reported, not fatal.
        if let Err(e) = set_state_or_reset(self.client, MigState::Stop) {
            tracing::warn!(error = %e, "cleanup: STOP_COPY->STOP");
            stats.cleanup_error = Some(format!("STOP_COPY->STOP: {e}: {}", super::error_chain(&e)));
        }
        if let Err(e) = self.client.dma_logging_stop() {
            tracing::warn!(error = %e, "cleanup: logging STOP");
            stats.cleanup_error.get_or_insert(format!("logging STOP: {e}"));
        }
        self.guest.set_vcpu_logging(false);
        let _ = started;
        Ok(stopped_at)
    }

    /// Reads device data as DEV_DATA sections, then DEV_END: in pre-copy as much as one
    /// iteration allows, the workload running between reads; in STOP_COPY to the end of the
    /// stream, whatever pre-copy left unread first. Returns the bytes read and whether a short
    /// read ended the round (or the stream).
    fn read_device<W: Write>(
        &mut self,
        out: &mut StreamWriter<W>,
        running: bool,
    ) -> Result<(u64, bool), MigrationError> {
        let size = self.params.read_size.min(self.client.server_caps().max_data_xfer_size_or_default());
        let (mut total, mut reads) = (0u64, 0u32);
        let ended = loop {
            if running {
                if !self.params.iteration.may_read(reads, total) {
                    break false;
                }
                self.check_cancel()?;
                if let Some(w) = self.workload.as_deref_mut() {
                    w.step(self.client, self.guest).map_err(MigrationError::Workload)?;
                }
            }
            // The chunk goes into the stream from where the reply arrived.
            let written = self.client.mig_data_read_with(size, |data| {
                let written = if data.is_empty() { Ok(()) } else { out.write_device_data(data) };
                (data.len(), written)
            });
            let (n, written) = written.map_err(MigrationError::Client)?;
            written?;
            reads = reads.saturating_add(1);
            total += n as u64;
            let short = n < size as usize;
            if short {
                break true;
            }
            if total > self.params.max_device_bytes {
                return Err(MigrationError::EndlessStream { bytes: total });
            }
        };
        out.write(&Section::DeviceEnd)?;
        Ok((total, ended))
    }

    fn phase(&mut self, phase: Phase) {
        if let Some(w) = self.workload.as_deref_mut() {
            w.phase(self.client, phase);
        }
    }

    /// QEMU's dirty sync: a report per RAM region at the host page size, merged with the vCPU
    /// log and the pages the server wrote by message. Returns (pages, device's, vCPUs').
    fn dirty_sync(&mut self, round: Option<u32>) -> Result<(Vec<u64>, u64, u64), MigrationError> {
        let mut pages = BTreeSet::new();
        let mut device = 0;
        let mut reports = Vec::with_capacity(self.guest.regions().len());
        if let Some(w) = self.workload.as_deref_mut() {
            w.sync_starting(self.client);
        }
        for region in self.guest.regions() {
            let bitmap =
                self.client.dma_logging_report(region.iova, region.len, PAGE_SIZE).map_err(MigrationError::Client)?;
            for (w, word) in bitmap.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    let page = w as u64 * 64 + b;
                    if page * PAGE_SIZE < region.len {
                        pages.insert(region.iova + page * PAGE_SIZE);
                        device += 1;
                    }
                }
            }
            reports.push(DirtyReport { iova: region.iova, length: region.len, bitmap });
        }
        if let Some(w) = self.workload.as_deref_mut() {
            w.dirty_synced(self.client, &DirtySync { round, page_size: PAGE_SIZE, reports: &reports });
        }
        let vcpu = self.guest.take_vcpu_dirty();
        let vcpu_count = vcpu.len() as u64;
        pages.extend(vcpu);
        pages.extend(self.guest.take_message_dirty());
        Ok((pages.into_iter().collect(), device, vcpu_count))
    }

    /// Sends `pages` (guest addresses) in RAM sections; returns how many.
    fn send_pages<W: Write>(&mut self, out: &mut StreamWriter<W>, pages: &[u64]) -> Result<u64, MigrationError> {
        let mut buf = vec![0u8; PAGES_PER_SECTION * PAGE_SIZE as usize];
        for chunk in pages.chunks(PAGES_PER_SECTION) {
            self.guest.read_pages(chunk, &mut buf).map_err(MigrationError::Guest)?;
            let section: Vec<(u64, &[u8])> = chunk.iter().copied().zip(buf.chunks(PAGE_SIZE as usize)).collect();
            out.write_ram(&section)?;
        }
        Ok(pages.len() as u64)
    }
}
