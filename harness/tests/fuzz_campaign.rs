//! A fixed range of generated scenarios passes, and the campaign exercises the model: every
//! state and arc, the commands a migration needs, the errnos the model predicts most, and
//! every fault kind.

use harness::fuzz::{FuzzOptions, campaign};
use harness::run::ServerCommand;

#[test]
fn a_fixed_seed_range_passes_and_covers_the_state_machine() {
    let reports = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-reports");
    let options = FuzzOptions {
        seeds: 0..60,
        time: None,
        jobs: 2,
        shard: (0, 1),
        server: ServerCommand::miglab(env!("CARGO_BIN_EXE_miglab")).into(),
        concurrent: false,
        regressions: None,
        reports,
        shrink: false,
        progress: false,
    };
    let summary = campaign(&options, &|_, _| {});
    assert_eq!(summary.runs, 60);
    assert!(summary.generator_errors.is_empty(), "{:?}", summary.generator_errors);
    let failures: Vec<String> = summary.findings.iter().map(|f| format!("seed {}: {}", f.seed, f.reason)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let missing = summary.coverage.missing();
    for kind in ["states", "arcs", "faults"] {
        let m = &missing.iter().find(|(k, _)| *k == kind).expect("the kind is counted").1;
        assert!(m.is_empty(), "never hit {kind}: {m:?}\n{}", summary.coverage.summary());
    }
}
