//! The model against hand-made conversations: what it admits, what it finds, what it keeps.

use nix::errno::Errno;
use pretty_assertions::assert_eq;
use rstest::rstest;
use vfu_server::wire::{
    Command, DMA_MAP_READ, DmaLoggingReport, DmaMap, DmaUnmap, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START,
    FEATURE_GET, FEATURE_MIG_DEVICE_STATE, FEATURE_SET, FLAG_ERROR, FLAG_NO_REPLY, MigState, REGION_FLAG_MMAP,
    REGION_FLAG_READ, REGION_FLAG_WRITE, RegionAccess, TYPE_REPLY,
};
use zerocopy::IntoBytes;

use super::*;

/// A conversation driven by hand: each request gets the reply the test gives it.
struct Talk {
    model: ServerModel,
    next_id: u16,
}

fn msg(dir: Dir, msg_id: u16, cmd: u16, flags: u32, error_no: u32, nfds: u32, payload: &[u8]) -> Msg {
    Msg {
        dir,
        msg_id,
        cmd,
        size: 16 + payload.len() as u32,
        flags,
        error_no,
        nfds,
        payload: payload.to_vec(),
        payload_len: payload.len(),
    }
}

impl Talk {
    /// A server with a device of 8 regions (region 2 plain memory of 64 KiB, region 0 registers)
    /// and 5 IRQ indexes, a client connected and negotiated.
    fn new() -> Self {
        Self::with_pre_copy(Some(true))
    }

    /// As [`Talk::new`], the device's PRE_COPY offer told to the model (or not).
    fn with_pre_copy(pre_copy: Option<bool>) -> Self {
        Self::started(pre_copy, None)
    }

    /// As [`Talk::new`], the device's outgoing streams planted to fail after `fail_read_after`.
    fn started(pre_copy: Option<bool>, fail_read_after: Option<u64>) -> Self {
        let mut t = Talk { model: ServerModel::new(), next_id: 0 };
        t.model.event(Event::ServerStarted {
            pre_copy,
            failing_arcs: Default::default(),
            fail_read_after,
            device_judges: false,
        });
        t.model.event(Event::Connected);
        let mut version = vec![0, 0, 2, 0];
        version.extend_from_slice(b"{\"capabilities\": {\"migration\": {\"pgsize\": 4096}}}\0");
        t.ok(Command::Version, &version, 0, &version);
        t.ok(Command::DeviceGetInfo, &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &{
            let mut r = [0u8; 16];
            r[0] = 16;
            r[4] = 3;
            r[8] = 9;
            r[12] = 5;
            r
        });
        for (index, size, flags) in [(0u32, 0x1000u64, 3u32), (2, 0x10000, 7)] {
            let mut req = [0u8; 32];
            req[0] = 32;
            req[8..12].copy_from_slice(&index.to_le_bytes());
            let mut reply = req;
            reply[4..8].copy_from_slice(&flags.to_le_bytes());
            reply[16..24].copy_from_slice(&size.to_le_bytes());
            t.ok(Command::DeviceGetRegionInfo, &req, 0, &reply);
        }
        assert_eq!(t.model.take_findings(), Vec::<String>::new(), "set-up");
        t
    }

    /// The same conversation, to answer one request two ways.
    fn fork(&self) -> Talk {
        Talk { model: self.model.clone(), next_id: self.next_id }
    }

    fn send(&mut self, cmd: u16, payload: &[u8], nfds: u32, flags: u32) -> u16 {
        self.next_id += 1;
        self.model.message(msg(Dir::ToServer, self.next_id, cmd, flags, 0, nfds, payload));
        self.next_id
    }

    fn ok(&mut self, cmd: Command, payload: &[u8], nfds: u32, reply: &[u8]) -> Vec<String> {
        let id = self.send(cmd as u16, payload, nfds, 0);
        self.model.message(msg(Dir::ToClient, id, cmd as u16, TYPE_REPLY, 0, 0, reply));
        self.model.take_findings()
    }

