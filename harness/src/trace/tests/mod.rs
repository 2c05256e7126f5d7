//! Tests of the trace decoder: builders for message lines, then the specification of what
//! each line shows (payload fields in [`fields`], hostile input in [`hostile`]).

mod fields;
mod hostile;

use vfu_server::wire::{Command, FEATURE_GET, FEATURE_MIG_DEVICE_STATE, FEATURE_SET, MigState};

use super::*;

/// Payload bytes, field by field (little-endian, as on x86-64).
#[derive(Debug, Clone, Default)]
pub(super) struct P(pub(super) Vec<u8>);

/// An empty payload to build on.
pub(super) fn p() -> P {
    P::default()
}

impl P {
    pub(super) fn u16(mut self, v: u16) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub(super) fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub(super) fn u64(mut self, v: u64) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub(super) fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// One message line being built.
#[derive(Debug, Clone)]
pub(super) struct Msg {
    session: &'static str,
    dir: &'static str,
    id: u16,
    cmd: u16,
    size: Option<u32>,
    flags: u32,
    errno: u32,
    nfds: u32,
    payload: Vec<u8>,
}

/// A client request (c2s).
pub(super) fn req(id: u16, cmd: Command, p: P) -> Msg {
    raw(id, cmd as u16, 0, p)
}

/// A successful server reply (s2c).
pub(super) fn rep(id: u16, cmd: Command, p: P) -> Msg {
    Msg { dir: "s2c", ..raw(id, cmd as u16, 1, p) }
}

/// A server error reply (s2c) with `errno`.
pub(super) fn err(id: u16, cmd: Command, errno: u32) -> Msg {
    Msg { dir: "s2c", errno, ..raw(id, cmd as u16, 0x21, p()) }
}

/// A c2s message with any command number and flags.
pub(super) fn raw(id: u16, cmd: u16, flags: u32, p: P) -> Msg {
    Msg { session: "source", dir: "c2s", id, cmd, size: None, flags, errno: 0, nfds: 0, payload: p.0 }
}

impl Msg {
    pub(super) fn on(self, session: &'static str) -> Self {
        Self { session, ..self }
    }
    /// Turned around: a server-initiated request travels s2c, its reply c2s.
    pub(super) fn flipped(self) -> Self {
        Self { dir: if self.dir == "c2s" { "s2c" } else { "c2s" }, ..self }
    }
    pub(super) fn fds(self, nfds: u32) -> Self {
        Self { nfds, ..self }
    }
    pub(super) fn size(self, size: u32) -> Self {
        Self { size: Some(size), ..self }
    }
    /// The line as mock-qemu's client writes it, without `cmd_name` and `t`.
    pub(super) fn line(&self) -> String {
        let hex: String = self.payload.iter().map(|b| format!("{b:02x}")).collect();
        let size = self.size.unwrap_or(16 + self.payload.len() as u32);
        format!(
            "{{\"session\": \"{}\", \"dir\": \"{}\", \"msg_id\": {}, \"cmd\": {}, \"size\": {size}, \"flags\": {}, \
             \"error_no\": {}, \"nfds\": {}, \"payload\": \"{hex}\"}}",
            self.session, self.dir, self.id, self.cmd, self.flags, self.errno, self.nfds
        )
    }
}

/// SET MIG_DEVICE_STATE to `s`, and its echoing reply.
pub(super) fn set_state(id: u16, s: MigState) -> [Msg; 2] {
    let payload = p().u32(16).u32(FEATURE_SET | FEATURE_MIG_DEVICE_STATE).u32(s as u32).u32(u32::MAX);
    [req(id, Command::DeviceFeature, payload.clone()), rep(id, Command::DeviceFeature, payload)]
}

/// Decodes `lines` with the default options.
pub(super) fn decode(lines: &[String]) -> (String, DecodeSummary) {
    decode_with(lines, &DecodeOptions::default())
}

/// Decodes `lines` with `options`.
pub(super) fn decode_with(lines: &[String], options: &DecodeOptions) -> (String, DecodeSummary) {
    let input = lines.join("\n");
    let mut out = Vec::new();
    let summary = decode_trace(input.as_bytes(), options, &mut out).expect("decoding in memory cannot fail");
    (String::from_utf8(out).expect("the output is UTF-8"), summary)
}

/// Lines of every message.
pub(super) fn lines(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().map(Msg::line).collect()
}

/// The part of a message line after its columns (`[step] session dir #id`).
pub(super) fn body(line: &str) -> &str {
    let rest = line.split_once(" #").map_or(line, |(_, r)| r);
    rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start()
}

fn step(index: usize, kind: &str) -> String {
    format!(
        "{{\"event\": \"step\", \"index\": {index}, \"kind\": \"{kind}\", \"line\": {}, \"column\": 5}}",
        20 + index
    )
}

mod states {
    use pretty_assertions::assert_eq;

