//! A lock-free dirty-page bitmap: the client's own record of which guest pages were written, in
//! the role KVM's dirty log plays for vCPU stores (and QEMU's own bitmap for the writes it makes
//! on a device's behalf).
//!
//! Marking is a `fetch_or` per 64 pages and taking is a `swap(0)` per word, so a mark that races
//! with a take is either reported by that take or left for the next one, never lost.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per page, pages numbered from 0.
#[derive(Debug)]
pub struct DirtyBitmap {
    words: Vec<AtomicU64>,
    pages: u64,
}

impl DirtyBitmap {
    /// A clean bitmap of `pages` pages.
    pub fn new(pages: u64) -> Self {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        Self { words: (0..words).map(|_| AtomicU64::new(0)).collect(), pages }
    }

    /// Number of pages tracked.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Marks pages `first..first + count` (clipped to the bitmap).
    pub fn mark(&self, first: u64, count: u64) {
        let end = first.saturating_add(count).min(self.pages);
        let mut page = first;
        while page < end {
            let word = page / 64;
            let bit = page % 64;
            let n = (64 - bit).min(end - page);
            let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << bit };
            if let Some(w) = usize::try_from(word).ok().and_then(|w| self.words.get(w)) {
                w.fetch_or(mask, Ordering::AcqRel);
            }
            page += n;
        }
    }

    /// Whether `page` is marked.
    pub fn is_marked(&self, page: u64) -> bool {
        usize::try_from(page / 64)
            .ok()
            .and_then(|w| self.words.get(w))
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (page % 64)) != 0)
    }

    /// Takes and clears every mark: the marked page numbers in ascending order.
    pub fn take(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, w) in self.words.iter().enumerate() {
            if w.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = w.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                out.push(i as u64 * 64 + bit);
                bits &= bits - 1;
            }
        }
        out
    }

    /// Clears every mark.
    pub fn clear(&self) {
        for w in &self.words {
            w.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_across_word_boundaries_are_taken_once_and_in_order() {
        let b = DirtyBitmap::new(200);
        b.mark(60, 10); // 60..70 crosses a word
        b.mark(0, 1);
        b.mark(128, 64); // a whole word
        b.mark(195, 100); // clipped to 200
        assert!(b.is_marked(69) && !b.is_marked(70));
        let want: Vec<u64> = [0].into_iter().chain(60..70).chain(128..192).chain(195..200).collect();
        assert_eq!(b.take(), want);
        assert!(b.take().is_empty());
    }

    #[test]
    fn out_of_range_marks_are_ignored() {
        let b = DirtyBitmap::new(10);
        b.mark(10, 5);
        b.mark(u64::MAX, u64::MAX);
        assert!(b.take().is_empty());
        assert_eq!(b.pages(), 10);
    }
}
