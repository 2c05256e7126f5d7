//! A side-by-side hex diff of a page's first bytes, 16 bytes a line, with a line of `^^` under
//! the bytes that differ. Runs of identical lines collapse into one `*` line, as `hexdump` does.

use std::fmt::Write as _;

use super::model::PageDiff;

const PER_LINE: usize = 16;

fn hex_cells(bytes: &[u8], start: usize) -> Vec<Option<u8>> {
    (start..start + PER_LINE).map(|i| bytes.get(i).copied()).collect()
}

fn render(cells: &[Option<u8>]) -> String {
    cells.iter().map(|c| c.map_or_else(|| "--".to_owned(), |b| format!("{b:02x}"))).collect::<Vec<_>>().join(" ")
}

/// The diff of one page as plain text (for a Markdown code block):
///
/// ```text
/// offset    source                                           destination
/// 00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  00 01 02 03 ff 05 06 07 08 09 0a 0b 0c 0d 0e 0f
///                                                                        ^^
/// ```
///
/// Bytes missing on one side show as `--` and count as different.
pub fn hex_diff(diff: &PageDiff) -> String {
    let (a, b) = (&diff.first_bytes_source, &diff.first_bytes_destination);
    let len = a.len().max(b.len());
    let width = PER_LINE * 3 - 1;
    let mut out = String::new();
    let _ = writeln!(out, "offset    {:<width$}  destination", "source");
    let mut skipping = false;
    for start in (0..len).step_by(PER_LINE) {
        let (ca, cb) = (hex_cells(a, start), hex_cells(b, start));
        let differs: Vec<bool> = ca.iter().zip(&cb).map(|(x, y)| x != y).collect();
        let any = differs.iter().any(|&d| d);
        let last = start + PER_LINE >= len;
        if !any && start != 0 && !last {
            if !skipping {
                out.push_str("*         (same on both sides)\n");
                skipping = true;
            }
            continue;
        }
        skipping = false;
        let _ = writeln!(out, "{start:08x}  {}  {}", render(&ca), render(&cb));
        if any {
            let marks: String = differs.iter().map(|&d| if d { "^^ " } else { "   " }).collect();
            let marks = marks.trim_end();
            let line = format!("{:10}{:<width$}  {marks}", "", marks);
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    let ndiff = (0..len).filter(|&i| a.get(i) != b.get(i)).count();
    let _ = write!(out, "{ndiff} of {len} bytes differ");
    out
}
