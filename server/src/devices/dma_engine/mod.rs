//! `dma-engine`: a PCI device that moves bytes between guest memory and its own memory.
//!
//! It is the device the test harness live-migrates, so its whole state is observable through
//! its registers and regions, and it is held in one plain value, [`DmaEngineState`], apart
//! from the fds and mappings (see [`state`]). Commands run synchronously inside the doorbell
//! write, so after any message they are done. The one DMA of its own is the background writer
//! ([`background`]): a device thread that, once enabled, writes guest memory while the device
//! runs, concurrently with the client's requests; a stopped device has parked it.
//!
//! # Regions
//!
//! | index | region | size | access |
//! |---|---|---|---|
//! | 0 | BAR0 registers | 4 KiB | read/write, trapped |
//! | 2 | BAR2 device memory | `devmem_size` (default 8 MiB) | read/write, trapped (every write is seen) |
//! | 4 | BAR4 shared scratch | 64 KiB, memfd | read/write; mmappable areas `[0, 16 KiB)` and `[32 KiB, 64 KiB)` (sparse mmap), the middle stays trapped |
//! | 7 | configuration space | 256 bytes | see [`pci_config`] |
//!
//! BAR4 has no function besides being memory both sides can map; the device never DMAs to it.
//!
//! # BAR0 register map
//!
//! | offset | width | access | name | meaning |
//! |---|---|---|---|---|
//! | 0x00 | 4 | RO | MAGIC | `0x45414d44`, the bytes `"DMAE"` |
//! | 0x04 | 4 | RO | VERSION | 1 |
//! | 0x08 | 8 | RO | DEVMEM_SIZE | size of BAR2 in bytes |
//! | 0x10 | 4 | WO | CTRL | bit 0: write 1 to reset the device (guest reset, below); reads 0 |
//! | 0x14 | 4 | RO | STATUS | outcome of the last command: 0 IDLE (none since reset), 1 OK, 2 DMA_FAULT, 3 BAD_OP, 4 OUT_OF_RANGE, 5 ZERO_LENGTH |
//! | 0x18 | 8 | RW | SCRATCH | no effect |
//! | 0x20 | 4 | RW | CMD_OP | 1 FILL guest memory with the seeded pattern, 2 COPY guest → device memory, 3 COPY device memory → guest; other values are kept and refused (BAD_OP) |
//! | 0x24 | 4 | RW | CMD_FLAGS | bit 0: raise the completion interrupt; other bits read 0 |
//! | 0x28 | 8 | RW | CMD_GUEST_ADDR | guest (IOVA) address |
//! | 0x30 | 8 | RW | CMD_DEV_OFFSET | device memory offset (COPY only) |
//! | 0x38 | 8 | RW | CMD_LEN | length in bytes |
//! | 0x40 | 8 | RW | CMD_SEED | pattern seed (FILL only) |
//! | 0x48 | 4 | WO | DOORBELL | bit 0: write 1 to execute the command before the write returns; reads 0 |
//! | 0x50 | 8 | RO | CMDS_COMPLETED | commands that ended OK |
//! | 0x58 | 8 | RO | CMDS_FAILED | commands that ended with any other status |
//! | 0x60 | 8 | RO | BYTES_TO_GUEST | bytes written to guest memory (FILL, COPY to guest) |
//! | 0x68 | 8 | RO | BYTES_FROM_GUEST | bytes read from guest memory (COPY to device) |
//! | 0x70 | 8 | RO | IRQS_RAISED | completion interrupts triggered |
//! | 0x78 | 8 | RO | LAST_CHECKSUM | FNV-1a 64 of the bytes the last command moved or wrote (`0xcbf29ce484222325`, the hash of nothing, if it moved none; 0 at power-on) |
//! | 0x80 | 4 | RW | BG_CTRL | bit 0: enable the background writer; other bits read 0 |
//! | 0x84 | 4 | RO | BG_STATUS | 0 IDLE (disabled), 1 RUNNING (enabled and the device runs), 2 PAUSED (enabled, device stopped), 3 FAULT (a write hit memory not mapped with an fd and write permission, or the window is invalid; the writer stopped, BG_CTRL bit 0 reads 0) |
//! | 0x88 | 8 | RW | BG_SEED | seed of the writes |
//! | 0x90 | 8 | RW | BG_ADDR | guest address of the window (8-byte aligned) |
//! | 0x98 | 8 | RW | BG_LEN | window length in bytes (a multiple of 8, non-zero) |
//! | 0xA0 | 8 | RO | BG_WRITES | writes completed: in memory and marked dirty |
//! | 0xA8 | 4 | RW | BG_INTERVAL_US | pause between two writes, microseconds (0: yield only) |
//!
//! Accesses are byte-granular: each byte of a read comes from the register covering it, each
//! byte of a write goes to it. So a 64-bit register is one 8-byte access or two 4-byte halves
//! (low half at the lower address), and any other width or alignment behaves byte-wise.
//! Bytes no register covers (0x4c-0x4f, 0xac onwards) read 0 and ignore writes; read-only
//! bytes ignore writes. A write spanning several registers acts on them in address order
//! (so CTRL resets before the command registers are written, and DOORBELL runs after). For
//! CTRL and DOORBELL only the written bytes count: bit 0 must be among them and be 1.
//!
//! # Commands
//!
//! Writing DOORBELL executes the command in the CMD_* registers; validation, chunking and
//! fault handling are described in [`engine`]. In short: nothing is touched unless the whole
//! guest range is mapped with the right permission; a command moves at most the device memory
//! size (at most 1 GiB), in chunks (64 KiB by default) through a bounded bounce buffer.
//!
//! FILL writes the pattern of [`fill_pattern`]: the 8-byte word at index `k` from the
//! command's start is `splitmix64(CMD_SEED + k)` (wrapping) in little-endian.
//!
//! # Background writer
//!
//! With BG_CTRL bit 0 set and the device RUNNING or PRE_COPY, a device thread writes guest
//! memory, one 8-byte word at a time, BG_INTERVAL_US apart: write number `k` (BG_WRITES at
//! the time) stores `splitmix64(BG_SEED + k)` at
//! `BG_ADDR + 8 * (splitmix64(BG_SEED ^ k * 0x9e37_79b9_7f4a_7c15) % (BG_LEN / 8))`
//! ([`background_write`]), through the DMA table, so its page is marked dirty when logging is
//! on, after the bytes are written; only then is BG_WRITES incremented. A client that reads
//! BG_WRITES = `n` knows writes `0..n` are in memory and marked. Writes go only to regions
//! mapped with an fd and write permission; anything else, and enabling with BG_LEN 0 or an
//! unaligned BG_ADDR or BG_LEN, is FAULT. Arcs to a stopped state park it before they return
//! (PAUSED), arcs back to RUNNING resume it, writing BG_CTRL = 0 returns once it is parked,
//! resets disable it and zero every BG_* register, a disconnect and dropping the device stop
//! and join its thread; the BG_* registers migrate with the others. The details, and how the
//! thread shares the registers with the session, are in [`background`].
//!
//! # Interrupts
//!
//! IRQ indexes: INTx (1 vector, maskable, automasked), MSI (1, NORESIZE), MSI-X (4, maskable,
//! NORESIZE), ERR (1), REQ (1). When a command with CMD_FLAGS bit 0 ends, OK or not, the
//! completion interrupt goes to MSI-X vector 0 if the client attached an eventfd there, else
//! to MSI vector 0 if attached, else to INTx unless the guest set INTx disable in the command
//! register. IRQS_RAISED counts each such trigger. MSI-X vectors 1-3, ERR and REQ are never
//! raised.
//!
//! # Resets
//!
//! - Guest reset (CTRL bit 0): registers and counters to power-on values (the background
//!   writer parked and disabled, every BG_* register 0), device memory and shared scratch
//!   memory zeroed; configuration space (BARs, command register) is kept, as the guest's view
//!   of the device must survive. It involves nothing but the device.
//! - DEVICE_RESET ([`Device::reset`]): the same, plus configuration space to its defaults.
//!
//! The command register's memory space and bus master bits are stored but not enforced.
//!
//! # Migration
//!
//! The device is migratable, with PRE_COPY unless [`DmaEngineConfig::pre_copy`] is off
//! ([`Device::migration`] returns it; see [`migration`] for the arcs, the errnos and the
//! design, [`stream`] for the versioned, checksummed stream format). Device memory is
//! pre-copied in rounds with the device's own dirty tracking at 4 KiB pages ([`pages`]): the
//! first round sends all of it, later rounds what was written since. Registers, configuration
//! space and the whole shared scratch memory (mmappable, so untrackable) go in STOP_COPY with
//! the pages still dirty. While stopped (STOP, STOP_COPY, RESUMING) the device refuses writes
//! to BAR0, BAR2 and BAR4 with EBUSY and its background writer is parked (the arc that
//! stopped it parked it before returning), so it never DMAs then; configuration space stays
//! writable. The registers carried include the background writer's, so a destination whose
//! source had it enabled resumes writing from BG_WRITES once it reaches RUNNING. DEVICE_RESET
//! ends any migration and returns it to RUNNING; a guest reset (CTRL) leaves the migration
//! state alone.
//!
//! # Options
//!
//! [`DmaEngineConfig`], each checked by [`DmaEngineConfig::validate`] when the device is built
//! (the `vfu-server` flag in parentheses, see [`crate::cli`]):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `devmem_size` (`--devmem-size`) | 8 MiB | size of BAR2: a power of two from 4 KiB to 1 GiB |
//! | `chunk_size` (`--chunk-size`) | 64 KiB | bytes per DMA access and size of the bounce buffer: a power of two from 4 KiB to 1 MiB |
//! | `pre_copy` (`--no-pre-copy` clears it) | on | PRE_COPY support; off, the device migrates by stop-and-copy only (MIGRATION flags STOP_COPY alone, every arc touching PRE_COPY refused with EINVAL) |
//! | `fail_arcs` (`--fail-arc FROM:TO`, repeatable) | none | fault injection: these direct arcs are refused with EIO |
//! | `fail_read_after` (`--fail-read-after`) | none | fault injection: MIG_DATA_READ fails with EIO once this many bytes of a stream were read |

