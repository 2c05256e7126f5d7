//! Device-level tests: the `Device` implementation driven like a server would, with guest
//! memory in a memfd-backed DMA region and a real IRQ table.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};
use pretty_assertions::assert_eq;

use super::regs::*;
use super::*;
use crate::dma::DmaSpace;
use crate::irq::IrqTable;
use crate::wire::{IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, SetIrqs};

const GUEST: u64 = 0x10_0000;
const GUEST_LEN: u64 = 1 << 20;
const DEVMEM: u64 = 256 << 10;
const CHUNK_SIZE: usize = DEFAULT_CHUNK_SIZE;

struct Rig {
    space: Arc<DmaSpace>,
    irqs: IrqTable,
    guest: MappedRegion,
    dev: DmaEngine,
}

impl Rig {
    fn new() -> Self {
        let dev = DmaEngine::new(DmaEngineConfig { devmem_size: DEVMEM, ..DmaEngineConfig::default() }).unwrap();
        let space = Arc::new(DmaSpace::new(16));
        let (guest, fd) = MappedRegion::memfd(c"g", GUEST_LEN).unwrap();
        space.map(GUEST, GUEST_LEN, true, true, Some((&fd, 0))).unwrap();
        let spec = dev.spec();
        Self { space, irqs: IrqTable::new(spec.num_irqs, &spec.irqs), guest, dev }
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.region_write(&mut ctx, region, offset, data).unwrap();
    }

    fn read(&mut self, region: u32, offset: u64, len: usize) -> Vec<u8> {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        let mut buf = vec![0xee; len];
        self.dev.region_read(&mut ctx, region, offset, &mut buf).unwrap();
        buf
    }

    fn w64(&mut self, offset: u64, v: u64) {
        self.write(REGION_REGS, offset, &v.to_le_bytes());
    }

    fn w32(&mut self, offset: u64, v: u32) {
        self.write(REGION_REGS, offset, &v.to_le_bytes());
    }

    fn r64(&mut self, offset: u64) -> u64 {
        u64::from_le_bytes(self.read(REGION_REGS, offset, 8).try_into().unwrap())
    }

    fn r32(&mut self, offset: u64) -> u32 {
        u32::from_le_bytes(self.read(REGION_REGS, offset, 4).try_into().unwrap())
    }

    /// Programs and rings a command; returns STATUS.
    fn run(&mut self, op: u32, guest: u64, dev_offset: u64, len: u64, seed: u64, flags: u32) -> Status {
        self.w32(REG_CMD_OP, op);
        self.w32(REG_CMD_FLAGS, flags);
        self.w64(REG_CMD_GUEST_ADDR, guest);
        self.w64(REG_CMD_DEV_OFFSET, dev_offset);
        self.w64(REG_CMD_LEN, len);
        self.w64(REG_CMD_SEED, seed);
        self.w32(REG_DOORBELL, DOORBELL_RING);
        Status::from_raw(self.r32(REG_STATUS)).unwrap()
    }

    fn guest_bytes(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.guest.read_at(iova - GUEST, &mut buf).unwrap();
        buf
    }

    fn attach_eventfd(&mut self, index: u32) -> OwnedFd {
        let fd: OwnedFd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap().into();
        let dup = fd.try_clone().unwrap();
        let req =
            SetIrqs { argsz: 20, flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index, start: 0, count: 1 };
        self.irqs.set_irqs(&req, &[], vec![fd]).unwrap();
        dup
    }
}

fn eventfd_count(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    nix::unistd::read(fd, &mut b).map_or(0, |_| u64::from_ne_bytes(b))
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(seed, 0, &mut v);
    v
}

#[test]
fn spec_declares_the_pci_regions_and_irqs() {
    let dev = DmaEngine::new(DmaEngineConfig::default()).unwrap();
    let spec = dev.spec();
    assert!(spec.pci);
    assert_eq!((spec.num_regions, spec.num_irqs), (9, 5));
    let sizes: Vec<_> = spec.regions.iter().map(|r| (r.index, r.size, r.mmap.is_some())).collect();
    assert_eq!(sizes, [(0, 4096, false), (2, 8 << 20, false), (4, 64 << 10, true), (7, 256, false)]);
    let areas = &spec.region(4).unwrap().mmap.as_ref().unwrap().sparse_areas;
    assert_eq!(
        areas,
        &[
            crate::wire::SparseArea { offset: 0, size: 16 << 10 },
            crate::wire::SparseArea { offset: 32 << 10, size: 32 << 10 }
        ]
    );
    let irqs: Vec<_> = spec.irqs.iter().map(|i| (i.index, i.count)).collect();
    assert_eq!(irqs, [(0, 1), (1, 1), (2, 4), (3, 1), (4, 1)]);
}

