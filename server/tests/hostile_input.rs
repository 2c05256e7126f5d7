//! Hostile and malformed input over a real socket, against the real `vfu-server --device
//! dma-engine` binary.
//!
//! Each case of the table sends one bad message and proves two things: the error reply carries
//! exactly the expected errno (flags 0x21, the request's msg_id and cmd echoed), and the same
//! connection is still in step and served afterwards (DEVICE_GET_INFO and a 4-byte REGION_READ
//! of BAR0 succeed). The remaining tests prove that a NO_REPLY request is never answered, not
//! even when it fails, and that a device DMA outside the client's mappings is refused by the
//! server (the dma-engine reports DMA_FAULT) without touching guest memory or the session.
//!
//! Errnos follow the vfio-user specification where it names one, and
//! the server's handlers where it does not.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use pretty_assertions::assert_eq;
use rstest::rstest;
use vfu_server::wire::Command;

use common::{
    Msg, RawConn, ServerProcess, assert_still_serving, device_info_request, eventfd, memfd, msg, msg_raw,
    region_read_request, version_request,
};

const DEVICE: [&str; 2] = ["--device", "dma-engine"];
const HOSTILE_ID: u16 = 0x0bad;

// dma-engine facts (its module documentation).
const BAR0: u32 = 0;
const BAR2: u32 = 2;
const BAR0_SIZE: u64 = 4096;
const IRQ_MSIX: u32 = 2;
const IRQ_ERR: u32 = 3;
const REG_STATUS: u64 = 0x14;
const REG_SCRATCH: u64 = 0x18;
const REG_CMD_OP: u64 = 0x20;
const REG_CMD_GUEST_ADDR: u64 = 0x28;
const REG_CMD_LEN: u64 = 0x38;
const REG_CMD_SEED: u64 = 0x40;
const REG_DOORBELL: u64 = 0x48;
const REG_CMDS_COMPLETED: u64 = 0x50;
const REG_CMDS_FAILED: u64 = 0x58;
const REG_BYTES_TO_GUEST: u64 = 0x60;
const OP_FILL: u32 = 1;
const STATUS_OK: u32 = 1;
const STATUS_DMA_FAULT: u32 = 2;

// SET_IRQS flags (specification).
const DATA_NONE: u32 = 1;
const DATA_BOOL: u32 = 2;
const DATA_EVENTFD: u32 = 4;
const ACTION_MASK: u32 = 8;
const ACTION_UNMASK: u32 = 16;
const ACTION_TRIGGER: u32 = 32;

/// Where the case's DMA setup maps guest memory.
const MAPPED_IOVA: u64 = 0x10_0000;
const MAPPED_LEN: u64 = 0x1_0000;

fn dma_map(flags: u32, offset: u64, addr: u64, size: u64) -> Msg {
    msg(Command::DmaMap).u32(32).u32(flags).u64(offset).u64(addr).u64(size)
}

fn dma_unmap(flags: u32, addr: u64, size: u64) -> Msg {
    msg(Command::DmaUnmap).u32(24).u32(flags).u64(addr).u64(size)
}

fn region_info(argsz: u32, index: u32) -> Msg {
    msg(Command::DeviceGetRegionInfo).u32(argsz).u32(0).u32(index).u32(0).u64(0).u64(0)
}

fn irq_info(argsz: u32, index: u32) -> Msg {
    msg(Command::DeviceGetIrqInfo).u32(argsz).u32(0).u32(index).u32(0)
}

fn set_irqs(argsz: u32, flags: u32, index: u32, start: u32, count: u32) -> Msg {
    msg(Command::DeviceSetIrqs).u32(argsz).u32(flags).u32(index).u32(start).u32(count)
}

fn region_write(region: u32, offset: u64, count: u32, data: &[u8]) -> Msg {
    msg(Command::RegionWrite).u64(offset).u32(region).u32(count).bytes(data)
}

/// One REGION_WRITE_MULTI entry appended to `m`.
fn multi_entry(m: Msg, offset: u64, region: u32, count: u32) -> Msg {
    m.u64(offset).u32(region).u32(count).bytes(&[0x5a; 8])
}

