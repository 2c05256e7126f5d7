//! What each command's request and reply show, as tables.

use pretty_assertions::assert_eq;
use rstest::rstest;
use vfu_server::wire::Command::*;

use super::*;

const VERSION_JSON: &[u8] = b"{ \"capabilities\": { \"max_msg_fds\": 8, \"migration\": { \"pgsize\": 4096 } } }\0";

#[rstest]
#[case::version(req(1, Version, p().u16(0).u16(2).bytes(VERSION_JSON)),
    r#"VERSION 0.2 {"capabilities":{"max_msg_fds":8,"migration":{"pgsize":4096}}}"#)]
#[case::version_of_the_wrong_type(req(1, Version, p().u16(0).u16(2).bytes(b"{\"capabilities\":{\"max_msg_fds\":\"8\"}}\0")),
    r#"VERSION 0.2 {"capabilities":{"max_msg_fds":"8"}} (refused: invalid type: string "8", expected u32 at line 1 column 34)"#)]
#[case::dma_map(req(2, DmaMap, p().u32(32).u32(3).u64(0x1000).u64(0x10_0000).u64(0x2000)).fds(1),
    "DMA_MAP addr=0x100000 size=0x2000 flags=READ|WRITE offset=0x1000 fds=1")]
#[case::dma_unmap_all(req(3, DmaUnmap, p().u32(24).u32(2).u64(0).u64(0)), "DMA_UNMAP addr=0x0 size=0x0 flags=ALL")]
#[case::get_info(req(4, DeviceGetInfo, p().u32(16).u32(0).u32(0).u32(0)), "DEVICE_GET_INFO argsz=16")]
#[case::get_region_info(req(5, DeviceGetRegionInfo, p().u32(32).u32(0).u32(7).u32(0).u64(0).u64(0)),
    "DEVICE_GET_REGION_INFO index=CONFIG argsz=32")]
#[case::get_irq_info(req(7, DeviceGetIrqInfo, p().u32(16).u32(0).u32(2).u32(0)), "DEVICE_GET_IRQ_INFO index=MSIX")]
#[case::set_irqs(req(8, DeviceSetIrqs, p().u32(20).u32(4 | 32).u32(2).u32(0).u32(1)).fds(1),
    "DEVICE_SET_IRQS index=MSIX start=0 count=1 flags=DATA_EVENTFD|ACTION_TRIGGER fds=1")]
#[case::set_irqs_bool(req(8, DeviceSetIrqs, p().u32(21).u32(2 | 8).u32(0).u32(0).u32(1).bytes(&[1])),
    "DEVICE_SET_IRQS index=INTX start=0 count=1 flags=DATA_BOOL|ACTION_MASK data=01")]
#[case::region_read(req(9, RegionRead, p().u64(0x40).u32(0).u32(8)), "REGION_READ region=BAR0 offset=0x40 count=8")]
#[case::region_write(req(10, RegionWrite, p().u64(0x48).u32(2).u32(4).bytes(&[1, 0, 0, 0])),
    "REGION_WRITE region=BAR2 offset=0x48 count=4 data=01000000")]
#[case::dma_read(req(11, DmaRead, p().u64(0x2000).u64(16)).flipped(), "DMA_READ addr=0x2000 count=16")]
#[case::dma_write(req(12, DmaWrite, p().u64(0x2000).u64(4).bytes(&[0xaa, 0xbb, 0xcc, 0xdd])).flipped(),
    "DMA_WRITE addr=0x2000 count=4 data=aabbccdd")]
#[case::reset(req(13, DeviceReset, p()), "DEVICE_RESET")]
#[case::write_multi(req(15, RegionWriteMulti, p().u64(2)
        .u64(0x10).u32(0).u32(4).bytes(&[1, 2, 3, 4, 0, 0, 0, 0])
        .u64(0x18).u32(7).u32(8).bytes(&[0xff; 8])),
    "REGION_WRITE_MULTI writes=2 BAR0+0x10=01020304 CONFIG+0x18=ffffffffffffffff")]
