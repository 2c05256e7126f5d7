//! Driving the `dma-engine` device and its guest memory through a [`mock_qemu::Client`], for the
//! migration tests.
//!
//! - [`GuestRam`]: guest memory in a memfd, mapped for the device with DMA_MAP (read/write), read
//!   and written by the test with `pread`/`pwrite` (no mmap needed).
//! - [`MsgRam`]: guest memory the server reaches only by DMA_READ / DMA_WRITE messages, as a
//!   [`DmaService`] for a region mapped without an fd.
//! - [`run`] and the command helpers program a command and ring the doorbell; [`snapshot`]
//!   reads everything a client can observe of the device.
//! - [`assert_same_bytes`] compares large buffers by length, hash and first differing offset
//!   rather than dumping megabytes.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};

use mock_qemu::{Client, DmaService};
use nix::errno::Errno;

use super::memfd;

// dma-engine facts (its module documentation).
/// Region index of the registers.
pub const BAR0: u32 = 0;
/// Region index of device memory.
pub const BAR2: u32 = 2;
/// Region index of the shared scratch memory.
pub const BAR4: u32 = 4;
/// Region index of configuration space.
pub const CONFIG: u32 = 7;
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 4096;
/// Size of BAR4.
pub const BAR4_SIZE: u64 = 64 << 10;
/// Size of configuration space.
pub const CONFIG_SIZE: u64 = 256;
/// DEVMEM_SIZE register.
pub const REG_DEVMEM_SIZE: u64 = 0x08;
/// STATUS register.
pub const REG_STATUS: u64 = 0x14;
/// SCRATCH register.
pub const REG_SCRATCH: u64 = 0x18;
/// CMD_OP register.
pub const REG_CMD_OP: u64 = 0x20;
/// CMD_GUEST_ADDR register.
pub const REG_CMD_GUEST_ADDR: u64 = 0x28;
/// CMD_DEV_OFFSET register.
pub const REG_CMD_DEV_OFFSET: u64 = 0x30;
/// CMD_LEN register.
pub const REG_CMD_LEN: u64 = 0x38;
/// CMD_SEED register.
pub const REG_CMD_SEED: u64 = 0x40;
/// DOORBELL register.
pub const REG_DOORBELL: u64 = 0x48;
/// CMDS_COMPLETED register.
pub const REG_CMDS_COMPLETED: u64 = 0x50;
/// FILL guest memory with the seeded pattern.
pub const OP_FILL: u32 = 1;
/// COPY guest memory to device memory.
pub const OP_COPY_TO_DEVICE: u32 = 2;
/// COPY device memory to guest memory.
pub const OP_COPY_TO_GUEST: u32 = 3;
/// STATUS after a successful command.
pub const STATUS_OK: u32 = 1;

/// DMA_MAP flags READ | WRITE.
pub const DMA_RW: u32 = 1 | 2;
/// The page size the tests log at.
pub const PAGE: u64 = 4096;

/// Panics with the call's error and the server's context.
pub fn ok<T>(what: &str, r: Result<T, mock_qemu::ClientError>, context: &dyn Fn() -> String) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e} ({e:?})\n{}", context()))
}

/// One dma-engine command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmd {
    /// CMD_OP.
    pub op: u32,
    /// CMD_GUEST_ADDR.
    pub guest: u64,
    /// CMD_DEV_OFFSET.
    pub dev: u64,
    /// CMD_LEN.
    pub len: u64,
    /// CMD_SEED.
    pub seed: u64,
}

impl Cmd {
    /// FILL `len` bytes of guest memory at `guest` with the pattern of `seed`.
    pub fn fill(guest: u64, len: u64, seed: u64) -> Self {
        Self { op: OP_FILL, guest, dev: 0, len, seed }
    }

    /// COPY `len` bytes of guest memory at `guest` to device memory at `dev`.
    pub fn to_device(guest: u64, dev: u64, len: u64) -> Self {
        Self { op: OP_COPY_TO_DEVICE, guest, dev, len, seed: 0 }
    }

    /// COPY `len` bytes of device memory at `dev` to guest memory at `guest`.
    pub fn to_guest(dev: u64, guest: u64, len: u64) -> Self {
        Self { op: OP_COPY_TO_GUEST, guest, dev, len, seed: 0 }
    }

