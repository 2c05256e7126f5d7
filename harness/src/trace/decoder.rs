//! The decoder's walk over a trace: per-session bookkeeping (requests waiting for their
//! replies, the migration state), the current step, filters, and the text of each line.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use vfu_server::wire::{FLAG_ERROR, FLAG_NO_REPLY, FLAGS_TYPE_MASK, HEADER_SIZE, MigState, TYPE_COMMAND, TYPE_REPLY};

use super::line::{self, Dir, Event, Line, Message};
use super::names;
use super::payload::{self, Effect};
use super::{ChangeCause, DecodeOptions, DecodeSummary, DecodedMessage, MalformedLine, StateChange};

/// Width the session column is padded to (`destination`).
const SESSION_WIDTH: usize = 11;
/// Longest text taken from a line into a message about it.
const CLIP: usize = 160;

/// A request whose reply has not been seen yet, and what its reply will mean.
#[derive(Debug, Clone, Copy)]
struct Pending {
    cmd: u16,
    effect: Effect,
}

/// What the decoder knows of one session.
#[derive(Debug)]
struct Session {
    /// The device's migration state; None once a failed SET left it unknown.
    state: Option<u32>,
    /// Requests awaiting replies, by the direction they travelled and their msg_id.
    pending: HashMap<(Dir, u16), Pending>,
}

impl Default for Session {
    fn default() -> Self {
        // A device is RUNNING when a client first connects.
        Self { state: Some(MigState::Running as u32), pending: HashMap::new() }
    }
}

/// Decodes lines one at a time.
#[derive(Debug)]
pub(super) struct Decoder {
    options: DecodeOptions,
    summary: DecodeSummary,
    sessions: HashMap<String, Session>,
    /// The current step: its index and kind.
    step: Option<(usize, Option<String>)>,
    /// The message of the last line, if it held one.
    last: Option<DecodedMessage>,
}

impl Decoder {
    pub(super) fn new(options: DecodeOptions) -> Self {
        Self { options, summary: DecodeSummary::default(), sessions: HashMap::new(), step: None, last: None }
    }

    /// What was decoded so far.
    pub(super) fn summary(&self) -> &DecodeSummary {
        &self.summary
    }

    /// What was decoded.
    pub(super) fn finish(self) -> DecodeSummary {
        self.summary
    }

    /// The message of the line decoded last, if it held one (taken).
    pub(super) fn take_message(&mut self) -> Option<DecodedMessage> {
        self.last.take()
    }

    /// Decodes line `number` (from 1), appending what it shows to `out`.
    pub(super) fn line(&mut self, number: usize, raw: &[u8], out: &mut String) {
        self.last = None;
        self.summary.lines = number;
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match std::str::from_utf8(raw) {
            Err(e) => self.malformed(number, format!("not UTF-8 (byte {})", e.valid_up_to()), out),
            Ok(text) => match line::parse(text) {
                Ok(Line::Blank) => {}
                Ok(Line::Message(m)) => self.message(number, m, out),
                Ok(Line::Event(e)) => self.event(e, out),
                Err(why) => self.malformed(number, why, out),
            },
        }
    }

    fn malformed(&mut self, line: usize, why: String, out: &mut String) {
        let why = clip(&why, CLIP).into_owned();
        let _ = writeln!(out, "malformed line {line}: {why}");
        self.summary.malformed.push(MalformedLine { line, why });
    }

    /// Whether the step filter lets through something of step `explicit` (None: the current step).
    fn step_visible(&self, explicit: Option<usize>) -> bool {
        self.options.step.is_none_or(|want| explicit.or(self.step.as_ref().map(|s| s.0)) == Some(want))
    }

    fn session_visible(&self, session: Option<&str>) -> bool {
        match (&self.options.session, session) {
            (Some(want), Some(s)) => want == s,
            _ => true,
        }
    }

