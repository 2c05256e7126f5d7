//! The Wireshark dissector (contrib/wireshark/vfio_user.lua) against `miglab trace`'s decoder:
//! a real migration's trace is made into pcapng by `miglab trace --pcapng`, whole and with its
//! payloads cut, tshark decodes it with the dissector, and for every message the fields it
//! shows must be what the trace decoder reads: direction, session, header, fds, and the
//! region, offset and count of region accesses, the migration states, the data sizes.
//!
//! tshark is Debian's package (`apt-get install tshark`). Without it the test says why and
//! passes, unless `MIGLAB_REQUIRE_TSHARK=1` (CI sets it), where a missing tshark fails it.

mod common;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Proc, server};
use harness::trace::pcapng::MAX_CAPTURE;
use harness::trace::{DecodedMessage, Dir, Record, decode_messages};
use pretty_assertions::assert_eq;

const DISSECTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/wireshark/vfio_user.lua");

/// The fields asked of tshark, in its output's column order.
const FIELDS: [&str; 16] = [
    "vfio_user.session",
    "vfio_user.direction",
    "vfio_user.msg_id",
    "vfio_user.cmd",
    "vfio_user.cmd_name",
    "vfio_user.flags",
    "vfio_user.error_no",
    "vfio_user.size",
    "vfio_user.nfds",
    "vfio_user.errno_name",
    "vfio_user.region.name",
    "vfio_user.region.offset",
    "vfio_user.region.count",
    "vfio_user.mig.state_name",
    "vfio_user.mig_data.size",
    "vfio_user.capture.cut",
];

/// Whether tshark can run here; when it cannot, whether that fails the test.
fn tshark_present() -> bool {
    let found = Command::new("tshark").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        let required = std::env::var("MIGLAB_REQUIRE_TSHARK").is_ok_and(|v| v == "1");
        assert!(!required, "MIGLAB_REQUIRE_TSHARK=1 but tshark is not installed (apt-get install tshark)");
        eprintln!("skipped: tshark is not installed (apt-get install tshark; MIGLAB_REQUIRE_TSHARK=1 makes this fail)");
    }
    found
}

/// tshark reading `pcapng` with the dissector.
fn tshark(pcapng: &Path, home: &Path) -> Command {
    let mut cmd = Command::new("tshark");
    cmd.arg("-X").arg(format!("lua_script:{DISSECTOR}")).arg("-r").arg(pcapng);
    // A home of its own: a dissector installed in the personal plugins folder would register
    // the protocol a second time, and personal preferences could change what is shown.
    cmd.env("HOME", home).env("XDG_CONFIG_HOME", home.join("config"));
    cmd
}

/// tshark's rows for `pcapng`, one per packet, a column per [`FIELDS`] entry.
fn tshark_rows(pcapng: &Path, home: &Path) -> Vec<Vec<String>> {
    let mut cmd = tshark(pcapng, home);
    cmd.args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=f", "-E", "header=n"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark runs");
    // As root tshark warns that it runs as root; that is all it may say on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("Running as user")).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "tshark failed ({}): {stderr}\n(if it says the vfio_user fields are not valid, the dissector did not load: \
         a global init.lua that sets run_user_scripts_when_superuser = false stops Lua scripts run as root)",
        out.status
    );
    String::from_utf8(out.stdout)
        .expect("tshark prints UTF-8")
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn number(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|_| panic!("{s:?} is not a number"))
}

/// What the fields compared were, per kind, so the test cannot pass on none of them.
#[derive(Debug, Default)]
struct Compared {
    accesses: usize,
    states: usize,
    data_sizes: usize,
    errors: usize,
    cut: usize,
}

