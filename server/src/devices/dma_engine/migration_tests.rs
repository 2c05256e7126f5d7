//! Migration tests: a source and a destination device driven through their [`Migratable`]
//! arcs and data calls like a server would, with the stream moved in pieces of many sizes.

use nix::errno::Errno;
use pretty_assertions::assert_eq;
use proptest::prelude::*;

use super::pages::PAGE_SIZE;
use super::pci_config::SCRATCH_SIZE;
use super::regs::*;
use super::stream::{FORMAT_VERSION, MAX_RECORD_LEN, RECORD_HEADER_LEN, RecordType, encode_record, header_payload};
use super::*;
use crate::migration::{ArcError, MigState, Migratable};
use MigState::{PreCopy, Resuming, Running, Stop, StopCopy};

pub(super) const DEVMEM: u64 = 256 << 10;
pub(super) const PAGES: usize = (DEVMEM / PAGE_SIZE) as usize;

use super::test_rig::{GUEST, Rig};

pub(super) fn rig() -> Rig {
    Rig::with_devmem(DEVMEM)
}

impl Rig {
    pub(super) fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut ctx = DeviceContext::new_shared(&self.space, None, &mut self.irqs);
        self.dev.region_write(&mut ctx, region, offset, data)
    }

    pub(super) fn reg(&mut self, offset: u64, v: u64) -> Result<(), Errno> {
        self.write(REGION_REGS, offset, &v.to_le_bytes())
    }

    /// Programs and rings a command without an interrupt.
    pub(super) fn run(&mut self, op: u32, guest: u64, dev_offset: u64, len: u64, seed: u64) -> Result<(), Errno> {
        for (at, v) in [(REG_CMD_OP, op.into()), (REG_CMD_GUEST_ADDR, guest), (REG_CMD_DEV_OFFSET, dev_offset)] {
            self.reg(at, v)?;
        }
        self.reg(REG_CMD_LEN, len)?;
        self.reg(REG_CMD_SEED, seed)?;
        self.write(REGION_REGS, REG_DOORBELL, &DOORBELL_RING.to_le_bytes())
    }

    /// Gives every part of the state a value other than its power-on one.
    pub(super) fn dirty_everything(&mut self) {
        self.write(REGION_CONFIG, 0x04, &[0x06, 0x04]).unwrap();
        self.write(REGION_CONFIG, 0x18, &0x1234_5678_9ac0_0000u64.to_le_bytes()).unwrap();
        self.write(REGION_CONFIG, 0x3c, &[11]).unwrap();
        self.run(OP_FILL, GUEST, 0, 3 * PAGE_SIZE + 5, 7).unwrap();
        self.run(OP_COPY_TO_DEVICE, GUEST, 0x801, 3 * PAGE_SIZE + 5, 0).unwrap();
        self.write(REGION_DEVMEM, DEVMEM - 3, &[1, 2, 3]).unwrap();
        self.write(REGION_SCRATCH, 20 << 10, &[9; 100]).unwrap();
        self.reg(REG_SCRATCH, 0x5555).unwrap();
        self.reg(REG_CMD_OP, 77).unwrap();
    }

    /// Reads one PRE_COPY round (or the rest of the stream in STOP_COPY) in `chunk`-byte reads.
    pub(super) fn read_round(&mut self, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = self.dev.read_data(&mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
            if n < chunk {
                return out;
            }
        }
    }

    /// Feeds `stream` in pieces whose sizes come from `seed`.
    pub(super) fn write_stream(&mut self, stream: &[u8], seed: u64) {
        let mut at = 0;
        let mut k = seed;
        while at < stream.len() {
            k += 1;
            let n = (splitmix64(k) % 5000 + 1) as usize;
            let end = (at + n).min(stream.len());
            self.dev.write_data(&stream[at..end]).unwrap();
            at = end;
        }
    }
}

