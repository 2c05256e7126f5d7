//! The reference C client's recorded conversation, replayed against our sample device.
//!
//! `tests/data/reference-sample-client.jsonl` holds every message libvfio-user's sample client
//! exchanged with that library's sample server, migration to a second server included (see
//! `tests/data/README.md`). This test plays the client's side of it, message by message with
//! real fds (the DMA regions' file, the INTx eventfd), against two real
//! `vfu-server --device libvfio-user-sample` processes, and requires every reply and every
//! DMA_WRITE / DMA_READ our server sends to equal the reference server's byte for byte —
//! headers, sizes and fds included — except for what depends on the clock or on formatting:
//!
//! - the two BAR0 times the client wrote are replaced by `now + 2` (the timer that starts the
//!   source's DMA test; `now + 1` could fall in the device's present second, which disarms
//!   it) and `now + 3` (the time the destination re-arms from after migrating);
//! - BAR0's read (now minus BAR0: -1 in the recording, for `now + 1`) is -2 or -1;
//! - the last stop-and-copy read carries BAR0, so it holds our `now + 3`, and the destination
//!   is given the data our source produced rather than the recorded bytes;
//! - VERSION's JSON may differ in formatting and extra keys: the values the reference client
//!   reads (`max_msg_fds`, `max_data_xfer_size`, `migration.pgsize`) must be equal.
//!
//! Everything else — region and IRQ info, the config-space header, the error of the bogus
//! region, the padded MIG_DATA_READ replies of pre-copy and stop-and-copy (BAR1 as the
//! recording's guest thread wrote it), the dirty bitmaps, the UNMAP echoes, the destination's
//! BAR1 — must be as recorded. The bytes the device wrote directly into guest memory are
//! checked in the DMA regions' file.

mod common;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pretty_assertions::assert_eq;
use serde::Deserialize;
use vfu_server::wire::Header;
use zerocopy::IntoBytes;

use common::{RawConn, RawMsg, ServerProcess, eventfd};

const TRACE: &str = include_str!("data/reference-sample-client.jsonl");
/// How long the device's timer may take to start its DMA test.
const DMA_WAIT: Duration = Duration::from_secs(20);
/// The DMA regions' file: 16 pages, region `i` at offset `i * 4096`, as the client maps them.
const GUEST_LEN: u64 = 16 * 4096;

const VERSION: u16 = 1;
const DMA_MAP: u16 = 2;
const SET_IRQS: u16 = 8;
const REGION_READ: u16 = 9;
const REGION_WRITE: u16 = 10;
const DMA_READ: u16 = 11;
const DMA_WRITE: u16 = 12;
const MIG_DATA_READ: u16 = 17;
const MIG_DATA_WRITE: u16 = 18;

/// One recorded message.
#[derive(Debug, Deserialize)]
struct Record {
    session: String,
    dir: String,
    msg_id: u16,
    cmd: u16,
    size: u32,
    flags: u32,
    error_no: u32,
    nfds: usize,
    payload: String,
    /// 1-based line in the trace file (set after parsing).
    #[serde(skip)]
    line: usize,
}

impl Record {
    fn payload(&self) -> Vec<u8> {
        (0..self.payload.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&self.payload[i..i + 2], 16).expect("hex payload"))
            .collect()
    }

    fn is_request(&self) -> bool {
        self.flags & 0xf == 0
    }

    fn header(&self, size: u32) -> Vec<u8> {
        let h =
            Header { msg_id: self.msg_id, cmd: self.cmd, msg_size: size, flags: self.flags, error_no: self.error_no };
        h.as_bytes().to_vec()
    }
}

fn records() -> Vec<Record> {
    TRACE
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut r: Record = serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
            r.line = i + 1;
            r
        })
        .collect()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Bytes as hex, 32 per line with offsets, so a mismatch shows as a line diff.
