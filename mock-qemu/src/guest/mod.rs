//! The guest model: what QEMU's side of a migration holds besides the device.
//!
//! - **RAM** ([`Guest`], [`RamRegion`]): one sparse memfd per region, mapped here and handed to
//!   the server with DMA_MAP, so several GiB cost nothing until touched. [`Guest::pc`] lays it
//!   out like a PC: up to 3 GiB at address 0, below the PCI hole, the rest from 4 GiB.
//! - **vCPU dirty log** ([`Guest::vcpu_write`], [`Guest::take_vcpu_dirty`]): the client's own
//!   record of guest stores, in the role KVM's dirty log plays. It records only while enabled
//!   ([`Guest::set_vcpu_logging`]), as KVM logs only during migration.
//! - **Message DMA** ([`Guest::dma_service`]): a [`DmaService`] answering the server's DMA_READ
//!   / DMA_WRITE from guest RAM (for regions mapped without an fd); every DMA_WRITE is recorded
//!   in a separate log ([`Guest::take_message_dirty`]), as QEMU marks the pages it writes itself.
//! - **Client writes** ([`Guest::take_client_writes`]): every page the client side wrote (vCPU
//!   stores and message DMA), always on, so that a harness can tell the pages the device wrote
//!   through its mapping from the rest ([`Guest::page_fingerprints`]).
//! - **Logging ranges** ([`Guest::logging_ranges`]): the DMA_LOGGING_START ranges QEMU computes.
//! - **Workload** ([`VcpuWorkload`]): seeded, reproducible vCPU stores.
//! - **Driver** ([`dmae::DmaEngineDriver`]): programs the `dma-engine` device through its
//!   registers and waits for its completion interrupt.
//!
//! Addresses are guest physical addresses, which are also the IOVAs the server sees (no vIOMMU).
//! [`Guest`] is a cheap handle ([`Clone`] shares the same RAM and logs) and is `Send + Sync`.

pub mod dirty;
pub mod dmae;
mod fingerprint;
mod ram;
mod workload;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use vfu_server::mmap::MapError;
use vfu_server::wire::{DMA_MAP_READ, DMA_MAP_WRITE};

use crate::client::{Client, ClientError, DmaService};
pub use dirty::DirtyBitmap;
pub use fingerprint::{Fingerprint, changed_pages};
pub use ram::RamRegion;
pub use workload::VcpuWorkload;

/// The page size of guest RAM and of every dirty log here.
pub const PAGE_SIZE: u64 = 4096;
/// One GiB.
pub const GIB: u64 = 1 << 30;
/// Where a PC's PCI hole starts: RAM below 4 GiB ends here at most.
pub const PCI_HOLE_START: u64 = 3 * GIB;
/// Where a PC's RAM above the PCI hole starts.
pub const HIGH_RAM_START: u64 = 4 * GIB;
/// Largest read a server's DMA_READ may ask of [`Guest::dma_service`] (the client's message
/// size limit).
pub const MAX_DMA_READ: u64 = 64 << 20;

