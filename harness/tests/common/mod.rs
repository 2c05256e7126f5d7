//! Processes of the harness's own executable for the tests that need real ones: `miglab
//! serve` (vfu-server), `miglab tap`, `miglab mock-qemu`. Each writes its output to a file in
//! the test's directory, is waited for with a deadline, and is killed if still running when
//! dropped.
#![allow(dead_code)] // each test crate uses its own subset

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to start listening or to finish.
pub const DEADLINE: Duration = Duration::from_secs(120);
/// Interval between polls of a condition that has a deadline.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `cond` until it holds, or panics with `what` once `deadline` passed.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A running `miglab` process.
pub struct Proc {
    name: String,
    child: Option<Child>,
    out: PathBuf,
}

impl Proc {
    /// Starts `miglab ARGS`, its output to `DIR/NAME.out`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let out = dir.join(format!("{name}.out"));
        let file = File::create(&out).expect("the output file is created");
        let child = Command::new(env!("CARGO_BIN_EXE_miglab"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the output file is shared"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting miglab {args:?}: {e}"));
        Proc { name: name.to_owned(), child: Some(child), out }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until it exits; its status.
    pub fn wait(&mut self) -> ExitStatus {
        let mut status = None;
        let child = self.child.as_mut().expect("not waited for yet");
        wait_for(&format!("{} exits", self.name), DEADLINE, || {
            status = child.try_wait().expect("waiting for a child");
            status.is_some()
        });
        self.child = None;
        status.expect("exited")
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A dma-engine server (`miglab serve`) listening at `DIR/NAME.sock`.
pub fn server(dir: &Path, name: &str) -> (Proc, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let path = socket.display().to_string();
    let mut p = Proc::start(dir, name, &["serve", "--socket", &path, "--device", "dma-engine", "--devmem-size", "1M"]);
    wait_for(&format!("{name} listens"), DEADLINE, || {
        assert!(p.running(), "{name} exited:\n{}", p.output());
        socket.exists()
    });
    (p, socket)
}
