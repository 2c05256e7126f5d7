//! `miglab tap` between real processes: mock-qemu migrates a dma-engine between two servers,
//! each behind a tap. The migration succeeds as it does without them, the passive model finds
//! nothing, and each tap's trace is mock-qemu's own trace of that side, message for message.

mod common;

use std::io::BufReader;
use std::path::Path;

use common::{Proc, server, wait_for};
use harness::trace::{DecodedMessage, Record, decode_messages};
use pretty_assertions::assert_eq;

fn messages(path: &Path) -> Vec<Record> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (messages, summary) = decode_messages(BufReader::new(file)).expect("the trace reads");
    assert!(summary.malformed.is_empty(), "{}: {:?}", path.display(), summary.malformed);
    messages.into_iter().map(|m: DecodedMessage| m.record).collect()
}

/// What must be equal between the tap's record of a message and the client's: everything
/// but the session's name and the timestamp; the payload whole or by length and hash.
fn same(tap: &Record, client: &Record) -> bool {
    (tap.dir, tap.header, tap.nfds, tap.payload_len) == (client.dir, client.header, client.nfds, client.payload_len)
        && tap.same_payload(client)
}

#[test]
fn a_migration_through_two_taps_is_the_same_conversation_and_has_no_findings() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = |name: &str| dir.path().join(name).display().to_string();
    let (_src, src_sock) = server(dir.path(), "source");
    let (_dst, dst_sock) = server(dir.path(), "destination");
    let mut taps = Vec::new();
    for (side, socket) in [("source", &src_sock), ("destination", &dst_sock)] {
        let listen = d(&format!("{side}-tap.sock"));
        let args = [
            "tap",
            "--listen",
            &listen,
            "--server",
            &socket.display().to_string(),
            "--trace",
            &d(&format!("{side}-tap.jsonl")),
            "--pcapng",
            &d(&format!("{side}-tap.pcapng")),
            "--once",
            "--quiet",
        ];
        let mut tap = Proc::start(dir.path(), &format!("{side}-tap"), &args);
        wait_for(&format!("the {side} tap listens"), common::DEADLINE, || {
            assert!(tap.running(), "the {side} tap exited:\n{}", tap.output());
            Path::new(&listen).exists()
        });
        taps.push(tap);
    }
    let mut migrate = Proc::start(
        dir.path(),
        "migrate",
        &[
            "mock-qemu",
            "migrate",
            "--from",
            &d("source-tap.sock"),
            "--to",
            &d("destination-tap.sock"),
            "--ram",
            "64M",
            "--max-rounds",
            "3",
            "--trace",
            &d("mock-qemu.jsonl"),
        ],
    );
    let status = migrate.wait();
    assert!(status.success(), "mock-qemu migrate: {status}\n{}", migrate.output());
    assert!(migrate.output().contains("destination equals source"), "{}", migrate.output());
    for (tap, side) in taps.iter_mut().zip(["source", "destination"]) {
        let status = tap.wait();
        let out = tap.output();
        assert!(status.success(), "the {side} tap: {status}\n{out}");
        assert!(out.contains("tap: 1 client(s), ") && out.contains(" 0 malformed; 0 finding(s)\n"), "{out}");
    }

    let client = messages(&dir.path().join("mock-qemu.jsonl"));
    for side in ["source", "destination"] {
        let tapped = messages(&dir.path().join(format!("{side}-tap.jsonl")));
        let own: Vec<&Record> = client.iter().filter(|r| r.session == side).collect();
        assert!(own.len() > 20, "{side}: {} messages", own.len());
        assert!(tapped.iter().all(|r| r.session == "conn1"), "{side}: one client");
        assert!(tapped.iter().any(|r| r.is_cut()), "{side}: migration data is longer than the snap length");
        // Each direction is one ordered stream; the two interleave as each side saw them.
        for dir in [harness::trace::Dir::C2s, harness::trace::Dir::S2c] {
            let a: Vec<&Record> = tapped.iter().filter(|r| r.dir == dir).collect();
            let b: Vec<&&Record> = own.iter().filter(|r| r.dir == dir).collect();
            assert_eq!(a.len(), b.len(), "{side} {dir:?}: as many messages");
            for (i, (t, c)) in a.iter().zip(&b).enumerate() {
                assert!(
                    same(t, c),
                    "{side} {dir:?} message {i}: the tap saw\n{}\nthe client\n{}",
                    t.to_line(),
                    c.to_line()
                );
            }
        }
    }
    let pcapng = std::fs::metadata(dir.path().join("source-tap.pcapng")).expect("the capture is written");
    assert!(pcapng.len() > 1000);

    // The differential reading: a trace against itself, the source's against the destination's.
    let same = ["trace", &d("source-tap.jsonl"), "--diff", &d("source-tap.jsonl")];
    let mut p = Proc::start(dir.path(), "diff-same", &same);
    assert_eq!(p.wait().code(), Some(0), "{}", p.output());
    let other = ["trace", &d("source-tap.jsonl"), "--diff", &d("destination-tap.jsonl")];
    let mut p = Proc::start(dir.path(), "diff-other", &other);
    assert_eq!(p.wait().code(), Some(1), "{}", p.output());
    assert!(p.output().contains(" only in B") || p.output().contains(" only in A"), "{}", p.output());
}
