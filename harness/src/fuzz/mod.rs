//! Fuzz-style campaigns: scenarios generated from seeds ([`generate`](mod@generate)), each run and judged by the
//! oracle as a written scenario is; a failure is shrunk ([`shrink`]) while it fails the same
//! way and written to `scenarios/regressions/` as a readable file, beside its report; the
//! campaign counts what of the model it exercised ([`coverage`]).
//!
//! Seeds are split deterministically: shard `I/N` runs the seeds `s` with `s % N == I`, so
//! the jobs of a CI matrix each run their part and each part replays on its own.

pub mod coverage;
pub mod explore;
pub mod generate;
pub mod iteration;
mod logging;
mod migration;
pub mod shrink;
pub mod summary;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use coverage::Coverage;
use generate::{Generated, generate_for};

use crate::report::{Outcome, RunReport};
use crate::run::{RunOptions, Servers, run_scenario};
use crate::scenario::load_str;

/// What a campaign runs.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    /// The seeds (the whole range, before sharding).
    pub seeds: Range<u64>,
    /// Stop after this long, whatever is left of the range.
    pub time: Option<Duration>,
    /// Runs at once.
    pub jobs: usize,
    /// `(I, N)`: run the seeds `s % N == I`.
    pub shard: (u64, u64),
    /// What serves each side.
    pub server: Servers,
    /// The device profile the scenarios are drawn for.
    pub device: crate::scenario::model::DeviceKind,
    /// Concurrent runs (the device's background writer during migrations).
    pub concurrent: bool,
    /// Where shrunk failures go (`scenarios/regressions/`); none written when `None`.
    pub regressions: Option<PathBuf>,
    /// Where their reports go (`reports/`).
    pub reports: PathBuf,
    /// Shrink failures.
    pub shrink: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// A failure of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    /// The seed.
    pub seed: u64,
    /// How it failed, numbers left out: what "the same way" means when shrinking.
    pub signature: String,
    /// The reason, in full.
    pub reason: String,
    /// Steps before and after shrinking.
    pub steps: (usize, usize),
    /// Runs the shrinking took.
    pub shrink_runs: u32,
    /// The regression file written.
    pub file: Option<PathBuf>,
    /// Other seeds that failed the same way.
    pub same: Vec<u64>,
    /// The kind of the run's worst finding (`hang no-reply`, `violation server-died`): ways
    /// of failing are grouped by it in the campaign's summary.
    #[serde(default)]
    pub kind: String,
}

/// The severity and kind of a run's worst finding, deviations last.
fn worst_kind(report: &RunReport) -> String {
    report.findings.iter().min_by_key(|f| f.severity).map_or_else(
        || "failed".to_owned(),
        |f| match f.severity.name() {
            name if name == f.kind => name.to_owned(),
            name => format!("{name} {}", f.kind),
        },
    )
}

/// What a campaign did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Scenarios run (shrinking runs not counted).
    pub runs: u64,
    /// The failures, one per way of failing.
    pub findings: Vec<Finding>,
    /// Seeds whose generated file did not load: a generator bug.
    pub generator_errors: Vec<(u64, String)>,
    /// What the runs exercised.
    pub coverage: Coverage,
    /// How long the runs took (shrinking left out).
    pub elapsed: Duration,
    /// How long shrinking took.
    pub shrink_elapsed: Duration,
}