#[test]
fn identity_registers_read_back() {
    let mut rig = Rig::new();
    assert_eq!(rig.read(REGION_REGS, REG_MAGIC, 4), b"DMAE");
    assert_eq!(rig.r32(REG_VERSION), VERSION);
    assert_eq!(rig.r64(REG_DEVMEM_SIZE), DEVMEM);
    assert_eq!(rig.r32(REG_STATUS), Status::Idle as u32);
}

#[test]
fn sixty_four_bit_register_reads_as_two_halves() {
    let mut rig = Rig::new();
    rig.w64(REG_SCRATCH, 0x1122_3344_5566_7788);
    assert_eq!(rig.r32(REG_SCRATCH), 0x5566_7788);
    assert_eq!(rig.r32(REG_SCRATCH + 4), 0x1122_3344);
    rig.w32(REG_CMD_LEN + 4, 0xaabb_ccdd);
    rig.w32(REG_CMD_LEN, 0x0102_0304);
    assert_eq!(rig.r64(REG_CMD_LEN), 0xaabb_ccdd_0102_0304);
}

#[test]
fn misaligned_and_narrow_accesses_are_byte_wise() {
    let mut rig = Rig::new();
    rig.w64(REG_SCRATCH, 0x1122_3344_5566_7788);
    rig.write(REGION_REGS, REG_SCRATCH + 3, &[0xaa, 0xbb]);
    assert_eq!(rig.r64(REG_SCRATCH), 0x1122_33bb_aa66_7788);
    // A read straddling STATUS and SCRATCH.
    assert_eq!(rig.read(REGION_REGS, REG_STATUS + 2, 4), [0, 0, 0x88, 0x77]);
}

#[test]
fn undefined_and_read_only_bytes_ignore_writes_and_unknown_offsets_read_zero() {
    let mut rig = Rig::new();
    let before = rig.dev.snapshot();
    rig.write(REGION_REGS, REG_MAGIC, &[0xff; 16]);
    rig.write(REGION_REGS, REG_STATUS, &[0xff; 4]);
    rig.write(REGION_REGS, REG_CMDS_COMPLETED, &[0xff; 0x30]);
    rig.write(REGION_REGS, 0x4c, &[0xff; 4]);
    rig.write(REGION_REGS, REG_BG_STATUS, &[0xff; 4]);
    rig.write(REGION_REGS, REG_BG_WRITES, &[0xff; 8]);
    rig.write(REGION_REGS, 0xac, &[0xff; 0xf54]);
    assert_eq!(rig.dev.snapshot(), before);
    assert_eq!(rig.read(REGION_REGS, 0xac, 0xf54), vec![0; 0xf54]);
    assert_eq!(rig.read(REGION_REGS, 0x80, 0x2c), vec![0; 0x2c], "the BG_* registers");
    assert_eq!(rig.r32(REG_DOORBELL), 0);
    assert_eq!(rig.r32(REG_CTRL), 0);
}

#[test]
fn cmd_flags_keep_only_defined_bits() {
    let mut rig = Rig::new();
    rig.w32(REG_CMD_FLAGS, 0xffff_ffff);
    assert_eq!(rig.r32(REG_CMD_FLAGS), CMD_FLAG_IRQ);
}

#[test]
fn doorbell_fill_writes_the_seeded_pattern() {
    let mut rig = Rig::new();
    let (at, len) = (GUEST + 0x1003, 1000);
    assert_eq!(rig.run(OP_FILL, at, 0, len as u64, 0xfeed, 0), Status::Ok);
    let expect = pattern(0xfeed, len);
    assert_eq!(rig.guest_bytes(at, len), expect);
    assert_eq!(rig.guest_bytes(at - 1, 1), [0], "nothing before the range");
    assert_eq!(rig.guest_bytes(at + len as u64, 1), [0], "nothing after it");
    let s = rig.dev.state().regs;
    assert_eq!((s.cmds_completed, s.cmds_failed, s.bytes_to_guest, s.bytes_from_guest), (1, 0, 1000, 0));
    assert_eq!(rig.r64(REG_LAST_CHECKSUM), fnv1a64(&expect));
}

