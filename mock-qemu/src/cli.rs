//! The `mock-qemu` command line (`info`, `migrate`, `incoming`), in the library so that other
//! executables can run it too: `miglab mock-qemu ARGS` is this, which lets the harness's tests
//! start real mock-qemu processes from the one executable cargo builds for them.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::client::TraceOptions;
use crate::{Client, ClientOptions};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// Exit code when `--strict` found deviations from the specification.
const EXIT_FINDINGS: u8 = 3;

#[derive(Parser)]
#[command(
    version,
    about = "A vfio-user client that drives a device the way QEMU does",
    after_help = "Exit status: 0 success, 1 error, 3 with --strict: the server deviated from the specification \
                  (the findings are printed at the end)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// How to reach and talk to the server; shared by every subcommand that connects.
#[derive(Args)]
struct ConnectArgs {
    /// The server's UNIX socket.
    #[arg(long)]
    socket: PathBuf,
    #[command(flatten)]
    client: ClientFlags,
    /// Ask for twin-socket mode (server-to-client DMA messages on their own socket).
    #[arg(long)]
    twin_socket: bool,
}

/// Flags of the client that every subcommand shares.
#[derive(Args)]
struct ClientFlags {
    /// Reply timeout in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Report every deviation from the specification as a finding, printed at the end (exit
    /// status 3 if there is any) instead of tolerating it as the reference server's quirks.
    #[arg(long)]
    strict: bool,
    /// Write every message, both ways (both sides for `migrate`), to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Leave the timestamps out of the trace, so identical conversations give identical files.
    #[arg(long, requires = "trace")]
    trace_no_time: bool,
}

impl ConnectArgs {
    /// Connects (tracing from the first message) and negotiates.
    fn connect(&self) -> anyhow::Result<Client> {
        let opts = ClientOptions::with_timeout(Duration::from_secs(self.client.timeout))
            .strict(self.client.strict)
            .twin_socket(self.twin_socket);
        let mut client = Client::connect(&self.socket, opts.timeout)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        client.set_strict(opts.strict);
        if let Some(path) = &self.client.trace {
            let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let options = TraceOptions { timestamps: !self.client.trace_no_time, ..TraceOptions::default() };
            client.set_trace_with(Box::new(BufWriter::new(file)), options);
        }
        client.negotiate(&opts.capabilities).with_context(|| format!("negotiating with {}", self.socket.display()))?;
        Ok(client)
    }
}

/// How a migration runs.
#[derive(Args)]
struct MigrateArgs {
    /// The source server's UNIX socket.
    #[arg(long)]
    from: PathBuf,
    /// The destination server's UNIX socket (both sides run in this process).
    #[arg(long, required_unless_present = "to_stream", conflicts_with = "to_stream")]
    to: Option<PathBuf>,
    /// Instead of --to: send the migration stream to a `mock-qemu incoming` in another process,
    /// at unix:PATH or tcp:HOST:PORT; digests are printed for comparison with its own.
    #[arg(long, value_name = "ADDR")]
    to_stream: Option<crate::migrate::StreamAddr>,
    /// Guest RAM, laid out like a PC (below 3 GiB, the rest from 4 GiB), e.g. 256M, 6G.
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    ram: u64,
    /// Seed of the workload (vCPU writes and device DMA during pre-copy).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// vCPU page writes per workload step.
    #[arg(long, default_value_t = 16)]
    vcpu_writes: usize,
    /// Device DMA commands per workload step (a dma-engine only).
    #[arg(long, default_value_t = 2)]
    dma_commands: usize,
    /// Most pre-copy rounds before switching over anyway.
    #[arg(long, default_value_t = 30)]
    max_rounds: u32,
    /// Downtime the switchover budget allows, in milliseconds.
    #[arg(long, default_value_t = 300)]
    downtime_ms: u64,
    /// Bandwidth of the switchover budget in MiB/s (default: measured each round).
    #[arg(long)]
    bandwidth_mib: Option<u64>,
    /// Do not use PRE_COPY even if the device offers it (RUNNING→STOP→STOP_COPY at switchover).
    #[arg(long)]
    no_pre_copy: bool,
    /// Bytes asked for by each MIG_DATA_READ (QEMU's data_buffer_size), e.g. 1M, 4K, 7; any
    /// size, the device's records are cut wherever it falls.
    #[arg(long, value_parser = parse_read_size, default_value = "1M")]
    read_size: u32,
    /// Most MIG_DATA_READs in one pre-copy iteration (QEMU reads 1); without it or
    /// --max-bandwidth, each iteration reads the device's whole round.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    reads_per_iteration: Option<u32>,
    /// Rate limit of pre-copy device data per second (QEMU's max-bandwidth), e.g. 100M: an
    /// iteration reads while its 100 ms window has room, and may switch over with data unread.
    #[arg(long, value_parser = parse_size)]
    max_bandwidth: Option<u64>,
    /// What carries the migration stream: pipe, unix, tcp.
    #[arg(long, default_value = "pipe")]
    transport: String,
    /// Write bytes to the source device before migrating, as its guest driver would:
    /// REGION:OFFSET:HEX (e.g. 0:0x10:01000000); may be repeated.
    #[arg(long, value_name = "REGION:OFFSET:HEX", value_parser = parse_device_write)]
    device_write: Vec<(u32, u64, Vec<u8>)>,
    /// Compare a device region between the stopped source and the running destination after
    /// the migration: REGION:OFFSET:LEN (e.g. 1:0:0x3000); may be repeated.
    #[arg(long, value_name = "REGION:OFFSET:LEN", value_parser = parse_compare_region)]
    compare_region: Vec<(u32, u64, u32)>,
    /// Print the statistics as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientFlags,
}

