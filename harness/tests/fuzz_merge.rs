//! Merging the summaries of a campaign's shards gives the campaign: the same failing ways
//! with the same seeds, and the same things reached, as one unsharded run of the range, with
//! the shards' counts summed; against this repository's server, and against one that fails in
//! several ways. (How many messages a run exchanges before a failing migration notices its
//! broken stream depends on timing, so an independent unsharded run's counts may differ by a
//! round: what is compared with it is what was reached, not how often.)

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use harness::fuzz::summary::CampaignSummary;
use harness::fuzz::{FuzzOptions, campaign};
use harness::run::ServerCommand;
use harness::scenario::model::DeviceKind;

const SEEDS: std::ops::Range<u64> = 0..24;
const SHARDS: u64 = 3;

/// The campaign of `SEEDS` against `server` restricted to `shard`, as its summary file reads
/// back.
fn summary_of(server: &ServerCommand, shard: (u64, u64), reports: &Path) -> CampaignSummary {
    let options = FuzzOptions {
        seeds: SEEDS,
        time: None,
        jobs: 2,
        shard,
        server: server.clone().into(),
        device: DeviceKind::DmaEngine,
        concurrent: false,
        regressions: None,
        reports: reports.to_owned(),
        shrink: false,
        progress: false,
    };
    let summary = CampaignSummary::from_campaign(&campaign(&options, &|_, _| {}), &options);
    let file = reports.join(format!("summary-{}-{}.json", shard.0, shard.1));
    summary.write(&file).expect("the summary is written");
    CampaignSummary::read(&file).expect("the summary reads back")
}

/// Each way of failing with every seed that failed that way.
fn ways(summary: &CampaignSummary) -> BTreeMap<String, Vec<u64>> {
    summary
        .findings
        .iter()
        .map(|f| {
            let mut seeds: Vec<u64> = std::iter::once(f.seed).chain(f.same.iter().copied()).collect();
            seeds.sort_unstable();
            (f.signature.clone(), seeds)
        })
        .collect()
}

/// What a coverage reached, without how often.
fn reached(c: &harness::fuzz::coverage::Coverage) -> Vec<Vec<&String>> {
    [&c.states, &c.arcs, &c.commands, &c.errnos, &c.faults].iter().map(|m| m.keys().collect()).collect()
}

/// The unsharded campaign and the merge of its three shards.
fn whole_and_merged(server: &ServerCommand, reports: &Path) -> (CampaignSummary, CampaignSummary) {
    let whole = summary_of(server, (0, 1), reports);
    let shards: Vec<CampaignSummary> = (0..SHARDS).map(|i| summary_of(server, (i, SHARDS), reports)).collect();
    let merged = CampaignSummary::merge(&shards);
    for (key, n) in &merged.coverage.commands {
        let sum: u64 = shards.iter().map(|s| s.coverage.commands.get(key).copied().unwrap_or(0)).sum();
        assert_eq!(*n, sum, "{key}: the merge sums the shards' counts");
    }
    assert!(shards.iter().all(|s| s.runs == SEEDS.end / SHARDS), "each shard runs its third of the seeds");
    assert!(
        shards.iter().any(|s| s.missing_cells.len() > whole.missing_cells.len()),
        "a shard alone misses cells the whole range reaches"
    );
    (whole, merged)
}

/// Asserts that the merge is the unsharded campaign, timings aside.
fn assert_same_campaign(merged: &CampaignSummary, whole: &CampaignSummary) {
    assert_eq!(merged.runs, whole.runs);
    assert_eq!(merged.seeds, [SEEDS]);
    assert_eq!(merged.shards, (0..SHARDS).map(|i| (i, SHARDS)).collect::<Vec<_>>());
    pretty_assertions::assert_eq!(ways(merged), ways(whole));
    assert_eq!(merged.generator_errors, whole.generator_errors);
    pretty_assertions::assert_eq!(reached(&merged.coverage), reached(&whole.coverage));
    assert_eq!((&merged.missing_cells, &merged.missing_events), (&whole.missing_cells, &whole.missing_events));
    assert_eq!(merged.covered, whole.covered);
}

#[test]
fn merging_three_shards_of_a_range_gives_the_unsharded_campaign() {
    let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-merge-reports");
    let (whole, merged) = whole_and_merged(&ServerCommand::miglab(env!("CARGO_BIN_EXE_miglab")), &reports);
    assert_same_campaign(&merged, &whole);
}

#[test]
fn merging_the_shards_of_a_failing_campaign_keeps_each_way_with_all_its_seeds() {
    // vfu-server whose device never offers PRE_COPY while the scenarios say it does: the
    // model refuses its FEATURE replies, SETs to PRE_COPY fail, and so on, each in several seeds.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = dir.path().join("no-pre-copy-server");
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" --no-pre-copy \"*) ;; *) set -- \"$@\" --no-pre-copy ;; esac\nexec {} serve \"$@\"\n",
        env!("CARGO_BIN_EXE_miglab")
    );
    std::fs::write(&server, script).expect("the server script is written");
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).expect("it is executable");
    let (whole, merged) = whole_and_merged(&ServerCommand::external(server), &dir.path().join("reports"));
    assert!(ways(&whole).values().filter(|seeds| seeds.len() > 1).count() >= 2, "{:?}", ways(&whole));
    assert_same_campaign(&merged, &whole);
    assert!(!merged.passed(false));
}