impl Summary {
    /// Scenarios per second.
    pub fn rate(&self) -> f64 {
        self.runs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How a run failed, for comparing failures: the failing step's kind and the reason with
/// every number, address and name of a temporary file left out.
pub fn signature(report: &RunReport) -> Option<String> {
    let Outcome::Failed { reason } = &report.outcome else { return None };
    let kind = report.steps.iter().find(|s| !s.ok).map_or("run", |s| s.kind.as_str());
    let body = reason.split_once("): ").map_or(reason.as_str(), |(_, r)| r);
    let mut out = String::new();
    let mut in_number = false;
    for c in body.chars() {
        if c.is_ascii_hexdigit() && (in_number || c.is_ascii_digit()) || (in_number && c == 'x') {
            if !in_number {
                out.push('#');
                in_number = true;
            }
        } else {
            in_number = false;
            out.push(c);
        }
    }
    // A list of numbers is one number: how many pages were lost is not how it failed.
    while out.contains("#, #") {
        out = out.replace("#, #", "#");
    }
    Some(format!("{kind}: {}", out.chars().take(80).collect::<String>()))
}

/// The first seed of shard `shard` of `shards` at or after `start`: the shard runs it and
/// every `shards`-th seed after it.
pub fn shard_first(start: u64, shard: u64, shards: u64) -> u64 {
    start + (shard + shards - start % shards) % shards
}

/// Runs one generated scenario; `Err` when its file does not load.
fn run_one(g: &Generated, options: &FuzzOptions, reports: Option<&Path>) -> Result<crate::run::RunOutput, String> {
    let text = g.render(None);
    let scenario = load_str(&text, &format!("{}.yaml", g.name())).map_err(|e| e.to_string())?;
    let run = RunOptions {
        seed: None,
        server: options.server.clone(),
        reports: reports.map(Path::to_owned),
        concurrent: options.concurrent,
        strict: false,
    };
    run_scenario(&scenario, Path::new(&format!("{}.yaml", g.name())), &run).map_err(|e| e.to_string())
}

/// The faults a generated scenario names.
fn faults_of(g: &Generated) -> Vec<&'static str> {
    let text = g.render(None);
    generate::FAULTS.iter().copied().filter(|f| text.contains(&format!("{{{f}:"))).collect()
}

/// Runs a campaign; `tick` is told of each run (for a progress bar): seeds run, failures.
pub fn campaign(options: &FuzzOptions, tick: &(dyn Fn(u64, usize) + Sync)) -> Summary {
    let started = Instant::now();
    let (shard, shards) = (options.shard.0, options.shard.1.max(1));
    let first = shard_first(options.seeds.start, shard % shards, shards);
    let next = AtomicU64::new(0);
    let shared = Arc::new(Mutex::new((Summary::default(), BTreeMap::<String, (u64, String, Generated)>::new())));
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            let shared = shared.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    if options.time.is_some_and(|t| started.elapsed() >= t) {
                        return;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seed) = k.checked_mul(shards).and_then(|o| first.checked_add(o)) else { return };
                    if seed >= options.seeds.end {
                        return;
                    }
                    let g = generate_for(seed, options.device);
                    let result = run_one(&g, options, None);
                    let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    let (summary, failures) = &mut *s;
                    summary.runs += 1;
                    match result {
                        Err(e) => summary.generator_errors.push((seed, e)),
                        Ok(out) => {
                            summary.coverage.add_run(&out.trace, &out.arcs, &faults_of(&g));
                            summary.coverage.add_matrix(&out.matrix);
                            if let Some(sig) = signature(&out.report) {
                                let reason = match &out.report.outcome {
                                    Outcome::Failed { reason } => reason.clone(),
                                    Outcome::Passed => String::new(),
                                };
                                match failures.get(&sig) {
                                    Some(_) => {
                                        if let Some(f) = summary.findings.iter_mut().find(|f| f.signature == sig) {
                                            f.same.push(seed);
                                        }
                                    }
                                    None => {
                                        failures.insert(sig.clone(), (seed, reason.clone(), g));
                                        summary.findings.push(Finding {
                                            kind: worst_kind(&out.report),
                                            seed,
                                            signature: sig,
                                            reason,
                                            steps: (0, 0),
                                            shrink_runs: 0,
                                            file: None,
                                            same: Vec::new(),
                                        });
                                    }
                                }
                            }
                        }
                    }
                    tick(summary.runs, summary.findings.len());
                }
            });
        }
    });
    let (mut summary, failures) =
        Arc::try_unwrap(shared).map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner)).unwrap_or_default();
    // The campaign's own time; shrinking comes after.
    summary.elapsed = started.elapsed();
    let shrinking = Instant::now();
    for finding in &mut summary.findings {
        let Some((_, _, g)) = failures.get(&finding.signature) else { continue };
        let small = if options.shrink {
            let (small, runs) = shrink::shrink(g, shrink::Budget::default(), |c| {
                run_one(c, options, None).ok().and_then(|o| signature(&o.report)).as_deref()
                    == Some(finding.signature.as_str())
            });
            finding.shrink_runs = runs;
            small
        } else {
            g.clone()
        };
        finding.steps = (g.steps.len(), small.steps.len());
        if let Some(dir) = &options.regressions {
            let file = dir.join(format!("{}.yaml", small.name()));
            let text = small.render(Some(&finding.reason));
            if std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&file, text)).is_ok() {
                // Its report, from the file as written.
                if let Ok(s) = crate::scenario::load_path(&file) {
                    let run = RunOptions {
                        seed: None,
                        server: options.server.clone(),
                        reports: Some(options.reports.clone()),
                        concurrent: options.concurrent,
                        strict: false,
                    };
                    let _ = run_scenario(&s, &file, &run);
                }
                finding.file = Some(file);
            }
        }
    }
    summary.shrink_elapsed = shrinking.elapsed();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::StepResult;

    fn failed(kind: &str, reason: &str) -> RunReport {
        RunReport {
            scenario: "s".into(),
            seed: 1,
            file: "s.yaml".into(),
            concurrent: false,
            server_args: Vec::new(),
            findings: Vec::new(),
            outcome: Outcome::Failed { reason: reason.into() },
            started: String::new(),
            duration_micros: 0,
            steps: vec![StepResult {
                index: 3,
                kind: kind.into(),
                description: String::new(),
                ok: false,
                detail: None,
                micros: 0,
            }],
            timeline: Vec::new(),
            dirty: Vec::new(),
            ram_diff: Vec::new(),
            device_diff: Vec::new(),
            stats: None,
            counts: Default::default(),
        }
    }

    #[test]
    fn failures_that_differ_only_in_numbers_have_one_signature() {
        let a = failed("migrate", "step 3 (migrate, line 9): data loss: 2 page(s) ... 0x1000, 0x5000");
        let b = failed("migrate", "step 7 (migrate, line 20): data loss: 14 page(s) ... 0xabc000");
        assert_eq!(signature(&a), signature(&b));
        assert_ne!(signature(&a), signature(&failed("interleave", "step 3 (interleave, line 9): data loss")));
    }

    #[test]
    fn shards_split_the_seeds_between_them() {
        let (shards, range) = (3u64, 10u64..30);
        let mut all: Vec<u64> = Vec::new();
        for i in 0..shards {
            all.extend((shard_first(range.start, i, shards)..range.end).step_by(shards as usize));
        }
        all.sort_unstable();
        assert_eq!(all, range.collect::<Vec<_>>());
    }
}
