//! QEMU's pre-copy iteration as generated migrations draw it: read sizes that cut the
//! device's records anywhere (a few bytes, around a record, anything), a few reads a round,
//! a rate limit, so that switchovers come with pre-copy data unread.
//!
//! It is drawn from a stream of its own, keyed by the seed and the migration's place, so the
//! rest of a seed's scenario is what it was before these knobs existed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Shared scratch memory the dma-engine's STOP_COPY always carries, besides device memory.
const SCRATCH: u64 = 64 << 10;

/// Most MIG_DATA_READs the stop-and-copy of one migration may take: tiny reads of a large
/// device would make a campaign crawl.
const MOST_STOP_COPY_READS: u64 = 16 << 10;

/// Length of the dma-engine's longest record (a page record), the size a read most often
/// cuts near.
const PAGE_RECORD: u64 = vfu_server::devices::dma_engine::stream::MAX_RECORD_LEN as u64;

/// A migration's read size and iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IterationGen {
    /// `read_size`.
    pub read_size: u64,
    /// `iteration.reads`.
    pub reads: Option<u32>,
    /// `iteration.max_bandwidth`, bytes per second.
    pub max_bandwidth: Option<u64>,
}

impl IterationGen {
    /// The iteration of the `nth` migration of scenario `seed` on a device with `devmem`
    /// bytes of memory, or `None` (every round read to a short read) half the time.
    pub fn draw(seed: u64, nth: usize, devmem: u64) -> Option<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7165_6d75_6974 ^ ((nth as u64) << 48));
        if rng.random_bool(0.5) {
            return None;
        }
        let least = (devmem + SCRATCH).div_ceil(MOST_STOP_COPY_READS).max(1);
        let read_size = match rng.random_range(0..3) {
            0 => rng.random_range(least..=least.max(64)),
            1 => PAGE_RECORD + rng.random_range(0..=128) - 64,
            _ => rng.random_range(least..=64 << 10),
        };
        let reads = rng.random_bool(0.8).then(|| if rng.random_bool(0.5) { 1 } else { rng.random_range(2..=4) });
        // A window of a fraction of a read up to a few reads; alone, it is the only bound.
        let limited = reads.is_none() || rng.random_bool(0.4);
        let max_bandwidth = limited.then(|| rng.random_range(1..=read_size * 4) * 10);
        Some(Self { read_size, reads, max_bandwidth })
    }

    /// The migrate step's keys for it, each after a comma.
    pub fn render(&self) -> String {
        let mut bounds = Vec::new();
        if let Some(r) = self.reads {
            bounds.push(format!("reads: {r}"));
        }
        if let Some(b) = self.max_bandwidth {
            bounds.push(format!("max_bandwidth: {b}"));
        }
        format!(", read_size: {}, iteration: {{{}}}", self.read_size, bounds.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawn(devmem: u64) -> Vec<IterationGen> {
        (0..400).filter_map(|seed| IterationGen::draw(seed, 0, devmem)).collect()
    }

    #[test]
    fn read_sizes_go_down_to_a_few_bytes_and_cut_near_records() {
        let d = drawn(64 << 10);
        assert!(d.iter().any(|i| i.read_size < 16), "a few bytes");
        assert!(d.iter().any(|i| i.read_size != PAGE_RECORD && i.read_size.abs_diff(PAGE_RECORD) < 64));
        assert!(d.iter().any(|i| i.reads.is_none() && i.max_bandwidth.is_some()), "the rate limit alone");
    }

    #[test]
    fn stop_and_copy_stays_within_its_reads() {
        for devmem in [64 << 10, 256 << 10, 1 << 20] {
            let most = drawn(devmem).iter().map(|i| (devmem + SCRATCH) / i.read_size).max();
            assert!(most.is_some_and(|m| m <= MOST_STOP_COPY_READS), "{devmem}: {most:?}");
        }
    }

    #[test]
    fn about_half_the_generated_pre_copy_migrations_iterate_as_qemu_does() {
        use super::super::generate::{GenStep, generate};
        let migrations: Vec<_> = (0..300)
            .flat_map(|seed| generate(seed).steps)
            .filter_map(|s| match s {
                GenStep::Migrate(m) if m.pre_copy => Some(m.iteration.is_some()),
                _ => None,
            })
            .collect();
        let iterating = migrations.iter().filter(|&&i| i).count();
        assert!(iterating * 3 > migrations.len() && iterating * 3 < migrations.len() * 2);
    }

    #[test]
    fn every_iteration_has_a_bound() {
        assert!(drawn(1 << 20).iter().all(|i| i.reads.is_some() || i.max_bandwidth.is_some()));
    }
}