mod access;
pub mod background;
pub mod config;
pub mod engine;
pub mod migration;
pub mod page_sums;
pub mod pages;
pub mod pattern;
pub mod pci_config;
pub mod regs;
pub mod state;
pub mod stream;

#[cfg(test)]
mod background_tests;
#[cfg(test)]
mod migration_tests;
#[cfg(test)]
mod one_stream_tests;
#[cfg(test)]
mod test_rig;
#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::errno::Errno;

use crate::device::{Device, DeviceContext, DeviceSpec, RegionSpec};
use crate::irq::IrqSpec;
use crate::migration::Migratable;
use crate::mmap::MappedRegion;
use crate::wire::{
    IRQ_INDEX_ERR, IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INDEX_MSIX, IRQ_INDEX_REQ, IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD,
    IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, PCI_CONFIG_REGION_INDEX, PCI_NUM_IRQS, PCI_NUM_REGIONS,
};

pub use background::background_write;
pub use config::{
    ArcSet, ConfigError, DEFAULT_CHUNK_SIZE, DEFAULT_DEVMEM_SIZE, DmaEngineConfig, SizeParseError, parse_size,
};
pub use pattern::{fill_pattern, fnv1a64, pattern_byte, splitmix64};
pub use pci_config::{CONFIG_SPACE_SIZE, PciConfigState, SCRATCH_SIZE};
pub use regs::{BAR0_SIZE, BgRegisters, BgStatus, Registers, Status};
pub use state::DmaEngineState;

