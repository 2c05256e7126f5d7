//! Merging the summaries of a campaign's shards gives the campaign: the same failing ways
//! with the same seeds, and the same coverage, as one unsharded run of the range.

use std::collections::BTreeMap;

use harness::fuzz::summary::CampaignSummary;
use harness::fuzz::{FuzzOptions, campaign};
use harness::run::ServerCommand;

const SEEDS: std::ops::Range<u64> = 0..24;
const SHARDS: u64 = 3;

/// The campaign of `SEEDS` restricted to `shard`, as its summary file reads back.
fn summary_of(shard: (u64, u64), reports: &std::path::Path) -> CampaignSummary {
    let options = FuzzOptions {
        seeds: SEEDS,
        time: None,
        jobs: 2,
        shard,
        server: ServerCommand::miglab(env!("CARGO_BIN_EXE_miglab")),
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

#[test]
fn merging_three_shards_of_a_range_gives_the_unsharded_campaign() {
    let reports = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-merge-reports");
    let whole = summary_of((0, 1), &reports);
    let shards: Vec<CampaignSummary> = (0..SHARDS).map(|i| summary_of((i, SHARDS), &reports)).collect();
    assert!(shards.iter().all(|s| s.runs == SEEDS.end / SHARDS), "each shard runs its third of the seeds");
    let merged = CampaignSummary::merge(&shards);

    assert_eq!(merged.runs, whole.runs);
    assert_eq!(merged.seeds, [SEEDS]);
    assert_eq!(merged.shards, (0..SHARDS).map(|i| (i, SHARDS)).collect::<Vec<_>>());
    assert_eq!(ways(&merged), ways(&whole));
    assert_eq!(merged.generator_errors, whole.generator_errors);
    pretty_assertions::assert_eq!(merged.coverage, whole.coverage);
    assert_eq!((&merged.missing_cells, &merged.missing_events), (&whole.missing_cells, &whole.missing_events));
    assert_eq!(merged.covered, whole.covered);
    assert!(
        shards.iter().any(|s| s.missing_cells.len() > merged.missing_cells.len()),
        "a shard alone misses cells the merge has: the missing cells are recomputed, not joined"
    );
}
