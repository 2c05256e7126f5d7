//! Coverage of the model: which (state × operation × outcome) and (state × event) cells a run
//! reached, and which cells every campaign must reach.
//!
//! The required cells come from the model itself: in each state a client may put the device
//! in, every operation once where the state lets it through and once where the state refuses
//! it ([`gate`]), and every event (a guest reset only where the guest may write registers). ERROR is not among the states: a conforming server enters it
//! only when a device cannot restore any valid state, which no fault of the lab causes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The states of the matrices, in the order the summary shows them.
pub const STATES: [&str; 5] = ["RUNNING", "PRE_COPY", "STOP_COPY", "STOP", "RESUMING"];

/// The operations of the command matrix.
pub const OPS: [&str; 22] = [
    "VERSION",
    "DMA_MAP",
    "DMA_UNMAP",
    "DEVICE_GET_INFO",
    "DEVICE_GET_REGION_INFO",
    "DEVICE_GET_REGION_IO_FDS",
    "DEVICE_GET_IRQ_INFO",
    "DEVICE_SET_IRQS",
    "REGION_READ",
    "REGION_WRITE",
    "DEVICE_RESET",
    "REGION_WRITE_MULTI",
    "FEATURE GET MIGRATION",
    "FEATURE GET MIG_DEVICE_STATE",
    "FEATURE SET MIG_DEVICE_STATE",
    "FEATURE SET DMA_LOGGING_START",
    "FEATURE SET DMA_LOGGING_STOP",
    "FEATURE GET DMA_LOGGING_REPORT",
    "FEATURE PROBE MIG_DEVICE_STATE",
    "MIG_DATA_READ",
    "MIG_DATA_WRITE",
    "UNKNOWN",
];

/// The events of the event matrix.
pub const EVENTS: [&str; 4] = ["device-reset", "guest-reset", "client-disconnect", "server-kill"];

/// The outcome the state alone gives an operation that is otherwise valid: `None` lets it
/// through, `Some(errno)` refuses it (the specification's table, and the project's documented
/// choice for region writes in a stopped state).
pub fn gate(state: &str, op: &str) -> Option<&'static str> {
    match (op, state) {
        ("MIG_DATA_READ", "PRE_COPY" | "STOP_COPY") => None,
        ("MIG_DATA_READ", _) => Some("EINVAL"),
        ("MIG_DATA_WRITE", "RESUMING") => None,
        ("MIG_DATA_WRITE", _) => Some("EINVAL"),
        ("REGION_WRITE" | "REGION_WRITE_MULTI", "STOP" | "STOP_COPY" | "RESUMING") => Some("EBUSY"),
        ("UNKNOWN", _) => Some("ENOSYS"),
        ("VERSION", _) => Some("EINVAL"),
        _ => None,
    }
}

/// One cell of the command matrix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cell {
    /// The device state when the request was served.
    pub state: String,
    /// The operation ([`super::msg::op_name`]).
    pub op: String,
    /// `ok` or the errno's name.
    pub outcome: String,
}

/// What runs reached, with how many times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    /// (state × operation × outcome) → replies judged.
    pub commands: BTreeMap<String, u64>,
    /// (state × event) → events.
    pub events: BTreeMap<String, u64>,
}

fn key(parts: &[&str]) -> String {
    parts.join(" | ")
}

impl Matrix {
    /// Counts a judged reply.
    pub fn reply(&mut self, state: &str, op: &str, outcome: &str) {
        *self.commands.entry(key(&[state, op, outcome])).or_default() += 1;
    }

    /// Counts an event in a state.
    pub fn event(&mut self, state: &str, event: &str) {
        *self.events.entry(key(&[state, event])).or_default() += 1;
    }

    /// Adds another matrix's counts.
    pub fn merge(&mut self, other: &Matrix) {
        for (mine, theirs) in [(&mut self.commands, &other.commands), (&mut self.events, &other.events)] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }

    /// The cells every campaign must reach: each operation in each state, let through and
    /// refused by the state where [`gate`] says so (`ok` or the errno; a session's second
    /// VERSION is always refused); and each event in each state.
    pub fn required() -> (Vec<String>, Vec<String>) {
        let commands =
            STATES.iter().flat_map(|s| OPS.iter().map(move |op| key(&[s, op, gate(s, op).unwrap_or("ok")]))).collect();
        // A guest resets the device through its registers, which a stopped device does not
        // let it write.
        let events = STATES
            .iter()
            .flat_map(|s| EVENTS.iter().map(move |e| (s, e)))
            .filter(|(s, e)| **e != "guest-reset" || gate(s, "REGION_WRITE").is_none())
            .map(|(s, e)| key(&[s, e]))
            .collect();
        (commands, events)
    }

    /// The required cells not reached.
    pub fn missing(&self) -> (Vec<String>, Vec<String>) {
        let (commands, events) = Self::required();
        (
            commands.into_iter().filter(|c| !self.commands.contains_key(c)).collect(),
            events.into_iter().filter(|e| !self.events.contains_key(e)).collect(),
        )
    }

    /// The matrices as a person reads them: per state, each operation's outcomes; then the
    /// events; then the required cells never reached.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "model coverage: (state × operation × outcome), replies judged");
        for state in STATES {
            let _ = writeln!(out, "  {state}");
            for op in OPS {
                let prefix = key(&[state, op, ""]);
                let cells: Vec<String> = self
                    .commands
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| format!("{} {v}", &k[prefix.len()..]))
                    .collect();
                let shown = if cells.is_empty() { "-".to_string() } else { cells.join(", ") };
                let _ = writeln!(out, "    {op:<32} {shown}");
            }
        }
        let _ = writeln!(out, "model coverage: (state × event)");
        let _ = writeln!(out, "  {:<10} {}", "", EVENTS.map(|e| format!("{e:>18}")).join(""));
        for state in STATES {
            let row: Vec<String> = EVENTS
                .iter()
                .map(|e| format!("{:>18}", self.events.get(&key(&[state, e])).copied().unwrap_or(0)))
                .collect();
            let _ = writeln!(out, "  {state:<10} {}", row.join(""));
        }
        let (commands, events) = self.missing();
        if commands.is_empty() && events.is_empty() {
            let _ = writeln!(out, "every required cell reached");
        }
        if !commands.is_empty() {
            let _ = writeln!(out, "never reached ({}): {}", commands.len(), commands.join("; "));
        }
        if !events.is_empty() {
            let _ = writeln!(out, "events never reached ({}): {}", events.len(), events.join("; "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_cells_hold_the_gate_of_each_state() {
        let (commands, events) = Matrix::required();
        assert!(commands.contains(&"STOP | REGION_WRITE | EBUSY".to_string()));
        assert!(commands.contains(&"PRE_COPY | MIG_DATA_READ | ok".to_string()));
        assert!(commands.contains(&"RUNNING | MIG_DATA_READ | EINVAL".to_string()));
        assert!(commands.contains(&"RESUMING | UNKNOWN | ENOSYS".to_string()));
        assert!(commands.contains(&"STOP_COPY | VERSION | EINVAL".to_string()));
        assert_eq!(events.len(), STATES.len() * EVENTS.len() - 3, "no guest reset in a stopped state");
    }

    #[test]
    fn a_reached_cell_is_no_longer_missing() {
        let mut m = Matrix::default();
        let before = m.missing().0.len();
        m.reply("STOP", "REGION_WRITE", "EBUSY");
        m.event("STOP", "device-reset");
        assert_eq!(m.missing().0.len(), before - 1);
        assert!(!m.missing().1.contains(&"STOP | device-reset".to_string()));
        let mut total = Matrix::default();
        total.merge(&m);
        total.merge(&m);
        assert_eq!(total.commands["STOP | REGION_WRITE | EBUSY"], 2);
        assert!(m.summary().contains("never reached"));
    }
}
