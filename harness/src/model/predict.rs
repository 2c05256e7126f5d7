//! Each command's prediction, the shape its reply must have, and what it promises.

use nix::errno::Errno;
use vfu_server::wire::{
    Capabilities, Command, DEVICE_FLAGS_PCI, DMA_MAP_READ, DMA_MAP_WRITE, DMA_UNMAP_ALL, FEATURE_DMA_LOGGING_REPORT,
    FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MASK, FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION, FEATURE_PROBE, FEATURE_SET, IRQ_INFO_MASKABLE, IRQ_SET_ACTION_MASK_ALL, IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_MASK, IRQ_SET_DATA_NONE, MigState, PCI_CONFIG_REGION_INDEX,
    REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE, WRITE_MULTI_MAX_ENTRIES,
};

use super::msg::{Msg, op_name};
use super::{RegionSeen, ServerModel};
use crate::oracle::{Expected, SetPrediction};

const EINVAL: Expected = Expected::Errno(Errno::EINVAL);
/// The errnos a device may refuse an access inside a register region with: what a register
/// takes is the device's to say.
const DEVICE_REFUSALS: &[Errno] = &[Errno::EINVAL, Errno::EIO, Errno::EPERM];
/// A message above the server's size bound is refused as too big, or as invalid.
const TOO_BIG: &[Errno] = &[Errno::E2BIG, Errno::EINVAL];
/// The errnos a device may refuse migration data it cannot take with, mid-stream.
const STREAM_REFUSALS: &[Errno] = crate::oracle::DATA_REFUSALS;

/// What a request does when it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    None,
    Negotiate,
    Map(u64, u64, u32),
    Unmap(u64, u64),
    UnmapAll,
    Reset,
    SetState(u32, Box<SetPrediction>),
    LogStart { hint: u64, ranges: Vec<(u64, u64)> },
    LogStop,
    Report { iova: u64, length: u64, page_size: u64 },
    DataRead { ask: u32 },
    DataWrite,
    Learn,
}

/// A request's prediction.
#[derive(Debug, Clone)]
pub(super) struct Prediction {
    /// The operation ([`op_name`]).
    pub op: String,
    /// The state it was judged in.
    pub state: &'static str,
    /// The reply it must get.
    pub expected: Expected,
    /// What success does.
    pub effect: Effect,
}

fn region_access(m: &Msg) -> Option<(u64, u32, u32)> {
    Some((m.u64_at(0)?, m.u32_at(8)?, m.u32_at(12)?))
}

impl ServerModel {
    pub(super) fn predict(&self, m: &Msg) -> Prediction {
        let feature_flags = (m.cmd == Command::DeviceFeature as u16).then(|| m.u32_at(4)).flatten();
        let op = op_name(m.cmd, feature_flags);
        let (expected, effect) = self.expect(m);
        // After a reply the model did not admit, the state is unknown until the server says it
        // again: what the state decides is then not judged.
        let by_state = matches!(
            Command::from_u16(m.cmd),
            Some(Command::RegionRead | Command::RegionWrite | Command::RegionWriteMulti | Command::MigDataRead)
                | Some(Command::MigDataWrite)
        ) || matches!(effect, Effect::SetState(..));
        let expected = if self.mig_known || !by_state { expected } else { Expected::Either(ALL_REFUSALS) };
        let expected = if self.device_may_refuse(m, &effect) && expected.admits(None) {
            Expected::Either(ALL_REFUSALS)
        } else {
            expected
        };
        Prediction { op, state: self.state_name(), expected, effect }
    }

    /// Whether the outcome of `m` is left to the device (a model that only watches, or a device
    /// the harness does not know): taking an arc (its callback may fail), producing its data,
    /// resetting.
    fn device_may_refuse(&self, m: &Msg, effect: &Effect) -> bool {
        if !self.device_decides() {
            return false;
        }
        match effect {
            Effect::SetState(target, _) => self.state().is_none_or(|s| s as u32 != *target),
            Effect::DataRead { .. } | Effect::Reset => true,
            _ => m.cmd == Command::MigDataRead as u16,
        }
    }

