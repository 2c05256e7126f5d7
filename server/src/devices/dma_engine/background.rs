//! The background writer: a device thread that keeps writing guest memory while the device
//! runs, concurrently with the client's requests (dirty-page reports above all).
//!
//! # Writes
//!
//! Write number `k` (`k` = BG_WRITES when it starts) stores the 8-byte little-endian value
//! `splitmix64(BG_SEED + k)` at guest address
//! `BG_ADDR + 8 * (splitmix64(BG_SEED ^ k * 0x9e37_79b9_7f4a_7c15) % (BG_LEN / 8))` (wrapping
//! arithmetic, [`splitmix64`] of [`pattern`](super::pattern); [`background_write`] computes
//! both). It goes through the [`DmaSpace`], so its page is marked dirty when logging is on,
//! after the bytes are written, as for every device write; only then is BG_WRITES
//! incremented. So a client that reads BG_WRITES = `n` knows that writes `0..n` are in memory
//! and marked. (Write `n` itself may already be in memory, and marked, before BG_WRITES
//! counts it.)
//!
//! Writes go only to writable regions mapped with an fd ([`DmaSpace::write_direct`]): the
//! thread cannot send DMA_WRITE messages, as the socket belongs to the session. A write that
//! reaches anything else (unmapped memory, a read-only region, a region mapped without an fd)
//! writes nothing and stops the writer: BG_STATUS FAULT, BG_CTRL 0. Enabling it on an invalid
//! window (BG_LEN 0 or not a multiple of 8, BG_ADDR not 8-byte aligned, a window that wraps)
//! faults it at once, before the BG_CTRL write returns; so does changing BG_ADDR or BG_LEN to
//! such a window while it is enabled. A fault is cleared by writing BG_CTRL again: bit 0 clear
//! (IDLE) or set (enable again, from BG_WRITES as it is).
//!
//! BG_SEED, BG_ADDR, BG_LEN and BG_INTERVAL_US may be written while the writer is enabled: the
//! write after the change uses the new values. A 64-bit register written as two halves is used
//! half-written in between, so program them before enabling.
//!
//! # Lifecycle
//!
//! The thread writes only while BG_CTRL bit 0 is set and the device is RUNNING or PRE_COPY.
//!
//! - Every migration arc that leaves RUNNING or PRE_COPY for a stopped state (RUNNING→STOP,
//!   PRE_COPY→STOP_COPY) parks it before the arc returns: no write is in flight or to come once
//!   the server replies to the SET, and BG_STATUS reads PAUSED. (So the REGISTERS record of the
//!   migration stream, frozen on PRE_COPY→STOP_COPY, holds the final BG_WRITES.) An arc back to
//!   RUNNING (STOP→RUNNING) resumes it from BG_WRITES; a refused arc changes nothing.
//! - Writing BG_CTRL with bit 0 clear returns only once the thread is parked (BG_STATUS IDLE).
//! - A guest reset (CTRL) and DEVICE_RESET park it and zero every BG_* register.
//! - While the device is stopped every BAR0 write is refused (EBUSY), so the writer can be
//!   neither enabled nor reprogrammed then; BG_* reads are served in every state.
//! - When the client disconnects the server has already unmapped its DMA regions: the thread
//!   is stopped and joined, and an enabled writer reads FAULT (its next write would have hit
//!   unmapped memory). A device left anywhere but RUNNING is reset by the server first, which
//!   zeroes the BG_* registers instead.
//! - Dropping the device stops and joins the thread.
//!
//! The thread holds a clone of the [`DmaSpace`] `Arc`, never a region: each write looks its
//! region up under the table's read lock, so a write either completes on a region still mapped
//! (and DMA_UNMAP waits for it) or finds it gone and faults. The thread is started the first
//! time the writer runs and then parks on a condition variable when it must not write; a
//! device driven with a [`DeviceContext`] built by [`DeviceContext::new`], which offers no
//! shared table, cannot run it (enabling faults it).
//!
//! # Synchronisation
//!
//! The BG_* registers are part of [`Registers`], a plain value, and have one
//! owner at a time. While the writer is parked they live in the device's state, and the session
//! thread reads and writes them like any register. Handing them to the thread (when it is to
//! run) moves them into a `Mutex` shared with it: the thread then counts BG_WRITES there and
//! may record a fault, the session's BAR0 reads overlay their BG_* bytes from there (so a read
//! sees every write the thread has counted), and anything else that needs them (a BG_* or CTRL
//! write, an arc to a stopped state, a reset, a disconnect) first parks the thread, which moves
//! them back. Parking sets the thread's mode to "park" under the mutex and waits on the
//! condition variable until no write is in flight: the thread marks a write in flight under the
//! mutex before it starts it (after checking the mode), and clears the mark and counts the
//! write under the mutex after it completes. The write itself runs without the mutex, so a
//! register read never waits for guest memory; the pause between two writes is a wait on the
//! condition variable, so parking never waits for it. No lock of the [`DmaSpace`] is ever held
//! while the mutex is taken, so the two cannot deadlock.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::DmaEngine;
use super::pattern::{SPLITMIX64_GAMMA, splitmix64};
use super::regs::{BgRegisters, BgStatus, Registers};
use crate::device::DeviceContext;
use crate::dma::DmaSpace;

