//! The `sweep` step: every operation of the protocol once in the device's current state —
//! the form a client sends and malformed ones — each reply judged by the protocol model.
//!
//! A sweep right after an event is how the runner asks the server for what the model says
//! must still hold: the state (GET), each mapping (an identical DMA_MAP must be EEXIST while
//! it is mapped), logging (a report of a logged range succeeds only while logging is on).
//! It changes nothing the scenario set up: region writes put back the bytes they read,
//! masks are lifted again, a test mapping is unmapped. Only migration data moves: a read in
//! PRE_COPY or STOP_COPY takes bytes from the stream, a write in RESUMING spoils the stream
//! being resumed, and the models are told so.

use std::os::fd::{AsFd, BorrowedFd};

use mock_qemu::Client;
use nix::sys::eventfd::{EfdFlags, EventFd};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vfu_server::wire::{
    Command, DmaMap, DmaUnmap, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP,
    FEATURE_GET, FEATURE_MIG_DEVICE_STATE, FEATURE_MIGRATION, FEATURE_PROBE, FEATURE_SET, Header, IRQ_INDEX_ERR,
    IRQ_INDEX_REQ, IRQ_INFO_MASKABLE, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK,
    IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, MigState, PCI_CONFIG_REGION_INDEX, TYPE_COMMAND,
};
use zerocopy::IntoBytes;

use super::side::SideCtx;
use super::{Run, StepOutcome, index, rng_for};
use crate::oracle::ResumeData;
use crate::scenario::model::{self as m, Size};

/// Where the test mapping goes: far above any guest RAM the scenarios lay out.
const SPARE_IOVA: u64 = 1 << 46;
/// A command number the protocol does not define.
const UNDEFINED_COMMAND: u16 = 0x7f;

/// A request of the sweep: the reply's payload, `None` for a refusal (the protocol model
/// judges both); any other failure (no reply, a closed connection) fails the step.
fn ask(client: &mut Client, cmd: Command, payload: &[u8]) -> Result<Option<Vec<u8>>, String> {
    ask_with_fds(client, cmd, payload, &[])
}

/// [`ask`] with `fds` passed along.
fn ask_with_fds(
    client: &mut Client,
    cmd: Command,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<Option<Vec<u8>>, String> {
    match client.request(cmd, &[payload], fds) {
        Ok(reply) => Ok(Some(reply.payload)),
        Err(e) if e.errno().is_some() => Ok(None),
        Err(e) => Err(format!("{} in the sweep: {e}", cmd.name())),
    }
}

fn feature(flags: u32, data: &[u8], room: usize) -> Vec<u8> {
    let mut p = ((8 + room) as u32).to_le_bytes().to_vec();
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(data);
    p
}

fn query(argsz: u32, index: u32, extra: usize) -> Vec<u8> {
    let mut p = argsz.to_le_bytes().to_vec();
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&index.to_le_bytes());
    p.resize(argsz as usize + extra, 0);
    p
}

/// A REGION_READ of `count` bytes.
fn read_req(offset: u64, region: u32, count: u32) -> Vec<u8> {
    let mut p = offset.to_le_bytes().to_vec();
    p.extend_from_slice(&region.to_le_bytes());
    p.extend_from_slice(&count.to_le_bytes());
    p
}

/// A REGION_WRITE of `data`.
fn write_req(offset: u64, region: u32, data: &[u8]) -> Vec<u8> {
    let mut p = read_req(offset, region, data.len() as u32);
    p.extend_from_slice(data);
    p
}

fn set_irqs(flags: u32, index: u32, start: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = ((20 + data.len()) as u32).to_le_bytes().to_vec();
    for v in [flags, index, start, count] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.extend_from_slice(data);
    p
}

