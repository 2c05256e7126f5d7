//! The data model of one run's report, filled by the scenario runner and rendered by the writers.
//!
//! Everything here is plain data: no clock reads, no randomness. The caller passes the start time
//! as a string and every duration in microseconds, so the same run gives the same report bytes.

use std::collections::BTreeSet;
use std::path::PathBuf;

use mock_qemu::migrate::MigrationStats;
use serde::{Deserialize, Serialize};

/// Everything a person (or CI) needs to know about one scenario run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// The scenario's name.
    pub scenario: String,
    /// The seed the run used; with `file` it replays the run.
    pub seed: u64,
    /// The scenario file.
    pub file: PathBuf,
    /// Whether the run was concurrent (`--concurrent`): then it does not replay byte for byte.
    #[serde(default)]
    pub concurrent: bool,
    /// The command-line arguments that chose its servers (`--server CMD` and the like), for
    /// the replay command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_args: Vec<String>,
    /// Whether the run passed.
    pub outcome: Outcome,
    /// What the run found wrong with the servers, each with its severity (known deviations
    /// included, which fail the run only under `--strict`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<super::Finding>,
    /// When the run started, RFC 3339 (passed in by the caller; the report never reads the clock).
    pub started: String,
    /// The whole run, in microseconds.
    pub duration_micros: u64,
    /// The scenario's steps, in order.
    #[serde(default)]
    pub steps: Vec<StepResult>,
    /// What happened to the two devices over time.
    #[serde(default)]
    pub timeline: Vec<TimelineEvent>,
    /// Dirty pages per round: what the guest and device wrote against what the dirty log reported.
    #[serde(default)]
    pub dirty: Vec<DirtyRound>,
    /// Guest pages that differ between the source and the destination after the migration.
    #[serde(default)]
    pub ram_diff: Vec<PageDiff>,
    /// Device fields that differ between the two sides, one readable line each.
    #[serde(default)]
    pub device_diff: Vec<String>,
    /// The migration's statistics, when a migration ran.
    #[serde(default)]
    pub stats: Option<MigrationStats>,
    /// Totals.
    #[serde(default)]
    pub counts: Counts,
}

impl RunReport {
    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Passed)
    }

    /// Lost (written, not reported) and over-reported pages summed over the dirty rounds.
    pub fn dirty_totals(&self) -> (u64, u64) {
        self.dirty
            .iter()
            .fold((0, 0), |(lost, over), r| (lost + r.lost().len() as u64, over + r.over_reported().len() as u64))
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Every step and check succeeded.
    Passed,
    /// Something went wrong.
    Failed {
        /// Why, in one line.
        reason: String,
    },
}

/// One step of the scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// The step's position in the scenario, from 0.
    pub index: usize,
    /// The kind of step ("migrate", "fault", "check", …).
    pub kind: String,
    /// What the step does, as written in the scenario.
    pub description: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// What went wrong, or anything else worth a line.
    #[serde(default)]
    pub detail: Option<String>,
    /// How long it took, in microseconds.
    pub micros: u64,
}

/// Which device of the pair an event concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The device being migrated away from.
    Source,
    /// The device being migrated to.
    Destination,
}

impl Side {
    /// The lower-case name, as shown in the pictures.
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

/// Something that happened at one instant of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Microseconds since the run started.
    pub t_micros: u64,
    /// Which device.
    pub side: Side,
    /// What happened.
    pub kind: EventKind,
}

/// What a [`TimelineEvent`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The device's migration state changed (states are names such as "RUNNING", "PRE_COPY").
    StateChange {
        /// The state before.
        from: String,
        /// The state after.
        to: String,
    },
    /// A pre-copy round started.
    RoundStart {
        /// Round number (round 0 is the first full RAM pass).
        round: u32,
    },
    /// A pre-copy round ended.
    RoundEnd {
        /// Round number.
        round: u32,
    },
    /// A fault was injected.
    Fault {
        /// The fault's name.
        name: String,
    },
    /// The source stopped the guest and switched over.
    Switchover,
    /// Anything else worth marking.
    Note {
        /// A short text.
        text: String,
    },
}

/// Dirty pages of one round: the truth (what was written) against what the dirty log reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyRound {
    /// Round number.
    pub round: u32,
    /// How many guest pages there are (the width of the map).
    pub page_count: u64,
    /// Page numbers written in this round (the truth).
    #[serde(default)]
    pub written: Vec<u64>,
    /// Page numbers the dirty log reported for this round.
    #[serde(default)]
    pub reported: Vec<u64>,
    /// Whether this is the final sync, after the device stopped (stop-and-copy).
    #[serde(default)]
    pub stop_copy: bool,
}

impl DirtyRound {
    /// "round N", or "stop-copy" for the final sync.
    pub fn label(&self) -> String {
        if self.stop_copy { "stop-copy".into() } else { format!("round {}", self.round) }
    }

    /// Pages written but not reported, ascending: data loss.
    pub fn lost(&self) -> Vec<u64> {
        difference(&self.written, &self.reported)
    }

    /// Pages reported but not written, ascending: over-reporting (costly, not wrong).
    pub fn over_reported(&self) -> Vec<u64> {
        difference(&self.reported, &self.written)
    }

    /// Pages both written and reported, ascending.
    pub fn matched(&self) -> Vec<u64> {
        let b: BTreeSet<u64> = self.reported.iter().copied().collect();
        self.written.iter().copied().collect::<BTreeSet<u64>>().into_iter().filter(|p| b.contains(p)).collect()
    }
}

fn difference(a: &[u64], b: &[u64]) -> Vec<u64> {
    let b: BTreeSet<u64> = b.iter().copied().collect();
    a.iter().copied().collect::<BTreeSet<u64>>().into_iter().filter(|p| !b.contains(p)).collect()
}

/// A guest page that differs between the two sides, with its first bytes on each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageDiff {
    /// The page's guest physical address.
    pub addr: u64,
    /// The page's first bytes on the source.
    pub first_bytes_source: Vec<u8>,
    /// The page's first bytes on the destination.
    pub first_bytes_destination: Vec<u8>,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// vfio-user messages exchanged.
    pub messages: u64,
    /// Pages reported dirty that were not written.
    pub over_reported: u64,
    /// Pages written that were not reported dirty (data loss).
    pub lost: u64,
}
