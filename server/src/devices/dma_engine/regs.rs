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
/// BG_CTRL (RW u32): [`BG_CTRL_ENABLE`] enables the background writer; other bits read 0.
pub const REG_BG_CTRL: u64 = 0x80;
/// BG_STATUS (RO u32): [`BgStatus`] of the background writer.
pub const REG_BG_STATUS: u64 = 0x84;
/// BG_SEED (RW u64): seed of the background writes.
pub const REG_BG_SEED: u64 = 0x88;
/// BG_ADDR (RW u64): guest address of the background writer's window (8-byte aligned).
pub const REG_BG_ADDR: u64 = 0x90;
/// BG_LEN (RW u64): length of the window in bytes (a multiple of 8, non-zero).
pub const REG_BG_LEN: u64 = 0x98;
/// BG_WRITES (RO u64): background writes completed (in memory and marked dirty).
pub const REG_BG_WRITES: u64 = 0xa0;
/// BG_INTERVAL_US (RW u32): pause between two background writes in microseconds (0: yield only).
pub const REG_BG_INTERVAL_US: u64 = 0xa8;
/// The BAR0 bytes of the background writer's registers, BG_CTRL to BG_INTERVAL_US.
pub const BG_REGS: std::ops::Range<u64> = REG_BG_CTRL..REG_BG_INTERVAL_US + 4;

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
/// BG_CTRL bit 0: enable the background writer.
pub const BG_CTRL_ENABLE: u32 = 1;

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

/// State of the background writer, as read from BG_STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum BgStatus {
    /// Disabled (BG_CTRL bit 0 clear).
    #[default]
    Idle = 0,
    /// Enabled, and the device runs (RUNNING or PRE_COPY): the thread is writing.
    Running = 1,
    /// Enabled, but the device is stopped: the thread is parked until it runs again.
    Paused = 2,
    /// A write hit memory not mapped with an fd and write permission, or the writer was
    /// enabled with an invalid window: it stopped, and BG_CTRL bit 0 reads 0.
    Fault = 3,
}

impl BgStatus {
    /// The status with register value `raw`, if there is one.
    pub fn from_raw(raw: u32) -> Option<Self> {
        [Self::Idle, Self::Running, Self::Paused, Self::Fault].into_iter().find(|s| *s as u32 == raw)
    }
}

/// The background writer's registers (see [`background`](super::background)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BgRegisters {
    /// BG_CTRL (only [`BG_CTRL_ENABLE`] is kept).
    pub ctrl: u32,
    /// BG_STATUS.
    pub status: BgStatus,
    /// BG_SEED.
    pub seed: u64,
    /// BG_ADDR.
    pub addr: u64,
    /// BG_LEN.
    pub len: u64,
    /// BG_WRITES.
    pub writes: u64,
    /// BG_INTERVAL_US.
    pub interval_us: u32,
}

impl BgRegisters {
    /// Whether BG_CTRL bit 0 is set.
    pub fn enabled(&self) -> bool {
        self.ctrl & BG_CTRL_ENABLE != 0
    }

    /// Whether BG_ADDR and BG_LEN make a window the writer can run on: BG_LEN a non-zero
    /// multiple of 8, BG_ADDR 8-byte aligned, the window not wrapping around.
    pub fn window_is_valid(&self) -> bool {
        self.len != 0
            && self.len.is_multiple_of(8)
            && self.addr.is_multiple_of(8)
            && self.addr.checked_add(self.len).is_some()
    }

    /// Stops the writer on a fault: BG_STATUS FAULT, BG_CTRL 0.
    pub fn fault(&mut self) {
        self.ctrl = 0;
        self.status = BgStatus::Fault;
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
    /// The background writer's registers, BG_CTRL to BG_INTERVAL_US.
    pub bg: BgRegisters,
}

impl Registers {
    /// How many fields [`fields`](Self::fields) lists.
    pub const FIELD_COUNT: usize = 21;

