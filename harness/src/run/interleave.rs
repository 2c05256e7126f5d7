//! The `interleave` step: a seeded random mix of device DMA, vCPU writes, region access,
//! state changes, migration data and resets, a share of them invalid on purpose, each reply
//! held against the model's prediction.
//!
//! The mix knows where the model stands: a device stuck in RESUMING with no whole stream is
//! reset half the time a state change is drawn (the only way out), and the step leaves the
//! device RUNNING, so the steps after it start from a known place.

use mock_qemu::guest::dmae::DmaCommand;
use nix::errno::Errno;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use vfu_server::devices::dma_engine::regs::REG_SCRATCH;
use vfu_server::devices::dma_engine::{REGION_DEVMEM, REGION_REGS};
use vfu_server::wire::MigState;

use super::side::{SideCtx, refused, refused_err};
use super::steps::judge;
use super::workload::{PageIndex, VcpuWriter, random_command};
use super::{Run, StepOutcome, index, rng_for};
use crate::oracle::protocol::SETTABLE;
use crate::oracle::{Expected, ResumeData};
use crate::scenario::model::{self as m, DmaOpKind, WritePattern};

const EINVAL_OR_EIO: &[Errno] = &[Errno::EINVAL, Errno::EIO];
const EINVAL_OR_EBUSY: &[Errno] = &[Errno::EINVAL, Errno::EBUSY];
const ALL_OPS: [DmaOpKind; 3] = [DmaOpKind::Fill, DmaOpKind::CopyToDevice, DmaOpKind::CopyToGuest];

/// Most findings one step collects before it stops.
const MAX_FINDINGS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dma,
    Vcpu,
    Region,
    State,
    Data,
    Reset,
}

/// What a region access out of bounds gets in the model's state: EINVAL, unless the state
/// refuses the access too (the specification does not order the two checks).
fn out_of_bounds(state_says: Expected) -> Expected {
    match state_says {
        Expected::Ok => Expected::Errno(Errno::EINVAL),
        Expected::Errno(Errno::EIO) => Expected::OneOf(EINVAL_OR_EIO),
        _ => Expected::OneOf(EINVAL_OR_EBUSY),
    }
}

/// An operation's result against its prediction, as a finding.
fn check(what: String, want: &Expected, got: Option<Errno>) -> Option<String> {
    judge(&what, want, got).err()
}

impl Run<'_> {
    pub(super) fn interleave(&mut self, st: &m::InterleaveStep) -> StepOutcome {
        let mut rng = rng_for(self.seed, self.step, 3);
        let w = &st.weights;
        let kinds = [
            (Kind::Dma, w.dma),
            (Kind::Vcpu, w.vcpu),
            (Kind::Region, w.region),
            (Kind::State, w.state),
            (Kind::Data, w.data),
            (Kind::Reset, w.reset),
        ];
        let pattern = self.scenario.workload.vcpu.as_ref().map_or(WritePattern::Random, |v| v.pattern);
        let max_len = self.scenario.workload.dma.as_ref().map_or(64 << 10, |d| d.max_len.bytes());
        let ram_end = self.layout.iter().map(|r| r.0 + r.1).max().unwrap_or(0);
        let logs_arcs = self.commands[index(st.side)].logs_arcs;
        let ctx = &mut self.sides[index(st.side)];
        let guest = ctx.dev.guest.clone();
        let pages = guest.as_ref().map(PageIndex::new);
        let mut vcpu = pages.as_ref().map(|p| VcpuWriter::new(pattern, p, &mut rng));
        let mut findings = Vec::new();
        for op in 0..st.ops {
            let Ok(kind) = kinds.choose_weighted(&mut rng, |k| k.1).map(|k| k.0) else { break };
            let invalid = rng.random_range(0..100u8) < st.invalid_percent;
            let found = match kind {
                Kind::Dma => {
                    let cmd = if invalid {
                        invalid_command(ctx, ram_end, &mut rng)
                    } else {
                        random_command(&ctx.dev, &ALL_OPS, max_len, &mut rng)
                    };
                    match cmd {
                        Some(cmd) => {
                            let client = ctx.client.as_mut().ok_or("no client")?;
                            ctx.dev.run_command(client, &cmd)?
                        }
                        None => Vec::new(),
                    }
                }
                Kind::Vcpu => {
                    if let (Some(v), Some(g), Some(p)) = (vcpu.as_mut(), &guest, &pages) {
                        v.write(g, p, &mut rng)?;
                    }
                    Vec::new()
                }
                Kind::Region => region_op(ctx, invalid, &mut rng)?.into_iter().collect(),
                Kind::State => state_op(ctx, invalid, logs_arcs, &mut rng)?.into_iter().collect(),
                Kind::Data => data_op(ctx, invalid, &mut rng)?.into_iter().collect(),
                Kind::Reset => reset(ctx)?.into_iter().collect(),
            };
            for f in found {
                findings.push(format!("operation {op} ({kind:?}): {f}"));
            }
            if findings.len() >= MAX_FINDINGS {
                break;
            }
        }
        // Leave the device RUNNING.
        if ctx.dev.model.state != MigState::Running {
            let p = ctx.dev.model.predict_set(MigState::Running as u32);
            if p.expected == Expected::Ok {
                let got = refused(ctx.client()?.set_mig_state_raw(MigState::Running as u32))?;
                if let Some(f) = check("SET RUNNING at the end".into(), &p.expected, got) {
                    findings.push(f);
                }
                ctx.dev.model.apply_set(MigState::Running as u32, &p, got.is_none());
            } else if let Some(f) = reset(ctx)? {
                findings.push(f);
            }
        }
        if findings.is_empty() {
            Ok(None)
        } else {
            let n = findings.len();
            Err(format!("{n} finding(s): {}", findings.into_iter().take(6).collect::<Vec<_>>().join("; ")))
        }
    }
}

