//! The sample device in-process: BAR0's timer, BAR1, the migration format, the DMA test.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use pretty_assertions::assert_eq;

use super::*;
use crate::device::RemoteDma;
use crate::dma::DmaSpace;
use crate::irq::IrqTable;
use crate::migration::MigState::*;
use crate::wire::{IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_EVENTFD, SetIrqs};

/// The sample with the client's 16 one-page DMA regions mapped from one memfd, as its client
/// maps them, and INTx wired to an eventfd.
struct Rig {
    dev: LvuSample,
    space: Arc<DmaSpace>,
    irqs: IrqTable,
    guest: MappedRegion,
    intx: EventFd,
}

/// A client that serves DMA messages from its own copy of guest memory and records them.
#[derive(Default)]
struct Client {
    memory: Vec<u8>,
    log: Vec<(&'static str, u64, usize)>,
}

impl RemoteDma for Client {
    fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.log.push(("read", iova, buf.len()));
        buf.copy_from_slice(&self.memory[iova as usize..iova as usize + buf.len()]);
        Ok(())
    }
    fn dma_write(&mut self, iova: u64, data: &[u8]) -> Result<(), Errno> {
        self.log.push(("write", iova, data.len()));
        self.memory[iova as usize..iova as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
}

const PAGE: u64 = 4096;

impl Rig {
    fn new() -> Self {
        let mut dev = LvuSample::new().unwrap();
        let space = Arc::new(DmaSpace::new(32));
        let (guest, fd) = MappedRegion::memfd(c"guest", 16 * PAGE).unwrap();
        for i in 0..16 {
            space.map(i * PAGE, PAGE, true, true, Some((&fd, i * PAGE))).unwrap();
            dev.dma_mapped(i * PAGE, PAGE, true, true);
        }
        let spec = dev.spec();
        let mut irqs = IrqTable::new(spec.num_irqs, &spec.irqs);
        let intx = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
        let fd: OwnedFd = intx.as_fd().try_clone_to_owned().unwrap();
        let req =
            SetIrqs { argsz: 20, flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index: 0, start: 0, count: 1 };
        irqs.set_irqs(&req, &[], vec![fd]).unwrap();
        Self { dev, space, irqs, guest, intx }
    }

    fn read(&mut self, region: u32, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        let mut buf = vec![0; len];
        self.dev.region_read(&mut ctx, region, offset, &mut buf).map(|()| buf)
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.region_write(&mut ctx, region, offset, data)
    }

    fn write_bar0(&mut self, t: i64) -> Result<(), Errno> {
        self.write(0, 0, &t.to_le_bytes())
    }

    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), crate::migration::ArcError> {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.transition(&mut ctx, from, to)
    }

    /// Reads the migration data of the current phase in `chunk`-byte reads until a short one.
    fn read_all(&mut self, chunk: usize) -> Vec<Vec<u8>> {
        let mut reads = Vec::new();
        loop {
            let mut buf = vec![0; chunk];
            let n = self.dev.read_data(&mut buf).unwrap();
            buf.truncate(n);
            let short = n < chunk;
            reads.push(buf);
            if short {
                return reads;
            }
        }
    }

    /// Fires the timer with `client` answering DMA messages.
    fn fire(&mut self, client: &mut Client) {
        let mut ctx = DeviceContext::new_shared(&self.space, Some(client), &mut self.irqs);
        self.dev.deadline_reached(&mut ctx);
    }
}

fn seconds_until(deadline: Instant) -> f64 {
    deadline.saturating_duration_since(Instant::now()).as_secs_f64()
}

#[test]
fn bar0_write_in_running_arms_the_timer_that_many_seconds_ahead() {
    let mut rig = Rig::new();
    rig.write_bar0(unix_now() + 3).unwrap();
    let left = seconds_until(rig.dev.next_deadline().expect("armed"));
    assert!((1.9..=3.0).contains(&left), "timer fires in {left} s");
}

#[test]
fn bar0_write_of_a_past_time_is_refused_and_not_stored() {
    let mut rig = Rig::new();
    rig.write_bar0(unix_now() + 100).unwrap();
    assert_eq!(rig.write_bar0(unix_now() - 5), Err(Errno::EINVAL));
    let delta = i64::from_le_bytes(rig.read(0, 0, 8).unwrap().try_into().unwrap());
    assert!((-100..=-99).contains(&delta), "BAR0 still holds the time written first: now - bar0 = {delta}");
}

#[test]
fn bar0_write_of_the_present_second_disarms_the_timer() {
    let mut rig = Rig::new();
    rig.write_bar0(unix_now() + 100).unwrap();
    rig.write_bar0(unix_now()).unwrap();
    assert_eq!(rig.dev.next_deadline(), None);
}

#[test]
fn bar0_reads_now_minus_its_value() {
    let mut rig = Rig::new();
    rig.write_bar0(unix_now() + 1).unwrap();
    let delta = i64::from_le_bytes(rig.read(0, 0, 8).unwrap().try_into().unwrap());
    assert!((-1..=0).contains(&delta), "{delta}");
}

#[test]
fn bar0_takes_only_eight_byte_accesses_at_offset_zero() {
    let mut rig = Rig::new();
    assert_eq!(rig.read(0, 0, 4), Err(Errno::EINVAL));
    assert_eq!(rig.read(0, 4, 4), Err(Errno::EINVAL));
    assert_eq!(rig.write(0, 0, &[0; 4]), Err(Errno::EINVAL));
}

#[test]
fn bar0_write_outside_running_is_stored_without_arming() {
    let mut rig = Rig::new();
    rig.arc(Running, PreCopy).unwrap();
    rig.write_bar0(unix_now() + 50).unwrap();
    assert_eq!(rig.dev.next_deadline(), None);
}

#[test]
fn bar1_reads_back_what_was_written_at_any_offset() {
    let mut rig = Rig::new();
    rig.write(1, 0x1ffe, &[1, 2, 3, 4]).unwrap();
    assert_eq!(rig.read(1, 0x1ffe, 4).unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(rig.read(1, 0, 2).unwrap(), vec![0, 0]);
}

#[test]
fn spec_matches_the_reference_sample() {
    let spec = LvuSample::new().unwrap().spec();
    assert_eq!((spec.num_regions, spec.num_irqs), (9, 5));
    let bar1 = spec.region(1).unwrap();
    assert_eq!(bar1.size, 0x3000);
    let areas: Vec<_> = bar1.mmap.as_ref().unwrap().sparse_areas.iter().map(|a| (a.offset, a.size)).collect();
    assert_eq!(areas, vec![(0, 0x1000), (0x2000, 0x1000)]);
    assert_eq!(spec.region(0).unwrap().size, 8);
    assert_eq!(spec.region(7).unwrap().size, 256);
    let irqs: Vec<_> = spec.irqs.iter().map(|i| (i.index, i.count)).collect();
    assert_eq!(irqs, vec![(0, 1), (3, 1), (4, 1)]);
}

#[test]
fn pre_copy_data_is_bar1_and_stop_copy_data_is_bar1_then_bar0_each_from_its_first_byte() {
    let mut rig = Rig::new();
    let pattern: Vec<u8> = (0..0x3000u32).map(|i| (i * 7 % 251) as u8).collect();
    rig.write(1, 0, &pattern).unwrap();
    let t = unix_now() + 60;
    rig.write_bar0(t).unwrap();
    rig.arc(Running, PreCopy).unwrap();
    let pre = rig.read_all(1024);
    assert_eq!(pre.iter().map(Vec::len).collect::<Vec<_>>(), [vec![1024; 12], vec![0]].concat());
    assert_eq!(pre.concat(), pattern);
    rig.arc(PreCopy, StopCopy).unwrap();
    let stop = rig.read_all(1024);
    assert_eq!(stop.iter().map(Vec::len).collect::<Vec<_>>(), [vec![1024; 12], vec![8]].concat());
    assert_eq!(stop.concat(), [pattern, t.to_le_bytes().to_vec()].concat());
}

#[test]
fn destination_takes_bar1_then_bar0_and_refuses_more() {
    let mut rig = Rig::new();
    rig.arc(Running, Stop).unwrap();
    rig.arc(Stop, Resuming).unwrap();
    let image: Vec<u8> = (0..0x3008u32).map(|i| (i % 253) as u8).collect();
    for chunk in image.chunks(1000) {
        rig.dev.write_data(chunk).unwrap();
    }
    assert_eq!(rig.dev.write_data(&[0]), Err(Errno::EINVAL));
    rig.arc(Resuming, Stop).unwrap();
    assert_eq!(rig.read(1, 0, 0x3000).unwrap(), image[..0x3000]);
    assert_eq!(rig.dev.bar0, i64::from_le_bytes(image[0x3000..].try_into().unwrap()));
}

#[test]
fn stop_copy_stops_the_timer_and_running_rearms_it_from_bar0() {
    let mut rig = Rig::new();
    rig.write_bar0(unix_now() + 30).unwrap();
    rig.arc(Running, PreCopy).unwrap();
    assert!(rig.dev.next_deadline().is_some(), "a pre-copying device keeps running");
    rig.arc(PreCopy, StopCopy).unwrap();
    assert_eq!(rig.dev.next_deadline(), None);
    rig.arc(StopCopy, Stop).unwrap();
    rig.arc(Stop, Running).unwrap();
    let left = seconds_until(rig.dev.next_deadline().expect("re-armed"));
    assert!((28.0..=30.0).contains(&left), "{left}");
}

#[test]
fn running_with_a_bar0_time_already_past_is_refused() {
    let mut rig = Rig::new();
    rig.arc(Running, Stop).unwrap();
    assert_eq!(rig.arc(Stop, Running), Err(crate::migration::ArcError::Refused(Errno::EINVAL)));
}

#[test]
fn timer_raises_intx_then_dmas_directly_to_the_second_region_and_by_message_to_the_first() {
    let mut rig = Rig::new();
    rig.space.start_logging(PAGE, &[]).unwrap();
    let mut client = Client { memory: vec![0; 16 * PAGE as usize], log: Vec::new() };
    rig.fire(&mut client);
    assert_eq!(rig.intx.read().unwrap(), 1, "INTx was signalled once");
    let expected: Vec<u8> = (0..4u8).flat_map(|i| vec![b'A' + i; 1024]).collect();
    let mut direct = vec![0; 4096];
    rig.guest.read_at(PAGE, &mut direct).unwrap();
    assert_eq!(direct, expected, "the second region holds A, B, C, D");
    assert_eq!(&client.memory[..4096], &expected[..], "the first region was written by message");
    let mut untouched = vec![0xffu8; 4096];
    rig.guest.read_at(0, &mut untouched).unwrap();
    assert_eq!(untouched, vec![0; 4096], "the message test does not touch the mapping");
    assert_eq!(
        client.log,
        vec![
            ("write", 0, 1024),
            ("write", 1024, 1024),
            ("write", 2048, 1024),
            ("write", 3072, 1024),
            ("read", 0, 2048),
            ("read", 2048, 2048)
        ]
    );
    let bitmap = rig.space.report_dirty(0, 16 * PAGE, PAGE, 8).unwrap();
    assert_eq!(bitmap, vec![0b10], "the direct write is reported dirty; the client tracks its own writes");
}

#[test]
fn dma_slots_follow_the_order_of_mapping_and_unmapping_frees_them() {
    let mut dev = LvuSample::new().unwrap();
    dev.dma_mapped(0x5000, PAGE, true, true);
    dev.dma_mapped(0x1000, PAGE, true, true);
    dev.dma_mapped(0x9000, PAGE, true, true);
    assert_eq!((dev.slot(0), dev.slot(1)), (Some((0x5000, PAGE)), Some((0x1000, PAGE))));
    dev.dma_unmapped(0x5000, PAGE);
    assert_eq!(dev.slot(0), None);
    dev.dma_mapped(0x7000, PAGE, true, true);
    assert_eq!(dev.slot(0), Some((0x7000, PAGE)), "a new region takes the first free slot");
    dev.disconnected();
    assert_eq!((dev.slot(1), dev.slot(2)), (None, None));
}

#[test]
fn a_missing_dma_region_skips_its_test_and_the_device_keeps_serving() {
    let mut dev = LvuSample::new().unwrap();
    let space = Arc::new(DmaSpace::new(4));
    let mut irqs = IrqTable::new(5, &dev.spec().irqs);
    let mut ctx = DeviceContext::new_shared(&space, None, &mut irqs);
    dev.timer = Some(Instant::now() - Duration::from_millis(1));
    dev.deadline_reached(&mut ctx);
    assert_eq!(dev.next_deadline(), None, "the timer fired once");
}
