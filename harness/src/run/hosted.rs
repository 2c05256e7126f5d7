//! Where a side's server runs: a process of its own, or — for this project's own server — a
//! thread of the runner.
//!
//! Starting a process costs a fork, an exec and the dynamic linking of a large executable, and
//! then a wait until its socket appears; a fuzz campaign starts a few servers per scenario.
//! The built-in server's library is linked into `miglab` already, so a side whose scenario
//! never SIGKILLs it is served on a thread instead: the same `vfu_server` code, configured
//! from the same command line, on a real UNIX socket that listens before
//! [`HostedServer::start`] returns, its log (with the migration arcs the runner checks) in the
//! same file. Another server's command, and a side a scenario kills, get a process.

use std::fs::File;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use vfu_server::wire::MigState;

use super::server::{Hooks, ServerArgs, ServerCommand, ServerError, ServerProcess, arcs_after, log_tail, server_args};
use crate::scenario::model::DmaEngineOptions;

/// A running server, however it runs.
#[derive(Debug)]
pub enum HostedServer {
    /// A process (killed with SIGKILL and reaped when dropped).
    Process(ServerProcess),
    /// A thread of the runner (stopped and joined when dropped).
    Thread(ThreadServer),
}

impl HostedServer {
    /// Starts `command` on `socket` (see [`ServerProcess::start`]); on a thread when
    /// `threaded` and the command is this project's own server.
    pub fn start(
        command: &ServerCommand,
        threaded: bool,
        socket: &Path,
        log: &Path,
        device: &str,
        options: &DmaEngineOptions,
        hooks: &Hooks,
    ) -> Result<Self, ServerError> {
        if threaded && command.threadable {
            let args = server_args(command, socket, device, options, hooks)?;
            // `miglab serve`'s own word goes: what follows is vfu-server's command line.
            let skip = match &command.args {
                ServerArgs::Flags { prefix, .. } => prefix.len(),
                ServerArgs::Template(_) => 0,
            };
            return ThreadServer::start(&args[skip..], socket, log).map(Self::Thread);
        }
        ServerProcess::start(command, socket, log, device, options, hooks).map(Self::Process)
    }

    /// The process id, for a server that is a process.
    pub fn pid(&self) -> Option<i32> {
        match self {
            Self::Process(p) => Some(p.pid()),
            Self::Thread(_) => None,
        }
    }

    /// Whether it still serves.
    pub fn alive(&mut self) -> bool {
        match self {
            Self::Process(p) => p.alive(),
            Self::Thread(t) => !t.finished(),
        }
    }

    /// The log's length now, to read what comes after with [`arcs_since`](Self::arcs_since).
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(self.log()).map_or(0, |m| m.len())
    }

    /// The migration arcs the log records after byte `offset`, in order.
    pub fn arcs_since(&self, offset: u64) -> Vec<(MigState, MigState)> {
        arcs_after(self.log(), offset)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(self.log())
    }

    /// How it ended, once it has: waits up to `timeout` for a process to exit. A thread serves
    /// until it is stopped, so one that ended on its own failed.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        match self {
            Self::Process(p) => p.wait_exit(timeout),
            Self::Thread(t) => t.finished().then(|| std::os::unix::process::ExitStatusExt::from_raw(1 << 8)),
        }
    }

    /// Ends it now: SIGKILL for a process, a stop for a thread.
    pub fn kill(&mut self) {
        match self {
            Self::Process(p) => p.kill(),
            Self::Thread(t) => t.stop(),
        }
    }

    fn log(&self) -> &Path {
        match self {
            Self::Process(p) => p.log(),
            Self::Thread(t) => &t.log,
        }
    }
}

/// What the serving thread and its owner share.
#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    /// The client being served, to end its session from outside.
    session: Mutex<Option<UnixStream>>,
}

/// A server served on a thread of the runner.
#[derive(Debug)]
pub struct ThreadServer {
    socket: PathBuf,
    log: PathBuf,
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl ThreadServer {
    /// Binds the server vfu-server's command line `args` describes (its `--socket` is
    /// `socket`) and serves it on a new thread, logging into `log` as the process would.
    fn start(args: &[std::ffi::OsString], socket: &Path, log: &Path) -> Result<Self, ServerError> {
        let spawn_err = |source| ServerError::Spawn { program: "the built-in server".into(), source };
        let file = File::create(log).map_err(spawn_err)?;
        let _ = std::fs::remove_file(socket);
        let argv = std::iter::once(std::ffi::OsString::from("vfu-server")).chain(args.iter().cloned());
        let mut server = vfu_server::cli::bind_from_args(argv).map_err(|e| ServerError::Exited {
            status: "refused".into(),
            socket: socket.display().to_string(),
            log: format!("{e:#}"),
        })?;
        let level = std::env::var("MIGLAB_SERVER_LOG").unwrap_or_else(|_| "info".into());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| "info".into()))
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .finish();
        let control = Arc::new(Control::default());
        let shared = control.clone();
        let thread = std::thread::Builder::new()
            .name("vfu-server".into())
            .spawn(move || {
                let _log = tracing::subscriber::set_default(subscriber);
                tracing::info!(socket = %server.path().display(), "listening");
                serve(&mut server, &shared);
            })
            .map_err(spawn_err)?;
        Ok(Self { socket: socket.to_owned(), log: log.to_owned(), control, thread: Some(thread) })
    }

    /// Whether the serving thread ended.
    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Ends the session being served (its client sees the connection close), stops
    /// accepting, and waits for the thread: the server, its device and its socket file are
    /// gone, and its log is complete.
    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.control.session.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wakes the accept; the thread sees the flag and returns.
        let _ = UnixStream::connect(&self.socket);
        let _ = thread.join();
    }
}

/// Accepts and serves clients one after another until told to stop.
fn serve(server: &mut vfu_server::Server, control: &Control) {
    loop {
        let stream = match server.listener().accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::error!(error = %e, "accepting a client failed");
                return;
            }
        };
        // Stored before the flag is read again: either the stopper sees the stream and shuts
        // it down, or this sees the flag.
        *control.session.lock().unwrap_or_else(PoisonError::into_inner) = stream.try_clone().ok();
        if control.stop.load(Ordering::SeqCst) {
            return;
        }
        server.serve_stream(stream);
        *control.session.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        self.stop();
    }
}
