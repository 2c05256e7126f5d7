//! Every scenario file is a test: it runs against `vfu-server` processes started from the
//! `miglab` binary, and fails with the run's summary, its report and the replay command.

use std::path::Path;

use harness::report::terminal_summary;
use harness::run::{RunOptions, ServerCommand, run_scenario};
use harness::scenario::load_path;

fn run_file(path: &Path) -> datatest_stable::Result<()> {
    let scenario = load_path(path)?;
    let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scenario-reports");
    let options = RunOptions {
        seed: None,
        server: ServerCommand::miglab(env!("CARGO_BIN_EXE_miglab")).into(),
        reports: Some(reports),
        concurrent: false,
        strict: false,
    };
    let out = run_scenario(&scenario, path, &options)?;
    if out.report.passed() {
        return Ok(());
    }
    let summary = terminal_summary(&out.report);
    let at = out.written.map(|w| w.summary.display().to_string()).unwrap_or_default();
    Err(format!("{summary}report: {at}").into())
}

datatest_stable::harness! {
    { test = run_file, root = "../scenarios", pattern = r"^(regressions/|reference/)?[^/]+\.yaml$" },
}