    fn err(&mut self, cmd: Command, payload: &[u8], errno: Errno) -> Vec<String> {
        let id = self.send(cmd as u16, payload, 0, 0);
        self.model.message(msg(Dir::ToClient, id, cmd as u16, TYPE_REPLY | FLAG_ERROR, errno as u32, 0, &[]));
        self.model.take_findings()
    }

    fn set_state(&mut self, state: MigState) -> Vec<String> {
        let p = set_payload(state);
        self.ok(Command::DeviceFeature, &p, 0, &p)
    }
}

fn set_payload(state: MigState) -> Vec<u8> {
    let mut p = vec![16, 0, 0, 0];
    p.extend_from_slice(&(FEATURE_SET | FEATURE_MIG_DEVICE_STATE).to_le_bytes());
    p.extend_from_slice(&(state as u32).to_le_bytes());
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    p
}

fn region_write(region: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut p = RegionAccess { offset, region, count: data.len() as u32 }.as_bytes().to_vec();
    p.extend_from_slice(data);
    p
}

fn map(addr: u64, size: u64) -> Vec<u8> {
    DmaMap { argsz: 32, flags: 3, offset: 0, addr, size }.as_bytes().to_vec()
}

#[rstest]
#[case::running(MigState::Running, None)]
#[case::pre_copy(MigState::PreCopy, None)]
#[case::stop(MigState::Stop, Some(Errno::EBUSY))]
#[case::stop_copy(MigState::StopCopy, Some(Errno::EBUSY))]
#[case::resuming(MigState::Resuming, Some(Errno::EBUSY))]
fn a_region_write_is_served_only_where_the_device_runs(#[case] state: MigState, #[case] refused: Option<Errno>) {
    let mut t = Talk::new();
    assert_eq!(t.set_state(state), Vec::<String>::new());
    let write = region_write(2, 0x100, &[1, 2, 3, 4]);
    let echo = &write[..16];
    let mut other = t.fork();
    let (right, wrong) = match refused {
        None => (t.ok(Command::RegionWrite, &write, 0, echo), other.err(Command::RegionWrite, &write, Errno::EBUSY)),
        Some(e) => (t.err(Command::RegionWrite, &write, e), other.ok(Command::RegionWrite, &write, 0, echo)),
    };
    assert_eq!(right, Vec::<String>::new());
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    let outcome = refused.map_or("ok".to_string(), |e| format!("{e:?}"));
    let cell = format!("{} | REGION_WRITE | {outcome}", crate::run::state_name(state));
    assert_eq!(t.model.matrix.commands.get(&cell), Some(&1));
}

#[test]
fn stop_copy_to_pre_copy_is_refused_and_a_server_that_accepts_it_is_a_finding() {
    let mut t = Talk::new();
    assert!(t.set_state(MigState::StopCopy).is_empty());
    let found = t.set_state(MigState::PreCopy);
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("predicts EINVAL"), "{found:?}");
}

#[test]
fn a_stream_that_failed_past_its_mark_fails_every_later_read_until_a_new_stream() {
    let mut t = Talk::started(Some(true), Some(100));
    assert!(t.set_state(MigState::StopCopy).is_empty());
    let read = |size: u32| [8u32.saturating_add(size).to_le_bytes(), size.to_le_bytes()].concat();
    let mut got = read(64);
    got[4..8].copy_from_slice(&64u32.to_le_bytes());
    got.extend_from_slice(&[0; 64]);
    assert!(t.ok(Command::MigDataRead, &read(64), 0, &got).is_empty());
    // 64 + 64 passes the mark: EIO is admitted, and the stream is failed from then on.
    assert!(t.err(Command::MigDataRead, &read(64), Errno::EIO).is_empty());
    let mut later = t.fork();
    let mut short = read(8)[..8].to_vec();
    short[4..8].copy_from_slice(&8u32.to_le_bytes());
    short.extend_from_slice(&[0; 8]);
    let found = later.ok(Command::MigDataRead, &read(8), 0, &short);
    assert_eq!(found.len(), 1, "a read below the mark of a failed stream must fail: {found:?}");
    assert!(t.err(Command::MigDataRead, &read(8), Errno::EIO).is_empty());
    // STOP, then STOP_COPY again: a new stream, read from its start.
    assert!(t.set_state(MigState::Stop).is_empty());
    assert!(t.set_state(MigState::StopCopy).is_empty());
    assert!(t.ok(Command::MigDataRead, &read(8), 0, &short).is_empty());
}

