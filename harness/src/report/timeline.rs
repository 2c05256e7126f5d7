//! `timeline.svg`: both devices' migration states over time in two lanes, with the pre-copy rounds
//! as a strip of numbered bands above them, faults as red markers with their names, notes as grey
//! dots, and the switchover as a dark line through both lanes. Time runs left to right in ms.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::model::{EventKind, RunReport, Side};
use super::svg::{axis, esc, ms_label, nice_step, num, open, place_labels, rows_used, text, text_width, truncate};

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 40.0;
const PLOT: f64 = WIDTH - LEFT - RIGHT;
const ROW: f64 = 14.0;
const LABEL_SIZE: f64 = 11.0;
const BAR: f64 = 30.0;
const MAX_LABEL_ROWS: usize = 6;
const FAULT_RED: &str = "#dc2626";
const NOTE_GREY: &str = "#6b7280";
/// A white outline behind a label, so that it stays readable where it crosses a line.
const HALO: &str = r##"paint-order="stroke" stroke="#ffffff" stroke-width="3" stroke-linejoin="round""##;

/// The fill of a state's segment: fixed for the vfio-user states, a stable pick for any other.
pub(crate) fn state_colour(state: &str) -> &'static str {
    match state.to_ascii_uppercase().as_str() {
        "RUNNING" => "#86efac",
        "RUNNING_P2P" => "#5eead4",
        "PRE_COPY" => "#93c5fd",
        "PRE_COPY_P2P" => "#a5b4fc",
        "STOP_COPY" => "#fdba74",
        "STOP" => "#d1d5db",
        "RESUMING" => "#c4b5fd",
        "ERROR" => "#fca5a5",
        other => {
            const PALETTE: [&str; 6] = ["#fde68a", "#f9a8d4", "#bef264", "#67e8f9", "#fcd34d", "#d8b4fe"];
            // FNV-1a: stable across runs and platforms.
            let h =
                other.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            PALETTE[(h % PALETTE.len() as u64) as usize]
        }
    }
}

struct Segment {
    from: u64,
    to: u64,
    state: String,
}

struct Marker {
    t: u64,
    text: String,
    fault: bool,
}

/// What the picture shows, gathered from the events.
struct Gathered {
    end: u64,
    lanes: [(Side, Vec<Segment>, Vec<Marker>); 2],
    rounds: Vec<(u32, u64, u64)>,
    switchovers: Vec<u64>,
    states: Vec<String>,
}

fn gather(report: &RunReport) -> Gathered {
    let end = report.timeline.iter().map(|e| e.t_micros).max().unwrap_or(0).max(report.duration_micros).max(1);
    let mut events: Vec<_> = report.timeline.iter().enumerate().collect();
    // Stable: by time, then as given.
    events.sort_by_key(|&(i, e)| (e.t_micros, i));

    let mut states: Vec<String> = Vec::new();
    let lanes = [Side::Source, Side::Destination].map(|side| {
        let mut segments: Vec<Segment> = Vec::new();
        let mut markers = Vec::new();
        let mut current: Option<(u64, String)> = None;
        for (_, e) in events.iter().filter(|(_, e)| e.side == side) {
            match &e.kind {
                EventKind::StateChange { from, to } => {
                    let (start, state) = current.take().unwrap_or((0, from.clone()));
                    if e.t_micros > start {
                        segments.push(Segment { from: start, to: e.t_micros, state });
                    }
                    current = Some((e.t_micros, to.clone()));
                }
                EventKind::Fault { name } => markers.push(Marker { t: e.t_micros, text: name.clone(), fault: true }),
                EventKind::Note { text } => markers.push(Marker { t: e.t_micros, text: text.clone(), fault: false }),
                _ => {}
            }
        }
        if let Some((start, state)) = current {
            segments.push(Segment { from: start, to: end.max(start + 1), state });
        }
        (side, segments, markers)
    });
    for (_, segments, _) in &lanes {
        for s in segments.iter() {
            if !states.contains(&s.state) {
                states.push(s.state.clone());
            }
        }
    }

    let mut round_map: BTreeMap<u32, (Option<u64>, Option<u64>)> = BTreeMap::new();
    let mut switchovers = Vec::new();
    for (_, e) in &events {
        match e.kind {
            EventKind::RoundStart { round } => {
                let s = &mut round_map.entry(round).or_default().0;
                *s = Some(s.map_or(e.t_micros, |s| s.min(e.t_micros)));
            }
            EventKind::RoundEnd { round } => {
                let s = &mut round_map.entry(round).or_default().1;
                *s = Some(s.map_or(e.t_micros, |s| s.max(e.t_micros)));
            }
            EventKind::Switchover if !switchovers.contains(&e.t_micros) => switchovers.push(e.t_micros),
            _ => {}
        }
    }
    let starts: Vec<(u32, Option<u64>, Option<u64>)> = round_map.into_iter().map(|(r, (s, e))| (r, s, e)).collect();
    let mut rounds = Vec::new();
    for (i, &(round, start, stop)) in starts.iter().enumerate() {
        let prev_end = i.checked_sub(1).and_then(|j| starts[j].2.or(starts[j].1)).unwrap_or(0);
        let start = start.unwrap_or(prev_end);
        let next_start = starts.get(i + 1).and_then(|n| n.1).unwrap_or(end);
        let stop = stop.unwrap_or(next_start).max(start);
        rounds.push((round, start, stop));
    }
    Gathered { end, lanes, rounds, switchovers, states }
}

