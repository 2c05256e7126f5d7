//! Live migration of the dma-engine: [`Migratable`] for [`DmaEngine`].
//!
//! # Migration state
//!
//! The device tracks its own migration state from the arcs it is given (it starts, and
//! [`Device::reset`](crate::Device::reset) puts it back, in RUNNING) and takes these arcs:
//!
//! | arc | what the device does |
//! |---|---|
//! | RUNNING→STOP, STOP→RUNNING | nothing but stop or resume serving writes, and park or resume the background writer |
//! | RUNNING→PRE_COPY | starts an outgoing stream and dirty tracking with every devmem page dirty |
//! | PRE_COPY→RUNNING | abandons the stream and stops tracking |
//! | PRE_COPY→STOP_COPY | parks the background writer, then freezes registers (its final BG_WRITES included), configuration and scratch memory as they are now; keeps the dirty set; the stream goes on with its final part |
//! | STOP→STOP_COPY | starts a stream whose final part carries the whole devmem (every page dirty) |
//! | STOP_COPY→STOP | ends (or abandons) the stream and stops tracking |
//! | STOP→RESUMING | starts a fresh incoming stream |
//! | RESUMING→STOP | validates the incoming stream and commits it (below); a committed background writer that was enabled is PAUSED, and STOP→RUNNING resumes it from BG_WRITES |
//!
//! Any other pair, or an arc that does not start from the device's own state, is refused
//! with EINVAL; the fault injection hook
//! [`DmaEngineConfig::fail_arcs`](super::DmaEngineConfig::fail_arcs) refuses the chosen arcs
//! with EIO. No arc ever leaves the device broken: every refusal keeps the state it was in
//! (a background writer that was running goes on).
//!
//! While the device is in STOP, STOP_COPY or RESUMING it changes no state of its own and does
//! no DMA: it refuses region writes to BAR0, BAR2 and BAR4 with EBUSY, as the server does (so
//! a doorbell or CTRL write there never runs), and its background writer is parked: the arc
//! that left RUNNING or PRE_COPY parked it before returning, so no write of it is in flight
//! or to come once the server replies to the SET (see [`background`](super::background)).
//! Writes to configuration space are served in every state, as the server serves them: in
//! STOP_COPY they no longer reach the stream (it carries the configuration as of entering
//! STOP_COPY), in RESUMING the commit overwrites them with the migrated configuration. Region
//! reads are always served.
//!
//! # Without PRE_COPY
//!
//! With [`DmaEngineConfig::pre_copy`](super::DmaEngineConfig::pre_copy) off, the device says
//! so through [`Migratable::supports_pre_copy`]: the server then advertises the MIGRATION
//! feature with STOP_COPY alone, drops every arc touching PRE_COPY from its next-hop table and
//! refuses a SET that would need one with EINVAL, without calling the device. The device
//! refuses those arcs too (EINVAL), so it holds the same contract when driven directly. The
//! stream is then the STOP→STOP_COPY one: a single final part carrying the whole device
//! memory.
//!
//! # The outgoing stream
//!
//! Its format is in [`stream`](super::stream). In PRE_COPY, `read_data` emits the header and
//! then one DEVMEM_PAGE record per dirty page (taken out of the dirty set as it is encoded),
//! except that consecutive dirty pages the device never wrote go as one ZERO_PAGES record,
//! their memory neither read nor faulted in, and returns a short read, possibly of 0 bytes, when no dirty page is left: the end of the
//! round. Device memory written meanwhile (BAR2 writes, COPY to device, a guest reset zeroing
//! it) is dirty again and goes in a later round. In STOP_COPY it emits REGISTERS, PCI_CONFIG,
//! the 16 SCRATCH_PAGE records (BAR4 is mmappable, so its writes cannot be tracked: it is
//! always sent whole), the still dirty pages, and the TRAILER; then a short read ends the
//! stream and every later read returns 0 bytes. Reads resume mid-record, so the client may
//! read in pieces of any size. [`DmaEngineConfig::fail_read_after`](super::DmaEngineConfig::fail_read_after) injects a read failure.
//!
//! # The incoming stream
//!
//! `write_data` feeds a [`Decoder`] and never fails in RESUMING: the first problem is
//! remembered and surfaces on RESUMING→STOP. Device memory pages are applied in place as soon
//! as their record checks out; registers, configuration and scratch memory are staged and
//! committed by RESUMING→STOP only when the whole stream is valid. RESUMING→STOP fails with
//! `ArcError::Refused(errno)`:
//!
//! | errno | the data was |
//! |---|---|
//! | ENODATA | truncated: the trailer never came |
//! | EBADMSG | corrupted: a record or whole-stream checksum mismatch, garbage, a missing part |
//! | EPROTO | of another stream format version |
//! | EINVAL | of another device configuration (`devmem_size` differs) |
//!
//! After a refusal the device stays in RESUMING with device memory partly overwritten and the
//! refusal sticky: later writes are ignored and every RESUMING→STOP is refused the same way,
//! so it never pretends to hold a valid state; DEVICE_RESET returns it to power-on RUNNING.
//! On success the destination's state ([`DmaEngine::snapshot`]) equals the source's as it
//! entered STOP_COPY.

