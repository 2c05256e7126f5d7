//! Judging a step by what was found: the protocol model's and the client's findings, each
//! recorded with its severity; violations fail the step, known deviations only under
//! `--strict`.

use super::{Run, StepOutcome, index};
use crate::model::deviation::{Deviation, Seen};
use crate::report::{Finding, Severity};
use crate::scenario::model::Side;

/// Findings of one rule a step's report keeps, before it says how many more there were.
const RECORDED_PER_STEP: usize = 32;

/// What a model finding breaks: its message says what the model predicted.
const MODEL_PREDICTS: &str = "the reply the specification's model predicts (see the message)";
/// What a client's strict-mode finding breaks.
const CLIENT_RULES: &str = "the client's strict-mode rule of that name (mock-qemu's client::strict)";

/// What a failed step's own reason breaks.
const STEP_CHECK: &str = "the step's check (see the message): what the specification and the scenario promise";

/// The severity and kind of a failed step that no finding of its own explains.
fn classify(reason: &str, died: bool) -> (Severity, &'static str) {
    let hang = ["no reply to", "timed out", "Resource temporarily unavailable"];
    if died {
        (Severity::Violation, "server-died")
    } else if reason.contains("data loss") || reason.contains("differs") || reason.contains(" differ") {
        (Severity::DataLoss, "data-loss")
    } else if hang.iter().any(|h| reason.contains(h)) {
        (Severity::Hang, "no-reply")
    } else {
        (Severity::Violation, "failed-check")
    }
}

impl Run<'_> {
    /// A failed step's reason, with the exit status and log of a server that died under it;
    /// recorded as a finding unless one recorded during the step already explains it.
    pub(super) fn failure_finding(&mut self, reason: String, side: Option<Side>) -> String {
        let mut reason = reason;
        let mut died = None;
        // A server that closed the socket as it died may take a moment to be reaped.
        let closed = reason.contains("socket failed") || reason.contains("closed");
        let grace = std::time::Duration::from_millis(if closed { 200 } else { 0 });
        for s in Side::BOTH {
            if let Some(why) = self.sides[index(s)].server_died(grace) {
                reason = format!("{reason}; {why}");
                died.get_or_insert(s);
            }
        }
        let explained = self.findings.iter().any(|f| f.step == self.step && f.severity != Severity::Deviation);
        if !explained {
            let (severity, kind) = classify(&reason, died.is_some());
            let side = died.or(side).unwrap_or(Side::Source);
            self.record(severity, kind, side, reason.clone(), STEP_CHECK);
        }
        reason
    }

    /// Records a finding of the step under way.
    fn record(&mut self, severity: Severity, kind: &str, side: Side, message: String, specification: &str) {
        self.findings.push(Finding {
            severity,
            kind: kind.into(),
            side: side.name().into(),
            step: self.step,
            message,
            specification: specification.into(),
        });
    }

    /// A reply the protocol model does not admit fails the step, and so does (strict mode) a
    /// deviation from the specification a client saw, unless the scenario damaged that step's
    /// messages on purpose (`next_fails`, `next_may_fail`).
    pub(super) fn strict_findings(&mut self, outcome: StepOutcome) -> StepOutcome {
        let tolerate = std::mem::take(&mut self.damaged_step);
        let mut seen = Vec::new();
        let mut model = Vec::new();
        let mut deviations = Vec::new();
        for side in Side::BOTH {
            let ctx = &mut self.sides[index(side)];
            let mut client_deviations = Vec::new();
            let mut client_violations = Vec::new();
            if let Some(c) = ctx.client.as_mut() {
                for f in c.take_findings() {
                    match Deviation::from_rule(f.rule) {
                        // The model's own finding of it stands.
                        Some(d) if d.judged_by_model() => {}
                        Some(deviation) => client_deviations.push(Seen { deviation, text: f.to_string() }),
                        None => {
                            seen.push(format!("{}: {f}", side.name()));
                            if !tolerate {
                                client_violations.push((f.rule, f.to_string()));
                            }
                        }
                    }
                }
            }
            let found = ctx.tap.take_model_findings();
            let mut deviated = ctx.tap.take_model_deviations();
            deviated.extend(client_deviations);
            if tolerate {
                continue;
            }
            for (rule, text) in client_violations {
                self.record(Severity::Violation, rule, side, text, CLIENT_RULES);
            }
            // A step that sends thousands of requests can break a rule thousands of times: the
            // report keeps the first few, and says how many more.
            for text in found.iter().take(RECORDED_PER_STEP) {
                self.record(Severity::Violation, "protocol-model", side, text.clone(), MODEL_PREDICTS);
            }
            if let Some(more) = found.len().checked_sub(RECORDED_PER_STEP).filter(|&n| n > 0) {
                let text = format!("and {more} more replies of this step the model does not admit");
                self.record(Severity::Violation, "protocol-model", side, text, MODEL_PREDICTS);
            }
            model.extend(found.into_iter().map(|f| format!("{}: {f}", side.name())));
            // This project's server with the dma-engine claims the specification to the letter:
            // what another server may get away with is a violation there.
            let conforms = self.commands[index(side)].logs_arcs && self.profile.shadowed();
            for d in deviated {
                let line = format!("{}: {} ({})", side.name(), d.text, d.deviation.kind());
                let severity = if conforms { Severity::Violation } else { Severity::Deviation };
                self.record(severity, d.deviation.kind(), side, d.text, d.deviation.specification());
                if conforms { model.push(line) } else { deviations.push(line) }
            }
        }
        match outcome {
            Ok(_) if !model.is_empty() && !tolerate => Err(format!(
                "protocol model: {} reply(ies) the specification does not admit: {}",
                model.len(),
                model.into_iter().take(4).collect::<Vec<_>>().join("; ")
            )),
            Ok(_) if !deviations.is_empty() && self.options.strict => Err(format!(
                "strict: {} known deviation(s) from the specification: {}",
                deviations.len(),
                deviations.into_iter().take(4).collect::<Vec<_>>().join("; ")
            )),
            Ok(_) if !seen.is_empty() && !tolerate => {
                Err(format!("strict mode: {} deviation(s) from the specification: {}", seen.len(), seen.join("; ")))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_is_classified_by_what_its_reason_says() {
        let lost = "data loss: 2 page(s) the device wrote are missing from the dirty report";
        assert_eq!(classify(lost, false), (Severity::DataLoss, "data-loss"));
        assert_eq!(classify("no reply to DEVICE_FEATURE within 10s", false), (Severity::Hang, "no-reply"));
        let blocked = "socket failed during REGION_WRITE: Resource temporarily unavailable (os error 11)";
        assert_eq!(classify(blocked, false), (Severity::Hang, "no-reply"));
        assert_eq!(classify("socket failed during DEVICE_FEATURE", true), (Severity::Violation, "server-died"));
        assert_eq!(classify("the destination's BAR1 differs", false).0, Severity::DataLoss);
        assert_eq!(classify("expected RUNNING, found STOP", false), (Severity::Violation, "failed-check"));
    }
}