fn dump(bytes: &[u8]) -> String {
    bytes
        .chunks(32)
        .enumerate()
        .map(|(i, c)| format!("{:05x}: {}\n", i * 32, c.iter().map(|b| format!("{b:02x}")).collect::<String>()))
        .collect()
}

/// The header and payload of a received message, as recorded messages are laid out.
fn wire(m: &RawMsg) -> Vec<u8> {
    let h = Header { msg_id: m.msg_id, cmd: m.cmd, msg_size: m.msg_size, flags: m.flags, error_no: m.error_no };
    [h.as_bytes(), &m.payload].concat()
}

/// The values of VERSION's JSON that the reference client reads.
fn client_visible_caps(payload: &[u8]) -> (Vec<u8>, serde_json::Value) {
    let json = payload.get(4..).unwrap_or_default();
    let json = json.strip_suffix(&[0]).unwrap_or(json);
    let v: serde_json::Value = serde_json::from_slice(json).expect("VERSION carries JSON");
    let caps = &v["capabilities"];
    let fields = serde_json::json!({
        "max_msg_fds": caps["max_msg_fds"],
        "max_data_xfer_size": caps["max_data_xfer_size"],
        "pgsize": caps["migration"]["pgsize"],
    });
    (payload.get(..4).unwrap_or_default().to_vec(), fields)
}

/// One side of the replay: the server, the connection, and what the client keeps.
struct Side<'g> {
    name: &'static str,
    server: ServerProcess,
    conn: RawConn,
    guest: &'g File,
    intx: Option<OwnedFd>,
    /// Data of every MIG_DATA_READ reply, in order.
    read_data: Vec<Vec<u8>>,
}

impl<'g> Side<'g> {
    fn start(name: &'static str, guest: &'g File) -> Self {
        let server = ServerProcess::spawn(&["--device", "libvfio-user-sample"]);
        let conn = server.raw();
        Self { name, server, conn, guest, intx: None, read_data: Vec::new() }
    }

    fn fail(&self, r: &Record, what: &str) -> ! {
        panic!(
            "{} line {} (cmd {}, msg_id {:#x}): {what}\n{}",
            self.name,
            r.line,
            r.cmd,
            r.msg_id,
            self.server.context()
        )
    }

    /// Sends a recorded client message with `payload`, and its fds for real.
    fn send(&mut self, r: &Record, payload: &[u8]) {
        let mut bytes = r.header(16 + payload.len() as u32);
        bytes.extend_from_slice(payload);
        let fds: Vec<OwnedFd> = match (r.nfds, r.cmd) {
            (0, _) => Vec::new(),
            (1, DMA_MAP) => vec![self.guest.as_fd().try_clone_to_owned().unwrap()],
            (1, SET_IRQS) => {
                let fd = eventfd();
                self.intx = Some(fd.try_clone().unwrap());
                vec![fd]
            }
            _ => self.fail(r, "a message with fds the replay does not know"),
        };
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        self.conn.send(&bytes, &borrowed).unwrap_or_else(|e| self.fail(r, &format!("send failed: {e}")));
    }

    /// Receives the message `r` recorded the server sending.
    fn recv(&mut self, r: &Record) -> RawMsg {
        let wait = if r.is_request() { DMA_WAIT } else { common::REPLY_TIMEOUT };
        match self.conn.recv_within(wait) {
            Ok(Some(m)) => m,
            Ok(None) => self.fail(r, &format!("nothing within {wait:?}")),
            Err(e) => self.fail(r, &format!("receive failed: {e}")),
        }
    }

    /// Requires `got` to equal `expected` byte for byte (header included) and to carry the
    /// recorded number of fds.
    fn expect(&self, r: &Record, got: &RawMsg, expected: &[u8]) {
        if got.fds.len() != r.nfds {
            self.fail(r, &format!("{} fds, recorded {}", got.fds.len(), r.nfds));
        }
        assert_eq!(
            dump(&wire(got)),
            dump(expected),
            "{} line {} (cmd {}): ours (left) vs recorded",
            self.name,
            r.line,
            r.cmd
        );
    }

