//! `miglab`: the scenario tool. `miglab scenario NAME|PATH` runs a scenario and writes its
//! report, `miglab check PATH...` validates scenario files, `miglab list` shows the scenarios
//! of a directory with their descriptions, `miglab trace FILE` decodes a message trace for a
//! person, `miglab schema` prints the JSON Schema of the format. `miglab serve` is
//! `vfu-server` itself: the runner starts its servers from this executable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use harness::run::{RunOptions, ServerCommand, run_scenario};
use harness::scenario::{self, load_path};
use harness::trace::{DecodeOptions, decode_trace_file};

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
        /// A vfu-server-compatible executable to test instead of the built-in server.
        #[arg(long)]
        server: Option<PathBuf>,
        /// Concurrent mode: the device's background writer does DMA from a device thread during
        /// each migration, racing the dirty reports (the trace no longer replays byte for byte).
        #[arg(long)]
        concurrent: bool,
    },
    /// Decode a message trace (a report's trace.jsonl, or any trace of mock-qemu's format).
    Trace {
        /// The trace file.
        file: PathBuf,
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

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Scenario { scenario, seed, reports, server, concurrent } => {
            run(&scenario, seed, reports, server, concurrent)
        }
        Command::Trace { file, session, step, payload_bytes } => {
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
        Command::Check { paths } => check(&paths),
        Command::List { dir } => list(&dir),
        Command::Schema => {
            print!("{}", scenario::schema::schema_text());
            ExitCode::SUCCESS
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

fn run(name: &str, seed: Option<u64>, reports: PathBuf, server: Option<PathBuf>, concurrent: bool) -> ExitCode {
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
    let server = match server {
        Some(p) => ServerCommand::external(p),
        None => match std::env::current_exe() {
            Ok(exe) => ServerCommand::miglab(exe),
            Err(e) => {
                eprintln!("miglab: finding its own executable: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let options = RunOptions { seed, server, reports: Some(reports), concurrent };
    match run_scenario(&scenario, &file, &options) {
        Ok(out) => {
            print!("{}", harness::report::terminal_rounds(&out.report));
            print!("{}", harness::report::terminal_summary(&out.report));
            if let Some(w) = &out.written {
                println!("report: {}", w.summary.display());
            }
            if out.report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("miglab: {e}");
            ExitCode::FAILURE
        }
    }
}
