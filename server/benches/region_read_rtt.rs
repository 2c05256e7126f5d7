//! Round-trip time of an 8-byte REGION_READ against a `vfu-server` process, as a ratio to the
//! same request and reply sizes (32 and 40 bytes) over a bare UNIX socketpair to a peer
//! process, measured in the same run. Rounds alternate between the two so that machine noise hits both alike; the
//! figure is the ratio of the medians.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{EchoPeer, Server, median};
use mock_qemu::Client;

const ROUNDS: usize = 7;
const PER_ROUND: u32 = 20_000;
const REQUEST: usize = 32;
const REPLY: usize = 40;

fn bare_round(a: &mut UnixStream) -> Duration {
    let req = [0u8; REQUEST];
    let mut reply = [0u8; REPLY];
    let start = Instant::now();
    for _ in 0..PER_ROUND {
        a.write_all(&req).expect("write");
        a.read_exact(&mut reply).expect("read");
    }
    start.elapsed() / PER_ROUND
}

fn server_round(client: &mut Client) -> Duration {
    let start = Instant::now();
    for _ in 0..PER_ROUND {
        let data = client.region_read(0, 0, 8).expect("REGION_READ");
        std::hint::black_box(data);
    }
    start.elapsed() / PER_ROUND
}

fn main() {
    common::maybe_run_echo_peer();
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("bench.sock");
    let _server = Server::spawn(&socket, &["--device", "dma-engine"]);
    let mut client = Client::connect_and_negotiate(&socket, Duration::from_secs(10)).expect("connect");
    let mut peer = EchoPeer::spawn(REQUEST, REPLY, REPLY);

    // Warm both paths up.
    let _ = bare_round(&mut peer.sock);
    let _ = server_round(&mut client);
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(bare_round(&mut peer.sock));
        ours.push(server_round(&mut client));
    }
    let (bare, ours) = (median(bare), median(ours));
    let ratio = ours.as_secs_f64() / bare.as_secs_f64();
    println!("region_read_rtt: 8-byte REGION_READ round trip, median of {ROUNDS} rounds x {PER_ROUND}");
    println!("  bare socketpair  {:>8.2} us", bare.as_secs_f64() * 1e6);
    println!("  vfu-server       {:>8.2} us", ours.as_secs_f64() * 1e6);
    println!("  ratio            {ratio:>8.2}x  (target <= 1.05x)");
}
