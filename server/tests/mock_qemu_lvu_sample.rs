//! mock-qemu against two real `vfu-server --device libvfio-user-sample` processes: the
//! reference sample's device migrates by stop-and-copy with its BAR1 contents and BAR0 time,
//! strict mode names the one reference layout the device keeps on purpose (the padded short
//! MIG_DATA_READ reply), and QEMU's pre-copy flow overruns the sample's destination exactly as
//! it does the reference's, leaving the source running.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use mock_qemu::client::ClientOptions;
use mock_qemu::migrate::{CancelToken, MigrationParams, PairOptions, migrate_between};
use pretty_assertions::assert_eq;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vfu_server::wire::MigState;

use common::ServerProcess;

const BAR1_SIZE: usize = 0x3000;

fn sample() -> ServerProcess {
    ServerProcess::spawn(&["--device", "libvfio-user-sample"])
}

/// BAR0 a minute ahead (the sample refuses RUNNING with a time past), BAR1 seeded random bytes.
fn setup() -> (i64, Vec<u8>) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut bar1 = vec![0u8; BAR1_SIZE];
    ChaCha8Rng::seed_from_u64(11).fill(&mut bar1[..]);
    (now + 60, bar1)
}

fn options(bar0: i64, bar1: &[u8], use_pre_copy: bool) -> PairOptions {
    PairOptions {
        ram: 16 << 20,
        vcpu_writes: 8,
        dma_per_step: 0,
        params: MigrationParams { use_pre_copy, ..MigrationParams::default() },
        client: ClientOptions { strict: true, ..ClientOptions::default() },
        device_writes: vec![(0, 0, bar0.to_le_bytes().to_vec()), (1, 0, bar1.to_vec())],
        compare_regions: vec![(1, 0, BAR1_SIZE as u32)],
        ..PairOptions::default()
    }
}

#[test]
fn sample_migrates_by_stop_and_copy_with_bar1_and_its_timer() {
    let (src, dst) = (sample(), sample());
    let (bar0, bar1) = setup();
    let report = migrate_between(src.socket(), dst.socket(), &options(bar0, &bar1, false), &CancelToken::default())
        .unwrap_or_else(|e| {
            panic!("{e}: {}\n{}\n{}", mock_qemu::migrate::error_chain(&e), src.context(), dst.context())
        });
    assert_eq!(report.ram_diff, Vec::<u64>::new(), "guest pages that differ");
    assert!(report.device_compared);
    assert_eq!(report.device_diff, Vec::<String>::new(), "BAR1 differs between source and destination");
    assert!(!report.stats.pre_copy);
    let rules: Vec<_> = report.findings.iter().map(|f| f.rule).collect();
    assert_eq!(rules, vec!["mig-data-read-padded"], "{:?}", report.findings);

    let mut client = dst.connect();
    assert_eq!(client.mig_state().unwrap(), MigState::Running);
    assert_eq!(client.region_read(1, 0, BAR1_SIZE as u32).unwrap(), bar1, "BAR1 arrived");
    let delta = i64::from_le_bytes(client.region_read(0, 0, 8).unwrap().try_into().unwrap());
    assert!((-60..=-58).contains(&delta), "BAR0 holds the source's time: now - bar0 = {delta}");
    let log = dst.output();
    assert!(log.contains("timer armed"), "the destination re-armed its timer on RUNNING:\n{log}");
}

#[test]
fn qemu_pre_copy_flow_overruns_the_sample_destination_and_the_source_runs_on() {
    let (src, dst) = (sample(), sample());
    let (bar0, bar1) = setup();
    let result = migrate_between(src.socket(), dst.socket(), &options(bar0, &bar1, true), &CancelToken::default());
    let err = match result {
        Ok(report) => panic!("the sample's destination took pre-copy and stop-copy data: {}", report.stats),
        Err(e) => mock_qemu::migrate::error_chain(&e),
    };
    assert!(err.contains("EINVAL") || err.contains("Invalid argument"), "{err}");
    assert!(dst.output().contains("overruns BAR1 and BAR0"), "{}", dst.context());
    let mut client = src.connect();
    assert_eq!(client.mig_state().unwrap(), MigState::Running, "a failed migration leaves the source running");
    assert_eq!(client.region_read(1, 0, BAR1_SIZE as u32).unwrap(), bar1);
}