use std::fmt;

use nix::errno::Errno;

use super::DmaEngine;
use super::pages::{PAGE_SIZE, PageSet};
use super::pci_config::{PciConfigState, SCRATCH_SIZE};
use super::regs::Registers;
use super::state::DmaEngineState;
use super::stream::{
    Decoder, FORMAT_VERSION, MAX_RECORD_LEN, PAGE_RECORD_HEAD, RECORD_HEADER_LEN, Record, RecordType, StreamWriter,
    header_payload, pci_config_payload, registers_payload,
};
use crate::device::DeviceContext;
use crate::migration::{ArcError, MigState, Migratable};

/// The device's migration state and the stream it is sending or receiving.
pub(super) struct Migration {
    state: MigState,
    outgoing: Option<Outgoing>,
    incoming: Option<Incoming>,
}

impl Default for Migration {
    fn default() -> Self {
        Self { state: MigState::Running, outgoing: None, incoming: None }
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("state", &self.state)
            .field("outgoing_read", &self.outgoing.as_ref().map(|o| o.read))
            .field("incoming_problem", &self.incoming.as_ref().map(|i| i.decoder.problem()))
            .finish()
    }
}

impl Migration {
    /// Whether the device must neither change state nor DMA (STOP, STOP_COPY, RESUMING).
    pub(super) fn is_frozen(&self) -> bool {
        !matches!(self.state, MigState::Running | MigState::PreCopy)
    }
}

/// What the final part of the stream carries besides devmem, as it was on entering STOP_COPY.
struct Frozen {
    regs: Registers,
    pci: PciConfigState,
    scratch: Vec<u8>,
}

/// The next thing the outgoing stream emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Header,
    Registers,
    PciConfig,
    Scratch(u64),
    Pages,
    Trailer,
    End,
}

/// The outgoing stream: the record being delivered and what comes next.
struct Outgoing {
    writer: StreamWriter,
    record: Vec<u8>,
    pos: usize,
    step: Step,
    /// Where the search for the next dirty page starts.
    cursor: usize,
    /// Set on entering STOP_COPY: the stream is in its final part.
    frozen: Option<Frozen>,
    /// Bytes delivered so far.
    read: u64,
    /// An injected read failure happened: the stream is dead.
    failed: bool,
}

impl Outgoing {
    fn new(frozen: Option<Frozen>) -> Self {
        let (writer, record, pos, step, cursor, read) = (StreamWriter::default(), Vec::new(), 0, Step::Header, 0, 0);
        Self { writer, record, pos, step, cursor, frozen, read, failed: false }
    }

    /// Switches to the final part: a pre-copy round in progress ends here.
    fn enter_stop_copy(&mut self, frozen: Frozen) {
        self.frozen = Some(frozen);
        if self.step == Step::Pages {
            self.step = Step::Registers;
        }
    }

