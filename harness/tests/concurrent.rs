//! Concurrent mode: the device's background writer races the dirty reports of every
//! migration, and the runs still pass — no page the device wrote is missing from a report,
//! and the destination equals the source once the writes it made after starting are counted.

use std::path::Path;

use harness::report::terminal_summary;
use harness::run::{RunOptions, ServerCommand, run_scenario};
use harness::scenario::load_path;

fn run_concurrent(file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(file);
    let scenario = load_path(&path).expect("the scenario loads");
    let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join("concurrent-reports");
    let options = RunOptions {
        seed: None,
        server: ServerCommand::miglab(env!("CARGO_BIN_EXE_miglab")),
        reports: Some(reports),
        concurrent: true,
    };
    let out = run_scenario(&scenario, &path, &options).expect("the run starts");
    assert!(out.report.passed(), "{}", terminal_summary(&out.report));
    let notes: Vec<String> = out
        .report
        .timeline
        .iter()
        .filter_map(|e| match &e.kind {
            harness::report::EventKind::Note { text } if text.starts_with("background writer") => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert!(!notes.is_empty(), "the background writer ran in every migration that completed");
}

#[test]
fn live_migration_under_a_background_writer_loses_nothing() {
    run_concurrent("live-migrate.yaml");
}

#[test]
fn many_rounds_under_a_background_writer_lose_nothing() {
    run_concurrent("heavy-dirty-rate.yaml");
}

#[test]
fn a_cancelled_migration_then_a_second_one_under_a_background_writer() {
    run_concurrent("cancel-then-migrate.yaml");
}