    /// The file bytes at `offset`.
    fn guest_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.guest.read_exact_at(&mut buf, offset).unwrap();
        buf
    }
}

/// What the replay substitutes: BAR0's two times.
struct Times {
    first: i64,
    second: i64,
}

/// Replays one session. `resume` is the data the destination is given (None for the source).
fn replay(side: &mut Side<'_>, session: &[&Record], times: &mut Times, resume: Option<&[Vec<u8>]>) {
    let mut bar0_writes = 0;
    let mut mig_writes = 0;
    let mut intx_checked = false;
    for r in session {
        let recorded = r.payload();
        if r.dir == "c2s" {
            let mut payload = recorded.clone();
            match r.cmd {
                // BAR0's time: region 0 at offset 16 of a REGION_WRITE's payload.
                REGION_WRITE if payload.get(8..12) == Some(&[0, 0, 0, 0]) => {
                    let t = match bar0_writes {
                        // Two seconds, not one: a time in the device's present second
                        // disarms its timer, and a second may tick before the write lands.
                        0 => {
                            times.first = now() + 2;
                            times.first
                        }
                        _ => {
                            times.second = now() + 3;
                            times.second
                        }
                    };
                    bar0_writes += 1;
                    payload.splice(16..24, t.to_le_bytes());
                }
                MIG_DATA_WRITE => {
                    let data =
                        resume.and_then(|d| d.get(mig_writes)).unwrap_or_else(|| side.fail(r, "no data to resume"));
                    mig_writes += 1;
                    // Equal to the recorded data but for BAR0's time, the 8-byte last chunk.
                    let mut want = recorded[8..].to_vec();
                    if want.len() == 8 {
                        want = times.second.to_le_bytes().to_vec();
                    }
                    assert_eq!(dump(data), dump(&want), "{} line {}: the source's data vs recorded", side.name, r.line);
                    payload.truncate(8);
                    payload.extend_from_slice(data);
                }
                _ => {}
            }
            side.send(r, &payload);
            continue;
        }
        let got = side.recv(r);
        let mut expected = r.header(r.size);
        expected.extend_from_slice(&recorded);
        match r.cmd {
            VERSION => {
                assert_eq!(
                    client_visible_caps(&got.payload),
                    client_visible_caps(&recorded),
                    "{} line {}: VERSION as the reference client reads it",
                    side.name,
                    r.line
                );
                assert_eq!((got.msg_id, got.cmd, got.flags, got.error_no), (r.msg_id, r.cmd, r.flags, r.error_no));
                continue;
            }
            // BAR0 read: now minus BAR0, -2 or -1 seconds (the recording's -1 was for `now + 1`).
            REGION_READ if recorded.get(8..12) == Some(&[0, 0, 0, 0]) && recorded.len() == 24 => {
                let delta =
                    i64::from_le_bytes(got.payload.get(16..24).unwrap_or_default().try_into().unwrap_or_default());
                if !(-2..=-1).contains(&delta) {
                    side.fail(r, &format!("BAR0 reads {delta}, not -2 or -1"));
                }
                expected.splice(16 + 16..16 + 24, delta.to_le_bytes());
            }
            MIG_DATA_READ => {
                let size = u32::from_le_bytes(recorded[4..8].try_into().unwrap()) as usize;
                // The stop-and-copy read that ends with BAR0 carries our time.
                if size == 8 {
                    expected.splice(16 + 8..16 + 16, times.second.to_le_bytes());
                }
            }
            DMA_WRITE => {
                if !intx_checked {
                    let intx = side.intx.as_ref().unwrap_or_else(|| side.fail(r, "DMA before SET_IRQS"));
                    let mut count = [0u8; 8];
                    let n = nix::unistd::read(intx, &mut count)
                        .unwrap_or_else(|e| side.fail(r, &format!("INTx not signalled before the DMA: {e}")));
                    assert_eq!(
                        (n, u64::from_le_bytes(count)),
                        (8, 1),
                        "{}: INTx raised once before the DMA test",
                        side.name
                    );
                    intx_checked = true;
                }
                // Do what the client does with the data: write it into the region's file.
                let addr = u64::from_le_bytes(got.payload.get(..8).unwrap_or_default().try_into().unwrap_or_default());
                side.guest.write_all_at(got.payload.get(16..).unwrap_or_default(), addr).unwrap();
            }
            DMA_READ => {
                // The recorded reply's data must be what the file holds after the writes.
                let addr = u64::from_le_bytes(recorded[..8].try_into().unwrap());
                let count = u64::from_le_bytes(recorded[8..16].try_into().unwrap()) as usize;
                side.expect(r, &got, &expected);
                let reply = session.iter().find(|x| x.line == r.line + 1).map(|x| x.payload()).unwrap_or_default();
                assert_eq!(
                    dump(&reply[16..]),
                    dump(&side.guest_bytes(addr, count)),
                    "{} line {}: DMA_READ data",
                    side.name,
                    r.line + 1
                );
                continue;
            }
            _ => {}
        }
        side.expect(r, &got, &expected);
        if r.cmd == MIG_DATA_READ {
            let size = u32::from_le_bytes(got.payload[4..8].try_into().unwrap()) as usize;
            side.read_data.push(got.payload[8..8 + size].to_vec());
        }
    }
}