/// Region index of the registers (BAR0).
pub const REGION_REGS: u32 = 0;
/// Region index of the device memory (BAR2).
pub const REGION_DEVMEM: u32 = 2;
/// Region index of the shared scratch memory (BAR4).
pub const REGION_SCRATCH: u32 = 4;
/// Region index of configuration space.
pub const REGION_CONFIG: u32 = PCI_CONFIG_REGION_INDEX;
/// The mmappable areas of BAR4, as `(offset, size)`.
pub const SCRATCH_MMAP_AREAS: [(u64, u64); 2] = [(0, 16 << 10), (32 << 10, 32 << 10)];

/// The DMA engine device.
#[derive(Debug)]
pub struct DmaEngine {
    config: DmaEngineConfig,
    state: DmaEngineState,
    /// The shared scratch memory (BAR4), mapped here and offered to the client.
    scratch: MappedRegion,
    scratch_fd: Arc<OwnedFd>,
    /// Migration state and streams.
    mig: migration::Migration,
    /// The background writer's thread, which owns the BG_* registers while it runs.
    bg: background::Writer,
}

/// Everything observable about a device at one moment, for comparing two devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaEngineSnapshot {
    /// Registers, configuration space, device memory.
    pub state: DmaEngineState,
    /// Contents of the shared scratch memory (BAR4).
    pub scratch: Vec<u8>,
}

impl DmaEngine {
    /// A device in its power-on state, after validating `config`.
    pub fn new(config: DmaEngineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let devmem_size = usize::try_from(config.devmem_size)
            .map_err(|_| ConfigError::DevmemOutOfRange { size: config.devmem_size })?;
        let (scratch, fd) =
            MappedRegion::memfd(c"dma-engine-scratch", SCRATCH_SIZE).map_err(ConfigError::SharedMemory)?;
        let state = DmaEngineState::power_on(devmem_size);
        let mig = migration::Migration::default();
        Ok(Self { config, state, scratch, scratch_fd: Arc::new(fd), mig, bg: background::Writer::default() })
    }

    /// The configuration the device was built with.
    pub fn config(&self) -> DmaEngineConfig {
        self.config
    }

    /// The device's state (everything but the shared scratch memory). While the background
    /// writer runs, its BG_* registers here are those it was last parked with (it counts
    /// BG_WRITES on its own copy, see [`background`]); [`snapshot`](Self::snapshot) and BAR0
    /// reads give the live values.
    pub fn state(&self) -> &DmaEngineState {
        &self.state
    }

