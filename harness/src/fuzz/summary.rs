//! A campaign's summary as a file (`miglab fuzz --summary-json`) and the merge of several
//! (`miglab merge`): each job of a CI matrix runs one shard and writes its summary, and one job
//! merges them into the campaign's verdict. Coverage is summed and the protocol model's
//! missing cells are recomputed from the merged matrix, since a cell one shard never reached
//! may be another's; failures with the same signature are one way of failing, whichever
//! shard found them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::coverage::Coverage;
use super::{Finding, FuzzOptions, Summary};

/// What a campaign (or the merge of several) did, as `miglab fuzz --summary-json` writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CampaignSummary {
    /// The seed ranges given, before sharding (one, unless campaigns of several were merged).
    pub seeds: Vec<Range<u64>>,
    /// The shards `(I, N)` run.
    pub shards: Vec<(u64, u64)>,
    /// Whether the runs were concurrent.
    pub concurrent: bool,
    /// Scenarios run (shrinking runs not counted).
    pub runs: u64,
    /// Seconds the runs took, summed over the merged campaigns.
    pub elapsed_secs: f64,
    /// One entry per way of failing: its signature, first seed, the other seeds, shrunk file.
    pub findings: Vec<Finding>,
    /// Seeds whose generated file did not load: a generator bug.
    pub generator_errors: Vec<(u64, String)>,
    /// What the runs exercised, with how many times.
    pub coverage: Coverage,
    /// The model's required (state × operation × outcome) cells no run reached.
    pub missing_cells: Vec<String>,
    /// The model's required (state × event) cells no run reached.
    pub missing_events: Vec<String>,
    /// Whether every required cell was reached.
    pub covered: bool,
}

/// Why a summary file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SummaryFileError {
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a campaign summary.
    #[error("{path}: not a campaign summary: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

impl CampaignSummary {
    /// The summary of a campaign run with `options`.
    pub fn from_campaign(summary: &Summary, options: &FuzzOptions) -> Self {
        Self::with_coverage(Self {
            seeds: vec![options.seeds.clone()],
            shards: vec![options.shard],
            concurrent: options.concurrent,
            runs: summary.runs,
            elapsed_secs: summary.elapsed.as_secs_f64(),
            findings: summary.findings.clone(),
            generator_errors: summary.generator_errors.clone(),
            coverage: summary.coverage.clone(),
            missing_cells: Vec::new(),
            missing_events: Vec::new(),
            covered: false,
        })
    }

    /// Fills the missing cells and the verdict from the coverage's matrix.
    fn with_coverage(mut self) -> Self {
        (self.missing_cells, self.missing_events) = self.coverage.model.missing();
        self.covered = self.missing_cells.is_empty() && self.missing_events.is_empty();
        self
    }

    /// Combines the summaries of several campaigns, typically the shards of one seed range.
    pub fn merge(parts: &[CampaignSummary]) -> Self {
        let mut merged = Self {
            seeds: Vec::new(),
            shards: Vec::new(),
            concurrent: parts.iter().any(|p| p.concurrent),
            runs: parts.iter().map(|p| p.runs).sum(),
            elapsed_secs: parts.iter().map(|p| p.elapsed_secs).sum(),
            findings: Vec::new(),
            generator_errors: parts.iter().flat_map(|p| p.generator_errors.iter().cloned()).collect(),
            coverage: Coverage::default(),
            missing_cells: Vec::new(),
            missing_events: Vec::new(),
            covered: false,
        };
        let mut ways: BTreeMap<String, Finding> = BTreeMap::new();
        for part in parts {
            for range in &part.seeds {
                if !merged.seeds.contains(range) {
                    merged.seeds.push(range.clone());
                }
            }
            merged.shards.extend(part.shards.iter().copied());
            merged.coverage.merge(&part.coverage);
            for finding in &part.findings {
                ways.entry(finding.signature.clone())
                    .and_modify(|way| join(way, finding))
                    .or_insert_with(|| join_seeds(finding.clone(), Vec::new()));
            }
        }
        merged.shards.sort_unstable();
        merged.generator_errors.sort();
        merged.findings = ways.into_values().collect();
        merged.with_coverage()
    }

