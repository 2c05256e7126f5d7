//! `mock-qemu`: a vfio-user client in QEMU's role.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use mock_qemu::client::TraceOptions;
use mock_qemu::{Client, ClientOptions};

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
    /// Reply timeout in seconds.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// Report every deviation from the specification as a finding, printed at the end (exit
    /// status 3 if there is any) instead of tolerating it as the reference server's quirks.
    #[arg(long)]
    strict: bool,
    /// Write every message, both ways, to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Leave the timestamps out of the trace, so identical conversations give identical files.
    #[arg(long, requires = "trace")]
    trace_no_time: bool,
    /// Ask for twin-socket mode (server-to-client DMA messages on their own socket).
    #[arg(long)]
    twin_socket: bool,
}

impl ConnectArgs {
    /// Connects (tracing from the first message) and negotiates.
    fn connect(&self) -> anyhow::Result<Client> {
        let opts = ClientOptions::with_timeout(Duration::from_secs(self.timeout))
            .strict(self.strict)
            .twin_socket(self.twin_socket);
        let mut client = Client::connect(&self.socket, opts.timeout)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        client.set_strict(opts.strict);
        if let Some(path) = &self.trace {
            let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let options = TraceOptions { timestamps: !self.trace_no_time, ..TraceOptions::default() };
            client.set_trace_with(Box::new(BufWriter::new(file)), options);
        }
        client.negotiate(&opts.capabilities).with_context(|| format!("negotiating with {}", self.socket.display()))?;
        Ok(client)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Print what the device behind a socket exposes: IDs, regions, sparse areas, IRQs and
    /// migration support.
    Info {
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

fn main() -> ExitCode {
    match run() {
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
    print!("{}", mock_qemu::info::findings(&findings));
    if findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FINDINGS) }
}

fn run() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Info { conn } => {
            let mut client = conn.connect()?;
            let caps = client.server_caps().clone();
            let text = mock_qemu::info::describe(&mut client, &caps)
                .with_context(|| format!("querying {}", conn.socket.display()))?;
            print!("{text}");
            Ok(report_findings(&mut client))
        }
    }
}