    /// A copy of the shared scratch memory (BAR4), as the device sees it now.
    pub fn shared_memory(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.scratch.len()];
        if self.scratch.read_at(0, &mut buf).is_none() {
            tracing::warn!("dma-engine: reading the scratch memory failed");
        }
        buf
    }

    /// The state (with the background writer's live registers) and the shared scratch memory
    /// together.
    pub fn snapshot(&self) -> DmaEngineSnapshot {
        let mut state = self.state.clone();
        state.regs = self.live_registers();
        DmaEngineSnapshot { state, scratch: self.shared_memory() }
    }

    fn zero_scratch(scratch: &MappedRegion) {
        if scratch.fill(0, scratch.len(), 0).is_none() {
            tracing::warn!("dma-engine: zeroing the scratch memory failed");
        }
    }

    fn write_regs(&mut self, ctx: &mut DeviceContext<'_>, offset: u64, data: &[u8]) {
        // A guest reset and the BG_* registers need the writer's registers back first.
        let touches = |range| regs::touches(offset, data.len(), range);
        let background = touches(regs::REG_CTRL..regs::REG_CTRL + 4) || touches(regs::BG_REGS);
        if background {
            self.park_background();
        }
        let scratch = &self.scratch;
        let chunk_size = self.config.chunk_size;
        regs::write(&mut self.state, offset, data, |state, effect| match effect {
            regs::Effect::Reset => {
                state.guest_reset();
                Self::zero_scratch(scratch);
            }
            regs::Effect::Ring => engine::execute(state, ctx, chunk_size),
        });
        if background {
            self.background_ctrl_written(touches(regs::REG_BG_CTRL..regs::REG_BG_CTRL + 4));
            self.settle_background(ctx);
        }
    }
}

fn errno_einval<T>(v: Option<T>) -> Result<T, Errno> {
    v.ok_or(Errno::EINVAL)
}

impl Device for DmaEngine {
    fn spec(&self) -> DeviceSpec {
        let scratch = RegionSpec::rw_mmap(REGION_SCRATCH, SCRATCH_SIZE, &self.scratch_fd, &SCRATCH_MMAP_AREAS);
        let irq = |index, count, flags| IrqSpec { index, count, flags: IRQ_INFO_EVENTFD | flags };
        DeviceSpec {
            pci: true,
            num_regions: PCI_NUM_REGIONS,
            regions: vec![
                RegionSpec::rw(REGION_REGS, BAR0_SIZE),
                RegionSpec::rw(REGION_DEVMEM, self.state.devmem_size()),
                scratch,
                RegionSpec::rw(REGION_CONFIG, CONFIG_SPACE_SIZE),
            ],
            num_irqs: PCI_NUM_IRQS,
            irqs: vec![
                irq(IRQ_INDEX_INTX, 1, IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED),
                irq(IRQ_INDEX_MSI, 1, IRQ_INFO_NORESIZE),
                irq(IRQ_INDEX_MSIX, 4, IRQ_INFO_MASKABLE | IRQ_INFO_NORESIZE),
                irq(IRQ_INDEX_ERR, 1, 0),
                irq(IRQ_INDEX_REQ, 1, 0),
            ],
        }
    }

    fn region_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        match region {
            REGION_REGS => regs::read(&self.live_registers(), self.state.devmem_size(), offset, data),
            REGION_DEVMEM => data.copy_from_slice(errno_einval(self.state.devmem_range(offset, data.len()))?),
            REGION_SCRATCH => errno_einval(self.scratch.read_at(offset, data))?,
            REGION_CONFIG => self.state.pci.read(self.state.devmem_size(), offset, data),
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    fn region_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        if region != REGION_CONFIG && self.mig.is_frozen() {
            return Err(Errno::EBUSY); // stopped: no state change, no DMA (see `migration`)
        }
        match region {
            REGION_REGS => self.write_regs(ctx, offset, data),
            REGION_DEVMEM => errno_einval(self.state.write_devmem(offset, data))?,
            REGION_SCRATCH => errno_einval(self.scratch.write_at(offset, data))?,
            REGION_CONFIG => {
                let size = self.state.devmem_size();
                self.state.pci.write(size, offset, data);
            }
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    fn reset(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<(), Errno> {
        self.park_background();
        self.reset_migration();
        self.state.power_on_reset();
        Self::zero_scratch(&self.scratch);
        Ok(())
    }

    fn disconnected(&mut self) {
        self.stop_background();
    }

    fn migration(&mut self) -> Option<&mut dyn Migratable> {
        Some(self)
    }
}