    /// Whether the command writes guest memory.
    pub fn writes_guest(&self) -> bool {
        self.op != OP_COPY_TO_DEVICE
    }
}

/// Programs `cmd`, rings the doorbell and returns STATUS.
pub fn try_run(c: &mut Client, cmd: Cmd) -> Result<u32, mock_qemu::ClientError> {
    c.write_u32(BAR0, REG_CMD_OP, cmd.op)?;
    c.write_u64(BAR0, REG_CMD_GUEST_ADDR, cmd.guest)?;
    c.write_u64(BAR0, REG_CMD_DEV_OFFSET, cmd.dev)?;
    c.write_u64(BAR0, REG_CMD_LEN, cmd.len)?;
    c.write_u64(BAR0, REG_CMD_SEED, cmd.seed)?;
    c.write_u32(BAR0, REG_DOORBELL, 1)?;
    c.read_u32(BAR0, REG_STATUS)
}

/// Runs `cmd` and asserts it ended OK.
pub fn run(c: &mut Client, cmd: Cmd, context: &dyn Fn() -> String) {
    let status = ok(&format!("running {cmd:?}"), try_run(c, cmd), context);
    assert_eq!(status, STATUS_OK, "{cmd:?} must end OK\n{}", context());
}

/// Reads `len` bytes of `region` from `offset` in REGION_READs of at most `chunk` bytes.
pub fn read_region(
    c: &mut Client,
    region: u32,
    offset: u64,
    len: u64,
    chunk: u32,
) -> Result<Vec<u8>, mock_qemu::ClientError> {
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut at = 0;
    while at < len {
        let n = u32::try_from((len - at).min(u64::from(chunk))).unwrap_or(chunk);
        out.extend_from_slice(&c.region_read(region, offset + at, n)?);
        at += u64::from(n);
    }
    Ok(out)
}

/// Everything a client can observe of a dma-engine device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// BAR0, every byte.
    pub regs: Vec<u8>,
    /// Configuration space.
    pub config: Vec<u8>,
    /// BAR2, device memory.
    pub devmem: Vec<u8>,
    /// BAR4, shared scratch memory.
    pub scratch: Vec<u8>,
}

/// Reads [`DeviceView`] through region reads.
pub fn snapshot(c: &mut Client, context: &dyn Fn() -> String) -> DeviceView {
    let devmem_size = ok("reading DEVMEM_SIZE", c.read_u64(BAR0, REG_DEVMEM_SIZE), context);
    DeviceView {
        regs: ok("reading BAR0", read_region(c, BAR0, 0, BAR0_SIZE, 4096), context),
        config: ok("reading config space", read_region(c, CONFIG, 0, CONFIG_SIZE, 256), context),
        devmem: ok("reading BAR2", read_region(c, BAR2, 0, devmem_size, 1 << 20), context),
        scratch: ok("reading BAR4", read_region(c, BAR4, 0, BAR4_SIZE, 64 << 10), context),
    }
}

/// FNV-1a 64 of `data`, for messages about large buffers.
pub fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Panics unless `got` equals `want`, naming the first differing offset and both hashes.
pub fn assert_same_bytes(what: &str, want: &[u8], got: &[u8]) {
    if want == got {
        return;
    }
    let first = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
    let around = |b: &[u8]| b.get(first..(first + 16).min(b.len())).map(|s| format!("{s:02x?}")).unwrap_or_default();
    let differing = want.iter().zip(got).filter(|(a, b)| a != b).count();
    panic!(
        "{what} differs: lengths {} vs {}, hashes {:#018x} vs {:#018x}, {differing} bytes differ, the first at \
         offset {first:#x}: expected {} got {}",
        want.len(),
        got.len(),
        hash(want),
        hash(got),
        around(want),
        around(got)
    );
}

/// Guest memory in a memfd, at a fixed IOVA.
pub struct GuestRam {
    file: File,
    /// IOVA of the first byte.
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
}

