//! The diff on hand-made conversations: what lines up, what differs and how it is shown.

use pretty_assertions::assert_eq;
use vfu_server::wire::{Command, Header, MigState};

use super::*;
use crate::trace::Dir;
use crate::trace::tests::{Msg, err, lines, p, rep, req, set_state};

fn diff(a: &[String], b: &[String]) -> (String, DiffSummary) {
    let mut out = Vec::new();
    let s = diff_traces(a.join("\n").as_bytes(), b.join("\n").as_bytes(), ("a", "b"), 10, &mut out).unwrap();
    (String::from_utf8(out).unwrap(), s)
}

fn read(id: u16) -> [Msg; 2] {
    let head = p().u64(0x10).u32(0).u32(4);
    [req(id, Command::RegionRead, head.clone()), rep(id, Command::RegionRead, head.u32(7))]
}

#[test]
fn the_same_conversation_with_other_msg_ids_and_times_does_not_differ() {
    let a = lines(&[read(1), set_state(2, MigState::Stop)].concat());
    let mut b = lines(&[read(40), set_state(41, MigState::Stop)].concat());
    b[0] = b[0].replace('}', ", \"t\": 123}");
    let (out, s) = diff(&a, &b);
    assert_eq!(s, DiffSummary { paired: 4, ..DiffSummary::default() });
    assert!(!s.differ());
    assert_eq!(
        out,
        "diff: a (4 messages) and b (4 messages)\n4 paired, 0 differ (0 replies), 0 only in A, 0 only in B\n"
    );
}

#[test]
fn a_reply_that_fails_in_one_run_is_shown_with_its_request_field_by_field() {
    let [ask, _] = set_state(7, MigState::StopCopy);
    let a = lines(&set_state(7, MigState::StopCopy));
    let b = lines(&[ask, err(9, Command::DeviceFeature, 22)]);
    let (out, s) = diff(&a, &b);
    assert_eq!((s.differing, s.differing_replies), (1, 1));
    assert_eq!(
        out.lines().skip(1).take(4).collect::<Vec<_>>(),
        [
            "── source, message 2 (A line 2, B line 2): s2c DEVICE_FEATURE reply, to DEVICE_FEATURE SET MIG_DEVICE_STATE state=STOP_COPY",
            "   result       ok  |  ERROR EINVAL (22)",
            "   flags        0x1  |  0x21",
            "   size         32  |  16",
        ]
    );
}

#[test]
fn a_state_that_differs_is_named_by_its_field() {
    let get = p().u32(16).u32(vfu_server::wire::FEATURE_GET | vfu_server::wire::FEATURE_MIG_DEVICE_STATE);
    let answer = |s: MigState| {
        lines(&[
            req(1, Command::DeviceFeature, get.clone()),
            rep(1, Command::DeviceFeature, get.clone().u32(s as u32).u32(0)),
        ])
    };
    let (out, s) = diff(&answer(MigState::Running), &answer(MigState::Stop));
    assert_eq!(s.differing, 1);
    assert!(out.contains("\n   state        RUNNING  |  STOP\n"), "{out}");
}

#[test]
fn an_extra_message_in_one_trace_is_skipped_and_the_rest_still_lines_up() {
    let a = lines(&[read(1), set_state(2, MigState::Stop)].concat());
    let b = lines(&[read(1), read(2), set_state(3, MigState::Stop)].concat());
    let (out, s) = diff(&a, &b);
    assert_eq!((s.paired, s.differing, s.only_a, s.only_b), (4, 0, 0, 2));
    assert!(
        out.contains("── source: 2 message(s) only in B, from message 3\n   B line 3: c2s #2 REGION_READ"),
        "{out}"
    );
}

#[test]
fn sessions_of_other_names_pair_in_the_order_they_appear() {
    let a = lines(&read(1).map(|m| m.on("conn1")));
    let b = lines(&[read(5), read(6).map(|m| m.on("destination"))].concat());
    let (out, s) = diff(&a, &b);
    assert_eq!((s.paired, s.only_b), (2, 2));
    assert!(out.contains("── (none) = destination: 2 message(s) only in B"), "{out}");
}

#[test]
fn cut_payloads_compare_by_length_and_hash() {
    let data: Vec<u8> = (0..=255).cycle().take(10_000).collect();
    let h = Header { msg_id: 1, cmd: Command::MigDataWrite as u16, msg_size: 16 + 10_008, flags: 0, error_no: 0 };
    let mut payload = p().u32(10_008).u32(10_000).0;
    payload.extend(&data);
    let whole = Record::capture("source", Dir::C2s, h, &payload, 0, 0).to_line();
    let cut = Record::capture("source", Dir::C2s, h, &payload, 0, 64).to_line();
    let (_, s) = diff(std::slice::from_ref(&whole), std::slice::from_ref(&cut));
    assert!(!s.differ(), "the same bytes, one side cut");
    let last = payload.len() - 1;
    payload[last] ^= 1;
    let other = Record::capture("source", Dir::C2s, h, &payload, 0, 64).to_line();
    let (out, s) = diff(&[cut], &[other]);
    assert_eq!(s.differing, 1);
    assert!(out.contains("   payload      differs past the bytes the traces kept (by hash)\n"), "{out}");
}
