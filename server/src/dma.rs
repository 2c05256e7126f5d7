//! The client's DMA regions and bounds-checked device access to them.
//!
//! A region mapped with an fd is mmapped here and accessed directly; a region mapped without
//! one is only a range, and the device reaches it through DMA_READ / DMA_WRITE messages that
//! the session sends on its behalf ([`crate::device::DeviceContext`] splits an access between
//! the two). The table is shared (`Arc<DmaSpace>`) so a device may run DMA on its own threads,
//! on regions with an fd only, as the messages belong to the session's socket
//! ([`DmaSpace::write_direct`] refuses the others): each access holds the read lock for its
//! copy, so once DMA_UNMAP returns no device access to that region is still in flight.
//!
//! The table also owns the dirty log ([`DirtyLog`]) while logging is on: every device write
//! marks its pages after the bytes are in memory, so a report can never clear a mark whose data
//! it has not seen. Locks are always taken table first, log second.

use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use nix::errno::Errno;

use crate::migration::dirty::{DirtyLog, LogError};
use crate::mmap::{MapError, MappedRegion};

/// Why a DMA table operation or a device access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// Size zero, or `iova + size` overflows.
    #[error("DMA range {iova:#x}+{len:#x} is empty or wraps around")]
    InvalidRange {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// The new region overlaps a mapped one.
    #[error("DMA region {iova:#x}+{len:#x} overlaps {other_iova:#x}+{other_len:#x}")]
    Overlap {
        /// Start of the new region.
        iova: u64,
        /// Its length.
        len: u64,
        /// Start of the region it overlaps.
        other_iova: u64,
        /// That region's length.
        other_len: u64,
    },
    /// The same range is already mapped.
    #[error("DMA region {iova:#x}+{len:#x} is already mapped")]
    AlreadyMapped {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// No region matches the unmap exactly.
    #[error("no DMA region is mapped exactly at {iova:#x}+{len:#x}")]
    NoExactMatch {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// The table is full.
    #[error("already {max} DMA regions mapped")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// Some of the range is not inside mapped memory.
    #[error("DMA {iova:#x}+{len:#x} is not inside mapped guest memory")]
    NotMapped {
        /// Start of the access.
        iova: u64,
        /// Its length.
        len: u64,
    },
    /// The region does not allow this direction of access.
    #[error("DMA {iova:#x}+{len:#x} needs {need} permission")]
    Protection {
        /// Start of the access.
        iova: u64,
        /// Its length.
        len: u64,
        /// "read" or "write".
        need: &'static str,
    },
    /// The region's fd could not be mapped.
    #[error("mapping the DMA region's fd failed")]
    Map(#[source] MapError),
    /// Part of the range lies in a region mapped without an fd, which only DMA_READ /
    /// DMA_WRITE messages reach, and the caller cannot send them.
    #[error("DMA {iova:#x}+{len:#x} reaches a region mapped without an fd")]
    NeedsMessage {
        /// Start of the part without an fd.
        iova: u64,
        /// Its length.
        len: u64,
    },
    /// Dirty logging (of everything mapped) cannot take the new region: its bitmap would
    /// exceed the log's bound.
    #[error("dirty logging cannot take DMA region {iova:#x}+{len:#x}")]
    Log {
        /// Start of the region.
        iova: u64,
        /// Its length.
        len: u64,
        /// The log's errno (ENOMEM).
        errno: Errno,
    },
    /// A message-based access (DMA_READ / DMA_WRITE) failed.
    #[error("message DMA {iova:#x}+{len:#x} failed: errno {errno}")]
    Remote {
        /// Start of the access.
        iova: u64,
        /// Its length.
        len: u64,
        /// What the client or the socket reported.
        errno: Errno,
    },
}

impl DmaError {
    /// The errno a vfio-user reply carries for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            DmaError::AlreadyMapped { .. } => Errno::EEXIST,
            DmaError::Overlap { .. } => Errno::EEXIST,
            DmaError::NoExactMatch { .. } => Errno::ENOENT,
            DmaError::TooMany { .. } => Errno::ENOSPC,
            DmaError::NotMapped { .. } | DmaError::NeedsMessage { .. } => Errno::EFAULT,
            DmaError::Protection { .. } => Errno::EPERM,
            DmaError::Map(m) => m.errno(),
            DmaError::Remote { errno, .. } | DmaError::Log { errno, .. } => *errno,
            DmaError::InvalidRange { .. } => Errno::EINVAL,
        }
    }
}

/// One DMA region of the client's.
#[derive(Debug)]
pub struct DmaRegion {
    /// Guest address of the region.
    pub iova: u64,
    /// Its length.
    pub len: u64,
    /// Whether the server may read it.
    pub readable: bool,
    /// Whether the server may write it.
    pub writable: bool,
    mapping: Option<Mapping>,
}

#[derive(Debug)]
struct Mapping {
    region: MappedRegion,
    /// Bytes between the page-aligned mapping start and the region's first byte.
    skip: u64,
}

impl DmaRegion {
    /// Whether the region was mapped with an fd (accessed directly rather than by message).
    pub fn has_fd(&self) -> bool {
        self.mapping.is_some()
    }

    /// End of the region (exclusive); never overflows, as mapping checks it.
    pub fn end(&self) -> u64 {
        self.iova.saturating_add(self.len)
    }

    fn contains(&self, addr: u64) -> bool {
        addr >= self.iova && addr < self.end()
    }
}

/// Description of a mapped region, for listings and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRegionInfo {
    /// Start.
    pub iova: u64,
    /// Length.
    pub len: u64,
    /// Readable by the server.
    pub readable: bool,
    /// Writable by the server.
    pub writable: bool,
    /// Mapped with an fd.
    pub has_fd: bool,
}