#[case::get_migration(req(16, DeviceFeature, p().u32(16).u32(0x1_0000 | 1)), "DEVICE_FEATURE GET MIGRATION")]
#[case::probe(req(16, DeviceFeature, p().u32(8).u32(0x4_0000 | 0x2_0000 | 6)), "DEVICE_FEATURE SET|PROBE DMA_LOGGING_START")]
#[case::logging_start(req(16, DeviceFeature, p().u32(64).u32(0x2_0000 | 6).u64(4096).u32(2).u32(0)
        .u64(0).u64(0x8000_0000).u64(0x1_0000_0000).u64(0x4000_0000)),
    "DEVICE_FEATURE SET DMA_LOGGING_START page_size=4096 ranges=2 [0x0+0x80000000,0x100000000+0x40000000]")]
#[case::logging_start_everything(req(16, DeviceFeature, p().u32(24).u32(0x2_0000 | 6).u64(4096).u32(0).u32(0)),
    "DEVICE_FEATURE SET DMA_LOGGING_START page_size=4096 ranges=all")]
#[case::logging_stop(req(16, DeviceFeature, p().u32(8).u32(0x2_0000 | 7)), "DEVICE_FEATURE SET DMA_LOGGING_STOP")]
#[case::report(req(16, DeviceFeature, p().u32(40).u32(0x1_0000 | 8).u64(0x10_0000).u64(0x4_0000).u64(4096)),
    "DEVICE_FEATURE GET DMA_LOGGING_REPORT iova=0x100000 length=0x40000 page_size=4096")]
#[case::unknown_feature(req(16, DeviceFeature, p().u32(12).u32(0x1_0000 | 9).u32(7)), "DEVICE_FEATURE GET feature#9 data=07000000")]
#[case::mig_data_read(req(17, MigDataRead, p().u32(8).u32(1024)), "MIG_DATA_READ size=1024")]
#[case::mig_data_write(req(18, MigDataWrite, p().u32(12).u32(4).bytes(&[9, 8, 7, 6])), "MIG_DATA_WRITE size=4 data=09080706")]
#[case::no_reply(raw(19, 10, 0x10, p().u64(0).u32(0).u32(1).bytes(&[7])), "REGION_WRITE region=BAR0 offset=0x0 count=1 data=07 no-reply")]
#[case::unknown_command(raw(20, 14, 0, p().bytes(&[1, 2])), "UNKNOWN(14) data=0102")]
#[case::size_that_disagrees(req(21, DeviceReset, p()).size(48), "DEVICE_RESET (size 48 but 0 payload bytes)")]
fn request_shows_its_fields(#[case] m: Msg, #[case] want: &str) {
    let (out, summary) = decode(&[m.line()]);
    assert_eq!(body(out.trim_end()), want);
    assert!(!summary.has_problems());
}

#[rstest]
#[case::version(rep(1, Version, p().u16(0).u16(1).bytes(VERSION_JSON)),
    r#"VERSION reply ok 0.1 {"capabilities":{"max_msg_fds":8,"migration":{"pgsize":4096}}}"#)]
#[case::dma_map(rep(2, DmaMap, p()), "DMA_MAP reply ok")]
#[case::dma_unmap(rep(3, DmaUnmap, p().u32(24).u32(0).u64(0x1000).u64(0x1000)), "DMA_UNMAP reply ok addr=0x1000 size=0x1000")]
#[case::get_info(rep(4, DeviceGetInfo, p().u32(16).u32(3).u32(9).u32(5)), "DEVICE_GET_INFO reply ok flags=RESET|PCI regions=9 irqs=5")]
#[case::region_info_with_sparse_areas(rep(5, DeviceGetRegionInfo, p().u32(80).u32(0xf).u32(4).u32(32).u64(0x1_0000).u64(0)
        .u16(1).u16(1).u32(0).u32(2).u32(0).u64(0).u64(0x4000).u64(0x8000).u64(0x8000)).fds(1),
    "DEVICE_GET_REGION_INFO reply ok index=BAR4 size=0x10000 flags=READ|WRITE|MMAP|CAPS cap_offset=32 argsz=80 \
     sparse=[0x0+0x4000,0x8000+0x8000] fds=1")]