impl Run<'_> {
    pub(super) fn sweep(&mut self, w: &m::SweepStep) -> StepOutcome {
        let mut rng = rng_for(self.seed, self.step, 5);
        if self.sides[index(w.side)].dev.dirty.logging() {
            // Logging must still be on: a report of the first logged range, judged as every
            // report is (it takes the bits it reports).
            let ctx = &self.sides[index(w.side)];
            if let Some(&(iova, len)) = ctx.dev.dirty.logged_ranges().first() {
                let page_size = ctx.tap.with_model(|m| m.logging_page_size()).unwrap_or(4096);
                let step = m::DirtyReportStep {
                    side: w.side,
                    iova: Some(Size(iova)),
                    length: Some(Size(len.min(page_size * 4096))),
                    page_size: Size(page_size),
                    expect_errno: None,
                };
                self.dirty_report(&step)?;
            }
        }
        let ctx = &mut self.sides[index(w.side)];
        queries(ctx, &mut rng)?;
        if let Some(driver) = ctx.dev.driver.as_mut() {
            // The queries masked and unmasked INTx, with nothing pending.
            driver.unmasked_by_another();
        }
        mappings(ctx, w.impossible_maps)?;
        if w.map_limit {
            map_limit(ctx)?;
        }
        region_access(ctx, &mut rng, w.oversized)?;
        features(ctx)?;
        data(ctx, &mut rng)?;
        malformed(ctx)?;
        Ok(None)
    }
}

/// VERSION again, the device, a region, a region's ioeventfds, an IRQ index (each index drawn
/// up to one past the last), and interrupt masks.
fn queries(ctx: &mut SideCtx, rng: &mut ChaCha8Rng) -> Result<(), String> {
    let (_, regions, irqs) = ctx.tap.with_model(|m| m.device()).unwrap_or((0, 9, 5));
    let maskable = ctx.tap.with_model(|m| m.maskable_index());
    let client = ctx.client()?;
    let mut version = vec![0, 0, 2, 0];
    version.extend_from_slice(b"{\"capabilities\": {}}\0");
    ask(client, Command::Version, &version)?;
    ask(client, Command::DeviceGetInfo, &query(16, 0, 0))?;
    ask(client, Command::DeviceGetRegionInfo, &query(32, rng.random_range(0..=regions), 0))?;
    ask(client, Command::DeviceGetRegionIoFds, &query(16, rng.random_range(0..regions.max(1)), 0))?;
    ask(client, Command::DeviceGetIrqInfo, &query(16, rng.random_range(0..=irqs), 0))?;
    // Two DATA bits: refused whatever the index.
    ask(
        client,
        Command::DeviceSetIrqs,
        &set_irqs(IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, 0, 0, 1, &[1]),
    )?;
    if let Some(i) = maskable {
        ask(client, Command::DeviceSetIrqs, &set_irqs(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, i, 0, 1, &[]))?;
        ask(client, Command::DeviceSetIrqs, &set_irqs(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, i, 0, 1, &[]))?;
    }
    irq_arguments(ctx)
}

/// DEVICE_SET_IRQS on each side of each argument check, on every index the server described:
/// requests the specification refuses (each leaves the interrupts as they were), and masks of
/// the last vector, undone at once.
fn irq_arguments(ctx: &mut SideCtx) -> Result<(), String> {
    const NONE_TRIGGER: u32 = IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER;
    const UNKNOWN_FLAG: u32 = 1 << 6;
    let indexes = ctx.tap.with_model(|m| m.irq_indexes());
    let client = ctx.client()?;
    for (i, vectors, flags) in indexes {
        let maskable = flags & IRQ_INFO_MASKABLE != 0;
        let mut refused = vec![
            set_irqs(NONE_TRIGGER | UNKNOWN_FLAG, i, 0, 1, &[]),
            set_irqs(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK, i, 0, 1, &[]),
            // Past the last vector: starting there, and one vector too many.
            set_irqs(NONE_TRIGGER, i, vectors, 1, &[]),
            set_irqs(NONE_TRIGGER, i, vectors.saturating_sub(1), 2, &[]),
            // No vectors: only TRIGGER without data from the first (which tears the
            // eventfds down, so it is not sent).
            set_irqs(IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, i, 0, 0, &[]),
            set_irqs(NONE_TRIGGER, i, 1, 0, &[]),
            // BOOL data shorter than its count.
            set_irqs(IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, i, 0, 2, &[0]),
        ];
        if maskable {
            refused.push(set_irqs(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, i, 0, 0, &[]));
        } else {
            refused.push(set_irqs(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, i, 0, 1, &[]));
        }
        if matches!(i, IRQ_INDEX_ERR | IRQ_INDEX_REQ) {
            refused.push(set_irqs(NONE_TRIGGER, i, 0, 2, &[]));
        }
        for req in refused {
            ask(client, Command::DeviceSetIrqs, &req)?;
        }
        if vectors > 0 {
            // Eventfds where they do not belong: with MASK, one too many for the count, and
            // with DATA_NONE.
            let (a, b) = (eventfd()?, eventfd()?);
            let with_fds = [
                (set_irqs(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_MASK, i, 0, 1, &[]), 1),
                (set_irqs(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, i, 0, 1, &[]), 2),
                (set_irqs(NONE_TRIGGER, i, 0, 1, &[]), 1),
            ];
            for (req, n) in with_fds {
                let fds = [a.as_fd(), b.as_fd()];
                ask_with_fds(client, Command::DeviceSetIrqs, &req, &fds[..n])?;
            }
        }
        if maskable && vectors > 0 && !matches!(i, IRQ_INDEX_ERR | IRQ_INDEX_REQ) {
            let last = vectors - 1;
            ask(client, Command::DeviceSetIrqs, &set_irqs(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, i, last, 1, &[]))?;
            ask(client, Command::DeviceSetIrqs, &set_irqs(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, i, last, 1, &[]))?;
        }
    }
    Ok(())
}