    fn expect(&self, m: &Msg) -> (Expected, Effect) {
        let Some(cmd) = Command::from_u16(m.cmd).filter(|c| !matches!(c, Command::DmaRead | Command::DmaWrite)) else {
            return (Expected::Errno(Errno::ENOSYS), Effect::None);
        };
        if cmd == Command::Version {
            return self.version(m);
        }
        if !self.negotiated {
            return (EINVAL, Effect::None);
        }
        if m.size as u64 > u64::from(self.server_xfer) + 4096 && m.size > 64 * 1024 + 4096 {
            return (Expected::OneOf(TOO_BIG), Effect::None);
        }
        if m.nfds > 0 && !super::msg::takes_fds(m.cmd) {
            return (EINVAL, Effect::None);
        }
        match cmd {
            Command::DmaMap => self.dma_map(m),
            Command::DmaUnmap => self.dma_unmap(m),
            Command::DeviceGetInfo => (fixed(m, 16, 0), Effect::Learn),
            Command::DeviceGetRegionInfo => (self.indexed(m, 32, self.device.map(|d| d.1)), Effect::Learn),
            Command::DeviceGetRegionIoFds => {
                let want = self.indexed(m, 16, self.device.map(|d| d.1));
                let index = m.u32_at(8).unwrap_or(u32::MAX);
                if want == Expected::Ok && self.regions.get(&index).is_some_and(|r| r.size == 0) {
                    // A region the device does not implement: no ioeventfds, or no region.
                    return (Expected::Either(&[Errno::EINVAL]), Effect::Learn);
                }
                let extra = m.u32_at(4).unwrap_or(0) != 0 || m.u32_at(12).unwrap_or(0) != 0;
                (if want == Expected::Ok && extra { EINVAL } else { want }, Effect::Learn)
            }
            Command::DeviceGetIrqInfo => (self.indexed(m, 16, self.device.map(|d| d.2)), Effect::Learn),
            Command::DeviceSetIrqs => self.set_irqs(m),
            Command::RegionRead => match region_access(m) {
                Some((offset, region, count)) => (self.access(region, offset, count, false), Effect::None),
                None => (EINVAL, Effect::None),
            },
            Command::RegionWrite => match region_access(m) {
                Some((_, _, count)) if m.payload_len != 16 + count as usize => (EINVAL, Effect::None),
                Some((offset, region, count)) => (self.access(region, offset, count, true), Effect::None),
                None => (EINVAL, Effect::None),
            },
            // Not offered in VERSION: the client should not send it, and the server answers
            // it as it likes.
            Command::RegionWriteMulti if !self.write_multiple => (Expected::Either(ALL_REFUSALS), Effect::None),
            Command::RegionWriteMulti => (self.write_multi(m), Effect::None),
            Command::DeviceReset => (Expected::Ok, Effect::Reset),
            Command::DeviceFeature => self.feature(m),
            Command::MigDataRead => self.data_read(m),
            Command::MigDataWrite => self.data_write(m),
            Command::Version | Command::DmaRead | Command::DmaWrite => (Expected::Errno(Errno::ENOSYS), Effect::None),
        }
    }

    fn version(&self, m: &Msg) -> (Expected, Effect) {
        if self.negotiated || m.nfds > 0 || m.payload.len() < 4 {
            return (EINVAL, Effect::None);
        }
        if m.payload.first().zip(m.payload.get(1)).is_some_and(|(a, b)| *a != 0 || *b != 0) {
            return (Expected::Errno(Errno::ENOTSUP), Effect::None);
        }
        match Capabilities::parse(&m.payload[4..]) {
            Ok(_) => (Expected::Ok, Effect::Negotiate),
            Err(_) => (EINVAL, Effect::None),
        }
    }

