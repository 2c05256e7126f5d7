use std::path::Path;

use super::model::*;
use super::*;

const HEAD: &str = "name: t
description: a test
seed: 1
device: {kind: dma-engine}
guest: {ram: 64M}
steps:
";

/// A scenario of `HEAD` and these steps (each line indented by the caller).
fn with_steps(steps: &str) -> String {
    format!("{HEAD}{steps}")
}

fn problems(text: &str) -> Vec<String> {
    match load_str(text, "t.yaml") {
        Ok(_) => panic!("expected {text:?} to be refused"),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

fn steps(text: &str) -> Vec<Step> {
    let s = load_str(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    s.steps.into_iter().map(|s| s.value).collect()
}

#[test]
fn every_step_kind_parses() {
    let text = with_steps(
        "  - connect: {side: source, strict: false, twin_socket: true, timeout_ms: 500}
  - map: {side: source, backing: message}
  - program:
      commands:
        - fill: {guest_addr: 1M, len: 4K, seed: 3}
        - copy-to-device: {guest_addr: 0x100000, dev_offset: 0, len: 4096}
        - copy-to-guest: {dev_offset: 4K, guest_addr: 2M, len: 8K}
  - start-logging: {page_size: 8K, ranges: [{iova: 0, size: 1M}]}
  - interleave: {ops: 100, weights: {dma: 2, vcpu: 0, region: 1, state: 1}, invalid_percent: 25}
  - stop-logging: {}
  - set-state: {state: pre-copy}
  - read-data: {size: 64K, chunk: 16K, buffer: b}
  - write-data: {side: source, data: {buffer: b}}
  - write-data: {side: source, data: {random: 4K}}
  - expect: {next_errno: EINVAL, state: pre-copy, server_alive: true, commands_failed: 0}
  - connect: {side: destination}
  - map: {side: destination}
  - migrate:
      from: source
      to: destination
      budget: {max_rounds: 4, downtime_ms: 2, bandwidth: 1G, max_device_bytes: 2G}
      pre_copy: false
      read_size: 512K
      transport: tcp
      cancel_after_rounds: 1
      expect: {error: cancelled}
  - verify: {ram: true, device: false, dirty_log: false}
",
    );
    let steps = steps(&text);
    let kinds: Vec<_> = steps.iter().map(Step::kind).collect();
    assert_eq!(
        kinds,
        [
            "connect",
            "map",
            "program",
            "start-logging",
            "interleave",
            "stop-logging",
            "set-state",
            "read-data",
            "write-data",
            "write-data",
            "expect",
            "connect",
            "map",
            "migrate",
            "verify"
        ]
    );
    let Step::Connect(c) = &steps[0] else { panic!() };
    assert!(!c.strict && c.twin_socket && c.timeout_ms == 500);
    let Step::Map(m) = &steps[1] else { panic!() };
    assert_eq!(m.backing, Backing::Message);
    let Step::Program(p) = &steps[2] else { panic!() };
    assert!(matches!(p.commands[0], DmaCommandSpec::Fill { guest_addr: Size(0x10_0000), len: Size(4096), seed: 3 }));
    assert!(matches!(p.commands[1], DmaCommandSpec::CopyToDevice { guest_addr: Size(0x10_0000), .. }));
    assert!(matches!(p.commands[2], DmaCommandSpec::CopyToGuest { dev_offset: Size(4096), len: Size(8192), .. }));
    let Step::StartLogging(l) = &steps[3] else { panic!() };
    assert_eq!(l.page_size, Size(8192));
    assert_eq!(l.ranges.as_ref().map(Vec::len), Some(1));
    let Step::Interleave(i) = &steps[4] else { panic!() };
    assert_eq!((i.ops, i.weights.dma, i.weights.vcpu, i.invalid_percent), (100, 2, 0, 25));
    let Step::SetState(s) = &steps[6] else { panic!() };
    assert_eq!(s.state.to_wire(), vfu_server::wire::MigState::PreCopy);
    let Step::ReadData(r) = &steps[7] else { panic!() };
    assert_eq!((r.size, r.chunk, r.buffer.as_deref()), (Some(Size(65536)), Size(16384), Some("b")));
    let Step::WriteData(w) = &steps[9] else { panic!() };
    assert!(matches!(w.data, DataSource::Random(Size(4096))));
    let Step::Expect(e) = &steps[10] else { panic!() };
    assert_eq!((e.next_errno, e.state, e.server_alive), (Some(Errno::EINVAL), Some(MigStateName::PreCopy), Some(true)));
    let Step::Migrate(m) = &steps[13] else { panic!() };
    assert_eq!((m.budget.max_rounds, m.budget.downtime_ms, m.budget.bandwidth), (4, 2, Some(Size(1 << 30))));
    assert_eq!((m.pre_copy, m.transport, m.cancel_after_rounds), (false, TransportKind::Tcp, Some(1)));
    assert_eq!(m.expect, MigrateOutcome::Error(MigrationErrorKind::Cancelled));
    let Step::Verify(v) = &steps[14] else { panic!() };
    assert!(v.ram && !v.device && !v.dirty_log);
}

#[test]
fn defaults_fill_in_what_is_left_out() {
    let steps = steps(&with_steps(
        "  - connect: {}
  - map: {}
  - connect: {side: destination}
  - map: {side: destination}
  - migrate: {}
  - verify: {}
",
    ));
    let Step::Connect(c) = &steps[0] else { panic!() };
    assert_eq!((c.side, c.strict, c.twin_socket), (Side::Source, true, false));
    let Step::Migrate(m) = &steps[4] else { panic!() };
    assert_eq!(
        (m.from, m.to, m.expect, m.budget.max_rounds),
        (Side::Source, Side::Destination, MigrateOutcome::Migrated, 30)
    );
    let Step::Verify(v) = &steps[5] else { panic!() };
    assert!(v.ram && v.device && v.dirty_log);
}

#[test]
fn every_fault_kind_parses() {
    let text = with_steps(
        "  - fault: {device-arc: {side: source, from: pre-copy, to: stop-copy}}
  - fault: {device-read-after: {side: destination, bytes: 4M}}
  - connect: {}
  - map: {}
  - start-logging: {}
  - fault: {proxy: {at: {command: DMA_MAP, nth: 2}, action: {corrupt-header: {field: msg_size, xor: 1}}}}
  - fault: {proxy: {at: {command: REGION_READ}, direction: to-client, action: {corrupt-payload: {offset: 3}}}}
  - fault: {proxy: {at: {command: MIG_DATA_READ, nth: 3}, action: {truncate: {keep: 10}}}}
  - fault: {proxy: {at: {command: DEVICE_FEATURE}, action: duplicate}}
  - fault: {proxy: {at: {command: REGION_WRITE}, action: {delay: {ms: 50}}}}
  - fault: {proxy: {at: {command: REGION_WRITE}, action: reorder}}
  - fault: {proxy: {at: {command: DMA_MAP}, action: drop-fds}}
  - fault: {proxy: {at: {command: VERSION}, action: {add-fds: {count: 2}}}}
  - fault: {dma-unmapped: {guest_addr: 3G, len: 4K}}
  - fault: {unmap-while-logging: {region: 0}}
  - fault: {client-disconnect: {at: {command: MIG_DATA_READ, nth: 1}}}
  - fault: {server-kill: {restart: true}}
  - connect: {}
  - map: {}
  - connect: {side: destination}
  - map: {side: destination}
  - fault: {stream: {cut: {after: 1M}}}
  - migrate: {expect: aborted}
  - fault: {stream: {corrupt: {at: 100}}}
  - migrate: {expect: {error: destination-failed}}
  - fault: {stream: {duplicate-chunk: {index: 2}}}
  - migrate: {expect: aborted}
  - fault: {client-disconnect: {side: destination}}
",
    );
    let faults: Vec<_> =
        steps(&text).into_iter().filter_map(|s| if let Step::Fault(f) = s { Some(f) } else { None }).collect();
    let kinds: Vec<_> = faults.iter().map(Fault::kind).collect();
    assert_eq!(
        kinds,
        [
            "device-arc",
            "device-read-after",
            "proxy",
            "proxy",
            "proxy",
            "proxy",
            "proxy",
            "proxy",
            "proxy",
            "proxy",
            "dma-unmapped",
            "unmap-while-logging",
            "client-disconnect",
            "server-kill",
            "stream",
            "stream",
            "stream",
            "client-disconnect"
        ]
    );
    assert!(matches!(
        faults[2],
        Fault::Proxy {
            at: Trigger { command: Some(CommandName::DmaMap), nth: 2, after: None },
            direction: Direction::ToServer,
            action: ProxyAction::CorruptHeader { field: HeaderField::MsgSize, xor: 1 },
            ..
        }
    ));
    assert!(matches!(
        faults[3],
        Fault::Proxy {
            direction: Direction::ToClient,
            action: ProxyAction::CorruptPayload { offset: 3, xor: 0xff },
            ..
        }
    ));
    assert!(matches!(faults[9], Fault::Proxy { action: ProxyAction::AddFds { count: 2 }, .. }));
    assert!(matches!(faults[1], Fault::DeviceReadAfter { side: Side::Destination, bytes: Size(0x40_0000) }));
    assert!(matches!(faults[14], Fault::Stream(StreamFaultSpec::Cut { after: Size(0x10_0000) })));
    assert!(matches!(faults[15], Fault::Stream(StreamFaultSpec::Corrupt { at: Size(100), xor: 0xff })));
    assert!(matches!(faults[16], Fault::Stream(StreamFaultSpec::DuplicateChunk { index: 2 })));
}

#[test]
fn unknown_field_is_refused_with_line_and_column() {
    let text = with_steps("  - connect: {side: source, colour: red}\n");
    let e = load_str(&text, "scenarios/t.yaml").unwrap_err();
    assert!(matches!(e, LoadError::Syntax(_)));
    assert_eq!(
        e.to_string(),
        "scenarios/t.yaml:7:29: unknown field `colour`, expected one of side, strict, twin_socket, timeout_ms"
    );
}

#[test]
fn unknown_top_level_field_is_refused() {
    let text = format!("{HEAD}  - connect: {{}}\nextra: 1\n");
    assert_eq!(
        problems(&text),
        [
            "t.yaml:8:1: unknown field `extra`, expected one of name, description, seed, device, servers, guest, workload, steps"
        ]
    );
}

#[test]
fn a_typo_in_an_enum_value_names_the_values_expected() {
    assert_eq!(
        problems(&with_steps("  - connect: {side: sauce}\n")),
        ["t.yaml:7:21: unknown variant `sauce`, expected one of source, destination"]
    );
    let p = problems(&with_steps("  - conect: {}\n"));
    assert!(p[0].starts_with("t.yaml:7:5: unknown variant `conect`, expected one of connect, map, program"), "{p:?}");
}

#[test]
fn a_fault_naming_a_command_that_does_not_exist_is_refused() {
    let p =
        problems(&with_steps("  - connect: {}\n  - fault: {proxy: {at: {command: DMA_MAPP}, action: duplicate}}\n"));
    assert!(p[0].starts_with("t.yaml:8:35: unknown variant `DMA_MAPP`, expected one of VERSION, DMA_MAP,"), "{p:?}");
}

#[test]
fn a_wrong_type_is_refused_with_its_place() {
    assert_eq!(problems(&with_steps("  - connect: {strict: maybe}\n")), ["t.yaml:7:23: invalid boolean"]);
    let p = problems(&HEAD.replace("seed: 1", "seed: [1]").replace("steps:\n", "steps:\n  - connect: {}\n"));
    assert!(p[0].starts_with("t.yaml:3:7: "), "{p:?}");
    let p = problems(&HEAD.replace("64M", "12Q").replace("steps:\n", "steps:\n  - connect: {}\n"));
    assert_eq!(p, ["t.yaml:5:14: unknown size unit \"Q\" (expected K, M or G)"]);
}

#[test]
fn sizes_are_numbers_or_strings() {
    for (ram, bytes) in [("268435456", 256 << 20), ("256M", 256 << 20), ("0x100000", 1 << 20), ("\"1G\"", 1 << 30)] {
        let s = load_str(&with_steps("  - connect: {}\n").replace("64M", ram), "t.yaml").unwrap();
        assert_eq!(s.guest.ram.value, Size(bytes), "{ram}");
    }
    assert_eq!(Size(256 << 20).to_string(), "256M");
    assert_eq!(Size(4097).to_string(), "4097");
}

#[test]
fn a_migrate_step_before_connect_is_refused() {
    assert_eq!(
        problems(&with_steps("  - migrate: {}\n  - connect: {}\n")),
        [
            "t.yaml:7:5: expected a `connect` to the source before this `migrate` step",
            "t.yaml:7:5: expected a `connect` to the destination before this `migrate` step"
        ]
    );
}

#[test]
fn a_ram_size_not_a_multiple_of_4k_is_refused() {
    assert_eq!(
        problems(&with_steps("  - connect: {}\n").replace("64M", "1000")),
        ["t.yaml:5:14: expected a RAM size that is a non-zero multiple of 4K (4096 bytes), found 1000 bytes"]
    );
}

#[test]
fn explicit_regions_must_add_up_and_not_overlap() {
    let text = with_steps("  - connect: {}\n").replace(
        "guest: {ram: 64M}",
        "guest:\n  ram: 64M\n  layout:\n    regions: [{iova: 0, size: 32M}, {iova: 16M, size: 16M}, {iova: 4G, size: 1M}]",
    );
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with("t.yaml:8:14: expected regions that do not overlap"), "{p:?}");
    assert!(p[1].contains("add up to the RAM size"), "{p:?}");
}

#[test]
fn device_options_are_checked() {
    let text = with_steps("  - connect: {}\n")
        .replace("{kind: dma-engine}", "{kind: dma-engine, options: {devmem_size: 12K}}");
    assert_eq!(
        problems(&text),
        ["t.yaml:4:51: expected a valid dma-engine option: device memory size 0x3000 is not a power of two"]
    );
}

#[test]
fn write_data_needs_a_buffer_read_before() {
    let text = with_steps(
        "  - connect: {side: destination}\n  - set-state: {side: destination, state: resuming}\n  - write-data: {data: {buffer: nope}}\n",
    );
    assert_eq!(
        problems(&text),
        ["t.yaml:9:33: expected the name of a buffer a `read-data` step kept before, found \"nope\""]
    );
}

#[test]
fn a_device_hook_must_precede_its_server_start() {
    let text = with_steps("  - connect: {}\n  - fault: {device-arc: {from: pre-copy, to: stop-copy}}\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("t.yaml:8:5: expected the source server to start after this device hook"), "{p:?}");
    // Before a restart it is fine.
    let text = with_steps(
        "  - connect: {}\n  - fault: {device-read-after: {bytes: 1M}}\n  - fault: {server-kill: {}}\n  - connect: {}\n",
    );
    load_str(&text, "t.yaml").unwrap();
}

#[test]
fn a_stream_fault_needs_a_migrate_after_it() {
    let p = problems(&with_steps("  - connect: {}\n  - fault: {stream: {cut: {after: 10}}}\n"));
    assert_eq!(p, ["t.yaml:8:5: expected a `migrate` step after this stream fault"]);
}

#[test]
fn unmap_while_logging_needs_logging() {
    let p = problems(&with_steps("  - connect: {}\n  - map: {}\n  - fault: {unmap-while-logging: {}}\n"));
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("t.yaml:9:5: expected `connect`, `map` and `start-logging` on the source"), "{p:?}");
}

#[test]
fn steps_after_a_disconnect_need_a_new_connect() {
    let p =
        problems(&with_steps("  - connect: {}\n  - fault: {client-disconnect: {}}\n  - set-state: {state: stop}\n"));
    assert_eq!(p, ["t.yaml:9:5: expected a `connect` to the source before this `set-state` step"]);
}

#[test]
fn an_empty_expect_and_a_bad_name_are_refused() {
    let text = with_steps("  - connect: {}\n  - expect: {}\n").replace("name: t", "name: Bad_Name");
    assert_eq!(
        problems(&text),
        [
            "t.yaml:1:7: expected a name of lowercase letters, digits and '-', found \"Bad_Name\"",
            "t.yaml:8:5: expected at least one check: next_errno, next_fails, state, server_alive, commands_failed or rounds"
        ]
    );
}

#[test]
fn a_file_name_must_match_the_scenario_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.yaml");
    std::fs::write(&path, with_steps("  - connect: {}\n")).unwrap();
    let e = load_path(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}:1:7: expected the name \"other\" (the file's name), found \"t\"", path.display())
    );
}