fn parse_device_write(s: &str) -> Result<(u32, u64, Vec<u8>), String> {
    let mut parts = s.splitn(3, ':');
    let (Some(region), Some(offset), Some(hex)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{s:?}: expected REGION:OFFSET:HEX"));
    };
    let number = |t: &str| match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    let region =
        number(region).ok().and_then(|r| u32::try_from(r).ok()).ok_or(format!("{region:?}: not a region index"))?;
    let offset = number(offset).map_err(|_| format!("{offset:?}: not an offset"))?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(format!("{hex:?}: expected an even number of hex digits"));
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or(""), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("{hex:?}: not hex"))?;
    Ok((region, offset, bytes))
}

fn parse_compare_region(s: &str) -> Result<(u32, u64, u32), String> {
    let mut parts = s.splitn(3, ':');
    let (Some(region), Some(offset), Some(len)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{s:?}: expected REGION:OFFSET:LEN"));
    };
    let region =
        parse_size(region).ok().and_then(|r| u32::try_from(r).ok()).ok_or(format!("{region:?}: not a region index"))?;
    let offset = parse_size(offset)?;
    let len = parse_size(len)?;
    let len = u32::try_from(len).ok().filter(|&l| l > 0).ok_or(format!("{len}: a length from 1 to 4 GiB - 1"))?;
    Ok((region, offset, len))
}