impl GuestRam {
    /// `len` zeroed bytes at `iova`.
    pub fn new(iova: u64, len: u64) -> Self {
        Self { file: File::from(memfd(len)), iova, len }
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// DMA_MAP of the whole memory, read/write, with its fd.
    pub fn map(&self, c: &mut Client) -> Result<(), mock_qemu::ClientError> {
        c.dma_map(self.iova, self.len, DMA_RW, Some((self.fd(), 0)))
    }

    /// DMA_UNMAP of the whole memory.
    pub fn unmap(&self, c: &mut Client) -> Result<(), mock_qemu::ClientError> {
        c.dma_unmap(self.iova, self.len, 0).map(|_| ())
    }

    /// The bytes of `[iova, iova + len)`.
    pub fn read(&self, iova: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let at =
            iova.checked_sub(self.iova).unwrap_or_else(|| panic!("{iova:#x} is below the RAM at {:#x}", self.iova));
        self.file.read_exact_at(&mut buf, at).unwrap_or_else(|e| panic!("reading guest RAM at {iova:#x} failed: {e}"));
        buf
    }

    /// Everything.
    pub fn contents(&self) -> Vec<u8> {
        self.read(self.iova, self.len)
    }

    /// Writes `data` at `iova`.
    pub fn write(&self, iova: u64, data: &[u8]) {
        let at =
            iova.checked_sub(self.iova).unwrap_or_else(|| panic!("{iova:#x} is below the RAM at {:#x}", self.iova));
        self.file.write_all_at(data, at).unwrap_or_else(|e| panic!("writing guest RAM at {iova:#x} failed: {e}"));
    }
}

/// Guest memory the server reaches by DMA_READ / DMA_WRITE messages; clones share the bytes.
#[derive(Clone)]
pub struct MsgRam {
    /// IOVA of the first byte.
    pub iova: u64,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl MsgRam {
    /// `len` zeroed bytes at `iova`.
    pub fn new(iova: u64, len: usize) -> Self {
        Self { iova, bytes: Arc::new(Mutex::new(vec![0; len])) }
    }

    /// A copy of the bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn range(&self, addr: u64, len: u64) -> Result<std::ops::Range<usize>, Errno> {
        let start = usize::try_from(addr.checked_sub(self.iova).ok_or(Errno::EFAULT)?).map_err(|_| Errno::EFAULT)?;
        let end = start.checked_add(usize::try_from(len).map_err(|_| Errno::EFAULT)?).ok_or(Errno::EFAULT)?;
        Ok(start..end)
    }
}

impl DmaService for MsgRam {
    fn dma_read(&mut self, addr: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let r = self.range(addr, len)?;
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).get(r).map(<[u8]>::to_vec).ok_or(Errno::EFAULT)
    }

    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let r = self.range(addr, data.len() as u64)?;
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.get_mut(r).ok_or(Errno::EFAULT)?.copy_from_slice(data);
        Ok(())
    }
}

/// The page numbers (relative to `iova`, in pages of `page_size`) whose bits are set.
pub fn set_pages(bitmap: &[u64]) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for (w, word) in bitmap.iter().enumerate() {
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                out.insert(w as u64 * 64 + bit);
            }
        }
    }
    out
}

/// The pages of `page_size` (relative to `base`) that `[addr, addr + len)` touches.
pub fn pages_of(base: u64, page_size: u64, addr: u64, len: u64) -> BTreeSet<u64> {
    if len == 0 {
        return BTreeSet::new();
    }
    let first = (addr - base) / page_size;
    let last = (addr - base + len - 1) / page_size;
    (first..=last).collect()
}

/// The bitmap words of `pages` over a report of `pages_in_range` pages.
pub fn bitmap_of(pages: &BTreeSet<u64>, pages_in_range: u64) -> Vec<u64> {
    let mut words = vec![0u64; usize::try_from(pages_in_range.div_ceil(64)).unwrap_or(0)];
    for p in pages {
        if let Some(w) = words.get_mut(usize::try_from(p / 64).unwrap_or(usize::MAX)) {
            *w |= 1 << (p % 64);
        }
    }
    words
}

/// A `vfu-server --device dma-engine` process and a negotiated client of it.
pub fn setup() -> (crate::common::ServerProcess, mock_qemu::Client) {
    let server = crate::common::ServerProcess::spawn(&["--device", "dma-engine"]);
    let client = server.connect();
    (server, client)
}

/// The errno of a refusal; panics on success or any other failure.
pub fn errno<T: std::fmt::Debug>(r: Result<T, mock_qemu::ClientError>) -> Option<nix::errno::Errno> {
    match r {
        Err(mock_qemu::ClientError::Refused { errno, .. }) => Some(errno),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