/// Why a guest operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A RAM size of 0 or one that is not a whole number of pages.
    #[error("RAM size {ram_size:#x} is not a nonzero multiple of the {PAGE_SIZE:#x}-byte page")]
    BadRamSize {
        /// The size asked for.
        ram_size: u64,
    },
    /// A layout with no region.
    #[error("a guest needs at least one RAM region")]
    EmptyLayout,
    /// A region that is empty, not page-aligned, or ends past the address space.
    #[error("RAM region {iova:#x}+{len:#x} is empty, not page-aligned or wraps around")]
    BadRegion {
        /// Its address.
        iova: u64,
        /// Its length.
        len: u64,
    },
    /// Two regions overlap.
    #[error("RAM regions {a_iova:#x}+{a_len:#x} and {b_iova:#x}+{b_len:#x} overlap")]
    Overlap {
        /// The first region's address.
        a_iova: u64,
        /// The first region's length.
        a_len: u64,
        /// The second region's address.
        b_iova: u64,
        /// The second region's length.
        b_len: u64,
    },
    /// Creating or mapping a region's memfd failed.
    #[error("creating the memfd of RAM region {iova:#x}+{len:#x} failed")]
    Memfd {
        /// The region's address.
        iova: u64,
        /// The region's length.
        len: u64,
        /// The cause.
        #[source]
        source: MapError,
    },
    /// An access not wholly inside guest RAM (nothing was touched).
    #[error("guest address {iova:#x}+{len:#x} is outside guest RAM")]
    OutOfRange {
        /// The access's address.
        iova: u64,
        /// The access's length.
        len: u64,
    },
    /// Reading or inspecting a region's memfd failed.
    #[error("accessing guest RAM at {iova:#x}+{len:#x} failed")]
    Io {
        /// The access's address.
        iova: u64,
        /// The access's length.
        len: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Two guests compared page by page do not have the same layout.
    #[error("guest layouts differ: {ours:x?} vs {theirs:x?}")]
    LayoutMismatch {
        /// This guest's `(iova, len)` regions.
        ours: Vec<(u64, u64)>,
        /// The other guest's.
        theirs: Vec<(u64, u64)>,
    },
    /// A workload window that holds no RAM page.
    #[error("workload window {iova:#x}+{len:#x} holds no whole RAM page")]
    EmptyWindow {
        /// The window's address.
        iova: u64,
        /// The window's length.
        len: u64,
    },
}

/// How [`Guest::map_region`] offers a region to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// With the region's memfd: the server maps it and accesses it directly.
    Fd,
    /// Without an fd: the server reaches it only by DMA_READ / DMA_WRITE messages, which the
    /// client answers with [`Guest::dma_service`].
    Message,
}

struct Inner {
    regions: Vec<RamRegion>,
    vcpu_log: DirtyBitmap,
    message_log: DirtyBitmap,
    client_log: DirtyBitmap,
    vcpu_logging: AtomicBool,
}

/// Guest RAM and the client's dirty logs of it. Clones share everything.
#[derive(Clone)]
pub struct Guest {
    inner: Arc<Inner>,
}

impl fmt::Debug for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("layout", &format_args!("{:x?}", self.layout()))
            .field("ram_size", &self.ram_size())
            .field("vcpu_logging", &self.vcpu_logging())
            .finish()
    }
}

/// One piece of an access: region index, offset in the region, length.
type Piece = (usize, u64, u64);

impl Guest {
    /// PC layout: `ram_size` bytes, the first min(`ram_size`, 3 GiB) at address 0 (below the
    /// PCI hole at 3-4 GiB), the rest from 4 GiB. One sparse memfd per region.
    pub fn pc(ram_size: u64) -> Result<Guest, GuestError> {
        if ram_size == 0 || !ram_size.is_multiple_of(PAGE_SIZE) {
            return Err(GuestError::BadRamSize { ram_size });
        }
        let low = ram_size.min(PCI_HOLE_START);
        let mut layout = vec![(0, low)];
        if ram_size > low {
            layout.push((HIGH_RAM_START, ram_size - low));
        }
        Self::with_layout(&layout)
    }

    /// Any layout of `(iova, len)` regions: page-aligned, nonzero, non-overlapping (in any
    /// order; they are kept sorted by address). One sparse memfd per region.
    pub fn with_layout(regions: &[(u64, u64)]) -> Result<Guest, GuestError> {
        if regions.is_empty() {
            return Err(GuestError::EmptyLayout);
        }
        let mut sorted = regions.to_vec();
        sorted.sort_unstable();
        for &(iova, len) in &sorted {
            if len == 0 || iova % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || iova.checked_add(len).is_none() {
                return Err(GuestError::BadRegion { iova, len });
            }
        }
        for w in sorted.windows(2) {
            if let [(a_iova, a_len), (b_iova, b_len)] = *w
                && a_iova + a_len > b_iova
            {
                return Err(GuestError::Overlap { a_iova, a_len, b_iova, b_len });
            }
        }
        let mut ram = Vec::with_capacity(sorted.len());
        let mut first_page = 0;
        for (iova, len) in sorted {
            ram.push(RamRegion::new(iova, len, first_page)?);
            first_page += len / PAGE_SIZE;
        }
        Ok(Guest {
            inner: Arc::new(Inner {
                regions: ram,
                vcpu_log: DirtyBitmap::new(first_page),
                message_log: DirtyBitmap::new(first_page),
                client_log: DirtyBitmap::new(first_page),
                vcpu_logging: AtomicBool::new(false),
            }),
        })
    }

