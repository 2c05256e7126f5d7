//! Property: no sequence of random or mutated messages can break a session.
//!
//! One real `vfu-server --device dma-engine` process serves the whole property over one
//! connection. Each case sends random headers and payloads, or valid requests mutated by bit
//! flips, truncation and `msg_size` lies, with a random number of fds (sometimes more than the
//! server accepts), then sends a valid DEVICE_GET_INFO and reads every message until its reply
//! arrives. The property holds when that reply always comes, on the same connection, and the
//! server process is still alive.
//!
//! `msg_size` lies never make the server wait for bytes that are not coming: the byte stream is
//! re-framed the way the server reads it (a frame is `max(16, msg_size)` bytes) and a frame that
//! claims more than was generated gets the missing bytes as zeros, so the probe's bytes are
//! never swallowed. Server-initiated DMA requests (device DMA into memory mapped without an fd)
//! are answered with an error at once. The case count is 64 unless `PROPTEST_CASES` says
//! otherwise.

mod common;

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use vfu_server::wire::Command;

use common::{Msg, RawConn, ServerProcess, device_info_request, eventfd, memfd, msg, region_read_request};

const DEVICE: [&str; 2] = ["--device", "dma-engine"];
const PROBE_ID: u16 = 0x9f0b;
/// Largest number of bytes added to complete a frame whose msg_size claims more than was sent.
const MAX_PAD: usize = 256 << 10;

/// Well-formed requests the mutations start from, with the number of fds each wants (most
/// succeed on a dma-engine; the migration ones are refused by a device without migration).
fn corpus() -> Vec<(Msg, usize)> {
    vec![
        (device_info_request(), 0),
        (msg(Command::DeviceGetRegionInfo).u32(80).u32(0).u32(4).u32(0).u64(0).u64(0), 0),
        (msg(Command::DeviceGetRegionIoFds).u32(16).u32(0).u32(0).u32(0), 0),
        (msg(Command::DeviceGetIrqInfo).u32(16).u32(0).u32(2).u32(0), 0),
        (msg(Command::DeviceSetIrqs).u32(20).u32(4 | 32).u32(2).u32(0).u32(1), 1),
        (msg(Command::DeviceSetIrqs).u32(20).u32(1 | 32).u32(2).u32(0).u32(1), 0),
        (msg(Command::DeviceSetIrqs).u32(22).u32(2 | 8).u32(2).u32(0).u32(2).bytes(&[1, 0]), 0),
        (region_read_request(0, 0, 8), 0),
        (msg(Command::RegionWrite).u64(0x18).u32(0).u32(8).u64(0x1122_3344_5566_7788), 0),
        (msg(Command::RegionWrite).u64(0x20).u32(0).u32(8).u32(1).u32(0), 0),
        (msg(Command::RegionWrite).u64(0x48).u32(0).u32(4).u32(1), 0),
        (msg(Command::RegionWrite).u64(0x100).u32(2).u32(4).u32(0xdead_beef), 0),
        (msg(Command::DmaMap).u32(32).u32(3).u64(0).u64(0x20_0000).u64(0x1000), 0),
        (msg(Command::DmaMap).u32(32).u32(3).u64(0).u64(0x30_0000).u64(0x1_0000), 1),
        (msg(Command::DmaUnmap).u32(24).u32(0).u64(0x20_0000).u64(0x1000), 0),
        (msg(Command::DmaUnmap).u32(24).u32(2).u64(0).u64(0), 0),
        (msg(Command::DeviceReset), 0),
        (msg(Command::RegionWriteMulti).u64(1).u64(0x18).u32(0).u32(8).u64(7), 0),
        // FILL of 256 bytes at the fd-less mapping above, doorbell included: the server must
        // reach that memory with DMA_WRITE messages.
        (
            msg(Command::RegionWriteMulti)
                .u64(4)
                .u64(0x20)
                .u32(0)
                .u32(4)
                .u64(1)
                .u64(0x28)
                .u32(0)
                .u32(8)
                .u64(0x20_0000)
                .u64(0x38)
                .u32(0)
                .u32(8)
                .u64(0x100)
                .u64(0x48)
                .u32(0)
                .u32(4)
                .u64(1),
            0,
        ),
        (msg(Command::DeviceFeature).u32(16).u32(0x40000 | 0x10000 | 1).u64(0), 0),
        (msg(Command::MigDataRead).u32(8).u32(64), 0),
    ]
}

/// How one case builds its bytes.
#[derive(Debug, Clone)]
enum Base {
    /// A random header and payload.
    Random { msg_id: u16, cmd: u16, msg_size: Option<u32>, flags: u32, error_no: u32, payload: Vec<u8> },
    /// Corpus entry `index` (modulo the corpus length), then mutated.
    Valid { index: usize, no_reply: bool, mutations: Vec<Mutation> },
}

