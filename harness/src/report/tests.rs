//! Tests of the report writers, on a small synthetic run.

use std::fs;
use std::path::PathBuf;

use mock_qemu::migrate::{MigrationStats, RoundStats};

use super::dirtymap::{Buckets, Cell, buckets, row_cells};
use super::*;

fn ev(t_micros: u64, side: Side, kind: EventKind) -> TimelineEvent {
    TimelineEvent { t_micros, side, kind }
}

fn change(t: u64, side: Side, from: &str, to: &str) -> TimelineEvent {
    ev(t, side, EventKind::StateChange { from: from.into(), to: to.into() })
}

pub(super) fn sample() -> RunReport {
    use Side::{Destination as D, Source as S};
    let mut timeline = vec![
        change(0, S, "RUNNING", "RUNNING"),
        change(0, D, "RUNNING", "RESUMING"),
        change(1_000, S, "RUNNING", "PRE_COPY"),
        ev(1_000, S, EventKind::RoundStart { round: 0 }),
        ev(6_000, S, EventKind::RoundEnd { round: 0 }),
        ev(6_000, S, EventKind::RoundStart { round: 1 }),
        ev(7_200, S, EventKind::Fault { name: "drop-reply".into() }),
        ev(7_300, S, EventKind::Fault { name: "delay 5ms".into() }),
        ev(8_000, D, EventKind::Note { text: "destination saw a short read".into() }),
        ev(9_000, S, EventKind::RoundEnd { round: 1 }),
        ev(9_000, S, EventKind::RoundStart { round: 2 }),
        ev(10_500, S, EventKind::RoundEnd { round: 2 }),
        ev(10_500, S, EventKind::Switchover),
        change(10_500, S, "PRE_COPY", "STOP_COPY"),
        change(12_000, S, "STOP_COPY", "STOP"),
        change(12_500, D, "RESUMING", "RUNNING"),
        ev(12_600, D, EventKind::Fault { name: "corrupt-page".into() }),
    ];
    timeline.sort_by_key(|e| e.t_micros);
    let dirty = vec![
        DirtyRound {
            round: 0,
            page_count: 64,
            written: (0..64).collect(),
            reported: (0..64).collect(),
            stop_copy: false,
        },
        DirtyRound {
            round: 1,
            page_count: 64,
            written: vec![3, 4, 5, 40],
            reported: vec![3, 4, 5, 6, 7, 40],
            stop_copy: false,
        },
        DirtyRound { round: 2, page_count: 64, written: vec![10, 11, 50], reported: vec![10], stop_copy: false },
    ];
    let mut src = vec![0u8; 64];
    for (i, b) in src.iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut dst = src.clone();
    dst[20] = 0xff;
    dst[21] = 0xee;
    dst[63] = 0;
    let stats = MigrationStats {
        pre_copy: true,
        log_page_size: 4096,
        rounds: (0..3)
            .map(|r| RoundStats {
                round: r,
                device_bytes: 1000 * u64::from(r + 1),
                device_dirty_pages: 10,
                vcpu_dirty_pages: 20,
                pages_sent: 64 >> r,
                micros: 3000,
                remaining_estimate: 4096 * 10,
                device_pending: false,
                stream_bytes: 100_000,
            })
            .collect(),
        stop_copy_device_bytes: 512,
        stop_copy_pages: 3,
        switchover: "budget".into(),
        pending_at_switchover: false,
        cleanup_error: None,
        downtime_micros: 1_500,
        total_micros: 11_500,
        stream_bytes: 400_000,
        stop_copy_stream_bytes: 100_000,
        stop_copy_micros: 1_000,
    };
    RunReport {
        scenario: "dirty-loss".into(),
        seed: 42,
        file: PathBuf::from("scenarios/dirty loss.yaml"),
        concurrent: false,
        server_args: Vec::new(),
        findings: Vec::new(),
        outcome: Outcome::Failed { reason: "2 pages lost in round 2".into() },
        started: "2026-01-02T03:04:05Z".into(),
        duration_micros: 13_000,
        steps: vec![
            StepResult {
                index: 0,
                kind: "boot".into(),
                description: "start both servers".into(),
                ok: true,
                detail: None,
                micros: 900,
            },
            StepResult {
                index: 1,
                kind: "migrate".into(),
                description: "pre-copy with faults <drop & delay>".into(),
                ok: true,
                detail: Some("3 rounds".into()),
                micros: 11_000,
            },
            StepResult {
                index: 2,
                kind: "check".into(),
                description: "RAM equal".into(),
                ok: false,
                detail: Some("page 0x32000 differs".into()),
                micros: 100,
            },
        ],
        timeline,
        dirty,
        ram_diff: vec![
            PageDiff { addr: 0x32000, first_bytes_source: src.clone(), first_bytes_destination: dst },
            PageDiff { addr: 0x0b000, first_bytes_source: vec![1, 2, 3], first_bytes_destination: vec![1, 2] },
        ],
        device_diff: vec!["registers.status: source 0x1, destination 0x0".into()],
        stats: Some(stats),
        counts: Counts { messages: 812, over_reported: 2, lost: 2 },
    }
}

