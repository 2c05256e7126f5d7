//! Reading a scenario: YAML parsing (unknown fields refused) and the checks that need the whole
//! file, each error located as `FILE:LINE:COLUMN: what was expected`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{DefaultMessageFormatter, Location, MessageFormatter as _};
use vfu_server::devices::dma_engine::DmaEngineConfig;

use super::model::{DataSource, DeviceKind, Fault, Iteration, Layout, Scenario, ServerSpec, Side, Step};

/// Guest page size: RAM sizes and regions must be multiples of it.
pub const PAGE_SIZE: u64 = 4096;

/// A place in a scenario file (1-based line and column; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The file (or the origin name given to [`load_str`]).
    pub file: String,
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl Position {
    fn new(file: &str, location: Location) -> Self {
        Self { file: file.to_owned(), line: location.line(), column: location.column() }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// One thing wrong with a scenario that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub position: Position,
    /// What was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.position, self.message)
    }
}

/// Why a scenario could not be loaded. Displays as `FILE:LINE:COLUMN: what was expected`, one
/// line per problem.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not the scenario format (an unknown field, a wrong type, a bad enum value).
    #[error("{0}")]
    Syntax(Problem),
    /// The file parsed, but does not make sense as a scenario.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl LoadError {
    /// Every problem with a position (one for a syntax error, none for an I/O error).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            LoadError::Io { .. } => Vec::new(),
            LoadError::Syntax(p) => vec![p.clone()],
            LoadError::Invalid(ps) => ps.clone(),
        }
    }
}

/// Loads the scenario file at `path`; its `name` must be the file name without `.yaml`.
pub fn load_path(path: &Path) -> Result<Scenario, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
    let file = path.display().to_string();
    let scenario = load_str(&text, &file)?;
    if let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        && scenario.name.value != stem
    {
        return Err(LoadError::Invalid(vec![Problem {
            position: Position::new(&file, scenario.name.referenced),
            message: format!("expected the name {stem:?} (the file's name), found {:?}", scenario.name.value),
        }]));
    }
    Ok(scenario)
}

/// Parses and checks a scenario from `text`; `origin` names it in errors (a file name).
pub fn load_str(text: &str, origin: &str) -> Result<Scenario, LoadError> {
    let scenario: Scenario = serde_saphyr::from_str(text).map_err(|e| LoadError::Syntax(syntax_problem(&e, origin)))?;
    let problems = check(&scenario, origin);
    if problems.is_empty() { Ok(scenario) } else { Err(LoadError::Invalid(problems)) }
}

fn syntax_problem(error: &serde_saphyr::Error, origin: &str) -> Problem {
    let position = Position::new(origin, error.location().unwrap_or(Location::UNKNOWN));
    let message = DefaultMessageFormatter.format_message(error.without_snippet());
    let message = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    Problem { position, message }
}

/// What the checks know of a side as they walk the steps.
#[derive(Debug, Default, Clone, Copy)]
struct SideState {
    started: bool,
    connected: bool,
    mapped: bool,
    logging: bool,
    /// A trigger (or an expected failure) may have dropped the client since it connected.
    maybe_gone: bool,
}