    use super::*;

    #[test]
    fn successful_set_reply_prints_the_state_change() {
        let mut input = vec![r#"{"event": "step", "index": 3, "kind": "migrate", "line": 27, "column": 5}"#.to_owned()];
        input.extend(lines(&set_state(12, MigState::PreCopy)));
        let (out, summary) = decode(&input);
        assert_eq!(
            out,
            "── step 3: migrate (line 27:5) ──\n\
             [step 3 migrate] source      c2s #12    DEVICE_FEATURE SET MIG_DEVICE_STATE state=PRE_COPY\n\
             [step 3 migrate] source      s2c #12    DEVICE_FEATURE reply ok\n   \
             state RUNNING -> PRE_COPY\n"
        );
        let change = StateChange { line: 3, session: "source".into(), from: Some(2), to: 6, cause: ChangeCause::Set };
        assert_eq!(summary.state_changes, vec![change]);
    }

    #[test]
    fn failed_set_shows_the_errno_by_name_and_leaves_the_state_unknown() {
        let [ask, _] = set_state(40, MigState::StopCopy);
        let mut msgs = vec![ask, err(40, Command::DeviceFeature, 22)];
        msgs.extend(set_state(41, MigState::Stop));
        let mut input = vec![step(5, "set-state")];
        input.extend(lines(&msgs));
        let (out, summary) = decode(&input);
        let out: Vec<&str> = out.lines().collect();
        assert_eq!(out[2], "[step 5 set-state] source      s2c #40    DEVICE_FEATURE reply ERROR EINVAL (22)");
        assert_eq!(out[5], "   state ? -> STOP");
        assert_eq!(out.len(), 6);
        assert_eq!(summary.error_replies, 1);
    }

    #[test]
    fn set_is_applied_only_when_its_own_reply_arrives() {
        let [ask_pre, ok_pre] = set_state(1, MigState::PreCopy);
        let [ask_stop, ok_stop] = set_state(2, MigState::Stop);
        let (out, _) = decode(&lines(&[ask_pre, ask_stop, ok_stop, ok_pre]));
        let states: Vec<&str> = out.lines().filter(|l| l.starts_with("   state")).collect();
        assert_eq!(states, ["   state RUNNING -> STOP", "   state STOP -> PRE_COPY"]);
    }

    #[test]
    fn reset_reply_returns_the_state_to_running() {
        let mut msgs = set_state(1, MigState::PreCopy).to_vec();
        msgs.extend([req(2, Command::DeviceReset, p()), rep(2, Command::DeviceReset, p())]);
        msgs.extend([req(3, Command::DeviceReset, p()), rep(3, Command::DeviceReset, p())]);
        let (out, summary) = decode(&lines(&msgs));
        assert!(out.ends_with("DEVICE_RESET reply ok\n   state PRE_COPY -> RUNNING (reset)\nsource      c2s #3     DEVICE_RESET\nsource      s2c #3     DEVICE_RESET reply ok\n"), "{out}");
        assert_eq!(summary.state_changes.last().map(|c| c.cause), Some(ChangeCause::Reset));
    }

    #[test]
    fn get_reply_that_differs_from_the_tracked_state_is_read_back() {
        let get = p().u32(16).u32(FEATURE_GET | FEATURE_MIG_DEVICE_STATE);
        let got = get.clone().u32(MigState::Stop as u32).u32(u32::MAX);
        let msgs = [
            req(1, Command::DeviceFeature, get.clone()),
            rep(1, Command::DeviceFeature, got.clone()),
            req(2, Command::DeviceFeature, get),
            rep(2, Command::DeviceFeature, got),
        ];
        let (out, _) = decode(&lines(&msgs));
        let out: Vec<&str> = out.lines().collect();
        assert_eq!(body(out[1]), "DEVICE_FEATURE reply ok MIG_DEVICE_STATE state=STOP");
        assert_eq!(out[2], "   state RUNNING -> STOP (read back)");
        assert_eq!(out.len(), 5, "a GET that agrees adds no state line");
    }

    #[test]
    fn states_are_tracked_per_session() {
        let [src_ask, src_ok] = set_state(7, MigState::PreCopy);
        let [dst_ask, dst_ok] = set_state(7, MigState::Resuming).map(|m| m.on("destination"));
        let (_, summary) = decode(&lines(&[src_ask, dst_ask, dst_ok, src_ok]));
        let changes: Vec<String> = summary.state_changes.iter().map(ToString::to_string).collect();
        assert_eq!(changes, ["destination RUNNING -> RESUMING", "source RUNNING -> PRE_COPY"]);
    }

    #[test]
    fn a_server_request_with_the_same_msg_id_does_not_take_the_clients_reply() {
        let [ask, ok] = set_state(1, MigState::PreCopy);
        let dma = p().u64(0x1000).u64(2);
        let msgs = [
            ask,
            req(1, Command::DmaRead, dma.clone()).flipped(),
            rep(1, Command::DmaRead, dma.bytes(&[1, 2])).flipped(),
            ok,
        ];
        let (out, summary) = decode(&lines(&msgs));
        assert_eq!(summary.state_changes.len(), 1, "{out}");
        assert!(out.contains("s2c #1     DMA_READ addr=0x1000 count=2\n"), "{out}");
        assert!(out.contains("c2s #1     DMA_READ reply ok addr=0x1000 count=2 data=0102\n"), "{out}");
    }
}

mod events {
    use pretty_assertions::assert_eq;

