//! Small helpers for writing SVG by hand: escaping, stable number formatting, text-width estimates
//! and a greedy placement of labels in rows so that they do not overlap.

use std::fmt::Write as _;

/// The font of every text in the pictures.
pub(crate) const FONT: &str = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif";

/// Escapes text for an SVG text node or attribute value.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A coordinate with one decimal, without a trailing ".0": stable across runs and platforms.
pub(crate) fn num(x: f64) -> String {
    let x = if x.is_finite() { x } else { 0.0 };
    let mut s = format!("{x:.1}");
    if let Some(stripped) = s.strip_suffix(".0") {
        s = stripped.to_owned();
    }
    if s == "-0" { "0".to_owned() } else { s }
}

/// The width a text of `font_size` pixels roughly takes (a sans-serif averages ~0.6 em a char).
pub(crate) fn text_width(text: &str, font_size: f64) -> f64 {
    text.chars().count() as f64 * font_size * 0.62
}

/// Cuts `text` to at most `max` characters, ending with "…" when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// Microseconds as milliseconds, for axis labels: "0", "2.5", "120".
pub(crate) fn ms_label(micros: u64) -> String {
    let whole = micros / 1000;
    let frac = micros % 1000;
    if frac == 0 {
        format!("{whole}")
    } else {
        let f = format!("{frac:03}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving at most `max_ticks` ticks over `span`.
pub(crate) fn nice_step(span: u64, max_ticks: u64) -> u64 {
    let span = span.max(1);
    let mut pow = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = m * pow;
            if span / step < max_ticks {
                return step;
            }
        }
        pow = pow.saturating_mul(10);
    }
}

/// Places labels (each an anchor x and a width) in rows so that no two in a row overlap; returns
/// each label's row and whether it is drawn to the left of its anchor (when it would leave the
/// picture on the right), or `None` for a label that fits in none of the `max_rows` rows.
pub(crate) fn place_labels(labels: &[(f64, f64)], right_edge: f64, max_rows: usize) -> Vec<Option<(usize, bool)>> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| labels[a].0.total_cmp(&labels[b].0).then(a.cmp(&b)));
    let mut row_end: Vec<f64> = Vec::new();
    let mut out = vec![None; labels.len()];
    for i in order {
        let (x, w) = labels[i];
        let left = x + w + 4.0 > right_edge;
        let (start, end) = if left { (x - w - 4.0, x) } else { (x, x + w + 4.0) };
        let row = match row_end.iter().position(|&e| e + 6.0 <= start) {
            Some(r) => r,
            None if row_end.len() < max_rows => {
                row_end.push(f64::NEG_INFINITY);
                row_end.len() - 1
            }
            None => continue,
        };
        row_end[row] = end;
        out[i] = Some((row, left));
    }
    out
}

/// How many rows `place_labels` used.
pub(crate) fn rows_used(placed: &[Option<(usize, bool)>]) -> usize {
    placed.iter().flatten().map(|&(r, _)| r + 1).max().unwrap_or(0)
}

/// Appends one `<text>` element.
pub(crate) fn text(out: &mut String, x: f64, y: f64, size: f64, attrs: &str, content: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="{}" {attrs}>{}</text>"#,
        num(x),
        num(y),
        num(size),
        esc(content)
    );
}

/// The opening of an SVG document of the given size, with a white background.
pub(crate) fn open(out: &mut String, width: f64, height: f64, title: &str) {
    let (w, h) = (num(width), num(height));
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT}">"#
    );
    let _ = writeln!(out, "<title>{}</title>", esc(title));
    let _ = writeln!(out, r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>"##);
}

/// A horizontal axis from `left` to `left + width` at `y`: a line, a tick and a label every
/// `step` of `0..=span` (the value's position given by `pos`, its label by `label`), and the
/// axis `name` to the left.
#[allow(clippy::too_many_arguments)]
pub(crate) fn axis(
    out: &mut String,
    left: f64,
    width: f64,
    y: f64,
    span: u64,
    step: u64,
    pos: impl Fn(u64) -> f64,
    label: impl Fn(u64) -> String,
    name: (&str, f64),
) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        r##"<line x1="{}" y1="{ay}" x2="{}" y2="{ay}" stroke="#374151" stroke-width="1"/>"##,
        num(left),
        num(left + width),
        ay = num(y)
    );
    let mut v = 0;
    while v <= span {
        let px = pos(v);
        let _ = writeln!(
            out,
            r##"<line x1="{px}" y1="{}" x2="{px}" y2="{}" stroke="#374151" stroke-width="1"/>"##,
            num(y),
            num(y + 5.0),
            px = num(px)
        );
        text(out, px, y + 17.0, 10.0, r##"text-anchor="middle" fill="#374151""##, &label(v));
        v += step.max(1);
    }
    text(out, left - name.1, y + 17.0, 10.0, r##"text-anchor="end" fill="#374151""##, name.0);
}
