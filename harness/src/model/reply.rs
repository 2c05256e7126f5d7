//! What a successful reply must look like, and what the server's answers teach the model
//! about its device (held to them from then on).

use vfu_server::wire::{
    Command, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_MASK, FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION, FEATURE_PROBE, FEATURE_SET, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY, MigState, REGION_FLAG_MMAP,
    REGION_FLAG_READ, REGION_FLAG_WRITE,
};

use super::deviation::Deviation;
use super::msg::Msg;
use super::predict::{Effect, Prediction};
use super::{RegionSeen, ServerModel};

impl ServerModel {
    /// What a successful reply must look like.
    pub(super) fn check_reply(&mut self, req: &Msg, p: &Prediction, reply: &Msg) -> Vec<String> {
        let mut problems = Vec::new();
        let cmd = Command::from_u16(req.cmd);
        let echo = |n: usize| reply.payload.get(..n) == req.payload.get(..n);
        match cmd {
            Some(Command::DmaUnmap)
                if !(reply.payload_len == 24 && reply.payload.get(4..) == req.payload.get(4..24)) =>
            {
                problems.push("the reply does not echo the request's flags, address and size".into());
            }
            Some(Command::RegionRead) => {
                let count = req.u32_at(12).unwrap_or(0) as usize;
                if reply.payload_len != 16 + count || !echo(16) {
                    problems.push(format!(
                        "the reply has {} payload bytes for a read of {count}; it must echo the 16-byte head and carry exactly the data",
                        reply.payload_len
                    ));
                }
            }
            Some(Command::RegionWrite) if !(reply.payload_len == 16 && echo(16)) => {
                problems.push("the reply must echo the 16-byte head of the write, without data".into());
            }
            Some(Command::RegionWriteMulti) if reply.payload_len != 8 || reply.u64_at(0) != req.u64_at(0) => {
                problems.push("the reply must carry the request's wr_cnt".into());
            }
            Some(Command::DeviceGetInfo) => self.learn_device(reply, &mut problems),
            Some(Command::DeviceGetRegionInfo) => self.learn_region(req, reply, &mut problems),
            Some(Command::DeviceGetIrqInfo) => self.learn_irq(req, reply, &mut problems),
            Some(Command::DeviceGetRegionIoFds) if reply.u32_at(8) != req.u32_at(8) => {
                problems.push("the reply names another region".into());
            }
            Some(Command::MigDataRead) => {
                let ask = req.u32_at(4).unwrap_or(0);
                match reply.u32_at(4) {
                    Some(size) if size > ask => problems.push(format!("{size} bytes returned for a read of {ask}")),
                    Some(size) if size < ask && reply.payload_len == 8 + ask as usize => {
                        self.deviation(
                            Deviation::MigDataReadPadded,
                            format!("size {size} padded to the {ask} bytes asked"),
                        );
                    }
                    Some(size) if reply.payload_len != 8 + size as usize => {
                        problems.push(format!("size {size} but {} data bytes", reply.payload_len.saturating_sub(8)))
                    }
                    Some(_) => {}
                    None => problems.push("the reply is shorter than its 8-byte head".into()),
                }
            }
            Some(Command::DeviceFeature) => self.check_feature(req, p, reply, &mut problems),
            _ => {}
        }
        problems
    }