/// A command the device must refuse: zero length, past its memory, or to unmapped memory.
fn invalid_command(ctx: &SideCtx, ram_end: u64, rng: &mut ChaCha8Rng) -> Option<DmaCommand> {
    let devmem = ctx.dev.shadow.devmem_size();
    Some(match rng.random_range(0..3) {
        0 => DmaCommand::fill(0, 0, 1),
        1 => DmaCommand::copy_to_guest(devmem.saturating_sub(8), 0, 4096),
        _ => {
            // The PCI hole, or past the end of RAM, whichever is not mapped.
            let addr = if ctx.dev.is_mapped(3 << 30, 4096) { ram_end + (1 << 20) } else { 3 << 30 };
            DmaCommand::fill(addr, 4096, rng.random())
        }
    })
}

fn region_op(ctx: &mut SideCtx, invalid: bool, rng: &mut ChaCha8Rng) -> Result<Option<String>, String> {
    let devmem = ctx.dev.shadow.devmem_size();
    let model = &ctx.dev.model;
    let client = ctx.client.as_mut().ok_or("no client")?;
    if invalid {
        let write = rng.random_bool(0.5);
        let want = out_of_bounds(if write { model.region_write() } else { model.region_read() });
        let offset = devmem - 4;
        let got = if write {
            refused(client.region_write(REGION_DEVMEM, offset, &[0; 8]))?
        } else {
            refused(client.region_read(REGION_DEVMEM, offset, 8))?
        };
        return Ok(check(
            format!("{} of 8 bytes at BAR2 {offset:#x}", if write { "write" } else { "read" }),
            &want,
            got,
        ));
    }
    Ok(match rng.random_range(0..4) {
        0 => {
            let want = model.region_read();
            match client.read_u64(REGION_REGS, REG_SCRATCH) {
                Ok(v) if v != ctx.dev.shadow.scratch_reg => {
                    Some(format!("SCRATCH reads {v:#x}; the model says {:#x}", ctx.dev.shadow.scratch_reg))
                }
                Ok(_) => check("read SCRATCH".into(), &want, None),
                Err(e) => check("read SCRATCH".into(), &want, refused_err(&e)?),
            }
        }
        1 => {
            let want = model.region_write();
            let v = rng.next_u64();
            let got = refused(client.write_u64(REGION_REGS, REG_SCRATCH, v))?;
            if got.is_none() {
                ctx.dev.shadow.scratch_reg = v;
            }
            check("write SCRATCH".into(), &want, got)
        }
        2 => {
            let want = model.region_read();
            let len = rng.random_range(1..=4096u64.min(devmem));
            let offset = rng.random_range(0..=devmem - len);
            match client.region_read(REGION_DEVMEM, offset, len as u32) {
                Ok(bytes) => {
                    let model_bytes = ctx.dev.shadow.devmem_bytes(offset, len).unwrap_or_default();
                    if bytes != model_bytes {
                        let at = bytes.iter().zip(&model_bytes).position(|(a, b)| a != b).unwrap_or(0);
                        Some(format!(
                            "BAR2 byte {:#x} reads {:#04x}; the model says {:#04x}",
                            offset + at as u64,
                            bytes.get(at).copied().unwrap_or(0),
                            model_bytes.get(at).copied().unwrap_or(0)
                        ))
                    } else {
                        check(format!("read BAR2 {offset:#x}+{len:#x}"), &want, None)
                    }
                }
                Err(e) => check(format!("read BAR2 {offset:#x}+{len:#x}"), &want, refused_err(&e)?),
            }
        }
        _ => {
            let want = model.region_write();
            let len = rng.random_range(1..=512u64.min(devmem));
            let offset = rng.random_range(0..=devmem - len);
            let mut data = vec![0u8; len as usize];
            rng.fill_bytes(&mut data);
            let got = refused(client.region_write(REGION_DEVMEM, offset, &data))?;
            if got.is_none() {
                ctx.dev.shadow.write_devmem(offset, &data);
            }
            check(format!("write BAR2 {offset:#x}+{len:#x}"), &want, got)
        }
    })
}