/// A new eventfd, to pass where none belongs.
fn eventfd() -> Result<EventFd, String> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| format!("an eventfd for the sweep: {e}"))
}

/// A read-write DMA_MAP of `addr`+`size` without an fd.
fn map(addr: u64, size: u64) -> DmaMap {
    DmaMap { argsz: 32, flags: 3, offset: 0, addr, size }
}

/// A DMA_UNMAP of exactly `addr`+`size`.
fn unmap_req(addr: u64, size: u64) -> DmaUnmap {
    DmaUnmap { argsz: 24, flags: 0, addr, size }
}

/// Each mapping the model holds must still be there (an identical or overlapping map is
/// EEXIST); a spare range maps and unmaps, and so do the pages touching it on either side;
/// unmapping what is not mapped is ENOENT.
fn mappings(ctx: &mut SideCtx, impossible: bool) -> Result<(), String> {
    let held = ctx.tap.with_model(|m| m.mappings());
    let client = ctx.client()?;
    for &(addr, size) in held.iter().take(4) {
        ask(client, Command::DmaMap, map(addr, size).as_bytes())?;
    }
    if let Some(&(addr, size)) = held.first()
        && size > 4096
    {
        ask(client, Command::DmaMap, map(addr + 4096, 4096).as_bytes())?;
    }
    if impossible {
        // Ranges no mapping can have: empty, and past the end of the address space.
        ask(client, Command::DmaMap, map(SPARE_IOVA, 0).as_bytes())?;
        ask(client, Command::DmaMap, map(u64::MAX - 4095, 8192).as_bytes())?;
    }
    let mapped = ask(client, Command::DmaMap, map(SPARE_IOVA, 4096).as_bytes())?.is_some();
    // Pages touching the spare one, below and above: mappings of their own, not overlaps.
    let mut touching = Vec::new();
    if mapped {
        for at in [SPARE_IOVA - 4096, SPARE_IOVA + 4096] {
            if ask(client, Command::DmaMap, map(at, 4096).as_bytes())?.is_some() {
                touching.push(at);
            }
        }
        for &at in &touching {
            ask(client, Command::DmaUnmap, unmap_req(at, 4096).as_bytes())?;
        }
    }
    let unmap = unmap_req(SPARE_IOVA, 4096);
    let unmapped = ask(client, Command::DmaUnmap, unmap.as_bytes())?.is_some();
    ask(client, Command::DmaUnmap, DmaUnmap { addr: SPARE_IOVA * 2, ..unmap }.as_bytes())?;
    ask(client, Command::DmaUnmap, DmaUnmap { flags: 4, ..unmap }.as_bytes())?;
    // UNMAP_ALL with an address or a size (each alone): refused, nothing unmapped.
    ask(client, Command::DmaUnmap, DmaUnmap { flags: 2, ..unmap }.as_bytes())?;
    ask(client, Command::DmaUnmap, DmaUnmap { flags: 2, size: 0, ..unmap }.as_bytes())?;
    ask(client, Command::DmaUnmap, DmaUnmap { flags: 2, addr: 0, ..unmap }.as_bytes())?;
    if mapped {
        ctx.dev.dirty.mapped(SPARE_IOVA, 4096);
    }
    if unmapped {
        ctx.dev.dirty.unmapped(SPARE_IOVA, 4096);
    }
    Ok(())
}