#[test]
fn a_state_read_back_must_be_where_the_walk_left_the_device() {
    let mut t = Talk::new();
    assert!(t.set_state(MigState::Resuming).is_empty());
    let mut get = vec![16, 0, 0, 0];
    get.extend_from_slice(&(FEATURE_GET | FEATURE_MIG_DEVICE_STATE).to_le_bytes());
    get.extend_from_slice(&[0; 8]);
    let mut reply = get.clone();
    reply[8..12].copy_from_slice(&(MigState::Running as u32).to_le_bytes());
    let found = t.ok(Command::DeviceFeature, &get, 0, &reply);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("Resuming"), "{found:?}");
}

#[test]
fn mappings_are_exclusive_and_unmapped_exactly() {
    let mut t = Talk::new();
    assert!(t.ok(Command::DmaMap, &map(0x1000, 0x2000), 1, &[]).is_empty());
    assert!(t.err(Command::DmaMap, &map(0x2000, 0x1000), Errno::EEXIST).is_empty());
    assert!(t.ok(Command::DmaMap, &map(0x1000, 0x2000), 1, &[]).is_empty());
    let seen = t.model.take_deviations();
    assert_eq!(seen.len(), 1, "an identical remap must be EEXIST; accepting it is the reference's deviation");
    assert_eq!(seen[0].deviation, super::deviation::Deviation::DmaRemapAccepted);
    let unmap = DmaUnmap { argsz: 24, flags: 0, addr: 0x1000, size: 0x1000 };
    assert!(t.err(Command::DmaUnmap, unmap.as_bytes(), Errno::ENOENT).is_empty());
    let exact = DmaUnmap { size: 0x2000, ..unmap };
    assert!(t.ok(Command::DmaUnmap, exact.as_bytes(), 0, exact.as_bytes()).is_empty());
    assert!(t.model.mappings().is_empty());
}

#[test]
fn a_new_mapping_takes_the_first_entry_an_unmap_left_free() {
    let mut t = Talk::new();
    for at in [0x1000, 0x3000, 0x5000] {
        assert!(t.ok(Command::DmaMap, &map(at, 0x1000), 1, &[]).is_empty());
    }
    let unmap = DmaUnmap { argsz: 24, flags: 0, addr: 0x1000, size: 0x1000 };
    assert!(t.ok(Command::DmaUnmap, unmap.as_bytes(), 0, unmap.as_bytes()).is_empty());
    assert_eq!(t.model.map_table(), [None, Some((0x3000, 0x1000)), Some((0x5000, 0x1000))]);
    assert!(t.ok(Command::DmaMap, &map(0x8000, 0x1000), 1, &[]).is_empty());
    assert_eq!(t.model.map_table()[0], Some((0x8000, 0x1000)));
    t.model.event(Event::Disconnected);
    assert!(t.model.map_table().is_empty());
}

#[test]
fn a_disconnect_drops_what_the_client_set_up_and_leaves_the_device_running() {
    let mut t = Talk::new();
    assert!(t.ok(Command::DmaMap, &map(0, 0x10000), 1, &[]).is_empty());
    assert!(t.set_state(MigState::StopCopy).is_empty());
    t.model.event(Event::Disconnected);
    assert_eq!((t.model.mappings().len(), t.model.state()), (0, Some(MigState::Running)));
    assert_eq!(t.model.matrix.events.get("STOP_COPY | client-disconnect"), Some(&1));
}

