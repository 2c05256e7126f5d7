//! A seeded vCPU workload: reproducible stores into a window of guest RAM.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Guest, GuestError, PAGE_SIZE};

/// Bytes each write stores (at a random 16-byte-aligned offset of its page).
pub const WRITE_BYTES: usize = 16;

/// A seeded vCPU workload: `writes_per_step` page writes per [`step`](Self::step), pages and
/// bytes drawn from a ChaCha8 stream seeded with `seed`, over the RAM pages inside a window.
///
/// The same seed, window, rate and guest layout give the same pages and bytes, step by step.
#[derive(Debug, Clone)]
pub struct VcpuWorkload {
    rng: ChaCha8Rng,
    window: (u64, u64),
    writes_per_step: usize,
}

impl VcpuWorkload {
    /// A workload over `window`, given as `(iova, len)`, writing `writes_per_step` pages per
    /// step. Only whole RAM pages inside the window are written (a window may span the PCI
    /// hole); a window without one makes [`step`](Self::step) fail.
    pub fn new(seed: u64, window: (u64, u64), writes_per_step: usize) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), window, writes_per_step }
    }

    /// The window, `(iova, len)`.
    pub fn window(&self) -> (u64, u64) {
        self.window
    }

    /// The page-aligned `(first address, pages)` runs of RAM inside the window.
    fn runs(&self, guest: &Guest) -> Vec<(u64, u64)> {
        let (iova, len) = self.window;
        let w_start = iova.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
        let w_end = iova.saturating_add(len) / PAGE_SIZE * PAGE_SIZE;
        guest
            .regions()
            .iter()
            .filter_map(|r| {
                let s = r.iova.max(w_start);
                let e = r.end().min(w_end);
                (s < e).then_some((s, (e - s) / PAGE_SIZE))
            })
            .collect()
    }

    /// Performs one step of writes as vCPU stores ([`Guest::vcpu_write`]); returns the pages
    /// written, sorted and without repeats.
    pub fn step(&mut self, guest: &Guest) -> Result<Vec<u64>, GuestError> {
        let runs = self.runs(guest);
        let total: u64 = runs.iter().map(|r| r.1).sum();
        if total == 0 {
            return Err(GuestError::EmptyWindow { iova: self.window.0, len: self.window.1 });
        }
        let mut pages = Vec::with_capacity(self.writes_per_step);
        let mut data = [0u8; WRITE_BYTES];
        for _ in 0..self.writes_per_step {
            let mut k = self.rng.random_range(0..total);
            let mut page = None;
            for &(start, n) in &runs {
                if k < n {
                    page = Some(start + k * PAGE_SIZE);
                    break;
                }
                k -= n;
            }
            let Some(page) = page else { continue };
            let slot = self.rng.random_range(0..PAGE_SIZE / WRITE_BYTES as u64);
            self.rng.fill_bytes(&mut data);
            guest.vcpu_write(page + slot * WRITE_BYTES as u64, &data)?;
            pages.push(page);
        }
        pages.sort_unstable();
        pages.dedup();
        Ok(pages)
    }
}