/// A minimal well-formedness check without an XML parser: every tag closes, in order.
fn assert_balanced(xml: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
        rest = &rest[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap().to_owned());
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(!rest.contains('>'), "stray '>' after the last tag");
}

#[test]
fn writes_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("recorded.jsonl");
    fs::write(&trace, "{\"dir\":\"c2s\",\"cmd\":\"VERSION\"}\n").unwrap();
    let report = sample();
    let dir = report_dir(&tmp.path().join("reports"), &report);
    assert!(dir.ends_with("dirty-loss-42"));
    let written = write_report(&dir, &report, Some(&trace)).unwrap();
    for f in ["summary.md", "report.json", "junit.xml", "trace.jsonl", "timeline.svg", "dirty-map.svg"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(written.trace.as_deref(), Some(dir.join("trace.jsonl").as_path()));
    assert_eq!(fs::read(dir.join("trace.jsonl")).unwrap(), fs::read(&trace).unwrap());
    assert!(trace.exists(), "the recorded trace is copied, not moved");

    // Again without a trace: the old one goes.
    let written = write_report(&dir, &report, None).unwrap();
    assert!(written.trace.is_none());
    assert!(!dir.join("trace.jsonl").exists());
}

#[test]
fn summary_has_what_a_person_needs() {
    let md = summary_markdown(&sample());
    assert!(md.contains("**FAILED**: 2 pages lost in round 2"));
    assert!(md.contains("cargo run -p harness --bin miglab -- scenario 'scenarios/dirty loss.yaml' --seed 42"));
    assert!(md.contains("| 2 | 3.0 ms |") || md.contains("| 2 | 3 ms |"), "{md}");
    assert!(md.contains("round 2: **2 pages lost** (written, not reported): 11, 50"));
    assert!(md.contains("round 1: 2 pages over-reported (reported, not written): 6, 7"));
    assert!(md.contains("### Page at 0x32000"));
    assert!(md.contains("registers.status: source 0x1, destination 0x0"));
    assert!(md.contains("| stop-copy | | 512 | | | 3 |"));
    assert!(md.contains("| stream MB/s |") && md.contains(" | 33 |\n"), "each round's stream throughput:\n{md}");
    assert!(md.contains("| pre-copy with faults &lt;drop & delay&gt; |"));
}