/// A source in STOP_COPY via pre-copy, its whole stream, and its snapshot on entering STOP_COPY.
fn migrate_out(src: &mut Rig) -> (Vec<u8>, DmaEngineSnapshot) {
    src.walk(&[PreCopy]);
    let mut stream = src.read_round(1 << 20);
    src.walk(&[StopCopy]);
    let snap = src.dev.snapshot();
    stream.extend(src.read_round(4096));
    (stream, snap)
}

/// A destination's answer to `stream`: the result of RESUMING→STOP.
pub(super) fn resume(stream: &[u8], devmem: u64) -> (Rig, Result<(), ArcError>) {
    let mut dst = Rig::with(DmaEngineConfig { devmem_size: devmem, ..DmaEngineConfig::default() });
    dst.walk(&[Stop, Resuming]);
    dst.write_stream(stream, 1);
    let r = dst.arc(Resuming, Stop);
    (dst, r)
}

/// `(type, page offset, pages)` of every record of `stream`, which starts at a record
/// boundary (pages: 1 for a page record, the run's length for ZERO_PAGES, else 0).
pub(super) fn records(stream: &[u8]) -> Vec<(u32, u64, u64)> {
    let (mut out, mut at) = (Vec::new(), 0);
    let u64_at = |i: usize| u64::from_le_bytes(stream[i..i + 8].try_into().unwrap());
    while at < stream.len() {
        let ty = u32::from_le_bytes(stream[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(stream[at + 4..at + 8].try_into().unwrap()) as usize;
        let page = [RecordType::DevmemPage as u32, RecordType::ScratchPage as u32].contains(&ty);
        out.push(match ty {
            _ if page => (ty, u64_at(at + 16), 1),
            _ if ty == RecordType::ZeroPages as u32 => (ty, u64_at(at + 16), u64_at(at + 24)),
            _ => (ty, 0, 0),
        });
        at += RECORD_HEADER_LEN + len;
    }
    assert_eq!(at, stream.len(), "the stream ends on a record boundary");
    out
}

/// The device memory pages `stream` carries, in order, with or without data.
pub(super) fn devmem_pages(stream: &[u8]) -> Vec<u64> {
    let devmem = [RecordType::DevmemPage as u32, RecordType::ZeroPages as u32];
    let recs = records(stream).into_iter().filter(|r| devmem.contains(&r.0));
    recs.flat_map(|(_, offset, pages)| (0..pages).map(move |p| offset / PAGE_SIZE + p)).collect()
}

/// The device memory pages `stream` carries with their data.
fn data_pages(stream: &[u8]) -> Vec<u64> {
    records(stream).into_iter().filter(|r| r.0 == RecordType::DevmemPage as u32).map(|r| r.1 / PAGE_SIZE).collect()
}

#[test]
fn source_to_destination_round_trip_equals_snapshot() {
    let mut src = rig();
    src.dirty_everything();
    src.walk(&[PreCopy]);
    let mut stream = src.read_round(1);
    src.write(REGION_DEVMEM, 5 * PAGE_SIZE + 1, &[0xaa; 10]).unwrap();
    stream.extend(src.read_round(7));
    src.run(OP_FILL, GUEST, 0, 2 * PAGE_SIZE, 99).unwrap();
    src.run(OP_COPY_TO_DEVICE, GUEST, 40 * PAGE_SIZE, 2 * PAGE_SIZE, 0).unwrap();
    stream.extend(src.read_round(4096));
    src.write(REGION_DEVMEM, 0, &[0xbb; 3]).unwrap();
    stream.extend(src.read_round(1 << 20));
    src.walk(&[StopCopy]);
    let snap = src.dev.snapshot();
    stream.extend(src.read_round(4096));
    assert_eq!(src.dev.read_data(&mut [0; 64]), Ok(0), "after the end every read returns 0 bytes");
    src.walk(&[Stop]);

    for seed in [1, 2, 3] {
        let mut dst = rig();
        dst.walk(&[Stop, Resuming]);
        dst.write_stream(&stream, seed);
        assert_eq!(dst.arc(Resuming, Stop), Ok(()));
        assert_eq!(dst.dev.snapshot(), snap, "seed {seed}");
        dst.walk(&[Running]);
        assert_eq!(dst.run(OP_COPY_TO_GUEST, GUEST, 5 * PAGE_SIZE, 16, 0), Ok(()), "it runs again");
    }
}

#[test]
fn writes_in_pre_copy_are_sent_again_in_a_later_round() {
    let mut src = rig();
    src.walk(&[PreCopy]);
    assert_eq!(devmem_pages(&src.read_round(4096)), (0..PAGES as u64).collect::<Vec<_>>(), "round 1: all");
    src.write(REGION_DEVMEM, 5 * PAGE_SIZE + 7, &[1]).unwrap();
    src.run(OP_FILL, GUEST, 0, PAGE_SIZE, 1).unwrap();
    src.run(OP_COPY_TO_DEVICE, GUEST, 10 * PAGE_SIZE + 1, PAGE_SIZE, 0).unwrap();
    assert_eq!(devmem_pages(&src.read_round(100)), [5, 10, 11]);
    src.reg(REG_CTRL, CTRL_RESET.into()).unwrap();
    assert_eq!(devmem_pages(&src.read_round(1 << 20)).len(), PAGES, "a guest reset zeroes, so dirties, all");
    assert_eq!(src.dev.migration_state(), PreCopy, "a guest reset leaves the migration state alone");
}

#[test]
fn second_round_without_writes_is_empty() {
    let mut src = rig();
    src.walk(&[PreCopy]);
    let first = src.read_round(4096);
    assert_eq!(records(&first)[0].0, RecordType::Header as u32);
    assert_eq!(src.read_round(4096), Vec::<u8>::new());
    src.reg(REG_SCRATCH, 1).unwrap();
    assert_eq!(src.read_round(1), Vec::<u8>::new(), "register writes are not pre-copied");
}

#[test]
fn stop_copy_without_pre_copy_sends_everything() {
    let mut src = rig();
    src.dirty_everything();
    src.walk(&[Stop, StopCopy]);
    let snap = src.dev.snapshot();
    let stream = src.read_round(333);
    let recs = records(&stream);
    let count = |ty: RecordType| recs.iter().filter(|r| r.0 == ty as u32).count();
    assert_eq!(recs.first().map(|r| r.0), Some(RecordType::Header as u32));
    assert_eq!(recs.last().map(|r| r.0), Some(RecordType::Trailer as u32));
    assert_eq!((count(RecordType::Registers), count(RecordType::PciConfig)), (1, 1));
    assert_eq!((count(RecordType::ScratchPage), devmem_pages(&stream).len()), (16, PAGES));
    assert_eq!(data_pages(&stream), [0, 1, 2, 3, 63], "the pages written, the others in zero runs");
    let (dst, r) = resume(&stream, DEVMEM);
    assert_eq!(r, Ok(()));
    assert_eq!(dst.dev.snapshot(), snap);
}

impl Rig {
    /// Like [`read_round`](Self::read_round), but every read the device has data ready for
    /// goes through `read_data_to`, as a server sends it.
    fn read_round_to(&mut self, chunk: usize) -> Vec<u8> {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        loop {
            if self.dev.data_ready() >= chunk as u64 {
                let n = self
                    .dev
                    .read_data_to(chunk, &mut scratch, &mut |parts| {
                        out.extend(parts.concat());
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(n, chunk, "a device hands over all it had ready");
                continue;
            }
            let mut buf = vec![0u8; chunk];
            let n = self.dev.read_data(&mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
            if n < chunk {
                return out;
            }
        }
    }
}

#[test]
fn data_handed_to_a_sender_is_the_stream_read_into_buffers() {
    let (mut a, mut b) = (rig(), rig());
    for r in [&mut a, &mut b] {
        r.dirty_everything();
        r.write(REGION_DEVMEM, 20 * PAGE_SIZE, &[5; 3 * PAGE_SIZE as usize]).unwrap();
        r.walk(&[PreCopy]);
    }
    assert_eq!(a.read_round_to(10_000), b.read_round(10_000), "pre-copy round");
    for r in [&mut a, &mut b] {
        r.write(REGION_DEVMEM, 7, &[1]).unwrap();
        r.walk(&[StopCopy]);
    }
    assert_eq!(a.read_round_to(MAX_RECORD_LEN + 1), b.read_round(MAX_RECORD_LEN + 1), "stop-copy");
}

#[test]
fn a_never_written_device_streams_without_touching_its_pages() {
    let mut src = rig();
    src.walk(&[Stop, StopCopy]);
    let snap = src.dev.snapshot();
    let stream = src.read_round(1 << 20);
    assert_eq!((data_pages(&stream), devmem_pages(&stream).len()), (vec![], PAGES), "zero runs only");
    assert!(stream.len() < (SCRATCH_SIZE + 2 * PAGE_SIZE) as usize, "{} bytes", stream.len());
    let (dst, r) = resume(&stream, DEVMEM);
    assert_eq!((r, dst.dev.snapshot()), (Ok(()), snap));
}

#[test]
fn a_zero_run_zeroes_what_the_destination_held() {
    let mut src = rig();
    src.write(REGION_DEVMEM, 9 * PAGE_SIZE, &[3; 8]).unwrap();
    src.walk(&[Stop, StopCopy]);
    let snap = src.dev.snapshot();
    let stream = src.read_round(4096);
    let mut dst = rig();
    dst.write(REGION_DEVMEM, 0, &vec![0xee; DEVMEM as usize]).unwrap();
    dst.walk(&[Stop, Resuming]);
    dst.write_stream(&stream, 3);
    assert_eq!(dst.arc(Resuming, Stop), Ok(()));
    assert_eq!(dst.dev.snapshot(), snap);
}

#[test]
fn truncated_stream_is_refused_with_enodata() {
    let (stream, _) = migrate_out(&mut rig());
    for keep in [0, 1, 40, 41, 5000, stream.len() - 32, stream.len() - 1] {
        assert_eq!(resume(&stream[..keep], DEVMEM).1, Err(ArcError::Refused(Errno::ENODATA)), "{keep} bytes");
    }
}

#[test]
fn flipped_byte_is_refused_with_ebadmsg() {
    let (stream, _) = migrate_out(&mut rig());
    let len = stream.len();
    // Header: type, length, checksum, magic, version; a page record's framing and body; trailer.
    for at in [0, 5, 9, 17, 24, 40, 44, 48, 60, 3000, len / 2, len - 40, len - 20, len - 9, len - 1] {
        let mut bad = stream.clone();
        bad[at] ^= 0x20;
        assert_eq!(resume(&bad, DEVMEM).1, Err(ArcError::Refused(Errno::EBADMSG)), "byte {at}");
    }
    let mut longer = stream.clone();
    longer.push(0);
    assert_eq!(resume(&longer, DEVMEM).1, Err(ArcError::Refused(Errno::EBADMSG)), "a byte after the trailer");
}

#[test]
fn other_version_is_refused_with_eproto() {
    let (stream, _) = migrate_out(&mut rig());
    let header = encode_record(RecordType::Header as u32, &header_payload(FORMAT_VERSION + 1, DEVMEM));
    let other = [&header[..], &stream[header.len()..]].concat();
    assert_eq!(resume(&other, DEVMEM).1, Err(ArcError::Refused(Errno::EPROTO)));
}

#[test]
fn other_devmem_size_is_refused_with_einval() {
    let (stream, _) = migrate_out(&mut rig());
    assert_eq!(resume(&stream, 2 * DEVMEM).1, Err(ArcError::Refused(Errno::EINVAL)));
}

#[test]
fn a_refused_resume_stays_refused_until_device_reset() {
    let (stream, _) = migrate_out(&mut rig());
    let (mut dst, r) = resume(&stream[..stream.len() - 1], DEVMEM);
    assert_eq!(r, Err(ArcError::Refused(Errno::ENODATA)));
    assert_eq!(dst.dev.migration_state(), Resuming);
    dst.dev.write_data(&stream[stream.len() - 1..]).unwrap();
    assert_eq!(dst.arc(Resuming, Stop), Err(ArcError::Refused(Errno::ENODATA)), "the refusal is sticky");
    let mut ctx = DeviceContext::new(&dst.space, None, &mut dst.irqs);
    dst.dev.reset(&mut ctx).unwrap();
    assert_eq!(dst.dev.migration_state(), Running);
    assert_eq!(dst.dev.snapshot(), rig().dev.snapshot(), "power-on state");
}

#[test]
fn no_dma_while_stopped() {
    let mut rig = rig();
    rig.run(OP_FILL, GUEST, 0, 64, 3).unwrap();
    rig.run(OP_COPY_TO_DEVICE, GUEST, 0, 64, 0).unwrap();
    let guest_before = {
        let mut b = vec![0; 4096];
        rig.guest.read_at(0, &mut b).unwrap();
        b
    };
    for path in [&[Stop][..], &[StopCopy], &[Stop, Resuming]] {
        rig.walk(path);
        let before = rig.dev.snapshot();
        assert_eq!(rig.run(OP_COPY_TO_GUEST, GUEST + 8, 0, 64, 0), Err(Errno::EBUSY));
        assert_eq!(rig.write(REGION_REGS, REG_DOORBELL, &[1]), Err(Errno::EBUSY));
        assert_eq!(rig.write(REGION_REGS, REG_CTRL, &[1]), Err(Errno::EBUSY));
        assert_eq!(rig.write(REGION_DEVMEM, 0, &[1]), Err(Errno::EBUSY));
        assert_eq!(rig.write(REGION_SCRATCH, 0, &[1]), Err(Errno::EBUSY));
        assert_eq!(rig.dev.snapshot(), before, "{path:?}");
        let mut after = vec![0; 4096];
        rig.guest.read_at(0, &mut after).unwrap();
        assert_eq!(after, guest_before, "no DMA in {path:?}");
        assert_eq!(rig.write(REGION_CONFIG, 0x3c, &[5]), Ok(()), "configuration space stays writable");
    }
    let mut ctx = DeviceContext::new(&rig.space, None, &mut rig.irqs);
    rig.dev.reset(&mut ctx).unwrap();
    assert_eq!(rig.run(OP_COPY_TO_GUEST, GUEST + 8, 0, 64, 0), Ok(()), "running again after DEVICE_RESET");
}

#[test]
fn reset_ends_the_stream() {
    for path in [&[PreCopy][..], &[PreCopy, StopCopy], &[Stop, StopCopy]] {
        let mut rig = rig();
        rig.walk(path);
        rig.read_round(4096 * 3).truncate(0);
        let mut ctx = DeviceContext::new(&rig.space, None, &mut rig.irqs);
        rig.dev.reset(&mut ctx).unwrap();
        assert_eq!(rig.dev.migration_state(), Running);
        assert_eq!(rig.dev.read_data(&mut [0; 16]), Err(Errno::EINVAL), "{path:?}: no stream");
        rig.write(REGION_DEVMEM, 0, &[1]).unwrap();
        rig.walk(&[PreCopy]);
        let fresh = rig.read_round(1 << 20);
        assert_eq!(devmem_pages(&fresh).len(), PAGES, "{path:?}: a new stream starts over");
    }
}

#[test]
fn abandoned_pre_copy_starts_over_with_every_page() {
    let mut rig = rig();
    rig.walk(&[PreCopy]);
    rig.read_round(1 << 20);
    rig.walk(&[Running, PreCopy]);
    assert_eq!(devmem_pages(&rig.read_round(1 << 20)).len(), PAGES);
}

#[test]
fn arcs_that_are_not_direct_or_not_from_the_current_state_are_refused_with_einval() {
    let mut rig = rig();
    for (from, to) in [(Running, StopCopy), (Running, Resuming), (Stop, PreCopy), (Stop, Running)] {
        assert_eq!(rig.arc(from, to), Err(ArcError::Refused(Errno::EINVAL)), "{from:?} -> {to:?}");
    }
    rig.walk(&[Stop, StopCopy]);
    assert_eq!(rig.arc(StopCopy, PreCopy), Err(ArcError::Refused(Errno::EINVAL)));
    assert_eq!(rig.dev.migration_state(), StopCopy);
    assert_eq!(rig.dev.write_data(&[0]), Err(Errno::EINVAL), "writes only in RESUMING");
}

#[test]
fn fail_arc_hook_refuses_with_eio() {
    let fail_arcs = ArcSet::from([(PreCopy, StopCopy)]);
    let mut rig = Rig::with(DmaEngineConfig { devmem_size: DEVMEM, fail_arcs, ..Default::default() });
    rig.walk(&[PreCopy]);
    assert_eq!(rig.arc(PreCopy, StopCopy), Err(ArcError::Refused(Errno::EIO)));
    assert_eq!(rig.dev.migration_state(), PreCopy);
    assert_eq!(devmem_pages(&rig.read_round(1 << 20)).len(), PAGES, "the stream goes on");
    rig.walk(&[Running, Stop, StopCopy]);
}

#[test]
fn fail_arc_hook_refuses_each_chosen_arc_and_no_other() {
    let fail_arcs = ArcSet::from([(PreCopy, StopCopy), (Stop, Resuming), (StopCopy, Stop)]);
    let mut rig = Rig::with(DmaEngineConfig { devmem_size: DEVMEM, fail_arcs, ..Default::default() });
    rig.walk(&[PreCopy]);
    assert_eq!(rig.arc(PreCopy, StopCopy), Err(ArcError::Refused(Errno::EIO)));
    rig.walk(&[Running, Stop]);
    assert_eq!(rig.arc(Stop, Resuming), Err(ArcError::Refused(Errno::EIO)));
    assert_eq!(rig.dev.migration_state(), Stop, "a refused arc keeps the state");
    rig.walk(&[StopCopy]);
    assert_eq!(rig.arc(StopCopy, Stop), Err(ArcError::Refused(Errno::EIO)));
    assert_eq!(rig.dev.migration_state(), StopCopy);
}

mod without_pre_copy {
    use super::*;
    use crate::migration::control::MigrationCtl;
    use crate::wire::MIGRATION_STOP_COPY;
    use pretty_assertions::assert_eq;

    fn rig_without_pre_copy() -> Rig {
        Rig::with(DmaEngineConfig { devmem_size: DEVMEM, pre_copy: false, ..DmaEngineConfig::default() })
    }

    /// Drives `rig` to `target` the way the server does: through the controller it builds from
    /// [`Migratable::supports_pre_copy`].
    fn set(ctl: &mut MigrationCtl, rig: &mut Rig, target: MigState) -> Result<(), Errno> {
        let mut ctx = DeviceContext::new(&rig.space, None, &mut rig.irqs);
        ctl.set(target as u32, &mut rig.dev, &mut ctx)
    }

    #[test]
    fn device_without_pre_copy_advertises_stop_copy_only() {
        let rig = rig_without_pre_copy();
        assert!(!rig.dev.supports_pre_copy());
        assert_eq!(MigrationCtl::new(rig.dev.supports_pre_copy()).flags(), MIGRATION_STOP_COPY);
        assert!(super::rig().dev.supports_pre_copy(), "PRE_COPY is the default");
    }

    #[test]
    fn running_to_pre_copy_is_refused_without_pre_copy() {
        let mut rig = rig_without_pre_copy();
        let mut ctl = MigrationCtl::new(rig.dev.supports_pre_copy());
        assert_eq!(set(&mut ctl, &mut rig, PreCopy), Err(Errno::EINVAL));
        assert_eq!((ctl.state(), rig.dev.migration_state()), (Running, Running));
        assert_eq!(rig.arc(Running, PreCopy), Err(ArcError::Refused(Errno::EINVAL)), "the device refuses it too");
        assert_eq!(rig.dev.migration_state(), Running);
        assert_eq!(rig.dev.read_data(&mut [0; 64]), Err(Errno::EINVAL), "no stream was started");
    }

    #[test]
    fn pre_copy_is_refused_from_every_state_without_pre_copy() {
        let mut rig = rig_without_pre_copy();
        let mut ctl = MigrationCtl::new(rig.dev.supports_pre_copy());
        for from in [Running, Stop, StopCopy, Resuming] {
            let mut ctx = DeviceContext::new(&rig.space, None, &mut rig.irqs);
            rig.dev.reset(&mut ctx).unwrap();
            ctl.reset();
            assert_eq!(set(&mut ctl, &mut rig, from), Ok(()), "reaching {from:?}");
            assert_eq!(set(&mut ctl, &mut rig, PreCopy), Err(Errno::EINVAL), "{from:?} -> PRE_COPY");
            assert_eq!((ctl.state(), rig.dev.migration_state()), (from, from));
        }
    }

    #[test]
    fn running_to_stop_copy_walks_through_stop_and_migrates_everything() {
        let mut src = rig();
        src.dirty_everything();
        let mut ctl = MigrationCtl::new(src.dev.supports_pre_copy());
        assert_eq!(set(&mut ctl, &mut src, StopCopy), Ok(()));
        let snap = src.dev.snapshot();
        let stream = src.read_round(4096);
        assert_eq!(devmem_pages(&stream).len(), PAGES, "the single final part carries all of device memory");
        assert_eq!(set(&mut ctl, &mut src, Stop), Ok(()));

        let mut dst = rig();
        let mut ctl = MigrationCtl::new(dst.dev.supports_pre_copy());
        assert_eq!(set(&mut ctl, &mut dst, Resuming), Ok(()));
        dst.write_stream(&stream, 7);
        assert_eq!(set(&mut ctl, &mut dst, Running), Ok(()), "RESUMING -> STOP -> RUNNING");
        assert_eq!(dst.dev.snapshot(), snap);
    }
}

#[test]
fn fail_read_after_hook_fails_reads_with_eio() {
    let config = DmaEngineConfig { devmem_size: DEVMEM, fail_read_after: Some(100), ..Default::default() };
    let mut rig = Rig::with(config);
    rig.write(REGION_DEVMEM, 0, &[1; 8]).unwrap(); // a stream longer than 100 bytes
    rig.walk(&[PreCopy]);
    assert_eq!(rig.dev.read_data(&mut [0; 60]), Ok(60));
    assert_eq!(rig.dev.read_data(&mut [0; 60]), Err(Errno::EIO), "would go past byte 100");
    assert_eq!(rig.dev.read_data(&mut [0; 1]), Err(Errno::EIO), "the stream is dead");
    rig.walk(&[Running, PreCopy]);
    assert_eq!(rig.dev.read_data(&mut [0; 100]), Ok(100), "a new stream counts afresh");
    assert_eq!(rig.dev.read_data(&mut [0; 1]), Err(Errno::EIO));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_never_panics(
        prefix in 0usize..3,
        garbage in proptest::collection::vec(any::<u8>(), 0..9000),
        chunk in 1usize..5000,
    ) {
        // Garbage alone, or after a valid header, or after a valid header and one record.
        let mut w = super::stream::StreamWriter::default();
        let mut stream = Vec::new();
        if prefix > 0 {
            stream.extend(w.record(RecordType::Header, &header_payload(FORMAT_VERSION, DEVMEM)));
        }
        if prefix > 1 {
            stream.extend(w.record(RecordType::DevmemPage, &super::stream::page_payload(0, &[1; 4096])));
        }
        stream.extend(&garbage);
        let mut dst = rig();
        dst.walk(&[Stop, Resuming]);
        for piece in stream.chunks(chunk) {
            prop_assert_eq!(dst.dev.write_data(piece), Ok(()));
        }
        let r = dst.arc(Resuming, Stop);
        prop_assert!(r.is_err(), "{:?}", r);
        prop_assert_eq!(dst.dev.migration_state(), Resuming);
    }
}
