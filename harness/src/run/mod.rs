//! The scenario runner: executes a [`Scenario`] against real `vfu-server` processes, asks the
//! oracle before every request and holds every reply against it, and assembles the
//! [`RunReport`].
//!
//! The run is lock-step: one thread issues every request but the destination's loading
//! during a migration, and every random choice comes from ChaCha8 streams seeded by the
//! scenario's seed (one per step), so the same file and seed give the same message trace,
//! byte for byte. Each side's client traces into its own tap; the runner moves the lines into
//! `trace.jsonl` after each step, the source's first, behind a line that names the step.
//!
//! In concurrent mode ([`RunOptions::concurrent`]) the dma-engine's background writer also
//! writes guest memory from a device thread during each migration ([`background`]).
//!
//! A step fails when a reply differs from what the oracle predicts, when a check of the
//! scenario does not hold, or when something it needs breaks; the run stops there and the
//! report says why, with the replay command.

pub mod background;
mod explain;
mod faults;
mod findings;
pub mod hosted;
mod interleave;
mod memory;
mod migrate;
pub mod server;
mod side;
mod steps;
mod sweep;
pub mod tap;
mod workload;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mock_qemu::migrate::MigrationStats;
use mock_qemu::stream::StreamFault;
use nix::errno::Errno;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_saphyr::Spanned;

pub use server::{ServerCommand, Servers};
use side::SideCtx;

use crate::report::{
    self, Counts, DirtyRound, EventKind, Outcome, PageDiff, RunReport, StepResult, TimelineEvent, Written,
};
use crate::scenario::model::{Fault, PhaseMark, Scenario, Side, Step};

/// How a run is made.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The seed, instead of the scenario's.
    pub seed: Option<u64>,
    /// What serves each side.
    pub server: Servers,
    /// Where reports go (`<root>/<scenario>-<seed>/`); none written when `None`.
    pub reports: Option<PathBuf>,
    /// Concurrent mode: during each migration the device's background writer does DMA on a
    /// device thread, concurrently with the dirty reports. The run no longer replays byte for
    /// byte (the thread's timing decides which report sees which write).
    pub concurrent: bool,
    /// Known deviations from the specification fail the run too (else they are reported
    /// and the run passes).
    pub strict: bool,
}

/// What a run left.
#[derive(Debug)]
pub struct RunOutput {
    /// The report.
    pub report: RunReport,
    /// The message trace, as JSON lines.
    pub trace: Vec<u8>,
    /// The report's files, when written.
    pub written: Option<Written>,
    /// The migration arcs the servers' logs record (of their last start), source first.
    pub arcs: Vec<(vfu_server::wire::MigState, vfu_server::wire::MigState)>,
    /// What the protocol model judged, both sides.
    pub matrix: crate::model::Matrix,
}