/// The fds a case sends with its hostile message.
#[derive(Debug, Clone, Copy)]
enum Fds {
    None,
    Memfds(usize),
    Eventfds(usize),
    /// One more eventfd than the server's advertised `max_msg_fds`.
    MoreThanMax,
}

/// One row of the table.
#[derive(Debug)]
struct Case {
    /// Send on a connection that has not negotiated VERSION.
    fresh: bool,
    /// Valid requests sent first; each must succeed.
    setup: Vec<Msg>,
    hostile: Msg,
    fds: Fds,
    errno: Errno,
}

/// `hostile` on a negotiated connection must fail with `errno`.
fn refused(hostile: Msg, errno: Errno) -> Case {
    Case { fresh: false, setup: Vec::new(), hostile: hostile.id(HOSTILE_ID), fds: Fds::None, errno }
}

impl Case {
    /// Sends on a fresh connection, before VERSION.
    fn before_version(mut self) -> Self {
        self.fresh = true;
        self
    }

    /// Sends `m` (which must succeed) before the hostile message.
    fn after(mut self, m: Msg) -> Self {
        let id = 0x100 + self.setup.len() as u16;
        self.setup.push(m.id(id));
        self
    }

    /// Sends fds with the hostile message.
    fn with_fds(mut self, fds: Fds) -> Self {
        self.fds = fds;
        self
    }
}

fn make_fds(kind: Fds, caps: &serde_json::Value) -> Vec<OwnedFd> {
    match kind {
        Fds::None => Vec::new(),
        Fds::Memfds(n) => (0..n).map(|_| memfd(MAPPED_LEN)).collect(),
        Fds::Eventfds(n) => (0..n).map(|_| eventfd()).collect(),
        Fds::MoreThanMax => {
            let max = caps.get("max_msg_fds").and_then(serde_json::Value::as_u64).unwrap_or(1);
            (0..=max).map(|_| eventfd()).collect()
        }
    }
}

/// Sends `m` and asserts it succeeds.
fn expect_ok(conn: &RawConn, server: &ServerProcess, m: &Msg, what: &str) -> common::RawMsg {
    let reply = conn.request(m, &[]).unwrap_or_else(|e| panic!("{what}: no reply: {e}\n{}", server.context()));
    assert!(
        reply.is_ok_reply() && reply.msg_id == m.msg_id,
        "{what}: expected success, got {reply:?}\n{}",
        server.context()
    );
    reply
}