/// Compares tshark's row with the trace decoder's message; counts what it compared.
fn compare(row: &[String], m: &DecodedMessage, seen: &mut Compared) {
    let r = &m.record;
    let col = |name: &str| row[FIELDS.iter().position(|f| *f == name).unwrap()].as_str();
    let at = format!("line {}: {}\ntshark: {row:?}", m.line, m.text);
    let h = r.header;
    let dir = if r.dir == Dir::C2s { "0" } else { "1" };
    let name = h.command().map_or_else(|| format!("UNKNOWN({})", h.cmd), |c| c.name().to_owned());
    assert_eq!(
        (col("vfio_user.session"), col("vfio_user.direction"), col("vfio_user.cmd_name")),
        (r.session.as_str(), dir, name.as_str()),
        "{at}"
    );
    let header = [h.msg_id.into(), h.cmd.into(), h.flags.into(), h.error_no.into(), h.msg_size.into(), r.nfds];
    let shown = [
        "vfio_user.msg_id",
        "vfio_user.cmd",
        "vfio_user.flags",
        "vfio_user.error_no",
        "vfio_user.size",
        "vfio_user.nfds",
    ]
    .map(|f| number(col(f)));
    assert_eq!(shown, header, "{at}");
    // Cut by the trace, or to the most Wireshark reads of one packet.
    let too_long = 16 + r.session.len() as u64 + 16 + r.payload_len > MAX_CAPTURE as u64;
    assert_eq!(col("vfio_user.capture.cut") == "1", r.is_cut() || too_long, "{at}");
    seen.cut += usize::from(r.is_cut());
    if h.is_error() {
        assert!(m.text.contains(&format!("ERROR {} (", col("vfio_user.errno_name"))), "{at}");
        seen.errors += 1;
        return;
    }
    let field = |key: &str| m.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    match h.cmd {
        // A payload cut before its fixed part ends has no fields for the trace decoder, while
        // the dissector shows those it has: compared where both have them.
        9 | 10 if field("region").is_some() => {
            let ours = (field("region"), field("offset").map(number), field("count").map(number));
            let theirs = (
                Some(col("vfio_user.region.name")),
                Some(number(col("vfio_user.region.offset"))),
                Some(number(col("vfio_user.region.count"))),
            );
            assert_eq!(theirs, ours, "{at}");
            seen.accesses += 1;
        }
        5 if field("index").is_some() => assert_eq!(Some(col("vfio_user.region.name")), field("index"), "{at}"),
        16 => {
            if let Some(state) = field("state") {
                assert_eq!(col("vfio_user.mig.state_name"), state, "{at}");
                seen.states += 1;
            }
        }
        17 | 18 => {
            if let Some(size) = field("size") {
                assert_eq!(number(col("vfio_user.mig_data.size")), number(size), "{at}");
                seen.data_sizes += 1;
            }
        }
        _ => {}
    }
}

/// The trace `path` with every payload cut to `snaplen` bytes, as the tap and the runner keep them.
fn cut(path: &Path, snaplen: usize, out: &Path) {
    let (messages, _) = decode_messages(BufReader::new(std::fs::File::open(path).unwrap())).unwrap();
    let lines: Vec<String> = messages
        .iter()
        .map(|m| {
            let r = &m.record;
            let mut c = Record::capture(&r.session, r.dir, r.header, &r.payload, r.nfds as usize, snaplen);
            c.t = r.t;
            c.to_line() + "\n"
        })
        .collect();
    std::fs::write(out, lines.concat()).unwrap();
}

/// Payload bytes, field by field (little-endian).
#[derive(Default, Clone)]
struct B(Vec<u8>);

