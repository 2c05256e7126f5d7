//! The oracle: what every reply must be, and what the truth of a run is.
//!
//! - [`protocol`]: the migration state machine as the specification gives it, and the
//!   errno of each request a state forbids;
//! - [`dirty`]: the ground truth of the pages the device wrote, against which each dirty
//!   report is judged (a lost page fails the run, over-reporting is counted);
//! - [`device`]: a shadow of the dma-engine's memory and counters, from its documented
//!   contract.
//!
//! The runner asks the oracle before each request and tells it what came back; a reply the
//! prediction does not admit is a finding of the run.

pub mod device;
pub mod dirty;
pub mod protocol;

pub use device::DeviceShadow;
pub use dirty::{DirtyModel, ReportCheck};
pub use protocol::{ARC_REFUSALS, DATA_REFUSALS, DeviceModel, Expected, ResumeData, SetPrediction};
