//! The texts for a person: `summary.md`, the few lines the terminal shows, and the command that
//! replays a run.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::hexdiff::hex_diff;
use super::model::{DirtyRound, Outcome, RunReport};
use super::svg::ms_label;

/// How many differing pages `summary.md` shows as hex diffs.
pub const MAX_PAGE_DIFFS: usize = 8;
/// How many page numbers `summary.md` lists per round and kind.
const MAX_PAGES_LISTED: usize = 32;

/// The command that replays the run: `cargo run -p harness --bin miglab -- scenario <file> --seed <seed>`.
pub fn replay_command(report: &RunReport) -> String {
    let servers: String = report.server_args.iter().map(|a| format!(" {}", shell_quote(a))).collect();
    format!(
        "cargo run -p harness --bin miglab -- scenario {} --seed {}{}{servers}",
        shell_quote(&report.file.display().to_string()),
        report.seed,
        if report.concurrent { " --concurrent" } else { "" }
    )
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// A duration for people: "850 µs", "12.5 ms", "3.204 s".
pub(crate) fn human_micros(micros: u64) -> String {
    if micros < 1000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{} ms", ms_label(micros))
    } else {
        format!("{}.{:03} s", micros / 1_000_000, (micros % 1_000_000) / 1000)
    }
}

/// The last migration's rounds as a terminal table: what the device and the vCPUs dirtied,
/// what was sent, and the dirty log's truth against its reports. Empty without a migration.
pub fn terminal_rounds(report: &RunReport) -> String {
    let Some(s) = &report.stats else { return String::new() };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>9} {:>13} {:>10} {:>10} {:>10} {:>8} {:>9} {:>5} {:>5}",
        "round", "device bytes", "dev dirty", "vcpu dirty", "pages sent", "written", "reported", "lost", "over"
    );
    let dirty = |d: Option<&DirtyRound>| match d {
        Some(d) => format!(
            "{:>8} {:>9} {:>5} {:>5}",
            d.written.len(),
            d.reported.len(),
            d.lost().len(),
            d.over_reported().len()
        ),
        None => format!("{:>8} {:>9} {:>5} {:>5}", "-", "-", "-", "-"),
    };
    for r in &s.rounds {
        let d = report.dirty.iter().find(|d| d.round == r.round && !d.stop_copy);
        let _ = writeln!(
            out,
            "{:>9} {:>13} {:>10} {:>10} {:>10} {}",
            r.round,
            r.device_bytes,
            r.device_dirty_pages,
            r.vcpu_dirty_pages,
            r.pages_sent,
            dirty(d)
        );
    }
    let d = report.dirty.iter().find(|d| d.stop_copy);
    let _ = writeln!(
        out,
        "{:>9} {:>13} {:>10} {:>10} {:>10} {}",
        "stop-copy",
        s.stop_copy_device_bytes,
        "",
        "",
        s.stop_copy_pages,
        dirty(d)
    );
    out
}

