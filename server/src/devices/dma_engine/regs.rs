//! The BAR0 register file: offsets, values, and the plain [`Registers`] state behind them.
//!
//! The register map itself is documented in the [module](super) documentation. Accesses are
//! emulated byte by byte: every byte of a read comes from the register that covers it (0 if
//! none), every byte of a write goes to the register that covers it (ignored if none or if the
//! register is read-only). So 64-bit registers work as one 8-byte access or two 4-byte halves,
//! and any other width or alignment has the same byte-wise meaning.

use super::access::{copy_out, merge_in};
use super::state::DmaEngineState;

/// Size of BAR0.
pub const BAR0_SIZE: u64 = 4096;

/// MAGIC (RO u32): [`MAGIC`].
pub const REG_MAGIC: u64 = 0x00;
/// VERSION (RO u32): [`VERSION`].
pub const REG_VERSION: u64 = 0x04;
/// DEVMEM_SIZE (RO u64): size of BAR2 in bytes.
pub const REG_DEVMEM_SIZE: u64 = 0x08;
/// CTRL (WO u32): writing [`CTRL_RESET`] resets the device (see the module documentation).
pub const REG_CTRL: u64 = 0x10;
/// STATUS (RO u32): [`Status`] of the last command.
pub const REG_STATUS: u64 = 0x14;
/// SCRATCH (RW u64): no effect.
pub const REG_SCRATCH: u64 = 0x18;
/// CMD_OP (RW u32): [`OP_FILL`], [`OP_COPY_TO_DEVICE`] or [`OP_COPY_TO_GUEST`].
pub const REG_CMD_OP: u64 = 0x20;
/// CMD_FLAGS (RW u32): [`CMD_FLAG_IRQ`]; other bits read 0.
pub const REG_CMD_FLAGS: u64 = 0x24;
/// CMD_GUEST_ADDR (RW u64): guest (IOVA) address of the command.
pub const REG_CMD_GUEST_ADDR: u64 = 0x28;
/// CMD_DEV_OFFSET (RW u64): device memory offset of a COPY.
pub const REG_CMD_DEV_OFFSET: u64 = 0x30;
/// CMD_LEN (RW u64): length of the command in bytes.
pub const REG_CMD_LEN: u64 = 0x38;
/// CMD_SEED (RW u64): seed of a FILL.
pub const REG_CMD_SEED: u64 = 0x40;
/// DOORBELL (WO u32): writing [`DOORBELL_RING`] executes the command.
pub const REG_DOORBELL: u64 = 0x48;
/// CMDS_COMPLETED (RO u64): commands that ended with [`Status::Ok`].
pub const REG_CMDS_COMPLETED: u64 = 0x50;
/// CMDS_FAILED (RO u64): commands that ended with any other status.
pub const REG_CMDS_FAILED: u64 = 0x58;
/// BYTES_TO_GUEST (RO u64): bytes written to guest memory (FILL, COPY to guest).
pub const REG_BYTES_TO_GUEST: u64 = 0x60;
/// BYTES_FROM_GUEST (RO u64): bytes read from guest memory (COPY to device).
pub const REG_BYTES_FROM_GUEST: u64 = 0x68;
/// IRQS_RAISED (RO u64): completion interrupts triggered.
pub const REG_IRQS_RAISED: u64 = 0x70;
/// LAST_CHECKSUM (RO u64): FNV-1a 64 of the bytes the last command moved or wrote.
pub const REG_LAST_CHECKSUM: u64 = 0x78;

/// Value of MAGIC: the bytes `"DMAE"` in address order.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DMAE");
/// Value of VERSION (of this register interface).
pub const VERSION: u32 = 1;
/// CMD_OP: fill guest memory with the seeded pattern.
pub const OP_FILL: u32 = 1;
/// CMD_OP: copy guest memory to device memory.
pub const OP_COPY_TO_DEVICE: u32 = 2;
/// CMD_OP: copy device memory to guest memory.
pub const OP_COPY_TO_GUEST: u32 = 3;
/// CMD_FLAGS bit 0: raise the completion interrupt when the command ends.
pub const CMD_FLAG_IRQ: u32 = 1;
/// CTRL bit 0: guest-triggered device reset.
pub const CTRL_RESET: u32 = 1;
/// DOORBELL bit 0: execute the command.
pub const DOORBELL_RING: u32 = 1;

/// Outcome of the last command, as read from STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum Status {
    /// No command since power-on or reset.
    #[default]
    Idle = 0,
    /// The command completed.
    Ok = 1,
    /// Guest memory in the range was unmapped or lacked the permission.
    DmaFault = 2,
    /// CMD_OP is not a known operation.
    BadOp = 3,
    /// CMD_LEN exceeds the device memory size, or the device memory range of a COPY does.
    OutOfRange = 4,
    /// CMD_LEN is 0.
    ZeroLength = 5,
}

