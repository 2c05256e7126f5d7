//! `vfu-server`: serves one sample device on a UNIX socket.
//!
//! Logs go to stderr (filter with `RUST_LOG`, default `info`). SIGTERM or SIGINT removes the
//! socket file and exits 0.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use vfu_server::devices::dma_engine::{DmaEngine, DmaEngineConfig, parse_size};
use vfu_server::wire::MigState;
use vfu_server::{Device, Server, ServerConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceKind {
    /// The DMA engine: registers, device memory, a doorbell that runs DMA commands.
    DmaEngine,
}

#[derive(Debug, Parser)]
#[command(version, about = "Serve a vfio-user device on a UNIX socket")]
struct Cli {
    /// Path of the UNIX socket to listen on (a stale socket file is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// The device to serve.
    #[arg(long, value_enum)]
    device: DeviceKind,
    /// dma-engine: size of device memory (BAR2), e.g. 8M, 64K, 1G; a power of two.
    #[arg(long, value_parser = parse_size_arg, default_value = "8M")]
    devmem_size: u64,
    /// dma-engine fault injection: refuse the migration arc FROM:TO with EIO (states: running,
    /// stop, stop-copy, resuming, pre-copy), e.g. pre-copy:stop-copy.
    #[arg(long, value_name = "FROM:TO", value_parser = parse_arc)]
    fail_arc: Option<(MigState, MigState)>,
    /// dma-engine fault injection: fail MIG_DATA_READ with EIO once this many bytes of a
    /// migration stream were read, e.g. 4M.
    #[arg(long, value_name = "BYTES", value_parser = parse_size_arg)]
    fail_read_after: Option<u64>,
    /// Largest data transfer accepted in one message (advertised as max_data_xfer_size).
    #[arg(long, value_parser = parse_size_arg, default_value = "1M")]
    max_data_xfer_size: u64,
    /// Serve a single client, then exit.
    #[arg(long)]
    once: bool,
}

fn parse_state(s: &str) -> Result<MigState, String> {
    Ok(match s {
        "running" => MigState::Running,
        "stop" => MigState::Stop,
        "stop-copy" => MigState::StopCopy,
        "resuming" => MigState::Resuming,
        "pre-copy" => MigState::PreCopy,
        other => return Err(format!("{other:?}: expected running, stop, stop-copy, resuming or pre-copy")),
    })
}

fn parse_arc(s: &str) -> Result<(MigState, MigState), String> {
    let (from, to) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected FROM:TO"))?;
    Ok((parse_state(from)?, parse_state(to)?))
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn build_device(cli: &Cli) -> anyhow::Result<Box<dyn Device>> {
    Ok(match cli.device {
        DeviceKind::DmaEngine => Box::new(
            DmaEngine::new(DmaEngineConfig {
                devmem_size: cli.devmem_size,
                fail_arc: cli.fail_arc,
                fail_read_after: cli.fail_read_after,
                ..DmaEngineConfig::default()
            })
            .context("invalid dma-engine options")?,
        ),
    })
}

/// Blocks SIGINT/SIGTERM in every thread and handles them on a dedicated one: the socket file
/// is removed and the process exits 0.
fn handle_signals(socket: &Path) -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    let socket = socket.to_path_buf();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let sig = set.wait();
        let _ = std::fs::remove_file(&socket);
        tracing::info!(signal = ?sig.ok(), socket = %socket.display(), "stopping; socket removed");
        std::process::exit(0);
    })?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfu-server: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let device = build_device(&cli)?;
    let max_data_xfer_size =
        u32::try_from(cli.max_data_xfer_size).context("--max-data-xfer-size must be below 4 GiB")?;
    let config = ServerConfig { max_data_xfer_size, ..ServerConfig::default() };
    handle_signals(&cli.socket)?;
    let mut server = Server::bind(&cli.socket, device, config)?;
    tracing::info!(socket = %cli.socket.display(), device = ?cli.device, "listening");
    if cli.once {
        let end = server.serve_one()?;
        tracing::info!(?end, "client gone; exiting (--once)");
        return Ok(());
    }
    server.serve_forever()?;
    Ok(())
}
