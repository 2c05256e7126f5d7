//! Two conversations side by side: `miglab trace A --diff B` — the same scenario against two
//! servers, a good run against a bad one, a tap's trace against the client's.
//!
//! Messages are lined up session by session (sessions of the same name together, the others
//! in the order they first appear) and, within a session, by order and by what they are: the
//! direction, request or reply, the command, and DEVICE_FEATURE's feature and operation.
//! msg_ids, timestamps and fd numbers (a trace has only their count) are not compared. Where
//! one side has messages the other has not (a retried read, an extra pre-copy round), the
//! alignment skips them, says so and goes on. Each pair is compared field by field as the
//! decoder reads them (the result, the errno, the size, the fds, every payload field) and by
//! its whole payload (by length and hash where a trace cut it); the first differences are
//! shown, the rest counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, Write};

use vfu_server::wire::{Command, HEADER_SIZE};

use super::names;
use super::record::Record;
use super::{DecodedMessage, TraceError, decode_messages};

/// How far ahead the alignment looks for the other side's next message of the same kind.
const LOOKAHEAD: usize = 64;

/// What a diff found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffSummary {
    /// Messages lined up with one of the other trace.
    pub paired: usize,
    /// Pairs that differ.
    pub differing: usize,
    /// Of them, replies.
    pub differing_replies: usize,
    /// Messages only the first trace has.
    pub only_a: usize,
    /// Messages only the second trace has.
    pub only_b: usize,
}

impl DiffSummary {
    /// Whether the conversations differ at all.
    pub fn differ(&self) -> bool {
        self.differing != 0 || self.only_a != 0 || self.only_b != 0
    }
}

/// What identifies a message for the alignment. A reply is known by its command only: an
/// error reply has no payload to tell its feature, and it follows its request anyway.
fn kind(r: &Record) -> (super::Dir, bool, u16, Option<u32>) {
    let feature = (r.header.cmd == Command::DeviceFeature as u16 && r.header.is_request())
        .then(|| r.payload.get(4..8).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes))
        .flatten();
    (r.dir, r.header.is_request(), r.header.cmd, feature)
}

/// The messages of each session, sessions in the order they first appear.
fn sessions(messages: Vec<DecodedMessage>) -> Vec<Session> {
    let mut out: Vec<Session> = Vec::new();
    for m in messages {
        match out.iter_mut().find(|(s, _)| *s == m.record.session) {
            Some((_, v)) => v.push(m),
            None => out.push((m.record.session.clone(), vec![m])),
        }
    }
    out
}

/// A session's name and messages.
type Session = (String, Vec<DecodedMessage>);

/// Sessions of A and B paired: same names first, the rest in order of appearance.
fn pair_sessions(a: Vec<Session>, b: Vec<Session>) -> Vec<(Option<Session>, Option<Session>)> {
    let mut b: Vec<Option<Session>> = b.into_iter().map(Some).collect();
    let mut pairs = Vec::new();
    let mut unmatched = Vec::new();
    for s in a {
        match b.iter().position(|x| x.as_ref().is_some_and(|(n, _)| *n == s.0)) {
            Some(i) => pairs.push((Some(s), b.get_mut(i).and_then(Option::take))),
            None => unmatched.push(s),
        }
    }
    let mut rest = b.into_iter().flatten();
    for s in unmatched {
        pairs.push((Some(s), rest.next()));
    }
    pairs.extend(rest.map(|s| (None, Some(s))));
    pairs
}

/// One line of a difference: a field and its two values.
fn row(out: &mut String, field: &str, a: &str, b: &str) {
    let _ = writeln!(out, "   {field:<12} {a}  |  {b}");
}

/// The differences of a pair, as rows (empty: the same).
fn compare(a: &Record, b: &Record, fa: &[(String, String)], fb: &[(String, String)]) -> String {
    let mut out = String::new();
    let (ha, hb) = (a.header, b.header);
    let result = |r: &Record| {
        if !r.header.is_request() && r.header.is_error() {
            format!("ERROR {}", names::errno(r.header.error_no))
        } else if r.header.is_request() {
            "request".into()
        } else {
            "ok".into()
        }
    };
    if (ha.flags, ha.error_no) != (hb.flags, hb.error_no) {
        row(&mut out, "result", &result(a), &result(b));
        if ha.flags != hb.flags {
            row(&mut out, "flags", &format!("{:#x}", ha.flags), &format!("{:#x}", hb.flags));
        }
    }
    if ha.msg_size != hb.msg_size {
        row(&mut out, "size", &ha.msg_size.to_string(), &hb.msg_size.to_string());
    }
    if a.nfds != b.nfds {
        row(&mut out, "fds", &a.nfds.to_string(), &b.nfds.to_string());
    }
    let keys = |f: &[(String, String)]| f.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    let mut fields_differ = false;
    if keys(fa) == keys(fb) {
        for ((k, va), (_, vb)) in fa.iter().zip(fb) {
            if va != vb {
                row(&mut out, if k.is_empty() { "·" } else { k }, va, vb);
                fields_differ = true;
            }
        }
    } else {
        let text = |f: &[(String, String)]| {
            f.iter()
                .map(|(k, v)| if k.is_empty() { v.clone() } else { format!("{k}={v}") })
                .collect::<Vec<_>>()
                .join(" ")
        };
        row(&mut out, "fields", &text(fa), &text(fb));
        fields_differ = true;
    }
    if !a.same_payload(b) && !fields_differ {
        let first = a.payload.iter().zip(&b.payload).position(|(x, y)| x != y);
        let what = match first {
            _ if a.payload_len != b.payload_len => format!("{} bytes  |  {} bytes", a.payload_len, b.payload_len),
            Some(at) => format!("first differs at byte {at} (after the {HEADER_SIZE}-byte header)"),
            None => "differs past the bytes the traces kept (by hash)".into(),
        };
        let _ = writeln!(out, "   {:<12} {what}", "payload");
    }
    out
}