    fn dma_map(&self, m: &Msg) -> (Expected, Effect) {
        let (Some(argsz), Some(flags), Some(addr), Some(size)) = (m.u32_at(0), m.u32_at(4), m.u64_at(16), m.u64_at(24))
        else {
            return (EINVAL, Effect::None);
        };
        if argsz < 32 || flags == 0 || flags & !(DMA_MAP_READ | DMA_MAP_WRITE) != 0 || m.nfds > 1 {
            return (EINVAL, Effect::None);
        }
        if size == 0 || addr.checked_add(size).is_none() {
            return (EINVAL, Effect::None);
        }
        if self.maps().any(|(a, l)| addr < a.saturating_add(l) && a < addr + size) {
            return (Expected::Errno(Errno::EEXIST), Effect::None);
        }
        // Past the count the server gave in VERSION; the specification names no errno.
        if self.maps().count() >= self.max_dma_maps as usize {
            return (Expected::Errno(Errno::ENOSPC), Effect::None);
        }
        if self.dirty.logging() && size > 1 << 40 {
            // Logging everything cannot take a mapping of any size: the server may refuse it.
            return (Expected::Either(&[Errno::ENOMEM, Errno::E2BIG]), Effect::Map(addr, size, flags));
        }
        (Expected::Ok, Effect::Map(addr, size, flags))
    }

    fn dma_unmap(&self, m: &Msg) -> (Expected, Effect) {
        let (Some(argsz), Some(flags), Some(addr), Some(size)) = (m.u32_at(0), m.u32_at(4), m.u64_at(8), m.u64_at(16))
        else {
            return (EINVAL, Effect::None);
        };
        if argsz < 24 || flags & !DMA_UNMAP_ALL != 0 {
            return (EINVAL, Effect::None);
        }
        if flags & DMA_UNMAP_ALL != 0 {
            return if addr != 0 || size != 0 { (EINVAL, Effect::None) } else { (Expected::Ok, Effect::UnmapAll) };
        }
        if self.maps().any(|m| m == (addr, size)) {
            (Expected::Ok, Effect::Unmap(addr, size))
        } else {
            (Expected::Errno(Errno::ENOENT), Effect::None)
        }
    }

    /// A query of index `payload[8..12]` below `bound` with a fixed part of `size` bytes.
    fn indexed(&self, m: &Msg, size: u32, bound: Option<u32>) -> Expected {
        match (fixed(m, size, 0), m.u32_at(8)) {
            (Expected::Ok, Some(index)) if bound.is_some_and(|b| index >= b) => EINVAL,
            (want, _) => want,
        }
    }

    fn set_irqs(&self, m: &Msg) -> (Expected, Effect) {
        self.set_irqs_as(m, false)
    }

    /// Whether a DEVICE_SET_IRQS the specification refuses is one a lenient server serves
    /// (see [`Deviation::SetIrqsLenient`](super::deviation::Deviation::SetIrqsLenient)): it
    /// would be admitted with its undefined flags ignored, every index maskable and a MASK or
    /// UNMASK taking (and ignoring) eventfds.
    pub(super) fn set_irqs_lenient(&self, m: &Msg) -> bool {
        m.cmd == Command::DeviceSetIrqs as u16 && self.set_irqs_as(m, true).0 == Expected::Ok
    }

