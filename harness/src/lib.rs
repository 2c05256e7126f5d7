//! The pieces of `miglab`, the scenario runner: the scenario format and its loader
//! ([`scenario`]), a fault-injecting vfio-user proxy ([`proxy`]), run reports ([`report`]) and
//! the transparent tap of `miglab tap` ([`wiretap`]).

#![forbid(unsafe_code)]

pub mod fuzz;
pub mod model;
pub mod oracle;
pub mod profile;
pub mod proxy;
pub mod report;
pub mod run;
pub mod scenario;
pub mod trace;
pub mod wiretap;