impl B {
    fn u16(mut self, v: u16) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

fn b() -> B {
    B::default()
}

/// A conversation with every command of the specification, each sub-command of
/// DEVICE_FEATURE and an error reply: what a migration does not send.
fn every_command(path: &Path) {
    use vfu_server::wire::Header;
    let mut lines = String::new();
    let mut id = 0u16;
    let mut exchange = |cmd: u16, dir: Dir, ask: B, answer: Option<B>, fds: (usize, usize)| {
        id += 1;
        let h = Header { msg_id: id, cmd, msg_size: 16 + ask.0.len() as u32, flags: 0, error_no: 0 };
        lines += &(Record::capture("every", dir, h, &ask.0, fds.0, 0).to_line() + "\n");
        let (flags, error_no, p) = match answer {
            Some(p) => (1, 0, p.0),
            None => (0x21, 22, Vec::new()),
        };
        let h = Header { msg_size: 16 + p.len() as u32, flags, error_no, ..h };
        lines += &(Record::capture("every", dir.opposite(), h, &p, fds.1, 0).to_line() + "\n");
    };
    let c2s = Dir::C2s;
    let version = b().u16(0).u16(1).bytes(b"{\"capabilities\": {\"max_msg_fds\": 8}}\0");
    exchange(1, c2s, version.clone(), Some(version), (0, 0));
    exchange(2, c2s, b().u32(32).u32(3).u64(0).u64(0x10_0000).u64(0x20_0000), Some(b()), (1, 0));
    let unmap = b().u32(24).u32(0).u64(0x10_0000).u64(0x20_0000);
    exchange(3, c2s, unmap.clone(), Some(unmap), (0, 0));
    exchange(4, c2s, b().u32(16).u32(0).u32(0).u32(0), Some(b().u32(16).u32(3).u32(9).u32(5)), (0, 0));
    let info = b().u32(80).u32(0).u32(4).u32(0).u64(0).u64(0);
    let sparse = b().u32(80).u32(15).u32(4).u32(32).u64(0x10000).u64(0);
    let sparse = sparse.u16(1).u16(1).u32(0).u32(2).u32(0).u64(0).u64(0x4000).u64(0x8000).u64(0x8000);
    exchange(5, c2s, info, Some(sparse), (0, 1));
    let io = b().u32(56).u32(0).u32(0).u32(0);
    let io_reply = b().u32(56).u32(0).u32(0).u32(1).u64(0x40).u64(4).u32(0).u32(0).u32(1).u32(0).u64(0xab);
    exchange(6, c2s, io, Some(io_reply), (0, 1));
    exchange(7, c2s, b().u32(16).u32(0).u32(2).u32(0), Some(b().u32(16).u32(3).u32(2).u32(4)), (0, 0));
    exchange(8, c2s, b().u32(20).u32(4 | 32).u32(2).u32(0).u32(1), Some(b()), (1, 0));
    exchange(9, c2s, b().u64(0x10).u32(0).u32(4), Some(b().u64(0x10).u32(0).u32(4).u32(0xdead_beef)), (0, 0));
    exchange(9, c2s, b().u64(0).u32(99).u32(4), None, (0, 0));
    exchange(10, c2s, b().u64(0x18).u32(7).u32(2).u16(6), Some(b().u64(0x18).u32(7).u32(2)), (0, 0));
    exchange(11, Dir::S2c, b().u64(0x10_0000).u64(4), Some(b().u64(0x10_0000).u64(4).u32(1)), (0, 0));
    exchange(12, Dir::S2c, b().u64(0x10_0000).u64(4).u32(2), Some(b().u64(0x10_0000).u64(4)), (0, 0));
    exchange(13, c2s, b(), Some(b()), (0, 0));
    let multi = b().u64(2).u64(0).u32(0).u32(4).u64(1).u64(8).u32(2).u32(8).u64(2);
    exchange(15, c2s, multi, Some(b().u64(2)), (0, 0));
    let get_migration = b().u32(16).u32(0x10000 | 1);
    exchange(16, c2s, get_migration.clone(), Some(get_migration.u64(5)), (0, 0));
    let set_state = b().u32(16).u32(0x20000 | 2).u32(6).u32(0);
    exchange(16, c2s, set_state.clone(), Some(set_state), (0, 0));
    exchange(16, c2s, b().u32(8).u32(0x40000 | 0x20000 | 6), Some(b().u32(8).u32(0x40000 | 0x20000 | 6)), (0, 0));
    let start = b().u32(40).u32(0x20000 | 6).u64(4096).u32(1).u32(0).u64(0x10_0000).u64(0x20_0000);
    exchange(16, c2s, start.clone(), Some(start), (0, 0));
    let report = b().u32(40).u32(0x10000 | 8).u64(0x10_0000).u64(0x4_0000).u64(4096);
    exchange(16, c2s, report.clone(), Some(report.u64(0b1011)), (0, 0));
    exchange(16, c2s, b().u32(8).u32(0x20000 | 7), Some(b().u32(8).u32(0x20000 | 7)), (0, 0));
    let get_state = b().u32(16).u32(0x10000 | 2);
    exchange(16, c2s, get_state.clone(), Some(get_state.u32(3).u32(0)), (0, 0));
    exchange(17, c2s, b().u32(8 + 64).u32(64), Some(b().u32(8 + 5).u32(5).bytes(b"hello")), (0, 0));
    exchange(18, c2s, b().u32(8 + 5).u32(5).bytes(b"hello"), Some(b()), (0, 0));
    std::fs::write(path, lines).unwrap();
}

/// tshark's packet trees of `pcapng`, which must show no dissector error.
fn assert_no_lua_error(pcapng: &Path, home: &Path) {
    let out = tshark(pcapng, home).arg("-V").output().expect("tshark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = text.lines().filter(|l| l.contains("Lua Error") || l.contains("Malformed")).collect();
    assert!(bad.is_empty(), "{}: {bad:?}", pcapng.display());
}

fn to_pcapng(dir: &Path, trace: &Path) -> PathBuf {
    let out = trace.with_extension("pcapng");
    let (t, o) = (trace.display().to_string(), out.display().to_string());
    let mut p = Proc::start(dir, "to-pcapng", &["trace", &t, "--pcapng", &o]);
    assert!(p.wait().success(), "{}", p.output());
    out
}

#[test]
fn tshark_with_the_dissector_decodes_every_message_as_miglab_trace_does() {
    if !tshark_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (_src, src) = server(dir.path(), "source");
    let (_dst, dst) = server(dir.path(), "destination");
    let trace = dir.path().join("migrate.jsonl");
    let (s, d, t) = (src.display().to_string(), dst.display().to_string(), trace.display().to_string());
    let args = ["mock-qemu", "migrate", "--from", &s, "--to", &d, "--ram", "64M", "--max-rounds", "3", "--trace", &t];
    let mut migrate = Proc::start(dir.path(), "migrate", &args);
    assert!(migrate.wait().success(), "{}", migrate.output());
    let cut_trace = dir.path().join("cut.jsonl");
    cut(&trace, 24, &cut_trace);
    let every = dir.path().join("every.jsonl");
    every_command(&every);
    let every_cut = dir.path().join("every-cut.jsonl");
    cut(&every, 20, &every_cut);

    for trace in [&trace, &cut_trace, &every, &every_cut] {
        let pcapng = to_pcapng(dir.path(), trace);
        let rows = tshark_rows(&pcapng, dir.path());
        assert_no_lua_error(&pcapng, dir.path());
        let (messages, _) = decode_messages(BufReader::new(std::fs::File::open(trace).unwrap())).unwrap();
        assert_eq!(rows.len(), messages.len(), "{}: a packet per message", trace.display());
        let mut seen = Compared::default();
        for (row, m) in rows.iter().zip(&messages) {
            compare(row, m, &mut seen);
        }
        assert!(seen.accesses > 0 && seen.states > 0 && seen.data_sizes > 0, "{}: {seen:?}", trace.display());
        let cut = trace == &cut_trace || trace == &every_cut;
        assert_eq!(seen.cut > 0, cut, "{}: {seen:?}", trace.display());
        assert_eq!(seen.errors > 0, trace == &every || trace == &every_cut, "{}: {seen:?}", trace.display());
    }
}
