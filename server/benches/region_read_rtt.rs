//! Round-trip time of an 8-byte REGION_READ against a `vfu-server` process, as a ratio to the
//! same request and reply sizes (32 and 40 bytes) over a bare UNIX socketpair, measured in the
//! same run. Rounds alternate between the two so that machine noise hits both alike; the
//! figure is the ratio of the medians.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mock_qemu::Client;

const ROUNDS: usize = 7;
const PER_ROUND: u32 = 20_000;
const REQUEST: usize = 32;
const REPLY: usize = 40;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn spawn_server(socket: &Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_vfu-server"))
        .args(["--device", "dma-engine", "--socket"])
        .arg(socket)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("vfu-server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "vfu-server did not listen on {} within 10 s", socket.display());
        std::thread::yield_now();
    }
    Server(child)
}

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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("bench.sock");
    let _server = spawn_server(&socket);
    // A wait for the server's accept is part of connecting, so the timed loop sees none of it.
    let mut client = Client::connect_and_negotiate(&socket, Duration::from_secs(10)).expect("connect");

    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let echo = std::thread::spawn(move || {
        let mut req = [0u8; REQUEST];
        let reply = [0u8; REPLY];
        while b.read_exact(&mut req).is_ok() {
            if b.write_all(&reply).is_err() {
                break;
            }
        }
    });

    // Warm both paths up.
    let _ = bare_round(&mut a);
    let _ = server_round(&mut client);
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(bare_round(&mut a));
        ours.push(server_round(&mut client));
    }
    drop(a);
    let _ = echo.join();
    let (bare, ours) = (median(bare), median(ours));
    let ratio = ours.as_secs_f64() / bare.as_secs_f64();
    println!("region_read_rtt: 8-byte REGION_READ round trip, median of {ROUNDS} rounds x {PER_ROUND}");
    println!("  bare socketpair  {:>8.2} us", bare.as_secs_f64() * 1e6);
    println!("  vfu-server       {:>8.2} us", ours.as_secs_f64() * 1e6);
    println!("  ratio            {ratio:>8.2}x  (target <= 1.5x)");
}