impl Status {
    /// The status with register value `raw`, if there is one.
    pub fn from_raw(raw: u32) -> Option<Self> {
        [Self::Idle, Self::Ok, Self::DmaFault, Self::BadOp, Self::OutOfRange, Self::ZeroLength]
            .into_iter()
            .find(|s| *s as u32 == raw)
    }
}

/// The register state of the device (everything in BAR0 that is not derived).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Registers {
    /// SCRATCH.
    pub scratch: u64,
    /// CMD_OP as written (unknown values are kept and refused by the doorbell).
    pub cmd_op: u32,
    /// CMD_FLAGS (only defined bits are kept).
    pub cmd_flags: u32,
    /// CMD_GUEST_ADDR.
    pub cmd_guest_addr: u64,
    /// CMD_DEV_OFFSET.
    pub cmd_dev_offset: u64,
    /// CMD_LEN.
    pub cmd_len: u64,
    /// CMD_SEED.
    pub cmd_seed: u64,
    /// STATUS.
    pub status: Status,
    /// CMDS_COMPLETED.
    pub cmds_completed: u64,
    /// CMDS_FAILED.
    pub cmds_failed: u64,
    /// BYTES_TO_GUEST.
    pub bytes_to_guest: u64,
    /// BYTES_FROM_GUEST.
    pub bytes_from_guest: u64,
    /// IRQS_RAISED.
    pub irqs_raised: u64,
    /// LAST_CHECKSUM.
    pub last_checksum: u64,
}

impl Registers {
    /// Every field with its register name, in register-map order (for diffs and, later,
    /// serialization).
    pub fn fields(&self) -> [(&'static str, u64); 14] {
        [
            ("STATUS", self.status as u64),
            ("SCRATCH", self.scratch),
            ("CMD_OP", self.cmd_op.into()),
            ("CMD_FLAGS", self.cmd_flags.into()),
            ("CMD_GUEST_ADDR", self.cmd_guest_addr),
            ("CMD_DEV_OFFSET", self.cmd_dev_offset),
            ("CMD_LEN", self.cmd_len),
            ("CMD_SEED", self.cmd_seed),
            ("CMDS_COMPLETED", self.cmds_completed),
            ("CMDS_FAILED", self.cmds_failed),
            ("BYTES_TO_GUEST", self.bytes_to_guest),
            ("BYTES_FROM_GUEST", self.bytes_from_guest),
            ("IRQS_RAISED", self.irqs_raised),
            ("LAST_CHECKSUM", self.last_checksum),
        ]
    }
}

/// A register of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reg {
    Magic,
    Version,
    DevmemSize,
    Ctrl,
    Status,
    Scratch,
    CmdOp,
    CmdFlags,
    CmdGuestAddr,
    CmdDevOffset,
    CmdLen,
    CmdSeed,
    Doorbell,
    CmdsCompleted,
    CmdsFailed,
    BytesToGuest,
    BytesFromGuest,
    IrqsRaised,
    LastChecksum,
}

/// How a register reacts to writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Writes are ignored.
    ReadOnly,
    /// Writes store (masked to the defined bits).
    ReadWrite,
    /// Writes trigger an action; reads return 0.
    Action,
}

/// `(offset, width, register)` in ascending offset order.
pub(super) const MAP: [(u64, u64, Reg); 19] = [
    (REG_MAGIC, 4, Reg::Magic),
    (REG_VERSION, 4, Reg::Version),
    (REG_DEVMEM_SIZE, 8, Reg::DevmemSize),
    (REG_CTRL, 4, Reg::Ctrl),
    (REG_STATUS, 4, Reg::Status),
    (REG_SCRATCH, 8, Reg::Scratch),
    (REG_CMD_OP, 4, Reg::CmdOp),
    (REG_CMD_FLAGS, 4, Reg::CmdFlags),
    (REG_CMD_GUEST_ADDR, 8, Reg::CmdGuestAddr),
    (REG_CMD_DEV_OFFSET, 8, Reg::CmdDevOffset),
    (REG_CMD_LEN, 8, Reg::CmdLen),
    (REG_CMD_SEED, 8, Reg::CmdSeed),
    (REG_DOORBELL, 4, Reg::Doorbell),
    (REG_CMDS_COMPLETED, 8, Reg::CmdsCompleted),
    (REG_CMDS_FAILED, 8, Reg::CmdsFailed),
    (REG_BYTES_TO_GUEST, 8, Reg::BytesToGuest),
    (REG_BYTES_FROM_GUEST, 8, Reg::BytesFromGuest),
    (REG_IRQS_RAISED, 8, Reg::IrqsRaised),
    (REG_LAST_CHECKSUM, 8, Reg::LastChecksum),
];

