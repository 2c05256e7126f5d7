//! A seeded workload for pre-copy: vCPU stores and dma-engine commands, every page they write
//! recorded as the ground truth a dirty report is checked against.

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Workload;
use crate::client::Client;
use crate::guest::dmae::{DmaCommand, DmaEngineDriver, Status};
use crate::guest::{Guest, PAGE_SIZE, VcpuWorkload};

/// vCPU writes and device DMA over a window of guest RAM, reproducible from a seed.
pub struct StandardWorkload {
    vcpu: Option<VcpuWorkload>,
    dma: Option<DmaEngineDriver>,
    rng: ChaCha8Rng,
    window: (u64, u64),
    dma_per_step: usize,
    /// Pages written by vCPU stores.
    pub vcpu_pages: BTreeSet<u64>,
    /// Pages written by device DMA (commands that completed OK).
    pub device_pages: BTreeSet<u64>,
    /// Commands run, by status.
    pub commands: Vec<(DmaCommand, Status)>,
}

impl StandardWorkload {
    /// `vcpu_writes` page writes and `dma_per_step` device commands per step, over `window`
    /// (`(iova, len)`), from `seed`. `dma` is the attached driver of a dma-engine, if any.
    pub fn new(
        seed: u64,
        window: (u64, u64),
        vcpu_writes: usize,
        dma: Option<DmaEngineDriver>,
        dma_per_step: usize,
    ) -> Self {
        Self {
            vcpu: (vcpu_writes > 0).then(|| VcpuWorkload::new(seed, window, vcpu_writes)),
            dma,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6d69_676c_6162),
            window,
            dma_per_step,
            vcpu_pages: BTreeSet::new(),
            device_pages: BTreeSet::new(),
            commands: Vec::new(),
        }
    }

    /// Ends the workload, giving its driver back.
    pub fn into_driver(self) -> Option<DmaEngineDriver> {
        self.dma
    }

    /// The next device command: a FILL, a copy into device memory or a copy out to the guest,
    /// at random places of the window and of device memory.
    fn next_command(&mut self, devmem: u64, guest: &Guest) -> Option<DmaCommand> {
        let (iova, len) = self.window;
        let span = len.min(guest.ram_size()).max(PAGE_SIZE);
        let n = self.rng.random_range(1..=(64 << 10).min(span).min(devmem));
        let at = iova + self.rng.random_range(0..=span - n);
        let dev = self.rng.random_range(0..=devmem - n);
        Some(match self.rng.random_range(0..3) {
            0 => DmaCommand::fill(at, n, self.rng.random()),
            1 => DmaCommand::copy_to_device(at, dev, n),
            _ => DmaCommand::copy_to_guest(dev, at, n),
        })
    }
}

impl Workload for StandardWorkload {
    fn step(&mut self, client: &mut Client, guest: &Guest) -> Result<(), String> {
        if let Some(v) = self.vcpu.as_mut() {
            self.vcpu_pages.extend(v.step(guest).map_err(|e| e.to_string())?);
        }
        for _ in 0..self.dma_per_step {
            let Some(devmem) = self.dma.as_ref().map(DmaEngineDriver::devmem_size) else { break };
            let Some(cmd) = self.next_command(devmem, guest) else { break };
            let Some(driver) = self.dma.as_mut() else { break };
            let status = driver.run(client, &cmd).map_err(|e| e.to_string())?;
            if status == Status::Ok && cmd.writes_guest() {
                self.device_pages.extend(cmd.guest_pages_written());
            }
            self.commands.push((cmd, status));
        }
        Ok(())
    }
}