    /// DEVICE_SET_IRQS's reply; `lenient`: as a server that ignores the flags the
    /// specification does not define and lets every index mask.
    fn set_irqs_as(&self, m: &Msg, lenient: bool) -> (Expected, Effect) {
        let (Some(argsz), Some(flags), Some(index), Some(start), Some(count)) =
            (m.u32_at(0), m.u32_at(4), m.u32_at(8), m.u32_at(12), m.u32_at(16))
        else {
            return (EINVAL, Effect::None);
        };
        let (data, action) = (flags & IRQ_SET_DATA_MASK, flags & IRQ_SET_ACTION_MASK_ALL);
        let effect = Effect::None;
        let flags = if lenient { flags & (IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL) } else { flags };
        let Some(&(vectors, irq_flags)) = self.irqs.get(&index) else {
            // Not asked about yet: the server knows its indexes, the model does not.
            let known_bad = argsz < 20 || self.device.is_some_and(|d| index >= d.2);
            return (if known_bad { EINVAL } else { Expected::Either(&[Errno::EINVAL]) }, effect);
        };
        let bad = argsz < 20
            || flags & !(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL) != 0
            || data.count_ones() != 1
            || action.count_ones() != 1
            || vectors == 0
            || start >= vectors
            || u64::from(start) + u64::from(count) > u64::from(vectors)
            || (count == 0 && (action != IRQ_SET_ACTION_TRIGGER || data != IRQ_SET_DATA_NONE || start != 0))
            || (matches!(index, 3 | 4) && (action != IRQ_SET_ACTION_TRIGGER || count > 1))
            || (action != IRQ_SET_ACTION_TRIGGER && irq_flags & IRQ_INFO_MASKABLE == 0 && !lenient)
            || (m.nfds > 0 && data != IRQ_SET_DATA_EVENTFD)
            || (data == IRQ_SET_DATA_BOOL && (argsz - 20 < count || m.payload_len < 20 + count as usize))
            || (data == IRQ_SET_DATA_EVENTFD
                && ((action != IRQ_SET_ACTION_TRIGGER && !lenient) || (m.nfds > 0 && m.nfds != count)));
        (if bad { EINVAL } else { Expected::Ok }, effect)
    }

    /// A region access: the region, the size bound, the state, the region's permissions and
    /// size as the server described them. Inside a region that is not plain memory (no MMAP
    /// flag) the device may refuse what it will.
    fn access(&self, region: u32, offset: u64, count: u32, write: bool) -> Expected {
        let known = self.device.map(|d| d.1);
        if known.is_some_and(|n| region >= n) || count > self.server_xfer {
            return EINVAL;
        }
        // Configuration space stays writable in every state; before DEVICE_GET_INFO the model
        // cannot tell whether the device is PCI.
        let pci_config = region == PCI_CONFIG_REGION_INDEX && self.device.is_none_or(|d| d.0 & DEVICE_FLAGS_PCI != 0);
        // What the state alone says, from the migration model's table.
        let by_state = match if write && !pci_config { self.mig.region_write() } else { self.mig.region_read() } {
            Expected::Errno(e) => Some(e),
            _ => None,
        };
        let Some(RegionSeen { size, flags }) = self.regions.get(&region).copied() else {
            // A region the client never asked about: the bounds are the server's to know.
            return match by_state {
                Some(Errno::EBUSY) if self.device_decides() => Expected::Either(PASSIVE_STOPPED_WRITE),
                Some(e) => Expected::OneOf(if e == Errno::EIO { &[Errno::EIO, Errno::EINVAL] } else { EBUSY_EINVAL }),
                None => Expected::Either(&[Errno::EINVAL]),
            };
        };
        let need = if write { REGION_FLAG_WRITE } else { REGION_FLAG_READ };
        let bounds = flags & need != 0 && offset.checked_add(u64::from(count)).is_some_and(|end| end <= size);
        match (by_state, bounds) {
            // Where a stopped device takes writes is left open by the specification.
            (Some(Errno::EBUSY), true) if self.device_decides() => Expected::Either(PASSIVE_STOPPED_WRITE),
            (Some(e), true) => Expected::Errno(e),
            // The specification does not order the two checks.
            (Some(Errno::EIO), false) => Expected::OneOf(&[Errno::EIO, Errno::EINVAL]),
            (Some(_), false) => Expected::OneOf(EBUSY_EINVAL),
            (None, false) => EINVAL,
            (None, true) if flags & REGION_FLAG_MMAP != 0 => Expected::Ok,
            (None, true) => Expected::Either(DEVICE_REFUSALS),
        }
    }

    fn write_multi(&self, m: &Msg) -> Expected {
        let Some(n) = m.u64_at(0) else { return EINVAL };
        if n == 0 || n > WRITE_MULTI_MAX_ENTRIES || m.payload_len as u64 != 8 + n * 24 {
            return EINVAL;
        }
        let mut want = Expected::Ok;
        for i in 0..n as usize {
            let at = 8 + i * 24;
            let (Some(offset), Some(region), Some(count)) = (m.u64_at(at), m.u32_at(at + 8), m.u32_at(at + 12)) else {
                // Past the decoded head: the entries the model cannot see are the device's.
                return Expected::Either(ALL_REFUSALS);
            };
            if count == 0 || count > 8 {
                return EINVAL;
            }
            let each = self.access(region, offset, count, true);
            if each != Expected::Ok {
                want = each;
            }
        }
        want
    }

