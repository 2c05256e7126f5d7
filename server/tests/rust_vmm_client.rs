//! Interoperability with an independent client: rust-vmm's `vfio_user` crate (0.1.7) against
//! the real `vfu-server --device dma-engine` binary.
//!
//! Proves that a client we did not write can negotiate, list the device's regions (BAR4 with its
//! sparse-mmap capability and fd, which we mmap and use as shared memory), access registers and
//! device memory, map guest memory from a memfd and have the device DMA into it, unmap it (after
//! which device DMA faults), get an eventfd signalled on DMA completion, and reset the device.
//!
//! That client ignores error replies and reads fixed reply sizes, so only valid requests are sent
//! through it; its `resettable()` inverts the RESET flag, which is checked as such.

mod common;

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use pretty_assertions::assert_eq;
use vfio_user::Client;

use common::{REPLY_TIMEOUT, ServerProcess, eventfd, memfd, poll_until};

const DEVICE: [&str; 2] = ["--device", "dma-engine"];

// dma-engine facts (its module documentation).
const BAR0: u32 = 0;
const BAR2: u32 = 2;
const BAR4: u32 = 4;
const CONFIG: u32 = 7;
const MAGIC: u32 = u32::from_le_bytes(*b"DMAE");
const REG_MAGIC: u64 = 0x00;
const REG_VERSION: u64 = 0x04;
const REG_DEVMEM_SIZE: u64 = 0x08;
const REG_STATUS: u64 = 0x14;
const REG_SCRATCH: u64 = 0x18;
const REG_CMD_OP: u64 = 0x20;
const REG_CMD_FLAGS: u64 = 0x24;
const REG_CMD_GUEST_ADDR: u64 = 0x28;
const REG_CMD_DEV_OFFSET: u64 = 0x30;
const REG_CMD_LEN: u64 = 0x38;
const REG_CMD_SEED: u64 = 0x40;
const REG_DOORBELL: u64 = 0x48;
const REG_CMDS_COMPLETED: u64 = 0x50;
const REG_IRQS_RAISED: u64 = 0x70;
const OP_FILL: u32 = 1;
const OP_COPY_TO_DEVICE: u32 = 2;
const OP_COPY_TO_GUEST: u32 = 3;
const CMD_FLAG_IRQ: u32 = 1;
const STATUS_IDLE: u32 = 0;
const STATUS_OK: u32 = 1;
const STATUS_DMA_FAULT: u32 = 2;

// Specification numbers.
const REGION_RW: u32 = 1 | 2;
const REGION_RW_MMAP_CAPS: u32 = 1 | 2 | 4 | 8;
const IRQ_MSIX: u32 = 2;
const IRQ_SET_DATA_EVENTFD: u32 = 4;
const IRQ_SET_ACTION_TRIGGER: u32 = 32;

const GUEST_IOVA: u64 = 0x4000_0000;
const GUEST_LEN: u64 = 0x1_0000;

/// A server and a `vfio_user::Client` connected to it.
fn setup() -> (ServerProcess, Client) {
    let server = ServerProcess::spawn(&DEVICE);
    let client = Client::new(server.socket())
        .unwrap_or_else(|e| panic!("vfio_user::Client::new failed: {e:?}\n{}", server.context()));
    (server, client)
}

fn read(client: &mut Client, server: &ServerProcess, region: u32, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    client
        .region_read(region, offset, &mut buf)
        .unwrap_or_else(|e| panic!("region_read({region}, {offset:#x}, {len}) failed: {e:?}\n{}", server.context()));
    buf
}

fn write(client: &mut Client, server: &ServerProcess, region: u32, offset: u64, data: &[u8]) {
    client.region_write(region, offset, data).unwrap_or_else(|e| {
        panic!("region_write({region}, {offset:#x}, {} bytes) failed: {e:?}\n{}", data.len(), server.context())
    });
}

