//! `mock-qemu`: a vfio-user client in QEMU's role.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mock_qemu::Client;

#[derive(Parser)]
#[command(version, about = "A vfio-user client that drives a device the way QEMU does")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print what the device behind a socket exposes: IDs, regions, sparse areas, IRQs.
    Info {
        /// The server's UNIX socket.
        #[arg(long)]
        socket: PathBuf,
        /// Reply timeout in seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-qemu: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Info { socket, timeout } => {
            let mut client = Client::connect_and_negotiate(&socket, Duration::from_secs(timeout))
                .with_context(|| format!("talking to {}", socket.display()))?;
            let caps = client.server_caps().clone();
            print!("{}", mock_qemu::info::describe(&mut client, &caps)?);
        }
    }
    Ok(())
}