    fn feature(&self, m: &Msg) -> (Expected, Effect) {
        let (expected, effect) = self.feature_of_a_migratable_device(m);
        // A server watched passively that did not advertise migration may not have it.
        let unsure = self.passive && self.migratable.is_none();
        (if unsure && expected == Expected::Ok { Expected::Either(&[Errno::ENOTTY]) } else { expected }, effect)
    }

    fn feature_of_a_migratable_device(&self, m: &Msg) -> (Expected, Effect) {
        let (Some(argsz), Some(flags)) = (m.u32_at(0), m.u32_at(4)) else { return (EINVAL, Effect::None) };
        let (feature, ops) = (flags & FEATURE_MASK, flags & !FEATURE_MASK);
        if argsz < 8 || ops & !(FEATURE_GET | FEATURE_SET | FEATURE_PROBE) != 0 {
            return (EINVAL, Effect::None);
        }
        if self.migratable == Some(false) {
            return (Expected::Errno(Errno::ENOTTY), Effect::None);
        }
        let supported = match feature {
            FEATURE_MIGRATION => FEATURE_GET | FEATURE_PROBE,
            FEATURE_MIG_DEVICE_STATE => FEATURE_GET | FEATURE_SET | FEATURE_PROBE,
            FEATURE_DMA_LOGGING_START | FEATURE_DMA_LOGGING_STOP => FEATURE_SET | FEATURE_PROBE,
            FEATURE_DMA_LOGGING_REPORT => FEATURE_GET | FEATURE_PROBE,
            _ => return (Expected::Errno(Errno::ENOTTY), Effect::None),
        };
        let get_and_set = ops & FEATURE_GET != 0 && ops & FEATURE_SET != 0;
        if ops == 0 || (get_and_set && ops & FEATURE_PROBE == 0) || ops & !supported != 0 {
            return (EINVAL, Effect::None);
        }
        if ops & FEATURE_PROBE != 0 {
            return (Expected::Ok, Effect::None);
        }
        let room = (argsz as usize).saturating_sub(8);
        let data = &m.payload[8.min(m.payload.len())..];
        let u64_at = |at: usize| m.u64_at(8 + at);
        match (feature, ops) {
            (FEATURE_MIGRATION | FEATURE_MIG_DEVICE_STATE, FEATURE_GET) => {
                (if room < 8 { EINVAL } else { Expected::Ok }, Effect::Learn)
            }
            (FEATURE_MIG_DEVICE_STATE, _) => match m.u32_at(8) {
                Some(target) if room >= 8 && data.len() >= 8 => {
                    let p = self.mig.predict_set(target);
                    (p.expected.clone(), Effect::SetState(target, Box::new(p)))
                }
                _ => (EINVAL, Effect::None),
            },
            (FEATURE_DMA_LOGGING_START, _) => {
                let (Some(hint), Some(n)) = (u64_at(0), m.u32_at(16)) else { return (EINVAL, Effect::None) };
                if n as usize > crate::oracle::dirty::MAX_RANGES {
                    return (Expected::Errno(Errno::E2BIG), Effect::None);
                }
                let need = 16 + 16 * n as usize;
                if room < need || data.len() < need {
                    return (EINVAL, Effect::None);
                }
                let ranges: Vec<(u64, u64)> =
                    (0..n as usize).filter_map(|i| Some((u64_at(16 + 16 * i)?, u64_at(24 + 16 * i)?))).collect();
                let want = self.dirty.predict_start(hint, &ranges);
                (want, Effect::LogStart { hint, ranges })
            }
            (FEATURE_DMA_LOGGING_STOP, _) => (Expected::Ok, Effect::LogStop),
            (FEATURE_DMA_LOGGING_REPORT, _) => {
                let (Some(iova), Some(length), Some(page_size)) = (u64_at(0), u64_at(8), u64_at(16)) else {
                    return (EINVAL, Effect::None);
                };
                if room < 24 {
                    return (EINVAL, Effect::None);
                }
                let mut want = self.dirty.predict_report(iova, length, page_size);
                let words = length.div_ceil(page_size.max(1)).div_ceil(64);
                if want != EINVAL && (room as u64 - 24) < words * 8 {
                    want = EINVAL;
                }
                (want, Effect::Report { iova, length, page_size })
            }
            _ => (EINVAL, Effect::None),
        }
    }