/// The checks that need more than one field: each returns where and what was expected.
fn check(s: &Scenario, file: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |location: Location, message: String| {
        problems.push(Problem { position: Position::new(file, location), message });
    };

    let name = &s.name.value;
    if name.is_empty()
        || !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        problem(s.name.referenced, format!("expected a name of lowercase letters, digits and '-', found {name:?}"));
    }

    let options = &s.device.options;
    let config = DmaEngineConfig {
        devmem_size: options.devmem_size.value.bytes(),
        chunk_size: usize::try_from(options.chunk_size.value.bytes()).unwrap_or(usize::MAX),
        ..DmaEngineConfig::default()
    };
    if let Err(e) = config.validate() {
        let at = match e {
            vfu_server::devices::dma_engine::ConfigError::BadChunkSize { .. } => options.chunk_size.referenced,
            _ => options.devmem_size.referenced,
        };
        problem(at, format!("expected a valid dma-engine option: {e}"));
    }

    let ram = s.guest.ram.value.bytes();
    if ram == 0 || !ram.is_multiple_of(PAGE_SIZE) {
        problem(
            s.guest.ram.referenced,
            format!("expected a RAM size that is a non-zero multiple of 4K (4096 bytes), found {ram} bytes"),
        );
    }
    if let Layout::Regions(regions) = &s.guest.layout {
        check_regions(&regions.value, ram).into_iter().for_each(|m| problem(regions.referenced, m));
    }

    let region_count = s.guest.regions().len();
    if s.steps.is_empty() {
        problem(Location::UNKNOWN, "expected at least one step".into());
    }

    let mut sides: BTreeMap<Side, SideState> = Side::BOTH.iter().map(|&side| (side, SideState::default())).collect();
    let mut buffers = BTreeSet::new();
    // Device hooks waiting for their side's server to start: (side, where the fault is).
    let mut pending_hooks: Vec<(Side, Location)> = Vec::new();
    // A stream fault waiting for a migrate step.
    let mut pending_stream: Option<Location> = None;

    for spanned in &s.steps {
        let at = spanned.referenced;
        let step = &spanned.value;
        let kind = step.kind();
        let need_connected =
            |sides: &BTreeMap<Side, SideState>, side: Side, problem: &mut dyn FnMut(Location, String)| {
                if !sides[&side].connected {
                    problem(at, format!("expected a `connect` to the {} before this `{kind}` step", side.name()));
                }
            };
        match step {
            Step::Connect(c) => {
                let st = sides.get_mut(&c.side).expect("both sides are present");
                if st.connected && !st.maybe_gone {
                    problem(at, format!("expected the {} not to be connected already", c.side.name()));
                }
                if st.maybe_gone {
                    // The client may be gone, and its mappings with it.
                    st.mapped = false;
                    st.maybe_gone = false;
                }
                if !st.started {
                    st.started = true;
                    pending_hooks.retain(|(side, _)| *side != c.side);
                }
                st.connected = true;
            }
            Step::Map(m) => {
                need_connected(&sides, m.side, &mut problem);
                let st = sides.get_mut(&m.side).expect("both sides are present");
                if st.mapped && m.regions.is_none() {
                    problem(
                        at,
                        format!(
                            "expected the {}'s guest RAM not to be mapped already (name `regions` to map more)",
                            m.side.name()
                        ),
                    );
                }
                for &r in m.regions.iter().flatten() {
                    if r as usize >= region_count {
                        problem(at, format!("expected a guest RAM region index below {region_count}, found {r}"));
                    }
                }
                st.mapped = true;
            }
            Step::Program(p) => {
                need_connected(&sides, p.side, &mut problem);
                if !sides[&p.side].mapped {
                    problem(
                        at,
                        format!(
                            "expected a `map` on the {} before `program` (for DMA to an unmapped address, use \
                             `fault: {{dma-unmapped: ...}}`)",
                            p.side.name()
                        ),
                    );
                }
                if p.commands.is_empty() {
                    problem(at, "expected at least one command".into());
                }
            }
            Step::StartLogging(l) => {
                need_connected(&sides, l.side, &mut problem);
                if l.page_size.bytes() == 0 {
                    problem(at, "expected a non-zero page size".into());
                }
                sides.get_mut(&l.side).expect("both sides are present").logging = true;
            }
            Step::StopLogging(l) => {
                need_connected(&sides, l.side, &mut problem);
                sides.get_mut(&l.side).expect("both sides are present").logging = false;
            }
            Step::SetState(st) => need_connected(&sides, st.side, &mut problem),
            Step::ReadData(r) => {
                need_connected(&sides, r.side, &mut problem);
                if r.chunk.bytes() == 0 {
                    problem(at, "expected a non-zero chunk".into());
                }
                if let Some(name) = &r.buffer {
                    buffers.insert(name.clone());
                }
            }
            Step::WriteData(w) => {
                need_connected(&sides, w.side, &mut problem);
                if w.chunk.bytes() == 0 {
                    problem(at, "expected a non-zero chunk".into());
                }
                if let DataSource::Buffer(name) = &w.data
                    && !buffers.contains(&name.value)
                {
                    problem(
                        name.referenced,
                        format!("expected the name of a buffer a `read-data` step kept before, found {:?}", name.value),
                    );
                }
            }
            Step::Migrate(m) => {
                if m.from == m.to {
                    problem(at, format!("expected `from` and `to` to differ, both are the {}", m.from.name()));
                }
                for side in [m.from, m.to] {
                    if !sides[&side].connected {
                        need_connected(&sides, side, &mut problem);
                    } else if !sides[&side].mapped {
                        problem(at, format!("expected a `map` on the {} before `migrate`", side.name()));
                    }
                }
                if m.budget.max_rounds == 0 && m.pre_copy {
                    problem(at, "expected `budget.max_rounds` of at least 1 with pre-copy".into());
                }
                if m.read_size.bytes() == 0 || m.read_size.bytes() > u64::from(u32::MAX) {
                    problem(
                        at,
                        format!("expected a `read_size` from 1 byte to 4 GiB - 1, found {}", m.read_size.bytes()),
                    );
                }
                if let Some(it) = &m.iteration {
                    check_iteration(it, m.pre_copy, at, &mut problem);
                }
                pending_stream = None;
                // Logging is started and stopped by the migration itself.
                for side in [m.from, m.to] {
                    sides.get_mut(&side).expect("both sides are present").logging = false;
                }
            }
            Step::Interleave(i) => {
                need_connected(&sides, i.side, &mut problem);
                let w = &i.weights;
                if w.dma == 0 && w.vcpu == 0 && w.region == 0 && w.state == 0 && w.data == 0 && w.reset == 0 {
                    problem(at, "expected at least one non-zero weight".into());
                }
                if i.invalid_percent > 100 {
                    problem(at, format!("expected `invalid_percent` from 0 to 100, found {}", i.invalid_percent));
                }
                if i.ops == 0 {
                    problem(at, "expected at least one operation".into());
                }
                if (w.dma > 0 || w.vcpu > 0) && !sides[&i.side].mapped {
                    problem(at, format!("expected a `map` on the {} before DMA or vCPU writes", i.side.name()));
                }
            }
            Step::Fault(f) => check_fault(f, at, &mut sides, &mut pending_hooks, &mut pending_stream, &mut problem),
            Step::Expect(e) => {
                let alive_only = e.next_errno.is_none()
                    && e.next_fails.is_none()
                    && e.next_may_fail.is_none()
                    && e.state.is_none()
                    && e.commands_failed.is_none();
                if alive_only && e.server_alive.is_none() && e.rounds.is_none() {
                    problem(
                        at,
                        "expected at least one check: next_errno, next_fails, state, server_alive, commands_failed or \
                         rounds"
                            .into(),
                    );
                }
                if !alive_only {
                    need_connected(&sides, e.side, &mut problem);
                }
                if e.next_fails == Some(true) || e.next_may_fail == Some(true) {
                    sides.get_mut(&e.side).expect("both sides are present").maybe_gone = true;
                }
            }
            Step::DirtyReport(d) => {
                need_connected(&sides, d.side, &mut problem);
                if d.iova.is_some() != d.length.is_some() {
                    problem(at, "expected both `iova` and `length`, or neither".into());
                }
                if !d.page_size.bytes().is_power_of_two() && d.expect_errno.is_none() {
                    problem(
                        at,
                        format!(
                            "expected a power-of-two `page_size` (or `expect_errno` for a refused one), found {}",
                            d.page_size
                        ),
                    );
                }
            }
            Step::Reset(r) | Step::GuestReset(r) => need_connected(&sides, r.side, &mut problem),
            Step::SelfTest(t) => {
                need_connected(&sides, t.side, &mut problem);
                if !sides[&t.side].mapped {
                    problem(at, format!("expected a `map` on the {} before `self-test`", t.side.name()));
                }
                let profile = crate::profile::for_device(&s.device);
                if !profile.has_self_test() {
                    problem(
                        at,
                        format!(
                            "expected a device with a test of its own for `self-test` (libvfio-user-sample); the {} \
                             profile knows none",
                            profile.name()
                        ),
                    );
                }
            }
            Step::Sweep(w) => need_connected(&sides, w.side, &mut problem),
            Step::Unmap(u) => {
                need_connected(&sides, u.side, &mut problem);
                for &r in u.regions.iter().flatten() {
                    if r as usize >= region_count {
                        problem(at, format!("expected a guest RAM region index below {region_count}, found {r}"));
                    }
                }
                if u.regions.is_none() {
                    sides.get_mut(&u.side).expect("both sides are present").mapped = false;
                }
            }
            Step::Verify(v) => {
                if !(v.ram || v.device || v.dirty_log) {
                    problem(at, "expected at least one of ram, device, dirty_log to be true".into());
                }
                if !s.steps.iter().any(|st| matches!(st.value, Step::Migrate(_))) {
                    problem(at, "expected a `migrate` step to verify".into());
                }
            }
        }
    }
    check_profile(s, &mut problem);
    for side in Side::BOTH {
        if let ServerSpec::Command(argv) = s.servers.of(side)
            && let Some(why) = command_problem(&argv.value)
        {
            problem(argv.referenced, why);
        }
    }
    for spanned in &s.steps {
        if let Step::Fault(f @ (Fault::DeviceArc { .. } | Fault::DeviceReadAfter { .. })) = &spanned.value
            && let Some(side) = f.side()
            && matches!(s.servers.of(side), ServerSpec::Command(_))
        {
            problem(
                spanned.referenced,
                format!(
                    "expected a built-in server on the {} for this device hook: another server's command takes no \
                     hooks",
                    side.name()
                ),
            );
        }
    }
    for (side, at) in pending_hooks {
        problem(
            at,
            format!(
                "expected the {} server to start after this device hook (a `connect` to a server not started yet, \
                 or a `server-kill` with restart); the hook is set when the server starts",
                side.name()
            ),
        );
    }
    if let Some(at) = pending_stream {
        problem(at, "expected a `migrate` step after this stream fault".into());
    }
    problems
}