    /// Encodes the next record at the start of `out` (at least [`MAX_RECORD_LEN`] bytes) and
    /// returns its length, or `None` at the end of a pre-copy round or of the stream.
    fn next_record(&mut self, state: &mut DmaEngineState, out: &mut [u8]) -> Option<usize> {
        loop {
            let frozen = self.frozen.as_ref();
            let w = &mut self.writer;
            match self.step {
                Step::Header => {
                    self.step = if frozen.is_some() { Step::Registers } else { Step::Pages };
                    let payload = header_payload(FORMAT_VERSION, state.devmem_size());
                    return w.record_into(RecordType::Header, &[&payload], out);
                }
                Step::Registers => {
                    self.step = Step::PciConfig;
                    return w.record_into(RecordType::Registers, &[&registers_payload(&frozen?.regs)], out);
                }
                Step::PciConfig => {
                    self.step = Step::Scratch(0);
                    return w.record_into(RecordType::PciConfig, &[&pci_config_payload(&frozen?.pci)], out);
                }
                Step::Scratch(offset) if offset >= SCRATCH_SIZE => self.step = Step::Pages,
                Step::Scratch(offset) => {
                    self.step = Step::Scratch(offset + PAGE_SIZE);
                    let start = usize::try_from(offset).ok()?;
                    let page = frozen?.scratch.get(start..start + PAGE_SIZE as usize)?;
                    return w.record_into(RecordType::ScratchPage, &[&offset.to_le_bytes(), page], out);
                }
                Step::Pages => {
                    let Some(page) = state.dirty_pages().and_then(|d| d.take_next(self.cursor)) else {
                        if frozen.is_some() {
                            self.step = Step::Trailer;
                            continue;
                        }
                        return None; // end of this pre-copy round
                    };
                    let offset = page as u64 * PAGE_SIZE;
                    if !state.page_is_written(page) {
                        let count = take_zero_run(state, page);
                        self.cursor = page + count;
                        let count = &(count as u64).to_le_bytes();
                        return w.record_into(RecordType::ZeroPages, &[&offset.to_le_bytes(), count], out);
                    }
                    self.cursor = page + 1;
                    let data = state.devmem_range(offset, PAGE_SIZE as usize)?;
                    let head = w.page_record_head(RecordType::DevmemPage, offset, state.page_sum(page)?);
                    let (h, rest) = out.get_mut(..MAX_RECORD_LEN)?.split_at_mut(PAGE_RECORD_HEAD);
                    h.copy_from_slice(&head);
                    rest.copy_from_slice(data);
                    return Some(MAX_RECORD_LEN);
                }
                Step::Trailer => {
                    self.step = Step::End;
                    let payload = w.trailer_payload();
                    return w.record_into(RecordType::Trailer, &[&payload], out);
                }
                Step::End => return None,
            }
        }
    }

    /// At least how many bytes [`fill`](Self::fill) would produce now before its short read:
    /// the record in delivery and the dirty pages that hold data.
    fn ready(&self, state: &DmaEngineState) -> u64 {
        let pending = self.record.len().saturating_sub(self.pos) as u64;
        if self.failed || self.step == Step::End {
            return pending;
        }
        let page_record = (RECORD_HEADER_LEN + RecordType::DevmemPage.payload_len()) as u64;
        pending + state.dirty_written_pages() as u64 * page_record
    }