/// Why a run could not even start or its report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The temporary directory or the trace file.
    #[error("setting up the run: {0}")]
    Setup(#[from] std::io::Error),
    /// Options the scenario cannot run with.
    #[error("{0}")]
    Options(String),
    /// The scenario's server command.
    #[error("the {side} server: {why}")]
    Server {
        /// Which side.
        side: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Writing the report.
    #[error("writing the report: {0}")]
    Report(#[from] report::ReportError),
}

/// A buffer of migration data kept by `read-data`.
#[derive(Debug, Clone)]
struct Buffer {
    data: Vec<u8>,
    /// The outgoing stream it was read from (side, number) and where in it.
    stream: (u8, u64),
    start: u64,
    /// Whether it reaches the end of that stream.
    ended: bool,
}

/// A trigger that counts from a phase of the next migration.
#[derive(Debug, Clone)]
struct PhaseTrigger {
    side: Side,
    mark: PhaseMark,
    fault: Fault,
}

/// What the last completed migration left to verify.
#[derive(Debug, Clone, Default)]
struct Verification {
    ram_diff: Vec<PageDiff>,
    ram_diff_count: usize,
    device_diff: Vec<String>,
    model_diff: Vec<String>,
    lost: u64,
    compared: bool,
}

/// What a step returns: `Ok(None)` when every request succeeded, `Ok(Some(errno))` when its
/// request was refused as the model predicts, `Err` when it failed.
type StepOutcome = Result<Option<Errno>, String>;

/// A run in progress.
struct Run<'a> {
    scenario: &'a Scenario,
    options: &'a RunOptions,
    seed: u64,
    dir: tempfile::TempDir,
    layout: Vec<(u64, u64)>,
    sides: [SideCtx; 2],
    /// What serves each side.
    commands: [ServerCommand; 2],
    /// What the harness knows of the device.
    profile: Box<dyn crate::profile::Profile>,
    proxied: [bool; 2],
    trace: BufWriter<File>,
    trace_path: PathBuf,
    started: Instant,
    timeline: Vec<TimelineEvent>,
    dirty: Vec<DirtyRound>,
    buffers: BTreeMap<String, Buffer>,
    stream_fault: Option<StreamFault>,
    phase_triggers: Vec<PhaseTrigger>,
    next_errno: [Option<Errno>; 2],
    /// `Some(true)`: the next step must fail; `Some(false)`: it may.
    next_fails: [Option<bool>; 2],
    /// The step under way is one whose messages the scenario damages on purpose.
    damaged_step: bool,
    verification: Option<Verification>,
    stats: Option<MigrationStats>,
    over_reported: u64,
    lost: u64,
    step: usize,
    /// The findings so far.
    findings: Vec<report::Finding>,
}

fn index(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Destination => 1,
    }
}

fn report_side(side: Side) -> report::Side {
    match side {
        Side::Source => report::Side::Source,
        Side::Destination => report::Side::Destination,
    }
}

/// A ChaCha8 stream for one purpose of one step, from the run's seed.
fn rng_for(seed: u64, step: usize, purpose: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(step as u64).to_le_bytes());
    key[16..24].copy_from_slice(&purpose.to_le_bytes());
    key[24..].copy_from_slice(b"miglab\0\0");
    ChaCha8Rng::from_seed(key)
}

