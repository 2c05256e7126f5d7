//! The `vfu-server` command line, as a library function.
//!
//! It lives in the library rather than in the binary so that another executable can serve a
//! device from its own binary: the harness's `miglab` has a hidden `miglab serve ...`
//! subcommand that calls [`main_with_args`], so a scenario spawns its servers from the one
//! executable it was built as, with no second binary to find or keep in step. `vfu-server`
//! itself is `main_with_args(std::env::args_os())`.
//!
//! ```text
//! vfu-server --socket PATH --device dma-engine [--devmem-size SIZE] [--chunk-size SIZE]
//!            [--no-pre-copy] [--fail-arc FROM:TO]... [--fail-read-after BYTES]
//!            [--max-data-xfer-size SIZE] [--once]
//! vfu-server --socket PATH --device libvfio-user-sample [--max-data-xfer-size SIZE] [--once]
//! ```
//!
//! Sizes take binary units (`4096`, `0x1000`, `64K`, `8M`, `1G`: see [`parse_size`]); the
//! dma-engine options map one to one onto [`DmaEngineConfig`] and are checked by
//! [`DmaEngineConfig::validate`] before the socket is bound. States in `--fail-arc` are
//! `running`, `stop`, `stop-copy`, `resuming` and `pre-copy`.
//!
//! Logs go to stderr (filter with `RUST_LOG`, default `info`) unless the caller installed a
//! global tracing subscriber first. SIGTERM or SIGINT removes the socket file and exits the
//! process with 0, which is why [`main_with_args`] is meant for a process that does nothing
//! else.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use nix::sys::signal::{SigSet, Signal};

use crate::devices::dma_engine::{DmaEngine, DmaEngineConfig, parse_size};
use crate::devices::lvu_sample::{self, LvuSample};
use crate::wire::MigState;
use crate::{Device, Server, ServerConfig};

/// The sample devices the command line can serve.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceKind {
    /// The DMA engine: registers, device memory, a doorbell that runs DMA commands.
    DmaEngine,
    /// The reference C library's sample device (libvfio-user's samples/server.c): a BAR0
    /// timer, a sparse-mmap BAR1, INTx and a DMA test; serves that library's sample client.
    LibvfioUserSample,
}

#[derive(Debug, Parser)]
#[command(name = "vfu-server", version, about = "Serve a vfio-user device on a UNIX socket")]
struct Cli {
    /// Path of the UNIX socket to listen on (a stale socket file is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// The device to serve.
    #[arg(long, value_enum)]
    device: DeviceKind,
    /// dma-engine: size of device memory (BAR2), e.g. 8M, 64K, 1G; a power of two.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg, default_value = "8M")]
    devmem_size: u64,
    /// dma-engine: bytes moved per DMA access (the bounce buffer), e.g. 4K, 1M; a power of
    /// two from 4K to 1M.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg, default_value = "64K")]
    chunk_size: u64,
    /// dma-engine: migrate by stop-and-copy only: the MIGRATION feature advertises STOP_COPY
    /// without PRE_COPY, and every state change touching PRE_COPY is refused with EINVAL.
    #[arg(long)]
    no_pre_copy: bool,
    /// dma-engine fault injection: refuse the direct migration arc FROM:TO with EIO (states:
    /// running, stop, stop-copy, resuming, pre-copy), e.g. pre-copy:stop-copy; may be given
    /// several times.
    #[arg(long, value_name = "FROM:TO", value_parser = parse_arc)]
    fail_arc: Vec<(MigState, MigState)>,
    /// dma-engine fault injection: fail MIG_DATA_READ with EIO once this many bytes of a
    /// migration stream were read, e.g. 4M.
    #[arg(long, value_name = "BYTES", value_parser = parse_size_arg)]
    fail_read_after: Option<u64>,
    /// Largest data transfer accepted in one message (advertised as max_data_xfer_size).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg, default_value = "1M")]
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

impl Cli {
    /// The dma-engine configuration the flags ask for (not yet validated: [`DmaEngine::new`]
    /// does that).
    fn dma_engine_config(&self) -> anyhow::Result<DmaEngineConfig> {
        let chunk_size = usize::try_from(self.chunk_size)
            .with_context(|| format!("--chunk-size {} does not fit this machine's address space", self.chunk_size))?;
        Ok(DmaEngineConfig {
            devmem_size: self.devmem_size,
            chunk_size,
            pre_copy: !self.no_pre_copy,
            fail_arcs: self.fail_arc.iter().copied().collect(),
            fail_read_after: self.fail_read_after,
        })
    }

    fn build_device(&self) -> anyhow::Result<Box<dyn Device>> {
        Ok(match self.device {
            DeviceKind::DmaEngine => {
                Box::new(DmaEngine::new(self.dma_engine_config()?).context("invalid dma-engine options")?)
            }
            DeviceKind::LibvfioUserSample => {
                if self.no_pre_copy || !self.fail_arc.is_empty() || self.fail_read_after.is_some() {
                    anyhow::bail!("--no-pre-copy, --fail-arc and --fail-read-after are dma-engine options");
                }
                Box::new(LvuSample::new().context("creating BAR1's shared memory")?)
            }
        })
    }

    /// The server's limits: the reference library's for its sample device (eight fds per
    /// message, short MIG_DATA_READ replies padded), the specification's otherwise.
    fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let max_data_xfer_size =
            u32::try_from(self.max_data_xfer_size).context("--max-data-xfer-size must be below 4 GiB")?;
        let config = ServerConfig { max_data_xfer_size, ..ServerConfig::default() };
        Ok(match self.device {
            DeviceKind::DmaEngine => config,
            DeviceKind::LibvfioUserSample => lvu_sample::server_config(config),
        })
    }
}

