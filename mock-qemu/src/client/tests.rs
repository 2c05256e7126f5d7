//! Client tests against scripted fake servers on a socket pair: every strict rule (a finding
//! in strict mode, nothing in tolerant mode), timeouts and late replies, REGION_WRITE_MULTI,
//! twin-socket DMA and the trace format.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use vfu_server::codec::{Connection, Message};
use vfu_server::wire::{
    CapHeader, Command, DeviceFeature, DmaAccess, DmaLoggingReport, FEATURE_DMA_LOGGING_REPORT, FEATURE_GET,
    FEATURE_MIG_DEVICE_STATE, FEATURE_MIGRATION, FEATURE_SET, Header, MigData, MigDeviceState, REGION_FLAG_CAPS,
    REGION_FLAG_READ, REGION_INFO_CAP_SPARSE_MMAP, RegionAccess, RegionInfo as WireRegionInfo, SparseArea,
    SparseMmapHead, Version, WriteMultiEntry, WriteMultiHead, parse_prefix,
};
use zerocopy::IntoBytes;

use super::trace::{Dir, LineEncoder, TraceSink, Traced};
use super::{Client, ClientError, ClientOptions, DmaService, TraceOptions, strict};

/// One scripted step of a fake server: gets the request and the connection (and the twin
/// socket, once there is one), sends whatever it likes.
type Step = Box<dyn FnOnce(&Message, &mut Connection, &mut Option<Connection>) + Send>;

/// A fake server that runs `steps`, one per request it receives, and hands back the requests.
fn fake(opts: ClientOptions, steps: Vec<Step>) -> (Client, JoinHandle<Vec<Message>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut conn = Connection::new(theirs, 1 << 24, 4);
        let mut twin = None;
        let mut seen = Vec::new();
        for step in steps {
            let m = conn.recv().unwrap();
            step(&m, &mut conn, &mut twin);
            seen.push(m);
        }
        seen
    });
    (Client::from_stream_with(ours, &opts), server)
}

/// A step replying with `payload`.
fn reply(payload: Vec<u8>) -> Step {
    Box::new(move |m, conn, _| conn.send(&m.header.reply(payload.len()), &[&payload], &[]).unwrap())
}

/// A step replying with what `f` makes of the request's payload.
fn reply_with(f: impl FnOnce(&[u8]) -> Vec<u8> + Send + 'static) -> Step {
    Box::new(move |m, conn, _| {
        let p = f(&m.payload);
        conn.send(&m.header.reply(p.len()), &[&p], &[]).unwrap()
    })
}

/// A step replying with an error.
fn refuse(errno: Errno) -> Step {
    Box::new(move |m, conn, _| conn.send(&m.header.error_reply(errno as i32), &[], &[]).unwrap())
}

fn version_reply(minor: u16, json: &str) -> Vec<u8> {
    let mut p = Version { major: 0, minor }.as_bytes().to_vec();
    p.extend_from_slice(json.as_bytes());
    p.push(0);
    p
}

fn opts(strict: bool) -> ClientOptions {
    ClientOptions::with_timeout(Duration::from_secs(5)).strict(strict)
}

/// Runs `call` against a fake server made by `steps` in strict and in tolerant mode; asserts
/// that strict mode finds exactly `rule` and tolerant mode nothing.
fn assert_rule(rule: &str, steps: impl Fn() -> Vec<Step>, call: impl Fn(&mut Client)) {
    for strict in [true, false] {
        let (mut c, server) = fake(opts(strict), steps());
        call(&mut c);
        server.join().unwrap();
        let rules: Vec<&str> = c.findings().iter().map(|f| f.rule).collect();
        if strict {
            assert_eq!(rules, [rule], "{:?}", c.findings());
            assert!(strict::RULES.contains(&c.findings()[0].rule));
        } else {
            assert!(rules.is_empty(), "tolerant mode found {:?}", c.findings());
        }
    }
}

