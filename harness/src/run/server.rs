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

use crate::scenario::load::SOCKET_PLACEHOLDER;
use crate::scenario::model::{DmaEngineOptions, ServerSpec, ServersSpec, Side};

/// How long a server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The device scenarios are written for, by vfu-server's name for it.
pub const DEFAULT_DEVICE: &str = "dma-engine";

/// The program that serves a side: `vfu-server`'s command line (reached through the `miglab
/// serve` subcommand by default, or any executable taking the same flags), or another
/// server's own command with `{socket}` where its socket path goes.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    /// The executable.
    pub program: PathBuf,
    /// How its arguments are made.
    pub args: ServerArgs,
    /// Whether it is this project's own server (`miglab serve`): its log names every
    /// migration arc it takes the device through (`migration arc from=Running to=Stop`), which
    /// the runner checks against the model's walk, and it tolerates itself none of the known
    /// deviations of other servers.
    pub logs_arcs: bool,
    /// Whether it is this project's own server as linked into `miglab`, which the runner may
    /// serve on a thread of its own instead of a process ([`super::hosted`]).
    pub threadable: bool,
    /// Whether its dirty reports are exact at its logging page size (this project's own
    /// server): no bit over a logging page the device did not write.
    pub exact_reports: bool,
}

/// What serves each side of a run: the scenario's choice, unless overridden.
#[derive(Debug, Clone)]
pub struct Servers {
    /// The built-in server (`vfu-server`'s flags), where neither the scenario nor an override
    /// names another.
    pub builtin: ServerCommand,
    /// Commands that override the scenario's, source first.
    pub overrides: [Option<ServerCommand>; 2],
}

impl From<ServerCommand> for Servers {
    fn from(builtin: ServerCommand) -> Self {
        Self { builtin, overrides: [None, None] }
    }
}

impl Servers {
    /// The command-line arguments that choose these servers again (none for the defaults).
    pub fn replay_args(&self) -> Vec<String> {
        let [source, destination] = &self.overrides;
        let mut args = Vec::new();
        match (source, destination) {
            (Some(s), Some(d)) if s.shell_line() == d.shell_line() => args.extend(["--server".into(), s.shell_line()]),
            _ => {
                for (flag, c) in [("--source-server", source), ("--destination-server", destination)] {
                    if let Some(c) = c {
                        args.extend([flag.into(), c.shell_line()]);
                    }
                }
            }
        }
        let named = [Some(&self.builtin), source.as_ref(), destination.as_ref()].into_iter().flatten().find_map(|c| {
            match &c.args {
                ServerArgs::Flags { device: Some(d), .. } => Some(d.clone()),
                _ => None,
            }
        });
        if let Some(d) = named {
            args.extend(["--server-device".into(), d]);
        }
        args
    }

    /// The command that serves `side` of a scenario whose file chose `spec`.
    pub fn resolve(&self, spec: &ServersSpec, side: Side) -> Result<ServerCommand, String> {
        let i = match side {
            Side::Source => 0,
            Side::Destination => 1,
        };
        if let Some(c) = &self.overrides[i] {
            return Ok(c.clone());
        }
        match spec.of(side) {
            ServerSpec::Builtin => Ok(self.builtin.clone()),
            ServerSpec::Command(argv) => ServerCommand::template(argv.value.clone()),
        }
    }
}

/// How a server's arguments are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerArgs {
    /// `vfu-server`'s flags (`--socket`, `--device`, the device's options, the fault hooks)
    /// after `prefix` (`["serve"]` for `miglab serve`).
    Flags {
        /// Arguments before the flags.
        prefix: Vec<OsString>,
        /// The device name passed as `--device` instead of the scenario's, for a server that
        /// calls its device otherwise.
        device: Option<String>,
    },
    /// The command's own arguments, each `{socket}` replaced by the socket path: no device
    /// options and no fault hooks reach it.
    Template(Vec<String>),
}

impl ServerCommand {
    /// `miglab serve`, from a path to the `miglab` executable.
    pub fn miglab(exe: impl Into<PathBuf>) -> Self {
        let args = ServerArgs::Flags { prefix: vec!["serve".into()], device: None };
        Self { program: exe.into(), args, logs_arcs: true, threadable: true, exact_reports: true }
    }

