//! Judging a step by what was found: the protocol model's and the client's findings, each
//! recorded with its severity; violations fail the step, known deviations only under
//! `--strict`.

use super::{Run, StepOutcome, index};
use crate::model::deviation::{Deviation, Seen};
use crate::report::{Finding, Severity};
use crate::scenario::model::Side;

/// What a model finding breaks: its message says what the model predicted.
const MODEL_PREDICTS: &str = "the reply the specification's model predicts (see the message)";
/// What a client's strict-mode finding breaks.
const CLIENT_RULES: &str = "the client's strict-mode rule of that name (mock-qemu's client::strict)";

impl Run<'_> {
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
            for text in &found {
                self.record(Severity::Violation, "protocol-model", side, text.clone(), MODEL_PREDICTS);
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