/// Renders `timeline.svg`.
pub fn timeline_svg(report: &RunReport) -> String {
    let g = gather(report);
    let x = |t: u64| LEFT + t as f64 * PLOT / g.end as f64;
    let mut body = String::new();

    // Layout, top to bottom.
    let switch_labels: Vec<(f64, f64)> =
        g.switchovers.iter().map(|&t| (x(t) + 3.0, text_width("switchover", LABEL_SIZE))).collect();
    let switch_placed = place_labels(&switch_labels, WIDTH - 4.0, 2);
    let top_zone = 58.0;
    let strip_y = top_zone + rows_used(&switch_placed) as f64 * ROW + 6.0;
    let strip_h = 18.0;
    let mut y = strip_y + strip_h + 14.0;
    let mut lane_layout = Vec::new();
    for (_, _, markers) in &g.lanes {
        let labels: Vec<(f64, f64)> =
            markers.iter().map(|m| (x(m.t), text_width(&truncate(&m.text, 40), LABEL_SIZE))).collect();
        let placed = place_labels(&labels, WIDTH - 4.0, MAX_LABEL_ROWS);
        let bar_y = y;
        y += BAR + 6.0 + rows_used(&placed) as f64 * ROW + 12.0;
        lane_layout.push((bar_y, placed));
    }
    let axis_y = y;
    let lanes_bottom = axis_y - 4.0;

    // Round bands and boundary ticks.
    text(&mut body, LEFT - 10.0, strip_y + 13.0, LABEL_SIZE, r##"text-anchor="end" fill="#374151""##, "rounds");
    let _ = writeln!(
        body,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#f9fafb" stroke="#e5e7eb"/>"##,
        num(LEFT),
        num(strip_y),
        num(PLOT),
        num(strip_h)
    );
    for (i, &(round, start, stop)) in g.rounds.iter().enumerate() {
        let (x0, x1) = (x(start), x(stop).max(x(start) + 1.0));
        let fill = if i % 2 == 0 { "#bfdbfe" } else { "#dbeafe" };
        let _ = writeln!(
            body,
            r#"<rect class="round" x="{}" y="{}" width="{}" height="{}" fill="{fill}"><title>round {round}: {}–{} ms</title></rect>"#,
            num(x0),
            num(strip_y),
            num(x1 - x0),
            num(strip_h),
            ms_label(start),
            ms_label(stop)
        );
        let label = format!("R{round}");
        if text_width(&label, 10.0) + 4.0 <= x1 - x0 {
            text(&mut body, (x0 + x1) / 2.0, strip_y + 13.0, 10.0, r##"text-anchor="middle" fill="#1e3a8a""##, &label);
        }
        for bx in [x0, x1] {
            let _ = writeln!(
                body,
                r##"<line x1="{bx}" y1="{}" x2="{bx}" y2="{}" stroke="#1e3a8a" stroke-width="1"/>"##,
                num(strip_y - 3.0),
                num(strip_y + strip_h + 3.0),
                bx = num(bx)
            );
            let _ = writeln!(
                body,
                r##"<line x1="{bx}" y1="{}" x2="{bx}" y2="{}" stroke="#93c5fd" stroke-width="1" stroke-dasharray="3 3"/>"##,
                num(strip_y + strip_h + 3.0),
                num(lanes_bottom),
                bx = num(bx)
            );
        }
    }

    // Lanes; their markers go on top of everything else.
    let mut marks = String::new();
    for ((side, segments, markers), (bar_y, placed)) in g.lanes.iter().zip(&lane_layout) {
        let bar_y = *bar_y;
        text(
            &mut body,
            LEFT - 10.0,
            bar_y + BAR / 2.0 + 5.0,
            13.0,
            r##"text-anchor="end" font-weight="bold" fill="#111827""##,
            side.name(),
        );
        let _ = writeln!(
            body,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#f3f4f6" stroke="#d1d5db"/>"##,
            num(LEFT),
            num(bar_y),
            num(PLOT),
            num(BAR)
        );
        if segments.is_empty() {
            text(
                &mut body,
                LEFT + 8.0,
                bar_y + BAR / 2.0 + 4.0,
                LABEL_SIZE,
                r##"fill="#6b7280""##,
                "no state changes recorded",
            );
        }
        for s in segments {
            let (x0, x1) = (x(s.from), x(s.to).max(x(s.from) + 1.5));
            let _ = writeln!(
                body,
                r##"<rect class="state" x="{}" y="{}" width="{}" height="{}" fill="{}" stroke="#ffffff" stroke-width="0.5"><title>{}: {} ({}–{} ms)</title></rect>"##,
                num(x0),
                num(bar_y),
                num(x1 - x0),
                num(BAR),
                state_colour(&s.state),
                side.name(),
                esc(&s.state),
                ms_label(s.from),
                ms_label(s.to)
            );
            if text_width(&s.state, LABEL_SIZE) + 6.0 <= x1 - x0 {
                text(
                    &mut body,
                    (x0 + x1) / 2.0,
                    bar_y + BAR / 2.0 + 4.0,
                    LABEL_SIZE,
                    r##"text-anchor="middle" fill="#111827""##,
                    &s.state,
                );
            }
        }
        let hidden = placed.iter().filter(|p| p.is_none()).count();
        if hidden > 0 {
            let note = format!("+{hidden} unlabelled");
            text(&mut body, LEFT - 10.0, bar_y + BAR + 20.0, 10.0, r##"text-anchor="end" fill="#6b7280""##, &note);
        }
        for (m, place) in markers.iter().zip(placed) {
            let mx = x(m.t);
            let colour = if m.fault { FAULT_RED } else { NOTE_GREY };
            let what = if m.fault { "fault" } else { "note" };
            let _ = writeln!(
                marks,
                r#"<g class="{what}"><title>{} {what} at {} ms: {}</title>"#,
                side.name(),
                ms_label(m.t),
                esc(&m.text)
            );
            if m.fault {
                let _ = writeln!(
                    marks,
                    r#"<line x1="{mx}" y1="{}" x2="{mx}" y2="{}" stroke="{colour}" stroke-width="2"/>"#,
                    num(bar_y),
                    num(bar_y + BAR),
                    mx = num(mx)
                );
                let _ = writeln!(
                    marks,
                    r#"<polygon points="{},{} {},{} {},{}" fill="{colour}"/>"#,
                    num(mx - 6.0),
                    num(bar_y - 9.0),
                    num(mx + 6.0),
                    num(bar_y - 9.0),
                    num(mx),
                    num(bar_y + 1.0)
                );
            } else {
                let _ = writeln!(
                    marks,
                    r##"<circle cx="{}" cy="{}" r="3.5" fill="{colour}" stroke="#ffffff" stroke-width="1"/>"##,
                    num(mx),
                    num(bar_y + BAR)
                );
            }
            let Some((row, left)) = *place else {
                marks.push_str("</g>\n");
                continue;
            };
            let label_y = bar_y + BAR + 6.0 + (row as f64 + 1.0) * ROW - 3.0;
            let _ = writeln!(
                marks,
                r#"<line x1="{mx}" y1="{}" x2="{mx}" y2="{}" stroke="{colour}" stroke-width="1"/>"#,
                num(bar_y + BAR),
                num(label_y - 9.0),
                mx = num(mx)
            );
            let (lx, anchor) = if left { (mx - 3.0, "end") } else { (mx + 3.0, "start") };
            let weight = if m.fault { r#" font-weight="bold""# } else { "" };
            text(
                &mut marks,
                lx,
                label_y,
                LABEL_SIZE,
                &format!(r#"text-anchor="{anchor}" fill="{colour}"{weight} {HALO}"#),
                &truncate(&m.text, 40),
            );
            marks.push_str("</g>\n");
        }
    }

    // Switchover lines, over the lanes.
    for (&t, place) in g.switchovers.iter().zip(&switch_placed) {
        let sx = x(t);
        let ly = top_zone + (place.map_or(0, |p| p.0) as f64 + 1.0) * ROW - 3.0;
        let _ = writeln!(body, r#"<g class="switchover"><title>switchover at {} ms</title>"#, ms_label(t));
        let _ = writeln!(
            body,
            r##"<line x1="{sx}" y1="{}" x2="{sx}" y2="{}" stroke="#111827" stroke-width="2"/>"##,
            num(ly + 3.0),
            num(lanes_bottom),
            sx = num(sx)
        );
        if let Some((_, left)) = *place {
            let (lx, anchor) = if left { (sx - 3.0, "end") } else { (sx + 3.0, "start") };
            text(
                &mut body,
                lx,
                ly,
                LABEL_SIZE,
                &format!(r##"text-anchor="{anchor}" fill="#111827" font-weight="bold" {HALO}"##),
                "switchover",
            );
        }
        body.push_str("</g>\n");
    }

    body.push_str(&marks);

    // Time axis.
    axis(&mut body, LEFT, PLOT, axis_y, g.end, nice_step(g.end, 10), x, ms_label, ("time (ms)", 10.0));

    // Legend.
    let mut lx = LEFT;
    let mut ly = axis_y + 40.0;
    let mut item = |body: &mut String, swatch: String, label: &str| {
        let w = 18.0 + text_width(label, LABEL_SIZE) + 18.0;
        if lx + w > WIDTH - RIGHT {
            lx = LEFT;
            ly += 18.0;
        }
        body.push_str(&swatch.replace("{X}", &num(lx)).replace("{Y}", &num(ly - 10.0)));
        text(body, lx + 18.0, ly, LABEL_SIZE, r##"fill="#374151""##, label);
        lx += w;
    };
    for s in &g.states {
        let sw = format!(r#"<rect x="{{X}}" y="{{Y}}" width="14" height="12" fill="{}"/>"#, state_colour(s)) + "\n";
        item(&mut body, sw, s);
    }
    item(
        &mut body,
        r##"<rect x="{X}" y="{Y}" width="14" height="12" fill="#bfdbfe"/>"##.to_owned() + "\n",
        "pre-copy round",
    );
    let fault =
        format!(r#"<g transform="translate({{X}} {{Y}})"><polygon points="1,0 13,0 7,12" fill="{FAULT_RED}"/></g>"#);
    item(&mut body, fault + "\n", "fault");
    let note = format!(r#"<g transform="translate({{X}} {{Y}})"><circle cx="7" cy="6" r="4" fill="{NOTE_GREY}"/></g>"#);
    item(&mut body, note + "\n", "note");
    let switch = r##"<g transform="translate({X} {Y})"><rect x="6" y="0" width="2" height="12" fill="#111827"/></g>"##;
    item(&mut body, switch.to_owned() + "\n", "switchover");
    let height = ly + 14.0;

    let mut out = String::new();
    let title = format!("{} · seed {} · timeline", report.scenario, report.seed);
    open(&mut out, WIDTH, height, &title);
    text(&mut out, LEFT, 24.0, 15.0, r##"font-weight="bold" fill="#111827""##, &title);
    let outcome = if report.passed() { "passed" } else { "FAILED" };
    let sub = format!(
        "{} · started {} · {} ms · {} rounds · {}",
        report.file.display(),
        report.started,
        ms_label(report.duration_micros),
        g.rounds.len(),
        outcome
    );
    text(&mut out, LEFT, 42.0, LABEL_SIZE, r##"fill="#6b7280""##, &sub);
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}
