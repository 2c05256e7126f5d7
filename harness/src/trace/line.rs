//! One line of a trace: a message as mock-qemu's client records it, or an event of the
//! scenario runner. Parsing never panics; what a line lacks is said in the error.

use std::any::type_name;

use serde_json::{Map, Value};
use vfu_server::wire::Header;

pub(super) use super::record::{Dir, Record as Message};

/// An event line of the scenario runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    /// The messages after it belong to step `index`.
    Step {
        /// Step number.
        index: usize,
        /// The step's kind (`migrate`, `set-state`, ...).
        kind: Option<String>,
        /// Where the step is written in the scenario file.
        at: Option<(u64, u64)>,
    },
    /// A fault fired or was injected.
    Fault {
        /// The step it belongs to, when the line says.
        step: Option<usize>,
        /// Who injected it (`proxy`, `stream`, ...).
        name: String,
        /// What it did.
        detail: String,
    },
    /// Free text.
    Note {
        /// The side it concerns, when the line says.
        side: Option<String>,
        /// The text.
        text: String,
    },
    /// An event kind this decoder does not know: shown as its fields.
    Other {
        /// The `event` value.
        kind: String,
        /// The other fields, `key=value` (values as compact JSON).
        fields: Vec<(String, String)>,
    },
}

impl Event {
    /// The side (or session) the event concerns, when it names one.
    pub(super) fn side(&self) -> Option<&str> {
        match self {
            Event::Note { side, .. } => side.as_deref(),
            Event::Other { fields, .. } => {
                fields.iter().find(|(k, _)| k == "side" || k == "session").map(|(_, v)| v.trim_matches('"'))
            }
            Event::Step { .. } | Event::Fault { .. } => None,
        }
    }
}

/// What a line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Line {
    /// Only whitespace.
    Blank,
    /// A message.
    Message(Message),
    /// A runner event.
    Event(Event),
}

/// Parses one line; the error says why it is not a message or an event.
pub(super) fn parse(text: &str) -> Result<Line, String> {
    if text.trim().is_empty() {
        return Ok(Line::Blank);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(obj) = value else { return Err("not a JSON object".into()) };
    if obj.contains_key("event") { event(&obj).map(Line::Event) } else { message(&obj).map(Line::Message) }
}

fn message(obj: &Map<String, Value>) -> Result<Message, String> {
    let session = string(obj, "session")?;
    let dir = match string(obj, "dir")?.as_str() {
        "c2s" => Dir::C2s,
        "s2c" => Dir::S2c,
        other => return Err(format!("`dir` is {other:?}, not \"c2s\" or \"s2c\"")),
    };
    let header = Header {
        msg_id: uint(obj, "msg_id")?,
        cmd: uint(obj, "cmd")?,
        msg_size: uint(obj, "size")?,
        flags: uint(obj, "flags")?,
        error_no: uint(obj, "error_no")?,
    };
    let nfds = uint(obj, "nfds")?;
    let payload = hex(&string(obj, "payload")?)?;
    let cmd_name = opt_string(obj, "cmd_name")?;
    let kept = payload.len() as u64;
    let payload_len = opt_uint(obj, "payload_len")?.unwrap_or(kept);
    if payload_len < kept {
        return Err(format!("`payload_len` is {payload_len}, below the {kept} payload bytes the line has"));
    }
    let payload_xxh3 = match opt_string(obj, "payload_xxh3")? {
        Some(h) => Some(u64::from_str_radix(&h, 16).map_err(|_| format!("`payload_xxh3` is not hex: {h:?}"))?),
        None => None,
    };
    let t = opt_uint(obj, "t")?;
    Ok(Message { session, dir, header, nfds, payload, payload_len, payload_xxh3, cmd_name, t })
}

fn event(obj: &Map<String, Value>) -> Result<Event, String> {
    let kind = string(obj, "event")?;
    Ok(match kind.as_str() {
        "step" => {
            let at = match (opt_uint(obj, "line")?, opt_uint(obj, "column")?) {
                (Some(l), Some(c)) => Some((l, c)),
                (Some(l), None) => Some((l, 0)),
                _ => None,
            };
            Event::Step { index: uint(obj, "index")?, kind: opt_string(obj, "kind")?, at }
        }
        "fault" => Event::Fault {
            step: opt_uint(obj, "step")?,
            name: opt_string(obj, "name")?.unwrap_or_else(|| "?".into()),
            detail: opt_string(obj, "detail")?.unwrap_or_default(),
        },
        "note" => Event::Note { side: opt_string(obj, "side")?, text: string(obj, "text")? },
        _ => Event::Other {
            fields: obj.iter().filter(|(k, _)| *k != "event").map(|(k, v)| (k.clone(), v.to_string())).collect(),
            kind,
        },
    })
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a Value, String> {
    obj.get(key).ok_or_else(|| format!("missing key `{key}`"))
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match field(obj, key)? {
        Value::String(s) => Ok(s.clone()),
        v => Err(format!("`{key}` is not a string: {}", clip(v))),
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    if obj.get(key).is_none_or(Value::is_null) { Ok(None) } else { string(obj, key).map(Some) }
}

fn uint<T: TryFrom<u64>>(obj: &Map<String, Value>, key: &str) -> Result<T, String> {
    let v = field(obj, key)?;
    v.as_u64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("`{key}` is not a {}: {}", type_name::<T>(), clip(v)))
}

fn opt_uint<T: TryFrom<u64>>(obj: &Map<String, Value>, key: &str) -> Result<Option<T>, String> {
    if obj.get(key).is_none_or(Value::is_null) { Ok(None) } else { uint(obj, key).map(Some) }
}

/// A JSON value for an error message, cut to a readable length.
fn clip(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", s.get(..at).unwrap_or_default()),
        None => s,
    }
}

/// Decodes the `payload` hex string.
pub(super) fn hex(s: &str) -> Result<Vec<u8>, String> {
    if let Some((at, c)) = s.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!("payload has the non-hex character {c:?} at offset {at}"));
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!("payload has an odd number of hex digits ({})", s.len()));
    }
    let nibble = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok()).unwrap_or(0);
    Ok(s.as_bytes().chunks_exact(2).map(|p| p.iter().fold(0u8, |acc, b| (acc << 4) | nibble(*b))).collect())
}
