//! Shared memory mappings: guest memory the client passes by fd, and memfd-backed memory a
//! device offers the client to mmap.
//!
//! This is one of the two modules that hold `unsafe` (the other passes fds): the mapping's
//! pointer never leaves it, and every access is bounds-checked against the mapping's length
//! before memory is touched.

use std::ffi::CStr;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::stat::fstat;
use nix::unistd::ftruncate;

/// A live `MAP_SHARED` mapping of part of a file, unmapped on drop.
#[derive(Debug)]
pub struct MappedRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is only accessed through
// bounds-checked byte copies, which are sound from any thread (the other side of the sharing is
// another process anyway, so no Rust aliasing guarantees are claimed over the bytes).
unsafe impl Send for MappedRegion {}
// SAFETY: as above; `&MappedRegion` only offers byte copies in and out.
unsafe impl Sync for MappedRegion {}

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Zero length, or a length that does not fit the address space.
    #[error("mapping length {len:#x} is invalid")]
    BadLength {
        /// The length asked for.
        len: u64,
    },
    /// The file offset is not page-aligned or overflows.
    #[error("file offset {offset:#x} is not page-aligned")]
    BadOffset {
        /// The offset asked for.
        offset: u64,
    },
    /// The file is shorter than the range to map, so touching it would fault.
    #[error("file holds {file_size:#x} bytes, the mapping needs {needed:#x}")]
    FileTooSmall {
        /// Size of the file.
        file_size: u64,
        /// `offset + len`.
        needed: u64,
    },
    /// The kernel refused.
    #[error("mmap failed: {0}")]
    Os(Errno),
}

impl MapError {
    /// The errno a vfio-user reply carries for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            MapError::Os(e) => *e,
            _ => Errno::EINVAL,
        }
    }
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096)
}

impl MappedRegion {
    /// Maps `len` bytes of `fd` from `offset`, readable and/or writable.
    ///
    /// A regular file (or memfd) must be long enough for the whole range, and when it can be
    /// sealed it is sealed against shrinking, so the peer cannot later truncate it under us and
    /// turn an in-bounds access into SIGBUS.
    pub fn map_fd(fd: &OwnedFd, offset: u64, len: u64, read: bool, write: bool) -> Result<Self, MapError> {
        let size = usize::try_from(len).ok().and_then(NonZeroUsize::new).ok_or(MapError::BadLength { len })?;
        if !offset.is_multiple_of(page_size()) {
            return Err(MapError::BadOffset { offset });
        }
        let needed = offset.checked_add(len).ok_or(MapError::BadOffset { offset })?;
        let file_offset = i64::try_from(offset).map_err(|_| MapError::BadOffset { offset })?;
        let st = fstat(fd).map_err(MapError::Os)?;
        let is_regular = (st.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG;
        if is_regular {
            let file_size = u64::try_from(st.st_size).unwrap_or(0);
            if file_size < needed {
                return Err(MapError::FileTooSmall { file_size, needed });
            }
            // Best effort: files that do not support seals (or are already sealed) are fine.
            let _ = fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK));
        }
        let mut prot = ProtFlags::empty();
        if read {
            prot |= ProtFlags::PROT_READ;
        }
        if write {
            prot |= ProtFlags::PROT_WRITE;
        }
        // SAFETY: a fresh shared mapping at an address the kernel chooses; it aliases no Rust
        // object, and the file is at least `offset + len` long (checked above).
        let ptr =
            unsafe { mmap(None, size, prot, MapFlags::MAP_SHARED, fd.as_fd(), file_offset) }.map_err(MapError::Os)?;
        Ok(Self { ptr: ptr.cast(), len: size.get() })
    }

    /// Creates a memfd of `len` bytes (zero-filled) and maps it read-write; returns both so
    /// the fd can be handed to a client.
    pub fn memfd(name: &CStr, len: u64) -> Result<(Self, OwnedFd), MapError> {
        let fd = nix::sys::memfd::memfd_create(
            name,
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(MapError::Os)?;
        let flen = i64::try_from(len).map_err(|_| MapError::BadLength { len })?;
        ftruncate(&fd, flen).map_err(MapError::Os)?;
        let region = Self::map_fd(&fd, 0, len, true, true)?;
        Ok((region, fd))
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true: zero-length mappings are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: u64, count: usize) -> Option<usize> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(count)?;
        (end <= self.len).then_some(start)
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`; `None` if out of bounds.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Option<()> {
        let start = self.check(offset, buf.len())?;
        let src = self.ptr.as_ptr().wrapping_add(start);
        // SAFETY: `start + buf.len() <= self.len` (checked), the mapping is live while `self`
        // is, and `buf` is a distinct Rust allocation, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }

    /// Copies `data` to `offset`; `None` if out of bounds.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Option<()> {
        let start = self.check(offset, data.len())?;
        let dst = self.ptr.as_ptr().wrapping_add(start);
        // SAFETY: `start + data.len() <= self.len` (checked), the mapping is live and writable
        // memory shared with the peer, and `data` is a distinct allocation.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Some(())
    }

    /// Fills `count` bytes at `offset` with `byte`; `None` if out of bounds.
    pub fn fill(&self, offset: u64, count: usize, byte: u8) -> Option<()> {
        let start = self.check(offset, count)?;
        let dst = self.ptr.as_ptr().wrapping_add(start);
        // SAFETY: `start + count <= self.len` (checked) and the mapping is live and writable.
        unsafe { std::ptr::write_bytes(dst, byte, count) };
        Some(())
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `map_fd`, and no reference
        // into it outlives `self` (accesses copy bytes out and in).
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            tracing::warn!(error = %e, "munmap failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_round_trips_bytes_and_refuses_out_of_bounds() {
        let (m, _fd) = MappedRegion::memfd(c"t", 8192).unwrap();
        m.write_at(8190, &[1, 2]).unwrap();
        let mut b = [0; 2];
        m.read_at(8190, &mut b).unwrap();
        assert_eq!(b, [1, 2]);
        assert!(m.write_at(8191, &[1, 2]).is_none());
        assert!(m.read_at(u64::MAX, &mut b).is_none());
    }

    #[test]
    fn file_shorter_than_range_is_refused() {
        let (_m, fd) = MappedRegion::memfd(c"t", 4096).unwrap();
        assert_eq!(
            MappedRegion::map_fd(&fd, 0, 8192, true, true).unwrap_err(),
            MapError::FileTooSmall { file_size: 4096, needed: 8192 }
        );
    }

    #[test]
    fn unaligned_offset_is_refused() {
        let (_m, fd) = MappedRegion::memfd(c"t", 8192).unwrap();
        assert_eq!(MappedRegion::map_fd(&fd, 12, 4096, true, true).unwrap_err(), MapError::BadOffset { offset: 12 });
    }

    #[test]
    fn mapped_file_is_sealed_against_shrinking() {
        let (_m, fd) = MappedRegion::memfd(c"t", 8192).unwrap();
        let _g = MappedRegion::map_fd(&fd, 0, 8192, true, false).unwrap();
        assert_eq!(ftruncate(&fd, 0), Err(Errno::EPERM));
    }
}