fn parse_read_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n).ok().filter(|&n| n > 0).ok_or(format!("{n}: a read size from 1 byte to 4 GiB - 1"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    vfu_server::devices::dma_engine::parse_size(s).map_err(|e| e.to_string())
}

/// Runs a migration and prints its figures and verdict.
fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    use crate::migrate::{CancelToken, Iteration, MigrationParams, PairOptions, SharedTrace, migrate_between};
    use crate::stream::Transport;
    let transport = match args.transport.as_str() {
        "pipe" => Transport::Pipe,
        "tcp" => Transport::Tcp,
        "unix" => Transport::Unix(std::env::temp_dir().join(format!("mock-qemu-{}.sock", std::process::id()))),
        other => anyhow::bail!("--transport {other}: expected pipe, unix or tcp"),
    };
    let trace = match &args.client.trace {
        Some(path) => {
            let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
            Some(SharedTrace::new(Box::new(BufWriter::new(file))))
        }
        None => None,
    };
    let options = PairOptions {
        ram: args.ram,
        seed: args.seed,
        vcpu_writes: args.vcpu_writes,
        dma_per_step: args.dma_commands,
        params: MigrationParams {
            max_rounds: args.max_rounds,
            bandwidth: args.bandwidth_mib.map(|m| m << 20),
            downtime: Duration::from_millis(args.downtime_ms),
            use_pre_copy: !args.no_pre_copy,
            read_size: args.read_size,
            iteration: Iteration { reads: args.reads_per_iteration, max_bandwidth: args.max_bandwidth },
            ..MigrationParams::default()
        },
        transport,
        client: ClientOptions::with_timeout(Duration::from_secs(args.client.timeout)).strict(args.client.strict),
        trace: trace.clone(),
        trace_timestamps: !args.client.trace_no_time,
        device_writes: args.device_write.clone(),
        compare_regions: args.compare_region.clone(),
    };
    let Some(to) = &args.to else {
        let Some(addr) = &args.to_stream else { anyhow::bail!("--to or --to-stream is needed") };
        let report = crate::migrate::outgoing(&args.from, addr, &options)
            .map_err(|e| anyhow::anyhow!("{e}: {}", crate::migrate::error_chain(&e)))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report.stats).context("encoding the statistics")?);
        } else {
            println!("{}", report.stats);
        }
        println!("source at stop: {}", report.digests);
        return Ok(ExitCode::SUCCESS);
    };
    let result = migrate_between(&args.from, to, &options, &CancelToken::default());
    if let Some(mut t) = trace {
        use std::io::Write as _;
        t.flush().context("writing the trace")?;
    }
    let report = result.map_err(|e| anyhow::anyhow!("{e}: {}", crate::migrate::error_chain(&e)))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.stats).context("encoding the statistics")?);
    } else {
        println!("{}", report.stats);
    }
    if report.equal() {
        println!(
            "destination equals source: guest RAM ({} MiB){}; {} pages written by vCPUs and {} by the device during pre-copy",
            args.ram >> 20,
            if report.device_compared {
                " and device state"
            } else {
                " (device state not compared: not a dma-engine, and no --compare-region)"
            },
            report.vcpu_pages,
            report.device_pages
        );
    } else {
        println!("DESTINATION DIFFERS FROM SOURCE");
        for page in report.ram_diff.iter().take(20) {
            println!("  guest page {page:#x} differs");
        }
        if report.ram_diff.len() > 20 {
            println!("  ... {} guest pages in all", report.ram_diff.len());
        }
        for d in &report.device_diff {
            println!("  device: {d}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if args.client.strict {
        print!("{}", crate::info::findings(&report.findings));
        if !report.findings.is_empty() {
            return Ok(ExitCode::from(EXIT_FINDINGS));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The destination half of a migration between two processes.
#[derive(Args)]
struct IncomingArgs {
    /// The destination server's UNIX socket.
    #[arg(long)]
    socket: PathBuf,
    /// Where to listen for the migration stream: unix:PATH or tcp:PORT.
    #[arg(long, value_name = "ADDR")]
    listen: crate::migrate::StreamAddr,
    /// Guest RAM, laid out like a PC; must be the source's.
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    ram: u64,
    #[command(flatten)]
    client: ClientFlags,
}

/// Loads one migration stream into the destination; prints what it loaded and its digests.
fn incoming(args: IncomingArgs) -> anyhow::Result<ExitCode> {
    let options = crate::migrate::PairOptions {
        ram: args.ram,
        client: ClientOptions::with_timeout(Duration::from_secs(args.client.timeout)).strict(args.client.strict),
        ..Default::default()
    };
    let report = crate::migrate::incoming(&args.socket, &args.listen, &options)
        .map_err(|e| anyhow::anyhow!("{e}: {}", crate::migrate::error_chain(&e)))?;
    println!(
        "guest started after {} rounds: {} device bytes, {} pages loaded",
        report.loaded.rounds, report.loaded.device_bytes, report.loaded.pages
    );
    println!("destination at start: {}", report.digests);
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum Cmd {
    /// Wait for a migration stream from `mock-qemu migrate --to-stream` in another process and
    /// load it into a destination server; the guest starts only from a stream that checked out.
    Incoming(IncomingArgs),
    /// Migrate a running device and its guest from one server to another, the way QEMU does,
    /// with a workload during pre-copy; print per-round figures and whether the destination
    /// equals the source.
    Migrate(MigrateArgs),
    /// Print what the device behind a socket exposes: IDs, regions, sparse areas, IRQs and
    /// migration support.
    Info {
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// Runs the `mock-qemu` command line with `args` (`args[0]` is the program name, as for
/// `std::env::args_os`) and returns the process's exit code: clap's for a parse error (2, or 0
/// for `--help` and `--version`), 1 for a failure (printed as `mock-qemu: error: ...` with its
/// causes), 3 for `--strict` findings. Tracing goes to stderr unless a global subscriber is
/// already set.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mock-qemu: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints strict mode's findings; the exit code they call for.
fn report_findings(client: &mut Client) -> ExitCode {
    if !client.is_strict() {
        return ExitCode::SUCCESS;
    }
    let findings = client.take_findings();
    print!("{}", crate::info::findings(&findings));
    if findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FINDINGS) }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // A caller (a test, or `miglab` with its own subscriber) may have set one: theirs wins.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    match cli.command {
        Cmd::Migrate(args) => migrate(args),
        Cmd::Incoming(args) => incoming(args),
        Cmd::Info { conn } => {
            let mut client = conn.connect()?;
            let caps = client.server_caps().clone();
            let text = crate::info::describe(&mut client, &caps)
                .with_context(|| format!("querying {}", conn.socket.display()))?;
            print!("{text}");
            Ok(report_findings(&mut client))
        }
    }
}
