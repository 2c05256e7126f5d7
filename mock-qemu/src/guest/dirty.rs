//! A lock-free dirty-page bitmap: the client's own record of which guest pages were written, in
//! the role KVM's dirty log plays for vCPU stores (and QEMU's own bitmap for the writes it makes
//! on a device's behalf).
//!
//! Marking is a `fetch_or` per 64 pages and taking is a `swap(0)` per word, so a mark that races
//! with a take is either reported by that take or left for the next one, never lost.

use vfu_server::migration::bitmap::AtomicBitmap;

/// One bit per page, pages numbered from 0 (the server's atomic bitmap, seen as pages).
#[derive(Debug)]
pub struct DirtyBitmap(AtomicBitmap);

impl DirtyBitmap {
    /// A clean bitmap of `pages` pages.
    pub fn new(pages: u64) -> Self {
        Self(AtomicBitmap::new(pages))
    }

    /// Number of pages tracked.
    pub fn pages(&self) -> u64 {
        self.0.len()
    }

    /// Marks pages `first..first + count` (clipped to the bitmap).
    pub fn mark(&self, first: u64, count: u64) {
        if count > 0 {
            self.0.set_range(first, first.saturating_add(count - 1));
        }
    }

    /// Whether `page` is marked.
    pub fn is_marked(&self, page: u64) -> bool {
        self.0.is_set(page)
    }

    /// Takes and clears every mark: the marked page numbers in ascending order.
    pub fn take(&self) -> Vec<u64> {
        self.0.take_all()
    }

    /// Clears every mark.
    pub fn clear(&self) {
        self.0.take_all();
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
