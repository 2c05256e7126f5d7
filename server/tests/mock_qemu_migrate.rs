//! mock-qemu's migration driver against two real `vfu-server --device dma-engine` processes:
//! QEMU's pre-copy flow with vCPU writes and device DMA running during PRE_COPY, the
//! destination's RAM and device state compared with the source's at the moment it stopped;
//! a cancel in mid-precopy that leaves the source running and consistent (and able to migrate
//! again); a damaged stream the destination refuses while the source runs on; and a device
//! migrated without PRE_COPY.

mod common;

use std::time::Duration;

use mock_qemu::Client;
use mock_qemu::client::ClientOptions;
use mock_qemu::guest::dmae::{DmaCommand, DmaEngineDriver, Status};
use mock_qemu::guest::{Guest, PAGE_SIZE};
use mock_qemu::migrate::{
    CancelToken, Endpoints, MigrationError, MigrationParams, PairOptions, StandardWorkload, Workload, migrate,
    migrate_between,
};
use mock_qemu::stream::transport::{Transport, connected_pair};
use mock_qemu::stream::{FaultyWriter, StreamFault};
use vfu_server::wire::MigState;

use common::ServerProcess;

const RAM: u64 = 64 << 20;

fn servers() -> (ServerProcess, ServerProcess) {
    let args = ["--device", "dma-engine", "--devmem-size", "4M"];
    (ServerProcess::spawn(&args), ServerProcess::spawn(&args))
}

fn options(params: MigrationParams) -> PairOptions {
    PairOptions { ram: RAM, seed: 7, vcpu_writes: 24, dma_per_step: 2, params, ..PairOptions::default() }
}

/// Enough rounds to see pre-copy at work: a budget no round can meet.
fn many_rounds(rounds: u32) -> MigrationParams {
    MigrationParams { max_rounds: rounds, bandwidth: Some(1), downtime: Duration::from_micros(1), ..Default::default() }
}

#[test]
fn migrates_a_running_dma_engine_with_vcpu_writes_and_dma_during_pre_copy() {
    let (src, dst) = servers();
    let report = migrate_between(src.socket(), dst.socket(), &options(many_rounds(4)), &CancelToken::default())
        .unwrap_or_else(|e| {
            panic!("{e}: {}\n{}\n{}", mock_qemu::migrate::error_chain(&e), src.context(), dst.context())
        });
    assert!(report.stats.pre_copy);
    assert_eq!(report.stats.rounds.len(), 5, "round 0 and four pre-copy rounds:\n{}", report.stats);
    assert_eq!(report.stats.switchover, "max rounds");
    assert!(report.vcpu_pages > 0 && report.device_pages > 0, "the guest and the device both wrote during pre-copy");
    let rounds = &report.stats.rounds[1..];
    assert!(rounds.iter().any(|r| r.device_bytes > 0), "device memory changed in pre-copy:\n{}", report.stats);
    assert!(rounds.iter().any(|r| r.device_dirty_pages > 0), "the device dirtied guest pages:\n{}", report.stats);
    assert!(rounds.iter().all(|r| r.vcpu_dirty_pages > 0), "the vCPUs wrote every round:\n{}", report.stats);
    assert_eq!(report.ram_diff, Vec::<u64>::new(), "guest pages that differ");
    assert_eq!(report.device_diff, Vec::<String>::new(), "device fields that differ");
}

#[test]
fn switches_over_when_the_remaining_data_fits_the_budget() {
    let (src, dst) = servers();
    let params = MigrationParams { bandwidth: Some(u64::MAX / 2), ..Default::default() };
    let report = migrate_between(src.socket(), dst.socket(), &options(params), &CancelToken::default()).unwrap();
    assert_eq!(report.stats.switchover, "budget");
    assert_eq!(report.stats.rounds.len(), 2, "the first pre-copy round already fits:\n{}", report.stats);
    assert!(report.equal(), "{report:?}");
}

#[test]
fn a_device_without_pre_copy_goes_running_stop_stop_copy_at_switchover() {
    let (src, dst) = servers();
    let params = MigrationParams { use_pre_copy: false, ..many_rounds(2) };
    let report = migrate_between(src.socket(), dst.socket(), &options(params), &CancelToken::default()).unwrap();
    assert!(!report.stats.pre_copy);
    assert!(report.stats.rounds.iter().all(|r| r.device_bytes == 0), "no device data before the stop");
    assert!(report.stats.stop_copy_device_bytes > 0, "all device memory at stop-and-copy (never written: zero runs)");
    assert!(report.equal(), "{report:?}");
}

/// A client and a mapped PC guest on one server.
fn side(server: &ServerProcess) -> (Client, Guest) {
    let mut c = Client::connect_with(server.socket(), &ClientOptions::with_timeout(Duration::from_secs(10))).unwrap();
    let g = Guest::pc(RAM).unwrap();
    g.map_into(&mut c).unwrap();
    c.set_dma_service(g.dma_service());
    (c, g)
}