    /// Hands the next `len` bytes of the stream (fewer at its short read) to `send`, a batch of
    /// parts at a time, and returns how many it handed over. A device memory page with data
    /// goes as its 24-byte head, with the checksum the device kept for it, and the page itself
    /// where it lies in device memory: it is neither hashed nor copied before the socket. Other records, and a page record cut
    /// by the end of `len`, are encoded into the record buffer and delivered from there.
    fn fill_to(
        &mut self,
        state: &mut DmaEngineState,
        len: usize,
        heads: &mut Vec<u8>,
        send: &mut dyn FnMut(&[&[u8]]) -> std::io::Result<()>,
    ) -> Result<usize, Errno> {
        /// Records per batch: two parts each, within what one `sendmsg` takes.
        const BATCH: usize = 100;
        let mut done = 0;
        let mut ended = false;
        while done < len && !ended {
            // Each planned part: a range of `heads`, then optionally a devmem page.
            let mut plan: [(usize, usize, Option<usize>); BATCH] = [(0, 0, None); BATCH];
            let mut planned = 0;
            heads.clear();
            let mut at = done;
            while at < len && planned < BATCH {
                if self.pos >= self.record.len() {
                    if let Some(page) = (len - at >= MAX_RECORD_LEN).then(|| self.next_written_page(state)).flatten() {
                        let offset = page as u64 * PAGE_SIZE;
                        state.devmem_range(offset, PAGE_SIZE as usize).ok_or(Errno::EIO)?;
                        let sum = state.page_sum(page).ok_or(Errno::EIO)?;
                        let head = self.writer.page_record_head(RecordType::DevmemPage, offset, sum);
                        plan[planned] = (heads.len(), heads.len() + head.len(), Some(page));
                        heads.extend_from_slice(&head);
                        planned += 1;
                        at += MAX_RECORD_LEN;
                        continue;
                    }
                    if !self.stage_next_record(state) {
                        ended = true;
                        break;
                    }
                }
                let k = (self.record.len() - self.pos).min(len - at);
                let part = self.record.get(self.pos..self.pos + k).unwrap_or_default();
                plan[planned] = (heads.len(), heads.len() + k, None);
                heads.extend_from_slice(part);
                planned += 1;
                self.pos += k;
                at += k;
            }
            let mut parts: [&[u8]; 2 * BATCH] = [&[]; 2 * BATCH];
            for (i, &(from, to, page)) in plan.iter().take(planned).enumerate() {
                parts[2 * i] = heads.get(from..to).unwrap_or_default();
                if let Some(p) = page {
                    parts[2 * i + 1] = state.devmem_range(p as u64 * PAGE_SIZE, PAGE_SIZE as usize).unwrap_or_default();
                }
            }
            send(parts.get(..2 * planned).unwrap_or_default()).map_err(|_| Errno::EIO)?;
            done = at;
        }
        Ok(done)
    }

    /// Encodes the next record into the record buffer, to be delivered from there; false
    /// (the buffer left empty) at the end of a pre-copy round or of the stream.
    fn stage_next_record(&mut self, state: &mut DmaEngineState) -> bool {
        let mut record = std::mem::take(&mut self.record);
        record.resize(MAX_RECORD_LEN, 0);
        let k = self.next_record(state, &mut record);
        record.truncate(k.unwrap_or(0));
        (self.record, self.pos) = (record, 0);
        k.is_some()
    }

    /// Takes the next dirty devmem page out of the dirty set if it is the next record and
    /// holds data (a page never written goes in a zero run, through `next_record`).
    fn next_written_page(&mut self, state: &mut DmaEngineState) -> Option<usize> {
        if self.step != Step::Pages {
            return None;
        }
        let dirty = state.dirty_pages()?;
        let page = dirty.next(self.cursor)?;
        if !state.page_is_written(page) {
            return None;
        }
        state.dirty_pages()?.remove(page);
        self.cursor = page + 1;
        Some(page)
    }

    /// Fills `buf` from the stream; returns how many bytes it wrote. Whole records are encoded
    /// straight into `buf`; only a record that straddles the end of `buf` goes through the
    /// internal record buffer, to be delivered by the next read.
    fn fill(&mut self, state: &mut DmaEngineState, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            if self.pos < self.record.len() {
                let src = self.record.get(self.pos..).unwrap_or_default();
                let dst = buf.get_mut(n..).unwrap_or_default();
                let k = src.len().min(dst.len());
                if let (Some(d), Some(s)) = (dst.get_mut(..k), src.get(..k)) {
                    d.copy_from_slice(s);
                }
                self.pos += k;
                n += k;
                continue;
            }
            let dst = buf.get_mut(n..).unwrap_or_default();
            if dst.len() >= MAX_RECORD_LEN {
                match self.next_record(state, dst) {
                    Some(k) => n += k,
                    None => break,
                }
                continue;
            }
            if !self.stage_next_record(state) {
                break;
            }
        }
        n
    }
}

/// Takes the dirty pages from `page` on that the device never wrote, up to the first that is
/// clean or written, out of the dirty set (the caller took `page` itself); returns how many.
fn take_zero_run(state: &mut DmaEngineState, page: usize) -> usize {
    let mut count = 1;
    while !state.page_is_written(page + count) {
        match state.dirty_pages() {
            Some(d) if d.contains(page + count) => d.remove(page + count),
            _ => break,
        }
        count += 1;
    }
    count
}

/// The incoming stream: the decoder and the staged parts.
struct Incoming {
    decoder: Decoder,
    regs: Option<Registers>,
    pci: Option<PciConfigState>,
    scratch: Vec<u8>,
    scratch_seen: PageSet,
    devmem_seen: PageSet,
}

