//! [`PageSet`]: a plain bitmap of 4 KiB pages, for the device's own dirty tracking of its
//! memory during a migration and for the destination's record of which pages arrived.
//!
//! The device is driven through `&mut self` only, so a `Vec<u64>` without atomics suffices.
//! Every operation is bounds-safe: bits past the number of pages are never set, and ranges
//! partly outside the set are clipped.

/// Size of a device page: the granularity of dirty tracking and of devmem records.
pub const PAGE_SIZE: u64 = 4096;

/// A set of page numbers `0..len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSet {
    words: Vec<u64>,
    len: usize,
}

impl PageSet {
    /// A set over `len` pages, all of them in it when `full`, none otherwise.
    pub fn new(len: usize, full: bool) -> Self {
        let mut set = Self { words: vec![0; len.div_ceil(64)], len };
        if full {
            set.insert_all();
        }
        set
    }

    /// The set over the pages of `bytes` bytes of memory (a partial last page counts).
    pub fn for_bytes(bytes: u64, full: bool) -> Self {
        Self::new(usize::try_from(bytes.div_ceil(PAGE_SIZE)).unwrap_or(0), full)
    }

    /// Number of pages the set ranges over.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set ranges over no page at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Puts every page in the set.
    pub fn insert_all(&mut self) {
        self.words.fill(u64::MAX);
        let tail = self.len % 64;
        if tail != 0
            && let Some(last) = self.words.last_mut()
        {
            *last = (1u64 << tail) - 1;
        }
    }

    /// Puts page `page` in the set (ignored past the end).
    pub fn insert(&mut self, page: usize) {
        if page < self.len
            && let Some(w) = self.words.get_mut(page / 64)
        {
            *w |= 1u64 << (page % 64);
        }
    }

    /// Takes page `page` out of the set (ignored past the end).
    pub fn remove(&mut self, page: usize) {
        if let Some(w) = self.words.get_mut(page / 64) {
            *w &= !(1u64 << (page % 64));
        }
    }

    /// Number of pages in both this set and `other`.
    pub fn count_common(&self, other: &PageSet) -> usize {
        self.words.iter().zip(&other.words).map(|(a, b)| (a & b).count_ones() as usize).sum()
    }

    /// Puts in the set every page that the byte range `offset`+`len` touches (clipped).
    pub fn insert_bytes(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / PAGE_SIZE;
        let last = offset.saturating_add(len - 1) / PAGE_SIZE;
        let end = usize::try_from(last).map_or(self.len, |l| l.saturating_add(1).min(self.len));
        let Ok(first) = usize::try_from(first) else {
            return;
        };
        for page in first..end {
            self.insert(page);
        }
    }

    /// Whether page `page` is in the set.
    pub fn contains(&self, page: usize) -> bool {
        page < self.len && self.words.get(page / 64).is_some_and(|w| w & (1u64 << (page % 64)) != 0)
    }

    /// Removes and returns the first page in the set at or after `from`, wrapping around to
    /// the start; `None` when the set is empty.
    pub fn take_next(&mut self, from: usize) -> Option<usize> {
        let page = self.next(from)?;
        self.remove(page);
        Some(page)
    }

    /// The first page in the set at or after `from`, wrapping around to the start (what
    /// [`take_next`](Self::take_next) would take).
    pub fn next(&self, from: usize) -> Option<usize> {
        self.find_from(from).or_else(|| self.find_from(0))
    }

    fn find_from(&self, from: usize) -> Option<usize> {
        if from >= self.len {
            return None;
        }
        let start = from / 64;
        let first_mask = u64::MAX << (from % 64);
        for (i, w) in self.words.iter().enumerate().skip(start) {
            let w = if i == start { w & first_mask } else { *w };
            if w != 0 {
                let page = i * 64 + w.trailing_zeros() as usize;
                return (page < self.len).then_some(page);
            }
        }
        None
    }

    /// Number of pages in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether every page is in the set.
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_set_holds_exactly_its_pages() {
        let s = PageSet::new(70, true);
        assert_eq!((s.count(), s.is_full()), (70, true));
        assert!(s.contains(69) && !s.contains(70));
    }

    #[test]
    fn byte_ranges_mark_every_page_they_touch_and_are_clipped() {
        let mut s = PageSet::for_bytes(8 * PAGE_SIZE, false);
        s.insert_bytes(PAGE_SIZE - 1, 2);
        assert_eq!((s.contains(0), s.contains(1), s.contains(2)), (true, true, false));
        s.insert_bytes(7 * PAGE_SIZE, u64::MAX);
        assert!(s.contains(7));
        s.insert_bytes(u64::MAX, 1);
        s.insert_bytes(3 * PAGE_SIZE, 0);
        assert_eq!(s.count(), 3);
    }

    #[test]
    fn removed_pages_leave_the_set_and_common_pages_are_counted() {
        let (mut a, mut b) = (PageSet::new(130, true), PageSet::new(130, false));
        a.remove(64);
        a.remove(500);
        for p in [0, 64, 129] {
            b.insert(p);
        }
        assert_eq!((a.count(), a.contains(64), a.count_common(&b)), (129, false, 2));
    }

    #[test]
    fn take_next_scans_from_the_cursor_then_wraps() {
        let mut s = PageSet::new(200, false);
        for p in [3, 64, 130] {
            s.insert(p);
        }
        assert_eq!(s.take_next(65), Some(130));
        assert_eq!(s.take_next(131), Some(3));
        assert_eq!(s.take_next(500), Some(64));
        assert_eq!(s.take_next(0), None);
        assert!(PageSet::new(0, true).is_empty());
    }
}