#[rstest]
// Framing.
#[case::msg_size_below_header_is_einval(refused(msg(Command::DeviceGetInfo).msg_size(8), Errno::EINVAL))]
#[case::msg_size_zero_is_einval(refused(msg(Command::RegionRead).msg_size(0), Errno::EINVAL))]
#[case::msg_size_above_limit_is_skipped_and_e2big(refused(
    region_write(BAR2, 0, 2 << 20, &vec![0xee; 2 << 20]),
    Errno::E2BIG
))]
#[case::command_0_is_enosys(refused(msg_raw(0).zeros(16), Errno::ENOSYS))]
#[case::retired_command_14_is_enosys(refused(msg_raw(14).zeros(16), Errno::ENOSYS))]
#[case::command_19_is_enosys(refused(msg_raw(19).zeros(16), Errno::ENOSYS))]
#[case::command_0xffff_is_enosys(refused(msg_raw(0xffff).zeros(16), Errno::ENOSYS))]
// Truncated fixed parts.
#[case::version_truncated_is_einval(refused(msg(Command::Version).u16(0), Errno::EINVAL).before_version())]
#[case::dma_map_truncated_is_einval(refused(dma_map(3, 0, MAPPED_IOVA, MAPPED_LEN).truncate(24), Errno::EINVAL))]
#[case::dma_unmap_truncated_is_einval(refused(dma_unmap(0, MAPPED_IOVA, MAPPED_LEN).truncate(16), Errno::EINVAL))]
#[case::device_get_info_truncated_is_einval(refused(device_info_request().truncate(12), Errno::EINVAL))]
#[case::region_info_truncated_is_einval(refused(region_info(32, BAR0).truncate(16), Errno::EINVAL))]
#[case::region_io_fds_truncated_is_einval(refused(
    msg(Command::DeviceGetRegionIoFds).u32(16).u32(0).u32(BAR0),
    Errno::EINVAL
))]
#[case::irq_info_truncated_is_einval(refused(irq_info(16, IRQ_MSIX).truncate(8), Errno::EINVAL))]
#[case::set_irqs_truncated_is_einval(refused(
    set_irqs(20, DATA_NONE | ACTION_TRIGGER, IRQ_MSIX, 0, 1).truncate(16),
    Errno::EINVAL
))]
#[case::region_read_truncated_is_einval(refused(region_read_request(BAR0, 0, 4).truncate(12), Errno::EINVAL))]
#[case::region_write_truncated_is_einval(refused(region_write(BAR0, REG_SCRATCH, 4, &[]).truncate(12), Errno::EINVAL))]
#[case::region_write_multi_truncated_is_einval(refused(msg(Command::RegionWriteMulti).u32(1), Errno::EINVAL))]
// argsz below the fixed part.
#[case::dma_map_argsz_too_small_is_einval(refused(
    msg(Command::DmaMap).u32(31).u32(3).u64(0).u64(MAPPED_IOVA).u64(MAPPED_LEN),
    Errno::EINVAL
))]
#[case::dma_unmap_argsz_too_small_is_einval(refused(
    msg(Command::DmaUnmap).u32(23).u32(0).u64(MAPPED_IOVA).u64(MAPPED_LEN),
    Errno::EINVAL
))]
#[case::device_get_info_argsz_too_small_is_einval(refused(
    msg(Command::DeviceGetInfo).u32(15).u32(0).u32(0).u32(0),
    Errno::EINVAL
))]
#[case::region_info_argsz_too_small_is_einval(refused(region_info(31, BAR0), Errno::EINVAL))]
#[case::region_io_fds_argsz_too_small_is_einval(refused(
    msg(Command::DeviceGetRegionIoFds).u32(15).u32(0).u32(BAR0).u32(0),
    Errno::EINVAL
))]
#[case::irq_info_argsz_too_small_is_einval(refused(irq_info(15, IRQ_MSIX), Errno::EINVAL))]
#[case::set_irqs_argsz_too_small_is_einval(refused(
    set_irqs(19, DATA_NONE | ACTION_TRIGGER, IRQ_MSIX, 0, 1),
    Errno::EINVAL
))]
// Fd counts.
#[case::dma_map_with_two_fds_is_einval(
    refused(dma_map(3, 0, MAPPED_IOVA, MAPPED_LEN), Errno::EINVAL).with_fds(Fds::Memfds(2))
)]
#[case::region_read_with_an_fd_is_einval(
    refused(region_read_request(BAR0, 0, 4), Errno::EINVAL).with_fds(Fds::Eventfds(1))
)]
#[case::set_irqs_with_fewer_fds_than_count_is_einval(
    refused(set_irqs(20, DATA_EVENTFD | ACTION_TRIGGER, IRQ_MSIX, 0, 2), Errno::EINVAL).with_fds(Fds::Eventfds(1))
)]
#[case::set_irqs_with_more_fds_than_count_is_einval(
    refused(set_irqs(20, DATA_EVENTFD | ACTION_TRIGGER, IRQ_MSIX, 0, 1), Errno::EINVAL).with_fds(Fds::Eventfds(2))
)]
#[case::set_irqs_fds_without_data_eventfd_is_einval(
    refused(set_irqs(20, DATA_NONE | ACTION_TRIGGER, IRQ_MSIX, 0, 1), Errno::EINVAL).with_fds(Fds::Eventfds(1))
)]
#[case::more_fds_than_max_msg_fds_is_einval(
    refused(set_irqs(20, DATA_EVENTFD | ACTION_TRIGGER, IRQ_MSIX, 0, 4), Errno::EINVAL).with_fds(Fds::MoreThanMax)
)]
#[case::version_with_an_fd_is_einval(
    refused(version_request(b"{}\0"), Errno::EINVAL).before_version().with_fds(Fds::Eventfds(1))
)]
// DMA_MAP.
#[case::dma_map_overlapping_is_eexist(
    refused(dma_map(3, 0, MAPPED_IOVA + MAPPED_LEN / 2, MAPPED_LEN), Errno::EEXIST)
        .after(dma_map(3, 0, MAPPED_IOVA, MAPPED_LEN))
)]
#[case::dma_map_inside_a_mapping_is_eexist(
    refused(dma_map(3, 0, MAPPED_IOVA + 0x1000, 0x1000), Errno::EEXIST).after(dma_map(3, 0, MAPPED_IOVA, MAPPED_LEN))
)]
#[case::dma_map_identical_remap_is_eexist(
    refused(dma_map(3, 0, MAPPED_IOVA, MAPPED_LEN), Errno::EEXIST).after(dma_map(3, 0, MAPPED_IOVA, MAPPED_LEN))
)]
#[case::dma_map_size_zero_is_einval(refused(dma_map(3, 0, MAPPED_IOVA, 0), Errno::EINVAL))]
#[case::dma_map_addr_plus_size_overflow_is_einval(refused(dma_map(3, 0, u64::MAX - 0xfff, 0x2000), Errno::EINVAL))]
#[case::dma_map_unknown_flag_is_einval(refused(dma_map(4, 0, MAPPED_IOVA, MAPPED_LEN), Errno::EINVAL))]
// DMA_UNMAP.
#[case::dma_unmap_not_exact_match_is_enoent(
    refused(dma_unmap(0, MAPPED_IOVA, MAPPED_LEN / 2), Errno::ENOENT).after(dma_map(3, 0, MAPPED_IOVA, MAPPED_LEN))
)]
#[case::dma_unmap_of_nothing_mapped_is_enoent(refused(dma_unmap(0, MAPPED_IOVA, MAPPED_LEN), Errno::ENOENT))]
#[case::dma_unmap_all_with_nonzero_addr_is_einval(refused(dma_unmap(2, MAPPED_IOVA, 0), Errno::EINVAL))]
#[case::dma_unmap_all_with_nonzero_size_is_einval(refused(dma_unmap(2, 0, MAPPED_LEN), Errno::EINVAL))]
#[case::dma_unmap_retired_dirty_bitmap_flag_is_einval(
    refused(dma_unmap(1, MAPPED_IOVA, MAPPED_LEN), Errno::EINVAL).after(dma_map(3, 0, MAPPED_IOVA, MAPPED_LEN))
)]
// Region access.
#[case::region_read_index_out_of_range_is_einval(refused(region_read_request(9, 0, 4), Errno::EINVAL))]
#[case::region_read_index_u32_max_is_einval(refused(region_read_request(u32::MAX, 0, 4), Errno::EINVAL))]
#[case::region_read_of_absent_bar_is_einval(refused(region_read_request(1, 0, 4), Errno::EINVAL))]
#[case::region_info_index_out_of_range_is_einval(refused(region_info(32, 9), Errno::EINVAL))]
#[case::region_read_beyond_region_end_is_einval(refused(region_read_request(BAR0, BAR0_SIZE - 2, 4), Errno::EINVAL))]
#[case::region_read_offset_plus_count_overflowing_u64_is_einval(refused(
    region_read_request(BAR0, u64::MAX - 1, 4),
    Errno::EINVAL
))]
#[case::region_read_count_above_max_data_xfer_size_is_einval(refused(
    region_read_request(BAR2, 0, (1 << 20) + 1),
    Errno::EINVAL
))]
#[case::region_write_shorter_than_count_is_einval(refused(region_write(BAR0, REG_SCRATCH, 8, &[1; 4]), Errno::EINVAL))]
#[case::region_write_longer_than_count_is_einval(refused(region_write(BAR0, REG_SCRATCH, 4, &[1; 8]), Errno::EINVAL))]
#[case::region_write_beyond_region_end_is_einval(refused(
    region_write(BAR0, BAR0_SIZE - 2, 4, &[1; 4]),
    Errno::EINVAL
))]
// IRQs.
#[case::irq_info_index_out_of_range_is_einval(refused(irq_info(16, 5), Errno::EINVAL))]
#[case::set_irqs_index_out_of_range_is_einval(refused(set_irqs(20, DATA_NONE | ACTION_TRIGGER, 5, 0, 1), Errno::EINVAL))]
#[case::set_irqs_two_data_bits_is_einval(refused(
    set_irqs(20, DATA_NONE | DATA_BOOL | ACTION_TRIGGER, IRQ_MSIX, 0, 1),
    Errno::EINVAL
))]
#[case::set_irqs_two_action_bits_is_einval(refused(
    set_irqs(20, DATA_NONE | ACTION_MASK | ACTION_UNMASK, IRQ_MSIX, 0, 1),
    Errno::EINVAL
))]
#[case::set_irqs_no_action_bit_is_einval(refused(set_irqs(20, DATA_NONE, IRQ_MSIX, 0, 1), Errno::EINVAL))]
#[case::set_irqs_no_data_bit_is_einval(refused(set_irqs(20, ACTION_TRIGGER, IRQ_MSIX, 0, 1), Errno::EINVAL))]
#[case::set_irqs_unknown_flag_is_einval(refused(
    set_irqs(20, DATA_NONE | ACTION_TRIGGER | 0x40, IRQ_MSIX, 0, 1),
    Errno::EINVAL
))]
#[case::set_irqs_vectors_past_the_end_is_einval(refused(
    set_irqs(20, DATA_NONE | ACTION_TRIGGER, IRQ_MSIX, 3, 2),
    Errno::EINVAL
))]
#[case::set_irqs_mask_on_err_index_is_einval(refused(
    set_irqs(20, DATA_NONE | ACTION_MASK, IRQ_ERR, 0, 1),
    Errno::EINVAL
))]
#[case::set_irqs_bool_without_its_bytes_is_einval(refused(
    set_irqs(22, DATA_BOOL | ACTION_TRIGGER, IRQ_MSIX, 0, 4).bytes(&[1, 1]),
    Errno::EINVAL
))]
// REGION_WRITE_MULTI.
#[case::region_write_multi_count_above_8_is_einval(refused(
    multi_entry(msg(Command::RegionWriteMulti).u64(1), REG_SCRATCH, BAR0, 9),
    Errno::EINVAL
))]
#[case::region_write_multi_wr_cnt_above_entries_is_einval(refused(
    multi_entry(msg(Command::RegionWriteMulti).u64(2), REG_SCRATCH, BAR0, 8),
    Errno::EINVAL
))]
#[case::region_write_multi_wr_cnt_below_entries_is_einval(refused(
    multi_entry(multi_entry(msg(Command::RegionWriteMulti).u64(1), REG_SCRATCH, BAR0, 8), REG_SCRATCH, BAR0, 8),
    Errno::EINVAL
))]
#[case::region_write_multi_wr_cnt_zero_is_einval(refused(msg(Command::RegionWriteMulti).u64(0), Errno::EINVAL))]
// Session.
#[case::second_version_is_einval(refused(version_request(b"{}\0"), Errno::EINVAL))]
#[case::request_before_version_is_einval(refused(device_info_request(), Errno::EINVAL).before_version())]
#[case::version_capability_of_wrong_type_is_einval(refused(
    version_request(b"{\"capabilities\":{\"max_msg_fds\":\"16\"}}\0"),
    Errno::EINVAL
).before_version())]
#[case::dma_read_sent_by_the_client_is_einval(refused(msg(Command::DmaRead).u64(0).u64(4), Errno::EINVAL))]
#[case::dma_write_sent_by_the_client_is_einval(refused(
    msg(Command::DmaWrite).u64(0).u64(4).u32(0),
    Errno::EINVAL
))]
fn hostile_message_gets_exact_errno_and_connection_survives(#[case] case: Case) {
    let mut server = ServerProcess::spawn(&DEVICE);
    let (conn, caps) = if case.fresh { (server.raw(), serde_json::Value::Null) } else { server.raw_negotiated() };
    for m in &case.setup {
        expect_ok(&conn, &server, m, "setup request");
    }

    let fds = make_fds(case.fds, &caps);
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    conn.send_msg(&case.hostile, &borrowed)
        .unwrap_or_else(|e| panic!("sending the hostile message failed: {e}\n{}", server.context()));
    drop(fds);
    let reply = conn.recv().unwrap_or_else(|e| panic!("no reply to the hostile message: {e}\n{}", server.context()));
    assert_eq!(
        (reply.msg_id, reply.cmd, reply.flags, reply.error_no),
        (case.hostile.msg_id, case.hostile.cmd, 0x21, case.errno as u32),
        "error reply (msg_id, cmd, flags, error_no) to {:?}; got {reply:?} ({:?} expected)\n{}",
        Msg { body: case.hostile.body.iter().copied().take(64).collect(), ..case.hostile.clone() },
        case.errno,
        server.context()
    );

    let mut conn = conn;
    if case.fresh {
        conn.negotiate().unwrap_or_else(|e| panic!("VERSION after the hostile message: {e}\n{}", server.context()));
    }
    assert_still_serving(&conn, &server, "the hostile message");
    server.assert_alive();
}