/// A change to a valid message.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flips bit `n` (modulo the message's bits).
    FlipBit(usize),
    /// Keeps `n` (modulo length + 1) payload bytes, with a matching msg_size.
    Truncate(usize),
    /// Sets msg_size to `n` modulo (true size + 1): a downward lie (the rest is read as more
    /// messages).
    ShrinkSize(u32),
    /// Adds `n` to msg_size: an upward lie, completed with zeros.
    GrowSize(u16),
    /// Overwrites the u32 at byte `at` (modulo the payload) with `value`.
    SetU32 { at: usize, value: u32 },
}

/// The fds sent with a case.
#[derive(Debug, Clone, Copy)]
enum FdKind {
    Eventfds,
    Memfds,
}

#[derive(Debug, Clone)]
struct Input {
    bases: Vec<Base>,
    fd_kind: FdKind,
    /// How many fds; `None`: what the first base wants if it comes from the corpus (eventfds for
    /// SET_IRQS, memfds for DMA_MAP), else none.
    fd_count: Option<usize>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::FlipBit),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<u32>().prop_map(Mutation::ShrinkSize),
        any::<u16>().prop_map(Mutation::GrowSize),
        (any::<usize>(), prop_oneof![Just(0u32), Just(u32::MAX), Just(0x8000_0000), any::<u32>()])
            .prop_map(|(at, value)| Mutation::SetU32 { at, value }),
    ]
}

fn base() -> impl Strategy<Value = Base> {
    let random = (
        any::<u16>(),
        prop_oneof![0u16..=20, any::<u16>()],
        prop_oneof![3 => Just(None), 1 => any::<u32>().prop_map(Some)],
        prop_oneof![Just(0u32), Just(0x10), Just(1), Just(0x21), any::<u32>()],
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(msg_id, cmd, msg_size, flags, error_no, payload)| Base::Random {
            msg_id,
            cmd,
            msg_size,
            flags,
            error_no,
            payload,
        });
    let valid = (any::<usize>(), any::<bool>(), proptest::collection::vec(mutation(), 0..4))
        .prop_map(|(index, no_reply, mutations)| Base::Valid { index, no_reply, mutations });
    prop_oneof![random, valid]
}

fn input() -> impl Strategy<Value = Input> {
    (
        proptest::collection::vec(base(), 1..4),
        prop_oneof![Just(FdKind::Eventfds), Just(FdKind::Memfds)],
        prop_oneof![4 => Just(None), 3 => (0usize..=2).prop_map(Some), 1 => Just(Some(17)), 1 => (3usize..=20).prop_map(Some)],
    )
        .prop_map(|(bases, fd_kind, fd_count)| Input { bases, fd_kind, fd_count })
}

fn set_size(bytes: &mut [u8], size: u32) {
    if let Some(field) = bytes.get_mut(4..8) {
        field.copy_from_slice(&size.to_le_bytes());
    }
}

fn build(base: &Base, corpus: &[(Msg, usize)]) -> Vec<u8> {
    match base {
        Base::Random { msg_id, cmd, msg_size, flags, error_no, payload } => {
            let mut m = common::msg_raw(*cmd).id(*msg_id).flags(*flags).bytes(payload);
            m.error_no = *error_no;
            if let Some(s) = msg_size {
                m = m.msg_size(*s);
            }
            m.build()
        }
        Base::Valid { index, no_reply, mutations } => {
            let (m, _) = &corpus[index % corpus.len()];
            let m = if *no_reply { m.clone().no_reply() } else { m.clone() };
            let mut bytes = m.id(0x5000 + (index % 0x1000) as u16).build();
            for mutation in mutations {
                match *mutation {
                    Mutation::FlipBit(n) => {
                        let bit = n % (bytes.len() * 8);
                        bytes[bit / 8] ^= 1 << (bit % 8);
                    }
                    Mutation::Truncate(n) => {
                        let keep = 16 + n % (bytes.len() - 16 + 1);
                        bytes.truncate(keep);
                        set_size(&mut bytes, keep as u32);
                    }
                    Mutation::ShrinkSize(n) => {
                        let size = n % (bytes.len() as u32 + 1);
                        set_size(&mut bytes, size);
                    }
                    Mutation::GrowSize(n) => {
                        let size = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                        set_size(&mut bytes, size.saturating_add(u32::from(n)));
                    }
                    Mutation::SetU32 { at, value } => {
                        let room = bytes.len() - 16;
                        if room >= 4 {
                            let at = 16 + at % (room - 3);
                            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
                        }
                    }
                }
            }
            bytes
        }
    }
}

/// Re-frames `stream` the way the server reads it (a frame is `max(16, msg_size)` bytes, the
/// header first), so nothing is left waiting for bytes that never come: a short tail becomes a
/// header-only frame, and a frame claiming more than remains gets zeros up to [`MAX_PAD`] (or,
/// beyond that, a msg_size cut down to what remains).
fn frame(mut stream: Vec<u8>) -> Vec<u8> {
    let mut at = 0;
    while at < stream.len() {
        let remaining = stream.len() - at;
        if remaining < 16 {
            stream.resize(at + 16, 0);
            set_size(&mut stream[at..], 16);
            break;
        }
        let size = u32::from_le_bytes([stream[at + 4], stream[at + 5], stream[at + 6], stream[at + 7]]) as usize;
        let len = size.max(16);
        if len > remaining {
            if len - remaining <= MAX_PAD {
                stream.resize(at + len, 0);
            } else {
                set_size(&mut stream[at..], remaining as u32);
                break;
            }
        }
        at += len;
    }
    stream
}