impl Reg {
    pub(super) fn kind(self) -> Kind {
        match self {
            Reg::Ctrl | Reg::Doorbell => Kind::Action,
            Reg::Scratch
            | Reg::CmdOp
            | Reg::CmdFlags
            | Reg::CmdGuestAddr
            | Reg::CmdDevOffset
            | Reg::CmdLen
            | Reg::CmdSeed => Kind::ReadWrite,
            _ => Kind::ReadOnly,
        }
    }

    /// The value a read returns.
    pub(super) fn value(self, state: &DmaEngineState) -> u64 {
        let r = &state.regs;
        match self {
            Reg::Magic => MAGIC.into(),
            Reg::Version => VERSION.into(),
            Reg::DevmemSize => state.devmem_size(),
            Reg::Ctrl | Reg::Doorbell => 0,
            Reg::Status => r.status as u64,
            Reg::Scratch => r.scratch,
            Reg::CmdOp => r.cmd_op.into(),
            Reg::CmdFlags => r.cmd_flags.into(),
            Reg::CmdGuestAddr => r.cmd_guest_addr,
            Reg::CmdDevOffset => r.cmd_dev_offset,
            Reg::CmdLen => r.cmd_len,
            Reg::CmdSeed => r.cmd_seed,
            Reg::CmdsCompleted => r.cmds_completed,
            Reg::CmdsFailed => r.cmds_failed,
            Reg::BytesToGuest => r.bytes_to_guest,
            Reg::BytesFromGuest => r.bytes_from_guest,
            Reg::IrqsRaised => r.irqs_raised,
            Reg::LastChecksum => r.last_checksum,
        }
    }

    /// Stores `v` into a read-write register (other registers ignore it).
    pub(super) fn store(self, r: &mut Registers, v: u64) {
        match self {
            Reg::Scratch => r.scratch = v,
            Reg::CmdOp => r.cmd_op = v as u32,
            Reg::CmdFlags => r.cmd_flags = v as u32 & CMD_FLAG_IRQ,
            Reg::CmdGuestAddr => r.cmd_guest_addr = v,
            Reg::CmdDevOffset => r.cmd_dev_offset = v,
            Reg::CmdLen => r.cmd_len = v,
            Reg::CmdSeed => r.cmd_seed = v,
            _ => {}
        }
    }
}

/// Reads `data.len()` bytes of BAR0 at `offset`: bytes no register covers read 0.
pub(super) fn read(state: &DmaEngineState, offset: u64, data: &mut [u8]) {
    data.fill(0);
    for (at, width, reg) in MAP {
        copy_out(reg.value(state), at, width, offset, data);
    }
}

/// What a write to BAR0 asks of the device besides storing register bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    /// CTRL bit 0 was written as 1.
    Reset,
    /// DOORBELL bit 0 was written as 1.
    Ring,
}

/// Writes `data` at `offset` of BAR0. Registers are visited in ascending address order: a
/// read-write register takes the written bytes (masked to its defined bits), a read-only one
/// ignores them, and an action register (CTRL, DOORBELL) calls `on_effect` when bit 0 of the
/// value formed by the written bytes alone (bytes not written count as 0) is set. So a write
/// spanning several registers acts on them in address order.
pub(super) fn write(
    state: &mut DmaEngineState,
    offset: u64,
    data: &[u8],
    mut on_effect: impl FnMut(&mut DmaEngineState, Effect),
) {
    for (at, width, reg) in MAP {
        match reg.kind() {
            Kind::ReadOnly => {}
            Kind::ReadWrite => {
                if let Some(v) = merge_in(reg.value(state), at, width, offset, data) {
                    reg.store(&mut state.regs, v);
                }
            }
            Kind::Action => {
                let written = merge_in(0, at, width, offset, data).unwrap_or(0) as u32;
                match reg {
                    Reg::Ctrl if written & CTRL_RESET != 0 => on_effect(state, Effect::Reset),
                    Reg::Doorbell if written & DOORBELL_RING != 0 => on_effect(state, Effect::Ring),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_is_sorted_aligned_and_inside_bar0() {
        let mut end = 0;
        for (at, width, _) in MAP {
            assert!(at >= end && at % width == 0 && at + width <= BAR0_SIZE, "{at:#x}");
            end = at + width;
        }
    }

    #[test]
    fn status_round_trips_through_its_raw_value() {
        for raw in 0..6 {
            assert_eq!(Status::from_raw(raw).map(|s| s as u32), Some(raw));
        }
        assert_eq!(Status::from_raw(6), None);
    }

    #[test]
    fn magic_reads_as_dmae_in_address_order() {
        assert_eq!(MAGIC.to_le_bytes(), *b"DMAE");
    }
}