/// What only the dma-engine profile drives, and what only `generic` takes.
fn check_profile(s: &Scenario, problem: &mut dyn FnMut(Location, String)) {
    let kind = s.device.kind;
    let name = match kind {
        DeviceKind::DmaEngine => None,
        DeviceKind::LibvfioUserSample => Some("libvfio-user-sample"),
        DeviceKind::Generic => Some("generic"),
    };
    let first = s.steps.first().map_or(Location::UNKNOWN, |st| st.referenced);
    if kind != DeviceKind::Generic
        && (s.device.builtin.is_some() || !s.device.writes.is_empty() || !s.device.compare.is_empty())
    {
        problem(first, "expected device.builtin, writes and compare only with kind: generic".into());
    }
    let Some(name) = name else { return };
    if s.workload.dma.is_some() {
        problem(first, format!("expected no workload.dma: DMA commands are the dma-engine's, not a {name} device's"));
    }
    for st in &s.steps {
        let dma_only = match &st.value {
            Step::Program(_) => Some("`program` runs dma-engine commands"),
            Step::Interleave(i) if i.weights.dma > 0 || i.weights.region > 0 => {
                Some("`interleave` with dma or region weights drives the dma-engine's registers (give them 0)")
            }
            Step::GuestReset(_) => Some("`guest-reset` writes the dma-engine's CTRL register (use `reset`)"),
            _ => None,
        };
        if let Some(why) = dma_only {
            problem(st.referenced, format!("expected a step a {name} device can take: {why}"));
        }
    }
}