#[test]
fn report_bits_past_the_range_are_the_references_known_deviation() {
    let mut t = Talk::new();
    assert!(t.ok(Command::DmaMap, &map(0, 0x100000), 1, &[]).is_empty());
    let mut start = vec![8 + 16, 0, 0, 0];
    start.extend_from_slice(&(FEATURE_SET | FEATURE_DMA_LOGGING_START).to_le_bytes());
    start.extend_from_slice(&[0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(t.ok(Command::DeviceFeature, &start, 0, &start).is_empty());
    let mut report = vec![0u8; 8];
    let room = 8 + 24 + 8;
    report[..4].copy_from_slice(&(room as u32).to_le_bytes());
    report[4..8].copy_from_slice(&(FEATURE_GET | FEATURE_DMA_LOGGING_REPORT).to_le_bytes());
    report.extend_from_slice(DmaLoggingReport { iova: 0, length: 10 * 4096, page_size: 4096 }.as_bytes());
    let mut reply = report.clone();
    reply.extend_from_slice(&(1u64 << 10).to_le_bytes());
    assert!(t.ok(Command::DeviceFeature, &report, 0, &reply).is_empty());
    let seen = t.model.take_deviations();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].deviation, super::deviation::Deviation::ReportBitsPastLength);
    assert!(seen[0].text.contains("past the 10 pages"), "{seen:?}");
}

#[test]
fn an_unknown_command_is_enosys_and_a_no_reply_request_is_never_answered() {
    let mut t = Talk::new();
    t.next_id += 1;
    let id = t.next_id;
    t.model.message(msg(Dir::ToServer, id, 99, 0, 0, 0, &[]));
    t.model.message(msg(Dir::ToClient, id, 99, TYPE_REPLY | FLAG_ERROR, Errno::ENOSYS as u32, 0, &[]));
    assert!(t.model.take_findings().is_empty());
    let read = RegionAccess { offset: 0, region: 2, count: 4 }.as_bytes().to_vec();
    let id = t.send(Command::RegionRead as u16, &read, 0, FLAG_NO_REPLY);
    t.model.message(msg(Dir::ToClient, id, Command::RegionRead as u16, TYPE_REPLY, 0, 0, &[0; 20]));
    assert_eq!(t.model.take_findings().len(), 1);
}

#[test]
fn the_server_may_dma_only_into_mapped_memory() {
    let mut t = Talk::new();
    assert!(t.ok(Command::DmaMap, &map(0x10000, 0x1000), 0, &[]).is_empty());
    let inside = [0x10000u64.to_le_bytes(), 16u64.to_le_bytes()].concat();
    t.model.message(msg(Dir::ToClient, 1, Command::DmaRead as u16, 0, 0, 0, &inside));
    assert!(t.model.take_findings().is_empty());
    let outside = [0x10ff8u64.to_le_bytes(), 16u64.to_le_bytes()].concat();
    t.model.message(msg(Dir::ToClient, 2, Command::DmaRead as u16, 0, 0, 0, &outside));
    assert_eq!(t.model.take_findings().len(), 1);
}

#[test]
fn the_server_may_not_dma_write_into_a_mapping_without_write() {
    let mut t = Talk::new();
    let read_only = DmaMap { argsz: 32, flags: DMA_MAP_READ, offset: 0, addr: 0x10000, size: 0x1000 };
    assert!(t.ok(Command::DmaMap, read_only.as_bytes(), 0, &[]).is_empty());
    let access = [0x10000u64.to_le_bytes(), 16u64.to_le_bytes()].concat();
    t.model.message(msg(Dir::ToClient, 1, Command::DmaRead as u16, 0, 0, 0, &access));
    assert!(t.model.take_findings().is_empty());
    let write = [access.clone(), vec![0; 16]].concat();
    t.model.message(msg(Dir::ToClient, 2, Command::DmaWrite as u16, 0, 0, 0, &write));
    let found = t.model.take_findings();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("without WRITE"), "{found:?}");
}

