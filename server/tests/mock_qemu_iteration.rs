//! mock-qemu's pre-copy as QEMU really iterates, against two real `vfu-server --device
//! dma-engine` processes: a few MIG_DATA_READs per iteration of a size that cuts the device's
//! records anywhere, under a rate limit, and a switchover with pre-copy data still unread,
//! which STOP_COPY must carry first. The destination must equal the source all the same.

mod common;

use std::time::Duration;

use mock_qemu::migrate::{CancelToken, Iteration, MigrationParams, PairOptions, PairReport, migrate_between};
use rstest::rstest;

use common::ServerProcess;

/// Device memory of both servers: small, so that reads of a few bytes stay quick.
const DEVMEM: &str = "64K";

fn migrate(params: MigrationParams) -> PairReport {
    let args = ["--device", "dma-engine", "--devmem-size", DEVMEM];
    let (src, dst) = (ServerProcess::spawn(&args), ServerProcess::spawn(&args));
    let options =
        PairOptions { ram: 32 << 20, seed: 11, vcpu_writes: 8, dma_per_step: 1, params, ..Default::default() };
    migrate_between(src.socket(), dst.socket(), &options, &CancelToken::default()).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}\n{}", mock_qemu::migrate::error_chain(&e), src.context(), dst.context())
    })
}

/// QEMU's iteration: `reads` reads of `read_size` bytes, and a budget the first round meets.
fn qemu(read_size: u32, reads: u32) -> MigrationParams {
    MigrationParams {
        read_size,
        iteration: Iteration { reads: Some(reads), max_bandwidth: None },
        bandwidth: Some(1 << 30),
        downtime: Duration::from_millis(1),
        ..Default::default()
    }
}

#[rstest]
#[case::a_few_bytes(7, 1)]
#[case::inside_a_record_header(13, 2)]
#[case::sixty_four_bytes(64, 3)]
#[case::a_page_and_a_byte(4097, 1)]
#[case::one_byte_past_a_page_record(4121, 2)]
fn switches_over_with_pre_copy_data_unread_and_the_destination_equals_the_source(
    #[case] read_size: u32,
    #[case] reads: u32,
) {
    let report = migrate(qemu(read_size, reads));
    let s = &report.stats;
    assert_eq!((s.switchover.as_str(), s.rounds.len()), ("budget", 2), "the first pre-copy round fits:\n{s}");
    assert_eq!(s.rounds[1].device_bytes, u64::from(read_size * reads), "one iteration's reads:\n{s}");
    assert!(s.pending_at_switchover, "pre-copy data was left unread:\n{s}");
    assert!(s.stop_copy_device_bytes > 64 << 10, "STOP_COPY carried the rest of the round:\n{s}");
    assert_eq!(report.ram_diff, Vec::<u64>::new(), "guest pages that differ");
    assert_eq!(report.device_diff, Vec::<String>::new(), "device fields that differ");
}

#[test]
fn a_rate_limit_bounds_the_device_data_of_each_iteration() {
    // A window of 4000 bytes, reads of 1000: four reads an iteration, every round cut short.
    let params = MigrationParams {
        read_size: 1000,
        iteration: Iteration { reads: None, max_bandwidth: Some(40_000) },
        max_rounds: 3,
        bandwidth: Some(1),
        downtime: Duration::from_micros(1),
        ..Default::default()
    };
    let report = migrate(params);
    let s = &report.stats;
    assert_eq!(s.switchover, "max rounds");
    assert!(s.rounds[1..].iter().all(|r| r.device_bytes == 4000 && r.device_pending), "{s}");
    assert!(s.pending_at_switchover);
    assert!(report.equal(), "{report:?}");
}

#[test]
fn rounds_read_to_the_end_drain_the_device_before_the_switchover() {
    // QEMU's one read per iteration, with a read the size of the whole round: nothing pending.
    let report = migrate(qemu(1 << 20, 1));
    let s = &report.stats;
    assert!(!s.rounds[1].device_pending && !s.pending_at_switchover, "{s}");
    assert!(report.equal(), "{report:?}");
}