/// A piece of an access that falls inside one region.
#[derive(Debug)]
pub enum Piece {
    /// Done directly on mapped memory; `done` bytes of the caller's buffer were consumed.
    Direct,
    /// Must go by message: the range and the offset into the caller's buffer.
    Remote {
        /// Guest address.
        iova: u64,
        /// Offset into the caller's buffer.
        buf_offset: usize,
        /// Bytes.
        len: usize,
    },
}

/// The table of the client's DMA regions.
#[derive(Debug, Default)]
pub struct DmaSpace {
    regions: RwLock<Vec<Arc<DmaRegion>>>,
    max_regions: usize,
    log: RwLock<Option<DirtyLog>>,
}

fn page_size() -> u64 {
    4096
}

impl DmaSpace {
    /// An empty table that holds at most `max_regions` regions.
    pub fn new(max_regions: usize) -> Self {
        Self { regions: RwLock::new(Vec::new()), max_regions, log: RwLock::new(None) }
    }

    fn log_read(&self) -> RwLockReadGuard<'_, Option<DirtyLog>> {
        self.log.read().unwrap_or_else(|p| p.into_inner())
    }

    fn log_write(&self) -> RwLockWriteGuard<'_, Option<DirtyLog>> {
        self.log.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts dirty-page logging; returns the page size chosen. A second start with the same
    /// parameters is a no-op that keeps the bits; with other parameters it is refused.
    pub fn start_logging(&self, page_size_hint: u64, ranges: &[(u64, u64)]) -> Result<u64, LogError> {
        // A malformed START is refused as such, logging or not.
        DirtyLog::check_request(page_size_hint, ranges)?;
        let regions = self.read_lock();
        let mut log = self.log_write();
        if let Some(l) = log.as_ref() {
            return if l.same_request(page_size_hint, ranges) { Ok(l.page_size()) } else { Err(LogError::Busy) };
        }
        let mapped: Vec<(u64, u64)> = regions.iter().map(|r| (r.iova, r.len)).collect();
        let new = DirtyLog::start(page_size_hint, ranges, &mapped)?;
        let page = new.page_size();
        tracing::info!(page_size = page, ranges = new.range_count(), bytes = new.bitmap_bytes(), "dirty logging on");
        *log = Some(new);
        Ok(page)
    }

    /// Stops dirty-page logging and frees the log; returns whether it was on.
    pub fn stop_logging(&self) -> bool {
        let was_on = self.log_write().take().is_some();
        if was_on {
            tracing::info!("dirty logging off");
        }
        was_on
    }

    /// Whether dirty-page logging is on.
    pub fn is_logging(&self) -> bool {
        self.log_read().is_some()
    }

    /// Reports and clears the dirty pages of `[iova, iova + length)` at `page_size`, in a bitmap
    /// of at most `room` bytes.
    pub fn report_dirty(&self, iova: u64, length: u64, page_size: u64, room: u64) -> Result<Vec<u64>, LogError> {
        let mut bits = Vec::new();
        self.report_dirty_into(iova, length, page_size, room, &mut bits)?;
        Ok(bits)
    }

    /// Like [`report_dirty`](Self::report_dirty), into `bits` (resized to the bitmap's words),
    /// so a session reuses one buffer report after report.
    pub fn report_dirty_into(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        room: u64,
        bits: &mut Vec<u64>,
    ) -> Result<(), LogError> {
        {
            let log = self.log_read();
            log.as_ref().ok_or(LogError::NotLogging)?.report_into(iova, length, page_size, room, bits)?;
        }
        // Ranges of unmapped regions that this report left clean are no longer needed.
        let regions = self.read_lock();
        if let Some(log) = self.log_write().as_mut() {
            let mapped: Vec<(u64, u64)> = regions.iter().map(|r| (r.iova, r.len)).collect();
            log.drop_clean_unmapped(&mapped);
        }
        Ok(())
    }

    /// Marks `[iova, iova + len)` dirty if logging is on (for writes done by message).
    pub fn mark_dirty(&self, iova: u64, len: u64) {
        if let Some(log) = self.log_read().as_ref() {
            log.mark(iova, len);
        }
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, Vec<Arc<DmaRegion>>> {
        self.regions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Vec<Arc<DmaRegion>>> {
        self.regions.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a region; with an fd, maps `len` bytes of it from `file_offset`.
    pub fn map(
        &self,
        iova: u64,
        len: u64,
        readable: bool,
        writable: bool,
        fd: Option<(&OwnedFd, u64)>,
    ) -> Result<(), DmaError> {
        let end = iova.checked_add(len).filter(|_| len > 0).ok_or(DmaError::InvalidRange { iova, len })?;
        {
            let regions = self.read_lock();
            check_free(&regions, iova, len, end, self.max_regions)?;
        }
        let mapping = match fd {
            Some((fd, file_offset)) => {
                let skip = file_offset % page_size();
                let total = len.checked_add(skip).ok_or(DmaError::InvalidRange { iova, len })?;
                let region =
                    MappedRegion::map_fd(fd, file_offset - skip, total, readable, writable).map_err(DmaError::Map)?;
                Some(Mapping { region, skip })
            }
            None => None,
        };
        let mut regions = self.write_lock();
        // Checked again: another thread may not map, but keep the table's invariant local.
        check_free(&regions, iova, len, end, self.max_regions)?;
        // Logged before it is in the table, under the table's write lock, so no write to the
        // new region can precede its log (and a log that cannot take it refuses the mapping).
        if let Some(log) = self.log_write().as_mut() {
            log.region_mapped(iova, len).map_err(|e| DmaError::Log { iova, len, errno: e.errno() })?;
        }
        let at = regions.partition_point(|r| r.iova < iova);
        regions.insert(at, Arc::new(DmaRegion { iova, len, readable, writable, mapping }));
        Ok(())
    }

    /// Removes the region that is exactly `iova`+`len`.
    pub fn unmap(&self, iova: u64, len: u64) -> Result<DmaRegionInfo, DmaError> {
        let mut regions = self.write_lock();
        let at =
            regions.iter().position(|r| r.iova == iova && r.len == len).ok_or(DmaError::NoExactMatch { iova, len })?;
        let r = regions.remove(at);
        if let Some(log) = self.log_write().as_mut() {
            let mapped: Vec<(u64, u64)> = regions.iter().map(|r| (r.iova, r.len)).collect();
            log.region_unmapped(iova, len, &mapped);
        }
        Ok(info(&r))
    }

    /// Removes every region; returns how many there were.
    pub fn unmap_all(&self) -> usize {
        let mut regions = self.write_lock();
        let n = regions.len();
        let removed: Vec<_> = regions.drain(..).collect();
        if let Some(log) = self.log_write().as_mut() {
            for r in removed {
                log.region_unmapped(r.iova, r.len, &[]);
            }
        }
        n
    }

    /// Checks that `iova..iova+len` lies in mapped regions that allow the access, touching
    /// nothing: what a device asks before it DMAs by message.
    pub fn check(&self, iova: u64, len: u64, write: bool) -> Result<(), DmaError> {
        let len = usize::try_from(len).map_err(|_| DmaError::NotMapped { iova, len })?;
        walk(&self.read_lock(), iova, len, write, |_, _, _, _| Ok(()))
    }

    /// Every region, in address order.
    pub fn regions(&self) -> Vec<DmaRegionInfo> {
        self.read_lock().iter().map(|r| info(r)).collect()
    }

    /// Reads guest memory at `iova` into `buf`. Parts in regions without an fd are not read
    /// but returned as [`Piece::Remote`] for the caller to fetch by message.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<Vec<Piece>, DmaError> {
        Self::read_locked(&self.read_lock(), iova, buf)
    }

    /// Reads guest memory at `iova` if every byte of it lies in readable regions mapped with
    /// an fd; otherwise reads nothing ([`DmaError::NeedsMessage`] for a part in a region
    /// without one). The counterpart of [`write_direct`](Self::write_direct), under one read
    /// lock of the table likewise.
    pub fn read_direct(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let regions = self.read_lock();
        walk(&regions, iova, buf.len(), false, |r, at, _, n| match r.mapping {
            Some(_) => Ok(()),
            None => Err(DmaError::NeedsMessage { iova: at, len: n as u64 }),
        })?;
        Self::read_locked(&regions, iova, buf).map(|_| ())
    }

    fn read_locked(regions: &[Arc<DmaRegion>], iova: u64, buf: &mut [u8]) -> Result<Vec<Piece>, DmaError> {
        let len = buf.len();
        let mut out = Vec::new();
        walk(regions, iova, len, false, |r, at, buf_offset, n| {
            match &r.mapping {
                Some(m) => {
                    let dst =
                        buf.get_mut(buf_offset..buf_offset + n).ok_or(DmaError::NotMapped { iova, len: len as u64 })?;
                    m.region
                        .read_at(m.skip + (at - r.iova), dst)
                        .ok_or(DmaError::NotMapped { iova: at, len: n as u64 })?;
                    out.push(Piece::Direct);
                }
                None => out.push(Piece::Remote { iova: at, buf_offset, len: n }),
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes `data` to guest memory at `iova`. Parts in regions without an fd are returned as
    /// [`Piece::Remote`] for the caller to send by message.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<Vec<Piece>, DmaError> {
        let regions = self.read_lock();
        let log = self.log_read();
        Self::write_locked(&regions, log.as_ref(), iova, data)
    }

    /// Writes `data` to guest memory at `iova` if every byte of it lies in writable regions
    /// mapped with an fd; otherwise writes nothing ([`DmaError::NeedsMessage`] for a part in a
    /// region without one). For device threads, which cannot send DMA_WRITE messages: the socket
    /// belongs to the session. The check and the write happen under one read lock of the table,
    /// so a concurrent DMA_UNMAP either waits for the write or makes it fail cleanly.
    pub fn write_direct(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let regions = self.read_lock();
        walk(&regions, iova, data.len(), true, |r, at, _, n| match r.mapping {
            Some(_) => Ok(()),
            None => Err(DmaError::NeedsMessage { iova: at, len: n as u64 }),
        })?;
        let log = self.log_read();
        Self::write_locked(&regions, log.as_ref(), iova, data).map(|_| ())
    }

    fn write_locked(
        regions: &[Arc<DmaRegion>],
        log: Option<&DirtyLog>,
        iova: u64,
        data: &[u8],
    ) -> Result<Vec<Piece>, DmaError> {
        let len = data.len();
        let mut out = Vec::new();
        walk(regions, iova, len, true, |r, at, buf_offset, n| {
            match &r.mapping {
                Some(m) => {
                    let src =
                        data.get(buf_offset..buf_offset + n).ok_or(DmaError::NotMapped { iova, len: len as u64 })?;
                    m.region
                        .write_at(m.skip + (at - r.iova), src)
                        .ok_or(DmaError::NotMapped { iova: at, len: n as u64 })?;
                    // Marked after the bytes are written (see the module doc).
                    if let Some(log) = log {
                        log.mark(at, n as u64);
                    }
                    out.push(Piece::Direct);
                }
                None => out.push(Piece::Remote { iova: at, buf_offset, len: n }),
            }
            Ok(())
        })?;
        Ok(out)
    }
}

fn info(r: &DmaRegion) -> DmaRegionInfo {
    DmaRegionInfo { iova: r.iova, len: r.len, readable: r.readable, writable: r.writable, has_fd: r.has_fd() }
}

fn check_free(regions: &[Arc<DmaRegion>], iova: u64, len: u64, end: u64, max: usize) -> Result<(), DmaError> {
    if let Some(r) = regions.iter().find(|r| r.iova < end && iova < r.end()) {
        return Err(if r.iova == iova && r.len == len {
            DmaError::AlreadyMapped { iova, len }
        } else {
            DmaError::Overlap { iova, len, other_iova: r.iova, other_len: r.len }
        });
    }
    if regions.len() >= max {
        return Err(DmaError::TooMany { max });
    }
    Ok(())
}

/// Splits `iova`+`len` over consecutive regions (checking every byte is mapped and permitted
/// before touching any), then calls `f(region, addr, buf_offset, n)` for each piece.
fn walk(
    regions: &[Arc<DmaRegion>],
    iova: u64,
    len: usize,
    write: bool,
    mut f: impl FnMut(&DmaRegion, u64, usize, usize) -> Result<(), DmaError>,
) -> Result<(), DmaError> {
    let len64 = len as u64;
    let not_mapped = DmaError::NotMapped { iova, len: len64 };
    if len == 0 {
        return Ok(());
    }
    let end = iova.checked_add(len64).ok_or(not_mapped.clone())?;
    let mut pieces = Vec::new();
    let mut at = iova;
    let first = regions.partition_point(|r| r.end() <= iova);
    for r in regions.get(first..).unwrap_or_default() {
        if at >= end {
            break;
        }
        if !r.contains(at) {
            return Err(not_mapped);
        }
        if !(if write { r.writable } else { r.readable }) {
            return Err(DmaError::Protection { iova, len: len64, need: if write { "write" } else { "read" } });
        }
        let n = r.end().min(end) - at;
        pieces.push((r, at, n));
        at += n;
    }
    if at < end {
        return Err(not_mapped);
    }
    for (r, addr, n) in pieces {
        f(r, addr, (addr - iova) as usize, n as usize)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn memfd(len: u64) -> OwnedFd {
        MappedRegion::memfd(c"guest", len).unwrap().1
    }

    #[rstest]
    #[case::zero_page_size(0, vec![], Errno::EINVAL)]
    #[case::empty_range(4096, vec![(0x1000, 0)], Errno::EINVAL)]
    #[case::overlapping_ranges(4096, vec![(0, 0x2000), (0x1000, 0x1000)], Errno::EINVAL)]
    #[case::other_page_size(8192, vec![], Errno::EBUSY)]
    fn a_start_while_logging_is_judged_on_its_own_parameters_first(
        #[case] hint: u64,
        #[case] ranges: Vec<(u64, u64)>,
        #[case] errno: Errno,
    ) {
        let space = DmaSpace::new(16);
        space.map(0, 0x10000, true, true, None).unwrap();
        assert_eq!(space.start_logging(4096, &[]).unwrap(), 4096);
        assert_eq!(space.start_logging(hint, &ranges).unwrap_err().errno(), errno);
        assert_eq!(space.start_logging(4096, &[]).unwrap(), 4096, "the same START again is no change");
    }

    #[rstest]
    #[case::identical(0x1000, 0x1000, Errno::EEXIST)]
    #[case::overlaps_start(0x0, 0x2000, Errno::EEXIST)]
    #[case::inside(0x1800, 0x100, Errno::EEXIST)]
    #[case::zero_size(0x8000, 0, Errno::EINVAL)]
    #[case::wraps(u64::MAX - 0xfff, 0x2000, Errno::EINVAL)]
    fn conflicting_map_is_refused(#[case] iova: u64, #[case] len: u64, #[case] errno: Errno) {
        let space = DmaSpace::new(16);
        space.map(0x1000, 0x1000, true, true, None).unwrap();
        assert_eq!(space.map(iova, len, true, true, None).unwrap_err().errno(), errno);
    }

    #[test]
    fn unmap_needs_an_exact_match() {
        let space = DmaSpace::new(16);
        space.map(0x1000, 0x2000, true, true, None).unwrap();
        assert_eq!(space.unmap(0x1000, 0x1000).unwrap_err().errno(), Errno::ENOENT);
        space.unmap(0x1000, 0x2000).unwrap();
        assert!(space.regions().is_empty());
    }

    #[test]
    fn table_limit_is_enforced() {
        let space = DmaSpace::new(2);
        space.map(0, 0x1000, true, true, None).unwrap();
        space.map(0x1000, 0x1000, true, true, None).unwrap();
        assert_eq!(space.map(0x2000, 0x1000, true, true, None).unwrap_err(), DmaError::TooMany { max: 2 });
    }

    #[test]
    fn access_spanning_two_adjacent_regions_is_split() {
        let space = DmaSpace::new(16);
        let fd = memfd(0x2000);
        space.map(0x10000, 0x1000, true, true, Some((&fd, 0))).unwrap();
        space.map(0x11000, 0x1000, true, true, Some((&fd, 0x1000))).unwrap();
        let data: Vec<u8> = (0..32).collect();
        space.write(0x10ff0, &data).unwrap();
        let mut back = vec![0; 32];
        space.read(0x10ff0, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn access_past_a_region_or_into_a_hole_touches_nothing() {
        let space = DmaSpace::new(16);
        let fd = memfd(0x1000);
        space.map(0x10000, 0x1000, true, true, Some((&fd, 0))).unwrap();
        space.map(0x12000, 0x1000, true, true, None).unwrap();
        assert!(matches!(space.write(0x10fff, &[1, 2]), Err(DmaError::NotMapped { .. })));
        assert!(matches!(space.write(0xffff, &[1, 2]), Err(DmaError::NotMapped { .. })));
        let mut b = [0u8; 1];
        space.read(0x10fff, &mut b).unwrap();
        assert_eq!(b, [0], "the failed write must not have written its first byte");
    }

    #[test]
    fn read_only_region_refuses_writes() {
        let space = DmaSpace::new(16);
        space.map(0, 0x1000, true, false, None).unwrap();
        assert_eq!(space.write(0, &[1]).unwrap_err().errno(), Errno::EPERM);
    }

    #[test]
    fn fdless_region_is_returned_as_remote_pieces() {
        let space = DmaSpace::new(16);
        space.map(0x5000, 0x1000, true, true, None).unwrap();
        let pieces = space.write(0x5010, &[0; 8]).unwrap();
        assert!(matches!(pieces.as_slice(), [Piece::Remote { iova: 0x5010, buf_offset: 0, len: 8 }]));
    }

    #[test]
    fn direct_read_refuses_a_range_reaching_a_region_without_an_fd_and_reads_nothing() {
        let space = DmaSpace::new(16);
        let fd = memfd(0x1000);
        space.map(0x10000, 0x1000, true, true, Some((&fd, 0))).unwrap();
        space.map(0x11000, 0x1000, true, true, None).unwrap();
        space.write_direct(0x10ff8, &[7; 8]).unwrap();
        let mut b = [0xaau8; 8];
        assert_eq!(space.read_direct(0x10ffc, &mut b), Err(DmaError::NeedsMessage { iova: 0x11000, len: 4 }));
        assert_eq!(b, [0xaa; 8], "nothing was read into the buffer");
        assert!(matches!(space.read_direct(0x20000, &mut b), Err(DmaError::NotMapped { .. })));
        space.read_direct(0x10ff8, &mut b).unwrap();
        assert_eq!(b, [7; 8]);
    }

    #[test]
    fn direct_write_refuses_a_range_reaching_a_region_without_an_fd_and_writes_nothing() {
        let space = DmaSpace::new(16);
        let fd = memfd(0x1000);
        space.map(0x10000, 0x1000, true, true, Some((&fd, 0))).unwrap();
        space.map(0x11000, 0x1000, true, true, None).unwrap();
        assert_eq!(space.write_direct(0x10ffc, &[1; 8]), Err(DmaError::NeedsMessage { iova: 0x11000, len: 4 }));
        let mut b = [0u8; 4];
        space.read(0x10ffc, &mut b).unwrap();
        assert_eq!(b, [0; 4], "the part with an fd was not written either");
        assert!(matches!(space.write_direct(0x20000, &[1]), Err(DmaError::NotMapped { .. })));
        space.write_direct(0x10ff8, &[2; 8]).unwrap();
        let mut b = [0u8; 8];
        space.read(0x10ff8, &mut b).unwrap();
        assert_eq!(b, [2; 8]);
    }

    #[test]
    fn a_listing_tells_which_regions_have_an_fd_and_their_permissions() {
        let space = DmaSpace::new(16);
        let fd = memfd(0x1000);
        space.map(0x10000, 0x1000, true, true, Some((&fd, 0))).unwrap();
        space.map(0x11000, 0x1000, true, false, None).unwrap();
        let listed: Vec<(u64, bool, bool)> = space.regions().iter().map(|r| (r.iova, r.writable, r.has_fd)).collect();
        assert_eq!(listed, [(0x10000, true, true), (0x11000, false, false)]);
    }

    #[test]
    fn logging_is_on_from_its_start_to_its_stop() {
        let space = DmaSpace::new(16);
        space.map(0, 0x10000, true, true, None).unwrap();
        assert!(!space.is_logging());
        space.start_logging(4096, &[]).unwrap();
        assert!(space.is_logging());
        assert!(space.stop_logging());
        assert!(!space.is_logging());
        assert!(!space.stop_logging(), "a second stop finds it off");
    }

    #[test]
    fn unaligned_file_offset_is_honoured() {
        let space = DmaSpace::new(16);
        let (m, fd) = MappedRegion::memfd(c"g", 0x2000).unwrap();
        m.write_at(0x1010, &[0xab]).unwrap();
        space.map(0x0, 0x100, true, true, Some((&fd, 0x1010))).unwrap();
        let mut b = [0u8; 1];
        space.read(0, &mut b).unwrap();
        assert_eq!(b, [0xab]);
    }
}