/// Runs the `vfu-server` command line with `args` (`args[0]` is the program name, as for
/// `std::env::args_os`) and returns the process's exit code.
///
/// Parse errors print clap's message and return its code (2, or 0 for `--help` and
/// `--version`); any other failure prints `vfu-server: error: ...` with its causes and returns
/// [`ExitCode::FAILURE`]. Tracing goes to stderr unless a global subscriber is already set.
///
/// Once the options are valid this takes the process over: SIGINT and SIGTERM are blocked in
/// the calling thread (and so in every thread it starts afterwards) and handled by a thread
/// that removes the socket file and exits the process with 0. The caller's own `main` should
/// return what this returns and do nothing else.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    // A caller (a test, or `miglab` with its own subscriber) may have set one: theirs wins.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Colours only on a terminal: a log written to a file is read by people and tools.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfu-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Binds the server the command line `args` describes (`args[0]` is the program name) without
/// taking the process over: no logging set up, no signal handling, nothing served yet. For a
/// caller that serves it on a thread of its own with exactly the devices and limits the
/// `vfu-server` command line gives; `--once` is the caller's to honour.
pub fn bind_from_args<I, T>(args: I) -> anyhow::Result<Server>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    let device = cli.build_device()?;
    let config = cli.server_config()?;
    Ok(Server::bind(&cli.socket, device, config)?)
}

/// Blocks SIGINT/SIGTERM in every thread and handles them on a dedicated one: the socket file
/// is removed and the process exits 0.
fn handle_signals(socket: &Path) -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    let socket = socket.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = set.wait();
            let _ = std::fs::remove_file(&socket);
            tracing::info!(signal = ?sig.ok(), socket = %socket.display(), "stopping; socket removed");
            std::process::exit(0);
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let device = cli.build_device()?;
    let config = cli.server_config()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::dma_engine::{ArcSet, ConfigError};
    use MigState::{PreCopy, Resuming, Running, Stop, StopCopy};
    use pretty_assertions::assert_eq;

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let base = ["vfu-server", "--socket", "/nonexistent/vfu.sock", "--device", "dma-engine"];
        Cli::try_parse_from(base.iter().chain(extra))
    }

    fn config(extra: &[&str]) -> DmaEngineConfig {
        parse(extra).unwrap().dma_engine_config().unwrap()
    }

    #[test]
    fn defaults_are_the_device_defaults() {
        assert_eq!(config(&[]), DmaEngineConfig::default());
    }

    #[test]
    fn every_dma_engine_flag_reaches_the_config() {
        let got = config(&[
            "--devmem-size",
            "1M",
            "--chunk-size",
            "4K",
            "--no-pre-copy",
            "--fail-arc",
            "stop:stop-copy",
            "--fail-read-after",
            "0x100",
        ]);
        let want = DmaEngineConfig {
            devmem_size: 1 << 20,
            chunk_size: 4 << 10,
            pre_copy: false,
            fail_arcs: ArcSet::from([(Stop, StopCopy)]),
            fail_read_after: Some(0x100),
        };
        assert_eq!(got, want);
    }

    #[test]
    fn fail_arc_may_be_given_several_times() {
        let got =
            config(&["--fail-arc", "pre-copy:stop-copy", "--fail-arc", "resuming:stop", "--fail-arc", "stop:resuming"]);
        assert_eq!(got.fail_arcs, ArcSet::from([(PreCopy, StopCopy), (Resuming, Stop), (Stop, Resuming)]));
    }

    #[test]
    fn a_malformed_arc_or_size_is_a_usage_error() {
        for extra in [
            &["--fail-arc", "running"][..],
            &["--fail-arc", "running:error"],
            &["--fail-arc", "stopped:running"],
            &["--chunk-size", "4Q"],
        ] {
            let e = parse(extra).expect_err(&format!("{extra:?}"));
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{extra:?}: {e}");
        }
    }

    #[test]
    fn invalid_device_options_fail_before_binding() {
        for (extra, want) in [
            (&["--chunk-size", "3K"][..], ConfigError::BadChunkSize { size: 3 << 10 }),
            (&["--fail-arc", "running:stop-copy"], ConfigError::FailArcNotAnArc { from: Running, to: StopCopy }),
            (
                &["--no-pre-copy", "--fail-arc", "running:pre-copy"],
                ConfigError::FailArcNeedsPreCopy { from: Running, to: PreCopy },
            ),
        ] {
            let e = parse(extra).unwrap().build_device().map(|_| ()).expect_err(&format!("{extra:?}"));
            assert_eq!(e.downcast_ref::<ConfigError>(), Some(&want), "{extra:?}: {e:#}");
        }
    }

    /// Only arguments that fail to parse: past parsing, `main_with_args` would install a global
    /// subscriber in the test process (the failure exit code of a valid parse is checked
    /// against the binary in `tests/migration_without_pre_copy.rs`).
    #[test]
    fn main_with_args_returns_clap_s_exit_code_without_exiting() {
        assert_eq!(main_with_args(["vfu-server", "--version"]), ExitCode::SUCCESS);
        assert_eq!(main_with_args(["vfu-server", "--no-such-flag"]), ExitCode::from(2));
        assert_eq!(
            main_with_args(["vfu-server", "--socket", "/x", "--device", "dma-engine", "--fail-arc", "x"]),
            ExitCode::from(2)
        );
    }
}