#[test]
fn error_reply_with_a_payload() {
    let steps = || -> Vec<Step> {
        vec![Box::new(|m: &Message, conn: &mut Connection, _: &mut Option<Connection>| {
            let mut h = m.header.error_reply(22);
            h.msg_size += 4;
            conn.send(&h, &[b"oops"], &[]).unwrap();
        })]
    };
    assert_rule(strict::ERROR_REPLY_HAS_PAYLOAD, steps, |c| {
        assert_eq!(c.reset().unwrap_err().errno(), Some(Errno::EINVAL));
    });
    // A plain error reply is no finding.
    let (mut c, server) = fake(opts(true), vec![refuse(Errno::EINVAL)]);
    assert!(c.reset().is_err());
    server.join().unwrap();
    assert!(c.findings().is_empty());
}

#[test]
fn version_key_of_the_wrong_type() {
    let steps = || vec![reply(version_reply(1, r#"{"capabilities":{"max_msg_fds":"8","pgsizes":4096}}"#))];
    assert_rule(strict::VERSION_CAPS_WRONG_TYPE, steps, |c| {
        let (_, caps) = c.negotiate(&Default::default()).unwrap();
        assert_eq!((caps.max_msg_fds, caps.pgsizes), (None, Some(4096)));
    });
}

#[test]
fn version_minor_above_the_request() {
    let steps = || vec![reply(version_reply(7, r#"{"capabilities":{}}"#))];
    assert_rule(strict::VERSION_MINOR_TOO_HIGH, steps, |c| {
        assert_eq!(c.negotiate(&Default::default()).unwrap().0.minor, 7);
    });
}

#[test]
fn identical_remap_accepted() {
    let unmap_echo = || reply_with(|p| p.to_vec());
    let steps = || vec![reply(vec![]), reply(vec![]), unmap_echo()];
    assert_rule(strict::DMA_REMAP_ACCEPTED, steps, |c| {
        assert!(c.audit_remap(0x1000, 0x1000, 3, None).unwrap());
    });
    let (mut c, server) = fake(opts(true), vec![reply(vec![]), refuse(Errno::EEXIST), unmap_echo()]);
    assert!(!c.audit_remap(0x1000, 0x1000, 3, None).unwrap());
    let seen = server.join().unwrap();
    assert_eq!(seen.iter().map(|m| m.header.cmd).collect::<Vec<_>>(), [2, 2, 3]);
    assert!(c.findings().is_empty());
}

fn region_info(argsz: u32, flags: u32, cap_offset: u32) -> WireRegionInfo {
    WireRegionInfo { argsz, flags, index: 0, cap_offset, size: 0x1000, offset: 0 }
}

#[test]
fn region_info_argsz_below_the_fixed_part() {
    let steps = || vec![reply(region_info(16, REGION_FLAG_READ, 0).as_bytes().to_vec())];
    assert_rule(strict::REGION_INFO_ARGSZ_TOO_SMALL, steps, |c| {
        assert_eq!(c.region_info(0).unwrap().info.size, 0x1000);
    });
}

#[test]
fn region_info_reply_not_trimmed() {
    let steps = || {
        let mut p = region_info(32, REGION_FLAG_READ, 0).as_bytes().to_vec();
        p.extend_from_slice(&[0; 8]);
        vec![reply(p)]
    };
    assert_rule(strict::REGION_INFO_REPLY_LENGTH, steps, |c| {
        c.region_info(0).unwrap();
    });
}

#[test]
fn region_info_caps_flag_without_caps() {
    let steps = || vec![reply(region_info(32, REGION_FLAG_READ | REGION_FLAG_CAPS, 0).as_bytes().to_vec())];
    assert_rule(strict::REGION_INFO_CAPS_FLAG_WITHOUT_CAPS, steps, |c| {
        assert!(c.region_info(0).unwrap().sparse_areas.is_empty());
    });
}

/// Region info with a sparse-mmap capability of one area: 64 bytes.
fn region_info_with_caps(flags: u32) -> Vec<u8> {
    let mut p = region_info(64, flags, 32).as_bytes().to_vec();
    p.extend_from_slice(CapHeader { id: REGION_INFO_CAP_SPARSE_MMAP, version: 1, next: 0 }.as_bytes());
    p.extend_from_slice(SparseMmapHead { nr_areas: 1, reserved: 0 }.as_bytes());
    p.extend_from_slice(SparseArea { offset: 0, size: 0x1000 }.as_bytes());
    p
}

#[test]
fn region_info_caps_without_the_flag() {
    let steps = || {
        let full = region_info_with_caps(REGION_FLAG_READ);
        vec![reply(full.get(..32).unwrap().to_vec()), reply(full)]
    };
    assert_rule(strict::REGION_INFO_CAPS_WITHOUT_FLAG, steps, |c| {
        assert_eq!(c.region_info(0).unwrap().sparse_areas, [SparseArea { offset: 0, size: 0x1000 }]);
    });
    // The same with the flag is clean, and the second request had room for everything.
    let full = region_info_with_caps(REGION_FLAG_READ | REGION_FLAG_CAPS);
    let (mut c, server) = fake(opts(true), vec![reply(full.get(..32).unwrap().to_vec()), reply(full)]);
    assert_eq!(c.region_info(0).unwrap().sparse_areas.len(), 1);
    let seen = server.join().unwrap();
    assert_eq!(parse_prefix::<WireRegionInfo>(&seen[1].payload).unwrap().0.argsz, 64);
    assert!(c.findings().is_empty(), "{:?}", c.findings());
}

#[test]
fn region_info_cap_offset_past_the_reply_is_unusable() {
    let steps = || vec![reply(region_info(32, REGION_FLAG_READ | REGION_FLAG_CAPS, 100).as_bytes().to_vec())];
    assert_rule(strict::REGION_INFO_CAP_OFFSET_OUT_OF_BOUNDS, steps, |c| {
        assert!(matches!(c.region_info(0), Err(ClientError::BadReply { .. })));
    });
}

#[test]
fn region_read_reply_count_mismatch() {
    let steps = || {
        vec![reply_with(|p| {
            let (mut head, _) = parse_prefix::<RegionAccess>(p).unwrap();
            head.count = 2;
            let mut out = head.as_bytes().to_vec();
            out.extend_from_slice(&[1, 2, 3, 4]);
            out
        })]
    };
    assert_rule(strict::REGION_READ_COUNT_MISMATCH, steps, |c| {
        assert_eq!(c.region_read(0, 0, 4).unwrap(), [1, 2, 3, 4]);
    });
}

#[test]
fn feature_reply_argsz_not_its_length() {
    let steps = || {
        vec![reply_with(|p| {
            let (head, _) = parse_prefix::<DeviceFeature>(p).unwrap();
            let mut out = DeviceFeature { argsz: 8, ..head }.as_bytes().to_vec();
            out.extend_from_slice(&5u64.to_le_bytes());
            out
        })]
    };
    assert_rule(strict::FEATURE_ARGSZ_MISMATCH, steps, |c| {
        assert_eq!(c.migration_flags().unwrap(), 5);
    });
}

#[test]
fn mig_state_set_reply_not_the_request() {
    let steps = || {
        vec![reply_with(|p| {
            let mut out = p.get(..8).unwrap().to_vec();
            out.extend_from_slice(MigDeviceState { device_state: 1, data_fd: 0 }.as_bytes());
            out
        })]
    };
    assert_rule(strict::MIG_STATE_SET_REPLY_MISMATCH, steps, |c| {
        c.set_mig_state(vfu_server::wire::MigState::Stop).unwrap();
    });
    // An exact echo is clean.
    let (mut c, server) = fake(opts(true), vec![reply_with(|p| p.to_vec())]);
    c.set_mig_state(vfu_server::wire::MigState::Stop).unwrap();
    let seen = server.join().unwrap();
    let (head, _) = parse_prefix::<DeviceFeature>(&seen[0].payload).unwrap();
    assert_eq!(head.flags, FEATURE_MIG_DEVICE_STATE | FEATURE_SET);
    assert!(c.findings().is_empty());
}

#[test]
fn report_bits_past_the_range_are_found_and_cleared() {
    let steps = || {
        vec![reply_with(|p| {
            let mut out = p.get(..8 + 24).unwrap().to_vec();
            out.extend_from_slice(0xffffu64.as_bytes());
            out
        })]
    };
    assert_rule(strict::REPORT_BITS_PAST_LENGTH, steps, |c| {
        assert_eq!(c.dma_logging_report(0, 10 * 4096, 4096).unwrap(), [0x3ff]);
    });
    // A full last word has no bits past the range.
    let (mut c, server) = fake(
        opts(true),
        vec![reply_with(|p| {
            let mut out = p.get(..8 + 24).unwrap().to_vec();
            out.extend_from_slice(u64::MAX.as_bytes());
            out
        })],
    );
    assert_eq!(c.dma_logging_report(0, 64 * 4096, 4096).unwrap(), [u64::MAX]);
    let seen = server.join().unwrap();
    let (head, rest) = parse_prefix::<DeviceFeature>(&seen[0].payload).unwrap();
    assert_eq!(head.flags, FEATURE_DMA_LOGGING_REPORT | FEATURE_GET);
    assert_eq!(rest, DmaLoggingReport { iova: 0, length: 64 * 4096, page_size: 4096 }.as_bytes());
    assert!(c.findings().is_empty());
}

#[test]
fn mig_data_read_padded_reply() {
    let steps = || {
        let mut p = MigData { argsz: 16, size: 3 }.as_bytes().to_vec();
        p.extend_from_slice(&[1, 2, 3, 0, 0, 0, 0, 0]);
        vec![reply(p)]
    };
    assert_rule(strict::MIG_DATA_READ_PADDED, steps, |c| {
        assert_eq!(c.mig_data_read(8).unwrap(), [1, 2, 3]);
    });
}

#[test]
fn findings_carry_the_msg_id_and_can_be_taken() {
    let (mut c, server) =
        fake(opts(true), vec![reply(vec![0; 0]), reply(version_reply(9, r#"{"capabilities":{"write_multiple":1}}"#))]);
    c.reset().unwrap();
    c.negotiate(&Default::default()).unwrap();
    server.join().unwrap();
    let f = c.take_findings();
    assert_eq!(
        f.iter().map(|f| (f.rule, f.msg_id, f.cmd)).collect::<Vec<_>>(),
        [(strict::VERSION_MINOR_TOO_HIGH, 2, Command::Version), (strict::VERSION_CAPS_WRONG_TYPE, 2, Command::Version),]
    );
    assert!(f[1].to_string().contains("write_multiple"));
    assert!(c.findings().is_empty());
    let _ = FEATURE_MIGRATION;
}

#[test]
fn a_timeout_is_reported_and_the_late_reply_is_dropped() {
    let timeout = Duration::from_millis(200);
    let (mut c, server) = fake(
        ClientOptions::with_timeout(timeout),
        vec![
            // No reply to the first request until the second one arrives, which the client sends
            // only after the first timed out.
            Box::new(|_, _, _| {}),
            Box::new(|m2: &Message, conn: &mut Connection, _: &mut Option<Connection>| {
                let late = Header { msg_id: m2.header.msg_id - 1, ..m2.header.reply(16 + 4) };
                let head = RegionAccess { offset: 0, region: 0, count: 4 };
                conn.send(&late, &[head.as_bytes(), &[0xde, 0xad, 0xbe, 0xef]], &[]).unwrap();
                let head = RegionAccess { offset: 8, region: 0, count: 4 };
                conn.send(&m2.header.reply(16 + 4), &[head.as_bytes(), &[1, 2, 3, 4]], &[]).unwrap();
            }),
        ],
    );
    let started = std::time::Instant::now();
    match c.region_read(0, 0, 4) {
        Err(ClientError::Timeout { cmd: Command::RegionRead, after }) => assert_eq!(after, timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= timeout);
    assert_eq!(c.region_read(0, 8, 4).unwrap(), [1, 2, 3, 4]);
    assert_eq!(c.stale_replies(), 1);
    let seen = server.join().unwrap();
    assert_eq!((seen[0].header.msg_id, seen[1].header.msg_id), (1, 2));
}

#[test]
fn region_write_multi_in_one_message_when_offered() {
    let (mut c, server) = fake(
        opts(true),
        vec![
            reply(version_reply(1, r#"{"capabilities":{"write_multiple":true}}"#)),
            reply_with(|p| p.get(..8).unwrap().to_vec()),
        ],
    );
    c.negotiate(&Default::default()).unwrap();
    let writes: [(u32, u64, &[u8]); 2] = [(0, 0x10, &[1, 2, 3, 4]), (2, 0x100, &[9; 8])];
    assert_eq!(c.region_write_multi(&writes).unwrap(), 2);
    // Entries of 0 or more than 8 bytes are refused without sending anything.
    assert_eq!(c.region_write_multi(&[(0, 0, &[0; 9])]).unwrap_err().errno(), Some(Errno::EINVAL));
    let seen = server.join().unwrap();
    let m = &seen[1];
    assert_eq!(m.header.command(), Some(Command::RegionWriteMulti));
    let (head, rest) = parse_prefix::<WriteMultiHead>(&m.payload).unwrap();
    assert_eq!(head.wr_cnt, 2);
    let (e0, rest) = parse_prefix::<WriteMultiEntry>(rest).unwrap();
    let (e1, rest) = parse_prefix::<WriteMultiEntry>(rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(e0, WriteMultiEntry { offset: 0x10, region: 0, count: 4, data: [1, 2, 3, 4, 0, 0, 0, 0] });
    assert_eq!(e1, WriteMultiEntry { offset: 0x100, region: 2, count: 8, data: [9; 8] });
}

#[test]
fn region_write_multi_falls_back_to_region_writes_and_counts_completions() {
    let (mut c, server) = fake(opts(false), vec![reply(vec![0; 16]), refuse(Errno::EINVAL)]);
    let writes: [(u32, u64, &[u8]); 3] = [(0, 0, &[1]), (0, 4, &[2]), (0, 8, &[3])];
    assert_eq!(c.region_write_multi(&writes).unwrap(), 1);
    let seen = server.join().unwrap();
    assert!(seen.iter().all(|m| m.header.command() == Some(Command::RegionWrite)));
    assert_eq!(seen.len(), 2);
}

/// Guest memory for DMA tests: a vector at address 0.
#[derive(Clone, Default)]
struct Ram(Arc<Mutex<Vec<u8>>>);

impl DmaService for Ram {
    fn dma_read(&mut self, addr: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let m = self.0.lock().unwrap();
        m.get(addr as usize..(addr + len) as usize).map(<[u8]>::to_vec).ok_or(Errno::EFAULT)
    }

    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let mut m = self.0.lock().unwrap();
        m.get_mut(addr as usize..addr as usize + data.len()).ok_or(Errno::EFAULT)?.copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn twin_socket_dma_is_served_on_the_twin_socket() {
    let step_version: Step = Box::new(|m, conn, twin| {
        let (a, b) = UnixStream::pair().unwrap();
        *twin = Some(Connection::new(a, 1 << 20, 4));
        let p = version_reply(1, r#"{"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}}"#);
        conn.send(&m.header.reply(p.len()), &[&p], &[b.as_fd()]).unwrap();
    });
    let step_write: Step = Box::new(|m, conn, twin| {
        let t = twin.as_mut().unwrap();
        let acc = DmaAccess { addr: 4, count: 3 };
        t.send(&Header::request(77, Command::DmaWrite, 19), &[acc.as_bytes(), &[7, 8, 9]], &[]).unwrap();
        let r = t.recv().unwrap();
        assert_eq!((r.header.msg_id, r.header.flags, r.payload.as_slice()), (77, 1, acc.as_bytes()));
        let acc = DmaAccess { addr: 0, count: 8 };
        t.send(&Header::request(78, Command::DmaRead, 16), &[acc.as_bytes()], &[]).unwrap();
        let r = t.recv().unwrap();
        assert_eq!(r.payload.get(16..).unwrap(), [0, 0, 0, 0, 7, 8, 9, 0]);
        conn.send(&m.header.reply(16), &[&m.payload[..16]], &[]).unwrap();
    });
    let (mut c, server) = fake(opts(true).twin_socket(true), vec![step_version, step_write]);
    let ram = Ram(Arc::new(Mutex::new(vec![0; 8])));
    c.set_dma_service(Box::new(ram.clone()));
    let caps = super::ClientOptions::default().twin_socket(true).capabilities;
    c.negotiate(&caps).unwrap();
    assert!(c.has_twin_socket());
    c.write_u32(0, 0x48, 1).unwrap();
    server.join().unwrap();
    assert_eq!(*ram.0.lock().unwrap(), [0, 0, 0, 0, 7, 8, 9, 0]);
    assert!(c.findings().is_empty());
}

/// A writer into shared memory, for reading a trace back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn traced_session(timestamps: bool) -> String {
    let (mut c, server) =
        fake(opts(false), vec![reply(version_reply(1, r#"{"capabilities":{}}"#)), refuse(Errno::EINVAL)]);
    let out = Shared::default();
    c.set_trace_with(Box::new(out.clone()), TraceOptions { session: "source".into(), timestamps });
    c.negotiate(&Default::default()).unwrap();
    let _ = c.region_read(0xdeadbeef, 0, 4);
    server.join().unwrap();
    String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn trace_has_one_json_line_per_message_in_the_reference_format() {
    let text = traced_session(true);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    let v: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let dirs: Vec<&str> = v.iter().map(|l| l["dir"].as_str().unwrap()).collect();
    assert_eq!(dirs, ["c2s", "s2c", "c2s", "s2c"]);
    assert_eq!(v[0]["cmd"], 1);
    assert_eq!(v[0]["cmd_name"], "VERSION");
    assert_eq!(v[0]["session"], "source");
    // The same request the reference trace recorded, byte for byte.
    assert_eq!(v[2]["payload"], "0000000000000000efbeadde04000000");
    assert_eq!(v[2]["size"], 32);
    assert_eq!(
        (v[3]["flags"].as_u64(), v[3]["error_no"].as_u64(), v[3]["payload"].as_str()),
        (Some(0x21), Some(22), Some(""))
    );
    assert_eq!(v[3]["nfds"], 0);
    let t: Vec<u64> = v.iter().map(|l| l["t"].as_u64().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "{t:?}");
    // Keys in the reference trace's order and spacing.
    assert!(
        lines[2].starts_with(
            r#"{"session": "source", "dir": "c2s", "msg_id": 2, "cmd": 9, "size": 32, "flags": 0, "error_no": 0, "nfds": 0, "payload": ""#
        ),
        "{}",
        lines[2]
    );
}

#[test]
fn trace_without_timestamps_is_byte_identical_across_runs() {
    let a = traced_session(false);
    assert!(!a.contains("\"t\""));
    assert_eq!(a, traced_session(false));
    assert_eq!(a.lines().count(), 4);
}

/// Each message's direction, command and payload.
type Messages = Arc<Mutex<Vec<(Dir, u16, Vec<u8>)>>>;

/// A sink that keeps each message, and its line.
struct Seen(Messages, Shared);

impl TraceSink for Seen {
    fn message(&mut self, msg: &Traced<'_>) -> std::io::Result<()> {
        self.0.lock().unwrap().push((msg.dir, msg.header.cmd, msg.payload.concat()));
        let options = TraceOptions { session: "source".into(), timestamps: false };
        let mut line = Vec::new();
        LineEncoder::new(&options).encode(&mut line, msg, None);
        self.1.write_all(&line)
    }
}

#[test]
fn a_trace_sink_sees_the_messages_as_bytes_and_can_write_the_same_lines() {
    let (mut c, server) =
        fake(opts(false), vec![reply(version_reply(1, r#"{"capabilities":{}}"#)), refuse(Errno::EINVAL)]);
    let (seen, lines) = (Arc::default(), Shared::default());
    c.set_trace_sink(Box::new(Seen(Arc::clone(&seen), lines.clone())));
    c.negotiate(&Default::default()).unwrap();
    let _ = c.region_read(0xdeadbeef, 0, 4);
    server.join().unwrap();
    let seen = seen.lock().unwrap();
    let dirs: Vec<_> = seen.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(dirs, [(Dir::C2s, 1), (Dir::S2c, 1), (Dir::C2s, 9), (Dir::S2c, 9)]);
    assert_eq!(seen[2].2, [0, 0, 0, 0, 0, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 4, 0, 0, 0]);
    assert_eq!(String::from_utf8(lines.0.lock().unwrap().clone()).unwrap(), traced_session(false));
}

#[test]
fn a_request_the_relay_says_is_unanswered_ends_as_a_timeout_without_waiting_for_it() {
    // A timeout no test waits out: only the relay's word ends the first wait.
    let timeout = Duration::from_secs(3600);
    let (mut c, server) = fake(
        ClientOptions::with_timeout(timeout),
        vec![
            Box::new(|_, _, _| {}),
            Box::new(|m2: &Message, conn: &mut Connection, _: &mut Option<Connection>| {
                let head = RegionAccess { offset: 8, region: 0, count: 4 };
                conn.send(&m2.header.reply(16 + 4), &[head.as_bytes(), &[1, 2, 3, 4]], &[]).unwrap();
            }),
        ],
    );
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
    c.set_unanswered(read);
    // Another request's msg_id first: the client keeps waiting past it.
    nix::unistd::write(&write, &[7, 0, 1, 0]).unwrap();
    match c.region_read(0, 0, 4) {
        Err(ClientError::Timeout { cmd: Command::RegionRead, after }) => assert_eq!(after, timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(c.region_read(0, 8, 4).unwrap(), [1, 2, 3, 4], "the next request is answered as usual");
    server.join().unwrap();
}

#[test]
fn a_dma_write_with_nothing_outstanding_is_served_and_a_quiet_server_ends_the_wait() {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let step: Step = Box::new(move |m, conn, _| {
        conn.send(&m.header.reply(16), &[&m.payload[..16]], &[]).unwrap();
        let acc = DmaAccess { addr: 2, count: 3 };
        conn.send(&Header::request(90, Command::DmaWrite, 19), &[acc.as_bytes(), &[4, 5, 6]], &[]).unwrap();
        let r = conn.recv().unwrap();
        assert_eq!((r.header.msg_id, r.header.flags, r.payload.as_slice()), (90, 1, acc.as_bytes()));
        // Quiet, the connection open, until the client has waited in vain.
        wait.recv().unwrap();
    });
    let (mut c, server) = fake(opts(true), vec![step]);
    let ram = Ram(Arc::new(Mutex::new(vec![0; 8])));
    c.set_dma_service(Box::new(ram.clone()));
    c.write_u32(0, 0x48, 1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let served = c.serve_one(deadline).unwrap().expect("the server's DMA_WRITE");
    assert_eq!(served, super::Served { cmd: Some(Command::DmaWrite), addr: 2, count: 3, refused: None });
    assert_eq!(*ram.0.lock().unwrap(), [0, 0, 4, 5, 6, 0, 0, 0]);
    assert_eq!(c.serve_one(std::time::Instant::now() + Duration::from_millis(20)).unwrap(), None);
    done.send(()).unwrap();
    server.join().unwrap();
}