/// Sends `m` as NO_REPLY, then a valid request, and asserts the next message is that request's
/// reply: nothing at all was sent for `m`.
fn assert_no_reply_then_served(conn: &RawConn, server: &ServerProcess, m: &Msg, fds: &[OwnedFd], what: &str) {
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    conn.send_msg(m, &borrowed).unwrap_or_else(|e| panic!("{what}: sending failed: {e}\n{}", server.context()));
    let probe = device_info_request().id(0x600d);
    conn.send_msg(&probe, &[]).unwrap_or_else(|e| panic!("{what}: sending the probe failed: {e}"));
    let next = conn.recv().unwrap_or_else(|e| panic!("{what}: no reply to the probe: {e}\n{}", server.context()));
    assert_eq!(
        (next.msg_id, next.cmd, next.flags),
        (0x600d, Command::DeviceGetInfo as u16, 1),
        "{what}: the next message must be the probe's reply, got {next:?}\n{}",
        server.context()
    );
}

#[rstest]
#[case::failing_region_read(region_read_request(9, 0, 4), 0)]
#[case::unknown_command(msg_raw(0xffff).zeros(8), 0)]
#[case::argsz_too_small(irq_info(15, IRQ_MSIX), 0)]
#[case::msg_size_below_header(msg(Command::DeviceGetInfo).msg_size(4), 0)]
#[case::msg_size_above_limit(region_write(BAR2, 0, 2 << 20, &vec![0; 2 << 20]), 0)]
#[case::fd_on_region_read(region_read_request(BAR0, 0, 4), 1)]
#[case::dma_read_from_the_client(msg(Command::DmaRead).u64(0).u64(4), 0)]
fn no_reply_request_that_fails_gets_no_reply_at_all(#[case] hostile: Msg, #[case] eventfds: usize) {
    let mut server = ServerProcess::spawn(&DEVICE);
    let (conn, _) = server.raw_negotiated();
    let fds: Vec<_> = (0..eventfds).map(|_| eventfd()).collect();
    assert_no_reply_then_served(&conn, &server, &hostile.id(HOSTILE_ID).no_reply(), &fds, "failing NO_REPLY request");
    assert_still_serving(&conn, &server, "a failing NO_REPLY request");
    server.assert_alive();
}