    fn check_feature(&mut self, req: &Msg, p: &Prediction, reply: &Msg, problems: &mut Vec<String>) {
        let flags = req.u32_at(4).unwrap_or(0);
        if flags & FEATURE_PROBE != 0 || flags & FEATURE_SET != 0 && flags & FEATURE_MASK != FEATURE_DMA_LOGGING_START {
            return;
        }
        // A reply's argsz states the reply's own size, whatever room the request offered.
        if reply.u32_at(0).is_some_and(|argsz| argsz as usize != reply.payload_len) {
            problems.push(format!(
                "argsz {} but the reply has {} bytes",
                reply.u32_at(0).unwrap_or(0),
                reply.payload_len
            ));
        }
        match (flags & FEATURE_MASK, &p.effect) {
            (FEATURE_MIGRATION, _) => match reply.u64_at(8) {
                Some(f) if f & MIGRATION_STOP_COPY == 0 => {
                    problems.push(format!("migration flags {f:#x} lack STOP_COPY"))
                }
                Some(f) if !self.pre_copy_known => {
                    self.mig.pre_copy = f & MIGRATION_PRE_COPY != 0;
                    self.pre_copy_known = true;
                }
                Some(f) if (f & MIGRATION_PRE_COPY != 0) != self.mig.pre_copy => {
                    problems.push(format!("migration flags {f:#x} disagree with the device's PRE_COPY"));
                }
                Some(_) => {}
                None => problems.push("the reply has no migration flags".into()),
            },
            (FEATURE_MIG_DEVICE_STATE, _) => {
                let got = reply.u32_at(8).and_then(MigState::from_u32);
                match (got, self.state()) {
                    (Some(g), Some(want)) if g != want => {
                        problems.push(format!("the device is in {g:?}; every reply so far puts it in {want:?}"));
                        self.adopt_state(g);
                    }
                    (Some(g), None) => self.adopt_state(g),
                    (None, _) => problems.push("the reply has no valid device state".into()),
                    _ => {}
                }
            }
            (FEATURE_DMA_LOGGING_START, Effect::LogStart { hint, .. }) => match reply.u64_at(8) {
                Some(chosen) if !crate::oracle::DirtyModel::admits_page_size(*hint, chosen) => {
                    problems.push(format!("the server chose page size {chosen} for a hint of {hint}"));
                }
                Some(_) => {}
                None => problems.push("the reply has no page size".into()),
            },
            (FEATURE_DMA_LOGGING_REPORT, Effect::Report { length, page_size, .. }) => {
                let bits = length.div_ceil(*page_size);
                let words = bits.div_ceil(64) as usize;
                let bitmap = reply.payload.get(32..).unwrap_or_default();
                if bitmap.len() != words * 8 {
                    problems.push(format!("{} bitmap bytes for {bits} pages; {} expected", bitmap.len(), words * 8));
                } else if bits % 64 != 0 {
                    let last = bitmap
                        .get(bitmap.len() - 8..)
                        .map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap_or_default()));
                    let past = last >> (bits % 64);
                    if past != 0 {
                        self.deviation(
                            Deviation::ReportBitsPastLength,
                            format!("bits {past:#x} set past the {bits} pages of the range"),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn learn_device(&mut self, reply: &Msg, problems: &mut Vec<String>) {
        let (Some(flags), Some(regions), Some(irqs)) = (reply.u32_at(4), reply.u32_at(8), reply.u32_at(12)) else {
            problems.push("the reply is shorter than DEVICE_GET_INFO".into());
            return;
        };
        match self.device {
            Some(d) if d != (flags, regions, irqs) => {
                problems.push(format!(
                    "the device now has flags {flags:#x}, {regions} regions, {irqs} IRQ indexes; it said {d:?}"
                ));
            }
            _ => self.device = Some((flags, regions, irqs)),
        }
    }

    fn learn_region(&mut self, req: &Msg, reply: &Msg, problems: &mut Vec<String>) {
        let (Some(flags), Some(index), Some(size)) = (reply.u32_at(4), reply.u32_at(8), reply.u64_at(16)) else {
            problems.push("the reply is shorter than DEVICE_GET_REGION_INFO".into());
            return;
        };
        if Some(index) != req.u32_at(8) {
            problems.push(format!("the reply describes region {index}"));
            return;
        }
        // A region the client may map comes with its fd, in every reply with room for all of
        // it (a smaller one states the room needed in argsz and may leave the fd out).
        let fits = reply.u32_at(0).zip(req.u32_at(0)).is_some_and(|(need, room)| need <= room);
        if fits && flags & REGION_FLAG_MMAP != 0 && reply.nfds != 1 {
            problems
                .push(format!("region {index} can be mapped (MMAP) but the reply carries {} fds, not 1", reply.nfds));
        }
        // CAPS comes and goes with the room the request gave; the rest must not change.
        let seen = RegionSeen { size, flags: flags & (REGION_FLAG_READ | REGION_FLAG_WRITE | REGION_FLAG_MMAP) };
        match self.regions.get(&index) {
            Some(before) if *before != seen => {
                problems.push(format!("region {index} is now {seen:?}; it was {before:?}"))
            }
            _ => {
                self.regions.insert(index, seen);
            }
        }
    }

    fn learn_irq(&mut self, req: &Msg, reply: &Msg, problems: &mut Vec<String>) {
        let (Some(flags), Some(index), Some(count)) = (reply.u32_at(4), reply.u32_at(8), reply.u32_at(12)) else {
            problems.push("the reply is shorter than DEVICE_GET_IRQ_INFO".into());
            return;
        };
        if Some(index) != req.u32_at(8) {
            problems.push(format!("the reply describes IRQ index {index}"));
            return;
        }
        match self.irqs.get(&index) {
            Some(&(c, _)) if c != count => {
                problems.push(format!("IRQ index {index} now has {count} vectors; it had {c}"))
            }
            _ => {
                self.irqs.insert(index, (count, flags));
            }
        }
    }
}