/// The few lines the terminal shows after a run; on failure they end with the replay command.
pub fn terminal_summary(report: &RunReport) -> String {
    let mut out = String::new();
    let verdict = if report.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "{verdict}  {}  seed {}  in {}",
        report.scenario,
        report.seed,
        human_micros(report.duration_micros)
    );
    if let Outcome::Failed { reason } = &report.outcome {
        let _ = writeln!(out, "      reason: {}", one_line(reason));
    }
    let rounds = report.stats.as_ref().map_or(report.dirty.len(), |s| s.rounds.len());
    let mut figures = vec![format!("{rounds} rounds")];
    if let Some(s) = &report.stats {
        figures.push(format!("{} pages sent", s.pages_sent()));
        figures.push(format!("downtime {}", human_micros(s.downtime_micros)));
    }
    figures.push(format!("{} lost", report.counts.lost));
    figures.push(format!("{} over-reported", report.counts.over_reported));
    figures.push(format!("{} messages", report.counts.messages));
    let _ = writeln!(out, "      {}", figures.join(" · "));
    const SHOWN: usize = 5;
    for f in report.findings.iter().take(SHOWN) {
        let _ = writeln!(
            out,
            "      {} {} ({}, step {}): {}",
            f.severity.name(),
            f.kind,
            f.side,
            f.step,
            one_line(&f.message)
        );
    }
    if report.findings.len() > SHOWN {
        let _ = writeln!(out, "      … {} more finding(s) in the report", report.findings.len() - SHOWN);
    }
    if !report.passed() {
        if let Some(step) = report.steps.iter().find(|s| !s.ok) {
            let detail = step.detail.as_deref().map(|d| format!(": {}", one_line(d))).unwrap_or_default();
            let _ = writeln!(out, "      failed step {} ({}){detail}", step.index, step.kind);
        }
        let _ = writeln!(out, "      replay: {}", replay_command(report));
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Escapes text for Markdown on one line (a table cell, the failure reason): no line breaks, no
/// `|`, and no `<`/`>` that a renderer would take for HTML.
fn cell(s: &str) -> String {
    one_line(s).replace('|', r"\|").replace('<', "&lt;").replace('>', "&gt;")
}

fn list_pages(pages: &[u64]) -> String {
    let mut s = pages.iter().take(MAX_PAGES_LISTED).map(u64::to_string).collect::<Vec<_>>().join(", ");
    if pages.len() > MAX_PAGES_LISTED {
        let _ = write!(s, ", … ({} more)", pages.len() - MAX_PAGES_LISTED);
    }
    s
}

/// Renders `summary.md`.
pub fn summary_markdown(report: &RunReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {} (seed {})\n", report.scenario, report.seed);
    match &report.outcome {
        Outcome::Passed => md.push_str("**PASSED**\n\n"),
        Outcome::Failed { reason } => {
            let _ = writeln!(md, "**FAILED**: {}\n", cell(reason));
        }
    }
    md.push_str("| | |\n|---|---|\n");
    let _ = writeln!(md, "| scenario file | `{}` |", cell(&report.file.display().to_string()));
    let _ = writeln!(md, "| started | {} |", cell(&report.started));
    let _ = writeln!(md, "| duration | {} |", human_micros(report.duration_micros));
    let _ = writeln!(md, "| messages | {} |", report.counts.messages);
    let _ = writeln!(md, "| lost pages (written, not reported) | {} |", report.counts.lost);
    let _ = writeln!(md, "| over-reported pages (reported, not written) | {} |", report.counts.over_reported);
    let _ = writeln!(md, "| differing RAM pages | {} |", report.ram_diff.len());
    let _ = writeln!(md, "| differing device fields | {} |", report.device_diff.len());
    if let Some(s) = &report.stats {
        let _ = writeln!(md, "| downtime | {} |", human_micros(s.downtime_micros));
        let unread = if s.pending_at_switchover { " (pre-copy data unread)" } else { "" };
        let _ = writeln!(md, "| switchover | {}{unread} |", cell(&s.switchover));
    }
    let _ = writeln!(md, "\nReplay:\n\n```sh\n{}\n```\n", replay_command(report));

    md.push_str("![timeline](timeline.svg)\n\n![dirty pages](dirty-map.svg)\n\n");

    if !report.findings.is_empty() {
        md.push_str(
            "## Findings\n\n| severity | kind | side | step | message | specification |\n|---|---|---|---:|---|---|\n",
        );
        for f in &report.findings {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                f.severity.name(),
                cell(&f.kind),
                f.side,
                f.step,
                cell(&f.message),
                cell(&f.specification)
            );
        }
        md.push('\n');
    }

    if !report.steps.is_empty() {
        md.push_str("## Steps\n\n| # | kind | description | result | time | detail |\n|---:|---|---|---|---:|---|\n");
        for s in &report.steps {
            let result = if s.ok { "ok" } else { "**FAILED**" };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {result} | {} | {} |",
                s.index,
                cell(&s.kind),
                cell(&s.description),
                human_micros(s.micros),
                cell(s.detail.as_deref().unwrap_or(""))
            );
        }
        md.push('\n');
    }

    rounds_section(&mut md, report);
    diffs_section(&mut md, report);

    md.push_str("## Files\n\n");
    md.push_str("- [report.json](report.json): everything above, as data\n");
    md.push_str("- [junit.xml](junit.xml): one test case per step\n");
    md.push_str("- [trace.jsonl](trace.jsonl): the vfio-user messages, one JSON object a line (when recorded)\n");
    md.push_str("- [timeline.svg](timeline.svg), [dirty-map.svg](dirty-map.svg)\n");
    md
}