#[test]
fn no_reply_request_is_executed_but_not_answered() {
    let mut server = ServerProcess::spawn(&DEVICE);
    let (conn, _) = server.raw_negotiated();
    let value = 0x0123_4567_89ab_cdefu64;
    let write = region_write(BAR0, REG_SCRATCH, 8, &value.to_le_bytes()).id(HOSTILE_ID).no_reply();
    assert_no_reply_then_served(&conn, &server, &write, &[], "successful NO_REPLY REGION_WRITE");
    let read = region_read_request(BAR0, REG_SCRATCH, 8);
    let reply = expect_ok(&conn, &server, &read, "reading SCRATCH back");
    assert_eq!(reply.u64_at(16), Some(value), "the NO_REPLY write must have been executed: {reply:?}");
    server.assert_alive();
}

#[test]
fn version_major_1_is_enotsup_then_the_connection_is_closed_and_the_next_client_served() {
    let mut server = ServerProcess::spawn(&DEVICE);
    let conn = server.raw();
    let hostile = msg(Command::Version).id(HOSTILE_ID).u16(1).u16(0).bytes(b"{}\0");
    let reply = conn.request(&hostile, &[]).unwrap_or_else(|e| panic!("no reply: {e}\n{}", server.context()));
    assert_eq!(
        (reply.msg_id, reply.cmd, reply.flags, reply.error_no),
        (HOSTILE_ID, 1, 0x21, Errno::ENOTSUP as u32),
        "VERSION 1.0 must be refused with ENOTSUP: {reply:?}\n{}",
        server.context()
    );
    // A server that cannot support the client's version closes the connection.
    match conn.recv() {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        other => panic!("expected the server to close the connection, got {other:?}\n{}", server.context()),
    }
    drop(conn);
    let (conn, _) = server.raw_negotiated();
    assert_still_serving(&conn, &server, "a refused VERSION on another connection");
    server.assert_alive();
}