#[test]
fn copies_round_trip_through_device_memory() {
    let mut rig = Rig::new();
    let len = 3 * CHUNK_SIZE + 123;
    rig.run(OP_FILL, GUEST, 0, len as u64, 7, 0);
    assert_eq!(rig.run(OP_COPY_TO_DEVICE, GUEST, 0x100, len as u64, 0, 0), Status::Ok);
    assert_eq!(rig.dev.state().devmem_range(0x100, len).unwrap(), pattern(7, len));
    assert_eq!(rig.read(REGION_DEVMEM, 0x100, 16), pattern(7, 16));
    let back = GUEST + 0x8_0000;
    assert_eq!(rig.run(OP_COPY_TO_GUEST, back, 0x100, len as u64, 0, 0), Status::Ok);
    assert_eq!(rig.guest_bytes(back, len), pattern(7, len));
    let r = rig.dev.state().regs;
    assert_eq!((r.bytes_to_guest, r.bytes_from_guest, r.cmds_completed), (2 * len as u64, len as u64, 3));
    assert_eq!(r.last_checksum, fnv1a64(&pattern(7, len)));
}

#[test]
fn device_memory_region_is_read_write() {
    let mut rig = Rig::new();
    rig.write(REGION_DEVMEM, DEVMEM - 4, &[1, 2, 3, 4]);
    assert_eq!(rig.read(REGION_DEVMEM, DEVMEM - 6, 6), [0, 0, 1, 2, 3, 4]);
}

#[test]
fn dma_fault_touches_nothing_and_sets_status() {
    let mut rig = Rig::new();
    rig.write(REGION_DEVMEM, 0, &[9; 64]);
    // The range runs 16 bytes past the end of guest memory.
    let at = GUEST + GUEST_LEN - CHUNK_SIZE as u64 - 48;
    assert_eq!(rig.run(OP_FILL, at, 0, CHUNK_SIZE as u64 + 64, 1, 0), Status::DmaFault);
    assert_eq!(rig.run(OP_COPY_TO_GUEST, at, 0, CHUNK_SIZE as u64 + 64, 1, 0), Status::DmaFault);
    assert_eq!(rig.run(OP_COPY_TO_DEVICE, GUEST - 1, 0, 64, 1, 0), Status::DmaFault);
    assert_eq!(rig.guest_bytes(at, CHUNK_SIZE + 48), vec![0; CHUNK_SIZE + 48]);
    assert_eq!(rig.dev.state().devmem_range(0, 64).unwrap(), [9; 64]);
    let r = rig.dev.state().regs;
    assert_eq!((r.cmds_completed, r.cmds_failed, r.bytes_to_guest, r.bytes_from_guest), (0, 3, 0, 0));
    assert_eq!(r.last_checksum, fnv1a64(b""));
}

#[test]
fn read_only_guest_memory_faults_writes_only() {
    let mut rig = Rig::new();
    let (_ro, fd) = MappedRegion::memfd(c"ro", 4096).unwrap();
    rig.space.map(0x1000, 4096, true, false, Some((&fd, 0))).unwrap();
    assert_eq!(rig.run(OP_FILL, 0x1000, 0, 16, 1, 0), Status::DmaFault);
    assert_eq!(rig.run(OP_COPY_TO_DEVICE, 0x1000, 0, 16, 1, 0), Status::Ok);
}

#[test]
fn fault_mid_command_keeps_earlier_chunks_and_counts_failed() {
    let mut rig = Rig::new();
    // A message-based region right after guest memory: mapped, but with no client to serve it.
    rig.space.map(GUEST + GUEST_LEN, 1 << 20, true, true, None).unwrap();
    let at = GUEST + GUEST_LEN - CHUNK_SIZE as u64;
    assert_eq!(rig.run(OP_FILL, at, 0, 2 * CHUNK_SIZE as u64, 3, 0), Status::DmaFault);
    assert_eq!(rig.guest_bytes(at, CHUNK_SIZE), pattern(3, CHUNK_SIZE), "the first chunk was done");
    let r = rig.dev.state().regs;
    assert_eq!((r.cmds_failed, r.bytes_to_guest), (1, CHUNK_SIZE as u64));
    assert_eq!(r.last_checksum, fnv1a64(&pattern(3, CHUNK_SIZE)));
}