    /// Reads a summary file.
    pub fn read(path: &Path) -> Result<Self, SummaryFileError> {
        let text = std::fs::read(path).map_err(|source| SummaryFileError::Io { path: path.to_owned(), source })?;
        serde_json::from_slice(&text).map_err(|source| SummaryFileError::Json { path: path.to_owned(), source })
    }

    /// Writes the summary file.
    pub fn write(&self, path: &Path) -> Result<(), SummaryFileError> {
        let io = |source| SummaryFileError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::from).map_err(io)?;
        std::fs::write(path, text + "\n").map_err(io)
    }

    /// Whether the campaign passed: no failure, no generator error and, when `require_coverage`,
    /// every required cell reached.
    pub fn passed(&self, require_coverage: bool) -> bool {
        self.findings.is_empty() && self.generator_errors.is_empty() && (self.covered || !require_coverage)
    }

    /// The ways of failing grouped by the kind of their worst finding: how many ways and
    /// seeds, and the shrunk file with the fewest steps.
    pub fn by_kind(&self) -> String {
        let mut kinds: std::collections::BTreeMap<&str, (usize, usize, Option<&Finding>)> = Default::default();
        for f in &self.findings {
            let k = kinds.entry(f.kind.as_str()).or_default();
            k.0 += 1;
            k.1 += 1 + f.same.len();
            if f.file.is_some() && k.2.is_none_or(|best| f.steps.1 < best.steps.1) {
                k.2 = Some(f);
            }
        }
        let mut out = String::new();
        if !kinds.is_empty() {
            let _ = writeln!(out, "\nfailing ways by kind:");
        }
        for (kind, (ways, seeds, smallest)) in kinds {
            let kind = if kind.is_empty() { "failed" } else { kind };
            let small = smallest
                .and_then(|f| {
                    f.file.as_ref().map(|file| format!("; smallest: {} ({} steps)", file.display(), f.steps.1))
                })
                .unwrap_or_default();
            let _ = writeln!(out, "  {kind}: {ways} way(s), {seeds} seed(s){small}");
        }
        out
    }

    /// What a campaign prints after its runs: coverage, generator errors, each way of failing
    /// with its seeds and the command that replays its shrunk file, and the coverage verdict
    /// when `require_coverage`.
    pub fn render(&self, require_coverage: bool) -> String {
        let mut out = self.coverage.summary();
        for (seed, e) in &self.generator_errors {
            let _ = writeln!(out, "generator error, seed {seed}: {e}");
        }
        for f in &self.findings {
            let _ = writeln!(out, "\nFAIL seed {}: {}", f.seed, f.reason);
            if !f.same.is_empty() {
                let more: Vec<String> = f.same.iter().take(10).map(u64::to_string).collect();
                let _ = writeln!(out, "      the same way: seeds {}", more.join(", "));
            }
            let _ = writeln!(out, "      shrunk from {} to {} steps in {} runs", f.steps.0, f.steps.1, f.shrink_runs);
            if let Some(file) = &f.file {
                let _ = writeln!(out, "      replay: cargo run -p harness --bin miglab -- scenario {}", file.display());
            }
        }
        out.push_str(&self.by_kind());
        if require_coverage && !self.covered {
            let _ = writeln!(
                out,
                "coverage: {} required cell(s) and {} event cell(s) not reached (--require-coverage)",
                self.missing_cells.len(),
                self.missing_events.len()
            );
        }
        out
    }
}

/// Adds `other`'s seeds to `way`; the lowest seed's failure (its reason and shrunk file) stands
/// for the way, as the first seed of a campaign does.
fn join(way: &mut Finding, other: &Finding) {
    let seeds = [way, other].iter().flat_map(|f| std::iter::once(f.seed).chain(f.same.iter().copied())).collect();
    let lead = if other.seed < way.seed { other.clone() } else { way.clone() };
    *way = join_seeds(lead, seeds);
}