#[test]
fn unsolicited_reply_from_the_client_is_dropped_silently() {
    let mut server = ServerProcess::spawn(&DEVICE);
    let (conn, _) = server.raw_negotiated();
    let stray = msg(Command::DmaRead).flags(1).u64(0).u64(4).zeros(4).id(0x4242);
    assert_no_reply_then_served(&conn, &server, &stray, &[], "a reply that answers nothing");
    server.assert_alive();
}

#[test]
fn region_info_without_room_for_caps_has_full_argsz_and_no_cap_offset() {
    let mut server = ServerProcess::spawn(&DEVICE);
    let (conn, _) = server.raw_negotiated();
    let reply = expect_ok(&conn, &server, &region_info(32, 4), "REGION_INFO of BAR4 with argsz 32");
    assert_eq!(reply.payload.len(), 32, "only the fixed part fits: {reply:?}");
    assert!(reply.fds.is_empty(), "the fd travels only with the capabilities: {reply:?}");
    assert_eq!(reply.u32_at(0), Some(80), "argsz is the full size needed (32 + 8 + 8 + 2 * 16): {reply:?}");
    assert_eq!(reply.u32_at(12), Some(0), "cap_offset must not point past the reply: {reply:?}");
    // As the reference server does (trace line 10: flags 7 for its sparse region 1).
    assert_eq!(reply.u32_at(4), Some(1 | 2 | 4), "no CAPS flag when the capabilities are left out: {reply:?}");
    server.assert_alive();
}

