//! The servers of a run chosen by command: another server's command line with `{socket}`,
//! per side or both, a server that serves one client and exits, and one that never listens.

use std::path::{Path, PathBuf};

use harness::report::{Outcome, RunReport, Severity};
use harness::run::{RunOptions, ServerCommand, Servers, run_scenario};
use harness::scenario::load_path;

const MIGLAB: &str = env!("CARGO_BIN_EXE_miglab");

/// A scenario with two migrations and a client that leaves and comes back in between.
fn scenario_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/cancel-then-migrate.yaml")
}

/// `miglab serve`'s dma-engine as another server's command would start it.
fn own_server(extra: &str) -> ServerCommand {
    ServerCommand::parse(&format!("{MIGLAB} serve --device dma-engine --socket {{socket}} {extra}"))
        .expect("the command parses")
}

fn run(overrides: [Option<ServerCommand>; 2]) -> RunReport {
    let file = scenario_file();
    let scenario = load_path(&file).expect("the scenario loads");
    let server = Servers { builtin: ServerCommand::miglab(MIGLAB), overrides };
    let options = RunOptions { seed: None, server, reports: None, concurrent: false, strict: false };
    run_scenario(&scenario, &file, &options).expect("the run completes").report
}

fn notes(report: &RunReport) -> Vec<String> {
    report
        .timeline
        .iter()
        .filter_map(|e| match &e.kind {
            harness::report::EventKind::Note { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_scenario_passes_against_servers_given_by_their_command_on_both_sides() {
    let report = run([Some(own_server("")), Some(own_server(""))]);
    assert!(report.passed(), "{:?}", report.outcome);
    assert_eq!(report.server_args[0], "--server", "the replay command names the server: {:?}", report.server_args);
}

#[test]
fn source_and_destination_may_be_served_by_different_commands() {
    let report = run([Some(own_server("")), None]);
    assert!(report.passed(), "{:?}", report.outcome);
    assert_eq!(report.server_args.first().map(String::as_str), Some("--source-server"));
}

#[test]
fn a_server_that_serves_one_client_and_exits_is_started_again_not_reported_as_a_crash() {
    let report = run([None, Some(own_server("--once"))]);
    assert!(report.passed(), "{:?}", report.outcome);
    let restarted = notes(&report).iter().filter(|n| n.contains("served its client and exited")).count();
    assert_eq!(restarted, 1, "the destination's client left once and came back: {:?}", notes(&report));
}

#[test]
fn a_server_that_exits_before_listening_fails_the_run_with_its_log() {
    let broken = ServerCommand::parse("sh -c 'echo no device here >&2; exit 3' {socket}").expect("the command parses");
    let report = run([Some(broken), None]);
    let Outcome::Failed { reason } = &report.outcome else { panic!("the run passed against a broken server") };
    assert!(reason.contains("exit status: 3") && reason.contains("no device here"), "{reason}");
}

fn run_file(name: &str, strict: bool) -> RunReport {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/{name}.yaml"));
    let scenario = load_path(&file).expect("the scenario loads");
    let server = Servers::from(ServerCommand::miglab(MIGLAB));
    let options = RunOptions { seed: None, server, reports: None, concurrent: false, strict };
    run_scenario(&scenario, &file, &options).expect("the run completes").report
}

#[test]
fn a_known_deviation_is_reported_with_its_severity_and_fails_only_under_strict() {
    // vfu-server's libvfio-user-sample pads MIG_DATA_READ replies as the reference does.
    let report = run_file("lvu-sample-migrate", false);
    assert!(report.passed(), "{:?}", report.outcome);
    let kinds: Vec<_> = report.findings.iter().map(|f| (f.severity, f.kind.as_str())).collect();
    assert_eq!(kinds, [(Severity::Deviation, "mig-data-read-padded")]);
    let strict = run_file("lvu-sample-migrate", true);
    let Outcome::Failed { reason } = &strict.outcome else { panic!("--strict let a deviation pass") };
    assert!(reason.contains("known deviation"), "{reason}");
}
