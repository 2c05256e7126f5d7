//! Findings: each way a server was seen to deviate from the specification, with how much it
//! matters.

use serde::{Deserialize, Serialize};

/// How much a finding matters, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Guest or device data did not arrive, or a written page went unreported.
    DataLoss,
    /// No reply within the timeout.
    Hang,
    /// A reply the specification does not admit.
    Violation,
    /// A reply the specification does not admit, in a way implementations are known to
    /// differ (the reference library's documented deviations): reported, failing only under
    /// `--strict`.
    Deviation,
}

impl Severity {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Severity::DataLoss => "data-loss",
            Severity::Hang => "hang",
            Severity::Violation => "violation",
            Severity::Deviation => "deviation",
        }
    }
}

/// One finding of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// What kind of finding, the same for the same rule broken (`padded-mig-data-read`).
    pub kind: String,
    /// The side whose server it is (`source`, `destination`).
    pub side: String,
    /// The step that showed it.
    pub step: usize,
    /// The message that showed it and what was wrong, in one line.
    pub message: String,
    /// The specification's words it breaks.
    pub specification: String,
}