#[test]
fn a_mappable_region_comes_with_its_fd_when_the_reply_has_room() {
    let mut req = [0u8; 32];
    req[0] = 32;
    req[8] = 1;
    let mut reply = req;
    reply[4] = (REGION_FLAG_READ | REGION_FLAG_WRITE | REGION_FLAG_MMAP) as u8;
    reply[16..24].copy_from_slice(&0x3000u64.to_le_bytes());
    for (nfds, findings) in [(1, 0), (0, 1)] {
        let mut t = Talk::new();
        let id = t.send(Command::DeviceGetRegionInfo as u16, &req, 0, 0);
        t.model.message(msg(Dir::ToClient, id, Command::DeviceGetRegionInfo as u16, TYPE_REPLY, 0, nfds, &reply));
        let found = t.model.take_findings();
        assert_eq!(found.len(), findings, "{nfds} fds: {found:?}");
    }
    // A reply without room for the whole description may leave the fd out.
    let mut t = Talk::new();
    let mut small = reply;
    small[0] = 48;
    let id = t.send(Command::DeviceGetRegionInfo as u16, &req, 0, 0);
    t.model.message(msg(Dir::ToClient, id, Command::DeviceGetRegionInfo as u16, TYPE_REPLY, 0, 0, &small));
    assert!(t.model.take_findings().is_empty());
}

#[test]
fn damaged_messages_are_not_judged_until_the_next_connection() {
    let mut t = Talk::new();
    t.model.event(Event::Damaged);
    assert_eq!(t.set_state(MigState::StopCopy).len(), 0);
    let write = region_write(2, 0, &[1]);
    assert!(t.ok(Command::RegionWrite, &write, 0, &write[..16]).is_empty());
    t.model.event(Event::Disconnected);
    t.model.event(Event::Connected);
    assert_eq!(t.model.suspended(), None);
    assert_eq!(t.model.state(), Some(MigState::Running));
}

#[test]
fn a_feature_reply_states_its_own_size_whatever_room_was_offered() {
    let mut t = Talk::new();
    let mut get = vec![8 + 64, 0, 0, 0];
    get.extend_from_slice(&(FEATURE_GET | vfu_server::wire::FEATURE_MIGRATION).to_le_bytes());
    get.extend_from_slice(&[0; 64]);
    let mut reply = vec![16, 0, 0, 0];
    reply.extend_from_slice(&get[4..8]);
    reply.extend_from_slice(&5u64.to_le_bytes());
    assert!(t.ok(Command::DeviceFeature, &get, 0, &reply).is_empty());
    reply[0] = 8 + 64;
    let found = t.ok(Command::DeviceFeature, &get, 0, &reply);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("argsz 72"), "{found:?}");
}

/// A MIGRATION GET and the reply with `flags`.
fn migration_flags(t: &mut Talk, flags: u64) -> Vec<String> {
    let mut get = vec![16, 0, 0, 0];
    get.extend_from_slice(&(FEATURE_GET | vfu_server::wire::FEATURE_MIGRATION).to_le_bytes());
    get.extend_from_slice(&[0; 8]);
    let mut reply = get[..8].to_vec();
    reply.extend_from_slice(&flags.to_le_bytes());
    t.ok(Command::DeviceFeature, &get, 0, &reply)
}

