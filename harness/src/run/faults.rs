//! Faults, and the checks of `expect` and `verify`.
//!
//! A fault without a trigger happens at its step. One with a trigger is armed: on the tap of
//! the side's client (disconnect, kill: they fire just before the Nth message leaves), on the
//! proxy (damaged messages), or, with `after`, on the source's phases of the next migration.

use vfu_server::devices::dma_engine::REGION_REGS;
use vfu_server::devices::dma_engine::regs::REG_CMDS_FAILED;
use vfu_server::wire::{DMA_MAP_READ, DMA_MAP_WRITE, MigState};

use super::hosted::HostedServer;

use super::tap::{Armed, TriggerAction};
use super::{PhaseTrigger, Run, StepOutcome, index};
use crate::proxy::{self, FaultAction, ProxyFault};
use crate::report::EventKind;
use crate::scenario::model::{self as m, Fault, ProxyAction, Side, StreamFaultSpec, Trigger};
use mock_qemu::guest::PAGE_SIZE as PAGE;
use mock_qemu::guest::dmae::DmaCommand;
use mock_qemu::stream::StreamFault;

const KILL_RESTART: &str = "server-kill (restarted)";
const KILL: &str = "server-kill";
const DISCONNECT: &str = "client-disconnect";

fn proxy_actions(action: &ProxyAction) -> Vec<FaultAction> {
    match *action {
        ProxyAction::CorruptHeader { field, xor } => vec![FaultAction::CorruptHeader {
            field: match field {
                m::HeaderField::MsgId => proxy::HeaderField::MsgId,
                m::HeaderField::Command => proxy::HeaderField::Cmd,
                m::HeaderField::MsgSize => proxy::HeaderField::MsgSize,
                m::HeaderField::Flags => proxy::HeaderField::Flags,
                m::HeaderField::Error => proxy::HeaderField::ErrorNo,
            },
            xor,
        }],
        ProxyAction::CorruptPayload { offset, xor } => {
            vec![FaultAction::CorruptPayload { offset: offset as usize, xor }]
        }
        ProxyAction::Truncate { keep } => vec![FaultAction::Truncate { keep: keep as usize }],
        ProxyAction::Duplicate => vec![FaultAction::Duplicate],
        ProxyAction::Delay { ms } => vec![FaultAction::Delay { millis: ms }],
        ProxyAction::Reorder => vec![FaultAction::Reorder],
        ProxyAction::DropFds => vec![FaultAction::DropFds],
        ProxyAction::AddFds { count } => vec![FaultAction::AddFd; count.max(1) as usize],
    }
}