/// Write number `k` of a writer seeded with `seed` on the window `addr`+`len`: its guest
/// address and the value it stores there (little-endian), or `None` if the window is invalid
/// (see [`BgRegisters::window_is_valid`]).
pub fn background_write(seed: u64, addr: u64, len: u64, k: u64) -> Option<(u64, u64)> {
    let window = BgRegisters { seed, addr, len, ..BgRegisters::default() };
    if !window.window_is_valid() {
        return None;
    }
    let slot = splitmix64(seed ^ k.wrapping_mul(SPLITMIX64_GAMMA)) % (len / 8);
    Some((addr + 8 * slot, splitmix64(seed.wrapping_add(k))))
}

/// What the session wants the thread to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Write (the thread owns the registers).
    Run,
    /// Do not start another write.
    Park,
    /// Return.
    Exit,
}

/// What the session and the thread share, under [`Shared::inner`].
struct Inner {
    /// The registers, while the thread owns them.
    regs: BgRegisters,
    mode: Mode,
    /// A write has started and is not counted yet.
    in_flight: bool,
    /// The table the writes go through, from the context that last handed the registers over.
    dma: Option<Arc<DmaSpace>>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Signalled when the mode changes (for the thread) and when a write ends (for a parker).
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        self.changed.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }
}

/// The session's side of the background writer: the thread, and whether it owns the
/// registers.
pub(super) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The registers were handed to the thread and not taken back.
    handed: bool,
}

impl Default for Writer {
    fn default() -> Self {
        let inner = Inner { regs: BgRegisters::default(), mode: Mode::Park, in_flight: false, dma: None };
        Self {
            shared: Arc::new(Shared { inner: Mutex::new(inner), changed: Condvar::new() }),
            thread: None,
            handed: false,
        }
    }
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").field("thread", &self.thread.is_some()).field("handed", &self.handed).finish()
    }
}

impl Writer {
    /// The registers as they are now: the thread's, if it owns them, else `parked`.
    fn current(&self, parked: BgRegisters) -> BgRegisters {
        if self.handed { self.shared.lock().regs } else { parked }
    }

    /// Makes sure no write is in flight or to come, and returns the registers if the thread
    /// owned them.
    fn park(&mut self) -> Option<BgRegisters> {
        if !self.handed {
            return None;
        }
        self.handed = false;
        let mut g = self.shared.lock();
        if g.mode == Mode::Run {
            g.mode = Mode::Park;
        }
        while g.in_flight {
            g = self.shared.wait(g);
        }
        Some(g.regs)
    }

    /// Hands `regs` to the thread (starting it if needed), which writes from BG_WRITES on.
    fn run(&mut self, regs: BgRegisters, dma: Arc<DmaSpace>) -> std::io::Result<()> {
        debug_assert!(!self.handed, "the registers are handed over once");
        {
            let mut g = self.shared.lock();
            (g.regs, g.dma, g.mode) = (regs, Some(dma), Mode::Run);
        }
        if self.thread.is_none() {
            let shared = Arc::clone(&self.shared);
            match std::thread::Builder::new().name("dmae-bg-writer".into()).spawn(move || writer_loop(&shared)) {
                Ok(t) => self.thread = Some(t),
                Err(e) => {
                    let mut g = self.shared.lock();
                    (g.mode, g.dma) = (Mode::Park, None);
                    return Err(e);
                }
            }
        }
        self.shared.changed.notify_all();
        self.handed = true;
        Ok(())
    }