    use super::*;

    #[test]
    fn fault_note_and_unknown_events_are_shown() {
        let input = [
            r#"{"event": "fault", "step": 7, "name": "proxy", "detail": "corrupt-header msg_size ^ 0x10 on REGION_WRITE #2"}"#,
            r#"{"event": "note", "side": "source", "text": "pre-copy round 2"}"#,
            r#"{"event": "note", "text": "switchover"}"#,
            r#"{"event": "round-end", "side": "source", "round": 2, "pages": [1, 2]}"#,
            r#"{"event": "step", "index": 4}"#,
        ];
        let (out, summary) = decode(&input.map(String::from));
        assert_eq!(
            out,
            "!! fault proxy: corrupt-header msg_size ^ 0x10 on REGION_WRITE #2\n   \
             note source: pre-copy round 2\n   \
             note switchover\n   \
             event round-end pages=[1,2] round=2 side=\"source\"\n\
             ── step 4 ──\n"
        );
        assert_eq!(summary.events, 5);
    }
}

mod filters {
    use pretty_assertions::assert_eq;

    use super::*;

    fn two_steps() -> Vec<String> {
        let mut input = vec![step(1, "connect")];
        input.extend(lines(&set_state(1, MigState::PreCopy)));
        input.extend(lines(&set_state(1, MigState::Resuming).map(|m| m.on("destination"))));
        input.push(step(2, "migrate"));
        input.push(r#"{"event": "note", "side": "destination", "text": "hidden for source"}"#.into());
        input.extend(lines(&set_state(2, MigState::StopCopy)));
        input.push("garbage".into());
        input
    }

    #[test]
    fn session_filter_shows_that_session_and_still_tracks_every_line() {
        let options = DecodeOptions { session: Some("source".into()), ..DecodeOptions::default() };
        let (out, summary) = decode_with(&two_steps(), &options);
        assert!(!out.contains("destination"), "{out}");
        assert!(out.contains("   state PRE_COPY -> STOP_COPY\n"), "{out}");
        assert_eq!((summary.messages, summary.state_changes.len()), (4, 2));
    }

    #[test]
    fn step_filter_shows_that_step_and_malformed_lines_anyway() {
        let options = DecodeOptions { step: Some(2), ..DecodeOptions::default() };
        let (out, summary) = decode_with(&two_steps(), &options);
        let out: Vec<&str> = out.lines().collect();
        assert_eq!(out[0], "── step 2: migrate (line 22:5) ──");
        assert_eq!(out[1], "   note destination: hidden for source");
        assert_eq!(body(out[2]), "DEVICE_FEATURE SET MIG_DEVICE_STATE state=STOP_COPY");
        assert_eq!(out[4], "   state PRE_COPY -> STOP_COPY");
        assert!(out[5].starts_with("malformed line 10: not JSON"), "{}", out[5]);
        assert_eq!((summary.messages, summary.events, summary.malformed.len()), (2, 2, 1));
    }
}

mod summary {
    use pretty_assertions::assert_eq;

    use super::*;

    #[test]
    fn summary_counts_each_command_and_its_errors() {
        let mut msgs = vec![req(1, Command::RegionRead, p().u64(0).u32(0).u32(4)), err(1, Command::RegionRead, 22)];
        msgs.extend(set_state(2, MigState::Stop));
        let (_, summary) = decode(&lines(&msgs));
        assert_eq!(
            summary.to_string(),
            "4 messages (2 requests, 2 replies, 1 error reply), 0 events, 0 malformed lines\n  \
             REGION_READ                   1 requests      1 replies (1 error)\n  \
             DEVICE_FEATURE                1 requests      1 replies\n"
        );
        assert!(!summary.has_problems());
    }