    fn message(&mut self, number: usize, m: Message, out: &mut String) {
        let max = self.options.payload_bytes;
        let h = m.header;
        let cmd = h.command();
        let name: Cow<'static, str> = cmd.map_or_else(|| format!("UNKNOWN({})", h.cmd).into(), |c| c.name().into());
        let reply = h.msg_type() == TYPE_REPLY;
        let session = self.sessions.entry(m.session.clone()).or_default();
        let mut change = None;
        let cut = usize::try_from(m.payload_len.saturating_sub(m.payload.len() as u64)).unwrap_or(usize::MAX);
        let mut fields = Vec::new();
        let (mut body, too_short) = if !reply {
            let d = payload::request(cmd, &m.payload, cut, max);
            if d.effect != Effect::None && !h.no_reply() {
                session.pending.insert((m.dir, h.msg_id), Pending { cmd: h.cmd, effect: d.effect });
            }
            fields = d.fields;
            (format!("{name}{}", d.text), d.too_short)
        } else {
            let pending = session.pending.remove(&(m.dir.opposite(), h.msg_id)).filter(|p| p.cmd == h.cmd);
            let asked = pending.and_then(|p| if let Effect::AskRead(n) = p.effect { Some(n) } else { None });
            if h.is_error() {
                if matches!(pending, Some(Pending { effect: Effect::AskState(_), .. })) {
                    // A refused walk may have stopped anywhere on its way.
                    session.state = None;
                }
                let mut body = format!("{name} reply ERROR {}", names::errno(h.error_no));
                if m.payload_len != 0 {
                    let _ = write!(body, " (with {} payload bytes)", m.payload_len);
                }
                (body, false)
            } else {
                let d = payload::reply(cmd, &m.payload, cut, asked, max);
                fields = d.fields;
                let learnt = match (d.effect, pending.map(|p| p.effect)) {
                    (Effect::SawState(n), _) => Some((n, ChangeCause::ReadBack)),
                    (_, Some(Effect::AskState(n))) => Some((n, ChangeCause::Set)),
                    (_, Some(Effect::AskReset)) => Some((MigState::Running as u32, ChangeCause::Reset)),
                    _ => None,
                };
                if let Some((to, cause)) = learnt {
                    if session.state != Some(to) {
                        change = Some(StateChange {
                            line: number,
                            session: m.session.clone(),
                            from: session.state,
                            to,
                            cause,
                        });
                    }
                    session.state = Some(to);
                }
                (format!("{name} reply ok{}", d.text), d.too_short)
            }
        };
        header_notes(&m, &name, &mut body);
        let visible = self.step_visible(None) && self.session_visible(Some(&m.session));
        let (msg_id, dir, session) = (h.msg_id, m.dir, clip(&m.session, 40).into_owned());
        self.last = Some(DecodedMessage { line: number, record: m, text: body.clone(), fields });
        if !visible {
            return;
        }
        let s = &mut self.summary;
        s.messages = s.messages.saturating_add(1);
        let counts = s.per_command.entry(h.cmd).or_default();
        if reply {
            counts.replies = counts.replies.saturating_add(1);
            if h.is_error() {
                counts.errors = counts.errors.saturating_add(1);
                s.error_replies = s.error_replies.saturating_add(1);
            }
        } else {
            counts.requests = counts.requests.saturating_add(1);
        }
        if too_short {
            s.too_short = s.too_short.saturating_add(1);
        }
        let _ = writeln!(out, "{}{session:<SESSION_WIDTH$} {} #{msg_id:<5} {body}", self.step_prefix(), dir.as_str());
        if let Some(c) = change {
            let _ =
                writeln!(out, "   state {} -> {}{}", names::maybe_state(c.from), names::state(c.to), c.cause.note());
            self.summary.state_changes.push(c);
        }
    }

    fn step_prefix(&self) -> String {
        match &self.step {
            Some((i, Some(kind))) => format!("[step {i} {}] ", clip(kind, 40)),
            Some((i, None)) => format!("[step {i}] "),
            None => String::new(),
        }
    }

    fn event(&mut self, e: Event, out: &mut String) {
        let visible = match &e {
            Event::Step { index, .. } => self.step_visible(Some(*index)),
            Event::Fault { step, .. } => self.step_visible(*step),
            Event::Note { .. } | Event::Other { .. } => self.step_visible(None) && self.session_visible(e.side()),
        };
        if visible {
            self.summary.events = self.summary.events.saturating_add(1);
        }
        match e {
            Event::Step { index, kind, at } => {
                if visible {
                    let kind = kind.as_deref().map(|k| format!(": {}", clip(k, 40))).unwrap_or_default();
                    let at = match at {
                        Some((l, 0)) => format!(" (line {l})"),
                        Some((l, c)) => format!(" (line {l}:{c})"),
                        None => String::new(),
                    };
                    let _ = writeln!(out, "── step {index}{kind}{at} ──");
                }
                self.step = Some((index, kind));
            }
            _ if !visible => {}
            Event::Fault { name, detail, .. } => {
                let detail = if detail.is_empty() { String::new() } else { format!(": {}", clip(&detail, CLIP)) };
                let _ = writeln!(out, "!! fault {}{detail}", clip(&name, 40));
            }
            Event::Note { side, text } => {
                let side = side.map(|s| format!("{}: ", clip(&s, 40))).unwrap_or_default();
                let _ = writeln!(out, "   note {side}{}", clip(&text, CLIP));
            }
            Event::Other { kind, fields } => {
                let _ = write!(out, "   event {}", clip(&kind, 40));
                for (k, v) in &fields {
                    let _ = write!(out, " {}={}", clip(k, 40), clip(v, 60));
                }
                out.push('\n');
            }
        }
    }
}

/// Notes on a header that does not say what it should: unexpected flags or errno, a size
/// that does not match the payload, fds, a `cmd_name` other than the command's.
fn header_notes(m: &Message, name: &str, body: &mut String) {
    let h = &m.header;
    let reply = h.msg_type() == TYPE_REPLY;
    if h.msg_type() != TYPE_COMMAND && !reply {
        let _ = write!(body, " type={}", h.msg_type());
    }
    if h.no_reply() {
        body.push_str(" no-reply");
    }
    let expected = FLAGS_TYPE_MASK | FLAG_NO_REPLY | if reply { FLAG_ERROR } else { 0 };
    if h.flags & !expected != 0 {
        let _ = write!(body, " flags={:#x}", h.flags);
    }
    if h.error_no != 0 && !h.is_error() {
        let _ = write!(body, " error_no={}", h.error_no);
    }
    if m.nfds != 0 {
        let _ = write!(body, " fds={}", m.nfds);
    }
    if u64::from(h.msg_size) != m.payload_len.saturating_add(HEADER_SIZE as u64) {
        let _ = write!(body, " (size {} but {} payload bytes)", h.msg_size, m.payload_len);
    }
    if m.is_cut() {
        let _ = write!(body, " (trace kept {} of {} payload bytes)", m.payload.len(), m.payload_len);
    }
    let recorded = if h.command().is_some() { name } else { "UNKNOWN" };
    if let Some(n) = m.cmd_name.as_deref().filter(|n| *n != recorded) {
        let _ = write!(body, " (cmd_name {:?})", clip(n, 40));
    }
}

/// `s` cut to `max` characters, with `…` when cut.
fn clip(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((at, _)) => Cow::Owned(format!("{}…", s.get(..at).unwrap_or_default())),
        None => Cow::Borrowed(s),
    }
}