#[test]
fn a_device_the_harness_was_not_told_of_teaches_its_pre_copy_offer_by_its_first_flags() {
    let mut t = Talk::with_pre_copy(None);
    // STOP_COPY only (1): believed, and held to afterwards.
    assert!(migration_flags(&mut t, 1).is_empty());
    let found = migration_flags(&mut t, 5);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("PRE_COPY"), "{found:?}");
    // PRE_COPY was not offered: a SET to it must be refused.
    assert_eq!(t.set_state(MigState::PreCopy).len(), 1);
}

#[test]
fn a_device_the_harness_started_is_held_to_its_pre_copy_offer_from_the_first_flags() {
    let mut t = Talk::new();
    let found = migration_flags(&mut t, 1);
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn a_region_access_with_an_fd_served_anyway_is_the_unexpected_fds_deviation() {
    let mut t = Talk::new();
    let read = RegionAccess { offset: 0, region: 2, count: 4 }.as_bytes().to_vec();
    let mut reply = read.clone();
    reply.extend_from_slice(&[0; 4]);
    assert!(t.ok(Command::RegionRead, &read, 1, &reply).is_empty());
    let seen = t.model.take_deviations();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].deviation, super::deviation::Deviation::UnexpectedFdsAccepted);
}

#[test]
fn a_refusal_with_another_errno_is_a_deviation_not_a_violation() {
    let mut t = Talk::new();
    assert!(t.ok(Command::DmaMap, &map(0x1000, 0x2000), 1, &[]).is_empty());
    assert!(t.err(Command::DmaMap, &map(0x2000, 0x1000), Errno::EINVAL).is_empty());
    let seen = t.model.take_deviations();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].deviation, super::deviation::Deviation::OtherErrno);
    assert!(seen[0].text.contains("predicts EEXIST"), "{seen:?}");
    // Accepting what the specification refuses is still a violation.
    assert_eq!(t.ok(Command::DmaMap, &map(0x2000, 0x1000), 1, &[]).len(), 1);
}

#[test]
fn region_write_multi_not_offered_in_version_is_answered_as_the_server_likes() {
    let mut t = Talk::new();
    let mut multi = 1u64.to_le_bytes().to_vec();
    multi.extend_from_slice(&0u64.to_le_bytes());
    multi.extend_from_slice(&2u32.to_le_bytes());
    multi.extend_from_slice(&4u32.to_le_bytes());
    multi.extend_from_slice(&[0; 8]);
    assert!(t.err(Command::RegionWriteMulti, &multi, Errno::EINVAL).is_empty());
    assert!(t.model.take_deviations().is_empty());
}

mod passive;

#[test]
fn set_irqs_served_with_an_undefined_flag_an_unmaskable_mask_or_a_mask_with_eventfds_is_a_known_deviation_and_no_more()
{
    use vfu_server::wire::{
        IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE,
    };
    let mut t = Talk::new();
    // INTx: one vector, eventfds, not MASKABLE.
    let info = |flags: u32| [16u32, flags, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    assert!(t.ok(Command::DeviceGetIrqInfo, &info(0), 0, &info(1)).is_empty());
    let set = |flags: u32| [20u32, flags, 0, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let lenient_ones = [
        (IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, 0),
        (IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER | 1 << 6, 0),
        (IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_UNMASK, 1),
    ];
    for (lenient, nfds) in lenient_ones {
        assert!(t.ok(Command::DeviceSetIrqs, &set(lenient), nfds, &[]).is_empty(), "{lenient:#x}");
        let seen = t.model.take_deviations();
        assert_eq!(seen.len(), 1, "{lenient:#x}");
        assert_eq!(seen[0].deviation, super::deviation::Deviation::SetIrqsLenient);
    }
    // Two actions: no lenient reading admits it.
    let found =
        t.ok(Command::DeviceSetIrqs, &set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK), 0, &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(t.model.take_deviations().is_empty());
    // Two eventfds for one vector: not even a lenient server takes them.
    let found = t.ok(Command::DeviceSetIrqs, &set(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_MASK), 2, &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(t.model.take_deviations().is_empty());
}