/// The time now, RFC 3339 in UTC.
fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Runs `scenario` (read from `file`) and writes its report when asked.
pub fn run_scenario(scenario: &Scenario, file: &Path, options: &RunOptions) -> Result<RunOutput, RunError> {
    let seed = options.seed.unwrap_or(scenario.seed);
    let dir = tempfile::Builder::new().prefix("miglab-").tempdir()?;
    let trace_path = dir.path().join("trace.jsonl");
    let trace = BufWriter::new(File::create(&trace_path)?);
    let opts = &scenario.device.options;
    let proxied = Side::BOTH.map(|side| {
        scenario
            .steps
            .iter()
            .any(|s| matches!(&s.value, Step::Fault(f @ Fault::Proxy { .. }) if f.side() == Some(side)))
    });
    let sides = Side::BOTH.map(|side| SideCtx::new(side, dir.path(), opts));
    let [source, destination] = Side::BOTH.map(|side| {
        options.server.resolve(&scenario.servers, side).map_err(|why| RunError::Server { side: side.name(), why })
    });
    let commands = [source?, destination?];
    let profile = crate::profile::for_device(&scenario.device);
    if options.concurrent && !profile.shadowed() {
        return Err(RunError::Options(format!(
            "concurrent runs need the dma-engine's background writer, not a {} device",
            profile.name()
        )));
    }
    let mut sides = sides;
    for side in &mut sides {
        side.shadowed = profile.shadowed();
        side.dev.watch_memory = !profile.shadowed();
        // SIGKILL needs a process; every other server of this project may run on a thread.
        side.threaded = !scenario
            .steps
            .iter()
            .any(|s| matches!(&s.value, Step::Fault(f @ Fault::ServerKill { .. }) if f.side() == Some(side.side)));
    }
    let started_at = now_rfc3339();
    let mut run = Run {
        scenario,
        options,
        seed,
        layout: scenario.guest.regions(),
        sides,
        commands,
        profile,
        proxied,
        trace,
        trace_path,
        started: Instant::now(),
        timeline: Vec::new(),
        dirty: Vec::new(),
        buffers: BTreeMap::new(),
        stream_fault: None,
        phase_triggers: Vec::new(),
        next_errno: [None, None],
        next_fails: [None, None],
        damaged_step: false,
        verification: None,
        stats: None,
        over_reported: 0,
        lost: 0,
        step: 0,
        findings: Vec::new(),
        dir,
    };
    let (steps, outcome) = run.steps();
    run.trace.flush()?;
    let messages = run.sides.iter().map(|s| s.tap.messages()).sum();
    let verification = run.verification.clone().unwrap_or_default();
    let mut report = RunReport {
        scenario: scenario.name.value.clone(),
        seed,
        file: file.to_owned(),
        concurrent: options.concurrent,
        server_args: options.server.replay_args(),
        outcome,
        started: started_at,
        duration_micros: run.started.elapsed().as_micros() as u64,
        steps,
        timeline: std::mem::take(&mut run.timeline),
        dirty: std::mem::take(&mut run.dirty),
        ram_diff: verification.ram_diff,
        device_diff: verification.device_diff.into_iter().chain(verification.model_diff).collect(),
        stats: run.stats.take(),
        counts: Counts { messages, over_reported: run.over_reported, lost: run.lost },
        findings: std::mem::take(&mut run.findings),
    };
    report.timeline.sort_by_key(|e| e.t_micros);
    // The servers go before the report is written: their logs are complete then.
    for side in &mut run.sides {
        side.client = None;
        side.proxy = None;
        side.server = None;
    }
    let arcs = run.sides.iter().flat_map(|s| server::arcs_in(s.log_path())).collect();
    let mut matrix = crate::model::Matrix::default();
    for side in &run.sides {
        matrix.merge(&side.tap.matrix());
    }
    let written = match &options.reports {
        Some(root) => {
            let dir = report::report_dir(root, &report);
            let written = report::write_report(&dir, &report, Some(&run.trace_path))?;
            for side in &run.sides {
                if side.log_path().exists() {
                    let to = dir.join(format!("{}-server.log", side.side.name()));
                    std::fs::copy(side.log_path(), to)?;
                }
            }
            Some(written)
        }
        None => None,
    };
    let trace = std::fs::read(&run.trace_path)?;
    Ok(RunOutput { report, trace, written, arcs, matrix })
}

