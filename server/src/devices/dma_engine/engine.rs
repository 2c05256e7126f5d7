//! Command execution: what a doorbell write does, synchronously, within that register write.
//!
//! Validation happens first and in this order, each failure setting STATUS and touching no
//! memory: unknown CMD_OP → BAD_OP; CMD_LEN 0 → ZERO_LENGTH; CMD_LEN above the device memory
//! size (itself at most 1 GiB), or for a COPY `CMD_DEV_OFFSET + CMD_LEN` past the device
//! memory → OUT_OF_RANGE; any byte of the guest range not inside a DMA region the client
//! mapped with the needed permission (read for COPY to device, write otherwise) → DMA_FAULT.
//! That last check uses the DMA table only, so a faulting command touches nothing.
//!
//! The command then runs in chunks of the configured
//! [`chunk_size`](super::DmaEngineConfig::chunk_size) (64 KiB by default) through a bounce
//! buffer of at most that size. Each chunk's DMA is all-or-nothing, but a chunk can still fail after the pre-check
//! (a message-based DMA region whose client refuses the access): the command then stops with
//! DMA_FAULT, and the chunks before it stay done and are counted in BYTES_TO_GUEST /
//! BYTES_FROM_GUEST and in LAST_CHECKSUM.

use crate::device::DeviceContext;
use crate::dma::DmaRegionInfo;
use crate::wire::{IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INDEX_MSIX};

use super::pattern::{Fnv1a64, fill_pattern};
use super::regs::{CMD_FLAG_IRQ, OP_COPY_TO_DEVICE, OP_COPY_TO_GUEST, OP_FILL, Status};
use super::state::DmaEngineState;

/// Longest command accepted, whatever the device memory size.
pub const MAX_COMMAND_LEN: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Fill,
    ToDevice,
    ToGuest,
}

/// What a command did.
struct Outcome {
    status: Status,
    /// Bytes moved (counted even when a later chunk failed).
    moved: u64,
    checksum: Fnv1a64,
}

impl Outcome {
    fn refused(status: Status) -> Self {
        Self { status, moved: 0, checksum: Fnv1a64::new() }
    }
}

/// Executes the command in the CMD_* registers and updates STATUS, the counters and
/// LAST_CHECKSUM; raises the completion interrupt if CMD_FLAGS asks for it. DMA goes in
/// chunks of `chunk_size` bytes (nonzero).
pub(super) fn execute(state: &mut DmaEngineState, ctx: &mut DeviceContext<'_>, chunk_size: usize) {
    let (op, out) = match validate(state, ctx) {
        Ok(op) => (Some(op), run(state, ctx, op, chunk_size.max(1))),
        Err(status) => (None, Outcome::refused(status)),
    };
    let r = &mut state.regs;
    match op {
        Some(Op::Fill | Op::ToGuest) => r.bytes_to_guest = r.bytes_to_guest.wrapping_add(out.moved),
        Some(Op::ToDevice) => r.bytes_from_guest = r.bytes_from_guest.wrapping_add(out.moved),
        None => {}
    }
    r.status = out.status;
    r.last_checksum = out.checksum.finish();
    if out.status == Status::Ok {
        r.cmds_completed = r.cmds_completed.wrapping_add(1);
    } else {
        r.cmds_failed = r.cmds_failed.wrapping_add(1);
    }
    tracing::debug!(cmd_op = r.cmd_op, len = r.cmd_len, status = ?out.status, moved = out.moved, "dma-engine command");
    if r.cmd_flags & CMD_FLAG_IRQ != 0 {
        raise_completion_irq(state, ctx);
    }
}

fn validate(state: &DmaEngineState, ctx: &DeviceContext<'_>) -> Result<Op, Status> {
    let r = &state.regs;
    let op = match r.cmd_op {
        OP_FILL => Op::Fill,
        OP_COPY_TO_DEVICE => Op::ToDevice,
        OP_COPY_TO_GUEST => Op::ToGuest,
        _ => return Err(Status::BadOp),
    };
    if r.cmd_len == 0 {
        return Err(Status::ZeroLength);
    }
    let devmem = state.devmem_size();
    if r.cmd_len > devmem.min(MAX_COMMAND_LEN) {
        return Err(Status::OutOfRange);
    }
    if op != Op::Fill && r.cmd_dev_offset.checked_add(r.cmd_len).is_none_or(|end| end > devmem) {
        return Err(Status::OutOfRange);
    }
    let regions = ctx.dma_space().regions();
    if !guest_range_mapped(&regions, r.cmd_guest_addr, r.cmd_len, op != Op::ToDevice) {
        return Err(Status::DmaFault);
    }
    Ok(op)
}