impl Incoming {
    fn new(devmem_size: u64) -> Self {
        Self {
            decoder: Decoder::new(devmem_size),
            regs: None,
            pci: None,
            scratch: vec![0; SCRATCH_SIZE as usize],
            scratch_seen: PageSet::for_bytes(SCRATCH_SIZE, false),
            devmem_seen: PageSet::for_bytes(devmem_size, false),
        }
    }

    /// Takes stream bytes: devmem pages go to `state` at once, the rest is staged.
    fn feed(&mut self, state: &mut DmaEngineState, data: &[u8]) {
        let Self { decoder, regs, pci, scratch, scratch_seen, devmem_seen } = self;
        decoder.feed(data, |record| {
            match record {
                Record::Registers(r) => regs.replace(r).map_or(Ok(()), |_| Err(Errno::EBADMSG))?,
                Record::PciConfig(c) => pci.replace(c).map_or(Ok(()), |_| Err(Errno::EBADMSG))?,
                Record::DevmemPage { offset, data, checksum } => {
                    state.write_devmem_page(offset, data, checksum).ok_or(Errno::EBADMSG)?;
                    devmem_seen.insert_bytes(offset, 1);
                }
                Record::ZeroPages { offset, count } => {
                    let first = usize::try_from(offset / PAGE_SIZE).map_err(|_| Errno::EBADMSG)?;
                    let n = usize::try_from(count).map_err(|_| Errno::EBADMSG)?;
                    state.zero_devmem(first, n).ok_or(Errno::EBADMSG)?;
                    devmem_seen.insert_bytes(offset, count.saturating_mul(PAGE_SIZE));
                }
                Record::ScratchPage { offset, data } => {
                    let start = usize::try_from(offset).map_err(|_| Errno::EBADMSG)?;
                    let end = start.checked_add(data.len()).ok_or(Errno::EBADMSG)?;
                    scratch.get_mut(start..end).ok_or(Errno::EBADMSG)?.copy_from_slice(data);
                    scratch_seen.insert_bytes(offset, 1);
                }
            }
            Ok(())
        });
    }

    /// The staged parts, if the stream is complete and valid.
    fn validate(&self) -> Result<(Registers, PciConfigState, &[u8]), Errno> {
        self.decoder.finish()?;
        match (self.regs, self.pci) {
            (Some(r), Some(c)) if self.scratch_seen.is_full() && self.devmem_seen.is_full() => {
                Ok((r, c, &self.scratch))
            }
            _ => Err(Errno::EBADMSG),
        }
    }
}

impl DmaEngine {
    /// The migration state the device is in.
    pub fn migration_state(&self) -> MigState {
        self.mig.state
    }

    fn freeze(&self) -> Frozen {
        Frozen { regs: self.state.regs, pci: self.state.pci, scratch: self.shared_memory() }
    }

    /// RESUMING→STOP: commits the staged parts if the incoming stream is valid; otherwise the
    /// refusal becomes sticky.
    fn commit(&mut self) -> Result<(), ArcError> {
        let incoming = self.mig.incoming.as_mut().ok_or(ArcError::Refused(Errno::EINVAL))?;
        let (regs, pci, scratch) = match incoming.validate() {
            Ok(staged) => staged,
            Err(e) => {
                tracing::warn!(errno = %e, "dma-engine: refusing the incoming migration stream");
                incoming.decoder.fail(e);
                return Err(ArcError::Refused(e));
            }
        };
        if self.scratch.write_at(0, scratch).is_none() {
            return Err(ArcError::Refused(Errno::EIO));
        }
        self.state.regs = regs;
        self.state.pci = pci;
        self.mig.incoming = None;
        Ok(())
    }

    /// Ends any stream and dirty tracking and returns to RUNNING (DEVICE_RESET).
    pub(super) fn reset_migration(&mut self) {
        self.mig = Migration::default();
        self.state.stop_dirty_tracking();
    }

