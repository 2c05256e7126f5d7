//! `miglab`: the scenario tool. `miglab check PATH...` validates scenario files, `miglab list`
//! shows the scenarios of a directory with their descriptions, `miglab schema` prints the JSON
//! Schema of the format.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use harness::scenario::{self, load_path};

#[derive(Debug, Parser)]
#[command(version, about = "Scenarios for vfio-user live migration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