    /// The RAM regions, in ascending address order.
    pub fn regions(&self) -> &[RamRegion] {
        &self.inner.regions
    }

    /// The `(iova, len)` of every region, in ascending address order.
    pub fn layout(&self) -> Vec<(u64, u64)> {
        self.regions().iter().map(|r| (r.iova, r.len)).collect()
    }

    /// Total RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.regions().iter().map(|r| r.len).sum()
    }

    /// Total RAM in pages.
    pub fn page_count(&self) -> u64 {
        self.ram_size() / PAGE_SIZE
    }

    /// Bytes of memory the RAM actually holds (touched pages): stays small for a large guest
    /// that is mostly untouched.
    pub fn resident_bytes(&self) -> Result<u64, GuestError> {
        self.regions().iter().try_fold(0u64, |acc, r| Ok(acc.saturating_add(r.resident_bytes()?)))
    }

    /// DMA_MAP of every region with its fd, READ | WRITE.
    pub fn map_into(&self, client: &mut Client) -> Result<(), ClientError> {
        (0..self.regions().len()).try_for_each(|i| self.map_region(client, i, Backing::Fd))
    }

    /// DMA_MAP of region `index` (READ | WRITE) with the given backing. An index past the
    /// regions maps nothing.
    pub fn map_region(&self, client: &mut Client, index: usize, backing: Backing) -> Result<(), ClientError> {
        self.map_region_as(client, index, backing, DMA_MAP_READ | DMA_MAP_WRITE)
    }

    /// DMA_MAP of region `index` with the given backing and DMA_MAP `flags` (READ only: the
    /// server may read it, never write it). An index past the regions maps nothing.
    pub fn map_region_as(
        &self,
        client: &mut Client,
        index: usize,
        backing: Backing,
        flags: u32,
    ) -> Result<(), ClientError> {
        let Some(r) = self.regions().get(index) else { return Ok(()) };
        let fd = match backing {
            Backing::Fd => Some((r.fd(), r.file_offset())),
            Backing::Message => None,
        };
        client.dma_map(r.iova, r.len, flags, fd)
    }

    /// DMA_UNMAP of every region.
    pub fn unmap_from(&self, client: &mut Client) -> Result<(), ClientError> {
        self.regions().iter().try_for_each(|r| client.dma_unmap(r.iova, r.len, 0).map(|_| ()))
    }

    /// The DMA logging ranges QEMU computes (`vfio_dirty_tracking_update`): one range from the
    /// lowest to the highest address of the RAM sections that end below 4 GiB (holes included),
    /// and one over the sections that end above it, as `(iova, length)`. A section straddling
    /// 4 GiB counts as above, as QEMU classifies sections by their last byte.
    pub fn logging_ranges(&self) -> Vec<(u64, u64)> {
        let mut low: Option<(u64, u64)> = None;
        let mut high: Option<(u64, u64)> = None;
        for r in self.regions() {
            let last = r.end() - 1;
            let slot = if last <= u64::from(u32::MAX) { &mut low } else { &mut high };
            *slot = Some(match *slot {
                None => (r.iova, last),
                Some((min, max)) => (min.min(r.iova), max.max(last)),
            });
        }
        [low, high].into_iter().flatten().map(|(min, max)| (min, max - min + 1)).collect()
    }

    /// Whether `[iova, iova + len)` is wholly guest RAM (adjacent regions may share it).
    pub fn contains(&self, iova: u64, len: u64) -> bool {
        self.pieces(iova, len).is_ok()
    }

    /// Splits `[iova, iova + len)` into per-region pieces, or fails if any byte is not RAM.
    fn pieces(&self, iova: u64, len: u64) -> Result<Vec<Piece>, GuestError> {
        let out_of_range = || GuestError::OutOfRange { iova, len };
        let end = iova.checked_add(len).ok_or_else(out_of_range)?;
        let regions = self.regions();
        let mut out = Vec::new();
        let mut at = iova;
        while at < end {
            let i = regions.partition_point(|r| r.end() <= at);
            let r = regions.get(i).filter(|r| r.contains(at)).ok_or_else(out_of_range)?;
            let n = end.min(r.end()) - at;
            out.push((i, at - r.iova, n));
            at += n;
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes of guest RAM at `iova` (the whole range must be RAM).
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        let mut done = 0usize;
        for (i, off, n) in self.pieces(iova, buf.len() as u64)? {
            let n = usize::try_from(n).map_err(|_| GuestError::OutOfRange { iova, len: buf.len() as u64 })?;
            let dst = buf.get_mut(done..done + n).ok_or(GuestError::OutOfRange { iova, len: n as u64 })?;
            self.region(i)?.read_at(off, dst)?;
            done += n;
        }
        Ok(())
    }

    /// [`read`](Self::read) into a new buffer of `len` bytes.
    pub fn read_vec(&self, iova: u64, len: u64) -> Result<Vec<u8>, GuestError> {
        if !self.contains(iova, len) {
            return Err(GuestError::OutOfRange { iova, len });
        }
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| GuestError::OutOfRange { iova, len })?];
        self.read(iova, &mut buf)?;
        Ok(buf)
    }

    fn region(&self, i: usize) -> Result<&RamRegion, GuestError> {
        self.regions().get(i).ok_or(GuestError::OutOfRange { iova: 0, len: 0 })
    }

    /// Stores `data` at `iova` (all checked before anything is written), then marks its pages
    /// in `logs`. Marking after the store means a concurrent take never sees the mark without
    /// the data.
    fn store(&self, iova: u64, data: &[u8], logs: &[&DirtyBitmap]) -> Result<(), GuestError> {
        let pieces = self.pieces(iova, data.len() as u64)?;
        let mut done = 0usize;
        for &(i, off, n) in &pieces {
            let n = usize::try_from(n).map_err(|_| GuestError::OutOfRange { iova, len: data.len() as u64 })?;
            let src = data.get(done..done + n).ok_or(GuestError::OutOfRange { iova, len: n as u64 })?;
            self.region(i)?.write_at(off, src)?;
            done += n;
        }
        for (i, off, n) in pieces {
            let r = self.region(i)?;
            let first = off / PAGE_SIZE;
            let last = (off + n - 1) / PAGE_SIZE;
            for log in logs {
                log.mark(r.first_page + first, last - first + 1);
            }
        }
        Ok(())
    }

    /// A vCPU store: writes `data` at `iova` and, while vCPU logging is on, marks its pages in
    /// the vCPU dirty log.
    pub fn vcpu_write(&self, iova: u64, data: &[u8]) -> Result<(), GuestError> {
        if self.vcpu_logging() {
            self.store(iova, data, &[&self.inner.vcpu_log, &self.inner.client_log])
        } else {
            self.store(iova, data, &[&self.inner.client_log])
        }
    }

    /// Writes without marking anything (the destination loading pages from the migration
    /// stream).
    pub fn load(&self, iova: u64, data: &[u8]) -> Result<(), GuestError> {
        self.store(iova, data, &[])
    }

    /// Loads `pages`, (guest address, bytes) each, without marking anything: the pages of a
    /// run that follows on in one region go in one `pwritev` on its memfd, which allocates
    /// them without a page fault each (see [`RamRegion`]). Each page is checked to be RAM
    /// before it is written; pages before a failing one are loaded.
    pub fn load_pages(&self, pages: &[(u64, &[u8])]) -> Result<(), GuestError> {
        let regions = self.regions();
        let mut at = 0;
        while let Some(&(iova, first)) = pages.get(at) {
            let len = first.len() as u64;
            let i = regions.partition_point(|r| r.end() <= iova);
            let r = regions.get(i).filter(|r| r.contains(iova) && iova.saturating_add(len) <= r.end());
            let r = r.ok_or(GuestError::OutOfRange { iova, len })?;
            // The run: pages that follow each other in this region.
            let (mut end, mut n) = (iova + len, 1);
            while let Some(&(next, data)) = pages.get(at + n) {
                if next != end || next.saturating_add(data.len() as u64) > r.end() {
                    break;
                }
                end += data.len() as u64;
                n += 1;
            }
            let parts: Vec<&[u8]> = pages.get(at..at + n).unwrap_or_default().iter().map(|(_, d)| *d).collect();
            r.write_file_at(iova - r.iova, &parts)?;
            at += n;
        }
        Ok(())
    }

    /// Reads the pages at `addrs` (page-aligned guest addresses) into consecutive pages of
    /// `buf`: a run of addresses that follow each other is read in one go.
    pub fn read_pages(&self, addrs: &[u64], buf: &mut [u8]) -> Result<(), GuestError> {
        let page = PAGE_SIZE as usize;
        let mut at = 0;
        while let Some(&first) = addrs.get(at) {
            let mut n = 1;
            while addrs.get(at + n) == Some(&(first + n as u64 * PAGE_SIZE)) {
                n += 1;
            }
            let len = (n * page) as u64;
            let dst = buf.get_mut(at * page..(at + n) * page).ok_or(GuestError::OutOfRange { iova: first, len })?;
            self.read(first, dst)?;
            at += n;
        }
        Ok(())
    }

    /// A write on the device's behalf (what the DMA service does for a DMA_WRITE): stores and
    /// marks the pages in the message DMA log.
    pub fn message_write(&self, iova: u64, data: &[u8]) -> Result<(), GuestError> {
        self.store(iova, data, &[&self.inner.message_log, &self.inner.client_log])
    }

    /// Takes (and clears) the vCPU dirty log: sorted page-aligned guest addresses.
    pub fn take_vcpu_dirty(&self) -> Vec<u64> {
        self.page_addresses(self.inner.vcpu_log.take())
    }

    /// Takes (and clears) the message DMA log (pages written by DMA_WRITE through
    /// [`dma_service`](Self::dma_service)): sorted page-aligned guest addresses. This log is
    /// always on.
    pub fn take_message_dirty(&self) -> Vec<u64> {
        self.page_addresses(self.inner.message_log.take())
    }

    /// Takes (and clears) the pages the client side wrote since the last take, whether or not
    /// any log was on: vCPU stores and message DMA writes (not the destination's loads). What
    /// changed in guest RAM and is not among them, the device wrote through its mapping.
    pub fn take_client_writes(&self) -> Vec<u64> {
        self.page_addresses(self.inner.client_log.take())
    }

    /// Starts or stops vCPU dirty logging. While off nothing is recorded; turning it on clears
    /// what an earlier session left, so a session starts clean; turning it off keeps what was
    /// recorded for a last [`take_vcpu_dirty`](Self::take_vcpu_dirty).
    pub fn set_vcpu_logging(&self, on: bool) {
        let was = self.inner.vcpu_logging.swap(on, Ordering::AcqRel);
        if on && !was {
            self.inner.vcpu_log.clear();
        }
    }

    /// Whether vCPU dirty logging is on.
    pub fn vcpu_logging(&self) -> bool {
        self.inner.vcpu_logging.load(Ordering::Acquire)
    }

    /// Page numbers (across all regions) to guest addresses.
    fn page_addresses(&self, pages: Vec<u64>) -> Vec<u64> {
        let regions = self.regions();
        pages
            .into_iter()
            .filter_map(|p| {
                let i = regions.partition_point(|r| r.first_page + r.len / PAGE_SIZE <= p);
                regions.get(i).map(|r| r.iova + (p - r.first_page) * PAGE_SIZE)
            })
            .collect()
    }

    /// Every page's guest address, in ascending order (for the first full RAM pass).
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.regions().iter().flat_map(|r| (0..r.len / PAGE_SIZE).map(move |i| r.iova + i * PAGE_SIZE))
    }

    /// Every page back to zero, as an incoming QEMU's guest RAM starts (a migration's first
    /// pass skips the source's holes, whose zeros a fresh destination already has). The logs
    /// of what the client side wrote are cleared with it.
    pub fn discard(&self) -> Result<(), GuestError> {
        self.regions().iter().try_for_each(|r| r.discard())?;
        self.take_vcpu_dirty();
        self.take_message_dirty();
        self.take_client_writes();
        Ok(())
    }

    /// The pages that hold data (the rest are holes never written, which read as zeros):
    /// sorted guest addresses. A migration's first pass sends these and skips the holes, whose
    /// zeros a fresh destination already has, so a large, mostly idle guest costs little.
    pub fn populated_pages(&self) -> Result<Vec<u64>, GuestError> {
        let mut out = Vec::new();
        for r in self.regions() {
            for (start, end) in r.data_extents()? {
                let first = start / PAGE_SIZE * PAGE_SIZE;
                let end = end.min(r.len);
                out.extend((first..end).step_by(PAGE_SIZE as usize).map(|off| r.iova + off));
            }
        }
        Ok(out)
    }

    /// The pages whose bytes differ from `other`'s (same layout required): sorted guest
    /// addresses. Holes (never-touched pages) read as zeros and are skipped without reading, so
    /// comparing large, mostly untouched guests is cheap.
    pub fn diff_pages(&self, other: &Guest) -> Result<Vec<u64>, GuestError> {
        let (ours, theirs) = (self.layout(), other.layout());
        if ours != theirs {
            return Err(GuestError::LayoutMismatch { ours, theirs });
        }
        const CHUNK: u64 = 1 << 20;
        let mut out = Vec::new();
        let mut a = vec![0u8; CHUNK as usize];
        let mut b = vec![0u8; CHUNK as usize];
        for (ra, rb) in self.regions().iter().zip(other.regions()) {
            let mut extents = ra.data_extents()?;
            extents.extend(rb.data_extents()?);
            for (start, end) in merge_extents(extents) {
                let mut at = start;
                while at < end {
                    let n = (end - at).min(CHUNK);
                    let len = usize::try_from(n).unwrap_or(0);
                    let (ba, bb) = (&mut a[..len], &mut b[..len]);
                    ra.read_at(at, ba)?;
                    rb.read_at(at, bb)?;
                    for (k, (pa, pb)) in ba.chunks(PAGE_SIZE as usize).zip(bb.chunks(PAGE_SIZE as usize)).enumerate() {
                        if pa != pb {
                            out.push(ra.iova + at + k as u64 * PAGE_SIZE);
                        }
                    }
                    at += n;
                }
            }
        }
        Ok(out)
    }

    /// A [`DmaService`] for [`Client::set_dma_service`] answering DMA_READ / DMA_WRITE from this
    /// RAM. A DMA_WRITE is a write on the device's behalf, marked in the message DMA log
    /// ([`take_message_dirty`](Self::take_message_dirty)); an access outside RAM is refused with
    /// EFAULT, touching nothing.
    pub fn dma_service(&self) -> Box<dyn DmaService> {
        Box::new(GuestDma { guest: self.clone() })
    }
}

/// Page-aligned union of `[start, end)` extents, sorted.
fn merge_extents(mut extents: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    for e in &mut extents {
        e.0 -= e.0 % PAGE_SIZE;
        e.1 = e.1.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    }
    extents.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(extents.len());
    for (s, e) in extents {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The [`DmaService`] of [`Guest::dma_service`].
struct GuestDma {
    guest: Guest,
}

impl DmaService for GuestDma {
    fn dma_read(&mut self, addr: u64, len: u64) -> Result<Vec<u8>, Errno> {
        if len > MAX_DMA_READ {
            return Err(Errno::EINVAL);
        }
        self.guest.read_vec(addr, len).map_err(|e| {
            tracing::debug!(error = %e, "DMA_READ refused");
            Errno::EFAULT
        })
    }

    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        self.guest.message_write(addr, data).map_err(|e| {
            tracing::debug!(error = %e, "DMA_WRITE refused");
            Errno::EFAULT
        })
    }
}

#[cfg(test)]
mod tests;