/// Where the alignment goes next: `(skip in A, skip in B)` to the next pair of the same kind.
fn resync(a: &[DecodedMessage], b: &[DecodedMessage]) -> (usize, usize) {
    for k in 1..=LOOKAHEAD {
        if let (Some(x), Some(y)) = (a.get(k), b.first())
            && kind(&x.record) == kind(&y.record)
        {
            return (k, 0);
        }
        if let (Some(x), Some(y)) = (a.first(), b.get(k))
            && kind(&x.record) == kind(&y.record)
        {
            return (0, k);
        }
    }
    (1, 1)
}

/// Writes the differences of two traces to `out`, the first `limit` in full.
pub fn diff_traces(
    a: impl BufRead,
    b: impl BufRead,
    names: (&str, &str),
    limit: usize,
    out: &mut impl Write,
) -> Result<DiffSummary, TraceError> {
    let (ma, _) = decode_messages(a)?;
    let (mb, _) = decode_messages(b)?;
    let mut text = format!("diff: {} ({} messages) and {} ({} messages)\n", names.0, ma.len(), names.1, mb.len());
    let mut s = DiffSummary::default();
    let mut shown = 0usize;
    let mut show = |text: &mut String, block: String| {
        if shown < limit {
            text.push_str(&block);
        }
        shown += 1;
    };
    for (sa, sb) in pair_sessions(sessions(ma), sessions(mb)) {
        let (na, va) = sa.unwrap_or_default();
        let (nb, vb) = sb.unwrap_or_default();
        let label = if na == nb { na.clone() } else { format!("{} = {}", or_none(&na), or_none(&nb)) };
        // The request each reply answers, by direction and msg_id, for context.
        let mut asked: BTreeMap<(super::Dir, u16), String> = BTreeMap::new();
        let (mut i, mut j) = (0usize, 0usize);
        while i < va.len() || j < vb.len() {
            let (Some(x), Some(y)) = (va.get(i), vb.get(j)) else {
                let (side, rest, at) = match va.get(i..).filter(|r| !r.is_empty()) {
                    Some(r) => ("A", r, i),
                    None => ("B", vb.get(j..).unwrap_or_default(), j),
                };
                show(&mut text, only(&label, side, rest, at));
                if side == "A" {
                    s.only_a += rest.len()
                } else {
                    s.only_b += rest.len()
                }
                break;
            };
            if kind(&x.record) != kind(&y.record) {
                let (skip_a, skip_b) = resync(va.get(i..).unwrap_or_default(), vb.get(j..).unwrap_or_default());
                if skip_a > 0 {
                    show(&mut text, only(&label, "A", va.get(i..i + skip_a).unwrap_or_default(), i));
                    s.only_a += skip_a;
                }
                if skip_b > 0 {
                    show(&mut text, only(&label, "B", vb.get(j..j + skip_b).unwrap_or_default(), j));
                    s.only_b += skip_b;
                }
                (i, j) = (i + skip_a, j + skip_b);
                continue;
            }
            s.paired += 1;
            if x.record.header.is_request() {
                asked.insert((x.record.dir, x.record.header.msg_id), x.text.clone());
            }
            let rows = compare(&x.record, &y.record, &x.fields, &y.fields);
            if !rows.is_empty() {
                s.differing += 1;
                let reply = !x.record.header.is_request();
                s.differing_replies += usize::from(reply);
                let to = if reply {
                    asked
                        .get(&(x.record.dir.opposite(), x.record.header.msg_id))
                        .map(|r| format!(", to {r}"))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                let what = if reply { "reply" } else { "request" };
                let name = x.record.header.command().map_or("UNKNOWN", Command::name);
                let head = format!(
                    "── {label}, message {} (A line {}, B line {}): {} {name} {what}{to}\n",
                    i + 1,
                    x.line,
                    y.line,
                    x.record.dir.as_str()
                );
                show(&mut text, head + &rows);
            }
            (i, j) = (i + 1, j + 1);
        }
    }
    if shown > limit {
        let _ = writeln!(text, "… and {} more", shown - limit);
    }
    let _ = writeln!(
        text,
        "{} paired, {} differ ({} replies), {} only in A, {} only in B",
        s.paired, s.differing, s.differing_replies, s.only_a, s.only_b
    );
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(TraceError::Write)?;
    Ok(s)
}

fn or_none(name: &str) -> &str {
    if name.is_empty() { "(none)" } else { name }
}

/// A run of messages only one side has.
fn only(label: &str, side: &str, run: &[DecodedMessage], at: usize) -> String {
    let mut out = format!("── {label}: {} message(s) only in {side}, from message {}\n", run.len(), at + 1);
    for m in run.iter().take(3) {
        let _ = writeln!(
            out,
            "   {side} line {}: {} #{} {}",
            m.line,
            m.record.dir.as_str(),
            m.record.header.msg_id,
            m.text
        );
    }
    if run.len() > 3 {
        let _ = writeln!(out, "   …");
    }
    out
}

/// `miglab trace A --diff B`: opens both files.
pub fn diff_trace_files(
    a: &std::path::Path,
    b: &std::path::Path,
    limit: usize,
    out: &mut impl Write,
) -> Result<DiffSummary, TraceError> {
    let open = |p: &std::path::Path| {
        std::fs::File::open(p).map(io::BufReader::new).map_err(|source| TraceError::Open { path: p.to_owned(), source })
    };
    diff_traces(open(a)?, open(b)?, (&a.display().to_string(), &b.display().to_string()), limit, out)
}

#[cfg(test)]
mod tests;
