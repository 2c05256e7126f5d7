//! One RAM region: a sparse memfd, mapped here as the guest's memory and handed to the server
//! by DMA_MAP.
//!
//! Stores go through the mapping (a vCPU store is a store into the memfd's pages). Loads go
//! through `pread` on the memfd instead: reading a hole of a shared memfd mapping would
//! allocate a page for it, while `pread` of a hole returns zeros and allocates nothing, so
//! comparing two untouched multi-GiB guests stays free. The destination of a migration fills
//! its RAM with `pwritev`, a run of pages at a time: the write allocates each page, where a
//! store through the mapping would take a page fault (and zero the page) first. All views are
//! the same page cache.
//!
//! The region starts [`FILE_OFFSET`] bytes into its memfd, as QEMU's RAM regions start at an
//! offset into their memory backend's file: DMA_MAP sends that offset, so a server must map
//! from it.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::uio::pwritev;
use nix::unistd::{Whence, lseek};
use vfu_server::mmap::MappedRegion;

use super::{GuestError, PAGE_SIZE};

/// Where a region's bytes start in its memfd: one page in (a hole: it costs nothing).
pub const FILE_OFFSET: u64 = PAGE_SIZE;

/// One contiguous range of guest RAM, backed by its own memfd.
#[derive(Debug)]
pub struct RamRegion {
    /// Guest (IOVA) address of the first byte.
    pub iova: u64,
    /// Length in bytes (a nonzero multiple of [`PAGE_SIZE`](super::PAGE_SIZE)).
    pub len: u64,
    /// Index of this region's first page among all pages of the guest (for the dirty logs).
    pub(super) first_page: u64,
    file: File,
    map: MappedRegion,
}

impl RamRegion {
    /// A zero-filled region of `len` bytes at `iova`: a memfd of [`FILE_OFFSET`] + `len` bytes
    /// (sparse, so it costs nothing until touched) mapped read-write.
    pub(super) fn new(iova: u64, len: u64, first_page: u64) -> Result<Self, GuestError> {
        let size = len.checked_add(FILE_OFFSET).ok_or(GuestError::BadRegion { iova, len })?;
        let (map, fd) =
            MappedRegion::memfd(c"miglab-guest-ram", size).map_err(|source| GuestError::Memfd { iova, len, source })?;
        Ok(Self { iova, len, first_page, file: File::from(fd), map })
    }

    /// The memfd (what DMA_MAP sends the server, at [`file_offset`](Self::file_offset)).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Where the region's bytes start in its memfd.
    pub fn file_offset(&self) -> u64 {
        FILE_OFFSET
    }

    /// The end address (exclusive).
    pub fn end(&self) -> u64 {
        self.iova + self.len
    }

    /// Whether `iova` is inside the region.
    pub fn contains(&self, iova: u64) -> bool {
        iova >= self.iova && iova < self.end()
    }

    /// Bytes of memory the region actually holds (allocated pages of the memfd): 0 for an
    /// untouched region, whatever its size.
    pub fn resident_bytes(&self) -> Result<u64, GuestError> {
        let st = nix::sys::stat::fstat(&self.file).map_err(|e| self.io_error(self.iova, 0, e.into()))?;
        Ok(u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512))
    }

    fn io_error(&self, iova: u64, len: u64, source: std::io::Error) -> GuestError {
        GuestError::Io { iova, len, source }
    }

    /// Reads `buf.len()` bytes at region offset `offset` (in bounds: checked by the caller).
    pub(super) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.file
            .read_exact_at(buf, FILE_OFFSET + offset)
            .map_err(|e| self.io_error(self.iova + offset, buf.len() as u64, e))
    }

    /// Writes `parts`, one after the other, at region offset `offset` through the memfd (in
    /// bounds: checked by the caller).
    pub(super) fn write_file_at(&self, offset: u64, parts: &[&[u8]]) -> Result<(), GuestError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let error = |e: std::io::Error| self.io_error(self.iova + offset, len as u64, e);
        let mut iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut iov[..];
        let mut at = FILE_OFFSET + offset;
        while !rest.is_empty() {
            let pos = i64::try_from(at).map_err(|_| error(std::io::ErrorKind::InvalidInput.into()))?;
            let n = match pwritev(&self.file, rest, pos) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(error(e.into())),
                Ok(0) => return Err(error(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => n,
            };
            at += n as u64;
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    /// Stores `data` at region offset `offset` through the mapping.
    pub(super) fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), GuestError> {
        self.map
            .write_at(FILE_OFFSET + offset, data)
            .ok_or(GuestError::OutOfRange { iova: self.iova.saturating_add(offset), len: data.len() as u64 })
    }

    /// Gives every page back to the kernel (a hole punched over the whole region): the region
    /// reads zero again, for this process and for a server that mapped it alike.
    pub(super) fn discard(&self) -> Result<(), GuestError> {
        let (at, len) = (i64::try_from(FILE_OFFSET), i64::try_from(self.len));
        let (Ok(at), Ok(len)) = (at, len) else {
            return Err(self.io_error(self.iova, self.len, std::io::ErrorKind::InvalidInput.into()));
        };
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(self.file.as_fd(), flags, at, len).map_err(|e| self.io_error(self.iova, self.len, e.into()))
    }

    /// The ranges of region offsets `[start, end)` that hold data (everything else is a hole,
    /// reading zero), from the memfd's SEEK_DATA / SEEK_HOLE.
    pub(super) fn data_extents(&self) -> Result<Vec<(u64, u64)>, GuestError> {
        // lseek speaks file offsets; the region's offsets are FILE_OFFSET less.
        let seek = |at: u64, whence: Whence| {
            let pos = i64::try_from(FILE_OFFSET + at).unwrap_or(i64::MAX);
            lseek(self.file.as_fd(), pos, whence)
                .map(|o| u64::try_from(o).map_or(self.len, |o| o.saturating_sub(FILE_OFFSET)))
        };
        let mut out = Vec::new();
        let mut at: u64 = 0;
        while at < self.len {
            let start = match seek(at, Whence::SeekData) {
                Ok(s) => s,
                Err(Errno::ENXIO) => break, // no data past `at`
                Err(e) => return Err(self.io_error(self.iova + at, 0, e.into())),
            };
            if start >= self.len {
                break;
            }
            let end = match seek(start, Whence::SeekHole) {
                Ok(e) => e.min(self.len),
                Err(e) => return Err(self.io_error(self.iova + start, 0, e.into())),
            };
            if end <= start {
                break;
            }
            out.push((start, end));
            at = end;
        }
        Ok(out)
    }
}
