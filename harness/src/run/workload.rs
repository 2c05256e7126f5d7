//! The scenario's workload: seeded vCPU writes and device DMA during pre-copy, every page the
//! device writes recorded as the truth each dirty report is judged against.
//!
//! It is also what the source tells of its phases and dirty syncs ([`Workload::phase`],
//! [`Workload::dirty_synced`]): it judges each report, marks the rounds for the timeline,
//! cancels the migration after the rounds the scenario names, and arms the triggers that
//! count from a phase.

use std::time::Instant;

use mock_qemu::Client;
use mock_qemu::guest::Guest;
use mock_qemu::guest::dmae::DmaCommand;
use mock_qemu::migrate::{CancelToken, DirtySync, Phase, Workload};
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use super::background::{Background, Start};
use super::side::Dev;
use super::tap::{Armed, Tap};
use crate::oracle::dirty::PAGE;
use crate::report::DirtyRound;
use crate::scenario::model::{DmaOpKind, PhaseMark, WorkloadSpec, WritePattern};

/// Guest page numbers (0.. over all regions in address order) from addresses.
#[derive(Debug, Clone)]
pub struct PageIndex {
    regions: Vec<(u64, u64, u64)>,
    pages: u64,
}

impl PageIndex {
    /// The index of `guest`'s layout.
    pub fn new(guest: &Guest) -> Self {
        let mut first = 0;
        let regions = guest
            .regions()
            .iter()
            .map(|r| {
                let entry = (r.iova, r.end(), first);
                first += r.len / PAGE;
                entry
            })
            .collect();
        Self { regions, pages: first }
    }

    /// How many pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The page number of `addr`, if it is RAM.
    pub fn of(&self, addr: u64) -> Option<u64> {
        self.regions.iter().find(|r| addr >= r.0 && addr < r.1).map(|r| r.2 + (addr - r.0) / PAGE)
    }

    /// The address of page `n`.
    pub fn addr(&self, n: u64) -> Option<u64> {
        self.regions.iter().find(|r| n >= r.2 && n < r.2 + (r.1 - r.0) / PAGE).map(|r| r.0 + (n - r.2) * PAGE)
    }