    /// Stops and joins the thread (parking it first); returns the registers if it owned them.
    fn stop(&mut self) -> Option<BgRegisters> {
        let regs = self.park();
        if let Some(thread) = self.thread.take() {
            {
                let mut g = self.shared.lock();
                (g.mode, g.dma) = (Mode::Exit, None);
            }
            self.shared.changed.notify_all();
            if thread.join().is_err() {
                tracing::error!("dma-engine: the background writer panicked");
            }
        }
        self.shared.lock().dma = None;
        regs
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread: one write at a time while the mode is [`Mode::Run`].
fn writer_loop(shared: &Shared) {
    let mut g = shared.lock();
    loop {
        match g.mode {
            Mode::Exit => return,
            Mode::Park => {
                g = shared.wait(g);
                continue;
            }
            Mode::Run => {}
        }
        let (regs, dma) = (g.regs, g.dma.clone());
        g.in_flight = true;
        drop(g);
        let done = dma.is_some_and(|dma| write_one(&dma, &regs));
        g = shared.lock();
        g.in_flight = false;
        if done {
            g.regs.writes = g.regs.writes.wrapping_add(1);
        } else {
            g.regs.fault();
            if g.mode == Mode::Run {
                g.mode = Mode::Park;
            }
        }
        shared.changed.notify_all();
        if g.mode != Mode::Run {
            continue;
        }
        if regs.interval_us == 0 {
            drop(g);
            std::thread::yield_now();
            g = shared.lock();
        } else {
            let pause = Duration::from_micros(regs.interval_us.into());
            g = shared
                .changed
                .wait_timeout_while(g, pause, |i| i.mode == Mode::Run)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Write number `regs.writes`; whether it completed.
fn write_one(dma: &DmaSpace, regs: &BgRegisters) -> bool {
    let Some((addr, value)) = background_write(regs.seed, regs.addr, regs.len, regs.writes) else {
        tracing::debug!(?regs, "dma-engine: background window invalid");
        return false;
    };
    match dma.write_direct(addr, &value.to_le_bytes()) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(k = regs.writes, error = %e, "dma-engine: background write faulted; the writer stops");
            false
        }
    }
}

impl DmaEngine {
    /// The registers as a read sees them now: the BG_* ones from the thread while it owns them.
    pub(super) fn live_registers(&self) -> Registers {
        Registers { bg: self.bg.current(self.state.regs.bg), ..self.state.regs }
    }

    /// Parks the writer and takes its registers back into the state (nothing if it is parked).
    pub(super) fn park_background(&mut self) {
        if let Some(regs) = self.bg.park() {
            self.state.regs.bg = regs;
        }
    }

    /// Brings the parked writer in line with its registers and the migration state: nothing
    /// when disabled; FAULT on an invalid window; PAUSED while the device is stopped; else
    /// RUNNING, the registers handed to the thread. Nothing if the thread already owns them.
    pub(super) fn settle_background(&mut self, ctx: &DeviceContext<'_>) {
        if self.bg.handed {
            return;
        }
        let bg = &mut self.state.regs.bg;
        if !bg.enabled() {
            return;
        }
        if !bg.window_is_valid() {
            tracing::debug!(?bg, "dma-engine: background writer enabled on an invalid window");
            bg.fault();
            return;
        }
        if self.mig.is_frozen() {
            bg.status = BgStatus::Paused;
            return;
        }
        bg.status = BgStatus::Running;
        let Some(dma) = ctx.shared_dma_space() else {
            tracing::warn!("dma-engine: no shared DMA table for the background writer");
            bg.fault();
            return;
        };
        if let Err(e) = self.bg.run(*bg, dma) {
            tracing::error!(error = %e, "dma-engine: starting the background writer failed");
            bg.fault();
        }
    }

    /// After a BAR0 write that covered BG_CTRL (`ctrl_written`): a writer left disabled is
    /// IDLE (clearing a FAULT); one just enabled starts from IDLE so that
    /// [`settle_background`](Self::settle_background) checks its window.
    pub(super) fn background_ctrl_written(&mut self, ctrl_written: bool) {
        let bg = &mut self.state.regs.bg;
        if ctrl_written && (!bg.enabled() || bg.status == BgStatus::Fault) {
            bg.status = BgStatus::Idle;
        }
    }

    /// The client went away with its DMA regions: stops and joins the thread; an enabled
    /// writer faults (its next write would hit unmapped memory).
    pub(super) fn stop_background(&mut self) {
        if let Some(regs) = self.bg.stop() {
            self.state.regs.bg = regs;
        }
        if self.state.regs.bg.enabled() {
            self.state.regs.bg.fault();
        }
    }
}