#[case::region_info_trimmed(rep(5, DeviceGetRegionInfo, p().u32(80).u32(0xf).u32(4).u32(32).u64(0x1_0000).u64(0)),
    "DEVICE_GET_REGION_INFO reply ok index=BAR4 size=0x10000 flags=READ|WRITE|MMAP|CAPS cap_offset=32 argsz=80")]
#[case::irq_info(rep(7, DeviceGetIrqInfo, p().u32(16).u32(1 | 2).u32(2).u32(8)),
    "DEVICE_GET_IRQ_INFO reply ok index=MSIX count=8 flags=EVENTFD|MASKABLE")]
#[case::set_irqs(rep(8, DeviceSetIrqs, p()), "DEVICE_SET_IRQS reply ok")]
#[case::region_read(rep(9, RegionRead, p().u64(0).u32(0).u32(4).bytes(b"DMAE")),
    "REGION_READ reply ok region=BAR0 offset=0x0 count=4 data=444d4145")]
#[case::region_write(rep(10, RegionWrite, p().u64(0x48).u32(0).u32(4)), "REGION_WRITE reply ok region=BAR0 offset=0x48 count=4")]
#[case::dma_write(rep(12, DmaWrite, p().u64(0x2000).u64(4)).flipped(), "DMA_WRITE reply ok addr=0x2000 count=4")]
#[case::write_multi(rep(15, RegionWriteMulti, p().u64(2)), "REGION_WRITE_MULTI reply ok completed=2")]
#[case::migration(rep(16, DeviceFeature, p().u32(16).u32(0x1_0001).u64(5)), "DEVICE_FEATURE reply ok MIGRATION flags=STOP_COPY|PRE_COPY")]
#[case::logging_start(rep(16, DeviceFeature, p().u32(24).u32(0x2_0006).u64(0x20_0000).u32(0).u32(0)),
    "DEVICE_FEATURE reply ok DMA_LOGGING_START page_size=2097152")]
#[case::logging_stop_echo(rep(16, DeviceFeature, p().u32(24).u32(0x2_0007).u64(4096).u32(0).u32(0)), "DEVICE_FEATURE reply ok")]
#[case::probe_echo(rep(16, DeviceFeature, p().u32(8).u32(0x4_0002)), "DEVICE_FEATURE reply ok")]
#[case::report(rep(16, DeviceFeature, p().u32(40).u32(0x1_0008).u64(0).u64(0x4000).u64(4096).u64(0b10101)),
    "DEVICE_FEATURE reply ok DMA_LOGGING_REPORT iova=0x0 length=0x4000 page_size=4096 dirty=2 of 4 pages (+1 bit past the range)")]
#[case::report_of_many_words(rep(16, DeviceFeature, p().u32(48).u32(0x1_0008).u64(0).u64(128 * 4096).u64(4096).u64(u64::MAX).u64(1)),
    "DEVICE_FEATURE reply ok DMA_LOGGING_REPORT iova=0x0 length=0x80000 page_size=4096 dirty=65 of 128 pages")]
#[case::report_short_bitmap(rep(16, DeviceFeature, p().u32(40).u32(0x1_0008).u64(0).u64(65 * 4096).u64(4096).u64(3)),
    "DEVICE_FEATURE reply ok DMA_LOGGING_REPORT iova=0x0 length=0x41000 page_size=4096 dirty=2 of 65 pages (bitmap 8 of 16 bytes)")]
