//! `dirty-map.svg`: one row per round, guest pages across. Each cell says whether its pages were
//! written and reported (green), reported without being written (over-reporting, amber), written
//! without being reported (data loss, red) or neither (light grey). With many pages, pages are
//! bucketed into at most [`MAX_COLUMNS`] columns and a column takes the colour of its worst page.

use std::fmt::Write as _;

use super::model::{DirtyRound, RunReport};
use super::svg::{axis, nice_step, num, open, text, text_width};

/// The most columns the map draws; more pages than this share columns.
pub const MAX_COLUMNS: u64 = 480;

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 90.0;
const PLOT: f64 = 960.0;
const ROW_H: f64 = 16.0;
const ROW_GAP: f64 = 4.0;
const LABEL_SIZE: f64 = 11.0;

/// What a cell shows, from best to worst (a bucket shows its worst page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cell {
    /// Neither written nor reported.
    Clean,
    /// Written and reported.
    Matched,
    /// Reported, not written.
    Over,
    /// Written, not reported.
    Lost,
}

impl Cell {
    fn colour(self) -> &'static str {
        match self {
            Cell::Clean => "#e5e7eb",
            Cell::Matched => "#16a34a",
            Cell::Over => "#f59e0b",
            Cell::Lost => "#dc2626",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Cell::Clean => "clean",
            Cell::Matched => "matched",
            Cell::Over => "over",
            Cell::Lost => "lost",
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            Cell::Clean => "clean",
            Cell::Matched => "written and reported",
            Cell::Over => "reported, not written (over-reporting)",
            Cell::Lost => "written, not reported (data loss)",
        }
    }
}

/// The map's geometry: how many pages, how many pages a column holds, how many columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Buckets {
    pub(crate) pages: u64,
    pub(crate) per_column: u64,
    pub(crate) columns: u64,
}