/// A workload that cancels the migration at its `at`-th step.
struct CancelAt<'a> {
    inner: StandardWorkload,
    cancel: &'a CancelToken,
    steps: u32,
    at: u32,
}

impl Workload for CancelAt<'_> {
    fn step(&mut self, client: &mut Client, guest: &Guest) -> Result<(), String> {
        self.steps += 1;
        if self.steps == self.at {
            self.cancel.cancel();
        }
        self.inner.step(client, guest)
    }
}

fn assert_source_runs_on(s: &mut Client, guest: &Guest, driver: &mut DmaEngineDriver) {
    assert_eq!(s.mig_state().unwrap(), MigState::Running, "the source device is back to RUNNING");
    let report = s.dma_logging_report(0, PAGE_SIZE, PAGE_SIZE);
    assert_eq!(report.unwrap_err().errno(), Some(nix::errno::Errno::EINVAL), "logging was stopped");
    assert!(!guest.vcpu_logging(), "the vCPU dirty log was stopped");
    // The guest runs on: its device still works and sees guest RAM.
    assert_eq!(driver.run(s, &DmaCommand::fill(PAGE_SIZE, 3 * PAGE_SIZE, 99)).unwrap(), Status::Ok);
    let mut want = vec![0u8; 3 * PAGE_SIZE as usize];
    vfu_server::devices::dma_engine::fill_pattern(99, 0, &mut want);
    assert!(guest.read_vec(PAGE_SIZE, 3 * PAGE_SIZE).unwrap() == want);
}

#[test]
fn cancel_in_mid_precopy_leaves_the_source_running_and_consistent_then_it_migrates_again() {
    let (src, dst) = servers();
    let (mut s, sg) = side(&src);
    let (d, dg) = side(&dst);
    let cancel = CancelToken::default();
    let driver = DmaEngineDriver::attach(&mut s).unwrap();
    let mut w =
        CancelAt { inner: StandardWorkload::new(3, (0, RAM), 8, Some(driver), 1), cancel: &cancel, steps: 0, at: 3 };
    let (writer, reader) = connected_pair(&Transport::Pipe).unwrap();
    let ends = Endpoints { source: &mut s, source_guest: &sg, destination: d, destination_guest: dg.clone() };
    let failed = match migrate(ends, &many_rounds(10), Some(&mut w), &cancel, writer, reader) {
        Ok(_) => panic!("a cancelled migration must not complete"),
        Err(f) => f,
    };
    assert!(matches!(failed.error, MigrationError::Cancelled), "{:?}", failed.error);
    let mut d = *failed.destination.expect("the destination client comes back");
    assert_ne!(d.mig_state().unwrap(), MigState::Resuming, "the destination gave up its half-loaded state");
    let CancelAt { inner, .. } = w;
    let mut driver = inner_driver(inner);
    assert_source_runs_on(&mut s, &sg, &mut driver);

    // And a new migration from the same source works.
    let mut w = StandardWorkload::new(4, (0, RAM), 8, Some(driver), 1);
    let (writer, reader) = connected_pair(&Transport::Pipe).unwrap();
    let ends = Endpoints { source: &mut s, source_guest: &sg, destination: d, destination_guest: dg.clone() };
    let done = migrate(ends, &many_rounds(2), Some(&mut w), &CancelToken::default(), writer, reader)
        .unwrap_or_else(|f| panic!("second migration: {:?}", f.error));
    d = done.destination;
    assert_eq!(dg.diff_pages(&sg).unwrap(), Vec::<u64>::new());
    let (a, b) = (DmaEngineDriver::snapshot(&mut s).unwrap(), DmaEngineDriver::snapshot(&mut d).unwrap());
    assert_eq!(b.differences(&a), Vec::<String>::new());
}

fn inner_driver(w: StandardWorkload) -> DmaEngineDriver {
    w.into_driver().expect("the workload had a driver")
}

#[test]
fn a_damaged_stream_never_starts_the_destination_and_the_source_runs_on() {
    let (src, dst) = servers();
    let (mut s, sg) = side(&src);
    let (d, dg) = side(&dst);
    let driver = DmaEngineDriver::attach(&mut s).unwrap();
    let mut w = StandardWorkload::new(5, (0, RAM), 8, Some(driver), 1);
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader) = connected_pair(&Transport::Unix(dir.path().join("m.sock"))).unwrap();
    let writer = FaultyWriter::new(writer, StreamFault::FlipByte { at: 200_000, xor: 0x40 });
    let ends = Endpoints { source: &mut s, source_guest: &sg, destination: d, destination_guest: dg };
    let failed = match migrate(ends, &many_rounds(3), Some(&mut w), &CancelToken::default(), writer, reader) {
        Ok(_) => panic!("a damaged stream must not migrate"),
        Err(f) => f,
    };
    let text = format!("{}: {}", failed.error, mock_qemu::migrate::error_chain(&failed.error));
    assert!(text.contains("checksum") || text.contains("Checksum"), "{text}");
    let mut d = *failed.destination.unwrap();
    assert_eq!(d.mig_state().unwrap(), MigState::Running, "reset, never started from the damaged state");
    let mut driver = w.into_driver().unwrap();
    assert_source_runs_on(&mut s, &sg, &mut driver);
}

