//! harness

#![forbid(unsafe_code)]

pub mod proxy;
pub mod report;
pub mod scenario;