#[test]
fn region_info_with_room_for_caps_carries_sparse_areas_and_the_fd() {
    let mut server = ServerProcess::spawn(&DEVICE);
    let (conn, _) = server.raw_negotiated();
    let reply = expect_ok(&conn, &server, &region_info(80, 4), "REGION_INFO of BAR4 with argsz 80");
    let want: Vec<u8> = [
        &80u32.to_le_bytes()[..],
        &15u32.to_le_bytes(),       // READ | WRITE | MMAP | CAPS
        &4u32.to_le_bytes(),        // index
        &32u32.to_le_bytes(),       // cap_offset
        &0x1_0000u64.to_le_bytes(), // 64 KiB
        &0u64.to_le_bytes(),        // mmap offset
        &1u16.to_le_bytes(),        // sparse mmap
        &1u16.to_le_bytes(),        // version
        &0u32.to_le_bytes(),        // next
        &2u32.to_le_bytes(),        // nr_areas
        &0u32.to_le_bytes(),        // reserved
        &0u64.to_le_bytes(),
        &0x4000u64.to_le_bytes(),
        &0x8000u64.to_le_bytes(),
        &0x8000u64.to_le_bytes(),
    ]
    .concat();
    assert_eq!(reply.payload, want, "BAR4 region info with its sparse-mmap capability");
    assert_eq!(reply.fds.len(), 1, "the region's fd travels with the capabilities");
    server.assert_alive();
}

/// Programs a FILL of `len` bytes at `addr`, rings the doorbell and returns STATUS.
fn fill(client: &mut mock_qemu::Client, server: &ServerProcess, addr: u64, len: u64) -> u32 {
    let step = |r: Result<(), mock_qemu::ClientError>, what: &str| {
        r.unwrap_or_else(|e| panic!("{what} failed: {e:?}\n{}", server.context()));
    };
    step(client.write_u32(BAR0, REG_CMD_OP, OP_FILL), "writing CMD_OP");
    step(client.write_u64(BAR0, REG_CMD_GUEST_ADDR, addr), "writing CMD_GUEST_ADDR");
    step(client.write_u64(BAR0, REG_CMD_LEN, len), "writing CMD_LEN");
    step(client.write_u64(BAR0, REG_CMD_SEED, 7), "writing CMD_SEED");
    step(client.write_u32(BAR0, REG_DOORBELL, 1), "ringing DOORBELL");
    client.read_u32(BAR0, REG_STATUS).unwrap_or_else(|e| panic!("reading STATUS failed: {e:?}\n{}", server.context()))
}

