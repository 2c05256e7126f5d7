//! The guest model of mock-qemu against the real `vfu-server --device dma-engine`: a 6 GiB PC
//! guest (sparse memfds) mapped with DMA_MAP, the dma-engine driven through its registers with
//! interrupt completion, and guest memory checked against the FILL pattern; and DMA by message
//! (DMA_READ / DMA_WRITE) for a region mapped without an fd, answered from guest RAM.

mod common;

use mock_qemu::guest::dmae::{DmaCommand, DmaEngineDriver, Status};
use mock_qemu::guest::{Backing, GIB, Guest};
use vfu_server::devices::dma_engine::fill_pattern;

const MIB: u64 = 1 << 20;

fn pattern(seed: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap()];
    fill_pattern(seed, 0, &mut buf);
    buf
}

#[test]
fn six_gib_pc_guest_is_filled_and_copied_with_irq_completion() {
    let mut server = common::ServerProcess::spawn(&["--device", "dma-engine"]);
    let mut c = server.connect();
    let ctx = || server.context();
    let guest = Guest::pc(6 * GIB).unwrap();
    guest.map_into(&mut c).unwrap_or_else(|e| panic!("mapping guest RAM: {e:?}\n{}", ctx()));
    let mut drv = DmaEngineDriver::attach(&mut c).unwrap_or_else(|e| panic!("attach: {e:?}\n{}", ctx()));

    // Below the hole, unaligned, and high above 4 GiB.
    let low = (0x1234_5000 - 3, 300_000, 42);
    let high = (4 * GIB + 2 * GIB + 0x800, MIB, 7);
    for (addr, len, seed) in [low, high] {
        let status = drv.fill(&mut c, addr, len, seed).unwrap_or_else(|e| panic!("fill: {e:?}\n{}", ctx()));
        assert_eq!(status, Status::Ok, "{}", ctx());
        assert!(guest.read_vec(addr, len).unwrap() == pattern(seed, len), "FILL at {addr:#x} wrote the pattern");
    }
    // Bytes around the fill stay untouched.
    assert_eq!(guest.read_vec(low.0 - 1, 1).unwrap(), vec![0]);
    assert_eq!(guest.read_vec(low.0 + low.1, 1).unwrap(), vec![0]);

    // High RAM -> device memory -> low RAM.
    assert_eq!(drv.copy_to_device(&mut c, high.0, 0x1000, MIB).unwrap(), Status::Ok);
    assert_eq!(drv.copy_to_guest(&mut c, 0x1000, 16 * MIB, MIB).unwrap(), Status::Ok);
    assert!(guest.read_vec(16 * MIB, MIB).unwrap() == pattern(high.2, MIB), "the copy round-tripped");

    // A command into the PCI hole faults, and still completes with an interrupt.
    assert_eq!(drv.fill(&mut c, 3 * GIB, 4096, 1).unwrap(), Status::DmaFault);
    assert_eq!(drv.interrupts(), 5);

    let snap = DmaEngineDriver::snapshot(&mut c).unwrap();
    assert_eq!(snap.register("IRQS_RAISED"), Some(5), "{snap:?}");
    assert_eq!(snap.register("CMDS_COMPLETED"), Some(4), "{snap:?}");
    assert_eq!(snap.register("CMDS_FAILED"), Some(1), "{snap:?}");
    assert_eq!(snap.register("STATUS"), Some(Status::DmaFault as u64), "{snap:?}");
    assert_eq!(snap.config.len(), 256);
    assert_eq!(snap.config[4] & 0b110, 0b110, "memory space and bus master enabled");
    assert!(snap.devmem[0x1000..0x1000 + MIB as usize] == pattern(high.2, MIB)[..], "{snap:?}");
    assert_eq!(snap, DmaEngineDriver::snapshot(&mut c).unwrap(), "reading is side-effect free");

    // The server wrote RAM through its own mapping: no message DMA, and the 6 GiB cost only
    // what was touched.
    assert!(guest.take_message_dirty().is_empty());
    assert!(guest.resident_bytes().unwrap() < 16 * MIB, "{} bytes resident", guest.resident_bytes().unwrap());
    server.assert_alive();
}

#[test]
fn dma_write_by_message_lands_in_guest_ram_and_is_recorded() {
    let server = common::ServerProcess::spawn(&["--device", "dma-engine"]);
    let mut c = server.connect();
    let ctx = || server.context();
    let guest = Guest::with_layout(&[(0, MIB), (4 * GIB, MIB)]).unwrap();
    guest.set_vcpu_logging(true);
    guest.map_region(&mut c, 0, Backing::Fd).unwrap();
    guest.map_region(&mut c, 1, Backing::Message).unwrap();
    c.set_dma_service(guest.dma_service());
    let mut drv = DmaEngineDriver::attach(&mut c).unwrap_or_else(|e| panic!("attach: {e:?}\n{}", ctx()));

    // FILL into the message-backed region: the device's writes arrive as DMA_WRITE messages.
    let cmd = DmaCommand::fill(4 * GIB + 0x100, 200_000, 99);
    assert_eq!(drv.run(&mut c, &cmd).unwrap_or_else(|e| panic!("fill: {e:?}\n{}", ctx())), Status::Ok);
    assert!(guest.read_vec(cmd.guest_addr, cmd.len).unwrap() == pattern(99, cmd.len));
    assert_eq!(guest.take_message_dirty(), cmd.guest_pages_written());
    assert!(guest.take_vcpu_dirty().is_empty(), "device writes are not vCPU stores");

    // COPY out of it (DMA_READ messages) and back into the fd-backed region.
    assert_eq!(drv.copy_to_device(&mut c, cmd.guest_addr, 0, cmd.len).unwrap(), Status::Ok);
    assert_eq!(drv.copy_to_guest(&mut c, 0, 0x2000, cmd.len).unwrap(), Status::Ok);
    assert!(guest.read_vec(0x2000, cmd.len).unwrap() == pattern(99, cmd.len));
    assert!(guest.take_message_dirty().is_empty(), "the fd-backed region is written directly");

    // Past the end of the message-backed region: refused before any DMA.
    assert_eq!(drv.fill(&mut c, 4 * GIB + MIB - 4096, 8192, 1).unwrap(), Status::DmaFault);
    assert!(guest.take_message_dirty().is_empty());
    assert_eq!(drv.interrupts(), 4);
    drv.detach(&mut c).unwrap();
}