/// Spare pages (without an fd) mapped up to the server's `max_dma_maps`, all taken, then one
/// more, refused; then unmapped.
fn map_limit(ctx: &mut SideCtx) -> Result<(), String> {
    let (held, max) = ctx.tap.with_model(|m| (m.mappings().len(), m.max_dma_maps() as usize));
    let base = SPARE_IOVA * 3;
    let mut mapped = Vec::new();
    for i in 0..=max.saturating_sub(held) as u64 {
        let at = base + i * 4096;
        if ask(ctx.client()?, Command::DmaMap, map(at, 4096).as_bytes())?.is_some() {
            ctx.dev.dirty.mapped(at, 4096);
            mapped.push(at);
        }
    }
    for at in mapped {
        if ask(ctx.client()?, Command::DmaUnmap, unmap_req(at, 4096).as_bytes())?.is_some() {
            ctx.dev.dirty.unmapped(at, 4096);
        }
    }
    Ok(())
}

/// Configuration space read; plain memory read and its bytes written back, alone and in a
/// REGION_WRITE_MULTI; an access past the region's end; with `oversized`, a write above the
/// size bound.
fn region_access(ctx: &mut SideCtx, rng: &mut ChaCha8Rng, oversized: bool) -> Result<(), String> {
    let memory = ctx.tap.with_model(|m| m.memory_region());
    let client = ctx.client()?;
    ask(client, Command::RegionRead, &read_req(0, PCI_CONFIG_REGION_INDEX, 4))?;
    if let Some((region, size)) = memory {
        let offset = rng.random_range(0..=(size - 8) / 8) * 8;
        if let Some(reply) = ask(client, Command::RegionRead, &read_req(offset, region, 8))? {
            let bytes = reply.get(16..24).unwrap_or(&[0; 8]).to_vec();
            ask(client, Command::RegionWrite, &write_req(offset, region, &bytes))?;
            let mut multi = 1u64.to_le_bytes().to_vec();
            multi.extend_from_slice(&offset.to_le_bytes());
            multi.extend_from_slice(&region.to_le_bytes());
            multi.extend_from_slice(&8u32.to_le_bytes());
            multi.extend_from_slice(&bytes);
            ask(client, Command::RegionWriteMulti, &multi)?;
        }
        ask(client, Command::RegionRead, &read_req(size - 4, region, 8))?;
        if oversized {
            let big = vec![0u8; (2 << 20) + 64];
            ask(client, Command::RegionWrite, &write_req(0, region, &big))?;
        }
    }
    ask(client, Command::RegionWriteMulti, &0u64.to_le_bytes())?;
    Ok(())
}