#[case::mig_data_read_alone(rep(17, MigDataRead, p().u32(12).u32(4).bytes(&[1, 2, 3, 4])), "MIG_DATA_READ reply ok size=4 data=01020304")]
#[case::mig_data_write(rep(18, MigDataWrite, p()), "MIG_DATA_WRITE reply ok")]
#[case::error_with_a_payload(Msg { payload: vec![0; 8], ..err(9, RegionRead, 16) }, "REGION_READ reply ERROR EBUSY (16) (with 8 payload bytes)")]
fn reply_shows_its_fields(#[case] m: Msg, #[case] want: &str) {
    let (out, summary) = decode(&[m.line()]);
    assert_eq!(body(out.trim_end()), want);
    assert!(!summary.has_problems());
}

#[rstest]
#[case::full(1024, "MIG_DATA_READ reply ok size=1024 of 1024 data=abababab… (1024 bytes)")]
#[case::short(8, "MIG_DATA_READ reply ok size=8 of 1024 short data=abababab… (8 bytes)")]
#[case::end_of_stream(0, "MIG_DATA_READ reply ok size=0 of 1024 short")]
fn mig_data_read_reply_shows_the_size_asked_and_returned(#[case] size: u32, #[case] want: &str) {
    let data = vec![0xab; size as usize];
    let msgs =
        [req(5, MigDataRead, p().u32(8).u32(1024)), rep(5, MigDataRead, p().u32(8 + size).u32(size).bytes(&data))];
    let options = DecodeOptions { payload_bytes: 4, ..DecodeOptions::default() };
    let (out, _) = decode_with(&lines(&msgs), &options);
    assert_eq!(body(out.lines().nth(1).unwrap()), want);
}

#[test]
fn padded_mig_data_read_reply_shows_only_its_size_of_data() {
    let mut data = vec![0x11; 8];
    data.resize(1024, 0);
    let msgs = [req(5, MigDataRead, p().u32(8).u32(1024)), rep(5, MigDataRead, p().u32(16).u32(8).bytes(&data))];
    let (out, _) = decode(&lines(&msgs));
    assert_eq!(
        body(out.lines().nth(1).unwrap()),
        "MIG_DATA_READ reply ok size=8 of 1024 short data=1111111111111111 (padded to 1024 bytes)"
    );
}

#[rstest]
#[case(1, "EPERM (1)")]
#[case(2, "ENOENT (2)")]
#[case(5, "EIO (5)")]
#[case(7, "E2BIG (7)")]
#[case(9, "EBADF (9)")]
#[case(11, "EAGAIN (11)")]
#[case(12, "ENOMEM (12)")]
#[case(14, "EFAULT (14)")]
#[case(16, "EBUSY (16)")]
#[case(17, "EEXIST (17)")]
#[case(19, "ENODEV (19)")]
#[case(22, "EINVAL (22)")]
#[case(25, "ENOTTY (25)")]
#[case(28, "ENOSPC (28)")]
#[case(32, "EPIPE (32)")]
#[case(34, "ERANGE (34)")]
#[case(38, "ENOSYS (38)")]
#[case(61, "ENODATA (61)")]
#[case(71, "EPROTO (71)")]
#[case(74, "EBADMSG (74)")]
#[case(75, "EOVERFLOW (75)")]
#[case(95, "ENOTSUP (95)")]
#[case(104, "ECONNRESET (104)")]
#[case(110, "ETIMEDOUT (110)")]
#[case::other_linux_errno(113, "EHOSTUNREACH (113)")]
#[case::no_such_errno(4095, "errno 4095")]
#[case::beyond_i32(u32::MAX, "errno 4294967295")]
fn error_replies_name_their_errno(#[case] errno: u32, #[case] want: &str) {
    let (out, _) = decode(&[err(3, DeviceFeature, errno).line()]);
    assert_eq!(body(out.trim_end()), format!("DEVICE_FEATURE reply ERROR {want}"));
}
