//! Concurrent mode: the device's background writer races the dirty reports of every
//! migration, and the runs still pass — no page the device wrote is missing from a report,
//! and the destination equals the source once the writes it made after starting are counted.

use std::path::Path;

use harness::report::terminal_summary;
use harness::run::{RunOptions, ServerCommand, run_scenario};
use harness::scenario::{load_path, load_str};

/// Runs `file` (under scenarios/) in concurrent mode; it must pass. Returns the timeline's
/// notes about the background writer.
fn run_concurrent(file: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(file);
    let scenario = load_path(&path).expect("the scenario loads");
    run_loaded(&scenario, &path)
}

fn run_loaded(scenario: &harness::scenario::model::Scenario, path: &Path) -> Vec<String> {
    let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join("concurrent-reports");
    let options = RunOptions {
        seed: None,
        server: ServerCommand::miglab(env!("CARGO_BIN_EXE_miglab")).into(),
        reports: Some(reports),
        concurrent: true,
        strict: false,
    };
    let out = run_scenario(scenario, path, &options).expect("the run starts");
    assert!(out.report.passed(), "{}", terminal_summary(&out.report));
    out.report
        .timeline
        .iter()
        .filter_map(|e| match &e.kind {
            harness::report::EventKind::Note { text } if text.contains("background writer") => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// Runs `file` and checks that the background writer ran in a migration that completed.
fn writer_ran(file: &str) -> Vec<String> {
    let notes = run_concurrent(file);
    assert!(
        notes.iter().any(|n| n.starts_with("background writer:")),
        "the background writer ran in every migration that completed: {notes:?}"
    );
    notes
}

#[test]
fn live_migration_under_a_background_writer_loses_nothing() {
    writer_ran("live-migrate.yaml");
}

#[test]
fn many_rounds_under_a_background_writer_lose_nothing() {
    writer_ran("heavy-dirty-rate.yaml");
}

#[test]
fn a_cancelled_migration_then_a_second_one_under_a_background_writer() {
    writer_ran("cancel-then-migrate.yaml");
}

#[test]
fn a_stopped_source_migrates_without_a_new_writer() {
    // A device in STOP_COPY refuses the BG_* writes with EBUSY, as every BAR0 write, and
    // must not DMA: the migration goes on without a writer.
    let notes = run_concurrent("regressions/fuzz-137.yaml");
    assert!(notes.iter().any(|n| n.starts_with("no background writer: the device is in StopCopy")), "{notes:?}");
}

#[test]
fn the_writer_goes_where_guest_ram_is_mapped_with_its_fd() {
    // Region 0 is reached only by DMA messages, region 1 was mapped again with its fd.
    writer_ran("regressions/fuzz-239.yaml");
}

#[test]
fn a_writer_left_on_a_stopped_source_resumes_on_the_next_destination() {
    let notes = writer_ran("regressions/fuzz-27.yaml");
    let migrations = notes.iter().filter(|n| n.starts_with("background writer:")).count();
    assert_eq!(migrations, 3, "every migration carried the writer: {notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("background writer disabled where the device runs again")), "{notes:?}");
}

#[test]
fn a_destination_that_maps_the_window_without_its_fd_faults_its_writer() {
    let text = r#"
name: destination-by-message
description: The destination reaches guest RAM only by DMA messages, so its writer faults.
seed: 5
device: {kind: dma-engine}
guest: {ram: 32M, layout: {regions: [{iova: 0, size: 32M}]}}
workload: {dma: {commands_per_step: 1}}
steps:
  - connect: {side: source}
  - map: {side: source}
  - connect: {side: destination}
  - map: {side: destination, backing: message}
  - migrate: {budget: {max_rounds: 3, downtime_ms: 1, bandwidth: 1G}, expect: migrated}
"#;
    let scenario = load_str(text, "destination-by-message.yaml").expect("the scenario loads");
    let notes = run_loaded(&scenario, Path::new("destination-by-message.yaml"));
    assert!(notes.iter().any(|n| n.ends_with(", 0 after")), "{notes:?}");
}