    /// Every field with its register name, in register-map order (for diffs and the
    /// migration stream's REGISTERS record).
    pub fn fields(&self) -> [(&'static str, u64); Self::FIELD_COUNT] {
        let bg = &self.bg;
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
            ("BG_CTRL", bg.ctrl.into()),
            ("BG_STATUS", bg.status as u64),
            ("BG_SEED", bg.seed),
            ("BG_ADDR", bg.addr),
            ("BG_LEN", bg.len),
            ("BG_WRITES", bg.writes),
            ("BG_INTERVAL_US", bg.interval_us.into()),
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
    BgCtrl,
    BgStatus,
    BgSeed,
    BgAddr,
    BgLen,
    BgWrites,
    BgIntervalUs,
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
pub(super) const MAP: [(u64, u64, Reg); 26] = [
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
    (REG_BG_CTRL, 4, Reg::BgCtrl),
    (REG_BG_STATUS, 4, Reg::BgStatus),
    (REG_BG_SEED, 8, Reg::BgSeed),
    (REG_BG_ADDR, 8, Reg::BgAddr),
    (REG_BG_LEN, 8, Reg::BgLen),
    (REG_BG_WRITES, 8, Reg::BgWrites),
    (REG_BG_INTERVAL_US, 4, Reg::BgIntervalUs),
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
            | Reg::CmdSeed
            | Reg::BgCtrl
            | Reg::BgSeed
            | Reg::BgAddr
            | Reg::BgLen
            | Reg::BgIntervalUs => Kind::ReadWrite,
            _ => Kind::ReadOnly,
        }
    }

    /// The value a read returns, from registers `r` of a device with `devmem_size` bytes of
    /// device memory.
    pub(super) fn value(self, r: &Registers, devmem_size: u64) -> u64 {
        match self {
            Reg::Magic => MAGIC.into(),
            Reg::Version => VERSION.into(),
            Reg::DevmemSize => devmem_size,
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
            Reg::BgCtrl => r.bg.ctrl.into(),
            Reg::BgStatus => r.bg.status as u64,
            Reg::BgSeed => r.bg.seed,
            Reg::BgAddr => r.bg.addr,
            Reg::BgLen => r.bg.len,
            Reg::BgWrites => r.bg.writes,
            Reg::BgIntervalUs => r.bg.interval_us.into(),
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
            Reg::BgCtrl => r.bg.ctrl = v as u32 & BG_CTRL_ENABLE,
            Reg::BgSeed => r.bg.seed = v,
            Reg::BgAddr => r.bg.addr = v,
            Reg::BgLen => r.bg.len = v,
            Reg::BgIntervalUs => r.bg.interval_us = v as u32,
            _ => {}
        }
    }
}

/// Reads `data.len()` bytes of BAR0 at `offset` from registers `r` of a device with
/// `devmem_size` bytes of device memory: bytes no register covers read 0.
pub(super) fn read(r: &Registers, devmem_size: u64, offset: u64, data: &mut [u8]) {
    data.fill(0);
    for (at, width, reg) in MAP {
        copy_out(reg.value(r, devmem_size), at, width, offset, data);
    }
}

/// Whether an access of `len` bytes at `offset` covers any byte of `range`.
pub(super) fn touches(offset: u64, len: usize, range: std::ops::Range<u64>) -> bool {
    let end = offset.saturating_add(len as u64);
    len > 0 && offset < range.end && range.start < end
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
                if let Some(v) = merge_in(reg.value(&state.regs, state.devmem_size()), at, width, offset, data) {
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
        for raw in 0..4 {
            assert_eq!(BgStatus::from_raw(raw).map(|s| s as u32), Some(raw));
        }
        assert_eq!(BgStatus::from_raw(4), None);
    }

    #[test]
    fn fields_list_every_stored_register() {
        assert_eq!(Registers::default().fields().len(), Registers::FIELD_COUNT);
        let names: Vec<_> = Registers::default().fields().iter().map(|f| f.0).collect();
        assert_eq!(
            &names[14..],
            ["BG_CTRL", "BG_STATUS", "BG_SEED", "BG_ADDR", "BG_LEN", "BG_WRITES", "BG_INTERVAL_US"]
        );
    }

    #[test]
    fn a_window_must_be_aligned_non_empty_and_not_wrap() {
        let w = |addr, len| BgRegisters { addr, len, ..BgRegisters::default() }.window_is_valid();
        assert!(w(0x1000, 8) && w(0, 0x10_0000) && w(u64::MAX - 15, 8));
        assert!(!w(0x1000, 0), "empty");
        assert!(!w(0x1004, 8), "unaligned address");
        assert!(!w(0x1000, 12), "length not a multiple of 8");
        assert!(!w(u64::MAX - 7, 16), "wraps");
    }

    #[test]
    fn touches_is_byte_exact() {
        assert!(touches(0x7c, 5, BG_REGS) && touches(0xab, 1, BG_REGS) && touches(0, 4096, BG_REGS));
        assert!(!touches(0x7c, 4, BG_REGS) && !touches(0xac, 4, BG_REGS) && !touches(0x80, 0, BG_REGS));
        assert!(!touches(u64::MAX, 8, BG_REGS));
    }

    #[test]
    fn magic_reads_as_dmae_in_address_order() {
        assert_eq!(MAGIC.to_le_bytes(), *b"DMAE");
    }
}
