//! The `migrate` step: mock-qemu's QEMU flow between the two sides, with the scenario's
//! workload as the oracle's eyes during pre-copy, then the outcome held against the
//! scenario's expectation and the destination against the source and the model.

use std::time::Duration;

use mock_qemu::Client;
use mock_qemu::guest::Guest;
use mock_qemu::guest::dmae::DmaEngineDriver;
use mock_qemu::migrate::{CancelToken, Endpoints, Iteration, MigrationError, MigrationParams, Phase, migrate};
use mock_qemu::stream::{FaultyWriter, Transport, connected_pair};
use vfu_server::wire::MigState;

use super::background::Start;
use super::workload::{HarnessWorkload, Mark};
use super::{Run, StepOutcome, Verification, index, rng_for};
use crate::profile::{Profile, Snapshot};
use crate::report::{EventKind, PageDiff};
use crate::scenario::model::{self as m, MigrateOutcome, MigrationErrorKind, Side, TransportKind};

/// Bandwidth assumed for the switchover budget when the scenario names none: a measured one
/// would make the number of rounds depend on the machine, and the run would not replay.
pub const NOMINAL_BANDWIDTH: u64 = 1 << 30;

/// How long a destination's writer may take to fault on a window it cannot write.
const WRITER_FAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pages whose bytes the report keeps, for hex diffs.
const PAGES_WITH_BYTES: usize = crate::report::MAX_PAGE_DIFFS;

/// Differing pages the report lists.
const PAGES_LISTED: usize = 4096;

fn kind_of(e: &MigrationError) -> MigrationErrorKind {
    use MigrationErrorKind as K;
    match e {
        MigrationError::NotMigratable(_) => K::NotMigratable,
        MigrationError::NoStopCopy { .. } => K::NoStopCopy,
        MigrationError::NoDirtyTracking(_) => K::NoDirtyTracking,
        MigrationError::Client(_) => K::Client,
        MigrationError::State(_) => K::State,
        MigrationError::Stream(_) => K::Stream,
        MigrationError::Guest(_) => K::Guest,
        MigrationError::Workload(_) => K::Workload,
        MigrationError::EndlessStream { .. } => K::EndlessStream,
        MigrationError::Cancelled => K::Cancelled,
        MigrationError::SourceAborted { .. } => K::SourceAborted,
        MigrationError::DestinationRefused(_) => K::DestinationRefused,
        MigrationError::DestinationFailed { .. } => K::DestinationFailed,
    }
}