    #[test]
    fn the_module_documentation_example_decodes_as_shown() {
        let doc: Vec<&str> = include_str!("../mod.rs").lines().filter_map(|l| l.strip_prefix("//!")).collect();
        let blocks: Vec<Vec<&str>> = doc
            .split(|l| l.trim() == "```text")
            .skip(1)
            .map(|b| b.iter().take_while(|l| l.trim() != "```").map(|l| l.strip_prefix(' ').unwrap_or(l)).collect())
            .collect();
        let input: Vec<String> = blocks[0].iter().map(|l| (*l).to_owned()).collect();
        let (out, summary) = decode(&input);
        assert_eq!(out, blocks[1].iter().map(|l| format!("{l}\n")).collect::<String>());
        assert!(!summary.has_problems());
    }

    #[test]
    fn decode_trace_file_appends_the_summary_and_names_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, lines(&set_state(1, MigState::Stop)).join("\n")).unwrap();
        let mut out = Vec::new();
        decode_trace_file(&path, &DecodeOptions::default(), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.ends_with("   state RUNNING -> STOP\n\n2 messages (1 request, 1 reply, 0 error replies), 0 events, 0 malformed lines\n  DEVICE_FEATURE                1 requests      1 replies\n"), "{out}");
        let missing = decode_trace_file(&dir.path().join("none"), &DecodeOptions::default(), &mut Vec::new());
        assert!(matches!(missing, Err(TraceError::Open { .. })), "{missing:?}");
    }
}

mod cut_payloads {
    use pretty_assertions::assert_eq;

    use super::*;
    use vfu_server::wire::Header;

    #[test]
    fn a_cut_payload_is_decoded_with_its_whole_length_and_said_to_be_cut() {
        let mut payload = p().u32(8 + 10_000).u32(10_000).0;
        payload.extend(std::iter::repeat_n(0xab, 10_000));
        let header =
            Header { msg_id: 5, cmd: Command::MigDataRead as u16, msg_size: 16 + 10_008, flags: 1, error_no: 0 };
        let cut = Record::capture("source", Dir::S2c, header, &payload, 0, 4096);
        let ask = req(5, Command::MigDataRead, p().u32(8 + 10_000).u32(10_000));
        let (out, summary) = decode(&[ask.line(), cut.to_line()]);
        let reply = out.lines().nth(1).unwrap();
        assert_eq!(
            body(reply),
            "MIG_DATA_READ reply ok size=10000 of 10000 data=abababababababababababababababababababababababababababababababab… \
             (10000 bytes) (trace kept 4096 of 10008 payload bytes)"
        );
        assert!(!summary.has_problems());
    }

    #[test]
    fn a_cut_dirty_bitmap_counts_at_least_the_pages_it_kept() {
        let head = p().u32(0).u32(FEATURE_GET | vfu_server::wire::FEATURE_DMA_LOGGING_REPORT);
        let range = head.clone().u64(0).u64(64 * 4096 * 1024).u64(4096);
        let mut payload = range.clone().0;
        payload.extend(std::iter::repeat_n(0xff, 8 * 1024));
        let header = Header { msg_id: 9, cmd: 16, msg_size: 16 + payload.len() as u32, flags: 1, error_no: 0 };
        let cut = Record::capture("source", Dir::S2c, header, &payload, 0, 32 + 64);
        let (out, _) = decode(&[req(9, Command::DeviceFeature, range).line(), cut.to_line()]);
        assert!(out.contains("dirty=at least 512 of 65536 pages (trace kept 96 of 8224 payload bytes)"), "{out}");
    }
}

mod cut_before_the_fixed_part {
    use pretty_assertions::assert_eq;

    use super::*;
    use vfu_server::wire::Header;

    #[test]
    fn a_payload_cut_before_its_fixed_part_ends_is_not_called_too_short() {
        let payload = p().u32(32).u32(0).u32(4).u32(0).u64(0).u64(0).0;
        let header =
            Header { msg_id: 1, cmd: Command::DeviceGetRegionInfo as u16, msg_size: 48, flags: 0, error_no: 0 };
        let cut = Record::capture("source", Dir::C2s, header, &payload, 0, 8);
        let (out, summary) = decode(&[cut.to_line()]);
        assert_eq!(
            body(out.lines().next().unwrap()),
            "DEVICE_GET_REGION_INFO (the trace kept too little for RegionInfo) (trace kept 8 of 32 payload bytes)"
        );
        assert!(!summary.has_problems());
    }
}