/// Migration flags, the state (read, and set to itself), probes, an unknown feature, a bad op,
/// and logging's refusals that leave it as it is.
fn features(ctx: &mut SideCtx) -> Result<(), String> {
    let state = ctx.tap.with_model(|m| m.state());
    let logging = ctx.dev.dirty.logging();
    let client = ctx.client()?;
    ask(client, Command::DeviceFeature, &feature(FEATURE_GET | FEATURE_MIGRATION, &[0; 8], 8))?;
    // More room than the reply needs: its argsz must still say its own size.
    ask(client, Command::DeviceFeature, &feature(FEATURE_GET | FEATURE_MIGRATION, &[0; 64], 64))?;
    ask(client, Command::DeviceFeature, &feature(FEATURE_GET | FEATURE_MIG_DEVICE_STATE, &[0; 8], 8))?;
    if let Some(s) = state.filter(|s| *s != MigState::Error) {
        let mut data = (s as u32).to_le_bytes().to_vec();
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        ask(client, Command::DeviceFeature, &feature(FEATURE_SET | FEATURE_MIG_DEVICE_STATE, &data, 8))?;
    }
    let probe = FEATURE_PROBE | FEATURE_GET | FEATURE_SET | FEATURE_MIG_DEVICE_STATE;
    ask(client, Command::DeviceFeature, &feature(probe, &[], 0))?;
    ask(client, Command::DeviceFeature, &feature(FEATURE_GET | FEATURE_SET | FEATURE_MIG_DEVICE_STATE, &[0; 8], 8))?;
    ask(client, Command::DeviceFeature, &feature(FEATURE_GET | 3, &[0; 8], 8))?;
    ask(client, Command::DeviceFeature, &feature(0x8_0000 | FEATURE_MIGRATION, &[0; 8], 8))?;
    // A START with page size 0 is refused whether logging is on or not, and changes nothing.
    ask(client, Command::DeviceFeature, &feature(FEATURE_SET | FEATURE_DMA_LOGGING_START, &[0; 16], 16))?;
    if !logging {
        let mut report = 0u64.to_le_bytes().to_vec();
        report.extend_from_slice(&(1u64 << 20).to_le_bytes());
        report.extend_from_slice(&4096u64.to_le_bytes());
        ask(client, Command::DeviceFeature, &feature(FEATURE_GET | FEATURE_DMA_LOGGING_REPORT, &report, 24 + 32))?;
        ask(client, Command::DeviceFeature, &feature(FEATURE_SET | FEATURE_DMA_LOGGING_STOP, &[0; 16], 16))?;
    }
    Ok(())
}

/// MIG_DATA_READ and MIG_DATA_WRITE where the state serves them and where it does not.
fn data(ctx: &mut SideCtx, rng: &mut ChaCha8Rng) -> Result<(), String> {
    let state = ctx.tap.with_model(|m| m.state());
    let n: u32 = rng.random_range(1..=64);
    let mut read = (8 + n).to_le_bytes().to_vec();
    read.extend_from_slice(&n.to_le_bytes());
    let got = ask(ctx.client()?, Command::MigDataRead, &read)?;
    if let Some(reply) = got {
        let size = reply.get(4..8).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
        ctx.out.offset += u64::from(size);
        ctx.out.ended |= size < n && state == Some(MigState::StopCopy);
    }
    let mut bytes = vec![0u8; 16];
    rng.fill(&mut bytes[..]);
    let mut write = (8 + 16u32).to_le_bytes().to_vec();
    write.extend_from_slice(&16u32.to_le_bytes());
    write.extend_from_slice(&bytes);
    ask(ctx.client()?, Command::MigDataWrite, &write)?;
    if state == Some(MigState::Resuming) {
        ctx.dev.model.wrote_data(ResumeData::Invalid);
    }
    Ok(())
}

/// A command the protocol does not define, the retired command 14, and an fd on a command
/// that takes none.
fn malformed(ctx: &mut SideCtx) -> Result<(), String> {
    let client = ctx.client()?;
    for cmd in [UNDEFINED_COMMAND, 14] {
        let header = Header { msg_id: client.next_msg_id(), cmd, msg_size: 16, flags: TYPE_COMMAND, error_no: 0 };
        client.send_raw(&header, &[], &[]).map_err(|e| format!("command {cmd} in the sweep: {e}"))?;
        if let Err(e) = client.wait_reply(&header)
            && e.errno().is_none()
        {
            return Err(format!("command {cmd} in the sweep: {e}"));
        }
    }
    let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).map_err(|e| format!("an eventfd for the sweep: {e}"))?;
    match client.request(Command::RegionRead, &[&read_req(0, PCI_CONFIG_REGION_INDEX, 4)], &[fd.as_fd()]) {
        Ok(_) => Ok(()),
        Err(e) if e.errno().is_some() => Ok(()),
        Err(e) => Err(format!("REGION_READ with an fd in the sweep: {e}")),
    }
}
