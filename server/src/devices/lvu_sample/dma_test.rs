//! What the sample does when its timer fires: raise INTx, then its DMA test, once directly on
//! the second DMA region and once by message on the first.
//!
//! Each test writes four 1 KiB chunks filled with `A`, `B`, `C` and `D` at the region's
//! start, one access per chunk, then reads the 4 KiB back in two 2 KiB accesses and compares.
//! The direct test goes through the mapping (so the pages are marked dirty if logging is on;
//! the message test's pages are not: the client wrote them and tracks them itself);
//! the message test sends DMA_WRITE and DMA_READ even though the region has an fd, which is
//! what the reference's `vfu_sgl_write`/`vfu_sgl_read` do and what its client waits for: four
//! DMA_WRITEs, then four DMA_READs when the client takes 1 KiB per message. A failed test is
//! logged and signalled on the ERR interrupt, the device's way of telling its VMM it is broken
//! (QEMU stops the guest on it); the device goes on serving (the reference exits).

use super::LvuSample;
use crate::device::DeviceContext;
use crate::dma::DmaError;
use crate::wire::{IRQ_INDEX_ERR, IRQ_INDEX_INTX};

/// Bytes per write of the test.
const CHUNK: usize = 1024;
/// Writes per test.
const CHUNKS: usize = 4;

/// How one test moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    /// Through the mapping of a region mapped with an fd.
    Direct,
    /// By DMA_WRITE / DMA_READ messages.
    Messages,
}

impl LvuSample {
    /// INTx, then the direct test on slot 1 and the message test on slot 0; ERR if either
    /// failed.
    pub(super) fn timer_fired(&mut self, ctx: &mut DeviceContext<'_>) {
        match ctx.trigger_irq(IRQ_INDEX_INTX, 0) {
            Ok(delivery) => tracing::info!(?delivery, "libvfio-user-sample: timer fired, INTx raised"),
            Err(errno) => tracing::error!(%errno, "libvfio-user-sample: INTx trigger failed"),
        }
        let mut failed = false;
        for (slot, path) in [(1, Path::Direct), (0, Path::Messages)] {
            let Some((iova, _)) = self.slot(slot) else {
                tracing::error!(slot, ?path, "libvfio-user-sample: no DMA region in slot {slot}; DMA test skipped");
                failed = true;
                continue;
            };
            match dma_test(ctx, iova, path) {
                Ok(()) => tracing::info!(iova, ?path, "libvfio-user-sample: DMA test passed"),
                Err(e) => {
                    tracing::error!(iova, ?path, error = %e, "libvfio-user-sample: DMA test failed");
                    failed = true;
                }
            }
        }
        if failed && let Err(errno) = ctx.trigger_irq(IRQ_INDEX_ERR, 0) {
            tracing::error!(%errno, "libvfio-user-sample: the ERR interrupt could not be raised");
        }
    }
}

/// Why a DMA test failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum DmaTestError {
    /// An access was refused.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// The bytes read back differ from those written.
    #[error("DMA write and DMA read mismatch at byte {0}")]
    Mismatch(usize),
}

/// One test at `iova` along `path`.
pub(super) fn dma_test(ctx: &mut DeviceContext<'_>, iova: u64, path: Path) -> Result<(), DmaTestError> {
    let mut written = [0u8; CHUNK * CHUNKS];
    for (i, chunk) in written.chunks_mut(CHUNK).enumerate() {
        chunk.fill(b'A' + i as u8);
        let at = iova + (i * CHUNK) as u64;
        match path {
            Path::Direct => ctx.dma_space().write_direct(at, chunk)?,
            Path::Messages => ctx.dma_write_by_message(at, chunk)?,
        }
    }
    let mut read = [0u8; CHUNK * CHUNKS];
    for (i, chunk) in read.chunks_mut(2 * CHUNK).enumerate() {
        let at = iova + (i * 2 * CHUNK) as u64;
        match path {
            // Through the mapping only: a part without an fd is an error, as the reference's
            // `vfu_sgl_get` is.
            Path::Direct => ctx.dma_space().read_direct(at, chunk)?,
            Path::Messages => ctx.dma_read_by_message(at, chunk)?,
        }
    }
    match written.iter().zip(&read).position(|(w, r)| w != r) {
        Some(at) => Err(DmaTestError::Mismatch(at)),
        None => Ok(()),
    }
}
