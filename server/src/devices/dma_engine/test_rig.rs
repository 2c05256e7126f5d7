//! The test rig of the dma-engine's unit tests: a device, a DMA space with 1 MiB of guest
//! memory mapped from a memfd at [`GUEST`], and the device's IRQ table.

use std::sync::Arc;

use super::{DmaEngine, DmaEngineConfig};
use crate::device::{Device, DeviceContext};
use crate::dma::DmaSpace;
use crate::irq::IrqTable;
use crate::migration::{ArcError, MigState, Migratable};
use crate::mmap::MappedRegion;

/// Where the rig's guest memory sits.
pub(super) const GUEST: u64 = 0x10_0000;
/// How much of it there is.
pub(super) const GUEST_LEN: u64 = 1 << 20;

/// A device with guest memory; each test file adds the methods it needs.
pub(super) struct Rig {
    pub(super) space: Arc<DmaSpace>,
    pub(super) irqs: IrqTable,
    pub(super) guest: MappedRegion,
    pub(super) dev: DmaEngine,
}

impl Rig {
    /// A device built from `config`, guest memory mapped.
    pub(super) fn with(config: DmaEngineConfig) -> Self {
        let dev = DmaEngine::new(config).unwrap();
        let space = Arc::new(DmaSpace::new(16));
        let (guest, fd) = MappedRegion::memfd(c"g", GUEST_LEN).unwrap();
        space.map(GUEST, GUEST_LEN, true, true, Some((&fd, 0))).unwrap();
        let spec = dev.spec();
        Self { space, irqs: IrqTable::new(spec.num_irqs, &spec.irqs), guest, dev }
    }

    /// A device with `devmem` bytes of device memory.
    pub(super) fn with_devmem(devmem: u64) -> Self {
        Self::with(DmaEngineConfig { devmem_size: devmem, ..DmaEngineConfig::default() })
    }

    /// Takes the device through the arc `from`→`to`.
    pub(super) fn arc(&mut self, from: MigState, to: MigState) -> Result<(), ArcError> {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.transition(&mut ctx, from, to)
    }

    /// Takes the device through `path`, one arc after the other; each must succeed.
    pub(super) fn walk(&mut self, path: &[MigState]) {
        for to in path {
            let from = self.dev.migration_state();
            self.arc(from, *to).unwrap_or_else(|e| panic!("{from:?} -> {to:?}: {e:?}"));
        }
    }
}