#[test]
fn command_names_are_the_wire_commands() {
    use vfu_server::wire::Command;
    let names: Vec<String> = Command::ALL.iter().map(|c| c.name().to_owned()).collect();
    for name in &names {
        let parsed: CommandName = serde_saphyr::from_str(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.to_wire().name(), name);
    }
}

fn scenarios_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios"))
}

#[test]
fn the_committed_scenarios_load() {
    let files = scenario_files(scenarios_dir()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    for path in files {
        load_path(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn the_committed_schema_is_fresh() {
    let path = scenarios_dir().join("schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == schema::schema_text(),
        "{} is stale or missing; regenerate it with\n    cargo run -p harness --bin miglab -- schema > scenarios/schema.json",
        path.display()
    );
}

/// Both sides connected and mapped: what a `migrate` step needs before it.
const READY_TO_MIGRATE: &str =
    "  - connect: {}\n  - connect: {side: destination}\n  - map: {}\n  - map: {side: destination}\n";

#[test]
fn a_migrate_step_takes_qemu_s_iteration() {
    let text = with_steps(&format!(
        "{READY_TO_MIGRATE}  - migrate: {{read_size: 48, iteration: {{reads: 2, max_bandwidth: 1M, \
         pending_at_switchover: true}}}}\n  - migrate: {{from: destination, to: source}}\n"
    ));
    let steps = steps(&text);
    let (Step::Migrate(qemu), Step::Migrate(drain)) = (&steps[4], &steps[5]) else { panic!("{steps:?}") };
    let want = Iteration { reads: Some(2), max_bandwidth: Some(Size(1 << 20)), pending_at_switchover: Some(true) };
    assert_eq!((qemu.read_size, qemu.iteration), (Size(48), Some(want)));
    assert_eq!(drain.iteration, None, "without it every round is read to a short read");
}

#[rstest::rstest]
#[case::iteration_without_pre_copy(
    "pre_copy: false, iteration: {reads: 1}",
    "expected `pre_copy: true` with `iteration` (it bounds the reads of pre-copy rounds)"
)]
#[case::iteration_without_a_bound("iteration: {}", "expected `iteration.reads` or `iteration.max_bandwidth`")]
#[case::no_reads("iteration: {reads: 0}", "expected `iteration.reads` of at least 1")]
#[case::no_bandwidth("iteration: {max_bandwidth: 0}", "expected a non-zero `iteration.max_bandwidth`")]
#[case::no_read_size("read_size: 0", "expected a `read_size` from 1 byte to 4 GiB - 1, found 0")]
#[case::read_size_past_a_message("read_size: 4G", "expected a `read_size` from 1 byte to 4 GiB - 1, found 4294967296")]
fn a_migrate_step_s_reads_are_checked_where_they_are_written(#[case] knobs: &str, #[case] expected: &str) {
    let text = with_steps(&format!("{READY_TO_MIGRATE}  - migrate: {{{knobs}}}\n"));
    assert_eq!(problems(&text), [format!("t.yaml:11:5: {expected}")]);
}

#[test]
fn each_side_may_name_its_server_as_a_command_with_its_socket() {
    let text = HEAD.replace(
        "guest:",
        "servers:\n  source: {command: [/opt/lvu/server, -v, \"{socket}\"]}\n  destination: builtin\nguest:",
    ) + "  - connect: {side: source}\n";
    let s = load_str(&text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    match s.servers.of(Side::Source) {
        ServerSpec::Command(argv) => assert_eq!(argv.value, ["/opt/lvu/server", "-v", "{socket}"]),
        other => panic!("the source's server is {other:?}"),
    }
    assert_eq!(s.servers.of(Side::Destination), &ServerSpec::Builtin);
}

#[test]
fn a_server_command_without_its_socket_placeholder_is_refused_at_its_line() {
    let text = HEAD.replace("guest:", "servers:\n  destination: {command: [/opt/lvu/server, -v]}\nguest:")
        + "  - connect: {side: source}\n";
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("t.yaml:6:") && got[0].contains("{socket}"), "{got:?}");
}

#[test]
fn a_device_hook_on_a_side_served_by_another_command_is_refused() {
    let text = HEAD.replace("guest:", "servers:\n  source: {command: [srv, \"{socket}\"]}\nguest:")
        + "  - fault: {device-arc: {side: source, from: running, to: stop}}\n  - connect: {side: source}\n";
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("built-in server on the source"), "{got:?}");
}

#[test]
fn a_generic_device_lists_its_writes_in_hex_and_the_regions_to_compare() {
    let text = HEAD.replace(
        "device: {kind: dma-engine}",
        "device:\n  kind: generic\n  builtin: dma-engine\n  writes: [{region: 2, offset: 4K, data: \"00ff 10\"}]\n  compare: [{region: 2, len: 64K}]",
    ) + "  - connect: {side: source}\n";
    let s = load_str(&text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.device.writes[0].data, HexBytes(vec![0x00, 0xff, 0x10]));
    assert_eq!(s.device.writes[0].offset, Size(4096));
    assert_eq!((s.device.compare[0].region, s.device.compare[0].len), (2, Size(64 << 10)));
}

#[test]
fn bytes_that_are_not_hex_are_refused_at_their_place() {
    let text = HEAD
        .replace("device: {kind: dma-engine}", "device:\n  kind: generic\n  writes: [{region: 2, data: \"0g\"}]")
        + "  - connect: {side: source}\n";
    let got = problems(&text);
    assert!(got[0].starts_with("t.yaml:6:") && got[0].contains("hex"), "{got:?}");
}

#[test]
fn a_device_the_harness_does_not_shadow_takes_no_dma_engine_steps() {
    let text = HEAD.replace("device: {kind: dma-engine}", "device: {kind: libvfio-user-sample}")
        + "  - connect: {side: source}\n  - map: {side: source}\n  - program:\n      side: source\n      commands:\n        - fill: {guest_addr: 1M, len: 4K, seed: 3}\n";
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("t.yaml:9:") && got[0].contains("`program` runs dma-engine commands"), "{got:?}");
}

#[test]
fn writes_and_compare_belong_to_the_generic_profile_only() {
    let text = HEAD
        .replace("device: {kind: dma-engine}", "device:\n  kind: dma-engine\n  compare: [{region: 2, len: 4K}]")
        + "  - connect: {side: source}\n";
    assert!(problems(&text)[0].contains("only with kind: generic"));
}
