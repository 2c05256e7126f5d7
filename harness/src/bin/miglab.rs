//! `miglab`: the scenario tool. `miglab scenario NAME|PATH` runs a scenario and writes its
//! report, `miglab check PATH...` validates scenario files, `miglab list` shows the scenarios
//! of a directory with their descriptions, `miglab trace FILE` decodes a message trace for a
//! person (or writes it as pcapng), `miglab tap` sits between a live client and server and
//! shows their conversation as it happens, `miglab schema` prints the JSON Schema of the
//! format, `miglab fuzz` runs a campaign of generated scenarios and `miglab merge` combines
//! the summaries of its shards. `miglab serve` is `vfu-server` itself: the runner starts its
//! servers from this executable; `miglab mock-qemu` is `mock-qemu` itself, so tests can start
//! both from the one executable cargo builds for them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use harness::fuzz::summary::CampaignSummary;
use harness::run::{RunOptions, ServerCommand, run_scenario};
use harness::scenario::model::DeviceKind;
use harness::scenario::{self, load_path};
use harness::trace::{DecodeOptions, decode_trace_file};
use harness::wiretap::TapOptions;

/// The exit status of a run that passed with known deviations from the specification found.
const DEVIATIONS_ONLY: u8 = 3;

#[derive(Debug, Parser)]
#[command(version, about = "Scenarios for vfio-user live migration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario: by name (scenarios/NAME.yaml) or path. The report goes to
    /// reports/NAME-SEED/; the exit status is 1 when the scenario fails.
    Scenario {
        /// The scenario's name or file.
        scenario: String,
        /// The seed, instead of the scenario's own.
        #[arg(long)]
        seed: Option<u64>,
        /// Where reports go.
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
        /// Concurrent mode: the device's background writer does DMA from a device thread during
        /// each migration, racing the dirty reports (the trace no longer replays byte for byte).
        #[arg(long)]
        concurrent: bool,
        /// Known deviations from the specification (the reference library's, where
        /// implementations differ) fail the run too; without it they are reported and the
        /// exit status is 3 when they are all there is.
        #[arg(long)]
        strict: bool,
    },
    /// Run generated scenarios: each seed draws a whole scenario (device, guest, workload,
    /// steps, faults); failures are shrunk and written to scenarios/regressions/.
    Fuzz(FuzzArgs),
    /// Combine the summaries of a campaign's shards (`miglab fuzz --summary-json`) into one:
    /// coverage summed, one entry per way of failing, the model's missing cells recomputed.
    /// The exit status is 1 when any shard failed (or, with --require-coverage, a required
    /// cell was reached by none).
    Merge {
        /// The shards' summary files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Fail when a cell the protocol model's coverage requires was reached by no shard.
        #[arg(long)]
        require_coverage: bool,
        /// Write the merged summary here too.
        #[arg(long)]
        summary_json: Option<PathBuf>,
    },
    /// Put a transparent tap between any vfio-user client and server: point the client at
    /// --listen instead of the server's socket. Every message is relayed unchanged, with its
    /// fds, printed decoded, recorded (--trace, --pcapng) and judged by the protocol model;
    /// a reply the specification does not admit is a finding. Stops on SIGINT or SIGTERM (or,
    /// with --once, when the first client is gone) and prints a summary. The exit status is
    /// 0 without findings, 3 with findings, 1 when the tap could not run or write its files.
    Tap {
        /// The socket clients connect to (created; it must not exist).
        #[arg(long)]
        listen: PathBuf,
        /// The server's socket.
        #[arg(long)]
        server: PathBuf,
        /// Write the messages as a trace (JSON lines, what `miglab trace` reads).
        #[arg(long, value_name = "OUT")]
        trace: Option<PathBuf>,
        /// Write the messages as pcapng, for Wireshark with contrib/wireshark/vfio_user.lua.
        #[arg(long, value_name = "OUT")]
        pcapng: Option<PathBuf>,
        /// Do not print the messages (findings, connection problems and the summary still are).
        #[arg(long)]
        quiet: bool,
        /// Stop when the first client is gone.
        #[arg(long)]
        once: bool,
        /// Payload bytes of each message kept in the trace and the capture (0: all); longer
        /// payloads keep their length and hash.
        #[arg(long, default_value_t = harness::wiretap::DEFAULT_SNAPLEN)]
        snaplen: usize,
        /// Bytes of data payloads shown, in hex.
        #[arg(long, default_value_t = harness::trace::DEFAULT_PAYLOAD_BYTES)]
        payload_bytes: usize,
    },
    /// Decode a message trace (a report's trace.jsonl, or any trace of mock-qemu's format).
    Trace {
        /// The trace file.
        file: PathBuf,
        /// Instead of decoding, write the messages as pcapng to OUT (for Wireshark).
        #[arg(long, value_name = "OUT", conflicts_with = "diff")]
        pcapng: Option<PathBuf>,
        /// Instead of decoding, line this trace up with OTHER message by message (by command
        /// and order; msg_ids, timestamps and fd numbers aside) and show the first messages
        /// that differ, field by field. The exit status is 0 when they do not differ, 1 when
        /// they do, 2 when a trace cannot be read.
        #[arg(long, value_name = "OTHER")]
        diff: Option<PathBuf>,
        /// Differences shown in full by --diff (the rest are counted).
        #[arg(long, default_value_t = 10, requires = "diff")]
        diff_limit: usize,
        /// Only this session (source, destination).
        #[arg(long)]
        session: Option<String>,
        /// Only the messages of this step.
        #[arg(long)]
        step: Option<usize>,
        /// Bytes of data payloads shown, in hex.
        #[arg(long, default_value_t = harness::trace::DEFAULT_PAYLOAD_BYTES)]
        payload_bytes: usize,
    },
    /// Serve a device: `vfu-server`'s command line (see `miglab serve --help`).
    #[command(hide = true, disable_help_flag = true)]
    Serve {
        /// vfu-server's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run mock-qemu: its command line (see `miglab mock-qemu --help`).
    #[command(name = "mock-qemu", hide = true, disable_help_flag = true)]
    MockQemu {
        /// mock-qemu's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Validate scenario files; each mistake is printed as FILE:LINE:COLUMN: what was expected.
    Check {
        /// The files to check.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the scenarios of a directory with their descriptions.
    List {
        /// The directory.
        #[arg(long, default_value = "scenarios")]
        dir: PathBuf,
    },
    /// Print the JSON Schema of the scenario format (committed as scenarios/schema.json).
    Schema,
}

/// The servers under test, for `miglab scenario` and `miglab fuzz`: the scenario's (the built-in
/// `vfu-server` unless its file names another), unless given here.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The server of both sides: a command with `{socket}` where its socket path goes (e.g.
    /// '/opt/lvu/build/samples/server -v {socket}', split as a shell would), or a
    /// vfu-server-compatible executable (it gets vfu-server's flags and the fault hooks).
    #[arg(long, value_name = "CMD")]
    server: Option<String>,
    /// The source's server (as --server), over --server.
    #[arg(long, value_name = "CMD")]
    source_server: Option<String>,
    /// The destination's server (as --server), over --server.
    #[arg(long, value_name = "CMD")]
    destination_server: Option<String>,
    /// The name a vfu-server-compatible server gives the device (its --device), where it is
    /// not vfu-server's.
    #[arg(long, value_name = "NAME")]
    server_device: Option<String>,
}

impl ServerArgs {
    /// The servers: this executable's `serve` where nothing else is named.
    fn servers(self) -> Result<harness::run::Servers, ExitCode> {
        let builtin = match std::env::current_exe() {
            Ok(exe) => ServerCommand::miglab(exe),
            Err(e) => {
                eprintln!("miglab: finding its own executable: {e}");
                return Err(ExitCode::FAILURE);
            }
        };
        let device = self.server_device;
        let parse = |line: Option<String>, flag: &str| -> Result<Option<ServerCommand>, ExitCode> {
            let Some(line) = line else { return Ok(None) };
            let command = ServerCommand::parse(&line).map_err(|e| {
                eprintln!("miglab: --{flag}: {e}");
                ExitCode::FAILURE
            })?;
            Ok(Some(match &device {
                Some(name) => command.with_device(name.clone()),
                None => command,
            }))
        };
        let both = parse(self.server, "server")?;
        let source = parse(self.source_server, "source-server")?.or_else(|| both.clone());
        let destination = parse(self.destination_server, "destination-server")?.or(both);
        let builtin = match &device {
            Some(name) => builtin.with_device(name.clone()),
            None => builtin,
        };
        Ok(harness::run::Servers { builtin, overrides: [source, destination] })
    }
}

/// `miglab fuzz`'s arguments.
#[derive(Debug, clap::Args)]
struct FuzzArgs {
    /// Seeds to run, A..B (B excluded); from a fresh seed when absent.
    #[arg(long, value_parser = parse_range)]
    seeds: Option<std::ops::Range<u64>>,
    /// Stop after this long: 60s, 10m, 1h.
    #[arg(long, value_parser = parse_duration)]
    time: Option<std::time::Duration>,
    /// Runs at once (more than the cores: a run waits on its servers part of the time).
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Run only shard I of N of the seeds (s % N == I), e.g. 0/4.
    #[arg(long, value_parser = parse_shard, default_value = "0/1")]
    shard: (u64, u64),
    /// Do not shrink failures.
    #[arg(long)]
    no_shrink: bool,
    /// Concurrent runs: the device's background writer during each migration.
    #[arg(long)]
    concurrent: bool,
    /// Where shrunk failures are written.
    #[arg(long, default_value = "scenarios/regressions")]
    regressions: PathBuf,
    /// Where their reports go.
    #[arg(long, default_value = "reports")]
    reports: PathBuf,
    /// Fail when a cell the protocol model's coverage requires was not reached (each
    /// operation in each state, let through and refused; each event in each state).
    #[arg(long)]
    require_coverage: bool,
    /// Write the campaign's summary here as JSON, for `miglab merge`.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Print the scenario each seed of --seeds draws (YAML, one document each) and run none.
    #[arg(long)]
    print: bool,
    /// The device profile the scenarios are drawn for: dma-engine (shadowed by the harness),
    /// libvfio-user-sample (the reference library's sample device, ours or theirs), or
    /// generic (vfu-server's dma-engine judged as a device the harness does not know).
    #[arg(long, value_parser = parse_device, default_value = "dma-engine")]
    device: DeviceKind,
    #[command(flatten)]
    server: ServerArgs,
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    match s {
        "dma-engine" => Ok(DeviceKind::DmaEngine),
        "libvfio-user-sample" => Ok(DeviceKind::LibvfioUserSample),
        "generic" => Ok(DeviceKind::Generic),
        _ => Err(format!("expected dma-engine, libvfio-user-sample or generic, found {s:?}")),
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Scenario { scenario, seed, reports, server, concurrent, strict } => {
            run(&scenario, seed, reports, server, concurrent, strict)
        }
        Command::Fuzz(args) => fuzz(args),
        Command::Merge { files, require_coverage, summary_json } => merge(&files, require_coverage, summary_json),
        Command::Tap { listen, server, trace, pcapng, quiet, once, snaplen, payload_bytes } => {
            let options = TapOptions { listen, server, trace, pcapng, quiet, snaplen, payload_bytes };
            tap(&options, once)
        }
        Command::Trace { file, pcapng: Some(out), .. } => to_pcapng(&file, &out),
        Command::Trace { file, diff: Some(other), diff_limit, .. } => {
            match harness::trace::diff::diff_trace_files(&file, &other, diff_limit, &mut std::io::stdout().lock()) {
                Ok(summary) if summary.differ() => ExitCode::FAILURE,
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("miglab trace: {}", error_chain(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Trace { file, session, step, payload_bytes, pcapng: None, diff: None, .. } => {
            let options = DecodeOptions { session, step, payload_bytes };
            match decode_trace_file(&file, &options, &mut std::io::stdout().lock()) {
                Ok(summary) if summary.has_problems() => ExitCode::FAILURE,
                Ok(_) => ExitCode::SUCCESS,
                // A pager or `head` that stopped reading.
                Err(harness::trace::TraceError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("miglab trace: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { args } => {
            vfu_server::cli::main_with_args(std::iter::once(std::ffi::OsString::from("vfu-server")).chain(args))
        }
        Command::MockQemu { args } => {
            mock_qemu::cli::main_with_args(std::iter::once(std::ffi::OsString::from("mock-qemu")).chain(args))
        }
        Command::Check { paths } => check(&paths),
        Command::List { dir } => list(&dir),
        Command::Schema => {
            print!("{}", scenario::schema::schema_text());
            ExitCode::SUCCESS
        }
    }
}

fn tap(options: &TapOptions, once: bool) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    match harness::wiretap::run(options, once) {
        Ok(summary) if summary.findings.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(harness::wiretap::EXIT_FINDINGS),
        Err(e) => {
            eprintln!("miglab tap: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// `miglab trace FILE --pcapng OUT`.
fn to_pcapng(file: &Path, out: &Path) -> ExitCode {
    let converted = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display())).and_then(|input| {
        let output = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
        harness::trace::pcapng::trace_to_pcapng(std::io::BufReader::new(input), std::io::BufWriter::new(output))
            .map_err(|e| error_chain(&e))
    });
    match converted {
        Ok(stats) => {
            println!(
                "{}: {} messages as packets ({} event lines skipped, {} malformed lines)",
                out.display(),
                stats.packets,
                stats.events,
                stats.malformed
            );
            if stats.malformed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("miglab trace: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for path in paths {
        match load_path(path) {
            Ok(s) => println!("{}: ok ({}, {} steps)", path.display(), s.name.value, s.steps.len()),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn list(dir: &std::path::Path) -> ExitCode {
    let files = match scenario::scenario_files(dir) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let mut rows = Vec::new();
    for path in &files {
        match load_path(path) {
            Ok(s) => rows.push((s.name.value, s.description)),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, description) in rows {
        let description = description.split_whitespace().collect::<Vec<_>>().join(" ");
        println!("{name:width$}  {description}");
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The scenario file for a name or a path: an existing path, else `scenarios/NAME.yaml`.
fn resolve(name: &str) -> PathBuf {
    let path = Path::new(name);
    if path.exists() || name.ends_with(".yaml") {
        return path.to_owned();
    }
    Path::new("scenarios").join(format!("{name}.yaml"))
}

fn run(
    name: &str,
    seed: Option<u64>,
    reports: PathBuf,
    server: ServerArgs,
    concurrent: bool,
    strict: bool,
) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let file = resolve(name);
    let scenario = match load_path(&file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match server.servers() {
        Ok(servers) => servers,
        Err(code) => return code,
    };
    let options = RunOptions { seed, server, reports: Some(reports), concurrent, strict };
    match run_scenario(&scenario, &file, &options) {
        Ok(out) => {
            print!("{}", harness::report::terminal_rounds(&out.report));
            print!("{}", harness::report::terminal_summary(&out.report));
            if let Some(w) = &out.written {
                println!("report: {}", w.summary.display());
            }
            match (out.report.passed(), out.report.findings.is_empty()) {
                (false, _) => ExitCode::FAILURE,
                (true, true) => ExitCode::SUCCESS,
                // Passed, with known deviations reported.
                (true, false) => ExitCode::from(DEVIATIONS_ONLY),
            }
        }
        Err(e) => {
            eprintln!("miglab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_range(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("{s:?}: expected A..B"))?;
    let (a, b) = (a.parse::<u64>().map_err(|e| e.to_string())?, b.parse::<u64>().map_err(|e| e.to_string())?);
    if a >= b {
        return Err(format!("{s:?}: expected A below B"));
    }
    Ok(a..b)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected a number and s, m or h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: expected a unit of s, m or h")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected I/N"))?;
    let (i, n) = (i.parse::<u64>().map_err(|e| e.to_string())?, n.parse::<u64>().map_err(|e| e.to_string())?);
    if n == 0 || i >= n {
        return Err(format!("{s:?}: expected I below N"));
    }
    Ok((i, n))
}

fn fuzz(args: FuzzArgs) -> ExitCode {
    let FuzzArgs {
        seeds,
        time,
        jobs,
        shard,
        no_shrink,
        concurrent,
        regressions,
        reports,
        device,
        require_coverage,
        summary_json,
        print,
        server,
    } = args;
    if print {
        let Some(seeds) = seeds.filter(|s| s.end != u64::MAX) else {
            eprintln!("miglab fuzz --print: give --seeds A..B");
            return ExitCode::FAILURE;
        };
        for seed in seeds {
            print!("---\n{}", harness::fuzz::generate::generate_for(seed, device).render(None));
        }
        return ExitCode::SUCCESS;
    }
    let shrink = !no_shrink;
    let seeds = seeds.unwrap_or_else(|| {
        // A fresh seed, printed below so the campaign can be run again.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let start = (now.as_nanos() as u64 ^ u64::from(std::process::id())) % 1_000_000_000_000;
        start..u64::MAX
    });
    if time.is_none() && seeds.end == u64::MAX {
        eprintln!("miglab fuzz: give --seeds A..B or --time DURATION (or both)");
        return ExitCode::FAILURE;
    }
    if concurrent && device != DeviceKind::DmaEngine {
        eprintln!("miglab fuzz: --concurrent needs the dma-engine's background writer (--device dma-engine)");
        return ExitCode::FAILURE;
    }
    let server = match server.servers() {
        Ok(servers) => servers,
        Err(code) => return code,
    };
    let end = if seeds.end == u64::MAX { "…".to_string() } else { seeds.end.to_string() };
    println!(
        "fuzz: seeds {}..{end}, shard {}/{}, {jobs} jobs{}{}",
        seeds.start,
        shard.0,
        shard.1,
        time.map(|t| format!(", for {}s", t.as_secs())).unwrap_or_default(),
        if concurrent { ", concurrent" } else { "" }
    );
    let bar = match time {
        Some(t) => indicatif::ProgressBar::new(t.as_secs()),
        None => indicatif::ProgressBar::new((seeds.end - seeds.start).div_ceil(shard.1)),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let options = harness::fuzz::FuzzOptions {
        seeds: seeds.clone(),
        time,
        jobs,
        shard,
        server,
        device,
        concurrent,
        regressions: Some(regressions),
        reports,
        shrink,
        progress: true,
    };
    let tick = |runs: u64, failures: usize| {
        let rate = runs as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(if time.is_some() { started.elapsed().as_secs() } else { runs });
        bar.set_message(format!("{runs} runs, {failures} failing, {rate:.1} runs/s"));
    };
    let summary = harness::fuzz::campaign(&options, &tick);
    bar.finish_and_clear();
    println!(
        "{} runs in {:.1}s: {:.1} runs/s, {} failing way(s), {} generator error(s); shrinking {:.1}s",
        summary.runs,
        summary.elapsed.as_secs_f64(),
        summary.rate(),
        summary.findings.len(),
        summary.generator_errors.len(),
        summary.shrink_elapsed.as_secs_f64()
    );
    let file = CampaignSummary::from_campaign(&summary, &options);
    conclude("fuzz", &file, require_coverage, summary_json.as_deref())
}

/// Prints a campaign's (or a merge's) summary, writes it when asked, and gives its verdict.
fn conclude(command: &str, summary: &CampaignSummary, require_coverage: bool, json: Option<&Path>) -> ExitCode {
    print!("{}", summary.render(require_coverage));
    if let Some(path) = json
        && let Err(e) = summary.write(path)
    {
        eprintln!("miglab {command}: {e}");
        return ExitCode::FAILURE;
    }
    if summary.passed(require_coverage) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn merge(files: &[PathBuf], require_coverage: bool, summary_json: Option<PathBuf>) -> ExitCode {
    let mut parts = Vec::new();
    for path in files {
        match CampaignSummary::read(path) {
            Ok(part) => parts.push(part),
            Err(e) => {
                eprintln!("miglab merge: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let merged = CampaignSummary::merge(&parts);
    let shards: Vec<String> = merged.shards.iter().map(|(i, n)| format!("{i}/{n}")).collect();
    let seeds: Vec<String> = merged.seeds.iter().map(|r| format!("{}..{}", r.start, r.end)).collect();
    println!(
        "merged {} summaries: seeds {}, shards {}: {} runs in {:.1}s of runs, {} failing way(s), {} generator error(s)",
        parts.len(),
        seeds.join(", "),
        shards.join(", "),
        merged.runs,
        merged.elapsed_secs,
        merged.findings.len(),
        merged.generator_errors.len()
    );
    conclude("merge", &merged, require_coverage, summary_json.as_deref())
}