fn state_op(ctx: &mut SideCtx, invalid: bool, logs_arcs: bool, rng: &mut ChaCha8Rng) -> Result<Option<String>, String> {
    let stuck = ctx.dev.model.state == MigState::Resuming && ctx.dev.model.resume != ResumeData::Whole;
    if stuck && rng.random_bool(0.5) {
        return reset(ctx);
    }
    let target = if invalid {
        *[MigState::Error as u32, MigState::RunningP2p as u32, MigState::PreCopyP2p as u32, 9, u32::MAX]
            .choose(rng)
            .unwrap_or(&0)
    } else {
        *SETTABLE.choose(rng).unwrap_or(&MigState::Running) as u32
    };
    let from = ctx.dev.model.state;
    let (p, got, wrong) = ctx.set_and_check_walk(target, logs_arcs)?;
    if let Some(wrong) = wrong {
        return Ok(Some(format!("SET {target}: {wrong}")));
    }
    let finding = check(format!("SET {target} from {from:?}"), &p.expected, got);
    if finding.is_some() {
        ctx.dev.model.state = ctx.read_state()?;
    } else {
        ctx.dev.model.apply_set(target, &p, got.is_none());
    }
    Ok(finding)
}

fn data_op(ctx: &mut SideCtx, invalid: bool, rng: &mut ChaCha8Rng) -> Result<Option<String>, String> {
    let state = ctx.dev.model.state;
    let read = if invalid {
        // What the state forbids: a read outside PRE_COPY and STOP_COPY, else a write.
        !matches!(state, MigState::PreCopy | MigState::StopCopy)
    } else {
        state != MigState::Resuming
    };
    if read {
        let want = ctx.dev.model.data_read_at(ctx.out.offset, 4096);
        let got = ctx.client()?.mig_data_read(4096);
        if let Ok(bytes) = &got {
            ctx.out.offset += bytes.len() as u64;
        }
        Ok(check(format!("MIG_DATA_READ in {state:?}"), &want, refused(got)?))
    } else {
        let want = ctx.dev.model.data_write();
        let mut data = vec![0u8; rng.random_range(1..=4096)];
        rng.fill_bytes(&mut data);
        let got = refused(ctx.client()?.mig_data_write(&data))?;
        if got.is_none() {
            ctx.dev.model.wrote_data(ResumeData::Invalid);
        }
        Ok(check(format!("MIG_DATA_WRITE in {state:?}"), &want, got))
    }
}

fn reset(ctx: &mut SideCtx) -> Result<Option<String>, String> {
    let got = refused(ctx.client()?.reset())?;
    if got.is_none() {
        ctx.dev.model.reset();
        ctx.dev.shadow.reset();
        ctx.out.restart();
        ctx.after_reset()?;
    }
    Ok(check("DEVICE_RESET".into(), &Expected::Ok, got))
}