/// The bytes the DMA test leaves: 1 KiB each of `A`, `B`, `C`, `D`.
fn dma_test_pattern() -> Vec<u8> {
    (0..4u8).flat_map(|i| vec![b'A' + i; 1024]).collect()
}

#[test]
fn reference_client_conversation_replays_byte_for_byte_against_the_sample_device() {
    let all = records();
    let source: Vec<&Record> = all.iter().filter(|r| r.session == "source").collect();
    let destination: Vec<&Record> = all.iter().filter(|r| r.session == "destination").collect();
    assert_eq!((source.len(), destination.len()), (224, 82), "the recording's two sessions");

    let guest = File::from(common::memfd(GUEST_LEN));
    let mut times = Times { first: 0, second: 0 };

    let mut src = Side::start("source", &guest);
    replay(&mut src, &source, &mut times, None);
    // The direct half of the source's DMA test went into the second region (offset 0x1000),
    // the message half into the first through the client's own writes.
    assert_eq!(dump(&src.guest_bytes(0x1000, 4096)), dump(&dma_test_pattern()), "source: direct DMA into region 1");
    assert_eq!(dump(&src.guest_bytes(0, 4096)), dump(&dma_test_pattern()), "source: DMA_WRITEs into region 0");
    src.server.assert_alive();

    // The destination resumes from what our source produced in stop-and-copy.
    let stop_copy_reads = destination.iter().filter(|r| r.cmd == MIG_DATA_WRITE && r.dir == "c2s").count();
    let resume: Vec<Vec<u8>> = src.read_data[src.read_data.len() - stop_copy_reads..].to_vec();
    assert_eq!(resume.iter().map(Vec::len).sum::<usize>(), 0x3008, "stop-and-copy is BAR1 then BAR0");
    guest.write_all_at(&vec![0; GUEST_LEN as usize], 0).unwrap();
    let mut dst = Side::start("destination", &guest);
    replay(&mut dst, &destination, &mut times, Some(&resume));
    // The destination maps regions 8..15: its second region is at 0x9000, its first at 0x8000.
    assert_eq!(
        dump(&dst.guest_bytes(0x9000, 4096)),
        dump(&dma_test_pattern()),
        "destination: direct DMA into its second region"
    );
    assert_eq!(
        dump(&dst.guest_bytes(0x8000, 4096)),
        dump(&dma_test_pattern()),
        "destination: DMA_WRITEs into its first region"
    );
    dst.server.assert_alive();
}
