//! Run reports: what a scenario run leaves under `reports/<scenario>-<seed>/`.
//!
//! The runner fills a [`RunReport`] (plain data, no clock reads) and calls [`write_report`], which
//! writes:
//!
//! - `summary.md`: outcome, a figures table per round, lost and over-reported pages, hex diffs of
//!   the first differing pages, device field differences and the replay command;
//! - `report.json`: the [`RunReport`] itself;
//! - `junit.xml`: one test suite for the scenario, one test case per step;
//! - `trace.jsonl`: the message trace, copied from where the runner recorded it;
//! - `timeline.svg`: both devices' states over time, rounds, faults and the switchover;
//! - `dirty-map.svg`: per round, which pages were written and which were reported dirty.
//!
//! The same report gives the same bytes. The terminal gets [`terminal_summary`].

mod dirtymap;
mod finding;
mod hexdiff;
mod junit;
mod model;
mod summary;
mod svg;
#[cfg(test)]
mod tests;
mod timeline;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use dirtymap::{MAX_COLUMNS, dirty_map_svg};
pub use finding::{Finding, Severity};
pub use hexdiff::hex_diff;
pub use junit::junit_xml;
pub use model::{Counts, DirtyRound, EventKind, Outcome, PageDiff, RunReport, Side, StepResult, TimelineEvent};
pub use summary::{MAX_PAGE_DIFFS, replay_command, summary_markdown, terminal_rounds, terminal_summary};
pub use timeline::timeline_svg;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be created, written or copied.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The report could not be turned into JSON.
    #[error("report.json: {0}")]
    Json(#[from] serde_json::Error),
    /// The report could not be turned into JUnit XML.
    #[error("junit.xml: {0}")]
    Junit(#[from] quick_junit::SerializeError),
}

/// The files [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The report directory.
    pub dir: PathBuf,
    /// `summary.md`.
    pub summary: PathBuf,
    /// `report.json`.
    pub json: PathBuf,
    /// `junit.xml`.
    pub junit: PathBuf,
    /// `trace.jsonl`, when a trace was given.
    pub trace: Option<PathBuf>,
    /// `timeline.svg`.
    pub timeline: PathBuf,
    /// `dirty-map.svg`.
    pub dirty_map: PathBuf,
}

/// The directory of a run's report under `root` (usually `reports/`): `<scenario>-<seed>`, with
/// characters that do not belong in a file name replaced by `_`.
pub fn report_dir(root: &Path, report: &RunReport) -> PathBuf {
    let name: String =
        report.scenario.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let name = name.trim_start_matches('.');
    let name = if name.is_empty() { "scenario" } else { name };
    root.join(format!("{name}-{}", report.seed))
}

fn write(path: PathBuf, contents: &[u8]) -> Result<PathBuf, ReportError> {
    fs::write(&path, contents).map_err(|source| ReportError::Io { path: path.clone(), source })?;
    Ok(path)
}

/// Writes the report into `dir` (created if missing; see [`report_dir`]), copying the message
/// trace, when there is one, to `trace.jsonl`. Without a trace, a `trace.jsonl` left by an earlier
/// run in `dir` is removed so that the directory describes one run.
pub fn write_report(dir: &Path, report: &RunReport, trace_jsonl: Option<&Path>) -> Result<Written, ReportError> {
    fs::create_dir_all(dir).map_err(|source| ReportError::Io { path: dir.to_owned(), source })?;
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    let json = write(dir.join("report.json"), json.as_bytes())?;
    let junit = write(dir.join("junit.xml"), junit_xml(report)?.as_bytes())?;
    let summary = write(dir.join("summary.md"), summary_markdown(report).as_bytes())?;
    let timeline = write(dir.join("timeline.svg"), timeline_svg(report).as_bytes())?;
    let dirty_map = write(dir.join("dirty-map.svg"), dirty_map_svg(report).as_bytes())?;
    let target = dir.join("trace.jsonl");
    let trace = match trace_jsonl {
        Some(from) => {
            let same = matches!((fs::canonicalize(from), fs::canonicalize(&target)), (Ok(a), Ok(b)) if a == b);
            if !same {
                fs::copy(from, &target).map_err(|source| ReportError::Io { path: from.to_owned(), source })?;
            }
            Some(target)
        }
        None => {
            match fs::remove_file(&target) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(ReportError::Io { path: target, source: e });
                }
                _ => {}
            }
            None
        }
    };
    Ok(Written { dir: dir.to_owned(), summary, json, junit, trace, timeline, dirty_map })
}