/// `finding` with `more` seeds: its own seed the lowest, the others sorted in `same`.
fn join_seeds(mut finding: Finding, more: Vec<u64>) -> Finding {
    let mut seeds: Vec<u64> = more.into_iter().chain(finding.same.iter().copied()).collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds.retain(|&s| s != finding.seed);
    finding.same = seeds;
    finding
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(seed: u64, signature: &str, same: &[u64]) -> Finding {
        Finding {
            kind: "violation protocol-model".into(),
            seed,
            signature: signature.into(),
            reason: format!("seed {seed}: {signature}"),
            steps: (9, 2),
            shrink_runs: 5,
            file: Some(PathBuf::from(format!("scenarios/regressions/fuzz-{seed}.yaml"))),
            same: same.to_vec(),
        }
    }

    const SEEDS: Range<u64> = 0..30;

    fn part(shard: u64, findings: Vec<Finding>) -> CampaignSummary {
        CampaignSummary {
            seeds: vec![SEEDS],
            shards: vec![(shard, 3)],
            concurrent: false,
            runs: 10,
            elapsed_secs: 1.0,
            findings,
            generator_errors: Vec::new(),
            coverage: Coverage::default(),
            missing_cells: Vec::new(),
            missing_events: Vec::new(),
            covered: false,
        }
    }

    #[test]
    fn ways_of_failing_are_grouped_by_kind_with_their_smallest_file() {
        let mut a = finding(1, "a", &[4, 5]);
        a.file = Some("r/fuzz-1.yaml".into());
        a.steps = (20, 9);
        let mut b = finding(2, "b", &[]);
        b.file = Some("r/fuzz-2.yaml".into());
        b.steps = (12, 3);
        let mut c = finding(3, "c", &[]);
        c.kind = "hang no-reply".into();
        c.file = None;
        let s = CampaignSummary { findings: vec![a, b, c], ..CampaignSummary::default() };
        let text = s.by_kind();
        assert!(text.contains("hang no-reply: 1 way(s), 1 seed(s)\n"), "{text}");
        assert!(
            text.contains("violation protocol-model: 2 way(s), 4 seed(s); smallest: r/fuzz-2.yaml (3 steps)"),
            "{text}"
        );
    }

    #[test]
    fn the_same_signature_in_two_shards_is_one_way_led_by_its_lowest_seed() {
        let merged = CampaignSummary::merge(&[
            part(1, vec![finding(7, "migrate: data loss", &[22, 13]), finding(4, "interleave: EBUSY", &[])]),
            part(2, vec![finding(5, "migrate: data loss", &[8])]),
        ]);
        assert_eq!(merged.runs, 20);
        assert_eq!(merged.seeds, [SEEDS]);
        assert_eq!(merged.shards, vec![(1, 3), (2, 3)]);
        let ways: Vec<(&str, u64, &[u64])> =
            merged.findings.iter().map(|f| (f.signature.as_str(), f.seed, f.same.as_slice())).collect();
        assert_eq!(ways, vec![("interleave: EBUSY", 4, &[][..]), ("migrate: data loss", 5, &[7, 8, 13, 22][..])]);
        let loss = &merged.findings[1];
        assert_eq!(loss.file, Some(PathBuf::from("scenarios/regressions/fuzz-5.yaml")));
        assert!(!merged.passed(false));
    }

    #[test]
    fn a_cell_one_shard_missed_and_another_reached_is_not_missing() {
        let (cells, events) = crate::model::Matrix::required();
        let (mut a, mut b) = (part(0, Vec::new()), part(1, Vec::new()));
        for (i, cell) in cells.iter().enumerate() {
            let parts: Vec<&str> = cell.split(" | ").collect();
            let half = if i % 2 == 0 { &mut a } else { &mut b };
            half.coverage.model.reply(parts[0], parts[1], parts[2]);
        }
        for event in &events {
            let (state, event) = event.split_once(" | ").expect("state | event");
            a.coverage.model.event(state, event);
        }
        let (a, b) = (a.with_coverage(), b.with_coverage());
        assert!(!a.covered && !b.covered);
        let merged = CampaignSummary::merge(&[a, b]);
        assert!(merged.covered, "{:?} {:?}", merged.missing_cells, merged.missing_events);
        assert!(merged.passed(true));
        assert!(!merged.render(true).contains("not reached (--require-coverage)"));
    }

    #[test]
    fn a_summary_file_reads_back_as_written() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("shards/0.json");
        let summary = part(0, vec![finding(3, "migrate: data loss", &[6])]).with_coverage();
        summary.write(&path).expect("written");
        assert_eq!(CampaignSummary::read(&path).expect("read"), summary);
    }
}
