//! Migrations in generated scenarios: a new destination each time (as QEMU starts a new
//! process), the faults that may reach the migration placed in its phases, and its knobs
//! (rounds, pre-copy, cancel, transport, QEMU's iteration) drawn.

use rand::Rng;
use rand::seq::IndexedRandom;

use super::generate::{Action, Builder, GenStep, MigrateGen};
use crate::scenario::model::DeviceKind;

impl Builder<'_> {
    /// A whole migration from source to destination.
    pub(super) fn migrate(&mut self) {
        // A new destination, as QEMU starts a new process for each incoming migration: its
        // guest RAM and device as they are at power-on.
        self.raw("fault: {client-disconnect: {side: destination}}");
        self.reconnect(1);
        if self.g.swarm.faults.contains("stream") && self.rng.random_bool(0.5) {
            let f = match self.rng.random_range(0..3) {
                0 => format!("{{cut: {{after: {}}}}}", self.rng.random_range(64..200_000)),
                1 => format!("{{corrupt: {{at: {}}}}}", self.rng.random_range(16..100_000)),
                _ => format!("{{duplicate-chunk: {{index: {}}}}}", self.rng.random_range(0..8)),
            };
            self.raw(format!("fault: {{stream: {f}}}"));
        }
        let mut phase_fault = false;
        for kind in ["server-kill", "client-disconnect"] {
            if !phase_fault && self.g.swarm.faults.contains(kind) && self.rng.random_bool(0.3) {
                let after = if self.rng.random_bool(0.5) { "switchover" } else { "{round: 1}" };
                let extra = if kind == "server-kill" { ", restart: true" } else { "" };
                self.raw(format!(
                    "fault: {{{kind}: {{side: source, at: {{after: {after}, command: MIG_DATA_READ, nth: 1}}{extra}}}}}"
                ));
                phase_fault = true;
            }
        }
        // Only these can make a migration fail: faults that reach it, or a source device left
        // where it cannot start one (RESUMING, by hand-made states or data).
        let spoilers = ["device-arc", "device-read-after", "stream", "server-kill", "client-disconnect", "proxy"];
        let must_migrate = !spoilers.iter().any(|f| self.g.swarm.faults.contains(f))
            && !self.g.swarm.actions.contains(&Action::SetState)
            && !self.g.swarm.actions.contains(&Action::Sweep)
            && !self.g.swarm.actions.contains(&Action::Data);
        if must_migrate && self.sides[0].logging {
            // Logging started by hand with other parameters would refuse the migration's own.
            self.raw("stop-logging: {side: source}");
            self.sides[0].logging = false;
        }
        let mut m = MigrateGen {
            must_migrate,
            max_rounds: self.rng.random_range(1..=5),
            // The sample's destination takes one STOP_COPY stream and no pre-copy data.
            pre_copy: self.rng.random_bool(0.8) && self.g.device != DeviceKind::LibvfioUserSample,
            cancel: self.rng.random_bool(0.15).then(|| self.rng.random_range(1..=2)),
            transport: ["pipe", "unix", "tcp"].choose(&mut self.rng).copied().unwrap_or("pipe"),
            iteration: None,
        };
        if m.pre_copy {
            let nth = self.g.steps.iter().filter(|s| matches!(s, GenStep::Migrate(_))).count();
            m.iteration = super::iteration::IterationGen::draw(self.g.seed, nth, self.g.devmem);
        }
        self.g.steps.push(GenStep::Migrate(m));
        self.sides[0].logging = false;
        self.sides[1].logging = false;
        self.migrated = true;
        if phase_fault {
            self.reconnect(0);
        }
    }
}