/// What is wrong with a server command, if anything.
pub fn command_problem(argv: &[String]) -> Option<String> {
    match argv.first() {
        None => Some("expected a command: the program, then its arguments".into()),
        Some(p) if p.is_empty() => Some("expected a program name first, found an empty string".into()),
        Some(_) if !argv.iter().any(|a| a.contains(SOCKET_PLACEHOLDER)) => {
            Some(format!("expected an argument with {SOCKET_PLACEHOLDER} in it, where the server's socket path goes"))
        }
        Some(_) => None,
    }
}

/// Where a server command takes its socket path.
pub const SOCKET_PLACEHOLDER: &str = "{socket}";

/// A migrate step's `iteration`: it bounds pre-copy reads, so it needs pre-copy and a bound.
fn check_iteration(it: &Iteration, pre_copy: bool, at: Location, problem: &mut dyn FnMut(Location, String)) {
    if !pre_copy {
        problem(at, "expected `pre_copy: true` with `iteration` (it bounds the reads of pre-copy rounds)".into());
    }
    match (it.reads, it.max_bandwidth) {
        (None, None) => problem(at, "expected `iteration.reads` or `iteration.max_bandwidth`".into()),
        (Some(0), _) => problem(at, "expected `iteration.reads` of at least 1".into()),
        (_, Some(b)) if b.bytes() == 0 => problem(at, "expected a non-zero `iteration.max_bandwidth`".into()),
        _ => {}
    }
}