#[test]
fn dma_outside_the_mappings_faults_and_the_server_keeps_serving() {
    let mut server = ServerProcess::spawn(&DEVICE);
    let mut client = server.connect();
    let guest = memfd(0x1000);
    client
        .dma_map(MAPPED_IOVA, 0x1000, 3, Some((guest.as_fd(), 0)))
        .unwrap_or_else(|e| panic!("DMA_MAP failed: {e:?}\n{}", server.context()));

    let read = |client: &mut mock_qemu::Client, reg: u64| {
        client.read_u64(BAR0, reg).unwrap_or_else(|e| panic!("reading {reg:#x} failed: {e:?}\n{}", server.context()))
    };
    assert_eq!(fill(&mut client, &server, 0x4000_0000, 0x100), STATUS_DMA_FAULT, "FILL of unmapped guest memory");
    assert_eq!(
        fill(&mut client, &server, MAPPED_IOVA + 0x800, 0x1000),
        STATUS_DMA_FAULT,
        "FILL running past the end of the mapping"
    );
    assert_eq!(fill(&mut client, &server, MAPPED_IOVA - 0x10, 0x20), STATUS_DMA_FAULT, "FILL starting before it");
    assert_eq!(read(&mut client, REG_CMDS_FAILED), 3);
    assert_eq!(read(&mut client, REG_BYTES_TO_GUEST), 0, "a faulting command moves nothing");
    let file = std::fs::File::from(guest.try_clone().expect("dup of the memfd"));
    let mut back = vec![0xffu8; 0x1000];
    file.read_exact_at(&mut back, 0).expect("reading the guest memfd");
    assert!(back.iter().all(|b| *b == 0), "a faulting DMA must not write any byte of the mapping");

    // The session goes on, and a DMA inside the mapping works.
    assert_eq!(fill(&mut client, &server, MAPPED_IOVA, 0x1000), STATUS_OK, "FILL of exactly the mapping");
    assert_eq!(read(&mut client, REG_CMDS_COMPLETED), 1);
    file.read_exact_at(&mut back, 0).expect("reading the guest memfd");
    assert!(back.iter().any(|b| *b != 0), "the FILL inside the mapping must have written guest memory");
    client.device_info().unwrap_or_else(|e| panic!("DEVICE_GET_INFO after the faults: {e:?}\n{}", server.context()));
    server.assert_alive();
}

#[test]
fn dma_to_an_unmapped_range_after_unmap_faults() {
    let mut server = ServerProcess::spawn(&DEVICE);
    let mut client = server.connect();
    let guest = memfd(0x1000);
    client.dma_map(MAPPED_IOVA, 0x1000, 3, Some((guest.as_fd(), 0))).expect("DMA_MAP");
    assert_eq!(fill(&mut client, &server, MAPPED_IOVA, 0x1000), STATUS_OK);
    client.dma_unmap(MAPPED_IOVA, 0x1000, 0).unwrap_or_else(|e| panic!("DMA_UNMAP: {e:?}\n{}", server.context()));
    assert_eq!(fill(&mut client, &server, MAPPED_IOVA, 0x1000), STATUS_DMA_FAULT, "FILL after DMA_UNMAP");
    server.assert_alive();
}

#[test]
fn server_exits_cleanly_on_sigterm_after_hostile_input() {
    let mut server = ServerProcess::spawn(&DEVICE);
    {
        let (conn, _) = server.raw_negotiated();
        conn.send_msg(&msg_raw(0xffff).zeros(3), &[]).expect("sending");
        conn.recv().unwrap_or_else(|e| panic!("no reply: {e}\n{}", server.context()));
    }
    let (status, killed) = server.terminate().expect("the server was running");
    assert!(!killed && status.success(), "vfu-server must exit 0 on SIGTERM, got {status}\n{}", server.context());
}
