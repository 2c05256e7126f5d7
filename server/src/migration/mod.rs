//! Live migration (protocol v2): the state machine, device callbacks, data streams and
//! dirty-page logging.

pub mod bitmap;
pub mod dirty;
pub mod fsm;