fn check_fault(
    fault: &Fault,
    at: Location,
    sides: &mut BTreeMap<Side, SideState>,
    pending_hooks: &mut Vec<(Side, Location)>,
    pending_stream: &mut Option<Location>,
    problem: &mut dyn FnMut(Location, String),
) {
    let kind = fault.kind();
    match fault {
        Fault::ClientDisconnect { side, at: trigger } => {
            let st = sides.get_mut(side).expect("both sides are present");
            if !st.connected {
                problem(at, format!("expected the {} to be connected before `{kind}`", side.name()));
            }
            if trigger.is_none() {
                st.connected = false;
                st.mapped = false;
                st.logging = false;
            } else {
                st.maybe_gone = true;
            }
        }
        Fault::ServerKill { side, at: trigger, restart } => {
            let st = sides.get_mut(side).expect("both sides are present");
            if !st.started {
                problem(
                    at,
                    format!("expected the {} server to be started (by a `connect`) before `{kind}`", side.name()),
                );
            }
            if trigger.is_none() {
                *st = SideState { started: *restart, ..SideState::default() };
                if *restart {
                    pending_hooks.retain(|(s, _)| s != side);
                }
            } else {
                st.maybe_gone = true;
                if *restart {
                    pending_hooks.retain(|(s, _)| s != side);
                }
            }
        }
        Fault::Proxy { side, at: trigger, .. } => {
            if trigger.after.is_some() {
                problem(at, "expected a proxy trigger without `after` (proxy faults count from the fault step)".into());
            }
            if trigger.nth == 0 {
                problem(at, "expected `at.nth` of at least 1 (messages are counted from 1)".into());
            }
            if !sides[side].connected {
                problem(at, format!("expected a `connect` to the {} before a proxy fault", side.name()));
            }
        }
        Fault::DeviceArc { side, from, to } => {
            if from == to {
                problem(at, "expected `from` and `to` to differ (an arc joins two states)".into());
            } else if crate::oracle::protocol::next_hop(from.to_wire(), to.to_wire()) != Some(to.to_wire()) {
                problem(
                    at,
                    format!(
                        "expected a direct arc of the state machine (RUNNING->STOP, STOP->RUNNING, STOP->STOP_COPY, \
                         STOP_COPY->STOP, STOP->RESUMING, RESUMING->STOP, RUNNING->PRE_COPY, PRE_COPY->RUNNING, \
                         PRE_COPY->STOP_COPY), found {from:?}->{to:?}"
                    ),
                );
            }
            pending_hooks.push((*side, at));
        }
        Fault::DeviceReadAfter { side, .. } => pending_hooks.push((*side, at)),
        Fault::Stream(_) => {
            if pending_stream.is_some() {
                problem(at, "expected one stream fault per `migrate` step".into());
            }
            *pending_stream = Some(at);
        }
        Fault::DmaUnmapped { side, len, .. } => {
            if !sides[side].connected {
                problem(at, format!("expected a `connect` to the {} before `{kind}`", side.name()));
            }
            if len.bytes() == 0 {
                problem(at, "expected a non-zero `len`".into());
            }
        }
        Fault::UnmapWhileLogging { side, .. } => {
            let st = sides[side];
            if !st.connected || !st.mapped || !st.logging {
                problem(
                    at,
                    format!(
                        "expected `connect`, `map` and `start-logging` on the {} before `{kind}` (logging must be on)",
                        side.name()
                    ),
                );
            }
        }
    }
}

/// Checks explicit RAM regions: aligned, not overlapping, adding up to `ram`.
fn check_regions(regions: &[super::model::RamRegionSpec], ram: u64) -> Vec<String> {
    let mut messages = Vec::new();
    if regions.is_empty() {
        messages.push("expected at least one region".into());
    }
    let mut sorted: Vec<_> = regions.iter().map(|r| (r.iova.bytes(), r.size.bytes())).collect();
    sorted.sort_unstable();
    let mut total: u64 = 0;
    let mut end_before = 0;
    for (i, &(iova, size)) in sorted.iter().enumerate() {
        if iova % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 || size == 0 {
            messages.push(format!("expected 4K-aligned, non-empty regions, found iova {iova:#x} size {size:#x}"));
        }
        if i > 0 && iova < end_before {
            messages.push(format!("expected regions that do not overlap, found one at {iova:#x}"));
        }
        end_before = iova.saturating_add(size);
        total = total.saturating_add(size);
    }
    if !regions.is_empty() && total != ram {
        messages.push(format!("expected regions that add up to the RAM size {ram:#x}, they add up to {total:#x}"));
    }
    messages
}
