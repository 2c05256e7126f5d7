//! MIG_DATA_READ throughput: the STOP_COPY stream of a dma-engine with 256 MiB of device
//! memory, read in 1 MiB requests from a `vfu-server` process, as a ratio to moving as many
//! bytes in the same request/reply pattern (24-byte request, 1 MiB + 24-byte reply) over a bare
//! UNIX socketpair to a peer process that sends them from a 256 MiB buffer of its own (so both
//! sides read 256 MiB of state from memory), measured in the same run. Rounds alternate; the
//! figure is the ratio of the median throughputs (higher is better; the target is at least
//! 0.85).
//!
//! Twice: with device memory written first (every page holds data), and on a fresh device
//! whose memory was never written, where the figure is device memory migrated per second
//! against the bare socketpair moving the same 256 MiB (its stream is a few zero runs).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{EchoPeer, Server, median};
use mock_qemu::Client;
use vfu_server::wire::MigState;

const DEVMEM: &str = "256M";
const CHUNK: u32 = 1 << 20;
const ROUNDS: usize = 5;

/// One STOP_COPY stream read to its end; returns (bytes, time).
fn read_stream(client: &mut Client) -> (u64, Duration) {
    client.set_mig_state(MigState::Stop).expect("RUNNING -> STOP");
    let start = Instant::now();
    client.set_mig_state(MigState::StopCopy).expect("STOP -> STOP_COPY");
    let mut total = 0u64;
    loop {
        // The bytes are looked at where they arrived, as the baseline's are.
        let n = client.mig_data_read_with(CHUNK, |d| std::hint::black_box(d).len()).expect("MIG_DATA_READ");
        total += n as u64;
        if n < CHUNK as usize {
            break;
        }
    }
    let elapsed = start.elapsed();
    client.set_mig_state(MigState::Running).expect("STOP_COPY -> RUNNING");
    (total, elapsed)
}

/// The same bytes in the same pattern over a bare socketpair.
fn bare_stream(a: &mut UnixStream, bytes: u64) -> Duration {
    let req = [0u8; 24];
    let mut reply = vec![0u8; CHUNK as usize + 24];
    let start = Instant::now();
    let mut moved = 0;
    while moved < bytes {
        a.write_all(&req).expect("write");
        a.read_exact(&mut reply).expect("read");
        moved += u64::from(CHUNK);
    }
    start.elapsed()
}

/// Median throughputs (stream bytes per second, bare bytes per second) and stream bytes.
fn measure(client: &mut Client, peer: &mut EchoPeer, bare_bytes: Option<u64>) -> (f64, f64, u64) {
    let (bytes, _) = read_stream(client); // warm-up
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (n, t) = read_stream(client);
        let moved = bare_bytes.unwrap_or(n);
        ours.push(moved as f64 / t.as_secs_f64());
        bare.push(moved as f64 / bare_stream(&mut peer.sock, moved).as_secs_f64());
    }
    (median(ours), median(bare), bytes)
}

fn print(what: &str, (ours, bare, bytes): (f64, f64, u64)) {
    println!(
        "mig_data_read: STOP_COPY stream of a dma-engine with {DEVMEM} of device memory, {what} ({bytes} bytes), 1 MiB reads, median of {ROUNDS}"
    );
    println!("  bare socketpair  {:>8.0} MiB/s", bare / (1 << 20) as f64);
    println!("  vfu-server       {:>8.0} MiB/s", ours / (1 << 20) as f64);
    println!("  ratio            {:>8.2}x  (target >= 0.85x)", ours / bare);
}

fn main() {
    common::maybe_run_echo_peer();
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["--device", "dma-engine", "--devmem-size", DEVMEM];
    let _written = Server::spawn(&dir.path().join("written.sock"), &args);
    let _fresh = Server::spawn(&dir.path().join("fresh.sock"), &args);
    let timeout = Duration::from_secs(30);
    let mut client = Client::connect_and_negotiate(dir.path().join("written.sock"), timeout).expect("connect");
    let mut fresh = Client::connect_and_negotiate(dir.path().join("fresh.sock"), timeout).expect("connect");
    let mut peer = EchoPeer::spawn(24, CHUNK as usize + 24, 256 << 20);
    // Device memory full of data, as a real device's would be (untouched memory reads as the
    // kernel's one zero page, which would flatter the copy).
    let mut chunk = vec![0u8; CHUNK as usize];
    for (i, offset) in (0..256u64 << 20).step_by(CHUNK as usize).enumerate() {
        chunk.iter_mut().enumerate().for_each(|(j, b)| *b = (i * 31 + j * 7) as u8);
        client.region_write(2, offset, &chunk).expect("fill device memory");
    }
    print("device memory written first", measure(&mut client, &mut peer, None));
    print("device memory never written, as device memory per second", measure(&mut fresh, &mut peer, Some(256 << 20)));
}