    fn numbers(&self, addrs: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = addrs.iter().filter_map(|&a| self.of(a)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Seeded vCPU stores, by the scenario's pattern.
#[derive(Debug, Clone)]
pub struct VcpuWriter {
    pattern: WritePattern,
    hot: Vec<u64>,
    cursor: u64,
}

impl VcpuWriter {
    /// A writer over `index`'s pages.
    pub fn new(pattern: WritePattern, index: &PageIndex, rng: &mut ChaCha8Rng) -> Self {
        let hot = match pattern {
            WritePattern::Hot { pages } => {
                (0..pages.max(1)).map(|_| rng.random_range(0..index.pages().max(1))).collect()
            }
            _ => Vec::new(),
        };
        Self { pattern, hot, cursor: 0 }
    }

    /// One store of 16 random bytes into the next page; returns the page's address.
    pub fn write(&mut self, guest: &Guest, index: &PageIndex, rng: &mut ChaCha8Rng) -> Result<u64, String> {
        let n = match self.pattern {
            WritePattern::Random => rng.random_range(0..index.pages().max(1)),
            WritePattern::Sequential => {
                self.cursor = (self.cursor + 1) % index.pages().max(1);
                self.cursor
            }
            WritePattern::Hot { .. } => *self.hot.choose(rng).unwrap_or(&0),
        };
        let addr = index.addr(n).ok_or_else(|| format!("guest page {n} is not RAM"))?;
        let mut data = [0u8; 16];
        rng.fill_bytes(&mut data);
        let at = addr + rng.random_range(0..PAGE / 16) * 16;
        guest.vcpu_write(at, &data).map_err(|e| format!("vCPU write at {at:#x}: {e}"))?;
        Ok(addr)
    }
}

/// A random dma-engine command of one of `ops`, at most `max_len` long, into a mapped region.
///
/// The window of the background writer, when it runs, is left alone: the checks of a command's
/// guest bytes hold only where nothing else writes.
pub fn random_command(dev: &Dev, ops: &[DmaOpKind], max_len: u64, rng: &mut ChaCha8Rng) -> Option<DmaCommand> {
    let guest = dev.guest.as_ref()?;
    let regions: Vec<(u64, u64)> = dev
        .mapped
        .keys()
        .filter_map(|&i| guest.regions().get(i))
        .map(|r| match dev.dma_exclude {
            // The writer takes the upper half of its region.
            Some((a, _)) if a > r.iova && a < r.end() => (r.iova, a - r.iova),
            _ => (r.iova, r.len),
        })
        .collect();
    let &(iova, region_len) = regions.choose(rng)?;
    let devmem = dev.shadow.devmem_size();
    let len = rng.random_range(1..=max_len.min(devmem).min(region_len).max(1));
    let at = iova + rng.random_range(0..=region_len - len);
    let dev_offset = rng.random_range(0..=devmem.saturating_sub(len));
    Some(match ops.choose(rng).copied().unwrap_or(DmaOpKind::Fill) {
        DmaOpKind::Fill => DmaCommand::fill(at, len, rng.random()),
        DmaOpKind::CopyToDevice => DmaCommand::copy_to_device(at, dev_offset, len),
        DmaOpKind::CopyToGuest => DmaCommand::copy_to_guest(dev_offset, at, len),
    })
}

/// What the source's phases mean for the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// A phase began or ended.
    Phase(Phase),
    /// A trigger was armed.
    Armed(String),
}

/// The workload of one migration.
pub struct HarnessWorkload {
    /// The source's guest, driver and models, given back after the migration.
    pub dev: Dev,
    rng: ChaCha8Rng,
    spec: WorkloadSpec,
    index: PageIndex,
    vcpu: Option<VcpuWriter>,
    /// Oracle findings: each one fails the run.
    pub findings: Vec<String>,
    /// Truth against reports, per dirty sync.
    pub rounds: Vec<DirtyRound>,
    /// Over-reported pages in all.
    pub over_reported: u64,
    /// Phases and armed triggers, with when.
    pub marks: Vec<(Instant, Mark)>,
    cancel: Option<(u32, CancelToken)>,
    at_phase: Vec<(PhaseMark, Tap, Armed)>,
    last_round: u32,
    /// The background writer to start once logging is on (concurrent mode).
    pub background_start: Option<Start>,
    /// The background writer, once started.
    pub background: Option<Background>,
    /// The source's trace tap: the states the migration puts the device in.
    pub tap: Option<Tap>,
    /// Whether the source's reports are held to exactness (`Run::exact_reports`).
    pub exact: bool,
}

impl HarnessWorkload {
    /// A workload from `spec` on the source's `dev`, seeded by `rng`.
    pub fn new(dev: Dev, spec: WorkloadSpec, mut rng: ChaCha8Rng) -> Result<Self, String> {
        let guest = dev.guest.clone().ok_or("the source has no guest RAM")?;
        let index = PageIndex::new(&guest);
        let vcpu = spec.vcpu.as_ref().map(|v| VcpuWriter::new(v.pattern, &index, &mut rng));
        Ok(Self {
            dev,
            rng,
            spec,
            index,
            vcpu,
            findings: Vec::new(),
            rounds: Vec::new(),
            over_reported: 0,
            marks: Vec::new(),
            cancel: None,
            at_phase: Vec::new(),
            last_round: 0,
            background_start: None,
            background: None,
            tap: None,
            exact: false,
        })
    }

    /// Cancels the migration once `rounds` pre-copy rounds have ended.
    pub fn cancel_after(&mut self, rounds: u32, token: CancelToken) {
        self.cancel = Some((rounds, token));
    }

    /// Arms `armed` on `tap` when the source reaches `mark`.
    pub fn arm_at(&mut self, mark: PhaseMark, tap: Tap, armed: Armed) {
        self.at_phase.push((mark, tap, armed));
    }

    /// The end of the workload: the source's device side back.
    pub fn into_dev(self) -> Dev {
        self.dev
    }
}

impl Workload for HarnessWorkload {
    fn logging_started(&mut self, client: &mut Client) {
        if let Err(e) = self.dev.watch_memory() {
            self.findings.push(e);
        }
        if let Some(start) = self.background_start.take() {
            match Background::start(client, start) {
                Ok(b) => self.background = Some(b),
                Err(e) => self.findings.push(e),
            }
        }
    }

    fn sync_starting(&mut self, client: &mut Client) {
        let state = self.tap.as_ref().and_then(Tap::last_state);
        if let Err(e) = self.dev.look_at_memory(state) {
            self.findings.push(e);
        }
        if let Some(b) = self.background.as_mut() {
            match b.owed(client) {
                Ok(owed) => self.dev.dirty.device_wrote(owed),
                Err(e) => self.findings.push(e),
            }
        }
    }

    fn step(&mut self, client: &mut Client, guest: &Guest) -> Result<(), String> {
        if let (Some(v), Some(spec)) = (self.vcpu.as_mut(), self.spec.vcpu.as_ref()) {
            for _ in 0..spec.writes_per_step {
                v.write(guest, &self.index, &mut self.rng)?;
            }
        }
        if let Some(spec) = &self.spec.dma {
            // The migration moves the device (RUNNING to PRE_COPY, or from wherever it was):
            // the model follows the wire.
            if let Some(state) = self.tap.as_ref().and_then(Tap::last_state) {
                self.dev.model.state = state;
            }
            for _ in 0..spec.commands_per_step {
                let Some(cmd) = random_command(&self.dev, &spec.ops, spec.max_len.bytes(), &mut self.rng) else {
                    break;
                };
                let found = self.dev.run_command(client, &cmd)?;
                self.findings.extend(found);
            }
        }
        Ok(())
    }

    fn dirty_synced(&mut self, client: &mut Client, sync: &DirtySync<'_>) {
        if let Some(b) = self.background.as_mut() {
            let mut set = std::collections::BTreeSet::new();
            for r in sync.reports {
                for (w, word) in r.bitmap.iter().enumerate() {
                    let mut bits = *word;
                    while bits != 0 {
                        let i = w as u64 * 64 + u64::from(bits.trailing_zeros());
                        bits &= bits - 1;
                        set.insert(r.iova + i * sync.page_size);
                    }
                }
            }
            if let Err(e) = b.synced(client, &set) {
                self.findings.push(e);
            }
        }
        let round = sync.round.unwrap_or(self.last_round + 1);
        let mut written = Vec::new();
        let mut reported = Vec::new();
        for r in sync.reports {
            let check = self.dev.dirty.take_report(r.iova, r.length, sync.page_size, &r.bitmap);
            if !check.lost.is_empty() {
                let shown: Vec<String> = check.lost.iter().take(8).map(|a| format!("{a:#x}")).collect();
                self.findings.push(format!(
                    "data loss: {} page(s) the device wrote are missing from the dirty report of round {round} \
                     over {:#x}+{:#x}: {}",
                    check.lost.len(),
                    r.iova,
                    r.length,
                    shown.join(", ")
                ));
            }
            if check.stray_bits > 0 {
                self.findings.push(format!(
                    "the dirty report over {:#x}+{:#x} has {} bit(s) set past its range",
                    r.iova, r.length, check.stray_bits
                ));
            }
            if self.exact {
                let what = format!("the report of round {round} over {:#x}+{:#x}", r.iova, r.length);
                self.findings.extend(super::side::unexplained_bits(&check, &what));
            }
            self.over_reported += check.over.len() as u64;
            written.extend(check.lost.iter().chain(&check.matched));
            reported.extend(check.matched.iter().chain(&check.over));
        }
        self.rounds.push(DirtyRound {
            round,
            page_count: self.index.pages(),
            written: self.index.numbers(&written),
            reported: self.index.numbers(&reported),
            stop_copy: sync.round.is_none(),
        });
    }

    fn phase(&mut self, _client: &mut Client, phase: Phase) {
        let now = Instant::now();
        self.marks.push((now, Mark::Phase(phase)));
        if let Phase::RoundEnd(n) = phase {
            self.last_round = n;
            if let Some((after, token)) = &self.cancel
                && n >= *after
            {
                token.cancel();
            }
        }
        let reached = |m: &PhaseMark| match (m, phase) {
            (PhaseMark::Round(r), Phase::RoundStart(n)) => *r == n,
            (PhaseMark::Switchover, Phase::Switchover) => true,
            _ => false,
        };
        let mut i = 0;
        while i < self.at_phase.len() {
            if reached(&self.at_phase[i].0) {
                let (_, tap, armed) = self.at_phase.remove(i);
                self.marks.push((now, Mark::Armed(armed.label.clone())));
                tap.arm(armed);
            } else {
                i += 1;
            }
        }
    }
}