fn read_u32(client: &mut Client, server: &ServerProcess, offset: u64) -> u32 {
    let b = read(client, server, BAR0, offset, 4);
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

fn read_u64(client: &mut Client, server: &ServerProcess, offset: u64) -> u64 {
    let b = read(client, server, BAR0, offset, 8);
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// Programs one command, rings the doorbell and returns STATUS.
fn run_command(
    client: &mut Client,
    server: &ServerProcess,
    op: u32,
    flags: u32,
    guest: u64,
    dev: u64,
    len: u64,
) -> u32 {
    write(client, server, BAR0, REG_CMD_OP, &op.to_le_bytes());
    write(client, server, BAR0, REG_CMD_FLAGS, &flags.to_le_bytes());
    write(client, server, BAR0, REG_CMD_GUEST_ADDR, &guest.to_le_bytes());
    write(client, server, BAR0, REG_CMD_DEV_OFFSET, &dev.to_le_bytes());
    write(client, server, BAR0, REG_CMD_LEN, &len.to_le_bytes());
    write(client, server, BAR0, REG_DOORBELL, &1u32.to_le_bytes());
    read_u32(client, server, REG_STATUS)
}

/// SplitMix64, written from the dma-engine documentation (independently of its code).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes a FILL of `len` bytes seeded with `seed` writes.
fn fill_bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len.div_ceil(8) as u64).flat_map(|k| splitmix64(seed.wrapping_add(k)).to_le_bytes()).take(len).collect()
}

/// A shared mapping of `len` bytes of a file, unmapped on drop; accessed with volatile byte
/// copies because another process (the server) writes the same memory.
struct SharedMapping {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
}

impl SharedMapping {
    fn new(fd: impl AsFd, offset: u64, len: usize) -> Self {
        let size = NonZeroUsize::new(len).expect("a non-empty mapping");
        let offset = i64::try_from(offset).expect("offset fits off_t");
        // SAFETY: a fresh MAP_SHARED mapping at an address the kernel chooses; it aliases no
        // Rust object, and it is only accessed through `read`/`write` below, bounds-checked.
        let ptr =
            unsafe { mmap(None, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, fd, offset) }
                .unwrap_or_else(|e| panic!("mmap of {len} bytes at {offset:#x} failed: {e}"));
        Self { ptr, len }
    }

    fn byte_ptr(&self, at: usize) -> *mut u8 {
        assert!(at < self.len, "offset {at:#x} is outside the {:#x}-byte mapping", self.len);
        self.ptr.as_ptr().cast::<u8>().wrapping_add(at)
    }

    fn read(&self, at: usize) -> u8 {
        let p = self.byte_ptr(at);
        // SAFETY: `p` is inside the live mapping (checked above) and any byte value is valid.
        unsafe { p.read_volatile() }
    }

