//! The device-facing API: what a device declares, what it implements, and what it may call.
//!
//! A device describes itself once with a [`DeviceSpec`] (regions and IRQs), then answers
//! region accesses and resets. The server has already checked every access against that
//! description (region exists, allows the direction, `offset + count` within its size), so a
//! device only ever sees in-bounds requests. During a callback the device reaches guest memory
//! and its interrupts through the [`DeviceContext`] it is given.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;

use crate::dma::{DmaError, DmaSpace, Piece};
use crate::irq::{Delivery, IrqSpec, IrqTable};
use crate::wire::{REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE, SparseArea};

/// A region's mmappable backing: the fd handed to the client and which parts it may map.
#[derive(Debug, Clone)]
pub struct RegionMmap {
    /// The file the client maps (shared, since the reply sends a copy of it).
    pub fd: Arc<OwnedFd>,
    /// Offset in `fd` where the region starts (the `offset` of REGION_INFO).
    pub file_offset: u64,
    /// The mmappable areas; empty means the whole region. Non-empty adds the sparse-mmap
    /// capability to REGION_INFO.
    pub sparse_areas: Vec<SparseArea>,
}

/// An ioeventfd the client may attach to a region offset (DEVICE_GET_REGION_IO_FDS).
#[derive(Debug, Clone)]
pub struct IoEventFdSpec {
    /// Offset within the region.
    pub offset: u64,
    /// Width of the triggering write.
    pub size: u64,
    /// Value the write must carry, if any.
    pub datamatch: Option<u64>,
    /// The eventfd.
    pub fd: Arc<OwnedFd>,
}

/// One region a device offers.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    /// Region index (for PCI: BAR0-5 = 0-5, ROM 6, CONFIG 7, VGA 8).
    pub index: u32,
    /// Size in bytes.
    pub size: u64,
    /// REGION_FLAG_READ | REGION_FLAG_WRITE; MMAP and CAPS are derived from `mmap`.
    pub flags: u32,
    /// How the client may mmap the region, if it may.
    pub mmap: Option<RegionMmap>,
    /// ioeventfds on the region.
    pub io_fds: Vec<IoEventFdSpec>,
}

impl RegionSpec {
    /// A readable and writable region without mmap.
    pub fn rw(index: u32, size: u64) -> Self {
        Self { index, size, flags: REGION_FLAG_READ | REGION_FLAG_WRITE, mmap: None, io_fds: Vec::new() }
    }

    /// A readable and writable region backed by `fd` from its start, of which the client may
    /// mmap the `(offset, size)` areas (all of it if none).
    pub fn rw_mmap(index: u32, size: u64, fd: &Arc<OwnedFd>, areas: &[(u64, u64)]) -> Self {
        Self {
            mmap: Some(RegionMmap {
                fd: Arc::clone(fd),
                file_offset: 0,
                sparse_areas: areas.iter().map(|&(offset, size)| SparseArea { offset, size }).collect(),
            }),
            ..Self::rw(index, size)
        }
    }

    /// The flags reported to the client.
    pub fn wire_flags(&self) -> u32 {
        let mut f = self.flags & (REGION_FLAG_READ | REGION_FLAG_WRITE);
        if self.mmap.is_some() {
            f |= REGION_FLAG_MMAP;
            if self.mmap.as_ref().is_some_and(|m| !m.sparse_areas.is_empty()) {
                f |= crate::wire::REGION_FLAG_CAPS;
            }
        }
        f
    }
}

/// Everything a device declares about itself.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Whether it is a PCI device (region and IRQ indexes then follow the PCI numbering).
    pub pci: bool,
    /// Number of region indexes reported (regions not in `regions` have size 0).
    pub num_regions: u32,
    /// The regions with content.
    pub regions: Vec<RegionSpec>,
    /// Number of IRQ indexes reported.
    pub num_irqs: u32,
    /// The IRQ indexes with vectors.
    pub irqs: Vec<IrqSpec>,
}

