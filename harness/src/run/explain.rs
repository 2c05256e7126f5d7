//! Why a migration may fail: every fault and every state the run put in its way, gathered
//! before it starts. A migration that fails with none of them is a finding, whatever outcome
//! the scenario allowed (`expect: any` admits the failures its faults explain, not others).

use vfu_server::wire::MigState;

use super::{Run, index};
use crate::oracle::Expected;
use crate::scenario::model::{MigrateStep, MigrationErrorKind};

/// What could make one migration fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Spoilers {
    /// The faults and states that reach the migration, each said for a person.
    pub reasons: Vec<String>,
    /// The scenario cancels it.
    pub cancelled: bool,
}

impl Spoilers {
    /// Whether a failure of `kind` is explained; the error if not.
    pub fn explain(&self, kind: MigrationErrorKind, why: &str) -> Result<(), String> {
        let explained = match kind {
            MigrationErrorKind::Cancelled => self.cancelled,
            _ => !self.reasons.is_empty(),
        };
        if explained {
            Ok(())
        } else {
            Err(format!(
                "the migration failed ({why}) and nothing the run put in its way explains it{}",
                if self.cancelled { " (it was to be cancelled, which ends it otherwise)" } else { "" }
            ))
        }
    }
}

impl Run<'_> {
    /// The spoilers of migration `mg`, from the sides as they stand before it starts.
    pub(super) fn spoilers(&self, mg: &MigrateStep) -> Spoilers {
        let (fi, ti) = (index(mg.from), index(mg.to));
        let mut reasons = Vec::new();
        if self.stream_fault.is_some() {
            reasons.push("a fault in the migration stream".to_string());
        }
        for t in &self.phase_triggers {
            reasons.push(format!("a {} at a phase of the migration", t.fault.kind()));
        }
        for (i, role) in [(fi, "source"), (ti, "destination")] {
            let side = &self.sides[i];
            let model = &side.dev.model;
            if !model.failing_arcs.is_empty() {
                reasons.push(format!("the {role}'s device refuses the arcs {:?}", model.failing_arcs));
            }
            if let Some(n) = model.fail_read_after {
                reasons.push(format!("the {role}'s device fails its reads after {n} bytes"));
            }
            if self.proxied[i] {
                reasons.push(format!("a proxy in front of the {role} damages messages"));
            }
            if side.dev.uncertain {
                reasons.push(format!("the {role}'s device is not known after damaged messages"));
            }
            // QEMU's flow starts from a running source and a destination it takes to RESUMING.
            if model.state != MigState::Running && !(i == ti && model.state == MigState::Stop) {
                reasons.push(format!("the {role}'s device is in {:?}", model.state));
            }
            if side.tap.armed_triggers() > 0 {
                reasons.push(format!("a trigger armed on the {role}'s messages"));
            }
        }
        let ranges = self.sides[fi].dev.guest.as_ref().map(|g| g.logging_ranges()).unwrap_or_default();
        if self.sides[fi].dev.dirty.predict_start(mock_qemu::guest::PAGE_SIZE, &ranges) != Expected::Ok {
            reasons.push("the source logs with other parameters than the migration's".into());
        }
        Spoilers { reasons, cancelled: mg.cancel_after_rounds.is_some() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_nothing_explains_is_a_finding() {
        let none = Spoilers::default();
        assert!(none.explain(MigrationErrorKind::DestinationFailed, "EBADMSG").is_err());
        let stream = Spoilers { reasons: vec!["a fault in the migration stream".into()], cancelled: false };
        assert!(stream.explain(MigrationErrorKind::DestinationFailed, "EBADMSG").is_ok());
        assert!(stream.explain(MigrationErrorKind::Cancelled, "cancelled").is_err(), "only a cancel explains one");
        let cancel = Spoilers { cancelled: true, ..Spoilers::default() };
        assert!(cancel.explain(MigrationErrorKind::Cancelled, "cancelled").is_ok());
    }
}