    fn data_read(&self, m: &Msg) -> (Expected, Effect) {
        let (Some(argsz), Some(size)) = (m.u32_at(0), m.u32_at(4)) else { return (EINVAL, Effect::None) };
        let by_state = self.mig.data_read();
        if by_state != Expected::Ok {
            return (by_state, Effect::None);
        }
        if size == 0 || size > self.xfer || (argsz as u64) < 8 + u64::from(size) {
            return (EINVAL, Effect::None);
        }
        let expected = if self.out_failed {
            Expected::Errno(Errno::EIO)
        } else {
            self.mig.data_read_at(self.out_offset, u64::from(size))
        };
        (expected, Effect::DataRead { ask: size })
    }

    fn data_write(&self, m: &Msg) -> (Expected, Effect) {
        let (Some(argsz), Some(size)) = (m.u32_at(0), m.u32_at(4)) else { return (EINVAL, Effect::None) };
        let by_state = self.mig.data_write();
        if by_state != Expected::Ok {
            return (by_state, Effect::None);
        }
        if size > self.server_xfer || m.payload_len != 8 + size as usize || (argsz as u64) < 8 + u64::from(size) {
            return (EINVAL, Effect::None);
        }
        // Whether the bytes fit the device's stream is the device's to judge.
        (Expected::Either(STREAM_REFUSALS), Effect::DataWrite)
    }

    /// Applies what a request did: `reply` is `None` for a NO_REPLY request predicted to
    /// succeed, `got` the errno of a refusal.
    pub(super) fn apply(&mut self, req: &Msg, p: &Prediction, reply: Option<&Msg>, got: Option<Errno>) {
        if let Effect::SetState(target, set) = &p.effect {
            if self.passive && got.is_none() && p.expected.admits(None) {
                self.passive_set(*target, set);
                return;
            }
            // A refusal leaves the device where the walk stopped; an unpredicted one is read
            // back by the next GET (the model stops knowing until then).
            let exact = matches!(set.expected, Expected::Ok | Expected::Errno(_));
            if set.expected.admits(got) && (exact || got.is_none()) {
                self.after_set(*target, set, got.is_none());
            } else if got.is_some() {
                // Refused where the model admitted several outcomes: where the walk stopped is
                // the server's to say, at the next GET.
                self.mig_known = false;
            }
            return;
        }
        if let Some(errno) = got {
            // A read that went past the planted mark failed the whole stream.
            if matches!(p.effect, Effect::DataRead { .. }) && errno == Errno::EIO && self.mig.fail_read_after.is_some()
            {
                self.out_failed = true;
            }
            return;
        }
        match &p.effect {
            Effect::Negotiate => {
                self.negotiated = true;
                let client = Capabilities::parse(req.payload.get(4..).unwrap_or_default()).unwrap_or_default();
                let server = reply.and_then(|r| Capabilities::parse(r.payload.get(4..).unwrap_or_default()).ok());
                let server = server.unwrap_or_default();
                self.server_xfer = server.max_data_xfer_size_or_default();
                self.xfer = self.server_xfer.min(client.max_data_xfer_size_or_default());
                // A server watched passively may migrate without saying so in VERSION.
                if !self.passive || server.migration.is_some() {
                    self.migratable = Some(server.migration.is_some());
                }
                self.write_multiple = server.write_multiple == Some(true);
                self.max_dma_maps = server.max_dma_maps.unwrap_or(super::DEFAULT_MAX_DMA_MAPS);
            }
            Effect::Map(addr, size, flags) => {
                self.map_flags.insert((*addr, *size), *flags);
                // An identical mapping made again (the reference accepts it) takes no new entry.
                let entry = Some((*addr, *size));
                if !self.table.contains(&entry) {
                    match self.table.iter_mut().find(|e| e.is_none()) {
                        Some(free) => *free = entry,
                        None => self.table.push(entry),
                    }
                }
                self.dirty.mapped(*addr, *size);
            }
            Effect::Unmap(addr, size) => {
                self.map_flags.remove(&(*addr, *size));
                for e in self.table.iter_mut().filter(|e| **e == Some((*addr, *size))) {
                    *e = None;
                }
                self.dirty.unmapped(*addr, *size);
            }
            Effect::UnmapAll => {
                self.map_flags.clear();
                for (addr, size) in std::mem::take(&mut self.table).into_iter().flatten() {
                    self.dirty.unmapped(addr, size);
                }
            }
            Effect::Reset => {
                if self.suspended.is_none() {
                    self.matrix.event(p.state, "device-reset");
                }
                self.mig.reset();
                self.mig_known = true;
                self.new_stream();
            }
            Effect::LogStart { hint, ranges } => {
                let chosen = reply.and_then(|r| r.u64_at(8)).unwrap_or(*hint);
                self.dirty.started(*hint, chosen, ranges);
            }
            Effect::LogStop => self.dirty.stopped(),
            Effect::DataRead { .. } => {
                self.out_offset += u64::from(reply.and_then(|r| r.u32_at(4)).unwrap_or(0));
            }
            Effect::DataWrite => self.mig.wrote_data(crate::oracle::ResumeData::Unknown),
            Effect::Report { .. } | Effect::Learn | Effect::None | Effect::SetState(..) => {}
        }
    }