pub(crate) fn buckets(rounds: &[DirtyRound]) -> Buckets {
    let pages = rounds
        .iter()
        .map(|r| {
            let top = r.written.iter().chain(&r.reported).max().map_or(0, |&p| p.saturating_add(1));
            r.page_count.max(top)
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let per_column = pages.div_ceil(MAX_COLUMNS);
    Buckets { pages, per_column, columns: pages.div_ceil(per_column) }
}

/// The cells of one round's row.
pub(crate) fn row_cells(round: &DirtyRound, b: Buckets) -> Vec<Cell> {
    let mut cells = vec![Cell::Clean; b.columns as usize];
    let mut written = round.written.clone();
    written.sort_unstable();
    written.dedup();
    let mut reported = round.reported.clone();
    reported.sort_unstable();
    reported.dedup();
    let (mut i, mut j) = (0, 0);
    loop {
        let (page, cell) = match (written.get(i), reported.get(j)) {
            (None, None) => break,
            (Some(&w), Some(&r)) if w == r => {
                i += 1;
                j += 1;
                (w, Cell::Matched)
            }
            (Some(&w), Some(&r)) if w < r => {
                i += 1;
                (w, Cell::Lost)
            }
            (Some(&w), None) => {
                i += 1;
                (w, Cell::Lost)
            }
            (_, Some(&r)) => {
                j += 1;
                (r, Cell::Over)
            }
        };
        let col = (page / b.per_column) as usize;
        if let Some(c) = cells.get_mut(col) {
            *c = (*c).max(cell);
        }
    }
    cells
}

/// Renders `dirty-map.svg`.
pub fn dirty_map_svg(report: &RunReport) -> String {
    let b = buckets(&report.dirty);
    let cw = PLOT / b.columns as f64;
    let mut body = String::new();
    let top = 62.0;
    let mut y = top;

    if report.dirty.is_empty() {
        text(&mut body, LEFT, y + 12.0, 12.0, r##"fill="#6b7280""##, "no dirty-page data recorded");
        y += ROW_H + ROW_GAP;
    }
    for round in &report.dirty {
        let cells = row_cells(round, b);
        text(&mut body, LEFT - 8.0, y + 12.0, LABEL_SIZE, r##"text-anchor="end" fill="#111827""##, &round.label());
        let _ = writeln!(
            body,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>"#,
            num(LEFT),
            num(y),
            num(PLOT),
            num(ROW_H),
            Cell::Clean.colour()
        );
        let separate = cw >= 6.0;
        let mut c = 0;
        while c < cells.len() {
            let cell = cells[c];
            let mut e = c + 1;
            if !separate {
                while e < cells.len() && cells[e] == cell {
                    e += 1;
                }
            }
            if cell != Cell::Clean || separate {
                let first = c as u64 * b.per_column;
                let last = (e as u64 * b.per_column).min(b.pages) - 1;
                let pages = if first == last { format!("page {first}") } else { format!("pages {first}–{last}") };
                let (x0, w) = if separate {
                    (LEFT + c as f64 * cw + 0.5, cw - 1.0)
                } else {
                    (LEFT + c as f64 * cw, (e - c) as f64 * cw)
                };
                let _ = writeln!(
                    body,
                    r#"<rect class="{}" x="{}" y="{}" width="{}" height="{}" fill="{}"><title>round {}, {pages}: {}</title></rect>"#,
                    cell.class(),
                    num(x0),
                    num(y),
                    num(w),
                    num(ROW_H),
                    cell.colour(),
                    round.round,
                    cell.meaning()
                );
            }
            c = e;
        }
        let (lost, over) = (round.lost().len(), round.over_reported().len());
        let mut rx = LEFT + PLOT + 10.0;
        let lost_text = format!("lost {lost}");
        let lost_attrs = if lost > 0 { r##"fill="#dc2626" font-weight="bold""## } else { r##"fill="#6b7280""## };
        text(&mut body, rx, y + 12.0, LABEL_SIZE, lost_attrs, &lost_text);
        rx += text_width(&lost_text, LABEL_SIZE) + 8.0;
        let over_attrs = if over > 0 { r##"fill="#b45309""## } else { r##"fill="#6b7280""## };
        text(&mut body, rx, y + 12.0, LABEL_SIZE, over_attrs, &format!("over {over}"));
        y += ROW_H + ROW_GAP;
    }

    // Page axis.
    let axis_y = y + 2.0;
    let pages = b.pages;
    let pos = |p: u64| LEFT + p as f64 * PLOT / pages as f64;
    axis(&mut body, LEFT, PLOT, axis_y, pages, nice_step(pages, 8), pos, |p| p.to_string(), ("guest page", 8.0));

    // Legend.
    let mut lx = LEFT;
    let ly = axis_y + 42.0;
    for cell in [Cell::Matched, Cell::Over, Cell::Lost, Cell::Clean] {
        let _ = writeln!(
            body,
            r#"<rect x="{}" y="{}" width="14" height="12" fill="{}"/>"#,
            num(lx),
            num(ly - 10.0),
            cell.colour()
        );
        text(&mut body, lx + 18.0, ly, LABEL_SIZE, r##"fill="#374151""##, cell.meaning());
        lx += 18.0 + text_width(cell.meaning(), LABEL_SIZE) + 20.0;
    }
    let height = ly + 14.0;

    let mut out = String::new();
    let title = format!("{} · seed {} · dirty pages: truth against reported", report.scenario, report.seed);
    open(&mut out, WIDTH, height, &title);
    text(&mut out, LEFT, 24.0, 15.0, r##"font-weight="bold" fill="#111827""##, &title);
    let (lost, over) = report.dirty_totals();
    let sub = if b.per_column > 1 {
        format!(
            "{} pages, {} per column (a column shows its worst page) · {lost} lost · {over} over-reported",
            b.pages, b.per_column
        )
    } else {
        format!("{} pages, one column each · {lost} lost · {over} over-reported", b.pages)
    };
    text(&mut out, LEFT, 42.0, LABEL_SIZE, r##"fill="#6b7280""##, &sub);
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}