#[rstest::rstest]
#[case::unix_socket(true)]
#[case::tcp_loopback(false)]
fn a_source_and_a_destination_in_two_processes_end_with_equal_digests(#[case] unix: bool) {
    use mock_qemu::migrate::{StreamAddr, incoming};
    let (src, dst) = servers();
    let dir = tempfile::tempdir().unwrap();
    let addr = if unix {
        StreamAddr::Unix(dir.path().join("stream.sock"))
    } else {
        // A free port, taken and released: the destination binds it next.
        let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
        StreamAddr::Tcp(format!("127.0.0.1:{port}"))
    };
    let opts = options(many_rounds(3));
    let (dst_socket, listen, dst_opts) = (dst.socket().to_path_buf(), addr.clone(), opts.clone());
    let destination = std::thread::spawn(move || incoming(&dst_socket, &listen, &dst_opts));
    let report = retry_outgoing(src.socket(), &addr, &opts);
    let loaded = destination.join().unwrap().unwrap_or_else(|e| panic!("destination: {e}\n{}", dst.context()));
    assert_eq!(loaded.digests, report.digests, "the destination at start equals the source at stop");
    assert!(report.digests.device.is_some());
    assert!(report.stats.stream_bytes > 0 && loaded.loaded.pages > 0);
}

/// Runs the source once the destination listens (it binds after its own setup); until then
/// `outgoing` fails at its first step, connecting, without touching the source.
fn retry_outgoing(
    source: &std::path::Path,
    addr: &mock_qemu::migrate::StreamAddr,
    opts: &PairOptions,
) -> mock_qemu::migrate::OutgoingReport {
    let mut last = None;
    let got = common::poll_until(Duration::from_secs(10), || match mock_qemu::migrate::outgoing(source, addr, opts) {
        Ok(r) => Some(r),
        Err(e) => {
            last = Some(e.to_string());
            None
        }
    });
    got.unwrap_or_else(|| panic!("the source never got through: {last:?}"))
}

/// A source whose device refuses an arc or a read, and a normal destination.
fn faulty_source(flag: &str, value: &str) -> (ServerProcess, ServerProcess) {
    let args = ["--device", "dma-engine", "--devmem-size", "4M", flag, value];
    (ServerProcess::spawn(&args), ServerProcess::spawn(&["--device", "dma-engine", "--devmem-size", "4M"]))
}

#[test]
fn a_read_that_fails_in_pre_copy_aborts_and_the_source_runs_on_with_its_state() {
    let (src, dst) = faulty_source("--fail-read-after", "1M");
    let err = migrate_between(src.socket(), dst.socket(), &options(many_rounds(3)), &CancelToken::default())
        .expect_err("the source's device fails its stream");
    let text = format!("{err}: {}", mock_qemu::migrate::error_chain(&err));
    assert!(text.contains("EIO"), "{text}");
    let mut s = src.connect();
    // Back to RUNNING without a reset: PRE_COPY -> RUNNING is an arc, so the device kept its
    // state (the priming FILL is still in device memory) and works.
    assert_eq!(s.mig_state().unwrap(), MigState::Running);
    let devmem = s.region_read(2, 0, 16).unwrap();
    assert_ne!(devmem, vec![0; 16], "device memory survived the failed migration");
    let mut driver = DmaEngineDriver::attach(&mut s).unwrap();
    let guest = Guest::pc(RAM).unwrap();
    guest.map_into(&mut s).unwrap();
    assert_eq!(driver.run(&mut s, &DmaCommand::copy_to_guest(0, 0, PAGE_SIZE)).unwrap(), Status::Ok);
}

#[test]
fn a_device_that_refuses_stop_copy_is_reset_as_qemu_does_and_the_source_runs_on() {
    let (src, dst) = faulty_source("--fail-arc", "pre-copy:stop-copy");
    let err = migrate_between(src.socket(), dst.socket(), &options(many_rounds(2)), &CancelToken::default())
        .expect_err("the arc to STOP_COPY is refused");
    let text = format!("{err}: {}", mock_qemu::migrate::error_chain(&err));
    assert!(text.contains("StopCopy") && text.contains("reset"), "{text}");
    let mut s = src.connect();
    assert_eq!(s.mig_state().unwrap(), MigState::Running, "the reset left the device RUNNING");
    let report = s.dma_logging_report(0, PAGE_SIZE, PAGE_SIZE);
    assert_eq!(report.unwrap_err().errno(), Some(nix::errno::Errno::EINVAL), "logging was stopped");
}
