//! A scenario and its seed replay byte for byte: two runs give the same message trace, and
//! another seed gives another.

use std::path::Path;

use harness::run::{RunOptions, ServerCommand, run_scenario};
use harness::scenario::load_path;

fn trace_of(file: &str, seed: Option<u64>) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(file);
    let scenario = load_path(&path).expect("the scenario loads");
    let options = RunOptions {
        seed,
        server: ServerCommand::miglab(env!("CARGO_BIN_EXE_miglab")).into(),
        reports: None,
        concurrent: false,
        strict: false,
    };
    let out = run_scenario(&scenario, &path, &options).expect("the run starts");
    assert!(out.report.passed(), "{}", harness::report::terminal_summary(&out.report));
    out.trace
}

/// The first line where two traces differ, for the failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            let cut = |s: &str| s.chars().take(300).collect::<String>();
            return format!("line {}:\n  first:  {}\n  second: {}", i + 1, cut(x), cut(y));
        }
    }
    format!("one trace is longer: {} against {} lines", a.lines().count(), b.lines().count())
}

#[test]
fn the_same_scenario_and_seed_give_the_same_trace_byte_for_byte() {
    // Interleaved DMA, vCPU writes, region access and state changes, a cancelled migration, a
    // disconnect and a second migration: every source of randomness of a run.
    let first = trace_of("cancel-then-migrate.yaml", None);
    let second = trace_of("cancel-then-migrate.yaml", None);
    assert!(first.len() > 10_000, "the trace holds the run ({} bytes)", first.len());
    assert!(first == second, "the traces differ at {}", first_difference(&first, &second));
}

#[test]
fn another_seed_gives_another_trace() {
    let a = trace_of("cancel-then-migrate.yaml", Some(1));
    let b = trace_of("cancel-then-migrate.yaml", Some(2));
    assert_ne!(a, b);
}

#[test]
fn qemu_s_iteration_replays_byte_for_byte() {
    // Reads that cut the device's records, a rate limit and a switchover with data unread.
    let first = trace_of("qemu-iteration.yaml", None);
    let second = trace_of("qemu-iteration.yaml", None);
    assert!(first == second, "the traces differ at {}", first_difference(&first, &second));
}