impl Run<'_> {
    pub(super) fn fault(&mut self, f: &Fault) -> StepOutcome {
        let name = f.kind().to_string();
        match f {
            Fault::ClientDisconnect { side, at } => match at {
                None => {
                    self.event(Some(*side), EventKind::Fault { name });
                    self.side(*side).disconnect();
                }
                Some(t) => self.arm(*side, t, f)?,
            },
            Fault::ServerKill { side, at, restart } => match at {
                None => {
                    self.event(Some(*side), EventKind::Fault { name });
                    self.killed(*side, *restart)?;
                }
                Some(t) => self.arm(*side, t, f)?,
            },
            Fault::Proxy { side, at, direction, action } => {
                let proxy = self.side(*side).proxy.as_ref().ok_or("no proxy in front of the server")?;
                let dir = match direction {
                    m::Direction::ToServer => proxy::Direction::ToServer,
                    m::Direction::ToClient => proxy::Direction::ToClient,
                };
                for a in proxy_actions(action) {
                    proxy.arm(ProxyFault {
                        direction: dir,
                        cmd: at.command.map(|c| c.to_wire() as u16),
                        nth: at.nth,
                        action: a,
                    });
                }
                self.side(*side).tap.model_event(crate::model::Event::Damaged);
                self.event(
                    Some(*side),
                    EventKind::Note { text: format!("proxy fault armed: {}", action_name(action)) },
                );
            }
            Fault::DeviceArc { side, from, to } => {
                self.side(*side).hooks.fail_arcs.push((from.to_wire(), to.to_wire()));
            }
            Fault::DeviceReadAfter { side, bytes } => self.side(*side).hooks.fail_read_after = Some(bytes.bytes()),
            Fault::Stream(spec) => {
                self.stream_fault = Some(match *spec {
                    StreamFaultSpec::Cut { after } => StreamFault::Cut { after: after.bytes() },
                    StreamFaultSpec::Corrupt { at, xor } => StreamFault::FlipByte { at: at.bytes(), xor },
                    StreamFaultSpec::DuplicateChunk { index } => StreamFault::DuplicateSection { index },
                });
            }
            Fault::DmaUnmapped { side, guest_addr, len, by_message } => {
                self.event(Some(*side), EventKind::Fault { name });
                let cmd = DmaCommand::fill(guest_addr.bytes(), len.bytes(), 0);
                if self.side(*side).dev.is_mapped(cmd.guest_addr, cmd.len) {
                    return Err(format!("{:#x}+{:#x} is mapped: no fault to inject", cmd.guest_addr, cmd.len));
                }
                if !*by_message {
                    self.command(*side, &cmd)?;
                    return Ok(None);
                }
                // The pages of the range, mapped with no memory behind them in the guest.
                let start = cmd.guest_addr & !(PAGE - 1);
                let size =
                    cmd.guest_addr.checked_add(cmd.len.max(1)).ok_or("the range overflows")?.next_multiple_of(PAGE)
                        - start;
                let client = self.side(*side).client.as_mut().ok_or("no client")?;
                client
                    .dma_map(start, size, DMA_MAP_READ | DMA_MAP_WRITE, None)
                    .map_err(|e| format!("DMA_MAP of {start:#x}+{size:#x} with no fd: {e}"))?;
                let ran = self.command(*side, &cmd);
                let client = self.side(*side).client.as_mut().ok_or("no client")?;
                client.dma_unmap(start, size, 0).map_err(|e| format!("DMA_UNMAP of {start:#x}+{size:#x}: {e}"))?;
                ran?;
            }
            Fault::UnmapWhileLogging { side, region } => {
                self.event(Some(*side), EventKind::Fault { name });
                if !self.side(*side).dev.dirty.logging() {
                    return Err("logging is off".into());
                }
                self.side(*side).unmap(Some(&[*region]))?;
            }
        }
        Ok(None)
    }

    /// Arms a disconnect or kill trigger, now or at a phase of the next migration.
    fn arm(&mut self, side: Side, t: &Trigger, f: &Fault) -> Result<(), String> {
        if let Some(mark) = t.after {
            self.phase_triggers.push(PhaseTrigger { side, mark, fault: f.clone() });
            return Ok(());
        }
        let armed = self.armed(side, t, f)?;
        self.side(side).tap.arm(armed);
        Ok(())
    }

    /// The trigger of `f` on `side`, counting from now.
    pub(super) fn armed(&mut self, side: Side, t: &Trigger, f: &Fault) -> Result<Armed, String> {
        let i = index(side);
        let client = self.sides[i].client.take().ok_or("no client")?;
        let armed = self.armed_on(t, f, &client, i);
        self.sides[i].client = Some(client);
        armed
    }

    /// The trigger of `f` on side `i`, whose client is `client`.
    pub(super) fn armed_on(
        &self,
        t: &Trigger,
        f: &Fault,
        client: &mock_qemu::Client,
        i: usize,
    ) -> Result<Armed, String> {
        let (action, label) = match f {
            Fault::ServerKill { restart, .. } => (
                TriggerAction::KillServer(
                    self.sides[i].server.as_ref().and_then(HostedServer::pid).ok_or("no server process to kill")?,
                ),
                if *restart { KILL_RESTART } else { KILL },
            ),
            _ => {
                let stream = client.stream().try_clone().map_err(|e| format!("cloning the socket: {e}"))?;
                (TriggerAction::Disconnect(stream), DISCONNECT)
            }
        };
        Ok(Armed { cmd: t.command.map(|c| c.to_wire() as u16), nth: t.nth, seen: 0, action, label: label.into() })
    }

    /// A trigger fired on `side` during the step: the bookkeeping of what it did.
    pub(super) fn fired(&mut self, side: Side, label: &str) -> Result<(), String> {
        match label {
            KILL_RESTART => self.killed(side, true),
            KILL => self.killed(side, false),
            _ => {
                self.side(side).disconnect();
                Ok(())
            }
        }
    }

    /// The server of `side` was (or is now) killed; restarted, empty, when asked.
    fn killed(&mut self, side: Side, restart: bool) -> Result<(), String> {
        let i = index(side);
        self.sides[i].kill_server();
        self.sides[i].dev.model.reset();
        if restart {
            self.start_server(side)?;
            self.event(Some(side), EventKind::Note { text: "server restarted".into() });
        }
        Ok(())
    }

    pub(super) fn expect(&mut self, e: &m::ExpectStep) -> StepOutcome {
        let i = index(e.side);
        if let Some(errno) = e.next_errno {
            self.next_errno[i] = Some(super::steps::errno_name(errno));
        }
        if e.next_fails == Some(true) {
            self.next_fails[i] = Some(true);
        }
        if e.next_may_fail == Some(true) {
            self.next_fails[i] = Some(false);
        }
        if self.next_fails[i].is_some() {
            // The scenario knows of damage the conversation does not show.
            self.sides[i].tap.model_event(crate::model::Event::Damaged);
        }
        if let Some(want) = e.rounds {
            let got = self.stats.as_ref().map(|s| s.rounds.len().saturating_sub(1) as u32);
            if got != Some(want) {
                return Err(format!("the last migration ran {got:?} pre-copy rounds; the scenario expects {want}"));
            }
        }
        if let Some(alive) = e.server_alive {
            let got = self.sides[i].server_alive();
            if got != alive {
                return Err(format!("the {} server is {}", e.side.name(), if got { "alive" } else { "gone" }));
            }
        }
        if let Some(want) = e.state {
            let ctx = &mut self.sides[i];
            let got = ctx.read_state()?;
            if got != want.to_wire() {
                return Err(format!("the device is in {got:?}; the scenario expects {:?}", want.to_wire()));
            }
            if got != ctx.dev.model.state {
                return Err(format!("the device is in {got:?}; the model says {:?}", ctx.dev.model.state));
            }
        }
        if let Some(want) = e.commands_failed {
            let ctx = &mut self.sides[i];
            let got = ctx.client()?.read_u64(REGION_REGS, REG_CMDS_FAILED).map_err(|e| format!("CMDS_FAILED: {e}"))?;
            if got != want {
                return Err(format!("CMDS_FAILED reads {got}; the scenario expects {want}"));
            }
            if got != ctx.dev.shadow.counters.failed {
                return Err(format!("CMDS_FAILED reads {got}; the model counts {}", ctx.dev.shadow.counters.failed));
            }
        }
        Ok(None)
    }

    pub(super) fn verify(&mut self, v: &m::VerifyStep) -> StepOutcome {
        let Some(ver) = &self.verification else {
            return Err("no migration completed: nothing to verify".into());
        };
        let mut problems = Vec::new();
        if v.ram && ver.ram_diff_count > 0 {
            let first: Vec<String> = ver.ram_diff.iter().take(8).map(|d| format!("{:#x}", d.addr)).collect();
            problems.push(format!("{} guest page(s) differ: {}", ver.ram_diff_count, first.join(", ")));
        }
        if v.device && !ver.compared {
            problems.push("the device state could not be read on both sides".into());
        }
        if v.device && !ver.device_diff.is_empty() {
            problems.push(format!("device state differs: {}", ver.device_diff.join("; ")));
        }
        if v.device && !ver.model_diff.is_empty() {
            problems.push(format!("the destination's device differs from the model: {}", ver.model_diff.join("; ")));
        }
        if v.dirty_log && ver.lost > 0 {
            problems.push(format!("{} written page(s) were never reported dirty", ver.lost));
        }
        if problems.is_empty() { Ok(None) } else { Err(problems.join("; ")) }
    }

    /// The destination (or source) state after a migration, read back into the model.
    pub(super) fn resync(&mut self, side: Side) {
        let ctx = self.side(side);
        if let Some(c) = ctx.client.as_mut() {
            match c.mig_state() {
                Ok(s) => ctx.dev.model.state = s,
                Err(_) => ctx.disconnect(),
            }
        }
        if ctx.dev.model.state == MigState::Running {
            ctx.dev.model.resume = Default::default();
        }
    }

    /// After a step whose messages the scenario damaged: the device is read back now if its
    /// client still works, else at the next connect.
    ///
    /// A request the proxy held back (reorder) reaches the server only behind the client's
    /// next one, so the first exchange here is a barrier: a state read whose answer may
    /// precede the held request's effect. Only what is read after it is the device's state.
    pub(super) fn after_damage(&mut self, side: Side) {
        let ctx = self.side(side);
        ctx.dev.uncertain = true;
        let Some(client) = ctx.client.as_mut() else { return };
        if client.mig_state().is_err() || ctx.read_back().is_err() {
            ctx.disconnect();
        }
    }
}

fn action_name(a: &ProxyAction) -> &'static str {
    match a {
        ProxyAction::CorruptHeader { .. } => "corrupt-header",
        ProxyAction::CorruptPayload { .. } => "corrupt-payload",
        ProxyAction::Truncate { .. } => "truncate",
        ProxyAction::Duplicate => "duplicate",
        ProxyAction::Delay { .. } => "delay",
        ProxyAction::Reorder => "reorder",
        ProxyAction::DropFds => "drop-fds",
        ProxyAction::AddFds { .. } => "add-fds",
    }
}