    /// A passive model's successful SET: the device is at `target` wherever it was; data a
    /// RESUMING device holds is its own to judge.
    fn passive_set(&mut self, target: u32, set: &SetPrediction) {
        let Some(to) = MigState::from_u32(target) else { return };
        self.after_set(target, set, true);
        self.mig.state = to;
        self.mig_known = true;
        if to == MigState::Resuming {
            self.mig.resume = crate::oracle::ResumeData::Unknown;
        }
    }

    /// A new outgoing stream begins: nothing of it read, nothing failed.
    pub(super) fn new_stream(&mut self) {
        self.out_offset = 0;
        self.out_failed = false;
    }

    fn after_set(&mut self, target: u32, set: &SetPrediction, ok: bool) {
        for &(from, to) in &set.arcs {
            if (from, to) == (MigState::Running, MigState::PreCopy)
                || (from, to) == (MigState::Stop, MigState::StopCopy)
            {
                self.new_stream();
            }
        }
        self.mig.apply_set(target, set, ok);
    }
}

const EBUSY_EINVAL: &[Errno] = &[Errno::EBUSY, Errno::EINVAL];
/// What a server watched passively may answer a region write in a stopped state with.
const PASSIVE_STOPPED_WRITE: &[Errno] = &[Errno::EBUSY, Errno::EINVAL, Errno::EPERM, Errno::EIO];

/// A request whose fixed part is `size` bytes with `argsz` at `argsz_at`.
fn fixed(m: &Msg, size: u32, argsz_at: usize) -> Expected {
    match m.u32_at(argsz_at) {
        Some(argsz) if m.payload_len >= size as usize && argsz >= size => Expected::Ok,
        _ => EINVAL,
    }
}

/// Every errno a server may answer with where the model cannot know the outcome.
const ALL_REFUSALS: &[Errno] = &[
    Errno::EINVAL,
    Errno::EBUSY,
    Errno::EIO,
    Errno::EPERM,
    Errno::ENOENT,
    Errno::EEXIST,
    Errno::E2BIG,
    Errno::ENOTTY,
    Errno::EBADMSG,
    Errno::EPROTO,
    Errno::ENODATA,
    Errno::ENOSPC,
];
