//! `vfu-server` processes: started with a scenario's device options and fault hooks, each on
//! its own socket, killed with SIGKILL when a scenario says so, and always reaped.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vfu_server::wire::MigState;

use crate::scenario::model::DmaEngineOptions;

/// How long a server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The device scenarios are written for, by vfu-server's name for it.
pub const DEFAULT_DEVICE: &str = "dma-engine";

/// The program that serves a device: `vfu-server`'s command line, reached through the
/// `miglab serve` subcommand by default, or any executable taking the same flags.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the server's own flags (`["serve"]` for `miglab serve`).
    pub prefix: Vec<OsString>,
    /// Whether its log names every migration arc it takes the device through, as
    /// vfu-server's does (`migration arc from=Running to=Stop`): the runner then checks each
    /// walk against the model's.
    pub logs_arcs: bool,
    /// The device name passed as `--device`: `dma-engine`, or what another server calls its
    /// dma-engine-compatible device.
    pub device: String,
}

impl ServerCommand {
    /// `miglab serve`, from a path to the `miglab` executable.
    pub fn miglab(exe: impl Into<PathBuf>) -> Self {
        Self { program: exe.into(), prefix: vec!["serve".into()], logs_arcs: true, device: DEFAULT_DEVICE.into() }
    }

    /// A `vfu-server`-compatible executable.
    pub fn external(program: impl Into<PathBuf>) -> Self {
        Self { program: program.into(), prefix: Vec::new(), logs_arcs: false, device: DEFAULT_DEVICE.into() }
    }

    /// The same command serving the device its server calls `name`.
    pub fn with_device(self, name: impl Into<String>) -> Self {
        Self { device: name.into(), ..self }
    }
}

/// The fault hooks a server starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Arcs the device refuses with EIO.
    pub fail_arcs: Vec<(MigState, MigState)>,
    /// Bytes of an outgoing stream after which reads fail with EIO.
    pub fail_read_after: Option<u64>,
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The process could not be spawned.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The executable.
        program: String,
        /// The cause.
        source: io::Error,
    },
    /// It exited before listening.
    #[error("the server exited ({status}) before listening on {socket}; its log:\n{log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The socket it was to listen on.
        socket: String,
        /// The end of its log.
        log: String,
    },
    /// It did not listen in time.
    #[error("the server did not listen on {socket} within {timeout:?}")]
    NotListening {
        /// The socket.
        socket: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// A running server.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

fn state_name(s: MigState) -> &'static str {
    match s {
        MigState::Running => "running",
        MigState::Stop => "stop",
        MigState::StopCopy => "stop-copy",
        MigState::Resuming => "resuming",
        MigState::PreCopy => "pre-copy",
        _ => "error",
    }
}

impl ServerProcess {
    /// Starts a dma-engine server on `socket`, its log in `log`, and waits until it listens.
    pub fn start(
        command: &ServerCommand,
        socket: &Path,
        log: &Path,
        options: &DmaEngineOptions,
        hooks: &Hooks,
    ) -> Result<Self, ServerError> {
        let mut args: Vec<OsString> = command.prefix.clone();
        args.extend([
            "--socket".into(),
            socket.as_os_str().to_owned(),
            "--device".into(),
            command.device.clone().into(),
        ]);
        args.extend(["--devmem-size".into(), options.devmem_size.value.bytes().to_string().into()]);
        args.extend(["--chunk-size".into(), options.chunk_size.value.bytes().to_string().into()]);
        args.extend(["--max-data-xfer-size".into(), options.max_data_xfer_size.bytes().to_string().into()]);
        if !options.pre_copy {
            args.push("--no-pre-copy".into());
        }
        for &(from, to) in &hooks.fail_arcs {
            args.extend(["--fail-arc".into(), format!("{}:{}", state_name(from), state_name(to)).into()]);
        }
        if let Some(n) = hooks.fail_read_after {
            args.extend(["--fail-read-after".into(), n.to_string().into()]);
        }
        let spawn_err = |source| ServerError::Spawn { program: command.program.display().to_string(), source };
        let log_file = File::create(log).map_err(spawn_err)?;
        let _ = std::fs::remove_file(socket);
        let child = Command::new(&command.program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .env("RUST_LOG", std::env::var("MIGLAB_SERVER_LOG").unwrap_or_else(|_| "info".into()))
            .spawn()
            .map_err(spawn_err)?;
        let mut server = Self { child, socket: socket.to_owned(), log: log.to_owned() };
        server.wait_listening()?;
        Ok(server)
    }

    /// Waits until a connection to the socket would be accepted: the socket file exists and
    /// the process is alive (the client retries a refused connect itself).
    fn wait_listening(&mut self) -> Result<(), ServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pause = Duration::from_micros(200);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ServerError::Exited {
                    status: status.to_string(),
                    socket: self.socket.display().to_string(),
                    log: self.log_tail(),
                });
            }
            if self.socket.exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ServerError::NotListening {
                    socket: self.socket.display().to_string(),
                    timeout: START_TIMEOUT,
                });
            }
            // Nothing to block on: the socket file appears when the server binds it.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log's length now, to read what comes after with [`arcs_since`](Self::arcs_since).
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// The migration arcs the log records after byte `offset`, in order.
    pub fn arcs_since(&self, offset: u64) -> Vec<(MigState, MigState)> {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let tail = text.get(usize::try_from(offset).unwrap_or(usize::MAX)..).unwrap_or_default();
        String::from_utf8_lossy(tail).lines().filter_map(parse_arc).collect()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The migration arcs a server log at `path` records.
pub fn arcs_in(path: &Path) -> Vec<(MigState, MigState)> {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&text).lines().filter_map(parse_arc).collect()
}

/// The arc of a `migration arc from=X to=Y` log line.
fn parse_arc(line: &str) -> Option<(MigState, MigState)> {
    let rest = &line[line.find("migration arc ")? + "migration arc ".len()..];
    let state = |key: &str| -> Option<MigState> {
        let v = rest.split_whitespace().find_map(|w| w.strip_prefix(key))?;
        Some(match v {
            "Running" => MigState::Running,
            "Stop" => MigState::Stop,
            "StopCopy" => MigState::StopCopy,
            "Resuming" => MigState::Resuming,
            "PreCopy" => MigState::PreCopy,
            _ => return None,
        })
    };
    Some((state("from=")?, state("to=")?))
}

/// Connects to a server's socket, retrying a refused connection (between bind and listen)
/// until `timeout`.
pub fn connect(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arc_line_of_the_log_gives_its_two_states() {
        let line =
            "2026-12-01T19:16:28.990756Z  INFO vfu_server::migration::control: migration arc from=Running to=PreCopy";
        assert_eq!(parse_arc(line), Some((MigState::Running, MigState::PreCopy)));
        assert_eq!(parse_arc("INFO device refused the arc from=Stop to=Resuming errno=EIO"), None);
    }
}