fn kebab(k: MigrationErrorKind) -> String {
    let debug = format!("{k:?}");
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

impl Run<'_> {
    pub(super) fn migrate(&mut self, mg: &m::MigrateStep) -> StepOutcome {
        let (fi, ti) = (index(mg.from), index(mg.to));
        let spoilers = self.spoilers(mg);
        let src_guest = self.sides[fi].dev.guest.clone().ok_or("the source has no guest RAM")?;
        let dst_guest = self.sides[ti].dev.guest.clone().ok_or("the destination has no guest RAM")?;
        let mut src_client = self.sides[fi].client.take().ok_or("the source has no client")?;
        let Some(dst_client) = self.sides[ti].client.take() else {
            self.sides[fi].client = Some(src_client);
            return Err("the destination has no client".into());
        };
        // A device the harness does not shadow: what the guest can see of it now, which a
        // failed migration must leave as it was (nothing to hold it to if it cannot be read).
        let before =
            (!self.profile.shadowed()).then(|| device_snapshot(&*self.profile, &mut src_client).ok()).flatten();
        let background = match self.sides[fi].dev.shadow.writer {
            Some(carried) => Some(Start::Carried(carried)),
            None if self.options.concurrent => self
                .background_window(fi)
                .map_err(|why| {
                    self.event(Some(mg.from), EventKind::Note { text: format!("no background writer: {why}") })
                })
                .ok()
                .map(Start::New),
            None => None,
        };
        let exact = self.exact_reports(fi);
        let mut dev = std::mem::take(&mut self.sides[fi].dev);
        let ranges = src_guest.logging_ranges();
        if dev.dirty.predict_start(mock_qemu::guest::PAGE_SIZE, &ranges) == crate::oracle::Expected::Ok {
            dev.dirty.started(mock_qemu::guest::PAGE_SIZE, mock_qemu::guest::PAGE_SIZE, &ranges);
        }
        dev.dma_exclude = background.map(|b| b.params().window());
        let mut workload = HarnessWorkload::new(dev, self.scenario.workload.clone(), rng_for(self.seed, self.step, 2))?;
        workload.background_start = background;
        workload.tap = Some(self.sides[fi].tap.clone());
        workload.exact = exact;
        let cancel = CancelToken::default();
        if let Some(n) = mg.cancel_after_rounds {
            workload.cancel_after(n, cancel.clone());
        }
        for t in std::mem::take(&mut self.phase_triggers) {
            let trigger = match &t.fault {
                m::Fault::ClientDisconnect { at: Some(at), .. } | m::Fault::ServerKill { at: Some(at), .. } => *at,
                _ => continue,
            };
            let armed = if index(t.side) == fi {
                self.armed_on(&trigger, &t.fault, &src_client, fi)?
            } else if index(t.side) == ti {
                self.armed_on(&trigger, &t.fault, &dst_client, ti)?
            } else {
                self.armed(t.side, &trigger, &t.fault)?
            };
            workload.arm_at(t.mark, self.sides[index(t.side)].tap.clone(), armed);
        }
        let transport = match mg.transport {
            TransportKind::Pipe => Transport::Pipe,
            TransportKind::Unix => Transport::Unix(self.dir.path().join(format!("stream-{}.sock", self.step))),
            TransportKind::Tcp => Transport::Tcp,
        };
        let (writer, reader) = connected_pair(&transport).map_err(|e| format!("the migration stream: {e}"))?;
        let writer: Box<dyn std::io::Write + Send> = match self.stream_fault.take() {
            Some(f) => {
                self.event(Some(mg.from), EventKind::Fault { name: format!("stream {f:?}") });
                Box::new(FaultyWriter::new(writer, f))
            }
            None => writer,
        };
        let b = &mg.budget;
        let params = MigrationParams {
            max_rounds: b.max_rounds,
            bandwidth: Some(b.bandwidth.map_or(NOMINAL_BANDWIDTH, |s| s.bytes())),
            downtime: Duration::from_millis(b.downtime_ms),
            read_size: u32::try_from(mg.read_size.bytes()).unwrap_or(u32::MAX),
            iteration: mg.iteration.map_or_else(Iteration::default, |it| Iteration {
                reads: it.reads,
                max_bandwidth: it.max_bandwidth.map(|b| b.bytes()),
            }),
            use_pre_copy: mg.pre_copy,
            max_device_bytes: b.max_device_bytes.bytes(),
            // A device the harness does not shadow may write guest memory on its own as soon as
            // it runs: the destination is compared in STOP, then started.
            start_destination: self.profile.shadowed(),
        };
        let ends = Endpoints {
            source: &mut src_client,
            source_guest: &src_guest,
            destination: dst_client,
            destination_guest: dst_guest.clone(),
        };
        let resets = self.sides[fi].tap.resets();
        let result = migrate(ends, &params, Some(&mut workload), &cancel, writer, reader);

        // Everything back where it belongs.
        self.sides[fi].client = Some(src_client);
        self.timeline_marks(mg.from, &workload.marks);
        // The report's rounds are the last migration's, as its statistics are.
        self.dirty = std::mem::take(&mut workload.rounds);
        self.over_reported += workload.over_reported;
        let lost: u64 = self.dirty.iter().map(|r| r.lost().len() as u64).sum();
        self.lost += lost;
        let findings = std::mem::take(&mut workload.findings);
        let background = workload.background.as_ref().map(|b| b.params);
        self.sides[fi].dev = workload.into_dev();
        self.sides[fi].dev.dirty.stopped();
        // The writer stays enabled on the source (and goes with its state to the destination)
        // until it is disabled where the device runs.
        self.sides[fi].dev.shadow.writer = background;
        self.sides[fi].dev.dma_exclude = background.map(|p| p.window());
        // The device as it stopped, for the destination's model.
        let stopped_shadow = self.sides[fi].dev.shadow.clone();
        // The states mock-qemu moved the devices to.
        for i in [fi, ti] {
            if let Some(s) = self.sides[i].tap.last_state() {
                self.sides[i].dev.model.state = s;
            }
        }
        // A trigger that fired in the migration (a dropped client, a killed server) is applied
        // before anything is asked of the sides.
        let fired = self.drain_fired();
        let source_reset = self.sides[fi].tap.resets() > resets;
        if source_reset {
            // QEMU's recovery: a device that cannot return to RUNNING by an arc is reset, and
            // its state is lost with it.
            self.sides[fi].dev.shadow.reset();
            self.sides[fi].dev.driver = None;
            self.event(Some(mg.from), EventKind::Note { text: "the source device was reset by the recovery".into() });
        }

        let outcome = match result {
            Ok(done) => {
                self.sides[ti].client = Some(done.destination);
                let cleanup = done.stats.cleanup_error.clone();
                let pending = done.stats.pending_at_switchover;
                self.stats = Some(done.stats);
                let mut ver = self.compare(fi, ti, &src_guest, &dst_guest, lost, &stopped_shadow, source_reset);
                if !self.profile.shadowed() {
                    // Compared while held in STOP; now the guest starts.
                    if let Err(e) = self.set_state(mg.to, MigState::Running as u32) {
                        ver.device_diff.push(format!("starting the destination after the comparison: {e}"));
                    }
                }
                if let Some(e) = cleanup {
                    self.event(
                        Some(mg.from),
                        EventKind::Note { text: format!("cleanup after the switchover failed: {e}") },
                    );
                }
                if let Some(params) = background {
                    self.explain_background(fi, ti, params, &src_guest, &dst_guest, &mut ver);
                }
                self.verification = Some(ver);
                let src = &mut self.sides[fi];
                if !source_reset {
                    src.dev.model.state = MigState::Stop;
                }
                let d = &mut self.sides[ti];
                d.dev.shadow = stopped_shadow;
                // explain_background disabled the destination's writer.
                d.dev.shadow.writer = None;
                d.dev.model.reset();
                d.dev.driver = None;
                let want_pending = mg.iteration.and_then(|it| it.pending_at_switchover);
                if let Some(want) = want_pending.filter(|&w| w != pending) {
                    let what = if want { "with pre-copy data unread" } else { "with every pre-copy round read" };
                    Err(format!("the scenario expects the switchover {what}; it came the other way"))
                } else {
                    match mg.expect {
                        MigrateOutcome::Migrated => Ok(None),
                        MigrateOutcome::Any => {
                            let all = m::VerifyStep { ram: true, device: true, dirty_log: true };
                            self.verify(&all)
                        }
                        other => Err(format!("the device migrated; the scenario expects {other:?}")),
                    }
                }
            }
            Err(failed) => {
                let failed = *failed;
                if let Some(c) = failed.destination {
                    self.sides[ti].client = Some(*c);
                }
                let kind = kind_of(&failed.error);
                let why =
                    format!("{} ({}: {})", failed.error, kebab(kind), mock_qemu::migrate::error_chain(&failed.error));
                self.event(Some(mg.from), EventKind::Note { text: format!("migration failed: {why}") });
                if background.is_some()
                    && let Some(c) = self.sides[fi].client.as_mut()
                    && c.mig_state().is_ok_and(|s| s == MigState::Running)
                {
                    super::background::stop(c).map_err(|e| format!("after the failed migration: {e}"))?;
                    self.sides[fi].dev.shadow.writer = None;
                    self.sides[fi].dev.dma_exclude = None;
                }
                self.resync(mg.to);
                let expected = match mg.expect {
                    MigrateOutcome::Migrated => Err(format!("the migration failed: {why}")),
                    MigrateOutcome::Aborted | MigrateOutcome::Any => spoilers.explain(kind, &why),
                    MigrateOutcome::Error(k) if k == kind => Ok(()),
                    MigrateOutcome::Error(k) => {
                        Err(format!("the migration failed with {}, not {}: {why}", kebab(kind), kebab(k)))
                    }
                };
                let before = before.filter(|_| !source_reset);
                expected.and_then(|()| self.source_runs_on(mg.from, before.as_ref())).map(|()| None)
            }
        };
        fired?;
        if !findings.is_empty() {
            let n = findings.len();
            let shown: Vec<&str> = findings.iter().take(5).map(String::as_str).collect();
            return Err(format!("{n} finding(s) of the oracle during the migration: {}", shown.join("; ")));
        }
        outcome
    }

    /// A new background writer for the migration from side `fi`, in
    /// [`writer_window`](super::side::Dev::writer_window), or why there is none.
    fn background_window(&self, fi: usize) -> Result<super::background::Params, String> {
        let (addr, len) = self.sides[fi].dev.writer_window()?;
        Ok(super::background::Params {
            seed: rand::RngCore::next_u64(&mut rng_for(self.seed, self.step, 4)),
            addr,
            len,
            interval_us: self.scenario.workload.background.interval_us,
        })
    }

    /// Concurrent mode: the destination's writer resumed where the source's stopped. Its
    /// parameters must have migrated; once it is stopped, each differing page must be the
    /// source's page with the destination's own writes since then applied.
    fn explain_background(
        &mut self,
        fi: usize,
        ti: usize,
        params: super::background::Params,
        src: &Guest,
        dst: &Guest,
        ver: &mut Verification,
    ) {
        use super::background as bg;
        let (a, b) = self.sides.split_at_mut(1);
        let (s, d) = if fi == 0 { (&mut a[0], &mut b[0]) } else { (&mut b[0], &mut a[0]) };
        let _ = ti;
        let runs = d.dev.maps_with_fd(params.addr, params.len);
        let (Some(sc), Some(dc)) = (s.client.as_mut(), d.client.as_mut()) else { return };
        let result = (|| -> Result<(u64, u64), String> {
            let migrated = bg::read_params(dc)?;
            if migrated != params {
                return Err(format!("the writer's registers did not migrate: {migrated:?} against {params:?}"));
            }
            let from = bg::writes(sc)?;
            if !runs {
                // Its first write faults: nothing written, nothing counted.
                let status = bg::wait_for_status(dc, bg::BG_FAULT, WRITER_FAULT_TIMEOUT)?;
                let to = bg::writes(dc)?;
                if status != bg::BG_FAULT || to != from {
                    return Err(format!(
                        "the destination's writer, whose window is not mapped with its fd there, reads BG_STATUS \
                         {status} and BG_WRITES {to} (from {from}), not FAULT with no write"
                    ));
                }
                return Ok((from, to));
            }
            if bg::status(dc)? != bg::BG_RUNNING {
                return Err("the destination's writer does not run after the migration".into());
            }
            let to = bg::stop(dc)?;
            if to < from {
                return Err(format!("BG_WRITES went back from {from} to {to}"));
            }
            Ok((from, to))
        })();
        let (from, to) = match result {
            Ok(r) => r,
            Err(e) => {
                ver.device_diff.push(e);
                return;
            }
        };
        // Every differing page is explained or not, not only those the report lists: a
        // destination whose writer ran long before the comparison differs on many pages.
        let all = match dst.diff_pages(src) {
            Ok(pages) => pages,
            Err(e) => {
                ver.device_diff.push(format!("comparing guest RAM: {e}"));
                return;
            }
        };
        let unexplained: std::collections::BTreeSet<u64> = all
            .into_iter()
            .filter(|&addr| {
                let (Ok(mut want), Ok(got)) = (src.read_vec(addr, 4096), dst.read_vec(addr, 4096)) else { return true };
                params.apply(addr, &mut want, from..to);
                want != got
            })
            .collect();
        ver.ram_diff.retain(|d| unexplained.contains(&d.addr));
        let listed: std::collections::BTreeSet<u64> = ver.ram_diff.iter().map(|d| d.addr).collect();
        let room = PAGES_LISTED.saturating_sub(ver.ram_diff.len());
        ver.ram_diff.extend(unexplained.iter().filter(|a| !listed.contains(a)).take(room).map(|&addr| PageDiff {
            addr,
            first_bytes_source: Vec::new(),
            first_bytes_destination: Vec::new(),
        }));
        ver.ram_diff_count = unexplained.len();
        self.event(
            Some(Side::Destination),
            EventKind::Note { text: format!("background writer: {from} writes on the source, {} after", to - from) },
        );
    }

    /// After a failed migration: the source device runs, logging stopped, its state what the
    /// model says, or for a device without a shadow what it was `before` the migration (the
    /// failed migration changed nothing the guest can see).
    fn source_runs_on(&mut self, side: Side, before: Option<&Snapshot>) -> Result<(), String> {
        let profile = &*self.profile;
        let ctx = &mut self.sides[index(side)];
        if !ctx.server_alive() {
            return Ok(());
        }
        let Some(client) = ctx.client.as_mut() else { return Ok(()) };
        let state = client.mig_state().map_err(|e| format!("the source after the failure: {e}"))?;
        if state != MigState::Running {
            return Err(format!("the source device is in {state:?} after the failed migration, not RUNNING"));
        }
        ctx.dev.model.state = MigState::Running;
        ctx.dev.model.resume = Default::default();
        if !ctx.shadowed {
            let Some(before) = before else { return Ok(()) };
            let now = device_snapshot(profile, client).map_err(|e| format!("reading the source device: {e}"))?;
            let diff = before.differences_as(&now, ["before", "after"]);
            if !diff.is_empty() {
                return Err(format!("the source device changed in the failed migration: {}", diff.join("; ")));
            }
            return Ok(());
        }
        let snap = DmaEngineDriver::snapshot(client).map_err(|e| format!("reading the source device: {e}"))?;
        let diff = ctx.dev.shadow.differences(&snap);
        if !diff.is_empty() {
            return Err(format!("the source device changed in the failed migration: {}", diff.join("; ")));
        }
        Ok(())
    }

    /// The destination against the source (and the model of the device as it stopped) right
    /// after the switchover. A source device reset by the cleanup has lost the state it
    /// stopped with: the destination is then held against the model alone.
    #[allow(clippy::too_many_arguments)]
    fn compare(
        &mut self,
        fi: usize,
        ti: usize,
        src: &Guest,
        dst: &Guest,
        lost: u64,
        stopped: &crate::oracle::DeviceShadow,
        source_reset: bool,
    ) -> Verification {
        let mut ver = Verification { lost, ..Verification::default() };
        match dst.diff_pages(src) {
            Ok(pages) => {
                ver.ram_diff_count = pages.len();
                ver.ram_diff = pages
                    .iter()
                    .take(PAGES_LISTED)
                    .enumerate()
                    .map(|(i, &addr)| {
                        let bytes = |g: &Guest| {
                            if i < PAGES_WITH_BYTES { g.read_vec(addr, 4096).unwrap_or_default() } else { Vec::new() }
                        };
                        PageDiff { addr, first_bytes_source: bytes(src), first_bytes_destination: bytes(dst) }
                    })
                    .collect();
            }
            Err(e) => ver.device_diff.push(format!("comparing guest RAM: {e}")),
        }
        if !self.profile.shadowed() {
            self.compare_unshadowed(fi, ti, source_reset, &mut ver);
            return ver;
        }
        let snap = |c: Option<&mut mock_qemu::Client>| c.map(DmaEngineDriver::snapshot);
        let a = snap(self.sides[fi].client.as_mut());
        let b = snap(self.sides[ti].client.as_mut());
        match (a, b) {
            (Some(Ok(a)), Some(Ok(b))) => {
                ver.compared = true;
                if !source_reset {
                    ver.device_diff.extend(b.differences(&a));
                }
                ver.model_diff = stopped.differences(&b);
            }
            (_, Some(Ok(b))) if source_reset || self.sides[fi].client.is_none() => {
                // The source is gone or was reset: the model of its stopped device stands in.
                ver.compared = true;
                ver.model_diff = stopped.differences(&b);
            }
            (a, b) => {
                let why = |x: Option<Result<_, mock_qemu::ClientError>>| match x {
                    Some(Err(e)) => e.to_string(),
                    None => "no client".into(),
                    Some(Ok(_)) => "read".into(),
                };
                ver.device_diff.push(format!("device snapshots: source {}, destination {}", why(a), why(b)));
            }
        }
        ver
    }

    /// A device the harness does not shadow: the profile's snapshot of both sides, equal
    /// unless the source was reset (its state is gone then, and nothing stands in for it).
    fn compare_unshadowed(&mut self, fi: usize, ti: usize, source_reset: bool, ver: &mut Verification) {
        let profile = &self.profile;
        let (a, b) = if fi < ti {
            let (x, y) = self.sides.split_at_mut(ti);
            (x[fi].client.as_mut(), y[0].client.as_mut())
        } else {
            let (x, y) = self.sides.split_at_mut(fi);
            (y[0].client.as_mut(), x[ti].client.as_mut())
        };
        let (Some(a), Some(b)) = (a, b) else {
            if !source_reset {
                ver.device_diff.push("device snapshots: a side has no client".into());
            }
            return;
        };
        match (device_snapshot(&**profile, a), device_snapshot(&**profile, b)) {
            (Ok(a), Ok(b)) => {
                ver.compared = true;
                if !source_reset {
                    ver.device_diff.extend(a.differences(&b));
                }
            }
            (a, b) => {
                let why = |x: Result<_, String>| x.err().unwrap_or_else(|| "read".into());
                ver.device_diff.push(format!("device snapshots: source {}, destination {}", why(a), why(b)));
            }
        }
    }

    fn timeline_marks(&mut self, side: Side, marks: &[(std::time::Instant, Mark)]) {
        for (at, mark) in marks {
            let t_micros = at.saturating_duration_since(self.started).as_micros() as u64;
            let kind = match mark {
                Mark::Phase(Phase::RoundStart(r)) => EventKind::RoundStart { round: *r },
                Mark::Phase(Phase::RoundEnd(r)) => EventKind::RoundEnd { round: *r },
                Mark::Phase(Phase::Switchover) => EventKind::Switchover,
                Mark::Armed(label) => EventKind::Note { text: format!("{label} armed") },
            };
            self.timeline.push(crate::report::TimelineEvent { t_micros, side: super::report_side(side), kind });
        }
    }
}

/// What the harness compares of a device it does not shadow: the profile's pieces and the
/// config space fields QEMU carries.
fn device_snapshot(profile: &dyn Profile, client: &mut Client) -> Result<Snapshot, String> {
    let mut s = profile.snapshot(client)?;
    s.read_config_fields(client)?;
    Ok(s)
}
