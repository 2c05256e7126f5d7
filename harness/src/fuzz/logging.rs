//! Dirty logging in generated scenarios: starts at a drawn page size, reports at page sizes
//! finer, equal and coarser than it, over whole regions, sub-ranges of any shape (unaligned,
//! across report groups and across the boundary of two adjacent ranges), and stops.

use rand::Rng;
use rand::seq::IndexedRandom;

use super::generate::{Builder, side_name};

impl Builder<'_> {
    /// A logging start, report or stop on a drawn side.
    pub(super) fn logging(&mut self) {
        let side = usize::from(self.rng.random_bool(0.2));
        let name = side_name(side);
        if !self.sides[side].logging {
            let ps = if self.rng.random_bool(0.7) { 4096 } else { 65536 };
            self.raw(format!("start-logging: {{side: {name}, page_size: {ps}}}"));
            self.sides[side].logging = true;
        } else if self.rng.random_bool(0.7) {
            let ps = *[4096u64, 1024, 65536, 2 << 20].choose(&mut self.rng).unwrap_or(&4096);
            if self.rng.random_bool(0.5) {
                // A sub-range of a region, of any number of pages: its last bitmap word
                // has bits past the range.
                let &(iova, len) = self.g.regions.choose(&mut self.rng).unwrap_or(&(0, 4096));
                let pages = len / 4096;
                let mut first = self.rng.random_range(0..pages);
                let mut count = self.rng.random_range(1..=(pages - first).min(300));
                let mut ps = ps;
                let whole_groups = pages >= 256 && self.rng.random_bool(0.25);
                if whole_groups {
                    // Whole 64-page words of the log reported at a page size that ORs
                    // whole words, over a quarter of the range or more: the server's
                    // fused drain, which moves the words outside the report aside.
                    first = self.rng.random_range(0..pages / 64 / 2) * 64;
                    count = self.rng.random_range(pages / 4 / 64..=(pages - first) / 64).max(1) * 64;
                    ps = *[256u64 << 10, 2 << 20].choose(&mut self.rng).unwrap_or(&(2 << 20));
                }
                let adjacent = self.g.regions.get(1).copied().filter(|r| r.0 == self.g.regions[0].1);
                if let Some((second, len2)) = adjacent.filter(|_| !whole_groups && self.rng.random_bool(0.2)) {
                    // Across the boundary of two adjacent logged ranges: the second
                    // range's pages land shifted inside the bitmap's words.
                    let before = self.rng.random_range(1..=100u64.min(second / 4096));
                    let after = self.rng.random_range(1..=200u64.min(len2 / 4096));
                    let ps = *[4096u64, 65536].choose(&mut self.rng).unwrap_or(&4096);
                    self.raw(format!(
                        "dirty-report: {{side: {name}, iova: {}, length: {}, page_size: {ps}}}",
                        second - before * 4096,
                        (before + after) * 4096
                    ));
                    return;
                }
                // A third of them unaligned: starting inside a page, ending anywhere.
                let (skew, trim) = if !whole_groups && self.rng.random_bool(0.3) {
                    (self.rng.random_range(0..16) * 256, self.rng.random_range(0..8) * 512)
                } else {
                    (0, 0)
                };
                self.raw(format!(
                    "dirty-report: {{side: {name}, iova: {}, length: {}, page_size: {ps}}}",
                    iova + first * 4096 + skew,
                    (count * 4096 - skew).saturating_sub(trim).max(512)
                ));
            } else {
                self.raw(format!("dirty-report: {{side: {name}, page_size: {ps}}}"));
            }
        } else {
            self.raw(format!("stop-logging: {{side: {name}}}"));
            self.sides[side].logging = false;
        }
    }
}