    /// What the device does on the direct arc `from`→`to` (checked to start from its state).
    fn take_arc(&mut self, from: MigState, to: MigState) -> Result<(), ArcError> {
        use MigState::{PreCopy, Resuming, Running, Stop, StopCopy};
        match (from, to) {
            (Running, Stop) | (Stop, Running) => {}
            (Running, PreCopy) => {
                self.state.start_dirty_tracking(true);
                self.mig.outgoing = Some(Outgoing::new(None));
            }
            (PreCopy, StopCopy) => {
                let frozen = self.freeze();
                self.mig.outgoing.as_mut().ok_or(ArcError::Refused(Errno::EINVAL))?.enter_stop_copy(frozen);
            }
            (Stop, StopCopy) => {
                self.state.start_dirty_tracking(true);
                self.mig.outgoing = Some(Outgoing::new(Some(self.freeze())));
            }
            (PreCopy, Running) | (StopCopy, Stop) => {
                self.state.stop_dirty_tracking();
                self.mig.outgoing = None;
            }
            (Stop, Resuming) => self.mig.incoming = Some(Incoming::new(self.state.devmem_size())),
            (Resuming, Stop) => self.commit()?,
            _ => return Err(ArcError::Refused(Errno::EINVAL)),
        }
        Ok(())
    }
}

impl Migratable for DmaEngine {
    fn supports_pre_copy(&self) -> bool {
        self.config.pre_copy
    }

    fn transition(&mut self, ctx: &mut DeviceContext<'_>, from: MigState, to: MigState) -> Result<(), ArcError> {
        use MigState::{PreCopy, Running};
        if from != self.mig.state || (!self.config.pre_copy && (from == PreCopy || to == PreCopy)) {
            return Err(ArcError::Refused(Errno::EINVAL));
        }
        if self.config.fail_arcs.contains(from, to) {
            return Err(ArcError::Refused(Errno::EIO));
        }
        // The background writer is quiesced before anything of a stopped device is taken (the
        // final registers), and before the arc returns.
        if !self.mig.is_frozen() && !matches!(to, Running | PreCopy) {
            self.park_background();
        }
        let taken = self.take_arc(from, to);
        if taken.is_ok() {
            tracing::debug!(?from, ?to, "dma-engine: migration arc");
            self.mig.state = to;
        }
        // Resumes it on an arc back to RUNNING, pauses it on one to a stopped state, and
        // resumes it where it was if the arc was refused.
        self.settle_background(ctx);
        taken
    }

    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let limit = self.config.fail_read_after;
        let out = match self.mig.state {
            MigState::PreCopy | MigState::StopCopy => self.mig.outgoing.as_mut().ok_or(Errno::EINVAL)?,
            _ => return Err(Errno::EINVAL),
        };
        if out.failed || limit.is_some_and(|l| out.read >= l) {
            out.failed = true;
            return Err(Errno::EIO);
        }
        let n = out.fill(&mut self.state, buf);
        out.read = out.read.saturating_add(n as u64);
        if limit.is_some_and(|l| out.read > l) {
            out.failed = true;
            return Err(Errno::EIO);
        }
        Ok(n)
    }

    fn read_data_to(
        &mut self,
        len: usize,
        scratch: &mut Vec<u8>,
        send: &mut dyn FnMut(&[&[u8]]) -> std::io::Result<()>,
    ) -> Result<usize, Errno> {
        let out = match self.mig.state {
            MigState::PreCopy | MigState::StopCopy => self.mig.outgoing.as_mut().ok_or(Errno::EINVAL)?,
            _ => return Err(Errno::EINVAL),
        };
        if out.failed || self.config.fail_read_after.is_some() {
            return Err(Errno::EIO); // injected failures come through read_data (data_ready is 0)
        }
        let n = out.fill_to(&mut self.state, len, scratch, send)?;
        out.read = out.read.saturating_add(n as u64);
        Ok(n)
    }

    fn data_ready(&self) -> u64 {
        match (self.mig.state, &self.mig.outgoing) {
            // An injected read failure must come as an error reply, not in the middle of one.
            _ if self.config.fail_read_after.is_some() => 0,
            (MigState::PreCopy | MigState::StopCopy, Some(out)) => out.ready(&self.state),
            _ => 0,
        }
    }

    fn write_data(&mut self, data: &[u8]) -> Result<(), Errno> {
        match (self.mig.state, self.mig.incoming.as_mut()) {
            (MigState::Resuming, Some(incoming)) => {
                incoming.feed(&mut self.state, data);
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }
}