impl Run<'_> {
    /// Runs every step until one fails; returns their results and the outcome.
    fn steps(&mut self) -> (Vec<StepResult>, Outcome) {
        let mut results = Vec::new();
        let scenario = self.scenario;
        for (i, spanned) in scenario.steps.iter().enumerate() {
            self.step = i;
            let t0 = Instant::now();
            self.mark_step(i, spanned);
            let pinned = step_side(&spanned.value).and_then(|s| self.next_errno[index(s)]);
            steps::pin(pinned);
            let outcome = self.dispatch(&spanned.value);
            steps::pin(None);
            let outcome = self.judge_errno(spanned, outcome);
            let after = self.after_step();
            let outcome = match (outcome, after) {
                (Ok(o), Ok(_)) => Ok(o),
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            };
            let outcome = self.strict_findings(outcome);
            let description = describe(&spanned.value);
            let micros = t0.elapsed().as_micros() as u64;
            let (ok, detail) = match &outcome {
                Ok(None) => (true, None),
                Ok(Some(e)) => (true, Some(format!("refused with {e:?}, as expected"))),
                Err(e) => (false, Some(e.clone())),
            };
            results.push(StepResult { index: i, kind: spanned.value.kind().into(), description, ok, detail, micros });
            if let Err(reason) = outcome {
                let reason = self.failure_finding(reason, step_side(&spanned.value));
                if let Some(last) = results.last_mut() {
                    last.detail = Some(reason.clone());
                }
                let at = format!("step {i} ({}, line {})", spanned.value.kind(), spanned.referenced.line());
                return (results, Outcome::Failed { reason: format!("{at}: {reason}") });
            }
        }
        (results, Outcome::Passed)
    }

    fn mark_step(&mut self, i: usize, spanned: &Spanned<Step>) {
        let line = serde_json::json!({
            "event": "step",
            "index": i,
            "kind": spanned.value.kind(),
            "line": spanned.referenced.line(),
            "column": spanned.referenced.column(),
        });
        let _ = writeln!(self.trace, "{line}");
    }

    /// Writes an event line into the trace and a mark on the timeline.
    fn event(&mut self, side: Option<Side>, kind: EventKind) {
        let line = match &kind {
            EventKind::Fault { name } => serde_json::json!({"event": "fault", "step": self.step, "name": name}),
            EventKind::Note { text } => {
                serde_json::json!({"event": "note", "side": side.map(Side::name), "text": text})
            }
            _ => serde_json::Value::Null,
        };
        if !line.is_null() {
            self.flush_taps();
            let _ = writeln!(self.trace, "{line}");
        }
        if let Some(side) = side {
            let t_micros = self.started.elapsed().as_micros() as u64;
            self.timeline.push(TimelineEvent { t_micros, side: report_side(side), kind });
        }
    }

    /// Moves the taps' lines into the trace, the source's first, and their state changes and
    /// fired triggers onto the timeline.
    fn flush_taps(&mut self) {
        for side in Side::BOTH {
            let ctx = &self.sides[index(side)];
            let lines = ctx.tap.take_lines();
            let _ = self.trace.write_all(&lines);
        }
    }

    /// After each step: the trace, the timeline, and the faults that fired inside it.
    fn after_step(&mut self) -> StepOutcome {
        self.flush_taps();
        self.disable_resumed_writers()?;
        for side in Side::BOTH {
            let changes = self.sides[index(side)].tap.take_changes();
            let mut last = self.last_state(side);
            for c in changes {
                let t_micros = c.at.saturating_duration_since(self.started).as_micros() as u64;
                let kind = EventKind::StateChange { from: last.clone(), to: state_name(c.to).into() };
                last = state_name(c.to).into();
                self.timeline.push(TimelineEvent { t_micros, side: report_side(side), kind });
            }
        }
        self.drain_fired()
    }

    /// A writer a migration left enabled on a device it stopped resumed with the device (a
    /// state change, a recovery): it is disabled, so that it writes only while a migration
    /// follows its writes. Lock-step DMA stayed out of its window meanwhile.
    fn disable_resumed_writers(&mut self) -> Result<(), String> {
        for side in Side::BOTH {
            let ctx = &mut self.sides[index(side)];
            if ctx.dev.shadow.writer.is_none() || ctx.dev.model.region_write() != crate::oracle::Expected::Ok {
                continue;
            }
            let Some(client) = ctx.client.as_mut() else { continue };
            let writes = background::stop(client).map_err(|e| format!("the {} device runs again: {e}", side.name()))?;
            ctx.dev.shadow.writer = None;
            ctx.dev.dma_exclude = None;
            let text = format!("background writer disabled where the device runs again, at {writes} writes");
            self.event(Some(side), EventKind::Note { text });
        }
        Ok(())
    }

    /// The triggers that fired: marked in the trace and on the timeline, and what they did
    /// (a dropped client, a killed server) applied to the sides.
    fn drain_fired(&mut self) -> StepOutcome {
        let mut result = Ok(None);
        for side in Side::BOTH {
            for f in self.sides[index(side)].tap.take_fired() {
                let t_micros = f.at.saturating_duration_since(self.started).as_micros() as u64;
                let line =
                    serde_json::json!({"event": "fault", "step": self.step, "name": f.label, "side": side.name()});
                let _ = writeln!(self.trace, "{line}");
                self.timeline.push(TimelineEvent {
                    t_micros,
                    side: report_side(side),
                    kind: EventKind::Fault { name: f.label.clone() },
                });
                if let Err(e) = self.fired(side, &f.label) {
                    result = Err(e);
                }
            }
        }
        result
    }

    fn last_state(&self, side: Side) -> String {
        self.timeline
            .iter()
            .rev()
            .find_map(|e| match (&e.kind, e.side == report_side(side)) {
                (EventKind::StateChange { to, .. }, true) => Some(to.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "RUNNING".into())
    }

    /// Starts the server of `side` with its pending hooks.
    pub(super) fn start_server(&mut self, side: Side) -> Result<(), String> {
        let i = index(side);
        let device = self.profile.builtin_device();
        self.sides[i].start_server(&self.commands[i], device, &self.scenario.device.options, self.proxied[i])
    }

    /// Applies the `expect: next_errno` armed for the step's side.
    fn judge_errno(&mut self, spanned: &Spanned<Step>, outcome: StepOutcome) -> StepOutcome {
        let side = step_side(&spanned.value);
        if let Some((s, must)) = side.and_then(|s| self.next_fails[index(s)].take().map(|m| (s, m))) {
            self.damaged_step = true;
            let judged = match outcome {
                Ok(None) if must => Err("the step succeeded; the scenario expects it to fail".into()),
                Ok(None) => Ok(None),
                Ok(Some(e)) => Ok(Some(e)),
                Err(e) => {
                    self.event(Some(s), EventKind::Note { text: format!("failed as expected: {e}") });
                    Ok(None)
                }
            };
            self.after_damage(s);
            return judged;
        }
        let Some(want) = side.and_then(|s| self.next_errno[index(s)].take()) else { return outcome };
        match outcome {
            Ok(Some(got)) if got == want => Ok(Some(got)),
            Ok(Some(got)) => Err(format!("the request was refused with {got:?}; the scenario expects {want:?}")),
            Ok(None) => Err(format!("the request succeeded; the scenario expects {want:?}")),
            Err(e) => Err(format!("{e} (the scenario expects {want:?})")),
        }
    }
}

/// The state names of the timeline.
pub fn state_name(s: vfu_server::wire::MigState) -> &'static str {
    use vfu_server::wire::MigState::*;
    match s {
        Error => "ERROR",
        Stop => "STOP",
        Running => "RUNNING",
        StopCopy => "STOP_COPY",
        Resuming => "RESUMING",
        RunningP2p => "RUNNING_P2P",
        PreCopy => "PRE_COPY",
        PreCopyP2p => "PRE_COPY_P2P",
    }
}