#[test]
fn report_json_round_trips() {
    let report = sample();
    let json = serde_json::to_string_pretty(&report).unwrap();
    let back: RunReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    assert!(json.contains(r#""status": "failed""#));
    assert!(json.contains(r#""state_change""#));

    let tmp = tempfile::tempdir().unwrap();
    write_report(tmp.path(), &report, None).unwrap();
    let back: RunReport = serde_json::from_slice(&fs::read(tmp.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(back, report);

    let passed = RunReport { outcome: Outcome::Passed, stats: None, ..report };
    let back: RunReport = serde_json::from_str(&serde_json::to_string(&passed).unwrap()).unwrap();
    assert_eq!(back, passed);
}

#[test]
fn junit_types_a_failed_step_by_its_worst_finding_and_counts_findings_by_severity() {
    let mut report = sample();
    let finding = |severity, kind: &str, step| Finding {
        severity,
        kind: kind.into(),
        side: "destination".into(),
        step,
        message: format!("{kind} seen"),
        specification: String::new(),
    };
    report.findings = vec![
        finding(Severity::Deviation, "other-errno", 2),
        finding(Severity::DataLoss, "data-loss", 2),
        finding(Severity::Deviation, "mig-data-read-padded", 1),
    ];
    let xml = junit_xml(&report).unwrap();
    assert_balanced(&xml);
    assert!(xml.contains(r#"type="data-loss""#), "{xml}");
    assert!(xml.contains(r#"name="findings.data-loss" value="1""#), "{xml}");
    assert!(xml.contains(r#"name="findings.deviation" value="2""#), "{xml}");
    assert!(xml.contains("data-loss data-loss (destination): data-loss seen"), "{xml}");
    assert_eq!(xml.matches("<system-err>").count(), 2, "{xml}");
}

#[test]
fn junit_has_one_case_per_step_and_the_failure() {
    let report = sample();
    let xml = junit_xml(&report).unwrap();
    assert!(xml.starts_with("<?xml"));
    assert_balanced(&xml);
    assert!(xml.contains(r#"<testsuite name="dirty-loss""#), "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), 3);
    assert_eq!(xml.matches("<failure ").count(), 1);
    assert!(xml.contains(r#"message="page 0x32000 differs""#));
    assert!(xml.contains("&lt;drop &amp; delay&gt;"));
    assert!(xml.contains(r#"name="seed" value="42""#));

    // A failure with no failed step shows as an extra "outcome" case.
    let mut r = sample();
    r.steps[2].ok = true;
    let xml = junit_xml(&r).unwrap();
    assert_balanced(&xml);
    assert_eq!(xml.matches("<testcase ").count(), 4);
    assert!(xml.contains(r#"message="2 pages lost in round 2""#));

    let passed = RunReport { outcome: Outcome::Passed, ..r };
    let xml = junit_xml(&passed).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 3);
    assert!(!xml.contains("<failure"));
}

#[test]
fn timeline_svg_shows_lanes_rounds_faults_and_switchover() {
    let svg = timeline_svg(&sample());
    assert!(svg.starts_with("<svg "));
    assert!(svg.contains("viewBox=\"0 0 1200 "));
    assert_balanced(&svg);
    for s in
        [">source</text>", ">destination</text>", ">drop-reply</text>", ">delay 5ms</text>", ">corrupt-page</text>"]
    {
        assert!(svg.contains(s), "{s} missing");
    }
    assert!(svg.contains(">switchover</text>"));
    assert!(svg.contains(">R0</text>") && svg.contains(">R1</text>") && svg.contains(">R2</text>"));
    assert!(svg.contains(">PRE_COPY</text>"));
    assert_eq!(svg.matches(r#"<g class="fault">"#).count(), 3);
    assert!(svg.contains(r##"fill="#dc2626""##));
    assert!(svg.contains(">time (ms)</text>"));
}

#[test]
fn timeline_labels_that_collide_go_to_separate_rows() {
    // "drop-reply" at 7.2 ms and "delay 5ms" at 7.3 ms are ~8 px apart: they must not share a row.
    let svg = timeline_svg(&sample());
    let y_of = |label: &str| {
        let end = svg.find(&format!(">{label}</text>")).unwrap();
        let start = svg[..end].rfind("<text ").unwrap();
        let tag = &svg[start..end];
        let y = tag.split("y=\"").nth(1).unwrap().split('"').next().unwrap();
        y.parse::<f64>().unwrap()
    };
    assert_ne!(y_of("drop-reply"), y_of("delay 5ms"));
}

#[test]
fn dirty_map_marks_lost_pages_red() {
    let svg = dirty_map_svg(&sample());
    assert!(svg.starts_with("<svg "));
    assert_balanced(&svg);
    assert!(svg.contains(r##"class="lost""##));
    let lost = svg.split(r#"<rect class="lost""#).nth(1).unwrap();
    assert!(lost.split('>').next().unwrap().contains(r##"fill="#dc2626""##));
    assert!(svg.contains(r#"class="over""#));
    assert!(svg.contains(r#"class="matched""#));
    assert!(svg.contains(">round 2</text>"));
    assert!(svg.contains("written, not reported (data loss)"));
    // 64 pages: one column each, and exactly pages 11 and 50 of round 2 are red.
    assert_eq!(svg.matches(r#"<rect class="lost""#).count(), 2);
    assert!(svg.contains("round 2, page 50: written, not reported (data loss)"));
}

#[test]
fn many_pages_are_bucketed_and_a_bucket_shows_its_worst_page() {
    let pages = 100_000u64;
    let written: Vec<u64> = (0..pages).step_by(7).collect();
    let mut reported = written.clone();
    reported.retain(|&p| p != 50_001); // 50_001 = 7 * 7143: written, lost
    reported.push(99_999); // over-reported
    let round = DirtyRound { round: 0, page_count: pages, written, reported, stop_copy: false };
    let b = buckets(std::slice::from_ref(&round));
    assert_eq!(b, Buckets { pages, per_column: pages.div_ceil(MAX_COLUMNS), columns: 479 });
    assert!(b.columns <= MAX_COLUMNS);
    let cells = row_cells(&round, b);
    assert_eq!(cells.len(), b.columns as usize);
    let lost_col = (50_001 / b.per_column) as usize;
    assert_eq!(cells[lost_col], Cell::Lost);
    assert_eq!(cells.iter().filter(|&&c| c == Cell::Lost).count(), 1);
    assert_eq!(cells[cells.len() - 1], Cell::Over);
    assert_eq!(cells[0], Cell::Matched);

    let report = RunReport { dirty: vec![round], ..sample() };
    let svg = dirty_map_svg(&report);
    assert_balanced(&svg);
    assert_eq!(svg.matches(r#"<rect class="lost""#).count(), 1);
    assert!(svg.matches("<rect").count() < 20, "runs of equal cells are drawn as one rect");
    assert!(svg.contains("209 per column"));
}

#[test]
fn same_report_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_report(&a, &sample(), None).unwrap();
    write_report(&b, &sample(), None).unwrap();
    for f in ["summary.md", "report.json", "junit.xml", "timeline.svg", "dirty-map.svg"] {
        assert_eq!(fs::read(a.join(f)).unwrap(), fs::read(b.join(f)).unwrap(), "{f} differs");
    }
}

#[test]
fn hex_diff_marks_the_differing_bytes() {
    let report = sample();
    let text = hex_diff(&report.ram_diff[0]);
    let lines: Vec<&str> = text.lines().collect();
    // Line 0x10 holds bytes 20 and 21 (offsets 4 and 5 of the line).
    let at = lines.iter().position(|l| l.starts_with("00000010")).unwrap();
    let data = lines[at];
    let marks = lines[at + 1];
    assert!(marks.trim_start().starts_with("^^"));
    let col = |n: usize| 10 + n * 3;
    assert_eq!(&data[col(4)..col(4) + 2], "14");
    assert_eq!(&marks[col(4)..col(4) + 2], "^^");
    assert_eq!(&marks[col(5)..col(5) + 2], "^^");
    assert_eq!(&marks[col(3)..col(3) + 2], "  ");
    let dst_col = |n: usize| 10 + 16 * 3 + 1 + n * 3;
    assert_eq!(&data[dst_col(4)..dst_col(4) + 2], "ff");
    assert_eq!(&marks[dst_col(4)..dst_col(4) + 2], "^^");
    assert_eq!(&data[dst_col(5)..dst_col(5) + 2], "ee");
    // Line 0x20 is the same on both sides and collapses.
    assert!(text.contains("*         (same on both sides)"));
    assert!(!text.contains("00000020"));
    assert!(text.contains("00000030"));
    assert!(text.ends_with("3 of 64 bytes differ"));

    // A byte missing on one side shows as "--" and is marked.
    let short = hex_diff(&report.ram_diff[1]);
    assert!(short.contains("01 02 03"));
    assert!(short.contains("01 02 --"));
    assert!(short.ends_with("1 of 3 bytes differ"));
}

#[test]
fn terminal_summary_is_short_and_ends_with_the_replay_command_on_failure() {
    let report = sample();
    let text = terminal_summary(&report);
    assert!(text.starts_with("FAIL  dirty-loss  seed 42  in 13 ms"));
    assert!(
        text.contains("3 rounds · 115 pages sent · downtime 1.5 ms · 2 lost · 2 over-reported · 812 messages"),
        "{text}"
    );
    assert!(text.contains("failed step 2 (check): page 0x32000 differs"));
    assert!(text.trim_end().ends_with(&replay_command(&report)));
    assert!(text.lines().count() <= 5);

    let passed = RunReport { outcome: Outcome::Passed, ..sample() };
    let text = terminal_summary(&passed);
    assert!(text.starts_with("PASS  dirty-loss  seed 42"));
    assert!(!text.contains("replay"));
    assert_eq!(
        replay_command(&RunReport { file: "scenarios/basic.yaml".into(), ..passed }),
        "cargo run -p harness --bin miglab -- scenario scenarios/basic.yaml --seed 42"
    );
}

#[test]
fn report_dir_is_a_safe_name() {
    let mut r = sample();
    r.scenario = "../odd name/x".into();
    let dir = report_dir(std::path::Path::new("reports"), &r);
    assert_eq!(dir, PathBuf::from("reports/_odd_name_x-42"));
}

#[test]
fn empty_report_renders() {
    let r = RunReport {
        scenario: "empty".into(),
        seed: 0,
        file: "e.yaml".into(),
        concurrent: false,
        server_args: Vec::new(),
        findings: Vec::new(),
        outcome: Outcome::Passed,
        started: String::new(),
        duration_micros: 0,
        steps: vec![],
        timeline: vec![],
        dirty: vec![],
        ram_diff: vec![],
        device_diff: vec![],
        stats: None,
        counts: Counts::default(),
    };
    for svg in [timeline_svg(&r), dirty_map_svg(&r)] {
        assert!(svg.starts_with("<svg "));
        assert_balanced(&svg);
    }
    assert_balanced(&junit_xml(&r).unwrap());
    assert!(summary_markdown(&r).contains("**PASSED**"));
}
