//! A fixed range of generated scenarios passes, and the campaign exercises the model: every
//! state and arc, the commands a migration needs, the errnos the model predicts most, and
//! every fault kind; ranges drawn for the other device profiles pass with no shadow of the
//! device.

use harness::fuzz::{FuzzOptions, Summary, campaign};
use harness::run::ServerCommand;
use harness::scenario::model::DeviceKind;

/// Seeds `0..n` drawn for `device`, run against vfu-server, every run passing.
fn clean_campaign(n: u64, device: DeviceKind) -> Summary {
    let reports = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-reports-{device:?}"));
    let options = FuzzOptions {
        seeds: 0..n,
        time: None,
        jobs: 2,
        shard: (0, 1),
        server: ServerCommand::miglab(env!("CARGO_BIN_EXE_miglab")).into(),
        device,
        concurrent: false,
        regressions: None,
        reports,
        shrink: false,
        progress: false,
    };
    let summary = campaign(&options, &|_, _| {});
    assert_eq!(summary.runs, n);
    assert!(summary.generator_errors.is_empty(), "{:?}", summary.generator_errors);
    let failures: Vec<String> = summary.findings.iter().map(|f| format!("seed {}: {}", f.seed, f.reason)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    summary
}

/// Every item of each of `kinds` (states, arcs, faults…) was reached by `summary`.
fn assert_reached(summary: &Summary, kinds: &[&str]) {
    let missing = summary.coverage.missing();
    for kind in kinds {
        let m = &missing.iter().find(|(k, _)| k == kind).expect("the kind is counted").1;
        assert!(m.is_empty(), "never hit {kind}: {m:?}\n{}", summary.coverage.summary());
    }
}

#[test]
fn a_fixed_seed_range_passes_and_covers_the_state_machine() {
    let summary = clean_campaign(60, DeviceKind::DmaEngine);
    assert_reached(&summary, &["states", "arcs", "faults"]);
}

/// A fixed range drawn for another profile passes against vfu-server serving that device,
/// judged with no shadow of it.
#[rstest::rstest]
#[case::libvfio_user_sample(DeviceKind::LibvfioUserSample)]
#[case::generic(DeviceKind::Generic)]
fn a_fixed_seed_range_of_another_profile_passes(#[case] device: DeviceKind) {
    let summary = clean_campaign(40, device);
    assert_reached(&summary, &["states"]);
}
