//! `junit.xml`: one test suite for the scenario, one test case per step, so that CI shows which
//! step failed and why. A failed run with no failed step (a final check failed) gets one more test
//! case, `outcome`, carrying the reason. The findings of a step go to its case's system-err, a
//! failed step's type is its worst finding's severity, and the suite counts findings by severity
//! in its properties.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::finding::{Finding, Severity};
use super::model::{Outcome, RunReport};

/// Renders `junit.xml`.
pub fn junit_xml(report: &RunReport) -> Result<String, quick_junit::SerializeError> {
    let mut suite = TestSuite::new(report.scenario.as_str());
    suite.set_time(Duration::from_micros(report.duration_micros));
    suite.add_property(Property::new("seed", report.seed.to_string()));
    suite.add_property(Property::new("file", report.file.display().to_string()));
    suite.add_property(Property::new("started", report.started.as_str()));
    for severity in [Severity::DataLoss, Severity::Hang, Severity::Violation, Severity::Deviation] {
        let n = report.findings.iter().filter(|f| f.severity == severity).count();
        suite.add_property(Property::new(format!("findings.{}", severity.name()), n.to_string()));
    }
    let classname = format!("miglab.{}", report.scenario);
    for step in &report.steps {
        let findings: Vec<&Finding> = report.findings.iter().filter(|f| f.step == step.index).collect();
        let status = if step.ok {
            TestCaseStatus::success()
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(step.detail.clone().unwrap_or_else(|| "step failed".to_owned()));
            let worst = findings.iter().map(|f| f.severity).min();
            s.set_type(worst.map_or_else(|| step.kind.clone(), |w| w.name().to_owned()));
            s
        };
        let mut case = TestCase::new(format!("{:02} {}: {}", step.index, step.kind, step.description), status);
        case.set_classname(classname.as_str());
        case.set_time(Duration::from_micros(step.micros));
        if let (true, Some(detail)) = (step.ok, &step.detail) {
            case.set_system_out(detail.as_str());
        }
        if !findings.is_empty() {
            let lines: Vec<String> = findings
                .iter()
                .map(|f| format!("{} {} ({}): {}", f.severity.name(), f.kind, f.side, f.message))
                .collect();
            case.set_system_err(lines.join("\n"));
        }
        suite.add_test_case(case);
    }
    let no_step_failed = report.steps.iter().all(|s| s.ok);
    if let (Outcome::Failed { reason }, true) = (&report.outcome, no_step_failed) {
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
        s.set_message(reason.as_str());
        s.set_type("outcome");
        let mut case = TestCase::new("outcome", s);
        case.set_classname(classname.as_str());
        suite.add_test_case(case);
    }
    let mut junit = Report::new("miglab");
    junit.set_time(Duration::from_micros(report.duration_micros));
    junit.add_test_suite(suite);
    junit.to_string()
}