/// What the server sent before the probes' replies, to show the property is not vacuous.
#[derive(Debug, Default)]
struct Seen {
    ok_replies: usize,
    error_replies: usize,
    server_requests: usize,
}

/// Sends the probe and reads until its reply, answering server-initiated requests with EFAULT.
fn probe(conn: &RawConn, stats: &mut Seen) -> Result<(), String> {
    let probe = device_info_request().id(PROBE_ID);
    conn.send_msg(&probe, &[]).map_err(|e| format!("sending the probe failed: {e}"))?;
    let deadline = Instant::now() + common::REPLY_TIMEOUT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let m = conn.recv().map_err(|e| format!("waiting for the probe's reply: {e}; before it: {seen:?}"))?;
        if m.flags & 0xf == 0 {
            // A server-initiated DMA_READ / DMA_WRITE: refuse it at once.
            let reply = common::msg_raw(m.cmd).id(m.msg_id).flags(0x21);
            let reply = Msg { error_no: 14, ..reply };
            conn.send_msg(&reply, &[]).map_err(|e| format!("answering a server request: {e}"))?;
            seen.push(format!("server request {m:?}"));
            stats.server_requests += 1;
            continue;
        }
        if m.msg_id == PROBE_ID && m.cmd == Command::DeviceGetInfo as u16 {
            return if m.is_ok_reply() && m.payload.len() == 16 {
                Ok(())
            } else {
                Err(format!("the probe failed: {m:?}"))
            };
        }
        if m.is_ok_reply() {
            stats.ok_replies += 1;
        } else {
            stats.error_replies += 1;
        }
        if seen.len() < 16 {
            seen.push(format!("{m:?}"));
        }
    }
    Err(format!("no probe reply within {:?}; seen {seen:?}", common::REPLY_TIMEOUT))
}

fn fds_for(kind: FdKind, count: usize) -> Vec<OwnedFd> {
    (0..count)
        .map(|_| match kind {
            FdKind::Eventfds => eventfd(),
            FdKind::Memfds => memfd(0x1_0000),
        })
        .collect()
}

#[test]
fn random_and_mutated_messages_never_break_the_session() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let server = RefCell::new(ServerProcess::spawn(&DEVICE));
    let (conn, _) = server.borrow().raw_negotiated();
    let corpus = corpus();
    let stats = RefCell::new(Seen::default());
    let mut runner = TestRunner::new(config);
    let result = runner.run(&input(), |input| {
        let mut stream = Vec::new();
        for b in &input.bases {
            stream.extend_from_slice(&build(b, &corpus));
        }
        let stream = frame(stream);
        let (kind, count) = match (input.fd_count, input.bases.first()) {
            (Some(n), _) => (input.fd_kind, n),
            (None, Some(Base::Valid { index, .. })) => {
                let (m, n) = &corpus[index % corpus.len()];
                (if m.cmd == Command::DmaMap as u16 { FdKind::Memfds } else { FdKind::Eventfds }, *n)
            }
            (None, _) => (input.fd_kind, 0),
        };
        let fds = fds_for(kind, count);
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        conn.send(&stream, &borrowed).map_err(|e| TestCaseError::fail(format!("sending failed: {e}")))?;
        drop(fds);
        probe(&conn, &mut stats.borrow_mut()).map_err(TestCaseError::fail)?;
        if let Some(status) = server.borrow_mut().try_wait() {
            return Err(TestCaseError::fail(format!("vfu-server died: {status}")));
        }
        Ok(())
    });
    let mut server = server.into_inner();
    if let Err(e) = result {
        panic!("{e}\n{}", server.context());
    }
    let stats = stats.into_inner();
    eprintln!("{cases} cases; the server sent {stats:?}");
    assert!(
        stats.ok_replies > 0 && stats.error_replies > 0,
        "the generated messages must get both successes and refusals: {stats:?}"
    );
    // A fresh connection is served too, once this one closes.
    drop(conn);
    let (conn, _) = server.raw_negotiated();
    probe(&conn, &mut Seen::default())
        .unwrap_or_else(|e| panic!("fresh connection after the property: {e}\n{}", server.context()));
    server.assert_alive();
}

#[test]
fn framing_helper_never_leaves_a_partial_frame() {
    // The property relies on this: every generated stream ends on a frame boundary.
    let check = |stream: Vec<u8>| {
        let framed = frame(stream);
        let mut at = 0;
        while at < framed.len() {
            let size = u32::from_le_bytes(framed[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
            at += size.max(16);
        }
        assert_eq!(at, framed.len(), "frames must tile the stream exactly");
    };
    check(vec![1; 5]);
    check(msg(Command::DeviceReset).msg_size(3).build());
    check(msg(Command::RegionRead).zeros(40).msg_size(24).build());
    check(msg(Command::RegionRead).zeros(4).msg_size(1000).build());
    check(msg(Command::RegionRead).zeros(4).msg_size(u32::MAX).build());
}