    fn write(&self, at: usize, v: u8) {
        let p = self.byte_ptr(at);
        // SAFETY: `p` is inside the live, writable mapping (checked above).
        unsafe { p.write_volatile(v) }
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` with this length and is not used after this.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

#[test]
fn version_device_regions_and_irqs_are_reported_to_rust_vmm() {
    let (server, mut client) = setup();
    // Client::new negotiated VERSION and fetched every region's info.
    let expected: [(u32, u64, u32); 9] = [
        (0, 4096, REGION_RW),
        (1, 0, 0),
        (2, 8 << 20, REGION_RW),
        (3, 0, 0),
        (4, 64 << 10, REGION_RW_MMAP_CAPS),
        (5, 0, 0),
        (6, 0, 0),
        (7, 256, REGION_RW),
        (8, 0, 0),
    ];
    for (index, size, flags) in expected {
        let r = client.region(index).unwrap_or_else(|| panic!("region {index} missing\n{}", server.context()));
        assert_eq!((r.index, r.size, r.flags), (index, size, flags), "region {index} (index, size, flags)");
        assert_eq!(r.file_offset.is_some(), index == BAR4, "only BAR4 comes with an fd (region {index})");
    }
    assert!(client.region(9).is_none(), "the device has 9 region indexes");
    let bar4 = client.region(BAR4).expect("BAR4");
    let areas: Vec<(u64, u64)> = bar4.sparse_areas.iter().map(|a| (a.offset, a.size)).collect();
    assert_eq!(areas, [(0, 0x4000), (0x8000, 0x8000)], "BAR4 sparse-mmap areas");

    // vfio_user 0.1.7 computes resettable() as "RESET flag absent"; our device sets the flag.
    assert!(!client.resettable(), "the device must report DEVICE_FLAGS_RESET (rust-vmm inverts it)");

    let irqs: Vec<(u32, u32, u32)> = (0..5)
        .map(|i| {
            let info =
                client.get_irq_info(i).unwrap_or_else(|e| panic!("get_irq_info({i}): {e:?}\n{}", server.context()));
            (info.index, info.flags, info.count)
        })
        .collect();
    // flags: EVENTFD 1, MASKABLE 2, AUTOMASKED 4, NORESIZE 8.
    assert_eq!(irqs, [(0, 1 | 2 | 4, 1), (1, 1 | 8, 1), (2, 1 | 2 | 8, 4), (3, 1, 1), (4, 1, 1)], "IRQ indexes");

    assert_eq!(read_u32(&mut client, &server, REG_MAGIC), MAGIC);
    assert_eq!(read_u32(&mut client, &server, REG_VERSION), 1);
    assert_eq!(read_u64(&mut client, &server, REG_DEVMEM_SIZE), 8 << 20);
}

#[test]
fn bar4_sparse_areas_are_shared_memory_through_the_region_fd() {
    let (server, mut client) = setup();
    let bar4 = client.region(BAR4).expect("BAR4");
    let file_offset = bar4.file_offset.as_ref().expect("BAR4 comes with an fd");
    let fd = file_offset.file().as_fd().try_clone_to_owned().expect("dup of the region fd");
    let base = file_offset.start();
    let areas: Vec<(u64, u64)> = bar4.sparse_areas.iter().map(|a| (a.offset, a.size)).collect();

    for (offset, size) in areas {
        let map = SharedMapping::new(&fd, base + offset, usize::try_from(size).expect("area size"));
        // Written through the mapping, read back through the server.
        map.write(0x10, 0xa5);
        map.write(size as usize - 1, 0x5a);
        assert_eq!(read(&mut client, &server, BAR4, offset + 0x10, 1), [0xa5], "area at {offset:#x}: first byte");
        assert_eq!(read(&mut client, &server, BAR4, offset + size - 1, 1), [0x5a], "area at {offset:#x}: last byte");
        // Written through the server, read through the mapping.
        write(&mut client, &server, BAR4, offset + 0x20, &[1, 2, 3, 4]);
        assert_eq!((0x20..0x24).map(|i| map.read(i)).collect::<Vec<_>>(), [1, 2, 3, 4], "area at {offset:#x}");
    }
    // The trapped middle is still reachable by message.
    write(&mut client, &server, BAR4, 0x5000, &[9; 16]);
    assert_eq!(read(&mut client, &server, BAR4, 0x5000, 16), [9; 16], "trapped middle of BAR4");
}

#[test]
fn registers_and_device_memory_round_trip() {
    let (server, mut client) = setup();
    write(&mut client, &server, BAR0, REG_SCRATCH, &0x0123_4567_89ab_cdefu64.to_le_bytes());
    assert_eq!(read_u64(&mut client, &server, REG_SCRATCH), 0x0123_4567_89ab_cdef);
    // The halves of a 64-bit register, one 4-byte access each.
    write(&mut client, &server, BAR0, REG_SCRATCH + 4, &0xfeed_f00du32.to_le_bytes());
    assert_eq!(read_u64(&mut client, &server, REG_SCRATCH), 0xfeed_f00d_89ab_cdef);
    // MAGIC is read-only.
    write(&mut client, &server, BAR0, REG_MAGIC, &0u32.to_le_bytes());
    assert_eq!(read_u32(&mut client, &server, REG_MAGIC), MAGIC);

    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    write(&mut client, &server, BAR2, 0x7f_0000, &data);
    assert_eq!(read(&mut client, &server, BAR2, 0x7f_0000, data.len()), data, "device memory round trip");
    assert_eq!(read(&mut client, &server, CONFIG, 0, 2).len(), 2, "configuration space is readable");
}

#[test]
fn doorbell_dma_writes_and_reads_guest_memory_mapped_from_a_memfd() {
    let (server, mut client) = setup();
    let guest = memfd(GUEST_LEN);
    client
        .dma_map(0, GUEST_IOVA, GUEST_LEN, guest.as_raw_fd())
        .unwrap_or_else(|e| panic!("dma_map failed: {e:?}\n{}", server.context()));
    let file = std::fs::File::from(guest.try_clone().expect("dup of the memfd"));

    // COPY device memory -> guest.
    let pattern: Vec<u8> = (0..0x300u32).map(|i| (i ^ 0x5a) as u8).collect();
    write(&mut client, &server, BAR2, 0x40, &pattern);
    let status = run_command(&mut client, &server, OP_COPY_TO_GUEST, 0, GUEST_IOVA + 0x100, 0x40, 0x300);
    assert_eq!(status, STATUS_OK, "COPY to guest\n{}", server.context());
    let mut got = vec![0u8; 0x300];
    file.read_exact_at(&mut got, 0x100).expect("reading the guest memfd");
    assert_eq!(got, pattern, "guest memory after COPY to guest");
    let mut before = [0xffu8; 0x100];
    file.read_exact_at(&mut before, 0).expect("reading the guest memfd");
    assert_eq!(before, [0u8; 0x100], "bytes before the command's range are untouched");

    // FILL guest memory with the seeded pattern.
    write(&mut client, &server, BAR0, REG_CMD_SEED, &42u64.to_le_bytes());
    let status = run_command(&mut client, &server, OP_FILL, 0, GUEST_IOVA + 0x1000, 0, 0x1003);
    assert_eq!(status, STATUS_OK, "FILL\n{}", server.context());
    let mut got = vec![0u8; 0x1003];
    file.read_exact_at(&mut got, 0x1000).expect("reading the guest memfd");
    assert!(got == fill_bytes(42, 0x1003), "guest memory after FILL must be splitmix64(seed + k) words");

    // COPY guest -> device memory.
    let from_guest: Vec<u8> = (0..0x200u32).map(|i| (i * 13) as u8).collect();
    file.write_all_at(&from_guest, 0x8000).expect("writing the guest memfd");
    let status = run_command(&mut client, &server, OP_COPY_TO_DEVICE, 0, GUEST_IOVA + 0x8000, 0x10_0000, 0x200);
    assert_eq!(status, STATUS_OK, "COPY to device\n{}", server.context());
    assert_eq!(read(&mut client, &server, BAR2, 0x10_0000, 0x200), from_guest, "device memory after COPY to device");
    assert_eq!(read_u64(&mut client, &server, REG_CMDS_COMPLETED), 3);

    // After DMA_UNMAP the same command faults and guest memory is left alone.
    client.dma_unmap(GUEST_IOVA, GUEST_LEN).unwrap_or_else(|e| panic!("dma_unmap failed: {e:?}\n{}", server.context()));
    write(&mut client, &server, BAR0, REG_CMD_SEED, &7u64.to_le_bytes());
    let status = run_command(&mut client, &server, OP_FILL, 0, GUEST_IOVA, 0, 0x100);
    assert_eq!(status, STATUS_DMA_FAULT, "FILL after dma_unmap must fault");
    let mut first = [0xffu8; 0x100];
    file.read_exact_at(&mut first, 0).expect("reading the guest memfd");
    assert_eq!(first, [0u8; 0x100], "an unmapped range must not be written");
}

/// Reads an eventfd's counter once it is non-zero, waiting at most [`REPLY_TIMEOUT`].
fn wait_eventfd(fd: &OwnedFd) -> Option<u64> {
    poll_until(REPLY_TIMEOUT, || {
        let mut b = [0u8; 8];
        nix::unistd::read(fd, &mut b).ok().map(|_| u64::from_ne_bytes(b))
    })
}

#[test]
fn msix_eventfd_is_signalled_on_dma_completion() {
    let (server, mut client) = setup();
    let guest = memfd(GUEST_LEN);
    client.dma_map(0, GUEST_IOVA, GUEST_LEN, guest.as_raw_fd()).expect("dma_map");
    let efd = eventfd();
    client
        .set_irqs(IRQ_MSIX, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 1, &[efd.as_raw_fd()])
        .unwrap_or_else(|e| panic!("set_irqs failed: {e:?}\n{}", server.context()));

    let status = run_command(&mut client, &server, OP_FILL, CMD_FLAG_IRQ, GUEST_IOVA, 0, 0x100);
    assert_eq!(status, STATUS_OK);
    assert_eq!(wait_eventfd(&efd), Some(1), "MSI-X vector 0's eventfd must be signalled once\n{}", server.context());
    assert_eq!(read_u64(&mut client, &server, REG_IRQS_RAISED), 1);

    // A command without the IRQ flag raises nothing.
    assert_eq!(run_command(&mut client, &server, OP_FILL, 0, GUEST_IOVA, 0, 0x100), STATUS_OK);
    let mut b = [0u8; 8];
    assert!(nix::unistd::read(&efd, &mut b).is_err(), "no interrupt without CMD_FLAGS.IRQ");
    assert_eq!(read_u64(&mut client, &server, REG_IRQS_RAISED), 1);

    // A failing command with the flag still completes, and interrupts.
    assert_eq!(
        run_command(&mut client, &server, OP_FILL, CMD_FLAG_IRQ, GUEST_IOVA + GUEST_LEN, 0, 0x100),
        STATUS_DMA_FAULT
    );
    assert_eq!(wait_eventfd(&efd), Some(1), "the completion interrupt fires on failure too");
}

#[test]
fn device_reset_returns_registers_and_shared_memory_to_power_on() {
    let (server, mut client) = setup();
    let bar4 = client.region(BAR4).expect("BAR4");
    let file_offset = bar4.file_offset.as_ref().expect("BAR4 comes with an fd");
    let fd = file_offset.file().as_fd().try_clone_to_owned().expect("dup of the region fd");
    let map = SharedMapping::new(&fd, file_offset.start(), 0x4000);

    write(&mut client, &server, BAR0, REG_SCRATCH, &99u64.to_le_bytes());
    write(&mut client, &server, BAR2, 0x1000, &[0xcc; 64]);
    map.write(0x100, 0x77);
    write(&mut client, &server, BAR0, REG_CMD_OP, &99u32.to_le_bytes());
    write(&mut client, &server, BAR0, REG_DOORBELL, &1u32.to_le_bytes());
    assert_ne!(read_u32(&mut client, &server, REG_STATUS), STATUS_IDLE, "a command ran before the reset");

    client.reset().unwrap_or_else(|e| panic!("reset failed: {e:?}\n{}", server.context()));

    assert_eq!(read_u64(&mut client, &server, REG_SCRATCH), 0, "SCRATCH after reset");
    assert_eq!(read_u32(&mut client, &server, REG_STATUS), STATUS_IDLE, "STATUS after reset");
    assert_eq!(read_u64(&mut client, &server, REG_CMDS_COMPLETED), 0, "CMDS_COMPLETED after reset");
    assert_eq!(read(&mut client, &server, BAR2, 0x1000, 64), [0u8; 64], "device memory after reset");
    assert_eq!(map.read(0x100), 0, "shared scratch memory after reset, seen through the mapping");
    assert_eq!(read_u32(&mut client, &server, REG_MAGIC), MAGIC, "the device still answers");
}
