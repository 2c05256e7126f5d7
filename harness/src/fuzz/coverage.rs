//! Coverage of the model over a campaign: which states, arcs, commands, errnos and fault
//! kinds the runs exercised, and which none did.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use vfu_server::wire::{Command, MigState};

use crate::run::state_name;

use super::generate::FAULTS;

/// What a campaign exercised, with how many times; serialized in a campaign's summary file so
/// that shards can be merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Device states reached (from the servers' logs).
    pub states: BTreeMap<String, u64>,
    /// Arcs the devices were taken through.
    pub arcs: BTreeMap<String, u64>,
    /// Commands the clients sent.
    pub commands: BTreeMap<String, u64>,
    /// Errnos the servers answered.
    pub errnos: BTreeMap<String, u64>,
    /// Fault kinds the scenarios named.
    pub faults: BTreeMap<String, u64>,
    /// The protocol model's (state × operation × outcome) and (state × event) cells.
    pub model: crate::model::Matrix,
}

const ARCS: [&str; 9] = [
    "RUNNING->STOP",
    "STOP->RUNNING",
    "STOP->STOP_COPY",
    "STOP_COPY->STOP",
    "STOP->RESUMING",
    "RESUMING->STOP",
    "RUNNING->PRE_COPY",
    "PRE_COPY->RUNNING",
    "PRE_COPY->STOP_COPY",
];

const STATES: [&str; 5] = ["RUNNING", "STOP", "STOP_COPY", "RESUMING", "PRE_COPY"];

/// The errnos of error replies, the server's and the client's (EFAULT to a DMA it cannot serve):
/// each should come up in a campaign.
const ERRNOS: [&str; 9] = ["EINVAL", "EBUSY", "EIO", "EBADMSG", "ENODATA", "E2BIG", "ENOSYS", "EFAULT", "ENOTTY"];

impl Coverage {
    /// Adds one run: its message trace, its servers' arcs, the faults its scenario named.
    pub fn add_run(&mut self, trace: &[u8], arcs: &[(MigState, MigState)], faults: &[&str]) {
        for line in String::from_utf8_lossy(trace).lines() {
            let field = |key: &str| -> Option<&str> {
                let at = line.find(key)? + key.len();
                let rest = &line[at..];
                Some(rest[..rest.find([',', '}']).unwrap_or(rest.len())].trim().trim_matches('"'))
            };
            let (Some(_), Some(cmd)) = (field("\"dir\": "), field("\"cmd\": ").and_then(|c| c.parse::<u16>().ok()))
            else {
                continue;
            };
            let flags = field("\"flags\": ").and_then(|f| f.parse::<u32>().ok()).unwrap_or(0);
            let name = Command::from_u16(cmd).map_or("UNKNOWN", Command::name);
            if flags & 0xf == 0 {
                *self.commands.entry(name.into()).or_default() += 1;
            }
            // Error replies both ways: the server's, and the client's to the server's own
            // requests (EFAULT to a DMA_READ or DMA_WRITE it cannot serve).
            if flags & 0xf == 1 && flags & 0x20 != 0 {
                let errno = field("\"error_no\": ").and_then(|e| e.parse::<i32>().ok()).unwrap_or(0);
                let e = format!("{:?}", nix::errno::Errno::from_raw(errno));
                *self.errnos.entry(e).or_default() += 1;
            }
        }
        for &(from, to) in arcs {
            let (from, to) = (state_name(from), state_name(to));
            *self.arcs.entry(format!("{from}->{to}")).or_default() += 1;
            *self.states.entry(to.into()).or_default() += 1;
        }
        for f in faults {
            *self.faults.entry((*f).into()).or_default() += 1;
        }
    }

    /// Adds the cells the protocol model judged in one run.
    pub fn add_matrix(&mut self, matrix: &crate::model::Matrix) {
        self.model.merge(matrix);
    }

    /// Merges another campaign's (or job's) coverage.
    pub fn merge(&mut self, other: &Coverage) {
        for (mine, theirs) in [
            (&mut self.states, &other.states),
            (&mut self.arcs, &other.arcs),
            (&mut self.commands, &other.commands),
            (&mut self.errnos, &other.errnos),
            (&mut self.faults, &other.faults),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
        self.model.merge(&other.model);
    }

    /// What no run exercised, by kind.
    pub fn missing(&self) -> Vec<(&'static str, Vec<String>)> {
        let absent = |have: &BTreeMap<String, u64>, all: &[&str]| -> Vec<String> {
            all.iter().filter(|k| !have.contains_key(**k)).map(|k| (*k).to_string()).collect()
        };
        let commands: Vec<&str> = Command::ALL.iter().map(|c| c.name()).collect();
        vec![
            ("states", absent(&self.states, &STATES)),
            ("arcs", absent(&self.arcs, &ARCS)),
            ("commands", absent(&self.commands, &commands)),
            ("errnos", absent(&self.errnos, &ERRNOS)),
            ("faults", absent(&self.faults, &FAULTS)),
        ]
    }

    /// The summary a campaign prints.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (kind, map) in [
            ("states", &self.states),
            ("arcs", &self.arcs),
            ("commands", &self.commands),
            ("errnos", &self.errnos),
            ("faults", &self.faults),
        ] {
            let items: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "{kind:>9}: {}", if items.is_empty() { "none".into() } else { items.join(", ") });
        }
        for (kind, missing) in self.missing() {
            if !missing.is_empty() {
                let _ = writeln!(out, "never hit {kind}: {}", missing.join(", "));
            }
        }
        out.push_str(&self.model.summary());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_counts_requests_errnos_arcs_and_faults() {
        let trace = concat!(
            "{\"session\": \"source\", \"dir\": \"c2s\", \"msg_id\": 1, \"cmd\": 9, \"size\": 32, \"flags\": 0, \"error_no\": 0, \"nfds\": 0, \"payload\": \"\"}\n",
            "{\"session\": \"source\", \"dir\": \"s2c\", \"msg_id\": 1, \"cmd\": 9, \"size\": 16, \"flags\": 33, \"error_no\": 22, \"nfds\": 0, \"payload\": \"\"}\n",
            "{\"session\": \"source\", \"dir\": \"s2c\", \"msg_id\": 1, \"cmd\": 12, \"size\": 40, \"flags\": 0, \"error_no\": 0, \"nfds\": 0, \"payload\": \"\"}\n",
            "{\"session\": \"source\", \"dir\": \"c2s\", \"msg_id\": 1, \"cmd\": 12, \"size\": 16, \"flags\": 33, \"error_no\": 14, \"nfds\": 0, \"payload\": \"\"}\n",
            "{\"event\": \"step\", \"index\": 0}\n",
        );
        let mut c = Coverage::default();
        c.add_run(trace.as_bytes(), &[(MigState::Running, MigState::Stop)], &["proxy"]);
        assert_eq!(c.commands.get("REGION_READ"), Some(&1));
        assert_eq!(c.errnos.get("EINVAL"), Some(&1));
        assert_eq!(c.commands.get("DMA_WRITE"), Some(&1), "the server's own request");
        assert_eq!(c.errnos.get("EFAULT"), Some(&1), "the client's refusal of it");
        assert_eq!(c.arcs.get("RUNNING->STOP"), Some(&1));
        assert_eq!(c.faults.get("proxy"), Some(&1));
        let missing = c.missing();
        assert!(missing.iter().any(|(k, v)| *k == "arcs" && v.contains(&"STOP->RUNNING".to_string())));
    }
}