/// Whether every byte of `addr`+`len` lies in `regions` (sorted by address, as
/// [`DmaSpace::regions`](crate::dma::DmaSpace::regions) returns them) with the permission.
fn guest_range_mapped(regions: &[DmaRegionInfo], addr: u64, len: u64, write: bool) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let mut at = addr;
    for r in regions {
        let r_end = r.iova.saturating_add(r.len);
        if r_end <= at {
            continue;
        }
        if r.iova > at || !(if write { r.writable } else { r.readable }) {
            return false;
        }
        at = r_end;
        if at >= end {
            return true;
        }
    }
    at >= end
}

fn run(state: &mut DmaEngineState, ctx: &mut DeviceContext<'_>, op: Op, chunk_size: usize) -> Outcome {
    let r = state.regs;
    let mut out = Outcome { status: Status::Ok, moved: 0, checksum: Fnv1a64::new() };
    let mut bounce = vec![0u8; usize::try_from(r.cmd_len).unwrap_or(chunk_size).min(chunk_size)];
    while out.moved < r.cmd_len {
        let n = usize::try_from(r.cmd_len - out.moved).unwrap_or(chunk_size).min(chunk_size);
        let guest = r.cmd_guest_addr.wrapping_add(out.moved);
        let dev = r.cmd_dev_offset.wrapping_add(out.moved);
        let Some(buf) = bounce.get_mut(..n) else {
            out.status = Status::OutOfRange;
            break;
        };
        let result = match op {
            Op::Fill => {
                fill_pattern(r.cmd_seed, out.moved, buf);
                ctx.dma_write(guest, buf).map_err(|e| tracing::debug!(error = %e, "fill chunk failed"))
            }
            Op::ToGuest => match state.devmem_range(dev, n) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    ctx.dma_write(guest, buf).map_err(|e| tracing::debug!(error = %e, "copy to guest failed"))
                }
                None => Err(()),
            },
            Op::ToDevice => ctx
                .dma_read(guest, buf)
                .map_err(|e| tracing::debug!(error = %e, "copy from guest failed"))
                .and_then(|()| state.write_devmem(dev, buf).ok_or(())),
        };
        if result.is_err() {
            out.status = Status::DmaFault;
            break;
        }
        out.checksum.update(buf);
        out.moved += n as u64;
    }
    out
}

/// Raises the completion interrupt: MSI-X vector 0 if the client attached an eventfd there,
/// else MSI vector 0 if attached, else INTx unless the guest disabled INTx in the command
/// register. IRQS_RAISED counts every trigger the IRQ table accepted (delivered, pending
/// behind a mask, or with no eventfd to go to).
fn raise_completion_irq(state: &mut DmaEngineState, ctx: &mut DeviceContext<'_>) {
    let index = if ctx.irq_has_eventfd(IRQ_INDEX_MSIX, 0) {
        IRQ_INDEX_MSIX
    } else if ctx.irq_has_eventfd(IRQ_INDEX_MSI, 0) {
        IRQ_INDEX_MSI
    } else if !state.pci.intx_disabled() {
        IRQ_INDEX_INTX
    } else {
        return;
    };
    match ctx.trigger_irq(index, 0) {
        Ok(_) => state.regs.irqs_raised = state.regs.irqs_raised.wrapping_add(1),
        Err(e) => tracing::warn!(index, error = %e, "dma-engine: completion interrupt refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(iova: u64, len: u64, readable: bool, writable: bool) -> DmaRegionInfo {
        DmaRegionInfo { iova, len, readable, writable, has_fd: true }
    }

    #[test]
    fn guest_range_check_follows_adjacent_regions_and_permissions() {
        let regions = [region(0x1000, 0x1000, true, true), region(0x2000, 0x1000, true, false)];
        assert!(guest_range_mapped(&regions, 0x1800, 0x1000, false));
        assert!(!guest_range_mapped(&regions, 0x1800, 0x1000, true), "second region is read-only");
        assert!(guest_range_mapped(&regions, 0x1000, 0x1000, true));
        assert!(!guest_range_mapped(&regions, 0x800, 0x1000, false), "starts in a hole");
        assert!(!guest_range_mapped(&regions, 0x2800, 0x1000, false), "runs past the end");
        assert!(!guest_range_mapped(&regions, u64::MAX, 2, false), "wraps");
    }

    #[test]
    fn guest_range_check_refuses_a_gap_between_regions() {
        let regions = [region(0x1000, 0x1000, true, true), region(0x3000, 0x1000, true, true)];
        assert!(!guest_range_mapped(&regions, 0x1000, 0x3000, false));
    }
}