#[test]
fn bad_op_zero_length_and_out_of_range_are_refused() {
    let mut rig = Rig::new();
    assert_eq!(rig.run(0, GUEST, 0, 16, 0, 0), Status::BadOp);
    assert_eq!(rig.run(4, GUEST, 0, 16, 0, 0), Status::BadOp);
    assert_eq!(rig.run(OP_FILL, GUEST, 0, 0, 0, 0), Status::ZeroLength);
    assert_eq!(rig.run(OP_FILL, GUEST, 0, DEVMEM + 1, 0, 0), Status::OutOfRange);
    assert_eq!(rig.run(OP_COPY_TO_DEVICE, GUEST, DEVMEM - 8, 16, 0, 0), Status::OutOfRange);
    assert_eq!(rig.run(OP_COPY_TO_GUEST, GUEST, u64::MAX - 4, 16, 0, 0), Status::OutOfRange);
    assert_eq!(rig.run(OP_FILL, GUEST, u64::MAX, DEVMEM, 0, 0), Status::Ok, "FILL ignores the device offset");
    let r = rig.dev.state().regs;
    assert_eq!((r.cmds_completed, r.cmds_failed), (1, 6));
    assert_eq!(rig.r32(REG_CMD_OP), OP_FILL);
}

#[test]
fn completion_irq_prefers_msix_then_msi_then_intx() {
    let mut rig = Rig::new();
    let intx = rig.attach_eventfd(0);
    assert_eq!(rig.run(OP_FILL, GUEST, 0, 8, 0, CMD_FLAG_IRQ), Status::Ok);
    assert_eq!(eventfd_count(&intx), 1);
    let msi = rig.attach_eventfd(1);
    rig.run(OP_FILL, GUEST, 0, 8, 0, CMD_FLAG_IRQ);
    assert_eq!((eventfd_count(&intx), eventfd_count(&msi)), (0, 1));
    let msix = rig.attach_eventfd(2);
    rig.run(OP_FILL, GUEST, 0, 0, 0, CMD_FLAG_IRQ);
    assert_eq!((eventfd_count(&msi), eventfd_count(&msix)), (0, 1), "failed commands complete too");
    rig.run(OP_FILL, GUEST, 0, 8, 0, 0);
    assert_eq!(eventfd_count(&msix), 0, "no interrupt without the flag");
    assert_eq!(rig.r64(REG_IRQS_RAISED), 3);
}

#[test]
fn masked_or_unattached_interrupts_still_count_as_raised() {
    let mut rig = Rig::new();
    rig.run(OP_FILL, GUEST, 0, 8, 0, CMD_FLAG_IRQ);
    let msix = rig.attach_eventfd(2);
    let mask = SetIrqs { argsz: 20, flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, index: 2, start: 0, count: 1 };
    rig.irqs.set_irqs(&mask, &[], vec![]).unwrap();
    rig.run(OP_FILL, GUEST, 0, 8, 0, CMD_FLAG_IRQ);
    assert_eq!(eventfd_count(&msix), 0);
    assert_eq!(rig.r64(REG_IRQS_RAISED), 2);
}

#[test]
fn intx_disable_suppresses_the_intx_fallback() {
    let mut rig = Rig::new();
    let intx = rig.attach_eventfd(0);
    rig.write(REGION_CONFIG, 0x05, &[0x04]);
    rig.run(OP_FILL, GUEST, 0, 8, 0, CMD_FLAG_IRQ);
    assert_eq!((eventfd_count(&intx), rig.r64(REG_IRQS_RAISED)), (0, 0));
}

#[test]
fn guest_reset_zeroes_counters_and_memory() {
    let mut rig = Rig::new();
    rig.write(REGION_CONFIG, 0x10, &0xfebf_0000u32.to_le_bytes());
    rig.w64(REG_SCRATCH, 5);
    rig.run(OP_FILL, GUEST, 0, 4096, 1, CMD_FLAG_IRQ);
    rig.run(OP_COPY_TO_DEVICE, GUEST, 0, 4096, 0, 0);
    rig.write(REGION_SCRATCH, 100, &[1; 8]);
    let config_before = rig.dev.state().pci;
    rig.w32(REG_CTRL, CTRL_RESET);
    let mut expect = DmaEngineState::power_on(DEVMEM as usize);
    expect.pci = config_before;
    assert_eq!(rig.dev.state().differences(&expect), Vec::<String>::new());
    assert_eq!(rig.dev.shared_memory(), vec![0; SCRATCH_SIZE as usize]);
    assert_eq!(rig.read(REGION_CONFIG, 0x10, 4), 0xfebf_0000u32.to_le_bytes(), "config space is kept");
    assert_eq!(rig.guest_bytes(GUEST, 8), pattern(1, 8), "guest memory is not the device's to reset");
}