impl DeviceSpec {
    /// The spec of region `index`, if it has content.
    pub fn region(&self, index: u32) -> Option<&RegionSpec> {
        self.regions.iter().find(|r| r.index == index)
    }
}

/// Sends DMA_READ / DMA_WRITE messages for regions the client mapped without an fd.
pub trait RemoteDma {
    /// Reads `buf.len()` bytes of guest memory at `iova` by message.
    fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` to guest memory at `iova` by message.
    fn dma_write(&mut self, iova: u64, data: &[u8]) -> Result<(), Errno>;
}

/// What a device may use while the server calls it: guest memory and its interrupts.
pub struct DeviceContext<'a> {
    dma: &'a DmaSpace,
    /// The same table as `dma`, when the context was built over the server's shared one.
    shared: Option<&'a Arc<DmaSpace>>,
    remote: Option<&'a mut dyn RemoteDma>,
    irqs: &'a mut IrqTable,
}

impl<'a> DeviceContext<'a> {
    /// A context over `dma` and `irqs`; `remote` serves regions mapped without an fd. A device
    /// cannot keep this table for its own threads ([`shared_dma_space`](Self::shared_dma_space)
    /// is `None`); the server builds its contexts with [`new_shared`](Self::new_shared).
    pub fn new(dma: &'a DmaSpace, remote: Option<&'a mut dyn RemoteDma>, irqs: &'a mut IrqTable) -> Self {
        Self { dma, shared: None, remote, irqs }
    }

    /// A context over the shared table `dma` (and `irqs`; `remote` serves regions mapped
    /// without an fd), which a device may keep for its own threads.
    pub fn new_shared(dma: &'a Arc<DmaSpace>, remote: Option<&'a mut dyn RemoteDma>, irqs: &'a mut IrqTable) -> Self {
        Self { dma, shared: Some(dma), remote, irqs }
    }

    /// Reads guest memory at `iova`. Fails without side effects if any byte is unmapped or not
    /// readable.
    pub fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let pieces = self.dma.read(iova, buf)?;
        for p in pieces {
            if let Piece::Remote { iova: at, buf_offset, len } = p {
                let remote = self.remote.as_deref_mut().ok_or(DmaError::NotMapped { iova: at, len: len as u64 })?;
                let dst = buf.get_mut(buf_offset..buf_offset + len).unwrap_or_default();
                remote.dma_read(at, dst).map_err(|errno| DmaError::Remote { iova: at, len: len as u64, errno })?;
            }
        }
        Ok(())
    }

    /// Writes guest memory at `iova`. Fails without writing if any byte is unmapped or not
    /// writable.
    pub fn dma_write(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let pieces = self.dma.write(iova, data)?;
        for p in pieces {
            if let Piece::Remote { iova: at, buf_offset, len } = p {
                let remote = self.remote.as_deref_mut().ok_or(DmaError::NotMapped { iova: at, len: len as u64 })?;
                let src = data.get(buf_offset..buf_offset + len).unwrap_or_default();
                remote.dma_write(at, src).map_err(|errno| DmaError::Remote { iova: at, len: len as u64, errno })?;
                // The client wrote its own memory for us; the page is dirty all the same.
                self.dma.mark_dirty(at, len as u64);
            }
        }
        Ok(())
    }

    /// Writes `data` to guest memory at `iova` by DMA_WRITE messages even where the region was
    /// mapped with an fd, as a device does that prefers messages (the reference sample server's
    /// `vfu_sgl_write`). The range must lie in writable regions. The pages are not marked
    /// dirty: the client wrote its own memory and tracks that itself (the reference reports
    /// them clean too).
    pub fn dma_write_by_message(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let len = data.len() as u64;
        self.dma.check(iova, len, true)?;
        let remote = self.remote.as_deref_mut().ok_or(DmaError::NotMapped { iova, len })?;
        remote.dma_write(iova, data).map_err(|errno| DmaError::Remote { iova, len, errno })
    }

    /// Reads guest memory at `iova` by DMA_READ messages even where the region was mapped with
    /// an fd. The range must lie in readable regions.
    pub fn dma_read_by_message(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let len = buf.len() as u64;
        self.dma.check(iova, len, false)?;
        let remote = self.remote.as_deref_mut().ok_or(DmaError::NotMapped { iova, len })?;
        remote.dma_read(iova, buf).map_err(|errno| DmaError::Remote { iova, len, errno })
    }

    /// The DMA table.
    pub fn dma_space(&self) -> &DmaSpace {
        self.dma
    }

    /// A handle on the DMA table for a device's own threads (regions mapped with an fd only,
    /// see [`DmaSpace::write_direct`]), if the context was built with
    /// [`new_shared`](Self::new_shared).
    pub fn shared_dma_space(&self) -> Option<Arc<DmaSpace>> {
        self.shared.map(Arc::clone)
    }

    /// Raises interrupt `index`/`vector`.
    pub fn trigger_irq(&mut self, index: u32, vector: u32) -> Result<Delivery, Errno> {
        self.irqs.trigger(index, vector)
    }

    /// Whether the client attached an eventfd to `index`/`vector`.
    pub fn irq_has_eventfd(&self, index: u32, vector: u32) -> bool {
        self.irqs.has_eventfd(index, vector)
    }
}

/// A vfio-user device.
///
/// Only [`spec`](Device::spec), [`region_read`](Device::region_read) and
/// [`region_write`](Device::region_write) are required; everything else has a default that
/// suits a device without the feature.
pub trait Device: Send {
    /// The device's regions and IRQs. Called once, when the server is built.
    fn spec(&self) -> DeviceSpec;

    /// Reads `data.len()` bytes at `offset` of `region`. The range is within the region.
    fn region_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno>;

    /// Writes `data` at `offset` of `region`. The range is within the region.
    fn region_write(&mut self, ctx: &mut DeviceContext<'_>, region: u32, offset: u64, data: &[u8])
    -> Result<(), Errno>;

    /// Resets the device to its power-on state (DEVICE_RESET). A migratable device is RUNNING
    /// afterwards, with any migration stream ended. The default does nothing.
    fn reset(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<(), Errno> {
        Ok(())
    }

    /// Whether DEVICE_GET_INFO reports the RESET flag.
    fn supports_reset(&self) -> bool {
        true
    }

    /// Called after a DMA region was removed, so a device that caches guest addresses can drop
    /// them. The default does nothing.
    fn dma_unmapped(&mut self, _iova: u64, _len: u64) {}

    /// Called after the client mapped a DMA region, so a device that keeps its own list of
    /// guest memory (in the order the client mapped it) can add it. The default does nothing.
    fn dma_mapped(&mut self, _iova: u64, _len: u64, _readable: bool, _writable: bool) {}

    /// Called when the client disconnects, after its DMA regions and eventfds are gone.
    fn disconnected(&mut self) {}

    /// When the device next wants [`deadline_reached`](Device::deadline_reached) called, if
    /// ever: for work a device starts on its own between requests, such as a timer that raises
    /// an interrupt and then does DMA by message, which only the session's thread may send.
    /// The session waits for the next request no later than this. The default: never.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// Called by the session between requests once [`next_deadline`](Device::next_deadline)
    /// has passed; the context reaches guest memory by message too. The device must move or
    /// clear its deadline here, or it is called again at once. The default does nothing.
    fn deadline_reached(&mut self, _ctx: &mut DeviceContext<'_>) {}

    /// The device's migration callbacks, if it can be migrated. The default: it cannot.
    fn migration(&mut self) -> Option<&mut dyn crate::migration::Migratable> {
        None
    }

    /// Whether [`migration`](Device::migration) returns `Some`; asked once, when the server is
    /// built, to decide what VERSION and DEVICE_FEATURE advertise.
    fn is_migratable(&mut self) -> bool {
        self.migration().is_some()
    }
}