fn rounds_section(md: &mut String, report: &RunReport) {
    let stats = report.stats.as_ref();
    let numbers: BTreeSet<u32> = stats
        .into_iter()
        .flat_map(|s| s.rounds.iter().map(|r| r.round))
        .chain(report.dirty.iter().filter(|d| !d.stop_copy).map(|d| d.round))
        .collect();
    if numbers.is_empty() && stats.is_none() {
        return;
    }
    md.push_str("## Rounds\n\n");
    md.push_str("| round | time | device bytes | device dirty | vCPU dirty | pages sent | remaining est. | written (truth) | reported | lost | over-reported | stream MB/s |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let dash = || "–".to_owned();
    for n in &numbers {
        let r = stats.and_then(|s| s.rounds.iter().find(|r| r.round == *n));
        let d = report.dirty.iter().find(|d| d.round == *n && !d.stop_copy);
        let lost = d.map(|d| d.lost().len());
        let lost_cell = match lost {
            Some(0) => "0".to_owned(),
            Some(l) => format!("**{l}**"),
            None => dash(),
        };
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {lost_cell} | {} | {} |",
            r.map_or_else(dash, |r| human_micros(r.micros)),
            r.map_or_else(dash, |r| r.device_bytes.to_string()),
            r.map_or_else(dash, |r| r.device_dirty_pages.to_string()),
            r.map_or_else(dash, |r| r.vcpu_dirty_pages.to_string()),
            r.map_or_else(dash, |r| r.pages_sent.to_string()),
            r.map_or_else(dash, |r| r.remaining_estimate.to_string()),
            d.map_or_else(dash, |d| d.written.len().to_string()),
            d.map_or_else(dash, |d| d.reported.len().to_string()),
            d.map_or_else(dash, |d| d.over_reported().len().to_string()),
            r.map_or_else(dash, |r| format!("{:.0}", r.stream_mb_per_s())),
        );
    }
    if let Some(s) = stats {
        let d = report.dirty.iter().find(|d| d.stop_copy);
        let _ = writeln!(
            md,
            "| stop-copy | | {} | | | {} | | {} | {} | {} | {} | {:.0} |",
            s.stop_copy_device_bytes,
            s.stop_copy_pages,
            d.map_or_else(dash, |d| d.written.len().to_string()),
            d.map_or_else(dash, |d| d.reported.len().to_string()),
            d.map_or_else(dash, |d| d.lost().len().to_string()),
            d.map_or_else(dash, |d| d.over_reported().len().to_string()),
            s.stop_copy_stream_mb_per_s(),
        );
        let _ = writeln!(
            md,
            "\nSwitchover: {}; downtime {}; total {}; {} device bytes, {} pages, {} stream bytes; pre-copy {}; log page size {}.\n",
            cell(&s.switchover),
            human_micros(s.downtime_micros),
            human_micros(s.total_micros),
            s.device_bytes(),
            s.pages_sent(),
            s.stream_bytes,
            if s.pre_copy { "on" } else { "off" },
            s.log_page_size
        );
    } else {
        md.push('\n');
    }
    for d in &report.dirty {
        let (lost, over) = (d.lost(), d.over_reported());
        if !lost.is_empty() {
            let _ = writeln!(
                md,
                "- {}: **{} pages lost** (written, not reported): {}",
                d.label(),
                lost.len(),
                list_pages(&lost)
            );
        }
        if !over.is_empty() {
            let _ = writeln!(
                md,
                "- {}: {} pages over-reported (reported, not written): {}",
                d.label(),
                over.len(),
                list_pages(&over)
            );
        }
    }
    md.push('\n');
}

fn diffs_section(md: &mut String, report: &RunReport) {
    if !report.ram_diff.is_empty() {
        let _ = writeln!(
            md,
            "## RAM differences\n\n{} pages differ between the source and the destination.\n",
            report.ram_diff.len()
        );
        for d in report.ram_diff.iter().take(MAX_PAGE_DIFFS) {
            let _ = writeln!(md, "### Page at {:#x}\n\n```text\n{}\n```\n", d.addr, hex_diff(d));
        }
        if report.ram_diff.len() > MAX_PAGE_DIFFS {
            let more: Vec<String> =
                report.ram_diff[MAX_PAGE_DIFFS..].iter().take(64).map(|d| format!("{:#x}", d.addr)).collect();
            let _ = writeln!(
                md,
                "{} more pages differ: {}{}\n",
                report.ram_diff.len() - MAX_PAGE_DIFFS,
                more.join(", "),
                if report.ram_diff.len() > MAX_PAGE_DIFFS + 64 { ", …" } else { "" }
            );
        }
    }
    if !report.device_diff.is_empty() {
        let _ = writeln!(md, "## Device state differences\n\n```text\n{}\n```\n", report.device_diff.join("\n"));
    }
}
