//! Exploration of the protocol model: a sweep of every operation in a drawn state, an event
//! in that state, and a sweep right after it, so that a campaign reaches every cell of the
//! model's (state × operation × outcome) and (state × event) matrices
//! ([`crate::model::matrix`]) and checks what each event must leave in place.

use rand::Rng;
use rand::seq::IndexedRandom;

use super::generate::{Builder, STATES, side_name};

/// The events a sweep may be followed by.
const EVENTS: [&str; 4] = ["reset", "guest-reset", "client-disconnect", "server-kill"];

impl Builder<'_> {
    /// `set-state` to a drawn state, `sweep`, and half the time an event and a second sweep.
    pub(super) fn sweep(&mut self) {
        let side = usize::from(self.rng.random_bool(0.3));
        let name = side_name(side);
        let state = *STATES[..5].choose(&mut self.rng).unwrap_or(&"running");
        self.raw(format!("set-state: {{side: {name}, state: {state}}}"));
        let oversized = if self.rng.random_bool(0.1) { ", oversized: true" } else { "" };
        self.raw(format!("sweep: {{side: {name}{oversized}}}"));
        if !self.rng.random_bool(0.5) {
            return;
        }
        match *EVENTS.choose(&mut self.rng).unwrap_or(&"reset") {
            "reset" => self.raw(format!("reset: {{side: {name}}}")),
            // A device the harness does not know has no register to reset it by.
            "guest-reset" if self.g.shadowed() => self.raw(format!("guest-reset: {{side: {name}}}")),
            "guest-reset" => self.raw(format!("reset: {{side: {name}}}")),
            "client-disconnect" => {
                self.raw(format!("fault: {{client-disconnect: {{side: {name}}}}}"));
                self.reconnect(side);
            }
            _ => {
                self.raw(format!("fault: {{server-kill: {{side: {name}, restart: true}}}}"));
                self.reconnect(side);
            }
        }
        self.raw(format!("sweep: {{side: {name}}}"));
    }
}