#[test]
fn a_wide_write_resets_then_programs_then_rings_in_address_order() {
    let mut rig = Rig::new();
    rig.w64(REG_SCRATCH, 99);
    let mut block = vec![0u8; 0x4c];
    block[0x10] = 1; // CTRL
    block[0x20] = OP_FILL as u8;
    block[0x28..0x30].copy_from_slice(&GUEST.to_le_bytes());
    block[0x38] = 16; // CMD_LEN
    block[0x40] = 2; // CMD_SEED
    block[0x48] = 1; // DOORBELL
    rig.write(REGION_REGS, 0, &block);
    assert_eq!(rig.r32(REG_STATUS), Status::Ok as u32);
    assert_eq!(rig.r64(REG_SCRATCH), 0, "written as 0 after the reset");
    assert_eq!(rig.guest_bytes(GUEST, 16), pattern(2, 16));
}

#[test]
fn device_reset_restores_power_on_state_including_config_space() {
    let mut rig = Rig::new();
    rig.write(REGION_CONFIG, 0x04, &[0x06, 0x04]);
    rig.write(REGION_CONFIG, 0x10, &[0xff; 24]);
    rig.write(REGION_CONFIG, 0x3c, &[11]);
    rig.run(OP_FILL, GUEST, 0, 64, 1, 0);
    rig.run(OP_COPY_TO_DEVICE, GUEST, 0, 64, 0, 0);
    rig.write(REGION_SCRATCH, 0, &[7; 64]);
    let mut ctx = DeviceContext::new(&rig.space, None, &mut rig.irqs);
    rig.dev.reset(&mut ctx).unwrap();
    let fresh = DmaEngine::new(DmaEngineConfig { devmem_size: DEVMEM, ..DmaEngineConfig::default() }).unwrap();
    assert_eq!(rig.dev.snapshot(), fresh.snapshot());
}

#[test]
fn shared_scratch_is_read_and_written_through_the_memfd() {
    let mut rig = Rig::new();
    rig.write(REGION_SCRATCH, (16 << 10) - 2, &[1, 2, 3, 4]);
    assert_eq!(rig.read(REGION_SCRATCH, (16 << 10) - 2, 4), [1, 2, 3, 4]);
    let spec = rig.dev.spec();
    let fd = &spec.region(REGION_SCRATCH).unwrap().mmap.as_ref().unwrap().fd;
    let peer = MappedRegion::map_fd(fd, 0, SCRATCH_SIZE, true, true).unwrap();
    let mut b = [0; 4];
    peer.read_at((16 << 10) - 2, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4], "the client's mapping sees the device's writes");
    peer.write_at(40 << 10, &[5]).unwrap();
    assert_eq!(rig.read(REGION_SCRATCH, 40 << 10, 1), [5]);
}

#[test]
fn states_of_two_devices_diff_field_by_field() {
    let mut a = Rig::new();
    let mut b = Rig::new();
    a.run(OP_FILL, GUEST, 0, 8, 1, 0);
    b.run(OP_FILL, GUEST, 0, 8, 1, 0);
    assert_eq!(a.dev.snapshot(), b.dev.snapshot());
    b.w64(REG_CMD_SEED, 2);
    assert_eq!(a.dev.state().differences(b.dev.state()), ["CMD_SEED: 0x1 != 0x2"]);
}

#[test]
fn a_smaller_chunk_size_moves_the_same_bytes_and_faults_on_its_boundary() {
    let mut rig = Rig::new();
    rig.dev = DmaEngine::new(DmaEngineConfig { devmem_size: DEVMEM, chunk_size: 4096, ..DmaEngineConfig::default() })
        .unwrap();
    rig.space.map(GUEST + GUEST_LEN, 1 << 20, true, true, None).unwrap();
    let at = GUEST + GUEST_LEN - 3 * 4096;
    assert_eq!(rig.run(OP_FILL, at, 0, 3 * 4096, 9, 0), Status::Ok);
    assert_eq!(rig.guest_bytes(at, 3 * 4096), pattern(9, 3 * 4096));
    assert_eq!(rig.run(OP_FILL, at, 0, 4 * 4096, 9, 0), Status::DmaFault);
    assert_eq!(rig.r64(REG_BYTES_TO_GUEST), 6 * 4096);
}

#[test]
fn new_refuses_an_invalid_config() {
    assert_eq!(
        DmaEngine::new(DmaEngineConfig { devmem_size: 3 << 20, ..DmaEngineConfig::default() }).unwrap_err(),
        ConfigError::DevmemNotPowerOfTwo { size: 3 << 20 }
    );
}