/// The side a step's first request goes to.
fn step_side(step: &Step) -> Option<Side> {
    Some(match step {
        Step::Connect(s) => s.side,
        Step::Map(s) => s.side,
        Step::Program(s) => s.side,
        Step::StartLogging(s) => s.side,
        Step::StopLogging(s) | Step::Reset(s) | Step::GuestReset(s) => s.side,
        Step::SelfTest(t) => t.side,
        Step::Sweep(s) => s.side,
        Step::SetState(s) => s.side,
        Step::ReadData(s) => s.side,
        Step::WriteData(s) => s.side,
        Step::Migrate(s) => s.from,
        Step::Interleave(s) => s.side,
        Step::Fault(f) => return f.side(),
        Step::Expect(_) | Step::Verify(_) => return None,
        Step::DirtyReport(s) => s.side,
        Step::Unmap(s) => s.side,
    })
}

/// A step in one line, for the report.
fn describe(step: &Step) -> String {
    let side = step_side(step).map(|s| format!(" {}", s.name())).unwrap_or_default();
    match step {
        Step::SetState(s) => format!("set-state{side} -> {:?}", s.state),
        Step::Migrate(m) => format!("migrate {} -> {} (expect {:?})", m.from.name(), m.to.name(), m.expect),
        Step::Interleave(i) => format!("interleave{side}: {} operations, {}% invalid", i.ops, i.invalid_percent),
        Step::Fault(f) => format!("fault {}{side}", f.kind()),
        Step::Program(p) => format!("program{side}: {} command(s)", p.commands.len()),
        other => format!("{}{side}", other.kind()),
    }
}