    /// A `vfu-server`-compatible executable.
    pub fn external(program: impl Into<PathBuf>) -> Self {
        let args = ServerArgs::Flags { prefix: Vec::new(), device: None };
        Self { program: program.into(), args, logs_arcs: false, threadable: false, exact_reports: false }
    }

    /// Another server's command, program first, with `{socket}` where its socket path goes.
    pub fn template(argv: Vec<String>) -> Result<Self, String> {
        if let Some(why) = crate::scenario::load::command_problem(&argv) {
            return Err(format!("{why}: {argv:?}"));
        }
        let program = PathBuf::from(&argv[0]);
        Ok(Self {
            program,
            args: ServerArgs::Template(argv[1..].to_vec()),
            logs_arcs: false,
            threadable: false,
            exact_reports: false,
        })
    }

    /// A command line as a shell would split it: another server's command when it holds
    /// `{socket}`, else a `vfu-server`-compatible executable (and its first arguments).
    pub fn parse(line: &str) -> Result<Self, String> {
        let argv = shlex::split(line).ok_or_else(|| format!("{line:?}: unbalanced quotes"))?;
        let Some(first) = argv.first() else { return Err("an empty server command".into()) };
        if argv.iter().any(|a| a.contains(SOCKET_PLACEHOLDER)) {
            return Self::template(argv);
        }
        let args = ServerArgs::Flags { prefix: argv[1..].iter().map(OsString::from).collect(), device: None };
        Ok(Self { program: PathBuf::from(first), args, logs_arcs: false, threadable: false, exact_reports: false })
    }

    /// The same command serving the device its server calls `name`.
    pub fn with_device(self, name: impl Into<String>) -> Self {
        match self.args {
            ServerArgs::Flags { prefix, .. } => {
                Self { args: ServerArgs::Flags { prefix, device: Some(name.into()) }, ..self }
            }
            ServerArgs::Template(_) => self,
        }
    }

    /// Whether it takes vfu-server's fault hooks.
    pub fn takes_hooks(&self) -> bool {
        matches!(self.args, ServerArgs::Flags { .. })
    }

    /// The command for a person: program and arguments, `{socket}` left in.
    pub fn display(&self) -> String {
        self.words().join(" ")
    }

    /// The command as one line a shell splits back into it (what `--server` takes).
    pub fn shell_line(&self) -> String {
        let words = self.words();
        shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| words.join(" "))
    }

    fn words(&self) -> Vec<String> {
        let args: Vec<String> = match &self.args {
            ServerArgs::Flags { prefix, .. } => prefix.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
            ServerArgs::Template(argv) => argv.clone(),
        };
        std::iter::once(self.program.display().to_string()).chain(args).collect()
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
    /// Fault hooks for a server that takes none.
    #[error("device hooks (fail-arc, fail-read-after) need vfu-server's flags; {command} takes none")]
    NoHooks {
        /// The command.
        command: String,
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
    /// Starts a server on `socket` serving `device` (vfu-server's name for it), its log in
    /// `log`, and waits until it listens.
    pub fn start(
        command: &ServerCommand,
        socket: &Path,
        log: &Path,
        device: &str,
        options: &DmaEngineOptions,
        hooks: &Hooks,
    ) -> Result<Self, ServerError> {
        let args = server_args(command, socket, device, options, hooks)?;
        let spawn_err = |source| ServerError::Spawn { program: command.program.display().to_string(), source };
        let log_file = File::create(log).map_err(spawn_err)?;
        let out = log_file.try_clone().map_err(spawn_err)?;
        let _ = std::fs::remove_file(socket);
        let child = Command::new(&command.program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
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

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// How it exited, once it has: waits up to `timeout` for it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    // A child's exit has no fd to block on here.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                _ => return None,
            }
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
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

/// The arguments `command` is started with to serve `device` on `socket`.
pub(super) fn server_args(
    command: &ServerCommand,
    socket: &Path,
    device: &str,
    options: &DmaEngineOptions,
    hooks: &Hooks,
) -> Result<Vec<OsString>, ServerError> {
    Ok(match &command.args {
        ServerArgs::Flags { prefix, device: named } => {
            flags(prefix, socket, named.as_deref().unwrap_or(device), device, options, hooks)
        }
        ServerArgs::Template(argv) => {
            if *hooks != Hooks::default() {
                return Err(ServerError::NoHooks { command: command.display() });
            }
            let path = socket.to_string_lossy();
            argv.iter().map(|a| OsString::from(a.replace(SOCKET_PLACEHOLDER, &path))).collect()
        }
    })
}

/// The last lines of the log at `path`.
pub(super) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The migration arcs the log at `path` records after byte `offset`, in order.
pub(super) fn arcs_after(path: &Path, offset: u64) -> Vec<(MigState, MigState)> {
    let text = std::fs::read(path).unwrap_or_default();
    let tail = text.get(usize::try_from(offset).unwrap_or(usize::MAX)..).unwrap_or_default();
    String::from_utf8_lossy(tail).lines().filter_map(parse_arc).collect()
}

/// vfu-server's flags for `device` (`options` only where it is the dma-engine).
fn flags(
    prefix: &[OsString],
    socket: &Path,
    name: &str,
    device: &str,
    options: &DmaEngineOptions,
    hooks: &Hooks,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = prefix.to_vec();
    args.extend(["--socket".into(), socket.as_os_str().to_owned(), "--device".into(), name.into()]);
    if device == DEFAULT_DEVICE {
        args.extend(["--devmem-size".into(), options.devmem_size.value.bytes().to_string().into()]);
        args.extend(["--chunk-size".into(), options.chunk_size.value.bytes().to_string().into()]);
        args.extend(["--max-data-xfer-size".into(), options.max_data_xfer_size.bytes().to_string().into()]);
        if !options.pre_copy {
            args.push("--no-pre-copy".into());
        }
    }
    for &(from, to) in &hooks.fail_arcs {
        args.extend(["--fail-arc".into(), format!("{}:{}", state_name(from), state_name(to)).into()]);
    }
    if let Some(n) = hooks.fail_read_after {
        args.extend(["--fail-read-after".into(), n.to_string().into()]);
    }
    args
}

/// The migration arcs a server log at `path` records.
pub fn arcs_in(path: &Path) -> Vec<(MigState, MigState)> {
    arcs_after(path, 0)
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

    #[test]
    fn a_command_line_with_its_socket_placeholder_is_another_servers_command() {
        let c = ServerCommand::parse("/opt/lvu/build/samples/server -v '{socket}'").expect("it parses");
        assert_eq!(c.program, Path::new("/opt/lvu/build/samples/server"));
        assert_eq!(c.args, ServerArgs::Template(vec!["-v".into(), "{socket}".into()]));
        assert!(!c.takes_hooks() && !c.logs_arcs);
    }

    #[test]
    fn a_command_line_without_the_placeholder_is_a_vfu_server_compatible_executable() {
        let c = ServerCommand::parse("./my-server --verbose").expect("it parses");
        assert_eq!(c.args, ServerArgs::Flags { prefix: vec!["--verbose".into()], device: None });
        assert!(c.takes_hooks());
    }

    #[test]
    fn a_command_line_with_unbalanced_quotes_is_refused() {
        assert!(ServerCommand::parse("server 'oops {socket}").is_err());
    }

    #[test]
    fn the_replay_arguments_choose_the_same_servers_again() {
        let theirs = ServerCommand::parse("/opt/lvu/server -v 'dir with space/{socket}'").expect("it parses");
        let servers = Servers { builtin: ServerCommand::miglab("miglab"), overrides: [Some(theirs.clone()), None] };
        let args = servers.replay_args();
        assert_eq!(args[0], "--source-server");
        let again = ServerCommand::parse(&args[1]).expect("the replayed line parses");
        assert_eq!((again.program, again.args), (theirs.program.clone(), theirs.args.clone()));
        let both =
            Servers { builtin: ServerCommand::miglab("miglab"), overrides: [Some(theirs.clone()), Some(theirs)] };
        assert_eq!(both.replay_args()[0], "--server");
    }
}
